//! Issue 6, the Anthropic-style ingress (`POST /v1/messages`, `/v1/messages/count_tokens`) on
//! the reference gateway over real sockets: passed through to an Anthropic upstream, translated
//! both ways for an OpenAI-compatible one, streaming included; usage metered exactly; errors
//! Anthropic-shaped.

mod common;

use std::time::Duration;

use common::{Gateway, ScriptedUpstream, Streaming, send};
use serde_json::{Value, json};
use tollgate::usage::{Outcome, Usage, UsageSource};

fn config(anthropic: &ScriptedUpstream, openai: &ScriptedUpstream) -> String {
    format!(
        r#"
[auth]
enabled = false
[usage]
jsonl = ""
[providers.anth]
kind = "anthropic"
base_url = "http://{}"
api_key = "sk-ant-upstream-secret"
[providers.oai]
kind = "openai"
base_url = "{}"
api_key = "sk-oai-upstream-secret"
[models.claude]
targets = [{{ provider = "anth", model = "claude-up" }}]
[models.gpt]
targets = [{{ provider = "oai", model = "gpt-up" }}]
# separate targets, so one error's cool-down does not hide the next case
[models.claude-2]
targets = [{{ provider = "anth", model = "claude-up-2" }}]
[models.gpt-2]
targets = [{{ provider = "oai", model = "gpt-up-2" }}]
[models.gpt-then-claude]
targets = [{{ provider = "oai", model = "gpt-count" }}, {{ provider = "anth", model = "claude-count" }}]
# an Anthropic target first, an OpenAI-compatible one behind it
[models.mixed]
targets = [{{ provider = "anth", model = "claude-mixed" }}, {{ provider = "oai", model = "gpt-mixed" }}]
"#,
        anthropic.addr,
        openai.base_url()
    )
}

async fn start() -> (ScriptedUpstream, ScriptedUpstream, Gateway) {
    let anth = ScriptedUpstream::start().await;
    let oai = ScriptedUpstream::start().await;
    let gw = Gateway::start(&config(&anth, &oai)).await;
    (anth, oai, gw)
}

/// POST to `/v1/messages` in the background (the test answers the upstream meanwhile).
fn messages(
    gw: &Gateway,
    path: &'static str,
    body: String,
    headers: &'static [(&'static str, &'static str)],
) -> tokio::task::JoinHandle<Streaming> {
    let addr = gw.addr;
    tokio::spawn(async move { send(addr, "POST", path, headers, body).await })
}

const SDK_HEADERS: &[(&str, &str)] = &[
    ("authorization", "Bearer client-key-123"),
    ("anthropic-version", "2026-10-21"),
];
const LEGACY_HEADERS: &[(&str, &str)] = &[
    ("x-api-key", "client-key-123"),
    ("anthropic-version", "2023-06-01"),
];

fn assert_no_client_key(headers: &http::HeaderMap) {
    assert!(
        !headers
            .values()
            .any(|v| v.as_bytes().windows(14).any(|w| w == b"client-key-123")),
        "the client's credential must never reach the upstream"
    );
}

/// The `(event name, data JSON)` pairs of an Anthropic SSE body.
fn events(body: &[u8]) -> Vec<(String, Value)> {
    let s = std::str::from_utf8(body).unwrap();
    s.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = d.to_owned();
                }
            }
            (name, serde_json::from_str(&data).unwrap())
        })
        .collect()
}

fn names(evs: &[(String, Value)]) -> Vec<&str> {
    evs.iter().map(|(n, _)| n.as_str()).collect()
}

const ANTHROPIC_MESSAGE: &str = r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-up","content":[{"type":"text","text":"Hello there!"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":3,"cache_read_input_tokens":5,"output_tokens":7,"service_tier":"standard"}}"#;

fn anthropic_usage() -> Usage {
    // input 10 + cache read 5 + cache write 3
    Usage {
        prompt_tokens: 18,
        completion_tokens: 7,
        total_tokens: 25,
        cached_tokens: 5,
        cache_write_tokens: 3,
        reasoning_tokens: 0,
    }
}

