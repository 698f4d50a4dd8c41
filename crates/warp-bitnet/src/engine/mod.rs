//! A native inference engine for BitNet b1.58 models (transformers `BitNetForCausalLM`, and
//! `LlamaForCausalLM` with ternary linear layers): load a checkpoint, run it over a KV cache of
//! independent slots, sample, generate.
//!
//! ```
//! use warp_bitnet::engine::{generate, Engine, EngineOptions, ModelConfig, Sampler, SamplingParams};
//!
//! // A tiny BitNet architecture with random weights.
//! let mut config = ModelConfig::bitnet_b158_2b4t();
//! (config.vocab_size, config.hidden_size, config.intermediate_size) = (64, 32, 48);
//! (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) = (2, 4, 2, 8);
//! (config.bos_token_id, config.eos_token_ids) = (None, vec![]);
//! let opts = EngineOptions { max_context: 32, ..Default::default() };
//! let mut engine = Engine::random(config, 7, &opts)?;
//!
//! let mut sampler = Sampler::new(&SamplingParams::default())?; // greedy
//! let mut out = Vec::new();
//! generate(&mut engine, &[1, 2, 3], 5, &mut sampler, true, |t| { out.push(t); true })?;
//! assert_eq!(out.len(), 5);
//! assert_eq!(engine.slot_len(0), 3 + 4); // the last token is sampled, not yet run
//! # Ok::<(), warp_bitnet::Error>(())
//! ```
//!
//! The CPU path runs every ternary layer through the fast W2A8 kernels ([`crate::cpu`]) and
//! the lm_head through [`crate::cpu::dense`] (as stored, or int8 rows with
//! [`LmHead::Int8`]); [`Engine::phase_times`] says where the time went. [`Device::Cuda`]
//! runs the same numerics on a GPU (weights and an f16 KV cache on the device, the decode step
//! replayed from a CUDA graph; `cuda/engine/`), or fails with
//! [`Error::NoCudaDriver`](crate::Error::NoCudaDriver) where there is none.

mod act_quant;
pub(crate) mod config;
pub(crate) mod forward;
mod generate;
mod gguf_model;
mod gguf_tokenizer;
#[cfg(feature = "cuda")]
use crate::cuda::engine as gpu;
#[cfg(not(feature = "cuda"))]
#[path = "gpu_stub.rs"]
mod gpu;
mod history;
mod kv_cache;
mod load;
pub(crate) mod memory;
mod profile;
mod rope;
mod sampler;
mod store;
mod tokenizer;
pub(crate) mod weights;

use std::path::Path;
use std::sync::Arc;

pub use config::{BitLinearConfig, HiddenAct, ModelConfig};
pub use generate::{generate, GenerateStats, StopReason};
pub use kv_cache::KvType;
pub use load::model_config;
pub use profile::Phase;
pub use rope::RopeScaling;
#[cfg(test)]
pub(crate) use sampler::draw_row;
pub(crate) use sampler::Draw;
pub use sampler::{Sampler, SamplingParams};
pub use tokenizer::Tokenizer;

use crate::error::{Error, Result};
use forward::{Plan, RunState, TokenPos};
use history::SlotHistory;
use kv_cache::KvCache;
use weights::Weights;

/// Where the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU (rayon threads).
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl Device {
    /// `"cpu"`, `"cuda"`, `"cuda:N"` or `"auto"` (GPU 0 where a CUDA driver and device are
    /// present, else the CPU).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" if gpu::check_available().is_ok() => Ok(Device::Cuda(0)),
            "cpu" | "auto" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| Error::Unsupported {
                    what: "device",
                    detail: format!("{s:?}; expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""),
                }),
        }
    }
}

/// How the lm_head's weights are held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LmHead {
    /// As the checkpoint stores them (f32, f16 or bf16), computed in f32: transformers'
    /// float32 forward of the same checkpoint, up to summation order.
    #[default]
    AsStored,
    /// Each row quantized to int8 by its absolute maximum at load (half of bf16's bytes per
    /// decode step; each weight off by at most `max|row| / 254`). A tied embedding stays as
    /// stored for the token lookups.
    Int8,
}

impl LmHead {
    /// `"as-stored"` or `"int8"`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "as-stored" | "bf16" | "f16" | "stored" => Ok(LmHead::AsStored),
            "int8" | "i8" => Ok(LmHead::Int8),
            _ => Err(Error::Unsupported {
                what: "lm_head",
                detail: format!("{s:?}; expected \"as-stored\" or \"int8\""),
            }),
        }
    }

    /// The name [`LmHead::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            LmHead::AsStored => "as-stored",
            LmHead::Int8 => "int8",
        }
    }
}

