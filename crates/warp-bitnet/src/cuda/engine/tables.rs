//! Host-side preparation of what the GPU engine uploads: the 16-bit (or f32) float tables,
//! the RoPE (cos, sin) table, and linear layers stacked into one GEMM.

use crate::cpu::dense::{DenseData, DenseMatrix};
use crate::dtype::DType;
use crate::engine::config::ModelConfig;
use crate::engine::weights::Linear;
use crate::error::{Error, Result};
use crate::format::{i2, Scale, TernaryMatrix};

/// The type an embedding / lm_head table is uploaded in: its stored type (f32, f16 or bf16),
/// so that the GPU reads the same numbers as the CPU path. The int8 lm_head is CPU-only.
pub(crate) fn table_dtype(m: &DenseMatrix) -> Result<DType> {
    match m.data() {
        DenseData::F32(_) => Ok(DType::F32),
        DenseData::F16(_) => Ok(DType::F16),
        DenseData::Bf16(_) => Ok(DType::BF16),
        DenseData::I8 { .. } => Err(Error::Unsupported {
            what: "lm_head",
            detail: "int8 runs on the CPU only for now".into(),
        }),
    }
}

/// `m`'s elements as little-endian bytes of their stored type, ready to upload.
pub(crate) fn table_bytes(m: &DenseMatrix) -> Result<Vec<u8>> {
    Ok(match m.data() {
        DenseData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DenseData::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DenseData::Bf16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DenseData::I8 { .. } => return Err(table_dtype(m).unwrap_err()),
    })
}

/// `[max_context, head_dim / 2]` (cos, sin) pairs: the CPU's own `rope` applied to a unit
/// vector at each position (element i = 1, element i + head_dim / 2 = 0 rotates to
/// (cos, sin) exactly), so the GPU rotates by the very same f32 values, whatever the CPU's
/// frequencies are.
pub(crate) fn rope_table(c: &ModelConfig, max_context: usize) -> Vec<f32> {
    let (d, half) = (c.head_dim, c.head_dim / 2);
    let mut table = Vec::with_capacity(max_context * d);
    let mut unit = vec![0f32; d];
    let inv_freq = c.rope_scaling.inv_freq(d, c.rope_theta);
    for pos in 0..max_context {
        unit[..half].fill(1.0);
        unit[half..].fill(0.0);
        crate::engine::forward::rope(&mut unit, d, pos, &inv_freq);
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
    let parts = parts
        .iter()
        .map(|l| Ok((l.ternary()?, l.bias.as_deref())))
        .collect::<Result<Vec<_>>>()?;
    let cols = parts[0].0.cols();
    let rows: usize = parts.iter().map(|(w, _)| w.rows()).sum();
    let mut words = Vec::with_capacity(rows * i2::words_per_row(cols));
    let (mut scale, mut bias) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    for (w, b) in &parts {
        debug_assert_eq!(w.cols(), cols, "stacked layers share their input");
        words.extend_from_slice(w.words());
        scale.extend((0..w.rows()).map(|r| w.scale().of_row(r)));
        match b {
            Some(b) => bias.extend_from_slice(b),
            None => bias.resize(bias.len() + w.rows(), 0.0),
        }
    }
    Ok(Stacked {
        w: TernaryMatrix::from_words(rows, cols, words, Scale::None)?,
        scale,
        bias: parts.iter().any(|(_, b)| b.is_some()).then_some(bias),
    })
}
