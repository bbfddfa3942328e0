//! Matrix products: a weight matrix (rows of one format, straight from the file) times a
//! batch of activation rows quantized once ([`QuantizedActs`]).
//!
//! [`gemm`] computes `out[t][r] = dot(W[r], act[t])` for a range of tokens. On AVX-512 the
//! quantized formats run the panel kernels (`x86::avx512_gemm`, bit-identical to the scalar
//! reference); elsewhere every output is one [`crate::vec_dot`]. Either way each output depends
//! only on its weight row and its activation row, never on the batch or how a caller splits it.

use std::ops::Range;

use crate::dispatch::{self, Isa, IsaKind};
use crate::formats::{self, check_row, q8_0, q8_k};
use crate::prepacked::Layout;
#[cfg(target_arch = "x86_64")]
use crate::x86::avx512_gemm::{gemm_avx512, Tiles};
use crate::DType;

/// A batch of activation rows quantized for one weight format, with the per-block side
/// data the matrix kernels use (scales as `f32`, block sums).
#[derive(Default)]
pub struct QuantizedActs {
    pub(crate) wtype: Option<DType>,
    pub(crate) k: usize,
    pub(crate) n_tokens: usize,
    row_bytes: usize,
    /// `n_tokens` rows of `wtype.vec_dot_type()` (F32 rows as little-endian bytes).
    bytes: Vec<u8>,
    /// Q8_0 / Q8_K: the scale of every block of every row, as `f32`.
    pub(crate) d: Vec<f32>,
    /// Q8_0: `−offset·Σ a` per block (offset 8 for Q4_0, 16 for Q5_0, 128 for Q8_0 and IQ4_NL weights), or
    /// `Σ a` for the formats with a block minimum (Q4_1, Q5_1).
    /// Q8_K: four dwords per super-block of i16 pairs `(s[2j], s[2j+1])`, `s[sub]` the
    /// sum of the 32 activations of sub-block `sub`.
    pub(crate) side: Vec<i32>,
    /// The batch interleaved tile by tile for the panel kernels, once per quantization instead of once
    /// per `gemm` call (a decode step splits each matrix into several calls); `None` where no panel
    /// kernel runs for `wtype`.
    #[cfg(target_arch = "x86_64")]
    pub(crate) tiles: Option<Tiles>,
}

impl QuantizedActs {
    /// An empty batch; buffers grow on first use and are reused afterwards.
    pub fn new() -> QuantizedActs {
        QuantizedActs::default()
    }

    /// Quantizes `x` (`x.len() / k` rows of `k` values) for products with `wtype` weights.
    ///
    /// # Panics
    /// If `x.len()` is not a multiple of `k`, or `k` is not a whole number of blocks of
    /// `wtype` and of its activation format.
    pub fn quantize(&mut self, wtype: DType, k: usize, x: &[f32]) {
        assert!(k > 0 && x.len().is_multiple_of(k), "{} values are not rows of {k}", x.len());
        let act_type = wtype.vec_dot_type();
        let wf = formats::format(wtype);
        check_row(wf, wtype.row_bytes(k).unwrap_or(usize::MAX), k);
        let row_bytes = act_type.row_bytes(k).expect("checked above: whole blocks");
        let n_tokens = x.len() / k;
        self.wtype = Some(wtype);
        self.k = k;
        self.n_tokens = n_tokens;
        self.row_bytes = row_bytes;
        self.bytes.resize(n_tokens * row_bytes, 0);
        for (dst, src) in self.bytes.chunks_exact_mut(row_bytes).zip(x.chunks_exact(k)) {
            match act_type {
                DType::F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
                _ => crate::quantize_row(act_type, src, dst),
            }
        }
        self.d.clear();
        self.side.clear();
        match act_type {
            DType::Q8_0 => {
                // What the panel kernels subtract from their unsigned weight bytes, or (Q4_1/Q5_1) what
                // the block minimum multiplies.
                let factor = match wtype {
                    DType::Q4_0 => -8,
                    DType::Q5_0 => -16,
                    DType::Q8_0 | DType::IQ4_NL => -128,
                    DType::Q4_1 | DType::Q5_1 => 1,
                    _ => 0,
                };
                for block in q8_0::blocks(&self.bytes) {
                    self.d.push(block.d());
                    let sum: i32 = block.qs().iter().map(|&q| q as i8 as i32).sum();
                    self.side.push(factor * sum);
                }
            }
            DType::Q8_K => {
                for block in q8_k::blocks(&self.bytes) {
                    self.d.push(block.d());
                    let s = |sub: usize| (block.bsum(2 * sub) as i32 + block.bsum(2 * sub + 1) as i32) as u16;
                    for j in 0..4 {
                        self.side.push((s(2 * j) as u32 | (s(2 * j + 1) as u32) << 16) as i32);
                    }
                }
            }
            _ => {}
        }
        #[cfg(target_arch = "x86_64")]
        {
            let mut tiles = self.tiles.take().unwrap_or_default();
            let tiled = has_panel_kernel(dispatch::isa(), wtype);
            if tiled {
                tiles.interleave(self, 0..n_tokens);
            }
            self.tiles = tiled.then_some(tiles);
        }
    }

