//! [`GatewayError`]: the one error type inner layers return, and the one place it becomes a
//! response ([`ErrorResponse`], the edge layer).
//!
//! The body is OpenAI-shaped — `{"error": {"message", "type", "param", "code"}}` — plus where it
//! came from: `origin` (`"gateway"` or `"upstream"`), and, when known, `provider` and
//! `upstream_status`. Status classes are kept: an upstream 429 is answered 429, a 5xx stays a 5xx,
//! a 4xx a 4xx. Every 429 and 503 carries `Retry-After`.
//!
//! An upstream's own `type`, `code` and `param` pass through as sent (see
//! [`upstream_error`](crate::provider::upstream_error) and the translating adapters' tables);
//! its message is [scrubbed](GatewayError::redact) of the credential the gateway sent upstream.
//!
//! Requests to the Anthropic-style ingress (`/v1/messages`, `/v1/messages/count_tokens`) get
//! Anthropic-shaped errors instead (`{"type":"error","error":{"type","message"}}`, an overloaded
//! upstream as 529 `overloaded_error`), with the same headers; see
//! [`error_to_anthropic`](crate::translate::ingress::error_to_anthropic); every answer on that
//! face also carries the gateway's `x-request-id` as `request-id`, where Anthropic's SDKs read it.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use serde::Serialize;
use tower::{Layer, Service};

use bytes::Bytes;

use crate::body::Body;

/// Which side produced an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The gateway refused or failed the request itself.
    Gateway,
    /// An upstream provider answered with an error (or could not be reached).
    Upstream,
}

/// A low-cardinality classification of errors, used for metrics labels and fallback decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Malformed or invalid request (400).
    BadRequest,
    /// Request body over the configured cap (413).
    PayloadTooLarge,
    /// Wrong HTTP method for the endpoint (405).
    MethodNotAllowed,
    /// Unknown path (404).
    NotFound,
    /// Unknown model name (404).
    ModelNotFound,
    /// Missing or unknown credential (401).
    Unauthorized,
    /// The key may not use this model (403).
    Forbidden,
    /// A gateway limit refused the request (429).
    RateLimited,
    /// A gateway spend budget refused the request (429).
    BudgetExceeded,
    /// The upstream said 429 — or, with `origin: "gateway"`, the gateway skipped a target whose
    /// upstream's 429 `Retry-After` has not passed (code `upstream_rate_limited`).
    UpstreamRateLimited,
    /// The upstream said some other 4xx.
    UpstreamClientError,
    /// The upstream said 5xx.
    UpstreamServerError,
    /// The upstream said it is overloaded (529, Anthropic `overloaded_error`).
    UpstreamOverloaded,
    /// The upstream could not be reached (connect refused, DNS, TLS).
    UpstreamConnect,
    /// An attempt deadline expired.
    UpstreamTimeout,
    /// The upstream broke the protocol (bad JSON, bad SSE, connection cut).
    UpstreamProtocol,
    /// The circuit breaker ejected the target after failures of its own (a target waiting out
    /// its upstream's 429 `Retry-After` is [`UpstreamRateLimited`](Self::UpstreamRateLimited)
    /// with `origin: "gateway"` instead).
    CircuitOpen,
    /// The gateway is shutting down: a request still arriving is refused (503), a request
    /// still waiting for its upstream's answer at the end of the drain period is answered 503,
    /// and a stream still running then ends with an in-band error of this kind.
    ShuttingDown,
    /// Bug or unexpected state inside the gateway (500).
    Internal,
    /// The layers are stacked in an order that cannot work: a layer did not find the request
    /// extension another layer should have added (500, code `misconfigured_stack`, the message
    /// names the missing layer). See [`GatewayError::misconfigured_stack`].
    MisconfiguredStack,
}

