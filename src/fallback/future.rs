//! [`ResponseFuture`] of [`Fallback`](super::Fallback): a state machine in the style of
//! tower's retry future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;
use tower::retry::budget::Budget;

use crate::body::Body;
use crate::error::{ErrorKind, GatewayError};
use crate::ext::ServedBy;
use crate::health::{Admission, Blame, BlockReason, Blocked, Ejection, blame};
use crate::target::{Attempt, AttemptInfo, Target, Timeouts};

use super::{ATTEMPTS_HEADER, TARGET_HEADER};
use crate::health::CircuitState;
use crate::metrics as m;

// Parsed at compile time (`from_static` in a static), not per response.
static ATTEMPTS_NAME: HeaderName = HeaderName::from_static(ATTEMPTS_HEADER);
static TARGET_NAME: HeaderName = HeaderName::from_static(TARGET_HEADER);

/// A metric label that shares the `Arc<str>` instead of copying it.
fn label(s: &Arc<str>) -> metrics::SharedString {
    metrics::SharedString::from_shared(s.clone())
}

/// A target's metric handles, registered once per recorder (a labelled macro call costs a
/// registry lookup each time). Keyed by the recorder's address so a test's local recorder gets
/// its own.
#[derive(Default)]
pub(crate) struct TargetSeries {
    inner: std::sync::Mutex<Vec<CachedSeries>>,
    /// The target id as a header value (`x-tollgate-target`), made once (clones share it).
    id_value: std::sync::OnceLock<Option<HeaderValue>>,
}

struct CachedSeries {
    recorder: usize,
    circuit: metrics::Gauge,
    attempts: Vec<(&'static str, metrics::Counter)>,
}

impl TargetSeries {
    /// `id` as a header value; `None` when it is not a valid one.
    fn id_value(&self, id: &str) -> Option<HeaderValue> {
        let v = self
            .id_value
            .get_or_init(|| HeaderValue::from_str(id).ok())
            .clone();
        // `Target::id` is public: never send a stale value if it was changed after first use.
        match v {
            Some(v) if v.as_bytes() == id.as_bytes() => Some(v),
            _ => HeaderValue::from_str(id).ok(),
        }
    }

    fn record(&self, id: &Arc<str>, result: &'static str, state: f64) {
        let recorder = metrics::with_recorder(|r| std::ptr::from_ref(r).cast::<()>() as usize);
        let mut all = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let i = match all.iter().position(|c| c.recorder == recorder) {
            Some(i) => i,
            None => {
                if all.len() >= 8 {
                    all.clear();
                }
                all.push(CachedSeries {
                    recorder,
                    circuit: metrics::gauge!(m::CIRCUIT_STATE, "target" => label(id)),
                    attempts: Vec::new(),
                });
                all.len() - 1
            }
        };
        let c = &mut all[i];
        match c.attempts.iter().find(|(r, _)| *r == result) {
            Some((_, counter)) => counter.increment(1),
            None => {
                let counter =
                    metrics::counter!(m::ATTEMPTS, "target" => label(id), "result" => result);
                counter.increment(1);
                c.attempts.push((result, counter));
            }
        }
        c.circuit.set(state);
    }
}

/// Count an attempt (`result` = `ok` or the error kind) and publish the target's circuit state
/// (0 closed, 1 half-open, 2 open).
fn record_attempt(target: &Target, result: &'static str) {
    let state = match target.health.circuit() {
        CircuitState::Closed => 0.0,
        CircuitState::HalfOpen => 1.0,
        CircuitState::Open { .. } => 2.0,
    };
    target.series.record(&target.id, result, state);
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Choose the next target (skipping blocked ones).
        Next,
        // A target is chosen; drive the service to readiness, then call it.
        Ready,
        // Waiting on an attempt.
        Called {
            #[pin]
            fut: F,
        },
        Done,
    }
}

pin_project! {
    /// Future of [`Fallback`](super::Fallback).
    pub struct ResponseFuture<S, F> {
        service: S,
        // Whether `service` is known ready (the one `call` was given is).
        ready: bool,
        chain: Chain,
        outcome: Outcome,
        current: Option<Current>,
        #[pin]
        state: State<F>,
    }
}

