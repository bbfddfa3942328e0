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

/// The CPUs this process may run on and which of them share a physical core.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Logical CPUs this process may run on, ascending.
    pub available: Vec<usize>,
    /// The SMT siblings of each available CPU (itself included), where known.
    pub siblings: Vec<Option<Vec<usize>>>,
}

impl Topology {
    /// This machine's, from the process's affinity mask and Linux sysfs.
    pub fn detect() -> Topology {
        let mut available: Vec<usize> =
            core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
        available.sort_unstable();
        let siblings = available
            .iter()
            .map(|cpu| {
                let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
                std::fs::read_to_string(path).ok().and_then(|s| parse_cpu_list(&s).ok())
            })
            .collect();
        Topology { available, siblings }
    }

    /// The first logical CPU of each physical core; every available CPU where the topology is unknown.
    pub fn one_per_physical_core(&self) -> Vec<usize> {
        if self.siblings.iter().any(Option::is_none) {
            return self.available.clone();
        }
        let mut seen = std::collections::HashSet::new();
        let cores = self.available.iter().zip(&self.siblings);
        cores.filter(|(_, sib)| seen.insert(*sib)).map(|(&cpu, _)| cpu).collect()
    }
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
    /// The plan for `--threads` / `--cpu-list` on this machine ([`PoolPlan::for_topology`]).
    pub fn new(threads: Option<usize>, cpu_list: Option<&[usize]>) -> Result<PoolPlan> {
        PoolPlan::for_topology(threads, cpu_list, &Topology::detect())
    }

    /// The plan for `--threads` / `--cpu-list` on `topo`. Errors: `threads == Some(0)`, or a listed CPU this
    /// process may not use.
    pub fn for_topology(
        threads: Option<usize>,
        cpu_list: Option<&[usize]>,
        topo: &Topology,
    ) -> Result<PoolPlan> {
        if threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        let available = &topo.available;
        let cores: Vec<usize> = match cpu_list {
            Some(list) => {
                if let Some(bad) = list.iter().find(|c| !available.is_empty() && !available.contains(c)) {
                    bail!(
                        "CPU {bad} in --cpu-list is not available to this process (available: {available:?})"
                    );
                }
                list.to_vec()
            }
            None => topo.one_per_physical_core(),
        };
        let n = threads.unwrap_or(if cores.is_empty() { num_cpus_fallback() } else { cores.len() });
        let pin = !cores.is_empty() && (cpu_list.is_some() || n <= cores.len());
        Ok(PoolPlan { n, cores, pin })
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

fn num_cpus_fallback() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four cores with two SMT threads each (CPU i and i + 4 are siblings), all available.
    fn smt_box() -> Topology {
        let available: Vec<usize> = (0..8).collect();
        let siblings = available.iter().map(|&c| Some(vec![c % 4, c % 4 + 4])).collect();
        Topology { available, siblings }
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0,2-4, 3").unwrap(), vec![0, 2, 3, 4]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
    }

    #[test]
    fn one_worker_per_physical_core_by_default() {
        let topo = smt_box();
        assert_eq!(topo.one_per_physical_core(), vec![0, 1, 2, 3]);
        let p = PoolPlan::for_topology(None, None, &topo).unwrap();
        assert_eq!((p.n, p.cores.as_slice(), p.pin), (4, &[0, 1, 2, 3][..], true));
        // more workers than cores: not pinned
        let p = PoolPlan::for_topology(Some(6), None, &topo).unwrap();
        assert_eq!((p.n, p.pin), (6, false));
        // an affinity mask of one CPU per core, or an unknown topology: every available CPU
        let masked = Topology {
            available: vec![1, 5, 6],
            siblings: vec![Some(vec![1, 5]), Some(vec![1, 5]), Some(vec![2, 6])],
        };
        assert_eq!(masked.one_per_physical_core(), vec![1, 6]);
        let unknown = Topology { available: vec![0, 1, 2], siblings: vec![None, None, None] };
        assert_eq!(unknown.one_per_physical_core(), vec![0, 1, 2]);
    }

    #[test]
    fn pool_plans_check_their_arguments() {
        let topo = smt_box();
        assert!(PoolPlan::for_topology(Some(0), None, &topo).is_err());
        assert!(PoolPlan::for_topology(None, Some(&[8]), &topo).is_err());
        let p = PoolPlan::for_topology(Some(1), None, &topo).unwrap();
        assert_eq!((p.n, p.pin), (1, true));
        let listed = PoolPlan::for_topology(None, Some(&[2, 6]), &topo).unwrap();
        assert_eq!((listed.n, listed.cores.as_slice(), listed.pin), (2, &[2, 6][..], true));
        // listed CPUs are pinned even when the workers outnumber them
        let over = PoolPlan::for_topology(Some(3), Some(&[2]), &topo).unwrap();
        assert_eq!((over.n, over.pin), (3, true));
    }
}
