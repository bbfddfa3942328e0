//! AVX-512 (F/BW/VL/VNNI) matrix kernels for the quantized weight formats.
//!
//! One lane per weight row: a *panel* of sixteen rows is transposed into a scratch
//! buffer so that every 512-bit vector holds four consecutive quants of each of the
//! sixteen rows (unsigned bytes), next to the rows' block scales as vectors. Activations
//! are broadcast four bytes at a time, so one `vpdpbusd` performs 64 multiply-adds for
//! sixteen outputs, and the block scales are applied with one vector multiply for
//! sixteen outputs. A packed panel is reused for every token of a batch (GEMM); a
//! single token (GEMV) pays the transposition once per weight byte read from memory.
//!
//! Every output is computed in exactly the order of the scalar reference in
//! [`crate::formats`]: an exact `i32` sum per block, then the same `f32` operations block
//! after block (fused multiply-adds exactly where the reference uses `mul_add`). So these kernels are bit-identical to the scalar
//! reference, whatever the batch size, tile shape or thread split.
//!
//! Integer parts: weights are unsigned (Q4_0 `q`, Q8_0 `q + 128`, K-quant levels) and
//! the offsets are subtracted through the activation sums: `Σ (q − o)·a = Σ q·a − o·Σ a`.
//! All sums are far inside `i32`.

use std::arch::x86_64::*;

use crate::formats::{
    array_at, iq4_nl, iq4_xs, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, q8_k,
};
use crate::prepacked::Layout;
use crate::DType;

/// Rows per panel: one per 32-bit lane.
pub const PANEL_ROWS: usize = crate::matmul::PANEL_ROWS;

/// How far ahead of the packing position each row is prefetched.
const PREFETCH_BYTES: usize = 512;

/// How many blocks ahead a prepacked panel is prefetched (4.5 KiB of Q4_0, 8.5 KiB of Q8_0).
const PREFETCH_BLOCKS: usize = 16;

/// Vectors of packed scratch per block of 32 values (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL): eight quant
/// vectors, the sixteen block scales and (Q4_1, Q5_1) the sixteen block minimums.
const Q32_VECS: usize = 10;
/// Vectors per Q4_K/Q5_K super-block: 64 quant vectors, 8 scale vectors (i32), 4 min
/// pair vectors (i16 pairs), `d` and `dmin` (IQ4_XS: its scales, `128·scale` as the min pairs, no `dmin`).
const K4_VECS: usize = 78;
/// Vectors per super-block of sixteen 16-value sub-blocks (Q2_K, Q3_K, Q6_K): 64 quant vectors, 16 scale
/// vectors (i32), 8 vectors of i16 pairs (the scales, for the offset of Q3_K/Q6_K, or Q2_K's mins), `d`
/// and Q2_K's `dmin`.
const K6_VECS: usize = 90;

/// Packed vectors per block of `dtype`.
pub fn vecs_per_block(dtype: DType) -> usize {
    match dtype {
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 | DType::IQ4_NL => Q32_VECS,
        DType::Q4_K | DType::Q5_K | DType::IQ4_XS => K4_VECS,
        DType::Q2_K | DType::Q3_K | DType::Q6_K => K6_VECS,
        _ => unreachable!("no AVX-512 panel kernel for {dtype}"),
    }
}

/// Sixteen weight rows of one matrix: `w[starts[i]..starts[i] + row_bytes]` is lane `i`.
/// Lanes past the last real row repeat it (their results are dropped).
#[derive(Clone, Copy)]
pub struct Panel<'a> {
    w: &'a [u8],
    /// Row starts as gather offsets (they fit in i32: checked in `new`).
    starts: [i32; PANEL_ROWS],
    rows: [&'a [u8]; PANEL_ROWS],
    row_bytes: usize,
}

impl<'a> Panel<'a> {
    /// Rows `first..first + n` (1 ≤ n ≤ 16) of a matrix stored as `w`, `row_bytes` per row.
    ///
    /// # Panics
    /// If a row falls outside `w`, `n` is not in 1..=16, or `w` is 2 GiB or larger (the
    /// scale gathers use 32-bit offsets).
    pub fn new(w: &'a [u8], row_bytes: usize, first: usize, n: usize) -> Panel<'a> {
        assert!((1..=PANEL_ROWS).contains(&n), "a panel has 1..=16 rows, not {n}");
        assert!((first + n) * row_bytes <= w.len(), "panel rows outside the matrix");
        assert!(w.len() < i32::MAX as usize, "matrix too large for 32-bit gather offsets");
        let starts: [usize; PANEL_ROWS] = std::array::from_fn(|i| (first + i.min(n - 1)) * row_bytes);
        let rows = starts.map(|s| &w[s..s + row_bytes]);
        Panel { w, starts: starts.map(|s| s as i32), rows, row_bytes }
    }
}

/// Where the blocks of a panel are read from.
#[derive(Clone, Copy)]
pub enum PanelSrc<'a> {
    /// Sixteen rows in the file's layout (blocks of `dtype`, `block_bytes` each: the inner loops read the size,
    /// and looking it up from the type there kept the transposes from being inlined), transposed as they are read.
    File { panel: &'a Panel<'a>, dtype: DType, block_bytes: usize },
    /// A panel stored by [`prepack_panel`]: its bytes, already transposed.
    Prepacked { bytes: &'a [u8], layout: Layout },
}

// ---------------------------------------------------------------- loads and transposes

/// Dword `j` (bytes `off + 4j .. off + 4j + 4`) of each of the sixteen rows, for j in
/// 0..4: `out[j]` lane `i` is that dword of row `i`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn transpose_16x4(p: &Panel, off: usize) -> [__m512i; 4] {
    assert!(off + 16 <= p.row_bytes, "transpose inside the rows");
    // SAFETY: every row slice has `row_bytes` bytes and `off + 16 ≤ row_bytes`, so each
    // 16-byte unaligned load stays inside its row. (One check here instead of sixteen.)
    let load = |i: usize| unsafe { _mm_loadu_si128(p.rows[i].as_ptr().add(off).cast()) };
    let quad = |k: usize| {
        let v = _mm512_castsi128_si512(load(4 * k));
        let v = _mm512_inserti32x4::<1>(v, load(4 * k + 1));
        let v = _mm512_inserti32x4::<2>(v, load(4 * k + 2));
        _mm512_inserti32x4::<3>(v, load(4 * k + 3))
    };
    // Lane e of `lo`: dword e/8 of row e%8 (of the two quads); `hi`: dwords 2 and 3.
    let idx_lo = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    let idx_hi = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
    let (z0, z1, z2, z3) = (quad(0), quad(1), quad(2), quad(3));
    let a_lo = _mm512_permutex2var_epi32(z0, idx_lo, z1);
    let a_hi = _mm512_permutex2var_epi32(z0, idx_hi, z1);
    let b_lo = _mm512_permutex2var_epi32(z2, idx_lo, z3);
    let b_hi = _mm512_permutex2var_epi32(z2, idx_hi, z3);
    [
        _mm512_shuffle_i32x4::<0x44>(a_lo, b_lo),
        _mm512_shuffle_i32x4::<0xEE>(a_lo, b_lo),
        _mm512_shuffle_i32x4::<0x44>(a_hi, b_hi),
        _mm512_shuffle_i32x4::<0xEE>(a_hi, b_hi),
    ]
}

/// The four bytes at `off` of each row, as one lane each.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn gather_u32(p: &Panel, off: usize) -> __m512i {
    assert!(off + 4 <= p.row_bytes, "gather inside the rows");
    // SAFETY: `starts` is 64 readable bytes. Every lane reads 4 bytes at
    // `w + starts[i] + off`, inside row i (checked above: off + 4 ≤ row_bytes) and so
    // inside `w` (Panel::new checked the rows, and that these offsets fit in i32).
    unsafe {
        let starts = _mm512_loadu_si512(p.starts.as_ptr().cast());
        let vindex = _mm512_add_epi32(starts, _mm512_set1_epi32(off as i32));
        _mm512_i32gather_epi32::<1>(vindex, p.w.as_ptr().cast())
    }
}

/// The low (`SHIFT` = 0) or high (`SHIFT` = 16) half of each lane as an f16, to `f32`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn halves_to_f32<const SHIFT: u32>(v: __m512i) -> __m512 {
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<SHIFT>(v)))
}

