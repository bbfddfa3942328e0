//! The worker pool: rayon's global pool, sized once per process, each worker pinned to its own core.
//!
//! Decoding runs a few hundred short parallel regions per token; a worker that the OS moves between cores
//! loses its caches and its place in the memory queue each time. Pinning keeps worker `i` on core
//! `cores[i]`. With `--cpu-list` the cores are the listed ones; otherwise the cores this process may run on,
//! and workers are only pinned when there are no more of them than cores.
//!
//! Results never depend on the pool: every kernel output is computed by one thread in a fixed order.

use anyhow::{bail, Context, Result};

/// Parses a CPU list like `0,2-3,8` into core ids (sorted, without duplicates).
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let mut ids = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |x: &str| x.trim().parse::<usize>().with_context(|| format!("bad CPU id {x:?} in {s:?}"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    bail!("bad CPU range {part:?} in {s:?}");
                }
                ids.extend(a..=b);
            }
            None => ids.push(parse(part)?),
        }
    }
    if ids.is_empty() {
        bail!("empty CPU list {s:?}");
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Builds the global pool with `threads` workers (default: one per usable core, or per listed core), pinned
/// as described in the module docs. Call once, before any parallel work; returns the number of workers.
pub fn init(threads: Option<usize>, cpu_list: Option<&[usize]>) -> Result<usize> {
    if threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let available: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    let cores: Vec<usize> = match cpu_list {
        Some(list) => {
            if let Some(bad) = list.iter().find(|c| !available.is_empty() && !available.contains(c)) {
                bail!("CPU {bad} in --cpu-list is not available to this process (available: {available:?})");
            }
            list.to_vec()
        }
        None => available,
    };
    let n = threads.unwrap_or(if cores.is_empty() { num_cpus_fallback() } else { cores.len() });
    let pin = !cores.is_empty() && (cpu_list.is_some() || n <= cores.len());
    let pinned = cores.clone();
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("quire-worker-{i}"))
        .start_handler(move |i| {
            if pin {
                // Best effort: a refused pin leaves the worker where the OS put it.
                core_affinity::set_for_current(core_affinity::CoreId { id: pinned[i % pinned.len()] });
            }
        })
        .build_global()
        .context("cannot start the thread pool (it was already started)")?;
    Ok(n)
}

fn num_cpus_fallback() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0,2-4, 3").unwrap(), vec![0, 2, 3, 4]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
    }
}
