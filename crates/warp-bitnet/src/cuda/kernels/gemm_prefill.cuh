// Prefill kernel "_p128" (sm_90a): a streaming warpgroup-MMA GEMM for batches of
// hundreds to thousands of tokens, where the split kernels' K slice of the activations
// no longer fits shared memory. Same T2 tiles and register decode as gemm.cuh.
//
// Tile: a CTA of 2 warpgroups (8 warps) computes 256 rows (16 row tiles) x 128 tokens
// over the whole K. Warpgroup h takes row tiles 8h .. 8h + 7 as two m64 blocks; warp i
// of it takes tiles 8h + i and 8h + 4 + i, decodes its T2 words into wgmma register-A
// fragments (gemm.cuh: pair_fragment, quad_fragment) and multiplies them with the
// staged activations through a shared-memory descriptor (m64n128k16 f16/bf16,
// m64n128k32 int8). The accumulators (2 x 64 per thread) stay in registers for the
// whole K. CTAs take token blocks fastest (blockIdx.x = row block * token blocks +
// token block), so the CTAs resident at once share their row blocks' weights in L2 and
// all of the activations (32 MB for 2048 tokens x 8192 f16) stay there too.
//
// Activations: wgmma wants each core-matrix row (8 k values of one token, 16 bytes)
// contiguous, but a T2 fragment's k values are 4 columns apart (gemm.cuh: lane q's
// slot pair s holds columns 32q + 4s .. 4s+3). So a pre-pass (`prefill_x_*`, quant.cu)
// writes X in that order into a workspace (`PrefillX` below: per token, per k tile,
// k step j, half h, 16 contiguous bytes), and the kernel copies it with 16-byte
// cp.async. It costs one extra read and write of X: 64 MB for 2048 x 8192 f16, ~25 µs
// on an H100, against a GEMM of ~1.4 ms.
//
// Pipeline: STAGES shared-memory stages of one k tile each (activations: 128 tokens x
// 128 columns, 128-byte swizzle, see pf_chunk; weights: the CTA's 16 row tiles, 8 KB), filled
// by every thread with cp.async, PREFETCH = STAGES - 2 tiles ahead. Each k tile is two
// commit groups per warpgroup (k steps 0..3 and 4..7, int8 0..1 and 2..3) with their
// own A registers; a warpgroup decodes one half while its other groups run, and waits for
// the group that last read a register set only before it overwrites it, so two groups
// stay in flight across the CTA barrier. A stage is refilled two tiles after it was
// read, when both of its groups are known to be complete.
//
// Budget per k tile per CTA (f16): 2 x 16 m64n128k16 wgmma = 8.4 MFLOP, 2048 cycles at
// the H100's dense rate; per warp 2 x 8 x 4 decode_pair (~150 instructions), 8 + 2
// cp.async per thread; shared memory read by the tensor cores 64 KB (half its
// bandwidth). Registers: 128 accumulators + 2 x 32 A.
#pragma once
#include "gemm.cuh"
#include "wgmma.cuh"

constexpr u32 PF_TOKENS = 128;   // tokens per CTA
constexpr u32 PF_ROW_TILES = 16;  // row tiles per CTA
constexpr u32 PF_THREADS = 256;

template <int ACT>
struct PrefillX {
    static constexpr u32 XB = ACT == ACT_I8 ? 1 : 2;  // bytes per activation
    static constexpr u32 STEPS = ACT == ACT_I8 ? 4 : 8;  // MMA k steps per k tile
    static constexpr u32 CHUNKS = 2 * STEPS;  // 16-byte chunks per token per k tile
    static constexpr u32 X_STAGE = PF_TOKENS * 128 * XB;
    static constexpr u32 W_STAGE = PF_ROW_TILES * 512;
    static constexpr u32 STAGES = ACT == ACT_I8 ? 6 : 4;
    // Mirrored by `prefill_smem` in launch.rs; 1 KB to align the stages for the swizzle.
    static constexpr u32 SMEM = STAGES * (X_STAGE + W_STAGE) + 1024;
};

