use std::marker::PhantomData;

use super::levels::{Int2, LevelCodec, Levels, Ternary};
use super::{i2, int2};
use crate::error::{shape, Error, Result};

/// Largest row or column count: kernels index rows and columns with 32-bit integers.
pub const MAX_DIM: usize = i32::MAX as usize;

/// The weight scale that multiplies each output: `y = (x . w) * scale + bias`.
#[derive(Clone, Debug, PartialEq)]
pub enum Scale {
    /// No scale (1.0).
    None,
    /// One scale for the whole matrix (BitNet b1.58 absmean `gamma`).
    PerTensor(f32),
    /// One scale per output row.
    PerRow(Vec<f32>),
}

impl Scale {
    /// The scale of output row `r`.
    ///
    /// # Panics
    /// If the scale is per row and `r` is not a row, like slice indexing.
    #[inline]
    pub fn of_row(&self, r: usize) -> f32 {
        match self {
            Scale::None => 1.0,
            Scale::PerTensor(s) => *s,
            Scale::PerRow(v) => v[r],
        }
    }
}

/// A packed 2-bit weight matrix: words in the I2 word layout, logical shape and weight
/// scale. `L` says what the codes stand for ([`Ternary`] or [`Int2`]); the CPU and GPU
/// kernels take every codec through [`PackedWeights`].
#[derive(Clone, Debug, PartialEq)]
pub struct PackedMatrix<L: LevelCodec> {
    rows: usize,
    cols: usize,
    words: Vec<u32>,
    scale: Scale,
    levels: PhantomData<L>,
}

/// Ternary weights {-1, 0, +1} (I2 codes).
pub type TernaryMatrix = PackedMatrix<Ternary>;
/// INT2 weights {-1.5, -0.5, +0.5, +1.5} (`W[r, k] = (code - 1.5) * scale[r]`).
pub type Int2Matrix = PackedMatrix<Int2>;

impl<L: LevelCodec> PackedMatrix<L> {
    /// Wraps packed words (`rows * ceil(cols / 16)`) after validating length, codes,
    /// padding and scale.
    pub fn from_words(rows: usize, cols: usize, words: Vec<u32>, scale: Scale) -> Result<Self> {
        check_dims(rows, cols)?;
        L::validate(&words, rows, cols)?;
        Self::checked(rows, cols, words, scale)
    }

    fn checked(rows: usize, cols: usize, words: Vec<u32>, scale: Scale) -> Result<Self> {
        check_scale(&scale, rows)?;
        Ok(Self {
            rows,
            cols,
            words,
            scale,
            levels: PhantomData,
        })
    }

    /// Output features (M).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (N), the logical width before padding.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The packed words, row-major, `ceil(cols / 16)` per row.
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    /// The weight scale.
    pub fn scale(&self) -> &Scale {
        &self.scale
    }

    /// Replaces the weight scale.
    pub fn with_scale(mut self, scale: Scale) -> Result<Self> {
        check_scale(&scale, self.rows)?;
        self.scale = scale;
        Ok(self)
    }

    /// The packed words of row `r`.
    ///
    /// # Panics
    /// If `r >= rows()`, like slice indexing.
    pub fn row_words(&self, r: usize) -> &[u32] {
        let wpr = i2::words_per_row(self.cols);
        &self.words[r * wpr..(r + 1) * wpr]
    }

    /// The decoded integers of row `r` into `out` (ternary weights; twice the INT2 levels).
    ///
    /// # Panics
    /// If `r >= rows()` or `out.len() != cols()`.
    pub fn unpack_row_into(&self, r: usize, out: &mut [i8]) {
        assert_eq!(
            out.len(),
            self.cols,
            "unpack_row_into: `out` must hold one row"
        );
        L::decode_row(self.row_words(r), out);
    }

