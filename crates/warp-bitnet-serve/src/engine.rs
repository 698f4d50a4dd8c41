//! The real model: [`Model`] for `warp_bitnet::engine::Engine`, [`Codec`] for its tokenizer.

use std::sync::Arc;

use warp_bitnet::engine::{Engine, Sampler, SamplingParams, Tokenizer};

use crate::model::{BoxError, Codec, Model, Sampling, TokenIdCodec};

impl Model for Engine {
    type Sampler = Sampler;

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn slots(&self) -> usize {
        Engine::slots(self)
    }

    fn max_context(&self) -> usize {
        Engine::max_context(self)
    }

    fn reset_slot(&mut self, slot: usize) {
        Engine::reset_slot(self, slot);
    }

    fn forward(&mut self, batch: &[(usize, &[u32])], logits: &mut [f32]) -> Result<(), BoxError> {
        Ok(Engine::forward(self, batch, logits)?)
    }

    fn sampler(&self, s: &Sampling) -> Result<Sampler, BoxError> {
        Ok(Sampler::new(&SamplingParams {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            repetition_penalty: s.repetition_penalty,
            seed: Some(s.seed),
        })?)
    }

    fn sample(sampler: &mut Sampler, logits: &mut [f32], history: &[u32]) -> u32 {
        sampler.sample(logits, history)
    }

    /// Draws through [`Engine::sample`]: on a GPU the tokens are drawn on the device (the
    /// history is each slot's tokens, which are the sequence so far).
    fn forward_sample(
        &mut self,
        batch: &[(usize, &[u32])],
        samplers: &mut [Option<&mut Sampler>],
        _histories: &[&[u32]],
        tokens: &mut [u32],
    ) -> Result<(), BoxError> {
        Ok(Engine::sample(self, batch, samplers, tokens)?)
    }
}

/// The engine's tokenizer as a [`Codec`] (shared: handlers tokenize while the scheduler
/// thread owns the engine).
struct TokenizerCodec(Arc<Tokenizer>);

impl Codec for TokenizerCodec {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, BoxError> {
        Ok(self.0.encode(text, add_special_tokens)?)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, BoxError> {
        Ok(self.0.decode(ids, true)?)
    }

    fn chat_prompt(&self, messages: &[(String, String)]) -> Result<String, BoxError> {
        Ok(self.0.apply_chat_template(messages, true)?)
    }

    fn eos_token_ids(&self) -> &[u32] {
        self.0.eos_token_ids()
    }
}

/// The codec of `engine`: its tokenizer, or token ids where it has none (random weights).
pub fn codec(engine: &Engine) -> Arc<dyn Codec> {
    match engine.shared_tokenizer() {
        Some(t) => Arc::new(TokenizerCodec(t)),
        None => Arc::new(TokenIdCodec::new(engine.config().eos_token_ids.clone())),
    }
}
