//! A model's weights as a plain struct (llama2.c's `TransformerWeights`): ternary linear layers
//! (one copy, the CPU kernels' C2 layout), float norms, and the embedding and lm_head in the
//! checkpoint's own float type. Built from a [`Store`] by transformers names, checking every
//! shape against the config, or at random for benchmarks.

use rand::{Rng, SeedableRng};
use std::path::Path;

use safetensors::tensor::Dtype;

use super::config::ModelConfig;
use super::store::{to_f32, Entry, Store};
use crate::cpu::dense::{DenseData, DenseMatrix};
use crate::cpu::CpuMatrix;
use crate::error::{Error, Result};
use crate::format::{i2, Scale, TernaryMatrix};
use crate::import::hf_bitnet;
use crate::quant::WEIGHT_EPS;

/// One ternary linear layer: `y = W (act_norm(x) quantized) * scale + bias`.
pub(crate) struct Linear {
    /// The weights in the CPU kernels' layout (C2), converted once at load; the packed
    /// matrix they came from is dropped, so the model is held once.
    pub c2: CpuMatrix,
    pub bias: Option<Vec<f32>>,
    /// The `use_rms_norm` activation norm's weights, if the model has them.
    pub norm: Option<Vec<f32>>,
}

impl Linear {
    /// The packed ternary matrix again (I2 words, per-row scales), rebuilt from C2 for
    /// consumers of the interchange layout (the GPU engine's upload): the engine holds only C2,
    /// and the conversion is lossless.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // the GPU engine's upload (cuda/engine)
    pub fn ternary(&self) -> Result<TernaryMatrix> {
        use crate::cpu::arch::{BLOCK, BLOCK_BYTES};
        let (rows, cols, m) = (self.c2.rows(), self.c2.cols(), &self.c2);
        let rb = m.padded_cols() / BLOCK * BLOCK_BYTES;
        let (a, b) = m.decode();
        let mut t = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            let row = &m.bytes()[r * rb..(r + 1) * rb];
            t.extend((0..cols).map(|c| {
                let (blk, within) = (c / BLOCK, c % BLOCK);
                let u = (row[BLOCK_BYTES * blk + within % 32] >> (2 * (within / 32))) & 3;
                (a * i32::from(u) + b) as i8
            }));
        }
        let scale = Scale::PerRow(m.row_scales().to_vec());
        TernaryMatrix::from_ternary(rows, cols, &t, scale)
    }
}

/// One decoder layer.
pub(crate) struct Layer {
    pub attn_norm: Vec<f32>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// BitNet's norm of the attention output (before `o_proj`).
    pub attn_sub_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    /// BitNet's norm of the MLP's hidden activations (before `down_proj`).
    pub ffn_sub_norm: Option<Vec<f32>>,
}

/// Every weight of a model.
pub(crate) struct Weights {
    /// `[vocab, hidden]`, as stored in the checkpoint (f32, f16 or bf16).
    pub embed: DenseMatrix,
    pub layers: Vec<Layer>,
    pub final_norm: Vec<f32>,
    /// `[vocab, hidden]`, or `None` when tied to `embed`.
    pub lm_head: Option<DenseMatrix>,
}

impl Weights {
    /// The lm_head matrix (`[vocab, hidden]`).
    pub fn lm_head(&self) -> &DenseMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Replaces the lm_head by its per-row int8 quantization ([`DenseMatrix::quantize_i8_rows`]);
    /// a tied embedding stays as stored for the token lookups.
    pub fn quantize_lm_head(&mut self) {
        self.lm_head = Some(self.lm_head().quantize_i8_rows());
    }

