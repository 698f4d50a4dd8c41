// Layout conversion between I2 (row-major, the interchange format) and T2 (the
// GEMM tile layout), both specified in docs/FORMATS.md. Run once at load time,
// so they favour clarity: one thread per output word, gathering 16 codes.
//
// Ternary (`int2` = 0): I2 code 00 -> 0, 01 -> +1, 10 -> -1 (validated on the host
// before upload); T2 code = weight + 1; padding (rows past M, columns past N) is
// weight 0. INT2 (`int2` = 1): codes move unchanged; padding is code 0 (the kernels
// zero activations past N and drop rows past M, so its level never counts).
#include "common.cuh"

// The T2 code of (r, c) of an I2 matrix: weight + 1 (ternary) or the code itself (INT2).
__device__ __forceinline__ u32 t2_code(const u32* i2, u32 rows, u32 cols, u32 wpr, u32 r, u32 c, u32 int2) {
    if (r >= rows || c >= cols) return int2 ? 0 : 1;
    const u32 code = (i2[(u64)r * wpr + c / 16] >> (2 * (c % 16))) & 3;
    return int2 ? code : (u32)(1 + (int)(code & 1) - (int)(code >> 1));
}

// Where T2 word `idx` sits in the matrix (gemm.cuh header): all its slots are in row
// `r`; slot t is column c0 + 4 (t % 8) + t / 8.
struct T2Word {
    u32 r, c0;
    __device__ T2Word(u64 idx, u32 k_tiles) {
        const u64 tile = idx / TILE_WORDS;
        const u32 rt = (u32)(tile / k_tiles), kt = (u32)(tile % k_tiles);
        const u32 lane = (u32)(idx % TILE_WORDS) / 4, w = (u32)(idx % 4);
        r = rt * TILE_ROWS + lane / 4 + 8 * (w >> 1);
        c0 = kt * TILE_COLS + 32 * (lane % 4) + 2 * (w & 1);
    }
    __device__ u32 col(u32 t) const { return c0 + 4 * (t % 8) + t / 8; }
};

// One thread per T2 word; `words` = row tiles * k_tiles * TILE_WORDS.
extern "C" __global__ void i2_to_t2(const u32* i2, u32* t2, u32 rows, u32 cols, u32 wpr, u32 k_tiles,
                                    u64 words, u32 int2) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= words) return;
    const T2Word at(idx, k_tiles);
    u32 out = 0;
    for (u32 t = 0; t < 16; t++) out |= t2_code(i2, rows, cols, wpr, at.r, at.col(t), int2) << (2 * t);
    t2[idx] = out;
}

// One thread per I2 word; inverse of the slot map above.
extern "C" __global__ void t2_to_i2(const u32* t2, u32* i2, u32 rows, u32 cols, u32 wpr, u32 k_tiles, u32 int2) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)rows * wpr) return;
    const u32 r = (u32)(idx / wpr), j = (u32)(idx % wpr);
    const u32 rt = r / TILE_ROWS, g = r % 8, upper = (r % TILE_ROWS) / 8;
    u32 out = 0;
    for (u32 i = 0; i < 16; i++) {
        const u32 c = j * 16 + i;
        if (c >= cols) break;
        // Inverse of i2_to_t2: column 32q + 4s + 2(w & 1) + h of row g + 8(w >> 1).
        const u32 kt = c / TILE_COLS, q = (c % TILE_COLS) / 32, s = (c % 32) / 4, odd_w = (c % 4) / 2, h = c % 2;
        const u32 w = 2 * upper + odd_w, t = 8 * h + s;
        const u64 word = ((u64)rt * k_tiles + kt) * TILE_WORDS + (g * 4 + q) * 4 + w;
        const u32 code = (t2[word] >> (2 * t)) & 3;  // ternary: weight + 1
        out |= (int2 ? code : code == 2 ? 1u : code == 0 ? 2u : 0u) << (2 * i);
    }
    i2[idx] = out;
}

// Float weights -> ternary T2 in one pass (the training path: the master weights are
// quantized and packed every step). w is [rows, cols] (row stride ldw) of f32, f16 or
// bf16 (`dtype` 0, 1, 2); weight = clamp(rint(w / scale), -1, 1) with an IEEE
// division, exactly the formula of quantize_ternary, scale one f32 or one per row of
// w. With `transpose`, the T2 words are those of wᵀ ([cols, rows]). One thread per
// T2 word, as in i2_to_t2; `t_rows` x `t_cols` is the packed matrix's shape.
__device__ __forceinline__ float load_weight(const void* w, u32 dtype, u64 i) {
    if (dtype == 0) return ((const float*)w)[i];
    const u16 h = ((const u16*)w)[i];
    return dtype == 1 ? f16_to_f32(h) : bf16_to_f32(h);
}

