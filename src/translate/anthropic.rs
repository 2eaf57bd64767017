//! OpenAI chat ⇄ Anthropic Messages.
//!
//! - [`request_to_anthropic`]: an OpenAI `chat/completions` body → a Messages body.
//! - [`response_from_anthropic`]: a Messages response → `chat.completion` (thinking as the
//!   non-standard `reasoning_content` and `thinking_blocks`, as LiteLLM returns them).
//! - [`AnthropicStream`]: Anthropic SSE events → `chat.completion.chunk` SSE bytes.
//! - [`error_from_anthropic`]: an Anthropic error answer → [`GatewayError`].
//!
//! ## Request fields
//! | OpenAI | Anthropic |
//! |---|---|
//! | `system` / `developer` messages (anywhere) | `system` text blocks, in order |
//! | `user` text / `image_url` (data URL → base64 source, http(s) → url source) / `file` (PDF data URL → document) | user content blocks (empty text dropped) |
//! | `assistant` `thinking_blocks` (as an answer carried them) + content + `tool_calls` | the `thinking` / `redacted_thinking` blocks first and unchanged (a block of another shape is a 400 naming it), text blocks, `tool_use {id, name, input}` (`arguments` must be a JSON object, else 400; `""` → `{}`) |
//! | `tool` messages (+ a following `user`) | one user turn, `tool_result` blocks first |
//! | `max_completion_tokens` ?? `max_tokens` ?? [`AnthropicOptions::default_max_tokens`] | `max_tokens` |
//! | `stop` (string or list) | `stop_sequences` (whitespace-only entries dropped: Anthropic rejects them) |
//! | `temperature` 0..=1, `top_p` | same (a temperature above 1 is a 400, never clamped) |
//! | `tools` / `tool_choice` / `parallel_tool_calls: false` | `tools` (`input_schema`) / `auto`·`any`·`none`·`tool` / `disable_parallel_tool_use` |
//! | `user` (else `safety_identifier`) | `metadata.user_id` |
//! | `response_format: json_schema` | `output_config.format {type: json_schema, schema}` |
//! | `reasoning_effort: low/medium/high` | `thinking {type: enabled, budget_tokens: 1024/4096/16384}` (must be below `max_tokens`, else 400); `minimal`/`none` dropped |
//! | `stream` | `stream` |
//! | `top_k`, `thinking` (Anthropic-native extensions) | passed through |
//!
//! Dropped (hints and bookkeeping): `stream_options`, `seed`, `logit_bias`, `presence_penalty`,
//! `frequency_penalty`, `metadata`, `store`, `service_tier`, `prompt_cache_key`, `verbosity`,
//! image `detail`, message `name`, and any field the Messages API does not know (it rejects
//! unknown fields). Refused with 400: `n > 1`, `logprobs: true`,
//! `top_logprobs`, `audio`, `modalities` other than text, `prediction`, `web_search_options`,
//! `response_format: json_object`, legacy `functions`/`function_call`, `input_audio` parts,
//! `file_id` parts, custom tools.
//!
//! ## Errors (upstream → OpenAI face)
//! The meaning is kept: OpenAI's `code` where the meaning has one, otherwise Anthropic's
//! `error.type` as sent; the message as sent (scrubbed of the adapter's key); `Retry-After` kept.
//! On the Anthropic face (`/v1/messages` passed through) the client gets Anthropic's own status
//! and type instead.
//!
//! | Anthropic | status | `type` | `code` |
//! |---|---|---|---|
//! | 400 `invalid_request_error` "prompt is too long…" (or "…exceed context limit") | 400 | `invalid_request_error` | `context_length_exceeded` |
//! | 400 "…credit balance is too low…", or `billing_error` (402) | 429 | `insufficient_quota` | `insufficient_quota` |
//! | 400 `invalid_request_error` | 400 | `invalid_request_error` | `invalid_request_error` |
//! | 401 `authentication_error` | 401 | `authentication_error` | `invalid_api_key` |
//! | 403 `permission_error` | 403 | `permission_error` | `permission_error` |
//! | 404 `not_found_error` naming a model | 404 | `invalid_request_error` | `model_not_found` |
//! | other 404 (a wrong base URL) | 502 | `api_error` | `not_found_error` |
//! | 413 `request_too_large` | 413 | `invalid_request_error` | `request_too_large` |
//! | 429 `rate_limit_error` | 429 + `Retry-After` | `rate_limit_error` | `rate_limit_exceeded` |
//! | 529 `overloaded_error` (or that type under any status) | 503 + `Retry-After` | `service_unavailable_error` | `server_is_overloaded` |
//! | 500 `api_error` | 502 | `api_error` | `api_error` |
//! | 504 `timeout_error` | 504 | `timeout_error` | `timeout_error` |
//! | other 4xx / 5xx | kept | `invalid_request_error` / `api_error` | Anthropic's type |
//!
//! An in-stream `error` event is mapped the same way, from the status its type "would normally
//! correspond to".

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::{
    DONE, ErrorRow, Flow, StreamTranslator, chunk_prefix, chunk_suffix, is_json_string,
    protocol_error, split_data_url, usage_json,
};
use crate::error::GatewayError;
use crate::provider::headers::HeaderPolicy;
use crate::provider::is_context_length_message;
use crate::usage::Usage;

/// Options of the OpenAI → Anthropic request translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnthropicOptions {
    /// `max_tokens` sent when the client set neither `max_completion_tokens` nor `max_tokens`
    /// (Anthropic requires it).
    pub default_max_tokens: u64,
}

impl Default for AnthropicOptions {
    fn default() -> Self {
        AnthropicOptions {
            default_max_tokens: 4096,
        }
    }
}

