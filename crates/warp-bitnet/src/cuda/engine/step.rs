//! One pass of `n` tokens through the model on the device: every launch on one stream, every
//! address and size fixed by the buffers, and the per-token data (ids, slots, positions, which
//! rows produce logits) read from device buffers, so the same launches can be captured into a
//! graph and replayed for any step of that shape.
//!
//! Per layer (10 launches when q|k|v and gate|up are stacked):
//! 1. GEMM q|k|v (its int8 input was written by the previous layer's last kernel);
//! 2. `rope_kv_append`; 3. `attention_decode`;
//! 4. `row_norm_quant` of the attention output (attn_sub_norm) -> int8; 5. GEMM o;
//! 6. `row_norm_quant`: x += o, ffn_norm -> int8; 7. GEMM gate|up;
//! 8. `row_norm_quant`: act(gate) * up, ffn_sub_norm -> int8; 9. GEMM down;
//! 10. `row_norm_quant`: x += down, the next layer's input_layernorm -> int8.
//!
//! The x_scale of consecutive quantizations alternates between two banks: the kernel that
//! dequantizes one GEMM's sums (reading its input's scales) writes the next GEMM's scales.
//!
//! With dense-bf16 weights (`LinearWeights::DenseBf16`, the bench's baseline) the launches are
//! the same, except that the row kernels write bf16 GEMM inputs (no int8, no scales) and the
//! GEMMs are cuBLAS's, writing f32 values that the next kernels read as `Deq::F32_VALUES`.

use cudarc::driver::sys::CUdeviceptr;

use super::sizes::{Sizes, SCALE_SLOTS};
use super::weights::{Dev, Gemm, GemmMatrix, GpuWeights};
use super::GpuEngine;
use crate::cuda::GemmArgs;
use crate::cuda::{history_words, Deq, RowInput, RowOp, RowOutput, SampleRow};
use crate::dtype::DType;
use crate::engine::config::{HiddenAct, ModelConfig};
use crate::error::Result;
use crate::format::Levels;

/// The activation buffers and the KV cache.
pub(crate) struct State {
    /// `[chunk]` token ids, slots, positions; `[logit_rows]` rows that produce logits.
    pub tok: Dev<u32>,
    pub slot: Dev<u32>,
    pub pos: Dev<u32>,
    pub last: Dev<u32>,
    /// `[chunk, hidden]` the residual stream.
    pub x: Dev<f32>,
    /// `[chunk, q8_ld]` the next GEMM's input (int8, or bf16 for dense-bf16 weights);
    /// `[SCALE_SLOTS, chunk]` the int8 input's scales.
    pub q8: Dev<u8>,
    pub xs: Dev<f32>,
    /// `[chunk, acc_ld]` the GEMMs' int32 sums.
    pub acc: Dev<i32>,
    /// `[chunk, q_dim]` rotated queries and attention outputs.
    pub q: Dev<f32>,
    pub att: Dev<f32>,
    /// `[logit_rows, hidden]` the final norm's output in the lm_head's type (bytes).
    pub head_in: Dev<u8>,
    /// `[logit_rows, vocab]` logits; `[logit_rows]` greedy or sampled tokens.
    pub logits: Dev<f32>,
    pub greedy: Dev<u32>,
    /// `[logit_rows]` the draws of a sampling pass, written before it runs.
    pub sample_rows: Dev<SampleRow>,
    /// `[slots, history_words(vocab)]` bitmaps of the tokens each slot holds (the repetition
    /// penalty's history), marked by every pass.
    pub history: Dev<u32>,
    /// `[layers, slots, max_context, kv_dim]` f16.
    pub k_cache: Dev<u16>,
    pub v_cache: Dev<u16>,
    /// `[max_context, head_dim / 2]` (cos, sin).
    pub rope: Dev<f32>,
}

