//! The checks of the known fields of a request body that Parse runs before any upstream call:
//! types and ranges of each endpoint's documented fields (OpenAI chat completions and
//! embeddings, Anthropic Messages), so a malformed request is the same 400 wherever its model
//! routes, and never costs an upstream call.
//!
//! - Each failure is a 400 `invalid_request_error` whose `param` names the field
//!   (`messages[2].role`, `tools[0].function.name`) and whose message starts with it; a
//!   client's value is quoted only as a short prefix ([`ECHO_CHARS`] characters).
//! - `null` is taken as absent for every optional field.
//! - Unknown fields (and unknown members of known objects) are not looked at: they pass
//!   through to the providers, byte for byte (forward compatibility).
//! - The walk reads each known field as borrowed raw JSON (`&RawValue`): nothing is copied
//!   but what an error message needs.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Api, TopLevel};
use crate::error::GatewayError;

/// Longest prefix (in characters) of a client's value that an error message quotes.
pub const ECHO_CHARS: usize = 64;

/// Why a value is refused (the field is attached by the caller).
type Why = Cow<'static, str>;

/// A 400 naming `param`, with `why` after it in the message.
pub(crate) fn invalid(param: impl Into<Cow<'static, str>>, why: impl AsRef<str>) -> GatewayError {
    let param = param.into();
    let msg = format!("{param}: {}", why.as_ref());
    GatewayError::bad_request(msg, None).with_param(param)
}

/// `s` quoted, cut to [`ECHO_CHARS`] characters (with `…` when cut).
pub(crate) fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_CHARS) {
        Some((at, _)) => format!("{:?}…", &s[..at]),
        None => format!("{s:?}"),
    }
}

/// The kinds of JSON value, from a (valid) raw value's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

fn kind(v: &RawValue) -> Kind {
    match v.get().as_bytes().first() {
        Some(b'"') => Kind::String,
        Some(b'[') => Kind::Array,
        Some(b'{') => Kind::Object,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'n') | None => Kind::Null,
        Some(_) => Kind::Number,
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Null => "null",
        Kind::Bool => "a boolean",
        Kind::Number => "a number",
        Kind::String => "a string",
        Kind::Array => "an array",
        Kind::Object => "an object",
    }
}

fn expected(what: &str, v: &RawValue) -> Why {
    Cow::Owned(format!("must be {what}, not {}", kind_name(kind(v))))
}

/// The string `v` holds (borrowed when it has no escapes).
fn string(v: &RawValue) -> Result<Cow<'_, str>, Why> {
    let s = v.get();
    if kind(v) != Kind::String {
        return Err(expected("a string", v));
    }
    match s.get(1..s.len() - 1) {
        Some(inner) if !inner.contains('\\') => Ok(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(s)
            .map(Cow::Owned)
            .map_err(|_| Cow::Borrowed("must be a string")),
    }
}

fn non_empty_string(v: &RawValue) -> Result<Cow<'_, str>, Why> {
    let s = string(v)?;
    if s.is_empty() {
        return Err(Cow::Borrowed("must not be empty"));
    }
    Ok(s)
}

fn one_of(v: &RawValue, allowed: &[&str]) -> Result<(), Why> {
    let s = string(v)?;
    if allowed.contains(&s.as_ref()) {
        return Ok(());
    }
    Err(Cow::Owned(format!(
        "{} is not one of {}",
        echo(&s),
        allowed.join(", ")
    )))
}

fn number(v: &RawValue, lo: f64, hi: f64) -> Result<(), Why> {
    if kind(v) != Kind::Number {
        return Err(expected("a number", v));
    }
    match v.get().parse::<f64>() {
        Ok(x) if (lo..=hi).contains(&x) => Ok(()),
        _ => Err(Cow::Owned(format!("must be between {lo} and {hi}"))),
    }
}

