//! The instruction set the kernels run on, detected at run time and chosen once per process.
//!
//! An [`Isa`] can only be made by run-time detection ([`Isa::detect`], [`Isa::best`]), so holding one proves
//! that this CPU runs that kernel family: functions taking an `Isa` may run its `#[target_feature]` code
//! without checking again. The process set ([`isa`]) is the best one the CPU has, unless the program fixes
//! another with [`force`] before the first kernel runs (the CLI's `--isa` / `QUIRE_ISA`).
//!
//! [`IsaKind::Avx512`] runs the VNNI panel kernels in [`crate::matmul`] for the quantized formats; single dot
//! products, float formats and the activation quantizers use the AVX2 kernels there too.

use std::sync::OnceLock;

use crate::{formats, x86, DType};

/// A kernel family, by name (what a user asks for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum IsaKind {
    /// The portable reference kernels in [`crate::formats`].
    Scalar,
    /// AVX2 + FMA + F16C kernels ([`crate::x86::avx2`]).
    Avx2,
    /// AVX-512 (F/BW/VL/VNNI): panel kernels for matrix products, AVX2 for the rest.
    Avx512,
}

impl IsaKind {
    /// Every family, from the most portable to the fastest.
    pub const ALL: [IsaKind; 3] = [IsaKind::Scalar, IsaKind::Avx2, IsaKind::Avx512];

    /// Lower-case name: `scalar`, `avx2`, `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            IsaKind::Scalar => "scalar",
            IsaKind::Avx2 => "avx2",
            IsaKind::Avx512 => "avx512",
        }
    }

    fn is_supported(self) -> bool {
        match self {
            IsaKind::Scalar => true,
            IsaKind::Avx2 => x86::has_avx2(),
            IsaKind::Avx512 => x86::has_avx512(),
        }
    }
}

impl std::fmt::Display for IsaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A kernel family this CPU runs: made only by run-time detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Isa(IsaKind);

impl Isa {
    /// The portable kernels, which every CPU runs.
    pub const SCALAR: Isa = Isa(IsaKind::Scalar);

    /// `kind` if this CPU runs it.
    pub fn detect(kind: IsaKind) -> Option<Isa> {
        kind.is_supported().then_some(Isa(kind))
    }

    /// The fastest family this CPU runs.
    pub fn best() -> Isa {
        Isa::at_most(IsaKind::Avx512)
    }

    /// `kind` if this CPU runs it, else the fastest family below it that it runs (never one above: a request
    /// for AVX2 on an AVX-512 machine gets AVX2).
    pub fn at_most(kind: IsaKind) -> Isa {
        IsaKind::ALL.into_iter().rev().filter(|&k| k <= kind).find_map(Isa::detect).unwrap_or(Isa::SCALAR)
    }

    /// Every family this CPU runs, scalar first.
    pub fn all_supported() -> Vec<Isa> {
        IsaKind::ALL.into_iter().filter_map(Isa::detect).collect()
    }

    pub fn kind(self) -> IsaKind {
        self.0
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

static PROCESS_ISA: OnceLock<Isa> = OnceLock::new();

/// The process instruction set: [`Isa::best`] unless [`force`] fixed another first; fixed on first use.
pub fn isa() -> Isa {
    *PROCESS_ISA.get_or_init(Isa::best)
}

/// Fixes the process instruction set to [`Isa::at_most`]`(kind)` and returns it (compare its kind with `kind`
/// to tell the user about a fallback). Errors if the kernels already run on another set (a kernel ran, or
/// `force` was called with another kind, before).
pub fn force(kind: IsaKind) -> Result<Isa, String> {
    let want = Isa::at_most(kind);
    match *PROCESS_ISA.get_or_init(|| want) {
        got if got == want => Ok(got),
        got => Err(format!("the kernels already run on {got}; cannot switch to {want}")),
    }
}

/// [`crate::vec_dot`] with an explicit instruction set, for tests and benchmarks comparing kernels.
///
/// # Panics
/// As [`crate::vec_dot`].
pub fn vec_dot_with(isa: Isa, dtype: DType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    crate::check_dot(dtype, n, w, act);
    vec_dot_checked(isa, dtype, n, w, act)
}

/// [`crate::quantize_row`] with an explicit instruction set, for tests comparing the SIMD activation
/// quantizers with the scalar ones.
///
/// # Panics
/// As [`crate::quantize_row`].
pub fn quantize_row_with(isa: Isa, dtype: DType, src: &[f32], dst: &mut [u8]) {
    formats::check_row(formats::format(dtype), dst.len(), src.len());
    quantize_checked(isa, dtype, src, dst);
}

/// Quantizes with the kernels of `isa`: SIMD for the activation formats Q8_0 and Q8_K (byte-identical to the
/// scalar quantizers), scalar for everything else. Lengths are already checked.
#[inline]
pub(crate) fn quantize_checked(isa: Isa, dtype: DType, src: &[f32], dst: &mut [u8]) {
    match (isa.kind(), dtype) {
        #[cfg(target_arch = "x86_64")]
        (IsaKind::Avx2 | IsaKind::Avx512, DType::Q8_0) => {
            // SAFETY: `isa` was detected, so the CPU has AVX2, FMA and F16C.
            unsafe { x86::avx2::quantize_q8_0(src, dst) }
        }
        #[cfg(target_arch = "x86_64")]
        (IsaKind::Avx2 | IsaKind::Avx512, DType::Q8_K) => {
            // SAFETY: `isa` was detected, so the CPU has AVX2, FMA and F16C.
            unsafe { x86::avx2::quantize_q8_k(src, dst) }
        }
        _ => (formats::format(dtype).quantize)(src, dst),
    }
}

/// Runs the dot-product kernel of `isa`; operand lengths are already checked.
#[inline]
pub(crate) fn vec_dot_checked(isa: Isa, dtype: DType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2 | IsaKind::Avx512 => {
            // SAFETY: `isa` was detected, and both Avx2 and Avx512 require AVX2, FMA and F16C, the features
            // `avx2::vec_dot` is compiled for; lengths were checked by the caller.
            unsafe { x86::avx2::vec_dot(dtype, n, w, act) }
        }
        _ => (formats::format(dtype).vec_dot)(n, w, act),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_never_gives_more_than_asked() {
        assert_eq!(Isa::at_most(IsaKind::Scalar), Isa::SCALAR);
        for kind in IsaKind::ALL {
            let got = Isa::at_most(kind);
            assert!(got.kind() <= kind, "{kind} gave {got}");
            assert_eq!(Isa::detect(kind).is_some(), got.kind() == kind, "{kind}");
        }
        let all = Isa::all_supported();
        assert_eq!(all[0], Isa::SCALAR);
        assert_eq!(*all.last().unwrap(), Isa::best());
    }

    #[test]
    fn process_isa_is_stable_and_cannot_switch() {
        let first = isa();
        assert_eq!(isa(), first);
        assert_eq!(force(first.kind()), Ok(first));
        if first != Isa::SCALAR {
            assert!(force(IsaKind::Scalar).is_err());
        }
    }
}