/// The f16 at byte `off` of each row (inside the row), as the low half of each lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn gather_f16(p: &Panel, off: usize) -> __m512i {
    // A 4-byte gather ending at the f16 when there is room before it (Q6_K's scale ends its row).
    if off >= 2 {
        _mm512_srli_epi32::<16>(gather_u32(p, off - 2))
    } else {
        gather_u32(p, off)
    }
}

/// A 64-byte vector at `at` of `bytes`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load64(bytes: &[u8], at: usize) -> __m512i {
    let v: &[u8; 64] = array_at(bytes, at);
    // SAFETY: 64 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

/// Bytes `at..at + 16` of block `b` of each row of a panel (`$src: &PanelSrc`): `out[j]` lane `i` is word
/// `j` of them in row `i` (what [`transpose_16x4`] makes of the file's layout). A macro so that it is inlined
/// into the packing functions (`#[inline(always)]` is not allowed on `#[target_feature]` functions, and as a
/// call it returned its four vectors through memory: a quarter of the decode time in profiles). Expands
/// inside an AVX-512 `#[target_feature]` function.
macro_rules! quad {
    ($src:expr, $b:expr, $at:expr) => {{
        let (src, b, at): (&PanelSrc, usize, usize) = ($src, $b, $at);
        match *src {
            PanelSrc::File { panel, block_bytes, .. } => transpose_16x4(panel, b * block_bytes + at),
            PanelSrc::Prepacked { bytes, layout } => {
                let base = b * layout.panel_block_bytes() + layout.word_vector(at);
                [
                    load64(bytes, base),
                    load64(bytes, base + 64),
                    load64(bytes, base + 128),
                    load64(bytes, base + 192),
                ]
            }
        }
    }};
}

/// The f16 scale at byte `at` of block `b` of each row, as `f32` lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scale_f32(src: &PanelSrc, b: usize, at: usize) -> __m512 {
    match *src {
        PanelSrc::File { panel, block_bytes, .. } => {
            halves_to_f32::<0>(gather_f16(panel, b * block_bytes + at))
        }
        PanelSrc::Prepacked { bytes, layout } if layout.scale_at == Some(at) => {
            let scales: &[u8; 32] = array_at(bytes, b * layout.panel_block_bytes() + layout.scales_at());
            // SAFETY: 32 readable bytes; `loadu` has no alignment requirement.
            _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(scales.as_ptr().cast()) })
        }
        // an f16 inside one of the words (Q4_1/Q5_1's d and m, Q2_K's d and dmin)
        PanelSrc::Prepacked { .. } => {
            let w = word(src, b, at - at % 4);
            if at.is_multiple_of(4) {
                halves_to_f32::<0>(w)
            } else {
                halves_to_f32::<16>(w)
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn as_int(v: __m512) -> __m512i {
    _mm512_castps_si512(v)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn as_float(v: __m512i) -> __m512 {
    _mm512_castsi512_ps(v)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn splat(x: u32) -> __m512i {
    _mm512_set1_epi32(x as i32)
}

/// Broadcast of the little-endian dword at `off` of an activation block.
#[inline(always)]
fn act_dword<const N: usize>(block: &[u8; N], off: usize) -> i32 {
    i32::from_le_bytes(*array_at(block, off))
}

// ---------------------------------------------------------------- packing

/// Packs block `b` of a Q4_0 panel: `out[g]` (g < 8) holds values `4g..4g + 4` of each
/// row, `out[8]` the row scales as `f32`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_q4_0_block(src: &PanelSrc, b: usize, out: &mut [__m512i; Q32_VECS]) {
    let qs = quad!(src, b, q4_0::QS);
    let low = splat(0x0f0f_0f0f);
    for g in 0..4 {
        out[g] = _mm512_and_si512(qs[g], low);
        out[g + 4] = _mm512_and_si512(_mm512_srli_epi32::<4>(qs[g]), low);
    }
    out[8] = as_int(scale_f32(src, b, 0));
    out[9] = _mm512_setzero_si512();
}

/// Packs block `b` of a Q4_1 panel: as Q4_0, with the block minimums in `out[9]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_q4_1_block(src: &PanelSrc, b: usize, out: &mut [__m512i; Q32_VECS]) {
    let qs = quad!(src, b, q4_1::QS);
    let low = splat(0x0f0f_0f0f);
    for g in 0..4 {
        out[g] = _mm512_and_si512(qs[g], low);
        out[g + 4] = _mm512_and_si512(_mm512_srli_epi32::<4>(qs[g]), low);
    }
    out[8] = as_int(scale_f32(src, b, 0));
    out[9] = as_int(scale_f32(src, b, 2));
}

/// Packs block `b` of an IQ4_NL panel: the levels plus 128 as unsigned bytes (table lookup by shuffle), in
/// Q4_0's order; the activations' side data takes the 128 off again, as for Q8_0.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_iq4_nl_block(src: &PanelSrc, b: usize, out: &mut [__m512i; Q32_VECS]) {
    let table = shifted_level_table();
    let qs = quad!(src, b, iq4_nl::QS);
    let low = splat(0x0f0f_0f0f);
    for g in 0..4 {
        out[g] = _mm512_shuffle_epi8(table, _mm512_and_si512(qs[g], low));
        out[g + 4] = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi32::<4>(qs[g]), low));
    }
    out[8] = as_int(scale_f32(src, b, 0));
    out[9] = _mm512_setzero_si512();
}

/// The IQ4_NL levels plus 128 (unsigned bytes) in every 128-bit lane, for `vpshufb` lookups.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn shifted_level_table() -> __m512i {
    let shifted = iq4_nl::LEVELS.map(|l| (l as i16 + 128) as u8);
    // SAFETY: 16 readable bytes; `loadu` has no alignment requirement.
    _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(shifted.as_ptr().cast()) })
}

/// Packs block `b` of a Q5_0 panel: as Q4_0, with each value's fifth bit from `qh` put at bit 4 of its byte.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_q5_0_block(src: &PanelSrc, b: usize, out: &mut [__m512i; Q32_VECS]) {
    pack_five_bit_levels(src, b, q5_0::QS, q5_0::QH, out);
    out[8] = as_int(scale_f32(src, b, 0));
    out[9] = _mm512_setzero_si512();
}

/// Packs block `b` of a Q5_1 panel: the levels as Q5_0's, the block minimums in `out[9]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_q5_1_block(src: &PanelSrc, b: usize, out: &mut [__m512i; Q32_VECS]) {
    pack_five_bit_levels(src, b, q5_1::QS, q5_1::QH, out);
    out[8] = as_int(scale_f32(src, b, 0));
    out[9] = as_int(scale_f32(src, b, 2));
}

/// The 5-bit levels of a Q5_0/Q5_1 block (nibbles at `qs_at`, fifth bits at `qh_at`) into `out[..8]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_five_bit_levels(src: &PanelSrc, b: usize, qs_at: usize, qh_at: usize, out: &mut [__m512i; Q32_VECS]) {
    let qs = quad!(src, b, qs_at);
    let qh = word(src, b, qh_at);
    let (low, nibble) = (splat(0x0f0f_0f0f), splat(0xf));
    // Four bits of qh, to bit 4 of the four bytes of a lane: the product puts copies of the nibble at
    // shifts 0, 7, 14 and 21 (no overlap, no carries), so bit k lands at bit 8k.
    let spread = |shift: usize| {
        let t = _mm512_and_si512(shr(qh, shift), nibble);
        let t = _mm512_and_si512(_mm512_mullo_epi32(t, splat(0x0020_4081)), splat(0x0101_0101));
        _mm512_slli_epi32::<4>(t)
    };
    for g in 0..4 {
        out[g] = _mm512_or_si512(_mm512_and_si512(qs[g], low), spread(4 * g));
        out[g + 4] =
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(qs[g]), low), spread(16 + 4 * g));
    }
}

/// Packs block `b` of a Q8_0 panel: quants shifted to unsigned (`q + 128`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_q8_0_block(src: &PanelSrc, b: usize, out: &mut [__m512i; Q32_VECS]) {
    let flip = splat(0x8080_8080);
    let lo = quad!(src, b, q8_0::QS);
    let hi = quad!(src, b, q8_0::QS + 16);
    for g in 0..4 {
        out[g] = _mm512_xor_si512(lo[g], flip);
        out[g + 4] = _mm512_xor_si512(hi[g], flip);
    }
    out[8] = as_int(scale_f32(src, b, 0));
    out[9] = _mm512_setzero_si512();
}

