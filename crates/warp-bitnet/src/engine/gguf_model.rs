//! A whole model from one GGUF file: the config from the metadata (`{arch}.block_count`, ...),
//! the tensors under llama.cpp's names (`token_embd`, `blk.N.attn_q`, ...) renamed to
//! transformers' and checked against the config, and the tokenizer from `tokenizer.ggml.*`
//! (docs/FORMATS.md, "GGUF models").
//!
//! Architectures (`general.architecture`):
//! - `bitnet-b1.58` (bitnet.cpp's name for `microsoft/bitnet-b1.58-2B-4T`) and `bitnet-25`:
//!   ReLU² MLP, attention and FFN sub-norms.
//! - `bitnet` (llama.cpp's and bitnet.cpp's for 1bitLLM's models): SiLU MLP, sub-norms.
//! - `llama` with ternary linear layers (HF1BitLLM's Llama3-8B-1.58, Falcon3-1.58bit): SiLU, no
//!   sub-norms. llama.cpp's converter permutes the rows of `attn_q` / `attn_k` within each head
//!   (`LlamaModel.permute`: row `2i + j` of a head holds transformers' row `j * head_dim / 2 + i`)
//!   so that its "normal" RoPE rotates adjacent pairs; the loader undoes it, since this engine
//!   rotates halves as transformers does. The BitNet architectures are not permuted (llama.cpp
//!   runs them with NeoX RoPE, which is rotate-half).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::Dtype;

use super::config::{BitLinearConfig, HiddenAct, ModelConfig};
use super::gguf_tokenizer;
use super::load::Loaded;
use super::rope::RopeScaling;
use super::store::{Bytes, Entry, Store};
use super::weights::Weights;
use crate::error::{Error, Result};
use crate::format::{Scale, TernaryMatrix};
use crate::gguf::{self, Gguf, Tensor};
use crate::import::{gguf_i2s, gguf_tq1_0, gguf_tq2_0, ScaleConvention};

/// What an architecture name means for the layer loop.
struct Arch {
    hidden_act: HiddenAct,
    sub_norms: bool,
    /// llama.cpp permuted q/k rows for adjacent-pair RoPE.
    permuted_qk: bool,
}

fn arch(name: &str, file: &str) -> Result<Arch> {
    let (hidden_act, sub_norms, permuted_qk) = match name {
        "bitnet-b1.58" | "bitnet-25" => (HiddenAct::Relu2, true, false),
        "bitnet" => (HiddenAct::Silu, true, false),
        "llama" => (HiddenAct::Silu, false, true),
        other => {
            return Err(Error::Unsupported {
                what: "architecture",
                detail: format!(
                    "{other:?} (`general.architecture` in {file}); supported: \"bitnet-b1.58\", \"bitnet-25\", \"bitnet\", \"llama\""
                ),
            })
        }
    };
    Ok(Arch {
        hidden_act,
        sub_norms,
        permuted_qk,
    })
}

/// The config of the GGUF model at `path` (metadata and tensor shapes checked), without decoding
/// its weights.
pub(crate) fn model_config(path: &Path) -> Result<ModelConfig> {
    let file = path.display().to_string();
    let map = crate::io::Mapped::open(path)?;
    let g = gguf::parse(map.bytes()).map_err(|e| in_file(e, &file))?;
    header(&g, &file).map(|(_, c)| c)
}

fn in_file(e: Error, file: &str) -> Error {
    match e {
        Error::BadFile(m) => Error::BadFile(format!("{file}: {m}")),
        other => other,
    }
}

/// The architecture and config, with every tensor the config calls for checked.
fn header(g: &Gguf, file: &str) -> Result<(Arch, ModelConfig)> {
    let arch_name = g
        .string("general.architecture")
        .map_err(|e| in_file(e, file))?
        .ok_or_else(|| missing(file, "general.architecture"))?;
    let a = arch(&arch_name, file)?;
    let config = config(g, &arch_name, &a, file)?;
    check_tensors(g, &config, file)?;
    Ok((a, config))
}

