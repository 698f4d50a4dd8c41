//! The engine on a CUDA GPU: the model's weights and KV cache on the device, a decode step as
//! ~10 launches per layer on one stream (engine.cu's row kernels between the ternary GEMMs,
//! which write raw int32 sums; cuBLAS for the lm_head), captured once per decode batch size
//! into a CUDA graph and replayed.
//!
//! Design (docs/NOTES.md, "GPU engine"):
//! - `LinearWeights::DenseBf16` (the bench's baseline) swaps only the linear layers: bf16
//!   `w * scale` matrices decoded once at load, the row kernels write bf16 inputs instead of
//!   int8, cuBLAS writes f32 outputs into the sums buffer (`Deq::F32_VALUES`); everything
//!   else, graphs included, is the same step.
//! - Numerics are the CPU engine's, operation for operation ([`step`], engine.cu): the same
//!   int8 inputs and exact integer sums, the same dequantization and norms, RoPE from a table
//!   the CPU's own `rope` computes. The paths part in the attention (f16 KV cache, expf,
//!   summation order) and the lm_head's summation order.
//! - q|k|v and gate|up are stacked into one GEMM each (weights with per-tensor scales: the sums
//!   are scaled per row by the kernel that reads them). Llama layers with their own activation
//!   norm (`use_rms_norm`) each need their own input, so they stay one GEMM per layer.
//! - Embedding and lm_head tables in the narrowest type that holds them exactly (bf16 for a
//!   bf16 checkpoint; f32 for random weights, so the CPU and GPU paths compare tightly).
//! - The KV cache is f16, `[layers, slots, max_context, kv_dim]`; everything (weights, cache,
//!   buffers for `CHUNK_TOKENS` tokens) is sized up front and checked against the free
//!   device memory before the first allocation.
//! - Per-token ids, slots and positions live in device buffers the host writes before each
//!   pass, so a graph captured for a decode batch size replays every later step of that size.
//!   Prefill (and other shapes) run the same launches eagerly, in passes of at most
//!   `CHUNK_TOKENS` tokens.

mod schedule;
mod sizes;
mod step;
mod tables;
mod timing;
mod weights;

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaStream;

use crate::cuda::{history_words, Gpu, OwnedGraph, SampleRow};
use crate::engine::config::ModelConfig;
use crate::engine::forward::Plan;
use crate::engine::memory;
use crate::engine::weights::Weights;
use crate::engine::{Draw, LinearWeights};
use crate::error::{Error, Result};
use sizes::Sizes;
use step::State;
use weights::GpuWeights;

/// Fails with [`Error::NoCudaDriver`] where no driver (or no device) is present: checked before
/// a model is read.
pub(crate) fn check_available() -> Result<()> {
    if crate::cuda::is_available() {
        Ok(())
    } else {
        Err(Error::NoCudaDriver)
    }
}

/// Where a pass's results go.
enum Out<'a> {
    /// `[entries, vocab]` logits.
    Logits(&'a mut [f32]),
    /// `[entries]` greedy tokens.
    Greedy(&'a mut [u32]),
    /// `[entries]` tokens drawn on the device with `[entries]` draws.
    Sample(&'a [SampleRow], &'a mut [u32]),
}

/// The kernel a pass ends with after the lm_head (part of its captured graph).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Tail {
    None,
    Argmax,
    Sample,
}

impl Out<'_> {
    fn tail(&self) -> Tail {
        match self {
            Out::Logits(_) => Tail::None,
            Out::Greedy(_) => Tail::Argmax,
            Out::Sample(..) => Tail::Sample,
        }
    }
}

/// The device side of an engine.
pub(crate) struct GpuEngine {
    gpu: Gpu,
    stream: Arc<CudaStream>,
    config: ModelConfig,
    sizes: Sizes,
    max_context: usize,
    weights: GpuWeights,
    state: State,
    /// Captured decode steps by batch size and tail.
    graphs: HashMap<(usize, Tail), OwnedGraph>,
    /// Slots reset since the last pass: their history bitmaps are cleared before the next.
    reset: Vec<usize>,
    /// Whether decode steps replay graphs (else every pass runs eagerly).
    use_graphs: bool,
}

