//! Timing of `Sampler::sample` on the CPU: random logits over a vocabulary of 128,256 (the
//! bitnet-b1.58-2B-4T tokenizer), temperature 0.8, top_p 0.95, repetition penalty 1.1 over a
//! 256-token history, top_k 0 and 40, and greedy for reference. Prints the minimum and the
//! median microseconds per call (the minimum is the closest to an unshared core).
//!
//! `cargo run --release -p warp-bitnet --example sampler_micro -- [VOCAB] [ITERS]`
//!
//! Uses only the public API, so the same file times any version of the sampler.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use warp_bitnet::engine::{Sampler, SamplingParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |i: usize, d: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(std::env::args().nth(i).map_or(Ok(d), |s| s.parse())?)
    };
    let (vocab, iters) = (arg(1, 128_256)?, arg(2, 300)?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    // Logits spread as a trained model's: a normal-ish bulk (sum of uniforms) times 3.
    let logits: Vec<f32> = (0..vocab)
        .map(|_| (0..4).map(|_| rng.random_range(-1.5f32..1.5)).sum())
        .collect();
    let history: Vec<u32> = (0..256)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    println!("vocab {vocab}, {iters} calls each; microseconds per call");
    for (name, temperature, top_k, top_p, penalty) in [
        ("greedy", 0.0, 0, 1.0, 1.0),
        ("t0.8 top_p0.95 top_k0 rep1.1", 0.8, 0, 0.95, 1.1),
        ("t0.8 top_p0.95 top_k40 rep1.1", 0.8, 40, 0.95, 1.1),
    ] {
        let mut s = Sampler::new(&SamplingParams {
            temperature,
            top_k,
            top_p,
            repetition_penalty: penalty,
            seed: Some(7),
        })?;
        let mut work = logits.clone();
        let mut times = Vec::with_capacity(iters);
        let mut check = 0u64;
        for _ in 0..iters {
            work.copy_from_slice(&logits);
            let t = Instant::now();
            check += u64::from(s.sample(&mut work, &history));
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{name:32} min {:9.1}  median {:9.1}  (token sum {check})",
            times[0],
            times[times.len() / 2]
        );
    }
    Ok(())
}
