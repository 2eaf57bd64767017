//! The Amazon Bedrock adapter (`kind = "bedrock"`) through the reference gateway binary over
//! real sockets, against a fake Bedrock on 127.0.0.1 that does what the real one does with a
//! request: it **recomputes the SigV4 signature** from what it received (its own canonical
//! request, written here from the AWS documentation, sharing no code with the gateway) and
//! refuses a mismatch with 403 `InvalidSignatureException`; it answers Converse JSON and
//! ConverseStream `application/vnd.amazon.eventstream` frames (encoded here, CRC-32 included).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use common::GatewayProcess;
use tollgate::translate::bedrock::{BedrockStream, translate_event_stream};

const ACCESS_KEY: &str = "AKIDEXAMPLEBEDROCK01";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY";
const WRONG_SECRET: &str = "not-the-secret/K7MDENG+bPxRfiCYzNEVERPRINT";
const TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE-session-token//never-print+me==";
const REGION: &str = "us-west-2";
const CLAUDE: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the \
    signature you provided. Check your AWS Secret Access Key and signing method. Consult the \
    service documentation for details.";

// ---------------------------------------------------------------------------------------------
// The test's own SigV4 verification and event-stream encoding.

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&k, data.as_bytes()).as_ref().to_vec()
}

/// RFC 3986 unreserved characters kept, everything else `%XX`; `/` kept.
fn encode_path(p: &str) -> String {
    let mut out = String::new();
    for b in p.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

struct Seen {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// Recompute the signature of `seen` with `SECRET`: `Err` says what does not match.
fn verify_sigv4(seen: &Seen) -> Result<(), String> {
    let h = |n: &str| {
        seen.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let auth = h("authorization").ok_or("no authorization")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let mut cred = "";
    let mut signed = "";
    let mut sig = "";
    for part in rest.split(", ") {
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = v;
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = v;
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = v;
        }
    }
    let amz_date = h("x-amz-date").ok_or("no x-amz-date")?;
    let scope = format!("{}/{REGION}/bedrock/aws4_request", &amz_date[..8]);
    if cred != format!("{ACCESS_KEY}/{scope}") {
        return Err(format!("credential {cred}"));
    }
    let payload = hexs(&Sha256::digest(&seen.body));
    if h("x-amz-content-sha256").as_deref() != Some(payload.as_str()) {
        return Err("x-amz-content-sha256 is not the body's hash".into());
    }
    let names: Vec<&str> = signed.split(';').collect();
    for must in ["host", "x-amz-date", "x-amz-content-sha256", "content-type"] {
        if !names.contains(&must) {
            return Err(format!("{must} is not signed"));
        }
    }
    if seen.headers.contains_key("x-amz-security-token") && !names.contains(&"x-amz-security-token")
    {
        return Err("the session token is not signed".into());
    }
    let mut canon_headers = String::new();
    for n in &names {
        let v = h(n).ok_or(format!("signed header {n} missing"))?;
        canon_headers.push_str(&format!("{n}:{}\n", v.trim()));
    }
    let canonical = format!(
        "POST\n{}\n\n{canon_headers}\n{signed}\n{payload}",
        encode_path(&seen.path)
    );
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hexs(&Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{SECRET}").as_bytes(), &amz_date[..8]);
    let k = hmac(&k, REGION);
    let k = hmac(&k, "bedrock");
    let k = hmac(&k, "aws4_request");
    let want = hexs(&hmac(&k, &sts));
    if want != sig {
        return Err("signature mismatch".into());
    }
    Ok(())
}

/// CRC-32 (IEEE), bit by bit.
fn crc(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// One event-stream message with string headers.
fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut hs = Vec::new();
    for (k, v) in headers {
        hs.push(k.len() as u8);
        hs.extend_from_slice(k.as_bytes());
        hs.push(7);
        hs.extend_from_slice(&(v.len() as u16).to_be_bytes());
        hs.extend_from_slice(v.as_bytes());
    }
    let total = 12 + hs.len() + payload.len() + 4;
    let mut out = Vec::new();
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(hs.len() as u32).to_be_bytes());
    let c = crc(&out);
    out.extend_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&hs);
    out.extend_from_slice(payload);
    let c = crc(&out);
    out.extend_from_slice(&c.to_be_bytes());
    out
}

fn event(ty: &str, payload: Value) -> Vec<u8> {
    frame(
        &[
            (":event-type", ty),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

fn exception(ty: &str, message: &str) -> Vec<u8> {
    frame(
        &[
            (":exception-type", ty),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        json!({ "message": message }).to_string().as_bytes(),
    )
}

const USAGE: &str = r#"{"inputTokens":11,"outputTokens":6,"totalTokens":17}"#;

/// A text answer as ConverseStream events.
fn text_stream() -> Vec<Vec<u8>> {
    let usage: Value = serde_json::from_str(USAGE).unwrap();
    vec![
        event("messageStart", json!({"role": "assistant", "p": "abcd"})),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": " from Bedrock!"}}),
        ),
        event("contentBlockStop", json!({"contentBlockIndex": 0})),
        event("messageStop", json!({"stopReason": "end_turn"})),
        event(
            "metadata",
            json!({"usage": usage, "metrics": {"latencyMs": 120}}),
        ),
    ]
}

/// A `get_weather` call as ConverseStream events (its input in two pieces).
fn tool_stream() -> Vec<Vec<u8>> {
    vec![
        event("messageStart", json!({"role": "assistant"})),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Checking."}}),
        ),
        event("contentBlockStop", json!({"contentBlockIndex": 0})),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse":
                {"toolUseId": "tooluse_abc", "name": "get_weather"}}}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"location\":"}}}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
        ),
        event("contentBlockStop", json!({"contentBlockIndex": 1})),
        event("messageStop", json!({"stopReason": "tool_use"})),
        event(
            "metadata",
            json!({"usage": {"inputTokens": 20, "outputTokens": 9, "totalTokens": 29}}),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// The fake Bedrock.

type Res = Response<Full<Bytes>>;

fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Res {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

fn error(status: u16, ty: &str, message: &str) -> Res {
    respond(
        status,
        &[
            ("content-type", "application/json"),
            (
                "x-amzn-errortype",
                &format!("{ty}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            ),
            ("x-amzn-requestid", "9e1f-request"),
        ],
        json!({ "message": message }).to_string(),
    )
}

fn converse_json(content: Value, stop: &str) -> Res {
    let usage: Value = serde_json::from_str(USAGE).unwrap();
    respond(
        200,
        &[("content-type", "application/json")],
        json!({"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 99}})
        .to_string(),
    )
}

fn eventstream(frames: Vec<Vec<u8>>) -> Res {
    respond(
        200,
        &[("content-type", "application/vnd.amazon.eventstream")],
        frames.concat(),
    )
}

/// Whether the request's last turn answers a tool call (a `toolResult` for `tooluse_abc`).
fn answers_tool(body: &Value) -> bool {
    let last = body["messages"].as_array().and_then(|m| m.last());
    last.and_then(|m| m["content"].as_array()).is_some_and(|c| {
        c.iter().any(|b| {
            b["toolResult"]["toolUseId"] == "tooluse_abc"
                && b["toolResult"]["content"][0]["text"] == "sunny, 21 C"
        })
    })
}

fn answer(seen: &Seen) -> Res {
    if let Err(why) = verify_sigv4(seen) {
        eprintln!("fake bedrock refused a request: {why}");
        return error(403, "InvalidSignatureException", SIGNATURE_MISMATCH);
    }
    let Some(rest) = seen.path.strip_prefix("/model/") else {
        return error(404, "UnknownOperationException", "unknown path");
    };
    let (model, op) = rest.rsplit_once('/').unwrap_or((rest, ""));
    let model = model.replace("%3A", ":");
    let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
    let stream = op == "converse-stream";
    match model.as_str() {
        "throttled.model-v1:0" => error(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        "stream-throttled.model-v1:0" if stream => eventstream(vec![exception(
            "throttlingException",
            "Too many tokens, please wait before trying again.",
        )]),
        "midstream-throttled.model-v1:0" if stream => {
            let mut frames = text_stream()[..2].to_vec();
            frames.push(exception(
                "throttlingException",
                "Too many tokens, please wait before trying again.",
            ));
            eventstream(frames)
        }
        CLAUDE => {
            let tools = body.get("toolConfig").is_some();
            match (stream, tools && !answers_tool(&body)) {
                (true, true) => eventstream(tool_stream()),
                (true, false) => eventstream(text_stream()),
                (false, true) => converse_json(
                    json!([{"toolUse": {"toolUseId": "tooluse_abc", "name": "get_weather",
                        "input": {"location": "Paris"}}}]),
                    "tool_use",
                ),
                (false, false) if answers_tool(&body) => {
                    converse_json(json!([{"text": "It is sunny in Paris."}]), "end_turn")
                }
                (false, false) => {
                    converse_json(json!([{"text": "Hello from Bedrock!"}]), "end_turn")
                }
            }
        }
        _ => error(
            404,
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier.",
        ),
    }
}

/// The fake on 127.0.0.1; it records every request.
async fn fake_bedrock() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let l = l.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let l = l.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let seen = Seen {
                            path: parts.uri.path().to_owned(),
                            headers: parts.headers,
                            body,
                        };
                        let res = answer(&seen);
                        l.lock().unwrap().push(seen);
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, log)
}

// ---------------------------------------------------------------------------------------------
// The gateway.

static NEXT: AtomicU32 = AtomicU32::new(0);

struct Run {
    gw: GatewayProcess,
    log: std::path::PathBuf,
}

impl Run {
    fn start(config: &str) -> Run {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-bedrock-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("gateway.log");
        let file = std::fs::File::create(&log).unwrap();
        let gw = GatewayProcess::start_with(config, |cmd| {
            cmd.env("RUST_LOG", "debug")
                .env("BEDROCK_TEST_AKID", ACCESS_KEY)
                .env("BEDROCK_TEST_SECRET", SECRET)
                .env("BEDROCK_TEST_WRONG_SECRET", WRONG_SECRET)
                .env("BEDROCK_TEST_TOKEN", TOKEN)
                .stderr(file);
        });
        Run { gw, log }
    }

    async fn chat(&self, body: Value) -> (u16, http::HeaderMap, String) {
        let res = common::chat(self.gw.addr, &body.to_string(), &[]).await;
        let status = res.status.as_u16();
        let headers = res.headers.clone();
        let text = String::from_utf8(res.rest().await.to_vec()).unwrap();
        (status, headers, text)
    }

    /// Stop the gateway; its whole log holds no secret.
    fn assert_log_clean(mut self) {
        let _ = self.gw.child.kill();
        let _ = self.gw.child.wait();
        let log = std::fs::read_to_string(&self.log).unwrap();
        for s in [SECRET, WRONG_SECRET, TOKEN] {
            assert!(!log.contains(s), "the log holds a secret ({s}):\n{log}");
        }
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
[auth]
enabled = false

[providers.bedrock]
kind = "bedrock"
region = "{REGION}"
access_key_id = "${{BEDROCK_TEST_AKID}}"
secret_access_key = "${{BEDROCK_TEST_SECRET}}"
session_token = "${{BEDROCK_TEST_TOKEN}}"
base_url = "http://{upstream}"

[providers.bedrock-plain]
kind = "bedrock"
region = "{REGION}"
access_key_id = "${{BEDROCK_TEST_AKID}}"
secret_access_key = "${{BEDROCK_TEST_SECRET}}"
base_url = "http://{upstream}"

[providers.bedrock-wrong]
kind = "bedrock"
region = "{REGION}"
access_key_id = "${{BEDROCK_TEST_AKID}}"
secret_access_key = "${{BEDROCK_TEST_WRONG_SECRET}}"
base_url = "http://{upstream}"

[models.claude]
targets = [{{ provider = "bedrock", model = "{CLAUDE}" }}]

[models.claude-plain]
targets = [{{ provider = "bedrock-plain", model = "{CLAUDE}" }}]

[models.claude-wrong]
targets = [{{ provider = "bedrock-wrong", model = "{CLAUDE}" }}]

[models.claude-fallback]
targets = [
  {{ provider = "bedrock", model = "throttled.model-v1:0" }},
  {{ provider = "bedrock-plain", model = "{CLAUDE}" }},
]

[models.claude-stream-fallback]
targets = [
  {{ provider = "bedrock", model = "stream-throttled.model-v1:0" }},
  {{ provider = "bedrock-plain", model = "{CLAUDE}" }},
]

[models.throttled]
targets = [{{ provider = "bedrock", model = "throttled.model-v1:0" }}]

[models.midstream]
targets = [
  {{ provider = "bedrock", model = "midstream-throttled.model-v1:0" }},
  {{ provider = "bedrock-plain", model = "{CLAUDE}" }},
]
"#
    )
}

fn hi(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "hi"}]})
}

/// The `data:` payloads of an SSE body and whether it ended with `[DONE]`.
fn chunks(s: &str) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    for e in s.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let d = e
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not SSE: {s}"));
        if d == "[DONE]" {
            done = true;
        } else {
            assert!(!done, "nothing after [DONE]");
            out.push(serde_json::from_str(d).unwrap());
        }
    }
    (out, done)
}

