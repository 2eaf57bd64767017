//! The OpenAI-compatible adapter against the mock server, over real sockets on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::error::ErrorKind;
use tollgate::provider::mock::{MockProvider, MockServer, mock_embedding};
use tollgate::provider::openai::{AuthStyle, OpenAiProvider};
use tollgate::provider::{Provider, UpstreamCall};
use tollgate::request::{Api, parse_body};
use tollgate::secret::Secret;

fn chat_body(stream: bool, usage: bool) -> String {
    let mut b = String::from(
        r#"{"model":"public-alias","messages":[{"role":"user","content":"hi"}],"temperature":0.5,"x_unknown":{"keep":[1, 2]}"#,
    );
    if stream {
        b.push_str(r#","stream":true"#);
    }
    if usage {
        b.push_str(r#","stream_options":{"include_usage":true}"#);
    }
    b.push('}');
    b
}

fn call(api: Api, model: &str, body: &str, headers: HeaderMap) -> UpstreamCall {
    UpstreamCall {
        parsed: parse_body(api, Bytes::from(body.to_owned())).unwrap(),
        upstream_model: Arc::from(model),
        headers,
        connect_timeout: Some(Duration::from_secs(2)),
        limits: Default::default(),
    }
}

fn chat(model: &str, stream: bool) -> UpstreamCall {
    call(
        Api::ChatCompletions,
        model,
        &chat_body(stream, stream),
        HeaderMap::new(),
    )
}

fn provider(server: &MockServer) -> OpenAiProvider {
    OpenAiProvider::builder("up", server.base_url())
        .api_key(Secret::new("sk-upstream"))
        .build()
        .unwrap()
}

/// Fetch from the mock directly (no adapter), sending exactly `body`.
async fn direct(server: &MockServer, path: &str, body: Bytes) -> (StatusCode, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::post(format!("http://{}{path}", server.addr()))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn non_stream_body_passes_byte_exact() {
    let server = MockServer::start().await.unwrap();
    let p = provider(&server);
    let c = chat("ok", false);
    let sent = c.parsed.upstream_body("ok").unwrap();
    let res = p.call(c).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert!(res.headers().get("connection").is_none());
    let got = res.into_body().collect().await.unwrap().to_bytes();
    // The upstream received the rewritten body, unknown fields byte-for-byte.
    let rec = server.log().last_request().unwrap();
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(rec.body, sent);
    assert!(
        std::str::from_utf8(&rec.body)
            .unwrap()
            .contains(r#""x_unknown":{"keep":[1, 2]}"#)
    );
    assert_eq!(rec.json().unwrap()["model"], "ok");
    // What the adapter returned is exactly what the upstream sends for that body.
    let (status, want) = direct(&server, "/v1/chat/completions", sent).await;
    assert_eq!(status, 200);
    assert_eq!(got, want);
    let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(v["usage"]["total_tokens"], 17);
}

#[tokio::test]
async fn stream_passes_through_event_by_event() {
    let server = MockServer::start().await.unwrap();
    let p = provider(&server);
    let model = "ok?chunks=3&delay_ms=300";
    let c = chat(model, true);
    let sent = c.parsed.upstream_body(model).unwrap();
    let res = p.call(c).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert!(res.headers().get("transfer-encoding").is_none());
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    // The first event arrived while the upstream was still generating (not buffered).
    assert_eq!(server.log().streams_completed(), 0);
    assert!(first.starts_with(b"data: {") && first.ends_with(b"\n\n"));
    let mut all = first.to_vec();
    let mut frames = 1;
    while let Some(f) = body.frame().await {
        let data = f.unwrap().into_data().unwrap();
        assert!(data.ends_with(b"\n\n"), "a frame ends on an event boundary");
        all.extend_from_slice(&data);
        frames += 1;
    }
    assert!(
        frames >= 3,
        "paced events arrive as separate frames: {frames}"
    );
    assert!(all.ends_with(b"data: [DONE]\n\n"));
    let (_, want) = direct(&server, "/v1/chat/completions", sent).await;
    assert_eq!(&all[..], &want[..]);
}

#[tokio::test]
async fn upstream_429_keeps_status_and_retry_after() {
    let server = MockServer::start().await.unwrap();
    let p = provider(&server);
    let e = p
        .call(chat(
            "status?code=429&retry_after=1&should_retry=false",
            false,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 429);
    assert_eq!(e.kind(), ErrorKind::UpstreamRateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(e.message(), "Rate limit reached for requests (mock)");
    assert_eq!(e.provider().map(|p| &**p), Some("up"));
    assert_eq!(e.upstream_status_code(), Some(429));
    assert_eq!(e.headers()["x-should-retry"], "false");
    let res = e.into_response();
    assert_eq!(res.headers()["retry-after"], "1");
}

#[tokio::test]
async fn upstream_5xx_and_529_are_classified() {
    let server = MockServer::start().await.unwrap();
    let p = provider(&server);
    for (model, status, kind) in [
        ("status?code=500", 500, ErrorKind::UpstreamServerError),
        ("status?code=503", 503, ErrorKind::UpstreamServerError),
        ("err-502", 502, ErrorKind::UpstreamServerError),
        ("status?code=529", 503, ErrorKind::UpstreamOverloaded),
        ("status?code=400", 400, ErrorKind::UpstreamClientError),
    ] {
        let e = p.call(chat(model, true)).await.unwrap_err();
        assert_eq!(e.status().as_u16(), status, "{model}");
        assert_eq!(e.kind(), kind, "{model}");
        assert_eq!(e.is_retryable(), status != 400, "{model}");
    }
    let e = p.call(chat("status?code=529", false)).await.unwrap_err();
    assert_eq!(e.message(), "Overloaded");
    assert_eq!(e.upstream_status_code(), Some(529));
}

#[tokio::test]
async fn connect_refused_is_upstream_connect() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = OpenAiProvider::builder("gone", format!("http://127.0.0.1:{port}/v1"))
        .build()
        .unwrap();
    let e = p.call(chat("ok", false)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UpstreamConnect);
    assert_eq!(e.provider().map(|p| &**p), Some("gone"));
    assert!(e.is_retryable());
    // A server that closes the connection without answering is a transport failure too.
    let server = MockServer::start().await.unwrap();
    let e = provider(&server)
        .call(chat("refuse", false))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UpstreamConnect);
}

fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("authorization", "Bearer client-virtual-key"),
        ("x-api-key", "client-x-api-key"),
        ("api-key", "client-api-key"),
        ("proxy-authorization", "Basic Y2xpZW50"),
        ("cookie", "session=1"),
        ("x-request-id", "rid-123"),
        ("openai-organization", "org-1"),
        ("openai-project", "proj-1"),
        ("x-stainless-retry-count", "0"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

#[tokio::test]
async fn bearer_key_reaches_upstream_and_client_credentials_never_do() {
    let server = MockServer::start().await.unwrap();
    let p = OpenAiProvider::builder("up", server.base_url())
        .api_key(Secret::new("sk-upstream"))
        .header("x-extra", "1")
        .build()
        .unwrap();
    let c = call(
        Api::ChatCompletions,
        "ok",
        &chat_body(false, false),
        client_headers(),
    );
    p.call(c).await.unwrap();
    let rec = server.log().last_request().unwrap();
    let h = &rec.headers;
    assert_eq!(h["authorization"], "Bearer sk-upstream");
    assert_eq!(h.get_all("authorization").iter().count(), 1);
    // The client's organisation and project would bill it with the operator's key (issue 10).
    for gone in [
        "x-api-key",
        "api-key",
        "proxy-authorization",
        "cookie",
        "x-stainless-retry-count",
        "openai-organization",
        "openai-project",
    ] {
        assert!(h.get(gone).is_none(), "{gone} must not reach the upstream");
    }
    assert_eq!(h["x-request-id"], "rid-123");
    assert_eq!(h["x-extra"], "1");
    assert_eq!(h["content-type"], "application/json");
    assert!(format!("{p:?}").find("sk-upstream").is_none());
}

#[tokio::test]
async fn azure_style_api_key_header_and_query() {
    let server = MockServer::start().await.unwrap();
    let p = OpenAiProvider::builder("azure", format!("{}/", server.base_url()))
        .api_key(Secret::new("az-key"))
        .auth(AuthStyle::header("api-key").unwrap())
        .query("api-version=2024-10-21")
        .build()
        .unwrap();
    let c = call(
        Api::ChatCompletions,
        "ok",
        &chat_body(false, false),
        client_headers(),
    );
    p.call(c).await.unwrap();
    let rec = server.log().last_request().unwrap();
    assert_eq!(rec.path, "/v1/chat/completions?api-version=2024-10-21");
    assert_eq!(rec.headers["api-key"], "az-key");
    assert!(rec.headers.get("authorization").is_none());
    assert!(rec.headers.get("x-api-key").is_none());

    // No key configured (a local server): no credential header at all.
    let local = OpenAiProvider::builder("local", server.base_url())
        .build()
        .unwrap();
    local
        .call(call(
            Api::ChatCompletions,
            "ok",
            &chat_body(false, false),
            client_headers(),
        ))
        .await
        .unwrap();
    let rec = server.log().last_request().unwrap();
    assert!(rec.headers.get("authorization").is_none());
    assert!(rec.headers.get("api-key").is_none());
}

#[tokio::test]
async fn client_drop_cancels_the_upstream_stream() {
    let server = MockServer::start().await.unwrap();
    let p = provider(&server);
    let res = p
        .call(chat("ok?chunks=200&delay_ms=20", true))
        .await
        .unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let log = server.log();
    assert!(
        log.wait_until(Duration::from_secs(10), |l| l.streams_cancelled() == 1)
            .await,
        "the mock saw the stream cancelled: {log:?}"
    );
    assert_eq!(log.streams_started(), 1);
    assert_eq!(log.streams_completed(), 0);
}

#[tokio::test]
async fn embeddings_and_completions_pass_through() {
    let server = MockServer::start().await.unwrap();
    let p = provider(&server);
    let body = r#"{"model":"e","input":["hello"],"encoding_format":"base64","dimensions":6}"#;
    let res = p
        .call(call(Api::Embeddings, "ok", body, HeaderMap::new()))
        .await
        .unwrap();
    assert_eq!(server.log().last_request().unwrap().path, "/v1/embeddings");
    let v: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(floats, mock_embedding(b"hello", 6));

    let body = r#"{"model":"c","prompt":"hi"}"#;
    let res = p
        .call(call(Api::Completions, "ok", body, HeaderMap::new()))
        .await
        .unwrap();
    assert_eq!(server.log().last_request().unwrap().path, "/v1/completions");
    let v: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["object"], "text_completion");
}

#[tokio::test]
async fn in_process_and_server_answers_agree() {
    // The in-process provider and the server run the same generator: same bytes.
    let server = MockServer::start().await.unwrap();
    let over_http = provider(&server)
        .call(chat("tool", true))
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let in_process = MockProvider::new("m")
        .call(chat("tool", true))
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(over_http, in_process);
}

#[test]
fn builder_rejects_bad_config() {
    assert!(
        OpenAiProvider::builder("x", "ftp://host/v1")
            .build()
            .is_err()
    );
    assert!(OpenAiProvider::builder("x", "not a url").build().is_err());
    assert!(
        OpenAiProvider::builder("x", "http://h/v1?a=b")
            .build()
            .is_err()
    );
    assert!(AuthStyle::header("bad header").is_err());
    assert!(
        OpenAiProvider::builder("x", "https://api.openai.com/v1")
            .api_key(Secret::new("bad\nkey"))
            .build()
            .is_err()
    );
    let p = OpenAiProvider::builder("x", "https://api.openai.com/v1/")
        .build()
        .unwrap();
    assert_eq!(p.base_url(), "https://api.openai.com/v1");
    assert_eq!(p.kind(), "openai");
}

#[tokio::test]
async fn connect_timeout_covers_the_tls_handshake() {
    // A listener that never answers: TCP connects (the kernel accepts into the backlog) but the
    // TLS handshake never completes.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let p = OpenAiProvider::builder("silent", format!("https://127.0.0.1:{port}/v1"))
        .build()
        .unwrap();
    let mut c = chat("ok", false);
    c.connect_timeout = Some(Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(20), p.call(c))
        .await
        .expect("the connect deadline fired")
        .unwrap_err();
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(e.kind(), ErrorKind::UpstreamConnect);
    assert!(e.message().contains("timed out"), "{}", e.message());
    drop(silent);
}

#[tokio::test]
async fn dropping_a_stalled_stream_cancels_it_without_waiting_for_the_stall() {
    let server = MockServer::start().await.unwrap();
    let p = provider(&server);
    let res = p
        .call(chat("stall?phase=first_token&ms=60000", true))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    drop(res);
    let log = server.log();
    assert!(
        log.wait_until(Duration::from_secs(10), |l| l.streams_cancelled() == 1)
            .await,
        "the mock noticed the disconnect during its stall: {log:?}"
    );
}
