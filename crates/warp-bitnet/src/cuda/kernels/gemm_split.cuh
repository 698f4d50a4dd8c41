// Split-K kernels for 9-64 tokens per CTA, sm_90 thread-block clusters: "_s{T}" with
// gemm.cuh's mma.sync MMAs, "_w{T}" with warpgroup MMAs (wgmma, sm_90a; wgmma.cuh).
// Same T2 tiles and decode as gemm.cuh; what changes is who holds what.
//
// Why: the token-group kernels of gemm.cuh keep each warp's activations in registers
// (16 per token group) and decode every weight once per group of 8-16 tokens, so at 16
// tokens they run 2 warps per scheduler (238 registers) and at 64 tokens decode each
// weight four times. Here a CTA stages its tokens' activations for one K slice in
// shared memory once, for its whole life, and every weight is decoded once for all T
// tokens.
//
// Mapping: the grid is clusters of S CTAs (S = cluster size, chosen by the planner);
// CTA rank r of a cluster owns k tiles [r*per, (r+1)*per), per = ceil(k_tiles / S),
// and stages X[T tokens, that slice] in dynamic shared memory. Warp w owns a row pair
// (two 16-row tiles: each activation fragment read from shared memory feeds two MMAs)
// and walks the slice: in round i the W warps of each rank of a cluster take row pairs
// (cluster + i * clusters) * W + w, the same pairs in every rank. Weights stream through
// a private per-warp cp.async ring that runs on across rounds (no CTA barrier in the
// main loop). At the end of a round, the partial sums of warp w belong to rank w % S
// (S divides the warps per CTA): each warp stores them into its owner's shared memory
// (st.shared::cluster: stores do not wait for a round trip, remote loads would), the
// cluster synchronizes, and each rank sums its warps' values over the S slices from its
// own shared memory, then applies scale, bias and the conversion (the i8 kernels
// subtract each slice's sum(x) before they send).
// wgmma: the unit of a round is 4 RW row tiles per warpgroup (warp i of the warpgroup
// takes tiles i and, with RW = 2, 4 + i: its rows of RW m64 blocks); the partial sums
// sit in the same registers as mma.sync's (wgmma.cuh), so the reduction is shared.
//
// Staged activations, per token, per k tile: 256 bytes (f16/bf16) or 128 (i8). The
// 8 bytes lane (g, q) needs for slot pair s (f16: columns 32q + 4s..4s+3, the B
// fragment as it is) or quad j (i8: columns 32q + {4j, 4j+16, 4j+1, 4j+17, 4j+2, 4j+18,
// 4j+3, 4j+19}, the B registers the MMA needs, permuted once when staged) sit at
// 32s + 8q; a token's row is padded to 32 mod 128 bytes, so the 16 lanes of a half warp
// (4 tokens x 4 q) read 128 distinct bytes: no bank conflicts. wgmma: the same 8 bytes
// as two words, k values 2q, 2q+1 and 8+2q, 9+2q (i8: 4q.. and 16+4q..) of the MMA's k
// step, in wgmma.cuh's core-matrix layout (SplitX::wg_tile).
//
// Budget per 2048-weight tile per warp (f16, T tokens): 64 LOP3/HFMA2 (decode) + T HMMA
// + T/2 LDS.64 + ~3 (ring) instructions; shared memory 128 T bytes. At T = 16 that is ~90
// instructions (the read-bound H100 allows ~210 issue slots per tile per SM) and the
// H100's mma.sync rate bounds T = 64 at ~1.5 cycles per HMMA: ~96 cycles a tile, about
// 2x the weight read. i8: 32 decode + T/2 IMMA + T/4 LDS.64.
// wgmma replaces the T HMMA + T/2 LDS with RW x 8 wgmma per warpgroup (int8: RW x 4; one
// per m64 block and k step), which run at the full tensor rate (mma.sync: ~60% of it).
// Measured (H100, 4f6c4ff, mma.sync): the f16 T = 16 loop holds 123 instructions per tile
// (~65 of them decode, 16 HMMA; bench/results/2026-11-26-h100-4f6c4ff-split/development/
// sass-s16-loop.txt) and issues in 47% of cycles. Then (v27) a 32-way bank conflict in
// the reduction's reads (now fixed: lanes read consecutive 16 bytes) turned out to take
// half of the 64-token kernel's time. With wgmma (d386fe9,
// bench/results/2026-11-26-h100-d386fe9-wgmma/bench.json) 28672 x 8192 takes 43.5 / 57.3
// / 87.4 µs f16 and 31.6 / 35.8 / 53.1 µs i8 at 16 / 32 / 64 tokens (3.8 / 2.9 / 2.0x and
// 5.2 / 4.6 / 3.3x cuBLAS); the 64-token f16 kernel keeps the tensor pipe 42% busy and
// its warps spend 28% of their cycles at the round's cluster barriers (development/run6/
// stalls.txt there). Shapes with few row tiles lose to the token-group kernels; the
// planner's rule is in src/cuda/plan/split.rs (SPLIT_MIN_UTILIZATION) and the history in
// docs/NOTES.md (v25-v27).
#pragma once
#include "gemm.cuh"
#include "wgmma.cuh"

