//! [`ResponseFuture`] of [`StreamPassthrough`](super::StreamPassthrough).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::body::{ResponseBody, StreamInfo, prepare_headers};
use super::json::{JsonBody, JsonUsage};
use crate::body::Body;
use crate::error::GatewayError;
use crate::ext::{UsageFacts, UsageReport};
use crate::request::Api;
use crate::usage::Units;

/// What to observe in the answer.
#[derive(Debug)]
pub(crate) enum Observe {
    /// A streaming request: the SSE body.
    Stream(StreamInfo),
    /// A non-streaming request: the JSON answer's `usage` (frames kept up to `cap` bytes).
    Json {
        api: Api,
        units: Units,
        cap: usize,
        max_usage: u64,
    },
    /// An answer that is not JSON (speech audio): the body passes untouched, the units the
    /// request counted are reported at once.
    Binary { units: Units },
}

pin_project! {
    /// Response future of [`StreamPassthrough`](super::StreamPassthrough): for a request
    /// answered 2xx, puts a [`UsageReport`] on the response and wraps the body — an event
    /// stream in a [`ResponseBody`] (SSE headers set), a JSON answer in a
    /// [`JsonBody`](super::JsonBody).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        observe: Option<Observe>,
        refused: Option<GatewayError>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, observe: Option<Observe>) -> Self {
        ResponseFuture {
            inner: Some(inner),
            observe,
            refused: None,
        }
    }

    /// Answer `error` without calling the inner service.
    pub(crate) fn failed(error: GatewayError) -> Self {
        ResponseFuture {
            inner: None,
            observe: None,
            refused: Some(error),
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, GatewayError>>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(this.refused.take().unwrap_or_else(|| {
                GatewayError::internal("StreamPassthrough future polled after completion")
            })));
        };
        let res = ready!(inner.poll(cx))?;
        let Some(observe) = this.observe.take() else {
            return Poll::Ready(Ok(res));
        };
        if !res.status().is_success() {
            return Poll::Ready(Ok(res));
        }
        let (mut parts, body) = res.into_parts();
        let body = match observe {
            Observe::Stream(info) => {
                if !prepare_headers(&mut parts.headers) {
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                let (writer, report) = UsageReport::channel();
                parts.extensions.insert(report);
                Body::new(ResponseBody::from_info(body, info, Some(writer)))
            }
            Observe::Json {
                api,
                units,
                cap,
                max_usage,
            } => {
                let (writer, report) = UsageReport::channel();
                parts.extensions.insert(report);
                let usage = JsonUsage::new(api, units, cap, writer).max_usage(max_usage);
                Body::new(JsonBody::new(body, usage))
            }
            Observe::Binary { units } => {
                let (writer, report) = UsageReport::channel();
                writer.publish(&UsageFacts {
                    units: Some(units),
                    units_from_request: true,
                    ..UsageFacts::default()
                });
                parts.extensions.insert(report);
                body
            }
        };
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}