impl GpuEngine {
    /// Opens GPU `ordinal`, checks that the model, its cache and buffers fit its free memory,
    /// then uploads the weights and allocates everything. `slots` is `(n, None)` for exactly
    /// `n` slots, `(n, Some(f))` for as many as fit in the share `f` of the free memory, at
    /// most `n`.
    pub fn new(
        ordinal: usize,
        c: &ModelConfig,
        w: &Weights,
        (slots, fraction): (usize, Option<f64>),
        max_context: usize,
        kind: LinearWeights,
    ) -> Result<Self> {
        check_available()?;
        let gpu = Gpu::new(ordinal)?;
        let stream = gpu.context().new_stream()?;
        let widths = [c.hidden_size, c.q_dim(), c.intermediate_size];
        gpu.check_engine_shapes(&widths, c.num_heads, c.head_dim, max_context)?;
        let (embed, head) = weights::table_dtypes(w)?;
        let weight_bytes = sizes::weight_bytes(c, w, (embed, head), kind);
        let need = |slots: usize| -> Result<u64> {
            let sizes = Sizes::new(c, slots, max_context, kind)?;
            let state = sizes.state_bytes(c, head.unwrap_or(embed));
            Ok(weight_bytes + state)
        };
        gpu.context().bind_to_thread()?;
        let (free, _) = cudarc::driver::result::mem_get_info()?;
        let slots = match fraction {
            Some(f) => memory::fit_slots(slots, f, free as u64, need)?,
            None => slots,
        };
        let sizes = Sizes::new(c, slots, max_context, kind)?;
        sizes::check_fits(need(slots)?, free as u64)?;
        let weights = GpuWeights::upload(&gpu, &stream, c, w, kind)?;
        let rope = tables::rope_table(c, max_context);
        let state = State::new(&stream, c, &sizes, weights.head().dtype, &rope)?;
        stream.synchronize()?;
        Ok(Self {
            gpu,
            stream,
            config: c.clone(),
            sizes,
            max_context,
            weights,
            state,
            graphs: HashMap::new(),
            reset: Vec::new(),
            use_graphs: true,
        })
    }

    /// KV-cache slots (chosen from the free memory where asked).
    pub fn slots(&self) -> usize {
        self.sizes.slots
    }

