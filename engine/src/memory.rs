//! What a model will need in memory, worked out before anything big is allocated, so a small box gets a
//! clear refusal instead of the OOM killer.

use anyhow::{bail, Result};

use crate::config::Config;
use crate::draft::DraftModel;
use crate::kv_cache::{KvCache, KvType};
use crate::model::Model;
use crate::speculate::{self, SpecConfig};

/// Memory a model needs at a given context size, in bytes.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// The mapped file: shared page cache, read on demand, never copied.
    pub weights_mapped: usize,
    /// The KV cache (allocated).
    pub kv_cache: usize,
    /// Forward-pass scratch for a prefill batch (allocated).
    pub scratch: usize,
}

impl MemoryPlan {
    /// For caches of `n_ctx` tokens in all, prefill batches of `n_batch` and decode passes returning up to
    /// `logit_rows` rows of logits ([`crate::speculate::logit_rows`]).
    pub fn new(
        model: &Model,
        n_ctx: usize,
        n_batch: usize,
        logit_rows: usize,
        kv_type: KvType,
    ) -> MemoryPlan {
        MemoryPlan::for_config(&model.config, model.file.file_len(), n_ctx, n_batch, logit_rows, kv_type)
    }

    /// [`MemoryPlan::new`] from the hyperparameters and the file's size (nothing loaded yet).
    pub fn for_config(
        c: &Config,
        file_len: usize,
        n_ctx: usize,
        n_batch: usize,
        logit_rows: usize,
        kv_type: KvType,
    ) -> MemoryPlan {
        MemoryPlan {
            weights_mapped: file_len,
            kv_cache: KvCache::bytes_needed_for(c, n_ctx, kv_type),
            scratch: crate::model::scratch_bytes(c, n_batch, n_ctx, logit_rows),
        }
    }

    /// Plus a draft model beside it ([`crate::draft`]): its mapped file, its caches of `n_ctx` tokens in
    /// all, and its scratch for drafting rounds of up to `n_slots` requests.
    pub fn with_draft(
        self,
        draft: Option<&DraftModel>,
        n_ctx: usize,
        n_slots: usize,
        kv_type: KvType,
    ) -> MemoryPlan {
        let sizes = draft.map(|d| (&d.model.config, d.file_len()));
        self.with_draft_config(sizes, n_ctx, n_slots, kv_type)
    }

    /// [`MemoryPlan::with_draft`] from the draft's hyperparameters and file size.
    pub fn with_draft_config(
        mut self,
        draft: Option<(&Config, usize)>,
        n_ctx: usize,
        n_slots: usize,
        kv_type: KvType,
    ) -> MemoryPlan {
        if let Some((c, file_len)) = draft {
            self.weights_mapped += file_len;
            self.kv_cache += KvCache::bytes_needed_for(c, n_ctx, kv_type);
            let batch = (crate::draft::CATCH_UP_CHUNK + 1) * n_slots;
            self.scratch += crate::model::scratch_bytes(c, batch, n_ctx, n_slots);
        }
        self
    }

    /// Everything resident while generating at full speed.
    pub fn total(&self) -> usize {
        self.weights_mapped + self.kv_cache + self.scratch
    }