/// Loads the model in the GGUF file at `path`.
pub(crate) fn load(path: &Path) -> Result<Loaded> {
    let file = path.display().to_string();
    let map = crate::io::Mapped::open(path)?;
    let g = gguf::parse(map.bytes()).map_err(|e| in_file(e, &file))?;
    let (a, config) = header(&g, &file)?;
    let arch_name = config.architecture.clone();
    let tokenizer = gguf_tokenizer::from_gguf(&g, &config, &file)?;

    // Ternary tensors are decoded now; float tensors stay in the mapped file until
    // `Weights::from_store` reads them.
    let base = map.bytes().as_ptr() as usize;
    let mut ternary = Vec::new();
    let mut raw = Vec::new();
    for t in &g.tensors {
        if t.name == "rope_freqs.weight" {
            continue;
        }
        let name = hf_name(&t.name).ok_or_else(|| {
            Error::BadFile(format!(
                "{file}: tensor `{}` is not part of a {arch_name} model this engine runs",
                t.name
            ))
        })?;
        let heads = qk_heads(&t.name, &config).filter(|_| a.permuted_qk);
        match t.ggml_type {
            gguf::GGML_I2_S | gguf::GGML_TQ1_0 | gguf::GGML_TQ2_0 => {
                let m = decode_ternary(t)
                    .map_err(|e| Error::BadFile(format!("{file}: tensor `{}`: {e}", t.name)))?;
                ternary.push((name, unpermuted(m, heads, &t.name, &file)?));
            }
            ty if is_linear(&t.name) => {
                // Float linear weights must already be ternary (bitnet.cpp's F32 / F16 files):
                // llama.cpp runs them as they are, so quantizing them again would change the model.
                let dtype = float_dtype(ty, &t.name, &file)?;
                let m = float_ternary(t, dtype)
                    .map_err(|e| Error::BadFile(format!("{file}: tensor `{}`: {e}", t.name)))?;
                ternary.push((name, unpermuted(m, heads, &t.name, &file)?));
            }
            ty => {
                let dtype = float_dtype(ty, &t.name, &file)?;
                let shape: Vec<usize> = t.dims.iter().rev().copied().collect();
                let start = t.data.as_ptr() as usize - base;
                let bytes = match heads {
                    Some(h) => {
                        check_heads(shape[0], h, &t.name, &file)?;
                        Some(unpermute_rows(t.data, t.data.len() / shape[0], h))
                    }
                    None => None,
                };
                raw.push((name, dtype, shape, start..start + t.data.len(), bytes));
            }
        }
    }
    drop(g);
    let mut store = Store::default();
    let index = store.add_map(map);
    for (name, m) in ternary {
        store.insert(name, Entry::Ternary(m), path)?;
    }
    for (name, dtype, shape, range, owned) in raw {
        let bytes = match owned {
            Some(b) => Bytes::Owned(b),
            None => Bytes::Mapped { file: index, range },
        };
        store.insert(
            name,
            Entry::Raw {
                dtype,
                shape,
                bytes,
            },
            path,
        )?;
    }
    let weights = Weights::from_store(&config, &store)?;
    Ok(Loaded {
        config,
        weights,
        tokenizer,
    })
}

fn missing(file: &str, key: &str) -> Error {
    Error::BadFile(format!("{file}: metadata key `{key}` is missing"))
}

fn bad_key(file: &str, key: &str, why: impl std::fmt::Display) -> Error {
    Error::BadFile(format!("{file}: metadata `{key}`: {why}"))
}