    /// Whether decode steps replay captured graphs (default) or run eagerly: for tests (the
    /// two must agree bit for bit) and A/B timings.
    pub fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on;
    }

    /// Runs a validated plan; writes each entry's logits to `logits`.
    pub fn forward(&mut self, plan: &Plan, logits: &mut [f32]) -> Result<()> {
        self.run(plan, Out::Logits(logits))
    }

    /// Runs a validated plan; writes each entry's most likely next token (the first index of
    /// the largest logit, as the greedy sampler) to `tokens`, picked on the device.
    pub fn greedy(&mut self, plan: &Plan, tokens: &mut [u32]) -> Result<()> {
        self.run(plan, Out::Greedy(tokens))
    }

    /// Runs a validated plan; draws each entry's next token on the device with `draws[i]`
    /// (the sampler's algorithm; the history is the bitmap of the entry's slot).
    pub fn sample(
        &mut self,
        plan: &Plan,
        draws: &[(Draw, usize)],
        tokens: &mut [u32],
    ) -> Result<()> {
        let rows: Vec<SampleRow> = draws
            .iter()
            .map(|(d, slot)| SampleRow::new(d, *slot as u32))
            .collect();
        self.run(plan, Out::Sample(&rows, tokens))
    }

    /// Empties `slot`'s repetition history (before its next pass).
    pub fn reset_slot(&mut self, slot: usize) {
        self.reset.push(slot);
    }

    fn run(&mut self, plan: &Plan, mut out: Out) -> Result<()> {
        let vocab = self.config.vocab_size;
        let tail = out.tail();
        let graph = schedule::graph_batch(plan).filter(|_| self.use_graphs);
        self.clear_reset_histories()?;
        for pass in schedule::passes(plan, self.sizes.chunk) {
            self.write_ids(plan, &pass)?;
            let (n, m) = (pass.range.len(), pass.last.len());
            let first = pass.last.first().map(|&(first, _)| first);
            if let (Out::Sample(rows, _), Some(first)) = (&out, first) {
                let st = &mut self.state;
                st.sample_rows
                    .write(&self.stream, &rows[first..first + m])?;
            }
            match graph {
                Some(b) => self.replay(b, tail)?,
                None => {
                    self.launch_pass(n, m)?;
                    if m > 0 {
                        self.launch_tail(tail, m)?;
                    }
                }
            }
            let Some(first) = first else {
                continue;
            };
            let st = &self.state;
            match &mut out {
                Out::Logits(l) => {
                    let dst = &mut l[first * vocab..(first + m) * vocab];
                    self.stream.memcpy_dtoh(&st.logits.view(m * vocab), dst)?;
                }
                Out::Greedy(t) | Out::Sample(_, t) => {
                    let dst = &mut t[first..first + m];
                    self.stream.memcpy_dtoh(&st.greedy.view(m), dst)?;
                }
            }
        }
        self.stream.synchronize()?;
        Ok(())
    }

    /// The argmax or the draw of the pass's `m` logit rows into `greedy`.
    fn launch_tail(&self, tail: Tail, m: usize) -> Result<()> {
        let (st, vocab, s) = (&self.state, self.config.vocab_size, self.stream.cu_stream());
        match tail {
            Tail::None => Ok(()),
            // SAFETY: `logits` holds m rows of vocab, `greedy` m u32 (m <= logit_rows).
            Tail::Argmax => unsafe {
                self.gpu
                    .argmax_raw(st.logits.ptr, m, vocab, vocab, st.greedy.ptr, s)
            },
            // SAFETY: as above; `sample_rows` holds m rows (written before the pass) whose
            // slots are the entries' (below `slots`), `history` a bitmap per slot.
            Tail::Sample => unsafe {
                self.gpu.sample_raw(
                    st.logits.ptr,
                    m,
                    vocab,
                    vocab,
                    st.sample_rows.ptr,
                    (st.history.ptr, history_words(vocab)),
                    st.greedy.ptr,
                    s,
                )
            },
        }
    }

    /// Zeroes the history bitmaps of the slots reset since the last pass.
    fn clear_reset_histories(&mut self) -> Result<()> {
        let words = history_words(self.config.vocab_size);
        for slot in std::mem::take(&mut self.reset) {
            let range = slot * words..(slot + 1) * words;
            self.state.history.zero(&self.stream, range)?;
        }
        Ok(())
    }

    /// Copies the pass's token ids, slots, positions and logit rows to the device.
    fn write_ids(&mut self, plan: &Plan, pass: &schedule::Pass) -> Result<()> {
        let r = pass.range.clone();
        let tok = plan.tokens[r.clone()].to_vec();
        let slot: Vec<u32> = plan.at[r.clone()].iter().map(|p| p.slot as u32).collect();
        let pos: Vec<u32> = plan.at[r].iter().map(|p| p.pos as u32).collect();
        let last: Vec<u32> = pass.last.iter().map(|&(_, row)| row).collect();
        let (st, stream) = (&mut self.state, &self.stream);
        st.tok.write(stream, &tok)?;
        st.slot.write(stream, &slot)?;
        st.pos.write(stream, &pos)?;
        st.last.write(stream, &last)
    }

    /// Replays the graph of decode batch `b` ending with `tail`, capturing it first: the first
    /// time, the step runs eagerly (which also creates cuBLAS's handle and loads modules
    /// lazily), then the same launches are captured; the captured step is not run then (the
    /// eager one did the work).
    fn replay(&mut self, b: usize, tail: Tail) -> Result<()> {
        if let Some(g) = self.graphs.get(&(b, tail)) {
            return g.launch();
        }
        let step = |e: &Self| e.launch_pass(b, b).and_then(|()| e.launch_tail(tail, b));
        step(self)?;
        self.stream.synchronize()?;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let launched = step(self);
        // End the capture whatever happened, so the stream stays usable.
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        launched?;
        if let Some(g) = graph? {
            self.graphs.insert((b, tail), OwnedGraph::new(g));
        }
        Ok(())
    }

    /// Bytes one decode step of one sequence reads with `context` tokens cached: every
    /// GEMM's tiles and scales (or dense bf16 matrix), the norms, one embedding row, the lm_head, the f16 KV cache.
    pub fn bytes_per_decode_step(&self, context: usize) -> u64 {
        let c = &self.config;
        let w = &self.weights;
        let layers: u64 = w
            .layers
            .iter()
            .map(|l| {
                let stacked: u64 = l.qkv.iter().chain(&l.gate_up).map(|g| g.step_bytes()).sum();
                stacked
                    + l.o.step_bytes()
                    + l.down.step_bytes()
                    + 4 * (2 * c.hidden_size + c.intermediate_size) as u64
            })
            .sum();
        let table = (c.vocab_size * c.hidden_size * w.head().dtype.size()) as u64;
        let row = (c.hidden_size * w.embed.dtype.size()) as u64;
        let kv = (c.num_layers * context * c.kv_dim() * 2 * 2) as u64;
        layers + table + row + kv
    }
}

#[cfg(test)]
mod dense_tests;
#[cfg(test)]
mod tests;
