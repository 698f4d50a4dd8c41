//! The model's shape and its architecture differences, as data: one layer loop reads them.
//!
//! Read from a transformers `config.json` (`BitNetForCausalLM`, or `LlamaForCausalLM` with a
//! BitNet `quantization_config`) or built by a preset ([`ModelConfig::bitnet_b158_2b4t`]).

use std::path::Path;

use serde_json::Value;

use super::rope::RopeScaling;
use crate::error::{Error, Result};

/// The gated MLP's activation: `down(act(gate(x)) * up(x))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HiddenAct {
    /// `relu(x)^2` (BitNet b1.58, `hidden_act = "relu2"`).
    Relu2,
    /// `x * sigmoid(x)` (Llama, `hidden_act = "silu"`).
    Silu,
}

impl HiddenAct {
    /// `act(x)`.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            HiddenAct::Relu2 => {
                let r = x.max(0.0);
                r * r
            }
            HiddenAct::Silu => x / (1.0 + (-x).exp()),
        }
    }
}

/// How a checkpoint's `weight_scale` relates to its ternary weights, and whether linear layers
/// normalize their input first; from `quantization_config`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BitLinearConfig {
    /// `linear_class`: `"autobitlinear"` multiplies by `weight_scale`, `"bitlinear"` divides.
    pub convention: crate::import::ScaleConvention,
    /// `use_rms_norm`: every ternary linear layer applies its own RMSNorm (weights
    /// `<linear>.rms_norm.weight`) to its input before quantizing it.
    pub act_norm: bool,
    /// `rms_norm_eps` of those norms.
    pub act_norm_eps: f32,
}

/// Everything the forward pass needs to know about a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The `architectures[0]` it came from (`"BitNetForCausalLM"`, `"LlamaForCausalLM"`).
    pub architecture: String,
    /// Tokens in the vocabulary (rows of the embedding and of the lm_head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA: `num_heads` is a multiple of it).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// The MLP activation.
    pub hidden_act: HiddenAct,
    /// Epsilon of the RMSNorms.
    pub rms_norm_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// How RoPE's frequencies are scaled for long contexts (`rope_parameters.rope_type`).
    pub rope_scaling: RopeScaling,
    /// Longest context the model was trained for (an upper bound on `max_context`).
    pub max_position_embeddings: usize,
    /// The lm_head is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// BitNet's RMSNorms after attention (before `o_proj`) and inside the MLP (before `down_proj`).
    pub sub_norms: bool,
    /// Biases on q/k/v/o (`attention_bias`).
    pub attention_bias: bool,
    /// The ternary linear layers' conventions.
    pub bitlinear: BitLinearConfig,
    /// Beginning-of-sequence token, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (may be several).
    pub eos_token_ids: Vec<u32>,
}

fn bad(file: &str, field: &str, why: impl std::fmt::Display) -> Error {
    Error::BadFile(format!("{file}: field `{field}`: {why}"))
}

impl ModelConfig {
    /// The `microsoft/bitnet-b1.58-2B-4T` architecture.
    pub fn bitnet_b158_2b4t() -> Self {
        Self {
            architecture: "BitNetForCausalLM".into(),
            vocab_size: 128_256,
            hidden_size: 2560,
            intermediate_size: 6912,
            num_layers: 30,
            num_heads: 20,
            num_kv_heads: 5,
            head_dim: 128,
            hidden_act: HiddenAct::Relu2,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: RopeScaling::None,
            max_position_embeddings: 4096,
            tie_word_embeddings: true,
            sub_norms: true,
            attention_bias: false,
            bitlinear: BitLinearConfig {
                convention: crate::import::ScaleConvention::Multiply,
                act_norm: false,
                act_norm_eps: 1e-6,
            },
            bos_token_id: Some(128_000),
            eos_token_ids: vec![128_001],
        }
    }