impl ErrorKind {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::NotFound => "not_found",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::UpstreamRateLimited => "upstream_rate_limited",
            ErrorKind::UpstreamClientError => "upstream_client_error",
            ErrorKind::UpstreamServerError => "upstream_server_error",
            ErrorKind::UpstreamOverloaded => "upstream_overloaded",
            ErrorKind::UpstreamConnect => "upstream_connect",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamProtocol => "upstream_protocol",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Internal => "internal",
            ErrorKind::MisconfiguredStack => "misconfigured_stack",
        }
    }

    /// The OpenAI `error.type` string for this kind.
    fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::PayloadTooLarge
            | ErrorKind::MethodNotAllowed
            | ErrorKind::NotFound
            | ErrorKind::ModelNotFound
            | ErrorKind::UpstreamClientError => "invalid_request_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::RateLimited | ErrorKind::UpstreamRateLimited => "rate_limit_error",
            ErrorKind::BudgetExceeded => "insufficient_quota",
            ErrorKind::UpstreamOverloaded | ErrorKind::CircuitOpen | ErrorKind::ShuttingDown => {
                "service_unavailable_error"
            }
            ErrorKind::UpstreamTimeout => "timeout_error",
            ErrorKind::UpstreamServerError
            | ErrorKind::UpstreamConnect
            | ErrorKind::UpstreamProtocol => "api_error",
            ErrorKind::Internal | ErrorKind::MisconfiguredStack => "server_error",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error every inner tollgate layer returns. Boxed so `Result` stays one pointer wide.
#[derive(Clone)]
pub struct GatewayError {
    inner: Box<Inner>,
}

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    status: StatusCode,
    message: Cow<'static, str>,
    param: Option<Cow<'static, str>>,
    /// `None`: the kind's label; `Some(v)`: exactly `v` (an upstream's `null` or number too).
    code: Option<serde_json::Value>,
    /// `None`: the kind's OpenAI type.
    error_type: Option<Cow<'static, str>>,
    /// The Anthropic `error.type` an Anthropic upstream sent (the Anthropic face keeps it).
    anthropic_type: Option<Cow<'static, str>>,
    origin: Origin,
    provider: Option<Arc<str>>,
    upstream_status: Option<u16>,
    retry_after: Option<Duration>,
    headers: HeaderMap,
    context: crate::ext::ErrorContext,
}

