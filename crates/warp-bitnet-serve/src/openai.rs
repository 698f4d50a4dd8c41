//! OpenAI's request and response bodies for `/v1/completions`, `/v1/chat/completions` and
//! `/v1/models`, as the official clients send and read them.
//!
//! A request body is read as the endpoint's own fields plus [`GenerationFields`], each
//! from the same JSON object (not through `#[serde(flatten)]`, which would lose the name
//! of a field with a wrong type). Fields whose JSON type varies (`prompt`, `stop`, message `content`) stay
//! [`serde_json::Value`] here and are checked in [`crate::validate`] with errors that name
//! them. Unknown fields are ignored, as OpenAI's clients add new ones over time; known
//! fields this server does not implement are refused there, not ignored.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Settings common to both generation endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct GenerationFields {
    /// The model to use: must be the served model's name.
    pub model: String,
    /// Most tokens to generate (default: what the context leaves after the prompt).
    pub max_tokens: Option<u64>,
    /// The chat endpoint's newer name for `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    /// 0 to 2; 0 is greedy. Default 1.
    pub temperature: Option<f32>,
    /// (0, 1]. Default 1.
    pub top_p: Option<f32>,
    /// Extension (vLLM's): keep the `top_k` most likely tokens; 0 or -1 keeps all.
    pub top_k: Option<i64>,
    /// Extension (vLLM's): > 0; 1 is off.
    pub repetition_penalty: Option<f32>,
    /// Same seed, same request: same text.
    pub seed: Option<i64>,
    /// A string or up to 4 strings that end the generation (not included in the text).
    pub stop: Option<Value>,
    /// Send server-sent events as tokens are generated.
    pub stream: Option<bool>,
    /// `{"include_usage": true}` adds a last chunk with the usage counts.
    pub stream_options: Option<StreamOptions>,
    /// Extension (vLLM's): keep generating past end-of-sequence tokens (benchmarks).
    pub ignore_eos: Option<bool>,
    /// Only 1 is supported.
    pub n: Option<u64>,
    /// Not supported (refused unless 0 / false / null).
    pub logprobs: Option<Value>,
    /// Not supported.
    pub top_logprobs: Option<Value>,
    /// Not supported (refused unless 0).
    pub presence_penalty: Option<f32>,
    /// Not supported (refused unless 0).
    pub frequency_penalty: Option<f32>,
    /// Not supported (refused unless empty).
    pub logit_bias: Option<Value>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and no choices) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/completions`: the fields beside [`GenerationFields`].
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// A string, an array of one string, or an array of token ids.
    pub prompt: Value,
    /// Not supported (refused unless false).
    pub echo: Option<bool>,
    /// Not supported (refused unless 1).
    pub best_of: Option<u64>,
    /// Not supported (refused unless empty).
    pub suffix: Option<String>,
}

/// `POST /v1/chat/completions`: the fields beside [`GenerationFields`].
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far.
    pub messages: Vec<ChatMessageIn>,
    /// Not supported (refused unless empty).
    pub tools: Option<Value>,
    /// Only `{"type": "text"}` is supported.
    pub response_format: Option<Value>,
}

/// One message of a chat request.
#[derive(Debug, Deserialize)]
pub struct ChatMessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, or an array of `{"type": "text", "text": ...}` parts.
    #[serde(default)]
    pub content: Value,
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Tokens in the prompt (after the chat template).
    pub prompt_tokens: usize,
    /// Tokens generated (an end-of-sequence token included).
    pub completion_tokens: usize,
    /// The sum.
    pub total_tokens: usize,
}

impl Usage {
    /// Counts with their total.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// A response or chunk's header fields.
#[derive(Clone, Debug, Serialize)]
pub struct Header {
    /// `cmpl-...` or `chatcmpl-...`, the same in every chunk of a stream.
    pub id: String,
    /// `text_completion`, `chat.completion` or `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds when the request arrived.
    pub created: u64,
    /// The served model's name.
    pub model: String,
}

/// `/v1/completions` response, and (with `finish_reason` null until the end) each chunk.
#[derive(Debug, Serialize)]
pub struct CompletionResponse {
    /// Id, object, created, model.
    #[serde(flatten)]
    pub header: Header,
    /// One choice, or none in the usage chunk of a stream.
    pub choices: Vec<CompletionChoice>,
    /// Counts (in a stream, only in the last chunk when asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A completion choice.
#[derive(Debug, Serialize)]
pub struct CompletionChoice {
    /// Always 0 (one choice per request).
    pub index: u32,
    /// The text (in a stream, this chunk's piece of it).
    pub text: String,
    /// Always null.
    pub logprobs: Option<()>,
    /// `stop`, `length`, or null while streaming.
    pub finish_reason: Option<&'static str>,
}

/// `/v1/chat/completions` response.
#[derive(Debug, Serialize)]
pub struct ChatResponse {
    /// Id, object, created, model.
    #[serde(flatten)]
    pub header: Header,
    /// One choice.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// A chat choice.
#[derive(Debug, Serialize)]
pub struct ChatChoice {
    /// Always 0.
    pub index: u32,
    /// The assistant's message.
    pub message: ChatMessageOut,
    /// Always null.
    pub logprobs: Option<()>,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
}

/// The assistant's message.
#[derive(Debug, Serialize)]
pub struct ChatMessageOut {
    /// Always `assistant`.
    pub role: &'static str,
    /// The generated text.
    pub content: String,
}

/// One streamed chat chunk.
#[derive(Debug, Serialize)]
pub struct ChatChunk {
    /// Id, object (`chat.completion.chunk`), created, model.
    #[serde(flatten)]
    pub header: Header,
    /// One choice, or none in the usage chunk.
    pub choices: Vec<ChatChunkChoice>,
    /// Counts, only in the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A chat chunk's choice.
#[derive(Debug, Serialize)]
pub struct ChatChunkChoice {
    /// Always 0.
    pub index: u32,
    /// What this chunk adds to the message.
    pub delta: ChatDelta,
    /// Always null.
    pub logprobs: Option<()>,
    /// `stop` or `length` in the last content chunk, else null.
    pub finish_reason: Option<&'static str>,
}

/// A chat chunk's delta: the role in the first chunk, then content pieces.
#[derive(Debug, Default, Serialize)]
pub struct ChatDelta {
    /// `assistant` in the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// A piece of the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// The one served model.
    pub data: Vec<ModelCard>,
}

/// One model of `/v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelCard {
    /// The name requests pass as `model`.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds when the server started.
    pub created: u64,
    /// Always `warp-bitnet`.
    pub owned_by: &'static str,
    /// The context length (vLLM's field name).
    pub max_model_len: usize,
}
