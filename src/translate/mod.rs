//! Exact translation between OpenAI's chat wire format and the providers that do not speak it.
//!
//! Pure functions and push-based state machines, testable without a network:
//! - [`anthropic`]: OpenAI chat request → Anthropic Messages request; Anthropic response, SSE
//!   events and errors → OpenAI `chat.completion`, `chat.completion.chunk`s and [`GatewayError`].
//! - [`gemini`]: the same for Google Gemini `generateContent` / `streamGenerateContent?alt=sse`.
//! - [`ingress`]: the other direction, for an Anthropic-style `/v1/messages` ingress in front of
//!   an OpenAI-compatible target.
//! - [`responses`]: the OpenAI Responses API (`/v1/responses`) in front of a chat-completions
//!   target (and, composed with the two above, Anthropic and Gemini targets).
//!
//! Streams are translated event by event with a [`StreamTranslator`]: one upstream SSE event in,
//! zero or more output bytes out, nothing buffered beyond the event being scanned.
//! [`TranslateBody`] wraps an upstream body with a scanner and a translator.
//!
//! ## Fields a provider cannot take
//! A request field the target provider has no equivalent for is either **dropped** — when it is
//! a hint or bookkeeping whose absence cannot change the meaning of an answer (`seed`,
//! `logit_bias`, `presence_penalty`, `frequency_penalty`, `metadata`, `store`, `service_tier`,
//! `prompt_cache_key`, `stream_options`, unknown extension fields) — or **refused with a 400**
//! naming the field — when honouring it is part of the answer's contract (`n > 1`, `logprobs`,
//! `audio` output, `response_format: json_object` where there is no JSON mode, a `temperature`
//! outside the provider's range, audio parts). A value is never clamped or approximated.
//! Each provider module lists its own table.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::BoxError;
use crate::error::{ErrorKind, GatewayError};
use crate::sse::{SseEvent, SseScanner};

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod ingress;
pub mod responses;

/// What a translator wants after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep feeding events.
    Continue,
    /// The translated stream is complete (or ended with an in-band error): stop reading.
    End,
}

/// A push-based stream translator: upstream SSE events in, downstream SSE bytes out.
pub trait StreamTranslator: Send + 'static {
    /// One upstream event. `data` is its joined `data:` lines, or `None` for a block without
    /// any (comments, keep-alives, or a provider's raw non-SSE text, whose bytes are `raw`).
    /// Appends zero or more complete output events to `out`.
    fn on_event(&mut self, data: Option<&[u8]>, raw: &[u8], out: &mut BytesMut) -> Flow;

    /// The upstream body ended. Appends any closing events; `Err` when the upstream ended
    /// before its protocol said it was done (the stream must then end with an error, never
    /// with a faked `[DONE]`).
    fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), GatewayError>;
}

/// Translate a whole upstream byte stream, split into `chunks` anywhere, in one go.
/// Returns the output bytes and the end-of-stream error, if any. Used by tests and benches;
/// the serving path uses [`TranslateBody`].
pub fn translate_chunks<T, I>(translator: &mut T, chunks: I) -> (Bytes, Option<GatewayError>)
where
    T: StreamTranslator,
    I: IntoIterator<Item = Bytes>,
{
    let mut scanner = SseScanner::new();
    let mut out = BytesMut::new();
    for chunk in chunks {
        scanner.push(chunk);
        while let Some(ev) = scanner.next_event() {
            if feed(translator, &ev, &mut out) == Flow::End {
                return (out.freeze(), None);
            }
        }
    }
    if let Some(ev) = scanner.finish() {
        if feed(translator, &ev, &mut out) == Flow::End {
            return (out.freeze(), None);
        }
    }
    let err = translator.on_eof(&mut out).err();
    (out.freeze(), err)
}

fn feed<T: StreamTranslator>(t: &mut T, ev: &SseEvent, out: &mut BytesMut) -> Flow {
    let data = if ev.has_data {
        Some(&ev.data[..])
    } else {
        None
    };
    t.on_event(data, &ev.raw, out)
}

/// `'field' is not supported by the PROVIDER provider`, a 400 naming the field.
pub(crate) fn unsupported(field: &'static str, provider: &str) -> GatewayError {
    GatewayError::bad_request(
        format!("'{field}' is not supported by the {provider} provider"),
        Some(field),
    )
    .with_code("unsupported_parameter")
}

/// An OpenAI chat request body for translation: the JSON object (without `messages`) and its
/// `messages` array, with the fields no translation honours refused (400s naming `provider`).
pub(crate) type ChatRequest = (
    serde_json::Map<String, serde_json::Value>,
    Vec<serde_json::Value>,
);

