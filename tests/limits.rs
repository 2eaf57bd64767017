//! RateLimit with the in-memory store: exactness under concurrent callers (RPM, TPM,
//! concurrency, budgets), headers, reserve-then-settle, disconnects, permits held until the
//! body ends, and the store failure policy.

#[path = "limits_common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tollgate::auth::{AuthLayer, KeyEntry, StaticKeys, hash_key};
use tollgate::body::Body;
use tollgate::error::{ErrorResponseLayer, GatewayError};
use tollgate::ratelimit::{
    Decision, FailurePolicy, LimitKind, LimitStore, Limits, MemoryStore, RateLimitLayer,
    ReserveRequest, Scope, Settlement, StoreError, StoreFuture, Ticket,
};
use tollgate::request::ParseLayer;
use tollgate::stream::StreamPassthroughLayer;
use tollgate::usage::Price;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceBuilder, ServiceExt};

const KEY: &str = "sk-tg-limits-test-key-000000000001";
const PRICE: Price = Price {
    input: 1_000_000,
    output: 2_000_000,
    cached_input: None,
    cache_write: None,
    per_image: None,
    per_character: None,
    per_second: None,
};

fn key_id() -> Arc<str> {
    Arc::from(&hash_key(KEY)[..12])
}

/// prompt estimate + max_tokens for `chat_body(model, max)`.
fn tokens_of(model: &str, max: u64) -> u64 {
    (chat_body(model, max).len() as u64).div_ceil(4) + max
}

fn cost_of(model: &str, max: u64) -> u64 {
    let p = (chat_body(model, max).len() as u64).div_ceil(4);
    p * PRICE.input + max * PRICE.output
}

fn layer(store: Arc<MemoryStore>) -> RateLimitLayer {
    RateLimitLayer::with_store(store)
        .clock(|| T0)
        .prices(|m| m.starts_with("gpt").then_some(PRICE))
}

type Svc = BoxCloneService<Request<Full<Bytes>>, http::Response<Body>, GatewayError>;

/// Auth -> RateLimit -> upstream (after Parse).
fn limited<U>(key_limits: Limits, rl: RateLimitLayer, up: U) -> Svc
where
    U: tower::Service<Request<Full<Bytes>>, Response = http::Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    U::Future: Send + 'static,
{
    let keys = StaticKeys::from_entries([KeyEntry::from_hash("team-a", &hash_key(KEY))
        .unwrap()
        .limits(key_limits)])
    .unwrap();
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(AuthLayer::new(keys))
            .layer(rl)
            .service(up),
    )
}

/// Parse -> Auth -> RateLimit -> upstream, in process.
fn stack(key_limits: Limits, rl: RateLimitLayer, up: Upstream) -> Svc {
    BoxCloneService::new(ParseLayer::new().layer(limited(key_limits, rl, up)))
}

/// The same behind the error edge on a real socket.
async fn gateway(key_limits: Limits, rl: RateLimitLayer, up: Upstream) -> std::net::SocketAddr {
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .service(limited(key_limits, rl, up));
    serve(svc).await
}

fn req(model: &str, max: u64) -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("x-api-key", KEY)
        .body(Full::new(Bytes::from(chat_body(model, max))))
        .unwrap()
}

