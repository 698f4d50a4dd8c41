//! `warp-bitnet pack` and `unpack`: dense safetensors <-> packed I2 safetensors.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use half::{bf16, f16};
use indicatif::{ProgressBar, ProgressStyle};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use warp_bitnet::io::{dense_f32, PackedFile, RawTensor};
use warp_bitnet::quant::{quantize_int2, quantize_ternary, Int2Quant, WeightQuant};
use warp_bitnet::PackedWeights;

use crate::paths;

#[derive(Clone, Copy, ValueEnum)]
enum Method {
    /// BitNet b1.58: per-tensor gamma = mean |W|.
    Absmean,
    /// One gamma per output row.
    AbsmeanRow,
    /// The old project's max |W| scale (worse; for compatibility).
    Absmax,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// {-1, 0, +1} times a scale (BitNet b1.58).
    Ternary,
    /// Four levels {-1.5, -0.5, +0.5, +1.5} times a per-row scale.
    Int2,
}

#[derive(Clone, Copy, ValueEnum)]
enum Int2Method {
    /// The scale that minimizes the squared error of each row (Lloyd).
    Mse,
    /// max |W_row| / 1.5.
    Absmax,
}

#[derive(Args)]
pub struct PackArgs {
    /// Dense safetensors file (F32, F16 or BF16 tensors).
    input: PathBuf,
    /// Packed safetensors file to write.
    output: PathBuf,
    /// Weight levels.
    #[arg(long, value_enum, default_value = "ternary")]
    format: Format,
    /// Ternary quantizer.
    #[arg(long, value_enum, default_value = "absmean")]
    method: Method,
    /// INT2 quantizer (with --format int2).
    #[arg(long, value_enum, default_value = "mse")]
    int2_method: Int2Method,
    /// Keep tensors whose name contains any of these dense (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "embed,lm_head")]
    skip: Vec<String>,
    /// Write the output even when no tensor was packed (otherwise an error).
    #[arg(long)]
    allow_empty: bool,
}

#[derive(Args)]
pub struct UnpackArgs {
    /// Packed safetensors file.
    input: PathBuf,
    /// Dense safetensors file to write.
    output: PathBuf,
    /// Element type of the dense tensors.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: OutType,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutType {
    F32,
    F16,
    Bf16,
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {wide_msg}")
            .expect("valid template"),
    );
    bar.set_message(what.to_string());
    bar
}

/// Why `pack` keeps a tensor dense, or None if it packs it.
fn kept_because(view: &TensorView, name: &str, skip: &[String]) -> Option<String> {
    if let Some(s) = skip
        .iter()
        .find(|s| !s.is_empty() && name.contains(s.as_str()))
    {
        return Some(format!("name contains `{s}` (--skip)"));
    }
    if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        return Some(format!(
            "dtype {:?} (pack quantizes F32, F16 and BF16)",
            view.dtype()
        ));
    }
    match view.shape().len() {
        2 => None,
        d => Some(format!("{d}-D (pack quantizes 2-D matrices)")),
    }
}

/// Prints what a command converted and what it kept and why; fails when nothing was
/// converted, unless `allow_empty`.
pub(crate) fn report(
    verb: &str,
    converted: usize,
    kept: &[(String, String)],
    input: &std::path::Path,
    allow_empty: bool,
) -> Result<()> {
    for (name, why) in kept {
        println!("kept `{name}` as is: {why}");
    }
    println!("{converted} tensor(s) {verb}, {} kept as is", kept.len());
    if converted == 0 && !allow_empty {
        bail!(
            "nothing to convert in {}: no tensor was {verb} (pass --allow-empty to write the file anyway)",
            input.display()
        );
    }
    Ok(())
}