impl State {
    pub fn new(
        stream: &std::sync::Arc<cudarc::driver::CudaStream>,
        c: &ModelConfig,
        s: &Sizes,
        head: DType,
        rope: &[f32],
    ) -> Result<Self> {
        let n = s.chunk;
        Ok(Self {
            tok: Dev::zeros(stream, n)?,
            slot: Dev::zeros(stream, n)?,
            pos: Dev::zeros(stream, n)?,
            last: Dev::zeros(stream, s.logit_rows)?,
            x: Dev::zeros(stream, n * c.hidden_size)?,
            q8: Dev::zeros(stream, n * s.q8_ld * s.gemm_input.size())?,
            xs: Dev::zeros(stream, SCALE_SLOTS * n)?,
            acc: Dev::zeros(stream, n * s.acc_ld)?,
            q: Dev::zeros(stream, n * c.q_dim())?,
            att: Dev::zeros(stream, n * c.q_dim())?,
            head_in: Dev::zeros(stream, s.logit_rows * c.hidden_size * head.size())?,
            logits: Dev::zeros(stream, s.logit_rows * c.vocab_size)?,
            greedy: Dev::zeros(stream, s.logit_rows)?,
            sample_rows: Dev::upload(stream, &vec![SampleRow::default(); s.logit_rows])?,
            history: Dev::zeros(stream, s.slots * history_words(c.vocab_size))?,
            k_cache: Dev::zeros(stream, s.kv_elems)?,
            v_cache: Dev::zeros(stream, s.kv_elems)?,
            rope: Dev::upload(stream, rope)?,
        })
    }
}

/// Which of the stacked GEMMs of a group holds sums column `col`, and the row within it.
pub(crate) fn locate(rows: &[usize], col: usize) -> (usize, usize) {
    let mut start = 0;
    for (i, &r) in rows.iter().enumerate() {
        if col < start + r {
            return (i, col - start);
        }
        start += r;
    }
    panic!("column {col} beyond the group's {start} rows");
}

impl GpuEngine {
    /// The x_scale slot `part` of `bank`.
    fn xs(&self, bank: usize, part: usize) -> CUdeviceptr {
        self.state
            .xs
            .at((bank * SCALE_SLOTS / 2 + part) * self.sizes.chunk)
    }

    /// How to read sums column `col` .. of a group whose inputs were quantized into `bank`.
    fn deq(&self, group: &[Gemm], bank: usize, col: usize) -> Deq {
        let rows: Vec<usize> = group.iter().map(Gemm::rows).collect();
        let (g, row) = locate(&rows, col);
        let (x_scale, w_scale, kind) = match &group[g].matrix {
            GemmMatrix::Ternary { scale, .. } => (self.xs(bank, g), scale.at(row), Deq::INT32_SUMS),
            GemmMatrix::DenseBf16(_) => (0, 0, Deq::F32_VALUES),
        };
        Deq {
            acc: self.state.acc.at(col),
            x_scale,
            w_scale,
            bias: group[g].bias.as_ref().map_or(0, |b| b.at(row)),
            ld: self.sizes.acc_ld as u32,
            kind,
        }
    }

    /// Where a row kernel writes a GEMM's input: int8 and its x_scale into `bank`'s slot
    /// `part` (ternary weights), or bf16 (dense-bf16 weights: no quantization).
    fn gemm_input(&self, bank: usize, part: usize) -> RowOutput {
        match self.sizes.gemm_input {
            DType::I8 => RowOutput::I8 {
                q: self.state.q8.ptr,
                scale: self.xs(bank, part),
            },
            dtype => RowOutput::Float {
                out: self.state.q8.ptr,
                dtype,
            },
        }
    }

    /// `row_norm_quant` with output int8 into the GEMM input buffer.
    fn quantize(&self, op: RowOp) -> Result<()> {
        // SAFETY: every address is one of this engine's buffers, sized by `Sizes` for `chunk`
        // tokens, which `op.tokens` never exceeds; the stream is the engine's.
        unsafe { self.gpu.row_norm_quant_raw(&op, self.stream.cu_stream()) }
    }

    fn row_op(&self, input: RowInput, x: CUdeviceptr, n: usize, tokens: usize) -> RowOp {
        RowOp {
            input,
            x,
            ld_x: n,
            norms: [None, None],
            output: RowOutput::None,
            ld_out: n,
            n,
            tokens,
        }
    }

    /// Normalizes and quantizes the input of each GEMM of `group` (the first from `first`,
    /// e.g. a residual add; the others from the updated x) and runs it, into sums columns
    /// side by side; scales into `bank`.
    fn stage(
        &self,
        group: &[Gemm],
        first: RowInput,
        norm: CUdeviceptr,
        n: usize,
        bank: usize,
    ) -> Result<()> {
        let (c, mut col) = (&self.config, 0);
        for (i, g) in group.iter().enumerate() {
            let input = if i == 0 {
                first
            } else {
                RowInput::Row { rows: None }
            };
            let mut op = self.row_op(input, self.state.x.ptr, c.hidden_size, n);
            op.norms = [
                Some((norm, c.rms_norm_eps)),
                g.norm.as_ref().map(|w| (w.ptr, c.bitlinear.act_norm_eps)),
            ];
            op.output = self.gemm_input(bank, i);
            self.quantize(op)?;
            self.gemm(g, self.xs(bank, i), col, n)?;
            col += g.rows();
        }
        Ok(())
    }

