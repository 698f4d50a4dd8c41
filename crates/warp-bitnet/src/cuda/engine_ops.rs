//! Launchers of the inference engine's kernels (kernels/engine.cu) and its lm_head (cuBLAS):
//! raw device pointers and a raw stream, so that a decode step can be captured into a CUDA
//! graph. Each launcher checks what it can see (pointers non-null and aligned, sizes within
//! the kernels' 32-bit indexing, the launch shape within the device's limits) and holds the
//! only `unsafe` launch of its kernel; the launch shapes are pure functions, tested without a GPU.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{CUdeviceptr, CUstream};
use cudarc::driver::CudaStream;

use super::blas::{gemm_row_major, RowMajorGemm};
use super::launch::{check_ptr, kernel_dtype, kernel_params, launch};
use super::Gpu;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Threads of `row_norm_quant` (`ROW_THREADS` in engine.cu).
pub(crate) const ROW_THREADS: u32 = 512;
/// Threads of `rope_kv_append`.
pub(crate) const ROPE_THREADS: u32 = 256;
/// Threads of `attention_decode`.
pub(crate) const ATT_THREADS: u32 = 128;
/// Threads of `argmax_f32`.
pub(crate) const ARGMAX_THREADS: u32 = 1024;
/// Threads of `embed_gather`.
pub(crate) const EMBED_THREADS: u32 = 256;
/// The largest grid y dimension (CUDA's limit).
const MAX_GRID_Y: usize = 65_535;

/// One part of a GEMM's output (engine.cu `Deq`): value `(t, c)` is
/// `((acc[t * ld + c] * x_scale[t]) * w_scale[c]) + bias[c]` for int32 sums
/// ([`Deq::INT32_SUMS`]), or `acc[t * ld + c] + bias[c]` for f32 values ([`Deq::F32_VALUES`]:
/// a dense-bf16 GEMM's output, scales unused).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Deq {
    pub acc: CUdeviceptr,
    pub x_scale: CUdeviceptr,
    pub w_scale: CUdeviceptr,
    /// 0: no bias.
    pub bias: CUdeviceptr,
    pub ld: u32,
    /// [`Deq::INT32_SUMS`] or [`Deq::F32_VALUES`] (engine.cu `DEQ_*`).
    pub kind: u32,
}

impl Deq {
    /// `acc` holds int32 sums, dequantized with the scales.
    pub const INT32_SUMS: u32 = 0;
    /// `acc` holds f32 values; `x_scale` and `w_scale` are unused (may be 0).
    pub const F32_VALUES: u32 = 1;
}
const _: () = assert!(std::mem::size_of::<Deq>() == 40);

/// How `row_norm_quant` builds its row (`MODE_*` in engine.cu).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum RowInput {
    /// Row `rows[i]` (or `i`) of `x`.
    Row { rows: Option<CUdeviceptr> },
    /// `x[t] += a(t)`, then the row is `x[t]`.
    Residual(Deq),
    /// `act(gate(t)) * up(t)`.
    Gated { gate: Deq, up: Deq, silu: bool },
}

/// What `row_norm_quant` writes (`OUT_*` in engine.cu).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum RowOutput {
    /// Nothing (a residual add alone).
    None,
    /// int8 `[tokens, ld]` and the per-token x_scale `[tokens]`.
    I8 { q: CUdeviceptr, scale: CUdeviceptr },
    /// `[tokens, ld]` floats of `dtype` (f32, f16 or bf16).
    Float { out: CUdeviceptr, dtype: DType },
}

/// One `row_norm_quant` launch over `tokens` rows of width `n`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RowOp {
    pub input: RowInput,
    /// `[tokens, ld_x]` f32 (Row, Residual); 0 for Gated.
    pub x: CUdeviceptr,
    pub ld_x: usize,
    /// Up to two RMSNorms applied in order: (weight `[n]`, eps).
    pub norms: [Option<(CUdeviceptr, f32)>; 2],
    pub output: RowOutput,
    pub ld_out: usize,
    pub n: usize,
    pub tokens: usize,
}

