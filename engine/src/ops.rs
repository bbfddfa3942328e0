//! The small numeric steps of the forward pass: RMSNorm, RoPE, SiLU, softmax and the quantized matmul.
//!
//! Each works on plain `f32` slices. The matmul quantizes the activations once into the weight format's
//! partner type (Q8_0 or Q8_K) and runs the kernels crate's products in parallel; every output element is one
//! dot product computed by one thread, so results are bit-identical for any thread count.

use quire_kernels::matmul::{PANEL_ROWS, TOKEN_TILE};
use quire_kernels::{norm_rope, DType, QuantizedActs};
use rayon::prelude::*;

use crate::weights::Matrix;

/// Scratch reused by `matmul` so the forward pass allocates little after warm-up.
#[derive(Default)]
pub struct MatmulScratch {
    /// The batch quantized for each weight format of a group (one entry per distinct format).
    acts: Vec<QuantizedActs>,
}

/// One product of a [`matmuls`] group: `out = W · x` for the group's activations `x`.
pub struct Product<'a> {
    pub w: &'a Matrix,
    /// `n_batch × w.rows` outputs.
    pub out: &'a mut [f32],
}

/// Batches at least this large are split between threads by tokens (each thread reads every weight once per
/// call, which the arithmetic of that many tokens hides); smaller ones by rows, so the weights are read once.
const TOKEN_SPLIT_MIN: usize = 32;

/// `out[b][r] = dot(W[r], x[b])` for a batch of `x.len() / cols` activation rows; `out` holds
/// `n_batch * rows` values.
pub fn matmul(w: &Matrix, x: &[f32], out: &mut [f32], scratch: &mut MatmulScratch) {
    matmuls(&mut [Product { w, out }], x, scratch);
}

/// Several products of the same activations (Q, K and V; gate and up): the batch is quantized once per
/// weight format, and a decode-sized batch runs all products' row ranges in one parallel region (one
/// wake-up of the workers, and the threads balance over all the rows).
///
/// Every output is one dot product of a weight row with an activation row, computed by one thread in a
/// fixed order, so results are bit-identical for any thread count, any batch composition and any grouping.
pub fn matmuls(products: &mut [Product], x: &[f32], scratch: &mut MatmulScratch) {
    let Some(first) = products.first() else { return };
    let cols = first.w.cols;
    let n_batch = x.len() / cols;
    assert_eq!(x.len(), n_batch * cols, "{}: input length", first.w.name);
    // The activations, quantized once per format; `which[i]` is product i's.
    let mut which = Vec::with_capacity(products.len());
    let mut formats: Vec<DType> = Vec::new();
    // one guard for the whole group (see `WeightStore::reading`), each matrix's layout read once
    let reading = first.w.store().reading();
    let data: Vec<_> = products.iter().map(|p| p.w.data(&reading)).collect();
    for (p, d) in products.iter().zip(&data) {
        let w = p.w;
        assert_eq!(w.cols, cols, "{}: columns", w.name);
        assert_eq!(p.out.len(), n_batch * w.rows, "{}: output length", w.name);
        assert_eq!(d.bytes.len(), w.rows * w.row_bytes(), "{}: weight bytes", w.name);
        let i = formats.iter().position(|&f| f == w.dtype).unwrap_or_else(|| {
            if scratch.acts.len() <= formats.len() {
                scratch.acts.push(QuantizedActs::new());
            }
            scratch.acts[formats.len()].quantize(w.dtype, cols, x);
            formats.push(w.dtype);
            formats.len() - 1
        });
        which.push(i);
    }
    let acts = &scratch.acts;
    let threads = rayon::current_num_threads().max(1);

    if n_batch >= TOKEN_SPLIT_MIN {
        // Contiguous token ranges of whole activation tiles: each task owns `[tokens][rows]` of the output.
        let per_task = n_batch.div_ceil(threads).next_multiple_of(TOKEN_TILE);
        for ((p, &a), d) in products.iter_mut().zip(&which).zip(&data) {
            let (w, bytes, gemm) = (p.w, d.bytes, d.gemm(n_batch));
            p.out.par_chunks_mut(per_task * w.rows).enumerate().for_each(|(i, o)| {
                let mut token_rows: Vec<&mut [f32]> = o.chunks_mut(w.rows).collect();
                let t0 = i * per_task;
                gemm(w.dtype, bytes, &acts[a], t0..t0 + token_rows.len(), &mut token_rows);
            });
        }
        return;
    }

    // Row ranges (whole panels), about four per thread over the whole group so a thread slowed by other
    // work can be helped. A task writes its piece of every token's output row in place.
    let total_rows: usize = products.iter().map(|p| p.w.rows).sum();
    let rows_per_task = total_rows.div_ceil(4 * threads).next_multiple_of(PANEL_ROWS).max(PANEL_ROWS);
    let mut tasks = Vec::new();
    for ((p, &a), d) in products.iter_mut().zip(&which).zip(&data) {
        let (w, row_bytes) = (p.w, p.w.row_bytes());
        let first = tasks.len();
        for wr in d.bytes.chunks(rows_per_task * row_bytes) {
            tasks.push((w.dtype, d.gemm(n_batch), &acts[a], wr, Vec::with_capacity(n_batch)));
        }
        for token_row in p.out.chunks_mut(w.rows) {
            for (i, piece) in token_row.chunks_mut(rows_per_task).enumerate() {
                tasks[first + i].4.push(piece);
            }
        }
    }
    tasks
        .into_par_iter()
        .for_each(|(dtype, gemm, acts, wr, mut out)| gemm(dtype, wr, acts, 0..n_batch, &mut out));
}

