//! Protocol-faithful fake upstreams on 127.0.0.1:0, scripted by the model name the gateway sends
//! (the same scenario names as the mock provider: `ok`, `tool`, `err-429`, `err-429-always`,
//! `err-NNN`, `midstream-error`, `slow`), written from the documented wire formats
//! (../shared/reference/protocols.md §1.8, §4 and §5):
//!
//! - [`openai`]: an OpenAI-compatible API, `POST /v1/chat/completions` (JSON, and SSE ending in
//!   `[DONE]` with the `include_usage` chunk when asked), `Authorization: Bearer` required, and
//!   the headers OpenAI really sends (`set-cookie`, `openai-organization`, `openai-project`,
//!   `openai-processing-ms`, `x-ratelimit-*`, `server`, `x-request-id`) on every answer.
//!
//! - [`anthropic`]: the Messages API, `POST /v1/messages` (JSON, and SSE with `event:` names,
//!   `message_start` … `message_stop`, cumulative `message_delta` usage, cache fields, `ping`,
//!   in-stream `error`), `POST /v1/messages/count_tokens`, Anthropic error bodies (429 with
//!   `retry-after`, 529 `overloaded_error`), `x-api-key` + `anthropic-version` required.
//! - [`gemini`]: `models/{m}:generateContent` and `:streamGenerateContent?alt=sse` (each event a
//!   whole `GenerateContentResponse`, no `[DONE]`, usage on the last chunk, a mid-stream error as
//!   raw JSON without `data:`), Google error bodies, `x-goog-api-key` required (a wrong key is
//!   Gemini's 400 `API_KEY_INVALID`).
//!
//! Every answer: the text "Hello there!" (usage 11 prompt tokens of which 4 cached, 6 output) or
//! one `get_weather({"location":"Paris"})` call (the OpenAI fake answers text only). A request
//! to the Anthropic fake with `thinking: {type: enabled}` gets a `thinking` block first
//! ([`THOUGHTS`], with a signature; `output_tokens_details.thinking_tokens: 3`).
//!
//! Each fake also answers the error cases of the pass-through table ([`CASES`]: `case-400`,
//! `case-context-length`, `case-401`, `case-403`, `case-404`, `case-429`, `case-quota`,
//! `case-500`, `case-503`, `case-529`, `case-leak-key`) the way its provider really does.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

type Res = Response<BoxBody<Bytes, Infallible>>;

/// One request a fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running fake upstream.
pub struct Fake {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    /// `http://127.0.0.1:PORT` (no `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[derive(Default)]
struct State {
    /// Per scenario: requests answered so far (for `err-429`).
    counts: Mutex<HashMap<String, u32>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The Gemini fake's `thoughtSignature`s given out with function calls.
    issued: Mutex<std::collections::HashSet<String>>,
}

impl State {
    fn count(&self, model: &str) -> u32 {
        let mut c = self.counts.lock().unwrap();
        let n = c.entry(model.to_owned()).or_insert(0);
        *n += 1;
        *n
    }
}

type Handler = fn(Arc<State>, Seen) -> futures_util::future::BoxFuture<'static, Res>;

async fn serve(handler: Handler) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State::default());
    let seen = state.seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let seen = Seen {
                            path: parts
                                .uri
                                .path_and_query()
                                .map_or_else(String::new, |p| p.as_str().to_owned()),
                            headers: parts.headers,
                            body,
                        };
                        state.seen.lock().unwrap().push(seen.clone());
                        Ok::<_, Infallible>(handler(state, seen).await)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Fake { addr, seen }
}

fn json_response(status: u16, headers: &[(&str, &str)], body: Value) -> Res {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    res.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    for (k, v) in headers {
        res.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    res
}

/// 200 `text/event-stream`, one frame per event, 5 ms apart (a real stream, not one write).
fn sse_response(headers: &[(&str, &str)], events: Vec<String>) -> Res {
    let s = futures_util::stream::iter(events).then(|e| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, Infallible>(Frame::data(Bytes::from(e)))
    });
    let mut res = Response::new(BodyExt::boxed(StreamBody::new(s)));
    res.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    res.headers_mut()
        .insert("cache-control", "no-cache".parse().unwrap());
    for (k, v) in headers {
        res.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    res
}

/// The error cases of the pass-through table, each answered in the provider's own format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// 400, an invalid parameter value.
    InvalidValue,
    /// 400, the prompt does not fit the context window.
    ContextLength,
    /// 401, the gateway's upstream key is refused.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 404, unknown model.
    ModelNotFound,
    /// 429, a rate limit (with a wait).
    RateLimit,
    /// 429 (or the provider's equivalent), the quota is exhausted.
    Quota,
    /// 500.
    Server,
    /// 503.
    Unavailable,
    /// 529 (Anthropic's overloaded).
    Overloaded,
    /// 401 whose message quotes the key the gateway sent.
    LeakKey,
}