/// The Q4_K/Q5_K super-block header of each row: `d`, `dmin`, the eight scales as i32
/// vectors and the eight mins as four vectors of i16 pairs `(m[2j], m[2j+1])`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_k4_header(src: &PanelSrc, sb: usize, out: &mut [__m512i]) {
    let [dm, w0, w1, w2] = quad!(src, sb, 0);
    let (low6, low4, low2) = (splat(0x3f3f_3f3f), splat(0x0f0f_0f0f), splat(0x0303_0303));
    // unpack_k4_scales, lane-wise: four 6-bit scales per dword.
    let sc_lo = _mm512_and_si512(w0, low6);
    let sc_hi = _mm512_or_si512(
        _mm512_and_si512(w2, low4),
        _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w0), low2)),
    );
    let m_lo = _mm512_and_si512(w1, low6);
    let m_hi = _mm512_or_si512(
        _mm512_and_si512(_mm512_srli_epi32::<4>(w2), low4),
        _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w1), low2)),
    );
    let byte = splat(0xff);
    for (k, v) in [sc_lo, sc_hi].into_iter().enumerate() {
        out[64 + 4 * k] = _mm512_and_si512(v, byte);
        out[64 + 4 * k + 1] = _mm512_and_si512(_mm512_srli_epi32::<8>(v), byte);
        out[64 + 4 * k + 2] = _mm512_and_si512(_mm512_srli_epi32::<16>(v), byte);
        out[64 + 4 * k + 3] = _mm512_srli_epi32::<24>(v);
    }
    // (m0, m1) and (m2, m3) from each mins dword: bytes 0,1 → words 0,1 etc.
    let pair_lo = splat(0x0000_00ff);
    let pair_hi = splat(0x00ff_0000);
    for (k, v) in [m_lo, m_hi].into_iter().enumerate() {
        let first = _mm512_or_si512(
            _mm512_and_si512(v, pair_lo),
            _mm512_and_si512(_mm512_slli_epi32::<8>(v), pair_hi),
        );
        let v2 = _mm512_srli_epi32::<16>(v);
        let second = _mm512_or_si512(
            _mm512_and_si512(v2, pair_lo),
            _mm512_and_si512(_mm512_slli_epi32::<8>(v2), pair_hi),
        );
        out[72 + 2 * k] = first;
        out[72 + 2 * k + 1] = second;
    }
    out[76] = as_int(halves_to_f32::<0>(dm));
    out[77] = as_int(halves_to_f32::<16>(dm));
}

/// Packs super-block `sb` of a Q4_K panel: `out[G]` holds values `4G..4G + 4`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_q4_k_block(src: &PanelSrc, sb: usize, out: &mut [__m512i; K4_VECS]) {
    pack_k4_header(src, sb, out);
    let low = splat(0x0f0f_0f0f);
    for k in 0..8 {
        // Dwords 4k..4k+4 of qs: chunk c = k / 2, bytes l = 16(k % 2) + 4j.
        let q = quad!(src, sb, q4_k::QS + 16 * k);
        let (c, half) = (k / 2, k % 2);
        for (j, v) in q.into_iter().enumerate() {
            let g = 16 * c + 4 * half + j;
            out[g] = _mm512_and_si512(v, low);
            out[g + 8] = _mm512_and_si512(_mm512_srli_epi32::<4>(v), low);
        }
    }
}

/// Packs super-block `sb` of a Q5_K panel (as Q4_K, with the fifth bit from `qh`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_q5_k_block(src: &PanelSrc, sb: usize, out: &mut [__m512i; K4_VECS]) {
    pack_k4_header(src, sb, out);
    let low = splat(0x0f0f_0f0f);
    let bit = splat(0x0101_0101);
    let qh_lo = quad!(src, sb, q5_k::QH);
    let qh_hi = quad!(src, sb, q5_k::QH + 16);
    let qh: [__m512i; 8] = std::array::from_fn(|j| if j < 4 { qh_lo[j] } else { qh_hi[j - 4] });
    for k in 0..8 {
        let q = quad!(src, sb, q5_k::QS + 16 * k);
        let (c, half) = (k / 2, k % 2);
        for (j, v) in q.into_iter().enumerate() {
            let l = 4 * half + j; // qh dword of these 4 values
            let h = qh[l];
            let h_lo = _mm512_and_si512(_mm512_srl_epi32(h, _mm_cvtsi32_si128(2 * c as i32)), bit);
            let h_hi = _mm512_and_si512(_mm512_srl_epi32(h, _mm_cvtsi32_si128(2 * c as i32 + 1)), bit);
            let g = 16 * c + l;
            out[g] = _mm512_or_si512(_mm512_and_si512(v, low), _mm512_slli_epi32::<4>(h_lo));
            out[g + 8] = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi32::<4>(v), low),
                _mm512_slli_epi32::<4>(h_hi),
            );
        }
    }
}

/// Packs super-block `sb` of a Q6_K panel: unsigned 6-bit quants, the sixteen signed
/// scales as i32 vectors, the same as eight vectors of i16 pairs, and `d`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_q6_k_block(src: &PanelSrc, sb: usize, out: &mut [__m512i; K6_VECS]) {
    let low = splat(0x0f0f_0f0f);
    let two = splat(0x0303_0303);
    for half in 0..2 {
        let mut ql = [_mm512_setzero_si512(); 16];
        for k in 0..4 {
            ql[4 * k..4 * k + 4].copy_from_slice(&quad!(src, sb, q6_k::QL + 64 * half + 16 * k));
        }
        let mut qh = [_mm512_setzero_si512(); 8];
        for k in 0..2 {
            qh[4 * k..4 * k + 4].copy_from_slice(&quad!(src, sb, q6_k::QH + 32 * half + 16 * k));
        }
        for j in 0..8 {
            let (a, b, h) = (ql[j], ql[j + 8], qh[j]);
            let high = |shifted: __m512i| _mm512_slli_epi32::<4>(_mm512_and_si512(shifted, two));
            let base = 32 * half;
            out[base + j] = _mm512_or_si512(_mm512_and_si512(a, low), high(h));
            out[base + 8 + j] = _mm512_or_si512(_mm512_and_si512(b, low), high(_mm512_srli_epi32::<2>(h)));
            out[base + 16 + j] = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi32::<4>(a), low),
                high(_mm512_srli_epi32::<4>(h)),
            );
            out[base + 24 + j] = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi32::<4>(b), low),
                high(_mm512_srli_epi32::<6>(h)),
            );
        }
    }
    let sc = quad!(src, sb, q6_k::SCALES);
    let word = splat(0x0000_ffff);
    for (k, v) in sc.into_iter().enumerate() {
        out[64 + 4 * k] = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(v));
        out[64 + 4 * k + 1] = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<16>(v));
        out[64 + 4 * k + 2] = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<8>(v));
        out[64 + 4 * k + 3] = _mm512_srai_epi32::<24>(v);
        // Words of `even`: sext(byte 0), sext(byte 2); of `odd`: sext(byte 1), sext(byte 3).
        let even = _mm512_srai_epi16::<8>(_mm512_slli_epi16::<8>(v));
        let odd = _mm512_srai_epi16::<8>(v);
        out[80 + 2 * k] = _mm512_or_si512(_mm512_and_si512(even, word), _mm512_slli_epi32::<16>(odd));
        out[80 + 2 * k + 1] = _mm512_or_si512(_mm512_srli_epi32::<16>(even), _mm512_andnot_si512(word, odd));
    }
    out[88] = as_int(scale_f32(src, sb, q6_k::D));
    out[89] = _mm512_setzero_si512();
}

/// The word at byte `at` of block `b` of each row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn word(src: &PanelSrc, b: usize, at: usize) -> __m512i {
    match *src {
        PanelSrc::File { panel, block_bytes, .. } => gather_u32(panel, b * block_bytes + at),
        PanelSrc::Prepacked { bytes, layout } => {
            load64(bytes, b * layout.panel_block_bytes() + layout.word_vector(at))
        }
    }
}

/// Bytes `at..at + 32` of block `b` of each row: `out[j]` lane `i` is word `j` of them in row `i`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn octet(src: &PanelSrc, b: usize, at: usize) -> [__m512i; 8] {
    let (lo, hi) = (quad!(src, b, at), quad!(src, b, at + 16));
    std::array::from_fn(|j| if j < 4 { lo[j] } else { hi[j - 4] })
}

/// Each byte of `v` shifted right by `shift` bits (the bits that cross into a byte are masked off by the
/// callers).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn shr(v: __m512i, shift: usize) -> __m512i {
    _mm512_srlv_epi32(v, splat(shift as u32))
}

