//! Per-token absmax int8 activation quantization.

use super::check_finite;
use crate::dtype::Activation;
use crate::error::{check_len, checked_elems, Error, Result};

/// Floor on a token's absmax, so an all-zero token quantizes to zeros.
pub const ACT_EPS: f32 = 1e-5;

/// Quantized activations: `x[b, k] ~= q[b, k] * scale[b]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationQuant {
    /// Row-major `[batch, n]` int8 values.
    pub q: Vec<i8>,
    /// Per-token dequantization factor `1 / s`, with `s = 127 / max(max|x|, 1e-5)`.
    pub scale: Vec<f32>,
}

/// Per token `b`: `s = 127 / max(max_k |x[b, k]|, 1e-5)` (f32 division),
/// `q = clamp(round_half_even(x * s), -128, 127)`, and `scale[b] = 1 / s`.
///
/// The GPU kernel performs the same f32 operations, so both give identical bytes.
pub fn quantize_activations_i8<T: Activation>(
    x: &[T],
    batch: usize,
    n: usize,
) -> Result<ActivationQuant> {
    check_len(
        "activations",
        checked_elems("activations", batch, n)?,
        x.len(),
    )?;
    if x.is_empty() {
        return Err(Error::Empty { arg: "activations" });
    }
    check_finite("activations", x.iter().map(|v| v.to_f32()))?;
    let mut q = vec![0i8; batch * n];
    let mut scale = vec![0f32; batch];
    for ((row, qrow), sc) in x.chunks(n).zip(q.chunks_mut(n)).zip(&mut scale) {
        let amax = row.iter().fold(0f32, |m, v| m.max(v.to_f32().abs()));
        let s = 127.0 / amax.max(ACT_EPS);
        for (o, v) in qrow.iter_mut().zip(row) {
            *o = (v.to_f32() * s).round_ties_even().clamp(-128.0, 127.0) as i8;
        }
        *sc = 1.0 / s;
    }
    Ok(ActivationQuant { q, scale })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_formula() {
        let x = [1.0f32, -2.0, 0.5, 254.0, 1.0, 0.0];
        let a = quantize_activations_i8(&x, 2, 3).unwrap();
        // token 0: s = 63.5 -> 63.5, -127, 31.75 -> 64 (tie to even), -127, 32
        assert_eq!(&a.q[..3], &[64, -127, 32]);
        assert_eq!(a.scale[0], 1.0 / 63.5);
        // token 1: s = 0.5 -> 127, 0.5 -> 0 (tie to even), 0
        assert_eq!(&a.q[3..], &[127, 0, 0]);
    }

    #[test]
    fn zeros_and_huge_values() {
        let a = quantize_activations_i8(&[0f32; 4], 1, 4).unwrap();
        assert_eq!(a.q, vec![0; 4]);
        assert_eq!(a.scale, vec![1.0 / (127.0 / ACT_EPS)]);
        let a = quantize_activations_i8(&[1e30f32, 1.0], 1, 2).unwrap();
        assert_eq!(a.q, vec![127, 0]);
    }

    #[test]
    fn rejects_non_finite_and_empty() {
        assert!(matches!(
            quantize_activations_i8(&[0.0f32, f32::NEG_INFINITY], 1, 2),
            Err(Error::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            quantize_activations_i8::<f32>(&[], 0, 4),
            Err(Error::Empty { .. })
        ));
    }
}
