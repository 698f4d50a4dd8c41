//! The GPU engine's host-side logic, tested without a GPU: buffer sizes, the memory check, the
//! tables, stacking, passes and graph keys, and the error where no GPU exists. The device
//! side is tested on a GPU host (tests/engine_gpu.rs, cuda/engine_ops/tests.rs).

use super::schedule::{graph_batch, passes, Pass, GRAPH_BATCHES};
use super::sizes::{check_fits, weight_bytes, Sizes, CHUNK_TOKENS, SCALE_SLOTS};
use super::step::locate;
use super::tables::{rope_table, stack, table_bytes, table_dtype};
use super::*;
use crate::dtype::DType;
use crate::engine::config::HiddenAct;
use crate::engine::forward::{Plan, TokenPos};
use crate::engine::{Device, Engine, EngineOptions};
use crate::format::tiled;

fn tiny() -> ModelConfig {
    let mut c = ModelConfig::bitnet_b158_2b4t();
    (c.vocab_size, c.hidden_size, c.intermediate_size) = (61, 40, 72);
    (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) = (2, 4, 2, 10);
    (c.bos_token_id, c.eos_token_ids, c.max_position_embeddings) = (None, vec![], 64);
    c
}

#[test]
fn sizes_of_the_2b4t_buffers() {
    let c = ModelConfig::bitnet_b158_2b4t();
    let s = Sizes::new(&c, 1, 4096, LinearWeights::Ternary).unwrap();
    // q|k|v = 2560 + 2 * 640, gate|up = 2 * 6912: the widest stacked GEMM is gate|up.
    assert_eq!((s.acc_ld, s.q8_ld), (2 * 6912, 6912));
    assert_eq!((s.chunk, s.logit_rows), (CHUNK_TOKENS, 1));
    assert_eq!(s.kv_elems, 30 * 4096 * 640);
    assert_eq!(s.rope_len, 4096 * 128);
    let n = CHUNK_TOKENS as u64;
    let expected = 16 * n // ids
        + 4 * n * 2560 // x
        + n * 6912 + 4 * n * SCALE_SLOTS as u64 // q8, scales
        + 4 * n * 2 * 6912 // sums
        + 2 * 4 * n * 2560 // q, attention output
        + (2560 * 2 + 4 * 128_256 + 4) // one row of lm_head input (bf16), logits, token
        + 2 * 2 * 30 * 4096 * 640 // f16 K and V
        + 4 * 4096 * 128 // RoPE table
        + 48 + 4 * 4008; // one row's draw, one slot's history bitmap of 128,256 bits
    assert_eq!(s.state_bytes(&c, DType::BF16), expected);
    // Few cache rows: a pass never takes more tokens than the cache holds.
    let s = Sizes::new(&c, 3, 5, LinearWeights::Ternary).unwrap();
    assert_eq!((s.chunk, s.logit_rows), (15, 3));
}

#[test]
fn dense_bf16_sizes_take_bf16_inputs_and_matrices() {
    let c = ModelConfig::bitnet_b158_2b4t();
    let t = Sizes::new(&c, 1, 4096, LinearWeights::Ternary).unwrap();
    let d = Sizes::new(&c, 1, 4096, LinearWeights::DenseBf16).unwrap();
    assert_eq!((t.gemm_input, d.gemm_input), (DType::I8, DType::BF16));
    // Only the GEMM input buffer grows: one more byte per element of its rows.
    let n = CHUNK_TOKENS as u64;
    assert_eq!(
        d.state_bytes(&c, DType::BF16) - t.state_bytes(&c, DType::BF16),
        n * 6912
    );
    let c = tiny();
    let w = Weights::random(&c, 3).unwrap();
    let (h, i, q, kv) = (40, 72, 40, 20);
    let dense = |r: usize, k: usize| 2 * (r * k) as u64;
    let layer = dense(q, h)
        + 2 * dense(kv, h)
        + dense(h, q)
        + 2 * dense(i, h)
        + dense(h, i)
        + 4 * (h + h + h + i) as u64; // norms, as in the ternary engine
    let tables = (61 * 40 * 2) as u64;
    assert_eq!(
        weight_bytes(&c, &w, (DType::BF16, None), LinearWeights::DenseBf16),
        2 * layer + 4 * 40 + tables
    );
}

