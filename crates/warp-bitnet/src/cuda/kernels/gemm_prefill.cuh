// Prefill kernel "_p128" (sm_90a): a streaming warpgroup-MMA GEMM for batches beyond 64
// tokens, where the split kernels' K slice of the activations no longer fits shared
// memory. Same T2 tiles and register decode as gemm.cuh. "_p128k": the same with K split
// over 2-8 CTAs per tile, for grids that would leave SMs idle (see gemm_prefill).
//
// Tile: a CTA of 2 warpgroups (8 warps) computes 256 rows (16 row tiles) x 128 tokens
// over the whole K (its slice of K). Warpgroup h takes row tiles 8h .. 8h + 7 as two m64 blocks; warp i
// of it takes tiles 8h + i and 8h + 4 + i, decodes its T2 words into wgmma register-A
// fragments (gemm.cuh: pair_fragment, quad_fragment) and multiplies them with the
// staged activations through a shared-memory descriptor (m64n128k16 f16/bf16,
// m64n128k32 int8). The accumulators (2 x 64 per thread) stay in registers for the
// whole K. Tiles take token blocks fastest (tile = row block * token blocks + token
// block; blockIdx.x = tile, or tile * S + slice), so the CTAs resident at once share their row blocks' weights in L2, and
// the activations (32 MB for 2048 tokens x 8192 f16) stay there too.
//
// Activations: wgmma wants each core-matrix row (8 k values of one token, 16 bytes)
// contiguous, but a T2 fragment's k values are 4 columns apart (gemm.cuh: lane q's
// slot pair s holds columns 32q + 4s .. 4s+3). So a pre-pass (`prefill_x_*`, quant.cu)
// writes X in that order into a workspace: per token, per k tile, 16-byte chunks c =
// 2j + h (k step j, half h); for int8 it also sums each token. It costs one extra read
// and write of X: 64 MB for 2048 x 8192 f16, ~25 µs on an H100, against ~1.4 ms.
//
// Pipeline: STAGES shared-memory stages of one k tile each: the activations of the
// CTA's 128 tokens (TMA, 128-byte swizzle: pf_chunk) and its 16 row tiles' weights (TMA,
// 8 KB), PREFETCH = STAGES - 2 tiles ahead. Thread 0 issues the copies; `full` mbarriers
// (TMA byte counts) tell the warps a stage has landed and `empty` ones (one arrival per
// warp) tell thread 0 every warp's wgmmas are done with it, so no CTA barrier sits in
// the loop and warpgroups drift by up to a tile. Each k tile goes out in PF_PARTS commit
// groups with their own A registers: a warpgroup decodes one part while up to three of
// its groups run, and waits for the group that last read a register set only before
// it overwrites it.
//
// Budget per k tile per CTA (f16): 2 x 16 m64n128k16 wgmma = 8.4 MFLOP, 2048 cycles at
// the H100's dense rate; per warp 2 x 8 x 4 decode_pair (~150 instructions); shared
// memory read by the tensor cores 64 KB (half its bandwidth); 40 KB loaded by TMA.
// Registers: 128 accumulators + 4 x 16 A (~235 of 255 in all).
// Measured (H100, bench/results/2026-11-26-h100-prefill, development runs 5 and 8): 28672
// x 8192 at 2048 tokens 1.37-1.41 ms f16 (0.93-0.95x cuBLAS f16), 0.75-0.76 ms int8
// (1.71-1.75x); the tensor pipe is busy 83% of the time. The unswizzled layout ran 2.5x
// slower, cp.async with a CTA barrier per tile 1.1-1.2x, two parts instead of four
// 1.02-1.05x; persistent CTAs were no faster (docs/NOTES.md, v28). With the epilogue of
// v29 (bench/results/2026-11-26-h100-prefill-mma, final-1db0370): 1.37 ms f16 (0.98x),
// 0.71 ms int8 (1.89x). Split K (`_p128k`, below gemm_prefill's arguments) for grids that
// leave SMs idle: 8192 x 28672 at 128 tokens 114 vs 241 µs (development run 5, one call),
// at 256 186 (final-2396a18) vs 290 (final-1db0370); a first version over clusters ran 40% slower even where its exchange
// never ran (v29), this one uses global memory (v30).
#pragma once
#include "gemm_split.cuh"

constexpr u32 PF_TOKENS = WB_PREFILL_TOKENS;        // tokens per CTA
constexpr u32 PF_ROW_TILES = WB_PREFILL_ROW_TILES;  // row tiles per CTA
constexpr u32 PF_THREADS = WB_PREFILL_THREADS;