/// Parse and check an OpenAI chat request body for translation: see [`ChatRequest`].
pub(crate) fn chat_request(body: &[u8], provider: &str) -> Result<ChatRequest, GatewayError> {
    use serde_json::Value;
    let mut req: serde_json::Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| GatewayError::bad_request(format!("invalid JSON body: {e}"), None))?;
    // Refused: honouring them is part of the answer's contract.
    for key in [
        "audio",
        "prediction",
        "web_search_options",
        "functions",
        "function_call",
        "top_logprobs",
    ] {
        if req.get(key).is_some_and(|v| !v.is_null()) {
            return Err(unsupported(key, provider));
        }
    }
    if req.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("logprobs", provider));
    }
    if let Some(m) = req.get("modalities").and_then(Value::as_array) {
        if m.iter().any(|x| x.as_str() != Some("text")) {
            return Err(unsupported("modalities", provider));
        }
    }
    match req.remove("messages") {
        Some(Value::Array(messages)) => Ok((req, messages)),
        _ => Err(GatewayError::bad_request(
            "'messages' must be an array",
            Some("messages"),
        )),
    }
}

/// The `function` objects of an OpenAI request's `tools` list (empty when there is none). A
/// tool of any other type is refused with 400 naming it: `provider` says who cannot take it.
pub(crate) fn function_tools<'a>(
    req: &'a serde_json::Map<String, serde_json::Value>,
    provider: &str,
) -> Result<Vec<&'a serde_json::Value>, GatewayError> {
    let Some(tools) = req.get("tools").and_then(serde_json::Value::as_array) else {
        return Ok(Vec::new());
    };
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            match (
                t.get("type").and_then(serde_json::Value::as_str),
                t.get("function"),
            ) {
                (Some("function") | None, Some(f)) => Ok(f),
                _ => Err(GatewayError::bad_request(
                    format!("only function tools are supported by the {provider} provider"),
                    None,
                )
                .with_param(format!("tools[{i}]"))),
            }
        })
        .collect()
}

/// One entry of a chat message's non-standard `thinking_blocks` (what the Anthropic
/// translation returns, as LiteLLM does) as the Anthropic block it came from: `{type:
/// "thinking", thinking, signature}` or `{type: "redacted_thinking", data}`, with nothing else
/// (a streamed block's `index` is dropped). `None` when it is neither.
pub(crate) fn thinking_block(b: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::json;
    let s = |k: &str| b.get(k).and_then(serde_json::Value::as_str);
    match s("type")? {
        "thinking" => Some(json!({"type": "thinking", "thinking": s("thinking")?,
            "signature": s("signature")?})),
        "redacted_thinking" => Some(json!({"type": "redacted_thinking", "data": s("data")?})),
        _ => None,
    }
}

/// A provider tool declaration started from an OpenAI function: its `name` and, when set, its
/// `description`.
pub(crate) fn named_tool(f: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    let mut tool = serde_json::Map::new();
    tool.insert(
        "name".into(),
        f.get("name").cloned().unwrap_or(serde_json::Value::Null),
    );
    if let Some(d) = f.get("description").filter(|v| !v.is_null()) {
        tool.insert("description".into(), d.clone());
    }
    tool
}

/// The default of the most bytes one upstream event may hold in a translated stream (16 MiB:
/// four times the default of `[server] max_sse_event_bytes`, which the stream layer applies to
/// what this body produces); `[server] max_translated_event_bytes` sets it.
pub const MAX_TRANSLATED_EVENT_BYTES: usize = 16 << 20;

/// The default of the most bytes of a non-streaming answer read whole to translate it
/// (32 MiB); `[server] max_translated_body_bytes` sets it.
pub const MAX_TRANSLATED_BODY_BYTES: usize = 32 << 20;

/// The caps on what the gateway holds while it translates an upstream's answer (the
/// [`UpstreamCall::limits`](crate::provider::UpstreamCall::limits) of every attempt, set by
/// [`Dispatch::translate_limits`](crate::provider::Dispatch::translate_limits)). A
/// pass-through answer is never held, so these apply to translated ones only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranslateLimits {
    /// The most bytes one upstream SSE event (or a line without a line break) may hold in a
    /// translated stream; past it the stream ends with an `upstream_protocol` error.
    pub max_event_bytes: usize,
    /// The most bytes of a non-streaming answer read whole to translate it; past it the
    /// request fails with an `upstream_protocol` error (502) and the rest is not read.
    pub max_body_bytes: usize,
}

