//! CUDA backend: NVRTC-compiled kernels launched through the driver API on the
//! caller's stream. No CUDA toolkit is needed at build time; the driver, NVRTC and
//! cuBLAS are loaded at run time, and every entry point returns
//! [`Error::NoCudaDriver`] instead of panicking when the driver is missing.
//!
//! ```no_run
//! use warp_bitnet::cuda::Gpu;
//! # fn main() -> warp_bitnet::Result<()> {
//! # let w = warp_bitnet::TernaryMatrix::from_ternary(1, 16, &[1; 16], warp_bitnet::Scale::None)?;
//! let gpu = Gpu::new(0)?;                     // compiles (or loads cached) kernels
//! let stream = gpu.context().default_stream();
//! let wd = gpu.upload(&w, &stream)?;          // I2 -> T2 on the device
//! let x = stream.clone_htod(&[half::f16::ONE; 16])?;
//! let mut y = stream.alloc_zeros::<half::f16>(1)?;
//! gpu.gemm(&wd, &x, 1, None, &mut y, &stream)?; // y = W x
//! # Ok(()) }
//! ```

pub(crate) mod bench_aids;
pub(crate) mod blas;
pub mod compile;
mod dense;
pub(crate) mod engine;
mod engine_ops;
mod gemm;
mod launch;
mod plan;
mod quant;
mod weights;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{CudaContext, CudaFunction};

pub(crate) use engine_ops::{
    history_words, AttnParams, Deq, OwnedGraph, RopeParams, RowInput, RowOp, RowOutput, SampleRow,
};
pub use gemm::{GpuFloat, GpuOut, PreparedGemm};
pub use plan::{
    gemm_symbol, tokens_per_cta_options, Cta, GemmArgs, GemmParams, KernelFamily, Route,
    SplitKernels, Staging,
};
pub use weights::GpuMatrix;

use crate::error::{Error, Result};

/// Whether a CUDA driver can be loaded and reports at least one device.
pub fn is_available() -> bool {
    driver_present() && CudaContext::device_count().is_ok_and(|n| n > 0)
}

fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// What a benchmark or a kernel heuristic needs to know about the device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Marketing name, e.g. "NVIDIA H200".
    pub name: String,
    /// Compute capability.
    pub compute_capability: (i32, i32),
    /// NVRTC target the kernels were compiled for.
    pub arch: String,
    /// Streaming multiprocessors.
    pub sm_count: usize,
    /// L2 cache size, bytes.
    pub l2_bytes: usize,
    /// Shared memory per SM, bytes.
    pub smem_per_sm: usize,
    /// Device memory, bytes.
    pub total_mem: usize,
    /// Driver version as (major, minor), e.g. (13, 0).
    pub driver_version: (i32, i32),
}

/// One GPU with the warp-bitnet kernels loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    info: DeviceInfo,
    functions: HashMap<String, Kernel>,
    /// When the planner takes the split-K cluster kernels (sm_90+).
    split_kernels: SplitKernels,
    /// Whether the split and prefill kernels use wgmma (sm_90a only).
    wgmma: bool,
    /// Whether batches beyond 64 tokens take the prefill kernels.
    prefill: bool,
    /// Whether large batches may take the dense route (cuBLAS over decoded weights).
    dense: bool,
    /// cuBLAS, for the dense route; created on its first use.
    blas: Mutex<Option<cudarc::cublas::CudaBlas>>,
}

/// A loaded kernel: the most threads its CTA may have (for the GEMM kernels, the
/// `__launch_bounds__` they were compiled for: their CTA size), how many such CTAs fit on
/// one SM by registers, and its shared memory (static, and the most dynamic memory it
/// was allowed).
struct Kernel {
    function: CudaFunction,
    threads: u32,
    ctas_per_sm: usize,
    static_smem: usize,
    max_dynamic_smem: usize,
    /// Resident clusters by (CTAs per SM, cluster size): the driver's answer, asked once
    /// (`Gpu::resident_clusters`).
    clusters: Mutex<HashMap<(usize, usize), usize>>,
}

