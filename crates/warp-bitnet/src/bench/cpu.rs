//! CPU benchmark: the reference kernel on ternary and INT2 weights against a dense f32 GEMV.

use std::time::Instant;

use rand::Rng;
use rayon::prelude::*;

use super::{
    max_rel_err, median, random_int2_matrix, random_matrix, reference_f64, BenchRow, Shape,
};
use crate::cpu::reference;
use crate::error::Result;
use crate::PackedWeights;

/// Dense `y = W x` with row-major f32 `W` (`rows` x `cols`), rows spread over threads.
pub fn dense_gemv(w: &[f32], x: &[f32], y: &mut [f32]) {
    let cols = x.len();
    y.par_iter_mut().enumerate().for_each(|(r, o)| {
        *o = w[r * cols..(r + 1) * cols]
            .iter()
            .zip(x)
            .map(|(a, b)| a * b)
            .sum();
    });
}

/// Times the reference kernel (batch 1, f32) on random ternary and INT2 weights of
/// `shape`, each against a dense f32 GEMV of the same weights.
pub fn run_shape(shape: Shape, iters: usize, rng: &mut impl Rng) -> Result<Vec<BenchRow>> {
    let (rows, cols) = (shape.rows, shape.cols);
    let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect();
    let ternary = random_matrix(rng, rows, cols);
    let int2 = random_int2_matrix(rng, rows, cols);
    Ok(vec![
        time_format(shape, &ternary, "i2", &x, iters)?,
        time_format(shape, &int2, "int2", &x, iters)?,
    ])
}

fn time_format<W: PackedWeights>(
    shape: Shape,
    w: &W,
    format: &str,
    x: &[f32],
    iters: usize,
) -> Result<BenchRow> {
    let (rows, cols) = (shape.rows, shape.cols);
    let mut dense = vec![0f32; rows * cols];
    dense.par_chunks_mut(cols).enumerate().for_each_init(
        || vec![0i8; cols],
        |wrow, (r, row)| {
            w.unpack_row_into(r, wrow);
            for (o, &v) in row.iter_mut().zip(wrow.iter()) {
                *o = f32::from(v) * W::UNIT * w.scale().of_row(r);
            }
        },
    );
    let mut y = vec![0f32; rows];
    let mut y_dense = vec![0f32; rows];
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        f()?; // warm-up
        let mut t = Vec::with_capacity(iters);
        for _ in 0..iters {
            let start = Instant::now();
            f()?;
            t.push(start.elapsed().as_secs_f64() * 1e6);
        }
        Ok(median(&mut t))
    };
    let ours = time(&mut || reference::gemm(w, x, 1, None, &mut y))?;
    let base = time(&mut || {
        dense_gemv(&dense, x, &mut y_dense);
        Ok(())
    })?;
    let xf: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let want = reference_f64(w, &xf, 1, None);
    let bytes = (w.words().len() * 4 + 4 * (rows + cols)) as f64;
    Ok(BenchRow {
        shape: shape.name.into(),
        rows,
        cols,
        batch: 1,
        format: format.into(),
        activation: "f32".into(),
        backend: "cpu".into(),
        device: format!("{} threads", rayon::current_num_threads()),
        time_us: ours,
        baseline: "dense-f32".into(),
        baseline_us: base,
        speedup: base / ours,
        gbps: bytes / ours / 1e3,
        pct_copy_bw: 0.0,
        stream_us: 0.0,
        baseline_stream_us: 0.0,
        stream_speedup: 0.0,
        stream_pct_copy_bw: 0.0,
        max_rel_err: max_rel_err(y.iter().map(|&v| f64::from(v)), &want),
        kernel: "cpu::reference::gemm".into(),
    })
}
