//! Dense float matrices as a checkpoint stores them (f32, f16, bf16), or quantized to int8
//! per row: the engine's embedding and lm_head, read without widening the whole matrix to
//! f32 (which would double or quadruple the bytes every decode step reads).
//!
//! ```
//! use warp_bitnet::cpu::dense::DenseMatrix;
//!
//! let m = DenseMatrix::bf16_from_f32(2, 3, &[1.0, 2.0, 3.0, -1.0, 0.5, 0.0])?;
//! let mut y = [0f32; 2];
//! m.gemv(&[1.0, 1.0, 2.0], &mut y, 1)?;
//! assert_eq!(y, [9.0, -0.5]);
//! let q = m.quantize_i8_rows();
//! q.gemv(&[1.0, 1.0, 2.0], &mut y, 1)?;
//! assert!((y[0] - 9.0).abs() < 0.05);
//! # Ok::<(), warp_bitnet::Error>(())
//! ```

use half::{bf16, f16};

use super::arch::dense::{matvec, Rows};
use super::pool::{resolve_threads, run_parts};
use crate::error::{check_len, checked_elems, Error, Result};

/// The stored elements of a [`DenseMatrix`].
#[derive(Clone, Debug, PartialEq)]
pub enum DenseData {
    /// `f32`.
    F32(Vec<f32>),
    /// IEEE half precision.
    F16(Vec<f16>),
    /// bfloat16.
    Bf16(Vec<bf16>),
    /// Signed 8-bit values `q` with one scale per row: element `(r, k)` is `q[r, k] * scale[r]`.
    I8 {
        /// Row-major values.
        q: Vec<i8>,
        /// One per row.
        scale: Vec<f32>,
    },
}

/// A row-major `rows x cols` dense matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseMatrix {
    rows: usize,
    cols: usize,
    data: DenseData,
}

impl DenseMatrix {
    /// Wraps `data`, checking it holds `rows * cols` elements (and `rows` scales for int8).
    pub fn new(rows: usize, cols: usize, data: DenseData) -> Result<Self> {
        let n = checked_elems("dense matrix", rows, cols)?;
        let len = match &data {
            DenseData::F32(v) => v.len(),
            DenseData::F16(v) => v.len(),
            DenseData::Bf16(v) => v.len(),
            DenseData::I8 { q, scale } => {
                check_len("scale", rows, scale.len())?;
                q.len()
            }
        };
        check_len("dense matrix data", n, len)?;
        if rows == 0 || cols == 0 {
            return Err(Error::Empty {
                arg: "dense matrix",
            });
        }
        Ok(Self { rows, cols, data })
    }

    /// `values` rounded to bf16 (what a bf16 checkpoint holds).
    pub fn bf16_from_f32(rows: usize, cols: usize, values: &[f32]) -> Result<Self> {
        let v = values.iter().map(|&x| bf16::from_f32(x)).collect();
        Self::new(rows, cols, DenseData::Bf16(v))
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The stored elements.
    pub fn data(&self) -> &DenseData {
        &self.data
    }

    /// The element type's name: `"f32"`, `"f16"`, `"bf16"` or `"int8"`.
    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            DenseData::F32(_) => "f32",
            DenseData::F16(_) => "f16",
            DenseData::Bf16(_) => "bf16",
            DenseData::I8 { .. } => "int8",
        }
    }

    /// Bytes a matrix-vector product reads (elements and per-row scales).
    pub fn bytes(&self) -> usize {
        let n = self.rows * self.cols;
        match &self.data {
            DenseData::F32(_) => 4 * n,
            DenseData::F16(_) | DenseData::Bf16(_) => 2 * n,
            DenseData::I8 { .. } => n + 4 * self.rows,
        }
    }

    /// Row `r` widened to f32 into `out` (`cols` elements): an embedding lookup.
    pub fn row_into(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows {
            return Err(Error::TooLarge {
                arg: "row",
                value: r as u64,
                limit: self.rows.saturating_sub(1) as u64,
            });
        }
        check_len("row output", self.cols, out.len())?;
        let span = r * self.cols..(r + 1) * self.cols;
        match &self.data {
            DenseData::F32(v) => out.copy_from_slice(&v[span]),
            DenseData::F16(v) => widen(&v[span], out, |x| x.to_f32()),
            DenseData::Bf16(v) => widen(&v[span], out, |x| x.to_f32()),
            DenseData::I8 { q, scale } => widen(&q[span], out, |&x| f32::from(x) * scale[r]),
        }
        Ok(())
    }

    /// Each row quantized to int8 by its absolute maximum (`scale = max|w| / 127`, values
    /// rounded to nearest): a quarter of f32's bytes, half of bf16's; each weight is off by at
    /// most half a step, `max|w| / 254` of its row.
    pub fn quantize_i8_rows(&self) -> DenseMatrix {
        let mut row = vec![0f32; self.cols];
        let mut q = Vec::with_capacity(self.rows * self.cols);
        let mut scale = Vec::with_capacity(self.rows);
        for r in 0..self.rows {
            self.row_into(r, &mut row).expect("r < rows");
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            q.extend(
                row.iter()
                    .map(|v| (v / s).round().clamp(-127.0, 127.0) as i8),
            );
            scale.push(s);
        }
        DenseMatrix {
            rows: self.rows,
            cols: self.cols,
            data: DenseData::I8 { q, scale },
        }
    }

    /// `y = W x` in f32 accumulation, rows split across `threads` (0: the default count, as
    /// for the ternary kernels).
    pub fn gemv(&self, x: &[f32], y: &mut [f32], threads: usize) -> Result<()> {
        check_len("x", self.cols, x.len())?;
        check_len("y", self.rows, y.len())?;
        let threads = resolve_threads(threads)?;
        // Parts on 64-row boundaries so no two threads write one cache line of `y`.
        let per = self.rows.div_ceil(threads).div_ceil(64) * 64;
        let parts: Vec<_> = y.chunks_mut(per).enumerate().collect();
        run_parts(parts, |(i, out)| {
            let r0 = i * per;
            let span = r0 * self.cols..(r0 + out.len()) * self.cols;
            match &self.data {
                DenseData::F32(v) => matvec(Rows::F32(&v[span]), x, out),
                DenseData::F16(v) => matvec(Rows::F16(&v[span]), x, out),
                DenseData::Bf16(v) => matvec(Rows::Bf16(&v[span]), x, out),
                DenseData::I8 { q, scale } => {
                    matvec(Rows::I8(&q[span]), x, out);
                    for (o, s) in out.iter_mut().zip(&scale[r0..]) {
                        *o *= s;
                    }
                }
            }
        })
    }
}

