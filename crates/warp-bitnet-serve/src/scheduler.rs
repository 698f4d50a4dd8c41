//! Continuous batching: one loop over a fixed pool of KV-cache slots.
//!
//! Each step admits waiting requests into free slots, then runs the model once on a batch
//! that holds one token of every decoding sequence plus at most
//! [`ServerConfig::prefill_chunk`](crate::ServerConfig::prefill_chunk) prompt tokens of the
//! sequences still prefilling (oldest first, chunked), samples a token for every sequence
//! whose input is all in the cache, and retires sequences that finished or whose client
//! left. A request thus joins and leaves the batch at any step, and a long prompt delays the
//! running streams' next token by one bounded chunk, not by its whole prefill (the shape of
//! vLLM's chunked prefill and llama.cpp's server slots).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::{Codec, Model};
use crate::openai::Usage;
use crate::text::{Detokenizer, Matched, StopMatcher};
use crate::validate::Params;

/// A checked request on its way to a slot.
pub struct Job {
    /// The prompt's token ids (not empty, shorter than the context).
    pub prompt: Vec<u32>,
    /// Generation settings.
    pub params: Params,
    /// When the request arrived (for time to first token).
    pub arrived: Instant,
    /// Where its text goes; dropped by the handler when the client leaves.
    pub events: mpsc::UnboundedSender<Event>,
}

/// What the scheduler tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// More generated text.
    Text(String),
    /// The generation ended: `stop` or `length`.
    Done {
        /// OpenAI's `finish_reason`.
        finish_reason: &'static str,
        /// Token counts.
        usage: Usage,
    },
    /// The generation failed or was cancelled.
    Error(ApiError),
}

/// The server's life cycle, set by the shutdown sequence and read by every part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Taking requests.
    Serving,
    /// Shutting down: no new requests; running ones may finish.
    Draining,
    /// The grace period is over: running requests are cancelled.
    Cancelling,
}

/// One request in a slot.
struct Sequence<S> {
    slot: usize,
    /// Prompt, then generated tokens (an end-of-sequence token is not appended).
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens already in the slot's KV cache.
    fed: usize,
    /// Tokens sampled, an end-of-sequence token included.
    generated: usize,
    max_tokens: usize,
    ignore_eos: bool,
    sampler: S,
    detok: Detokenizer,
    stop: StopMatcher,
    events: mpsc::UnboundedSender<Event>,
    arrived: Instant,
    last_token: Option<Instant>,
}

/// How a sequence ends.
enum Outcome {
    Finished(&'static str),
    Failed(ApiError),
    Cancelled(ApiError),
}

/// The scheduler: owns the model, the slots and the running sequences.
pub struct Scheduler<M: Model> {
    model: M,
    codec: Arc<dyn Codec>,
    metrics: Arc<Metrics>,
    prefill_chunk: usize,
    jobs: mpsc::Receiver<Job>,
    phase: watch::Receiver<Phase>,
    free: Vec<usize>,
    /// In admission order, which is also the order prompts are prefilled in.
    running: Vec<Sequence<M::Sampler>>,
}

impl<M: Model> Scheduler<M> {
    /// A scheduler taking jobs from `jobs` until `phase` leaves [`Phase::Serving`].
    pub fn new(
        model: M,
        codec: Arc<dyn Codec>,
        metrics: Arc<Metrics>,
        prefill_chunk: usize,
        jobs: mpsc::Receiver<Job>,
        phase: watch::Receiver<Phase>,
    ) -> Self {
        // Pop order: slot 0 first.
        let free = (0..model.slots()).rev().collect();
        Self {
            model,
            codec,
            metrics,
            prefill_chunk,
            jobs,
            phase,
            free,
            running: Vec::new(),
        }
    }

