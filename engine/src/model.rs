//! The Qwen3 / Qwen2 decoder: weights (views into the mapped GGUF), run state, and the forward pass.
//!
//! Read it top-down like llama2.c: `Model::load` finds every tensor, `Model::forward` runs a batch of
//! tokens through all layers. Qwen2 and Qwen3 share one forward pass; their two differences are the two
//! `if let`s in the attention block (QKV bias for Qwen2, per-head Q/K RMSNorm for Qwen3).

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use quire_kernels::{dequantize_row, DType};

use crate::attention::{attention, AttnScratch, SeqRows};
use crate::config::{Arch, Config};
use crate::gguf::GgufFile;
use crate::kv_cache::KvCache;
use crate::ops::{self, MatmulScratch, Product};
use crate::prepack::Prepacker;
use crate::weights::{Matrix, WeightStore};

/// One transformer block's weights. Norms and biases are small and dequantized to f32 at load; the big
/// matrices stay in the map.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    /// Qwen2 only: biases on the Q, K and V projections.
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    /// Qwen3 only: RMSNorm weights applied to each head of Q and K before RoPE.
    pub qk_norm: Option<[Vec<f32>; 2]>,
    pub wo: Matrix,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix,
    pub w_up: Matrix,
    pub w_down: Matrix,
}

impl Layer {
    /// The seven matrices, in the order the forward pass uses them.
    pub fn matrices(&self) -> [&Matrix; 7] {
        [&self.wq, &self.wk, &self.wv, &self.wo, &self.w_gate, &self.w_up, &self.w_down]
    }
}

/// A loaded model: the mapped file, its config, and where every weight lives.
pub struct Model {
    pub config: Config,
    pub file: Arc<GgufFile>,
    pub token_embd: Matrix,
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>,
    /// The output head; `token_embd` itself when the file has no `output.weight` (tied embeddings).
    pub output: Matrix,
    inv_freq: Vec<f32>,
    /// The background copy into the prepacked layout (kept after it finishes).
    prepacker: Option<Prepacker>,
    /// Single tokens use the row kernels on the file's layout (measured at load).
    rows_for_decode: bool,
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Copy the matrices into the kernels' prepacked layout in the background after load, where this CPU
    /// has one (see [`crate::prepack`]); off, everything is read from the file's layout (same results).
    pub prepack: bool,
    /// Which kernels compute single tokens (decoding) when prepacking is on.
    pub decode: DecodeKernels,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { prepack: true, decode: DecodeKernels::Measure }
    }
}

/// Which kernels compute the products of a single token (decoding), when prepacking is on. Every choice
/// gives the same bits; only the speed differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKernels {
    /// Time one layer's FFN products for a single token with the row kernels on the file's layout and with
    /// the panel kernels on a prepacked copy, at load; take the rows (and keep the file's layout) where they
    /// are clearly faster (some CPUs), else prepack.
    Measure,
    /// The panel kernels on the prepacked copy.
    Panels,
    /// The row kernels on the file's layout (nothing is prepacked; batches use the panel kernels on the
    /// file's layout).
    Rows,
}

/// Whether single tokens should use the row kernels (see [`DecodeKernels::Measure`]): measured on the first
/// layer's three FFN matrices, when together they are larger than a CPU's caches (24 MiB; smaller models
/// would be measured against cache-resident weights, which says nothing about decoding).
fn decode_reads_rows(layers: &[Layer]) -> bool {
    let Some(l) = layers.first() else { return false };
    let ffn = [&l.w_gate, &l.w_up, &l.w_down];
    let bytes: usize = ffn.iter().map(|m| m.rows * m.row_bytes()).sum();
    if bytes < 24 << 20 {
        return false;
    }
    let matrices: Vec<_> = ffn.iter().map(|m| (m.dtype, m.cols, m.file_bytes())).collect();
    quire_kernels::rows_beat_panels(&matrices)
}

/// One sequence's share of a `forward_multi` batch: its cache and its next tokens.
pub struct SeqBatch<'a> {
    pub kv: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub want: Logits,
}

/// Which positions of a batch need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (prefilling a prefix whose predictions nobody reads).
    None,
    /// Only the last position (generation).
    Last,
    /// Every position of the batch (perplexity, verifying drafts, tests).
    All,
}

impl Logits {
    /// Rows of logits a sequence of `n` tokens gets (the last ones of the sequence).
    pub fn rows(self, n: usize) -> usize {
        match self {
            Logits::None => 0,
            Logits::Last => n.min(1),
            Logits::All => n,
        }
    }
}

