//! Limiter overhead per request: the in-memory store's check-and-reserve + settle, the whole
//! RateLimit layer around a trivial service, and (with `--features redis`) the Redis store's
//! round trips against 127.0.0.1:6379 (skipped with a notice when no server is there).
//!
//! `cargo bench --bench limits [--features redis]`

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::Full;
use tollgate::auth::KeyIdentity;
use tollgate::body::Body;
use tollgate::error::GatewayError;
use tollgate::ratelimit::{
    Decision, Limits, MemoryStore, RateLimitLayer, ReserveRequest, Scope, Settlement,
};
use tollgate::request::{Api, ParsedRequest};
use tollgate::usage::Price;
use tower::{Layer, Service, ServiceExt};

fn main() {
    divan::main();
}

const BIG: u64 = u64::MAX / 4;

fn big() -> Limits {
    Limits::new()
        .requests_per_minute(BIG)
        .tokens_per_minute(BIG)
        .concurrent_requests(BIG)
        .pico_per_day(BIG)
        .pico_per_month(BIG)
}

fn scopes() -> Vec<(Scope, Limits)> {
    vec![
        (Scope::Key(Arc::from("team-a")), big()),
        (
            Scope::Model(Arc::from("gpt-4o")),
            Limits::new().tokens_per_minute(BIG),
        ),
        (Scope::Global, Limits::new().concurrent_requests(BIG)),
    ]
}

/// Check-and-reserve of 7 counters in 3 scopes, then settle with exact usage.
#[divan::bench]
fn memory_store_reserve_settle(b: divan::Bencher) {
    let store = MemoryStore::new();
    let now = 1_795_623_241_000;
    b.bench_local(|| {
        let req = ReserveRequest {
            now_ms: now,
            scopes: scopes(),
            tokens: 600,
            cost_pico: 9_000,
        };
        if let Decision::Admitted { ticket, .. } = store.reserve_now(divan::black_box(req)) {
            store.settle_now(
                &ticket,
                Some(Settlement {
                    tokens: 100,
                    cost_pico: 1_000,
                }),
            );
        }
    });
}

fn parsed() -> ParsedRequest {
    let body = Bytes::from_static(
        br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello there"}],"max_tokens":256}"#,
    );
    ParsedRequest {
        api: Api::ChatCompletions,
        model: Arc::from("gpt-4o"),
        stream: false,
        wants_usage: false,
        max_tokens: Some(256),
        has_tools: false,
        has_images: false,
        json_mode: false,
        fallback_models: None,
        base64_embeddings: false,
        upstream_include_usage: false,
        units: Default::default(),
        body,
        layout: Default::default(),
        received_at: Instant::now(),
    }
}

fn request(parsed: &ParsedRequest, id: &KeyIdentity) -> Request<Full<Bytes>> {
    let mut r = Request::new(Full::new(Bytes::new()));
    r.extensions_mut().insert(parsed.clone());
    r.extensions_mut().insert(id.clone());
    r
}

fn inner() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Body>,
    Error = GatewayError,
    Future = std::future::Ready<Result<Response<Body>, GatewayError>>,
> + Clone {
    tower::service_fn(|_r: Request<Full<Bytes>>| {
        std::future::ready(Ok(Response::new(Body::empty())))
    })
}

/// The trivial inner service alone (the baseline to subtract).
#[divan::bench]
fn baseline_inner_call(b: divan::Bencher) {
    let p = parsed();
    let id = KeyIdentity::new("team-a", "team-a");
    let mut svc = inner();
    b.bench_local(|| {
        let req = request(&p, &id);
        let res = svc
            .ready()
            .now_or_never()
            .and_then(|s| s.ok())
            .map(|s| s.call(req));
        drop(divan::black_box(res.and_then(|f| f.now_or_never())));
    });
}

/// The RateLimit layer (memory store; key, model and global scopes; priced) around the
/// trivial service: reserve, call, headers, body wrapper, release on drop.
#[divan::bench]
fn memory_layer_per_request(b: divan::Bencher) {
    let p = parsed();
    let id = KeyIdentity::new("team-a", "team-a").with_limits(big());
    let layer = RateLimitLayer::new()
        .model("gpt-4o", Limits::new().tokens_per_minute(BIG))
        .global(Limits::new().concurrent_requests(BIG))
        .prices(|_| Some(Price::from_usd_per_mtok(2.5, 10.0)));
    let mut svc = layer.layer(inner());
    b.bench_local(|| {
        let req = request(&p, &id);
        let res = svc
            .ready()
            .now_or_never()
            .and_then(|s| s.ok())
            .map(|s| s.call(req));
        drop(divan::black_box(res.and_then(|f| f.now_or_never())));
    });
}

#[cfg(feature = "redis")]
mod redis_store {
    use super::*;
    use tollgate::ratelimit::{RedisConfig, RedisStore};

    fn setup() -> Option<(tokio::runtime::Runtime, RedisStore)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let store = RedisStore::new(
            RedisConfig::new("redis://127.0.0.1:6379/")
                .prefix(format!("tgbench-{}", std::process::id())),
        )
        .ok()?;
        match rt.block_on(store.connect()) {
            Ok(()) => Some((rt, store)),
            Err(_) => {
                println!("SKIPPED: redis-server not reachable");
                None
            }
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// One check-and-reserve round trip (7 counters, 3 scopes).
    #[divan::bench]
    fn redis_reserve(b: divan::Bencher) {
        let Some((rt, store)) = setup() else { return };
        b.bench_local(|| {
            let req = ReserveRequest {
                now_ms: now(),
                scopes: vec![(
                    Scope::Key(Arc::from("team-a")),
                    Limits::new()
                        .requests_per_minute(BIG)
                        .tokens_per_minute(BIG)
                        .pico_per_day(BIG),
                )],
                tokens: 600,
                cost_pico: 9_000,
            };
            drop(divan::black_box(rt.block_on(store.reserve_async(req))));
        });
    }

    /// Reserve + settle: two round trips per request (one each).
    #[divan::bench]
    fn redis_reserve_settle(b: divan::Bencher) {
        let Some((rt, store)) = setup() else { return };
        b.bench_local(|| {
            let req = ReserveRequest {
                now_ms: now(),
                scopes: scopes(),
                tokens: 600,
                cost_pico: 9_000,
            };
            rt.block_on(async {
                if let Ok(Decision::Admitted { ticket, .. }) = store.reserve_async(req).await {
                    let _ = store
                        .settle_async(
                            ticket,
                            Some(Settlement {
                                tokens: 100,
                                cost_pico: 1_000,
                            }),
                        )
                        .await;
                }
            });
        });
    }
}