#[test]
fn sizes_overflow_is_an_error() {
    let c = ModelConfig::bitnet_b158_2b4t();
    assert!(Sizes::new(&c, usize::MAX / 2, 4096, LinearWeights::Ternary).is_err());
}

#[test]
fn weight_bytes_count_tiles_scales_norms_and_tables() {
    let c = tiny();
    let w = Weights::random(&c, 3).unwrap();
    let (h, i, q, kv) = (40, 72, 40, 20);
    let lin = |r: usize, k: usize| 4 * (tiled::len_words(r, k) + r) as u64;
    let layer = lin(q, h)
        + 2 * lin(kv, h)
        + lin(h, q)
        + 2 * lin(i, h)
        + lin(h, i)
        + 4 * (h + h + h + i) as u64; // attn, ffn, attn_sub and ffn_sub norms
    let tables = (61 * 40 * 2) as u64; // tied bf16 embedding
    assert_eq!(
        weight_bytes(&c, &w, (DType::BF16, None), LinearWeights::Ternary),
        2 * layer + 4 * 40 + tables
    );
}

#[test]
fn the_memory_check_names_what_does_not_fit() {
    check_fits(10, 10).unwrap();
    let err = check_fits(11, 10).unwrap_err().to_string();
    assert!(
        err.contains("GPU memory") && err.contains("11") && err.contains("10"),
        "{err}"
    );
}

#[test]
fn tables_upload_in_their_stored_type() {
    use crate::cpu::dense::{DenseData, DenseMatrix};
    use half::{bf16, f16};
    let v = [1.5f32, -2.25];
    let bf = DenseMatrix::new(1, 2, DenseData::Bf16(v.map(bf16::from_f32).to_vec())).unwrap();
    assert_eq!(table_dtype(&bf).unwrap(), DType::BF16);
    assert_eq!(
        table_bytes(&bf).unwrap(),
        [0xc0u8, 0x3f, 0x10, 0xc0].to_vec()
    );
    let h = DenseMatrix::new(1, 2, DenseData::F16(v.map(f16::from_f32).to_vec())).unwrap();
    assert_eq!(table_dtype(&h).unwrap(), DType::F16);
    assert_eq!(
        table_bytes(&h).unwrap(),
        [0x00u8, 0x3e, 0x80, 0xc0].to_vec()
    );
    let f = DenseMatrix::new(1, 2, DenseData::F32(v.to_vec())).unwrap();
    assert_eq!(table_dtype(&f).unwrap(), DType::F32);
    assert_eq!(table_bytes(&f).unwrap().len(), 8);
    let q = DenseMatrix::new(
        1,
        2,
        DenseData::I8 {
            q: vec![1, -1],
            scale: vec![0.5],
        },
    )
    .unwrap();
    assert!(table_dtype(&q).is_err() && table_bytes(&q).is_err());
}

