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
//! - The body was accepted by serde_json already: the known fields are walked with the
//!   structure-only cursors of [`crate::jsonscan::valid`] (strings skipped with `memchr`),
//!   nothing is built, and nothing is copied but what an error message needs.

use std::borrow::Cow;

use super::{Api, TopLevel};
use crate::error::GatewayError;
use crate::jsonscan::valid::{self, elements, first_element, next_element, value_len};

/// Longest prefix (in characters) of a client's value that an error message quotes.
pub const ECHO_CHARS: usize = 64;

/// Why a value is refused (the field is attached by the caller).
type Why = Cow<'static, str>;

/// A check of one value.
type Check = fn(&str) -> Result<(), Why>;

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

/// `s` unquoted, cut to [`ECHO_CHARS`] characters (with `…` when cut).
pub(crate) fn prefix(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(ECHO_CHARS) {
        Some((at, _)) => Cow::Owned(format!("{}…", &s[..at])),
        None => Cow::Borrowed(s),
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

fn kind(v: &str) -> Kind {
    match v.as_bytes().first() {
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

fn expected(what: &str, v: &str) -> Why {
    Cow::Owned(format!("must be {what}, not {}", kind_name(kind(v))))
}

/// The string `v` holds (borrowed when it has no escapes).
fn string(v: &str) -> Result<Cow<'_, str>, Why> {
    if kind(v) != Kind::String {
        return Err(expected("a string", v));
    }
    match v.get(1..v.len() - 1) {
        Some(inner) if !inner.contains('\\') => Ok(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(v)
            .map(Cow::Owned)
            .map_err(|_| Cow::Borrowed("must be a string")),
    }
}

fn non_empty_string(v: &str) -> Result<Cow<'_, str>, Why> {
    let s = string(v)?;
    if s.is_empty() {
        return Err(Cow::Borrowed("must not be empty"));
    }
    Ok(s)
}

fn one_of(v: &str, allowed: &[&str]) -> Result<(), Why> {
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

fn number(v: &str, lo: f64, hi: f64) -> Result<(), Why> {
    if kind(v) != Kind::Number {
        return Err(expected("a number", v));
    }
    match v.parse::<f64>() {
        Ok(x) if (lo..=hi).contains(&x) => Ok(()),
        _ => Err(Cow::Owned(format!("must be between {lo} and {hi}"))),
    }
}

fn integer(v: &str, lo: i64, hi: i64) -> Result<(), Why> {
    if kind(v) != Kind::Number {
        return Err(expected("an integer", v));
    }
    let n = match v.parse::<i64>() {
        Ok(n) => n,
        // Large integers and integral numbers like `2.0` or `1e3` are still integers.
        Err(_) => match v.parse::<f64>() {
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

fn boolean(v: &str) -> Result<(), Why> {
    match kind(v) {
        Kind::Bool => Ok(()),
        _ => Err(expected("a boolean", v)),
    }
}

fn object(v: &str) -> Result<(), Why> {
    match kind(v) {
        Kind::Object => Ok(()),
        _ => Err(expected("an object", v)),
    }
}

fn array(v: &str) -> Result<(), Why> {
    match kind(v) {
        Kind::Array => Ok(()),
        _ => Err(expected("an array", v)),
    }
}

/// The objects of the array `v` (the field `param`): for each, its index and its members
/// named in `names` (`null` is absent). One pass over each object.
fn each_object<'a, const N: usize>(
    v: &'a str,
    param: &dyn Fn() -> String,
    names: [&str; N],
    mut each: impl FnMut(usize, [Option<&'a str>; N]) -> Result<(), GatewayError>,
) -> Result<(), GatewayError> {
    array(v).map_err(|why| invalid(param(), why))?;
    let mut at = first_element(v);
    let mut index = 0;
    while let Some(start) = at {
        let item = v.get(start..).unwrap_or_default();
        if kind(item) != Kind::Object {
            let len = value_len(item);
            let why = expected("an object", item.get(..len).unwrap_or_default());
            return Err(invalid(format!("{}[{index}]", param()), why));
        }
        let (mut picked, len) = valid::pick(item, names);
        for p in &mut picked {
            *p = p.filter(|v| kind(v) != Kind::Null);
        }
        each(index, picked)?;
        at = next_element(v, start + len);
        index += 1;
    }
    Ok(())
}

/// The members named in `names` of the object `v` (the last of each; `null` is absent).
fn pick<'a, const N: usize>(v: &'a str, names: [&str; N]) -> [Option<&'a str>; N] {
    let (mut picked, _) = valid::pick(v, names);
    for p in &mut picked {
        *p = p.filter(|v| kind(v) != Kind::Null);
    }
    picked
}

/// A required, non-empty string.
fn named(name: Option<&str>, param: impl FnOnce() -> String) -> Result<(), GatewayError> {
    match name {
        None => Err(invalid(param(), "is required")),
        Some(n) => non_empty_string(n)
            .map(drop)
            .map_err(|why| invalid(param(), why)),
    }
}

/// Check the known fields of a body for `api`.
pub(super) fn check(api: Api, fields: &TopLevel<'_>) -> Result<(), GatewayError> {
    for (key, v) in &fields.0 {
        let v = v.get();
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
            // Passed through to OpenAI-compatible targets, which check their own fields.
            Api::Moderations
            | Api::ImageGenerations
            | Api::AudioSpeech
            | Api::AudioTranscriptions
            | Api::AudioTranslations => Ok(()),
            Api::Responses => responses_field(key, v),
        };
        scalar.map_err(|why| invalid(key.to_owned(), why))?;
    }
    Ok(())
}

/// The sampling fields chat and the legacy completions share.
fn sampling_field(key: &str, v: &str) -> Result<(), Why> {
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
fn chat_field(key: &str, v: &str) -> Result<Result<(), Why>, GatewayError> {
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
        "modalities" => array(v),
        _ => sampling_field(key, v),
    })
}

/// One top-level member of a Responses API body (the scalars; items are checked where they
/// are translated, or by the upstream that serves the API).
fn responses_field(key: &str, v: &str) -> Result<(), Why> {
    match key {
        "input" => match kind(v) {
            Kind::String | Kind::Array => Ok(()),
            _ => Err(expected("a string or an array of input items", v)),
        },
        "instructions" | "previous_response_id" | "user" | "safety_identifier" => {
            string(v).map(drop)
        }
        "temperature" => number(v, 0.0, 2.0),
        "top_p" => number(v, 0.0, 1.0),
        "max_output_tokens" => integer(v, 1, i64::MAX),
        "top_logprobs" => integer(v, 0, 20),
        "stream" | "store" | "background" | "parallel_tool_calls" => boolean(v),
        "tools" | "include" => array(v),
        "metadata" | "text" | "reasoning" | "stream_options" => object(v),
        _ => Ok(()),
    }
}

/// `functions` (legacy): each with a `name`.
fn legacy_functions(v: &str) -> Result<(), GatewayError> {
    each_object(v, &|| "functions".to_owned(), ["name"], |i, [name]| {
        named(name, || format!("functions[{i}].name"))
    })
}

/// `stop`: a string, or up to four strings.
fn stop(v: &str) -> Result<(), Why> {
    match kind(v) {
        Kind::String => Ok(()),
        Kind::Array => {
            let mut n = 0;
            for item in elements(v) {
                string(item).map_err(|_| Cow::Borrowed("must be an array of strings"))?;
                n += 1;
            }
            match n {
                0..=4 => Ok(()),
                _ => Err(Cow::Borrowed("must hold at most 4 sequences")),
            }
        }
        _ => Err(expected("a string or an array of strings", v)),
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

fn chat_messages(v: &str) -> Result<(), GatewayError> {
    let names = ["role", "content", "tool_call_id"];
    each_object(
        v,
        &|| "messages".to_owned(),
        names,
        |i, [role, content, tool_call_id]| {
            let at = |field: &str| format!("messages[{i}].{field}");
            let role = match role {
                None => return Err(invalid(at("role"), "is required")),
                Some(r) => {
                    one_of(r, CHAT_ROLES).map_err(|why| invalid(at("role"), why))?;
                    string(r).unwrap_or_default()
                }
            };
            match content {
                None if matches!(&*role, "assistant" | "function") => {}
                None => return Err(invalid(at("content"), "is required")),
                Some(c) => chat_content(c, &|| at("content"))?,
            }
            if role == "tool" {
                named(tool_call_id, || at("tool_call_id"))?;
            }
            Ok(())
        },
    )
}

/// A message's `content`: a string, or an array of parts of known types.
fn chat_content(v: &str, param: &dyn Fn() -> String) -> Result<(), GatewayError> {
    match kind(v) {
        Kind::String => return Ok(()),
        Kind::Array => {}
        _ => {
            let why = expected("a string or an array of content parts", v);
            return Err(invalid(param(), why));
        }
    }
    let names = [
        "type",
        "text",
        "image_url",
        "input_audio",
        "file",
        "refusal",
    ];
    each_object(v, param, names, |j, picked| {
        let at = |field: &str| format!("{}[{j}].{field}", param());
        let [ty, text, image_url, input_audio, file, refusal] = picked;
        let Some(ty) = ty else {
            return Err(invalid(at("type"), "is required"));
        };
        one_of(ty, CHAT_PARTS).map_err(|why| invalid(at("type"), why))?;
        let (field, value, check): (&str, _, Check) = match &*string(ty).unwrap_or_default() {
            "text" => ("text", text, |v| string(v).map(drop)),
            "image_url" => ("image_url", image_url, object),
            "input_audio" => ("input_audio", input_audio, object),
            "file" => ("file", file, object),
            _ => ("refusal", refusal, |v| string(v).map(drop)),
        };
        match value {
            None => Err(invalid(at(field), "is required")),
            Some(x) => check(x).map_err(|why| invalid(at(field), why)),
        }
    })
}

/// `tools`: `{type: "function", function: {name, …}}` (or `custom` tools, `{custom: {name}}`).
fn chat_tools(v: &str) -> Result<(), GatewayError> {
    let names = ["type", "function", "custom"];
    each_object(
        v,
        &|| "tools".to_owned(),
        names,
        |i, [ty, function, custom]| {
            let at = |field: &str| format!("tools[{i}].{field}");
            let Some(ty) = ty else {
                return Err(invalid(at("type"), "is required"));
            };
            one_of(ty, &["function", "custom"]).map_err(|why| invalid(at("type"), why))?;
            let (field, body) = if string(ty).unwrap_or_default() == "function" {
                ("function", function)
            } else {
                ("custom", custom)
            };
            let Some(body) = body else {
                return Err(invalid(at(field), "is required"));
            };
            object(body).map_err(|why| invalid(at(field), why))?;
            let [name] = pick(body, ["name"]);
            named(name, || at(&format!("{field}.name")))
        },
    )
}

/// `tool_choice`: `none` | `auto` | `required`, or an object with a `type`.
fn chat_tool_choice(v: &str) -> Result<(), GatewayError> {
    if kind(v) == Kind::String {
        return one_of(v, &["none", "auto", "required"]).map_err(|why| invalid("tool_choice", why));
    }
    object(v).map_err(|why| invalid("tool_choice", why))?;
    let [ty] = pick(v, ["type"]);
    named(ty, || "tool_choice.type".to_owned())
}

/// `response_format`: `{type: text | json_object | json_schema}`, the last with a named
/// `json_schema`.
fn response_format(v: &str) -> Result<(), GatewayError> {
    object(v).map_err(|why| invalid("response_format", why))?;
    let [ty, schema] = pick(v, ["type", "json_schema"]);
    let Some(ty) = ty else {
        return Err(invalid("response_format.type", "is required"));
    };
    one_of(ty, &["text", "json_object", "json_schema"])
        .map_err(|why| invalid("response_format.type", why))?;
    if string(ty).unwrap_or_default() != "json_schema" {
        return Ok(());
    }
    let Some(schema) = schema else {
        return Err(invalid("response_format.json_schema", "is required"));
    };
    object(schema).map_err(|why| invalid("response_format.json_schema", why))?;
    let [name] = pick(schema, ["name"]);
    named(name, || "response_format.json_schema.name".to_owned())
}

/// One top-level member of an embeddings body.
fn embeddings_field(key: &str, v: &str) -> Result<Result<(), Why>, GatewayError> {
    Ok(match key {
        "input" => return embeddings_input(v).map(Ok),
        "encoding_format" => one_of(v, &["float", "base64"]),
        "dimensions" => integer(v, 1, i64::MAX),
        "user" => string(v).map(drop),
        _ => Ok(()),
    })
}

/// `input`: a string, or a non-empty array of strings, of token ids, or of arrays of token ids.
fn embeddings_input(v: &str) -> Result<(), GatewayError> {
    match kind(v) {
        Kind::String => {
            return non_empty_string(v)
                .map(drop)
                .map_err(|why| invalid("input", why));
        }
        Kind::Array => {}
        _ => return Err(invalid("input", expected("a string or an array", v))),
    }
    let mut want = None;
    for (i, item) in elements(v).enumerate() {
        let at = || format!("input[{i}]");
        let k = *want.get_or_insert(kind(item));
        if kind(item) != k {
            let why = format!(
                "must be {} like input[0], not {}",
                kind_name(k),
                kind_name(kind(item))
            );
            return Err(invalid(at(), why));
        }
        let ok = match k {
            Kind::String => Ok(()),
            Kind::Number => token(item),
            Kind::Array if elements(item).next().is_none() => {
                Err(Cow::Borrowed("must not be empty"))
            }
            Kind::Array => elements(item).try_for_each(token),
            _ => Err(Cow::Borrowed(
                "must be a string, a token id or an array of token ids",
            )),
        };
        ok.map_err(|why| invalid(at(), why))?;
    }
    match want {
        None => Err(invalid("input", "must not be empty")),
        Some(_) => Ok(()),
    }
}

fn token(v: &str) -> Result<(), Why> {
    match v.parse::<u32>() {
        Ok(_) => Ok(()),
        Err(_) => Err(Cow::Borrowed("token ids must be non-negative integers")),
    }
}

/// One top-level member of an Anthropic Messages (or count_tokens) body.
fn anthropic_field(key: &str, v: &str) -> Result<Result<(), Why>, GatewayError> {
    Ok(match key {
        "messages" => return anthropic_messages(v).map(Ok),
        "system" => return anthropic_blocks(v, &|| "system".to_owned(), &["text"]).map(Ok),
        "tools" => return anthropic_tools(v).map(Ok),
        "tool_choice" => return anthropic_tool_choice(v).map(Ok),
        // 0 is valid: it pre-warms the prompt cache.
        "max_tokens" => integer(v, 0, i64::MAX),
        "temperature" => number(v, 0.0, 1.0),
        "top_p" => number(v, 0.0, 1.0),
        "top_k" => integer(v, 0, i64::MAX),
        "stop_sequences" => array(v).and_then(|()| {
            elements(v)
                .try_for_each(|s| string(s).map(drop))
                .map_err(|_| Cow::Borrowed("must be an array of strings"))
        }),
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

fn anthropic_messages(v: &str) -> Result<(), GatewayError> {
    each_object(
        v,
        &|| "messages".to_owned(),
        ["role", "content"],
        |i, [role, content]| {
            let at = |field: &str| format!("messages[{i}].{field}");
            match role {
                None => return Err(invalid(at("role"), "is required")),
                Some(r) => one_of(r, ANTHROPIC_ROLES).map_err(|why| invalid(at("role"), why))?,
            }
            let Some(content) = content else {
                return Err(invalid(at("content"), "is required"));
            };
            anthropic_blocks(content, &|| at("content"), ANTHROPIC_BLOCKS)
        },
    )
}

/// A string, or an array of blocks whose `type` is one of `types`; `text` blocks need a
/// string `text`.
fn anthropic_blocks(
    v: &str,
    param: &dyn Fn() -> String,
    types: &[&str],
) -> Result<(), GatewayError> {
    match kind(v) {
        Kind::String => return Ok(()),
        Kind::Array => {}
        _ => {
            let why = expected("a string or an array of content blocks", v);
            return Err(invalid(param(), why));
        }
    }
    each_object(v, param, ["type", "text"], |j, [ty, text]| {
        let at = |field: &str| format!("{}[{j}].{field}", param());
        let Some(ty) = ty else {
            return Err(invalid(at("type"), "is required"));
        };
        one_of(ty, types).map_err(|why| invalid(at("type"), why))?;
        if string(ty).unwrap_or_default() != "text" {
            return Ok(());
        }
        match text {
            None => Err(invalid(at("text"), "is required")),
            Some(t) => string(t).map(drop).map_err(|why| invalid(at("text"), why)),
        }
    })
}

/// `tools`: each with a `name`; custom tools (no `type`, or `custom`) with an object
/// `input_schema`. Server tools (`web_search_20250305`, …) carry no schema.
fn anthropic_tools(v: &str) -> Result<(), GatewayError> {
    let names = ["type", "name", "input_schema"];
    each_object(
        v,
        &|| "tools".to_owned(),
        names,
        |i, [ty, name, input_schema]| {
            let at = |field: &str| format!("tools[{i}].{field}");
            named(name, || at("name"))?;
            let custom = match ty {
                None => true,
                Some(ty) => {
                    non_empty_string(ty).map_err(|why| invalid(at("type"), why))? == "custom"
                }
            };
            if !custom {
                return Ok(());
            }
            match input_schema {
                None => Err(invalid(at("input_schema"), "is required")),
                Some(s) => object(s).map_err(|why| invalid(at("input_schema"), why)),
            }
        },
    )
}

/// `tool_choice`: `{type: auto | any | tool | none}`, `tool` with a `name`.
fn anthropic_tool_choice(v: &str) -> Result<(), GatewayError> {
    object(v).map_err(|why| invalid("tool_choice", why))?;
    let [ty, name] = pick(v, ["type", "name"]);
    let Some(ty) = ty else {
        return Err(invalid("tool_choice.type", "is required"));
    };
    one_of(ty, &["auto", "any", "tool", "none"]).map_err(|why| invalid("tool_choice.type", why))?;
    if string(ty).unwrap_or_default() == "tool" {
        named(name, || "tool_choice.name".to_owned())?;
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