/// The model name of each case.
pub const CASES: [(&str, Case); 11] = [
    ("case-400", Case::InvalidValue),
    ("case-context-length", Case::ContextLength),
    ("case-401", Case::Unauthorized),
    ("case-403", Case::Forbidden),
    ("case-404", Case::ModelNotFound),
    ("case-429", Case::RateLimit),
    ("case-quota", Case::Quota),
    ("case-500", Case::Server),
    ("case-503", Case::Unavailable),
    ("case-529", Case::Overloaded),
    ("case-leak-key", Case::LeakKey),
];

/// A gateway config (auth off) with the three fakes as providers `oai`, `anth` and `gem`, and
/// for each provider and case two single-target models: `{provider}-{case}` (for the OpenAI
/// face) and `msg-{provider}-{case}` (for the Anthropic face), each its own target.
pub fn cases_config(openai: &Fake, anthropic: &Fake, gemini: &Fake) -> String {
    let mut cfg = format!(
        r#"
[auth]
enabled = false
[usage]
jsonl = ""
[providers.oai]
kind = "openai"
base_url = "{}/v1"
api_key = "{OPENAI_KEY}"
[providers.anth]
kind = "anthropic"
base_url = "{}"
api_key = "{ANTHROPIC_KEY}"
[providers.gem]
kind = "gemini"
base_url = "{}"
api_key = "{GEMINI_KEY}"
"#,
        openai.base_url(),
        anthropic.base_url(),
        gemini.base_url(),
    );
    for provider in ["oai", "anth", "gem"] {
        for (case, _) in CASES {
            for prefix in ["", "msg-"] {
                cfg.push_str(&format!(
                    "[models.{prefix}{provider}-{case}]\ntargets = [{{ provider = \"{provider}\", model = \"{case}\" }}]\n"
                ));
            }
        }
    }
    cfg
}