fn integer(v: &RawValue, lo: i64, hi: i64) -> Result<(), Why> {
    if kind(v) != Kind::Number {
        return Err(expected("an integer", v));
    }
    let s = v.get();
    let n = match s.parse::<i64>() {
        Ok(n) => n,
        // Large integers and integral numbers like `2.0` or `1e3` are still integers.
        Err(_) => match s.parse::<f64>() {
            Ok(x) if x.fract() == 0.0 => x.clamp(i64::MIN as f64, i64::MAX as f64) as i64,
            _ => return Err(Cow::Borrowed("must be an integer")),
        },
    };
    if (lo..=hi).contains(&n) {
        return Ok(());
    }
    Err(Cow::Owned(match (lo, hi) {
        (lo, i64::MAX) => format!("must be at least {lo}"),
        (lo, hi) => format!("must be between {lo} and {hi}"),
    }))
}

fn boolean(v: &RawValue) -> Result<(), Why> {
    match kind(v) {
        Kind::Bool => Ok(()),
        _ => Err(expected("a boolean", v)),
    }
}

fn object(v: &RawValue) -> Result<(), Why> {
    match kind(v) {
        Kind::Object => Ok(()),
        _ => Err(expected("an object", v)),
    }
}

/// The elements of the array `v`, each read as a `T`; on failure the field and why.
fn elements<'a, T: Deserialize<'a>>(v: &'a RawValue, param: &str) -> Result<Vec<T>, GatewayError> {
    if kind(v) != Kind::Array {
        return Err(invalid(param.to_owned(), expected("an array", v)));
    }
    if let Ok(all) = serde_json::from_str::<Vec<T>>(v.get()) {
        return Ok(all);
    }
    // Slow path, for the message only: which element is wrong.
    let raw: Vec<&'a RawValue> =
        serde_json::from_str(v.get()).map_err(|_| invalid(param.to_owned(), "must be an array"))?;
    for (i, r) in raw.iter().enumerate() {
        if serde_json::from_str::<T>(r.get()).is_err() {
            let why = match kind(r) {
                Kind::Object => Cow::Borrowed("is not a valid object (a member given twice?)"),
                _ => expected("an object", r),
            };
            return Err(invalid(format!("{param}[{i}]"), why));
        }
    }
    Err(invalid(param.to_owned(), "must be an array of objects"))
}

/// The optional member `v` (absent or `null`: nothing to check).
fn present(v: Option<&RawValue>) -> Option<&RawValue> {
    v.filter(|v| kind(v) != Kind::Null)
}

/// Check the known fields of a body for `api`.
pub(super) fn check(api: Api, fields: &TopLevel<'_>) -> Result<(), GatewayError> {
    for (key, v) in &fields.0 {
        if kind(v) == Kind::Null {
            continue;
        }
        let key: &str = key;
        let scalar = match api {
            Api::ChatCompletions => chat_field(key, v)?,
            // `max_tokens: 0` with `echo` scores a prompt without generating.
            Api::Completions if key == "max_tokens" => integer(v, 0, i64::MAX),
            Api::Completions => sampling_field(key, v),
            Api::Embeddings => embeddings_field(key, v)?,
            Api::Messages | Api::CountTokens => anthropic_field(key, v)?,
        };
        scalar.map_err(|why| invalid(key.to_owned(), why))?;
    }
    Ok(())
}

/// The sampling fields chat and the legacy completions share.
fn sampling_field(key: &str, v: &RawValue) -> Result<(), Why> {
    match key {
        "n" => integer(v, 1, 128),
        "temperature" => number(v, 0.0, 2.0),
        "top_p" => number(v, 0.0, 1.0),
        "presence_penalty" | "frequency_penalty" => number(v, -2.0, 2.0),
        "max_tokens" | "max_completion_tokens" => integer(v, 1, i64::MAX),
        "seed" => integer(v, i64::MIN, i64::MAX),
        "logit_bias" => object(v),
        "stream" => boolean(v),
        "stream_options" => object(v),
        "user" => string(v).map(drop),
        _ => Ok(()),
    }
}

