//! A library user's crate, as issue 11 asks: the layers stacked in an axum `Router` next to the
//! user's own routes, around the user's own leaf `tower::Service` (no tollgate provider) and
//! with the user's own key validator. It streams, falls back and writes records.
//!
//! The part between the `user code` markers is what a user writes: 93 lines as rustfmt lays
//! them out, imports included, using only public, documented modules of tollgate (the leaf's
//! targets come from [`Target::for_leaf`]). The tests below it serve the `Router` with
//! `axum::serve` on 127.0.0.1:0 and talk to it over a real socket.

mod common;

// ---- user code begins (93 lines, under 100) ----
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{Router, routing::get};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::{Full, StreamBody};
use hyper::body::Frame;
use tollgate::auth::{AuthLayer, KeyIdentity, KeyValidator, ValidateFuture};
use tollgate::body::Body;
use tollgate::error::{ErrorResponseLayer, GatewayError};
use tollgate::ext::Attempt;
use tollgate::route::{ModelRoute, RouteHandle, RouteLayer, RouteTable};
use tollgate::secret::Secret;
use tollgate::usage::UsageRecord;
use tollgate::{fallback::FallbackLayer, meter::UsageMeterLayer, request::ParseLayer};
use tollgate::{stream::StreamPassthroughLayer, target::Target, timeout::TimeoutLayer};
use tower::{ServiceBuilder, service_fn};

/// My key store: one key, `team-a`.
struct MyKeys;
impl KeyValidator for MyKeys {
    fn validate(&self, key: Secret) -> ValidateFuture {
        let known = key.expose() == "sk-my-team-a";
        Box::pin(async move { Ok(known.then(|| KeyIdentity::new("team-a", "Team A"))) })
    }
}

/// My leaf: the `busy` cluster answers 503; the other streams four chunks, then `[DONE]`.
async fn my_leaf(req: Request<Full<Bytes>>) -> Result<Response<Body>, GatewayError> {
    let attempt = req.extensions().get::<Attempt>().cloned();
    let target = attempt
        .ok_or_else(|| GatewayError::internal("no Attempt"))?
        .target;
    if &*target.upstream_model == "busy" {
        let provider = Some(target.provider.name().into());
        return Err(GatewayError::upstream_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            provider,
        ));
    }
    let chunk = |delta: &str| {
        format!(
            r#"data: {{"object":"chat.completion.chunk","choices":[{{"index":0,"delta":{delta}}}]}}"#
        ) + "\n\n"
    };
    let usage = r#"data: {"object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}"#;
    let events = [
        chunk(r#"{"role":"assistant","content":"Hel"}"#),
        chunk(r#"{"content":"lo"}"#),
        chunk(r#"{"content":"!"}"#),
        format!("{usage}\n\n"),
        "data: [DONE]\n\n".to_owned(),
    ];
    let frames = futures_util::stream::iter(events).then(|event| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, Infallible>(Frame::data(Bytes::from(event)))
    });
    let mut res = Response::new(Body::new(StreamBody::new(frames)));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    Ok(res)
}

/// My app: my own route, and tollgate's stack on `/v1/chat/completions`.
pub fn my_app(records: Arc<Mutex<Vec<UsageRecord>>>) -> Router {
    let targets = vec![
        Target::for_leaf("edge", "busy").into_arc(),
        Target::for_leaf("main", "llama").into_arc(),
    ];
    let table = RouteTable::builder()
        .model(ModelRoute::new("my-model", targets))
        .build()
        .expect("valid routes");
    let meter = UsageMeterLayer::new()
        .on_record(move |r: &UsageRecord| records.lock().unwrap().push(r.clone()));
    let gateway = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(meter)
        .layer(AuthLayer::new(MyKeys))
        .layer(StreamPassthroughLayer::new())
        .layer(RouteLayer::new(RouteHandle::new(table)))
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(service_fn(my_leaf));
    Router::new()
        .route("/hello", get(|| async { "hello from my app" }))
        .route_service("/v1/chat/completions", gateway)
}
// ---- user code ends ----

/// Serve `app` with axum on 127.0.0.1:0.
async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Wait (at most 5 s) until `n` records were written.
async fn records_after(records: &Mutex<Vec<UsageRecord>>, n: usize) -> Vec<UsageRecord> {
    for _ in 0..500 {
        if records.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    records.lock().unwrap().clone()
}

const STREAM: &str =
    r#"{"model":"my-model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn own_route_next_to_the_stack() {
    let records = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(my_app(records.clone())).await;
    let res = common::send(addr, "GET", "/hello", &[], Bytes::new()).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.rest().await, "hello from my app");
    let res = common::send(addr, "GET", "/nowhere", &[], Bytes::new()).await;
    assert_eq!(res.status, 404, "axum's own 404 for an unknown route");
    // Neither went through the stack: no usage record.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(records.lock().unwrap().is_empty());
}