/// What a scenario asks for.
enum Plan {
    Text,
    Tool,
    /// One delta, then an in-band error (quoting the upstream key when `true`).
    Midstream(bool),
    Error(u16, Option<&'static str>),
    Case(Case),
}

/// What a scenario asks for, given the request: a `tool` scenario whose conversation already
/// ends with the tool's result answers with text (the second turn of a tool loop).
fn plan_for(state: &State, model: &str, answered_tool: bool) -> Plan {
    match plan(state, model) {
        Plan::Tool if answered_tool => Plan::Text,
        p => p,
    }
}

/// The signature the fakes give a thought: `hex(sha256(secret + text))`, so a client (or a
/// gateway) that changes the thought or drops the signature is caught.
pub fn sign_thought(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("fake-thinking-secret:{text}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn plan(state: &State, model: &str) -> Plan {
    if let Some((_, c)) = CASES.iter().find(|(m, _)| *m == model) {
        return Plan::Case(*c);
    }
    match model {
        "tool" => Plan::Tool,
        "midstream-error" => Plan::Midstream(false),
        "midstream-leak-key" => Plan::Midstream(true),
        "err-429" if state.count(model) <= 2 => Plan::Error(429, Some("1")),
        "err-429" => Plan::Text,
        "err-429-always" => Plan::Error(429, Some("1")),
        m => match m.strip_prefix("err-").and_then(|c| c.parse::<u16>().ok()) {
            Some(code) => Plan::Error(code, None),
            None => Plan::Text,
        },
    }
}

const WORDS: [&str; 3] = ["Hello", " there", "!"];

// ---------------------------------------------------------------------------------------------
// Anthropic Messages API

/// The only key the fake Anthropic API accepts (`x-api-key`).
pub const ANTHROPIC_KEY: &str = "sk-ant-fake-upstream";
/// The only key the fake Gemini API accepts (`x-goog-api-key`).
pub const GEMINI_KEY: &str = "AIza-fake-upstream";

/// Start a fake Anthropic API.
pub async fn anthropic() -> Fake {
    serve(|state, seen| Box::pin(anthropic_answer(state, seen))).await
}

fn anthropic_error(status: u16, ty: &str, message: &str, headers: &[(&str, &str)]) -> Res {
    let mut h = vec![("request-id", "req_fake_error")];
    h.extend_from_slice(headers);
    json_response(
        status,
        &h,
        json!({"type": "error", "error": {"type": ty, "message": message}, "request_id": "req_fake_error"}),
    )
}

fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The pass-through cases as the Messages API answers them (docs.claude.com/en/api/errors).
fn anthropic_case(c: Case) -> Res {
    let e = |status, ty, msg: &str| anthropic_error(status, ty, msg, &[]);
    match c {
        Case::InvalidValue => e(
            400,
            "invalid_request_error",
            "temperature: Input should be less than or equal to 1",
        ),
        Case::ContextLength => e(
            400,
            "invalid_request_error",
            "prompt is too long: 215000 tokens > 200000 maximum",
        ),
        Case::Unauthorized => e(401, "authentication_error", "invalid x-api-key"),
        Case::Forbidden => e(
            403,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        Case::ModelNotFound => e(404, "not_found_error", "model: claude-nope"),
        Case::RateLimit => anthropic_error(
            429,
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests per minute.",
            &[("retry-after", "1")],
        ),
        Case::Quota => e(
            400,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
        ),
        Case::Server => e(500, "api_error", "Internal server error"),
        Case::Unavailable => e(503, "api_error", "Service unavailable"),
        Case::Overloaded => e(529, "overloaded_error", "Overloaded"),
        Case::LeakKey => e(
            401,
            "authentication_error",
            &format!("invalid x-api-key: {ANTHROPIC_KEY}"),
        ),
    }
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

async fn anthropic_answer(state: Arc<State>, seen: Seen) -> Res {
    if seen.headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(ANTHROPIC_KEY) {
        return anthropic_error(401, "authentication_error", "invalid x-api-key", &[]);
    }
    if seen.headers.get("anthropic-version").is_none() {
        return anthropic_error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
            &[],
        );
    }
    let Ok(req) = serde_json::from_slice::<Value>(&seen.body) else {
        return anthropic_error(400, "invalid_request_error", "invalid JSON", &[]);
    };
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    if !req["messages"].is_array() {
        return anthropic_error(
            400,
            "invalid_request_error",
            "messages: Field required",
            &[],
        );
    }
    if seen.path == "/v1/messages/count_tokens" {
        return json_response(200, &[], json!({"input_tokens": 11}));
    }
    if seen.path != "/v1/messages" {
        return anthropic_error(404, "not_found_error", "Not found", &[]);
    }
    if !req["max_tokens"].is_u64() {
        return anthropic_error(
            400,
            "invalid_request_error",
            "max_tokens: Field required",
            &[],
        );
    }
    let stream = req["stream"].as_bool() == Some(true);
    if model == "slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let thinking = req["thinking"]["type"] == "enabled";
    if thinking {
        if let Err(message) = check_thinking(&req["messages"]) {
            return anthropic_error(400, "invalid_request_error", &message, &[]);
        }
    }
    let answered = last_content_has(&req["messages"], "tool_result");
    let plan = plan_for(&state, &model, answered);
    if let Plan::Case(c) = plan {
        return anthropic_case(c);
    }
    if let Plan::Error(status, retry) = plan {
        let ty = anthropic_error_type(status);
        let headers: Vec<(&str, &str)> = retry.map(|r| ("retry-after", r)).into_iter().collect();
        return anthropic_error(status, ty, &format!("fake {ty}"), &headers);
    }
    let headers = [("request-id", "req_fake_1")];
    let tool = matches!(plan, Plan::Tool);
    let start_usage = json!({"input_tokens": 7, "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4, "output_tokens": 1, "service_tier": "standard"});
    let (output_tokens, stop_reason) = if tool {
        (12, "tool_use")
    } else {
        (6, "end_turn")
    };
    let id = "msg_fake01";
    // With thinking enabled, the answer opens with a thinking block (its signature last).
    let with_thinking = |mut usage: Value| {
        if thinking {
            usage["output_tokens_details"] = json!({"thinking_tokens": 3});
        }
        usage
    };
    if !stream {
        let mut content = vec![];
        if thinking {
            content.push(json!({"type": "thinking", "thinking": THOUGHTS.concat(),
                "signature": sign_thought(&THOUGHTS.concat())}));
        }
        if tool {
            content.push(json!({"type": "text", "text": "Let me check."}));
            content.push(
                json!({"type": "tool_use", "id": "toolu_fake01", "name": "get_weather",
                "input": {"location": "Paris"}}),
            );
        } else {
            content.push(json!({"type": "text", "text": WORDS.concat()}));
        }
        return json_response(
            200,
            &headers,
            json!({"id": id, "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop_reason, "stop_sequence": null,
                "usage": with_thinking(json!({"input_tokens": 7, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 4, "output_tokens": output_tokens,
                    "service_tier": "standard"}))}),
        );
    }
    let mut evs = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": start_usage}}),
    )];
    let text_at = usize::from(thinking);
    if thinking {
        evs.extend(thinking_events());
    }
    evs.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": text_at, "content_block": {"type": "text", "text": ""}}),
    ));
    evs.push(event("ping", json!({"type": "ping"})));
    let texts: Vec<&str> = if tool {
        vec!["Let me check."]
    } else {
        WORDS.to_vec()
    };
    if let Plan::Midstream(leak) = plan {
        evs.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": text_at, "delta": {"type": "text_delta", "text": "Hello"}}),
        ));
        let message = if leak {
            format!("Overloaded (key {ANTHROPIC_KEY})")
        } else {
            "Overloaded".to_owned()
        };
        evs.push(event(
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": message}}),
        ));
        return sse_response(&headers, evs);
    }
    for t in texts {
        evs.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": text_at, "delta": {"type": "text_delta", "text": t}}),
        ));
    }
    evs.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": text_at}),
    ));
    if tool {
        let at = text_at + 1;
        evs.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": at, "content_block": {"type": "tool_use",
                "id": "toolu_fake01", "name": "get_weather", "input": {}}}),
        ));
        for frag in ["", "{\"locati", "on\": \"Par", "is\"}"] {
            evs.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": at,
                    "delta": {"type": "input_json_delta", "partial_json": frag}}),
            ));
        }
        evs.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": at}),
        ));
    }
    // cumulative usage: an intermediate count, then the final one
    evs.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": null, "stop_sequence": null},
            "usage": {"output_tokens": 3}}),
    ));
    evs.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": with_thinking(json!({"output_tokens": output_tokens}))}),
    ));
    evs.push(event("message_stop", json!({"type": "message_stop"})));
    sse_response(&headers, evs)
}

