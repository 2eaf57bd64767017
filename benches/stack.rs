//! The whole tollgate stack in process, versus the bare upstream service.
//!
//! Both sides call the same in-process [`MockProvider`] and read the whole response body:
//!
//! - **bare**: [`Dispatch`] with a ready-made [`ParsedRequest`] and [`Attempt`] (what the
//!   upstream call costs by itself: the mock's `upstream_body` rewrite, its log, its generated
//!   chunks);
//! - **stack**: ErrorResponse · Parse · UsageMeter · StreamPassthrough · Route · Fallback ·
//!   Timeout · Dispatch, from a raw `Request<Full<Bytes>>` (the request body is parsed, routed,
//!   metered, gated on its first token, its deadlines armed; the stream is scanned event by
//!   event and its usage chunk stripped). A Prometheus recorder is installed, as in the
//!   reference gateway, so the meter's metrics cost what they cost there.
//!
//! - **stack_with_auth_ratelimit**: the stack as the reference gateway assembles it now, with
//!   Auth (switched off, `[auth] enabled = false`) and RateLimit (no limits configured, the
//!   in-memory store) between UsageMeter and StreamPassthrough.
//!
//! The difference between the two is the time the layers add to one request. Cases: a
//! non-streaming `ok` answer (JSON) and a 20-chunk stream (`ok?chunks=20`, 23 SSE events with
//! the finish, usage and `[DONE]` events). Both sides ask the mock for the same bytes (the bare
//! request sets `upstream_include_usage` as StreamPassthrough would).
//!
//! Each iteration is one request on a current-thread tokio runtime, body consumed to the end
//! (1,000 samples of 20 requests per case).
//!
//! Two pieces of the request path alone, on the same bodies: `parse_body` (what Parse does
//! with a buffered body) and `upstream_body` (the body an OpenAI-compatible upstream is sent),
//! the latter with the layout Parse records (`layout`) and without it (`reparse`: the body is
//! parsed a second time, as it was before Parse kept the layout).
//! Run with `cargo bench --bench stack`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use divan::{Bencher, black_box};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::runtime::Runtime;
use tollgate::body::Body;
use tollgate::error::ErrorResponseLayer;
use tollgate::fallback::FallbackLayer;
use tollgate::meter::UsageMeterLayer;
use tollgate::provider::Dispatch;
use tollgate::provider::mock::{MockLog, MockProvider};
use tollgate::request::{Api, BodyLayout, ParseLayer, ParsedRequest, parse_body};
use tollgate::route::{ModelRoute, RouteHandle, RouteLayer, RouteTable};
use tollgate::stream::StreamPassthroughLayer;
use tollgate::target::{Attempt, Target, Timeouts};
use tollgate::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};

fn main() {
    // As in the reference gateway: a global Prometheus recorder, kept trimmed.
    // `TOLLGATE_BENCH_METRICS=0` leaves it out, to see what the metrics cost.
    let metrics = std::env::var("TOLLGATE_BENCH_METRICS").map_or(true, |v| v != "0");
    if !metrics {
        eprintln!("no metrics recorder installed (TOLLGATE_BENCH_METRICS=0)");
    } else if let Ok(handle) =
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()
    {
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                handle.run_upkeep();
            }
        });
    }
    divan::main();
}

/// The two request shapes.
#[derive(Debug, Clone, Copy)]
enum Case {
    /// `ok`, non-streaming JSON.
    Json,
    /// `ok?chunks=20`, streamed.
    Stream20,
}

impl Case {
    const ALL: [Case; 2] = [Case::Json, Case::Stream20];

    /// The public model name the client sends.
    fn public(self) -> &'static str {
        match self {
            Case::Json => "bench-json",
            Case::Stream20 => "bench-stream",
        }
    }

    /// The mock scenario behind it.
    fn upstream(self) -> &'static str {
        match self {
            Case::Json => "ok",
            Case::Stream20 => "ok?chunks=20",
        }
    }

    fn body(self) -> Bytes {
        let stream = match self {
            Case::Json => "",
            Case::Stream20 => r#","stream":true"#,
        };
        Bytes::from(format!(
            r#"{{"model":"{}","messages":[{{"role":"system","content":"You are terse."}},{{"role":"user","content":"Say hello to the benchmark."}}],"max_tokens":64,"temperature":0.2{stream}}}"#,
            self.public()
        ))
    }
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Case::Json => "json",
            Case::Stream20 => "stream20",
        })
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The mock, with a log that keeps no request (counters only), and its targets.
fn targets() -> (Arc<Target>, Arc<Target>) {
    let mock: Arc<dyn tollgate::provider::Provider> =
        Arc::new(MockProvider::with_log("mock", MockLog::with_limit(0)));
    let t = |case: Case| {
        Target::new(mock.clone(), case.upstream())
            .with_timeouts(Timeouts::RECOMMENDED)
            .into_arc()
    };
    (t(Case::Json), t(Case::Stream20))
}

