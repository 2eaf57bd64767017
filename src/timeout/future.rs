//! [`ResponseFuture`] of [`Timeout`](super::Timeout): the head deadline, then the pre-read
//! gate (first SSE data event of a stream, or the capped JSON body).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::{Body as _, Frame};
use pin_project_lite::pin_project;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};
use crate::error::{ErrorKind, GatewayError};

use super::body::ResponseBody;
use crate::sse::SseScanner;

/// What the gate waits for after the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Nothing: resolve with the head (no deadlines, no inspection).
    Passthrough,
    /// The first SSE event carrying data (comments and keep-alives do not count).
    Stream,
    /// The whole JSON body, up to the cap.
    Json,
}

pub(super) struct Config {
    pub mode: Mode,
    pub started: Instant,
    pub first_token: Option<Duration>,
    pub idle: Option<Duration>,
    pub total: Option<Duration>,
    pub max_preread: usize,
    pub provider: Option<Arc<str>>,
    /// The target id, for the operator's log line.
    pub target: Option<Arc<str>>,
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Head {
            #[pin]
            fut: F,
        },
        Preread {
            parts: Option<http::response::Parts>,
            body: Option<Body>,
            frames: VecDeque<Frame<Bytes>>,
            read: usize,
            scanner: Option<SseScanner>,
            json: Vec<u8>,
        },
        // Refused before calling the inner service (a misconfigured stack).
        Failed {
            error: Option<GatewayError>,
        },
        Done,
    }
}

pin_project! {
    /// Future of [`Timeout`](super::Timeout).
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        #[pin]
        gate: Option<Sleep>,
        mode: Mode,
        started: Instant,
        first_token: Option<Duration>,
        idle: Option<Duration>,
        total: Option<Duration>,
        max_preread: usize,
        provider: Option<Arc<str>>,
        target: Option<Arc<str>>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(fut: F, c: Config) -> Self {
        let head_deadline = min_opt(
            c.first_token.map(|d| c.started + d),
            c.total.map(|d| c.started + d),
        );
        ResponseFuture {
            state: State::Head { fut },
            gate: head_deadline.map(tokio::time::sleep_until),
            mode: c.mode,
            started: c.started,
            first_token: c.first_token,
            idle: c.idle,
            total: c.total,
            max_preread: c.max_preread,
            provider: c.provider,
            target: c.target,
        }
    }
}

impl<F> ResponseFuture<F> {
    /// A future that answers `error` without calling the inner service.
    pub(super) fn failed(error: GatewayError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            gate: None,
            mode: Mode::Passthrough,
            started: Instant::now(),
            first_token: None,
            idle: None,
            total: None,
            max_preread: 0,
            provider: None,
            target: None,
        }
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn with_provider(mut e: GatewayError, p: &Option<Arc<str>>) -> GatewayError {
    if let (None, Some(p)) = (e.provider(), p) {
        e = e.with_provider(p.clone());
    }
    e
}

/// A body error before the commit point: the `GatewayError` inside it, else a protocol error.
fn body_error(e: BoxError, provider: &Option<Arc<str>>) -> GatewayError {
    match e.downcast::<GatewayError>() {
        Ok(g) => with_provider(*g, provider),
        Err(e) => with_provider(
            GatewayError::new(
                ErrorKind::UpstreamProtocol,
                format!("upstream body failed before the first token: {e}"),
            ),
            provider,
        ),
    }
}

#[derive(Deserialize)]
struct ErrorDoc<'a> {
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ErrorObj<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<&'a RawValue>,
    #[serde(default)]
    status: Option<u16>,
}

