//! What the GPU benches need that touches raw CUDA, behind safe functions: a kernel that holds
//! a stream for a given GPU time (nvbench's blocking kernel: timed calls queue behind it, so
//! host launch time never shows up as GPU time), and poisoning an output before a checked call.

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtrMut, DeviceRepr};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use super::{compile, Gpu};
use crate::error::Result;

/// Holds the stream for `ns` nanoseconds of GPU time.
const HOLD_SRC: &str = r#"
extern "C" __global__ void hold(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); while (t - t0 < ns);
}"#;

/// The `hold` kernel, compiled for one GPU.
pub(crate) struct StreamHold {
    hold: CudaFunction,
}

impl StreamHold {
    /// Compiles and loads the kernel on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let src = compile::Source {
            name: "hold.cu",
            text: std::borrow::Cow::Borrowed(HOLD_SRC),
        };
        let ptx = Ptx::from_binary(compile::compile(&src, &gpu.info().arch)?);
        let module = gpu.context().load_module(ptx)?;
        Ok(Self {
            hold: module.load_function("hold")?,
        })
    }

    /// Enqueues a wait of `time` on `stream` (a stream of the GPU the kernel was loaded on).
    pub fn hold(&self, stream: &Arc<CudaStream>, time: Duration) -> Result<()> {
        let ns = time.as_nanos() as u64;
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `hold` takes one u64 by value and touches no memory.
        unsafe { stream.launch_builder(&self.hold).arg(&ns).launch(cfg) }?;
        Ok(())
    }
}

/// Fills `y` with 0xFF bytes (a NaN in f16, bf16 and f32), so that unwritten elements show.
pub(crate) fn poison<T: DeviceRepr>(stream: &Arc<CudaStream>, y: &mut CudaSlice<T>) -> Result<()> {
    let n = y.num_bytes();
    let (p, _g) = y.device_ptr_mut(stream);
    // SAFETY: writes exactly the buffer's bytes, in the stream's order (the guard records the
    // use on `stream`).
    unsafe { cudarc::driver::result::memset_d8_async(p, 0xFF, n, stream.cu_stream()) }?;
    Ok(())
}
