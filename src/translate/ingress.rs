//! The Anthropic-style ingress (`POST /v1/messages`) in front of an OpenAI-compatible target:
//! Anthropic request → OpenAI chat request, and OpenAI response / chunk stream → Anthropic
//! message / event stream, so the official `anthropic` SDKs can use any target.
//!
//! - [`request_from_anthropic`]: a Messages body → a `chat/completions` body (streams ask for
//!   `stream_options.include_usage`, so the final usage can be reported).
//! - [`response_to_anthropic`]: a `chat.completion` → a Messages response.
//! - [`IngressStream`]: `chat.completion.chunk` SSE → Anthropic SSE (`message_start`,
//!   `content_block_start/delta/stop`, `message_delta` with the usage, `message_stop`).
//! - [`error_to_anthropic`]: a [`GatewayError`] → an Anthropic error body.
//!
//! ## Request fields
//! | Anthropic | OpenAI |
//! |---|---|
//! | `system` (string or text blocks) | one leading `system` message (blocks joined with `\n`) |
//! | user `text` / `image` (base64 → data URL, url → URL) / `document` (base64) blocks | user content parts (`file` for documents) |
//! | user `tool_result` blocks | `tool` messages (before the rest of that user turn) |
//! | assistant `text` / `tool_use` blocks | `content` / `tool_calls` (`arguments` = the input's JSON) |
//! | `thinking` / `redacted_thinking` blocks | dropped |
//! | `max_tokens`, `stop_sequences`, `temperature`, `top_p` | `max_tokens`, `stop`, `temperature`, `top_p` |
//! | `tools` (custom) / `tool_choice` auto·any·tool·none / `disable_parallel_tool_use` | function `tools` / `auto`·`required`·named·`none` / `parallel_tool_calls: false` |
//! | `metadata.user_id` | `user` |
//! | `output_config.format` (json_schema) | `response_format: json_schema` |
//! | `stream` | `stream` + `stream_options.include_usage` |
//!
//! Dropped: `top_k`, `thinking`, `service_tier`, `cache_control`, `container`, unknown fields.
//! Refused (400): server tools (`type` other than `custom`).

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::{Flow, StreamTranslator, protocol_error};
use crate::error::{ErrorKind, GatewayError};
use crate::usage::Usage;

fn bad(msg: impl Into<Cow<'static, str>>, param: impl Into<Cow<'static, str>>) -> GatewayError {
    GatewayError::bad_request(msg, None).with_param(param)
}

fn block_texts(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn image_part(b: &Value, param: String) -> Result<Value, GatewayError> {
    let src = b.get("source").unwrap_or(&Value::Null);
    let url = match src.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            src.get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("application/octet-stream"),
            src.get("data").and_then(Value::as_str).unwrap_or("")
        ),
        Some("url") => src
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        _ => return Err(bad("unsupported image source", param)),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// Translate an Anthropic Messages request body into an OpenAI chat request body (the model
/// name is kept: routing happens on it). See the module docs for the field rules.
pub fn request_from_anthropic(body: &[u8]) -> Result<Bytes, GatewayError> {
    let req: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| GatewayError::bad_request(format!("invalid JSON body: {e}"), None))?;
    let mut out = Map::new();
    out.insert(
        "model".into(),
        req.get("model").cloned().unwrap_or(Value::Null),
    );
    let msgs = messages_from_anthropic(&req)?;
    out.insert("messages".into(), Value::Array(msgs));
    params_from_anthropic(&req, &mut out);
    tools_from_anthropic(&req, &mut out)?;
    tool_choice_from_anthropic(&req, &mut out)?;
    if let Some(schema) = req
        .get("output_config")
        .and_then(|o| o.get("format"))
        .filter(|f| f.get("type").and_then(Value::as_str) == Some("json_schema"))
        .and_then(|f| f.get("schema"))
    {
        out.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}),
        );
    }
    serde_json::to_vec(&Value::Object(out))
        .map(Bytes::from)
        .map_err(|e| GatewayError::internal(format!("serializing the request: {e}")))
}