fn widen<T>(src: &[T], out: &mut [f32], f: impl Fn(&T) -> f32) {
    for (o, v) in out.iter_mut().zip(src) {
        *o = f(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::arch::dense::portable;
    use rand::{Rng, SeedableRng};

    fn random(rows: usize, cols: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let w = (0..rows * cols)
            .map(|_| rng.random::<f32>() * 4.0 - 2.0)
            .collect();
        let x = (0..cols).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        (w, x)
    }

    /// The dispatched kernel against the portable one and an f64 sum, every type, odd
    /// shapes (tails of 1-31 columns, rows not a multiple of the thread split).
    #[test]
    fn gemv_matches_the_oracle_for_every_type() {
        for (i, &(rows, cols)) in [(1, 1), (3, 7), (67, 33), (130, 100), (200, 257)]
            .iter()
            .enumerate()
        {
            let (w, x) = random(rows, cols, i as u64);
            let mats = [
                DenseMatrix::new(rows, cols, DenseData::F32(w.clone())).unwrap(),
                DenseMatrix::new(
                    rows,
                    cols,
                    DenseData::F16(w.iter().map(|&v| f16::from_f32(v)).collect()),
                )
                .unwrap(),
                DenseMatrix::bf16_from_f32(rows, cols, &w).unwrap(),
            ];
            for m in mats.iter().chain([&mats[2].quantize_i8_rows()]) {
                for threads in [1, 2, 3] {
                    let mut y = vec![f32::NAN; rows];
                    m.gemv(&x, &mut y, threads).unwrap();
                    let mut want = vec![f32::NAN; rows];
                    let mut row = vec![0f32; cols];
                    for (r, wv) in want.iter_mut().enumerate() {
                        m.row_into(r, &mut row).unwrap();
                        let exact: f64 = row.iter().zip(&x).map(|(a, b)| f64::from(a * b)).sum();
                        let mag: f64 = row
                            .iter()
                            .zip(&x)
                            .map(|(a, b)| f64::from((a * b).abs()))
                            .sum();
                        // f32 accumulation in any order: within cols * 2^-24 of the magnitude,
                        // plus the int8 rows' final scaling rounding.
                        let tol = mag * cols as f64 * 2f64.powi(-24) + 1e-6 * exact.abs();
                        assert!(
                            (f64::from(y[r]) - exact).abs() <= tol,
                            "{} {rows}x{cols} t{threads} row {r}: {} vs {exact}",
                            m.dtype_name(),
                            y[r]
                        );
                        *wv = exact as f32;
                    }
                    // The portable kernel computes the same unscaled sums.
                    if !matches!(m.data, DenseData::I8 { .. }) {
                        let mut p = vec![f32::NAN; rows];
                        let rows_of = match &m.data {
                            DenseData::F32(v) => Rows::F32(v),
                            DenseData::F16(v) => Rows::F16(v),
                            DenseData::Bf16(v) => Rows::Bf16(v),
                            DenseData::I8 { q, .. } => Rows::I8(q),
                        };
                        portable::matvec(rows_of, &x, &mut p);
                        for (a, b) in p.iter().zip(&want) {
                            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn int8_rows_are_within_half_a_step() {
        let (w, _) = random(5, 300, 9);
        let m = DenseMatrix::new(5, 300, DenseData::F32(w.clone())).unwrap();
        let q = m.quantize_i8_rows();
        let mut row = vec![0f32; 300];
        for r in 0..5 {
            q.row_into(r, &mut row).unwrap();
            let src = &w[r * 300..(r + 1) * 300];
            let amax = src.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (a, b) in row.iter().zip(src) {
                assert!((a - b).abs() <= amax / 254.0 * 1.0001);
            }
        }
        assert_eq!(q.bytes(), 5 * 300 + 5 * 4);
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(DenseMatrix::new(2, 3, DenseData::F32(vec![0.5; 5])).is_err());
        assert!(DenseMatrix::new(0, 3, DenseData::F32(vec![])).is_err());
        let m = DenseMatrix::bf16_from_f32(2, 3, &[1.0; 6]).unwrap();
        assert!(m.gemv(&[1.0; 2], &mut [0.0; 2], 1).is_err());
        assert!(m.gemv(&[1.0; 3], &mut [0.0; 3], 1).is_err());
        assert!(m.row_into(2, &mut [0.0; 3]).is_err());
    }
}
