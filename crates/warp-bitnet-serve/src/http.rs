//! The router and its handlers. Handlers only parse, check, enqueue and stream: every
//! generation happens in the [`crate::scheduler`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::Codec;
use crate::openai::{
    ChatChoice, ChatChunk, ChatChunkChoice, ChatDelta, ChatMessageOut, ChatRequest, ChatResponse,
    CompletionChoice, CompletionRequest, CompletionResponse, GenerationFields, Header, ModelCard,
    ModelList, Usage,
};
use crate::scheduler::{Event, Job, Phase};
use crate::validate::{self, Params};
use crate::ServerConfig;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

struct Shared {
    jobs: mpsc::Sender<Job>,
    codec: Arc<dyn Codec>,
    metrics: Arc<Metrics>,
    config: ServerConfig,
    vocab: usize,
    max_context: usize,
    phase: watch::Receiver<Phase>,
    started: u64,
}

impl AppState {
    /// State for a model of `vocab` tokens and `max_context` positions.
    pub fn new(
        jobs: mpsc::Sender<Job>,
        codec: Arc<dyn Codec>,
        metrics: Arc<Metrics>,
        config: ServerConfig,
        (vocab, max_context): (usize, usize),
        phase: watch::Receiver<Phase>,
    ) -> Self {
        Self(Arc::new(Shared {
            jobs,
            codec,
            metrics,
            config,
            vocab,
            max_context,
            phase,
            started: unix_now(),
        }))
    }
}

/// Every endpoint, with the body size limit.
pub fn router(state: AppState) -> Router {
    let body_limit = state.0.config.max_body_bytes;
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(no_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn completions(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let response = completion(&st, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    st.0.metrics
        .request("completions", response.status().as_u16());
    response
}

async fn chat(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let response = chat_completion(&st, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    st.0.metrics.request("chat", response.status().as_u16());
    response
}

async fn completion(
    st: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let (req, fields): (CompletionRequest, _) = parse_body(body)?;
    let checked = validate::check_fields(&fields, &st.0.config.model_name)?;
    let (codec, vocab) = (st.0.codec.clone(), st.0.vocab);
    // Tokenizing a long prompt takes milliseconds: off the async threads.
    let prompt =
        tokio::task::spawn_blocking(move || validate::completion_prompt(&req, &*codec, vocab))
            .await
            .map_err(|e| ApiError::internal(format!("tokenizer task: {e}")))??;
    let params = validate::fit_context(checked, prompt.len(), st.0.max_context)?;
    let header = st.header("cmpl", "text_completion");
    let (stream, include_usage) = (params.stream, params.include_usage);
    let events = st.submit(prompt, params, arrived)?;
    if stream {
        return Ok(sse(Chunks::new(
            Kind::Completion,
            header,
            events,
            include_usage,
        )));
    }
    let (text, finish_reason, usage) = collect(events).await?;
    Ok(Json(CompletionResponse {
        header,
        choices: vec![CompletionChoice {
            index: 0,
            text,
            logprobs: None,
            finish_reason: Some(finish_reason),
        }],
        usage: Some(usage),
    })
    .into_response())
}

async fn chat_completion(
    st: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let (req, fields): (ChatRequest, _) = parse_body(body)?;
    let checked = validate::check_fields(&fields, &st.0.config.model_name)?;
    let codec = st.0.codec.clone();
    let prompt = tokio::task::spawn_blocking(move || validate::chat_prompt(&req, &*codec))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task: {e}")))??;
    let params = validate::fit_context(checked, prompt.len(), st.0.max_context)?;
    let (stream, include_usage) = (params.stream, params.include_usage);
    let events = st.submit(prompt, params, arrived)?;
    if stream {
        let header = st.header("chatcmpl", "chat.completion.chunk");
        return Ok(sse(Chunks::new(Kind::Chat, header, events, include_usage)));
    }
    let (content, finish_reason, usage) = collect(events).await?;
    Ok(Json(ChatResponse {
        header: st.header("chatcmpl", "chat.completion"),
        choices: vec![ChatChoice {
            index: 0,
            message: ChatMessageOut {
                role: "assistant",
                content,
            },
            logprobs: None,
            finish_reason,
        }],
        usage,
    })
    .into_response())
}

impl AppState {
    fn header(&self, id_prefix: &str, object: &'static str) -> Header {
        Header {
            id: format!("{id_prefix}-{:032x}", rand::random::<u128>()),
            object,
            created: unix_now(),
            model: self.0.config.model_name.clone(),
        }
    }

    /// Queues a checked request; its events arrive on the returned channel.
    fn submit(
        &self,
        prompt: Vec<u32>,
        params: Params,
        arrived: Instant,
    ) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
        if *self.0.phase.borrow() != Phase::Serving {
            return Err(ApiError::shutting_down());
        }
        let (events, rx) = mpsc::unbounded_channel();
        let job = Job {
            prompt,
            params,
            arrived,
            events,
        };
        self.0.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::queue_full(self.0.config.max_queue),
            mpsc::error::TrySendError::Closed(_) => ApiError::shutting_down(),
        })?;
        Ok(rx)
    }
}

/// Parses a JSON body into the endpoint's fields and the generation settings; errors name
/// the field at fault (through `serde_path_to_error`).
fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<(T, GenerationFields), ApiError> {
    let bytes = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::body(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than this server's limit (max_body_bytes)".into(),
        ),
        status => ApiError::body(
            status,
            format!("could not read the request body: {}", r.body_text()),
        ),
    })?;
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid("body", format!("the body is not valid JSON: {e}")))?;
    if !json.is_object() {
        return Err(ApiError::invalid("body", "the body must be a JSON object"));
    }
    let own = serde_path_to_error::deserialize(&json).map_err(field_error)?;
    let fields = serde_path_to_error::deserialize(&json).map_err(field_error)?;
    Ok((own, fields))
}

fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if path == "." {
        // A missing required field.
        return ApiError::invalid("body", format!("the body: {inner}"));
    }
    ApiError::invalid(path.clone(), format!("`{path}`: {inner}"))
}

/// Waits for a whole generation.
async fn collect(
    mut events: mpsc::UnboundedReceiver<Event>,
) -> Result<(String, &'static str, Usage), ApiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(piece) => text.push_str(&piece),
            Event::Done {
                finish_reason,
                usage,
            } => return Ok((text, finish_reason, usage)),
            Event::Error(e) => return Err(e),
        }
    }
    Err(ApiError::internal("the scheduler stopped"))
}

#[derive(Clone, Copy)]
enum Kind {
    Completion,
    Chat,
}

/// Where a stream is: chat opens with a role chunk; after the last content chunk come the
/// optional usage chunk and `[DONE]`.
enum Stage {
    Open,
    Body,
    Usage(Usage),
    Done,
    End,
}

/// A generation's events as OpenAI stream chunks.
struct Chunks {
    kind: Kind,
    header: Header,
    events: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
    stage: Stage,
}

impl Chunks {
    fn new(
        kind: Kind,
        header: Header,
        events: mpsc::UnboundedReceiver<Event>,
        include_usage: bool,
    ) -> Self {
        let stage = match kind {
            Kind::Chat => Stage::Open,
            Kind::Completion => Stage::Body,
        };
        Self {
            kind,
            header,
            events,
            include_usage,
            stage,
        }
    }

    /// The next SSE event, or None after `[DONE]`.
    async fn next(&mut self) -> Option<SseEvent> {
        let event = match std::mem::replace(&mut self.stage, Stage::Body) {
            Stage::Open => self.chunk(Some("assistant"), Some(String::new()), None, None),
            Stage::Body => match self.events.recv().await {
                Some(Event::Text(text)) => self.chunk(None, Some(text), None, None),
                Some(Event::Done {
                    finish_reason,
                    usage,
                }) => {
                    self.stage = if self.include_usage {
                        Stage::Usage(usage)
                    } else {
                        Stage::Done
                    };
                    self.chunk(None, None, Some(finish_reason), None)
                }
                Some(Event::Error(e)) => {
                    self.stage = Stage::Done;
                    json_event(&e.body_json())
                }
                None => {
                    self.stage = Stage::Done;
                    json_event(&ApiError::internal("the scheduler stopped").body_json())
                }
            },
            Stage::Usage(usage) => {
                self.stage = Stage::Done;
                self.usage_chunk(usage)
            }
            Stage::Done => {
                self.stage = Stage::End;
                SseEvent::default().data("[DONE]")
            }
            Stage::End => {
                self.stage = Stage::End;
                return None;
            }
        };
        Some(event)
    }

    /// A chunk with one choice: a role, a piece of text, or the finish reason.
    fn chunk(
        &self,
        role: Option<&'static str>,
        text: Option<String>,
        finish_reason: Option<&'static str>,
        usage: Option<Usage>,
    ) -> SseEvent {
        let header = self.header.clone();
        match self.kind {
            Kind::Completion => json_event(&CompletionResponse {
                header,
                choices: vec![CompletionChoice {
                    index: 0,
                    text: text.unwrap_or_default(),
                    logprobs: None,
                    finish_reason,
                }],
                usage,
            }),
            Kind::Chat => json_event(&ChatChunk {
                header,
                choices: vec![ChatChunkChoice {
                    index: 0,
                    delta: ChatDelta {
                        role,
                        content: text,
                    },
                    logprobs: None,
                    finish_reason,
                }],
                usage,
            }),
        }
    }

    fn usage_chunk(&self, usage: Usage) -> SseEvent {
        let header = self.header.clone();
        match self.kind {
            Kind::Completion => json_event(&CompletionResponse {
                header,
                choices: Vec::new(),
                usage: Some(usage),
            }),
            Kind::Chat => json_event(&ChatChunk {
                header,
                choices: Vec::new(),
                usage: Some(usage),
            }),
        }
    }
}

fn json_event(value: &impl Serialize) -> SseEvent {
    // Our plain structs always serialize; the fallback keeps the stream well-formed anyway.
    SseEvent::default()
        .json_data(value)
        .unwrap_or_else(|_| SseEvent::default().data(r#"{"error":{"message":"serialization failed","type":"server_error","param":null,"code":null}}"#))
}

/// Streams the chunks; when the client disconnects, axum drops the stream and with it the
/// event receiver, which the scheduler notices at its next step.
fn sse(chunks: Chunks) -> Response {
    let stream = stream::unfold(chunks, |mut c| async move {
        c.next().await.map(|e| (Ok::<_, Infallible>(e), c))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn models(State(st): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: st.0.config.model_name.clone(),
            object: "model",
            created: st.0.started,
            owned_by: "warp-bitnet",
            max_model_len: st.0.max_context,
        }],
    })
}

async fn health(State(st): State<AppState>) -> Response {
    if *st.0.phase.borrow() == Phase::Serving {
        Json(serde_json::json!({"status": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "shutting down"})),
        )
            .into_response()
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let jobs = &st.0.jobs;
    st.0.metrics
        .queue_length
        .set((jobs.max_capacity() - jobs.capacity()) as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.0.metrics.encode(),
    )
        .into_response()
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::no_route(method.as_str(), uri.path())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
