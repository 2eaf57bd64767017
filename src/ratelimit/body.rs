//! [`PermitBody`]: keeps a reservation's permit alive until the response body ends, then
//! settles it (the permit settles when dropped).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

use super::Permit;
use crate::body::BoxError;

pin_project! {
    /// A response body that holds a [`Permit`] until the end of stream, an error, or drop;
    /// releasing it settles the reservation.
    pub(crate) struct PermitBody<B> {
        // Declared first, so dropped first: the inner body's report is final when the permit
        // settles.
        #[pin]
        inner: B,
        permit: Option<Permit>,
    }
}

impl<B> PermitBody<B> {
    pub(crate) fn new(inner: B, permit: Permit) -> Self {
        PermitBody {
            inner,
            permit: Some(permit),
        }
    }
}

impl<B> http_body::Body for PermitBody<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let mut inner = this.inner;
        let frame = ready!(inner.as_mut().poll_frame(cx));
        // hyper stops polling a body that says it has ended: settle now.
        let ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => inner.is_end_stream(),
        };
        if ended {
            this.permit.take();
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
