//! Prepacking: the copy of the weight matrices into the kernels' faster layout, in the background after load.
//!
//! Each matrix the kernels have a prepacked layout for is copied once (same size) and the file's pages are
//! released as the copy proceeds, so resident memory stays one copy of the weights; matmuls read whichever
//! layout is ready ([`crate::weights`]). Copies started in the first [`IDLE_FOR`] run at idle priority so
//! early requests get the cores. Timings: RESULTS.md, "Background prepacking".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::weights::Matrix;

/// How long after load the copy gives way to everything else.
const IDLE_FOR: Duration = Duration::from_secs(5);

/// The background copy of a model's matrices into the prepacked layout; stopped and joined when dropped.
pub(crate) struct Prepacker {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Prepacker {
    /// Start copying `matrices` (those this CPU has no prepacked layout for are skipped) on `threads` threads.
    /// Once every copy is set, the file's pages are released once more when no call reads the file's layout
    /// any longer ([`crate::weights::WeightStore`]).
    pub fn start(matrices: Vec<Matrix>, threads: usize) -> Result<Prepacker> {
        let stop = Arc::new(AtomicBool::new(false));
        let (stopped, started) = (stop.clone(), Instant::now());
        let thread = std::thread::Builder::new()
            .name("quire-prepack".into())
            .spawn(move || {
                let matrices: Vec<&Matrix> = matrices.iter().filter(|m| m.can_prepack()).collect();
                for m in &matrices {
                    let idle = started.elapsed() < IDLE_FOR;
                    match packed_copy(m, threads, idle, &stopped) {
                        Ok(Some(copy)) => m.set_packed(copy),
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
                if let Some(first) = matrices.first() {
                    first.store().release_when_unread(&matrices);
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
/// is copied (so even a 4B model's output head exists twice only a few MiB at a time). `None` when `stop` was
/// set meanwhile. `idle`: the copying threads run at idle priority ([`run_when_idle`]). The zeroed anonymous
/// memory is faulted in by the parallel writers, in transparent huge pages where the kernel allows.
fn packed_copy(
    m: &Matrix,
    threads: usize,
    idle: bool,
    stop: &AtomicBool,
) -> Result<Option<memmap2::MmapMut>> {
    let src = m.file_bytes();
    let mut dst = memmap2::MmapMut::map_anon(src.len())
        .with_context(|| format!("{}: cannot allocate {} bytes for its prepacked copy", m.name, src.len()))?;
    let _ = dst.advise(memmap2::Advice::HugePage);
    // 64 panels per piece, dealt round-robin to the threads
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
                    m.release_file_pages(at..at + s.len());
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