impl GatewayError {
    /// A new error of `kind` with its default status and origin.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        let (status, origin) = match kind {
            ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, Origin::Gateway),
            ErrorKind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, Origin::Gateway),
            ErrorKind::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, Origin::Gateway),
            ErrorKind::NotFound | ErrorKind::ModelNotFound => {
                (StatusCode::NOT_FOUND, Origin::Gateway)
            }
            ErrorKind::Unauthorized => (StatusCode::UNAUTHORIZED, Origin::Gateway),
            ErrorKind::Forbidden => (StatusCode::FORBIDDEN, Origin::Gateway),
            ErrorKind::RateLimited | ErrorKind::BudgetExceeded => {
                (StatusCode::TOO_MANY_REQUESTS, Origin::Gateway)
            }
            ErrorKind::UpstreamRateLimited => (StatusCode::TOO_MANY_REQUESTS, Origin::Upstream),
            ErrorKind::UpstreamClientError => (StatusCode::BAD_REQUEST, Origin::Upstream),
            ErrorKind::UpstreamServerError => (StatusCode::BAD_GATEWAY, Origin::Upstream),
            ErrorKind::UpstreamOverloaded => (StatusCode::SERVICE_UNAVAILABLE, Origin::Upstream),
            ErrorKind::UpstreamConnect | ErrorKind::UpstreamProtocol => {
                (StatusCode::BAD_GATEWAY, Origin::Upstream)
            }
            ErrorKind::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, Origin::Upstream),
            ErrorKind::CircuitOpen | ErrorKind::ShuttingDown => {
                (StatusCode::SERVICE_UNAVAILABLE, Origin::Gateway)
            }
            ErrorKind::Internal | ErrorKind::MisconfiguredStack => {
                (StatusCode::INTERNAL_SERVER_ERROR, Origin::Gateway)
            }
        };
        GatewayError {
            inner: Box::new(Inner {
                kind,
                status,
                message: message.into(),
                param: None,
                code: None,
                error_type: None,
                anthropic_type: None,
                origin,
                provider: None,
                upstream_status: None,
                retry_after: None,
                headers: HeaderMap::new(),
                context: crate::ext::ErrorContext::default(),
            }),
        }
    }

    /// 400 naming the offending request field.
    pub fn bad_request(message: impl Into<Cow<'static, str>>, param: Option<&'static str>) -> Self {
        let mut e = Self::new(ErrorKind::BadRequest, message);
        e.inner.param = param.map(Cow::Borrowed);
        e.inner.code = Some(serde_json::Value::from("invalid_request_error"));
        e
    }

    /// 500 for a gateway bug.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// 500 `misconfigured_stack`: `layer` needs the request extension `extension`, which
    /// `missing` (a layer placed outside it) adds, and did not find it. Fails closed: the
    /// request is refused rather than served without that layer's protection. Logged once per
    /// `logged` flag (one static per checking layer), at error level.
    pub fn misconfigured_stack(
        layer: &'static str,
        missing: &'static str,
        extension: &'static str,
        logged: &AtomicBool,
    ) -> Self {
        if !logged.swap(true, Ordering::Relaxed) {
            tracing::error!(
                layer,
                missing,
                extension,
                "misconfigured stack: {missing} must be placed outside {layer}; refusing requests"
            );
        }
        Self::new(
            ErrorKind::MisconfiguredStack,
            format!(
                "Misconfigured gateway: {layer} needs the {extension} extension from {missing}, \
                 which is missing or placed inside it."
            ),
        )
    }

    /// An error answered by an upstream with `status`: the status class is kept
    /// (429 stays 429, other 4xx stay 4xx, 5xx stay 5xx; 529 becomes 503 "overloaded").
    pub fn upstream_status(
        status: StatusCode,
        message: impl Into<Cow<'static, str>>,
        provider: Option<Arc<str>>,
    ) -> Self {
        let code = status.as_u16();
        let kind = match code {
            429 => ErrorKind::UpstreamRateLimited,
            529 => ErrorKind::UpstreamOverloaded,
            408 => ErrorKind::UpstreamTimeout,
            400..=499 => ErrorKind::UpstreamClientError,
            _ => ErrorKind::UpstreamServerError,
        };
        let mut e = Self::new(kind, message);
        e.inner.status = match code {
            529 => StatusCode::SERVICE_UNAVAILABLE,
            400..=599 => status,
            _ => StatusCode::BAD_GATEWAY,
        };
        e.inner.upstream_status = Some(code);
        e.inner.provider = provider;
        e.inner.code = Some(serde_json::Value::from(match code {
            429 => "rate_limit_exceeded",
            529 => "server_is_overloaded",
            _ => "upstream_error",
        }));
        e
    }

    /// Set the HTTP status answered to the client.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.inner.status = status;
        self
    }
    /// Set `error.code`.
    pub fn with_code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.inner.code = Some(serde_json::Value::String(code.into().into_owned()));
        self
    }
    /// Set `error.code` to exactly `code`, as an upstream sent it (`null`, a string, a number).
    pub fn with_code_value(mut self, code: serde_json::Value) -> Self {
        self.inner.code = Some(code);
        self
    }
    /// Set `error.type` (by default the OpenAI type of the [kind](Self::kind)).
    pub fn with_type(mut self, ty: impl Into<Cow<'static, str>>) -> Self {
        self.inner.error_type = Some(ty.into());
        self
    }
    /// Set `error.param`.
    pub fn with_param(mut self, param: impl Into<Cow<'static, str>>) -> Self {
        self.inner.param = Some(param.into());
        self
    }
    /// Remember the Anthropic `error.type` an Anthropic upstream answered with: the Anthropic
    /// face (`/v1/messages`) then answers with that type and the upstream's own status.
    pub(crate) fn with_anthropic_type(mut self, ty: impl Into<Cow<'static, str>>) -> Self {
        self.inner.anthropic_type = Some(ty.into());
        self
    }
    /// Replace every occurrence of `secret` in the message, `type`, `code` and `param` with
    /// `[redacted]`: an upstream error that quotes the credential the gateway sent upstream
    /// must not hand it to the client (or to a log). Secrets shorter than
    /// [`MIN_REDACTED_LEN`] are left alone (replacing them would mangle ordinary words).
    pub fn redact(mut self, secret: &str) -> Self {
        if secret.len() < MIN_REDACTED_LEN {
            return self;
        }
        let i = &mut *self.inner;
        redact_cow(&mut i.message, secret);
        if let Some(p) = &mut i.param {
            redact_cow(p, secret);
        }
        if let Some(t) = &mut i.error_type {
            redact_cow(t, secret);
        }
        if let Some(serde_json::Value::String(c)) = &mut i.code {
            if c.contains(secret) {
                *c = c.replace(secret, REDACTED);
            }
        }
        self
    }
    /// Set the provider the error came from.
    pub fn with_provider(mut self, provider: Arc<str>) -> Self {
        self.inner.provider = Some(provider);
        self
    }
    /// Set `Retry-After` (whole seconds, rounded up, at least 1).
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.inner.retry_after = Some(wait);
        self
    }
    /// Add a header to the error response (e.g. `x-ratelimit-*`, `allow`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.inner.headers.append(name, value);
        self
    }
    /// Set the status the upstream answered with (kept in `upstream_status`).
    pub fn with_upstream_status(mut self, status: u16) -> Self {
        self.inner.upstream_status = Some(status);
        self
    }
    /// Set the origin explicitly.
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.inner.origin = origin;
        self
    }

    /// The classification of this error.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }
    /// The status the client is answered with.
    pub fn status(&self) -> StatusCode {
        self.inner.status
    }
    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.inner.message
    }
    /// `error.type` as the client sees it on the OpenAI face.
    pub fn error_type(&self) -> &str {
        self.inner
            .error_type
            .as_deref()
            .unwrap_or_else(|| self.inner.kind.openai_type())
    }
    /// `error.code` as the client sees it, when it is a string (`None` for `null` or a number).
    pub fn code(&self) -> Option<&str> {
        match &self.inner.code {
            None => Some(self.inner.kind.as_str()),
            Some(v) => v.as_str(),
        }
    }
    /// `error.param`, when set.
    pub fn param(&self) -> Option<&str> {
        self.inner.param.as_deref()
    }
    /// The Anthropic `error.type` an Anthropic upstream answered with, if that is where the
    /// error came from.
    pub fn anthropic_type(&self) -> Option<&str> {
        self.inner.anthropic_type.as_deref()
    }
    /// Which side produced the error.
    pub fn origin(&self) -> Origin {
        self.inner.origin
    }
    /// The upstream status, when an upstream answered.
    pub fn upstream_status_code(&self) -> Option<u16> {
        self.inner.upstream_status
    }
    /// The provider, when known.
    pub fn provider(&self) -> Option<&Arc<str>> {
        self.inner.provider.as_ref()
    }
    /// The wait the client is told, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }
    /// Extra response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.inner.headers
    }
    /// Mutable access to the extra response headers.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.inner.headers
    }
    /// The reports the layers added on the way out (identity, route, attempts, usage): see
    /// [`ext`](crate::ext).
    pub fn context(&self) -> &crate::ext::ErrorContext {
        &self.inner.context
    }
    /// Mutable access to the [`context`](Self::context), for a layer adding its report.
    pub fn context_mut(&mut self) -> &mut crate::ext::ErrorContext {
        &mut self.inner.context
    }

    /// Whether another target may be tried after this error (before the commit point).
    /// True for upstream 408/429/5xx/529, connect errors, timeouts, protocol errors and open
    /// circuits; never for the client's own mistakes or the gateway's refusals.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.inner.kind,
            ErrorKind::UpstreamRateLimited
                | ErrorKind::UpstreamServerError
                | ErrorKind::UpstreamOverloaded
                | ErrorKind::UpstreamConnect
                | ErrorKind::UpstreamTimeout
                | ErrorKind::UpstreamProtocol
                | ErrorKind::CircuitOpen
        )
    }

    /// The JSON error object (`{"error": {...}}`), as sent in bodies and in-band SSE events.
    pub fn to_json(&self) -> serde_json::Value {
        let i = &self.inner;
        let code = match &i.code {
            Some(c) => c.clone(),
            None => serde_json::Value::from(i.kind.as_str()),
        };
        let mut err = serde_json::json!({
            "message": i.message,
            "type": self.error_type(),
            "param": i.param,
            "code": code,
            "origin": i.origin,
        });
        if let Some(obj) = err.as_object_mut() {
            if let Some(p) = &i.provider {
                obj.insert("provider".into(), serde_json::Value::from(&**p));
            }
            if let Some(s) = i.upstream_status {
                obj.insert("upstream_status".into(), serde_json::Value::from(s));
            }
        }
        serde_json::json!({ "error": err })
    }

    /// Turn the error into the HTTP response the client sees.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        let status = self.inner.status;
        self.into_response_with(status, Bytes::from(body))
    }

    /// Turn the error into the Anthropic-shaped response a `/v1/messages` client sees (see
    /// [`error_to_anthropic`](crate::translate::ingress::error_to_anthropic)); headers as in
    /// [`into_response`](Self::into_response).
    pub fn into_anthropic_response(self) -> Response<Body> {
        let (status, body) = crate::translate::ingress::error_to_anthropic(&self);
        self.into_response_with(status, body)
    }

    /// A response with this error's headers (`Retry-After`, `Allow`, …) but the given status and
    /// JSON body: for an API face with its own error shape.
    pub fn into_response_with(self, status: StatusCode, body: Bytes) -> Response<Body> {
        let i = *self.inner;
        let mut res = Response::new(Body::full(body));
        *res.status_mut() = status;
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let needs_retry_after = matches!(status.as_u16(), 429 | 503 | 529);
        match i.retry_after {
            Some(wait) => {
                headers.insert(RETRY_AFTER, retry_after_value(wait));
                if let Ok(v) = HeaderValue::try_from(wait.as_millis().max(1).to_string()) {
                    headers.insert(HeaderName::from_static("retry-after-ms"), v);
                }
            }
            None if needs_retry_after => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            None => {}
        }
        if status == StatusCode::TOO_MANY_REQUESTS
            && i.code.as_ref().and_then(|c| c.as_str()) == Some("insufficient_quota")
            && !i.headers.contains_key(X_SHOULD_RETRY)
        {
            // Quota, not a wait (whatever the provider): the official SDKs honour this.
            headers.insert(X_SHOULD_RETRY, HeaderValue::from_static("false"));
        }
        if i.kind == ErrorKind::MethodNotAllowed && !i.headers.contains_key(ALLOW) {
            headers.insert(ALLOW, HeaderValue::from_static("POST"));
        }
        for (name, value) in i.headers.iter() {
            headers.append(name.clone(), value.clone());
        }
        res
    }
}

