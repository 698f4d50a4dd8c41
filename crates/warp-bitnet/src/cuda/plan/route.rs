//! The route of a GEMM: the ternary kernels (one of the planner's families) or the dense
//! path (the weights decoded once to a dense matrix, then cuBLAS). Decided here, once, for
//! every caller: the Rust API ([`Gpu::gemm`](crate::cuda::Gpu::gemm)) and the Python package,
//! which asks [`Gpu::route`](crate::cuda::Gpu::route) once per shape and batch.

use super::KernelFamily;
use crate::dtype::DType;

/// Where a GEMM runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The ternary kernels of this family.
    Kernels(KernelFamily),
    /// cuBLAS over the weights decoded to a dense matrix (f16 / bf16 with the scale folded
    /// in; int8 with exact int32 sums and the kernels' W2A8 epilogue).
    Dense,
    /// W2A8 on one f16 / bf16 token in one launch: the single-token kernel quantizes the
    /// row to int8 in its shared memory ([`Gpu::route_quantized`](crate::cuda::Gpu::route_quantized);
    /// a row too long for it is quantized first, then takes the int8 route).
    OneLaunch,
}

impl Route {
    /// "groups", "split", "prefill", "prefill_mma", "dense" or "one_launch".
    pub fn name(self) -> &'static str {
        match self {
            Route::Kernels(f) => f.name(),
            Route::Dense => "dense",
            Route::OneLaunch => "one_launch",
        }
    }
}

/// Batches from which the dense path beats the kernels that re-decode the weights for
/// every group of 16 (f16 / bf16) or 32 (int8) tokens. H100 crossovers on the 2B, 8B and
/// 70B gate/up shapes (docs/NOTES.md, v18): int8 between 64 and 128 tokens, f16 / bf16
/// between 128 and 192.
const DENSE_MIN_BATCH_I8: usize = 65;
const DENSE_MIN_BATCH_16: usize = 129;
/// Where the split-K kernels take the batch (they decode every weight once per 64 tokens),
/// they beat the dense path much longer: on the H100 (docs/NOTES.md, v27) up to 512 int8
/// tokens (the largest measured) and 256 f16 ones (512 lose).
const SPLIT_DENSE_MIN_BATCH_I8: usize = 513;
const SPLIT_DENSE_MIN_BATCH_16: usize = 257;

/// The route for `batch` tokens of `x` (int8 for W2A8) on a `rows` x `cols` matrix whose
/// kernels the planner put in `family`. The wgmma prefill kernel always stays: on the H100
/// it was faster than the dense path, or level with it, at every batch measured (70B layer
/// at 2048 tokens 1.37 / 0.90 ms against 1.55 / 1.49; docs/NOTES.md, v27 and v28). The
/// mma.sync prefill kernel ("prefill_mma", the other GPUs) keeps the thresholds: with wgmma
/// turned off the H100 ran that layer in 2.60 / 1.59 ms (v29); on an A100 it is not
/// measured. cuBLAS's int8 GEMM needs both dimensions a multiple of 8 here; other shapes
/// keep the kernels.
/// Whether `batch` tokens of `x` are enough for the dense route to be possible at all: the
/// cheap test that lets a decode step skip asking the planner for the family.
pub(crate) fn may_be_dense(x: DType, batch: usize) -> bool {
    batch
        >= if x == DType::I8 {
            DENSE_MIN_BATCH_I8
        } else {
            DENSE_MIN_BATCH_16
        }
}

pub(crate) fn route(
    family: KernelFamily,
    x: DType,
    batch: usize,
    rows: usize,
    cols: usize,
) -> Route {
    let int8 = x == DType::I8;
    let split_min = if int8 {
        SPLIT_DENSE_MIN_BATCH_I8
    } else {
        SPLIT_DENSE_MIN_BATCH_16
    };
    let dense = may_be_dense(x, batch)
        && family != KernelFamily::Prefill
        && !(int8 && (rows % 8 != 0 || cols % 8 != 0))
        && (batch >= split_min || family != KernelFamily::Split);
    if dense {
        Route::Dense
    } else {
        Route::Kernels(family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use KernelFamily::*;

    #[test]
    fn thresholds_of_each_family() {
        let r = |f, x, b| route(f, x, b, 4096, 4096);
        assert_eq!(r(Groups, DType::F16, 128), Route::Kernels(Groups));
        assert_eq!(r(Groups, DType::F16, 129), Route::Dense);
        assert_eq!(r(Groups, DType::I8, 64), Route::Kernels(Groups));
        assert_eq!(r(Groups, DType::I8, 65), Route::Dense);
        assert_eq!(r(Split, DType::F16, 256), Route::Kernels(Split));
        assert_eq!(r(Split, DType::F16, 257), Route::Dense);
        assert_eq!(r(Split, DType::I8, 512), Route::Kernels(Split));
        assert_eq!(r(Split, DType::I8, 513), Route::Dense);
        assert_eq!(r(Prefill, DType::F16, 4096), Route::Kernels(Prefill));
        assert_eq!(r(PrefillMma, DType::BF16, 129), Route::Dense);
        assert_eq!(r(PrefillMma, DType::I8, 65), Route::Dense);
        // cuBLAS's int8 GEMM: dimensions a multiple of 8 only.
        assert_eq!(
            route(Groups, DType::I8, 1024, 4095, 4096),
            Route::Kernels(Groups)
        );
        assert_eq!(route(Groups, DType::F16, 1024, 4095, 4093), Route::Dense);
    }
}