#[tokio::test]
async fn pass_through_non_stream_replaces_only_the_model_and_meters_anthropic_usage() {
    let (mut anth, _oai, gw) = start().await;
    let req = r#"{"model":"claude","max_tokens":64, "system":"be brief","messages":[{"role":"user","content":"h\u00e9"}],"x_vendor":{"deep":[1, 2]}}"#;
    let client = messages(&gw, "/v1/messages", req.to_owned(), LEGACY_HEADERS);
    let ex = anth.next().await;
    assert_eq!(ex.path, "/v1/messages");
    assert_eq!(
        std::str::from_utf8(&ex.body).unwrap(),
        r#"{"model":"claude-up","max_tokens":64,"system":"be brief","messages":[{"role":"user","content":"h\u00e9"}],"x_vendor":{"deep":[1, 2]}}"#,
        "only the model is replaced, every other byte kept"
    );
    assert_eq!(ex.headers["x-api-key"], "sk-ant-upstream-secret");
    assert_eq!(ex.headers["anthropic-version"], "2023-06-01");
    assert_no_client_key(&ex.headers);
    ex.respond(
        200,
        &[
            ("content-type", "application/json"),
            ("request-id", "req_up_1"),
        ],
        ANTHROPIC_MESSAGE,
    );
    let res = client.await.unwrap();
    assert_eq!(res.status, 200);
    // Anthropic's SDKs read `request-id`: the gateway's own id; the upstream's is kept apart
    assert_eq!(res.headers["request-id"], res.headers["x-request-id"]);
    assert_eq!(res.headers["x-upstream-request-id"], "req_up_1");
    let body = res.rest().await;
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        ANTHROPIC_MESSAGE,
        "untouched"
    );
    let recs = gw.records(1).await;
    assert_eq!(recs[0].outcome, Outcome::Success);
    assert_eq!(recs[0].usage_source, UsageSource::Upstream);
    assert_eq!(recs[0].usage, anthropic_usage());
    assert_eq!(recs[0].model, "claude");
    assert_eq!(recs[0].provider.as_deref(), Some("anth"));
}

const A_START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_02\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-up\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":20,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n";
const A_BLOCK: &str = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
const A_PING: &str = "event: ping\ndata: {\"type\": \"ping\"}\n\n";
const A_DELTA1: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n";
const A_DELTA2: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n";
const A_STOP: &str =
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
const A_MDELTA1: &str = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null,\"stop_sequence\":null},\"usage\":{\"output_tokens\":9}}\n\n";
const A_MDELTA2: &str = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n";
const A_MSTOP: &str = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

#[tokio::test]
async fn pass_through_stream_is_forwarded_untouched_event_by_event_with_cumulative_usage() {
    let (mut anth, _oai, gw) = start().await;
    let req = r#"{"model":"claude","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let client = messages(&gw, "/v1/messages", req.to_owned(), SDK_HEADERS);
    let ex = anth.next().await;
    let sent = ex.json();
    assert_eq!(sent["model"], "claude-up");
    assert_eq!(sent["stream"], true);
    assert!(
        sent.get("stream_options").is_none(),
        "no OpenAI include_usage injection on an Anthropic stream"
    );
    assert_no_client_key(&ex.headers);
    let tx = ex.respond_stream();
    tx.send(A_START).await;
    let mut res = client.await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["content-type"], "text/event-stream");
    assert_eq!(res.headers["cache-control"], "no-cache");
    // each event reaches the client before the next one exists
    assert_eq!(res.next_data().await.unwrap(), A_START.as_bytes());
    let mut got = A_START.to_owned();
    for ev in [A_BLOCK, A_PING, A_DELTA1, A_DELTA2, A_STOP, A_MDELTA1] {
        tx.send(ev).await;
        let d = res.next_data().await.unwrap();
        assert_eq!(d, ev.as_bytes());
        got.push_str(ev);
    }
    tx.send(format!("{A_MDELTA2}{A_MSTOP}")).await;
    drop(tx);
    let rest = res.rest().await;
    got.push_str(std::str::from_utf8(&rest).unwrap());
    assert_eq!(
        got,
        [
            A_START, A_BLOCK, A_PING, A_DELTA1, A_DELTA2, A_STOP, A_MDELTA1, A_MDELTA2, A_MSTOP
        ]
        .concat(),
        "the Anthropic stream is forwarded byte for byte"
    );
    assert!(!got.contains("[DONE]"));
    let recs = gw.records(1).await;
    assert_eq!(recs[0].outcome, Outcome::Success);
    assert!(recs[0].stream);
    assert_eq!(recs[0].usage_source, UsageSource::Upstream);
    // message_start's input + cache read; the last (cumulative) message_delta's output
    assert_eq!(
        recs[0].usage,
        Usage {
            prompt_tokens: 120,
            completion_tokens: 15,
            total_tokens: 135,
            cached_tokens: 100,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
        }
    );
}

