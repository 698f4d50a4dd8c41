// Per-token absmax int8 quantization arithmetic, shared by quant.cu (the standalone
// quantizer) and the GEMM kernels that quantize their activation row in place: exactly
// the CPU quantizer's (src/quant/activation.rs): s = 127 / max(amax, 1e-5) with an
// IEEE division, q = clamp(rint(x * s), -128, 127), scale = 1 / s.
#pragma once
#include "common.cuh"

#define ACT_EPS WB_ACT_EPS

template <bool BF16>
__device__ __forceinline__ float to_f32(u16 h) {
    return BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

__device__ __forceinline__ u32 quantize_one(float x, float s) {
    return (u32)(unsigned char)(i8)(int)fminf(fmaxf(rintf(x * s), -128.f), 127.f);
}

// The 8 values of a 16-byte chunk, quantized and packed into 8 bytes.
template <bool BF16>
__device__ __forceinline__ u32x2 quantize8(const u32x4& v, float s) {
    const u32 h[4] = {v.x, v.y, v.z, v.w};
    u32 out[2] = {0, 0};
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const u16 e = (u16)(h[i / 2] >> (16 * (i % 2)));
        out[i / 4] |= quantize_one(to_f32<BF16>(e), s) << (8 * (i % 4));
    }
    return {out[0], out[1]};
}

template <bool BF16>
__device__ __forceinline__ float absmax8(const u32x4& v) {
    const u32 h[4] = {v.x, v.y, v.z, v.w};
    float m = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) m = fmaxf(m, fabsf(to_f32<BF16>((u16)(h[i / 2] >> (16 * (i % 2))))));
    return m;
}

__device__ __forceinline__ float quant_factor(float amax) {
    return 127.0f / fmaxf(amax, ACT_EPS);
}
