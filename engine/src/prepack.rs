//! Prepacking: rewriting weight matrices into the kernels' prepacked layout, in the background after load.
//!
//! Where this CPU has the panel kernels (AVX-512), each quantized matrix is copied once into the layout they
//! read (`quire_kernels::prepack`: same size, rows of a 16-row panel interleaved), and the file's pages of the
//! original are released, so resident memory stays one copy of the weights. Decoding several sequences at
//! once spends half its time transposing weight panels without this.
//!
//! The copy runs on its own threads after `Model::load` returns, so the first request does not wait for it:
//! copying 4.3 GB (a Q8_0 4B model) costs 1.5–4 s, most of it the kernel clearing fresh pages. A matmul
//! reads a matrix's layout and bytes together once per call (`ops::Weights`); until the copy is set it reads
//! the file. Both layouts give the same bits (tested), so when the switch happens is invisible in the output.
//! The copies started in the first [`IDLE_FOR`] run at idle priority: a request that arrives meanwhile gets
//! the cores, and the copy goes on in the gaps (on an idle server, at full speed). Later copies run at normal
//! priority, so a server that is never idle still gets its faster layout within seconds. (An idle-priority
//! thread preempted inside a page fault can make other threads' faults wait for it while an `mmap` is
//! queued; they then sleep, the core frees up and the idle thread finishes: a delay of the order of a
//! scheduler tick, within those first seconds only.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::gguf::GgufFile;
use crate::ops::Matrix;

/// How long after load the copy gives way to everything else.
const IDLE_FOR: Duration = Duration::from_secs(5);

/// The background copy of a model's matrices into the prepacked layout; stopped and joined when dropped.
pub(crate) struct Prepacker {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Prepacker {
    /// Start copying `matrices` (those with a prepacked layout on this CPU; the others are skipped) on
    /// `threads` threads. `in_use` is held for reading by every forward pass: once every copy is set, the
    /// prepacker takes it for writing, so no pass that might still read the file's layout is running, and
    /// releases the file's pages once more (a pass may have faulted some back in while they were copied).
    pub fn start(
        file: Arc<GgufFile>,
        matrices: Vec<Matrix>,
        threads: usize,
        in_use: Arc<RwLock<()>>,
    ) -> Result<Prepacker> {
        let stop = Arc::new(AtomicBool::new(false));
        let (stopped, started) = (stop.clone(), Instant::now());
        let thread = std::thread::Builder::new()
            .name("quire-prepack".into())
            .spawn(move || {
                let matrices: Vec<&Matrix> =
                    matrices.iter().filter(|m| quire_kernels::can_prepack(m.dtype, m.rows)).collect();
                for m in &matrices {
                    let idle = started.elapsed() < IDLE_FOR;
                    match packed_copy(&file, m, threads, idle, &stopped) {
                        Ok(Some(copy)) => {
                            let _ = m.packed.set(copy);
                        }
                        Ok(None) => return, // asked to stop
                        Err(e) => {
                            // Not fatal: the matrices not yet copied stay in the file's layout (same results,
                            // slower batches).
                            eprintln!(
                                "warning: prepacking stopped, the rest stays in the file's layout: {e:#}"
                            );
                            break;
                        }
                    }
                }
                let _no_reader = in_use.write().unwrap_or_else(|e| e.into_inner());
                for m in matrices.iter().filter(|m| m.is_prepacked()) {
                    file.release_pages(m.range.clone());
                }
            })
            .context("cannot start the prepacking thread")?;
        Ok(Prepacker { stop, thread: Mutex::new(Some(thread)) })
    }

    /// Whether the copy is still running.
    pub fn is_running(&self) -> bool {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Block until every matrix is prepacked (or prepacking gave up). Meanwhile [`Prepacker::is_running`]
    /// waits too (only benchmarks and `Drop` call this).
    pub fn wait(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Prepacker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wait();
    }
}

/// `m` rewritten into the prepacked layout by `threads` threads, releasing the file's pages of each piece as it
/// is copied (so even the 300 MiB output head of a 4B model exists twice only a few MiB at a time). `None`
/// when `stop` was set meanwhile. `idle`: the copying threads run at idle priority ([`run_when_idle`]).
///
/// Zeroed anonymous memory comes straight from the kernel as untouched pages, so they are faulted in (and
/// cleared) by the parallel writers rather than by one serial memset. The copy asks for transparent huge
/// pages: 2 MiB pages fault in 512 times less often than 4 KiB ones (half the load time of a 4B model went
/// to page faults before), and decoding, which streams every weight, misses the TLB less. Where THP is off the
/// advice is ignored.
fn packed_copy(
    file: &GgufFile,
    m: &Matrix,
    threads: usize,
    idle: bool,
    stop: &AtomicBool,
) -> Result<Option<memmap2::MmapMut>> {
    let src = file.bytes(m.range.clone());
    let mut dst = memmap2::MmapMut::map_anon(src.len())
        .with_context(|| format!("{}: cannot allocate {} bytes for its prepacked copy", m.name, src.len()))?;
    let _ = dst.advise(memmap2::Advice::HugePage);
    // 64 panels of 16 rows per piece, dealt round-robin to the threads
    let piece = 64 * quire_kernels::matmul::PANEL_ROWS * m.row_bytes();
    let threads = threads.max(1);
    let mut work: Vec<Vec<Piece>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, (d, s)) in dst.chunks_mut(piece).zip(src.chunks(piece)).enumerate() {
        work[i % threads].push((i * piece, d, s));
    }
    std::thread::scope(|scope| {
        for pieces in work {
            scope.spawn(move || {
                if idle {
                    run_when_idle();
                }
                for (at, d, s) in pieces {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    quire_kernels::prepack(m.dtype, m.cols, s, d);
                    let at = m.range.start + at;
                    file.release_pages(at..at + s.len());
                }
            });
        }
    });
    Ok((!stop.load(Ordering::Relaxed)).then_some(dst))
}

/// One piece of a copy: its offset in the matrix, where it goes, where it comes from.
type Piece<'a> = (usize, &'a mut [u8], &'a [u8]);

/// Put the calling thread in Linux's `SCHED_IDLE` class: it runs only on cores nothing else wants. Best effort
/// (elsewhere, or if refused, the thread keeps its priority).
fn run_when_idle() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain syscall wrapper; pid 0 is the calling thread, `param` is a valid, initialized struct
        // that outlives the call (SCHED_IDLE requires priority 0).
        let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    }
}
