use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{Ctx, End};
use crate::body::{Body, BoxError};
use crate::usage::Usage;

/// Finalizes the request exactly once: at the end, on error, or on drop.
pub(crate) struct Finalizer {
    ctx: Option<Ctx>,
    status: u16,
    head: Duration,
    /// Reference-counted handles to the frames of a non-streaming body (no copies).
    json: Option<Vec<Bytes>>,
    json_len: usize,
}

impl Finalizer {
    pub(crate) fn new(ctx: Ctx, status: u16, head: Duration, keep_json: bool) -> Self {
        Finalizer {
            ctx: Some(ctx),
            status,
            head,
            json: keep_json.then(Vec::new),
            json_len: 0,
        }
    }

    fn observe(&mut self, data: &Bytes) {
        let cap = match &self.ctx {
            Some(ctx) => ctx.json_cap(),
            None => return,
        };
        if let Some(frames) = &mut self.json {
            self.json_len += data.len();
            if self.json_len > cap {
                self.json = None;
            } else {
                frames.push(data.clone());
            }
        }
    }

    fn json_usage(&mut self) -> Option<Usage> {
        let frames = self.json.take()?;
        let api = self.ctx.as_ref()?.api();
        match frames.as_slice() {
            [] => None,
            [one] => Usage::from_json(api, one),
            many => Usage::from_json(api, &many.concat()),
        }
    }

    fn eof(&mut self) {
        let json_usage = self.json_usage();
        if let Some(ctx) = self.ctx.take() {
            ctx.finalize(End::Eof {
                status: self.status,
                head: self.head,
                json_usage,
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
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.fin.observe(data);
                }
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
