//! Typed launchers. Each checks shapes, dtypes and alignment, then holds the only
//! `unsafe` launch of its kernel. Launches go on the caller's stream and neither
//! allocate nor synchronize, so they are safe inside CUDA graph capture.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{CUdeviceptr, CUstream, CUtensorMap};
use cudarc::driver::{CudaFunction, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use half::{bf16, f16};

use super::{Gpu, GpuMatrix};
use crate::dtype::DType;
use crate::error::{shape, Error, Result};
use crate::format::{check_dims, check_max_dim, tiled, Levels};

/// The argument array of a kernel launch: a pointer to each (mutable, local) parameter,
/// in the kernel's order.
macro_rules! kernel_params {
    ($($p:ident),* $(,)?) => {
        [$(&mut $p as *mut _ as *mut std::ffi::c_void),*]
    };
}
pub(crate) use kernel_params;

/// Threads per GEMM CTA (8 warps; `WARPS` in gemm.cuh).
pub(crate) const GEMM_THREADS: u32 = 256;
/// Threads per quantization CTA (`THREADS` in quant.cu).
const QUANT_THREADS: u32 = 1024;
/// Token group sizes with an instantiated kernel (`8 * NT` in gemm_t2.cu) for int8
/// activations; f16/bf16 stop at 16: their 32-token kernel needed twice the activation
/// registers and ran 20-30% slower than two 16-token groups (docs/NOTES.md, v18).
pub fn tokens_per_cta_options(x: DType) -> &'static [usize] {
    match x {
        DType::I8 => &[8, 16, 32],
        _ => &[8, 16],
    }
}

/// Tokens per CTA for a call: the single-token kernel (`n1`: activation row staged
/// in shared memory, and for f16 a cheaper decode) for one token, else the smallest
/// group that holds the batch, else the largest with several CTAs along the batch.
fn tokens_per_cta(x: DType, batch: usize) -> usize {
    let options = tokens_per_cta_options(x);
    if batch == 1 {
        return 1;
    }
    options
        .iter()
        .copied()
        .find(|&t| t >= batch)
        .unwrap_or(options[options.len() - 1])
}
const MAX_GRID_Y: usize = 65_535;

/// Warps per GEMM CTA.
const GEMM_WARPS: usize = GEMM_THREADS as usize / 32;

/// Row tiles per CTA of the instantiated kernels for activation type `x` and `tokens`
/// per CTA (`_r{rt}` in gemm_t2.cu), largest first. Every warp multiplies each of its
/// activation tiles with all the CTA's row tiles, so more row tiles cut the activation
/// traffic per weight byte, but fewer, larger blocks may leave SMs idle: the planner
/// takes the largest whose blocks fill the GPU (docs/NOTES.md, v16-v19). int8
/// activations are half the bytes and gain less; single-token kernels read their
/// activations from shared memory.
pub(crate) fn row_tile_options(x: DType, tokens: usize) -> &'static [usize] {
    match (x, tokens) {
        (_, 1) | (DType::I8, 8) => &[1],
        (DType::I8, _) => &[2],
        (_, 8) => &[4, 2],
        _ => &[8, 4],
    }
}

/// Weight tiles per SM from which a single bf16 token takes the kernel that stages it
/// as f16 (H100: 1.10x faster at 869 tiles per SM, as fast at 217-248, 0.9x at 40-130;
/// bench/results/ab/run22-bench-hold).
const AS_F16_MIN_TILES_PER_SM: usize = 512;

/// Dynamic shared memory of a GEMM kernel without the staged activation row; mirrors
/// `GemmSmem` and `DEPTH_OF` in gemm.cuh (the kernel traps if given less).
fn gemm_fixed_smem(tokens: usize, row_tiles: usize) -> usize {
    let depth = if tokens == 1 { 8 } else { 4 };
    let cols = tokens.max(8);
    let ring = GEMM_WARPS * depth * row_tiles * 512;
    let partial_sums = GEMM_WARPS * 16 * row_tiles * cols * 4;
    let x_sums = GEMM_WARPS * cols * 4;
    let scratch = (GEMM_WARPS * 4).next_multiple_of(16);
    ring + partial_sums + x_sums + scratch
}

/// Parameters of the GEMM kernels, passed by value; mirrors `GemmParams` in common.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmParams {
    /// T2 tiles.
    pub w: CUdeviceptr,
    /// `[batch, ldx]` activations.
    pub x: CUdeviceptr,
    /// `[batch, ldy]` outputs.
    pub y: CUdeviceptr,
    /// `[1]` or `[rows]` f32 weight scale, or 0.
    pub w_scale: CUdeviceptr,
    /// `[rows]` bias in the output type, or 0.
    pub bias: CUdeviceptr,
    /// `[batch]` f32 dequantization factors (i8 activations), or 0.
    pub x_scale: CUdeviceptr,
    /// M.
    pub rows: u32,
    /// N.
    pub cols: u32,
    /// B.
    pub batch: u32,
    /// Row stride of x, elements.
    pub ldx: u32,
    /// Row stride of y, elements.
    pub ldy: u32,
    /// `ceil(cols / 128)`.
    pub k_tiles: u32,
    /// 1 when `w_scale` has one entry per row.
    pub scale_per_row: u32,
    /// 1 when the base of x and its row stride in bytes are multiples of 16.
    pub x_vec: u32,
}
const _: () = assert!(std::mem::size_of::<GemmParams>() == 80);

/// A GEMM on raw device pointers: `y = (x . Wtᵀ) * scale + bias`.
///
/// Supported (activation, output) types: (f16, f16), (bf16, bf16), (i8, f16),
/// (i8, bf16), and (i8, i32) for the raw integer accumulators (neither the weight
/// scale nor `x_scale` is applied, and `bias` must be `None`; `x_scale` is still
/// required for i8 activations). i8 activations allow at most
/// [`Levels::max_w2a8_cols`] columns. With
/// `quantize_x`, a single f16 (bf16) token is quantized per token to int8 inside the
/// kernel (the arithmetic of [`quantize_i8`](Gpu::quantize_i8)) and multiplied as
/// W2A8 into f16 (bf16): one launch instead of two.
#[derive(Clone, Copy, Debug)]
pub struct GemmArgs {
    /// `[batch, ldx]` activations.
    pub x: CUdeviceptr,
    /// Activation type.
    pub x_dtype: DType,
    /// Row stride of x in elements (>= cols).
    pub ldx: usize,
    /// `[batch, ldy]` outputs.
    pub y: CUdeviceptr,
    /// Output type.
    pub y_dtype: DType,
    /// Row stride of y in elements (>= rows).
    pub ldy: usize,
    /// Tokens.
    pub batch: usize,
    /// `[rows]` bias in the output type.
    pub bias: Option<CUdeviceptr>,
    /// `[batch]` f32 per-token dequantization factors; required for i8 activations.
    pub x_scale: Option<CUdeviceptr>,
    /// Quantize the f16/bf16 activations to int8 in the kernel (batch 1 only).
    pub quantize_x: bool,
}

/// How a single-token kernel holds its f16/bf16 activation row in shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Staging {
    /// As given (every token-group kernel too).
    AsIs,
    /// Quantized to int8 (W2A8 in one launch): symbol suffix `q`.
    Quantized,
    /// bf16 rescaled by a power of two to f16, for the cheaper f16 decode: suffix `h`.
    AsF16,
}

/// What one CTA of a GEMM kernel takes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cta {
    /// One token, its activation row staged in shared memory (`_n1`).
    Single,
    /// `tokens` (8, 16 or 32) tokens in registers, `row_tiles` 16-row tiles per CTA
    /// (`_n{tokens}_r{row_tiles}`).
    Groups {
        /// Tokens per CTA.
        tokens: usize,
        /// Row tiles per CTA.
        row_tiles: usize,
    },
    /// `tokens` (16, 32 or 64) tokens staged in shared memory for a K slice; the slices
    /// of a thread-block cluster sum their partial products (`_s{tokens}`, sm_90+; with
    /// warpgroup MMAs `_w{tokens}`, sm_90a).
    Split {
        /// Tokens per CTA.
        tokens: usize,
        /// wgmma instead of mma.sync.
        wgmma: bool,
    },
    /// 256 rows x 128 tokens over the whole K, activations streamed through shared memory
    /// from a pre-pass's workspace: warpgroup MMAs fed by TMA (`_p128`, sm_90a:
    /// gemm_prefill.cuh; with K split over several CTAs per tile `_p128k`) or mma.sync fed
    /// by cp.async (`_m128`, sm_80+: gemm_prefill_mma.cuh).
    Prefill {
        /// wgmma instead of mma.sync.
        wgmma: bool,
        /// Several CTAs per tile, one K slice each (wgmma only).
        split_k: bool,
    },
}

/// The kernel symbol for weight levels, activation and its staging, output and CTA shape.
pub fn gemm_symbol(levels: Levels, x: DType, staging: Staging, y: DType, cta: Cta) -> String {
    let family = match levels {
        Levels::Ternary => "t2",
        Levels::Int2 => "int2",
    };
    let q = match staging {
        Staging::AsIs => "",
        Staging::Quantized => "q",
        Staging::AsF16 => "h",
    };
    let shape = match cta {
        Cta::Single => "n1".to_string(),
        Cta::Groups { tokens, row_tiles } => format!("n{tokens}_r{row_tiles}"),
        Cta::Split { tokens, wgmma } => format!("{}{tokens}", if wgmma { "w" } else { "s" }),
        Cta::Prefill {
            wgmma: true,
            split_k,
        } => format!("p128{}", if split_k { "k" } else { "" }),
        Cta::Prefill { wgmma: false, .. } => "m128".to_string(),
    };
    format!("gemm_{family}_{}{q}_{}_{shape}", x.name(), y.name())
}

/// The kernel families of the planner ([`Gpu::kernel_family`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFamily {
    /// The single-token and token-group kernels ([`Cta::Single`], [`Cta::Groups`]): each
    /// weight decoded once per 8-32 tokens.
    Groups,
    /// The split-K cluster kernels ([`Cta::Split`]): once per 16-64 tokens.
    Split,
    /// The wgmma prefill kernel ([`Cta::Prefill`], sm_90a): once per 128 tokens, tiled
    /// like a dense GEMM.
    Prefill,
    /// The mma.sync prefill kernel ([`Cta::Prefill`]): the same tiles at mma.sync's rate.
    PrefillMma,
}

impl KernelFamily {
    /// "groups", "split", "prefill" or "prefill_mma".
    pub fn name(self) -> &'static str {
        match self {
            Self::Groups => "groups",
            Self::Split => "split",
            Self::Prefill => "prefill",
            Self::PrefillMma => "prefill_mma",
        }
    }
}

