//! OpenAI chat ⇄ Google Gemini (`generateContent`, `streamGenerateContent?alt=sse`).
//!
//! - [`request_to_gemini`] and [`gemini_path`]: an OpenAI chat body → a Gemini body and path.
//! - [`response_from_gemini`]: a `GenerateContentResponse` → `chat.completion`.
//! - [`GeminiStream`]: Gemini SSE chunks → `chat.completion.chunk` SSE bytes.
//! - [`error_from_gemini`]: a Gemini error answer → [`GatewayError`].
//!
//! ## Request fields
//! | OpenAI | Gemini |
//! |---|---|
//! | `system` / `developer` messages | `systemInstruction.parts[].text` |
//! | `user` / `assistant` | `contents[].role` `user` / `model` (consecutive turns merged) |
//! | `image_url` data URL / http(s) URL | `inlineData {mimeType, data}` / `fileData {mimeType (from the extension), fileUri}` |
//! | `assistant.tool_calls` | `functionCall {name, args}` (`arguments` must be a JSON object), with `thoughtSignature` from the call's `extra_content.google.thought_signature` (as Google's OpenAI-compatible API carries it; not a string → 400) |
//! | `tool` message | `functionResponse {name (looked up from tool_call_id), response: {content}}` in a user turn |
//! | `tools` | `tools[{functionDeclarations[{name, description, parametersJsonSchema}]}]` |
//! | `tool_choice` auto / required / none / named | `toolConfig.functionCallingConfig.mode` AUTO / ANY / NONE / ANY + `allowedFunctionNames` |
//! | `max_completion_tokens` ?? `max_tokens` | `generationConfig.maxOutputTokens` |
//! | `temperature`, `top_p`, `stop`, `n`, `seed`, `presence_penalty`, `frequency_penalty` | `temperature`, `topP`, `stopSequences`, `candidateCount`, `seed`, `presencePenalty`, `frequencyPenalty` |
//! | `response_format` json_object / json_schema | `responseMimeType: application/json` (+ `responseJsonSchema`) |
//! | `reasoning_effort` none·minimal / low / medium / high | `thinkingConfig.thinkingBudget` 0 / 1024 / 8192 / 24576 (with `includeThoughts: true` above 0) |
//!
//! Back the other way, thought parts (`thought: true`) become the non-standard
//! `reasoning_content`, and a `functionCall` part's `thoughtSignature` the tool call's
//! `extra_content.google.thought_signature`.
//!
//! Dropped: `stream`, `stream_options` (the path decides), `user`, `safety_identifier`,
//! `metadata`, `store`, `service_tier`, `prompt_cache_key`, `logit_bias`,
//! `parallel_tool_calls`, unknown fields. Refused (400): `logprobs: true`, `top_logprobs`,
//! `audio`, non-text `modalities`, `prediction`, `web_search_options`, legacy
//! `functions`/`function_call`, audio and file parts, http image URLs of unknown type.
//!
//! ## Errors (upstream → OpenAI face)
//! The meaning is kept: OpenAI's `code` where the meaning has one, otherwise Gemini's RPC
//! `status` as sent; the message as sent (scrubbed of the adapter's key); `Retry-After` from the
//! header or `RetryInfo.retryDelay`.
//!
//! | Gemini | status | `type` | `code` |
//! |---|---|---|---|
//! | 400 `INVALID_ARGUMENT` with reason `API_KEY_INVALID` (or 401) | 401 | `authentication_error` | `invalid_api_key` |
//! | 400 `INVALID_ARGUMENT` "The input token count … exceeds the maximum number of tokens …" | 400 | `invalid_request_error` | `context_length_exceeded` |
//! | 400 `INVALID_ARGUMENT` / `FAILED_PRECONDITION` | 400 | `invalid_request_error` | the RPC status |
//! | 403 `PERMISSION_DENIED` | 403 | `permission_error` | `PERMISSION_DENIED` |
//! | 404 `NOT_FOUND` naming a model | 404 | `invalid_request_error` | `model_not_found` |
//! | other 404 (a wrong base URL) | 502 | `api_error` | `NOT_FOUND` |
//! | 429 `RESOURCE_EXHAUSTED` with a `RetryInfo` (or no `QuotaFailure`) | 429 + `Retry-After` | `rate_limit_error` | `rate_limit_exceeded` |
//! | 429 `RESOURCE_EXHAUSTED` with a `QuotaFailure` and no `RetryInfo` | 429 | `insufficient_quota` | `insufficient_quota` |
//! | 499 `CANCELLED`, 500 `INTERNAL` | 502 | `api_error` | the RPC status |
//! | 503 `UNAVAILABLE` (and a 529) | 503 + `Retry-After` | `service_unavailable_error` | `server_is_overloaded` |
//! | 504 `DEADLINE_EXCEEDED` | 504 | `timeout_error` | `DEADLINE_EXCEEDED` |

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    DONE, ErrorRow, Flow, StreamTranslator, chunk_prefix, chunk_suffix, protocol_error,
    split_data_url, usage_json, write_json_str, write_u64, write_usage,
};
use crate::error::GatewayError;
use crate::provider::headers::HeaderPolicy;
use crate::provider::is_context_length_message;
use crate::usage::Usage;

