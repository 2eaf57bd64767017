//! The Fallback layer: tries the [`RouteDecision`]'s targets in order until one answers `Ok`.
//!
//! **The commit point** is the inner service returning `Ok(response)`: the [`Timeout`] layer
//! below only does that for a stream once its first SSE data event has arrived (and for a JSON
//! answer once its body has been read and is not an `{"error": ...}`), so everything before the
//! first byte reaches the client can still fall back. After that, failures are the body's
//! business (an in-band error event, see `StreamPassthrough`).
//!
//! For each target in order:
//! - a target whose [`Health`](crate::health::Health) says blocked (open circuit, half-open
//!   with its probe in flight, an upstream `Retry-After` not yet passed) is **skipped without a
//!   call** and recorded as `provider/model/circuit_open/0`;
//! - otherwise one [`Attempt`](crate::target::Attempt) extension (target, number, deadlines =
//!   the target's shortened by the client's) is put on a clone of the request (the last
//!   candidate gets the request itself) and the inner service is called; the outcome is
//!   reported to the target's `Health` — except a timeout under deadlines the client shortened,
//!   which says nothing about the target. A half-open probe whose request is dropped hands its
//!   slot back;
//! - an error for which [`GatewayError::is_retryable`] is false (a 4xx other than 408/429) ends
//!   the chain at once: a bad request is the client's and stays one attempt;
//! - attempts after the first withdraw from a retry budget (tower's
//!   [`TpsBudget`](tower::retry::budget::TpsBudget) by default), so an outage cannot multiply
//!   the load on the remaining targets;
//! - `x-tollgate-fallback: off` (see Route) leaves one candidate.
//!
//! When every target failed, the most informative failure is answered with its status kept: an
//! upstream 429 over an upstream 5xx over a timeout over a transport error over the gateway's own
//! "circuit open" 503; a 429 or 503 carries the earliest `Retry-After` any candidate gave (for
//! skipped targets: when they accept again). Never a blanket 500/502.
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
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::Service;
use tower::retry::budget::Budget;

use crate::body::Body;
use crate::error::GatewayError;
use crate::target::RouteDecision;

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

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        self.budget.deposit();
        match req.extensions().get::<RouteDecision>() {
            Some(d) => {
                let (targets, allow, timeouts, model) = (
                    d.targets.clone(),
                    d.allow_fallback,
                    d.client_timeouts,
                    d.model.clone(),
                );
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
            }
            None => ResponseFuture::new(
                service,
                req,
                Arc::from(Vec::new()),
                false,
                Default::default(),
                self.budget.clone(),
                Some(GatewayError::internal(
                    "Fallback needs the RouteDecision extension (Route layer)",
                )),
                Arc::from(""),
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