/// `system` and `messages` → the OpenAI `messages`.
fn messages_from_anthropic(req: &Map<String, Value>) -> Result<Vec<Value>, GatewayError> {
    let mut msgs: Vec<Value> = Vec::new();
    if let Some(system) = req.get("system").filter(|v| !v.is_null()) {
        let text = block_texts(system);
        if !text.is_empty() {
            msgs.push(json!({"role": "system", "content": text}));
        }
    }
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            GatewayError::bad_request("'messages' must be an array", Some("messages"))
        })?;
    for (i, m) in messages.iter().enumerate() {
        message_from_anthropic(i, m, &mut msgs)?;
    }
    Ok(msgs)
}

/// Message `i` → one or more OpenAI messages appended to `msgs`.
fn message_from_anthropic(i: usize, m: &Value, msgs: &mut Vec<Value>) -> Result<(), GatewayError> {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    let content = m.get("content").unwrap_or(&Value::Null);
    match (role, content) {
        ("user" | "assistant" | "system", Value::String(s)) => {
            msgs.push(json!({"role": role, "content": s}));
        }
        ("system", blocks) => {
            msgs.push(json!({"role": "system", "content": block_texts(blocks)}));
        }
        ("user", Value::Array(blocks)) => user_from_anthropic(i, blocks, msgs)?,
        ("assistant", Value::Array(blocks)) => msgs.push(assistant_from_anthropic(blocks)),
        _ => {
            return Err(bad(
                "each message needs role user or assistant and string or block content",
                format!("messages[{i}]"),
            ));
        }
    }
    Ok(())
}

/// User message `i`'s blocks → a `tool` message per `tool_result` block, then one user message
/// with the other parts (a lone text part as a string).
fn user_from_anthropic(
    i: usize,
    blocks: &[Value],
    msgs: &mut Vec<Value>,
) -> Result<(), GatewayError> {
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let param = format!("messages[{i}].content[{j}]");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({"type": "text",
                "text": b.get("text").cloned().unwrap_or(Value::from(""))})),
            Some("image") => parts.push(image_part(b, param)?),
            Some("document") => parts.push(document_part(b, param)?),
            Some("tool_result") => msgs.push(tool_message(b)),
            Some("thinking" | "redacted_thinking") => {}
            _ => return Err(bad("unsupported content block", param)),
        }
    }
    if !parts.is_empty() {
        let content = match &parts[..] {
            [one] if one.get("type").and_then(Value::as_str) == Some("text") => {
                one.get("text").cloned().unwrap_or(Value::from(""))
            }
            _ => Value::Array(parts),
        };
        msgs.push(json!({"role": "user", "content": content}));
    }
    Ok(())
}

/// A `document` block → a `file` part (base64) or a text part (plain-text source).
fn document_part(b: &Value, param: String) -> Result<Value, GatewayError> {
    let src = b.get("source").unwrap_or(&Value::Null);
    match src.get("type").and_then(Value::as_str) {
        Some("base64") => Ok(json!({"type": "file", "file": {
            "file_data": format!("data:{};base64,{}",
                src.get("media_type").and_then(Value::as_str).unwrap_or("application/pdf"),
                src.get("data").and_then(Value::as_str).unwrap_or(""))}})),
        Some("text") => Ok(json!({"type": "text",
            "text": src.get("data").cloned().unwrap_or(Value::from(""))})),
        _ => Err(bad("unsupported document source", param)),
    }
}

/// A `tool_result` block → an OpenAI `tool` message.
fn tool_message(b: &Value) -> Value {
    let mut text = block_texts(b.get("content").unwrap_or(&Value::Null));
    if b.get("is_error").and_then(Value::as_bool) == Some(true) {
        text.insert_str(0, "Error: ");
    }
    json!({"role": "tool",
        "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(Value::Null),
        "content": text})
}

/// An assistant message's blocks → one assistant message: the texts joined, `tool_use` blocks
/// as `tool_calls`, other blocks dropped.
fn assistant_from_anthropic(blocks: &[Value]) -> Value {
    let mut text = String::new();
    let mut has_text = false;
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                has_text = true;
                text.push_str(b.get("text").and_then(Value::as_str).unwrap_or(""));
            }
            Some("tool_use") => calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            })),
            _ => {}
        }
    }
    let mut msg = json!({"role": "assistant",
        "content": if has_text { Value::String(text) } else { Value::Null }});
    if !calls.is_empty() {
        if let Some(o) = msg.as_object_mut() {
            o.insert("tool_calls".into(), Value::Array(calls));
        }
    }
    msg
}

