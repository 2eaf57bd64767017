//! The fault matrix over real sockets: the mock provider's HTTP server ([`MockServer`]) as the
//! upstream, the OpenAI-compatible adapter ([`OpenAiProvider`]), and the stack
//! ErrorResponse · Route · Fallback · Timeout · Dispatch in process.
//!
//! For each failure × (stream, non-stream) × (alone, with a healthy second target) it checks the
//! status, the `x-tollgate-attempts` header (milliseconds stripped), how the body ends, and what
//! the upstreams received.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

use tollgate::body::Body;
use tollgate::error::{ErrorKind, ErrorResponseLayer, GatewayError};
use tollgate::fallback::FallbackLayer;
use tollgate::health::{BreakerConfig, Health};
use tollgate::provider::mock::MockServer;
use tollgate::provider::openai::OpenAiProvider;
use tollgate::provider::{Dispatch, Provider};
use tollgate::request::{Api, parse_body};
use tollgate::route::{ModelRoute, RouteHandle, RouteLayer, RouteTable};
use tollgate::target::{Target, Timeouts};
use tollgate::timeout::TimeoutLayer;

/// The real OpenAI-compatible adapter, pointed at a mock server.
struct Http;

impl Http {
    fn provider(name: &str, base: String) -> Arc<dyn Provider> {
        Arc::new(
            OpenAiProvider::builder(name, base)
                .build()
                .expect("provider"),
        )
    }
}

type Svc = BoxCloneService<Request<Full<Bytes>>, Response<Body>, Infallible>;

fn stack(handle: &RouteHandle) -> Svc {
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(ErrorResponseLayer::new())
            .layer(RouteLayer::new(handle.clone()))
            .layer(FallbackLayer::new())
            .layer(TimeoutLayer::new())
            .service(Dispatch::new()),
    )
}

fn chat(model: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = Bytes::from(format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    ));
    let parsed = parse_body(Api::ChatCompletions, body.clone()).expect("valid");
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = http::Method::POST;
    req.extensions_mut().insert(parsed);
    req
}

async fn send(svc: &Svc, req: Request<Full<Bytes>>) -> Response<Body> {
    match svc.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// `a/b/429/12;c/d/200/3` -> `a/b/429;c/d/200`.
fn attempts_no_ms(res: &Response<Body>) -> String {
    let h = res
        .headers()
        .get("x-tollgate-attempts")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    h.split(';')
        .map(|p| p.rsplit_once('/').map_or(p, |(a, _)| a))
        .collect::<Vec<_>>()
        .join(";")
}

/// How the body of the answer ends.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum End {
    /// A complete answer: a stream ending in `[DONE]`, or a JSON completion.
    Complete,
    /// An OpenAI-shaped error document.
    ErrorJson,
    /// A stream that ends without `[DONE]` (StreamPassthrough adds the in-band error).
    NoDone,
    /// A stream whose body fails with an `UpstreamTimeout` after some data.
    BodyTimeout,
}

async fn body_end(res: Response<Body>, stream: bool) -> (End, String) {
    let mut body = res.into_body();
    let mut data = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    data.extend_from_slice(d);
                }
            }
            Some(Err(e)) => {
                let kind = e.downcast_ref::<GatewayError>().map(GatewayError::kind);
                assert_eq!(kind, Some(ErrorKind::UpstreamTimeout), "body error {e}");
                assert!(!data.is_empty(), "the timeout came after the commit point");
                return (
                    End::BodyTimeout,
                    String::from_utf8_lossy(&data).into_owned(),
                );
            }
            None => break,
        }
    }
    let text = String::from_utf8_lossy(&data).into_owned();
    let end = if text.starts_with("{\"error\"") {
        End::ErrorJson
    } else if !stream {
        assert!(text.contains("\"choices\""), "{text}");
        End::Complete
    } else if text.ends_with("data: [DONE]\n\n") {
        End::Complete
    } else {
        End::NoDone
    };
    (end, text)
}

const DEADLINE: Duration = Duration::from_secs(1);