fn bad(msg: impl Into<Cow<'static, str>>, param: impl Into<Cow<'static, str>>) -> GatewayError {
    GatewayError::bad_request(msg, None).with_param(param)
}

const PROVIDER: &str = "Gemini";

fn unsupported(field: &'static str) -> GatewayError {
    super::unsupported(field, PROVIDER)
}

/// The path of a Gemini call, relative to `https://generativelanguage.googleapis.com`:
/// `/v1beta/models/{model}:generateContent` or `…:streamGenerateContent?alt=sse`.
pub fn gemini_path(model: &str, stream: bool) -> String {
    if stream {
        format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("/v1beta/models/{model}:generateContent")
    }
}

fn mime_from_extension(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path.rsplit('.').next()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => return None,
    })
}

fn texts(content: &Value, param: &str) -> Result<Vec<String>, GatewayError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").or_else(|| p.get("refusal")),
                ) {
                    (Some("text" | "refusal"), Some(Value::String(t))) => Ok(t.clone()),
                    _ => Err(bad(
                        "only text parts are allowed here",
                        format!("{param}[{i}]"),
                    )),
                }
            })
            .collect(),
        _ => Err(bad(
            "content must be a string or an array",
            param.to_owned(),
        )),
    }
}

fn user_part(p: &Value, param: String) -> Result<Option<Value>, GatewayError> {
    match p.get("type").and_then(Value::as_str) {
        Some("text") => {
            let t = p.get("text").and_then(Value::as_str).unwrap_or("");
            Ok((!t.is_empty()).then(|| json!({"text": t})))
        }
        Some("image_url") => {
            let url = p
                .get("image_url")
                .and_then(|i| i.get("url").or(Some(i)))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("image_url.url is required", param.clone()))?;
            if let Some((media, data)) = split_data_url(url) {
                Ok(Some(
                    json!({"inlineData": {"mimeType": media, "data": data}}),
                ))
            } else if url.starts_with("https://") || url.starts_with("http://") {
                let mime = mime_from_extension(url).ok_or_else(|| {
                    bad(
                        "the Gemini provider needs an image URL ending in a known extension, or a data URL",
                        param.clone(),
                    )
                })?;
                Ok(Some(
                    json!({"fileData": {"mimeType": mime, "fileUri": url}}),
                ))
            } else {
                Err(bad(
                    "image_url.url must be an http(s) URL or a base64 data URL",
                    param,
                ))
            }
        }
        Some("file") => match p
            .get("file")
            .and_then(|f| f.get("file_data"))
            .and_then(Value::as_str)
            .and_then(split_data_url)
        {
            Some((media, data)) => Ok(Some(
                json!({"inlineData": {"mimeType": media, "data": data}}),
            )),
            None => Err(bad(
                "only inline file_data is supported by the Gemini provider",
                param,
            )
            .with_code("unsupported_parameter")),
        },
        Some("input_audio") => Err(bad(
            "audio input is not supported by the Gemini provider",
            param,
        )
        .with_code("unsupported_parameter")),
        _ => Err(bad("unknown content part type", param)),
    }
}

