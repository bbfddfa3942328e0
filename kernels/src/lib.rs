//! Quantized block formats and CPU kernels for Quire.
//!
//! - [`formats`]: one file per GGUF/ggml block format with byte-identical layouts,
//!   scalar quantizers (llama.cpp's reference quantizers), dequantizers and reference
//!   dot products.
//! - [`x86`]: AVX2 dot products and AVX-512 (VNNI) panel kernels.
//! - [`matmul`]: a weight matrix times a batch of activation rows quantized once.
//! - [`prepacked`]: the weight layout the AVX-512 kernels read fastest, same bytes as the file.
//! - [`dispatch`]: the instruction set chosen once per process.
//!
//! Byte views of `f32` data (`bytemuck`) assume a little-endian target, as GGUF does.
//!
//! The crate knows nothing about models: it turns rows of bytes into rows of floats and
//! dot products. Rows are byte slices straight from a GGUF mmap; they may be unaligned.
//!
//! ```
//! use quire_kernels::{dequantize_row, quantize_row, vec_dot, vec_dot_scalar, DType};
//!
//! let n = 512;
//! let weights: Vec<f32> = (0..n).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
//! let acts: Vec<f32> = (0..n).map(|i| ((i * 5) % 11) as f32 * 0.1).collect();
//!
//! // A Q4_K weight row and its Q8_K activation row.
//! let mut w = vec![0u8; DType::Q4_K.row_bytes(n).unwrap()];
//! quantize_row(DType::Q4_K, &weights, &mut w);
//! let act_type = DType::Q4_K.vec_dot_type();
//! let mut a = vec![0u8; act_type.row_bytes(n).unwrap()];
//! quantize_row(act_type, &acts, &mut a);
//!
//! let dot = vec_dot(DType::Q4_K, n, &w, &a);
//! assert_eq!(dot, vec_dot_scalar(DType::Q4_K, n, &w, &a)); // K-quants: bit-identical
//!
//! let mut back = vec![0.0f32; n];
//! dequantize_row(DType::Q4_K, &w, &mut back);
//! let exact: f32 = weights.iter().zip(&acts).map(|(x, y)| x * y).sum();
//! let magnitude: f32 = weights.iter().zip(&acts).map(|(x, y)| (x * y).abs()).sum();
//! assert!((dot - exact).abs() < 0.01 * magnitude);
//! assert!(back.iter().zip(&weights).all(|(b, w)| (b - w).abs() < 0.5));
//! ```

pub mod dispatch;
pub mod formats;
pub mod matmul;
pub mod norm_rope;
pub mod prepacked;
pub mod x86;

#[cfg(not(target_endian = "little"))]
compile_error!("GGUF data and the kernels' f32 byte views are little-endian");

pub use matmul::{
    can_prepack, gemm, gemm_into_rows, gemm_prepacked, gemm_prepacked_into_rows, gemm_rows_into_rows,
    prepack, rows_beat_panels, QuantizedActs,
};

use dispatch::{Isa, IsaKind};
use formats::{check_row, format};

/// A tensor element format, named and numbered as in ggml.
#[allow(non_camel_case_types)] // ggml's spelling: Q4_K, Q8_0, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16 (the top half of an `f32`).
    BF16,
    /// 32 values: f16 scale, 32 × i8.
    Q8_0,
    /// 32 values: f16 scale, 32 × 4-bit with offset 8.
    Q4_0,
    /// 32 values: f16 scale and f16 minimum, 32 × 4-bit.
    Q4_1,
    /// 32 values: f16 scale, 32 × 5-bit with offset 16.
    Q5_0,
    /// 32 values: f16 scale and f16 minimum, 32 × 5-bit.
    Q5_1,
    /// 256 values: 16 sub-blocks with 4-bit scales and mins, 2-bit quants.
    Q2_K,
    /// 256 values: 16 sub-blocks with 6-bit signed scales, 3-bit quants with offset 4.
    Q3_K,
    /// 256 values: 8 sub-blocks with 6-bit scales and mins, 4-bit quants.
    Q4_K,
    /// 256 values: like Q4_K with 5-bit quants.
    Q5_K,
    /// 256 values: 16 sub-blocks with i8 scales, 6-bit quants with offset 32.
    Q6_K,
    /// 256 values: f32 scale, 256 × i8, 16 group sums (K-quant activations).
    Q8_K,
    /// 32 values: f16 scale, 32 × 4-bit indices into a fixed table of sixteen non-linear levels.
    IQ4_NL,
    /// 256 values: f16 scale, 8 sub-blocks with 6-bit scales, 4-bit indices into the IQ4_NL table.
    IQ4_XS,
}

