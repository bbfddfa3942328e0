//! Causal grouped-query attention, each sequence of a batch over its own KV cache.
//!
//! Work is split into tasks of (KV head, block of query positions): the `group` query heads that share a
//! KV head and up to [`QUERY_BLOCK`] consecutive positions. A task walks the visible keys in chunks of
//! [`KEY_CHUNK`] positions, so each chunk of keys (and later of values) is brought into cache once and used
//! by every query of the task, instead of once per query head and position. For each query:
//! scores = q·k / √head_dim against every visible key, softmax, then the probability-weighted sum of the
//! values; f32 caches are read in place by the kernels crate's row kernels, f16 and q8_0 chunks are
//! converted to f32 first (exact for f16, so the results are those of reading the halves in place).
//!
//! Every query's result depends only on its own vector and the cache: its scores are one dot product per key,
//! its softmax runs over its own visible keys, and its values are accumulated key by key in position order
//! (chunks start at multiples of [`KEY_CHUNK`] whatever the batch looks like). So a token gets bit-identical
//! attention inside a prompt batch and alone, and for any thread count.

use quire_kernels::{axpy_rows, dot_rows, widen_rows, DType};
use rayon::prelude::*;

use crate::config::Config;
use crate::kv_cache::{KvCache, KvType};

/// Query positions per task (times `group` query heads).
const QUERY_BLOCK: usize = 16;
/// Keys (and values) per chunk: 64 positions of one head are 16 KiB of f16, 32 KiB as f32.
const KEY_CHUNK: usize = 64;

/// One sequence of a batch: its cache (holding the new positions' keys and values already), the position of
/// its first new token, and its rows of the batch.
pub struct SeqRows<'a> {
    pub kv: &'a KvCache,
    pub pos: usize,
    pub rows: std::ops::Range<usize>,
}

/// Attention for every sequence of a batch, each over its own cache: `q` and `out` are
/// `[batch row][n_heads * head_dim]`. All sequences' tasks run in one parallel region (a decode step of
/// several streams is a handful of tiny tasks per sequence). `tmp` is scratch.
pub fn attention(c: &Config, layer: usize, seqs: &[SeqRows], q: &[f32], out: &mut [f32], tmp: &mut Vec<f32>) {
    let q_dim = c.q_dim();
    let group_width = c.n_heads / c.n_kv_heads * c.head_dim;
    // Tasks write, per sequence, `[kv head][position][group * head_dim]`, scattered into `out` afterwards.
    tmp.resize(q.len(), 0.0);
    let mut tasks = Vec::new();
    let mut rest = &mut tmp[..];
    for sq in seqs {
        let n = sq.rows.len();
        let (seg, r) = std::mem::take(&mut rest).split_at_mut(n * q_dim);
        rest = r;
        for (kv_head, head) in seg.chunks_mut(n * group_width).enumerate() {
            for (blk, o) in head.chunks_mut(QUERY_BLOCK * group_width).enumerate() {
                tasks.push((sq, kv_head, blk * QUERY_BLOCK, o));
            }
        }
    }
    tasks.into_par_iter().for_each(|(sq, kv_head, b0, o)| {
        let q = &q[sq.rows.start * q_dim..sq.rows.end * q_dim];
        head_block(c, sq.kv, layer, sq.pos, q, kv_head, b0..b0 + o.len() / group_width, o);
    });
    for sq in seqs {
        let (n, tmp) = (sq.rows.len(), &tmp[sq.rows.start * q_dim..sq.rows.end * q_dim]);
        for (b, row) in out[sq.rows.start * q_dim..sq.rows.end * q_dim].chunks_exact_mut(q_dim).enumerate() {
            for (h, dst) in row.chunks_exact_mut(group_width).enumerate() {
                let src = (h * n + b) * group_width;
                dst.copy_from_slice(&tmp[src..src + group_width]);
            }
        }
    }
}

