//! Every buffer of the GPU engine, sized once from the config and the options, and the device
//! memory they take (checked against the free memory before anything is allocated).

use crate::cuda::{history_words, SampleRow};
use crate::dtype::DType;
use crate::engine::config::ModelConfig;
use crate::engine::weights::Weights;
use crate::engine::LinearWeights;
use crate::error::{checked_elems, Error, Result};
use crate::format::tiled;

/// Tokens one pass through the layers takes at most: a longer prompt runs in chunks of this
/// many (the KV cache carries the earlier chunks).
pub(crate) const CHUNK_TOKENS: usize = 256;

/// Element counts of the engine's buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sizes {
    /// KV-cache slots.
    pub slots: usize,
    /// Tokens per pass.
    pub chunk: usize,
    /// Row stride of the GEMMs' int32 sums: the widest stacked GEMM (q|k|v, gate|up, o, down).
    pub acc_ld: usize,
    /// Widest GEMM input (hidden, q_dim, intermediate): the input buffer's row width.
    pub q8_ld: usize,
    /// The GEMMs' input type: int8 (ternary weights) or bf16 (dense-bf16 weights).
    pub gemm_input: DType,
    /// Rows of logits one pass produces: one per batch entry, and entries are distinct slots.
    pub logit_rows: usize,
    /// Elements of the K (and of the V) cache: `[layers, slots, max_context, kv_dim]`.
    pub kv_elems: usize,
    /// f32 of the RoPE table: `[max_context, head_dim / 2, 2]`.
    pub rope_len: usize,
}

/// x_scale banks: consecutive quantizations alternate between two banks (a kernel reads the
/// previous GEMM's scales while writing the next one's), each with a slot per stacked part.
pub(crate) const SCALE_SLOTS: usize = 2 * 3;

impl Sizes {
    pub fn new(
        c: &ModelConfig,
        slots: usize,
        max_context: usize,
        kind: LinearWeights,
    ) -> Result<Self> {
        let chunk = CHUNK_TOKENS.min(checked_elems("KV cache", slots, max_context)?);
        let kv_elems = [c.num_layers, slots, max_context, c.kv_dim()]
            .iter()
            .try_fold(1usize, |a, &b| checked_elems("KV cache", a, b))?;
        Ok(Self {
            slots,
            chunk,
            acc_ld: (c.q_dim() + 2 * c.kv_dim())
                .max(2 * c.intermediate_size)
                .max(c.hidden_size),
            q8_ld: c.hidden_size.max(c.q_dim()).max(c.intermediate_size),
            gemm_input: match kind {
                LinearWeights::Ternary => DType::I8,
                LinearWeights::DenseBf16 => DType::BF16,
            },
            logit_rows: chunk.min(slots),
            kv_elems,
            rope_len: checked_elems("RoPE table", max_context, c.head_dim)?,
        })
    }

    /// Bytes of the activation buffers, the KV cache and the RoPE table (`table` is the
    /// lm_head's input type).
    pub fn state_bytes(&self, c: &ModelConfig, table: DType) -> u64 {
        let n = self.chunk as u64;
        let (h, q) = (c.hidden_size as u64, c.q_dim() as u64);
        let ids = 4 * 4 * n; // tok, pos, slot, last rows
        let x = 4 * n * h;
        let q8 = n * (self.q8_ld * self.gemm_input.size()) as u64 + 4 * n * SCALE_SLOTS as u64;
        let acc = 4 * n * self.acc_ld as u64;
        let attn = 2 * 4 * n * q; // rotated q, attention output
        let head = self.logit_rows as u64 * (h * table.size() as u64 + 4 * c.vocab_size as u64 + 4);
        let kv = 2 * 2 * self.kv_elems as u64;
        let sampling = self.logit_rows as u64 * std::mem::size_of::<SampleRow>() as u64
            + 4 * (self.slots * history_words(c.vocab_size)) as u64;
        ids + x + q8 + acc + attn + head + kv + 4 * self.rope_len as u64 + sampling
    }
}

/// Bytes the weights take on the device: T2 tiles and per-row scales (or the dense bf16
/// matrices) and biases of every GEMM, norms, and the embedding / lm_head tables in their types.
pub(crate) fn weight_bytes(
    c: &ModelConfig,
    w: &Weights,
    (embed, head): (DType, Option<DType>),
    kind: LinearWeights,
) -> u64 {
    let layers = w.layer_bytes(|l| {
        let (r, k) = (l.c2.rows(), l.c2.cols());
        let matrix = match kind {
            LinearWeights::Ternary => 4 * (tiled::len_words(r, k) + r),
            LinearWeights::DenseBf16 => 2 * r * k,
        };
        matrix + 4 * l.bias.as_ref().map_or(0, |_| r) + 4 * l.norm.as_ref().map_or(0, Vec::len)
    }) as u64;
    let table = (c.vocab_size * c.hidden_size) as u64;
    layers
        + 4 * w.final_norm.len() as u64
        + table * embed.size() as u64
        + head.map_or(0, |d| table * d.size() as u64)
}

/// Fails with a clear error when `need` bytes exceed the `free` device memory.
pub(crate) fn check_fits(need: u64, free: u64) -> Result<()> {
    if need > free {
        return Err(Error::TooLarge {
            arg: "GPU memory for the model, its KV cache and buffers (bytes; lower max_context \
                  or slots)",
            value: need,
            limit: free,
        });
    }
    Ok(())
}
