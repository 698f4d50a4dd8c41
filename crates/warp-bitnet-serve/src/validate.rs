//! Checks a request once, at the door, and turns it into what the scheduler needs: each
//! error names the field at fault.

use serde_json::Value;

use crate::error::ApiError;
use crate::model::{Codec, Sampling};
use crate::openai::{ChatMessageIn, ChatRequest, CompletionRequest, GenerationFields};

/// Most stop strings per request.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// A request's generation settings, checked.
#[derive(Clone, Debug)]
pub struct Params {
    /// Most tokens to generate; fits the context with the prompt.
    pub max_tokens: usize,
    /// Sampler settings (with a seed drawn at random where the request gave none).
    pub sampling: Sampling,
    /// Strings that end the generation.
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Answer with server-sent events.
    pub stream: bool,
    /// Add a usage chunk at the end of the stream.
    pub include_usage: bool,
}

/// The requested `max_tokens` (None: as many as the context leaves) and the settings
/// checked before the prompt is tokenized.
pub struct Checked {
    /// Settings; `max_tokens` is set by [`fit_context`].
    pub params: Params,
    requested_max_tokens: Option<u64>,
    max_tokens_param: &'static str,
}

/// Checks the fields both endpoints share, against the served `model_name`.
pub fn check_fields(f: &GenerationFields, model_name: &str) -> Result<Checked, ApiError> {
    if f.model != model_name {
        return Err(ApiError::model_not_found(&f.model, model_name));
    }
    refuse_unsupported(f)?;
    let temperature = f.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = f.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("`top_p` must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = match f.top_k.unwrap_or(0) {
        -1 => 0,
        k if k >= 0 => k as usize,
        k => {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be -1, 0 (both: all tokens) or positive, got {k}"),
            ))
        }
    };
    let repetition_penalty = f.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
        return Err(ApiError::invalid(
            "repetition_penalty",
            format!("`repetition_penalty` must be a positive number, got {repetition_penalty}"),
        ));
    }
    let (requested_max_tokens, max_tokens_param) = match (f.max_tokens, f.max_completion_tokens) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "max_completion_tokens",
                "give `max_tokens` or `max_completion_tokens`, not both",
            ))
        }
        (Some(n), None) => (Some(n), "max_tokens"),
        (None, Some(n)) => (Some(n), "max_completion_tokens"),
        (None, None) => (None, "max_tokens"),
    };
    if requested_max_tokens == Some(0) {
        return Err(ApiError::invalid(
            max_tokens_param,
            format!("`{max_tokens_param}` must be at least 1"),
        ));
    }
    let stream = f.stream.unwrap_or(false);
    if f.stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            "stream_options",
            "`stream_options` is only allowed with `stream: true`",
        ));
    }
    Ok(Checked {
        params: Params {
            max_tokens: 0,
            sampling: Sampling {
                temperature,
                top_p,
                top_k,
                repetition_penalty,
                // The bits of a negative seed are as good a seed as any.
                seed: f.seed.map_or_else(rand::random, |s| s as u64),
            },
            stop: stop_strings(f.stop.as_ref())?,
            ignore_eos: f.ignore_eos.unwrap_or(false),
            stream,
            include_usage: f.stream_options.as_ref().is_some_and(|o| o.include_usage),
        },
        requested_max_tokens,
        max_tokens_param,
    })
}

/// Refuses the OpenAI fields this server does not implement, where they ask for more than
/// the default (silently ignoring them would give wrong results).
fn refuse_unsupported(f: &GenerationFields) -> Result<(), ApiError> {
    if f.n.is_some_and(|n| n != 1) {
        return Err(ApiError::unsupported("n", "more than one choice"));
    }
    let off = |v: &Option<Value>| {
        matches!(v, None | Some(Value::Null) | Some(Value::Bool(false)))
            || v.as_ref().and_then(Value::as_u64) == Some(0)
    };
    if !off(&f.logprobs) {
        return Err(ApiError::unsupported(
            "logprobs",
            "returning log-probabilities",
        ));
    }
    if !off(&f.top_logprobs) {
        return Err(ApiError::unsupported(
            "top_logprobs",
            "returning log-probabilities",
        ));
    }
    if f.presence_penalty.is_some_and(|p| p != 0.0) {
        return Err(ApiError::unsupported(
            "presence_penalty",
            "a presence penalty",
        ));
    }
    if f.frequency_penalty.is_some_and(|p| p != 0.0) {
        return Err(ApiError::unsupported(
            "frequency_penalty",
            "a frequency penalty",
        ));
    }
    let empty = |v: &Option<Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    if !empty(&f.logit_bias) {
        return Err(ApiError::unsupported("logit_bias", "a logit bias"));
    }
    Ok(())
}

fn stop_strings(stop: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let list = match stop {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::invalid("stop", "`stop` must be a string or an array of strings")
            })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "`stop` must be a string or an array of strings",
            ))
        }
    };
    if list.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "`stop` holds {} strings; at most {MAX_STOP_STRINGS} are allowed",
                list.len()
            ),
        ));
    }
    if let Some(s) = list
        .iter()
        .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "each stop string must be 1 to {MAX_STOP_BYTES} bytes long, got {} bytes",
                s.len()
            ),
        ));
    }
    Ok(list)
}

