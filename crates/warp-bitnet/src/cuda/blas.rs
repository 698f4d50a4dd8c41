//! The one cuBLAS call of the crate: `y[t, r] = sum_k w[r, k] * x[t, k]` (+ `y` itself) with
//! row-major `w` `[rows, cols]`, `x` `[tokens, cols]` and `y` `[tokens, ldy]`, the call PyTorch
//! makes for a dense linear layer. The dense GEMM route, the engine's lm_head and dense-bf16
//! linear layers, and the cuBLAS baselines of the bench all go through [`gemm_row_major`].
//!
//! cuBLAS is column-major: a row-major `[rows, cols]` matrix is its `[cols, rows]`, so the call
//! is `C = op(A) B` with `A` = w read transposed (`CUBLAS_OP_T`, ld cols), `B` = x as
//! `[cols, tokens]` (ld cols), `C` = y as `[rows, tokens]` (ld `ldy`).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};

use crate::dtype::DType;
use crate::error::{Error, Result};

/// One row-major GEMM (see the module doc).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowMajorGemm {
    pub rows: usize,
    pub cols: usize,
    pub tokens: usize,
    /// `[rows, cols]` of `in_type`.
    pub w: CUdeviceptr,
    /// `[tokens, cols]` of `in_type`.
    pub x: CUdeviceptr,
    /// f32, f16 or bf16 (f32 accumulation), or i8 (exact int32 sums).
    pub in_type: DType,
    /// `[tokens, ldy]` of `out_type`: f32/f16/bf16 for float inputs, i32 for i8.
    pub y: CUdeviceptr,
    pub ldy: usize,
    pub out_type: DType,
    /// Adds the product to `y` (beta = 1) instead of overwriting it.
    pub accumulate: bool,
}

fn blas_type(d: DType) -> blas_sys::cudaDataType {
    use blas_sys::cudaDataType_t as T;
    match d {
        DType::F32 => T::CUDA_R_32F,
        DType::F16 => T::CUDA_R_16F,
        DType::BF16 => T::CUDA_R_16BF,
        DType::I8 => T::CUDA_R_8I,
        DType::I32 => T::CUDA_R_32I,
    }
}

impl RowMajorGemm {
    /// The checks the call can make without touching memory: sizes within cuBLAS's int32,
    /// `ldy >= rows`, a type pair cuBLAS computes.
    fn check(&self) -> Result<()> {
        for (arg, v) in [
            ("rows", self.rows),
            ("cols", self.cols),
            ("tokens", self.tokens),
            ("ldy", self.ldy),
        ] {
            if v == 0 {
                return Err(Error::Empty { arg });
            }
            if v > i32::MAX as usize {
                return Err(Error::TooLarge {
                    arg,
                    value: v as u64,
                    limit: i32::MAX as u64,
                });
            }
        }
        if self.ldy < self.rows {
            return Err(Error::ShapeMismatch {
                arg: "ldy",
                expected: format!(">= {}", self.rows),
                got: self.ldy.to_string(),
            });
        }
        let int = self.in_type == DType::I8;
        let ok_out = if int {
            self.out_type == DType::I32
        } else {
            matches!(self.in_type, DType::F32 | DType::F16 | DType::BF16)
                && matches!(self.out_type, DType::F32 | DType::F16 | DType::BF16)
        };
        if !ok_out {
            return Err(Error::Unsupported {
                what: "dtype",
                detail: format!(
                    "cuBLAS GEMM of {} inputs into {}; need f32/f16/bf16 into f32/f16/bf16, \
                     or i8 into i32",
                    self.in_type.name(),
                    self.out_type.name()
                ),
            });
        }
        Ok(())
    }
}

