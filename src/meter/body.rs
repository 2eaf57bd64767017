use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{Ctx, End};
use crate::body::{Body, BoxError};

/// Finalizes the request exactly once: at the end, on error, or on drop.
pub(crate) struct Finalizer {
    ctx: Option<Ctx>,
    status: u16,
    head: Duration,
}

impl Finalizer {
    pub(crate) fn new(ctx: Ctx, status: u16, head: Duration) -> Self {
        Finalizer {
            ctx: Some(ctx),
            status,
            head,
        }
    }

    fn eof(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            ctx.finalize(End::Eof {
                status: self.status,
                head: self.head,
            });
        }
    }

    fn error(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            ctx.finalize(End::BodyError {
                status: self.status,
                head: self.head,
            });
        }
    }
}

impl Drop for Finalizer {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            ctx.finalize(End::Dropped {
                status: self.status,
                head: self.head,
            });
        }
    }
}

pin_project! {
    /// Response body of [`UsageMeter`](super::UsageMeter): passes frames through untouched and
    /// finalizes the request's record when it ends, fails or is dropped.
    pub struct MeterBody {
        // Declared first, so dropped first: the inner body's reports are final when the
        // finalizer reads them.
        #[pin]
        inner: Body,
        fin: Finalizer,
    }
}

impl MeterBody {
    pub(crate) fn new(inner: Body, fin: Finalizer) -> Self {
        MeterBody { inner, fin }
    }
}

impl http_body::Body for MeterBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(_)) => {
                // hyper stops polling a body that says it has ended: finalize now.
                if this.inner.is_end_stream() {
                    this.fin.eof();
                }
            }
            Some(Err(_)) => this.fin.error(),
            None => this.fin.eof(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
