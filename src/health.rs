//! [`Health`]: per-target circuit breaker, rate-limit memory and latency EWMA.
//!
//! One `Health` lives in each [`Target`](crate::target::Target) (share the `Arc` between two
//! `Target` values that name the same provider and upstream model). Fallback asks it before each
//! attempt (`Health::admit`) and reports the outcome ([`Health::on_success`],
//! [`Health::on_failure`]); Route reads it without side effects (`Health::peek`,
//! [`Health::ewma_ttft`]) to order tier and latency routes.
//!
//! Every error an attempt ends with is first asked **who is to blame** (`blame`):
//! - `Blame::Target` — the target's own failure: an upstream 5xx or 529, 408, a connect error,
//!   a timeout under the target's own deadlines, a protocol error. Only these count for the
//!   breaker.
//! - `Blame::RateLimit` — an upstream **429**. Rate limiting is not failure: it never counts
//!   for the breaker. Its `Retry-After` (capped at [`BreakerConfig::max_retry_after`], default
//!   60 s) is remembered and the target is skipped until exactly that instant has passed
//!   (`BlockReason::RateLimited`; Fallback answers 429 with the remaining wait). A 429 that is
//!   not a wait — `insufficient_quota`, or one the upstream marked `x-should-retry: false` — is
//!   not remembered at all: the next request still goes.
//! - `Blame::Nobody` with proof of life — any other upstream 4xx: the request was the client's
//!   mistake and the target answered it. It counts as a success for the breaker (but not for the
//!   latency average, and it does not clear a remembered wait).
//! - `Blame::Nobody` — the gateway's own refusals and failures provoked by the request itself
//!   (`origin: "gateway"`: a request the adapter could not translate, a skip): not reported at
//!   all, so one client's bad requests cannot eject a target for everyone.
//!
//! The breaker is **on by default** ([`BreakerConfig::default`]):
//! - **closed**: every request goes through; target failures are counted.
//!   `consecutive_failures` in a row, or an error ratio of at least `failure_ratio` over at least
//!   `min_requests` inside `window`, **ejects** the target ([`Health::on_failure`] returns the
//!   [`Ejection`], which Fallback logs at `warn` naming the target and counts in
//!   [`EJECTIONS`](crate::metrics::EJECTIONS)).
//! - **open**: no request reaches the target until the ejection ends
//!   (`BlockReason::CircuitOpen`, with the failure count, so the gateway's 503 can say
//!   "circuit open for target X after N failures"). The ejection lasts `base_ejection`, doubled
//!   on each ejection in a row (capped at `max_ejection`), and at least as long as the failing
//!   answer's own `Retry-After` (capped like any other).
//! - **half-open**: after the ejection, exactly one request (the probe) is let through; every
//!   other request is refused until its outcome is known. A success (or an upstream 4xx/429:
//!   the target is up) closes the circuit, a target failure ejects again (for longer). A probe
//!   whose request is dropped, or ends in an error that blames nobody, hands its slot back
//!   ([`Health::release_probe`], done by Fallback); one that never reports back at all frees the
//!   slot after `probe_timeout`.
//!
//! A success clears the rate-limit memory. A config reload clears it too
//! ([`Health::forget_waits`], called by [`Config::build_runtime`]) while circuit state and
//! latency history are kept.
//!
//! Time is [`tokio::time::Instant`], so tests drive it with `tokio::time::pause`.
//!
//! [`Config::build_runtime`]: crate::config::Config::build_runtime

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{ErrorKind, GatewayError, Origin};

