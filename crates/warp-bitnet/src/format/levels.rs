//! Level codecs: what the 2-bit codes of a packed matrix stand for. One packed-matrix
//! type ([`PackedMatrix`](super::PackedMatrix)) serves every codec; a new format plugs in
//! by implementing [`LevelCodec`] (docs/FORMATS.md, "I2" and "INT2").

use super::{i2, int2};
use crate::error::{Error, Result};

/// What the 2-bit codes of a packed matrix stand for, at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Levels {
    /// I2 codes: 00 -> 0, 01 -> +1, 10 -> -1.
    Ternary,
    /// INT2 codes: c -> c - 1.5.
    Int2,
}

impl Levels {
    /// Largest column count whose int8-activation products accumulate exactly in an `i32`.
    pub fn max_w2a8_cols(self) -> usize {
        match self {
            Levels::Ternary => Ternary::MAX_W2A8_COLS,
            Levels::Int2 => Int2::MAX_W2A8_COLS,
        }
    }

    /// `TooLarge` naming `cols` when W2A8 products over `cols` columns could overflow an `i32`.
    pub fn check_w2a8_cols(self, cols: usize) -> Result<()> {
        let limit = self.max_w2a8_cols();
        if cols > limit {
            return Err(Error::TooLarge {
                arg: "cols",
                value: cols as u64,
                limit: limit as u64,
            });
        }
        Ok(())
    }
}

/// The codes of one packed format: how words are validated and decoded to small integers.
pub trait LevelCodec:
    Copy + std::fmt::Debug + Default + PartialEq + Send + Sync + sealed::Sealed + 'static
{
    /// The run-time tag.
    const LEVELS: Levels;
    /// The weight that a decoded 1 stands for: 1 for ternary, 0.5 for INT2 (whose rows
    /// decode to twice their level, so that products stay integers).
    const UNIT: f32;
    /// Largest column count whose int8-activation products accumulate exactly in an `i32`.
    const MAX_W2A8_COLS: usize;
    /// Checks the length, codes and padding of `rows` x `cols` packed words.
    fn validate(words: &[u32], rows: usize, cols: usize) -> Result<()>;
    /// Decodes one validated row of words into `out` (`out.len()` = the logical columns).
    fn decode_row(row_words: &[u32], out: &mut [i8]);
}

/// Ternary weights {-1, 0, +1} in I2 codes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ternary;

/// INT2 weights {-1.5, -0.5, +0.5, +1.5}, decoded to twice their level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Int2;

impl LevelCodec for Ternary {
    const LEVELS: Levels = Levels::Ternary;
    const UNIT: f32 = 1.0;
    // The GPU kernel accumulates `sum c * q` with codes `c <= 2` and `|q| <= 128` in i32.
    const MAX_W2A8_COLS: usize = i32::MAX as usize / 256;

    fn validate(words: &[u32], rows: usize, cols: usize) -> Result<()> {
        i2::validate(words, rows, cols)
    }

    fn decode_row(row_words: &[u32], out: &mut [i8]) {
        i2::unpack_row(row_words, out)
    }
}

impl LevelCodec for Int2 {
    const LEVELS: Levels = Levels::Int2;
    const UNIT: f32 = 0.5;
    // |q * (2c - 3)| <= 128 * 3 per column.
    const MAX_W2A8_COLS: usize = i32::MAX as usize / 384;

    fn validate(words: &[u32], rows: usize, cols: usize) -> Result<()> {
        int2::validate(words, rows, cols)
    }

    fn decode_row(row_words: &[u32], out: &mut [i8]) {
        int2::unpack_row(row_words, out)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Ternary {}
    impl Sealed for super::Int2 {}
}