fn bad(msg: impl Into<Cow<'static, str>>, param: impl Into<Cow<'static, str>>) -> GatewayError {
    GatewayError::bad_request(msg, None).with_param(param)
}

const PROVIDER: &str = "Anthropic";

fn unsupported(field: &'static str) -> GatewayError {
    super::unsupported(field, PROVIDER)
}

/// The JSON text of a content that is a string or a list of `{type:"text", text}` parts.
fn text_of(content: &Value, param: &str) -> Result<Vec<String>, GatewayError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p.get("type").and_then(Value::as_str) {
                Some("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .map(|t| Ok(t.to_owned())),
                Some("refusal") => p
                    .get("refusal")
                    .and_then(Value::as_str)
                    .map(|t| Ok(t.to_owned())),
                _ => Some(Err(bad(
                    "only text parts are allowed here",
                    format!("{param}[{i}]"),
                ))),
            })
            .collect(),
        _ => Err(bad(
            "content must be a string or an array",
            param.to_owned(),
        )),
    }
}

fn text_block(t: String) -> Value {
    json!({"type": "text", "text": t})
}

/// An OpenAI user content part → an Anthropic content block (`None`: dropped, e.g. empty text).
fn user_part(p: &Value, param: String) -> Result<Option<Value>, GatewayError> {
    match p.get("type").and_then(Value::as_str) {
        Some("text") => {
            let t = p.get("text").and_then(Value::as_str).unwrap_or("");
            Ok((!t.is_empty()).then(|| text_block(t.to_owned())))
        }
        Some("image_url") => {
            let url = p
                .get("image_url")
                .and_then(|i| i.get("url").or(Some(i)))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("image_url.url is required", param.clone()))?;
            if let Some((media, data)) = split_data_url(url) {
                Ok(Some(json!({"type": "image", "source": {
                    "type": "base64", "media_type": media, "data": data}})))
            } else if url.starts_with("https://") || url.starts_with("http://") {
                Ok(Some(
                    json!({"type": "image", "source": {"type": "url", "url": url}}),
                ))
            } else {
                Err(bad(
                    "image_url.url must be an http(s) URL or a base64 data URL",
                    param,
                ))
            }
        }
        Some("file") => {
            let f = p.get("file").unwrap_or(&Value::Null);
            match f
                .get("file_data")
                .and_then(Value::as_str)
                .and_then(split_data_url)
            {
                Some((media, data)) => Ok(Some(json!({"type": "document", "source": {
                    "type": "base64", "media_type": media, "data": data}}))),
                None => Err(bad(
                    "only inline file_data (a base64 data URL) is supported by the Anthropic provider",
                    param,
                )
                .with_code("unsupported_parameter")),
            }
        }
        Some("input_audio") => Err(bad(
            "audio input is not supported by the Anthropic provider",
            param,
        )
        .with_code("unsupported_parameter")),
        _ => Err(bad("unknown content part type", param)),
    }
}

/// Translate an OpenAI chat request body into an Anthropic Messages request body for
/// `upstream_model`. See the module docs for the field rules.
pub fn request_to_anthropic(
    body: &[u8],
    upstream_model: &str,
    opts: &AnthropicOptions,
) -> Result<Bytes, GatewayError> {
    let (req, messages) = super::chat_request(body, PROVIDER)?;
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(unsupported("n"));
    }
    let mut out = Map::new();
    out.insert("model".into(), Value::from(upstream_model));

    let (system, turns) = collect_turns(&messages)?;
    let msgs = turns_to_messages(turns);
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(msgs));

    // max_tokens
    let max_tokens = req
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| req.get("max_tokens").and_then(Value::as_u64))
        .unwrap_or(opts.default_max_tokens);
    out.insert("max_tokens".into(), Value::from(max_tokens));

    sampling_to_anthropic(&req, &mut out)?;
    tools_to_anthropic(&req, &mut out)?;
    tool_choice_to_anthropic(&req, &mut out)?;
    response_format_to_anthropic(&req, &mut out)?;
    reasoning_to_anthropic(&req, max_tokens, &mut out)?;

    serde_json::to_vec(&Value::Object(out))
        .map(Bytes::from)
        .map_err(|e| GatewayError::internal(format!("serializing the Anthropic request: {e}")))
}

/// One Anthropic turn: its role and content blocks.
type Turn = (&'static str, Vec<Value>);

/// The OpenAI messages → the `system` text blocks and the role turns (consecutive messages of
/// one role merged, empty ones dropped).
fn collect_turns(messages: &[Value]) -> Result<(Vec<Value>, Vec<Turn>), GatewayError> {
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Some((role, blocks)) = message_turn(i, m, &mut system)? else {
            continue;
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    Ok((system, turns))
}

/// Message `i` → its turn (`None`: a system/developer message, appended to `system`).
fn message_turn(
    i: usize,
    m: &Value,
    system: &mut Vec<Value>,
) -> Result<Option<Turn>, GatewayError> {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    let content = m.get("content").unwrap_or(&Value::Null);
    let param = format!("messages[{i}].content");
    let turn: Turn = match role {
        "system" | "developer" => {
            for t in text_of(content, &param)? {
                if !t.is_empty() {
                    system.push(text_block(t));
                }
            }
            return Ok(None);
        }
        "user" => ("user", user_blocks(content, param)?),
        "assistant" => ("assistant", assistant_blocks(i, m, content, &param)?),
        "tool" => ("user", vec![tool_result_block(i, m, content, &param)?]),
        "function" => return Err(unsupported("functions")),
        other => {
            return Err(bad(
                format!("unknown message role '{}'", crate::request::prefix(other)),
                format!("messages[{i}].role"),
            ));
        }
    };
    Ok(Some(turn))
}

/// A user message's content → its content blocks.
fn user_blocks(content: &Value, param: String) -> Result<Vec<Value>, GatewayError> {
    match content {
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![text_block(s.clone())]),
        Value::Array(parts) => {
            let mut b = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                if let Some(x) = user_part(p, format!("{param}[{j}]"))? {
                    b.push(x);
                }
            }
            Ok(b)
        }
        _ => Err(bad("content must be a string or an array", param)),
    }
}

