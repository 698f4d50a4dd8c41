//! Helpers shared by the server's tests: a server on the deterministic fake model, requests
//! through the router without a socket, and the fake model's greedy output computed alone.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use warp_bitnet_serve::testing::{ByteCodec, FakeModel, FakeStats, EOS, VOCAB};
use warp_bitnet_serve::{Codec, Model, Server, ServerConfig};

pub const MODEL: &str = "fake";

/// A server on a fake model of `slots` slots and `context` positions.
pub fn server(
    slots: usize,
    context: usize,
    delay: Duration,
    config: impl FnOnce(&mut ServerConfig),
) -> (Server, Arc<FakeStats>) {
    let model = FakeModel::new(slots, context, delay);
    let stats = model.stats.clone();
    let mut c = ServerConfig::new(MODEL);
    config(&mut c);
    (
        Server::new(model, Arc::new(ByteCodec::new()), c).unwrap(),
        stats,
    )
}

/// POSTs `body` and returns the status and the body text.
pub async fn post_raw(router: &Router, path: &str, body: impl Into<Body>) -> (StatusCode, String) {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// POSTs JSON and parses the JSON answer.
pub async fn post(router: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, text) = post_raw(router, path, body.to_string()).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

pub async fn get(router: &Router, path: &str) -> (StatusCode, String) {
    let response = router
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The value of an unlabelled metric (`warp_bitnet_<name>`), or of the labelled line given.
pub fn metric(text: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(str::to_owned)
        .collect()
}

/// Asserts OpenAI's error shape and returns the error object.
pub fn error_of(body: &Value) -> &Value {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
    e
}

/// The fake model's greedy continuation of `prompt` run alone: (text, tokens generated,
/// finish reason).
pub fn greedy_alone(prompt: &[u32], max_tokens: usize) -> (String, usize, &'static str) {
    let mut m = FakeModel::new(1, 4096, Duration::ZERO);
    let mut logits = vec![0f32; VOCAB];
    let mut out = Vec::new();
    m.forward(&[(0, prompt)], &mut logits).unwrap();
    loop {
        let t = (0..VOCAB)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap() as u32;
        if t == EOS {
            return (
                ByteCodec::new().decode(&out).unwrap(),
                out.len() + 1,
                "stop",
            );
        }
        out.push(t);
        if out.len() == max_tokens {
            return (ByteCodec::new().decode(&out).unwrap(), out.len(), "length");
        }
        m.forward(&[(0, &[t])], &mut logits).unwrap();
    }
}

/// The fake codec's ids of a completion prompt (BOS first).
pub fn prompt_ids(text: &str) -> Vec<u32> {
    ByteCodec::new().encode(text, true).unwrap()
}
