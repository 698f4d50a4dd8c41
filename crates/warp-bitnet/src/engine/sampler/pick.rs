//! The sampling algorithm, specified here once; the CPU implements it below, engine.cu's
//! `sample_f32` on a GPU, and both give the same token for the same logits, draw and history.
//!
//! # The algorithm
//! Inputs: logits `x[0..n)` (f32), the history's set of distinct token ids, and a [`Draw`]:
//! temperature `t >= 0`, `top_k` (0 = all), `top_p24` (top_p in 2^-24 units rounded up),
//! repetition penalty `r > 0`, and the RNG's `(seed, stream, step)`.
//! 1. **Penalty** (CTRL, once per distinct history token `i < n`): `x[i] = x[i] / r` if
//!    `x[i] > 0`, else `x[i] * r` (f32, rounded; NaN stays NaN).
//! 2. **Greedy**: if `t == 0`, or the largest non-NaN logit is infinite, the token is the first
//!    index of the largest non-NaN logit (0 if none exceeds -inf). NaN is never picked.
//! 3. **Candidates**: the non-NaN tokens (none: token 0), ordered by (logit descending in
//!    `f32::total_cmp` order, so -0 < +0; then token id ascending): a total order.
//! 4. **Top-k**: if `0 < top_k <` candidates, keep the first `top_k` in that order. As a
//!    threshold: the k-th candidate `(v_k, i_k)`; keep `x > v_k`, and `x == v_k` with `id <= i_k`.
//! 5. **Weights**: `m` = the largest logit; each kept token weighs
//!    `q = floor(min(exp_neg((x - m) / t), 1) * 2^s)`, an integer, with `s = 63 - bits(n)`
//!    (so that the sum stays below 2^63) and `exp_neg` the polynomial of [`super::bits`]: every
//!    float operation is one IEEE-rounded `+ - * /`, so both devices compute the same `q`.
//!    Total `S`.
//! 6. **Top-p**: `target = ceil(top_p24 * S / 2^24)`; keep the shortest prefix, in the order of
//!    3, of the kept tokens whose weight reaches `target` (skipped when `target == S`: the
//!    prefix then only drops zero weights, which are never drawn).
//! 7. **Draw**: `u = draw_bits(seed, stream, step)`, `r = floor(u * S' / 2^64)` with `S'` the
//!    kept weight; the token is the first kept token, **in token-id order**, whose running sum
//!    of weights exceeds `r` (a GPU finds it with a block prefix sum, no sort).
//!
//! The kept sets are exact: top-k compares logits only; top-p and the draw add integers, so no
//! summation order (sequential here, a tree on a GPU) changes a sum. The one place where two
//! implementations could part is a float operation computed differently; step 5 has only
//! correctly rounded operations (CUDA's `__fadd_rn` & co. forbid FMA contraction). The price
//! of the fixed point: a weight below 2^-s of the largest (2^-46 for 128K tokens, i.e. a logit
//! more than ~32 t below the maximum) is 0 and never drawn, and top_p moves by < 6e-8.
//!
//! Finding the thresholds without a full sort: [`boundary`] narrows the candidates by radix
//! passes over their order keys (weight per digit, walked from the top to the digit where the
//! running weight reaches the target) and sorts only the few that remain. The GPU finds the
//! same boundary with four 8-bit radix passes and a block scan over the ties in id order.

use super::bits::{draw_bits, mass_target, order_key, scale_draw, weight_q, weight_shift};

/// One draw's parameters (the GPU kernel's per-row `SampleRow`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Draw {
    pub temperature: f32,
    /// 0: all.
    pub top_k: u32,
    /// top_p in 2^-24 units, rounded up, in `[1, 2^24]`.
    pub top_p24: u32,
    pub penalty: f32,
    pub seed: u64,
    pub stream: u64,
    pub step: u64,
}

impl Draw {
    /// The argmax, with no penalty (a row whose token is not drawn).
    pub const GREEDY: Draw = Draw {
        temperature: 0.0,
        top_k: 0,
        top_p24: 1 << 24,
        penalty: 1.0,
        seed: 0,
        stream: 0,
        step: 0,
    };
}

/// A candidate: its order key, token id and weight (1 while counting for top-k).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cand {
    pub key: u32,
    pub id: u32,
    pub w: u64,
}

/// Whether `c` comes no later than the boundary `(key, id)` in the order of step 3.
fn within(c: &Cand, (key, id): (u32, u32)) -> bool {
    c.key > key || (c.key == key && c.id <= id)
}

/// CTRL's penalty on `x` (step 1).
pub(crate) fn penalize(x: f32, penalty: f32) -> f32 {
    if x > 0.0 {
        x / penalty
    } else {
        x * penalty
    }
}

/// Step 1 for a history given as a bitmap (bit `i % 32` of word `i / 32` set for token `i`).
pub(crate) fn penalize_bits(logits: &mut [f32], bits: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    for (w, &word) in bits.iter().enumerate() {
        let mut rest = word;
        while rest != 0 {
            let i = w * 32 + rest.trailing_zeros() as usize;
            rest &= rest - 1;
            if let Some(x) = logits.get_mut(i) {
                *x = penalize(*x, penalty);
            }
        }
    }
}

/// Step 1 for a history given as a token list (duplicates count once).
pub(crate) fn penalize_tokens(logits: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = history.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for t in seen {
        if let Some(x) = logits.get_mut(t as usize) {
            *x = penalize(*x, penalty);
        }
    }
}