constexpr int SPLIT_DEPTH = WB_SPLIT_DEPTH;  // weight ring stages per warp (each RW tiles)
// Row tiles per warp: 2 (mma.sync: each B fragment read from shared memory feeds two
// MMAs; wgmma: two m64 blocks per warpgroup), 1 for the 64-token wgmma kernel, whose
// registers then fit 16 warps.
template <int NT, bool WG>
constexpr int SPLIT_RW = WG && NT == 8 ? 1 : 2;
// Warps per CTA: 16 while the registers allow (<= 128 per thread), so that 4 warps per
// scheduler hide the shared-memory and MMA latencies; 8 for 64 mma.sync tokens.
template <int NT, bool WG>
constexpr int SPLIT_WARPS = NT <= 4 || WG ? 16 : 8;

// Bytes per token per k tile of the staged activations, and a token's row stride for
// slices of `per` k tiles (32 mod 128, see above).
template <int ACT>
struct SplitX {
    static constexpr u32 TILE = TILE_COLS * (ACT == ACT_I8 ? 1 : 2);
    __device__ static constexpr u32 stride(u32 per) { return per * TILE + 32; }
    // wgmma variant: k tile kt, k step s, of T tokens sits at kt * wg_tile(T) +
    // s * wg_step(T) in wgmma.cuh's B layout; tiles are padded to 16 mod 128 bytes, so
    // that a warp staging 8 k tiles x 4 q of one token stores into 32 distinct banks.
    static constexpr u32 STEPS = ACT == ACT_I8 ? 4 : 8;  // MMA k steps per k tile
    __device__ static constexpr u32 wg_step(u32 tokens) { return tokens * 32; }
    __device__ static constexpr u32 wg_tile(u32 tokens) { return STEPS * tokens * 32 + 16; }
};

// Dynamic shared memory, in this order: weight rings, the partial sums this rank owns
// [source rank][owned warp][value group RW NT][lane][4] (f32 or i32 bits), the slice's per-token sum(x)
// (i8), then the staged activations. Mirrored by `split_fixed_smem` in src/cuda/plan/split.rs
// (a generated static_assert compares the two).
template <int NT, bool WG>
struct SplitSmem {
    static constexpr u32 RING = SPLIT_WARPS<NT, WG> * SPLIT_DEPTH * SPLIT_RW<NT, WG> * TILE_WEIGHT_BYTES;
    static constexpr u32 RED = SPLIT_WARPS<NT, WG> * 32 * SPLIT_RW<NT, WG> * NT * 4 * 4;
    static constexpr u32 XSUM = 8 * NT * 4;
    static constexpr u32 FIXED = RING + RED + XSUM;
};

__device__ __forceinline__ u32 cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ u32 cluster_ctas() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_arrive_relaxed() {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
// The shared-memory address `addr` (this CTA's address space) in cluster CTA `rank`.
__device__ __forceinline__ u32 map_rank(u32 addr, u32 rank) {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(addr), "r"(rank));
    return remote;
}
__device__ __forceinline__ void st_cluster128(u32 remote, u32 a, u32 b, u32 c, u32 d) {
    asm volatile("st.shared::cluster.v4.u32 [%0], {%1,%2,%3,%4};" ::"r"(remote), "r"(a), "r"(b), "r"(c), "r"(d)
                 : "memory");
}


