//! Whole-engine properties on tiny random models: batching, prefill vs decode, errors.

use super::*;

fn tiny(act: HiddenAct, sub_norms: bool, act_norm: bool) -> ModelConfig {
    let mut c = ModelConfig::bitnet_b158_2b4t();
    (c.vocab_size, c.hidden_size, c.intermediate_size) = (61, 40, 72);
    (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) = (2, 4, 2, 10);
    (c.hidden_act, c.sub_norms, c.bitlinear.act_norm) = (act, sub_norms, act_norm);
    (c.bos_token_id, c.eos_token_ids, c.max_position_embeddings) = (None, vec![], 64);
    c.attention_bias = act_norm;
    c
}

fn engine(c: ModelConfig, slots: usize) -> Engine {
    let opts = EngineOptions {
        max_context: 24,
        slots,
        ..Default::default()
    };
    Engine::random(c, 11, &opts).unwrap()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * scale)
}

#[test]
fn prefill_equals_token_by_token_decode() {
    for (act, sub, norm) in [
        (HiddenAct::Relu2, true, false),
        (HiddenAct::Silu, false, true),
    ] {
        let mut e = engine(tiny(act, sub, norm), 1);
        let v = e.config().vocab_size;
        let prompt = [3u32, 17, 59, 0, 8, 8, 41];
        let mut all = vec![0f32; v];
        e.forward(&[(0, &prompt)], &mut all).unwrap();
        assert!(all.iter().all(|x| x.is_finite()) && all.iter().any(|&x| x != 0.0));
        e.reset_slot(0);
        let mut step = vec![0f32; v];
        for t in prompt {
            e.forward(&[(0, &[t])], &mut step).unwrap();
        }
        assert_eq!(e.slot_len(0), prompt.len());
        // Same math per token; the per-token quantization makes it exact but for summation order.
        assert!(close(&step, &all), "{act:?}");
    }
}

#[test]
fn a_batch_of_slots_equals_each_slot_alone() {
    let mut e = engine(tiny(HiddenAct::Relu2, true, false), 3);
    let v = e.config().vocab_size;
    let (a, b) = ([5u32, 9, 1], [44u32, 2]);
    let mut both = vec![f32::NAN; 2 * v];
    e.forward(&[(2, &a), (0, &b)], &mut both).unwrap();
    assert_eq!((e.slot_len(0), e.slot_len(1), e.slot_len(2)), (2, 0, 3));
    let mut alone = vec![0f32; v];
    e.reset_slot(2);
    e.forward(&[(2, &a)], &mut alone).unwrap();
    assert!(close(&both[..v], &alone));
    e.reset_slot(0);
    e.forward(&[(0, &b)], &mut alone).unwrap();
    assert!(close(&both[v..], &alone));
}

