// Ternary GEMM/GEMV on T2 weights: Y[B, M] = (X[B, N] . Wtᵀ) * scale + bias.
//
// Layout (docs/FORMATS.md, "T2"): tiles of 16 rows x 128 columns, 512 bytes each;
// lane t of a warp loads its 16 bytes (4 words) of a tile with one coalesced
// LDG.128. Word w of lane t (g = t/4, q = t%4) holds codes c = weight + 1:
//
//   slot s at bits 2s..2s+1:  row g + 8(s & 1),  column 32q + 8w + kidx(s),
//   kidx(s) = bitreverse3(s >> 1): slots (s, s+8) are consecutive columns
//
// Decode, per word (16 weights):
//   f16:  slots (s, s+8) are bits 2s and 2s+16 = the two halves of one register.
//         (word & (0x00030003 << 2s)) | 0x64006400 is the f16 pair 1024 + c*4^s
//         (one LOP3); fma(h, 4^-s, -(1024*4^-s + 1)) = c - 1 exactly (one HFMA2).
//         Slots 5..7 sit in bits 10..15, the exponent, so they use word >> 10.
//         8 LOP3 + 8 HFMA2 + 1 SHF -> 8 A registers = two m16n8k16 MMAs.
//   bf16: the same with 128.0 (7 mantissa bits): slots 0-2, 3-5 (>> 6), 6-7 (>> 12).
//   i8:   (word >> 2j) & 0x03030303 = 4 codes of one row, columns (0, 2, 1, 3) of a
//         group of 4: one m16n8k32 A register (1 SHF + 1 LOP3 per 4 weights; the B
//         register gets the same order with one PRMT). The MMA sums
//         c * x; subtracting sum(x) (dp4a on the B registers) gives (c - 1) * x.
//   The MMAs accumulate in f32 (i32 for i8), so the sums are exact up to f32
//   rounding, and the B fragment's 8 columns carry 8 tokens at no extra cost.
//
// Thread mapping: CTA = 8 warps = one 16-row tile x 8*NT tokens (blockIdx.y picks
// the token group). Warp w takes k tiles w, w+8, w+16, ... and streams them
// through its own shared-memory ring of DEPTH stages filled by cp.async (weights
// and the tile's activations), so DEPTH-1 tiles are in flight per warp without
// holding registers. Partial sums meet in shared memory; the epilogue applies
// scale and bias and writes 16 rows x 8*NT tokens.
//
// Budget (batch 1, H100/H200): 0.25 B/weight from HBM; ~1.1 thread-instructions
// per weight (f16), ~0.5 (i8), against ~1.9 available per weight at 4.3 TB/s on
// 132 SMs at 1.98 GHz: the kernel should be bound by HBM bandwidth.
// Measured: see bench/results and docs/NOTES.md.
#include "common.cuh"

#define ACT_F16 0
#define ACT_BF16 1
#define ACT_I8 2
#define OUT_F16 0
#define OUT_BF16 1
#define OUT_I32 2

#define WARPS 8
#define DEPTH 8  // ring stages per warp: tiles in flight

// Hides a value from the optimizer, so it stays in a register instead of being
// recomputed inside the hot loop (ptxas rematerializes constants and addresses
// there, at several instructions per tile).
__device__ __forceinline__ u32 opaque(u32 v) {
    asm volatile("" : "+r"(v));
    return v;
}

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
// The same for the bf16 pair (128 + c*4^j).
constexpr u32 BF16_SCALE[3] = {0x3F803F80, 0x3E803E80, 0x3D803D80};
constexpr u32 BF16_OFFSET[3] = {0xC301C301, 0xC204C204, 0xC110C110};

// Decode constants held in registers for the whole kernel (see `opaque`).
template <int ACT>
struct DecodeConsts {
    u32 magic, scale[5], offset[5];
    __device__ __forceinline__ DecodeConsts() {
        magic = opaque(ACT == ACT_BF16 ? 0x43004300u : 0x64006400u);
#pragma unroll
        for (int j = 0; j < 5; j++) {
            scale[j] = opaque(ACT == ACT_BF16 ? BF16_SCALE[j % 3] : F16_SCALE[j]);
            offset[j] = opaque(ACT == ACT_BF16 ? BF16_OFFSET[j % 3] : F16_OFFSET[j]);
        }
    }
};

