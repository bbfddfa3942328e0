//! Weight matrices as the forward pass sees them: one type, whichever layout its bytes are in.
//!
//! A [`Matrix`] is read from the mapped GGUF file until the background prepacker ([`crate::prepack`]) has
//! set its copy in the kernels' faster layout; from then on it is read from the copy. Both layouts give the
//! same bits (tested), so the switch never shows in the output. Each product or row lookup takes one
//! [`MatrixData`] snapshot (layout and bytes together), so the two layouts never mix within one call.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};

use quire_kernels::{DType, QuantizedActs};

use crate::gguf::GgufFile;

/// The bytes every matrix of a model is cut from (the mapped file, or memory for benchmarks), and who is
/// reading them in the file's layout.
pub struct WeightStore {
    backing: Backing,
    /// Held shared by every read of the file's layout; taken exclusively once by the prepacker, after the
    /// last copy is set, so that no read faults copied pages back in after it releases them for good.
    file_readers: RwLock<()>,
    /// Products for a single token use the row kernels on the file's layout (set at load, see
    /// [`crate::model::DecodeKernels`]).
    rows_for_single_tokens: AtomicBool,
}

enum Backing {
    File(Arc<GgufFile>),
    Memory(Vec<u8>),
}

impl WeightStore {
    /// The matrices of `file`.
    pub fn file(file: Arc<GgufFile>) -> Arc<WeightStore> {
        Arc::new(WeightStore {
            backing: Backing::File(file),
            file_readers: RwLock::new(()),
            rows_for_single_tokens: AtomicBool::new(false),
        })
    }

    fn bytes(&self, range: Range<usize>) -> &[u8] {
        match &self.backing {
            Backing::File(f) => f.bytes(range),
            Backing::Memory(m) => &m[range],
        }
    }

    /// Drops this process's copy of the file's pages in `range` (see [`GgufFile::release_pages`]).
    fn release_pages(&self, range: Range<usize>) {
        if let Backing::File(f) = &self.backing {
            f.release_pages(range);
        }
    }

    /// Makes products for a single token use the row kernels on the file's layout (or not).
    pub(crate) fn set_rows_for_single_tokens(&self, rows: bool) {
        self.rows_for_single_tokens.store(rows, Ordering::Relaxed);
    }

    /// A read guard for a call that may read the file's layout (one per call).
    pub(crate) fn reading(&self) -> Reading<'_> {
        Reading { store: self, _guard: self.file_readers.read().unwrap_or_else(|e| e.into_inner()) }
    }

    /// Waits until no call reads the file's layout, then releases the file's pages of `matrices` once more
    /// (a call that began before a copy was set may have faulted some back in). It polls `try_write` rather
    /// than queueing for the lock: a queued writer would block new readers, and a reader nested in another
    /// one's parallel region (rayon work stealing) would then deadlock.
    pub(crate) fn release_when_unread(&self, matrices: &[&Matrix]) {
        let _no_reader = loop {
            match self.file_readers.try_write() {
                Ok(guard) => break guard,
                Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
            }
        };
        for m in matrices.iter().filter(|m| m.is_prepacked()) {
            self.release_pages(m.range.clone());
        }
    }
}

/// A weight matrix: `rows` rows of `cols` values in `dtype`, row-major. Clones share the data and the
/// prepacked copy (a tied embedding table and output head are one matrix).
#[derive(Clone)]
pub struct Matrix {
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    store: Arc<WeightStore>,
    /// Where the rows are in the store, in the file's layout.
    range: Range<usize>,
    /// The copy in the kernels' prepacked layout, once made: anonymous memory (transparent huge pages where
    /// the kernel allows), same size as `range`.
    packed: Arc<OnceLock<memmap2::MmapMut>>,
}

impl std::fmt::Debug for Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} x {} {}, prepacked: {})",
            self.name,
            self.rows,
            self.cols,
            self.dtype,
            self.is_prepacked()
        )
    }
}

impl Matrix {
    /// `rows × cols` values of `dtype` at `range` of `store`; the caller has checked that they fit.
    pub(crate) fn new(
        store: Arc<WeightStore>,
        name: String,
        dtype: DType,
        rows: usize,
        cols: usize,
        range: Range<usize>,
    ) -> Matrix {
        Matrix { name, dtype, rows, cols, store, range, packed: Default::default() }
    }

    /// A matrix held in memory (benchmarks, tests): `bytes` are `rows` rows of `cols` values of `dtype` in the
    /// file's layout. Panics if the length does not match.
    pub fn in_memory(name: &str, dtype: DType, rows: usize, cols: usize, bytes: Vec<u8>) -> Matrix {
        let row_bytes = dtype.row_bytes(cols).expect("whole blocks");
        assert_eq!(bytes.len(), rows * row_bytes, "{name}: {rows} rows of {row_bytes} bytes");
        let range = 0..bytes.len();
        let store = Arc::new(WeightStore {
            backing: Backing::Memory(bytes),
            file_readers: RwLock::new(()),
            rows_for_single_tokens: AtomicBool::new(false),
        });
        Matrix::new(store, name.to_string(), dtype, rows, cols, range)
    }