/// Circuit-breaker settings for one target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Whether failures may eject the target. The rate-limit memory works either way.
    pub enabled: bool,
    /// Failures in a row that eject the target (default 5).
    pub consecutive_failures: u32,
    /// Failure ratio inside `window` that ejects the target (default 0.5) ...
    pub failure_ratio: f64,
    /// ... once at least this many requests were seen inside `window` (default 20).
    pub min_requests: u32,
    /// The window of the failure ratio (default 30 s).
    pub window: Duration,
    /// First ejection (default 10 s); doubled on each ejection in a row.
    pub base_ejection: Duration,
    /// Longest ejection the doubling reaches (default 5 min). A longer (capped) `Retry-After`
    /// on the failing answer wins.
    pub max_ejection: Duration,
    /// A probe that has not reported back after this long frees the half-open slot
    /// (default 60 s).
    pub probe_timeout: Duration,
    /// The longest upstream `Retry-After` believed (default 60 s): a longer one (say
    /// `86400`, or an HTTP date in 2099) is remembered, and told to clients, as this long.
    pub max_retry_after: Duration,
}

/// Default of [`BreakerConfig::max_retry_after`].
pub(crate) const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(30),
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            probe_timeout: Duration::from_secs(60),
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
        }
    }
}

impl BreakerConfig {
    /// A configuration that never ejects (only the rate-limit memory blocks).
    pub fn disabled() -> Self {
        BreakerConfig {
            enabled: false,
            ..BreakerConfig::default()
        }
    }

    /// An upstream's `Retry-After`, capped at [`max_retry_after`](Self::max_retry_after).
    pub fn cap_retry_after(&self, wait: Duration) -> Duration {
        wait.min(self.max_retry_after)
    }
}

/// Who an attempt's error blames; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blame {
    /// The target's own failure: counts for the breaker.
    Target,
    /// The upstream rate-limited the request (429): never a failure. `wait` is its
    /// `Retry-After` (uncapped; `None` when it sent none, or when the 429 is not a wait, such as
    /// `insufficient_quota`).
    RateLimit {
        /// How long the upstream asked the gateway to wait.
        wait: Option<Duration>,
    },
    /// Not the target's fault. `alive` when the upstream answered (an upstream 4xx, proof that
    /// the target is up); `false` for the gateway's own refusals and failures the request
    /// provoked, which are not counted at all.
    Nobody {
        /// The upstream answered.
        alive: bool,
    },
}

/// Whether a 429 is not a wait: `insufficient_quota` (OpenAI's `error.code`/`type`), or an
/// answer the upstream marked `x-should-retry: false`. Waiting will not help; telling clients to
/// retry would make them retry forever.
pub(crate) fn is_quota_exhausted(err: &GatewayError) -> bool {
    err.code() == Some("insufficient_quota")
        || err
            .headers()
            .get("x-should-retry")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"false"))
}

/// Who `err`, the outcome of one attempt, blames.
pub(crate) fn blame(err: &GatewayError) -> Blame {
    if err.origin() == Origin::Gateway {
        // A refusal of the gateway's own (the request could not be translated, a skip): the
        // target never saw the request, or the request itself was at fault.
        return Blame::Nobody { alive: false };
    }
    match err.kind() {
        ErrorKind::UpstreamRateLimited if is_quota_exhausted(err) => {
            Blame::RateLimit { wait: None }
        }
        ErrorKind::UpstreamRateLimited => Blame::RateLimit {
            wait: err.retry_after(),
        },
        ErrorKind::UpstreamServerError
        | ErrorKind::UpstreamOverloaded
        | ErrorKind::UpstreamConnect
        | ErrorKind::UpstreamTimeout
        | ErrorKind::UpstreamProtocol => Blame::Target,
        _ => Blame::Nobody {
            alive: err.upstream_status_code().is_some(),
        },
    }
}

/// The breaker's state, as reported by [`Health::circuit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// Ejected until the given instant.
    Open {
        /// When the probe may go.
        until: Instant,
    },
    /// One probe is (or may be) in flight.
    HalfOpen,
}

/// Why a target refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockReason {
    /// The upstream answered 429 with a `Retry-After` that has not passed.
    RateLimited,
    /// The breaker ejected the target.
    CircuitOpen {
        /// The target failures that ejected it (for a failed probe: counted on from the
        /// ejection before).
        failures: u32,
    },
    /// The circuit is half-open and its probe is in flight.
    ProbeInFlight,
}

