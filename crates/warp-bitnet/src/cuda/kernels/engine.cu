// The inference engine's small kernels (src/cuda/engine/): everything of a decode step but the
// ternary GEMMs (gemm.cu, raw int32 accumulators) and the lm_head (cuBLAS).
//
// Layout. Activations are row-major per token: the residual stream x [tokens, hidden] f32;
// the int8 input of the next GEMM q [tokens, cols] with x_scale [tokens] f32; the GEMMs'
// int32 sums acc [tokens, ld] where one GEMM may stack several linear layers' rows (q|k|v,
// gate|up; each part is a `Deq`: its first column, its x_scale, its per-row weight scale and
// bias). The KV cache of one layer is [slots, max_context, kv_dim] f16, a row per position.
// Per token, the device holds its id, slot and position (`tok`, `slot`, `pos`), written by the
// host before each step, so that a captured graph replays any step of the same batch size.
//
// Numerics: the CPU engine's (engine/forward.rs), operation for operation, every float
// operation rounded as written (__fmul_rn & co.: no FMA contraction), so that the GPU and the
// CPU agree bit for bit up to the attention: RMSNorm sums squares in f64 (exact squares, so
// only the summation order differs from the CPU's, which changes the f32 result only on a
// double-rounding tie), per-token absmax int8 exactly as quant.cuh, the W2A8 dequantization
// (acc * x_scale) * w_scale + bias, RoPE from a host-computed (cos, sin) table. The attention
// reads an f16 cache (the CPU keeps f32) and uses expf: that is where the paths part (~1e-3).
//
// Thread mapping: one CTA per token row for every row kernel (row_norm_quant: 512 threads,
// the row in dynamic shared memory; rope_kv_append: 256 threads over the (head, pair) grid;
// embed_gather: 256 threads), one CTA of 128 threads per (query head, token) for the
// attention (scores for every cached position in dynamic shared memory), one CTA of 1024
// threads per row for the argmax. Reductions: warp shuffles, then one value per warp in
// shared memory, summed by every thread in the same order (every thread gets the same total).
//
// Budget (bitnet-b1.58-2B-4T, one token): a row kernel reads and writes a few rows of 2560-6912
// values (< 100 KB): it is launch- and latency-bound, ~2-4 µs each in a graph, ~8 per layer.
// The attention of one token at context 128 reads 2 x 128 x 640 x 2 bytes per layer (330 KB);
// at context 4096 10 MB per layer on 20 CTAs per token: far from the bandwidth; a split-KV
// (flash-decoding) variant is the next step for long contexts. Predicted (not measured: no GPU
// in the session that wrote this) for 2B-4T, batch 1, context 128: ~5-8 µs of these kernels per
// layer, ~0.2 ms per step, on top of ~0.35 ms of GEMMs and ~0.25 ms of bf16 lm_head.
#include "quant.cuh"

// No math headers under NVRTC: -inf as its bit pattern.
#define NEG_INF __int_as_float(0xff800000)

// ---- parameters (mirrored by #[repr(C)] structs in src/cuda/engine_ops.rs) ----------------

#define DEQ_INT32_SUMS 0  // acc: int32 sums of a ternary GEMM, dequantized with the scales
#define DEQ_F32_VALUES 1  // acc: f32 outputs of a dense-bf16 GEMM (cuBLAS); scales unused

// One part of a GEMM's output: value (t, c) = ((acc * x_scale[t]) * w_scale[c]) + bias[c] for
// int32 sums, acc + bias[c] for f32 values.
struct Deq {
    const int* acc;        // [tokens, ld] sums or f32 values; points at this part's column 0
    const float* x_scale;  // [tokens] the input's per-token dequantization factors
    const float* w_scale;  // [part rows] per-row weight scale
    const float* bias;     // [part rows] f32, or null
    u32 ld;                // row stride of acc, elements
    u32 kind;              // DEQ_*
};
static_assert(sizeof(Deq) == 40, "Deq layout must match engine_ops.rs");