/// Whether the last message's content holds a block (or part) of type `ty`.
fn last_content_has(messages: &Value, ty: &str) -> bool {
    let last = messages.as_array().and_then(|m| m.last());
    let content = last.map_or(&Value::Null, |m| &m["content"]);
    content
        .as_array()
        .is_some_and(|c| c.iter().any(|b| b["type"] == ty))
}

/// Anthropic's rules for a conversation with thinking enabled: an assistant turn that used a
/// tool starts with its thinking block, and every thinking block comes back unchanged (its
/// signature matches). `Err`: Anthropic's 400 message.
fn check_thinking(messages: &Value) -> Result<(), String> {
    let turns = messages.as_array().map_or(&[][..], |m| &m[..]);
    for (i, m) in turns.iter().enumerate() {
        let Some(blocks) = m["content"].as_array().filter(|_| m["role"] == "assistant") else {
            continue;
        };
        let first = blocks
            .first()
            .map_or("", |b| b["type"].as_str().unwrap_or(""));
        if blocks.iter().any(|b| b["type"] == "tool_use")
            && !matches!(first, "thinking" | "redacted_thinking")
        {
            return Err(format!(
                "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but \
                 found `{first}`. When `thinking` is enabled, a final `assistant` message must \
                 start with a thinking block (preceeding the lastmost set of `tool_use` and \
                 `tool_result` blocks). We recommend you include thinking blocks from previous \
                 turns. To avoid this requirement, disable `thinking`."
            ));
        }
        for (j, b) in blocks.iter().enumerate() {
            let text = b["thinking"].as_str().unwrap_or("");
            if b["type"] == "thinking" && b["signature"].as_str() != Some(&sign_thought(text)) {
                return Err(format!(
                    "messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
                ));
            }
        }
    }
    Ok(())
}

/// The thinking of the fake Anthropic API, as its deltas.
pub const THOUGHTS: [&str; 2] = ["Weighing ", "the words."];

/// A streamed thinking block at content index 0: start, deltas, signature, stop.
fn thinking_events() -> Vec<String> {
    let mut evs = vec![event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
    )];
    for t in THOUGHTS {
        evs.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "thinking_delta", "thinking": t}}),
        ));
    }
    evs.push(event(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "signature_delta", "signature": sign_thought(&THOUGHTS.concat())}}),
    ));
    evs.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    evs
}

// ---------------------------------------------------------------------------------------------
// Google Gemini generativelanguage API

/// Start a fake Gemini API.
pub async fn gemini() -> Fake {
    serve(|state, seen| Box::pin(gemini_answer(state, seen))).await
}

fn gemini_error(status: u16, message: &str, reason: Option<&str>) -> Res {
    let rpc = match status {
        400 => "INVALID_ARGUMENT",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    };
    let mut err = json!({"code": status, "message": message, "status": rpc});
    if let Some(r) = reason {
        err["details"] = json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": r, "domain": "googleapis.com"}]);
    }
    json_response(status, &[], json!({"error": err}))
}

fn gemini_error_with(status: u16, rpc: &str, message: &str, details: Value) -> Res {
    json_response(
        status,
        &[],
        json!({"error": {"code": status, "message": message, "status": rpc, "details": details}}),
    )
}