// Staged activations, 128-byte swizzle (K-major): per stage, atoms of 4 MMA k steps (64
// f16 or 128 int8 k values) x 128 tokens, 16 KB each; in an atom, token t's 128-byte row
// at (t / 8) * 1024 + (t % 8) * 128 holds its 8 chunks c = 2 (j % 4) + h at 16-byte slot
// c ^ (t % 8). The tensor cores read a k step's 8 rows of one token group without bank
// conflicts; the layout without swizzle (wgmma.cuh) measured 2.5x slower here (run1).
__device__ __forceinline__ u32 pf_chunk(u32 tg, u32 t8, u32 c) {
    return (c / 8) * 16384 + tg * 1024 + t8 * 128 + ((c % 8) ^ t8) * 16;
}
// Descriptor of k step j of the stage at `xs` (1 KB aligned): the atom's rows advance by
// 1 KB per 8 tokens (stride byte offset); within an atom, step j % 4 starts 32 bytes on.
__device__ __forceinline__ u64 pf_desc(u32 xs, u32 j) {
    const u32 addr = xs + (j / 4) * 16384 + (j % 4) * 32;
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
}

__device__ __forceinline__ void cp_async_16_zfill(u32 dst, const void* src, u32 bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes));
}

template <int ACT>
using PfA = u32[PrefillX<ACT>::STEPS / 2][2][4];  // [k step of the half][m64 block][4]

// Half H of one k tile of the warp's two row tiles as A registers.
template <int ACT, bool INT2, int H, int J = 0>
__device__ __forceinline__ void pf_decode(const u32x4 (&w)[2], PfA<ACT>& a) {
    constexpr int HALF = PrefillX<ACT>::STEPS / 2;
    if constexpr (J < HALF) {
#pragma unroll
        for (int b = 0; b < 2; b++) {
            if constexpr (ACT == ACT_I8) quad_fragment(w[b].x, w[b].y, w[b].z, w[b].w, H * HALF + J, a[J][b]);
            else pair_fragment<ACT, INT2, H * HALF + J>(w[b].x, w[b].y, w[b].z, w[b].w, a[J][b]);
        }
        pf_decode<ACT, INT2, H, J + 1>(w, a);
    } else {
#pragma unroll
        for (int j = 0; j < HALF; j++)
#pragma unroll
            for (int b = 0; b < 2; b++)
#pragma unroll
                for (int e = 0; e < 4; e++) fence_operand(a[j][b][e]);
    }
}

template <int ACT>
struct PfAcc {
    float f[2][64];
    int i[2][64];
};

template <int ACT>
__device__ __forceinline__ void pf_fence(PfAcc<ACT>& acc) {
#pragma unroll
    for (int b = 0; b < 2; b++)
#pragma unroll
        for (int v = 0; v < 64; v++) {
            if constexpr (ACT == ACT_I8) fence_operand(acc.i[b][v]);
            else fence_operand(acc.f[b][v]);
        }
}

// The wgmmas of half H of a k tile whose activations sit at shared address `xs`, one
// commit group.
template <int ACT, int H>
__device__ __forceinline__ void pf_issue(PfA<ACT>& a, u32 xs, PfAcc<ACT>& acc) {
    constexpr int HALF = PrefillX<ACT>::STEPS / 2;
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < HALF; j++)
#pragma unroll
        for (int b = 0; b < 2; b++) {
            const u64 desc = pf_desc(xs, H * HALF + j);
            if constexpr (ACT == ACT_I8) wgmma(acc.i[b], a[j][b][0], a[j][b][1], a[j][b][2], a[j][b][3], desc);
            else wgmma(acc.f[b], a[j][b][0], a[j][b][1], a[j][b][2], a[j][b][3], desc, Act<ACT>{});
        }
    wgmma_commit();
}

