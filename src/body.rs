//! The boxed body newtype used on every response the stack produces.
//!
//! `http-body-util` types stay out of the public API: everything returns [`Body`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn body_roundtrip_and_no_double_box() {
        let b = Body::full("hello");
        let b = Body::new(b);
        let bytes = b.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert!(http_body::Body::is_end_stream(&Body::empty()));
    }
}
