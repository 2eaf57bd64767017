//! Typed reports instead of a shared ledger: the layers work without the UsageMeter. Stacks with
//! no meter at all, served on 127.0.0.1:0 over the in-process mock provider:
//! - sticky-by-key splits route on the KeyIdentity Auth put in the request;
//! - RateLimit settles with the usage StreamPassthrough reported, when its body ends, and an
//!   exhausted fallback chain settles to zero.

#[path = "limits_common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::{T0, client, serve};
use http_body_util::BodyExt;
use tollgate::auth::{AuthLayer, KeyEntry, StaticKeys, hash_key};
use tollgate::error::ErrorResponseLayer;
use tollgate::fallback::FallbackLayer;
use tollgate::provider::mock::MockProvider;
use tollgate::provider::{Dispatch, Provider};
use tollgate::ratelimit::{LimitKind, Limits, MemoryStore, RateLimitLayer, Scope};
use tollgate::request::ParseLayer;
use tollgate::route::{ModelRoute, RouteHandle, RouteLayer, RouteTable, VARIANT_HEADER, Variant};
use tollgate::stream::StreamPassthroughLayer;
use tollgate::target::Target;
use tollgate::timeout::TimeoutLayer;
use tollgate::usage::Price;
use tower::ServiceBuilder;

/// 20 virtual keys: `sk-reports-00` … `sk-reports-19`.
fn key(i: usize) -> String {
    format!("sk-reports-test-key-{i:02}")
}

fn keys() -> StaticKeys {
    StaticKeys::from_entries((0..20).map(|i| {
        KeyEntry::from_hash(format!("k{i}"), &hash_key(&key(i)))
            .unwrap()
            .key_id(format!("k{i}"))
    }))
    .unwrap()
}

fn target(provider: &str, model: &str) -> Arc<Target> {
    let p: Arc<dyn Provider> = Arc::new(MockProvider::new(provider));
    Target::new(p, model).into_arc()
}

async fn post(
    c: &common::HttpClient,
    addr: std::net::SocketAddr,
    body: &str,
    key: &str,
) -> (u16, http::HeaderMap, String) {
    common::send(c, common::chat(addr, body, &[("x-api-key", key)])).await
}

#[tokio::test]
async fn sticky_split_by_key_without_a_meter() {
    // Parse · Auth · Route (a 50/50 split, sticky per key) · Fallback · Timeout · Dispatch.
    let table = RouteTable::builder()
        .model(
            ModelRoute::split(
                "canary",
                vec![
                    Variant::new("stable", 50, vec![target("pa", "ok")]),
                    Variant::new("new", 50, vec![target("pb", "ok")]),
                ],
            )
            .sticky(true),
        )
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(AuthLayer::new(keys()))
        .layer(RouteLayer::new(RouteHandle::new(table)))
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(Dispatch::new());
    let addr = serve(svc).await;
    let c = client();
    let body = r#"{"model":"canary","messages":[{"role":"user","content":"hi"}]}"#;

    // One key, 50 requests: always the same variant, served by that variant's target.
    let mut seen = BTreeSet::new();
    for i in 0..50 {
        let (status, h, text) = post(&c, addr, body, &key(0)).await;
        assert_eq!(status, 200, "request {i}: {text}");
        let v = h[VARIANT_HEADER].to_str().unwrap().to_owned();
        let want = if v == "stable" { "pa/ok" } else { "pb/ok" };
        assert_eq!(h["x-tollgate-target"], want);
        seen.insert(v);
    }
    assert_eq!(seen.len(), 1, "one key, one variant: {seen:?}");

    // Each of 20 keys sticks to its own variant; together they reach both.
    let mut by_key = BTreeMap::new();
    for k in 0..20 {
        for _ in 0..3 {
            let (status, h, _) = post(&c, addr, body, &key(k)).await;
            assert_eq!(status, 200);
            let v = h[VARIANT_HEADER].to_str().unwrap().to_owned();
            let first = by_key.entry(k).or_insert_with(|| v.clone());
            assert_eq!(*first, v, "key {k} moved between variants");
        }
    }
    let variants: BTreeSet<_> = by_key.values().cloned().collect();
    assert_eq!(
        variants.len(),
        2,
        "keys spread over both variants: {by_key:?}"
    );
}

const PRICE: Price = Price {
    input: 1_000_000,
    output: 2_000_000,
    cached_input: None,
    cache_write: None,
    per_image: None,
    per_character: None,
    per_second: None,
};

#[tokio::test]
async fn limits_settle_from_reports_without_a_meter() {
    // Parse · Auth · RateLimit · StreamPassthrough · Route · Fallback · Timeout · Dispatch.
    let table = RouteTable::builder()
        .model(ModelRoute::new(
            "m",
            vec![target("mock", "ok?delay_ms=300")],
        ))
        .model(ModelRoute::new(
            "down",
            vec![
                target("mock", "status?code=500"),
                target("mock2", "status?code=503"),
            ],
        ))
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let rl = RateLimitLayer::with_store(store.clone())
        .clock(|| T0)
        .prices(|_| Some(PRICE))
        .default_key_limits(
            Limits::new()
                .tokens_per_minute(1_000_000)
                .pico_per_day(u64::MAX / 2),
        );
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(AuthLayer::new(keys()))
        .layer(rl)
        .layer(StreamPassthroughLayer::new())
        .layer(RouteLayer::new(RouteHandle::new(table)))
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(Dispatch::new());
    let addr = serve(svc).await;
    let c = client();
    let scope = Scope::Key(Arc::from("k3"));
    let used = |kind| store.used(&scope, kind, T0);

    // A stream (300 ms between chunks): settled with the mock's exact usage (11 in, 6 out)
    // when it ends.
    let body = r#"{"model":"m","stream":true,"max_tokens":500,"messages":[{"role":"user","content":"hi"}]}"#;
    let res = c
        .request(common::chat(addr, body, &[("x-api-key", &key(3))]))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        used(LimitKind::Tokens) > 500,
        "reserved while the stream runs"
    );
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert!(text.ends_with(b"data: [DONE]\n\n"));
    let settled = || used(LimitKind::Tokens) == 17;
    for _ in 0..100 {
        if settled() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(used(LimitKind::Tokens), 17);
    assert_eq!(
        used(LimitKind::BudgetDay),
        11 * PRICE.input + 6 * PRICE.output
    );

    // A JSON answer: the same.
    let body = r#"{"model":"m","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, _) = post(&c, addr, body, &key(3)).await;
    assert_eq!(status, 200);
    for _ in 0..100 {
        if used(LimitKind::Tokens) == 34 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(used(LimitKind::Tokens), 34);

    // Every target of the chain fails: the exhausted chain costs nothing.
    let body = r#"{"model":"down","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, h, _) = post(&c, addr, body, &key(3)).await;
    assert!(status >= 500, "{status} {h:?}");
    assert_eq!(
        h["x-tollgate-attempts"]
            .to_str()
            .unwrap()
            .split(';')
            .count(),
        2
    );
    assert_eq!(used(LimitKind::Tokens), 34);
    assert_eq!(
        used(LimitKind::BudgetDay),
        2 * (11 * PRICE.input + 6 * PRICE.output)
    );
}
