//! Ternary weights from other projects' layouts, losslessly into [`TernaryMatrix`]
//! (docs/FORMATS.md, "Imported layouts").
//!
//! - Hugging Face BitNet (`microsoft/bitnet-b1.58-2B-4T` and its family): a linear weight is
//!   a `u8` tensor `[rows / 4, cols]` packed along the output dimension, low bits first:
//!   bits `2i .. 2i+1` of byte `[p, k]` hold row `i * rows / 4 + p`, column `k`, as
//!   `code = weight + 1`. Its `weight_scale` is `gamma` for the offline `AutoBitLinear`
//!   (`y = x W * s`) and `1 / gamma` for the legacy `BitLinear` of HF1BitLLM and
//!   Falcon3-1.58bit (`y = x W / s`): [`ScaleConvention`] says which.
//! - bitnet.cpp GGUF `I2_S` tensors: codes `weight + 1` of the row-major weights in blocks
//!   of 128, 32 bytes each, `byte[32 b + p] = c[128 b + p] << 6 | c[128 b + 32 + p] << 4 |
//!   c[128 b + 64 + p] << 2 | c[128 b + 96 + p]`, followed by a 32-byte tail whose first 4
//!   bytes are the f32 per-tensor scale.

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use crate::error::{checked_elems, Error, Result};
use crate::format::{Scale, TernaryMatrix};
use crate::io::{floats, PackedFile, RawTensor};

/// How a checkpoint's `weight_scale` relates to the ternary weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleConvention {
    /// `W = Wt * weight_scale` (transformers' offline `AutoBitLinear`).
    Multiply,
    /// `W = Wt / weight_scale` (legacy `BitLinear`: HF1BitLLM, Falcon3-1.58bit).
    Divide,
}

impl ScaleConvention {
    /// From a transformers `quantization_config.linear_class` (`"autobitlinear"` or
    /// `"bitlinear"`).
    pub fn from_linear_class(class: &str) -> Result<Self> {
        match class {
            "autobitlinear" => Ok(Self::Multiply),
            "bitlinear" => Ok(Self::Divide),
            other => Err(Error::Unsupported {
                what: "linear_class",
                detail: format!("{other:?}; expected \"autobitlinear\" or \"bitlinear\""),
            }),
        }
    }
}

fn weight_of_code(code: u8, row: usize, col: usize) -> Result<i8> {
    match code {
        0 => Ok(-1),
        1 => Ok(0),
        2 => Ok(1),
        _ => Err(Error::InvalidCode { row, col, code }),
    }
}

fn scale_value(scale: f32, convention: ScaleConvention) -> Result<f32> {
    let (arg, s) = match convention {
        ScaleConvention::Multiply => ("weight_scale", scale),
        ScaleConvention::Divide => ("1 / weight_scale", 1.0 / scale),
    };
    if s.is_finite() {
        Ok(s)
    } else {
        Err(Error::NonFinite {
            arg,
            index: 0,
            value: s,
        })
    }
}

/// A Hugging Face BitNet linear weight: `packed` is the `u8` tensor `[rows / 4, cols]`
/// (row-major bytes), `weight_scale` its scalar scale.
pub fn hf_bitnet(
    packed: &[u8],
    rows: usize,
    cols: usize,
    weight_scale: f32,
    convention: ScaleConvention,
) -> Result<TernaryMatrix> {
    if rows % 4 != 0 {
        return Err(Error::ShapeMismatch {
            arg: "rows",
            expected: "a multiple of 4 (4 rows per byte)".into(),
            got: rows.to_string(),
        });
    }
    let quarter = rows / 4;
    crate::error::check_len(
        "packed",
        checked_elems("packed", quarter, cols)?,
        packed.len(),
    )?;
    let mut w = vec![0i8; checked_elems("weights", rows, cols)?];
    for p in 0..quarter {
        for k in 0..cols {
            let byte = packed[p * cols + k];
            for i in 0..4 {
                let row = i * quarter + p;
                w[row * cols + k] = weight_of_code((byte >> (2 * i)) & 3, row, k)?;
            }
        }
    }
    TernaryMatrix::from_ternary(
        rows,
        cols,
        &w,
        Scale::PerTensor(scale_value(weight_scale, convention)?),
    )
}

