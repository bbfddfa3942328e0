//! Helpers shared by the integration tests: fixture lookup, GGUF tensor reading and
//! reproducible random data.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

use quire_kernels::DType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The shared fixtures folder: `$QUIRE_FIXTURES`, else `../shared/fixtures` next to the
/// workspace root. Panics (rather than skipping) if it is missing, so a CI run without
/// fixtures fails loudly.
pub fn fixtures_dir() -> PathBuf {
    let dir = std::env::var_os("QUIRE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures")));
    assert!(dir.join("README.md").is_file(), "fixtures not found at {} (set QUIRE_FIXTURES)", dir.display());
    dir
}

/// One tensor read from a GGUF file: its type, its shape (ne0 first) and its raw bytes.
pub struct GgufTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl GgufTensor {
    /// Values per row (ne0).
    pub fn row_len(&self) -> usize {
        self.shape[0]
    }

    /// Number of rows (product of the other dimensions).
    pub fn rows(&self) -> usize {
        self.shape[1..].iter().product()
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.row_len()).expect("whole blocks")
    }

    /// Row `r` as bytes.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.bytes[r * rb..(r + 1) * rb]
    }

    /// The whole tensor dequantized row by row with `dequantize_row`.
    pub fn dequantize(&self) -> Vec<f32> {
        let n = self.row_len();
        let mut out = vec![0.0f32; n * self.rows()];
        for (r, dst) in out.chunks_exact_mut(n).enumerate() {
            quire_kernels::dequantize_row(self.dtype, self.row(r), dst);
        }
        out
    }
}

/// Reads tensor `name` of fixture file `file` with gguf-rs (header) and std::fs (data).
pub fn read_tensor(file: &str, name: &str) -> GgufTensor {
    let path = fixtures_dir().join(file);
    let path_str = path.to_str().expect("utf-8 path");
    let model = gguf_rs::get_gguf_container(path_str)
        .and_then(|mut c| c.decode())
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let info =
        model.tensors().iter().find(|t| t.name == name).unwrap_or_else(|| panic!("{file}: no tensor {name}"));
    let dtype = DType::from_ggml(info.kind)
        .unwrap_or_else(|| panic!("{file}/{name}: unsupported ggml type {}", info.kind));
    let shape: Vec<usize> = info.shape.iter().map(|&d| d as usize).collect();
    let n: usize = shape.iter().product();
    let size = dtype.row_bytes(n).expect("whole blocks");
    let start = (model.data_offset() + info.offset) as usize;
    let data = std::fs::read(&path).expect("read gguf");
    assert!(start + size <= data.len(), "{file}/{name}: tensor past end of file");
    GgufTensor { dtype, shape, bytes: data[start..start + size].to_vec() }
}

/// A reproducible generator for one test.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values roughly like weights or activations: mostly N(0, scale²)-ish with a few
/// outliers, so blocks have realistic maxima.
pub fn random_values(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u: f32 = rng.random_range(-1.0..1.0) + rng.random_range(-1.0..1.0);
            let outlier = if rng.random_range(0..64) == 0 { 4.0 } else { 1.0 };
            u * scale * outlier
        })
        .collect()
}

/// `n` random bytes.
/// Where a quantized block keeps its f16 scale, and its f16 minimum or min scale if it has one (so tests
/// can make raw random bytes into blocks with known scales).
pub fn scale_offsets(dtype: DType) -> (usize, Option<usize>) {
    use quire_kernels::formats;
    match dtype {
        DType::Q8_0 | DType::Q4_0 | DType::Q5_0 | DType::IQ4_NL => (0, None),
        DType::Q4_K | DType::Q5_K | DType::Q4_1 | DType::Q5_1 => (0, Some(2)),
        DType::Q6_K => (formats::q6_k::D, None),
        DType::Q2_K => (formats::q2_k::D, Some(formats::q2_k::D + 2)),
        DType::Q3_K => (formats::q3_k::D, None),
        DType::IQ4_XS => (0, None),
        _ => unreachable!("{dtype} has no block scale"),
    }
}

pub fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.random()).collect()
}

/// Quantizes `values` to `dtype` with `quantize_row`.
pub fn quantize(dtype: DType, values: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; dtype.row_bytes(values.len()).expect("whole blocks")];
    quire_kernels::quantize_row(dtype, values, &mut out);
    out
}

/// Dequantizes a row of `n` values of `dtype`.
pub fn dequantize(dtype: DType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    quire_kernels::dequantize_row(dtype, bytes, &mut out);
    out
}

/// Every instruction set this CPU runs, scalar first. A set named by `QUIRE_REQUIRE_ISA` (`avx2` or
/// `avx512`; scripts/test.sh sets it from /proc/cpuinfo) must be among them: on a machine that should run
/// it, a skipped SIMD test is a failure, not a silent pass.
pub fn isas() -> Vec<quire_kernels::dispatch::Isa> {
    use quire_kernels::dispatch::{Isa, IsaKind};
    let all = Isa::all_supported();
    if let Ok(required) = std::env::var("QUIRE_REQUIRE_ISA") {
        let kind = IsaKind::ALL
            .into_iter()
            .find(|k| k.name() == required.trim())
            .unwrap_or_else(|| panic!("QUIRE_REQUIRE_ISA={required:?} is not scalar, avx2 or avx512"));
        assert!(Isa::detect(kind).is_some(), "QUIRE_REQUIRE_ISA={kind}, but this CPU does not run {kind}");
    }
    all
}

/// [`isas`] without the scalar reference: the sets to compare against it.
pub fn simd_isas() -> Vec<quire_kernels::dispatch::Isa> {
    isas().into_iter().filter(|i| *i != quire_kernels::dispatch::Isa::SCALAR).collect()
}

/// The set of `kind` if this CPU runs it (after the [`isas`] requirement check).
pub fn isa_of(kind: quire_kernels::dispatch::IsaKind) -> Option<quire_kernels::dispatch::Isa> {
    isas().into_iter().find(|i| i.kind() == kind)
}