/// A refusal: see [`Health::admit`] and [`Health::peek`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blocked {
    /// The earliest time the target may accept again (an estimate for
    /// [`BlockReason::ProbeInFlight`]).
    pub until: Instant,
    /// Why.
    pub reason: BlockReason,
}

/// Answer of [`Health::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead: this request is the half-open probe. Report its outcome.
    Probe,
    /// Do not call the target.
    Blocked(Blocked),
}

/// An ejection, as returned by [`Health::on_failure`] (for the caller to log and count: `Health`
/// does not know the target's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// The target failures that ejected it.
    pub failures: u32,
    /// How long the circuit stays open.
    pub duration: Duration,
}

/// How long a client is told to wait while a probe is in flight.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// Per-target health state.
#[derive(Debug)]
pub struct Health {
    config: BreakerConfig,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    circuit: Circuit,
    consecutive: u32,
    window_start: Instant,
    window_total: u32,
    window_failures: u32,
    ejections: u32,
    /// The failures behind the current ejection.
    ejected_after: u32,
    rate_limited_until: Option<Instant>,
    ewma_ttft_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
enum Circuit {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_since: Option<Instant> },
}

impl Default for Health {
    fn default() -> Self {
        Health::new(BreakerConfig::default())
    }
}

/// Weight of a new sample in the latency average.
const EWMA_ALPHA: f64 = 0.2;

impl Health {
    /// Fresh health (closed circuit) with `config`.
    pub fn new(config: BreakerConfig) -> Self {
        Health {
            config,
            state: Mutex::new(State {
                circuit: Circuit::Closed,
                consecutive: 0,
                window_start: Instant::now(),
                window_total: 0,
                window_failures: 0,
                ejections: 0,
                ejected_after: 0,
                rate_limited_until: None,
                ewma_ttft_ms: None,
            }),
        }
    }

    /// The breaker settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask to send a request now. Moves an expired open circuit to half-open and hands out
    /// the single probe; the caller must report the outcome of an admitted request.
    pub(crate) fn admit(&self, now: Instant) -> Admission {
        let mut s = self.lock();
        if let Some(b) = self.blocked(&mut s, now) {
            return Admission::Blocked(b);
        }
        match s.circuit {
            Circuit::Closed => Admission::Allowed,
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => {
                s.circuit = Circuit::HalfOpen {
                    probe_since: Some(now),
                };
                Admission::Probe
            }
        }
    }

    /// The refusal in force at `now`, if any; forgets a rate limit that has passed.
    fn blocked(&self, s: &mut State, now: Instant) -> Option<Blocked> {
        if let Some(until) = s.rate_limited_until {
            if until > now {
                return Some(Blocked {
                    until,
                    reason: BlockReason::RateLimited,
                });
            }
            s.rate_limited_until = None;
        }
        match s.circuit {
            Circuit::Open { until } if until > now => Some(Blocked {
                until,
                reason: BlockReason::CircuitOpen {
                    failures: s.ejected_after,
                },
            }),
            Circuit::HalfOpen {
                probe_since: Some(t),
            } if now < t + self.config.probe_timeout => Some(Blocked {
                until: now + PROBE_WAIT,
                reason: BlockReason::ProbeInFlight,
            }),
            _ => None,
        }
    }

    /// Hand back the half-open probe slot without an outcome (the probe's request was dropped
    /// before it answered, or its error blamed nobody), so the next request may probe at once.
    pub fn release_probe(&self) {
        let mut s = self.lock();
        if let Circuit::HalfOpen { probe_since } = &mut s.circuit {
            *probe_since = None;
        }
    }