/// The model's config from the `{arch}.*` metadata (llama.cpp's `LLM_KV_*` keys).
fn config(g: &Gguf, arch_name: &str, a: &Arch, file: &str) -> Result<ModelConfig> {
    let key = |k: &str| format!("{arch_name}.{k}");
    let in_file = |e: Error| in_file(e, file);
    let uint = |k: &str| -> Result<Option<usize>> {
        let k = key(k);
        g.uint(&k)
            .map_err(in_file)?
            .map(|v| usize::try_from(v).map_err(|_| bad_key(file, &k, "too large")))
            .transpose()
    };
    let need = |k: &str| uint(k)?.ok_or_else(|| missing(file, &key(k)));
    let float = |k: &str| -> Result<Option<f32>> {
        Ok(g.float(&key(k)).map_err(in_file)?.map(|v| v as f32))
    };
    if uint("expert_count")?.is_some_and(|n| n > 0) {
        return Err(Error::Unsupported {
            what: "model",
            detail: format!("{file} is a mixture of experts (`{}`)", key("expert_count")),
        });
    }
    let hidden_size = need("embedding_length")?;
    let num_heads = need("attention.head_count")?;
    let head_dim = match uint("attention.key_length")? {
        Some(d) => d,
        None if num_heads > 0 => hidden_size / num_heads,
        None => 0,
    };
    if let Some(rot) = uint("rope.dimension_count")?.filter(|&r| r != head_dim) {
        return Err(Error::Unsupported {
            what: "partial RoPE",
            detail: format!(
                "`{}` = {rot} in {file}, but heads are {head_dim} wide; only full-width RoPE is implemented",
                key("rope.dimension_count")
            ),
        });
    }
    let embd = g.tensors.iter().find(|t| t.name == "token_embd.weight");
    let vocab_size = match uint("vocab_size")? {
        Some(v) => v,
        None => match embd {
            Some(t) if t.dims.len() == 2 => t.dims[1],
            _ => return Err(missing(file, &key("vocab_size"))),
        },
    };
    let ids = |k: &str| -> Result<Option<u32>> {
        g.uint(k)
            .map_err(in_file)?
            .map(|v| {
                u32::try_from(v).map_err(|_| bad_key(file, k, format!("{v} is not a token id")))
            })
            .transpose()
    };
    let mut eos_token_ids: Vec<u32> = Vec::new();
    for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = ids(k)?.filter(|id| !eos_token_ids.contains(id)) {
            eos_token_ids.push(id);
        }
    }
    let config = ModelConfig {
        architecture: arch_name.to_string(),
        vocab_size,
        hidden_size,
        intermediate_size: need("feed_forward_length")?,
        num_layers: need("block_count")?,
        num_heads,
        num_kv_heads: uint("attention.head_count_kv")?.unwrap_or(num_heads),
        head_dim,
        hidden_act: a.hidden_act,
        rms_norm_eps: float("attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| missing(file, &key("attention.layer_norm_rms_epsilon")))?,
        rope_theta: float("rope.freq_base")?.unwrap_or(10_000.0),
        rope_scaling: rope_scaling(g, &key, file)?,
        max_position_embeddings: need("context_length")?,
        tie_word_embeddings: !g.tensors.iter().any(|t| t.name == "output.weight"),
        sub_norms: a.sub_norms,
        attention_bias: g.tensors.iter().any(|t| t.name == "blk.0.attn_q.bias"),
        bitlinear: BitLinearConfig {
            // Every GGUF ternary type stores W = code * scale.
            convention: ScaleConvention::Multiply,
            act_norm: false,
            act_norm_eps: 1e-6,
        },
        bos_token_id: ids("tokenizer.ggml.bos_token_id")?,
        eos_token_ids,
    };
    config.validate(file)?;
    Ok(config)
}

