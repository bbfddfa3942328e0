//! The worker pool: rayon's global pool, sized once per process, each worker pinned to its own core.
//!
//! Decoding runs a few hundred short parallel regions per token; a worker that the OS moves between cores
//! loses its caches and its place in the memory queue each time. Pinning keeps worker `i` on core
//! `cores[i]`. With `--cpu-list` the cores are the listed ones; otherwise one logical CPU per physical core
//! this process may run on, and workers are only pinned when there are no more of them than cores.
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

/// Builds the global pool with `threads` workers, pinned as described in the module docs, and returns the
/// number of workers. Default: one worker per physical core this process may run on (SMT siblings share
/// one core's caches and load ports, so a second worker there only adds contention to a memory-bound
/// decode), or one per listed core with `cpu_list`.
///
/// Call once, before any parallel work. Errors: those of [`PoolPlan::new`], or a pool that is already
/// running (rayon starts its global pool on first use).
pub fn init(threads: Option<usize>, cpu_list: Option<&[usize]>) -> Result<usize> {
    PoolPlan::new(threads, cpu_list)?.start()
}

/// How many workers to start and where to pin them, checked before anything starts.
#[derive(Clone, Debug)]
pub struct PoolPlan {
    /// Workers to start.
    pub n: usize,
    /// Worker `i` runs on `cores[i % cores.len()]` when `pin` is set.
    pub cores: Vec<usize>,
    pub pin: bool,
}

impl PoolPlan {
    /// The plan for `--threads` / `--cpu-list`. Errors: `threads == Some(0)`, or a listed CPU this process
    /// may not use.
    pub fn new(threads: Option<usize>, cpu_list: Option<&[usize]>) -> Result<PoolPlan> {
        plan(threads, cpu_list)
    }

    /// Start rayon's global pool as planned; returns the number of workers. Fails if it already runs.
    pub fn start(self) -> Result<usize> {
        let PoolPlan { n, cores, pin } = self;
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("quire-worker-{i}"))
            .start_handler(move |i| {
                if pin {
                    // Best effort: a refused pin leaves the worker where the OS put it.
                    core_affinity::set_for_current(core_affinity::CoreId { id: cores[i % cores.len()] });
                }
            })
            .build_global()
            .with_context(|| {
                format!(
                    "cannot start the thread pool: it already runs {} threads",
                    rayon::current_num_threads()
                )
            })?;
        Ok(n)
    }
}

fn plan(threads: Option<usize>, cpu_list: Option<&[usize]>) -> Result<PoolPlan> {
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
        None => one_per_physical_core(&available),
    };
    let n = threads.unwrap_or(if cores.is_empty() { num_cpus_fallback() } else { cores.len() });
    let pin = !cores.is_empty() && (cpu_list.is_some() || n <= cores.len());
    Ok(PoolPlan { n, cores, pin })
}

/// The first logical CPU of each physical core among `available` (Linux sysfs topology); `available`
/// unchanged where the topology cannot be read.
fn one_per_physical_core(available: &[usize]) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for &cpu in available {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
        match std::fs::read_to_string(path).ok().and_then(|s| parse_cpu_list(&s).ok()) {
            Some(siblings) => {
                if seen.insert(siblings) {
                    out.push(cpu);
                }
            }
            None => return available.to_vec(),
        }
    }
    out
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

    #[test]
    fn pool_plans_check_their_arguments() {
        assert!(PoolPlan::new(Some(0), None).is_err());
        assert!(PoolPlan::new(None, Some(&[usize::MAX])).is_err());
        let p = PoolPlan::new(Some(1), None).unwrap();
        assert_eq!(p.n, 1);
        assert!(p.pin, "one worker fits on the first core");
        let listed = PoolPlan::new(None, Some(&[0])).unwrap();
        assert_eq!((listed.n, listed.cores.as_slice(), listed.pin), (1, &[0][..], true));
    }

    #[test]
    fn one_cpu_per_core_is_a_subset_of_the_available_ones() {
        let available: Vec<usize> =
            core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
        let chosen = one_per_physical_core(&available);
        assert!(!available.is_empty() && !chosen.is_empty());
        assert!(chosen.iter().all(|c| available.contains(c)));
        assert!(chosen.windows(2).all(|w| w[0] < w[1]));
    }
}
