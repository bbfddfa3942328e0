//! Causal grouped-query attention, each sequence of a batch over its own KV cache.
//!
//! Tasks are (KV head, block of [`QUERY_BLOCK`] query positions): the `group` query heads sharing a KV head
//! walk the visible keys in chunks of [`KEY_CHUNK`], so each chunk is brought into cache once for all of
//! them. Keys are cut into fixed [`SPLIT`]-position splits merged flash-decoding style ([`merge`]); when a
//! batch has too few blocks per thread, splits become tasks of their own. Splits and chunks start at fixed
//! positions and partials merge in order, so results are bit-identical for any thread count and batch, and a
//! query seeing at most one split gets exactly the plain softmax. The why and the numbers: RESULTS.md,
//! "Attention".

use quire_kernels::{axpy_rows, dot_rows, widen_rows, DType};
use rayon::prelude::*;
use std::ops::Range;

use crate::config::Config;
use crate::kv_cache::{KvCache, KvType};

/// Query positions per task (times `group` query heads).
const QUERY_BLOCK: usize = 16;
/// Keys (and values) per chunk: 64 positions of one head are 16 KiB of f16, 32 KiB as f32.
const KEY_CHUNK: usize = 64;
/// Keys per split (a multiple of [`KEY_CHUNK`]): 256 positions of one head are 128 KiB of f16 keys and
/// values, a task worth handing to another thread.
const SPLIT: usize = 256;

/// What a task does with one chunk of key or value rows for one query: `(query, format, rows, row stride,
/// that query's entries of the score scratch)`.
type RowsFn<'a> = dyn FnMut(usize, DType, &[u8], usize, Range<usize>) + 'a;

/// One sequence of a batch: its cache (holding the new positions' keys and values already), the position of
/// its first new token, and its rows of the batch.
pub struct SeqRows<'a> {
    pub kv: &'a KvCache,
    pub pos: usize,
    pub rows: Range<usize>,
}

/// Scratch of [`attention`], kept between calls.
#[derive(Default)]
pub struct AttnScratch {
    /// Task outputs, `[kv head][position][group * head_dim]` per sequence, scattered into `out` afterwards.
    tmp: Vec<f32>,
    /// Split partials when splits are tasks of their own: `[task][query][head_dim + 2]`.
    parts: Vec<f32>,
}

/// One (sequence, KV head, query block): its queries' output in `AttnScratch::tmp` and its first row within
/// the sequence's rows.
struct Block<'s, 'a> {
    sq: &'s SeqRows<'a>,
    kv_head: usize,
    b0: usize,
    out: &'s mut [f32],
}

/// Number of splits the keys `0..n_keys` span.
fn n_splits(n_keys: usize) -> usize {
    n_keys.div_ceil(SPLIT)
}