/// `{arch}.rope.scaling.type` (`none`, `linear`; llama.cpp writes `linear` with factor 1 for
/// BitNet models), the older `{arch}.rope.scale_linear`, and Llama 3.1's per-frequency
/// divisors, which llama.cpp stores as the tensor `rope_freqs.weight`.
fn rope_scaling(g: &Gguf, key: &dyn Fn(&str) -> String, file: &str) -> Result<RopeScaling> {
    let in_file = |e: Error| in_file(e, file);
    if let Some(t) = g.tensors.iter().find(|t| t.name == "rope_freqs.weight") {
        if t.ggml_type != gguf::GGML_F32 || t.dims.len() != 1 {
            return Err(Error::BadFile(format!(
                "{file}: tensor `rope_freqs.weight` must be a vector of F32 (type {}, dims {:?})",
                t.ggml_type, t.dims
            )));
        }
        let f = t
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        return Ok(RopeScaling::Factors(f));
    }
    let kind = g.string(&key("rope.scaling.type")).map_err(in_file)?;
    let factor = match g.float(&key("rope.scaling.factor")).map_err(in_file)? {
        Some(f) => Some(f),
        None => g.float(&key("rope.scale_linear")).map_err(in_file)?,
    };
    match (kind.as_deref(), factor) {
        (None | Some("none"), None) => Ok(RopeScaling::None),
        (None | Some("linear"), Some(f)) => Ok(RopeScaling::Linear { factor: f as f32 }),
        (Some("linear"), None) => Err(missing(file, &key("rope.scaling.factor"))),
        (Some("none"), Some(_)) => Ok(RopeScaling::None),
        (Some(other), _) => Err(Error::Unsupported {
            what: "RoPE scaling",
            detail: format!(
                "{other:?} (`{}` in {file}); supported: \"none\", \"linear\", and Llama 3.1's `rope_freqs.weight`",
                key("rope.scaling.type")
            ),
        }),
    }
}

/// transformers' name of a llama.cpp tensor name, or `None` for a tensor this engine has no use for.
fn hf_name(name: &str) -> Option<String> {
    let top = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let (layer, rest) = name.strip_prefix("blk.")?.split_once('.')?;
    if layer.parse::<usize>().ok()?.to_string() != layer {
        return None;
    }
    let (base, suffix) = rest.rsplit_once('.')?;
    let hf = match (base, suffix) {
        ("attn_norm", "weight") => "input_layernorm",
        ("attn_q", _) => "self_attn.q_proj",
        ("attn_k", _) => "self_attn.k_proj",
        ("attn_v", _) => "self_attn.v_proj",
        ("attn_output", _) => "self_attn.o_proj",
        ("attn_sub_norm", "weight") => "self_attn.attn_sub_norm",
        ("ffn_norm", "weight") => "post_attention_layernorm",
        ("ffn_gate", "weight") => "mlp.gate_proj",
        ("ffn_up", "weight") => "mlp.up_proj",
        ("ffn_down", "weight") => "mlp.down_proj",
        ("ffn_sub_norm", "weight") => "mlp.ffn_sub_norm",
        _ => return None,
    };
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// For `blk.N.attn_q.*` / `blk.N.attn_k.*`: the number of heads its rows hold.
fn qk_heads(name: &str, c: &ModelConfig) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?.split_once('.')?.1;
    match rest.rsplit_once('.')?.0 {
        "attn_q" => Some(c.num_heads),
        "attn_k" => Some(c.num_kv_heads),
        _ => None,
    }
}