/// engine.cu `RowParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RowParams {
    x: CUdeviceptr,
    rows: CUdeviceptr,
    a: Deq,
    b: Deq,
    norm1: CUdeviceptr,
    norm2: CUdeviceptr,
    out: CUdeviceptr,
    out_scale: CUdeviceptr,
    mode: u32,
    act: u32,
    out_kind: u32,
    n: u32,
    ld_x: u32,
    ld_out: u32,
    eps1: f32,
    eps2: f32,
}
const _: () = assert!(std::mem::size_of::<RowParams>() == 160);

/// engine.cu `RopeParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct RopeParams {
    pub q: Deq,
    pub k: Deq,
    pub v: Deq,
    /// `[max_context, head_dim / 2]` (cos, sin) f32 pairs.
    pub rope: CUdeviceptr,
    pub pos: CUdeviceptr,
    pub slot: CUdeviceptr,
    /// `[tokens, heads * head_dim]` f32.
    pub q_out: CUdeviceptr,
    /// The layer's `[slots, max_context, kv_dim]` f16 caches.
    pub k_cache: CUdeviceptr,
    pub v_cache: CUdeviceptr,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub max_context: u32,
}
const _: () = assert!(std::mem::size_of::<RopeParams>() == 184);

/// engine.cu `AttnParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttnParams {
    pub q: CUdeviceptr,
    pub k_cache: CUdeviceptr,
    pub v_cache: CUdeviceptr,
    pub pos: CUdeviceptr,
    pub slot: CUdeviceptr,
    pub out: CUdeviceptr,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub max_context: u32,
    pub scaling: f32,
    pub pad: u32,
}
const _: () = assert!(std::mem::size_of::<AttnParams>() == 72);

/// A launch shape: grid, threads per CTA, dynamic shared memory bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub smem: u32,
}

fn too_large(arg: &'static str, value: usize, limit: usize) -> Error {
    Error::TooLarge {
        arg,
        value: value as u64,
        limit: limit as u64,
    }
}

/// `v` as a u32 kernel argument, or an error naming it.
fn u32_arg(arg: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| too_large(arg, v, u32::MAX as usize))
}

fn nonzero(arg: &'static str, v: usize) -> Result<()> {
    if v == 0 {
        Err(Error::Empty { arg })
    } else {
        Ok(())
    }
}

/// One CTA per token row (grid x), `block` threads, `smem` bytes of dynamic shared memory
/// within `max_smem`.
pub(crate) fn row_shape(tokens: usize, block: u32, smem: usize, max_smem: usize) -> Result<Shape> {
    nonzero("tokens", tokens)?;
    if smem > max_smem {
        return Err(too_large("row width (shared memory bytes)", smem, max_smem));
    }
    Ok(Shape {
        grid: (u32_arg("tokens", tokens)?, 1, 1),
        block,
        smem: smem as u32,
    })
}

/// `row_norm_quant`: the row of `n` f32 in dynamic shared memory.
pub(crate) fn row_norm_shape(tokens: usize, n: usize, max_smem: usize) -> Result<Shape> {
    nonzero("n", n)?;
    let smem = n
        .checked_mul(4)
        .ok_or_else(|| too_large("n", n, max_smem / 4))?;
    row_shape(tokens, ROW_THREADS, smem, max_smem)
}

/// `attention_decode`: grid (heads, tokens), (head_dim + max_context) f32 of shared memory.
pub(crate) fn attention_shape(
    heads: usize,
    tokens: usize,
    head_dim: usize,
    max_context: usize,
    max_smem: usize,
) -> Result<Shape> {
    nonzero("heads", heads)?;
    nonzero("tokens", tokens)?;
    nonzero("head_dim", head_dim)?;
    nonzero("max_context", max_context)?;
    if tokens > MAX_GRID_Y {
        return Err(too_large("tokens", tokens, MAX_GRID_Y));
    }
    let smem = head_dim
        .checked_add(max_context)
        .and_then(|v| v.checked_mul(4))
        .filter(|&s| s <= max_smem)
        .ok_or_else(|| {
            too_large(
                "max_context (attention scores in shared memory)",
                max_context,
                (max_smem / 4).saturating_sub(head_dim),
            )
        })?;
    Ok(Shape {
        grid: (u32_arg("heads", heads)?, tokens as u32, 1),
        block: ATT_THREADS,
        smem: smem as u32,
    })
}

