//! Simple, obviously correct CPU kernels: `Y[B, M] = (X[B, N] . Wtᵀ) * scale + bias`, for
//! ternary and INT2 weights ([`PackedWeights`]).
//!
//! Rows are spread over threads with rayon; each row is decoded once and used for
//! every token. Floating-point paths accumulate in `f32` in column order; the W2A8
//! path accumulates exactly in `i32`.

use rayon::prelude::*;

use crate::dtype::Activation;
use crate::error::{check_len, Result};
use crate::format::PackedWeights;

/// `y[b, r] = T(sum_k x[b, k] * w[r, k] * scale[r] + bias[r])` for `b < batch`.
///
/// `x` is `[batch, cols]`, `y` is `[batch, rows]`, `bias` is `[rows]`; all row-major.
pub fn gemm<T: Activation>(
    w: &impl PackedWeights,
    x: &[T],
    batch: usize,
    bias: Option<&[T]>,
    y: &mut [T],
) -> Result<()> {
    super::check_io(
        (w.rows(), w.cols()),
        x.len(),
        batch,
        bias.map(<[T]>::len),
        y.len(),
    )?;
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let unit = unit_of(w);
    let out = per_row(w, batch, |r, wrow, acc: &mut [f32]| {
        for (b, a) in acc.iter_mut().enumerate() {
            let xrow = &xf[b * w.cols()..(b + 1) * w.cols()];
            let dot: f32 = wrow
                .iter()
                .zip(xrow)
                .map(|(&wv, &xv)| f32::from(wv) * xv)
                .sum();
            // `unit` is 1 or 0.5: exact, so this is the sum of x * weight.
            *a = dot * unit * w.scale().of_row(r) + bias.map_or(0.0, |bv| bv[r].to_f32());
        }
    });
    scatter(&out, w.rows(), batch, y, T::from_f32);
    Ok(())
}

/// Exact `acc[b, r] = sum_k q[b, k] * w[r, k]` for int8 activations `q` (`[batch, cols]`),
/// `w` the decoded integers (for INT2, twice the levels).
pub fn gemm_i8_accumulate<W: PackedWeights>(w: &W, q: &[i8], batch: usize) -> Result<Vec<i32>> {
    W::LEVELS.check_w2a8_cols(w.cols())?;
    let y_len = batch.saturating_mul(w.rows());
    super::check_io((w.rows(), w.cols()), q.len(), batch, None, y_len)?;
    let out = per_row(w, batch, |_, wrow, acc: &mut [i32]| {
        for (b, a) in acc.iter_mut().enumerate() {
            let qrow = &q[b * w.cols()..(b + 1) * w.cols()];
            *a = wrow
                .iter()
                .zip(qrow)
                .map(|(&wv, &qv)| i32::from(wv) * i32::from(qv))
                .sum();
        }
    });
    let mut y = vec![0i32; batch * w.rows()];
    scatter(&out, w.rows(), batch, &mut y, |v| v);
    Ok(y)
}

/// W2A8: `y[b, r] = T(acc[b, r] * x_scale[b] * scale[r] + bias[r])`, `acc` as in
/// [`gemm_i8_accumulate`] and `x_scale` the per-token dequantization factor.
pub fn gemm_w2a8<T: Activation>(
    w: &impl PackedWeights,
    q: &[i8],
    x_scale: &[f32],
    batch: usize,
    bias: Option<&[T]>,
    y: &mut [T],
) -> Result<()> {
    super::check_io(
        (w.rows(), w.cols()),
        q.len(),
        batch,
        bias.map(<[T]>::len),
        y.len(),
    )?;
    check_len("x_scale", batch, x_scale.len())?;
    let acc = gemm_i8_accumulate(w, q, batch)?;
    let unit = unit_of(w);
    for (b, (yrow, arow)) in y.chunks_mut(w.rows()).zip(acc.chunks(w.rows())).enumerate() {
        for (r, (o, &a)) in yrow.iter_mut().zip(arow).enumerate() {
            let bv = bias.map_or(0.0, |bv| bv[r].to_f32());
            *o = T::from_f32((a as f32 * unit * x_scale[b]) * w.scale().of_row(r) + bv);
        }
    }
    Ok(())
}

fn unit_of<W: PackedWeights>(_: &W) -> f32 {
    W::UNIT
}

/// Runs `f(row, weights of row, out[batch])` over rows in parallel; returns `[rows, batch]`.
fn per_row<A, F>(w: &impl PackedWeights, batch: usize, f: F) -> Vec<A>
where
    A: Copy + Default + Send,
    F: Fn(usize, &[i8], &mut [A]) + Sync,
{
    let mut out = vec![A::default(); w.rows() * batch];
    out.par_chunks_mut(batch).enumerate().for_each_init(
        || vec![0i8; w.cols()],
        |wrow, (r, acc)| {
            w.unpack_row_into(r, wrow);
            f(r, wrow, acc);
        },
    );
    out
}

/// Transposes `[rows, batch]` into `[batch, rows]`, converting each element.
fn scatter<A: Copy, T>(src: &[A], rows: usize, batch: usize, y: &mut [T], conv: impl Fn(A) -> T) {
    for r in 0..rows {
        for b in 0..batch {
            y[b * rows + r] = conv(src[r * batch + b]);
        }
    }
}