pub fn pack(a: PackArgs) -> Result<()> {
    paths::check_output(&a.output, "output")?;
    let bytes = paths::read_input(&a.input, "input")?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("input {} is not a safetensors file", a.input.display()))?;
    let method = match a.method {
        Method::Absmean => WeightQuant::AbsMean,
        Method::AbsmeanRow => WeightQuant::AbsMeanRow,
        Method::Absmax => WeightQuant::AbsMax,
    };
    let int2_method = match a.int2_method {
        Int2Method::Mse => Int2Quant::Mse,
        Int2Method::Absmax => Int2Quant::AbsMax,
    };
    let mut out = PackedFile::default();
    let mut names: Vec<&str> = st.names();
    names.sort();
    let bar = progress(names.len(), "packing");
    let mut kept = Vec::new();
    for name in names {
        let view = st.tensor(name)?;
        let why = kept_because(&view, name, &a.skip);
        if why.is_none() {
            let (rows, cols, w) = dense_f32(&view)?;
            let ctx = || format!("tensor `{name}`");
            match a.format {
                Format::Ternary => {
                    let m = quantize_ternary(&w, rows, cols, method).with_context(ctx)?;
                    out.matrices.insert(name.to_string(), m);
                }
                Format::Int2 => {
                    let m = quantize_int2(&w, rows, cols, int2_method).with_context(ctx)?;
                    out.int2.insert(name.to_string(), m);
                }
            }
        } else {
            let raw = RawTensor {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            };
            out.other.insert(name.to_string(), raw);
            kept.extend(why.map(|w| (name.to_string(), w)));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let packed = out.matrices.len() + out.int2.len();
    report("packed", packed, &kept, &a.input, a.allow_empty)?;
    let data = out.to_bytes()?;
    paths::write_output(&a.output, "output", &data)?;
    println!(
        "wrote {}: {} -> {} bytes",
        a.output.display(),
        bytes.len(),
        data.len()
    );
    Ok(())
}

pub fn unpack(a: UnpackArgs) -> Result<()> {
    paths::check_output(&a.output, "output")?;
    let bytes = paths::read_input(&a.input, "input")?;
    let file = PackedFile::from_bytes(&bytes)
        .with_context(|| format!("input {} is not a packed file", a.input.display()))?;
    let mut out = PackedFile {
        other: file.other,
        ..Default::default()
    };
    let bar = progress(file.matrices.len() + file.int2.len(), "unpacking");
    for (name, m) in file.matrices {
        let levels: Vec<f32> = m.to_ternary().into_iter().map(f32::from).collect();
        out.other.insert(name, dense(&m, &levels, a.dtype));
        bar.inc(1);
    }
    for (name, m) in file.int2 {
        let levels: Vec<f32> = m
            .to_codes()
            .into_iter()
            .map(|c| f32::from(c) - 1.5)
            .collect();
        out.other.insert(name, dense(&m, &levels, a.dtype));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let views = out
        .other
        .iter()
        .map(|(n, t)| {
            Ok((
                n.as_str(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, None)?;
    paths::write_output(&a.output, "output", &data)?;
    println!("wrote {}", a.output.display());
    Ok(())
}

/// `levels * scale` of each row as a dense tensor.
fn dense(m: &impl PackedWeights, levels: &[f32], dtype: OutType) -> RawTensor {
    let vals = levels
        .iter()
        .enumerate()
        .map(|(i, &v)| v * m.scale().of_row(i / m.cols()));
    let (dtype, data): (Dtype, Vec<u8>) = match dtype {
        OutType::F32 => (Dtype::F32, vals.flat_map(f32::to_le_bytes).collect()),
        OutType::F16 => (
            Dtype::F16,
            vals.flat_map(|v| f16::from_f32(v).to_le_bytes()).collect(),
        ),
        OutType::Bf16 => (
            Dtype::BF16,
            vals.flat_map(|v| bf16::from_f32(v).to_le_bytes()).collect(),
        ),
    };
    RawTensor {
        dtype,
        shape: vec![m.rows(), m.cols()],
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_dense(path: &std::path::Path) -> Vec<f32> {
        let w: Vec<f32> = (0..5 * 20)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let wb: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let norm: Vec<u8> = [1.0f32; 20].iter().flat_map(|v| v.to_le_bytes()).collect();
        let emb: Vec<u8> = (0..3 * 20)
            .flat_map(|i| bf16::from_f32(i as f32).to_le_bytes())
            .collect();
        let views = vec![
            (
                "layer.weight",
                TensorView::new(Dtype::F32, vec![5, 20], &wb).unwrap(),
            ),
            (
                "norm.weight",
                TensorView::new(Dtype::F32, vec![20], &norm).unwrap(),
            ),
            (
                "embed_tokens.weight",
                TensorView::new(Dtype::BF16, vec![3, 20], &emb).unwrap(),
            ),
        ];
        safetensors::serialize_to_file(views, None, path).unwrap();
        w
    }

    #[test]
    fn pack_then_unpack() {
        let dir = std::env::temp_dir().join(format!("warp-bitnet-pack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (dense, packed, back) = (
            dir.join("dense.st"),
            dir.join("packed.st"),
            dir.join("back.st"),
        );
        let w = write_dense(&dense);
        let args = PackArgs {
            input: dense.clone(),
            output: packed.clone(),
            format: Format::Ternary,
            method: Method::Absmean,
            int2_method: Int2Method::Mse,
            skip: vec!["embed".into()],
            allow_empty: false,
        };
        pack(args).unwrap();
        let file = PackedFile::from_bytes(&std::fs::read(&packed).unwrap()).unwrap();
        assert_eq!(file.matrices.keys().collect::<Vec<_>>(), ["layer.weight"]);
        assert_eq!(
            file.other.keys().collect::<Vec<_>>(),
            ["embed_tokens.weight", "norm.weight"]
        );
        let m = &file.matrices["layer.weight"];
        let want = quantize_ternary(&w, 5, 20, WeightQuant::AbsMean).unwrap();
        assert_eq!(m, &want);

        unpack(UnpackArgs {
            input: packed,
            output: back.clone(),
            dtype: OutType::F32,
        })
        .unwrap();
        let bytes = std::fs::read(&back).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (rows, cols, vals) = dense_f32(&st.tensor("layer.weight").unwrap()).unwrap();
        assert_eq!((rows, cols), (5, 20));
        let gamma = m.scale().of_row(0);
        let expect: Vec<f32> = m
            .to_ternary()
            .iter()
            .map(|&t| f32::from(t) * gamma)
            .collect();
        assert_eq!(vals, expect);
        assert_eq!(st.tensor("norm.weight").unwrap().shape(), [20]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn int2_pack_then_unpack() {
        let dir = std::env::temp_dir().join(format!("warp-bitnet-int2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (dense, packed, back) = (dir.join("d.st"), dir.join("p.st"), dir.join("b.st"));
        let w = write_dense(&dense);
        pack(PackArgs {
            input: dense,
            output: packed.clone(),
            format: Format::Int2,
            method: Method::Absmean,
            int2_method: Int2Method::Absmax,
            skip: vec!["embed".into()],
            allow_empty: false,
        })
        .unwrap();
        let file = PackedFile::from_bytes(&std::fs::read(&packed).unwrap()).unwrap();
        assert!(file.matrices.is_empty());
        let m = &file.int2["layer.weight"];
        assert_eq!(m, &quantize_int2(&w, 5, 20, Int2Quant::AbsMax).unwrap());
        unpack(UnpackArgs {
            input: packed,
            output: back.clone(),
            dtype: OutType::F32,
        })
        .unwrap();
        let bytes = std::fs::read(&back).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (_, _, vals) = dense_f32(&st.tensor("layer.weight").unwrap()).unwrap();
        let expect: Vec<f32> = m
            .to_codes()
            .iter()
            .enumerate()
            .map(|(i, &c)| (f32::from(c) - 1.5) * m.scale().of_row(i / 20))
            .collect();
        assert_eq!(vals, expect);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_input_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("warp-bitnet-garbage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.st");
        std::fs::write(&bad, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
        let out = dir.join("out.st");
        assert!(pack(PackArgs {
            input: bad.clone(),
            output: out.clone(),
            format: Format::Ternary,
            method: Method::Absmean,
            int2_method: Int2Method::Mse,
            skip: vec![],
            allow_empty: false,
        })
        .is_err());
        assert!(unpack(UnpackArgs {
            input: bad,
            output: out,
            dtype: OutType::F16
        })
        .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
