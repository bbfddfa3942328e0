//! Matrix products: a weight matrix (rows of one format, straight from the file) times a
//! batch of activation rows quantized once ([`QuantizedActs`]).
//!
//! [`gemm`] computes `out[t][r] = dot(W[r], act[t])` for a range of tokens. Lengths are
//! checked once per call, not per row. On AVX-512 machines the quantized formats run the
//! panel kernels of [`crate::x86::avx512`] (sixteen rows per vector, bit-identical to the
//! scalar reference); elsewhere, and for float weights, every output is one
//! [`crate::vec_dot`] of the process instruction set. Either way each output depends only
//! on its weight row and its activation row, never on the batch size, the token range or
//! how a caller splits the rows between threads.

use std::ops::Range;

use crate::dispatch::{self, Isa};
use crate::formats::{self, check_row, q8_0, q8_k};
use crate::prepacked::Layout;
use crate::DType;

/// A batch of activation rows quantized for one weight format, with the per-block side
/// data the matrix kernels use (scales as `f32`, block sums).
#[derive(Default)]
pub struct QuantizedActs {
    wtype: Option<DType>,
    k: usize,
    n_tokens: usize,
    row_bytes: usize,
    /// `n_tokens` rows of `wtype.vec_dot_type()` (F32 rows as little-endian bytes).
    bytes: Vec<u8>,
    /// Q8_0 / Q8_K: the scale of every block of every row, as `f32`.
    d: Vec<f32>,
    /// Q8_0: `−offset·Σ a` per block (offset 8 for Q4_0, 128 for Q8_0 weights).
    /// Q8_K: four dwords per super-block of i16 pairs `(s[2j], s[2j+1])`, `s[sub]` the
    /// sum of the 32 activations of sub-block `sub`.
    side: Vec<i32>,
    /// The batch interleaved tile by tile for the panel kernels, once per quantization instead of once
    /// per `gemm` call (a decode step splits each matrix into several calls); `None` where no panel
    /// kernel runs for `wtype`.
    #[cfg(target_arch = "x86_64")]
    tiles: Option<Tiles>,
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
                DType::F32 => {
                    for (d, v) in dst.chunks_exact_mut(4).zip(src) {
                        d.copy_from_slice(&v.to_le_bytes());
                    }
                }
                _ => crate::quantize_row(act_type, src, dst),
            }
        }
        self.d.clear();
        self.side.clear();
        match act_type {
            DType::Q8_0 => {
                let offset = if wtype == DType::Q4_0 { 8 } else { 128 };
                for block in q8_0::blocks(&self.bytes) {
                    self.d.push(block.d());
                    let sum: i32 = block.qs().iter().map(|&q| q as i8 as i32).sum();
                    self.side.push(-offset * sum);
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

/// [`gemm`] with an explicit instruction set, for tests and benchmarks. `None` if this
/// CPU does not support `isa`.
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
) -> Option<()> {
    if !isa.is_supported() {
        return None;
    }
    let n = tokens.len();
    gemm_checked(isa, wtype, w, acts, tokens, &mut token_rows(out, n));
    Some(())
}

/// Whether [`gemm`] on this instruction set runs a panel kernel for `wtype` (sixteen rows
/// at a time: callers splitting rows between threads should split at multiples of 16).
pub fn has_panel_kernel(isa: Isa, wtype: DType) -> bool {
    isa == Isa::Avx512 && matches!(wtype, DType::Q4_0 | DType::Q8_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K)
}

/// Whether a `wtype` matrix of `n_rows` rows can be stored prepacked ([`prepack`]) for the
/// process instruction set: the formats with panel kernels on AVX-512, whole panels of sixteen rows.
pub fn can_prepack(wtype: DType, n_rows: usize) -> bool {
    n_rows > 0
        && n_rows.is_multiple_of(PANEL_ROWS)
        && has_panel_kernel(dispatch::isa(), wtype)
        && Layout::of(wtype).is_some()
}

/// Rows per panel of the panel kernels (and of the prepacked layout).
pub const PANEL_ROWS: usize = crate::prepacked::PANEL_ROWS;

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
    gemm_avx512(wtype, acts.k, w, n_rows, acts, tokens, out, true);
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
        gemm_avx512(wtype, k, w, n_rows, acts, tokens, out, false);
        return;
    }
    for (t, out_t) in tokens.zip(out.iter_mut()) {
        let a = acts.row(t);
        for (o, wr) in out_t.iter_mut().zip(w.chunks_exact(row_bytes)) {
            *o = dispatch::vec_dot_checked(isa, wtype, k, wr, a);
        }
    }
}

/// Activation rows interleaved tile by tile (`crate::x86::avx512::ActTile`): blocks, scales,
/// and the Q8_0 offset sums or Q8_K sub-block sum pairs. The tile from token `t` (a multiple of [`TILE`]
/// past the first token interleaved) holds its tokens' blocks from block `(t − first)·n_blocks` on.
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
struct Tiles {
    qs: Vec<u8>,
    d: Vec<f32>,
    side: Vec<i32>,
}

