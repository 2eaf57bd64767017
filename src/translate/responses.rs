//! The OpenAI Responses API (`POST /v1/responses`) in front of a target that speaks only chat
//! completions: Responses request → chat request, and `chat.completion` / chunk stream →
//! `response` object / named event stream. Anthropic and Gemini targets compose with their own
//! translators (Responses → chat → Messages, and back): nothing here knows them.
//!
//! - [`request_to_chat`]: a Responses body → a `chat/completions` body, and the [`Echo`] of the
//!   request parameters a `response` object repeats.
//! - [`response_from_chat`]: a `chat.completion` → a `response` object; its
//!   `reasoning_content` becomes a `reasoning` item before the message, in the
//!   [`ReasoningForm`] the caller picks (the gateway: a summary for Anthropic's thinking), and
//!   its `thinking_blocks` (Anthropic's, signatures included) and its tool calls' thought
//!   signatures (Gemini's `extra_content.google.thought_signature`) that item's
//!   `encrypted_content`: the base64 of `{"thinking_blocks": [...], "thought_signatures":
//!   {call_id: signature}}`, opaque to clients, which send it back. Signatures without
//!   reasoning text get a reasoning item of their own (`summary: []`); in a stream, it opens
//!   when a signed call does (unless a reasoning item is open: that one carries them), just
//!   before the call's item.
//! - [`ResponsesStream`]: `chat.completion.chunk` SSE → Responses SSE (`response.created`,
//!   `response.in_progress`, `response.output_item.added`, `response.content_part.added`,
//!   `response.output_text.delta`, `response.reasoning_text.delta` (or, with
//!   [`ReasoningForm::Summary`], `response.reasoning_summary_part.added` and
//!   `response.reasoning_summary_text.delta`), `response.function_call_arguments.delta`, the
//!   `…done` events, and exactly one terminal
//!   `response.completed` | `response.incomplete` | `response.failed`), with increasing
//!   `sequence_number`s.
//!
//! ## Request fields
//! | Responses | chat completions |
//! |---|---|
//! | `instructions` | a leading `system` message |
//! | `input` string | one `user` message |
//! | `message` items (`role` user·system·developer·assistant; `input_text`, `output_text`, `input_image` parts) | messages (`text` and `image_url` parts; assistant text joined) |
//! | `function_call` items `{call_id, name, arguments}` | assistant `tool_calls` (consecutive calls in one message; `id` = `call_id`) |
//! | `function_call_output` items `{call_id, output}` | `tool` messages (`tool_call_id` = `call_id`) |
//! | `reasoning` items with the `encrypted_content` this gateway wrote, for a target that speaks Anthropic ([`CarryBack::Anthropic`]) | `thinking_blocks` of the assistant message that follows (its text or its calls): Anthropic's thinking blocks, unchanged, which a tool loop with thinking needs; any other `encrypted_content` is a 400 `invalid_encrypted_content` |
//! | the same, for a Gemini target ([`CarryBack::Gemini`]) | each thought signature on the tool call with its `call_id` (`extra_content.google.thought_signature`), which Gemini 3 needs back in a tool loop; the same 400 |
//! | other `reasoning` items | dropped (earlier reasoning a chat target cannot take back; the answer does not depend on it) |
//! | function `tools` (flat `{name, description, parameters, strict}`) | `tools` `{type: function, function: {…}}` |
//! | `tool_choice` auto·none·required·`{type: function, name}` | the same in chat's shape |
//! | `text.format` json_schema·json_object·text | `response_format` |
//! | `text.verbosity` | `verbosity` |
//! | `max_output_tokens`, `temperature`, `top_p`, `parallel_tool_calls`, `user` | `max_tokens`, `temperature`, `top_p`, `parallel_tool_calls`, `user` |
//! | `reasoning.effort` | `reasoning_effort` (the target's translator maps it, or refuses it) |
//! | `stream` | `stream` + `stream_options.include_usage` |
//!
//! Dropped (bookkeeping that cannot change an answer): `store`, `metadata` (echoed back),
//! `reasoning.summary`, `truncation`, `service_tier`, `prompt_cache_key`, `safety_identifier`,
//! `stream_options`, `include` entries other than logprobs.
//!
//! Refused (400 naming the field): built-in tools (`web_search`, `file_search`, `computer_use`,
//! `code_interpreter`, `mcp`, `image_generation`, …), `tool_choice` naming one, input items
//! and parts a chat target cannot take (`input_file`, `input_audio`, `item_reference`, a
//! built-in tool's call), `previous_response_id` and `conversation` (state that lives with
//! another provider), `background: true`, `prompt` (stored prompts), `top_logprobs` and
//! `include: ["message.output_text.logprobs"]`.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::{Flow, StreamTranslator, protocol_error, write_json_str, write_u64};
use crate::error::GatewayError;
use crate::usage::Usage;

fn bad(msg: impl Into<Cow<'static, str>>, param: impl Into<Cow<'static, str>>) -> GatewayError {
    GatewayError::bad_request(msg, None)
        .with_param(param)
        .with_code("unsupported_parameter")
}

/// The request parameters a `response` object repeats (`instructions`, `tools`, `text`, …),
/// with the documented defaults for those the client left out.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    fields: Map<String, Value>,
}

/// Makes the default of an echoed member.
type MakeDefault = fn() -> Value;

/// The echoed members and their defaults, in the order the API documents them.
const ECHOED: [(&str, MakeDefault); 14] = [
    ("instructions", || Value::Null),
    ("max_output_tokens", || Value::Null),
    ("metadata", || json!({})),
    ("parallel_tool_calls", || Value::Bool(true)),
    ("previous_response_id", || Value::Null),
    ("reasoning", || json!({"effort": null, "summary": null})),
    ("store", || Value::Bool(false)),
    ("temperature", || Value::from(1.0)),
    ("text", || json!({"format": {"type": "text"}})),
    ("tool_choice", || Value::from("auto")),
    ("tools", || json!([])),
    ("top_p", || Value::from(1.0)),
    ("truncation", || Value::from("disabled")),
    ("user", || Value::Null),
];

impl Echo {
    /// Set an echoed member (`previous_response_id`, `store`: what the gateway did).
    pub fn set(&mut self, key: &str, value: Value) {
        self.fields.insert(key.to_owned(), value);
    }

    /// The echo of a Responses request.
    pub fn from_request(req: &Map<String, Value>) -> Echo {
        let mut fields = Map::new();
        for (k, default) in ECHOED {
            let v = req.get(k).filter(|v| !v.is_null()).cloned();
            // Nothing is stored by a translating target.
            let v = if k == "store" { None } else { v };
            fields.insert(k.to_owned(), v.unwrap_or_else(default));
        }
        Echo { fields }
    }
}

/// Translate a Responses request body into a chat completions body (the model name is kept:
/// routing happens on it) and the [`Echo`] for the answer. See the module docs for the rules.
/// `reasoning` input items are dropped: [`request_to_chat_with`] keeps the thinking they carry.
pub fn request_to_chat(body: &[u8]) -> Result<(Bytes, Echo), GatewayError> {
    request_to_chat_for(body, CarryBack::Nothing)
}