#[tokio::test]
async fn pass_through_stream_cut_after_commit_ends_with_an_anthropic_error_event() {
    let (mut anth, _oai, gw) = start().await;
    let req = r#"{"model":"claude","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let client = messages(&gw, "/v1/messages", req.to_owned(), SDK_HEADERS);
    let tx = anth.next().await.respond_stream();
    tx.send(format!("{A_START}{A_BLOCK}{A_DELTA1}")).await;
    let res = client.await.unwrap();
    assert_eq!(res.status, 200);
    drop(tx); // the upstream goes away mid-answer
    let evs = events(&res.rest().await);
    assert_eq!(
        names(&evs),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "error"
        ]
    );
    let (_, err) = evs.last().unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "api_error");
    let recs = gw.records(1).await;
    assert_eq!(recs[0].outcome, Outcome::StreamError);
    // the usage reported so far is the upstream's own (never a faked finish)
    assert_eq!(recs[0].usage.prompt_tokens, 120);
}

#[tokio::test]
async fn translated_non_stream_to_an_openai_target_and_back() {
    let (_anth, mut oai, gw) = start().await;
    let req = json!({"model": "gpt", "max_tokens": 50, "system": "be brief",
        "messages": [{"role": "user", "content": "weather in Paris?"}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]});
    let client = messages(&gw, "/v1/messages", req.to_string(), LEGACY_HEADERS);
    let ex = oai.next().await;
    assert_eq!(ex.path, "/v1/chat/completions");
    assert_eq!(ex.headers["authorization"], "Bearer sk-oai-upstream-secret");
    assert_no_client_key(&ex.headers);
    let sent = ex.json();
    assert_eq!(sent["model"], "gpt-up");
    assert_eq!(sent["max_tokens"], 50);
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather in Paris?"}])
    );
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    ex.respond(
        200,
        &[("content-type", "application/json")],
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-up",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Checking.",
                "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35,
                "prompt_tokens_details": {"cached_tokens": 10},
                "completion_tokens_details": {"reasoning_tokens": 2}}})
        .to_string(),
    );
    let res = client.await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["content-type"], "application/json");
    let m = res.json().await;
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["stop_reason"], "tool_use");
    assert_eq!(
        m["content"][0],
        json!({"type": "text", "text": "Checking."})
    );
    assert_eq!(
        m["content"][1],
        json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}})
    );
    assert_eq!(m["usage"]["input_tokens"], 20);
    assert_eq!(m["usage"]["cache_read_input_tokens"], 10);
    assert_eq!(m["usage"]["output_tokens"], 5);
    assert_eq!(m["usage"]["output_tokens_details"]["thinking_tokens"], 2);
    let recs = gw.records(1).await;
    assert_eq!(recs[0].outcome, Outcome::Success);
    assert_eq!(recs[0].usage_source, UsageSource::Upstream);
    assert_eq!(
        recs[0].usage,
        Usage {
            prompt_tokens: 30,
            completion_tokens: 5,
            total_tokens: 35,
            cached_tokens: 10,
            cache_write_tokens: 0,
            reasoning_tokens: 2,
        }
    );
    assert_eq!(recs[0].provider.as_deref(), Some("oai"));
}

