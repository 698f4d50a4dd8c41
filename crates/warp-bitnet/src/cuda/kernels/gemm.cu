// Ternary and INT2 GEMM/GEMV on T2 weights: Y[B, M] = (X[B, N] . Wtᵀ) * scale + bias, with
// Wt = c - 1 in {-1, 0, +1} (ternary) or the four levels L = c - 1.5 in {-1.5, -0.5, +0.5, +1.5}
// (INT2, docs/FORMATS.md: codes kept as they are in the T2 tile layout; i8 with i32 output gives
// sum (2c - 3) x, twice the level sum). Layout, thread mapping, decode and byte/instruction
// budget: gemm.cuh (single-token and token-group kernels), gemm_split.cuh (split-K cluster
// kernels, `_s`, `_w`), gemm_prefill.cuh and gemm_prefill_mma.cuh (prefill kernels, `_p128`,
// `_m128`).
//
// The instantiations are not written here: the planner's one list (cuda/plan/instances.rs)
// appends a line per kernel it can pick, once for each level codec (gemm_t2.cu, gemm_int2.cu).
#include "gemm_prefill_mma.cuh"
#include "gemm_split.cuh"
