use super::i2;
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

/// A packed ternary matrix: I2 words, logical shape and weight scale.
#[derive(Clone, Debug, PartialEq)]
pub struct TernaryMatrix {
    rows: usize,
    cols: usize,
    words: Vec<u32>,
    scale: Scale,
}

impl TernaryMatrix {
    /// Wraps I2 words (see [`i2`]) after validating length, codes, padding and scale.
    pub fn from_i2(rows: usize, cols: usize, words: Vec<u32>, scale: Scale) -> Result<Self> {
        check_dims(rows, cols)?;
        i2::validate(&words, rows, cols)?;
        check_scale(&scale, rows)?;
        Ok(Self {
            rows,
            cols,
            words,
            scale,
        })
    }

    /// Packs row-major weights in {-1, 0, +1}.
    pub fn from_ternary(rows: usize, cols: usize, weights: &[i8], scale: Scale) -> Result<Self> {
        check_dims(rows, cols)?;
        check_scale(&scale, rows)?;
        let words = i2::pack(weights, rows, cols)?;
        Ok(Self {
            rows,
            cols,
            words,
            scale,
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

    /// The I2 words, `rows * ceil(cols / 16)`.
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

    /// The I2 words of row `r`.
    ///
    /// # Panics
    /// If `r >= rows()`, like slice indexing.
    pub fn row_words(&self, r: usize) -> &[u32] {
        let wpr = i2::words_per_row(self.cols);
        &self.words[r * wpr..(r + 1) * wpr]
    }

    /// The weights of row `r` into `out`.
    ///
    /// # Panics
    /// If `r >= rows()` or `out.len() != cols()`.
    pub fn unpack_row_into(&self, r: usize, out: &mut [i8]) {
        assert_eq!(
            out.len(),
            self.cols,
            "unpack_row_into: `out` must hold one row"
        );
        i2::unpack_row(self.row_words(r), out);
    }

    /// All weights, row-major.
    pub fn to_ternary(&self) -> Vec<i8> {
        let mut out = vec![0i8; self.rows * self.cols];
        if self.cols > 0 {
            for (r, row) in out.chunks_mut(self.cols).enumerate() {
                self.unpack_row_into(r, row);
            }
        }
        out
    }

    /// Bytes of packed weights (what a GEMV must read).
    pub fn packed_bytes(&self) -> usize {
        self.words.len() * 4
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
