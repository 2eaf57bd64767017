//! The Anthropic and Gemini adapters against protocol-faithful fake upstreams on 127.0.0.1:
//! what goes upstream (path, auth headers, translated body, no client credentials) and what
//! comes back (translated JSON, translated streams, mapped errors).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tollgate::error::ErrorKind;
use tollgate::provider::anthropic::AnthropicProvider;
use tollgate::provider::gemini::GeminiProvider;
use tollgate::provider::{Provider, UpstreamCall};
use tollgate::request::{Api, parse_body};
use tollgate::secret::Secret;

#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone)]
struct Script {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    /// Body frames, sent one by one.
    frames: Vec<&'static str>,
}

/// A fake upstream answering every request with `script`, recording what it received.
async fn fake(script: Script) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let script = script.clone();
                    let log = log.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        log.lock().unwrap().push(Seen {
                            uri: parts.uri.to_string(),
                            headers: parts.headers,
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        });
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> = script
                            .frames
                            .iter()
                            .map(|f| Ok(Frame::data(Bytes::from_static(f.as_bytes()))))
                            .collect();
                        let body: BoxBody<Bytes, Infallible> =
                            BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
                        let mut res = Response::new(body);
                        *res.status_mut() = StatusCode::from_u16(script.status).unwrap();
                        for (k, v) in &script.headers {
                            res.headers_mut().insert(*k, v.parse().unwrap());
                        }
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

fn call(body: Value, model: &str) -> UpstreamCall {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Bearer client-key".parse().unwrap());
    headers.insert("x-api-key", "client-key".parse().unwrap());
    headers.insert("x-request-id", "req-77".parse().unwrap());
    UpstreamCall {
        parsed: parse_body(Api::ChatCompletions, Bytes::from(body.to_string())).unwrap(),
        upstream_model: Arc::from(model),
        headers,
        connect_timeout: Some(Duration::from_secs(2)),
        limits: Default::default(),
    }
}

async fn body_string(res: Response<tollgate::body::Body>) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// The `data:` JSON payloads of an OpenAI SSE body, and whether it ended with `[DONE]`.
fn chunks(s: &str) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    for e in s.split("\n\n").filter(|e| !e.is_empty()) {
        let d = e.strip_prefix("data: ").unwrap();
        if d == "[DONE]" {
            done = true;
        } else {
            assert!(!done, "nothing after [DONE]");
            out.push(serde_json::from_str(d).unwrap());
        }
    }
    (out, done)
}

fn anthropic(base: &str) -> AnthropicProvider {
    AnthropicProvider::builder("anth", base)
        .api_key(Secret::new("sk-ant-upstream"))
        .default_max_tokens(777)
        .build()
        .unwrap()
}

fn gemini(base: &str) -> GeminiProvider {
    GeminiProvider::builder("gem", base)
        .api_key(Secret::new("AIza-upstream"))
        .build()
        .unwrap()
}

