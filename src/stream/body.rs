//! [`ResponseBody`]: the SSE body of a streaming response, observed event by event.

use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http_body::{Frame, SizeHint};
use memchr::memmem::Finder;
use pin_project_lite::pin_project;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::body::BoxError;
use crate::error::{ErrorKind, GatewayError};
use crate::ext::{Drain, DrainPhase, DrainWait, UsageFacts, UsageWriter};
use crate::request::{Api, ParsedRequest};
use crate::sse::{DEFAULT_MAX_EVENT_BYTES, DONE, SseEvent, SseScanner, data_event};
use crate::translate::ingress::error_to_anthropic;
use crate::translate::responses::failure_events;
use crate::usage::{AnthropicUsage, AnthropicUsageDelta, Usage};

/// The parts of an Anthropic stream event the observer reads.
#[derive(Deserialize)]
struct AnthropicEvent<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    /// `message_start`: the message, with its first usage.
    #[serde(default)]
    message: Option<AnthropicStartMessage>,
    /// `message_delta`: the cumulative usage.
    #[serde(default)]
    usage: Option<AnthropicUsageDelta>,
}

#[derive(Deserialize)]
struct AnthropicStartMessage {
    #[serde(default)]
    usage: Option<AnthropicUsageDelta>,
}

/// What the body needs to know about the request, taken from its extensions.
#[derive(Debug, Clone)]
pub(crate) struct StreamInfo {
    /// The client asked for the usage chunk itself.
    wants_usage: bool,
    /// When the gateway received the request.
    received_at: Instant,
    /// An Anthropic event stream (`/v1/messages`): no `[DONE]`, usage from `message_start` and
    /// `message_delta`, in-band errors as `event: error`.
    anthropic: bool,
    /// The most bytes one upstream event (or line) may hold.
    pub(crate) max_event: usize,
    /// The most tokens a plausible usage count has.
    pub(crate) max_usage: u64,
    /// The server's shutdown, when it told the request.
    pub(crate) drain: Option<Drain>,
    /// A Responses event stream (`/v1/responses`): no `[DONE]`, usage from the terminal
    /// `response.completed` | `response.incomplete` | `response.failed`, in-band errors as an
    /// `error` event and `response.failed`.
    responses: bool,
}

impl StreamInfo {
    pub(crate) fn new(parsed: &ParsedRequest) -> Self {
        StreamInfo {
            wants_usage: parsed.wants_usage,
            received_at: parsed.received_at,
            anthropic: parsed.api.is_anthropic(),
            max_event: DEFAULT_MAX_EVENT_BYTES,
            max_usage: crate::usage::DEFAULT_MAX_USAGE_TOKENS,
            drain: None,
            responses: parsed.api == Api::Responses,
        }
    }
}

/// Set the headers of a streaming response. Returns false, leaving the headers alone, when the
/// response is not an event stream (a `content-type` other than `text/event-stream`).
pub(crate) fn prepare_headers(headers: &mut HeaderMap) -> bool {
    match headers.get(CONTENT_TYPE) {
        None => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        }
        Some(v) => {
            let v = v.as_bytes();
            let essence = v.split(|&b| b == b';').next().unwrap_or(v);
            if !essence
                .trim_ascii()
                .eq_ignore_ascii_case(b"text/event-stream")
            {
                return false;
            }
        }
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    static X_ACCEL_BUFFERING: http::header::HeaderName =
        http::header::HeaderName::from_static("x-accel-buffering");
    headers.insert(X_ACCEL_BUFFERING.clone(), HeaderValue::from_static("no"));
    // The length changes (stripped usage chunk, in-band error) and nothing is compressed:
    // compression would hold events back in the encoder.
    headers.remove(CONTENT_LENGTH);
    headers.remove(CONTENT_ENCODING);
    true
}

