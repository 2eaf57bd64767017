//! The scripted mock provider: an in-process [`MockProvider`] and a real HTTP server,
//! [`MockServer`], both driven by the same response generator.
//!
//! Behaviour is chosen by the **upstream model name**: `scenario` or `scenario?k=v&k=v`
//! (the convention of `reference/protocols.md` §8, so the same client scripts run against the
//! real gateway). Responses are in OpenAI's wire format for the request's
//! [`Api`]; stream bodies are generated lazily on tokio timers (paused-time
//! tests work), never buffered.
//!
//! # Scenarios
//!
//! | name | behaviour |
//! |---|---|
//! | `ok` | the answer `"Hello there!"`; usage 11 / 6 / 17, `cached_tokens: 4` |
//! | `tool` | one tool call `get_weather({"location":"Paris"})` (`finish_reason: tool_calls`) |
//! | `status` | answers status `code` (default 500) with an OpenAI-shaped error body; 529 answers Anthropic's `overloaded_error` body; 429 also carries `x-ratelimit-*` headers |
//! | `fail-then-ok` | the first `fails` (default 2) requests with this exact model string answer like `status` (default `code` 429), later ones like `ok`. The counter is per mock instance, keyed by the whole model string (add e.g. `&key=t1` to get a fresh counter) |
//! | `stall` | `phase=headers` (default): sleep `ms` before the head; `phase=first_token`: a 200 head, then nothing for `ms`, then the answer (non-stream: like `headers`); `phase=midstream`: `after` content chunks (default 1), a stall of `ms`, then the rest. `ms` defaults to 30000 |
//! | `cut` | a stream that ends after `after` content chunks (default 2): no finish chunk, no usage chunk, no `[DONE]`. With `abort=true` the body ends with an error instead of a clean end |
//! | `error-in-200` | stream: a 200 whose first event is `data: {"error":{..}}`, then the end (no `[DONE]`); non-stream: a 200 JSON body `{"error":{..}}` |
//! | `midstream-error` | stream: `after` content deltas (default 1), then an in-band `data: {"error":{..}}` event, then the end (no `[DONE]`) |
//! | `refuse` | no answer at all: in-process, an `UpstreamConnect` error; the server closes the connection without a response |
//! | `flood` | a broken upstream: stream: `after` content chunks (default 1), then a content event whose text runs on for `bytes` bytes (default 64 MiB) with no line break, then the end; non-stream: a JSON answer whose content is `bytes` long. Generated on the fly from one static 64 KiB buffer, never held |
//! | `err-429` | alias of `fail-then-ok?fails=2&code=429&retry_after=1` |
//! | `err-429-always` | alias of `status?code=429&retry_after=1` |
//! | `err-NNN` | alias of `status?code=NNN` |
//! | `slow` | alias of `stall?phase=headers&ms=5000` |
//! | anything else | behaves like `ok` (so a mock target can have any model name) |
//!
//! # Parameters (any scenario; unknown keys are ignored)
//!
//! | key | meaning |
//! |---|---|
//! | `chunks=N` | number of content chunks of a stream (default 3: `"Hello"`, `" there"`, `"!"`, repeated cyclically beyond 3). The non-stream answer is the same text |
//! | `delay_ms=D` | stream: D ms between chunks; non-stream: D ms before the head |
//! | `code=NNN` | status of `status` / `fail-then-ok` |
//! | `retry_after=S` | `retry-after: S` on error answers (sent verbatim) |
//! | `retry_after_ms=MS` | `retry-after-ms: MS` on error answers |
//! | `should_retry=true\|false` | `x-should-retry` on error answers |
//! | `fails=N` | `fail-then-ok`: how many failures first |
//! | `phase=headers\|first_token\|midstream`, `ms=M` | `stall` |
//! | `after=N` | `stall` midstream, `cut`, `midstream-error`: content chunks before the event |
//! | `abort=true` | `cut`: end with a body error |
//! | `prompt=P`, `completion=C`, `cached=K`, `reasoning=R` | usage numbers (defaults 11, 6 + R, 4, 0); `total = prompt + completion` |
//! | `dims=N` | embeddings: vector length (default: the request's `dimensions`, else 8) |
//! | `bytes=N` | `flood`: how many bytes of text |
//!
//! Streams honour the request: each chunk carries `"usage":null` and a final usage chunk
//! (`choices: []`) is sent only when `stream_options.include_usage` is true (in-process: when the
//! client asked, or [`ParsedRequest::upstream_include_usage`] is set); every chunk has the same
//! `id` and `created`; the first chunk carries `role`; a finished stream ends with
//! `data: [DONE]`. Answers are deterministic: the `id` is derived from the model string and the
//! request body, `created` is fixed.
//!
//! The rest of OpenAI's surface answers in its wire format: `/v1/moderations` (one unflagged
//! result per input), `/v1/images/generations` (`n` image URLs in `data`), `/v1/audio/speech`
//! (`audio/mpeg` bytes in `chunks` frames of 1 KiB, `delay_ms` apart), `/v1/audio/transcriptions`
//! and `/translations` (`{"text": "Hello there!", "usage": ...}`: `{"type": "duration",
//! "seconds": N}` for a `whisper*` model, N the upload's bytes / 16,000; else token usage).
//!
//! Embeddings are deterministic per input (`encoding_format: "base64"` gives base64 of the
//! little-endian `f32` vector); `/v1/completions` answers in the `text_completion` shape.
//!
//! ```
//! # async fn demo() -> std::io::Result<()> {
//! use tollgate::provider::mock::MockServer;
//! let server = MockServer::start().await?;
//! let base = server.base_url(); // http://127.0.0.1:PORT/v1
//! # let _ = base;
//! assert_eq!(server.log().request_count(), 0);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, watch};

use crate::body::{Body, BoxError};
use crate::error::GatewayError;
use crate::provider::{BoxFuture, Provider, UpstreamCall, connect_error, upstream_error};
use crate::request::{Api, ParsedRequest, parse_body};

/// The fixed `created` of every mock answer (2026-01-01T00:00:00Z).
pub(crate) const MOCK_CREATED: u64 = 1_767_225_600;

/// The scenario names the mock knows (listed by the server's `GET /v1/models`).
pub const SCENARIOS: [&str; 13] = [
    "ok",
    "tool",
    "status",
    "fail-then-ok",
    "stall",
    "cut",
    "error-in-200",
    "midstream-error",
    "refuse",
    "flood",
    "err-429",
    "err-429-always",
    "slow",
];

/// Content pieces of the `ok` answer; chunk `k` carries `PIECES[k % 3]`.
const PIECES: [&str; 3] = ["Hello", " there", "!"];

/// How many requests a [`MockLog`] keeps by default (counters are never capped).
pub(crate) const DEFAULT_RECORD_LIMIT: usize = 10_000;

// ---------------------------------------------------------------------------------------------
// Scenario grammar
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ok,
    Tool,
    Status,
    FailThenOk,
    Stall,
    Cut,
    ErrorIn200,
    MidstreamError,
    Refuse,
    Flood,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Headers,
    FirstToken,
    Midstream,
}

/// A parsed model name.
#[derive(Debug, Clone)]
struct Script {
    kind: Kind,
    chunks: u32,
    delay: Duration,
    code: StatusCode,
    retry_after: Option<HeaderValue>,
    retry_after_ms: Option<HeaderValue>,
    should_retry: Option<bool>,
    fails: u64,
    phase: Phase,
    ms: Duration,
    after: Option<u32>,
    abort: bool,
    prompt: u64,
    completion: Option<u64>,
    cached: u64,
    reasoning: u64,
    dims: Option<usize>,
    flood: u64,
}

