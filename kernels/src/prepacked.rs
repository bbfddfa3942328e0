//! The *prepacked* weight layout: a matrix rewritten at load time, panel of sixteen rows by panel,
//! so the AVX-512 panel kernels read each block of sixteen rows as whole vectors instead of
//! transposing sixteen rows of the file for every product.
//!
//! A prepacked matrix has exactly the bytes of the original, moved: per panel, per block (the
//! blocks of the sixteen rows at the same column), the block's 4-byte words in order, each as
//! one 64-byte vector whose lane `i` is that word of row `i`; then, for the formats whose block
//! has a lone f16 scale outside the words (Q4_0 and Q8_0 before the quants, Q6_K after them),
//! the sixteen rows' scales as sixteen f16. So the memory a model needs does not change, and
//! the file's pages can be released once a matrix is copied.
//!
//! This module is portable: it says where each byte goes ([`Layout`]) and reads one row back in
//! the file's layout ([`unpack_row`], for a tied embedding table whose rows are looked up by
//! token). Writing the layout and the kernels that read it are in [`crate::x86::avx512`].

use crate::DType;

/// Rows per panel, and lanes per vector.
pub const PANEL_ROWS: usize = 16;

/// Where the bytes of one block go in the prepacked layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The format.
    pub dtype: DType,
    /// Bytes per block in the file (`dtype.block_bytes()`, kept here because the kernels' inner loops read it).
    pub block_bytes: usize,
    /// Offset in the block of its first 4-byte word (2 when the f16 scale comes first).
    pub words_at: usize,
    /// 4-byte words per block, each stored as one vector of sixteen rows.
    pub n_words: usize,
    /// Offset in the block of the lone f16 scale stored after the word vectors, if any.
    pub scale_at: Option<usize>,
}

impl Layout {
    /// The layout of `dtype`, if it has one: the quantized formats with panel kernels.
    pub fn of(dtype: DType) -> Option<Layout> {
        use crate::formats::{q3_k, q6_k};
        // The lone f16 scale of the blocks whose length is 2 more than a multiple of 4.
        let (words_at, scale_at) = match dtype {
            DType::Q4_0 | DType::Q5_0 | DType::Q8_0 | DType::IQ4_NL => (2, Some(0)),
            DType::Q6_K => (0, Some(q6_k::D)),
            DType::Q3_K => (0, Some(q3_k::D)),
            DType::Q4_1 | DType::Q5_1 | DType::Q2_K | DType::Q4_K | DType::Q5_K | DType::IQ4_XS => (0, None),
            _ => return None,
        };
        let block_bytes = dtype.block_bytes();
        let n_words = (block_bytes - 2 * scale_at.is_some() as usize) / 4;
        Some(Layout { dtype, block_bytes, words_at, n_words, scale_at })
    }

    /// Bytes of one block of a panel (sixteen rows' blocks).
    pub fn panel_block_bytes(&self) -> usize {
        PANEL_ROWS * self.block_bytes
    }

    /// Offset, inside a panel block, of the vector holding the word at byte `at` of the block.
    pub fn word_vector(&self, at: usize) -> usize {
        debug_assert!(at >= self.words_at && (at - self.words_at).is_multiple_of(4));
        64 * ((at - self.words_at) / 4)
    }

    /// Offset, inside a panel block, of the sixteen f16 scales.
    pub fn scales_at(&self) -> usize {
        64 * self.n_words
    }
}

/// Copies row `row` of a prepacked matrix (`packed`, rows of `k` values of `dtype`) back into the
/// file's layout in `dst` (`dtype.row_bytes(k)` bytes).
///
/// # Panics
/// If `dtype` has no prepacked layout, `k` is not whole blocks, `row` is outside the matrix or
/// `dst` has the wrong length.
pub fn unpack_row(dtype: DType, k: usize, packed: &[u8], row: usize, dst: &mut [u8]) {
    let l = Layout::of(dtype).unwrap_or_else(|| panic!("{dtype} has no prepacked layout"));
    let row_bytes = dtype.row_bytes(k).expect("whole blocks");
    assert_eq!(dst.len(), row_bytes, "row length");
    let panel_bytes = PANEL_ROWS * row_bytes;
    let panel = &packed[row / PANEL_ROWS * panel_bytes..][..panel_bytes];
    let lane = row % PANEL_ROWS;
    for (src, out) in panel.chunks_exact(l.panel_block_bytes()).zip(dst.chunks_exact_mut(l.block_bytes)) {
        for w in 0..l.n_words {
            let at = l.words_at + 4 * w;
            out[at..at + 4].copy_from_slice(&src[64 * w + 4 * lane..][..4]);
        }
        if let Some(at) = l.scale_at {
            out[at..at + 2].copy_from_slice(&src[l.scales_at() + 2 * lane..][..2]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepacked_block_holds_exactly_the_blocks_bytes() {
        let formats =
            crate::formats::ALL.into_iter().filter(|&d| Layout::of(d).is_some()).collect::<Vec<_>>();
        assert_eq!(formats.len(), 12, "every quantized weight format: {formats:?}");
        for dtype in formats {
            let l = Layout::of(dtype).unwrap();
            assert_eq!(l.dtype, dtype);
            let scale = if l.scale_at.is_some() { 2 * PANEL_ROWS } else { 0 };
            assert_eq!(64 * l.n_words + scale, l.panel_block_bytes(), "{dtype}");
            assert_eq!(4 * l.n_words + scale / PANEL_ROWS, l.block_bytes, "{dtype}");
            assert_eq!(l.words_at, if l.scale_at == Some(0) { 2 } else { 0 }, "{dtype}");
        }
        assert_eq!(Layout::of(DType::F16), None);
    }
}