/// What the `encrypted_content` of `reasoning` input items gives back to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CarryBack {
    /// Nothing: `reasoning` items are dropped (unread).
    Nothing,
    /// Anthropic's thinking blocks, as the `thinking_blocks` of the assistant message that
    /// follows the item.
    Anthropic,
    /// Gemini's thought signatures, each on the tool call it was given with
    /// (`extra_content.google.thought_signature`, matched by `call_id`).
    Gemini,
}

/// [`request_to_chat`]; with `thinking` (for a target that speaks Anthropic), the thinking
/// blocks a `reasoning` item carries in its `encrypted_content` (as [`response_from_chat`]
/// put them there) become the `thinking_blocks` of the assistant message that follows it (its
/// text, or its function calls); an `encrypted_content` this gateway did not produce is a 400
/// naming it.
pub fn request_to_chat_with(body: &[u8], thinking: bool) -> Result<(Bytes, Echo), GatewayError> {
    let carry = match thinking {
        true => CarryBack::Anthropic,
        false => CarryBack::Nothing,
    };
    request_to_chat_for(body, carry)
}

/// [`request_to_chat`], giving back to the target what `reasoning` items carry (`carry`); an
/// `encrypted_content` this gateway did not produce is a 400 naming it (unless `carry` is
/// [`CarryBack::Nothing`]).
pub fn request_to_chat_for(body: &[u8], carry: CarryBack) -> Result<(Bytes, Echo), GatewayError> {
    let req: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| GatewayError::bad_request(format!("invalid JSON body: {e}"), None))?;
    refuse_fields(&req)?;
    let mut out = Map::new();
    out.insert(
        "model".into(),
        req.get("model").cloned().unwrap_or(Value::Null),
    );
    let mut msgs: Vec<Value> = Vec::new();
    if let Some(i) = req.get("instructions").and_then(Value::as_str) {
        msgs.push(json!({"role": "system", "content": i}));
    }
    match req.get("input") {
        Some(Value::String(s)) => msgs.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            let mut pending = Pending {
                blocks: (carry == CarryBack::Anthropic).then(Vec::new),
                sigs: (carry == CarryBack::Gemini).then(Map::new),
            };
            for (i, item) in items.iter().enumerate() {
                input_item(item, i, &mut msgs, &mut pending)?;
            }
            if let Some(sigs) = pending.sigs.filter(|s| !s.is_empty()) {
                attach_signatures(&mut msgs, &sigs);
            }
        }
        _ => {}
    }
    out.insert("messages".into(), Value::Array(msgs));
    tools_to_chat(&req, &mut out)?;
    options_to_chat(&req, &mut out)?;
    let bytes = serde_json::to_vec(&out)
        .map_err(|e| GatewayError::internal(format!("serializing the chat request: {e}")))?;
    Ok((Bytes::from(bytes), Echo::from_request(&req)))
}

/// The request's `input` as a list of input items (a string is one user message).
pub fn input_items(req: &Map<String, Value>) -> Vec<Value> {
    match req.get("input") {
        Some(Value::String(s)) => vec![json!({"role": "user", "content": s})],
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    }
}

/// A Responses request body continuing a stored conversation: `history` (input items) put
/// before the request's own input, `previous_response_id` removed (the gateway resolved it).
pub fn with_history(req: &Map<String, Value>, history: Vec<Value>) -> Result<Bytes, GatewayError> {
    let mut req = req.clone();
    let mut input = history;
    input.extend(input_items(&req));
    req.insert("input".into(), Value::Array(input));
    req.remove("previous_response_id");
    serde_json::to_vec(&req)
        .map(Bytes::from)
        .map_err(|e| GatewayError::internal(format!("serializing the request: {e}")))
}

/// The request members no chat target can honour: 400s naming them.
fn refuse_fields(req: &Map<String, Value>) -> Result<(), GatewayError> {
    let set = |k: &str| req.get(k).is_some_and(|v| !v.is_null());
    for k in [
        "previous_response_id",
        "conversation",
        "prompt",
        "top_logprobs",
    ] {
        if set(k) {
            return Err(bad(
                format!(
                    "'{k}' is not supported by this target (it serves chat completions only; \
                     use a target that serves the Responses API)"
                ),
                k.to_owned(),
            ));
        }
    }
    if req.get("background").and_then(Value::as_bool) == Some(true) {
        return Err(bad(
            "'background' responses are not supported by this target",
            "background",
        ));
    }
    if let Some(inc) = req.get("include").and_then(Value::as_array) {
        for (i, v) in inc.iter().enumerate() {
            if v.as_str().is_some_and(|s| s.contains("logprobs")) {
                return Err(bad(
                    "logprobs are not supported by this target",
                    format!("include[{i}]"),
                ));
            }
        }
    }
    Ok(())
}

/// What `reasoning` input items carried, on its way to the chat messages.
struct Pending {
    /// The thinking blocks of the `reasoning` items not yet given to an assistant message
    /// (`None`: they are dropped).
    blocks: Option<Vec<Value>>,
    /// Every thought signature, by `call_id` (`None`: they are dropped).
    sigs: Option<Map<String, Value>>,
}

/// One input item, appended to `msgs` as chat messages; `pending`: what `reasoning` items
/// carry back.
fn input_item(
    item: &Value,
    i: usize,
    msgs: &mut Vec<Value>,
    pending: &mut Pending,
) -> Result<(), GatewayError> {
    let ty = item.get("type").and_then(Value::as_str);
    let thinking = match &mut pending.blocks {
        Some(p)
            if matches!(ty, Some("function_call") | Some("reasoning")) || is_assistant(item) =>
        {
            std::mem::take(p)
        }
        // Reasoning before anything but the assistant's own turn belongs to no turn.
        Some(p) => {
            p.clear();
            Vec::new()
        }
        None => Vec::new(),
    };
    match ty {
        None | Some("message") => {
            let mut m = message_item(item, i)?;
            if !thinking.is_empty() {
                m["thinking_blocks"] = Value::Array(thinking);
            }
            msgs.push(m);
        }
        Some("function_call") => function_call_item(item, msgs, thinking),
        Some("function_call_output") => {
            let output = match item.get("output") {
                Some(Value::String(s)) => Value::from(s.as_str()),
                Some(Value::Array(parts)) => Value::Array(content_parts(parts, i, "output")?),
                _ => Value::from(""),
            };
            msgs.push(json!({
                "role": "tool",
                "tool_call_id": item.get("call_id").cloned().unwrap_or(Value::Null),
                "content": output,
            }));
        }
        Some("reasoning") if pending.blocks.is_some() || pending.sigs.is_some() => {
            let carried = Carried::decode(item, i)?;
            if let Some(p) = &mut pending.blocks {
                p.extend(thinking);
                p.extend(carried.blocks);
            }
            if let Some(s) = &mut pending.sigs {
                s.extend(carried.sigs);
            }
        }
        Some("reasoning") => {}
        Some(other) => {
            return Err(bad(
                format!("input items of type '{other}' are not supported by this target"),
                format!("input[{i}].type"),
            ));
        }
    }
    Ok(())
}

