//! The UsageMeter layer: one [`UsageRecord`] per request, on every terminal path.
//!
//! The meter is a **pure observer**: it adds nothing to the request, and no other layer depends
//! on it. It reads the reports the inner layers put on the response, or on the error's
//! [`context`](crate::error::GatewayError::context) (see [`ext`](crate::ext)): the
//! [`KeyIdentity`] (Auth), [`Routed`] (Route), [`ServedBy`] or the
//! failed attempts (Fallback), and the [`UsageReport`] (StreamPassthrough) — and wraps the
//! response body. It finalizes **exactly once**:
//! - when the body ends (success, or a stream that ended in an in-band error),
//! - when the body yields an error,
//! - when the body is dropped before its end (the client went away),
//! - or at once when the inner service answers with an error (refusals, upstream errors,
//!   timeouts before the commit point).
//!
//! Finalizing builds the record (usage from the upstream as the [`UsageReport`] tells it — the
//! usage chunk of a stream, the `usage` of a JSON answer — marked `upstream`, `estimated` or
//! `none`), prices it with the serving target's [`Price`], sends it to
//! every sink and records the metrics in [`crate::metrics`]. The report is read when the
//! meter's own body ends, after the inner body has ended or been dropped, so it is final.
//!
//! The body is never buffered: frames pass through as they come. Without StreamPassthrough in
//! the stack there is no usage report: records then carry an estimate of the prompt only.
//!
//! Outcomes and usage sources per terminal path:
//!
//! | path | outcome | usage source |
//! |---|---|---|
//! | complete stream (`[DONE]`), complete JSON | `success` | `upstream` (exact, cached and reasoning tokens included), else `estimated` |
//! | upstream error status before the commit point | `upstream_error` | `none` |
//! | deadline before the commit point | `timeout` | `none` |
//! | deadline after the commit point (in-band error) | `timeout` | `upstream` if the usage chunk came, else `estimated` |
//! | stream cut / in-band error | `stream_error` | `upstream` if the usage chunk came, else `estimated` — never presented as upstream |
//! | client hangs up mid-answer | `client_disconnect` | as above |
//! | client hangs up before the answer (future dropped) | `client_disconnect`, status 499 | `none` |
//! | refused by auth / limits / bad request | `refused` | `none` |
//!
//! A request abandoned before any answer came back carries no reports (nothing came up): its
//! record has what the meter saw itself — request id, requested model, stream flag, times —
//! but no key, variant or attempts.
//!
//! Cost: the record is priced with the [`PriceHandle`] given to
//! [`UsageMeterLayer::prices`] (by provider, upstream model and the request's date), else with
//! the serving target's own price. [`CostReportLayer`] (placed directly inside the meter) reports
//! the same cost to the client in its `usage` object.
//!
//! Where it sits: `[KeyCheck] · Parse · UsageMeter · [CostReport] · Auth · RateLimit ·
//! StreamPassthrough · Route · Fallback · Timeout · Dispatch` — outside Auth and RateLimit, so
//! refusals get records (also those [`KeyCheck`](crate::auth::KeyCheck) refused before Parse
//! read their body: no key, no model).
//!
//! Cardinality: with [`UsageMeterLayer::known_models`] (the reference gateway sets it), the
//! `model` of a record and its metric label is a served name or [`UNKNOWN_MODEL`], never a
//! name an unauthenticated or unrouted request made up.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use tollgate::meter::UsageMeterLayer;
//! use tollgate::usage::UsageRecord;
//!
//! let seen: Arc<Mutex<Vec<UsageRecord>>> = Arc::default();
//! let sink = seen.clone();
//! let layer = UsageMeterLayer::new().on_record(move |r: &UsageRecord| {
//!     sink.lock().unwrap().push(r.clone())
//! });
//! # let _ = layer;
//! ```

mod body;
pub mod cost;
mod future;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Request, Response};
use tower::{Layer, Service};

