//! `warp-bitnet bench --model NAME`: a whole model's architecture with random weights, timed on
//! the engine (CPU for now): prefill, one decode step at a given context (median), decode end to
//! end through `generate` (sampling included), and where a decode step's time goes, per phase.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use warp_bitnet::engine::{
    generate, Engine, EngineOptions, LmHead, ModelConfig, Sampler, SamplingParams,
};

mod gpu;
pub use gpu::run_cuda;

#[derive(ClapArgs)]
pub struct ModelArgs {
    /// Time a whole model instead of single layers: a preset with random weights
    /// (`bitnet-2b4t` or `llama3-8b-ternary`) or, on the CPU, a model file or folder that
    /// `warp-bitnet run` takes (e.g. a GGUF file from examples/random_gguf.py).
    #[arg(long)]
    pub model: Option<String>,
    /// Tokens in the cache when decode steps are timed.
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Prompt lengths to time prefill at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    prefill: Vec<usize>,
    /// Timed decode steps per thread count (the median is reported).
    #[arg(long, default_value_t = 16)]
    steps: usize,
    /// lm_head weights to time, comma-separated: `as-stored` (bf16 for the presets) and/or
    /// `int8` (per-row int8); each is a separate engine, its rows marked with `lm_head`.
    #[arg(long, value_delimiter = ',', default_value = "as-stored")]
    lm_head: Vec<String>,
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
    /// The lm_head's weights as held: "bf16", "f16", "f32" or "int8".
    lm_head: &'static str,
    /// Median time of one decode step, of one end-to-end decode step (`generate`, sampling
    /// included), or of the whole prefill.
    time_us: f64,
    tokens_per_s: f64,
    /// The GPU rows: "dense-bf16", the same engine with bf16 weights through cuBLAS, timed in
    /// the same run at the same shape (no dense baseline on the CPU path yet).
    baseline: Option<String>,
    baseline_us: Option<f64>,
    /// `baseline_us / time_us`.
    speedup: Option<f64>,
    /// Why a GPU row has no baseline (e.g. the dense model does not fit the GPU's memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_note: Option<String>,
    /// Bytes a decode step reads (weights as held, one embedding row, KV cache); prefill rows:
    /// the same for one pass over the weights.
    bytes: u64,
    /// `bytes` at this run's measured copy bandwidth (read + write bytes per second).
    limit_us: f64,
    pct_limit: f64,
    /// Load average (1 minute) when the row was measured: the machine may be shared.
    load_avg: f64,
}

/// Where and how a row was measured: what [`ModelRow::new`] needs besides the timing.
struct RowContext {
    label: String,
    backend: &'static str,
    device: String,
    threads: usize,
    lm_head: &'static str,
    /// The run's copy bandwidth, bytes per second.
    copy_bytes_per_s: f64,
}

impl ModelRow {
    /// A row of `tokens` in `time_us` reading `bytes`, without a baseline.
    fn new(
        at: &RowContext,
        phase: &str,
        (batch, context): (usize, usize),
        time_us: f64,
        tokens: usize,
        bytes: u64,
    ) -> ModelRow {
        let limit_us = bytes as f64 / at.copy_bytes_per_s * 1e6;
        ModelRow {
            shape: format!("{}{phase}", at.label),
            batch,
            context,
            backend: at.backend,
            device: at.device.clone(),
            threads: at.threads,
            lm_head: at.lm_head,
            time_us,
            tokens_per_s: tokens as f64 / (time_us / 1e6),
            baseline: None,
            baseline_us: None,
            speedup: None,
            baseline_note: None,
            bytes,
            limit_us,
            pct_limit: 100.0 * limit_us / time_us,
            load_avg: load_avg(),
        }
    }
}

impl ModelRow {
    /// Sets the baseline `name` that took `us` for the same work.
    fn set_baseline(&mut self, name: &str, us: f64) {
        self.baseline = Some(name.into());
        self.baseline_us = Some(us);
        self.speedup = Some(us / self.time_us);
    }
}