/// The i16 pairs `(lo, hi)` of two vectors of i32 values in i16 range.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn i16_pairs(lo: __m512i, hi: __m512i) -> __m512i {
    _mm512_or_si512(_mm512_and_si512(lo, splat(0xffff)), _mm512_slli_epi32::<16>(hi))
}

/// Packs super-block `sb` of a Q2_K panel: the 2-bit levels (value `v` in vector `v / 4`, as Q6_K), the
/// sixteen 4-bit scales as i32 vectors, the mins as eight vectors of i16 pairs, `d` and `dmin`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_q2_k_block(src: &PanelSrc, sb: usize, out: &mut [__m512i; K6_VECS]) {
    let (pair, nibble) = (splat(0x0303_0303), splat(0xf));
    for half in 0..2 {
        let qs = octet(src, sb, q2_k::QS + 32 * half);
        for g in 0..4 {
            for j in 0..8 {
                out[32 * half + 8 * g + j] = _mm512_and_si512(shr(qs[j], 2 * g), pair);
            }
        }
    }
    for (k, w) in quad!(src, sb, q2_k::SCALES).into_iter().enumerate() {
        for i in 0..4 {
            out[64 + 4 * k + i] = _mm512_and_si512(shr(w, 8 * i), nibble);
        }
        let min = |i: usize| _mm512_and_si512(shr(w, 8 * i + 4), nibble);
        out[80 + 2 * k] = i16_pairs(min(0), min(1));
        out[80 + 2 * k + 1] = i16_pairs(min(2), min(3));
    }
    out[88] = as_int(scale_f32(src, sb, q2_k::D));
    out[89] = as_int(scale_f32(src, sb, q2_k::D + 2));
}

/// Packs super-block `sb` of a Q3_K panel: unsigned 3-bit levels (`q + 4`: two bits from `qs`, the third
/// from `hmask`; value `v` in vector `v / 4`), the sixteen signed scales as i32 vectors and as eight
/// vectors of i16 pairs, and `d`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_q3_k_block(src: &PanelSrc, sb: usize, out: &mut [__m512i; K6_VECS]) {
    let (pair, bit0) = (splat(0x0303_0303), splat(0x0101_0101));
    let hmask = octet(src, sb, q3_k::HMASK);
    for half in 0..2 {
        let qs = octet(src, sb, q3_k::QS + 32 * half);
        for g in 0..4 {
            for j in 0..8 {
                let low = _mm512_and_si512(shr(qs[j], 2 * g), pair);
                let high = _mm512_and_si512(shr(hmask[j], 4 * half + g), bit0);
                out[32 * half + 8 * g + j] = _mm512_or_si512(low, _mm512_slli_epi32::<2>(high));
            }
        }
    }
    // The 6-bit scales four bytes at a time, as ggml's dequantizer rebuilds them from the three words.
    let w: [__m512i; 3] = std::array::from_fn(|i| word(src, sb, q3_k::SCALES + 4 * i));
    let (m1, m2) = (splat(0x0303_0303), splat(0x0f0f_0f0f));
    let and = _mm512_and_si512;
    let top = |shift: usize| _mm512_slli_epi32::<4>(and(shr(w[2], shift), m1));
    let aux = [
        _mm512_or_si512(and(w[0], m2), top(0)),
        _mm512_or_si512(and(w[1], m2), top(2)),
        _mm512_or_si512(and(shr(w[0], 4), m2), top(4)),
        _mm512_or_si512(and(shr(w[1], 4), m2), top(6)),
    ];
    for (k, a) in aux.into_iter().enumerate() {
        let sc = |i: usize| _mm512_sub_epi32(and(shr(a, 8 * i), splat(0xff)), splat(32));
        for i in 0..4 {
            out[64 + 4 * k + i] = sc(i);
        }
        out[80 + 2 * k] = i16_pairs(sc(0), sc(1));
        out[80 + 2 * k + 1] = i16_pairs(sc(2), sc(3));
    }
    out[88] = as_int(scale_f32(src, sb, q3_k::D));
    out[89] = _mm512_setzero_si512();
}

/// Packs super-block `sb` of an IQ4_XS panel: the levels plus 128 as unsigned bytes (table lookup by
/// shuffle; value `v` in vector `v / 4`), the eight signed scales as i32 vectors, `128·scale` as four
/// vectors of i16 pairs (what the +128 adds, against the sub-block sums), and `d`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_iq4_xs_block(src: &PanelSrc, sb: usize, out: &mut [__m512i; K4_VECS]) {
    let table = shifted_level_table();
    let low = splat(0x0f0f_0f0f);
    for s in 0..8 {
        let q = quad!(src, sb, iq4_xs::QS + 16 * s);
        for m in 0..4 {
            out[8 * s + m] = _mm512_shuffle_epi8(table, _mm512_and_si512(q[m], low));
            out[8 * s + 4 + m] =
                _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi32::<4>(q[m]), low));
        }
    }
    let head = word(src, sb, 0);
    let (high, lows) = (_mm512_srli_epi32::<16>(head), word(src, sb, iq4_xs::SCALES_L));
    let sc = |s: usize| {
        let l = _mm512_and_si512(shr(lows, 4 * s), splat(0xf));
        let h = _mm512_and_si512(shr(high, 2 * s), splat(3));
        _mm512_sub_epi32(_mm512_or_si512(l, _mm512_slli_epi32::<4>(h)), splat(32))
    };
    for s in 0..8 {
        out[64 + s] = sc(s);
    }
    for j in 0..4 {
        out[72 + j] = i16_pairs(_mm512_slli_epi32::<7>(sc(2 * j)), _mm512_slli_epi32::<7>(sc(2 * j + 1)));
    }
    out[76] = as_int(halves_to_f32::<0>(head));
    out[77] = _mm512_setzero_si512();
}

/// Packs block `b` of a panel of `dtype` blocks into `dst` ([`vecs_per_block`] vectors).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_block(dtype: DType, src: &PanelSrc, b: usize, dst: &mut [__m512i]) {
    match dtype {
        DType::Q4_0 => pack_q4_0_block(src, b, dst.try_into().expect("block vectors")),
        DType::Q4_1 => pack_q4_1_block(src, b, dst.try_into().expect("block vectors")),
        DType::Q5_0 => pack_q5_0_block(src, b, dst.try_into().expect("block vectors")),
        DType::Q5_1 => pack_q5_1_block(src, b, dst.try_into().expect("block vectors")),
        DType::Q8_0 => pack_q8_0_block(src, b, dst.try_into().expect("block vectors")),
        DType::IQ4_NL => pack_iq4_nl_block(src, b, dst.try_into().expect("block vectors")),
        DType::Q4_K => pack_q4_k_block(src, b, dst.try_into().expect("block vectors")),
        DType::Q5_K => pack_q5_k_block(src, b, dst.try_into().expect("block vectors")),
        DType::Q6_K => pack_q6_k_block(src, b, dst.try_into().expect("block vectors")),
        DType::Q2_K => pack_q2_k_block(src, b, dst.try_into().expect("block vectors")),
        DType::Q3_K => pack_q3_k_block(src, b, dst.try_into().expect("block vectors")),
        DType::IQ4_XS => pack_iq4_xs_block(src, b, dst.try_into().expect("block vectors")),
        _ => unreachable!("no AVX-512 panel kernel for {dtype}"),
    }
}

/// Asks for the cache lines of a prepacked panel (`bytes`, blocks of `block_bytes` bytes) that
/// lie [`PREFETCH_BLOCKS`] Q4_0-sized panel blocks (4.5 KiB) past block `b`, one block's worth per call,
/// into the next panel too: prepacked panels of a matrix are contiguous. The hardware prefetcher
/// alone leaves the loads waiting on memory.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn prefetch_prepacked(bytes: &[u8], block_bytes: usize, b: usize) {
    let panel_block = PANEL_ROWS * block_bytes;
    let ahead =
        bytes.as_ptr().wrapping_add(b * panel_block + PREFETCH_BLOCKS * PANEL_ROWS * q4_0::BLOCK_BYTES);
    for line in (0..panel_block).step_by(64) {
        // A prefetch is only a hint: it never faults, wherever it points.
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
    }
}

