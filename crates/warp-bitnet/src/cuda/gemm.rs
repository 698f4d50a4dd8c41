//! The public GEMM API of a [`Gpu`]: typed buffers or raw device pointers in, the
//! planner's kernel launched on the caller's stream.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{CUdeviceptr, CUstream, CUtensorMap};
use cudarc::driver::{CudaFunction, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use half::{bf16, f16};

use super::dense::{takes_dense, DenseCall};
use super::launch::{check_buf, check_ptr, elems, kernel_params, launch, launch_plan};
use super::plan::{
    plan_gemm, quantizes_in_kernel, GemmArgs, GemmParams, GemmPlan, KernelFamily, PREFILL_ROWS,
    PREFILL_TOKENS, PREPASS_THREADS,
};
use super::{Gpu, GpuMatrix};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::{check_dims, Levels};

/// A float type the GPU kernels take as activations (and produce as outputs).
pub trait GpuFloat: GpuOut {}
impl GpuFloat for f16 {}
impl GpuFloat for bf16 {}

/// An output type of the GEMM kernels: f16 and bf16, and i32 for raw W2A8 accumulators.
/// Sealed: the kernels exist for these types only.
pub trait GpuOut: DeviceRepr + Copy + 'static + sealed::Sealed {
    /// The matching [`DType`].
    const DTYPE: DType;
}
impl GpuOut for f16 {
    const DTYPE: DType = DType::F16;
}
impl GpuOut for bf16 {
    const DTYPE: DType = DType::BF16;
}
impl GpuOut for i32 {
    const DTYPE: DType = DType::I32;
}
mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for i32 {}
}

type TmaType = cudarc::driver::sys::CUtensorMapDataType;

/// A 2-D TMA descriptor of `base` (16-byte aligned): `dims` (inner, outer) elements, rows
/// `row_bytes` apart, copied in boxes of `boxes` elements, with the 128-byte swizzle (else
/// none); reads past the end fill zeros.
fn tensor_map(
    base: CUdeviceptr,
    dtype: TmaType,
    dims: [usize; 2],
    row_bytes: usize,
    boxes: [usize; 2],
    swizzle: bool,
) -> Result<CUtensorMap> {
    use cudarc::driver::sys::{
        CUtensorMapFloatOOBfill as Fill, CUtensorMapInterleave as Interleave,
        CUtensorMapL2promotion as L2, CUtensorMapSwizzle as Swizzle,
    };
    let dims = dims.map(|d| d as u64);
    let strides = [row_bytes as u64];
    let boxes = boxes.map(|b| b as u32);
    let unit = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<CUtensorMap>::uninit();
    // SAFETY: every array holds the rank's entries; the driver writes `map`.
    unsafe {
        cudarc::driver::sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            dtype,
            2,
            base as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            unit.as_ptr(),
            Interleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            if swizzle {
                Swizzle::CU_TENSOR_MAP_SWIZZLE_128B
            } else {
                Swizzle::CU_TENSOR_MAP_SWIZZLE_NONE
            },
            L2::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            Fill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()?;
        Ok(map.assume_init())
    }
}

impl Gpu {
    /// GEMM on raw device pointers, on `stream` (e.g. PyTorch's current stream).
    ///
    /// # Safety
    /// `args.x` must hold `batch` rows of `ldx` elements (at least `w.cols()` readable
    /// in each), `args.y` `batch` rows of `ldy` writable elements, `bias` `w.rows()`
    /// elements and `x_scale` `batch` floats, all on this GPU and alive until the
    /// launch completes; `y` must not overlap the inputs; `stream` must belong to
    /// this GPU's context; `w` must not be dropped before the launch completes
    /// (its memory is released in the order of the stream it was uploaded on).
    pub unsafe fn gemm_raw(&self, w: &GpuMatrix, args: &GemmArgs, stream: CUstream) -> Result<()> {
        self.check_context(w)?;
        let ptrs = w.device_ptrs(w.tiles_stream());
        // SAFETY: forwarded from the caller, who also keeps `w` alive until the launch completes.
        unsafe { self.launch_gemm(w, ptrs.tiles, ptrs.scale, args, stream) }
    }