__device__ __forceinline__ void sts32(u32 addr, u32 a) { asm volatile("st.shared.u32 [%0], %1;" ::"r"(addr), "r"(a)); }
__device__ __forceinline__ void sts64(u32 addr, u32 a, u32 b) {
    asm volatile("st.shared.v2.u32 [%0], {%1,%2};" ::"r"(addr), "r"(a), "r"(b));
}

// Stages tokens b_base .. b_base + tokens - 1, k tiles kt0 .. kt0 + kts - 1 (zeros past
// `cols` and `batch`) in the layout above; i8 also sums each token's slice into xsum.
// One unit = one token's 32 columns of one k tile for one q: consecutive threads read
// consecutive 32 columns of a token (coalesced). Each thread loads STAGE_BATCH units
// before it stores any (see batched_chunks).
// WG: the wgmma layout instead; `rs` is then unused.
template <int ACT, bool WG>
__device__ __forceinline__ void stage_slice(const GemmParams& p, u32 xs, u32 rs, u32 b_base, u32 tokens, u32 kt0,
                                            u32 kts, int* xsum) {
    constexpr int XB = ACT == ACT_I8 ? 1 : 2;
    const u32 n = tokens * kts * 4, fast_tiles = p.x_vec ? p.cols / TILE_COLS : 0;
    for (u32 c0 = threadIdx.x; c0 < n; c0 += STAGE_BATCH * blockDim.x) {
        XTile<ACT> v[STAGE_BATCH];
#pragma unroll
        for (int u = 0; u < STAGE_BATCH; u++) {
            const u32 c = c0 + u * blockDim.x;
            const u32 q = c % 4, kt = kt0 + (c / 4) % kts, b = b_base + c / (4 * kts);
            if (c >= n || b >= p.batch) {
#pragma unroll
                for (int i = 0; i < 8 * XB; i++) v[u].r[i] = 0;
            } else if (kt < fast_tiles) {
                load_x_tile<ACT>(v[u], (const unsigned char*)p.x + ((u64)b * p.ldx + 32 * q) * XB, kt);
            } else {
                v[u] = load_x_tile_slow<ACT>(p, b, kt, q);
            }
        }
#pragma unroll
        for (int u = 0; u < STAGE_BATCH; u++) {
            const u32 c = c0 + u * blockDim.x;
            if (c >= n) break;
            const u32 q = c % 4, kt = (c / 4) % kts, t = c / (4 * kts);
            // Slot pair / quad j: the MMA's k values 0..7 of lane q (first word) and 8..15.
            const auto store = [&](int j, u32 first, u32 second) {
                if constexpr (WG) {
                    const u32 dst = xs + kt * SplitX<ACT>::wg_tile(tokens) + j * SplitX<ACT>::wg_step(tokens) +
                                    (t / 8) * 256 + (t % 8) * 16 + 4 * q;
                    sts32(dst, first);
                    sts32(dst + 128, second);
                } else {
                    sts64(xs + t * rs + kt * SplitX<ACT>::TILE + 8 * q + 32 * j, first, second);
                }
            };
            if constexpr (ACT == ACT_I8) {
                int sum = 0;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const u32 lo = v[u].r[j], hi = v[u].r[j + 4];
                    store(j, prmt(lo, hi, 0x5140), prmt(lo, hi, 0x7362));
                    sum = dp4a(hi, 0x01010101u, dp4a(lo, 0x01010101u, sum));
                }
                if (sum != 0) atomicAdd(&xsum[t], sum);
            } else {
#pragma unroll
                for (int j = 0; j < 8; j++) store(j, v[u].r[2 * j], v[u].r[2 * j + 1]);
            }
        }
    }
}

template <int ACT, int NT, int RW>
struct SplitAcc {
    float f[RW][NT][4];
    int i[RW][NT][4];
};

