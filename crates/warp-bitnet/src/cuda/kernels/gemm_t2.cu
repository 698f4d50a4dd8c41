// Ternary GEMM/GEMV on T2 weights: Y[B, M] = (X[B, N] . Wtᵀ) * scale + bias, Wt = c - 1
// in {-1, 0, +1}. Layout, thread mapping, decode and byte/instruction budget: gemm.cuh.
#include "gemm.cuh"

GEMM_KERNEL(ACT_F16, OUT_F16, 1, true, false, 3, gemm_t2_f16_f16_n1)
GEMM_KERNEL(ACT_F16, OUT_F16, 1, false, false, 2, gemm_t2_f16_f16_n8)
GEMM_KERNEL(ACT_F16, OUT_F16, 2, false, false, 1, gemm_t2_f16_f16_n16)
GEMM_KERNEL(ACT_BF16, OUT_BF16, 1, true, false, 3, gemm_t2_bf16_bf16_n1)
GEMM_KERNEL(ACT_BF16, OUT_BF16, 1, false, false, 2, gemm_t2_bf16_bf16_n8)
GEMM_KERNEL(ACT_BF16, OUT_BF16, 2, false, false, 1, gemm_t2_bf16_bf16_n16)
GEMM_KERNEL(ACT_I8, OUT_F16, 1, true, false, 4, gemm_t2_i8_f16_n1)
GEMM_KERNEL(ACT_I8, OUT_F16, 1, false, false, 4, gemm_t2_i8_f16_n8)
GEMM_KERNEL(ACT_I8, OUT_F16, 2, false, false, 1, gemm_t2_i8_f16_n16)
GEMM_KERNEL(ACT_I8, OUT_F16, 4, false, false, 1, gemm_t2_i8_f16_n32)
GEMM_KERNEL(ACT_I8, OUT_BF16, 1, true, false, 4, gemm_t2_i8_bf16_n1)
GEMM_KERNEL(ACT_I8, OUT_BF16, 1, false, false, 4, gemm_t2_i8_bf16_n8)
GEMM_KERNEL(ACT_I8, OUT_BF16, 2, false, false, 1, gemm_t2_i8_bf16_n16)
GEMM_KERNEL(ACT_I8, OUT_BF16, 4, false, false, 1, gemm_t2_i8_bf16_n32)
GEMM_KERNEL(ACT_I8, OUT_I32, 1, true, false, 4, gemm_t2_i8_i32_n1)
GEMM_KERNEL(ACT_I8, OUT_I32, 1, false, false, 4, gemm_t2_i8_i32_n8)
GEMM_KERNEL(ACT_I8, OUT_I32, 2, false, false, 1, gemm_t2_i8_i32_n16)
GEMM_KERNEL(ACT_I8, OUT_I32, 4, false, false, 1, gemm_t2_i8_i32_n32)
GEMM_KERNEL_QX(QX_F16, OUT_F16, false, 4, gemm_t2_f16q_f16_n1)
GEMM_KERNEL_QX(QX_BF16, OUT_BF16, false, 4, gemm_t2_bf16q_bf16_n1)
