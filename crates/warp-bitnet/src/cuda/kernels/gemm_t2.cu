// Ternary GEMM/GEMV on T2 weights: Y[B, M] = (X[B, N] . Wtᵀ) * scale + bias.
//
// Layout (docs/FORMATS.md, "T2"): tiles of 16 rows x 128 columns, 512 bytes each;
// lane t of a warp loads its 16 bytes (4 words) of a tile with one coalesced
// LDG.128. Word w of lane t (g = t/4, q = t%4) holds codes c = weight + 1:
//
//   slot s at bits 2s..2s+1:  row g + 8(s & 1),  column 32q + 8w + kidx(s),
//   kidx(s) = (s >> 2) + 4((s >> 1) & 1)
//
// Decode, per word (16 weights):
//   f16:  slots (s, s+8) are bits 2s and 2s+16 = the two halves of one register.
//         (word & (0x00030003 << 2s)) | 0x64006400 is the f16 pair 1024 + c*4^s
//         (one LOP3); fma(h, 4^-s, -(1024*4^-s + 1)) = c - 1 exactly (one HFMA2).
//         Slots 5..7 sit in bits 10..15, the exponent, so they use word >> 10.
//         8 LOP3 + 8 HFMA2 + 1 SHF -> 8 A registers = two m16n8k16 MMAs.
//   bf16: the same with 128.0 (7 mantissa bits): slots 0-2, 3-5 (>> 6), 6-7 (>> 12).
//   i8:   (word >> 2j) & 0x03030303 = 4 codes of one row, 4 consecutive columns:
//         one m16n8k32 A register (1 SHF + 1 LOP3 per 4 weights). The MMA sums
//         c * x; subtracting sum(x) (dp4a on the B registers) gives (c - 1) * x.
//   The MMAs accumulate in f32 (i32 for i8), so the sums are exact up to f32
//   rounding, and the B fragment's 8 columns carry 8 tokens at no extra cost.
//
// Thread mapping: CTA = 8 warps = one 16-row tile x 8*NT tokens (blockIdx.y picks
// the token group). Warp w takes k tiles w, w+8, w+16, ...; U tiles are loaded
// before any is used, so each thread has U x 16 bytes in flight. Partial sums
// meet in shared memory; the epilogue applies scale and bias and writes 16 rows.
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
#define UNROLL 4

// c - 1 for the f16 pair (1024 + c*4^j): scale 4^-j and offset -(1024*4^-j + 1).
__constant__ u32 F16_SCALE[5] = {0x3C003C00, 0x34003400, 0x2C002C00, 0x24002400, 0x1C001C00};
__constant__ u32 F16_OFFSET[5] = {0xE401E401, 0xDC04DC04, 0xD410D410, 0xCC40CC40, 0xC500C500};
// The same for the bf16 pair (128 + c*4^j).
__constant__ u32 BF16_SCALE[3] = {0x3F803F80, 0x3E803E80, 0x3D803D80};
__constant__ u32 BF16_OFFSET[3] = {0xC301C301, 0xC204C204, 0xC110C110};

