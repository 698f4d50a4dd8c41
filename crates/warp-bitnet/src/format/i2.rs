//! I2: the seed-compatible packed ternary layout (docs/FORMATS.md, "I2").
//!
//! A matrix of `rows` x `cols` weights in {-1, 0, +1}, row-major, 16 weights per
//! little-endian `u32`; each row starts a new word and is padded with zero weights.
//!
//! ```text
//! word j of row r holds columns 16j .. 16j+15:
//!   bit  31 30 | 29 28 | ... |  3  2 |  1  0
//!   col  16j+15| 16j+14| ... | 16j+1 | 16j
//! code 00 -> 0, 01 -> +1, 10 -> -1, 11 -> invalid
//! ```
//!
//! This is byte for byte the int32 `[rows, cols / 16]` tensor of the old project's
//! `pack_ternary`, so packed weights made with it load unchanged.

use crate::error::{check_len, checked_elems, Error, Result};

/// Weights per packed word.
pub const WEIGHTS_PER_WORD: usize = 16;

/// Words per row of a matrix with `cols` columns.
pub fn words_per_row(cols: usize) -> usize {
    cols.div_ceil(WEIGHTS_PER_WORD)
}

/// The I2 code of a ternary weight.
#[inline]
pub fn encode(w: i8) -> u32 {
    match w {
        1 => 0b01,
        -1 => 0b10,
        _ => 0b00,
    }
}

/// The weight of a valid I2 code; `None` for the invalid code `0b11`.
#[inline]
pub fn decode(code: u32) -> Option<i8> {
    match code & 3 {
        0b00 => Some(0),
        0b01 => Some(1),
        0b10 => Some(-1),
        _ => None,
    }
}

/// Packs `rows * cols` ternary weights (row-major, each -1, 0 or +1) into I2 words.
pub fn pack(weights: &[i8], rows: usize, cols: usize) -> Result<Vec<u32>> {
    check_len(
        "weights",
        checked_elems("weights", rows, cols)?,
        weights.len(),
    )?;
    let wpr = words_per_row(cols);
    let mut words = vec![0u32; rows * wpr];
    for r in 0..rows {
        let row = &weights[r * cols..(r + 1) * cols];
        for (c, &w) in row.iter().enumerate() {
            if !(-1..=1).contains(&w) {
                return Err(Error::NotTernary {
                    row: r,
                    col: c,
                    value: f32::from(w),
                });
            }
            words[r * wpr + c / WEIGHTS_PER_WORD] |= encode(w) << (2 * (c % WEIGHTS_PER_WORD));
        }
    }
    Ok(words)
}

/// Checks length, codes and padding of packed I2 words; reports the first bad weight.
pub fn validate(words: &[u32], rows: usize, cols: usize) -> Result<()> {
    let wpr = words_per_row(cols);
    check_len(
        "packed words",
        checked_elems("packed words", rows, wpr)?,
        words.len(),
    )?;
    for r in 0..rows {
        for j in 0..wpr {
            let word = words[r * wpr + j];
            // A code is invalid when both of its bits are set.
            let bad = word & (word >> 1) & 0x5555_5555;
            if bad != 0 {
                let k = bad.trailing_zeros() as usize / 2;
                return Err(Error::InvalidCode {
                    row: r,
                    col: j * WEIGHTS_PER_WORD + k,
                    code: 0b11,
                });
            }
            let first_pad = cols.saturating_sub(j * WEIGHTS_PER_WORD);
            if first_pad < WEIGHTS_PER_WORD {
                let pad = word >> (2 * first_pad);
                if pad != 0 {
                    let k = first_pad + pad.trailing_zeros() as usize / 2;
                    return Err(Error::NonZeroPadding {
                        row: r,
                        col: j * WEIGHTS_PER_WORD + k,
                        code: ((word >> (2 * k)) & 3) as u8,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Unpacks validated I2 words to ternary weights (row-major, `rows * cols`).
pub fn unpack(words: &[u32], rows: usize, cols: usize) -> Result<Vec<i8>> {
    validate(words, rows, cols)?;
    let wpr = words_per_row(cols);
    let mut out = vec![0i8; rows * cols];
    for r in 0..rows {
        unpack_row(
            &words[r * wpr..(r + 1) * wpr],
            &mut out[r * cols..(r + 1) * cols],
        );
    }
    Ok(out)
}

/// Decodes one validated row into `out` (`out.len()` = the logical number of columns).
pub(crate) fn unpack_row(row_words: &[u32], out: &mut [i8]) {
    for (c, o) in out.iter_mut().enumerate() {
        let code = row_words[c / WEIGHTS_PER_WORD] >> (2 * (c % WEIGHTS_PER_WORD));
        // Valid codes only: (b0) - (b1) maps 00, 01, 10 to 0, +1, -1.
        *o = (code & 1) as i8 - ((code >> 1) & 1) as i8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_words_match_the_seed_encoding() {
        // Row 0: +1, -1, 0, +1 then zeros; row 1: 16 x -1, then +1 in column 16.
        let mut w = vec![0i8; 2 * 17];
        w[..4].copy_from_slice(&[1, -1, 0, 1]);
        for c in 0..16 {
            w[17 + c] = -1;
        }
        w[17 + 16] = 1;
        let words = pack(&w, 2, 17).unwrap();
        // +1 -> 01 at bits 0-1, -1 -> 10 at bits 2-3, 0 at bits 4-5, +1 -> 01 at bits 6-7.
        assert_eq!(words, vec![0b01_00_10_01, 0, 0xAAAA_AAAA, 0b01]);
        assert_eq!(unpack(&words, 2, 17).unwrap(), w);
    }

    #[test]
    fn validate_names_the_bad_weight() {
        let mut words = pack(&[0i8; 40], 2, 20).unwrap();
        words[3] |= 0b11 << 2; // row 1, word 1, weight 1 -> column 17
        match validate(&words, 2, 20) {
            Err(Error::InvalidCode {
                row: 1,
                col: 17,
                code: 3,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        let mut words = pack(&[0i8; 40], 2, 20).unwrap();
        words[1] |= 0b01 << 10; // column 21 >= 20
        match validate(&words, 2, 20) {
            Err(Error::NonZeroPadding {
                row: 0,
                col: 21,
                code: 1,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn pack_rejects_non_ternary_and_wrong_length() {
        assert!(matches!(
            pack(&[0, 2], 1, 2),
            Err(Error::NotTernary { row: 0, col: 1, .. })
        ));
        assert!(matches!(
            pack(&[0, 1], 1, 3),
            Err(Error::ShapeMismatch { .. })
        ));
    }
}
