//! The portable micro-kernels: plain Rust over the C2 layout. Also what non-x86 targets run.

use super::{Tile, BLOCK, BLOCK_BYTES};

/// See [`super::Micro::tile_i8`].
pub fn tile_i8(
    rows: &[u8],
    row_bytes: usize,
    tile: Tile,
    x: &[i8],
    stride: usize,
    acc: &mut [i32],
) {
    for (row, acc) in rows
        .chunks_exact(row_bytes)
        .zip(acc.chunks_mut(tile.tokens))
    {
        row_i8(row, x, stride, acc);
    }
}

/// One row at `acc.len()` tokens.
fn row_i8(row: &[u8], x: &[i8], stride: usize, acc: &mut [i32]) {
    for (t, a) in acc.iter_mut().enumerate() {
        let xt = &x[t * stride..];
        let mut sum = 0i32;
        for (blk, bytes) in row.chunks_exact(BLOCK_BYTES).enumerate() {
            let xb = &xt[blk * BLOCK..(blk + 1) * BLOCK];
            for (j, &byte) in bytes.iter().enumerate() {
                for p in 0..4 {
                    let u = i32::from((byte >> (2 * p)) & 3);
                    sum += u * i32::from(xb[32 * p + j]);
                }
            }
        }
        *a = sum;
    }
}

/// See [`super::Micro::row_f32`].
pub fn row_f32(row: &[u8], x: &[f32], stride: usize, (a, b): (f32, f32), acc: &mut [f32]) {
    for (t, out) in acc.iter_mut().enumerate() {
        let xt = &x[t * stride..];
        let mut sum = 0f32;
        for (blk, bytes) in row.chunks_exact(BLOCK_BYTES).enumerate() {
            let xb = &xt[blk * BLOCK..(blk + 1) * BLOCK];
            for p in 0..4 {
                for (j, &byte) in bytes.iter().enumerate() {
                    let w = a * f32::from((byte >> (2 * p)) & 3) + b;
                    sum += w * xb[32 * p + j];
                }
            }
        }
        *out = sum;
    }
}

/// See [`super::dot_f32`]: 16 independent lanes, so the compiler vectorizes it.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