impl RowOp {
    /// The kernel's parameters, checked.
    fn params(&self) -> Result<RowParams> {
        let zero = Deq::default();
        let (mode, rows, a, b, act) = match self.input {
            RowInput::Row { rows } => (0, rows.unwrap_or(0), zero, zero, 0),
            RowInput::Residual(a) => (1, 0, a, zero, 0),
            RowInput::Gated { gate, up, silu } => (2, 0, gate, up, u32::from(silu)),
        };
        if mode != 2 {
            check_ptr("x", self.x, 4)?;
            if self.ld_x < self.n {
                return Err(ld_error("ld_x", self.n, self.ld_x));
            }
        }
        if let Some(r) = (rows != 0).then_some(rows) {
            check_ptr("rows", r, 4)?;
        }
        for d in [&a, &b].into_iter().take(match mode {
            0 => 0,
            1 => 1,
            _ => 2,
        }) {
            check_deq(d, self.n)?;
        }
        let (out_kind, out, out_scale, out_size) = match self.output {
            RowOutput::None => (0, 0, 0, 1),
            RowOutput::I8 { q, scale } => {
                check_ptr("out_scale", scale, 4)?;
                (1, q, scale, 1)
            }
            RowOutput::Float { out, dtype } => {
                let code = kernel_dtype(dtype, &[DType::F32, DType::F16, DType::BF16], "out")?;
                (2 + code, out, 0, dtype.size())
            }
        };
        if out_kind != 0 {
            check_ptr("out", out, out_size)?;
            if self.ld_out < self.n {
                return Err(ld_error("ld_out", self.n, self.ld_out));
            }
        }
        let mut norm = [(0, 0f32); 2];
        for (slot, n) in norm.iter_mut().zip(self.norms) {
            if let Some((w, eps)) = n {
                check_ptr("norm", w, 4)?;
                *slot = (w, eps);
            }
        }
        Ok(RowParams {
            x: self.x,
            rows,
            a,
            b,
            norm1: norm[0].0,
            norm2: norm[1].0,
            out,
            out_scale,
            mode,
            act,
            out_kind,
            n: u32_arg("n", self.n)?,
            ld_x: u32_arg("ld_x", self.ld_x)?,
            ld_out: u32_arg("ld_out", self.ld_out)?,
            eps1: norm[0].1,
            eps2: norm[1].1,
        })
    }
}

fn ld_error(arg: &'static str, n: usize, ld: usize) -> Error {
    Error::ShapeMismatch {
        arg,
        expected: format!(">= {n}"),
        got: ld.to_string(),
    }
}

/// A `Deq` whose rows are at least `n` wide.
fn check_deq(d: &Deq, n: usize) -> Result<()> {
    check_ptr("acc", d.acc, 4)?;
    match d.kind {
        Deq::INT32_SUMS => {
            check_ptr("x_scale", d.x_scale, 4)?;
            check_ptr("w_scale", d.w_scale, 4)?;
        }
        Deq::F32_VALUES => {}
        other => {
            return Err(Error::Unsupported {
                what: "Deq kind",
                detail: format!("{other}; expected int32 sums (0) or f32 values (1)"),
            })
        }
    }
    if d.bias != 0 {
        check_ptr("bias", d.bias, 4)?;
    }
    if (d.ld as usize) < n {
        return Err(ld_error("acc ld", n, d.ld as usize));
    }
    Ok(())
}

impl Gpu {
    /// Launches kernel `name` with `shape` and one by-value parameter struct.
    ///
    /// # Safety
    /// `P` must be the kernel's parameter struct and every pointer in it valid for what the
    /// kernel reads and writes until the launch completes; `stream` must belong to this GPU.
    unsafe fn launch_struct<P>(
        &self,
        name: &str,
        shape: Shape,
        params: &mut P,
        stream: CUstream,
    ) -> Result<()> {
        let mut kp = [params as *mut P as *mut c_void];
        // SAFETY: forwarded from the caller.
        unsafe {
            launch(
                self.function(name)?,
                shape.grid,
                shape.block,
                shape.smem,
                stream,
                &mut kp,
            )
        }
    }

