//! [`Health`]: per-target circuit breaker, `Retry-After` memory and latency EWMA.
//!
//! One `Health` lives in each [`Target`](crate::target::Target) (share the `Arc` between two
//! `Target` values that name the same provider and upstream model). Fallback asks it before each
//! attempt ([`Health::admit`]) and reports the outcome ([`Health::on_success`],
//! [`Health::on_failure`]); Route reads it without side effects ([`Health::peek`],
//! [`Health::ewma_ttft`]) to order tier and latency routes.
//!
//! The breaker is **on by default** ([`BreakerConfig::default`]):
//! - **closed**: every request goes through; a failure that says something about the target
//!   ([`GatewayError::is_retryable`]: 408/429/5xx/529, connect errors, timeouts, protocol errors)
//!   is counted. `consecutive_failures` in a row, or an error ratio of at least `failure_ratio`
//!   over at least `min_requests` inside `window`, **ejects** the target.
//! - **open**: no request reaches the target until the ejection ends. The ejection lasts
//!   `base_ejection`, doubled on each ejection in a row (capped at `max_ejection`), and at least
//!   as long as the upstream's `Retry-After` says.
//! - **half-open**: after the ejection, exactly one request (the probe) is let through; every
//!   other request is refused until its outcome is known. A success closes the circuit, a failure
//!   ejects again (for longer). A probe whose request is dropped hands its slot back
//!   ([`Health::release_probe`], done by Fallback); one that never reports back at all frees the
//!   slot after `probe_timeout`.
//!
//! Independently of the breaker, an upstream `Retry-After` blocks the target until it has
//! passed, and a success clears it. A client error (another 4xx) proves the target is up: it
//! counts as a success for the breaker but does not feed the latency average.
//!
//! Time is [`tokio::time::Instant`], so tests drive it with `tokio::time::pause`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{ErrorKind, GatewayError};

/// Circuit-breaker settings for one target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Whether failures may eject the target. `Retry-After` is honoured either way.
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
    /// Longest ejection the doubling reaches (default 5 min). A longer `Retry-After` wins.
    pub max_ejection: Duration,
    /// A probe that has not reported back after this long frees the half-open slot
    /// (default 60 s).
    pub probe_timeout: Duration,
}

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
        }
    }
}

