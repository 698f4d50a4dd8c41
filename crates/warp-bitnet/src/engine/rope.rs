//! RoPE's inverse frequencies and the scaling schemes that stretch them for longer contexts:
//! transformers' `rope_parameters` (`rope_scaling` before transformers 5) types `"default"`,
//! `"linear"` and `"llama3"`, and llama.cpp's per-frequency divisors (`rope_freqs.weight`).
//!
//! Computed in f32 in transformers' order of operations (`_compute_*_parameters` in
//! `modeling_rope_utils.py`), so the rotation angles `pos * inv_freq` are the same f32 values.

use serde_json::Value;

use crate::error::{Error, Result};

/// How the inverse frequencies `theta^(-2i / head_dim)` are scaled.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear {
        /// The divisor (> 0).
        factor: f32,
    },
    /// Llama 3.1's scaling: low frequencies (wavelength above
    /// `original_max_position_embeddings / low_freq_factor`) divided by `factor`, high ones
    /// (below `... / high_freq_factor`) kept, and a smooth blend between.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f32,
        /// Where the low band starts.
        low_freq_factor: f32,
        /// Where the high band starts.
        high_freq_factor: f32,
        /// The context length the model was pre-trained for.
        original_max_position_embeddings: f32,
    },
    /// One divisor per frequency (`head_dim / 2` of them), as llama.cpp stores Llama 3.1's
    /// scaling in a GGUF file (`rope_freqs.weight`).
    Factors(Vec<f32>),
}

fn bad(file: &str, field: &str, why: impl std::fmt::Display) -> Error {
    Error::BadFile(format!("{file}: field `{field}`: {why}"))
}

impl RopeScaling {
    /// The scaling described by a transformers `rope_parameters` / `rope_scaling` object
    /// (`params`, `Null` for none); `field` names it in errors, `max_pos` is the model's
    /// `max_position_embeddings` (the default `original_max_position_embeddings`, as
    /// transformers 5 fills it in).
    pub fn from_json(params: &Value, field: &str, max_pos: usize, file: &str) -> Result<Self> {
        if params.is_null() {
            return Ok(Self::None);
        }
        if !params.is_object() {
            return Err(bad(file, field, format!("{params} is not an object")));
        }
        let kind = params["rope_type"]
            .as_str()
            .or(params["type"].as_str())
            .unwrap_or("default");
        let num = |key: &str, default: Option<f64>| -> Result<f32> {
            match &params[key] {
                Value::Null => default
                    .map(|d| d as f32)
                    .ok_or_else(|| bad(file, &format!("{field}.{key}"), "missing")),
                v => v.as_f64().map(|x| x as f32).ok_or_else(|| {
                    bad(
                        file,
                        &format!("{field}.{key}"),
                        format!("{v} is not a number"),
                    )
                }),
            }
        };
        let scaling = match kind {
            "default" => Self::None,
            "linear" => Self::Linear {
                factor: num("factor", None)?,
            },
            "llama3" => Self::Llama3 {
                factor: num("factor", None)?,
                low_freq_factor: num("low_freq_factor", None)?,
                high_freq_factor: num("high_freq_factor", None)?,
                original_max_position_embeddings: num(
                    "original_max_position_embeddings",
                    Some(max_pos as f64),
                )?,
            },
            other => {
                return Err(Error::Unsupported {
                    what: "RoPE scaling",
                    detail: format!(
                        "{other:?} in {file} (`{field}.rope_type`); supported: \"default\", \"linear\", \"llama3\""
                    ),
                })
            }
        };
        scaling.validate(file, field)?;
        Ok(scaling)
    }

