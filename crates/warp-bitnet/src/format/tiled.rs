//! T2: the GPU layout, produced from I2 once at load time (docs/FORMATS.md, "T2").
//!
//! The matrix is cut into tiles of 16 rows x 128 columns (rows padded to a multiple
//! of 16, columns to a multiple of 128, with zero weights). Tile (rt, kt) is 512
//! bytes at word offset `(rt * k_tiles + kt) * 128`; lane `t` of the warp that
//! reads it owns words `4t .. 4t+3`, one 16-byte load. Word `w` of lane `t`, with
//! `g = t / 4` and `q = t % 4`, holds 16 codes `c = weight + 1` (0, 1, 2):
//!
//! ```text
//! slot s (bits 2s..2s+1), s = 0..15:
//!   row = 16 rt + g + 8 (s & 1)
//!   col = 128 kt + 32 q + 8 w + kidx(s),   kidx(s) = bitreverse3(s >> 1)
//! ```
//!
//! Why this order: the slot pairs `(s, s + 8)` — bits `2s` and `2s + 16` — are two
//! consecutive columns of one row, so one LOP3 makes one f16x2/bf16x2
//! `mma.m16n8k16` A register, and a lane's 8 activations of a word (one 16-byte
//! load) are its B registers as loaded, with no shuffling. `(word >> 2j) &
//! 0x03030303` holds 4 codes of one row in columns (0, 2, 1, 3) of a group of 4:
//! one int8 `mma.m16n8k32` A register, whose B register is one PRMT away
//! (see `cuda/kernels/gemm_t2.cu`).

use super::i2;
use crate::error::{check_len, Result};

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
    rt * kt * TILE_WORDS
}

/// Row and column of slot `slot` of word `word` in tile `(rt, kt)`.
#[inline]
pub fn position(rt: usize, kt: usize, word: usize, slot: usize) -> (usize, usize) {
    let lane = (word % TILE_WORDS) / 4;
    let w = word % 4;
    let (g, q) = (lane / 4, lane % 4);
    let kidx = kidx(slot);
    (
        rt * TILE_ROWS + g + 8 * (slot & 1),
        kt * TILE_COLS + 32 * q + 8 * w + kidx,
    )
}

/// Column within a lane's 8 columns of slot `slot`: the 3-bit reversal of `slot >> 1`.
#[inline]
pub fn kidx(slot: usize) -> usize {
    let s = slot >> 1;
    4 * (s & 1) + 2 * ((s >> 1) & 1) + (s >> 2)
}

/// Converts validated I2 words to T2 (the host twin of the GPU conversion kernel).
pub fn from_i2(words: &[u32], rows: usize, cols: usize) -> Result<Vec<u32>> {
    check_len("packed words", rows * i2::words_per_row(cols), words.len())?;
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
    let mut out = vec![0u32; rows * wpr];
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
        // f16/bf16: slots (s, s+8) are consecutive columns of one row.
        for s in 0..8 {
            let (a, b) = (position(0, 0, 0, s), position(0, 0, 0, s + 8));
            assert_eq!((a.0, a.1 + 1), b);
        }
        // i8: slots j, j+4, j+8, j+12 are columns (0, 2, 1, 3) of a group of 4 of one row.
        for j in 0..4 {
            let p: Vec<_> = (0..4).map(|b| position(0, 0, 0, j + 4 * b)).collect();
            assert!(p.iter().all(|&(r, _)| r == p[0].0));
            let base = p[0].1;
            assert_eq!(p.iter().map(|&(_, c)| c - base).collect::<Vec<_>>(), [0, 2, 1, 3]);
        }
    }
}
