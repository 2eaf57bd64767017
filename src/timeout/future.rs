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
            pre: Preread,
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
        // The attempt's settings (`mode` narrows from `Stream` to `Json` at the head).
        cfg: Config,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(fut: F, cfg: Config) -> Self {
        let head_deadline = min_opt(
            cfg.first_token.map(|d| cfg.started + d),
            cfg.total.map(|d| cfg.started + d),
        );
        ResponseFuture {
            state: State::Head { fut },
            gate: head_deadline.map(tokio::time::sleep_until),
            cfg,
        }
    }
}

impl<F> ResponseFuture<F> {
    /// A future that answers `error` without calling the inner service.
    pub(super) fn failed(error: GatewayError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            gate: None,
            cfg: Config {
                mode: Mode::Passthrough,
                started: Instant::now(),
                first_token: None,
                idle: None,
                total: None,
                max_preread: 0,
                provider: None,
                target: None,
            },
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

/// What the pre-read gate decided on one poll.
enum Verdict {
    /// Resolve with the head, replaying the frames read so far.
    Commit,
    /// Fail the attempt (before the commit point: Fallback may try the next target).
    Fail(GatewayError),
    /// No verdict yet: wait for more frames, or for the gate.
    Wait,
}

/// The Preread state: the head, held back until the first data event (a stream) or the capped
/// body (JSON) has been read.
struct Preread {
    parts: Option<http::response::Parts>,
    body: Option<Body>,
    /// The frames read so far, replayed at the start of the returned body.
    frames: VecDeque<Frame<Bytes>>,
    /// Data bytes read so far.
    read: usize,
    /// Streams only.
    scanner: Option<SseScanner>,
    /// JSON only: the body, up to `max_preread`.
    json: Vec<u8>,
}

impl Preread {
    fn new(parts: http::response::Parts, body: Body, mode: Mode) -> Self {
        Preread {
            parts: Some(parts),
            body: Some(body),
            frames: VecDeque::new(),
            read: 0,
            scanner: (mode == Mode::Stream).then(SseScanner::new),
            json: Vec::new(),
        }
    }

    /// Read the frames that are ready until there is a verdict.
    fn read_frames(
        &mut self,
        cx: &mut Context<'_>,
        cfg: &Config,
        mut gate: Pin<&mut Option<Sleep>>,
    ) -> Verdict {
        // Inspection off: resolve at once, deadlines still on the body.
        if cfg.max_preread == 0 && self.scanner.is_none() {
            return Verdict::Commit;
        }
        loop {
            let Some(b) = self.body.as_mut() else {
                return self.on_end(cfg);
            };
            match Pin::new(b).poll_frame(cx) {
                Poll::Pending => return Verdict::Wait,
                Poll::Ready(None) => {
                    self.body = None;
                    return self.on_end(cfg);
                }
                Poll::Ready(Some(Err(e))) => return Verdict::Fail(body_error(e, &cfg.provider)),
                Poll::Ready(Some(Ok(frame))) => match self.on_frame(frame, cfg, gate.as_mut()) {
                    Ok(true) => return Verdict::Commit,
                    Ok(false) => {}
                    Err(e) => return Verdict::Fail(e),
                },
            }
        }
    }

    /// Account for one frame and keep it for the replay; `Ok(true)` when it commits (the first
    /// data event of a stream, or more than `max_preread` bytes without a verdict).
    fn on_frame(
        &mut self,
        frame: Frame<Bytes>,
        cfg: &Config,
        gate: Pin<&mut Option<Sleep>>,
    ) -> Result<bool, GatewayError> {
        let mut commit = false;
        if let Some(data) = frame.data_ref() {
            self.read += data.len();
            if let Some(sc) = self.scanner.as_mut() {
                sc.push(data.clone());
                while let Some(ev) = sc.next_event() {
                    if !ev.has_data {
                        continue;
                    }
                    if let Some(e) = error_in_body(&ev.data, cfg.provider.as_ref()) {
                        return Err(e);
                    }
                    commit = true;
                    break;
                }
            } else if self.json.len() + data.len() <= cfg.max_preread {
                self.json.extend_from_slice(data);
            }
            if self.read > cfg.max_preread {
                // Too much without a verdict: stop gating.
                commit = true;
            }
            if cfg.mode == Mode::Json {
                rearm_idle(gate, cfg);
            }
        }
        self.frames.push_back(frame);
        Ok(commit)
    }

    /// The body ended before a verdict: a stream without a data event fails (naming the error
    /// in an unterminated trailing event, if any); a JSON body is checked for an error document.
    fn on_end(&mut self, cfg: &Config) -> Verdict {
        if let Some(sc) = self.scanner.as_mut() {
            // An unterminated trailing event may still say what went wrong.
            while let Some(ev) = sc.finish() {
                if let Some(e) = ev
                    .has_data
                    .then(|| error_in_body(&ev.data, cfg.provider.as_ref()))
                    .flatten()
                {
                    return Verdict::Fail(e);
                }
            }
            return Verdict::Fail(with_provider(
                GatewayError::new(
                    ErrorKind::UpstreamProtocol,
                    "upstream stream ended before its first event",
                ),
                &cfg.provider,
            ));
        }
        if self.read <= cfg.max_preread {
            if let Some(e) = error_in_body(&self.json, cfg.provider.as_ref()) {
                return Verdict::Fail(e);
            }
        }
        Verdict::Commit
    }

    /// The response: the head, and a body replaying the frames read, then the rest under the
    /// idle and total deadlines.
    fn commit(&mut self, cfg: &Config) -> Result<Response<Body>, GatewayError> {
        let Some(parts) = self.parts.take() else {
            return Err(GatewayError::internal(
                "timeout future lost its response head",
            ));
        };
        let body = ResponseBody::new(
            std::mem::take(&mut self.frames),
            self.body.take(),
            cfg.idle,
            cfg.total.map(|d| (cfg.started, d)),
            cfg.provider.clone(),
            cfg.target.clone(),
        );
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// The head arrived: the mode it calls for (a stream request answered without
/// `text/event-stream` is read as JSON), stored in `cfg`. For JSON the gate now bounds the body
/// read by total and idle.
fn on_head(cfg: &mut Config, mut gate: Pin<&mut Option<Sleep>>, res: &Response<Body>) -> Mode {
    let is_sse = res
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    cfg.mode = match cfg.mode {
        Mode::Stream if is_sse => Mode::Stream,
        Mode::Passthrough => Mode::Passthrough,
        _ => Mode::Json,
    };
    if cfg.mode == Mode::Json {
        // The head arrived: the body read is bounded by total (and idle).
        let deadline = min_opt(
            cfg.total.map(|d| cfg.started + d),
            cfg.idle.map(|d| Instant::now() + d),
        );
        match deadline {
            Some(d) => match gate.as_mut().as_pin_mut() {
                Some(g) => g.reset(d),
                None => gate.set(Some(tokio::time::sleep_until(d))),
            },
            None => gate.set(None),
        }
    }
    cfg.mode
}

/// A JSON body frame arrived: the gate moves to the next idle deadline (never past total).
fn rearm_idle(gate: Pin<&mut Option<Sleep>>, cfg: &Config) {
    if let (Some(d), Some(g)) = (cfg.idle, gate.as_pin_mut()) {
        let next = Instant::now() + d;
        let next = match cfg.total {
            Some(t) => next.min(cfg.started + t),
            None => next,
        };
        g.reset(next);
    }
}

/// The head gate fired: no head (or, for a stream, no first token) in time.
fn head_expired(cfg: &Config) -> GatewayError {
    let what = if cfg.mode == Mode::Stream {
        "no first token"
    } else {
        "no response head"
    };
    let (deadline, ms) = gate_ms(cfg.first_token, cfg.total);
    super::expired(
        &cfg.provider,
        &cfg.target,
        deadline,
        ms,
        format!("{what} from the upstream within {ms} ms"),
    )
}

/// The pre-read gate fired: no first data event of a stream, or a JSON body not complete, in
/// time (which of idle and total ran out).
fn preread_expired(cfg: &Config, is_stream: bool) -> GatewayError {
    let (deadline, ms, msg) = if is_stream {
        let (deadline, ms) = gate_ms(cfg.first_token, cfg.total);
        let msg = format!("no first token from the upstream within {ms} ms");
        (deadline, ms, msg)
    } else {
        let total_passed = cfg.total.is_some_and(|t| Instant::now() >= cfg.started + t);
        let (deadline, d) = match (total_passed, cfg.idle) {
            (false, Some(idle)) => ("idle", idle),
            _ => ("total", cfg.total.unwrap_or_default()),
        };
        let msg = "upstream body did not complete in time".to_owned();
        (deadline, d.as_millis(), msg)
    };
    super::expired(&cfg.provider, &cfg.target, deadline, ms, msg)
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
                        Poll::Ready(Ok(res)) => res,
                        Poll::Ready(Err(e)) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => {
                            let Some(gate) = this.gate.as_mut().as_pin_mut() else {
                                return Poll::Pending;
                            };
                            ready!(gate.poll(cx));
                            this.state.set(State::Done);
                            return Poll::Ready(Err(head_expired(this.cfg)));
                        }
                    };
                    let mode = on_head(this.cfg, this.gate.as_mut(), &res);
                    if mode == Mode::Passthrough {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(res));
                    }
                    let (parts, body) = res.into_parts();
                    let pre = Preread::new(parts, body, mode);
                    this.state.set(State::Preread { pre });
                }
                StateProj::Preread { pre } => {
                    let out = match pre.read_frames(cx, this.cfg, this.gate.as_mut()) {
                        Verdict::Commit => pre.commit(this.cfg),
                        Verdict::Fail(e) => Err(e),
                        Verdict::Wait => {
                            let is_stream = pre.scanner.is_some();
                            let Some(gate) = this.gate.as_mut().as_pin_mut() else {
                                return Poll::Pending;
                            };
                            ready!(gate.poll(cx));
                            this.state.set(State::Done);
                            return Poll::Ready(Err(preread_expired(this.cfg, is_stream)));
                        }
                    };
                    this.state.set(State::Done);
                    return Poll::Ready(out);
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
