//! One test per terminal path, through the real inner layers over the in-process mock:
//! UsageMeter · CostReport · (a limit) · StreamPassthrough · Route · Fallback · Timeout ·
//! Dispatch → MockProvider. Paused tokio time: no test waits on a real clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::util::BoxService;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::error::{ErrorKind, GatewayError};
use crate::fallback::FallbackLayer;
use crate::provider::mock::{MockLog, MockProvider};
use crate::provider::{Dispatch, Provider};
use crate::request::{Api, parse_body};
use crate::route::{ModelRoute, RouteHandle, RouteLayer, RouteTable};
use crate::stream::StreamPassthroughLayer;
use crate::target::{Target, Timeouts};
use crate::timeout::TimeoutLayer;
use crate::usage::Price;

type Records = Arc<Mutex<Vec<UsageRecord>>>;
type Svc = BoxService<Request<Full<Bytes>>, Response<Body>, GatewayError>;

/// gpt-4o-mini's shipped price: 0.15 / 0.60 / cached 0.075 USD per million tokens.
const PRICE: Price = Price {
    input: 150_000,
    output: 600_000,
    cached_input: Some(75_000),
    cache_write: None,
    per_image: None,
    per_character: None,
    per_second: None,
};

/// The mock's exact usage for `ok?reasoning=2`: prompt 11 (4 cached), completion 6 + 2.
const EXACT: Usage = Usage {
    prompt_tokens: 11,
    completion_tokens: 8,
    total_tokens: 19,
    cached_tokens: 4,
    cache_write_tokens: 0,
    reasoning_tokens: 2,
};

struct Stack {
    svc: Svc,
    records: Records,
    log: MockLog,
}

/// The stack with one model `m` whose targets are the given mock models, in order.
/// `refuse`: a limit layer inside the meter that refuses every request (429).
fn stack(models: &[&str], timeouts: Timeouts, refuse: bool) -> Stack {
    stack_priced(models, timeouts, refuse, None)
}

fn stack_priced(
    models: &[&str],
    timeouts: Timeouts,
    refuse: bool,
    prices: Option<crate::pricing::PriceHandle>,
) -> Stack {
    let log = MockLog::default();
    let provider: Arc<dyn Provider> = Arc::new(MockProvider::with_log("mock", log.clone()));
    let targets = models
        .iter()
        .map(|m| {
            Target::new(provider.clone(), *m)
                .with_timeouts(timeouts)
                .with_price(PRICE)
                .into_arc()
        })
        .collect();
    let table = RouteTable::builder()
        .model(ModelRoute::new("m", targets))
        .build()
        .unwrap();
    let records: Records = Arc::default();
    let r = records.clone();
    let mut meter =
        UsageMeterLayer::new().on_record(move |x: &UsageRecord| r.lock().unwrap().push(x.clone()));
    let mut cost_layer = CostReportLayer::new();
    if let Some(p) = prices {
        meter = meter.prices(p.clone());
        cost_layer = cost_layer.prices(p);
    }
    let inner = ServiceBuilder::new()
        .layer(StreamPassthroughLayer::new())
        .layer(RouteLayer::new(RouteHandle::new(table)))
        .layer(FallbackLayer::new())
        .layer(TimeoutLayer::new())
        .service(Dispatch::new());
    let limited: Svc = if refuse {
        BoxService::new(service_fn(|_req: Request<Full<Bytes>>| async move {
            // A limit refuses before anything costs money.
            Err::<Response<Body>, _>(GatewayError::new(ErrorKind::RateLimited, "over the limit"))
        }))
    } else {
        BoxService::new(inner)
    };
    let svc = BoxService::new(
        ServiceBuilder::new()
            .layer(meter)
            .layer(cost_layer)
            .service(limited),
    );
    Stack { svc, records, log }
}

fn chat(stream: bool, include_usage: bool) -> Request<Full<Bytes>> {
    let opts = if include_usage {
        r#","stream_options":{"include_usage":true}"#
    } else {
        ""
    };
    let body = Bytes::from(format!(
        r#"{{"model":"m","stream":{stream}{opts},"messages":[{{"role":"user","content":"hello there"}}]}}"#
    ));
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = http::Method::POST;
    req.headers_mut()
        .insert("x-request-id", http::HeaderValue::from_static("rid-7"));
    req.extensions_mut()
        .insert(parse_body(Api::ChatCompletions, body).unwrap());
    req
}