#[derive(Debug)]
enum State {
    /// Reading the upstream.
    Streaming,
    /// One last frame to send (the in-band error, or a `[DONE]` the upstream left unterminated),
    /// then the end.
    Last(Bytes),
    /// Done: nothing more, the inner body is not polled again.
    Ended,
}

/// What the body learned so far, and where it publishes it: the facts are kept here (no lock
/// per event) and published to the [`UsageWriter`] when the stream ends, fails or is dropped —
/// before any outer body can read the report.
#[derive(Debug)]
struct Observer {
    info: StreamInfo,
    facts: UsageFacts,
    writer: Option<UsageWriter>,
    /// `[DONE]` was seen.
    done: bool,
    /// An error event went out (the upstream's or ours).
    error: bool,
    /// A content event was seen.
    started: bool,
    /// Anthropic streams: the usage so far (cumulative counts, overwritten).
    anthropic_usage: AnthropicUsage,
    /// Responses streams: the last `sequence_number` sent, and the response's id.
    last_seq: Option<u64>,
    response_id: Option<String>,
}

pin_project! {
    /// The body of a streaming response, wrapped by
    /// [`StreamPassthrough`](super::StreamPassthrough).
    ///
    /// Forwards each SSE event as soon as its blank line has arrived, and every complete event of
    /// one upstream frame in **one** frame (a zero-copy slice of the upstream frame when nothing
    /// between them was removed, else one copy); strips the
    /// extra usage chunk when the client did not ask for it; writes usage, `[DONE]`, event counts
    /// and time to first event into its [`UsageWriter`]'s report; and ends a failed stream with an
    /// in-band `data: {"error": …}` event and no `[DONE]`. Dropping it drops the upstream body,
    /// which cancels the upstream request.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        scanner: SseScanner,
        // The last chunk pushed into the scanner, to join adjacent events into one slice.
        chunk: Bytes,
        state: State,
        observer: Observer,
        // Resolves when the server's drain period is over (see `Drain`).
        stop: Option<DrainWait>,
    }
}

impl<B> ResponseBody<B> {
    /// Wrap the SSE body `inner` of a response to `parsed`, reporting through `writer` if given.
    pub fn new(inner: B, parsed: &ParsedRequest, writer: Option<UsageWriter>) -> Self {
        Self::from_info(inner, StreamInfo::new(parsed), writer)
    }

    pub(crate) fn from_info(inner: B, info: StreamInfo, writer: Option<UsageWriter>) -> Self {
        let stop = info.drain.as_ref().map(|d| d.wait(DrainPhase::Over));
        ResponseBody {
            inner,
            scanner: SseScanner::with_max_event(info.max_event),
            chunk: Bytes::new(),
            state: State::Streaming,
            stop,
            observer: Observer {
                info,
                facts: UsageFacts::default(),
                writer,
                done: false,
                error: false,
                started: false,
                anthropic_usage: AnthropicUsage::default(),
                last_seq: None,
                response_id: None,
            },
        }
    }

    /// End the stream in-band when `stop` resolves (the server's drain period is over).
    pub(crate) fn with_stop(mut self, stop: DrainWait) -> Self {
        self.stop = Some(stop);
        self
    }