impl Gpu {
    /// Opens device `ordinal` (primary context) and loads every kernel, compiling
    /// with NVRTC on first use (cached on disk, see [`compile`]).
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(Error::NoCudaDriver);
        }
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        if major < 8 {
            return Err(Error::Unsupported {
                what: "GPU",
                detail: format!(
                    "compute capability {major}.{minor}; warp-bitnet needs 8.0 (Ampere) or newer"
                ),
            });
        }
        let arch = compile::arch_for(major, minor);
        let smem_optin =
            ctx.attribute(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize;
        // The two GEMM families take seconds each to compile on first use: in parallel.
        let sources = compile::sources();
        let cubins: Vec<Result<Vec<u8>>> = std::thread::scope(|scope| {
            let jobs: Vec<_> = sources
                .iter()
                .map(|src| scope.spawn(|| compile::cubin_cached(src, &arch)))
                .collect();
            jobs.into_iter()
                .map(|j| j.join().expect("NVRTC compile thread panicked"))
                .collect()
        });
        let mut functions = HashMap::new();
        for (src, cubin) in sources.iter().zip(cubins) {
            let cubin = cubin?;
            let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin))?;
            for name in kernel_names(&src.text) {
                let function = module.load_function(&name)?;
                functions.insert(name, Kernel::new(function, smem_optin)?);
            }
        }
        keep_pool_memory(&ctx)?;
        let mut driver = 0;
        // SAFETY: the driver is loaded; `driver` is valid for writes.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) }.result()?;
        let info = DeviceInfo {
            name: ctx.name()?,
            compute_capability: (major, minor),
            arch,
            sm_count: ctx.attribute(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as usize,
            l2_bytes: ctx.attribute(Attr::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as usize,
            smem_per_sm: ctx
                .attribute(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)?
                as usize,
            total_mem: ctx.total_mem()?,
            driver_version: (driver / 1000, (driver % 1000) / 10),
        };
        Ok(Self {
            ctx,
            wgmma: info.arch == compile::WGMMA_ARCH,
            prefill: true,
            info,
            functions,
            split_kernels: SplitKernels::Auto,
            dense: true,
            blas: Mutex::default(),
        })
    }

    /// The CUDA context (create streams and buffers from it).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Device properties.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// When the planner takes the split-K cluster kernels for 9+ tokens on sm_90 and
    /// newer (default [`SplitKernels::Auto`]). The other modes are for tests and A/B
    /// benchmarks of the two kernel families on one GPU.
    pub fn set_split_kernels(&mut self, mode: SplitKernels) {
        self.split_kernels = mode;
    }

    /// Whether the split and prefill kernels use warpgroup MMAs (`wgmma`) where the GPU
    /// has them (sm_90a; the default there) or `mma.sync`: for tests and A/B benchmarks.
    /// Elsewhere they always use `mma.sync`.
    pub fn set_wgmma(&mut self, on: bool) {
        self.wgmma = on && self.info.arch == compile::WGMMA_ARCH;
    }

    /// Whether the split and prefill kernels use wgmma.
    pub fn wgmma(&self) -> bool {
        self.wgmma
    }

    /// Whether batches of more than 64 tokens take the prefill kernels (the default), or
    /// the split / token-group kernels: for tests and A/B benchmarks.
    pub fn set_prefill(&mut self, on: bool) {
        self.prefill = on;
    }

    /// Whether batches of more than 64 tokens take the prefill kernels.
    pub fn prefill(&self) -> bool {
        self.prefill
    }

    /// Whether [`Gpu::route`] may send large batches to the dense path (the default), or
    /// always to the kernels: for tests and benchmarks of the kernels themselves.
    pub fn set_dense(&mut self, on: bool) {
        self.dense = on;
    }

    /// Whether large batches may take the dense route.
    pub fn dense(&self) -> bool {
        self.dense
    }

    /// CTAs of kernel `name` with `dynamic` bytes of dynamic shared memory that fit the
    /// GPU at once (registers and shared memory).
    fn resident_ctas(&self, name: &str, dynamic: usize) -> Result<usize> {
        let k = self.kernel(name)?;
        Ok(self.ctas_per_sm(k, dynamic).max(1) * self.info.sm_count)
    }

    /// CTAs of `k` with `dynamic` bytes of dynamic shared memory that one SM holds, by
    /// registers and shared memory (1 KB per CTA is reserved by the driver); 0 if none.
    fn ctas_per_sm(&self, k: &Kernel, dynamic: usize) -> usize {
        let by_smem = self.info.smem_per_sm / (k.static_smem + dynamic + 1024);
        k.ctas_per_sm.min(by_smem)
    }

    /// Clusters of `size` CTAs of kernel `name` with `dynamic` bytes of dynamic shared
    /// memory that fit the GPU at once (clusters live within one GPC, so this is the
    /// driver's count, not SMs / size); 0 before sm_90.
    fn resident_clusters(&self, name: &str, dynamic: usize, size: usize) -> Result<usize> {
        if self.info.compute_capability.0 < 9 {
            return Ok(0);
        }
        let k = self.kernel(name)?;
        // The driver's answer depends on the shared memory only through the CTAs it lets
        // an SM hold.
        let per_sm = self.ctas_per_sm(k, dynamic);
        if per_sm == 0 {
            return Ok(0);
        }
        let mut cache = k.clusters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&n) = cache.get(&(per_sm, size)) {
            return Ok(n);
        }
        let mut attr = cluster_attribute(size as u32);
        let config = cudarc::driver::sys::CUlaunchConfig {
            gridDimX: size as u32,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: k.threads,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: dynamic as u32,
            hStream: std::ptr::null_mut(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        let mut n = 0;
        // SAFETY: the function is loaded; `config` and `attr` outlive the call.
        unsafe {
            cudarc::driver::sys::cuOccupancyMaxActiveClusters(
                &mut n,
                k.function.cu_function(),
                &config,
            )
        }
        .result()?;
        let n = n.max(0) as usize;
        cache.insert((per_sm, size), n);
        Ok(n)
    }

    fn kernel(&self, name: &str) -> Result<&Kernel> {
        self.functions.get(name).ok_or_else(|| Error::Unsupported {
            what: "kernel",
            detail: format!("`{name}` is not instantiated"),
        })
    }

    fn function(&self, name: &str) -> Result<&CudaFunction> {
        Ok(&self.kernel(name)?.function)
    }

    /// This GPU's cuBLAS handle (created on first use) bound to `stream`, with the guard that
    /// keeps other callers from rebinding it until the caller's GEMMs are enqueued.
    fn blas_on(
        &self,
        stream: &Arc<cudarc::driver::CudaStream>,
    ) -> Result<(
        std::sync::MutexGuard<'_, Option<cudarc::cublas::CudaBlas>>,
        cudarc::cublas::sys::cublasHandle_t,
    )> {
        let mut guard = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(cudarc::cublas::CudaBlas::new(stream.clone())?);
        }
        let handle = *guard.as_ref().expect("set above").handle();
        // SAFETY: the handle is live; the stream belongs to this GPU's context.
        unsafe { cudarc::cublas::result::set_stream(handle, stream.cu_stream() as _) }?;
        Ok((guard, handle))
    }
}

