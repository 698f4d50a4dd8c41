//! `warp-bitnet run`: generate text (or token ids) from a model, streaming as it goes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use warp_bitnet::engine::{
    self, Device, Engine, EngineOptions, Sampler, SamplingParams, StopReason,
};

#[derive(ClapArgs)]
pub struct Args {
    /// A Hugging Face folder (config.json + *.safetensors [+ tokenizer.json]), one of our packed
    /// safetensors files (config.json beside it), a GGUF file (I2_S / TQ1_0 / TQ2_0 tensors, config
    /// and tokenizer from its metadata), or `random:PRESET`
    /// (`random:bitnet-2b4t`, `random:llama3-8b-ternary`: the architecture with random weights).
    model: String,
    /// The prompt text (needs the model's tokenizer).
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt as one user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate (default: 128, or what the context has room for if less).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: Option<u32>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Penalty on tokens already seen (1: off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed of sampling (and of `random:` weights).
    #[arg(long)]
    seed: Option<u64>,
    /// Where to run: auto (CUDA where present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Tokens the KV cache holds (default: the model's limit, at most 4096).
    #[arg(long)]
    max_context: Option<usize>,
    /// CPU threads (default: WARP_BITNET_THREADS, else all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// The lm_head's weights: `as-stored` (the checkpoint's f32/f16/bf16) or `int8` (per-row
    /// int8, half of bf16's bytes per token, not bit-faithful to the checkpoint).
    #[arg(long, default_value = "as-stored")]
    lm_head: String,
    /// The KV cache's type: `f32` or `f16` (default: f32 on the CPU, f16 on a GPU).
    #[arg(long, value_parser = engine::KvType::parse)]
    kv_cache: Option<engine::KvType>,
    /// Keep generating after an end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object (prompt and generated ids, text, timings) instead of streaming.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    model: String,
    device: String,
    threads: usize,
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    text: Option<String>,
    stop: &'static str,
    prefill_ms: f64,
    decode_ms: f64,
    /// Decode steps (tokens after the first) per second.
    decode_tokens_per_s: f64,
    /// All generated tokens over the whole time, prompt included (what a user waits for).
    end_to_end_tokens_per_s: f64,
}

fn load(a: &Args) -> Result<Engine> {
    let device = Device::parse(&a.device)?;
    let lm_head = engine::LmHead::parse(&a.lm_head).context("--lm-head")?;
    let opts = |model_max: usize| EngineOptions {
        device,
        max_context: a.max_context.unwrap_or(model_max.min(4096)),
        slots: 1,
        threads: a.threads,
        lm_head,
        memory_fraction: None,
        kv_cache: a.kv_cache,
        weights: engine::LinearWeights::Ternary,
    };
    if let Some(preset) = a.model.strip_prefix("random:") {
        let config = engine::ModelConfig::preset(preset)?;
        let o = opts(config.max_position_embeddings);
        return Ok(Engine::random(config, a.seed.unwrap_or(0), &o)?);
    }
    let path = PathBuf::from(&a.model);
    let model_max = engine::model_config(&path)?.max_position_embeddings;
    Engine::load(&path, &opts(model_max)).with_context(|| format!("loading {}", path.display()))
}

fn prompt_ids(a: &Args, e: &Engine) -> Result<Vec<u32>> {
    if let Some(ids) = &a.prompt_ids {
        if a.chat {
            bail!("--chat needs --prompt text, not --prompt-ids");
        }
        return Ok(ids.clone());
    }
    let text = a.prompt.as_deref().unwrap_or_default();
    let Some(tok) = e.tokenizer() else {
        bail!(
            "{} has no tokenizer (tokenizer.json); pass --prompt-ids",
            a.model
        );
    };
    if a.chat {
        let chat = tok.apply_chat_template(&[("user".into(), text.into())], true)?;
        // The template writes the special tokens itself.
        return Ok(tok.encode(&chat, false)?);
    }
    Ok(tok.encode(text, true)?)
}

pub fn run(a: Args) -> Result<()> {
    let mut sampler = Sampler::new(&SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
    })?;
    let mut e = load(&a)?;
    let prompt = prompt_ids(&a, &e)?;
    if prompt.is_empty() {
        bail!("the prompt is empty (no tokens)");
    }
    let room = (e.max_context() + 1).saturating_sub(prompt.len()).max(1);
    let max_tokens = a.max_tokens.map_or(room.min(128), |n| n as usize);
    let mut out = Vec::new();
    let mut printed = String::new();
    let stdout = std::io::stdout();
    let stream = !a.json;
    let tokenizer = e.shared_tokenizer();
    let stats = engine::generate(
        &mut e,
        &prompt,
        max_tokens,
        &mut sampler,
        !a.ignore_eos,
        |t| {
            out.push(t);
            if stream {
                // Decode everything so far and print what is new: tokens that join into one
                // character print when the character is complete.
                let text = match &tokenizer {
                    Some(tok) => tok.decode(&out, false).unwrap_or_default(),
                    None => format!("{}{t}", if out.len() > 1 { "," } else { "" }),
                };
                if let Some(new) = text
                    .strip_prefix(printed.as_str())
                    .filter(|n| !n.is_empty() && !n.ends_with('\u{FFFD}'))
                {
                    let mut lock = stdout.lock();
                    let _ = write!(lock, "{new}");
                    let _ = lock.flush();
                    printed = text;
                }
            }
            true
        },
    )?;
    let text = e.tokenizer().map(|t| t.decode(&out, false)).transpose()?;
    if stream {
        if let Some(rest) = text
            .as_deref()
            .and_then(|t| t.strip_prefix(printed.as_str()))
        {
            print!("{rest}");
        }
        println!();
        return Ok(());
    }
    let secs = |d: std::time::Duration| d.as_secs_f64();
    let decode_steps = stats.generated_tokens.saturating_sub(1) as f64;
    let report = Report {
        model: a.model.clone(),
        device: match Device::parse(&a.device)? {
            Device::Cpu => "cpu".into(),
            Device::Cuda(n) => format!("cuda:{n}"),
        },
        threads: e.threads(),
        prompt_ids: prompt,
        generated_ids: out,
        text,
        stop: match stats.stop {
            StopReason::Length => "length",
            StopReason::Eos => "eos",
            StopReason::Callback => "callback",
        },
        prefill_ms: secs(stats.prefill) * 1e3,
        decode_ms: secs(stats.decode) * 1e3,
        decode_tokens_per_s: if decode_steps > 0.0 {
            decode_steps / secs(stats.decode)
        } else {
            0.0
        },
        end_to_end_tokens_per_s: stats.generated_tokens as f64 / secs(stats.prefill + stats.decode),
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