/// Work items below this many values run on the calling thread: splitting them costs more than it saves.
const PAR_MIN: usize = 1 << 15;

/// `f(out_row, in_row, index)` for every `width`-wide row, in parallel when the batch is large (prefill):
/// each row is computed by one thread alone, so results do not depend on the split.
fn rows_mut<F>(out: &mut [f32], width: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    if out.len() < PAR_MIN {
        out.chunks_mut(width).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        let per_task = (PAR_MIN / width).max(1);
        out.par_chunks_mut(width).enumerate().with_min_len(per_task).for_each(|(i, r)| f(i, r));
    }
}

/// [`rmsnorm`] of every `weight.len()`-wide row of `x` into `out`.
pub fn rmsnorm_rows(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let d = weight.len();
    rows_mut(out, d, |i, o| rmsnorm(o, &x[i * d..(i + 1) * d], weight, eps));
}

/// The cosines and sines RoPE turns by at each of `positions`: `[position][cos of half | sin of half]`,
/// computed once per forward pass and used by every layer's Q and K heads.
pub fn rope_table(positions: &[usize], inv_freq: &[f32], table: &mut Vec<f32>) {
    let half = inv_freq.len();
    table.resize(positions.len() * 2 * half, 0.0);
    for (&pos, row) in positions.iter().zip(table.chunks_exact_mut(2 * half)) {
        let (cos, sin) = row.split_at_mut(half);
        for i in 0..half {
            (sin[i], cos[i]) = (pos as f32 * inv_freq[i]).sin_cos();
        }
    }
}

/// [`rope_neox`] on every `width`-wide row of `x`, row `i` at the position of `table` row `i`
/// ([`rope_table`]).
pub fn rope_rows(x: &mut [f32], width: usize, table: &[f32]) {
    let turns = table.len() / (x.len() / width).max(1);
    rows_mut(x, width, |i, r| rope_turn(r, &table[i * turns..(i + 1) * turns]));
}

/// `out = x / sqrt(mean(x²) + eps) * weight`, for one vector.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    out.copy_from_slice(x);
    rmsnorm_in_place(out, weight, eps);
}

/// [`rmsnorm`] in place. The sum of squares runs in f64 (llama.cpp also sums in double, of f32 squares) in
/// a fixed lane order on every instruction set ([`quire_kernels::norm_rope`]), the mean is rounded to f32,
/// then each value is `x · (1 / sqrt(mean + eps)) · weight`.
fn rmsnorm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let mean = (norm_rope::sum_squares(x) / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    norm_rope::scale_mul(x, scale, weight);
}

/// RMSNorm in place over each `weight.len()`-wide piece of `x` (Qwen3's per-head norm on Q and K).
pub fn rmsnorm_per_head(x: &mut [f32], weight: &[f32], eps: f32) {
    rows_mut(x, weight.len(), |_, head| rmsnorm_in_place(head, weight, eps));
}

/// Rotary position embedding, NEOX layout: dimension i pairs with i + head_dim/2 and turns by
/// `pos * inv_freq[i]`. Applied to every head in `x` (heads of `2 * inv_freq.len()` values).
pub fn rope_neox(x: &mut [f32], pos: usize, inv_freq: &[f32]) {
    let mut table = Vec::new();
    rope_table(&[pos], inv_freq, &mut table);
    rope_turn(x, &table);
}