    /// Llama-3-8B's shape with ternary linear layers (as HF1BitLLM's Llama3-8B-1.58).
    pub fn llama3_8b_ternary() -> Self {
        Self {
            architecture: "LlamaForCausalLM".into(),
            vocab_size: 128_256,
            hidden_size: 4096,
            intermediate_size: 14_336,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            hidden_act: HiddenAct::Silu,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: RopeScaling::None,
            max_position_embeddings: 8192,
            tie_word_embeddings: false,
            sub_norms: false,
            attention_bias: false,
            bitlinear: BitLinearConfig {
                convention: crate::import::ScaleConvention::Divide,
                act_norm: false,
                act_norm_eps: 1e-6,
            },
            bos_token_id: Some(128_000),
            eos_token_ids: vec![128_001, 128_009],
        }
    }

    /// A preset by name: `bitnet-2b4t` or `llama3-8b-ternary`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "bitnet-2b4t" | "bitnet-b1.58-2b-4t" => Ok(Self::bitnet_b158_2b4t()),
            "llama3-8b-ternary" => Ok(Self::llama3_8b_ternary()),
            other => Err(Error::Unsupported {
                what: "model preset",
                detail: format!("{other:?}; known: \"bitnet-2b4t\", \"llama3-8b-ternary\""),
            }),
        }
    }

    /// Reads a transformers `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::BadFile(format!("{name}: cannot read: {e}")))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::BadFile(format!("{name}: not valid JSON: {e}")))?;
        Self::from_hf_json(&json, &name)
    }

    /// Parses a transformers config (`file` names it in errors).
    pub fn from_hf_json(json: &Value, file: &str) -> Result<Self> {
        let arch = json["architectures"][0]
            .as_str()
            .ok_or_else(|| bad(file, "architectures", "missing or not a list of strings"))?;
        let (hidden_act_default, sub_norms) = match arch {
            "BitNetForCausalLM" => ("relu2", true),
            "LlamaForCausalLM" => ("silu", false),
            other => {
                return Err(Error::Unsupported {
                    what: "architecture",
                    detail: format!(
                    "{other:?} in {file}; supported: \"BitNetForCausalLM\", \"LlamaForCausalLM\""
                ),
                })
            }
        };
        let f = Fields { json, file };
        let hidden_size = f.usize("hidden_size", None)?;
        let num_heads = f.usize("num_attention_heads", None)?;
        let head_dim_default = (num_heads > 0).then(|| hidden_size / num_heads);
        let max_position_embeddings = f.usize("max_position_embeddings", Some(2048))?;
        let (rope_theta, rope_scaling) = rope(&f, max_position_embeddings)?;
        let config = Self {
            architecture: arch.into(),
            vocab_size: f.usize("vocab_size", None)?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size", None)?,
            num_layers: f.usize("num_hidden_layers", None)?,
            num_heads,
            num_kv_heads: f.usize("num_key_value_heads", Some(num_heads))?,
            head_dim: f.usize("head_dim", head_dim_default)?,
            hidden_act: match json["hidden_act"].as_str().unwrap_or(hidden_act_default) {
                "relu2" => HiddenAct::Relu2,
                "silu" => HiddenAct::Silu,
                other => {
                    return Err(bad(
                        file,
                        "hidden_act",
                        format!("{other:?} is not supported (relu2, silu)"),
                    ))
                }
            },
            rms_norm_eps: f.f32("rms_norm_eps", Some(1e-6))?,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: json["tie_word_embeddings"].as_bool().unwrap_or(false),
            sub_norms,
            attention_bias: json["attention_bias"].as_bool().unwrap_or(false),
            bitlinear: bitlinear(&f)?,
            bos_token_id: f.opt_id("bos_token_id")?,
            eos_token_ids: f.ids("eos_token_id")?,
        };
        config.validate(file)?;
        Ok(config)
    }

    /// Checks the numbers agree with each other (`file` names the source in errors).
    pub fn validate(&self, file: &str) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(bad(file, field, "must be positive"));
            }
            // Far beyond any real model; keeps every product below below usize::MAX.
            if v > 1 << 24 {
                return Err(bad(file, field, format!("{v} is too large")));
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(bad(
                file,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_kv_heads, self.num_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(bad(file, "head_dim", "RoPE needs an even head_dim"));
        }
        self.rope_scaling.validate(file, "rope_scaling")?;
        if let RopeScaling::Factors(f) = &self.rope_scaling {
            if f.len() != self.head_dim / 2 {
                return Err(bad(
                    file,
                    "rope_freqs",
                    format!(
                        "{} factors; head_dim {} needs {}",
                        f.len(),
                        self.head_dim,
                        self.head_dim / 2
                    ),
                ));
            }
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(bad(file, "vocab_size", "exceeds u32 token ids"));
        }
        for (field, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(file, field, format!("{v} must be a positive number")));
            }
        }
        if let Some(id) = self
            .bos_token_id
            .filter(|&id| id as usize >= self.vocab_size)
        {
            return Err(bad(
                file,
                "bos_token_id",
                format!("{id} >= vocab_size {}", self.vocab_size),
            ));
        }
        if let Some(id) = self
            .eos_token_ids
            .iter()
            .find(|&&id| id as usize >= self.vocab_size)
        {
            return Err(bad(
                file,
                "eos_token_id",
                format!("{id} >= vocab_size {}", self.vocab_size),
            ));
        }
        Ok(())
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// Typed access to the fields of one JSON object, naming the file and field in errors.
struct Fields<'a> {
    json: &'a Value,
    file: &'a str,
}

