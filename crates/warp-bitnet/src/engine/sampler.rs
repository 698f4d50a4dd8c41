//! Picking the next token from logits: repetition penalty, temperature, top-k, top-p, seeded.

use rand::{Rng, SeedableRng};

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

/// A sampler with its own random state.
pub struct Sampler {
    params: SamplingParams,
    rng: rand::rngs::StdRng,
    /// Candidate (token, probability) pairs, reused between calls.
    candidates: Vec<(u32, f32)>,
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
        let rng = match p.seed {
            Some(s) => rand::rngs::StdRng::seed_from_u64(s),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        Ok(Self {
            params: p.clone(),
            rng,
            candidates: Vec::new(),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks a token from `logits` (modified in place by the penalty), `history` being the tokens
    /// so far (prompt and generated). NaN logits are never picked; if every logit is NaN, token 0.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            // Once per distinct token, as transformers' gather/scatter does.
            let mut seen: Vec<u32> = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l)),
        );
        if c.is_empty() {
            return 0;
        }
        // Descending by logit, ties by token id, so the result does not depend on the sort.
        c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            c.truncate(p.top_k);
        }
        let max = c[0].1;
        let mut sum = 0.0f64;
        for (_, l) in c.iter_mut() {
            *l = ((*l - max) / p.temperature).exp();
            sum += f64::from(*l);
        }
        // Top-p: the smallest prefix whose probability mass reaches top_p.
        let mut mass = 0.0f64;
        let mut keep = c.len();
        for (i, (_, w)) in c.iter().enumerate() {
            mass += f64::from(*w) / sum;
            if mass >= f64::from(p.top_p) {
                keep = i + 1;
                break;
            }
        }
        c.truncate(keep);
        let total: f64 = c.iter().map(|(_, w)| f64::from(*w)).sum();
        let mut r = self.rng.random::<f64>() * total;
        for &(t, w) in c.iter() {
            r -= f64::from(w);
            if r < 0.0 {
                return t;
            }
        }
        c[c.len() - 1].0
    }
}

/// The first index of the largest non-NaN value (0 if none).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Sampler {
        Sampler::new(&SamplingParams {
            temperature,
            top_k,
            top_p,
            repetition_penalty: 1.0,
            seed: Some(seed),
        })
        .unwrap()
    }

    #[test]
    fn greedy_is_argmax_first_on_ties() {
        let mut s = sampler(0.0, 0, 1.0, 0);
        assert_eq!(s.sample(&mut [0.1, 3.0, -2.0, 3.0], &[]), 1);
        assert_eq!(s.sample(&mut [f32::NAN, -1.0, -0.5], &[]), 2);
    }

    #[test]
    fn repetition_penalty_moves_the_argmax() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(&params).unwrap();
        // 3.0 / 2 = 1.5 < 2.0, and -1.0 * 2 = -2.0.
        let mut logits = [3.0, 2.0, -1.0];
        assert_eq!(s.sample(&mut logits, &[0, 2, 0]), 1);
        assert_eq!(logits, [1.5, 2.0, -2.0]);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let logits = [1.0f32, 5.0, 4.9, -3.0, 4.8];
        for seed in 0..50 {
            let t = sampler(1.0, 2, 1.0, seed).sample(&mut logits.clone(), &[]);
            assert!(t == 1 || t == 2, "top-k 2 gave {t}");
            // One token has 99.99% of the mass at a low temperature: top_p 0.5 keeps it alone.
            let t = sampler(0.05, 0, 0.5, seed).sample(&mut logits.clone(), &[]);
            assert_eq!(t, 1);
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        // Probabilities 1/4 and 3/4 at temperature 1.
        let logits = [0.0f32, 3f32.ln()];
        let mut s = sampler(1.0, 0, 1.0, 7);
        let ones = (0..4000)
            .filter(|_| s.sample(&mut logits.clone(), &[]) == 1)
            .count();
        assert!((2850..3150).contains(&ones), "{ones} of 4000");
        let draw = |seed| {
            let mut s = sampler(1.0, 0, 1.0, seed);
            (0..32)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn bad_parameters_name_themselves() {
        for (params, name) in [
            (
                SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
        ] {
            let err = Sampler::new(&params).err().unwrap().to_string();
            assert!(err.contains(name), "{err}");
        }
    }
}
