//! Comparing two engines' logits: shared by the GPU engine tests (tests/engine_gpu.rs) and the
//! dense-bf16 engine's tests (src/cuda/engine/dense_tests.rs, which include this file by path).

/// `||got - want|| / ||want||` (L2, in f64).
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let (mut e, mut n) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        e += f64::from(g - w).powi(2);
        n += f64::from(*w).powi(2);
    }
    (e / n).sqrt() as f32
}

/// The oracle's pick, and whether it is clear of the tested path's deviation: the oracle's top
/// two logits further apart than twice the largest |got - want| of this step (then the tested
/// path's argmax must be the same token; a closer call is a tie within the tolerance and either
/// pick is right).
pub fn clear_pick(want: &[f32], got: &[f32]) -> (u32, bool) {
    let mut idx: Vec<usize> = (0..want.len()).collect();
    idx.sort_by(|&a, &b| want[b].total_cmp(&want[a]).then(a.cmp(&b)));
    let dev = want
        .iter()
        .zip(got)
        .fold(0f32, |m, (w, g)| m.max((w - g).abs()));
    (idx[0] as u32, want[idx[0]] - want[idx[1]] > 2.0 * dev)
}

/// The first index of the largest value (the greedy sampler's pick).
pub fn argmax(x: &[f32]) -> u32 {
    let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
    for (i, &v) in x.iter().enumerate() {
        if v > best_v {
            (best, best_v) = (i, v);
        }
    }
    best as u32
}