impl Fields<'_> {
    fn usize(&self, field: &str, default: Option<usize>) -> Result<usize> {
        match &self.json[field] {
            Value::Null => default.ok_or_else(|| bad(self.file, field, "missing")),
            v => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    bad(
                        self.file,
                        field,
                        format!("{v} is not a non-negative integer"),
                    )
                }),
        }
    }

    fn f32(&self, field: &str, default: Option<f32>) -> Result<f32> {
        match &self.json[field] {
            Value::Null => default.ok_or_else(|| bad(self.file, field, "missing")),
            v => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| bad(self.file, field, format!("{v} is not a number"))),
        }
    }

    fn opt_id(&self, field: &str) -> Result<Option<u32>> {
        match &self.json[field] {
            Value::Null => Ok(None),
            v => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| bad(self.file, field, format!("{v} is not a token id"))),
        }
    }

    /// A token id or a list of them (`eos_token_id` may be either).
    fn ids(&self, field: &str) -> Result<Vec<u32>> {
        match &self.json[field] {
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| bad(self.file, field, format!("{v} is not a token id")))
                })
                .collect(),
            _ => Ok(self.opt_id(field)?.into_iter().collect()),
        }
    }
}

/// `rope_theta` and the scaling: transformers 5's `rope_parameters` (which holds both), or
/// transformers 4's `rope_theta` and `rope_scaling`.
fn rope(f: &Fields, max_pos: usize) -> Result<(f32, RopeScaling)> {
    let params = &f.json["rope_parameters"];
    let (scaling, field) = if params.is_object() {
        (params, "rope_parameters")
    } else {
        (&f.json["rope_scaling"], "rope_scaling")
    };
    let scaling = RopeScaling::from_json(scaling, field, max_pos, f.file)?;
    let theta = match &params["rope_theta"] {
        Value::Null => f.f32("rope_theta", Some(10_000.0))?,
        v => v.as_f64().map(|x| x as f32).ok_or_else(|| {
            bad(
                f.file,
                "rope_parameters.rope_theta",
                format!("{v} is not a number"),
            )
        })?,
    };
    Ok((theta, scaling))
}

