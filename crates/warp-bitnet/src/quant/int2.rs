//! INT2 weight quantization: four levels {-1.5, -0.5, +0.5, +1.5} times a per-row scale.

use super::{check_finite, WEIGHT_EPS};
use crate::dtype::Activation;
use crate::error::{check_len, checked_elems, Error, Result};
use crate::format::{Int2Matrix, Scale};

/// How an INT2 row scale is chosen. Either way a weight takes the nearest level of
/// `W / s` (boundaries at -1, 0 and +1; a weight exactly on one goes to the upper level).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Int2Quant {
    /// `s = max(max|W_row|, 1e-5) / 1.5`: the largest weight lands on ±1.5.
    AbsMax,
    /// The `s` that minimizes `sum (W - s * level)^2` over the row, by alternating the two
    /// exact partial minimizations from the AbsMax start (Lloyd): levels = nearest for `s`,
    /// then `s = sum(W * level) / sum(level^2)`, until the levels stop changing (at most 100
    /// rounds). The error never increases from round to round; floor `1e-5 / 1.5`.
    #[default]
    Mse,
}

/// Most Lloyd rounds per row; Gaussian rows settle in about 10.
const MAX_ROUNDS: usize = 100;

/// Quantizes a dense row-major `rows` x `cols` matrix to INT2 with one scale per row.
pub fn quantize_int2<T: Activation>(
    w: &[T],
    rows: usize,
    cols: usize,
    method: Int2Quant,
) -> Result<Int2Matrix> {
    check_len("weights", checked_elems("weights", rows, cols)?, w.len())?;
    if w.is_empty() {
        return Err(Error::Empty { arg: "weights" });
    }
    check_finite("weights", w.iter().map(|v| v.to_f32()))?;
    let mut codes = vec![0u8; w.len()];
    let mut scales = Vec::with_capacity(rows);
    let floor = WEIGHT_EPS / 1.5;
    for (row, out) in w.chunks(cols).zip(codes.chunks_mut(cols)) {
        let row: Vec<f32> = row.iter().map(|v| v.to_f32()).collect();
        let mut s = (row.iter().fold(0f32, |m, v| m.max(v.abs())) / 1.5).max(floor);
        assign(&row, s, out);
        if method == Int2Quant::Mse {
            for _ in 0..MAX_ROUNDS {
                let (wl, ll) =
                    row.iter()
                        .zip(out.iter())
                        .fold((0f64, 0f64), |(wl, ll), (&v, &c)| {
                            let l = f64::from(c) - 1.5;
                            (wl + f64::from(v) * l, ll + l * l)
                        });
                s = ((wl / ll) as f32).max(floor);
                if !assign(&row, s, out) {
                    break;
                }
            }
        }
        scales.push(s);
    }
    Int2Matrix::from_codes(rows, cols, &codes, Scale::PerRow(scales))
}

/// The nearest-level code of each `v / s` into `out`; whether any code changed.
fn assign(row: &[f32], s: f32, out: &mut [u8]) -> bool {
    let mut changed = false;
    for (&v, o) in row.iter().zip(out.iter_mut()) {
        let c = nearest_code(v / s);
        changed |= c != *o;
        *o = c;
    }
    changed
}

/// The code of the level nearest to `v`: `clamp(floor(v) + 2, 0, 3)`.
#[inline]
fn nearest_code(v: f32) -> u8 {
    (v.floor() + 2.0).clamp(0.0, 3.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::PackedWeights;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn levels(m: &Int2Matrix) -> Vec<f32> {
        m.to_codes().iter().map(|&c| f32::from(c) - 1.5).collect()
    }

    #[test]
    fn absmax_matches_the_formula() {
        // s = 3 / 1.5 = 2: -3 -> -1.5 (level -1.5), -1 -> -0.5, 0 -> 0 (tie, up to +0.5),
        // 0.9 -> 0.45 (+0.5), 2.2 -> 1.1 (+1.5), 3 -> 1.5 (+1.5).
        let w = [-3.0f32, -1.0, 0.0, 0.9, 2.2, 3.0];
        let m = quantize_int2(&w, 1, 6, Int2Quant::AbsMax).unwrap();
        assert_eq!(m.scale(), &Scale::PerRow(vec![2.0]));
        assert_eq!(levels(&m), vec![-1.5, -0.5, 0.5, 0.5, 1.5, 1.5]);
    }

    #[test]
    fn mse_is_exact_on_the_grid() {
        // A row already on the grid of 0.3 is reproduced exactly.
        let w = [-0.45f32, -0.15, 0.15, 0.45, 0.15, -0.15];
        let m = quantize_int2(&w, 1, 6, Int2Quant::Mse).unwrap();
        let s = m.scale().of_row(0);
        assert!((s - 0.3).abs() < 1e-6, "{s}");
        assert_eq!(levels(&m), vec![-1.5, -0.5, 0.5, 1.5, 0.5, -0.5]);
    }

    /// Relative reconstruction error `|W - W_hat|^2 / |W|^2` on Gaussian rows.
    fn gaussian_error(method: Int2Quant, rows: usize, cols: usize) -> f64 {
        let mut rng = StdRng::seed_from_u64(7);
        // Box-Muller from two uniforms in (0, 1].
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| {
                let (u, v): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect();
        let m = quantize_int2(&w, rows, cols, method).unwrap();
        let lv = levels(&m);
        let (mut err, mut norm) = (0f64, 0f64);
        for (i, (&v, &l)) in w.iter().zip(&lv).enumerate() {
            let hat = l * m.scale().of_row(i / cols);
            err += f64::from(v - hat).powi(2);
            norm += f64::from(v).powi(2);
        }
        err / norm
    }

    #[test]
    fn gaussian_reconstruction_errors() {
        // The optimal 4-level uniform quantizer of a unit Gaussian has step 0.9957 and error
        // 0.1188 (Max, 1960); MSE must find it. AbsMax spends its range on the tails.
        let mse = gaussian_error(Int2Quant::Mse, 16, 4096);
        let absmax = gaussian_error(Int2Quant::AbsMax, 16, 4096);
        println!("relative error on N(0, 1) rows of 4096: mse {mse:.4}, absmax {absmax:.4}");
        assert!((mse - 0.1188).abs() < 0.004, "{mse}");
        assert!(absmax > mse);
    }

    #[test]
    fn zeros_and_bad_input() {
        let m = quantize_int2(&[0f32; 4], 1, 4, Int2Quant::Mse).unwrap();
        assert_eq!(m.scale(), &Scale::PerRow(vec![WEIGHT_EPS / 1.5]));
        assert!(matches!(
            quantize_int2(&[1.0f32, f32::NAN], 1, 2, Int2Quant::AbsMax),
            Err(Error::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            quantize_int2::<f32>(&[], 0, 4, Int2Quant::AbsMax),
            Err(Error::Empty { .. })
        ));
        assert!(quantize_int2(&[1.0f32; 3], 2, 2, Int2Quant::AbsMax).is_err());
        let m = quantize_int2(&[1.0f32; 3], 1, 3, Int2Quant::AbsMax).unwrap();
        assert_eq!(PackedWeights::cols(&m), 3);
    }
}
