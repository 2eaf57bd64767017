//! Readiness and backpressure of every layer, with `tower_test`'s mock as the inner service:
//! (a) an inner service that is not ready makes the layer not ready; (b) one permit makes it
//! ready, wakes the task, and the request reaches the inner service with the extensions the layer
//! adds, after which the layer is not ready again (one permit, one call); (c) an inner readiness
//! error propagates (at the edge, `ErrorResponse`, it becomes a response and the inner service is
//! never called).

use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio_test::{assert_pending, assert_ready_ok};
use tollgate::auth::{AuthLayer, KeyEntry, KeyIdentity, StaticKeys, hash_key};
use tollgate::body::{Body, BoxError};
use tollgate::error::{ErrorKind, ErrorResponseLayer, GatewayError};
use tollgate::fallback::FallbackLayer;
use tollgate::meter::UsageMeterLayer;
use tollgate::provider::{Provider, mock::MockProvider};
use tollgate::ratelimit::{Limits, RateLimitLayer};
use tollgate::request::{Api, BodyBudgetLayer, ParseLayer, ParsedRequest, parse_body};
use tollgate::route::{ModelRoute, RouteHandle, RouteLayer, RouteTable};
use tollgate::stream::StreamPassthroughLayer;
use tollgate::target::{Attempt, RouteDecision, Target, Timeouts};
use tollgate::timeout::TimeoutLayer;
use tower::{Layer, Service, ServiceExt, util::MapErr};
use tower_test::mock::{self, Handle, Spawn};

type Req = Request<Full<Bytes>>;
type Inner = MapErr<mock::Mock<Req, Response<Body>>, fn(BoxError) -> GatewayError>;
type MockHandle = Handle<Req, Response<Body>>;

const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const KEY: &str = "sk-readiness-test-key-0001";

fn to_gateway(e: BoxError) -> GatewayError {
    match e.downcast::<GatewayError>() {
        Ok(g) => *g,
        Err(e) => GatewayError::internal(e.to_string()),
    }
}

fn inner() -> (Inner, MockHandle) {
    let (mock, handle) = mock::pair::<Req, Response<Body>>();
    (
        mock.map_err(to_gateway as fn(BoxError) -> GatewayError),
        handle,
    )
}

fn target() -> Arc<Target> {
    let p: Arc<dyn Provider> = Arc::new(MockProvider::new("mock"));
    Target::new(p, "m1").into_arc()
}

