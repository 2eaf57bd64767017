//! [`ResponseFuture`] of [`Route`](super::Route).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Response};
use pin_project_lite::pin_project;

use crate::body::Body;
use crate::error::GatewayError;
use crate::ext::Routed;

use super::table::VARIANT_HEADER;

pin_project! {
    /// Future of [`Route`](super::Route): the inner call, or the routing error; reports
    /// [`Routed`] and adds `x-tollgate-variant` when a split chose a variant.
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
            routed: Option<Routed>,
        },
        Failed {
            err: Option<GatewayError>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn inner(fut: F, routed: Routed) -> Self {
        ResponseFuture {
            kind: Kind::Inner {
                fut,
                routed: Some(routed),
            },
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
            Proj::Inner { fut, routed } => {
                let res = ready!(fut.poll(cx));
                let Some(routed) = routed.take() else {
                    return Poll::Ready(res);
                };
                let variant = routed.variant.as_deref().and_then(variant_value);
                Poll::Ready(match res {
                    Ok(mut res) => {
                        if let Some(v) = variant {
                            res.headers_mut().insert(VARIANT_NAME.clone(), v);
                        }
                        res.extensions_mut().insert(routed);
                        Ok(res)
                    }
                    Err(mut e) => {
                        if let Some(v) = variant {
                            e = e.with_header(VARIANT_NAME.clone(), v);
                        }
                        e.context_mut().routed = Some(routed);
                        Err(e)
                    }
                })
            }
            Proj::Failed { err } => Poll::Ready(Err(err.take().unwrap_or_else(|| {
                GatewayError::internal("route future polled after completion")
            }))),
        }
    }
}