/// A Gemini turn: its role and parts.
type Turn = (&'static str, Vec<Value>);

/// The parts of a `user` message.
fn user_parts(content: &Value, param: String) -> Result<Vec<Value>, GatewayError> {
    Ok(match content {
        Value::String(s) if s.is_empty() => Vec::new(),
        Value::String(s) => vec![json!({"text": s})],
        Value::Array(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (j, p) in list.iter().enumerate() {
                if let Some(x) = user_part(p, format!("{param}[{j}]"))? {
                    out.push(x);
                }
            }
            out
        }
        _ => return Err(bad("content must be a string or an array", param)),
    })
}

/// One assistant `tool_calls[]` entry as a `functionCall` part (remembering its name by id),
/// with the `thoughtSignature` its answer carried (`extra_content.google.thought_signature`,
/// as Google's OpenAI-compatible API puts it): Gemini refuses a function-calling turn whose
/// earlier call lost it.
fn function_call(
    c: &Value,
    p: String,
    call_names: &mut HashMap<String, String>,
) -> Result<Value, GatewayError> {
    let f = c
        .get("function")
        .ok_or_else(|| bad("only function tool calls are supported", p.clone()))?;
    let name = f.get("name").and_then(Value::as_str).unwrap_or("");
    let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
    let args: Value = if args.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(args)
            .map_err(|_| bad("function.arguments is not valid JSON", p.clone()))?
    };
    if !args.is_object() {
        return Err(bad("function.arguments must be a JSON object", p));
    }
    if let Some(id) = c.get("id").and_then(Value::as_str) {
        call_names.insert(id.to_owned(), name.to_owned());
    }
    let mut part = json!({"functionCall": {"name": name, "args": args}});
    match c.pointer("/extra_content/google/thought_signature") {
        None | Some(Value::Null) => {}
        Some(Value::String(sig)) => part["thoughtSignature"] = Value::from(sig.as_str()),
        Some(_) => {
            return Err(bad(
                "thought_signature must be the string the answer carried",
                format!("{p}.extra_content.google.thought_signature"),
            ));
        }
    }
    Ok(part)
}

/// The parts of an `assistant` message (`i`): its texts, then its function calls.
fn assistant_parts(
    i: usize,
    m: &Value,
    content: &Value,
    param: &str,
    call_names: &mut HashMap<String, String>,
) -> Result<Vec<Value>, GatewayError> {
    let mut parts: Vec<Value> = texts(content, param)?
        .into_iter()
        .filter(|t| !t.is_empty())
        .map(|t| json!({"text": t}))
        .collect();
    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
        for (j, c) in calls.iter().enumerate() {
            let p = format!("messages[{i}].tool_calls[{j}]");
            parts.push(function_call(c, p, call_names)?);
        }
    }
    Ok(parts)
}

/// The parts of a `tool` message (`i`): one `functionResponse` named after the call it answers.
fn tool_parts(
    i: usize,
    m: &Value,
    content: &Value,
    param: &str,
    call_names: &HashMap<String, String>,
) -> Result<Vec<Value>, GatewayError> {
    let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
    let name = call_names.get(id).ok_or_else(|| {
        bad(
            "tool_call_id does not match any earlier assistant tool call",
            format!("messages[{i}].tool_call_id"),
        )
    })?;
    let text = texts(content, param)?.concat();
    Ok(vec![
        json!({"functionResponse": {"name": name, "response": {"content": text}}}),
    ])
}

/// The Gemini turns (consecutive same-role turns merged) and the system parts of `messages`.
fn gemini_contents(messages: &[Value]) -> Result<(Vec<Turn>, Vec<Value>), GatewayError> {
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<Turn> = Vec::new();
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        let param = format!("messages[{i}].content");
        let (role, parts): Turn = match role {
            "system" | "developer" => {
                for t in texts(content, &param)? {
                    if !t.is_empty() {
                        system.push(json!({"text": t}));
                    }
                }
                continue;
            }
            "user" => ("user", user_parts(content, param)?),
            "assistant" => (
                "model",
                assistant_parts(i, m, content, &param, &mut call_names)?,
            ),
            "tool" => ("user", tool_parts(i, m, content, &param, &call_names)?),
            "function" => return Err(unsupported("functions")),
            other => {
                return Err(bad(
                    format!("unknown message role '{}'", crate::request::prefix(other)),
                    format!("messages[{i}].role"),
                ));
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((r, p)) if *r == role => p.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    Ok((contents, system))
}

/// The `tools` member: the request's function tools as `functionDeclarations`.
fn gemini_tools(req: &Map<String, Value>) -> Result<Option<Value>, GatewayError> {
    let functions = super::function_tools(req, "Gemini")?;
    if functions.is_empty() {
        return Ok(None);
    }
    let mut decls = Vec::with_capacity(functions.len());
    for f in functions {
        let mut d = super::named_tool(f);
        if let Some(x) = f.get("parameters").filter(|v| !v.is_null()) {
            d.insert("parametersJsonSchema".into(), x.clone());
        }
        decls.push(Value::Object(d));
    }
    Ok(Some(json!([{"functionDeclarations": decls}])))
}

/// `tool_choice` → `toolConfig.functionCallingConfig`.
fn function_calling_config(req: &Map<String, Value>) -> Result<Option<Value>, GatewayError> {
    Ok(match req.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({"mode": "AUTO"}),
            "required" => json!({"mode": "ANY"}),
            "none" => json!({"mode": "NONE"}),
            _ => {
                return Err(GatewayError::bad_request(
                    "unknown tool_choice",
                    Some("tool_choice"),
                ));
            }
        }),
        Some(obj) => match obj
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => Some(json!({"mode": "ANY", "allowedFunctionNames": [name]})),
            None => {
                return Err(GatewayError::bad_request(
                    "only {type: function, function: {name}} tool_choice objects are supported",
                    Some("tool_choice"),
                ));
            }
        },
    })
}

