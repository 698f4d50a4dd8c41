//! Per-token int8 activation quantization into buffers reused across calls: bit for bit
//! [`crate::quant::quantize_activations_i8`], without its allocations and with a rounding the
//! compiler vectorizes (`f32::round_ties_even` is a libm call on baseline x86-64, which made
//! quantization ~5% of a decode step).

use crate::error::{Error, Result};
use crate::quant::ACT_EPS;

/// `1.5 * 2^23`: adding it to an f32 of magnitude below `2^22` rounds that value to the nearest
/// integer, ties to even (the default rounding mode of every f32 addition), and the sum's bits
/// minus this constant's bits are that integer.
const ROUND: f32 = 12_582_912.0;

/// Quantized activations `x[b, k] ~= q[b, k] * scale[b]`, reused across calls.
#[derive(Default)]
pub(crate) struct QuantBuf {
    pub q: Vec<i8>,
    pub scale: Vec<f32>,
}

impl QuantBuf {
    /// Quantizes `n` tokens of `cols` values each (`x.len() == n * cols`); an error if any is
    /// not finite, as [`crate::quant::quantize_activations_i8`].
    pub fn quantize(&mut self, x: &[f32], n: usize, cols: usize) -> Result<()> {
        debug_assert_eq!(x.len(), n * cols);
        self.q.resize(n * cols, 0);
        self.scale.resize(n, 0.0);
        for ((row, q), sc) in x
            .chunks_exact(cols)
            .zip(self.q.chunks_exact_mut(cols))
            .zip(&mut self.scale)
        {
            if !all_finite(row) {
                return Err(Error::Unsupported {
                    what: "activations",
                    detail: "a layer's input holds a non-finite value (the model diverged)".into(),
                });
            }
            let s = 127.0 / abs_max(row).max(ACT_EPS);
            // |v * s| <= 127 (+ one rounding), far below 2^22: `v * s + ROUND` is ROUND plus the
            // rounded integer, which its bits give as an offset from ROUND's bits.
            for (o, &v) in q.iter_mut().zip(row) {
                let i = (v * s + ROUND).to_bits() as i32 - ROUND.to_bits() as i32;
                *o = i.clamp(-128, 127) as i8;
            }
            *sc = 1.0 / s;
        }
        Ok(())
    }
}

/// Whether every value is finite, in eight lanes so the loop vectorizes.
fn all_finite(x: &[f32]) -> bool {
    let mut ok = [true; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().all(|v| v.is_finite());
    for c in chunks {
        for (o, v) in ok.iter_mut().zip(c) {
            *o &= v.abs() <= f32::MAX;
        }
    }
    tail && ok.iter().all(|&o| o)
}

/// `max |x|` of finite values, in eight lanes so the loop vectorizes.
fn abs_max(x: &[f32]) -> f32 {
    let mut m = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(0f32, |a, v| a.max(v.abs()));
    for c in chunks {
        for (m, v) in m.iter_mut().zip(c) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    m.iter().fold(tail, |a, &b| a.max(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_activations_i8;
    use rand::{Rng, SeedableRng};

    #[test]
    fn same_bytes_as_the_library_quantizer() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut buf = QuantBuf::default();
        for (n, cols) in [(1, 1), (3, 7), (2, 2560), (5, 333)] {
            let mut x: Vec<f32> = (0..n * cols)
                .map(|_| (rng.random::<f32>() - 0.5) * 10f32.powi(rng.random_range(-6..4)))
                .collect();
            // Exact ties after scaling: max 254 gives s = 0.5, so odd integers land on .5.
            x[0] = 254.0;
            if cols > 3 {
                x[1..4].copy_from_slice(&[1.0, 3.0, -5.0]);
            }
            buf.quantize(&x, n, cols).unwrap();
            let want = quantize_activations_i8(&x, n, cols).unwrap();
            assert_eq!(buf.q, want.q, "{n}x{cols}");
            assert_eq!(buf.scale, want.scale);
        }
        buf.quantize(&[0.0; 4], 1, 4).unwrap();
        assert_eq!(buf.q, [0; 4]);
        assert!(buf.quantize(&[1.0, f32::NAN], 1, 2).is_err());
        assert!(buf.quantize(&[1.0, f32::INFINITY], 1, 2).is_err());
    }
}
