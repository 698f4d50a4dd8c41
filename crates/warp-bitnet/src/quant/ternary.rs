//! Ternary weight quantization.

use super::check_finite;
use crate::dtype::Activation;
use crate::error::{check_len, checked_elems, Error, Result};
use crate::format::{Scale, TernaryMatrix};

/// Floor on a scale, so an all-zero matrix or row quantizes to zeros instead of NaN.
pub const WEIGHT_EPS: f32 = 1e-5;

/// How weights are mapped to {-1, 0, +1} and a scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightQuant {
    /// BitNet b1.58: `gamma = max(mean(|W|), 1e-5)`, `Wt = clamp(round(W / gamma), -1, 1)`,
    /// scale `gamma` (per tensor). The mean is summed in `f64`.
    #[default]
    AbsMean,
    /// As [`WeightQuant::AbsMean`] with one `gamma` per output row.
    AbsMeanRow,
    /// The old project's variant: `s = max(max|W|, 1e-5)`, `Wt = clamp(round(W / s), -1, 1)`,
    /// scale `s`. Worse: only weights of at least half the largest magnitude survive,
    /// so most of the matrix becomes zero. Kept for compatibility.
    AbsMax,
}

/// Quantizes a dense row-major `rows` x `cols` matrix to ternary weights with a scale.
pub fn quantize_ternary<T: Activation>(
    w: &[T],
    rows: usize,
    cols: usize,
    method: WeightQuant,
) -> Result<TernaryMatrix> {
    check_len("weights", checked_elems("weights", rows, cols)?, w.len())?;
    if w.is_empty() {
        return Err(Error::Empty { arg: "weights" });
    }
    check_finite("weights", w.iter().map(|v| v.to_f32()))?;
    let absmean = |vals: &[T]| {
        let sum: f64 = vals.iter().map(|v| f64::from(v.to_f32().abs())).sum();
        ((sum / vals.len() as f64) as f32).max(WEIGHT_EPS)
    };
    let scale = match method {
        WeightQuant::AbsMean => Scale::PerTensor(absmean(w)),
        WeightQuant::AbsMeanRow => Scale::PerRow(w.chunks(cols).map(absmean).collect()),
        WeightQuant::AbsMax => {
            let max = w.iter().fold(0f32, |m, v| m.max(v.to_f32().abs()));
            Scale::PerTensor(max.max(WEIGHT_EPS))
        }
    };
    let ternary: Vec<i8> = w
        .iter()
        .enumerate()
        .map(|(i, v)| round_ternary(v.to_f32() / scale.of_row(i / cols)))
        .collect();
    TernaryMatrix::from_ternary(rows, cols, &ternary, scale)
}

/// `clamp(round_half_even(v), -1, 1)`.
#[inline]
fn round_ternary(v: f32) -> i8 {
    v.round_ties_even().clamp(-1.0, 1.0) as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absmean_matches_the_formula() {
        // mean |W| = (0.5 + 1.5 + 0.25 + 2.0) / 4 = 1.0625
        let w = [0.5f32, -1.5, 0.25, 2.0];
        let m = quantize_ternary(&w, 2, 2, WeightQuant::AbsMean).unwrap();
        assert_eq!(m.scale(), &Scale::PerTensor(1.0625));
        // 0.47 -> 0, -1.41 -> -1, 0.235 -> 0, 1.88 -> 1 (clamped from 2)
        assert_eq!(m.to_ternary(), vec![0, -1, 0, 1]);
    }

    #[test]
    fn ties_round_to_even() {
        // gamma = mean |W| = 1: 0.5 and -0.5 are ties and go to the even 0; 2.0 clamps to 1.
        let w = [0.5f32, -0.5, 1.0, 2.0];
        let m = quantize_ternary(&w, 1, 4, WeightQuant::AbsMean).unwrap();
        assert_eq!(m.to_ternary(), vec![0, 0, 1, 1]);
    }

    #[test]
    fn zeros_quantize_to_zeros_with_the_floor_scale() {
        let m = quantize_ternary(&[0f32; 6], 2, 3, WeightQuant::AbsMeanRow).unwrap();
        assert_eq!(m.scale(), &Scale::PerRow(vec![WEIGHT_EPS; 2]));
        assert!(m.to_ternary().iter().all(|&v| v == 0));
    }

    #[test]
    fn absmax_keeps_only_large_weights() {
        let w = [4.0f32, 1.9, -2.0, 2.1];
        let m = quantize_ternary(&w, 1, 4, WeightQuant::AbsMax).unwrap();
        assert_eq!(m.scale(), &Scale::PerTensor(4.0));
        assert_eq!(m.to_ternary(), vec![1, 0, 0, 1]); // -0.5 ties to 0
    }

    #[test]
    fn non_finite_is_rejected() {
        let err = quantize_ternary(&[1.0f32, f32::NAN], 1, 2, WeightQuant::AbsMean).unwrap_err();
        assert!(matches!(err, Error::NonFinite { index: 1, .. }));
        let err = quantize_ternary(&[f32::INFINITY], 1, 1, WeightQuant::AbsMax).unwrap_err();
        assert!(matches!(err, Error::NonFinite { index: 0, .. }));
    }
}