/// `response_format` → `responseMimeType` (and `responseJsonSchema`) in `gc`.
fn response_format(rf: &Value, gc: &mut Map<String, Value>) -> Result<(), GatewayError> {
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            gc.insert("responseMimeType".into(), Value::from("application/json"));
        }
        Some("json_schema") => {
            gc.insert("responseMimeType".into(), Value::from("application/json"));
            if let Some(s) = rf.get("json_schema").and_then(|j| j.get("schema")) {
                gc.insert("responseJsonSchema".into(), s.clone());
            }
        }
        _ => return Err(unsupported("response_format")),
    }
    Ok(())
}

/// The `generationConfig` member (empty when the request sets none of its fields).
fn generation_config(req: &Map<String, Value>) -> Result<Map<String, Value>, GatewayError> {
    let mut gc = Map::new();
    let mut copy = |from: &str, to: &str| {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            gc.insert(to.into(), v.clone());
        }
    };
    copy("temperature", "temperature");
    copy("top_p", "topP");
    copy("top_k", "topK");
    copy("n", "candidateCount");
    copy("seed", "seed");
    copy("presence_penalty", "presencePenalty");
    copy("frequency_penalty", "frequencyPenalty");
    if let Some(n) = req
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| req.get("max_tokens").and_then(Value::as_u64))
    {
        gc.insert("maxOutputTokens".into(), Value::from(n));
    }
    match req.get("stop") {
        Some(Value::String(s)) => {
            gc.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(list)) if !list.is_empty() => {
            gc.insert("stopSequences".into(), Value::Array(list.clone()));
        }
        _ => {}
    }
    if let Some(rf) = req.get("response_format").filter(|v| !v.is_null()) {
        response_format(rf, &mut gc)?;
    }
    if let Some(effort) = req.get("reasoning_effort").and_then(Value::as_str) {
        let budget = match effort {
            "none" | "minimal" => 0,
            "low" => 1024,
            "medium" => 8192,
            "high" => 24576,
            _ => return Err(unsupported("reasoning_effort")),
        };
        // With a budget, the thought summaries come back (as `reasoning_content`).
        let config = match budget {
            0 => json!({"thinkingBudget": 0}),
            b => json!({"thinkingBudget": b, "includeThoughts": true}),
        };
        gc.insert("thinkingConfig".into(), config);
    }
    Ok(gc)
}