    /// Bytes of weights one decode step reads (C2 codes and row scales, f32 norms and biases,
    /// the lm_head as held, one embedding row).
    pub fn decode_bytes(&self, c: &ModelConfig) -> u64 {
        let linear = |l: &Linear| {
            l.c2.packed_bytes()
                + 4 * (l.c2.row_scales().len()
                    + l.bias.as_ref().map_or(0, Vec::len)
                    + l.norm.as_ref().map_or(0, Vec::len))
        };
        let layers = self.layer_bytes(linear);
        let embed_row = self.embed.bytes() / c.vocab_size;
        (layers + 4 * self.final_norm.len() + self.lm_head().bytes() + embed_row) as u64
    }

    /// Bytes of every decoder layer: `linear(l)` for each linear layer (its weights in whatever
    /// form the caller counts) plus the f32 norms.
    pub fn layer_bytes(&self, linear: impl Fn(&Linear) -> usize) -> usize {
        let norm = |n: &Option<Vec<f32>>| 4 * n.as_ref().map_or(0, Vec::len);
        self.layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .into_iter()
                    .map(&linear)
                    .sum::<usize>()
                    + 4 * (l.attn_norm.len() + l.ffn_norm.len())
                    + norm(&l.attn_sub_norm)
                    + norm(&l.ffn_sub_norm)
            })
            .sum()
    }

    /// Reads every weight the config calls for from `store`, checking shapes.
    pub fn from_store(c: &ModelConfig, store: &Store) -> Result<Self> {
        let r = Reader { c, store };
        let (h, v) = (c.hidden_size, c.vocab_size);
        let embed = r.dense("model.embed_tokens.weight", v, h)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(r.dense("lm_head.weight", v, h)?)
        };
        let layers = (0..c.num_layers)
            .map(|i| r.layer(i))
            .collect::<Result<_>>()?;
        check_no_extra_layers(c, store)?;
        Ok(Self {
            embed,
            layers,
            final_norm: r.floats("model.norm.weight", &[h])?,
            lm_head,
        })
    }

    /// Random weights of the config's shapes, reproducible from `seed`: ternary codes with
    /// scales `1 / sqrt(cols)`-ish and norms near 1, so activations stay O(1) through the layers;
    /// the embedding and lm_head in bf16, as bitnet-b1.58-2B-4T's checkpoint stores them.
    pub fn random(c: &ModelConfig, seed: u64) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (h, v) = (c.hidden_size, c.vocab_size);
        let mut normal = |n: usize, std: f32| -> Vec<f32> {
            // Sum of 4 uniforms: close enough to a normal for benchmarks and tests, and fast.
            (0..n)
                .map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * std * 1.732)
                .collect()
        };
        let embed = DenseMatrix::bf16_from_f32(v, h, &normal(v * h, 1.0))?;
        let lm_head = match c.tie_word_embeddings {
            true => None,
            false => Some(DenseMatrix::bf16_from_f32(
                v,
                h,
                &normal(v * h, 1.0 / (h as f32).sqrt()),
            )?),
        };
        let final_norm = normal(h, 0.1).iter().map(|x| 1.0 + x).collect();
        let mut layers = Vec::with_capacity(c.num_layers);
        for _ in 0..c.num_layers {
            layers.push(random_layer(c, &mut rng)?);
        }
        Ok(Self {
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }
}

fn random_layer(c: &ModelConfig, rng: &mut rand::rngs::StdRng) -> Result<Layer> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut norm =
        |n: usize| -> Vec<f32> { (0..n).map(|_| 0.9 + 0.2 * rng.random::<f32>()).collect() };
    let (attn_norm, ffn_norm) = (norm(h), norm(h));
    let attn_sub_norm = c.sub_norms.then(|| norm(h));
    let ffn_sub_norm = c.sub_norms.then(|| norm(i));
    let mut linear = |rows: usize, cols: usize| -> Result<Linear> {
        Ok(Linear {
            c2: CpuMatrix::from(&random_ternary(rows, cols, rng)?),
            bias: c.attention_bias.then(|| vec![0.01; rows]),
            norm: c.bitlinear.act_norm.then(|| vec![1.0; cols]),
        })
    };
    let mut layer = Layer {
        attn_norm,
        q: linear(c.q_dim(), h)?,
        k: linear(c.kv_dim(), h)?,
        v: linear(c.kv_dim(), h)?,
        o: linear(h, c.q_dim())?,
        attn_sub_norm,
        ffn_norm,
        gate: linear(i, h)?,
        up: linear(i, h)?,
        down: linear(h, i)?,
        ffn_sub_norm,
    };
    // Only q/k/v/o have biases in transformers' Llama and BitNet (`mlp_bias` is not read).
    for l in [&mut layer.gate, &mut layer.up, &mut layer.down] {
        l.bias = None;
    }
    Ok(layer)
}