/// The ternary conventions from `quantization_config`, which must say `quant_method = "bitnet"`:
/// without it, transformers runs the model's linear layers in float, which this engine does not.
fn bitlinear(f: &Fields) -> Result<BitLinearConfig> {
    let q = &f.json["quantization_config"];
    if q.is_null() {
        return Err(bad(
            f.file,
            "quantization_config",
            "missing: not a BitNet-quantized model (need quant_method \"bitnet\")",
        ));
    }
    if q["quant_method"].as_str() != Some("bitnet") {
        return Err(bad(
            f.file,
            "quantization_config.quant_method",
            format!("{} is not \"bitnet\"", q["quant_method"]),
        ));
    }
    let class = q["linear_class"].as_str().unwrap_or("bitlinear");
    let convention = crate::import::ScaleConvention::from_linear_class(class)
        .map_err(|e| bad(f.file, "quantization_config.linear_class", e))?;
    let q = Fields {
        json: q,
        file: f.file,
    };
    Ok(BitLinearConfig {
        convention,
        act_norm: q.json["use_rms_norm"].as_bool().unwrap_or(false),
        act_norm_eps: q.f32("rms_norm_eps", Some(1e-6))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bitnet_json() -> Value {
        json!({
            "architectures": ["BitNetForCausalLM"],
            "vocab_size": 97, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
            "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": [2, 3],
            "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear"}
        })
    }

    #[test]
    fn reads_a_bitnet_config() {
        let c = ModelConfig::from_hf_json(&bitnet_json(), "config.json").unwrap();
        assert_eq!(
            (c.head_dim, c.num_kv_heads, c.hidden_act),
            (16, 2, HiddenAct::Relu2)
        );
        assert!(c.sub_norms && c.tie_word_embeddings);
        assert_eq!(
            (c.rope_theta, c.eos_token_ids.clone()),
            (500_000.0, vec![2, 3])
        );
        assert_eq!(
            c.bitlinear.convention,
            crate::import::ScaleConvention::Multiply
        );
    }

    #[test]
    fn reads_a_llama_config() {
        let mut j = bitnet_json();
        j["architectures"] = json!(["LlamaForCausalLM"]);
        j["rope_parameters"] = Value::Null;
        j["rope_theta"] = json!(10000.0);
        j["quantization_config"] = json!({"quant_method": "bitnet", "use_rms_norm": true});
        let c = ModelConfig::from_hf_json(&j, "config.json").unwrap();
        assert_eq!(c.hidden_act, HiddenAct::Silu);
        assert!(!c.sub_norms && c.bitlinear.act_norm);
        assert_eq!(
            c.bitlinear.convention,
            crate::import::ScaleConvention::Divide
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases: [(&str, Value, &str); 7] = [
            (
                "architectures",
                json!(["GPT2LMHeadModel"]),
                "GPT2LMHeadModel",
            ),
            ("hidden_size", json!("big"), "hidden_size"),
            ("num_key_value_heads", json!(3), "num_key_value_heads"),
            ("vocab_size", json!(0), "vocab_size"),
            ("quantization_config", Value::Null, "quantization_config"),
            ("eos_token_id", json!(97), "eos_token_id"),
            ("rope_parameters", json!({"rope_type": "yarn"}), "yarn"),
        ];
        for (field, value, needle) in cases {
            let mut j = bitnet_json();
            j[field] = value;
            let err = ModelConfig::from_hf_json(&j, "config.json")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{field}: {err}");
        }
        let mut j = bitnet_json();
        j.as_object_mut().unwrap().remove("hidden_size");
        let err = ModelConfig::from_hf_json(&j, "c.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.json") && err.contains("hidden_size"),
            "{err}"
        );
    }

    #[test]
    fn presets_are_valid() {
        for name in ["bitnet-2b4t", "llama3-8b-ternary"] {
            ModelConfig::preset(name).unwrap().validate(name).unwrap();
        }
        assert!(ModelConfig::preset("gpt2").is_err());
    }
}