/// Assistant message `i` → its `thinking_blocks` (unchanged, first), its text blocks, then a
/// `tool_use` block per tool call.
fn assistant_blocks(
    i: usize,
    m: &Value,
    content: &Value,
    param: &str,
) -> Result<Vec<Value>, GatewayError> {
    let mut blocks = thinking_blocks(i, m)?;
    blocks.extend(
        text_of(content, param)?
            .into_iter()
            .filter(|t| !t.is_empty())
            .map(text_block),
    );
    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
        for (j, c) in calls.iter().enumerate() {
            blocks.push(tool_use_block(i, j, c)?);
        }
    }
    Ok(blocks)
}

/// The `thinking_blocks` of assistant message `i` (as this translation returned them) → the
/// Anthropic `thinking` / `redacted_thinking` blocks, unchanged: Anthropic refuses a tool-use
/// loop with thinking whose earlier assistant turn lost them, or whose signature differs.
fn thinking_blocks(i: usize, m: &Value) -> Result<Vec<Value>, GatewayError> {
    let list = match m.get("thinking_blocks") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(bad(
                "thinking_blocks must be an array",
                format!("messages[{i}].thinking_blocks"),
            ));
        }
    };
    list.iter()
        .enumerate()
        .map(|(j, b)| {
            super::thinking_block(b).ok_or_else(|| {
                bad(
                    "a thinking block must be {type: \"thinking\", thinking, signature} or \
                     {type: \"redacted_thinking\", data}, as the answer carried it",
                    format!("messages[{i}].thinking_blocks[{j}]"),
                )
            })
        })
        .collect()
}

/// Tool call `j` of message `i` → a `tool_use` block.
fn tool_use_block(i: usize, j: usize, c: &Value) -> Result<Value, GatewayError> {
    let p = format!("messages[{i}].tool_calls[{j}]");
    let f = c
        .get("function")
        .ok_or_else(|| bad("only function tool calls are supported", p.clone()))?;
    let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
    let input: Value = if args.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(args)
            .map_err(|_| bad("function.arguments is not valid JSON", p.clone()))?
    };
    if !input.is_object() {
        return Err(bad("function.arguments must be a JSON object", p));
    }
    Ok(json!({
        "type": "tool_use",
        "id": c.get("id").cloned().unwrap_or(Value::Null),
        "name": f.get("name").cloned().unwrap_or(Value::Null),
        "input": input,
    }))
}

/// Tool message `i` → a `tool_result` block.
fn tool_result_block(
    i: usize,
    m: &Value,
    content: &Value,
    param: &str,
) -> Result<Value, GatewayError> {
    let id = m.get("tool_call_id").cloned().ok_or_else(|| {
        bad(
            "tool_call_id is required",
            format!("messages[{i}].tool_call_id"),
        )
    })?;
    let texts = text_of(content, param)?;
    let content = match (content, texts.len()) {
        (Value::String(_), _) | (_, 0) => Value::from(texts.into_iter().next().unwrap_or_default()),
        _ => Value::Array(
            texts
                .into_iter()
                .filter(|t| !t.is_empty())
                .map(text_block)
                .collect(),
        ),
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

/// The turns → Messages `messages`: tool_result blocks go first in their user turn; a final
/// assistant prefill must not end in whitespace.
fn turns_to_messages(turns: Vec<Turn>) -> Vec<Value> {
    let n_turns = turns.len();
    let mut msgs = Vec::with_capacity(n_turns);
    for (k, (role, mut blocks)) in turns.into_iter().enumerate() {
        if role == "user" {
            blocks.sort_by_key(|b| b.get("type").and_then(Value::as_str) != Some("tool_result"));
        }
        if role == "assistant" && k + 1 == n_turns {
            if let Some(Value::Object(last)) = blocks.last_mut() {
                if let Some(Value::String(t)) = last.get_mut("text") {
                    let trimmed = t.trim_end().len();
                    t.truncate(trimmed);
                }
            }
            blocks.retain(|b| b.get("text").and_then(Value::as_str) != Some(""));
        }
        if blocks.is_empty() {
            continue;
        }
        msgs.push(json!({"role": role, "content": blocks}));
    }
    msgs
}

/// Sampling and bookkeeping: `temperature`, `top_p`/`top_k`/`thinking`, `stop`, `stream`,
/// `user` → `metadata.user_id`.
fn sampling_to_anthropic(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    if let Some(t) = req.get("temperature").filter(|v| !v.is_null()) {
        let x = t.as_f64().ok_or_else(|| {
            GatewayError::bad_request("'temperature' must be a number", Some("temperature"))
        })?;
        if !(0.0..=1.0).contains(&x) {
            return Err(GatewayError::bad_request(
                "'temperature' must be between 0 and 1 for the Anthropic provider",
                Some("temperature"),
            ));
        }
        out.insert("temperature".into(), t.clone());
    }
    for key in ["top_p", "top_k", "thinking"] {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    stop_to_anthropic(req, out);
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), Value::Bool(true));
    }
    if let Some(user) = req
        .get("user")
        .and_then(Value::as_str)
        .or_else(|| req.get("safety_identifier").and_then(Value::as_str))
    {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    Ok(())
}

/// `stop` (string or list) → `stop_sequences`, whitespace-only entries dropped.
fn stop_to_anthropic(req: &Map<String, Value>, out: &mut Map<String, Value>) {
    match req.get("stop") {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(list)) => {
            let stops: Vec<Value> = list
                .iter()
                .filter(|s| s.as_str().is_some_and(|s| !s.trim().is_empty()))
                .cloned()
                .collect();
            if !stops.is_empty() {
                out.insert("stop_sequences".into(), Value::Array(stops));
            }
        }
        _ => {}
    }
}

