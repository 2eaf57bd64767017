//! Provider adapters and the leaf [`Dispatch`] service.
//!
//! A [`Provider`] turns one attempt into one upstream call. Its contract:
//! - `Ok(response)` only for a 2xx upstream answer; the body is in **OpenAI's** wire format for
//!   the request's [`Api`] (JSON, or SSE `chat.completion.chunk`s ending in
//!   `data: [DONE]`) — translating adapters translate, pass-through adapters pass through.
//! - `Err(GatewayError)` for everything else, classified with [`upstream_error`] (OpenAI-compatible
//!   upstreams: the upstream's `message`, `type`, `code` and `param` pass through) or the
//!   translating adapter's mapping table (Anthropic, Gemini, Bedrock: the meaning is kept —
//!   `context_length_exceeded`, `insufficient_quota`, `rate_limit_exceeded`, overloaded → 503):
//!   the status class kept, `Retry-After` (`retry-after-ms`, `retry-after` seconds or HTTP date)
//!   parsed, the provider named, the message scrubbed of the credentials the adapter sent.
//! - Connect failures are [`ErrorKind::UpstreamConnect`](crate::error::ErrorKind).
//!
//! ## Headers, both ways
//! Each built-in adapter applies a [`HeaderPolicy`](headers::HeaderPolicy), configurable per
//! provider (`forward_headers`, `expose_headers`, `headers`): only an allow-list of the client's
//! headers goes upstream (never its credentials, `openai-organization` or `openai-project`), and
//! only an allow-list of the upstream's headers comes back (never `set-cookie`, the upstream's
//! organisation, project or `x-ratelimit-*`, or `server`); the upstream's request id comes back as
//! `x-upstream-request-id`. See [`headers`] for the lists.
//!
//! ## The Anthropic-style ingress
//! A `/v1/messages` request ([`Api::Messages`], body and answer in
//! Anthropic's format) goes to an adapter that [speaks it](Provider::speaks_anthropic) as is
//! (the Anthropic adapter passes it through, only the model replaced). For any other adapter,
//! [`Dispatch`] translates it per attempt: the request to an OpenAI chat request
//! ([`request_from_anthropic`]), the answer back ([`response_to_anthropic`], or
//! [`IngressStream`] event by event for streams, never buffered). `count_tokens` needs an
//! adapter that speaks Anthropic.
//!
//! ## The Responses API
//! A `/v1/responses` request ([`Api::Responses`]) goes as is (model replaced) to an adapter
//! that [serves it](Provider::speaks_responses): an OpenAI-compatible provider configured with
//! `responses = true` (the default for `kind = "openai"` at api.openai.com and for `azure`).
//! For any other adapter, [`Dispatch`] translates it per attempt through chat completions
//! ([`request_to_chat_for`],
//! [`response_from_chat`](crate::translate::responses::response_from_chat),
//! [`ResponsesStream`]); the Anthropic and
//! Gemini and Bedrock adapters then translate that chat request with their own translators.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tower::Service;

use crate::body::Body;
use crate::error::{ErrorKind, GatewayError};
use crate::request::{Api, ParsedRequest, parse_body};
use crate::store::{ResponseStoreHandle, StoredResponse, new_response_id};
use crate::target::Attempt;
use crate::translate::ingress::{IngressStream, request_from_anthropic, response_to_anthropic};
use crate::translate::responses::{
    CarryBack, ReasoningForm, ResponsesStream, input_items, request_to_chat_for,
    response_from_chat_with, with_history,
};
use crate::translate::{TranslateBody, TranslateLimits, answer_too_large};

pub mod anthropic;
pub mod bedrock;
pub mod credentials;
pub mod gemini;
pub mod headers;
pub mod mock;
pub mod openai;
pub mod sigv4;

/// A boxed, `Send` future (the leaf is where dynamic dispatch happens).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Everything an adapter needs for one attempt.
#[derive(Debug, Clone)]
pub struct UpstreamCall {
    /// The parsed client request (cheap to clone: `Arc`s and `Bytes`).
    pub parsed: ParsedRequest,
    /// The exact upstream model id to send.
    pub upstream_model: Arc<str>,
    /// The client's request headers, with its credentials already removed. Adapters forward
    /// only what their [`HeaderPolicy`](headers::HeaderPolicy) allows (`x-request-id`,
    /// `anthropic-beta`, `openai-beta`, and the provider's `forward_headers`).
    pub headers: HeaderMap,
    /// Connect deadline for this attempt, if any.
    pub connect_timeout: Option<Duration>,
    /// The caps on what may be held while an answer is translated (`[server]
    /// max_translated_event_bytes`, `max_translated_body_bytes`); adapters that translate
    /// apply them, pass-through adapters hold nothing.
    pub limits: TranslateLimits,
}

