// Shared helpers for warp-bitnet kernels. Compiled by NVRTC with no host or CUDA
// headers: every half/bfloat16 value is a raw bit pattern and every special
// instruction is inline PTX, so the sources build anywhere NVRTC runs.
#pragma once

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;
typedef signed char i8;

struct u32x2 { u32 x, y; };
struct u32x4 { u32 x, y, z, w; };

// Kernel parameters of the GEMM family, passed by value. Mirrored by
// `GemmParams` in src/cuda/launch.rs; both sides assert the size.
struct GemmParams {
    const u32x4* w;       // T2 tiles (docs/FORMATS.md): row tile rt starts at w + rt * k_tiles * 32
    const void* x;        // [batch, ldx] activations: f16, bf16 or i8
    void* y;              // [batch, ldy] outputs: f16, bf16 or i32
    const float* w_scale; // [1] or [rows] weight scale; null = 1
    const void* bias;     // [rows] bias in the output type; null = 0
    const float* x_scale; // [batch] per-token dequantization factor (i8 activations only)
    u32 rows;             // M, output features
    u32 cols;             // N, input features (logical, unpadded)
    u32 batch;            // B, tokens
    u32 ldx;              // row stride of x, elements
    u32 ldy;              // row stride of y, elements
    u32 k_tiles;          // ceil(cols / 128)
    u32 scale_per_row;    // 1: w_scale has `rows` entries; 0: one
    u32 x_vec;            // 1: the base of x and its row stride in bytes are multiples of 16
};
static_assert(sizeof(GemmParams) == 80, "GemmParams layout must match launch.rs");

// ---- loads -----------------------------------------------------------------

// Weights are read exactly once (cp.async.cg skips L1): mark them first to leave
// L2, so the activations, read by every CTA, stay cached.
__device__ __forceinline__ u64 evict_first_policy() {
    u64 policy;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    return policy;
}

__device__ __forceinline__ u32x4 load_v4(const void* p) {
    u32x4 v;
    asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// Stores to global memory that the compiler may move loads across (no memory clobber):
// for outputs that never overlap what the kernel reads.
__device__ __forceinline__ void st_global_u16(void* p, u16 v) {
    asm volatile("st.global.u16 [%0], %1;" ::"l"(p), "h"(v));
}
__device__ __forceinline__ void st_global_u32(void* p, u32 v) {
    asm volatile("st.global.u32 [%0], %1;" ::"l"(p), "r"(v));
}

// A load that skips L1 (the data was written by another CTA of this launch).
__device__ __forceinline__ u32x4 load_cg_v4(const void* p) {
    u32x4 v;
    asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// ---- conversions -----------------------------------------------------------

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float bf16_to_f32(u16 h) {
    return __uint_as_float(((u32)h) << 16);
}

__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// ---- packed arithmetic -----------------------------------------------------

__device__ __forceinline__ u32 hfma2_f16(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

__device__ __forceinline__ u32 hfma2_bf16(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

__device__ __forceinline__ u32 prmt(u32 a, u32 b, u32 sel) {
    u32 d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}

__device__ __forceinline__ int dp4a(u32 a, u32 b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