/// Attention for every sequence of a batch, each over its own cache: `q` and `out` are
/// `[batch row][n_heads * head_dim]`. All sequences' tasks run in one parallel region (a decode step of
/// several streams is a handful of tiny tasks per sequence).
pub fn attention(
    c: &Config,
    layer: usize,
    seqs: &[SeqRows],
    q: &[f32],
    out: &mut [f32],
    scratch: &mut AttnScratch,
) {
    let q_dim = c.q_dim();
    let group = c.n_heads / c.n_kv_heads;
    let group_width = group * c.head_dim;
    let part_len = c.head_dim + 2;
    scratch.tmp.resize(q.len(), 0.0);
    let mut blocks = Vec::new();
    let mut rest = &mut scratch.tmp[..];
    for sq in seqs {
        let n = sq.rows.len();
        let (seg, r) = std::mem::take(&mut rest).split_at_mut(n * q_dim);
        rest = r;
        for (kv_head, head) in seg.chunks_mut(n * group_width).enumerate() {
            for (blk, out) in head.chunks_mut(QUERY_BLOCK * group_width).enumerate() {
                blocks.push(Block { sq, kv_head, b0: blk * QUERY_BLOCK, out });
            }
        }
    }
    // The keys a block's last query sees.
    let keys_of = |b: &Block| b.sq.pos + b.b0 + b.out.len() / group_width;
    let splits = |b: &Block| n_splits(keys_of(b));
    let threads = rayon::current_num_threads();
    let split_tasks = blocks.len() < 2 * threads && blocks.iter().any(|b| splits(b) > 1);

    if !split_tasks {
        // one task per block, its splits one after the other
        blocks.into_par_iter().for_each(|b| {
            let q = &q[b.sq.rows.start * q_dim..b.sq.rows.end * q_dim];
            let rows = b.b0..b.b0 + b.out.len() / group_width;
            let n = splits(&b);
            TASK_PARTS.with_borrow_mut(|parts| {
                grow_exact(parts, n * b.out.len() / c.head_dim * part_len);
                head_block(c, b.sq.kv, layer, b.sq.pos, q, b.kv_head, rows, 0..n, parts);
                merge_block(c, b, parts);
            });
        });
    } else {
        // one task per (block, split); the partials go to `parts`, merged block by block afterwards
        let sizes: Vec<usize> = blocks.iter().map(|b| b.out.len() / c.head_dim * part_len).collect();
        let total: usize = blocks.iter().zip(&sizes).map(|(b, &size)| splits(b) * size).sum();
        grow_exact(&mut scratch.parts, total);
        let mut tasks = Vec::new();
        let mut rest = &mut scratch.parts[..];
        for (b, &size) in blocks.iter().zip(&sizes) {
            for s in 0..splits(b) {
                let (part, r) = std::mem::take(&mut rest).split_at_mut(size);
                rest = r;
                tasks.push((b, s, part));
            }
        }
        tasks.into_par_iter().for_each(|(b, s, part)| {
            let q = &q[b.sq.rows.start * q_dim..b.sq.rows.end * q_dim];
            let rows = b.b0..b.b0 + b.out.len() / group_width;
            head_block(c, b.sq.kv, layer, b.sq.pos, q, b.kv_head, rows, s..s + 1, part);
        });
        let mut rest = &scratch.parts[..];
        let mut owned = Vec::with_capacity(blocks.len());
        for (b, &size) in blocks.into_iter().zip(&sizes) {
            let (mine, r) = rest.split_at(splits(&b) * size);
            rest = r;
            owned.push((b, mine));
        }
        owned.into_par_iter().for_each(|(b, parts)| merge_block(c, b, parts));
    }

    for sq in seqs {
        let (n, tmp) = (sq.rows.len(), &scratch.tmp[sq.rows.start * q_dim..sq.rows.end * q_dim]);
        for (b, row) in out[sq.rows.start * q_dim..sq.rows.end * q_dim].chunks_exact_mut(q_dim).enumerate() {
            for (h, dst) in row.chunks_exact_mut(group_width).enumerate() {
                let src = (h * n + b) * group_width;
                dst.copy_from_slice(&tmp[src..src + group_width]);
            }
        }
    }
}

/// Makes `v` at least `len` long without growing its capacity past what is asked (the memory estimate,
/// [`task_scratch_bytes`], counts lengths; `resize` alone may double the capacity).
fn grow_exact(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.reserve_exact(len - v.len());
        v.resize(len, 0.0);
    }
}

/// Merges the split partials of each query of a block (`parts`: `[split][query][head_dim + 2]`, as
/// [`head_block`] writes them) into its output; query `i` sees the splits of its own visible keys.
fn merge_block(c: &Config, b: Block, parts: &[f32]) {
    let (hd, group) = (c.head_dim, c.n_heads / c.n_kv_heads);
    let nq = b.out.len() / hd;
    let first = b.sq.pos + b.b0;
    for (i, o) in b.out.chunks_exact_mut(hd).enumerate() {
        let seen = n_splits(first + i / group + 1);
        merge(seen, |s| &parts[(s * nq + i) * (hd + 2)..][..hd + 2], o);
    }
}

