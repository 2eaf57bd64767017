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
        .header("authorization", format!("Bearer {OPEN_KEY}"))
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

/// UsageMeter inside Auth used to be a lossy order (Auth's refusals got no record). Now it is
/// refused like any other misorder, and the meter still records the refusal it answers.
#[tokio::test]
async fn usage_meter_inside_auth() {
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
    let out = over_http(svc.clone(), OPEN_KEY).await;
    assert_misconfigured(out, "UsageMeterLayer");
    assert_misconfigured(over_http(svc, OPEN_KEY).await, "AuthLayer");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while records.lock().unwrap().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recs = records.lock().unwrap();
    assert_eq!(recs.len(), 2, "each refusal is recorded: {recs:?}");
    assert!(recs.iter().all(|r| r.status == 500), "{recs:?}");
}

/// Every pair of the eight checked layers, placed in the wrong order (the two swapped, the
/// others in their documented places), answers 500 `misconfigured_stack` naming one of the two.
/// One test per pair. (ErrorResponse inside any layer does not compile: see the `compile_fail`
/// doctests on [`tollgate::error::ErrorResponseLayer`].)
mod every_pair {
    use super::*;

    macro_rules! layer {
        (Parse) => {
            ParseLayer::new()
        };
        (UsageMeter) => {
            UsageMeterLayer::new()
        };
        (Auth) => {
            AuthLayer::new(keys())
        };
        (RateLimit) => {
            RateLimitLayer::new().default_key_limits(Limits::new().requests_per_minute(100))
        };
        (StreamPassthrough) => {
            StreamPassthroughLayer::new()
        };
        (Route) => {
            RouteLayer::new(routes("ok"))
        };
        (Fallback) => {
            FallbackLayer::new()
        };
        (Timeout) => {
            TimeoutLayer::new()
        };
    }

    /// `$name`: the stack `$l…` (outside in) is refused naming `$a` or `$b`, the swapped pair.
    macro_rules! pair {
        ($name:ident, $a:ident, $b:ident: $($l:ident),+) => {
            #[tokio::test]
            async fn $name() {
                let svc = ServiceBuilder::new()
                    .layer(ErrorResponseLayer::new())
                    $(.layer(layer!($l)))+
                    .service(Dispatch::new());
                let (status, text) = in_process(svc).await;
                assert_misconfigured_either(
                    (status, text),
                    concat!(stringify!($a), "Layer"),
                    concat!(stringify!($b), "Layer"),
                );
            }
        };
    }

    fn assert_misconfigured_either((status, text): (u16, String), a: &str, b: &str) {
        assert_eq!(status, 500, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "misconfigured_stack", "{text}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(a) || msg.contains(b),
            "names {a} or {b}: {msg}"
        );
    }

    /// Control: the documented order of the same eight layers serves.
    #[tokio::test]
    async fn the_documented_order_of_all_eight_serves() {
        let svc = ServiceBuilder::new()
            .layer(ErrorResponseLayer::new())
            .layer(layer!(Parse))
            .layer(layer!(UsageMeter))
            .layer(layer!(Auth))
            .layer(layer!(RateLimit))
            .layer(layer!(StreamPassthrough))
            .layer(layer!(Route))
            .layer(layer!(Fallback))
            .layer(layer!(Timeout))
            .service(Dispatch::new());
        let (status, text) = in_process(svc).await;
        assert_eq!(status, 200, "{text}");
    }

