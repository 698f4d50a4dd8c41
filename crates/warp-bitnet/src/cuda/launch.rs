//! The thin launch helpers: every kernel launch of the crate goes through [`launch`] or
//! [`launch_plan`], which neither allocate nor synchronize (safe inside CUDA graph
//! capture), and the argument checks the typed launchers share.

use std::ffi::c_void;

use cudarc::driver::sys::{CUdeviceptr, CUstream};
use cudarc::driver::CudaFunction;

use super::plan::GemmPlan;
use crate::dtype::DType;
use crate::error::{shape, Error, Result};

/// The argument array of a kernel launch: a pointer to each (mutable, local) parameter,
/// in the kernel's order.
macro_rules! kernel_params {
    ($($p:ident),* $(,)?) => {
        [$(&mut $p as *mut _ as *mut std::ffi::c_void),*]
    };
}
pub(crate) use kernel_params;

/// The element-type code the layout and epilogue kernels take (`dtype`/`out` in
/// layout.cu and quant.cu): 0 for their one non-16-bit type (f32 or i8), 1 f16, 2 bf16;
/// `dtype` must be one of `allowed`, else an error naming `arg`.
pub(crate) fn kernel_dtype(dtype: DType, allowed: &[DType], arg: &str) -> Result<u32> {
    if !allowed.contains(&dtype) {
        let names: Vec<_> = allowed.iter().map(|d| d.name()).collect();
        return Err(Error::Unsupported {
            what: "dtype",
            detail: format!("{arg} {}; need {}", dtype.name(), names.join(" or ")),
        });
    }
    Ok(match dtype {
        DType::F16 => 1,
        DType::BF16 => 2,
        _ => 0,
    })
}

/// Blocks of 256 threads for `threads` threads, within the 1-D grid limit.
pub(crate) fn blocks_of_256(threads: usize) -> Result<u32> {
    u32::try_from(threads.div_ceil(256)).map_err(|_| Error::TooLarge {
        arg: "weights",
        value: threads as u64,
        limit: u32::MAX as u64 * 256,
    })
}

pub(crate) fn check_ptr(arg: &'static str, ptr: CUdeviceptr, align: usize) -> Result<()> {
    if ptr == 0 {
        return Err(Error::Misaligned {
            arg,
            detail: "null pointer".into(),
        });
    }
    if ptr % align as u64 != 0 {
        return Err(Error::Misaligned {
            arg,
            detail: format!("address {ptr:#x} is not a multiple of {align}"),
        });
    }
    Ok(())
}

/// `a * b` elements, or `TooLarge`.
pub(crate) fn elems(arg: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or(Error::TooLarge {
        arg,
        value: u64::MAX,
        limit: usize::MAX as u64,
    })
}

/// Launches `f` on `stream` with a 1-D or 2-D grid.
///
/// # Safety
/// `params` must match the kernel's signature, and every pointer they hold must be
/// valid for what the kernel reads and writes until the launch completes.
pub(crate) unsafe fn launch(
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    stream: CUstream,
    params: &mut [*mut c_void],
) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe {
        cudarc::driver::result::launch_kernel(
            f.cu_function(),
            grid,
            (block, 1, 1),
            smem,
            stream,
            params,
        )
    }?;
    Ok(())
}

/// Launches a planned GEMM kernel `f`, in clusters where the plan says so.
///
/// # Safety
/// As [`launch`].
pub(crate) unsafe fn launch_plan(
    f: &CudaFunction,
    plan: &GemmPlan,
    stream: CUstream,
    params: &mut [*mut c_void],
) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe {
        if plan.cluster > 0 {
            let (grid, cluster, threads, smem) = (plan.grid, plan.cluster, plan.threads, plan.smem);
            launch_clusters(f, grid, cluster, threads, smem, stream, params)
        } else {
            launch(f, plan.grid, plan.threads, plan.smem, stream, params)
        }
    }
}

/// Launches `f` in clusters of `cluster` CTAs along x (`grid.0` a multiple).
///
/// # Safety
/// As [`launch`].
pub(crate) unsafe fn launch_clusters(
    f: &CudaFunction,
    grid: (u32, u32, u32),
    cluster: u32,
    threads: u32,
    smem: u32,
    stream: CUstream,
    params: &mut [*mut c_void],
) -> Result<()> {
    let mut attr = super::cluster_attribute(cluster);
    let config = cudarc::driver::sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: threads,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: stream,
        attrs: &mut attr,
        numAttrs: 1,
    };
    // SAFETY: forwarded from the caller; `config` and `attr` outlive the call.
    unsafe {
        cudarc::driver::sys::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()?;
    Ok(())
}

pub(crate) fn check_buf(arg: &'static str, len: usize, need: usize, dims: &[usize]) -> Result<()> {
    if len == need {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            arg,
            expected: shape(dims),
            got: format!("{len} elements"),
        })
    }
}