/// When the planner takes the split-K cluster kernels (`Cta::Split`, sm_90+) for 9 or
/// more tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SplitKernels {
    /// Never: the token-group kernels, as on GPUs before sm_90.
    Never,
    /// Where the CTA size that holds the batch (64 tokens per CTA, in several token groups,
    /// for larger batches) keeps at least 55% of the GPU's warp time busy, 40% at 64
    /// tokens a CTA (`SPLIT_MIN_UTILIZATION`; docs/NOTES.md, v25 and v27).
    #[default]
    Auto,
    /// Whenever a K slice of the activations fits shared memory.
    Always,
}

/// A checked launch: kernel symbol, parameters and grid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GemmPlan {
    pub symbol: String,
    pub params: GemmParams,
    pub grid: (u32, u32, u32),
    /// Dynamic shared memory, bytes.
    pub smem: u32,
    /// CTAs per thread-block cluster (split kernels), or 0 for a plain launch.
    pub cluster: u32,
    /// Threads per CTA.
    pub threads: u32,
    /// A kernel that first rewrites the activations into a workspace the GEMM reads
    /// instead of `x` (the prefill kernel's).
    pub prepass: Option<Prepass>,
}

/// The prefill kernel's activation pre-pass (`prefill_x_*` in quant.cu): one CTA of
/// [`PREPASS_THREADS`] per token, writing `bytes` of workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Prepass {
    pub symbol: &'static str,
    pub bytes: usize,
    /// 1 when x allows 4-byte loads (aligned base and row stride, whole words per row).
    pub vec: u32,
    /// The GEMM reads the workspace and the weights through TMA descriptors (`_p128`),
    /// else through `x` (`_m128`).
    pub tensor_maps: bool,
    /// Split K (`_p128k`): the GEMM's tiles, each taking `grid / tiles` CTAs, whose partial
    /// sums ([`PREFILL_PARTIAL`] bytes per CTA) and per-tile counters (u32, zeroed before
    /// the launch) follow the activations in the workspace.
    pub split_tiles: Option<usize>,
}

/// Bytes of partial sums a split-K prefill CTA stores: 256 rows x 128 tokens of f32 or i32.
pub(crate) const PREFILL_PARTIAL: usize = 256 * 128 * 4;

impl Prepass {
    /// Offsets of the partial sums and the counters in the workspace, and its size, for a
    /// launch of `ctas` CTAs: the activations (and int8 sums) first, each part 256-byte
    /// aligned.
    pub(crate) fn layout(&self, ctas: usize) -> (usize, usize, usize) {
        let partial = self.bytes.next_multiple_of(256);
        let Some(tiles) = self.split_tiles else {
            return (partial, partial, self.bytes);
        };
        let counters = partial + ctas * PREFILL_PARTIAL;
        (partial, counters, counters + tiles * 4)
    }
}

/// What the planner needs to know about the loaded kernels (a `Gpu`, or a fake in tests).
pub(crate) trait Occupancy {
    /// CTAs of `symbol` with `dynamic` bytes of dynamic shared memory that fit the GPU at once.
    fn resident(&self, symbol: &str, dynamic: usize) -> Result<usize>;
    /// The most dynamic shared memory `symbol` may take.
    fn max_dynamic(&self, symbol: &str) -> Result<usize>;
    /// Multiprocessors.
    fn sm_count(&self) -> usize;
    /// Clusters of `size` CTAs of `symbol` with `dynamic` bytes of dynamic shared memory
    /// that fit the GPU at once; 0 on GPUs without thread-block clusters (before sm_90).
    fn clusters(&self, symbol: &str, dynamic: usize, size: usize) -> Result<usize>;
    /// When to take the split kernels.
    fn split_kernels(&self) -> SplitKernels;
    /// Whether the split and prefill kernels use wgmma (sm_90a).
    fn wgmma(&self) -> bool;
    /// Whether large batches take the prefill kernels.
    fn prefill(&self) -> bool;
}

impl Occupancy for Gpu {
    fn resident(&self, symbol: &str, dynamic: usize) -> Result<usize> {
        self.resident_ctas(symbol, dynamic)
    }
    fn sm_count(&self) -> usize {
        self.info.sm_count
    }
    fn max_dynamic(&self, symbol: &str) -> Result<usize> {
        Ok(self.kernel(symbol)?.max_dynamic_smem)
    }
    fn clusters(&self, symbol: &str, dynamic: usize, size: usize) -> Result<usize> {
        self.resident_clusters(symbol, dynamic, size)
    }
    fn split_kernels(&self) -> SplitKernels {
        self.split_kernels
    }
    fn wgmma(&self) -> bool {
        self.wgmma
    }
    fn prefill(&self) -> bool {
        self.prefill
    }
}

/// Validates `args` against a `rows` x `cols` matrix and picks the kernel. The grid
/// is persistent: as many CTAs along the rows as fit the GPU at once, each looping
/// over row tiles.
pub(crate) fn plan_gemm(
    rows: usize,
    cols: usize,
    levels: Levels,
    w: CUdeviceptr,
    w_scale: Option<(CUdeviceptr, bool)>,
    a: &GemmArgs,
    gpu: &impl Occupancy,
) -> Result<GemmPlan> {
    use DType::*;
    if !matches!(
        (a.x_dtype, a.y_dtype),
        (F16, F16) | (BF16, BF16) | (I8, F16) | (I8, BF16) | (I8, I32)
    ) {
        return Err(Error::Unsupported {
            what: "dtype pair",
            detail: format!(
                "x {} with y {}; supported: f16->f16, bf16->bf16, i8->f16|bf16|i32",
                a.x_dtype.name(),
                a.y_dtype.name()
            ),
        });
    }
    if a.batch == 0 {
        return Err(Error::Empty { arg: "x" });
    }
    if a.quantize_x && (a.x_dtype == I8 || a.batch != 1) {
        return Err(missing(
            "quantize_x",
            "quantizes one f16 or bf16 token in the kernel; quantize larger batches with quantize_i8",
        ));
    }
    let (_, k_tiles) = tiled::tile_counts(rows, cols);
    // The single-token kernels keep the activation row (128 columns per k tile) in
    // shared memory; a row too long for it takes the 8-token kernel.
    let staged = if a.quantize_x { I8 } else { a.x_dtype };
    let row_bytes = k_tiles * 128 * staged.size();
    let mut tokens = tokens_per_cta(a.x_dtype, a.batch);
    let staging = if a.quantize_x {
        Staging::Quantized
    } else {
        Staging::AsIs
    };
    let single = gemm_symbol(levels, a.x_dtype, staging, a.y_dtype, Cta::Single);
    let row_room = gpu
        .max_dynamic(&single)?
        .saturating_sub(gemm_fixed_smem(1, 1));
    if tokens == 1 && row_bytes > row_room {
        if a.quantize_x {
            return Err(Error::TooLarge {
                arg: "cols",
                value: cols as u64,
                limit: (row_room / 128 * 128) as u64,
            });
        }
        tokens = tokens_per_cta_options(a.x_dtype)[0];
    }
    let groups = a.batch.div_ceil(tokens);
    if groups > MAX_GRID_Y {
        return Err(Error::TooLarge {
            arg: "batch",
            value: a.batch as u64,
            limit: (MAX_GRID_Y * tokens) as u64,
        });
    }
    for (arg, ld, min) in [("ldx", a.ldx, cols), ("ldy", a.ldy, rows)] {
        if ld < min {
            return Err(Error::ShapeMismatch {
                arg,
                expected: format!(">= {min}"),
                got: ld.to_string(),
            });
        }
        if ld > u32::MAX as usize {
            return Err(Error::TooLarge {
                arg,
                value: ld as u64,
                limit: u32::MAX as u64,
            });
        }
    }
    if a.x_dtype == I8 || a.quantize_x {
        levels.check_w2a8_cols(cols)?;
    }
    match (a.x_dtype, a.x_scale) {
        (I8, None) => return Err(missing("x_scale", "i8 activations need per-token scales")),
        (F16 | BF16, Some(_)) => {
            return Err(missing("x_scale", "only i8 activations take x_scale"))
        }
        _ => {}
    }
    if a.y_dtype == I32 && a.bias.is_some() {
        return Err(missing(
            "bias",
            "i32 output holds raw accumulators: no scale or bias",
        ));
    }
    check_ptr("x", a.x, a.x_dtype.size())?;
    check_ptr("y", a.y, a.y_dtype.size())?;
    if let Some(b) = a.bias {
        check_ptr("bias", b, a.y_dtype.size())?;
    }
    if let Some(s) = a.x_scale {
        check_ptr("x_scale", s, 4)?;
    }
    // The kernels load activations 16 bytes at a time.
    let vec_bytes = 16u64;
    let x_vec = a.x % vec_bytes == 0 && (a.ldx * a.x_dtype.size()) as u64 % vec_bytes == 0;
    let (row_tiles, _) = tiled::tile_counts(rows, cols);
    let (w_scale, per_row) = match (a.y_dtype, w_scale) {
        (I32, _) | (_, None) => (0, false),
        (_, Some(s)) => s,
    };
    // One bf16 token: the f16 decode costs half the bf16 one per weight, but every CTA
    // first converts the whole row; that pays once each SM streams at least
    // AS_F16_MIN_TILES_PER_SM weight tiles (docs/NOTES.md, v21).
    let staging = if tokens == 1
        && a.x_dtype == BF16
        && !a.quantize_x
        && row_tiles * k_tiles >= AS_F16_MIN_TILES_PER_SM * gpu.sm_count()
    {
        Staging::AsF16
    } else {
        staging
    };
    let params = GemmParams {
        w,
        x: a.x,
        y: a.y,
        w_scale,
        bias: a.bias.unwrap_or(0),
        x_scale: a.x_scale.unwrap_or(0),
        rows: rows as u32,
        cols: cols as u32,
        batch: a.batch as u32,
        ldx: a.ldx as u32,
        ldy: a.ldy as u32,
        k_tiles: k_tiles as u32,
        scale_per_row: per_row as u32,
        x_vec: x_vec as u32,
    };
    let mut fallback = None;
    if a.batch >= PREFILL_MIN_BATCH && gpu.prefill() {
        match plan_prefill(levels, a, row_tiles, k_tiles, params, gpu)? {
            Some(Prefill::First(plan)) => return Ok(plan),
            Some(Prefill::AfterSplit(plan)) => fallback = Some(plan),
            None => {}
        }
    }
    if a.batch >= SPLIT_MIN_BATCH && gpu.split_kernels() != SplitKernels::Never {
        if let Some(plan) = plan_split(levels, a, row_tiles, k_tiles, params, gpu)? {
            return Ok(plan);
        }
    }
    if let Some(plan) = fallback {
        return Ok(plan);
    }
    // The most row tiles per CTA whose blocks (times the token groups) fill every
    // resident CTA slot, else the fewest. Token groups share the GPU: each gets its
    // share of the resident CTAs. Filling every slot beat spreading the row tiles
    // evenly over fewer CTAs (docs/NOTES.md, v8).
    let options = row_tile_options(a.x_dtype, tokens);
    let mut chosen = None;
    for (i, &rt) in options.iter().enumerate() {
        let cta = if tokens == 1 {
            Cta::Single
        } else {
            Cta::Groups {
                tokens,
                row_tiles: rt,
            }
        };
        let symbol = gemm_symbol(levels, a.x_dtype, staging, a.y_dtype, cta);
        let smem = gemm_fixed_smem(tokens, rt) + if tokens == 1 { row_bytes } else { 0 };
        let resident = gpu.resident(&symbol, smem)?;
        let row_blocks = row_tiles.div_ceil(rt);
        if row_blocks * groups >= resident || i + 1 == options.len() {
            chosen = Some((symbol, smem, (resident / groups).clamp(1, row_blocks)));
            break;
        }
    }
    let (symbol, smem, ctas) = chosen.expect("row_tile_options is never empty");
    Ok(GemmPlan {
        symbol,
        params,
        grid: (ctas as u32, groups as u32, 1),
        smem: smem as u32,
        cluster: 0,
        threads: GEMM_THREADS,
        prepass: None,
    })
}