    pair!(usage_meter_outside_parse, Parse, UsageMeter: UsageMeter, Parse, Auth, RateLimit, StreamPassthrough, Route, Fallback, Timeout);
    pair!(auth_outside_parse, Parse, Auth: Auth, UsageMeter, Parse, RateLimit, StreamPassthrough, Route, Fallback, Timeout);
    pair!(rate_limit_outside_parse, Parse, RateLimit: RateLimit, UsageMeter, Auth, Parse, StreamPassthrough, Route, Fallback, Timeout);
    pair!(stream_passthrough_outside_parse, Parse, StreamPassthrough: StreamPassthrough, UsageMeter, Auth, RateLimit, Parse, Route, Fallback, Timeout);
    pair!(route_outside_parse, Parse, Route: Route, UsageMeter, Auth, RateLimit, StreamPassthrough, Parse, Fallback, Timeout);
    pair!(fallback_outside_parse, Parse, Fallback: Fallback, UsageMeter, Auth, RateLimit, StreamPassthrough, Route, Parse, Timeout);
    pair!(timeout_outside_parse, Parse, Timeout: Timeout, UsageMeter, Auth, RateLimit, StreamPassthrough, Route, Fallback, Parse);
    pair!(auth_outside_usage_meter, UsageMeter, Auth: Parse, Auth, UsageMeter, RateLimit, StreamPassthrough, Route, Fallback, Timeout);
    pair!(rate_limit_outside_usage_meter, UsageMeter, RateLimit: Parse, RateLimit, Auth, UsageMeter, StreamPassthrough, Route, Fallback, Timeout);
    pair!(stream_passthrough_outside_usage_meter, UsageMeter, StreamPassthrough: Parse, StreamPassthrough, Auth, RateLimit, UsageMeter, Route, Fallback, Timeout);
    pair!(route_outside_usage_meter, UsageMeter, Route: Parse, Route, Auth, RateLimit, StreamPassthrough, UsageMeter, Fallback, Timeout);
    pair!(fallback_outside_usage_meter, UsageMeter, Fallback: Parse, Fallback, Auth, RateLimit, StreamPassthrough, Route, UsageMeter, Timeout);
    pair!(timeout_outside_usage_meter, UsageMeter, Timeout: Parse, Timeout, Auth, RateLimit, StreamPassthrough, Route, Fallback, UsageMeter);
    pair!(rate_limit_outside_auth, Auth, RateLimit: Parse, UsageMeter, RateLimit, Auth, StreamPassthrough, Route, Fallback, Timeout);
    pair!(stream_passthrough_outside_auth, Auth, StreamPassthrough: Parse, UsageMeter, StreamPassthrough, RateLimit, Auth, Route, Fallback, Timeout);
    pair!(route_outside_auth, Auth, Route: Parse, UsageMeter, Route, RateLimit, StreamPassthrough, Auth, Fallback, Timeout);
    pair!(fallback_outside_auth, Auth, Fallback: Parse, UsageMeter, Fallback, RateLimit, StreamPassthrough, Route, Auth, Timeout);
    pair!(timeout_outside_auth, Auth, Timeout: Parse, UsageMeter, Timeout, RateLimit, StreamPassthrough, Route, Fallback, Auth);
    pair!(stream_passthrough_outside_rate_limit, RateLimit, StreamPassthrough: Parse, UsageMeter, Auth, StreamPassthrough, RateLimit, Route, Fallback, Timeout);
    pair!(route_outside_rate_limit, RateLimit, Route: Parse, UsageMeter, Auth, Route, StreamPassthrough, RateLimit, Fallback, Timeout);
    pair!(fallback_outside_rate_limit, RateLimit, Fallback: Parse, UsageMeter, Auth, Fallback, StreamPassthrough, Route, RateLimit, Timeout);
    pair!(timeout_outside_rate_limit, RateLimit, Timeout: Parse, UsageMeter, Auth, Timeout, StreamPassthrough, Route, Fallback, RateLimit);
    pair!(route_outside_stream_passthrough, StreamPassthrough, Route: Parse, UsageMeter, Auth, RateLimit, Route, StreamPassthrough, Fallback, Timeout);
    pair!(fallback_outside_stream_passthrough, StreamPassthrough, Fallback: Parse, UsageMeter, Auth, RateLimit, Fallback, Route, StreamPassthrough, Timeout);
    pair!(timeout_outside_stream_passthrough, StreamPassthrough, Timeout: Parse, UsageMeter, Auth, RateLimit, Timeout, Route, Fallback, StreamPassthrough);
    pair!(fallback_outside_route, Route, Fallback: Parse, UsageMeter, Auth, RateLimit, StreamPassthrough, Fallback, Route, Timeout);
    pair!(timeout_outside_route, Route, Timeout: Parse, UsageMeter, Auth, RateLimit, StreamPassthrough, Timeout, Fallback, Route);
    pair!(timeout_outside_fallback, Fallback, Timeout: Parse, UsageMeter, Auth, RateLimit, StreamPassthrough, Route, Timeout, Fallback);
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
