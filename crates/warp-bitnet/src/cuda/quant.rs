//! Per-token int8 quantization and the W2A8 epilogue (quant.cu) on a [`Gpu`].

use std::sync::Arc;

use cudarc::driver::sys::{CUdeviceptr, CUstream};
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::gemm::GpuFloat;
use super::launch::{
    blocks_of_256, check_buf, check_ptr, elems, kernel_dtype, kernel_params, launch,
};
use super::Gpu;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::{check_max_dim, Levels};

/// Threads per quantization CTA (`THREADS` in quant.cu).
pub(crate) const QUANT_THREADS: u32 = 1024;

impl Gpu {
    /// Per-token int8 quantization on the device (same bytes as
    /// [`quantize_activations_i8`](crate::quant::quantize_activations_i8)).
    pub fn quantize_i8<T: GpuFloat>(
        &self,
        x: &impl DevicePtr<T>,
        batch: usize,
        n: usize,
        q: &mut impl DevicePtrMut<i8>,
        scale: &mut impl DevicePtrMut<f32>,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        let len = elems("x", batch, n)?;
        check_buf("x", x.len(), len, &[batch, n])?;
        check_buf("q", q.len(), len, &[batch, n])?;
        check_buf("scale", scale.len(), batch, &[batch])?;
        let (xp, _gx) = x.device_ptr(stream);
        let (qp, _gq) = q.device_ptr_mut(stream);
        let (sp, _gs) = scale.device_ptr_mut(stream);
        // SAFETY: lengths checked above; the buffers are used in `stream`'s order and
        // their guards outlive the launch.
        unsafe { self.quantize_i8_raw(xp, T::DTYPE, batch, n, n, qp, sp, stream.cu_stream()) }
    }

    /// Per-token int8 quantization on raw device pointers: `x` is `[batch, ldx]` f16 or
    /// bf16, `q` is `[batch, n]` int8, `scale` `[batch]` f32.
    ///
    /// # Safety
    /// The buffers must hold those sizes on this GPU and stay alive until the launch
    /// completes; `stream` must belong to this GPU's context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn quantize_i8_raw(
        &self,
        x: CUdeviceptr,
        x_dtype: DType,
        batch: usize,
        n: usize,
        ldx: usize,
        q: CUdeviceptr,
        scale: CUdeviceptr,
        stream: CUstream,
    ) -> Result<()> {
        if batch == 0 || n == 0 {
            return Err(Error::Empty { arg: "x" });
        }
        // The kernel indexes a row with 32-bit integers that step by its block size.
        check_max_dim(&[("batch", batch), ("n", n), ("ldx", ldx)])?;
        if ldx < n {
            return Err(Error::ShapeMismatch {
                arg: "ldx",
                expected: format!(">= {n}"),
                got: ldx.to_string(),
            });
        }
        kernel_dtype(x_dtype, &[DType::F16, DType::BF16], "x")?;
        check_ptr("x", x, 2)?;
        check_ptr("q", q, 1)?;
        check_ptr("scale", scale, 4)?;
        let f = self.function(&format!("quantize_i8_{}", x_dtype.name()))?;
        let (mut xp, mut qp, mut sp) = (x, q, scale);
        let (mut n32, mut ldx32, mut ldq) = (n as u32, ldx as u32, n as u32);
        // 16-byte loads and 8-byte stores need 8-element rows and aligned bases.
        let mut vec = u32::from(n % 8 == 0 && ldx % 8 == 0 && x % 16 == 0 && q % 8 == 0);
        let mut kp = kernel_params!(xp, qp, sp, n32, ldx32, ldq, vec);
        // SAFETY: parameters match quantize_i8_* in quant.cu; the caller guarantees the buffers.
        unsafe { launch(f, (batch as u32, 1, 1), QUANT_THREADS, 0, stream, &mut kp) }
    }

    /// The W2A8 epilogue on int32 sums computed elsewhere (a dense int8 GEMM over
    /// [`i2_to_dense_raw`](Gpu::i2_to_dense_raw) weights): `acc` `[batch, rows]` ->
    /// `y[b, r] = acc * (0.5 for INT2) * x_scale[b] * w_scale + bias[r]` in f16 or bf16,
    /// the GEMM kernels' arithmetic. `w_scale` is `[1]` or `[rows]` (`true`); `bias` is
    /// in the output type.
    ///
    /// # Safety
    /// `acc` must hold `batch * rows` i32, `y` as many outputs, `x_scale` `batch` floats,
    /// `w_scale` and `bias` their sizes, all on this GPU and alive until the launch
    /// completes; `y` must not overlap the inputs; `stream` must belong to this GPU's context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn w2a8_epilogue_raw(
        &self,
        acc: CUdeviceptr,
        x_scale: CUdeviceptr,
        w_scale: Option<(CUdeviceptr, bool)>,
        bias: Option<CUdeviceptr>,
        y: CUdeviceptr,
        y_dtype: DType,
        rows: usize,
        batch: usize,
        levels: Levels,
        stream: CUstream,
    ) -> Result<()> {
        if rows == 0 || batch == 0 {
            return Err(Error::Empty { arg: "acc" });
        }
        check_max_dim(&[("rows", rows), ("batch", batch)])?;
        let mut out = kernel_dtype(y_dtype, &[DType::F16, DType::BF16], "y")?;
        check_ptr("acc", acc, 4)?;
        check_ptr("x_scale", x_scale, 4)?;
        check_ptr("y", y, 2)?;
        if let Some((s, _)) = w_scale {
            check_ptr("w_scale", s, 4)?;
        }
        if let Some(b) = bias {
            check_ptr("bias", b, 2)?;
        }
        let blocks = blocks_of_256(elems("y", rows, batch)?)?;
        let f = self.function("w2a8_epilogue")?;
        let (mut accp, mut xs, mut yp) = (acc, x_scale, y);
        let (mut ws, mut per_row) = w_scale.map_or((0, 0), |(p, per_row)| (p, u32::from(per_row)));
        let mut bp = bias.unwrap_or(0);
        let (mut r, mut b) = (rows as u32, batch as u32);
        let mut int2 = u32::from(levels == Levels::Int2);
        let mut kp = kernel_params!(accp, xs, ws, per_row, bp, yp, r, b, int2, out);
        // SAFETY: parameters match w2a8_epilogue in quant.cu; the caller guarantees the buffers.
        unsafe { launch(f, (blocks, 1, 1), 256, 0, stream, &mut kp) }
    }
}