// The 8 slot pairs of one row tile's words as A fragments, into a[s][r].
template <int ACT, bool INT2, int RW, int S = 0>
__device__ __forceinline__ void decode_steps(const u32x4& w, u32 (&a)[8][RW][4], int r) {
    if constexpr (S < 8) {
        pair_fragment<ACT, INT2, S>(w.x, w.y, w.z, w.w, a[S][r]);
        decode_steps<ACT, INT2, RW, S + 1>(w, a, r);
    }
}

// Slot pair S of two row tiles (f16/bf16 decode) times every token group.
template <int ACT, bool INT2, int NT, int S>
__device__ __forceinline__ void split_pair(const u32x4 (&wv)[2], const uint2* xk, u32 rs8, SplitAcc<ACT, NT, 2>& acc) {
    u32 a[2][4];
#pragma unroll
    for (int r = 0; r < 2; r++) pair_fragment<ACT, INT2, S>(wv[r].x, wv[r].y, wv[r].z, wv[r].w, a[r]);
#pragma unroll
    for (int t = 0; t < NT; t++) {
        const uint2 b = xk[t * rs8 + 4 * S];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            if (ACT == ACT_F16) mma_f16(acc.f[r][t], a[r][0], a[r][1], a[r][2], a[r][3], b.x, b.y);
            else mma_bf16(acc.f[r][t], a[r][0], a[r][1], a[r][2], a[r][3], b.x, b.y);
        }
    }
}

// Two row tiles' weights times the staged activations of one k tile (`xk`: lane's
// fragments for token g of the first group; groups are `rs8` fragments apart). Plain
// loads, not asm: the compiler may issue them ahead of the MMAs that wait for them.
template <int ACT, bool INT2, int NT>
__device__ __forceinline__ void split_tile(const u32x4 (&wv)[2], const uint2* xk, u32 rs8, SplitAcc<ACT, NT, 2>& acc) {
    if constexpr (ACT == ACT_I8) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u32 a[2][4];
#pragma unroll
            for (int r = 0; r < 2; r++) quad_fragment(wv[r].x, wv[r].y, wv[r].z, wv[r].w, j, a[r]);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const uint2 b = xk[t * rs8 + 4 * j];
#pragma unroll
                for (int r = 0; r < 2; r++) mma_i8(acc.i[r][t], a[r][0], a[r][1], a[r][2], a[r][3], b.x, b.y);
            }
        }
    } else {
        split_pair<ACT, INT2, NT, 0>(wv, xk, rs8, acc);
        split_pair<ACT, INT2, NT, 1>(wv, xk, rs8, acc);
        split_pair<ACT, INT2, NT, 2>(wv, xk, rs8, acc);
        split_pair<ACT, INT2, NT, 3>(wv, xk, rs8, acc);
        split_pair<ACT, INT2, NT, 4>(wv, xk, rs8, acc);
        split_pair<ACT, INT2, NT, 5>(wv, xk, rs8, acc);
        split_pair<ACT, INT2, NT, 6>(wv, xk, rs8, acc);
        split_pair<ACT, INT2, NT, 7>(wv, xk, rs8, acc);
    }
}

template <int ACT, int NT, int RW>
__device__ __forceinline__ void fence_accumulators(SplitAcc<ACT, NT, RW>& acc) {
#pragma unroll
    for (int r = 0; r < RW; r++)
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                if constexpr (ACT == ACT_I8) fence_operand(acc.i[r][t][e]);
                else fence_operand(acc.f[r][t][e]);
            }
}

// The wgmma variant of split_tile, in two halves. wg_decode: one k tile of the
// warp's two row tiles as A registers a[k step][r][4], all decoded before the first
// wgmma reads them. wg_issue: the warpgroup's RW 64-row blocks (warp i holds row
// tiles i and 4 + i of its unit) times the staged activations of that k tile at
// shared address `xk`, one commit group that the caller waits for. (Decoding the next
// tile while it runs measured no faster: docs/NOTES.md, v27.)
template <int ACT, int RW>
using WgA = u32[SplitX<ACT>::STEPS][RW][4];