impl Script {
    fn parse(model: &str) -> Script {
        let (name, query) = match model.split_once('?') {
            Some((n, q)) => (n, q),
            None => (model, ""),
        };
        let mut s = Script {
            kind: Kind::Ok,
            chunks: 3,
            delay: Duration::ZERO,
            code: StatusCode::INTERNAL_SERVER_ERROR,
            retry_after: None,
            retry_after_ms: None,
            should_retry: None,
            fails: 2,
            phase: Phase::Headers,
            ms: Duration::from_millis(30_000),
            after: None,
            abort: false,
            prompt: 11,
            completion: None,
            cached: 4,
            reasoning: 0,
            dims: None,
            flood: 64 << 20,
        };
        match name {
            "tool" => s.kind = Kind::Tool,
            "status" => s.kind = Kind::Status,
            "fail-then-ok" => {
                s.kind = Kind::FailThenOk;
                s.code = StatusCode::TOO_MANY_REQUESTS;
            }
            "stall" => s.kind = Kind::Stall,
            "cut" => s.kind = Kind::Cut,
            "error-in-200" => s.kind = Kind::ErrorIn200,
            "midstream-error" => s.kind = Kind::MidstreamError,
            "refuse" => s.kind = Kind::Refuse,
            "flood" => s.kind = Kind::Flood,
            "err-429" => {
                s.kind = Kind::FailThenOk;
                s.code = StatusCode::TOO_MANY_REQUESTS;
                s.retry_after = Some(HeaderValue::from_static("1"));
            }
            "err-429-always" => {
                s.kind = Kind::Status;
                s.code = StatusCode::TOO_MANY_REQUESTS;
                s.retry_after = Some(HeaderValue::from_static("1"));
            }
            "slow" => {
                s.kind = Kind::Stall;
                s.ms = Duration::from_millis(5_000);
            }
            other => {
                if let Some(code) = other
                    .strip_prefix("err-")
                    .and_then(|c| c.parse::<u16>().ok())
                    .and_then(|c| StatusCode::from_u16(c).ok())
                {
                    s.kind = Kind::Status;
                    s.code = code;
                }
            }
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let num = || v.parse::<u64>().ok();
            match k {
                "chunks" => {
                    if let Some(n) = num() {
                        s.chunks = u32::try_from(n).unwrap_or(u32::MAX).max(1);
                    }
                }
                "delay_ms" => s.delay = Duration::from_millis(num().unwrap_or(0)),
                "code" => {
                    if let Some(c) = v
                        .parse::<u16>()
                        .ok()
                        .and_then(|c| StatusCode::from_u16(c).ok())
                    {
                        s.code = c;
                    }
                }
                "retry_after" => s.retry_after = HeaderValue::from_str(v).ok(),
                "retry_after_ms" => s.retry_after_ms = HeaderValue::from_str(v).ok(),
                "should_retry" => s.should_retry = v.parse::<bool>().ok(),
                "fails" => s.fails = num().unwrap_or(s.fails),
                "phase" => {
                    s.phase = match v {
                        "first_token" => Phase::FirstToken,
                        "midstream" => Phase::Midstream,
                        _ => Phase::Headers,
                    }
                }
                "ms" => s.ms = Duration::from_millis(num().unwrap_or(0)),
                "after" => s.after = num().map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                "abort" => s.abort = matches!(v, "true" | "1" | ""),
                "prompt" => s.prompt = num().unwrap_or(s.prompt),
                "completion" => s.completion = num(),
                "cached" => s.cached = num().unwrap_or(s.cached),
                "reasoning" => s.reasoning = num().unwrap_or(0),
                "dims" => s.dims = num().and_then(|n| usize::try_from(n).ok()),
                "bytes" => s.flood = num().unwrap_or(s.flood),
                _ => {}
            }
        }
        s
    }

    fn usage_json(&self) -> String {
        let completion = self.completion.unwrap_or(6 + self.reasoning);
        format!(
            concat!(
                r#"{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{},"#,
                r#""prompt_tokens_details":{{"cached_tokens":{},"audio_tokens":0}},"#,
                r#""completion_tokens_details":{{"reasoning_tokens":{},"audio_tokens":0,"#,
                r#""accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}"#
            ),
            self.prompt,
            completion,
            self.prompt.saturating_add(completion),
            self.cached,
            self.reasoning
        )
    }

    /// The answer text of `n` content chunks.
    fn text(&self) -> String {
        (0..self.chunks as usize).map(|k| PIECES[k % 3]).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The log
// ---------------------------------------------------------------------------------------------

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: Method,
    /// Path and query (`/v1/chat/completions?api-version=..`).
    pub path: String,
    /// Request headers as received (in-process: the headers the adapter was handed).
    pub headers: HeaderMap,
    /// The body bytes (in-process: [`ParsedRequest::upstream_body`] for the upstream model).
    pub body: Bytes,
    /// The body's `model`, when it parsed.
    pub model: Option<Arc<str>>,
}

impl RecordedRequest {
    /// The body parsed as JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Default)]
struct LogState {
    requests: Vec<RecordedRequest>,
    per_model: HashMap<Arc<str>, u64>,
}

struct LogInner {
    state: Mutex<LogState>,
    limit: usize,
    total: AtomicU64,
    started: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    changed: Notify,
}

/// What a mock received and how its streams ended. Cheap to clone (shared).
#[derive(Clone)]
pub struct MockLog {
    inner: Arc<LogInner>,
}

impl Default for MockLog {
    fn default() -> Self {
        MockLog::with_limit(DEFAULT_RECORD_LIMIT)
    }
}

impl std::fmt::Debug for MockLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockLog")
            .field("requests", &self.request_count())
            .field("streams_started", &self.streams_started())
            .field("streams_completed", &self.streams_completed())
            .field("streams_cancelled", &self.streams_cancelled())
            .finish()
    }
}