/// The chain: the targets to try, how far along it is, and what each attempt is sent with.
struct Chain {
    // The request each attempt is cloned from (taken, not cloned, for the last candidate).
    template: Option<Request<Full<Bytes>>>,
    targets: Arc<[Arc<Target>]>,
    limit: usize,
    // The next candidate's index.
    next: usize,
    // Attempts called so far (skipped targets are not calls).
    calls: u32,
    client_timeouts: Timeouts,
    budget: Arc<dyn Budget + Send + Sync>,
    model: Arc<str>,
}

/// What the attempts so far came to: the `x-tollgate-attempts` entries, the most informative
/// failure, the shortest wait a failure asked for, the time spent waiting on upstreams.
struct Outcome {
    attempts: Vec<AttemptInfo>,
    best: Option<GatewayError>,
    earliest_retry: Option<Duration>,
    upstream_wait: Duration,
    budget_exhausted: bool,
}

impl<S, F> ResponseFuture<S, F> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        service: S,
        request: Request<Full<Bytes>>,
        targets: Arc<[Arc<Target>]>,
        allow_fallback: bool,
        client_timeouts: Timeouts,
        budget: Arc<dyn Budget + Send + Sync>,
        error: Option<GatewayError>,
        model: Arc<str>,
    ) -> Self {
        let limit = if allow_fallback {
            targets.len()
        } else {
            targets.len().min(1)
        };
        ResponseFuture {
            service,
            ready: true,
            chain: Chain {
                template: Some(request),
                targets,
                limit,
                next: 0,
                calls: 0,
                client_timeouts,
                budget,
                model,
            },
            outcome: Outcome {
                attempts: Vec::with_capacity(limit.min(4)),
                best: error,
                earliest_retry: None,
                upstream_wait: Duration::ZERO,
                budget_exhausted: false,
            },
            current: None,
            state: State::Next,
        }
    }
}

impl<S, F> ResponseFuture<S, F> {
    /// Start the attempts list with targets skipped before the chain (over the max price).
    pub(super) fn skipped(mut self, skipped: Vec<AttemptInfo>) -> Self {
        if !skipped.is_empty() {
            self.outcome.attempts = skipped;
        }
        self
    }
}

/// How informative a failure is when every target failed: a 429 (an upstream's, or the gateway
/// skipping a target its upstream asked to wait) beats any other upstream status, which beats a
/// deadline, which beats a transport failure, which beats the gateway's own "circuit open".
fn rank(e: &GatewayError) -> u8 {
    match e.kind() {
        ErrorKind::UpstreamRateLimited => 6,
        ErrorKind::UpstreamServerError | ErrorKind::UpstreamOverloaded => 5,
        _ if e.upstream_status_code().is_some() => 5,
        ErrorKind::UpstreamTimeout => 4,
        ErrorKind::UpstreamProtocol => 3,
        ErrorKind::UpstreamConnect => 2,
        ErrorKind::CircuitOpen => 1,
        _ => 0,
    }
}

/// The attempt in progress. Dropped unreported (the client went away), a half-open probe hands
/// its slot back so the next request can probe.
struct Current {
    target: Arc<Target>,
    started: Instant,
    probe: bool,
    /// The client's deadlines were shorter than the target's: a timeout says nothing about the
    /// target's health.
    shortened: bool,
}

impl Drop for Current {
    fn drop(&mut self) {
        if self.probe {
            self.target.health.release_probe();
        }
    }
}

/// The operator's line for a failed attempt: the target, the attempt number, the upstream
/// status and code (never the upstream's message, which may quote a credential) and what
/// happens next. Only on failures: the success path formats nothing.
fn warn_failed(target: &Target, e: &GatewayError, attempt: u32, more: bool) {
    let kind = e.kind().as_str();
    let status = e.upstream_status_code();
    let code = e.code();
    if more {
        tracing::warn!(target = %target.id, attempt, status, kind, code, "attempt failed; trying the next target");
    } else if e.is_retryable() {
        tracing::warn!(target = %target.id, attempt, status, kind, code, "attempt failed; no target left to try");
    } else if e.origin() == crate::error::Origin::Upstream {
        tracing::warn!(target = %target.id, attempt, status, kind, code, "upstream error");
    } else {
        tracing::debug!(target = %target.id, attempt, kind, "attempt refused by the gateway");
    }
}