/// A `function_call` item → a tool call of the assistant turn it continues (consecutive calls,
/// and the text before them, form one turn), or of a new one; `thinking`: the blocks of the
/// `reasoning` items just before it.
fn function_call_item(item: &Value, msgs: &mut Vec<Value>, thinking: Vec<Value>) {
    let call = json!({
        "id": item.get("call_id").cloned().unwrap_or(Value::Null),
        "type": "function",
        "function": {
            "name": item.get("name").cloned().unwrap_or(Value::Null),
            "arguments": item.get("arguments").cloned().unwrap_or(Value::from("{}")),
        },
    });
    let joined = msgs.last_mut().and_then(|m| {
        let m = m.as_object_mut()?;
        (m.get("role")? == "assistant").then_some(m)
    });
    let Some(m) = joined else {
        let mut m = json!({"role": "assistant", "content": null, "tool_calls": [call]});
        if !thinking.is_empty() {
            m["thinking_blocks"] = Value::Array(thinking);
        }
        msgs.push(m);
        return;
    };
    match m.get_mut("tool_calls").and_then(Value::as_array_mut) {
        Some(calls) => calls.push(call),
        None => {
            m.insert("tool_calls".into(), Value::Array(vec![call]));
        }
    }
    if !thinking.is_empty() {
        let blocks = m.entry("thinking_blocks").or_insert_with(|| json!([]));
        if let Some(b) = blocks.as_array_mut() {
            b.extend(thinking);
        }
    }
}

fn is_assistant(item: &Value) -> bool {
    item.get("role").and_then(Value::as_str) == Some("assistant")
}

/// Put each thought signature on the assistant tool call with its `call_id`, where Gemini's
/// chat translator takes it (`extra_content.google.thought_signature`).
fn attach_signatures(msgs: &mut [Value], sigs: &Map<String, Value>) {
    let calls = msgs
        .iter_mut()
        .filter_map(|m| m.get_mut("tool_calls").and_then(Value::as_array_mut))
        .flatten();
    for call in calls {
        let sig = call
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| sigs.get(id));
        if let Some(sig) = sig {
            call["extra_content"] = json!({"google": {"thought_signature": sig}});
        }
    }
}

/// What a `reasoning` item's `encrypted_content` carries, as this gateway writes it: the
/// standard base64 of `{"thinking_blocks": [...], "thought_signatures": {call_id: sig}}` (each
/// member only when not empty): Anthropic's thinking blocks the item stands for, and Gemini's
/// thought signatures of the function calls after it.
#[derive(Debug, Default)]
struct Carried {
    blocks: Vec<Value>,
    sigs: Map<String, Value>,
}

impl Carried {
    fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.sigs.is_empty()
    }

    /// What a chat assistant message carries: its `thinking_blocks`, its tool calls'
    /// signatures.
    fn of_message(msg: &Value) -> Carried {
        let list = |k: &str| msg.get(k).and_then(Value::as_array).into_iter().flatten();
        Carried {
            blocks: list("thinking_blocks")
                .filter_map(super::thinking_block)
                .collect(),
            sigs: list("tool_calls")
                .filter_map(|c| {
                    let id = c.get("id").and_then(Value::as_str)?;
                    Some((id.to_owned(), Value::from(signature_of(c)?)))
                })
                .collect(),
        }
    }

    fn encode(&self) -> String {
        use base64::Engine;
        let mut doc = Map::new();
        if !self.blocks.is_empty() {
            doc.insert("thinking_blocks".into(), Value::Array(self.blocks.clone()));
        }
        if !self.sigs.is_empty() {
            doc.insert(
                "thought_signatures".into(),
                Value::Object(self.sigs.clone()),
            );
        }
        base64::engine::general_purpose::STANDARD.encode(Value::Object(doc).to_string())
    }

    /// What `reasoning` item `i` carries (nothing without `encrypted_content`); one this
    /// gateway did not write (or that was altered) is a 400 naming it.
    fn decode(item: &Value, i: usize) -> Result<Carried, GatewayError> {
        use base64::Engine;
        let Some(enc) = item.get("encrypted_content").filter(|v| !v.is_null()) else {
            return Ok(Carried::default());
        };
        let refuse = || {
            GatewayError::bad_request(
                "this reasoning item's encrypted_content was not produced by this gateway, or \
                 was altered: send the reasoning items back as they came",
                None,
            )
            .with_param(format!("input[{i}].encrypted_content"))
            .with_code("invalid_encrypted_content")
        };
        let bytes = enc
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or_else(refuse)?;
        let doc: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| refuse())?;
        let mut out = Carried::default();
        for (k, v) in doc {
            match (k.as_str(), v) {
                ("thinking_blocks", Value::Array(list)) if !list.is_empty() => {
                    out.blocks = list
                        .iter()
                        .map(|b| super::thinking_block(b).ok_or_else(refuse))
                        .collect::<Result<_, _>>()?;
                }
                ("thought_signatures", Value::Object(sigs))
                    if !sigs.is_empty() && sigs.values().all(Value::is_string) =>
                {
                    out.sigs = sigs;
                }
                _ => return Err(refuse()),
            }
        }
        match out.is_empty() {
            true => Err(refuse()),
            false => Ok(out),
        }
    }
}

/// A `message` item → a chat message.
fn message_item(item: &Value, i: usize) -> Result<Value, GatewayError> {
    let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
    if !matches!(role, "user" | "system" | "developer" | "assistant") {
        return Err(bad(
            format!("unknown message role '{role}'"),
            format!("input[{i}].role"),
        ));
    }
    let content = match item.get("content") {
        Some(Value::String(s)) => Value::from(s.as_str()),
        Some(Value::Array(parts)) => {
            let parts = content_parts(parts, i, "content")?;
            let texts_only = parts.iter().all(|p| p["type"] == "text");
            if role == "assistant" || (role != "user" && texts_only) {
                // Assistant (and system) content in chat is text: join the parts.
                if !texts_only {
                    return Err(bad(
                        "only text parts are supported in assistant messages",
                        format!("input[{i}].content"),
                    ));
                }
                Value::from(
                    parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .collect::<String>(),
                )
            } else {
                Value::Array(parts)
            }
        }
        _ => Value::from(""),
    };
    Ok(json!({"role": role, "content": content}))
}

/// Responses content parts → chat content parts.
fn content_parts(parts: &[Value], i: usize, field: &str) -> Result<Vec<Value>, GatewayError> {
    parts
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let param = || format!("input[{i}].{field}[{j}]");
            match p.get("type").and_then(Value::as_str) {
                Some("input_text" | "output_text" | "text") => Ok(json!({
                    "type": "text",
                    "text": p.get("text").cloned().unwrap_or(Value::from("")),
                })),
                Some("refusal") => Ok(json!({
                    "type": "text",
                    "text": p.get("refusal").cloned().unwrap_or(Value::from("")),
                })),
                Some("input_image") => {
                    let Some(url) = p.get("image_url").and_then(Value::as_str) else {
                        return Err(bad(
                            "images by 'file_id' are not supported by this target; send 'image_url'",
                            param(),
                        ));
                    };
                    let mut image = json!({"url": url});
                    if let Some(d) = p.get("detail").filter(|d| d.is_string()) {
                        image["detail"] = d.clone();
                    }
                    Ok(json!({"type": "image_url", "image_url": image}))
                }
                other => Err(bad(
                    format!(
                        "content parts of type '{}' are not supported by this target",
                        other.unwrap_or("?")
                    ),
                    param(),
                )),
            }
        })
        .collect()
}

