//! Tiny checkpoints written from the format descriptions, for the engine's file tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use safetensors::tensor::{Dtype, TensorView};

/// A fresh empty folder under the system temp folder.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "warp-bitnet-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sizes of the tiny BitNet model.
pub const VOCAB: usize = 37;
pub const HIDDEN: usize = 32;
pub const INTER: usize = 48;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = HIDDEN / HEADS;

pub fn config_json(layers: usize) -> String {
    format!(
        r#"{{"architectures": ["BitNetForCausalLM"], "vocab_size": {VOCAB}, "hidden_size": {HIDDEN},
        "intermediate_size": {INTER}, "num_hidden_layers": {layers}, "num_attention_heads": {HEADS},
        "num_key_value_heads": {KV_HEADS}, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
        "quantization_config": {{"quant_method": "bitnet", "linear_class": "autobitlinear"}}}}"#
    )
}

/// A deterministic pseudo-random stream (no dependency on `rand`'s algorithms).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    pub fn float(&mut self) -> f32 {
        (self.next() % 2001) as f32 / 1000.0 - 1.0
    }
}

/// Hugging Face's U8 layout: `[rows / 4, cols]`, row `i * rows / 4 + p` in bits `2i` of byte `[p, k]`,
/// code = weight + 1.
pub fn hf_pack(w: &[i8], rows: usize, cols: usize) -> Vec<u8> {
    let quarter = rows / 4;
    let mut out = vec![0u8; quarter * cols];
    for r in 0..rows {
        for k in 0..cols {
            out[(r % quarter) * cols + k] |= ((w[r * cols + k] + 1) as u8) << (2 * (r / quarter));
        }
    }
    out
}

/// The safetensors bytes of a tiny BitNet checkpoint (U8 packed linears with bf16 scales, bf16
/// norms, f32 embeddings) with `layers` layers.
pub fn checkpoint_bytes(layers: usize, seed: u64) -> Vec<u8> {
    let mut rng = Lcg(seed);
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let f32s = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let bf16s = |v: Vec<f32>| {
        v.iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let embed: Vec<f32> = (0..VOCAB * HIDDEN).map(|_| rng.float()).collect();
    owned.push((
        "model.embed_tokens.weight".into(),
        Dtype::F32,
        vec![VOCAB, HIDDEN],
        f32s(embed),
    ));
    let norm = |rng: &mut Lcg, n: usize| bf16s((0..n).map(|_| 1.0 + 0.1 * rng.float()).collect());
    owned.push((
        "model.norm.weight".into(),
        Dtype::BF16,
        vec![HIDDEN],
        norm(&mut rng, HIDDEN),
    ));
    let q = HEADS * HEAD_DIM;
    let kv = KV_HEADS * HEAD_DIM;
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, n) in [
            ("input_layernorm", HIDDEN),
            ("post_attention_layernorm", HIDDEN),
            ("self_attn.attn_sub_norm", HIDDEN),
            ("mlp.ffn_sub_norm", INTER),
        ] {
            owned.push((
                format!("{p}.{name}.weight"),
                Dtype::BF16,
                vec![n],
                norm(&mut rng, n),
            ));
        }
        for (name, rows, cols) in [
            ("self_attn.q_proj", q, HIDDEN),
            ("self_attn.k_proj", kv, HIDDEN),
            ("self_attn.v_proj", kv, HIDDEN),
            ("self_attn.o_proj", HIDDEN, q),
            ("mlp.gate_proj", INTER, HIDDEN),
            ("mlp.up_proj", INTER, HIDDEN),
            ("mlp.down_proj", HIDDEN, INTER),
        ] {
            let w: Vec<i8> = (0..rows * cols)
                .map(|_| (rng.next() % 3) as i8 - 1)
                .collect();
            owned.push((
                format!("{p}.{name}.weight"),
                Dtype::U8,
                vec![rows / 4, cols],
                hf_pack(&w, rows, cols),
            ));
            let scale = 0.5 / (cols as f32).sqrt();
            owned.push((
                format!("{p}.{name}.weight_scale"),
                Dtype::BF16,
                vec![1],
                bf16s(vec![scale]),
            ));
        }
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// Writes a tiny checkpoint folder; returns it.
pub fn write_checkpoint(dir: &Path, layers: usize, seed: u64) -> PathBuf {
    std::fs::write(dir.join("config.json"), config_json(layers)).unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        checkpoint_bytes(layers, seed),
    )
    .unwrap();
    dir.to_path_buf()
}