impl Default for TranslateLimits {
    fn default() -> Self {
        TranslateLimits {
            max_event_bytes: MAX_TRANSLATED_EVENT_BYTES,
            max_body_bytes: MAX_TRANSLATED_BODY_BYTES,
        }
    }
}

/// The error of a non-streaming answer over [`TranslateLimits::max_body_bytes`].
pub(crate) fn answer_too_large(cap: usize) -> GatewayError {
    GatewayError::new(
        ErrorKind::UpstreamProtocol,
        format!(
            "the upstream answer is larger than {cap} bytes, the most the gateway reads to \
             translate it ([server] max_translated_body_bytes)"
        ),
    )
}

pin_project! {
    /// A response body translating an upstream SSE body on the fly, event by event, with no
    /// buffering beyond the event being scanned. Everything translated from one upstream frame
    /// leaves as one frame (one buffer, no allocation per event). Upstream body errors pass through; an upstream
    /// that ends too early ends this body with an [`ErrorKind::UpstreamProtocol`] error after
    /// the bytes translated so far.
    pub struct TranslateBody<B, T> {
        #[pin]
        inner: B,
        scanner: SseScanner,
        max_event: usize,
        translator: T,
        out: BytesMut,
        state: BodyState,
    }
}

#[derive(Debug)]
enum BodyState {
    Streaming,
    /// Upstream finished; emit what is left, then the error if any.
    Closing(Option<GatewayError>),
    Ended,
}

impl<B, T> TranslateBody<B, T> {
    /// Wrap `inner` (an upstream SSE body) with `translator`.
    pub fn new(inner: B, translator: T) -> Self {
        TranslateBody {
            inner,
            scanner: SseScanner::with_max_event(MAX_TRANSLATED_EVENT_BYTES),
            max_event: MAX_TRANSLATED_EVENT_BYTES,
            translator,
            out: BytesMut::with_capacity(1024),
            state: BodyState::Streaming,
        }
    }

    /// The most bytes one upstream event may hold (default [`MAX_TRANSLATED_EVENT_BYTES`]);
    /// past it the body ends with an [`ErrorKind::UpstreamProtocol`] error and the event is
    /// not held.
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.scanner = SseScanner::with_max_event(bytes);
        self.max_event = bytes;
        self
    }
}

impl<B, T> HttpBody for TranslateBody<B, T>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
    T: StreamTranslator,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            match this.state {
                BodyState::Ended => return Poll::Ready(None),
                BodyState::Closing(err) => {
                    if !this.out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
                    }
                    let err = err.take();
                    *this.state = BodyState::Ended;
                    return Poll::Ready(err.map(|e| Err(Box::new(e) as BoxError)));
                }
                BodyState::Streaming => {}
            }
            while let Some(ev) = this.scanner.next_event() {
                if feed(this.translator, &ev, this.out) == Flow::End {
                    *this.state = BodyState::Closing(None);
                    break;
                }
            }
            if !matches!(this.state, BodyState::Streaming) {
                continue;
            }
            if !this.out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
            }
            if this.scanner.event_too_large() {
                // A broken upstream: its event is not held. The stream layer outside ends the
                // stream in-band with this error.
                *this.scanner = SseScanner::new();
                *this.state = BodyState::Closing(Some(GatewayError::new(
                    ErrorKind::UpstreamProtocol,
                    format!(
                        "the upstream sent an event larger than {} bytes ([server] \
                         max_translated_event_bytes)",
                        this.max_event
                    ),
                )));
                continue;
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.scanner.push(data);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    *this.state = BodyState::Ended;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    let mut flow = Flow::Continue;
                    if let Some(ev) = this.scanner.finish() {
                        flow = feed(this.translator, &ev, this.out);
                    }
                    let err = match flow {
                        Flow::End => None,
                        Flow::Continue => this.translator.on_eof(this.out).err(),
                    };
                    *this.state = BodyState::Closing(err);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Ended)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// An upstream that broke its protocol (bad JSON, events out of order, cut short).
/// One row of a translating adapter's error table: how the OpenAI face answers an upstream
/// error, so that its meaning is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErrorRow {
    /// The status that decides the [`ErrorKind`] (whether another target may be tried):
    /// 529 for "overloaded", 429 for an exhausted quota, else the upstream's.
    pub kind_status: u16,
    /// The status the client is answered with.
    pub status: u16,
    /// OpenAI `error.type`.
    pub ty: &'static str,
    /// OpenAI `error.code`: OpenAI's own code where the meaning has one, else the upstream's
    /// identifier as sent (Anthropic `error.type`, Gemini `error.status`).
    pub code: std::borrow::Cow<'static, str>,
}

