//! Issue 2, acceptance 1: the OpenAI-compatible path end to end over real sockets, with a
//! scripted upstream the test drives event by event.

mod common;

use std::time::Duration;

use common::{Gateway, ScriptedUpstream, chat, send};
use tollgate::usage::{Outcome, Usage, UsageSource};

fn config(upstream: &ScriptedUpstream, extra: &str) -> String {
    format!(
        r#"
[auth]
enabled = false
[usage]
jsonl = ""
[providers.up]
kind = "openai"
base_url = "{}"
api_key = "sk-upstream-secret"
{extra}
[models.m]
targets = [{{ provider = "up", model = "up-model" }}]
"#,
        upstream.base_url()
    )
}

const CHUNK1: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up-model\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}],\"usage\":null}\n\n";
const CHUNK2: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}],\"usage\":null}\n\n";
const CHUNK3: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up-model\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n";
const USAGE_CHUNK: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":9,\"total_tokens\":30,\"prompt_tokens_details\":{\"cached_tokens\":5},\"completion_tokens_details\":{\"reasoning_tokens\":3}}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

fn exact_usage() -> Usage {
    Usage {
        prompt_tokens: 21,
        completion_tokens: 9,
        total_tokens: 30,
        cached_tokens: 5,
        cache_write_tokens: 0,
        reasoning_tokens: 3,
    }
}

#[tokio::test]
async fn non_streaming_passes_through_byte_exact() {
    let mut up = ScriptedUpstream::start().await;
    let gw = Gateway::start(&config(&up, "")).await;
    let req = r#"{"model":"m","messages":[{"role":"user","content":"h\u00e9"}],  "temperature":0.5,"x_vendor":{"deep":[1, 2 ,3]}}"#;
    let client = tokio::spawn({
        let addr = gw.addr;
        async move {
            chat(
                addr,
                req,
                &[
                    ("authorization", "Bearer client-key-123"),
                    ("x-request-id", "req-77"),
                ],
            )
            .await
        }
    });
    let ex = up.next().await;
    assert_eq!(ex.path, "/v1/chat/completions");
    // model rewritten, every other field byte-for-byte
    assert_eq!(
        std::str::from_utf8(&ex.body).unwrap(),
        r#"{"model":"up-model","messages":[{"role":"user","content":"h\u00e9"}],"temperature":0.5,"x_vendor":{"deep":[1, 2 ,3]}}"#
    );
    assert_eq!(ex.headers["authorization"], "Bearer sk-upstream-secret");
    assert!(
        !ex.headers
            .values()
            .any(|v| v.as_bytes().windows(14).any(|w| w == b"client-key-123")),
        "the client's credential must never reach the upstream"
    );
    let answer = "{\"id\":\"x\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"up-model\",\n \"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":9,\"total_tokens\":30,\"prompt_tokens_details\":{\"cached_tokens\":5},\"completion_tokens_details\":{\"reasoning_tokens\":3}},\"vendor_extra\":[1]}";
    ex.respond(200, &[("content-type", "application/json")], answer);
    let res = client.await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(&res.rest().await[..], answer.as_bytes());
    let recs = gw.records(1).await;
    assert_eq!(recs[0].outcome, Outcome::Success);
    assert_eq!(recs[0].usage, exact_usage());
    assert_eq!(recs[0].usage_source, UsageSource::Upstream);
    assert_eq!(recs[0].request_id.as_deref(), Some("req-77"));
    assert_eq!(recs[0].upstream_model.as_deref(), Some("up-model"));
}

#[tokio::test]
async fn streaming_is_never_buffered_and_usage_is_injected_then_stripped() {
    let mut up = ScriptedUpstream::start().await;
    let gw = Gateway::start(&config(&up, "")).await;
    let req = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let client = tokio::spawn({
        let addr = gw.addr;
        async move { chat(addr, req, &[]).await }
    });
    let ex = up.next().await;
    // the gateway asked for the usage chunk although the client did not
    assert_eq!(ex.json()["stream_options"]["include_usage"], true);
    let tx = ex.respond_stream();
    // first event goes out before the upstream sends anything else
    assert!(tx.send(CHUNK1).await);
    let mut res = client.await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["cache-control"], "no-cache");
    assert_eq!(res.headers["x-accel-buffering"], "no");
    assert!(res.headers.get("content-length").is_none());
    assert!(
        res.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(res.next_data().await.unwrap(), CHUNK1.as_bytes());
    // each later event, too, reaches the client while the upstream is still waiting
    for ev in [CHUNK2, CHUNK3] {
        assert!(tx.send(ev).await);
        assert_eq!(res.next_data().await.unwrap(), ev.as_bytes());
    }
    assert!(tx.send(USAGE_CHUNK).await);
    assert!(tx.send(DONE).await);
    drop(tx);
    // the usage chunk the client did not ask for is stripped; [DONE] passes
    assert_eq!(&res.rest().await[..], DONE.as_bytes());
    let recs = gw.records(1).await;
    assert_eq!(recs[0].outcome, Outcome::Success);
    assert_eq!(recs[0].usage, exact_usage());
    assert_eq!(recs[0].usage_source, UsageSource::Upstream);
    assert!(recs[0].stream);
}

