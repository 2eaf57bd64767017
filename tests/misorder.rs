//! Order is checked, fail closed: a layer that needs another layer's request extension and does
//! not find it answers 500 `misconfigured_stack` naming the missing layer, instead of serving
//! without that layer's protection. Stacks whose request type is `Incoming` are served on
//! 127.0.0.1:0; Route, Fallback and Timeout only accept a buffered `Request<Full<Bytes>>`
//! (putting them outside Parse in front of a hyper server does not compile), so their misorders
//! are driven in process with a buffered request.
//!
//! Also: deadlines by default (`Target::new` + `TimeoutLayer::new()`).

#[path = "limits_common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{client, send, serve};
use http_body_util::{BodyExt, Full};
use tollgate::auth::{AuthLayer, KeyEntry, StaticKeys, hash_key};
use tollgate::body::Body;
use tollgate::error::ErrorResponseLayer;
use tollgate::fallback::FallbackLayer;
use tollgate::meter::UsageMeterLayer;
use tollgate::provider::mock::MockProvider;
use tollgate::provider::{Dispatch, Provider};
use tollgate::ratelimit::{Limits, RateLimitLayer};
use tollgate::request::ParseLayer;
use tollgate::route::{ModelRoute, RouteHandle, RouteLayer, RouteTable};
use tollgate::stream::StreamPassthroughLayer;
use tollgate::target::{Target, Timeouts};
use tollgate::timeout::TimeoutLayer;
use tollgate::usage::UsageRecord;
use tower::{ServiceBuilder, ServiceExt};

const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const OPEN_KEY: &str = "sk-misorder-open-key-0001";
const LIMITED_KEY: &str = "sk-misorder-other-only-0002";

/// Two keys: one for any model, one limited to the model `other`.
fn keys() -> StaticKeys {
    StaticKeys::from_entries([
        KeyEntry::from_hash("open", &hash_key(OPEN_KEY))
            .unwrap()
            .key_id("open"),
        KeyEntry::from_hash("limited", &hash_key(LIMITED_KEY))
            .unwrap()
            .key_id("limited")
            .models(["other"]),
    ])
    .unwrap()
}

fn routes(upstream_model: &str) -> RouteHandle {
    let p: Arc<dyn Provider> = Arc::new(MockProvider::new("mock"));
    let t = Target::new(p, upstream_model).into_arc();
    RouteHandle::new(
        RouteTable::builder()
            .model(ModelRoute::new("m", vec![t]))
            .build()
            .unwrap(),
    )
}

fn buffered() -> http::Request<Full<Bytes>> {
    http::Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

/// Served on 127.0.0.1:0: (status, body) of one chat request with `key`.
async fn over_http<S>(svc: S, key: &str) -> (u16, String)
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let addr = serve(svc).await;
    let (status, _, text) = send(
        &client(),
        common::chat(addr, BODY, &[("authorization", &format!("Bearer {key}"))]),
    )
    .await;
    (status, text)
}

