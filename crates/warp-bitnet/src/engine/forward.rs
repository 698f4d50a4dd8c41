//! The forward pass on the CPU (llama2.c's `forward`): one layer loop over the tokens of every
//! sequence in the batch at once, with the KV cache and every activation buffer allocated up front.
//!
//! Numerics follow transformers' float32 forward with BitNet layers: RMSNorm in f32, every
//! ternary linear layer quantizes its input per token to int8 (absmax) and multiplies through
//! the exact W2A8 product ([`w2a8`]), attention and softmax in f32.

use rayon::prelude::*;

use super::config::ModelConfig;
use super::weights::{Layer, Linear, Weights};
use crate::error::Result;
use crate::quant::quantize_activations_i8;

/// The KV cache: `slots` independent sequences of up to `max_context` tokens, f32.
pub(crate) struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    /// Tokens cached per slot.
    pub lens: Vec<usize>,
    slots: usize,
    max_context: usize,
    kv_dim: usize,
}

impl KvCache {
    pub fn new(c: &ModelConfig, slots: usize, max_context: usize) -> Result<Self> {
        let n = [c.num_layers, slots, max_context, c.kv_dim()]
            .iter()
            .try_fold(1usize, |a, &b| {
                crate::error::checked_elems("KV cache", a, b)
            })?;
        Ok(Self {
            k: vec![0.0; n],
            v: vec![0.0; n],
            lens: vec![0; slots],
            slots,
            max_context,
            kv_dim: c.kv_dim(),
        })
    }

    /// Offset of `(layer, slot, pos)`'s row.
    fn at(&self, layer: usize, slot: usize, pos: usize) -> usize {
        ((layer * self.slots + slot) * self.max_context + pos) * self.kv_dim
    }

    /// The cached keys and values of `slot` in `layer`, positions `0 .. len`.
    fn rows(&self, layer: usize, slot: usize, len: usize) -> (&[f32], &[f32]) {
        let (a, b) = (self.at(layer, slot, 0), self.at(layer, slot, len));
        (&self.k[a..b], &self.v[a..b])
    }
}

/// One token of the batch: which slot it extends and at which position.
#[derive(Clone, Copy)]
pub(crate) struct TokenPos {
    pub slot: usize,
    pub pos: usize,
}

/// A validated batch laid out as one list of tokens.
pub(crate) struct Plan {
    /// Token ids of every entry, concatenated.
    pub tokens: Vec<u32>,
    /// Slot and position of each token.
    pub at: Vec<TokenPos>,
    /// Index (into `tokens`) of each entry's last token: its logits are returned.
    pub last: Vec<usize>,
}

/// Activation buffers, grown to the largest batch seen and then reused.
#[derive(Default)]
pub(crate) struct RunState {
    x: Vec<f32>,
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    hb: Vec<f32>,
    hb2: Vec<f32>,
    normed: Vec<f32>,
}

impl RunState {
    fn reserve(&mut self, c: &ModelConfig, n: usize) {
        let widest = c.hidden_size.max(c.intermediate_size).max(c.q_dim());
        for (buf, width) in [
            (&mut self.x, c.hidden_size),
            (&mut self.xb, c.hidden_size),
            (&mut self.q, c.q_dim()),
            (&mut self.k, c.kv_dim()),
            (&mut self.v, c.kv_dim()),
            (&mut self.att, c.q_dim()),
            (&mut self.hb, c.intermediate_size),
            (&mut self.hb2, c.intermediate_size),
            (&mut self.normed, widest),
        ] {
            buf.resize(n * width, 0.0);
        }
    }
}

/// Runs the planned tokens through the model, appending their keys and values to the cache, and
/// writes the logits of each entry's last token to `logits` (`last.len() * vocab`). The caller
/// updates the slot lengths.
pub(crate) fn forward(
    c: &ModelConfig,
    w: &Weights,
    cache: &mut KvCache,
    s: &mut RunState,
    plan: &Plan,
    logits: &mut [f32],
) -> Result<()> {
    let Plan { tokens, at, last } = plan;
    let (n, h) = (tokens.len(), c.hidden_size);
    s.reserve(c, n);
    for (row, &t) in s.x.chunks_exact_mut(h).zip(tokens) {
        row.copy_from_slice(&w.embed[t as usize * h..(t as usize + 1) * h]);
    }
    for (l, layer) in w.layers.iter().enumerate() {
        attention_block(c, l, layer, cache, s, at)?;
        mlp_block(c, layer, s, n)?;
    }
    // Only the positions whose logits are wanted go through the final norm and the lm_head.
    for (i, &t) in last.iter().enumerate() {
        let out = &mut s.normed[..h];
        rmsnorm(&s.x[t * h..(t + 1) * h], &w.final_norm, c.rms_norm_eps, out);
        dense_matvec(
            w.lm_head(),
            out,
            &mut logits[i * c.vocab_size..(i + 1) * c.vocab_size],
        );
    }
    Ok(())
}