pub use self::body::MeterBody;
pub use self::cost::{CostBody, CostReport, CostReportFuture, CostReportLayer};
pub use self::future::MeterFuture;
use crate::auth::KeyIdentity;
use crate::body::Body;
use crate::error::{ErrorKind, GatewayError};
use crate::ext::{Routed, ServedBy, UsageFacts, UsageReport};
use crate::metrics as m;
use crate::order::{self, Checked};
use crate::pricing::{PriceDate, PriceHandle};
use crate::request::ParsedRequest;
use crate::target::AttemptInfo;
use crate::usage::{Outcome, Price, Units, Usage, UsageRecord, UsageSource};

/// Where usage records go. Implemented for any `Fn(&UsageRecord) + Send + Sync`.
pub trait RecordSink: Send + Sync + 'static {
    /// Take one record. Called on the request path: must not block (queue and return).
    fn record(&self, record: &UsageRecord);
}

impl<F> RecordSink for F
where
    F: Fn(&UsageRecord) + Send + Sync + 'static,
{
    fn record(&self, record: &UsageRecord) {
        self(record)
    }
}

/// Whether a model name is one the gateway serves (see [`UsageMeterLayer::known_models`]).
type KnownModels = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The `model` of a record (and its metric label) for a request that was not routed and is
/// not known to be a served model (no key, an unknown model).
pub const UNKNOWN_MODEL: &str = "unknown";

struct Shared {
    sinks: Vec<Arc<dyn RecordSink>>,
    prices: Option<PriceHandle>,
    known: Option<KnownModels>,
    series: series::SeriesCache,
}

/// Layer for [`UsageMeter`]: configuration only.
#[derive(Clone)]
pub struct UsageMeterLayer {
    shared: Arc<Shared>,
}

impl Default for UsageMeterLayer {
    fn default() -> Self {
        UsageMeterLayer {
            shared: Arc::new(Shared {
                sinks: Vec::new(),
                prices: None,
                known: None,
                series: series::SeriesCache::default(),
            }),
        }
    }
}

impl std::fmt::Debug for UsageMeterLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageMeterLayer")
            .field("sinks", &self.shared.sinks.len())
            .finish()
    }
}

impl UsageMeterLayer {
    /// A meter with no sinks (metrics only).
    pub fn new() -> Self {
        Self::default()
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared {
            sinks: self.shared.sinks.clone(),
            prices: self.shared.prices.clone(),
            known: self.shared.known.clone(),
            series: series::SeriesCache::default(),
        };
        f(&mut shared);
        self.shared = Arc::new(shared);
        self
    }

    /// Add a sink.
    pub fn sink(self, sink: Arc<dyn RecordSink>) -> Self {
        self.edit(|s| s.sinks.push(sink))
    }

    /// Add a callback sink.
    pub fn on_record(self, f: impl Fn(&UsageRecord) + Send + Sync + 'static) -> Self {
        self.sink(Arc::new(f))
    }

    /// Price records with `table` (by provider, upstream model and the request's date; see
    /// [`PriceTable`](crate::pricing::PriceTable); pass a [`PriceHandle`] to swap it on reload); without it, or when it does not know the model, the serving target's
    /// [`Target::price`](crate::target::Target::price) is used.
    pub fn prices(self, table: impl Into<PriceHandle>) -> Self {
        let table = table.into();
        self.edit(|s| s.prices = Some(table))
    }

    /// Bound the `model` of records and metric labels to served names: a request that was
    /// not routed keeps its requested model only when it was authenticated and `known` says
    /// the name is served; else it is recorded as [`UNKNOWN_MODEL`]. Without it the requested
    /// model (at most [`MAX_MODEL_BYTES`](crate::request::MAX_MODEL_BYTES)) is recorded as sent.
    pub fn known_models(self, known: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        let known: KnownModels = Arc::new(known);
        self.edit(|s| s.known = Some(known))
    }
}

