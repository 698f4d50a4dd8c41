// Prefill kernel "_m128" (sm_80 and newer): the tiled GEMM of gemm_prefill.cuh on
// mma.sync, for GPUs without warpgroup MMAs (A100, L40, RTX 30/40) and for A/B runs on
// Hopper. Same T2 tiles and register decode as gemm.cuh, same pre-pass (quant.cu,
// `prefill_x_*`) and CTA tile: 256 rows x 128 tokens over the whole K.
//
// Warp tile: warp w takes row tiles 4 (w % 4) .. + 3 (64 rows) and tokens 64 (w / 4) ..
// + 63 (8 token groups), so each row tile is decoded by the two warps that share it and
// every B fragment feeds four MMAs. Per MMA k step a warp decodes 4 A fragments
// (pair_fragment / quad_fragment), loads 8 B fragments with 4 ldmatrix.x4 and issues 32
// m16n8k16 (f16/bf16) or m16n8k32 (int8) MMAs; 128 accumulators per thread.
//
// Staged activations: the pre-pass gives each token's k tile as 16-byte chunks c = 2j +
// h holding MMA k values 8h .. 8h + 7 of k step j in order, which is what an ldmatrix
// row is: matrix (tokens 8G .. 8G + 7, chunk c) gives lane (g, q) the B register of token
// 8G + g, k values 2q, 2q + 1 (f16) or 4q .. 4q + 3 (int8) of that half. Chunk c of
// token t sits at t * ROW + 16 (c ^ (t % 8)) (ROW = 256 f16, 128 int8 bytes): the 8 rows
// of one matrix fall in 8 distinct 16-byte bank groups.
//
// Pipeline: cp.async (16 bytes a thread, zeros past the batch) into as many stages of one
// k tile (40 KB f16, 24 KB int8) as the launch's dynamic shared memory holds (2-6: the
// host gives 4 f16 / 6 int8 where they fit, fewer on 100 KB GPUs), stages - 1 tiles
// ahead, one CTA barrier per k tile (it also frees the slot the next copy reuses).
//
// Budget per k tile per warp (f16): 256 HMMA (an A100 SM retires one every 2 cycles:
// 4096 cycles a tile per CTA of 8 warps), 32 ldmatrix, 32 decode_pair (~80 instructions),
// 10 cp.async: issue-light, so the tensor pipe bounds it where the copies keep up.
// Registers: 128 accumulators + 16 weight words + 16 B + 4 A; ptxas takes all 255 (f16/bf16
// spill 8-20 bytes), 238-247 for int8.
// Measured only on an H100 with wgmma turned off (bench/results/2026-11-26-h100-prefill-mma,
// final-1db0370): 28672 x 8192 at 2048 tokens 2.52 ms f16 / 1.47 ms int8, 0.53x / 0.91x cuBLAS
// f16 (the wgmma kernel: 1.37 / 0.71 ms), where the split kernels it replaces took 4.48 / 2.94
// (run1). An H100 runs mma.sync at about half its wgmma rate; an A100, whose full rate it is,
// was not available.
#pragma once
#include "gemm_prefill.cuh"

template <int ACT>
struct PrefillMma {
    static constexpr u32 ROW = TILE_COLS * (ACT == ACT_I8 ? 1 : 2);  // bytes per token per k tile
    static constexpr u32 CHUNKS = ROW / 16;
    static constexpr u32 X_STAGE = PF_TOKENS * ROW;
    static constexpr u32 STAGE = X_STAGE + PF_ROW_TILES * TILE_WEIGHT_BYTES;
    static constexpr u32 MAX_STAGES = WB_PREFILL_MMA_MAX_STAGES;  // cp.async.wait_group takes an immediate
};

__device__ __forceinline__ void cp_async_16_zfill(u32 dst, const void* src, u32 bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes));
}

// Waits until at most `n` (0 .. MAX_STAGES - 2) of this thread's copy groups are pending.
__device__ __forceinline__ void cp_async_wait_at_most(u32 n) {
    switch (n) {
        case 0: cp_async_wait<0>(); break;
        case 1: cp_async_wait<1>(); break;
        case 2: cp_async_wait<2>(); break;
        case 3: cp_async_wait<3>(); break;
        default: cp_async_wait<4>(); break;
    }
}