impl DType {
    /// The format with ggml type id `id`, if this crate supports it.
    pub fn from_ggml(id: u32) -> Option<DType> {
        formats::ALL.into_iter().find(|d| d.ggml_id() == id)
    }

    /// ggml's type id (as stored in GGUF tensor infos).
    pub fn ggml_id(self) -> u32 {
        format(self).ggml_id
    }

    /// ggml's spelling of the name: "F32", "Q4_K", ...
    pub fn name(self) -> &'static str {
        format(self).name
    }

    /// Values per block: 1 for F32/F16/BF16, 32 for Q8_0/Q4_0/Q4_1/Q5_0/Q5_1, 256 for K types.
    pub fn block_len(self) -> usize {
        format(self).block_len
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        format(self).block_bytes
    }

    /// Bytes taken by `n` values, or `None` unless `n` is a multiple of the block length.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let f = format(self);
        n.is_multiple_of(f.block_len).then(|| n / f.block_len * f.block_bytes)
    }

    /// The activation format [`vec_dot`] expects with weights of this format: F32 for
    /// F32/F16/BF16, Q8_0 for the 32-value block formats, Q8_K for the K types.
    pub fn vec_dot_type(self) -> DType {
        format(self).vec_dot_type
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Dequantizes one row of `dst.len()` values of `dtype` from `src`.
///
/// # Panics
/// If `dst.len()` is not a multiple of the block length or `src.len()` is not
/// `dtype.row_bytes(dst.len())` (a caller bug).
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) {
    let f = format(dtype);
    check_row(f, src.len(), dst.len());
    match (dtype, dispatch::isa().kind()) {
        // F16 rows are read often (embeddings of F16 files, f16 KV-cache chunks in attention): `vcvtph2ps`.
        #[cfg(target_arch = "x86_64")]
        (DType::F16, IsaKind::Avx2 | IsaKind::Avx512) => {
            // SAFETY: the process instruction set was detected, and both require AVX2, FMA and F16C,
            // the features this kernel is compiled for.
            unsafe { x86::avx2::dequantize_f16(src, dst) }
        }
        _ => (f.dequantize)(src, dst),
    }
}

/// Quantizes one row of `src.len()` values into `dst` in `dtype`'s layout, with
/// llama.cpp's reference quantizer for that type (byte-identical output). The
/// activation formats Q8_0 and Q8_K use SIMD code on the process instruction set, with
/// the same bytes as the scalar code.
///
/// # Panics
/// If `src.len()` is not a multiple of the block length or `dst.len()` is not
/// `dtype.row_bytes(src.len())`.
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) {
    check_row(format(dtype), dst.len(), src.len());
    dispatch::quantize_checked(dispatch::isa(), dtype, src, dst);
}

/// Checks the operands of a dot product; panics on a mismatch. The SIMD kernels rely
/// on these lengths, so this runs before every dot.
#[inline]
fn check_dot(dtype: DType, n: usize, w: &[u8], act: &[u8]) {
    let f = format(dtype);
    check_row(f, w.len(), n);
    check_row(format(f.vec_dot_type), act.len(), n);
}

/// Dot product of one weight row (`n` values of `dtype`) with one activation row of `n`
/// values already in `dtype.vec_dot_type()` format (F32 activations as little-endian
/// `f32` bytes), using the process instruction set ([`dispatch::isa`]).
///
/// Quantized formats give exactly [`vec_dot_scalar`]'s result (exact integer parts, the
/// same float operations); F32/F16/BF16 differ from it only by float summation order.
///
/// # Panics
/// If `n` is not a multiple of the block length or a slice length does not match `n`.
pub fn vec_dot(dtype: DType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    check_dot(dtype, n, w, act);
    dispatch::vec_dot_checked(dispatch::isa(), dtype, n, w, act)
}

/// Same as [`vec_dot`], always with the scalar reference kernel.
///
/// # Panics
/// As [`vec_dot`].
pub fn vec_dot_scalar(dtype: DType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    check_dot(dtype, n, w, act);
    (format(dtype).vec_dot)(n, w, act)
}