/// `tools` and `tool_choice` → chat's.
fn tools_to_chat(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let mut chat = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            match t.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let mut f = Map::new();
                    for k in ["name", "description", "parameters", "strict"] {
                        if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                            f.insert(k.into(), v.clone());
                        }
                    }
                    chat.push(json!({"type": "function", "function": f}));
                }
                other => {
                    return Err(bad(
                        format!(
                            "built-in tool '{}' is not supported by this target; only function tools are",
                            other.unwrap_or("?")
                        ),
                        format!("tools[{i}]"),
                    ));
                }
            }
        }
        if !chat.is_empty() {
            out.insert("tools".into(), Value::Array(chat));
        }
    }
    match req.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if matches!(s.as_str(), "auto" | "none" | "required") => {
            out.insert("tool_choice".into(), Value::from(s.as_str()));
        }
        Some(v) if v.get("type").and_then(Value::as_str) == Some("function") => {
            out.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": v.get("name").cloned().unwrap_or(Value::Null)}}),
            );
        }
        Some(_) => {
            return Err(bad(
                "this 'tool_choice' is not supported by this target",
                "tool_choice",
            ));
        }
    }
    if let Some(p) = req.get("parallel_tool_calls").filter(|v| v.is_boolean()) {
        out.insert("parallel_tool_calls".into(), p.clone());
    }
    Ok(())
}

/// Sampling, length, output format, reasoning and streaming options → chat's.
fn options_to_chat(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    for (from, to) in [
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("user", "user"),
    ] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    if let Some(text) = req.get("text").filter(|v| v.is_object()) {
        if let Some(f) = text.get("format").filter(|v| !v.is_null()) {
            match f.get("type").and_then(Value::as_str) {
                Some("text") => {}
                Some("json_object") => {
                    out.insert("response_format".into(), json!({"type": "json_object"}));
                }
                Some("json_schema") => {
                    let mut schema = Map::new();
                    for k in ["name", "description", "schema", "strict"] {
                        if let Some(v) = f.get(k).filter(|v| !v.is_null()) {
                            schema.insert(k.into(), v.clone());
                        }
                    }
                    out.insert(
                        "response_format".into(),
                        json!({"type": "json_schema", "json_schema": schema}),
                    );
                }
                _ => return Err(bad("unknown 'text.format' type", "text.format")),
            }
        }
        if let Some(v) = text.get("verbosity").filter(|v| !v.is_null()) {
            out.insert("verbosity".into(), v.clone());
        }
    }
    if let Some(e) = req
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|v| !v.is_null())
    {
        out.insert("reasoning_effort".into(), e.clone());
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), Value::Bool(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(())
}

/// A `usage` object of the Responses API for `u`.
pub fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens,
    })
}

/// The ids of one response and its items, from the upstream's completion id.
#[derive(Debug, Clone, Default)]
struct Ids {
    base: String,
    /// The response id, when the gateway chose it (a stored response).
    response: Option<String>,
}

impl Ids {
    fn new(chat_id: &str, response: Option<String>) -> Ids {
        let base = chat_id
            .strip_prefix("chatcmpl-")
            .unwrap_or(chat_id)
            .to_owned();
        Ids { base, response }
    }
    fn response(&self) -> String {
        match &self.response {
            Some(id) => id.clone(),
            None => format!("resp_{}", self.base),
        }
    }
    fn message(&self) -> String {
        format!("msg_{}", self.base)
    }
    /// The id of the `n`th reasoning item (0-based).
    fn reasoning(&self, n: usize) -> String {
        match n {
            0 => format!("rs_{}", self.base),
            n => format!("rs_{}_{n}", self.base),
        }
    }
    fn call(&self, n: usize) -> String {
        format!("fc_{}_{n}", self.base)
    }
}

/// `status` and `incomplete_details` for a chat `finish_reason`.
fn status_of(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// What a `response` object says beyond the echo.
struct Head<'a> {
    id: &'a str,
    created_at: u64,
    model: &'a str,
    status: &'a str,
}

/// A `response` object.
fn response_object(
    head: &Head<'_>,
    echo: &Echo,
    output: Vec<Value>,
    incomplete: Value,
    usage: Option<&Usage>,
) -> Value {
    let mut r = Map::new();
    r.insert("id".into(), Value::from(head.id));
    r.insert("object".into(), Value::from("response"));
    r.insert("created_at".into(), Value::from(head.created_at));
    r.insert("status".into(), Value::from(head.status));
    r.insert("background".into(), Value::Bool(false));
    r.insert("error".into(), Value::Null);
    r.insert("incomplete_details".into(), incomplete);
    r.insert("model".into(), Value::from(head.model));
    r.insert("output".into(), Value::Array(output));
    for (k, v) in &echo.fields {
        r.insert(k.clone(), v.clone());
    }
    r.insert("usage".into(), usage.map(usage_json).unwrap_or(Value::Null));
    Value::Object(r)
}

fn message_json(id: &str, status: &str, text: &str, refusal: Option<&str>) -> Value {
    let mut content = Vec::new();
    if !text.is_empty() || refusal.is_none() {
        content
            .push(json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []}));
    }
    if let Some(r) = refusal {
        content.push(json!({"type": "refusal", "refusal": r}));
    }
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

/// How a `reasoning` output item carries the upstream's reasoning text (chat's
/// `reasoning_content`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReasoningForm {
    /// `content: [{type: reasoning_text}]` (and `summary: []`), streamed as
    /// `response.reasoning_text.delta`/`.done`: the raw chain of thought, as open-weight
    /// reasoning models send it.
    #[default]
    Text,
    /// `summary: [{type: summary_text}]`, streamed as `response.reasoning_summary_part.added`,
    /// `response.reasoning_summary_text.delta`/`.done`, `response.reasoning_summary_part.done`:
    /// a summary of the thinking, which is what Anthropic's `thinking` blocks are.
    Summary,
}

/// A `reasoning` item; with something `carried` (Anthropic thinking blocks, Gemini thought
/// signatures), its `encrypted_content`. A `bare` item has no text (`summary: []`): one that
/// only carries.
fn reasoning_json(
    id: &str,
    text: &str,
    form: ReasoningForm,
    carried: &Carried,
    bare: bool,
) -> Value {
    let mut item = match bare {
        true => json!({"id": id, "type": "reasoning", "summary": []}),
        false => reasoning_text_json(id, text, form),
    };
    if !carried.is_empty() {
        item["encrypted_content"] = Value::from(carried.encode());
    }
    item
}

/// The thought signature a chat tool call carries (`extra_content.google.thought_signature`).
fn signature_of(call: &Value) -> Option<&str> {
    call.pointer("/extra_content/google/thought_signature")
        .and_then(Value::as_str)
}

fn reasoning_text_json(id: &str, text: &str, form: ReasoningForm) -> Value {
    match form {
        ReasoningForm::Text => json!({"id": id, "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}),
        // An item still opening has no summary part yet (as `output_item.added` shows it).
        ReasoningForm::Summary if text.is_empty() => {
            json!({"id": id, "type": "reasoning", "summary": []})
        }
        ReasoningForm::Summary => json!({"id": id, "type": "reasoning",
            "summary": [{"type": "summary_text", "text": text}]}),
    }
}

fn call_json(id: &str, status: &str, call_id: &str, name: &str, args: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call_id,
        "name": name, "arguments": args})
}