/// Turns every head of `x` by one position's [`rope_table`] row (`cos | sin`).
fn rope_turn(x: &mut [f32], table: &[f32]) {
    let half = table.len() / 2;
    let (cos, sin) = table.split_at(half);
    for head in x.chunks_mut(2 * half) {
        let (lo, hi) = head.split_at_mut(half);
        norm_rope::rope_turn(lo, hi, cos, sin);
    }
}

/// The RoPE frequencies `base^(-2i/head_dim)` for i in 0..head_dim/2.
pub fn rope_inv_freq(head_dim: usize, base: f32) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// SwiGLU: `gate = silu(gate) * up`, element-wise, `silu(g) = g / (1 + e^−g)`. `e^x` is vectorized
/// ([`quire_kernels::exp_in_place`], libm's bits) and even one token's values are split between threads: it
/// is heavy for an element-wise step (RESULTS.md, "SwiGLU").
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    const MIN_PER_TASK: usize = 2048;
    const MAX_PER_TASK: usize = 1 << 16;
    let threads = rayon::current_num_threads().max(1);
    let per_task = gate.len().div_ceil(threads).clamp(MIN_PER_TASK, MAX_PER_TASK);
    gate.par_chunks_mut(per_task).zip(up.par_chunks(per_task)).for_each(|(g, u)| {
        let mut e = [0.0f32; 256];
        for (g, u) in g.chunks_mut(256).zip(u.chunks(256)) {
            let e = &mut e[..g.len()];
            e.iter_mut().zip(g.iter()).for_each(|(e, g)| *e = -g);
            quire_kernels::exp_in_place(e);
            for ((g, &u), &e) in g.iter_mut().zip(u).zip(e.iter()) {
                *g = *g / (1.0 + e) * u;
            }
        }
    });
}

/// Add `bias` to each `bias.len()`-wide row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `x += y`, element-wise (the residual connections).
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    const PIECE: usize = 4096;
    rows_mut(x, PIECE, |i, x| {
        for (a, &b) in x.iter_mut().zip(&y[i * PIECE..]) {
            *a += b;
        }
    });
}

/// `ln Σ e^logit`, in f64 and numerically stable (the log-softmax's normalizer).
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().filter(|l| !l.is_nan()).map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln()
}

/// Numerically stable log-softmax probability of `target` under `logits`.
pub fn log_softmax_at(logits: &[f32], target: usize) -> f64 {
    logits[target] as f64 - log_sum_exp(logits)
}

/// Index of the largest value, ties to the lowest index; NaN never wins (0 if every value is NaN).
///
/// Two passes: a lane-wise maximum the compiler turns into SIMD (a NaN compares false and is skipped), then
/// the first index holding that maximum; over a 152k vocabulary several times faster than one branchy pass.
pub fn argmax(x: &[f32]) -> usize {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = lanes.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    if max == f32::NEG_INFINITY {
        // every value is -inf or NaN: the first non-NaN one, else 0
        return x.iter().position(|v| !v.is_nan()).unwrap_or(0);
    }
    x.iter().position(|&v| v == max).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_pairs_and_keeps_norm() {
        let inv = rope_inv_freq(8, 10_000.0);
        let mut x: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 2.0).collect();
        let before: f32 = x.iter().map(|v| v * v).sum();
        let orig = x.clone();
        rope_neox(&mut x, 7, &inv);
        let after: f32 = x.iter().map(|v| v * v).sum();
        assert!((before - after).abs() < 1e-3);
        // dimension 0 pairs with 4 (head_dim 8) at frequency 1: angle 7 rad
        let (s, c) = 7f32.sin_cos();
        assert!((x[0] - (orig[0] * c - orig[4] * s)).abs() < 1e-5);
        assert!((x[4] - (orig[0] * s + orig[4] * c)).abs() < 1e-5);
        // position 0 is the identity
        let mut y = orig.clone();
        rope_neox(&mut y, 0, &inv);
        assert_eq!(y, orig);
    }

    #[test]
    fn rmsnorm_unit_rms() {
        let x = [3.0f32, -4.0, 0.0, 5.0];
        let w = [1.0f32; 4];
        let mut out = [0.0f32; 4];
        rmsnorm(&mut out, &x, &w, 0.0);
        let ms: f32 = out.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!((ms - 1.0).abs() < 1e-5);
    }

    #[test]
    fn log_softmax_matches_direct() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&v| (v as f64).exp()).sum();
        assert!((log_softmax_at(&l, 2) - (3f64.exp() / z).ln()).abs() < 1e-9);
        assert_eq!(argmax(&[1.0, 5.0, 5.0, 2.0]), 1);
    }
}
