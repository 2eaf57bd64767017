//! Paused-clock tests of Route + Fallback + Timeout + Health over in-process providers.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::body::Body;
use crate::error::{ErrorKind, ErrorResponseLayer, GatewayError};
use crate::ext::{Routed, ServedBy};
use crate::fallback::FallbackLayer;
use crate::health::{BreakerConfig, CircuitState, Health};
use crate::provider::mock::{MockLog, MockProvider};
use crate::provider::{BoxFuture, Dispatch, Provider, UpstreamCall};
use crate::request::{Api, parse_body};
use crate::route::{ModelRoute, RouteHandle, RouteLayer, RouteTable};
use crate::target::{Target, Timeouts};
use crate::timeout::TimeoutLayer;

pub(crate) type Svc = BoxCloneService<Request<Full<Bytes>>, Response<Body>, Infallible>;

/// The stack under test: ErrorResponse · Route · Fallback · Timeout · Dispatch.
pub(crate) fn stack(handle: &RouteHandle) -> Svc {
    stack_with(handle, FallbackLayer::new())
}

pub(crate) fn stack_with(handle: &RouteHandle, fallback: FallbackLayer) -> Svc {
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(ErrorResponseLayer::new())
            .layer(RouteLayer::new(handle.clone()))
            .layer(fallback)
            .layer(TimeoutLayer::new())
            .service(Dispatch::new()),
    )
}

pub(crate) fn chat(model: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    request(&body)
}

pub(crate) fn request(body: &str) -> Request<Full<Bytes>> {
    let body = Bytes::from(body.to_owned());
    let parsed = parse_body(Api::ChatCompletions, body.clone()).expect("valid request");
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_static("/v1/chat/completions");
    req.extensions_mut().insert(parsed);
    req
}