    /// The upstream body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> http_body::Body for ResponseBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            match std::mem::replace(this.state, State::Streaming) {
                State::Ended => {
                    *this.state = State::Ended;
                    return Poll::Ready(None);
                }
                State::Last(frame) => {
                    *this.state = State::Ended;
                    return Poll::Ready(Some(Ok(Frame::data(frame))));
                }
                State::Streaming => {}
            }
            // Complete events first: never wait for more data while one is ready. `drain`
            // takes every complete event, so the chunk is not needed after it: let it go, or
            // an idle stream would pin the upstream connection's read buffer (hyper's 8 KiB,
            // which also holds the response head) until the next frame.
            let chunk = std::mem::take(this.chunk);
            if let Some(frame) = drain(this.scanner, &chunk, this.observer) {
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            if let Some(err) = cut_short(this.scanner, this.stop, this.observer, cx) {
                // Free what the scanner held; the upstream is dropped with this body.
                *this.scanner = SseScanner::new();
                *this.state = this.observer.end_with(&err);
                this.observer.publish();
                continue;
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.chunk.clone_from(&data);
                        this.scanner.push(data);
                    }
                    // Trailers pass through.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(e)) => {
                    *this.state = this.observer.on_error(e.into());
                    this.observer.publish();
                }
                None => {
                    let tail = this.scanner.finish();
                    *this.state = this.observer.on_eof(tail);
                    this.observer.publish();
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Why the stream must end now, if it must: the upstream's event in progress is over the cap
/// (a broken upstream: the gateway does not hold it), or the server's drain period is over.
fn cut_short(
    scanner: &SseScanner,
    stop: &mut Option<DrainWait>,
    observer: &Observer,
    cx: &mut Context<'_>,
) -> Option<GatewayError> {
    if scanner.event_too_large() {
        return Some(GatewayError::new(
            ErrorKind::UpstreamProtocol,
            format!(
                "the upstream sent an event larger than {} bytes ([server] max_sse_event_bytes)",
                observer.info.max_event
            ),
        ));
    }
    let over = stop
        .as_mut()
        .is_some_and(|s| s.as_mut().poll(cx).is_ready());
    if over {
        *stop = None;
        return Some(GatewayError::new(
            ErrorKind::ShuttingDown,
            "the gateway is shutting down and its drain period is over; the stream was cut",
        ));
    }
    None
}

/// Observe every complete event in the scanner; return what goes to the client as **one**
/// frame (everything of one upstream frame leaves together): a zero-copy slice of `chunk`
/// while the kept events are adjacent in it, else one buffer holding the kept events (a
/// stripped usage chunk, or an event that started in an earlier chunk).
fn drain(scanner: &mut SseScanner, chunk: &Bytes, observer: &mut Observer) -> Option<Bytes> {
    let mut out: Option<Bytes> = None;
    let mut copy: Option<BytesMut> = None;
    while let Some(ev) = scanner.next_event() {
        if !observer.on_event(&ev) {
            continue;
        }
        if let Some(buf) = copy.as_mut() {
            buf.extend_from_slice(&ev.raw);
            continue;
        }
        out = match out {
            None => Some(ev.raw),
            Some(prev) => match join_adjacent(chunk, &prev, &ev.raw) {
                Some(joined) => Some(joined),
                None => {
                    let need = prev.len() + ev.raw.len();
                    let mut buf = BytesMut::with_capacity(need.max(chunk.len()));
                    buf.extend_from_slice(&prev);
                    buf.extend_from_slice(&ev.raw);
                    copy = Some(buf);
                    None
                }
            },
        };
    }
    copy.map(BytesMut::freeze).or(out)
}

/// `a` followed by `b` as one slice of `parent`, when both lie in `parent` and `b` starts
/// where `a` ends.
fn join_adjacent(parent: &Bytes, a: &Bytes, b: &Bytes) -> Option<Bytes> {
    let p = parent.as_ptr() as usize;
    let a0 = a.as_ptr() as usize;
    let b0 = b.as_ptr() as usize;
    if a0.checked_add(a.len())? != b0 || a0 < p || b0 + b.len() > p + parent.len() {
        return None;
    }
    let start = a0 - p;
    Some(parent.slice(start..start + a.len() + b.len()))
}

impl Observer {
    /// Look at one complete event; returns whether it goes to the client.
    fn on_event(&mut self, ev: &SseEvent) -> bool {
        if !ev.has_data {
            return true; // keep-alive comments and the like pass through
        }
        if self.info.anthropic {
            self.on_anthropic_event(ev);
            return true;
        }
        if self.info.responses {
            self.on_responses_event(ev);
            return true;
        }
        if ev.is_done() {
            self.done = true;
            self.update(|s| s.done = true);
            return true;
        }
        let data = &ev.data[..];
        if is_error_event(data) {
            self.error = true;
            self.update(|s| {
                s.error = true;
                s.error_kind
                    .get_or_insert(ErrorKind::UpstreamServerError.as_str());
            });
            return true;
        }
        let mut usage_only = false;
        if has_usage_object(data) {
            usage_only = has_no_choices(data);
            match Usage::from_openai_json(data) {
                Some(usage) => self.set_usage(usage),
                None => self.reject_usage("upstream usage unreadable"),
            }
        }
        if usage_only {
            // The extra chunk the gateway asked for: the client sees it only if it asked too.
            return self.info.wants_usage;
        }
        let first = !self.started;
        self.started = true;
        let first_after = first.then(|| self.info.received_at.elapsed());
        let content = content_bytes(data);
        self.update(|s| {
            s.events += 1;
            s.content_bytes += content;
            if s.first_event_after.is_none() {
                s.first_event_after = first_after;
            }
        });
        true
    }

    /// One Anthropic event: every event goes to the client untouched; `message_start` and
    /// `message_delta` carry the (cumulative) usage, `message_stop` ends the stream, `error` is
    /// an in-band failure. Unknown event types are ignored, as Anthropic's versioning asks.
    fn on_anthropic_event(&mut self, ev: &SseEvent) {
        let data = &ev.data[..];
        let named = ev.event.as_deref();
        // Content deltas (the bulk of a stream) are recognised by their `event:` name alone.
        let parse = !matches!(
            named,
            Some(b"content_block_delta" | b"content_block_start" | b"content_block_stop" | b"ping")
        );
        let parsed = if parse {
            serde_json::from_slice::<AnthropicEvent<'_>>(data).ok()
        } else {
            None
        };
        if parse && parsed.is_none() && USAGE_KEY.find(data).is_some() {
            self.reject_usage("upstream usage unreadable");
        }
        let ty: &[u8] = match (&parsed, named) {
            (Some(p), _) => p.ty.as_bytes(),
            (None, Some(n)) => n,
            (None, None) => b"",
        };
        match ty {
            b"message_stop" => {
                self.done = true;
                self.update(|s| s.done = true);
                return;
            }
            b"error" => {
                self.error = true;
                self.update(|s| {
                    s.error = true;
                    s.error_kind
                        .get_or_insert(ErrorKind::UpstreamServerError.as_str());
                });
                return;
            }
            b"ping" => return,
            _ => {}
        }
        let delta = parsed.and_then(|p| p.usage.or(p.message.and_then(|m| m.usage)));
        if let Some(d) = delta {
            self.anthropic_usage.apply(&d);
            let usage = Usage::from_anthropic(&self.anthropic_usage);
            // All zeros is no report (a translated stream whose upstream sent no usage, or a
            // `message_start` before it is known): the meter then estimates, never fakes.
            if usage != Usage::default() {
                self.set_usage(usage);
            }
        }
        let first = !self.started;
        self.started = true;
        let first_after = first.then(|| self.info.received_at.elapsed());
        let content = content_bytes(data);
        self.update(|s| {
            s.events += 1;
            s.content_bytes += content;
            if s.first_event_after.is_none() {
                s.first_event_after = first_after;
            }
        });
    }

    /// Take `usage` as the upstream's count, unless it cannot be one: then no exact usage (the
    /// record estimates, saying why; a reservation settles at what it reserved).
    fn set_usage(&mut self, usage: Usage) {
        match usage.implausible(self.info.max_usage) {
            None => self.update(|s| {
                s.usage = Some(usage);
                s.usage_rejected = None;
            }),
            Some(reason) => self.reject_usage(reason),
        }
    }

    fn reject_usage(&mut self, reason: &'static str) {
        self.update(|s| {
            s.usage = None;
            s.usage_rejected = Some(reason);
        });
    }

    /// The gateway ends the stream (`err`): in-band, unless the stream is already over.
    fn end_with(&mut self, err: &GatewayError) -> State {
        if self.done || self.error {
            return State::Ended;
        }
        self.fail(err)
    }

    /// One Responses event: every event goes to the client untouched; the terminal
    /// `response.completed` | `response.incomplete` | `response.failed` carries the usage and
    /// ends the stream, `error` is an in-band failure.
    fn on_responses_event(&mut self, ev: &SseEvent) {
        let data = &ev.data[..];
        if let Some(at) = SEQ_KEY.find_iter(data).last() {
            let digits = &data[skip_ws(data, at + b"\"sequence_number\":".len())..];
            let end = digits
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(digits.len());
            if let Some(n) = std::str::from_utf8(&digits[..end])
                .ok()
                .and_then(|d| d.parse().ok())
            {
                self.last_seq = Some(n);
            }
        }
        let owned;
        let ty: &[u8] = match ev.event.as_deref() {
            Some(n) => n,
            None => {
                owned = responses_type(data).unwrap_or_default();
                owned.as_bytes()
            }
        };
        match ty {
            b"response.completed" | b"response.incomplete" | b"response.failed" => {
                if let Some(u) = Usage::from_responses_event(data) {
                    self.set_usage(u);
                }
                if ty == b"response.failed" {
                    self.mark_error();
                } else {
                    self.done = true;
                    self.update(|s| s.done = true);
                }
                return;
            }
            b"error" => {
                self.mark_error();
                return;
            }
            b"response.created" => {
                self.response_id = responses_id(data);
            }
            _ => {}
        }
        let first = !self.started;
        self.started = true;
        let first_after = first.then(|| self.info.received_at.elapsed());
        let content = content_bytes(data);
        self.update(|s| {
            s.events += 1;
            s.content_bytes += content;
            if s.first_event_after.is_none() {
                s.first_event_after = first_after;
            }
        });
    }

    fn mark_error(&mut self) {
        self.error = true;
        self.update(|s| {
            s.error = true;
            s.error_kind
                .get_or_insert(ErrorKind::UpstreamServerError.as_str());
        });
    }

    /// The upstream body failed: end with an in-band error unless the stream is already over.
    fn on_error(&mut self, e: BoxError) -> State {
        if self.done || self.error {
            return State::Ended;
        }
        let err = match e.downcast::<GatewayError>() {
            Ok(err) => *err,
            Err(e) => GatewayError::new(
                ErrorKind::UpstreamProtocol,
                format!("the upstream stream failed: {e}"),
            ),
        };
        self.fail(&err)
    }

    /// The upstream body ended. Without `[DONE]`, the stream was cut: say so in-band.
    fn on_eof(&mut self, tail: Option<SseEvent>) -> State {
        if self.info.anthropic || self.info.responses {
            if let Some(ev) = tail.as_ref().filter(|ev| ev.has_data) {
                // An event without its blank line: observe it and finish it for the client.
                if self.info.anthropic {
                    self.on_anthropic_event(ev);
                } else {
                    self.on_responses_event(ev);
                }
                let mut raw = ev.raw.to_vec();
                raw.extend_from_slice(b"\n\n");
                if self.done || self.error {
                    return State::Last(Bytes::from(raw));
                }
            }
        }
        if self.done || self.error {
            return State::Ended;
        }
        if tail.as_ref().is_some_and(SseEvent::is_done) {
            // `[DONE]` without its blank line: finish it properly for the client.
            self.done = true;
            self.update(|s| s.done = true);
            return State::Last(Bytes::from_static(DONE));
        }
        let err = GatewayError::new(
            ErrorKind::UpstreamProtocol,
            if self.info.anthropic {
                "the upstream closed the stream before message_stop"
            } else if self.info.responses {
                "the upstream closed the stream before its terminal response event"
            } else {
                "the upstream closed the stream before [DONE]"
            },
        );
        self.fail(&err)
    }

    fn fail(&mut self, err: &GatewayError) -> State {
        self.error = true;
        let kind = err.kind().as_str();
        self.update(|s| {
            s.error = true;
            s.error_kind = Some(kind);
        });
        if self.info.anthropic {
            let (_, body) = error_to_anthropic(err);
            let mut ev = Vec::with_capacity(body.len() + 24);
            ev.extend_from_slice(b"event: error\ndata: ");
            ev.extend_from_slice(&body);
            ev.extend_from_slice(b"\n\n");
            return State::Last(Bytes::from(ev));
        }
        if self.info.responses {
            let code = err.code().unwrap_or(kind);
            return State::Last(failure_events(
                self.last_seq,
                self.response_id.as_deref(),
                code,
                err.message(),
            ));
        }
        let json = serde_json::to_vec(&err.to_json()).unwrap_or_else(|_| {
            br#"{"error":{"message":"stream failed","type":"api_error","param":null,"code":null}}"#
                .to_vec()
        });
        State::Last(data_event(&json))
    }

    fn update(&mut self, f: impl FnOnce(&mut UsageFacts)) {
        f(&mut self.facts);
    }

    /// Publish the facts (the stream is over: ended, failed or dropped).
    fn publish(&self) {
        if let Some(w) = &self.writer {
            w.publish(&self.facts);
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.publish();
    }
}

static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static KEY_END: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\":"));
static SEQ_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"sequence_number\":"));