/// One failure of the matrix.
struct Case {
    name: &'static str,
    /// The primary's upstream model (a mock scenario); `None`: connection refused.
    scenario: Option<&'static str>,
    /// Attempt label of the primary per mode (`[non-stream, stream]`).
    label: [&'static str; 2],
    /// Status when the primary is alone, per mode.
    alone: [u16; 2],
    /// Whether the failure happens before the commit point, per mode (else: served by primary).
    falls_back: [bool; 2],
    /// Body end when served by the primary (committed) or answered alone, per mode.
    end_alone: [End; 2],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix() {
    let up = MockServer::start().await.expect("mock");
    let backup = MockServer::start().await.expect("mock");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = l.local_addr().expect("addr");
        drop(l);
        format!("http://{a}/v1")
    };
    let up_p = Http::provider("up", up.base_url());
    let down_p = Http::provider("down", closed);
    let backup_p = Http::provider("backup", backup.base_url());

    use End::*;
    let cases = [
        Case {
            name: "connect refused",
            scenario: None,
            label: ["upstream_connect"; 2],
            alone: [502; 2],
            falls_back: [true; 2],
            end_alone: [ErrorJson; 2],
        },
        Case {
            name: "500",
            scenario: Some("status?code=500"),
            label: ["500"; 2],
            alone: [500; 2],
            falls_back: [true; 2],
            end_alone: [ErrorJson; 2],
        },
        Case {
            name: "503",
            scenario: Some("status?code=503"),
            label: ["503"; 2],
            alone: [503; 2],
            falls_back: [true; 2],
            end_alone: [ErrorJson; 2],
        },
        Case {
            name: "529",
            scenario: Some("status?code=529"),
            label: ["529"; 2],
            alone: [503; 2],
            falls_back: [true; 2],
            end_alone: [ErrorJson; 2],
        },
        Case {
            name: "429 with retry-after",
            scenario: Some("status?code=429&retry_after=7"),
            label: ["429"; 2],
            alone: [429; 2],
            falls_back: [true; 2],
            end_alone: [ErrorJson; 2],
        },
        Case {
            name: "stall before headers",
            scenario: Some("stall?phase=headers&ms=60000"),
            label: ["upstream_timeout"; 2],
            alone: [504; 2],
            falls_back: [true; 2],
            end_alone: [ErrorJson; 2],
        },
        Case {
            name: "stall before the first token",
            scenario: Some("stall?phase=first_token&ms=60000"),
            label: ["upstream_timeout"; 2],
            alone: [504; 2],
            falls_back: [true; 2],
            end_alone: [ErrorJson; 2],
        },
        Case {
            // non-stream: the mock sends the head and half the JSON body, then stalls; the
            // body is read before the commit point, so the idle deadline falls back.
            name: "stall mid-stream",
            scenario: Some("stall?phase=midstream&after=1&ms=60000"),
            label: ["upstream_timeout", "200"],
            alone: [504, 200],
            falls_back: [true, false],
            end_alone: [ErrorJson, BodyTimeout],
        },
        Case {
            // non-stream: the mock answers normally
            name: "stream cut without [DONE]",
            scenario: Some("cut?after=2"),
            label: ["200"; 2],
            alone: [200; 2],
            falls_back: [false; 2],
            end_alone: [Complete, NoDone],
        },
        Case {
            name: "error event inside a 200",
            scenario: Some("error-in-200"),
            label: ["500"; 2],
            alone: [500; 2],
            falls_back: [true; 2],
            end_alone: [ErrorJson; 2],
        },
    ];

    let mut report = Vec::new();
    for case in &cases {
        for (mi, stream) in [false, true].into_iter().enumerate() {
            for with_backup in [false, true] {
                let (provider, model) = match case.scenario {
                    Some(s) => (up_p.clone(), s),
                    None => (down_p.clone(), "ok"),
                };
                // Fresh targets (fresh health) per cell.
                let primary = Target::new(provider, model)
                    .with_timeouts(Timeouts {
                        first_token: Some(DEADLINE),
                        idle: Some(DEADLINE),
                        ..Timeouts::NONE
                    })
                    .into_arc();
                let mut targets = vec![primary.clone()];
                if with_backup {
                    targets.push(Target::new(backup_p.clone(), "ok").into_arc());
                }
                let h = RouteHandle::new(
                    RouteTable::builder()
                        .model(ModelRoute::new("m", targets))
                        .build()
                        .expect("table"),
                );
                let backup_before = backup.log().request_count();
                let res = send(&stack(&h), chat("m", stream)).await;
                let cell = format!(
                    "{} / {} / {}",
                    case.name,
                    if stream { "stream" } else { "non-stream" },
                    if with_backup { "with backup" } else { "alone" }
                );
                let status = res.status().as_u16();
                let attempts = attempts_no_ms(&res);
                let retry_after = res
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap_or("").to_owned());
                let (end, text) = body_end(res, stream).await;
                let backup_calls = backup.log().request_count() - backup_before;

                let primary_part = format!("{}/{}", primary.id, case.label[mi]);
                if with_backup && case.falls_back[mi] {
                    assert_eq!(status, 200, "{cell}: {text}");
                    assert_eq!(attempts, format!("{primary_part};backup/ok/200"), "{cell}");
                    assert_eq!(end, Complete, "{cell}");
                    assert_eq!(backup_calls, 1, "{cell}");
                } else {
                    assert_eq!(status, case.alone[mi], "{cell}: {text}");
                    assert_eq!(attempts, primary_part, "{cell}");
                    assert_eq!(end, case.end_alone[mi], "{cell}: {text}");
                    assert_eq!(backup_calls, 0, "{cell}: committed or alone, no fallback");
                    if matches!(status, 429 | 503) {
                        assert!(retry_after.is_some(), "{cell}: Retry-After on {status}");
                    }
                    if case.name == "429 with retry-after" {
                        assert_eq!(retry_after.as_deref(), Some("7"), "{cell}");
                    }
                }
                report.push(format!("{cell}: {status} [{attempts}] {end:?}"));
            }
        }
    }
    println!("{}", report.join("\n"));
}