/// Batches from which the prefill kernel takes over where the GPU has it: beyond the
/// split kernels' 64 tokens per CTA, which would read and decode the weights once per
/// 64 tokens.
const PREFILL_MIN_BATCH: usize = 65;
/// The share of the GPU's resident CTAs the prefill kernel's tiles must fill for one
/// block of 128 tokens, else the split / token-group kernels run (or, in Python, the dense
/// path), or, where its split K fills that share and the split kernels do not take the
/// batch, the split prefill kernel. On the H100 (132 SMs, one prefill CTA each; docs/NOTES.md, v28) at 128 tokens:
/// 112 tiles (28672 x 8192) ran in 0.63 (f16) / 0.67 (int8) of the time of the kernels
/// without it, 56 tiles (14336 x 4096) in 1.12 / 1.22, 32 tiles (8192 x 28672) in 1.20 /
/// 0.76. At 256 tokens, where those kernels decode the weights four times, 64 tiles
/// (8192 x 28672) ran in 0.63 / 0.39 and 112 (14336 x 4096) in 0.65 / 0.75.
const PREFILL_MIN_FILL: f64 = 0.5;
/// Tokens and rows per CTA of the prefill kernels (`PF_TOKENS`, 16 `PF_ROW_TILES` in
/// gemm_prefill.cuh), and their threads.
const PREFILL_TOKENS: usize = 128;
const PREFILL_ROWS: usize = 256;
const PREFILL_THREADS: u32 = 256;
/// Threads per CTA of the pre-pass (`prefill_x_*` in quant.cu), and its kernels for
/// 16-bit and int8 activations.
pub(crate) const PREPASS_THREADS: u32 = 256;
pub(crate) const PREPASS_16: &str = "prefill_x_16";
pub(crate) const PREPASS_I8: &str = "prefill_x_i8";

type TmaType = cudarc::driver::sys::CUtensorMapDataType;

/// A 2-D TMA descriptor of `base` (16-byte aligned): `dims` (inner, outer) elements, rows
/// `row_bytes` apart, copied in boxes of `boxes` elements, with the 128-byte swizzle (else
/// none); reads past the end fill zeros.
fn tensor_map(
    base: CUdeviceptr,
    dtype: TmaType,
    dims: [usize; 2],
    row_bytes: usize,
    boxes: [usize; 2],
    swizzle: bool,
) -> Result<CUtensorMap> {
    use cudarc::driver::sys::{
        CUtensorMapFloatOOBfill as Fill, CUtensorMapInterleave as Interleave,
        CUtensorMapL2promotion as L2, CUtensorMapSwizzle as Swizzle,
    };
    let dims = dims.map(|d| d as u64);
    let strides = [row_bytes as u64];
    let boxes = boxes.map(|b| b as u32);
    let unit = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<CUtensorMap>::uninit();
    // SAFETY: every array holds the rank's entries; the driver writes `map`.
    unsafe {
        cudarc::driver::sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            dtype,
            2,
            base as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            unit.as_ptr(),
            Interleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            if swizzle {
                Swizzle::CU_TENSOR_MAP_SWIZZLE_128B
            } else {
                Swizzle::CU_TENSOR_MAP_SWIZZLE_NONE
            },
            L2::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            Fill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()?;
        Ok(map.assume_init())
    }
}

/// Bytes of one pipeline stage of the prefill kernels: one k tile of activations (128
/// tokens) and weights (16 row tiles); mirrors `PrefillMma::STAGE` (gemm_prefill_mma.cuh).
fn prefill_stage(x: DType) -> usize {
    PREFILL_TOKENS * 128 * x.size() + 16 * 512
}

/// Dynamic shared memory of the wgmma prefill kernel: its stages, and 1 KB to align
/// them; mirrors `PrefillX::SMEM`.
fn prefill_smem(x: DType) -> usize {
    let stages = if x == DType::I8 { 8 } else { 5 };
    stages * prefill_stage(x) + 1024
}

/// Stages of the mma.sync prefill kernel where `max_dynamic` bytes allow at least two
/// (it takes as many as its dynamic shared memory holds): 4 for 16-bit activations, 6
/// for int8 (the A100's 163 KB holds both), fewer on GPUs of 100 KB.
fn prefill_mma_stages(x: DType, max_dynamic: usize) -> Option<usize> {
    let most = if x == DType::I8 { 6 } else { 4 };
    let stages = (max_dynamic / prefill_stage(x)).min(most);
    (stages >= 2).then_some(stages)
}

/// CTAs per tile on offer to the wgmma prefill kernel's split K, and what a split costs a
/// CTA beyond its k tiles (storing and summing the partial sums, the pipeline's fill), in
/// k tiles: the planner's cost model.
const PREFILL_SPLITS: [usize; 4] = [1, 2, 4, 8];
const PREFILL_SPLIT_STEPS: usize = 6;

/// The CTAs per tile that split K for `tiles` tiles of `k_tiles`: the fewest k-tile steps
/// over the waves of CTAs that fit the GPU at once. It splits where the tiles leave SMs
/// idle (few row blocks, one or two token blocks) and keeps whole K where they fill the GPU.
fn prefill_split(
    symbol: &str,
    smem: usize,
    tiles: usize,
    k_tiles: usize,
    gpu: &impl Occupancy,
) -> Result<usize> {
    let slots = gpu.resident(symbol, smem)?.max(1);
    let steps = |split: usize| {
        let extra = if split > 1 { PREFILL_SPLIT_STEPS } else { 0 };
        tiles
            .saturating_mul(split)
            .div_ceil(slots)
            .saturating_mul(k_tiles.div_ceil(split) + extra)
    };
    Ok(PREFILL_SPLITS
        .into_iter()
        .filter(|&s| s <= k_tiles)
        .min_by_key(|&s| steps(s))
        .unwrap_or(1))
}

/// A prefill kernel for `a.batch` tokens, if its stages fit shared memory: a CTA (with
/// split K, several) per 256 rows x 128 tokens, token blocks fastest, after the pre-pass that lays the
/// activations out for it (and, for int8, sums each token). wgmma where the GPU has it
/// (and `gpu.wgmma()`), else mma.sync.
fn plan_prefill(
    levels: Levels,
    a: &GemmArgs,
    row_tiles: usize,
    k_tiles: usize,
    mut params: GemmParams,
    gpu: &impl Occupancy,
) -> Result<Option<Prefill>> {
    let wgmma = gpu.wgmma();
    let symbol_for = |split_k| {
        gemm_symbol(
            levels,
            a.x_dtype,
            Staging::AsIs,
            a.y_dtype,
            Cta::Prefill { wgmma, split_k },
        )
    };
    let mut symbol = symbol_for(false);
    let max_dynamic = gpu.max_dynamic(&symbol)?;
    let smem = if wgmma {
        prefill_smem(a.x_dtype)
    } else {
        match prefill_mma_stages(a.x_dtype, max_dynamic) {
            Some(stages) => stages * prefill_stage(a.x_dtype),
            None => return Ok(None),
        }
    };
    if smem > max_dynamic {
        return Ok(None);
    }
    let tiles = (row_tiles * 16).div_ceil(PREFILL_ROWS) * a.batch.div_ceil(PREFILL_TOKENS);
    let split = if wgmma {
        prefill_split(&symbol, smem, tiles, k_tiles, gpu)?
    } else {
        1
    };
    if split > 1 {
        symbol = symbol_for(true);
    }
    let ctas = tiles.saturating_mul(split);
    // One token block in too few tiles to fill the GPU: the split kernels (K slices in
    // clusters, every weight decoded once for up to 64 tokens) were as fast or faster at 128
    // tokens wherever they fit, the token-group kernels slower than split K (docs/NOTES.md,
    // v30); with too few CTAs even split, the other kernels.
    let least = PREFILL_MIN_FILL * gpu.resident(&symbol, smem)? as f64;
    let first = a.batch > PREFILL_TOKENS || tiles as f64 >= least;
    if !first && (ctas as f64) < least {
        return Ok(None);
    }
    if ctas > i32::MAX as usize {
        return Err(Error::TooLarge {
            arg: "batch",
            value: a.batch as u64,
            limit: (i32::MAX as usize / split / (row_tiles * 16).div_ceil(PREFILL_ROWS)
                * PREFILL_TOKENS) as u64,
        });
    }
    let xsz = a.x_dtype.size();
    let row_bytes = elems("x", k_tiles * 128 * xsz, a.batch)?;
    let (symbol_x, sums, word) = if a.x_dtype == DType::I8 {
        (PREPASS_I8, a.batch * 4, 4)
    } else {
        (PREPASS_16, 0, 2)
    };
    let vec = a.x % 4 == 0 && a.ldx % word == 0 && params.cols as usize % word == 0;
    // The kernel reads the workspace (wgmma: through a TMA descriptor, and its int8 sums
    // through `x`), not x: the launch fills in its address.
    params.x = 0;
    let plan = GemmPlan {
        symbol,
        params,
        grid: (ctas as u32, 1, 1),
        smem: smem as u32,
        cluster: 0,
        threads: PREFILL_THREADS,
        prepass: Some(Prepass {
            symbol: symbol_x,
            bytes: row_bytes + sums,
            vec: vec as u32,
            tensor_maps: wgmma,
            split_tiles: (split > 1).then_some(tiles),
        }),
    };
    Ok(Some(if first {
        Prefill::First(plan)
    } else {
        Prefill::AfterSplit(plan)
    }))
}

/// A prefill plan, and whether it goes before the split kernels' or only where they do not
/// take the batch.
enum Prefill {
    First(GemmPlan),
    AfterSplit(GemmPlan),
}