/// The `type` of a Responses event sent without an `event:` line.
fn responses_type(data: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        ty: String,
    }
    serde_json::from_slice::<Typed>(data).ok().map(|t| t.ty)
}

/// The `response.id` of a `response.created` event.
fn responses_id(data: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Created {
        response: Id,
    }
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_slice::<Created>(data)
        .ok()
        .map(|c| c.response.id)
}

/// Skip JSON whitespace from `i`.
fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while s
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// Whether the chunk has a `"usage": {` (not `"usage": null`), found without parsing.
fn has_usage_object(data: &[u8]) -> bool {
    USAGE_KEY.find_iter(data).any(|at| {
        let i = skip_ws(data, at + b"\"usage\"".len());
        data.get(i) == Some(&b':') && data.get(skip_ws(data, i + 1)) == Some(&b'{')
    })
}

/// Whether the chunk's `choices` is an empty array (or absent): the final usage chunk.
fn has_no_choices(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Choices {
        #[serde(default)]
        choices: Option<Vec<IgnoredAny>>,
    }
    serde_json::from_slice::<Choices>(data)
        .map(|c| c.choices.is_none_or(|c| c.is_empty()))
        .unwrap_or(false)
}

/// Whether the event is an error object (`{"error": {…}}` or `{"error": "…"}`).
fn is_error_event(data: &[u8]) -> bool {
    let d = data.trim_ascii_start();
    let Some(rest) = d.strip_prefix(b"{") else {
        return false;
    };
    let Some(rest) = rest.trim_ascii_start().strip_prefix(b"\"error\"") else {
        return false;
    };
    let Some(rest) = rest.trim_ascii_start().strip_prefix(b":") else {
        return false;
    };
    matches!(rest.trim_ascii_start().first(), Some(b'{' | b'"'))
}

