// Per-token absmax int8 quantization of f16/bf16 activations (the W2A8 front end), the
// W2A8 epilogue of the dense large-batch path (its back end), the dense path's bias rows, and
// the prefill kernel's activation pre-pass (at the end of the file).
//
// One CTA of 1024 threads per token. Pass 1 finds max|x| (warp shuffles, then
// shared memory); pass 2 writes q. When the row allows 16-byte accesses (`vec`:
// n, ldx multiples of 8, aligned base), each thread loads 8 values at a time and
// keeps up to KEEP x 8 of them in registers for pass 2 (rows of up to 32768
// values are read once); otherwise it goes element by element. The arithmetic is
// exactly the CPU quantizer's (src/quant/activation.rs): s = 127 / max(amax, 1e-5)
// with an IEEE division, q = clamp(rint(x * s), -128, 127), scale = 1 / s.
// Non-finite inputs give unspecified q: a hot path cannot raise an error.
//
// v1 (256 threads, scalar loads, two passes over global memory) took 10-28 µs on
// an H100 for one token of 8192-28672 values: a chain of dependent loads.
#include "quant.cuh"

#define THREADS WB_QUANT_THREADS
#define KEEP 4

template <bool BF16>
__device__ __forceinline__ void quantize_row(const u16* x, i8* q, float* scale, u32 n, u32 ldx, u32 ldq, u32 vec) {
    __shared__ float warp_max[THREADS / 32];
    const u16* row = x + (u64)blockIdx.x * ldx;
    i8* out = q + (u64)blockIdx.x * ldq;
    const u32 chunks = vec ? n / 8 : 0;
    u32x4 kept[KEEP];
    float amax = 0.f;
    // ---- pass 1: max |x| ----
#pragma unroll
    for (int k = 0; k < KEEP; k++) {
        const u32 c = threadIdx.x + k * THREADS;
        if (c < chunks) {
            kept[k] = load_v4(row + 8 * c);
            amax = fmaxf(amax, absmax8<BF16>(kept[k]));
        }
    }
    for (u32 c = threadIdx.x + KEEP * THREADS; c < chunks; c += THREADS) amax = fmaxf(amax, absmax8<BF16>(load_v4(row + 8 * c)));
    for (u32 k = 8 * chunks + threadIdx.x; k < n; k += THREADS) amax = fmaxf(amax, fabsf(to_f32<BF16>(row[k])));
    for (int o = 16; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
    __syncthreads();
    amax = 0.f;
#pragma unroll 8
    for (u32 w = 0; w < THREADS / 32; w++) amax = fmaxf(amax, warp_max[w]);
    const float s = quant_factor(amax);

    // ---- pass 2: quantize ----
#pragma unroll
    for (int k = 0; k < KEEP; k++) {
        const u32 c = threadIdx.x + k * THREADS;
        if (c < chunks) *(u32x2*)(out + 8 * c) = quantize8<BF16>(kept[k], s);
    }
    for (u32 c = threadIdx.x + KEEP * THREADS; c < chunks; c += THREADS)
        *(u32x2*)(out + 8 * c) = quantize8<BF16>(load_v4(row + 8 * c), s);
    for (u32 k = 8 * chunks + threadIdx.x; k < n; k += THREADS) out[k] = (i8)quantize_one(to_f32<BF16>(row[k]), s);
    if (threadIdx.x == 0) scale[blockIdx.x] = 1.0f / s;
}

extern "C" __global__ void __launch_bounds__(THREADS) quantize_i8_f16(const u16* x, i8* q, float* scale, u32 n, u32 ldx, u32 ldq, u32 vec) {
    quantize_row<false>(x, q, scale, n, ldx, ldq, vec);
}

extern "C" __global__ void __launch_bounds__(THREADS) quantize_i8_bf16(const u16* x, i8* q, float* scale, u32 n, u32 ldx, u32 ldq, u32 vec) {
    quantize_row<true>(x, q, scale, n, ldx, ldq, vec);
}

// The back end of the dense large-batch W2A8 path: int32 sums `acc` [batch, rows] (cuBLAS
// int8 GEMM over the decoded weights) -> y [batch, rows] in f16 (out 1) or bf16 (out 2):
//   y = (((acc * (int2 ? 0.5 : 1)) * x_scale[b]) * w_scale[r or 0]) + bias[r]
// in float32, each step rounded as written (no FMA contraction): the GEMM kernels' epilogue
// and functional._w2a8_epilogue, bit for bit. One thread per output; 4 + 2 bytes each.
extern "C" __global__ void w2a8_epilogue(const int* acc, const float* x_scale, const float* w_scale, u32 per_row,
                                         const u16* bias, u16* y, u32 rows, u32 batch, u32 int2, u32 out) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)rows * batch) return;
    const u32 b = (u32)(i / rows), r = (u32)(i % rows);
    float v = (float)acc[i];
    if (int2) v = __fmul_rn(v, 0.5f);
    v = __fmul_rn(v, x_scale[b]);
    if (w_scale != nullptr) v = __fmul_rn(v, w_scale[per_row ? r : 0]);
    if (bias != nullptr) v = __fadd_rn(v, out == 2 ? bf16_to_f32(bias[r]) : f16_to_f32(bias[r]));
    y[i] = out == 2 ? f32_to_bf16(v) : f32_to_f16(v);
}