/// Function `tools` → `tools` with `input_schema`.
fn tools_to_anthropic(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    let functions = super::function_tools(req, "Anthropic")?;
    if !functions.is_empty() {
        let mut list = Vec::with_capacity(functions.len());
        for f in functions {
            let mut tool = super::named_tool(f);
            let schema = f
                .get("parameters")
                .filter(|v| !v.is_null())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            tool.insert("input_schema".into(), schema);
            if let Some(s) = f.get("strict").filter(|v| v.is_boolean()) {
                tool.insert("strict".into(), s.clone());
            }
            list.push(Value::Object(tool));
        }
        out.insert("tools".into(), Value::Array(list));
    }
    Ok(())
}

/// `tool_choice` and `parallel_tool_calls: false` → `tool_choice` (with
/// `disable_parallel_tool_use`). Runs after [`tools_to_anthropic`].
fn tool_choice_to_anthropic(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    let mut choice = match req.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "required" => Some(json!({"type": "any"})),
            "none" => Some(json!({"type": "none"})),
            _ => {
                return Err(GatewayError::bad_request(
                    "unknown tool_choice",
                    Some("tool_choice"),
                ));
            }
        },
        Some(obj) => match obj
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => Some(json!({"type": "tool", "name": name})),
            None => {
                return Err(GatewayError::bad_request(
                    "only {type: function, function: {name}} tool_choice objects are supported",
                    Some("tool_choice"),
                ));
            }
        },
    };
    if req.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false)
        && out.contains_key("tools")
    {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c.get("type").and_then(Value::as_str) != Some("none") {
            if let Some(o) = c.as_object_mut() {
                o.insert("disable_parallel_tool_use".into(), Value::Bool(true));
            }
        }
    }
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }
    Ok(())
}

/// `response_format: json_schema` → `output_config.format`; `text` dropped; others refused.
fn response_format_to_anthropic(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    let Some(rf) = req.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .cloned()
                .ok_or_else(|| {
                    GatewayError::bad_request(
                        "response_format.json_schema.schema is required",
                        Some("response_format"),
                    )
                })?;
            out.insert(
                "output_config".into(),
                json!({"format": {"type": "json_schema", "schema": schema}}),
            );
        }
        _ => return Err(unsupported("response_format")),
    }
    Ok(())
}

/// `reasoning_effort` → `thinking` with a budget below `max_tokens`.
fn reasoning_to_anthropic(
    req: &Map<String, Value>,
    max_tokens: u64,
    out: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    match req.get("reasoning_effort").and_then(Value::as_str) {
        None | Some("none" | "minimal") => {}
        Some(effort) => {
            let budget: u64 = match effort {
                "low" => 1024,
                "medium" => 4096,
                "high" => 16384,
                _ => return Err(unsupported("reasoning_effort")),
            };
            if budget >= max_tokens {
                return Err(GatewayError::bad_request(
                    format!(
                        "reasoning_effort '{effort}' needs a thinking budget of {budget} tokens, \
                         which must be below max_tokens ({max_tokens})"
                    ),
                    Some("reasoning_effort"),
                ));
            }
            out.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": budget}),
            );
        }
    }
    Ok(())
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, null, unknown
        _ => "stop",
    }
}

/// Anthropic's `usage` (all fields optional, as in stream deltas).
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens_details: Option<ThinkingDetails>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct ThinkingDetails {
    #[serde(default)]
    thinking_tokens: Option<u64>,
}

/// Running Anthropic usage; fields are overwritten (cumulative counts), never added.
#[derive(Debug, Default, Clone, Copy)]
struct UsageAcc {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    thinking: u64,
}

impl UsageAcc {
    fn apply(&mut self, u: &WireUsage) {
        if let Some(x) = u.input_tokens {
            self.input = x;
        }
        if let Some(x) = u.output_tokens {
            self.output = x;
        }
        if let Some(x) = u.cache_read_input_tokens {
            self.cache_read = x;
        }
        if let Some(x) = u.cache_creation_input_tokens {
            self.cache_write = x;
        }
        if let Some(x) = u.output_tokens_details.and_then(|d| d.thinking_tokens) {
            self.thinking = x;
        }
    }

    fn usage(&self) -> Usage {
        usage_from_anthropic(
            self.input,
            self.output,
            self.cache_read,
            self.cache_write,
            self.thinking,
        )
    }
}

/// Anthropic usage → OpenAI semantics: `prompt_tokens = input + cache_read + cache_write`
/// (Anthropic's `input_tokens` excludes both), `cached_tokens = cache_read`,
/// `cache_write_tokens = cache_write`, `completion_tokens = output` (thinking included),
/// `reasoning_tokens = thinking`.
pub fn usage_from_anthropic(
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    thinking: u64,
) -> Usage {
    let prompt = input.saturating_add(cache_read).saturating_add(cache_write);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: output,
        total_tokens: prompt.saturating_add(output),
        cached_tokens: cache_read,
        cache_write_tokens: cache_write,
        reasoning_tokens: thinking,
    }
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