/// One upstream provider.
pub trait Provider: Send + Sync + 'static {
    /// The provider's configured name (bounded: used in metrics labels).
    fn name(&self) -> &str;
    /// The adapter kind: `openai`, `anthropic`, `gemini`, `vertex`, `bedrock`, `mock`.
    fn kind(&self) -> &'static str;
    /// Make the call. See the module docs for the contract.
    fn call(&self, call: UpstreamCall) -> BoxFuture<Result<Response<Body>, GatewayError>>;

    /// Whether [`call`](Self::call) serves Anthropic-format requests ([`Api::Messages`],
    /// [`Api::CountTokens`]) natively. Default `false`: [`Dispatch`] translates them to chat
    /// completions and translates the answer back.
    fn speaks_anthropic(&self) -> bool {
        false
    }

    /// Whether [`call`](Self::call) serves the rest of OpenAI's surface — moderations, image
    /// generation, speech, transcriptions and translations ([`Api::openai_only`]) — by passing
    /// them through. Default `false`: Route skips the target for those endpoints.
    fn serves_openai_surface(&self) -> bool {
        false
    }

    /// Whether [`call`](Self::call) serves the Responses API ([`Api::Responses`]) natively
    /// (passed through, only the model replaced). Default `false`: [`Dispatch`] translates it
    /// to chat completions and translates the answer back.
    fn speaks_responses(&self) -> bool {
        false
    }
}

/// Parse `retry-after-ms`, then `retry-after` (seconds, fractional allowed, or an HTTP date in
/// any of the three forms of RFC 7231 §7.1.1.1). Absurd values saturate instead of failing; the
/// cap on what is believed is the target's
/// ([`BreakerConfig::max_retry_after`](crate::health::BreakerConfig::max_retry_after)).
pub(crate) fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        if ms.is_finite() && ms >= 0.0 {
            return Some(secs_f64(ms / 1000.0));
        }
    }
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(secs_f64(secs));
        }
        return None;
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Non-negative finite seconds as a `Duration`, saturating instead of panicking.
fn secs_f64(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// Classify a non-2xx answer of an **OpenAI-compatible** upstream. `body` is the (small, capped)
/// error body the upstream sent.
///
/// The upstream's error object passes through: `message`, `type`, `code` and `param` exactly as
/// sent (a `null` code stays `null`, a numeric one a number), with tollgate's `origin:
/// "upstream"`, `upstream_status` and `provider` added. Two exceptions keep the meaning clients
/// look for: a 400 whose code is not a string (vLLM sends the status number, llama.cpp none)
/// and whose message says the context window is exceeded gets `context_length_exceeded`; an
/// object without a `code` key gets the status's (`rate_limit_exceeded`,
/// `server_is_overloaded`, `upstream_error`). A body that is not an OpenAI error object keeps
/// its message (or a sentence naming the status) with tollgate's type and code.
///
/// The status class is kept (429 stays 429, other 4xx stay 4xx, 5xx stay 5xx, 529 becomes 503);
/// `Retry-After`, `x-should-retry` and the upstream request id (as `x-upstream-request-id`)
/// are kept by `with_upstream_headers`. Credentials are scrubbed by the adapter
/// ([`HeaderPolicy::scrub`](headers::HeaderPolicy::scrub)).
pub fn upstream_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    provider: &Arc<str>,
) -> GatewayError {
    let object = serde_json::from_slice::<OpenAiErrorBody>(body)
        .ok()
        .and_then(|b| match b.error {
            OpenAiErrorField::Object(o) => Some(o),
            OpenAiErrorField::Other(_) => None,
        });
    let message = object
        .as_ref()
        .and_then(|o| o.message.clone())
        .or_else(|| error_message(body))
        .unwrap_or_else(|| status_sentence(provider, status));
    let mut e = GatewayError::upstream_status(status, message, Some(provider.clone()));
    if let Some(o) = object {
        if let Some(ty) = o.ty {
            e = e.with_type(ty);
        }
        match o.code {
            Some(code)
                if !code.is_string()
                    && status == StatusCode::BAD_REQUEST
                    && is_context_length_message(e.message()) =>
            {
                e = e.with_code("context_length_exceeded");
            }
            Some(code) => e = e.with_code_value(code),
            None => {}
        }
        match o.param {
            Some(serde_json::Value::String(p)) => e = e.with_param(p),
            Some(serde_json::Value::Null) | None => {}
            Some(other) => e = e.with_param(other.to_string()),
        }
    }
    with_upstream_headers(e, headers)
}