fn one(records: &Records) -> UsageRecord {
    let recs = records.lock().unwrap();
    assert_eq!(recs.len(), 1, "exactly one record: {recs:#?}");
    recs[0].clone()
}

async fn text(res: Response<Body>) -> String {
    let b = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

fn cost_of(u: &Usage) -> u64 {
    u64::try_from(PRICE.cost_pico(u)).unwrap()
}

#[tokio::test(start_paused = true)]
async fn success_stream_records_exact_upstream_usage_and_reports_cost() {
    let Stack { svc, records, .. } = stack(&["ok?reasoning=2"], Timeouts::NONE, false);
    let res = svc.oneshot(chat(true, true)).await.unwrap();
    let body = text(res).await;
    let r = one(&records);
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(r.usage_source, UsageSource::Upstream);
    assert_eq!(
        r.usage, EXACT,
        "cached and reasoning tokens exactly as upstream sent"
    );
    assert_eq!(r.cost_pico, Some(cost_of(&EXACT)));
    assert_eq!(r.status, 200);
    assert_eq!(r.provider.as_deref(), Some("mock"));
    assert_eq!(r.upstream_model.as_deref(), Some("ok?reasoning=2"));
    assert_eq!(r.request_id.as_deref(), Some("rid-7"));
    assert!(r.stream && r.ttft_ms.is_some() && r.overhead_us.is_some());
    // The client's usage chunk carries the same cost, in USD.
    let usage_line = body
        .lines()
        .find(|l| l.contains("\"usage\":{"))
        .expect("usage chunk");
    let v: serde_json::Value =
        serde_json::from_str(usage_line.trim_start_matches("data: ")).unwrap();
    // 7 uncached * 0.15 + 4 cached * 0.075 + 8 * 0.60 micro-USD, as an exact decimal.
    let want = format!(
        "\"cost\":{}}}",
        crate::money::Usd::from_pico(u128::from(cost_of(&EXACT)))
    );
    assert_eq!(want, "\"cost\":0.00000615}");
    assert!(usage_line.contains(&want), "{usage_line}");
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        2
    );
    assert!(body.ends_with("data: [DONE]\n\n"));
}

#[tokio::test(start_paused = true)]
async fn success_non_stream_records_exact_usage_and_reports_cost() {
    let Stack { svc, records, .. } = stack(&["ok?reasoning=2"], Timeouts::NONE, false);
    let res = svc.oneshot(chat(false, false)).await.unwrap();
    assert!(res.headers().get(http::header::CONTENT_LENGTH).is_none());
    let body = text(res).await;
    let r = one(&records);
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(r.usage_source, UsageSource::Upstream);
    assert_eq!(r.usage, EXACT);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(Usage::from_openai_json(body.as_bytes()), Some(EXACT));
    assert!(v["usage"]["cost"].is_number());
    let want = format!(
        "\"cost\":{}}}",
        crate::money::Usd::from_pico(u128::from(r.cost_pico.unwrap()))
    );
    assert!(body.contains(&want), "{body}");
}

#[tokio::test(start_paused = true)]
async fn stream_without_usage_request_gets_no_usage_chunk_but_the_record_is_exact() {
    let Stack { svc, records, .. } = stack(&["ok?reasoning=2"], Timeouts::NONE, false);
    let res = svc.oneshot(chat(true, false)).await.unwrap();
    let body = text(res).await;
    assert!(!body.contains("\"usage\":{"), "{body}");
    let r = one(&records);
    assert_eq!((r.usage, r.usage_source), (EXACT, UsageSource::Upstream));
}