/// What [`GatewayError::redact`] puts in place of a secret.
pub const REDACTED: &str = "[redacted]";
/// The shortest secret [`GatewayError::redact`] replaces.
pub const MIN_REDACTED_LEN: usize = 8;

fn redact_cow(s: &mut Cow<'static, str>, secret: &str) {
    if s.contains(secret) {
        *s = Cow::Owned(s.replace(secret, REDACTED));
    }
}

/// `x-should-retry`: the official OpenAI SDKs' retry hint.
const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_value(wait: Duration) -> HeaderValue {
    let secs = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    HeaderValue::from(secs.max(1))
}

impl std::fmt::Debug for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayError")
            .field("kind", &self.inner.kind)
            .field("status", &self.inner.status)
            .field("message", &self.inner.message)
            .field("origin", &self.inner.origin)
            .field("provider", &self.inner.provider)
            .field("upstream_status", &self.inner.upstream_status)
            .finish()
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.inner.kind, self.inner.status, self.inner.message
        )
    }
}

impl std::error::Error for GatewayError {}

/// Layer for [`ErrorResponse`]: the single place a [`GatewayError`] becomes a response.
///
/// It is the outermost tollgate layer, and placing it inside any other layer does not compile:
/// its `Error = Infallible` is not the `GatewayError` every other layer needs from its inner
/// service. One `compile_fail` check per layer (E0271: type mismatch on `Error`):
///
/// Parse outside ErrorResponse:
/// ```compile_fail,E0271
/// # use bytes::Bytes; use http_body_util::Full;
/// fn serves<S: tower::Service<http::Request<Full<Bytes>>>>(_: S) {}
/// serves(tower::ServiceBuilder::new()
///     .layer(tollgate::request::ParseLayer::new())
///     .layer(tollgate::error::ErrorResponseLayer::new())
///     .service(tollgate::provider::Dispatch::new()));
/// ```
///
/// UsageMeter outside ErrorResponse:
/// ```compile_fail,E0271
/// # use bytes::Bytes; use http_body_util::Full;
/// fn serves<S: tower::Service<http::Request<Full<Bytes>>>>(_: S) {}
/// serves(tower::ServiceBuilder::new()
///     .layer(tollgate::meter::UsageMeterLayer::new())
///     .layer(tollgate::error::ErrorResponseLayer::new())
///     .service(tollgate::provider::Dispatch::new()));
/// ```
///
/// Auth outside ErrorResponse:
/// ```compile_fail,E0271
/// # use bytes::Bytes; use http_body_util::Full;
/// fn serves<S: tower::Service<http::Request<Full<Bytes>>>>(_: S) {}
/// serves(tower::ServiceBuilder::new()
///     .layer(tollgate::auth::AuthLayer::disabled())
///     .layer(tollgate::error::ErrorResponseLayer::new())
///     .service(tollgate::provider::Dispatch::new()));
/// ```
///
/// RateLimit outside ErrorResponse:
/// ```compile_fail,E0271
/// # use bytes::Bytes; use http_body_util::Full;
/// fn serves<S: tower::Service<http::Request<Full<Bytes>>>>(_: S) {}
/// serves(tower::ServiceBuilder::new()
///     .layer(tollgate::ratelimit::RateLimitLayer::new())
///     .layer(tollgate::error::ErrorResponseLayer::new())
///     .service(tollgate::provider::Dispatch::new()));
/// ```
///
/// StreamPassthrough outside ErrorResponse:
/// ```compile_fail,E0271
/// # use bytes::Bytes; use http_body_util::Full;
/// fn serves<S: tower::Service<http::Request<Full<Bytes>>>>(_: S) {}
/// serves(tower::ServiceBuilder::new()
///     .layer(tollgate::stream::StreamPassthroughLayer::new())
///     .layer(tollgate::error::ErrorResponseLayer::new())
///     .service(tollgate::provider::Dispatch::new()));
/// ```
///
/// Route outside ErrorResponse:
/// ```compile_fail,E0271
/// # use bytes::Bytes; use http_body_util::Full;
/// fn serves<S: tower::Service<http::Request<Full<Bytes>>>>(_: S) {}
/// serves(tower::ServiceBuilder::new()
///     .layer(tollgate::route::RouteLayer::new(tollgate::route::RouteHandle::new(tollgate::route::RouteTable::builder().build().unwrap())))
///     .layer(tollgate::error::ErrorResponseLayer::new())
///     .service(tollgate::provider::Dispatch::new()));
/// ```
///
/// Fallback outside ErrorResponse:
/// ```compile_fail,E0271
/// # use bytes::Bytes; use http_body_util::Full;
/// fn serves<S: tower::Service<http::Request<Full<Bytes>>>>(_: S) {}
/// serves(tower::ServiceBuilder::new()
///     .layer(tollgate::fallback::FallbackLayer::new())
///     .layer(tollgate::error::ErrorResponseLayer::new())
///     .service(tollgate::provider::Dispatch::new()));
/// ```
///
/// Timeout outside ErrorResponse:
/// ```compile_fail,E0271
/// # use bytes::Bytes; use http_body_util::Full;
/// fn serves<S: tower::Service<http::Request<Full<Bytes>>>>(_: S) {}
/// serves(tower::ServiceBuilder::new()
///     .layer(tollgate::timeout::TimeoutLayer::new())
///     .layer(tollgate::error::ErrorResponseLayer::new())
///     .service(tollgate::provider::Dispatch::new()));
/// ```
///
/// The right way round compiles:
/// ```
/// # use bytes::Bytes; use http_body_util::Full;
/// fn serves<S: tower::Service<http::Request<Full<Bytes>>>>(_: S) {}
/// serves(tower::ServiceBuilder::new()
///     .layer(tollgate::error::ErrorResponseLayer::new())
///     .layer(tollgate::request::ParseLayer::new())
///     .service(tollgate::provider::Dispatch::new()));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorResponseLayer;