async fn in_process<S>(svc: S) -> (u16, String)
where
    S: tower::Service<
            http::Request<Full<Bytes>>,
            Response = http::Response<Body>,
            Error = std::convert::Infallible,
        >,
{
    let res = svc.oneshot(buffered()).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// 500, code `misconfigured_stack`, the message naming `missing`.
fn assert_misconfigured((status, text): (u16, String), missing: &str) {
    assert_eq!(status, 500, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "misconfigured_stack", "{text}");
    assert_eq!(v["error"]["type"], "server_error", "{text}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(missing), "the message names {missing}: {msg}");
}

/// Control: the documented order serves.
#[tokio::test]
async fn the_documented_order_serves() {
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(AuthLayer::new(keys()))
        .layer(RateLimitLayer::new().default_key_limits(Limits::new().requests_per_minute(100)))
        .layer(StreamPassthroughLayer::new())
        .layer(RouteLayer::new(routes("ok")))
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(Dispatch::new());
    assert_eq!(over_http(svc.clone(), OPEN_KEY).await.0, 200);
    // And the allow-list holds: the limited key may not use `m`.
    assert_eq!(over_http(svc, LIMITED_KEY).await.0, 403);
}

/// Auth outside Parse used to skip the per-key model allow-list (200 for a key limited to
/// another model). Now it refuses every request: without ParsedRequest it cannot check.
#[tokio::test]
async fn auth_outside_parse() {
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(AuthLayer::new(keys()))
        .layer(ParseLayer::new())
        .layer(RouteLayer::new(routes("ok")))
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(Dispatch::new());
    assert_misconfigured(over_http(svc.clone(), LIMITED_KEY).await, "ParseLayer");
    assert_misconfigured(over_http(svc, OPEN_KEY).await, "ParseLayer");
}

#[tokio::test]
async fn rate_limit_outside_parse() {
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(RateLimitLayer::new().global(Limits::new().requests_per_minute(100)))
        .layer(ParseLayer::new())
        .layer(RouteLayer::new(routes("ok")))
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(Dispatch::new());
    assert_misconfigured(over_http(svc, OPEN_KEY).await, "ParseLayer");
}

/// Per-key limits need the KeyIdentity Auth adds: RateLimit outside Auth would not apply them.
/// (Global and per-model limits alone work without Auth.)
#[tokio::test]
async fn rate_limit_with_key_limits_outside_auth() {
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(RateLimitLayer::new().default_key_limits(Limits::new().requests_per_minute(100)))
        .layer(AuthLayer::new(keys()))
        .layer(RouteLayer::new(routes("ok")))
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(Dispatch::new());
    assert_misconfigured(over_http(svc, OPEN_KEY).await, "AuthLayer");
}

#[tokio::test]
async fn route_outside_parse() {
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(RouteLayer::new(routes("ok")))
        .layer(ParseLayer::new())
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(Dispatch::new());
    assert_misconfigured(in_process(svc).await, "ParseLayer");
}

#[tokio::test]
async fn fallback_without_route() {
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(Dispatch::new());
    assert_misconfigured(over_http(svc, OPEN_KEY).await, "RouteLayer");
}

/// Timeout outside Fallback used to apply no deadline at all. The misconfiguration is logged
/// once (at error level, naming both layers), not once per request.
#[tokio::test]
async fn timeout_outside_fallback() {
    let log = common::LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(RouteLayer::new(routes("ok")))
        .layer(TimeoutLayer::new())
        .layer(FallbackLayer::new())
        .service(Dispatch::new());
    assert_misconfigured(over_http(svc.clone(), OPEN_KEY).await, "FallbackLayer");
    assert_misconfigured(over_http(svc, OPEN_KEY).await, "FallbackLayer");
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("misconfigured stack"))
        .collect();
    assert_eq!(lines.len(), 1, "logged once: {text}");
    assert!(
        lines[0].contains("ERROR") && lines[0].contains("FallbackLayer"),
        "{text}"
    );
    assert!(lines[0].contains("TimeoutLayer"), "{text}");
}

/// UsageMeter inside Auth is a lossy order, not a broken one (nothing is missing: the meter needs
/// only ParsedRequest), so it is not refused: Auth's refusals never reach the meter and get no
/// record, while served requests do. The documented place is right after Parse.
#[tokio::test]
async fn usage_meter_inside_auth_misses_refusals() {
    let records: Arc<Mutex<Vec<UsageRecord>>> = Arc::default();
    let r = records.clone();
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(AuthLayer::new(keys()))
        .layer(UsageMeterLayer::new().on_record(move |rec: &UsageRecord| {
            r.lock().unwrap().push(rec.clone());
        }))
        .layer(StreamPassthroughLayer::new())
        .layer(RouteLayer::new(routes("ok")))
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(Dispatch::new());
    assert_eq!(over_http(svc.clone(), "sk-unknown-key-000000").await.0, 401);
    assert_eq!(over_http(svc.clone(), LIMITED_KEY).await.0, 403);
    assert_eq!(over_http(svc, OPEN_KEY).await.0, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while records.lock().unwrap().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let recs = records.lock().unwrap();
    assert_eq!(
        recs.len(),
        1,
        "only the served request is recorded: {recs:?}"
    );
    assert_eq!(recs[0].status, 200);
}

/// Deadlines by default: `Target::new(..)` has the documented deadlines, so the README's stack
/// (no explicit timeouts) gives up on an upstream that never answers after the 60 s first-token
/// deadline (paused clock), with 504.
#[tokio::test(start_paused = true)]
async fn target_new_has_the_default_deadlines() {
    let p: Arc<dyn Provider> = Arc::new(MockProvider::new("mock"));
    let t = Target::new(p, "stall?phase=headers&ms=100000000");
    assert_eq!(t.timeouts, Timeouts::RECOMMENDED);
    let table = RouteTable::builder()
        .model(ModelRoute::new("m", vec![t.into_arc()]))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(RouteLayer::new(RouteHandle::new(table)))
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(Dispatch::new());
    let started = tokio::time::Instant::now();
    let (status, text) = in_process(svc).await;
    let waited = started.elapsed();
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("upstream_timeout"), "{text}");
    let first_token = Timeouts::RECOMMENDED.first_token.unwrap();
    assert!(
        waited >= first_token && waited < first_token + Duration::from_secs(1),
        "gave up after {waited:?}"
    );
}
