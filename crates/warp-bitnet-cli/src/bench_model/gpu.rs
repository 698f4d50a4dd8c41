//! `warp-bitnet bench --model NAME --device cuda`: the engine on a GPU against its dense-bf16
//! baseline in the same run. Decode rows time one step replayed from its captured CUDA graph
//! between CUDA events (GPU time, host excluded) at each `--batch` size that has a graph (1, 2,
//! 4, 8, 16); `bytes` is what the ternary step reads (the weights once, each sequence's f16 KV
//! cache), `limit_us` that at the copy bandwidth measured in the same run. Prefill rows time a
//! whole prompt from the host (synchronized), and an end-to-end row times `generate` (host
//! included).
//!
//! The baseline (`baseline` = "dense-bf16") is the same engine with the same random weights
//! decoded to bf16 `w * scale` and multiplied by cuBLAS with bf16 activations
//! ([`LinearWeights::DenseBf16`]), timed the same way at the same shapes after the ternary
//! engine is dropped. Where it does not fit the free GPU memory (or fails to build), every row
//! says why in `baseline_note` and the bench still reports the ternary rows.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use warp_bitnet::engine::{
    generate, Device, Engine, EngineOptions, LinearWeights, ModelConfig, Sampler,
};

use super::{name_of, write_json, ModelArgs, ModelRow, RowContext};

/// Decode batch sizes with a captured graph (cuda/engine/schedule.rs `GRAPH_BATCHES`).
const GRAPHED: [usize; 5] = [1, 2, 4, 8, 16];

/// The baseline's name in the rows.
const BASELINE: &str = "dense-bf16";

/// One timing of one engine.
struct Timed {
    phase: &'static str,
    batch: usize,
    context: usize,
    us: f64,
    tokens: usize,
    bytes: u64,
}

/// Everything one engine's run measured.
struct Run {
    timed: Vec<Timed>,
    /// Device copy bandwidth in this run, bytes per second.
    copy_bytes_per_s: f64,
    lm_head: &'static str,
}