/// bitnet.cpp's I2_S bytes of row-major ternary weights: blocks of 128, byte `32 b + p` holding
/// weights `128 b + p + 32 j` in bits `6 - 2 j`, then a 32-byte tail starting with the f32 scale.
pub fn i2s_pack(w: &[i8], scale: f32) -> Vec<u8> {
    let mut out = vec![0u8; w.len() / 4 + 32];
    for (i, &v) in w.iter().enumerate() {
        let (b, j, p) = (i / 128, (i % 128) / 32, i % 32);
        out[32 * b + p] |= ((v + 1) as u8) << (6 - 2 * j);
    }
    out[w.len() / 4..w.len() / 4 + 4].copy_from_slice(&scale.to_le_bytes());
    out
}

/// One GGUF metadata value.
pub enum Meta {
    U32(u32),
    F32(f32),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// A GGUF v3 file: metadata, tensor infos `(name, GGML dims, type, data)`, aligned data.
pub fn gguf(
    meta: &[(&str, Meta)],
    tensors: &[(String, Vec<usize>, u32, Vec<u8>)],
    alignment: usize,
) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64 + 1).to_le_bytes());
    string(&mut out, "general.alignment");
    out.extend(4u32.to_le_bytes());
    out.extend((alignment as u32).to_le_bytes());
    for (key, v) in meta {
        string(&mut out, key);
        match v {
            Meta::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(&mut out, s);
            }
            Meta::Strs(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for s in items {
                    string(&mut out, s);
                }
            }
            Meta::I32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for x in items {
                    out.extend(x.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0usize;
    let mut offsets = Vec::new();
    for (name, dims, t, data) in tensors {
        string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for &d in dims {
            out.extend((d as u64).to_le_bytes());
        }
        out.extend(t.to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offsets.push(offset);
        offset = (offset + data.len()).next_multiple_of(alignment);
    }
    let start = out.len().next_multiple_of(alignment);
    for ((_, _, _, data), off) in tensors.iter().zip(offsets) {
        out.resize(start + off, 0);
        out.extend(data);
    }
    out
}

/// A small GGUF file with an I2_S matrix and F32 / F16 tensors.
pub fn small_gguf(seed: u64) -> Vec<u8> {
    let mut rng = Lcg(seed);
    let (rows, cols) = (4, 128);
    let w: Vec<i8> = (0..rows * cols)
        .map(|_| (rng.next() % 3) as i8 - 1)
        .collect();
    let norm: Vec<u8> = (0..cols).flat_map(|_| rng.float().to_le_bytes()).collect();
    let emb: Vec<u8> = (0..3 * cols)
        .flat_map(|_| half::f16::from_f32(rng.float()).to_le_bytes())
        .collect();
    let tensors = vec![
        (
            "blk.0.attn_q.weight".to_string(),
            vec![cols, rows],
            36,
            i2s_pack(&w, 0.75),
        ),
        ("blk.0.attn_norm.weight".to_string(), vec![cols], 0, norm),
        ("token_embd.weight".to_string(), vec![cols, 3], 1, emb),
    ];
    let meta = [
        ("general.architecture", Meta::Str("bitnet-b1.58".into())),
        (
            "tokenizer.ggml.tokens",
            Meta::Strs(vec!["a".into(), "b".into(), "c".into()]),
        ),
        ("tokenizer.ggml.token_type", Meta::I32s(vec![1, 1, 1])),
        ("bitnet-b1.58.rope.freq_base", Meta::F32(10000.0)),
        ("bitnet-b1.58.block_count", Meta::U32(1)),
    ];
    gguf(&meta, &tensors, 32)
}

/// The tiny checkpoint of [`checkpoint_bytes`] as a bitnet.cpp GGUF file (`bitnet-b1.58`, I2_S
/// linear layers, F32 embedding, BF16 norms, a byte-level BPE vocabulary): the same model.
pub fn gguf_model(layers: usize, seed: u64) -> Vec<u8> {
    let st_bytes = checkpoint_bytes(layers, seed);
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let scale_of = |name: &str| {
        let b = st.tensor(&format!("{name}_scale")).unwrap();
        half::bf16::from_le_bytes([b.data()[0], b.data()[1]]).to_f32()
    };
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        if name.ends_with("_scale") {
            continue;
        }
        let gguf_name = gguf_name(&name);
        let dims: Vec<usize> = view.shape().iter().rev().copied().collect();
        let (ty, data) = match view.dtype() {
            Dtype::U8 => {
                let (rows, cols) = (view.shape()[0] * 4, view.shape()[1]);
                let mut w = vec![0i8; rows * cols];
                for (i, &byte) in view.data().iter().enumerate() {
                    let (p, k) = (i / cols, i % cols);
                    for lane in 0..4 {
                        let code = (byte >> (2 * lane)) & 3;
                        w[(lane * rows / 4 + p) * cols + k] = code as i8 - 1;
                    }
                }
                (36, i2s_pack(&w, scale_of(&name)))
            }
            Dtype::BF16 => (30, view.data().to_vec()),
            _ => (0, view.data().to_vec()),
        };
        let dims = if ty == 36 {
            vec![view.shape()[1], view.shape()[0] * 4]
        } else {
            dims
        };
        tensors.push((gguf_name, dims, ty, data));
    }
    tensors.sort();
    let a = "bitnet-b1.58";
    let mut tokens: Vec<String> = ('a'..='z').map(String::from).collect();
    tokens.push("\u{120}".into());
    tokens.extend(('a'..='j').map(|c| format!("\u{120}{c}")));
    let merges = ('a'..='j').map(|c| format!("\u{120} {c}")).collect();
    let meta = [
        ("general.architecture", Meta::Str(a.into())),
        ("bitnet-b1.58.block_count", Meta::U32(layers as u32)),
        ("bitnet-b1.58.context_length", Meta::U32(64)),
        ("bitnet-b1.58.embedding_length", Meta::U32(HIDDEN as u32)),
        ("bitnet-b1.58.feed_forward_length", Meta::U32(INTER as u32)),
        ("bitnet-b1.58.attention.head_count", Meta::U32(HEADS as u32)),
        (
            "bitnet-b1.58.attention.head_count_kv",
            Meta::U32(KV_HEADS as u32),
        ),
        (
            "bitnet-b1.58.attention.layer_norm_rms_epsilon",
            Meta::F32(1e-5),
        ),
        ("bitnet-b1.58.rope.freq_base", Meta::F32(10000.0)),
        ("bitnet-b1.58.vocab_size", Meta::U32(VOCAB as u32)),
        ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
        ("tokenizer.ggml.token_type", Meta::I32s(vec![1; VOCAB])),
        ("tokenizer.ggml.merges", Meta::Strs(merges)),
        ("tokenizer.ggml.bos_token_id", Meta::U32(1)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(2)),
    ];
    gguf(&meta, &tensors, 32)
}

/// llama.cpp's name of a transformers tensor name of the tiny model.
fn gguf_name(name: &str) -> String {
    match name {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let base = rest.strip_suffix(".weight").unwrap();
    let g = match base {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.attn_sub_norm" => "attn_sub_norm",
        "mlp.ffn_sub_norm" => "ffn_sub_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("{other}"),
    };
    format!("blk.{layer}.{g}.weight")
}