/// Bytes of generated text in a chunk (for estimates): the JSON-escaped length of every
/// `content`, `reasoning_content`, `refusal`, `text` and `arguments` string value.
fn content_bytes(data: &[u8]) -> u64 {
    const KEYS: [&[u8]; 5] = [
        b"\"content",
        b"\"reasoning_content",
        b"\"refusal",
        b"\"text",
        b"\"arguments",
    ];
    let mut total = 0u64;
    let mut from = 0;
    while let Some(at) = KEY_END.find(&data[from..]) {
        let key_end = from + at;
        from = key_end + 2;
        if !KEYS.iter().any(|k| data[..key_end].ends_with(k)) {
            continue;
        }
        let open = skip_ws(data, from);
        if data.get(open) != Some(&b'"') {
            continue;
        }
        let Some(close) = string_end(data, open + 1) else {
            break;
        };
        total += (close - open - 1) as u64;
        from = close + 1;
    }
    total
}

/// The index of the quote closing the JSON string that starts at `i`.
fn string_end(s: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', s.get(i..)?)?;
        if s[at] == b'"' {
            return Some(at);
        }
        i = at + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_usage_objects_without_parsing() {
        assert!(has_usage_object(
            br#"{"choices":[],"usage":{"total_tokens":1}}"#
        ));
        assert!(has_usage_object(
            br#"{"choices": [], "usage" : {"total_tokens": 1}}"#
        ));
        assert!(!has_usage_object(br#"{"choices":[{}],"usage":null}"#));
        assert!(!has_usage_object(br#"{"delta":{"content":"\"usage\":{"}}"#));
        assert!(has_no_choices(br#"{"choices":[],"usage":{}}"#));
        assert!(!has_no_choices(br#"{"choices":[{"index":0}],"usage":{}}"#));
    }

    #[test]
    fn counts_content_bytes() {
        let d = br#"{"id":"x","choices":[{"delta":{"content":"He said \"hi\""}}],"usage":null}"#;
        assert_eq!(content_bytes(d), 14);
        let d =
            br#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"a\":1}"}}]}}]}"#;
        assert_eq!(content_bytes(d), 9);
        assert_eq!(
            content_bytes(br#"{"choices":[{"delta":{"content":null}}]}"#),
            0
        );
        assert!(is_error_event(br#" { "error": {"message":"x"}}"#));
        assert!(!is_error_event(br#"{"choices":[],"error":null}"#));
        assert!(!is_error_event(br#"{"error":null,"choices":[]}"#));
    }

    /// Once the events of an upstream frame are handed on, an idle stream holds nothing of that
    /// frame: it is a slice of hyper's connection read buffer (8 KiB, the response head
    /// included), which would stay allocated until the next frame came — and hyper would read
    /// the rest of the stream into a second one.
    #[test]
    fn an_idle_stream_holds_nothing_of_the_frame_it_handed_on() {
        use futures_util::StreamExt;
        use http_body::Body as _;
        let parsed = crate::request::parse_body(
            Api::ChatCompletions,
            Bytes::from_static(
                br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}"#,
            ),
        )
        .unwrap();
        let event = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        // One complete event; then one complete event and the start of the next.
        for tail in [&b""[..], &b"data: {\"choi"[..]] {
            let upstream = Bytes::from([&event[..], tail].concat());
            let frames =
                futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(upstream.clone()))])
                    .chain(futures_util::stream::pending());
            let inner = crate::body::Body::new(http_body_util::StreamBody::new(frames));
            let mut body = std::pin::pin!(ResponseBody::new(inner, &parsed, None));
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            let Poll::Ready(Some(Ok(frame))) = body.as_mut().poll_frame(&mut cx) else {
                panic!("the first event is ready");
            };
            assert_eq!(frame.into_data().unwrap(), &event[..]);
            assert!(body.as_mut().poll_frame(&mut cx).is_pending());
            assert!(
                upstream.is_unique(),
                "the body still holds the upstream frame"
            );
        }
    }

    #[test]
    fn joins_only_adjacent_slices_of_the_chunk() {
        let chunk = Bytes::from_static(b"aaabbbccc");
        let a = chunk.slice(0..3);
        let b = chunk.slice(3..6);
        let c = chunk.slice(6..9);
        assert_eq!(&join_adjacent(&chunk, &a, &b).unwrap()[..], b"aaabbb");
        assert!(join_adjacent(&chunk, &a, &c).is_none());
        let other = Bytes::from_static(b"bbb");
        assert!(join_adjacent(&chunk, &a, &other).is_none());
    }
}
