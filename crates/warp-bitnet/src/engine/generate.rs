//! The generate loop on slot 0: prefill the prompt, then sample and decode one token at a time
//! (each token drawn by [`Engine::sample`], on the device where the engine runs on a GPU).

use std::time::{Duration, Instant};

use super::{Engine, Sampler};
use crate::error::{Error, Result};

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new_tokens` were generated.
    Length,
    /// An end-of-sequence token was generated (it is the last token streamed).
    Eos,
    /// The `on_token` callback returned `false`.
    Callback,
}

/// What one [`generate`] call did and how long it took.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateStats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (streamed to `on_token`).
    pub generated_tokens: usize,
    /// Time to run the prompt and sample the first token.
    pub prefill: Duration,
    /// Time of the decode steps that followed (each: one forward + one sample).
    pub decode: Duration,
    /// Why it stopped.
    pub stop: StopReason,
}

/// Generates up to `max_new_tokens` tokens after `prompt` on slot 0 (which is reset first),
/// streaming each to `on_token`, which may return `false` to stop. With `stop_on_eos`, stops after
/// an end-of-sequence token (the tokenizer's, else the config's).
pub fn generate(
    engine: &mut Engine,
    prompt: &[u32],
    max_new_tokens: usize,
    sampler: &mut Sampler,
    stop_on_eos: bool,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<GenerateStats> {
    if prompt.is_empty() {
        return Err(Error::Empty { arg: "prompt" });
    }
    if max_new_tokens == 0 {
        return Err(Error::Empty {
            arg: "max_new_tokens",
        });
    }
    // The last generated token is sampled, never run, so it needs no cache row.
    let needed = prompt.len() + max_new_tokens - 1;
    if needed > engine.max_context() {
        return Err(Error::TooLarge {
            arg: "prompt tokens + max_new_tokens - 1 (the context needed)",
            value: needed as u64,
            limit: engine.max_context() as u64,
        });
    }
    let eos: Vec<u32> = match engine.tokenizer() {
        Some(t) => t.eos_token_ids().to_vec(),
        None => engine.config().eos_token_ids.clone(),
    };
    // Each token is drawn by the engine (on a GPU, on the device): the repetition history is
    // slot 0's tokens, the prompt and every token fed back.
    let mut next = [0u32];
    engine.reset_slot(0);
    let start = Instant::now();
    engine.sample(&[(0, prompt)], &mut [Some(&mut *sampler)], &mut next)?;
    let prefill = start.elapsed();
    let decode_start = Instant::now();
    let mut stop = StopReason::Length;
    let mut generated = 0;
    for i in 0..max_new_tokens {
        let token = next[0];
        generated += 1;
        if !on_token(token) {
            stop = StopReason::Callback;
            break;
        }
        if stop_on_eos && eos.contains(&token) {
            stop = StopReason::Eos;
            break;
        }
        if i + 1 == max_new_tokens {
            break;
        }
        engine.sample(&[(0, &[token])], &mut [Some(&mut *sampler)], &mut next)?;
    }
    Ok(GenerateStats {
        prompt_tokens: prompt.len(),
        generated_tokens: generated,
        prefill,
        decode: decode_start.elapsed(),
        stop,
    })
}
