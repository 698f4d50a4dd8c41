//! A deterministic model and a byte-level codec, to test the scheduler and the HTTP layer
//! without a real model: each slot's next-token logits are a hash of that slot's own
//! history, so a sequence's tokens never depend on what else is in the batch. Printable
//! ASCII bytes get higher logits than the rest.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{BoxError, Codec, Model, Sampling};

/// The byte codec's beginning-of-sequence token.
pub const BOS: u32 = 256;
/// The byte codec's end-of-sequence token.
pub const EOS: u32 = 257;
/// The byte codec's vocabulary: 256 bytes, BOS, EOS.
pub const VOCAB: usize = 258;

/// What a [`FakeModel`] saw, shared with the test that made it.
#[derive(Debug, Default)]
pub struct FakeStats {
    /// Calls of `forward`.
    pub steps: AtomicUsize,
    /// The most entries one `forward` call had.
    pub max_batch: AtomicUsize,
    /// The most tokens one `forward` call had.
    pub max_step_tokens: AtomicUsize,
    /// Slots holding tokens after the last call.
    pub busy_slots: AtomicUsize,
}

/// A model whose logits hash each slot's history (see the module doc), with the engine's
/// checks: slot index, token ids, context length, one entry per slot per call.
#[derive(Debug)]
pub struct FakeModel {
    slots: Vec<Vec<u32>>,
    max_context: usize,
    step_delay: Duration,
    /// Counters for tests.
    pub stats: Arc<FakeStats>,
}

impl FakeModel {
    /// `slots` sequences of at most `max_context` tokens; each `forward` sleeps `step_delay`
    /// (to make requests overlap in tests).
    pub fn new(slots: usize, max_context: usize, step_delay: Duration) -> Self {
        Self {
            slots: vec![Vec::new(); slots],
            max_context,
            step_delay,
            stats: Arc::default(),
        }
    }

    fn logits_for(history: &[u32], row: &mut [f32]) {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for &t in history {
            h = (h ^ u64::from(t)).wrapping_mul(0x100_0000_01b3);
        }
        for (j, l) in row.iter_mut().enumerate() {
            let x = splitmix(h ^ (j as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            *l = (x >> 40) as f32 / (1u64 << 24) as f32 * 8.0;
        }
        // Printable ASCII wins mostly, so that greedy text is readable and stop strings
        // are easy to pick from it; sampling still reaches every byte.
        for l in &mut row[32..127] {
            *l += 4.0;
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Model for FakeModel {
    type Sampler = FakeSampler;

    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn slots(&self) -> usize {
        self.slots.len()
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn reset_slot(&mut self, slot: usize) {
        self.slots[slot].clear();
        self.count_busy();
    }

    fn forward(&mut self, batch: &[(usize, &[u32])], logits: &mut [f32]) -> Result<(), BoxError> {
        let mut seen = vec![false; self.slots.len()];
        for &(slot, tokens) in batch {
            if slot >= self.slots.len() || std::mem::replace(&mut seen[slot], true) {
                return Err(format!("slot {slot} out of range or twice in one batch").into());
            }
            if tokens.is_empty() || tokens.iter().any(|&t| t as usize >= VOCAB) {
                return Err(format!("slot {slot}: no tokens or a token id >= {VOCAB}").into());
            }
            if self.slots[slot].len() + tokens.len() > self.max_context {
                return Err(
                    format!("slot {slot}: context of {} exceeded", self.max_context).into(),
                );
            }
        }
        if logits.len() != batch.len() * VOCAB {
            return Err("logits length".into());
        }
        std::thread::sleep(self.step_delay);
        for (i, &(slot, tokens)) in batch.iter().enumerate() {
            self.slots[slot].extend_from_slice(tokens);
            Self::logits_for(&self.slots[slot], &mut logits[i * VOCAB..(i + 1) * VOCAB]);
        }
        let tokens = batch.iter().map(|(_, t)| t.len()).sum();
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats
            .max_batch
            .fetch_max(batch.len(), Ordering::Relaxed);
        self.stats
            .max_step_tokens
            .fetch_max(tokens, Ordering::Relaxed);
        self.count_busy();
        Ok(())
    }

    fn sampler(&self, sampling: &Sampling) -> Result<FakeSampler, BoxError> {
        Ok(FakeSampler {
            temperature: sampling.temperature,
            rng: StdRng::seed_from_u64(sampling.seed),
        })
    }

    fn sample(sampler: &mut FakeSampler, logits: &mut [f32], _history: &[u32]) -> u32 {
        let best = |l: &[f32]| {
            (0..l.len())
                .max_by(|&a, &b| l[a].total_cmp(&l[b]))
                .unwrap_or(0)
        };
        if sampler.temperature == 0.0 {
            return best(logits) as u32;
        }
        let max = logits[best(logits)];
        let weights: Vec<f32> = logits
            .iter()
            .map(|&l| ((l - max) / sampler.temperature).exp())
            .collect();
        let mut x = sampler.rng.random::<f32>() * weights.iter().sum::<f32>();
        for (j, w) in weights.iter().enumerate() {
            x -= w;
            if x <= 0.0 {
                return j as u32;
            }
        }
        (weights.len() - 1) as u32
    }
}

impl FakeModel {
    fn count_busy(&self) {
        let busy = self.slots.iter().filter(|s| !s.is_empty()).count();
        self.stats.busy_slots.store(busy, Ordering::Relaxed);
    }
}

/// The fake model's sampler: greedy at temperature 0, else softmax sampling from a seeded
/// stream (top-p, top-k and the repetition penalty are the real sampler's business).
#[derive(Debug)]
pub struct FakeSampler {
    temperature: f32,
    rng: StdRng,
}

/// Bytes as tokens (0-255), plus [`BOS`] and [`EOS`]; the chat template writes
/// `<|role|>content\n` per message and opens `<|assistant|>`.
#[derive(Debug, Default)]
pub struct ByteCodec {
    eos: [u32; 1],
}

impl ByteCodec {
    /// The codec.
    pub fn new() -> Self {
        Self { eos: [EOS] }
    }
}

impl Codec for ByteCodec {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, BoxError> {
        let bos = add_special_tokens.then_some(BOS);
        Ok(bos.into_iter().chain(text.bytes().map(u32::from)).collect())
    }

    fn decode(&self, ids: &[u32]) -> Result<String, BoxError> {
        let bytes: Vec<u8> = ids.iter().filter_map(|&t| u8::try_from(t).ok()).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn chat_prompt(&self, messages: &[(String, String)]) -> Result<String, BoxError> {
        let mut s: String = messages
            .iter()
            .map(|(r, c)| format!("<|{r}|>{c}\n"))
            .collect();
        s.push_str("<|assistant|>");
        Ok(s)
    }

    fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }
}