/// Translate an Anthropic Messages response into an OpenAI `chat.completion` body.
/// `created` is the Unix time to report (Anthropic sends none). `thinking` and
/// `redacted_thinking` blocks become the message's non-standard `reasoning_content` (the
/// thinking texts, concatenated) and `thinking_blocks` (each block as sent, signature
/// included: a client continuing a tool-use loop sends them back), as LiteLLM does.
pub fn response_from_anthropic(body: &[u8], created: u64) -> Result<Bytes, GatewayError> {
    let m: WireMessage = serde_json::from_slice(body)
        .map_err(|e| protocol_error(format!("invalid Anthropic response: {e}")))?;
    let mut text = String::new();
    let mut has_text = false;
    let mut thinking = String::new();
    let mut blocks = Vec::new();
    let mut calls = Vec::new();
    for b in &m.content {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                has_text = true;
                text.push_str(b.get("text").and_then(Value::as_str).unwrap_or(""));
            }
            Some("thinking" | "redacted_thinking") => {
                thinking.push_str(b.get("thinking").and_then(Value::as_str).unwrap_or(""));
                blocks.extend(super::thinking_block(b));
            }
            Some("tool_use") => {
                let args = b
                    .get("input")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".to_owned());
                calls.push(json!({
                    "id": b.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {"name": b.get("name").cloned().unwrap_or(Value::Null), "arguments": args},
                }));
            }
            _ => {}
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if has_text { Value::String(text) } else { Value::Null },
        "refusal": null,
    });
    if let Some(o) = message.as_object_mut() {
        if !thinking.is_empty() {
            o.insert("reasoning_content".into(), Value::String(thinking));
        }
        if !blocks.is_empty() {
            o.insert("thinking_blocks".into(), Value::Array(blocks));
        }
        if !calls.is_empty() {
            o.insert("tool_calls".into(), Value::Array(calls));
        }
    }
    let mut acc = UsageAcc::default();
    acc.apply(&m.usage);
    let doc = json!({
        "id": format!("chatcmpl-{}", m.id),
        "object": "chat.completion",
        "created": created,
        "model": m.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(m.stop_reason.as_deref()),
        }],
        "usage": usage_json(&acc.usage()),
    });
    serde_json::to_vec(&doc)
        .map(Bytes::from)
        .map_err(|e| GatewayError::internal(format!("serializing the response: {e}")))
}

/// Map an Anthropic error answer (`status`, headers, `{"type":"error","error":{type,message}}`
/// body) to the gateway error the client sees. See the module docs for the table. The
/// Anthropic type is remembered, so the Anthropic face (`/v1/messages`) answers exactly what
/// Anthropic did.
pub fn error_from_anthropic(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    provider: &Arc<str>,
) -> GatewayError {
    #[derive(Deserialize)]
    struct Body {
        error: Obj,
    }
    #[derive(Deserialize)]
    struct Obj {
        #[serde(default, rename = "type")]
        ty: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    let parsed = serde_json::from_slice::<Body>(body).ok().map(|b| b.error);
    let (ty, message) = match parsed {
        Some(Obj { ty, message }) => (ty, message),
        None => (None, None),
    };
    let message = message
        .or_else(|| crate::provider::error_message(body))
        .unwrap_or_else(|| crate::provider::status_sentence(provider, status));
    let row = anthropic_row(status.as_u16(), ty.as_deref().unwrap_or(""), &message);
    let e = row.into_error(status.as_u16(), message, headers, Some(provider.clone()));
    match ty {
        Some(ty) => e.with_anthropic_type(ty),
        None => e,
    }
}

/// The table of the module docs: Anthropic status, `error.type` and message → the OpenAI face.
fn anthropic_row(status: u16, ty: &str, message: &str) -> ErrorRow {
    let own = |fallback: &'static str| -> Cow<'static, str> {
        if ty.is_empty() {
            Cow::Borrowed(fallback)
        } else {
            Cow::Owned(ty.to_owned())
        }
    };
    let lower = message.to_ascii_lowercase();
    match (status, ty) {
        (529, _) | (_, "overloaded_error") => ErrorRow::new(
            529,
            503,
            "service_unavailable_error",
            "server_is_overloaded",
        ),
        (_, "billing_error") => ErrorRow::new(429, 429, "insufficient_quota", "insufficient_quota"),
        (400, _) if lower.contains("credit balance") => {
            ErrorRow::new(429, 429, "insufficient_quota", "insufficient_quota")
        }
        (400 | 413, _) if is_context_length_message(message) => {
            ErrorRow::new(400, 400, "invalid_request_error", "context_length_exceeded")
        }
        (401, _) | (_, "authentication_error") => {
            ErrorRow::new(401, 401, "authentication_error", "invalid_api_key")
        }
        (403, _) | (_, "permission_error") => {
            ErrorRow::new(403, 403, "permission_error", own("permission_error"))
        }
        (404, _) if lower.contains("model") => {
            ErrorRow::new(404, 404, "invalid_request_error", "model_not_found")
        }
        (404, _) => ErrorRow::new(404, 502, "api_error", own("not_found_error")),
        (413, _) => ErrorRow::new(413, 413, "invalid_request_error", own("request_too_large")),
        (429, _) | (_, "rate_limit_error") => {
            ErrorRow::new(429, 429, "rate_limit_error", "rate_limit_exceeded")
        }
        (504, _) | (_, "timeout_error") => {
            ErrorRow::new(504, 504, "timeout_error", own("timeout_error"))
        }
        (500, _) => ErrorRow::new(500, 502, "api_error", own("api_error")),
        (400..=499, _) => ErrorRow::new(
            status,
            status,
            "invalid_request_error",
            own("invalid_request_error"),
        ),
        (501..=599, _) => ErrorRow::new(status, status, "api_error", own("api_error")),
        _ => ErrorRow::new(502, 502, "api_error", own("api_error")),
    }
}

/// The status an in-stream `error` event of `error_type` "would normally correspond to".
fn status_of_error_type(ty: &str) -> u16 {
    match ty {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default)]
    index: Option<usize>,
    #[serde(default, borrow)]
    message: Option<StartMessage<'a>>,
    #[serde(default, borrow)]
    content_block: Option<Block<'a>>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default, borrow)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(default, borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    model: Cow<'a, str>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    name: Option<&'a RawValue>,
    #[serde(default, borrow)]
    thinking: Option<&'a RawValue>,
    #[serde(default, borrow)]
    signature: Option<&'a RawValue>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(rename = "type", default, borrow)]
    ty: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    #[serde(default, borrow)]
    partial_json: Option<&'a RawValue>,
    #[serde(default, borrow)]
    thinking: Option<&'a RawValue>,
    #[serde(default, borrow)]
    signature: Option<&'a RawValue>,
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    #[serde(rename = "type", default, borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    message: Cow<'a, str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    Tool(u32),
    /// A `thinking` or `redacted_thinking` block (its ordinal among them).
    Thinking(u32),
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `message_start`.
    Start,
    Open,
    /// `message_stop` or an error was translated.
    Done,
}