// A registers of one word; for f16/bf16 a[s] is the pair (s, s+8).
template <int ACT>
__device__ __forceinline__ void decode_word(u32 wd, u32 a[8], const DecodeConsts<ACT>& k) {
    if (ACT == ACT_F16) {
        const u32 hi = wd >> 10;
        a[0] = hfma2_f16(and_or<0x00030003u>(wd, k.magic), k.scale[0], k.offset[0]);
        a[1] = hfma2_f16(and_or<0x000C000Cu>(wd, k.magic), k.scale[1], k.offset[1]);
        a[2] = hfma2_f16(and_or<0x00300030u>(wd, k.magic), k.scale[2], k.offset[2]);
        a[3] = hfma2_f16(and_or<0x00C000C0u>(wd, k.magic), k.scale[3], k.offset[3]);
        a[4] = hfma2_f16(and_or<0x03000300u>(wd, k.magic), k.scale[4], k.offset[4]);
        a[5] = hfma2_f16(and_or<0x00030003u>(hi, k.magic), k.scale[0], k.offset[0]);
        a[6] = hfma2_f16(and_or<0x000C000Cu>(hi, k.magic), k.scale[1], k.offset[1]);
        a[7] = hfma2_f16(and_or<0x00300030u>(hi, k.magic), k.scale[2], k.offset[2]);
    } else if (ACT == ACT_BF16) {
        const u32 m = wd >> 6, h = wd >> 12;
        a[0] = hfma2_bf16(and_or<0x00030003u>(wd, k.magic), k.scale[0], k.offset[0]);
        a[1] = hfma2_bf16(and_or<0x000C000Cu>(wd, k.magic), k.scale[1], k.offset[1]);
        a[2] = hfma2_bf16(and_or<0x00300030u>(wd, k.magic), k.scale[2], k.offset[2]);
        a[3] = hfma2_bf16(and_or<0x00030003u>(m, k.magic), k.scale[0], k.offset[0]);
        a[4] = hfma2_bf16(and_or<0x000C000Cu>(m, k.magic), k.scale[1], k.offset[1]);
        a[5] = hfma2_bf16(and_or<0x00300030u>(m, k.magic), k.scale[2], k.offset[2]);
        a[6] = hfma2_bf16(and_or<0x00030003u>(h, k.magic), k.scale[0], k.offset[0]);
        a[7] = hfma2_bf16(and_or<0x000C000Cu>(h, k.magic), k.scale[1], k.offset[1]);
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++) a[j] = (wd >> (2 * j)) & 0x03030303u;
    }
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
// Each warp owns DEPTH stages of 512 bytes in shared memory (lane t's 16 bytes at
// 16t), filled by cp.async: DEPTH-1 tiles are in flight per warp without holding
// registers. A lane reads back only what it copied itself, so no warp barrier is
// needed between the copy and the read.

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async_16_evict_first(u32 dst, const void* src, u64 policy) {
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "l"(policy));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N)); }

__device__ __forceinline__ u32x4 lds128(u32 addr) {
    u32x4 v;
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
    return v;
}

// ---- activations ------------------------------------------------------------------
// A lane's activations for one tile of one token: columns 128 kt + 32 q + 0..31.
template <int ACT>
struct XTile {
    u32 r[ACT == ACT_I8 ? 8 : 16];
};

// Fast path: the whole tile lies inside `cols` and x allows 16-byte loads.
template <int ACT>
__device__ __forceinline__ XTile<ACT> load_x_tile(const unsigned char* lane_x, u32 kt) {
    constexpr int BYTES = ACT == ACT_I8 ? 32 : 64;  // 32 columns
    XTile<ACT> t;
    const unsigned char* p = lane_x + (u64)kt * 128 * (BYTES / 32);
#pragma unroll
    for (int i = 0; i < BYTES / 16; i++) {
        const u32x4 v = load_v4(p + 16 * i);
        t.r[4 * i] = v.x; t.r[4 * i + 1] = v.y; t.r[4 * i + 2] = v.z; t.r[4 * i + 3] = v.w;
    }
    return t;
}