    /// The weight format these activations were quantized for.
    pub fn wtype(&self) -> Option<DType> {
        self.wtype
    }

    /// Values per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Rows in the batch.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Row `t` in `wtype.vec_dot_type()` layout.
    pub fn row(&self, t: usize) -> &[u8] {
        &self.bytes[t * self.row_bytes..(t + 1) * self.row_bytes]
    }
}

/// `out[(t − tokens.start)·n_rows + r] = dot(W[r], acts[t])` for every row `r` of `w`
/// (`n_rows = w.len() / row_bytes` rows of `acts.k()` values of `wtype`) and every token
/// `t` in `tokens`, with the process instruction set.
///
/// # Panics
/// If `acts` was quantized for another format, `w` is not whole rows, `tokens` is out
/// of range or `out` has the wrong length.
pub fn gemm(wtype: DType, w: &[u8], acts: &QuantizedActs, tokens: Range<usize>, out: &mut [f32]) {
    let n = tokens.len();
    gemm_checked(dispatch::isa(), wtype, w, acts, tokens, &mut token_rows(out, n));
}

/// [`gemm`] writing token `tokens.start + i`'s outputs to `out[i]` (`n_rows` values each): a thread that
/// owns a range of rows of a batch's `[tokens][rows]` output writes its pieces of every token's row in
/// place, with no scatter afterwards.
///
/// # Panics
/// As [`gemm`].
pub fn gemm_into_rows(
    wtype: DType,
    w: &[u8],
    acts: &QuantizedActs,
    tokens: Range<usize>,
    out: &mut [&mut [f32]],
) {
    gemm_checked(dispatch::isa(), wtype, w, acts, tokens, out);
}

/// `out` (`n_tokens` rows back to back) as one slice per token.
fn token_rows(out: &mut [f32], n_tokens: usize) -> Vec<&mut [f32]> {
    if out.is_empty() {
        // no tokens, or a matrix of no rows
        return (0..n_tokens).map(|_| Default::default()).collect();
    }
    assert!(n_tokens > 0 && out.len().is_multiple_of(n_tokens), "output length");
    out.chunks_mut(out.len() / n_tokens).collect()
}

/// [`gemm`] with an explicit instruction set, for tests and benchmarks.
///
/// # Panics
/// As [`gemm`].
pub fn gemm_with(
    isa: Isa,
    wtype: DType,
    w: &[u8],
    acts: &QuantizedActs,
    tokens: Range<usize>,
    out: &mut [f32],
) {
    let n = tokens.len();
    gemm_checked(isa, wtype, w, acts, tokens, &mut token_rows(out, n));
}

/// Whether [`gemm`] on this instruction set runs a panel kernel for `wtype` ([`PANEL_ROWS`] rows at a time:
/// callers splitting rows between threads split at multiples of it).
pub fn has_panel_kernel(isa: Isa, wtype: DType) -> bool {
    isa.kind() == IsaKind::Avx512
        && matches!(
            wtype,
            DType::Q4_0
                | DType::Q4_1
                | DType::Q5_0
                | DType::Q5_1
                | DType::IQ4_NL
                | DType::Q8_0
                | DType::Q2_K
                | DType::Q3_K
                | DType::Q4_K
                | DType::Q5_K
                | DType::Q6_K
                | DType::IQ4_XS
        )
}

/// Whether a `wtype` matrix of `n_rows` rows can be stored prepacked ([`prepack`]) for the
/// process instruction set: the formats with panel kernels on AVX-512, whole panels of sixteen rows.
pub fn can_prepack(wtype: DType, n_rows: usize) -> bool {
    n_rows > 0
        && n_rows.is_multiple_of(PANEL_ROWS)
        && has_panel_kernel(dispatch::isa(), wtype)
        && Layout::of(wtype).is_some()
}

/// Rows per panel of the panel kernels (and of the prepacked layout): callers splitting a matrix's rows
/// between threads split at multiples of this.
pub const PANEL_ROWS: usize = crate::prepacked::PANEL_ROWS;

