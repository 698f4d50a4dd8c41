//! `warp-bitnet bench --model NAME --device cuda`: the engine on a GPU. Decode rows time one
//! step replayed from its captured CUDA graph between CUDA events (GPU time, host excluded) at
//! each `--batch` size that has a graph (1, 2, 4, 8, 16); `bytes` is what the step reads (the
//! weights once, each sequence's f16 KV cache), `limit_us` that at the copy bandwidth measured
//! in the same run. Prefill rows time a whole prompt from the host (synchronized), and an
//! end-to-end row times `generate` (host included). No dense-bf16 baseline yet (`baseline`
//! stays empty): the same engine with bf16 weights through cuBLAS is still to be written.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use warp_bitnet::engine::{generate, Device, Engine, EngineOptions, ModelConfig, Sampler};

use super::{name_of, write_json, ModelArgs, ModelRow, RowContext};

/// Decode batch sizes with a captured graph (cuda/engine/schedule.rs `GRAPH_BATCHES`).
const GRAPHED: [usize; 5] = [1, 2, 4, 8, 16];

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
    let opts = EngineOptions {
        device: Device::Cuda(0),
        max_context: longest.min(config.max_position_embeddings),
        slots,
        ..Default::default()
    };
    eprintln!("building {name} with random weights (seed {seed}) on the GPU...");
    let mut engine = Engine::random(config, seed, &opts)?;
    let vocab = engine.config().vocab_size;
    let prompt = |n: usize, s: usize| -> Vec<u32> {
        (0..n)
            .map(|i| ((i + 13 * s) * 7919 % vocab) as u32)
            .collect()
    };
    let mut rows = Vec::new();
    let mut logits = vec![0f32; slots * vocab];
    let label = format!("{} ", name_of(name));
    let mut copy_gbps = 0.0;
    let lm_head = engine.lm_head_dtype();
    let row = |phase: &str, batch, context, time_us: f64, tokens: usize, bytes: u64, bw: f64| {
        let at = RowContext {
            label: label.clone(),
            backend: "cuda-engine",
            device: "cuda:0".into(),
            threads: 0,
            lm_head,
            copy_bytes_per_s: bw,
        };
        let r = ModelRow::new(&at, phase, (batch, context), time_us, tokens, bytes);
        println!(
            "{:<36} batch {:>2}  ctx {:>5}  {:>10.1} us  {:>9.1} tok/s  {:>5.1}% of copy bw",
            r.shape, batch, context, time_us, r.tokens_per_s, r.pct_limit
        );
        r
    };
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
        copy_gbps = bw / 1e9;
        let kv = engine.bytes_per_decode_step(a.context) - engine.bytes_per_decode_step(0);
        let bytes = engine.bytes_per_decode_step(a.context) + (b as u64 - 1) * kv;
        rows.push(row("decode", b, a.context, us, b, bytes, bw));
    }
    let bw = copy_gbps * 1e9;
    for &p in &a.prefill {
        engine.reset_slot(0);
        let ids = prompt(p, 0);
        let start = Instant::now();
        engine.forward(&[(0, &ids)], &mut logits[..vocab])?;
        let us = start.elapsed().as_secs_f64() * 1e6;
        rows.push(row(
            "prefill",
            1,
            p,
            us,
            p,
            engine.bytes_per_decode_step(0),
            bw,
        ));
    }
    // End to end through `generate` (host included): up to 64 new tokens after up to 64.
    let prompt_len = 64.min(engine.max_context() / 2).max(1);
    let new_tokens = 64.min(engine.max_context() + 1 - prompt_len);
    let first = prompt(prompt_len, 1);
    let mut sampler = Sampler::new(&Default::default())?;
    let stats = generate(&mut engine, &first, new_tokens, &mut sampler, false, |_| {
        true
    })?;
    let steps = stats.generated_tokens.saturating_sub(1).max(1);
    let us = stats.decode.as_secs_f64() * 1e6 / steps as f64;
    rows.push(row(
        "generate (host included)",
        1,
        64,
        us,
        1,
        engine.bytes_per_decode_step(64),
        bw,
    ));
    write_json(json, name, vec![(0, copy_gbps)], &rows, &[])?;
    if let Some(p) = json {
        println!("wrote {}", p.display());
    }
    Ok(())
}