/// Sampling and bookkeeping: `max_tokens`, `stop_sequences` → `stop`, `temperature`, `top_p`,
/// `metadata.user_id` → `user`, `stream` (with usage asked for).
fn params_from_anthropic(req: &Map<String, Value>, out: &mut Map<String, Value>) {
    for (from, to) in [
        ("max_tokens", "max_tokens"),
        ("stop_sequences", "stop"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
    ] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    if let Some(u) = req
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .filter(|v| v.is_string())
    {
        out.insert("user".into(), u.clone());
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), Value::Bool(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
}

/// Custom `tools` → function tools; server tools refused.
fn tools_from_anthropic(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    let Some(tools) = req.get("tools").and_then(Value::as_array) else {
        return Ok(());
    };
    let mut list = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        list.push(tool_from_anthropic(i, t)?);
    }
    if !list.is_empty() {
        out.insert("tools".into(), Value::Array(list));
    }
    Ok(())
}

/// Tool `i` → an OpenAI function tool.
fn tool_from_anthropic(i: usize, t: &Value) -> Result<Value, GatewayError> {
    match t.get("type").and_then(Value::as_str) {
        None | Some("custom") => {}
        Some(_) => {
            return Err(bad(
                "server tools cannot be served by this target",
                format!("tools[{i}]"),
            ));
        }
    }
    let mut f = Map::new();
    f.insert("name".into(), t.get("name").cloned().unwrap_or(Value::Null));
    if let Some(d) = t.get("description").filter(|v| !v.is_null()) {
        f.insert("description".into(), d.clone());
    }
    f.insert(
        "parameters".into(),
        t.get("input_schema")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    );
    if let Some(s) = t.get("strict").filter(|v| v.is_boolean()) {
        f.insert("strict".into(), s.clone());
    }
    Ok(json!({"type": "function", "function": f}))
}

/// `tool_choice` → `tool_choice`, `disable_parallel_tool_use` → `parallel_tool_calls: false`.
fn tool_choice_from_anthropic(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    let Some(tc) = req.get("tool_choice").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let choice = match tc.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            json!({"type": "function", "function": {"name": tc.get("name").cloned().unwrap_or(Value::Null)}})
        }
        _ => {
            return Err(GatewayError::bad_request(
                "unknown tool_choice",
                Some("tool_choice"),
            ));
        }
    };
    out.insert("tool_choice".into(), choice);
    if tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
        out.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    Ok(())
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// OpenAI usage → Anthropic usage: `input_tokens` excludes cache reads and writes; reasoning
/// tokens, when any, are `output_tokens_details.thinking_tokens` (part of `output_tokens`).
fn anthropic_usage(u: &Usage) -> Value {
    let mut v = json!({
        "input_tokens": u.prompt_tokens.saturating_sub(u.cached_tokens + u.cache_write_tokens),
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
    });
    if u.reasoning_tokens > 0 {
        v["output_tokens_details"] = json!({"thinking_tokens": u.reasoning_tokens});
    }
    v
}

fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    let doc = json!({"usage": u}).to_string();
    Usage::from_openai_json(doc.as_bytes())
}

/// Translate an OpenAI `chat.completion` body into an Anthropic Messages response. Tool-call
/// arguments that are not a JSON object are an [`ErrorKind::UpstreamProtocol`] error (an
/// Anthropic `tool_use.input` must be one).
pub fn response_to_anthropic(body: &[u8]) -> Result<Bytes, GatewayError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| protocol_error(format!("invalid chat.completion: {e}")))?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| protocol_error("chat.completion without choices"))?;
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": t}));
    }
    if let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) {
        for c in calls {
            let f = c.get("function").unwrap_or(&Value::Null);
            let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
            let input: Value = if args.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(args)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| {
                        protocol_error(
                            "the upstream returned tool-call arguments that are not a JSON object",
                        )
                    })?
            };
            content.push(json!({"type": "tool_use",
                "id": c.get("id").cloned().unwrap_or(Value::Null),
                "name": f.get("name").cloned().unwrap_or(Value::Null),
                "input": input}));
        }
    }
    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop");
    let doc = json!({
        "id": v.get("id").cloned().unwrap_or(Value::from("msg")),
        "type": "message",
        "role": "assistant",
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": anthropic_usage(&usage_of(&v).unwrap_or_default()),
    });
    serde_json::to_vec(&doc)
        .map(Bytes::from)
        .map_err(|e| GatewayError::internal(format!("serializing the response: {e}")))
}