fn attention_block(
    c: &ModelConfig,
    l: usize,
    layer: &Layer,
    cache: &mut KvCache,
    s: &mut RunState,
    at: &[TokenPos],
) -> Result<()> {
    let (n, h, kvd) = (at.len(), c.hidden_size, c.kv_dim());
    rmsnorm_rows(
        &s.x[..n * h],
        &layer.attn_norm,
        c.rms_norm_eps,
        &mut s.xb[..n * h],
    );
    linear(
        c,
        &layer.q,
        &s.xb[..n * h],
        n,
        &mut s.q[..n * c.q_dim()],
        &mut s.normed,
    )?;
    linear(
        c,
        &layer.k,
        &s.xb[..n * h],
        n,
        &mut s.k[..n * kvd],
        &mut s.normed,
    )?;
    linear(
        c,
        &layer.v,
        &s.xb[..n * h],
        n,
        &mut s.v[..n * kvd],
        &mut s.normed,
    )?;
    let inv_freq = c.rope_scaling.inv_freq(c.head_dim, c.rope_theta);
    for (t, p) in at.iter().enumerate() {
        rope(
            &mut s.q[t * c.q_dim()..(t + 1) * c.q_dim()],
            c.head_dim,
            p.pos,
            &inv_freq,
        );
        rope(
            &mut s.k[t * kvd..(t + 1) * kvd],
            c.head_dim,
            p.pos,
            &inv_freq,
        );
        let o = cache.at(l, p.slot, p.pos);
        cache.k[o..o + kvd].copy_from_slice(&s.k[t * kvd..(t + 1) * kvd]);
        cache.v[o..o + kvd].copy_from_slice(&s.v[t * kvd..(t + 1) * kvd]);
    }
    let qd = c.q_dim();
    let cache = &*cache;
    s.att[..n * qd]
        .par_chunks_mut(c.head_dim)
        .enumerate()
        .for_each_init(Vec::new, |scores, (i, out)| {
            let (t, head) = (i / c.num_heads, i % c.num_heads);
            let p = at[t];
            let (k, v) = cache.rows(l, p.slot, p.pos + 1);
            let q = &s.q[t * qd + head * c.head_dim..][..c.head_dim];
            let kv_head = head / (c.num_heads / c.num_kv_heads);
            attend(q, k, v, kv_head * c.head_dim, kvd, scores, out);
        });
    if let Some(norm) = &layer.attn_sub_norm {
        rmsnorm_rows_in_place(&mut s.att[..n * qd], norm, c.rms_norm_eps);
    }
    linear(
        c,
        &layer.o,
        &s.att[..n * qd],
        n,
        &mut s.xb[..n * h],
        &mut s.normed,
    )?;
    add(&mut s.x[..n * h], &s.xb[..n * h]);
    Ok(())
}

fn mlp_block(c: &ModelConfig, layer: &Layer, s: &mut RunState, n: usize) -> Result<()> {
    let (h, m) = (c.hidden_size, c.intermediate_size);
    rmsnorm_rows(
        &s.x[..n * h],
        &layer.ffn_norm,
        c.rms_norm_eps,
        &mut s.xb[..n * h],
    );
    linear(
        c,
        &layer.gate,
        &s.xb[..n * h],
        n,
        &mut s.hb[..n * m],
        &mut s.normed,
    )?;
    linear(
        c,
        &layer.up,
        &s.xb[..n * h],
        n,
        &mut s.hb2[..n * m],
        &mut s.normed,
    )?;
    for (g, u) in s.hb[..n * m].iter_mut().zip(&s.hb2[..n * m]) {
        *g = c.hidden_act.apply(*g) * u;
    }
    if let Some(norm) = &layer.ffn_sub_norm {
        rmsnorm_rows_in_place(&mut s.hb[..n * m], norm, c.rms_norm_eps);
    }
    linear(
        c,
        &layer.down,
        &s.hb[..n * m],
        n,
        &mut s.xb[..n * h],
        &mut s.normed,
    )?;
    add(&mut s.x[..n * h], &s.xb[..n * h]);
    Ok(())
}

/// Softmax attention of one query head over `len` cached positions (`k`, `v`: `[len, kv_dim]`,
/// this head's columns at `col`), into `out`.
fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    col: usize,
    kv_dim: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let d = q.len();
    let scaling = (d as f32).powf(-0.5);
    scores.clear();
    scores.extend(
        k.chunks_exact(kv_dim)
            .map(|row| dot(q, &row[col..col + d]) * scaling),
    );
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0.0f32;
    for x in scores.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    out.fill(0.0);
    for (p, row) in scores.iter().zip(v.chunks_exact(kv_dim)) {
        let p = p / sum;
        for (o, &x) in out.iter_mut().zip(&row[col..col + d]) {
            *o += p * x;
        }
    }
}