impl Model {
    /// Find and check every tensor of a Qwen2/Qwen3 model in an open GGUF file, with the default
    /// [`LoadOptions`] (prepacking in the background). The model is usable at once.
    pub fn load(file: GgufFile) -> Result<Model> {
        Model::load_with(file, &LoadOptions::default())
    }

    /// [`Model::load`] with `opts`.
    pub fn load_with(file: GgufFile, opts: &LoadOptions) -> Result<Model> {
        let config = Config::from_gguf(&file)?;
        let c = &config;
        let file = Arc::new(file);
        let store = WeightStore::file(file.clone());
        let matrix = |name: &str, cols, rows| matrix(&file, &store, name, cols, rows);
        let token_embd = matrix("token_embd.weight", c.dim, c.vocab_size)?;
        // A tied output head is the embedding table itself (one shared prepacked copy; its rows are then
        // read back from it).
        let output = match file.tensor_info("output.weight") {
            Some(_) => matrix("output.weight", c.dim, c.vocab_size)?,
            None => token_embd.clone(),
        };
        let output_norm = vector(&file, "output_norm.weight", c.dim)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let name = |s: &str| format!("blk.{l}.{s}");
            let qkv_bias = match c.arch {
                Arch::Qwen2 => Some([
                    vector(&file, &name("attn_q.bias"), c.q_dim())?,
                    vector(&file, &name("attn_k.bias"), c.kv_dim())?,
                    vector(&file, &name("attn_v.bias"), c.kv_dim())?,
                ]),
                Arch::Qwen3 => None,
            };
            let qk_norm = match c.arch {
                Arch::Qwen3 => Some([
                    vector(&file, &name("attn_q_norm.weight"), c.head_dim)?,
                    vector(&file, &name("attn_k_norm.weight"), c.head_dim)?,
                ]),
                Arch::Qwen2 => None,
            };
            layers.push(Layer {
                attn_norm: vector(&file, &name("attn_norm.weight"), c.dim)?,
                wq: matrix(&name("attn_q.weight"), c.dim, c.q_dim())?,
                wk: matrix(&name("attn_k.weight"), c.dim, c.kv_dim())?,
                wv: matrix(&name("attn_v.weight"), c.dim, c.kv_dim())?,
                qkv_bias,
                qk_norm,
                wo: matrix(&name("attn_output.weight"), c.q_dim(), c.dim)?,
                ffn_norm: vector(&file, &name("ffn_norm.weight"), c.dim)?,
                w_gate: matrix(&name("ffn_gate.weight"), c.dim, c.ffn_dim)?,
                w_up: matrix(&name("ffn_up.weight"), c.dim, c.ffn_dim)?,
                w_down: matrix(&name("ffn_down.weight"), c.ffn_dim, c.dim)?,
            });
        }
        // a layer past the block count is a file whose metadata and tensors disagree (as llama.cpp, refuse it)
        let layer_of = |name: &str| name.strip_prefix("blk.")?.split('.').next()?.parse::<usize>().ok();
        if let Some(t) = file.tensors().iter().find(|t| layer_of(&t.name).is_some_and(|l| l >= c.n_layers)) {
            bail!(
                "{}: tensor '{}' is past the {} layers the metadata ({}.block_count) says the model has",
                file.path().display(),
                t.name,
                c.n_layers,
                c.arch.name()
            );
        }
        let inv_freq = ops::rope_inv_freq(c.head_dim, c.rope_base);
        // Decoding one token reads every weight once: where the row kernels are clearly faster at that than
        // the panel kernels on a prepacked copy (measured, see `DecodeKernels`), single tokens use them and
        // the matrices stay in the file's layout, which the row kernels read. Same bits either way.
        let rows_for_decode = opts.prepack
            && match opts.decode {
                DecodeKernels::Measure => decode_reads_rows(&layers),
                DecodeKernels::Panels => false,
                DecodeKernels::Rows => true,
            };
        store.set_rows_for_single_tokens(rows_for_decode);
        let prepacker = match opts.prepack && !rows_for_decode {
            true => {
                // in the order the forward pass reads them, so the first passes find more copies ready
                let layers = layers.iter().flat_map(|l| l.matrices());
                let matrices = layers.chain([&output]).cloned().collect();
                Some(Prepacker::start(matrices, rayon::current_num_threads().max(1))?)
            }
            false => None,
        };
        Ok(Model {
            config,
            file,
            token_embd,
            layers,
            output_norm,
            output,
            inv_freq,
            prepacker,
            rows_for_decode,
        })
    }

    /// Whether single tokens are computed with the row kernels on the file's layout, which was measured to be
    /// clearly faster on this CPU than the panel kernels on a prepacked copy (nothing is then prepacked).
    pub fn decodes_with_rows(&self) -> bool {
        self.rows_for_decode
    }

    /// Whether the background prepacking is still running (requests are then served, a little slower).
    pub fn is_prepacking(&self) -> bool {
        self.prepacker.as_ref().is_some_and(Prepacker::is_running)
    }

    /// Block until the background prepacking has finished (at once if there is none). Benchmarks call this
    /// so they measure the steady state; serving does not need to.
    pub fn wait_prepacked(&self) {
        if let Some(p) = &self.prepacker {
            p.wait();
        }
    }

    /// Open a GGUF file and load the model in it.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Model> {
        let file = GgufFile::open(path)?;
        Model::load(file)
    }

    /// Run `tokens` (at positions `kv.len()..`) through the model, appending their keys and values to
    /// `kv`. Returns the logits asked for: `vocab_size` floats per position, in order. `pos` must equal
    /// `kv.len()`; it is passed to make call sites read like the math.
    pub fn forward<'s>(
        &self,
        state: &'s mut RunState,
        kv: &mut KvCache,
        tokens: &[u32],
        pos: usize,
        want: Logits,
    ) -> Result<&'s [f32]> {
        if pos != kv.len() {
            bail!("position {pos} does not follow the {} tokens in the KV cache", kv.len());
        }
        self.forward_multi(state, &mut [SeqBatch { kv, tokens, want }])
    }

    /// Token ids this model has (an embedding row each), or an error naming the first that is not.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(bad) => bail!("token id {bad} is outside the vocabulary (size {vocab})"),
            None => Ok(()),
        }
    }

    /// What [`Model::forward_multi`] checks of each sequence before computing anything: some tokens, valid
    /// ids, room in its cache. A scheduler checks each sequence with this first, so one bad sequence fails
    /// alone instead of failing its whole batch.
    pub fn check_seq(&self, kv: &KvCache, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            bail!("forward called with no tokens");
        }
        if kv.len() + tokens.len() > kv.capacity() {
            bail!(
                "context full: {} tokens would exceed the context size of {} tokens",
                kv.len() + tokens.len(),
                kv.capacity()
            );
        }
        self.check_tokens(tokens)
    }

    /// Run several sequences, each with its own KV cache, through the model in one pass: the matmuls see
    /// all their tokens as one batch (so the weights are read once for all of them, which is what makes
    /// continuous batching pay on a memory-bound CPU); RoPE, the cache and attention stay per sequence.
    /// Returns the wanted logits of every sequence, concatenated in order.
    pub fn forward_multi<'s>(&self, state: &'s mut RunState, seqs: &mut [SeqBatch]) -> Result<&'s [f32]> {
        let c = &self.config;
        for sq in seqs.iter() {
            self.check_seq(sq.kv, sq.tokens)?;
        }
        let n: usize = seqs.iter().map(|sq| sq.tokens.len()).sum();
        state.ensure(c, n);
        let s = state;
        let dim = c.dim;
        // Where each sequence's tokens sit in the batch, and their positions.
        s.spans.clear();
        s.positions.clear();
        let mut row = 0;
        for sq in seqs.iter() {
            s.spans.push(row..row + sq.tokens.len());
            s.positions.extend(sq.kv.len()..sq.kv.len() + sq.tokens.len());
            row += sq.tokens.len();
        }
        ops::rope_table(&s.positions, &self.inv_freq, &mut s.rope);

        // token embeddings
        let ids = seqs.iter().flat_map(|sq| sq.tokens.iter().map(|&t| t as usize));
        self.token_embd.dequantize_rows(ids, &mut s.x[..n * dim], &mut s.embd_row);

        for (l, layer) in self.layers.iter().enumerate() {
            self.attention_block(l, layer, s, seqs, n);
            self.ffn_block(layer, s, n);
        }
        for sq in seqs.iter_mut() {
            sq.kv.advance(sq.tokens.len());
        }

        // final norm and classifier, only for the tokens whose logits are wanted
        let mut m = 0;
        for (sq, span) in seqs.iter().zip(&s.spans) {
            for b in span.end - sq.want.rows(span.len())..span.end {
                let (r, o) = (b * dim..(b + 1) * dim, m * dim..(m + 1) * dim);
                ops::rmsnorm(&mut s.xb[o], &s.x[r], &self.output_norm, c.rms_eps);
                m += 1;
            }
        }
        if m == 0 {
            return Ok(&[]);
        }
        s.logits.resize(m * c.vocab_size, 0.0);
        ops::matmul(&self.output, &s.xb[..m * dim], &mut s.logits, &mut s.mm);
        Ok(&s.logits)
    }

    /// One layer's attention over the batch of `n` tokens: norm, Q/K/V, (Qwen2) bias, (Qwen3) Q/K norm, RoPE,
    /// keys and values into each sequence's cache, attention, output projection, residual.
    fn attention_block(&self, l: usize, layer: &Layer, s: &mut RunState, seqs: &mut [SeqBatch], n: usize) {
        let c = &self.config;
        let (dim, q_dim, kv_dim) = (n * c.dim, n * c.q_dim(), n * c.kv_dim());
        ops::rmsnorm_rows(&mut s.xb[..dim], &s.x[..dim], &layer.attn_norm, c.rms_eps);
        let qkv = [
            (&layer.wq, &mut s.q[..q_dim]),
            (&layer.wk, &mut s.k[..kv_dim]),
            (&layer.wv, &mut s.v[..kv_dim]),
        ];
        ops::matmuls(&mut qkv.map(|(w, out)| Product { w, out }), &s.xb[..dim], &mut s.mm);
        if let Some([bq, bk, bv]) = &layer.qkv_bias {
            ops::add_bias(&mut s.q[..q_dim], bq);
            ops::add_bias(&mut s.k[..kv_dim], bk);
            ops::add_bias(&mut s.v[..kv_dim], bv);
        }
        if let Some([q_norm, k_norm]) = &layer.qk_norm {
            ops::rmsnorm_per_head(&mut s.q[..q_dim], q_norm, c.rms_eps);
            ops::rmsnorm_per_head(&mut s.k[..kv_dim], k_norm, c.rms_eps);
        }
        // RoPE at each token's own position
        ops::rope_rows(&mut s.q[..q_dim], c.q_dim(), &s.rope);
        ops::rope_rows(&mut s.k[..kv_dim], c.kv_dim(), &s.rope);
        // keys and values into each sequence's cache, then causal grouped-query attention over it
        for (sq, span) in seqs.iter_mut().zip(&s.spans) {
            let rows = span.start * c.kv_dim()..span.end * c.kv_dim();
            let pos = sq.kv.len();
            sq.kv.write(l, pos, &s.k[rows.clone()], &s.v[rows]);
        }
        let rows: Vec<SeqRows> = seqs
            .iter()
            .zip(&s.spans)
            .map(|(sq, r)| SeqRows { kv: sq.kv, pos: sq.kv.len(), rows: r.clone() })
            .collect();
        attention(c, l, &rows, &s.q[..q_dim], &mut s.att[..q_dim], &mut s.att_scratch);
        // output projection and residual
        ops::matmul(&layer.wo, &s.att[..q_dim], &mut s.xb[..dim], &mut s.mm);
        ops::add_in_place(&mut s.x[..dim], &s.xb[..dim]);
    }

    /// One layer's MLP over the batch of `n` tokens: norm, gate and up, SwiGLU, down, residual.
    fn ffn_block(&self, layer: &Layer, s: &mut RunState, n: usize) {
        let c = &self.config;
        let (dim, f) = (n * c.dim, n * c.ffn_dim);
        ops::rmsnorm_rows(&mut s.xb[..dim], &s.x[..dim], &layer.ffn_norm, c.rms_eps);
        let gate_up = [(&layer.w_gate, &mut s.hb[..f]), (&layer.w_up, &mut s.hb2[..f])];
        ops::matmuls(&mut gate_up.map(|(w, out)| Product { w, out }), &s.xb[..dim], &mut s.mm);
        ops::swiglu(&mut s.hb[..f], &s.hb2[..f]);
        ops::matmul(&layer.w_down, &s.hb[..f], &mut s.xb[..dim], &mut s.mm);
        ops::add_in_place(&mut s.x[..dim], &s.xb[..dim]);
    }

    /// How many matrices are held prepacked so far (0 where the CPU or the formats have no prepacked layout).
    pub fn n_prepacked(&self) -> usize {
        let layers = self.layers.iter().flat_map(|l| l.matrices());
        layers.chain([&self.output]).filter(|m| m.is_prepacked()).count()
    }

    /// Parameter count of every tensor in the file, as "1.54B" / "4.02B" / "2.1M".
    pub fn n_params(&self) -> String {
        let n: usize = self.file.tensors().iter().map(|t| t.n_elements()).sum();
        match n {
            n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
            n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
            n => format!("{n}"),
        }
    }

    /// The tensor type holding most weight bytes ("Q4_0", "Q4_K", ...): what a file's quantization is called.
    pub fn main_type(&self) -> String {
        let mut bytes: std::collections::BTreeMap<&str, usize> = Default::default();
        for t in self.file.tensors() {
            *bytes.entry(t.dtype.name()).or_default() += t.n_bytes();
        }
        bytes.into_iter().max_by_key(|&(_, b)| b).map(|(n, _)| n.to_string()).unwrap_or_default()
    }

    /// Bytes of scratch a `RunState` for batches of `n_batch` tokens takes (logits for one position), with the
    /// attention scratch of every worker thread at a context of `n_ctx` positions.
    pub fn scratch_bytes(&self, n_batch: usize, n_ctx: usize, logit_rows: usize) -> usize {
        scratch_bytes(&self.config, n_batch, n_ctx, logit_rows)
    }
}