/// `upstream P answered Too Many Requests`: the message when the upstream sent none.
pub(crate) fn status_sentence(provider: &str, status: StatusCode) -> String {
    format!(
        "upstream {provider} answered {}",
        status.canonical_reason().unwrap_or("an error")
    )
}

/// Keep what the client needs of an upstream error answer's headers: the wait it asked for
/// (`retry-after-ms`, `retry-after`), `x-should-retry`, and its request id as
/// `x-upstream-request-id`. Nothing else of the upstream's headers reaches the client.
pub(crate) fn with_upstream_headers(mut e: GatewayError, headers: &HeaderMap) -> GatewayError {
    if let Some(wait) = parse_retry_after(headers) {
        e = e.with_retry_after(wait);
    }
    if let Some(v) = headers.get("x-should-retry") {
        e = e.with_header(HeaderName::from_static("x-should-retry"), v.clone());
    }
    if let Some(id) = headers::UPSTREAM_REQUEST_ID
        .iter()
        .find_map(|n| headers.get(n))
    {
        e = e.with_header(headers::X_UPSTREAM_REQUEST_ID.clone(), id.clone());
    }
    e
}

/// Whether an upstream's 400 message says the prompt does not fit the model's context window
/// (OpenAI, vLLM, llama.cpp, Anthropic's "prompt is too long", Gemini's token limit).
pub(crate) fn is_context_length_message(message: &str) -> bool {
    const NEEDLES: [&str; 7] = [
        "context length",
        "context_length",
        "context window",
        "context limit",
        "available context size",
        "prompt is too long",
        "maximum number of tokens",
    ];
    let m = message.to_ascii_lowercase();
    NEEDLES.iter().any(|n| m.contains(n)) || m.contains("input token count")
}

/// `{"error": ...}` of an OpenAI-compatible error body.
#[derive(serde::Deserialize)]
struct OpenAiErrorBody {
    error: OpenAiErrorField,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OpenAiErrorField {
    Object(OpenAiErrorObject),
    /// `"error": "a sentence"` and the like: its message is read by [`error_message`].
    Other(serde::de::IgnoredAny),
}

/// OpenAI's error object (`message`, `type`, `code`, `param`; extra fields ignored).
#[derive(serde::Deserialize)]
struct OpenAiErrorObject {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    ty: Option<String>,
    /// `None`: no `code` key; `Some(Null)`: `"code": null`.
    #[serde(default, deserialize_with = "present")]
    code: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    param: Option<serde_json::Value>,
}

/// A key that is present deserializes to `Some` (even when `null`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

/// Pull a human message out of an upstream error body (OpenAI `{"error":{"message"}}`,
/// Anthropic `{"type":"error","error":{"message"}}`, Gemini `{"error":{"message"}}` or a list).
pub(crate) fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let v = match &v {
        serde_json::Value::Array(a) => a.first()?.clone(),
        _ => v,
    };
    let err = v.get("error").unwrap_or(&v);
    match err {
        serde_json::Value::String(s) => Some(s.clone()),
        _ => err
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_owned),
    }
}

/// A connect/transport failure to `provider`.
pub(crate) fn connect_error(provider: &Arc<str>, err: impl std::fmt::Display) -> GatewayError {
    GatewayError::new(
        ErrorKind::UpstreamConnect,
        format!("could not reach upstream {provider}: {err}"),
    )
    .with_provider(provider.clone())
}

/// The leaf service: sends the request's current [`Attempt`] to its target's provider.
///
/// Reads the [`ParsedRequest`] and [`Attempt`] extensions; the client's credential headers
/// ([`CREDENTIAL_HEADERS`]) are removed before anything goes upstream (and each adapter sends
/// only its policy's allow-list of what is left).
#[derive(Debug, Clone, Copy, Default)]
pub struct Dispatch {
    limits: TranslateLimits,
}

