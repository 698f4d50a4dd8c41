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
//!   bytes are the f32 per-tensor scale; [`gguf_file`] reads a whole bitnet.cpp model file.

use std::path::Path;

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

/// A checkpoint file as our packed file: a bitnet.cpp GGUF file (told apart by its magic;
/// [`gguf_file`]) or a Hugging Face BitNet safetensors file ([`hf_checkpoint`]) whose scale
/// convention is `convention` or else the `quantization_config.linear_class` of the
/// `config.json` beside it. `progress` is called once per tensor.
pub fn checkpoint_file(
    path: &Path,
    convention: Option<ScaleConvention>,
    progress: impl FnMut(&str),
) -> Result<PackedFile> {
    let bytes = std::fs::read(path)?;
    if bytes.starts_with(b"GGUF") {
        if convention.is_some() {
            return Err(Error::Unsupported {
                what: "linear_class",
                detail: "given for a GGUF file, which carries its own scales".into(),
            });
        }
        return gguf_file(&bytes, progress);
    }
    let convention = match convention {
        Some(c) => c,
        None => convention_of_config(&path.parent().unwrap_or(Path::new(".")).join("config.json"))?,
    };
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::BadFile(format!("{}: {e}", path.display())))?;
    hf_checkpoint(&st, convention, progress)
}

