//! `warp-bitnet import`: a Hugging Face BitNet checkpoint (pre-packed `u8` weights plus
//! `weight_scale`) -> our packed safetensors file, losslessly.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use warp_bitnet::import::{hf_bitnet, ScaleConvention};
use warp_bitnet::io::{floats, PackedFile, RawTensor};

#[derive(Clone, Copy, ValueEnum)]
enum LinearClass {
    /// transformers' offline `AutoBitLinear`: W = Wt * weight_scale.
    Autobitlinear,
    /// Legacy `BitLinear` (HF1BitLLM, Falcon3-1.58bit): W = Wt / weight_scale.
    Bitlinear,
}

#[derive(Args)]
pub struct ImportArgs {
    /// Hugging Face BitNet safetensors file (`*.weight` U8 [rows / 4, cols] + `*.weight_scale`).
    input: PathBuf,
    /// Packed safetensors file to write.
    output: PathBuf,
    /// How `weight_scale` applies; default: `quantization_config.linear_class` of the
    /// `config.json` beside the input.
    #[arg(long, value_enum)]
    linear_class: Option<LinearClass>,
}

fn convention(a: &ImportArgs) -> Result<ScaleConvention> {
    match a.linear_class {
        Some(LinearClass::Autobitlinear) => Ok(ScaleConvention::Multiply),
        Some(LinearClass::Bitlinear) => Ok(ScaleConvention::Divide),
        None => {
            let config = a
                .input
                .parent()
                .unwrap_or(Path::new("."))
                .join("config.json");
            let text = std::fs::read_to_string(&config).with_context(|| {
                format!("reading {} (or pass --linear-class)", config.display())
            })?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", config.display()))?;
            let Some(class) = json["quantization_config"]["linear_class"].as_str() else {
                bail!(
                    "{} has no quantization_config.linear_class; pass --linear-class",
                    config.display()
                );
            };
            Ok(ScaleConvention::from_linear_class(class)?)
        }
    }
}

pub fn import(a: ImportArgs) -> Result<()> {
    let convention = convention(&a)?;
    let bytes =
        std::fs::read(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("parsing {}", a.input.display()))?;
    let mut out = PackedFile::default();
    let mut scales_used = Vec::new();
    for (name, view) in st.tensors() {
        let scale_name = format!("{name}_scale");
        let packed = view.dtype() == Dtype::U8 && view.shape().len() == 2;
        match (packed, st.tensor(&scale_name)) {
            (true, Ok(scale)) => {
                let s = floats(&scale).with_context(|| format!("tensor `{scale_name}`"))?;
                let &[s] = s.as_slice() else {
                    bail!("`{scale_name}` must hold one value, has {}", s.len());
                };
                let (quarter, cols) = (view.shape()[0], view.shape()[1]);
                let rows = quarter
                    .checked_mul(4)
                    .with_context(|| format!("`{name}` is too large"))?;
                let m = hf_bitnet(view.data(), rows, cols, s, convention)
                    .with_context(|| format!("tensor `{name}`"))?;
                out.matrices.insert(name.clone(), m);
                scales_used.push(scale_name);
            }
            _ => {
                let raw = RawTensor {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    data: view.data().to_vec(),
                };
                out.other.insert(name, raw);
            }
        }
    }
    for s in &scales_used {
        out.other.remove(s);
    }
    std::fs::write(&a.output, out.to_bytes()?)?;
    println!(
        "{} matrices imported, {} tensors kept -> {}",
        out.matrices.len(),
        out.other.len(),
        a.output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;
    use safetensors::tensor::TensorView;
    use warp_bitnet::Scale;

    #[test]
    fn imports_a_hf_checkpoint() {
        let dir = std::env::temp_dir().join(format!("warp-bitnet-import-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (input, output) = (dir.join("model.safetensors"), dir.join("packed.st"));
        // 8 x 3 weights: rows 0..2 in bits 0-1, rows 2..4 in bits 2-3, ...; codes w + 1.
        let w: Vec<i8> = (0..24).map(|i| (i * 5 % 3) as i8 - 1).collect();
        let mut packed = vec![0u8; 2 * 3];
        for r in 0..8 {
            for k in 0..3 {
                packed[(r % 2) * 3 + k] |= ((w[r * 3 + k] + 1) as u8) << (2 * (r / 2));
            }
        }
        let scale = bf16::from_f32(2.0).to_le_bytes();
        let norm = [1u8; 6];
        let views = vec![
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
        ];
        safetensors::serialize_to_file(views, None, &input).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"quantization_config": {"linear_class": "bitlinear"}}"#,
        )
        .unwrap();

        let args = |class| ImportArgs {
            input: input.clone(),
            output: output.clone(),
            linear_class: class,
        };
        import(args(None)).unwrap();
        let file = PackedFile::from_bytes(&std::fs::read(&output).unwrap()).unwrap();
        let m = &file.matrices["q.weight"];
        assert_eq!(m.to_ternary(), w);
        assert_eq!(m.scale(), &Scale::PerTensor(0.5));
        assert_eq!(file.other.keys().collect::<Vec<_>>(), ["norm.weight"]);

        import(args(Some(LinearClass::Autobitlinear))).unwrap();
        let file = PackedFile::from_bytes(&std::fs::read(&output).unwrap()).unwrap();
        assert_eq!(file.matrices["q.weight"].scale(), &Scale::PerTensor(2.0));

        std::fs::write(dir.join("config.json"), "{}").unwrap();
        assert!(import(args(None)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