impl Dispatch {
    /// The leaf, with the default [`TranslateLimits`].
    pub fn new() -> Self {
        Dispatch::default()
    }

    /// The caps on what is held while an answer is translated (every attempt's
    /// [`UpstreamCall::limits`]).
    pub fn translate_limits(mut self, limits: TranslateLimits) -> Self {
        self.limits = limits;
        self
    }
}

/// Request headers that carry the client's credential and must never reach an upstream.
pub const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "proxy-authorization",
];

/// Remove every header named in `names` (lower-case names): a pass over the map's few keys
/// finds the ones present, which are removed by their parsed name (no name is parsed, and
/// nothing hashed when none is present, the common case).
pub(crate) fn remove_named(headers: &mut HeaderMap, names: &[&str]) {
    while let Some(name) = headers
        .keys()
        .find(|k| names.contains(&k.as_str()))
        .cloned()
    {
        headers.remove(&name);
    }
}

impl Service<Request<Full<Bytes>>> for Dispatch {
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = DispatchFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let (mut parts, _body) = req.into_parts();
        let (Some(parsed), Some(attempt)) = (
            parts.extensions.remove::<ParsedRequest>(),
            parts.extensions.remove::<Attempt>(),
        ) else {
            return DispatchFuture {
                inner: None,
                error: Some(GatewayError::internal(
                    "Dispatch needs the ParsedRequest and Attempt extensions (Parse and Fallback layers)",
                )),
                id_header: &X_REQUEST_ID,
            };
        };
        remove_named(&mut parts.headers, &CREDENTIAL_HEADERS);
        let state = parts
            .extensions
            .get::<ResponseStoreHandle>()
            .map(|handle| ResponseState {
                handle: handle.clone(),
                // With auth off the stack's identity is the anonymous one, the store's
                // owner `-` (as `GET /v1/responses/{id}` sees it).
                owner: Arc::from(ResponseStoreHandle::owner_of(
                    parts
                        .extensions
                        .get::<crate::auth::KeyIdentity>()
                        .filter(|k| &*k.key_id != crate::auth::ANONYMOUS_KEY_ID),
                )),
            });
        let call = UpstreamCall {
            parsed,
            upstream_model: attempt.target.upstream_model.clone(),
            headers: parts.headers,
            connect_timeout: attempt.timeouts.connect,
            limits: self.limits,
        };
        let provider = &attempt.target.provider;
        let anthropic = call.parsed.api.is_anthropic();
        let fut = if anthropic && !provider.speaks_anthropic() {
            messages_via_chat(provider.as_ref(), call)
        } else if call.parsed.api == Api::Responses && !provider.speaks_responses() {
            responses_via_chat(provider.clone(), call, state)
        } else {
            provider.call(call)
        };
        DispatchFuture {
            inner: Some(fut),
            error: None,
            // Anthropic's upstream id header is `request-id`.
            id_header: if anthropic {
                &REQUEST_ID
            } else {
                &X_REQUEST_ID
            },
        }
    }
}

/// Future of [`Dispatch`]: the provider's call, with the upstream's request id moved to
/// `x-upstream-request-id` (the client sees the gateway's own id).
pub struct DispatchFuture {
    inner: Option<BoxFuture<Result<Response<Body>, GatewayError>>>,
    error: Option<GatewayError>,
    id_header: &'static HeaderName,
}

impl std::fmt::Debug for DispatchFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatchFuture")
            .field("pending", &self.inner.is_some())
            .field("error", &self.error)
            .finish()
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

impl Future for DispatchFuture {
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.inner.as_mut() else {
            return Poll::Ready(Err(self
                .error
                .take()
                .unwrap_or_else(|| GatewayError::internal("polled after completion"))));
        };
        let mut res = match fut.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => {
                self.inner = None;
                r?
            }
        };
        if let Some(id) = res.headers_mut().remove(self.id_header) {
            res.headers_mut()
                .insert(headers::X_UPSTREAM_REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(res))
    }
}

