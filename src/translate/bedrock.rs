//! OpenAI chat ⇄ Amazon Bedrock Converse (`/model/{id}/converse`, `/converse-stream`).
//!
//! - [`request_to_bedrock`]: an OpenAI chat body → a Converse body (the model goes in the path).
//! - [`response_from_bedrock`]: a Converse answer → `chat.completion`.
//! - [`BedrockStream`]: ConverseStream events → `chat.completion.chunk` SSE bytes, fed by
//!   [`EventStreamDecoder`] (the binary `application/vnd.amazon.eventstream` framing) inside
//!   [`EventStreamBody`].
//! - [`error_from_bedrock`]: a Bedrock error answer → [`GatewayError`].
//!
//! ## Request fields
//! | OpenAI | Converse |
//! |---|---|
//! | `system` / `developer` messages | `system[].text` |
//! | `user` / `assistant` | `messages[].role` (consecutive same-role turns merged: Bedrock wants them alternating) |
//! | text parts / `image_url` data URL (png, jpeg, gif, webp) | `{text}` / `{image: {format, source: {bytes}}}` |
//! | `assistant.tool_calls` | `{toolUse: {toolUseId, name, input}}` (`arguments` must be a JSON object) |
//! | `tool` message | `{toolResult: {toolUseId, content: [{text}]}}` in a user turn |
//! | `tools` | `toolConfig.tools[].toolSpec {name, description, inputSchema.json}` |
//! | `tool_choice` auto / required / named | `toolConfig.toolChoice` `{auto}` / `{any}` / `{tool: {name}}` |
//! | `max_completion_tokens` ?? `max_tokens`, `temperature`, `top_p`, `stop` | `inferenceConfig {maxTokens, temperature, topP, stopSequences}` |
//!
//! Refused (400): `n > 1`, `tool_choice: "none"` (Converse has no way to forbid a call),
//! `response_format` other than `text`, `reasoning_effort`, http(s) image URLs, audio and file
//! parts, and what every translation refuses. Dropped: `stream`, `stream_options`, `user`,
//! `seed`, penalties, `logit_bias`, `metadata`, `store`, `service_tier`, unknown fields.
//!
//! Back: `text` blocks → `content`, `reasoningContent` → the non-standard `reasoning_content`,
//! `toolUse` → `tool_calls` (`arguments` the JSON text of `input`); `stopReason` `end_turn` /
//! `stop_sequence` → `stop`, `tool_use` → `tool_calls`, `max_tokens` → `length`,
//! `content_filtered` / `guardrail_intervened` → `content_filter`; usage: `prompt_tokens =
//! inputTokens + cacheReadInputTokens + cacheWriteInputTokens` (Bedrock's `inputTokens`
//! excludes both), `completion_tokens = outputTokens`, `total_tokens = totalTokens`,
//! `cached_tokens = cacheReadInputTokens`.
//!
//! ## Errors (upstream → OpenAI face)
//! Bedrock answers `{"message": …}` with the error's name in `x-amzn-errortype`.
//!
//! | Bedrock | status | `type` | `code` |
//! |---|---|---|---|
//! | 400 `ValidationException` "…too long…" (context) | 400 | `invalid_request_error` | `context_length_exceeded` |
//! | 400 `ValidationException` | 400 | `invalid_request_error` | the error type |
//! | 401 / 403 (`UnrecognizedClientException`, a signature mismatch, `AccessDeniedException`) | 502 | `api_error` | `upstream_auth_failed` |
//! | 404 `ResourceNotFoundException` | 404 | `invalid_request_error` | `model_not_found` |
//! | 408 `ModelTimeoutException` | 504 | `timeout_error` | the error type |
//! | 429 `ThrottlingException` (and `throttlingException` in a stream) | 429 + `Retry-After` | `rate_limit_error` | `rate_limit_exceeded` |
//! | 503 `ServiceUnavailableException` | 503 | `service_unavailable_error` | `server_is_overloaded` |
//! | 424 `ModelErrorException`, 500 `InternalServerException`, other 5xx | 502 | `api_error` | the error type |
//!
//! In a stream, an `exception` message before anything reached the client fails the attempt
//! with that status (so Fallback may try the next target); after, the stream ends with the
//! in-band error event and no `[DONE]`.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    DONE, ErrorRow, chunk_prefix, chunk_suffix, protocol_error, split_data_url, usage_json,
    write_json_str, write_u64, write_usage,
};
use crate::body::BoxError;
use crate::error::GatewayError;
use crate::provider::headers::HeaderPolicy;
use crate::provider::is_context_length_message;
use crate::usage::Usage;

const PROVIDER: &str = "Bedrock";