__device__ __forceinline__ void ldmatrix_x4(u32 addr, u32 (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// MMA k step J of one k tile: the warp's 4 row tiles (words `w`) times its 8 token
// groups, whose chunks 2J, 2J + 1 this lane's ldmatrix rows find at `xl` (token row of
// the lane's first matrix row) with `sw` = (lane's half) ^ (token % 8).
template <int ACT, bool INT2, int J>
__device__ __forceinline__ void pm_step(const u32x4 (&w)[4], u32 xl, u32 sw, SplitAcc<ACT, 8, 4>& acc) {
    typedef PrefillMma<ACT> X;
    u32 b[8][2];
#pragma unroll
    for (int pp = 0; pp < 4; pp++) {
        u32 r[4];
        ldmatrix_x4(xl + pp * 16 * X::ROW + (((2 * J) ^ sw) * 16), r);
        b[2 * pp][0] = r[0];
        b[2 * pp][1] = r[1];
        b[2 * pp + 1][0] = r[2];
        b[2 * pp + 1][1] = r[3];
    }
#pragma unroll
    for (int r = 0; r < 4; r++) {
        u32 a[4];
        if constexpr (ACT == ACT_I8) quad_fragment(w[r].x, w[r].y, w[r].z, w[r].w, J, a);
        else pair_fragment<ACT, INT2, J>(w[r].x, w[r].y, w[r].z, w[r].w, a);
#pragma unroll
        for (int t = 0; t < 8; t++) {
            if constexpr (ACT == ACT_I8) mma_i8(acc.i[r][t], a[0], a[1], a[2], a[3], b[t][0], b[t][1]);
            else if constexpr (ACT == ACT_F16) mma_f16(acc.f[r][t], a[0], a[1], a[2], a[3], b[t][0], b[t][1]);
            else mma_bf16(acc.f[r][t], a[0], a[1], a[2], a[3], b[t][0], b[t][1]);
        }
    }
}

template <int ACT, bool INT2, int J = 0>
__device__ __forceinline__ void pm_tile(const u32x4 (&w)[4], u32 xl, u32 sw, SplitAcc<ACT, 8, 4>& acc) {
    if constexpr (J < (int)PrefillX<ACT>::STEPS) {
        pm_step<ACT, INT2, J>(w, xl, sw, acc);
        pm_tile<ACT, INT2, J + 1>(w, xl, sw, acc);
    }
}

template <int ACT, int OUT, bool INT2>
__device__ __forceinline__ void gemm_prefill_mma(const GemmParams& p) {
#if __CUDA_ARCH__ >= 800
    typedef PrefillMma<ACT> X;
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ TokenFactors tf;
    const u32 stages = min(dynamic_smem_size() / X::STAGE, X::MAX_STAGES);
    // A launch with less shared memory than two stages is a host bug.
    if (stages < 2) __trap();
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 token_blocks = (p.batch + PF_TOKENS - 1) / PF_TOKENS;
    const u32 b_base = blockIdx.x % token_blocks * PF_TOKENS;
    const u32 rt_base = blockIdx.x / token_blocks * PF_ROW_TILES;
    const u32 row_tiles = (p.rows + TILE_ROWS - 1) / TILE_ROWS;
    const u32 base = pinned(smem_addr(smem));
    const u32x4* const xw = (const u32x4*)p.x;  // the pre-pass's workspace, 16-byte chunks

    // Stage s into slot s % stages: thread i copies chunks i, i + 256, ... of the
    // activations (token i / CHUNKS) and of the 16 row tiles' weights (tiles past the
    // last reload it: the epilogue drops their rows). One commit group per stage, empty
    // past the last k tile.
    const auto produce = [&](u32 s) {
        if (s < p.k_tiles) {
            const u32 xs = base + (s % stages) * X::STAGE;
#pragma unroll
            for (u32 u = 0; u < X::X_STAGE / 16 / PF_THREADS; u++) {
                const u32 i = threadIdx.x + u * PF_THREADS, t = i / X::CHUNKS, c = i % X::CHUNKS, b = b_base + t;
                const bool live = b < p.batch;
                const u32x4* src = xw + ((u64)(live ? b : 0) * p.k_tiles + s) * X::CHUNKS + c;
                cp_async_16_zfill(xs + t * X::ROW + ((c ^ (t % 8)) * 16), src, live ? 16 : 0);
            }
#pragma unroll
            for (u32 u = 0; u < PF_ROW_TILES * 32 / PF_THREADS; u++) {
                const u32 i = threadIdx.x + u * PF_THREADS, tile = min(rt_base + i / 32, row_tiles - 1);
                cp_async_16_zfill(xs + X::X_STAGE + i * 16, p.w + ((u64)tile * p.k_tiles + s) * 32 + i % 32, 16);
            }
        }
        cp_async_commit();
    };
    for (u32 s = 0; s + 1 < stages; s++) produce(s);
    load_token_factors<ACT, OUT>(p, b_base, tf);  // read after the main loop's first barrier

    SplitAcc<ACT, 8, 4> acc = {};
    const u32 wm = warp % 4, wn = warp / 4;
    // ldmatrix: lane l gives the row of matrix l / 8: token 64 wn + 8 (l / 16) + l % 8,
    // chunk 2J + (l / 8) % 2.
    const u32 tok = 64 * wn + 8 * (lane / 16) + lane % 8;
    const u32 sw = ((lane / 8) % 2) ^ (lane % 8);
    for (u32 kt = 0; kt < p.k_tiles; kt++) {
        // Stage kt has landed once this thread's later groups alone are pending, and for
        // every thread after the barrier, which also ends every warp's reads of the slot
        // that stage kt + stages - 1 now reuses.
        cp_async_wait_at_most(stages - 2);
        __syncthreads();
        produce(kt + stages - 1);
        const u32 xs = base + (kt % stages) * X::STAGE;
        u32x4 w[4];
#pragma unroll
        for (int r = 0; r < 4; r++) w[r] = lds128(xs + X::X_STAGE + (4 * wm + r) * 512 + lane * 16);
        pm_tile<ACT, INT2>(w, xs + tok * X::ROW, sw, acc);
    }
    cp_async_wait<0>();

    // ---- epilogue ----
    const u32 row0[4] = {16 * (rt_base + 4 * wm), 16 * (rt_base + 4 * wm + 1), 16 * (rt_base + 4 * wm + 2),
                         16 * (rt_base + 4 * wm + 3)};
    prefill_epilogue<ACT, OUT, INT2>(p, acc, row0, b_base, b_base + 64 * wn, tf,
                                     [](int, int, float (&)[4], u32 (&)[4]) {});
#else
    __trap();  // the planner takes mma.sync kernels on sm_80 and newer only
#endif
}

// Symbols: gemm_{t2|int2}_{activation}_{output}_m128; built by `gemm_symbol`.
#define GEMM_PREFILL_MMA_KERNEL(ACT, OUT, INT2, NAME)                                            \
    extern "C" __global__ void __launch_bounds__(PF_THREADS, 1) NAME(const GemmParams p) { \
        gemm_prefill_mma<ACT, OUT, INT2>(p);                                                      \
    }