fn clone_request(r: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut n = Request::new(r.body().clone());
    *n.method_mut() = r.method().clone();
    *n.uri_mut() = r.uri().clone();
    *n.version_mut() = r.version();
    *n.headers_mut() = r.headers().clone();
    *n.extensions_mut() = r.extensions().clone();
    n
}

fn attempts_value(attempts: &[AttemptInfo]) -> Option<HeaderValue> {
    let mut s = String::with_capacity(attempts.len() * 40);
    for (i, a) in attempts.iter().enumerate() {
        if i > 0 {
            s.push(';');
        }
        a.write_header_part(&mut s);
    }
    HeaderValue::try_from(s).ok()
}

/// Whole seconds, rounded up, at least 1 (as `Retry-After` says it).
fn secs_ceil(d: Duration) -> u64 {
    d.as_secs()
        .saturating_add(u64::from(d.subsec_nanos() > 0))
        .max(1)
}

/// The gateway's answer for a target its [`Health`](crate::health::Health) refused `wait` before
/// it accepts again: a 429 naming the target for a remembered upstream rate limit, a 503 naming
/// the target and the breaker for an ejection.
fn blocked_error(target: &Target, blocked: Blocked, wait: Duration) -> GatewayError {
    let id = &target.id;
    let secs = secs_ceil(wait);
    let e = match blocked.reason {
        BlockReason::RateLimited => GatewayError::new(
            ErrorKind::UpstreamRateLimited,
            format!(
                "target {id} asked to wait: its upstream answered 429 with Retry-After; \
                 it accepts requests again in {secs} s"
            ),
        )
        .with_origin(crate::error::Origin::Gateway)
        .with_code("upstream_rate_limited"),
        BlockReason::CircuitOpen { failures } => GatewayError::new(
            ErrorKind::CircuitOpen,
            format!(
                "circuit open for target {id} after {failures} failures: the circuit breaker \
                 ejected it; next probe in {secs} s"
            ),
        ),
        BlockReason::ProbeInFlight => GatewayError::new(
            ErrorKind::CircuitOpen,
            format!(
                "circuit half-open for target {id}: the circuit breaker's probe is in flight; \
                 retry in {secs} s"
            ),
        ),
    };
    e.with_provider(id.clone()).with_retry_after(wait)
}

/// Log and count an ejection (`Health` does not know the target's name).
fn ejected(target: &Target, ej: Ejection) {
    tracing::warn!(
        target = %target.id,
        failures = ej.failures,
        ejection_ms = u64::try_from(ej.duration.as_millis()).unwrap_or(u64::MAX),
        "circuit open for target {} after {} failures: ejected by the circuit breaker",
        target.id,
        ej.failures
    );
    metrics::counter!(m::EJECTIONS, "target" => label(&target.id)).increment(1);
}

/// Between two failures of the same rank, whether `e` is the better answer: among 429s, the one
/// that asks for the shortest wait (so the message names the target that accepts first).
fn sooner(e: &GatewayError, than: &GatewayError) -> bool {
    e.status() == http::StatusCode::TOO_MANY_REQUESTS
        && e.retry_after().unwrap_or(Duration::MAX) < than.retry_after().unwrap_or(Duration::MAX)
}

impl Chain {
    /// The attempt on the next target to call; `None` when the chain is over (no candidate
    /// left, or no retry budget). Targets whose health refuses them are skipped (recorded in
    /// `outcome`) without a call.
    fn choose(&mut self, outcome: &mut Outcome, now: Instant) -> Option<Current> {
        while self.next < self.limit {
            let target = self.targets[self.next].clone();
            self.next += 1;
            // A retry needs budget; check health first so a skip costs none.
            if self.calls > 0 {
                if let Err(blocked) = target.health.peek(now) {
                    outcome.skip(&target, blocked, now);
                    continue;
                }
                if !self.budget.withdraw() {
                    outcome.budget_exhausted = true;
                    self.next = self.limit;
                    return None;
                }
            }
            let probe = match target.health.admit(now) {
                Admission::Allowed => false,
                Admission::Probe => true,
                Admission::Blocked(b) => {
                    outcome.skip(&target, b, now);
                    continue;
                }
            };
            let shortened = target.timeouts.min(self.client_timeouts) != target.timeouts;
            return Some(Current {
                target,
                started: now,
                probe,
                shortened,
            });
        }
        None
    }

