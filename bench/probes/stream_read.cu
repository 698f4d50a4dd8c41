// Read-bandwidth ceilings of three ways to stream packed weights through an SM
// (docs/NOTES.md, "v20: how fast can the weights arrive"). Built and run on a CUDA
// host: nvcc -O3 -gencode=arch=compute_90a,code=sm_90a stream_read.cu -o stream_read
//
//   ldg      plain 16-byte loads (ld.global.nc.L1::no_allocate), UNROLL in flight per thread
//   cpasync  what the GEMV kernels do now: per warp a ring of DEPTH x 512 bytes, each
//            lane copying its 16 bytes with cp.async (evict-first), 8 warps per CTA
//   bulk     one thread per CTA issues cp.async.bulk (TMA) copies of CHUNK bytes into a
//            CTA-wide ring of STAGES, completed on mbarriers; 8 warps consume
//
// Each reads 58.7 MB (the packed 28672 x 8192 matrix) from one of enough copies to be
// L2-cold; CUDA events; median of 50. Prints GB/s and % of the device copy bandwidth
// (bytes read + written by a 1 GiB cudaMemcpy, measured in the same run).
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>

#define CHECK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); exit(1); } } while (0)
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ u32 sink;

__device__ __forceinline__ uint4 ldg_nc(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
__device__ __forceinline__ u32 xor4(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }

template <int UNROLL>
__global__ void __launch_bounds__(256) ldg(const uint4* w, u64 n) {
    u32 acc = 0;
    const u64 stride = (u64)gridDim.x * 256;
    for (u64 i = blockIdx.x * 256 + threadIdx.x; i < n; i += stride * UNROLL) {
        uint4 v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) v[u] = i + u * stride < n ? ldg_nc(w + i + u * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < UNROLL; u++) acc ^= xor4(v[u]);
    }
    if (acc == 0x12345678u) sink = acc;
}

__global__ void empty() {}

__device__ __forceinline__ u64 evict_first() {
    u64 p;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
    return p;
}
__device__ __forceinline__ u32 saddr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ uint4 lds(u32 a) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(a));
    return v;
}

template <int DEPTH>
__global__ void __launch_bounds__(256) cpasync(const uint4* w, u64 chunks) {  // chunks of 512 bytes
    extern __shared__ __align__(16) unsigned char smem[];
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 ring = saddr(smem) + (warp * DEPTH * 32 + lane) * 16;
    const u64 policy = evict_first();
    const u64 first = (u64)blockIdx.x * 8 + warp, step = (u64)gridDim.x * 8;
    const u64 mine = first < chunks ? (chunks - first + step - 1) / step : 0;
    u64 ahead = 0;
    auto produce = [&]() {
        if (ahead < mine)
            asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" ::"r"(ring + (u32)(ahead % DEPTH) * 512),
                         "l"(w + (first + ahead * step) * 32 + lane), "l"(policy));
        asm volatile("cp.async.commit_group;");
        ahead++;
    };
    for (int i = 0; i < DEPTH - 1; i++) produce();
    u32 acc = 0;
    for (u64 f = 0; f < mine; f++) {
        produce();
        asm volatile("cp.async.wait_group %0;" ::"n"(DEPTH - 1));
        acc ^= xor4(lds(ring + (u32)(f % DEPTH) * 512));
    }
    asm volatile("cp.async.wait_group 0;");
    if (acc == 0x12345678u) sink = acc;
}

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    asm volatile(
        "{\n .reg .pred p;\n W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra W;\n}" ::"r"(bar),
        "r"(parity)
        : "memory");
}
__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar, u64 policy) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(
            dst),
        "l"(src), "r"(bytes), "r"(bar), "l"(policy)
        : "memory");
}

// CTA-wide ring: full[s] completes when stage s's bytes land; empty[s] when all 8 warps read it.
template <int CHUNK, int STAGES>
__global__ void __launch_bounds__(256) bulk(const unsigned char* w, u64 chunks) {
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ __align__(8) u64 bars[2 * STAGES];
    const u32 base = saddr(smem), full = saddr(bars), empty = full + 8 * STAGES;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u64 mine = blockIdx.x < chunks ? (chunks - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
    u64 policy = 0;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(full + 8 * s, 1);
            mbar_init(empty + 8 * s, 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;");
        policy = evict_first();
        for (u64 f = 0; f < STAGES && f < mine; f++) {
            mbar_expect_tx(full + 8 * f, CHUNK);
            bulk_copy(base + (u32)f * CHUNK, w + (blockIdx.x + f * gridDim.x) * (u64)CHUNK, CHUNK, full + 8 * f, policy);
        }
    }
    __syncthreads();
    u32 acc = 0;
    for (u64 f = 0; f < mine; f++) {
        const u32 s = f % STAGES, parity = (f / STAGES) & 1;
        mbar_wait(full + 8 * s, parity);
#pragma unroll
        for (int i = 0; i < CHUNK / 4096; i++) acc ^= xor4(lds(base + s * CHUNK + i * 4096 + threadIdx.x * 16));
        __syncwarp();
        if (lane == 0) mbar_arrive(empty + 8 * s);
        if (threadIdx.x == 0 && f + STAGES < mine) {
            mbar_wait(empty + 8 * s, parity);
            mbar_expect_tx(full + 8 * s, CHUNK);
            bulk_copy(base + s * CHUNK, w + (blockIdx.x + (f + STAGES) * gridDim.x) * (u64)CHUNK, CHUNK, full + 8 * s,
                      policy);
        }
    }
    (void)warp;
    if (acc == 0x12345678u) sink = acc;
}

static int sms;
static float median(std::vector<float> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; }

template <typename F>
static float time_us(F launch, int copies) {
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a)); CHECK(cudaEventCreate(&b));
    for (int i = 0; i < 10; i++) launch(i % copies);
    std::vector<float> t;
    for (int i = 0; i < 50; i++) {
        CHECK(cudaEventRecord(a));
        launch(i % copies);
        CHECK(cudaEventRecord(b));
        CHECK(cudaEventSynchronize(b));
        float ms; CHECK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms * 1e3f);
    }
    CHECK(cudaGetLastError());
    return median(t);
}