    /// The most dynamic shared memory kernel `name` may use.
    fn max_smem(&self, name: &str) -> Result<usize> {
        Ok(self.kernel(name)?.max_dynamic_smem)
    }

    /// Checks once, when an engine is built, that every launch its shapes need fits this GPU:
    /// rows of each `widths` in shared memory, and the attention's scores for `max_context`
    /// positions.
    pub(crate) fn check_engine_shapes(
        &self,
        widths: &[usize],
        heads: usize,
        head_dim: usize,
        max_context: usize,
    ) -> Result<()> {
        let row = self.max_smem("row_norm_quant")?;
        for &n in widths {
            row_norm_shape(1, n, row)?;
        }
        let att = self.max_smem("attention_decode")?;
        attention_shape(heads, 1, head_dim, max_context, att).map(|_| ())
    }

    /// `x[t, :] = table[tok[t], :]` as f32 for `tokens` tokens (`table`: f32, f16 or bf16
    /// `[vocab, hidden]`).
    ///
    /// # Safety
    /// `tok` must hold `tokens` ids below the table's rows, `x` `tokens * hidden` f32, all on
    /// this GPU and alive until the launch completes; `stream` must belong to this GPU.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn embed_gather_raw(
        &self,
        table: CUdeviceptr,
        dtype: DType,
        tok: CUdeviceptr,
        x: CUdeviceptr,
        tokens: usize,
        hidden: usize,
        stream: CUstream,
    ) -> Result<()> {
        nonzero("hidden", hidden)?;
        let code = kernel_dtype(dtype, &[DType::F32, DType::F16, DType::BF16], "table")?;
        check_ptr("table", table, dtype.size())?;
        check_ptr("tok", tok, 4)?;
        check_ptr("x", x, 4)?;
        let shape = row_shape(tokens, EMBED_THREADS, 0, 0)?;
        let (mut tp, mut code, mut tk, mut xp, mut h) =
            (table, code, tok, x, u32_arg("hidden", hidden)?);
        let mut kp = kernel_params!(tp, code, tk, xp, h);
        // SAFETY: parameters match embed_gather; the caller guarantees the buffers.
        unsafe {
            launch(
                self.function("embed_gather")?,
                shape.grid,
                shape.block,
                0,
                stream,
                &mut kp,
            )
        }
    }

    /// One `row_norm_quant` launch (see [`RowOp`]).
    ///
    /// # Safety
    /// Every pointer of `op` must hold the rows it describes (`tokens` rows of its strides,
    /// norms `n` f32, `Deq` scales and biases `n` f32), on this GPU, alive until the launch
    /// completes; `out` must not overlap the inputs; `stream` must belong to this GPU.
    pub(crate) unsafe fn row_norm_quant_raw(&self, op: &RowOp, stream: CUstream) -> Result<()> {
        let mut params = op.params()?;
        let shape = row_norm_shape(op.tokens, op.n, self.max_smem("row_norm_quant")?)?;
        // SAFETY: checked above; the caller guarantees the buffers.
        unsafe { self.launch_struct("row_norm_quant", shape, &mut params, stream) }
    }

    /// RoPE of `tokens` tokens' q and k and their K/V-cache append.
    ///
    /// # Safety
    /// The pointers of `p` must hold `tokens` rows (q_out `heads * head_dim` f32, the parts
    /// their widths), positions below `max_context` and slots below the cache's, on this GPU,
    /// alive until the launch completes; `stream` must belong to this GPU.
    pub(crate) unsafe fn rope_kv_append_raw(
        &self,
        p: &RopeParams,
        tokens: usize,
        stream: CUstream,
    ) -> Result<()> {
        check_heads(p.heads, p.kv_heads, p.head_dim)?;
        if p.head_dim % 2 != 0 {
            return Err(Error::Unsupported {
                what: "head_dim",
                detail: format!("{}; RoPE needs an even head_dim", p.head_dim),
            });
        }
        let (q_dim, kv_dim) = (
            (p.heads * p.head_dim) as usize,
            (p.kv_heads * p.head_dim) as usize,
        );
        check_deq(&p.q, q_dim)?;
        check_deq(&p.k, kv_dim)?;
        check_deq(&p.v, kv_dim)?;
        for (arg, ptr, align) in [
            ("rope", p.rope, 4),
            ("pos", p.pos, 4),
            ("slot", p.slot, 4),
            ("q_out", p.q_out, 4),
            ("k_cache", p.k_cache, 2),
            ("v_cache", p.v_cache, 2),
        ] {
            check_ptr(arg, ptr, align)?;
        }
        let mut params = *p;
        let shape = row_shape(tokens, ROPE_THREADS, 0, 0)?;
        // SAFETY: checked above; the caller guarantees the buffers.
        unsafe { self.launch_struct("rope_kv_append", shape, &mut params, stream) }
    }

    /// Decode attention of `tokens` tokens (each over positions `0 ..= pos` of its slot).
    ///
    /// # Safety
    /// As [`Gpu::rope_kv_append_raw`]: `q` and `out` `tokens * heads * head_dim` f32, the
    /// caches `[slots, max_context, kv_dim]` f16 with every attended row written.
    pub(crate) unsafe fn attention_raw(
        &self,
        p: &AttnParams,
        tokens: usize,
        stream: CUstream,
    ) -> Result<()> {
        check_heads(p.heads, p.kv_heads, p.head_dim)?;
        for (arg, ptr, align) in [
            ("q", p.q, 4),
            ("k_cache", p.k_cache, 2),
            ("v_cache", p.v_cache, 2),
            ("pos", p.pos, 4),
            ("slot", p.slot, 4),
            ("out", p.out, 4),
        ] {
            check_ptr(arg, ptr, align)?;
        }
        let shape = attention_shape(
            p.heads as usize,
            tokens,
            p.head_dim as usize,
            p.max_context as usize,
            self.max_smem("attention_decode")?,
        )?;
        let mut params = *p;
        // SAFETY: checked above; the caller guarantees the buffers.
        unsafe { self.launch_struct("attention_decode", shape, &mut params, stream) }
    }

    /// `out[r]` = the first index of the largest non-NaN value of row `r` of `logits`
    /// (`rows` rows of `n`, `ld` apart; 0 if none): the sampler's greedy pick.
    ///
    /// # Safety
    /// `logits` must hold `rows * ld` f32 and `out` `rows` u32 on this GPU, alive until the
    /// launch completes; `stream` must belong to this GPU.
    pub(crate) unsafe fn argmax_raw(
        &self,
        logits: CUdeviceptr,
        rows: usize,
        n: usize,
        ld: usize,
        out: CUdeviceptr,
        stream: CUstream,
    ) -> Result<()> {
        nonzero("n", n)?;
        if ld < n {
            return Err(ld_error("ld", n, ld));
        }
        check_ptr("logits", logits, 4)?;
        check_ptr("out", out, 4)?;
        let shape = row_shape(rows, ARGMAX_THREADS, 0, 0)?;
        let (mut lp, mut n32, mut ld32, mut op) =
            (logits, u32_arg("n", n)?, u32_arg("ld", ld)?, out);
        let mut kp = kernel_params!(lp, n32, ld32, op);
        // SAFETY: parameters match argmax_f32; the caller guarantees the buffers.
        unsafe {
            launch(
                self.function("argmax_f32")?,
                shape.grid,
                shape.block,
                0,
                stream,
                &mut kp,
            )
        }
    }

    /// The lm_head through cuBLAS: `logits[t, v] = sum_k table[v, k] * x[t, k]` for `tokens`
    /// rows, `table` `[vocab, hidden]` and `x` `[tokens, hidden]` both of `dtype` (f32, f16 or
    /// bf16), f32 accumulation and output. Run it once outside graph capture first (the
    /// first call creates the cuBLAS handle).
    ///
    /// # Safety
    /// The buffers must hold those sizes on this GPU, alive until the work completes; `logits`
    /// `tokens * vocab` f32 not overlapping the inputs; `stream` must belong to this GPU.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn lm_head_raw(
        &self,
        table: CUdeviceptr,
        dtype: DType,
        x: CUdeviceptr,
        tokens: usize,
        vocab: usize,
        hidden: usize,
        logits: CUdeviceptr,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::Unsupported {
                what: "dtype",
                detail: format!("lm_head {}; need f32, f16 or bf16", dtype.name()),
            });
        }
        nonzero("tokens", tokens)?;
        check_ptr("table", table, dtype.size())?;
        check_ptr("x", x, dtype.size())?;
        check_ptr("logits", logits, 4)?;
        let (_blas, handle) = self.blas_on(stream)?;
        let g = RowMajorGemm {
            rows: vocab,
            cols: hidden,
            tokens,
            w: table,
            x,
            in_type: dtype,
            y: logits,
            ldy: vocab,
            out_type: DType::F32,
            accumulate: false,
        };
        // SAFETY: the handle is live and bound to this GPU's stream; the caller guarantees
        // the sizes.
        unsafe { gemm_row_major(handle, &g) }
    }

    /// A dense-bf16 linear layer (or several stacked) through cuBLAS: `y[t, c]` for `tokens`
    /// rows of `x` `[tokens, cols]` bf16 and `w` `[rows, cols]` bf16 (the scale folded in), f32
    /// accumulation, f32 out with row stride `ldy` (the engine's sums buffer). Run it once
    /// outside graph capture first (the first call creates the cuBLAS handle).
    ///
    /// # Safety
    /// As [`Gpu::lm_head_raw`]: the buffers hold those sizes on this GPU, alive until the work
    /// completes; `y` does not overlap the inputs; `stream` belongs to this GPU.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn linear_bf16_raw(
        &self,
        w: CUdeviceptr,
        (rows, cols): (usize, usize),
        x: CUdeviceptr,
        tokens: usize,
        y: CUdeviceptr,
        ldy: usize,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        check_ptr("w", w, 2)?;
        check_ptr("x", x, 2)?;
        check_ptr("y", y, 4)?;
        let (_blas, handle) = self.blas_on(stream)?;
        let g = RowMajorGemm {
            rows,
            cols,
            tokens,
            w,
            x,
            in_type: DType::BF16,
            y,
            ldy,
            out_type: DType::F32,
            accumulate: false,
        };
        // SAFETY: the handle is live and bound to this GPU's stream; the caller guarantees
        // the sizes.
        unsafe { gemm_row_major(handle, &g) }
    }
}