#[test]
fn errors_leave_the_slots_unchanged() {
    let mut e = engine(tiny(HiddenAct::Relu2, true, false), 2);
    let v = e.config().vocab_size;
    let mut logits = vec![0f32; v];
    e.forward(&[(0, &[1, 2, 3])], &mut logits).unwrap();
    let long = vec![1u32; 22];
    type Case<'a> = (&'a [(usize, &'a [u32])], usize, &'a str);
    let bad: [Case; 6] = [
        (&[(0, &long)], 1, "context"),
        (&[(2, &[1])], 1, "slot"),
        (&[(1, &[61])], 1, "61"),
        (&[(1, &[])], 1, "tokens"),
        (&[(1, &[1]), (1, &[2])], 2, "twice"),
        (&[(1, &[1])], 2, "logits"),
    ];
    for (batch, rows, needle) in bad {
        let mut out = vec![0f32; rows * v];
        let err = e.forward(batch, &mut out).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
        assert_eq!((e.slot_len(0), e.slot_len(1)), (3, 0));
    }
}

#[test]
fn generate_is_deterministic_and_checks_its_input() {
    let mut e = engine(tiny(HiddenAct::Silu, false, false), 1);
    let mut run = |params: &SamplingParams, n| {
        let mut s = Sampler::new(params).unwrap();
        let mut out = Vec::new();
        let stats = generate(&mut e, &[4, 5, 6], n, &mut s, false, |t| {
            out.push(t);
            true
        })
        .unwrap();
        assert_eq!(
            (stats.generated_tokens, stats.stop),
            (n, StopReason::Length)
        );
        out
    };
    let greedy = SamplingParams::default();
    assert_eq!(run(&greedy, 8), run(&greedy, 8));
    let sampled = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        seed: Some(5),
        ..Default::default()
    };
    assert_eq!(run(&sampled, 8), run(&sampled, 8));
    let mut s = Sampler::new(&greedy).unwrap();
    for (prompt, n, needle) in [
        (&[][..], 4, "prompt"),
        (&[1][..], 0, "max_new_tokens"),
        (&[1; 20][..], 6, "context"),
    ] {
        let err = generate(&mut e, prompt, n, &mut s, true, |_| true)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
    // The callback stops it.
    let stats = generate(&mut e, &[1], 10, &mut s, true, |_| false).unwrap();
    assert_eq!(
        (stats.generated_tokens, stats.stop),
        (1, StopReason::Callback)
    );
}

/// A KV cache larger than the machine's available memory is refused before it is allocated.
#[cfg(target_os = "linux")]
#[test]
fn engine_sample_is_the_samplers_draw_over_the_slots_history() {
    // Two engines with the same weights: one returns logits (sampled on the host with the
    // tokens fed so far as the history), the other draws through Engine::sample, slot 1 with a
    // sampler and slot 0 mid-prompt without one (no draw counted).
    let c = tiny(HiddenAct::Silu, false, false);
    let (mut a, mut b) = (engine(c.clone(), 2), engine(c.clone(), 2));
    let v = c.vocab_size;
    let params = SamplingParams {
        temperature: 0.9,
        top_k: 12,
        top_p: 0.8,
        repetition_penalty: 1.4,
        seed: Some(21),
    };
    let (mut host, mut engine_side) = (
        Sampler::new(&params).unwrap(),
        Sampler::new(&params).unwrap(),
    );
    let mut fed = vec![2u32, 9, 2, 40];
    let mut ids = fed.clone();
    let mut logits = vec![0f32; 2 * v];
    let mut tokens = [u32::MAX; 2];
    for step in 0..10 {
        a.forward(&[(0, &[7]), (1, &ids)], &mut logits).unwrap();
        let want = host.sample(&mut logits[v..], &fed);
        b.sample(
            &[(0, &[7]), (1, &ids)],
            &mut [None, Some(&mut engine_side)],
            &mut tokens,
        )
        .unwrap();
        assert_eq!(tokens[1], want, "step {step}");
        assert_eq!(tokens[0], sampler::argmax(&logits[..v]));
        fed.push(want);
        ids = vec![want];
    }
    // A reset slot starts an empty history.
    b.reset_slot(1);
    a.reset_slot(1);
    a.forward(&[(1, &[3])], &mut logits[..v]).unwrap();
    let want = host.sample(&mut logits[..v], &[3]);
    b.sample(
        &[(1, &[3])],
        &mut [Some(&mut engine_side)],
        &mut tokens[..1],
    )
    .unwrap();
    assert_eq!(tokens[0], want);
    let err = b
        .sample(&[(1, &[3])], &mut [], &mut tokens[..1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("samplers"), "{err}");
}

#[test]
fn a_kv_cache_larger_than_memory_is_an_error() {
    let mut c = tiny(HiddenAct::Relu2, true, false);
    c.max_position_embeddings = 1 << 20;
    let opts = EngineOptions {
        max_context: 1 << 20,
        slots: 1 << 20,
        ..Default::default()
    };
    let err = Engine::random(c, 1, &opts).err().unwrap().to_string();
    assert!(err.contains("KV cache bytes"), "{err}");
}

#[test]
fn slots_sized_from_memory_take_what_fits() {
    let c = tiny(HiddenAct::Relu2, true, false);
    let opts = |slots, fraction| EngineOptions {
        max_context: 24,
        slots,
        memory_fraction: Some(fraction),
        ..Default::default()
    };
    // A tiny model's slots all fit; a huge upper bound is cut to what the memory holds.
    assert_eq!(
        Engine::random(c.clone(), 1, &opts(4, 0.9)).unwrap().slots(),
        4
    );
    let mut big = c.clone();
    big.max_position_embeddings = 1 << 16;
    let o = EngineOptions {
        max_context: 1 << 16,
        ..opts(1 << 30, 0.01)
    };
    let per_slot = KvCache::bytes(&big, KvType::F32, 1, 1 << 16).unwrap();
    let free = memory::available_host_memory().unwrap();
    let e = Engine::random(big, 1, &o).unwrap();
    assert!(e.slots() < 1 << 30 && e.slots() as u64 * per_slot <= free / 50);
    // A share too small for one slot, and shares outside (0, 1], are errors naming them.
    let err = Engine::random(c.clone(), 1, &opts(4, 1e-15))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("one KV-cache slot"), "{err}");
    for f in [0.0, 1.5, f64::NAN] {
        let err = Engine::random(c.clone(), 1, &opts(4, f))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("memory_fraction"), "{err}");
    }
}