/// The first index of the largest non-NaN value (0 if none exceeds -inf).
pub(crate) fn argmax(x: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// Steps 2-7 on penalized logits; `cands` is scratch space kept between calls.
pub(crate) fn pick(logits: &[f32], d: &Draw, cands: &mut Vec<Cand>) -> u32 {
    let total = match keep(logits, d, cands) {
        Ok(total) => total,
        Err(token) => return token,
    };
    let r = scale_draw(draw_bits(d.seed, d.stream, d.step), total);
    let mut run = 0u64;
    for c in cands.iter() {
        run += c.w;
        if run > r {
            return c.id;
        }
    }
    unreachable!("the running sum reaches the total, which exceeds the draw")
}

/// Steps 2-6: leaves the kept candidates in `cands` in id order with their weights and returns
/// their total weight (> 0), or `Err(token)` where step 2 or an empty candidate set decides.
pub(crate) fn keep(
    logits: &[f32],
    d: &Draw,
    cands: &mut Vec<Cand>,
) -> std::result::Result<u64, u32> {
    if d.temperature == 0.0 {
        return Err(argmax(logits));
    }
    cands.clear();
    let mut max = f32::NEG_INFINITY;
    for (i, &x) in logits.iter().enumerate() {
        if !x.is_nan() {
            cands.push(Cand {
                key: order_key(x),
                id: i as u32,
                w: 1,
            });
            max = max.max(x);
        }
    }
    if cands.is_empty() {
        return Err(0);
    }
    if max.is_infinite() {
        return Err(argmax(logits));
    }
    if d.top_k > 0 && (d.top_k as usize) < cands.len() {
        let b = boundary(cands, u64::from(d.top_k));
        cands.retain(|c| within(c, b));
    }
    let shift = weight_shift(logits.len());
    let mut total = 0u64;
    for c in cands.iter_mut() {
        c.w = weight_q(logits[c.id as usize], max, d.temperature, shift);
        total += c.w;
    }
    let target = mass_target(total, d.top_p24);
    if target < total {
        let b = boundary(cands, target);
        cands.retain(|c| within(c, b));
        total = cands.iter().map(|c| c.w).sum();
    }
    Ok(total)
}

/// The first candidate, in the order of step 3, at which the running weight reaches `target`
/// (`0 < target <=` the total weight), as `(key, id)`: radix passes of 11, 11 and 10 key bits
/// narrow the candidates to those sharing the boundary's key prefix (weights per digit, walked
/// from the top), until few enough remain to sort.
fn boundary(cands: &[Cand], target: u64) -> (u32, u32) {
    const SORT_BELOW: usize = 256;
    let mut above = 0u64;
    let mut set: Vec<Cand> = Vec::new();
    let mut narrowed = false;
    for (shift, bits) in [(21u32, 11u32), (10, 11), (0, 10)] {
        let cur: &[Cand] = if narrowed { &set } else { cands };
        if cur.len() <= SORT_BELOW {
            break;
        }
        let digit = |c: &Cand| ((c.key >> shift) & ((1 << bits) - 1)) as usize;
        let mut hist = [0u64; 1 << 11];
        for c in cur {
            hist[digit(c)] += c.w;
        }
        let mut d = (1usize << bits) - 1;
        while d > 0 && above + hist[d] < target {
            above += hist[d];
            d -= 1;
        }
        set = cur.iter().filter(|c| digit(c) == d).copied().collect();
        narrowed = true;
    }
    if !narrowed {
        set = cands.to_vec();
    }
    set.sort_unstable_by(|a, b| b.key.cmp(&a.key).then(a.id.cmp(&b.id)));
    for c in &set {
        above += c.w;
        if above >= target {
            return (c.key, c.id);
        }
    }
    unreachable!("the remaining candidates' weight reaches the target")
}

#[cfg(test)]
pub(crate) mod oracle {
    //! The algorithm the slow way, by a full sort: the tests' oracle for the kept sets.
    use super::super::bits::exp_neg;
    use super::*;

    /// The kept tokens after steps 3-6 (in id order) and their weights, or `None` where step 2
    /// decides (greedy, infinite maximum, no candidate).
    pub(crate) fn kept(logits: &[f32], d: &Draw) -> Option<Vec<(u32, u64)>> {
        let mut c: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, x)| !x.is_nan())
            .map(|(i, &x)| (x, i as u32))
            .collect();
        let max = c.iter().map(|p| p.0).fold(f32::NEG_INFINITY, f32::max);
        if d.temperature == 0.0 || c.is_empty() || max.is_infinite() {
            return None;
        }
        c.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        if d.top_k > 0 {
            c.truncate(d.top_k as usize);
        }
        let shift = weight_shift(logits.len());
        let w: Vec<u64> = c
            .iter()
            .map(|&(x, _)| {
                let e = exp_neg((x - max) / d.temperature).min(1.0);
                (e * 2f32.powi(shift as i32)) as u64
            })
            .collect();
        let total: u64 = w.iter().sum();
        let target = mass_target(total, d.top_p24);
        let mut keep = c.len();
        if target < total {
            let mut run = 0;
            keep = w.iter().position(|&q| {
                run += q;
                run >= target
            })? + 1;
        }
        let mut out: Vec<(u32, u64)> = c[..keep].iter().map(|p| p.1).zip(w).collect();
        out.sort_unstable();
        Some(out)
    }
}