impl MockLog {
    /// A log that keeps at most `limit` requests (counters keep counting past it).
    pub fn with_limit(limit: usize) -> MockLog {
        MockLog {
            inner: Arc::new(LogInner {
                state: Mutex::new(LogState::default()),
                limit,
                total: AtomicU64::new(0),
                started: AtomicU64::new(0),
                completed: AtomicU64::new(0),
                cancelled: AtomicU64::new(0),
                changed: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, req: RecordedRequest) {
        {
            let mut st = self.lock();
            if let Some(m) = &req.model {
                match st.per_model.get_mut(m) {
                    Some(n) => *n += 1,
                    None => {
                        st.per_model.insert(m.clone(), 1);
                    }
                }
            }
            if st.requests.len() < self.inner.limit {
                st.requests.push(req);
            }
        }
        self.inner.total.fetch_add(1, Ordering::Relaxed);
        self.inner.changed.notify_waiters();
    }

    /// Every recorded request, oldest first (at most the log's limit).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The most recent recorded request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.lock().requests.last().cloned()
    }

    /// How many requests arrived (including ones past the record limit).
    pub fn request_count(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }

    /// How many requests named exactly this model string (`"fail-then-ok?fails=2"`).
    pub fn count(&self, model: &str) -> u64 {
        self.lock().per_model.get(model).copied().unwrap_or(0)
    }

    /// How many requests used this scenario name, whatever their parameters.
    pub fn scenario_count(&self, scenario: &str) -> u64 {
        self.lock()
            .per_model
            .iter()
            .filter(|(m, _)| m.split('?').next() == Some(scenario))
            .map(|(_, n)| *n)
            .sum()
    }

    /// Streaming responses begun.
    pub fn streams_started(&self) -> u64 {
        self.inner.started.load(Ordering::Relaxed)
    }

    /// Streaming responses whose body reached the end of its script (including scripted cuts
    /// and errors).
    pub fn streams_completed(&self) -> u64 {
        self.inner.completed.load(Ordering::Relaxed)
    }

    /// Streaming responses whose body was dropped before its end: the client (or the gateway)
    /// went away and the mock stopped generating.
    pub fn streams_cancelled(&self) -> u64 {
        self.inner.cancelled.load(Ordering::Relaxed)
    }

    /// Forget recorded requests and reset every counter.
    pub fn clear(&self) {
        {
            let mut st = self.lock();
            st.requests.clear();
            st.per_model.clear();
        }
        for c in [
            &self.inner.total,
            &self.inner.started,
            &self.inner.completed,
            &self.inner.cancelled,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.inner.changed.notify_waiters();
    }

    /// Wait until `pred` holds, at most `within`; returns whether it held.
    /// Re-checked whenever the log changes (a request, a stream end).
    pub async fn wait_until(&self, within: Duration, pred: impl Fn(&MockLog) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(self);
            }
        }
    }

    fn stream_started(&self) -> StreamGuard {
        self.inner.started.fetch_add(1, Ordering::Relaxed);
        self.inner.changed.notify_waiters();
        StreamGuard {
            log: Some(self.clone()),
        }
    }
}

/// Counts a stream as completed on `finish`, or as cancelled when dropped unfinished.
struct StreamGuard {
    log: Option<MockLog>,
}

impl StreamGuard {
    fn finish(&mut self) {
        if let Some(log) = self.log.take() {
            log.inner.completed.fetch_add(1, Ordering::Relaxed);
            log.inner.changed.notify_waiters();
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.inner.cancelled.fetch_add(1, Ordering::Relaxed);
            log.inner.changed.notify_waiters();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The lazily generated body
// ---------------------------------------------------------------------------------------------

enum Op {
    /// Content chunks `from..to`.
    Content {
        from: u32,
        to: u32,
    },
    /// The three tool-call chunks.
    Tool,
    Finish(&'static str),
    Usage,
    Done,
    Wait(Duration),
    Raw(Bytes),
    /// This many more bytes of [`FLOOD`] text.
    Flood(u64),
    Fail(&'static str),
}

/// The text of `flood`, handed out in slices (never copied).
static FLOOD: [u8; 64 << 10] = [b'x'; 64 << 10];

enum Step {
    Data(Bytes),
    Wait(Duration),
    Fail(&'static str),
}

/// Builds the chunks of one completion.
struct Chunker {
    api: Api,
    /// `data: {"id":..,"object":..,"created":..,"model":..,"choices":[`
    prefix: String,
    /// `]` + maybe `,"usage":null` + `}\n\n`
    suffix: &'static str,
    /// The usage chunk, when the client asked for one.
    usage: Option<Bytes>,
}

impl Chunker {
    fn new(api: Api, id: &str, model_json: &str, include_usage: bool, usage_json: &str) -> Self {
        let object = match api {
            Api::Completions => "text_completion",
            _ => "chat.completion.chunk",
        };
        let head = format!(
            r#"{{"id":"{id}","object":"{object}","created":{MOCK_CREATED},"model":{model_json},"choices":["#
        );
        Chunker {
            api,
            prefix: format!("data: {head}"),
            suffix: if include_usage {
                "],\"usage\":null}\n\n"
            } else {
                "]}\n\n"
            },
            usage: include_usage
                .then(|| Bytes::from(format!("data: {head}],\"usage\":{usage_json}}}\n\n"))),
        }
    }

    fn chunk(&self, choice: &str) -> Bytes {
        let mut s = String::with_capacity(self.prefix.len() + choice.len() + self.suffix.len());
        s.push_str(&self.prefix);
        s.push_str(choice);
        s.push_str(self.suffix);
        Bytes::from(s)
    }

    fn content(&self, k: u32) -> Bytes {
        let piece = PIECES[k as usize % 3];
        match (self.api, k) {
            (Api::Completions, _) => self.chunk(&format!(
                r#"{{"text":"{piece}","index":0,"logprobs":null,"finish_reason":null}}"#
            )),
            (_, 0) => self.chunk(&format!(
                r#"{{"index":0,"delta":{{"role":"assistant","content":"{piece}"}},"logprobs":null,"finish_reason":null}}"#
            )),
            _ => self.chunk(&format!(
                r#"{{"index":0,"delta":{{"content":"{piece}"}},"logprobs":null,"finish_reason":null}}"#
            )),
        }
    }

    fn tool(&self, k: u32) -> Bytes {
        let delta = match k {
            0 => {
                r#"{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_mock_1","type":"function","function":{"name":"get_weather","arguments":""}}]}"#
            }
            1 => r#"{"tool_calls":[{"index":0,"function":{"arguments":"{\"loca"}}]}"#,
            _ => r#"{"tool_calls":[{"index":0,"function":{"arguments":"tion\":\"Paris\"}"}}]}"#,
        };
        self.chunk(&format!(
            r#"{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":null}}"#
        ))
    }

    fn finish(&self, reason: &str) -> Bytes {
        match self.api {
            Api::Completions => self.chunk(&format!(
                r#"{{"text":"","index":0,"logprobs":null,"finish_reason":"{reason}"}}"#
            )),
            _ => self.chunk(&format!(
                r#"{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{reason}"}}"#
            )),
        }
    }
}

/// Generates a body step by step from a short list of operations.
struct Gen {
    chunker: Option<Chunker>,
    ops: std::vec::IntoIter<Op>,
    current: Option<Op>,
    sub: u32,
    delay: Duration,
    waited: bool,
}

impl Gen {
    fn new(chunker: Option<Chunker>, ops: Vec<Op>, delay: Duration) -> Gen {
        Gen {
            chunker,
            ops: ops.into_iter(),
            current: None,
            sub: 0,
            delay,
            waited: false,
        }
    }

    /// The inter-chunk delay before chunk `k` of a run (none before the first).
    fn pace(&mut self, k: u32) -> Option<Step> {
        if k > 0 && !self.delay.is_zero() && !self.waited {
            self.waited = true;
            return Some(Step::Wait(self.delay));
        }
        self.waited = false;
        None
    }

    fn next_step(&mut self) -> Option<Step> {
        loop {
            let op = match self.current.take() {
                Some(op) => op,
                None => {
                    self.sub = 0;
                    self.ops.next()?
                }
            };
            let chunker = self.chunker.as_ref();
            match op {
                Op::Content { from, to } => {
                    let k = from.saturating_add(self.sub);
                    if k >= to {
                        continue;
                    }
                    self.current = Some(op);
                    if let Some(wait) = self.pace(k) {
                        return Some(wait);
                    }
                    self.sub += 1;
                    if let Some(c) = self.chunker.as_ref() {
                        return Some(Step::Data(c.content(k)));
                    }
                }
                Op::Tool => {
                    let k = self.sub;
                    if k >= 3 {
                        continue;
                    }
                    self.current = Some(op);
                    if let Some(wait) = self.pace(k) {
                        return Some(wait);
                    }
                    self.sub += 1;
                    if let Some(c) = self.chunker.as_ref() {
                        return Some(Step::Data(c.tool(k)));
                    }
                }
                Op::Finish(reason) => {
                    if let Some(c) = chunker {
                        return Some(Step::Data(c.finish(reason)));
                    }
                }
                Op::Usage => {
                    if let Some(u) = chunker.and_then(|c| c.usage.clone()) {
                        return Some(Step::Data(u));
                    }
                }
                Op::Done => return Some(Step::Data(Bytes::from_static(b"data: [DONE]\n\n"))),
                Op::Wait(d) => return Some(Step::Wait(d)),
                Op::Raw(b) => return Some(Step::Data(b)),
                Op::Flood(left) => {
                    if left == 0 {
                        continue;
                    }
                    let n = left.min(FLOOD.len() as u64) as usize;
                    self.current = Some(Op::Flood(left - n as u64));
                    return Some(Step::Data(Bytes::from_static(&FLOOD[..n])));
                }
                Op::Fail(m) => return Some(Step::Fail(m)),
            }
        }
    }
}

/// The mock's response body: steps generated on demand, waits on tokio timers.
struct MockBody {
    script_gen: Gen,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    guard: Option<StreamGuard>,
    done: bool,
}

impl MockBody {
    fn end(&mut self) {
        self.done = true;
        if let Some(mut g) = self.guard.take() {
            g.finish();
        }
    }
}

impl http_body::Body for MockBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            }
            match this.script_gen.next_step() {
                Some(Step::Wait(d)) => this.sleep = Some(Box::pin(tokio::time::sleep(d))),
                Some(Step::Data(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Some(Step::Fail(m)) => {
                    this.end();
                    return Poll::Ready(Some(Err(m.into())));
                }
                None => {
                    this.end();
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

// ---------------------------------------------------------------------------------------------
// The response generator (shared by the provider and the server)
// ---------------------------------------------------------------------------------------------

/// One request, as the generator needs it.
struct MockCall {
    api: Api,
    model: Arc<str>,
    stream: bool,
    include_usage: bool,
    base64: bool,
    body: Bytes,
}

/// The generator's answer: a response, or "close the connection without one".
enum Answer {
    Response(Response<Body>),
    Refuse,
}

struct Engine {
    log: MockLog,
    fails: Mutex<HashMap<Arc<str>, u64>>,
}

fn fnv(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn json_response(status: StatusCode, body: impl Into<Body>, id: u64) -> Response<Body> {
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    insert_request_id(h, id);
    res
}

fn insert_request_id(h: &mut HeaderMap, id: u64) {
    if let Ok(v) = HeaderValue::try_from(format!("req_mock_{id:016x}")) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
}

impl Engine {
    fn new(log: MockLog) -> Engine {
        Engine {
            log,
            fails: Mutex::new(HashMap::new()),
        }
    }

    /// Count one more request for `fail-then-ok`; true while it should still fail.
    fn should_fail(&self, model: &Arc<str>, fails: u64) -> bool {
        let mut map = self
            .fails
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(model.clone()).or_insert(0);
        *n += 1;
        *n <= fails
    }

    /// THE response generator: every mock answer, in-process or over HTTP, comes from here.
    async fn respond(&self, call: MockCall) -> Answer {
        let script = Script::parse(&call.model);
        let hash = fnv(&call.body, fnv(call.model.as_bytes(), 0));
        match script.kind {
            Kind::Refuse => return Answer::Refuse,
            Kind::Status => return Answer::Response(status_response(&script, hash)),
            Kind::FailThenOk if self.should_fail(&call.model, script.fails) => {
                return Answer::Response(status_response(&script, hash));
            }
            Kind::Stall
                if script.phase == Phase::Headers
                    || (script.phase == Phase::FirstToken && !call.stream) =>
            {
                tokio::time::sleep(script.ms).await;
            }
            _ => {}
        }
        // Speech: `delay_ms` is the gap between audio chunks, not a wait before the head.
        if !call.stream && call.api != Api::AudioSpeech && !script.delay.is_zero() {
            tokio::time::sleep(script.delay).await;
        }
        let res = match call.api {
            Api::Embeddings => embeddings_response(&call, &script, hash),
            api if api.openai_only() => surface::response(&call, &script, hash),
            _ if call.stream => self.stream_response(&call, &script, hash),
            _ if script.kind == Kind::Flood => flood_response(&call, &script, hash),
            _ => complete_response(&call, &script, hash),
        };
        Answer::Response(res)
    }

    fn stream_response(&self, call: &MockCall, script: &Script, hash: u64) -> Response<Body> {
        let prefix = match call.api {
            Api::Completions => "cmpl",
            _ => "chatcmpl",
        };
        let id = format!("{prefix}-mock{hash:016x}");
        let chunker = Chunker::new(
            call.api,
            &id,
            &json_string(&call.model),
            call.include_usage,
            &script.usage_json(),
        );
        let n = script.chunks;
        let finish_ok = |ops: &mut Vec<Op>, reason: &'static str| {
            ops.push(Op::Finish(reason));
            ops.push(Op::Usage);
            ops.push(Op::Done);
        };
        let mut ops = Vec::with_capacity(8);
        match script.kind {
            Kind::Tool if call.api == Api::ChatCompletions => {
                ops.push(Op::Tool);
                finish_ok(&mut ops, "tool_calls");
            }
            Kind::Stall if script.phase == Phase::FirstToken => {
                ops.push(Op::Wait(script.ms));
                ops.push(Op::Content { from: 0, to: n });
                finish_ok(&mut ops, "stop");
            }
            Kind::Stall if script.phase == Phase::Midstream => {
                let after = script.after.unwrap_or(1).min(n);
                ops.push(Op::Content { from: 0, to: after });
                ops.push(Op::Wait(script.ms));
                ops.push(Op::Content { from: after, to: n });
                finish_ok(&mut ops, "stop");
            }
            Kind::Cut => {
                ops.push(Op::Content {
                    from: 0,
                    to: script.after.unwrap_or(2),
                });
                if script.abort {
                    ops.push(Op::Fail("mock: upstream connection aborted mid-stream"));
                }
            }
            Kind::ErrorIn200 => ops.push(Op::Raw(error_event(
                "mock: upstream error inside a 200 stream",
                "server_error",
                "error_in_200",
            ))),
            Kind::Flood => {
                ops.push(Op::Content {
                    from: 0,
                    to: script.after.unwrap_or(1),
                });
                ops.push(Op::Raw(Bytes::from(format!(
                    r#"data: {{"id":{},"object":"chat.completion.chunk","created":{MOCK_CREATED},"choices":[{{"index":0,"delta":{{"content":""#,
                    json_string(&id)
                ))));
                ops.push(Op::Flood(script.flood));
            }
            Kind::MidstreamError => {
                ops.push(Op::Content {
                    from: 0,
                    to: script.after.unwrap_or(1),
                });
                ops.push(Op::Raw(error_event(
                    "mock: upstream failed mid-stream",
                    "server_error",
                    "midstream_error",
                )));
            }
            _ => {
                ops.push(Op::Content { from: 0, to: n });
                finish_ok(&mut ops, "stop");
            }
        }
        let body = MockBody {
            script_gen: Gen::new(Some(chunker), ops, script.delay),
            sleep: None,
            guard: Some(self.log.stream_started()),
            done: false,
        };
        let mut res = Response::new(Body::new(body));
        let h = res.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        insert_request_id(h, hash);
        res
    }
}

fn error_object(message: &str, kind: &str, code: Option<&str>) -> serde_json::Value {
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn error_event(message: &str, kind: &str, code: &str) -> Bytes {
    let v = error_object(message, kind, Some(code));
    Bytes::from(format!("data: {v}\n\n"))
}

fn status_response(script: &Script, hash: u64) -> Response<Body> {
    let code = script.code;
    let body = if code.as_u16() == 529 {
        serde_json::json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    } else {
        let (kind, ecode, message) = match code.as_u16() {
            400 => ("invalid_request_error", None, "mock: invalid request"),
            401 => (
                "invalid_request_error",
                Some("invalid_api_key"),
                "Incorrect API key provided (mock)",
            ),
            403 => ("permission_error", None, "mock: permission denied"),
            404 => (
                "invalid_request_error",
                Some("model_not_found"),
                "The model does not exist (mock)",
            ),
            429 => (
                "requests",
                Some("rate_limit_exceeded"),
                "Rate limit reached for requests (mock)",
            ),
            500 => (
                "server_error",
                None,
                "The server had an error while processing your request (mock)",
            ),
            503 => (
                "service_unavailable_error",
                Some("server_is_overloaded"),
                "The server is overloaded (mock)",
            ),
            _ => ("api_error", None, "mock: upstream error"),
        };
        error_object(message, kind, ecode)
    };
    let status = if code.is_success() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        code
    };
    let mut res = json_response(status, body.to_string(), hash);
    let h = res.headers_mut();
    if let Some(v) = &script.retry_after {
        h.insert(RETRY_AFTER, v.clone());
    }
    if let Some(v) = &script.retry_after_ms {
        h.insert(HeaderName::from_static("retry-after-ms"), v.clone());
    }
    if let Some(b) = script.should_retry {
        h.insert(
            HeaderName::from_static("x-should-retry"),
            HeaderValue::from_static(if b { "true" } else { "false" }),
        );
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        for (k, v) in [
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
    }
    res
}

/// A non-streaming chat or text completion.
fn complete_response(call: &MockCall, script: &Script, hash: u64) -> Response<Body> {
    let model = json_string(&call.model);
    let usage = script.usage_json();
    let body = match (call.api, script.kind) {
        (_, Kind::ErrorIn200) => error_object(
            "mock: upstream error inside a 200 response",
            "server_error",
            Some("error_in_200"),
        )
        .to_string(),
        (Api::Completions, _) => format!(
            concat!(
                r#"{{"id":"cmpl-mock{:016x}","object":"text_completion","created":{},"model":{},"#,
                r#""choices":[{{"text":"{}","index":0,"logprobs":null,"finish_reason":"stop"}}],"usage":{}}}"#
            ),
            hash,
            MOCK_CREATED,
            model,
            script.text(),
            usage
        ),
        (_, Kind::Tool) => format!(
            concat!(
                r#"{{"id":"chatcmpl-mock{:016x}","object":"chat.completion","created":{},"model":{},"#,
                r#""choices":[{{"index":0,"message":{{"role":"assistant","content":null,"refusal":null,"annotations":[],"#,
                r#""tool_calls":[{{"id":"call_mock_1","type":"function","function":{{"name":"get_weather","arguments":"{{\"location\":\"Paris\"}}"}}}}]}},"#,
                r#""logprobs":null,"finish_reason":"tool_calls"}}],"usage":{},"service_tier":"default"}}"#
            ),
            hash, MOCK_CREATED, model, usage
        ),
        _ => format!(
            concat!(
                r#"{{"id":"chatcmpl-mock{:016x}","object":"chat.completion","created":{},"model":{},"#,
                r#""choices":[{{"index":0,"message":{{"role":"assistant","content":"{}","refusal":null,"annotations":[]}},"#,
                r#""logprobs":null,"finish_reason":"stop"}}],"usage":{},"service_tier":"default"}}"#
            ),
            hash,
            MOCK_CREATED,
            model,
            script.text(),
            usage
        ),
    };
    if script.kind == Kind::Stall && script.phase == Phase::Midstream {
        // Head and half the body, a stall, then the rest.
        let bytes = Bytes::from(body);
        let half = bytes.len() / 2;
        let ops = vec![
            Op::Raw(bytes.slice(..half)),
            Op::Wait(script.ms),
            Op::Raw(bytes.slice(half..)),
        ];
        let body = MockBody {
            script_gen: Gen::new(None, ops, Duration::ZERO),
            sleep: None,
            guard: None,
            done: false,
        };
        return json_response(StatusCode::OK, Body::new(body), hash);
    }
    json_response(StatusCode::OK, body, hash)
}

/// `flood`, non-streaming: a chat completion whose content is `script.flood` bytes long,
/// generated as it is read.
fn flood_response(call: &MockCall, script: &Script, hash: u64) -> Response<Body> {
    let head = format!(
        concat!(
            r#"{{"id":"chatcmpl-mock{:016x}","object":"chat.completion","created":{},"model":{},"#,
            r#""choices":[{{"index":0,"message":{{"role":"assistant","content":""#
        ),
        hash,
        MOCK_CREATED,
        json_string(&call.model)
    );
    let tail = format!(
        r#""}},"finish_reason":"stop"}}],"usage":{}}}"#,
        script.usage_json()
    );
    let ops = vec![
        Op::Raw(Bytes::from(head)),
        Op::Flood(script.flood),
        Op::Raw(Bytes::from(tail)),
    ];
    let body = MockBody {
        script_gen: Gen::new(None, ops, Duration::ZERO),
        sleep: None,
        guard: None,
        done: false,
    };
    json_response(StatusCode::OK, Body::new(body), hash)
}

/// The deterministic embedding of one input: components are multiples of 1/128 in [-1, 1).
pub fn mock_embedding(input: &[u8], dims: usize) -> Vec<f32> {
    let h = fnv(input, 0);
    (0..dims as u64)
        .map(|j| {
            let x = fnv(&j.to_le_bytes(), h);
            ((x >> 24) & 0xff) as f32 / 128.0 - 1.0
        })
        .collect()
}

fn embeddings_response(call: &MockCall, script: &Script, hash: u64) -> Response<Body> {
    let v: serde_json::Value = serde_json::from_slice(&call.body).unwrap_or_default();
    let inputs: Vec<String> = match v.get("input") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) if a.iter().all(|x| x.is_number()) => {
            vec![serde_json::Value::Array(a.clone()).to_string()]
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(other) => vec![other.to_string()],
        None => Vec::new(),
    };
    let dims = script
        .dims
        .or_else(|| {
            v.get("dimensions")
                .and_then(serde_json::Value::as_u64)
                .and_then(|d| usize::try_from(d).ok())
        })
        .unwrap_or(8)
        .min(65_536);
    let mut prompt_tokens = 0u64;
    let data: Vec<serde_json::Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            prompt_tokens += (text.len() as u64).div_ceil(4).max(1);
            let vec = mock_embedding(text.as_bytes(), dims);
            let embedding = if call.base64 {
                let mut raw = Vec::with_capacity(vec.len() * 4);
                for x in &vec {
                    raw.extend_from_slice(&x.to_le_bytes());
                }
                serde_json::Value::from(base64::engine::general_purpose::STANDARD.encode(raw))
            } else {
                serde_json::Value::from(vec)
            };
            serde_json::json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let body = serde_json::json!({
        "object": "list",
        "data": data,
        "model": &*call.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    json_response(StatusCode::OK, body.to_string(), hash)
}

/// Answers of the rest of OpenAI's surface, in its wire format: moderations, images, speech
/// (audio bytes in `chunks` frames, `delay_ms` apart), transcriptions and translations.
mod surface {
    use super::*;

    /// The bytes of the mock's audio: an MP3-like stream, deterministic per request.
    pub(super) fn audio_chunk(i: u32, hash: u64) -> Bytes {
        let mut out = Vec::with_capacity(1024);
        if i == 0 {
            out.extend_from_slice(b"ID3\x04\x00\x00\x00\x00\x00\x00");
        }
        let mut x = hash ^ u64::from(i);
        while out.len() < 1024 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(1024);
        Bytes::from(out)
    }

    pub(super) fn response(call: &MockCall, script: &Script, hash: u64) -> Response<Body> {
        let v: serde_json::Value = if call.api.is_multipart() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&call.body).unwrap_or_default()
        };
        let model = &*call.model;
        let body = match call.api {
            Api::Moderations => {
                let n = match v.get("input") {
                    Some(serde_json::Value::Array(a)) => a.len(),
                    _ => 1,
                };
                let result = serde_json::json!({
                    "flagged": false,
                    "categories": {"harassment": false, "hate": false, "self-harm": false,
                        "sexual": false, "violence": false},
                    "category_scores": {"harassment": 0.0001, "hate": 0.0001,
                        "self-harm": 0.0001, "sexual": 0.0001, "violence": 0.0001},
                });
                serde_json::json!({
                    "id": format!("modr-mock{hash:016x}"),
                    "model": model,
                    "results": vec![result; n],
                })
            }
            Api::ImageGenerations => {
                let n = v
                    .get("n")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(1)
                    .min(10);
                let data: Vec<_> = (0..n)
                    .map(|i| serde_json::json!({"url": format!("https://mock.invalid/{hash:016x}-{i}.png")}))
                    .collect();
                serde_json::json!({"created": MOCK_CREATED, "data": data})
            }
            Api::AudioSpeech => return speech(script, hash),
            _ => {
                // 16,000 bytes a second: a 128 kbit/s MP3.
                let seconds = (call.body.len() as u64).div_ceil(16_000);
                let usage = if model.starts_with("whisper") {
                    serde_json::json!({"type": "duration", "seconds": seconds})
                } else {
                    serde_json::json!({"type": "tokens", "input_tokens": script.prompt,
                        "output_tokens": 3, "total_tokens": script.prompt + 3})
                };
                serde_json::json!({"text": "Hello there!", "usage": usage})
            }
        };
        json_response(StatusCode::OK, body.to_string(), hash)
    }

    /// `chunks` frames of audio, `delay_ms` apart, generated as they are sent.
    fn speech(script: &Script, hash: u64) -> Response<Body> {
        let (chunks, delay) = (script.chunks, script.delay);
        let frames = futures_util::stream::unfold(0u32, move |i| async move {
            if i >= chunks {
                return None;
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<_, BoxError>(Frame::data(audio_chunk(i, hash))), i + 1))
        });
        let mut res = Response::new(Body::new(http_body_util::StreamBody::new(frames)));
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("audio/mpeg"));
        insert_request_id(h, hash);
        res
    }
}

// ---------------------------------------------------------------------------------------------
// In-process provider
// ---------------------------------------------------------------------------------------------

/// The scripted mock as an in-process [`Provider`] (kind `"mock"`).
///
/// A non-2xx scripted answer becomes `Err` through [`upstream_error`], exactly as a real
/// adapter's would; `refuse` becomes an `UpstreamConnect` error.
pub struct MockProvider {
    name: Arc<str>,
    engine: Arc<Engine>,
}

impl std::fmt::Debug for MockProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockProvider")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl MockProvider {
    /// A mock provider called `name`, with a fresh [`MockLog`].
    pub fn new(name: impl Into<Arc<str>>) -> MockProvider {
        MockProvider::with_log(name, MockLog::default())
    }

    /// A mock provider that records into `log` (shared with other mocks or a test).
    pub fn with_log(name: impl Into<Arc<str>>, log: MockLog) -> MockProvider {
        MockProvider {
            name: name.into(),
            engine: Arc::new(Engine::new(log)),
        }
    }

    /// What this provider received and how its streams ended.
    pub fn log(&self) -> &MockLog {
        &self.engine.log
    }
}

impl Provider for MockProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn serves_openai_surface(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "mock"
    }

    fn call(&self, call: UpstreamCall) -> BoxFuture<Result<Response<Body>, GatewayError>> {
        let engine = self.engine.clone();
        let name = self.name.clone();
        Box::pin(async move {
            let UpstreamCall {
                parsed,
                upstream_model,
                headers,
                ..
            } = call;
            let body = parsed.upstream_body(&upstream_model)?;
            engine.log.record(RecordedRequest {
                method: Method::POST,
                path: format!("/v1{}", parsed.api.openai_path()),
                headers,
                body: body.clone(),
                model: Some(upstream_model.clone()),
            });
            let mock_call = MockCall {
                api: parsed.api,
                model: upstream_model,
                stream: parsed.stream,
                include_usage: parsed.stream
                    && (parsed.wants_usage || parsed.upstream_include_usage),
                base64: parsed.base64_embeddings,
                body,
            };
            match engine.respond(mock_call).await {
                Answer::Refuse => Err(connect_error(&name, "connection refused (mock)")),
                Answer::Response(res) if res.status().is_success() => Ok(res),
                Answer::Response(res) => {
                    let (parts, body) = res.into_parts();
                    let bytes = body
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    Err(upstream_error(parts.status, &parts.headers, &bytes, &name))
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP server
// ---------------------------------------------------------------------------------------------

/// The error a server connection ends with when a scenario refuses to answer.
#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock scenario `refuse`: connection closed without a response")
    }
}

impl std::error::Error for Refused {}

/// The scripted mock as a real HTTP/1.1 server on `127.0.0.1:0`, speaking OpenAI's wire format
/// at `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and `/v1/models`.
///
/// Every request is recorded in its [`MockLog`]. The server shuts down when dropped.
pub struct MockServer {
    addr: SocketAddr,
    engine: Arc<Engine>,
    _shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// Bind `127.0.0.1:0` and serve with a fresh [`MockLog`].
    pub async fn start() -> std::io::Result<MockServer> {
        MockServer::start_with_log(MockLog::default()).await
    }

    /// Bind `127.0.0.1:0` and serve, recording into `log`.
    pub async fn start_with_log(log: MockLog) -> std::io::Result<MockServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let engine = Arc::new(Engine::new(log));
        let (tx, rx) = watch::channel(());
        tokio::spawn(accept_loop(listener, engine.clone(), rx));
        Ok(MockServer {
            addr,
            engine,
            _shutdown: tx,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`: the base URL to give an OpenAI-compatible client.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// What the server received and how its streams ended.
    pub fn log(&self) -> &MockLog {
        &self.engine.log
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    mut shutdown: watch::Receiver<()>,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "mock server accept failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let engine = engine.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(engine.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "mock server connection ended");
                    }
                }
                _ = shutdown.changed() => {}
            }
        });
    }
}

fn plain_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        error_object(message, "invalid_request_error", None).to_string(),
        0,
    )
}

fn model_json(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "model", "created": MOCK_CREATED, "owned_by": "tollgate-mock"})
}

async fn handle(engine: Arc<Engine>, req: Request<Incoming>) -> Result<Response<Body>, Refused> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| path.clone(), |p| p.as_str().to_owned());
    let bytes = match Limited::new(body, 32 << 20).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return Ok(plain_error(
                StatusCode::BAD_REQUEST,
                &format!("mock: could not read the body: {e}"),
            ));
        }
    };
    let api = Api::from_path(&path);
    let parsed = match api {
        Some(api) if parts.method == Method::POST => Some(parse_body(api, bytes.clone())),
        _ => None,
    };
    engine.log.record(RecordedRequest {
        method: parts.method.clone(),
        path: path_and_query,
        headers: parts.headers,
        body: bytes.clone(),
        model: parsed
            .as_ref()
            .and_then(|p| p.as_ref().ok())
            .map(|p| p.model.clone()),
    });
    let parsed: ParsedRequest = match (parsed, parts.method == Method::GET) {
        (Some(Ok(p)), _) => p,
        (Some(Err(e)), _) => {
            let status = e.status();
            return Ok(json_response(status, e.to_json().to_string(), 0));
        }
        (None, true) if path.trim_end_matches('/') == "/v1/models" => {
            let data: Vec<_> = SCENARIOS.iter().map(|s| model_json(s)).collect();
            let body = serde_json::json!({"object": "list", "data": data});
            return Ok(json_response(StatusCode::OK, body.to_string(), 0));
        }
        (None, true) if path.starts_with("/v1/models/") => {
            let id = &path["/v1/models/".len()..];
            return Ok(json_response(StatusCode::OK, model_json(id).to_string(), 0));
        }
        (None, _) if api.is_some() => {
            let mut res = plain_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("mock: {} is not allowed on {path}", parts.method),
            );
            res.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            return Ok(res);
        }
        (None, _) => {
            return Ok(plain_error(
                StatusCode::NOT_FOUND,
                &format!("mock: no endpoint at {path}"),
            ));
        }
    };
    let call = MockCall {
        api: parsed.api,
        model: parsed.model.clone(),
        stream: parsed.stream,
        include_usage: parsed.stream && parsed.wants_usage,
        base64: parsed.base64_embeddings,
        body: bytes,
    };
    match engine.respond(call).await {
        Answer::Response(res) => Ok(res),
        Answer::Refuse => Err(Refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_body;

    fn call_for(api: Api, model: &str, body: &str) -> UpstreamCall {
        let parsed = parse_body(api, Bytes::from(body.to_owned())).unwrap();
        UpstreamCall {
            parsed,
            upstream_model: Arc::from(model),
            headers: HeaderMap::new(),
            connect_timeout: None,
            limits: Default::default(),
        }
    }

    fn chat(model: &str, stream: bool, usage: bool) -> UpstreamCall {
        let mut body =
            String::from(r#"{"model":"alias","messages":[{"role":"user","content":"hi"}]"#);
        if stream {
            body.push_str(r#","stream":true"#);
        }
        if usage {
            body.push_str(r#","stream_options":{"include_usage":true}"#);
        }
        body.push('}');
        call_for(Api::ChatCompletions, model, &body)
    }

    async fn body_of(res: Response<Body>) -> Bytes {
        res.into_body().collect().await.unwrap().to_bytes()
    }

    /// Split an SSE body into its `data:` payloads.
    fn events(bytes: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(
            text.is_empty() || text.ends_with("\n\n"),
            "unterminated: {text}"
        );
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }

    fn json(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn scenario_grammar() {
        let s = Script::parse("stall?phase=midstream&ms=250&after=2&chunks=5&delay_ms=7&x=y");
        assert_eq!(s.kind, Kind::Stall);
        assert_eq!(s.phase, Phase::Midstream);
        assert_eq!(s.ms, Duration::from_millis(250));
        assert_eq!((s.after, s.chunks), (Some(2), 5));
        assert_eq!(s.delay, Duration::from_millis(7));
        let s = Script::parse("err-503");
        assert_eq!((s.kind, s.code.as_u16()), (Kind::Status, 503));
        let s = Script::parse("err-429");
        assert_eq!((s.kind, s.fails), (Kind::FailThenOk, 2));
        assert_eq!(s.retry_after.unwrap(), "1");
        assert_eq!(Script::parse("gpt-4o-mini").kind, Kind::Ok);
        let s = Script::parse("ok?reasoning=3");
        assert_eq!(
            json(&s.usage_json())["completion_tokens_details"]["reasoning_tokens"],
            3
        );
        assert_eq!(json(&s.usage_json())["total_tokens"], 20);
    }

    #[tokio::test]
    async fn ok_non_stream_shape_and_usage() {
        let p = MockProvider::new("m");
        let res = p.call(chat("ok?reasoning=2", false, false)).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body_of(res).await).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "ok?reasoning=2");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello there!");
        assert_eq!(
            v["choices"][0]["message"]["refusal"],
            serde_json::Value::Null
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let u = &v["usage"];
        assert_eq!(
            (
                &u["prompt_tokens"],
                &u["completion_tokens"],
                &u["total_tokens"]
            ),
            (&json("11"), &json("8"), &json("19"))
        );
        assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 2);
        // default usage 11/6/17
        let v2: serde_json::Value =
            serde_json::from_slice(&body_of(p.call(chat("ok", false, false)).await.unwrap()).await)
                .unwrap();
        assert_eq!(v2["usage"]["total_tokens"], 17);
        assert_eq!(
            v2["usage"]["completion_tokens_details"]["reasoning_tokens"],
            0
        );
        // The provider recorded the upstream body (model rewritten).
        let last = p.log().last_request().unwrap();
        assert_eq!(last.path, "/v1/chat/completions");
        assert_eq!(last.json().unwrap()["model"], "ok");
        assert_eq!(p.log().count("ok"), 1);
        assert_eq!(p.log().scenario_count("ok"), 2);
    }

    #[tokio::test]
    async fn ok_stream_with_and_without_usage() {
        let p = MockProvider::new("m");
        // include_usage on
        let res = p.call(chat("ok?chunks=4", true, true)).await.unwrap();
        assert_eq!(
            res.headers()[CONTENT_TYPE],
            "text/event-stream; charset=utf-8"
        );
        let ev = events(&body_of(res).await);
        assert_eq!(ev.last().unwrap(), "[DONE]");
        let chunks: Vec<serde_json::Value> = ev[..ev.len() - 1].iter().map(|e| json(e)).collect();
        assert_eq!(chunks.len(), 4 + 1 + 1, "4 content, finish, usage");
        let id = &chunks[0]["id"];
        for c in &chunks {
            assert_eq!(&c["id"], id);
            assert_eq!(c["created"], MOCK_CREATED);
            assert_eq!(c["object"], "chat.completion.chunk");
        }
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(chunks[1]["choices"][0]["delta"].get("role").is_none());
        let text: String = chunks[..4]
            .iter()
            .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Hello there!Hello");
        for c in &chunks[..5] {
            assert!(c["usage"].is_null() && c.get("usage").is_some());
        }
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
        let last = &chunks[5];
        assert_eq!(last["choices"], json("[]"));
        assert_eq!(last["usage"]["total_tokens"], 17);
        assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 4);

        // include_usage off: no usage key anywhere, no usage chunk
        let ev = events(&body_of(p.call(chat("ok", true, false)).await.unwrap()).await);
        assert_eq!(ev.len(), 3 + 1 + 1);
        for e in &ev[..4] {
            assert!(json(e).get("usage").is_none(), "{e}");
        }
        // upstream_include_usage forces the usage chunk
        let mut c = chat("ok", true, false);
        c.parsed.upstream_include_usage = true;
        let ev = events(&body_of(p.call(c).await.unwrap()).await);
        assert_eq!(json(&ev[ev.len() - 2])["usage"]["total_tokens"], 17);
        assert_eq!(p.log().streams_started(), 3);
        assert_eq!(p.log().streams_completed(), 3);
        assert_eq!(p.log().streams_cancelled(), 0);
    }

    #[tokio::test]
    async fn tool_call_deltas_accumulate() {
        let p = MockProvider::new("m");
        let ev = events(&body_of(p.call(chat("tool", true, false)).await.unwrap()).await);
        assert_eq!(ev.last().unwrap(), "[DONE]");
        let chunks: Vec<serde_json::Value> = ev[..ev.len() - 1].iter().map(|e| json(e)).collect();
        let first = &chunks[0]["choices"][0]["delta"];
        assert_eq!(first["role"], "assistant");
        assert_eq!(first["tool_calls"][0]["index"], 0);
        assert_eq!(first["tool_calls"][0]["id"], "call_mock_1");
        assert_eq!(first["tool_calls"][0]["function"]["name"], "get_weather");
        let args: String = chunks
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(json(&args), json(r#"{"location":"Paris"}"#));
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
        // non-stream
        let v: serde_json::Value = serde_json::from_slice(
            &body_of(p.call(chat("tool", false, false)).await.unwrap()).await,
        )
        .unwrap();
        let tc = &v["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(tc["function"]["name"], "get_weather");
        assert_eq!(
            json(tc["function"]["arguments"].as_str().unwrap()),
            json(r#"{"location":"Paris"}"#)
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    }

    #[tokio::test]
    async fn status_scenarios_become_classified_errors() {
        let p = MockProvider::new("m");
        let e = p
            .call(chat("status?code=429&retry_after=1", false, false))
            .await
            .unwrap_err();
        assert_eq!(e.status(), 429);
        assert_eq!(e.kind(), crate::error::ErrorKind::UpstreamRateLimited);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(e.message(), "Rate limit reached for requests (mock)");
        assert_eq!(e.provider().map(|p| &**p), Some("m"));
        let e = p
            .call(chat("status?code=529", true, false))
            .await
            .unwrap_err();
        assert_eq!(e.status(), 503);
        assert_eq!(e.kind(), crate::error::ErrorKind::UpstreamOverloaded);
        assert_eq!(e.message(), "Overloaded");
        let e = p.call(chat("err-400", false, false)).await.unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(!e.is_retryable());
        let e = p.call(chat("refuse", false, false)).await.unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::UpstreamConnect);
    }

    #[tokio::test]
    async fn fail_then_ok_counts_per_model_string() {
        let p = MockProvider::new("m");
        let m = "fail-then-ok?fails=2&code=503";
        assert_eq!(
            p.call(chat(m, false, false)).await.unwrap_err().status(),
            503
        );
        // another key has its own counter
        let other = "fail-then-ok?fails=2&code=503&key=b";
        assert_eq!(
            p.call(chat(other, false, false))
                .await
                .unwrap_err()
                .status(),
            503
        );
        assert_eq!(
            p.call(chat(m, false, false)).await.unwrap_err().status(),
            503
        );
        assert_eq!(p.call(chat(m, false, false)).await.unwrap().status(), 200);
        assert_eq!(p.call(chat(m, false, false)).await.unwrap().status(), 200);
        assert_eq!(p.log().count(m), 4);
        // a fresh instance starts over
        let p2 = MockProvider::new("m2");
        assert!(p2.call(chat(m, false, false)).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn stall_phases() {
        let p = MockProvider::new("m");
        // headers: the call itself takes `ms`
        let t0 = tokio::time::Instant::now();
        p.call(chat("stall?phase=headers&ms=700", true, false))
            .await
            .unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(700));
        // first_token: the head at once, the first frame after `ms`
        let t0 = tokio::time::Instant::now();
        let res = p
            .call(chat("stall?phase=first_token&ms=900", true, false))
            .await
            .unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
        let mut body = res.into_body();
        let f = body.frame().await.unwrap().unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(900));
        assert!(f.data_ref().unwrap().starts_with(b"data: {"));
        // midstream: `after` chunks at once, then the stall
        let t0 = tokio::time::Instant::now();
        let res = p
            .call(chat("stall?phase=midstream&ms=500&after=2", true, false))
            .await
            .unwrap();
        let mut body = res.into_body();
        body.frame().await.unwrap().unwrap();
        body.frame().await.unwrap().unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
        body.frame().await.unwrap().unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(500));
        // chunk pacing
        let t0 = tokio::time::Instant::now();
        let ev = events(
            &body_of(
                p.call(chat("ok?chunks=4&delay_ms=100", true, false))
                    .await
                    .unwrap(),
            )
            .await,
        );
        assert_eq!(ev.len(), 4 + 1 + 1);
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(400),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn cut_error_in_200_and_midstream_error() {
        let p = MockProvider::new("m");
        let ev = events(&body_of(p.call(chat("cut", true, true)).await.unwrap()).await);
        assert_eq!(ev.len(), 2);
        assert!(ev.iter().all(|e| e != "[DONE]"));
        assert!(ev.iter().all(|e| json(e)["usage"].is_null()));

        let res = p.call(chat("cut?abort=true", true, false)).await.unwrap();
        assert!(res.into_body().collect().await.is_err());

        let ev = events(&body_of(p.call(chat("error-in-200", true, false)).await.unwrap()).await);
        assert_eq!(ev.len(), 1);
        assert!(json(&ev[0])["error"]["message"].is_string());

        let res = p.call(chat("error-in-200", false, false)).await.unwrap();
        assert_eq!(res.status(), 200);
        let v: serde_json::Value = serde_json::from_slice(&body_of(res).await).unwrap();
        assert!(v["error"]["message"].is_string());

        let ev =
            events(&body_of(p.call(chat("midstream-error", true, false)).await.unwrap()).await);
        assert_eq!(ev.len(), 2);
        assert_eq!(json(&ev[0])["choices"][0]["delta"]["content"], "Hello");
        assert_eq!(json(&ev[1])["error"]["code"], "midstream_error");
    }

    #[tokio::test]
    async fn dropped_stream_counts_as_cancelled() {
        let p = MockProvider::new("m");
        let res = p
            .call(chat("ok?chunks=10&delay_ms=50", true, false))
            .await
            .unwrap();
        let mut body = res.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(p.log().streams_started(), 1);
        assert_eq!(p.log().streams_cancelled(), 1);
        assert_eq!(p.log().streams_completed(), 0);
    }

    #[tokio::test]
    async fn embeddings_float_and_base64_agree() {
        let p = MockProvider::new("m");
        let body = r#"{"model":"x","input":["a","bb"],"dimensions":5}"#;
        let res = p.call(call_for(Api::Embeddings, "ok", body)).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body_of(res).await).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["usage"]["prompt_tokens"], 2);
        assert_eq!(v["usage"]["total_tokens"], 2);
        let floats: Vec<f32> = v["data"][1]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(floats.len(), 5);
        assert_eq!(floats, mock_embedding(b"bb", 5));

        let body = r#"{"model":"x","input":["a","bb"],"dimensions":5,"encoding_format":"base64"}"#;
        let res = p.call(call_for(Api::Embeddings, "ok", body)).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body_of(res).await).unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v["data"][1]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(decoded, floats);
    }

    #[tokio::test]
    async fn text_completions_shape() {
        let p = MockProvider::new("m");
        let body = r#"{"model":"x","prompt":"Say hi"}"#;
        let res = p
            .call(call_for(Api::Completions, "ok", body))
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body_of(res).await).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "Hello there!");
        assert_eq!(v["usage"]["total_tokens"], 17);
        let body = r#"{"model":"x","prompt":"Say hi","stream":true,"stream_options":{"include_usage":true}}"#;
        let res = p
            .call(call_for(Api::Completions, "ok", body))
            .await
            .unwrap();
        let ev = events(&body_of(res).await);
        assert_eq!(ev.last().unwrap(), "[DONE]");
        let text: String = ev[..3]
            .iter()
            .map(|e| json(e)["choices"][0]["text"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(text, "Hello there!");
        assert_eq!(json(&ev[3])["choices"][0]["finish_reason"], "stop");
        assert_eq!(json(&ev[4])["usage"]["total_tokens"], 17);
        assert_eq!(json(&ev[4])["object"], "text_completion");
    }

    async fn raw_http(addr: SocketAddr, req: String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    fn post(path: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\nauthorization: Bearer sk-up\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn server_speaks_http_and_records() {
        let server = MockServer::start().await.unwrap();
        assert!(server.base_url().starts_with("http://127.0.0.1:"));
        assert!(server.base_url().ends_with("/v1"));
        let body = r#"{"model":"ok","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let out = raw_http(server.addr(), post("/v1/chat/completions", body)).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("text/event-stream"));
        assert!(out.contains("data: [DONE]"));
        assert!(out.contains(r#""choices":[],"usage":{"prompt_tokens":11"#));
        let out = raw_http(
            server.addr(),
            post(
                "/v1/chat/completions?api-version=1",
                &body.replace("\"ok\"", "\"err-503\""),
            ),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        let out = raw_http(
            server.addr(),
            "GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_owned(),
        )
        .await;
        assert!(out.contains(r#""id":"fail-then-ok""#), "{out}");
        let out = raw_http(
            server.addr(),
            post(
                "/v1/chat/completions",
                &body.replace("\"ok\"", "\"refuse\""),
            ),
        )
        .await;
        assert_eq!(out, "");
        let log = server.log();
        assert_eq!(log.request_count(), 4);
        let reqs = log.requests();
        assert_eq!(reqs[0].path, "/v1/chat/completions");
        assert_eq!(reqs[0].headers["authorization"], "Bearer sk-up");
        assert_eq!(&reqs[0].body[..], body.as_bytes());
        assert_eq!(reqs[1].path, "/v1/chat/completions?api-version=1");
        assert_eq!(log.count("ok"), 1);
        assert_eq!(log.count("err-503"), 1);
        assert!(
            log.wait_until(Duration::from_secs(5), |l| l.streams_completed() == 1)
                .await
        );
        assert_eq!(log.streams_started(), 1);
    }
}
