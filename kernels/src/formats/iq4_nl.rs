//! IQ4_NL: blocks of 32 values as an f16 scale and 32 four-bit indices into a fixed non-linear table of
//! sixteen levels, `x = d·K[q]`.
//!
//! Layout (ggml `block_iq4_nl`, 18 bytes, the same as Q4_0's): `d: f16` at 0, `qs: [u8; 16]` at 2, byte `j`
//! holding index `j` in its low nibble and index `j + 16` in its high nibble. Dot products take Q8_0
//! activations.

use super::{array_at, read_f16, write_f16, Format, GROUP_MAX_EPS};
use crate::DType;

/// Values per block.
pub const BLOCK_LEN: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 18;
/// Offset of the 16 packed index bytes.
pub const QS: usize = 2;

/// ggml's `kvalues_iq4nl`: the sixteen levels, in increasing order.
pub const LEVELS: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

pub(crate) const FORMAT: Format = Format {
    dtype: DType::IQ4_NL,
    name: "IQ4_NL",
    ggml_id: 20,
    block_len: BLOCK_LEN,
    block_bytes: BLOCK_BYTES,
    vec_dot_type: DType::Q8_0,
    quantize,
    dequantize,
    vec_dot,
};

/// A borrowed IQ4_NL block.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy)]
pub struct BlockIq4Nl<'a>(pub &'a [u8; BLOCK_BYTES]);

impl<'a> BlockIq4Nl<'a> {
    /// The block scale.
    #[inline(always)]
    pub fn d(self) -> f32 {
        read_f16(self.0, 0)
    }

    /// The 16 packed index bytes.
    #[inline(always)]
    pub fn qs(self) -> &'a [u8; 16] {
        array_at(self.0, QS)
    }

    /// The level of value `j` (0..32), one of [`LEVELS`].
    #[inline(always)]
    pub fn level(self, j: usize) -> i32 {
        let byte = self.qs()[j % 16];
        LEVELS[(if j < 16 { byte & 0xf } else { byte >> 4 }) as usize] as i32
    }
}

/// Iterates over the blocks of an IQ4_NL row (trailing partial bytes are ignored).
pub fn blocks(row: &[u8]) -> impl Iterator<Item = BlockIq4Nl<'_>> {
    row.chunks_exact(BLOCK_BYTES).map(|b| BlockIq4Nl(b.try_into().expect("chunk is one block")))
}

/// ggml's `best_index_int8` over [`LEVELS`]: the index of the level nearest `x` (the upper one on a tie).
pub(crate) fn nearest_level(x: f32) -> usize {
    let val = |i: usize| LEVELS[i] as f32;
    if x <= val(0) {
        return 0;
    }
    if x >= val(15) {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mid = (ml + mu) / 2;
        if x < val(mid) {
            mu = mid;
        } else {
            ml = mid;
        }
    }
    if x - val(mu - 1) < val(mu) - x {
        mu - 1
    } else {
        mu
    }
}

/// `Σ w·q·x` and `Σ w·q²` of the levels `id·x` rounds to, in ggml's order of float operations.
fn fit(x: &[f32; BLOCK_LEN], weight: &[f32; BLOCK_LEN], id: f32) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for (&xj, &w) in x.iter().zip(weight) {
        let q = LEVELS[nearest_level(id * xj)] as f32;
        sumqx += w * q * xj;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// The scale of one 32-value block as ggml's `quantize_row_iq4_nl_impl` fits it without an importance matrix
/// (7 tries each side), shared by IQ4_NL and IQ4_XS: a first scale from the value of largest magnitude, then
/// the least-squares scale of each of 15 trial scales, kept when it fits better (weights `x²`). 0 for an
/// all-zero block.
pub(crate) fn fit_block_scale(x: &[f32; BLOCK_LEN]) -> f32 {
    const NTRY: i32 = 7;
    let weight: [f32; BLOCK_LEN] = std::array::from_fn(|j| x[j] * x[j]);
    let (amax, max) = super::signed_amax(x);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let d = -max / LEVELS[0] as f32;
    let (sumqx, sumq2) = fit(x, &weight, 1.0 / d);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let id = (itry + LEVELS[0] as i32) as f32 / max;
        let (sumqx, sumq2) = fit(x, &weight, id);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// The indices of 32 values at inverse scale `id`, packed as the format stores them (value `j` in the low
/// nibble of byte `j`, value `j + 16` in the high one).
pub(crate) fn pack_indices(x: &[f32], id: f32, out: &mut [u8]) {
    for j in 0..BLOCK_LEN / 2 {
        let (l0, l1) = (nearest_level(id * x[j]), nearest_level(id * x[j + BLOCK_LEN / 2]));
        out[j] = l0 as u8 | ((l1 as u8) << 4);
    }
}

/// ggml's IQ4_NL quantizer as llama-quantize runs it (`quantize_iq4_nl`, no importance matrix), byte for
/// byte: the block scale from [`fit_block_scale`], then every value rounded to its nearest level.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(BLOCK_LEN).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let scale = fit_block_scale(x.try_into().expect("one block"));
        write_f16(out, 0, scale);
        let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        pack_indices(x, id, &mut out[QS..QS + 16]);
    }
}

/// `x = d·K[q]`.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, out) in blocks(src).zip(dst.chunks_exact_mut(BLOCK_LEN)) {
        let d = block.d();
        for (j, y) in out.iter_mut().enumerate() {
            *y = d * block.level(j) as f32;
        }
    }
}

/// Reference IQ4_NL·Q8_0 dot: per block the exact `i32` sum of `K[q]·a` times `d_w·d_a`, accumulated in
/// `f32` block after block with a fused multiply-add (as Q4_0).
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w).zip(super::q8_0::blocks(act)).take(n / BLOCK_LEN) {
        let mut sumi = 0i32;
        for (j, &aj) in ab.qs().iter().enumerate() {
            sumi += wb.level(j) * aj as i8 as i32;
        }
        sum = (sumi as f32).mul_add(wb.d() * ab.d(), sum);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_level_picks_the_closest_and_the_upper_on_ties() {
        assert_eq!(nearest_level(-1000.0), 0);
        assert_eq!(nearest_level(1000.0), 15);
        for (i, &l) in LEVELS.iter().enumerate() {
            assert_eq!(nearest_level(l as f32), i, "level {l}");
        }
        // between −10 and 1: below the midpoint −4.5 the lower, at and above it the upper
        assert_eq!(nearest_level(-4.6), 7);
        assert_eq!(nearest_level(-4.5), 8);
        assert_eq!(nearest_level(0.0), 8);
    }
}