#[tokio::test]
async fn anthropic_non_stream_translates_both_ways_with_upstream_auth_only() {
    let (base, seen) = fake(Script {
        status: 200,
        headers: vec![("content-type", "application/json")],
        frames: vec![
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Hi!"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":4,"cache_read_input_tokens":6,"output_tokens":2}}"#,
        ],
    })
    .await;
    let p = anthropic(&base);
    let res = p
        .call(call(
            json!({"model": "alias", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}]}),
            "claude-x",
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let out: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["choices"][0]["message"]["content"], "Hi!");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(out["usage"]["prompt_tokens"], 10);
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 6);

    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.uri, "/v1/messages");
    assert_eq!(seen.headers["x-api-key"], "sk-ant-upstream");
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert_eq!(seen.headers["x-request-id"], "req-77");
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(
        seen.body,
        json!({"model": "claude-x", "max_tokens": 777, "system": [{"type": "text", "text": "sys"}],
               "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]})
    );
}

#[tokio::test]
async fn anthropic_stream_is_translated_event_by_event() {
    let (base, seen) = fake(Script {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        frames: vec![
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\nevent: content_bl",
            "ock_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":8}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ],
    })
    .await;
    let p = anthropic(&base);
    let res = p
        .call(call(
            json!({"model": "alias", "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "go"}],
                   "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "claude-x",
        ))
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let (cs, done) = chunks(&body_string(res).await);
    assert!(done);
    let args: String = cs
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{\"a\":1}");
    assert_eq!(
        cs[1]["choices"][0]["delta"]["tool_calls"][0]["id"],
        "toolu_1"
    );
    assert!(
        cs.iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    let last = cs.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 9);
    assert_eq!(last["usage"]["completion_tokens"], 8);
    assert!(cs.iter().all(|c| c["id"] == "chatcmpl-msg_2"));
    assert_eq!(seen.lock().unwrap()[0].body["stream"], true);
}

#[tokio::test]
async fn anthropic_529_is_503_with_retry_after_and_429_stays_429() {
    let (base, _) = fake(Script {
        status: 529,
        headers: vec![("content-type", "application/json")],
        frames: vec![
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ],
    })
    .await;
    let e = anthropic(&base)
        .call(call(
            json!({"model": "a", "messages": [{"role": "user", "content": "x"}]}),
            "c",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 503);
    assert_eq!(e.kind(), ErrorKind::UpstreamOverloaded);
    assert!(e.is_retryable());
    assert!(e.into_response().headers().contains_key("retry-after"));

    let (base, _) = fake(Script {
        status: 429,
        headers: vec![("retry-after", "12")],
        frames: vec![r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#],
    })
    .await;
    let e = anthropic(&base)
        .call(call(
            json!({"model": "a", "messages": [{"role": "user", "content": "x"}]}),
            "c",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 429);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(12)));
}

#[tokio::test]
async fn anthropic_refusals_happen_before_any_upstream_call() {
    let (base, seen) = fake(Script {
        status: 200,
        headers: vec![],
        frames: vec![],
    })
    .await;
    let e = anthropic(&base)
        .call(call(
            json!({"model": "a", "n": 3, "messages": [{"role": "user", "content": "x"}]}),
            "c",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn gemini_stream_gets_done_and_tool_calls() {
    let (base, seen) = fake(Script {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        frames: vec![
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Let me see\"}]},\"index\":0}],\"responseId\":\"g1\",\"modelVersion\":\"gemini-x\"}\r\n\r\ndata: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":{\"a\":1}}}]},",
            "\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":3,\"totalTokenCount\":8},\"responseId\":\"g1\",\"modelVersion\":\"gemini-x\"}\r\n\r\n",
        ],
    })
    .await;
    let res = gemini(&base)
        .call(call(
            json!({"model": "alias", "stream": true, "messages": [{"role": "user", "content": "go"}]}),
            "gemini-x",
        ))
        .await
        .unwrap();
    let (cs, done) = chunks(&body_string(res).await);
    assert!(done);
    assert_eq!(cs[1]["choices"][0]["delta"]["content"], "Let me see");
    assert_eq!(
        cs[2]["choices"][0]["delta"]["tool_calls"][0]["function"],
        json!({"name": "f", "arguments": "{\"a\":1}"})
    );
    assert_eq!(cs[3]["choices"][0]["finish_reason"], "tool_calls");
    assert!(
        cs.iter().all(|c| c.get("usage").is_none()),
        "no usage chunk unless asked"
    );
    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(
        seen.uri,
        "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"
    );
    assert_eq!(seen.headers["x-goog-api-key"], "AIza-upstream");
    assert!(seen.headers.get("authorization").is_none());
    assert!(seen.headers.get("x-api-key").is_none());
    assert_eq!(
        seen.body,
        json!({"contents": [{"role": "user", "parts": [{"text": "go"}]}]})
    );
}

#[tokio::test]
async fn gemini_cut_stream_ends_with_an_error_not_done() {
    let (base, _) = fake(Script {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        frames: vec![
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hal\"}]},\"index\":0}],\"responseId\":\"g2\"}\n\n",
        ],
    })
    .await;
    let res = gemini(&base)
        .call(call(
            json!({"model": "alias", "stream": true, "messages": [{"role": "user", "content": "go"}]}),
            "gemini-x",
        ))
        .await
        .unwrap();
    let mut body = res.into_body();
    let mut text = Vec::new();
    let mut err = None;
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => text.extend_from_slice(&f.into_data().unwrap()),
            Err(e) => err = Some(e),
        }
    }
    let err = err.expect("error at the end");
    assert_eq!(
        err.downcast_ref::<tollgate::error::GatewayError>()
            .unwrap()
            .kind(),
        ErrorKind::UpstreamProtocol
    );
    assert!(!String::from_utf8(text).unwrap().contains("[DONE]"));
}

#[tokio::test]
async fn gemini_invalid_key_is_401_and_non_stream_translates() {
    let (base, _) = fake(Script {
        status: 400,
        headers: vec![("content-type", "application/json")],
        frames: vec![
            r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#,
        ],
    })
    .await;
    let e = gemini(&base)
        .call(call(
            json!({"model": "a", "messages": [{"role": "user", "content": "x"}]}),
            "g",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 401);
    assert_eq!(e.upstream_status_code(), Some(400));

    let (base, seen) = fake(Script {
        status: 200,
        headers: vec![("content-type", "application/json")],
        frames: vec![
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Bonjour"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1,"totalTokenCount":4},"responseId":"g3"}"#,
        ],
    })
    .await;
    let res = gemini(&base)
        .call(call(
            json!({"model": "a", "messages": [{"role": "user", "content": "x"}]}),
            "gemini-y",
        ))
        .await
        .unwrap();
    let out: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "Bonjour");
    assert_eq!(out["model"], "gemini-y");
    assert_eq!(out["usage"]["total_tokens"], 4);
    assert_eq!(
        seen.lock().unwrap()[0].uri,
        "/v1beta/models/gemini-y:generateContent"
    );
}

#[tokio::test]
async fn anthropic_messages_pass_through_replaces_only_the_model() {
    const SSE: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_p\",\"model\":\"claude-real\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let (base, seen) = fake(Script {
        status: 200,
        headers: vec![
            ("content-type", "text/event-stream"),
            ("request-id", "req_up"),
        ],
        frames: vec![SSE],
    })
    .await;
    let body = json!({"model": "claude-alias", "max_tokens": 5, "stream": true, "thinking": {"type": "enabled", "budget_tokens": 1024},
                      "messages": [{"role": "user", "content": "x"}]});
    let mut client = HeaderMap::new();
    client.insert("authorization", "Bearer client".parse().unwrap());
    client.insert("anthropic-version", "2026-10-21".parse().unwrap());
    client.insert("anthropic-beta", "some-beta".parse().unwrap());
    let res = anthropic(&base)
        .call_messages(
            body.to_string().as_bytes(),
            "claude-real",
            &client,
            Some(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(res.headers()["x-upstream-request-id"], "req_up");
    assert_eq!(body_string(res).await, SSE);
    let seen = seen.lock().unwrap()[0].clone();
    let mut want = body.clone();
    want["model"] = json!("claude-real");
    assert_eq!(seen.body, want);
    assert_eq!(seen.headers["x-api-key"], "sk-ant-upstream");
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert_eq!(seen.headers["anthropic-beta"], "some-beta");
    assert!(seen.headers.get("authorization").is_none());
}

#[tokio::test]
async fn anthropic_count_tokens_passes_through() {
    let (base, seen) = fake(Script {
        status: 200,
        headers: vec![("content-type", "application/json")],
        frames: vec![r#"{"input_tokens":14}"#],
    })
    .await;
    let body = json!({"model": "alias", "messages": [{"role": "user", "content": "x"}]});
    let res = anthropic(&format!("{base}/v1"))
        .count_tokens(
            body.to_string().as_bytes(),
            "claude-real",
            &HeaderMap::new(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(body_string(res).await, r#"{"input_tokens":14}"#);
    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.uri, "/v1/messages/count_tokens");
    assert_eq!(seen.body["model"], "claude-real");
}