#[test]
fn bad_options_are_errors() {
    let c = tiny(HiddenAct::Relu2, true, false);
    let cases = [
        (
            EngineOptions {
                max_context: 0,
                ..Default::default()
            },
            "max_context",
        ),
        (
            EngineOptions {
                max_context: 65,
                ..Default::default()
            },
            "max_context",
        ),
        (
            EngineOptions {
                max_context: 8,
                slots: 0,
                ..Default::default()
            },
            "slots",
        ),
        (
            EngineOptions {
                max_context: 8,
                threads: Some(0),
                ..Default::default()
            },
            "threads",
        ),
        (
            EngineOptions {
                max_context: 8,
                weights: LinearWeights::DenseBf16,
                ..Default::default()
            },
            "dense-bf16 runs on a GPU only",
        ),
    ];
    for (opts, needle) in cases {
        let err = Engine::random(c.clone(), 1, &opts)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
    assert_eq!(Device::parse("cuda:1").unwrap(), Device::Cuda(1));
    assert!(Device::parse("tpu").is_err());
    // The dense-bf16 weights on the CPU are refused before any model file is read.
    let dense_cpu = EngineOptions {
        weights: LinearWeights::DenseBf16,
        ..Default::default()
    };
    let err = Engine::load(Path::new("/nonexistent"), &dense_cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("weights") && err.contains("GPU only"), "{err}");
}

#[test]
fn linear_weights_parse_their_names() {
    for w in [LinearWeights::Ternary, LinearWeights::DenseBf16] {
        assert_eq!(LinearWeights::parse(w.name()).unwrap(), w);
    }
    assert_eq!(
        LinearWeights::parse("bf16").unwrap(),
        LinearWeights::DenseBf16
    );
    let err = LinearWeights::parse("int4").unwrap_err().to_string();
    assert!(
        err.contains("weights") && err.contains("int4") && err.contains("dense-bf16"),
        "{err}"
    );
}

#[test]
fn the_cuda_device_without_a_gpu_is_a_clear_error() {
    if gpu::check_available().is_ok() {
        return; // tests/engine_gpu.rs runs the engine on this host's GPU
    }
    let opts = EngineOptions {
        max_context: 8,
        device: Device::Cuda(0),
        ..Default::default()
    };
    let c = tiny(HiddenAct::Relu2, true, false);
    let err = Engine::random(c, 1, &opts).err().unwrap().to_string();
    assert!(err.to_lowercase().contains("cuda"), "{err}");
    assert_eq!(Device::parse("auto").unwrap(), Device::Cpu);
}

/// The engine keeps only C2; the interchange matrix rebuilt from it converts back to the same C2.
#[test]
fn linear_ternary_round_trips_through_c2() {
    let mut c = ModelConfig::bitnet_b158_2b4t();
    (c.vocab_size, c.hidden_size, c.intermediate_size) = (50, 136, 200);
    (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) = (1, 4, 2, 34);
    let w = super::weights::Weights::random(&c, 3).unwrap();
    for l in [&w.layers[0].q, &w.layers[0].down] {
        let t = l.ternary().unwrap();
        assert_eq!((t.rows(), t.cols()), (l.c2.rows(), l.c2.cols()));
        assert_eq!(crate::cpu::CpuMatrix::from(&t), l.c2);
    }
}

/// Threads split rows and (token, head) pairs, never a sum: any thread count gives the same
/// bits, for a prefill long enough that attention runs in parallel too.
#[test]
fn thread_counts_give_identical_logits() {
    let mut c = tiny(HiddenAct::Relu2, true, false);
    c.max_position_embeddings = 128;
    // 90 tokens: sum of (pos + 1) * 2 * q_dim = 327,600 multiply-adds, over the parallel
    // threshold, so attention is split too.
    let prompt: Vec<u32> = (0..90).map(|i| (i * 13 % 61) as u32).collect();
    assert!(4095 * 2 * c.q_dim() > super::forward::ATTENTION_PARALLEL_MIN);
    let mut want = Vec::new();
    for threads in [1, 2, 3] {
        let opts = EngineOptions {
            max_context: 96,
            threads: Some(threads),
            ..Default::default()
        };
        let mut e = Engine::random(c.clone(), 11, &opts).unwrap();
        assert_eq!(e.threads(), threads);
        let mut logits = vec![f32::NAN; c.vocab_size];
        e.forward(&[(0, &prompt)], &mut logits).unwrap();
        e.forward(&[(0, &[5])], &mut logits).unwrap();
        if threads == 1 {
            want = logits;
        } else {
            assert_eq!(logits, want, "{threads} threads");
        }
    }
}

/// The int8 lm_head moves each logit by at most `sum_k |x_k| * max|row| / 254` (half an int8
/// step per weight) from the bf16 lm_head's, on the same final hidden state.
#[test]
fn int8_lm_head_is_within_half_a_step_per_weight() {
    let c = tiny(HiddenAct::Relu2, true, false);
    let (h, v) = (c.hidden_size, c.vocab_size);
    let stored = engine(c.clone(), 1);
    let opts = EngineOptions {
        max_context: 24,
        lm_head: LmHead::Int8,
        ..Default::default()
    };
    let mut int8 = Engine::random(c, 11, &opts).unwrap();
    assert_eq!(
        (stored.lm_head_dtype(), int8.lm_head_dtype()),
        ("bf16", "int8")
    );
    // The final hidden state: the lm_head's input, from the engine's own pieces.
    let x: Vec<f32> = (0..h).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
    let head = stored.weights.lm_head();
    let (mut a, mut b) = (vec![0f32; v], vec![0f32; v]);
    head.gemv(&x, &mut a, 1).unwrap();
    int8.weights.lm_head().gemv(&x, &mut b, 1).unwrap();
    let l1: f32 = x.iter().map(|v| v.abs()).sum();
    let mut row = vec![0f32; h];
    for r in 0..v {
        head.row_into(r, &mut row).unwrap();
        let amax = row.iter().fold(0f32, |m, w| m.max(w.abs()));
        assert!(
            (a[r] - b[r]).abs() <= l1 * amax / 254.0 * 1.001 + 1e-5,
            "row {r}"
        );
    }
    // And the engine runs with it.
    let mut logits = vec![f32::NAN; v];
    int8.forward(&[(0, &[1, 2, 3])], &mut logits).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
}