/// Serve an Anthropic-format request with a provider that speaks OpenAI chat: translate the
/// request, call, translate the answer back (streams event by event).
fn messages_via_chat(
    provider: &dyn Provider,
    mut call: UpstreamCall,
) -> BoxFuture<Result<Response<Body>, GatewayError>> {
    if call.parsed.api == Api::CountTokens {
        let e = GatewayError::bad_request(
            format!(
                "count_tokens needs a model served by an Anthropic provider; {} is a {} provider",
                provider.name(),
                provider.kind()
            ),
            None,
        )
        .with_code("unsupported_endpoint");
        return Box::pin(async move { Err(e) });
    }
    let stream = call.parsed.stream;
    let chat = request_from_anthropic(&call.parsed.body)
        .and_then(|body| parse_body(Api::ChatCompletions, body));
    let mut chat = match chat {
        Ok(c) => c,
        Err(e) => return Box::pin(async move { Err(e) }),
    };
    chat.received_at = call.parsed.received_at;
    chat.upstream_include_usage = stream;
    call.parsed = chat;
    let model = call.upstream_model.clone();
    let limits = call.limits;
    let fut = provider.call(call);
    Box::pin(async move {
        let (mut parts, body) = fut.await?.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        if stream {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            let body = TranslateBody::new(body, IngressStream::new(&model))
                .max_event_bytes(limits.max_event_bytes);
            return Ok(Response::from_parts(parts, Body::new(body)));
        }
        let bytes = read_translated(body, limits.max_body_bytes).await?;
        let out = response_to_anthropic(&bytes)?;
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(Response::from_parts(parts, Body::full(out)))
    })
}

/// Read a whole translated-target answer for translation, at most `cap` bytes (past it, the
/// error that names `[server] max_translated_body_bytes`; the rest is not read).
async fn read_translated(body: Body, cap: usize) -> Result<Bytes, GatewayError> {
    match Limited::new(body, cap).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(answer_too_large(cap)),
        Err(e) => Err(match e.downcast::<GatewayError>() {
            Ok(e) => *e,
            Err(e) => GatewayError::new(
                ErrorKind::UpstreamProtocol,
                format!("could not read the upstream answer: {e}"),
            ),
        }),
    }
}

/// Where a translated Responses conversation is kept: the store and the calling key (its
/// owner).
#[derive(Debug, Clone)]
pub struct ResponseState {
    /// The store (the [`ResponseStoreHandle`] request extension).
    pub handle: ResponseStoreHandle,
    /// The owner of the request's responses (its key's id).
    pub owner: Arc<str>,
}

fn store_error(e: &crate::store::ResponseStoreError) -> GatewayError {
    tracing::warn!(error = %e, "response store unavailable");
    GatewayError::new(
        ErrorKind::Internal,
        "The response store cannot be reached right now; try again shortly.",
    )
    .with_status(StatusCode::SERVICE_UNAVAILABLE)
    .with_code("response_store_unavailable")
    .with_retry_after(Duration::from_secs(1))
}

/// The conversation stored under `previous_response_id`, or the error saying why there is none.
async fn load_history(
    state: Option<&ResponseState>,
    id: &str,
) -> Result<Vec<serde_json::Value>, GatewayError> {
    let not_found = || {
        GatewayError::bad_request(
            format!(
                "Previous response with id '{id}' not found (this target keeps no state of its \
                 own: only responses the gateway stored can be continued)."
            ),
            Some("previous_response_id"),
        )
        .with_code("previous_response_not_found")
    };
    let Some(state) = state else {
        return Err(not_found());
    };
    let rec = state
        .handle
        .get(&state.owner, id)
        .await
        .map_err(|e| store_error(&e))?
        .ok_or_else(not_found)?;
    serde_json::from_slice(&rec.conversation).map_err(|_| not_found())
}

/// What a translated Responses call needs besides the chat call: the request (as JSON), the
/// echo, the store to save in (when `store` is not false) and the conversation so far.
struct Turn {
    echo: crate::translate::responses::Echo,
    save: Option<ResponseState>,
    /// The conversation including this request's input (what the next turn continues).
    conversation: Vec<serde_json::Value>,
    model: Arc<str>,
    target: String,
}

