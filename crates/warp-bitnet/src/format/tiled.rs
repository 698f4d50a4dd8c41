//! T2: the GPU layout, produced from I2 once at load time (docs/FORMATS.md, "T2").
//!
//! The matrix is cut into tiles of 16 rows x 128 columns (rows padded to a multiple
//! of 16, columns to a multiple of 128, with zero weights). Tile (rt, kt) is 512
//! bytes at word offset `(rt * k_tiles + kt) * 128`; lane `t` of the warp that
//! reads it owns words `4t .. 4t+3`, one 16-byte load. With `g = t / 4` and
//! `q = t % 4`, the lane holds rows `g` (words 0, 1) and `g + 8` (words 2, 3) of
//! the tile, columns `32q .. 32q+31`; each word holds 16 codes `c = weight + 1`:
//!
//! ```text
//! word w, slot t (bits 2t..2t+1), t = 0..15, with s = t % 8 and h = t / 8:
//!   row = 16 rt + g + 8 (w >> 1)
//!   col = 128 kt + 32 q + 4 s + 2 (w & 1) + h
//! ```
//!
//! Why this order (see `cuda/kernels/gemm_t2.cu`): bits `2s` and `2s + 16` of a
//! word are two consecutive columns of one row, so one LOP3 makes one f16x2/bf16x2
//! A register of `mma.m16n8k16`; slot pair `s` of words 0..3 is one whole A
//! fragment (rows g and g+8, columns 4s..4s+3) whose codes all sit at the same bit
//! position, and whose B fragment is the lane's activations `4s..4s+3` as loaded.
//! `(word >> 2j) & 0x03030303` is one int8 A register of `mma.m16n8k32`, columns
//! (4j, 4j+16, 4j+1, 4j+17) (+2 for odd words), one PRMT away from its B register.

use super::i2;
use crate::error::{check_len, checked_elems, Result};

/// Rows per tile (the `m` of the tensor-core instruction).
pub const TILE_ROWS: usize = 16;
/// Columns per tile (4 words x 32 columns).
pub const TILE_COLS: usize = 128;
/// 32-bit words per tile (16 x 128 x 2 bits / 32).
pub const TILE_WORDS: usize = 128;

/// Tiles along the rows and along the columns of a `rows` x `cols` matrix.
pub fn tile_counts(rows: usize, cols: usize) -> (usize, usize) {
    (rows.div_ceil(TILE_ROWS), cols.div_ceil(TILE_COLS))
}

/// Number of `u32` words of the T2 form of a `rows` x `cols` matrix.
pub fn len_words(rows: usize, cols: usize) -> usize {
    let (rt, kt) = tile_counts(rows, cols);
    // Saturates rather than wrapping: no buffer has usize::MAX words, so a length
    // check against an absurd shape fails instead of passing by overflow.
    rt.saturating_mul(kt).saturating_mul(TILE_WORDS)
}

/// Row and column of slot `slot` of word `word` in tile `(rt, kt)`.
#[inline]
pub fn position(rt: usize, kt: usize, word: usize, slot: usize) -> (usize, usize) {
    let lane = (word % TILE_WORDS) / 4;
    let w = word % 4;
    let (g, q) = (lane / 4, lane % 4);
    let (s, h) = (slot % 8, slot / 8);
    (
        rt * TILE_ROWS + g + 8 * (w >> 1),
        kt * TILE_COLS + 32 * q + 4 * s + 2 * (w & 1) + h,
    )
}

/// Converts validated I2 words to T2 (the host twin of the GPU conversion kernel).
pub fn from_i2(words: &[u32], rows: usize, cols: usize) -> Result<Vec<u32>> {
    check_len(
        "packed words",
        checked_elems("packed words", rows, i2::words_per_row(cols))?,
        words.len(),
    )?;
    let wpr = i2::words_per_row(cols);
    let (row_tiles, k_tiles) = tile_counts(rows, cols);
    let mut out = vec![0u32; row_tiles * k_tiles * TILE_WORDS];
    for (idx, word) in out.iter_mut().enumerate() {
        let tile = idx / TILE_WORDS;
        let (rt, kt) = (tile / k_tiles, tile % k_tiles);
        for slot in 0..16 {
            let (r, c) = position(rt, kt, idx, slot);
            let w = if r < rows && c < cols {
                let code = words[r * wpr + c / 16] >> (2 * (c % 16));
                (code & 1) as i32 - ((code >> 1) & 1) as i32
            } else {
                0
            };
            *word |= ((w + 1) as u32) << (2 * slot);
        }
    }
    Ok(out)
}

/// Converts T2 words back to I2 (padding dropped).
pub fn to_i2(tiled: &[u32], rows: usize, cols: usize) -> Result<Vec<u32>> {
    check_len("tiled words", len_words(rows, cols), tiled.len())?;
    let wpr = i2::words_per_row(cols);
    let (_, k_tiles) = tile_counts(rows, cols);
    let mut out = vec![0u32; checked_elems("packed words", rows, wpr)?];
    for (idx, &word) in tiled.iter().enumerate() {
        let tile = idx / TILE_WORDS;
        let (rt, kt) = (tile / k_tiles, tile % k_tiles);
        for slot in 0..16 {
            let (r, c) = position(rt, kt, idx, slot);
            if r < rows && c < cols {
                let w = ((word >> (2 * slot)) & 3) as i8 - 1;
                out[r * wpr + c / 16] |= i2::encode(w) << (2 * (c % 16));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_position_is_hit_once() {
        let (rows, cols) = (32, 256);
        let mut seen = vec![0u8; rows * cols];
        for idx in 0..len_words(rows, cols) {
            let tile = idx / TILE_WORDS;
            for slot in 0..16 {
                let (r, c) = position(tile / 2, tile % 2, idx, slot);
                seen[r * cols + c] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
    }

    #[test]
    fn registers_hold_what_the_kernel_expects() {
        for w in 0..4 {
            // f16/bf16: bits 2s and 2s+16 are consecutive columns of one row.
            for s in 0..8 {
                let (a, b) = (position(0, 0, w, s), position(0, 0, w, s + 8));
                assert_eq!((a.0, a.1 + 1), b);
                assert_eq!(a, (8 * (w >> 1), 4 * s + 2 * (w & 1)));
            }
            // i8: slots j, j+4, j+8, j+12 are columns (4j, 4j+16, 4j+1, 4j+17) (+2 for odd words).
            for j in 0..4 {
                let cols: Vec<_> = (0..4).map(|b| position(0, 0, w, j + 4 * b).1).collect();
                let o = 2 * (w & 1);
                assert_eq!(
                    cols,
                    [4 * j + o, 4 * j + 16 + o, 4 * j + 1 + o, 4 * j + 17 + o]
                );
            }
        }
    }
}