/// Translate an OpenAI chat request body into a Gemini `generateContent` body (the model goes
/// in the path: [`gemini_path`]). See the module docs for the field rules.
pub fn request_to_gemini(body: &[u8]) -> Result<Bytes, GatewayError> {
    let (req, messages) = super::chat_request(body, PROVIDER)?;
    let (contents, system) = gemini_contents(&messages)?;

    let mut out = Map::new();
    out.insert(
        "contents".into(),
        Value::Array(
            contents
                .into_iter()
                .map(|(role, parts)| json!({"role": role, "parts": parts}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    if let Some(tools) = gemini_tools(&req)? {
        out.insert("tools".into(), tools);
    }
    if let Some(f) = function_calling_config(&req)? {
        out.insert("toolConfig".into(), json!({"functionCallingConfig": f}));
    }
    let gc = generation_config(&req)?;
    if !gc.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gc));
    }
    serde_json::to_vec(&Value::Object(out))
        .map(Bytes::from)
        .map_err(|e| GatewayError::internal(format!("serializing the Gemini request: {e}")))
}

/// Gemini `finishReason` → OpenAI `finish_reason` (`tool_calls` when the candidate called a
/// function: Gemini ends those with `STOP`).
pub fn finish_reason(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "LANGUAGE"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION"
        | "IMAGE_OTHER" => "content_filter",
        _ if called_tools => "tool_calls",
        // STOP, MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, TOO_MANY_TOOL_CALLS, OTHER, …
        _ => "stop",
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    total_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    tool_use_prompt_token_count: u64,
}

impl WireUsage {
    /// `prompt = promptTokenCount + toolUsePromptTokenCount` (cached included),
    /// `completion = candidates + thoughts`, `reasoning = thoughts`, `cached = cachedContent`,
    /// `total = totalTokenCount`.
    fn usage(&self) -> Usage {
        let prompt = self
            .prompt_token_count
            .saturating_add(self.tool_use_prompt_token_count);
        let completion = self
            .candidates_token_count
            .saturating_add(self.thoughts_token_count);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: self
                .total_token_count
                .unwrap_or(prompt.saturating_add(completion)),
            cached_tokens: self.cached_content_token_count,
            cache_write_tokens: 0,
            reasoning_tokens: self.thoughts_token_count,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Vec<WireCandidate>,
    #[serde(default)]
    prompt_feedback: Option<Value>,
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Deserialize)]
struct WireContent {
    #[serde(default)]
    parts: Vec<Value>,
}

/// A function call of a candidate.
struct Call {
    /// Gemini's call id, if it sent one.
    id: Option<String>,
    name: String,
    /// The arguments, as JSON text.
    args: String,
    /// The part's `thoughtSignature`.
    signature: Option<String>,
}

impl Call {
    fn of(part: &Value, fc: &Value) -> Call {
        let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Call {
            id: str_of(fc, "id"),
            name: str_of(fc, "name").unwrap_or_default(),
            args: fc
                .get("args")
                .map(Value::to_string)
                .unwrap_or_else(|| "{}".to_owned()),
            signature: str_of(part, "thoughtSignature"),
        }
    }

    /// The chat `tool_calls` entry, with id `id`.
    fn json(self, id: String) -> Value {
        let mut call = json!({"id": id, "type": "function",
            "function": {"name": self.name, "arguments": self.args}});
        if let Some(sig) = self.signature {
            call["extra_content"] = json!({"google": {"thought_signature": sig}});
        }
        call
    }
}

/// What one candidate's parts say: text, thought text and function calls.
#[derive(Default)]
struct Parts {
    text: Option<String>,
    thoughts: String,
    calls: Vec<Call>,
}

/// Text, thought summaries (`thought: true` parts) and function calls of a candidate's parts.
fn split_parts(parts: &[Value]) -> Parts {
    let mut out = Parts::default();
    for p in parts {
        let thought = p.get("thought").and_then(Value::as_bool) == Some(true);
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            match thought {
                true => out.thoughts.push_str(t),
                false => out.text.get_or_insert_with(String::new).push_str(t),
            }
        } else if let Some(fc) = p.get("functionCall") {
            out.calls.push(Call::of(p, fc));
        }
    }
    out
}

fn random_id() -> String {
    use rand::{Rng, SeedableRng};
    let n: u64 = rand::rngs::SmallRng::from_os_rng().random();
    format!("{n:016x}")
}

fn model_of(r: &WireResponse, fallback: &str) -> String {
    r.model_version
        .clone()
        .unwrap_or_else(|| fallback.to_owned())
}

/// Translate a Gemini `GenerateContentResponse` into an OpenAI `chat.completion` body.
/// `model` is reported when the response names no `modelVersion`. Calls without a Gemini `id`
/// get `call_<responseId>_<n>`.
pub fn response_from_gemini(body: &[u8], created: u64, model: &str) -> Result<Bytes, GatewayError> {
    let r: WireResponse = serde_json::from_slice(body)
        .map_err(|e| protocol_error(format!("invalid Gemini response: {e}")))?;
    let rid = r.response_id.clone().unwrap_or_else(random_id);
    let mut choices = Vec::new();
    let mut call_no = 0usize;
    for (pos, c) in r.candidates.iter().enumerate() {
        let parts = c.content.as_ref().map(|c| &c.parts[..]).unwrap_or(&[]);
        let Parts {
            text,
            thoughts,
            calls,
        } = split_parts(parts);
        let mut message = json!({"role": "assistant", "content": text, "refusal": null});
        if !thoughts.is_empty() {
            message["reasoning_content"] = Value::from(thoughts);
        }
        let called = !calls.is_empty();
        if called {
            let list: Vec<Value> = calls
                .into_iter()
                .map(|c| {
                    let id =
                        c.id.clone()
                            .unwrap_or_else(|| format!("call_{rid}_{call_no}"));
                    call_no += 1;
                    c.json(id)
                })
                .collect();
            message["tool_calls"] = Value::Array(list);
        }
        choices.push(json!({
            "index": c.index.unwrap_or(pos as u32),
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(c.finish_reason.as_deref().unwrap_or("STOP"), called),
        }));
    }
    if choices.is_empty() {
        let blocked = r
            .prompt_feedback
            .as_ref()
            .and_then(|f| f.get("blockReason"))
            .is_some();
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": null, "refusal": null},
            "logprobs": null,
            "finish_reason": if blocked { "content_filter" } else { "stop" },
        }));
    }
    let mut doc = json!({
        "id": format!("chatcmpl-{rid}"),
        "object": "chat.completion",
        "created": created,
        "model": model_of(&r, model),
        "choices": choices,
    });
    if let (Some(u), Some(o)) = (r.usage_metadata, doc.as_object_mut()) {
        o.insert("usage".into(), usage_json(&u.usage()));
    }
    serde_json::to_vec(&doc)
        .map(Bytes::from)
        .map_err(|e| GatewayError::internal(format!("serializing the response: {e}")))
}

