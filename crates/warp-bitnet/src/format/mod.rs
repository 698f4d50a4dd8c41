//! Packed weight layouts. Every layout is specified byte by byte in docs/FORMATS.md.

pub mod i2;
pub mod int2;
mod matrix;
pub mod tiled;

pub use int2::Int2Matrix;
pub(crate) use matrix::{check_dims, check_max_dim};
pub use matrix::{Scale, TernaryMatrix, MAX_DIM};

/// What the 2-bit codes of a packed matrix stand for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Levels {
    /// I2 codes: 00 -> 0, 01 -> +1, 10 -> -1.
    Ternary,
    /// INT2 codes: c -> c - 1.5.
    Int2,
}

/// A packed 2-bit weight matrix whose rows decode to small integers; the CPU and GPU
/// kernels take either kind.
pub trait PackedWeights: Sync {
    /// What the codes stand for.
    const LEVELS: Levels;
    /// The weight that a decoded 1 stands for: 1 for ternary, 0.5 for INT2 (whose rows
    /// decode to twice their level, so that products stay integers).
    const UNIT: f32;
    /// Largest column count whose int8-activation products accumulate exactly in an `i32`.
    const MAX_W2A8_COLS: usize;

    /// Output features (M).
    fn rows(&self) -> usize;
    /// Input features (N), the logical column count.
    fn cols(&self) -> usize;
    /// The weight scale.
    fn scale(&self) -> &Scale;
    /// The packed words, row-major, `i2::words_per_row(cols)` per row.
    fn words(&self) -> &[u32];
    /// The decoded integers of row `r` into `out` (`out.len() == cols()`).
    fn unpack_row_into(&self, r: usize, out: &mut [i8]);
}

impl PackedWeights for TernaryMatrix {
    const LEVELS: Levels = Levels::Ternary;
    const UNIT: f32 = 1.0;
    const MAX_W2A8_COLS: usize = crate::cpu::reference::MAX_W2A8_COLS;

    fn rows(&self) -> usize {
        self.rows()
    }

    fn cols(&self) -> usize {
        self.cols()
    }

    fn scale(&self) -> &Scale {
        self.scale()
    }

    fn words(&self) -> &[u32] {
        self.words()
    }

    fn unpack_row_into(&self, r: usize, out: &mut [i8]) {
        self.unpack_row_into(r, out)
    }
}