fn bad(msg: impl Into<Cow<'static, str>>, param: impl Into<Cow<'static, str>>) -> GatewayError {
    GatewayError::bad_request(msg, None).with_param(param)
}

fn unsupported(field: &'static str) -> GatewayError {
    super::unsupported(field, PROVIDER)
}

// ---------------------------------------------------------------------------------------------
// Request

fn text_blocks(content: &Value, param: &str) -> Result<Vec<Value>, GatewayError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"text": s})]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (i, p) in parts.iter().enumerate() {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").or_else(|| p.get("refusal")),
                ) {
                    (Some("text" | "refusal"), Some(Value::String(t))) => {
                        if !t.is_empty() {
                            out.push(json!({"text": t}));
                        }
                    }
                    _ => {
                        return Err(bad(
                            "only text parts are allowed here",
                            format!("{param}[{i}]"),
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(bad(
            "content must be a string or an array",
            param.to_owned(),
        )),
    }
}

fn image_block(p: &Value, param: String) -> Result<Value, GatewayError> {
    let url = p
        .get("image_url")
        .and_then(|i| i.get("url").or(Some(i)))
        .and_then(Value::as_str)
        .ok_or_else(|| bad("image_url.url is required", param.clone()))?;
    let Some((media, data)) = split_data_url(url) else {
        return Err(bad(
            "the Bedrock provider takes images as base64 data URLs only",
            param,
        )
        .with_code("unsupported_parameter"));
    };
    let format = match media {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => {
            return Err(bad(
                "the Bedrock provider takes png, jpeg, gif and webp images",
                param,
            ));
        }
    };
    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

fn user_blocks(content: &Value, param: String) -> Result<Vec<Value>, GatewayError> {
    let Value::Array(list) = content else {
        return text_blocks(content, &param);
    };
    let mut out = Vec::with_capacity(list.len());
    for (j, p) in list.iter().enumerate() {
        let pp = format!("{param}[{j}]");
        match p.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = p.get("text").and_then(Value::as_str).unwrap_or("");
                if !t.is_empty() {
                    out.push(json!({"text": t}));
                }
            }
            Some("image_url") => out.push(image_block(p, pp)?),
            Some("input_audio" | "file") => {
                return Err(bad(
                    "audio and file parts are not supported by the Bedrock provider",
                    pp,
                )
                .with_code("unsupported_parameter"));
            }
            _ => return Err(bad("unknown content part type", pp)),
        }
    }
    Ok(out)
}

fn tool_use(c: &Value, p: String) -> Result<Value, GatewayError> {
    let f = c
        .get("function")
        .ok_or_else(|| bad("only function tool calls are supported", p.clone()))?;
    let name = f.get("name").and_then(Value::as_str).unwrap_or("");
    let id = c.get("id").and_then(Value::as_str).unwrap_or("");
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
    Ok(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}))
}

fn assistant_blocks(i: usize, m: &Value, param: &str) -> Result<Vec<Value>, GatewayError> {
    let mut blocks = text_blocks(m.get("content").unwrap_or(&Value::Null), param)?;
    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
        for (j, c) in calls.iter().enumerate() {
            blocks.push(tool_use(c, format!("messages[{i}].tool_calls[{j}]"))?);
        }
    }
    Ok(blocks)
}

fn tool_result(i: usize, m: &Value, param: &str) -> Result<Vec<Value>, GatewayError> {
    let id = m
        .get("tool_call_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            bad(
                "tool_call_id is required",
                format!("messages[{i}].tool_call_id"),
            )
        })?;
    let mut content = text_blocks(m.get("content").unwrap_or(&Value::Null), param)?;
    if content.is_empty() {
        content.push(json!({"text": ""}));
    }
    Ok(vec![
        json!({"toolResult": {"toolUseId": id, "content": content}}),
    ])
}

/// The Converse `messages` (consecutive same-role turns merged) and `system` blocks.
fn converse_messages(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>), GatewayError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        let param = format!("messages[{i}].content");
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(text_blocks(content, &param)?);
                continue;
            }
            "user" => ("user", user_blocks(content, param)?),
            "assistant" => ("assistant", assistant_blocks(i, m, &param)?),
            "tool" => ("user", tool_result(i, m, &param)?),
            "function" => return Err(unsupported("functions")),
            other => {
                return Err(bad(
                    format!("unknown message role '{}'", crate::request::prefix(other)),
                    format!("messages[{i}].role"),
                ));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((messages, system))
}