impl Kernel {
    fn new(function: CudaFunction, smem_optin: usize) -> Result<Self> {
        use cudarc::driver::result::function::{get_function_attribute, set_function_attribute};
        use cudarc::driver::sys::CUfunction_attribute as F;
        let f = function.cu_function();
        // SAFETY: `f` was just loaded from a live module.
        let static_smem =
            unsafe { get_function_attribute(f, F::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES) }? as usize;
        let max_dynamic_smem = smem_optin.saturating_sub(static_smem);
        // SAFETY: as above; the value is within the device's opt-in limit.
        unsafe {
            set_function_attribute(
                f,
                F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                max_dynamic_smem as i32,
            )
        }?;
        // SAFETY: as above.
        let threads =
            unsafe { get_function_attribute(f, F::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK) }?;
        // SAFETY: as above.
        let ctas = unsafe {
            cudarc::driver::result::occupancy::max_active_block_per_multiprocessor(f, threads, 0)
        }?;
        Ok(Self {
            function,
            threads: threads as u32,
            ctas_per_sm: ctas.max(1) as usize,
            static_smem,
            max_dynamic_smem,
            clusters: Mutex::default(),
        })
    }
}

/// The prefill kernel's workspace comes from the device's default memory pool (stream
/// ordered). By default the pool hands freed memory back to the driver at every
/// synchronization and the next call maps it anew, which cost a synchronizing caller
/// (e.g. a PyTorch loop) 50-120 µs per call on the H100 (docs/NOTES.md, v28): keep it.
fn keep_pool_memory(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::sys;
    let mut pool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: the context's device is valid; `pool` and `threshold` are valid for the calls.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result()?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()?;
    }
    Ok(())
}

/// The launch attribute for clusters of `size` CTAs along x.
pub(crate) fn cluster_attribute(size: u32) -> cudarc::driver::sys::CUlaunchAttribute {
    use cudarc::driver::sys::{CUlaunchAttribute, CUlaunchAttributeID, CUlaunchAttributeValue};
    // SAFETY: an all-zero launch attribute value is valid (a union of plain integers).
    let mut value: CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
    value.clusterDim.x = size;
    value.clusterDim.y = 1;
    value.clusterDim.z = 1;
    CUlaunchAttribute {
        id: CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
        pad: [0; 4],
        value,
    }
}

