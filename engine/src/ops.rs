//! The small numeric steps of the forward pass: RMSNorm, RoPE, SiLU, softmax and the quantized matmul.
//!
//! Each works on plain `f32` slices. The matmul quantizes the activations once into the weight format's
//! partner type (Q8_0 or Q8_K) and then runs the kernels crate's dot products, parallel over output rows.
//! Every output element is one dot product computed by one thread, so results are bit-identical for any
//! thread count.

use quire_kernels::{quantize_row, vec_dot, DType};
use rayon::prelude::*;

/// A weight matrix inside the mapped file: `rows` rows of `cols` values in `dtype`, row-major.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub range: std::ops::Range<usize>,
}

impl Matrix {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols).expect("validated at load")
    }
}

/// Scratch reused by `matmul` so the forward pass allocates nothing after warm-up.
#[derive(Default)]
pub struct MatmulScratch {
    quantized: Vec<u8>,
    transposed: Vec<f32>,
}

/// Rows handed to one rayon task: large enough to amortise scheduling, small enough to balance 2–64 threads.
const ROWS_PER_TASK: usize = 16;

/// `out[b][r] = dot(W[r], x[b])` for a batch of `x.len() / cols` activation rows.
/// `w_bytes` is the matrix data, `out` holds `n_batch * rows` values.
pub fn matmul(w: &Matrix, w_bytes: &[u8], x: &[f32], out: &mut [f32], scratch: &mut MatmulScratch) {
    let n_batch = x.len() / w.cols;
    debug_assert_eq!(x.len(), n_batch * w.cols);
    debug_assert_eq!(out.len(), n_batch * w.rows);
    debug_assert_eq!(w_bytes.len(), w.rows * w.row_bytes());

    let act_type = w.dtype.vec_dot_type();
    let act_row = act_type.row_bytes(w.cols).expect("activation rows are whole blocks");
    scratch.quantized.resize(n_batch * act_row, 0);
    scratch
        .quantized
        .par_chunks_mut(act_row)
        .zip(x.par_chunks(w.cols))
        .for_each(|(q, xb)| quantize_row(act_type, xb, q));
    let acts = &scratch.quantized;
    let w_row = w.row_bytes();
    let cols = w.cols;

    if n_batch == 1 {
        out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(task, o)| {
            let r0 = task * ROWS_PER_TASK;
            for (i, v) in o.iter_mut().enumerate() {
                let r = r0 + i;
                *v = vec_dot(w.dtype, cols, &w_bytes[r * w_row..(r + 1) * w_row], acts);
            }
        });
        return;
    }

    // Batched: each task takes a few weight rows and dots each with every activation row, so a weight row
    // is read from memory once per batch. Results land transposed ([row][batch]) and are turned around after.
    scratch.transposed.resize(w.rows * n_batch, 0.0);
    scratch.transposed.par_chunks_mut(ROWS_PER_TASK * n_batch).enumerate().for_each(|(task, o)| {
        let r0 = task * ROWS_PER_TASK;
        for (i, row_out) in o.chunks_mut(n_batch).enumerate() {
            let r = r0 + i;
            let wr = &w_bytes[r * w_row..(r + 1) * w_row];
            for (b, v) in row_out.iter_mut().enumerate() {
                *v = vec_dot(w.dtype, cols, wr, &acts[b * act_row..(b + 1) * act_row]);
            }
        }
    });
    let t = &scratch.transposed;
    out.par_chunks_mut(w.rows).enumerate().for_each(|(b, ob)| {
        for (r, v) in ob.iter_mut().enumerate() {
            *v = t[r * n_batch + b];
        }
    });
}

/// `out = x / sqrt(mean(x²) + eps) * weight`, for one vector.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// RMSNorm in place over each `weight.len()`-wide piece of `x` (Qwen3's per-head norm on Q and K).
pub fn rmsnorm_per_head(x: &mut [f32], weight: &[f32], eps: f32) {
    for head in x.chunks_mut(weight.len()) {
        let ss: f32 = head.iter().map(|v| v * v).sum::<f32>() / head.len() as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for (v, &w) in head.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    }
}

/// Rotary position embedding, NEOX layout: dimension i pairs with i + head_dim/2 and turns by
/// `pos * inv_freq[i]`. Applied to every head in `x` (heads of `2 * inv_freq.len()` values).
pub fn rope_neox(x: &mut [f32], pos: usize, inv_freq: &[f32]) {
    let half = inv_freq.len();
    for head in x.chunks_mut(2 * half) {
        let (lo, hi) = head.split_at_mut(half);
        for i in 0..half {
            let theta = pos as f32 * inv_freq[i];
            let (sin, cos) = theta.sin_cos();
            let (a, b) = (lo[i], hi[i]);
            lo[i] = a * cos - b * sin;
            hi[i] = a * sin + b * cos;
        }
    }
}

/// The RoPE frequencies `base^(-2i/head_dim)` for i in 0..head_dim/2.
pub fn rope_inv_freq(head_dim: usize, base: f32) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// SwiGLU: `gate = silu(gate) * up`, element-wise.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
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
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Numerically stable log-softmax probability of `target` under `logits`.
pub fn log_softmax_at(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[target] as f64 - max - sum.ln()
}

/// Index of the largest value (lowest index on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
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