/// Random I2 words: each code's two random bits, with the invalid `11` cleared to `00` (so weights
/// are 0 with probability 1/2, +-1 with 1/4 each) and the row padding zero.
fn random_ternary(rows: usize, cols: usize, rng: &mut rand::rngs::StdRng) -> Result<TernaryMatrix> {
    let wpr = i2::words_per_row(cols);
    let tail = cols % i2::WEIGHTS_PER_WORD;
    let tail_mask = if tail == 0 {
        u32::MAX
    } else {
        (1u32 << (2 * tail)) - 1
    };
    let mut words: Vec<u32> = (0..rows * wpr).map(|_| rng.random()).collect();
    for (j, w) in words.iter_mut().enumerate() {
        let both = (*w >> 1) & *w & 0x5555_5555;
        *w &= !(both | both << 1);
        if j % wpr == wpr - 1 {
            *w &= tail_mask;
        }
    }
    // About half the weights are non-zero: y ~ sqrt(cols / 2) |x|; this brings it back to |x|.
    let scale = (2.0 / cols as f32).sqrt();
    TernaryMatrix::from_words(rows, cols, words, Scale::PerTensor(scale))
}

/// A checkpoint with more layers than its config is a mismatch, not a model to truncate silently.
fn check_no_extra_layers(c: &ModelConfig, store: &Store) -> Result<()> {
    for name in store.names() {
        let layer = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split('.').next()?.parse::<usize>().ok());
        if let Some(i) = layer.filter(|&i| i >= c.num_layers) {
            return Err(Error::ShapeMismatch {
                arg: "num_hidden_layers",
                expected: format!("{} layers (from the config)", c.num_layers),
                got: format!("tensor `{name}` of layer {i}"),
            });
        }
    }
    Ok(())
}

/// Looks tensors up by name, checking dtype and shape, and naming the file at fault.
struct Reader<'a> {
    c: &'a ModelConfig,
    store: &'a Store,
}

