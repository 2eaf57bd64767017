//! Shared helpers for the Auth / RateLimit integration tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{Semaphore, mpsc};
use tollgate::auth::KeyIdentity;
use tollgate::body::{Body, BoxError};
use tollgate::error::GatewayError;

/// A fixed clock: one second into a minute, so windows never roll during a test.
pub const T0: u64 = 1_795_623_241_000;

/// A body fed from a channel: stays open until the sender is dropped.
pub struct ChanBody(pub mpsc::Receiver<Bytes>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// What the in-process upstream saw.
#[derive(Default)]
pub struct Seen {
    pub calls: AtomicUsize,
    pub headers: Mutex<Vec<HeaderMap>>,
    pub identities: Mutex<Vec<Option<KeyIdentity>>>,
    /// Senders of held-open bodies (drop one to end that body).
    pub open: Mutex<Vec<mpsc::Sender<Bytes>>>,
}

/// The innermost service: counts admitted calls, records headers and identities, and
/// answers either at once or with a body held open until the test releases it. With `gate`,
/// each call waits for a permit before answering (to keep calls in flight). With `usage`
/// (prompt, completion), the answer reports that usage as an upstream does: the JSON answer's
/// `usage`, or for a held body an SSE stream (a content event, the usage chunk, `[DONE]`) that
/// stays open until released. With `fail`, every call fails with that error.
#[derive(Clone, Default)]
pub struct Upstream {
    pub seen: Arc<Seen>,
    pub hold_body: bool,
    pub gate: Option<Arc<Semaphore>>,
    pub usage: Option<(u64, u64)>,
    pub fail: Option<GatewayError>,
}

/// The SSE events a held stream with `usage` sends before it is released.
pub fn sse_with_usage(prompt: u64, completion: u64) -> String {
    format!(
        "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"Hi\"}}}}],\"usage\":null}}\n\n\
         data: {{\"id\":\"c\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{}}}}}\n\n\
         data: [DONE]\n\n",
        prompt + completion
    )
}

impl tower::Service<Request<Full<Bytes>>> for Upstream {
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, GatewayError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let seen = self.seen.clone();
        seen.calls.fetch_add(1, Ordering::SeqCst);
        seen.headers.lock().unwrap().push(req.headers().clone());
        seen.identities
            .lock()
            .unwrap()
            .push(req.extensions().get::<KeyIdentity>().cloned());
        let hold = self.hold_body;
        let gate = self.gate.clone();
        let usage = self.usage;
        let fail = self.fail.clone();
        Box::pin(async move {
            if let Some(g) = gate {
                g.acquire().await.unwrap().forget();
            }
            if let Some(e) = fail {
                return Err(e);
            }
            let mut res = Response::new(Body::empty());
            let body = match (hold, usage) {
                (true, usage) => {
                    let (tx, rx) = mpsc::channel(4);
                    let first = match usage {
                        Some((p, c)) => {
                            res.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("text/event-stream"),
                            );
                            Bytes::from(sse_with_usage(p, c))
                        }
                        None => Bytes::from_static(b"data: {}\n\n"),
                    };
                    tx.send(first).await.unwrap();
                    seen.open.lock().unwrap().push(tx);
                    Body::new(ChanBody(rx))
                }
                (false, Some((p, c))) => Body::from(format!(
                    r#"{{"id":"x","choices":[],"usage":{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{}}}}}"#,
                    p + c
                )),
                (false, None) => Body::from(r#"{"ok":true}"#),
            };
            *res.body_mut() = body;
            Ok(res)
        })
    }
}

/// Serve `svc` on 127.0.0.1:0.
pub async fn serve<S>(svc: S) -> SocketAddr
where
    S: tower::Service<
            Request<hyper::body::Incoming>,
            Response = Response<Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(
                        TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(svc),
                    )
                    .await;
            });
        }
    });
    addr
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn chat_body(model: &str, max_tokens: u64) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":{max_tokens}}}"#
    )
}

/// The same request, streaming.
pub fn stream_body(model: &str, max_tokens: u64) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":{max_tokens},"stream":true}}"#
    )
}

/// A chat request to `addr` with extra headers.
pub fn chat(addr: SocketAddr, body: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// Send and collect: (status, headers, body text).
pub async fn send(c: &HttpClient, req: Request<Full<Bytes>>) -> (u16, HeaderMap, String) {
    let res = c.request(req).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// A writer into a shared buffer, for capturing log output.
#[derive(Clone, Default)]
pub struct LogBuf(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

impl LogBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