/// Packs all `n_blocks` blocks of a panel of `dtype` blocks into `out` ([`vecs_per_block`] vectors per
/// block).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C (see
/// [`crate::x86::has_avx512`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn pack_panel(dtype: DType, src: &PanelSrc, n_blocks: usize, out: &mut [__m512i]) {
    let per = vecs_per_block(dtype);
    let block_bytes = dtype.block_bytes();
    assert!(out.len() >= n_blocks * per);
    match *src {
        PanelSrc::File { panel, dtype: d, .. } => {
            assert!(d == dtype && n_blocks * block_bytes <= panel.row_bytes, "blocks inside the rows")
        }
        PanelSrc::Prepacked { bytes, layout } => assert!(
            layout.dtype == dtype && bytes.len() >= n_blocks * layout.panel_block_bytes(),
            "blocks inside the panel"
        ),
    }
    let mut next_line = 0;
    for (b, dst) in out.chunks_exact_mut(per).take(n_blocks).enumerate() {
        match *src {
            PanelSrc::File { panel, .. } => {
                // Sixteen interleaved streams are more than the hardware prefetchers keep ahead of:
                // ask for every cache line of every row PREFETCH_BYTES before it is needed.
                while next_line < (b + 1) * block_bytes + PREFETCH_BYTES {
                    for row in &panel.rows {
                        // A prefetch is only a hint: it never faults, whatever the address (past
                        // the end of the row it just fetches an unrelated line).
                        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(next_line).cast());
                    }
                    next_line += 64;
                }
            }
            PanelSrc::Prepacked { bytes, .. } => prefetch_prepacked(bytes, block_bytes, b),
        }
        pack_block(dtype, src, b, dst);
    }
}

// ---------------------------------------------------------------- compute

/// Runs `$body` for `$t` = 0, 1, … up to `$n − 1` (at most 8), written out so that arrays
/// indexed by `$t` get constant indices and stay in registers (LLVM does not fully unroll
/// these loops by itself).
macro_rules! for_each_token {
    ($n:expr, |$t:ident| $body:block) => {{
        let n: usize = $n;
        debug_assert!(n <= 8);
        if 0 < n {
            let $t = 0usize;
            $body
        }
        if 1 < n {
            let $t = 1usize;
            $body
        }
        if 2 < n {
            let $t = 2usize;
            $body
        }
        if 3 < n {
            let $t = 3usize;
            $body
        }
        if 4 < n {
            let $t = 4usize;
            $body
        }
        if 5 < n {
            let $t = 5usize;
            $body
        }
        if 6 < n {
            let $t = 6usize;
            $body
        }
        if 7 < n {
            let $t = 7usize;
            $body
        }
    }};
}

/// Side data of a batch of Q8_0 activation rows: per block the scale as `f32` and
/// `−offset·Σ a` (offset 8 for Q4_0 weights, 16 for Q5_0, 128 for Q8_0 and IQ4_NL), or `Σ a` for the
/// formats with a block minimum (Q4_1, Q5_1).
pub struct Q8_0Side<'a> {
    pub d: &'a [f32],
    pub neg_offset_sum: &'a [i32],
}

/// One block of sixteen rows of a 32-value format (`$w`, packed vectors) times one block of each of the `T`
/// activation rows, added to the accumulators `$acc`. `$token` maps a token `t` to its block: (its 32 quants
/// as a `&[u8]`, its side data, its scale). `$min` says the format has a block minimum (Q4_1, Q5_1: the side
/// data is `Σ a`, which the minimum multiplies), else the side data is `−offset·Σ a` and starts the integer
/// sum. A macro for the reason given at [`unpack_prepacked_block`]; expands inside an AVX-512
/// `#[target_feature]` function generic over `T`.
macro_rules! q32_block {
    ($w:expr, $min:expr, $acc:expr, |$t:ident| $token:expr) => {{
        let w: &[__m512i; Q32_VECS] = &$w;
        let (dw, mw) = (as_float(w[8]), as_float(w[9]));
        for_each_token!(T, |$t| {
            let (qs, side, da): (&[u8], i32, f32) = $token;
            let qs: &[u8; 32] = array_at(qs, 0);
            // Six or more tokens: one chain each, side by side with the next block's (the kernel is then
            // short of vector ports, not of latency). Two to five (decoding a few streams): two chains
            // each, joined by one add, or the eight-deep chains leave `vpdpbusd`'s second port idle (+20 %
            // GOPS at two and four tokens, alternating runs on one core). Integer sums: same bits.
            let chains = if T == 1 || T >= 6 { 1 } else { 2 };
            let mut sums = [_mm512_setzero_si512(); 4];
            if !$min {
                sums[0] = _mm512_set1_epi32(side);
            }
            for g in 0..8 {
                let c = g % chains;
                sums[c] = _mm512_dpbusd_epi32(sums[c], w[g], _mm512_set1_epi32(act_dword(qs, 4 * g)));
            }
            let mut sumi = sums[0];
            for s in &sums[1..chains] {
                sumi = _mm512_add_epi32(sumi, *s);
            }
            // sum = fma(sumi as f32, d_w * d_a, sum), then fma(Σ a as f32, m_w * d_a, sum) with a minimum
            let da = _mm512_set1_ps(da);
            $acc[$t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_mul_ps(dw, da), $acc[$t]);
            if $min {
                $acc[$t] = _mm512_fmadd_ps(_mm512_set1_ps(side as f32), _mm512_mul_ps(mw, da), $acc[$t]);
            }
        });
    }};
}

/// Block `b` of activation row `t` (`acts[t]`, Q8_0 bytes; `side_start[t]` the index of its first block in
/// `side`): its 32 quants, `−offset·Σ a` and its scale, as [`interleave_q8_0`] copies them into a tile.
#[inline(always)]
fn q8_0_token<'a>(
    acts: &[&'a [u8]],
    side: &Q8_0Side,
    side_start: &[usize],
    t: usize,
    b: usize,
) -> (&'a [u8], i32, f32) {
    let at = b * q8_0::BLOCK_BYTES + q8_0::QS;
    let s = side_start[t] + b;
    (&acts[t][at..at + 32], side.neg_offset_sum[s], side.d[s])
}

/// Multiplies a packed Q4_0/Q8_0 panel with a tile of `T` activation rows interleaved by
/// [`interleave_q8_0`], returning the sixteen dot products of each row as lanes. Each block's data of
/// the `T` tokens sits at fixed offsets from one pointer (no per-token bounds checks or pointer loads:
/// with eight tokens, those loads had the load ports more busy than the 64 multiply-adds they fed).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn compute_q32<const T: usize>(
    min: bool,
    packed: &[__m512i],
    n_blocks: usize,
    tile: &Q8_0Tile,
) -> [__m512; T] {
    tile.check(n_blocks, T);
    let mut acc = [_mm512_setzero_ps(); T];
    for (b, w) in packed.chunks_exact(Q32_VECS).take(n_blocks).enumerate() {
        let w: &[__m512i; Q32_VECS] = w.try_into().expect("block vectors");
        let (qs, d, neg) = tile.block(b, T);
        q32_block!(w, min, acc, |t| (&qs[32 * t..32 * t + 32], neg[t], d[t]));
    }
    acc
}

/// Half of [`panel_pair_dots_q32`]: tokens `first..first + 4` of an eight-token tile against two packed
/// panels. Per block, each broadcast activation word feeds both panels' multiply-adds, so a block of
/// 64 `vpdpbusd` needs 58 loads instead of 89 (the single-panel kernel is load-port bound).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn compute_q32_pair(
    min: bool,
    p0: &[__m512i],
    p1: &[__m512i],
    n_blocks: usize,
    tile: &Q8_0Tile,
    first: usize,
) -> [[__m512; 4]; 2] {
    const T: usize = 8;
    tile.check(n_blocks, T);
    let (mut acc0, mut acc1) = ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4]);
    for b in 0..n_blocks {
        let w0: &[__m512i; Q32_VECS] =
            (&p0[b * Q32_VECS..(b + 1) * Q32_VECS]).try_into().expect("block vectors");
        let w1: &[__m512i; Q32_VECS] =
            (&p1[b * Q32_VECS..(b + 1) * Q32_VECS]).try_into().expect("block vectors");
        let (qs, d, neg) = tile.block(b, T);
        let qs: &[u8; 32 * T] = array_at(qs, 0);
        let mut s0 = [_mm512_setzero_si512(); 4];
        let mut s1 = [_mm512_setzero_si512(); 4];
        if !min {
            for_each_token!(4, |t| {
                s0[t] = _mm512_set1_epi32(neg[first + t]);
                s1[t] = s0[t];
            });
        }
        for g in 0..8 {
            let (a0, a1) = (w0[g], w1[g]);
            for_each_token!(4, |t| {
                let a = _mm512_set1_epi32(act_dword(qs, 32 * (first + t) + 4 * g));
                s0[t] = _mm512_dpbusd_epi32(s0[t], a0, a);
                s1[t] = _mm512_dpbusd_epi32(s1[t], a1, a);
            });
        }
        // as in `q32_block`: sum = fma(sumi as f32, d_w * d_a, sum), then the minimum's term
        let (dw0, dw1) = (as_float(w0[8]), as_float(w1[8]));
        let (mw0, mw1) = (as_float(w0[9]), as_float(w1[9]));
        for_each_token!(4, |t| {
            let da = _mm512_set1_ps(d[first + t]);
            acc0[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0[t]), _mm512_mul_ps(dw0, da), acc0[t]);
            acc1[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[t]), _mm512_mul_ps(dw1, da), acc1[t]);
            if min {
                let suma = _mm512_set1_ps(neg[first + t] as f32);
                acc0[t] = _mm512_fmadd_ps(suma, _mm512_mul_ps(mw0, da), acc0[t]);
                acc1[t] = _mm512_fmadd_ps(suma, _mm512_mul_ps(mw1, da), acc1[t]);
            }
        });
    }
    [acc0, acc1]
}

