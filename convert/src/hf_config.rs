//! `config.json` of a Hugging Face Qwen3 / Qwen2 checkpoint: the hyperparameters the converter checks
//! tensor shapes against and writes as llama.cpp's `qwen3.*` / `qwen2.*` keys.

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

/// Architectures the converter handles, named as in GGUF's `general.architecture`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfArch {
    /// Qwen3 dense: per-head Q/K RMSNorm, no attention bias.
    Qwen3,
    /// Qwen2 / Qwen2.5: Q/K/V bias, no Q/K norm.
    Qwen2,
}

impl HfArch {
    /// GGUF architecture name (also the metadata key prefix).
    pub fn name(self) -> &'static str {
        match self {
            HfArch::Qwen3 => "qwen3",
            HfArch::Qwen2 => "qwen2",
        }
    }
}

/// RoPE scaling as llama.cpp writes it (`{arch}.rope.scaling.*`); only YaRN and linear are carried over.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeScaling {
    /// `"yarn"` or `"linear"`.
    pub kind: String,
    pub factor: f64,
    pub original_context: Option<u64>,
}

/// The hyperparameters of a checkpoint, validated.
#[derive(Clone, Debug)]
pub struct HfConfig {
    pub arch: HfArch,
    pub n_layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Whether `config.json` states `head_dim` (llama.cpp then writes `attention.key_length/value_length`).
    pub head_dim_explicit: bool,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    /// The output head is the token embedding (no `lm_head.weight` tensor of its own).
    pub tie_word_embeddings: bool,
    pub rope_scaling: Option<RopeScaling>,
    /// The whole file, for the special-token ids the tokenizer metadata falls back to.
    pub raw: Value,
}

impl HfConfig {
    /// Reads `DIR/config.json`. Fails on a missing file, a `model_type` other than qwen3/qwen2, or missing or
    /// inconsistent sizes.
    pub fn load(dir: &Path) -> Result<HfConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("cannot read {} (is {} a Hugging Face model directory?)", path.display(), dir.display())
        })?;
        let raw: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        Self::from_json(raw).with_context(|| format!("{}", path.display()))
    }

    /// Validates a parsed `config.json`.
    pub fn from_json(raw: Value) -> Result<HfConfig> {
        let model_type = raw.get("model_type").and_then(Value::as_str).unwrap_or("<missing>");
        let arch = match model_type {
            "qwen3" => HfArch::Qwen3,
            "qwen2" => HfArch::Qwen2,
            other => bail!(
                "unsupported model_type '{other}': quire convert handles qwen3 (Qwen3 dense) and qwen2 \
                 (Qwen2, Qwen2.5) checkpoints"
            ),
        };
        let int = |key: &str| -> Result<usize> {
            raw.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| anyhow!("missing or non-integer \"{key}\""))
        };
        let float = |key: &str, default: f64| -> Result<f64> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| anyhow!("\"{key}\" is not a number")),
            }
        };
        let n_layers = int("num_hidden_layers")?;
        let hidden = int("hidden_size")?;
        let intermediate = int("intermediate_size")?;
        let n_heads = int("num_attention_heads")?;
        let n_kv_heads = match raw.get("num_key_value_heads") {
            None | Some(Value::Null) => n_heads,
            Some(_) => int("num_key_value_heads")?,
        };
        let vocab_size = int("vocab_size")?;
        ensure!(
            n_layers > 0 && hidden > 0 && intermediate > 0 && vocab_size > 0,
            "sizes must be non-zero (layers {n_layers}, hidden {hidden}, intermediate {intermediate}, vocab {vocab_size})"
        );
        ensure!(
            n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0,
            "invalid head counts: {n_heads} query heads, {n_kv_heads} KV heads"
        );
        let (head_dim, head_dim_explicit) = match raw.get("head_dim") {
            None | Some(Value::Null) => {
                ensure!(hidden % n_heads == 0, "hidden_size {hidden} is not divisible by {n_heads} heads");
                (hidden / n_heads, false)
            }
            Some(_) => (int("head_dim")?, true),
        };
        ensure!(head_dim > 0 && head_dim % 2 == 0, "head_dim {head_dim} must be even and non-zero");
        if arch == HfArch::Qwen3 && raw.get("attention_bias").and_then(Value::as_bool) == Some(true) {
            bail!("attention_bias = true is not a Qwen3 layout llama.cpp or Quire can run");
        }
        if raw.get("num_experts").and_then(Value::as_u64).is_some_and(|n| n > 0) {
            bail!("mixture-of-experts checkpoints are not supported");
        }
        let rope_scaling = match raw.get("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("");
                match kind {
                    "yarn" | "linear" => Some(RopeScaling {
                        kind: kind.to_owned(),
                        factor: v
                            .get("factor")
                            .and_then(Value::as_f64)
                            .ok_or_else(|| anyhow!("rope_scaling has no numeric \"factor\""))?,
                        original_context: v.get("original_max_position_embeddings").and_then(Value::as_u64),
                    }),
                    "default" | "" => None,
                    other => bail!("unsupported rope_scaling type '{other}'"),
                }
            }
        };
        Ok(HfConfig {
            arch,
            n_layers,
            hidden,
            intermediate,
            n_heads,
            n_kv_heads,
            head_dim,
            head_dim_explicit,
            vocab_size,
            max_position_embeddings: int("max_position_embeddings")?,
            rope_theta: float("rope_theta", 10_000.0)?,
            rms_norm_eps: float("rms_norm_eps", 1e-6)?,
            tie_word_embeddings: raw.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            rope_scaling,
            raw,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "qwen3", "num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 768,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 128, "vocab_size": 576,
            "max_position_embeddings": 4096, "rope_theta": 1e6, "rms_norm_eps": 1e-6, "tie_word_embeddings": true
        })
    }

    #[test]
    fn reads_qwen3_and_rejects_unknown_model_type() {
        let c = HfConfig::from_json(base()).unwrap();
        assert_eq!((c.arch, c.q_dim(), c.kv_dim(), c.head_dim_explicit), (HfArch::Qwen3, 512, 256, true));
        let mut v = base();
        v["model_type"] = "llama".into();
        let err = HfConfig::from_json(v).unwrap_err().to_string();
        assert!(err.contains("unsupported model_type 'llama'"), "{err}");
    }

    #[test]
    fn qwen2_head_dim_comes_from_hidden() {
        let mut v = base();
        v["model_type"] = "qwen2".into();
        v.as_object_mut().unwrap().remove("head_dim");
        let c = HfConfig::from_json(v).unwrap();
        assert_eq!((c.arch, c.head_dim, c.head_dim_explicit), (HfArch::Qwen2, 64, false));
    }
}