#[tokio::test(start_paused = true)]
async fn upstream_error_is_recorded_with_status_and_no_usage() {
    let Stack { svc, records, log } = stack(&["status?code=503"], Timeouts::NONE, false);
    let e = svc.oneshot(chat(true, true)).await.unwrap_err();
    assert_eq!(e.status(), 503);
    let r = one(&records);
    assert_eq!(r.outcome, Outcome::UpstreamError);
    assert_eq!(r.status, 503);
    assert_eq!(r.usage_source, UsageSource::None);
    assert_eq!(r.cost_pico, None);
    assert_eq!(r.attempts, 1);
    assert_eq!(
        r.provider.as_deref(),
        Some("mock"),
        "the target that failed"
    );
    assert_eq!(log.request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn timeout_before_the_commit_point_is_timeout_with_no_usage() {
    let t = Timeouts {
        first_token: Some(Duration::from_secs(2)),
        ..Timeouts::NONE
    };
    let Stack { svc, records, .. } = stack(&["stall?phase=first_token&ms=30000"], t, false);
    let e = svc.oneshot(chat(true, true)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UpstreamTimeout);
    let r = one(&records);
    assert_eq!(r.outcome, Outcome::Timeout);
    assert_eq!(r.status, 504);
    assert_eq!(r.usage_source, UsageSource::None);
    assert_eq!(r.error_kind.as_deref(), Some("upstream_timeout"));
}

#[tokio::test(start_paused = true)]
async fn client_disconnect_mid_stream_is_recorded_as_an_estimate() {
    let Stack { svc, records, log } = stack(&["ok?chunks=50&delay_ms=100"], Timeouts::NONE, false);
    let res = svc.oneshot(chat(true, true)).await.unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: "));
    assert!(
        records.lock().unwrap().is_empty(),
        "no record while the stream is open"
    );
    drop(body);
    let r = one(&records);
    assert_eq!(r.outcome, Outcome::ClientDisconnect);
    assert_eq!(
        r.usage_source,
        UsageSource::Estimated,
        "no usage chunk came: never `upstream`"
    );
    assert!(r.usage.prompt_tokens > 0);
    assert_eq!(
        log.streams_cancelled(),
        1,
        "the upstream stream was cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn client_disconnect_before_the_answer_is_recorded() {
    let Stack { svc, records, .. } =
        stack(&["stall?phase=headers&ms=30000"], Timeouts::NONE, false);
    let fut = svc.oneshot(chat(false, false));
    // The client goes away while the gateway waits on the upstream.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), fut)
            .await
            .is_err()
    );
    let r = one(&records);
    assert_eq!(r.outcome, Outcome::ClientDisconnect);
    assert_eq!(r.status, CLIENT_CLOSED_STATUS);
    assert_eq!(r.usage_source, UsageSource::None);
}

#[tokio::test(start_paused = true)]
async fn refused_by_a_limit_is_refused_with_no_usage_and_no_upstream_call() {
    let Stack { svc, records, log } = stack(&["ok"], Timeouts::NONE, true);
    let e = svc.oneshot(chat(true, true)).await.unwrap_err();
    assert_eq!(e.status(), 429);
    let r = one(&records);
    assert_eq!(r.outcome, Outcome::Refused);
    assert_eq!(r.status, 429);
    assert_eq!(r.usage_source, UsageSource::None);
    assert_eq!(r.cost_pico, None);
    assert_eq!(r.attempts, 0);
    assert_eq!(log.request_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn stream_cut_is_a_stream_error_with_estimated_usage_never_upstream() {
    let Stack { svc, records, .. } = stack(&["cut?after=2"], Timeouts::NONE, false);
    let res = svc.oneshot(chat(true, true)).await.unwrap();
    let body = text(res).await;
    assert!(body.contains("data: {\"error\""), "in-band error: {body}");
    assert!(!body.contains("data: [DONE]"));
    let r = one(&records);
    assert_eq!(r.outcome, Outcome::StreamError);
    assert_eq!(r.usage_source, UsageSource::Estimated);
    assert!(
        r.usage.completion_tokens > 0,
        "estimated from the content seen"
    );
    assert_eq!(r.error_kind.as_deref(), Some("upstream_protocol"));
    // An estimate is priced, and says so through its source.
    assert_eq!(r.cost_pico, Some(cost_of(&r.usage)));
}

// ---- metrics ---------------------------------------------------------------------------

fn run_with_recorder<T>(f: impl std::future::Future<Output = T>) -> (T, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let out = metrics::with_local_recorder(&recorder, || rt.block_on(f));
    (out, snapshotter)
}

type Snap = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn find<'a>(snap: &'a Snap, name: &str, labels: &[(&str, &str)]) -> Option<&'a DebugValue> {
    snap.iter()
        .find(|(k, _, _, _)| {
            k.key().name() == name
                && labels
                    .iter()
                    .all(|(lk, lv)| k.key().labels().any(|l| l.key() == *lk && l.value() == *lv))
        })
        .map(|(_, _, _, v)| v)
}

fn counter(snap: &Snap, name: &str, labels: &[(&str, &str)]) -> u64 {
    match find(snap, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

fn histogram(snap: &Snap, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    match find(snap, name, labels) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

#[test]
fn metrics_by_outcome_tokens_ttft_cost_overhead_fallbacks_and_circuit() {
    let ((), snap) = run_with_recorder(async {
        // A success after a fallback (first target 503), then an upstream error.
        let s = stack(
            &["status?code=503", "ok?reasoning=2"],
            Timeouts::NONE,
            false,
        );
        let res = s.svc.oneshot(chat(true, true)).await.unwrap();
        let _ = text(res).await;
        let s = stack(&["status?code=500"], Timeouts::NONE, false);
        let _ = s.svc.oneshot(chat(false, false)).await.unwrap_err();
        let s = stack(&["ok"], Timeouts::NONE, true);
        let _ = s.svc.oneshot(chat(false, false)).await.unwrap_err();
    });
    let snap: Snap = snap.snapshot().into_vec();
    let ok = [
        ("outcome", "success"),
        ("status_class", "2xx"),
        ("model", "m"),
        ("provider", "mock"),
    ];
    assert_eq!(counter(&snap, m::REQUESTS, &ok), 1);
    assert_eq!(
        counter(
            &snap,
            m::REQUESTS,
            &[("outcome", "upstream_error"), ("status_class", "5xx")]
        ),
        1
    );
    assert_eq!(
        counter(
            &snap,
            m::REQUESTS,
            &[("outcome", "refused"), ("status_class", "4xx")]
        ),
        1
    );
    assert_eq!(
        histogram(
            &snap,
            m::TOKEN_USAGE,
            &[("gen_ai.token.type", "input"), ("provider", "mock")]
        ),
        vec![11.0]
    );
    assert_eq!(
        histogram(
            &snap,
            m::TOKEN_USAGE,
            &[("gen_ai.token.type", "output"), ("provider", "mock")]
        ),
        vec![8.0]
    );
    assert_eq!(
        counter(
            &snap,
            m::COST_PICO_USD,
            &[("model", "m"), ("provider", "mock")]
        ),
        cost_of(&EXACT)
    );
    let ttft = histogram(&snap, m::TIME_TO_FIRST_TOKEN, &[("provider", "mock")]);
    assert_eq!(ttft.len(), 1);
    assert!(ttft[0] >= 0.0);
    // Overhead: one value per request that got an answer or failed upstream.
    assert!(!histogram(&snap, m::GATEWAY_OVERHEAD, &[]).is_empty());
    assert_eq!(
        histogram(&snap, m::OPERATION_DURATION, &[("outcome", "success")]).len(),
        1
    );
    // Fallback and attempts (recorded by src/fallback) and the circuit state per target.
    assert_eq!(
        counter(
            &snap,
            m::FALLBACKS,
            &[
                ("model", "m"),
                ("from", "mock/status?code=503"),
                ("reason", "upstream_server_error")
            ]
        ),
        1
    );
    assert_eq!(
        counter(
            &snap,
            m::ATTEMPTS,
            &[("target", "mock/ok?reasoning=2"), ("result", "ok")]
        ),
        1
    );
    assert_eq!(
        counter(
            &snap,
            m::ATTEMPTS,
            &[
                ("target", "mock/status?code=503"),
                ("result", "upstream_server_error")
            ]
        ),
        1
    );
    match find(
        &snap,
        m::CIRCUIT_STATE,
        &[("target", "mock/status?code=503")],
    ) {
        Some(DebugValue::Gauge(v)) => assert_eq!(v.into_inner(), 0.0, "one failure: still closed"),
        other => panic!("circuit gauge: {other:?}"),
    }
}

#[test]
fn sink_drops_are_counted_in_metrics() {
    let ((), snap) = run_with_recorder(async {
        let dir = std::env::temp_dir().join(format!("tollgate-meter-drops-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sink = crate::sink::JsonlSink::open(dir.join("u.jsonl"), 1).unwrap();
        let r = UsageRecord {
            request_id: None,
            key_id: None,
            tenant: None,
            model: "m".into(),
            provider: None,
            upstream_model: None,
            variant: None,
            attempts: 0,
            stream: false,
            outcome: Outcome::Refused,
            status: 429,
            error_kind: None,
            usage: Usage::default(),
            units: Default::default(),
            usage_source: UsageSource::None,
            usage_note: None,
            cost_pico: None,
            ttft_ms: None,
            total_ms: 0.0,
            overhead_us: None,
            started_at_ms: 0,
        };
        for _ in 0..1_000_000 {
            sink.record(&r);
            if sink.dropped() > 0 {
                break;
            }
        }
        sink.flush();
        assert!(sink.dropped() > 0);
    });
    let snap: Snap = snap.snapshot().into_vec();
    assert!(counter(&snap, m::RECORDS_DROPPED, &[("sink", "jsonl")]) > 0);
}

#[test]
fn layer_is_config_only() {
    // Building the layer twice gives independent services over the same configuration.
    let l = UsageMeterLayer::new().on_record(|_: &UsageRecord| {});
    let a = l.layer(service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, GatewayError>(Response::new(Body::empty()))
    }));
    let _b = l.layer(service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, GatewayError>(Response::new(Body::empty()))
    }));
    assert_eq!(a.shared.sinks.len(), 1);
}

#[tokio::test]
async fn metering_never_copies_the_body() {
    // 1,000 content events, the usage chunk and [DONE], one event per upstream read.
    let mut chunks: Vec<Bytes> = (0..1000)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{i}\"}}}}],\"usage\":null}}\n\n"
            ))
        })
        .collect();
    chunks.push(Bytes::from_static(b"data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":1000,\"total_tokens\":1011}}\n\n"));
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let source: Vec<(usize, usize)> = chunks
        .iter()
        .map(|c| (c.as_ptr() as usize, c.len()))
        .collect();
    let upstream_bytes: Vec<u8> = chunks.concat();

    let provider: Arc<dyn Provider> = Arc::new(MockProvider::new("mock"));
    let served = crate::ext::ServedBy {
        target: Target::new(provider, "gpt-4o-mini")
            .with_price(PRICE)
            .into_arc(),
        attempts: Arc::from(Vec::new()),
        upstream_wait: Duration::ZERO,
    };
    let body = Mutex::new(Some(chunks));
    let upstream = service_fn(move |_req: Request<Full<Bytes>>| {
        let chunks = body.lock().unwrap().take().unwrap();
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, std::convert::Infallible>(http_body::Frame::data(c)));
        let mut res = Response::new(Body::new(http_body_util::StreamBody::new(
            futures_util::stream::iter(frames),
        )));
        res.extensions_mut().insert(served.clone());
        std::future::ready(Ok::<_, GatewayError>(res))
    });
    let (records, r) = {
        let recs: Records = Arc::default();
        (recs.clone(), recs)
    };
    let svc = ServiceBuilder::new()
        .layer(
            UsageMeterLayer::new()
                .on_record(move |x: &UsageRecord| r.lock().unwrap().push(x.clone())),
        )
        .layer(CostReportLayer::new())
        .layer(StreamPassthroughLayer::new())
        .service(upstream);
    let res = svc.oneshot(chat(true, true)).await.unwrap();
    let mut body = res.into_body();
    let mut got = Vec::new();
    let mut inserted = Vec::new();
    let mut frames = 0;
    while let Some(f) = body.frame().await {
        let data = f.unwrap().into_data().unwrap();
        frames += 1;
        let p = data.as_ptr() as usize;
        let borrowed = source
            .iter()
            .any(|&(s, len)| p >= s && p + data.len() <= s + len);
        if !borrowed {
            inserted.push(String::from_utf8(data.to_vec()).unwrap());
        }
        got.extend_from_slice(&data);
    }
    assert!(frames >= 1002);
    // Every frame is a slice of an upstream allocation, except the added cost member.
    assert_eq!(inserted, vec![",\"cost\":0.00060165".to_owned()]);
    let want = String::from_utf8(upstream_bytes).unwrap().replace(
        "\"total_tokens\":1011}",
        "\"total_tokens\":1011,\"cost\":0.00060165}",
    );
    assert_eq!(String::from_utf8(got).unwrap(), want);
    assert_eq!(one(&records).cost_pico, Some(601_650_000));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_hangs_up_after_done_got_a_success() {
    let Stack { svc, records, .. } = stack(&["ok?reasoning=2"], Timeouts::NONE, false);
    let res = svc.oneshot(chat(true, false)).await.unwrap();
    let mut body = res.into_body();
    loop {
        let f = body.frame().await.unwrap().unwrap().into_data().unwrap();
        if f.ends_with(b"data: [DONE]\n\n") {
            break;
        }
    }
    drop(body); // before the body reported its end
    let r = one(&records);
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!((r.usage, r.usage_source), (EXACT, UsageSource::Upstream));
}

