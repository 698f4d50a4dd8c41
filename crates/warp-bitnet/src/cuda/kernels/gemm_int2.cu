// INT2 GEMM/GEMV: Y[B, M] = (X[B, N] . Lᵀ) * scale + bias with the four levels
// L = c - 1.5 in {-1.5, -0.5, +0.5, +1.5}, codes c kept as they are in the T2 tile
// layout (docs/FORMATS.md, "INT2"). Same kernels as gemm_t2.cu (gemm.cuh) but for the
// offset: i8 with i32 output gives sum (2c - 3) x, twice the level sum.
#include "gemm.cuh"

GEMM_KERNEL(ACT_F16, OUT_F16, 1, 1, true, true, 4, gemm_int2_f16_f16_n1)
GEMM_KERNEL(ACT_F16, OUT_F16, 1, 2, false, true, 2, gemm_int2_f16_f16_n8_r2)
GEMM_KERNEL(ACT_F16, OUT_F16, 1, 4, false, true, 1, gemm_int2_f16_f16_n8_r4)
GEMM_KERNEL(ACT_F16, OUT_F16, 2, 4, false, true, 1, gemm_int2_f16_f16_n16_r4)
GEMM_KERNEL(ACT_F16, OUT_F16, 2, 8, false, true, 1, gemm_int2_f16_f16_n16_r8)
GEMM_KERNEL(ACT_BF16, OUT_BF16, 1, 1, true, true, 4, gemm_int2_bf16_bf16_n1)
GEMM_KERNEL_QX(ACT_F16, QX_BF16, OUT_BF16, true, 4, gemm_int2_bf16h_bf16_n1)
GEMM_KERNEL(ACT_BF16, OUT_BF16, 1, 2, false, true, 2, gemm_int2_bf16_bf16_n8_r2)
GEMM_KERNEL(ACT_BF16, OUT_BF16, 1, 4, false, true, 1, gemm_int2_bf16_bf16_n8_r4)
GEMM_KERNEL(ACT_BF16, OUT_BF16, 2, 4, false, true, 1, gemm_int2_bf16_bf16_n16_r4)
GEMM_KERNEL(ACT_BF16, OUT_BF16, 2, 8, false, true, 1, gemm_int2_bf16_bf16_n16_r8)
GEMM_KERNEL(ACT_I8, OUT_F16, 1, 1, true, true, 4, gemm_int2_i8_f16_n1)
GEMM_KERNEL(ACT_I8, OUT_F16, 1, 1, false, true, 4, gemm_int2_i8_f16_n8_r1)
GEMM_KERNEL(ACT_I8, OUT_F16, 2, 2, false, true, 1, gemm_int2_i8_f16_n16_r2)
GEMM_KERNEL(ACT_I8, OUT_F16, 4, 2, false, true, 1, gemm_int2_i8_f16_n32_r2)
GEMM_KERNEL(ACT_I8, OUT_BF16, 1, 1, true, true, 4, gemm_int2_i8_bf16_n1)
GEMM_KERNEL(ACT_I8, OUT_BF16, 1, 1, false, true, 4, gemm_int2_i8_bf16_n8_r1)
GEMM_KERNEL(ACT_I8, OUT_BF16, 2, 2, false, true, 1, gemm_int2_i8_bf16_n16_r2)
GEMM_KERNEL(ACT_I8, OUT_BF16, 4, 2, false, true, 1, gemm_int2_i8_bf16_n32_r2)
GEMM_KERNEL(ACT_I8, OUT_I32, 1, 1, true, true, 4, gemm_int2_i8_i32_n1)
GEMM_KERNEL(ACT_I8, OUT_I32, 1, 1, false, true, 4, gemm_int2_i8_i32_n8_r1)
GEMM_KERNEL(ACT_I8, OUT_I32, 2, 2, false, true, 1, gemm_int2_i8_i32_n16_r2)
GEMM_KERNEL(ACT_I8, OUT_I32, 4, 2, false, true, 1, gemm_int2_i8_i32_n32_r2)
GEMM_KERNEL_QX(ACT_I8, QX_F16, OUT_F16, true, 4, gemm_int2_f16q_f16_n1)
GEMM_KERNEL_QX(ACT_I8, QX_BF16, OUT_BF16, true, 4, gemm_int2_bf16q_bf16_n1)