    /// Refuse, with numbers, when the machine cannot hold the weights plus what we allocate. The weights count
    /// too: pages of a mapped file can be evicted, but decoding reads all of them for every token, so a model
    /// that does not fit would thrash the disk.
    pub fn check_available(&self) -> Result<()> {
        let Some(available) = mem_available_bytes() else { return Ok(()) };
        if self.total() > available {
            bail!(
                "not enough memory: this model needs {} (weights {} mapped + KV cache {} + scratch {}) but only {} is available; \
                 lower --ctx to shrink the KV cache or use a smaller quantization",
                human_bytes(self.total()),
                human_bytes(self.weights_mapped),
                human_bytes(self.kv_cache),
                human_bytes(self.scratch),
                human_bytes(available)
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// The RAM planner

/// How much memory the planner may plan for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// `--max-ram`: at most this; a context not set grows to the largest that fits (up to the trained one).
    Limit(usize),
    /// What the machine has available now (`MemAvailable`): the defaults, made smaller only if they do not fit.
    Available(usize),
    /// Not known (no /proc/meminfo): the defaults, unchecked.
    Unknown,
}

impl Budget {
    /// `--max-ram` if given, else what the machine has available.
    pub fn from_flag(max_ram: Option<usize>) -> Budget {
        match (max_ram, mem_available_bytes()) {
            (Some(b), _) => Budget::Limit(b),
            (None, Some(b)) => Budget::Available(b),
            (None, None) => Budget::Unknown,
        }
    }

    fn describe(&self) -> String {
        match self {
            Budget::Limit(b) => format!("--max-ram {}", human_bytes(*b)),
            Budget::Available(b) => format!("{} available", human_bytes(*b)),
            Budget::Unknown => "memory not known".into(),
        }
    }
}

/// What the user set (`None`: the planner chooses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    /// Context per slot (`--ctx`).
    pub ctx: Option<usize>,
    pub kv_type: Option<KvType>,
    /// Slots (`--parallel`).
    pub slots: Option<usize>,
}

/// What a plan is made from: the model's hyperparameters and file size, a draft model's, and how it runs.
#[derive(Clone, Copy, Debug)]
pub struct Sizes<'a> {
    pub config: &'a Config,
    pub file_len: usize,
    pub draft: Option<(&'a Config, usize)>,
    pub n_batch: usize,
    pub spec: SpecConfig,
    /// Slots when the user set none (1 for `run`, `--parallel`'s default for `serve`).
    pub default_slots: usize,
}

/// The planner's choice and what it needs.
#[derive(Clone, Debug)]
pub struct Choice {
    /// Context per slot.
    pub ctx: usize,
    pub kv_type: KvType,
    pub slots: usize,
    pub plan: MemoryPlan,
    pub budget: Budget,
}

impl Choice {
    /// One line for the log: what was chosen and what it needs, against the budget.
    pub fn describe(&self) -> String {
        let p = &self.plan;
        format!(
            "memory plan ({}): context {} tokens x {} slot{}, KV cache {} {}, weights {} mapped, scratch {}; {} in all",
            self.budget.describe(),
            self.ctx,
            self.slots,
            if self.slots == 1 { "" } else { "s" },
            self.kv_type,
            human_bytes(p.kv_cache),
            human_bytes(p.weights_mapped),
            human_bytes(p.scratch),
            human_bytes(p.total())
        )
    }
}

/// The smallest context the planner shrinks to before it refuses.
pub const MIN_PLANNED_CTX: usize = 512;

/// Contexts the planner picks are multiples of this.
const CTX_STEP: usize = 256;

impl<'a> Sizes<'a> {
    /// A loaded engine's sizes (its draft model included), decoding in batches of [`DEFAULT_BATCH`].
    ///
    /// [`DEFAULT_BATCH`]: crate::generate::DEFAULT_BATCH
    pub fn of(engine: &'a crate::generate::Engine, default_slots: usize) -> Sizes<'a> {
        Sizes {
            config: &engine.model.config,
            file_len: engine.model.file.file_len(),
            draft: engine.active_draft().map(|d| (&d.model.config, d.file_len())),
            n_batch: crate::generate::DEFAULT_BATCH,
            spec: engine.spec,
            default_slots,
        }
    }

    /// Everything resident with `slots` slots of `ctx` tokens of `kv_type`.
    pub fn plan(&self, ctx: usize, kv_type: KvType, slots: usize) -> MemoryPlan {
        let rows = speculate::logit_rows(&self.spec, slots, self.n_batch);
        let total_ctx = ctx.saturating_mul(slots);
        MemoryPlan::for_config(self.config, self.file_len, total_ctx, self.n_batch, rows, kv_type)
            .with_draft_config(self.draft, total_ctx, slots, kv_type)
    }

    /// The largest context in `lo..=hi` (a multiple of [`CTX_STEP`], or `hi` itself) that fits `budget`.
    fn largest_ctx(
        &self,
        lo: usize,
        hi: usize,
        kv_type: KvType,
        slots: usize,
        budget: usize,
    ) -> Option<usize> {
        let fits = |ctx: usize| self.plan(ctx, kv_type, slots).total() <= budget;
        if lo > hi || !fits(lo) {
            return None;
        }
        if fits(hi) {
            return Some(hi);
        }
        // memory grows with the context: bisect on steps of CTX_STEP, `lo` fitting, `hi` not
        let (mut ok, mut bad) = (lo, hi);
        while bad - ok > CTX_STEP {
            let mid = (ok + (bad - ok) / 2) / CTX_STEP * CTX_STEP;
            let mid = mid.max(ok + 1);
            if fits(mid) {
                ok = mid;
            } else {
                bad = mid;
            }
        }
        Some(ok)
    }
}

/// Chooses the context, KV cache type and slot count for `budget`: what the user set is kept; the rest
/// starts from the defaults (context [`Config::default_ctx`], f16, `default_slots`). Under `--max-ram` an
/// unset context grows to the largest that fits, up to the trained one. When the defaults do not fit, the
/// KV cache turns to q8_0 first (half the memory, perplexity within 0.5 % on the goldens), then slots go,
/// then the context shrinks (to [`MIN_PLANNED_CTX`] at least, the longest any of those holds); when nothing
/// fits, the error gives the numbers.
pub fn choose(s: &Sizes, wants: Wants, budget: Budget) -> Result<Choice> {
    let default_ctx = wants.ctx.unwrap_or_else(|| s.config.default_ctx());
    let slots0 = wants.slots.unwrap_or(s.default_slots).max(1);
    let kv0 = wants.kv_type.unwrap_or_default();
    let cap = match budget {
        Budget::Limit(b) | Budget::Available(b) => b,
        Budget::Unknown => {
            let plan = s.plan(default_ctx, kv0, slots0);
            return Ok(Choice { ctx: default_ctx, kv_type: kv0, slots: slots0, plan, budget });
        }
    };
    let kv_types: Vec<KvType> = match wants.kv_type {
        Some(k) => vec![k],
        None if kv0 == KvType::Q8_0 => vec![KvType::Q8_0],
        None => vec![kv0, KvType::Q8_0],
    };
    let slot_counts: Vec<usize> = match wants.slots {
        Some(n) => vec![n],
        None => (1..=slots0).rev().collect(),
    };
    let candidates = || slot_counts.iter().flat_map(|&n| kv_types.iter().map(move |&k| (n, k)));
    let choice = |ctx: usize, kv_type: KvType, slots: usize| Choice {
        ctx,
        kv_type,
        slots,
        plan: s.plan(ctx, kv_type, slots),
        budget,
    };
    let grow = matches!(budget, Budget::Limit(_)) && wants.ctx.is_none();
    let top = if grow { s.config.ctx_train.max(default_ctx) } else { default_ctx };
    // the wanted context (or more, under --max-ram) with as many slots and as exact a cache as fit
    for (n, k) in candidates() {
        if let Some(ctx) = s.largest_ctx(default_ctx, top, k, n, cap) {
            return Ok(choice(ctx, k, n));
        }
    }
    // a context not set may shrink: to the longest any of them holds (long prompts are the work; ties go
    // to more slots, then to the more exact cache)
    if wants.ctx.is_none() {
        let lo = MIN_PLANNED_CTX.min(default_ctx);
        let best = candidates()
            .enumerate()
            .filter_map(|(i, (n, k))| {
                Some((s.largest_ctx(lo, default_ctx, k, n, cap)?, std::cmp::Reverse(i), n, k))
            })
            .max_by_key(|&(ctx, order, _, _)| (ctx, order));
        if let Some((ctx, _, n, k)) = best {
            return Ok(choice(ctx, k, n));
        }
    }
    let (n, k) = candidates().last().expect("a slot count and a KV type");
    let ctx = if wants.ctx.is_some() { default_ctx } else { MIN_PLANNED_CTX.min(default_ctx) };
    let least = s.plan(ctx, k, n);
    bail!(
        "not enough memory ({}): even {ctx} tokens x {n} slot{} with a {k} KV cache needs {} (weights {} mapped + \
         KV cache {} + scratch {}); {}",
        budget.describe(),
        if n == 1 { "" } else { "s" },
        human_bytes(least.total()),
        human_bytes(least.weights_mapped),
        human_bytes(least.kv_cache),
        human_bytes(least.scratch),
        if least.weights_mapped > cap {
            "the weights alone do not fit: use a smaller quantization or model".to_string()
        } else {
            // only the settings the planner had to keep can still be changed
            let mut hints = Vec::new();
            if wants.ctx.is_some() {
                hints.push("lower --ctx");
            }
            if wants.slots.is_some_and(|n| n > 1) {
                hints.push("lower --parallel");
            }
            if wants.kv_type.is_some_and(|k| k != KvType::Q8_0) {
                hints.push("use --kv-type q8_0");
            }
            hints.push("give it more memory");
            hints.join(", ")
        }
    )
}

/// Parses a size as `--max-ram` takes it: `8G`, `8GiB`, `512M`, `6.5g`, `1073741824` (bytes); binary units.
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| anyhow::anyhow!("'{s}' is not a size (e.g. 8G, 512M)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => bail!("'{s}': unknown unit '{other}' (use K, M, G or T)"),
    };
    let bytes = n * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < usize::MAX as f64) {
        bail!("'{s}' is not a usable size");
    }
    Ok(bytes as usize)
}

/// `MemAvailable` from /proc/meminfo (None where there is no such file).
pub fn mem_available_bytes() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Peak resident set size of this process (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// "1.23 GiB", "45.6 MiB", "789 KiB".
pub fn human_bytes(n: usize) -> String {
    let n = n as f64;
    if n >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", n / (1u64 << 30) as f64)
    } else if n >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", n / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", n / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;

    /// Qwen3-4B's shape; its Q4_0 file is about 2.3 GB.
    fn qwen3_4b() -> Config {
        Config {
            arch: Arch::Qwen3,
            n_layers: 36,
            dim: 2560,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            ffn_dim: 9728,
            vocab_size: 151_936,
            rope_base: 1e6,
            rms_eps: 1e-6,
            ctx_train: 262_144,
        }
    }

    const GIB: usize = 1 << 30;

    fn sizes(c: &Config, slots: usize) -> Sizes<'_> {
        Sizes {
            config: c,
            file_len: 2_369_546_528,
            draft: None,
            n_batch: 512,
            spec: SpecConfig::default(),
            default_slots: slots,
        }
    }