#[cfg(target_arch = "x86_64")]
impl Tiles {
    /// Interleaves tokens `tokens` of `acts` (quantized for a weight format with a panel kernel).
    fn interleave(&mut self, acts: &QuantizedActs, tokens: Range<usize>) {
        use crate::x86::avx512::{self, Q8KSide, Q8_0Side};
        let wtype = acts.wtype.expect("quantized");
        let n_blocks = acts.k / wtype.block_len();
        let q8_0 = wtype.vec_dot_type() == DType::Q8_0;
        let n = tokens.len() * n_blocks;
        let (block_len, side_len) = if q8_0 { (32, 1) } else { (q8_k::BLOCK_BYTES, 4) };
        self.qs.resize(block_len * n, 0);
        self.d.resize(n, 0.0);
        self.side.resize(side_len * n, 0);
        let side_q8_0 = Q8_0Side { d: &acts.d, neg_offset_sum: &acts.side };
        let side_q8_k = Q8KSide { d: &acts.d, sub_pairs: &acts.side };
        for t in tokens.clone().step_by(TILE) {
            let m = TILE.min(tokens.end - t);
            let rows: [&[u8]; TILE] = std::array::from_fn(|i| acts.row(t + i.min(m - 1)));
            let starts: [usize; TILE] = std::array::from_fn(|i| (t + i) * n_blocks);
            let at = (t - tokens.start) * n_blocks..(t - tokens.start + m) * n_blocks;
            let qs = &mut self.qs[block_len * at.start..block_len * at.end];
            let (d, side) = (&mut self.d[at.clone()], &mut self.side[side_len * at.start..side_len * at.end]);
            if q8_0 {
                avx512::interleave_q8_0(&rows[..m], &side_q8_0, &starts[..m], n_blocks, qs, d, side);
            } else {
                avx512::interleave_q8_k(&rows[..m], &side_q8_k, &starts[..m], n_blocks, qs, d, side);
            }
        }
    }

    /// Blocks `blocks` (counted from the first token interleaved, `n_blocks` per token) as a tile of
    /// `Q`-byte blocks with `S` dwords of side data each.
    fn tile<const Q: usize, const S: usize>(
        &self,
        blocks: Range<usize>,
    ) -> crate::x86::avx512::ActTile<'_, Q, S> {
        let Range { start, end } = blocks;
        crate::x86::avx512::ActTile {
            qs: &self.qs[Q * start..Q * end],
            d: &self.d[start..end],
            side: &self.side[S * start..S * end],
        }
    }
}

