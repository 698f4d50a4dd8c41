//! The dense route of a GEMM (where [`Route::Dense`] says so: large batches outside the
//! prefill kernel's reach): the weights decoded once to a dense matrix, kept beside the
//! packed one while memory allows, then cuBLAS. f16 / bf16 activations multiply weights
//! decoded with the scale folded in (rounded once, as a dense model holds them) with f32
//! accumulation, the bias added in cuBLAS's epilogue (beta = 1 over rows of bias); int8
//! activations multiply the int8 levels with exact int32 sums, then the kernels' W2A8
//! epilogue. The same arithmetic as the Python package's dense path.

use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::blas::{gemm_row_major, RowMajorGemm};
use super::launch::{blocks_of_256, elems, kernel_dtype, kernel_params, launch};
use super::plan::{may_be_dense, quantizes_in_kernel, route, Route};
use super::{Gpu, GpuMatrix};
use crate::dtype::DType;
use crate::error::Result;
use crate::format::{i2, tiled, Levels};

/// Decoded weights cached on a [`GpuMatrix`]: `rows * cols` values of `dtype`.
pub(crate) struct DenseWeights {
    pub dtype: DType,
    pub data: CudaSlice<u8>,
}

/// The dense weights are kept only while they take at most this share of the free device
/// memory; past it every dense call decodes into a buffer of its own (slower, but it
/// never runs the GPU out of memory for a cache).
const CACHE_MAX_SHARE_OF_FREE: usize = 4;

/// The operands of one dense GEMM (checked by the caller).
pub(crate) struct DenseCall {
    pub x: CUdeviceptr,
    pub x_dtype: DType,
    pub x_scale: Option<CUdeviceptr>,
    pub batch: usize,
    pub bias: Option<CUdeviceptr>,
    pub y: CUdeviceptr,
    pub y_dtype: DType,
}

impl Gpu {
    /// The route [`Gpu::gemm`] and [`Gpu::gemm_w2a8`] take for `batch` tokens of `x`
    /// (`I8` for W2A8) on a `rows` x `cols` matrix of `levels`: the planner's kernel
    /// family, or the dense path. Python asks this once per shape and batch.
    pub fn route(
        &self,
        rows: usize,
        cols: usize,
        levels: Levels,
        x: DType,
        batch: usize,
    ) -> Result<Route> {
        let family = self.kernel_family(rows, cols, levels, x, batch)?;
        if !self.dense {
            return Ok(Route::Kernels(family));
        }
        Ok(route(family, x, batch, rows, cols))
    }

    /// The route of W2A8 on `batch` tokens of f16 / bf16 `x` that the library quantizes to
    /// int8 itself ([`GemmArgs::quantize_x`](super::GemmArgs::quantize_x) at one token; the
    /// Python package's `quantize_activations`): [`Route::OneLaunch`] for one token whose
    /// int8 row fits the shared memory of the kernel that quantizes it on this GPU, else
    /// quantize_i8 first and then the route of the int8 activations ([`Gpu::route`] with
    /// `I8`). Python asks this once per shape and batch, as it asks [`Gpu::route`].
    pub fn route_quantized(
        &self,
        rows: usize,
        cols: usize,
        levels: Levels,
        x: DType,
        batch: usize,
    ) -> Result<Route> {
        kernel_dtype(x, &[DType::F16, DType::BF16], "x")?;
        // Planned for the int8 activations first: the checks of shape, batch and columns.
        let int8 = self.route(rows, cols, levels, DType::I8, batch)?;
        if batch == 1 && quantizes_in_kernel(cols, levels, x, self)? {
            return Ok(Route::OneLaunch);
        }
        Ok(int8)
    }

    /// The dense path of a checked GEMM on `w` (see the module doc).
    ///
    /// # Safety
    /// The pointers of `call` must hold what [`Gpu::gemm_raw`] requires with `ldx = cols`
    /// and `ldy = rows`, on `stream`, alive until the work completes.
    pub(crate) unsafe fn gemm_dense(
        &self,
        w: &GpuMatrix,
        call: &DenseCall,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        let (rows, cols, batch) = (w.rows(), w.cols(), call.batch);
        let int8 = call.x_dtype == DType::I8;
        let dense_dtype = if int8 { DType::I8 } else { call.x_dtype };
        let (_blas, handle) = self.blas_on(stream)?;
        let cached;
        let own;
        let weights: &CudaSlice<u8> = match self.cached_dense(w, dense_dtype, stream)? {
            Some(g) => {
                cached = g;
                &cached
                    .as_ref()
                    .expect("cached_dense returns a filled cache")
                    .data
            }
            None => {
                own = self.decode_dense(w, dense_dtype, stream)?;
                &own
            }
        };
        let (wp, _gw) = weights.device_ptr(stream);
        let gemm = |in_type, y, out_type, accumulate| {
            let g = RowMajorGemm {
                rows,
                cols,
                tokens: batch,
                w: wp,
                x: call.x,
                in_type,
                y,
                ldy: rows,
                out_type,
                accumulate,
            };
            // SAFETY: the handle is bound to `stream`; the weights hold rows x cols of
            // `in_type`, the caller guarantees x and y.
            unsafe { gemm_row_major(handle, &g) }
        };
        if !int8 {
            // The bias in cuBLAS's epilogue: y = bias rows, then y += W x.
            if let Some(b) = call.bias {
                // SAFETY: `b` holds `rows` and `y` `rows * batch` values of the output type.
                unsafe { self.bias_rows(b, call.y, rows, batch, stream) }?;
            }
            return gemm(call.x_dtype, call.y, call.x_dtype, call.bias.is_some());
        }
        // int8: exact int32 sums, into y itself when it is int32, else into a workspace that
        // the W2A8 epilogue reads.
        if call.y_dtype == DType::I32 {
            return gemm(DType::I8, call.y, DType::I32, false);
        }
        // SAFETY: cuBLAS writes every sum (beta = 0) before the epilogue reads it.
        let mut acc = unsafe { stream.alloc::<i32>(elems("y", rows, batch)?) }?;
        let (accp, _ga) = acc.device_ptr_mut(stream);
        gemm(DType::I8, accp, DType::I32, false)?;
        let ptrs = w.device_ptrs(stream);
        let x_scale = call.x_scale.expect("checked: i8 activations carry x_scale");
        // SAFETY: `accp` holds rows * batch sums; the rest as the caller guarantees.
        unsafe {
            self.w2a8_epilogue_raw(
                accp,
                x_scale,
                ptrs.scale,
                call.bias,
                call.y,
                call.y_dtype,
                rows,
                batch,
                w.levels(),
                stream.cu_stream(),
            )
        }
    }

