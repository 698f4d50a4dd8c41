//! Continuous batching on the fake model: batched greedy output equals each request alone,
//! a full queue answers 429, a departed client frees its slot, shutdown drains then cancels.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_greedy_equals_each_request_alone() {
    const CHUNK: usize = 7;
    let (server, stats) = server(4, 512, Duration::from_millis(1), |c| {
        c.prefill_chunk = CHUNK
    });
    let router = server.router();
    let requests: Vec<(String, usize, bool)> = (0..12)
        .map(|i| {
            (
                "p".repeat(1 + i * 3) + &i.to_string(),
                5 + i * 2,
                i % 3 == 0,
            )
        })
        .collect();
    let tasks: Vec<_> = requests
        .iter()
        .map(|(prompt, max_tokens, ignore_eos)| {
            let router = router.clone();
            let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens,
                              "temperature": 0, "ignore_eos": ignore_eos});
            tokio::spawn(async move { post(&router, "/v1/completions", body).await })
        })
        .collect();
    for ((prompt, max_tokens, ignore_eos), task) in requests.iter().zip(tasks) {
        let (status, r) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{r}");
        let (text, generated, reason) = greedy_alone(&prompt_ids(prompt), *max_tokens);
        if !ignore_eos || reason == "length" {
            assert_eq!(r["choices"][0]["text"], text.as_str(), "prompt {prompt:?}");
            assert_eq!(r["usage"]["completion_tokens"], generated);
        } else {
            // Past an end-of-sequence token the alone run stops; the batched one goes on.
            assert!(r["choices"][0]["text"].as_str().unwrap().starts_with(&text));
        }
    }
    // Requests shared steps, and no step fed more than one token per decoding slot plus
    // one prefill chunk.
    assert!(stats.max_batch.load(Ordering::Relaxed) >= 2);
    assert!(stats.max_step_tokens.load(Ordering::Relaxed) <= 4 + CHUNK);
    assert_eq!(stats.busy_slots.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_leaks_no_slot() {
    let (server, stats) = server(2, 256, Duration::from_millis(3), |c| c.max_queue = 3);
    let router = server.router();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let router = router.clone();
            let body = json!({"model": MODEL, "prompt": format!("req {i}"), "max_tokens": 10, "ignore_eos": true});
            tokio::spawn(async move { post(&router, "/v1/completions", body).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        let (status, r) = task.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(error_of(&r)["code"], "queue_full");
                refused += 1;
            }
            other => panic!("{other}: {r}"),
        }
    }
    // At least a full queue got through: when all 40 arrive before the scheduler moves the
    // first into a slot (a slow debug build), only the queue's 3 are admitted.
    assert!(ok >= 3 && refused >= 1, "ok {ok}, refused {refused}");
    let (_, text) = get(&router, "/metrics").await;
    assert_eq!(metric(&text, "warp_bitnet_slots_in_use"), 0.0);
    assert_eq!(metric(&text, "warp_bitnet_queue_length"), 0.0);
    assert_eq!(
        metric(
            &text,
            "warp_bitnet_requests_total{endpoint=\"completions\",status=\"429\"}"
        ),
        refused as f64
    );
    assert_eq!(stats.busy_slots.load(Ordering::Relaxed), 0);
}

async fn wait_for_free_slots(router: &axum::Router) {
    let start = Instant::now();
    loop {
        let (_, text) = get(router, "/metrics").await;
        if metric(&text, "warp_bitnet_slots_in_use") == 0.0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "slot never freed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_frees_its_slot() {
    let (server, stats) = server(1, 4096, Duration::from_millis(2), |_| {});
    let router = server.router();
    // Streaming: read one chunk, then hang up.
    let body = json!({"model": MODEL, "prompt": "long", "max_tokens": 4000, "ignore_eos": true, "stream": true});
    let request = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    drop(body);
    wait_for_free_slots(&router).await;
    // Not streaming: the handler is dropped mid-generation.
    let body = json!({"model": MODEL, "prompt": "long", "max_tokens": 4000, "ignore_eos": true});
    let task = {
        let router = router.clone();
        tokio::spawn(async move { post(&router, "/v1/completions", body).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    task.abort();
    wait_for_free_slots(&router).await;
    let (_, text) = get(&router, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "warp_bitnet_requests_finished_total{reason=\"cancelled\"}"
        ),
        2.0
    );
    assert_eq!(stats.busy_slots.load(Ordering::Relaxed), 0);
    let body = json!({"model": MODEL, "prompt": "after", "max_tokens": 3});
    assert_eq!(
        post(&router, "/v1/completions", body).await.0,
        StatusCode::OK
    );
}

/// Sends one HTTP/1.1 request over a fresh connection and reads the whole answer.
async fn raw_http(addr: std::net::SocketAddr, path: &str, body: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_short_requests_and_cancels_long_ones_after_the_grace() {
    let grace = Duration::from_millis(400);
    let (server, stats) = server(2, 4096, Duration::from_millis(5), |c| {
        c.shutdown_grace = grace
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    let long = json!({"model": MODEL, "prompt": "long", "max_tokens": 4000, "ignore_eos": true, "stream": true});
    let short = json!({"model": MODEL, "prompt": "short", "max_tokens": 20, "ignore_eos": true});
    let long =
        tokio::spawn(async move { raw_http(addr, "/v1/completions", &long.to_string()).await });
    let short =
        tokio::spawn(async move { raw_http(addr, "/v1/completions", &short.to_string()).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let signalled = Instant::now();
    stop.send(()).unwrap();
    let short = short.await.unwrap();
    assert!(short.starts_with("HTTP/1.1 200"), "{short}");
    assert!(short.contains("\"finish_reason\":\"length\""), "{short}");
    let long = long.await.unwrap();
    assert!(long.starts_with("HTTP/1.1 200"), "{long}");
    // (The body is chunked: the SSE text sits between chunk sizes.)
    let error = long
        .find("shut down before the request finished")
        .expect("no error event");
    let done = long.find("data: [DONE]").expect("no [DONE]");
    assert!(
        error < done && long[done + 5..].find("data:").is_none(),
        "{long}"
    );
    tokio::time::timeout(Duration::from_secs(3), serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let took = signalled.elapsed();
    assert!(
        took >= grace && took < grace + Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(stats.busy_slots.load(Ordering::Relaxed), 0);
    // The listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
