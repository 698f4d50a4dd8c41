//! The packers and quantizers of the core crate for `warp_bitnet.packing` /
//! `warp_bitnet.quantize`, on contiguous CPU tensors passed by `data_ptr()`: the Python package
//! keeps no copy of them (docs/FORMATS.md, "I2" and "INT2"; core `quant`).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use warp_bitnet::cpu::arch::host::{host_slice, host_slice_mut};
use warp_bitnet::format::{i2, int2};
use warp_bitnet::import::{hf_bitnet, ScaleConvention};
use warp_bitnet::quant::{
    quantize_activations_i8, quantize_int2, quantize_ternary, Int2Quant, WeightQuant,
};
use warp_bitnet::{Error, Int2Matrix, Levels, Scale, TernaryMatrix};

use crate::{parse_levels, to_py};

/// Registers the host functions on `_native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(pack_words, m)?)?;
    m.add_function(wrap_pyfunction!(find_bad_code, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_words, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_hf_bitnet, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_weights, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_activations, m)?)?;
    Ok(())
}

/// `rows * cols` elements, or a ValueError naming `arg`.
fn elems(arg: &str, rows: usize, cols: usize) -> PyResult<usize> {
    rows.checked_mul(cols)
        .ok_or_else(|| PyValueError::new_err(format!("`{arg}`: rows * cols is too large")))
}

/// Words of a `rows` x `cols` packed matrix.
fn word_count(rows: usize, cols: usize) -> PyResult<usize> {
    elems("packed", rows, i2::words_per_row(cols))
}

/// Copies `words` to the int32 words at `dst` (`words.len()` of them).
fn write_words(dst: u64, words: &[u32]) -> PyResult<()> {
    // SAFETY: the Python caller passes a fresh contiguous int32 CPU tensor of exactly
    // `words.len()` elements, which nothing else reads or writes during the call.
    let out = unsafe { host_slice_mut::<u32>("dst", dst, words.len()) }.map_err(to_py)?;
    out.copy_from_slice(words);
    Ok(())
}

/// Packs the values at `src` (`shape` = `(rows, cols)`) into words at `dst`
/// (`rows * ceil(cols / 16)` int32): for `levels="ternary"` int8 weights in {-1, 0, +1}, for
/// `"int2"` uint8 codes 0..=3.
#[pyfunction]
fn pack_words(
    py: Python<'_>,
    src: u64,
    shape: (usize, usize),
    levels: &str,
    dst: u64,
) -> PyResult<()> {
    let ((rows, cols), levels) = (shape, parse_levels(levels)?);
    let n = elems("W", rows, cols)?;
    let words = match levels {
        Levels::Ternary => {
            // SAFETY: the caller passes a live contiguous int8 CPU tensor of `n` elements.
            let w = unsafe { host_slice::<i8>("W", src, n) }.map_err(to_py)?;
            py.detach(|| i2::pack(w, rows, cols))
        }
        _ => {
            // SAFETY: as above, a uint8 tensor of `n` elements.
            let c = unsafe { host_slice::<u8>("W", src, n) }.map_err(to_py)?;
            py.detach(|| int2::pack(c, rows, cols))
        }
    }
    .map_err(to_py)?;
    write_words(dst, &words)
}

/// The first fault of the packed words at `src` (`rows * ceil(cols / 16)` int32 holding
/// `cols` columns of `levels` codes): `("code", row, col)` for an invalid code (`0b11` in
/// I2), `("padding", row, col)` for a non-zero padding code, or None where they are valid.
#[pyfunction]
fn find_bad_code(
    py: Python<'_>,
    src: u64,
    rows: usize,
    cols: usize,
    levels: &str,
) -> PyResult<Option<(&'static str, usize, usize)>> {
    let levels = parse_levels(levels)?;
    let n = word_count(rows, cols)?;
    // SAFETY: the caller passes a live contiguous int32 CPU tensor of `n` elements.
    let words = unsafe { host_slice::<u32>("packed", src, n) }.map_err(to_py)?;
    let checked = py.detach(|| match levels {
        Levels::Ternary => i2::validate(words, rows, cols),
        _ => int2::validate(words, rows, cols),
    });
    match checked {
        Ok(()) => Ok(None),
        Err(Error::InvalidCode { row, col, .. }) => Ok(Some(("code", row, col))),
        Err(Error::NonZeroPadding { row, col, .. }) => Ok(Some(("padding", row, col))),
        Err(e) => Err(to_py(e)),
    }
}

/// Unpacks validated words at `src` into `rows x cols` bytes at `dst`: int8 weights
/// -1, 0, +1 for `levels="ternary"`, uint8 codes 0..=3 for `"int2"`.
#[pyfunction]
fn unpack_words(
    py: Python<'_>,
    src: u64,
    rows: usize,
    cols: usize,
    levels: &str,
    dst: u64,
) -> PyResult<()> {
    let levels = parse_levels(levels)?;
    let n = word_count(rows, cols)?;
    // SAFETY: the caller passes a live contiguous int32 CPU tensor of `n` elements.
    let words = unsafe { host_slice::<u32>("packed", src, n) }
        .map_err(to_py)?
        .to_vec();
    let bytes: Vec<u8> = py
        .detach(|| -> warp_bitnet::Result<Vec<u8>> {
            Ok(match levels {
                Levels::Ternary => TernaryMatrix::from_words(rows, cols, words, Scale::None)?
                    .to_ternary()
                    .into_iter()
                    .map(|v| v as u8)
                    .collect(),
                _ => Int2Matrix::from_words(rows, cols, words, Scale::None)?.to_codes(),
            })
        })
        .map_err(to_py)?;
    // SAFETY: the caller passes a fresh contiguous one-byte CPU tensor of rows * cols
    // elements, which nothing else touches during the call.
    let out = unsafe { host_slice_mut::<u8>("dst", dst, bytes.len()) }.map_err(to_py)?;
    out.copy_from_slice(&bytes);
    Ok(())
}

