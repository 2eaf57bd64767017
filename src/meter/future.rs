use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::body::{Finalizer, MeterBody};
use super::{Ctx, CtxGuard, End};
use crate::body::Body;
use crate::error::GatewayError;
use crate::target::ServedBy;

pin_project! {
    /// Future of [`UsageMeter`](super::UsageMeter).
    pub struct MeterFuture<F> {
        #[pin]
        inner: F,
        ctx: CtxGuard,
    }
}

impl<F> MeterFuture<F> {
    pub(crate) fn new(inner: F, ctx: Ctx) -> Self {
        MeterFuture {
            inner,
            ctx: CtxGuard::new(ctx),
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
        let res = ready!(this.inner.poll(cx));
        let Some(ctx) = this.ctx.take() else {
            return Poll::Ready(res);
        };
        Poll::Ready(match res {
            Ok(res) => {
                // Who served, from the response when no Fallback wrote it into the tap.
                if let Some(served) = res.extensions().get::<ServedBy>() {
                    ctx.tap.update(|t| {
                        if t.served.is_none() {
                            t.served = Some(served.clone());
                        }
                    });
                }
                let head = ctx.received_at.elapsed();
                let status = res.status().as_u16();
                let keep_json = !ctx.stream() && res.status().is_success();
                let fin = Finalizer::new(ctx, status, head, keep_json);
                Ok(res.map(|b| Body::new(MeterBody::new(b, fin))))
            }
            Err(e) => {
                ctx.finalize(End::Failed(&e));
                Err(e)
            }
        })
    }
}