pub(crate) async fn send(svc: &mut Svc, req: Request<Full<Bytes>>) -> Response<Body> {
    match svc.ready().await {
        Ok(s) => match s.call(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        Err(never) => match never {},
    }
}

pub(crate) fn attempts(res: &Response<Body>) -> String {
    res.headers()
        .get("x-tollgate-attempts")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

pub(crate) async fn text(res: Response<Body>) -> String {
    let b = res.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

fn mock(name: &str) -> (Arc<dyn Provider>, MockLog) {
    let log = MockLog::default();
    (
        Arc::new(MockProvider::with_log(name.to_owned(), log.clone())),
        log,
    )
}

fn target(p: &Arc<dyn Provider>, model: &str) -> Arc<Target> {
    Target::new(p.clone(), model).into_arc()
}

fn table(routes: Vec<ModelRoute>) -> RouteHandle {
    let mut b = RouteTable::builder();
    for r in routes {
        b = b.model(r);
    }
    RouteHandle::new(b.build().expect("valid table"))
}

/// A request `Flaky` refuses on the gateway's side (its `max_tokens` is 7).
const GATEWAY_REFUSED: &str =
    r#"{"model":"m","max_tokens":7,"messages":[{"role":"user","content":"hi"}]}"#;

/// A provider that fails with 500 while `down` is set, counting its calls; a request with
/// `max_tokens: 7` gets a gateway-side 400.
struct Flaky {
    down: AtomicBool,
    calls: AtomicU32,
}

impl Provider for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn kind(&self) -> &'static str {
        "test"
    }
    fn call(&self, call: UpstreamCall) -> BoxFuture<Result<Response<Body>, GatewayError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let down = self.down.load(Ordering::SeqCst);
        let refused = call.parsed.max_tokens == Some(7);
        Box::pin(async move {
            if refused {
                // A refusal of the gateway's own (as a translating adapter would give).
                Err(GatewayError::bad_request("cannot translate", None))
            } else if down {
                Err(GatewayError::upstream_status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "down",
                    Some(Arc::from("flaky")),
                ))
            } else {
                Ok(Response::new(Body::full(r#"{"choices":[]}"#)))
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn falls_back_on_5xx_and_names_attempts_and_target() {
    let (a, alog) = mock("a");
    let (b, blog) = mock("b");
    let h = table(vec![ModelRoute::new(
        "m",
        vec![target(&a, "status?code=500"), target(&b, "ok")],
    )]);
    let mut svc = stack(&h);
    let res = send(&mut svc, chat("m", false)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(attempts(&res), "a/status?code=500/500/0;b/ok/200/0");
    assert_eq!(res.headers()["x-tollgate-target"], "b/ok");
    // Fallback's report and Route's, on the response.
    let served = res.extensions().get::<ServedBy>().expect("ServedBy");
    assert_eq!(&*served.target.id, "b/ok");
    assert_eq!(served.attempts.len(), 2);
    assert_eq!(&*served.attempts[0].target, "a/status?code=500");
    let routed = res.extensions().get::<Routed>().expect("Routed");
    assert_eq!(&*routed.model, "m");
    assert_eq!(routed.variant, None);
    assert!(text(res).await.contains("Hello there!"));
    assert_eq!((alog.request_count(), blog.request_count()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn never_falls_back_on_client_4xx() {
    let (a, alog) = mock("a");
    let (b, blog) = mock("b");
    let h = table(vec![ModelRoute::new(
        "m",
        vec![target(&a, "status?code=400"), target(&b, "ok")],
    )]);
    let res = send(&mut stack(&h), chat("m", false)).await;
    assert_eq!(res.status(), 400);
    assert_eq!(attempts(&res), "a/status?code=400/400/0");
    assert!(res.headers().get("x-tollgate-target").is_none());
    assert_eq!((alog.request_count(), blog.request_count()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn fallback_off_makes_exactly_one_attempt() {
    let (a, alog) = mock("a");
    let (b, blog) = mock("b");
    let h = table(vec![ModelRoute::new(
        "m",
        vec![target(&a, "status?code=503"), target(&b, "ok")],
    )]);
    let mut req = chat("m", false);
    req.headers_mut()
        .insert("x-tollgate-fallback", "off".parse().unwrap());
    let res = send(&mut stack(&h), req).await;
    assert_eq!(res.status(), 503);
    assert_eq!(attempts(&res), "a/status?code=503/503/0");
    assert_eq!((alog.request_count(), blog.request_count()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn chain_of_429s_answers_429_with_earliest_retry_after() {
    let (a, _) = mock("a");
    let (b, _) = mock("b");
    let h = table(vec![ModelRoute::new(
        "m",
        vec![
            target(&a, "status?code=429&retry_after=30"),
            target(&b, "status?code=429&retry_after=5"),
        ],
    )]);
    let res = send(&mut stack(&h), chat("m", false)).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "5");
    assert_eq!(
        attempts(&res),
        "a/status?code=429&retry_after=30/429/0;b/status?code=429&retry_after=5/429/0"
    );
    let v: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
    assert_eq!(v["error"]["origin"], "upstream");
    assert_eq!(v["error"]["upstream_status"], 429);
}

#[tokio::test(start_paused = true)]
async fn exhausted_mix_keeps_upstream_status_over_gateway_503() {
    // a is ejected (skipped, a gateway 503), b times out, c answers 502: the client sees 502.
    let (a, alog) = mock("a");
    let (b, _) = mock("b");
    let (c, _) = mock("c");
    let ta = target(&a, "ok");
    let now = Instant::now();
    for _ in 0..5 {
        ta.health.on_failure(
            &GatewayError::new(ErrorKind::UpstreamConnect, "refused"),
            now,
        );
    }
    let tb = Target::new(b.clone(), "stall?phase=headers&ms=60000")
        .with_timeouts(Timeouts {
            first_token: Some(Duration::from_secs(1)),
            ..Timeouts::NONE
        })
        .into_arc();
    let h = table(vec![ModelRoute::new(
        "m",
        vec![ta, tb, target(&c, "status?code=502")],
    )]);
    let res = send(&mut stack(&h), chat("m", false)).await;
    assert_eq!(res.status(), 502);
    assert_eq!(
        attempts(&res),
        "a/ok/circuit_open/0;b/stall?phase=headers&ms=60000/upstream_timeout/1000;c/status?code=502/502/0"
    );
    assert_eq!(alog.request_count(), 0);

    // Only timeouts and skips: the timeout (504) beats the gateway's own 503.
    let tb2 = Target::new(b.clone(), "stall?phase=headers&ms=60000")
        .with_timeouts(Timeouts {
            first_token: Some(Duration::from_secs(1)),
            ..Timeouts::NONE
        })
        .into_arc();
    let h = table(vec![ModelRoute::new("m", vec![target(&a, "ok"), tb2])]);
    // a fresh target `a/ok` is healthy; eject it again
    let t = h.load().get("m").unwrap().variants()[0].targets[0].clone();
    for _ in 0..5 {
        t.health.on_failure(
            &GatewayError::new(ErrorKind::UpstreamConnect, "refused"),
            Instant::now(),
        );
    }
    let res = send(&mut stack(&h), chat("m", false)).await;
    assert_eq!(res.status(), 504);
}

#[tokio::test(start_paused = true)]
async fn retry_after_memory_skips_target_without_calling_it() {
    let (a, alog) = mock("a");
    let (b, blog) = mock("b");
    let h = table(vec![ModelRoute::new(
        "m",
        vec![
            target(&a, "status?code=429&retry_after=30"),
            target(&b, "ok"),
        ],
    )]);
    let mut svc = stack(&h);
    let res = send(&mut svc, chat("m", false)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(alog.request_count(), 1);
    tokio::time::advance(Duration::from_secs(10)).await;
    let res = send(&mut svc, chat("m", false)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        attempts(&res),
        "a/status?code=429&retry_after=30/upstream_rate_limited/0;b/ok/200/0"
    );
    assert_eq!((alog.request_count(), blog.request_count()), (1, 2));
    tokio::time::advance(Duration::from_secs(21)).await;
    let _ = send(&mut svc, chat("m", false)).await;
    assert_eq!(
        alog.request_count(),
        2,
        "tried again once Retry-After passed"
    );
}

#[tokio::test(start_paused = true)]
async fn skipped_rate_limited_targets_answer_429_never_503() {
    let (a, alog) = mock("a");
    let (b, blog) = mock("b");
    let ta = target(&a, "status?code=429&retry_after=30");
    let tb = target(&b, "status?code=429&retry_after=5");
    let h = table(vec![
        ModelRoute::new("one", vec![ta.clone()]),
        ModelRoute::new("both", vec![ta.clone(), tb.clone()]),
    ]);
    let mut svc = stack(&h);
    // The first answers are the upstreams' own 429s.
    assert_eq!(send(&mut svc, chat("one", false)).await.status(), 429);
    assert_eq!(send(&mut svc, chat("both", false)).await.status(), 429);
    assert_eq!((alog.request_count(), blog.request_count()), (1, 1));
    tokio::time::advance(Duration::from_secs(2)).await;

    // Alone, the skipped target answers 429 with its remaining wait, naming itself.
    let res = send(&mut svc, chat("one", false)).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "28");
    assert_eq!(
        attempts(&res),
        "a/status?code=429&retry_after=30/upstream_rate_limited/0"
    );
    let v: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
    assert_eq!(v["error"]["origin"], "gateway");
    assert_eq!(v["error"]["code"], "upstream_rate_limited");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("a/status?code=429&retry_after=30"), "{msg}");

    // Both skipped: 429 with the earliest time either accepts, naming that one.
    let res = send(&mut svc, chat("both", false)).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "3");
    let v: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("b/status?code=429&retry_after=5"), "{msg}");
    assert_eq!((alog.request_count(), blog.request_count()), (1, 1));

    // Forty 429s later the breaker is still closed.
    for _ in 0..40 {
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(send(&mut svc, chat("one", false)).await.status(), 429);
    }
    assert_eq!(alog.request_count(), 41);
    assert_eq!(ta.health.circuit(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_refused_by_the_gateway_hands_its_slot_back() {
    // The probe's request is one the adapter refuses (Anthropic ingress to an OpenAI-only
    // adapter would be a 400 of the gateway's own): the circuit stays half-open for the next.
    let flaky = Arc::new(Flaky {
        down: AtomicBool::new(true),
        calls: AtomicU32::new(0),
    });
    let t = Target::new(flaky.clone(), "m1")
        .with_health(Arc::new(Health::new(BreakerConfig {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(10),
            ..BreakerConfig::default()
        })))
        .into_arc();
    let h = table(vec![ModelRoute::new("m", vec![t.clone()])]);
    let mut svc = stack(&h);
    assert_eq!(send(&mut svc, chat("m", false)).await.status(), 500);
    let res = send(&mut svc, chat("m", false)).await;
    assert_eq!(res.status(), 503);
    let v: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
    assert_eq!(
        v["error"]["message"],
        "circuit open for target flaky/m1 after 1 failures: the circuit breaker ejected it; \
         next probe in 10 s"
    );
    assert_eq!(v["error"]["code"], "circuit_open");
    tokio::time::advance(Duration::from_secs(10)).await;
    // The probe: the gateway refuses it (Flaky answers a gateway 400 for `max_tokens: 7`).
    let res = send(&mut svc, request(GATEWAY_REFUSED)).await;
    assert_eq!(res.status(), 400);
    assert_eq!(t.health.circuit(), CircuitState::HalfOpen);
    // The slot is free again: the next request probes at once (and recovers the target).
    flaky.down.store(false, Ordering::SeqCst);
    assert_eq!(send(&mut svc, chat("m", false)).await.status(), 200);
    assert_eq!(t.health.circuit(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn breaker_single_target_fails_fast_until_probe_then_recovers() {
    let flaky = Arc::new(Flaky {
        down: AtomicBool::new(true),
        calls: AtomicU32::new(0),
    });
    let t = Target::new(flaky.clone(), "m1")
        .with_health(Arc::new(Health::new(BreakerConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            ..BreakerConfig::default()
        })))
        .into_arc();
    let h = table(vec![ModelRoute::new("m", vec![t.clone()])]);
    let mut svc = stack(&h);
    for _ in 0..3 {
        let res = send(&mut svc, chat("m", false)).await;
        assert_eq!(res.status(), 500);
    }
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    assert!(matches!(t.health.circuit(), CircuitState::Open { .. }));

    tokio::time::advance(Duration::from_secs(4)).await;
    for _ in 0..20 {
        let res = send(&mut svc, chat("m", false)).await;
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "6", "time until the probe");
        assert_eq!(attempts(&res), "flaky/m1/circuit_open/0");
    }
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        3,
        "no upstream call while ejected"
    );

    // The probe fails: ejected again, for twice as long.
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(send(&mut svc, chat("m", false)).await.status(), 500);
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);
    let res = send(&mut svc, chat("m", false)).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "20");

    // Recovered: the probe succeeds and the target is used again.
    flaky.down.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(20)).await;
    for _ in 0..3 {
        assert_eq!(send(&mut svc, chat("m", false)).await.status(), 200);
    }
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 7);
    assert_eq!(t.health.circuit(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn retry_budget_stops_fallback() {
    use tower::retry::budget::TpsBudget;
    let (a, _) = mock("a");
    let (b, blog) = mock("b");
    let h = table(vec![ModelRoute::new(
        "m",
        vec![target(&a, "status?code=500"), target(&b, "ok")],
    )]);
    let empty = Arc::new(TpsBudget::new(Duration::from_secs(1), 0, 0.0));
    let mut svc = stack_with(&h, FallbackLayer::new().budget(empty));
    let res = send(&mut svc, chat("m", false)).await;
    assert_eq!(res.status(), 500);
    assert_eq!(res.headers()["x-tollgate-fallback-stopped"], "retry-budget");
    assert_eq!(blog.request_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn first_token_timeout_of_2s_fails_over_to_secondary() {
    let (a, alog) = mock("a");
    let (b, _) = mock("b");
    let slow = Target::new(a.clone(), "stall?phase=first_token&ms=30000")
        .with_timeouts(Timeouts {
            first_token: Some(Duration::from_secs(2)),
            ..Timeouts::NONE
        })
        .into_arc();
    let h = table(vec![ModelRoute::new("m", vec![slow, target(&b, "ok")])]);
    let started = Instant::now();
    let res = send(&mut stack(&h), chat("m", true)).await;
    let waited = started.elapsed();
    assert_eq!(res.status(), 200);
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2200),
        "{waited:?}"
    );
    assert_eq!(
        attempts(&res),
        "a/stall?phase=first_token&ms=30000/upstream_timeout/2000;b/ok/200/0"
    );
    assert_eq!(
        alog.streams_cancelled(),
        1,
        "the stalled stream was dropped"
    );
    let body = text(res).await;
    assert!(body.starts_with("data: {"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
}

#[tokio::test(start_paused = true)]
async fn headers_stall_fails_over_in_both_modes() {
    for stream in [false, true] {
        let (a, _) = mock("a");
        let (b, _) = mock("b");
        let slow = Target::new(a.clone(), "stall?phase=headers&ms=30000")
            .with_timeouts(Timeouts {
                first_token: Some(Duration::from_millis(1500)),
                ..Timeouts::NONE
            })
            .into_arc();
        let h = table(vec![ModelRoute::new("m", vec![slow, target(&b, "ok")])]);
        let res = send(&mut stack(&h), chat("m", stream)).await;
        assert_eq!(res.status(), 200, "stream={stream}");
        assert_eq!(
            attempts(&res),
            "a/stall?phase=headers&ms=30000/upstream_timeout/1500;b/ok/200/0"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn error_inside_200_falls_back_in_both_modes() {
    for stream in [false, true] {
        let (a, _) = mock("a");
        let (b, _) = mock("b");
        let h = table(vec![ModelRoute::new(
            "m",
            vec![target(&a, "error-in-200"), target(&b, "ok")],
        )]);
        let res = send(&mut stack(&h), chat("m", stream)).await;
        assert_eq!(res.status(), 200, "stream={stream}");
        assert_eq!(attempts(&res), "a/error-in-200/500/0;b/ok/200/0");
        // Alone, it is answered as the upstream error it is (5xx, retryable class).
        let h = table(vec![ModelRoute::new("m", vec![target(&a, "error-in-200")])]);
        let res = send(&mut stack(&h), chat("m", stream)).await;
        assert_eq!(res.status(), 500, "stream={stream}");
        let v: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
        assert_eq!(v["error"]["code"], "error_in_200");
    }
}

#[tokio::test(start_paused = true)]
async fn stream_cut_before_first_event_falls_back_after_is_committed() {
    let (a, _) = mock("a");
    let (b, blog) = mock("b");
    let h = table(vec![ModelRoute::new(
        "m",
        vec![target(&a, "cut?after=0"), target(&b, "ok")],
    )]);
    let res = send(&mut stack(&h), chat("m", true)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        attempts(&res),
        "a/cut?after=0/upstream_protocol/0;b/ok/200/0"
    );

    // Cut after two chunks: committed to a, the body just ends without [DONE] (the
    // StreamPassthrough layer outside turns that into an in-band error).
    let h = table(vec![ModelRoute::new(
        "m",
        vec![target(&a, "cut?after=2"), target(&b, "ok")],
    )]);
    let before = blog.request_count();
    let res = send(&mut stack(&h), chat("m", true)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(attempts(&res), "a/cut?after=2/200/0");
    let body = text(res).await;
    assert!(!body.contains("[DONE]"));
    assert_eq!(blog.request_count(), before);
}

#[tokio::test(start_paused = true)]
async fn idle_and_total_deadlines_end_the_body_with_a_timeout_error() {
    let (a, _) = mock("a");
    let t = Target::new(a.clone(), "stall?phase=midstream&after=1&ms=30000")
        .with_timeouts(Timeouts {
            first_token: Some(Duration::from_secs(2)),
            idle: Some(Duration::from_secs(5)),
            ..Timeouts::NONE
        })
        .into_arc();
    let h = table(vec![ModelRoute::new("m", vec![t])]);
    let res = send(&mut stack(&h), chat("m", true)).await;
    assert_eq!(res.status(), 200);
    let started = Instant::now();
    let mut body = res.into_body();
    let mut data = Vec::new();
    let err = loop {
        match body.frame().await {
            Some(Ok(f)) => data.extend_from_slice(f.data_ref().unwrap()),
            Some(Err(e)) => break e,
            None => panic!("body ended without the idle timeout"),
        }
    };
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let g = err.downcast_ref::<GatewayError>().expect("a GatewayError");
    assert_eq!(g.kind(), ErrorKind::UpstreamTimeout);
    assert!(String::from_utf8_lossy(&data).contains("Hello"));
    assert!(body.frame().await.is_none());

    // total: 3 s for the whole attempt, chunks every second forever
    let t = Target::new(a.clone(), "ok?chunks=100&delay_ms=1000")
        .with_timeouts(Timeouts {
            total: Some(Duration::from_secs(3)),
            ..Timeouts::NONE
        })
        .into_arc();
    let h = table(vec![ModelRoute::new("m", vec![t])]);
    let started = Instant::now();
    let res = send(&mut stack(&h), chat("m", true)).await;
    let mut body = res.into_body();
    let err = loop {
        match body.frame().await {
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("no total timeout"),
        }
    };
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(
        err.downcast_ref::<GatewayError>().map(GatewayError::kind),
        Some(ErrorKind::UpstreamTimeout)
    );
}

#[tokio::test(start_paused = true)]
async fn client_timeout_header_only_shortens() {
    let (a, _) = mock("a");
    let (b, _) = mock("b");
    let mk = |ft: u64| {
        Target::new(a.clone(), "stall?phase=first_token&ms=30000")
            .with_timeouts(Timeouts {
                first_token: Some(Duration::from_secs(ft)),
                ..Timeouts::NONE
            })
            .into_arc()
    };
    for (configured, header_ms, expect_ms) in [(10, 2000, 2000), (1, 5000, 1000)] {
        let h = table(vec![ModelRoute::new(
            "m",
            vec![mk(configured), target(&b, "ok")],
        )]);
        let mut req = chat("m", true);
        req.headers_mut().insert(
            "x-tollgate-first-token-timeout-ms",
            header_ms.to_string().parse().unwrap(),
        );
        let res = send(&mut stack(&h), req).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            attempts(&res),
            format!("a/stall?phase=first_token&ms=30000/upstream_timeout/{expect_ms};b/ok/200/0")
        );
    }
}

#[tokio::test(start_paused = true)]
async fn keepalive_comments_before_first_token_are_replayed_exactly() {
    struct Chunks;
    impl Provider for Chunks {
        fn name(&self) -> &str {
            "chunks"
        }
        fn kind(&self) -> &'static str {
            "test"
        }
        fn call(&self, _c: UpstreamCall) -> BoxFuture<Result<Response<Body>, GatewayError>> {
            Box::pin(async {
                let parts: Vec<Result<http_body::Frame<Bytes>, Infallible>> = [
                    &b": keep-alive\n\n"[..],
                    b"data: {\"cho",
                    b"ices\":[]}\n",
                    b"\ndata: [DONE]\n\n",
                ]
                .iter()
                .map(|b| Ok(http_body::Frame::data(Bytes::from_static(b))))
                .collect();
                let body = http_body_util::StreamBody::new(futures_util::stream::iter(parts));
                let mut res = Response::new(Body::new(body));
                res.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                Ok(res)
            })
        }
    }
    let p: Arc<dyn Provider> = Arc::new(Chunks);
    let h = table(vec![ModelRoute::new("m", vec![target(&p, "x")])]);
    let res = send(&mut stack(&h), chat("m", true)).await;
    assert_eq!(
        text(res).await,
        ": keep-alive\n\ndata: {\"choices\":[]}\n\ndata: [DONE]\n\n"
    );
}

#[tokio::test(start_paused = true)]
async fn hot_swap_does_not_drop_in_flight_requests() {
    let (a, _) = mock("a");
    let (b, _) = mock("b");
    let h = table(vec![ModelRoute::new(
        "m",
        vec![target(&a, "ok?delay_ms=1000")],
    )]);
    let svc = stack(&h);
    let mut inflight = Vec::new();
    for _ in 0..10 {
        let mut s = svc.clone();
        inflight.push(tokio::spawn(async move {
            let res = send(&mut s, chat("m", false)).await;
            (res.status(), attempts(&res))
        }));
    }
    tokio::task::yield_now().await;
    // Reload: `m` now goes to b, and a new model appears.
    let new = RouteTable::builder()
        .model(ModelRoute::new("m", vec![target(&b, "ok")]))
        .model(ModelRoute::new("n", vec![target(&b, "ok")]))
        .build()
        .unwrap();
    h.store(new);
    for j in inflight {
        let (status, att) = j.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(att, "a/ok?delay_ms=1000/200/1000");
    }
    let res = send(&mut svc.clone(), chat("m", false)).await;
    assert_eq!(attempts(&res), "b/ok/200/0");
    assert_eq!(send(&mut svc.clone(), chat("n", false)).await.status(), 200);
    // A bad table is refused by the builder and never stored.
    assert!(RouteTable::builder().alias("x", "missing").build().is_err());
}

#[tokio::test(start_paused = true)]
async fn connect_refused_falls_back() {
    let (a, _) = mock("a");
    let (b, _) = mock("b");
    let h = table(vec![ModelRoute::new(
        "m",
        vec![target(&a, "refuse"), target(&b, "ok")],
    )]);
    for stream in [false, true] {
        let res = send(&mut stack(&h), chat("m", stream)).await;
        assert_eq!(res.status(), 200);
        assert_eq!(attempts(&res), "a/refuse/upstream_connect/0;b/ok/200/0");
    }
}

#[tokio::test(start_paused = true)]
async fn client_shortened_timeout_does_not_count_against_the_target() {
    let (a, _) = mock("a");
    let mk = || {
        Target::new(a.clone(), "stall?phase=first_token&ms=5000")
            .with_timeouts(Timeouts {
                first_token: Some(Duration::from_secs(10)),
                ..Timeouts::NONE
            })
            .with_health(Arc::new(Health::new(BreakerConfig {
                consecutive_failures: 1,
                ..BreakerConfig::default()
            })))
            .into_arc()
    };
    let t = mk();
    let h = table(vec![ModelRoute::new("m", vec![t.clone()])]);
    let mut req = chat("m", true);
    req.headers_mut()
        .insert("x-tollgate-first-token-timeout-ms", "100".parse().unwrap());
    let res = send(&mut stack(&h), req).await;
    assert_eq!(res.status(), 504);
    assert_eq!(
        t.health.circuit(),
        CircuitState::Closed,
        "the client's impatience"
    );

    // The target's own deadline expiring does count.
    let t = Target::new(a.clone(), "stall?phase=first_token&ms=60000")
        .with_timeouts(Timeouts {
            first_token: Some(Duration::from_secs(1)),
            ..Timeouts::NONE
        })
        .with_health(Arc::new(Health::new(BreakerConfig {
            consecutive_failures: 1,
            ..BreakerConfig::default()
        })))
        .into_arc();
    let h = table(vec![ModelRoute::new("m", vec![t.clone()])]);
    let res = send(&mut stack(&h), chat("m", true)).await;
    assert_eq!(res.status(), 504);
    assert!(matches!(t.health.circuit(), CircuitState::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_hands_its_slot_back() {
    let (a, log) = mock("a");
    let t = Target::new(a.clone(), "stall?phase=headers&ms=60000")
        .with_health(Arc::new(Health::new(BreakerConfig {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(10),
            ..BreakerConfig::default()
        })))
        .into_arc();
    t.health.on_failure(
        &GatewayError::new(ErrorKind::UpstreamConnect, "refused"),
        Instant::now(),
    );
    let h = table(vec![ModelRoute::new("m", vec![t.clone()])]);
    let svc = stack(&h);
    tokio::time::advance(Duration::from_secs(10)).await;
    // The probe starts, then its client goes away.
    let mut s = svc.clone();
    let probe = tokio::spawn(async move { send(&mut s, chat("m", false)).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(log.request_count(), 1);
    assert_eq!(t.health.circuit(), CircuitState::HalfOpen);
    probe.abort();
    let _ = probe.await;
    // The next request may probe at once instead of waiting for probe_timeout.
    let mut s = svc.clone();
    let next = tokio::spawn(async move { send(&mut s, chat("m", false)).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(log.request_count(), 2);
    next.abort();
}

#[test]
fn ejections_are_counted_per_target_and_429s_never_are() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let (a, _) = mock("a");
            let (b, _) = mock("b");
            let h = table(vec![
                ModelRoute::new("down", vec![target(&a, "status?code=503")]),
                ModelRoute::new("busy", vec![target(&b, "status?code=429&retry_after=1")]),
            ]);
            let mut svc = stack(&h);
            for _ in 0..20 {
                send(&mut svc, chat("down", false)).await;
                send(&mut svc, chat("busy", false)).await;
                tokio::time::advance(Duration::from_secs(2)).await;
            }
        })
    });
    let snap = snapshotter.snapshot().into_vec();
    let ejections = |t: &str| {
        snap.iter()
            .find(|(k, _, _, _)| {
                k.key().name() == crate::metrics::EJECTIONS
                    && k.key()
                        .labels()
                        .any(|l| l.key() == "target" && l.value() == t)
            })
            .map(|(_, _, _, v)| match v {
                DebugValue::Counter(n) => *n,
                other => panic!("{other:?}"),
            })
    };
    // 5 failures eject for 10 s; each failed probe (every 10, 20, 40 s) ejects again.
    assert!(ejections("a/status?code=503").is_some_and(|n| n >= 2));
    assert_eq!(ejections("b/status?code=429&retry_after=1"), None);
}