/// One task: query heads `kv_head * group ..` at batch positions `rows`, into `out`
/// (`[rows.len()][group * head_dim]`).
#[allow(clippy::too_many_arguments)]
fn head_block(
    c: &Config,
    kv: &KvCache,
    layer: usize,
    pos: usize,
    q: &[f32],
    kv_head: usize,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let hd = c.head_dim;
    let group = c.n_heads / c.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let kv_type = kv.kv_type();
    let stride = kv.row_bytes();
    let head_offset = kv_type.bytes_for(kv_head * hd);
    let (keys, values) = (&kv.keys(layer)[head_offset..], &kv.values(layer)[head_offset..]);
    // Query i of the task: position rows.start + i / group, head kv_head * group + i % group. It sees keys
    // 0..visible(i).
    let nq = rows.len() * group;
    let visible = |i: usize| pos + rows.start + i / group + 1;
    let n_keys = visible(nq - 1);

    TASK_SCRATCH.with_borrow_mut(|s| {
        s.queries.clear();
        for b in rows.clone() {
            let qrow = &q[b * c.q_dim() + kv_head * group * hd..][..group * hd];
            s.queries.extend(qrow.iter().flat_map(|v| v.to_le_bytes()));
        }
        s.scores.resize(nq * n_keys, 0.0);

        // scores, chunk by chunk of keys
        for start in (0..n_keys).step_by(KEY_CHUNK) {
            let len = KEY_CHUNK.min(n_keys - start);
            let (dtype, chunk, chunk_stride) =
                load_chunk(kv_type, &keys[start * stride..], stride, len, hd, &mut s.chunk);
            for i in 0..nq {
                let m = visible(i).saturating_sub(start).min(len);
                if m == 0 {
                    continue;
                }
                let qi = &s.queries[i * hd * 4..(i + 1) * hd * 4];
                let row = &mut s.scores[i * n_keys + start..i * n_keys + start + m];
                dot_rows(dtype, qi, chunk, chunk_stride, scale, row);
            }
        }

        // softmax of each query over its own visible keys (unnormalized; divided at the end)
        s.inv.resize(nq, 0.0);
        for i in 0..nq {
            let p = &mut s.scores[i * n_keys..i * n_keys + visible(i)];
            let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            p.iter_mut().for_each(|v| *v -= max);
            // vectorized where the CPU allows, with libm's results bit for bit
            quire_kernels::exp_in_place(p);
            s.inv[i] = 1.0 / p.iter().fold(0.0f32, |sum, &v| sum + v);
        }

        // probability-weighted values, chunk by chunk
        out.fill(0.0);
        for start in (0..n_keys).step_by(KEY_CHUNK) {
            let len = KEY_CHUNK.min(n_keys - start);
            let (dtype, chunk, chunk_stride) =
                load_chunk(kv_type, &values[start * stride..], stride, len, hd, &mut s.chunk);
            for i in 0..nq {
                let m = visible(i).saturating_sub(start).min(len);
                if m == 0 {
                    continue;
                }
                let p = &s.scores[i * n_keys + start..i * n_keys + start + m];
                axpy_rows(dtype, p, chunk, chunk_stride, &mut out[i * hd..(i + 1) * hd]);
            }
        }
        for (i, o) in out.chunks_exact_mut(hd).enumerate() {
            let inv = s.inv[i];
            o.iter_mut().for_each(|v| *v *= inv);
        }
    });
}

/// `len` rows of one head (`hd` values at the start of each `stride`-byte row of `src`) as f32 rows for the row
/// kernels: f32 in place; f16 and q8_0 converted into `buf` once per chunk (every query of the task then
/// reads plain f32 from L1 instead of widening the same halves again). Returns (format, bytes, stride).
fn load_chunk<'a>(
    kv_type: KvType,
    src: &'a [u8],
    stride: usize,
    len: usize,
    hd: usize,
    buf: &'a mut Vec<u8>,
) -> (DType, &'a [u8], usize) {
    match kv_type {
        KvType::F32 => (DType::F32, src, stride),
        KvType::F16 | KvType::Q8_0 => {
            buf.resize(len * hd * 4, 0);
            widen_rows(kv_type.dtype(), src, stride, hd, buf);
            (DType::F32, &buf[..], hd * 4)
        }
    }
}

/// Bytes of the per-thread scratch of attention tasks at a context of `n_ctx` positions: the scores of a
/// task's queries against every visible key, the queries, and one chunk of keys converted to f32.
pub fn task_scratch_bytes(c: &Config, n_ctx: usize) -> usize {
    let nq = QUERY_BLOCK * (c.n_heads / c.n_kv_heads);
    4 * (nq * n_ctx + nq + nq * c.head_dim + KEY_CHUNK * c.head_dim)
}

/// Per-thread scratch of one task.
#[derive(Default)]
struct TaskScratch {
    /// The task's query vectors as f32 bytes, `[nq][head_dim]`.
    queries: Vec<u8>,
    /// Scores, then probabilities, `[nq][n_keys]`.
    scores: Vec<f32>,
    /// 1 / softmax denominator of each query.
    inv: Vec<f32>,
    /// An f16 or q8_0 chunk converted to f32 bytes.
    chunk: Vec<u8>,
}

thread_local! {
    static TASK_SCRATCH: std::cell::RefCell<TaskScratch> = std::cell::RefCell::new(TaskScratch::default());
}
