//! The forward pass on the CPU (llama2.c's `forward`): one layer loop over the tokens of every
//! sequence in the batch at once, with the KV cache and every activation buffer allocated up front.
//!
//! Numerics follow transformers' float32 forward with BitNet layers: RMSNorm in f32, every
//! ternary linear layer quantizes its input per token to int8 (absmax) and multiplies through
//! the exact W2A8 product ([`w2a8`]), attention and softmax in f32, the lm_head in f32
//! arithmetic over its stored f32/f16/bf16 weights (exact widening, so the same products as
//! transformers' float32 forward of that checkpoint), or int8 rows if asked for.
//!
//! Threads: the caller's thread runs the layer loop; the ternary kernels, the lm_head and the
//! attention split their work into `threads` parts on the CPU kernels' pool
//! ([`crate::cpu::pool`]), the one pool of the process, so no second set of threads competes
//! for the cores. Norms, quantization, RoPE and residuals are O(hidden) per token and run on
//! the calling thread: waking a worker (~5-20 µs) costs more than they do.

use super::act_quant::QuantBuf;
use super::config::ModelConfig;
use super::kv_cache::KvCache;
use super::profile::{Clock, Phase};
use super::weights::{Layer, Linear, Weights};
use crate::cpu::pool::run_parts;
use crate::error::Result;

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
    /// Each token's RoPE `(cos, sin)` pairs, `head_dim / 2` per token.
    rope: Vec<(f32, f32)>,
    /// Scratch of the linear layers and norms, and the clock.
    pub w: Work,
}

/// What every phase uses besides its input and output.
#[derive(Default)]
pub(crate) struct Work {
    /// A normed copy of an input (activation norms, in-place norms, the final norm).
    normed: Vec<f32>,
    /// The int8 activations of the current linear layers' input.
    quant: QuantBuf,
    /// Time per phase, summed over calls ([`super::Engine::phase_times`]).
    pub clock: Clock,
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
            (&mut self.w.normed, widest),
        ] {
            buf.resize(n * width, 0.0);
        }
    }
}

