//! StreamPassthrough: SSE hygiene, `include_usage` injection and stripping, usage capture, and
//! in-band errors after the commit point.
//!
//! For a request whose [`ParsedRequest`] says `stream: true`:
//!
//! - **Request:** sets [`ParsedRequest::upstream_include_usage`], so the upstream is asked for
//!   the final usage chunk even when the client did not ask for it.
//! - **Response (2xx event stream):** sets `content-type: text/event-stream` if missing,
//!   `cache-control: no-cache` and `x-accel-buffering: no`; removes `content-length` and
//!   `content-encoding` (nothing compresses an event stream); and wraps the body in a
//!   [`ResponseBody`] that
//!   - forwards each event as soon as its blank line arrives (no timers), and all the complete
//!     events of one upstream frame as **one** frame (a zero-copy slice when nothing between
//!     them was removed, one copy otherwise): with the provider adapters' [`ReadCoalesce`]
//!     below, what one upstream read delivered leaves in one write (the stream's first event
//!     goes out at once, before the rest of its read),
//!   - finds the usage chunk with a byte search before any JSON parse, writes the exact upstream
//!     usage into the request's [`UsageTap`], and strips that chunk unless the client asked for
//!     it ([`ParsedRequest::wants_usage`]),
//!   - records `[DONE]`, event and content-byte counts, and the time to the first event,
//!   - turns an upstream body error, or an end without `[DONE]`, into a final
//!     `data: {"error": …}` event and ends **without** `[DONE]` (never a fake clean finish).
//!
//!   Dropping the body drops the upstream body, which cancels the upstream request.
//!
//! An **Anthropic** stream (a `/v1/messages` request, [`Api::is_anthropic`](crate::request::Api::is_anthropic))
//! is not an OpenAI stream: nothing is injected into the request, every event goes to the client
//! untouched, the usage is read from `message_start` and the cumulative `message_delta`s (cache
//! reads and writes added into the prompt tokens) into the tap, `message_stop` ends it, and a
//! failure after the commit point ends it with an Anthropic `event: error`.
//!
//! [`ReadCoalesce`]: crate::body::ReadCoalesce
//!
//! Non-streaming requests, error responses and 2xx responses that are not event streams pass
//! through untouched. Without a [`UsageTap`] in the request extensions nothing is recorded.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::BodyExt;
//! use tollgate::body::Body;
//! use tollgate::error::GatewayError;
//! use tollgate::request::{parse_body, Api, ParsedRequest};
//! use tollgate::stream::StreamPassthroughLayer;
//! use tollgate::usage::UsageTap;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = service_fn(|req: Request<Bytes>| async move {
//!     // The layer asked the upstream for the usage chunk.
//!     assert!(req.extensions().get::<ParsedRequest>().unwrap().upstream_include_usage);
//!     let sse = concat!(
//!         "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
//!         "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n",
//!         "data: [DONE]\n\n",
//!     );
//!     Ok::<_, GatewayError>(Response::new(Body::from(sse)))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(StreamPassthroughLayer::new())
//!     .service(upstream);
//!
//! let body = Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#);
//! let tap = UsageTap::new();
//! let mut req = Request::new(body.clone());
//! req.extensions_mut().insert(parse_body(Api::ChatCompletions, body).unwrap());
//! req.extensions_mut().insert(tap.clone());
//!
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["content-type"], "text/event-stream");
//! assert_eq!(res.headers()["cache-control"], "no-cache");
//! let out = res.into_body().collect().await.unwrap().to_bytes();
//! // The client did not ask for usage: the usage chunk is stripped, yet the tap has it.
//! assert_eq!(
//!     &out[..],
//!     &b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\ndata: [DONE]\n\n"[..],
//! );
//! let seen = tap.snapshot();
//! assert_eq!(seen.usage.unwrap().total_tokens, 6);
//! assert!(seen.done);
//! # }
//! ```

mod body;
mod future;
mod layer;

use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

pub use self::body::ResponseBody;
pub use self::future::ResponseFuture;
pub use self::layer::StreamPassthroughLayer;

use self::body::StreamInfo;
use crate::body::Body;
use crate::request::ParsedRequest;
use crate::usage::UsageTap;

/// The StreamPassthrough service: see the [module docs](self).
#[derive(Debug, Clone)]
pub struct StreamPassthrough<S> {
    inner: S,
}