pub fn run_cuda(
    a: &ModelArgs,
    name: &str,
    json: Option<&Path>,
    seed: u64,
    batches: &[usize],
) -> Result<()> {
    let config = ModelConfig::preset(name)?;
    if a.steps == 0 || a.context == 0 || a.prefill.contains(&0) {
        bail!("--steps, --context and --prefill lengths must be at least 1");
    }
    if let Some(b) = batches.iter().find(|b| !GRAPHED.contains(b)) {
        bail!("--batch {b}: the GPU decode rows need a graphed batch size ({GRAPHED:?})");
    }
    let slots = batches.iter().copied().max().unwrap_or(1);
    let longest = a
        .prefill
        .iter()
        .copied()
        .chain([a.context + 1])
        .max()
        .unwrap_or(1);
    let max_context = longest.min(config.max_position_embeddings);
    let opts = |weights| EngineOptions {
        device: Device::Cuda(0),
        max_context,
        slots,
        weights,
        ..Default::default()
    };
    eprintln!("building {name} with random weights (seed {seed}) on the GPU...");
    let ours = {
        let mut engine = Engine::random(config.clone(), seed, &opts(LinearWeights::Ternary))?;
        time_engine(&mut engine, a, batches)?
    };
    // The ternary engine is gone: the baseline has the GPU's memory to itself.
    eprintln!("building the {BASELINE} baseline (the same weights, decoded to bf16)...");
    let base = match Engine::random(config, seed, &opts(LinearWeights::DenseBf16)) {
        Ok(mut engine) => Ok(time_engine(&mut engine, a, batches)?),
        Err(e @ warp_bitnet::Error::TooLarge { .. }) => {
            let note = format!("{BASELINE} baseline skipped: {e}");
            eprintln!("{note}");
            Err(note)
        }
        Err(e) => return Err(e.into()),
    };
    let rows = rows(name, &ours, &base);
    write_json(
        json,
        name,
        vec![(0, ours.copy_bytes_per_s / 1e9)],
        &rows,
        &[],
    )?;
    if let Some(p) = json {
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// The rows of the ternary run, each with the baseline's time of the same phase and shape, or
/// the reason there is none.
fn rows(name: &str, ours: &Run, base: &std::result::Result<Run, String>) -> Vec<ModelRow> {
    let at = RowContext {
        label: format!("{} ", name_of(name)),
        backend: "cuda-engine",
        device: "cuda:0".into(),
        threads: 0,
        lm_head: ours.lm_head,
        copy_bytes_per_s: ours.copy_bytes_per_s,
    };
    let key = |t: &Timed| (t.phase, t.batch, t.context);
    ours.timed
        .iter()
        .map(|t| {
            let mut r = ModelRow::new(&at, t.phase, (t.batch, t.context), t.us, t.tokens, t.bytes);
            match base {
                Ok(b) => match b.timed.iter().find(|x| key(x) == key(t)) {
                    Some(x) => r.set_baseline(BASELINE, x.us),
                    None => r.baseline_note = Some(format!("no {BASELINE} row of this shape")),
                },
                Err(note) => r.baseline_note = Some(note.clone()),
            }
            let speedup = r.speedup.map_or(String::new(), |s| {
                format!("  {BASELINE} {:>9.1} us  x{s:.2}", r.baseline_us.unwrap_or(0.0))
            });
            println!(
                "{:<36} batch {:>2}  ctx {:>5}  {:>10.1} us  {:>9.1} tok/s  {:>5.1}% of copy bw{speedup}",
                r.shape, t.batch, t.context, t.us, r.tokens_per_s, r.pct_limit
            );
            r
        })
        .collect()
}

/// Times `engine`: a decode step per batch size, each prefill length, and `generate`.
fn time_engine(engine: &mut Engine, a: &ModelArgs, batches: &[usize]) -> Result<Run> {
    let vocab = engine.config().vocab_size;
    let slots = batches.iter().copied().max().unwrap_or(1);
    let prompt = |n: usize, s: usize| -> Vec<u32> {
        (0..n)
            .map(|i| ((i + 13 * s) * 7919 % vocab) as u32)
            .collect()
    };
    let mut timed = Vec::new();
    let mut logits = vec![0f32; slots * vocab];
    let mut copy_bytes_per_s = 0.0;
    for &b in batches {
        // Fill `b` slots with `context` tokens, then one decode step captures the graph.
        for s in 0..b {
            engine.reset_slot(s);
            engine.forward(&[(s, &prompt(a.context, s))], &mut logits[..vocab])?;
        }
        let ids: Vec<[u32; 1]> = (0..b).map(|s| [(s * 31 % vocab) as u32]).collect();
        let batch: Vec<(usize, &[u32])> =
            ids.iter().enumerate().map(|(s, t)| (s, &t[..])).collect();
        engine.forward(&batch, &mut logits[..b * vocab])?;
        let (us, bw) = engine.cuda_decode_timing(b, a.steps.max(20))?;
        copy_bytes_per_s = bw;
        let kv = engine.bytes_per_decode_step(a.context) - engine.bytes_per_decode_step(0);
        let bytes = engine.bytes_per_decode_step(a.context) + (b as u64 - 1) * kv;
        timed.push(Timed {
            phase: "decode",
            batch: b,
            context: a.context,
            us,
            tokens: b,
            bytes,
        });
    }
    for &p in &a.prefill {
        engine.reset_slot(0);
        let ids = prompt(p, 0);
        let start = Instant::now();
        engine.forward(&[(0, &ids)], &mut logits[..vocab])?;
        timed.push(Timed {
            phase: "prefill",
            batch: 1,
            context: p,
            us: start.elapsed().as_secs_f64() * 1e6,
            tokens: p,
            bytes: engine.bytes_per_decode_step(0),
        });
    }
    // End to end through `generate` (host included): up to 64 new tokens after up to 64.
    let prompt_len = 64.min(engine.max_context() / 2).max(1);
    let new_tokens = 64.min(engine.max_context() + 1 - prompt_len);
    let first = prompt(prompt_len, 1);
    let mut sampler = Sampler::new(&Default::default())?;
    let stats = generate(engine, &first, new_tokens, &mut sampler, false, |_| true)?;
    let steps = stats.generated_tokens.saturating_sub(1).max(1);
    timed.push(Timed {
        phase: "generate (host included)",
        batch: 1,
        context: 64,
        us: stats.decode.as_secs_f64() * 1e6 / steps as f64,
        tokens: 1,
        bytes: engine.bytes_per_decode_step(64),
    });
    Ok(Run {
        timed,
        copy_bytes_per_s,
        lm_head: engine.lm_head_dtype(),
    })
}