/// Runs the planned tokens through the model on `threads` threads, appending their keys and
/// values to the cache, and writes the logits of each entry's last token to `logits`
/// (`last.len() * vocab`). The caller updates the slot lengths.
pub(crate) fn forward(
    c: &ModelConfig,
    w: &Weights,
    cache: &mut KvCache,
    s: &mut RunState,
    plan: &Plan,
    logits: &mut [f32],
    threads: usize,
) -> Result<()> {
    let Plan { tokens, at, last } = plan;
    let (n, h) = (tokens.len(), c.hidden_size);
    s.reserve(c, n);
    s.w.clock.start();
    for (row, &t) in s.x.chunks_exact_mut(h).zip(tokens) {
        w.embed.row_into(t as usize, row)?;
    }
    s.w.clock.lap(Phase::Embed);
    let inv_freq = c.rope_scaling.inv_freq(c.head_dim, c.rope_theta);
    s.rope.clear();
    for p in at {
        rope_angles(p.pos, &inv_freq[..c.head_dim / 2], &mut s.rope);
    }
    s.w.clock.lap(Phase::Rope);
    for (l, layer) in w.layers.iter().enumerate() {
        attention_block(c, l, layer, cache, s, at, threads)?;
        mlp_block(c, layer, s, n, threads)?;
    }
    // Only the positions whose logits are wanted go through the final norm and the lm_head.
    for (i, &t) in last.iter().enumerate() {
        let out = &mut s.w.normed[..h];
        rmsnorm(&s.x[t * h..(t + 1) * h], &w.final_norm, c.rms_norm_eps, out);
        s.w.clock.lap(Phase::Norm);
        let row = &mut logits[i * c.vocab_size..(i + 1) * c.vocab_size];
        w.lm_head().gemv(out, row, threads)?;
        s.w.clock.lap(Phase::LmHead);
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
    threads: usize,
) -> Result<()> {
    let (n, h, kvd) = (at.len(), c.hidden_size, c.kv_dim());
    rmsnorm_rows(
        &s.x[..n * h],
        &layer.attn_norm,
        c.rms_norm_eps,
        &mut s.xb[..n * h],
    );
    s.w.clock.lap(Phase::Norm);
    let outs = [
        (&layer.q, &mut s.q[..n * c.q_dim()]),
        (&layer.k, &mut s.k[..n * kvd]),
        (&layer.v, &mut s.v[..n * kvd]),
    ];
    linears(c, outs, &s.xb[..n * h], n, &mut s.w, Phase::Qkv, threads)?;
    let half = c.head_dim / 2;
    for (t, p) in at.iter().enumerate() {
        let angles = &s.rope[t * half..(t + 1) * half];
        rope_rotate(
            &mut s.q[t * c.q_dim()..(t + 1) * c.q_dim()],
            c.head_dim,
            angles,
        );
        rope_rotate(&mut s.k[t * kvd..(t + 1) * kvd], c.head_dim, angles);
        let row = t * kvd..(t + 1) * kvd;
        cache.store(l, p.slot, p.pos, &s.k[row.clone()], &s.v[row]);
    }
    s.w.clock.lap(Phase::Rope);
    let qd = c.q_dim();
    attention(
        c,
        l,
        cache,
        &s.q[..n * qd],
        at,
        &mut s.att[..n * qd],
        threads,
    )?;
    s.w.clock.lap(Phase::Attention);
    if let Some(norm) = &layer.attn_sub_norm {
        rmsnorm_rows_in_place(&mut s.att[..n * qd], norm, c.rms_norm_eps, &mut s.w.normed);
        s.w.clock.lap(Phase::Norm);
    }
    let outs = [(&layer.o, &mut s.xb[..n * h])];
    linears(c, outs, &s.att[..n * qd], n, &mut s.w, Phase::O, threads)?;
    add(&mut s.x[..n * h], &s.xb[..n * h]);
    s.w.clock.lap(Phase::Residual);
    Ok(())
}

fn mlp_block(
    c: &ModelConfig,
    layer: &Layer,
    s: &mut RunState,
    n: usize,
    threads: usize,
) -> Result<()> {
    let (h, m) = (c.hidden_size, c.intermediate_size);
    rmsnorm_rows(
        &s.x[..n * h],
        &layer.ffn_norm,
        c.rms_norm_eps,
        &mut s.xb[..n * h],
    );
    s.w.clock.lap(Phase::Norm);
    let outs = [
        (&layer.gate, &mut s.hb[..n * m]),
        (&layer.up, &mut s.hb2[..n * m]),
    ];
    linears(c, outs, &s.xb[..n * h], n, &mut s.w, Phase::GateUp, threads)?;
    for (g, u) in s.hb[..n * m].iter_mut().zip(&s.hb2[..n * m]) {
        *g = c.hidden_act.apply(*g) * u;
    }
    s.w.clock.lap(Phase::Act);
    if let Some(norm) = &layer.ffn_sub_norm {
        rmsnorm_rows_in_place(&mut s.hb[..n * m], norm, c.rms_norm_eps, &mut s.w.normed);
        s.w.clock.lap(Phase::Norm);
    }
    let outs = [(&layer.down, &mut s.xb[..n * h])];
    linears(c, outs, &s.hb[..n * m], n, &mut s.w, Phase::Down, threads)?;
    add(&mut s.x[..n * h], &s.xb[..n * h]);
    s.w.clock.lap(Phase::Residual);
    Ok(())
}

/// Multiply-adds of attention below which it runs on the calling thread: waking a worker
/// costs ~5-20 µs, the time of ~50-200 K multiply-adds on one core.
pub(crate) const ATTENTION_PARALLEL_MIN: usize = 1 << 18;

/// Softmax attention of every (token, KV head) of the batch over its slot's cache, each KV
/// head's group of query heads in one pass over the cache ([`KvCache::attend`]), the pairs dealt
/// round-robin to `threads` parts (prefill's later tokens attend to more positions, so
/// contiguous parts would be unequal).
fn attention(
    c: &ModelConfig,
    l: usize,
    cache: &KvCache,
    q: &[f32],
    at: &[TokenPos],
    att: &mut [f32],
    threads: usize,
) -> Result<()> {
    let (qd, d) = (c.q_dim(), c.head_dim);
    let work: usize = at.iter().map(|p| (p.pos + 1) * 2 * qd).sum();
    let parts_n = if work < ATTENTION_PARALLEL_MIN {
        1
    } else {
        threads
    };
    let group = c.num_heads / c.num_kv_heads;
    let mut parts: Vec<Vec<(usize, &mut [f32])>> = (0..parts_n).map(|_| Vec::new()).collect();
    for (i, outs) in att.chunks_exact_mut(group * d).enumerate() {
        parts[i % parts_n].push((i, outs));
    }
    run_parts(parts, |part| {
        let mut scratch = Default::default();
        for (i, outs) in part {
            let (t, kv_head) = (i / c.num_kv_heads, i % c.num_kv_heads);
            let p = at[t];
            let qs = &q[t * qd + kv_head * group * d..][..group * d];
            let cols = (kv_head * d, d);
            cache.attend(l, p.slot, p.pos + 1, qs, cols, &mut scratch, outs);
        }
    })
}

/// Ternary linear layers reading the same input `x` of `n` tokens (q/k/v, gate/up, or one):
/// optional activation RMSNorm, per-token int8 quantization, the W2A8 product (timed as
/// `phase`), bias. Without activation norms the layers share one quantization of `x` (the
/// same bytes each would compute). A prompt chunk goes through as one batch of `n` tokens:
/// the kernels' blocked GEMM decodes each weight block once for a tile of tokens.
fn linears<const L: usize>(
    c: &ModelConfig,
    layers: [(&Linear, &mut [f32]); L],
    x: &[f32],
    n: usize,
    w: &mut Work,
    phase: Phase,
    threads: usize,
) -> Result<()> {
    let cols = x.len() / n;
    let mut quantized = false;
    for (l, out) in layers {
        match &l.norm {
            Some(norm) => {
                let normed = &mut w.normed[..n * cols];
                rmsnorm_rows(x, norm, c.bitlinear.act_norm_eps, normed);
                w.quant.quantize(normed, n, cols)?;
                quantized = false; // the buffer no longer holds `x`'s quantization
            }
            None if !quantized => {
                w.quant.quantize(x, n, cols)?;
                quantized = true;
            }
            None => {}
        }
        w.clock.lap(Phase::Quantize);
        w2a8(l, &w.quant.q, &w.quant.scale, n, out, threads)?;
        w.clock.lap(phase);
        if let Some(bias) = &l.bias {
            for row in out.chunks_exact_mut(l.c2.rows()) {
                add(row, bias);
            }
            w.clock.lap(Phase::Residual);
        }
    }
    Ok(())
}

/// THE ternary matrix product of the engine: `out[b, r] = (q[b] . W[r]) * x_scale[b] * scale`.
/// Every linear layer goes through here: the fast CPU kernels (bit-exact with
/// `cpu::reference::gemm_w2a8`), on `threads` threads.
fn w2a8(
    l: &Linear,
    q: &[i8],
    x_scale: &[f32],
    n: usize,
    out: &mut [f32],
    threads: usize,
) -> Result<()> {
    l.c2.gemm_w2a8::<f32>(q, x_scale, n, None, out, threads)
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// transformers' RMSNorm in f32: `weight * (x * rsqrt(mean(x^2) + eps))`; the mean is summed in
/// f64 so it is the correctly rounded value whatever torch's summation order. Eight partial sums
/// (each square of an f32 is exact in f64) let the loop vectorize; one running sum was a chain
/// of dependent adds, ~4 cycles per element (docs/NOTES.md, "CPU prefill: v5 tile").
pub(crate) fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mut part = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum();
    for c in chunks {
        for (p, &v) in part.iter_mut().zip(c) {
            *p += f64::from(v) * f64::from(v);
        }
    }
    let ms = ((part.iter().sum::<f64>() + tail) / x.len() as f64) as f32;
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

/// As [`rmsnorm_rows`], through `tmp` (at least one row long).
fn rmsnorm_rows_in_place(x: &mut [f32], weight: &[f32], eps: f32, tmp: &mut [f32]) {
    let tmp = &mut tmp[..weight.len()];
    for row in x.chunks_exact_mut(weight.len()) {
        rmsnorm(row, weight, eps, tmp);
        row.copy_from_slice(tmp);
    }
}

/// Rotary embedding of every head in `x` at position `pos`, transformers' "rotate half" pairing
/// (element `i` with `i + head_dim / 2`) at angle `pos * inv_freq[i]` in f32 (`inv_freq` from
/// [`RopeScaling::inv_freq`](super::rope::RopeScaling::inv_freq)).
pub(crate) fn rope(x: &mut [f32], head_dim: usize, pos: usize, inv_freq: &[f32]) {
    let mut angles = Vec::new();
    rope_angles(pos, &inv_freq[..head_dim / 2], &mut angles);
    rope_rotate(x, head_dim, &angles);
}

/// Appends `(cos, sin)` of `pos * f` for each `f` in `inv_freq`: one position's rotation,
/// computed once per forward call and shared by every head and layer.
fn rope_angles(pos: usize, inv_freq: &[f32], out: &mut Vec<(f32, f32)>) {
    out.extend(inv_freq.iter().map(|&f| {
        let (sin, cos) = (pos as f32 * f).sin_cos();
        (cos, sin)
    }));
}

/// [`rope`] with the position's `(cos, sin)` pairs from [`rope_angles`].
fn rope_rotate(x: &mut [f32], head_dim: usize, angles: &[(f32, f32)]) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        let (lo, hi) = head.split_at_mut(half);
        for ((a, b), &(cos, sin)) in lo.iter_mut().zip(hi).zip(angles) {
            (*a, *b) = (*a * cos - *b * sin, *b * cos + *a * sin);
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
}