template <int ACT, bool INT2, int RW>
__device__ __forceinline__ void wg_decode(const u32x4 (&wv)[RW], WgA<ACT, RW>& a) {
#pragma unroll
    for (int r = 0; r < RW; r++) {
        if constexpr (ACT == ACT_I8) {
#pragma unroll
            for (int j = 0; j < SplitX<ACT>::STEPS; j++) quad_fragment(wv[r].x, wv[r].y, wv[r].z, wv[r].w, j, a[j][r]);
        } else {
            decode_steps<ACT, INT2, RW>(wv[r], a, r);
        }
    }
#pragma unroll
    for (int j = 0; j < SplitX<ACT>::STEPS; j++)
#pragma unroll
        for (int r = 0; r < RW; r++)
#pragma unroll
            for (int e = 0; e < 4; e++) fence_operand(a[j][r][e]);
}

template <int ACT, int NT, int RW>
__device__ __forceinline__ void wg_issue(WgA<ACT, RW>& a, u32 xk, SplitAcc<ACT, NT, RW>& acc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr u32 STEP = SplitX<ACT>::wg_step(8 * NT);
    fence_accumulators(acc);
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < SplitX<ACT>::STEPS; j++)
#pragma unroll
        for (int r = 0; r < RW; r++) {
            const u64 desc = wgmma_desc(xk + j * STEP);
            if constexpr (ACT == ACT_I8)
                wgmma(reinterpret_cast<int(&)[4 * NT]>(acc.i[r]), a[j][r][0], a[j][r][1], a[j][r][2], a[j][r][3], desc);
            else
                wgmma(reinterpret_cast<float(&)[4 * NT]>(acc.f[r]), a[j][r][0], a[j][r][1], a[j][r][2], a[j][r][3], desc,
                      Act<ACT>{});
        }
    wgmma_commit();
#else
    __trap();  // the planner takes the wgmma variant only on sm_90a
#endif
}

