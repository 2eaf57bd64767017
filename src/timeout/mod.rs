//! The Timeout layer: four deadlines per attempt, and the commit-point gate.
//!
//! Reads the [`Attempt`] extension's `timeouts` (the target's, shortened by the client's);
//! without an [`Attempt`] (Fallback missing or placed inside Timeout) it fails closed with 500
//! `misconfigured_stack` naming `FallbackLayer`:
//! - **connect** is passed to the provider by [`Dispatch`](crate::provider::Dispatch);
//! - **first token**: for a streaming request the future does not resolve until the first SSE
//!   event *carrying data* has arrived (comments and keep-alives do not count) — so a stalled
//!   stream fails over before the client has a byte. The bytes read meanwhile are replayed,
//!   unchanged, at the start of the returned body. For a non-streaming request it bounds the
//!   wait for the response head;
//! - **idle**: the longest gap between two body frames after the gate;
//! - **total**: the whole attempt, head and body.
//!
//! Before the response resolves, an expired deadline is an `Err` of kind
//! [`UpstreamTimeout`](crate::error::ErrorKind::UpstreamTimeout) (retryable: Fallback tries the
//! next target). After it, the body ends with an `Err(BoxError)` holding that `GatewayError`;
//! StreamPassthrough, outside, turns it into the in-band `data: {"error": ...}` event with no
//! `[DONE]`.
//!
//! **Errors inside a 200.** When the first data event of a stream is an `{"error": ...}`
//! object, the attempt fails with an error classified like an upstream status (see
//! [`error_in_body`]: rate limit → 429, overloaded → 529, timeout → 504, a numeric code is kept,
//! anything else 500). A non-streaming 2xx answer's body is read before resolving (capped,
//! [`TimeoutLayer::max_preread`], 1 MiB by default; bounded by `total` and `idle`) and an
//! `{"error": ...}` document in it falls back the same way ([`TimeoutLayer::inspect_json`]
//! switches this off; speech audio is never read ahead). A stream that ends before any data event is an
//! [`UpstreamProtocol`](crate::error::ErrorKind::UpstreamProtocol) error (retryable).
//!
//! Deadlines run on tokio's clock (tests use `tokio::time::pause`).
//!
//! ```
//! use tollgate::timeout::TimeoutLayer;
//! use tollgate::provider::Dispatch;
//! let svc = tower::ServiceBuilder::new()
//!     .layer(TimeoutLayer::new().max_preread(256 * 1024))
//!     .service(Dispatch::new());
//! # let _ = svc;
//! ```

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::Service;

use crate::body::Body;
use crate::error::GatewayError;
use crate::request::ParsedRequest;
use crate::target::Attempt;

mod body;
mod future;
mod layer;

pub use self::body::ResponseBody;
pub use self::future::{ResponseFuture, error_in_body};
pub use self::layer::{DEFAULT_MAX_PREREAD, TimeoutLayer};

use self::future::{Config, Mode};

/// Enforces each attempt's deadlines and gates the response on its first token; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    config: TimeoutLayer,
}

impl<S> Timeout<S> {
    /// Wrap `inner` with the default settings.
    pub fn new(inner: S) -> Self {
        Timeout {
            inner,
            config: TimeoutLayer::default(),
        }
    }
    /// The default layer.
    pub fn layer() -> TimeoutLayer {
        TimeoutLayer::new()
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

impl<S> Service<Request<Full<Bytes>>> for Timeout<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let started = Instant::now();
        let parsed = req.extensions().get::<ParsedRequest>();
        let stream = parsed.is_some_and(|p| p.stream);
        // Speech is audio, not JSON: nothing to inspect, and it is never held back.
        let binary = parsed.is_some_and(|p| p.api == crate::request::Api::AudioSpeech);
        let (timeouts, provider, target) = match req.extensions().get::<Attempt>() {
            Some(a) => (
                a.timeouts,
                Some(Arc::from(a.target.provider.name())),
                Some(a.target.id.clone()),
            ),
            None => {
                // Fail closed: without an Attempt there is no deadline to enforce.
                static LOGGED: AtomicBool = AtomicBool::new(false);
                return ResponseFuture::failed(GatewayError::misconfigured_stack(
                    "TimeoutLayer",
                    "FallbackLayer",
                    "Attempt",
                    &LOGGED,
                ));
            }
        };
        let mode = if stream {
            Mode::Stream
        } else if self.config.inspect_json {
            Mode::Json
        } else if timeouts.idle.is_none() && timeouts.total.is_none() {
            Mode::Passthrough
        } else {
            Mode::Json
        };
        let cfg = Config {
            mode,
            started,
            first_token: timeouts.first_token,
            idle: timeouts.idle,
            total: timeouts.total,
            max_preread: if binary || (mode == Mode::Json && !self.config.inspect_json) {
                0
            } else {
                self.config.max_preread
            },
            provider,
            target,
        };
        ResponseFuture::new(self.inner.call(req), cfg)
    }
}

/// An expired deadline: the operator's warn line (the target and which deadline) and the
/// error. Only on expiry: nothing is formatted while deadlines hold.
pub(crate) fn expired(
    provider: &Option<Arc<str>>,
    target: &Option<Arc<str>>,
    deadline: &'static str,
    ms: u128,
    message: String,
) -> GatewayError {
    let ms = u64::try_from(ms).unwrap_or(u64::MAX);
    tracing::warn!(
        target = target.as_deref().map(tracing::field::display),
        deadline,
        ms,
        "upstream deadline expired"
    );
    let mut e = GatewayError::new(crate::error::ErrorKind::UpstreamTimeout, message);
    if let Some(p) = provider {
        e = e.with_provider(p.clone());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn errors_inside_2xx_are_classified_like_statuses() {
        let p: Arc<str> = Arc::from("up");
        let cls = |doc: &str| {
            error_in_body(doc.as_bytes(), Some(&p)).map(|e| (e.status().as_u16(), e.kind()))
        };
        assert_eq!(
            cls(
                r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#
            ),
            Some((429, ErrorKind::UpstreamRateLimited))
        );
        assert_eq!(
            cls(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
            Some((503, ErrorKind::UpstreamOverloaded))
        );
        // OpenRouter puts the HTTP status in `code`
        assert_eq!(
            cls(r#"{"error":{"message":"no","code":429}}"#),
            Some((429, ErrorKind::UpstreamRateLimited))
        );
        assert_eq!(
            cls(r#"{"error":{"message":"bad input","code":400}}"#),
            Some((400, ErrorKind::UpstreamClientError))
        );
        assert_eq!(
            cls(r#"{"error":{"message":"boom","type":"server_error"}}"#),
            Some((500, ErrorKind::UpstreamServerError))
        );
        assert_eq!(
            cls(r#"{"error":"upstream timed out"}"#),
            Some((504, ErrorKind::UpstreamServerError))
        );
        assert_eq!(cls(r#"{"id":"x","choices":[],"error":null}"#), None);
        assert_eq!(cls(r#"{"id":"x","choices":[{"text":"\"error\""}]}"#), None);
        assert_eq!(cls("[DONE]"), None);
        let e = error_in_body(
            br#"{"error":{"message":"m","code":"rate_limit_exceeded"}}"#,
            Some(&p),
        )
        .unwrap();
        assert!(e.is_retryable());
        assert_eq!(e.provider().map(|p| &**p), Some("up"));
    }
}
