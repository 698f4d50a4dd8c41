//! Timing of the fast CPU kernels on one shape, for kernel development on a shared machine:
//! prints the minimum and the median of many calls (the minimum is the closest to an
//! unshared core when other processes take time slices).
//!
//! `cargo run --release -p warp-bitnet --example cpu_micro -- ROWS COLS BATCH THREADS [ITERS] [cold]`
//!
//! With `cold` every call reads a different copy of the weights, rotating through more than
//! `bench::cpu::ROTATE_BYTES` (weights from DRAM); otherwise one copy stays hot in cache.

use std::time::Instant;

use warp_bitnet::bench::cpu::{dense_gemm, rotation};
use warp_bitnet::bench::{median, random_matrix};
use warp_bitnet::cpu::{CpuMatrix, Isa, Kernels};
use warp_bitnet::quant::quantize_activations_i8;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |i: usize, d: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(std::env::args().nth(i).map_or(Ok(d), |s| s.parse())?)
    };
    let (rows, cols, batch, threads, iters) = (
        arg(1, 2560)?,
        arg(2, 2560)?,
        arg(3, 1)?,
        arg(4, 1)?,
        arg(5, 2000)?,
    );
    let mut rng = rand::rng();
    let tm = random_matrix(&mut rng, rows, cols);
    let cold = std::env::args().nth(6).is_some_and(|s| s == "cold");
    let first = CpuMatrix::from(&tm);
    let copies = if cold {
        rotation(first.packed_bytes())
    } else {
        1
    };
    let ws: Vec<CpuMatrix> = (0..copies).map(|_| first.clone()).collect();
    let w = &first;
    let x: Vec<f32> = (0..batch * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let a = quantize_activations_i8(&x, batch, cols)?;
    let mut y = vec![0f32; batch * rows];
    for isa in Isa::available() {
        let k = Kernels::new(isa)?;
        let run = |name: &str,
                   f: &mut dyn FnMut() -> warp_bitnet::Result<()>|
         -> warp_bitnet::Result<()> {
            let n = if isa == Isa::Portable {
                iters / 10 + 1
            } else {
                iters
            };
            let mut t = Vec::with_capacity(n);
            for _ in 0..copies {
                f()?; // fault every copy in before timing
            }
            for _ in 0..n {
                let s = Instant::now();
                f()?;
                t.push(s.elapsed().as_secs_f64() * 1e6);
            }
            let min = t.iter().copied().fold(f64::MAX, f64::min);
            let gb = w.packed_bytes() as f64 / min / 1e3;
            println!(
                "{:>8} {name:>5} {rows}x{cols} b{batch} t{threads}{}: min {min:8.1} us ({gb:5.1} GB/s of weights), median {:8.1} us",
                isa.name(),
                if cold { " cold" } else { "" },
                median(&mut t)
            );
            Ok(())
        };
        let mut i = 0;
        run("w2a8", &mut || {
            i += 1;
            k.gemm_w2a8(
                &ws[i % copies],
                &a.q,
                &a.scale,
                batch,
                None,
                &mut y,
                threads,
            )
        })?;
        run("f32", &mut || {
            i += 1;
            k.gemm(&ws[i % copies], &x, batch, None, &mut y, threads)
        })?;
    }
    // The bench's dense f32 baseline on the same weights, hot as well.
    let mut dense = vec![0f32; rows * cols];
    let mut wrow = vec![0i8; cols];
    for (r, row) in dense.chunks_mut(cols).enumerate() {
        tm.unpack_row_into(r, &mut wrow);
        for (o, &v) in row.iter_mut().zip(&wrow) {
            *o = f32::from(v);
        }
    }
    let mut t = Vec::new();
    for _ in 0..iters / 10 + 1 {
        let s = Instant::now();
        dense_gemm(&dense, &x, batch, &mut y, threads)?;
        t.push(s.elapsed().as_secs_f64() * 1e6);
    }
    let min = t.iter().copied().fold(f64::MAX, f64::min);
    println!(
        "dense-f32 {rows}x{cols} b{batch} t{threads}: min {min:8.1} us ({:5.1} GB/s), median {:8.1} us",
        (rows * cols * 4) as f64 / min / 1e3,
        median(&mut t)
    );
    Ok(())
}