// ---------------------------------------------------------------------------------------------
// Tests over real HTTP.

#[tokio::test]
async fn a_signed_converse_call_answers_a_chat_completion() {
    let (upstream, seen) = fake_bedrock().await;
    let run = Run::start(&config(upstream));
    let (status, _, body) = run.chat(hi("claude", false)).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from Bedrock!");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 11);
    assert_eq!(v["usage"]["completion_tokens"], 6);
    assert_eq!(v["usage"]["total_tokens"], 17);
    {
        let seen = seen.lock().unwrap();
        let s = &seen[0];
        // the model id's ':' travels once-encoded; the signature (checked) covers it twice.
        assert_eq!(
            s.path,
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
        );
        assert_eq!(s.headers["x-amz-security-token"], TOKEN);
        let sent: Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(sent["system"], json!([{"text": "Be brief."}]));
        assert_eq!(
            sent["messages"],
            json!([{"role": "user", "content": [{"text": "hi"}]}])
        );
    }
    run.assert_log_clean();
}

#[tokio::test]
async fn a_stream_ends_with_the_usage_chunk_and_done() {
    let (upstream, seen) = fake_bedrock().await;
    let run = Run::start(&config(upstream));
    let (status, headers, body) = run.chat(hi("claude-plain", true)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "text/event-stream");
    let (chunks, done) = chunks(&body);
    assert!(done, "{body}");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from Bedrock!");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"]["prompt_tokens"], 11,
        "usage in the last chunk: {last}"
    );
    assert_eq!(last["usage"]["completion_tokens"], 6);
    assert_eq!(last["usage"]["total_tokens"], 17);
    let seen = seen.lock().unwrap();
    assert!(
        seen[0].path.ends_with("/converse-stream"),
        "{}",
        seen[0].path
    );
    assert!(!seen[0].headers.contains_key("x-amz-security-token"));
    drop(seen);
    run.assert_log_clean();
}