impl Reader<'_> {
    fn missing(&self, name: &str) -> Error {
        Error::BadFile(format!("tensor `{name}` is missing from the checkpoint"))
    }

    /// A float tensor as stored: `[rows, cols]`, f32, f16 or bf16, every value finite.
    fn dense(&self, name: &str, rows: usize, cols: usize) -> Result<DenseMatrix> {
        let (dtype, bytes, path) = self.raw(name, &[rows, cols])?;
        let bad = || {
            Error::BadFile(format!(
                "{}: tensor `{name}` has dtype {dtype:?}; expected F32, F16 or BF16",
                path.display()
            ))
        };
        let data = match dtype {
            Dtype::F16 => DenseData::F16(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            Dtype::BF16 => DenseData::Bf16(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            _ => DenseData::F32(to_f32(dtype, bytes).ok_or_else(bad)?),
        };
        let m = DenseMatrix::new(rows, cols, data)
            .map_err(|e| Error::BadFile(format!("{}: tensor `{name}`: {e}", path.display())))?;
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            m.row_into(r, &mut row)?;
            if let Some(i) = row.iter().position(|v| !v.is_finite()) {
                return Err(Error::BadFile(format!(
                    "{}: tensor `{name}` holds a non-finite value at index {}",
                    path.display(),
                    r * cols + i
                )));
            }
        }
        Ok(m)
    }

    /// A raw tensor's dtype, bytes and file, its shape checked.
    fn raw(&self, name: &str, shape: &[usize]) -> Result<(Dtype, &[u8], &Path)> {
        let (entry, path) = self.store.get(name).ok_or_else(|| self.missing(name))?;
        let Entry::Raw {
            dtype,
            shape: got,
            bytes,
        } = entry
        else {
            return Err(Error::BadFile(format!(
                "{}: tensor `{name}` is a packed ternary matrix; expected a float tensor",
                path.display()
            )));
        };
        if got.as_slice() != shape {
            return Err(Error::ShapeMismatch {
                arg: "tensor shape",
                expected: format!("{shape:?} for `{name}` (from the config)"),
                got: format!("{got:?} in {}", path.display()),
            });
        }
        Ok((*dtype, self.store.bytes(bytes), path))
    }

    fn floats(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (dtype, bytes, path) = self.raw(name, shape)?;
        let values = to_f32(dtype, bytes).ok_or_else(|| {
            Error::BadFile(format!(
                "{}: tensor `{name}` has dtype {dtype:?}; expected F32, F16 or BF16",
                path.display()
            ))
        })?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::BadFile(format!(
                "{}: tensor `{name}` holds a non-finite value at index {i}",
                path.display()
            )));
        }
        Ok(values)
    }

    fn opt_floats(&self, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        match self.store.get(name) {
            None => Ok(None),
            Some(_) => self.floats(name, shape).map(Some),
        }
    }

    /// A ternary weight: packed (ours or GGUF), Hugging Face U8 with `weight_scale`, or dense
    /// floats quantized as transformers' online `AutoBitLinear` does.
    fn ternary(&self, name: &str, rows: usize, cols: usize) -> Result<TernaryMatrix> {
        let (entry, path) = self.store.get(name).ok_or_else(|| self.missing(name))?;
        let in_file =
            |e: Error| Error::BadFile(format!("{}: tensor `{name}`: {e}", path.display()));
        let shape_err = |got: String| Error::ShapeMismatch {
            arg: "tensor shape",
            expected: format!("[{rows}, {cols}] for `{name}` (from the config)"),
            got: format!("{got} in {}", path.display()),
        };
        match entry {
            Entry::Ternary(m) if (m.rows(), m.cols()) == (rows, cols) => Ok(m.clone()),
            Entry::Ternary(m) => Err(shape_err(format!("[{}, {}]", m.rows(), m.cols()))),
            Entry::Raw {
                dtype: Dtype::U8,
                shape,
                bytes,
            } => {
                if shape.as_slice() != [rows / 4, cols] || rows % 4 != 0 {
                    return Err(shape_err(format!("U8 {shape:?} (4 rows per byte)")));
                }
                let scale_name = format!("{name}_scale");
                let s = self.scalar(&scale_name)?;
                let convention = self.c.bitlinear.convention;
                hf_bitnet(self.store.bytes(bytes), rows, cols, s, convention).map_err(in_file)
            }
            Entry::Raw { shape, .. } => {
                if shape.as_slice() != [rows, cols] {
                    return Err(shape_err(format!("{shape:?}")));
                }
                let dense = self.floats(name, &[rows, cols])?;
                let scale_name = format!("{name}_scale");
                if self.store.get(&scale_name).is_none() {
                    // Master weights: quantized on load as the online AutoBitLinear does.
                    return quantize_absmean(&dense, rows, cols).map_err(in_file);
                }
                // transformers' offline AutoBitLinear keeps ternary values in a float tensor.
                let s = self.scalar(&scale_name)?;
                let scale =
                    crate::import::scale_value(s, self.c.bitlinear.convention).map_err(in_file)?;
                let t = dense
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| match v {
                        -1.0 => Ok(-1),
                        0.0 => Ok(0),
                        1.0 => Ok(1),
                        value => Err(Error::NotTernary {
                            row: i / cols,
                            col: i % cols,
                            value,
                        }),
                    })
                    .collect::<Result<Vec<i8>>>()
                    .map_err(in_file)?;
                TernaryMatrix::from_ternary(rows, cols, &t, Scale::PerTensor(scale))
                    .map_err(in_file)
            }
        }
    }

    /// A one-value tensor (`[]` or `[1]`).
    fn scalar(&self, name: &str) -> Result<f32> {
        let shape = match self.store.get(name) {
            Some((Entry::Raw { shape, .. }, _)) => shape.clone(),
            _ => vec![1],
        };
        match self.floats(name, &shape)?.as_slice() {
            &[s] => Ok(s),
            _ => Err(Error::ShapeMismatch {
                arg: "weight_scale",
                expected: format!("one value for `{name}`"),
                got: format!("shape {shape:?}"),
            }),
        }
    }

    fn linear(&self, prefix: &str, rows: usize, cols: usize, bias: bool) -> Result<Linear> {
        let norm = if self.c.bitlinear.act_norm {
            Some(self.floats(&format!("{prefix}.rms_norm.weight"), &[cols])?)
        } else {
            None
        };
        let bias = if bias {
            Some(self.floats(&format!("{prefix}.bias"), &[rows])?)
        } else {
            self.opt_floats(&format!("{prefix}.bias"), &[rows])?
        };
        Ok(Linear {
            c2: CpuMatrix::from(&self.ternary(&format!("{prefix}.weight"), rows, cols)?),
            bias,
            norm,
        })
    }

    fn layer(&self, i: usize) -> Result<Layer> {
        let c = self.c;
        let (h, m, b) = (c.hidden_size, c.intermediate_size, c.attention_bias);
        let p = format!("model.layers.{i}");
        let sub = |name: &str, n: usize| -> Result<Option<Vec<f32>>> {
            if c.sub_norms {
                self.floats(&format!("{p}.{name}.weight"), &[n]).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(Layer {
            attn_norm: self.floats(&format!("{p}.input_layernorm.weight"), &[h])?,
            q: self.linear(&format!("{p}.self_attn.q_proj"), c.q_dim(), h, b)?,
            k: self.linear(&format!("{p}.self_attn.k_proj"), c.kv_dim(), h, b)?,
            v: self.linear(&format!("{p}.self_attn.v_proj"), c.kv_dim(), h, b)?,
            o: self.linear(&format!("{p}.self_attn.o_proj"), h, c.q_dim(), b)?,
            attn_sub_norm: sub("self_attn.attn_sub_norm", h)?,
            ffn_norm: self.floats(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            gate: self.linear(&format!("{p}.mlp.gate_proj"), m, h, false)?,
            up: self.linear(&format!("{p}.mlp.up_proj"), m, h, false)?,
            down: self.linear(&format!("{p}.mlp.down_proj"), h, m, false)?,
            ffn_sub_norm: sub("mlp.ffn_sub_norm", m)?,
        })
    }
}

/// transformers' online `WeightQuant`: `s = 1 / max(mean|W|, 1e-5)`, `Wt = clamp(round(W s), -1, 1)`,
/// dequantized as `Wt / s`. The mean is summed in f64 (torch sums f32 pairwise; both round to
/// the same or an adjacent f32).
pub(crate) fn quantize_absmean(w: &[f32], rows: usize, cols: usize) -> Result<TernaryMatrix> {
    let mean = (w.iter().map(|v| f64::from(v.abs())).sum::<f64>() / w.len().max(1) as f64) as f32;
    let s = 1.0 / mean.max(WEIGHT_EPS);
    let t: Vec<i8> = w
        .iter()
        .map(|v| (v * s).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    TernaryMatrix::from_ternary(rows, cols, &t, Scale::PerTensor(1.0 / s))
}