/// Scratch of the panel kernels, one per thread (grows to the largest panel and batch seen).
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
struct Scratch {
    /// The packed panel, and a pair of them.
    packed: Vec<std::arch::x86_64::__m512i>,
    pair: Vec<std::arch::x86_64::__m512i>,
    /// The token range's tiles, when `acts` has none that line up with it.
    tiles: Tiles,
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Tokens per tile of the panel kernels.
#[cfg(target_arch = "x86_64")]
const TILE: usize = 8;

/// The panel kernels: `w` in the file's layout, or in [`prepack`]'s when `prepacked`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn gemm_avx512(
    wtype: DType,
    k: usize,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    tokens: Range<usize>,
    out: &mut [&mut [f32]],
    prepacked: bool,
) {
    use crate::x86::avx512::{self, Panel, PanelSrc, Q8KTile, Q8_0Tile};
    let block_bytes = wtype.block_bytes();
    let n_blocks = k / wtype.block_len();
    let row_bytes = n_blocks * block_bytes;
    let q8_0 = wtype.vec_dot_type() == DType::Q8_0;
    let layout = if prepacked { Layout::of(wtype) } else { None };
    // A prepacked panel is read in place by a batch of at most one tile (decoding); a larger batch
    // unpacks it into scratch once, as a panel in the file's layout is always packed.
    let in_place = prepacked && tokens.len() <= TILE;
    let t0 = tokens.start;
    SCRATCH.with_borrow_mut(|Scratch { packed, pair, tiles: own }| {
        packed.resize(n_blocks * avx512::vecs_per_block(block_bytes), zero_vector());
        // The activations' tiles if this token range is made of them (whole tiles from a tile boundary,
        // the last one possibly the batch's short last tile), else the range interleaved here.
        let lined_up = tokens.start.is_multiple_of(TILE)
            && (tokens.end.is_multiple_of(TILE) || tokens.end == acts.n_tokens);
        let (tiles, first) = match &acts.tiles {
            Some(tiles) if lined_up => (tiles, 0),
            _ => {
                own.interleave(acts, tokens.clone());
                (&*own, tokens.start)
            }
        };
        // The `n` tokens' tile from token t: Q8_0 quants with offset sums, or Q8_K blocks with sub-block pairs.
        let at = |t: usize, n: usize| (t - first) * n_blocks..(t - first + n) * n_blocks;
        let q32_tile = |t: usize, n: usize| -> Q8_0Tile { tiles.tile(at(t, n)) };
        let k_tile = |t: usize, n: usize| -> Q8KTile { tiles.tile(at(t, n)) };
        let pack = |r0: usize, n: usize, dst: &mut [std::arch::x86_64::__m512i]| {
            let panel = Panel::new(w, row_bytes, r0, n);
            let from = match layout {
                Some(layout) => {
                    PanelSrc::Prepacked { bytes: &w[r0 * row_bytes..(r0 + n) * row_bytes], layout }
                }
                None => PanelSrc::File { panel: &panel, block_bytes },
            };
            // SAFETY: only reached when `has_panel_kernel(isa, wtype)` holds for a supported `isa` (or
            // `can_prepack` held when the matrix was prepacked), i.e. the CPU has AVX-512 F/BW/VL/VNNI,
            // AVX2, FMA and F16C.
            unsafe { avx512::pack_panel(block_bytes, &from, n_blocks, dst) };
        };
        // Q4_0/Q8_0 batches: pairs of full panels against the whole tiles of tokens, so each broadcast
        // activation feeds both panels; the other panels and the last tokens go one panel at a time below.
        let per = n_blocks * avx512::vecs_per_block(block_bytes);
        let (mut r_pairs, t_full) = (0, tokens.start + tokens.len() / TILE * TILE);
        if q8_0 && !in_place && t_full > tokens.start {
            pair.resize(2 * per, zero_vector());
            while r_pairs + 2 * PANEL_ROWS <= n_rows {
                let (p0, p1) = pair.split_at_mut(per);
                pack(r_pairs, PANEL_ROWS, p0);
                pack(r_pairs + PANEL_ROWS, PANEL_ROWS, p1);
                for t in (tokens.start..t_full).step_by(TILE) {
                    // SAFETY: as for `pack` above.
                    let res = unsafe { avx512::panel_pair_dots_q32(p0, p1, n_blocks, &q32_tile(t, TILE)) };
                    for (p, panel) in res.iter().enumerate() {
                        for (i, lanes) in panel.iter().enumerate() {
                            let r = r_pairs + p * PANEL_ROWS;
                            out[t + i - t0][r..r + PANEL_ROWS].copy_from_slice(lanes);
                        }
                    }
                }
                r_pairs += 2 * PANEL_ROWS;
            }
        }
        let jobs =
            (0..n_rows).step_by(PANEL_ROWS).map(|r0| (r0, if r0 < r_pairs { t_full } else { tokens.start }));
        for (r0, first) in jobs.filter(|&(_, first)| first < tokens.end) {
            let n = PANEL_ROWS.min(n_rows - r0);
            let src = &w[r0 * row_bytes..(r0 + n) * row_bytes];
            if !in_place {
                pack(r0, n, &mut packed[..]);
            }
            // A whole panel's outputs as one fixed-size copy (a call to `memmove` per 16 floats cost ≈ 2 % of a
            // Q4_K_M prefill).
            let mut put = |t: usize, lanes: &[f32; PANEL_ROWS]| match n {
                PANEL_ROWS => {
                    let dst: &mut [f32; PANEL_ROWS] =
                        (&mut out[t - t0][r0..r0 + PANEL_ROWS]).try_into().expect("a whole panel");
                    *dst = *lanes;
                }
                _ => out[t - t0][r0..r0 + n].copy_from_slice(&lanes[..n]),
            };
            // `$n` tokens from `$t` against this panel.
            macro_rules! dots {
                ($n:literal, $t:expr) => {{
                    // SAFETY: as for `pack_panel` above (and `can_prepack` held when the
                    // matrix was prepacked, which also requires AVX-512).
                    let res = unsafe {
                        match (q8_0, in_place.then_some(layout).flatten()) {
                            (true, Some(_)) => avx512::panel_dots_prepacked::<$n>(
                                block_bytes,
                                src,
                                n_blocks,
                                &q32_tile($t, $n),
                            ),
                            (false, Some(l)) => {
                                avx512::panel_dots_prepacked_k::<$n>(l, src, n_blocks, &k_tile($t, $n))
                            }
                            (true, None) => avx512::panel_dots_q32::<$n>(packed, n_blocks, &q32_tile($t, $n)),
                            (false, None) => {
                                avx512::panel_dots::<$n>(block_bytes, packed, n_blocks, &k_tile($t, $n))
                            }
                        }
                    };
                    for (i, lanes) in res.iter().enumerate() {
                        put($t + i, lanes);
                    }
                }};
            }
            let mut t = first;
            while t + TILE <= tokens.end {
                dots!(8, t);
                t += TILE;
            }
            // The last tokens (fewer than a tile: all of them when decoding a few streams) in one
            // pass over the panel, so its weights are loaded once for all of them.
            match tokens.end - t {
                0 => {}
                1 => dots!(1, t),
                2 => dots!(2, t),
                3 => dots!(3, t),
                4 => dots!(4, t),
                5 => dots!(5, t),
                6 => dots!(6, t),
                _ => dots!(7, t),
            }
        }
    });
}

/// A zero vector for filling scratch (plain data, no CPU feature needed to build it).
#[cfg(target_arch = "x86_64")]
fn zero_vector() -> std::arch::x86_64::__m512i {
    // SAFETY: `__m512i` is plain old data; all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}
