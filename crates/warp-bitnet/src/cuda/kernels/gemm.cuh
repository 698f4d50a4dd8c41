// The GEMM/GEMV family on 2-bit tiled weights: Y[B, M] = (X[B, N] . Wᵀ) * scale + bias,
// with W the ternary weights c - 1 (gemm_t2.cu) or the INT2 levels c - 1.5
// (gemm_int2.cu) of codes c in 0..3. Both files instantiate the template below.
//
// Layout (docs/FORMATS.md, "T2"; src/format/tiled.rs): tiles of 16 rows x 128
// columns, 512 bytes each; lane t of a warp loads its 16 bytes (4 words) of a tile.
// With g = t/4, q = t%4: words 0, 1 hold row g, words 2, 3 row g+8, columns
// 32q..32q+31; codes c (ternary: weight + 1) sit at
//
//   word w, slot t (bits 2t..2t+1), s = t % 8, h = t / 8:  column 32q + 4s + 2(w & 1) + h
//
// so slot pair s (bits 2s and 2s+16) of words 0..3 is one m16n8k16 A fragment
// (rows g, g+8; columns 4s..4s+3) and its B fragment is the lane's activations
// 4s..4s+3 exactly as loaded.
//
// Decode (thread-instructions per 16 weights):
//   f16, one token ("n1"): A = word & (0x00030003 << 2s) is the f16 pair c * 4^s *
//     2^-24 (subnormal, exact): one LOP3 per 2 weights, no arithmetic; slots 5-7
//     sit in the exponent bits and use word >> 10. MMAs of slot pairs with the same
//     4^s accumulate together (5 groups), scaled by 2^24 / 4^s at the end, and
//     sum(x) is subtracted: sum (c - 1) x. ~9 per word.
//   bf16, one token, large matrices ("bf16h", from 512 weight tiles per SM): the row
//     is staged as f16 times a power of two (stage_row) and takes the f16 decode above;
//     the conversion costs every CTA the whole row, so small matrices keep the next one.
//   f16 (2+ tokens), bf16: (word & mask) | 1024.0 (128.0 for bf16) is 1024 + c*4^s
//     (one LOP3), fma(h, 4^-s, -(1024*4^-s + 1)) = c - 1 exactly (one HFMA2).
//     ~17 per word (bf16 has 7 mantissa bits: shifts by 6 and 12, ~18).
//   i8: (word >> 2j) & 0x03030303 = one m16n8k32 A register; the B register is
//     one PRMT of two activation words. The MMA sums c * x; dp4a sums x.
//   INT2 differs only where the offset enters: the n1 f16 kernel subtracts 1.5 sum(x);
//     i8 forms sum (2c - 3) x = 2 sum c x - 3 sum x (twice the level sum, still an
//     integer); the HFMA2 decode subtracts 1024*4^-s + 1.5, which f16 (bf16) holds for
//     bit positions s >= 1 only, so slot pairs are shifted off position 0: f16 one
//     more SHF per word, bf16 two more (~18 and ~20 per word).
//   MMAs accumulate in f32 (i32 for i8); 8 tokens ride in the B fragment's columns.
//
// Thread mapping: a persistent CTA of 8 warps (grid = the CTAs that fit the GPU at
// once) takes 16-row tiles blockIdx.x, + gridDim.x, ... for 8*NT tokens
// (blockIdx.y picks the token group). Warp w takes k tiles w, w+8, ... of each row
// tile; its weights stream through a private shared-memory ring (8 stages, 4 for
// several token groups) filled by cp.async, which runs on across row tiles, so the
// loads never drain between them. Activations: the single-token kernels ("n1")
// stage the whole row once per CTA in dynamic shared memory and read it from there
// (the 8 lanes that share a column broadcast); the token-group kernels load them
// from global memory (L1/L2) one tile ahead, double-buffered in registers. At the
// end of a row tile the warps' partial sums meet in shared memory and the epilogue
// applies scale and bias and writes 16 rows x 8*NT tokens.
//
// Budget (batch 1, f16, per tile of 2048 weights per warp): 36 LOP3/SHF + 8 HMMA +
// 4 LDS (activations) + LDS + LDGSTS (weights) + ~10 loop = ~60 warp-instructions. At 3.0 TB/s on 132 SMs
// at 1.8 GHz an SM must finish a tile every ~41 cycles (164 issue slots), at 4.3
// TB/s (H200) every ~29 cycles (114 slots): bound by HBM if issue stays above ~50%.
// Measured (H100, 2026-11-26, a009edf): 28672 x 8192 in 28.6 µs (f16) / 27.3 µs (i8),
// 68% / 72% of copy bandwidth, 5.8x / 6.0x cuBLAS f16, where a plain read of the weights
// takes 25.5-26.3 µs (bench/probes/stream_read.cu). On an H200 the read takes 18.5 µs and
// these kernels the same as on the H100: there the issue rate above binds (ALU pipe 55%).
// The history is in docs/NOTES.md.
#pragma once
#include "quant.cuh"

#define ACT_F16 0
#define ACT_BF16 1
#define ACT_I8 2
// Where the activations come from: given in the kernel's type (QX_NONE), or an
// f16/bf16 row that the single-token kernel converts itself: quantized to int8
// (ACT_I8), or a bf16 row rescaled to f16 (ACT_F16, see stage_row).
#define QX_NONE 0
#define QX_F16 1
#define QX_BF16 2