    /// The request for the attempt on `current`'s target (the template itself for the last
    /// candidate), with its [`Attempt`]; counts the call (and the fallback, from the second on)
    /// and times the attempt from now.
    fn request(
        &mut self,
        current: &mut Option<Current>,
        attempts: &[AttemptInfo],
    ) -> Result<Request<Full<Bytes>>, GatewayError> {
        let Some(current) = current.as_mut() else {
            return Err(GatewayError::internal("fallback lost its chosen target"));
        };
        let last = self.next >= self.limit;
        let mut req = match (last, self.template.as_ref()) {
            (false, Some(t)) => clone_request(t),
            _ => match self.template.take() {
                Some(t) => t,
                None => {
                    return Err(GatewayError::internal(
                        "fallback has no request left to send",
                    ));
                }
            },
        };
        self.calls += 1;
        if self.calls > 1 {
            if let Some(prev) = attempts.last() {
                metrics::counter!(m::FALLBACKS,
                    "model" => label(&self.model),
                    "from" => label(&prev.target),
                    "reason" => prev.error.unwrap_or("unknown"))
                .increment(1);
            }
        }
        let target = &current.target;
        req.extensions_mut().insert(Attempt {
            target: target.clone(),
            number: self.calls,
            timeouts: target.timeouts.min(self.client_timeouts),
        });
        // Time the attempt from the call, not from the readiness wait.
        current.started = Instant::now();
        Ok(req)
    }
}

impl Outcome {
    /// Record a target skipped because its health refused it.
    fn skip(&mut self, target: &Arc<Target>, blocked: Blocked, now: Instant) {
        let wait = blocked.until.saturating_duration_since(now);
        let e = blocked_error(target, blocked, wait);
        self.attempts.push(AttemptInfo {
            target: target.id.clone(),
            status: 0,
            elapsed: Duration::ZERO,
            error: Some(e.kind().as_str()),
        });
        self.note_failure(e);
    }

    fn note_failure(&mut self, e: GatewayError) {
        if let Some(w) = e.retry_after() {
            self.earliest_retry = Some(self.earliest_retry.map_or(w, |x| x.min(w)));
        }
        match &self.best {
            Some(b) if rank(b) > rank(&e) || (rank(b) == rank(&e) && !sooner(&e, b)) => {}
            _ => self.best = Some(e),
        }
    }

    /// The attempt succeeded: report it to the target's health, count it, and mark the response
    /// with the attempts (`x-tollgate-attempts`), the target (`x-tollgate-target`) and
    /// [`ServedBy`].
    fn served(
        &mut self,
        mut current: Current,
        mut res: Response<Body>,
        now: Instant,
    ) -> Response<Body> {
        let target = current.target.clone();
        let elapsed = now.saturating_duration_since(current.started);
        self.upstream_wait += elapsed;
        // Reported: the probe slot is not handed back.
        current.probe = false;
        target.health.on_success(now, elapsed);
        record_attempt(&target, "ok");
        self.attempts.push(AttemptInfo {
            target: target.id.clone(),
            status: res.status().as_u16(),
            elapsed,
            error: None,
        });
        let attempts: Arc<[AttemptInfo]> = std::mem::take(&mut self.attempts).into();
        let headers = res.headers_mut();
        if let Some(v) = attempts_value(&attempts) {
            headers.insert(ATTEMPTS_NAME.clone(), v);
        }
        if let Some(v) = target.series.id_value(&target.id) {
            headers.insert(TARGET_NAME.clone(), v);
        }
        res.extensions_mut().insert(ServedBy {
            target,
            attempts,
            upstream_wait: self.upstream_wait,
        });
        res
    }

