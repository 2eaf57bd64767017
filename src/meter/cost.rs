//! [`CostReport`]: adds `cost` (USD, as OpenRouter does) to the `usage` object the client
//! receives — the JSON body of a non-streaming answer and the usage chunk of a stream.
//!
//! Place it directly inside [`UsageMeter`](super::UsageMeter) and outside
//! [`StreamPassthrough`](crate::stream::StreamPassthrough) (whose frames hold whole SSE events,
//! and which strips the usage chunk when the client did not ask for it — then there is nothing
//! to annotate). The price is the serving target's ([`ServedBy`] response extension), resolved
//! with the same [`PriceHandle`] and date rule as the meter, so the client's `cost` equals the
//! record's `cost_pico`.
//!
//! Nothing is buffered and nothing is copied: a frame without a top-level `"usage"` object is
//! forwarded as the same `Bytes`; the frame holding the usage object's closing brace goes out
//! as two zero-copy slices around a small new `,"cost":0.00000495`. (The usage object itself is
//! copied aside, once, to be parsed.) Non-streaming bodies are scanned with a small JSON state
//! machine that tracks depth and strings, so only the **top-level** `usage` is touched (not,
//! e.g., Groq's `x_groq.usage`); streams are scanned only in frames where a byte search finds
//! `"usage"`. A usage object that already has a `cost` (an upstream such as OpenRouter) is left
//! as the upstream sent it, and so is one that is not OpenAI-shaped (no `prompt_tokens` /
//! `completion_tokens`, e.g. Anthropic's on the `/v1/messages` ingress). Responses with no known price, errors and compressed bodies pass
//! through untouched, as do moderations, images and audio; a rewritten non-streaming response
//! loses its `content-length`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::{Body, BoxError};
use crate::ext::ServedBy;
use crate::money::Usd;
use crate::pricing::{PriceDate, PriceHandle};
use crate::request::ParsedRequest;
use crate::usage::{Price, Usage};

/// Layer for [`CostReport`]: configuration only.
#[derive(Debug, Clone, Default)]
pub struct CostReportLayer {
    prices: Option<PriceHandle>,
}

impl CostReportLayer {
    /// Report cost with each serving target's own [`Target::price`](crate::target::Target).
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolve prices with `table` first (give it the same table as
    /// [`UsageMeterLayer::prices`](super::UsageMeterLayer::prices)).
    pub fn prices(mut self, table: impl Into<PriceHandle>) -> Self {
        self.prices = Some(table.into());
        self
    }
}

impl<S> Layer<S> for CostReportLayer {
    type Service = CostReport<S>;
    fn layer(&self, inner: S) -> CostReport<S> {
        CostReport {
            inner,
            prices: self.prices.clone(),
        }
    }
}

/// Adds `cost` to the client's usage object; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct CostReport<S> {
    inner: S,
    prices: Option<PriceHandle>,
}

impl<S> CostReport<S> {
    /// Wrap `inner` (prices from the serving targets).
    pub fn new(inner: S) -> Self {
        CostReportLayer::new().layer(inner)
    }
    /// The default layer.
    pub fn layer() -> CostReportLayer {
        CostReportLayer::new()
    }
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for CostReport<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = CostReportFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Moderations, images and audio are left alone: speech is audio bytes, and their cost
        // is per unit (in the record, not in a `usage` object).
        let stream = req
            .extensions()
            .get::<ParsedRequest>()
            .filter(|p| !p.api.openai_only())
            .map(|p| p.stream);
        CostReportFuture {
            inner: self.inner.call(req),
            stream,
            // Priced as of the request's arrival, as the meter does.
            date: PriceDate::today(),
            prices: self.prices.clone(),
        }
    }
}

pin_project! {
    /// Future of [`CostReport`].
    pub struct CostReportFuture<F> {
        #[pin]
        inner: F,
        // `None`: not a parsed model request, pass through.
        stream: Option<bool>,
        date: PriceDate,
        prices: Option<PriceHandle>,
    }
}