#define MODE_ROW 0       // in = x[row]
#define MODE_RESIDUAL 1  // x[t] += a(t); in = x[t]
#define MODE_GATED 2     // in = act(a(t)) * b(t)

#define ACT_RELU2 0
#define ACT_SILU 1

#define OUT_NONE 0
#define OUT_I8 1
#define OUT_F32 2
#define OUT_F16 3
#define OUT_BF16 4

struct RowParams {
    float* x;              // [tokens, ld_x] residual stream or f32 rows (MODE_ROW / MODE_RESIDUAL)
    const u32* rows;       // MODE_ROW: CTA i reads row rows[i] of x (null: row i)
    Deq a;                 // MODE_RESIDUAL: the added GEMM output; MODE_GATED: gate
    Deq b;                 // MODE_GATED: up
    const float* norm1;    // [n] first RMSNorm weight, or null
    const float* norm2;    // [n] second RMSNorm weight (a linear layer's own), or null
    void* out;             // [tokens, ld_out] of out_kind
    float* out_scale;      // [tokens] x_scale of OUT_I8
    u32 mode;              // MODE_*
    u32 act;               // ACT_* (MODE_GATED)
    u32 out_kind;          // OUT_*
    u32 n;                 // row width
    u32 ld_x;              // row stride of x
    u32 ld_out;            // row stride of out
    float eps1;            // epsilon of norm1
    float eps2;            // epsilon of norm2
};
static_assert(sizeof(RowParams) == 160, "RowParams layout must match engine_ops.rs");

struct RopeParams {
    Deq q, k, v;           // the q|k|v GEMM output parts
    const float* rope;     // [max_context, head_dim / 2] (cos, sin) pairs
    const u32* pos;        // [tokens] position of each token
    const u32* slot;       // [tokens] KV-cache slot of each token
    float* q_out;          // [tokens, heads * head_dim] rotated queries
    u16* k_cache;          // this layer's [slots, max_context, kv_heads * head_dim] f16
    u16* v_cache;
    u32 heads;
    u32 kv_heads;
    u32 head_dim;
    u32 max_context;
};
static_assert(sizeof(RopeParams) == 184, "RopeParams layout must match engine_ops.rs");

struct AttnParams {
    const float* q;        // [tokens, heads * head_dim]
    const u16* k_cache;    // this layer's [slots, max_context, kv_dim] f16
    const u16* v_cache;
    const u32* pos;        // [tokens]: attends positions 0 ..= pos
    const u32* slot;       // [tokens]
    float* out;            // [tokens, heads * head_dim]
    u32 heads;
    u32 kv_heads;
    u32 head_dim;
    u32 max_context;
    float scaling;         // head_dim^-0.5
    u32 pad;
};
static_assert(sizeof(AttnParams) == 72, "AttnParams layout must match engine_ops.rs");

// ---- helpers ----------------------------------------------------------------------------

__device__ __forceinline__ float deq(const Deq& d, u32 t, u32 c) {
    const u64 i = (u64)t * d.ld + c;
    // One branch per Deq, uniform over the grid: a dense-bf16 engine passes only DEQ_F32_VALUES.
    const float v = d.kind == DEQ_F32_VALUES
        ? __int_as_float(d.acc[i])
        : __fmul_rn(__fmul_rn((float)d.acc[i], d.x_scale[t]), d.w_scale[c]);
    return d.bias != nullptr ? __fadd_rn(v, d.bias[c]) : v;
}

// The CPU's HiddenAct::apply.
__device__ __forceinline__ float activation(float x, u32 act) {
    if (act == ACT_SILU) return __fdiv_rn(x, __fadd_rn(1.0f, expf(-x)));
    const float r = fmaxf(x, 0.0f);
    return __fmul_rn(r, r);
}

