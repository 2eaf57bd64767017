//! Issue 10, acceptance 2: the upstream's error passes through, case by case, over real sockets.
//!
//! The reference gateway in front of three protocol-faithful fake upstreams (tests/fakes), each
//! answering the cases of the table in its own wire format: an OpenAI-compatible API (its
//! `message`, `type`, `code` and `param` reach the client exactly as sent), the Anthropic
//! Messages API and the Gemini API (mapped by their documented tables so the meaning is kept:
//! `context_length_exceeded`, `insufficient_quota`, `rate_limit_exceeded` with `Retry-After`,
//! overloaded → 503). Every case has its own public model and upstream model, hence its own
//! target: one case's 429 memory or breaker count can not touch another.
//!
//! The Anthropic face (`/v1/messages`) keeps the same meaning: an Anthropic upstream's own status
//! and type come back as they were sent.

mod common;
mod fakes;

use common::{Gateway, send};
use fakes::Fake;
use serde_json::{Value, json};

/// One row: what the client must see on the OpenAI face.
struct Want {
    case: &'static str,
    status: u16,
    ty: &'static str,
    code: Value,
    param: Value,
    message: &'static str,
    /// `Some(v)`: `Retry-After` equals `v`; `None`: any value when the status is 429 or 503,
    /// absent otherwise.
    retry_after: Option<&'static str>,
}

#[allow(clippy::too_many_arguments)]
fn w(
    case: &'static str,
    status: u16,
    ty: &'static str,
    code: Value,
    param: Value,
    message: &'static str,
    retry_after: Option<&'static str>,
) -> Want {
    Want {
        case,
        status,
        ty,
        code,
        param,
        message,
        retry_after,
    }
}

const N: Value = Value::Null;

