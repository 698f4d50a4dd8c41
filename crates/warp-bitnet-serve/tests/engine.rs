//! The real engine behind the server: concurrent greedy requests, batched by the scheduler
//! with chunked prefill, give the tokens that `engine::generate` gives for each prompt alone.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{get, metric, post};
use serde_json::json;
use warp_bitnet::engine::{generate, Engine, EngineOptions, ModelConfig, Sampler, SamplingParams};
use warp_bitnet_serve::{engine::codec, Server, ServerConfig};

fn tiny_engine(slots: usize) -> Engine {
    let mut c = ModelConfig::bitnet_b158_2b4t();
    (c.vocab_size, c.hidden_size, c.intermediate_size) = (97, 32, 48);
    (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) = (2, 4, 2, 8);
    (c.bos_token_id, c.eos_token_ids) = (None, vec![]);
    let opts = EngineOptions {
        max_context: 96,
        slots,
        threads: Some(1),
        ..Default::default()
    };
    Engine::random(c, 11, &opts).unwrap()
}

fn alone(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let mut engine = tiny_engine(1);
    let mut sampler = Sampler::new(&SamplingParams::default()).unwrap();
    let mut out = Vec::new();
    generate(&mut engine, prompt, max_tokens, &mut sampler, false, |t| {
        out.push(t);
        true
    })
    .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_greedy_on_the_engine_equals_generate_alone() {
    let engine = tiny_engine(3);
    let codec = codec(&engine);
    let mut config = ServerConfig::new("tiny");
    config.prefill_chunk = 5;
    config.shutdown_grace = Duration::from_secs(1);
    let server = Server::new(engine, codec, config).unwrap();
    let router = server.router();
    let prompts: Vec<Vec<u32>> = (0..7u32)
        .map(|i| (0..3 + 4 * i).map(|j| (i * 31 + j * 7) % 97).collect())
        .collect();
    let tasks: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let router = router.clone();
            let body = json!({"model": "tiny", "prompt": p, "max_tokens": 6 + i, "temperature": 0});
            tokio::spawn(async move { post(&router, "/v1/completions", body).await })
        })
        .collect();
    for ((i, prompt), task) in prompts.iter().enumerate().zip(tasks) {
        let (status, r) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{r}");
        // Without a tokenizer, the text is the token ids in decimal.
        let ids: Vec<u32> = r["choices"][0]["text"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .map(|t| t.parse().unwrap())
            .collect();
        assert_eq!(ids, alone(prompt, 6 + i), "prompt {i}");
        assert_eq!(r["usage"]["prompt_tokens"], prompt.len());
    }
    // Some steps ran several sequences together.
    let (_, metrics) = get(&router, "/metrics").await;
    let steps = metric(&metrics, "warp_bitnet_batch_size_count");
    let single = metric(&metrics, "warp_bitnet_batch_size_bucket{le=\"1.0\"}");
    assert!(single < steps, "{metrics}");
}