// Slow path (the last, partial tile; or unaligned x): element by element, zeros past `cols`.
template <int ACT>
__device__ __noinline__ XTile<ACT> load_x_tile_slow(const GemmParams& p, u32 b, u32 kt, u32 q) {
    XTile<ACT> t;
#pragma unroll
    for (int i = 0; i < (ACT == ACT_I8 ? 8 : 16); i++) t.r[i] = 0;
    const u32 k0 = kt * 128 + 32 * q;
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

// One tile: decode each word once, multiply against NT token groups.
template <int ACT, int NT>
__device__ __forceinline__ void tile_mma(const u32x4& wv, const XTile<ACT> (&x)[NT], const DecodeConsts<ACT>& k,
                                         float (&accf)[NT][4], int (&acci)[NT][4], int (&xsum)[NT]) {
    const u32 words[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
    for (int w = 0; w < 4; w++) {
        u32 a[8];
        decode_word<ACT>(words[w], a, k);
#pragma unroll
        for (int j = 0; j < NT; j++) {
            if (ACT == ACT_I8) {
                // A register j holds columns (0, 2, 1, 3) of a group of 4: permute B to match.
                const u32 lo = x[j].r[2 * w], hi = x[j].r[2 * w + 1];
                mma_i8(acci[j], a[0], a[1], a[2], a[3], prmt(lo, lo, 0x3120), prmt(hi, hi, 0x3120));
                xsum[j] = dp4a(hi, 0x01010101u, dp4a(lo, 0x01010101u, xsum[j]));
            } else {
                // Pairs (s, s+8) are consecutive columns: the loaded registers are the B fragments.
                const u32* b = &x[j].r[4 * w];
                if (ACT == ACT_F16) {
                    mma_f16(accf[j], a[0], a[1], a[4], a[5], b[0], b[1]);
                    mma_f16(accf[j], a[2], a[3], a[6], a[7], b[2], b[3]);
                } else {
                    mma_bf16(accf[j], a[0], a[1], a[4], a[5], b[0], b[1]);
                    mma_bf16(accf[j], a[2], a[3], a[6], a[7], b[2], b[3]);
                }
            }
        }
    }
}

template <int OUT>
__device__ __forceinline__ float load_bias(const void* bias, u32 r) {
    if (bias == nullptr) return 0.f;
    const u16 h = ((const u16*)bias)[r];
    return OUT == OUT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

template <int ACT, int OUT, int NT>
__device__ __forceinline__ void gemm_t2(const GemmParams& p) {
    constexpr int COLS = 8 * NT;  // tokens per CTA
    constexpr int XBYTES = ACT == ACT_I8 ? 1 : 2;
    __shared__ __align__(16) u32x4 ring[WARPS][DEPTH][32];
    __shared__ int red_x[WARPS][COLS];
    static_assert(16 * COLS <= DEPTH * 32 * 4, "a warp's partial sums must fit in its ring");
    // Partial sums of warp w, [16][COLS] f32 bits (i32 for i8), reuse w's own ring.
    const auto red = [&](u32 w, u32 row, u32 col) -> u32& { return ((u32*)&ring[w][0][0])[row * COLS + col]; };

    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 g = lane / 4, q = lane % 4;
    const u32 rt = blockIdx.x;
    const u32 b_base = blockIdx.y * COLS;
    const u64 policy = evict_first_policy();

    float accf[NT][4];
    int acci[NT][4];
    int xsum[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        xsum[j] = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) { accf[j][i] = 0.f; acci[j][i] = 0; }
    }

    // Tokens past `batch` read the last token (no divergence); the epilogue drops them.
    u32 tok[NT];
    const unsigned char* lane_x[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        tok[j] = min(b_base + 8 * j + g, p.batch - 1);
        lane_x[j] = (const unsigned char*)p.x + ((u64)tok[j] * p.ldx + 32 * q) * XBYTES;
    }

    // ---- stream this warp's tiles kt = warp, warp + 8, ... ----
    // Weights: DEPTH-stage cp.async ring, one commit group per tile (empty past the
    // end), so wait_group<DEPTH-2> after committing tile t+DEPTH-1... means tile t
    // has landed. Activations: registers, one tile ahead.
    const u32 mine = p.k_tiles > warp ? (p.k_tiles - warp + WARPS - 1) / WARPS : 0;
    const u32 fast_tiles = p.x_vec ? p.cols / 128 : 0;
    const u32x4* wp = p.w + ((u64)rt * p.k_tiles + warp) * 32 + lane;
    const u32 my_ring = opaque(smem_addr(&ring[warp][0][lane]));
    const DecodeConsts<ACT> consts;
#pragma unroll
    for (u32 t = 0; t < DEPTH - 1; t++) {
        if (t < mine) cp_async_16_evict_first(my_ring + t * 512, wp + (u64)t * WARPS * 32, policy);
        cp_async_commit();
    }
    const auto load_x = [&](u32 kt, XTile<ACT>(&dst)[NT]) {
#pragma unroll
        for (int j = 0; j < NT; j++)
            dst[j] = kt < fast_tiles ? load_x_tile<ACT>(lane_x[j], kt) : load_x_tile_slow<ACT>(p, tok[j], kt, q);
    };
    // Tile t: refill the ring DEPTH-1 ahead, prefetch the next tile's activations
    // into `nxt`, then wait for tile t's weights and multiply with `cur`.
    const auto step = [&](u32 t, const XTile<ACT>(&cur)[NT], XTile<ACT>(&nxt)[NT]) {
        const u32 ahead = t + DEPTH - 1;
        if (ahead < mine) cp_async_16_evict_first(my_ring + (ahead % DEPTH) * 512, wp + (u64)ahead * WARPS * 32, policy);
        cp_async_commit();
        if (t + 1 < mine) load_x(warp + (t + 1) * WARPS, nxt);
        cp_async_wait<DEPTH - 1>();
        tile_mma<ACT, NT>(lds128(my_ring + (t % DEPTH) * 512), cur, consts, accf, acci, xsum);
    };
    // Two activation buffers, alternating, so no registers are copied.
    XTile<ACT> xa[NT], xb[NT];
    if (mine > 0) load_x(warp, xa);
    for (u32 t = 0; t < mine; t += 2) {
        step(t, xa, xb);
        if (t + 1 < mine) step(t + 1, xb, xa);
    }

    // ---- reduce the warps' partial sums in shared memory ----
    // C fragment: c0, c1 -> (row g, tokens 2q, 2q+1); c2, c3 -> (row g+8, same tokens).
    // Every copy into this warp's ring has landed (the last real group was waited
    // for); the barrier keeps a lane's partial sums from overwriting a stage that
    // another lane may still be reading.
    __syncwarp();
#pragma unroll
    for (int j = 0; j < NT; j++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const u32 row = g + 8 * (i / 2), col = 8 * j + 2 * q + (i % 2);
            red(warp, row, col) = ACT == ACT_I8 ? (u32)acci[j][i] : __float_as_uint(accf[j][i]);
        }
        if (ACT == ACT_I8) {
            int s = xsum[j];
            s += __shfl_xor_sync(0xffffffffu, s, 1);
            s += __shfl_xor_sync(0xffffffffu, s, 2);
            if (q == 0) red_x[warp][8 * j + g] = s;
        }
    }
    __syncthreads();

    // ---- epilogue: scale, bias, convert, store ----
    for (u32 t = threadIdx.x; t < 16 * COLS; t += blockDim.x) {
        const u32 row = t % 16, col = t / 16;
        const u32 r = rt * 16 + row, b = b_base + col;
        if (r >= p.rows || b >= p.batch) continue;
        float v;
        if (ACT == ACT_I8) {
            int acc = 0, xs = 0;
#pragma unroll
            for (int w = 0; w < WARPS; w++) { acc += (int)red(w, row, col); xs += red_x[w][col]; }
            acc -= xs;  // sum (c - 1) x = sum c x - sum x
            if (OUT == OUT_I32) {
                ((int*)p.y)[(u64)b * p.ldy + r] = acc;
                continue;
            }
            v = (float)acc * p.x_scale[b];
        } else {
            v = 0.f;
#pragma unroll
            for (int w = 0; w < WARPS; w++) v += __uint_as_float(red(w, row, col));
        }
        if (p.w_scale != nullptr) v *= p.w_scale[p.scale_per_row ? r : 0];
        v += load_bias<OUT>(p.bias, r);
        u16* y = (u16*)p.y + (u64)b * p.ldy + r;
        *y = OUT == OUT_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
    }
}

// Kernel symbols: gemm_t2_{activation}_{output}_n{8*NT}; built by `gemm_symbol` in launch.rs.
#define GEMM_KERNEL(ACT, OUT, NT, NAME)                                               \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, NT == 1 ? 3 : 1) NAME(const GemmParams p) { \
        gemm_t2<ACT, OUT, NT>(p);                                                     \
    }