impl<S> StreamPassthrough<S> {
    /// Wrap `inner`.
    pub fn new(inner: S) -> Self {
        StreamPassthrough { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// A [`StreamPassthroughLayer`].
    pub fn layer() -> StreamPassthroughLayer {
        StreamPassthroughLayer::new()
    }
}

impl<S, ReqBody> Service<Request<ReqBody>> for StreamPassthrough<S>
where
    S: Service<Request<ReqBody>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let tap = req.extensions().get::<UsageTap>().cloned();
        let info = match req.extensions_mut().get_mut::<ParsedRequest>() {
            Some(parsed) if parsed.stream => {
                // An Anthropic stream (`/v1/messages`) always carries its usage.
                parsed.upstream_include_usage = !parsed.api.is_anthropic();
                Some(StreamInfo::new(parsed, tap))
            }
            _ => None,
        };
        ResponseFuture::new(self.inner.call(req), info)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::Poll;

    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;
    use tokio_test::{assert_pending, assert_ready};
    use tower::{Layer, ServiceExt, service_fn};

    use super::*;
    use crate::body::BoxError;
    use crate::error::{ErrorKind, GatewayError};
    use crate::request::{Api, parse_body};
    use crate::usage::Usage;

    type Tx = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

    /// A body fed from a channel: the test decides when each byte arrives.
    fn channel_body() -> (Tx, Body) {
        let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(16);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (tx, Body::new(StreamBody::new(stream)))
    }

    fn request(json: &'static str, tap: Option<&UsageTap>) -> Request<Bytes> {
        let body = Bytes::from_static(json.as_bytes());
        let mut req = Request::new(body.clone());
        req.extensions_mut()
            .insert(parse_body(Api::ChatCompletions, body).unwrap());
        if let Some(tap) = tap {
            req.extensions_mut().insert(tap.clone());
        }
        req
    }

    const STREAM: &str =
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    const STREAM_USAGE: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
    const NO_STREAM: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

    const CHUNK1: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\n";
    const CHUNK2: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"}}],\"usage\":null}\n\n";
    const USAGE_CHUNK: &[u8] = b"data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":6,\"total_tokens\":17,\"prompt_tokens_details\":{\"cached_tokens\":4},\"completion_tokens_details\":{\"reasoning_tokens\":2}}}\n\n";

    fn exact_usage() -> Usage {
        Usage {
            prompt_tokens: 11,
            completion_tokens: 6,
            total_tokens: 17,
            cached_tokens: 4,
            cache_write_tokens: 0,
            reasoning_tokens: 2,
        }
    }

    /// Run `req` through the layer over an upstream answering `status` with `body`.
    async fn respond(req: Request<Bytes>, status: StatusCode, body: Body) -> Response<Body> {
        let body = Mutex::new(Some(body));
        let upstream = service_fn(move |_req: Request<Bytes>| {
            let mut res = Response::new(body.lock().unwrap().take().unwrap());
            *res.status_mut() = status;
            res.headers_mut()
                .insert("content-length", HeaderValue::from_static("123"));
            std::future::ready(Ok::<_, GatewayError>(res))
        });
        StreamPassthrough::new(upstream).oneshot(req).await.unwrap()
    }

    async fn collect(body: Body) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    fn body_of(parts: &[&[u8]]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p))))
            .collect();
        Body::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    fn error_json(out: &[u8]) -> serde_json::Value {
        let s = std::str::from_utf8(out).unwrap();
        let last = s.trim_end().rsplit("\n\n").next().unwrap();
        serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap()
    }

    #[tokio::test]
    async fn stream_request_asks_upstream_for_usage_and_gets_sse_headers() {
        let seen = Arc::new(Mutex::new(None));
        let seen2 = seen.clone();
        let upstream = service_fn(move |req: Request<Bytes>| {
            let p = req.extensions().get::<ParsedRequest>().unwrap();
            *seen2.lock().unwrap() = Some(p.upstream_include_usage);
            let mut res = Response::new(Body::from("data: [DONE]\n\n"));
            let h = res.headers_mut();
            h.insert("content-length", HeaderValue::from_static("14"));
            h.insert("content-encoding", HeaderValue::from_static("identity"));
            h.insert("cache-control", HeaderValue::from_static("max-age=60"));
            std::future::ready(Ok::<_, GatewayError>(res))
        });
        let svc = StreamPassthroughLayer::new().layer(upstream);
        let res = svc.oneshot(request(STREAM, None)).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), Some(true));
        let h = res.headers();
        assert_eq!(h["content-type"], "text/event-stream");
        assert_eq!(h["cache-control"], "no-cache");
        assert_eq!(h["x-accel-buffering"], "no");
        assert!(!h.contains_key("content-length"));
        assert!(!h.contains_key("content-encoding"));
        assert_eq!(collect(res.into_body()).await, b"data: [DONE]\n\n");
    }

    #[tokio::test]
    async fn non_stream_and_error_responses_pass_through() {
        // Not a stream: the upstream is not asked for usage; nothing changes.
        let seen = Arc::new(Mutex::new(None));
        let seen2 = seen.clone();
        let upstream = service_fn(move |req: Request<Bytes>| {
            let p = req.extensions().get::<ParsedRequest>().unwrap();
            *seen2.lock().unwrap() = Some(p.upstream_include_usage);
            let mut res = Response::new(Body::from("{\"ok\":true}"));
            res.headers_mut()
                .insert("content-length", HeaderValue::from_static("11"));
            std::future::ready(Ok::<_, GatewayError>(res))
        });
        let res = StreamPassthrough::new(upstream)
            .oneshot(request(NO_STREAM, None))
            .await
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), Some(false));
        assert_eq!(res.headers()["content-length"], "11");
        assert!(!res.headers().contains_key("cache-control"));
        assert_eq!(collect(res.into_body()).await, b"{\"ok\":true}");

        // A streaming request answered with an error status: untouched (no in-band error).
        let res = respond(
            request(STREAM, None),
            StatusCode::TOO_MANY_REQUESTS,
            Body::from("{\"error\":{}}"),
        )
        .await;
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()["content-length"], "123");
        assert!(!res.headers().contains_key("cache-control"));
        assert_eq!(collect(res.into_body()).await, b"{\"error\":{}}");

        // A 2xx that is not an event stream: untouched.
        let mut res = Response::new(Body::from("{}"));
        res.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        let upstream = service_fn(move |_req: Request<Bytes>| {
            std::future::ready(Ok::<_, GatewayError>(std::mem::take(&mut res)))
        });
        let res = StreamPassthrough::new(upstream)
            .oneshot(request(STREAM, None))
            .await
            .unwrap();
        assert!(!res.headers().contains_key("cache-control"));
        assert_eq!(collect(res.into_body()).await, b"{}");
    }

    #[tokio::test]
    async fn each_event_is_forwarded_before_the_next_is_sent() {
        let tap = UsageTap::new();
        let (tx, body) = channel_body();
        let res = respond(request(STREAM, Some(&tap)), StatusCode::OK, body).await;
        let mut body = res.into_body();

        // Nothing sent yet: the body waits.
        let mut frame = tokio_test::task::spawn(body.frame());
        assert_pending!(frame.poll());
        drop(frame);

        for chunk in [CHUNK1, CHUNK2] {
            // Send the event in two pieces: the first half is not an event yet.
            let (a, b) = chunk.split_at(chunk.len() / 2);
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(a))))
                .await
                .unwrap();
            let mut frame = tokio_test::task::spawn(body.frame());
            assert_pending!(frame.poll());
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(b))))
                .await
                .unwrap();
            // The second half completes it: it goes out now, before anything else is sent.
            assert!(frame.is_woken());
            let got = assert_ready!(frame.poll()).unwrap().unwrap();
            assert_eq!(got.into_data().unwrap(), chunk);
        }
        assert_eq!(tap.snapshot().events, 2);
        tx.send(Ok(Frame::data(Bytes::from_static(DONE_EVENT))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(collect(body).await, DONE_EVENT);
        assert!(tap.snapshot().done);
    }

    const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

    #[tokio::test]
    async fn complete_events_of_one_chunk_go_out_as_one_zero_copy_frame() {
        let (tx, body) = channel_body();
        let res = respond(request(STREAM, None), StatusCode::OK, body).await;
        let mut body = res.into_body();
        let chunk = Bytes::from([CHUNK1, CHUNK2, b": ping\n\n"].concat());
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
        let got = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(got, chunk);
        assert_eq!(
            got.as_ptr(),
            chunk.as_ptr(),
            "the frame is the chunk itself"
        );
    }

    #[tokio::test]
    async fn usage_chunk_stripped_when_client_did_not_ask() {
        let tap = UsageTap::new();
        let body = body_of(&[CHUNK1, CHUNK2, USAGE_CHUNK, DONE_EVENT]);
        let res = respond(request(STREAM, Some(&tap)), StatusCode::OK, body).await;
        let out = collect(res.into_body()).await;
        assert_eq!(out, [CHUNK1, CHUNK2, DONE_EVENT].concat());
        let s = tap.snapshot();
        assert_eq!(s.usage, Some(exact_usage()));
        assert!(s.done);
        assert!(!s.error);
        assert_eq!(s.events, 2);
        assert_eq!(s.content_bytes, 11);
        assert!(s.first_event_after.is_some());
    }

    #[tokio::test]
    async fn usage_chunk_kept_when_client_asked() {
        let tap = UsageTap::new();
        let body = body_of(&[CHUNK1, USAGE_CHUNK, DONE_EVENT]);
        let res = respond(request(STREAM_USAGE, Some(&tap)), StatusCode::OK, body).await;
        let out = collect(res.into_body()).await;
        assert_eq!(out, [CHUNK1, USAGE_CHUNK, DONE_EVENT].concat());
        assert_eq!(tap.snapshot().usage, Some(exact_usage()));
    }

    #[tokio::test]
    async fn usage_recorded_exactly_across_splits_and_whitespace() {
        // Pretty-printed usage, split mid-number, `\r\n` line endings.
        let usage = b"data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 1234, \"completion_tokens\": 567, \"total_tokens\": 1801}}\r\n\r\n";
        let tap = UsageTap::new();
        let body = body_of(&[CHUNK1, &usage[..40], &usage[40..], DONE_EVENT]);
        let res = respond(request(STREAM, Some(&tap)), StatusCode::OK, body).await;
        let out = collect(res.into_body()).await;
        assert_eq!(out, [CHUNK1, DONE_EVENT].concat());
        let u = tap.snapshot().usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (1234, 567, 1801)
        );
        // A usage object on a content chunk is recorded, and the chunk is kept.
        let tap = UsageTap::new();
        let last = b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n";
        let res = respond(
            request(STREAM, Some(&tap)),
            StatusCode::OK,
            body_of(&[last, DONE_EVENT]),
        )
        .await;
        assert_eq!(
            collect(res.into_body()).await,
            [&last[..], DONE_EVENT].concat()
        );
        assert_eq!(tap.snapshot().usage.unwrap().total_tokens, 5);
    }

    #[tokio::test]
    async fn no_tap_records_nothing_and_still_streams() {
        let body = body_of(&[CHUNK1, USAGE_CHUNK, DONE_EVENT]);
        let res = respond(request(STREAM, None), StatusCode::OK, body).await;
        assert_eq!(
            collect(res.into_body()).await,
            [CHUNK1, DONE_EVENT].concat()
        );
    }

    #[tokio::test]
    async fn cut_stream_ends_with_in_band_error_and_no_done() {
        let tap = UsageTap::new();
        // The upstream closes mid-event, without [DONE].
        let body = body_of(&[CHUNK1, b"data: {\"id\":\"c\",\"choi"]);
        let res = respond(request(STREAM, Some(&tap)), StatusCode::OK, body).await;
        let out = collect(res.into_body()).await;
        assert!(out.starts_with(CHUNK1));
        assert!(out.ends_with(b"\n\n"));
        assert!(!out.windows(12).any(|w| w == b"data: [DONE]"));
        // The partial event is not forwarded; the error event follows the last complete one.
        let err = error_json(&out);
        assert_eq!(err["error"]["code"], "upstream_protocol");
        assert_eq!(err["error"]["type"], "api_error");
        assert!(
            std::str::from_utf8(&out[CHUNK1.len()..])
                .unwrap()
                .starts_with("data: {\"error\":")
        );
        let s = tap.snapshot();
        assert!(s.error);
        assert!(!s.done);
        assert_eq!(s.error_kind, Some("upstream_protocol"));
    }

    #[tokio::test]
    async fn unterminated_done_is_completed() {
        let tap = UsageTap::new();
        let body = body_of(&[CHUNK1, b"data: [DONE]"]);
        let res = respond(request(STREAM, Some(&tap)), StatusCode::OK, body).await;
        assert_eq!(
            collect(res.into_body()).await,
            [CHUNK1, DONE_EVENT].concat()
        );
        let s = tap.snapshot();
        assert!(s.done && !s.error);
    }

    #[tokio::test]
    async fn inner_error_becomes_in_band_error() {
        // A GatewayError (e.g. the Timeout layer's idle deadline) keeps its kind.
        let tap = UsageTap::new();
        let (tx, body) = channel_body();
        let res = respond(request(STREAM, Some(&tap)), StatusCode::OK, body).await;
        let mut body = res.into_body();
        tx.send(Ok(Frame::data(Bytes::from_static(CHUNK1))))
            .await
            .unwrap();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            CHUNK1
        );
        let timeout = GatewayError::new(ErrorKind::UpstreamTimeout, "idle for 30s");
        tx.send(Err(Box::new(timeout))).await.unwrap();
        let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let err = error_json(&last);
        assert_eq!(err["error"]["type"], "timeout_error");
        assert_eq!(err["error"]["message"], "idle for 30s");
        // Then the end, without [DONE] and without polling the upstream again.
        assert!(body.frame().await.is_none());
        assert!(http_body::Body::is_end_stream(&body));
        let s = tap.snapshot();
        assert!(s.error && !s.done);
        assert_eq!(s.error_kind, Some("upstream_timeout"));

        // Any other error is an upstream protocol error.
        let tap = UsageTap::new();
        let (tx, body) = channel_body();
        let res = respond(request(STREAM, Some(&tap)), StatusCode::OK, body).await;
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        tx.send(Err(Box::new(io))).await.unwrap();
        drop(tx);
        let out = collect(res.into_body()).await;
        let err = error_json(&out);
        assert_eq!(err["error"]["code"], "upstream_protocol");
        assert!(!out.windows(12).any(|w| w == b"data: [DONE]"));
        assert_eq!(tap.snapshot().error_kind, Some("upstream_protocol"));
    }

    #[tokio::test]
    async fn upstream_in_band_error_is_forwarded_once() {
        let tap = UsageTap::new();
        let upstream_err: &[u8] =
            b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
        let body = body_of(&[CHUNK1, upstream_err]);
        let res = respond(request(STREAM, Some(&tap)), StatusCode::OK, body).await;
        // The upstream's own error goes out as it came, and the gateway adds none.
        assert_eq!(
            collect(res.into_body()).await,
            [CHUNK1, upstream_err].concat()
        );
        let s = tap.snapshot();
        assert!(s.error && !s.done);
        assert_eq!(s.events, 1);
    }

    #[tokio::test]
    async fn one_chunk_leaves_as_one_frame_when_the_usage_chunk_is_stripped() {
        // The usage chunk sits between kept events: what is left still goes out as one frame
        // (one copy), not one frame per stretch of adjacent events.
        let tap = UsageTap::new();
        let (tx, body) = channel_body();
        let res = respond(request(STREAM, Some(&tap)), StatusCode::OK, body).await;
        let mut body = res.into_body();
        let chunk = Bytes::from([CHUNK1, CHUNK2, USAGE_CHUNK, CHUNK1, DONE_EVENT].concat());
        tx.send(Ok(Frame::data(chunk))).await.unwrap();
        drop(tx);
        let got = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(got, [CHUNK1, CHUNK2, CHUNK1, DONE_EVENT].concat());
        assert!(body.frame().await.is_none(), "nothing after the one frame");
        let s = tap.snapshot();
        assert_eq!(s.usage, Some(exact_usage()));
        assert!(s.done);
        assert_eq!(s.events, 3);
    }

    #[tokio::test]
    async fn dropping_the_outer_body_drops_the_inner() {
        let (tx, body) = channel_body();
        let res = respond(request(STREAM, None), StatusCode::OK, body).await;
        let mut body = res.into_body();
        tx.send(Ok(Frame::data(Bytes::from_static(CHUNK1))))
            .await
            .unwrap();
        assert!(body.frame().await.is_some());
        assert!(!tx.is_closed());
        drop(body);
        // The receiver inside the upstream body is gone: the upstream sees the cancel.
        assert!(tx.is_closed());
        tx.closed().await;
    }

    /// Poll a body that never waits (built from ready frames) to its end.
    fn collect_now(body: Body) -> Vec<u8> {
        let mut body = std::pin::pin!(body);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        loop {
            match http_body::Body::poll_frame(body.as_mut(), &mut cx) {
                Poll::Ready(Some(frame)) => {
                    out.extend_from_slice(&frame.unwrap().into_data().unwrap());
                }
                Poll::Ready(None) => return out,
                Poll::Pending => panic!("a body of ready frames must not wait"),
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_split_gives_the_same_client_bytes_and_tap(
            cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..10),
            wants_usage in proptest::prelude::any::<bool>(),
        ) {
            let upstream = [CHUNK1, b": ping\n\n", CHUNK2, USAGE_CHUNK, DONE_EVENT].concat();
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(upstream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for c in cuts {
                pieces.push(&upstream[prev..c]);
                prev = c;
            }
            pieces.push(&upstream[prev..]);

            let parsed = parse_body(
                Api::ChatCompletions,
                Bytes::from_static(if wants_usage { STREAM_USAGE } else { STREAM }.as_bytes()),
            )
            .unwrap();
            let tap = UsageTap::new();
            let body = Body::new(ResponseBody::new(body_of(&pieces), &parsed, Some(tap.clone())));
            let out = collect_now(body);

            let want = if wants_usage {
                upstream.clone()
            } else {
                [CHUNK1, b": ping\n\n", CHUNK2, DONE_EVENT].concat()
            };
            proptest::prop_assert_eq!(out, want);
            let s = tap.snapshot();
            proptest::prop_assert_eq!(s.usage, Some(exact_usage()));
            proptest::prop_assert!(s.done && !s.error);
            proptest::prop_assert_eq!(s.events, 2);
            proptest::prop_assert_eq!(s.content_bytes, 11);
        }
    }

    #[tokio::test]
    async fn body_polls_pending_without_busy_looping() {
        // A poll with nothing new must return Pending (not spin) and resume on the next chunk.
        let (tx, body) = channel_body();
        let res = respond(request(STREAM, None), StatusCode::OK, body).await;
        let mut body = res.into_body();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            http_body::Body::poll_frame(Pin::new(&mut body), &mut cx),
            Poll::Pending
        ));
        tx.send(Ok(Frame::data(Bytes::from_static(CHUNK1))))
            .await
            .unwrap();
        assert!(matches!(
            http_body::Body::poll_frame(Pin::new(&mut body), &mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
    }

    fn messages_request(tap: &UsageTap) -> Request<Bytes> {
        let body = Bytes::from_static(
            br#"{"model":"c","max_tokens":9,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        let mut req = Request::new(body.clone());
        req.extensions_mut()
            .insert(parse_body(Api::Messages, body).unwrap());
        req.extensions_mut().insert(tap.clone());
        req
    }

    const M_START: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":7,\"cache_read_input_tokens\":4,\"cache_creation_input_tokens\":2,\"output_tokens\":1}}}\n\n";
    const M_DELTA: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
    const M_MDELTA: &[u8] = b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":6}}\n\n";
    const M_STOP: &[u8] = b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[tokio::test]
    async fn anthropic_stream_is_untouched_and_its_cumulative_usage_recorded() {
        let tap = UsageTap::new();
        let req = messages_request(&tap);
        // nothing OpenAI-specific is asked of the upstream
        let seen = Arc::new(Mutex::new(None));
        let seen2 = seen.clone();
        let upstream = service_fn(move |req: Request<Bytes>| {
            let p = req.extensions().get::<ParsedRequest>().unwrap();
            *seen2.lock().unwrap() = Some(p.upstream_include_usage);
            let mut res = Response::new(body_of(&[M_START, M_DELTA, M_MDELTA, M_STOP]));
            res.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/event-stream"),
            );
            std::future::ready(Ok::<_, GatewayError>(res))
        });
        let res = StreamPassthrough::new(upstream).oneshot(req).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), Some(false));
        let out = collect(res.into_body()).await;
        assert_eq!(out, [M_START, M_DELTA, M_MDELTA, M_STOP].concat());
        let s = tap.snapshot();
        assert!(s.done && !s.error);
        assert_eq!(
            s.usage,
            Some(Usage {
                prompt_tokens: 13,
                completion_tokens: 6,
                total_tokens: 19,
                cached_tokens: 4,
                cache_write_tokens: 2,
                reasoning_tokens: 0,
            })
        );
    }

    #[tokio::test]
    async fn anthropic_stream_cut_short_ends_with_an_anthropic_error_event() {
        let tap = UsageTap::new();
        let res = respond(
            messages_request(&tap),
            StatusCode::OK,
            body_of(&[M_START, M_DELTA]),
        )
        .await;
        let out = collect(res.into_body()).await;
        let text = String::from_utf8(out).unwrap();
        let (head, last) = text.trim_end().rsplit_once("\n\n").unwrap();
        assert_eq!(
            format!("{head}\n\n").as_bytes(),
            [M_START, M_DELTA].concat()
        );
        assert!(!text.contains("[DONE]"));
        let data = last.strip_prefix("event: error\ndata: ").unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "api_error");
        let s = tap.snapshot();
        assert!(s.error && !s.done);
    }
}
