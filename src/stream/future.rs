//! [`ResponseFuture`] of [`StreamPassthrough`](super::StreamPassthrough).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::body::{ResponseBody, StreamInfo, prepare_headers};
use crate::body::Body;

pin_project! {
    /// Response future of [`StreamPassthrough`](super::StreamPassthrough): for a streaming
    /// request answered 2xx, sets the SSE headers and wraps the body in a [`ResponseBody`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        info: Option<StreamInfo>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, info: Option<StreamInfo>) -> Self {
        ResponseFuture { inner, info }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx))?;
        let Some(info) = this.info.take() else {
            return Poll::Ready(Ok(res));
        };
        if !res.status().is_success() {
            return Poll::Ready(Ok(res));
        }
        let (mut parts, body) = res.into_parts();
        if !prepare_headers(&mut parts.headers) {
            return Poll::Ready(Ok(Response::from_parts(parts, body)));
        }
        let body = Body::new(ResponseBody::from_info(body, info));
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}