/// Names of the `extern "C" __global__` kernels a source defines (directly or through
/// the `GEMM_KERNEL(..., NAME)` macro).
fn kernel_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("extern \"C\" __global__ void ") {
            // Skip `__launch_bounds__(...)` if present.
            let rest = match rest.strip_prefix("__launch_bounds__(") {
                Some(r) => r.split_once(") ").map_or("", |(_, name)| name),
                None => rest,
            };
            // Kernel symbols are lower-case snake_case: this skips the macro's `NAME`.
            let symbol =
                |n: &&str| n.starts_with(|c: char| c.is_ascii_lowercase()) && !n.contains(' ');
            if let Some(name) = rest.split('(').next().filter(symbol) {
                names.push(name.to_string());
            }
        } else if let Some(args) = line
            .strip_prefix("GEMM_KERNEL(")
            .or_else(|| line.strip_prefix("GEMM_KERNEL_QX("))
            .or_else(|| line.strip_prefix("GEMM_SPLIT_KERNEL("))
            .or_else(|| line.strip_prefix("GEMM_PREFILL_KERNEL("))
            .or_else(|| line.strip_prefix("GEMM_PREFILL_MMA_KERNEL("))
        {
            if let Some(name) = args.trim_end_matches(')').rsplit(',').next() {
                names.push(name.trim().to_string());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_kernel_and_the_symbol_builder_agrees() {
        use crate::{DType, Levels};
        for (src, levels, prefix) in [
            (compile::gemm(Levels::Ternary), Levels::Ternary, "gemm_t2_"),
            (compile::gemm(Levels::Int2), Levels::Int2, "gemm_int2_"),
        ] {
            let names = kernel_names(&src.text);
            for n in &names {
                assert!(n.starts_with(prefix), "{n}");
            }
            // Every kernel the planner can pick exists, and no other is instantiated.
            let mut planned = Vec::new();
            for (x, y) in [
                (DType::F16, DType::F16),
                (DType::BF16, DType::BF16),
                (DType::I8, DType::F16),
                (DType::I8, DType::BF16),
                (DType::I8, DType::I32),
            ] {
                if x != DType::I8 {
                    planned.push(gemm_symbol(levels, x, Staging::Quantized, y, Cta::Single));
                }
                if x == DType::BF16 {
                    planned.push(gemm_symbol(levels, x, Staging::AsF16, y, Cta::Single));
                }
                planned.push(gemm_symbol(levels, x, Staging::AsIs, y, Cta::Single));
                for &tokens in plan::tokens_per_cta_options(x) {
                    for &row_tiles in plan::row_tile_options(x, tokens) {
                        let cta = Cta::Groups { tokens, row_tiles };
                        planned.push(gemm_symbol(levels, x, Staging::AsIs, y, cta));
                    }
                }
                for tokens in plan::SPLIT_TOKENS {
                    for wgmma in [false, true] {
                        let cta = Cta::Split { tokens, wgmma };
                        planned.push(gemm_symbol(levels, x, Staging::AsIs, y, cta));
                    }
                }
                for (wgmma, split_k) in [(false, false), (true, false), (true, true)] {
                    let cta = Cta::Prefill { wgmma, split_k };
                    planned.push(gemm_symbol(levels, x, Staging::AsIs, y, cta));
                }
            }
            planned.sort();
            let mut found = names.clone();
            found.sort();
            assert_eq!(found, planned);
        }
        assert_eq!(
            kernel_names(&compile::LAYOUT.text),
            ["i2_to_t2", "t2_to_i2", "quantize_to_t2", "i2_to_dense"]
        );
        assert_eq!(
            kernel_names(&compile::QUANT.text),
            [
                "quantize_i8_f16",
                "quantize_i8_bf16",
                "w2a8_epilogue",
                "bias_rows",
                plan::PREPASS_16,
                plan::PREPASS_I8
            ]
        );
        assert_eq!(
            kernel_names(&compile::ENGINE.text),
            [
                "embed_gather",
                "row_norm_quant",
                "rope_kv_append",
                "attention_decode",
                "argmax_f32",
                "sample_f32",
                "history_mark"
            ]
        );
    }

    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        if !driver_present() {
            assert!(matches!(Gpu::new(0), Err(Error::NoCudaDriver)));
        }
    }
}