/// OpenAI-compatible: everything exactly as sent (the 529 becomes 503).
#[rustfmt::skip]
fn openai_table() -> Vec<Want> {
    vec![
        w("case-400", 400, "invalid_request_error", json!("invalid_value"), json!("temperature"),
            "Invalid value for 'temperature': expected a number between 0 and 2, got 7.", None),
        w("case-context-length", 400, "invalid_request_error", json!("context_length_exceeded"), json!("messages"),
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. Please reduce the length of the messages.", None),
        w("case-401", 401, "invalid_request_error", json!("invalid_api_key"), N,
            "Incorrect API key provided: sk-opena**********************ream. You can find your API key at https://platform.openai.com/account/api-keys.", None),
        w("case-403", 403, "request_forbidden", json!("unsupported_country_region_territory"), N,
            "Country, region, or territory not supported", None),
        w("case-404", 404, "invalid_request_error", json!("model_not_found"), N,
            "The model `gpt-nope` does not exist or you do not have access to it.", None),
        w("case-429", 429, "requests", json!("rate_limit_exceeded"), N,
            "Rate limit reached for gpt-4o in organization org-operator-fake on requests per min (RPM): Limit 60, Used 60, Requested 1. Please try again in 1s.", Some("1")),
        w("case-quota", 429, "insufficient_quota", json!("insufficient_quota"), N,
            "You exceeded your current quota, please check your plan and billing details.", None),
        w("case-500", 500, "server_error", N, N,
            "The server had an error while processing your request. Sorry about that!", None),
        w("case-503", 503, "server_error", json!("server_is_overloaded"), N,
            "The engine is currently overloaded, please try again later.", None),
        w("case-529", 503, "overloaded_error", N, N, "Overloaded", None),
    ]
}

/// Anthropic, through the mapping table of `tollgate::translate::anthropic`.
#[rustfmt::skip]
fn anthropic_table() -> Vec<Want> {
    vec![
        w("case-400", 400, "invalid_request_error", json!("invalid_request_error"), N,
            "temperature: Input should be less than or equal to 1", None),
        w("case-context-length", 400, "invalid_request_error", json!("context_length_exceeded"), N,
            "prompt is too long: 215000 tokens > 200000 maximum", None),
        w("case-401", 401, "authentication_error", json!("invalid_api_key"), N, "invalid x-api-key", None),
        w("case-403", 403, "permission_error", json!("permission_error"), N,
            "Your API key does not have permission to use the specified resource.", None),
        w("case-404", 404, "invalid_request_error", json!("model_not_found"), N, "model: claude-nope", None),
        w("case-429", 429, "rate_limit_error", json!("rate_limit_exceeded"), N,
            "This request would exceed the rate limit for your organization of 50 requests per minute.", Some("1")),
        w("case-quota", 429, "insufficient_quota", json!("insufficient_quota"), N,
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.", None),
        w("case-500", 502, "api_error", json!("api_error"), N, "Internal server error", None),
        w("case-503", 503, "api_error", json!("api_error"), N, "Service unavailable", None),
        w("case-529", 503, "service_unavailable_error", json!("server_is_overloaded"), N, "Overloaded", None),
    ]
}

/// Gemini, through the mapping table of `tollgate::translate::gemini`.
#[rustfmt::skip]
fn gemini_table() -> Vec<Want> {
    let exceeded = "You exceeded your current quota, please check your plan and billing details.";
    vec![
        w("case-400", 400, "invalid_request_error", json!("INVALID_ARGUMENT"), N,
            "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"", None),
        w("case-context-length", 400, "invalid_request_error", json!("context_length_exceeded"), N,
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).", None),
        w("case-401", 401, "authentication_error", json!("invalid_api_key"), N,
            "API key not valid. Please pass a valid API key.", None),
        w("case-403", 403, "permission_error", json!("PERMISSION_DENIED"), N,
            "Permission denied: Consumer 'api_key:x' has been suspended.", None),
        w("case-404", 404, "invalid_request_error", json!("model_not_found"), N,
            "models/gemini-nope is not found for API version v1beta, or is not supported for generateContent.", None),
        w("case-429", 429, "rate_limit_error", json!("rate_limit_exceeded"), N, exceeded, Some("1")),
        w("case-quota", 429, "insufficient_quota", json!("insufficient_quota"), N, exceeded, None),
        w("case-500", 502, "api_error", json!("INTERNAL"), N, "An internal error has occurred.", None),
        w("case-503", 503, "service_unavailable_error", json!("server_is_overloaded"), N,
            "The model is overloaded. Please try again later.", None),
        w("case-529", 503, "service_unavailable_error", json!("server_is_overloaded"), N,
            "The model is overloaded.", None),
    ]
}

/// The upstream status each fake answers a case with.
fn upstream_status(provider: &str, case: &str) -> u16 {
    match (provider, case) {
        ("anth", "case-quota") | ("gem", "case-401") => 400,
        (_, "case-quota") => 429,
        (_, c) => c
            .strip_prefix("case-")
            .and_then(|n| n.parse().ok())
            .unwrap_or(400),
    }
}

async fn run_table(gw: &Gateway, provider: &str, table: Vec<Want>) {
    assert_eq!(table.len(), 10, "every case of the acceptance table");
    for want in table {
        let model = format!("{provider}-{}", want.case);
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let res = common::chat(gw.addr, &body.to_string(), &[]).await;
        let ctx = format!("{provider} {}", want.case);
        assert_eq!(res.status.as_u16(), want.status, "{ctx}: status");
        let ra = res
            .headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        match (want.retry_after, want.status) {
            (Some(v), _) => assert_eq!(ra.as_deref(), Some(v), "{ctx}: Retry-After"),
            (None, 429 | 503) => assert!(ra.is_some(), "{ctx}: every 429 and 503 has Retry-After"),
            (None, _) => assert_eq!(ra, None, "{ctx}: no Retry-After"),
        }
        for leak in [
            "set-cookie",
            "openai-organization",
            "server",
            "x-ratelimit-remaining-requests",
        ] {
            assert!(res.headers.get(leak).is_none(), "{ctx}: {leak} leaked");
        }
        let upstream_id = res.headers.get("x-upstream-request-id").cloned();
        let v = res.json().await;
        let e = &v["error"];
        assert_eq!(e["type"], want.ty, "{ctx}: type in {v}");
        assert_eq!(e["code"], want.code, "{ctx}: code in {v}");
        assert_eq!(e["param"], want.param, "{ctx}: param in {v}");
        assert_eq!(e["message"], want.message, "{ctx}: message");
        assert_eq!(e["origin"], "upstream", "{ctx}");
        assert_eq!(e["provider"], provider, "{ctx}");
        assert_eq!(
            e["upstream_status"],
            upstream_status(provider, want.case),
            "{ctx}"
        );
        // the schema's four keys are always there (null allowed)
        for k in ["message", "type", "param", "code"] {
            assert!(e.get(k).is_some(), "{ctx}: {k} missing");
        }
        match provider {
            "oai" => assert_eq!(upstream_id.unwrap(), "req_openai_fake", "{ctx}"),
            "anth" => assert_eq!(upstream_id.unwrap(), "req_fake_error", "{ctx}"),
            _ => {}
        }
    }
}

async fn start() -> (Fake, Fake, Fake, Gateway) {
    let (o, a, g) = (
        fakes::openai().await,
        fakes::anthropic().await,
        fakes::gemini().await,
    );
    let gw = Gateway::start(&fakes::cases_config(&o, &a, &g)).await;
    (o, a, g, gw)
}

#[tokio::test]
async fn openai_compatible_errors_pass_through_exactly() {
    let (_o, _a, _g, gw) = start().await;
    run_table(&gw, "oai", openai_table()).await;
}

#[tokio::test]
async fn anthropic_errors_keep_their_meaning_on_the_openai_face() {
    let (_o, _a, _g, gw) = start().await;
    run_table(&gw, "anth", anthropic_table()).await;
}

#[tokio::test]
async fn gemini_errors_keep_their_meaning_on_the_openai_face() {
    let (_o, _a, _g, gw) = start().await;
    run_table(&gw, "gem", gemini_table()).await;
}

#[tokio::test]
async fn streaming_requests_get_the_same_errors_before_the_first_byte() {
    let (_o, _a, _g, gw) = start().await;
    for (provider, case, status, code) in [
        ("oai", "case-context-length", 400, "context_length_exceeded"),
        (
            "anth",
            "case-context-length",
            400,
            "context_length_exceeded",
        ),
        ("gem", "case-context-length", 400, "context_length_exceeded"),
        ("oai", "case-quota", 429, "insufficient_quota"),
        ("anth", "case-529", 503, "server_is_overloaded"),
    ] {
        let body = json!({"model": format!("{provider}-{case}"), "stream": true,
            "messages": [{"role": "user", "content": "hi"}]});
        let res = common::chat(gw.addr, &body.to_string(), &[]).await;
        assert_eq!(res.status.as_u16(), status, "{provider} {case}");
        let v = res.json().await;
        assert_eq!(v["error"]["code"], code, "{provider} {case}: {v}");
    }
}

/// One `/v1/messages` request; (status, retry-after, body).
async fn messages(gw: &Gateway, model: &str) -> (u16, Option<String>, Value) {
    let body = json!({"model": model, "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]});
    let res = send(
        gw.addr,
        "POST",
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        body.to_string(),
    )
    .await;
    let status = res.status.as_u16();
    let ra = res
        .headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, ra, res.json().await)
}

#[tokio::test]
async fn the_anthropic_face_keeps_the_same_meaning() {
    let (_o, _a, _g, gw) = start().await;
    // (model, status, Anthropic error type, message contains)
    let cases = [
        // an Anthropic upstream: its own status and type, as sent
        ("msg-anth-case-529", 529, "overloaded_error", "Overloaded"),
        (
            "msg-anth-case-quota",
            400,
            "invalid_request_error",
            "credit balance is too low",
        ),
        ("msg-anth-case-429", 429, "rate_limit_error", "rate limit"),
        (
            "msg-anth-case-500",
            500,
            "api_error",
            "Internal server error",
        ),
        (
            "msg-anth-case-context-length",
            400,
            "invalid_request_error",
            "prompt is too long",
        ),
        (
            "msg-anth-case-401",
            401,
            "authentication_error",
            "invalid x-api-key",
        ),
        // translated from an OpenAI-compatible or Gemini upstream: the same meaning
        (
            "msg-oai-case-quota",
            429,
            "billing_error",
            "exceeded your current quota",
        ),
        (
            "msg-oai-case-context-length",
            400,
            "invalid_request_error",
            "maximum context length",
        ),
        ("msg-oai-case-404", 404, "not_found_error", "does not exist"),
        (
            "msg-oai-case-429",
            429,
            "rate_limit_error",
            "Rate limit reached",
        ),
        ("msg-gem-case-503", 503, "api_error", "overloaded"),
        ("msg-gem-case-529", 529, "overloaded_error", "overloaded"),
        (
            "msg-gem-case-401",
            401,
            "authentication_error",
            "API key not valid",
        ),
    ];
    for (model, status, ty, msg) in cases {
        let (got, ra, v) = messages(&gw, model).await;
        assert_eq!(got, status, "{model}: {v}");
        assert_eq!(v["type"], "error", "{model}");
        assert_eq!(v["error"]["type"], ty, "{model}: {v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(msg), "{model}: {m}");
        if matches!(status, 429 | 503 | 529) {
            assert!(ra.is_some(), "{model}: Retry-After");
        }
        if model.ends_with("case-429") {
            assert_eq!(ra.as_deref(), Some("1"), "{model}: the upstream's wait");
        }
    }
}