// Sum / max over the CTA, returned to every thread. `red` holds one value per warp; the
// first barrier keeps a previous reduction's readers from seeing this one's writes.
__device__ __forceinline__ double block_sum_f64(double v, double* red) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    double total = 0.0;
    for (u32 w = 0; w < blockDim.x / 32; w++) total += red[w];
    return total;
}

__device__ __forceinline__ float block_sum_f32(float v, float* red) {
    for (int o = 16; o > 0; o /= 2) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    float total = 0.0f;
    for (u32 w = 0; w < blockDim.x / 32; w++) total = __fadd_rn(total, red[w]);
    return total;
}

__device__ __forceinline__ float block_max(float v, float* red) {
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    float m = NEG_INF;
    for (u32 w = 0; w < blockDim.x / 32; w++) m = fmaxf(m, red[w]);
    return m;
}

// transformers' RMSNorm in place over the row in shared memory, the CPU's arithmetic:
// ms = (f32)(sum x^2 in f64 / n), r = 1 / sqrt(ms + eps), x = w * (x * r).
__device__ __forceinline__ void rmsnorm_row(float* row, u32 n, const float* w, float eps, double* red) {
    double ss = 0.0;
    for (u32 c = threadIdx.x; c < n; c += blockDim.x) {
        const double v = row[c];
        ss += v * v;  // exact in f64 (24-bit mantissas), so contraction cannot change it
    }
    ss = block_sum_f64(ss, red);
    const float ms = (float)(ss / (double)n);
    const float r = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(ms, eps)));
    for (u32 c = threadIdx.x; c < n; c += blockDim.x) row[c] = __fmul_rn(w[c], __fmul_rn(row[c], r));
}

// ---- kernels ----------------------------------------------------------------------------

// x[t, :] = embedding row tok[t] as f32. `dtype`: 0 f32, 1 f16, 2 bf16 (the table's).
extern "C" __global__ void __launch_bounds__(256) embed_gather(const void* table, u32 dtype, const u32* tok, float* x,
                                                               u32 hidden) {
    const u64 row = (u64)tok[blockIdx.x] * hidden;
    float* out = x + (u64)blockIdx.x * hidden;
    for (u32 c = threadIdx.x; c < hidden; c += blockDim.x) {
        float v;
        if (dtype == 0) v = ((const float*)table)[row + c];
        else if (dtype == 1) v = f16_to_f32(((const u16*)table)[row + c]);
        else v = bf16_to_f32(((const u16*)table)[row + c]);
        out[c] = v;
    }
}

#define ROW_THREADS 512

