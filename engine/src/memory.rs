//! What a model will need in memory, worked out before anything big is allocated, so a small box gets a
//! clear refusal instead of the OOM killer.

use anyhow::{bail, Result};

use crate::draft::DraftModel;
use crate::kv_cache::{KvCache, KvType};
use crate::model::Model;

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
        MemoryPlan {
            weights_mapped: model.file.file_len(),
            kv_cache: KvCache::bytes_needed_for(&model.config, n_ctx, kv_type),
            scratch: model.scratch_bytes(n_batch, n_ctx, logit_rows),
        }
    }

    /// Plus a draft model beside it ([`crate::draft`]): its mapped file, its caches of `n_ctx` tokens in
    /// all, and its scratch for drafting rounds of up to `n_slots` requests.
    pub fn with_draft(
        mut self,
        draft: Option<&DraftModel>,
        n_ctx: usize,
        n_slots: usize,
        kv_type: KvType,
    ) -> MemoryPlan {
        if let Some(d) = draft {
            self.weights_mapped += d.file_len();
            self.kv_cache += KvCache::bytes_needed_for(&d.model.config, n_ctx, kv_type);
            let batch = (crate::draft::CATCH_UP_CHUNK + 1) * n_slots;
            self.scratch += d.model.scratch_bytes(batch, n_ctx, n_slots);
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