/// One top-level member of a chat completions body: `Err` for a nested field (already
/// named), `Ok(Err(why))` for the member itself.
fn chat_field(key: &str, v: &RawValue) -> Result<Result<(), Why>, GatewayError> {
    Ok(match key {
        "messages" => return chat_messages(v).map(Ok),
        "tools" => return chat_tools(v).map(Ok),
        "functions" => return legacy_functions(v).map(Ok),
        "tool_choice" => return chat_tool_choice(v).map(Ok),
        "response_format" => return response_format(v).map(Ok),
        "stop" => stop(v),
        "logprobs" | "parallel_tool_calls" | "store" => boolean(v),
        "top_logprobs" => integer(v, 0, 20),
        "metadata" | "prediction" | "audio" | "web_search_options" => object(v),
        "modalities" => match kind(v) {
            Kind::Array => Ok(()),
            _ => Err(expected("an array", v)),
        },
        _ => sampling_field(key, v),
    })
}

/// `functions` (legacy): each with a `name`.
fn legacy_functions(v: &RawValue) -> Result<(), GatewayError> {
    let functions = elements::<Named<'_>>(v, "functions")?;
    for (i, f) in functions.iter().enumerate() {
        named(f.name, || format!("functions[{i}].name"))?;
    }
    Ok(())
}

/// `stop`: a string, or up to four strings.
fn stop(v: &RawValue) -> Result<(), Why> {
    match kind(v) {
        Kind::String => Ok(()),
        Kind::Array => match serde_json::from_str::<Vec<Cow<'_, str>>>(v.get()) {
            Ok(list) if list.len() <= 4 => Ok(()),
            Ok(_) => Err(Cow::Borrowed("must hold at most 4 sequences")),
            Err(_) => Err(Cow::Borrowed("must be an array of strings")),
        },
        _ => Err(expected("a string or an array of strings", v)),
    }
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow, default)]
    role: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_call_id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default, rename = "type")]
    ty: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    image_url: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input_audio: Option<&'a RawValue>,
    #[serde(borrow, default)]
    file: Option<&'a RawValue>,
    #[serde(borrow, default)]
    refusal: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
}

/// A required, non-empty string `name`.
fn named(name: Option<&RawValue>, param: impl FnOnce() -> String) -> Result<(), GatewayError> {
    match present(name) {
        None => Err(invalid(param(), "is required")),
        Some(n) => non_empty_string(n)
            .map(drop)
            .map_err(|why| invalid(param(), why)),
    }
}

const CHAT_ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];
const CHAT_PARTS: &[&str] = &["text", "image_url", "input_audio", "file", "refusal"];

fn chat_messages(v: &RawValue) -> Result<(), GatewayError> {
    let messages = elements::<ChatMessage<'_>>(v, "messages")?;
    for (i, m) in messages.iter().enumerate() {
        let at = |field: &str| format!("messages[{i}].{field}");
        let role = match present(m.role) {
            None => return Err(invalid(at("role"), "is required")),
            Some(r) => {
                one_of(r, CHAT_ROLES).map_err(|why| invalid(at("role"), why))?;
                string(r).unwrap_or_default()
            }
        };
        match present(m.content) {
            None if matches!(&*role, "assistant" | "function") => {}
            None => return Err(invalid(at("content"), "is required")),
            Some(c) => chat_content(c, &at("content"))?,
        }
        if role == "tool" {
            named(m.tool_call_id, || at("tool_call_id"))?;
        }
    }
    Ok(())
}