/// Every tensor the config calls for, present with its shape (GGML dims are the row-major
/// shape reversed), each error naming the GGUF tensor.
fn check_tensors(g: &Gguf, c: &ModelConfig, file: &str) -> Result<()> {
    let dims: HashMap<&str, &[usize]> = g
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dims.as_slice()))
        .collect();
    // Checked one by one, stopping at the first missing tensor: a hostile block_count costs
    // nothing beyond the tensors the file really has.
    let check = |name: &str, want: &[usize]| match dims.get(name) {
        None => Err(Error::BadFile(format!(
            "{file}: tensor `{name}` is missing"
        ))),
        Some(got) if *got != want => Err(Error::ShapeMismatch {
            arg: "tensor shape",
            expected: format!("GGML dims {want:?} for `{name}` (from the metadata)"),
            got: format!("{got:?} in {file}"),
        }),
        Some(_) => Ok(()),
    };
    let (h, m, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    check("token_embd.weight", &[h, v])?;
    check("output_norm.weight", &[h])?;
    if !c.tie_word_embeddings {
        check("output.weight", &[h, v])?;
    }
    for i in 0..c.num_layers {
        let t = |n: &str, want: &[usize]| check(&format!("blk.{i}.{n}"), want);
        t("attn_norm.weight", &[h])?;
        t("attn_q.weight", &[h, c.q_dim()])?;
        t("attn_k.weight", &[h, c.kv_dim()])?;
        t("attn_v.weight", &[h, c.kv_dim()])?;
        t("attn_output.weight", &[c.q_dim(), h])?;
        t("ffn_norm.weight", &[h])?;
        t("ffn_gate.weight", &[h, m])?;
        t("ffn_up.weight", &[h, m])?;
        t("ffn_down.weight", &[m, h])?;
        if c.sub_norms {
            t("attn_sub_norm.weight", &[h])?;
            t("ffn_sub_norm.weight", &[m])?;
        }
        if c.attention_bias {
            t("attn_q.bias", &[c.q_dim()])?;
            t("attn_k.bias", &[c.kv_dim()])?;
            t("attn_v.bias", &[c.kv_dim()])?;
            t("attn_output.bias", &[h])?;
        }
    }
    for t in &g.tensors {
        let layer = t
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next()?.parse::<usize>().ok());
        if let Some(i) = layer.filter(|&i| i >= c.num_layers) {
            return Err(Error::ShapeMismatch {
                arg: "block_count",
                expected: format!("{} layers (from the metadata)", c.num_layers),
                got: format!("tensor `{}` of layer {i} in {file}", t.name),
            });
        }
    }
    Ok(())
}

fn decode_ternary(t: &Tensor) -> Result<TernaryMatrix> {
    let &[cols, rows] = t.dims.as_slice() else {
        return Err(Error::ShapeMismatch {
            arg: "ternary tensor",
            expected: "2 dimensions".into(),
            got: format!("{:?}", t.dims),
        });
    };
    match t.ggml_type {
        gguf::GGML_I2_S => gguf_i2s(t.data, rows, cols),
        gguf::GGML_TQ1_0 => gguf_tq1_0(t.data, rows, cols),
        _ => gguf_tq2_0(t.data, rows, cols),
    }
}

/// `blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}.weight`.
fn is_linear(name: &str) -> bool {
    let Some((_, rest)) = name.strip_prefix("blk.").and_then(|r| r.split_once('.')) else {
        return false;
    };
    matches!(
        rest,
        "attn_q.weight"
            | "attn_k.weight"
            | "attn_v.weight"
            | "attn_output.weight"
            | "ffn_gate.weight"
            | "ffn_up.weight"
            | "ffn_down.weight"
    )
}

/// A float matrix whose values are `{-a, 0, +a}` for one `a`: the ternary matrix it is.
fn float_ternary(t: &Tensor, dtype: Dtype) -> Result<TernaryMatrix> {
    let &[cols, rows] = t.dims.as_slice() else {
        return Err(Error::ShapeMismatch {
            arg: "linear weight",
            expected: "2 dimensions".into(),
            got: format!("{:?}", t.dims),
        });
    };
    let w = super::store::to_f32(dtype, t.data).unwrap_or_default();
    let a = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let codes = w
        .iter()
        .enumerate()
        .map(|(i, &v)| match v {
            _ if v == 0.0 => Ok(0),
            _ if v == a => Ok(1),
            _ if v == -a => Ok(-1),
            value => Err(Error::Unsupported {
                what: "float linear weights",
                detail: format!(
                    "value {value} at row {}, column {} is not 0 or +-{a}: not a ternary model (the engine runs ternary linear layers)",
                    i / cols,
                    i % cols
                ),
            }),
        })
        .collect::<Result<Vec<i8>>>()?;
    let scale = if a > 0.0 { a } else { 1.0 };
    TernaryMatrix::from_ternary(rows, cols, &codes, Scale::PerTensor(scale))
}