#define OUT_F16 0
#define OUT_BF16 1
#define OUT_I32 2

#define WARPS WB_GEMM_WARPS

// (a & mask) | magic in one LOP3. Written out because the compiler otherwise emits
// an AND and an OR: LOP3 takes one immediate, and both constants were immediates.
template <u32 MASK>
__device__ __forceinline__ u32 and_or(u32 a, u32 magic) {
    u32 d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "n"(MASK), "r"(magic));
    return d;
}

// c - 1 for the f16 pair (1024 + c*4^j): scale 4^-j, offset -(1024*4^-j + 1).
constexpr u32 F16_SCALE[5] = {0x3C003C00, 0x34003400, 0x2C002C00, 0x24002400, 0x1C001C00};
constexpr u32 F16_OFFSET[5] = {0xE401E401, 0xDC04DC04, 0xD410D410, 0xCC40CC40, 0xC500C500};
// c - 1.5 (INT2): offset -(1024*4^-j + 1.5), representable for j >= 1 only.
constexpr u32 F16_OFFSET_INT2[5] = {0, 0xDC06DC06, 0xD418D418, 0xCC60CC60, 0xC580C580};
// The same for the bf16 pair (128 + c*4^j).
constexpr u32 BF16_SCALE[3] = {0x3F803F80, 0x3E803E80, 0x3D803D80};
constexpr u32 BF16_OFFSET[3] = {0xC301C301, 0xC204C204, 0xC110C110};
constexpr u32 BF16_OFFSET_INT2[3] = {0, 0xC206C206, 0xC118C118};
constexpr u32 PAIR_MASK[5] = {0x00030003u, 0x000C000Cu, 0x00300030u, 0x00C000C0u, 0x03000300u};

// Where slot pair s (bits 2s, 2s+16) is decoded: shifted right by pair_shift (left
// if negative) to bit position 2 * pair_pos. Ternary: f16 keeps s = 0..4 in place and
// moves 5..7 down by 10 bits; bf16 (7 mantissa bits) keeps 0..2 and moves 3..5 by 6,
// 6..7 by 12. INT2 avoids position 0 (see F16_OFFSET_INT2): f16 moves 0 up by 2 and
// 5..7 down by 8; bf16 moves 0 up by 2, 3 down by 4, 4..5 by 6, 6..7 by 10.
template <int ACT, bool INT2>
__device__ __forceinline__ constexpr int pair_shift(int s) {
    if (!INT2) return ACT == ACT_F16 ? (s < 5 ? 0 : 10) : 6 * (s / 3);
    if (s == 0) return -2;
    if (ACT == ACT_F16) return s < 5 ? 0 : 8;
    return s < 3 ? 0 : s == 3 ? 4 : s < 6 ? 6 : 10;
}
template <int ACT, bool INT2>
__device__ __forceinline__ constexpr int pair_pos(int s) {
    if (!INT2) return ACT == ACT_F16 ? (s < 5 ? s : s - 5) : s % 3;
    if (s == 0) return 1;
    if (ACT == ACT_F16) return s < 5 ? s : s - 4;
    return s == 2 || s == 5 || s == 7 ? 2 : 1;
}

template <int SHIFT>
__device__ __forceinline__ u32 shift_by(u32 word) {
    return SHIFT < 0 ? word << (-SHIFT & 31) : word >> (SHIFT & 31);
}

// Slot pair s of `word` as the A register c - 1 (ternary) or c - 1.5 (INT2), f16 or bf16 pair.
template <int ACT, bool INT2, int S>
__device__ __forceinline__ u32 decode_pair(u32 word) {
    constexpr int J = pair_pos<ACT, INT2>(S);
    const u32 src = shift_by<pair_shift<ACT, INT2>(S)>(word);
    if (ACT == ACT_F16)
        return hfma2_f16(and_or<PAIR_MASK[J]>(src, 0x64006400u), F16_SCALE[J], INT2 ? F16_OFFSET_INT2[J] : F16_OFFSET[J]);
    return hfma2_bf16(and_or<PAIR_MASK[J]>(src, 0x43004300u), BF16_SCALE[J], INT2 ? BF16_OFFSET_INT2[J] : BF16_OFFSET[J]);
}

// A lane's words 0..3 of a T2 tile as the A fragment of one MMA k step, in fragment
// order: row g (word 0), row g+8 (word 2), then the odd words.
// Slot pair S, f16/bf16, m16n8k16: c - 1 (ternary) or c - 1.5 (INT2).
template <int ACT, bool INT2, int S>
__device__ __forceinline__ void pair_fragment(u32 w0, u32 w1, u32 w2, u32 w3, u32 (&a)[4]) {
    a[0] = decode_pair<ACT, INT2, S>(w0);
    a[1] = decode_pair<ACT, INT2, S>(w2);
    a[2] = decode_pair<ACT, INT2, S>(w1);
    a[3] = decode_pair<ACT, INT2, S>(w3);
}
// Quad j, int8 m16n8k32: the codes c as bytes (columns 4j, 4j+16, 4j+1, 4j+17 of the
// lane's 32, +2 for the odd words).
__device__ __forceinline__ void quad_fragment(u32 w0, u32 w1, u32 w2, u32 w3, int j, u32 (&a)[4]) {
    a[0] = (w0 >> (2 * j)) & 0x03030303u;
    a[1] = (w2 >> (2 * j)) & 0x03030303u;
    a[2] = (w1 >> (2 * j)) & 0x03030303u;
    a[3] = (w3 >> (2 * j)) & 0x03030303u;
}