    /// # Safety
    /// As [`Gpu::gemm_raw`], with `tiles` and `scale` the pointers of `w`.
    unsafe fn launch_gemm(
        &self,
        w: &GpuMatrix,
        tiles: CUdeviceptr,
        scale: Option<(CUdeviceptr, bool)>,
        args: &GemmArgs,
        stream: CUstream,
    ) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.gemm_tiles_raw(w.rows(), w.cols(), w.levels(), tiles, scale, args, stream) }
    }

    /// GEMM on weights that are themselves a raw device buffer of T2 words (e.g. a
    /// tensor owned by PyTorch): `tiles` holds [`tiled::len_words`]`(rows, cols)` words
    /// of `levels` codes, `scale` is `(pointer, per_row)` to one f32 or `rows` f32.
    ///
    /// # Safety
    /// As [`Gpu::gemm_raw`]; in addition `tiles` (16-byte aligned) and `scale` must hold
    /// what they claim and stay alive until the launch completes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_tiles_raw(
        &self,
        rows: usize,
        cols: usize,
        levels: Levels,
        tiles: CUdeviceptr,
        scale: Option<(CUdeviceptr, bool)>,
        args: &GemmArgs,
        stream: CUstream,
    ) -> Result<()> {
        check_dims(rows, cols)?;
        check_ptr("tiles", tiles, 16)?;
        if let Some((s, _)) = scale {
            check_ptr("scale", s, 4)?;
        }
        if self.quantizes_first(cols, levels, args)? {
            // SAFETY: forwarded from the caller.
            return unsafe {
                self.quantize_then_gemm(rows, cols, levels, tiles, scale, args, stream)
            };
        }
        let plan = plan_gemm(rows, cols, levels, tiles, scale, args, self)?;
        let f = self.function(&plan.symbol)?;
        let mut params = plan.params;
        let Some(pre) = &plan.prepass else {
            // SAFETY: forwarded from the caller.
            let mut kp = [&mut params as *mut GemmParams as *mut c_void];
            return unsafe { launch_plan(f, &plan, stream, &mut kp) };
        };
        // The workspace is allocated and freed in the stream's order (the driver's pool),
        // so it lives exactly as long as the launches that use it.
        let (partial, counters, bytes) = pre.layout(plan.grid.0 as usize);
        // SAFETY: `stream` belongs to this GPU's context (the caller's guarantee).
        let work = unsafe { cudarc::driver::result::malloc_async(stream, bytes) }?;
        let (mut partial, mut counters) = match pre.split_tiles {
            Some(_) => (work + partial as u64, work + counters as u64),
            None => (0, 0),
        };
        let (mut x, mut ldx, mut n, mut k_tiles, mut vec, mut out) = (
            args.x,
            args.ldx as u32,
            cols as u32,
            params.k_tiles,
            pre.vec,
            work,
        );
        let mut kp = kernel_params!(x, ldx, n, k_tiles, vec, out);
        params.x = work;
        let (xsz, kt) = (args.x_dtype.size(), k_tiles as usize);
        // SAFETY: the pre-pass reads `batch` rows of x (the caller's guarantee) and writes
        // `pre.bytes` of the workspace; the GEMM reads the workspace through `params.x` or
        // `x_map` and the weights through `params.w` or `w_map`, all within the buffers
        // they describe, and a split one its partial sums and counters in the workspace.
        let launched = unsafe {
            launch(
                self.function(pre.symbol)?,
                (args.batch as u32, 1, 1),
                PREPASS_THREADS,
                0,
                stream,
                &mut kp,
            )
            .and_then(|()| {
                if let Some(tiles) = pre.split_tiles {
                    cudarc::driver::result::memset_d8_async(counters, 0, tiles * 4, stream)?;
                }
                if !pre.tensor_maps {
                    let mut kp = [&mut params as *mut GemmParams as *mut c_void];
                    return launch_plan(f, &plan, stream, &mut kp);
                }
                // The workspace: [batch][k_tiles * 128] activations, boxes of 128 bytes x 128
                // tokens, 128-byte swizzle. The weights: row tiles of k_tiles * 512 bytes,
                // boxes of one k tile (512 bytes) x 16 row tiles.
                let mut x_map = tensor_map(
                    work,
                    if xsz == 1 {
                        TmaType::CU_TENSOR_MAP_DATA_TYPE_UINT8
                    } else {
                        TmaType::CU_TENSOR_MAP_DATA_TYPE_UINT16
                    },
                    [kt * 128, args.batch],
                    kt * 128 * xsz,
                    [128 / xsz, PREFILL_TOKENS],
                    true,
                )?;
                let mut w_map = tensor_map(
                    plan.params.w,
                    TmaType::CU_TENSOR_MAP_DATA_TYPE_UINT32,
                    [kt * 128, rows.div_ceil(16)],
                    kt * 512,
                    [128, PREFILL_ROWS / 16],
                    false,
                )?;
                let mut kp = [
                    &mut params as *mut GemmParams as *mut c_void,
                    &mut x_map as *mut CUtensorMap as *mut c_void,
                    &mut w_map as *mut CUtensorMap as *mut c_void,
                    &mut partial as *mut CUdeviceptr as *mut c_void,
                    &mut counters as *mut CUdeviceptr as *mut c_void,
                ];
                launch_plan(f, &plan, stream, &mut kp)
            })
        };
        // SAFETY: `work` came from malloc_async on this stream and is freed once.
        let freed = unsafe { cudarc::driver::result::free_async(work, stream) };
        launched?;
        Ok(freed?)
    }

    /// Whether a `quantize_x` call runs quantize_i8 first: one f16 / bf16 token whose int8
    /// row is too long for the kernel that quantizes it (the decision of
    /// [`Gpu::route_quantized`]). Other `quantize_x` arguments go on to the planner, which
    /// names what is wrong with them.
    fn quantizes_first(&self, cols: usize, levels: Levels, a: &GemmArgs) -> Result<bool> {
        let candidate = a.quantize_x
            && a.batch == 1
            && matches!(a.x_dtype, DType::F16 | DType::BF16)
            && a.y_dtype == a.x_dtype;
        Ok(candidate && !quantizes_in_kernel(cols, levels, a.x_dtype, self)?)
    }

    /// W2A8 on one f16 / bf16 token too long for the kernel that quantizes it: quantize_i8
    /// into a workspace (allocated and freed in the stream's order, as the prefill kernels'
    /// is), then the int8 kernels. The same bytes as the one-launch kernel would give.
    ///
    /// # Safety
    /// As [`Gpu::gemm_tiles_raw`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn quantize_then_gemm(
        &self,
        rows: usize,
        cols: usize,
        levels: Levels,
        tiles: CUdeviceptr,
        scale: Option<(CUdeviceptr, bool)>,
        args: &GemmArgs,
        stream: CUstream,
    ) -> Result<()> {
        // The int8 row, then its f32 scale at the next 16-byte boundary.
        let scale_at = cols.next_multiple_of(16);
        // SAFETY: `stream` belongs to this GPU's context (the caller's guarantee).
        let work = unsafe { cudarc::driver::result::malloc_async(stream, scale_at + 4) }?;
        let (q, q_scale) = (work, work + scale_at as u64);
        let int8 = GemmArgs {
            x: q,
            x_dtype: DType::I8,
            ldx: cols,
            x_scale: Some(q_scale),
            quantize_x: false,
            ..*args
        };
        // SAFETY: the quantizer reads the caller's token (`ldx` checked there) and writes the
        // workspace, which holds `cols` bytes and a float; the GEMM reads the workspace and
        // the caller's weights and writes the caller's `y`, as `gemm_tiles_raw` requires.
        let launched = unsafe {
            self.quantize_i8_raw(args.x, args.x_dtype, 1, cols, args.ldx, q, q_scale, stream)
                .and_then(|()| self.gemm_tiles_raw(rows, cols, levels, tiles, scale, &int8, stream))
        };
        // SAFETY: `work` came from malloc_async on this stream and is freed once.
        let freed = unsafe { cudarc::driver::result::free_async(work, stream) };
        launched?;
        Ok(freed?)
    }

    /// Plans the GEMM of [`Gpu::gemm_tiles_raw`] once, for launches that change only the
    /// activation and output pointers (an eager decode loop: `BitLinear.forward` at batch 1).
    /// `None` where the plan needs work per call (the prefill kernels' pre-pass and
    /// workspace; a `quantize_x` row quantized first) or the route is the dense path: there,
    /// call [`Gpu::gemm_tiles_raw`].
    ///
    /// # Safety
    /// `tiles` and `scale` (and `args.bias`, `args.x_scale`) as [`Gpu::gemm_tiles_raw`]
    /// requires, for as long as the returned value launches; `args.x` and `args.y` are
    /// only checked here (each launch passes its own).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn prepare_gemm_raw(
        &self,
        rows: usize,
        cols: usize,
        levels: Levels,
        tiles: CUdeviceptr,
        scale: Option<(CUdeviceptr, bool)>,
        args: &GemmArgs,
    ) -> Result<Option<PreparedGemm>> {
        check_dims(rows, cols)?;
        check_ptr("tiles", tiles, 16)?;
        if let Some((s, _)) = scale {
            check_ptr("scale", s, 4)?;
        }
        if self.quantizes_first(cols, levels, args)? {
            return Ok(None);
        }
        let x = if args.quantize_x {
            DType::I8
        } else {
            args.x_dtype
        };
        if self.route(rows, cols, levels, x, args.batch)? == super::Route::Dense {
            return Ok(None);
        }
        let plan = plan_gemm(rows, cols, levels, tiles, scale, args, self)?;
        if plan.prepass.is_some() {
            return Ok(None);
        }
        Ok(Some(PreparedGemm {
            function: self.function(&plan.symbol)?.clone(),
            x_size: args.x_dtype.size(),
            y_size: args.y_dtype.size(),
            ldx_bytes: args.ldx * args.x_dtype.size(),
            plan,
        }))
    }

    /// The kernel and launch shape the planner picks for `batch` tokens of `x` type into
    /// `y` type on `w` (dense, aligned activations), e.g. `gemm_t2_f16_f16_s16 grid
    /// 132x1 cluster 2 threads 512 smem 229952`: what a benchmark row ran.
    pub fn gemm_kernel(&self, w: &GpuMatrix, x: DType, y: DType, batch: usize) -> Result<String> {
        let p = self.plan_for(w.rows(), w.cols(), w.levels(), x, y, batch)?;
        Ok(format!(
            "{} grid {}x{} cluster {} threads {} smem {}",
            p.symbol, p.grid.0, p.grid.1, p.cluster, p.threads, p.smem
        ))
    }

    /// The kernel family the planner takes for `batch` tokens of `x` type on a `rows` x
    /// `cols` matrix of `levels`: how often it decodes each weight decides how long it stays
    /// ahead of a dense GEMM on decoded weights (the Python package's dense threshold).
    pub fn kernel_family(
        &self,
        rows: usize,
        cols: usize,
        levels: Levels,
        x: DType,
        batch: usize,
    ) -> Result<KernelFamily> {
        let y = if x == DType::I8 { DType::F16 } else { x };
        let plan = self.plan_for(rows, cols, levels, x, y, batch)?;
        Ok(if let Some(pre) = plan.prepass {
            if pre.tensor_maps {
                KernelFamily::Prefill
            } else {
                KernelFamily::PrefillMma
            }
        } else if plan.cluster > 0 {
            KernelFamily::Split
        } else {
            KernelFamily::Groups
        })
    }

    /// The plan for dense, aligned activations.
    fn plan_for(
        &self,
        rows: usize,
        cols: usize,
        levels: Levels,
        x: DType,
        y: DType,
        batch: usize,
    ) -> Result<GemmPlan> {
        let args = GemmArgs {
            x: 256,
            x_dtype: x,
            ldx: cols.next_multiple_of(16),
            y: 256,
            y_dtype: y,
            ldy: rows,
            batch,
            bias: None,
            x_scale: (x == DType::I8).then_some(256),
            quantize_x: false,
        };
        plan_gemm(rows, cols, levels, 256, None, &args, self)
    }

    fn check_context(&self, w: &GpuMatrix) -> Result<()> {
        if Arc::ptr_eq(w.context(), &self.ctx) {
            Ok(())
        } else {
            Err(Error::Unsupported {
                what: "weights",
                detail: "uploaded through another Gpu (context)".into(),
            })
        }
    }

    /// `y[batch, rows] = (x[batch, cols] . Wtᵀ) * scale + bias` with f16 or bf16 activations.
    pub fn gemm<T: GpuFloat>(
        &self,
        w: &GpuMatrix,
        x: &impl DevicePtr<T>,
        batch: usize,
        bias: Option<&dyn DevicePtr<T>>,
        y: &mut impl DevicePtrMut<T>,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        let (xp, _gx) = x.device_ptr(stream);
        let x = (xp, x.len(), T::DTYPE, None);
        // SAFETY: `x` is the live device buffer it describes, read on `stream`.
        unsafe { self.gemm_checked(w, x, false, batch, bias, y, stream) }
    }

    /// W2A8 for one token in one launch: `x` (f16 or bf16, `[cols]`) is quantized per
    /// token to int8 inside the kernel, exactly as [`Gpu::quantize_i8`] would, then
    /// `y = (q . Wtᵀ) * x_scale * scale + bias` in `x`'s type. A row too long for that
    /// kernel's shared memory ([`Gpu::route_quantized`]) runs [`Gpu::quantize_i8`] first:
    /// two launches, the same result.
    pub fn gemv_quantized<T: GpuFloat>(
        &self,
        w: &GpuMatrix,
        x: &impl DevicePtr<T>,
        bias: Option<&dyn DevicePtr<T>>,
        y: &mut impl DevicePtrMut<T>,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        let (xp, _gx) = x.device_ptr(stream);
        let x = (xp, x.len(), T::DTYPE, None);
        // SAFETY: `x` is the live device buffer it describes, read on `stream`.
        unsafe { self.gemm_checked(w, x, true, 1, bias, y, stream) }
    }

    /// W2A8: `y = (q . Wtᵀ) * x_scale[b] * scale + bias` with f16/bf16 `y`, or the raw
    /// accumulators `sum_k q[b, k] * w[r, k]` with i32 `y` (no scale; `bias` must be `None`;
    /// for INT2 weights twice the level sum, `sum_k q[b, k] * 2 L[r, k]`, an integer).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_w2a8<O: GpuOut>(
        &self,
        w: &GpuMatrix,
        q: &impl DevicePtr<i8>,
        x_scale: &impl DevicePtr<f32>,
        batch: usize,
        bias: Option<&dyn DevicePtr<O>>,
        y: &mut impl DevicePtrMut<O>,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        check_buf("x_scale", x_scale.len(), batch, &[batch])?;
        let (qp, _gq) = q.device_ptr(stream);
        let (sp, _gs) = x_scale.device_ptr(stream);
        let q = (qp, q.len(), DType::I8, Some(sp));
        // SAFETY: `q` and `x_scale` are the live device buffers they describe, read on `stream`.
        unsafe { self.gemm_checked(w, q, false, batch, bias, y, stream) }
    }

    /// The checked path of `gemm` and `gemm_w2a8`: lengths, context, and the weights
    /// and outputs read and written in `stream`'s order.
    ///
    /// # Safety
    /// `x = (pointer, elements, dtype, x_scale)` must describe live device buffers
    /// that stay alive until the launch completes (their guards are the caller's).
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_checked<O: GpuOut>(
        &self,
        w: &GpuMatrix,
        x: (CUdeviceptr, usize, DType, Option<CUdeviceptr>),
        quantize_x: bool,
        batch: usize,
        bias: Option<&dyn DevicePtr<O>>,
        y: &mut impl DevicePtrMut<O>,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        self.check_context(w)?;
        let (xp, x_len, x_dtype, x_scale) = x;
        check_buf("x", x_len, elems("x", batch, w.cols())?, &[batch, w.cols()])?;
        check_buf(
            "y",
            y.len(),
            elems("y", batch, w.rows())?,
            &[batch, w.rows()],
        )?;
        if let Some(b) = bias {
            check_buf("bias", b.len(), w.rows(), &[w.rows()])?;
        }
        let bias_ptr = bias.map(|b| b.device_ptr(stream));
        let (yp, _gy) = y.device_ptr_mut(stream);
        if !quantize_x && takes_dense(self, w, x_dtype, batch)? {
            let call = DenseCall {
                x: xp,
                x_dtype,
                x_scale,
                batch,
                bias: bias_ptr.as_ref().map(|(p, _)| *p),
                y: yp,
                y_dtype: O::DTYPE,
            };
            // SAFETY: lengths and context checked above; every buffer is used in `stream`'s
            // order and its guard outlives the work.
            return unsafe { self.gemm_dense(w, &call, stream) };
        }
        let weights = w.device_ptrs(stream);
        let args = GemmArgs {
            x: xp,
            x_dtype,
            ldx: w.cols(),
            y: yp,
            y_dtype: O::DTYPE,
            ldy: w.rows(),
            batch,
            bias: bias_ptr.as_ref().map(|(p, _)| *p),
            x_scale,
            quantize_x,
        };
        // SAFETY: lengths and context checked above; every buffer is read or written in
        // `stream`'s order and its guard outlives the launch.
        unsafe { self.launch_gemm(w, weights.tiles, weights.scale, &args, stream.cu_stream()) }
    }
}

