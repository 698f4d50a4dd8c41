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

// (bv, bi) becomes (ov, oi) if that pair is better: a larger value, or the same at a lower index.
__device__ __forceinline__ void argmax_merge(float& bv, u32& bi, float ov, u32 oi) {
    if (ov > bv || (ov == bv && oi < bi)) {
        bv = ov;
        bi = oi;
    }
}

// The warp's best (value, index) pair, written by its lane 0 to best_v / best_i[warp].
__device__ __forceinline__ void argmax_warp(float bv, u32 bi, float* best_v, u32* best_i) {
    for (int o = 16; o > 0; o /= 2) {
        argmax_merge(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
    }
    if (threadIdx.x % 32 == 0) {
        best_v[threadIdx.x / 32] = bv;
        best_i[threadIdx.x / 32] = bi;
    }
}

// The block's best pair from its warps' pairs (after a barrier that published them).
__device__ __forceinline__ void argmax_block(const float* best_v, const u32* best_i, float& bv, u32& bi) {
    bv = best_v[0];
    bi = best_i[0];
    for (u32 w = 1; w < blockDim.x / 32; w++) argmax_merge(bv, bi, best_v[w], best_i[w]);
}

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
    argmax_warp(bv, bi, best_v, best_i);
    __syncthreads();
    if (threadIdx.x == 0) {
        argmax_block(best_v, best_i, bv, bi);
        out[blockIdx.x] = bi == 0xffffffffu ? 0 : bi;
    }
}

// ---- sampling: src/engine/sampler/pick.rs's algorithm, bit for bit --------------------------
//
// One CTA of SAMPLE_THREADS per logit row. Phases, each a pass over the row (read from L2: a
// 128K-token row is 513 KB, too big for shared memory): (1) argmax, count of non-NaN; (2)
// top-k: the k-th key by four 8-bit radix passes (counts), then the tie by a block scan in id
// order; (3) the kept weights' total; (4) top-p: the same radix select on weights; (5) the draw:
// each thread sums the weights of a contiguous id range, a block exclusive scan finds the
// range holding the draw, its thread walks it. No sort; every sum is of integers, so the tree
// order of the reductions cannot change a result. Budget (not measured: no GPU in the session
// that wrote it): ~14 passes over 128K floats from L2 with a ~20-flop weight per element, one
// SM: predicted 30-60 µs per row, rows in parallel on separate SMs.
#define SAMPLE_THREADS 1024

// One row's draw (engine_ops.rs `SampleRow`; pick.rs `Draw` plus the history slot).
struct SampleRow {
    u64 seed;           // the counter-based RNG's key ...
    u64 stream;         // ... stream ...
    u64 step;           // ... and counter
    float temperature;  // 0: greedy (argmax)
    float penalty;      // CTRL repetition penalty on the history's tokens; 1: off
    u32 top_k;          // 0: all
    u32 top_p24;        // top_p in 2^-24 units rounded up, in [1, 2^24]
    u32 slot;           // the row's history bitmap is history + slot * words
    u32 pad;
};
static_assert(sizeof(SampleRow) == 48, "SampleRow layout must match engine_ops.rs");

// SplitMix64's output function (sampler/bits.rs).
__host__ __device__ constexpr u64 splitmix64(u64 z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
__host__ __device__ constexpr u64 draw_bits(u64 seed, u64 stream, u64 step) {
    return splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ step);
}
// The Rust test vectors (bits.rs draw_bits_test_vectors), checked when NVRTC compiles this.
static_assert(draw_bits(0, 0, 0) == 0x238275bc38fcbe91ull, "draw_bits test vector");
static_assert(draw_bits(42, 0, 1) == 0xb682ee25ce24109eull, "draw_bits test vector");
static_assert(draw_bits(~0ull, 7, 1ull << 40) == 0x54681d888f6a8dfcull, "draw_bits test vector");
static_assert(draw_bits(0x123456789abcdef0ull, 3, 99) == 0x2765bf6a283a56beull, "draw_bits test vector");

// e^y for y <= 0, bits.rs `exp_neg`: every operation rounded as written (no FMA contraction).
__device__ __forceinline__ float exp_neg(float y) {
    if (!(y >= -64.0f)) return 0.0f;
    const float j = floorf(__fadd_rn(__fmul_rn(y, __int_as_float(0x3fb8aa3b)), 0.5f));  // log2 e
    const float r = __fsub_rn(__fsub_rn(y, __fmul_rn(j, __int_as_float(0x3f317200))),  // ln2 hi
                              __fmul_rn(j, __int_as_float(0x35bfbe8e)));               // ln2 lo
    float p = __int_as_float(0x3ab60b61);  // 1/720
    p = __fadd_rn(__int_as_float(0x3c088889), __fmul_rn(r, p));  // 1/120
    p = __fadd_rn(__int_as_float(0x3d2aaaab), __fmul_rn(r, p));  // 1/24
    p = __fadd_rn(__int_as_float(0x3e2aaaab), __fmul_rn(r, p));  // 1/6
    p = __fadd_rn(0.5f, __fmul_rn(r, p));
    p = __fadd_rn(1.0f, __fmul_rn(r, p));
    p = __fadd_rn(1.0f, __fmul_rn(r, p));
    return __fmul_rn(p, __int_as_float(((int)j + 127) << 23));
}