impl<F, E> Future for CostReportFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        let Some(stream) = *this.stream else {
            return Poll::Ready(Ok(res));
        };
        if !res.status().is_success() || res.headers().contains_key(CONTENT_ENCODING) {
            return Poll::Ready(Ok(res));
        }
        let price = res
            .extensions()
            .get::<ServedBy>()
            .and_then(|s| crate::pricing::resolve(this.prices.as_ref(), &s.target, *this.date));
        let Some(price) = price else {
            return Poll::Ready(Ok(res));
        };
        if !stream {
            res.headers_mut().remove(CONTENT_LENGTH);
        }
        Poll::Ready(Ok(res.map(|b| Body::new(CostBody::new(b, price, stream)))))
    }
}

#[derive(Debug)]
enum Mode {
    /// SSE: scan each frame that mentions `"usage"`, line by line.
    Stream,
    /// One JSON document across frames.
    Json(Box<JsonScan>),
}

pin_project! {
    /// A body that adds `cost` to the top-level `usage` object(s) it carries; see
    /// [`CostReport`].
    pub struct CostBody<B> {
        #[pin]
        inner: B,
        price: Price,
        mode: Mode,
        pending: VecDeque<Bytes>,
    }
}

impl<B> CostBody<B> {
    /// Wrap `inner` (an SSE body when `stream`, else one JSON document), pricing with `price`.
    pub fn new(inner: B, price: Price, stream: bool) -> Self {
        CostBody {
            inner,
            price,
            mode: if stream {
                Mode::Stream
            } else {
                Mode::Json(Box::default())
            },
            pending: VecDeque::new(),
        }
    }
}