template <int ACT>
struct PrefillX {
    static constexpr u32 XB = ACT == ACT_I8 ? 1 : 2;  // bytes per activation
    static constexpr u32 STEPS = ACT == ACT_I8 ? 4 : 8;  // MMA k steps per k tile
    static constexpr u32 X_STAGE = PF_TOKENS * TILE_COLS * XB;
    static constexpr u32 W_STAGE = PF_ROW_TILES * TILE_WEIGHT_BYTES;
    static constexpr u32 STAGES = ACT == ACT_I8 ? WB_PREFILL_STAGES_I8 : WB_PREFILL_STAGES_16;
    // Mirrored by `prefill_smem` in cuda/plan (checked at compile time); 1 KB to align the
    // stages for the swizzle.
    static constexpr u32 SMEM = STAGES * (X_STAGE + W_STAGE) + 1024;
};

// Int8 activations: the CTA's 128 tokens' x_scale and sum(x) (the pre-pass's, after the
// rewritten activations: quant.cu), staged in shared memory before the main loop by
// threads 0 .. 127, so that the epilogue reads them at shared-memory latency.
struct TokenFactors {
    float scale[PF_TOKENS];
    u32 sum[PF_TOKENS];
};
template <int ACT, int OUT>
__device__ __forceinline__ void load_token_factors(const GemmParams& p, u32 b_base, TokenFactors& tf) {
    if (ACT != ACT_I8 || threadIdx.x >= PF_TOKENS) return;
    const int* const xsum = (const int*)((const unsigned char*)p.x + (u64)p.batch * p.k_tiles * 128);
    const u32 tok = b_base + threadIdx.x;
    const bool live = tok < p.batch;
    tf.scale[threadIdx.x] = live && OUT != OUT_I32 ? p.x_scale[tok] : 0.f;
    tf.sum[threadIdx.x] = live ? (u32)xsum[tok] : 0;
}

// The epilogue of both prefill kernels: a thread's accumulators of R row tiles x T token
// groups (value (r, t, e): row row0[r] + g + 8 (e / 2), token tok0 + 8 t + 2 q + e % 2 of
// the CTA's block from b_base) scaled into y. Nothing in it waits for global memory: the
// 2 R rows' w_scale and bias are loaded first, the tokens' factors come from shared memory,
// and y is stored through asm the compiler may move loads across (y never overlaps the
// inputs). Before, each value loaded its factors from global memory after the previous
// value's store, which it had to wait for: the kernel ran 4-10% slower (docs/NOTES.md, v29).
// `others(r, t, f, i)` adds the other K slices' sums of group (r, t) to f (f16/bf16) or i
// (int8), with split K. (Adding them into `acc` instead made ptxas serialize the wgmmas.)
template <int ACT, int OUT, bool INT2, int R, int T, class Others>
__device__ __forceinline__ void prefill_epilogue(const GemmParams& p, const SplitAcc<ACT, T, R>& acc,
                                                 const u32 (&row0)[R], u32 b_base, u32 tok0, const TokenFactors& tf,
                                                 Others others) {
    const u32 lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    RowFactors rf[R][2];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const u32 row = row0[r] + g + 8 * h;
            rf[r][h] = row < p.rows ? row_factors<OUT>(p, row) : RowFactors{1.f, 0.f};
        }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < T; t++) {
            float f[4];
            u32 i[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                f[e] = acc.f[r][t][e];
                i[e] = (u32)acc.i[r][t][e];
            }
            others(r, t, f, i);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const u32 row = row0[r] + g + 8 * (e / 2), tok = tok0 + 8 * t + 2 * q + e % 2;
                if (row >= p.rows || tok >= p.batch) continue;
                float y = f[e];
                if constexpr (ACT == ACT_I8) {
                    // Ternary: sum (c - 1) x. INT2: sum (2c - 3) x. (Unsigned: see MAX_W2A8_COLS.)
                    const u32 s = i[e], sx = tf.sum[tok - b_base];
                    const int sum = (int)(INT2 ? 2u * s - 3u * sx : s - sx);
                    if (OUT == OUT_I32) {
                        st_global_u32((int*)p.y + (u64)tok * p.ldy + row, (u32)sum);
                        continue;
                    }
                    y = (float)sum * (INT2 ? 0.5f : 1.f) * tf.scale[tok - b_base];
                }
                y = apply_row(p, y, rf[r][e / 2]);
                st_global_u16((u16*)p.y + (u64)tok * p.ldy + row, OUT == OUT_BF16 ? f32_to_bf16(y) : f32_to_f16(y));
            }
        }
}

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