GEMM_KERNEL(ACT_F16, OUT_F16, 1, gemm_t2_f16_f16_n8)
GEMM_KERNEL(ACT_F16, OUT_F16, 2, gemm_t2_f16_f16_n16)
GEMM_KERNEL(ACT_F16, OUT_F16, 4, gemm_t2_f16_f16_n32)
GEMM_KERNEL(ACT_BF16, OUT_BF16, 1, gemm_t2_bf16_bf16_n8)
GEMM_KERNEL(ACT_BF16, OUT_BF16, 2, gemm_t2_bf16_bf16_n16)
GEMM_KERNEL(ACT_BF16, OUT_BF16, 4, gemm_t2_bf16_bf16_n32)
GEMM_KERNEL(ACT_I8, OUT_F16, 1, gemm_t2_i8_f16_n8)
GEMM_KERNEL(ACT_I8, OUT_F16, 2, gemm_t2_i8_f16_n16)
GEMM_KERNEL(ACT_I8, OUT_F16, 4, gemm_t2_i8_f16_n32)
GEMM_KERNEL(ACT_I8, OUT_BF16, 1, gemm_t2_i8_bf16_n8)
GEMM_KERNEL(ACT_I8, OUT_BF16, 2, gemm_t2_i8_bf16_n16)
GEMM_KERNEL(ACT_I8, OUT_BF16, 4, gemm_t2_i8_bf16_n32)
GEMM_KERNEL(ACT_I8, OUT_I32, 1, gemm_t2_i8_i32_n8)
GEMM_KERNEL(ACT_I8, OUT_I32, 2, gemm_t2_i8_i32_n16)
GEMM_KERNEL(ACT_I8, OUT_I32, 4, gemm_t2_i8_i32_n32)