/// The streaming state machine: Anthropic SSE events → OpenAI `chat.completion.chunk` SSE bytes.
///
/// - `message_start` → a `role: assistant` chunk (the chunk `id` is `chatcmpl-<msg id>`, the
///   `model` Anthropic's, `created` the value given to [`new`](Self::new)).
/// - text deltas → `delta.content`; a `tool_use` block → a tool-call start (`id`, `name`,
///   `arguments: ""`) with OpenAI's **tool ordinal** as `index` (not the content-block index);
///   `input_json_delta` fragments → `arguments` fragments; `thinking_delta`s → the non-standard
///   `delta.reasoning_content`; when a `thinking` (or `redacted_thinking`) block ends, the
///   whole block, signature included, as one entry of the non-standard `delta.thinking_blocks`
///   (`{index, type: "thinking", thinking, signature}` or `{index, type: "redacted_thinking",
///   data}`, `index` the block's ordinal among them, as the openai SDK's stream helper merges
///   lists); server-tool blocks are skipped.
/// - the first `message_delta` with a `stop_reason` → the `finish_reason` chunk; usage is
///   cumulative: the last value of each counter wins.
/// - `message_stop` → the usage chunk (`choices: []`) when `include_usage`, then `[DONE]`.
/// - an `error` event → one in-band `data: {"error":..}` event and the end, without `[DONE]`.
/// - `ping` and unknown events → nothing.
#[derive(Debug)]
pub struct AnthropicStream {
    include_usage: bool,
    created: u64,
    provider: Option<Arc<str>>,
    scrub: Option<Arc<HeaderPolicy>>,
    prefix: BytesMut,
    blocks: Vec<BlockKind>,
    next_tool: u32,
    usage: UsageAcc,
    finish_sent: bool,
    phase: Phase,
    next_thinking: u32,
    /// The thinking block being streamed: its text and signature (JSON-escaped, without the
    /// quotes: fragments concatenate), or a redacted block's `data` (raw JSON).
    thought: String,
    signature: String,
    redacted: Option<String>,
}

impl AnthropicStream {
    /// A translator for one response. `include_usage`: emit the OpenAI usage chunk before
    /// `[DONE]` (and `"usage":null` on every other chunk), as `stream_options.include_usage`
    /// asks. `created` is the Unix time reported in every chunk.
    pub fn new(include_usage: bool, created: u64) -> Self {
        AnthropicStream {
            include_usage,
            created,
            provider: None,
            scrub: None,
            prefix: BytesMut::new(),
            blocks: Vec::with_capacity(4),
            next_tool: 0,
            usage: UsageAcc::default(),
            finish_sent: false,
            phase: Phase::Start,
            next_thinking: 0,
            thought: String::new(),
            signature: String::new(),
            redacted: None,
        }
    }