/// An `{"error": ...}` document inside a 2xx answer (a JSON body or an SSE event), classified
/// like an upstream status: a numeric `code`/`status` in 400..=599 is used as is; a code, type or
/// message mentioning a rate limit is a 429, "overloaded" a 529, a timeout a 504; anything else
/// a 500 (retryable). `None` when the document is not an error.
pub fn error_in_body(doc: &[u8], provider: Option<&Arc<str>>) -> Option<GatewayError> {
    let first = doc.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' || memchr::memmem::find(doc, b"\"error\"").is_none() {
        return None;
    }
    let raw = serde_json::from_slice::<ErrorDoc<'_>>(doc).ok()?.error?;
    if raw.get() == "null" {
        return None;
    }
    let obj = serde_json::from_str::<ErrorObj<'_>>(raw.get()).ok();
    let message: String = match &obj {
        Some(o) => o.message.as_deref().unwrap_or("upstream error").to_owned(),
        None => {
            serde_json::from_str::<String>(raw.get()).unwrap_or_else(|_| "upstream error".into())
        }
    };
    let code_raw = obj.as_ref().and_then(|o| o.code).map(RawValue::get);
    let numeric = code_raw
        .and_then(|c| c.parse::<u16>().ok())
        .or(obj.as_ref().and_then(|o| o.status))
        .filter(|c| (400..=599).contains(c));
    let code_str: Option<String> = code_raw.and_then(|c| serde_json::from_str::<String>(c).ok());
    let status = match numeric {
        Some(n) => n,
        None => {
            let hay = format!(
                "{} {} {}",
                code_str.as_deref().unwrap_or(""),
                obj.as_ref().and_then(|o| o.kind.as_deref()).unwrap_or(""),
                message
            )
            .to_ascii_lowercase();
            if hay.contains("rate_limit")
                || hay.contains("rate limit")
                || hay.contains("too many requests")
            {
                429
            } else if hay.contains("overloaded") {
                529
            } else if hay.contains("timeout") || hay.contains("timed out") {
                504
            } else {
                500
            }
        }
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut e = GatewayError::upstream_status(
        status,
        format!("upstream answered 2xx with an error: {message}"),
        provider.cloned(),
    );
    if let Some(c) = code_str {
        e = e.with_code(c);
    }
    Some(e)
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, GatewayError>>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Head { fut } => {
                    let res = match fut.poll(cx) {
                        Poll::Ready(r) => r,
                        Poll::Pending => {
                            if let Some(gate) = this.gate.as_mut().as_pin_mut() {
                                ready!(gate.poll(cx));
                                this.state.set(State::Done);
                                let what = if *this.mode == Mode::Stream {
                                    "no first token"
                                } else {
                                    "no response head"
                                };
                                let (deadline, ms) = gate_ms(*this.first_token, *this.total);
                                return Poll::Ready(Err(super::expired(
                                    this.provider,
                                    this.target,
                                    deadline,
                                    ms,
                                    format!("{what} from the upstream within {ms} ms"),
                                )));
                            }
                            return Poll::Pending;
                        }
                    };
                    let res = match res {
                        Ok(res) => res,
                        Err(e) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    };
                    let is_sse = res
                        .headers()
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
                    let mode = match *this.mode {
                        Mode::Stream if is_sse => Mode::Stream,
                        Mode::Passthrough => Mode::Passthrough,
                        _ => Mode::Json,
                    };
                    *this.mode = mode;
                    if mode == Mode::Passthrough {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(res));
                    }
                    if mode == Mode::Json {
                        // The head arrived: the body read is bounded by total (and idle).
                        let deadline = min_opt(
                            this.total.map(|d| *this.started + d),
                            this.idle.map(|d| Instant::now() + d),
                        );
                        match deadline {
                            Some(d) => match this.gate.as_mut().as_pin_mut() {
                                Some(g) => g.reset(d),
                                None => this.gate.set(Some(tokio::time::sleep_until(d))),
                            },
                            None => this.gate.set(None),
                        }
                    }
                    let (parts, body) = res.into_parts();
                    this.state.set(State::Preread {
                        parts: Some(parts),
                        body: Some(body),
                        frames: VecDeque::new(),
                        read: 0,
                        scanner: (mode == Mode::Stream).then(SseScanner::new),
                        json: Vec::new(),
                    });
                }
                StateProj::Preread {
                    parts,
                    body,
                    frames,
                    read,
                    scanner,
                    json,
                } => {
                    // Inspection off: resolve at once, deadlines still on the body.
                    let mut commit = *this.max_preread == 0 && scanner.is_none();
                    let mut ended = false;
                    while !commit {
                        let Some(b) = body.as_mut() else {
                            ended = true;
                            break;
                        };
                        match Pin::new(b).poll_frame(cx) {
                            Poll::Pending => break,
                            Poll::Ready(None) => {
                                *body = None;
                                ended = true;
                                break;
                            }
                            Poll::Ready(Some(Err(e))) => {
                                let e = body_error(e, this.provider);
                                this.state.set(State::Done);
                                return Poll::Ready(Err(e));
                            }
                            Poll::Ready(Some(Ok(frame))) => {
                                if let Some(data) = frame.data_ref() {
                                    *read += data.len();
                                    if let Some(sc) = scanner.as_mut() {
                                        sc.push(data.clone());
                                        while let Some(ev) = sc.next_event() {
                                            if !ev.has_data {
                                                continue;
                                            }
                                            if let Some(e) =
                                                error_in_body(&ev.data, this.provider.as_ref())
                                            {
                                                this.state.set(State::Done);
                                                return Poll::Ready(Err(e));
                                            }
                                            commit = true;
                                            break;
                                        }
                                    } else if json.len() + data.len() <= *this.max_preread {
                                        json.extend_from_slice(data);
                                    }
                                    if *read > *this.max_preread {
                                        // Too much without a verdict: stop gating.
                                        commit = true;
                                    }
                                    if *this.mode == Mode::Json {
                                        if let (Some(d), Some(g)) =
                                            (*this.idle, this.gate.as_mut().as_pin_mut())
                                        {
                                            let next = Instant::now() + d;
                                            let next = match this.total {
                                                Some(t) => next.min(*this.started + *t),
                                                None => next,
                                            };
                                            g.reset(next);
                                        }
                                    }
                                }
                                frames.push_back(frame);
                                if commit {
                                    break;
                                }
                            }
                        }
                    }
                    if ended && !commit {
                        if let Some(sc) = scanner.as_mut() {
                            // An unterminated trailing event may still say what went wrong.
                            while let Some(ev) = sc.finish() {
                                if let Some(e) = ev
                                    .has_data
                                    .then(|| error_in_body(&ev.data, this.provider.as_ref()))
                                    .flatten()
                                {
                                    this.state.set(State::Done);
                                    return Poll::Ready(Err(e));
                                }
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(Err(with_provider(
                                GatewayError::new(
                                    ErrorKind::UpstreamProtocol,
                                    "upstream stream ended before its first event",
                                ),
                                this.provider,
                            )));
                        }
                        if *read <= *this.max_preread {
                            if let Some(e) = error_in_body(json, this.provider.as_ref()) {
                                this.state.set(State::Done);
                                return Poll::Ready(Err(e));
                            }
                        }
                        commit = true;
                    }
                    if commit {
                        let Some(parts) = parts.take() else {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(GatewayError::internal(
                                "timeout future lost its response head",
                            )));
                        };
                        let body = ResponseBody::new(
                            std::mem::take(frames),
                            body.take(),
                            *this.idle,
                            this.total.map(|d| (*this.started, d)),
                            this.provider.clone(),
                            this.target.clone(),
                        );
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(Response::from_parts(parts, Body::new(body))));
                    }
                    let is_stream = scanner.is_some();
                    if let Some(gate) = this.gate.as_mut().as_pin_mut() {
                        ready!(gate.poll(cx));
                        this.state.set(State::Done);
                        let (deadline, ms, msg) = if is_stream {
                            let (deadline, ms) = gate_ms(*this.first_token, *this.total);
                            let msg = format!("no first token from the upstream within {ms} ms");
                            (deadline, ms, msg)
                        } else {
                            let total_passed = this
                                .total
                                .is_some_and(|t| Instant::now() >= *this.started + t);
                            let (deadline, d) = match (total_passed, *this.idle) {
                                (false, Some(idle)) => ("idle", idle),
                                _ => ("total", this.total.unwrap_or_default()),
                            };
                            let msg = "upstream body did not complete in time".to_owned();
                            (deadline, d.as_millis(), msg)
                        };
                        return Poll::Ready(Err(super::expired(
                            this.provider,
                            this.target,
                            deadline,
                            ms,
                            msg,
                        )));
                    }
                    return Poll::Pending;
                }
                StateProj::Failed { error } => {
                    let e = error.take();
                    this.state.set(State::Done);
                    if let Some(e) = e {
                        return Poll::Ready(Err(e));
                    }
                }
                StateProj::Done => {
                    return Poll::Ready(Err(GatewayError::internal(
                        "timeout future polled after completion",
                    )));
                }
            }
        }
    }
}

/// Which deadline the head gate enforces, and its length in ms.
fn gate_ms(first_token: Option<Duration>, total: Option<Duration>) -> (&'static str, u128) {
    match (first_token, total) {
        (Some(a), Some(b)) if b < a => ("total", b.as_millis()),
        (Some(a), _) => ("first_token", a.as_millis()),
        (None, Some(b)) => ("total", b.as_millis()),
        (None, None) => ("first_token", 0),
    }
}
