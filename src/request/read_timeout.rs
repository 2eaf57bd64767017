//! A request body with a read deadline: a body that sends no byte for the timeout ends with
//! [`BodyReadTimeout`] (Parse answers 408), so a stalled upload does not hold its buffer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;

/// The body sent nothing for the read timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no request body data for {0:?}")]
pub struct BodyReadTimeout(pub Duration);

pin_project! {
    /// `B`, ending with [`BodyReadTimeout`] when a frame takes longer than the timeout.
    pub(crate) struct TimedBody<B> {
        #[pin]
        body: B,
        timeout: Option<Duration>,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> TimedBody<B> {
    pub(crate) fn new(body: B, timeout: Option<Duration>) -> Self {
        TimedBody {
            body,
            timeout,
            sleep: None,
        }
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        match this.body.poll_frame(cx) {
            Poll::Ready(f) => {
                // The next frame gets a fresh deadline.
                if let (Some(s), Some(t)) = (this.sleep.as_mut(), *this.timeout) {
                    s.as_mut().reset(Instant::now() + t);
                }
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let Some(t) = *this.timeout else {
                    return Poll::Pending;
                };
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(t)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyReadTimeout(t))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