extern "C" __global__ void quantize_to_t2(const void* w, u32 dtype, u32 ldw, const float* scale, u32 per_row,
                                          u32 transpose, u32* t2, u32 t_rows, u32 t_cols, u32 k_tiles, u64 words) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= words) return;
    const T2Word at(idx, k_tiles);
    const u32 r = at.r;
    u32 out = 0;
    for (u32 t = 0; t < 16; t++) {
        const u32 c = at.col(t);
        u32 code = 1;  // weight 0 (padding)
        if (r < t_rows && c < t_cols) {
            const u32 wr = transpose ? c : r, wc = transpose ? r : c;  // position in w
            const float v = load_weight(w, dtype, (u64)wr * ldw + wc) / scale[per_row ? wr : 0];
            code = (u32)(fminf(fmaxf(rintf(v), -1.f), 1.f) + 1.f);
        }
        out |= code << (2 * t);
    }
    t2[idx] = out;
}

// I2-layout words -> dense row-major weights, for large batches (a tensor-core GEMM on
// the dense matrix beats the GEMV kernels there). Values are looked up per code in a
// 4-entry table; each thread writes 16 bytes, adjacent threads adjacent bytes (full
// coalescing): int8 one thread per word, f16/bf16 one per half word (8 values).
// `out` 0: int8 (ternary -1/0/+1; INT2 2c - 3, twice the level), 1: f16 levels, 2: bf16
// levels, times `scale` (float32 [1] or [rows] with per_row; null: 1) rounded once;
// values past `cols` are not written. Codes were validated on upload.
extern "C" __global__ void i2_to_dense(const u32* i2, void* dst, u32 rows, u32 cols, u32 wpr, u32 int2, u32 out,
                                       const float* scale, u32 per_row) {
    const u32 per_word = out == 0 ? 1 : 2;  // threads per word
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)rows * wpr * per_word) return;
    const u64 w = idx / per_word;
    const u32 r = (u32)(w / wpr), j = (u32)(w % wpr), part = (u32)(idx % per_word);
    const u32 first = 16 * j + 8 * part;  // first column of this thread
    if (first >= cols) return;
    const u32 n = min(16u / per_word, cols - first);
    const u32 word = i2[w] >> (16 * part);
    const u64 o = (u64)r * cols + first;
    if (out == 0) {
        // Bytes per code: ternary 0, +1, -1, (0); INT2 -3, -1, +1, +3.
        const u32 lut = int2 ? 0x0301FFFDu : 0x00FF0100u;
        u32 v[4] = {0, 0, 0, 0};
#pragma unroll
        for (int k = 0; k < 16; k++) v[k / 4] |= ((lut >> (8 * ((word >> (2 * k)) & 3))) & 0xFF) << (8 * (k % 4));
        i8* p = (i8*)dst + o;
        if (n == 16 && (u64)p % 16 == 0) {
            *(u32x4*)p = {v[0], v[1], v[2], v[3]};
        } else {
            for (u32 k = 0; k < n; k++) p[k] = (i8)(v[k / 4] >> (8 * (k % 4)));
        }
    } else {
        // f16 / bf16 bits per code: ternary 0, +1, -1, (0); INT2 -1.5, -0.5, +0.5, +1.5.
        const u64 lut = out == 1 ? (int2 ? 0x3E003800B800BE00ull : 0x0000BC003C000000ull)
                                 : (int2 ? 0x3FC03F00BF00BFC0ull : 0x0000BF803F800000ull);
        u32 v[4] = {0, 0, 0, 0};
#pragma unroll
        for (int k = 0; k < 8; k++)
            v[k / 2] |= (u32)((lut >> (16 * ((word >> (2 * k)) & 3))) & 0xFFFF) << (16 * (k % 2));
        if (scale != nullptr) {  // level * scale in float32, rounded once to the output type
            const float s = scale[per_row ? r : 0];
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const u16 h = (u16)(v[k / 2] >> (16 * (k % 2)));
                const float x = __fmul_rn(out == 1 ? f16_to_f32(h) : bf16_to_f32(h), s);
                const u32 o16 = out == 1 ? f32_to_f16(x) : f32_to_bf16(x);
                v[k / 2] = (v[k / 2] & ~(0xFFFFu << (16 * (k % 2)))) | (o16 << (16 * (k % 2)));
            }
        }
        u16* p = (u16*)dst + o;
        if (n == 8 && (u64)p % 16 == 0) {
            *(u32x4*)p = {v[0], v[1], v[2], v[3]};
        } else {
            for (u32 k = 0; k < n; k++) p[k] = (u16)(v[k / 2] >> (16 * (k % 2)));
        }
    }
}
