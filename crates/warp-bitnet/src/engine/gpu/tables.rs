//! Host-side preparation of what the GPU engine uploads: the 16-bit (or f32) float tables,
//! the RoPE (cos, sin) table, and linear layers stacked into one GEMM.

use half::{bf16, f16};

use super::super::config::ModelConfig;
use super::super::weights::Linear;
use crate::dtype::DType;
use crate::error::Result;
use crate::format::{i2, Scale, TernaryMatrix};

/// The narrowest type that holds every value of an embedding / lm_head exactly: bf16 for a
/// checkpoint stored in bf16, f16 for one stored in f16, else f32 (e.g. random weights), so that
/// the GPU reads the same numbers as the CPU path.
pub(crate) fn table_dtype(values: &[f32]) -> DType {
    if values.iter().all(|&v| bf16::from_f32(v).to_f32() == v) {
        DType::BF16
    } else if values.iter().all(|&v| f16::from_f32(v).to_f32() == v) {
        DType::F16
    } else {
        DType::F32
    }
}

/// `values` as the little-endian bytes of `dtype` (f32, f16 or bf16), ready to upload.
pub(crate) fn table_bytes(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// `[max_context, head_dim / 2]` (cos, sin) pairs: the CPU's own `rope` applied to a unit
/// vector at each position (element i = 1, element i + head_dim / 2 = 0 rotates to
/// (cos, sin) exactly), so the GPU rotates by the very same f32 values, whatever the CPU's
/// frequencies are.
pub(crate) fn rope_table(c: &ModelConfig, max_context: usize) -> Vec<f32> {
    let (d, half) = (c.head_dim, c.head_dim / 2);
    let mut table = Vec::with_capacity(max_context * d);
    let mut unit = vec![0f32; d];
    for pos in 0..max_context {
        unit[..half].fill(1.0);
        unit[half..].fill(0.0);
        super::super::forward::rope(&mut unit, d, pos, c.rope_theta);
        table.extend((0..half).flat_map(|i| [unit[i], unit[i + half]]));
    }
    table
}

/// Linear layers that read the same input stacked into one matrix (q|k|v, gate|up): one GEMM
/// with raw int32 sums serves them all; each row keeps its layer's scale and bias, applied by
/// the kernel that reads the sums (the CPU's `(acc * x_scale) * w_scale + bias`, exactly).
pub(crate) struct Stacked {
    /// The rows of every part in order, no scale.
    pub w: TernaryMatrix,
    /// Per-row weight scale.
    pub scale: Vec<f32>,
    /// Per-row bias (0 for a part without one), or `None` when no part has one.
    pub bias: Option<Vec<f32>>,
}

/// Stacks `parts` (all with the same number of columns).
pub(crate) fn stack(parts: &[&Linear]) -> Result<Stacked> {
    let cols = parts[0].w.cols();
    let rows: usize = parts.iter().map(|l| l.w.rows()).sum();
    let mut words = Vec::with_capacity(rows * i2::words_per_row(cols));
    let (mut scale, mut bias) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    for l in parts {
        debug_assert_eq!(l.w.cols(), cols, "stacked layers share their input");
        words.extend_from_slice(l.w.words());
        scale.extend((0..l.w.rows()).map(|r| l.w.scale().of_row(r)));
        match &l.bias {
            Some(b) => bias.extend_from_slice(b),
            None => bias.resize(bias.len() + l.w.rows(), 0.0),
        }
    }
    Ok(Stacked {
        w: TernaryMatrix::from_words(rows, cols, words, Scale::None)?,
        scale,
        bias: parts.iter().any(|l| l.bias.is_some()).then_some(bias),
    })
}
