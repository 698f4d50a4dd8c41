//! The server's named limits. The batch size and the context length are the model's
//! ([`crate::Model::slots`], [`crate::Model::max_context`]); the rest are here.

use std::time::Duration;

use crate::error::ServeError;

/// Settings of one server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The name clients pass as `model` (and `/v1/models` lists).
    pub model_name: String,
    /// Requests that may wait to be admitted (to a free slot, at the next scheduler step);
    /// one more is refused with 429.
    pub max_queue: usize,
    /// Largest request body in bytes; a larger one is refused with 413.
    pub max_body_bytes: usize,
    /// Prompt tokens fed per scheduler step, over all requests still prefilling: bounds how
    /// much a new request's prefill delays the running streams' next token.
    pub prefill_chunk: usize,
    /// After SIGINT/SIGTERM, how long running requests may take to finish before they are
    /// cancelled.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// Defaults for serving `model_name`.
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            model_name: model_name.into(),
            max_queue: 256,
            max_body_bytes: 1 << 20,
            prefill_chunk: 256,
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), ServeError> {
        let bad = |setting, reason: &str| {
            Err(ServeError::Config {
                setting,
                reason: reason.into(),
            })
        };
        if self.model_name.is_empty() {
            return bad("model_name", "must not be empty");
        }
        if self.max_queue == 0 {
            return bad(
                "max_queue",
                "must be at least 1 (requests pass through the queue on their way to a slot)",
            );
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes", "must be at least 1024");
        }
        if self.prefill_chunk == 0 {
            return bad("prefill_chunk", "must be at least 1");
        }
        Ok(())
    }
}
