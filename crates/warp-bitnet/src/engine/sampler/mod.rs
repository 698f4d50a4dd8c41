//! Picking the next token from logits: repetition penalty, temperature, top-k, top-p, seeded;
//! the algorithm (shared with the GPU kernel) is specified in `pick.rs`.

mod bits;
mod pick;
#[cfg(test)]
mod tests;

pub(crate) use pick::{argmax, Draw};

/// The CPU's token for one row: the penalty from the history bitmap, then draw `d` (the GPU
/// kernel's oracle).
#[cfg(test)]
pub(crate) fn draw_row(logits: &mut [f32], history: &[u32], d: &Draw) -> u32 {
    pick::penalize_bits(logits, history, d.penalty);
    pick::pick(logits, d, &mut Vec::new())
}

use crate::error::{Error, Result};

/// How to pick tokens. `temperature == 0` is greedy (argmax).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature, `>= 0`; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`, in `(0, 1]`.
    pub top_p: f32,
    /// CTRL's penalty on tokens already in the history: positive logits are divided by it,
    /// negative ones multiplied; 1 is off. `> 0`.
    pub repetition_penalty: f32,
    /// Seed of the random draws; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: None,
        }
    }
}

/// A sampler: its parameters, its seed and how many draws it made (the random stream is
/// counter-based, as the algorithm in `sampler/pick.rs` specifies, so a GPU can make the same draws).
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    step: u64,
    /// Candidates, reused between calls.
    cands: Vec<pick::Cand>,
}

fn out_of_range(arg: &'static str, value: f32, range: &str) -> Error {
    Error::Unsupported {
        what: "sampling parameter",
        detail: format!("`{arg}` = {value}; must be {range}"),
    }
}

impl Sampler {
    /// Validates the parameters' ranges.
    pub fn new(params: &SamplingParams) -> Result<Self> {
        let p = params;
        if !(p.temperature.is_finite() && p.temperature >= 0.0) {
            return Err(out_of_range("temperature", p.temperature, "a number >= 0"));
        }
        if !(p.top_p > 0.0 && p.top_p <= 1.0) {
            return Err(out_of_range("top_p", p.top_p, "in (0, 1]"));
        }
        if !(p.repetition_penalty.is_finite() && p.repetition_penalty > 0.0) {
            return Err(out_of_range(
                "repetition_penalty",
                p.repetition_penalty,
                "a number > 0",
            ));
        }
        Ok(Self {
            params: p.clone(),
            seed: p.seed.unwrap_or_else(rand::random),
            step: 0,
            cands: Vec::new(),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks a token from `logits` (modified in place by the penalty), `history` being the tokens
    /// so far (prompt and generated). NaN logits are never picked; if every logit is NaN, token 0.
    /// Each call is one draw of the sampler's random stream.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        pick::penalize_tokens(logits, history, self.params.repetition_penalty);
        let d = self.next_draw();
        pick::pick(logits, &d, &mut self.cands)
    }

    /// As [`Sampler::sample`] with the history as a bitmap of token ids (the engine's per-slot
    /// history).
    pub(crate) fn sample_bits(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        pick::penalize_bits(logits, history, self.params.repetition_penalty);
        let d = self.next_draw();
        pick::pick(logits, &d, &mut self.cands)
    }

    /// The parameters of the next draw (for a GPU row), and counts it as made.
    pub(crate) fn next_draw(&mut self) -> Draw {
        let p = &self.params;
        let d = Draw {
            temperature: p.temperature,
            top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
            top_p24: bits::top_p24(p.top_p),
            penalty: p.repetition_penalty,
            seed: self.seed,
            stream: 0,
            step: self.step,
        };
        self.step += 1;
        d
    }
}
