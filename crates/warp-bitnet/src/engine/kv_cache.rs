//! The CPU engine's KV cache: `slots` independent sequences of up to `max_context` tokens per
//! layer, stored as f32 (the default on the CPU: the same numbers as transformers' float32
//! forward) or f16 (half the memory, and the GPU engine's cache, so that the two engines can
//! be compared value for value; llama.cpp's default cache type), and the softmax attention of
//! one query head over it.

use half::f16;

use super::config::ModelConfig;
use crate::cpu::arch::dot_f32;
use crate::dtype::Activation;
use crate::error::{Error, Result};

/// The element type of a KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    /// 4 bytes a value.
    F32,
    /// 2 bytes a value, rounded to nearest even when stored.
    F16,
}

impl KvType {
    /// "f32" or "f16".
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    /// Parses a name as written by [`KvType::name`].
    pub fn parse(s: &str) -> Result<KvType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            _ => Err(Error::Unsupported {
                what: "KV cache type",
                detail: format!("{s:?}; expected f32 or f16"),
            }),
        }
    }

    /// Bytes a value takes.
    pub fn size(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

enum Store {
    F32 { k: Vec<f32>, v: Vec<f32> },
    F16 { k: Vec<f16>, v: Vec<f16> },
}

/// The KV cache (see the module doc).
pub(crate) struct KvCache {
    store: Store,
    /// Tokens cached per slot.
    pub lens: Vec<usize>,
    slots: usize,
    max_context: usize,
    kv_dim: usize,
}

impl KvCache {
    pub fn new(c: &ModelConfig, ty: KvType, slots: usize, max_context: usize) -> Result<Self> {
        let n = Self::elems(c, slots, max_context)?;
        // Checked before allocating: an overcommitted vector would fail only when first touched,
        // as an out-of-memory kill in the middle of a request.
        let bytes = Self::bytes(c, ty, slots, max_context)?;
        if let Some(free) = super::memory::available_host_memory() {
            if bytes > free {
                return Err(Error::TooLarge {
                    arg: "KV cache bytes (layers x slots x max_context x kv_dim x 2 x the type's \
                          size; lower slots or max_context)",
                    value: bytes,
                    limit: free,
                });
            }
        }
        let store = match ty {
            KvType::F32 => Store::F32 {
                k: vec![0.0; n],
                v: vec![0.0; n],
            },
            KvType::F16 => Store::F16 {
                k: vec![f16::ZERO; n],
                v: vec![f16::ZERO; n],
            },
        };
        Ok(Self {
            store,
            lens: vec![0; slots],
            slots,
            max_context,
            kv_dim: c.kv_dim(),
        })
    }

    /// Elements of the K (and of the V) cache.
    fn elems(c: &ModelConfig, slots: usize, max_context: usize) -> Result<usize> {
        [c.num_layers, slots, max_context, c.kv_dim()]
            .iter()
            .try_fold(1usize, |a, &b| {
                crate::error::checked_elems("KV cache", a, b)
            })
    }

    /// Bytes of the K and V caches.
    pub fn bytes(c: &ModelConfig, ty: KvType, slots: usize, max_context: usize) -> Result<u64> {
        Ok(2 * ty.size() as u64 * Self::elems(c, slots, max_context)? as u64)
    }

    /// Offset of `(layer, slot, pos)`'s row.
    fn at(&self, layer: usize, slot: usize, pos: usize) -> usize {
        ((layer * self.slots + slot) * self.max_context + pos) * self.kv_dim
    }

    /// Stores the key and value rows of `(layer, slot, pos)`.
    pub fn store(&mut self, layer: usize, slot: usize, pos: usize, k: &[f32], v: &[f32]) {
        let o = self.at(layer, slot, pos);
        let n = self.kv_dim;
        fn put<T: Activation>(dst: &mut [T], src: &[f32]) {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = T::from_f32(s);
            }
        }
        match &mut self.store {
            Store::F32 { k: ck, v: cv } => {
                put(&mut ck[o..o + n], k);
                put(&mut cv[o..o + n], v);
            }
            Store::F16 { k: ck, v: cv } => {
                put(&mut ck[o..o + n], k);
                put(&mut cv[o..o + n], v);
            }
        }
    }

    /// Softmax attention of the query heads `qs` (`[heads, d]`: one KV head's group) over
    /// positions `0 .. len` of `slot` in `layer`, reading the KV head's columns `col .. col + d`,
    /// into `outs` (`[heads, d]`); `scratch` is reused between calls.
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &self,
        layer: usize,
        slot: usize,
        len: usize,
        qs: &[f32],
        (col, d): (usize, usize),
        scratch: &mut Scratch,
        outs: &mut [f32],
    ) {
        let (a, b) = (self.at(layer, slot, 0), self.at(layer, slot, len));
        let kv = (col, d, self.kv_dim);
        match &self.store {
            Store::F32 { k, v } => attend(qs, &k[a..b], &v[a..b], kv, scratch, outs),
            Store::F16 { k, v } => attend(qs, &k[a..b], &v[a..b], kv, scratch, outs),
        }
    }
}

/// Buffers of [`KvCache::attend`]: every head's scores and softmax sum, one widened cache row.
#[derive(Default)]
pub(crate) struct Scratch {
    scores: Vec<f32>,
    sums: Vec<f32>,
    row: Vec<f32>,
}

/// A cached element type as the attention reads it: f32 rows are read in place, f16 rows
/// widened (exactly) into a scratch row, so both run the same f32 arithmetic.
trait KvElem: Activation {
    fn as_f32<'a>(src: &'a [Self], scratch: &'a mut [f32]) -> &'a [f32];
}

