//! The Fallback layer: tries the [`RouteDecision`]'s targets in order until one answers `Ok`.
//!
//! **The commit point** is the inner service returning `Ok(response)`: the [`Timeout`] layer
//! below only does that for a stream once its first SSE data event has arrived (and for a JSON
//! answer once its body has been read and is not an `{"error": ...}`), so everything before the
//! first byte reaches the client can still fall back. After that, failures are the body's
//! business (an in-band error event, see `StreamPassthrough`).
//!
//! For each target in order:
//! - a target whose [`Health`](crate::health::Health) refuses it is **skipped without a call**:
//!   one whose upstream answered 429 with a `Retry-After` that has not passed is recorded as
//!   `provider/model/upstream_rate_limited/0` and stands for a **429** (`origin: "gateway"`,
//!   code `upstream_rate_limited`, a message naming the target that asked to wait, the remaining
//!   wait in `Retry-After`); one the circuit breaker ejected (or whose half-open probe is in
//!   flight) is recorded as `provider/model/circuit_open/0` and stands for a **503** naming the
//!   target and the breaker ("circuit open for target X after N failures");
//! - otherwise one [`Attempt`](crate::target::Attempt) extension (target, number, deadlines =
//!   the target's shortened by the client's) is put on a clone of the request (the last
//!   candidate gets the request itself) and the inner service is called; the outcome is
//!   reported to the target's `Health`, which decides whom it blames
//!   (`blame`): a 429 is remembered for its `Retry-After` (capped at the
//!   target's [`max_retry_after`](crate::health::BreakerConfig::max_retry_after), which also caps
//!   what the client is told) and never ejects; only the target's own failures (connect errors,
//!   5xx, 529, timeouts, protocol errors) count for the breaker, and an ejection is logged at
//!   `warn` naming the target and counted in [`EJECTIONS`](crate::metrics::EJECTIONS). Not
//!   reported: a timeout under deadlines the client shortened, and a gateway-side error
//!   (`origin: "gateway"`, a failure the request provoked); a half-open probe that ends so, or
//!   whose request is dropped, hands its slot back;
//! - an error for which [`GatewayError::is_retryable`] is false (a 4xx other than 408/429) ends
//!   the chain at once: a bad request is the client's and stays one attempt;
//! - attempts after the first withdraw from a retry budget (tower's
//!   [`TpsBudget`](tower::retry::budget::TpsBudget) by default), so an outage cannot multiply
//!   the load on the remaining targets;
//! - `x-tollgate-fallback: off` (see Route) leaves one candidate;
//! - targets Route left out because they are priced above the request's cost threshold
//!   ([`RouteDecision::over_max_price`]) are never called and head the attempts list as
//!   `provider/model/over_max_price/0`.
//!
//! When every target failed, the most informative failure is answered with its status kept: a
//! 429 (the upstream's, or the gateway's for a skipped rate-limited target; among several, the
//! one that accepts first) over an upstream 5xx over a timeout over a transport error over the
//! gateway's own "circuit open" 503; a 429 or 503 carries the earliest `Retry-After` any
//! candidate gave (for skipped targets: when they accept again). So a chain where every target
//! is rate-limited answers 429 with the earliest time any of them accepts. Never a blanket
//! 500/502.
//!
//! Every response — success or error — carries `x-tollgate-attempts:
//! provider/model/status/ms;...` (status is the error kind when there was none); a success also
//! carries `x-tollgate-target: provider/model` and reports a [`ServedBy`](crate::ext::ServedBy)
//! (target, attempts, time waited on upstreams) on the response; an exhausted chain reports its
//! attempts in the error's [`context`](crate::error::GatewayError::context).
//!
//! ```
//! use tower::ServiceBuilder;
//! use tollgate::fallback::FallbackLayer;
//! use tollgate::provider::Dispatch;
//! use tollgate::timeout::TimeoutLayer;
//! let svc = ServiceBuilder::new()
//!     .layer(FallbackLayer::new())
//!     .layer(TimeoutLayer::new())
//!     .service(Dispatch::new());
//! # let _ = svc;
//! ```
//!
//! [`Timeout`]: crate::timeout::Timeout

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::Service;
use tower::retry::budget::Budget;

use crate::body::Body;
use crate::error::GatewayError;
use crate::order::{self, Checked};
use crate::target::{AttemptInfo, RouteDecision};

mod future;
mod layer;

pub use self::future::ResponseFuture;
pub(crate) use self::future::TargetSeries;
pub use self::layer::FallbackLayer;

/// Response header listing every attempt: `provider/model/status/ms;...`.
pub const ATTEMPTS_HEADER: &str = "x-tollgate-attempts";
/// Response header naming the target that served: `provider/model`.
pub const TARGET_HEADER: &str = "x-tollgate-target";

/// Tries targets in order until the commit point; see the [module docs](self).
#[derive(Clone)]
pub struct Fallback<S> {
    inner: S,
    budget: Arc<dyn Budget + Send + Sync>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Fallback<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Fallback<S> {
    /// Wrap `inner` with the default retry budget.
    pub fn new(inner: S) -> Self {
        tower::Layer::layer(&FallbackLayer::new(), inner)
    }
    /// The default layer.
    pub fn layer() -> FallbackLayer {
        FallbackLayer::new()
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

impl<S> Service<Request<Full<Bytes>>> for Fallback<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = GatewayError> + Clone,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = ResponseFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        self.budget.deposit();
        // Marks the request for the layers that belong outside Fallback (Timeout, the only
        // layer inside, leaves no mark, so this cannot fail).
        let misordered = order::enter(req.extensions_mut(), Checked::Fallback).err();
        match req.extensions().get::<RouteDecision>() {
            Some(d) if misordered.is_none() => {
                let (targets, allow, timeouts, model) = (
                    d.targets.clone(),
                    d.allow_fallback,
                    d.client_timeouts,
                    d.model.clone(),
                );
                // Route left these out for their price: listed first, never called.
                let skipped: Vec<AttemptInfo> = d
                    .over_max_price
                    .iter()
                    .map(|t| AttemptInfo::over_max_price(t))
                    .collect();
                ResponseFuture::new(
                    service,
                    req,
                    targets,
                    allow,
                    timeouts,
                    self.budget.clone(),
                    None,
                    model,
                )
                .skipped(skipped)
            }
            _ => ResponseFuture::new(
                service,
                req,
                Arc::from(Vec::new()),
                false,
                Default::default(),
                self.budget.clone(),
                Some(misordered.unwrap_or_else(|| {
                    static LOGGED: AtomicBool = AtomicBool::new(false);
                    GatewayError::misconfigured_stack(
                        "FallbackLayer",
                        "RouteLayer",
                        "RouteDecision",
                        &LOGGED,
                    )
                })),
                Arc::from(""),
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