impl ErrorResponseLayer {
    /// A new layer.
    pub fn new() -> Self {
        ErrorResponseLayer
    }
}

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse::new(inner)
    }
}

/// The edge service: `Error = Infallible`; inner errors become OpenAI-shaped responses.
///
/// **Readiness.** An inner service whose `poll_ready` fails is, by the `Service` contract,
/// unusable: it is never called again. The edge stays ready (it has an answer for everyone)
/// and answers every later request with that error as a response (its own status: a 503 stays
/// a 503); drop this service and build a new one to recover.
#[derive(Debug, Clone)]
pub struct ErrorResponse<S> {
    inner: S,
    failed: Option<GatewayError>,
}

impl<S> ErrorResponse<S> {
    /// Wrap `inner`.
    pub fn new(inner: S) -> Self {
        ErrorResponse {
            inner,
            failed: None,
        }
    }
    /// The readiness error of the inner service, if it failed (then every request is answered
    /// with it and the inner service is never called again).
    pub fn failed(&self) -> Option<&GatewayError> {
        self.failed.as_ref()
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
    /// The layer.
    pub fn layer() -> ErrorResponseLayer {
        ErrorResponseLayer
    }
}

impl<S, B> Service<Request<B>> for ErrorResponse<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ErrorResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // An inner service that failed readiness is never polled nor called again; the edge
        // stays ready and answers with the error instead.
        if self.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                tracing::error!(error = %e, "inner service failed readiness; answering with it");
                self.failed = Some(e);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // One prefix test; the OpenAI paths never match it.
        let anthropic = if req.uri().path().starts_with("/v1/messages") {
            // Anthropic's SDKs read the request id from `request-id`.
            Some(req.headers().get("x-request-id").cloned())
        } else {
            None
        };
        match &self.failed {
            Some(e) => ErrorResponseFuture {
                inner: None,
                failed: Some(e.clone()),
                anthropic,
            },
            None => ErrorResponseFuture {
                inner: Some(self.inner.call(req)),
                failed: None,
                anthropic,
            },
        }
    }
}