/// Mean time per forward call of one phase of the forward pass: one decode step, or one
/// prefill of `context` tokens.
#[derive(Serialize)]
struct PhaseRow {
    /// `"decode"` or `"prefill"`.
    row: &'static str,
    context: usize,
    threads: usize,
    lm_head: &'static str,
    phase: &'static str,
    us_per_call: f64,
    pct: f64,
}

#[derive(Serialize)]
struct Report<'a> {
    date: String,
    commit: &'static str,
    model: &'a str,
    cpu: String,
    /// Copy bandwidth per thread count, GB/s (read + write), measured in this run (thread count 0: the GPU).
    copy_gbps: Vec<(usize, f64)>,
    rows: &'a [ModelRow],
    breakdown: &'a [PhaseRow],
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

fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// What one run measures, shared by every engine it builds.
struct Plan<'a> {
    a: &'a ModelArgs,
    name: &'a str,
    threads: &'a [usize],
    copy_gbps: &'a [(usize, f64)],
    cpu: String,
}

pub fn run(
    a: &ModelArgs,
    name: &str,
    threads: &[usize],
    json: Option<&Path>,
    seed: u64,
) -> Result<()> {
    if a.steps == 0 || a.context == 0 || a.prefill.contains(&0) {
        bail!("--steps, --context and --prefill lengths must be at least 1");
    }
    let lm_heads = a
        .lm_head
        .iter()
        .map(|s| LmHead::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let threads = if threads.is_empty() {
        vec![warp_bitnet::cpu::default_threads()?]
    } else {
        threads.to_vec()
    };
    let copy_gbps = threads
        .iter()
        .map(|&t| Ok((t, warp_bitnet::bench::cpu::copy_bandwidth(t, 5)?)))
        .collect::<Result<Vec<_>>>()?;
    let plan = Plan {
        a,
        name,
        threads: &threads,
        copy_gbps: &copy_gbps,
        cpu: cpu_name(),
    };
    let (mut rows, mut phases) = (Vec::new(), Vec::new());
    for &lm_head in &lm_heads {
        let opts = EngineOptions {
            max_context: a
                .prefill
                .iter()
                .copied()
                .chain([a.context + a.steps + 1])
                .max()
                .unwrap_or(1),
            lm_head,
            ..Default::default()
        };
        let path = Path::new(name);
        let mut engine = if path.exists() {
            eprintln!("loading {name} (lm_head {})...", lm_head.name());
            Engine::load(path, &opts)?
        } else {
            let config = ModelConfig::preset(name).with_context(|| {
                format!("--model {name}: neither a preset nor an existing model file or folder")
            })?;
            eprintln!(
                "building {name} with random weights (seed {seed}, lm_head {})...",
                lm_head.name()
            );
            Engine::random(config, seed, &opts)?
        };
        time_engine(&plan, &mut engine, &mut rows, &mut phases)?;
        write_json(json, plan.name, plan.copy_gbps.to_vec(), &rows, &phases)?;
    }
    if let Some(p) = json {
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn time_engine(
    p: &Plan,
    engine: &mut Engine,
    rows: &mut Vec<ModelRow>,
    phases: &mut Vec<PhaseRow>,
) -> Result<()> {
    let a = p.a;
    let label = format!("{} ", name_of(p.name));
    let vocab = engine.config().vocab_size;
    let mut logits = vec![0f32; vocab];
    let prompt = |n: usize| {
        (0..n)
            .map(|i| (i * 7919 % vocab) as u32)
            .collect::<Vec<u32>>()
    };
    let lm_head = engine.lm_head_dtype();
    for (&t, &(_, gbps)) in p.threads.iter().zip(p.copy_gbps) {
        engine.set_threads(t)?;
        let at = RowContext {
            label: label.clone(),
            backend: "cpu",
            device: p.cpu.clone(),
            threads: t,
            lm_head,
            copy_bytes_per_s: gbps * 1e9,
        };
        let mut row = |phase: &str, context: usize, time_us: f64, tokens: usize, bytes: u64| {
            let r = ModelRow::new(&at, phase, (1, context), time_us, tokens, bytes);
            println!(
                "{:<40} {:>2} thr  lm_head {:<5} ctx {:>4} {:>11.0} us {:>8.2} tok/s {:>5.1}% of copy bw  load {:.1}",
                r.shape, t, lm_head, context, time_us, r.tokens_per_s, r.pct_limit, r.load_avg
            );
            rows.push(r);
        };
        // The prefill of `context` tokens (if asked for) last, so the decode steps follow it.
        let mut order = a.prefill.clone();
        order.sort_by_key(|&n| n == a.context);
        for &n in &order {
            engine.reset_slot(0);
            engine.reset_phase_times();
            let start = Instant::now();
            engine.forward(&[(0, &prompt(n))], &mut logits)?;
            let us = start.elapsed().as_secs_f64() * 1e6;
            row("prefill", n, us, n, engine.bytes_per_decode_step(0));
            breakdown(engine, ("prefill", n, t, lm_head), 1, us, phases);
        }
        // Decode from a cache of `context` tokens (the prefill just timed, if it had that length).
        if engine.slot_len(0) != a.context {
            engine.reset_slot(0);
            engine.forward(&[(0, &prompt(a.context))], &mut logits)?;
        }
        engine.reset_phase_times();
        let mut times = Vec::with_capacity(a.steps);
        for i in 0..a.steps {
            let token = [(i * 31 % vocab) as u32];
            let start = Instant::now();
            engine.forward(&[(0, &token)], &mut logits)?;
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
        let total: f64 = times.iter().sum();
        let us = warp_bitnet::bench::median(&mut times);
        let bytes = engine.bytes_per_decode_step(a.context);
        row("decode", a.context, us, 1, bytes);
        breakdown(
            engine,
            ("decode", a.context, t, lm_head),
            a.steps,
            total,
            phases,
        );
        // End to end through `generate` (greedy sampling over the logits included), from the
        // same cache length: the prompt is `context` tokens.
        let mut sampler = Sampler::new(&SamplingParams::default())?;
        let stats = generate(
            engine,
            &prompt(a.context),
            a.steps + 1,
            &mut sampler,
            false,
            |_| true,
        )?;
        let step_us = stats.decode.as_secs_f64() * 1e6 / a.steps as f64;
        row("decode end-to-end (generate)", a.context, step_us, 1, bytes);
    }
    Ok(())
}

/// Prints and records the engine's phase times over `calls` forward calls that took
/// `total_us` together, per call.
fn breakdown(
    engine: &Engine,
    (row, context, threads, lm_head): (&'static str, usize, usize, &'static str),
    calls: usize,
    total_us: f64,
    phases: &mut Vec<PhaseRow>,
) {
    for (phase, d) in engine.phase_times() {
        let total = d.as_secs_f64() * 1e6;
        let per_call = total / calls as f64;
        let pct = 100.0 * total / total_us;
        println!(
            "    {:<16} {per_call:>9.0} us/{row} {pct:>5.1}%",
            phase.name()
        );
        phases.push(PhaseRow {
            row,
            context,
            threads,
            lm_head,
            phase: phase.name(),
            us_per_call: per_call,
            pct,
        });
    }
}

/// The model's name in the rows: the architecture's for a preset, the file's stem for a path.
fn name_of(preset: &str) -> &str {
    match preset {
        "bitnet-2b4t" => "bitnet-b1.58-2b-4t",
        other => Path::new(other)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(other),
    }
}

fn write_json(
    path: Option<&Path>,
    model: &str,
    copy_gbps: Vec<(usize, f64)>,
    rows: &[ModelRow],
    phases: &[PhaseRow],
) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let report = Report {
        date: crate::bench::today_utc(),
        commit: env!("WARP_BITNET_COMMIT"),
        model,
        cpu: cpu_name(),
        copy_gbps,
        rows,
        breakdown: phases,
    };
    std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
    Ok(())
}
