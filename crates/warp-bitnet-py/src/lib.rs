//! `warp_bitnet._native`: the GPU kernels for the Python package, on raw device
//! pointers and PyTorch's current stream, and checkpoint conversion. Thin on purpose: the Python side
//! (`python/warp_bitnet`) validates tensors and owns the memory; this module checks
//! shapes and alignment again (in the core crate) and launches. No allocation and
//! no synchronization happen here, so CUDA-graph capture works.

mod cpu;
mod engine;
mod host;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use warp_bitnet::cuda::{GemmArgs, Gpu};
use warp_bitnet::import::{checkpoint_file, ScaleConvention};
use warp_bitnet::{DType, Error, Levels};

/// The one place core errors become Python exceptions: bad arguments and files ->
/// ValueError, file system errors -> OSError subclasses, the driver -> RuntimeError.
pub(crate) fn to_py(e: Error) -> PyErr {
    match e {
        Error::ShapeMismatch { .. }
        | Error::InvalidCode { .. }
        | Error::NonZeroPadding { .. }
        | Error::NotTernary { .. }
        | Error::Empty { .. }
        | Error::NonFinite { .. }
        | Error::TooLarge { .. }
        | Error::Misaligned { .. }
        | Error::Unsupported { .. }
        | Error::BadFile(_) => PyValueError::new_err(e.to_string()),
        // FileNotFoundError, PermissionError, ... as Python's own file functions raise.
        Error::Io(io) => io.into(),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

fn dtype(name: &str) -> PyResult<DType> {
    Ok(match name {
        "float32" => DType::F32,
        "float16" => DType::F16,
        "bfloat16" => DType::BF16,
        "int8" => DType::I8,
        "int32" => DType::I32,
        other => return Err(PyValueError::new_err(format!("unsupported dtype {other}"))),
    })
}

/// One `Gpu` (kernels loaded) per device ordinal, created on first use.
fn gpu(ordinal: usize) -> PyResult<Arc<Gpu>> {
    static GPUS: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();
    let mut map = GPUS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| PyRuntimeError::new_err("poisoned"))?;
    if let Some(g) = map.get(&ordinal) {
        return Ok(g.clone());
    }
    let g = Arc::new(Gpu::new(ordinal).map_err(to_py)?);
    map.insert(ordinal, g.clone());
    Ok(g)
}

fn parse_levels(name: &str) -> PyResult<Levels> {
    match name {
        "ternary" => Ok(Levels::Ternary),
        "int2" => Ok(Levels::Int2),
        _ => Err(PyValueError::new_err(format!(
            "levels must be \"ternary\" or \"int2\", got {name:?}"
        ))),
    }
}

/// Whether a CUDA driver and device are present.
#[pyfunction]
fn cuda_available() -> bool {
    warp_bitnet::cuda::is_available()
}

/// The route ("groups", "split", "prefill", "prefill_mma" or "dense") a GEMM on device
/// `device` takes for `batch` tokens of `x_dtype` ("float16", "bfloat16" or "int8") on a
/// rows x cols matrix of `levels`: the Rust planner's decision (`Gpu::route`). With
/// `quantize_x`, W2A8 on f16 / bf16 tokens that the library quantizes (`Gpu::route_quantized`):
/// "one_launch" where the kernel quantizes one token itself, else the int8 route.
#[pyfunction]
#[pyo3(signature = (device, rows, cols, levels, x_dtype, batch, quantize_x=false))]
fn route(
    device: usize,
    rows: usize,
    cols: usize,
    levels: &str,
    x_dtype: &str,
    batch: usize,
    quantize_x: bool,
) -> PyResult<&'static str> {
    let levels = parse_levels(levels)?;
    let x = dtype(x_dtype)?;
    let g = gpu(device)?;
    let route = if quantize_x {
        g.route_quantized(rows, cols, levels, x, batch)
    } else {
        g.route(rows, cols, levels, x, batch)
    };
    route.map(|r| r.name()).map_err(to_py)
}

/// Number of u32 words of the GPU (T2) layout of a rows x cols matrix.
/// An optional device pointer from Python, where 0 means absent.
fn present(ptr: u64) -> Option<u64> {
    (ptr != 0).then_some(ptr)
}

#[pyfunction]
fn t2_words(rows: usize, cols: usize) -> usize {
    warp_bitnet::format::tiled::len_words(rows, cols)
}

/// I2-layout words -> T2 on device `device`: `src` holds `rows * ceil(cols / 16)` words
/// (validated I2 codes for `levels="ternary"`, INT2 codes for `"int2"`), `dst` receives
/// `t2_words(rows, cols)` words; `stream` is a `cudaStream_t` as an int.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn i2_to_t2(
    py: Python<'_>,
    device: usize,
    src: u64,
    dst: u64,
    rows: usize,
    cols: usize,
    levels: &str,
    stream: u64,
) -> PyResult<()> {
    let levels = parse_levels(levels)?;
    let g = gpu(device)?;
    // SAFETY: the Python caller passes live, contiguous CUDA tensors of the sizes
    // above on `device` (checked in warp_bitnet/ops.py) and keeps them alive for the
    // launch, which runs in `stream`'s order like every PyTorch op on them.
    py.detach(|| unsafe { g.i2_to_t2_raw(src, dst, rows, cols, levels, stream as _) })
        .map_err(to_py)
}