/// Batches from which the split-K cluster kernels take over (sm_90+): up to 8 tokens
/// the token-group kernel holds the batch in one CTA's registers.
const SPLIT_MIN_BATCH: usize = 9;
/// Tokens per CTA of the split kernels (`_s{T}` and `_w{T}` in gemm_t2.cu).
pub(crate) const SPLIT_TOKENS: [usize; 3] = [16, 32, 64];
/// CTAs per cluster on offer: divisors of the warps per CTA (each rank sums the partial
/// sums of warps w = rank mod S), up to the portable limit of 8.
const CLUSTER_SIZES: [usize; 4] = [1, 2, 4, 8];
/// What a round of a split kernel costs besides its k tiles (staging, partial sums
/// through shared memory, two cluster barriers), in k-tile steps: the planner's cost
/// model.
const SPLIT_ROUND_STEPS: usize = 1;
/// The share of the GPU's warp time (k-tile steps including each round's overhead, over
/// every warp the kernel fits) a split launch must fill with weight tiles for
/// [`SplitKernels::Auto`] to take it. Its warps own whole row tiles for whole K slices,
/// so shapes with few row tiles per warp leave SMs or rounds part empty, and there the
/// token-group kernels (warps splitting K inside a CTA) are faster. On the H100 (wgmma,
/// every shape of the bench at 16-32 tokens, docs/NOTES.md, v27), split launches this
/// estimate put at 0.05-0.50 ran 0.81-1.53x the token-group kernels' time, mostly
/// slower; at 0.56 1.08-1.11x (16 tokens) and 0.67-0.81x (32); from 0.60 0.45-0.93x. The
/// mma.sync variant (clusters without wgmma) takes the same rule: on four shapes of the
/// same card it ran 1.05-1.28x the wgmma kernels' time at 32-64 tokens, still ahead of
/// the token-group kernels where the rule takes it except 8192 x 8192 at 64 f16 tokens
/// (1.04x).
const SPLIT_MIN_UTILIZATION: f64 = 0.55;
/// The same for 64 tokens a CTA, where the token-group kernels decode every weight two
/// (int8) or four times (f16/bf16): at 0.42-0.50 0.64-0.92x, at 0.10 1.01-1.28x.
const SPLIT_MIN_UTILIZATION_64: f64 = 0.4;

/// Warps per CTA and row tiles per warp of the split kernel for `tokens` (`SPLIT_WARPS`
/// and `SPLIT_RW` in gemm_split.cuh): a CTA takes 32 row tiles a round, or 16 at 64
/// tokens. The 64-token wgmma kernel spreads its 16 over 16 warps.
fn split_warps(tokens: usize, wgmma: bool) -> (usize, usize) {
    match (tokens, wgmma) {
        (64, true) => (16, 1),
        (64, false) => (8, 2),
        _ => (16, 2),
    }
}

/// Dynamic shared memory of a split kernel without its staged activations; mirrors
/// `SplitSmem` in gemm_split.cuh.
fn split_fixed_smem(tokens: usize, wgmma: bool) -> usize {
    let (warps, rw) = split_warps(tokens, wgmma);
    let ring = warps * 4 * rw * 512;
    let partial_sums = warps * 32 * rw * tokens * 2;
    let x_sums = tokens * 4;
    ring + partial_sums + x_sums
}

/// The staged activations of a split kernel: `tokens` rows of `per` k tiles, each row
/// padded to 32 mod 128 bytes, or with wgmma `per` k tiles of all tokens, each padded by
/// 16 bytes (`SplitX` in gemm_split.cuh).
fn split_x_smem(x: DType, tokens: usize, per: usize, wgmma: bool) -> usize {
    if wgmma {
        per * (tokens * 128 * x.size() + 16)
    } else {
        tokens * (per * 128 * x.size() + 32)
    }
}

/// The split-K cluster kernel for a batch of 9 or more, if this GPU has clusters and
/// the activations of some K slice fit shared memory: the tokens per CTA that hold the
/// batch (else 64 per CTA along the grid's y), and the cluster size (K slices) that
/// minimizes rounds x (k tiles per slice + a round's overhead), where a round gives
/// every resident cluster one unit of row tiles (32 a CTA, 16 at 64 tokens, as row pairs of
/// its warps: `pair_warps`). In `Auto` mode, only
/// where that fills [`SPLIT_MIN_UTILIZATION`] (64 tokens: [`SPLIT_MIN_UTILIZATION_64`])
/// of the warp time with the CTA size that holds the batch. With wgmma (sm_90a) the
/// `_w` kernels, else `_s`.
fn plan_split(
    levels: Levels,
    a: &GemmArgs,
    row_tiles: usize,
    k_tiles: usize,
    params: GemmParams,
    gpu: &impl Occupancy,
) -> Result<Option<GemmPlan>> {
    let auto = gpu.split_kernels() == SplitKernels::Auto;
    let wgmma = gpu.wgmma();
    let pairs = row_tiles.div_ceil(2);
    let want = SPLIT_TOKENS
        .iter()
        .position(|&t| t >= a.batch)
        .unwrap_or(SPLIT_TOKENS.len() - 1);
    // Auto: only the CTA size that holds the batch (64 tokens a CTA beyond); a smaller
    // one would read the weights once per extra token group.
    let first = if auto { want } else { 0 };
    for &tokens in SPLIT_TOKENS[first..=want].iter().rev() {
        let (warps, rw) = split_warps(tokens, wgmma);
        // The cost model counts a CTA's row tiles of a round as pairs, one per "pair warp".
        let pair_warps = warps * rw / 2;
        let blocks = pairs.div_ceil(pair_warps).max(1);
        let groups = a.batch.div_ceil(tokens);
        if groups > MAX_GRID_Y {
            continue;
        }
        let cta = Cta::Split { tokens, wgmma };
        let symbol = gemm_symbol(levels, a.x_dtype, Staging::AsIs, a.y_dtype, cta);
        let room = gpu.max_dynamic(&symbol)?;
        // (cost, utilization, cluster size, clusters per token group, smem)
        let mut best: Option<(usize, f64, usize, usize, usize)> = None;
        for size in CLUSTER_SIZES.into_iter().filter(|&s| s <= k_tiles) {
            let per = k_tiles.div_ceil(size);
            let smem =
                split_fixed_smem(tokens, wgmma) + split_x_smem(a.x_dtype, tokens, per, wgmma);
            if smem > room {
                continue;
            }
            let fit = gpu.clusters(&symbol, smem, size)?;
            if fit == 0 {
                continue;
            }
            let clusters = (fit / groups).clamp(1, blocks);
            // Token groups beyond what fits at once run in further waves.
            let waves = (groups * clusters).div_ceil(fit);
            let cost = waves * blocks.div_ceil(clusters) * (per + SPLIT_ROUND_STEPS);
            // Weight-tile steps of the launch over those its resident warps could do.
            let capacity = cost * fit * size * pair_warps;
            let utilization = (pairs * k_tiles * groups) as f64 / capacity as f64;
            if best.is_none_or(|(c, ..)| cost < c) {
                best = Some((cost, utilization, size, clusters, smem));
            }
        }
        let Some((_, utilization, size, clusters, smem)) = best else {
            continue;
        };
        let min = if tokens == 64 {
            SPLIT_MIN_UTILIZATION_64
        } else {
            SPLIT_MIN_UTILIZATION
        };
        if auto && utilization < min {
            return Ok(None);
        }
        return Ok(Some(GemmPlan {
            symbol,
            params,
            grid: ((clusters * size) as u32, groups as u32, 1),
            smem: smem as u32,
            cluster: size as u32,
            threads: (warps * 32) as u32,
            prepass: None,
        }));
    }
    Ok(None)
}

fn missing(arg: &'static str, why: &str) -> Error {
    Error::Unsupported {
        what: "argument",
        detail: format!("`{arg}`: {why}"),
    }
}

/// The element-type code the layout and epilogue kernels take (`dtype`/`out` in
/// layout.cu and quant.cu): 0 for their one non-16-bit type (f32 or i8), 1 f16, 2 bf16;
/// `dtype` must be one of `allowed`, else an error naming `arg`.
pub(crate) fn kernel_dtype(dtype: DType, allowed: &[DType], arg: &str) -> Result<u32> {
    if !allowed.contains(&dtype) {
        let names: Vec<_> = allowed.iter().map(|d| d.name()).collect();
        return Err(Error::Unsupported {
            what: "dtype",
            detail: format!("{arg} {}; need {}", dtype.name(), names.join(" or ")),
        });
    }
    Ok(match dtype {
        DType::F16 => 1,
        DType::BF16 => 2,
        _ => 0,
    })
}

/// Blocks of 256 threads for `threads` threads, within the 1-D grid limit.
pub(crate) fn blocks_of_256(threads: usize) -> Result<u32> {
    u32::try_from(threads.div_ceil(256)).map_err(|_| Error::TooLarge {
        arg: "weights",
        value: threads as u64,
        limit: u32::MAX as u64 * 256,
    })
}

pub(crate) fn check_ptr(arg: &'static str, ptr: CUdeviceptr, align: usize) -> Result<()> {
    if ptr == 0 {
        return Err(Error::Misaligned {
            arg,
            detail: "null pointer".into(),
        });
    }
    if ptr % align as u64 != 0 {
        return Err(Error::Misaligned {
            arg,
            detail: format!("address {ptr:#x} is not a multiple of {align}"),
        });
    }
    Ok(())
}

/// A float type the GPU kernels take as activations (and produce as outputs).
pub trait GpuFloat: GpuOut {}
impl GpuFloat for f16 {}
impl GpuFloat for bf16 {}

/// An output type of the GEMM kernels: f16 and bf16, and i32 for raw W2A8 accumulators.
/// Sealed: the kernels exist for these types only.
pub trait GpuOut: DeviceRepr + Copy + 'static + sealed::Sealed {
    /// The matching [`DType`].
    const DTYPE: DType;
}
impl GpuOut for f16 {
    const DTYPE: DType = DType::F16;
}
impl GpuOut for bf16 {
    const DTYPE: DType = DType::BF16;
}
impl GpuOut for i32 {
    const DTYPE: DType = DType::I32;
}
mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for i32 {}
}

/// `a * b` elements, or `TooLarge`.
fn elems(arg: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or(Error::TooLarge {
        arg,
        value: u64::MAX,
        limit: usize::MAX as u64,
    })
}

/// Launches `f` on `stream` with a 1-D or 2-D grid.
///
/// # Safety
/// `params` must match the kernel's signature, and every pointer they hold must be
/// valid for what the kernel reads and writes until the launch completes.
pub(crate) unsafe fn launch(
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    stream: CUstream,
    params: &mut [*mut c_void],
) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe {
        cudarc::driver::result::launch_kernel(
            f.cu_function(),
            grid,
            (block, 1, 1),
            smem,
            stream,
            params,
        )
    }?;
    Ok(())
}

/// Launches a planned GEMM kernel `f`, in clusters where the plan says so.
///
/// # Safety
/// As [`launch`].
unsafe fn launch_plan(
    f: &CudaFunction,
    plan: &GemmPlan,
    stream: CUstream,
    params: &mut [*mut c_void],
) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe {
        if plan.cluster > 0 {
            let (grid, cluster, threads, smem) = (plan.grid, plan.cluster, plan.threads, plan.smem);
            launch_clusters(f, grid, cluster, threads, smem, stream, params)
        } else {
            launch(f, plan.grid, plan.threads, plan.smem, stream, params)
        }
    }
}