/// Sets `max_tokens` so that prompt and generation fit the model's context, or says why
/// they cannot.
pub fn fit_context(
    checked: Checked,
    prompt_len: usize,
    max_context: usize,
) -> Result<Params, ApiError> {
    let Checked {
        mut params,
        requested_max_tokens,
        max_tokens_param,
    } = checked;
    if prompt_len >= max_context {
        return Err(ApiError::context_exceeded(
            "prompt",
            format!(
                "the prompt is {prompt_len} tokens; this model's context is {max_context} tokens, \
                 which must also hold at least one generated token"
            ),
        ));
    }
    let room = max_context - prompt_len;
    params.max_tokens = match requested_max_tokens {
        None => room,
        Some(n) if n <= room as u64 => n as usize,
        Some(n) => {
            return Err(ApiError::context_exceeded(
                max_tokens_param,
                format!(
                    "this model's context is {max_context} tokens; the prompt takes {prompt_len}, \
                     leaving {room}, but `{max_tokens_param}` asks for {n}"
                ),
            ))
        }
    };
    Ok(params)
}

/// The completion request's prompt as token ids.
pub fn completion_prompt(
    req: &CompletionRequest,
    codec: &dyn Codec,
    vocab: usize,
) -> Result<Vec<u32>, ApiError> {
    if req.echo == Some(true) {
        return Err(ApiError::unsupported("echo", "echoing the prompt"));
    }
    if req.best_of.is_some_and(|n| n != 1) {
        return Err(ApiError::unsupported("best_of", "more than one candidate"));
    }
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix", "a suffix"));
    }
    const SHAPE: &str =
        "`prompt` must be a string, an array of one string, or an array of token ids";
    let ids = match &req.prompt {
        Value::String(text) => encode(codec, text, true, "prompt")?,
        Value::Array(items) if items.len() == 1 && items[0].is_string() => {
            encode(codec, items[0].as_str().unwrap_or_default(), true, "prompt")?
        }
        Value::Array(items) if items.iter().all(Value::is_string) && !items.is_empty() => {
            return Err(ApiError::unsupported(
                "prompt",
                "more than one prompt per request",
            ))
        }
        Value::Array(items) => {
            token_ids(items, vocab).ok_or_else(|| ApiError::invalid("prompt", SHAPE))??
        }
        _ => return Err(ApiError::invalid("prompt", SHAPE)),
    };
    if ids.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` is empty"));
    }
    Ok(ids)
}

/// Token ids of a JSON array: None where it is not an array of non-negative integers.
fn token_ids(items: &[Value], vocab: usize) -> Option<Result<Vec<u32>, ApiError>> {
    let ids: Vec<u64> = items.iter().map(Value::as_u64).collect::<Option<_>>()?;
    Some(
        match ids.iter().enumerate().find(|(_, &id)| id >= vocab as u64) {
            Some((i, id)) => Err(ApiError::invalid(
                "prompt",
                format!("`prompt[{i}]` is token id {id}, outside the vocabulary of {vocab} tokens"),
            )),
            None => Ok(ids.into_iter().map(|id| id as u32).collect()),
        },
    )
}

fn encode(
    codec: &dyn Codec,
    text: &str,
    add_special_tokens: bool,
    param: &str,
) -> Result<Vec<u32>, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid(param, format!("`{param}` is empty")));
    }
    codec
        .encode(text, add_special_tokens)
        .map_err(|e| ApiError::invalid(param, format!("`{param}`: {e}")))
}

/// The chat request's messages as the prompt's token ids (through the chat template).
pub fn chat_prompt(req: &ChatRequest, codec: &dyn Codec) -> Result<Vec<u32>, ApiError> {
    let no_tools = match &req.tools {
        None | Some(Value::Null) => true,
        Some(Value::Array(tools)) => tools.is_empty(),
        Some(_) => false,
    };
    if !no_tools {
        return Err(ApiError::unsupported("tools", "tool calling"));
    }
    if let Some(format) = req.response_format.as_ref().filter(|f| !f.is_null()) {
        if format.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::unsupported(
                "response_format",
                "a format other than text",
            ));
        }
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` is empty"));
    }
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let text = codec
        .chat_prompt(&messages)
        .map_err(|e| ApiError::invalid("messages", format!("`messages`: {e}")))?;
    // The template writes the BOS token itself where the model uses one.
    encode(codec, &text, false, "messages")
}

fn message(i: usize, m: &ChatMessageIn) -> Result<(String, String), ApiError> {
    const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];
    if !ROLES.contains(&m.role.as_str()) {
        return Err(ApiError::invalid(
            format!("messages[{i}].role"),
            format!(
                "`messages[{i}].role` is `{}`; expected one of {}",
                m.role,
                ROLES.join(", ")
            ),
        ));
    }
    let param = format!("messages[{i}].content");
    let content = match &m.content {
        Value::String(s) => s.clone(),
        // An assistant turn that only called tools has no content.
        Value::Null => String::new(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(t)) => Ok(t),
                _ => Err(ApiError::invalid(
                    param.clone(),
                    format!("`{param}` parts must be {{\"type\": \"text\", \"text\": ...}}; other kinds are not supported"),
                )),
            })
            .collect::<Result<String, _>>()?,
        _ => {
            return Err(ApiError::invalid(
                param.clone(),
                format!("`{param}` must be a string or an array of text parts"),
            ))
        }
    };
    Ok((m.role.clone(), content))
}