#[test]
fn the_rope_table_rotates_exactly_as_the_cpu() {
    let mut c = tiny();
    c.rope_theta = 10_000.0;
    let (d, half, positions) = (c.head_dim, c.head_dim / 2, 7);
    let table = rope_table(&c, positions);
    let inv_freq = c.rope_scaling.inv_freq(d, c.rope_theta);
    assert_eq!(table.len(), positions * d);
    let mut rng = 0x2545_f491u32;
    for pos in 0..positions {
        let x: Vec<f32> = (0..d)
            .map(|_| {
                rng = rng.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (rng >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect();
        let mut cpu = x.clone();
        crate::engine::forward::rope(&mut cpu, d, pos, &inv_freq);
        // The kernel's arithmetic: (a cos - b sin, b cos + a sin), each product rounded.
        for i in 0..half {
            let (cos, sin) = (table[(pos * half + i) * 2], table[(pos * half + i) * 2 + 1]);
            let (a, b) = (x[i], x[i + half]);
            assert_eq!(cpu[i], a * cos - b * sin, "pos {pos} i {i}");
            assert_eq!(cpu[i + half], b * cos + a * sin, "pos {pos} i {i}");
        }
    }
}

#[test]
fn stacking_keeps_each_layers_rows_scale_and_bias() {
    let mut c = tiny();
    c.attention_bias = true;
    let mut w = Weights::random(&c, 9).unwrap();
    let l = &mut w.layers[0];
    l.k.bias = None;
    let s = stack(&[&l.q, &l.k, &l.v]).unwrap();
    assert_eq!((s.w.rows(), s.w.cols()), (40 + 20 + 20, 40));
    let all = s.w.to_ternary();
    let mut row = 0;
    for part in [&l.q, &l.k, &l.v] {
        let w = part.ternary().unwrap();
        let (t, r) = (w.to_ternary(), w.rows());
        assert_eq!(&all[row * 40..(row + r) * 40], &t[..]);
        for i in 0..r {
            assert_eq!(s.scale[row + i], w.scale().of_row(i));
            let b = part.bias.as_ref().map_or(0.0, |b| b[i]);
            assert_eq!(s.bias.as_ref().unwrap()[row + i], b);
        }
        row += r;
    }
    let alone = stack(&[&l.o]).unwrap();
    assert_eq!(alone.w.to_ternary(), l.o.ternary().unwrap().to_ternary());
    let s = stack(&[&w.layers[0].gate, &w.layers[0].up]).unwrap();
    assert!(s.bias.is_none());
}

fn plan(entries: &[(usize, usize, usize)]) -> Plan {
    // (slot, start position, tokens)
    let (mut tokens, mut at, mut last) = (Vec::new(), Vec::new(), Vec::new());
    for &(slot, start, n) in entries {
        for i in 0..n {
            tokens.push((slot * 7 + i) as u32);
            at.push(TokenPos {
                slot,
                pos: start + i,
            });
        }
        last.push(tokens.len() - 1);
    }
    Plan { tokens, at, last }
}

#[test]
fn passes_cover_the_tokens_in_order_with_each_last_row() {
    let p = plan(&[(0, 0, 300), (2, 5, 1), (1, 0, 250)]);
    let got = passes(&p, 256);
    assert_eq!(
        got,
        vec![
            Pass {
                range: 0..256,
                last: vec![]
            },
            Pass {
                range: 256..512,
                last: vec![(0, 299 - 256), (1, 300 - 256)]
            },
            Pass {
                range: 512..551,
                last: vec![(2, 550 - 512)]
            },
        ]
    );
    let one = plan(&[(0, 9, 1)]);
    assert_eq!(
        passes(&one, 256),
        vec![Pass {
            range: 0..1,
            last: vec![(0, 0)]
        }]
    );
}

#[test]
fn only_decode_steps_of_graphed_sizes_replay_graphs() {
    for &b in &GRAPH_BATCHES {
        let entries: Vec<_> = (0..b).map(|s| (s, 3, 1)).collect();
        assert_eq!(graph_batch(&plan(&entries)), Some(b));
    }
    assert_eq!(graph_batch(&plan(&[(0, 0, 1), (1, 0, 1), (2, 0, 1)])), None);
    assert_eq!(graph_batch(&plan(&[(0, 0, 2)])), None);
    assert_eq!(graph_batch(&plan(&[(0, 0, 1), (1, 0, 2)])), None);
}

#[test]
fn sums_columns_map_to_their_stacked_gemm() {
    // q|k|v stacked: one GEMM.
    assert_eq!(locate(&[80], 0), (0, 0));
    assert_eq!(locate(&[80], 60), (0, 60));
    // One GEMM per layer (activation norms): q 40, k 20, v 20.
    assert_eq!(locate(&[40, 20, 20], 0), (0, 0));
    assert_eq!(locate(&[40, 20, 20], 40), (1, 0));
    assert_eq!(locate(&[40, 20, 20], 60), (2, 0));
    assert_eq!(locate(&[40, 20, 20], 79), (2, 19));
}

#[test]
fn without_a_gpu_the_cuda_device_is_a_typed_error() {
    if crate::cuda::is_available() {
        return; // tests/engine_gpu.rs covers this host
    }
    let mut c = tiny();
    c.hidden_act = HiddenAct::Silu;
    let opts = EngineOptions {
        device: Device::Cuda(0),
        max_context: 8,
        ..Default::default()
    };
    assert!(matches!(
        Engine::random(c, 1, &opts),
        Err(Error::NoCudaDriver)
    ));
    assert!(matches!(
        Engine::load(std::path::Path::new("/nonexistent"), &opts),
        Err(Error::NoCudaDriver)
    ));
    assert!(matches!(check_available(), Err(Error::NoCudaDriver)));
    assert_eq!(Device::parse("auto").unwrap(), Device::Cpu);
}
