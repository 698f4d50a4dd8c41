//! The split-K cluster kernels' plans (sm_90+, 9-64 tokens a CTA): a cluster's CTAs take
//! one K slice each and sum their partial products through distributed shared memory.

use super::{
    gemm_symbol, Cta, GemmArgs, GemmParams, GemmPlan, Occupancy, SplitKernels, Staging, MAX_GRID_Y,
    TILE_BYTES,
};
use crate::dtype::DType;
use crate::error::Result;
use crate::format::tiled::TILE_COLS;
use crate::format::Levels;

/// Batches from which the split-K cluster kernels take over (sm_90+): up to 8 tokens
/// the token-group kernel holds the batch in one CTA's registers.
pub(super) const SPLIT_MIN_BATCH: usize = 9;
/// Weight ring stages per warp of the split kernels (`SPLIT_DEPTH` in gemm_split.cuh).
pub(super) const SPLIT_DEPTH: usize = 4;
/// Tokens per CTA of the split kernels (`_s{T}` and `_w{T}` in gemm_t2.cu).
pub(crate) const SPLIT_TOKENS: [usize; 3] = [16, 32, 64];
/// CTAs per cluster on offer: divisors of the warps per CTA (each rank sums the partial
/// sums of warps w = rank mod S), up to the portable limit of 8.
pub(super) const CLUSTER_SIZES: [usize; 4] = [1, 2, 4, 8];
/// What a round of a split kernel costs besides its k tiles (staging, partial sums
/// through shared memory, two cluster barriers), in k-tile steps: the planner's cost
/// model.
pub(super) const SPLIT_ROUND_STEPS: usize = 1;
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
pub(super) const SPLIT_MIN_UTILIZATION: f64 = 0.55;
/// The same for 64 tokens a CTA, where the token-group kernels decode every weight two
/// (int8) or four times (f16/bf16): at 0.42-0.50 0.64-0.92x, at 0.10 1.01-1.28x.
pub(super) const SPLIT_MIN_UTILIZATION_64: f64 = 0.4;

/// Warps per CTA and row tiles per warp of the split kernel for `tokens` (`SPLIT_WARPS`
/// and `SPLIT_RW` in gemm_split.cuh): a CTA takes 32 row tiles a round, or 16 at 64
/// tokens. The 64-token wgmma kernel spreads its 16 over 16 warps.
pub(super) fn split_warps(tokens: usize, wgmma: bool) -> (usize, usize) {
    match (tokens, wgmma) {
        (64, true) => (16, 1),
        (64, false) => (8, 2),
        _ => (16, 2),
    }
}

/// Dynamic shared memory of a split kernel without its staged activations; mirrors
/// `SplitSmem` in gemm_split.cuh.
pub(super) fn split_fixed_smem(tokens: usize, wgmma: bool) -> usize {
    let (warps, rw) = split_warps(tokens, wgmma);
    let ring = warps * SPLIT_DEPTH * rw * TILE_BYTES;
    let partial_sums = warps * 32 * rw * tokens * 2;
    let x_sums = tokens * 4;
    ring + partial_sums + x_sums
}

/// The staged activations of a split kernel: `tokens` rows of `per` k tiles, each row
/// padded to 32 mod 128 bytes, or with wgmma `per` k tiles of all tokens, each padded by
/// 16 bytes (`SplitX` in gemm_split.cuh).
pub(super) fn split_x_smem(x: DType, tokens: usize, per: usize, wgmma: bool) -> usize {
    if wgmma {
        per * (tokens * TILE_COLS * x.size() + 16)
    } else {
        tokens * (per * TILE_COLS * x.size() + 32)
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
pub(super) fn plan_split(
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