    /// Bytes of one row in the file's layout.
    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols).expect("validated at load")
    }

    /// Whether the prepacked copy is ready.
    pub fn is_prepacked(&self) -> bool {
        self.packed.get().is_some()
    }

    /// Whether this CPU's kernels have a prepacked layout for this matrix.
    pub fn can_prepack(&self) -> bool {
        quire_kernels::can_prepack(self.dtype, self.rows)
    }

    /// Makes the prepacked copy now, on the calling thread (benchmarks; loading uses the background
    /// prepacker). Returns whether there is one.
    pub fn prepack_now(&self) -> bool {
        if self.can_prepack() && !self.is_prepacked() {
            if let Ok(mut copy) = memmap2::MmapMut::map_anon(self.range.len()) {
                quire_kernels::prepack(self.dtype, self.cols, self.file_bytes(), &mut copy);
                self.set_packed(copy);
            }
        }
        self.is_prepacked()
    }

    /// The rows in the file's layout, for the prepacker's copy (which releases them itself).
    pub(crate) fn file_bytes(&self) -> &[u8] {
        self.store.bytes(self.range.clone())
    }

    /// Releases the file's pages of `bytes` (offsets within this matrix) after they were copied.
    pub(crate) fn release_file_pages(&self, bytes: Range<usize>) {
        let at = self.range.start;
        self.store.release_pages(at + bytes.start..at + bytes.end);
    }

    /// Sets the prepacked copy (once; a second copy is dropped).
    pub(crate) fn set_packed(&self, copy: memmap2::MmapMut) {
        let _ = self.packed.set(copy);
    }

    pub(crate) fn store(&self) -> &Arc<WeightStore> {
        &self.store
    }

    /// The matrix's bytes and layout as one call reads them, valid while `reading` (taken once by the caller
    /// for all the matrices of its call, from this matrix's store) is held.
    pub(crate) fn data<'g>(&'g self, reading: &'g Reading<'_>) -> MatrixData<'g> {
        assert!(std::ptr::eq(reading.store, &*self.store), "{}: read with another model's guard", self.name);
        let rows_for_single_tokens = self.store.rows_for_single_tokens.load(Ordering::Relaxed);
        match self.packed.get() {
            Some(p) => MatrixData { bytes: p, prepacked: true, rows_for_single_tokens },
            None => MatrixData { bytes: self.file_bytes(), prepacked: false, rows_for_single_tokens },
        }
    }

    /// Row `r` of every id in `ids`, dequantized to f32 into consecutive `cols`-wide rows of `out` (the
    /// embedding lookup). `unpacked` is scratch for a row read back from the prepacked layout.
    pub fn dequantize_rows(
        &self,
        ids: impl IntoIterator<Item = usize>,
        out: &mut [f32],
        unpacked: &mut Vec<u8>,
    ) {
        let reading = self.store.reading();
        let data = self.data(&reading);
        let row_bytes = self.row_bytes();
        unpacked.resize(if data.prepacked { row_bytes } else { 0 }, 0);
        for (r, dst) in ids.into_iter().zip(out.chunks_exact_mut(self.cols)) {
            let row = match data.prepacked {
                true => {
                    quire_kernels::prepacked::unpack_row(self.dtype, self.cols, data.bytes, r, unpacked);
                    &unpacked[..]
                }
                false => &data.bytes[r * row_bytes..(r + 1) * row_bytes],
            };
            quire_kernels::dequantize_row(self.dtype, row, dst);
        }
    }
}

/// Held while a call reads matrices of one store ([`WeightStore::reading`]).
pub(crate) struct Reading<'s> {
    store: &'s WeightStore,
    _guard: RwLockReadGuard<'s, ()>,
}

/// A matrix's bytes in one layout, with the kernel that reads that layout.
#[derive(Clone, Copy)]
pub(crate) struct MatrixData<'a> {
    pub bytes: &'a [u8],
    prepacked: bool,
    rows_for_single_tokens: bool,
}

/// A GEMM writing each token's outputs into its own slice (`quire_kernels::gemm_into_rows`).
pub(crate) type GemmIntoRows = fn(DType, &[u8], &QuantizedActs, Range<usize>, &mut [&mut [f32]]);

impl MatrixData<'_> {
    /// The kernel for these bytes and a batch of `n_tokens` (every choice gives the same bits); it takes any
    /// whole-panel slice of them.
    pub fn gemm(&self, n_tokens: usize) -> GemmIntoRows {
        if self.prepacked {
            quire_kernels::gemm_prepacked_into_rows
        } else if n_tokens == 1 && self.rows_for_single_tokens {
            quire_kernels::gemm_rows_into_rows
        } else {
            quire_kernels::gemm_into_rows
        }
    }
}
