//! The Auth layer: virtual keys.
//!
//! Accepts the key in `Authorization: Bearer <key>` or `x-api-key: <key>`, checks it with a
//! [`KeyValidator`] (the config-backed [`StaticKeys`] by default: SHA-256 hashes compared in
//! constant time), and
//! - answers **401** (`code: invalid_api_key`) for a missing or unknown key,
//! - answers **403** (`code: model_not_allowed`) when the key's model globs do not match
//!   [`ParsedRequest::model`],
//! - otherwise inserts the [`KeyIdentity`] extension, removes every credential header
//!   ([`CREDENTIAL_HEADERS`]) and calls the inner service.
//!
//! On the way back it reports the identity (see [`ext`](crate::ext)): the [`KeyIdentity`] goes
//! on the response's extensions, or on the error's
//! [`context`](crate::error::GatewayError::context) — also on its own 403, so the record of a
//! refusal names the key.
//!
//! The raw key never appears in logs, metrics or errors: it travels as a [`Secret`] from the
//! header to the validator and is dropped there.
//!
//! Auth sits after Parse (it reads the model) and inside the UsageMeter (so refusals get
//! usage records). Without the [`ParsedRequest`] extension (Parse missing or placed inside
//! Auth) it fails closed: every request is answered 500 `misconfigured_stack` naming
//! `ParseLayer`, whether or not the key has a model allow-list (so a wrong order shows on the
//! first request, not on the first restricted key). Switch it off explicitly with
//! [`AuthLayer::disabled`] (which still needs Parse).
//!
//! To refuse a request without a valid key before its body is read, put
//! [`AuthLayer::key_check`] in front of Parse (see [`KeyCheck`]): the key is then validated
//! once, from the headers, and Auth only checks the model allow-list.
//!
//! ```
//! use tollgate::auth::{AuthLayer, KeyEntry, StaticKeys, hash_key};
//! use tollgate::ratelimit::Limits;
//!
//! // Config holds the hash; `hash_key` prints it for a new key.
//! let hash = hash_key("sk-team-a-secret");
//! let keys = StaticKeys::from_entries([KeyEntry::from_hash("team-a", &hash)?
//!     .tenant("acme")
//!     .models(["gpt-4o*", "claude-*"])
//!     .limits(Limits::new().requests_per_minute(600).usd_per_day(25.0))])?;
//! let auth = AuthLayer::new(keys);
//! let local = AuthLayer::disabled();
//! # let _ = (auth, local);
//! # Ok::<(), tollgate::error::GatewayError>(())
//! ```

mod future;
mod keys;
mod layer;
mod precheck;

use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, Response};
use tower::Service;

pub use future::AuthFuture;
pub use keys::{
    ANONYMOUS_KEY_ID, KeyEntry, KeyIdentity, KeyValidator, StaticKeys, ValidateFuture, glob_match,
    hash_key,
};
pub use layer::AuthLayer;
pub use precheck::{KeyCheck, KeyCheckFuture, KeyCheckLayer};
pub(crate) use precheck::{PreAuth, refused_early};

use crate::body::Body;
use crate::error::{ErrorKind, GatewayError};
use crate::order::{self, Checked};
use crate::provider::CREDENTIAL_HEADERS;
use crate::request::ParsedRequest;
use crate::secret::Secret;

/// Counter: requests refused by Auth, labelled `reason` (`missing_key`, `unknown_key`,
/// `model_not_allowed`).
pub const AUTH_REFUSED_TOTAL: &str = crate::metrics::AUTH_REFUSALS;

/// Authenticates requests; see the [module docs](self).
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    validator: Option<std::sync::Arc<dyn KeyValidator>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("inner", &self.inner)
            .field("enabled", &self.validator.is_some())
            .finish()
    }
}