/// A whole Hugging Face BitNet checkpoint file: every 2-D `U8` tensor `NAME` with a
/// one-value `NAME_scale` beside it becomes a packed matrix `NAME` (the scale folded in);
/// every other tensor is kept unchanged. `progress` is called once per tensor.
pub fn hf_checkpoint(
    st: &SafeTensors,
    convention: ScaleConvention,
    mut progress: impl FnMut(&str),
) -> Result<PackedFile> {
    let mut out = PackedFile::default();
    let mut scales = Vec::new();
    for (name, view) in st.tensors() {
        let scale_name = format!("{name}_scale");
        let packed = view.dtype() == Dtype::U8 && view.shape().len() == 2;
        match (packed, st.tensor(&scale_name)) {
            (true, Ok(scale)) => {
                let &[s] = floats(&scale)?.as_slice() else {
                    return Err(Error::BadFile(format!(
                        "`{scale_name}` must hold one value, has shape {:?}",
                        scale.shape()
                    )));
                };
                let rows = view.shape()[0]
                    .checked_mul(4)
                    .ok_or_else(|| Error::BadFile(format!("`{name}` is too large")))?;
                let m = hf_bitnet(view.data(), rows, view.shape()[1], s, convention)
                    .map_err(|e| Error::BadFile(format!("tensor `{name}`: {e}")))?;
                out.matrices.insert(name.clone(), m);
                scales.push(scale_name);
            }
            _ => {
                let raw = RawTensor {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    data: view.data().to_vec(),
                };
                out.other.insert(name.clone(), raw);
            }
        }
        progress(&name);
    }
    for s in &scales {
        out.other.remove(s);
    }
    Ok(out)
}

/// Bytes of a GGUF `I2_S` tensor of `rows x cols` weights (packed codes + 32-byte tail).
pub fn i2s_len(rows: usize, cols: usize) -> Result<usize> {
    Ok(checked_elems("weights", rows, cols)? / 4 + 32)
}

