//! Route + Fallback (+ Timeout) bookkeeping on the happy path, against the bare provider call.
//!
//! `cargo bench --bench route`. The provider answers at once (in-process), so the difference
//! between `bare_dispatch` and the stacked variants is what routing and fallback add.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use divan::Bencher;
use futures_util::FutureExt;
use futures_util::task::noop_waker_ref;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};

use tollgate::body::Body;
use tollgate::error::GatewayError;
use tollgate::ext::KeyIdentity;
use tollgate::fallback::FallbackLayer;
use tollgate::provider::{BoxFuture, Dispatch, Provider, UpstreamCall};
use tollgate::request::{Api, ParsedRequest, parse_body};
use tollgate::route::{ModelRoute, RouteHandle, RouteLayer, RouteTable, Variant};
use tollgate::target::{Attempt, Target, Timeouts};
use tollgate::timeout::TimeoutLayer;
use tollgate::usage::Price;

fn main() {
    divan::main();
}

/// Answers at once with a small JSON body.
struct Instant;

impl Provider for Instant {
    fn name(&self) -> &str {
        "instant"
    }
    fn kind(&self) -> &'static str {
        "bench"
    }
    fn call(&self, _call: UpstreamCall) -> BoxFuture<Result<Response<Body>, GatewayError>> {
        Box::pin(async {
            Ok(Response::new(Body::full(Bytes::from_static(
                br#"{"id":"x","choices":[]}"#,
            ))))
        })
    }
}

fn parsed(model: &str) -> ParsedRequest {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    parse_body(Api::ChatCompletions, Bytes::from(body)).expect("valid")
}

fn request(p: &ParsedRequest) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(p.body.clone()));
    req.extensions_mut().insert(p.clone());
    req
}

struct Fixture {
    parsed: ParsedRequest,
    primary: Arc<Target>,
    handle: RouteHandle,
}

fn fixture(model: &str) -> Fixture {
    let p: Arc<dyn Provider> = Arc::new(Instant);
    let primary = Target::new(p.clone(), "fast").into_arc();
    let backup = Target::new(p.clone(), "backup").into_arc();
    let table = RouteTable::builder()
        .model(ModelRoute::new("m", vec![primary.clone(), backup.clone()]))
        .model(ModelRoute::new(
            "priced",
            vec![
                Target::new(p.clone(), "dear")
                    .with_price(Price::from_usd_per_mtok(10.0, 40.0))
                    .into_arc(),
                Target::new(p.clone(), "cheap")
                    .with_price(Price::from_usd_per_mtok(1.0, 4.0))
                    .into_arc(),
            ],
        ))
        .model(
            ModelRoute::split(
                "canary",
                vec![
                    Variant::new("a", 90, vec![primary.clone(), backup.clone()]),
                    Variant::new("b", 10, vec![backup, primary.clone()]),
                ],
            )
            .sticky(true),
        )
        .build()
        .expect("valid table");
    Fixture {
        parsed: parsed(model),
        primary,
        handle: RouteHandle::new(table),
    }
}

fn run<S>(svc: &mut S, req: Request<Full<Bytes>>) -> Response<Body>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = GatewayError>,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    match svc.call(req).now_or_never() {
        Some(Ok(res)) => res,
        other => panic!("not instant: {other:?}"),
    }
}

#[divan::bench(sample_count = 2000, sample_size = 16)]
fn bare_dispatch(b: Bencher) {
    let f = fixture("m");
    let mut svc = Dispatch::new();
    b.with_inputs(|| {
        let mut req = request(&f.parsed);
        req.extensions_mut().insert(Attempt {
            target: f.primary.clone(),
            number: 1,
            timeouts: Timeouts::NONE,
        });
        req
    })
    .bench_local_values(|req| run(&mut svc, req));
}

#[divan::bench(sample_count = 2000, sample_size = 16)]
fn route_fallback(b: Bencher) {
    let f = fixture("m");
    let mut svc =
        RouteLayer::new(f.handle.clone()).layer(FallbackLayer::new().layer(Dispatch::new()));
    b.with_inputs(|| request(&f.parsed))
        .bench_local_values(|req| run(&mut svc, req));
}

#[divan::bench(sample_count = 2000, sample_size = 16)]
fn route_fallback_sticky_split_by_key(b: Bencher) {
    let f = fixture("canary");
    let mut svc =
        RouteLayer::new(f.handle.clone()).layer(FallbackLayer::new().layer(Dispatch::new()));
    let key = KeyIdentity::new("key-1", "key-1");
    b.with_inputs(|| {
        let mut req = request(&f.parsed);
        req.extensions_mut().insert(key.clone());
        req
    })
    .bench_local_values(|req| run(&mut svc, req));
}

#[divan::bench(sample_count = 2000, sample_size = 16)]
fn route_fallback_timeout(b: Bencher) {
    let f = fixture("m");
    let mut svc = RouteLayer::new(f.handle.clone())
        .layer(FallbackLayer::new().layer(TimeoutLayer::new().layer(Dispatch::new())));
    b.with_inputs(|| request(&f.parsed))
        .bench_local_values(|req| run(&mut svc, req));
}

/// A request threshold (`x-tollgate-max-price`) that skips the first, dearer target: the cost
/// of parsing the header, filtering the candidates and reporting the skip.
#[divan::bench(sample_count = 2000, sample_size = 16)]
fn route_fallback_max_price_skip(b: Bencher) {
    let f = fixture("priced");
    let mut svc =
        RouteLayer::new(f.handle.clone()).layer(FallbackLayer::new().layer(Dispatch::new()));
    b.with_inputs(|| {
        let mut req = request(&f.parsed);
        req.headers_mut().insert(
            "x-tollgate-max-price",
            http::HeaderValue::from_static("input=5,output=20"),
        );
        req
    })
    .bench_local_values(|req| run(&mut svc, req));
}
