//! Packed weight layouts. Every layout is specified byte by byte in docs/FORMATS.md.
//!
//! One matrix type, [`PackedMatrix`], holds any 2-bit format; a [`LevelCodec`] says what
//! its codes stand for ([`TernaryMatrix`] and [`Int2Matrix`] name the two codecs).

pub mod i2;
pub mod int2;
mod levels;
mod matrix;
pub mod tiled;

pub use levels::{Int2, LevelCodec, Levels, Ternary};
#[cfg(feature = "cuda")]
pub(crate) use matrix::{check_dims, check_max_dim};
pub use matrix::{Int2Matrix, PackedMatrix, PackedWeights, Scale, TernaryMatrix, MAX_DIM};