/// The Anthropic `error.type` for a gateway error.
fn anthropic_error_type(status: u16, kind: ErrorKind) -> &'static str {
    match (status, kind) {
        (_, ErrorKind::UpstreamOverloaded) => "overloaded_error",
        (400 | 405 | 422, _) => "invalid_request_error",
        (401, _) => "authentication_error",
        (402, _) => "billing_error",
        (403, _) => "permission_error",
        (404, _) => "not_found_error",
        (413, _) => "request_too_large",
        (429, _) => "rate_limit_error",
        (504, _) => "timeout_error",
        (529, _) => "overloaded_error",
        _ => "api_error",
    }
}

/// The Anthropic-shaped error body (`{"type":"error","error":{"type","message"}}`) and status
/// for `e`; headers such as `Retry-After` come from [`GatewayError::into_anthropic_response`].
///
/// An error an Anthropic upstream answered keeps that upstream's own status and `error.type`
/// (a 529 `overloaded_error` stays one, a 402 `billing_error` too). Otherwise the status is the
/// one the OpenAI face uses, except that an overloaded upstream
/// ([`ErrorKind::UpstreamOverloaded`]) is Anthropic's own **529** `overloaded_error`, which the
/// Anthropic SDKs raise as `OverloadedError` (a 503 would be `ServiceUnavailableError`), and the
/// type follows the status — with an exhausted quota (`insufficient_quota`) as Anthropic's
/// `billing_error`.
pub fn error_to_anthropic(e: &GatewayError) -> (StatusCode, Bytes) {
    let (status, ty) = anthropic_face(e);
    let body = json!({"type": "error", "error": {"type": ty, "message": e.message()}});
    (status, Bytes::from(body.to_string()))
}

/// The status and `error.type` the Anthropic face answers `e` with (see
/// [`error_to_anthropic`]); the UsageMeter records that status for `/v1/messages`.
pub(crate) fn anthropic_face(e: &GatewayError) -> (StatusCode, &str) {
    let native = e.anthropic_type().zip(
        e.upstream_status_code()
            .and_then(|s| StatusCode::from_u16(s).ok()),
    );
    match native {
        Some((ty, status)) => (status, ty),
        None => {
            let ty = if e.code() == Some("insufficient_quota") {
                "billing_error"
            } else {
                anthropic_error_type(e.status().as_u16(), e.kind())
            };
            let status = match e.kind() {
                ErrorKind::UpstreamOverloaded => StatusCode::from_u16(529).unwrap_or(e.status()),
                _ => e.status(),
            };
            (status, ty)
        }
    }
}

fn write_event(out: &mut BytesMut, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text(u32),
    /// (block index, OpenAI tool index)
    Tool(u32, u64),
}

/// The streaming translator: OpenAI `chat.completion.chunk` SSE (with the include_usage chunk)
/// → Anthropic Messages SSE events. Only choice 0 is translated.
///
/// The first chunk opens the message (`message_start`, usage unknown yet: zeros); content opens
/// a text block; each new tool-call `index` closes the open block and opens a `tool_use` block
/// (its arguments fragments become `input_json_delta`s); `finish_reason` closes the open block;
/// `[DONE]` sends `message_delta` (stop reason and the usage chunk's counts) and
/// `message_stop`. An in-band `{"error":..}` becomes an Anthropic `error` event; a stream that
/// ends without `[DONE]` ends with an `error` event and `Err` (never a faked `message_stop`).
#[derive(Debug)]
pub struct IngressStream {
    started: bool,
    open: Open,
    next_block: u32,
    stop: Option<&'static str>,
    usage: Option<Usage>,
    done: bool,
    model: String,
}

impl Default for IngressStream {
    fn default() -> Self {
        Self::new("")
    }
}

impl IngressStream {
    /// A translator for one response; `model` is reported if the chunks name none.
    pub fn new(model: &str) -> Self {
        IngressStream {
            started: false,
            open: Open::None,
            next_block: 0,
            stop: None,
            usage: None,
            done: false,
            model: model.to_owned(),
        }
    }