// One token row: build it (phase 1: a row of x, a residual add of a GEMM's output, or the
// gated MLP product), normalize it (phase 2: up to two RMSNorms), write it (phase 3: int8 +
// x_scale for the next GEMM, or f32/f16/bf16 for the lm_head). Dynamic shared memory: n f32.
extern "C" __global__ void __launch_bounds__(ROW_THREADS) row_norm_quant(RowParams p) {
    extern __shared__ float row[];
    __shared__ double red_d[ROW_THREADS / 32];
    __shared__ float red_f[ROW_THREADS / 32];
    const u32 t = blockIdx.x;

    // ---- phase 1: the row ----
    const u32 src = p.rows != nullptr ? p.rows[t] : t;
    float* x = p.x != nullptr ? p.x + (u64)src * p.ld_x : nullptr;
    for (u32 c = threadIdx.x; c < p.n; c += blockDim.x) {
        float v;
        if (p.mode == MODE_ROW) {
            v = x[c];
        } else if (p.mode == MODE_RESIDUAL) {
            v = __fadd_rn(x[c], deq(p.a, t, c));
            x[c] = v;
        } else {
            v = __fmul_rn(activation(deq(p.a, t, c), p.act), deq(p.b, t, c));
        }
        row[c] = v;
    }
    if (p.out_kind == OUT_NONE) return;

    // ---- phase 2: norms (each thread touches only its own columns until the reduction) ----
    if (p.norm1 != nullptr) rmsnorm_row(row, p.n, p.norm1, p.eps1, red_d);
    if (p.norm2 != nullptr) rmsnorm_row(row, p.n, p.norm2, p.eps2, red_d);

    // ---- phase 3: output ----
    if (p.out_kind == OUT_I8) {
        float amax = 0.0f;
        for (u32 c = threadIdx.x; c < p.n; c += blockDim.x) amax = fmaxf(amax, fabsf(row[c]));
        const float s = quant_factor(block_max(amax, red_f));
        i8* q = (i8*)p.out + (u64)t * p.ld_out;
        for (u32 c = threadIdx.x; c < p.n; c += blockDim.x) q[c] = (i8)quantize_one(row[c], s);
        if (threadIdx.x == 0) p.out_scale[t] = __fdiv_rn(1.0f, s);
    } else {
        for (u32 c = threadIdx.x; c < p.n; c += blockDim.x) {
            const u64 o = (u64)t * p.ld_out + c;
            if (p.out_kind == OUT_F32) ((float*)p.out)[o] = row[c];
            else if (p.out_kind == OUT_F16) ((u16*)p.out)[o] = f32_to_f16(row[c]);
            else ((u16*)p.out)[o] = f32_to_bf16(row[c]);
        }
    }
}

#define ROPE_THREADS 256

// Dequantizes one token's q, k, v, rotates q and k (transformers' rotate-half: element i with
// i + head_dim / 2) at the token's position, writes q (f32) and appends k, v (f16) to the cache
// row (slot, pos).
extern "C" __global__ void __launch_bounds__(ROPE_THREADS) rope_kv_append(RopeParams p) {
    const u32 t = blockIdx.x, pos = p.pos[t], half = p.head_dim / 2;
    const u32 q_dim = p.heads * p.head_dim, kv_dim = p.kv_heads * p.head_dim;
    const float* cs = p.rope + (u64)pos * half * 2;
    const u64 cache_row = ((u64)p.slot[t] * p.max_context + pos) * kv_dim;
    for (u32 i = threadIdx.x; i < p.heads * half; i += blockDim.x) {
        const u32 c = i / half * p.head_dim + i % half, j = i % half;
        const float a = deq(p.q, t, c), b = deq(p.q, t, c + half), cv = cs[2 * j], sv = cs[2 * j + 1];
        float* out = p.q_out + (u64)t * q_dim;
        out[c] = __fsub_rn(__fmul_rn(a, cv), __fmul_rn(b, sv));
        out[c + half] = __fadd_rn(__fmul_rn(b, cv), __fmul_rn(a, sv));
    }
    for (u32 i = threadIdx.x; i < p.kv_heads * half; i += blockDim.x) {
        const u32 c = i / half * p.head_dim + i % half, j = i % half;
        const float a = deq(p.k, t, c), b = deq(p.k, t, c + half), cv = cs[2 * j], sv = cs[2 * j + 1];
        p.k_cache[cache_row + c] = f32_to_f16(__fsub_rn(__fmul_rn(a, cv), __fmul_rn(b, sv)));
        p.k_cache[cache_row + c + half] = f32_to_f16(__fadd_rn(__fmul_rn(b, cv), __fmul_rn(a, sv)));
    }
    for (u32 c = threadIdx.x; c < kv_dim; c += blockDim.x) p.v_cache[cache_row + c] = f32_to_f16(deq(p.v, t, c));
}

#define ATT_THREADS 128