    /// All decoded integers, row-major.
    fn decoded(&self) -> Vec<i8> {
        let mut out = vec![0i8; self.rows * self.cols];
        for (r, row) in out.chunks_mut(self.cols).enumerate() {
            self.unpack_row_into(r, row);
        }
        out
    }

    /// Bytes of packed weights (what a GEMV must read).
    pub fn packed_bytes(&self) -> usize {
        self.words.len() * 4
    }
}

impl PackedMatrix<Ternary> {
    /// Packs row-major weights in {-1, 0, +1}.
    pub fn from_ternary(rows: usize, cols: usize, weights: &[i8], scale: Scale) -> Result<Self> {
        check_dims(rows, cols)?;
        check_scale(&scale, rows)?;
        Self::checked(rows, cols, i2::pack(weights, rows, cols)?, scale)
    }

    /// All weights, row-major.
    pub fn to_ternary(&self) -> Vec<i8> {
        self.decoded()
    }
}

impl PackedMatrix<Int2> {
    /// Packs row-major codes in 0..=3 (level `code - 1.5`).
    pub fn from_codes(rows: usize, cols: usize, codes: &[u8], scale: Scale) -> Result<Self> {
        check_dims(rows, cols)?;
        check_scale(&scale, rows)?;
        Self::checked(rows, cols, int2::pack(codes, rows, cols)?, scale)
    }

    /// All codes, row-major.
    pub fn to_codes(&self) -> Vec<u8> {
        // Rows decode to 2c - 3.
        self.decoded()
            .iter()
            .map(|&v| ((v + 3) / 2) as u8)
            .collect()
    }
}

/// A packed 2-bit weight matrix whose rows decode to small integers, as the CPU and GPU
/// kernels take it; implemented by [`PackedMatrix`] for every codec.
pub trait PackedWeights: Sync {
    /// What the codes stand for.
    const LEVELS: Levels;
    /// The weight that a decoded 1 stands for ([`LevelCodec::UNIT`]).
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

impl<L: LevelCodec> PackedWeights for PackedMatrix<L> {
    const LEVELS: Levels = L::LEVELS;
    const UNIT: f32 = L::UNIT;
    const MAX_W2A8_COLS: usize = L::MAX_W2A8_COLS;

    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn scale(&self) -> &Scale {
        &self.scale
    }

    fn words(&self) -> &[u32] {
        &self.words
    }

    fn unpack_row_into(&self, r: usize, out: &mut [i8]) {
        PackedMatrix::unpack_row_into(self, r, out)
    }
}

/// `TooLarge` for the first size above [`MAX_DIM`] (the kernels index with 32-bit integers).
pub(crate) fn check_max_dim(sizes: &[(&'static str, usize)]) -> Result<()> {
    match sizes.iter().find(|&&(_, v)| v > MAX_DIM) {
        Some(&(arg, v)) => Err(Error::TooLarge {
            arg,
            value: v as u64,
            limit: MAX_DIM as u64,
        }),
        None => Ok(()),
    }
}

pub(crate) fn check_dims(rows: usize, cols: usize) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(Error::Empty {
            arg: "weight matrix",
        });
    }
    check_max_dim(&[("rows", rows), ("cols", cols)])?;
    Ok(())
}

pub(crate) fn check_scale(scale: &Scale, rows: usize) -> Result<()> {
    let bad = |i: usize, v: f32| {
        Err(Error::NonFinite {
            arg: "scale",
            index: i,
            value: v,
        })
    };
    match scale {
        Scale::None => Ok(()),
        Scale::PerTensor(s) if !s.is_finite() => bad(0, *s),
        Scale::PerTensor(_) => Ok(()),
        Scale::PerRow(v) if v.len() != rows => Err(Error::ShapeMismatch {
            arg: "scale",
            expected: shape(&[rows]),
            got: shape(&[v.len()]),
        }),
        Scale::PerRow(v) => match v.iter().position(|s| !s.is_finite()) {
            Some(i) => bad(i, v[i]),
            None => Ok(()),
        },
    }
}
