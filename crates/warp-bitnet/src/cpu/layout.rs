//! C2: the CPU weight layout, converted once at load from any [`PackedWeights`]
//! (docs/FORMATS.md, "C2").
//!
//! Each row is padded to whole 128-column blocks of 32 bytes. Byte `j` (0..32) of block `b`
//! holds the unsigned codes of columns `128b + j + 32p` at bits `2p .. 2p+1`, p = 0..3:
//!
//! ```text
//! block b of row r = bytes [r * row_bytes + 32b, r * row_bytes + 32b + 32)
//!   byte j: bits 7 6 | 5 4 | 3 2 | 1 0
//!           col +96  | +64 | +32 | +0     (relative to column 128b + j)
//! ```
//!
//! A code `u` stands for the decoded integer `a * u + b`: ternary `u = w + 1` (a = 1,
//! b = -1), INT2 the code itself (a = 2, b = -3, the `2c - 3` of [`PackedWeights`]).
//! Padding columns hold code 0; the kernels pad activations with zeros, so they add nothing.
//! The per-row scales are stored expanded (one `f32` per row).

use rayon::prelude::*;

use super::arch::{BLOCK, BLOCK_BYTES};
use crate::format::{Levels, PackedWeights};

/// A weight matrix in the C2 layout: what the fast CPU kernels ([`crate::cpu::Kernels`]) read.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuMatrix {
    rows: usize,
    cols: usize,
    levels: Levels,
    bytes: Vec<u8>,
    scale: Vec<f32>,
}

impl CpuMatrix {
    /// Converts packed ternary or INT2 weights (rows in parallel).
    pub fn from_packed<W: PackedWeights>(w: &W) -> CpuMatrix {
        let (rows, cols) = (w.rows(), w.cols());
        let row_bytes = cols.div_ceil(BLOCK) * BLOCK_BYTES;
        let mut bytes = vec![0u8; rows * row_bytes];
        let a = match W::LEVELS {
            Levels::Ternary => 1,
            Levels::Int2 => 2,
        };
        let b = match W::LEVELS {
            Levels::Ternary => -1,
            Levels::Int2 => -3,
        };
        bytes.par_chunks_mut(row_bytes).enumerate().for_each_init(
            || vec![0i8; cols],
            |vals, (r, out)| {
                w.unpack_row_into(r, vals);
                for (c, &v) in vals.iter().enumerate() {
                    let u = ((v - b) / a) as u8; // v = a * u + b
                    let (blk, within) = (c / BLOCK, c % BLOCK);
                    out[BLOCK_BYTES * blk + within % 32] |= u << (2 * (within / 32));
                }
            },
        );
        let scale = (0..rows).map(|r| w.scale().of_row(r)).collect();
        CpuMatrix {
            rows,
            cols,
            levels: W::LEVELS,
            bytes,
            scale,
        }
    }

    /// Output features (M).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (N), the logical column count.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Columns rounded up to whole blocks: the activation stride the kernels use.
    pub fn padded_cols(&self) -> usize {
        self.cols.div_ceil(BLOCK) * BLOCK
    }

    /// What the codes stand for.
    pub fn levels(&self) -> Levels {
        self.levels
    }

    /// `(a, b)`: code `u` decodes to the integer `a * u + b` (twice the level for INT2).
    pub fn decode(&self) -> (i32, i32) {
        match self.levels {
            Levels::Ternary => (1, -1),
            Levels::Int2 => (2, -3),
        }
    }

    /// The weight a decoded 1 stands for ([`PackedWeights::UNIT`]).
    pub fn unit(&self) -> f32 {
        match self.levels {
            Levels::Ternary => 1.0,
            Levels::Int2 => 0.5,
        }
    }

    /// The scale of every row.
    pub fn row_scales(&self) -> &[f32] {
        &self.scale
    }

    /// The C2 bytes, `rows * padded_cols / 4`.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The C2 bytes of rows `range`.
    pub(crate) fn rows_bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        let rb = self.padded_cols() / 4;
        &self.bytes[range.start * rb..range.end * rb]
    }

    /// Bytes a GEMV must read (the C2 weights).
    pub fn packed_bytes(&self) -> usize {
        self.bytes.len()
    }
}

impl<W: PackedWeights> From<&W> for CpuMatrix {
    fn from(w: &W) -> CpuMatrix {
        CpuMatrix::from_packed(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Int2Matrix, Scale, TernaryMatrix};

    #[test]
    fn known_bytes() {
        // Row of 130 columns: +1 at column 0, -1 at column 33, 0 elsewhere; padding to 256.
        let mut w = vec![0i8; 130];
        w[0] = 1;
        w[33] = -1;
        w[129] = 1;
        let m = CpuMatrix::from(&TernaryMatrix::from_ternary(1, 130, &w, Scale::None).unwrap());
        assert_eq!(m.bytes().len(), 64);
        // Zeros are code 1 in every plane: 0b01_01_01_01; column 0 -> code 2 in plane 0,
        // column 33 -> byte 1, plane 1, code 0.
        assert_eq!(m.bytes()[0], 0b01_01_01_10);
        assert_eq!(m.bytes()[1], 0b01_01_00_01);
        assert_eq!(m.bytes()[2], 0x55);
        // Block 1: columns 128 (0 -> 1), 129 (+1 -> 2); the rest is padding, code 0.
        assert_eq!(&m.bytes()[32..35], &[0b01, 0b10, 0]);
        let i = Int2Matrix::from_codes(1, 3, &[3, 0, 2], Scale::PerTensor(2.0)).unwrap();
        let m = CpuMatrix::from(&i);
        assert_eq!(&m.bytes()[..4], &[3, 0, 2, 0]);
        assert_eq!(
            (m.decode(), m.unit(), m.row_scales()),
            ((2, -3), 0.5, &[2.0][..])
        );
    }
}