fn client_request(case: Case) -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("host", "127.0.0.1:8080")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-client")
        .header("user-agent", "bench/1")
        .body(Full::new(case.body()))
        .expect("request")
}

/// Read the whole body; returns its length.
async fn drain(res: Response<Body>) -> usize {
    let mut body = res.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.expect("body frame").into_data() {
            n += d.len();
        }
    }
    n
}

/// The bare upstream: Dispatch straight into the mock.
#[divan::bench(args = Case::ALL, sample_count = 1000, sample_size = 20)]
fn bare(bencher: Bencher, case: Case) {
    let rt = runtime();
    let (json, stream) = targets();
    let target = match case {
        Case::Json => json,
        Case::Stream20 => stream,
    };
    let mut parsed: ParsedRequest =
        parse_body(Api::ChatCompletions, case.body()).expect("valid body");
    parsed.upstream_include_usage = parsed.stream;
    let attempt = Attempt {
        target,
        number: 1,
        timeouts: Timeouts::RECOMMENDED,
    };
    bencher.bench_local(|| {
        rt.block_on(async {
            let mut req = client_request(case);
            req.extensions_mut().insert(parsed.clone());
            req.extensions_mut().insert(attempt.clone());
            let res = Dispatch::new().oneshot(req).await.expect("mock answers");
            black_box(drain(res).await)
        })
    });
}

fn route_table() -> RouteTable {
    let (json, stream) = targets();
    RouteTable::builder()
        .model(ModelRoute::new(Case::Json.public(), vec![json]))
        .model(ModelRoute::new(Case::Stream20.public(), vec![stream]))
        .build()
        .expect("route table")
}

/// Drive `svc` (a clone per request, as hyper does) with one request per iteration.
fn run_stack<S>(bencher: Bencher, case: Case, svc: S)
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<Body>,
            Error = std::convert::Infallible,
        > + Clone,
{
    let rt = runtime();
    bencher.bench_local(|| {
        rt.block_on(async {
            let res = svc
                .clone()
                .oneshot(client_request(case))
                .await
                .expect("infallible");
            assert_eq!(res.status(), 200);
            black_box(drain(res).await)
        })
    });
}

/// The whole stack in front of the same mock.
#[divan::bench(args = Case::ALL, sample_count = 1000, sample_size = 20)]
fn stack(bencher: Bencher, case: Case) {
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(UsageMeterLayer::new())
        .layer(StreamPassthroughLayer::new())
        .layer(RouteLayer::new(RouteHandle::new(route_table())))
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(Dispatch::new());
    run_stack(bencher, case, svc);
}

/// The stack with Auth (off) and RateLimit (no limits), as the reference gateway has it.
#[divan::bench(args = Case::ALL, sample_count = 1000, sample_size = 20)]
fn stack_with_auth_ratelimit(bencher: Bencher, case: Case) {
    let cfg =
        tollgate::config::Config::parse("[auth]\nenabled = false\n", "bench.toml").expect("config");
    let (auth, _keys) = tollgate::config::auth_layer(&cfg).expect("auth layer");
    let ratelimit = tollgate::config::ratelimit_layer(&cfg, |_| None).expect("ratelimit layer");
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(UsageMeterLayer::new())
        .layer(auth)
        .layer(ratelimit)
        .layer(StreamPassthroughLayer::new())
        .layer(RouteLayer::new(RouteHandle::new(route_table())))
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(Dispatch::new());
    run_stack(bencher, case, svc);
}

/// Parse alone: a buffered request body to a [`ParsedRequest`].
#[divan::bench(args = Case::ALL)]
fn parse_body_alone(bencher: Bencher, case: Case) {
    let body = case.body();
    bencher.bench_local(|| parse_body(Api::ChatCompletions, black_box(body.clone())));
}

/// The parsed request the upstream body is written from (as StreamPassthrough leaves it).
fn parsed_for_upstream(case: Case) -> ParsedRequest {
    let mut parsed = parse_body(Api::ChatCompletions, case.body()).expect("valid body");
    parsed.upstream_include_usage = parsed.stream;
    parsed
}

#[divan::bench_group]
mod upstream_body {
    use super::*;

    /// Now: written from the layout Parse recorded.
    #[divan::bench(args = Case::ALL)]
    fn layout(bencher: Bencher, case: Case) {
        let parsed = parsed_for_upstream(case);
        bencher.bench_local(|| black_box(&parsed).upstream_body("gpt-4o-mini-2024-07-18"));
    }

    /// Before: the body parsed again (what a `ParsedRequest` without a layout still does).
    #[divan::bench(args = Case::ALL)]
    fn reparse(bencher: Bencher, case: Case) {
        let mut parsed = parsed_for_upstream(case);
        parsed.layout = BodyLayout::default();
        bencher.bench_local(|| black_box(&parsed).upstream_body("gpt-4o-mini-2024-07-18"));
    }
}