pin_project! {
    /// Future of [`ErrorResponse`].
    pub struct ErrorResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        // The inner service's readiness error, answered without calling it.
        failed: Option<GatewayError>,
        // The Anthropic face (`/v1/messages`), with the request's `x-request-id`.
        anthropic: Option<Option<HeaderValue>>,
    }
}

impl<F> Future for ErrorResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, GatewayError>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match (this.inner.as_pin_mut(), this.failed.take()) {
            (Some(inner), _) => ready!(inner.poll(cx)),
            (None, Some(e)) => Err(e),
            (None, None) => Err(GatewayError::internal(
                "ErrorResponseFuture polled after completion",
            )),
        };
        let Some(request_id) = this.anthropic.take() else {
            return Poll::Ready(Ok(match res {
                Ok(res) => res,
                Err(e) => e.into_response(),
            }));
        };
        let mut res = match res {
            Ok(res) => res,
            Err(e) => e.into_anthropic_response(),
        };
        if let Some(id) = request_id {
            res.headers_mut()
                .insert(HeaderName::from_static("request-id"), id);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn upstream_429_keeps_status_and_retry_after() {
        let e = GatewayError::upstream_status(StatusCode::TOO_MANY_REQUESTS, "slow down", None)
            .with_retry_after(Duration::from_millis(1500));
        assert!(e.is_retryable());
        let res = e.into_response();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()[RETRY_AFTER], "2");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["origin"], "upstream");
        assert_eq!(v["error"]["upstream_status"], 429);
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    }

    #[test]
    fn status_classes_kept() {
        for (up, want) in [
            (500, 500),
            (502, 502),
            (503, 503),
            (504, 504),
            (529, 503),
            (404, 404),
        ] {
            let e = GatewayError::upstream_status(StatusCode::from_u16(up).unwrap(), "x", None);
            assert_eq!(e.status().as_u16(), want, "upstream {up}");
        }
        assert!(!GatewayError::upstream_status(StatusCode::BAD_REQUEST, "x", None).is_retryable());
        assert!(!GatewayError::bad_request("x", Some("model")).is_retryable());
    }

    #[test]
    fn every_503_has_retry_after() {
        let res = GatewayError::new(ErrorKind::CircuitOpen, "ejected").into_response();
        assert_eq!(res.status(), 503);
        assert!(res.headers().contains_key(RETRY_AFTER));
    }

    /// A failed `poll_ready` is answered with the error, as a response, and the failed inner
    /// service is neither polled nor called again (the `Service` contract).
    #[tokio::test]
    async fn failed_readiness_is_answered_without_calling_inner() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<&'static str>, Response<Body>>();
        let inner = tower::ServiceExt::map_err(mock, |e: tower::BoxError| {
            match e.downcast::<GatewayError>() {
                Ok(g) => *g,
                Err(e) => GatewayError::internal(e.to_string()),
            }
        });
        let mut svc = tower_test::mock::Spawn::new(ErrorResponse::new(inner));
        handle.send_error(
            GatewayError::new(ErrorKind::CircuitOpen, "all targets ejected")
                .with_retry_after(Duration::from_secs(3)),
        );
        assert!(svc.poll_ready().is_ready(), "the edge stays ready");
        assert!(svc.get_ref().failed().is_some());
        for _ in 0..2 {
            let res = svc.call(Request::new("x")).await.unwrap();
            assert_eq!(res.status(), 503);
            assert_eq!(res.headers()[RETRY_AFTER], "3");
            let body = res.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["code"], "circuit_open");
            assert!(svc.poll_ready().is_ready());
        }
        // The inner service never saw a request.
        let next = handle.next_request();
        tokio::pin!(next);
        assert!(futures_poll_once(next.as_mut()).await.is_none());
    }

    async fn futures_poll_once<F: Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| match Pin::new(&mut f).poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }
}