/// Two packed Q4_0/Q8_0 panels (`p0`, `p1`) times an eight-token tile interleaved by [`interleave_q8_0`]:
/// `out[p][t]` lane `i` is the dot product of row `i` of panel `p` with token `t`, bit-identical to
/// [`panel_dots_q32`] on each panel (the same integer sums, the same float operations per block).
///
/// # Safety
/// As [`panel_dots`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn panel_pair_dots_q32(
    dtype: DType,
    p0: &[__m512i],
    p1: &[__m512i],
    n_blocks: usize,
    tile: &Q8_0Tile,
) -> [[[f32; PANEL_ROWS]; 8]; 2] {
    let min = has_min(dtype);
    let [lo0, lo1] = compute_q32_pair(min, p0, p1, n_blocks, tile, 0);
    let [hi0, hi1] = compute_q32_pair(min, p0, p1, n_blocks, tile, 4);
    let join = |lo: [__m512; 4], hi: [__m512; 4]| {
        lanes::<8>(std::array::from_fn(|t| if t < 4 { lo[t] } else { hi[t - 4] }))
    };
    [join(lo0, hi0), join(lo1, hi1)]
}

/// A tile of activation rows interleaved block by block ([`interleave_q8_0`], [`interleave_q8_k`]): for block
/// `b`, token `t`'s `Q` bytes at `qs[(b·T + t)·Q..]`, its scale at `d[b·T + t]` and its `S` dwords of side data
/// at `side[(b·T + t)·S..]`. The kernels then find each block's `T` tokens at fixed offsets from one pointer.
pub struct ActTile<'a, const Q: usize, const S: usize> {
    pub qs: &'a [u8],
    pub d: &'a [f32],
    pub side: &'a [i32],
}

/// Q8_0 tiles: a block's 32 quants, and `−offset·Σ a` as side data.
pub type Q8_0Tile<'a> = ActTile<'a, 32, 1>;

/// Q8_K tiles: whole Q8_K blocks, and four dwords of sub-block sum pairs `(s[2j], s[2j + 1])` as side data.
pub type Q8KTile<'a> = ActTile<'a, { q8_k::BLOCK_BYTES }, 4>;

impl<'a, const Q: usize, const S: usize> ActTile<'a, Q, S> {
    /// Panics unless the tile holds `n_blocks` blocks of `n` tokens.
    fn check(&self, n_blocks: usize, n: usize) {
        let m = n_blocks * n;
        assert!(self.qs.len() >= Q * m && self.d.len() >= m && self.side.len() >= S * m);
    }

    /// Block `b` of the `n` tokens: their bytes, scales and side data.
    #[inline(always)]
    fn block(&self, b: usize, n: usize) -> (&'a [u8], &'a [f32], &'a [i32]) {
        let i = b * n;
        (&self.qs[Q * i..Q * (i + n)], &self.d[i..i + n], &self.side[S * i..S * (i + n)])
    }

    /// The tile from block `b` on.
    fn skip_blocks(&self, b: usize, n: usize) -> ActTile<'a, Q, S> {
        let i = b * n;
        ActTile { qs: &self.qs[Q * i..], d: &self.d[i..], side: &self.side[S * i..] }
    }
}

/// Interleaves `rows.len()` Q8_0 activation rows of `n_blocks` blocks (and their side data from
/// `side_start[t]`) into `qs`, `d` and `neg` (`n_blocks · rows.len()` blocks each) as [`ActTile`] describes.
pub fn interleave_q8_0(
    rows: &[&[u8]],
    side: &Q8_0Side,
    side_start: &[usize],
    n_blocks: usize,
    qs: &mut [u8],
    d: &mut [f32],
    neg: &mut [i32],
) {
    let n = rows.len();
    assert!(qs.len() == n_blocks * n * 32 && d.len() == n_blocks * n && neg.len() == n_blocks * n);
    for b in 0..n_blocks {
        for t in 0..n {
            let (q, o, s) = q8_0_token(rows, side, side_start, t, b);
            let i = b * n + t;
            qs[32 * i..32 * i + 32].copy_from_slice(q);
            (neg[i], d[i]) = (o, s);
        }
    }
}

/// Side data of a batch of Q8_K activation rows: per super-block the scale and four
/// dwords of i16 pairs `(s[2j], s[2j + 1])`, where `s[sub]` is the sum of the 32
/// activations of sub-block `sub` (for the Q4_K/Q5_K mins).
pub struct Q8KSide<'a> {
    pub d: &'a [f32],
    pub sub_pairs: &'a [i32],
}

/// Interleaves `rows.len()` Q8_K activation rows of `n_blocks` super-blocks (and their side data from
/// `side_start[t]`) into `blocks`, `d` and `sub_pairs` (sized for `n_blocks · rows.len()` blocks) as
/// [`Q8KTile`] describes.
pub fn interleave_q8_k(
    rows: &[&[u8]],
    side: &Q8KSide,
    side_start: &[usize],
    n_blocks: usize,
    blocks: &mut [u8],
    d: &mut [f32],
    sub_pairs: &mut [i32],
) {
    let (n, bb) = (rows.len(), q8_k::BLOCK_BYTES);
    assert!(
        blocks.len() == n_blocks * n * bb && d.len() == n_blocks * n && sub_pairs.len() == 4 * n_blocks * n
    );
    for b in 0..n_blocks {
        for (t, row) in rows.iter().enumerate() {
            let (i, s) = (b * n + t, side_start[t] + b);
            blocks[i * bb..(i + 1) * bb].copy_from_slice(&row[b * bb..(b + 1) * bb]);
            d[i] = side.d[s];
            sub_pairs[4 * i..4 * i + 4].copy_from_slice(&side.sub_pairs[4 * s..4 * s + 4]);
        }
    }
}

/// Multiplies a packed Q4_K/Q5_K or IQ4_XS panel (eight 32-value sub-blocks) with `T` Q8_K activation rows.
/// Each sub-block's eight weight vectors are loaded once and used for all `T` rows. The pair vectors meet
/// the sub-block sums: Q4_K/Q5_K's mins, scaled by `dmin`; IQ4_XS's `128·scale`, the `+128` of its levels,
/// which comes off the integer sum before the one float multiply (`iq4_xs`), as in the scalar references.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn compute_k4<const T: usize>(
    iq4_xs: bool,
    packed: &[__m512i],
    n_blocks: usize,
    tile: &Q8KTile,
) -> [__m512; T] {
    tile.check(n_blocks, T);
    let mut acc = [_mm512_setzero_ps(); T];
    for (sb, w) in packed.chunks_exact(K4_VECS).take(n_blocks).enumerate() {
        let w: &[__m512i; K4_VECS] = w.try_into().expect("block vectors");
        let (blocks, d, sub_pairs) = tile.block(sb, T);
        let a: [&[u8; q8_k::BLOCK_BYTES]; T] =
            std::array::from_fn(|t| array_at(blocks, t * q8_k::BLOCK_BYTES));
        let mut sumi = [_mm512_setzero_si512(); T];
        for sub in 0..8 {
            let ws: [__m512i; 8] = std::array::from_fn(|g| w[8 * sub + g]);
            for_each_token!(T, |t| {
                let at = q8_k::QS + 32 * sub;
                let mut p = _mm512_setzero_si512();
                for (g, wg) in ws.iter().enumerate() {
                    p = _mm512_dpbusd_epi32(p, *wg, _mm512_set1_epi32(act_dword(a[t], at + 4 * g)));
                }
                sumi[t] = _mm512_add_epi32(sumi[t], _mm512_mullo_epi32(p, w[64 + sub]));
            });
        }
        for_each_token!(T, |t| {
            let mut summ = _mm512_setzero_si512();
            for j in 0..4 {
                summ = _mm512_dpwssd_epi32(summ, w[72 + j], _mm512_set1_epi32(sub_pairs[4 * t + j]));
            }
            let da = _mm512_set1_ps(d[t]);
            let d = _mm512_mul_ps(as_float(w[76]), da);
            let block = if iq4_xs {
                // sum += (d_w·d_a)·(sumi − summ)
                _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(sumi[t], summ)))
            } else {
                // sum += (d_w·d_a)·sumi − (dmin_w·d_a)·summ
                let dmin = _mm512_mul_ps(as_float(w[77]), da);
                _mm512_sub_ps(
                    _mm512_mul_ps(d, _mm512_cvtepi32_ps(sumi[t])),
                    _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(summ)),
                )
            };
            acc[t] = _mm512_add_ps(acc[t], block);
        });
    }
    acc
}