/// A GEMM planned once ([`Gpu::prepare_gemm_raw`]): weights, shapes, types, bias and
/// scales fixed; each launch takes the activations and the output.
pub struct PreparedGemm {
    function: CudaFunction,
    plan: GemmPlan,
    x_size: usize,
    y_size: usize,
    ldx_bytes: usize,
}

impl PreparedGemm {
    /// The planned kernel, e.g. `gemm_t2_f16_f16_n1`.
    pub fn symbol(&self) -> &str {
        &self.plan.symbol
    }

    /// Launches the planned kernel on `x` and `y` in `stream`'s order.
    ///
    /// # Safety
    /// `x` and `y` must hold what the [`GemmArgs`] given to [`Gpu::prepare_gemm_raw`]
    /// describe (batch, row strides, types), on that GPU, alive until the launch completes,
    /// with `y` not overlapping the inputs; everything else that call was given must still
    /// be alive; `stream` must belong to that GPU's context.
    pub unsafe fn launch(&self, x: CUdeviceptr, y: CUdeviceptr, stream: CUstream) -> Result<()> {
        check_ptr("x", x, self.x_size)?;
        check_ptr("y", y, self.y_size)?;
        let mut params = self.plan.params;
        params.x = x;
        params.y = y;
        // The kernels load activations 16 bytes at a time where x allows it.
        params.x_vec = u32::from(x % 16 == 0 && self.ldx_bytes % 16 == 0);
        let mut kp = [&mut params as *mut GemmParams as *mut c_void];
        // SAFETY: the plan was checked by `prepare_gemm_raw`; the caller guarantees the
        // buffers.
        unsafe { launch_plan(&self.function, &self.plan, stream, &mut kp) }
    }
}