template <int ACT, int OUT, int NT, bool INT2, bool WG>
__device__ __forceinline__ void gemm_split(const GemmParams& p) {
#if __CUDA_ARCH__ >= 900
    constexpr int RW = SPLIT_RW<NT, WG>;
    constexpr u32 T = 8 * NT, VALUES = RW * NT * 4, W = SPLIT_WARPS<NT, WG>;
    typedef SplitSmem<NT, WG> Smem;
    extern __shared__ __align__(16) unsigned char smem[];
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    const u32 S = cluster_ctas(), rank = cluster_rank();
    const u32 cluster = blockIdx.x / S, clusters = gridDim.x / S;
    const u32 per = (p.k_tiles + S - 1) / S;
    const u32 kt0 = min(rank * per, p.k_tiles), kts = min(per, p.k_tiles - kt0);
    const u32 rs = SplitX<ACT>::stride(per);
    const u32 x_bytes = WG ? per * SplitX<ACT>::wg_tile(T) : T * rs;
    // A launch with less shared memory than this layout, or a cluster size that does
    // not divide the warps, is a host bug.
    if (dynamic_smem_size() < Smem::FIXED + x_bytes || W % S != 0) __trap();
    const u32 base = pinned(smem_addr(smem));
    const u32 red = base + Smem::RING;
    int* const xsum = (int*)(smem + Smem::RING + Smem::RED);
    const u32 xs = base + Smem::FIXED;
    const u32 b_base = blockIdx.y * T;
    const u64 policy = evict_first_policy();

    // ---- units of row tiles: round i gives warp w unit (cluster + i * clusters) * UPC +
    // w (a pair: tiles 2u, 2u + 1), or warpgroup w / 4 the 4 RW tiles of RW m64 blocks
    // (warp w takes tiles 4 RW u + 4 r + w % 4, r < RW) ----
    constexpr u32 UPC = WG ? W / 4 : W;  // units per CTA and round
    constexpr u32 UNIT = WG ? 4 * RW : 2;  // row tiles per unit
    const u32 row_tiles = (p.rows + TILE_ROWS - 1) / TILE_ROWS, units = (row_tiles + UNIT - 1) / UNIT;
    const auto tile_of = [&](u32 unit, u32 w, u32 r) { return WG ? UNIT * unit + 4 * r + w % 4 : 2 * unit + r; };
    const u32 blocks = (units + UPC - 1) / UPC;
    const u32 rounds = blocks > cluster ? (blocks - cluster + clusters - 1) / clusters : 0;
    const u32 first = cluster * UPC + (WG ? warp / 4 : warp), stride_units = clusters * UPC;
    const u32 mine = units > first ? min(rounds, (units - first + stride_units - 1) / stride_units) : 0;
    const u32 total = mine * kts;

    // ---- weight ring: step f = (round f / kts, k tile f % kts) ----
    const u32 my_ring = base + (warp * SPLIT_DEPTH * RW * 32 + lane) * 16;
    const u64 tile_step = (u64)p.k_tiles * 32;
    u32 ahead = 0, a_kt = 0, a_unit = first;
    const auto produce = [&]() {  // one commit group per step, empty past the end
        if (ahead < total) {
            const u32x4* k0 = p.w + ((u64)kt0 + a_kt) * 32 + lane;
            const u32 slot = my_ring + (ahead % SPLIT_DEPTH) * RW * 512;
#pragma unroll
            for (int r = 0; r < RW; r++) {
                // Tiles past the last reload it; the epilogue drops their rows.
                const u32 tile = min(tile_of(a_unit, warp, r), row_tiles - 1);
                cp_async_16_evict_first(slot + r * 512, k0 + tile * tile_step, policy);
            }
            if (++a_kt == kts) {
                a_kt = 0;
                a_unit += stride_units;
            }
        }
        cp_async_commit();
        ahead++;
    };
#pragma unroll
    for (int t = 0; t < SPLIT_DEPTH - 1; t++) produce();

    // ---- stage this slice of the tokens' activations (overlapping the ring's loads) ----
    if (ACT == ACT_I8 && threadIdx.x < T) xsum[threadIdx.x] = 0;
    if (ACT == ACT_I8) __syncthreads();
    stage_slice<ACT, WG>(p, xs, rs, b_base, T, kt0, kts, xsum);
    if (WG) fence_proxy_async();
    __syncthreads();
    // Other ranks may store into this CTA's shared memory only once every CTA of the
    // cluster runs: the first round's wait pairs with this arrive.
    if (rounds > 0) cluster_arrive();

    const auto read_ring = [&](u32 f, u32x4(&dst)[RW]) {
#pragma unroll
        for (int r = 0; r < RW; r++) dst[r] = lds128(my_ring + ((f % SPLIT_DEPTH) * RW + r) * 512);
    };
    u32x4 wnext[RW];
    if (total > 0) {
        cp_async_wait<SPLIT_DEPTH - 2>();
        read_ring(0, wnext);
    }
    const uint2* const x_lane = (const uint2*)(smem + Smem::FIXED + g * rs + 8 * q);
    const u32 rs8 = rs;  // 8 tokens of rs bytes = rs fragments of 8 bytes
    // Partial sums: warp w's go to rank w % S, block (source rank) * W/S + w / S; in a
    // block, group rt = r * NT + t (values e = 0..3) of lane l at 16 (32 rt + l) bytes,
    // so that a warp's 16-byte stores and loads of a group are contiguous.
    const u32 per_owner = W / S;
    const u32 my_block = red + (rank * per_owner + warp / S) * 32 * VALUES * 4 + lane * 16;
    const u32 owner = warp % S;
    // The owner's share: warp w sums groups rt = w / per_owner (mod S) of owned warp
    // w % per_owner, i.e. of the sender warp (w % per_owner) * S + rank.
    const u32 owned = warp % per_owner, sender = owned * S + rank, phase = warp / per_owner;

    u32 f = 0;
    for (u32 i = 0; i < rounds; i++) {
        SplitAcc<ACT, NT, RW> acc = {};
        if (i < mine) {
            for (u32 kt = 0; kt < kts; kt++) {
                produce();
                u32x4 wcur[RW];
#pragma unroll
                for (int r = 0; r < RW; r++) wcur[r] = wnext[r];
                cp_async_wait<SPLIT_DEPTH - 2>();  // step f+1 has landed
                read_ring(f + 1, wnext);
                if constexpr (WG) {
                    WgA<ACT, RW> a;
                    wg_decode<ACT, INT2, RW>(wcur, a);
                    wg_issue<ACT, NT, RW>(a, xs + kt * SplitX<ACT>::wg_tile(T), acc);
                    wgmma_wait<0>();
                    fence_accumulators(acc);
                } else {
                    split_tile<ACT, INT2, NT>(wcur, x_lane + kt * (SplitX<ACT>::TILE / 8), rs8, acc);
                }
                f++;
            }
        }

        // ---- partial sums to the owner's shared memory, group r * NT + t (values e) ----
        cluster_wait();  // every CTA runs, and has read the previous round's sums
        const u32 remote = map_rank(my_block, owner);
#pragma unroll
        for (int r = 0; r < RW; r++)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                u32 v[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    if (ACT == ACT_I8) {
                        // Ternary: sum (c - 1) x. INT2: sum (2c - 3) x, twice the level sum.
                        // (Unsigned: the partial terms may wrap; the result fits, see MAX_W2A8_COLS.)
                        const u32 sx = (u32)xsum[8 * t + 2 * q + (e % 2)], s = (u32)acc.i[r][t][e];
                        v[e] = INT2 ? 2u * s - 3u * sx : s - sx;
                    } else {
                        v[e] = __float_as_uint(acc.f[r][t][e]);
                    }
                }
                st_cluster128(remote + (r * NT + t) * 512, v[0], v[1], v[2], v[3]);
            }
        cluster_arrive();
        cluster_wait();

        // ---- this rank's share of the values: sum over the slices, scale, bias, store ----
        const u32 unit = (cluster + i * clusters) * UPC + (WG ? sender / 4 : sender);
        const u32x4* const sums = (const u32x4*)(smem + Smem::RING) + owned * 32 * (VALUES / 4) + lane;
        const u32 block_stride = per_owner * 32 * (VALUES / 4);  // groups between source ranks
        for (u32 rt = phase; rt < VALUES / 4; rt += S) {
            const u32 r = rt / NT, t = rt % NT, tile = tile_of(unit, sender, r);
            u32 isum[4] = {0, 0, 0, 0};
            float fsum[4] = {0.f, 0.f, 0.f, 0.f};
            for (u32 k = 0; k < S; k++) {
                const u32x4 v = sums[k * block_stride + rt * 32];
                const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    isum[e] += w[e];
                    fsum[e] += __uint_as_float(w[e]);
                }
            }
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const u32 row = 16 * tile + g + 8 * (e / 2), b = b_base + 8 * t + 2 * q + (e % 2);
                if (row >= p.rows || b >= p.batch) continue;  // also the tiles past the last
                float y = fsum[e];
                if (ACT == ACT_I8) {
                    if (OUT == OUT_I32) {
                        ((int*)p.y)[(u64)b * p.ldy + row] = (int)isum[e];
                        continue;
                    }
                    y = (float)(int)isum[e] * (INT2 ? 0.5f : 1.f) * p.x_scale[b];
                }
                y = scale_bias<OUT>(p, y, row);
                u16* out = (u16*)p.y + (u64)b * p.ldy + row;
                *out = OUT == OUT_BF16 ? f32_to_bf16(y) : f32_to_f16(y);
            }
        }
        // The next round's stores into this rank wait for this arrive. Relaxed: the loads it
        // must follow have completed, since every value they returned fed a store issued
        // before it (and the asm's memory clobber keeps the compiler from moving them); a
        // release would also wait for those output stores to complete.
        cluster_arrive_relaxed();
    }
    if (rounds > 0) cluster_wait();  // pairs the last arrive: every CTA leaves with the barrier complete
    cp_async_wait<0>();
#else
    __trap();  // the planner takes these kernels only on sm_90 and newer
#endif
}

// Symbols: gemm_{t2|int2}_{activation}_{output}_{s|w}{8 NT} (w: wgmma); built by `gemm_symbol`.
#define GEMM_SPLIT_KERNEL(ACT, OUT, NT, INT2, WG, NAME)                                          \
    extern "C" __global__ void __launch_bounds__(SPLIT_WARPS<NT, WG> * 32, 1) NAME(const GemmParams p) { \
        gemm_split<ACT, OUT, NT, INT2, WG>(p);                                                 \
    }