int main() {
    cudaDeviceProp prop; CHECK(cudaGetDeviceProperties(&prop, 0));
    sms = prop.multiProcessorCount;
    const u64 bytes = 28672ull * 8192 / 4;  // 58.7 MB
    const int copies = (int)std::max<u64>(2, 4ull * prop.l2CacheSize / bytes + 1);
    std::vector<unsigned char*> w(copies);
    for (auto& p : w) { CHECK(cudaMalloc(&p, bytes)); CHECK(cudaMemset(p, 0x5a, bytes)); }
    // Copy bandwidth: 1 GiB device to device, read + written.
    unsigned char *src, *dst; const u64 gib = 1ull << 30;
    CHECK(cudaMalloc(&src, gib)); CHECK(cudaMalloc(&dst, gib)); CHECK(cudaMemset(src, 1, gib));
    const float copy_us = time_us([&](int) { CHECK(cudaMemcpyAsync(dst, src, gib, cudaMemcpyDeviceToDevice)); }, 1);
    const double copy_gbps = 2.0 * gib / copy_us / 1e3;
    printf("%s, %d SMs, L2 %d MB, %d copies; copy bandwidth %.0f GB/s\n", prop.name, sms, prop.l2CacheSize >> 20, copies, copy_gbps);
    printf("%-34s %8s %8s %6s\n", "variant", "us", "GB/s", "%copy");
    auto report = [&](const char* name, float us) {
        const double g = bytes / us / 1e3;
        printf("%-34s %8.2f %8.0f %6.1f\n", name, us, g, 100.0 * g / copy_gbps);
    };
    char name[64];
    for (int cps : {4, 8, 16}) {
        snprintf(name, sizeof name, "ldg unroll4 %d CTA/SM", cps);
        report(name, time_us([&](int c) { ldg<4><<<sms * cps, 256>>>((const uint4*)w[c], bytes / 16); }, copies));
        snprintf(name, sizeof name, "ldg unroll8 %d CTA/SM", cps);
        report(name, time_us([&](int c) { ldg<8><<<sms * cps, 256>>>((const uint4*)w[c], bytes / 16); }, copies));
    }
    for (int cps : {2, 4}) {
        const int sm = 8 * 8 * 512;  // 8 warps x DEPTH 8 x 512 bytes; pad to the GEMV's 52 KB for 4/SM
        const int dyn = cps == 4 ? 52 * 1024 : sm;
        CHECK(cudaFuncSetAttribute(cpasync<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, dyn));
        snprintf(name, sizeof name, "cpasync depth8 %d CTA/SM", cps);
        report(name, time_us([&](int c) { cpasync<8><<<sms * cps, 256, dyn>>>((const uint4*)w[c], bytes / 512); }, copies));
    }
#define BULK(CH, ST, CPS)                                                                                  \
    {                                                                                                      \
        const int dyn = CH * ST;                                                                           \
        CHECK(cudaFuncSetAttribute(bulk<CH, ST>, cudaFuncAttributeMaxDynamicSharedMemorySize, dyn));       \
        snprintf(name, sizeof name, "bulk %dKB x %d stages %d CTA/SM", CH / 1024, ST, CPS);                \
        report(name, time_us([&](int c) { bulk<CH, ST><<<sms * CPS, 256, dyn>>>(w[c], bytes / CH); }, copies)); \
    }
    BULK(4096, 8, 4)
    BULK(4096, 4, 4)
    BULK(8192, 4, 4)
    BULK(8192, 6, 4)
    BULK(16384, 3, 4)
    BULK(16384, 4, 2)
    BULK(16384, 8, 1)
    BULK(32768, 4, 1)
    BULK(4096, 16, 2)
    BULK(2048, 8, 4)
    BULK(2048, 16, 4)

    // The floor under any kernel: an empty launch, and plain reads of the packed sizes of
    // the bench's shapes (and larger), to fit time = t0 + bytes / bandwidth.
    printf("\nempty kernel: %.2f us\n", time_us([&](int) { empty<<<sms, 256>>>(); }, 1));
    printf("%-34s %8s %8s %6s\n", "read (ldg unroll8 8 CTA/SM)", "us", "GB/s", "%copy");
    unsigned char* big; CHECK(cudaMalloc(&big, 4 * bytes)); CHECK(cudaMemset(big, 0x5a, 4 * bytes));
    for (u64 b : {640ull * 2560 / 4, 2560ull * 6912 / 4, 4096ull * 4096 / 4, 14336ull * 4096 / 4, 8192ull * 8192 / 4,
                  bytes, 2 * bytes, 4 * bytes}) {
        // L2-cold: the source moves through a span of 4 x 58.7 MB (>= 4 x L2) each launch.
        const int slots = (int)std::max<u64>(1, 4 * bytes / b);
        const float us = time_us([&](int c) { ldg<8><<<sms * 8, 256>>>((const uint4*)(big + (u64)(c % slots) * b), b / 16); }, slots > 1 ? slots : 1);
        const double g = b / us / 1e3;
        printf("%-34.1f %8.2f %8.0f %6.1f\n", b / 1e6, us, g, 100.0 * g / copy_gbps);
    }
    return 0;
}