// A registers of one word; for f16/bf16 a[s] is the pair (s, s+8).
template <int ACT>
__device__ __forceinline__ void decode_word(u32 wd, u32 a[8]) {
    if (ACT == ACT_F16) {
#pragma unroll
        for (int s = 0; s < 5; s++)
            a[s] = hfma2_f16((wd & (0x00030003u << (2 * s))) | 0x64006400u, F16_SCALE[s], F16_OFFSET[s]);
        const u32 hi = wd >> 10;
#pragma unroll
        for (int s = 5; s < 8; s++)
            a[s] = hfma2_f16((hi & (0x00030003u << (2 * (s - 5)))) | 0x64006400u, F16_SCALE[s - 5],
                             F16_OFFSET[s - 5]);
    } else if (ACT == ACT_BF16) {
#pragma unroll
        for (int s = 0; s < 8; s++) {
            const u32 src = wd >> (6 * (s / 3));
            a[s] = hfma2_bf16((src & (0x00030003u << (2 * (s % 3)))) | 0x43004300u, BF16_SCALE[s % 3],
                              BF16_OFFSET[s % 3]);
        }
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

// Eight activations of token b at columns k0..k0+7 (zeros past `cols` or `batch`).
template <int ACT>
__device__ __forceinline__ u32x4 load_x8(const GemmParams& p, u32 b, u32 k0) {
    u32x4 v = {0, 0, 0, 0};
    if (b >= p.batch) return v;
    if (ACT == ACT_I8) {
        const i8* row = (const i8*)p.x + (u64)b * p.ldx;
        if (p.x_vec && k0 + 8 <= p.cols) {
            const u32x2 t = load_v2(row + k0);
            v.x = t.x;
            v.y = t.y;
        } else {
            for (int i = 0; i < 8; i++)
                if (k0 + i < p.cols) (i < 4 ? v.x : v.y) |= ((u32)(unsigned char)row[k0 + i]) << (8 * (i % 4));
        }
    } else {
        const u16* row = (const u16*)p.x + (u64)b * p.ldx;
        if (p.x_vec && k0 + 8 <= p.cols) return load_v4(row + k0);
        u32 h[4] = {0, 0, 0, 0};
        for (int i = 0; i < 8; i++)
            if (k0 + i < p.cols) h[i / 2] |= ((u32)row[k0 + i]) << (16 * (i % 2));
        v.x = h[0]; v.y = h[1]; v.z = h[2]; v.w = h[3];
    }
    return v;
}

// One word of one tile: decode once, multiply against NT token groups.
template <int ACT, int NT>
__device__ __forceinline__ void word_mma(const GemmParams& p, u32 wd, u32 b_base, u32 k0,
                                         float accf[NT][4], int acci[NT][4], int xsum[NT]) {
    u32 a[8];
    decode_word<ACT>(wd, a);
    const u32 g = (threadIdx.x % 32) / 4;
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const u32x4 xv = load_x8<ACT>(p, b_base + 8 * j + g, k0);
        if (ACT == ACT_I8) {
            mma_i8(acci[j], a[0], a[1], a[2], a[3], xv.x, xv.y);
            xsum[j] = dp4a(xv.y, 0x01010101u, dp4a(xv.x, 0x01010101u, xsum[j]));
        } else {
            // B columns must follow the A slots: (x0, x2), (x1, x3) | (x4, x6), (x5, x7).
            const u32 b0 = prmt(xv.x, xv.y, 0x5410), b1 = prmt(xv.x, xv.y, 0x7632);
            const u32 b2 = prmt(xv.z, xv.w, 0x5410), b3 = prmt(xv.z, xv.w, 0x7632);
            if (ACT == ACT_F16) {
                mma_f16(accf[j], a[0], a[1], a[4], a[5], b0, b1);
                mma_f16(accf[j], a[2], a[3], a[6], a[7], b2, b3);
            } else {
                mma_bf16(accf[j], a[0], a[1], a[4], a[5], b0, b1);
                mma_bf16(accf[j], a[2], a[3], a[6], a[7], b2, b3);
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
    // Partial sums of each warp: f32 bits, or i32 for i8 activations.
    __shared__ u32 red[WARPS][16][COLS];
    __shared__ int red_x[WARPS][COLS];

    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 g = lane / 4, q = lane % 4;
    const u32 rt = blockIdx.x;
    const u32 b_base = blockIdx.y * COLS;
    const u32x4* wt = p.w + (u64)rt * p.k_tiles * 32 + lane;
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

    // ---- stream the weight tiles: fetch U tiles, then decode + MMA each ----
    for (u32 kt0 = warp; kt0 < p.k_tiles; kt0 += WARPS * UNROLL) {
        u32x4 wv[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
            if (kt0 + u * WARPS < p.k_tiles) wv[u] = load_stream(wt + (u64)(kt0 + u * WARPS) * 32, policy);
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const u32 kt = kt0 + u * WARPS;
            if (kt >= p.k_tiles) break;
            const u32 k0 = kt * 128 + 32 * q;
            word_mma<ACT, NT>(p, wv[u].x, b_base, k0, accf, acci, xsum);
            word_mma<ACT, NT>(p, wv[u].y, b_base, k0 + 8, accf, acci, xsum);
            word_mma<ACT, NT>(p, wv[u].z, b_base, k0 + 16, accf, acci, xsum);
            word_mma<ACT, NT>(p, wv[u].w, b_base, k0 + 24, accf, acci, xsum);
        }
    }

    // ---- reduce the warps' partial sums in shared memory ----
    // C fragment: c0, c1 -> (row g, tokens 2q, 2q+1); c2, c3 -> (row g+8, same tokens).
#pragma unroll
    for (int j = 0; j < NT; j++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const u32 row = g + 8 * (i / 2), col = 8 * j + 2 * q + (i % 2);
            red[warp][row][col] = ACT == ACT_I8 ? (u32)acci[j][i] : __float_as_uint(accf[j][i]);
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
            for (int w = 0; w < WARPS; w++) { acc += (int)red[w][row][col]; xs += red_x[w][col]; }
            acc -= xs;  // sum (c - 1) x = sum c x - sum x
            if (OUT == OUT_I32) {
                ((int*)p.y)[(u64)b * p.ldy + r] = acc;
                continue;
            }
            v = (float)acc * p.x_scale[b];
        } else {
            v = 0.f;
#pragma unroll
            for (int w = 0; w < WARPS; w++) v += __uint_as_float(red[w][row][col]);
        }
        if (p.w_scale != nullptr) v *= p.w_scale[p.scale_per_row ? r : 0];
        v += load_bias<OUT>(p.bias, r);
        u16* y = (u16*)p.y + (u64)b * p.ldy + r;
        *y = OUT == OUT_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
    }
}

// Kernel symbols: gemm_t2_{activation}_{output}_n{8*NT}; built by `gemm_symbol` in launch.rs.
#define GEMM_KERNEL(ACT, OUT, NT, NAME)                                               \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) NAME(const GemmParams p) { \
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