/// How the linear layers' weights are held and multiplied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinearWeights {
    /// Packed ternary weights (2 bits each) times per-token int8 activations (W2A8): the
    /// BitNet b1.58 model as trained.
    #[default]
    Ternary,
    /// Each linear layer decoded once at load to a bf16 matrix `w * scale` and multiplied by
    /// cuBLAS with bf16 activations (no int8 quantization): what a dense bf16 checkpoint of
    /// the same model runs, the baseline of the whole-model GPU bench. GPU only; norms, RoPE,
    /// attention, lm_head and KV cache are the ternary engine's.
    DenseBf16,
}

impl LinearWeights {
    /// `"ternary"` or `"dense-bf16"`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ternary" => Ok(LinearWeights::Ternary),
            "dense-bf16" | "bf16" => Ok(LinearWeights::DenseBf16),
            _ => Err(Error::Unsupported {
                what: "weights",
                detail: format!("{s:?}; expected \"ternary\" or \"dense-bf16\""),
            }),
        }
    }

    /// The name [`LinearWeights::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            LinearWeights::Ternary => "ternary",
            LinearWeights::DenseBf16 => "dense-bf16",
        }
    }
}

/// How to set an engine up.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineOptions {
    /// Where to run.
    pub device: Device,
    /// Tokens each slot's KV cache holds (at most the model's `max_position_embeddings`).
    pub max_context: usize,
    /// Independent sequences (KV-cache slots); with [`EngineOptions::memory_fraction`], the
    /// most slots.
    pub slots: usize,
    /// CPU threads; `None` takes [`crate::cpu::default_threads`] (`WARP_BITNET_THREADS`, else
    /// every core this process may use).
    pub threads: Option<usize>,
    /// How the lm_head's weights are held.
    pub lm_head: LmHead,
    /// `None`: exactly `slots` slots. `Some(f)`: as many slots as fit, at most `slots`, in the
    /// share `f` (0 < f <= 1) of the memory free before the engine allocates (the GPU's for
    /// [`Device::Cuda`], the host's available memory on the CPU), weights and buffers
    /// included; [`Engine::slots`] says how many. A server's pool is sized this way.
    pub memory_fraction: Option<f64>,
    /// The KV cache's element type; `None` takes the device's: f32 on the CPU (transformers'
    /// float32 numbers), f16 on a GPU (its only type).
    pub kv_cache: Option<KvType>,
    /// How the linear layers' weights are held: ternary (default) or, on a GPU only, dense
    /// bf16 through cuBLAS (the bench's baseline).
    pub weights: LinearWeights,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            max_context: 2048,
            slots: 1,
            threads: None,
            lm_head: LmHead::AsStored,
            memory_fraction: None,
            kv_cache: None,
            weights: LinearWeights::Ternary,
        }
    }
}

/// A loaded model with its KV cache and activation buffers.
pub struct Engine {
    config: ModelConfig,
    weights: Weights,
    tokenizer: Option<Arc<Tokenizer>>,
    cache: KvCache,
    state: RunState,
    threads: usize,
    max_context: usize,
    /// Each slot's repetition history (the tokens appended since its reset).
    history: SlotHistory,
    /// The device side where the engine runs on a GPU (the CPU cache then holds no rows).
    gpu: Option<gpu::GpuEngine>,
    /// The CPU path's logits for [`Engine::greedy`] and [`Engine::sample`], reused.
    host_logits: Vec<f32>,
}

impl Engine {
    /// Loads a Hugging Face folder (`config.json` + `*.safetensors` [+ `tokenizer.json`,
    /// `tokenizer_config.json`]), one of our packed safetensors files (`config.json` beside it),
    /// or a GGUF file (bitnet.cpp `I2_S` or llama.cpp `TQ1_0` / `TQ2_0` ternary tensors; config,
    /// tokenizer and chat template from its metadata; docs/FORMATS.md, "GGUF models").
    pub fn load(path: &Path, opts: &EngineOptions) -> Result<Self> {
        check_options(opts)?;
        let l = load::load(path)?;
        Self::build(l.config, l.weights, l.tokenizer, opts)
    }

    /// The architecture `config` with random weights from `seed` (benchmarks, tests).
    pub fn random(config: ModelConfig, seed: u64, opts: &EngineOptions) -> Result<Self> {
        check_options(opts)?;
        config.validate("config")?;
        let weights = Weights::random(&config, seed)?;
        Self::build(config, weights, None, opts)
    }