/// A message's `content`: a string, or an array of parts of known types.
fn chat_content(v: &RawValue, param: &str) -> Result<(), GatewayError> {
    match kind(v) {
        Kind::String => return Ok(()),
        Kind::Array => {}
        _ => {
            let why = expected("a string or an array of content parts", v);
            return Err(invalid(param.to_owned(), why));
        }
    }
    for (j, p) in elements::<Part<'_>>(v, param)?.iter().enumerate() {
        let at = |field: &str| format!("{param}[{j}].{field}");
        let Some(ty) = present(p.ty) else {
            return Err(invalid(at("type"), "is required"));
        };
        one_of(ty, CHAT_PARTS).map_err(|why| invalid(at("type"), why))?;
        let (field, value, check): (&str, _, fn(&RawValue) -> Result<(), Why>) =
            match &*string(ty).unwrap_or_default() {
                "text" => ("text", p.text, |v| string(v).map(drop)),
                "image_url" => ("image_url", p.image_url, object),
                "input_audio" => ("input_audio", p.input_audio, object),
                "file" => ("file", p.file, object),
                _ => ("refusal", p.refusal, |v| string(v).map(drop)),
            };
        match present(value) {
            None => return Err(invalid(at(field), "is required")),
            Some(x) => check(x).map_err(|why| invalid(at(field), why))?,
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct ChatTool<'a> {
    #[serde(borrow, default, rename = "type")]
    ty: Option<&'a RawValue>,
    #[serde(borrow, default)]
    function: Option<&'a RawValue>,
    #[serde(borrow, default)]
    custom: Option<&'a RawValue>,
}

/// `tools`: `{type: "function", function: {name, …}}` (or `custom` tools, `{custom: {name}}`).
fn chat_tools(v: &RawValue) -> Result<(), GatewayError> {
    for (i, t) in elements::<ChatTool<'_>>(v, "tools")?.iter().enumerate() {
        let at = |field: &str| format!("tools[{i}].{field}");
        let Some(ty) = present(t.ty) else {
            return Err(invalid(at("type"), "is required"));
        };
        one_of(ty, &["function", "custom"]).map_err(|why| invalid(at("type"), why))?;
        let field = if string(ty).unwrap_or_default() == "function" {
            "function"
        } else {
            "custom"
        };
        let body = if field == "function" {
            t.function
        } else {
            t.custom
        };
        let Some(body) = present(body) else {
            return Err(invalid(at(field), "is required"));
        };
        let n: Named<'_> = serde_json::from_str(body.get())
            .map_err(|_| invalid(at(field), expected("an object", body)))?;
        named(n.name, || at(&format!("{field}.name")))?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(borrow, default, rename = "type")]
    ty: Option<&'a RawValue>,
    #[serde(borrow, default)]
    json_schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
}

fn typed<'a>(v: &'a RawValue, param: &str) -> Result<Typed<'a>, GatewayError> {
    serde_json::from_str(v.get()).map_err(|_| invalid(param.to_owned(), expected("an object", v)))
}

/// `tool_choice`: `none` | `auto` | `required`, or an object with a `type`.
fn chat_tool_choice(v: &RawValue) -> Result<(), GatewayError> {
    if kind(v) == Kind::String {
        return one_of(v, &["none", "auto", "required"]).map_err(|why| invalid("tool_choice", why));
    }
    let t = typed(v, "tool_choice")?;
    match present(t.ty) {
        None => Err(invalid("tool_choice.type", "is required")),
        Some(ty) => non_empty_string(ty)
            .map(drop)
            .map_err(|why| invalid("tool_choice.type", why)),
    }
}

/// `response_format`: `{type: text | json_object | json_schema}`, the last with a named
/// `json_schema`.
fn response_format(v: &RawValue) -> Result<(), GatewayError> {
    let t = typed(v, "response_format")?;
    let Some(ty) = present(t.ty) else {
        return Err(invalid("response_format.type", "is required"));
    };
    one_of(ty, &["text", "json_object", "json_schema"])
        .map_err(|why| invalid("response_format.type", why))?;
    if string(ty).unwrap_or_default() != "json_schema" {
        return Ok(());
    }
    let Some(schema) = present(t.json_schema) else {
        return Err(invalid("response_format.json_schema", "is required"));
    };
    let n: Named<'_> = serde_json::from_str(schema.get())
        .map_err(|_| invalid("response_format.json_schema", expected("an object", schema)))?;
    named(n.name, || "response_format.json_schema.name".to_owned())
}

