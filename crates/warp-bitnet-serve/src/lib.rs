//! An OpenAI-compatible HTTP server with continuous batching over the warp-bitnet engine:
//! `POST /v1/completions`, `POST /v1/chat/completions` (both with server-sent-event
//! streaming), `GET /v1/models`, `GET /health` and `GET /metrics` (Prometheus).
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use warp_bitnet_serve::testing::{ByteCodec, FakeModel};
//! use warp_bitnet_serve::{shutdown_signal, Server, ServerConfig};
//!
//! # async fn main_() -> Result<(), Box<dyn std::error::Error>> {
//! // Any `Model` + `Codec`: here the deterministic test model (8 slots, 512 positions).
//! let model = FakeModel::new(8, 512, Duration::ZERO);
//! let server = Server::new(model, Arc::new(ByteCodec::new()), ServerConfig::new("fake"))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! // Serves until SIGINT/SIGTERM, then drains within `shutdown_grace` and returns.
//! server.serve(listener, shutdown_signal()).await?;
//! # Ok(()) }
//! ```
//!
//! # Design
//! - [`http`] handlers only parse, check ([`validate`]), enqueue and stream; the
//!   [`scheduler`] owns the model on its own thread and runs one loop over a fixed pool of
//!   KV-cache slots (continuous batching with chunked prefill; see its doc).
//! - The model sits behind two small traits ([`Model`], [`Codec`]), implemented for the real
//!   engine in [`engine`] and by a deterministic fake in [`testing`], so that the scheduler
//!   and the HTTP layer are tested without a model.
//! - Every limit is a named setting with its own error: the context and the batch are the
//!   model's, the queue, body size, prefill chunk and shutdown grace are [`ServerConfig`]'s.
//!
//! # Why tokio and axum
//! The server needs many concurrent, long-lived streaming connections, a body-size limit,
//! signal handling and graceful shutdown. tokio is the async runtime the Rust HTTP stack
//! is built on (hyper, tower), with signals, bounded channels and `watch` in one crate;
//! axum (by the tokio team) is a thin layer over hyper 1.x with typed extractors, a built-in
//! SSE response, `DefaultBodyLimit` and `with_graceful_shutdown`, and no macros or runtime
//! of its own. actix-web brings its own actor runtime (a second scheduler beside ours) and
//! warp/poem are less used and less maintained; a hand-written server on hyper would
//! re-implement what axum already does. The model itself never runs on the async threads:
//! the scheduler has a dedicated OS thread, so a long forward pass never stalls I/O.
#![deny(missing_docs)]

pub mod config;
pub mod engine;
pub mod error;
pub mod http;
pub mod metrics;
pub mod model;
pub mod openai;
pub mod scheduler;
pub mod testing;
pub mod text;
pub mod validate;

use std::future::Future;
use std::sync::Arc;
use std::thread::JoinHandle;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use config::ServerConfig;
pub use error::{ApiError, ServeError};
pub use model::{BoxError, Codec, Model, Sampling, TokenIdCodec};

use metrics::Metrics;
use scheduler::{Phase, Scheduler};

/// A started server: the scheduler thread runs; [`Server::serve`] takes connections.
pub struct Server {
    router: Router,
    phase: watch::Sender<Phase>,
    scheduler: JoinHandle<()>,
    config: ServerConfig,
}

impl Server {
    /// Checks the settings and starts the scheduler thread with `model`.
    pub fn new<M: Model>(
        model: M,
        codec: Arc<dyn Codec>,
        config: ServerConfig,
    ) -> Result<Self, ServeError> {
        config.validate()?;
        let (slots, vocab, max_context) = (model.slots(), model.vocab_size(), model.max_context());
        if slots == 0 || vocab == 0 || max_context < 2 {
            return Err(ServeError::Config {
                setting: "model",
                reason: format!(
                    "the model needs at least 1 slot, 1 token and 2 positions; it has {slots} \
                     slots, {vocab} tokens, {max_context} positions"
                ),
            });
        }
        let metrics = Arc::new(Metrics::new(slots));
        let (jobs_tx, jobs_rx) = mpsc::channel(config.max_queue);
        let (phase, phase_rx) = watch::channel(Phase::Serving);
        let scheduler = Scheduler::new(
            model,
            codec.clone(),
            metrics.clone(),
            config.prefill_chunk,
            jobs_rx,
            phase_rx.clone(),
        );
        let scheduler = std::thread::Builder::new()
            .name("warp-bitnet-scheduler".into())
            .spawn(move || {
                // The scheduler awaits only its channels; a current-thread runtime suffices.
                match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt.block_on(scheduler.run()),
                    Err(e) => {
                        eprintln!("warp-bitnet-serve: cannot start the scheduler runtime: {e}")
                    }
                }
            })?;
        let state = http::AppState::new(
            jobs_tx,
            codec,
            metrics,
            config.clone(),
            (vocab, max_context),
            phase_rx,
        );
        Ok(Self {
            router: http::router(state),
            phase,
            scheduler,
            config,
        })
    }

    /// The router (for tests that call it without a socket).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves on `listener` until `shutdown` completes; then stops accepting, refuses queued
    /// requests (503), lets running ones finish for [`ServerConfig::shutdown_grace`], cancels
    /// the rest, and returns once every connection is closed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Self {
            router,
            phase,
            scheduler,
            config,
        } = self;
        let phase = Arc::new(phase);
        let draining = {
            let phase = phase.clone();
            async move {
                shutdown.await;
                phase.send_replace(Phase::Draining);
            }
        };
        let mut watch_phase = phase.subscribe();
        // Each token is a small write: without TCP_NODELAY, Nagle's algorithm holds it back
        // until the previous one is acknowledged.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = axum::serve(listener, router).with_graceful_shutdown(draining);
        let deadline = async move {
            // Runs until the grace period after the shutdown signal is over.
            let _ = watch_phase.wait_for(|p| *p >= Phase::Draining).await;
            tokio::time::sleep(config.shutdown_grace).await;
            phase.send_replace(Phase::Cancelling);
            // Cancelled streams end at the scheduler's next step; connections that still do
            // not close (a client that never reads) are dropped after this.
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        };
        tokio::select! {
            served = server => served?,
            () = deadline => {}
        }
        tokio::task::spawn_blocking(move || scheduler.join())
            .await
            .map_err(|_| ServeError::SchedulerPanicked)?
            .map_err(|_| ServeError::SchedulerPanicked)
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