    fn build(
        config: ModelConfig,
        mut weights: Weights,
        tokenizer: Option<Tokenizer>,
        opts: &EngineOptions,
    ) -> Result<Self> {
        if opts.max_context == 0 || opts.max_context > config.max_position_embeddings {
            return Err(Error::Unsupported {
                what: "max_context",
                detail: format!(
                    "{}; must be between 1 and the model's max_position_embeddings ({})",
                    opts.max_context, config.max_position_embeddings
                ),
            });
        }
        if opts.slots == 0 {
            return Err(Error::Empty { arg: "slots" });
        }
        let threads = match opts.threads {
            Some(0) => return Err(Error::Empty { arg: "threads" }),
            Some(n) => crate::cpu::resolve_threads(n)?,
            None => crate::cpu::default_threads()?,
        };
        let gpu = match opts.device {
            Device::Cpu => None,
            Device::Cuda(_) if opts.lm_head == LmHead::Int8 => {
                return Err(Error::Unsupported {
                    what: "lm_head",
                    detail: "int8 runs on the CPU only for now; use the lm_head as stored on a GPU"
                        .into(),
                })
            }
            Device::Cuda(_) if opts.kv_cache == Some(KvType::F32) => {
                return Err(Error::Unsupported {
                    what: "kv_cache",
                    detail: "the GPU engine's KV cache is f16".into(),
                })
            }
            Device::Cuda(n) => Some(gpu::GpuEngine::new(
                n,
                &config,
                &weights,
                (opts.slots, opts.memory_fraction),
                opts.max_context,
                opts.weights,
            )?),
        };
        let (slots, cpu_context) = match &gpu {
            Some(g) => (g.slots(), 0),
            None => (cpu_slots(&config, opts)?, opts.max_context),
        };
        if opts.lm_head == LmHead::Int8 {
            weights.quantize_lm_head();
        }
        Ok(Self {
            cache: KvCache::new(&config, kv_type(opts), slots, cpu_context)?,
            history: SlotHistory::new(slots, config.vocab_size),
            config,
            weights,
            tokenizer: tokenizer.map(Arc::new),
            state: RunState::default(),
            threads,
            max_context: opts.max_context,
            gpu,
            host_logits: Vec::new(),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The tokenizer, if the model came with one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_deref()
    }

    /// The tokenizer as a shared handle, to detokenize while the engine is busy (streaming).
    pub fn shared_tokenizer(&self) -> Option<Arc<Tokenizer>> {
        self.tokenizer.clone()
    }

    /// KV-cache slots (independent sequences).
    pub fn slots(&self) -> usize {
        self.cache.lens.len()
    }

    /// CPU threads each forward pass runs on.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Changes the thread count (1 to [`crate::cpu::MAX_THREADS`]).
    pub fn set_threads(&mut self, threads: usize) -> Result<()> {
        if threads == 0 {
            return Err(Error::Empty { arg: "threads" });
        }
        self.threads = crate::cpu::resolve_threads(threads)?;
        Ok(())
    }

    /// The lm_head's element type as held: `"f32"`, `"f16"`, `"bf16"` or `"int8"`.
    pub fn lm_head_dtype(&self) -> &'static str {
        self.weights.lm_head().dtype_name()
    }

    /// Wall-clock time per phase of the forward passes since the last
    /// [`Engine::reset_phase_times`] (or since the engine was built).
    pub fn phase_times(&self) -> Vec<(Phase, std::time::Duration)> {
        self.state.w.clock.totals()
    }

    /// Zeroes [`Engine::phase_times`].
    pub fn reset_phase_times(&mut self) {
        self.state.w.clock.reset();
    }

    /// Tokens each slot can hold.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Tokens already in `slot`'s cache (0 for a slot that does not exist).
    pub fn slot_len(&self, slot: usize) -> usize {
        self.cache.lens.get(slot).copied().unwrap_or(0)
    }

    /// Empties `slot` (no-op for a slot that does not exist).
    pub fn reset_slot(&mut self, slot: usize) {
        if let Some(l) = self.cache.lens.get_mut(slot) {
            *l = 0;
            self.history.clear(slot);
            if let Some(g) = &mut self.gpu {
                g.reset_slot(slot);
            }
        }
    }

    /// Bytes one decode step of one sequence reads with `context` tokens cached: every weight
    /// (C2 codes and row scales, norms, the lm_head as held), one embedding row, and the KV cache.
    pub fn bytes_per_decode_step(&self, context: usize) -> u64 {
        if let Some(g) = &self.gpu {
            return g.bytes_per_decode_step(context);
        }
        let c = &self.config;
        let kv = (c.num_layers * context * c.kv_dim() * 2 * 4) as u64;
        self.weights.decode_bytes(c) + kv
    }

    /// Appends each entry's tokens to its slot (a prompt chunk = prefill, or one token = decode),
    /// runs the model, and writes each entry's last-position logits into
    /// `logits[i * vocab .. (i + 1) * vocab]`. Errors (context overflow, bad slot, a slot twice,
    /// no tokens, token id >= vocab) leave every slot unchanged.
    pub fn forward(&mut self, batch: &[(usize, &[u32])], logits: &mut [f32]) -> Result<()> {
        let plan = self.plan(batch, logits.len())?;
        if let Some(g) = &mut self.gpu {
            g.forward(&plan, logits)?;
            self.advance(batch);
            return Ok(());
        }
        let (c, w, cache, state) = (
            &self.config,
            &self.weights,
            &mut self.cache,
            &mut self.state,
        );
        forward::forward(c, w, cache, state, &plan, logits, self.threads)?;
        self.advance(batch);
        Ok(())
    }

    /// Counts a run batch's tokens into their slots' lengths and histories.
    fn advance(&mut self, batch: &[(usize, &[u32])]) {
        for &(slot, ids) in batch {
            self.cache.lens[slot] += ids.len();
            self.history.mark(slot, ids);
        }
    }

    /// As [`Engine::forward`], but writes each entry's most likely next token (the greedy
    /// sampler's pick: the first index of the largest logit) to `tokens[i]`; on a GPU the pick
    /// is made on the device and the logits never leave it.
    pub fn greedy(&mut self, batch: &[(usize, &[u32])], tokens: &mut [u32]) -> Result<()> {
        crate::error::check_len("tokens", batch.len(), tokens.len())?;
        if let (Some(plan), Some(g)) = (self.gpu_plan(batch)?, self.gpu.as_mut()) {
            g.greedy(&plan, tokens)?;
            self.advance(batch);
            return Ok(());
        }
        let logits = self.host_logits(batch)?;
        let vocab = self.config.vocab_size;
        for (t, row) in tokens.iter_mut().zip(logits.chunks_exact(vocab)) {
            *t = sampler::argmax(row);
        }
        self.host_logits = logits;
        Ok(())
    }

    /// The GPU's plan of `batch` (its logits never leave the device), or `None` on the CPU.
    fn gpu_plan(&self, batch: &[(usize, &[u32])]) -> Result<Option<Plan>> {
        match self.gpu {
            Some(_) => Ok(Some(
                self.plan(batch, batch.len() * self.config.vocab_size)?,
            )),
            None => Ok(None),
        }
    }

    /// The CPU path of [`Engine::greedy`] and [`Engine::sample`]: [`Engine::forward`] into the
    /// engine's reused logits buffer, taken out so the caller can read the engine beside it;
    /// the caller puts it back.
    fn host_logits(&mut self, batch: &[(usize, &[u32])]) -> Result<Vec<f32>> {
        let mut logits = std::mem::take(&mut self.host_logits);
        logits.resize(batch.len() * self.config.vocab_size, 0.0);
        self.forward(batch, &mut logits)?;
        Ok(logits)
    }

    /// As [`Engine::forward`], but draws each entry's next token with `samplers[i]` (one draw
    /// of its stream) into `tokens[i]`; an entry without a sampler (a prompt chunk whose
    /// sequence goes on) gets the greedy token and no draw is counted. The repetition
    /// penalty's history is every token appended to the entry's slot since its reset: the
    /// prompt and the tokens generated so far when a generate loop feeds each back. On a GPU
    /// the draw is made on the device (the same algorithm: the same token as on the CPU) and
    /// the logits never leave it.
    pub fn sample(
        &mut self,
        batch: &[(usize, &[u32])],
        samplers: &mut [Option<&mut Sampler>],
        tokens: &mut [u32],
    ) -> Result<()> {
        crate::error::check_len("tokens", batch.len(), tokens.len())?;
        crate::error::check_len("samplers", batch.len(), samplers.len())?;
        if let (Some(plan), Some(g)) = (self.gpu_plan(batch)?, self.gpu.as_mut()) {
            let draws: Vec<(Draw, usize)> = samplers
                .iter_mut()
                .zip(batch)
                .map(|(s, &(slot, _))| {
                    let draw = s.as_mut().map_or(Draw::GREEDY, |s| s.next_draw());
                    (draw, slot)
                })
                .collect();
            g.sample(&plan, &draws, tokens)?;
            self.advance(batch);
            return Ok(());
        }
        let mut logits = self.host_logits(batch)?;
        let vocab = self.config.vocab_size;
        for (i, row) in logits.chunks_exact_mut(vocab).enumerate() {
            tokens[i] = match &mut samplers[i] {
                Some(s) => s.sample_bits(row, self.history.slot(batch[i].0)),
                None => sampler::argmax(row),
            };
        }
        self.host_logits = logits;
        Ok(())
    }

    /// Whether the GPU path replays captured CUDA graphs for decode steps of 1, 2, 4, 8 or 16
    /// sequences (the default) or launches every kernel eagerly: both compute the same bits;
    /// the switch is for tests and timings. The CPU path has no graphs and ignores it.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        if let Some(g) = &mut self.gpu {
            g.set_graphs(on);
        }
    }

    /// GPU only (the whole-model bench): the median microseconds of one decode step of
    /// `batch` sequences replayed from its captured graph (run one such step first, e.g. a
    /// [`forward`](Engine::forward) of `batch` one-token entries), and the device's
    /// copy bandwidth in bytes per second, measured in the same call.
    pub fn cuda_decode_timing(&mut self, batch: usize, iters: usize) -> Result<(f64, f64)> {
        let g = self.gpu.as_mut().ok_or_else(|| Error::Unsupported {
            what: "device",
            detail: "CUDA timings need an engine on a GPU (device \"cuda\")".into(),
        })?;
        let us = g.time_decode_graph(batch, iters)?;
        Ok((us, g.copy_bandwidth()?))
    }

    /// Validates a batch and lays its tokens out: ids, (slot, position) of each, and the index
    /// of each entry's last token.
    fn plan(&self, batch: &[(usize, &[u32])], logits_len: usize) -> Result<Plan> {
        if batch.is_empty() {
            return Err(Error::Empty { arg: "batch" });
        }
        let vocab = self.config.vocab_size;
        crate::error::check_len("logits", batch.len() * vocab, logits_len)?;
        let (mut tokens, mut at, mut last) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen = vec![false; self.slots()];
        for &(slot, ids) in batch {
            let used = seen.get_mut(slot).ok_or_else(|| Error::Unsupported {
                what: "slot",
                detail: format!("{slot}; the engine has {} slots", self.slots()),
            })?;
            if std::mem::replace(used, true) {
                return Err(Error::Unsupported {
                    what: "slot",
                    detail: format!("{slot} appears twice in one batch"),
                });
            }
            if ids.is_empty() {
                return Err(Error::Empty { arg: "tokens" });
            }
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::Unsupported {
                    what: "token id",
                    detail: format!("{id} is out of range for a vocabulary of {vocab}"),
                });
            }
            let start = self.cache.lens[slot];
            if start + ids.len() > self.max_context {
                return Err(Error::TooLarge {
                    arg: "context (tokens in the slot + new tokens)",
                    value: (start + ids.len()) as u64,
                    limit: self.max_context as u64,
                });
            }
            tokens.extend_from_slice(ids);
            at.extend((0..ids.len()).map(|i| TokenPos {
                slot,
                pos: start + i,
            }));
            last.push(tokens.len() - 1);
        }
        Ok(Plan { tokens, at, last })
    }
}