    /// One GEMM of the input buffer into sums columns `col ..`: raw int32 sums of the int8
    /// input (ternary), or f32 values of the bf16 input through cuBLAS (dense-bf16).
    fn gemm(&self, g: &Gemm, x_scale: CUdeviceptr, col: usize, n: usize) -> Result<()> {
        let tiles = match &g.matrix {
            GemmMatrix::Ternary { tiles, .. } => *tiles,
            GemmMatrix::DenseBf16(w) => {
                // SAFETY: the bf16 buffer holds `n` rows of `cols` (written by the kernel
                // before), the sums buffer `n` rows of `acc_ld >= col + rows` f32-sized
                // elements; `w` is rows x cols bf16, alive as long as the engine.
                return unsafe {
                    self.gpu.linear_bf16_raw(
                        w.ptr,
                        (g.rows(), g.cols()),
                        self.state.q8.ptr,
                        n,
                        self.state.acc.at(col),
                        self.sizes.acc_ld,
                        &self.stream,
                    )
                };
            }
        };
        let args = GemmArgs {
            x: self.state.q8.ptr,
            x_dtype: DType::I8,
            ldx: g.cols(),
            y: self.state.acc.at(col),
            y_dtype: DType::I32,
            ldy: self.sizes.acc_ld,
            batch: n,
            bias: None,
            x_scale: Some(x_scale),
            quantize_x: false,
        };
        // SAFETY: the int8 buffer holds `n` rows of `cols` (written by the kernel before), the
        // sums buffer `n` rows of `acc_ld >= col + rows`; the tiles are `g.w`'s, alive as long
        // as the engine; everything on the engine's stream.
        unsafe {
            self.gpu.gemm_tiles_raw(
                g.rows(),
                g.cols(),
                Levels::Ternary,
                tiles,
                None,
                &args,
                self.stream.cu_stream(),
            )
        }
    }

    /// `input` -> the layer's sub-norm (if any) -> `g`'s own activation norm (if any) -> int8
    /// into `bank` -> the GEMM `g` (o_proj after attention, down_proj after the gated product).
    fn sub_norm_gemm(
        &self,
        mut op: RowOp,
        sub_norm: Option<&Dev<f32>>,
        g: &Gemm,
        bank: usize,
    ) -> Result<()> {
        let c = &self.config;
        op.norms = [
            sub_norm.map(|w| (w.ptr, c.rms_norm_eps)),
            g.norm.as_ref().map(|w| (w.ptr, c.bitlinear.act_norm_eps)),
        ];
        op.output = self.gemm_input(bank, 0);
        self.quantize(op)?;
        self.gemm(g, self.xs(bank, 0), 0, op.tokens)
    }

    /// Launches one pass of `n` tokens with logits for `m` of them (see the module doc).
    pub(crate) fn launch_pass(&self, n: usize, m: usize) -> Result<()> {
        let (c, w, st) = (&self.config, &self.weights, &self.state);
        let s = self.stream.cu_stream();
        // SAFETY: `tok` and `slot` hold `n` entries, ids below vocab and slots below `slots`
        // (the engine's plan), `history` a bitmap of history_words(vocab) per slot.
        unsafe {
            self.gpu.history_mark_raw(
                (st.tok.ptr, st.slot.ptr, n),
                st.history.ptr,
                history_words(c.vocab_size),
                s,
            )
        }?;
        // SAFETY: `tok` holds `n` ids below vocab (validated by the engine's plan), `x` `n` rows.
        unsafe {
            self.gpu.embed_gather_raw(
                w.embed.data.ptr,
                w.embed.dtype,
                st.tok.ptr,
                st.x.ptr,
                n,
                c.hidden_size,
                s,
            )?;
        }
        let mut bank = 0;
        let row = RowInput::Row { rows: None };
        self.stage(&w.layers[0].qkv, row, w.layers[0].attn_norm.ptr, n, bank)?;
        for l in 0..c.num_layers {
            bank = self.layer(w, l, n, bank)?;
        }
        if m == 0 {
            return Ok(());
        }
        let mut op = self.row_op(
            RowInput::Row {
                rows: Some(st.last.ptr),
            },
            st.x.ptr,
            c.hidden_size,
            m,
        );
        op.norms[0] = Some((w.final_norm.ptr, c.rms_norm_eps));
        op.output = RowOutput::Float {
            out: st.head_in.ptr,
            dtype: w.head().dtype,
        };
        self.quantize(op)?;
        let head = w.head();
        // SAFETY: `head_in` holds `m` rows of hidden in the table's type, `logits` `m` rows
        // of vocab (m <= logit_rows).
        unsafe {
            self.gpu.lm_head_raw(
                head.data.ptr,
                head.dtype,
                st.head_in.ptr,
                m,
                c.vocab_size,
                c.hidden_size,
                st.logits.ptr,
                &self.stream,
            )
        }
    }