fn tool_config(req: &Map<String, Value>) -> Result<Option<Value>, GatewayError> {
    let functions = super::function_tools(req, PROVIDER)?;
    let choice = match req.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"auto": {}})),
            "required" => Some(json!({"any": {}})),
            "none" => return Err(unsupported("tool_choice")),
            _ => {
                return Err(GatewayError::bad_request(
                    "unknown tool_choice",
                    Some("tool_choice"),
                ));
            }
        },
        Some(obj) => match obj.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Some(json!({"tool": {"name": name}})),
            None => {
                return Err(GatewayError::bad_request(
                    "only {type: function, function: {name}} tool_choice objects are supported",
                    Some("tool_choice"),
                ));
            }
        },
    };
    if functions.is_empty() {
        return Ok(None);
    }
    let tools: Vec<Value> = functions
        .into_iter()
        .map(|f| {
            let mut spec = super::named_tool(f);
            let schema = f
                .get("parameters")
                .filter(|v| !v.is_null())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            spec.insert("inputSchema".into(), json!({"json": schema}));
            json!({"toolSpec": spec})
        })
        .collect();
    let mut cfg = json!({"tools": tools});
    if let Some(c) = choice {
        cfg["toolChoice"] = c;
    }
    Ok(Some(cfg))
}

fn inference_config(req: &Map<String, Value>) -> Result<Map<String, Value>, GatewayError> {
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(unsupported("n"));
    }
    if req
        .get("response_format")
        .and_then(|r| r.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t != "text")
    {
        return Err(unsupported("response_format"));
    }
    if req.get("reasoning_effort").is_some_and(|v| !v.is_null()) {
        return Err(unsupported("reasoning_effort"));
    }
    let mut ic = Map::new();
    if let Some(n) = req
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| req.get("max_tokens").and_then(Value::as_u64))
    {
        ic.insert("maxTokens".into(), Value::from(n));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            ic.insert(to.into(), v.clone());
        }
    }
    match req.get("stop") {
        Some(Value::String(s)) => {
            ic.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(list)) if !list.is_empty() => {
            ic.insert("stopSequences".into(), Value::Array(list.clone()));
        }
        _ => {}
    }
    Ok(ic)
}