    #[test]
    fn plenty_of_memory_keeps_the_defaults() {
        let c = qwen3_4b();
        let ch = choose(&sizes(&c, 2), Wants::default(), Budget::Available(64 * GIB)).unwrap();
        assert_eq!((ch.ctx, ch.kv_type, ch.slots), (4096, KvType::F16, 2));
        assert!(ch.describe().contains("4096 tokens x 2 slots"), "{}", ch.describe());
        let set = Wants { ctx: Some(1000), kv_type: Some(KvType::F32), slots: Some(3) };
        let ch = choose(&sizes(&c, 2), set, Budget::Available(64 * GIB)).unwrap();
        assert_eq!((ch.ctx, ch.kv_type, ch.slots), (1000, KvType::F32, 3));
        let ch = choose(&sizes(&c, 2), Wants::default(), Budget::Unknown).unwrap();
        assert_eq!((ch.ctx, ch.kv_type, ch.slots), (4096, KvType::F16, 2));
    }

    #[test]
    fn max_ram_grows_the_context_to_the_largest_that_fits() {
        let c = qwen3_4b();
        let s = sizes(&c, 2);
        for budget in [6 * GIB, 8 * GIB, 20 * GIB] {
            let ch = choose(&s, Wants::default(), Budget::Limit(budget)).unwrap();
            assert_eq!((ch.kv_type, ch.slots), (KvType::F16, 2), "{}", ch.describe());
            assert!(ch.ctx > 4096 && ch.plan.total() <= budget, "{}", ch.describe());
            assert!(s.plan(ch.ctx + CTX_STEP, ch.kv_type, 2).total() > budget, "{}: not the largest", ch.ctx);
        }
        // never past the trained context
        let ch = choose(&s, Wants::default(), Budget::Limit(1 << 50)).unwrap();
        assert_eq!(ch.ctx, c.ctx_train);
        // a context that was set is kept
        let ch = choose(&s, Wants { ctx: Some(2048), ..Wants::default() }, Budget::Limit(20 * GIB)).unwrap();
        assert_eq!(ch.ctx, 2048);
    }