#[tokio::test]
async fn fallback_from_a_pass_through_target_to_a_translated_one_mid_request() {
    let (mut anth, mut oai, gw) = start().await;
    let req = r#"{"model":"mixed","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let client = messages(&gw, "/v1/messages", req.to_owned(), SDK_HEADERS);
    // attempt 1: the Anthropic target is overloaded (before the commit point)
    let ex = anth.next().await;
    assert_eq!(ex.json()["model"], "claude-mixed");
    ex.respond(
        529,
        &[("content-type", "application/json")],
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    );
    // attempt 2: the same Anthropic request, translated for the OpenAI-compatible target
    let ex = oai.next().await;
    assert_eq!(ex.path, "/v1/chat/completions");
    assert_eq!(ex.json()["model"], "gpt-mixed");
    assert_eq!(ex.json()["stream_options"]["include_usage"], true);
    let tx = ex.respond_stream();
    for c in [O_ROLE, O_HEL, O_LO] {
        tx.send(c).await;
    }
    tx.send(O_FINISH.replace("tool_calls", "stop")).await;
    tx.send(format!("{O_USAGE}{O_DONE}")).await;
    drop(tx);
    let res = client.await.unwrap();
    assert_eq!(res.status, 200);
    let attempts = res.headers["x-tollgate-attempts"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(attempts.split(';').count(), 2, "{attempts}");
    let evs = events(&res.rest().await);
    assert_eq!(evs.first().unwrap().0, "message_start");
    assert_eq!(evs.last().unwrap().0, "message_stop");
    let text: String = evs
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello");
    let recs = gw.records(1).await;
    assert_eq!(recs[0].outcome, Outcome::Success);
    assert_eq!(recs[0].attempts, 2);
    assert_eq!(recs[0].provider.as_deref(), Some("oai"));
    assert_eq!(recs[0].usage.prompt_tokens, 21);
    assert_eq!(recs[0].usage.completion_tokens, 9);
}

const O_ROLE: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-up\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n";
const O_HEL: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}],\"usage\":null}\n\n";
const O_LO: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}],\"usage\":null}\n\n";
const O_TOOL1: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_9\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n";
const O_TOOL2: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"location\\\":\\\"Paris\\\"}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n";
const O_FINISH: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-up\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n";
const O_USAGE: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-up\",\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":9,\"total_tokens\":30,\"prompt_tokens_details\":{\"cached_tokens\":5}}}\n\n";
const O_DONE: &str = "data: [DONE]\n\n";