/// `y += alpha·x`, where `x` holds `y.len()` values of `dtype` (F32 or F16, as
/// little-endian bytes): the weighted sum of attention values. Each element is one fused
/// multiply-add in `f32`, on every instruction set (so results do not depend on it).
///
/// # Panics
/// If `dtype` is not F32 or F16, or `x` does not hold `y.len()` values.
pub fn axpy(dtype: DType, alpha: f32, x: &[u8], y: &mut [f32]) {
    axpy_with(dispatch::isa(), dtype, alpha, x, y);
}

/// [`axpy`] with an explicit instruction set, for tests.
///
/// # Panics
/// As [`axpy`].
pub fn axpy_with(isa: Isa, dtype: DType, alpha: f32, x: &[u8], y: &mut [f32]) {
    assert!(matches!(dtype, DType::F32 | DType::F16), "axpy supports F32 and F16, not {dtype}");
    check_row(format(dtype), x.len(), y.len());
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2 | IsaKind::Avx512 => {
            // SAFETY: `isa` was detected, and both require AVX2, FMA and F16C, the features these
            // kernels are compiled for.
            unsafe {
                if dtype == DType::F32 {
                    x86::avx2::axpy_f32(alpha, x, y)
                } else {
                    x86::avx2::axpy_f16(alpha, x, y)
                }
            }
        }
        _ => {
            let width = dtype.block_bytes();
            for (xb, yv) in x.chunks_exact(width).zip(y.iter_mut()) {
                let v = if dtype == DType::F32 { formats::read_f32(xb, 0) } else { formats::read_f16(xb, 0) };
                *yv = alpha.mul_add(v, *yv);
            }
        }
    }
}

/// Checks that `n` rows of `row_bytes` bytes at a stride of `stride` bytes fit in `rows`.
fn check_rows(n: usize, row_bytes: usize, stride: usize, rows: &[u8]) {
    if n > 0 {
        let need = (n - 1).checked_mul(stride).and_then(|x| x.checked_add(row_bytes));
        assert!(
            need.is_some_and(|need| need <= rows.len()),
            "{n} rows of {row_bytes} bytes at stride {stride} do not fit in {}",
            rows.len()
        );
    }
}

/// Widens `dst.len() / (4·n)` rows of `n` values of `dtype` (row `t` at byte `t·stride` of `src`) to `f32`
/// little-endian bytes, back to back in `dst`: what [`dequantize_row`] gives row by row, in one call (attention
/// widens a chunk of cached keys or values at a time; a call per 128-value row cost more than the widening).
///
/// # Panics
/// If `dst` is not whole rows, `n` is not whole blocks of `dtype`, or the rows do not fit in `src`.
pub fn widen_rows(dtype: DType, src: &[u8], stride: usize, n: usize, dst: &mut [u8]) {
    widen_rows_with(dispatch::isa(), dtype, src, stride, n, dst);
}

/// [`widen_rows`] with an explicit instruction set, for tests.
pub fn widen_rows_with(isa: Isa, dtype: DType, src: &[u8], stride: usize, n: usize, dst: &mut [u8]) {
    assert!(n > 0 && dst.len().is_multiple_of(4 * n), "{} bytes are not rows of {n} f32", dst.len());
    let row_bytes = dtype.row_bytes(n).unwrap_or_else(|| panic!("{n} values are not whole {dtype} blocks"));
    check_rows(dst.len() / (4 * n), row_bytes, stride, src);
    match (dtype, isa.kind()) {
        #[cfg(target_arch = "x86_64")]
        (DType::F16, IsaKind::Avx2 | IsaKind::Avx512) => {
            // SAFETY: `isa` was detected, and both require AVX2, FMA and F16C, the features this
            // kernel is compiled for.
            unsafe { x86::avx2::widen_f16_rows(src, stride, n, dst) }
        }
        _ => {
            // A block (or 32 halves) at a time through the format's scalar code.
            let piece = if n.is_multiple_of(32) { 32 } else { dtype.block_len() };
            let piece_bytes = dtype.row_bytes(piece).expect("whole blocks");
            let mut buf = [0.0f32; 32];
            for (t, out) in dst.chunks_exact_mut(4 * n).enumerate() {
                let row = &src[t * stride..t * stride + row_bytes];
                for (p, o) in row.chunks_exact(piece_bytes).zip(out.chunks_exact_mut(4 * piece)) {
                    (format(dtype).dequantize)(p, &mut buf[..piece]);
                    o.copy_from_slice(bytemuck::cast_slice(&buf[..piece]));
                }
            }
        }
    }
}