// Softmax attention of query head blockIdx.x of token blockIdx.y over positions 0 ..= pos of
// its slot (GQA: kv head = head / (heads / kv_heads)). Phases: stage q; scores (a warp per
// position, lanes over head_dim); max; exp and sum; probabilities (e / sum, as the CPU);
// weighted sum of V (a thread per output element, positions in order). Dynamic shared
// memory: (head_dim + max_context) f32.
extern "C" __global__ void __launch_bounds__(ATT_THREADS) attention_decode(AttnParams p) {
    extern __shared__ float smem[];
    __shared__ float red[ATT_THREADS / 32];
    const u32 h = blockIdx.x, t = blockIdx.y, hd = p.head_dim;
    const u32 len = p.pos[t] + 1, kv_dim = p.kv_heads * hd, kvh = h / (p.heads / p.kv_heads);
    const u32 lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    float* q = smem;
    float* scores = smem + hd;
    const u64 base = (u64)p.slot[t] * p.max_context * kv_dim + kvh * hd;

    // ---- stage q ----
    for (u32 d = threadIdx.x; d < hd; d += blockDim.x) q[d] = p.q[(u64)t * p.heads * hd + h * hd + d];
    __syncthreads();

    // ---- scores ----
    for (u32 j = warp; j < len; j += warps) {
        const u16* k = p.k_cache + base + (u64)j * kv_dim;
        float s = 0.0f;
        for (u32 d = lane; d < hd; d += 32) s = __fadd_rn(s, __fmul_rn(q[d], f16_to_f32(k[d])));
        for (int o = 16; o > 0; o /= 2) s = __fadd_rn(s, __shfl_xor_sync(0xffffffffu, s, o));
        if (lane == 0) scores[j] = __fmul_rn(s, p.scaling);
    }
    __syncthreads();

    // ---- softmax ----
    float m = NEG_INF;
    for (u32 j = threadIdx.x; j < len; j += blockDim.x) m = fmaxf(m, scores[j]);
    m = block_max(m, red);
    float sum = 0.0f;
    for (u32 j = threadIdx.x; j < len; j += blockDim.x) {
        const float e = expf(__fsub_rn(scores[j], m));
        scores[j] = e;
        sum = __fadd_rn(sum, e);
    }
    sum = block_sum_f32(sum, red);
    for (u32 j = threadIdx.x; j < len; j += blockDim.x) scores[j] = __fdiv_rn(scores[j], sum);
    __syncthreads();

    // ---- weighted values ----
    for (u32 d = threadIdx.x; d < hd; d += blockDim.x) {
        const u16* v = p.v_cache + base + d;
        float acc = 0.0f;
        for (u32 j = 0; j < len; j++) acc = __fadd_rn(acc, __fmul_rn(scores[j], f16_to_f32(v[(u64)j * kv_dim])));
        p.out[(u64)t * p.heads * hd + h * hd + d] = acc;
    }
}

#define ARGMAX_THREADS 1024

// out[r] = the first index of the largest non-NaN value of row r (0 if none is > -inf): the
// CPU sampler's argmax. A (value, index) pair per thread, reduced by value then lowest index.
extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS) argmax_f32(const float* logits, u32 n, u32 ld, u32* out) {
    __shared__ float best_v[ARGMAX_THREADS / 32];
    __shared__ u32 best_i[ARGMAX_THREADS / 32];
    const float* row = logits + (u64)blockIdx.x * ld;
    float bv = NEG_INF;
    u32 bi = 0xffffffffu;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = row[i];
        if (v > bv) {  // false for NaN; indices grow, so the first maximum stays
            bv = v;
            bi = i;
        }
    }
    for (int o = 16; o > 0; o /= 2) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const u32 oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    if (threadIdx.x % 32 == 0) {
        best_v[threadIdx.x / 32] = bv;
        best_i[threadIdx.x / 32] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (u32 w = 1; w < blockDim.x / 32; w++) {
            if (best_v[w] > bv || (best_v[w] == bv && best_i[w] < bi)) {
                bv = best_v[w];
                bi = best_i[w];
            }
        }
        out[blockIdx.x] = bi == 0xffffffffu ? 0 : bi;
    }
}
