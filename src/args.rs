//! Flags shared by the subcommands, each defined once, and the process setup they imply.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use quire_engine::grammar::GrammarSpec;
use quire_engine::kv_cache::KvType;
use quire_engine::sampler::SamplerOptions;
use quire_engine::speculate::{SpecConfig, SpecMode, MAX_DRAFT};

/// Where the compute threads run.
#[derive(Args, Clone, Debug, Default)]
pub struct ThreadArgs {
    /// Worker threads (default: one per physical core, or per listed CPU).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Pin the workers to these CPUs, e.g. `0,2-3` (default: one per physical core).
    #[arg(long = "cpu-list")]
    pub cpu_list: Option<String>,
}

impl ThreadArgs {
    /// Start the pinned worker pool, before any parallel work; returns its size.
    pub fn init(&self) -> Result<usize> {
        let cpu_list = self.cpu_list.as_deref().map(quire_engine::threads::parse_cpu_list).transpose()?;
        quire_engine::threads::init(self.threads, cpu_list.as_deref())
    }
}

/// A model file and how to run it.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Path to a GGUF model file.
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    #[command(flatten)]
    pub threads: ThreadArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// The KV cache: how many tokens and in what type.
#[derive(Args, Clone, Debug)]
pub struct CacheArgs {
    /// Context size in tokens (default: 4096, or the model's trained context if smaller; `bench`: prompt +
    /// generated tokens; `perplexity`: 512).
    #[arg(short = 'c', long = "ctx", value_parser = positive)]
    pub ctx: Option<usize>,
    /// KV cache element type: f16 (default), q8_0 (half the memory of f16) or f32 (exact).
    #[arg(long = "kv-type", value_enum, ignore_case = true)]
    pub kv_type: Option<KvType>,
    /// Plan for at most this much memory (e.g. `6G`, `512M`): the largest context that fits (up to the
    /// trained one) unless --ctx is given, a q8_0 KV cache or fewer slots when needed, or a refusal with the
    /// numbers. Without it the plan fits what the machine has available.
    #[arg(long = "max-ram", value_name = "SIZE", value_parser = ram_size)]
    pub max_ram: Option<usize>,
}

impl CacheArgs {
    /// The KV cache type asked for, or the default (f16).
    pub fn kv_type(&self) -> KvType {
        self.kv_type.unwrap_or_default()
    }

    /// What the RAM planner must keep: the values set on the command line (`slots`: `--parallel` if given).
    pub fn wants(&self, slots: Option<usize>) -> quire_engine::memory::Wants {
        quire_engine::memory::Wants { ctx: self.ctx, kv_type: self.kv_type, slots }
    }
}

fn ram_size(s: &str) -> Result<usize, String> {
    quire_engine::memory::parse_size(s).map_err(|e| format!("{e:#}"))
}

/// Speculative decoding: how fast tokens come, never which (the output is the same with any of these).
#[derive(Args, Clone, Debug)]
pub struct SpecArgs {
    /// Draft tokens by prompt lookup, verified in one pass (`lookup`, the default), or not (`off`).
    #[arg(long = "spec", value_enum, ignore_case = true, default_value_t = SpecMode::Lookup)]
    pub mode: SpecMode,
    /// Most tokens drafted per step and request (0 to 16).
    #[arg(long = "spec-max", default_value_t = SpecConfig::default().max_draft, value_parser = draft_len)]
    pub max_draft: usize,
    /// A small model with the same vocabulary that drafts tokens too (e.g. Qwen2.5-Coder-0.5B for the 1.5B,
    /// Qwen3-0.6B for Qwen3-4B); refused at load if its vocabulary differs; not loaded with `--spec off`.
    #[arg(long = "draft", value_name = "MODEL.gguf")]
    pub draft: Option<PathBuf>,
}

impl SpecArgs {
    pub fn config(&self) -> SpecConfig {
        SpecConfig { mode: self.mode, max_draft: self.max_draft, ..SpecConfig::default() }
    }
}

