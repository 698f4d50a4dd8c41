// Per-token absmax int8 quantization of f16/bf16 activations (the W2A8 front end).
//
// One CTA of 256 threads per token: pass 1 finds max|x| (warp shuffles, then
// shared memory), pass 2 writes q. The arithmetic is exactly the CPU quantizer's
// (src/quant/activation.rs): s = 127 / max(amax, 1e-5) with an IEEE division,
// q = clamp(rint(x * s), -128, 127), scale = 1 / s. Inputs are re-read from L2 in
// pass 2 (a token is at most a few hundred KB). Non-finite inputs give
// unspecified q: this is a hot path and cannot raise an error.
#include "common.cuh"

template <bool BF16>
__device__ __forceinline__ float to_f32(u16 h) {
    return BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

template <bool BF16>
__device__ __forceinline__ void quantize_row(const u16* x, i8* q, float* scale, u32 n, u32 ldx, u32 ldq) {
    __shared__ float warp_max[32];
    const u16* row = x + (u64)blockIdx.x * ldx;
    i8* out = q + (u64)blockIdx.x * ldq;
    float amax = 0.f;
    for (u32 k = threadIdx.x; k < n; k += blockDim.x) amax = fmaxf(amax, fabsf(to_f32<BF16>(row[k])));
    for (int o = 16; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
    __syncthreads();
    amax = 0.f;
    for (u32 w = 0; w < blockDim.x / 32; w++) amax = fmaxf(amax, warp_max[w]);
    const float s = 127.0f / fmaxf(amax, 1e-5f);
    for (u32 k = threadIdx.x; k < n; k += blockDim.x) {
        const float v = fminf(fmaxf(rintf(to_f32<BF16>(row[k]) * s), -128.f), 127.f);
        out[k] = (i8)(int)v;
    }
    if (threadIdx.x == 0) scale[blockIdx.x] = 1.0f / s;
}

extern "C" __global__ void quantize_i8_f16(const u16* x, i8* q, float* scale, u32 n, u32 ldx, u32 ldq) {
    quantize_row<false>(x, q, scale, n, ldx, ldq);
}

extern "C" __global__ void quantize_i8_bf16(const u16* x, i8* q, float* scale, u32 n, u32 ldx, u32 ldq) {
    quantize_row<true>(x, q, scale, n, ldx, ldq);
}
