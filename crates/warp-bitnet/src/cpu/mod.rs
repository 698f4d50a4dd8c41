//! CPU backend. [`reference`] is the oracle every other backend is tested against; the fast
//! kernels ([`Kernels`]) run on [`CpuMatrix`], the C2 layout converted once from any
//! [`crate::PackedWeights`], with run-time instruction-set dispatch ([`arch`]) and a thread
//! count chosen per call ([`default_threads`]).
//!
//! ```
//! use warp_bitnet::cpu::{CpuMatrix, Kernels};
//! use warp_bitnet::{Scale, TernaryMatrix};
//!
//! let w = TernaryMatrix::from_ternary(2, 3, &[1, -1, 0, 0, 1, 1], Scale::PerTensor(0.5))?;
//! let c = CpuMatrix::from(&w);
//! let mut y = [0f32; 2];
//! Kernels::detect()?.gemm(&c, &[1.0f32, 2.0, 3.0], 1, None, &mut y, 1)?;
//! assert_eq!(y, [-0.5, 2.5]);
//! // W2A8 through the matrix's own method (the detected kernels, default thread count).
//! let a = warp_bitnet::quant::quantize_activations_i8(&[1.0f32, 2.0, 3.0], 1, 3)?;
//! c.gemm_w2a8(&a.q, &a.scale, 1, None, &mut y, 0)?;
//! assert!((y[1] - 2.5).abs() < 0.02);
//! # Ok::<(), warp_bitnet::Error>(())
//! ```

pub mod arch;
pub mod dense;
mod gemm;
mod layout;
pub(crate) mod pool;
pub mod reference;

pub use arch::Isa;
pub use gemm::{Kernels, ROW_CHUNK};
pub use layout::CpuMatrix;
pub use pool::{default_threads, resolve_threads, MAX_THREADS};

/// The shapes of a GEMM's operands on a `rows` x `cols` matrix: `x` `[batch, cols]`, `y`
/// `[batch, rows]`, `bias` `[rows]`; one check for the reference and the fast kernels.
pub(crate) fn check_io(
    (rows, cols): (usize, usize),
    x_len: usize,
    batch: usize,
    bias_len: Option<usize>,
    y_len: usize,
) -> crate::Result<()> {
    use crate::error::{shape, Error};
    if batch == 0 {
        return Err(Error::Empty { arg: "x" });
    }
    let mismatch = |arg, expected: &[usize], got| Error::ShapeMismatch {
        arg,
        expected: shape(expected),
        got: format!("{got} elements"),
    };
    if Some(x_len) != batch.checked_mul(cols) {
        return Err(mismatch("x", &[batch, cols], x_len));
    }
    if Some(y_len) != batch.checked_mul(rows) {
        return Err(mismatch("y", &[batch, rows], y_len));
    }
    match bias_len {
        Some(n) if n != rows => Err(mismatch("bias", &[rows], n)),
        _ => Ok(()),
    }
}
