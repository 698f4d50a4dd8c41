//! `/metrics`: Prometheus counters, gauges and histograms (OpenMetrics text, through the
//! `prometheus-client` crate), every name prefixed `warp_bitnet_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of `warp_bitnet_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `completions` or `chat`.
    pub endpoint: &'static str,
    /// The HTTP status of the response.
    pub status: u16,
}

/// Labels of `warp_bitnet_requests_finished_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishLabels {
    /// `stop`, `length`, `cancelled` (client gone or shutdown) or `error`.
    pub reason: &'static str,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Generation requests answered, by endpoint and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Generations that left their slot, by reason.
    pub finished: Family<FinishLabels, Counter>,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: Counter,
    /// Tokens generated.
    pub generation_tokens: Counter,
    /// KV-cache slots of the model (the largest batch).
    pub slots: Gauge,
    /// Slots holding a request: the batch occupancy.
    pub slots_in_use: Gauge,
    /// Requests waiting to be admitted.
    pub queue_length: Gauge,
    /// Sequences in each model step.
    pub batch_size: Histogram,
    /// Seconds from a request's arrival to its first generated token.
    pub time_to_first_token: Histogram,
    /// Seconds between consecutive tokens of one request.
    pub inter_token_latency: Histogram,
}

impl Metrics {
    /// The metrics of a model with `slots` slots.
    pub fn new(slots: usize) -> Self {
        let mut registry = Registry::with_prefix("warp_bitnet");
        let m = Self {
            requests: Family::default(),
            finished: Family::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            slots: Gauge::default(),
            slots_in_use: Gauge::default(),
            queue_length: Gauge::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            // 1 ms to 33 s.
            time_to_first_token: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 0.25 ms to 2.8 s, fine enough to read a 3 ms p99.
            inter_token_latency: Histogram::new(exponential_buckets(0.000_25, 1.5, 24)),
            registry: Registry::default(),
        };
        m.slots.set(slots as i64);
        registry.register(
            "requests",
            "Generation requests answered, by endpoint and HTTP status",
            m.requests.clone(),
        );
        registry.register(
            "requests_finished",
            "Generations that left their slot, by reason",
            m.finished.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens of admitted requests",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "generation_tokens",
            "Tokens generated",
            m.generation_tokens.clone(),
        );
        registry.register("slots", "KV-cache slots (largest batch)", m.slots.clone());
        registry.register(
            "slots_in_use",
            "Slots holding a request (batch occupancy)",
            m.slots_in_use.clone(),
        );
        registry.register(
            "queue_length",
            "Requests waiting to be admitted",
            m.queue_length.clone(),
        );
        registry.register(
            "batch_size",
            "Sequences per model step",
            m.batch_size.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Seconds from a request's arrival to its first token",
            m.time_to_first_token.clone(),
        );
        registry.register(
            "inter_token_latency_seconds",
            "Seconds between consecutive tokens of one request",
            m.inter_token_latency.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts a generation request's response.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
    }

    /// Counts a generation leaving its slot.
    pub fn finish(&self, reason: &'static str) {
        self.finished.get_or_create(&FinishLabels { reason }).inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