    /// Name the provider in in-band error events.
    pub fn with_provider(mut self, provider: Arc<str>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Scrub the credentials `policy` knows from in-band error events.
    pub fn with_scrub(mut self, policy: Arc<HeaderPolicy>) -> Self {
        self.scrub = Some(policy);
        self
    }

    /// The usage seen so far (OpenAI semantics).
    pub fn usage(&self) -> Usage {
        self.usage.usage()
    }

    fn choice(&self, out: &mut BytesMut, delta_and_rest: &[&[u8]]) {
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"{\"index\":0,\"delta\":");
        for part in delta_and_rest {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(chunk_suffix(self.include_usage));
    }

    fn fail(&mut self, out: &mut BytesMut, e: GatewayError) -> Flow {
        let e = match &self.provider {
            Some(p) => e.with_provider(p.clone()),
            None => e,
        };
        let e = match &self.scrub {
            Some(policy) => policy.scrub(e),
            None => e,
        };
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(e.to_json().to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
        self.phase = Phase::Done;
        Flow::End
    }

    fn finish_chunk(&mut self, out: &mut BytesMut, reason: &str) {
        self.finish_sent = true;
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\"}");
        out.extend_from_slice(chunk_suffix(self.include_usage));
    }

    /// An in-band `error` event → the OpenAI error event; the stream ends.
    fn on_error(&mut self, error: Option<WireError<'_>>, out: &mut BytesMut) -> Flow {
        let (ty, msg) = error
            .map(|e| (e.ty.into_owned(), e.message.into_owned()))
            .unwrap_or_else(|| ("api_error".to_owned(), "upstream error".to_owned()));
        let status = status_of_error_type(&ty);
        let e = anthropic_row(status, &ty, &msg)
            .into_error(status, msg, &HeaderMap::new(), self.provider.clone())
            .with_anthropic_type(ty);
        self.fail(out, e)
    }

    /// `message_start` → the chunk prefix and the `role: assistant` chunk.
    fn on_message_start(&mut self, message: Option<StartMessage<'_>>, out: &mut BytesMut) -> Flow {
        let Some(m) = message else {
            return self.fail(out, protocol_error("message_start without a message"));
        };
        if let Some(u) = &m.usage {
            self.usage.apply(u);
        }
        let mut id = String::with_capacity(9 + m.id.len());
        id.push_str("chatcmpl-");
        id.push_str(&m.id);
        self.prefix = chunk_prefix(&id, self.created, &m.model);
        self.phase = Phase::Open;
        self.choice(out, &[b"{\"role\":\"assistant\",\"content\":\"\"}", REST]);
        Flow::Continue
    }

    /// `content_block_start`: a text block (with its initial text), a tool-call start, or an
    /// ignored block.
    fn on_block_start(
        &mut self,
        index: Option<usize>,
        block: Option<Block<'_>>,
        out: &mut BytesMut,
    ) -> Flow {
        let (Some(i), Some(b)) = (index, block) else {
            return self.fail(out, protocol_error("malformed content_block_start"));
        };
        if self.blocks.len() <= i {
            self.blocks.resize(i + 1, BlockKind::Ignored);
        }
        match &*b.ty {
            "text" => {
                self.blocks[i] = BlockKind::Text;
                if let Some(t) = b.text.filter(|t| is_json_string(t) && t.get() != "\"\"") {
                    self.choice(out, &[b"{\"content\":", t.get().as_bytes(), b"}", REST]);
                }
            }
            "tool_use" => return self.on_tool_start(i, b.id, b.name, out),
            "thinking" | "redacted_thinking" => self.on_thinking_start(i, &b, out),
            _ => self.blocks[i] = BlockKind::Ignored,
        }
        Flow::Continue
    }

    /// A `thinking` or `redacted_thinking` block starts at content index `i`: its text (if any)
    /// as `reasoning_content`; the block is kept until it ends.
    fn on_thinking_start(&mut self, i: usize, b: &Block<'_>, out: &mut BytesMut) {
        self.blocks[i] = BlockKind::Thinking(self.next_thinking);
        self.next_thinking += 1;
        self.thought.clear();
        self.signature.clear();
        self.redacted = None;
        if b.ty == "redacted_thinking" {
            self.redacted = Some(b.data.map_or("\"\"", RawValue::get).to_owned());
            return;
        }
        if let Some(sig) = b.signature.filter(|v| is_json_string(v)) {
            self.signature.push_str(unquote(sig));
        }
        self.on_thought(b.thinking, out);
    }

    /// A fragment of thinking text → `delta.reasoning_content`, and kept for the block.
    fn on_thought(&mut self, t: Option<&RawValue>, out: &mut BytesMut) {
        if let Some(t) = t.filter(|t| is_json_string(t) && t.get() != "\"\"") {
            self.thought.push_str(unquote(t));
            self.choice(out, &[REASONING, t.get().as_bytes(), b"}", REST]);
        }
    }

    /// `content_block_stop`: a thinking block ends → the whole block as a `thinking_blocks`
    /// delta.
    fn on_block_stop(&mut self, index: Option<usize>, out: &mut BytesMut) -> Flow {
        let kind = index.and_then(|i| self.blocks.get(i).copied());
        let Some(BlockKind::Thinking(k)) = kind else {
            return Flow::Continue;
        };
        let mut buf = [0u8; 20];
        let idx = super::decimal(u64::from(k), &mut buf);
        match self.redacted.take() {
            Some(data) => self.choice(
                out,
                &[
                    b"{\"thinking_blocks\":[{\"index\":",
                    idx,
                    b",\"type\":\"redacted_thinking\",\"data\":",
                    data.as_bytes(),
                    b"}]}",
                    REST,
                ],
            ),
            None => self.choice(
                out,
                &[
                    b"{\"thinking_blocks\":[{\"index\":",
                    idx,
                    b",\"type\":\"thinking\",\"thinking\":\"",
                    self.thought.as_bytes(),
                    b"\",\"signature\":\"",
                    self.signature.as_bytes(),
                    b"\"}]}",
                    REST,
                ],
            ),
        }
        self.thought.clear();
        self.signature.clear();
        Flow::Continue
    }

    /// A `tool_use` block at content index `i` → a tool-call start chunk with the next tool
    /// ordinal.
    fn on_tool_start(
        &mut self,
        i: usize,
        id: Option<&RawValue>,
        name: Option<&RawValue>,
        out: &mut BytesMut,
    ) -> Flow {
        let (Some(id), Some(name)) = (
            id.filter(|v| is_json_string(v)),
            name.filter(|v| is_json_string(v)),
        ) else {
            return self.fail(out, protocol_error("tool_use block without id/name"));
        };
        let k = self.next_tool;
        self.next_tool += 1;
        self.blocks[i] = BlockKind::Tool(k);
        let mut buf = [0u8; 20];
        let idx = super::decimal(u64::from(k), &mut buf);
        self.choice(
            out,
            &[
                b"{\"tool_calls\":[{\"index\":",
                idx,
                b",\"id\":",
                id.get().as_bytes(),
                b",\"type\":\"function\",\"function\":{\"name\":",
                name.get().as_bytes(),
                b",\"arguments\":\"\"}}]}",
                REST,
            ],
        );
        Flow::Continue
    }

    /// `content_block_delta`: text → `delta.content`, `input_json_delta` → `arguments`.
    fn on_block_delta(
        &mut self,
        index: Option<usize>,
        delta: Option<Delta<'_>>,
        out: &mut BytesMut,
    ) -> Flow {
        let (Some(i), Some(d)) = (index, delta) else {
            return self.fail(out, protocol_error("malformed content_block_delta"));
        };
        let kind = self.blocks.get(i).copied().unwrap_or(BlockKind::Ignored);
        match (d.ty.as_deref(), kind) {
            (Some("text_delta"), BlockKind::Text) => {
                if let Some(t) = d.text.filter(|t| is_json_string(t) && t.get() != "\"\"") {
                    self.choice(out, &[b"{\"content\":", t.get().as_bytes(), b"}", REST]);
                }
            }
            (Some("thinking_delta"), BlockKind::Thinking(_)) => self.on_thought(d.thinking, out),
            (Some("signature_delta"), BlockKind::Thinking(_)) => {
                if let Some(sig) = d.signature.filter(|v| is_json_string(v)) {
                    self.signature.push_str(unquote(sig));
                }
            }
            (Some("input_json_delta"), BlockKind::Tool(k)) => {
                if let Some(p) = d
                    .partial_json
                    .filter(|p| is_json_string(p) && p.get() != "\"\"")
                {
                    let mut buf = [0u8; 20];
                    let idx = super::decimal(u64::from(k), &mut buf);
                    self.choice(
                        out,
                        &[
                            b"{\"tool_calls\":[{\"index\":",
                            idx,
                            b",\"function\":{\"arguments\":",
                            p.get().as_bytes(),
                            b"}}]}",
                            REST,
                        ],
                    );
                }
            }
            _ => {}
        }
        Flow::Continue
    }

    /// `message_delta`: usage, and the first `stop_reason` → the `finish_reason` chunk.
    fn on_message_delta(
        &mut self,
        usage: Option<&WireUsage>,
        delta: Option<&Delta<'_>>,
        out: &mut BytesMut,
    ) -> Flow {
        if let Some(u) = usage {
            self.usage.apply(u);
        }
        if !self.finish_sent {
            if let Some(r) = delta.and_then(|d| d.stop_reason.as_deref()) {
                self.finish_chunk(out, finish_reason(Some(r)));
            }
        }
        Flow::Continue
    }

    /// `message_stop` → a `finish_reason` chunk if none was sent, the usage chunk if asked for,
    /// and `[DONE]`; the stream ends.
    fn on_message_stop(&mut self, out: &mut BytesMut) -> Flow {
        if !self.finish_sent {
            self.finish_chunk(out, "stop");
        }
        if self.include_usage {
            out.extend_from_slice(&self.prefix);
            out.extend_from_slice(b"],\"usage\":");
            super::write_usage(out, &self.usage.usage());
            out.extend_from_slice(b"}\n\n");
        }
        out.extend_from_slice(DONE);
        self.phase = Phase::Done;
        Flow::End
    }
}

const REST: &[u8] = b",\"logprobs\":null,\"finish_reason\":null}";
const REASONING: &[u8] = b"{\"reasoning_content\":";

/// The escaped contents of a JSON string literal, without its quotes (fragments of one string
/// concatenate into valid escaped contents).
fn unquote(raw: &RawValue) -> &str {
    let s = raw.get();
    s.get(1..s.len().saturating_sub(1)).unwrap_or("")
}

impl StreamTranslator for AnthropicStream {
    fn on_event(&mut self, data: Option<&[u8]>, _raw: &[u8], out: &mut BytesMut) -> Flow {
        let Some(data) = data else {
            return Flow::Continue;
        };
        if self.phase == Phase::Done {
            return Flow::End;
        }
        let ev: Event<'_> = match serde_json::from_slice(data) {
            Ok(ev) => ev,
            Err(e) => {
                return self.fail(
                    out,
                    protocol_error(format!("invalid Anthropic stream event: {e}")),
                );
            }
        };
        match (&*ev.ty, self.phase) {
            ("ping", _) => Flow::Continue,
            ("error", _) => self.on_error(ev.error, out),
            ("message_start", Phase::Start) => self.on_message_start(ev.message, out),
            (_, Phase::Start) => self.fail(
                out,
                protocol_error(format!(
                    "Anthropic stream sent '{}' before message_start",
                    ev.ty
                )),
            ),
            ("content_block_start", _) => self.on_block_start(ev.index, ev.content_block, out),
            ("content_block_delta", _) => self.on_block_delta(ev.index, ev.delta, out),
            ("content_block_stop", _) => self.on_block_stop(ev.index, out),
            ("message_delta", _) => {
                self.on_message_delta(ev.usage.as_ref(), ev.delta.as_ref(), out)
            }
            ("message_stop", _) => self.on_message_stop(out),
            _ => Flow::Continue,
        }
    }

    fn on_eof(&mut self, _out: &mut BytesMut) -> Result<(), GatewayError> {
        match self.phase {
            Phase::Done => Ok(()),
            _ => Err(protocol_error(
                "the Anthropic stream ended before message_stop",
            )),
        }
    }
}