#[tokio::test]
async fn translated_stream_from_an_openai_target_is_an_anthropic_event_stream() {
    let (_anth, mut oai, gw) = start().await;
    let req = r#"{"model":"gpt","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let client = messages(&gw, "/v1/messages", req.to_owned(), SDK_HEADERS);
    let ex = oai.next().await;
    let sent = ex.json();
    assert_eq!(sent["stream"], true);
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the usage is asked for, to report it in message_delta"
    );
    let tx = ex.respond_stream();
    tx.send(O_ROLE).await;
    let mut res = client.await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["content-type"], "text/event-stream");
    let first = events(&res.next_data().await.unwrap());
    assert_eq!(names(&first), ["message_start"]);
    assert_eq!(first[0].1["message"]["role"], "assistant");
    // one upstream chunk in, its translation out, before the next chunk exists
    tx.send(O_HEL).await;
    let evs = events(&res.next_data().await.unwrap());
    assert_eq!(names(&evs), ["content_block_start", "content_block_delta"]);
    assert_eq!(evs[1].1["delta"]["text"], "Hel");
    for c in [O_LO, O_TOOL1, O_TOOL2, O_FINISH, O_USAGE, O_DONE] {
        tx.send(c).await;
    }
    drop(tx);
    let evs = events(&res.rest().await);
    assert_eq!(
        names(&evs),
        [
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(evs[2].1["content_block"]["type"], "tool_use");
    assert_eq!(evs[2].1["content_block"]["id"], "call_9");
    assert_eq!(evs[2].1["index"], 1);
    assert_eq!(
        evs[3].1["delta"],
        json!({"type": "input_json_delta", "partial_json": "{\"location\":\"Paris\"}"})
    );
    let md = &evs[5].1;
    assert_eq!(md["delta"]["stop_reason"], "tool_use");
    assert_eq!(md["usage"]["input_tokens"], 16);
    assert_eq!(md["usage"]["cache_read_input_tokens"], 5);
    assert_eq!(md["usage"]["output_tokens"], 9);
    let recs = gw.records(1).await;
    assert_eq!(recs[0].outcome, Outcome::Success);
    assert_eq!(recs[0].usage_source, UsageSource::Upstream);
    assert_eq!(
        recs[0].usage,
        Usage {
            prompt_tokens: 21,
            completion_tokens: 9,
            total_tokens: 30,
            cached_tokens: 5,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
        }
    );
}

async fn anthropic_error(res: Streaming) -> (u16, http::HeaderMap, Value) {
    let status = res.status.as_u16();
    let headers = res.headers.clone();
    (status, headers, res.json().await)
}

#[tokio::test]
async fn errors_are_anthropic_shaped_with_their_status() {
    let (mut anth, mut oai, gw) = start().await;
    let req = |model: &str| {
        json!({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
    };

    // Anthropic upstream 429: stays 429, retry-after kept
    let client = messages(&gw, "/v1/messages", req("claude"), SDK_HEADERS);
    anth.next().await.respond(
        429,
        &[("retry-after", "7"), ("content-type", "application/json")],
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#,
    );
    let (status, h, body) = anthropic_error(client.await.unwrap()).await;
    assert_eq!(status, 429);
    assert_eq!(h["retry-after"], "7");
    assert_eq!(h["request-id"], h["x-request-id"]);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(
        body["error"]["message"],
        "Number of requests has exceeded your rate limit"
    );

    // Anthropic upstream 529: Anthropic's own 529 overloaded_error (the SDK's OverloadedError)
    let client = messages(&gw, "/v1/messages", req("claude-2"), LEGACY_HEADERS);
    anth.next().await.respond(
        529,
        &[("content-type", "application/json")],
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    );
    let (status, _, body) = anthropic_error(client.await.unwrap()).await;
    assert_eq!(status, 529);
    assert_eq!(body["error"]["type"], "overloaded_error");

    // OpenAI target 429 and 503, translated
    let client = messages(&gw, "/v1/messages", req("gpt"), SDK_HEADERS);
    oai.next().await.respond(
        429,
        &[("retry-after", "3"), ("content-type", "application/json")],
        r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
    );
    let (status, h, body) = anthropic_error(client.await.unwrap()).await;
    assert_eq!(status, 429);
    assert_eq!(h["retry-after"], "3");
    assert_eq!(
        body,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
    );
    let client = messages(&gw, "/v1/messages", req("gpt-2"), SDK_HEADERS);
    oai.next().await.respond(
        500,
        &[("content-type", "application/json")],
        r#"{"error":{"message":"boom","type":"server_error"}}"#,
    );
    let (status, _, body) = anthropic_error(client.await.unwrap()).await;
    assert_eq!(status, 500);
    assert_eq!(body["error"]["type"], "api_error");

    // the gateway's own refusals: no upstream call
    let res = send(
        gw.addr,
        "POST",
        "/v1/messages",
        SDK_HEADERS,
        r#"{"model":"claude","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let (status, _, body) = anthropic_error(res).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
    let res = send(gw.addr, "POST", "/v1/messages", SDK_HEADERS, req("nope")).await;
    let (status, _, body) = anthropic_error(res).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["type"], "not_found_error");
    anth.assert_idle(Duration::from_millis(100)).await;
    oai.assert_idle(Duration::from_millis(10)).await;

    // the OpenAI face keeps its own shape
    let res = common::chat(
        gw.addr,
        r#"{"model":"nope","messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    )
    .await;
    assert_eq!(res.status, 404);
    assert!(res.json().await["error"]["message"].is_string());
}

#[tokio::test]
async fn count_tokens_passes_through_to_anthropic_and_costs_nothing() {
    let (mut anth, _oai, gw) = start().await;
    let req = r#"{"model":"claude","messages":[{"role":"user","content":"hi"}]}"#;
    let client = messages(
        &gw,
        "/v1/messages/count_tokens",
        req.to_owned(),
        LEGACY_HEADERS,
    );
    let ex = anth.next().await;
    assert_eq!(ex.path, "/v1/messages/count_tokens");
    assert_eq!(ex.json()["model"], "claude-up");
    assert_no_client_key(&ex.headers);
    ex.respond(
        200,
        &[("content-type", "application/json")],
        r#"{"input_tokens":42}"#,
    );
    let res = client.await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.json().await, json!({"input_tokens": 42}));
    let recs = gw.records(1).await;
    assert_eq!(recs[0].outcome, Outcome::Success);
    assert_eq!(recs[0].usage, Usage::default(), "counting tokens is free");

    // an OpenAI-compatible target cannot count: Route skips it; with none left, a clear 400
    // naming the need, no upstream call
    let res = send(
        gw.addr,
        "POST",
        "/v1/messages/count_tokens",
        SDK_HEADERS,
        r#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let (status, _, body) = anthropic_error(res).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("count_tokens")
    );

    // a model with an OpenAI-compatible target first: counted by its Anthropic target
    let client = messages(
        &gw,
        "/v1/messages/count_tokens",
        r#"{"model":"gpt-then-claude","messages":[{"role":"user","content":"hi"}]}"#.to_owned(),
        SDK_HEADERS,
    );
    let ex = anth.next().await;
    assert_eq!(ex.json()["model"], "claude-count");
    ex.respond(
        200,
        &[("content-type", "application/json")],
        r#"{"input_tokens":5}"#,
    );
    let res = client.await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.json().await["input_tokens"], 5);
}

#[tokio::test]
async fn virtual_keys_in_either_header_and_anthropic_shaped_refusals() {
    let mut anth = ScriptedUpstream::start().await;
    let oai = ScriptedUpstream::start().await;
    let cfg = config(&anth, &oai).replace(
        "[auth]\nenabled = false\n",
        &format!(
            "[auth]\nenabled = true\n[[auth.keys]]\nname = \"team\"\nsha256 = \"{}\"\nmodels = [\"claude\"]\nrpm = 2\n",
            tollgate::auth::hash_key("client-key-123")
        ),
    );
    let gw = Gateway::start(&cfg).await;
    let req = r#"{"model":"claude","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;

    // `x-api-key` (anthropic 0.x) and `Authorization: Bearer` (anthropic 2.x) both admit
    for headers in [LEGACY_HEADERS, SDK_HEADERS] {
        let client = messages(&gw, "/v1/messages", req.to_owned(), headers);
        let ex = anth.next().await;
        assert_no_client_key(&ex.headers);
        assert_eq!(ex.headers["x-api-key"], "sk-ant-upstream-secret");
        ex.respond(
            200,
            &[("content-type", "application/json")],
            ANTHROPIC_MESSAGE,
        );
        let res = client.await.unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.json().await["type"], "message");
    }
    let recs = gw.records(2).await;
    assert!(recs.iter().all(|r| r.key_id.is_some()));

    // the key's rpm (2) is spent: a 429 rate_limit_error with retry-after, no upstream call
    let res = send(gw.addr, "POST", "/v1/messages", SDK_HEADERS, req).await;
    let (status, h, body) = anthropic_error(res).await;
    assert_eq!(status, 429);
    assert!(h.contains_key("retry-after"));
    assert_eq!(body["error"]["type"], "rate_limit_error");

    // no key, a wrong key: 401 authentication_error; a model the key may not use: 403
    let bad: &[(&str, &str)] = &[("x-api-key", "nope"), ("anthropic-version", "2023-06-01")];
    for headers in [&[][..], bad] {
        let res = send(gw.addr, "POST", "/v1/messages", headers, req).await;
        let (status, _, body) = anthropic_error(res).await;
        assert_eq!(status, 401);
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");
    }
    let res = send(
        gw.addr,
        "POST",
        "/v1/messages",
        SDK_HEADERS,
        req.replace("claude", "gpt"),
    )
    .await;
    let (status, _, body) = anthropic_error(res).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["type"], "permission_error");
    anth.assert_idle(Duration::from_millis(50)).await;
}