/// Tokens per activation tile of the panel kernels: callers splitting a batch's tokens between threads
/// split at multiples of this, so each task reads the tiles [`QuantizedActs`] interleaved once.
pub const TOKEN_TILE: usize = 8;

/// Rewrites `w` (whole panels of sixteen `wtype` rows of `k` values) into the prepacked layout
/// in `out`, which has the same length ([`crate::prepacked`]: per panel, per block, the words of the
/// sixteen rows already transposed for the panel kernels), so [`gemm_prepacked`] skips the
/// transposition that [`gemm`] does for every panel it reads. Decoding a few sequences at
/// once is dominated by that transposition; prepacked, it costs a few loads. Callers may
/// convert any whole-panel slice of a matrix independently (in parallel).
///
/// # Panics
/// If [`can_prepack`] is false for these rows, or the lengths do not match.
pub fn prepack(wtype: DType, k: usize, w: &[u8], out: &mut [u8]) {
    let row_bytes = wtype.row_bytes(k).expect("whole blocks");
    assert!(w.len().is_multiple_of(row_bytes) && out.len() == w.len(), "prepack lengths");
    let n_rows = w.len() / row_bytes;
    assert!(can_prepack(wtype, n_rows), "{wtype} x {n_rows} rows cannot be prepacked here");
    let layout = Layout::of(wtype).expect("checked by can_prepack");
    #[cfg(target_arch = "x86_64")]
    {
        let panel_bytes = PANEL_ROWS * row_bytes;
        for (r, dst) in out.chunks_exact_mut(panel_bytes).enumerate() {
            let panel = crate::x86::avx512::Panel::new(w, row_bytes, r * PANEL_ROWS, PANEL_ROWS);
            // SAFETY: `can_prepack` holds, so the process instruction set is AVX-512 (F/BW/VL/
            // VNNI, with AVX2, FMA and F16C), which this CPU supports.
            unsafe { crate::x86::avx512::prepack_panel(layout, &panel, k / wtype.block_len(), dst) };
        }
    }
}

/// [`gemm`] for a matrix stored by [`prepack`]: the same results, bit for bit.
///
/// # Panics
/// As [`gemm`], and if [`can_prepack`] is false for this matrix.
pub fn gemm_prepacked(wtype: DType, w: &[u8], acts: &QuantizedActs, tokens: Range<usize>, out: &mut [f32]) {
    let n = tokens.len();
    gemm_prepacked_into_rows(wtype, w, acts, tokens, &mut token_rows(out, n));
}

/// [`gemm_into_rows`] for a matrix stored by [`prepack`].
///
/// # Panics
/// As [`gemm_prepacked`].
pub fn gemm_prepacked_into_rows(
    wtype: DType,
    w: &[u8],
    acts: &QuantizedActs,
    tokens: Range<usize>,
    out: &mut [&mut [f32]],
) {
    let (n_rows, tokens) = check_gemm(wtype, w, acts, tokens, out);
    assert!(can_prepack(wtype, n_rows), "{wtype} x {n_rows} rows is not a prepacked matrix");
    if tokens.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `can_prepack` held above, so the process instruction set is AVX-512.
    unsafe {
        gemm_avx512(wtype, acts.k, w, n_rows, acts, tokens, out, true)
    };
}

/// Checks the arguments of a matrix product; returns the number of weight rows.
fn check_gemm(
    wtype: DType,
    w: &[u8],
    acts: &QuantizedActs,
    tokens: Range<usize>,
    out: &[&mut [f32]],
) -> (usize, Range<usize>) {
    assert_eq!(acts.wtype, Some(wtype), "activations quantized for {:?}, weights are {wtype}", acts.wtype);
    let row_bytes = wtype.row_bytes(acts.k).expect("checked when quantizing");
    assert!(w.len().is_multiple_of(row_bytes), "{wtype}: {} bytes are not rows of {row_bytes}", w.len());
    let n_rows = w.len() / row_bytes;
    assert!(tokens.start <= tokens.end && tokens.end <= acts.n_tokens, "tokens {tokens:?} out of range");
    assert!(out.len() == tokens.len() && out.iter().all(|o| o.len() == n_rows), "output length");
    (n_rows, tokens)
}

