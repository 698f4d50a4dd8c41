//! `warp-bitnet bench --model NAME`: a whole model's architecture with random weights, timed on
//! the engine (CPU for now): one decode step at a given context, and prefills.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use warp_bitnet::engine::{Engine, EngineOptions, ModelConfig};

mod gpu;
pub use gpu::run_cuda;

#[derive(ClapArgs)]
pub struct ModelArgs {
    /// Time a whole model with random weights instead of single layers: `bitnet-2b4t` or
    /// `llama3-8b-ternary`.
    #[arg(long)]
    pub model: Option<String>,
    /// Tokens in the cache when decode steps are timed.
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Prompt lengths to time prefill at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    prefill: Vec<usize>,
    /// CPU thread counts to time at, comma-separated (default: all cores).
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Timed decode steps per thread count (the median is reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
}

/// One measurement, in the bench's JSON schema extended for whole models.
#[derive(Serialize)]
struct ModelRow {
    /// Model and phase, e.g. "bitnet-b1.58-2b-4t decode".
    shape: String,
    batch: usize,
    /// Tokens in the cache (decode) or in the prompt (prefill).
    context: usize,
    backend: &'static str,
    device: String,
    threads: usize,
    /// Median time of one decode step, or of the whole prefill.
    time_us: f64,
    tokens_per_s: f64,
    /// No dense baseline on the CPU path yet.
    baseline: Option<String>,
    baseline_us: Option<f64>,
    speedup: Option<f64>,
    /// Bytes a decode step reads (weights, one embedding row, KV cache); prefill rows: the same
    /// for one pass over the weights.
    bytes: u64,
    /// `bytes` at this run's measured copy bandwidth (read + write bytes per second).
    limit_us: f64,
    pct_limit: f64,
}

#[derive(Serialize)]
struct Report<'a> {
    date: String,
    commit: &'static str,
    model: &'a str,
    cpu: String,
    copy_gbps: f64,
    rows: &'a [ModelRow],
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Copy bandwidth (read + write bytes per second) of a 128 MiB buffer, best of 5, on `pool`.
fn copy_bandwidth(pool: &rayon::ThreadPool) -> f64 {
    use rayon::prelude::*;
    let n = 32 << 20;
    let src = vec![1f32; n];
    let mut dst = vec![0f32; n];
    (0..5)
        .map(|_| {
            let t = Instant::now();
            pool.install(|| {
                dst.par_chunks_mut(1 << 16)
                    .zip(src.par_chunks(1 << 16))
                    .for_each(|(d, s)| d.copy_from_slice(s))
            });
            (8 * n) as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

pub fn run(a: &ModelArgs, name: &str, json: Option<&Path>, seed: u64) -> Result<()> {
    let config = ModelConfig::preset(name)?;
    if a.steps == 0 || a.context == 0 || a.prefill.contains(&0) {
        bail!("--steps, --context and --prefill lengths must be at least 1");
    }
    let longest = a
        .prefill
        .iter()
        .copied()
        .chain([a.context + a.steps])
        .max()
        .unwrap_or(1);
    let opts = EngineOptions {
        max_context: longest,
        ..Default::default()
    };
    eprintln!("building {name} with random weights (seed {seed})...");
    let mut engine = Engine::random(config, seed, &opts)?;
    let threads = if a.threads.is_empty() {
        vec![rayon::current_num_threads()]
    } else {
        a.threads.clone()
    };
    let (cpu, label) = (cpu_name(), format!("{} ", name_of(name)));
    let mut rows = Vec::new();
    let vocab = engine.config().vocab_size;
    let mut logits = vec![0f32; vocab];
    let prompt = |n: usize| {
        (0..n)
            .map(|i| (i * 7919 % vocab) as u32)
            .collect::<Vec<u32>>()
    };
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
        let bw = copy_bandwidth(&pool);
        let mut row = |phase: &str, context: usize, time_us: f64, tokens: usize, bytes: u64| {
            let limit_us = bytes as f64 / bw * 1e6;
            let r = ModelRow {
                shape: format!("{label}{phase}"),
                batch: 1,
                context,
                backend: "cpu-reference",
                device: cpu.clone(),
                threads: t,
                time_us,
                tokens_per_s: tokens as f64 / (time_us / 1e6),
                baseline: None,
                baseline_us: None,
                speedup: None,
                bytes,
                limit_us,
                pct_limit: 100.0 * limit_us / time_us,
            };
            println!(
                "{:<36} {:>2} threads  ctx {:>5}  {:>12.0} us  {:>9.2} tok/s  {:>5.1}% of copy bw",
                r.shape, t, context, time_us, r.tokens_per_s, r.pct_limit
            );
            rows.push(r);
        };
        // The prefill of `context` tokens (if asked for) last, so the decode steps follow it.
        let mut order = a.prefill.clone();
        order.sort_by_key(|&p| p == a.context);
        for &p in &order {
            engine.reset_slot(0);
            let start = Instant::now();
            pool.install(|| engine.forward(&[(0, &prompt(p))], &mut logits))?;
            let us = start.elapsed().as_secs_f64() * 1e6;
            row("prefill", p, us, p, engine.bytes_per_decode_step(0));
        }
        // Decode from a cache of `context` tokens (the prefill just timed, if it had that length).
        if engine.slot_len(0) != a.context {
            engine.reset_slot(0);
            pool.install(|| engine.forward(&[(0, &prompt(a.context))], &mut logits))?;
        }
        let mut times = Vec::with_capacity(a.steps);
        for i in 0..a.steps {
            let token = [(i * 31 % vocab) as u32];
            let start = Instant::now();
            pool.install(|| engine.forward(&[(0, &token)], &mut logits))?;
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
        let us = warp_bitnet::bench::median(&mut times);
        row(
            "decode",
            a.context,
            us,
            1,
            engine.bytes_per_decode_step(a.context),
        );
        write_json(json, name, &cpu, bw / 1e9, &rows)?;
    }
    if let Some(p) = json {
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn name_of(preset: &str) -> &str {
    match preset {
        "bitnet-2b4t" => "bitnet-b1.58-2b-4t",
        other => other,
    }
}

fn write_json(
    path: Option<&Path>,
    model: &str,
    cpu: &str,
    copy_gbps: f64,
    rows: &[ModelRow],
) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let report = Report {
        date: crate::bench::today_utc(),
        commit: env!("WARP_BITNET_COMMIT"),
        model,
        cpu: cpu.to_string(),
        copy_gbps,
        rows,
    };
    std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
    Ok(())
}