impl Turn {
    /// Keep `response` (the response object) and the conversation up to it.
    fn saver(&self, id: String) -> Option<impl FnOnce(&serde_json::Value) + Send + 'static> {
        let state = self.save.clone()?;
        let mut conversation = self.conversation.clone();
        let (model, target) = (self.model.to_string(), self.target.clone());
        Some(move |response: &serde_json::Value| {
            // The input items get ids (`GET /v1/responses/{id}/input_items` lists them).
            crate::store::items::name_items(&mut conversation, &id);
            if let Some(out) = response.get("output").and_then(serde_json::Value::as_array) {
                conversation.extend(out.iter().cloned());
            }
            let rec = StoredResponse::with_id(
                id,
                Bytes::from(response.to_string()),
                Bytes::from(serde_json::Value::Array(conversation).to_string()),
                model,
                target,
            );
            tokio::spawn(async move {
                if let Err(e) = state.handle.put(&state.owner, rec).await {
                    tracing::warn!(error = %e, "could not store a response");
                }
            });
        })
    }
}

/// Resolve `previous_response_id` from the store and translate the request: the chat
/// request and the [`Turn`]. `carry`: what `reasoning` items give back to the target
/// (Anthropic's thinking blocks, Gemini's thought signatures).
async fn prepare_turn(
    call: &UpstreamCall,
    provider: &str,
    carry: CarryBack,
    state: Option<ResponseState>,
) -> Result<(ParsedRequest, Turn), GatewayError> {
    use serde_json::Value;
    let req: serde_json::Map<String, Value> = serde_json::from_slice(&call.parsed.body)
        .map_err(|e| GatewayError::bad_request(format!("invalid JSON body: {e}"), None))?;
    let prev = req
        .get("previous_response_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut history = Vec::new();
    let body = match &prev {
        Some(id) => {
            history = load_history(state.as_ref(), id).await?;
            with_history(&req, history.clone())?
        }
        None => call.parsed.body.clone(),
    };
    let save = state.filter(|_| req.get("store").and_then(Value::as_bool) != Some(false));
    let (chat, mut echo) = request_to_chat_for(&body, carry)?;
    echo.set(
        "previous_response_id",
        prev.map_or(Value::Null, Value::from),
    );
    echo.set("store", Value::Bool(save.is_some()));
    let mut parsed = parse_body(Api::ChatCompletions, chat)?;
    parsed.received_at = call.parsed.received_at;
    parsed.upstream_include_usage = call.parsed.stream;
    history.extend(input_items(&req));
    let turn = Turn {
        echo,
        save,
        conversation: history,
        model: call.parsed.model.clone(),
        target: format!("{provider}/{}", call.upstream_model),
    };
    Ok((parsed, turn))
}

/// Serve a Responses API request with a provider that speaks OpenAI chat (itself, or through
/// its own translator: Anthropic, Gemini): resolve `previous_response_id` from the response
/// store, translate the request, call, translate the answer back (streams event by event),
/// and keep the response in the store unless the request says `store: false`.
fn responses_via_chat(
    provider: Arc<dyn Provider>,
    mut call: UpstreamCall,
    state: Option<ResponseState>,
) -> BoxFuture<Result<Response<Body>, GatewayError>> {
    Box::pin(async move {
        let stream = call.parsed.stream;
        let carry = match (provider.speaks_anthropic(), provider.kind()) {
            (true, _) => CarryBack::Anthropic,
            (false, "gemini") => CarryBack::Gemini,
            _ => CarryBack::Nothing,
        };
        let (chat, turn) = prepare_turn(&call, provider.name(), carry, state).await?;
        call.parsed = chat;
        let model = call.upstream_model.clone();
        let limits = call.limits;
        let id = turn.save.as_ref().map(|_| new_response_id());
        // Anthropic's thinking blocks are summaries of the thinking (Claude 4); what chat
        // targets send as `reasoning_content` is the chain of thought itself.
        let form = match provider.speaks_anthropic() {
            true => ReasoningForm::Summary,
            false => ReasoningForm::Text,
        };
        let (mut parts, body) = provider.call(call).await?.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        if stream {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            let mut t = ResponsesStream::new(&model, turn.echo.clone()).with_reasoning_form(form);
            if let Some(id) = id {
                if let Some(save) = turn.saver(id.clone()) {
                    t = t.on_complete(Box::new(save));
                }
                t = t.with_id(id);
            }
            let body = TranslateBody::new(body, t).max_event_bytes(limits.max_event_bytes);
            return Ok(Response::from_parts(parts, Body::new(body)));
        }
        let bytes = read_translated(body, limits.max_body_bytes).await?;
        let out = response_from_chat_with(&bytes, &turn.echo, id.clone(), form)?;
        if let Some(save) = id.and_then(|id| turn.saver(id)) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out) {
                save(&v);
            }
        }
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(Response::from_parts(parts, Body::full(out)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(1500)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&h), Some(Duration::ZERO));
        // the three RFC 7231 date forms, far in the future
        for date in [
            "Thu, 01 Jan 2099 00:00:00 GMT",
            "Tuesday, 01-Jan-69 00:00:00 GMT", // two-digit years below 70 are 20xx
            "Thu Jan  1 00:00:00 2099",
        ] {
            let mut h = HeaderMap::new();
            h.insert("retry-after", date.parse().unwrap());
            let wait = parse_retry_after(&h).unwrap_or_else(|| panic!("{date}"));
            assert!(wait > Duration::from_secs(86_400 * 365 * 40), "{date}");
        }
        // absurd numbers saturate instead of panicking
        let mut h = HeaderMap::new();
        h.insert("retry-after", "1e300".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::MAX));
    }

    #[test]
    fn insufficient_quota_keeps_its_code_and_says_do_not_retry() {
        let p: Arc<str> = Arc::from("prov");
        let e = upstream_error(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
            &p,
        );
        assert_eq!(e.status(), 429);
        assert_eq!(e.code(), Some("insufficient_quota"));
        assert!(crate::health::is_quota_exhausted(&e));
        // The error edge tells the SDKs not to retry.
        assert_eq!(e.into_response().headers()["x-should-retry"], "false");
        let e = upstream_error(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            br#"{"error":{"message":"slow down","code":"rate_limit_exceeded"}}"#,
            &p,
        );
        assert!(!e.headers().contains_key("x-should-retry"));
        assert!(!crate::health::is_quota_exhausted(&e));
    }

    #[test]
    fn classifies_upstream_errors() {
        let p: Arc<str> = Arc::from("prov");
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        let e = upstream_error(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"error":{"message":"slow down","type":"requests"}}"#,
            &p,
        );
        assert_eq!(e.status(), 429);
        assert_eq!(e.message(), "slow down");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        let e = upstream_error(
            StatusCode::from_u16(529).unwrap(),
            &HeaderMap::new(),
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &p,
        );
        assert_eq!(e.status(), 503);
        assert_eq!(e.message(), "Overloaded");
    }

    #[test]
    fn openai_error_object_passes_through_as_sent() {
        let p: Arc<str> = Arc::from("prov");
        let h = HeaderMap::new();
        let e = upstream_error(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"error":{"message":"Invalid value for 'n'","type":"invalid_request_error","param":"n","code":"invalid_value"}}"#,
            &p,
        );
        let j = e.to_json();
        assert_eq!(j["error"]["type"], "invalid_request_error");
        assert_eq!(j["error"]["code"], "invalid_value");
        assert_eq!(j["error"]["param"], "n");
        assert_eq!(j["error"]["origin"], "upstream");
        // `null` stays null; an absent code gets the status's
        let e = upstream_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &h,
            br#"{"error":{"message":"x","type":"server_error","param":null,"code":null}}"#,
            &p,
        );
        assert_eq!(e.to_json()["error"]["code"], serde_json::Value::Null);
        let e = upstream_error(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"error":{"message":"x","type":"tokens"}}"#,
            &p,
        );
        assert_eq!(e.code(), Some("rate_limit_exceeded"));
        assert_eq!(e.error_type(), "tokens");
        // vLLM: a numeric code; its context-window message is recognised
        let e = upstream_error(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"object":"error","error":{"message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}}"#,
            &p,
        );
        assert_eq!(e.code(), Some("context_length_exceeded"));
        let e = upstream_error(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"error":{"message":"bad","type":"BadRequestError","code":400}}"#,
            &p,
        );
        assert_eq!(e.to_json()["error"]["code"], 400);
        // not an OpenAI error object: the message is kept, tollgate's type and code
        let e = upstream_error(StatusCode::BAD_GATEWAY, &h, br#"{"error":"boom"}"#, &p);
        assert_eq!(e.message(), "boom");
        assert_eq!(e.code(), Some("upstream_error"));
    }
}