/// What a Google error body says (`{"error":{code,message,status,details:[…]}}`, or a list
/// of one).
#[derive(Debug, Default)]
struct GeminiError {
    message: Option<String>,
    status: Option<String>,
    key_invalid: bool,
    /// `RetryInfo.retryDelay`.
    delay: Option<Duration>,
    /// A `QuotaFailure` detail.
    quota_failure: bool,
}

fn error_parts(body: &[u8]) -> GeminiError {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Doc {
        One(Wrapper),
        List(Vec<Wrapper>),
    }
    #[derive(Deserialize)]
    struct Wrapper {
        error: Obj,
    }
    #[derive(Deserialize)]
    struct Obj {
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        status: Option<String>,
        #[serde(default)]
        details: Vec<Detail>,
    }
    #[derive(Deserialize)]
    struct Detail {
        #[serde(default, rename = "@type")]
        ty: String,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default, rename = "retryDelay")]
        retry_delay: Option<String>,
    }
    let obj = match serde_json::from_slice::<Doc>(body) {
        Ok(Doc::One(w)) => w.error,
        Ok(Doc::List(l)) => match l.into_iter().next() {
            Some(w) => w.error,
            None => return GeminiError::default(),
        },
        Err(_) => return GeminiError::default(),
    };
    let mut out = GeminiError {
        message: obj.message,
        status: obj.status,
        ..GeminiError::default()
    };
    for d in obj.details {
        out.key_invalid |= d.reason.as_deref() == Some("API_KEY_INVALID");
        out.quota_failure |= d.ty.ends_with("google.rpc.QuotaFailure");
        if let Some(s) = d.retry_delay {
            out.delay = s
                .strip_suffix('s')
                .and_then(|x| x.parse::<f64>().ok())
                .filter(|x| x.is_finite() && *x >= 0.0)
                .map(Duration::from_secs_f64);
        }
    }
    out
}

/// The table of the module docs: Gemini status and error body → the OpenAI face.
fn gemini_row(status: u16, g: &GeminiError, message: &str) -> ErrorRow {
    let own = |fallback: &'static str| -> Cow<'static, str> {
        match &g.status {
            Some(s) if !s.is_empty() => Cow::Owned(s.clone()),
            _ => Cow::Borrowed(fallback),
        }
    };
    match status {
        _ if g.key_invalid => ErrorRow::new(401, 401, "authentication_error", "invalid_api_key"),
        400 if is_context_length_message(message) => {
            ErrorRow::new(400, 400, "invalid_request_error", "context_length_exceeded")
        }
        400 => ErrorRow::new(400, 400, "invalid_request_error", own("INVALID_ARGUMENT")),
        401 => ErrorRow::new(401, 401, "authentication_error", "invalid_api_key"),
        403 => ErrorRow::new(403, 403, "permission_error", own("PERMISSION_DENIED")),
        404 if message.to_ascii_lowercase().contains("model") => {
            ErrorRow::new(404, 404, "invalid_request_error", "model_not_found")
        }
        404 => ErrorRow::new(404, 502, "api_error", own("NOT_FOUND")),
        // A quota with no time after which it resets is exhausted, not a rate.
        429 if g.quota_failure && g.delay.is_none() => {
            ErrorRow::new(429, 429, "insufficient_quota", "insufficient_quota")
        }
        429 => ErrorRow::new(429, 429, "rate_limit_error", "rate_limit_exceeded"),
        // 503 stays a 503 on the Anthropic face too (`ServiceUnavailableError`); a 529 is
        // Anthropic's "overloaded" there.
        503 | 529 => ErrorRow::new(
            status,
            503,
            "service_unavailable_error",
            "server_is_overloaded",
        ),
        504 => ErrorRow::new(504, 504, "timeout_error", own("DEADLINE_EXCEEDED")),
        499 => ErrorRow::new(499, 502, "api_error", own("CANCELLED")),
        405..=498 => ErrorRow::new(
            status,
            status,
            "invalid_request_error",
            own("INVALID_ARGUMENT"),
        ),
        500..=599 if status != 500 => ErrorRow::new(status, status, "api_error", own("INTERNAL")),
        _ => ErrorRow::new(status.clamp(500, 599), 502, "api_error", own("INTERNAL")),
    }
}