/// Fire `n` requests at once from separate tasks; return their (status, headers, body).
async fn burst(
    addr: std::net::SocketAddr,
    n: usize,
    model: &str,
    max: u64,
) -> Vec<(u16, http::HeaderMap, String)> {
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let c = c.clone();
        let body = chat_body(model, max);
        tasks.push(tokio::spawn(async move {
            send(&c, chat(addr, &body, &[("x-api-key", KEY)])).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn count(results: &[(u16, http::HeaderMap, String)], status: u16) -> usize {
    results.iter().filter(|r| r.0 == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_exact_under_concurrency() {
    let up = Upstream::default();
    let addr = gateway(
        Limits::new().requests_per_minute(10),
        layer(Arc::new(MemoryStore::new())),
        up.clone(),
    )
    .await;
    let results = burst(addr, 50, "gpt-4o", 16).await;
    assert_eq!(count(&results, 200), 10);
    assert_eq!(count(&results, 429), 40);
    assert_eq!(up.seen.calls.load(Ordering::SeqCst), 10);
    let (_, h, body) = results.iter().find(|r| r.0 == 429).unwrap();
    assert_eq!(h["retry-after"], "59");
    assert_eq!(h["x-ratelimit-limit-requests"], "10");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert_eq!(h["x-ratelimit-reset-requests"], "59s");
    assert!(!h.contains_key("x-should-retry"));
    let j: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(j["error"]["code"], "rate_limit_exceeded");
    assert_eq!(j["error"]["type"], "rate_limit_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_exact_under_concurrency() {
    let per = tokens_of("gpt-4o", 100);
    let store = Arc::new(MemoryStore::new());
    let up = Upstream::default();
    let addr = gateway(
        Limits::new().tokens_per_minute(5 * per + per / 2),
        layer(store.clone()),
        up.clone(),
    )
    .await;
    let results = burst(addr, 30, "gpt-4o", 100).await;
    assert_eq!(count(&results, 200), 5);
    assert_eq!(up.seen.calls.load(Ordering::SeqCst), 5);
    // No tap: the reserved amounts stay charged.
    assert_eq!(
        store.used(&Scope::Key(key_id()), LimitKind::Tokens, T0),
        5 * per
    );
    let (_, h, _) = results.iter().find(|r| r.0 == 429).unwrap();
    assert_eq!(
        h["x-ratelimit-limit-tokens"],
        (5 * per + per / 2).to_string().as_str()
    );
    assert_eq!(
        h["x-ratelimit-remaining-tokens"],
        (per / 2).to_string().as_str()
    );
    assert_eq!(h["x-ratelimit-reset-tokens"], "59s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_exact_under_concurrency() {
    let gate = Arc::new(Semaphore::new(0));
    let up = Upstream {
        gate: Some(gate.clone()),
        ..Upstream::default()
    };
    let addr = gateway(
        Limits::new().concurrent_requests(3),
        layer(Arc::new(MemoryStore::new())),
        up.clone(),
    )
    .await;
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            send(
                &c,
                chat(addr, &chat_body("gpt-4o", 1), &[("x-api-key", KEY)]),
            )
            .await
        }));
    }
    // Refusals come back while three calls are stuck in the upstream.
    while tasks.iter().filter(|t| t.is_finished()).count() < 9 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(up.seen.calls.load(Ordering::SeqCst), 3);
    gate.add_permits(100);
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(count(&results, 200), 3);
    assert_eq!(count(&results, 429), 9);
    let (_, h, body) = results.iter().find(|r| r.0 == 429).unwrap();
    assert_eq!(h["retry-after"], "1");
    assert!(body.contains("concurrent"));
    // Slots are free again.
    let (s, _, _) = send(
        &c,
        chat(addr, &chat_body("gpt-4o", 1), &[("x-api-key", KEY)]),
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_exact_under_concurrency() {
    let cost = cost_of("gpt-4o", 50);
    let store = Arc::new(MemoryStore::new());
    let up = Upstream::default();
    let addr = gateway(
        Limits::new().pico_per_day(4 * cost + cost / 2),
        layer(store.clone()),
        up.clone(),
    )
    .await;
    let results = burst(addr, 20, "gpt-4o", 50).await;
    assert_eq!(count(&results, 200), 4);
    assert_eq!(up.seen.calls.load(Ordering::SeqCst), 4);
    assert_eq!(
        store.used(&Scope::Key(key_id()), LimitKind::BudgetDay, T0),
        4 * cost
    );
    let (_, h, body) = results.iter().find(|r| r.0 == 429).unwrap();
    assert_eq!(h["x-should-retry"], "false");
    // Until UTC midnight: T0 is 2026-11-25T16:14:01Z.
    assert_eq!(
        h["retry-after"],
        (86_400 - (16 * 3600 + 14 * 60 + 1)).to_string().as_str()
    );
    let j: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(j["error"]["type"], "insufficient_quota");
    assert_eq!(j["error"]["code"], "budget_exceeded");
    let msg = j["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("daily budget of key '{}'", key_id())),
        "{msg}"
    );
}

#[tokio::test]
async fn monthly_budget_named_and_unpriced_models_cost_nothing() {
    let cost = cost_of("gpt-4o", 10);
    let svc = stack(
        Limits::new().pico_per_month(cost),
        layer(Arc::new(MemoryStore::new())),
        Upstream::default(),
    );
    assert_eq!(
        svc.clone()
            .oneshot(req("gpt-4o", 10))
            .await
            .unwrap()
            .status(),
        200
    );
    let e = svc.clone().oneshot(req("gpt-4o", 10)).await.unwrap_err();
    assert_eq!(e.status(), 429);
    assert!(e.message().contains("monthly budget"), "{}", e.message());
    // "local-llama" has no price: a budget does not hold it back.
    assert_eq!(
        svc.clone()
            .oneshot(req("local-llama", 10))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn success_carries_ratelimit_headers() {
    let per = tokens_of("gpt-4o", 20);
    let svc = stack(
        Limits::new()
            .requests_per_minute(100)
            .tokens_per_minute(10_000),
        layer(Arc::new(MemoryStore::new())),
        Upstream::default(),
    );
    let res = svc.oneshot(req("gpt-4o", 20)).await.unwrap();
    let h = res.headers();
    assert_eq!(h["x-ratelimit-limit-requests"], "100");
    assert_eq!(h["x-ratelimit-remaining-requests"], "99");
    assert_eq!(h["x-ratelimit-reset-requests"], "59s");
    assert_eq!(h["x-ratelimit-limit-tokens"], "10000");
    assert_eq!(
        h["x-ratelimit-remaining-tokens"],
        (10_000 - per).to_string().as_str()
    );
    assert_eq!(h["x-ratelimit-reset-tokens"], "59s");
}

#[tokio::test]
async fn model_and_global_scopes() {
    let rl = layer(Arc::new(MemoryStore::new()))
        .model("gpt-4o", Limits::new().requests_per_minute(2))
        .global(Limits::new().requests_per_minute(3));
    let up = Upstream::default();
    let svc = stack(Limits::new(), rl, up.clone());
    for _ in 0..2 {
        assert_eq!(
            svc.clone()
                .oneshot(req("gpt-4o", 1))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let e = svc.clone().oneshot(req("gpt-4o", 1)).await.unwrap_err();
    assert!(e.message().contains("model 'gpt-4o'"), "{}", e.message());
    assert_eq!(
        svc.clone().oneshot(req("other", 1)).await.unwrap().status(),
        200
    );
    let e = svc.clone().oneshot(req("other", 1)).await.unwrap_err();
    assert!(e.message().contains("the gateway"), "{}", e.message());
    assert_eq!(up.seen.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn request_larger_than_the_limit_is_told_not_to_retry() {
    let svc = stack(
        Limits::new().tokens_per_minute(50),
        layer(Arc::new(MemoryStore::new())),
        Upstream::default(),
    );
    let e = svc.oneshot(req("gpt-4o", 100)).await.unwrap_err();
    assert_eq!(e.status(), 429);
    assert!(e.message().contains("lower max_tokens"));
    assert_eq!(e.headers()["x-should-retry"], "false");
}

/// Parse -> Auth -> RateLimit -> StreamPassthrough -> upstream: the stream layer reports the
/// answer's usage, RateLimit settles with it when its body ends. No UsageMeter.
fn reporting(key_limits: Limits, rl: RateLimitLayer, up: Upstream) -> Svc {
    let inner = limited(key_limits, rl, StreamPassthroughLayer::new().layer(up));
    BoxCloneService::new(ParseLayer::new().layer(inner))
}

fn stream_req(model: &str, max: u64) -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("x-api-key", KEY)
        .body(Full::new(Bytes::from(stream_body(model, max))))
        .unwrap()
}

fn stream_tokens_of(model: &str, max: u64) -> u64 {
    (stream_body(model, max).len() as u64).div_ceil(4) + max
}

fn stream_cost_of(model: &str, max: u64) -> u64 {
    let p = (stream_body(model, max).len() as u64).div_ceil(4);
    p * PRICE.input + max * PRICE.output
}

fn budget_limits() -> Limits {
    Limits::new()
        .tokens_per_minute(100_000)
        .pico_per_day(u64::MAX / 2)
}

#[tokio::test]
async fn json_answer_settles_with_its_usage_when_the_body_ends() {
    let store = Arc::new(MemoryStore::new());
    let scope = Scope::Key(key_id());
    let up = Upstream {
        usage: Some((12, 30)),
        ..Upstream::default()
    };
    let svc = reporting(budget_limits(), layer(store.clone()), up);
    let res = svc.oneshot(req("gpt-4o", 500)).await.unwrap();
    assert_eq!(res.status(), 200);
    // Reserved until the answer has been read.
    assert_eq!(
        store.used(&scope, LimitKind::Tokens, T0),
        tokens_of("gpt-4o", 500)
    );
    assert_eq!(
        store.used(&scope, LimitKind::BudgetDay, T0),
        cost_of("gpt-4o", 500)
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"\"total_tokens\":42}}"));
    // Settled with the exact usage: the difference refunded at once.
    assert_eq!(store.used(&scope, LimitKind::Tokens, T0), 42);
    assert_eq!(
        store.used(&scope, LimitKind::BudgetDay, T0),
        12 * PRICE.input + 30 * PRICE.output
    );
}

#[tokio::test]
async fn stream_settles_with_its_usage_when_it_ends_and_holds_its_permit_until_then() {
    let store = Arc::new(MemoryStore::new());
    let scope = Scope::Key(key_id());
    let up = Upstream {
        hold_body: true,
        usage: Some((12, 30)),
        ..Upstream::default()
    };
    let svc = reporting(
        budget_limits().concurrent_requests(1),
        layer(store.clone()),
        up.clone(),
    );
    let res = svc
        .clone()
        .oneshot(stream_req("gpt-4o", 500))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    // The content event and [DONE] arrive (the usage chunk is stripped: not asked for); the
    // upstream has not closed the stream yet.
    let mut got = Vec::new();
    while !got.ends_with(b"data: [DONE]\n\n") {
        let f = body.frame().await.unwrap().unwrap();
        got.extend_from_slice(&f.into_data().unwrap());
    }
    assert!(!String::from_utf8_lossy(&got).contains("prompt_tokens"));
    // Still open: reserved, and the concurrency slot taken.
    let reserved = stream_tokens_of("gpt-4o", 500);
    assert_eq!(store.used(&scope, LimitKind::Tokens, T0), reserved);
    assert_eq!(
        store.used(&scope, LimitKind::BudgetDay, T0),
        stream_cost_of("gpt-4o", 500)
    );
    let second = svc.clone().oneshot(stream_req("gpt-4o", 1)).await;
    assert_eq!(second.unwrap_err().status(), 429);
    // The upstream ends the stream: settled with the real usage, the slot released.
    up.seen.open.lock().unwrap().clear();
    assert!(body.frame().await.is_none());
    assert_eq!(store.used(&scope, LimitKind::Tokens, T0), 42);
    assert_eq!(
        store.used(&scope, LimitKind::BudgetDay, T0),
        12 * PRICE.input + 30 * PRICE.output
    );
    let third = svc.oneshot(stream_req("gpt-4o", 1)).await.unwrap();
    assert_eq!(third.status(), 200);
}

#[tokio::test]
async fn disconnect_without_usage_settles_the_reserved_amount() {
    let store = Arc::new(MemoryStore::new());
    let scope = Scope::Key(key_id());
    let up = Upstream {
        hold_body: true,
        ..Upstream::default()
    };
    let svc = reporting(budget_limits(), layer(store.clone()), up);
    let res = svc.clone().oneshot(stream_req("gpt-4o", 300)).await;
    drop(res);
    let reserved = stream_tokens_of("gpt-4o", 300);
    assert!(reserved > 0);
    assert_eq!(store.used(&scope, LimitKind::Tokens, T0), reserved);
    assert_eq!(
        store.used(&scope, LimitKind::BudgetDay, T0),
        stream_cost_of("gpt-4o", 300)
    );

    // A disconnect after the upstream reported settles what it reported.
    let up = Upstream {
        hold_body: true,
        usage: Some((10, 7)),
        ..Upstream::default()
    };
    let svc = reporting(budget_limits(), layer(store.clone()), up);
    let res = svc.oneshot(stream_req("gpt-4o", 300)).await.unwrap();
    let mut body = res.into_body();
    let mut got = Vec::new();
    while !got.ends_with(b"data: [DONE]\n\n") {
        let f = body.frame().await.unwrap().unwrap();
        got.extend_from_slice(&f.into_data().unwrap());
    }
    assert_eq!(store.used(&scope, LimitKind::Tokens, T0), 2 * reserved);
    drop(body);
    assert_eq!(store.used(&scope, LimitKind::Tokens, T0), reserved + 17);
}

#[tokio::test]
async fn refusals_and_upstream_failures_settle_to_zero() {
    let store = Arc::new(MemoryStore::new());
    let scope = Scope::Key(key_id());
    for e in [
        tollgate::route::model_not_found("gpt-4o-nope"),
        GatewayError::upstream_status(http::StatusCode::BAD_GATEWAY, "down", None),
        GatewayError::upstream_status(http::StatusCode::TOO_MANY_REQUESTS, "slow down", None),
    ] {
        let up = Upstream {
            fail: Some(e.clone()),
            ..Upstream::default()
        };
        let svc = reporting(budget_limits(), layer(store.clone()), up);
        let got = svc.oneshot(req("gpt-4o", 300)).await.unwrap_err();
        assert_eq!(got.kind(), e.kind());
        assert_eq!(store.used(&scope, LimitKind::Tokens, T0), 0, "{e:?}");
        assert_eq!(store.used(&scope, LimitKind::BudgetDay, T0), 0, "{e:?}");
    }
    // A deadline may have been billed upstream: the reservation is kept.
    let up = Upstream {
        fail: Some(GatewayError::new(
            tollgate::error::ErrorKind::UpstreamTimeout,
            "first token",
        )),
        ..Upstream::default()
    };
    let svc = reporting(budget_limits(), layer(store.clone()), up);
    let _ = svc.oneshot(req("gpt-4o", 300)).await.unwrap_err();
    assert_eq!(
        store.used(&scope, LimitKind::Tokens, T0),
        tokens_of("gpt-4o", 300)
    );
}

#[tokio::test]
async fn permit_held_until_the_body_ends() {
    let up = Upstream {
        hold_body: true,
        ..Upstream::default()
    };
    let addr = gateway(
        Limits::new().concurrent_requests(1),
        layer(Arc::new(MemoryStore::new())),
        up.clone(),
    )
    .await;
    let c = client();
    let first = c
        .request(chat(addr, &chat_body("gpt-4o", 1), &[("x-api-key", KEY)]))
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    // Headers are out, the body is still streaming: the slot is taken.
    let (s, _, _) = send(
        &c,
        chat(addr, &chat_body("gpt-4o", 1), &[("x-api-key", KEY)]),
    )
    .await;
    assert_eq!(s, 429);
    // End the stream; the client reads it to the end.
    up.seen.open.lock().unwrap().clear();
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"data: {}\n\n");
    let third = c
        .request(chat(addr, &chat_body("gpt-4o", 1), &[("x-api-key", KEY)]))
        .await
        .unwrap();
    assert_eq!(third.status(), 200);
    assert_eq!(up.seen.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn permit_released_when_the_response_is_dropped() {
    let up = Upstream {
        hold_body: true,
        ..Upstream::default()
    };
    let svc = stack(
        Limits::new().concurrent_requests(1),
        layer(Arc::new(MemoryStore::new())),
        up,
    );
    let first = svc.clone().oneshot(req("gpt-4o", 1)).await.unwrap();
    let second = svc.clone().oneshot(req("gpt-4o", 1)).await;
    assert_eq!(second.unwrap_err().status(), 429);
    drop(first); // the client went away: the body, and with it the permit, is gone
    let third = svc.oneshot(req("gpt-4o", 1)).await;
    assert_eq!(third.unwrap().status(), 200);
}

/// A store that is always down.
struct Down;
impl LimitStore for Down {
    fn reserve(&self, _: ReserveRequest) -> StoreFuture<Result<Decision, StoreError>> {
        StoreFuture::ready(Err(StoreError("down".into())))
    }
    fn settle(&self, _: Ticket, _: Option<Settlement>) -> StoreFuture<Result<(), StoreError>> {
        StoreFuture::ready(Err(StoreError("down".into())))
    }
}

#[test]
fn store_failure_policy_open_and_closed() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (policy, want) in [(FailurePolicy::Open, 200), (FailurePolicy::Closed, 503)] {
        let up = Upstream::default();
        let rl = RateLimitLayer::with_store(Arc::new(Down)).failure_policy(policy);
        let svc = ServiceBuilder::new()
            .layer(ErrorResponseLayer::new())
            .service(stack(Limits::new().requests_per_minute(1), rl, up.clone()));
        // The recorder is thread-local: drive the whole call on this thread.
        let res: Result<http::Response<Body>, Infallible> =
            metrics::with_local_recorder(&recorder, || rt.block_on(svc.oneshot(req("gpt-4o", 1))));
        let res = res.unwrap();
        assert_eq!(res.status(), want, "{policy:?}");
        assert_eq!(
            up.seen.calls.load(Ordering::SeqCst),
            usize::from(want == 200)
        );
        if want == 503 {
            assert_eq!(res.headers()["retry-after"], "1");
        }
    }
    let errors: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == tollgate::ratelimit::STORE_ERRORS_TOTAL)
        .map(|(.., v)| match v {
            metrics_util::debugging::DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(errors, 2);
}