/// The `quantization_config.linear_class` of a transformers `config.json`.
fn convention_of_config(config: &Path) -> Result<ScaleConvention> {
    let missing = |why: String| {
        Error::BadFile(format!(
            "{}: {why}; pass the linear class (\"autobitlinear\" or \"bitlinear\")",
            config.display()
        ))
    };
    let text = std::fs::read_to_string(config).map_err(|e| missing(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| missing(e.to_string()))?;
    let class = json["quantization_config"]["linear_class"]
        .as_str()
        .ok_or_else(|| missing("no quantization_config.linear_class".into()))?;
    ScaleConvention::from_linear_class(class)
}

fn weight_of_code(code: u8, row: usize, col: usize) -> Result<i8> {
    match code {
        0 => Ok(-1),
        1 => Ok(0),
        2 => Ok(1),
        _ => Err(Error::InvalidCode { row, col, code }),
    }
}

pub(crate) fn scale_value(scale: f32, convention: ScaleConvention) -> Result<f32> {
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
/// every other tensor is kept unchanged. A 2-D `U8` `*.weight` without its scale in the same
/// file is [`Error::BadFile`] (a shard of a sharded checkpoint: merge the shards first), so a
/// packed weight never passes through unconverted. `progress` is called once per tensor.
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
            (true, Err(_)) if name.ends_with(".weight") => {
                return Err(Error::BadFile(format!(
                    "`{name}` is a packed U8 weight but `{scale_name}` is not in this file \
                     (sharded checkpoints are not supported: merge the shards first)"
                )))
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

/// A whole bitnet.cpp GGUF file: every 2-D `I2_S` tensor becomes a packed matrix (GGML dims
/// `[cols, rows]`), F32 / F16 / BF16 tensors are kept (shape in row-major order, names as in
/// the file); any other tensor type is [`Error::Unsupported`]. `progress` is called once per
/// tensor.
pub fn gguf_file(bytes: &[u8], mut progress: impl FnMut(&str)) -> Result<PackedFile> {
    let mut out = PackedFile::default();
    for t in crate::gguf::tensors(bytes)? {
        let shape: Vec<usize> = t.dims.iter().rev().copied().collect();
        let dtype = match t.ggml_type {
            crate::gguf::GGML_I2_S => {
                let &[cols, rows] = t.dims.as_slice() else {
                    return Err(Error::BadFile(format!(
                        "I2_S tensor `{}` has dims {:?}, need 2",
                        t.name, t.dims
                    )));
                };
                let m = gguf_i2s(t.data, rows, cols)
                    .map_err(|e| Error::BadFile(format!("tensor `{}`: {e}", t.name)))?;
                out.matrices.insert(t.name.clone(), m);
                progress(&t.name);
                continue;
            }
            crate::gguf::GGML_F32 => Dtype::F32,
            crate::gguf::GGML_F16 => Dtype::F16,
            crate::gguf::GGML_BF16 => Dtype::BF16,
            other => {
                return Err(Error::Unsupported {
                    what: "GGML tensor type",
                    detail: format!("{other} (tensor `{}`)", t.name),
                })
            }
        };
        let raw = RawTensor {
            dtype,
            shape,
            data: t.data.to_vec(),
        };
        out.other.insert(t.name.clone(), raw);
        progress(&t.name);
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

        // A packed weight whose scale is in another shard.
        let bytes = safetensors::serialize(
            vec![(
                "q.weight",
                TensorView::new(Dtype::U8, vec![2, 3], &packed).unwrap(),
            )],
            None,
        )
        .unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let err = hf_checkpoint(&st, ScaleConvention::Multiply, |_| ()).unwrap_err();
        assert!(err.to_string().contains("q.weight_scale"), "{err}");
    }

    /// A GGUF v3 file written from the format description: metadata (a string, an array
    /// and the alignment), then tensor infos, then the aligned data.
    fn gguf(tensors: &[(&str, &[usize], u32, Vec<u8>)], alignment: u32) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend(3u64.to_le_bytes());
        string(&mut out, "general.architecture");
        out.extend(8u32.to_le_bytes());
        string(&mut out, "bitnet-b1.58");
        string(&mut out, "tokenizer.ggml.scores");
        out.extend(9u32.to_le_bytes());
        out.extend(6u32.to_le_bytes());
        out.extend(3u64.to_le_bytes());
        for v in [0.5f32, -1.0, 2.0] {
            out.extend(v.to_le_bytes());
        }
        string(&mut out, "general.alignment");
        out.extend(4u32.to_le_bytes());
        out.extend(alignment.to_le_bytes());
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, t, data) in tensors {
            string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for &d in *dims {
                out.extend((d as u64).to_le_bytes());
            }
            out.extend(t.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).next_multiple_of(u64::from(alignment));
        }
        let start = out.len().next_multiple_of(alignment as usize);
        out.resize(start, 0);
        for ((_, _, _, data), off) in tensors.iter().zip(offsets) {
            out.resize(start + off as usize, 0);
            out.extend(data);
        }
        out
    }

    #[test]
    fn gguf_file_reads_i2s_and_float_tensors() {
        let (rows, cols) = (3, 128);
        let w: Vec<i8> = (0..rows * cols).map(|i| (i * 7 % 3) as i8 - 1).collect();
        let norm: Vec<u8> = [1.5f32; 128].iter().flat_map(|v| v.to_le_bytes()).collect();
        let emb: Vec<u8> = (0..2 * 128u16).flat_map(|v| v.to_le_bytes()).collect();
        let tensors = [
            (
                "blk.0.attn_q.weight",
                &[cols, rows][..],
                36,
                i2s_pack(&w, 0.75),
            ),
            ("blk.0.attn_norm.weight", &[128][..], 0, norm.clone()),
            ("token_embd.weight", &[128, 2][..], 1, emb.clone()),
        ];
        for alignment in [32, 64] {
            let bytes = gguf(&tensors, alignment);
            let mut seen = Vec::new();
            let file = gguf_file(&bytes, |n| seen.push(n.to_string())).unwrap();
            assert_eq!(seen.len(), 3);
            let m = &file.matrices["blk.0.attn_q.weight"];
            assert_eq!((m.rows(), m.cols()), (rows, cols));
            assert_eq!(m.to_ternary(), w);
            assert_eq!(m.scale(), &Scale::PerTensor(0.75));
            let n = &file.other["blk.0.attn_norm.weight"];
            assert_eq!(
                (n.dtype, n.shape.as_slice(), &n.data),
                (Dtype::F32, &[128][..], &norm)
            );
            let e = &file.other["token_embd.weight"];
            assert_eq!(
                (e.dtype, e.shape.as_slice(), &e.data),
                (Dtype::F16, &[2, 128][..], &emb)
            );
        }
    }

    #[test]
    fn hostile_gguf_files_are_errors() {
        let w = vec![0i8; 128];
        let tensors = [("w", &[128, 1][..], 36, i2s_pack(&w, 1.0))];
        let bytes = gguf(&tensors, 32);
        for cut in 0..bytes.len() {
            assert!(gguf_file(&bytes[..cut], |_| ()).is_err(), "cut at {cut}");
        }
        let corrupt = |at: usize, v: &[u8]| {
            let mut b = bytes.clone();
            b[at..at + v.len()].copy_from_slice(v);
            gguf_file(&b, |_| ())
        };
        assert!(matches!(corrupt(0, b"GGUG"), Err(Error::BadFile(_))));
        assert!(matches!(
            corrupt(4, &9u32.to_le_bytes()),
            Err(Error::BadFile(_))
        ));
        // Absurd tensor and metadata counts.
        assert!(matches!(
            corrupt(8, &u64::MAX.to_le_bytes()),
            Err(Error::BadFile(_))
        ));
        assert!(matches!(
            corrupt(16, &(1u64 << 40).to_le_bytes()),
            Err(Error::BadFile(_))
        ));
        // A Q4_0 tensor (type 2) is refused by name.
        let q = [("q", &[32][..], 2, vec![0u8; 18])];
        assert!(matches!(
            gguf_file(&gguf(&q, 32), |_| ()),
            Err(Error::Unsupported { .. })
        ));
        // A 1-D I2_S tensor, and an invalid code.
        let flat = [("w", &[128][..], 36, i2s_pack(&w, 1.0))];
        assert!(matches!(
            gguf_file(&gguf(&flat, 32), |_| ()),
            Err(Error::BadFile(_))
        ));
        let mut evil = i2s_pack(&w, 1.0);
        evil[0] = 0xFF;
        let evil = [("w", &[128, 1][..], 36, evil)];
        assert!(matches!(
            gguf_file(&gguf(&evil, 32), |_| ()),
            Err(Error::BadFile(_))
        ));
        // A skipped metadata string need not be UTF-8; a tensor name must be.
        let at = bytes
            .windows(12)
            .position(|w| w == b"bitnet-b1.58")
            .unwrap();
        assert!(corrupt(at, &[0xFF]).is_ok());
        let name = b"\x01\x00\x00\x00\x00\x00\x00\x00w";
        let at = bytes.windows(9).position(|w| w == name).unwrap() + 8;
        assert!(matches!(corrupt(at, &[0xFF]), Err(Error::BadFile(_))));
        // The same tensor name twice.
        let twice = [tensors[0].clone(), tensors[0].clone()];
        assert!(matches!(
            gguf_file(&gguf(&twice, 32), |_| ()),
            Err(Error::BadFile(_))
        ));
        // Alignment that is not a power of two.
        assert!(matches!(
            gguf_file(&gguf(&tensors, 48), |_| ()),
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
