//! [`ResponseFuture`] of [`StreamPassthrough`](super::StreamPassthrough).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::body::{ResponseBody, StreamInfo, prepare_headers};
use super::json::{JsonBody, JsonUsage};
use crate::body::Body;
use crate::error::{ErrorKind, GatewayError};
use crate::ext::{Drain, DrainPhase, DrainWait, UsageFacts, UsageReport};
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
    /// [`JsonBody`](super::JsonBody). A request still waiting for its answer when the
    /// server's drain period is over (see [`Drain`]) is answered 503 `shutting_down`, and the
    /// upstream call is dropped.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        observe: Option<Observe>,
        refused: Option<GatewayError>,
        drain: Option<Drain>,
        // Made from `drain` the first time the answer is not there yet.
        stop: Option<DrainWait>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, observe: Option<Observe>, drain: Option<Drain>) -> Self {
        ResponseFuture {
            inner: Some(inner),
            observe,
            refused: None,
            drain,
            stop: None,
        }
    }

    /// Answer `error` without calling the inner service.
    pub(crate) fn failed(error: GatewayError) -> Self {
        ResponseFuture {
            inner: None,
            observe: None,
            refused: Some(error),
            drain: None,
            stop: None,
        }
    }
}

/// While the answer has not come: whether the server's drain period is over (the wait is
/// made, and the waker registered, the first time it is asked).
fn drain_over(drain: Option<&Drain>, stop: &mut Option<DrainWait>, cx: &mut Context<'_>) -> bool {
    if stop.is_none() {
        let Some(d) = drain else { return false };
        *stop = Some(d.wait(DrainPhase::Over));
    }
    stop.as_mut()
        .is_some_and(|s| s.as_mut().poll(cx).is_ready())
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, GatewayError>>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(Err(this.refused.take().unwrap_or_else(|| {
                GatewayError::internal("StreamPassthrough future polled after completion")
            })));
        };
        let res = match inner.poll(cx) {
            Poll::Ready(res) => res?,
            Poll::Pending if drain_over(this.drain.as_ref(), this.stop, cx) => {
                // Dropping the call cancels the upstream request.
                this.inner.set(None);
                return Poll::Ready(Err(GatewayError::new(
                    ErrorKind::ShuttingDown,
                    "the gateway is shutting down and its drain period is over; the upstream \
                     had not answered",
                )));
            }
            Poll::Pending => return Poll::Pending,
        };
        let Some(observe) = this.observe.take() else {
            return Poll::Ready(Ok(res));
        };
        if !res.status().is_success() {
            return Poll::Ready(Ok(res));
        }
        let (mut parts, body) = res.into_parts();
        let body = match observe {
            Observe::Stream(mut info) => {
                if !prepare_headers(&mut parts.headers) {
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                let (writer, report) = UsageReport::channel();
                parts.extensions.insert(report);
                // The body ends the stream in-band at the end of the drain period: it keeps
                // the wait made here, if any.
                let stop = this.stop.take();
                info.drain = if stop.is_some() {
                    None
                } else {
                    this.drain.take()
                };
                let body = ResponseBody::from_info(body, info, Some(writer));
                Body::new(match stop {
                    Some(stop) => body.with_stop(stop),
                    None => body,
                })
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
