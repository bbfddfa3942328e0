//! The instruction set used by [`crate::vec_dot`], chosen once per process.
//!
//! Detection picks the best set the CPU supports. `QUIRE_ISA=scalar|avx2|avx512` forces
//! one (for testing and benchmarking); a forced set the CPU lacks falls back to the best
//! supported one with a warning on stderr, never to a crash.
//!
//! [`Isa::Avx512`] runs the VNNI panel kernels in [`crate::matmul`] for the quantized
//! formats; single dot products, float formats and the activation quantizers use the AVX2
//! kernels there too.

use std::sync::OnceLock;

use crate::{formats, x86, DType};

/// A kernel family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// The portable reference kernels in [`crate::formats`].
    Scalar,
    /// AVX2 + FMA + F16C kernels ([`crate::x86::avx2`]).
    Avx2,
    /// AVX-512 (F/BW/VL/VNNI): panel kernels for matrix products, AVX2 for the rest.
    Avx512,
}

impl Isa {
    /// Lower-case name, as accepted by `QUIRE_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a `QUIRE_ISA` value (case-insensitive).
    pub fn parse(name: &str) -> Option<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this CPU can run the kernels of `self`.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => x86::has_avx2(),
            Isa::Avx512 => x86::has_avx512(),
        }
    }

    /// The best instruction set this CPU supports.
    pub fn best() -> Isa {
        [Isa::Avx512, Isa::Avx2].into_iter().find(|isa| isa.is_supported()).unwrap_or(Isa::Scalar)
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Resolves a `QUIRE_ISA` value against what the CPU supports: the set to use and,
/// if the request could not be honoured, the warning to print.
pub fn resolve(requested: Option<&str>) -> (Isa, Option<String>) {
    let best = Isa::best();
    let Some(raw) = requested.filter(|s| !s.trim().is_empty()) else {
        return (best, None);
    };
    match Isa::parse(raw) {
        None => {
            (best, Some(format!("quire: QUIRE_ISA={raw:?} is not one of scalar, avx2, avx512; using {best}")))
        }
        Some(isa) if isa.is_supported() => (isa, None),
        Some(isa) => {
            // Never pick something above the request: avx512 on an AVX2-only CPU gives
            // avx2, avx2 on an old CPU gives scalar.
            let fallback =
                if isa == Isa::Avx512 && Isa::Avx2.is_supported() { Isa::Avx2 } else { Isa::Scalar };
            (fallback, Some(format!("quire: QUIRE_ISA={raw} is not supported by this CPU; using {fallback}")))
        }
    }
}

/// The process instruction set: detected (or read from `QUIRE_ISA`) on first use and
/// fixed afterwards. Always supported by this CPU.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let requested = std::env::var("QUIRE_ISA").ok();
        let (isa, warning) = resolve(requested.as_deref());
        if let Some(warning) = warning {
            eprintln!("{warning}");
        }
        isa
    })
}

/// [`crate::vec_dot`] with an explicit instruction set, for tests and benchmarks
/// comparing kernels. `None` if this CPU does not support `isa`.
///
/// # Panics
/// As [`crate::vec_dot`].
pub fn vec_dot_with(isa: Isa, dtype: DType, n: usize, w: &[u8], act: &[u8]) -> Option<f32> {
    if !isa.is_supported() {
        return None;
    }
    crate::check_dot(dtype, n, w, act);
    Some(vec_dot_checked(isa, dtype, n, w, act))
}

/// [`crate::quantize_row`] with an explicit instruction set, for tests comparing the
/// SIMD activation quantizers with the scalar ones. `None` if this CPU does not support
/// `isa`.
///
/// # Panics
/// As [`crate::quantize_row`].
pub fn quantize_row_with(isa: Isa, dtype: DType, src: &[f32], dst: &mut [u8]) -> Option<()> {
    if !isa.is_supported() {
        return None;
    }
    formats::check_row(formats::format(dtype), dst.len(), src.len());
    quantize_checked(isa, dtype, src, dst);
    Some(())
}

/// Quantizes with the kernels of `isa`: SIMD for the activation formats Q8_0 and Q8_K
/// (byte-identical to the scalar quantizers), scalar for everything else. Lengths are
/// already checked and `isa` is supported.
#[inline]
pub(crate) fn quantize_checked(isa: Isa, dtype: DType, src: &[f32], dst: &mut [u8]) {
    match (isa, dtype) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, DType::Q8_0) => {
            // SAFETY: `isa` is supported, so the CPU has AVX2, FMA and F16C.
            unsafe { x86::avx2::quantize_q8_0(src, dst) }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, DType::Q8_K) => {
            // SAFETY: `isa` is supported, so the CPU has AVX2, FMA and F16C.
            unsafe { x86::avx2::quantize_q8_k(src, dst) }
        }
        _ => (formats::format(dtype).quantize)(src, dst),
    }
}

/// Runs the kernel of `isa`; operand lengths are already checked and `isa` must be
/// supported (it comes from [`isa`] or was checked by [`vec_dot_with`]).
#[inline]
pub(crate) fn vec_dot_checked(isa: Isa, dtype: DType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    match isa {
        Isa::Scalar => (formats::format(dtype).vec_dot)(n, w, act),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => {
            debug_assert!(x86::has_avx2());
            // SAFETY: `isa` is supported by this CPU (it came from `isa()` or was
            // checked), and both Avx2 and Avx512 require AVX2, FMA and F16C, the
            // features `avx2::vec_dot` is compiled for.
            unsafe { x86::avx2::vec_dot(dtype, n, w, act) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 => unreachable!("x86 instruction sets are never supported here"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_the_three_names() {
        assert_eq!(Isa::parse("scalar"), Some(Isa::Scalar));
        assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2));
        assert_eq!(Isa::parse(" avx512 "), Some(Isa::Avx512));
        assert_eq!(Isa::parse("sse"), None);
    }

    #[test]
    fn resolve_honours_supported_requests_and_warns_otherwise() {
        assert_eq!(resolve(None), (Isa::best(), None));
        assert_eq!(resolve(Some("")), (Isa::best(), None));
        assert_eq!(resolve(Some("scalar")), (Isa::Scalar, None));
        let (isa, warning) = resolve(Some("neon"));
        assert_eq!(isa, Isa::best());
        assert!(warning.unwrap().contains("neon"));
        for requested in [Isa::Avx2, Isa::Avx512] {
            let (isa, warning) = resolve(Some(requested.name()));
            if requested.is_supported() {
                assert_eq!((isa, warning), (requested, None));
            } else {
                assert!(isa.is_supported());
                assert!(warning.unwrap().contains("not supported"));
            }
        }
    }

    #[test]
    fn process_isa_is_supported_and_stable() {
        let first = isa();
        assert!(first.is_supported());
        assert_eq!(isa(), first);
    }
}