    #[test]
    fn short_memory_takes_q8_0_then_fewer_slots_then_less_context() {
        let c = qwen3_4b();
        let s = sizes(&c, 2);
        let need = |ctx, kv, n| s.plan(ctx, kv, n).total();
        // f16 at 2 x 4096 does not fit, q8_0 does
        let b = (need(4096, KvType::F16, 2) + need(4096, KvType::Q8_0, 2)) / 2;
        let ch = choose(&s, Wants::default(), Budget::Available(b)).unwrap();
        assert_eq!((ch.ctx, ch.kv_type, ch.slots), (4096, KvType::Q8_0, 2));
        // the KV type was set: one slot instead
        let f16 = Wants { kv_type: Some(KvType::F16), ..Wants::default() };
        let ch = choose(&s, f16, Budget::Available(b)).unwrap();
        assert_eq!((ch.ctx, ch.kv_type, ch.slots), (4096, KvType::F16, 1));
        // not even 1 x 4096 in q8_0: the context shrinks, within the budget
        let b = need(4096, KvType::Q8_0, 1) - 1;
        let ch = choose(&s, Wants::default(), Budget::Available(b)).unwrap();
        assert!(ch.ctx < 4096 && ch.ctx >= MIN_PLANNED_CTX && ch.plan.total() <= b, "{}", ch.describe());
        assert_eq!((ch.kv_type, ch.slots), (KvType::Q8_0, 1));
    }

    #[test]
    fn nothing_fits_is_refused_with_the_numbers() {
        let c = qwen3_4b();
        let s = sizes(&c, 2);
        let e = format!("{:#}", choose(&s, Wants::default(), Budget::Limit(2 * GIB)).unwrap_err());
        assert!(e.contains("--max-ram 2.00 GiB") && e.contains("weights alone"), "{e}");
        let long = Wants { ctx: Some(200_000), ..Wants::default() };
        let e = format!("{:#}", choose(&s, long, Budget::Limit(4 * GIB)).unwrap_err());
        assert!(e.contains("200000 tokens") && e.contains("lower --ctx"), "{e}");
        assert!(!e.contains("--kv-type") && !e.contains("--parallel"), "q8_0 and one slot were tried: {e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("6.5G").unwrap(), 13 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "G", "8X", "-1G", "1e99G", "0"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