    /// An attempt ended in `e`: report it to the target's health (unless it blames nobody),
    /// count it, and decide whether the chain goes on.
    fn attempt_failed(
        &mut self,
        chain: &mut Chain,
        mut current: Current,
        e: GatewayError,
        now: Instant,
    ) {
        let target = current.target.clone();
        let elapsed = now.saturating_duration_since(current.started);
        self.upstream_wait += elapsed;
        // Believe an upstream's wait only up to the target's cap, in memory and to clients.
        let e = match e.retry_after() {
            Some(w) if e.origin() == crate::error::Origin::Upstream => {
                e.with_retry_after(target.health.config().cap_retry_after(w))
            }
            _ => e,
        };
        // A timeout under deadlines the client shortened, or an error that blames nobody, says
        // nothing about the target: not reported, and a probe hands its slot back (on drop).
        let counted = !(current.shortened && e.kind() == ErrorKind::UpstreamTimeout)
            && blame(&e) != (Blame::Nobody { alive: false });
        if counted {
            current.probe = false;
            if let Some(ej) = target.health.on_failure(&e, now) {
                ejected(&target, ej);
            }
        }
        drop(current);
        record_attempt(&target, e.kind().as_str());
        let more = e.is_retryable() && chain.next < chain.limit;
        warn_failed(&target, &e, chain.calls, more);
        self.attempts.push(AttemptInfo {
            target: target.id.clone(),
            status: e.upstream_status_code().unwrap_or(0),
            elapsed,
            error: Some(e.kind().as_str()),
        });
        if !e.is_retryable() {
            // The client's own mistake (or a gateway refusal): one attempt.
            self.best = Some(e);
            self.earliest_retry = None;
            chain.next = chain.limit;
        } else {
            self.note_failure(e);
        }
    }

    /// Every candidate failed or was skipped: the most informative failure, with the shortest
    /// wait any asked for, the attempts, and why the chain stopped early (retry budget).
    fn exhausted(&mut self) -> GatewayError {
        let mut e = self
            .best
            .take()
            .unwrap_or_else(|| GatewayError::internal("no route targets (Route layer missing?)"));
        if matches!(e.status().as_u16(), 429 | 503) {
            if let Some(w) = self.earliest_retry {
                e = e.with_retry_after(w);
            }
        }
        if let Some(v) = attempts_value(&self.attempts) {
            e = e.with_header(ATTEMPTS_NAME.clone(), v);
        }
        if self.budget_exhausted {
            e = e.with_header(
                HeaderName::from_static("x-tollgate-fallback-stopped"),
                HeaderValue::from_static("retry-budget"),
            );
        }
        e.context_mut().attempts = Some(std::mem::take(&mut self.attempts).into());
        e
    }
}

impl<S, F> Future for ResponseFuture<S, F>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = GatewayError, Future = F>,
    F: Future<Output = Result<Response<Body>, GatewayError>>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { fut } => {
                    let res = ready!(fut.poll(cx));
                    let now = Instant::now();
                    let Some(current) = this.current.take() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(GatewayError::internal(
                            "fallback lost its current attempt",
                        )));
                    };
                    match res {
                        Ok(res) => {
                            let res = this.outcome.served(current, res, now);
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(res));
                        }
                        Err(e) => {
                            this.outcome.attempt_failed(this.chain, current, e, now);
                            this.state.set(State::Next);
                        }
                    }
                }
                StateProj::Next => {
                    let Some(current) = this.chain.choose(this.outcome, Instant::now()) else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(this.outcome.exhausted()));
                    };
                    *this.current = Some(current);
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    if !*this.ready {
                        if let Err(e) = ready!(this.service.poll_ready(cx)) {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    }
                    *this.ready = false;
                    match this.chain.request(this.current, &this.outcome.attempts) {
                        Ok(req) => {
                            let fut = this.service.call(req);
                            this.state.set(State::Called { fut });
                        }
                        Err(e) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                StateProj::Done => {
                    return Poll::Ready(Err(GatewayError::internal(
                        "fallback future polled after completion",
                    )));
                }
            }
        }
    }
}