template <int ACT, int OUT, bool INT2>
__device__ __forceinline__ void gemm_prefill(const GemmParams& p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    typedef PrefillX<ACT> X;
    constexpr u32 STAGES = X::STAGES, PREFETCH = STAGES - 2;
    extern __shared__ __align__(128) unsigned char smem[];
    // A launch with less shared memory than the stages need is a host bug.
    if (dynamic_smem_size() < X::SMEM) __trap();
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    const u32 token_blocks = (p.batch + PF_TOKENS - 1) / PF_TOKENS;
    const u32 b_base = blockIdx.x % token_blocks * PF_TOKENS;
    const u32 rt_base = blockIdx.x / token_blocks * PF_ROW_TILES;
    const u32 row_tiles = (p.rows + 15) / 16;
    const u32 base = pinned((smem_addr(smem) + 1023) & ~1023u);
    const u32 w_base = base + STAGES * X::X_STAGE;
    // The pre-pass's layout: token b's k tile kt at x + (b * k_tiles + kt) * 128 * XB;
    // i8: each token's sum(x) after the last token.
    const unsigned char* const x = (const unsigned char*)p.x;
    const u32 row_bytes = p.k_tiles * 128 * X::XB;

    // Stage kt into slot kt % STAGES. Activations: chunk n = (token group, chunk c, token
    // % 8), so 8 consecutive threads fill one 128-byte core matrix and a warp reads 64
    // contiguous bytes of each of 8 tokens. Tokens past the batch are zero-filled.
    // A thread's chunk c and token t8 (mod 8) are the same in every copy it makes: copy i
    // is token group tg0 + i * TG_STEP. Its sources are computed once, here.
    constexpr u32 X_COPIES = PF_TOKENS * X::CHUNKS / PF_THREADS, TG_STEP = PF_THREADS / (8 * X::CHUNKS);
    constexpr u32 W_COPIES = PF_ROW_TILES * 32 / PF_THREADS;
    const u32 t8 = threadIdx.x % 8, c = threadIdx.x / 8 % X::CHUNKS, tg0 = threadIdx.x / (8 * X::CHUNKS);
    const u32 b0 = b_base + 8 * tg0 + t8;
    const unsigned char* const x_src = x + (u64)min(b0, p.batch - 1) * row_bytes + c * 16;
    const u64 x_step = (u64)8 * TG_STEP * row_bytes;
    // Weights: copy i is 16 bytes of row tile 8i + threadIdx.x / 32; tiles past the last
    // reload it (the epilogue drops their rows).
    const u32x4* w_src[W_COPIES];
#pragma unroll
    for (u32 i = 0; i < W_COPIES; i++)
        w_src[i] = p.w + (u64)min(rt_base + i * (PF_THREADS / 32) + threadIdx.x / 32, row_tiles - 1) * p.k_tiles * 32 +
                   threadIdx.x % 32;
    const auto load_stage = [&](u32 kt) {
        const u32 slot = kt % STAGES;
        const u32 xs = base + slot * X::X_STAGE + pf_chunk(tg0, t8, c);
#pragma unroll
        for (u32 i = 0; i < X_COPIES; i++) {
            // Tokens past the batch are zero-filled (from a valid address).
            const bool live = b0 + 8 * TG_STEP * i < p.batch;
            const unsigned char* src = live ? x_src + i * x_step + kt * 128 * X::XB : x;
            cp_async_16_zfill(xs + i * TG_STEP * 1024, src, live ? 16 : 0);
        }
        const u32 ws = w_base + slot * X::W_STAGE + threadIdx.x * 16;
#pragma unroll
        for (u32 i = 0; i < W_COPIES; i++) cp_async_16_zfill(ws + i * PF_THREADS * 16, w_src[i] + kt * 32, 16);
    };

    PfAcc<ACT> acc;
#pragma unroll
    for (int b = 0; b < 2; b++)
#pragma unroll
        for (int v = 0; v < 64; v++) {
            acc.f[b][v] = 0.f;
            acc.i[b][v] = 0;
        }
    pf_fence(acc);

#pragma unroll
    for (u32 s = 0; s < PREFETCH; s++) {
        if (s < p.k_tiles) load_stage(s);
        cp_async_commit();
    }
    const u32 h = warp / 4, my_tiles = 8 * h + warp % 4;  // and my_tiles + 4
    PfA<ACT> a0 = {}, a1 = {};
    // Both halves of a tile stay in flight across the next tile's barrier: a warpgroup
    // waits for the previous tile's first half only before it decodes into a0 again, and
    // for its second half before a1.
    const auto keep = [](PfA<ACT>& a) {
#pragma unroll
        for (int j = 0; j < X::STEPS / 2; j++)
#pragma unroll
            for (int b = 0; b < 2; b++)
#pragma unroll
                for (int e = 0; e < 4; e++) fence_operand(a[j][b][e]);
    };
    for (u32 kt = 0; kt < p.k_tiles; kt++) {
        cp_async_wait<PREFETCH - 1>();  // stage kt has landed (this thread's copies)
        fence_proxy_async();
        // ... everyone's; and every warp has waited for the wgmmas of tile kt - 2, whose
        // stage the next load refills.
        __syncthreads();
        if (kt + PREFETCH < p.k_tiles) load_stage(kt + PREFETCH);
        cp_async_commit();
        const u32 slot = kt % STAGES;
        const u32 xs = base + slot * X::X_STAGE;
        u32x4 w[2];
#pragma unroll
        for (int b = 0; b < 2; b++) w[b] = lds128(w_base + slot * X::W_STAGE + (my_tiles + 4 * b) * 512 + lane * 16);
        wgmma_wait<1>();  // tile kt - 1's first half is done: a0 is free
        keep(a0);
        pf_decode<ACT, INT2, 0>(w, a0);
        pf_issue<ACT, 0>(a0, xs, acc);
        wgmma_wait<1>();  // tile kt - 1's second half is done: a1 is free
        keep(a1);
        pf_decode<ACT, INT2, 1>(w, a1);
        pf_issue<ACT, 1>(a1, xs, acc);
    }
    wgmma_wait<0>();
    pf_fence(acc);
    cp_async_wait<0>();

    // ---- epilogue: value v of block b is row 16 tile + g + 8 (e / 2), token 8 t + 2q + e % 2
    // (t = v / 4, e = v % 4) ----
    const int* const xsum = (const int*)(x + (u64)p.batch * row_bytes);
#pragma unroll
    for (int b = 0; b < 2; b++)
#pragma unroll
        for (int v = 0; v < 64; v++) {
            const u32 t = v / 4, e = v % 4;
            const u32 row = 16 * (rt_base + my_tiles + 4 * b) + g + 8 * (e / 2);
            const u32 tok = b_base + 8 * t + 2 * q + e % 2;
            if (row >= p.rows || tok >= p.batch) continue;
            float y;
            if constexpr (ACT == ACT_I8) {
                // Ternary: sum (c - 1) x. INT2: sum (2c - 3) x. (Unsigned: see MAX_W2A8_COLS.)
                const u32 s = (u32)acc.i[b][v], sx = (u32)xsum[tok];
                const int sum = (int)(INT2 ? 2u * s - 3u * sx : s - sx);
                if (OUT == OUT_I32) {
                    ((int*)p.y)[(u64)tok * p.ldy + row] = sum;
                    continue;
                }
                y = (float)sum * (INT2 ? 0.5f : 1.f) * p.x_scale[tok];
            } else {
                y = acc.f[b][v];
            }
            if (p.w_scale != nullptr) y *= p.w_scale[p.scale_per_row ? row : 0];
            y += load_bias<OUT>(p.bias, row);
            u16* out = (u16*)p.y + (u64)tok * p.ldy + row;
            *out = OUT == OUT_BF16 ? f32_to_bf16(y) : f32_to_f16(y);
        }
#else
    __trap();  // the planner takes the prefill kernel only on sm_90a
#endif
}

// Symbols: gemm_{t2|int2}_{activation}_{output}_p128; built by `gemm_symbol`.
#define GEMM_PREFILL_KERNEL(ACT, OUT, INT2, NAME)                                                \
    extern "C" __global__ void __launch_bounds__(PF_THREADS, 1) NAME(const GemmParams p) {      \
        gemm_prefill<ACT, OUT, INT2>(p);                                                        \
    }
