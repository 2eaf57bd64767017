use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::body::{Finalizer, MeterBody};
use super::{Ctx, CtxGuard, End, Reports};
use crate::body::Body;
use crate::error::GatewayError;

pin_project! {
    /// Future of [`UsageMeter`](super::UsageMeter).
    pub struct MeterFuture<F> {
        #[pin]
        inner: Option<F>,
        ctx: CtxGuard,
        refused: Option<GatewayError>,
    }
}

impl<F> MeterFuture<F> {
    pub(crate) fn new(inner: F, ctx: Ctx) -> Self {
        MeterFuture {
            inner: Some(inner),
            ctx: CtxGuard::new(ctx),
            refused: None,
        }
    }

    /// Answer (and record) `error` without calling the inner service.
    pub(crate) fn failed(error: GatewayError, ctx: Ctx) -> Self {
        MeterFuture {
            inner: None,
            ctx: CtxGuard::new(ctx),
            refused: Some(error),
        }
    }
}

impl<F> Future for MeterFuture<F>
where
    F: Future<Output = Result<Response<Body>, GatewayError>>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match this.inner.as_pin_mut() {
            Some(inner) => ready!(inner.poll(cx)),
            None => Err(this.refused.take().unwrap_or_else(|| {
                GatewayError::internal("UsageMeter future polled after completion")
            })),
        };
        let Some(mut ctx) = this.ctx.take() else {
            return Poll::Ready(res);
        };
        Poll::Ready(match res {
            Ok(res) => {
                ctx.reports(Reports::of_response(res.extensions()));
                let head = ctx.received_at.elapsed();
                let status = res.status().as_u16();
                let fin = Finalizer::new(ctx, status, head);
                Ok(res.map(|b| Body::new(MeterBody::new(b, fin))))
            }
            Err(e) => {
                ctx.reports(Reports::of_error(&e));
                ctx.finalize(End::Failed(&e));
                Err(e)
            }
        })
    }
}
