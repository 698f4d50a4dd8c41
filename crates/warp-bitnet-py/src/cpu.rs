//! The fast CPU kernels for `warp_bitnet._cpu`: a weight converted once to the C2 layout
//! (`CpuWeight`) and a GEMM on contiguous float32 CPU tensors passed by `data_ptr()`, run
//! with the GIL released.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use warp_bitnet::cpu::arch::host::{host_slice, host_slice_mut};
use warp_bitnet::cpu::{CpuMatrix, Kernels};
use warp_bitnet::quant::quantize_activations_i8;
use warp_bitnet::{Int2Matrix, Levels, Scale, TernaryMatrix};

use crate::{parse_levels, present, to_py};

/// Registers the CPU functions on `_native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CpuWeight>()?;
    m.add_function(wrap_pyfunction!(cpu_isa, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_threads, m)?)?;
    Ok(())
}

/// The instruction set the CPU kernels run (`WARP_BITNET_CPU_ISA` forces one).
#[pyfunction]
fn cpu_isa() -> PyResult<&'static str> {
    Ok(Kernels::detect().map_err(to_py)?.isa().name())
}

/// The thread count a call with `threads=0` uses (`WARP_BITNET_THREADS`, else every CPU).
#[pyfunction]
fn cpu_threads() -> PyResult<usize> {
    warp_bitnet::cpu::default_threads().map_err(to_py)
}

/// Packed I2 or INT2 words converted once to the CPU layout, without a scale (applied per
/// call, so one conversion serves any scale tensor).
#[pyclass(frozen, module = "warp_bitnet._native")]
pub struct CpuWeight {
    m: CpuMatrix,
    kernels: Kernels,
}

#[pymethods]
impl CpuWeight {
    /// Validates and converts the int32 words at `words` (`rows * ceil(cols / 16)` of them,
    /// codes of `levels`: "ternary" or "int2").
    #[new]
    fn new(py: Python<'_>, words: u64, rows: usize, cols: usize, levels: &str) -> PyResult<Self> {
        let levels = parse_levels(levels)?;
        let n = rows
            .checked_mul(cols.div_ceil(16))
            .ok_or_else(|| PyValueError::new_err("`rows * cols` is too large"))?;
        // SAFETY: the caller (warp_bitnet/_cpu.py) passes a live contiguous CPU int32
        // tensor of `n` elements and holds it for the call.
        let src: &[u32] = unsafe { host_slice("words", words, n) }.map_err(to_py)?;
        let words = src.to_vec();
        let kernels = Kernels::detect().map_err(to_py)?;
        let m = py.detach(|| -> warp_bitnet::Result<CpuMatrix> {
            Ok(match levels {
                Levels::Ternary => {
                    CpuMatrix::from(&TernaryMatrix::from_words(rows, cols, words, Scale::None)?)
                }
                _ => CpuMatrix::from(&Int2Matrix::from_words(rows, cols, words, Scale::None)?),
            })
        });
        Ok(CpuWeight {
            m: m.map_err(to_py)?,
            kernels,
        })
    }

    /// Output features.
    #[getter]
    fn rows(&self) -> usize {
        self.m.rows()
    }

    /// Input features.
    #[getter]
    fn cols(&self) -> usize {
        self.m.cols()
    }

    /// `y = (x . Wᵀ) * scale + bias` on contiguous float32 CPU tensors by address: `x`
    /// `[batch, cols]`, `y` `[batch, rows]` (written), `scale` `scale_len` (1 or rows)
    /// values, `bias` `rows` (0: absent); `quantize`: per-token int8 activations and exact
    /// integer sums (W2A8). `threads=0`: the default count.
    #[pyo3(signature = (x, batch, scale, scale_len, bias, y, quantize, threads))]
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        py: Python<'_>,
        x: u64,
        batch: usize,
        scale: u64,
        scale_len: usize,
        bias: u64,
        y: u64,
        quantize: bool,
        threads: usize,
    ) -> PyResult<()> {
        let (rows, cols) = (self.m.rows(), self.m.cols());
        if present(scale).is_some() && scale_len != 1 && scale_len != rows {
            return Err(PyValueError::new_err(format!(
                "`scale` must have 1 or {rows} elements, got {scale_len}"
            )));
        }
        let len = |a: usize, b: usize| {
            a.checked_mul(b)
                .ok_or_else(|| PyValueError::new_err("`batch` is too large"))
        };
        let (x_len, y_len) = (len(batch, cols)?, len(batch, rows)?);
        // SAFETY: warp_bitnet/_cpu.py passes live contiguous float32 CPU tensors of these
        // sizes (x, scale, bias read-only; y fresh and written only here) and holds them
        // until this call returns.
        let (xs, scale, bias, out) = unsafe {
            (
                host_slice::<f32>("x", x, x_len),
                present(scale).map(|p| host_slice::<f32>("scale", p, scale_len)),
                present(bias).map(|p| host_slice::<f32>("bias", p, rows)),
                host_slice_mut::<f32>("y", y, y_len),
            )
        };
        let (xs, out) = (xs.map_err(to_py)?, out.map_err(to_py)?);
        let scale = scale.transpose().map_err(to_py)?.unwrap_or(&[]);
        let bias = bias.transpose().map_err(to_py)?;
        let (m, k) = (&self.m, self.kernels);
        py.detach(|| -> warp_bitnet::Result<()> {
            if quantize {
                let a = quantize_activations_i8(xs, batch, cols)?;
                k.gemm_w2a8(m, &a.q, &a.scale, batch, None, out, threads)?;
            } else {
                k.gemm(m, xs, batch, None, out, threads)?;
            }
            // The Python reference's epilogue order: (sum * scale) + bias.
            for yrow in out.chunks_mut(rows) {
                for (r, v) in yrow.iter_mut().enumerate() {
                    let s = match scale.len() {
                        0 => 1.0,
                        1 => scale[0],
                        _ => scale[r],
                    };
                    *v = *v * s + bias.map_or(0.0, |b| b[r]);
                }
            }
            Ok(())
        })
        .map_err(to_py)
    }
}