__device__ __forceinline__ void mma_f16(float c[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_bf16(float c[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_i8(int c[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// ---- weight ring ----------------------------------------------------------------
// Each warp owns DEPTH stages of 512 bytes (lane t's 16 bytes at 16t). A lane reads
// back only what it copied itself, so no warp barrier sits between copy and read.

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async_16_evict_first(u32 dst, const void* src, u64 policy) {
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "l"(policy));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

__device__ __forceinline__ u32x4 lds128(u32 addr) {
    u32x4 v;
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
    return v;
}

// ---- activations ------------------------------------------------------------------
// A lane's activations for one tile of one token: columns 128 kt + 32 q + 0..31;
// r[i] holds columns 2i, 2i+1 (f16/bf16) or 4i..4i+3 (i8).
template <int ACT>
struct XTile {
    u32 r[ACT == ACT_I8 ? 8 : 16];
};

// Fast path: the whole tile lies inside `cols` and x allows 16-byte loads.
template <int ACT>
__device__ __forceinline__ void load_x_tile(XTile<ACT>& t, const unsigned char* lane_x, u32 kt) {
    constexpr int BYTES = ACT == ACT_I8 ? 32 : 64;  // 32 columns
    const unsigned char* p = lane_x + (u64)kt * TILE_COLS * (BYTES / 32);
#pragma unroll
    for (int i = 0; i < BYTES / 16; i++) {
        const u32x4 v = load_v4(p + 16 * i);
        t.r[4 * i] = v.x; t.r[4 * i + 1] = v.y; t.r[4 * i + 2] = v.z; t.r[4 * i + 3] = v.w;
    }
}

// Slow path (the last, partial tile; or unaligned x): element by element, zeros past `cols`.
template <int ACT>
__device__ __noinline__ XTile<ACT> load_x_tile_slow(const GemmParams& p, u32 b, u32 kt, u32 q) {
    XTile<ACT> t;
#pragma unroll
    for (int i = 0; i < (ACT == ACT_I8 ? 8 : 16); i++) t.r[i] = 0;
    const u32 k0 = kt * TILE_COLS + 32 * q;
    for (u32 i = 0; i < 32 && k0 + i < p.cols; i++) {
        if (ACT == ACT_I8) {
            const u32 v = (unsigned char)((const i8*)p.x)[(u64)b * p.ldx + k0 + i];
            t.r[i / 4] |= v << (8 * (i % 4));
        } else {
            const u32 v = ((const u16*)p.x)[(u64)b * p.ldx + k0 + i];
            t.r[i / 2] |= v << (16 * (i % 2));
        }
    }
    return t;
}

// ---- one tile ---------------------------------------------------------------------
// The single-token f16 kernel decodes to subnormals, accumulated per 4^s group.
template <int ACT, bool ONE>
constexpr bool SUBNORMAL = ONE && ACT == ACT_F16;

// Accumulators: f32 per token group (c - 1 decode), or per 4^s group, or i32.
template <int ACT, int NT, bool ONE>
struct Acc {
    float f[SUBNORMAL<ACT, ONE> ? 5 : NT][4];
    int i[NT][4];
    int xsum[NT];
};

template <int ACT, bool INT2, int NT, bool ONE, int S>
__device__ __forceinline__ void pair_mma(const u32 (&w)[4], const XTile<ACT> (&x)[NT], Acc<ACT, NT, ONE>& acc) {
    u32 a[4];
    if (SUBNORMAL<ACT, ONE>) {
#pragma unroll
        for (int k = 0; k < 4; k++) {
            // Fragment order as pair_fragment's. The subnormal decode needs no offset: it
            // keeps the ternary slot positions.
            const u32 word = w[(k & 1) * 2 + (k >> 1)];
            a[k] = (word >> pair_shift<ACT_F16, false>(S)) & PAIR_MASK[pair_pos<ACT_F16, false>(S)];
        }
    } else {
        pair_fragment<ACT, INT2, S>(w[0], w[1], w[2], w[3], a);
    }
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const u32 b0 = x[j].r[2 * S], b1 = x[j].r[2 * S + 1];
        if (SUBNORMAL<ACT, ONE>) mma_f16(acc.f[pair_pos<ACT_F16, false>(S)], a[0], a[1], a[2], a[3], b0, b1);
        else if (ACT == ACT_F16) mma_f16(acc.f[j], a[0], a[1], a[2], a[3], b0, b1);
        else mma_bf16(acc.f[j], a[0], a[1], a[2], a[3], b0, b1);
    }
}

template <int NT, bool ONE, int J>
__device__ __forceinline__ void quad_mma_i8(const u32 (&w)[4], const XTile<ACT_I8> (&x)[NT], Acc<ACT_I8, NT, ONE>& acc,
                                            bool count_x) {
    u32 a[4];
    quad_fragment(w[0], w[1], w[2], w[3], J, a);
#pragma unroll
    for (int j = 0; j < NT; j++) {
        // A bytes are columns (4J, 4J+16, 4J+1, 4J+17) (+2 for a2, a3): gather B to match.
        const u32 lo = x[j].r[J], hi = x[j].r[J + 4];
        mma_i8(acc.i[j], a[0], a[1], a[2], a[3], prmt(lo, hi, 0x5140), prmt(lo, hi, 0x7362));
        if (count_x) acc.xsum[j] = dp4a(hi, 0x01010101u, dp4a(lo, 0x01010101u, acc.xsum[j]));
    }
}

// count_x: also sum the activations (i8; needed once per k tile, not per row tile).
template <int ACT, bool INT2, int NT, bool ONE>
__device__ __forceinline__ void tile_mma(const u32x4& wv, const XTile<ACT> (&x)[NT], Acc<ACT, NT, ONE>& acc,
                                         bool count_x) {
    const u32 w[4] = {wv.x, wv.y, wv.z, wv.w};
    if constexpr (ACT == ACT_I8) {
        quad_mma_i8<NT, ONE, 0>(w, x, acc, count_x);
        quad_mma_i8<NT, ONE, 1>(w, x, acc, count_x);
        quad_mma_i8<NT, ONE, 2>(w, x, acc, count_x);
        quad_mma_i8<NT, ONE, 3>(w, x, acc, count_x);
    } else {
        pair_mma<ACT, INT2, NT, ONE, 0>(w, x, acc);
        pair_mma<ACT, INT2, NT, ONE, 1>(w, x, acc);
        pair_mma<ACT, INT2, NT, ONE, 2>(w, x, acc);
        pair_mma<ACT, INT2, NT, ONE, 3>(w, x, acc);
        pair_mma<ACT, INT2, NT, ONE, 4>(w, x, acc);
        pair_mma<ACT, INT2, NT, ONE, 5>(w, x, acc);
        pair_mma<ACT, INT2, NT, ONE, 6>(w, x, acc);
        pair_mma<ACT, INT2, NT, ONE, 7>(w, x, acc);
    }
}

// The end of every epilogue: y * w_scale + bias for row r, each step rounded as written.
// Left to itself the compiler contracts some kernels' multiply and add into one FMA and not
// others', and the one-launch W2A8 GEMV then differed from quantize + GEMM in the last bit
// where the bias cancels the product; quant.cu's w2a8_epilogue (the dense path) rounds
// the same way. `row_factors` loads row r's (an epilogue that stores many values per row
// loads them once, before its stores), `apply_row` applies them.
struct RowFactors {
    float scale, bias;
};
template <int OUT>
__device__ __forceinline__ RowFactors row_factors(const GemmParams& p, u32 r) {
    RowFactors f = {1.f, 0.f};
    if (p.w_scale != nullptr) f.scale = p.w_scale[p.scale_per_row ? r : 0];
    if (p.bias != nullptr) {
        const u16 h = ((const u16*)p.bias)[r];
        f.bias = OUT == OUT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
    return f;
}
__device__ __forceinline__ float apply_row(const GemmParams& p, float y, RowFactors f) {
    if (p.w_scale != nullptr) y = __fmul_rn(y, f.scale);
    return p.bias == nullptr ? y : __fadd_rn(y, f.bias);
}
template <int OUT>
__device__ __forceinline__ float scale_bias(const GemmParams& p, float y, u32 r) {
    return apply_row(p, y, row_factors<OUT>(p, r));
}

// The single-token kernels keep the whole activation row in (dynamic) shared
// memory, staged once per CTA: per k tile 256 bytes (f16/bf16) or 128 (i8), zeros
// past `cols`. A lane reads its 32 columns of a tile as chunks i = 0.. of 16 bytes;
// chunk (q, i) is stored at 16-byte slot 4i + q of the tile, so the four lanes q of
// a quarter warp read 64 consecutive bytes (no bank conflicts; the g lanes broadcast).
template <int ACT>
struct Staged {
    static constexpr u32 TILE_BYTES = TILE_COLS * (ACT == ACT_I8 ? 1 : 2);
    static constexpr u32 PER_LANE = TILE_BYTES / 64;  // chunks a lane reads per tile
    // Slot of chunk c (in row order) of the staged row.
    __device__ static constexpr u32 slot(u32 c) {
        const u32 per_tile = TILE_BYTES / 16, in_tile = c % per_tile;
        return c - in_tile + 4 * (in_tile % PER_LANE) + in_tile / PER_LANE;
    }
};

// `v` reduced over the CTA by `op` (sum or max), on every thread. Ends with a
// barrier, so `scratch` may be reused at once.
template <class Op>
__device__ __forceinline__ float cta_reduce(float v, float* scratch, Op op) {
    for (int o = 16; o > 0; o /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    v = scratch[0];
#pragma unroll
    for (int w = 1; w < WARPS; w++) v = op(v, scratch[w]);
    __syncthreads();
    return v;
}
__device__ __forceinline__ float add(float a, float b) { return a + b; }

// use(c, load(c)) for chunks c = threadIdx.x, + blockDim.x, ... below n, BATCH loads
// issued before the first use. A plain loop would wait out one L2 round trip per
// chunk: the loads are volatile asm, which the compiler keeps in program order.
template <int BATCH, class Load, class Use>
__device__ __forceinline__ void batched_chunks(u32 n, Load load, Use use) {
    for (u32 c0 = threadIdx.x; c0 < n; c0 += BATCH * blockDim.x) {
        u32x4 v[BATCH];
#pragma unroll
        for (int i = 0; i < BATCH; i++) {
            const u32 c = c0 + i * blockDim.x;
            if (c < n) v[i] = load(c);
        }
#pragma unroll
        for (int i = 0; i < BATCH; i++) {
            const u32 c = c0 + i * blockDim.x;
            if (c < n) use(c, v[i]);
        }
    }
}
constexpr int STAGE_BATCH = 4;

// Chunk c (16 bytes: PER values) of row 0, zeros past `cols`.
template <int PER>
__device__ __forceinline__ u32x4 row_chunk(const GemmParams& p, u32 c) {
    const unsigned char* row = (const unsigned char*)p.x;
    if (p.x_vec && PER * c + PER <= p.cols) return load_v4(row + 16 * c);
    u32 h[4] = {0, 0, 0, 0};
    for (u32 e = 0; e < PER && PER * c + e < p.cols; e++) {
        if (PER == 16) h[e / 4] |= (u32)row[PER * c + e] << (8 * (e % 4));
        else h[e / 2] |= (u32)((const u16*)row)[PER * c + e] << (16 * (e % 2));
    }
    return {h[0], h[1], h[2], h[3]};
}

// The largest |x| of row 0 (f16/bf16), on every thread.
template <bool BF16>
__device__ __forceinline__ float row_absmax(const GemmParams& p, float* scratch) {
    float amax = 0.f;
    batched_chunks<STAGE_BATCH>(
        (p.cols + 7) / 8, [&](u32 c) { return row_chunk<8>(p, c); },
        [&](u32, const u32x4& v) { amax = fmaxf(amax, absmax8<BF16>(v)); });
    return cta_reduce(amax, scratch, fmaxf);
}

// The power of two 2^e that brings a bf16 row of largest magnitude `amax` into f16:
// amax * 2^-e in [2^14, 2^15). Every value within 2^28 of amax then converts exactly
// (f16 has 11 significant bits, bf16 8), smaller ones round as f16 subnormals: their
// share of the dot product is below f32 accumulation rounding. Clamped so that 2^e and
// 2^-e are normal floats; infinities stay infinite, NaNs NaN.
__device__ __forceinline__ float bf16_row_exponent(float amax) {
    const int e = min(max((int)((__float_as_uint(amax) >> 23) & 0xff) - 127 - 14, -126), 126);
    return __uint_as_float((u32)(127 + e) << 23);
}

// The 8 bf16 values of a chunk as f16 values times `down` (a power of two); adds
// their sum to `sum`. Every CTA converts the whole row, so this is
// written for throughput: bf16 -> f32 is a shift or a mask, and one packed convert
// (F2FP) makes two f16; a scalar cvt per value cost ~1 µs per 8192 columns (H100).
// The sum is taken before rounding to f16, which is exact for every value that
// stays an f16 normal (bf16_row_exponent).
__device__ __forceinline__ u32x4 bf16x8_to_f16(const u32x4& v, float down, float& sum) {
    const u32 h[4] = {v.x, v.y, v.z, v.w};
    u32 out[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float lo = __uint_as_float(h[i] << 16) * down, hi = __uint_as_float(h[i] & 0xffff0000u) * down;
        sum += lo + hi;
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(out[i]) : "f"(hi), "f"(lo));
    }
    return {out[0], out[1], out[2], out[3]};
}

__device__ __forceinline__ float sum8_f16(const u32x4& v) {
    const u32 h[4] = {v.x, v.y, v.z, v.w};
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 4; i++) s += f16_to_f32((u16)h[i]) + f16_to_f32((u16)(h[i] >> 16));
    return s;
}

__device__ __forceinline__ void sts128(u32 addr, const u32x4& v) {
    asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w));
}

// Stages row 0 of x (zeros past `cols`). Returns, on every thread, sum(x) for f16
// (the subnormal decode subtracts it) and 0 otherwise. FROM_BF16: x is bf16, staged as
// f16 x * 2^-e (bf16_row_exponent; 2^e goes to *unscale): the row is copied as it is,
// then converted in place, each thread converting the chunks it copied, so the row
// is read from global memory once. Issued after the weight ring is primed, so its
// loads overlap the weights' latency.
template <int ACT, bool FROM_BF16 = false>
__device__ __forceinline__ float stage_row(const GemmParams& p, u32 xs, float* scratch, float* unscale = nullptr) {
    typedef Staged<ACT> S;
    const u32 chunks = p.k_tiles * (S::TILE_BYTES / 16);
    float s = 0.f, amax = 0.f;
    batched_chunks<STAGE_BATCH>(
        chunks, [&](u32 c) { return row_chunk<ACT == ACT_I8 ? 16 : 8>(p, c); },
        [&](u32 c, const u32x4& v) {
            if (FROM_BF16) amax = fmaxf(amax, absmax8<true>(v));
            else if (ACT == ACT_F16) s += sum8_f16(v);
            sts128(xs + 16 * S::slot(c), v);
        });
    if (FROM_BF16) {
        *unscale = bf16_row_exponent(cta_reduce(amax, scratch, fmaxf));
        const float down = 1.f / *unscale;
        batched_chunks<STAGE_BATCH>(
            chunks, [&](u32 c) { return lds128(xs + 16 * S::slot(c)); },
            [&](u32 c, const u32x4& raw) {
                sts128(xs + 16 * S::slot(c), bf16x8_to_f16(raw, down, s));
            });
    }
    if (ACT != ACT_F16) {
        __syncthreads();
        return 0.f;
    }
    return cta_reduce(s, scratch, add);
}

// Stages row 0 of f16/bf16 x quantized to int8 in the Staged<ACT_I8> layout (zeros
// past `cols`); returns the dequantization factor 1 / s on every thread. Each chunk of
// 8 values becomes 8 bytes, half of a 16-byte staged slot.
template <bool BF16>
__device__ __forceinline__ float stage_row_quantized(const GemmParams& p, u32 xs, float* scratch) {
    const float s = quant_factor(row_absmax<BF16>(p, scratch));
    batched_chunks<STAGE_BATCH>(
        p.k_tiles * (Staged<ACT_I8>::TILE_BYTES / 8), [&](u32 c) { return row_chunk<8>(p, c); },
        [&](u32 c, const u32x4& v) {
            const u32x2 q = quantize8<BF16>(v, s);
            asm volatile("st.shared.v2.u32 [%0], {%1,%2};" ::"r"(xs + 16 * Staged<ACT_I8>::slot(c / 2) + 8 * (c % 2)),
                         "r"(q.x), "r"(q.y));
        });
    __syncthreads();
    return 1.0f / s;
}

// CTA shape: RT row tiles per CTA (a template parameter: each warp multiplies every
// one of them with the activations it loaded, so the activation traffic per weight
// byte falls by RT, but fewer CTAs share the rows; the planner picks among the
// instantiated RT, docs/NOTES.md v16-v19) and weight ring stages per warp. The
// planner sizes the dynamic shared memory (`gemm_fixed_smem` in src/cuda/plan, whose
// value a generated static_assert compares with GemmSmem); the kernel checks that it got
// enough (GemmSmem).
template <bool ONE>
constexpr int DEPTH_OF = ONE ? WB_GEMM_DEPTH_SINGLE : WB_GEMM_DEPTH;

// Dynamic shared memory, in this order: the weight rings, the warps' partial sums
// (f32 bits, or i32 for i8), the i8 activation sums, a reduction scratch, then the
// single-token kernels' staged activation row.
template <int NT, int RT, int DEPTH>
struct GemmSmem {
    static constexpr u32 RING = WARPS * DEPTH * RT * TILE_WEIGHT_BYTES;
    static constexpr u32 RED = WARPS * TILE_ROWS * RT * 8 * NT * 4;
    static constexpr u32 RED_X = WARPS * 8 * NT * 4;
    static constexpr u32 SCRATCH = 16 * ((WARPS * 4 + 15) / 16);
    static constexpr u32 FIXED = RING + RED + RED_X + SCRATCH;
};

// `v` through an opaque move: the compiler keeps it in a register instead of
// recomputing it in the main loop (for a dynamic shared memory address that costs an
// S2UR of the CTA id per use, measurably slower on the single-token i8 kernel).
__device__ __forceinline__ u32 pinned(u32 v) {
    u32 r;
    asm volatile("mov.b32 %0, %1;" : "=r"(r) : "r"(v));
    return r;
}

__device__ __forceinline__ u32 dynamic_smem_size() {
    u32 r;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
    return r;
}

template <int ACT, int OUT, int NT, int RT, bool ONE, bool INT2, int QX>
__device__ __forceinline__ void gemm_tiles(const GemmParams& p) {
    static_assert(!ONE || RT == 1, "single-token kernels take one row tile");
    constexpr int COLS = 8 * NT;  // tokens per CTA
    constexpr int XBYTES = ACT == ACT_I8 ? 1 : 2;
    constexpr int DEPTH = DEPTH_OF<ONE>;
    typedef GemmSmem<NT, RT, DEPTH> Smem;
    extern __shared__ __align__(16) unsigned char smem[];
    u32* const red = (u32*)(smem + Smem::RING);  // [WARPS][16 RT][COLS]
    int* const red_x = (int*)(smem + Smem::RING + Smem::RED);  // [WARPS][COLS]
    float* const scratch = (float*)(smem + Smem::RING + Smem::RED + Smem::RED_X);
    // A launch with less shared memory than this kernel's layout is a host bug.
    if (dynamic_smem_size() < Smem::FIXED) __trap();

    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 g = lane / 4, q = lane % 4;
    const u32 b_base = blockIdx.y * COLS;
    const u64 policy = evict_first_policy();

    Acc<ACT, NT, ONE> acc[RT];
    const auto reset = [&]() {
#pragma unroll
        for (int r = 0; r < RT; r++) {
#pragma unroll
            for (int j = 0; j < (SUBNORMAL<ACT, ONE> ? 5 : NT); j++)
#pragma unroll
                for (int i = 0; i < 4; i++) acc[r].f[j][i] = 0.f;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                acc[r].xsum[j] = 0;
#pragma unroll
                for (int i = 0; i < 4; i++) acc[r].i[j][i] = 0;
            }
        }
    };
    reset();

    // Tokens past `batch` read the last token (no divergence); the epilogue drops them.
    u32 tok[NT];
    const unsigned char* lane_x[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        tok[j] = min(b_base + 8 * j + g, p.batch - 1);
        lane_x[j] = (const unsigned char*)p.x + ((u64)tok[j] * p.ldx + 32 * q) * XBYTES;
    }

    // ---- persistent CTA: row blocks (RT row tiles) blockIdx.x, + gridDim.x, ...; each
    // warp takes k tiles warp, warp + 8, ... of every row block, as one stream of
    // `total` steps of RT tiles ----
    const u32 row_tiles = (p.rows + TILE_ROWS - 1) / TILE_ROWS;
    const u32 row_blocks = (row_tiles + RT - 1) / RT;
    const u32 my_blocks = (row_blocks - blockIdx.x + gridDim.x - 1) / gridDim.x;
    const u32 mine = p.k_tiles > warp ? (p.k_tiles - warp + WARPS - 1) / WARPS : 0;
    const u32 total = my_blocks * mine;
    const u32 fast_tiles = p.x_vec ? p.cols / TILE_COLS : 0;
    const u32 smem_base = pinned(smem_addr(smem));
    const u32 my_ring = smem_base + (warp * DEPTH * RT * 32 + lane) * 16;
    const u64 row_tile_step = (u64)p.k_tiles * 32;  // u32x4 per row tile

    // The ring's producer runs DEPTH-1 steps ahead: (row block, k step) of step `ahead`.
    // Row tiles past the last (a partial last block) reload the last one; the
    // epilogue drops their rows.
    u32 ahead = 0, a_t = 0, a_rb = blockIdx.x;
    const u32x4* a_ptr = p.w + ((u64)blockIdx.x * RT * p.k_tiles + warp) * 32 + lane;
    const auto produce = [&]() {  // one commit group per step, empty past the end
        if (ahead < total) {
            const u32 valid = min((u32)RT, row_tiles - a_rb * RT);
#pragma unroll
            for (int r = 0; r < RT; r++)
                cp_async_16_evict_first(my_ring + ((ahead % DEPTH) * RT + r) * 512,
                                        a_ptr + min((u32)r, valid - 1) * row_tile_step, policy);
            if (++a_t == mine) {
                a_t = 0;
                a_rb += gridDim.x;
                a_ptr += (u64)gridDim.x * RT * row_tile_step - (u64)(mine - 1) * WARPS * 32;
            } else {
                a_ptr += WARPS * 32;
            }
        }
        cp_async_commit();
        ahead++;
    };
#pragma unroll
    for (int t = 0; t < DEPTH - 1; t++) produce();
    const u32 xs = smem_base + Smem::FIXED;
    // f16 n1: sum(x) for the subnormal decode; quantizing n1: the dequantization factor.
    // bf16 as f16: the power of two the row was scaled down by.
    float x_total = 0.f, x_dequant = 0.f;
    if constexpr (ACT == ACT_I8 && QX != QX_NONE) {
        x_dequant = stage_row_quantized<QX == QX_BF16>(p, xs, scratch);
    } else if constexpr (QX == QX_BF16) {
        x_total = stage_row<ACT_F16, true>(p, xs, scratch, &x_dequant);
    } else if constexpr (ONE) {
        x_total = stage_row<ACT>(p, xs, scratch);
    }

    const auto load_x = [&](u32 kt, XTile<ACT>(&dst)[NT]) {
#pragma unroll
        for (int j = 0; j < NT; j++) {
            if (kt < fast_tiles) load_x_tile<ACT>(dst[j], lane_x[j], kt);
            else dst[j] = load_x_tile_slow<ACT>(p, tok[j], kt, q);
        }
    };
    const auto read_ring = [&](u32 f, u32x4(&dst)[RT]) {
#pragma unroll
        for (int r = 0; r < RT; r++) dst[r] = lds128(my_ring + ((f % DEPTH) * RT + r) * 512);
    };
    const auto multiply = [&](const u32x4(&w)[RT], const XTile<ACT>(&x)[NT]) {
#pragma unroll
        for (int r = 0; r < RT; r++) tile_mma<ACT, INT2, NT, ONE>(w[r], x, acc[r], r == 0);
    };
    // Step f (k step t of its row block): refill the ring, prefetch the next step's
    // activations into `nxt`, read the next step's weights from the ring, multiply.
    u32x4 wnext[RT];
    const auto step = [&](u32 f, u32 t, const XTile<ACT>(&cur)[NT], XTile<ACT>(&nxt)[NT]) {
        produce();
        if constexpr (!ONE) {
            if (f + 1 < total) load_x(warp + (t + 1 == mine ? 0 : t + 1) * WARPS, nxt);
        }
        u32x4 wcur[RT];
#pragma unroll
        for (int r = 0; r < RT; r++) wcur[r] = wnext[r];
        cp_async_wait<DEPTH - 2>();  // step f+1 has landed
        read_ring(f + 1, wnext);
        if constexpr (ONE) {  // the lane's 32 activations of this tile, from the staged row
            XTile<ACT> x[1];
            const u32 base = xs + (warp + t * WARPS) * Staged<ACT>::TILE_BYTES + 16 * q;
#pragma unroll
            for (int i = 0; i < (int)Staged<ACT>::PER_LANE; i++) {
                const u32x4 v = lds128(base + 64 * i);
                x[0].r[4 * i] = v.x; x[0].r[4 * i + 1] = v.y; x[0].r[4 * i + 2] = v.z; x[0].r[4 * i + 3] = v.w;
            }
            multiply(wcur, x);
        } else {
            multiply(wcur, cur);
        }
    };
    XTile<ACT> xa[NT], xb[NT];
    if (total > 0) {
        if (!ONE) load_x(warp, xa);
        cp_async_wait<DEPTH - 2>();
        read_ring(0, wnext);
    }

    u32 f = 0;
    for (u32 i = 0; i < my_blocks; i++) {
        const u32 rb = blockIdx.x + i * gridDim.x;
        // Two activation buffers, alternating, so no registers are copied per step.
        for (u32 t = 0; t < mine; t += 2) {
            step(f, t, xa, xb);
            f++;
            if (t + 1 < mine) {
                step(f, t + 1, xb, xa);
                f++;
            }
        }
        if (!ONE && (mine & 1)) {  // an odd count left the next step's activations in xb
#pragma unroll
            for (int j = 0; j < NT; j++) xa[j] = xb[j];
        }

        // ---- reduce the warps' partial sums in shared memory ----
        // C fragment: c0, c1 -> (row g, tokens 2q, 2q+1); c2, c3 -> (row g+8, same tokens).
#pragma unroll
        for (int r = 0; r < RT; r++) {
#pragma unroll
            for (int j = 0; j < NT; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const u32 row = 16 * r + g + 8 * (e / 2), col = 8 * j + 2 * q + (e % 2);
                    u32& slot = red[(warp * 16 * RT + row) * COLS + col];
                    if (ACT == ACT_I8) {
                        slot = (u32)acc[r].i[j][e];
                    } else if (SUBNORMAL<ACT, ONE>) {
                        // Group s holds 2^-24 * 4^s * sum c x: undo both scales.
                        float v = 0.f;
#pragma unroll
                        for (int s = 0; s < 5; s++) v += acc[r].f[s][e] * (float)(1 << (24 - 2 * s));
                        slot = __float_as_uint(v);
                    } else {
                        slot = __float_as_uint(acc[r].f[j][e]);
                    }
                }
            }
        }
        if (ACT == ACT_I8) {
#pragma unroll
            for (int j = 0; j < NT; j++) {
                int sx = acc[0].xsum[j];
                sx += __shfl_xor_sync(0xffffffffu, sx, 1);
                sx += __shfl_xor_sync(0xffffffffu, sx, 2);
                if (q == 0) red_x[warp * COLS + 8 * j + g] = sx;
            }
        }
        reset();
        __syncthreads();

        // ---- epilogue: scale, bias, convert, store ----
        for (u32 e = threadIdx.x; e < 16 * RT * COLS; e += blockDim.x) {
            const u32 row = e % (16 * RT), col = e / (16 * RT);
            const u32 r = rb * 16 * RT + row, b = b_base + col;
            if (r >= p.rows || b >= p.batch) continue;
            float v;
            if (ACT == ACT_I8) {
                int sum = 0, xs = 0;
#pragma unroll
                for (int w = 0; w < WARPS; w++) {
                    sum += (int)red[(w * 16 * RT + row) * COLS + col];
                    xs += red_x[w * COLS + col];
                }
                // Ternary: sum (c - 1) x. INT2: sum (2c - 3) x, twice the level sum.
                // (Unsigned: the partial terms may wrap; the result fits, see MAX_W2A8_COLS.)
                sum = INT2 ? (int)(2u * (u32)sum - 3u * (u32)xs) : sum - xs;
                if (OUT == OUT_I32) {
                    ((int*)p.y)[(u64)b * p.ldy + r] = sum;
                    continue;
                }
                v = (float)sum * (INT2 ? 0.5f : 1.f) * (QX != QX_NONE ? x_dequant : p.x_scale[b]);
            } else {
                v = 0.f;
#pragma unroll
                for (int w = 0; w < WARPS; w++) v += __uint_as_float(red[(w * 16 * RT + row) * COLS + col]);
                if (SUBNORMAL<ACT, ONE>) v -= (INT2 ? 1.5f : 1.f) * x_total;  // sum (c - off) x
                if (QX != QX_NONE) v *= x_dequant;
            }
            v = scale_bias<OUT>(p, v, r);
            u16* y = (u16*)p.y + (u64)b * p.ldy + r;
            *y = OUT == OUT_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
        }
        __syncthreads();  // `red` is rewritten for the next row block
    }
    cp_async_wait<0>();
}

// Kernel symbols: gemm_{t2|int2}_{activation}_{output}_n{tokens per CTA}, and for
// the token-group kernels _r{row tiles per CTA}; built by `gemm_symbol` in src/cuda/plan.
// n1 is the single-token kernel. MIN_CTAS caps registers so that many CTAs fit an SM
// without spilling in the main loop (checked in the resource report: ptxas -v).
#define GEMM_KERNEL(ACT, OUT, NT, RT, ONE, INT2, MIN_CTAS, NAME)                                 \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, MIN_CTAS) NAME(const GemmParams p) { \
        gemm_tiles<ACT, OUT, NT, RT, ONE, INT2, QX_NONE>(p);                                    \
    }
// The single-token kernels that convert their f16/bf16 activation row themselves:
// W2A8 quantizing it (ACT_I8), bf16 rescaled to f16 (ACT_F16, QX_BF16).
#define GEMM_KERNEL_QX(ACT, QX, OUT, INT2, MIN_CTAS, NAME)                                       \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, MIN_CTAS) NAME(const GemmParams p) { \
        gemm_tiles<ACT, OUT, 1, 1, true, INT2, QX>(p);                                          \
    }