/// Map a Gemini error answer to the gateway error the client sees. See the module docs.
pub fn error_from_gemini(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    provider: &Arc<str>,
) -> GatewayError {
    let g = error_parts(body);
    let message = g
        .message
        .clone()
        .or_else(|| crate::provider::error_message(body))
        .unwrap_or_else(|| crate::provider::status_sentence(provider, status));
    let row = gemini_row(status.as_u16(), &g, &message);
    let mut e = row.into_error(status.as_u16(), message, headers, Some(provider.clone()));
    if e.retry_after().is_none() {
        if let Some(d) = g.delay {
            e = e.with_retry_after(d);
        }
    }
    e
}

// ---------------------------------------------------------------------------------------------
// Streaming

#[derive(Debug, Clone, Copy, Default)]
struct CandState {
    started: bool,
    next_tool: u32,
    called: bool,
    finished: bool,
}

/// The streaming translator: Gemini SSE chunks (each a complete `GenerateContentResponse` with
/// only the new parts; no `[DONE]`) → OpenAI `chat.completion.chunk` SSE bytes.
///
/// - the first chunk of each candidate → a `role: assistant` chunk;
/// - text parts → `delta.content`, thought parts (`thought: true`) → the non-standard
///   `delta.reasoning_content`; each `functionCall` part → one whole tool call (`id`, `name`,
///   complete `arguments`, and its `thoughtSignature` as
///   `extra_content.google.thought_signature`) with the tool ordinal as `index`;
/// - `finishReason` → a `finish_reason` chunk (`tool_calls` when the candidate called one);
/// - `usageMetadata`: the last one wins; at the upstream's end, the usage chunk when
///   `include_usage`, then `[DONE]` — but only if every started candidate finished: a stream
///   cut short is an error;
/// - an error object (as `data:` or raw JSON lines) → an in-band error event and the end.
#[derive(Debug)]
pub struct GeminiStream {
    include_usage: bool,
    created: u64,
    model: String,
    provider: Option<Arc<str>>,
    scrub: Option<Arc<HeaderPolicy>>,
    prefix: Option<BytesMut>,
    rid: String,
    cands: Vec<CandState>,
    calls: u64,
    usage: Option<Usage>,
    done: bool,
}

