//! The prefill kernels' plans (from 65 tokens): 256 rows x 128 tokens per CTA over the
//! whole K, or K split over several CTAs per tile, after a pre-pass over the activations.

use super::{gemm_symbol, Cta, GemmArgs, GemmParams, GemmPlan, Occupancy, Staging, TILE_BYTES};
use crate::cuda::launch::elems;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::tiled::{TILE_COLS, TILE_ROWS};
use crate::format::Levels;

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

/// Batches from which the prefill kernel takes over where the GPU has it: beyond the
/// split kernels' 64 tokens per CTA, which would read and decode the weights once per
/// 64 tokens.
pub(super) const PREFILL_MIN_BATCH: usize = 65;
/// The share of the GPU's resident CTAs the prefill kernel's tiles must fill for one
/// block of 128 tokens, else the split / token-group kernels run (or, in Python, the dense
/// path), or, where its split K fills that share and the split kernels do not take the
/// batch, the split prefill kernel. On the H100 (132 SMs, one prefill CTA each; docs/NOTES.md, v28) at 128 tokens:
/// 112 tiles (28672 x 8192) ran in 0.63 (f16) / 0.67 (int8) of the time of the kernels
/// without it, 56 tiles (14336 x 4096) in 1.12 / 1.22, 32 tiles (8192 x 28672) in 1.20 /
/// 0.76. At 256 tokens, where those kernels decode the weights four times, 64 tiles
/// (8192 x 28672) ran in 0.63 / 0.39 and 112 (14336 x 4096) in 0.65 / 0.75.
pub(super) const PREFILL_MIN_FILL: f64 = 0.5;
/// Tokens and rows per CTA of the prefill kernels (`PF_TOKENS`, 16 `PF_ROW_TILES` in
/// gemm_prefill.cuh), and their threads.
pub(crate) const PREFILL_TOKENS: usize = 128;
pub(crate) const PREFILL_ROWS: usize = 256;
pub(super) const PREFILL_THREADS: u32 = 256;
/// Threads per CTA of the pre-pass (`prefill_x_*` in quant.cu), and its kernels for
/// 16-bit and int8 activations.
pub(crate) const PREPASS_THREADS: u32 = 256;
pub(crate) const PREPASS_16: &str = "prefill_x_16";
pub(crate) const PREPASS_I8: &str = "prefill_x_i8";

/// Pipeline stages of the wgmma prefill kernel for int8 and 16-bit activations
/// (`PrefillX::STAGES`), and the most of the mma.sync one (`PrefillMma::MAX_STAGES`:
/// `cp.async.wait_group` takes an immediate, so the kernel spells out each wait).
pub(super) const PREFILL_STAGES_I8: usize = 8;
pub(super) const PREFILL_STAGES_16: usize = 5;
pub(super) const PREFILL_MMA_MAX_STAGES: usize = 6;

/// Bytes of one pipeline stage of the prefill kernels: one k tile of activations (128
/// tokens) and weights (16 row tiles); mirrors `PrefillMma::STAGE` (gemm_prefill_mma.cuh).
pub(super) fn prefill_stage(x: DType) -> usize {
    PREFILL_TOKENS * TILE_COLS * x.size() + PREFILL_ROWS / TILE_ROWS * TILE_BYTES
}

/// Dynamic shared memory of the wgmma prefill kernel: its stages, and 1 KB to align
/// them; mirrors `PrefillX::SMEM`.
pub(super) fn prefill_smem(x: DType) -> usize {
    let stages = if x == DType::I8 {
        PREFILL_STAGES_I8
    } else {
        PREFILL_STAGES_16
    };
    stages * prefill_stage(x) + 1024
}

/// Stages of the mma.sync prefill kernel where `max_dynamic` bytes allow at least two
/// (it takes as many as its dynamic shared memory holds): 4 for 16-bit activations, 6
/// for int8 (the A100's 163 KB holds both), fewer on GPUs of 100 KB.
pub(super) fn prefill_mma_stages(x: DType, max_dynamic: usize) -> Option<usize> {
    let most = if x == DType::I8 {
        PREFILL_MMA_MAX_STAGES
    } else {
        4
    };
    let stages = (max_dynamic / prefill_stage(x)).min(most);
    (stages >= 2).then_some(stages)
}

/// CTAs per tile on offer to the wgmma prefill kernel's split K, and what a split costs a
/// CTA beyond its k tiles (storing and summing the partial sums, the pipeline's fill), in
/// k tiles: the planner's cost model.
pub(super) const PREFILL_SPLITS: [usize; 4] = [1, 2, 4, 8];
pub(super) const PREFILL_SPLIT_STEPS: usize = 6;

/// The CTAs per tile that split K for `tiles` tiles of `k_tiles`: the fewest k-tile steps
/// over the waves of CTAs that fit the GPU at once. It splits where the tiles leave SMs
/// idle (few row blocks, one or two token blocks) and keeps whole K where they fill the GPU.
pub(super) fn prefill_split(
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
pub(super) fn plan_prefill(
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
    let tiles = (row_tiles * TILE_ROWS).div_ceil(PREFILL_ROWS) * a.batch.div_ceil(PREFILL_TOKENS);
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
            limit: (i32::MAX as usize / split / (row_tiles * TILE_ROWS).div_ceil(PREFILL_ROWS)
                * PREFILL_TOKENS) as u64,
        });
    }
    let xsz = a.x_dtype.size();
    let row_bytes = elems("x", k_tiles * TILE_COLS * xsz, a.batch)?;
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
pub(super) enum Prefill {
    First(GemmPlan),
    AfterSplit(GemmPlan),
}