/// Enqueues `g` on the stream `handle` is bound to.
///
/// # Safety
/// `handle` must be a live cuBLAS handle bound to a stream of the context that owns the
/// buffers; `g.w`, `g.x` and `g.y` must hold the sizes [`RowMajorGemm`] describes, alive until
/// the work completes, `y` not overlapping the inputs.
pub(crate) unsafe fn gemm_row_major(
    handle: blas_sys::cublasHandle_t,
    g: &RowMajorGemm,
) -> Result<()> {
    g.check()?;
    let (a, c) = (blas_type(g.in_type), blas_type(g.out_type));
    let (m, n, k, ldy) = (g.rows as i32, g.tokens as i32, g.cols as i32, g.ldy as i32);
    let beta = i32::from(g.accumulate);
    // Integer GEMMs take int32 alpha and beta, float ones f32 (the compute type's).
    let (alpha_i, beta_i, alpha_f, beta_f) = (1i32, beta, 1f32, beta as f32);
    let (compute, alpha, beta): (_, *const c_void, *const c_void) = if g.in_type == DType::I8 {
        (
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32I,
            (&alpha_i as *const i32).cast(),
            (&beta_i as *const i32).cast(),
        )
    } else {
        (
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            (&alpha_f as *const f32).cast(),
            (&beta_f as *const f32).cast(),
        )
    };
    // SAFETY: the column-major view of the module doc; the caller guarantees the handle and
    // the buffers' sizes; alpha and beta live until the call returns (cuBLAS reads host
    // scalars before it does).
    unsafe {
        blas::gemm_ex(
            handle,
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m,
            n,
            k,
            alpha,
            g.w as *const c_void,
            a,
            k,
            g.x as *const c_void,
            a,
            k,
            beta,
            g.y as *mut c_void,
            c,
            ldy,
            compute,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }?;
    Ok(())
}

/// A float element cuBLAS multiplies: its [`DType`].
pub(crate) trait BlasFloat: DeviceRepr {
    /// The element's type.
    const DTYPE: DType;
}

impl BlasFloat for half::f16 {
    const DTYPE: DType = DType::F16;
}

impl BlasFloat for half::bf16 {
    const DTYPE: DType = DType::BF16;
}

impl BlasFloat for f32 {
    const DTYPE: DType = DType::F32;
}

/// `y[batch, rows] = x[batch, cols] . wᵀ` with row-major `w` through cublasGemmEx (f32
/// accumulation) on `blas`'s stream: the bench's cuBLAS baseline, checked (every buffer holds
/// its shape) and therefore safe.
pub(crate) fn gemm_slices<T: BlasFloat>(
    blas: &CudaBlas,
    stream: &Arc<CudaStream>,
    w: &CudaSlice<T>,
    x: &CudaSlice<T>,
    y: &mut CudaSlice<T>,
    (rows, cols, batch): (usize, usize, usize),
) -> Result<()> {
    for (arg, need, got) in [
        ("w", rows.saturating_mul(cols), w.len()),
        ("x", batch.saturating_mul(cols), x.len()),
        ("y", batch.saturating_mul(rows), y.len()),
    ] {
        if got < need {
            return Err(Error::ShapeMismatch {
                arg,
                expected: format!("at least {need} elements"),
                got: got.to_string(),
            });
        }
    }
    let (wp, _g1) = w.device_ptr(stream);
    let (xp, _g2) = x.device_ptr(stream);
    let (yp, _g3) = y.device_ptr_mut(stream);
    let g = RowMajorGemm {
        rows,
        cols,
        tokens: batch,
        w: wp,
        x: xp,
        in_type: T::DTYPE,
        y: yp,
        ldy: rows,
        out_type: T::DTYPE,
        accumulate: false,
    };
    // SAFETY: the handle is `blas`'s, live and bound to its stream; the lengths were checked
    // above and the slices are borrowed until the call returns (the guards order their use on
    // `stream`); `y` is borrowed mutably, so it overlaps neither input.
    unsafe { gemm_row_major(*blas.handle(), &g) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> RowMajorGemm {
        RowMajorGemm {
            rows: 8,
            cols: 16,
            tokens: 3,
            w: 256,
            x: 512,
            in_type: DType::BF16,
            y: 1024,
            ldy: 8,
            out_type: DType::F32,
            accumulate: false,
        }
    }

    #[test]
    fn good_calls_pass_the_checks() {
        call().check().unwrap();
        let int8 = RowMajorGemm {
            in_type: DType::I8,
            out_type: DType::I32,
            ldy: 20,
            ..call()
        };
        int8.check().unwrap();
    }

    #[test]
    fn bad_calls_are_errors_naming_the_argument() {
        let err = |g: RowMajorGemm| g.check().unwrap_err().to_string();
        assert!(err(RowMajorGemm { ldy: 7, ..call() }).contains("ldy"));
        assert!(err(RowMajorGemm {
            tokens: 0,
            ..call()
        })
        .contains("tokens"));
        let huge = RowMajorGemm {
            cols: i32::MAX as usize + 1,
            ..call()
        };
        assert!(err(huge).contains("cols"));
        let mixed = RowMajorGemm {
            in_type: DType::I8,
            out_type: DType::F32,
            ..call()
        };
        assert!(err(mixed).contains("i8"));
        let float_into_int = RowMajorGemm {
            out_type: DType::I32,
            ..call()
        };
        assert!(err(float_into_int).contains("dtype"));
    }
}