/// Launches `f` in clusters of `cluster` CTAs along x (`grid.0` a multiple).
///
/// # Safety
/// As [`launch`].
unsafe fn launch_clusters(
    f: &CudaFunction,
    grid: (u32, u32, u32),
    cluster: u32,
    threads: u32,
    smem: u32,
    stream: CUstream,
    params: &mut [*mut c_void],
) -> Result<()> {
    let mut attr = super::cluster_attribute(cluster);
    let config = cudarc::driver::sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: threads,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: stream,
        attrs: &mut attr,
        numAttrs: 1,
    };
    // SAFETY: forwarded from the caller; `config` and `attr` outlive the call.
    unsafe {
        cudarc::driver::sys::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()?;
    Ok(())
}

impl Gpu {
    /// GEMM on raw device pointers, on `stream` (e.g. PyTorch's current stream).
    ///
    /// # Safety
    /// `args.x` must hold `batch` rows of `ldx` elements (at least `w.cols()` readable
    /// in each), `args.y` `batch` rows of `ldy` writable elements, `bias` `w.rows()`
    /// elements and `x_scale` `batch` floats, all on this GPU and alive until the
    /// launch completes; `y` must not overlap the inputs; `stream` must belong to
    /// this GPU's context; `w` must not be dropped before the launch completes
    /// (its memory is released in the order of the stream it was uploaded on).
    pub unsafe fn gemm_raw(&self, w: &GpuMatrix, args: &GemmArgs, stream: CUstream) -> Result<()> {
        self.check_context(w)?;
        let ptrs = w.device_ptrs(w.tiles_stream());
        // SAFETY: forwarded from the caller, who also keeps `w` alive until the launch completes.
        unsafe { self.launch_gemm(w, ptrs.tiles, ptrs.scale, args, stream) }
    }