/// One top-level member of an embeddings body.
fn embeddings_field(key: &str, v: &RawValue) -> Result<Result<(), Why>, GatewayError> {
    Ok(match key {
        "input" => return embeddings_input(v).map(Ok),
        "encoding_format" => one_of(v, &["float", "base64"]),
        "dimensions" => integer(v, 1, i64::MAX),
        "user" => string(v).map(drop),
        _ => Ok(()),
    })
}

/// `input`: a string, or a non-empty array of strings, of token ids, or of arrays of token ids.
fn embeddings_input(v: &RawValue) -> Result<(), GatewayError> {
    let items: Vec<&RawValue> = match kind(v) {
        Kind::String => {
            return non_empty_string(v)
                .map(drop)
                .map_err(|why| invalid("input", why));
        }
        Kind::Array => {
            serde_json::from_str(v.get()).map_err(|_| invalid("input", "must be an array"))?
        }
        _ => {
            let why = expected("a string or an array", v);
            return Err(invalid("input", why));
        }
    };
    let Some(first) = items.first() else {
        return Err(invalid("input", "must not be empty"));
    };
    let want = kind(first);
    for (i, item) in items.iter().enumerate() {
        let at = || format!("input[{i}]");
        if kind(item) != want {
            let why = format!(
                "must be {} like input[0], not {}",
                kind_name(want),
                kind_name(kind(item))
            );
            return Err(invalid(at(), why));
        }
        let ok = match want {
            Kind::String => Ok(()),
            Kind::Number => token(item),
            Kind::Array => match serde_json::from_str::<Vec<&RawValue>>(item.get()) {
                Ok(ids) if ids.is_empty() => Err(Cow::Borrowed("must not be empty")),
                Ok(ids) => ids.iter().try_for_each(|id| token(id)),
                Err(_) => Err(Cow::Borrowed("must be an array of token ids")),
            },
            _ => Err(Cow::Borrowed(
                "must be a string, a token id or an array of token ids",
            )),
        };
        ok.map_err(|why| invalid(at(), why))?;
    }
    Ok(())
}

fn token(v: &RawValue) -> Result<(), Why> {
    match v.get().parse::<u32>() {
        Ok(_) => Ok(()),
        Err(_) => Err(Cow::Borrowed("token ids must be non-negative integers")),
    }
}

/// One top-level member of an Anthropic Messages (or count_tokens) body.
fn anthropic_field(key: &str, v: &RawValue) -> Result<Result<(), Why>, GatewayError> {
    Ok(match key {
        "messages" => return anthropic_messages(v).map(Ok),
        "system" => return anthropic_system(v).map(Ok),
        "tools" => return anthropic_tools(v).map(Ok),
        "tool_choice" => return anthropic_tool_choice(v).map(Ok),
        // 0 is valid: it pre-warms the prompt cache.
        "max_tokens" => integer(v, 0, i64::MAX),
        "temperature" => number(v, 0.0, 1.0),
        "top_p" => number(v, 0.0, 1.0),
        "top_k" => integer(v, 0, i64::MAX),
        "stop_sequences" => match serde_json::from_str::<Vec<Cow<'_, str>>>(v.get()) {
            Ok(_) => Ok(()),
            Err(_) => Err(expected("an array of strings", v)),
        },
        "stream" => boolean(v),
        "metadata" | "thinking" | "output_config" => object(v),
        _ => Ok(()),
    })
}

const ANTHROPIC_ROLES: &[&str] = &["user", "assistant", "system"];
const ANTHROPIC_BLOCKS: &[&str] = &[
    "text",
    "image",
    "document",
    "search_result",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "tool_search_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
    "container_upload",
];

#[derive(Deserialize)]
struct AnthropicMessage<'a> {
    #[serde(borrow, default)]
    role: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

