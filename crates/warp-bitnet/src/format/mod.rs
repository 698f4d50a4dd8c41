//! Packed weight layouts. Every layout is specified byte by byte in docs/FORMATS.md.

pub mod i2;
mod matrix;
pub mod tiled;

pub use matrix::{Scale, TernaryMatrix, MAX_DIM};