    /// # Safety
    /// As [`Gpu::gemm_raw`], with `tiles` and `scale` the pointers of `w`.
    unsafe fn launch_gemm(
        &self,
        w: &GpuMatrix,
        tiles: CUdeviceptr,
        scale: Option<(CUdeviceptr, bool)>,
        args: &GemmArgs,
        stream: CUstream,
    ) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.gemm_tiles_raw(w.rows(), w.cols(), w.levels(), tiles, scale, args, stream) }
    }

    /// GEMM on weights that are themselves a raw device buffer of T2 words (e.g. a
    /// tensor owned by PyTorch): `tiles` holds [`tiled::len_words`]`(rows, cols)` words
    /// of `levels` codes, `scale` is `(pointer, per_row)` to one f32 or `rows` f32.
    ///
    /// # Safety
    /// As [`Gpu::gemm_raw`]; in addition `tiles` (16-byte aligned) and `scale` must hold
    /// what they claim and stay alive until the launch completes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_tiles_raw(
        &self,
        rows: usize,
        cols: usize,
        levels: Levels,
        tiles: CUdeviceptr,
        scale: Option<(CUdeviceptr, bool)>,
        args: &GemmArgs,
        stream: CUstream,
    ) -> Result<()> {
        check_dims(rows, cols)?;
        check_ptr("tiles", tiles, 16)?;
        if let Some((s, _)) = scale {
            check_ptr("scale", s, 4)?;
        }
        let plan = plan_gemm(rows, cols, levels, tiles, scale, args, self)?;
        let f = self.function(&plan.symbol)?;
        let mut params = plan.params;
        let Some(pre) = &plan.prepass else {
            // SAFETY: forwarded from the caller.
            let mut kp = [&mut params as *mut GemmParams as *mut c_void];
            return unsafe { launch_plan(f, &plan, stream, &mut kp) };
        };
        // The workspace is allocated and freed in the stream's order (the driver's pool),
        // so it lives exactly as long as the launches that use it.
        let (partial, counters, bytes) = pre.layout(plan.grid.0 as usize);
        // SAFETY: `stream` belongs to this GPU's context (the caller's guarantee).
        let work = unsafe { cudarc::driver::result::malloc_async(stream, bytes) }?;
        let (mut partial, mut counters) = match pre.split_tiles {
            Some(_) => (work + partial as u64, work + counters as u64),
            None => (0, 0),
        };
        let (mut x, mut ldx, mut n, mut k_tiles, mut vec, mut out) = (
            args.x,
            args.ldx as u32,
            cols as u32,
            params.k_tiles,
            pre.vec,
            work,
        );
        let mut kp = kernel_params!(x, ldx, n, k_tiles, vec, out);
        params.x = work;
        let (xsz, kt) = (args.x_dtype.size(), k_tiles as usize);
        // SAFETY: the pre-pass reads `batch` rows of x (the caller's guarantee) and writes
        // `pre.bytes` of the workspace; the GEMM reads the workspace through `params.x` or
        // `x_map` and the weights through `params.w` or `w_map`, all within the buffers
        // they describe, and a split one its partial sums and counters in the workspace.
        let launched = unsafe {
            launch(
                self.function(pre.symbol)?,
                (args.batch as u32, 1, 1),
                PREPASS_THREADS,
                0,
                stream,
                &mut kp,
            )
            .and_then(|()| {
                if let Some(tiles) = pre.split_tiles {
                    cudarc::driver::result::memset_d8_async(counters, 0, tiles * 4, stream)?;
                }
                if !pre.tensor_maps {
                    let mut kp = [&mut params as *mut GemmParams as *mut c_void];
                    return launch_plan(f, &plan, stream, &mut kp);
                }
                // The workspace: [batch][k_tiles * 128] activations, boxes of 128 bytes x 128
                // tokens, 128-byte swizzle. The weights: row tiles of k_tiles * 512 bytes,
                // boxes of one k tile (512 bytes) x 16 row tiles.
                let mut x_map = tensor_map(
                    work,
                    if xsz == 1 {
                        TmaType::CU_TENSOR_MAP_DATA_TYPE_UINT8
                    } else {
                        TmaType::CU_TENSOR_MAP_DATA_TYPE_UINT16
                    },
                    [kt * 128, args.batch],
                    kt * 128 * xsz,
                    [128 / xsz, PREFILL_TOKENS],
                    true,
                )?;
                let mut w_map = tensor_map(
                    plan.params.w,
                    TmaType::CU_TENSOR_MAP_DATA_TYPE_UINT32,
                    [kt * 128, rows.div_ceil(16)],
                    kt * 512,
                    [128, PREFILL_ROWS / 16],
                    false,
                )?;
                let mut kp = [
                    &mut params as *mut GemmParams as *mut c_void,
                    &mut x_map as *mut CUtensorMap as *mut c_void,
                    &mut w_map as *mut CUtensorMap as *mut c_void,
                    &mut partial as *mut CUdeviceptr as *mut c_void,
                    &mut counters as *mut CUdeviceptr as *mut c_void,
                ];
                launch_plan(f, &plan, stream, &mut kp)
            })
        };
        // SAFETY: `work` came from malloc_async on this stream and is freed once.
        let freed = unsafe { cudarc::driver::result::free_async(work, stream) };
        launched?;
        Ok(freed?)
    }

    /// The kernel and launch shape the planner picks for `batch` tokens of `x` type into
    /// `y` type on `w` (dense, aligned activations), e.g. `gemm_t2_f16_f16_s16 grid
    /// 132x1 cluster 2 threads 512 smem 229952`: what a benchmark row ran.
    pub fn gemm_kernel(&self, w: &GpuMatrix, x: DType, y: DType, batch: usize) -> Result<String> {
        let p = self.plan_for(w.rows(), w.cols(), w.levels(), x, y, batch)?;
        Ok(format!(
            "{} grid {}x{} cluster {} threads {} smem {}",
            p.symbol, p.grid.0, p.grid.1, p.cluster, p.threads, p.smem
        ))
    }

    /// The kernel family the planner takes for `batch` tokens of `x` type on a `rows` x
    /// `cols` matrix of `levels`: how often it decodes each weight decides how long it stays
    /// ahead of a dense GEMM on decoded weights (the Python package's dense threshold).
    pub fn kernel_family(
        &self,
        rows: usize,
        cols: usize,
        levels: Levels,
        x: DType,
        batch: usize,
    ) -> Result<KernelFamily> {
        let y = if x == DType::I8 { DType::F16 } else { x };
        let plan = self.plan_for(rows, cols, levels, x, y, batch)?;
        Ok(if let Some(pre) = plan.prepass {
            if pre.tensor_maps {
                KernelFamily::Prefill
            } else {
                KernelFamily::PrefillMma
            }
        } else if plan.cluster > 0 {
            KernelFamily::Split
        } else {
            KernelFamily::Groups
        })
    }

    /// The plan for dense, aligned activations.
    fn plan_for(
        &self,
        rows: usize,
        cols: usize,
        levels: Levels,
        x: DType,
        y: DType,
        batch: usize,
    ) -> Result<GemmPlan> {
        let args = GemmArgs {
            x: 256,
            x_dtype: x,
            ldx: cols.next_multiple_of(16),
            y: 256,
            y_dtype: y,
            ldy: rows,
            batch,
            bias: None,
            x_scale: (x == DType::I8).then_some(256),
            quantize_x: false,
        };
        plan_gemm(rows, cols, levels, 256, None, &args, self)
    }

    fn check_context(&self, w: &GpuMatrix) -> Result<()> {
        if Arc::ptr_eq(w.context(), &self.ctx) {
            Ok(())
        } else {
            Err(Error::Unsupported {
                what: "weights",
                detail: "uploaded through another Gpu (context)".into(),
            })
        }
    }

    /// `y[batch, rows] = (x[batch, cols] . Wtᵀ) * scale + bias` with f16 or bf16 activations.
    pub fn gemm<T: GpuFloat>(
        &self,
        w: &GpuMatrix,
        x: &impl DevicePtr<T>,
        batch: usize,
        bias: Option<&dyn DevicePtr<T>>,
        y: &mut impl DevicePtrMut<T>,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        let (xp, _gx) = x.device_ptr(stream);
        let x = (xp, x.len(), T::DTYPE, None);
        // SAFETY: `x` is the live device buffer it describes, read on `stream`.
        unsafe { self.gemm_checked(w, x, false, batch, bias, y, stream) }
    }

    /// W2A8 for one token in one launch: `x` (f16 or bf16, `[cols]`) is quantized per
    /// token to int8 inside the kernel, exactly as [`Gpu::quantize_i8`] would, then
    /// `y = (q . Wtᵀ) * x_scale * scale + bias` in `x`'s type.
    pub fn gemv_quantized<T: GpuFloat>(
        &self,
        w: &GpuMatrix,
        x: &impl DevicePtr<T>,
        bias: Option<&dyn DevicePtr<T>>,
        y: &mut impl DevicePtrMut<T>,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        let (xp, _gx) = x.device_ptr(stream);
        let x = (xp, x.len(), T::DTYPE, None);
        // SAFETY: `x` is the live device buffer it describes, read on `stream`.
        unsafe { self.gemm_checked(w, x, true, 1, bias, y, stream) }
    }

    /// W2A8: `y = (q . Wtᵀ) * x_scale[b] * scale + bias` with f16/bf16 `y`, or the raw
    /// accumulators `sum_k q[b, k] * w[r, k]` with i32 `y` (no scale; `bias` must be `None`;
    /// for INT2 weights twice the level sum, `sum_k q[b, k] * 2 L[r, k]`, an integer).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_w2a8<O: GpuOut>(
        &self,
        w: &GpuMatrix,
        q: &impl DevicePtr<i8>,
        x_scale: &impl DevicePtr<f32>,
        batch: usize,
        bias: Option<&dyn DevicePtr<O>>,
        y: &mut impl DevicePtrMut<O>,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        check_buf("x_scale", x_scale.len(), batch, &[batch])?;
        let (qp, _gq) = q.device_ptr(stream);
        let (sp, _gs) = x_scale.device_ptr(stream);
        let q = (qp, q.len(), DType::I8, Some(sp));
        // SAFETY: `q` and `x_scale` are the live device buffers they describe, read on `stream`.
        unsafe { self.gemm_checked(w, q, false, batch, bias, y, stream) }
    }

    /// The checked path of `gemm` and `gemm_w2a8`: lengths, context, and the weights
    /// and outputs read and written in `stream`'s order.
    ///
    /// # Safety
    /// `x = (pointer, elements, dtype, x_scale)` must describe live device buffers
    /// that stay alive until the launch completes (their guards are the caller's).
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_checked<O: GpuOut>(
        &self,
        w: &GpuMatrix,
        x: (CUdeviceptr, usize, DType, Option<CUdeviceptr>),
        quantize_x: bool,
        batch: usize,
        bias: Option<&dyn DevicePtr<O>>,
        y: &mut impl DevicePtrMut<O>,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        self.check_context(w)?;
        let (xp, x_len, x_dtype, x_scale) = x;
        check_buf("x", x_len, elems("x", batch, w.cols())?, &[batch, w.cols()])?;
        check_buf(
            "y",
            y.len(),
            elems("y", batch, w.rows())?,
            &[batch, w.rows()],
        )?;
        if let Some(b) = bias {
            check_buf("bias", b.len(), w.rows(), &[w.rows()])?;
        }
        let weights = w.device_ptrs(stream);
        let bias_ptr = bias.map(|b| b.device_ptr(stream));
        let (yp, _gy) = y.device_ptr_mut(stream);
        let args = GemmArgs {
            x: xp,
            x_dtype,
            ldx: w.cols(),
            y: yp,
            y_dtype: O::DTYPE,
            ldy: w.rows(),
            batch,
            bias: bias_ptr.as_ref().map(|(p, _)| *p),
            x_scale,
            quantize_x,
        };
        // SAFETY: lengths and context checked above; every buffer is read or written in
        // `stream`'s order and its guard outlives the launch.
        unsafe { self.launch_gemm(w, weights.tiles, weights.scale, &args, stream.cu_stream()) }
    }

    /// Per-token int8 quantization on the device (same bytes as
    /// [`quantize_activations_i8`](crate::quant::quantize_activations_i8)).
    pub fn quantize_i8<T: GpuFloat>(
        &self,
        x: &impl DevicePtr<T>,
        batch: usize,
        n: usize,
        q: &mut impl DevicePtrMut<i8>,
        scale: &mut impl DevicePtrMut<f32>,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        let len = elems("x", batch, n)?;
        check_buf("x", x.len(), len, &[batch, n])?;
        check_buf("q", q.len(), len, &[batch, n])?;
        check_buf("scale", scale.len(), batch, &[batch])?;
        let (xp, _gx) = x.device_ptr(stream);
        let (qp, _gq) = q.device_ptr_mut(stream);
        let (sp, _gs) = scale.device_ptr_mut(stream);
        // SAFETY: lengths checked above; the buffers are used in `stream`'s order and
        // their guards outlive the launch.
        unsafe { self.quantize_i8_raw(xp, T::DTYPE, batch, n, n, qp, sp, stream.cu_stream()) }
    }

    /// Per-token int8 quantization on raw device pointers: `x` is `[batch, ldx]` f16 or
    /// bf16, `q` is `[batch, n]` int8, `scale` `[batch]` f32.
    ///
    /// # Safety
    /// The buffers must hold those sizes on this GPU and stay alive until the launch
    /// completes; `stream` must belong to this GPU's context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn quantize_i8_raw(
        &self,
        x: CUdeviceptr,
        x_dtype: DType,
        batch: usize,
        n: usize,
        ldx: usize,
        q: CUdeviceptr,
        scale: CUdeviceptr,
        stream: CUstream,
    ) -> Result<()> {
        if batch == 0 || n == 0 {
            return Err(Error::Empty { arg: "x" });
        }
        // The kernel indexes a row with 32-bit integers that step by its block size.
        check_max_dim(&[("batch", batch), ("n", n), ("ldx", ldx)])?;
        if ldx < n {
            return Err(Error::ShapeMismatch {
                arg: "ldx",
                expected: format!(">= {n}"),
                got: ldx.to_string(),
            });
        }
        kernel_dtype(x_dtype, &[DType::F16, DType::BF16], "x")?;
        check_ptr("x", x, 2)?;
        check_ptr("q", q, 1)?;
        check_ptr("scale", scale, 4)?;
        let f = self.function(&format!("quantize_i8_{}", x_dtype.name()))?;
        let (mut xp, mut qp, mut sp) = (x, q, scale);
        let (mut n32, mut ldx32, mut ldq) = (n as u32, ldx as u32, n as u32);
        // 16-byte loads and 8-byte stores need 8-element rows and aligned bases.
        let mut vec = u32::from(n % 8 == 0 && ldx % 8 == 0 && x % 16 == 0 && q % 8 == 0);
        let mut kp = kernel_params!(xp, qp, sp, n32, ldx32, ldq, vec);
        // SAFETY: parameters match quantize_i8_* in quant.cu; the caller guarantees the buffers.
        unsafe { launch(f, (batch as u32, 1, 1), QUANT_THREADS, 0, stream, &mut kp) }
    }

    /// The W2A8 epilogue on int32 sums computed elsewhere (a dense int8 GEMM over
    /// [`i2_to_dense_raw`](Gpu::i2_to_dense_raw) weights): `acc` `[batch, rows]` ->
    /// `y[b, r] = acc * (0.5 for INT2) * x_scale[b] * w_scale + bias[r]` in f16 or bf16,
    /// the GEMM kernels' arithmetic. `w_scale` is `[1]` or `[rows]` (`true`); `bias` is
    /// in the output type.
    ///
    /// # Safety
    /// `acc` must hold `batch * rows` i32, `y` as many outputs, `x_scale` `batch` floats,
    /// `w_scale` and `bias` their sizes, all on this GPU and alive until the launch
    /// completes; `y` must not overlap the inputs; `stream` must belong to this GPU's context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn w2a8_epilogue_raw(
        &self,
        acc: CUdeviceptr,
        x_scale: CUdeviceptr,
        w_scale: Option<(CUdeviceptr, bool)>,
        bias: Option<CUdeviceptr>,
        y: CUdeviceptr,
        y_dtype: DType,
        rows: usize,
        batch: usize,
        levels: Levels,
        stream: CUstream,
    ) -> Result<()> {
        if rows == 0 || batch == 0 {
            return Err(Error::Empty { arg: "acc" });
        }
        check_max_dim(&[("rows", rows), ("batch", batch)])?;
        let mut out = kernel_dtype(y_dtype, &[DType::F16, DType::BF16], "y")?;
        check_ptr("acc", acc, 4)?;
        check_ptr("x_scale", x_scale, 4)?;
        check_ptr("y", y, 2)?;
        if let Some((s, _)) = w_scale {
            check_ptr("w_scale", s, 4)?;
        }
        if let Some(b) = bias {
            check_ptr("bias", b, 2)?;
        }
        let blocks = blocks_of_256(elems("y", rows, batch)?)?;
        let f = self.function("w2a8_epilogue")?;
        let (mut accp, mut xs, mut yp) = (acc, x_scale, y);
        let (mut ws, mut per_row) = w_scale.map_or((0, 0), |(p, per_row)| (p, u32::from(per_row)));
        let mut bp = bias.unwrap_or(0);
        let (mut r, mut b) = (rows as u32, batch as u32);
        let mut int2 = u32::from(levels == Levels::Int2);
        let mut kp = kernel_params!(accp, xs, ws, per_row, bp, yp, r, b, int2, out);
        // SAFETY: parameters match w2a8_epilogue in quant.cu; the caller guarantees the buffers.
        unsafe { launch(f, (blocks, 1, 1), 256, 0, stream, &mut kp) }
    }
}

