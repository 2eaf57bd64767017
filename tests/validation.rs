//! Issue 14, acceptance 2: request validation before any upstream call, over real sockets on
//! the reference gateway. A table of malformed chat, embeddings and Anthropic-ingress bodies:
//! each is a 400 `invalid_request_error` naming the field, and no upstream sees a request
//! (counted on the Anthropic fake of tests/fakes, and on the scripted OpenAI upstream, which
//! must stay idle). Unknown fields still reach the upstream byte for byte; a body nested
//! 100,000 levels deep is a 400 and is not forwarded; known paths answer 405 with `Allow`.

mod common;
mod fakes;

use std::time::Duration;

use common::{Gateway, ScriptedUpstream, send};
use serde_json::Value;

fn config(openai: &ScriptedUpstream, anthropic: &fakes::Fake) -> String {
    format!(
        r#"
[auth]
enabled = false
[usage]
jsonl = ""
[providers.oai]
kind = "openai"
base_url = "{}"
api_key = "sk-oai-upstream-secret"
[providers.anth]
kind = "anthropic"
base_url = "{}"
api_key = "{}"
[models.gpt]
targets = [{{ provider = "oai", model = "gpt-up" }}]
[models.emb]
targets = [{{ provider = "oai", model = "emb-up" }}]
[models.claude]
targets = [{{ provider = "anth", model = "ok" }}]
"#,
        openai.base_url(),
        anthropic.base_url(),
        fakes::ANTHROPIC_KEY,
    )
}