/// How a super-block of sixteen 16-value sub-blocks turns its integer sums into floats.
#[derive(Clone, Copy, PartialEq, Eq)]
enum K16 {
    /// Q6_K: unsigned levels `q + 32`, signed scales.
    Q6,
    /// Q3_K: unsigned levels `q + 4`, signed scales.
    Q3,
    /// Q2_K: unsigned levels, unsigned scales and mins with their own super-block scale.
    Q2,
}

/// Multiplies a packed Q2_K/Q3_K/Q6_K panel with `T` Q8_K activation rows. Each sub-block's four
/// weight vectors are loaded once and used for all `T` rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn compute_k16<const T: usize>(
    kind: K16,
    packed: &[__m512i],
    n_blocks: usize,
    tile: &Q8KTile,
) -> [__m512; T] {
    tile.check(n_blocks, T);
    let mut acc = [_mm512_setzero_ps(); T];
    for (sb, w) in packed.chunks_exact(K6_VECS).take(n_blocks).enumerate() {
        let w: &[__m512i; K6_VECS] = w.try_into().expect("block vectors");
        let (blocks, d, _) = tile.block(sb, T);
        let a: [&[u8; q8_k::BLOCK_BYTES]; T] =
            std::array::from_fn(|t| array_at(blocks, t * q8_k::BLOCK_BYTES));
        let mut sumi = [_mm512_setzero_si512(); T];
        for sub in 0..16 {
            let ws: [__m512i; 4] = std::array::from_fn(|g| w[4 * sub + g]);
            let at = q8_k::QS + 16 * sub;
            for_each_token!(T, |t| {
                let mut p = _mm512_setzero_si512();
                for (g, wg) in ws.iter().enumerate() {
                    p = _mm512_dpbusd_epi32(p, *wg, _mm512_set1_epi32(act_dword(a[t], at + 4 * g)));
                }
                sumi[t] = _mm512_add_epi32(sumi[t], _mm512_mullo_epi32(p, w[64 + sub]));
            });
        }
        for_each_token!(T, |t| {
            // Σ pair·bsum with the Q8_K group sums as i16 pairs: the scales (for the level offset) or
            // the Q2_K mins.
            let mut off = _mm512_setzero_si512();
            for j in 0..8 {
                off = _mm512_dpwssd_epi32(
                    off,
                    w[80 + j],
                    _mm512_set1_epi32(act_dword(a[t], q8_k::BSUMS + 4 * j)),
                );
            }
            let da = _mm512_set1_ps(d[t]);
            let d = _mm512_mul_ps(as_float(w[88]), da);
            let block = match kind {
                // sum += (d_w·d_a)·(sumi − offset·Σ sc·bsum)
                K16::Q6 => _mm512_mul_ps(
                    d,
                    _mm512_cvtepi32_ps(_mm512_sub_epi32(sumi[t], _mm512_slli_epi32::<5>(off))),
                ),
                K16::Q3 => _mm512_mul_ps(
                    d,
                    _mm512_cvtepi32_ps(_mm512_sub_epi32(sumi[t], _mm512_slli_epi32::<2>(off))),
                ),
                // sum += (d_w·d_a)·sumi − (dmin_w·d_a)·summ
                K16::Q2 => _mm512_sub_ps(
                    _mm512_mul_ps(d, _mm512_cvtepi32_ps(sumi[t])),
                    _mm512_mul_ps(_mm512_mul_ps(as_float(w[89]), da), _mm512_cvtepi32_ps(off)),
                ),
            };
            acc[t] = _mm512_add_ps(acc[t], block);
        });
    }
    acc
}

/// Multiplies a packed Q2_K/Q3_K/Q4_K/Q5_K/Q6_K/IQ4_XS panel (see [`pack_panel`]) with a tile of `T` activation rows: lane
/// `i` of result `t` is the dot product of panel row `i` with token `t`, bit-identical to the scalar
/// reference.
/// (Q4_0/Q8_0 panels go through [`panel_dots_q32`].)
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C (see
/// [`crate::x86::has_avx512`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn panel_dots<const T: usize>(
    dtype: DType,
    packed: &[__m512i],
    n_blocks: usize,
    tile: &Q8KTile,
) -> [[f32; PANEL_ROWS]; T] {
    lanes(compute_k::<T>(dtype, packed, n_blocks, tile))
}

/// The K-quant kernel of `dtype` over `n_blocks` packed super-blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn compute_k<const T: usize>(
    dtype: DType,
    packed: &[__m512i],
    n_blocks: usize,
    tile: &Q8KTile,
) -> [__m512; T] {
    match dtype {
        DType::Q4_K | DType::Q5_K => compute_k4::<T>(false, packed, n_blocks, tile),
        DType::Q6_K => compute_k16::<T>(K16::Q6, packed, n_blocks, tile),
        DType::Q3_K => compute_k16::<T>(K16::Q3, packed, n_blocks, tile),
        DType::Q2_K => compute_k16::<T>(K16::Q2, packed, n_blocks, tile),
        DType::IQ4_XS => compute_k4::<T>(true, packed, n_blocks, tile),
        _ => unreachable!("no K-quant panel kernel for {dtype}"),
    }
}

/// Multiplies a packed Q4_0/Q8_0 panel (see [`pack_panel`]) with a tile of `T` activation rows
/// interleaved by [`interleave_q8_0`]: lane `i` of result `t` is the dot product of panel row `i` with
/// token `t`, bit-identical to the scalar reference.
///
/// # Safety
/// As [`panel_dots`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn panel_dots_q32<const T: usize>(
    dtype: DType,
    packed: &[__m512i],
    n_blocks: usize,
    tile: &Q8_0Tile,
) -> [[f32; PANEL_ROWS]; T] {
    lanes(compute_q32::<T>(has_min(dtype), packed, n_blocks, tile))
}

/// Whether a 32-value format has a block minimum (its activations' side data is then `Σ a`).
pub fn has_min(dtype: DType) -> bool {
    matches!(dtype, DType::Q4_1 | DType::Q5_1)
}

/// Each accumulator's sixteen lanes as an array.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn lanes<const T: usize>(acc: [__m512; T]) -> [[f32; PANEL_ROWS]; T] {
    acc.map(|v| {
        let mut out = [0.0f32; PANEL_ROWS];
        // SAFETY: `out` is sixteen writable f32; `storeu` has no alignment requirement.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) };
        out
    })
}

// ---------------------------------------------------------------- prepacked panels

/// Writes a full panel (sixteen rows) in the *prepacked* layout described in [`crate::prepacked`]:
/// for every block, its 4-byte words transposed (vector `j`, lane `i` = word `j` of row `i`), then the
/// sixteen f16 scales of the formats with a lone scale. The same bytes, in the order [`pack_panel`]
/// reads them: unpacking a block costs a few loads instead of sixteen row loads, transposes and a
/// gather.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C (see
/// [`crate::x86::has_avx512`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn prepack_panel(layout: Layout, p: &Panel, n_blocks: usize, out: &mut [u8]) {
    let block_bytes = layout.dtype.block_bytes();
    assert!(n_blocks * block_bytes <= p.row_bytes && out.len() == n_blocks * layout.panel_block_bytes());
    let src = PanelSrc::File { panel: p, dtype: layout.dtype, block_bytes };
    for (b, dst) in out.chunks_exact_mut(layout.panel_block_bytes()).enumerate() {
        let mut store = |j: usize, v: __m512i| {
            let at = 64 * j;
            // SAFETY: `dst` has 64·n_words (+ 32) bytes, so 64 bytes at 64·j for j < n_words.
            unsafe { _mm512_storeu_si512(dst[at..at + 64].as_mut_ptr().cast(), v) };
        };
        let whole = layout.n_words / 4;
        for h in 0..whole {
            for (j, v) in quad!(&src, b, layout.words_at + 16 * h).into_iter().enumerate() {
                store(4 * h + j, v);
            }
        }
        // the words after the last whole 16 bytes, one gather each
        for j in 4 * whole..layout.n_words {
            store(j, gather_u32(p, b * block_bytes + layout.words_at + 4 * j));
        }
        if let Some(at) = layout.scale_at {
            let scales = _mm512_cvtepi32_epi16(gather_f16(p, b * block_bytes + at));
            let to = layout.scales_at();
            // SAFETY: the last 32 bytes of `dst`; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_si256(dst[to..to + 32].as_mut_ptr().cast(), scales) };
        }
    }
}