    /// Checks the numbers (`file` and `field` name them in errors).
    pub fn validate(&self, file: &str, field: &str) -> Result<()> {
        let positive = |name: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(bad(
                    file,
                    &format!("{field}.{name}"),
                    format!("{v} must be a positive number"),
                ))
            }
        };
        match self {
            Self::None => Ok(()),
            Self::Linear { factor } => positive("factor", *factor),
            Self::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("factor", *factor)?;
                positive("low_freq_factor", *low_freq_factor)?;
                positive("high_freq_factor", *high_freq_factor)?;
                positive(
                    "original_max_position_embeddings",
                    *original_max_position_embeddings,
                )?;
                if high_freq_factor <= low_freq_factor {
                    return Err(bad(
                        file,
                        &format!("{field}.high_freq_factor"),
                        format!("{high_freq_factor} must exceed low_freq_factor {low_freq_factor}"),
                    ));
                }
                Ok(())
            }
            Self::Factors(f) => f.iter().try_for_each(|&v| positive("rope_freqs", v)),
        }
    }

    /// The `head_dim / 2` inverse frequencies of RoPE with base `theta`, scaled.
    pub fn inv_freq(&self, head_dim: usize, theta: f32) -> Vec<f32> {
        let base = (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32));
        match self {
            Self::None => base.collect(),
            Self::Linear { factor } => base.map(|f| f / factor).collect(),
            Self::Factors(d) => base.zip(d).map(|(f, d)| f / d).collect(),
            &Self::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: old,
            } => {
                // transformers compares and divides in f32 (the Python floats become f32 scalars).
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                base.map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Llama 3.1's formula in f64, written from the paper's description.
    fn llama3_f64(
        head_dim: usize,
        theta: f64,
        factor: f64,
        low: f64,
        high: f64,
        old: f64,
    ) -> Vec<f64> {
        (0..head_dim / 2)
            .map(|i| {
                let f = theta.powf(-((2 * i) as f64) / head_dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < old / high {
                    f
                } else if wavelen > old / low {
                    f / factor
                } else {
                    let s = (old / wavelen - low) / (high - low);
                    (1.0 - s) * f / factor + s * f
                }
            })
            .collect()
    }

    fn close(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(((g as f64) - w).abs() <= 4e-7 * w.abs(), "{i}: {g} vs {w}");
        }
    }

    #[test]
    fn llama3_matches_the_float64_formula_in_every_band() {
        let p = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let s = RopeScaling::from_json(&p, "rope_parameters", 131072, "c.json").unwrap();
        let got = s.inv_freq(128, 500_000.0);
        let want = llama3_f64(128, 500_000.0, 8.0, 1.0, 4.0, 8192.0);
        close(&got, &want);
        // All three bands occur at these numbers.
        let plain = RopeScaling::None.inv_freq(128, 500_000.0);
        let kept = got.iter().zip(&plain).filter(|(g, p)| g == p).count();
        let divided = got
            .iter()
            .zip(&plain)
            .filter(|(g, p)| **g == **p / 8.0)
            .count();
        assert!(
            kept > 0 && divided > 0 && kept + divided < 64,
            "{kept} {divided}"
        );
    }

    #[test]
    fn linear_and_factors_divide() {
        let plain = RopeScaling::None.inv_freq(8, 10_000.0);
        let want: Vec<f64> = (0..4)
            .map(|i| 10_000f64.powf(-(2.0 * i as f64) / 8.0))
            .collect();
        close(&plain, &want);
        let lin = RopeScaling::from_json(
            &json!({"type": "linear", "factor": 4.0}),
            "rope_scaling",
            64,
            "c",
        )
        .unwrap()
        .inv_freq(8, 10_000.0);
        close(&lin, &want.iter().map(|w| w / 4.0).collect::<Vec<_>>());
        let d = [1.0f32, 2.0, 3.0, 5.0];
        let f = RopeScaling::Factors(d.to_vec()).inv_freq(8, 10_000.0);
        close(
            &f,
            &want
                .iter()
                .zip(d)
                .map(|(w, d)| w / d as f64)
                .collect::<Vec<_>>(),
        );
    }

    #[test]
    fn bad_scalings_name_the_field() {
        for (p, needle) in [
            (json!({"rope_type": "yarn", "factor": 2.0}), "yarn"),
            (json!({"rope_type": "linear"}), "rope_scaling.factor"),
            (
                json!({"rope_type": "linear", "factor": -1.0}),
                "rope_scaling.factor",
            ),
            (
                json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}),
                "high_freq_factor",
            ),
            (json!("llama3"), "rope_scaling"),
        ] {
            let err = RopeScaling::from_json(&p, "rope_scaling", 64, "c.json")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{p}: {err}");
        }
    }
}