/// I2-layout words (`levels` codes) at `src` -> dense `[rows, cols]` weights at `dst`
/// (`out`: "int8" ternary weights or twice the INT2 levels; "float16"/"bfloat16" levels,
/// times the f32 `scale` (one, or `rows` with `scale_per_row`) unless it is 0).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn i2_to_dense(
    py: Python<'_>,
    device: usize,
    src: u64,
    dst: u64,
    rows: usize,
    cols: usize,
    levels: &str,
    out: &str,
    scale: u64,
    scale_per_row: bool,
    stream: u64,
) -> PyResult<()> {
    let (levels, out) = (parse_levels(levels)?, dtype(out)?);
    let g = gpu(device)?;
    let scale = present(scale).map(|p| (p, scale_per_row));
    // SAFETY: as in `i2_to_t2`: live CUDA tensors of the checked sizes on `device`.
    py.detach(|| unsafe {
        g.i2_to_dense_raw(src, dst, rows, cols, levels, out, scale, stream as _)
    })
    .map_err(to_py)
}

/// int32 sums `acc` `[batch, rows]` -> `y` in `y_dtype` with the W2A8 epilogue
/// (`x_scale` per token, optional `w_scale` and `bias` (0: none)); see
/// `warp_bitnet.ops.w2a8_epilogue`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn w2a8_epilogue(
    py: Python<'_>,
    device: usize,
    acc: u64,
    x_scale: u64,
    w_scale: u64,
    scale_per_row: bool,
    bias: u64,
    y: u64,
    y_dtype: &str,
    rows: usize,
    batch: usize,
    levels: &str,
    stream: u64,
) -> PyResult<()> {
    let (levels, y_dtype) = (parse_levels(levels)?, dtype(y_dtype)?);
    let g = gpu(device)?;
    let w_scale = present(w_scale).map(|p| (p, scale_per_row));
    let bias = present(bias);
    // SAFETY: as in `i2_to_t2`: live CUDA tensors of the checked sizes on `device`.
    py.detach(|| unsafe {
        g.w2a8_epilogue_raw(
            acc,
            x_scale,
            w_scale,
            bias,
            y,
            y_dtype,
            rows,
            batch,
            levels,
            stream as _,
        )
    })
    .map_err(to_py)
}

/// Float weights `w` (`[rows, cols]`, row stride `ldw`, dtype `w_dtype`) quantized to
/// ternary with `scale` (one f32, or `rows` with `per_row`) and packed to T2 at `dst`, of
/// `w` or, with `transpose`, of its transpose; see `warp_bitnet.ops.quantize_to_t2`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn quantize_to_t2(
    py: Python<'_>,
    device: usize,
    w: u64,
    w_dtype: &str,
    rows: usize,
    cols: usize,
    ldw: usize,
    scale: u64,
    per_row: bool,
    transpose: bool,
    dst: u64,
    stream: u64,
) -> PyResult<()> {
    let w_dtype = dtype(w_dtype)?;
    let g = gpu(device)?;
    // SAFETY: as in `i2_to_t2`: live CUDA tensors of the checked sizes on `device`.
    py.detach(|| unsafe {
        g.quantize_to_t2_raw(
            w,
            w_dtype,
            rows,
            cols,
            ldw,
            scale,
            per_row,
            transpose,
            dst,
            stream as _,
        )
    })
    .map_err(to_py)
}

/// `y = (x . Wᵀ) * scale + bias` on T2 weights at `tiles` whose codes are `levels`
/// (`"ternary"` or `"int2"`; see `warp_bitnet.ops.gemm`).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (device, tiles, levels, rows, cols, scale, scale_per_row, x, x_dtype, ldx, y, y_dtype, ldy, batch, bias, x_scale, quantize_x, stream))]
fn gemm(
    py: Python<'_>,
    device: usize,
    tiles: u64,
    levels: &str,
    rows: usize,
    cols: usize,
    scale: u64,
    scale_per_row: bool,
    x: u64,
    x_dtype: &str,
    ldx: usize,
    y: u64,
    y_dtype: &str,
    ldy: usize,
    batch: usize,
    bias: u64,
    x_scale: u64,
    quantize_x: bool,
    stream: u64,
) -> PyResult<()> {
    let levels = parse_levels(levels)?;
    let g = gpu(device)?;
    let args = GemmArgs {
        x,
        x_dtype: dtype(x_dtype)?,
        ldx,
        y,
        y_dtype: dtype(y_dtype)?,
        ldy,
        batch,
        bias: present(bias),
        x_scale: present(x_scale),
        quantize_x,
    };
    let scale = present(scale).map(|p| (p, scale_per_row));
    // SAFETY: as in `i2_to_t2`: live CUDA tensors of the checked sizes on `device`.
    py.detach(|| unsafe { g.gemm_tiles_raw(rows, cols, levels, tiles, scale, &args, stream as _) })
        .map_err(to_py)
}

