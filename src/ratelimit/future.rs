//! [`RateLimitFuture`]: reserve (when the store is remote), then call the inner service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use super::body::PermitBody;
use super::layer::Config;
use super::store::{Decision, StoreError, StoreFuture};
use super::{Permit, RateStatus, Reserving, proceed, write_headers};
use crate::body::Body;
use crate::error::GatewayError;

pin_project! {
    /// Future of [`RateLimit`](super::RateLimit).
    pub struct RateLimitFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        pub(super) state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    pub(super) enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Failed { error: Option<GatewayError> },
        Reserving {
            fut: StoreFuture<Result<Decision, StoreError>>,
            req: Option<Request<B>>,
            inner: Option<S>,
            ctx: Option<Reserving>,
            cfg: Arc<Config>,
        },
        Calling {
            #[pin]
            fut: S::Future,
            // The reservation rides in the future, then in the body, until it settles.
            permit: Option<Permit>,
            status: Option<RateStatus>,
        },
    }
}

impl<S, B> Future for RateLimitFuture<S, B>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| GatewayError::internal("polled after completion"))));
                }
                StateProj::Reserving {
                    fut,
                    req,
                    inner,
                    ctx,
                    cfg,
                } => {
                    let decision = ready!(Pin::new(fut).poll(cx));
                    let (Some(req), Some(inner), Some(ctx)) =
                        (req.take(), inner.take(), ctx.take())
                    else {
                        return Poll::Ready(Err(GatewayError::internal("polled after completion")));
                    };
                    let next = proceed(cfg, decision, req, inner, ctx);
                    this.state.set(next);
                }
                StateProj::Calling {
                    fut,
                    permit,
                    status,
                } => {
                    let res = ready!(fut.poll(cx));
                    return Poll::Ready(match res {
                        Ok(mut res) => {
                            if let Some(s) = status.take() {
                                write_headers(res.headers_mut(), &s);
                            }
                            if let Some(mut p) = permit.take() {
                                p.attach(&res);
                                res = res.map(|b| Body::new(PermitBody::new(b, p)));
                            }
                            Ok(res)
                        }
                        Err(e) => {
                            if let Some(p) = permit.take() {
                                p.settle_error(&e);
                            }
                            Err(e)
                        }
                    });
                }
            }
        }
    }
}