/// A bitnet.cpp GGUF `I2_S` tensor of `rows x cols` weights (row-major, `rows * cols` a
/// multiple of 128); the scale comes from its tail.
pub fn gguf_i2s(data: &[u8], rows: usize, cols: usize) -> Result<TernaryMatrix> {
    let n = checked_elems("weights", rows, cols)?;
    if n % 128 != 0 {
        return Err(Error::ShapeMismatch {
            arg: "weights",
            expected: "a multiple of 128 weights (I2_S blocks)".into(),
            got: n.to_string(),
        });
    }
    crate::error::check_len("I2_S data", i2s_len(rows, cols)?, data.len())?;
    let mut w = vec![0i8; n];
    for (b, block) in data[..n / 4].chunks_exact(32).enumerate() {
        for (p, &byte) in block.iter().enumerate() {
            for (j, shift) in [6, 4, 2, 0].into_iter().enumerate() {
                let i = 128 * b + 32 * j + p;
                w[i] = weight_of_code((byte >> shift) & 3, i / cols, i % cols)?;
            }
        }
    }
    let tail = &data[n / 4..];
    let scale = f32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    TernaryMatrix::from_ternary(
        rows,
        cols,
        &w,
        Scale::PerTensor(scale_value(scale, ScaleConvention::Multiply)?),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The Hugging Face packer, written from its description.
    fn hf_pack(w: &[i8], rows: usize, cols: usize) -> Vec<u8> {
        let quarter = rows / 4;
        let mut out = vec![0u8; quarter * cols];
        for r in 0..rows {
            for k in 0..cols {
                out[(r % quarter) * cols + k] |=
                    ((w[r * cols + k] + 1) as u8) << (2 * (r / quarter));
            }
        }
        out
    }

    /// The bitnet.cpp I2_S packer, written from its description.
    fn i2s_pack(w: &[i8], scale: f32) -> Vec<u8> {
        let mut out = vec![0u8; w.len() / 4 + 32];
        for (i, &v) in w.iter().enumerate() {
            let (b, j, p) = (i / 128, (i % 128) / 32, i % 32);
            out[32 * b + p] |= ((v + 1) as u8) << (6 - 2 * j);
        }
        out[w.len() / 4..w.len() / 4 + 4].copy_from_slice(&scale.to_le_bytes());
        out
    }

    proptest! {
        #[test]
        fn hf_layout_round_trips(quarter in 1usize..6, cols in 1usize..40, seed in any::<u64>()) {
            let rows = 4 * quarter;
            let w: Vec<i8> = (0..rows * cols).map(|i| ((seed >> (i % 61)) % 3) as i8 - 1).collect();
            let m = hf_bitnet(&hf_pack(&w, rows, cols), rows, cols, 0.5, ScaleConvention::Multiply).unwrap();
            prop_assert_eq!(m.to_ternary(), w.clone());
            prop_assert_eq!(m.scale(), &Scale::PerTensor(0.5));
            let m = hf_bitnet(&hf_pack(&w, rows, cols), rows, cols, 4.0, ScaleConvention::Divide).unwrap();
            prop_assert_eq!(m.scale(), &Scale::PerTensor(0.25));
        }

        #[test]
        fn i2s_round_trips(blocks in 1usize..5, seed in any::<u64>()) {
            let (rows, cols) = (blocks * 4, 32);
            let w: Vec<i8> = (0..rows * cols).map(|i| ((seed >> (i % 59)) % 3) as i8 - 1).collect();
            let m = gguf_i2s(&i2s_pack(&w, 1.25), rows, cols).unwrap();
            prop_assert_eq!(m.to_ternary(), w);
            prop_assert_eq!(m.scale(), &Scale::PerTensor(1.25));
        }
    }

    #[test]
    fn known_bytes() {
        // Rows 0..4 (rows / 4 = 1) of one column: -1, 0, +1, 0 -> codes 0, 1, 2, 1.
        let m = hf_bitnet(&[0b01_10_01_00], 4, 1, 1.0, ScaleConvention::Multiply).unwrap();
        assert_eq!(m.to_ternary(), vec![-1, 0, 1, 0]);
        // I2_S: weight 0 is the top two bits of byte 0, weight 32 the next two.
        let mut w = vec![0i8; 128];
        w[0] = 1;
        w[32] = -1;
        let data = i2s_pack(&w, 2.0);
        assert_eq!(data[0], 0b10_00_01_01);
        assert_eq!(gguf_i2s(&data, 1, 128).unwrap().to_ternary(), w);
    }

    #[test]
    fn checkpoint_folds_scales_and_keeps_the_rest() {
        use safetensors::tensor::TensorView;
        let w: Vec<i8> = (0..24).map(|i| (i * 5 % 3) as i8 - 1).collect();
        let packed = hf_pack(&w, 8, 3);
        let scale = half::bf16::from_f32(4.0).to_le_bytes();
        let norm = [7u8; 6];
        let bytes = safetensors::serialize(
            vec![
                (
                    "q.weight",
                    TensorView::new(Dtype::U8, vec![2, 3], &packed).unwrap(),
                ),
                (
                    "q.weight_scale",
                    TensorView::new(Dtype::BF16, vec![1], &scale).unwrap(),
                ),
                (
                    "norm.weight",
                    TensorView::new(Dtype::BF16, vec![3], &norm).unwrap(),
                ),
                (
                    "raw.u8",
                    TensorView::new(Dtype::U8, vec![2, 3], &norm).unwrap(),
                ),
            ],
            None,
        )
        .unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut seen = 0;
        let file = hf_checkpoint(&st, ScaleConvention::Divide, |_| seen += 1).unwrap();
        assert_eq!(seen, 4);
        assert_eq!(file.matrices["q.weight"].to_ternary(), w);
        assert_eq!(file.matrices["q.weight"].scale(), &Scale::PerTensor(0.25));
        assert_eq!(
            file.other.keys().collect::<Vec<_>>(),
            ["norm.weight", "raw.u8"]
        );
        assert_eq!(file.other["norm.weight"].data, norm);

        let bad_scale = [0u8; 8];
        let bytes = safetensors::serialize(
            vec![
                (
                    "q.weight",
                    TensorView::new(Dtype::U8, vec![2, 3], &packed).unwrap(),
                ),
                (
                    "q.weight_scale",
                    TensorView::new(Dtype::F32, vec![2], &bad_scale).unwrap(),
                ),
            ],
            None,
        )
        .unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert!(matches!(
            hf_checkpoint(&st, ScaleConvention::Multiply, |_| ()),
            Err(Error::BadFile(_))
        ));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(
            hf_bitnet(&[0; 3], 3, 1, 1.0, ScaleConvention::Multiply),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            hf_bitnet(&[0; 2], 4, 1, 1.0, ScaleConvention::Multiply),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            hf_bitnet(&[0b11], 4, 1, 1.0, ScaleConvention::Multiply),
            Err(Error::InvalidCode {
                row: 0,
                col: 0,
                code: 3
            })
        ));
        assert!(matches!(
            hf_bitnet(&[0x55], 4, 1, 0.0, ScaleConvention::Divide),
            Err(Error::NonFinite { .. })
        ));
        assert!(matches!(
            gguf_i2s(&[0; 64], 1, 100),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            gguf_i2s(&[0; 63], 1, 128),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            gguf_i2s(&[0xFF; 64], 1, 128),
            Err(Error::InvalidCode { row: 0, col: 0, .. })
        ));
        assert!(ScaleConvention::from_linear_class("other").is_err());
    }
}