/// A chat body: a valid request with `extra` members appended (a later duplicate wins for
/// Parse, and every duplicate is checked).
fn chat_body(extra: &str) -> String {
    format!(r#"{{"model":"gpt","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#)
}

fn chat_messages(messages: &str) -> String {
    format!(r#"{{"model":"gpt","messages":{messages}}}"#)
}

/// Malformed chat bodies and the `param` each 400 must name.
fn chat_cases() -> Vec<(String, &'static str)> {
    let m = chat_messages;
    let c = chat_body;
    vec![
        (
            m(r#"[{"role":"wizard","content":"x"}]"#),
            "messages[0].role",
        ),
        (
            m(
                r#"[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":5,"content":"x"}]"#,
            ),
            "messages[2].role",
        ),
        (m(r#"[{"content":"x"}]"#), "messages[0].role"),
        (m(r#"["just text"]"#), "messages[0]"),
        (m(r#"[{"role":"user"}]"#), "messages[0].content"),
        (m(r#"[{"role":"user","content":7}]"#), "messages[0].content"),
        (
            m(r#"[{"role":"user","content":[{"type":"nope","text":"x"}]}]"#),
            "messages[0].content[0].type",
        ),
        (
            m(r#"[{"role":"user","content":[{"type":"text","text":"a"},{"text":"x"}]}]"#),
            "messages[0].content[1].type",
        ),
        (
            m(r#"[{"role":"user","content":[{"type":"text","text":{"a":1}}]}]"#),
            "messages[0].content[0].text",
        ),
        (
            m(r#"[{"role":"user","content":[{"type":"image_url","image_url":"u"}]}]"#),
            "messages[0].content[0].image_url",
        ),
        (
            m(r#"[{"role":"tool","content":"42"}]"#),
            "messages[0].tool_call_id",
        ),
        (c(r#","n":0"#), "n"),
        (c(r#","n":1.5"#), "n"),
        (c(r#","n":129"#), "n"),
        (c(r#","temperature":"hot""#), "temperature"),
        (c(r#","temperature":2.5"#), "temperature"),
        (c(r#","top_p":1.01"#), "top_p"),
        (c(r#","presence_penalty":-3"#), "presence_penalty"),
        (c(r#","frequency_penalty":"x""#), "frequency_penalty"),
        (c(r#","max_tokens":0"#), "max_tokens"),
        (c(r#","max_completion_tokens":-5"#), "max_completion_tokens"),
        (c(r#","tools":"x""#), "tools"),
        (c(r#","tools":[{"type":"retrieval"}]"#), "tools[0].type"),
        (c(r#","tools":[{"type":"function"}]"#), "tools[0].function"),
        (
            c(r#","tools":[{"type":"function","function":{"description":"d"}}]"#),
            "tools[0].function.name",
        ),
        (c(r#","tool_choice":"sometimes""#), "tool_choice"),
        (c(r#","tool_choice":7"#), "tool_choice"),
        (c(r#","stop":["a","b","c","d","e"]"#), "stop"),
        (c(r#","stop":5"#), "stop"),
        (c(r#","seed":"s""#), "seed"),
        (c(r#","logit_bias":[1]"#), "logit_bias"),
        (
            c(r#","response_format":{"type":"yaml"}"#),
            "response_format.type",
        ),
        (
            c(r#","response_format":{"type":"json_schema"}"#),
            "response_format.json_schema",
        ),
        (c(r#","stream":"yes""#), "stream"),
        (c(r#","stream_options":true"#), "stream_options"),
        (c(r#","logprobs":1"#), "logprobs"),
        (
            format!(r#"{{"model":"{}","messages":[]}}"#, "m".repeat(1 << 20)),
            "model",
        ),
    ]
}

fn embeddings_cases() -> Vec<(String, &'static str)> {
    let e = |extra: &str| format!(r#"{{"model":"emb","input":"hello"{extra}}}"#);
    let i = |input: &str| format!(r#"{{"model":"emb","input":{input}}}"#);
    vec![
        (e(r#","encoding_format":"hex""#), "encoding_format"),
        (e(r#","dimensions":0"#), "dimensions"),
        (e(r#","dimensions":"big""#), "dimensions"),
        (i("[]"), "input"),
        (i(r#""""#), "input"),
        (i("5"), "input"),
        (i(r#"{"text":"a"}"#), "input"),
        (i(r#"["a",2]"#), "input[1]"),
        (i("[1,-2]"), "input[1]"),
        (i("[[1,2],[]]"), "input[1]"),
        (i(r#"[[1,"x"]]"#), "input[0]"),
        (i("[true]"), "input[0]"),
    ]
}

fn anthropic_cases() -> Vec<(String, &'static str)> {
    let a = |extra: &str| {
        format!(
            r#"{{"model":"claude","max_tokens":16,"messages":[{{"role":"user","content":"hi"}}]{extra}}}"#
        )
    };
    let m =
        |messages: &str| format!(r#"{{"model":"claude","max_tokens":16,"messages":{messages}}}"#);
    vec![
        (
            r#"{"model":"claude","messages":[{"role":"user","content":"hi"}]}"#.to_owned(),
            "max_tokens",
        ),
        (a(r#","max_tokens":-1"#), "max_tokens"),
        (a(r#","max_tokens":"16""#), "max_tokens"),
        (m(r#"[{"role":"tool","content":"x"}]"#), "messages[0].role"),
        (m(r#"[{"role":"user","content":5}]"#), "messages[0].content"),
        (m(r#"[{"role":"user"}]"#), "messages[0].content"),
        (
            m(r#"[{"role":"user","content":[{"type":"nope"}]}]"#),
            "messages[0].content[0].type",
        ),
        (
            m(r#"[{"role":"user","content":[{"type":"text"}]}]"#),
            "messages[0].content[0].text",
        ),
        (a(r#","system":5"#), "system"),
        (a(r#","system":[{"type":"image"}]"#), "system[0].type"),
        (a(r#","temperature":1.5"#), "temperature"),
        (a(r#","top_p":-0.1"#), "top_p"),
        (a(r#","top_k":"k""#), "top_k"),
        (a(r#","stop_sequences":"END""#), "stop_sequences"),
        (a(r#","stop_sequences":[1]"#), "stop_sequences"),
        (a(r#","tools":{}"#), "tools"),
        (a(r#","tools":[{"input_schema":{}}]"#), "tools[0].name"),
        (a(r#","tools":[{"name":"t"}]"#), "tools[0].input_schema"),
        (
            a(r#","tools":[{"name":"t","input_schema":"s"}]"#),
            "tools[0].input_schema",
        ),
        (a(r#","tool_choice":{"type":"maybe"}"#), "tool_choice.type"),
        (a(r#","tool_choice":{"type":"tool"}"#), "tool_choice.name"),
        (a(r#","stream":1"#), "stream"),
    ]
}

/// POST `body` to `path`; returns the status and the JSON answer.
async fn post(gw: &Gateway, path: &str, body: String) -> (u16, Value) {
    let res = send(gw.addr, "POST", path, &[], body).await;
    let status = res.status.as_u16();
    (status, res.json().await)
}

/// Every case is a 400 naming `param` (in the OpenAI face's `param`, or at the start of the
/// Anthropic face's message), with a short message.
async fn refuse_all(gw: &Gateway, path: &str, cases: Vec<(String, &'static str)>) {
    for (body, param) in cases {
        let (status, v) = post(gw, path, body.clone()).await;
        let shown = &body[..body.len().min(200)];
        assert_eq!(status, 400, "{shown}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        if path == "/v1/messages" {
            assert_eq!(v["type"], "error", "{shown}: {v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{shown}: {v}");
            assert!(
                message.starts_with(&format!("{param}:"))
                    || message.contains(&format!("'{param}'")),
                "{shown}: the message names {param}: {v}"
            );
        } else {
            assert_eq!(v["error"]["type"], "invalid_request_error", "{shown}: {v}");
            assert_eq!(v["error"]["param"], param, "{shown}: {v}");
        }
        assert!(
            message.len() < 400,
            "{shown}: the message echoes too much: {v}"
        );
    }
}

#[tokio::test]
async fn malformed_requests_are_400_naming_the_field_and_never_reach_an_upstream() {
    let mut openai = ScriptedUpstream::start().await;
    let anthropic = fakes::anthropic().await;
    let gw = Gateway::start(&config(&openai, &anthropic)).await;

    let (chat, emb, anth) = (chat_cases(), embeddings_cases(), anthropic_cases());
    let total = chat.len() + emb.len() + anth.len();
    refuse_all(&gw, "/v1/chat/completions", chat).await;
    refuse_all(&gw, "/v1/embeddings", emb).await;
    refuse_all(&gw, "/v1/messages", anth).await;

    // The same malformed chat request with a model that routes to Anthropic (translated) is
    // refused the same way: the answer does not depend on the route.
    let (status, v) = post(
        &gw,
        "/v1/chat/completions",
        r#"{"model":"claude","messages":[{"role":"wizard","content":"x"}]}"#.to_owned(),
    )
    .await;
    assert_eq!(
        (status, &v["error"]["param"]),
        (400, &Value::from("messages[0].role"))
    );

    // No upstream call for any of them.
    openai.assert_idle(Duration::from_millis(300)).await;
    assert_eq!(anthropic.seen.lock().unwrap().len(), 0);
    assert!(total > 60, "{total} cases");
}

#[tokio::test]
async fn a_long_value_is_echoed_as_a_short_prefix_only() {
    let mut openai = ScriptedUpstream::start().await;
    let anthropic = fakes::anthropic().await;
    let gw = Gateway::start(&config(&openai, &anthropic)).await;
    let role = "w".repeat(100_000);
    let (status, v) = post(
        &gw,
        "/v1/chat/completions",
        chat_messages(&format!(r#"[{{"role":"{role}","content":"x"}}]"#)),
    )
    .await;
    assert_eq!(status, 400);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(&"w".repeat(64)), "{message}");
    assert!(!message.contains(&"w".repeat(65)), "{message}");
    let (status, v) = post(
        &gw,
        "/v1/chat/completions",
        format!(
            r#"{{"model":"{}","messages":[{{"role":"user","content":"x"}}]}}"#,
            "m".repeat(1 << 20)
        ),
    )
    .await;
    assert_eq!((status, &v["error"]["param"]), (400, &Value::from("model")));
    assert!(v.to_string().len() < 1_000, "{v}");
    openai.assert_idle(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn deep_json_in_an_unread_field_is_400_and_not_forwarded() {
    let mut openai = ScriptedUpstream::start().await;
    let anthropic = fakes::anthropic().await;
    let gw = Gateway::start(&config(&openai, &anthropic)).await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for (path, body) in [
        (
            "/v1/chat/completions",
            chat_body(&format!(r#","x_unread":{deep}"#)),
        ),
        (
            "/v1/messages",
            format!(
                r#"{{"model":"claude","max_tokens":8,"messages":[{{"role":"user","content":"hi"}}],"x":{deep}}}"#
            ),
        ),
        (
            "/v1/embeddings",
            format!(r#"{{"model":"emb","input":"a","x":{deep}}}"#),
        ),
    ] {
        let (status, v) = post(&gw, path, body).await;
        assert_eq!(status, 400, "{path}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("deeper than 64"), "{path}: {message}");
    }
    // 63 levels inside the body (64 with the body itself) are fine, and forwarded.
    let ok = format!("{}{}", "[".repeat(63), "]".repeat(63));
    let res = tokio::spawn({
        let addr = gw.addr;
        let body = chat_body(&format!(r#","x_unread":{ok}"#));
        async move {
            send(addr, "POST", "/v1/chat/completions", &[], body)
                .await
                .status
        }
    });
    let ex = openai.next().await;
    assert!(ex.body.windows(ok.len()).any(|w| w == ok.as_bytes()));
    ex.respond(200, &[("content-type", "application/json")], CHAT_ANSWER);
    assert_eq!(res.await.unwrap(), 200);
    openai.assert_idle(Duration::from_millis(100)).await;
    assert_eq!(anthropic.seen.lock().unwrap().len(), 0);
}

const CHAT_ANSWER: &str = r#"{"id":"c1","object":"chat.completion","created":1,"model":"gpt-up","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

#[tokio::test]
async fn unknown_fields_still_reach_the_upstream_byte_for_byte() {
    let mut openai = ScriptedUpstream::start().await;
    let anthropic = fakes::anthropic().await;
    let gw = Gateway::start(&config(&openai, &anthropic)).await;

    // Chat: unknown top-level fields, unknown members of known objects, a content part and a
    // role the gateway knows, all exactly as sent.
    let unknown = r#""x_future":{"a":[1, 2.50,"\u00e9"],"b":null}"#;
    let body = format!(
        r#"{{"model":"gpt","messages":[{{"role":"developer","content":"be brief","x_m":1}},{{"role":"user","content":[{{"type":"text","text":"hi","x_p":true}}]}}],"temperature":0.5,"n":2,"tools":[{{"type":"function","function":{{"name":"f","strict":true}}}}],{unknown}}}"#
    );
    let res = tokio::spawn({
        let addr = gw.addr;
        let body = body.clone();
        async move {
            send(addr, "POST", "/v1/chat/completions", &[], body)
                .await
                .status
        }
    });
    let ex = openai.next().await;
    let sent = String::from_utf8(ex.body.to_vec()).unwrap();
    assert!(sent.contains(unknown), "{sent}");
    assert!(
        sent.contains(r#"{"role":"developer","content":"be brief","x_m":1}"#),
        "{sent}"
    );
    assert!(sent.contains(r#""x_p":true"#), "{sent}");
    ex.respond(200, &[("content-type", "application/json")], CHAT_ANSWER);
    assert_eq!(res.await.unwrap(), 200);

    // Embeddings: token-id input and an unknown field.
    let res = tokio::spawn({
        let addr = gw.addr;
        async move {
            let body =
                r#"{"model":"emb","input":[[1,2],[3]],"encoding_format":"base64","x_e":[ 1 ]}"#;
            send(addr, "POST", "/v1/embeddings", &[], body).await.status
        }
    });
    let ex = openai.next().await;
    let needle = br#""x_e":[ 1 ]"#;
    assert!(
        ex.body.windows(needle.len()).any(|w| w == needle),
        "{:?}",
        ex.body
    );
    ex.respond(
        200,
        &[("content-type", "application/json")],
        r#"{"object":"list","data":[],"model":"emb-up","usage":{"prompt_tokens":3,"total_tokens":3}}"#,
    );
    assert_eq!(res.await.unwrap(), 200);

    // Anthropic ingress to an Anthropic target: passed through, unknown field included.
    let unknown = r#""x_future":{"deep":[1,{"k":"v"}]}"#;
    let body = format!(
        r#"{{"model":"claude","max_tokens":0,"system":[{{"type":"text","text":"s"}}],"messages":[{{"role":"user","content":[{{"type":"text","text":"hi"}}]}}],"tools":[{{"name":"t","input_schema":{{"type":"object"}}}},{{"type":"web_search_20250305","name":"web_search"}}],"top_k":5,{unknown}}}"#
    );
    let (status, v) = post(&gw, "/v1/messages", body).await;
    assert!(status == 200 || status == 400, "{v}");
    let seen = anthropic.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let sent = String::from_utf8(seen[0].body.to_vec()).unwrap();
    assert!(sent.contains(unknown), "{sent}");
}

#[tokio::test]
async fn known_paths_answer_405_with_allow() {
    let openai = ScriptedUpstream::start().await;
    let anthropic = fakes::anthropic().await;
    let gw = Gateway::start(&config(&openai, &anthropic)).await;
    for (method, path, allow) in [
        ("PUT", "/v1/models/gpt", "GET"),
        ("DELETE", "/v1/models/gpt", "GET"),
        ("POST", "/v1/models", "GET"),
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/embeddings", "POST"),
        ("GET", "/v1/messages", "POST"),
    ] {
        let res = send(gw.addr, method, path, &[], "").await;
        assert_eq!(res.status, 405, "{method} {path}");
        assert_eq!(res.headers["allow"], allow, "{method} {path}");
    }
    assert_eq!(anthropic.seen.lock().unwrap().len(), 0);
}