/// Translate a `chat.completion` body into a `response` object, repeating `echo`.
pub fn response_from_chat(body: &[u8], echo: &Echo) -> Result<Bytes, GatewayError> {
    response_from_chat_with_id(body, echo, None)
}

/// [`response_from_chat`] with the response id `id` (else one derived from the completion's).
pub fn response_from_chat_with_id(
    body: &[u8],
    echo: &Echo,
    id: Option<String>,
) -> Result<Bytes, GatewayError> {
    response_from_chat_with(body, echo, id, ReasoningForm::Text)
}

/// [`response_from_chat_with_id`], with the reasoning (`reasoning_content`) in `form`.
pub fn response_from_chat_with(
    body: &[u8],
    echo: &Echo,
    id: Option<String>,
    form: ReasoningForm,
) -> Result<Bytes, GatewayError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| protocol_error(format!("invalid chat.completion: {e}")))?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| protocol_error("chat.completion without choices"))?;
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let ids = Ids::new(
        v.get("id").and_then(Value::as_str).unwrap_or("response"),
        id,
    );
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut output = Vec::new();
    let reasoning = str_of(msg, "reasoning_content").unwrap_or_default();
    let calls = msg.get("tool_calls").and_then(Value::as_array);
    let carried = Carried::of_message(msg);
    if !reasoning.is_empty() || !carried.is_empty() {
        // Only signatures: an item that carries them, with no text.
        let bare = reasoning.is_empty() && carried.blocks.is_empty();
        let id = ids.reasoning(0);
        output.push(reasoning_json(&id, &reasoning, form, &carried, bare));
    }
    let text = str_of(msg, "content").unwrap_or_default();
    let refusal = str_of(msg, "refusal");
    if !text.is_empty() || refusal.is_some() || calls.is_none_or(Vec::is_empty) {
        output.push(message_json(
            &ids.message(),
            "completed",
            &text,
            refusal.as_deref(),
        ));
    }
    for (n, c) in calls.into_iter().flatten().enumerate() {
        let f = c.get("function").unwrap_or(&Value::Null);
        output.push(call_json(
            &ids.call(n),
            "completed",
            c.get("id").and_then(Value::as_str).unwrap_or(""),
            f.get("name").and_then(Value::as_str).unwrap_or(""),
            f.get("arguments").and_then(Value::as_str).unwrap_or(""),
        ));
    }
    let (status, incomplete) = status_of(choice.get("finish_reason").and_then(Value::as_str));
    let usage = v
        .get("usage")
        .filter(|u| u.is_object())
        .and_then(|u| Usage::from_openai_json(json!({"usage": u}).to_string().as_bytes()));
    let head = Head {
        id: &ids.response(),
        created_at: v
            .get("created")
            .and_then(Value::as_u64)
            .unwrap_or_else(super::unix_now),
        model: v.get("model").and_then(Value::as_str).unwrap_or(""),
        status,
    };
    let doc = response_object(&head, echo, output, incomplete, usage.as_ref());
    serde_json::to_vec(&doc)
        .map(Bytes::from)
        .map_err(|e| GatewayError::internal(format!("serializing the response: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Streams

/// The parts of a `chat.completion.chunk` the stream translator reads.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default)]
    thinking_blocks: Option<Vec<Value>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolDelta<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FnDelta<'a>>,
    /// Gemini's thought signature (`{"google": {"thought_signature": …}}`).
    #[serde(default)]
    extra_content: Option<Value>,
}

#[derive(Deserialize)]
struct FnDelta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

/// One output item being streamed (or streamed already).
#[derive(Debug)]
enum Item {
    Reasoning {
        id: String,
        text: String,
        form: ReasoningForm,
        /// Anthropic thinking blocks (`delta.thinking_blocks`) and Gemini thought signatures
        /// (on `tool_calls` deltas), kept as `encrypted_content`.
        carried: Carried,
        /// Opened for a thought signature alone: no text, and none of the text events.
        bare: bool,
    },
    Message {
        id: String,
        text: String,
        refusal: Option<String>,
    },
    Call {
        id: String,
        index: u64,
        call_id: String,
        name: String,
        args: String,
    },
}

impl Item {
    fn json(&self, status: &str) -> Value {
        match self {
            Item::Reasoning {
                id,
                text,
                form,
                carried,
                bare,
            } => reasoning_json(id, text, *form, carried, *bare),
            Item::Message { id, text, refusal } => {
                message_json(id, status, text, refusal.as_deref())
            }
            Item::Call {
                id,
                call_id,
                name,
                args,
                ..
            } => call_json(id, status, call_id, name, args),
        }
    }
}

/// The streaming translator: OpenAI `chat.completion.chunk` SSE (with the include_usage chunk)
/// → Responses SSE events. Only choice 0 is translated.
///
/// The first chunk opens the response (`response.created`, `response.in_progress`); reasoning
/// text opens a `reasoning` item, content a `message` item (with its `output_text` part), each
/// new tool-call `index` a `function_call` item; an item is closed (its `…done` events) when the
/// next one opens or at the end. `[DONE]` closes the open item and sends the terminal event
/// with the whole response and the usage chunk's counts. An in-band `{"error":..}` becomes an
/// `error` event and `response.failed`; a stream that ends without `[DONE]` is `Err` (the
/// stream layer ends it with the in-band error), never a faked `response.completed`.
pub struct ResponsesStream {
    echo: Echo,
    model: String,
    ids: Ids,
    created: u64,
    seq: u64,
    started: bool,
    output: Vec<Item>,
    /// Index into `output` of the item still streaming, if any.
    open: Option<usize>,
    finish: Option<String>,
    usage: Option<Usage>,
    done: bool,
    /// The response id the gateway chose, if any.
    response_id: Option<String>,
    /// Called once with the final response object (`response.completed` or
    /// `response.incomplete`): where the gateway stores it.
    on_complete: Option<OnComplete>,
    reasoning_form: ReasoningForm,
}

/// What a [`ResponsesStream`] calls with the final response object.
pub type OnComplete = Box<dyn FnOnce(&Value) + Send>;

impl std::fmt::Debug for ResponsesStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponsesStream")
            .field("seq", &self.seq)
            .field("items", &self.output.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ResponsesStream {
    /// Use `id` as the response id (instead of one derived from the completion's).
    pub fn with_id(mut self, id: String) -> Self {
        self.response_id = Some(id);
        self
    }

    /// Call `f` with the final response object when the stream completes (not when it fails).
    pub fn on_complete(mut self, f: OnComplete) -> Self {
        self.on_complete = Some(f);
        self
    }

    /// A translator for one response; `model` is reported if the chunks name none; `echo`
    /// is repeated in the response objects.
    pub fn new(model: &str, echo: Echo) -> Self {
        ResponsesStream {
            echo,
            model: model.to_owned(),
            ids: Ids::default(),
            created: 0,
            seq: 0,
            started: false,
            output: Vec::new(),
            open: None,
            finish: None,
            usage: None,
            done: false,
            response_id: None,
            on_complete: None,
            reasoning_form: ReasoningForm::Text,
        }
    }

    /// Carry reasoning (`delta.reasoning_content`) in `form` (default [`ReasoningForm::Text`]).
    pub fn with_reasoning_form(mut self, form: ReasoningForm) -> Self {
        self.reasoning_form = form;
        self
    }

    /// `event: NAME\ndata: {"type":"NAME",` + fields + `"sequence_number":N}\n\n`.
    fn event(&mut self, out: &mut BytesMut, name: &str, fields: impl FnOnce(&mut BytesMut)) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\ndata: {\"type\":\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\",");
        fields(out);
        out.extend_from_slice(b"\"sequence_number\":");
        write_u64(out, self.seq);
        out.extend_from_slice(b"}\n\n");
        self.seq += 1;
    }

    /// An event whose one other member is a JSON value: `"key":value,`.
    fn value_event(&mut self, out: &mut BytesMut, name: &str, key: &str, v: &Value) {
        let v = v.to_string();
        self.event(out, name, |o| {
            o.extend_from_slice(b"\"");
            o.extend_from_slice(key.as_bytes());
            o.extend_from_slice(b"\":");
            o.extend_from_slice(v.as_bytes());
            o.extend_from_slice(b",");
        });
    }

    fn response(&self, status: &str, incomplete: Value, item_status: &str) -> Value {
        let id = self.ids.response();
        let head = Head {
            id: &id,
            created_at: self.created,
            model: &self.model,
            status,
        };
        let output = self.output.iter().map(|i| i.json(item_status)).collect();
        let usage = if status == "in_progress" {
            None
        } else {
            self.usage.as_ref()
        };
        response_object(&head, &self.echo, output, incomplete, usage)
    }

    fn start(&mut self, out: &mut BytesMut, chunk: &Chunk<'_>) {
        if self.started {
            return;
        }
        self.started = true;
        self.ids = Ids::new(
            chunk.id.as_deref().unwrap_or("response"),
            self.response_id.clone(),
        );
        if let Some(m) = chunk.model.as_deref().filter(|m| !m.is_empty()) {
            self.model = m.to_owned();
        }
        self.created = chunk.created.unwrap_or_else(super::unix_now);
        let r = self.response("in_progress", Value::Null, "in_progress");
        self.value_event(out, "response.created", "response", &r);
        self.value_event(out, "response.in_progress", "response", &r);
    }

    /// Writes `"item_id":ID,"output_index":N,` for item `at`.
    fn item_ref(&self, at: usize) -> (String, usize) {
        let id = match &self.output[at] {
            Item::Reasoning { id, .. } | Item::Message { id, .. } | Item::Call { id, .. } => {
                id.clone()
            }
        };
        (id, at)
    }

    fn open_item(&mut self, out: &mut BytesMut, item: Item) -> usize {
        self.close(out);
        let at = self.output.len();
        let added = item.json("in_progress");
        let is_message = matches!(item, Item::Message { .. });
        let is_summary = matches!(
            item,
            Item::Reasoning {
                form: ReasoningForm::Summary,
                bare: false,
                ..
            }
        );
        self.output.push(item);
        self.open = Some(at);
        self.event(out, "response.output_item.added", |o| {
            write_index(o, at);
            o.extend_from_slice(b"\"item\":");
            o.extend_from_slice(added.to_string().as_bytes());
            o.extend_from_slice(b",");
        });
        if is_message {
            let (id, _) = self.item_ref(at);
            self.event(out, "response.content_part.added", |o| {
                write_item(o, &id, at);
                o.extend_from_slice(
                    b"\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[],\"logprobs\":[]},",
                );
            });
        }
        if is_summary {
            let (id, _) = self.item_ref(at);
            self.event(out, "response.reasoning_summary_part.added", |o| {
                write_item(o, &id, at);
                o.extend_from_slice(
                    b"\"summary_index\":0,\"part\":{\"type\":\"summary_text\",\"text\":\"\"},",
                );
            });
        }
        at
    }

    /// Close the open item: its `…done` events.
    fn close(&mut self, out: &mut BytesMut) {
        let Some(at) = self.open.take() else {
            return;
        };
        let (id, _) = self.item_ref(at);
        let done = self.output[at].json("completed");
        match &self.output[at] {
            Item::Reasoning { bare: true, .. } => {}
            Item::Reasoning { text, form, .. } => {
                let (text, form) = (text.clone(), *form);
                self.reasoning_done(out, &id, at, &text, form);
            }
            Item::Message { text, refusal, .. } => {
                let (text, refusal) = (text.clone(), refusal.clone());
                self.message_done(out, &id, at, &text, refusal.as_deref());
            }
            Item::Call { args, name, .. } => {
                let (args, name) = (args.clone(), name.clone());
                self.event(out, "response.function_call_arguments.done", |o| {
                    write_item(o, &id, at);
                    o.extend_from_slice(b"\"name\":");
                    write_json_str(o, &name);
                    o.extend_from_slice(b",\"arguments\":");
                    write_json_str(o, &args);
                    o.extend_from_slice(b",");
                });
            }
        }
        self.event(out, "response.output_item.done", |o| {
            write_index(o, at);
            o.extend_from_slice(b"\"item\":");
            o.extend_from_slice(done.to_string().as_bytes());
            o.extend_from_slice(b",");
        });
    }

    fn reasoning_done(
        &mut self,
        out: &mut BytesMut,
        id: &str,
        at: usize,
        text: &str,
        form: ReasoningForm,
    ) {
        if form == ReasoningForm::Text {
            self.event(out, "response.reasoning_text.done", |o| {
                write_item(o, id, at);
                o.extend_from_slice(b"\"content_index\":0,\"text\":");
                write_json_str(o, text);
                o.extend_from_slice(b",");
            });
            return;
        }
        self.event(out, "response.reasoning_summary_text.done", |o| {
            write_item(o, id, at);
            o.extend_from_slice(b"\"summary_index\":0,\"text\":");
            write_json_str(o, text);
            o.extend_from_slice(b",");
        });
        self.event(out, "response.reasoning_summary_part.done", |o| {
            write_item(o, id, at);
            o.extend_from_slice(
                b"\"summary_index\":0,\"part\":{\"type\":\"summary_text\",\"text\":",
            );
            write_json_str(o, text);
            o.extend_from_slice(b"},");
        });
    }

    fn message_done(
        &mut self,
        out: &mut BytesMut,
        id: &str,
        at: usize,
        text: &str,
        refusal: Option<&str>,
    ) {
        if let Some(r) = refusal {
            self.event(out, "response.refusal.done", |o| {
                write_item(o, id, at);
                o.extend_from_slice(b"\"content_index\":0,\"refusal\":");
                write_json_str(o, r);
                o.extend_from_slice(b",");
            });
        }
        self.event(out, "response.output_text.done", |o| {
            write_item(o, id, at);
            o.extend_from_slice(b"\"content_index\":0,\"text\":");
            write_json_str(o, text);
            o.extend_from_slice(b",\"logprobs\":[],");
        });
        self.event(out, "response.content_part.done", |o| {
            write_item(o, id, at);
            o.extend_from_slice(
                b"\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":",
            );
            write_json_str(o, text);
            o.extend_from_slice(b",\"annotations\":[],\"logprobs\":[]},");
        });
    }

    /// The open `reasoning` item (one with text, unless `bare_ok`), or a new one (`bare`
    /// when it is opened only to carry).
    fn reasoning_at(&mut self, out: &mut BytesMut, bare_ok: bool, bare: bool) -> usize {
        if let Some(at) = self.open.filter(|&at| match &self.output[at] {
            Item::Reasoning { bare, .. } => bare_ok || !bare,
            _ => false,
        }) {
            return at;
        }
        let n = self
            .output
            .iter()
            .filter(|i| matches!(i, Item::Reasoning { .. }))
            .count();
        let item = Item::Reasoning {
            id: self.ids.reasoning(n),
            text: String::new(),
            form: self.reasoning_form,
            carried: Carried::default(),
            bare,
        };
        self.open_item(out, item)
    }

    /// A tool call's thought signature (Gemini's), as it opens: kept by the open reasoning
    /// item (a new, bare one if none is open), which the call's item then closes.
    fn on_signature(&mut self, out: &mut BytesMut, call_id: &str, sig: &str) {
        let at = self.reasoning_at(out, true, true);
        if let Item::Reasoning { carried, .. } = &mut self.output[at] {
            carried.sigs.insert(call_id.to_owned(), Value::from(sig));
        }
    }

    /// Anthropic thinking blocks (`delta.thinking_blocks`, each whole): kept by the open
    /// reasoning item (a new one if none is open), for its `encrypted_content`.
    fn on_thinking_blocks(&mut self, out: &mut BytesMut, list: &[Value]) {
        let list: Vec<Value> = list.iter().filter_map(super::thinking_block).collect();
        if list.is_empty() {
            return;
        }
        let at = self.reasoning_at(out, true, false);
        if let Item::Reasoning { carried, .. } = &mut self.output[at] {
            carried.blocks.extend(list);
        }
    }

    fn on_reasoning(&mut self, out: &mut BytesMut, t: &str) {
        let at = self.reasoning_at(out, false, false);
        if let Item::Reasoning { text, .. } = &mut self.output[at] {
            text.push_str(t);
        }
        let (id, _) = self.item_ref(at);
        let (name, index): (&str, &[u8]) = match self.reasoning_form {
            ReasoningForm::Text => ("response.reasoning_text.delta", b"\"content_index\":0,"),
            ReasoningForm::Summary => (
                "response.reasoning_summary_text.delta",
                b"\"summary_index\":0,",
            ),
        };
        self.event(out, name, |o| {
            write_item(o, &id, at);
            o.extend_from_slice(index);
            o.extend_from_slice(b"\"delta\":");
            write_json_str(o, t);
            o.extend_from_slice(b",");
        });
    }

    fn message_at(&mut self, out: &mut BytesMut) -> usize {
        match self
            .open
            .filter(|&at| matches!(self.output[at], Item::Message { .. }))
        {
            Some(at) => at,
            None => {
                let id = self.ids.message();
                self.open_item(
                    out,
                    Item::Message {
                        id,
                        text: String::new(),
                        refusal: None,
                    },
                )
            }
        }
    }

    /// The bulk of a stream: written without copying the item id.
    fn on_text(&mut self, out: &mut BytesMut, t: &str) {
        let at = self.message_at(out);
        let Item::Message { id, text, .. } = &mut self.output[at] else {
            return;
        };
        text.push_str(t);
        const NAME: &[u8] = b"response.output_text.delta";
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(NAME);
        out.extend_from_slice(b"\ndata: {\"type\":\"");
        out.extend_from_slice(NAME);
        out.extend_from_slice(b"\",");
        write_item(out, id, at);
        out.extend_from_slice(b"\"content_index\":0,\"delta\":");
        write_json_str(out, t);
        out.extend_from_slice(b",\"logprobs\":[],\"sequence_number\":");
        write_u64(out, self.seq);
        out.extend_from_slice(b"}\n\n");
        self.seq += 1;
    }

    fn on_refusal(&mut self, out: &mut BytesMut, t: &str) {
        let at = self.message_at(out);
        if let Item::Message { refusal, .. } = &mut self.output[at] {
            refusal.get_or_insert_with(String::new).push_str(t);
        }
        let (id, _) = self.item_ref(at);
        self.event(out, "response.refusal.delta", |o| {
            write_item(o, &id, at);
            o.extend_from_slice(b"\"content_index\":0,\"delta\":");
            write_json_str(o, t);
            o.extend_from_slice(b",");
        });
    }

    fn on_tool(&mut self, out: &mut BytesMut, c: &ToolDelta<'_>) -> Result<(), GatewayError> {
        let open_call = self
            .open
            .filter(|&at| matches!(self.output[at], Item::Call { index, .. } if index == c.index));
        let at = match open_call {
            Some(at) => at,
            None => {
                let seen = self
                    .output
                    .iter()
                    .any(|i| matches!(i, Item::Call { index, .. } if *index == c.index));
                if seen {
                    return Err(protocol_error(
                        "the upstream interleaved the deltas of several tool calls",
                    ));
                }
                let n = self
                    .output
                    .iter()
                    .filter(|i| matches!(i, Item::Call { .. }))
                    .count();
                let f = c.function.as_ref();
                let call_id = c.id.as_deref().unwrap_or("");
                let sig = c.extra_content.as_ref().and_then(|e| {
                    e.pointer("/google/thought_signature")
                        .and_then(Value::as_str)
                });
                if let Some(sig) = sig.filter(|_| !call_id.is_empty()) {
                    self.on_signature(out, call_id, sig);
                }
                let item = Item::Call {
                    id: self.ids.call(n),
                    index: c.index,
                    call_id: call_id.to_owned(),
                    name: f.and_then(|f| f.name.as_deref()).unwrap_or("").to_owned(),
                    args: String::new(),
                };
                self.open_item(out, item)
            }
        };
        let Some(a) = c
            .function
            .as_ref()
            .and_then(|f| f.arguments.as_deref())
            .filter(|a| !a.is_empty())
        else {
            return Ok(());
        };
        if let Item::Call { args, .. } = &mut self.output[at] {
            args.push_str(a);
        }
        let (id, _) = self.item_ref(at);
        self.event(out, "response.function_call_arguments.delta", |o| {
            write_item(o, &id, at);
            o.extend_from_slice(b"\"delta\":");
            write_json_str(o, a);
            o.extend_from_slice(b",");
        });
        Ok(())
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.close(out);
        let (status, incomplete) = status_of(self.finish.as_deref());
        let r = self.response(status, incomplete, "completed");
        let name = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.value_event(out, name, "response", &r);
        if let Some(f) = self.on_complete.take() {
            f(&r);
        }
        self.done = true;
    }

    /// An `error` event and the terminal `response.failed`.
    fn fail(&mut self, out: &mut BytesMut, code: &str, message: &str) -> Flow {
        if !self.started {
            self.start(out, &Chunk::empty());
        }
        self.event(out, "error", |o| {
            o.extend_from_slice(b"\"code\":");
            write_json_str(o, code);
            o.extend_from_slice(b",\"message\":");
            write_json_str(o, message);
            o.extend_from_slice(b",\"param\":null,");
        });
        let mut r = self.response("failed", Value::Null, "incomplete");
        r["error"] = json!({"code": code, "message": message});
        self.value_event(out, "response.failed", "response", &r);
        self.done = true;
        Flow::End
    }

    fn on_chunk(&mut self, out: &mut BytesMut, chunk: &Chunk<'_>) -> Result<(), GatewayError> {
        self.start(out, chunk);
        let Some(choice) = chunk
            .choices
            .as_deref()
            .and_then(|c| c.iter().find(|c| c.index == 0))
        else {
            return Ok(());
        };
        if let Some(d) = &choice.delta {
            if let Some(t) = d.reasoning_content.as_deref().filter(|t| !t.is_empty()) {
                self.on_reasoning(out, t);
            }
            if let Some(blocks) = &d.thinking_blocks {
                self.on_thinking_blocks(out, blocks);
            }
            if let Some(t) = d.content.as_deref().filter(|t| !t.is_empty()) {
                self.on_text(out, t);
            }
            if let Some(t) = d.refusal.as_deref().filter(|t| !t.is_empty()) {
                self.on_refusal(out, t);
            }
            for c in d.tool_calls.iter().flatten() {
                self.on_tool(out, c)?;
            }
        }
        if let Some(f) = choice.finish_reason.as_deref() {
            self.finish = Some(f.to_owned());
        }
        Ok(())
    }
}

impl Chunk<'_> {
    fn empty() -> Chunk<'static> {
        Chunk {
            id: None,
            model: None,
            created: None,
            choices: None,
            usage: None,
            error: None,
        }
    }
}