fn bare() -> Req {
    Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

/// The request as Parse hands it on.
fn parsed() -> Req {
    let mut r = bare();
    let p = parse_body(
        Api::from_path("/v1/chat/completions").unwrap(),
        Bytes::from_static(BODY.as_bytes()),
    )
    .unwrap();
    r.extensions_mut().insert(p);
    r
}

fn decision(targets: Vec<Arc<Target>>) -> RouteDecision {
    RouteDecision {
        model: Arc::from("m"),
        targets: Arc::from(targets),
        variant: None,
        allow_fallback: true,
        client_timeouts: Timeouts::NONE,
        max_price: None,
        over_max_price: Vec::new(),
    }
}

/// The request as Route hands it on.
fn routed() -> Req {
    let mut r = parsed();
    r.extensions_mut().insert(decision(vec![target()]));
    r
}

/// The request as Fallback hands it on.
fn attempt() -> Req {
    let mut r = parsed();
    r.extensions_mut().insert(Attempt {
        target: target(),
        number: 1,
        timeouts: Timeouts::NONE,
    });
    r
}

fn keys() -> StaticKeys {
    StaticKeys::from_entries([KeyEntry::from_hash("k", &hash_key(KEY))
        .unwrap()
        .key_id("k1")])
    .unwrap()
}

/// (a), (b) and (c) for the layer `layer`, with `req` the request it is given and `seen` the
/// check of the request the inner service received.
async fn check<L>(layer: L, req: fn() -> Req, seen: impl Fn(&Req))
where
    L: Layer<Inner>,
    L::Service: Service<Req, Response = Response<Body>, Error = GatewayError>,
{
    // (a) not ready while the inner service is not.
    let (svc, mut handle) = inner();
    handle.allow(0);
    let mut svc = Spawn::new(layer.layer(svc));
    assert_pending!(svc.poll_ready());

    // (b) one permit: woken, ready, and the request reaches the inner service.
    handle.allow(1);
    assert!(svc.is_woken(), "the permit wakes the waiting task");
    assert_ready_ok!(svc.poll_ready());
    let mut fut = Box::pin(svc.call(req()));
    let (got, send) = tokio::select! {
        r = handle.next_request() => r.expect("the request reaches the inner service"),
        r = &mut fut => panic!("answered without the inner service: {:?}", r.map(|r| r.status())),
    };
    seen(&got);
    send.send_response(Response::new(Body::full("ok")));
    let res = fut.await.expect("the inner answer passes");
    assert_eq!(res.status(), 200);
    // One permit, one call: not ready again.
    assert_pending!(svc.poll_ready());

    // (c) an inner readiness error propagates, unchanged.
    let (svc, mut handle) = inner();
    let mut svc = Spawn::new(layer.layer(svc));
    handle.send_error(GatewayError::new(ErrorKind::CircuitOpen, "inner broke"));
    match svc.poll_ready() {
        Poll::Ready(Err(e)) => assert_eq!(e.kind(), ErrorKind::CircuitOpen),
        other => panic!(
            "expected the readiness error, got {:?}",
            other.map(|r| r.is_ok())
        ),
    }
}

#[tokio::test]
async fn parse() {
    check(ParseLayer::new(), bare, |r| {
        let p = r
            .extensions()
            .get::<ParsedRequest>()
            .expect("ParsedRequest");
        assert_eq!(&*p.model, "m");
    })
    .await;
}

/// KeyCheck (in front of Parse: the key from the headers, before the body is read).
#[tokio::test]
async fn key_check() {
    check(AuthLayer::new(keys()).key_check(), parsed, |r| {
        assert!(r.extensions().get::<ParsedRequest>().is_some());
    })
    .await;
}

/// BodyBudget (the budget of buffered request-body bytes, in front of Parse).
#[tokio::test]
async fn body_budget() {
    check(BodyBudgetLayer::new(1 << 30), parsed, |r| {
        assert!(r.extensions().get::<ParsedRequest>().is_some());
    })
    .await;
}

#[tokio::test]
async fn usage_meter() {
    check(UsageMeterLayer::new(), parsed, |r| {
        assert!(r.extensions().get::<ParsedRequest>().is_some());
    })
    .await;
}

#[tokio::test]
async fn auth() {
    check(AuthLayer::new(keys()), parsed, |r| {
        let id = r.extensions().get::<KeyIdentity>().expect("KeyIdentity");
        assert_eq!(&*id.key_id, "k1");
        assert!(
            r.headers().get("authorization").is_none(),
            "credential stripped"
        );
    })
    .await;
}

#[tokio::test]
async fn rate_limit() {
    let layer = RateLimitLayer::new().global(Limits::new().requests_per_minute(100));
    check(layer, parsed, |r| {
        assert!(r.extensions().get::<ParsedRequest>().is_some());
    })
    .await;
}

#[tokio::test]
async fn stream_passthrough() {
    check(StreamPassthroughLayer::new(), parsed, |r| {
        assert!(r.extensions().get::<ParsedRequest>().is_some());
    })
    .await;
}

#[tokio::test]
async fn route() {
    let table = RouteTable::builder()
        .model(ModelRoute::new("m", vec![target()]))
        .build()
        .unwrap();
    check(RouteLayer::new(RouteHandle::new(table)), parsed, |r| {
        let d = r
            .extensions()
            .get::<RouteDecision>()
            .expect("RouteDecision");
        assert_eq!(&*d.model, "m");
        assert_eq!(&*d.targets[0].id, "mock/m1");
    })
    .await;
}

#[tokio::test]
async fn fallback() {
    check(FallbackLayer::new(), routed, |r| {
        let a = r.extensions().get::<Attempt>().expect("Attempt");
        assert_eq!(a.number, 1);
        assert_eq!(&*a.target.id, "mock/m1");
    })
    .await;
}

#[tokio::test]
async fn timeout() {
    check(TimeoutLayer::new(), attempt, |r| {
        assert_eq!(r.extensions().get::<Attempt>().expect("Attempt").number, 1);
    })
    .await;
}

/// Fallback clones its inner service for later attempts: the first attempt uses the service
/// that was made ready (the mock panics on a call to a clone that was not), and the second
/// attempt waits for readiness again: no permit, no second call.
#[tokio::test]
async fn fallback_uses_the_ready_service_and_waits_between_attempts() {
    let (svc, mut handle) = inner();
    handle.allow(1);
    let mut svc = Spawn::new(FallbackLayer::new().layer(svc));
    assert_ready_ok!(svc.poll_ready());
    let mut req = parsed();
    req.extensions_mut().insert(decision(vec![target(), {
        let p: Arc<dyn Provider> = Arc::new(MockProvider::new("mock"));
        Target::new(p, "m2").into_arc()
    }]));
    let mut fut = tokio_test::task::spawn(svc.call(req));
    assert_pending!(fut.poll());
    let (first, send) = handle.next_request().await.unwrap();
    assert_eq!(first.extensions().get::<Attempt>().unwrap().number, 1);
    send.send_error(GatewayError::upstream_status(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "down",
        None,
    ));
    // The retry needs a permit: none yet, so it waits (the mock panics on a call to a service
    // that is not ready).
    assert_pending!(fut.poll());
    assert_pending!(fut.poll());
    handle.allow(1);
    assert!(fut.is_woken(), "the permit wakes the chain");
    assert_pending!(fut.poll());
    let (second, send) = handle.next_request().await.unwrap();
    let a = second.extensions().get::<Attempt>().unwrap();
    assert_eq!((a.number, &*a.target.id), (2, "mock/m2"));
    send.send_response(Response::new(Body::full("ok")));
    let res = fut.await.unwrap();
    assert_eq!(res.status(), 200);
}

/// The edge: not ready while inner is not; a readiness failure becomes the error's response,
/// the edge stays ready and the failed inner service is never called.
#[tokio::test]
async fn error_response() {
    let (svc, mut handle) = inner();
    handle.allow(0);
    let mut svc = Spawn::new(ErrorResponseLayer::new().layer(svc));
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
    let mut fut = Box::pin(svc.call(bare()));
    let (_, send) = tokio::select! {
        r = handle.next_request() => r.unwrap(),
        _ = &mut fut => panic!("answered without the inner service"),
    };
    send.send_response(Response::new(Body::full("ok")));
    assert_eq!(fut.await.unwrap().status(), 200);
    assert_pending!(svc.poll_ready());

    let (svc, mut handle) = inner();
    let mut svc = Spawn::new(ErrorResponseLayer::new().layer(svc));
    handle.send_error(GatewayError::new(ErrorKind::UpstreamOverloaded, "gone"));
    assert_ready_ok!(svc.poll_ready());
    let res = svc.call(bare()).await.unwrap();
    assert_eq!(res.status(), 503);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_overloaded");
    // Still ready, still answering, and the inner service saw nothing.
    assert_ready_ok!(svc.poll_ready());
    assert_eq!(svc.call(bare()).await.unwrap().status(), 503);
    let mut next = tokio_test::task::spawn(handle.next_request());
    assert_pending!(next.poll());
}