#[tokio::test]
async fn streams_falls_back_and_writes_one_record_per_request() {
    let records = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(my_app(records.clone())).await;

    let mut res = common::chat(addr, STREAM, &[("authorization", "Bearer sk-my-team-a")]).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["content-type"], "text/event-stream");
    // Fell back: edge/busy answered 503, main/llama served.
    let attempts: Vec<&str> = res.headers["x-tollgate-attempts"]
        .to_str()
        .unwrap()
        .split(';')
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(attempts[0].starts_with("edge/busy/503/"), "{attempts:?}");
    assert!(attempts[1].starts_with("main/llama/200/"), "{attempts:?}");
    assert_eq!(res.headers["x-tollgate-target"], "main/llama");

    // Streamed: several body frames, each carrying SSE events, as the leaf sent them.
    let (mut frames, mut text) = (0, String::new());
    while let Some(data) = res.next_data().await {
        frames += 1;
        text.push_str(std::str::from_utf8(&data).unwrap());
    }
    assert!(frames >= 3, "{frames} frames: {text}");
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{text}");
    let content: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(e.strip_prefix("data: ").unwrap())
                .unwrap_or_else(|err| panic!("not an SSE data event ({err}): {e}"));
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(content, "Hello!");
    assert!(
        !text.contains("\"usage\""),
        "the usage chunk the client did not ask for is stripped: {text}"
    );

    // A bad key: 401 from the user's validator, before any leaf call.
    let res = common::chat(addr, STREAM, &[("authorization", "Bearer sk-wrong")]).await;
    assert_eq!(res.status, 401);
    assert!(res.headers.get("x-tollgate-attempts").is_none());
    let body = res.json().await;
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");

    // One record per request: the stream's with the exact usage and the key, the refusal's.
    let records = records_after(&records, 2).await;
    assert_eq!(records.len(), 2, "{records:#?}");
    let served = records
        .iter()
        .find(|r| r.status == 200)
        .expect("the stream's record");
    assert_eq!(served.key_id.as_deref(), Some("team-a"));
    assert_eq!(served.model, "my-model");
    assert_eq!(served.provider.as_deref(), Some("main"));
    assert_eq!(served.upstream_model.as_deref(), Some("llama"));
    assert_eq!(served.attempts, 2);
    assert!(served.stream);
    assert_eq!(served.outcome, tollgate::usage::Outcome::Success);
    assert_eq!(served.usage_source, tollgate::usage::UsageSource::Upstream);
    assert_eq!(
        (
            served.usage.prompt_tokens,
            served.usage.completion_tokens,
            served.usage.total_tokens
        ),
        (11, 3, 14)
    );
    let refused = records
        .iter()
        .find(|r| r.status == 401)
        .expect("the refusal's record");
    assert_eq!(refused.outcome, tollgate::usage::Outcome::Refused);
    assert_eq!(refused.key_id, None);
    assert_eq!(refused.attempts, 0);
}

/// Honest placeholder: a `Target::for_leaf` target that reaches tollgate's own `Dispatch`
/// (instead of the user's leaf) fails with a 500 naming it, never a silent call.
#[tokio::test]
async fn a_leaf_target_under_dispatch_is_refused() {
    use tower::ServiceExt;
    let table = RouteTable::builder()
        .model(ModelRoute::new(
            "my-model",
            vec![Target::for_leaf("main", "llama").into_arc()],
        ))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(RouteLayer::new(RouteHandle::new(table)))
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(tollgate::provider::Dispatch::new());
    let req = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(STREAM.as_bytes())))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 500);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("main/llama"), "{body}");
    assert!(body.contains("Target::for_leaf"), "{body}");
}
