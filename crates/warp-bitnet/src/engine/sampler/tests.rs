//! The sampler against exact probabilities and a sort-based oracle.

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

use rand::{Rng, SeedableRng};

use super::bits::{draw_bits, exp_neg, scale_draw, top_p24};
use super::pick::{keep, oracle, pick};

/// Random logits with ties (a few distinct values repeated), NaN, ±inf-free, ±0.
fn random_logits(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    let palette: Vec<f32> = (0..rng.random_range(1..n.max(2)))
        .map(|_| rng.random_range(-4.0f32..4.0))
        .collect();
    (0..n)
        .map(|_| match rng.random_range(0..20) {
            0 => f32::NAN,
            1 => -0.0,
            2 => 0.0,
            3..=8 => palette[rng.random_range(0..palette.len())],
            9 => f32::NEG_INFINITY,
            _ => rng.random_range(-8.0f32..8.0),
        })
        .collect()
}

fn random_draw(rng: &mut impl Rng, n: usize) -> Draw {
    Draw {
        temperature: [0.05, 0.3, 0.8, 1.0, 2.5][rng.random_range(0..5)],
        top_k: [0, 1, 2, 3, 40, n as u32, n as u32 + 5][rng.random_range(0..7)],
        top_p24: top_p24([1.0, 0.95, 0.5, 0.1, 1e-6][rng.random_range(0..5)]),
        penalty: 1.0,
        seed: rng.random(),
        stream: rng.random_range(0..4),
        step: rng.random_range(0..1000),
    }
}

#[test]
fn kept_sets_and_picks_match_a_sorting_oracle() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5a5a);
    let mut cands = Vec::new();
    for case in 0..3000 {
        let n = [1, 2, 3, 7, 33, 257, 1000, 5000][case % 8];
        let logits = random_logits(&mut rng, n);
        let d = random_draw(&mut rng, n);
        let token = pick(&logits, &d, &mut cands);
        let Some(want) = oracle::kept(&logits, &d) else {
            assert_eq!(token, argmax(&logits), "case {case}: greedy fallback");
            continue;
        };
        let got = keep(&logits, &d, &mut cands).unwrap();
        let got_set: Vec<(u32, u64)> = cands.iter().map(|c| (c.id, c.w)).collect();
        assert_eq!(got_set, want, "case {case}: kept set of {d:?}");
        assert_eq!(got, want.iter().map(|p| p.1).sum::<u64>());
        // The draw, by the specification's scan in id order.
        let r = scale_draw(draw_bits(d.seed, d.stream, d.step), got);
        let mut run = 0;
        let expect = want
            .iter()
            .find(|p| {
                run += p.1;
                run > r
            })
            .unwrap()
            .0;
        assert_eq!(token, expect, "case {case}");
        assert!(!logits[token as usize].is_nan());
    }
}

#[test]
fn top_k_breaks_ties_by_the_lower_id() {
    // Four tokens tie at 2.0; top-2 keeps the first two of them, ids 1 and 3.
    let logits = [0.0f32, 2.0, f32::NAN, 2.0, 2.0, 2.0, 1.0];
    let d = Draw {
        temperature: 1.0,
        top_k: 2,
        top_p24: 1 << 24,
        penalty: 1.0,
        seed: 1,
        stream: 0,
        step: 0,
    };
    let mut cands = Vec::new();
    keep(&logits, &d, &mut cands).unwrap();
    let ids: Vec<u32> = cands.iter().map(|c| c.id).collect();
    assert_eq!(ids, [1, 3]);
}

/// Exact softmax probabilities of `logits` at temperature `t` with the sampler's exp.
fn softmax(logits: &[f32], t: f32) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = logits
        .iter()
        .map(|&x| f64::from(exp_neg((x - max) / t)))
        .collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[test]
fn draws_follow_the_softmax_distribution() {
    // Chi-square over 20,000 draws of an 8-token vocabulary (7 degrees of freedom: the 0.999
    // quantile is 24.3), against probabilities computed directly; then with top-k 3, the three
    // most likely renormalized.
    let logits = [0.3f32, -1.2, 2.0, 0.9, -0.4, 1.5, 0.0, -2.5];
    for (top_k, t) in [(0usize, 0.8f32), (3, 1.3)] {
        let mut probs = softmax(&logits, t);
        if top_k == 3 {
            for (i, p) in probs.iter_mut().enumerate() {
                if ![2, 5, 3].contains(&i) {
                    *p = 0.0;
                }
            }
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= s);
        }
        let mut s = sampler(t, top_k, 1.0, 11);
        let draws = 20_000;
        let mut counts = [0usize; 8];
        for _ in 0..draws {
            counts[s.sample(&mut logits.clone(), &[]) as usize] += 1;
        }
        let mut chi2 = 0.0;
        for (c, p) in counts.iter().zip(&probs) {
            if *p == 0.0 {
                assert_eq!(*c, 0, "a token outside the top-k was drawn");
                continue;
            }
            let e = p * draws as f64;
            chi2 += (*c as f64 - e).powi(2) / e;
        }
        assert!(
            chi2 < 24.3,
            "chi2 {chi2} for counts {counts:?} vs {probs:?}"
        );
    }
}

#[test]
fn same_seed_same_tokens_and_steps_differ() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let logits: Vec<f32> = (0..500).map(|_| rng.random_range(-3.0..3.0)).collect();
    let run = |seed| {
        let mut s = sampler(1.0, 0, 0.9, seed);
        (0..64)
            .map(|_| s.sample(&mut logits.clone(), &[]))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
    let a = run(5);
    assert!(
        a.iter().any(|&t| t != a[0]),
        "every step drew the same token"
    );
    // Unseeded samplers draw different streams.
    let p = SamplingParams {
        temperature: 1.0,
        ..Default::default()
    };
    let draw = || {
        let mut s = Sampler::new(&p).unwrap();
        (0..64)
            .map(|_| s.sample(&mut logits.clone(), &[]))
            .collect::<Vec<_>>()
    };
    assert_ne!(draw(), draw());
}

#[test]
fn a_history_bitmap_penalizes_as_the_token_list() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for _ in 0..50 {
        let n = 300usize;
        let logits: Vec<f32> = (0..n).map(|_| rng.random_range(-5.0..5.0)).collect();
        let history: Vec<u32> = (0..40)
            .map(|_| rng.random_range(0..n as u32 + 10))
            .collect();
        let mut bits = vec![0u32; n.div_ceil(32)];
        for &t in history.iter().filter(|&&t| (t as usize) < n) {
            bits[t as usize / 32] |= 1 << (t % 32);
        }
        let params = SamplingParams {
            temperature: 0.7,
            top_k: 20,
            top_p: 0.9,
            repetition_penalty: 1.3,
            seed: Some(rng.random()),
        };
        let (mut a, mut b) = (logits.clone(), logits.clone());
        let ta = Sampler::new(&params).unwrap().sample(&mut a, &history);
        let tb = Sampler::new(&params).unwrap().sample_bits(&mut b, &bits);
        assert_eq!(a, b);
        assert_eq!(ta, tb);
    }
}