// A k tile's MMAs go out in PF_PARTS commit groups of PF_SPP<ACT> k steps, each with its
// own A registers.
constexpr int PF_PARTS = 4;
template <int ACT>
constexpr int PF_SPP = PrefillX<ACT>::STEPS / PF_PARTS;
template <int ACT>
using PfA = u32[PF_SPP<ACT>][2][4];  // [k step of the part][m64 block][4]

template <int ACT>
__device__ __forceinline__ void pf_keep(PfA<ACT>& a) {
#pragma unroll
    for (int j = 0; j < PF_SPP<ACT>; j++)
#pragma unroll
        for (int b = 0; b < 2; b++)
#pragma unroll
            for (int e = 0; e < 4; e++) fence_operand(a[j][b][e]);
}

// Part P of one k tile of the warp's two row tiles as A registers.
template <int ACT, bool INT2, int P, int J = 0>
__device__ __forceinline__ void pf_decode(const u32x4 (&w)[2], PfA<ACT>& a) {
    if constexpr (J < PF_SPP<ACT>) {
        constexpr int STEP = P * PF_SPP<ACT> + J;
#pragma unroll
        for (int b = 0; b < 2; b++) {
            if constexpr (ACT == ACT_I8) quad_fragment(w[b].x, w[b].y, w[b].z, w[b].w, STEP, a[J][b]);
            else pair_fragment<ACT, INT2, STEP>(w[b].x, w[b].y, w[b].z, w[b].w, a[J][b]);
        }
        pf_decode<ACT, INT2, P, J + 1>(w, a);
    } else {
        pf_keep<ACT>(a);
    }
}

// The accumulators: the split kernels' (gemm_split.cuh), two m64 blocks of 16 token groups.
template <int ACT>
using PfAcc = SplitAcc<ACT, PF_TOKENS / 8, 2>;

// The wgmmas of part P of a k tile whose activations sit at shared address `xs`, one
// commit group.
template <int ACT, int P>
__device__ __forceinline__ void pf_issue(PfA<ACT>& a, u32 xs, PfAcc<ACT>& acc) {
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < PF_SPP<ACT>; j++)
#pragma unroll
        for (int b = 0; b < 2; b++) {
            const u64 desc = pf_desc(xs, P * PF_SPP<ACT> + j);
            if constexpr (ACT == ACT_I8)
                wgmma(reinterpret_cast<int(&)[PF_TOKENS / 2]>(acc.i[b]), a[j][b][0], a[j][b][1], a[j][b][2], a[j][b][3], desc);
            else
                wgmma(reinterpret_cast<float(&)[PF_TOKENS / 2]>(acc.f[b]), a[j][b][0], a[j][b][1], a[j][b][2], a[j][b][3],
                      desc, Act<ACT>{});
        }
    wgmma_commit();
}

