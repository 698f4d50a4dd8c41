//! `warp-bitnet serve`: the OpenAI-compatible server (crate `warp-bitnet-serve`) on a model.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use warp_bitnet::engine::{self, Device, Engine, EngineOptions};
use warp_bitnet_serve::{engine::codec, shutdown_signal, Server, ServerConfig};

#[derive(ClapArgs)]
pub struct Args {
    /// A Hugging Face folder (config.json, *.safetensors, tokenizer.json), one of our packed
    /// safetensors files (config.json beside it), a GGUF file, or `random:PRESET`
    /// (`random:bitnet-2b4t`, `random:llama3-8b-ternary`: random weights for benchmarks; no
    /// tokenizer, so prompts must be token ids).
    model: String,
    /// Address to listen on (keep 127.0.0.1 unless the server should be reachable from
    /// other machines).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The most KV-cache slots (requests generated together); fewer where they do not fit
    /// --memory-fraction of the free memory.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Share of the memory free at start (the GPU's, or the host's available memory on the
    /// CPU) that the model, its buffers and the KV-cache slots may take, in (0, 1].
    #[arg(long, default_value_t = 0.9)]
    memory_fraction: f64,
    /// Tokens per slot (prompt plus generated); default: the model's limit, at most 4096.
    #[arg(long)]
    max_context: Option<usize>,
    /// Requests that may wait for a slot before the server answers 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Largest request body, in bytes (413 beyond).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Prompt tokens prefilled per scheduler step (bounds the pause a new prompt causes to
    /// running streams).
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// Seconds running requests may take to finish after SIGINT/SIGTERM before they are
    /// cancelled.
    #[arg(long, default_value_t = 10.0)]
    shutdown_grace: f64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// The KV cache's type: `f32` or `f16` (default: f32 on the CPU, f16 on a GPU; f16 holds
    /// twice the slots in the same memory).
    #[arg(long, value_parser = engine::KvType::parse)]
    kv_cache: Option<engine::KvType>,
    /// CPU threads for the model (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// The name clients pass as `model` (default: the folder or file name, or the preset).
    #[arg(long)]
    model_name: Option<String>,
}

/// The longest default context: a larger one must be asked for (its KV cache is
/// `max_batch` times as large).
const DEFAULT_CONTEXT_CAP: usize = 4096;

pub fn run(a: Args) -> Result<()> {
    if !(a.shutdown_grace.is_finite() && a.shutdown_grace >= 0.0) {
        bail!(
            "--shutdown-grace must be a number of seconds >= 0, got {}",
            a.shutdown_grace
        );
    }
    let (engine, default_name) = load(&a)?;
    let mut config = ServerConfig::new(a.model_name.clone().unwrap_or(default_name));
    config.max_queue = a.max_queue;
    config.max_body_bytes = a.max_body_bytes;
    config.prefill_chunk = a.prefill_chunk;
    config.shutdown_grace = Duration::from_secs_f64(a.shutdown_grace);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let codec = codec(&engine);
        let (slots, context) = (engine.slots(), engine.max_context());
        let name = config.model_name.clone();
        let server = Server::new(engine, codec, config)?;
        let address = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("--host/--port: cannot listen on {address}"))?;
        eprintln!(
            "warp-bitnet serve: model `{name}`, {slots} slots of {context} tokens; listening on http://{}",
            listener.local_addr()?
        );
        server.serve(listener, shutdown_signal()).await?;
        eprintln!("warp-bitnet serve: shut down");
        Ok(())
    })
}

/// The engine, and the model name to serve it under.
fn load(a: &Args) -> Result<(Engine, String)> {
    let device = Device::parse(&a.device).context("--device")?;
    if a.max_batch == 0 {
        bail!("--max-batch must be at least 1");
    }
    let opts = |model_limit: usize| EngineOptions {
        device,
        max_context: a
            .max_context
            .unwrap_or(model_limit.min(DEFAULT_CONTEXT_CAP)),
        slots: a.max_batch,
        memory_fraction: Some(a.memory_fraction),
        kv_cache: a.kv_cache,
        threads: a.threads,
        ..Default::default()
    };
    if let Some(preset) = a.model.strip_prefix("random:") {
        let config = engine::ModelConfig::preset(preset)?;
        let opts = opts(config.max_position_embeddings);
        let engine = Engine::random(config, 0, &opts).context("building the random model")?;
        return Ok((engine, preset.to_owned()));
    }
    let path = PathBuf::from(&a.model);
    let limit = engine::model_config(&path)?.max_position_embeddings;
    let engine =
        Engine::load(&path, &opts(limit)).with_context(|| format!("loading {}", path.display()))?;
    let name = path
        .file_name()
        .map_or_else(|| a.model.clone(), |n| n.to_string_lossy().into_owned());
    Ok((engine, name))
}