    fn start(&mut self, out: &mut BytesMut, chunk: &Value) {
        if self.started {
            return;
        }
        self.started = true;
        let id = chunk.get("id").and_then(Value::as_str).unwrap_or("msg");
        let model = chunk
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(&self.model);
        write_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        );
    }

    fn close(&mut self, out: &mut BytesMut) {
        match self.open {
            Open::None => {}
            Open::Text(i) | Open::Tool(i, _) => {
                write_event(
                    out,
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": i}),
                );
            }
        }
        self.open = Open::None;
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.close(out);
        let usage = self.usage.unwrap_or_default();
        write_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": anthropic_usage(&usage)}),
        );
        write_event(out, "message_stop", &json!({"type": "message_stop"}));
        self.done = true;
    }

    fn error(&mut self, out: &mut BytesMut, ty: &str, message: &str) -> Flow {
        write_event(
            out,
            "error",
            &json!({"type": "error", "error": {"type": ty, "message": message}}),
        );
        self.done = true;
        Flow::End
    }

    /// An in-band `{"error": ..}` chunk → an Anthropic `error` event; the stream ends.
    fn upstream_error(&mut self, out: &mut BytesMut, err: &Value) -> Flow {
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("upstream error");
        let status = err
            .get("upstream_status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(500);
        let ty = match err.get("type").and_then(Value::as_str) {
            Some("service_unavailable_error") => "overloaded_error",
            Some("rate_limit_error") => "rate_limit_error",
            Some("timeout_error") => "timeout_error",
            _ => anthropic_error_type(status, ErrorKind::UpstreamServerError),
        };
        self.error(out, ty, msg)
    }

    /// Content text → a `text_delta` (opening a text block if none is open).
    fn text_delta(&mut self, out: &mut BytesMut, t: &str) {
        let i = match self.open {
            Open::Text(i) => i,
            _ => {
                self.close(out);
                let i = self.next_block;
                self.next_block += 1;
                self.open = Open::Text(i);
                write_event(
                    out,
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": i,
                        "content_block": {"type": "text", "text": ""}}),
                );
                i
            }
        };
        write_event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": i,
                "delta": {"type": "text_delta", "text": t}}),
        );
    }

    /// A tool-call delta → a `tool_use` block start when its `index` is new, and its arguments
    /// fragment as an `input_json_delta`.
    fn tool_call_delta(&mut self, out: &mut BytesMut, c: &Value) {
        let k = c.get("index").and_then(Value::as_u64).unwrap_or(0);
        let f = c.get("function").unwrap_or(&Value::Null);
        let i = match self.open {
            Open::Tool(i, open_k) if open_k == k => i,
            _ => {
                self.close(out);
                let i = self.next_block;
                self.next_block += 1;
                self.open = Open::Tool(i, k);
                write_event(
                    out,
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": i,
                        "content_block": {"type": "tool_use",
                            "id": c.get("id").cloned().unwrap_or(Value::Null),
                            "name": f.get("name").cloned().unwrap_or(Value::Null),
                            "input": {}}}),
                );
                i
            }
        };
        if let Some(a) = f
            .get("arguments")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            write_event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": a}}),
            );
        }
    }
}

impl StreamTranslator for IngressStream {
    fn on_event(&mut self, data: Option<&[u8]>, _raw: &[u8], out: &mut BytesMut) -> Flow {
        let Some(data) = data else {
            return Flow::Continue;
        };
        if self.done {
            return Flow::End;
        }
        if data == b"[DONE]" {
            if !self.started {
                self.start(out, &Value::Null);
            }
            self.finish(out);
            return Flow::End;
        }
        let chunk: Value = match serde_json::from_slice(data) {
            Ok(v) => v,
            Err(_) => return self.error(out, "api_error", "the upstream sent an invalid chunk"),
        };
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            return self.upstream_error(out, err);
        }
        self.start(out, &chunk);
        if let Some(u) = usage_of(&chunk) {
            self.usage = Some(u);
        }
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
            })
        else {
            return Flow::Continue;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(t) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.text_delta(out, t);
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for c in calls {
                self.tool_call_delta(out, c);
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = Some(stop_reason(f));
            self.close(out);
        }
        Flow::Continue
    }

    fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), GatewayError> {
        if self.done {
            return Ok(());
        }
        self.error(out, "api_error", "the upstream stream ended early");
        Err(protocol_error("the upstream stream ended before [DONE]"))
    }
}
