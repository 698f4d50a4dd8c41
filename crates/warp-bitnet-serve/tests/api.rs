//! The endpoints on the fake model: response shapes, streaming, stop strings, seeds, and
//! every kind of bad input answered with an OpenAI-shaped error.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_is_the_greedy_continuation_with_usage() {
    let (server, _) = server(4, 256, Duration::ZERO, |_| {});
    let router = server.router();
    let body = json!({"model": MODEL, "prompt": "Hello", "max_tokens": 20, "temperature": 0});
    let (status, r) = post(&router, "/v1/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let (text, generated, reason) = greedy_alone(&prompt_ids("Hello"), 20);
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["model"], MODEL);
    assert!(r["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(r["choices"][0]["text"], text.as_str());
    assert_eq!(r["choices"][0]["finish_reason"], reason);
    // "Hello" is 5 bytes plus BOS.
    assert_eq!(
        r["usage"],
        json!({"prompt_tokens": 6, "completion_tokens": generated, "total_tokens": 6 + generated})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_id_prompts_and_chat_use_the_same_model() {
    let (server, _) = server(2, 256, Duration::ZERO, |_| {});
    let router = server.router();
    let ids = vec![256u32, 65, 66, 67];
    let body = json!({"model": MODEL, "prompt": ids, "max_tokens": 9, "temperature": 0});
    let (status, r) = post(&router, "/v1/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["choices"][0]["text"], greedy_alone(&ids, 9).0.as_str());

    let messages = json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]);
    let body =
        json!({"model": MODEL, "messages": messages, "max_completion_tokens": 7, "temperature": 0});
    let (status, r) = post(&router, "/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let templated = "<|system|>be brief\n<|user|>hi\n<|assistant|>";
    // The template carries no BOS of its own and chat prompts add none.
    let ids: Vec<u32> = templated.bytes().map(u32::from).collect();
    let (text, generated, reason) = greedy_alone(&ids, 7);
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(
        r["choices"][0]["message"],
        json!({"role": "assistant", "content": text})
    );
    assert_eq!(r["choices"][0]["finish_reason"], reason);
    assert_eq!(r["usage"]["prompt_tokens"], ids.len());
    assert_eq!(r["usage"]["completion_tokens"], generated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_join_to_the_whole_text_and_end_with_done() {
    let (server, _) = server(2, 256, Duration::ZERO, |_| {});
    let router = server.router();
    let (text, generated, reason) = greedy_alone(&prompt_ids("stream me"), 30);
    let body = json!({"model": MODEL, "prompt": "stream me", "max_tokens": 30, "temperature": 0,
                      "stream": true, "stream_options": {"include_usage": true}});
    let (status, raw) = post_raw(&router, "/v1/completions", body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    let data = sse_data(&raw);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(joined, text);
    let ids: Vec<&Value> = chunks.iter().map(|c| &c["id"]).collect();
    assert!(ids.iter().all(|id| *id == ids[0]));
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], reason);
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], generated);

    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 12,
                      "temperature": 0, "stream": true});
    let (status, raw) = post_raw(&router, "/v1/chat/completions", body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    let data = sse_data(&raw);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let ids: Vec<u32> = "<|user|>x\n<|assistant|>".bytes().map(u32::from).collect();
    assert_eq!(joined, greedy_alone(&ids, 12).0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_cut_the_text_before_their_first_occurrence() {
    let (server, _) = server(2, 256, Duration::ZERO, |_| {});
    let router = server.router();
    let (text, _, _) = greedy_alone(&prompt_ids("abc"), 40);
    assert!(text.len() >= 12, "{text:?}");
    let stop = text[8..11].to_owned();
    let expected = &text[..text.find(&stop).unwrap()];
    for stream in [false, true] {
        let body = json!({"model": MODEL, "prompt": "abc", "max_tokens": 40, "temperature": 0,
                          "stop": [stop.clone(), "never-there"], "stream": stream});
        let (status, raw) = post_raw(&router, "/v1/completions", body.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{raw}");
        let (got, reason) = if stream {
            let data = sse_data(&raw);
            let chunks: Vec<Value> = data[..data.len() - 1]
                .iter()
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            let text: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["text"].as_str())
                .collect();
            (
                text,
                chunks.last().unwrap()["choices"][0]["finish_reason"].clone(),
            )
        } else {
            let r: Value = serde_json::from_str(&raw).unwrap();
            (
                r["choices"][0]["text"].as_str().unwrap().to_owned(),
                r["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(got, expected, "stream={stream}");
        assert_eq!(reason, "stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_text() {
    let (server, _) = server(4, 256, Duration::ZERO, |_| {});
    let router = server.router();
    let ask = |seed: u64| {
        let router = router.clone();
        async move {
            let body = json!({"model": MODEL, "prompt": "seeded", "max_tokens": 40, "temperature": 1.0, "seed": seed});
            let (status, r) = post(&router, "/v1/completions", body).await;
            assert_eq!(status, StatusCode::OK, "{r}");
            r["choices"][0]["text"].as_str().unwrap().to_owned()
        }
    };
    let (a, b, c) = tokio::join!(ask(7), ask(7), ask(8));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_naming_the_field() {
    let (server, _) = server(2, 64, Duration::ZERO, |c| c.max_body_bytes = 4096);
    let router = server.router();
    let base = json!({"model": MODEL, "prompt": "hi", "max_tokens": 4});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            with("model", json!("gpt-4")),
            StatusCode::NOT_FOUND,
            "model",
        ),
        (
            with("max_tokens", json!("many")),
            StatusCode::BAD_REQUEST,
            "max_tokens",
        ),
        (
            with("max_tokens", json!(0)),
            StatusCode::BAD_REQUEST,
            "max_tokens",
        ),
        (
            with("max_tokens", json!(62)),
            StatusCode::BAD_REQUEST,
            "max_tokens",
        ),
        (with("prompt", json!("")), StatusCode::BAD_REQUEST, "prompt"),
        (with("prompt", json!([])), StatusCode::BAD_REQUEST, "prompt"),
        (
            with("prompt", json!(["a", "b"])),
            StatusCode::BAD_REQUEST,
            "prompt",
        ),
        (
            with("prompt", json!([1, 999])),
            StatusCode::BAD_REQUEST,
            "prompt",
        ),
        (
            with("prompt", json!({"x": 1})),
            StatusCode::BAD_REQUEST,
            "prompt",
        ),
        (
            with("prompt", json!("x".repeat(64))),
            StatusCode::BAD_REQUEST,
            "prompt",
        ),
        (
            with("temperature", json!(3)),
            StatusCode::BAD_REQUEST,
            "temperature",
        ),
        (with("top_p", json!(0)), StatusCode::BAD_REQUEST, "top_p"),
        (with("stop", json!(7)), StatusCode::BAD_REQUEST, "stop"),
        (with("stop", json!([""])), StatusCode::BAD_REQUEST, "stop"),
        (with("n", json!(2)), StatusCode::BAD_REQUEST, "n"),
        (
            with("logprobs", json!(3)),
            StatusCode::BAD_REQUEST,
            "logprobs",
        ),
        (with("echo", json!(true)), StatusCode::BAD_REQUEST, "echo"),
        (
            with("stream", json!("yes")),
            StatusCode::BAD_REQUEST,
            "stream",
        ),
    ];
    for (body, status, param) in cases {
        let (got, r) = post(&router, "/v1/completions", body.clone()).await;
        assert_eq!(got, status, "{body} -> {r}");
        assert_eq!(error_of(&r)["param"], param, "{body} -> {r}");
    }
    let chat_cases = [
        json!({"model": MODEL, "messages": []}),
        json!({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}),
        json!({"model": MODEL, "messages": [{"role": "user", "content": 5}]}),
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}),
        json!({"model": MODEL, "messages": "hello"}),
    ];
    for body in chat_cases {
        let (got, r) = post(&router, "/v1/chat/completions", body.clone()).await;
        assert_eq!(got, StatusCode::BAD_REQUEST, "{body} -> {r}");
        assert!(
            error_of(&r)["param"]
                .as_str()
                .unwrap()
                .starts_with("messages")
                || r["error"]["param"] == "tools"
        );
    }
    // Not JSON, trailing garbage, missing fields, a body over the limit.
    for (raw, status) in [
        ("{\"model\": ", StatusCode::BAD_REQUEST),
        (
            "{\"model\": \"fake\", \"prompt\": \"x\"} trailing",
            StatusCode::BAD_REQUEST,
        ),
        ("{\"prompt\": \"x\"}", StatusCode::BAD_REQUEST),
        ("[1, 2]", StatusCode::BAD_REQUEST),
        ("", StatusCode::BAD_REQUEST),
    ] {
        let (got, text) = post_raw(&router, "/v1/completions", raw).await;
        assert_eq!(got, status, "{raw} -> {text}");
        error_of(&serde_json::from_str(&text).unwrap());
    }
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let (got, text) = post_raw(&router, "/v1/completions", garbage).await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    error_of(&serde_json::from_str(&text).unwrap());
    let (got, text) = get(&router, "/v1/nothing").await;
    assert_eq!(got, StatusCode::NOT_FOUND);
    error_of(&serde_json::from_str(&text).unwrap());
    let (got, text) = get(&router, "/v1/completions").await;
    assert_eq!(got, StatusCode::NOT_FOUND);
    error_of(&serde_json::from_str(&text).unwrap());
    // Still serving.
    let (status, _) = post(&router, "/v1/completions", base).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_metrics() {
    let (server, _) = server(3, 128, Duration::ZERO, |_| {});
    let router = server.router();
    let (status, text) = get(&router, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let models: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["max_model_len"], 128);
    let (status, text) = get(&router, "/health").await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::OK, r#"{"status":"ok"}"#)
    );

    let body = json!({"model": MODEL, "prompt": "count me", "max_tokens": 5, "temperature": 0, "ignore_eos": true});
    post(&router, "/v1/completions", body).await;
    let (status, text) = get(&router, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(metric(&text, "warp_bitnet_slots"), 3.0);
    assert_eq!(metric(&text, "warp_bitnet_slots_in_use"), 0.0);
    assert_eq!(metric(&text, "warp_bitnet_queue_length"), 0.0);
    assert_eq!(metric(&text, "warp_bitnet_prompt_tokens_total"), 9.0);
    assert_eq!(metric(&text, "warp_bitnet_generation_tokens_total"), 5.0);
    assert_eq!(
        metric(
            &text,
            "warp_bitnet_requests_total{endpoint=\"completions\",status=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "warp_bitnet_requests_finished_total{reason=\"length\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "warp_bitnet_time_to_first_token_seconds_count"),
        1.0
    );
    assert_eq!(
        metric(&text, "warp_bitnet_inter_token_latency_seconds_count"),
        4.0
    );
}
