//! [`ResponseBody`]: replays the pre-read frames, then enforces the idle and total deadlines.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};

pin_project! {
    /// Body of a response that passed the [`Timeout`](super::Timeout) gate: first the frames
    /// read before the commit point, unchanged, then the rest of the upstream body. A gap longer
    /// than `idle` between frames, or the attempt running past `total`, ends the body with an
    /// `Err` holding a [`GatewayError`](crate::error::GatewayError) of kind
    /// [`UpstreamTimeout`](crate::error::ErrorKind::UpstreamTimeout) (StreamPassthrough turns it
    /// into the in-band error event).
    pub struct ResponseBody {
        prefix: VecDeque<Frame<Bytes>>,
        inner: Option<Body>,
        idle: Option<Duration>,
        #[pin]
        idle_sleep: Option<Sleep>,
        #[pin]
        total_sleep: Option<Sleep>,
        total: Option<Duration>,
        provider: Option<Arc<str>>,
        target: Option<Arc<str>>,
        failed: bool,
    }
}

impl ResponseBody {
    pub(super) fn new(
        prefix: VecDeque<Frame<Bytes>>,
        inner: Option<Body>,
        idle: Option<Duration>,
        total: Option<(Instant, Duration)>,
        provider: Option<Arc<str>>,
        target: Option<Arc<str>>,
    ) -> Self {
        let watch = inner.is_some();
        ResponseBody {
            prefix,
            idle_sleep: idle
                .filter(|_| watch)
                .map(|d| tokio::time::sleep_until(Instant::now() + d)),
            total_sleep: total
                .filter(|_| watch)
                .map(|(start, d)| tokio::time::sleep_until(start + d)),
            total: total.map(|(_, d)| d),
            inner,
            idle,
            provider,
            target,
            failed: false,
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(f) = this.prefix.pop_front() {
            if this.prefix.is_empty() {
                // The replay is over: its buffer is not kept for the rest of the stream.
                *this.prefix = VecDeque::new();
            }
            return Poll::Ready(Some(Ok(f)));
        }
        if *this.failed {
            return Poll::Ready(None);
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(sleep)) = (*this.idle, this.idle_sleep.as_mut().as_pin_mut())
                {
                    sleep.reset(Instant::now() + d);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(other) => {
                *this.inner = None;
                return Poll::Ready(other);
            }
            Poll::Pending => {}
        }
        if let Some(sleep) = this.total_sleep.as_mut().as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                *this.failed = true;
                *this.inner = None;
                let ms = this.total.map_or(0, |d| d.as_millis());
                return Poll::Ready(Some(Err(Box::new(super::expired(
                    this.provider,
                    this.target,
                    "total",
                    ms,
                    format!("upstream did not finish within the {ms} ms total deadline"),
                )))));
            }
        }
        if let Some(sleep) = this.idle_sleep.as_mut().as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                *this.failed = true;
                *this.inner = None;
                let ms = this.idle.map_or(0, |d| d.as_millis());
                return Poll::Ready(Some(Err(Box::new(super::expired(
                    this.provider,
                    this.target,
                    "idle",
                    ms,
                    format!("upstream sent nothing for {ms} ms (idle deadline)"),
                )))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty()
            && (self.failed || self.inner.as_ref().is_none_or(|b| b.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        let pre: u64 = self
            .prefix
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        match &self.inner {
            None => SizeHint::with_exact(pre),
            Some(b) => {
                let h = b.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + pre);
                if let Some(u) = h.upper() {
                    out.set_upper(u + pre);
                }
                out
            }
        }
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("prefix_frames", &self.prefix.len())
            .field("idle", &self.idle)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}
