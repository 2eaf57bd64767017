//! The boxed body newtype used on every response the stack produces.
//!
//! `http-body-util` types stay out of the public API: everything returns [`Body`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use pin_project_lite::pin_project;

/// A boxed, type-erased error (`Box<dyn Error + Send + Sync>`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The response body of every tollgate service: a boxed `http_body::Body` of [`Bytes`].
pub struct Body {
    inner: UnsyncBoxBody<Bytes, BoxError>,
}

impl Body {
    /// Box any body whose data is `Bytes`. A [`Body`] passed in is not boxed twice.
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut slot = Some(body);
        if let Some(slot) = (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Body>>() {
            if let Some(body) = slot.take() {
                return body;
            }
        }
        match slot {
            Some(body) => Body {
                inner: body.map_err(Into::into).boxed_unsync(),
            },
            None => Body::empty(),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Body {
            inner: Empty::new().map_err(|never| match never {}).boxed_unsync(),
        }
    }

    /// A body of one chunk.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body {
            inner: Full::new(bytes.into())
                .map_err(|never| match never {})
                .boxed_unsync(),
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").finish_non_exhaustive()
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::full(b)
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::full(s)
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::full(Bytes::from_static(s.as_bytes()))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The most bytes [`ReadCoalesce`] gathers into one frame.
pub const COALESCE_MAX: usize = 64 << 10;

/// How many times in a row [`ReadCoalesce`] yields without new data before it hands its batch
/// on. Two, because hyper's HTTP/1 server polls a body a second time in the same task turn when
/// the first poll was pending (its `poll_loop` re-checks the write side once after a flush):
/// that second poll comes before any other task ran, and must not end the batch.
pub const COALESCE_YIELDS: u8 = 2;

pin_project! {
    /// A body that hands on, as **one** frame, every data frame its inner body has ready at
    /// once: what one upstream read delivered.
    ///
    /// hyper's client body yields one frame per HTTP/1.1 chunk, through a one-slot channel from
    /// the connection task: when an upstream writes 20 SSE events (20 chunks) in one write, the
    /// gateway reads them in one read, but they come out of the response body one at a time,
    /// each after a task switch — and the server side writes each to the client with its own
    /// `writev`. This wrapper gathers them back: after a frame, it polls again; when the inner
    /// body is not ready, it yields to the scheduler (a self-wake, no timer), so that the
    /// connection task can hand over the next chunk it already holds; only when the inner body
    /// is still not ready after [`COALESCE_YIELDS`] such yields in a row does the gathered
    /// batch go out.
    ///
    /// It never waits for data that has not arrived: a yield costs one trip through the run
    /// queue (no timer), and events sent apart in time still leave apart. The first event of a
    /// stream is gathered like any other: what arrived together is never split (DESIGN.md,
    /// "the commit point"); the few scheduler yields cost microseconds, not a wait. A batch is one
    /// frame as it came (zero-copy) when it holds one chunk, one copy when it holds several,
    /// and at most [`COALESCE_MAX`] bytes. Trailers, errors and the end pass through after the
    /// batch before them.
    pub struct ReadCoalesce<B: http_body::Body> {
        #[pin]
        inner: B,
        // The first chunk of the batch, kept as it came while it is alone.
        first: Option<Bytes>,
        // The batch, once a second chunk joined it.
        buf: BytesMut,
        // Yields in a row with a batch in hand and no new data.
        yielded: u8,
        // What came after the batch: a trailers frame, an error, or the end (`Some(None)`).
        after: Option<Option<Result<Frame<Bytes>, B::Error>>>,
    }
}

impl<B: http_body::Body<Data = Bytes>> ReadCoalesce<B> {
    /// Wrap `inner`.
    pub fn new(inner: B) -> Self {
        ReadCoalesce {
            inner,
            first: None,
            buf: BytesMut::new(),
            yielded: 0,
            after: None,
        }
    }
}

/// Add `data` to the batch (`first`, then `buf`); returns the batch's length.
fn gather(first: &mut Option<Bytes>, buf: &mut BytesMut, data: Bytes) -> usize {
    if buf.is_empty() {
        match first.take() {
            None => {
                let len = data.len();
                *first = Some(data);
                return len;
            }
            Some(f) => {
                buf.reserve(f.len() + data.len());
                buf.extend_from_slice(&f);
            }
        }
    }
    buf.extend_from_slice(&data);
    buf.len()
}

/// Take the batch, if any.
fn batch(first: &mut Option<Bytes>, buf: &mut BytesMut) -> Option<Bytes> {
    match first.take() {
        Some(f) => Some(f),
        // The whole buffer goes (not `split`, whose unused capacity would stay behind, shared
        // with the frame, for as long as the stream lasts).
        None if !buf.is_empty() => Some(std::mem::take(buf).freeze()),
        None => None,
    }
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for ReadCoalesce<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if let Some(after) = this.after.take() {
            return Poll::Ready(after);
        }
        loop {
            let next = match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        *this.yielded = 0;
                        if gather(this.first, this.buf, data) >= COALESCE_MAX {
                            break;
                        }
                        continue;
                    }
                    Err(frame) => Some(Ok(frame)),
                },
                Poll::Ready(other) => other,
                Poll::Pending => {
                    if this.first.is_none() && this.buf.is_empty() {
                        return Poll::Pending;
                    }
                    if *this.yielded < COALESCE_YIELDS {
                        // Let the connection task hand over what it already read.
                        *this.yielded += 1;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    break;
                }
            };
            // Trailers, an error or the end: after the batch, if there is one.
            match batch(this.first, this.buf) {
                Some(data) => {
                    *this.after = Some(next);
                    *this.yielded = 0;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                None => return Poll::Ready(next),
            }
        }
        *this.yielded = 0;
        Poll::Ready(batch(this.first, this.buf).map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none()
            && self.buf.is_empty()
            && match &self.after {
                Some(None) => true,
                Some(Some(_)) => false,
                None => self.inner.is_end_stream(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.first.as_ref().map_or(0, Bytes::len) + self.buf.len();
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held as u64));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held as u64));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use http_body_util::StreamBody;
    use tokio::sync::mpsc;