#[tokio::test]
async fn a_tool_call_round_trips_over_two_turns() {
    let (upstream, seen) = fake_bedrock().await;
    let run = Run::start(&config(upstream));
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "The weather at a place",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
            "required": ["location"]}}}]);
    let user = json!({"role": "user", "content": "Weather in Paris?"});
    // Turn 1, streamed: the call arrives as a tool_calls delta with its arguments in pieces.
    let (status, _, body) = run
        .chat(
            json!({"model": "claude", "stream": true, "messages": [user], "tools": tools,
            "tool_choice": "auto"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (chunks, done) = chunks(&body);
    assert!(done);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["id"], "tooluse_abc");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"location":"Paris"}"#);
    assert!(calls.iter().all(|c| c["index"] == 0));
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    // Turn 2, not streamed: the client's tool result goes back as a toolResult block.
    let (status, _, body) = run
        .chat(json!({"model": "claude", "tools": tools, "messages": [user,
            {"role": "assistant", "content": null, "tool_calls": [{"id": "tooluse_abc",
                "type": "function", "function": {"name": "get_weather", "arguments": args}}]},
            {"role": "tool", "tool_call_id": "tooluse_abc", "content": "sunny, 21 C"}]}))
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "It is sunny in Paris."
    );
    let seen = seen.lock().unwrap();
    let sent: Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(
        sent["messages"][1],
        json!({"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_abc",
            "name": "get_weather", "input": {"location": "Paris"}}}]})
    );
    assert_eq!(
        sent["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["required"],
        json!(["location"])
    );
    drop(seen);
    run.assert_log_clean();
}