    /// The cache of `w`'s dense weights in `dtype`, filled on first use where memory
    /// allows (the first call allocates and decodes: run one before capturing a graph);
    /// `None` where it does not.
    fn cached_dense<'a>(
        &self,
        w: &'a GpuMatrix,
        dtype: DType,
        stream: &Arc<CudaStream>,
    ) -> Result<Option<std::sync::MutexGuard<'a, Option<DenseWeights>>>> {
        let mut cache = w.dense.lock().unwrap_or_else(|e| e.into_inner());
        if cache.as_ref().is_some_and(|d| d.dtype == dtype) {
            return Ok(Some(cache));
        }
        *cache = None;
        let bytes = w.rows() * w.cols() * dtype.size();
        self.ctx.bind_to_thread()?;
        let (free, _) = cudarc::driver::result::mem_get_info()?;
        if bytes.saturating_mul(CACHE_MAX_SHARE_OF_FREE) > free {
            return Ok(None);
        }
        let data = self.decode_dense(w, dtype, stream)?;
        *cache = Some(DenseWeights { dtype, data });
        Ok(Some(cache))
    }

    /// `w` decoded to a dense row-major matrix of `dtype` (16-bit: times the scale).
    fn decode_dense(
        &self,
        w: &GpuMatrix,
        dtype: DType,
        stream: &Arc<CudaStream>,
    ) -> Result<CudaSlice<u8>> {
        let (rows, cols) = (w.rows(), w.cols());
        let wpr = i2::words_per_row(cols);
        // SAFETY: t2_to_i2 writes every word before i2_to_dense reads it.
        let mut words = unsafe { stream.alloc::<u32>(elems("weights", rows, wpr)?) }?;
        // SAFETY: i2_to_dense writes every element.
        let mut out = unsafe { stream.alloc::<u8>(elems("weights", rows * cols, dtype.size())?) }?;
        {
            let ptrs = w.device_ptrs(stream);
            let (wp, _g1) = words.device_ptr_mut(stream);
            let (op, _g2) = out.device_ptr_mut(stream);
            let (_, k_tiles) = tiled::tile_counts(rows, cols);
            let f = self.function("t2_to_i2")?;
            let (mut src, mut dst) = (ptrs.tiles, wp);
            let (mut r, mut c, mut wp32, mut kt) =
                (rows as u32, cols as u32, wpr as u32, k_tiles as u32);
            let mut int2 = u32::from(w.levels() == Levels::Int2);
            let mut kp = kernel_params!(src, dst, r, c, wp32, kt, int2);
            let blocks = blocks_of_256(rows * wpr)?;
            let scale = if dtype == DType::I8 { None } else { ptrs.scale };
            // SAFETY: parameters match t2_to_i2 in layout.cu; the buffers hold the sizes it
            // indexes; then i2_to_dense reads those words and writes `out`.
            unsafe {
                launch(f, (blocks, 1, 1), 256, 0, stream.cu_stream(), &mut kp)?;
                self.i2_to_dense_raw(
                    wp,
                    op,
                    rows,
                    cols,
                    w.levels(),
                    dtype,
                    scale,
                    stream.cu_stream(),
                )?;
            }
        }
        Ok(out)
    }

    /// `y[b, r] = bias[r]` for `batch` tokens (16-bit values).
    ///
    /// # Safety
    /// `bias` must hold `rows` and `y` `rows * batch` 16-bit values on this GPU, alive
    /// until the launch completes.
    unsafe fn bias_rows(
        &self,
        bias: CUdeviceptr,
        y: CUdeviceptr,
        rows: usize,
        batch: usize,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        let f = self.function("bias_rows")?;
        let blocks = blocks_of_256(elems("y", rows, batch)?)?;
        let (mut b, mut yp, mut r, mut n) = (bias, y, rows as u32, batch as u32);
        let mut kp = kernel_params!(b, yp, r, n);
        // SAFETY: parameters match bias_rows in quant.cu; the caller guarantees the buffers.
        unsafe { launch(f, (blocks, 1, 1), 256, 0, stream.cu_stream(), &mut kp) }
    }
}

/// Whether a checked call takes the dense route.
/// Small batches (every decode step) skip the planner here: it plans the launch anyway.
pub(crate) fn takes_dense(gpu: &Gpu, w: &GpuMatrix, x: DType, batch: usize) -> Result<bool> {
    if !gpu.dense() || !may_be_dense(x, batch) {
        return Ok(false);
    }
    Ok(gpu.route(w.rows(), w.cols(), w.levels(), x, batch)? == Route::Dense)
}