fn anthropic_messages(v: &RawValue) -> Result<(), GatewayError> {
    let messages = elements::<AnthropicMessage<'_>>(v, "messages")?;
    for (i, m) in messages.iter().enumerate() {
        let at = |field: &str| format!("messages[{i}].{field}");
        match present(m.role) {
            None => return Err(invalid(at("role"), "is required")),
            Some(r) => one_of(r, ANTHROPIC_ROLES).map_err(|why| invalid(at("role"), why))?,
        }
        let Some(content) = present(m.content) else {
            return Err(invalid(at("content"), "is required"));
        };
        anthropic_blocks(content, &at("content"), ANTHROPIC_BLOCKS)?;
    }
    Ok(())
}

/// A string, or an array of blocks whose `type` is one of `types`; `text` blocks need a
/// string `text`.
fn anthropic_blocks(v: &RawValue, param: &str, types: &[&str]) -> Result<(), GatewayError> {
    match kind(v) {
        Kind::String => return Ok(()),
        Kind::Array => {}
        _ => {
            let why = expected("a string or an array of content blocks", v);
            return Err(invalid(param.to_owned(), why));
        }
    }
    for (j, b) in elements::<Part<'_>>(v, param)?.iter().enumerate() {
        let at = |field: &str| format!("{param}[{j}].{field}");
        let Some(ty) = present(b.ty) else {
            return Err(invalid(at("type"), "is required"));
        };
        one_of(ty, types).map_err(|why| invalid(at("type"), why))?;
        if string(ty).unwrap_or_default() == "text" {
            match present(b.text) {
                None => return Err(invalid(at("text"), "is required")),
                Some(t) => string(t)
                    .map(drop)
                    .map_err(|why| invalid(at("text"), why))?,
            }
        }
    }
    Ok(())
}

/// `system`: a string or an array of text blocks.
fn anthropic_system(v: &RawValue) -> Result<(), GatewayError> {
    anthropic_blocks(v, "system", &["text"])
}

#[derive(Deserialize)]
struct AnthropicTool<'a> {
    #[serde(borrow, default, rename = "type")]
    ty: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input_schema: Option<&'a RawValue>,
}

/// `tools`: each with a `name`; custom tools (no `type`, or `custom`) with an object
/// `input_schema`. Server tools (`web_search_20250305`, …) carry no schema.
fn anthropic_tools(v: &RawValue) -> Result<(), GatewayError> {
    for (i, t) in elements::<AnthropicTool<'_>>(v, "tools")?
        .iter()
        .enumerate()
    {
        let at = |field: &str| format!("tools[{i}].{field}");
        named(t.name, || at("name"))?;
        let custom = match present(t.ty) {
            None => true,
            Some(ty) => non_empty_string(ty).map_err(|why| invalid(at("type"), why))? == "custom",
        };
        if custom {
            match present(t.input_schema) {
                None => return Err(invalid(at("input_schema"), "is required")),
                Some(s) => object(s).map_err(|why| invalid(at("input_schema"), why))?,
            }
        }
    }
    Ok(())
}