fn gemm_checked(
    isa: Isa,
    wtype: DType,
    w: &[u8],
    acts: &QuantizedActs,
    tokens: Range<usize>,
    out: &mut [&mut [f32]],
) {
    let (n_rows, tokens) = check_gemm(wtype, w, acts, tokens, out);
    let k = acts.k;
    let row_bytes = wtype.row_bytes(k).expect("checked when quantizing");
    if tokens.is_empty() || n_rows == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_panel_kernel(isa, wtype) {
        // SAFETY: `has_panel_kernel` holds for a detected `isa`, which is then AVX-512.
        unsafe { gemm_avx512(wtype, k, w, n_rows, acts, tokens, out, false) };
        return;
    }
    rows_checked(isa, wtype, k, row_bytes, w, acts, tokens, out);
}

/// The row kernels: one [`crate::vec_dot`] per output, weight rows outer so each row is read from memory
/// once for all the tokens.
#[allow(clippy::too_many_arguments)]
fn rows_checked(
    isa: Isa,
    wtype: DType,
    k: usize,
    row_bytes: usize,
    w: &[u8],
    acts: &QuantizedActs,
    tokens: Range<usize>,
    out: &mut [&mut [f32]],
) {
    for (r, wr) in w.chunks_exact(row_bytes).enumerate() {
        for (t, out_t) in tokens.clone().zip(out.iter_mut()) {
            out_t[r] = dispatch::vec_dot_checked(isa, wtype, k, wr, acts.row(t));
        }
    }
}

/// [`gemm_into_rows`] with the row kernels even where a panel kernel exists (the same bits: both equal the
/// scalar reference). For a single token the panel kernels transpose sixteen rows for every block they read;
/// on some CPUs that costs more than it saves, which [`rows_beat_panels`] measures.
///
/// # Panics
/// As [`gemm`].
pub fn gemm_rows_into_rows(
    wtype: DType,
    w: &[u8],
    acts: &QuantizedActs,
    tokens: Range<usize>,
    out: &mut [&mut [f32]],
) {
    let (_, tokens) = check_gemm(wtype, w, acts, tokens, out);
    let row_bytes = wtype.row_bytes(acts.k).expect("checked when quantizing");
    rows_checked(dispatch::isa(), wtype, acts.k, row_bytes, w, acts, tokens, out);
}

/// Whether, on this CPU, the row kernels ([`gemm_rows_into_rows`]) compute a single token's products with
/// `matrices` (each `(wtype, k, bytes)` in the file's layout, together larger than the caches) clearly
/// faster than the panel kernels on their prepacked copies: times both on the calling thread, alternating,
/// best of three, and asks for a 15 % margin so that noise does not decide. False where there is no panel
/// kernel or no prepacked layout for one of the matrices (nothing to choose).
pub fn rows_beat_panels(matrices: &[(DType, usize, &[u8])]) -> bool {
    // one matrix of the measurement: type, rows in the file's layout and prepacked, activations, output
    type Trial<'a> = (DType, &'a [u8], Vec<u8>, QuantizedActs, Vec<f32>);
    let isa = dispatch::isa();
    let mut prepared = Vec::new();
    for &(wtype, k, w) in matrices {
        let Some(row_bytes) = wtype.row_bytes(k) else { return false };
        let n_rows = w.len() / row_bytes / PANEL_ROWS * PANEL_ROWS;
        let w = &w[..n_rows * row_bytes];
        if !has_panel_kernel(isa, wtype) || !can_prepack(wtype, n_rows) {
            return false;
        }
        let mut packed = vec![0u8; w.len()];
        prepack(wtype, k, w, &mut packed);
        let x: Vec<f32> = (0..k).map(|i| ((i * 7919) % 257) as f32 / 128.0 - 1.0).collect();
        let mut acts = QuantizedActs::new();
        acts.quantize(wtype, k, &x);
        prepared.push((wtype, w, packed, acts, vec![0.0f32; n_rows]));
    }
    let time = |rows: bool, prepared: &mut [Trial]| {
        let start = std::time::Instant::now();
        for (wtype, w, packed, acts, out) in prepared.iter_mut() {
            let mut out = [&mut out[..]];
            if rows {
                gemm_rows_into_rows(*wtype, w, acts, 0..1, &mut out);
            } else {
                gemm_prepacked_into_rows(*wtype, packed, acts, 0..1, &mut out);
            }
        }
        start.elapsed()
    };
    let (mut best_rows, mut best_panels) = (std::time::Duration::MAX, std::time::Duration::MAX);
    for _ in 0..3 {
        best_rows = best_rows.min(time(true, &mut prepared));
        best_panels = best_panels.min(time(false, &mut prepared));
    }
    !prepared.is_empty() && best_rows.as_secs_f64() < 0.85 * best_panels.as_secs_f64()
}