/// Attention scores: `out[t] = scale · dot(row t, q)` for `t` in `0..out.len()`, where row `t`
/// holds `q.len() / 4` values of `dtype` (F32 or F16) at byte `t·stride` of `rows` and `q` is
/// `f32` little-endian bytes. Each score equals [`vec_dot`] of the same row times `scale`;
/// lengths are checked once for all rows.
///
/// # Panics
/// If `dtype` is not F32 or F16 or the rows do not fit in `rows`.
pub fn dot_rows(dtype: DType, q: &[u8], rows: &[u8], stride: usize, scale: f32, out: &mut [f32]) {
    dot_rows_with(dispatch::isa(), dtype, q, rows, stride, scale, out);
}

/// [`dot_rows`] with an explicit instruction set, for tests.
/// On AVX-512 f32 rows go through `x86::avx512_rows`, whose results are the AVX2 kernel's bit for bit.
pub fn dot_rows_with(
    isa: Isa,
    dtype: DType,
    q: &[u8],
    rows: &[u8],
    stride: usize,
    scale: f32,
    out: &mut [f32],
) {
    assert!(matches!(dtype, DType::F32 | DType::F16), "dot_rows supports F32 and F16, not {dtype}");
    let n_values = q.len() / 4;
    let row_bytes = n_values * dtype.block_bytes();
    check_rows(out.len(), row_bytes, stride, rows);
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx512 if dtype == DType::F32 => {
            // SAFETY: `isa` was detected: AVX-512 F/BW/VL/VNNI with AVX2, FMA and F16C.
            unsafe { x86::avx512_rows::dot_rows_f32(q, rows, stride, scale, out) }
        }
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2 | IsaKind::Avx512 => {
            // SAFETY: `isa` was detected, and both require AVX2, FMA and F16C, the features this
            // kernel is compiled for.
            unsafe { x86::avx2::dot_rows(dtype == DType::F16, q, rows, stride, scale, out) }
        }
        _ => {
            for (t, o) in out.iter_mut().enumerate() {
                let row = &rows[t * stride..t * stride + row_bytes];
                *o = dispatch::vec_dot_checked(isa, dtype, n_values, row, q) * scale;
            }
        }
    }
}

/// Attention output: `y = fma(p[t], row t, y)` for `t` in order, where row `t` holds
/// `y.len()` values of `dtype` (F32 or F16) at byte `t·stride` of `rows`. Equals calling
/// [`axpy`] row after row; lengths are checked once for all rows.
///
/// # Panics
/// If `dtype` is not F32 or F16 or the rows do not fit in `rows`.
pub fn axpy_rows(dtype: DType, p: &[f32], rows: &[u8], stride: usize, y: &mut [f32]) {
    axpy_rows_with(dispatch::isa(), dtype, p, rows, stride, y);
}

/// [`axpy_rows`] with an explicit instruction set, for tests.
pub fn axpy_rows_with(isa: Isa, dtype: DType, p: &[f32], rows: &[u8], stride: usize, y: &mut [f32]) {
    assert!(matches!(dtype, DType::F32 | DType::F16), "axpy_rows supports F32 and F16, not {dtype}");
    let row_bytes = y.len() * dtype.block_bytes();
    check_rows(p.len(), row_bytes, stride, rows);
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx512 if dtype == DType::F32 => {
            // SAFETY: `isa` was detected: AVX-512 F/BW/VL/VNNI with AVX2, FMA and F16C.
            unsafe { x86::avx512_rows::axpy_rows_f32(p, rows, stride, y) }
        }
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2 | IsaKind::Avx512 => {
            // SAFETY: `isa` was detected, and both require AVX2, FMA and F16C, the features this
            // kernel is compiled for.
            unsafe { x86::avx2::axpy_rows(dtype == DType::F16, p, rows, stride, y) }
        }
        _ => {
            for (t, &pt) in p.iter().enumerate() {
                axpy_with(isa, dtype, pt, &rows[t * stride..t * stride + row_bytes], y);
            }
        }
    }
}