/// The CPU engine's slots: `opts.slots`, or as many as fit the host's available memory
/// (`memory_fraction`; the weights are loaded already, the KV cache is what grows).
fn cpu_slots(c: &ModelConfig, opts: &EngineOptions) -> Result<usize> {
    let (Some(f), Some(free)) = (opts.memory_fraction, memory::available_host_memory()) else {
        return Ok(opts.slots);
    };
    memory::fit_slots(opts.slots, f, free, |s| {
        KvCache::bytes(c, kv_type(opts), s, opts.max_context)
    })
}

/// The KV cache type `opts` asks for, or the device's default.
fn kv_type(opts: &EngineOptions) -> KvType {
    opts.kv_cache.unwrap_or(match opts.device {
        Device::Cpu => KvType::F32,
        Device::Cuda(_) => KvType::F16,
    })
}

/// Options checked before the model is read: the memory share, the weights' kind for the
/// device, and for a GPU engine a CUDA driver and device.
fn check_options(opts: &EngineOptions) -> Result<()> {
    if let Some(f) = opts.memory_fraction {
        memory::check_fraction(f)?;
    }
    match opts.device {
        Device::Cpu if opts.weights == LinearWeights::DenseBf16 => Err(Error::Unsupported {
            what: "weights",
            detail: "dense-bf16 runs on a GPU only (the whole-model bench's baseline); the CPU \
                     engine runs the ternary weights"
                .into(),
        }),
        Device::Cpu => Ok(()),
        Device::Cuda(_) => gpu::check_available(),
    }
}

#[cfg(test)]
mod tests;
