//! The planner: for a GEMM's shape, batch, types and GPU it picks the kernel, its CTA
//! shape and grid, and (for large batches) the pre-pass, and checks every argument first.
//! It needs no GPU: [`Occupancy`] is all it asks of one, so the tests run on fakes
//! (`tests.rs`). The rules and the measurements behind them: docs/NOTES.md, "The current rules".

mod constants;
mod instances;
mod prefill;
mod route;
mod split;
#[cfg(test)]
mod tests;

use cudarc::driver::sys::CUdeviceptr;

use super::launch::check_ptr;
use super::Gpu;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::tiled::{self, TILE_COLS, TILE_ROWS, TILE_WORDS};
use crate::format::Levels;

pub(crate) use constants::{header as constants_header, layout_checks};
pub(crate) use instances::gemm_instances;
use prefill::{plan_prefill, Prefill, PREFILL_MIN_BATCH};
pub(crate) use prefill::{Prepass, PREFILL_ROWS, PREFILL_TOKENS, PREPASS_THREADS};
#[cfg(test)]
pub(crate) use prefill::{PREPASS_16, PREPASS_I8};
pub use route::Route;
pub(crate) use route::{may_be_dense, route};
pub(crate) use split::SPLIT_TOKENS;
use split::{plan_split, SPLIT_MIN_BATCH};

/// Threads per GEMM CTA (8 warps; `WARPS` in gemm.cuh).
pub(crate) const GEMM_THREADS: u32 = 256;
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
pub(super) const MAX_GRID_Y: usize = 65_535;

/// Bytes of a T2 weight tile (`TILE_WEIGHT_BYTES` in common.cuh), what a warp's ring stage holds.
pub(crate) const TILE_BYTES: usize = TILE_WORDS * 4;

/// Warps per GEMM CTA.
const GEMM_WARPS: usize = GEMM_THREADS as usize / 32;
/// Weight ring stages per warp of the single-token GEMM kernels, and of the others
/// (`DEPTH_OF` in gemm.cuh).
const GEMM_DEPTH_SINGLE: usize = 8;
const GEMM_DEPTH: usize = 4;

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
/// `GemmSmem` and `DEPTH_OF` in gemm.cuh (the kernel traps if given less; constants.rs checks
/// the two agree).
fn gemm_fixed_smem(tokens: usize, row_tiles: usize) -> usize {
    let depth = if tokens == 1 {
        GEMM_DEPTH_SINGLE
    } else {
        GEMM_DEPTH
    };
    let cols = tokens.max(8);
    let ring = GEMM_WARPS * depth * row_tiles * TILE_BYTES;
    let partial_sums = GEMM_WARPS * TILE_ROWS * row_tiles * cols * 4;
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
/// W2A8 into f16 (bf16): one launch instead of two, where the int8 row fits the kernel's
/// shared memory ([`Gpu::route_quantized`] says [`Route::OneLaunch`]); a longer row is
/// quantized by `quantize_i8` first ([`Gpu::gemm_tiles_raw`] does both).
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
    /// Quantize the f16/bf16 activations to int8 for a W2A8 product (batch 1 only): in the
    /// kernel where the row fits, else first.
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
    let staged = if a.quantize_x { I8 } else { a.x_dtype };
    let row_bytes = staged_row_bytes(cols, staged);
    let mut tokens = tokens_per_cta(a.x_dtype, a.batch);
    let staging = if a.quantize_x {
        Staging::Quantized
    } else {
        Staging::AsIs
    };
    if a.quantize_x && !quantizes_in_kernel(cols, levels, a.x_dtype, gpu)? {
        // Gpu::gemm_tiles_raw quantizes such rows first; the plan itself cannot.
        return Err(Error::TooLarge {
            arg: "cols",
            value: cols as u64,
            limit: one_launch_max_cols(levels, a.x_dtype, gpu)? as u64,
        });
    }
    // A row too long for the single-token kernel's shared memory takes the 8-token kernel.
    let single = gemm_symbol(levels, a.x_dtype, staging, a.y_dtype, Cta::Single);
    if tokens == 1 && row_bytes > row_room(&single, gpu)? {
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

/// Bytes of a single-token kernel's staged activation row: whole k tiles of `x`.
fn staged_row_bytes(cols: usize, x: DType) -> usize {
    cols.next_multiple_of(TILE_COLS) * x.size()
}

/// Shared memory the single-token kernel `symbol` has left for its staged activation row on
/// this GPU (its most dynamic shared memory less the fixed part).
fn row_room(symbol: &str, gpu: &impl Occupancy) -> Result<usize> {
    Ok(gpu
        .max_dynamic(symbol)?
        .saturating_sub(gemm_fixed_smem(1, 1)))
}

/// The most columns of one f16 / bf16 (`x`) token that the single-token kernel quantizes
/// itself (W2A8 in one launch, [`GemmArgs::quantize_x`]): its int8 row, a byte per column in
/// whole k tiles, must fit the kernel's shared memory on this GPU (about 64K columns on sm_86
/// and sm_89, 130K on the A100, 195K on the H100).
pub(crate) fn one_launch_max_cols(levels: Levels, x: DType, gpu: &impl Occupancy) -> Result<usize> {
    let symbol = gemm_symbol(levels, x, Staging::Quantized, x, Cta::Single);
    Ok(row_room(&symbol, gpu)? / TILE_COLS * TILE_COLS)
}

/// Whether one f16 / bf16 token of W2A8 over `cols` columns is quantized inside the
/// single-token kernel (one launch) rather than by quantize_i8 before the int8 kernels (two):
/// the one decision that [`Gpu::route_quantized`], [`Gpu::gemm_tiles_raw`] (and so
/// [`Gpu::gemv_quantized`] and the Python package) and the planner share (docs/NOTES.md, v36).
pub(crate) fn quantizes_in_kernel(
    cols: usize,
    levels: Levels,
    x: DType,
    gpu: &impl Occupancy,
) -> Result<bool> {
    Ok(cols <= one_launch_max_cols(levels, x, gpu)?)
}

fn missing(arg: &'static str, why: &str) -> Error {
    Error::Unsupported {
        what: "argument",
        detail: format!("`{arg}`: {why}"),
    }
}