// An opaque CUtensorMap (cuTensorMapEncodeTiled), passed as a __grid_constant__ kernel
// parameter: the TMA unit reads it through its generic address.
struct __align__(64) TmaMap {
    u64 opaque[16];
};

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// Waits until the phase of `bar` with this parity has completed.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done;
    do {
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
    } while (!done);
}
// The box of `map` at (c0, c1) into shared memory at `dst`; completes on `bar` as bytes.
__device__ __forceinline__ void tma_load(u32 dst, const TmaMap& map, u32 c0, u32 c1, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(dst),
        "l"((u64)&map), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

// Parts P .. PF_PARTS - 1 of k tile kt. Part P first waits for part P of tile kt - 1
// (the older groups: PF_PARTS - 1 stay in flight), which last read a[P]; after the last
// part of tile kt - 1, lane 0 (`empty` nonzero) releases that tile's stage.
template <int ACT, bool INT2, u32 STAGES, int P = 0>
__device__ __forceinline__ void pf_parts(PfA<ACT> (&a)[PF_PARTS], const u32x4 (&w)[2], u32 xs, PfAcc<ACT>& acc, u32 kt,
                                         u32 empty) {
    if constexpr (P < PF_PARTS) {
        wgmma_wait<PF_PARTS - 1>();
        pf_keep<ACT>(a[P]);
        if (P == PF_PARTS - 1 && kt > 0 && empty != 0) mbar_arrive(empty + 8 * ((kt - 1) % STAGES));
        pf_decode<ACT, INT2, P>(w, a[P]);
        pf_issue<ACT, P>(a[P], xs, acc);
        pf_parts<ACT, INT2, STAGES, P + 1>(a, w, xs, acc, kt, empty);
    }
}

// Split K ("_p128k"): the S = gridDim.x / tiles consecutive CTAs of a tile take one K slice
// each (rank r: k tiles r * per .. (r + 1) * per - 1, per = ceil(k_tiles / S); a slice may be
// empty). Each stores its accumulators as PF_QUADS quads of 4 values per thread (quad c =
// group (c / 16, c % 16) of PfAcc) into `partial` ([CTA][quad][thread], 16 bytes each: the
// threads of a quad consecutive, 128 KB per CTA), then counts itself in `counters[tile]`
// (zeroed by the host before the launch); the CTA that counts last sums every slice's quads
// (the others' from L2) in slice order, whichever CTA it is, so that a launch's output does
// not depend on which finished last. No cluster instructions: a kernel that only held a
// cluster exchange ran 10-40% slower (docs/NOTES.md, v29).
constexpr u32 PF_QUADS = 2 * PF_TOKENS / 8;

template <int ACT, int OUT, bool INT2, bool SPLIT>
__device__ __forceinline__ void gemm_prefill(const GemmParams& p, const TmaMap& x_map, const TmaMap& w_map,
                                             u32x4* partial, u32* counters) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    typedef PrefillX<ACT> X;
    constexpr u32 STAGES = X::STAGES, PREFETCH = STAGES - 2;
    extern __shared__ __align__(128) unsigned char smem[];
    // Per stage: `full` completes when its TMA bytes have landed, `empty` when every warp
    // has finished the wgmmas that read it.
    __shared__ __align__(8) u64 bars[2 * STAGES];
    __shared__ TokenFactors tf;
    // A launch with less shared memory than the stages need is a host bug.
    if (dynamic_smem_size() < X::SMEM) __trap();
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 token_blocks = (p.batch + PF_TOKENS - 1) / PF_TOKENS;
    const u32 tiles = token_blocks * ((p.rows + TILE_ROWS * PF_ROW_TILES - 1) / (TILE_ROWS * PF_ROW_TILES));
    const u32 S = SPLIT ? gridDim.x / tiles : 1, tile = blockIdx.x / S, rank = blockIdx.x % S;
    const u32 per = (p.k_tiles + S - 1) / S, kt0 = min(rank * per, p.k_tiles), kts = min(per, p.k_tiles - kt0);
    const u32 b_base = tile % token_blocks * PF_TOKENS;
    const u32 rt_base = tile / token_blocks * PF_ROW_TILES;
    const u32 base = pinned((smem_addr(smem) + 1023) & ~1023u);
    const u32 w_base = base + STAGES * X::X_STAGE;
    const u32 full = smem_addr(bars), empty = full + 8 * STAGES;
    if (threadIdx.x == 0) {
        for (u32 s = 0; s < STAGES; s++) {
            mbar_init(full + 8 * s, 1);
            mbar_init(empty + 8 * s, PF_THREADS / 32);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    load_token_factors<ACT, OUT>(p, b_base, tf);
    __syncthreads();

    // Thread 0 loads stage s (k tile kt0 + s) into slot s % STAGES: the activations of the CTA's 128 tokens
    // (the pre-pass's layout; TMA swizzles them as pf_chunk says and zero-fills tokens past
    // the batch) and its 16 row tiles' weights (zeros past the last: the epilogue drops
    // those rows). The slot's previous stage, s - STAGES, must have been read by every warp.
    const auto produce = [&](u32 s) {
        const u32 slot = s % STAGES;
        if (s >= STAGES) mbar_wait(empty + 8 * slot, (s / STAGES - 1) & 1);
        mbar_expect_tx(full + 8 * slot, X::X_STAGE + X::W_STAGE);
#pragma unroll
        for (u32 a = 0; a < X::X_STAGE / 16384; a++)
            tma_load(base + slot * X::X_STAGE + a * 16384, x_map, (kt0 + s) * 128 + a * (128 / X::XB), b_base,
                     full + 8 * slot);
        tma_load(w_base + slot * X::W_STAGE, w_map, (kt0 + s) * 128, rt_base, full + 8 * slot);
    };
    PfAcc<ACT> acc = {};
    fence_accumulators(acc);

    if (threadIdx.x == 0)
        for (u32 s = 0; s < min(PREFETCH, kts); s++) produce(s);
    const u32 h = warp / 4, my_tiles = 8 * h + warp % 4;  // and my_tiles + 4
    PfA<ACT> a[PF_PARTS] = {};
    // PF_PARTS - 1 groups stay in flight while the next part is decoded: before it decodes
    // part P of a tile into a[P], a warpgroup waits only for part P of the previous tile
    // (after the last part, that tile's stage is free: `empty`).
    const u32 released = lane == 0 ? empty : 0;  // lane 0 releases its warp's stages
    for (u32 kt = 0; kt < kts; kt++) {
        // Stage kt + PREFETCH reuses the slot of kt - 2, which every warp has released
        // by its previous tile: the wait rarely blocks.
        if (threadIdx.x == 0 && kt + PREFETCH < kts) produce(kt + PREFETCH);
        const u32 slot = kt % STAGES;
        mbar_wait(full + 8 * slot, (kt / STAGES) & 1);
        const u32 xs = base + slot * X::X_STAGE;
        u32x4 w[2];
#pragma unroll
        for (int b = 0; b < 2; b++) w[b] = lds128(w_base + slot * X::W_STAGE + (my_tiles + 4 * b) * 512 + lane * 16);
        pf_parts<ACT, INT2, STAGES>(a, w, xs, acc, kt, released);
    }
    wgmma_wait<0>();
    fence_accumulators(acc);

    // Quad c of CTA `cta` of this thread.
    const auto quad = [&](u32 cta, u32 c) { return partial + ((u64)cta * PF_QUADS + c) * PF_THREADS + threadIdx.x; };
    if constexpr (SPLIT) {
        __shared__ u32 last;
#pragma unroll
        for (u32 c = 0; c < PF_QUADS; c++) {
            const u32 b = c / (PF_TOKENS / 8), t = c % (PF_TOKENS / 8);
            if constexpr (ACT == ACT_I8)
                *quad(blockIdx.x, c) = {(u32)acc.i[b][t][0], (u32)acc.i[b][t][1], (u32)acc.i[b][t][2], (u32)acc.i[b][t][3]};
            else
                *quad(blockIdx.x, c) = {__float_as_uint(acc.f[b][t][0]), __float_as_uint(acc.f[b][t][1]),
                                        __float_as_uint(acc.f[b][t][2]), __float_as_uint(acc.f[b][t][3])};
        }
        __threadfence();  // the quads are visible before the count that announces them
        __syncthreads();
        if (threadIdx.x == 0) last = atomicAdd(&counters[tile], 1) == S - 1;
        __syncthreads();
        if (!last) return;
        __threadfence();  // and read after it
    }
    const u32 row0[2] = {16 * (rt_base + my_tiles), 16 * (rt_base + my_tiles + 4)};
    prefill_epilogue<ACT, OUT, INT2>(p, acc, row0, b_base, b_base, tf, [&](int b, int t, float (&f)[4], u32 (&i)[4]) {
        if constexpr (SPLIT) {
            const float mine_f[4] = {f[0], f[1], f[2], f[3]};
            const u32 mine_i[4] = {i[0], i[1], i[2], i[3]};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                f[e] = 0.f;
                i[e] = 0;
            }
            for (u32 src = tile * S; src < tile * S + S; src++) {
                const bool mine = src == blockIdx.x;
                const u32x4 v = mine ? u32x4{} : load_cg_v4(quad(src, b * (PF_TOKENS / 8) + t));
                const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    f[e] += mine ? mine_f[e] : __uint_as_float(w[e]);
                    i[e] += mine ? mine_i[e] : w[e];
                }
            }
        }
    });
#else
    __trap();  // the planner takes the prefill kernel only on sm_90a
#endif
}

// Symbols: gemm_{t2|int2}_{activation}_{output}_p128 (whole K) and _p128k (split K); built
// by `gemm_symbol`. `partial` and `counters` are read by the split kernels only.
#define GEMM_PREFILL_KERNEL(ACT, OUT, INT2, SPLIT, NAME)                                                   \
    extern "C" __global__ void __launch_bounds__(PF_THREADS, 1)                                            \
        NAME(const GemmParams p, const __grid_constant__ TmaMap x_map, const __grid_constant__ TmaMap w_map, \
             u32x4* partial, u32* counters) {                                                               \
        gemm_prefill<ACT, OUT, INT2, SPLIT>(p, x_map, w_map, partial, counters);                           \
    }