// The dense path's f16/bf16 bias (cuda/dense.rs): y[b, r] = bias[r] for every token, so that
// cuBLAS adds it to the f32 products with beta = 1 and rounds the sum once. One thread per
// output.
extern "C" __global__ void bias_rows(const u16* bias, u16* y, u32 rows, u32 batch) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (u64)rows * batch) y[i] = bias[i % rows];
}

// The prefill kernel's activations (gemm_prefill.cuh): X [batch, ldx] rewritten as
// [batch][k tile][16-byte chunk c = 2j + h] where chunk (j, h) holds the k values 8h ..
// 8h + 7 of MMA k step j in the order of the T2 A fragments (gemm.cuh), zeros past
// `cols`. f16/bf16: word q of a chunk is columns 32q + 4j + 2h, + 1 of the k tile. i8:
// bytes 4q .. 4q + 3 are columns 32q + 4j + 2h + {0, 16, 1, 17} (gemm.cuh's quad j);
// then each token's sum(x) as int32 after the last token. One CTA per token; 16-byte
// stores; 4-byte loads where `vec` (base and row stride 4-byte aligned, cols a multiple
// of 4 i8 / 2 f16), else one element at a time.
template <int XB>
__device__ __forceinline__ void prefill_row(const unsigned char* x, u32 ldx, u32 cols, u32 k_tiles, u32 vec,
                                            u32x4* out) {
    constexpr u32 CHUNKS = XB == 1 ? 8 : 16;
    const unsigned char* row = x + (u64)blockIdx.x * ldx * XB;
    u32x4* dst = out + (u64)blockIdx.x * k_tiles * CHUNKS;
    // Element `col` (< cols) as the low bits of a word; a word of 4 / XB elements from `col`.
    const auto one = [&](u32 col) -> u32 {
        if (col >= cols) return 0;
        return XB == 1 ? (u32)row[col] : (u32)((const u16*)row)[col];
    };
    const auto word = [&](u32 col) -> u32 {
        if (vec) return col < cols ? *(const u32*)(row + col * XB) : 0;
        return XB == 1 ? one(col) | one(col + 1) << 8 | one(col + 2) << 16 | one(col + 3) << 24
                       : one(col) | one(col + 1) << 16;
    };
    int sum = 0;
    for (u32 c = threadIdx.x; c < k_tiles * CHUNKS; c += blockDim.x) {
        const u32 kt = c / CHUNKS, j = c % CHUNKS / 2, h = c % 2;
        u32 v[4];
#pragma unroll
        for (u32 q = 0; q < 4; q++) {
            const u32 col = 128 * kt + 32 * q + 4 * j;
            if (XB == 1) {
                const u32 lo = word(col), hi = word(col + 16);
                v[q] = prmt(lo, hi, h ? 0x7362 : 0x5140);
                sum = dp4a(v[q], 0x01010101u, sum);
            } else {
                v[q] = word(col + 2 * h);
            }
        }
        dst[c] = {v[0], v[1], v[2], v[3]};
    }
    if (XB == 1) {
        __shared__ int warp_sum[32];
        for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (threadIdx.x % 32 == 0) warp_sum[threadIdx.x / 32] = sum;
        __syncthreads();
        if (threadIdx.x == 0) {
            int total = 0;
            for (u32 w = 0; w < blockDim.x / 32; w++) total += warp_sum[w];
            ((int*)(out + (u64)gridDim.x * k_tiles * CHUNKS))[blockIdx.x] = total;
        }
    }
}

extern "C" __global__ void __launch_bounds__(WB_PREPASS_THREADS) prefill_x_16(const unsigned char* x, u32 ldx, u32 cols, u32 k_tiles,
                                                               u32 vec, u32x4* out) {
    prefill_row<2>(x, ldx, cols, k_tiles, vec, out);
}

extern "C" __global__ void __launch_bounds__(WB_PREPASS_THREADS) prefill_x_i8(const unsigned char* x, u32 ldx, u32 cols, u32 k_tiles,
                                                               u32 vec, u32x4* out) {
    prefill_row<1>(x, ldx, cols, k_tiles, vec, out);
}