/// A captured CUDA graph (an engine's decode step) that moves between threads with the engine
/// owning it (the server's scheduler thread, Python's released GIL).
pub(crate) struct OwnedGraph(cudarc::driver::CudaGraph);

// SAFETY: CUDA requires the calls on one graph to be serialized, not to come from the thread
// that captured it (driver API, "Graph object thread safety"); `Send` without `Sync` lets one
// thread at a time own it, and `CudaGraph::launch` binds the context to the calling thread.
unsafe impl Send for OwnedGraph {}

impl OwnedGraph {
    pub fn new(graph: cudarc::driver::CudaGraph) -> Self {
        Self(graph)
    }

    /// Replays the graph on the stream it was captured on.
    pub fn launch(&self) -> Result<()> {
        Ok(self.0.launch()?)
    }
}

/// heads, kv_heads, head_dim positive, and kv_heads dividing heads (GQA).
fn check_heads(heads: u32, kv_heads: u32, head_dim: u32) -> Result<()> {
    nonzero("heads", heads as usize)?;
    nonzero("kv_heads", kv_heads as usize)?;
    nonzero("head_dim", head_dim as usize)?;
    if heads % kv_heads != 0 {
        return Err(Error::Unsupported {
            what: "kv_heads",
            detail: format!("{kv_heads} does not divide heads {heads}"),
        });
    }
    Ok(())
}

mod sample;
#[cfg(test)]
mod tests;

pub(crate) use sample::{history_words, SampleRow};