/// [`Model::scratch_bytes`] from the hyperparameters alone (for planning before the weights are mapped).
pub fn scratch_bytes(c: &Config, n_batch: usize, n_ctx: usize, logit_rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    // logits: the pass's rows, and the caller's copy it samples from (speculation edits them in place)
    RunState::floats_for(c, n_batch) * 4
        + 2 * logit_rows.max(1) * c.vocab_size * 4
        + threads * crate::attention::task_scratch_bytes(c, n_ctx)
}

/// Every scratch buffer of the forward pass, sized for a batch of up to `capacity` tokens and reused.
#[derive(Default)]
pub struct RunState {
    capacity: usize,
    /// Residual stream, `[n][dim]`.
    x: Vec<f32>,
    /// Normed residual / projection output, `[n][dim]`.
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention output, `[n][q_dim]`, and the attention's scratch (task outputs before they are scattered there).
    att: Vec<f32>,
    att_scratch: AttnScratch,
    /// MLP gate and up, `[n][ffn_dim]`.
    hb: Vec<f32>,
    hb2: Vec<f32>,
    logits: Vec<f32>,
    mm: MatmulScratch,
    /// Batch rows of each sequence in a `forward_multi` call.
    spans: Vec<std::ops::Range<usize>>,
    /// Position of every token in the batch within its own sequence, and the RoPE turns there
    /// ([`ops::rope_table`]).
    positions: Vec<usize>,
    rope: Vec<f32>,
    /// One embedding row read back from a prepacked table.
    embd_row: Vec<u8>,
}