/// `tool_choice`: `{type: auto | any | tool | none}`, `tool` with a `name`.
fn anthropic_tool_choice(v: &RawValue) -> Result<(), GatewayError> {
    let t = typed(v, "tool_choice")?;
    let Some(ty) = present(t.ty) else {
        return Err(invalid("tool_choice.type", "is required"));
    };
    one_of(ty, &["auto", "any", "tool", "none"]).map_err(|why| invalid("tool_choice.type", why))?;
    if string(ty).unwrap_or_default() == "tool" {
        named(t.name, || "tool_choice.name".to_owned())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(api: Api, body: &str) {
        if let Err(e) = crate::request::parse_body(api, bytes::Bytes::from(body.to_owned())) {
            panic!("{body}: {}", e.to_json());
        }
    }

    #[test]
    fn real_client_bodies_pass() {
        // An OpenAI SDK tool loop: developer message, image and audio parts, an assistant
        // turn with tool calls and no content, the tool's answer, every sampling knob.
        ok(
            Api::ChatCompletions,
            r#"{"model":"gpt-4o","messages":[
                {"role":"developer","content":[{"type":"text","text":"be brief"}]},
                {"role":"system","content":"s","name":"x"},
                {"role":"user","content":[{"type":"text","text":"what is this?"},
                    {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}},
                    {"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}},
                    {"type":"file","file":{"file_id":"f1"}}]},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function",
                    "function":{"name":"get_weather","arguments":"{}"}}]},
                {"role":"assistant","content":[{"type":"refusal","refusal":"no"}]},
                {"role":"tool","tool_call_id":"c1","content":"sunny"},
                {"role":"function","name":"f","content":null}],
              "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"},"strict":true}},
                       {"type":"custom","custom":{"name":"grammar"}}],
              "tool_choice":{"type":"function","function":{"name":"get_weather"}},
              "parallel_tool_calls":false,"n":1,"temperature":0,"top_p":1,"presence_penalty":-2,
              "frequency_penalty":2.0,"max_completion_tokens":100,"max_tokens":null,"seed":-1,
              "logit_bias":{"50256":-100},"logprobs":true,"top_logprobs":20,"stop":["a","b","c","d"],
              "response_format":{"type":"json_schema","json_schema":{"name":"r","schema":{}}},
              "stream":true,"stream_options":{"include_usage":true},"user":"u","store":false,
              "metadata":{"k":"v"},"reasoning_effort":"low","modalities":["text"],"x_new":{}}"#,
        );
        ok(
            Api::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"required","stop":"\n","response_format":{"type":"json_object"}}"#,
        );
        ok(
            Api::Embeddings,
            r#"{"model":"e","input":"x","encoding_format":"float","dimensions":256}"#,
        );
        ok(
            Api::Embeddings,
            r#"{"model":"e","input":["a","b"],"encoding_format":"base64"}"#,
        );
        ok(Api::Embeddings, r#"{"model":"e","input":[1,2,3]}"#);
        ok(
            Api::Embeddings,
            r#"{"model":"e","input":[[1],[2,3]],"user":"u"}"#,
        );
        ok(
            Api::Completions,
            r#"{"model":"c","prompt":"x","max_tokens":0,"echo":true,"logprobs":1}"#,
        );
        // An Anthropic SDK tool loop with thinking, images, documents and cache control.
        ok(
            Api::Messages,
            r#"{"model":"claude","max_tokens":1024,"system":[{"type":"text","text":"s","cache_control":{"type":"ephemeral"}}],
              "messages":[
                {"role":"user","content":[{"type":"text","text":"hi"},
                    {"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}},
                    {"type":"document","source":{"type":"url","url":"https://x/y.pdf"}}]},
                {"role":"assistant","content":[{"type":"thinking","thinking":"t","signature":"s"},
                    {"type":"redacted_thinking","data":"d"},
                    {"type":"tool_use","id":"t1","name":"get_weather","input":{}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"sunny","is_error":false}]},
                {"role":"assistant","content":"prefill"}],
              "tools":[{"name":"get_weather","description":"d","input_schema":{"type":"object"}},
                       {"type":"custom","name":"c","input_schema":{"type":"object"}},
                       {"type":"web_search_20250305","name":"web_search","max_uses":3}],
              "tool_choice":{"type":"tool","name":"get_weather","disable_parallel_tool_use":true},
              "temperature":1,"top_p":0.9,"top_k":40,"stop_sequences":["END"],"stream":false,
              "metadata":{"user_id":"u"},"thinking":{"type":"enabled","budget_tokens":1024},
              "output_config":{"format":{"type":"json_schema","schema":{}}},"service_tier":"auto"}"#,
        );
        ok(
            Api::CountTokens,
            r#"{"model":"claude","system":"s","messages":[{"role":"user","content":"x"}]}"#,
        );
    }

    #[test]
    fn echo_cuts_long_values() {
        assert_eq!(echo("wizard"), "\"wizard\"");
        let long = "é".repeat(1000);
        let e = echo(&long);
        assert!(e.chars().count() <= ECHO_CHARS + 3, "{e}");
        assert!(e.ends_with('…'));
    }
}