impl<B> http_body::Body for CostBody<B>
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
        let this = self.project();
        if let Some(b) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let out = match this.mode {
                        Mode::Stream => rewrite_sse(data, this.price, this.pending),
                        Mode::Json(scan) => rewrite_json(data, scan, this.price, this.pending),
                    };
                    Poll::Ready(Some(Ok(Frame::data(out))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// `"cost":X` (with a leading comma unless the object is empty), or `None` when the object is
/// not a usage object or already has a cost.
fn cost_member(usage_obj: &[u8], price: &Price) -> Option<Bytes> {
    if memchr::memmem::find(usage_obj, b"\"cost\"").is_some() {
        return None;
    }
    // Only OpenAI-shaped usage (an Anthropic-style `input_tokens` object is not ours to price).
    if memchr::memmem::find(usage_obj, b"\"prompt_tokens\"").is_none()
        && memchr::memmem::find(usage_obj, b"\"completion_tokens\"").is_none()
    {
        return None;
    }
    let mut doc = Vec::with_capacity(usage_obj.len() + 10);
    doc.extend_from_slice(b"{\"usage\":");
    doc.extend_from_slice(usage_obj);
    doc.push(b'}');
    let usage: Usage = Usage::from_openai_json(&doc)?;
    let inner = usage_obj.get(1..usage_obj.len().saturating_sub(1))?;
    let empty = inner.iter().all(u8::is_ascii_whitespace);
    let usd = Usd::from_pico(price.cost_pico(&usage));
    let sep = if empty { "" } else { "," };
    Some(Bytes::from(format!("{sep}\"cost\":{usd}")))
}

/// Split `data` at `at`, with `insert` between; the first piece is returned, the rest queued.
fn splice(data: Bytes, cuts: Vec<(usize, Bytes)>, pending: &mut VecDeque<Bytes>) -> Bytes {
    let mut pieces = Vec::with_capacity(cuts.len() * 2 + 1);
    let mut from = 0;
    for (at, insert) in cuts {
        if at > from {
            pieces.push(data.slice(from..at));
        }
        pieces.push(insert);
        from = at;
    }
    if from < data.len() {
        pieces.push(data.slice(from..));
    }
    let mut it = pieces.into_iter();
    let first = it.next().unwrap_or_default();
    pending.extend(it);
    first
}

/// Whether `data` has a `"usage"` key followed by an object (not `"usage":null`, which
/// OpenAI puts in every chunk), found with a byte search: the fast path of every frame.
fn has_usage_object(data: &[u8]) -> bool {
    let skip_ws = |mut i: usize| {
        while data
            .get(i)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            i += 1;
        }
        i
    };
    memchr::memmem::find_iter(data, b"\"usage\"").any(|at| {
        let i = skip_ws(at + b"\"usage\"".len());
        data.get(i) == Some(&b':') && data.get(skip_ws(i + 1)) == Some(&b'{')
    })
}

fn rewrite_sse(data: Bytes, price: &Price, pending: &mut VecDeque<Bytes>) -> Bytes {
    if !has_usage_object(&data) {
        return data;
    }
    let mut cuts = Vec::new();
    let mut line_start = 0;
    while line_start < data.len() {
        let line_end = memchr::memchr2(b'\n', b'\r', &data[line_start..])
            .map_or(data.len(), |i| line_start + i);
        let line = &data[line_start..line_end];
        if let Some(rest) = line.strip_prefix(b"data:") {
            let json_at = line_start + 5 + usize::from(rest.first() == Some(&b' '));
            let json = &data[json_at..line_end];
            if memchr::memmem::find(json, b"\"usage\"").is_some() {
                let mut scan = JsonScan::default();
                if let Some(close) = scan.feed(json) {
                    if let Some(ins) = cost_member(&scan.usage, price) {
                        cuts.push((json_at + close, ins));
                    }
                }
            }
        }
        line_start = line_end + 1;
    }
    if cuts.is_empty() {
        return data;
    }
    splice(data, cuts, pending)
}

fn rewrite_json(
    data: Bytes,
    scan: &mut JsonScan,
    price: &Price,
    pending: &mut VecDeque<Bytes>,
) -> Bytes {
    if scan.done {
        return data;
    }
    match scan.feed(&data) {
        Some(close) => match cost_member(&scan.usage, price) {
            Some(ins) => splice(data, vec![(close, ins)], pending),
            None => data,
        },
        None => data,
    }
}

/// The longest usage object kept aside for parsing.
const USAGE_CAP: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Expect {
    #[default]
    Nothing,
    /// After the key `"usage"` at depth 1.
    Colon,
    /// After `"usage":`.
    Value,
}

/// A resumable JSON scanner that finds the closing brace of the top-level `usage` object.
#[derive(Debug, Default)]
struct JsonScan {
    depth: u32,
    in_str: bool,
    esc: bool,
    capturing: bool,
    key: [u8; 5],
    key_len: usize,
    key_ok: bool,
    expect: Expect,
    in_usage: bool,
    /// The usage object's bytes (a copy, for parsing only).
    usage: Vec<u8>,
    /// The usage object was found (or given up on): nothing more to do.
    done: bool,
}

impl JsonScan {
    /// Feed the next bytes; returns the index in `data` of the usage object's closing brace.
    fn feed(&mut self, data: &[u8]) -> Option<usize> {
        if self.done {
            return None;
        }
        let mut usage_from = self.in_usage.then_some(0);
        for (i, &b) in data.iter().enumerate() {
            if self.in_str {
                if self.esc {
                    self.esc = false;
                    self.key_ok = false;
                } else if b == b'\\' {
                    self.esc = true;
                    self.key_ok = false;
                } else if b == b'"' {
                    self.in_str = false;
                    if self.capturing {
                        self.capturing = false;
                        if self.key_ok && self.key_len == 5 && &self.key == b"usage" {
                            self.expect = Expect::Colon;
                        }
                    }
                } else if self.capturing {
                    if self.key_len < self.key.len() {
                        self.key[self.key_len] = b;
                        self.key_len += 1;
                    } else {
                        self.key_ok = false;
                    }
                }
                continue;
            }
            match b {
                b'"' => {
                    self.in_str = true;
                    self.expect = Expect::Nothing;
                    if self.depth == 1 && !self.in_usage {
                        self.capturing = true;
                        self.key_len = 0;
                        self.key_ok = true;
                    }
                }
                b':' => {
                    self.expect = if self.expect == Expect::Colon {
                        Expect::Value
                    } else {
                        Expect::Nothing
                    };
                }
                b'{' | b'[' => {
                    if b == b'{' && self.expect == Expect::Value && self.depth == 1 {
                        self.in_usage = true;
                        usage_from = Some(i);
                    }
                    self.expect = Expect::Nothing;
                    self.depth += 1;
                }
                b'}' | b']' => {
                    self.expect = Expect::Nothing;
                    self.depth = self.depth.saturating_sub(1);
                    if self.in_usage && self.depth == 1 {
                        let from = usage_from.unwrap_or(0);
                        self.usage.extend_from_slice(&data[from..=i]);
                        self.in_usage = false;
                        self.done = true;
                        return (self.usage.len() <= USAGE_CAP).then_some(i);
                    }
                }
                b' ' | b'\t' | b'\n' | b'\r' => {}
                _ => self.expect = Expect::Nothing,
            }
        }
        if let Some(from) = usage_from {
            self.usage.extend_from_slice(&data[from..]);
            if self.usage.len() > USAGE_CAP {
                self.done = true;
                self.in_usage = false;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price() -> Price {
        Price {
            input: 150_000,
            output: 600_000,
            cached_input: Some(75_000),
            cache_write: None,
            per_image: None,
            per_character: None,
            per_second: None,
        }
    }

    fn run_json(parts: &[&str]) -> String {
        let mut scan = JsonScan::default();
        let mut pending = VecDeque::new();
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(&rewrite_json(
                Bytes::copy_from_slice(p.as_bytes()),
                &mut scan,
                &price(),
                &mut pending,
            ));
            while let Some(b) = pending.pop_front() {
                out.extend_from_slice(&b);
            }
        }
        String::from_utf8(out).unwrap()
    }

    const DOC: &str = r#"{"id":"x","x_groq":{"usage":{"prompt_tokens":1}},"choices":[{"message":{"content":"the \"usage\":{ key"}}],"usage":{"prompt_tokens":11,"completion_tokens":6,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4}},"system_fingerprint":"f"}"#;

    #[test]
    fn adds_cost_to_the_top_level_usage_only_split_anywhere() {
        let want = DOC.replace(
            r#""cached_tokens":4}}"#,
            r#""cached_tokens":4},"cost":0.00000495}"#,
        );
        assert_eq!(run_json(&[DOC]), want);
        for cut in 1..DOC.len() {
            assert_eq!(run_json(&[&DOC[..cut], &DOC[cut..]]), want, "cut at {cut}");
        }
        let v: serde_json::Value = serde_json::from_str(&want).unwrap();
        assert_eq!(v["usage"]["cost"].as_f64(), Some(0.00000495));
    }

    #[test]
    fn leaves_existing_costs_and_usage_null_alone() {
        let doc =
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2,"cost":0.5}}"#;
        assert_eq!(run_json(&[doc]), doc);
        let doc = r#"{"usage":null,"choices":[]}"#;
        assert_eq!(run_json(&[doc]), doc);
        // Anthropic-shaped usage (the /v1/messages ingress) is left alone.
        let doc = r#"{"type":"message","usage":{"input_tokens":5,"output_tokens":2}}"#;
        assert_eq!(run_json(&[doc]), doc);
    }

    #[test]
    fn sse_frames_without_usage_are_the_same_allocation() {
        let mut pending = VecDeque::new();
        let frame = Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
        );
        let out = rewrite_sse(frame.clone(), &price(), &mut pending);
        assert_eq!(out.as_ptr(), frame.as_ptr());
        assert_eq!(out.len(), frame.len());
        assert!(pending.is_empty());

        let frame = Bytes::from_static(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":6,\"total_tokens\":17,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\ndata: [DONE]\n\n",
        );
        let first = rewrite_sse(frame.clone(), &price(), &mut pending);
        assert_eq!(
            first.as_ptr(),
            frame.as_ptr(),
            "the prefix is a slice of the frame"
        );
        let mut all = first.to_vec();
        for b in pending.drain(..) {
            all.extend_from_slice(&b);
        }
        assert_eq!(
            String::from_utf8(all).unwrap(),
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":6,\"total_tokens\":17,\"prompt_tokens_details\":{\"cached_tokens\":4},\"cost\":0.00000495}}\n\ndata: [DONE]\n\n"
        );
    }
}