/// Acceptance 2: a 2-second first-token timeout on a stalled primary fails over and the first
/// byte from the secondary arrives in under 2.2 s (real clock, real sockets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_second_first_token_timeout_fails_over_in_under_2_2_s() {
    let up = MockServer::start().await.expect("mock");
    let backup = MockServer::start().await.expect("mock");
    let primary = Target::new(
        Http::provider("up", up.base_url()),
        "stall?phase=first_token&ms=60000",
    )
    .with_timeouts(Timeouts {
        first_token: Some(Duration::from_secs(2)),
        ..Timeouts::NONE
    })
    .into_arc();
    let secondary = Target::new(Http::provider("backup", backup.base_url()), "ok").into_arc();
    let h = RouteHandle::new(
        RouteTable::builder()
            .model(ModelRoute::new("m", vec![primary, secondary]))
            .build()
            .expect("table"),
    );
    let started = std::time::Instant::now();
    let res = send(&stack(&h), chat("m", true)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    let waited = started.elapsed();
    assert!(first.data_ref().is_some_and(|d| d.starts_with(b"data: {")));
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2200),
        "first byte after {waited:?}"
    );
    assert_eq!(up.log().request_count(), 1);
    assert_eq!(backup.log().request_count(), 1);
}

/// Acceptance 5: fallback switched off per request makes exactly one upstream attempt, as seen
/// by the upstreams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_off_is_one_upstream_attempt() {
    let up = MockServer::start().await.expect("mock");
    let backup = MockServer::start().await.expect("mock");
    let h = RouteHandle::new(
        RouteTable::builder()
            .model(ModelRoute::new(
                "m",
                vec![
                    Target::new(Http::provider("up", up.base_url()), "status?code=503").into_arc(),
                    Target::new(Http::provider("backup", backup.base_url()), "ok").into_arc(),
                ],
            ))
            .build()
            .expect("table"),
    );
    let mut req = chat("m", false);
    req.headers_mut()
        .insert("x-tollgate-fallback", "off".parse().expect("value"));
    let res = send(&stack(&h), req).await;
    assert_eq!(res.status(), 503);
    assert_eq!(up.log().request_count(), 1);
    assert_eq!(backup.log().request_count(), 0);
    // and with fallback on, the same request reaches the backup
    let res = send(&stack(&h), chat("m", false)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(backup.log().request_count(), 1);
}

/// Acceptance 6: with the only target down, after ejection requests fail fast without reaching
/// the upstream until the probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_fails_fast_without_upstream_calls() {
    let up = MockServer::start().await.expect("mock");
    let t = Target::new(Http::provider("up", up.base_url()), "status?code=500")
        .with_health(Arc::new(Health::new(BreakerConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            ..BreakerConfig::default()
        })))
        .into_arc();
    let h = RouteHandle::new(
        RouteTable::builder()
            .model(ModelRoute::new("m", vec![t]))
            .build()
            .expect("table"),
    );
    let svc = stack(&h);
    for _ in 0..3 {
        assert_eq!(send(&svc, chat("m", false)).await.status(), 500);
    }
    let started = std::time::Instant::now();
    for _ in 0..50 {
        let res = send(&svc, chat("m", false)).await;
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "30");
    }
    assert!(started.elapsed() < Duration::from_secs(1), "fail fast");
    assert_eq!(
        up.log().request_count(),
        3,
        "no upstream call while ejected"
    );
}