impl ErrorRow {
    pub(crate) fn new(
        kind_status: u16,
        status: u16,
        ty: &'static str,
        code: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Self {
        ErrorRow {
            kind_status,
            status,
            ty,
            code: code.into(),
        }
    }

    /// The gateway error: `upstream` is the status the upstream answered with; `Retry-After`,
    /// `x-should-retry` and the upstream request id come from `headers`.
    pub(crate) fn into_error(
        self,
        upstream: u16,
        message: String,
        headers: &http::HeaderMap,
        provider: Option<std::sync::Arc<str>>,
    ) -> GatewayError {
        let kind_status =
            http::StatusCode::from_u16(self.kind_status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        let status =
            http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        let e = GatewayError::upstream_status(kind_status, message, provider)
            .with_status(status)
            .with_upstream_status(upstream)
            .with_type(self.ty)
            .with_code(self.code);
        crate::provider::with_upstream_headers(e, headers)
    }
}

pub(crate) fn protocol_error(msg: impl Into<std::borrow::Cow<'static, str>>) -> GatewayError {
    GatewayError::new(ErrorKind::UpstreamProtocol, msg)
}

pub(crate) use crate::sse::DONE;

/// Appends `n` in decimal.
pub(crate) fn write_u64(out: &mut BytesMut, n: u64) {
    let mut buf = [0u8; 20];
    out.extend_from_slice(decimal(n, &mut buf));
}

/// `n` in decimal, formatted into `buf` (no allocation).
pub(crate) fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Appends `s` as a JSON string literal.
pub(crate) fn write_json_str(out: &mut BytesMut, s: &str) {
    use bytes::BufMut;
    // serde_json's escaping, straight into the buffer (no temporary string); a `str` never
    // fails to serialize and writing to memory cannot fail.
    let _ = serde_json::to_writer(out.writer(), s);
}

/// Whether a raw JSON value is a string literal (so it can be copied into output as is).
pub(crate) fn is_json_string(raw: &serde_json::value::RawValue) -> bool {
    raw.get().as_bytes().first() == Some(&b'"')
}

/// Appends the OpenAI `usage` object for `u`, keys in OpenAI's order.
pub(crate) fn write_usage(out: &mut BytesMut, u: &crate::usage::Usage) {
    out.extend_from_slice(b"{\"prompt_tokens\":");
    write_u64(out, u.prompt_tokens);
    out.extend_from_slice(b",\"completion_tokens\":");
    write_u64(out, u.completion_tokens);
    out.extend_from_slice(b",\"total_tokens\":");
    write_u64(out, u.total_tokens);
    out.extend_from_slice(b",\"prompt_tokens_details\":{\"cached_tokens\":");
    write_u64(out, u.cached_tokens);
    out.extend_from_slice(b",\"cache_write_tokens\":");
    write_u64(out, u.cache_write_tokens);
    out.extend_from_slice(b"},\"completion_tokens_details\":{\"reasoning_tokens\":");
    write_u64(out, u.reasoning_tokens);
    out.extend_from_slice(b"}}");
}

/// The OpenAI `usage` object for `u`.
pub(crate) fn usage_json(u: &crate::usage::Usage) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": u.cached_tokens,
            "cache_write_tokens": u.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

/// Seconds since the Unix epoch (the `created` field).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Splits a `data:` URL into its media type and base64 payload (`None` if it is not a base64
/// data URL).
pub(crate) fn split_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((media, data))
}

/// The prefix of every chunk of one completion:
/// `data: {"id":..,"object":"chat.completion.chunk","created":..,"model":..,"choices":[`.
pub(crate) fn chunk_prefix(id: &str, created: u64, model: &str) -> BytesMut {
    let mut p = BytesMut::with_capacity(96 + id.len() + model.len());
    p.extend_from_slice(b"data: {\"id\":");
    write_json_str(&mut p, id);
    p.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
    write_u64(&mut p, created);
    p.extend_from_slice(b",\"model\":");
    write_json_str(&mut p, model);
    p.extend_from_slice(b",\"choices\":[");
    p
}

/// The end of a content chunk: `]}` or `],"usage":null}` (when the usage chunk was asked for).
pub(crate) fn chunk_suffix(include_usage: bool) -> &'static [u8] {
    if include_usage {
        b"],\"usage\":null}\n\n"
    } else {
        b"]}\n\n"
    }
}