impl BreakerConfig {
    /// A configuration that never ejects (only `Retry-After` blocks).
    pub fn disabled() -> Self {
        BreakerConfig {
            enabled: false,
            ..BreakerConfig::default()
        }
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
pub enum BlockReason {
    /// The upstream said `Retry-After`.
    RetryAfter,
    /// The circuit is open.
    CircuitOpen,
    /// The circuit is half-open and its probe is in flight.
    ProbeInFlight,
}

/// Answer of [`Health::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead: this request is the half-open probe. Report its outcome.
    Probe,
    /// Do not call the target.
    Blocked {
        /// The earliest time the target may accept again (an estimate for
        /// [`BlockReason::ProbeInFlight`]).
        until: Instant,
        /// Why.
        reason: BlockReason,
    },
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
    retry_after_until: Option<Instant>,
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
                retry_after_until: None,
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
    pub fn admit(&self, now: Instant) -> Admission {
        let mut s = self.lock();
        if let Some(until) = s.retry_after_until {
            if until > now {
                return Admission::Blocked {
                    until,
                    reason: BlockReason::RetryAfter,
                };
            }
            s.retry_after_until = None;
        }
        match s.circuit {
            Circuit::Closed => Admission::Allowed,
            Circuit::Open { until } if until > now => Admission::Blocked {
                until,
                reason: BlockReason::CircuitOpen,
            },
            Circuit::HalfOpen {
                probe_since: Some(t),
            } if now < t + self.config.probe_timeout => Admission::Blocked {
                until: now + PROBE_WAIT,
                reason: BlockReason::ProbeInFlight,
            },
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => {
                s.circuit = Circuit::HalfOpen {
                    probe_since: Some(now),
                };
                Admission::Probe
            }
        }
    }

    /// Hand back the half-open probe slot without an outcome (the probe's request was dropped
    /// before it answered), so the next request may probe at once.
    pub fn release_probe(&self) {
        let mut s = self.lock();
        if let Circuit::HalfOpen { probe_since } = &mut s.circuit {
            *probe_since = None;
        }
    }

    /// `Ok` when [`admit`](Self::admit) would let a request through now (as a normal request
    /// or as the probe); otherwise the earliest time it may. No side effects.
    pub fn peek(&self, now: Instant) -> Result<(), Instant> {
        let s = self.lock();
        if let Some(until) = s.retry_after_until {
            if until > now {
                return Err(until);
            }
        }
        match s.circuit {
            Circuit::Open { until } if until > now => Err(until),
            Circuit::HalfOpen {
                probe_since: Some(t),
            } if now < t + self.config.probe_timeout => Err(now + PROBE_WAIT),
            _ => Ok(()),
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

    /// Record a successful attempt and its time to first token (for a stream: to its first
    /// event). Closes a half-open or open circuit and clears the `Retry-After` memory.
    pub fn on_success(&self, now: Instant, ttft: Duration) {
        let mut s = self.lock();
        let x = ttft.as_secs_f64() * 1000.0;
        s.ewma_ttft_ms = Some(match s.ewma_ttft_ms {
            Some(prev) => prev * (1.0 - EWMA_ALPHA) + x * EWMA_ALPHA,
            None => x,
        });
        Self::record_up(&mut s, &self.config, now);
    }

    fn record_up(s: &mut State, config: &BreakerConfig, now: Instant) {
        s.retry_after_until = None;
        s.consecutive = 0;
        match s.circuit {
            Circuit::Closed => {
                Self::roll_window(s, config, now);
                s.window_total = s.window_total.saturating_add(1);
            }
            Circuit::HalfOpen { .. } | Circuit::Open { .. } => {
                s.circuit = Circuit::Closed;
                s.ejections = 0;
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

    /// Record a failed attempt. Errors that say nothing about the target's health (a client
    /// error, a gateway refusal) count as proof that it is up; an open-circuit error is ignored.
    pub fn on_failure(&self, err: &GatewayError, now: Instant) {
        if err.kind() == ErrorKind::CircuitOpen {
            return;
        }
        let mut s = self.lock();
        if !err.is_retryable() {
            Self::record_up(&mut s, &self.config, now);
            return;
        }
        let retry_after = err.retry_after();
        if let Some(wait) = retry_after {
            let until = now + wait;
            s.retry_after_until = Some(s.retry_after_until.map_or(until, |t| t.max(until)));
        }
        if !self.config.enabled {
            return;
        }
        Self::roll_window(&mut s, &self.config, now);
        s.window_total = s.window_total.saturating_add(1);
        s.window_failures = s.window_failures.saturating_add(1);
        s.consecutive = s.consecutive.saturating_add(1);
        let eject = match s.circuit {
            Circuit::HalfOpen { .. } => true,
            Circuit::Open { .. } => false,
            Circuit::Closed => {
                s.consecutive >= self.config.consecutive_failures.max(1)
                    || (s.window_total >= self.config.min_requests.max(1)
                        && f64::from(s.window_failures)
                            >= self.config.failure_ratio * f64::from(s.window_total))
            }
        };
        if eject {
            let doubling = 1u32.checked_shl(s.ejections.min(16)).unwrap_or(u32::MAX);
            let mut dur = self
                .config
                .base_ejection
                .saturating_mul(doubling)
                .min(self.config.max_ejection);
            if let Some(wait) = retry_after {
                dur = dur.max(wait);
            }
            s.circuit = Circuit::Open { until: now + dur };
            s.ejections = s.ejections.saturating_add(1);
            s.consecutive = 0;
            s.window_start = now;
            s.window_total = 0;
            s.window_failures = 0;
            tracing::warn!(ejection_ms = dur.as_millis() as u64, "target ejected");
        }
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
            h.on_failure(&e500(), t0);
        }
        assert_eq!(h.circuit(), CircuitState::Closed);
        h.on_failure(&e500(), t0);
        assert_eq!(
            h.admit(t0 + Duration::from_secs(9)),
            Admission::Blocked {
                until: t0 + Duration::from_secs(10),
                reason: BlockReason::CircuitOpen
            }
        );
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(h.admit(t1), Admission::Probe);
        assert!(matches!(
            h.admit(t1),
            Admission::Blocked {
                reason: BlockReason::ProbeInFlight,
                ..
            }
        ));
        h.on_success(t1, Duration::from_millis(100));
        assert_eq!(h.circuit(), CircuitState::Closed);
        assert_eq!(h.admit(t1), Admission::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_doubles_ejection_and_retry_after_extends_it() {
        let h = Health::new(BreakerConfig {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(10),
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        h.on_failure(&e500(), t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(h.admit(t1), Admission::Probe);
        h.on_failure(&e500(), t1);
        assert_eq!(
            h.circuit(),
            CircuitState::Open {
                until: t1 + Duration::from_secs(20)
            }
        );
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(h.admit(t2), Admission::Probe);
        let e429 = GatewayError::upstream_status(StatusCode::TOO_MANY_REQUESTS, "slow", None)
            .with_retry_after(Duration::from_secs(90));
        h.on_failure(&e429, t2);
        assert_eq!(h.peek(t2), Err(t2 + Duration::from_secs(90)));
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
        for i in 0..10 {
            if i % 2 == 0 {
                h.on_success(t1, Duration::from_millis(5));
            } else {
                h.on_failure(&e500(), t1);
            }
        }
        assert!(matches!(h.circuit(), CircuitState::Open { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_blocks_without_breaker_and_lost_probe_expires() {
        let h = Health::new(BreakerConfig::disabled());
        let t0 = Instant::now();
        let e = GatewayError::upstream_status(StatusCode::TOO_MANY_REQUESTS, "slow", None)
            .with_retry_after(Duration::from_secs(30));
        for _ in 0..10 {
            h.on_failure(&e, t0);
        }
        assert_eq!(h.circuit(), CircuitState::Closed);
        assert_eq!(
            h.admit(t0 + Duration::from_secs(29)),
            Admission::Blocked {
                until: t0 + Duration::from_secs(30),
                reason: BlockReason::RetryAfter
            }
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
