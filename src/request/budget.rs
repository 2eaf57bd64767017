//! [`BodyBudget`]: one budget of request-body bytes for all requests in flight.
//!
//! Placed in front of Parse, it reserves each request's `content-length` (or, without one, the
//! body cap) from a shared budget before Parse reads a byte, and gives it back when the inner
//! service has answered (the buffered body lives that long). When the budget is spent the
//! request is answered 503 with `Retry-After: 1`, so many large or slow uploads cannot hold
//! more memory than the budget. Requests [`KeyCheck`](crate::auth::KeyCheck) refused reserve
//! nothing (their body is never read).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::DEFAULT_MAX_BODY_BYTES;
use crate::error::{ErrorKind, GatewayError};

/// Default budget: 1 GiB of request bodies buffered at once.
pub const DEFAULT_BODY_BUDGET_BYTES: usize = 1 << 30;

/// Layer for [`BodyBudget`]. Clones share the budget.
#[derive(Debug, Clone)]
pub struct BodyBudgetLayer {
    budget: Arc<Semaphore>,
    total: usize,
    max_body_bytes: usize,
}

impl BodyBudgetLayer {
    /// A budget of `total` bytes; a body without `content-length` reserves the default cap.
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        BodyBudgetLayer {
            budget: Arc::new(Semaphore::new(total)),
            total,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// What a body without `content-length` reserves: the body cap Parse enforces.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.total - self.budget.available_permits()
    }
}

impl<S> Layer<S> for BodyBudgetLayer {
    type Service = BodyBudget<S>;
    fn layer(&self, inner: S) -> BodyBudget<S> {
        BodyBudget {
            inner,
            layer: self.clone(),
        }
    }
}

/// Reserves each request's `content-length` (or the body cap) from a shared budget before
/// Parse reads the body, until the inner service answers; 503 with `Retry-After: 1` when the
/// budget is spent. Made by [`BodyBudgetLayer`].
#[derive(Debug, Clone)]
pub struct BodyBudget<S> {
    inner: S,
    layer: BodyBudgetLayer,
}

impl<S, B> Service<Request<B>> for BodyBudget<S>
where
    S: Service<Request<B>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = BodyBudgetFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if crate::auth::refused_early(req.extensions()) {
            return BodyBudgetFuture::calling(self.inner.call(req), None);
        }
        let want = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(self.layer.max_body_bytes, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            })
            // Parse answers 413 past the cap; no more than that is ever buffered.
            .min(self.layer.max_body_bytes)
            .max(1);
        let permits = u32::try_from(want).unwrap_or(u32::MAX);
        match self.layer.budget.clone().try_acquire_many_owned(permits) {
            Ok(permit) => BodyBudgetFuture::calling(self.inner.call(req), Some(permit)),
            Err(_) => BodyBudgetFuture {
                state: State::Spent {
                    error: Some(spent()),
                },
            },
        }
    }
}

pin_project! {
    /// Future of [`BodyBudget`].
    pub struct BodyBudgetFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // The inner call, holding the reservation (none for a request refused before its
        // body) until it answers.
        Calling { #[pin] fut: F, _permit: Option<OwnedSemaphorePermit> },
        // The budget is spent: 503.
        Spent { error: Option<GatewayError> },
    }
}

impl<F> BodyBudgetFuture<F> {
    fn calling(fut: F, permit: Option<OwnedSemaphorePermit>) -> Self {
        BodyBudgetFuture {
            state: State::Calling {
                fut,
                _permit: permit,
            },
        }
    }
}

impl<F, T> Future for BodyBudgetFuture<F>
where
    F: Future<Output = Result<T, GatewayError>>,
{
    type Output = Result<T, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Calling { fut, .. } => fut.poll(cx),
            StateProj::Spent { error } => Poll::Ready(Err(error.take().unwrap_or_else(spent))),
        }
    }
}

fn spent() -> GatewayError {
    GatewayError::new(
        ErrorKind::BadRequest,
        "the gateway is buffering as many request bodies as it may; retry shortly",
    )
    .with_status(http::StatusCode::SERVICE_UNAVAILABLE)
    .with_code("body_budget_exhausted")
    .with_retry_after(Duration::from_secs(1))
}