/// The pass-through cases as the Gemini API answers them
/// (ai.google.dev/gemini-api/docs/troubleshooting).
fn gemini_case(c: Case) -> Res {
    let quota = json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]});
    let exceeded = "You exceeded your current quota, please check your plan and billing details.";
    match c {
        Case::InvalidValue => gemini_error_with(
            400,
            "INVALID_ARGUMENT",
            "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"",
            json!([{"@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "generation_config.temperature"}]}]),
        ),
        Case::ContextLength => gemini_error_with(
            400,
            "INVALID_ARGUMENT",
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            json!([]),
        ),
        Case::Unauthorized => gemini_error(
            400,
            "API key not valid. Please pass a valid API key.",
            Some("API_KEY_INVALID"),
        ),
        Case::Forbidden => gemini_error_with(
            403,
            "PERMISSION_DENIED",
            "Permission denied: Consumer 'api_key:x' has been suspended.",
            json!([]),
        ),
        Case::ModelNotFound => gemini_error_with(
            404,
            "NOT_FOUND",
            "models/gemini-nope is not found for API version v1beta, or is not supported for generateContent.",
            json!([]),
        ),
        Case::RateLimit => gemini_error_with(
            429,
            "RESOURCE_EXHAUSTED",
            exceeded,
            json!([quota, {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]),
        ),
        Case::Quota => gemini_error_with(429, "RESOURCE_EXHAUSTED", exceeded, json!([quota])),
        Case::Server => gemini_error_with(
            500,
            "INTERNAL",
            "An internal error has occurred.",
            json!([]),
        ),
        Case::Unavailable => gemini_error_with(
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
            json!([]),
        ),
        Case::Overloaded => {
            gemini_error_with(529, "UNAVAILABLE", "The model is overloaded.", json!([]))
        }
        Case::LeakKey => gemini_error(
            400,
            &format!("API key not valid: {GEMINI_KEY}"),
            Some("API_KEY_INVALID"),
        ),
    }
}

/// The `thoughtSignature` the fake Gemini API gives a call of `name` with `args`.
fn call_signature(name: &str, args: &Value) -> String {
    sign_thought(&format!("{name}{args}"))
}

/// Gemini 3's rule for function calling: a `functionCall` part the model made comes back with
/// the `thoughtSignature` it was given (a missing one is refused only for calls the fake signed,
/// in a request that thinks). `Err`: Gemini's 400 message.
fn check_signatures(state: &State, contents: &Value, thinks: bool) -> Result<(), String> {
    let issued = state.issued.lock().unwrap();
    let turns = contents.as_array().map_or(&[][..], |c| &c[..]);
    for (i, c) in turns.iter().enumerate() {
        let parts = c["parts"].as_array().map_or(&[][..], |p| &p[..]);
        for (j, p) in parts.iter().enumerate() {
            let Some(fc) = p.get("functionCall") else {
                continue;
            };
            let expected = call_signature(fc["name"].as_str().unwrap_or(""), &fc["args"]);
            match p["thoughtSignature"].as_str() {
                Some(sig) if sig != expected => {
                    return Err(format!(
                        "Corrupted thought signature at contents[{i}].parts[{j}]."
                    ));
                }
                None if thinks && issued.contains(&expected) => {
                    return Err(format!(
                        "Function call is missing a thought_signature in functionCall parts. \
                         This is required for tools to work correctly, and missing \
                         thought_signature may lead to degraded model performance. Additional \
                         data, function call `default_api:{}` , position {}. Please refer to \
                         https://ai.google.dev/gemini-api/docs/thought-signatures for more \
                         details.",
                        fc["name"].as_str().unwrap_or(""),
                        j + 1
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn gemini_chunk(parts: Value, finish: Option<&str>, usage: Option<Value>, model: &str) -> Value {
    let mut cand = json!({"content": {"role": "model", "parts": parts}, "index": 0});
    if let Some(f) = finish {
        cand["finishReason"] = json!(f);
    }
    let mut doc = json!({"candidates": [cand], "modelVersion": model, "responseId": "resp-fake01"});
    if let Some(u) = usage {
        doc["usageMetadata"] = u;
    }
    doc
}

async fn gemini_answer(state: Arc<State>, seen: Seen) -> Res {
    if seen
        .headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        != Some(GEMINI_KEY)
    {
        return gemini_error(
            400,
            "API key not valid. Please pass a valid API key.",
            Some("API_KEY_INVALID"),
        );
    }
    let (path, query) = seen.path.split_once('?').unwrap_or((&seen.path, ""));
    let Some(rest) = path.strip_prefix("/v1beta/models/") else {
        return gemini_error(404, "not found", None);
    };
    let (model, stream) = if let Some(m) = rest.strip_suffix(":streamGenerateContent") {
        if !query.split('&').any(|q| q == "alt=sse") {
            return gemini_error(400, "this fake streams with alt=sse only", None);
        }
        (m.to_owned(), true)
    } else if let Some(m) = rest.strip_suffix(":generateContent") {
        (m.to_owned(), false)
    } else {
        return gemini_error(404, "unknown method", None);
    };
    let Ok(req) = serde_json::from_slice::<Value>(&seen.body) else {
        return gemini_error(400, "Invalid JSON payload received.", None);
    };
    if !req["contents"].is_array() {
        return gemini_error(400, "contents is not specified", None);
    }
    if model == "slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let thinks = req["generationConfig"]["thinkingConfig"]["thinkingBudget"]
        .as_u64()
        .is_some_and(|b| b > 0);
    if let Err(message) = check_signatures(&state, &req["contents"], thinks) {
        return gemini_error(400, &message, None);
    }
    let answered = req["contents"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|c| c["parts"].as_array())
        .is_some_and(|p| p.iter().any(|p| p.get("functionResponse").is_some()));
    let plan = plan_for(&state, &model, answered);
    if let Plan::Case(c) = plan {
        return gemini_case(c);
    }
    if let Plan::Error(status, _) = plan {
        return gemini_error(status, &format!("fake error {status}"), None);
    }
    let usage = json!({"promptTokenCount": 11, "candidatesTokenCount": 6, "totalTokenCount": 17,
        "cachedContentTokenCount": 4});
    // Like Gemini 3 when it thinks (a thinking budget above 0): a function call carries a
    // thought signature; with `includeThoughts`, a thought summary comes first.
    let thinking = &req["generationConfig"]["thinkingConfig"];
    let args = json!({"location": "Paris"});
    let mut call = json!([{"functionCall": {"name": "get_weather", "args": args}}]);
    if thinks {
        let sig = call_signature("get_weather", &args);
        state.issued.lock().unwrap().insert(sig.clone());
        call[0]["thoughtSignature"] = json!(sig);
    }
    let thoughts = thinking["includeThoughts"] == true;
    let with_thought = |parts: Value| match thoughts {
        true => {
            let mut all = vec![json!({"text": THOUGHTS.concat(), "thought": true})];
            all.extend(parts.as_array().cloned().unwrap_or_default());
            Value::Array(all)
        }
        false => parts,
    };
    if !stream {
        let parts = match plan {
            Plan::Tool => call,
            _ => json!([{"text": WORDS.concat()}]),
        };
        let parts = with_thought(parts);
        return json_response(
            200,
            &[],
            gemini_chunk(parts, Some("STOP"), Some(usage), &model),
        );
    }
    let data = |v: Value| format!("data: {v}\r\n\r\n");
    let mut evs = Vec::new();
    if thoughts {
        evs.push(data(gemini_chunk(
            with_thought(json!([])),
            None,
            None,
            &model,
        )));
    }
    match plan {
        Plan::Tool => evs.push(data(gemini_chunk(call, Some("STOP"), Some(usage), &model))),
        Plan::Midstream(leak) => {
            evs.push(data(gemini_chunk(
                json!([{"text": "Hello"}]),
                None,
                None,
                &model,
            )));
            let message = if leak {
                format!("The model is overloaded ({GEMINI_KEY}).")
            } else {
                "The model is overloaded.".to_owned()
            };
            // a mid-stream error arrives as raw multi-line JSON, without `data:`
            evs.push(format!(
                "{{\n  \"error\": {{\n    \"code\": 503,\n    \"message\": \"{message}\",\n    \"status\": \"UNAVAILABLE\"\n  }}\n}}\n"
            ));
        }
        _ => {
            for (i, w) in WORDS.iter().enumerate() {
                let last = i + 1 == WORDS.len();
                // intermediate chunks carry partial usage; the last one the full count
                let u = if last {
                    usage.clone()
                } else {
                    json!({"promptTokenCount": 11, "totalTokenCount": 11})
                };
                evs.push(data(gemini_chunk(
                    json!([{"text": w}]),
                    last.then_some("STOP"),
                    Some(u),
                    &model,
                )));
            }
        }
    }
    sse_response(&[], evs)
}

// ---------------------------------------------------------------------------------------------
// OpenAI-compatible API

/// The only key the fake OpenAI API accepts (`Authorization: Bearer`).
pub const OPENAI_KEY: &str = "sk-openai-fake-upstream";

/// The headers OpenAI sends with every answer (developers' header list, rate-limit guide), none
/// of which but `openai-processing-ms` and the request id may reach a gateway's client.
pub const OPENAI_HEADERS: [(&str, &str); 10] = [
    (
        "set-cookie",
        "__cf_bm=fake-cookie; path=/; HttpOnly; Secure",
    ),
    ("openai-organization", "org-operator-fake"),
    ("openai-project", "proj_operator_fake"),
    ("openai-version", "2020-10-01"),
    ("openai-processing-ms", "42"),
    ("x-ratelimit-limit-requests", "60"),
    ("x-ratelimit-remaining-requests", "59"),
    ("x-ratelimit-reset-requests", "1s"),
    ("server", "cloudflare"),
    ("x-request-id", "req_openai_fake"),
];

/// Start a fake OpenAI-compatible API (`base_url()` + `/v1`).
pub async fn openai() -> Fake {
    serve(|state, seen| Box::pin(openai_answer(state, seen))).await
}

fn openai_error(status: u16, message: &str, ty: &str, param: Value, code: Value) -> Res {
    openai_error_with(status, message, ty, param, code, &[])
}

fn openai_error_with(
    status: u16,
    message: &str,
    ty: &str,
    param: Value,
    code: Value,
    extra: &[(&str, &str)],
) -> Res {
    let mut h = OPENAI_HEADERS.to_vec();
    h.extend_from_slice(extra);
    json_response(
        status,
        &h,
        json!({"error": {"message": message, "type": ty, "param": param, "code": code}}),
    )
}

/// The pass-through cases as OpenAI answers them (developers.openai.com/docs/guides/error-codes).
fn openai_case(c: Case) -> Res {
    const NULL: Value = Value::Null;
    match c {
        Case::InvalidValue => openai_error(
            400,
            "Invalid value for 'temperature': expected a number between 0 and 2, got 7.",
            "invalid_request_error",
            json!("temperature"),
            json!("invalid_value"),
        ),
        Case::ContextLength => openai_error(
            400,
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            json!("messages"),
            json!("context_length_exceeded"),
        ),
        Case::Unauthorized => openai_error(
            401,
            "Incorrect API key provided: sk-opena**********************ream. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            NULL,
            json!("invalid_api_key"),
        ),
        Case::Forbidden => openai_error(
            403,
            "Country, region, or territory not supported",
            "request_forbidden",
            NULL,
            json!("unsupported_country_region_territory"),
        ),
        Case::ModelNotFound => openai_error(
            404,
            "The model `gpt-nope` does not exist or you do not have access to it.",
            "invalid_request_error",
            NULL,
            json!("model_not_found"),
        ),
        Case::RateLimit => openai_error_with(
            429,
            "Rate limit reached for gpt-4o in organization org-operator-fake on requests per min (RPM): Limit 60, Used 60, Requested 1. Please try again in 1s.",
            "requests",
            NULL,
            json!("rate_limit_exceeded"),
            &[("retry-after", "1")],
        ),
        Case::Quota => openai_error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            NULL,
            json!("insufficient_quota"),
        ),
        Case::Server => openai_error(
            500,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            NULL,
            NULL,
        ),
        Case::Unavailable => openai_error(
            503,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            NULL,
            json!("server_is_overloaded"),
        ),
        Case::Overloaded => openai_error(529, "Overloaded", "overloaded_error", NULL, NULL),
        Case::LeakKey => openai_error(
            401,
            &format!("Incorrect API key provided: {OPENAI_KEY}."),
            "invalid_request_error",
            NULL,
            json!("invalid_api_key"),
        ),
    }
}

async fn openai_answer(state: Arc<State>, seen: Seen) -> Res {
    let bearer = format!("Bearer {OPENAI_KEY}");
    if seen
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        != Some(bearer.as_str())
    {
        return openai_error(
            401,
            "You didn't provide an API key.",
            "invalid_request_error",
            Value::Null,
            Value::Null,
        );
    }
    if seen.path != "/v1/chat/completions" {
        return openai_error(
            404,
            "Unknown request URL",
            "invalid_request_error",
            Value::Null,
            json!("unknown_url"),
        );
    }
    let Ok(req) = serde_json::from_slice::<Value>(&seen.body) else {
        return openai_error(
            400,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            Value::Null,
            Value::Null,
        );
    };
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    match plan(&state, &model) {
        Plan::Case(c) => return openai_case(c),
        Plan::Error(status, retry) => {
            let extra: Vec<(&str, &str)> = retry.map(|r| ("retry-after", r)).into_iter().collect();
            return openai_error_with(
                status,
                &format!("fake error {status}"),
                "server_error",
                Value::Null,
                Value::Null,
                &extra,
            );
        }
        _ => {}
    }
    let usage = json!({"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 4}});
    let id = "chatcmpl-fake01";
    if req["stream"].as_bool() != Some(true) {
        return json_response(
            200,
            &OPENAI_HEADERS,
            json!({"id": id, "object": "chat.completion",
            "created": 1_700_000_000, "model": model, "choices": [{"index": 0,
            "message": {"role": "assistant", "content": WORDS.concat()}, "logprobs": null,
            "finish_reason": "stop"}], "usage": usage}),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": null,
            "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut evs = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for w in WORDS {
        evs.push(chunk(json!({"content": w}), Value::Null));
    }
    evs.push(chunk(json!({}), json!("stop")));
    if req["stream_options"]["include_usage"].as_bool() == Some(true) {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [], "usage": usage});
        evs.push(format!("data: {c}\n\n"));
    }
    evs.push("data: [DONE]\n\n".to_owned());
    sse_response(&OPENAI_HEADERS, evs)
}

/// Start a fake OpenAI API serving **both** `POST /v1/responses` (the Responses API: a
/// `response` object, or its named event stream ending at `response.completed`, no `[DONE]`)
/// and `POST /v1/chat/completions`, with the same scripted answers, so a Responses-capable
/// provider and a chat-only provider pointed at it answer alike: when the conversation ends
/// with a tool's output, the text "The weather in Paris is sunny."; else for a model whose
/// name contains `tool`, one `get_weather({"location":"Paris"})` call (call id
/// `call_fake_1`); else "Hello there!". Usage: 11 input tokens (4 cached), 6 output tokens
/// (2 of them reasoning). Model `midstream-error`: the stream stops after its first text delta.
pub async fn openai_responses() -> Fake {
    serve(|_state, seen| Box::pin(async move { responses_answer(seen) })).await
}

/// What the scripted assistant says next: `Ok(text)` or `Err(())` for the tool call.
fn scripted_turn(model: &str, body: &Value) -> Result<&'static str, ()> {
    let s = body.to_string();
    if s.contains("function_call_output") || s.contains("\"role\":\"tool\"") {
        Ok("The weather in Paris is sunny.")
    } else if model.contains("tool") {
        Err(())
    } else {
        Ok("Hello there!")
    }
}

fn responses_answer(seen: Seen) -> Res {
    let Ok(req) = serde_json::from_slice::<Value>(&seen.body) else {
        return openai_error(
            400,
            "bad JSON",
            "invalid_request_error",
            Value::Null,
            Value::Null,
        );
    };
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    let stream = req["stream"].as_bool() == Some(true);
    let turn = scripted_turn(&model, &req);
    match seen.path.as_str() {
        "/v1/responses" => native_response(&model, stream, turn),
        "/v1/chat/completions" => chat_response(&model, stream, turn, &req),
        _ => openai_error(
            404,
            "Unknown request URL",
            "invalid_request_error",
            Value::Null,
            json!("unknown_url"),
        ),
    }
}

fn native_response(model: &str, stream: bool, turn: Result<&str, ()>) -> Res {
    let usage = json!({"input_tokens": 11, "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 6, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 17});
    let item = match turn {
        Ok(text) => json!({"id": "msg_fake01", "type": "message", "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": text,
            "annotations": [], "logprobs": []}]}),
        Err(()) => json!({"id": "fc_fake01", "type": "function_call", "status": "completed",
            "call_id": "call_fake_1", "name": "get_weather",
            "arguments": "{\"location\":\"Paris\"}"}),
    };
    let object = |status: &str, output: Value, usage: Value| {
        json!({"id": "resp_fake01", "object": "response", "created_at": 1_700_000_000,
            "status": status, "error": null, "incomplete_details": null, "instructions": null,
            "max_output_tokens": null, "model": model, "output": output,
            "parallel_tool_calls": true, "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null}, "store": true, "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
            "top_p": 1.0, "truncation": "disabled", "usage": usage, "user": null,
            "metadata": {}})
    };
    if !stream {
        return json_response(
            200,
            &OPENAI_HEADERS,
            object("completed", json!([item]), usage),
        );
    }
    let mut evs: Vec<Value> = vec![
        json!({"type": "response.created", "response": object("in_progress", json!([]), Value::Null)}),
        json!({"type": "response.in_progress", "response": object("in_progress", json!([]), Value::Null)}),
    ];
    let mut added = item.clone();
    added["status"] = json!("in_progress");
    match turn {
        Ok(text) => {
            added["content"] = json!([]);
            evs.push(
                json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
            );
            evs.push(
                json!({"type": "response.content_part.added", "item_id": "msg_fake01",
                "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            let (a, b) = text.split_at(text.len() / 2);
            for d in [a, b] {
                evs.push(
                    json!({"type": "response.output_text.delta", "item_id": "msg_fake01",
                    "output_index": 0, "content_index": 0, "delta": d, "logprobs": []}),
                );
                if model == "midstream-error" {
                    break;
                }
            }
            evs.push(
                json!({"type": "response.output_text.done", "item_id": "msg_fake01",
                "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            );
            evs.push(
                json!({"type": "response.content_part.done", "item_id": "msg_fake01",
                "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": text, "annotations": []}}),
            );
        }
        Err(()) => {
            added["arguments"] = json!("");
            evs.push(
                json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
            );
            for d in ["{\"location\":", "\"Paris\"}"] {
                evs.push(json!({"type": "response.function_call_arguments.delta",
                    "item_id": "fc_fake01", "output_index": 0, "delta": d}));
            }
            evs.push(json!({"type": "response.function_call_arguments.done",
                "item_id": "fc_fake01", "output_index": 0, "name": "get_weather",
                "arguments": "{\"location\":\"Paris\"}"}));
        }
    }
    evs.push(json!({"type": "response.output_item.done", "output_index": 0, "item": item}));
    evs.push(json!({"type": "response.completed", "response": object("completed", json!([item]), usage)}));
    let mut frames = Vec::new();
    for (n, mut e) in evs.into_iter().enumerate() {
        e["sequence_number"] = json!(n);
        frames.push(format!(
            "event: {}\ndata: {e}\n\n",
            e["type"].as_str().unwrap()
        ));
        if model == "midstream-error" && n == 4 {
            break;
        }
    }
    sse_response(&OPENAI_HEADERS, frames)
}

fn chat_response(model: &str, stream: bool, turn: Result<&str, ()>, req: &Value) -> Res {
    let usage = json!({"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2}});
    let id = "chatcmpl-fake01";
    let call = json!({"id": "call_fake_1", "type": "function", "function": {
        "name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}});
    let finish = if turn.is_ok() { "stop" } else { "tool_calls" };
    if !stream {
        let message = match turn {
            Ok(text) => json!({"role": "assistant", "content": text}),
            Err(()) => json!({"role": "assistant", "content": null, "tool_calls": [call]}),
        };
        return json_response(
            200,
            &OPENAI_HEADERS,
            json!({"id": id, "object": "chat.completion",
            "created": 1_700_000_000, "model": model, "choices": [{"index": 0,
            "message": message, "logprobs": null, "finish_reason": finish}], "usage": usage}),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": null,
            "finish_reason": finish}], "usage": null});
        format!("data: {c}\n\n")
    };
    let mut evs = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    match turn {
        Ok(text) => {
            let (a, b) = text.split_at(text.len() / 2);
            evs.push(chunk(json!({"content": a}), Value::Null));
            if model == "midstream-error" {
                return sse_response(&OPENAI_HEADERS, evs);
            }
            evs.push(chunk(json!({"content": b}), Value::Null));
        }
        Err(()) => {
            evs.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_fake_1", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ));
            for d in ["{\"location\":", "\"Paris\"}"] {
                evs.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": d}}]}),
                    Value::Null,
                ));
            }
        }
    }
    evs.push(chunk(json!({}), json!(finish)));
    if req["stream_options"]["include_usage"].as_bool() == Some(true) {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [], "usage": usage});
        evs.push(format!("data: {c}\n\n"));
    }
    evs.push("data: [DONE]\n\n".to_owned());
    sse_response(&OPENAI_HEADERS, evs)
}