/// A GEMM planned once (`prepare_gemm`): each `launch` takes only the activation and output
/// pointers and the stream. Holds its GPU, whose kernels it launches.
#[pyclass(frozen)]
struct PreparedGemm {
    _gpu: Arc<Gpu>,
    prepared: warp_bitnet::cuda::PreparedGemm,
}

#[pymethods]
impl PreparedGemm {
    /// Launches on `x` and `y` (device pointers of the planned shapes and types) in `stream`.
    fn launch(&self, py: Python<'_>, x: u64, y: u64, stream: u64) -> PyResult<()> {
        // SAFETY: the Python caller (functional.py) passes live CUDA tensors of the shapes
        // and types it prepared with, and keeps the weights, scale and bias it prepared with
        // alive and unchanged (it prepares again when their version changes).
        py.detach(|| unsafe { self.prepared.launch(x, y, stream as _) })
            .map_err(to_py)
    }

    /// The planned kernel.
    #[getter]
    fn symbol(&self) -> &str {
        self.prepared.symbol()
    }
}

/// Plans `gemm` once for fixed weights, shapes, types, bias and scales; `None` where the
/// GEMM needs per-call work (large batches): call `gemm` there.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (device, tiles, levels, rows, cols, scale, scale_per_row, x_dtype, ldx, y_dtype, ldy, batch, bias, x_scale, quantize_x))]
fn prepare_gemm(
    device: usize,
    tiles: u64,
    levels: &str,
    rows: usize,
    cols: usize,
    scale: u64,
    scale_per_row: bool,
    x_dtype: &str,
    ldx: usize,
    y_dtype: &str,
    ldy: usize,
    batch: usize,
    bias: u64,
    x_scale: u64,
    quantize_x: bool,
) -> PyResult<Option<PreparedGemm>> {
    let levels = parse_levels(levels)?;
    let g = gpu(device)?;
    // Placeholder activation and output addresses: each launch passes its own.
    let args = GemmArgs {
        x: 256,
        x_dtype: dtype(x_dtype)?,
        ldx,
        y: 256,
        y_dtype: dtype(y_dtype)?,
        ldy,
        batch,
        bias: present(bias),
        x_scale: present(x_scale),
        quantize_x,
    };
    let scale = present(scale).map(|p| (p, scale_per_row));
    // SAFETY: the caller passes live CUDA tensors for the weights, scale and bias and keeps
    // them alive while the plan launches (see PreparedGemm::launch).
    let prepared =
        unsafe { g.prepare_gemm_raw(rows, cols, levels, tiles, scale, &args) }.map_err(to_py)?;
    Ok(prepared.map(|prepared| PreparedGemm { _gpu: g, prepared }))
}

/// Per-token int8 quantization: `x` `[batch, ldx]` f16/bf16 -> `q` `[batch, n]`, `scale` `[batch]`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn quantize_i8(
    py: Python<'_>,
    device: usize,
    x: u64,
    x_dtype: &str,
    batch: usize,
    n: usize,
    ldx: usize,
    q: u64,
    scale: u64,
    stream: u64,
) -> PyResult<()> {
    let g = gpu(device)?;
    let dt = dtype(x_dtype)?;
    // SAFETY: as in `i2_to_t2`.
    py.detach(|| unsafe { g.quantize_i8_raw(x, dt, batch, n, ldx, q, scale, stream as _) })
        .map_err(to_py)
}

/// A Hugging Face BitNet checkpoint or a bitnet.cpp GGUF file -> our packed safetensors
/// file (core `import::checkpoint_file`); returns (matrices converted, tensors kept).
#[pyfunction]
#[pyo3(signature = (input, output, linear_class=None))]
fn convert_checkpoint(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    linear_class: Option<&str>,
) -> PyResult<(usize, usize)> {
    let convention = linear_class
        .map(ScaleConvention::from_linear_class)
        .transpose()
        .map_err(to_py)?;
    py.detach(|| {
        let file = checkpoint_file(&input, convention, |_| ()).map_err(to_py)?;
        std::fs::write(&output, file.to_bytes().map_err(to_py)?)?;
        Ok((file.matrices.len(), file.other.len()))
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(t2_words, m)?)?;
    m.add_function(wrap_pyfunction!(route, m)?)?;
    m.add_function(wrap_pyfunction!(prepare_gemm, m)?)?;
    m.add_class::<PreparedGemm>()?;
    m.add_function(wrap_pyfunction!(i2_to_t2, m)?)?;
    m.add_function(wrap_pyfunction!(gemm, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_to_t2, m)?)?;
    m.add_function(wrap_pyfunction!(i2_to_dense, m)?)?;
    m.add_function(wrap_pyfunction!(w2a8_epilogue, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_i8, m)?)?;
    m.add_function(wrap_pyfunction!(convert_checkpoint, m)?)?;
    cpu::register(m)?;
    host::register(m)?;
    m.add_class::<engine::PyEngine>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