fn float_dtype(ty: u32, name: &str, file: &str) -> Result<Dtype> {
    match ty {
        gguf::GGML_F32 => Ok(Dtype::F32),
        gguf::GGML_F16 => Ok(Dtype::F16),
        gguf::GGML_BF16 => Ok(Dtype::BF16),
        other => Err(Error::Unsupported {
            what: "GGML tensor type",
            detail: format!(
                "{other} for `{name}` in {file}; readable: F32, F16, BF16, I2_S, TQ1_0, TQ2_0"
            ),
        }),
    }
}

/// A permuted q/k tensor's rows must split into `heads` heads of even width.
fn check_heads(rows: usize, heads: usize, name: &str, file: &str) -> Result<()> {
    if rows == 0 || rows % heads != 0 || (rows / heads) % 2 != 0 {
        return Err(Error::ShapeMismatch {
            arg: "tensor shape",
            expected: format!("rows in {heads} heads of even width for `{name}`"),
            got: format!("{rows} rows in {file}"),
        });
    }
    Ok(())
}

/// `m` in transformers' row order (`heads`: the q/k heads of a permuted tensor, else `None`).
fn unpermuted(
    m: TernaryMatrix,
    heads: Option<usize>,
    name: &str,
    file: &str,
) -> Result<TernaryMatrix> {
    match heads {
        Some(h) => {
            check_heads(m.rows(), h, name, file)?;
            unpermute_matrix(&m, h)
        }
        None => Ok(m),
    }
}

/// Where transformers' row `r` of a q/k matrix of `heads` heads is in llama.cpp's order.
fn permuted_row(r: usize, rows: usize, heads: usize) -> usize {
    let d = rows / heads;
    let (head, k) = (r / d, r % d);
    let (j, i) = (k / (d / 2), k % (d / 2));
    head * d + 2 * i + j
}

/// A q/k weight back in transformers' row order.
fn unpermute_matrix(m: &TernaryMatrix, heads: usize) -> Result<TernaryMatrix> {
    let rows = m.rows();
    let words: Vec<u32> = (0..rows)
        .flat_map(|r| m.row_words(permuted_row(r, rows, heads)).iter().copied())
        .collect();
    let scale = match m.scale() {
        Scale::PerRow(s) => {
            Scale::PerRow((0..rows).map(|r| s[permuted_row(r, rows, heads)]).collect())
        }
        other => other.clone(),
    };
    TernaryMatrix::from_words(rows, m.cols(), words, scale)
}

/// A q/k bias (or float weight) back in transformers' row order: `row_bytes` bytes per row.
fn unpermute_rows(data: &[u8], row_bytes: usize, heads: usize) -> Vec<u8> {
    let rows = data.len() / row_bytes.max(1);
    (0..rows)
        .flat_map(|r| {
            let p = permuted_row(r, rows, heads);
            data[p * row_bytes..(p + 1) * row_bytes].iter().copied()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_undoes_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, d / 2, ...).swapaxes(1, 2): row (h, i, j) <- (h, j, i).
        let (heads, d) = (3, 8);
        let rows = heads * d;
        let mut gguf_rows = vec![0; rows];
        for h in 0..heads {
            for i in 0..d / 2 {
                for j in 0..2 {
                    gguf_rows[h * d + 2 * i + j] = h * d + j * (d / 2) + i;
                }
            }
        }
        for r in 0..rows {
            assert_eq!(gguf_rows[permuted_row(r, rows, heads)], r);
        }
    }

    #[test]
    fn names_map_to_transformers() {
        assert_eq!(
            hf_name("blk.12.attn_sub_norm.weight").as_deref(),
            Some("model.layers.12.self_attn.attn_sub_norm.weight")
        );
        assert_eq!(
            hf_name("blk.0.attn_q.bias").as_deref(),
            Some("model.layers.0.self_attn.q_proj.bias")
        );
        for bad in [
            "blk.01.attn_q.weight",
            "blk.0.attn_norm.bias",
            "blk.x.ffn_up.weight",
            "lm_head.weight",
        ] {
            assert_eq!(hf_name(bad), None, "{bad}");
        }
    }
}
