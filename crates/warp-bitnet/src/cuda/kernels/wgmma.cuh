// Warpgroup MMAs (wgmma, sm_90a) with A in registers and B in shared memory, for the
// split kernels' `_w` variant (gemm_split.cuh). Inline PTX like common.cuh.
//
// B layout (K-major, no swizzle): core matrices of 8 rows x 16 bytes, each 8 tokens x 16 bytes
// of K (8 f16/bf16 or 16 int8 values) stored as 128 contiguous bytes. One MMA k step
// (k16 f16/bf16, k32 int8) of T tokens is T/8 groups of 2 core matrices:
// [token group][K half][token % 8][16 bytes], so the descriptor's leading (K) byte
// offset is 128 and its stride (token group) byte offset 256.
//
// D layout: warp i of the warpgroup holds rows 16i..16i+15 of the 64; per 8 tokens,
// the four values of an m16n8 mma.sync C fragment, in token-group order. So the
// accumulators of a warp are the mma.sync split kernel's, and its epilogue serves both.
#pragma once
#include "common.cuh"

template <int ACT>
struct Act {};

// Orders this warpgroup's register writes before the wgmmas that read them.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Pins `r` here: its value is computed before, and read after, this point. Applied to
// the A registers and accumulators around a batch of wgmmas, so that the compiler
// neither sinks the A computation past the fence nor touches the accumulators while
// the batch runs (it would then serialize the wgmmas).
__device__ __forceinline__ void fence_operand(u32& r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void fence_operand(int& r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }
// Makes this thread's generic-proxy writes to shared memory (st.shared, cp.async)
// visible to the async proxy that wgmma reads B through.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// Descriptor of the B operand of one k step at shared address `addr` (layout above).
__device__ __forceinline__ u64 wgmma_desc(u32 addr) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)(128 >> 4) << 16) | ((u64)(256 >> 4) << 32);
}

// D[64, N] += A[64, k] . B[k, N], one overload per (type, N): WGMMA_OVERLOAD(T, R, C, SHAPE,
// SCALE, TAG) defines the one for R = N / 2 accumulators of type T (asm constraint C), PTX shape
// and types SHAPE, the trailing scale operands SCALE of the 16-bit types, and the activation tag
// parameter TAG (none for int8, whose A codes are unsigned bytes 0..3). N = 16, 32, 64 serve the
// split kernels, 128 the prefill kernel (gemm_prefill.cuh). The operand strings per R: D's
// registers, then A's four and the descriptor, then the predicate's input.
#define WG_D_8 "{%0,%1,%2,%3,%4,%5,%6,%7}"
#define WG_A_8 "{%8,%9,%10,%11}, %12"
#define WG_P_8 "%13"
#define WG_D_16 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}"
#define WG_A_16 "{%16,%17,%18,%19}, %20"
#define WG_P_16 "%21"
#define WG_D_32 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}"
#define WG_A_32 "{%32,%33,%34,%35}, %36"
#define WG_P_32 "%37"
#define WG_D_64 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"
#define WG_A_64 "{%64,%65,%66,%67}, %68"
#define WG_P_64 "%69"
#define WG_OP(C, i) C(d[i])
#define WG_OPS_8(C, b) WG_OP(C, b), WG_OP(C, b + 1), WG_OP(C, b + 2), WG_OP(C, b + 3), WG_OP(C, b + 4), WG_OP(C, b + 5), WG_OP(C, b + 6), WG_OP(C, b + 7)
#define WG_OPS_16(C, b) WG_OPS_8(C, b), WG_OPS_8(C, b + 8)
#define WG_OPS_32(C, b) WG_OPS_16(C, b), WG_OPS_16(C, b + 16)
#define WG_OPS_64(C, b) WG_OPS_32(C, b), WG_OPS_32(C, b + 32)
#define WG_TAG(A) , Act<A>
#define WGMMA_OVERLOAD(T, R, C, SHAPE, SCALE, TAG)                                                        \
    __device__ __forceinline__ void wgmma(T(&d)[R], u32 a0, u32 a1, u32 a2, u32 a3, u64 desc TAG) {               \
        asm volatile("{.reg .pred p; setp.ne.b32 p, " WG_P_##R ", 0; "                                            \
                     "wgmma.mma_async.sync.aligned." SHAPE " " WG_D_##R ", " WG_A_##R ", p" SCALE ";}"             \
                     : WG_OPS_##R(C, 0)                                                                            \
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(1));                                     \
    }

WGMMA_OVERLOAD(float, 8, "+f", "m64n16k16.f32.f16.f16", ", 1, 1, 0", WG_TAG(ACT_F16))
WGMMA_OVERLOAD(float, 8, "+f", "m64n16k16.f32.bf16.bf16", ", 1, 1, 0", WG_TAG(ACT_BF16))
WGMMA_OVERLOAD(int, 8, "+r", "m64n16k32.s32.u8.s8", "", )
WGMMA_OVERLOAD(float, 16, "+f", "m64n32k16.f32.f16.f16", ", 1, 1, 0", WG_TAG(ACT_F16))
WGMMA_OVERLOAD(float, 16, "+f", "m64n32k16.f32.bf16.bf16", ", 1, 1, 0", WG_TAG(ACT_BF16))
WGMMA_OVERLOAD(int, 16, "+r", "m64n32k32.s32.u8.s8", "", )
WGMMA_OVERLOAD(float, 32, "+f", "m64n64k16.f32.f16.f16", ", 1, 1, 0", WG_TAG(ACT_F16))
WGMMA_OVERLOAD(float, 32, "+f", "m64n64k16.f32.bf16.bf16", ", 1, 1, 0", WG_TAG(ACT_BF16))
WGMMA_OVERLOAD(int, 32, "+r", "m64n64k32.s32.u8.s8", "", )
WGMMA_OVERLOAD(float, 64, "+f", "m64n128k16.f32.f16.f16", ", 1, 1, 0", WG_TAG(ACT_F16))
WGMMA_OVERLOAD(float, 64, "+f", "m64n128k16.f32.bf16.bf16", ", 1, 1, 0", WG_TAG(ACT_BF16))
WGMMA_OVERLOAD(int, 64, "+r", "m64n128k32.s32.u8.s8", "", )
