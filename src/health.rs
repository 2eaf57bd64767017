//! [`Health`]: per-target circuit breaker, `Retry-After` memory and latency EWMA.
//!
//! Placeholder API; the Fallback work fills in the policy.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::GatewayError;

/// Per-target health state.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    blocked_until: Option<Instant>,
    ewma_ttft_ms: Option<f64>,
}

impl Health {
    /// `Ok` when the target may be tried now; otherwise when it may be tried again.
    pub fn check(&self, now: Instant) -> Result<(), Instant> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.blocked_until {
            Some(t) if t > now => Err(t),
            _ => Ok(()),
        }
    }

    /// Record a successful attempt and its time to first token.
    pub fn on_success(&self, ttft: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let x = ttft.as_secs_f64() * 1000.0;
        s.ewma_ttft_ms = Some(match s.ewma_ttft_ms {
            Some(prev) => prev * 0.8 + x * 0.2,
            None => x,
        });
    }

    /// Record a failed attempt.
    pub fn on_failure(&self, err: &GatewayError, now: Instant) {
        if let Some(wait) = err.retry_after() {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.blocked_until = Some(now + wait);
        }
    }

    /// The smoothed time to first token, if any attempt succeeded.
    pub fn ewma_ttft(&self) -> Option<Duration> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.ewma_ttft_ms
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
    }
}
