//! The AVX-512 matrix-product driver behind [`crate::matmul`]: activation tiles, per-thread panel scratch,
//! and the loop over panels and token tiles that calls the panel kernels of [`super::avx512`].

use std::arch::x86_64::__m512i;
use std::ops::Range;

use crate::formats::q8_k;
use crate::matmul::{QuantizedActs, PANEL_ROWS, TOKEN_TILE as TILE};
use crate::prepacked::Layout;
use crate::DType;

/// Activation rows interleaved tile by tile (`super::avx512::ActTile`): blocks, scales,
/// and the Q8_0 offset sums or Q8_K sub-block sum pairs. The tile from token `t` (a multiple of [`TILE`]
/// past the first token interleaved) holds its tokens' blocks from block `(t − first)·n_blocks` on.
#[derive(Default)]
pub(crate) struct Tiles {
    qs: Vec<u8>,
    d: Vec<f32>,
    side: Vec<i32>,
}

impl Tiles {
    /// Interleaves tokens `tokens` of `acts` (quantized for a weight format with a panel kernel).
    pub(crate) fn interleave(&mut self, acts: &QuantizedActs, tokens: Range<usize>) {
        use super::avx512::{self, Q8KSide, Q8_0Side};
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
    fn tile<const Q: usize, const S: usize>(&self, blocks: Range<usize>) -> super::avx512::ActTile<'_, Q, S> {
        let Range { start, end } = blocks;
        super::avx512::ActTile {
            qs: &self.qs[Q * start..Q * end],
            d: &self.d[start..end],
            side: &self.side[S * start..S * end],
        }
    }
}

/// Scratch of the panel kernels, one per thread (grows to the largest panel and batch seen).
#[derive(Default)]
struct Scratch {
    /// The packed panel, and a pair of them.
    packed: Vec<__m512i>,
    pair: Vec<__m512i>,
    /// The token range's tiles, when `acts` has none that line up with it.
    tiles: Tiles,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The panel kernels: `w` in the file's layout, or in [`crate::matmul::prepack`]'s when `prepacked`.
///
/// # Safety
/// The CPU must run AVX-512 F/BW/VL/VNNI with AVX2, FMA and F16C: an [`crate::dispatch::Isa`] of kind
/// `Avx512` was detected (`has_panel_kernel` or `can_prepack` held).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_avx512(
    wtype: DType,
    k: usize,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    tokens: Range<usize>,
    out: &mut [&mut [f32]],
    prepacked: bool,
) {
    use super::avx512::{self, Panel, PanelSrc, Q8KTile, Q8_0Tile};
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
        packed.resize(n_blocks * avx512::vecs_per_block(wtype), zero_vector());
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
        let pack = |r0: usize, n: usize, dst: &mut [__m512i]| {
            let panel = Panel::new(w, row_bytes, r0, n);
            let from = match layout {
                Some(layout) => {
                    PanelSrc::Prepacked { bytes: &w[r0 * row_bytes..(r0 + n) * row_bytes], layout }
                }
                None => PanelSrc::File { panel: &panel, dtype: wtype, block_bytes },
            };
            // SAFETY: only reached when `has_panel_kernel(isa, wtype)` holds for a supported `isa` (or
            // `can_prepack` held when the matrix was prepacked), i.e. the CPU has AVX-512 F/BW/VL/VNNI,
            // AVX2, FMA and F16C.
            unsafe { avx512::pack_panel(wtype, &from, n_blocks, dst) };
        };
        // Q4_0/Q8_0 batches: pairs of full panels against the whole tiles of tokens, so each broadcast
        // activation feeds both panels; the other panels and the last tokens go one panel at a time below.
        let per = n_blocks * avx512::vecs_per_block(wtype);
        let (mut r_pairs, t_full) = (0, tokens.start + tokens.len() / TILE * TILE);
        if q8_0 && !in_place && t_full > tokens.start {
            pair.resize(2 * per, zero_vector());
            while r_pairs + 2 * PANEL_ROWS <= n_rows {
                let (p0, p1) = pair.split_at_mut(per);
                pack(r_pairs, PANEL_ROWS, p0);
                pack(r_pairs + PANEL_ROWS, PANEL_ROWS, p1);
                for t in (tokens.start..t_full).step_by(TILE) {
                    // SAFETY: as for `pack` above.
                    let res =
                        unsafe { avx512::panel_pair_dots_q32(wtype, p0, p1, n_blocks, &q32_tile(t, TILE)) };
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
        // A prepacked K-quant panel against a few tiles (verifying drafts, short prompts): unpacked block by
        // block as it streams in, once for all the tiles.
        let fused = !q8_0 && !in_place && layout.is_some() && tokens.len() < (avx512::FUSED_TILES + 1) * TILE;
        for (r0, first) in jobs.filter(|&(_, first)| first < tokens.end) {
            let n = PANEL_ROWS.min(n_rows - r0);
            let src = &w[r0 * row_bytes..(r0 + n) * row_bytes];
            if fused {
                let layout = layout.expect("fused panels are prepacked");
                let n_full = (tokens.end - first) / TILE;
                let empty = || Q8KTile { qs: &[], d: &[], side: &[] };
                let full: [Q8KTile; avx512::FUSED_TILES] =
                    std::array::from_fn(
                        |j| if j < n_full { k_tile(first + j * TILE, TILE) } else { empty() },
                    );
                let t_rest = first + n_full * TILE;
                macro_rules! fused {
                    ($r:literal) => {{
                        let rest = if $r > 0 { k_tile(t_rest, $r) } else { empty() };
                        // SAFETY: as for `pack_panel` above; the matrix was prepacked, so `can_prepack` held.
                        let (whole, short) = unsafe {
                            avx512::panel_dots_prepacked_k_tiles::<$r>(
                                layout,
                                src,
                                n_blocks,
                                &full[..n_full],
                                &rest,
                            )
                        };
                        for (j, tile) in whole.iter().take(n_full).enumerate() {
                            for (i, lanes) in tile.iter().enumerate() {
                                let t = first + j * TILE + i - t0;
                                out[t][r0..r0 + n].copy_from_slice(&lanes[..n]);
                            }
                        }
                        for (i, lanes) in short.iter().enumerate() {
                            out[t_rest + i - t0][r0..r0 + n].copy_from_slice(&lanes[..n]);
                        }
                    }};
                }
                match tokens.end - t_rest {
                    0 => fused!(0),
                    1 => fused!(1),
                    2 => fused!(2),
                    3 => fused!(3),
                    4 => fused!(4),
                    5 => fused!(5),
                    6 => fused!(6),
                    _ => fused!(7),
                }
                continue;
            }
            if !in_place {
                pack(r0, n, &mut packed[..]);
            }
            // A whole panel's outputs as one fixed-size copy, not a `memmove` call per 16 floats.
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
                            (true, Some(l)) => {
                                avx512::panel_dots_prepacked::<$n>(l, src, n_blocks, &q32_tile($t, $n))
                            }
                            (false, Some(l)) => {
                                avx512::panel_dots_prepacked_k::<$n>(l, src, n_blocks, &k_tile($t, $n))
                            }
                            (true, None) => {
                                avx512::panel_dots_q32::<$n>(wtype, packed, n_blocks, &q32_tile($t, $n))
                            }
                            (false, None) => {
                                avx512::panel_dots::<$n>(wtype, packed, n_blocks, &k_tile($t, $n))
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
fn zero_vector() -> __m512i {
    // SAFETY: `__m512i` is plain old data; all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}
