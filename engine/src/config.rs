//! Model hyperparameters, read from GGUF metadata (`qwen3.*` or `qwen2.*`).

use anyhow::{bail, ensure, Context, Result};

use crate::gguf::GgufFile;

/// The two architectures Quire runs. Qwen3 = Qwen2 minus the QKV bias plus per-head RMSNorm on Q and K.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Qwen2,
    Qwen3,
}

impl Arch {
    /// The metadata prefix and `general.architecture` value.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

/// Hyperparameters of a Qwen2/Qwen3 decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: Arch,
    pub n_layers: usize,
    /// Width of the residual stream (`embedding_length`).
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Per-head width. Qwen3-4B: 128, so Q is 32 × 128 = 4096 wide while `dim` is 2560.
    pub head_dim: usize,
    /// Hidden width of the SwiGLU MLP (`feed_forward_length`).
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// Context length the model was trained for.
    pub ctx_train: usize,
}

impl Config {
    /// Read the hyperparameters; errors name the missing or inconsistent key.
    pub fn from_gguf(file: &GgufFile) -> Result<Config> {
        let arch = match file.architecture() {
            Some("qwen3") => Arch::Qwen3,
            Some("qwen2") => Arch::Qwen2,
            Some(other) => bail!(
                "{}: unsupported architecture '{other}' (Quire runs qwen3 and qwen2)",
                file.path().display()
            ),
            None => bail!("{}: no general.architecture key", file.path().display()),
        };
        let p = arch.name();
        let get = |key: &str| -> Result<usize> {
            let full = format!("{p}.{key}");
            let v = file.get_u64(&full).with_context(|| {
                format!("{}: missing or non-integer metadata key {full}", file.path().display())
            })?;
            usize::try_from(v).context("value too large")
        };
        let n_layers = get("block_count")?;
        let dim = get("embedding_length")?;
        let n_heads = get("attention.head_count")?;
        let n_kv_heads = get("attention.head_count_kv")?;
        let ffn_dim = get("feed_forward_length")?;
        let ctx_train = get("context_length")?;
        // Bounds far above any dense model's, so that no product of them can overflow and no hostile file
        // sizes a buffer: the tensors' shapes are then checked against these numbers.
        for (key, v, most) in [
            ("block_count", n_layers, 1 << 12),
            ("embedding_length", dim, 1 << 20),
            ("attention.head_count", n_heads, 1 << 12),
            ("attention.head_count_kv", n_kv_heads, 1 << 12),
            ("feed_forward_length", ffn_dim, 1 << 22),
        ] {
            ensure!(v <= most, "{}: {p}.{key} = {v} is out of range (at most {most})", file.path().display());
        }
        ensure!(
            (1..=1 << 31).contains(&ctx_train),
            "{}: {p}.context_length = {ctx_train} is out of range (1 to 2^31)",
            file.path().display()
        );
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            bail!("invalid head counts: {n_heads} query heads, {n_kv_heads} KV heads");
        }
        // Qwen2 files have no key_length: head_dim = dim / heads.
        let head_dim = match file.get_u64(&format!("{p}.attention.key_length")) {
            Some(k) => k as usize,
            None => dim / n_heads,
        };
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > 1 << 12 {
            bail!("invalid head_dim {head_dim} (must be even, non-zero and at most 4096)");
        }
        let rope_base = file.get_f64(&format!("{p}.rope.freq_base")).unwrap_or(10_000.0) as f32;
        let rms_eps = file.get_f64(&format!("{p}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-6) as f32;
        let vocab_size = match file.tensor_info("token_embd.weight") {
            Some(t) if t.shape.len() == 2 => t.shape[1],
            _ => bail!("{}: missing tensor token_embd.weight", file.path().display()),
        };
        if n_layers == 0 || dim == 0 || ffn_dim == 0 {
            bail!("invalid model size: {n_layers} layers, dim {dim}, ffn {ffn_dim}");
        }
        Ok(Config {
            arch,
            n_layers,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab_size,
            rope_base,
            rms_eps,
            ctx_train,
        })
    }

    /// The context a session or server slot gets unless told otherwise: 4096 tokens, or the trained context
    /// if that is smaller (the trained one is often 32k–256k: far more KV cache than a small box has).
    pub fn default_ctx(&self) -> usize {
        self.ctx_train.clamp(1, 4096)
    }

    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