impl RunState {
    pub fn new() -> RunState {
        RunState::default()
    }

    fn floats_for(c: &Config, n: usize) -> usize {
        n * (2 * c.dim + 3 * c.q_dim() + 2 * c.kv_dim() + 2 * c.ffn_dim + c.head_dim)
    }

    /// Grow the buffers to hold a batch of `n` tokens (never shrinks).
    fn ensure(&mut self, c: &Config, n: usize) {
        if n <= self.capacity {
            return;
        }
        self.capacity = n;
        self.x.resize(n * c.dim, 0.0);
        self.xb.resize(n * c.dim, 0.0);
        self.q.resize(n * c.q_dim(), 0.0);
        self.k.resize(n * c.kv_dim(), 0.0);
        self.v.resize(n * c.kv_dim(), 0.0);
        self.att.resize(n * c.q_dim(), 0.0);
        self.hb.resize(n * c.ffn_dim, 0.0);
        self.hb2.resize(n * c.ffn_dim, 0.0);
        self.rope.resize(n * c.head_dim, 0.0);
    }
}

/// A 2-D weight `[cols, rows]` (GGUF order: ne0 = cols, the input dimension) with the expected shape.
fn matrix(file: &GgufFile, store: &Arc<WeightStore>, name: &str, cols: usize, rows: usize) -> Result<Matrix> {
    let t = file
        .tensor_info(name)
        .with_context(|| format!("{}: missing tensor '{name}'", file.path().display()))?;
    if t.shape != [cols, rows] {
        bail!(
            "{}: tensor '{name}' has shape {:?}, expected [{cols}, {rows}]",
            file.path().display(),
            t.shape
        );
    }
    if t.dtype == DType::Q8_K {
        bail!(
            "{}: tensor '{name}' is Q8_K, which is an activation format, not a weight format",
            file.path().display()
        );
    }
    Ok(Matrix::new(store.clone(), name.to_string(), t.dtype, rows, cols, t.range.clone()))
}

/// A 1-D weight of length `len`, dequantized to f32.
fn vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = file
        .tensor_info(name)
        .with_context(|| format!("{}: missing tensor '{name}'", file.path().display()))?;
    if t.shape != [len] {
        bail!("{}: tensor '{name}' has shape {:?}, expected [{len}]", file.path().display(), t.shape);
    }
    let mut out = vec![0.0; len];
    dequantize_row(t.dtype, file.bytes(t.range.clone()), &mut out);
    Ok(out)
}