/// Unpacks a Hugging Face BitNet weight (uint8 `[rows / 4, cols]` at `src`, core
/// `import::hf_bitnet`) into int8 weights -1, 0, +1 `[rows, cols]` at `dst`; the scale is
/// the caller's.
#[pyfunction]
fn unpack_hf_bitnet(py: Python<'_>, src: u64, rows: usize, cols: usize, dst: u64) -> PyResult<()> {
    let (n, total) = (
        elems("weight", rows / 4, cols)?,
        elems("weight", rows, cols)?,
    );
    // SAFETY: the caller passes a live contiguous uint8 CPU tensor of `n` elements.
    let packed = unsafe { host_slice::<u8>("weight", src, n) }.map_err(to_py)?;
    let m = py
        .detach(|| hf_bitnet(packed, rows, cols, 1.0, ScaleConvention::Multiply))
        .map_err(to_py)?;
    // SAFETY: the caller passes a fresh contiguous int8 CPU tensor of rows * cols elements,
    // which nothing else touches during the call.
    let out = unsafe { host_slice_mut::<i8>("dst", dst, total) }.map_err(to_py)?;
    out.copy_from_slice(&m.to_ternary());
    Ok(())
}

/// Quantizes float32 weights at `w` (`rows x cols`) with the core quantizer of `method`
/// ("absmean", "absmean_row", "absmax" for ternary; "int2_mse", "int2_absmax" for INT2)
/// into packed words at `dst` and float32 scales at `scale` (1 value, or `rows` for
/// "absmean_row" and the INT2 methods).
#[pyfunction]
fn quantize_weights(
    py: Python<'_>,
    w: u64,
    rows: usize,
    cols: usize,
    method: &str,
    dst: u64,
    scale: u64,
) -> PyResult<()> {
    let n = elems("W", rows, cols)?;
    // SAFETY: the caller passes a live contiguous float32 CPU tensor of `n` elements.
    let values = unsafe { host_slice::<f32>("W", w, n) }.map_err(to_py)?;
    let ternary = |m| py.detach(|| quantize_ternary(values, rows, cols, m));
    let int2 = |m| py.detach(|| quantize_int2(values, rows, cols, m));
    let (words, scales) = match method {
        "absmean" => parts(ternary(WeightQuant::AbsMean))?,
        "absmean_row" => parts(ternary(WeightQuant::AbsMeanRow))?,
        "absmax" => parts(ternary(WeightQuant::AbsMax))?,
        "int2_mse" => parts(int2(Int2Quant::Mse))?,
        "int2_absmax" => parts(int2(Int2Quant::AbsMax))?,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown quantization method {other:?}"
            )))
        }
    };
    write_words(dst, &words)?;
    // SAFETY: the caller passes a fresh contiguous float32 CPU tensor with one value, or
    // one per row for the per-row methods, which nothing else touches during the call.
    let out = unsafe { host_slice_mut::<f32>("scale", scale, scales.len()) }.map_err(to_py)?;
    out.copy_from_slice(&scales);
    Ok(())
}

/// The words and the scale values of a quantized matrix.
fn parts<L: warp_bitnet::format::LevelCodec>(
    m: warp_bitnet::Result<warp_bitnet::PackedMatrix<L>>,
) -> PyResult<(Vec<u32>, Vec<f32>)> {
    let m = m.map_err(to_py)?;
    let scales = match m.scale() {
        Scale::PerRow(v) => v.clone(),
        Scale::PerTensor(s) => vec![*s],
        Scale::None => vec![1.0],
    };
    Ok((m.words().to_vec(), scales))
}

/// Per-token absmax int8 quantization of float32 `x` (`batch x n`) into int8 `q` and
/// float32 `scale` (`batch`), the core `quantize_activations_i8`.
#[pyfunction]
fn quantize_activations(
    py: Python<'_>,
    x: u64,
    batch: usize,
    n: usize,
    q: u64,
    scale: u64,
) -> PyResult<()> {
    let len = elems("x", batch, n)?;
    // SAFETY: the caller passes a live contiguous float32 CPU tensor of `len` elements.
    let xs = unsafe { host_slice::<f32>("x", x, len) }.map_err(to_py)?;
    let a = py
        .detach(|| quantize_activations_i8(xs, batch, n))
        .map_err(to_py)?;
    // SAFETY: the caller passes fresh contiguous CPU tensors (int8 `len`, float32 `batch`)
    // that nothing else touches during the call.
    let (qs, ss) = unsafe {
        (
            host_slice_mut::<i8>("q", q, len),
            host_slice_mut::<f32>("scale", scale, batch),
        )
    };
    qs.map_err(to_py)?.copy_from_slice(&a.q);
    ss.map_err(to_py)?.copy_from_slice(&a.scale);
    Ok(())
}