fn draft_len(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n <= MAX_DRAFT => Ok(n),
        Ok(_) => Err(format!("must be at most {MAX_DRAFT}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Sampling and stopping options shared by `run` and `chat`.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Maximum number of tokens to generate.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 512)]
    pub max_tokens: usize,
    /// Temperature; 0 = greedy (always the most likely token).
    #[arg(long)]
    pub temp: Option<f32>,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Repetition penalty over the last 64 tokens (1 = off).
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    /// OpenAI-style presence penalty.
    #[arg(long)]
    pub presence_penalty: Option<f32>,
    /// OpenAI-style frequency penalty.
    #[arg(long)]
    pub frequency_penalty: Option<f32>,
    /// Random seed (same seed, same output).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text appears (repeatable); the stop text is not printed.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// For hybrid-thinking Qwen3 models: let the model think first (default) or not (`--think false`).
    #[arg(long)]
    pub think: Option<bool>,
    /// Constrain the reply to JSON valid against the JSON Schema in FILE.
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub json_schema: Option<PathBuf>,
    /// Constrain the reply to any JSON object.
    #[arg(long, group = "constraint")]
    pub json: bool,
    /// Constrain the reply to the Lark grammar in FILE (llguidance's syntax).
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub grammar: Option<PathBuf>,
    /// Constrain the reply to match a regular expression.
    #[arg(long, value_name = "REGEX", group = "constraint")]
    pub regex: Option<String>,
}

impl SamplingArgs {
    /// What the reply must match (`--json-schema`, `--json`, `--grammar`, `--regex`), if anything.
    pub fn grammar(&self) -> Result<Option<GrammarSpec>> {
        let read =
            |f: &PathBuf| std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()));
        Ok(if let Some(f) = &self.json_schema {
            let schema = serde_json::from_str(&read(f)?)
                .with_context(|| format!("{} is not valid JSON", f.display()))?;
            Some(GrammarSpec::JsonSchema(schema))
        } else if self.json {
            Some(GrammarSpec::JsonObject)
        } else if let Some(f) = &self.grammar {
            Some(GrammarSpec::Lark(read(f)?))
        } else {
            self.regex.clone().map(GrammarSpec::Regex)
        })
    }

    /// The sampler settings these flags override (the rest keep their defaults).
    pub fn sampler(&self) -> SamplerOptions {
        SamplerOptions {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        }
    }
}

/// A count that must be at least 1.
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        model: ModelArgs,
    }

    #[test]
    fn kv_type_names_parse() {
        let parse = |v: &str| {
            Cli::try_parse_from(["quire", "-m", "m.gguf", "--kv-type", v]).map(|c| c.model.cache.kv_type())
        };
        for t in [KvType::F16, KvType::F32, KvType::Q8_0] {
            assert_eq!(parse(t.name()).unwrap(), t);
        }
        assert_eq!(parse("F16").unwrap(), KvType::F16);
        assert_eq!(parse("q8").unwrap(), KvType::Q8_0);
        assert!(parse("q4").is_err());
        let d = Cli::try_parse_from(["quire", "-m", "m.gguf"]).unwrap().model;
        assert_eq!((d.cache.kv_type(), d.cache.ctx, d.threads.threads), (KvType::F16, None, None));
        assert_eq!(d.cache.kv_type, None, "not set: the planner may choose");
        let m = Cli::try_parse_from(["quire", "-m", "m.gguf", "--max-ram", "6.5G"]).unwrap().model;
        assert_eq!(m.cache.max_ram, Some(13 << 29));
        assert!(Cli::try_parse_from(["quire", "-m", "m.gguf", "--max-ram", "lots"]).is_err());
        assert!(Cli::try_parse_from(["quire", "-m", "m.gguf", "--ctx", "0"]).is_err());
    }
}
