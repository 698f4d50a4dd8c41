//! Plain-Rust dense matrix-vector products: the oracle of the SIMD versions and the fallback.

use super::Rows;

/// See [`super::matvec`].
pub fn matvec(w: Rows<'_>, x: &[f32], out: &mut [f32]) {
    let n = x.len();
    for (r, o) in out.iter_mut().enumerate() {
        let span = r * n..(r + 1) * n;
        *o = match w {
            Rows::F32(w) => dot(&w[span], x, |v| *v),
            Rows::F16(w) => dot(&w[span], x, |v| v.to_f32()),
            Rows::Bf16(w) => dot(&w[span], x, |v| v.to_f32()),
            Rows::I8(w) => dot(&w[span], x, |&v| f32::from(v)),
        };
    }
}

/// `sum_k f(w[k]) * x[k]` over 8 independent lanes, so the compiler can vectorize it.
fn dot<T>(w: &[T], x: &[f32], f: impl Fn(&T) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let (cw, cx) = (w.chunks_exact(8), x.chunks_exact(8));
    let tail: f32 = cw
        .remainder()
        .iter()
        .zip(cx.remainder())
        .map(|(a, b)| f(a) * b)
        .sum();
    for (a, b) in cw.zip(cx) {
        for i in 0..8 {
            acc[i] += f(&a[i]) * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