    type Item = Result<Frame<Bytes>, BoxError>;

    /// A body fed from a channel: the test decides what is ready when.
    fn channel_body() -> (mpsc::UnboundedSender<Item>, ReadCoalesce<Body>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (tx, ReadCoalesce::new(Body::new(StreamBody::new(stream))))
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(body: &mut ReadCoalesce<Body>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        http_body::Body::poll_frame(Pin::new(body), cx)
    }

    fn data(p: Poll<Option<Item>>) -> Bytes {
        match p {
            Poll::Ready(Some(Ok(f))) => f.into_data().unwrap(),
            other => panic!("expected a data frame, got {other:?}"),
        }
    }

    #[test]
    fn what_is_ready_at_once_leaves_as_one_frame() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let (tx, mut body) = channel_body();
        assert!(poll(&mut body, &mut cx).is_pending(), "nothing yet: wait");
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "no yield without data");

        // The first frames, ready together: gathered like any other (never split).
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: 0\n\n"))))
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: 00\n\n"))))
            .unwrap();
        let yields = |body: &mut ReadCoalesce<Body>, cx: &mut Context<'_>| {
            for _ in 0..COALESCE_YIELDS {
                let before = count.0.load(Ordering::SeqCst);
                assert!(poll(body, cx).is_pending(), "a batch in hand: yield");
                assert_eq!(
                    count.0.load(Ordering::SeqCst),
                    before + 1,
                    "a yield wakes itself"
                );
            }
        };
        yields(&mut body, &mut cx);
        assert_eq!(
            &data(poll(&mut body, &mut cx))[..],
            b"data: 0\n\ndata: 00\n\n"
        );

        let one = Bytes::from_static(b"data: 1\n\n");
        tx.send(Ok(Frame::data(one.clone()))).unwrap();
        // A batch in hand and nothing more ready: yield (self-wakes), then hand it on.
        yields(&mut body, &mut cx);
        let got = data(poll(&mut body, &mut cx));
        assert_eq!(got.as_ptr(), one.as_ptr(), "one chunk: as it came");

        // Twenty chunks ready together, plus one more during the yields: one frame.
        for i in 0..20 {
            tx.send(Ok(Frame::data(Bytes::from(format!("data: {i}\n\n")))))
                .unwrap();
        }
        assert!(poll(&mut body, &mut cx).is_pending());
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: late\n\n"))))
            .unwrap();
        yields(&mut body, &mut cx);
        let got = data(poll(&mut body, &mut cx));
        let want: String = (0..20).map(|i| format!("data: {i}\n\n")).collect();
        assert_eq!(got, Bytes::from(want + "data: late\n\n"));

        // The end after data: the data first, then the end, in two polls without waiting.
        tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).unwrap();
        tx.send(Err("boom".into())).unwrap();
        drop(tx);
        assert_eq!(&data(poll(&mut body, &mut cx))[..], b"x");
        assert!(matches!(
            poll(&mut body, &mut cx),
            Poll::Ready(Some(Err(_)))
        ));
        assert!(matches!(poll(&mut body, &mut cx), Poll::Ready(None)));
    }

    #[test]
    fn a_batch_is_capped() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (tx, mut body) = channel_body();
        let piece = Bytes::from(vec![b'a'; 1000]);
        for _ in 0..100 {
            tx.send(Ok(Frame::data(piece.clone()))).unwrap();
        }
        drop(tx);
        let batch = data(poll(&mut body, &mut cx));
        assert_eq!(batch.len(), COALESCE_MAX.div_ceil(1000) * 1000);
        let rest = data(poll(&mut body, &mut cx));
        assert_eq!(batch.len() + rest.len(), 100_000);
        assert!(matches!(poll(&mut body, &mut cx), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn body_roundtrip_and_no_double_box() {
        let b = Body::full("hello");
        let b = Body::new(b);
        let bytes = b.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert!(http_body::Body::is_end_stream(&Body::empty()));
    }
}