impl KvElem for f32 {
    fn as_f32<'a>(src: &'a [f32], _: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl KvElem for f16 {
    fn as_f32<'a>(src: &'a [f16], scratch: &'a mut [f32]) -> &'a [f32] {
        for (o, &x) in scratch.iter_mut().zip(src) {
            *o = x.to_f32();
        }
        scratch
    }
}

/// Softmax attention of a group of query heads (`qs`, `[heads, d]`) over `len` cached positions
/// (`k`, `v`: `[len, kv_dim]`, the group's KV head at columns `col .. col + d`), into `outs`.
/// The group shares one pass over the cache: each K and V row is read (and, for f16, widened)
/// once for all of its query heads, the way GQA meant it. Each head's arithmetic is the same as
/// alone: a score per position, then max, exp and sum in position order, then the weighted sum.
fn attend<T: KvElem>(
    qs: &[f32],
    k: &[T],
    v: &[T],
    (col, d, kv_dim): (usize, usize, usize),
    Scratch { scores, sums, row }: &mut Scratch,
    outs: &mut [f32],
) {
    let (len, heads) = (k.len() / kv_dim, qs.len() / d);
    let scaling = (d as f32).powf(-0.5);
    row.resize(d, 0.0);
    scores.resize(heads * len, 0.0);
    sums.clear();
    sums.resize(heads, 0.0);
    for (p, r) in k.chunks_exact(kv_dim).enumerate() {
        let kr = T::as_f32(&r[col..col + d], row);
        for (q, s) in qs.chunks_exact(d).zip(scores.chunks_exact_mut(len)) {
            s[p] = dot_f32(q, kr) * scaling;
        }
    }
    for (s, sum) in scores.chunks_exact_mut(len).zip(sums.iter_mut()) {
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        for x in s.iter_mut() {
            *x = (*x - max).exp();
            *sum += *x;
        }
    }
    outs.fill(0.0);
    for (p, r) in v.chunks_exact(kv_dim).enumerate() {
        let vr = T::as_f32(&r[col..col + d], row);
        let heads = outs.chunks_exact_mut(d).zip(scores.chunks_exact(len));
        for ((out, s), &sum) in heads.zip(sums.iter()) {
            let w = s[p] / sum;
            for (o, &x) in out.iter_mut().zip(vr) {
                *o += w * x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_over_one_position_returns_its_value() {
        let (q, k, v) = ([0.5f32, -1.0], [2.0f32, 1.0], [7.0f32, -3.0]);
        let mut out = [0f32; 2];
        let mut scratch = Default::default();
        attend(&q, &k, &v, (0, 2, 2), &mut scratch, &mut out);
        assert_eq!(out, v);
        // Two positions with equal scores average their values.
        let k2 = [1.0f32, 1.0, 1.0, 1.0];
        let v2 = [2.0f32, 4.0, 6.0, 8.0];
        attend(&[1.0, 0.0], &k2, &v2, (0, 2, 2), &mut scratch, &mut out);
        assert_eq!(out, [4.0, 6.0]);
        // An f16 cache widens exactly: the same values give the same result.
        let v16 = v2.map(f16::from_f32);
        let k16 = k2.map(f16::from_f32);
        attend(&[1.0, 0.0], &k16, &v16, (0, 2, 2), &mut scratch, &mut out);
        assert_eq!(out, [4.0, 6.0]);
    }

    #[test]
    fn a_group_of_heads_equals_each_head_alone() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        // 3 positions of a cache with two KV heads of width 4; the group reads head 1.
        let (d, kv_dim, len, heads) = (4, 8, 3, 3);
        let mut r = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random::<f32>() - 0.5).collect() };
        let (k, v, qs) = (r(len * kv_dim), r(len * kv_dim), r(heads * d));
        let mut outs = vec![f32::NAN; heads * d];
        let mut scratch = Scratch::default();
        attend(&qs, &k, &v, (4, d, kv_dim), &mut scratch, &mut outs);
        for h in 0..heads {
            let mut alone = [f32::NAN; 4];
            let q = &qs[h * d..(h + 1) * d];
            attend(q, &k, &v, (4, d, kv_dim), &mut scratch, &mut alone);
            assert_eq!(alone, outs[h * d..(h + 1) * d], "head {h}");
        }
    }

    #[test]
    fn f16_stores_round_to_nearest_and_names_parse() {
        let mut c = ModelConfig::bitnet_b158_2b4t();
        (c.num_layers, c.num_kv_heads, c.head_dim) = (1, 1, 2);
        let mut cache = KvCache::new(&c, KvType::F16, 1, 2).unwrap();
        let x = 1.0 + 1.0 / 4096.0; // not an f16: rounds to 1.0 (ties to even)
        cache.store(0, 0, 0, &[x, 3.0], &[x, -2.0]);
        let mut out = [0f32; 2];
        cache.attend(
            0,
            0,
            1,
            &[1.0, 0.0],
            (0, 2),
            &mut Default::default(),
            &mut out,
        );
        assert_eq!(out, [1.0, -2.0]);
        assert_eq!(
            KvCache::bytes(&c, KvType::F16, 3, 5).unwrap(),
            2 * 2 * 3 * 5 * 2
        );
        assert_eq!(KvType::parse(" F16").unwrap(), KvType::F16);
        assert!(KvType::parse("bf16")
            .unwrap_err()
            .to_string()
            .contains("f32 or f16"));
    }
}