#[tokio::test]
async fn throttling_is_a_429_and_falls_back_to_the_next_target() {
    let (upstream, seen) = fake_bedrock().await;
    let run = Run::start(&config(upstream));
    // alone: the 429 reaches the client with its meaning
    let (status, _, body) = run.chat(hi("throttled", false)).await;
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Too many requests")
    );
    // with a second target: served by it, JSON and stream (the stream's throttlingException
    // arrives in a 200 before any byte reached the client)
    let (status, _, body) = run.chat(hi("claude-fallback", false)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello from Bedrock!"), "{body}");
    let (status, _, body) = run.chat(hi("claude-stream-fallback", true)).await;
    assert_eq!(status, 200, "{body}");
    let (chunks, done) = chunks(&body);
    assert!(done, "{body}");
    assert!(chunks.iter().all(|c| c.get("error").is_none()), "{body}");
    let paths: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/model/throttled.model-v1%3A0/converse",
            "/model/throttled.model-v1%3A0/converse",
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
            "/model/stream-throttled.model-v1%3A0/converse-stream",
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream",
        ]
    );
    run.assert_log_clean();
}

#[tokio::test]
async fn an_exception_after_the_first_byte_ends_the_stream_in_band_without_done() {
    let (upstream, seen) = fake_bedrock().await;
    let run = Run::start(&config(upstream));
    let (status, _, body) = run.chat(hi("midstream", true)).await;
    assert_eq!(status, 200, "{body}");
    let (chunks, done) = chunks(&body);
    assert!(!done, "no [DONE] after an error: {body}");
    assert_eq!(
        chunks[1]["choices"][0]["delta"]["content"], "Hello",
        "{body}"
    );
    let err = &chunks.last().unwrap()["error"];
    assert_eq!(err["code"], "rate_limit_exceeded", "{body}");
    assert!(
        err["message"].as_str().unwrap().contains("Too many tokens"),
        "{body}"
    );
    // committed: the second target is not tried
    assert_eq!(seen.lock().unwrap().len(), 1);
    run.assert_log_clean();
}