/// Translate an OpenAI chat request body into a Converse body. See the module docs.
pub fn request_to_bedrock(body: &[u8]) -> Result<Bytes, GatewayError> {
    let (req, messages) = super::chat_request(body, PROVIDER)?;
    let (messages, system) = converse_messages(&messages)?;
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let ic = inference_config(&req)?;
    if !ic.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(ic));
    }
    if let Some(tc) = tool_config(&req)? {
        out.insert("toolConfig".into(), tc);
    }
    serde_json::to_vec(&Value::Object(out))
        .map(Bytes::from)
        .map_err(|e| GatewayError::internal(format!("serializing the Bedrock request: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Response

/// Bedrock `stopReason` → OpenAI `finish_reason`.
pub fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "tool_use" => "tool_calls",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "content_filtered" | "guardrail_intervened" => "content_filter",
        _ => "stop",
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl WireUsage {
    fn usage(&self) -> Usage {
        let prompt = self
            .input_tokens
            .saturating_add(self.cache_read_input_tokens)
            .saturating_add(self.cache_write_input_tokens);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: self.output_tokens,
            total_tokens: self
                .total_tokens
                .unwrap_or(prompt.saturating_add(self.output_tokens)),
            cached_tokens: self.cache_read_input_tokens,
            cache_write_tokens: self.cache_write_input_tokens,
            reasoning_tokens: 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    output: Option<WireOutput>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireOutput {
    #[serde(default)]
    message: Option<WireMessage>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Vec<Value>,
}

fn random_id() -> String {
    use rand::{Rng, SeedableRng};
    let n: u64 = rand::rngs::SmallRng::from_os_rng().random();
    format!("{n:016x}")
}

/// Translate a Converse answer into an OpenAI `chat.completion` body.
pub fn response_from_bedrock(
    body: &[u8],
    created: u64,
    model: &str,
) -> Result<Bytes, GatewayError> {
    let r: WireResponse = serde_json::from_slice(body)
        .map_err(|e| protocol_error(format!("invalid Bedrock response: {e}")))?;
    let blocks = r
        .output
        .and_then(|o| o.message)
        .map(|m| m.content)
        .unwrap_or_default();
    let (mut text, mut reasoning, mut calls) = (None::<String>, String::new(), Vec::new());
    for b in &blocks {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            text.get_or_insert_with(String::new).push_str(t);
        } else if let Some(t) = b.pointer("/reasoningContent/reasoningText/text") {
            reasoning.push_str(t.as_str().unwrap_or(""));
        } else if let Some(tu) = b.get("toolUse") {
            let s = |k: &str| tu.get(k).and_then(Value::as_str).unwrap_or("");
            let args = tu
                .get("input")
                .map_or_else(|| "{}".to_owned(), Value::to_string);
            calls.push(json!({"id": s("toolUseId"), "type": "function",
                "function": {"name": s("name"), "arguments": args}}));
        }
    }
    let mut message = json!({"role": "assistant", "content": text, "refusal": null});
    if !reasoning.is_empty() {
        message["reasoning_content"] = Value::from(reasoning);
    }
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let mut doc = json!({
        "id": format!("chatcmpl-{}", random_id()),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(r.stop_reason.as_deref().unwrap_or("end_turn")),
        }],
    });
    if let (Some(u), Some(o)) = (r.usage, doc.as_object_mut()) {
        o.insert("usage".into(), usage_json(&u.usage()));
    }
    serde_json::to_vec(&doc)
        .map(Bytes::from)
        .map_err(|e| GatewayError::internal(format!("serializing the response: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Errors

/// `ThrottlingException` from `x-amzn-errortype` (`ThrottlingException:http://…`).
fn error_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("x-amzn-errortype")?.to_str().ok()?;
    let t = v.split(':').next().unwrap_or(v).trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// The table of the module docs.
fn bedrock_row(status: u16, ty: &str, message: &str) -> ErrorRow {
    let own = |fallback: &'static str| -> Cow<'static, str> {
        match ty {
            "" => Cow::Borrowed(fallback),
            t => Cow::Owned(t.to_owned()),
        }
    };
    let lower = ty.to_ascii_lowercase();
    match status {
        _ if lower.starts_with("throttling") => {
            ErrorRow::new(429, 429, "rate_limit_error", "rate_limit_exceeded")
        }
        _ if lower.starts_with("serviceunavailable") => ErrorRow::new(
            503,
            503,
            "service_unavailable_error",
            "server_is_overloaded",
        ),
        400 if is_context_length_message(message) || message.contains("too long") => {
            ErrorRow::new(400, 400, "invalid_request_error", "context_length_exceeded")
        }
        400 => ErrorRow::new(
            400,
            400,
            "invalid_request_error",
            own("ValidationException"),
        ),
        401 | 403 => ErrorRow::new(502, 502, "api_error", "upstream_auth_failed"),
        404 => ErrorRow::new(404, 404, "invalid_request_error", "model_not_found"),
        408 => ErrorRow::new(504, 504, "timeout_error", own("ModelTimeoutException")),
        429 => ErrorRow::new(429, 429, "rate_limit_error", "rate_limit_exceeded"),
        503 | 529 => ErrorRow::new(
            503,
            503,
            "service_unavailable_error",
            "server_is_overloaded",
        ),
        405..=499 => ErrorRow::new(status, status, "invalid_request_error", own("Error")),
        _ => ErrorRow::new(502, 502, "api_error", own("InternalServerException")),
    }
}

/// Map a Bedrock error answer to the gateway error the client sees. See the module docs.
pub fn error_from_bedrock(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    provider: &Arc<str>,
) -> GatewayError {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default, alias = "Message")]
        message: Option<String>,
    }
    let ty = error_type(headers).unwrap_or_default();
    let upstream = serde_json::from_slice::<Doc>(body)
        .ok()
        .and_then(|d| d.message)
        .or_else(|| crate::provider::error_message(body))
        .unwrap_or_else(|| crate::provider::status_sentence(provider, status));
    let row = bedrock_row(status.as_u16(), &ty, &upstream);
    let message = if row.code == "upstream_auth_failed" {
        let named = if ty.is_empty() {
            String::new()
        } else {
            format!(" ({ty})")
        };
        format!("upstream {provider} refused the gateway's AWS credentials{named}: {upstream}")
    } else {
        upstream
    };
    row.into_error(status.as_u16(), message, headers, Some(provider.clone()))
}

/// The status a stream's `:exception-type` stands for.
fn exception_status(ty: &str) -> u16 {
    match ty.to_ascii_lowercase().as_str() {
        "throttlingexception" => 429,
        "serviceunavailableexception" => 503,
        "validationexception" => 400,
        "accessdeniedexception" => 403,
        "resourcenotfoundexception" => 404,
        "modeltimeoutexception" => 408,
        "modelstreamerrorexception" | "modelerrorexception" => 424,
        _ => 500,
    }
}

// ---------------------------------------------------------------------------------------------
// The event-stream framing

/// One decoded event-stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMessage {
    /// `:message-type` (`event`, `exception`, `error`).
    pub message_type: String,
    /// `:event-type`, `:exception-type` or `:error-code`.
    pub event_type: String,
    /// The payload (JSON).
    pub payload: Bytes,
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32 (IEEE 802.3) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in data {
        c = CRC_TABLE[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// The headers of a message: `(name, string value)` for the string-valued ones.
fn parse_headers(mut h: &[u8]) -> Result<Vec<(String, String)>, GatewayError> {
    let broken = || protocol_error("a malformed Bedrock event-stream header");
    let mut out = Vec::new();
    while !h.is_empty() {
        let n = usize::from(h[0]);
        let name = h.get(1..1 + n).ok_or_else(broken)?;
        let name = String::from_utf8_lossy(name).into_owned();
        h = &h[1 + n..];
        let ty = *h.first().ok_or_else(broken)?;
        h = &h[1..];
        let fixed = match ty {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => {
                let len = h.get(..2).ok_or_else(broken)?;
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let v = h.get(2..2 + len).ok_or_else(broken)?;
                if ty == 7 {
                    out.push((name, String::from_utf8_lossy(v).into_owned()));
                }
                h = &h[2 + len..];
                continue;
            }
            _ => return Err(broken()),
        };
        h = h.get(fixed..).ok_or_else(broken)?;
    }
    Ok(out)
}

/// An incremental decoder of `application/vnd.amazon.eventstream` messages
/// (`[total length u32][headers length u32][prelude CRC][headers][payload][message CRC]`, big
/// endian, both CRC-32 checked), for any split of the bytes. A message longer than the cap is
/// refused from its prelude, before it is held.
#[derive(Debug)]
pub struct EventStreamDecoder {
    buf: BytesMut,
    max: usize,
}

impl EventStreamDecoder {
    /// A decoder refusing messages over `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        EventStreamDecoder {
            buf: BytesMut::new(),
            max: max_message_bytes,
        }
    }

    /// Append upstream bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Whether bytes of an incomplete message are held.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<EventMessage>, GatewayError> {
        if self.buf.len() < 12 {
            return Ok(None);
        }
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let total = be(&self.buf[0..4]) as usize;
        let headers_len = be(&self.buf[4..8]) as usize;
        if crc32(&self.buf[0..8]) != be(&self.buf[8..12]) {
            return Err(protocol_error(
                "a Bedrock event-stream prelude failed its CRC check",
            ));
        }
        if total > self.max {
            return Err(protocol_error(format!(
                "the upstream sent an event larger than {} bytes ([server] \
                 max_translated_event_bytes)",
                self.max
            )));
        }
        if total < 16 || headers_len > total - 16 {
            return Err(protocol_error("a malformed Bedrock event-stream message"));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let msg = self.buf.split_to(total);
        if crc32(&msg[..total - 4]) != be(&msg[total - 4..]) {
            return Err(protocol_error(
                "a Bedrock event-stream message failed its CRC check",
            ));
        }
        let headers = parse_headers(&msg[12..12 + headers_len])?;
        let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let message_type = get(":message-type").unwrap_or_else(|| "event".to_owned());
        let event_type = get(":event-type")
            .or_else(|| get(":exception-type"))
            .or_else(|| get(":error-code"))
            .unwrap_or_default();
        let mut payload = msg.freeze();
        payload.advance(12 + headers_len);
        payload.truncate(payload.len() - 4);
        let payload = match (message_type.as_str(), get(":error-message")) {
            ("error", Some(m)) => Bytes::from(json!({"message": m}).to_string()),
            _ => payload,
        };
        Ok(Some(EventMessage {
            message_type,
            event_type,
            payload,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// The streaming translator: ConverseStream events → OpenAI `chat.completion.chunk` SSE bytes.
///
/// - the first content (or the stop) → a `role: assistant` chunk first (none for
///   `messageStart` alone, so an exception right after it can still fall back);
/// - `contentBlockDelta.text` → `delta.content`, `reasoningContent.text` →
///   `delta.reasoning_content`; `contentBlockStart.toolUse` → a tool call's `id` and `name`,
///   its `toolUse.input` deltas → `arguments` pieces, with the tool ordinal as `index`;
/// - `messageStop` → the `finish_reason` chunk; `metadata.usage` → the usage;
/// - at the upstream's end, the usage chunk when `include_usage`, then `[DONE]` — only after a
///   `messageStop` (a stream cut short is an error);
/// - an `exception` (or `error`) message → `Err`: the body fails before its first byte, or
///   ends with the in-band error after it.
#[derive(Debug)]
pub struct BedrockStream {
    include_usage: bool,
    prefix: BytesMut,
    opened: bool,
    /// `contentBlockIndex` → tool ordinal.
    tools: Vec<(u64, u64)>,
    stopped: bool,
    usage: Option<Usage>,
    provider: Arc<str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamEvent {
    #[serde(default)]
    content_block_index: Option<u64>,
    #[serde(default)]
    start: Option<Value>,
    #[serde(default)]
    delta: Option<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

impl BedrockStream {
    /// A translator for one answer of `model` from `provider`.
    pub fn new(include_usage: bool, created: u64, model: &str, provider: Arc<str>) -> Self {
        BedrockStream {
            include_usage,
            prefix: chunk_prefix(&format!("chatcmpl-{}", random_id()), created, model),
            opened: false,
            tools: Vec::new(),
            stopped: false,
            usage: None,
            provider,
        }
    }

    /// Whether anything has been written for the client yet.
    pub fn started(&self) -> bool {
        self.opened
    }

    fn choice(&mut self, out: &mut BytesMut, delta: &[&[u8]], finish: Option<&str>) {
        if !self.opened {
            self.opened = true;
            self.choice(out, &[b"{\"role\":\"assistant\",\"content\":\"\"}"], None);
        }
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"{\"index\":0,\"delta\":");
        for d in delta {
            out.extend_from_slice(d);
        }
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => {
                out.extend_from_slice(b"\"");
                out.extend_from_slice(f.as_bytes());
                out.extend_from_slice(b"\"}");
            }
            None => out.extend_from_slice(b"null}"),
        }
        out.extend_from_slice(chunk_suffix(self.include_usage));
    }

    fn tool_ordinal(&mut self, block: u64) -> u64 {
        if let Some((_, k)) = self.tools.iter().find(|(b, _)| *b == block) {
            return *k;
        }
        let k = self.tools.len() as u64;
        self.tools.push((block, k));
        k
    }

    fn tool_delta(
        &mut self,
        out: &mut BytesMut,
        block: u64,
        head: Option<(&str, &str)>,
        args: &str,
    ) {
        let k = self.tool_ordinal(block);
        let mut buf = BytesMut::with_capacity(64 + args.len());
        buf.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
        write_u64(&mut buf, k);
        if let Some((id, name)) = head {
            buf.extend_from_slice(b",\"id\":");
            write_json_str(&mut buf, id);
            buf.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
            write_json_str(&mut buf, name);
            buf.extend_from_slice(b",\"arguments\":");
        } else {
            buf.extend_from_slice(b",\"function\":{\"arguments\":");
        }
        write_json_str(&mut buf, args);
        buf.extend_from_slice(b"}}]}");
        self.choice(out, &[&buf], None);
    }

    fn delta(&mut self, out: &mut BytesMut, block: u64, delta: &Value) {
        let (key, text): (&[u8], _) = if let Some(t) = delta.get("text").and_then(Value::as_str) {
            (b"{\"content\":", t)
        } else if let Some(t) = delta
            .pointer("/reasoningContent/text")
            .and_then(Value::as_str)
        {
            (b"{\"reasoning_content\":", t)
        } else {
            if let Some(a) = delta.pointer("/toolUse/input").and_then(Value::as_str) {
                self.tool_delta(out, block, None, a);
            }
            return;
        };
        if text.is_empty() {
            return;
        }
        let mut lit = BytesMut::with_capacity(text.len() + 2);
        write_json_str(&mut lit, text);
        self.choice(out, &[key, &lit, b"}"], None);
    }

    fn exception(&self, m: &EventMessage) -> GatewayError {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default, alias = "Message")]
            message: Option<String>,
        }
        let message = serde_json::from_slice::<Doc>(&m.payload)
            .ok()
            .and_then(|d| d.message)
            .unwrap_or_else(|| format!("the upstream stream failed with {}", m.event_type));
        let status = exception_status(&m.event_type);
        let row = bedrock_row(status, &m.event_type, &message);
        let upstream = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        row.into_error(
            upstream.as_u16(),
            message,
            &HeaderMap::new(),
            Some(self.provider.clone()),
        )
    }

    /// One event-stream message; `Err` for an exception or a broken event.
    pub fn on_message(&mut self, m: &EventMessage, out: &mut BytesMut) -> Result<(), GatewayError> {
        if m.message_type != "event" {
            return Err(self.exception(m));
        }
        let ev: StreamEvent = serde_json::from_slice(&m.payload)
            .map_err(|e| protocol_error(format!("invalid Bedrock {} event: {e}", m.event_type)))?;
        let block = ev.content_block_index.unwrap_or(0);
        match m.event_type.as_str() {
            "contentBlockStart" => {
                if let Some(tu) = ev.start.as_ref().and_then(|s| s.get("toolUse")) {
                    let s = |k: &str| tu.get(k).and_then(Value::as_str).unwrap_or("");
                    self.tool_delta(out, block, Some((s("toolUseId"), s("name"))), "");
                }
            }
            "contentBlockDelta" => {
                if let Some(d) = &ev.delta {
                    self.delta(out, block, d);
                }
            }
            "messageStop" if !self.stopped => {
                self.stopped = true;
                let f = finish_reason(ev.stop_reason.as_deref().unwrap_or("end_turn"));
                self.choice(out, &[b"{}"], Some(f));
            }
            "metadata" => {
                if let Some(u) = ev.usage {
                    self.usage = Some(u.usage());
                }
            }
            // messageStart, contentBlockStop, and events added later.
            _ => {}
        }
        Ok(())
    }

    /// The upstream ended: the usage chunk and `[DONE]`, or an error when it was cut short.
    pub fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), GatewayError> {
        if !self.stopped {
            return Err(protocol_error(
                "the Bedrock stream ended before its messageStop",
            ));
        }
        if self.include_usage {
            out.extend_from_slice(&self.prefix);
            out.extend_from_slice(b"],\"usage\":");
            write_usage(out, &self.usage.unwrap_or_default());
            out.extend_from_slice(b"}\n\n");
        }
        out.extend_from_slice(DONE);
        Ok(())
    }
}

/// Decode and translate a whole upstream byte stream split into `chunks`, in one go: the
/// output and the error it ended with, if any (what [`EventStreamBody`] does; for tests).
pub fn translate_event_stream<I>(
    t: &mut BedrockStream,
    max_event_bytes: usize,
    chunks: I,
) -> (Bytes, Option<GatewayError>)
where
    I: IntoIterator<Item = Bytes>,
{
    let mut d = EventStreamDecoder::new(max_event_bytes);
    let mut out = BytesMut::new();
    for c in chunks {
        d.push(&c);
        loop {
            match d.next_message() {
                Ok(None) => break,
                Ok(Some(m)) => {
                    if let Err(e) = t.on_message(&m, &mut out) {
                        return (out.freeze(), Some(e));
                    }
                }
                Err(e) => return (out.freeze(), Some(e)),
            }
        }
    }
    if d.has_partial() {
        return (
            out.freeze(),
            Some(protocol_error("the Bedrock stream ended inside a message")),
        );
    }
    let err = t.on_eof(&mut out).err();
    (out.freeze(), err)
}

pin_project! {
    /// A response body translating a ConverseStream body on the fly: event-stream messages in,
    /// `chat.completion.chunk` SSE out. Every failure (an exception message, a broken frame, a
    /// stream cut short) ends the body with an `Err` holding the [`GatewayError`] (scrubbed of
    /// the adapter's credentials): before the first byte it fails the attempt (Fallback may try
    /// the next target); after it the stream layer writes the in-band error event.
    pub struct EventStreamBody<B> {
        #[pin]
        inner: B,
        decoder: EventStreamDecoder,
        translator: BedrockStream,
        policy: Option<Arc<HeaderPolicy>>,
        out: BytesMut,
        closing: Option<Option<GatewayError>>,
    }
}

impl<B> EventStreamBody<B> {
    /// Wrap `inner` (the upstream body) with `translator`, refusing messages over
    /// `max_event_bytes`; errors are scrubbed with `policy`.
    pub fn new(
        inner: B,
        translator: BedrockStream,
        max_event_bytes: usize,
        policy: Option<Arc<HeaderPolicy>>,
    ) -> Self {
        EventStreamBody {
            inner,
            decoder: EventStreamDecoder::new(max_event_bytes),
            translator,
            policy,
            out: BytesMut::with_capacity(1024),
            closing: None,
        }
    }
}

impl<B> HttpBody for EventStreamBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some(err) = this.closing {
                if !this.out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
                }
                let err = err.take().map(|e| match this.policy {
                    Some(p) => p.scrub(e),
                    None => e,
                });
                return Poll::Ready(err.map(|e| Err(Box::new(e) as BoxError)));
            }
            let mut failed = None;
            loop {
                match this.decoder.next_message() {
                    Ok(None) => break,
                    Ok(Some(m)) => {
                        if let Err(e) = this.translator.on_message(&m, this.out) {
                            failed = Some(e);
                            break;
                        }
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                *this.closing = Some(Some(e));
                continue;
            }
            if !this.out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.decoder.push(&data);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    *this.closing = Some(None);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    let err = if this.decoder.has_partial() {
                        Some(protocol_error("the Bedrock stream ended inside a message"))
                    } else {
                        this.translator.on_eof(this.out).err()
                    };
                    *this.closing = Some(err);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.closing, Some(None)) && self.out.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Value {
        serde_json::from_slice(&request_to_bedrock(v.to_string().as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn a_chat_request_becomes_a_converse_request() {
        let out = req(json!({
            "model": "m", "max_tokens": 100, "temperature": 0.5, "top_p": 0.9, "stop": "END",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "user", "content": [{"type": "text", "text": "weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
                {"role": "user", "content": "thanks"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
                "parameters": {"type": "object"}}}],
            "tool_choice": "required"
        }));
        assert_eq!(
            out,
            json!({
                "system": [{"text": "be brief"}],
                "messages": [
                    {"role": "user", "content": [{"text": "hi"}, {"text": "weather?"},
                        {"image": {"format": "png", "source": {"bytes": "AAAA"}}}]},
                    {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1",
                        "name": "get_weather", "input": {"location": "Paris"}}}]},
                    {"role": "user", "content": [
                        {"toolResult": {"toolUseId": "t1", "content": [{"text": "sunny"}]}},
                        {"text": "thanks"}]}
                ],
                "inferenceConfig": {"maxTokens": 100, "temperature": 0.5, "topP": 0.9,
                    "stopSequences": ["END"]},
                "toolConfig": {"tools": [{"toolSpec": {"name": "get_weather", "description": "d",
                    "inputSchema": {"json": {"type": "object"}}}}], "toolChoice": {"any": {}}}
            })
        );
    }

    #[test]
    fn fields_converse_cannot_honour_are_refused_naming_them() {
        for (field, v) in [
            ("n", json!(2)),
            ("tool_choice", json!("none")),
            ("response_format", json!({"type": "json_object"})),
            ("reasoning_effort", json!("low")),
        ] {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}]});
            body[field] = v;
            let e = request_to_bedrock(body.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{field}");
            assert!(e.to_json().to_string().contains(field), "{field}");
        }
    }

    #[test]
    fn a_converse_answer_becomes_a_chat_completion() {
        let body = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"text": "Let me check."},
                {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather",
                    "input": {"location": "Paris"}}}]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 7, "outputTokens": 6, "totalTokens": 17,
                "cacheReadInputTokens": 4}
        });
        let out: Value = serde_json::from_slice(
            &response_from_bedrock(body.to_string().as_bytes(), 1, "m").unwrap(),
        )
        .unwrap();
        let c = &out["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls");
        assert_eq!(c["message"]["content"], "Let me check.");
        assert_eq!(c["message"]["tool_calls"][0]["id"], "tooluse_1");
        assert_eq!(
            c["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"location\":\"Paris\"}"
        );
        assert_eq!(out["usage"]["prompt_tokens"], 11);
        assert_eq!(out["usage"]["completion_tokens"], 6);
        assert_eq!(out["usage"]["total_tokens"], 17);
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (r, f) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("tool_use", "tool_calls"),
            ("max_tokens", "length"),
            ("content_filtered", "content_filter"),
            ("guardrail_intervened", "content_filter"),
        ] {
            assert_eq!(finish_reason(r), f);
        }
    }

    #[test]
    fn errors_keep_their_meaning() {
        let p: Arc<str> = Arc::from("bedrock");
        let mut h = HeaderMap::new();
        let mut check = |status: u16, ty: &str, want: u16, code: &str| {
            h.insert(
                "x-amzn-errortype",
                format!("{ty}:http://internal.amazon.com/").parse().unwrap(),
            );
            let e = error_from_bedrock(
                StatusCode::from_u16(status).unwrap(),
                &h,
                br#"{"message":"nope"}"#,
                &p,
            );
            assert_eq!(e.status().as_u16(), want, "{ty}");
            assert_eq!(e.to_json()["error"]["code"], code, "{ty}");
        };
        check(429, "ThrottlingException", 429, "rate_limit_exceeded");
        check(400, "ValidationException", 400, "ValidationException");
        check(403, "AccessDeniedException", 502, "upstream_auth_failed");
        check(
            403,
            "UnrecognizedClientException",
            502,
            "upstream_auth_failed",
        );
        check(404, "ResourceNotFoundException", 404, "model_not_found");
        check(
            503,
            "ServiceUnavailableException",
            503,
            "server_is_overloaded",
        );
        check(
            500,
            "InternalServerException",
            502,
            "InternalServerException",
        );
        h.insert("x-amzn-errortype", "ThrottlingException".parse().unwrap());
        h.insert("retry-after", "7".parse().unwrap());
        let e = error_from_bedrock(StatusCode::TOO_MANY_REQUESTS, &h, b"{}", &p);
        assert_eq!(e.status().as_u16(), 429);
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(7)));
    }
}