    /// Layer `l` from its q|k|v GEMM (input in `bank`) to the next layer's q|k|v GEMM;
    /// returns the bank of that GEMM's input.
    fn layer(&self, w: &GpuWeights, l: usize, n: usize, bank: usize) -> Result<usize> {
        let (c, st, layer) = (&self.config, &self.state, &w.layers[l]);
        let (qd, kvd, s) = (c.q_dim(), c.kv_dim(), self.stream.cu_stream());
        let cache = l * self.sizes.kv_elems / c.num_layers;
        let rope = crate::cuda::RopeParams {
            q: self.deq(&layer.qkv, bank, 0),
            k: self.deq(&layer.qkv, bank, qd),
            v: self.deq(&layer.qkv, bank, qd + kvd),
            rope: st.rope.ptr,
            pos: st.pos.ptr,
            slot: st.slot.ptr,
            q_out: st.q.ptr,
            k_cache: st.k_cache.at(cache),
            v_cache: st.v_cache.at(cache),
            heads: c.num_heads as u32,
            kv_heads: c.num_kv_heads as u32,
            head_dim: c.head_dim as u32,
            max_context: self.max_context as u32,
        };
        let attn = crate::cuda::AttnParams {
            q: st.q.ptr,
            k_cache: rope.k_cache,
            v_cache: rope.v_cache,
            pos: st.pos.ptr,
            slot: st.slot.ptr,
            out: st.att.ptr,
            heads: rope.heads,
            kv_heads: rope.kv_heads,
            head_dim: rope.head_dim,
            max_context: rope.max_context,
            scaling: (c.head_dim as f32).powf(-0.5),
            pad: 0,
        };
        // SAFETY: the sums hold n rows of q|k|v; positions and slots were validated by the
        // plan (pos < max_context, slot < slots); the layer's caches are its share of the
        // cache buffers; q and att hold n rows of q_dim.
        unsafe {
            self.gpu.rope_kv_append_raw(&rope, n, s)?;
            self.gpu.attention_raw(&attn, n, s)?;
        }
        // o_proj: attention output -> attn_sub_norm -> (o's own norm) -> int8.
        let bank = bank ^ 1;
        let input = self.row_op(RowInput::Row { rows: None }, st.att.ptr, qd, n);
        self.sub_norm_gemm(input, layer.attn_sub_norm.as_ref(), &layer.o, bank)?;
        // x += o; ffn_norm -> gate|up.
        let o = self.deq(std::slice::from_ref(&layer.o), bank, 0);
        let bank = bank ^ 1;
        self.stage(
            &layer.gate_up,
            RowInput::Residual(o),
            layer.ffn_norm.ptr,
            n,
            bank,
        )?;
        // act(gate) * up -> ffn_sub_norm -> (down's own norm) -> int8 -> down.
        let m = c.intermediate_size;
        let input = RowInput::Gated {
            gate: self.deq(&layer.gate_up, bank, 0),
            up: self.deq(&layer.gate_up, bank, m),
            silu: c.hidden_act == HiddenAct::Silu,
        };
        let bank = bank ^ 1;
        let input = self.row_op(input, 0, m, n);
        self.sub_norm_gemm(input, layer.ffn_sub_norm.as_ref(), &layer.down, bank)?;
        // x += down; the next layer's input norm -> its q|k|v, or the residual add alone.
        let down = self.deq(std::slice::from_ref(&layer.down), bank, 0);
        let bank = bank ^ 1;
        match w.layers.get(l + 1) {
            Some(next) => {
                let input = RowInput::Residual(down);
                self.stage(&next.qkv, input, next.attn_norm.ptr, n, bank)?;
            }
            None => {
                self.quantize(self.row_op(RowInput::Residual(down), st.x.ptr, c.hidden_size, n))?
            }
        }
        Ok(bank)
    }
}