#[tokio::test]
async fn a_wrong_secret_is_a_502_naming_the_provider_and_never_echoed() {
    let (upstream, seen) = fake_bedrock().await;
    let run = Run::start(&config(upstream));
    for stream in [false, true] {
        let (status, _, body) = run.chat(hi("claude-wrong", stream)).await;
        assert_eq!(status, 502, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "upstream_auth_failed", "{body}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("bedrock-wrong"), "{msg}");
        assert!(msg.contains("InvalidSignatureException"), "{msg}");
        assert!(
            msg.contains("signature we calculated does not match"),
            "{msg}"
        );
        for s in [SECRET, WRONG_SECRET, TOKEN] {
            assert!(!body.contains(s), "{body}");
        }
    }
    assert_eq!(seen.lock().unwrap().len(), 2);
    run.assert_log_clean();
}

// ---------------------------------------------------------------------------------------------
// The stream decoder, for every split of a recorded frame sequence.

/// Translate `bytes` split at `cuts`, with the stream's random id replaced by `ID`.
fn translated(bytes: &[u8], cuts: &[usize]) -> (String, Option<String>) {
    let mut t = BedrockStream::new(true, 1_700_000_000, CLAUDE, Arc::from("bedrock"));
    let mut pieces = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
        pieces.push(Bytes::copy_from_slice(&bytes[at..c]));
        at = c;
    }
    let (out, err) = translate_event_stream(&mut t, 1 << 20, pieces);
    let out = String::from_utf8(out.to_vec()).unwrap();
    let id = out
        .find("chatcmpl-")
        .map(|i| out[i..i + "chatcmpl-".len() + 16].to_owned());
    let out = match id {
        Some(id) => out.replace(&id, "chatcmpl-ID"),
        None => out,
    };
    (out, err.map(|e| e.to_string()))
}