/// Merges one query's split partials (`part(s)` = `[weighted value sum (head_dim) | max | sum]`, splits
/// `0..n`) into its output: with `m` the largest split maximum and `w_s = e^(m_s − m)`,
/// `out = Σ w_s·o_s / Σ w_s·l_s`, summed in split order. For one split that is `o_0 · (1 / l_0)`, the plain
/// softmax.
fn merge<'p>(n: usize, part: impl Fn(usize) -> &'p [f32], out: &mut [f32]) {
    let hd = out.len();
    let m = (0..n).map(|s| part(s)[hd]).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for s in 0..n {
        let p = part(s);
        let w = (p[hd] - m).exp();
        if s == 0 {
            out.iter_mut().zip(&p[..hd]).for_each(|(o, &v)| *o = w * v);
            sum = w * p[hd + 1];
        } else {
            out.iter_mut().zip(&p[..hd]).for_each(|(o, &v)| *o += w * v);
            sum += w * p[hd + 1];
        }
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|v| *v *= inv);
}

/// One task: the partials of splits `splits` for query heads `kv_head * group ..` at batch positions `rows`,
/// into `parts` (`[split − splits.start][query][head_dim + 2]`, see [`merge`]). A query that does not see a
/// split leaves its partial alone.
#[allow(clippy::too_many_arguments)]
fn head_block(
    c: &Config,
    kv: &KvCache,
    layer: usize,
    pos: usize,
    q: &[f32],
    kv_head: usize,
    rows: Range<usize>,
    splits: Range<usize>,
    parts: &mut [f32],
) {
    let hd = c.head_dim;
    let part_len = hd + 2;
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
        // query i's vector as the f32 bytes the row kernels read, in place in `q`
        let query = |i: usize| -> &[u8] {
            let (b, head) = (rows.start + i / group, kv_head * group + i % group);
            bytemuck::cast_slice(&q[b * c.q_dim() + head * hd..][..hd])
        };
        s.scores.resize(nq * SPLIT, 0.0);

        for split in splits.clone() {
            let keys_in = split * SPLIT..n_keys.min((split + 1) * SPLIT);
            let parts = &mut parts[(split - splits.start) * nq * part_len..][..nq * part_len];
            // query i's visible keys of this split, as a range of positions
            let seen = |i: usize| keys_in.start..visible(i).min(keys_in.end);

            // Each chunk of the split's keys (or values) once as f32 rows ([`load_chunk`]), then
            // `f(i, dtype, rows, stride, at)` for every query i that sees some of them: `at` is the range of
            // `s.scores` that holds i's entries for the rows it sees (the first `at.len()` rows of the chunk).
            let walk = |src: &[u8], buf: &mut Vec<u8>, f: &mut RowsFn| {
                for start in keys_in.clone().step_by(KEY_CHUNK) {
                    let len = KEY_CHUNK.min(keys_in.end - start);
                    let (dtype, chunk, chunk_stride) =
                        load_chunk(kv_type, &src[start * stride..], stride, len, hd, buf);
                    for i in 0..nq {
                        let m = seen(i).end.saturating_sub(start).min(len);
                        if m > 0 {
                            let at = i * SPLIT + start - keys_in.start;
                            f(i, dtype, chunk, chunk_stride, at..at + m);
                        }
                    }
                }
            };

            // scores
            walk(keys, &mut s.chunk, &mut |i, dtype, chunk, chunk_stride, at| {
                dot_rows(dtype, query(i), chunk, chunk_stride, scale, &mut s.scores[at]);
            });

            // each query's softmax over its own visible keys of the split (unnormalized; see `merge`)
            for i in 0..nq {
                if seen(i).is_empty() {
                    continue;
                }
                let p = &mut s.scores[i * SPLIT..i * SPLIT + seen(i).len()];
                let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                p.iter_mut().for_each(|v| *v -= max);
                // vectorized where the CPU allows, with libm's results bit for bit
                quire_kernels::exp_in_place(p);
                let part = &mut parts[i * part_len..(i + 1) * part_len];
                part[hd] = max;
                part[hd + 1] = p.iter().fold(0.0f32, |sum, &v| sum + v);
                part[..hd].fill(0.0);
            }

            // probability-weighted values
            walk(values, &mut s.chunk, &mut |i, dtype, chunk, chunk_stride, at| {
                let out = &mut parts[i * part_len..i * part_len + hd];
                axpy_rows(dtype, &s.scores[at], chunk, chunk_stride, out);
            });
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

/// Bytes of the attention scratch of one thread at a context of `n_ctx` positions: a task's scores against
/// one split of keys, one chunk of keys converted to f32, and its split partials. Plus, once per
/// forward pass (counted here per thread, which covers it), the partials of split tasks: those run only
/// when there are fewer than two (KV head, block) tasks per thread, so for at most `2 · threads` blocks.
pub fn task_scratch_bytes(c: &Config, n_ctx: usize) -> usize {
    let group = c.n_heads / c.n_kv_heads;
    let nq = QUERY_BLOCK * group;
    let parts = n_splits(n_ctx) * (c.head_dim + 2);
    4 * (nq * SPLIT + KEY_CHUNK * c.head_dim + 3 * nq * parts)
}

/// Per-thread scratch of one task.
#[derive(Default)]
struct TaskScratch {
    /// Scores, then probabilities, of one split, `[nq][SPLIT]`.
    scores: Vec<f32>,
    /// An f16 or q8_0 chunk converted to f32 bytes.
    chunk: Vec<u8>,
}

thread_local! {
    static TASK_SCRATCH: std::cell::RefCell<TaskScratch> = std::cell::RefCell::new(TaskScratch::default());
    /// Split partials of a task that computes all of its block's splits, `[split][query][head_dim + 2]`.
    static TASK_PARTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;
    use rand::{Rng, SeedableRng};

    fn config() -> Config {
        Config {
            arch: Arch::Qwen3,
            n_layers: 1,
            dim: 64,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 32,
            ffn_dim: 64,
            vocab_size: 16,
            rope_base: 10000.0,
            rms_eps: 1e-6,
            ctx_train: 4096,
        }
    }

    /// A cache of `n` random positions and `rows` random queries at the end of it.
    fn setup(c: &Config, n: usize, rows: usize, kv_type: KvType) -> (KvCache, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut kv = KvCache::with_type(c, n, kv_type).unwrap();
        // a wide spread of scores, so the split maxima differ and the merge weights matter
        let k: Vec<f32> = (0..n * c.kv_dim()).map(|_| rng.random_range(-3.0..3.0)).collect();
        let v: Vec<f32> = (0..n * c.kv_dim()).map(|_| rng.random_range(-1.0..1.0)).collect();
        kv.write(0, 0, &k, &v);
        kv.advance(n);
        let q = (0..rows * c.q_dim()).map(|_| rng.random_range(-1.0..1.0)).collect();
        (kv, q)
    }

    /// Attention of the `rows` last positions, on a pool of `threads` threads.
    fn run(c: &Config, kv: &KvCache, q: &[f32], threads: usize) -> Vec<f32> {
        let rows = q.len() / c.q_dim();
        let seqs = [SeqRows { kv, pos: kv.len() - rows, rows: 0..rows }];
        let mut out = vec![0.0; q.len()];
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| attention(c, 0, &seqs, q, &mut out, &mut AttnScratch::default()));
        out
    }

    /// Softmax attention in f64 over the f32 cache, one query at a time.
    fn reference(c: &Config, k: &[f32], v: &[f32], q: &[f32], pos: usize) -> Vec<f64> {
        let (hd, group) = (c.head_dim, c.n_heads / c.n_kv_heads);
        let mut out = Vec::new();
        for (b, qrow) in q.chunks(c.q_dim()).enumerate() {
            let n = pos + b + 1;
            for h in 0..c.n_heads {
                let qh = &qrow[h * hd..(h + 1) * hd];
                let kv_off = (h / group) * hd;
                let scores: Vec<f64> = (0..n)
                    .map(|t| {
                        let kt = &k[t * c.kv_dim() + kv_off..][..hd];
                        qh.iter().zip(kt).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..hd {
                    out.push((0..n).map(|t| e[t] * v[t * c.kv_dim() + kv_off + d] as f64).sum::<f64>() / sum);
                }
            }
        }
        out
    }

    #[test]
    fn merge_of_one_split_is_the_plain_softmax_sum() {
        let part = [2.0f32, -4.0, 0.5, 3.0];
        let mut out = [0.0f32; 2];
        merge(1, |_| &part[..], &mut out);
        assert_eq!(out, [2.0 * (1.0 / 3.0), -4.0 * (1.0 / 3.0)]);
    }

    /// Decoding at long contexts: split tasks (many threads) and whole blocks (one thread) give the same bits,
    /// and both match an f64 softmax, at context lengths on and around split boundaries.
    #[test]
    fn split_keys_match_reference_for_any_thread_count() {
        let c = config();
        for n in [1, 255, 256, 257, 700, 1030] {
            for rows in [1, 3].map(|r: usize| r.min(n)) {
                let (kv, q) = setup(&c, n, rows, KvType::F32);
                let one = run(&c, &kv, &q, 1);
                // 2 (KV head, block) tasks: 2 and 8 threads take the split-task path (fewer than 2 per thread)
                for threads in [2, 8] {
                    let many = run(&c, &kv, &q, threads);
                    assert!(
                        one.iter().zip(&many).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "n {n}, {threads} threads"
                    );
                }
                let f32s = |b: &[u8]| -> Vec<f32> {
                    b[..n * c.kv_dim() * 4].chunks(4).map(bytemuck::pod_read_unaligned).collect()
                };
                let (keys, values) = (f32s(kv.keys(0)), f32s(kv.values(0)));
                let want = reference(&c, &keys, &values, &q, n - rows);
                let worst = one.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
                assert!(worst < 1e-5, "n {n}, rows {rows}: off by {worst}");
            }
        }
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    /// Split tasks (8 threads) give the bits of whole blocks (1 thread) for f16 and q8_0 caches too.
    #[test]
    fn split_tasks_equal_whole_blocks_for_every_cache_type() {
        let c = config();
        for kv_type in [KvType::F16, KvType::Q8_0] {
            let (kv, q) = setup(&c, 600, 2, kv_type);
            assert_eq!(bits(&run(&c, &kv, &q, 1)), bits(&run(&c, &kv, &q, 8)), "{kv_type}");
        }
    }

    /// Two sequences in one batch, with different split counts and one of them spanning two query blocks:
    /// split tasks and whole blocks give the same bits, and each sequence gets what it gets alone.
    #[test]
    fn split_tasks_in_a_mixed_batch_equal_each_sequence_alone() {
        let c = config();
        let (kv_a, q_a) = setup(&c, 300, 1, KvType::F16);
        let (kv_b, q_b) = setup(&c, 700, 20, KvType::F16);
        let q: Vec<f32> = q_a.iter().chain(&q_b).copied().collect();
        let seqs =
            [SeqRows { kv: &kv_a, pos: 299, rows: 0..1 }, SeqRows { kv: &kv_b, pos: 680, rows: 1..21 }];
        let batch = |threads: usize| {
            let mut out = vec![0.0; q.len()];
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| attention(&c, 0, &seqs, &q, &mut out, &mut AttnScratch::default()));
            out
        };
        // 2 KV heads × (1 + 2) blocks = 6 tasks: 1 thread runs whole blocks, 8 threads split tasks
        let (one, many) = (batch(1), batch(8));
        assert_eq!(bits(&one), bits(&many));
        let mut alone = run(&c, &kv_a, &q_a, 1);
        alone.extend(run(&c, &kv_b, &q_b, 1));
        assert_eq!(bits(&one), bits(&alone));
    }
}