/// The packed vectors of block `$b` of a prepacked Q4_0/Q8_0 panel (`$src`), as [`pack_q4_0_block`] /
/// [`pack_q8_0_block`] make them from the file's layout. A macro, so that it is inlined into the kernels
/// (`#[inline(always)]` is not allowed on `#[target_feature]` functions, and a call passes the nine
/// vectors through memory). Expands inside an AVX-512 `#[target_feature]` function.
macro_rules! unpack_prepacked_block {
    ($block_bytes:expr, $src:expr, $b:expr) => {{
        let (block_bytes, src): (usize, &[u8]) = ($block_bytes, $src);
        let base = $b * PANEL_ROWS * block_bytes;
        let load = |at: usize| {
            let v: &[u8; 64] = array_at(src, base + at);
            // SAFETY: 64 readable bytes; `loadu` has no alignment requirement.
            unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
        };
        let mut w = [_mm512_setzero_si512(); Q32_VECS];
        let scales: &[u8; 32] = array_at(src, base + PANEL_ROWS * block_bytes - 32);
        // SAFETY: 32 readable bytes; `loadu` has no alignment requirement.
        let d = unsafe { _mm256_loadu_si256(scales.as_ptr().cast()) };
        w[8] = as_int(_mm512_cvtph_ps(d));
        if block_bytes == q4_0::BLOCK_BYTES {
            let low = splat(0x0f0f_0f0f);
            for g in 0..4 {
                let q = load(64 * g);
                w[g] = _mm512_and_si512(q, low);
                w[g + 4] = _mm512_and_si512(_mm512_srli_epi32::<4>(q), low);
            }
        } else {
            let flip = splat(0x8080_8080);
            for (g, v) in w[..8].iter_mut().enumerate() {
                *v = _mm512_xor_si512(load(64 * g), flip);
            }
        }
        w
    }};
}

/// [`panel_dots`] straight from a prepacked panel of a 32-value format (`src`, see [`prepack_panel`]): each
/// block is unpacked in registers (Q4_0, Q8_0) or into a few vectors of stack (the others) and used for all
/// `T` activation rows, without a scratch copy of the panel. The same vectors as [`pack_panel`] makes from
/// the file's layout and the same operations as [`panel_dots`], so the same bits.
///
/// # Safety
/// As [`prepack_panel`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn panel_dots_prepacked<const T: usize>(
    layout: Layout,
    src: &[u8],
    n_blocks: usize,
    tile: &Q8_0Tile,
) -> [[f32; PANEL_ROWS]; T] {
    let (dtype, block_bytes) = (layout.dtype, layout.block_bytes);
    assert!(dtype.vec_dot_type() == DType::Q8_0);
    assert!(src.len() == n_blocks * PANEL_ROWS * block_bytes);
    tile.check(n_blocks, T);
    let (fast, min) = (matches!(dtype, DType::Q4_0 | DType::Q8_0), has_min(dtype));
    let panel = PanelSrc::Prepacked { bytes: src, layout };
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..n_blocks {
        prefetch_prepacked(src, block_bytes, b);
        let w = if fast {
            unpack_prepacked_block!(block_bytes, src, b)
        } else {
            let mut w = [_mm512_setzero_si512(); Q32_VECS];
            pack_block(dtype, &panel, b, &mut w);
            w
        };
        let (qs, d, neg) = tile.block(b, T);
        q32_block!(w, min, acc, |t| (&qs[32 * t..32 * t + 32], neg[t], d[t]));
    }
    lanes(acc)
}

/// [`panel_dots`] straight from a prepacked Q4_K/Q5_K/Q6_K panel (`src`, see [`prepack_panel`]): each
/// super-block is unpacked into a few KiB of stack that stay in L1 and used for all `T` activation rows,
/// instead of unpacking the whole panel into scratch first. Block by block, the same operations as
/// [`panel_dots`] (a block's sum is added to the accumulator, which is never −0, so adding it through
/// a zero accumulator changes no bit).
///
/// # Safety
/// As [`prepack_panel`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn panel_dots_prepacked_k<const T: usize>(
    layout: Layout,
    src: &[u8],
    n_blocks: usize,
    tile: &Q8KTile,
) -> [[f32; PANEL_ROWS]; T] {
    let (dtype, block_bytes) = (layout.dtype, layout.dtype.block_bytes());
    assert!(dtype.vec_dot_type() == DType::Q8_K);
    assert!(src.len() == n_blocks * layout.panel_block_bytes());
    let panel = PanelSrc::Prepacked { bytes: src, layout };
    let per = vecs_per_block(dtype);
    let mut block = [_mm512_setzero_si512(); K6_VECS];
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..n_blocks {
        prefetch_prepacked(src, block_bytes, b);
        pack_block(dtype, &panel, b, &mut block[..per]);
        let from_b = tile.skip_blocks(b, T);
        let sums = compute_k::<T>(dtype, &block[..per], 1, &from_b);
        for_each_token!(T, |t| {
            acc[t] = _mm512_add_ps(acc[t], sums[t]);
        });
    }
    lanes(acc)
}

/// Most whole tiles [`panel_dots_prepacked_k_tiles`] takes at once (with a short tile: batches of up to 31).
pub const FUSED_TILES: usize = 3;

/// [`panel_dots_prepacked_k`] (whose one tile's accumulators stay in registers: written through this
/// function's arrays, decoding measured 30 % slower) for a few whole tiles of eight tokens (`full`, at most [`FUSED_TILES`]) and a
/// tile of `R` more (`rest`, unused when `R` is 0): each super-block is unpacked once for all of them, as
/// the panel streams in from memory, instead of the whole panel being unpacked into scratch and read once
/// per tile. Each token's sums are added block by block in the same order: the same bits.
///
/// # Safety
/// As [`prepack_panel`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn panel_dots_prepacked_k_tiles<const R: usize>(
    layout: Layout,
    src: &[u8],
    n_blocks: usize,
    full: &[Q8KTile],
    rest: &Q8KTile,
) -> ([[[f32; PANEL_ROWS]; 8]; FUSED_TILES], [[f32; PANEL_ROWS]; R]) {
    let (dtype, block_bytes) = (layout.dtype, layout.dtype.block_bytes());
    assert!(dtype.vec_dot_type() == DType::Q8_K);
    assert!(src.len() == n_blocks * layout.panel_block_bytes());
    assert!(full.len() <= FUSED_TILES);
    for tile in full {
        tile.check(n_blocks, 8);
    }
    rest.check(n_blocks, R);
    let panel = PanelSrc::Prepacked { bytes: src, layout };
    let per = vecs_per_block(dtype);
    let mut block = [_mm512_setzero_si512(); K6_VECS];
    let mut acc = [[_mm512_setzero_ps(); 8]; FUSED_TILES];
    let mut acc_rest = [_mm512_setzero_ps(); R];
    for b in 0..n_blocks {
        prefetch_prepacked(src, block_bytes, b);
        pack_block(dtype, &panel, b, &mut block[..per]);
        for (tile, acc) in full.iter().zip(acc.iter_mut()) {
            let sums = compute_k::<8>(dtype, &block[..per], 1, &tile.skip_blocks(b, 8));
            for_each_token!(8, |t| {
                acc[t] = _mm512_add_ps(acc[t], sums[t]);
            });
        }
        if R > 0 {
            let sums = compute_k::<R>(dtype, &block[..per], 1, &rest.skip_blocks(b, R));
            for_each_token!(R, |t| {
                acc_rest[t] = _mm512_add_ps(acc_rest[t], sums[t]);
            });
        }
    }
    (acc.map(|a| lanes(a)), lanes(acc_rest))
}