#[tokio::test]
async fn usage_chunk_kept_when_the_client_asked() {
    let mut up = ScriptedUpstream::start().await;
    let gw = Gateway::start(&config(&up, "")).await;
    let req = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
    let client = tokio::spawn({
        let addr = gw.addr;
        async move { chat(addr, req, &[]).await }
    });
    let ex = up.next().await;
    assert_eq!(ex.json()["stream_options"]["include_usage"], true);
    let tx = ex.respond_stream();
    for ev in [CHUNK1, CHUNK3, USAGE_CHUNK, DONE] {
        tx.send(ev).await;
    }
    drop(tx);
    let res = client.await.unwrap();
    let body = res.rest().await;
    assert_eq!(
        &body[..],
        [CHUNK1, CHUNK3, USAGE_CHUNK, DONE].concat().as_bytes()
    );
    assert_eq!(gw.records(1).await[0].usage, exact_usage());
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let mut up = ScriptedUpstream::start().await;
    let gw = Gateway::start(&config(&up, "")).await;
    let req = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let client = tokio::spawn({
        let addr = gw.addr;
        async move { chat(addr, req, &[]).await }
    });
    let ex = up.next().await;
    let tx = ex.respond_stream();
    tx.send(CHUNK1).await;
    let mut res = client.await.unwrap();
    assert_eq!(res.next_data().await.unwrap(), CHUNK1.as_bytes());
    drop(res); // the client goes away mid-stream
    tokio::time::timeout(Duration::from_secs(5), tx.closed())
        .await
        .expect("the gateway must drop the upstream request when the client disconnects");
    let recs = gw.records(1).await;
    assert_eq!(recs[0].outcome, Outcome::ClientDisconnect);
    assert_ne!(recs[0].usage_source, UsageSource::Upstream);
}

#[tokio::test]
async fn upstream_429_stays_429_with_retry_after() {
    let mut up = ScriptedUpstream::start().await;
    let gw = Gateway::start(&config(&up, "")).await;
    let client = tokio::spawn({
        let addr = gw.addr;
        async move {
            chat(
                addr,
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
                &[],
            )
            .await
        }
    });
    up.next().await.respond(
        429,
        &[("retry-after", "7"), ("content-type", "application/json")],
        r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
    );
    let res = client.await.unwrap();
    assert_eq!(res.status, 429);
    assert_eq!(res.headers["retry-after"], "7");
    let v = res.json().await;
    assert_eq!(v["error"]["message"], "Rate limit reached");
    assert_eq!(v["error"]["origin"], "upstream");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn bad_inputs_get_their_status_and_an_openai_error_and_the_gateway_keeps_serving() {
    let up = ScriptedUpstream::start().await;
    let gw = Gateway::start(&config(&up, "[server]\nmax_body_bytes = 4096\n")).await;
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(10_000)
    );
    let cases: Vec<(&str, &str, String, u16, Option<&str>)> = vec![
        ("POST", "/v1/chat/completions", "{".into(), 400, None),
        ("POST", "/v1/chat/completions", "[]".into(), 400, None),
        ("POST", "/v1/chat/completions", "".into(), 400, None),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x"}]}"#.into(),
            400,
            Some("model"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#.into(),
            400,
            Some("model"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"m"}"#.into(),
            400,
            Some("messages"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#.into(),
            400,
            Some("stream"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"many"}"#
                .into(),
            400,
            Some("max_tokens"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":[]}"#
                .into(),
            400,
            Some("stream_options"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#.into(),
            404,
            Some("model"),
        ),
        ("POST", "/v1/chat/completions", big, 413, None),
        ("PUT", "/v1/chat/completions", "{}".into(), 405, None),
        ("GET", "/v1/chat/completions", "".into(), 405, None),
        ("POST", "/v1/nothing-here", "{}".into(), 404, None),
    ];
    for (method, path, body, status, param) in cases {
        let res = send(gw.addr, method, path, &[], body.clone()).await;
        assert_eq!(res.status.as_u16(), status, "{method} {path} {body:.60}");
        if status == 405 {
            assert_eq!(res.headers["allow"], "POST", "{method} {path}");
        }
        assert_eq!(res.headers["content-type"], "application/json");
        let v = res.json().await;
        let err = &v["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(err["type"].is_string(), "{v}");
        assert!(
            err.get("param").is_some() && err.get("code").is_some(),
            "{v}"
        );
        assert_eq!(err["origin"], "gateway", "{v}");
        if let Some(p) = param {
            assert_eq!(err["param"], p, "{method} {path} {body:.60}: {v}");
        }
    }
    // still serving
    let res = send(gw.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(res.status, 200);
}