/// `x[i] = e^x[i]` for every value: `f32::exp` (libm) element by element, or on AVX-512 with glibc sixteen at
/// a time with glibc's results bit for bit (`x86::avx512_exp`; glibc 2.27+ on CPUs with FMA, tested over every
/// `f32` below 88 in magnitude). SwiGLU and the attention softmax spend their time here.
pub fn exp_in_place(x: &mut [f32]) {
    exp_in_place_with(dispatch::isa(), x);
}

/// [`exp_in_place`] with an explicit instruction set, for tests.
pub fn exp_in_place_with(isa: Isa, x: &mut [f32]) {
    match isa.kind() {
        // Only where `f32::exp` is glibc's (the vector path reproduces glibc's `expf`; another libm would make
        // results depend on which values fall in the vector path).
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        // SAFETY: `isa` was detected, so the CPU has AVX-512 F and VL.
        IsaKind::Avx512 => unsafe { x86::avx512_exp::exp_in_place(x) },
        _ => x.iter_mut().for_each(|v| *v = v.exp()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_table_matches_ggml() {
        let expected = [
            (DType::F32, 0, "F32", 1, 4, DType::F32),
            (DType::F16, 1, "F16", 1, 2, DType::F32),
            (DType::BF16, 30, "BF16", 1, 2, DType::F32),
            (DType::Q8_0, 8, "Q8_0", 32, 34, DType::Q8_0),
            (DType::Q4_0, 2, "Q4_0", 32, 18, DType::Q8_0),
            (DType::Q4_1, 3, "Q4_1", 32, 20, DType::Q8_0),
            (DType::Q5_0, 6, "Q5_0", 32, 22, DType::Q8_0),
            (DType::Q5_1, 7, "Q5_1", 32, 24, DType::Q8_0),
            (DType::Q4_K, 12, "Q4_K", 256, 144, DType::Q8_K),
            (DType::Q5_K, 13, "Q5_K", 256, 176, DType::Q8_K),
            (DType::Q6_K, 14, "Q6_K", 256, 210, DType::Q8_K),
            (DType::Q8_K, 15, "Q8_K", 256, 292, DType::Q8_K),
            (DType::IQ4_NL, 20, "IQ4_NL", 32, 18, DType::Q8_0),
            (DType::Q2_K, 10, "Q2_K", 256, 84, DType::Q8_K),
            (DType::Q3_K, 11, "Q3_K", 256, 110, DType::Q8_K),
            (DType::IQ4_XS, 23, "IQ4_XS", 256, 136, DType::Q8_K),
        ];
        for (dtype, id, name, len, bytes, dot) in expected {
            assert_eq!(dtype.ggml_id(), id);
            assert_eq!(DType::from_ggml(id), Some(dtype));
            assert_eq!(dtype.name(), name);
            assert_eq!(dtype.to_string(), name);
            assert_eq!(dtype.block_len(), len);
            assert_eq!(dtype.block_bytes(), bytes);
            assert_eq!(dtype.vec_dot_type(), dot);
            assert_eq!(formats::format(dtype).dtype, dtype);
            assert_eq!(dtype.row_bytes(len * 3), Some(bytes * 3));
            if len > 1 {
                assert_eq!(dtype.row_bytes(len + 1), None);
            }
        }
        for id in [4, 5, 9, 16, 21, 22, 24, 29, 31, 1000] {
            assert_eq!(DType::from_ggml(id), None, "id {id}");
        }
    }

    #[test]
    #[should_panic(expected = "need 36 bytes")]
    fn dequantize_row_panics_on_wrong_source_length() {
        let mut out = [0.0f32; 64];
        dequantize_row(DType::Q4_0, &[0u8; 35], &mut out);
    }

    #[test]
    #[should_panic(expected = "not a multiple")]
    fn quantize_row_panics_on_partial_block() {
        let mut out = [0u8; 292];
        quantize_row(DType::Q8_K, &[0.0; 255], &mut out);
    }

    #[test]
    #[should_panic(expected = "Q8_K")]
    fn vec_dot_panics_on_wrong_activation_length() {
        vec_dot(DType::Q4_K, 256, &[0u8; 144], &[0u8; 291]);
    }
}