/// A ternary linear layer on `n` tokens: optional activation RMSNorm, per-token int8 quantization,
/// the W2A8 product, bias.
fn linear(
    c: &ModelConfig,
    l: &Linear,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    let cols = l.w.cols();
    let input = match &l.norm {
        Some(norm) => {
            let normed = &mut scratch[..n * cols];
            rmsnorm_rows(x, norm, c.bitlinear.act_norm_eps, normed);
            &*normed
        }
        None => x,
    };
    let a = quantize_activations_i8(input, n, cols)?;
    w2a8(l, &a.q, &a.scale, n, out)?;
    if let Some(bias) = &l.bias {
        for row in out.chunks_exact_mut(l.w.rows()) {
            add(row, bias);
        }
    }
    Ok(())
}

/// THE ternary matrix product of the engine: `out[b, r] = (q[b] . W[r]) * x_scale[b] * scale`.
/// Every linear layer goes through here: the fast CPU kernels (bit-exact with
/// `cpu::reference::gemm_w2a8`), on the engine's threads.
fn w2a8(l: &Linear, q: &[i8], x_scale: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
    l.c2.gemm_w2a8::<f32>(q, x_scale, n, None, out, rayon::current_num_threads())
}

/// `out = W x` for a dense row-major `[rows, x.len()]` matrix (the lm_head), rows in parallel.
fn dense_matvec(w: &[f32], x: &[f32], out: &mut [f32]) {
    out.par_iter_mut()
        .zip(w.par_chunks_exact(x.len()))
        .for_each(|(o, row)| *o = dot(row, x));
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// transformers' RMSNorm in f32: `weight * (x * rsqrt(mean(x^2) + eps))`; the mean is summed in
/// f64 so it is the correctly rounded value whatever torch's summation order.
pub(crate) fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let ms = (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64) as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(weight) {
        *o = g * (v * r);
    }
}

fn rmsnorm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        rmsnorm(xr, weight, eps, or);
    }
}

fn rmsnorm_rows_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let mut tmp = vec![0f32; weight.len()];
    for row in x.chunks_exact_mut(weight.len()) {
        rmsnorm(row, weight, eps, &mut tmp);
        row.copy_from_slice(&tmp);
    }
}

/// Rotary embedding of every head in `x` at position `pos`, transformers' "rotate half" pairing
/// (element `i` with `i + head_dim / 2`) at angle `pos * inv_freq[i]` in f32 (`inv_freq` from
/// [`RopeScaling::inv_freq`](super::rope::RopeScaling::inv_freq)).
fn rope(x: &mut [f32], head_dim: usize, pos: usize, inv_freq: &[f32]) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &f) in inv_freq.iter().enumerate().take(half) {
            let angle = pos as f32 * f;
            let (sin, cos) = angle.sin_cos();
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos - b * sin;
            head[i + half] = b * cos + a * sin;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_matches_the_formula() {
        let x = [3.0f32, -4.0];
        let mut out = [0f32; 2];
        rmsnorm(&x, &[1.0, 2.0], 0.0, &mut out);
        // mean square 12.5 -> r = 1 / sqrt(12.5)
        let r = 1.0 / 12.5f32.sqrt();
        assert_eq!(out, [3.0 * r, 2.0 * (-4.0 * r)]);
    }

    #[test]
    fn rope_at_zero_is_identity_and_rotates_pairs() {
        let mut x = [0.3f32, -1.2, 0.7, 2.0];
        let orig = x;
        let inv_freq = super::super::rope::RopeScaling::None.inv_freq(4, 10_000.0);
        rope(&mut x, 4, 0, &inv_freq);
        assert_eq!(x, orig);
        let mut y = [1.0f32, 0.0, 0.0, 0.0];
        rope(&mut y, 4, 1, &inv_freq);
        // Pair (0, 2) at frequency 1: (cos 1, sin 1).
        assert!((y[0] - 1f32.cos()).abs() < 1e-7 && (y[2] - 1f32.sin()).abs() < 1e-7);
        assert_eq!((y[1], y[3]), (0.0, 0.0));
    }

    #[test]
    fn attention_over_one_position_returns_its_value() {
        let (q, k, v) = ([0.5f32, -1.0], [2.0f32, 1.0], [7.0f32, -3.0]);
        let mut out = [0f32; 2];
        attend(&q, &k, &v, 0, 2, &mut Vec::new(), &mut out);
        assert_eq!(out, v);
        // Two positions with equal scores average their values.
        let k2 = [1.0f32, 1.0, 1.0, 1.0];
        let v2 = [2.0f32, 4.0, 6.0, 8.0];
        attend(&[1.0, 0.0], &k2, &v2, 0, 2, &mut Vec::new(), &mut out);
        assert_eq!(out, [4.0, 6.0]);
    }
}