/// `"output_index":N,`
fn write_index(o: &mut BytesMut, at: usize) {
    o.extend_from_slice(b"\"output_index\":");
    write_u64(o, at as u64);
    o.extend_from_slice(b",");
}

/// `"item_id":ID,"output_index":N,`
fn write_item(o: &mut BytesMut, id: &str, at: usize) {
    o.extend_from_slice(b"\"item_id\":");
    write_json_str(o, id);
    o.extend_from_slice(b",");
    write_index(o, at);
}

impl StreamTranslator for ResponsesStream {
    fn on_event(&mut self, data: Option<&[u8]>, _raw: &[u8], out: &mut BytesMut) -> Flow {
        let Some(data) = data else {
            return Flow::Continue;
        };
        if self.done {
            return Flow::End;
        }
        if data == b"[DONE]" {
            if !self.started {
                self.start(out, &Chunk::empty());
            }
            self.finish(out);
            return Flow::End;
        }
        let chunk: Chunk<'_> = match serde_json::from_slice(data) {
            Ok(c) => c,
            Err(_) => return self.fail(out, "api_error", "the upstream sent an invalid chunk"),
        };
        if let Some(err) = chunk.error.filter(|e| e.get() != "null") {
            if !self.started {
                // Nothing sent yet: the error as the upstream sent it, so the Timeout layer's
                // first-event check classifies it and Fallback may try another target.
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(data);
                out.extend_from_slice(b"\n\n");
                self.done = true;
                return Flow::End;
            }
            let v: Value = serde_json::from_str(err.get()).unwrap_or(Value::Null);
            let msg = v
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| v.as_str())
                .unwrap_or("upstream error")
                .to_owned();
            let code = v
                .get("code")
                .and_then(Value::as_str)
                .or_else(|| v.get("type").and_then(Value::as_str))
                .unwrap_or("server_error")
                .to_owned();
            return self.fail(out, &code, &msg);
        }
        if chunk.usage.is_some_and(|u| u.get().starts_with('{')) {
            if let Some(u) = Usage::from_openai_json(data) {
                self.usage = Some(u);
            }
        }
        match self.on_chunk(out, &chunk) {
            Ok(()) => Flow::Continue,
            Err(e) => self.fail(out, "api_error", e.message()),
        }
    }

    fn on_eof(&mut self, _out: &mut BytesMut) -> Result<(), GatewayError> {
        if self.done {
            return Ok(());
        }
        Err(protocol_error("the upstream stream ended before [DONE]"))
    }
}