impl GeminiStream {
    /// A translator for one response; `model` is reported when the chunks name no
    /// `modelVersion`.
    pub fn new(include_usage: bool, created: u64, model: &str) -> Self {
        GeminiStream {
            include_usage,
            created,
            model: model.to_owned(),
            provider: None,
            scrub: None,
            prefix: None,
            rid: String::new(),
            cands: Vec::new(),
            calls: 0,
            usage: None,
            done: false,
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
        self.done = true;
        Flow::End
    }

    fn error_event(&mut self, out: &mut BytesMut, err: &Value) -> Flow {
        let code = err
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"error": err}).to_string();
        let provider = self.provider.clone().unwrap_or_else(|| Arc::from("gemini"));
        let e = error_from_gemini(code, &HeaderMap::new(), body.as_bytes(), &provider);
        self.fail(out, e)
    }

    fn choice(&self, out: &mut BytesMut, index: u32, delta: &[&[u8]], finish: Option<&str>) {
        if let Some(p) = &self.prefix {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(b"{\"index\":");
        write_u64(out, u64::from(index));
        out.extend_from_slice(b",\"delta\":");
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

    /// The first chunk names the stream: its id and model go into every chunk's prefix.
    fn start(&mut self, r: &WireResponse) {
        self.rid = r.response_id.clone().unwrap_or_else(random_id);
        let model = model_of(r, &self.model);
        self.prefix = Some(chunk_prefix(
            &format!("chatcmpl-{}", self.rid),
            self.created,
            &model,
        ));
    }

    /// Open choice `idx` (state slot `i`) with the assistant role, once.
    fn open(&mut self, out: &mut BytesMut, i: usize, idx: u32) {
        if !self.cands[i].started {
            self.cands[i].started = true;
            self.choice(
                out,
                idx,
                &[b"{\"role\":\"assistant\",\"content\":\"\"}"],
                None,
            );
        }
    }

    /// A `functionCall` part of choice `idx` (state slot `i`) as a `tool_calls` delta (its
    /// `thoughtSignature` as `extra_content.google.thought_signature`).
    fn function_call(&mut self, out: &mut BytesMut, i: usize, idx: u32, part: &Value, fc: &Value) {
        let k = self.cands[i].next_tool;
        self.cands[i].next_tool += 1;
        self.cands[i].called = true;
        let id = match fc.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => format!("call_{}_{}", self.rid, self.calls),
        };
        self.calls += 1;
        let name = fc.get("name").and_then(Value::as_str).unwrap_or("");
        let args = fc
            .get("args")
            .map(Value::to_string)
            .unwrap_or_else(|| "{}".to_owned());
        let mut buf = BytesMut::with_capacity(64 + args.len());
        buf.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
        write_u64(&mut buf, u64::from(k));
        buf.extend_from_slice(b",\"id\":");
        write_json_str(&mut buf, &id);
        buf.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
        write_json_str(&mut buf, name);
        buf.extend_from_slice(b",\"arguments\":");
        write_json_str(&mut buf, &args);
        buf.extend_from_slice(b"}");
        if let Some(sig) = part.get("thoughtSignature").and_then(Value::as_str) {
            buf.extend_from_slice(b",\"extra_content\":{\"google\":{\"thought_signature\":");
            write_json_str(&mut buf, sig);
            buf.extend_from_slice(b"}}");
        }
        buf.extend_from_slice(b"}]}");
        self.choice(out, idx, &[&buf], None);
    }

    /// One candidate (at position `pos` of its chunk): open, its text, thought and
    /// function-call deltas, and its finish, once.
    fn candidate(&mut self, out: &mut BytesMut, pos: usize, c: &WireCandidate) {
        let idx = c.index.unwrap_or(pos as u32);
        let i = idx as usize;
        if self.cands.len() <= i {
            self.cands.resize(i + 1, CandState::default());
        }
        self.open(out, i, idx);
        let parts = c.content.as_ref().map(|c| &c.parts[..]).unwrap_or(&[]);
        for p in parts {
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                if t.is_empty() {
                    continue;
                }
                let key: &[u8] = match p.get("thought").and_then(Value::as_bool) {
                    Some(true) => b"{\"reasoning_content\":",
                    _ => b"{\"content\":",
                };
                let mut lit = BytesMut::with_capacity(t.len() + 2);
                write_json_str(&mut lit, t);
                self.choice(out, idx, &[key, &lit, b"}"], None);
            } else if let Some(fc) = p.get("functionCall") {
                self.function_call(out, i, idx, p, fc);
            }
        }
        if let Some(reason) = c.finish_reason.as_deref() {
            if !self.cands[i].finished {
                self.cands[i].finished = true;
                let f = finish_reason(reason, self.cands[i].called);
                self.choice(out, idx, &[b"{}"], Some(f));
            }
        }
    }

    fn chunk(&mut self, r: WireResponse, out: &mut BytesMut) -> Flow {
        if let Some(err) = &r.error {
            let err = err.clone();
            return self.error_event(out, &err);
        }
        if self.prefix.is_none() {
            self.start(&r);
        }
        if let Some(u) = &r.usage_metadata {
            self.usage = Some(u.usage());
        }
        if r.candidates.is_empty()
            && r.prompt_feedback
                .as_ref()
                .and_then(|f| f.get("blockReason"))
                .is_some()
        {
            // A blocked prompt: choice 0 ends with `content_filter`.
            if self.cands.is_empty() {
                self.cands.push(CandState::default());
            }
            self.open(out, 0, 0);
            self.cands[0].finished = true;
            self.choice(out, 0, &[b"{}"], Some("content_filter"));
        }
        for (pos, c) in r.candidates.iter().enumerate() {
            self.candidate(out, pos, c);
        }
        Flow::Continue
    }
}

impl StreamTranslator for GeminiStream {
    fn on_event(&mut self, data: Option<&[u8]>, raw: &[u8], out: &mut BytesMut) -> Flow {
        if self.done {
            return Flow::End;
        }
        let Some(data) = data else {
            // A raw (non-`data:`) JSON error object, as Gemini sends mid-stream.
            let trimmed = raw.trim_ascii_start();
            if trimmed.first() == Some(&b'{') {
                if let Ok(v) = serde_json::from_slice::<Value>(raw) {
                    if let Some(err) = v.get("error") {
                        return self.error_event(out, err);
                    }
                }
            }
            return Flow::Continue;
        };
        match serde_json::from_slice::<WireResponse>(data) {
            Ok(r) => self.chunk(r, out),
            Err(e) => self.fail(
                out,
                protocol_error(format!("invalid Gemini stream chunk: {e}")),
            ),
        }
    }

    fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), GatewayError> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let complete =
            !self.cands.is_empty() && self.cands.iter().all(|c| !c.started || c.finished);
        if !complete {
            return Err(protocol_error(
                "the Gemini stream ended before a finishReason",
            ));
        }
        if self.include_usage {
            if let Some(p) = &self.prefix {
                out.extend_from_slice(p);
            }
            out.extend_from_slice(b"],\"usage\":");
            write_usage(out, &self.usage.unwrap_or_default());
            out.extend_from_slice(b"}\n\n");
        }
        out.extend_from_slice(DONE);
        Ok(())
    }
}