fn check_buf(arg: &'static str, len: usize, need: usize, dims: &[usize]) -> Result<()> {
    if len == need {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            arg,
            expected: shape(dims),
            got: format!("{len} elements"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 132 SMs with two resident CTAs each, 200 KB of dynamic shared memory per CTA (unless
    /// `max_dynamic` says otherwise);
    /// with `clusters`, an sm_90 that fits one cluster CTA per SM (16 clusters of 8),
    /// taking the split kernels as `split` says.
    struct FakeGpu {
        clusters: bool,
        split: SplitKernels,
        wgmma: bool,
        prefill: bool,
        max_dynamic: usize,
    }
    impl Occupancy for FakeGpu {
        fn resident(&self, _: &str, _: usize) -> Result<usize> {
            Ok(264)
        }
        fn max_dynamic(&self, _: &str) -> Result<usize> {
            Ok(self.max_dynamic)
        }
        fn sm_count(&self) -> usize {
            132
        }
        fn clusters(&self, _: &str, _: usize, size: usize) -> Result<usize> {
            Ok(if self.clusters { 132 / size } else { 0 })
        }
        fn split_kernels(&self) -> SplitKernels {
            self.split
        }
        fn wgmma(&self) -> bool {
            self.wgmma
        }
        fn prefill(&self) -> bool {
            self.prefill
        }
    }
    /// A GPU with thread-block clusters.
    const fn sm90(split: SplitKernels, wgmma: bool) -> FakeGpu {
        FakeGpu {
            clusters: true,
            split,
            wgmma,
            prefill: false,
            max_dynamic: 200 << 10,
        }
    }
    const GPU: &FakeGpu = &FakeGpu {
        clusters: false,
        split: SplitKernels::Auto,
        wgmma: false,
        prefill: false,
        max_dynamic: 200 << 10,
    };
    const SM90: &FakeGpu = &sm90(SplitKernels::Always, false);
    const SM90_AUTO: &FakeGpu = &sm90(SplitKernels::Auto, false);
    const SM90A: &FakeGpu = &sm90(SplitKernels::Always, true);
    const SM90A_AUTO: &FakeGpu = &sm90(SplitKernels::Auto, true);
    /// An H100's shared memory, which the prefill kernel needs.
    const SM90A_PREFILL: &FakeGpu = &FakeGpu {
        prefill: true,
        max_dynamic: 227 << 10,
        ..sm90(SplitKernels::Auto, true)
    };

    fn args(x_dtype: DType, y_dtype: DType, batch: usize) -> GemmArgs {
        GemmArgs {
            x: 0x1000,
            x_dtype,
            ldx: 300,
            y: 0x2000,
            y_dtype,
            ldy: 100,
            batch,
            bias: None,
            x_scale: (x_dtype == DType::I8).then_some(0x3000),
            quantize_x: false,
        }
    }

    #[test]
    fn picks_the_smallest_token_group_and_the_grid() {
        // A 100 x 300 ternary matrix without scale.
        let plan = |a: GemmArgs| plan_gemm(100, 300, Levels::Ternary, 0x10, None, &a, GPU).unwrap();
        let p = plan_gemm(
            100,
            300,
            Levels::Ternary,
            0x10,
            Some((0x20, true)),
            &args(DType::F16, DType::F16, 1),
            GPU,
        )
        .unwrap();
        assert_eq!(p.symbol, "gemm_t2_f16_f16_n1");
        assert_eq!(p.grid, (7, 1, 1)); // ceil(100 / 16) row tiles, fewer than the resident CTAs
        assert_eq!((p.params.k_tiles, p.params.scale_per_row), (3, 1));
        assert_eq!(p.params.x_vec, 0); // 300 * 2 bytes is not a multiple of 16
        let tall = GemmArgs {
            ldy: 10_000,
            ..args(DType::F16, DType::F16, 1)
        };
        let p = plan_gemm(10_000, 300, Levels::Ternary, 0x10, None, &tall, GPU).unwrap();
        // Persistent: 625 row tiles over the 264 resident CTAs.
        assert_eq!(p.grid, (264, 1, 1));
        let p = plan(args(DType::I8, DType::I32, 70));
        assert_eq!((p.symbol.as_str(), p.grid.1), ("gemm_t2_i8_i32_n32_r2", 3));
        // f16/bf16 stop at 16 tokens per CTA.
        let p = plan(args(DType::F16, DType::F16, 40));
        assert_eq!((p.symbol.as_str(), p.grid.1), ("gemm_t2_f16_f16_n16_r4", 3));
        let p = plan(args(DType::BF16, DType::BF16, 9));
        assert_eq!(p.symbol, "gemm_t2_bf16_bf16_n16_r4");
        let p = plan(args(DType::F16, DType::F16, 2));
        assert_eq!(p.symbol, "gemm_t2_f16_f16_n8_r2");
        // One bf16 token: staged as f16 from 512 weight tiles per SM (132 SMs) on.
        for (row_tiles, symbol) in [
            (1, "gemm_t2_bf16_bf16_n1"),
            (1055, "gemm_t2_bf16_bf16_n1"),
            (1056, "gemm_t2_bf16h_bf16_n1"),
        ] {
            let (rows, cols) = (16 * row_tiles, 64 * 128);
            let a = GemmArgs {
                ldx: cols,
                ldy: rows,
                ..args(DType::BF16, DType::BF16, 1)
            };
            let p = plan_gemm(rows, cols, Levels::Ternary, 0x10, None, &a, GPU).unwrap();
            assert_eq!(p.symbol, symbol, "{row_tiles} row tiles");
        }
        let p = plan(args(DType::I8, DType::BF16, 1));
        let staged_row = 3 * 128;
        assert_eq!(
            (p.symbol.as_str(), p.smem as usize),
            ("gemm_t2_i8_bf16_n1", gemm_fixed_smem(1, 1) + staged_row)
        );
        // A row longer than the shared memory the single-token kernel may take (200 KB).
        let wide = GemmArgs {
            ldx: 1 << 17,
            ..args(DType::F16, DType::F16, 1)
        };
        let p = plan_gemm(100, 1 << 17, Levels::Ternary, 0x10, None, &wide, GPU).unwrap();
        assert_eq!(
            (p.symbol.as_str(), p.smem as usize),
            ("gemm_t2_f16_f16_n8_r2", gemm_fixed_smem(8, 2))
        );
        // Token-group kernels take several row tiles per CTA: the most whose blocks fill
        // the 264 resident CTAs. 625 row tiles: 79 blocks of 8 would not, 157 of 4 are the
        // fewest on offer.
        let tall = |rows: usize, batch: usize| {
            let a = GemmArgs {
                ldy: rows,
                ..args(DType::F16, DType::F16, batch)
            };
            let p = plan_gemm(rows, 300, Levels::Ternary, 0x10, None, &a, GPU).unwrap();
            (p.symbol, p.grid)
        };
        let r4 = "gemm_t2_f16_f16_n16_r4".to_string();
        let r8 = "gemm_t2_f16_f16_n16_r8".to_string();
        assert_eq!(tall(10_000, 16), (r4, (157, 1, 1)));
        // 4 token groups x 79 blocks of 8 fill them; so do 2500 blocks of 8 for one group.
        assert_eq!(tall(10_000, 64), (r8.clone(), (66, 4, 1)));
        assert_eq!(tall(320_000, 16), (r8, (264, 1, 1)));
    }

    #[test]
    fn split_kernels_take_nine_tokens_and_more_on_sm90() {
        let plan = |rows: usize, cols: usize, x: DType, y: DType, batch: usize, gpu: &FakeGpu| {
            let a = GemmArgs {
                ldx: cols,
                ldy: rows,
                ..args(x, y, batch)
            };
            plan_gemm(rows, cols, Levels::Ternary, 0x10, None, &a, gpu).unwrap()
        };
        // 28672 x 8192, 16 tokens: 16 warps per CTA, 56 blocks of 16 row pairs, 64 k tiles.
        // Two slices of 32 would stage 16 x 32 x 256 bytes, more than fits next to the
        // rings and partial sums; 4 slices of 16: 33 clusters, 2 rounds, cost 2 x (16 + 1)
        // (8 slices: 16 clusters, 4 x (8 + 1)).
        let p = plan(28_672, 8192, DType::F16, DType::F16, 16, SM90);
        assert_eq!(p.symbol, "gemm_t2_f16_f16_s16");
        assert_eq!((p.grid, p.cluster, p.threads), ((132, 1, 1), 4, 512));
        assert_eq!(
            p.smem as usize,
            split_fixed_smem(16, false) + 16 * (16 * 256 + 32)
        );
        // 8192 x 8192, 64 tokens: no slice of 64 f16 tokens fits 200 KB; 2 groups of 32
        // in 8 slices (8 clusters each, 2 rounds).
        let p = plan(8192, 8192, DType::F16, DType::F16, 64, SM90);
        assert_eq!(p.symbol, "gemm_t2_f16_f16_s32");
        assert_eq!((p.grid, p.cluster), ((64, 2, 1), 8));
        // int8 rows are half as wide: 64 tokens fit.
        let p = plan(8192, 8192, DType::I8, DType::BF16, 64, SM90);
        assert_eq!((p.symbol.as_str(), p.grid.1), ("gemm_t2_i8_bf16_s64", 1));
        // 9 and 33 tokens: the smallest CTA that holds them.
        assert_eq!(
            plan(300, 300, DType::BF16, DType::BF16, 9, SM90).symbol,
            "gemm_t2_bf16_bf16_s16"
        );
        assert_eq!(
            plan(300, 300, DType::I8, DType::I32, 33, SM90).symbol,
            "gemm_t2_i8_i32_s64"
        );
        // 8 tokens, and any batch before sm_90: the token-group kernels.
        assert_eq!(
            plan(300, 300, DType::F16, DType::F16, 8, SM90).symbol,
            "gemm_t2_f16_f16_n8_r2"
        );
        let p = plan(28_672, 8192, DType::F16, DType::F16, 16, GPU);
        assert_eq!(
            (p.symbol.as_str(), p.cluster),
            ("gemm_t2_f16_f16_n16_r4", 0)
        );
        // Rows too long for any slice of 8: the token-group kernel.
        let p = plan(100, 1 << 20, DType::F16, DType::F16, 16, SM90);
        assert_eq!(p.symbol, "gemm_t2_f16_f16_n16_r4");
        // Auto: 28672 x 8192 with 16 int8 tokens, 2 slices of 32 k tiles, fills
        // 896 x 64 / ((32 + 1) x 66 clusters x 2 x 16 warps) = 0.82 of the warp time;
        // 300 x 300 a sliver.
        let p = plan(28_672, 8192, DType::I8, DType::F16, 16, SM90_AUTO);
        assert_eq!(p.symbol, "gemm_t2_i8_f16_s16");
        let p = plan(300, 300, DType::I8, DType::F16, 16, SM90_AUTO);
        assert_eq!(p.symbol, "gemm_t2_i8_f16_n16_r2");
        // 17 bf16 tokens: a CTA of 32 in 8 slices of 8 k tiles, 16 clusters, 4 rounds:
        // 896 x 64 / (4 x (8 + 1) x 16 x 8 x 16 warps) = 0.78 of the warp time.
        let p = plan(28_672, 8192, DType::BF16, DType::BF16, 17, SM90_AUTO);
        assert_eq!((p.symbol.as_str(), p.cluster), ("gemm_t2_bf16_bf16_s32", 8));
        let p = plan(28_672, 8192, DType::I8, DType::BF16, 64, SM90_AUTO);
        assert_eq!((p.symbol.as_str(), p.grid.1), ("gemm_t2_i8_bf16_s64", 1));
        // 32 int8 tokens of 28672 columns: no slice of 32 fits. Always splits them into
        // two 16-token groups; Auto would read the weights twice, and keeps one group of 32.
        let p = plan(8192, 28_672, DType::I8, DType::F16, 32, SM90);
        assert_eq!((p.symbol.as_str(), p.grid.1), ("gemm_t2_i8_f16_s16", 2));
        let p = plan(8192, 28_672, DType::I8, DType::F16, 32, SM90_AUTO);
        assert_eq!((p.symbol.as_str(), p.grid.1), ("gemm_t2_i8_f16_n32_r2", 1));
        // With wgmma: the `_w` kernels, activations staged by k tile (16 bytes of padding
        // per tile, not per token); the same 4 slices of 16 k tiles as above.
        let p = plan(28_672, 8192, DType::F16, DType::F16, 16, SM90A);
        assert_eq!((p.symbol.as_str(), p.cluster), ("gemm_t2_f16_f16_w16", 4));
        assert_eq!(
            p.smem as usize,
            split_fixed_smem(16, true) + 16 * (16 * 256 + 16)
        );
        // 64 tokens with wgmma: 16 warps of one row tile each, 8 slices of 8 k tiles.
        let p = plan(28_672, 8192, DType::I8, DType::F16, 64, SM90A);
        assert_eq!(
            (p.symbol.as_str(), p.threads, p.cluster),
            ("gemm_t2_i8_f16_w64", 512, 8)
        );
        assert_eq!(
            p.smem as usize,
            split_fixed_smem(64, true) + 8 * (64 * 128 + 16)
        );
        // Auto with wgmma: 64 int8 tokens on 28672 x 8192 fill 896 x 64 / (7 x (8 + 1) x 16
        // clusters x 8 x 8 pair warps) = 0.89 of the warp time; 4096 x 4096 at 16 f16
        // tokens 0.40.
        let p = plan(28_672, 8192, DType::I8, DType::F16, 64, SM90A_AUTO);
        assert_eq!(p.symbol, "gemm_t2_i8_f16_w64");
        let p = plan(4096, 4096, DType::F16, DType::F16, 16, SM90A_AUTO);
        assert_eq!(p.symbol, "gemm_t2_f16_f16_n16_r4");
    }

    #[test]
    fn quantize_x_takes_the_single_token_int8_kernel() {
        let a = GemmArgs {
            quantize_x: true,
            ..args(DType::BF16, DType::BF16, 1)
        };
        let p = plan_gemm(100, 300, Levels::Int2, 0x10, None, &a, GPU).unwrap();
        // The staged row is int8: 3 k tiles of 128 bytes.
        assert_eq!(
            (p.symbol.as_str(), p.smem as usize),
            ("gemm_int2_bf16q_bf16_n1", gemm_fixed_smem(1, 1) + 3 * 128)
        );
        for bad in [
            GemmArgs { batch: 2, ..a },
            GemmArgs {
                x_dtype: DType::I8,
                y_dtype: DType::F16,
                x_scale: Some(0x3000),
                ..a
            },
        ] {
            assert!(matches!(
                plan_gemm(100, 300, Levels::Int2, 0x10, None, &bad, GPU),
                Err(Error::Unsupported { .. })
            ));
        }
    }

    #[test]
    fn prefill_kernel_from_65_tokens() {
        // 17000 x 300: 67 blocks of 256 rows, 3 k tiles; 200 tokens are two token blocks,
        // so 134 tiles, half the fake GPU's 264 resident CTAs.
        const ROWS: usize = 17_000;
        let args = |x: DType, y: DType, batch: usize| GemmArgs {
            ldy: ROWS,
            x_scale: (x == DType::I8).then_some(0x3000),
            ..args(x, y, batch)
        };
        for (x, y, pre, bytes) in [
            (DType::F16, DType::F16, "prefill_x_16", 200 * 3 * 256),
            (
                DType::I8,
                DType::BF16,
                "prefill_x_i8",
                200 * 3 * 128 + 200 * 4,
            ),
        ] {
            let a = args(x, y, 200);
            let p = plan_gemm(ROWS, 300, Levels::Int2, 0x10, None, &a, SM90A_PREFILL).unwrap();
            assert_eq!(
                p.symbol,
                format!("gemm_int2_{}_{}_p128", x.name(), y.name())
            );
            assert_eq!((p.grid, p.threads, p.cluster), ((134, 1, 1), 256, 0));
            assert_eq!((p.smem as usize, p.params.x), (prefill_smem(x), 0));
            let prepass = p.prepass.unwrap();
            assert_eq!((prepass.symbol, prepass.bytes), (pre, bytes));
            assert!(prepass.tensor_maps);
            assert_eq!(prepass.split_tiles, None);
            // ldx 300 is a multiple of 4 and 2; so is cols.
            assert_eq!(prepass.vec, 1);
        }
        let odd = GemmArgs {
            x: 0x1002,
            ..args(DType::F16, DType::F16, 200)
        };
        let p = plan_gemm(ROWS, 300, Levels::Ternary, 0x10, None, &odd, SM90A_PREFILL).unwrap();
        assert_eq!(p.prepass.unwrap().vec, 0);
        // 64 tokens stay with the split kernels; so does one token block in tiles that fill
        // less than half the GPU (two take the prefill kernel), and everything without it.
        let p = plan_gemm(
            16_000,
            300,
            Levels::Ternary,
            0x10,
            None,
            &args(DType::F16, DType::F16, 200),
            SM90A_PREFILL,
        );
        assert!(p.unwrap().prepass.is_some());
        for (rows, batch, gpu) in [
            (ROWS, 64, SM90A_PREFILL),
            (16_000, 128, SM90A_PREFILL),
            (ROWS, 200, SM90A_AUTO),
        ] {
            let a = args(DType::F16, DType::F16, batch);
            let p = plan_gemm(rows, 300, Levels::Ternary, 0x10, None, &a, gpu).unwrap();
            assert!(p.prepass.is_none(), "{rows} {batch}");
        }
    }

    #[test]
    fn prefill_splits_k_where_its_tiles_leave_the_gpu_idle() {
        // 8192 x 28672 (32 row blocks, 224 k tiles) on the fake's 264 resident CTAs: 256
        // tokens are 64 tiles, split over 4 CTAs each (one wave of 56 + 6 steps; 2 take 112 +
        // 6, 8 two waves of 28 + 6); 2048 tokens (512 tiles) keep whole K.
        for (batch, grid, split) in [(256, 256, true), (2048, 512, false)] {
            let a = GemmArgs {
                ldx: 28672,
                ldy: 8192,
                ..args(DType::F16, DType::F16, batch)
            };
            let p = plan_gemm(8192, 28672, Levels::Ternary, 0x10, None, &a, SM90A_PREFILL);
            let p = p.unwrap();
            let suffix = if split { "k" } else { "" };
            assert_eq!(p.symbol, format!("gemm_t2_f16_f16_p128{suffix}"));
            assert_eq!((p.grid.0, p.cluster), (grid, 0), "{batch}");
            let pre = p.prepass.unwrap();
            let tiles = split.then_some(64);
            assert_eq!(pre.split_tiles, tiles);
            // The workspace: activations, then 128 KB of partial sums per CTA and a counter
            // per tile, each 256-byte aligned.
            let x = batch * 224 * 128 * 2;
            let (partial, counters, bytes) = pre.layout(grid as usize);
            assert_eq!(partial, x);
            if split {
                assert_eq!(
                    (counters, bytes),
                    (
                        x + 256 * PREFILL_PARTIAL,
                        x + 256 * PREFILL_PARTIAL + 64 * 4
                    )
                );
            } else {
                assert_eq!(bytes, x);
            }
        }
    }

    #[test]
    fn one_token_block_splits_k_only_where_the_split_kernels_do_not_run() {
        // 128 tokens on 8192 x 8192: 32 tiles, an eighth of the fake's CTAs. Split over 8
        // CTAs each (8 k tiles + 6 steps) they fill it; the prefill kernel then runs where the
        // split kernels do not take the batch (here: without clusters), else they do.
        let a = GemmArgs {
            ldx: 8192,
            ldy: 8192,
            ..args(DType::F16, DType::F16, 128)
        };
        let plan = |gpu: &FakeGpu| {
            let p = plan_gemm(8192, 8192, Levels::Ternary, 0x10, None, &a, gpu).unwrap();
            (p.symbol, p.grid.0)
        };
        let no_clusters = FakeGpu {
            clusters: false,
            ..*SM90A_PREFILL
        };
        assert_eq!(
            plan(&no_clusters),
            ("gemm_t2_f16_f16_p128k".to_string(), 256)
        );
        let (symbol, _) = plan(&FakeGpu {
            split: SplitKernels::Always,
            ..*SM90A_PREFILL
        });
        assert_eq!(symbol, "gemm_t2_f16_f16_w64");
    }

    #[test]
    fn mma_prefill_kernel_without_wgmma() {
        // 17000 x 300 at 200 tokens, as above, on GPUs without wgmma: the `_m128` kernel,
        // read through `x`, with as many stages as fit (none below two).
        let gpu = |max_dynamic: usize| FakeGpu {
            prefill: true,
            max_dynamic,
            ..*GPU
        };
        for (x, y, max_dynamic, stages) in [
            (DType::F16, DType::F16, 163 << 10, Some(4)),
            (DType::I8, DType::I32, 163 << 10, Some(6)),
            (DType::BF16, DType::BF16, 99 << 10, Some(2)),
            (DType::I8, DType::F16, 99 << 10, Some(4)),
            (DType::F16, DType::F16, 60 << 10, None),
            (DType::I8, DType::F16, 60 << 10, Some(2)),
        ] {
            let a = GemmArgs {
                ldy: 17_000,
                x_scale: (x == DType::I8).then_some(0x3000),
                ..args(x, y, 200)
            };
            let p = plan_gemm(
                17_000,
                300,
                Levels::Ternary,
                0x10,
                None,
                &a,
                &gpu(max_dynamic),
            );
            let p = p.unwrap();
            match stages {
                Some(stages) => {
                    assert_eq!(p.symbol, format!("gemm_t2_{}_{}_m128", x.name(), y.name()));
                    assert_eq!((p.grid, p.threads, p.cluster), ((134, 1, 1), 256, 0));
                    let stage = 128 * 128 * x.size() + 16 * 512;
                    assert_eq!(p.smem as usize, stages * stage);
                    assert!(!p.prepass.unwrap().tensor_maps);
                }
                None => assert!(p.prepass.is_none()),
            }
        }
    }

    #[test]
    fn rejects_bad_arguments() {
        let bad =
            |a: GemmArgs| plan_gemm(100, 300, Levels::Ternary, 0x10, None, &a, GPU).unwrap_err();
        assert!(matches!(
            bad(args(DType::F16, DType::BF16, 1)),
            Error::Unsupported { .. }
        ));
        assert!(matches!(
            bad(args(DType::F16, DType::F16, 0)),
            Error::Empty { .. }
        ));
        assert!(matches!(
            bad(GemmArgs {
                ldx: 299,
                ..args(DType::F16, DType::F16, 1)
            }),
            Error::ShapeMismatch { arg: "ldx", .. }
        ));
        assert!(matches!(
            bad(GemmArgs {
                y: 0x2001,
                ..args(DType::F16, DType::F16, 1)
            }),
            Error::Misaligned { arg: "y", .. }
        ));
        assert!(matches!(
            bad(GemmArgs {
                x: 0,
                ..args(DType::F16, DType::F16, 1)
            }),
            Error::Misaligned { arg: "x", .. }
        ));
        assert!(matches!(
            bad(GemmArgs {
                x_scale: None,
                ..args(DType::I8, DType::F16, 1)
            }),
            Error::Unsupported { .. }
        ));
        assert!(matches!(
            bad(GemmArgs {
                bias: Some(0x4000),
                ..args(DType::I8, DType::I32, 1)
            }),
            Error::Unsupported { .. }
        ));
        assert!(matches!(
            bad(args(DType::F16, DType::F16, 65_535 * 32 + 1)),
            Error::TooLarge { arg: "batch", .. }
        ));
    }
}
