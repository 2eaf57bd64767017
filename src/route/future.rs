//! [`ResponseFuture`] of [`Route`](super::Route).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Response};
use pin_project_lite::pin_project;

use crate::body::Body;
use crate::error::GatewayError;

use super::table::VARIANT_HEADER;

pin_project! {
    /// Future of [`Route`](super::Route): the inner call, or the routing error; adds
    /// `x-tollgate-variant` when a split chose a variant.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = Proj]
    enum Kind<F> {
        Inner {
            #[pin]
            fut: F,
            variant: Option<Arc<str>>,
        },
        Failed {
            err: Option<GatewayError>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn inner(fut: F, variant: Option<Arc<str>>) -> Self {
        ResponseFuture {
            kind: Kind::Inner { fut, variant },
        }
    }
    pub(super) fn failed(err: GatewayError) -> Self {
        ResponseFuture {
            kind: Kind::Failed { err: Some(err) },
        }
    }
}

static VARIANT_NAME: HeaderName = HeaderName::from_static(VARIANT_HEADER);

fn variant_value(v: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(v).ok()
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, GatewayError>>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Proj::Inner { fut, variant } => {
                let res = ready!(fut.poll(cx));
                Poll::Ready(match (res, variant.as_deref().and_then(variant_value)) {
                    (Ok(mut res), Some(v)) => {
                        res.headers_mut().insert(VARIANT_NAME.clone(), v);
                        Ok(res)
                    }
                    (Err(e), Some(v)) => Err(e.with_header(VARIANT_NAME.clone(), v)),
                    (res, None) => res,
                })
            }
            Proj::Failed { err } => Poll::Ready(Err(err.take().unwrap_or_else(|| {
                GatewayError::internal("route future polled after completion")
            }))),
        }
    }
}
