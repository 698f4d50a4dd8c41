//! `warp-bitnet convert`: a Hugging Face BitNet checkpoint (pre-packed `u8` weights plus
//! `weight_scale`) or a bitnet.cpp GGUF file (`I2_S` tensors) -> our packed safetensors
//! file, losslessly.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use warp_bitnet::import::{checkpoint_file, ScaleConvention};

use crate::pack::report;
use crate::paths;

#[derive(Clone, Copy, ValueEnum)]
enum LinearClass {
    /// transformers' offline `AutoBitLinear`: W = Wt * weight_scale.
    Autobitlinear,
    /// Legacy `BitLinear` (HF1BitLLM, Falcon3-1.58bit): W = Wt / weight_scale.
    Bitlinear,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// Hugging Face BitNet safetensors file (`*.weight` U8 [rows / 4, cols] + `*.weight_scale`)
    /// or bitnet.cpp GGUF file (told apart by the GGUF magic).
    input: PathBuf,
    /// Packed safetensors file to write.
    output: PathBuf,
    /// How `weight_scale` applies (safetensors input only); default: the
    /// `quantization_config.linear_class` of the `config.json` beside the input.
    #[arg(long, value_enum)]
    linear_class: Option<LinearClass>,
    /// Write the output even when no tensor was converted (otherwise an error).
    #[arg(long)]
    allow_empty: bool,
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    let convention = a.linear_class.map(|c| match c {
        LinearClass::Autobitlinear => ScaleConvention::Multiply,
        LinearClass::Bitlinear => ScaleConvention::Divide,
    });
    paths::check_output(&a.output, "output")?;
    if a.input.is_dir() || !a.input.exists() {
        // The same words as every command, not the library's bare I/O error.
        paths::read_input(&a.input, "input")?;
    }
    let bar = ProgressBar::new_spinner().with_message("converting");
    let out = checkpoint_file(&a.input, convention, |_| bar.inc(1)).map_err(|e| {
        // Name the input once: some of the library's errors name it already.
        let shown = a.input.display().to_string();
        if e.to_string().contains(&shown) {
            anyhow!(e).context("cannot convert input")
        } else {
            anyhow!(e).context(format!("cannot convert input {shown}"))
        }
    })?;
    bar.finish_and_clear();
    let kept: Vec<(String, String)> = out
        .other
        .keys()
        .map(|n| (n.clone(), "not a packed ternary weight".to_string()))
        .collect();
    report(
        "converted",
        out.matrices.len(),
        &kept,
        &a.input,
        a.allow_empty,
    )?;
    paths::write_output(&a.output, "output", &out.to_bytes()?)?;
    println!("wrote {}", a.output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;
    use safetensors::tensor::{Dtype, TensorView};
    use warp_bitnet::io::PackedFile;
    use warp_bitnet::Scale;

    #[test]
    fn converts_a_hf_checkpoint_with_its_config() {
        let dir = std::env::temp_dir().join(format!("warp-bitnet-convert-{}", std::process::id()));
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

        let args = |class| ConvertArgs {
            input: input.clone(),
            output: output.clone(),
            linear_class: class,
            allow_empty: false,
        };
        convert(args(None)).unwrap();
        let file = PackedFile::from_bytes(&std::fs::read(&output).unwrap()).unwrap();
        let m = &file.matrices["q.weight"];
        assert_eq!(m.to_ternary(), w);
        assert_eq!(m.scale(), &Scale::PerTensor(0.5));
        assert_eq!(file.other.keys().collect::<Vec<_>>(), ["norm.weight"]);

        convert(args(Some(LinearClass::Autobitlinear))).unwrap();
        let file = PackedFile::from_bytes(&std::fs::read(&output).unwrap()).unwrap();
        assert_eq!(file.matrices["q.weight"].scale(), &Scale::PerTensor(2.0));

        std::fs::write(dir.join("config.json"), "{}").unwrap();
        assert!(convert(args(None)).is_err());
        // A GGUF file needs no config; a broken one is an error, not a panic.
        std::fs::write(&input, b"GGUF\x03\x00\x00\x00\xff").unwrap();
        let err = convert(args(None)).unwrap_err();
        assert!(format!("{err:#}").contains("GGUF"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