#[tokio::test(start_paused = true)]
async fn a_price_table_prices_records_and_the_client_and_reloads() {
    use crate::pricing::{PriceHandle, PriceTable};
    let mut table = PriceTable::new();
    let p1 = Price {
        input: 1_000_000,
        output: 2_000_000,
        cached_input: None,
        cache_write: None,
        per_image: None,
        per_character: None,
        per_second: None,
    };
    table.set_override("mock", "ok?reasoning=2", p1);
    let handle = PriceHandle::new(table);
    let Stack { svc, records, .. } = stack_priced(
        &["ok?reasoning=2"],
        Timeouts::NONE,
        false,
        Some(handle.clone()),
    );
    let mut svc = svc;
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(chat(false, false))
        .await
        .unwrap();
    let body = text(res).await;
    // The table wins over the target's own price: 11 * 1 + 8 * 2 micro-USD.
    let want = 11 * 1_000_000 + 8 * 2_000_000;
    assert_eq!(records.lock().unwrap()[0].cost_pico, Some(want));
    assert!(body.contains("\"cost\":0.000027}"), "{body}");

    // A reload stores a new table: the next request is priced with it.
    let mut table = PriceTable::new();
    table.set_override(
        "mock",
        "ok?reasoning=2",
        Price {
            input: 0,
            output: 1_000_000,
            ..p1
        },
    );
    handle.store(table);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(chat(false, false))
        .await
        .unwrap();
    let body = text(res).await;
    assert_eq!(records.lock().unwrap()[1].cost_pico, Some(8_000_000));
    assert!(body.contains("\"cost\":0.000008}"), "{body}");
}

#[tokio::test]
async fn a_json_answer_without_usage_is_estimated_from_its_text() {
    let svc = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, GatewayError>(Response::new(Body::full(
            r#"{"choices":[{"message":{"role":"assistant","content":"0123456789abcdef"}}]}"#,
        )))
    });
    let records: Records = Arc::default();
    let r = records.clone();
    // StreamPassthrough reports the answer's generated bytes; the meter estimates from them.
    let svc = UsageMeterLayer::new()
        .on_record(move |x: &UsageRecord| r.lock().unwrap().push(x.clone()))
        .layer(StreamPassthroughLayer::new().layer(svc));
    let res = svc.oneshot(chat(false, false)).await.unwrap();
    let _ = text(res).await;
    let rec = one(&records);
    assert_eq!(rec.outcome, Outcome::Success);
    assert_eq!(rec.usage_source, UsageSource::Estimated);
    assert_eq!(rec.usage.completion_tokens, 4, "16 bytes of text");
    assert!(rec.usage.prompt_tokens > 0);
}