    /// `Ok` when [`admit`](Self::admit) would let a request through now (as a normal request
    /// or as the probe); otherwise the refusal. No side effects (beyond forgetting a rate limit
    /// that has passed).
    pub(crate) fn peek(&self, now: Instant) -> Result<(), Blocked> {
        let mut s = self.lock();
        match self.blocked(&mut s, now) {
            Some(b) => Err(b),
            None => Ok(()),
        }
    }

    /// The breaker's state now.
    pub fn circuit(&self) -> CircuitState {
        match self.lock().circuit {
            Circuit::Closed => CircuitState::Closed,
            Circuit::Open { until } => CircuitState::Open { until },
            Circuit::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Until when the target is rate-limited (its upstream's 429 `Retry-After`, capped), if it
    /// still is at `now`.
    pub fn rate_limited_until(&self, now: Instant) -> Option<Instant> {
        self.lock().rate_limited_until.filter(|t| *t > now)
    }

    /// Forget every remembered `Retry-After` (a config reload does this: an operator who
    /// reloads has acted on what the upstream said). Circuit state and latency stay.
    pub fn forget_waits(&self) {
        self.lock().rate_limited_until = None;
    }

    /// Record a successful attempt and its time to first token (for a stream: to its first
    /// event). Closes a half-open or open circuit and clears the rate-limit memory.
    pub fn on_success(&self, now: Instant, ttft: Duration) {
        let mut s = self.lock();
        let x = ttft.as_secs_f64() * 1000.0;
        s.ewma_ttft_ms = Some(match s.ewma_ttft_ms {
            Some(prev) => prev * (1.0 - EWMA_ALPHA) + x * EWMA_ALPHA,
            None => x,
        });
        s.rate_limited_until = None;
        Self::record_up(&mut s, &self.config, now);
    }

    /// The target answered: the breaker's success.
    fn record_up(s: &mut State, config: &BreakerConfig, now: Instant) {
        s.consecutive = 0;
        match s.circuit {
            Circuit::Closed => {
                Self::roll_window(s, config, now);
                s.window_total = s.window_total.saturating_add(1);
            }
            Circuit::HalfOpen { .. } | Circuit::Open { .. } => {
                s.circuit = Circuit::Closed;
                s.ejections = 0;
                s.ejected_after = 0;
                s.window_start = now;
                s.window_total = 1;
                s.window_failures = 0;
            }
        }
    }

    fn roll_window(s: &mut State, config: &BreakerConfig, now: Instant) {
        if now.saturating_duration_since(s.window_start) >= config.window {
            s.window_start = now;
            s.window_total = 0;
            s.window_failures = 0;
        }
    }

    /// Record a failed attempt, according to `blame`: a target failure is counted (and may
    /// eject: the [`Ejection`] is returned); a 429 is remembered for its capped `Retry-After`
    /// and proves the target up; an upstream 4xx proves it up; a gateway-side error changes
    /// nothing.
    pub fn on_failure(&self, err: &GatewayError, now: Instant) -> Option<Ejection> {
        let mut s = self.lock();
        match blame(err) {
            Blame::Nobody { alive: false } => None,
            Blame::Nobody { alive: true } => {
                Self::record_up(&mut s, &self.config, now);
                None
            }
            Blame::RateLimit { wait } => {
                if let Some(wait) = wait {
                    let until = now + self.config.cap_retry_after(wait);
                    s.rate_limited_until =
                        Some(s.rate_limited_until.map_or(until, |t| t.max(until)));
                }
                Self::record_up(&mut s, &self.config, now);
                None
            }
            Blame::Target => self.record_failure(&mut s, err, now),
        }
    }

    fn record_failure(&self, s: &mut State, err: &GatewayError, now: Instant) -> Option<Ejection> {
        if !self.config.enabled {
            return None;
        }
        Self::roll_window(s, &self.config, now);
        s.window_total = s.window_total.saturating_add(1);
        s.window_failures = s.window_failures.saturating_add(1);
        s.consecutive = s.consecutive.saturating_add(1);
        let failures = match s.circuit {
            Circuit::HalfOpen { .. } => Some(s.ejected_after.saturating_add(1)),
            Circuit::Open { .. } => None,
            Circuit::Closed if s.consecutive >= self.config.consecutive_failures.max(1) => {
                Some(s.consecutive)
            }
            Circuit::Closed
                if s.window_total >= self.config.min_requests.max(1)
                    && f64::from(s.window_failures)
                        >= self.config.failure_ratio * f64::from(s.window_total) =>
            {
                Some(s.window_failures)
            }
            Circuit::Closed => None,
        };
        let failures = failures?;
        let doubling = 1u32.checked_shl(s.ejections.min(16)).unwrap_or(u32::MAX);
        let mut duration = self
            .config
            .base_ejection
            .saturating_mul(doubling)
            .min(self.config.max_ejection);
        if let Some(wait) = err.retry_after() {
            duration = duration.max(self.config.cap_retry_after(wait));
        }
        s.circuit = Circuit::Open {
            until: now + duration,
        };
        s.ejections = s.ejections.saturating_add(1);
        s.ejected_after = failures;
        s.consecutive = 0;
        s.window_start = now;
        s.window_total = 0;
        s.window_failures = 0;
        Some(Ejection { failures, duration })
    }

    /// The smoothed time to first token, if any attempt succeeded.
    pub fn ewma_ttft(&self) -> Option<Duration> {
        self.lock()
            .ewma_ttft_ms
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn e500() -> GatewayError {
        GatewayError::upstream_status(StatusCode::INTERNAL_SERVER_ERROR, "boom", None)
    }

    fn e429(wait: u64) -> GatewayError {
        GatewayError::upstream_status(StatusCode::TOO_MANY_REQUESTS, "slow", None)
            .with_retry_after(Duration::from_secs(wait))
    }

    fn blocked(until: Instant, reason: BlockReason) -> Admission {
        Admission::Blocked(Blocked { until, reason })
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_then_one_probe_then_close() {
        let h = Health::new(BreakerConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(h.admit(t0), Admission::Allowed);
            assert_eq!(h.on_failure(&e500(), t0), None);
        }
        assert_eq!(h.circuit(), CircuitState::Closed);
        assert_eq!(
            h.on_failure(&e500(), t0),
            Some(Ejection {
                failures: 3,
                duration: Duration::from_secs(10)
            })
        );
        assert_eq!(
            h.admit(t0 + Duration::from_secs(9)),
            blocked(
                t0 + Duration::from_secs(10),
                BlockReason::CircuitOpen { failures: 3 }
            )
        );
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(h.admit(t1), Admission::Probe);
        assert!(matches!(
            h.admit(t1),
            Admission::Blocked(Blocked {
                reason: BlockReason::ProbeInFlight,
                ..
            })
        ));
        h.on_success(t1, Duration::from_millis(100));
        assert_eq!(h.circuit(), CircuitState::Closed);
        assert_eq!(h.admit(t1), Admission::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_doubles_ejection_and_a_capped_retry_after_extends_it() {
        let h = Health::new(BreakerConfig {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(10),
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        h.on_failure(&e500(), t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(h.admit(t1), Admission::Probe);
        let ej = h.on_failure(&e500(), t1).expect("ejected again");
        assert_eq!((ej.failures, ej.duration), (2, Duration::from_secs(20)));
        assert_eq!(
            h.circuit(),
            CircuitState::Open {
                until: t1 + Duration::from_secs(20)
            }
        );
        // A 503 asking for a day: the ejection lasts the cap (60 s), not a day.
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(h.admit(t2), Admission::Probe);
        let e503 = GatewayError::upstream_status(StatusCode::SERVICE_UNAVAILABLE, "down", None)
            .with_retry_after(Duration::from_secs(86_400));
        let ej = h.on_failure(&e503, t2).expect("ejected again");
        assert_eq!((ej.failures, ej.duration), (3, Duration::from_secs(60)));
        assert_eq!(
            h.peek(t2),
            Err(Blocked {
                until: t2 + Duration::from_secs(60),
                reason: BlockReason::CircuitOpen { failures: 3 }
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_never_eject_and_last_exactly_the_wait() {
        let h = Health::new(BreakerConfig {
            consecutive_failures: 2,
            min_requests: 2,
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(h.on_failure(&e429(2), t0), None, "a 429 never ejects");
        }
        assert_eq!(h.circuit(), CircuitState::Closed);
        assert_eq!(
            h.admit(t0 + Duration::from_millis(1999)),
            blocked(t0 + Duration::from_secs(2), BlockReason::RateLimited)
        );
        assert_eq!(h.rate_limited_until(t0), Some(t0 + Duration::from_secs(2)));
        assert_eq!(h.admit(t0 + Duration::from_secs(2)), Admission::Allowed);
        assert_eq!(h.rate_limited_until(t0 + Duration::from_secs(2)), None);
        // A 429 without Retry-After is not remembered: nobody said how long.
        let bare = GatewayError::upstream_status(StatusCode::TOO_MANY_REQUESTS, "slow", None);
        h.on_failure(&bare, t0);
        assert_eq!(h.peek(t0 + Duration::from_secs(3)), Ok(()));
        // 429s between failures reset the run: the target answers, it is not broken.
        let t1 = t0 + Duration::from_secs(3);
        for _ in 0..5 {
            h.on_failure(&e500(), t1);
            h.on_failure(&e429(0), t1);
        }
        assert_eq!(h.circuit(), CircuitState::Closed);
        assert_eq!(h.on_failure(&e500(), t1), None);
        assert!(
            h.on_failure(&e500(), t1).is_some(),
            "two target failures in a row"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_capped_and_a_success_or_reload_forgets_it() {
        let t0 = Instant::now();
        let h = Health::default();
        h.on_failure(&e429(86_400), t0);
        assert_eq!(
            h.peek(t0),
            Err(Blocked {
                until: t0 + DEFAULT_MAX_RETRY_AFTER,
                reason: BlockReason::RateLimited
            })
        );
        let h = Health::new(BreakerConfig {
            max_retry_after: Duration::from_secs(5),
            ..BreakerConfig::disabled()
        });
        h.on_failure(&e429(86_400), t0);
        assert_eq!(h.rate_limited_until(t0), Some(t0 + Duration::from_secs(5)));
        assert_eq!(h.admit(t0 + Duration::from_secs(5)), Admission::Allowed);

        h.on_failure(&e429(3), t0);
        h.forget_waits();
        assert_eq!(h.admit(t0), Admission::Allowed, "a reload forgets the wait");
        h.on_failure(&e429(3), t0);
        h.on_success(t0, Duration::from_millis(5));
        assert_eq!(
            h.admit(t0),
            Admission::Allowed,
            "a success forgets the wait"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quota_exhausted_is_not_a_wait() {
        let t0 = Instant::now();
        let h = Health::default();
        let quota = e429(30).with_code("insufficient_quota");
        assert!(is_quota_exhausted(&quota));
        assert_eq!(blame(&quota), Blame::RateLimit { wait: None });
        h.on_failure(&quota, t0);
        assert_eq!(h.admit(t0), Admission::Allowed);
        let marked = e429(30).with_header(
            http::HeaderName::from_static("x-should-retry"),
            http::HeaderValue::from_static("false"),
        );
        h.on_failure(&marked, t0);
        assert_eq!(h.admit(t0), Admission::Allowed);
        assert_eq!(h.circuit(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_prove_life_and_gateway_errors_change_nothing() {
        let h = Health::new(BreakerConfig {
            consecutive_failures: 1,
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        for e in [
            GatewayError::bad_request("bad field", Some("messages")),
            GatewayError::internal("could not build upstream request"),
            GatewayError::new(ErrorKind::CircuitOpen, "skipped"),
        ] {
            assert_eq!(blame(&e), Blame::Nobody { alive: false });
            assert_eq!(h.on_failure(&e, t0), None);
        }
        assert_eq!(h.circuit(), CircuitState::Closed);
        h.on_failure(&e500(), t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(h.admit(t1), Admission::Probe);
        // The probe's request was refused by the gateway: the circuit stays half-open.
        h.on_failure(&GatewayError::bad_request("bad", None), t1);
        assert_eq!(h.circuit(), CircuitState::HalfOpen);
        // An upstream 400 (or 404, 413, ...) proves the target up and closes it.
        for code in [400, 401, 403, 404, 413, 422] {
            let e = GatewayError::upstream_status(StatusCode::from_u16(code).unwrap(), "x", None);
            assert_eq!(blame(&e), Blame::Nobody { alive: true }, "{code}");
        }
        let e400 = GatewayError::upstream_status(StatusCode::BAD_REQUEST, "bad", None);
        h.on_failure(&e400, t1);
        assert_eq!(h.circuit(), CircuitState::Closed);
        // 408, 5xx, 529, connect, timeout, protocol: the target's own failures.
        for e in [
            GatewayError::upstream_status(StatusCode::REQUEST_TIMEOUT, "x", None),
            GatewayError::upstream_status(StatusCode::BAD_GATEWAY, "x", None),
            GatewayError::upstream_status(StatusCode::from_u16(529).unwrap(), "x", None),
            GatewayError::new(ErrorKind::UpstreamConnect, "refused"),
            GatewayError::new(ErrorKind::UpstreamTimeout, "slow"),
            GatewayError::new(ErrorKind::UpstreamProtocol, "cut"),
        ] {
            assert_eq!(blame(&e), Blame::Target, "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn error_ratio_ejects_and_client_errors_do_not() {
        let h = Health::new(BreakerConfig {
            consecutive_failures: 100,
            min_requests: 10,
            failure_ratio: 0.5,
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        let bad = GatewayError::upstream_status(StatusCode::BAD_REQUEST, "bad", None);
        for _ in 0..20 {
            h.on_failure(&bad, t0);
        }
        assert_eq!(h.circuit(), CircuitState::Closed);
        for i in 0..10 {
            if i % 2 == 0 {
                h.on_success(t0, Duration::from_millis(5));
            } else {
                h.on_failure(&e500(), t0);
            }
        }
        // window_total counts the 20 client errors too: 5 failures / 30 requests
        assert_eq!(h.circuit(), CircuitState::Closed);
        let t1 = t0 + Duration::from_secs(31);
        let mut ejection = None;
        for i in 0..10 {
            if i % 2 == 0 {
                h.on_success(t1, Duration::from_millis(5));
            } else {
                ejection = ejection.or(h.on_failure(&e500(), t1));
            }
        }
        assert!(matches!(h.circuit(), CircuitState::Open { .. }));
        assert_eq!(ejection.map(|e| e.failures), Some(5));
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_breaker_still_rate_limits_and_lost_probe_expires() {
        let h = Health::new(BreakerConfig::disabled());
        let t0 = Instant::now();
        for _ in 0..10 {
            h.on_failure(&e429(30), t0);
            h.on_failure(&e500(), t0);
        }
        assert_eq!(h.circuit(), CircuitState::Closed);
        assert_eq!(
            h.admit(t0 + Duration::from_secs(29)),
            blocked(t0 + Duration::from_secs(30), BlockReason::RateLimited)
        );
        assert_eq!(h.admit(t0 + Duration::from_secs(30)), Admission::Allowed);

        let h = Health::new(BreakerConfig {
            consecutive_failures: 1,
            probe_timeout: Duration::from_secs(5),
            ..BreakerConfig::default()
        });
        h.on_failure(&e500(), t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(h.admit(t1), Admission::Probe);
        // the probe's request was dropped and never reported
        assert_eq!(h.admit(t1 + Duration::from_secs(5)), Admission::Probe);
    }
}
