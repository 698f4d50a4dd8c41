//! INT2: four weight levels {-1.5, -0.5, +0.5, +1.5} in the I2 word layout (docs/FORMATS.md,
//! "INT2").
//!
//! Code `c` in {0, 1, 2, 3} is the level `c - 1.5`; 16 codes per little-endian `u32`, weight
//! `k` of a word at bits `2k .. 2k+1`, each row starting a new word, exactly like [`i2`]. All
//! four codes are valid. No level is zero, so padding columns hold code 0 (checked) and every
//! kernel stops at the logical column count. This is the old project's `gemv_int2` format.
//!
//! Rows decode to `2c - 3` in {-3, -1, +1, +3}, twice the level, so products stay exact small
//! integers; [`LevelCodec::UNIT`](super::LevelCodec::UNIT) (0.5) turns them back into levels.

use super::i2::{words_per_row, WEIGHTS_PER_WORD};
use crate::error::{check_len, checked_elems, Error, Result};

/// Packs `rows * cols` codes (row-major, each 0..=3) into INT2 words.
pub fn pack(codes: &[u8], rows: usize, cols: usize) -> Result<Vec<u32>> {
    check_len("codes", checked_elems("codes", rows, cols)?, codes.len())?;
    let wpr = words_per_row(cols);
    let mut words = vec![0u32; rows * wpr];
    for (i, &code) in codes.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        if code > 3 {
            return Err(Error::InvalidCode {
                row: r,
                col: c,
                code,
            });
        }
        words[r * wpr + c / WEIGHTS_PER_WORD] |= u32::from(code) << (2 * (c % WEIGHTS_PER_WORD));
    }
    Ok(words)
}

/// Checks the length and the padding (code 0) of packed INT2 words.
pub fn validate(words: &[u32], rows: usize, cols: usize) -> Result<()> {
    let wpr = words_per_row(cols);
    check_len(
        "packed words",
        checked_elems("packed words", rows, wpr)?,
        words.len(),
    )?;
    // Columns used in the last word of a row; no padding when it is full (or there is none).
    let first_pad = cols % WEIGHTS_PER_WORD;
    if first_pad == 0 {
        return Ok(());
    }
    for r in 0..rows {
        let last = words[(r + 1) * wpr - 1];
        let pad = last >> (2 * first_pad);
        if pad != 0 {
            let k = first_pad + pad.trailing_zeros() as usize / 2;
            return Err(Error::NonZeroPadding {
                row: r,
                col: (wpr - 1) * WEIGHTS_PER_WORD + k,
                code: ((last >> (2 * k)) & 3) as u8,
            });
        }
    }
    Ok(())
}

/// Decodes one row of INT2 words into `out` (`out.len()` = the logical columns): code `c`
/// becomes `2c - 3`, twice its level.
pub(crate) fn unpack_row(row_words: &[u32], out: &mut [i8]) {
    for (c, o) in out.iter_mut().enumerate() {
        let code = (row_words[c / WEIGHTS_PER_WORD] >> (2 * (c % WEIGHTS_PER_WORD))) & 3;
        *o = 2 * code as i8 - 3;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Int2Matrix, Scale};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(rows in 1usize..6, cols in 1usize..70, seed in any::<u64>()) {
            let codes: Vec<u8> = (0..rows * cols).map(|i| ((seed >> (i % 62)) & 3) as u8).collect();
            let m = Int2Matrix::from_codes(rows, cols, &codes, Scale::None).unwrap();
            prop_assert_eq!(m.to_codes(), codes.clone());
            let again = Int2Matrix::from_words(rows, cols, m.words().to_vec(), Scale::None).unwrap();
            prop_assert_eq!(&again, &m);
            let mut row = vec![0i8; cols];
            for r in 0..rows {
                m.unpack_row_into(r, &mut row);
                for (c, &v) in row.iter().enumerate() {
                    prop_assert_eq!(i32::from(v), 2 * i32::from(codes[r * cols + c]) - 3);
                }
            }
        }
    }

    #[test]
    fn known_word_and_bad_input() {
        // Levels -1.5, -0.5, +0.5, +1.5 -> codes 0, 1, 2, 3 at bits 0-1, 2-3, 4-5, 6-7.
        let m = Int2Matrix::from_codes(1, 4, &[0, 1, 2, 3], Scale::None).unwrap();
        assert_eq!(m.words(), &[0b11_10_01_00]);
        assert!(matches!(
            Int2Matrix::from_codes(1, 2, &[0, 4], Scale::None),
            Err(Error::InvalidCode {
                row: 0,
                col: 1,
                code: 4
            })
        ));
        assert!(matches!(
            Int2Matrix::from_words(2, 3, vec![0, 0b01 << 8], Scale::None),
            Err(Error::NonZeroPadding {
                row: 1,
                col: 4,
                code: 1
            })
        ));
        assert!(matches!(
            Int2Matrix::from_words(2, 16, vec![u32::MAX], Scale::None),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(Int2Matrix::from_words(1, 16, vec![u32::MAX], Scale::None).is_ok());
        assert!(validate(&[], 3, 0).is_ok());
        assert!(matches!(
            Int2Matrix::from_codes(0, 4, &[], Scale::None),
            Err(Error::Empty { .. })
        ));
    }
}