const GOLDEN: &str = concat!(
    r#"data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":1700000000,"model":"anthropic.claude-3-5-sonnet-20240620-v1:0","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":1700000000,"model":"anthropic.claude-3-5-sonnet-20240620-v1:0","choices":[{"index":0,"delta":{"content":"Checking."},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":1700000000,"model":"anthropic.claude-3-5-sonnet-20240620-v1:0","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"tooluse_abc","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":1700000000,"model":"anthropic.claude-3-5-sonnet-20240620-v1:0","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"location\":"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":1700000000,"model":"anthropic.claude-3-5-sonnet-20240620-v1:0","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":1700000000,"model":"anthropic.claude-3-5-sonnet-20240620-v1:0","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-ID","object":"chat.completion.chunk","created":1700000000,"model":"anthropic.claude-3-5-sonnet-20240620-v1:0","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29"#,
);

#[test]
fn the_stream_decoder_gives_the_golden_output_for_every_split() {
    let bytes = tool_stream().concat();
    let (whole, err) = translated(&bytes, &[]);
    assert_eq!(err, None);
    assert!(whole.starts_with(GOLDEN), "{whole}");
    assert!(whole.ends_with("}\n\ndata: [DONE]\n\n"), "{whole}");
    for i in 0..=bytes.len() {
        assert_eq!(
            translated(&bytes, &[i]),
            (whole.clone(), None),
            "split at {i}"
        );
    }
    for i in (0..bytes.len()).step_by(7) {
        for j in (i..bytes.len()).step_by(13) {
            assert_eq!(
                translated(&bytes, &[i, j]),
                (whole.clone(), None),
                "{i}, {j}"
            );
        }
    }
    let every: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(translated(&bytes, &every), (whole, None), "byte by byte");
}

#[test]
fn broken_frames_and_early_ends_are_errors() {
    let bytes = text_stream().concat();
    // a flipped payload byte fails the message CRC
    let mut bad = bytes.clone();
    bad[40] ^= 1;
    let (_, err) = translated(&bad, &[]);
    assert!(err.unwrap().contains("CRC"));
    // cut inside a message, and cut before messageStop
    let (_, err) = translated(&bytes[..bytes.len() - 3], &[]);
    assert!(err.unwrap().contains("inside a message"));
    let cut: Vec<u8> = text_stream()[..3].concat();
    let (out, err) = translated(&cut, &[]);
    assert!(err.unwrap().contains("messageStop"));
    assert!(!out.contains("[DONE]"));
    // a message over the cap is refused from its prelude
    let mut t = BedrockStream::new(false, 1, "m", Arc::from("bedrock"));
    let (_, err) = translate_event_stream(&mut t, 64, [Bytes::from(bytes)]);
    assert!(err.unwrap().to_string().contains("larger than 64 bytes"));
    // an exception message: its status, and its message kept
    let mut t = BedrockStream::new(false, 1, "m", Arc::from("bedrock"));
    let ex = exception("serviceUnavailableException", "Bedrock is unavailable.");
    let (out, err) = translate_event_stream(&mut t, 1 << 20, [Bytes::from(ex)]);
    let err = err.unwrap();
    assert!(out.is_empty());
    assert_eq!(err.status().as_u16(), 503);
    assert!(err.to_string().contains("Bedrock is unavailable."));
}

#[tokio::test]
async fn the_readme_example_serves_through_the_fake() {
    let readme = include_str!("../README.md");
    let block = readme
        .split("```toml\n")
        .skip(1)
        .map(|b| &b[..b.find("```").unwrap()])
        .find(|b| b.contains("kind = \"bedrock\""))
        .expect("README has a bedrock example");
    let (upstream, seen) = fake_bedrock().await;
    let config = block
        .replace("us-east-1", REGION)
        .replace("${AWS_ACCESS_KEY_ID}", "${BEDROCK_TEST_AKID}")
        .replace("${AWS_SECRET_ACCESS_KEY}", "${BEDROCK_TEST_SECRET}")
        .replace(
            "kind = \"bedrock\"",
            &format!("kind = \"bedrock\"\nbase_url = \"http://{upstream}\""),
        )
        + "\n[auth]\nenabled = false\n";
    let run = Run::start(&config);
    let (status, _, body) = run.chat(hi("claude-3-5-sonnet", true)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("from Bedrock!"), "{body}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    run.assert_log_clean();
}