/// The in-band end of a failed Responses stream, written by the stream layer after the commit
/// point: an `error` event and a terminal `response.failed` (numbered after `last_seq`, the
/// last sequence number sent), for response `id`.
pub fn failure_events(last_seq: Option<u64>, id: Option<&str>, code: &str, message: &str) -> Bytes {
    let mut seq = last_seq.map_or(0, |s| s + 1);
    let err = json!({"type": "error", "code": code, "message": message, "param": null,
        "sequence_number": seq});
    seq += 1;
    let failed = json!({"type": "response.failed", "sequence_number": seq, "response": {
        "id": id.unwrap_or("resp_failed"), "object": "response", "status": "failed",
        "error": {"code": code, "message": message}, "incomplete_details": null,
        "output": [], "usage": null}});
    let mut out = BytesMut::new();
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(err.to_string().as_bytes());
    out.extend_from_slice(b"\n\nevent: response.failed\ndata: ");
    out.extend_from_slice(failed.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::translate_chunks;

    fn chat(body: &str) -> Value {
        let (b, _) = request_to_chat(body.as_bytes()).unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn string_input_and_instructions() {
        let c = chat(
            r#"{"model":"m","instructions":"be brief","input":"hi","max_output_tokens":50,"temperature":0.5,"stream":true}"#,
        );
        assert_eq!(
            c["messages"],
            json!([{"role":"system","content":"be brief"},{"role":"user","content":"hi"}])
        );
        assert_eq!(c["max_tokens"], 50);
        assert_eq!(c["temperature"], 0.5);
        assert_eq!(c["stream_options"]["include_usage"], true);
    }

    #[test]
    fn function_calls_join_one_assistant_turn_and_keep_call_ids() {
        let c = chat(
            r#"{"model":"m","input":[{"role":"user","content":"w?"},
            {"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},
            {"type":"function_call","call_id":"c2","name":"g","arguments":"{\"a\":1}"},
            {"type":"function_call_output","call_id":"c1","output":"r1"},
            {"type":"function_call_output","call_id":"c2","output":"r2"}]}"#,
        );
        let m = c["messages"].as_array().unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[1]["tool_calls"][0]["id"], "c1");
        assert_eq!(m[1]["tool_calls"][1]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(
            m[2],
            json!({"role":"tool","tool_call_id":"c1","content":"r1"})
        );
        assert_eq!(m[3]["tool_call_id"], "c2");
    }

    #[test]
    fn built_in_tools_are_refused_naming_them() {
        let e = request_to_chat(br#"{"model":"m","input":"x","tools":[{"type":"function","name":"f"},{"type":"web_search"}]}"#)
            .unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.to_json()["error"]["param"], "tools[1]");
        let e = request_to_chat(br#"{"model":"m","input":"x","previous_response_id":"resp_1"}"#)
            .unwrap_err();
        assert_eq!(e.to_json()["error"]["param"], "previous_response_id");
    }

    #[test]
    fn stream_of_text_and_a_call() {
        let sse = concat!(
            "data: {\"id\":\"chatcmpl-1\",\"created\":5,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\n",
            "data: [DONE]\n\n",
        );
        let mut t = ResponsesStream::new("m", Echo::default());
        let (out, err) = translate_chunks(&mut t, [Bytes::from_static(sse.as_bytes())]);
        assert!(err.is_none());
        let text = std::str::from_utf8(&out).unwrap();
        let events: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.split_once("data: "))
            .map(|(_, d)| serde_json::from_str(d).unwrap())
            .collect();
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types.first(), Some(&"response.created"));
        assert_eq!(types.last(), Some(&"response.completed"));
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i as u64);
        }
        let done = events.last().unwrap();
        assert_eq!(done["response"]["output"][1]["call_id"], "call_1");
        assert_eq!(done["response"]["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(done["response"]["usage"]["total_tokens"], 7);
    }
}