impl<S> Auth<S> {
    /// Wrap `inner`, checking keys with `validator`.
    pub fn new(inner: S, validator: impl KeyValidator) -> Self {
        tower::Layer::layer(&AuthLayer::new(validator), inner)
    }
    /// The layer (configuration only).
    pub fn layer(validator: impl KeyValidator) -> AuthLayer {
        AuthLayer::new(validator)
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

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError> + Clone,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = AuthFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Err(e) = order::enter(req.extensions_mut(), Checked::Auth) {
            return AuthFuture::failed(e);
        }
        // KeyCheck (in front of Parse) already refused it: the body was never read.
        let pre = req.extensions_mut().remove::<PreAuth>();
        if let Some(PreAuth::Refused { reason, message }) = pre {
            refused(reason);
            return AuthFuture::failed(unauthorized(message));
        }
        // Fail closed: without ParsedRequest the per-key model allow-list cannot be checked.
        if req.extensions().get::<ParsedRequest>().is_none() {
            static LOGGED: AtomicBool = AtomicBool::new(false);
            return AuthFuture::failed(GatewayError::misconfigured_stack(
                "AuthLayer",
                "ParseLayer",
                "ParsedRequest",
                &LOGGED,
            ));
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let key = self
            .validator
            .is_some()
            .then(|| credential(req.headers()))
            .flatten();
        strip_credentials(req.headers_mut());
        let Some(validator) = &self.validator else {
            let id = req
                .extensions()
                .get::<KeyIdentity>()
                .cloned()
                .unwrap_or_else(KeyIdentity::anonymous);
            return match admit(Some(id), req) {
                Ok((req, id)) => AuthFuture::calling(inner.call(req), id),
                Err(e) => AuthFuture::failed(e),
            };
        };
        match (key, pre) {
            // KeyCheck validated this key already.
            (_, Some(PreAuth::Admitted(id))) => match admit(Some(id), req) {
                Ok((req, id)) => AuthFuture::calling(inner.call(req), id),
                Err(e) => AuthFuture::failed(e),
            },
            (None, _) => {
                refused("missing_key");
                AuthFuture::failed(unauthorized(MISSING_KEY))
            }
            (Some(key), _) => AuthFuture::validating(validator.validate(key), req, inner),
        }
    }
}

/// The 401 message for a request without a key.
pub(crate) const MISSING_KEY: &str =
    "Missing API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.";
/// The 401 message for a key the validator does not know.
pub(crate) const UNKNOWN_KEY: &str =
    "Incorrect API key provided. Check the key, or ask the gateway's operator for one.";

/// The presented key: `Authorization: Bearer <key>` first, then `x-api-key`.
pub(crate) fn credential(headers: &HeaderMap) -> Option<Secret> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if let Some((scheme, rest)) = v.split_once(' ') {
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
                return Some(Secret::new(rest));
            }
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(Secret::new)
}

fn strip_credentials(headers: &mut HeaderMap) {
    crate::provider::remove_named(headers, &CREDENTIAL_HEADERS);
}

pub(crate) fn refused(reason: &'static str) {
    metrics::counter!(AUTH_REFUSED_TOTAL, "reason" => reason).increment(1);
    tracing::debug!(reason, "request refused by auth");
}

pub(crate) fn unauthorized(message: &'static str) -> GatewayError {
    GatewayError::new(ErrorKind::Unauthorized, message).with_code("invalid_api_key")
}

/// Turn a validation result into the admitted request (identity inserted) and the identity to
/// report on the way back, or the refusal (with the identity in its context, when known).
pub(crate) fn admit<B>(
    id: Option<KeyIdentity>,
    mut req: Request<B>,
) -> Result<(Request<B>, KeyIdentity), GatewayError> {
    let Some(id) = id else {
        refused("unknown_key");
        return Err(unauthorized(UNKNOWN_KEY));
    };
    if let Some(parsed) = req.extensions().get::<ParsedRequest>() {
        if !id.allows_model(&parsed.model) {
            refused("model_not_allowed");
            tracing::debug!(key_id = %id.key_id, model = %parsed.model, "model not allowed");
            let mut e = GatewayError::new(
                ErrorKind::Forbidden,
                format!(
                    "The key '{}' may not use the model '{}'.",
                    id.name,
                    crate::request::prefix(&parsed.model)
                ),
            )
            .with_code("model_not_allowed")
            .with_param("model");
            e.context_mut().key = Some(id);
            return Err(e);
        }
    }
    tracing::trace!(key_id = %id.key_id, "authenticated");
    req.extensions_mut().insert(id.clone());
    Ok((req, id))
}