// The unsigned order of non-NaN floats (f32::total_cmp's); 0 is below every non-NaN key.
__device__ __forceinline__ u32 order_key(float x) {
    const u32 b = __float_as_uint(x);
    return (b >> 31) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_value(u32 k) {
    return __uint_as_float((k >> 31) ? (k & 0x7fffffffu) : ~k);
}

// floor(min(e^((x - max) / t), 1) * 2^shift), bits.rs `weight_q`.
__device__ __forceinline__ u64 weight_q(float x, float max, float t, u32 shift) {
    const float w = fminf(exp_neg(__fdiv_rn(__fsub_rn(x, max), t)), 1.0f);
    return (u64)__fmul_rn(w, __int_as_float((int)(127 + shift) << 23));
}

__device__ __forceinline__ float penalize(float x, float penalty) {
    return x > 0.0f ? __fdiv_rn(x, penalty) : __fmul_rn(x, penalty);
}

// Block-wide sum of a u64 (every thread gets it); `red` holds 32 values.
__device__ __forceinline__ u64 block_sum_u64(u64 v, u64* red) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    u64 s = 0;
    for (u32 w = 0; w < blockDim.x / 32; w++) s += red[w];
    return s;
}

// Block-wide exclusive prefix sum of a u64 in thread order; `red` holds 32 values.
__device__ __forceinline__ u64 block_exclusive_u64(u64 v, u64* red) {
    const u32 lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    u64 inc = v;
    for (int o = 1; o < 32; o *= 2) {
        const u64 n = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= (u32)o) inc += n;
    }
    __syncthreads();
    if (lane == 31) red[warp] = inc;
    __syncthreads();
    u64 before = 0;
    for (u32 w = 0; w < warp; w++) before += red[w];
    return before + inc - v;
}

// One row's state shared by the phases: the row, its penalty, and the two boundaries.
struct SampleCtx {
    const float* row;
    const u32* hist;  // null: no penalty
    float penalty, max, t;
    u32 n, shift;
    u32 k_key, k_id;  // top-k boundary: keep key > k_key, or == with id <= k_id
    u32 p_key, p_id;  // top-p boundary, the same way
};

__device__ __forceinline__ float sample_logit(const SampleCtx& c, u32 i) {
    const float x = c.row[i];
    return (c.hist && ((c.hist[i >> 5] >> (i & 31)) & 1u)) ? penalize(x, c.penalty) : x;
}

// The weight of token i in the current phase: 1 (counting for top-k) or its integer weight,
// 0 where it is NaN or outside the boundaries found so far.
__device__ __forceinline__ u64 sample_weight(const SampleCtx& c, u32 i, bool count, u32* key) {
    const float x = sample_logit(c, i);
    if (x != x) return 0;
    const u32 k = order_key(x);
    *key = k;
    if (k < c.k_key || (k == c.k_key && i > c.k_id)) return 0;
    if (k < c.p_key || (k == c.p_key && i > c.p_id)) return 0;
    return count ? 1 : weight_q(x, c.max, c.t, c.shift);
}

// The first token, in the order (key descending, id ascending), at which the running weight
// reaches `target` (0 < target <= the total): pick.rs `boundary`. Four 8-bit radix passes find
// its key and the weight above it; a block scan over id ranges finds its id among the ties.
__device__ void sample_boundary(const SampleCtx& c, bool count, u64 target, u32* out_key, u32* out_id) {
    __shared__ u64 hist[256];
    __shared__ u64 red[32];
    __shared__ u32 s_prefix, s_id;
    __shared__ u64 s_above;
    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_above = 0;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (u32 b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        const u32 prefix = s_prefix;
        const u32 hi_mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
        for (u32 i = threadIdx.x; i < c.n; i += blockDim.x) {
            u32 k = 0;
            const u64 w = sample_weight(c, i, count, &k);
            if (w && (k & hi_mask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], w);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u64 above = s_above;
            int b = 255;
            while (b > 0 && above + hist[b] < target) above += hist[b--];
            s_prefix = prefix | ((u32)b << shift);
            s_above = above;
        }
        __syncthreads();
    }
    const u32 key = s_prefix;
    // The ties at `key` each weigh q; the boundary is the need-th of them in id order.
    const u64 q = count ? 1 : weight_q(key_value(key), c.max, c.t, c.shift);
    const u64 need = (target - s_above + q - 1) / q;
    const u32 per = (c.n + blockDim.x - 1) / blockDim.x;
    const u32 lo = min(c.n, threadIdx.x * per), hi = min(c.n, lo + per);
    u64 mine = 0;
    for (u32 i = lo; i < hi; i++) {
        u32 k = 0;
        if (sample_weight(c, i, true, &k) && k == key) mine++;
    }
    const u64 before = block_exclusive_u64(mine, red);
    if (before < need && need <= before + mine) {
        u64 seen = before;
        for (u32 i = lo; i < hi; i++) {
            u32 k = 0;
            if (sample_weight(c, i, true, &k) && k == key && ++seen == need) {
                s_id = i;
                break;
            }
        }
    }
    __syncthreads();
    *out_key = key;
    *out_id = s_id;
    __syncthreads();
}