impl<S> Layer<S> for UsageMeterLayer {
    type Service = UsageMeter<S>;
    fn layer(&self, inner: S) -> UsageMeter<S> {
        UsageMeter {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Meters every request; see the [module docs](self).
#[derive(Clone)]
pub struct UsageMeter<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for UsageMeter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageMeter")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> UsageMeter<S> {
    /// Wrap `inner` with a meter that has no sinks.
    pub fn new(inner: S) -> Self {
        UsageMeterLayer::new().layer(inner)
    }
    /// The default layer.
    pub fn layer() -> UsageMeterLayer {
        UsageMeterLayer::new()
    }
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for UsageMeter<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = MeterFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let misordered = order::enter(req.extensions_mut(), Checked::UsageMeter).err();
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let ctx = match req.extensions().get::<ParsedRequest>() {
            Some(p) => Ctx {
                shared: self.shared.clone(),
                reports: Reports::default(),
                model: p.model.clone(),
                stream: p.stream,
                anthropic: p.api.is_anthropic(),
                received_at: p.received_at,
                prompt_estimate: p.prompt_tokens_estimate(),
                estimable: p.api.estimable(),
                request_id,
                started_at_ms: unix_ms(),
            },
            None => Ctx {
                shared: self.shared.clone(),
                reports: Reports::default(),
                model: Arc::from(""),
                stream: false,
                anthropic: false,
                received_at: Instant::now(),
                prompt_estimate: 0,
                estimable: true,
                request_id,
                started_at_ms: unix_ms(),
            },
        };
        match misordered {
            Some(e) => MeterFuture::failed(e, ctx),
            None => MeterFuture::new(self.inner.call(req), ctx),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The cost of `usage` and `units` at `price`, in picodollars; `None` when a unit has no price.
fn cost_of(price: Price, usage: &Usage, units: &Units) -> Option<u64> {
    let cost = price
        .cost_pico(usage)
        .checked_add(price.units_cost_pico(units)?)?;
    Some(u64::try_from(cost).unwrap_or(u64::MAX))
}

/// The reports the inner layers sent up with the response (or the error).
#[derive(Default)]
pub(crate) struct Reports {
    key_id: Option<Arc<str>>,
    tenant: Option<Arc<str>>,
    routed: Option<Routed>,
    served: Option<ServedBy>,
    /// The attempts of a failed chain (a success lists them in `served`).
    attempts: Option<Arc<[AttemptInfo]>>,
    usage: Option<UsageReport>,
}

impl Reports {
    /// Who served: `(provider, upstream model)`; for a failed request, the target of the last
    /// attempt (`provider/model`).
    fn who_served(&self) -> (Option<String>, Option<String>) {
        match self.served.as_ref() {
            Some(s) => (
                Some(s.target.provider.name().to_owned()),
                Some(s.target.upstream_model.to_string()),
            ),
            None => match self
                .attempts()
                .last()
                .and_then(|a| a.target.split_once('/'))
            {
                Some((p, m)) => (Some(p.to_owned()), Some(m.to_owned())),
                None => (None, None),
            },
        }
    }

    /// The reports on a response's extensions.
    pub(crate) fn of_response(ext: &http::Extensions) -> Reports {
        let key = ext.get::<KeyIdentity>();
        Reports {
            key_id: key.map(|k| k.key_id.clone()),
            tenant: key.and_then(|k| k.tenant.clone()),
            routed: ext.get::<Routed>().cloned(),
            served: ext.get::<ServedBy>().cloned(),
            attempts: None,
            usage: ext.get::<UsageReport>().cloned(),
        }
    }

    /// The reports in an error's context.
    pub(crate) fn of_error(e: &GatewayError) -> Reports {
        let c = e.context();
        Reports {
            key_id: c.key.as_ref().map(|k| k.key_id.clone()),
            tenant: c.key.as_ref().and_then(|k| k.tenant.clone()),
            routed: c.routed.clone(),
            served: None,
            attempts: c.attempts.clone(),
            usage: c.usage.clone(),
        }
    }

    fn attempts(&self) -> &[AttemptInfo] {
        match (&self.served, &self.attempts) {
            (Some(s), _) => &s.attempts,
            (None, Some(a)) => a,
            (None, None) => &[],
        }
    }
}

/// What the meter knows of one request until it finalizes.
pub(crate) struct Ctx {
    shared: Arc<Shared>,
    reports: Reports,
    model: Arc<str>,
    stream: bool,
    /// `/v1/messages`: errors are answered with the Anthropic face's status.
    anthropic: bool,
    received_at: Instant,
    prompt_estimate: u64,
    /// Token usage may be estimated when none came (`false` for the per-unit endpoints).
    estimable: bool,
    request_id: Option<String>,
    started_at_ms: u64,
}

/// How the response ended, as seen by the meter.
pub(crate) enum End<'a> {
    /// The inner service failed before a response.
    Failed(&'a GatewayError),
    /// The body ended normally.
    Eof { status: u16, head: Duration },
    /// The body yielded an error.
    BodyError { status: u16, head: Duration },
    /// The body was dropped before its end.
    Dropped { status: u16, head: Duration },
    /// The response future was dropped before the inner service answered (the client went
    /// away while the gateway waited on the upstream, or a deadline outside the meter fired).
    Cancelled,
}

/// Status recorded for a request the client abandoned before any response was sent
/// (nginx's "client closed request").
pub const CLIENT_CLOSED_STATUS: u16 = 499;

/// Owns the request's [`Ctx`] until it finalizes; finalizes as [`End::Cancelled`] on drop.
pub(crate) struct CtxGuard(Option<Ctx>);

impl CtxGuard {
    pub(crate) fn new(ctx: Ctx) -> Self {
        CtxGuard(Some(ctx))
    }

    pub(crate) fn take(&mut self) -> Option<Ctx> {
        self.0.take()
    }
}

impl Drop for CtxGuard {
    fn drop(&mut self) {
        if let Some(ctx) = self.0.take() {
            ctx.finalize(End::Cancelled);
        }
    }
}

impl Ctx {
    /// Take the reports the response (or error) carried up.
    pub(crate) fn reports(&mut self, reports: Reports) {
        self.reports = reports;
    }

    /// Build the record and emit it everywhere (sinks, metrics).
    pub(crate) fn finalize(mut self, end: End<'_>) -> UsageRecord {
        let now = Instant::now();
        let request_id = self.request_id.take();
        let facts = self
            .reports
            .usage
            .as_ref()
            .map(UsageReport::get)
            .unwrap_or_default();
        let total = now.saturating_duration_since(self.received_at);
        let (outcome, status, error_kind, head) = self.outcome(&end, &facts);
        let (usage, usage_source) = self.usage(&facts, head.is_some());
        let r = &self.reports;
        let served = r.served.as_ref();
        let date = PriceDate::from_unix_ms(self.started_at_ms);
        let price = served
            .and_then(|s| crate::pricing::resolve(self.shared.prices.as_ref(), &s.target, date));
        let units = facts.units.unwrap_or_default();
        let cost_pico = match usage_source {
            UsageSource::None => None,
            _ => price.and_then(|p| cost_of(p, &usage, &units)),
        };
        let (provider, upstream_model) = r.who_served();
        let ttft = if self.stream {
            facts.first_event_after
        } else {
            head
        };
        let upstream_wait = served.map_or(Duration::ZERO, |s| s.upstream_wait);
        let overhead = head.map(|h| h.saturating_sub(upstream_wait));
        let attempts = r.attempts().len().max(usize::from(served.is_some())) as u32;
        let routed = r.routed.as_ref();

        let record = UsageRecord {
            request_id,
            key_id: r.key_id.as_deref().map(str::to_owned),
            tenant: r.tenant.as_deref().map(str::to_owned),
            model: routed
                .map_or_else(|| self.unrouted_model(), |x| &*x.model)
                .to_owned(),
            provider,
            upstream_model,
            variant: routed.and_then(|x| x.variant.as_deref()).map(str::to_owned),
            attempts,
            stream: self.stream,
            outcome,
            status,
            error_kind,
            usage,
            units,
            usage_source,
            usage_note: facts
                .usage_rejected
                .filter(|_| usage_source != UsageSource::Upstream)
                .map(str::to_owned),
            cost_pico,
            ttft_ms: ttft.map(|d| d.as_secs_f64() * 1000.0),
            total_ms: total.as_secs_f64() * 1000.0,
            overhead_us: overhead.map(|d| d.as_secs_f64() * 1e6),
            started_at_ms: self.started_at_ms,
        };
        emit_metrics(&self.series(&record), &record, ttft, total, overhead);
        for sink in &self.shared.sinks {
            sink.record(&record);
        }
        record
    }

    /// Outcome, status, error kind and time to the response head, by how the request ended.
    fn outcome(
        &self,
        end: &End<'_>,
        facts: &UsageFacts,
    ) -> (Outcome, u16, Option<String>, Option<Duration>) {
        match end {
            End::Failed(e) => (
                Outcome::of_error(e.kind()),
                if self.anthropic {
                    crate::translate::ingress::anthropic_face(e).0.as_u16()
                } else {
                    e.status().as_u16()
                },
                Some(e.kind().as_str().to_owned()),
                None,
            ),
            End::Eof { status, head } => {
                let (outcome, kind) = if !self.stream || facts.done {
                    (Outcome::Success, None)
                } else if facts.error_kind == Some(ErrorKind::UpstreamTimeout.as_str()) {
                    (Outcome::Timeout, facts.error_kind)
                } else {
                    (
                        Outcome::StreamError,
                        facts.error_kind.or(Some("upstream_protocol")),
                    )
                };
                (outcome, *status, kind.map(str::to_owned), Some(*head))
            }
            End::BodyError { status, head } => (
                Outcome::StreamError,
                *status,
                Some(facts.error_kind.unwrap_or("upstream_protocol").to_owned()),
                Some(*head),
            ),
            // A client that hangs up right after `[DONE]` got the whole answer.
            End::Dropped { status, head } if self.stream && facts.done && !facts.error => {
                (Outcome::Success, *status, None, Some(*head))
            }
            End::Dropped { status, head } => {
                (Outcome::ClientDisconnect, *status, None, Some(*head))
            }
            End::Cancelled => (Outcome::ClientDisconnect, CLIENT_CLOSED_STATUS, None, None),
        }
    }

    /// The upstream's usage when reported; else, once a response came, an estimate (and
    /// recorded as one); else none.
    fn usage(&self, facts: &UsageFacts, got_response: bool) -> (Usage, UsageSource) {
        match facts.usage {
            Some(u) if facts.units_from_request => (u, UsageSource::Estimated),
            Some(u) => (u, UsageSource::Upstream),
            None if facts.units.is_some() && facts.units_from_request => {
                (Usage::default(), UsageSource::Estimated)
            }
            None if facts.units.is_some() => (Usage::default(), UsageSource::Upstream),
            None if got_response && self.estimable => {
                // ~4 bytes per token: a rough estimate, and recorded as one.
                let completion = facts.content_bytes.div_ceil(4);
                let u = Usage {
                    prompt_tokens: self.prompt_estimate,
                    completion_tokens: completion,
                    total_tokens: self.prompt_estimate + completion,
                    ..Usage::default()
                };
                (u, UsageSource::Estimated)
            }
            None => (Usage::default(), UsageSource::None),
        }
    }

    /// The model to record for a request that was not routed: see
    /// [`UsageMeterLayer::known_models`].
    fn unrouted_model(&self) -> &str {
        match &self.shared.known {
            None => &self.model,
            Some(known) if self.reports.key_id.is_some() && known(&self.model) => &self.model,
            Some(_) => UNKNOWN_MODEL,
        }
    }

    /// The metric handles for the record: cached per routed model and target.
    fn series(&self, record: &UsageRecord) -> Arc<series::Series> {
        let r = &self.reports;
        match r.routed.as_ref() {
            Some(routed) => {
                let (target_id, provider) = match r.served.as_ref() {
                    Some(s) => (Some(&s.target.id), Some(s.target.provider.name())),
                    None => match r.attempts().last() {
                        Some(a) => (Some(&a.target), a.target.split_once('/').map(|(p, _)| p)),
                        None => (None, None),
                    },
                };
                self.shared.series.get(&routed.model, target_id, provider)
            }
            // Not routed (refused or unknown model): labels from the record, not cached.
            None => Arc::new(series::Series::new(
                Arc::from(record.model.as_str()),
                None,
                record.provider.as_deref().map(Arc::from),
            )),
        }
    }
}

fn emit_metrics(
    series: &series::Series,
    r: &UsageRecord,
    ttft: Option<Duration>,
    total: Duration,
    overhead: Option<Duration>,
) {
    let (requests, duration) = series.by_outcome(r.outcome, m::status_class(r.status));
    requests.increment(1);
    duration.record(total.as_secs_f64());
    if r.usage_source != UsageSource::None {
        series.input_tokens().record(r.usage.prompt_tokens as f64);
        series
            .output_tokens()
            .record(r.usage.completion_tokens as f64);
    }
    if let Some(t) = ttft {
        series.ttft().record(t.as_secs_f64());
        if r.usage.completion_tokens > 1 && r.outcome == Outcome::Success {
            let per =
                total.saturating_sub(t).as_secs_f64() / (r.usage.completion_tokens - 1) as f64;
            series.time_per_output_token().record(per);
        }
    }
    if let Some(o) = overhead {
        series.overhead().record(o.as_secs_f64());
    }
    if let Some(c) = r.cost_pico {
        series.cost().increment(c);
    }
}

mod series;

#[cfg(test)]
mod paths;

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::sync::mpsc;
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::request::{Api, parse_body};

    type Records = Arc<Mutex<Vec<UsageRecord>>>;

    fn req(stream: bool) -> Request<Full<Bytes>> {
        let body = if stream {
            r#"{"model":"m","messages":[{"role":"user","content":"hello there"}],"stream":true}"#
        } else {
            r#"{"model":"m","messages":[{"role":"user","content":"hello there"}]}"#
        };
        let parsed = parse_body(Api::ChatCompletions, Bytes::from_static(body.as_bytes())).unwrap();
        let mut r = Request::new(Full::new(Bytes::from_static(body.as_bytes())));
        r.headers_mut()
            .insert("x-request-id", "rid-1".parse().unwrap());
        r.extensions_mut().insert(parsed);
        r
    }

    fn layer() -> (UsageMeterLayer, Records) {
        let recs: Records = Arc::default();
        let r = recs.clone();
        (
            UsageMeterLayer::new()
                .on_record(move |x: &UsageRecord| r.lock().unwrap().push(x.clone())),
            recs,
        )
    }

    #[tokio::test]
    async fn non_stream_usage_is_read_exactly_across_frames() {
        let (layer, recs) = layer();
        let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
            let parts: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                Ok(Frame::data(Bytes::from_static(br#"{"id":"x","choices":[],"usage":{"prompt_to"#))),
                Ok(Frame::data(Bytes::from_static(br#"kens":11,"completion_tokens":6,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#))),
            ];
            Ok::<_, GatewayError>(Response::new(Body::new(StreamBody::new(
                futures_util::stream::iter(parts),
            ))))
        });
        // The usage is StreamPassthrough's report; the meter only reads it.
        let svc = layer.layer(crate::stream::StreamPassthrough::new(upstream));
        let res = svc.oneshot(req(false)).await.unwrap();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        assert!(bytes.ends_with(b"}}}"));
        let recs = recs.lock().unwrap();
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert_eq!(r.outcome, Outcome::Success);
        assert_eq!(r.usage_source, UsageSource::Upstream);
        assert_eq!(
            r.usage,
            Usage {
                prompt_tokens: 11,
                completion_tokens: 6,
                total_tokens: 17,
                cached_tokens: 4,
                cache_write_tokens: 0,
                reasoning_tokens: 2
            }
        );
        assert_eq!(r.request_id.as_deref(), Some("rid-1"));
    }

    #[tokio::test]
    async fn refusal_is_recorded_once_with_the_errors_context() {
        let (layer, recs) = layer();
        let svc = layer.layer(service_fn(move |_req: Request<Full<Bytes>>| async move {
            let mut e = GatewayError::new(ErrorKind::RateLimited, "no");
            e.context_mut().key = Some(KeyIdentity::new("k-7", "team").with_tenant("acme"));
            Err::<Response<Body>, _>(e)
        }));
        let e = svc.oneshot(req(false)).await.unwrap_err();
        assert_eq!(e.status(), 429);
        let recs = recs.lock().unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].outcome, Outcome::Refused);
        assert_eq!(recs[0].status, 429);
        assert_eq!(recs[0].usage_source, UsageSource::None);
        assert_eq!(recs[0].key_id.as_deref(), Some("k-7"));
        assert_eq!(recs[0].tenant.as_deref(), Some("acme"));
    }

    #[tokio::test]
    async fn dropped_stream_is_a_client_disconnect_recorded_then() {
        let (layer, recs) = layer();
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let rx = Arc::new(Mutex::new(Some(rx)));
        let svc = layer.layer(service_fn(move |_req: Request<Full<Bytes>>| {
            let rx = rx.lock().unwrap().take().unwrap();
            async move {
                let s = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|x| (x, rx))
                });
                Ok::<_, GatewayError>(Response::new(Body::new(StreamBody::new(s))))
            }
        }));
        let res = svc.oneshot(req(true)).await.unwrap();
        let mut body = res.into_body();
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: {}\n\n"))))
            .await
            .unwrap();
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), Bytes::from_static(b"data: {}\n\n"));
        assert!(
            recs.lock().unwrap().is_empty(),
            "no record while the stream is open"
        );
        drop(body);
        let recs = recs.lock().unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].outcome, Outcome::ClientDisconnect);
        // no usage from upstream: an estimate, marked as such (never "upstream")
        assert_eq!(recs[0].usage_source, UsageSource::Estimated);
        assert!(tx.is_closed(), "dropping the body drops the upstream side");
    }

    #[test]
    fn stream_usage_from_the_report_and_metrics() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let (layer, recs) = layer();
        let svc = layer.layer(service_fn(|_req: Request<Full<Bytes>>| async move {
            let (writer, report) = UsageReport::channel();
            writer.publish(&UsageFacts {
                usage: Some(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 7,
                    total_tokens: 12,
                    ..Usage::default()
                }),
                done: true,
                ..UsageFacts::default()
            });
            let mut res = Response::new(Body::full("data: [DONE]\n\n"));
            res.extensions_mut().insert(report);
            Ok::<_, GatewayError>(res)
        }));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = metrics::with_local_recorder(&recorder, || {
            rt.block_on(async {
                let res = svc.oneshot(req(true)).await.unwrap();
                res.into_body().collect().await.unwrap().to_bytes()
            })
        });
        assert_eq!(&body[..], b"data: [DONE]\n\n");
        let recs = recs.lock().unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].outcome, Outcome::Success);
        assert_eq!(recs[0].usage.total_tokens, 12);
        assert_eq!(recs[0].usage_source, UsageSource::Upstream);
        let snap = snapshotter.snapshot().into_vec();
        let requests = snap
            .iter()
            .find(|(k, _, _, _)| k.key().name() == m::REQUESTS)
            .expect("requests counter");
        assert!(matches!(
            requests.3,
            metrics_util::debugging::DebugValue::Counter(1)
        ));
        let labels: Vec<_> = requests
            .0
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        assert!(labels.contains(&("outcome".into(), "success".into())));
        assert!(labels.contains(&("status_class".into(), "2xx".into())));
    }
}