    /// Runs until shutdown: draining, every running request finished or cancelled.
    pub async fn run(mut self) {
        loop {
            let phase = *self.phase.borrow();
            if phase >= Phase::Draining {
                self.refuse_queued();
            }
            if phase == Phase::Cancelling {
                self.cancel_all();
            }
            if self.running.is_empty() {
                if phase >= Phase::Draining {
                    return;
                }
                tokio::select! {
                    job = self.jobs.recv() => match job {
                        Some(job) => self.admit(job),
                        None => return,
                    },
                    changed = self.phase.changed() => if changed.is_err() {
                        return;
                    },
                }
                continue;
            }
            if phase == Phase::Serving {
                self.admit_waiting();
            }
            self.drop_disconnected();
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    fn admit_waiting(&mut self) {
        while !self.free.is_empty() {
            match self.jobs.try_recv() {
                Ok(job) => self.admit(job),
                Err(_) => break,
            }
        }
        self.metrics.queue_length.set(self.jobs.len() as i64);
    }

    fn admit(&mut self, job: Job) {
        if job.events.is_closed() {
            // Its client left while it waited.
            self.metrics.finish("cancelled");
            return;
        }
        let Some(slot) = self.free.pop() else {
            // Unreachable: jobs are only taken while a slot is free.
            let _ = job
                .events
                .send(Event::Error(ApiError::internal("no free slot")));
            return;
        };
        let sampler = match self.model.sampler(&job.params.sampling) {
            Ok(s) => s,
            Err(e) => {
                let _ = job
                    .events
                    .send(Event::Error(ApiError::invalid("sampling", e.to_string())));
                self.free.push(slot);
                return;
            }
        };
        self.metrics.prompt_tokens.inc_by(job.prompt.len() as u64);
        let Params {
            max_tokens,
            stop,
            ignore_eos,
            ..
        } = job.params;
        self.running.push(Sequence {
            slot,
            prompt_len: job.prompt.len(),
            tokens: job.prompt,
            fed: 0,
            generated: 0,
            max_tokens,
            ignore_eos,
            sampler,
            detok: Detokenizer::default(),
            stop: StopMatcher::new(stop),
            events: job.events,
            arrived: job.arrived,
            last_token: None,
        });
        self.metrics.slots_in_use.set(self.running.len() as i64);
    }

    /// Shutdown: requests still queued get a 503.
    fn refuse_queued(&mut self) {
        self.jobs.close();
        while let Ok(job) = self.jobs.try_recv() {
            let _ = job.events.send(Event::Error(ApiError::shutting_down()));
        }
        self.metrics.queue_length.set(0);
    }

    fn cancel_all(&mut self) {
        let all: Vec<_> = (0..self.running.len())
            .map(|i| (i, shutdown_cancel()))
            .collect();
        self.retire(all);
    }

    fn drop_disconnected(&mut self) {
        let gone: Vec<_> = (self.running.iter().enumerate())
            .filter(|(_, s)| s.events.is_closed())
            .map(|(i, _)| {
                (
                    i,
                    Outcome::Cancelled(ApiError::internal("client disconnected")),
                )
            })
            .collect();
        self.retire(gone);
    }

    /// One model call over every running sequence (see the module doc).
    fn step(&mut self) {
        let mut budget = self.prefill_chunk;
        let mut planned = Vec::with_capacity(self.running.len());
        for (i, s) in self.running.iter().enumerate() {
            let pending = s.tokens.len() - s.fed;
            if s.fed >= s.prompt_len {
                planned.push((i, pending));
            } else if budget > 0 {
                let n = pending.min(budget);
                budget -= n;
                planned.push((i, n));
            }
        }
        // Only entries whose prompt is then fully fed draw a token.
        let mut rows: Vec<Option<&mut Sequence<M::Sampler>>> =
            self.running.iter_mut().map(Some).collect();
        let mut batch = Vec::with_capacity(planned.len());
        let mut samplers = Vec::with_capacity(planned.len());
        let mut histories = Vec::with_capacity(planned.len());
        for &(i, n) in &planned {
            let s = rows[i]
                .take()
                .expect("each running sequence is planned once");
            let ids = &s.tokens[s.fed..s.fed + n];
            let done = s.fed + n == s.tokens.len();
            batch.push((s.slot, ids));
            histories.push(&s.tokens[..]);
            samplers.push(done.then_some(&mut s.sampler));
        }
        self.metrics.batch_size.observe(batch.len() as f64);
        let mut tokens = vec![0u32; planned.len()];
        let result = self
            .model
            .forward_sample(&batch, &mut samplers, &histories, &mut tokens);
        drop((batch, samplers, histories, rows));
        if let Err(e) = result {
            let message = format!("the model failed: {e}");
            let failed = planned
                .iter()
                .map(|&(i, _)| (i, Outcome::Failed(ApiError::internal(message.clone()))));
            self.retire(failed.collect());
            return;
        }
        let mut ended = Vec::new();
        for (row, &(i, n)) in planned.iter().enumerate() {
            let s = &mut self.running[i];
            s.fed += n;
            if s.fed < s.tokens.len() {
                continue;
            }
            if let Some(outcome) = accept(s, tokens[row], &*self.codec, &self.metrics) {
                ended.push((i, outcome));
            }
        }
        self.retire(ended);
    }

    /// Ends the sequences at these indices of `running`, tells their clients, frees their slots.
    fn retire(&mut self, mut ended: Vec<(usize, Outcome)>) {
        ended.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, outcome) in ended {
            let s = self.running.remove(i);
            let (event, reason) = match outcome {
                Outcome::Finished(finish_reason) => {
                    let usage = Usage::new(s.prompt_len, s.generated);
                    (
                        Event::Done {
                            finish_reason,
                            usage,
                        },
                        finish_reason,
                    )
                }
                Outcome::Failed(e) => (Event::Error(e), "error"),
                Outcome::Cancelled(e) => (Event::Error(e), "cancelled"),
            };
            // The slot is free and counted so before the client hears of the end.
            self.model.reset_slot(s.slot);
            self.free.push(s.slot);
            self.metrics.finish(reason);
            self.metrics.slots_in_use.set(self.running.len() as i64);
            let _ = s.events.send(event);
        }
    }
}

fn shutdown_cancel() -> Outcome {
    let mut e = ApiError::shutting_down();
    e.message = "the server shut down before the request finished".into();
    Outcome::Cancelled(e)
}

/// Takes a sampled token into the sequence and sends its text; says how the sequence ends,
/// if it does.
fn accept<S>(
    s: &mut Sequence<S>,
    token: u32,
    codec: &dyn Codec,
    metrics: &Metrics,
) -> Option<Outcome> {
    let now = Instant::now();
    match s.last_token.replace(now) {
        None => metrics
            .time_to_first_token
            .observe((now - s.arrived).as_secs_f64()),
        Some(last) => metrics
            .inter_token_latency
            .observe((now - last).as_secs_f64()),
    }
    metrics.generation_tokens.inc();
    s.generated += 1;
    let eos = !s.ignore_eos && codec.eos_token_ids().contains(&token);
    let piece = if eos {
        s.detok.flush(codec, &s.tokens[s.prompt_len..])
    } else {
        s.tokens.push(token);
        s.detok.next(codec, &s.tokens[s.prompt_len..])
    };
    let piece = match piece {
        Ok(p) => p,
        Err(e) => {
            return Some(Outcome::Failed(ApiError::internal(format!(
                "decoding tokens: {e}"
            ))))
        }
    };
    let (text, stopped) = match s.stop.push(&piece) {
        Matched::Stop(text) => (text, true),
        Matched::Text(text) => (text, false),
    };
    send_text(s, text);
    if stopped {
        return Some(Outcome::Finished("stop"));
    }
    let reason = if eos {
        "stop"
    } else if s.generated == s.max_tokens {
        "length"
    } else {
        return None;
    };
    finish_text(s, codec, reason)
}

/// At the end of a generation: sends the text still held back (an incomplete character,
/// the possible start of a stop string), which may itself complete a stop string.
fn finish_text<S>(s: &mut Sequence<S>, codec: &dyn Codec, reason: &'static str) -> Option<Outcome> {
    let rest = match s.detok.flush(codec, &s.tokens[s.prompt_len..]) {
        Ok(rest) => rest,
        Err(e) => {
            return Some(Outcome::Failed(ApiError::internal(format!(
                "decoding tokens: {e}"
            ))))
        }
    };
    match s.stop.push(&rest) {
        Matched::Stop(text) => {
            send_text(s, text);
            Some(Outcome::Finished("stop"))
        }
        Matched::Text(text) => {
            let held = s.stop.flush();
            send_text(s, text + &held);
            Some(Outcome::Finished(reason))
        }
    }
}

fn send_text<S>(s: &Sequence<S>, text: String) {
    if !text.is_empty() {
        // A closed channel is noticed at the next step (drop_disconnected).
        let _ = s.events.send(Event::Text(text));
    }
}