// out[r] = the token drawn for logit row r (rows `ld` apart, n tokens each) with rows[r]'s
// parameters; history: [slots, words] bitmaps (bit i of a slot: token i is in its history).
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_f32(
    const float* logits,    // [rows, ld] f32
    u32 n,                  // tokens per row (the vocabulary)
    u32 ld,                 // row stride, elements
    const SampleRow* rows,  // [rows] draw parameters
    const u32* history,     // [slots, words] history bitmaps, or null (no penalty)
    u32 words,              // u32 per slot bitmap, >= ceil(n / 32)
    u32* out) {             // [rows] tokens
    __shared__ float best_v[32];
    __shared__ u32 best_i[32];
    __shared__ u64 red[32];
    __shared__ u32 s_token;
    const SampleRow p = rows[blockIdx.x];
    SampleCtx c;
    c.row = logits + (u64)blockIdx.x * ld;
    c.hist = (history && p.penalty != 1.0f) ? history + (u64)p.slot * words : nullptr;
    c.penalty = p.penalty;
    c.t = p.temperature;
    c.n = n;
    c.shift = 63u - (32u - __clz(n));
    c.k_key = 0;
    c.k_id = 0xffffffffu;
    c.p_key = 0;
    c.p_id = 0xffffffffu;

    // ---- argmax and the count of candidates ----
    float bv = NEG_INF;
    u32 bi = 0xffffffffu;
    u64 valid = 0;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = sample_logit(c, i);
        valid += v == v;
        if (v > bv) {
            bv = v;
            bi = i;
        }
    }
    argmax_warp(bv, bi, best_v, best_i);
    valid = block_sum_u64(valid, red);  // its barriers also publish best_v / best_i
    argmax_block(best_v, best_i, bv, bi);
    if (p.temperature == 0.0f || valid == 0 || fabsf(bv) == __int_as_float(0x7f800000)) {
        if (threadIdx.x == 0) out[blockIdx.x] = bi == 0xffffffffu ? 0 : bi;
        return;
    }
    c.max = bv;

    // ---- top-k ----
    if (p.top_k > 0 && p.top_k < valid) sample_boundary(c, true, p.top_k, &c.k_key, &c.k_id);

    // ---- top-p ----
    u64 total = 0;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        u32 k = 0;
        total += sample_weight(c, i, false, &k);
    }
    total = block_sum_u64(total, red);
    const u64 p24 = p.top_p24;
    const u64 target = p24 * (total >> 24) + ((p24 * (total & 0xffffffull) + 0xffffffull) >> 24);
    if (target < total) {
        sample_boundary(c, false, target, &c.p_key, &c.p_id);
        total = 0;
        for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
            u32 k = 0;
            total += sample_weight(c, i, false, &k);
        }
        total = block_sum_u64(total, red);
    }

    // ---- the draw: the first kept token, in id order, whose running weight exceeds r ----
    const u64 r = __umul64hi(draw_bits(p.seed, p.stream, p.step), total);
    const u32 per = (n + blockDim.x - 1) / blockDim.x;
    const u32 lo = min(n, threadIdx.x * per), hi = min(n, lo + per);
    u64 mine = 0;
    for (u32 i = lo; i < hi; i++) {
        u32 k = 0;
        mine += sample_weight(c, i, false, &k);
    }
    const u64 before = block_exclusive_u64(mine, red);
    if (before <= r && r < before + mine) {
        u64 run = before;
        for (u32 i = lo; i < hi; i++) {
            u32 k = 0;
            run += sample_weight(c, i, false, &k);
            if (run > r) {
                s_token = i;
                break;
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = s_token;
}

// history[slot[t] * words + tok[t] / 32] |= bit tok[t] % 32 for each of `tokens` tokens: the
// tokens a pass appends join their slots' repetition histories (sample_f32's penalty).
extern "C" __global__ void history_mark(const u32* tok, const u32* slot, u32 tokens, u32* history, u32 words) {
    const u32 t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t < tokens) atomicOr(&history[(u64)slot[t] * words + (tok[t] >> 5)], 1u << (tok[t] & 31u));
}
