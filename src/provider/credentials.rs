//! Short-lived upstream credentials: a bearer token fetched from a token endpoint, cached, and
//! refreshed ahead of expiry — for providers that take no static API key (Azure OpenAI with
//! Microsoft Entra ID, Google Vertex AI with a service account).
//!
//! A [`TokenSource`] holds one provider's current token and its [`TokenFetcher`]:
//! - **Cached.** Every request reads the current token without a lock (an `ArcSwap` load).
//! - **Refreshed ahead of expiry.** A token of lifetime `L` is refreshed once `min(L/5, 5 min)`
//!   of it is left (an hour's token after 55 minutes; a 2 s token after 1.6 s), by one
//!   background task while requests keep using it; it is used until `min(L/10, 30 s)` before
//!   it expires, so it does not expire on the way.
//! - **Single-flight.** One fetch at a time: when there is no usable token, the first request
//!   fetches and the others wait for it (whatever runtime they run on); a failed fetch is shared
//!   with the requests that waited for it and answered for [`RETRY_AFTER_FAILURE`] without a
//!   new fetch, so a token endpoint that is down is not called once per request.
//! - **Failures are clear.** A refused fetch (the endpoint's 400, 401 or 403: wrong secret,
//!   unknown client, bad signature) is 502 `upstream_auth_failed`; an endpoint that cannot be
//!   reached, is slow (over [`TOKEN_ENDPOINT_TIMEOUT`]), answers 429 or 5xx, or gives no usable
//!   token is 503 `upstream_auth_unavailable` with `Retry-After`. Both name the provider, the
//!   token endpoint and its status (and the OAuth `error` code, e.g. `invalid_client`), never the
//!   secret, the assertion or a token. The next request after the wait tries again.
//! - **No secret leaves.** Client secrets, private keys and tokens are [`Secret`]s or sensitive
//!   header values; the token endpoint's answer body is never logged or echoed (only its OAuth
//!   `error` code); an upstream error that quotes the token has it replaced with `[redacted]`.
//!
//! - **Kept across reloads.** [`TokenSource::shared`] (what the config uses) returns the live
//!   source of the same provider and credentials, so a reload that keeps them keeps the token.
//!
//! Fetches are counted in [`UPSTREAM_TOKEN_FETCHES`](crate::metrics::UPSTREAM_TOKEN_FETCHES)
//! (labels `provider`, `outcome` = `ok` | `refused` | `unavailable`).
//!
//! Two fetchers are built in: [`EntraClientCredentials`] (OAuth 2.0 client credentials at
//! `{authority}/{tenant}/oauth2/v2.0/token`) and [`ServiceAccountJwt`] (a Google service
//! account: an RS256-signed JWT exchanged at the account's `token_uri`). Implement
//! [`TokenFetcher`] for any other.
//!
//! ```no_run
//! use tollgate::provider::credentials::{EntraClientCredentials, TokenSource};
//! use tollgate::provider::openai::OpenAiProvider;
//! use tollgate::secret::Secret;
//!
//! let entra = EntraClientCredentials::new(
//!     "https://login.microsoftonline.com",
//!     "my-tenant-id",
//!     "my-client-id",
//!     Secret::new(std::env::var("AZURE_CLIENT_SECRET")?),
//!     "https://cognitiveservices.azure.com/.default",
//! )?;
//! let azure = OpenAiProvider::builder("azure", "https://example.openai.azure.com/openai/v1")
//!     .bearer_token(TokenSource::new("azure", entra))
//!     .build()?;
//! # let _ = azure;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::Full;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::error::{ErrorKind, GatewayError};
use crate::provider::BoxFuture;
use crate::provider::openai::{client_for, error_chain, read_capped};
use crate::secret::Secret;

/// The longest a token endpoint may take to answer (connect included).
pub const TOKEN_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a failed fetch is answered without a new one (and the `Retry-After` it carries).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// A token is refreshed once this much (at most) of its lifetime is left.
const MAX_REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// A token is not used in the last this-much (at most) of its lifetime.
const MAX_EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// The most of a token endpoint's answer that is read.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// The OAuth scope of Azure OpenAI (Azure AI services) with Entra ID.
pub const AZURE_COGNITIVE_SERVICES_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// The OAuth scope of Vertex AI (all of Google Cloud).
pub const GOOGLE_CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// A token as a token endpoint gave it.
#[derive(Debug, Clone)]
pub struct FetchedToken {
    /// The access token.
    pub access_token: Secret,
    /// Its lifetime from when it was asked for.
    pub expires_in: Duration,
}

/// Why a token endpoint gave no token. Carries no secret, assertion or token: only the status
/// and the OAuth `error` code of a refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The endpoint answered a non-2xx status, with the OAuth `error` code if it sent one.
    #[error("answered {status}{}", code.as_ref().map_or_else(String::new, |c| format!(" ({c})")))]
    Status {
        /// The endpoint's status.
        status: StatusCode,
        /// Its OAuth `error` code (`invalid_client`, `invalid_grant`, …).
        code: Option<String>,
    },
    /// The endpoint could not be reached (connect, TLS, a broken answer).
    #[error("could not be reached: {0}")]
    Unreachable(String),
    /// The endpoint did not answer within [`TOKEN_ENDPOINT_TIMEOUT`].
    #[error("did not answer within {0:?}")]
    Timeout(Duration),
    /// The endpoint's 2xx answer held no usable token.
    #[error("gave no usable token: {0}")]
    BadAnswer(&'static str),
    /// The request could not be made (e.g. the assertion could not be signed).
    #[error("was not asked: {0}")]
    NotAsked(&'static str),
}

impl TokenError {
    /// Whether the endpoint refused the credentials (400, 401, 403): a configuration problem,
    /// not a passing one.
    pub fn is_refusal(&self) -> bool {
        matches!(self, TokenError::Status { status, .. }
            if status.is_client_error() && *status != StatusCode::TOO_MANY_REQUESTS
                && *status != StatusCode::REQUEST_TIMEOUT)
    }
}

/// A bad credential setting (names the setting, never its value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CredentialsError(pub String);

/// Fetches a fresh token from a token endpoint.
pub trait TokenFetcher: Send + Sync + 'static {
    /// The token endpoint's URL, named in errors and logs (it must hold no secret).
    fn endpoint(&self) -> &str;
    /// Ask for a new token.
    fn fetch(&self) -> BoxFuture<Result<FetchedToken, TokenError>>;
    /// A digest of everything that decides which token is issued (endpoint, client, secret or
    /// key, scope), for [`TokenSource::shared`]; `None` (the default): never shared.
    fn identity(&self) -> Option<[u8; 32]> {
        None
    }
}

/// A cached token: the `Authorization` value to send, and when to stop using it.
pub struct BearerToken {
    header: HeaderValue,
    token: Secret,
    refresh_at: Instant,
    valid_until: Instant,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerToken")
            .field("token", &self.token)
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

impl BearerToken {
    fn new(fetched: FetchedToken, asked: Instant) -> Result<BearerToken, TokenError> {
        let life = fetched.expires_in;
        if life.is_zero() {
            return Err(TokenError::BadAnswer("expires_in is not positive"));
        }
        let mut header = HeaderValue::try_from(format!("Bearer {}", fetched.access_token.expose()))
            .map_err(|_| TokenError::BadAnswer("the access token is not a valid header value"))?;
        header.set_sensitive(true);
        Ok(BearerToken {
            header,
            token: fetched.access_token,
            refresh_at: asked + life - (life / 5).min(MAX_REFRESH_AHEAD),
            valid_until: asked + life - (life / 10).min(MAX_EXPIRY_MARGIN),
        })
    }

    /// `Bearer <token>`, marked sensitive.
    pub fn header_value(&self) -> &HeaderValue {
        &self.header
    }

    /// Replace the token in `e` with `[redacted]`.
    pub fn scrub(&self, e: GatewayError) -> GatewayError {
        e.redact(self.token.expose())
    }
}

/// The last failed fetch, shared with the requests that waited for it.
struct Failure {
    at: Instant,
    error: GatewayError,
}

struct Inner {
    provider: Arc<str>,
    fetcher: Box<dyn TokenFetcher>,
    current: ArcSwapOption<BearerToken>,
    /// Held by the one fetch in flight.
    refresh: Arc<tokio::sync::Mutex<Option<Failure>>>,
}

/// One provider's cached, self-refreshing bearer token; see the module docs. Cheap to clone
/// (the clones share the token).
#[derive(Clone)]
pub struct TokenSource(Arc<Inner>);

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("provider", &self.0.provider)
            .field("endpoint", &self.0.fetcher.endpoint())
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// The token source of provider `provider` (named in errors, logs and metrics).
    pub fn new(provider: impl Into<Arc<str>>, fetcher: impl TokenFetcher) -> TokenSource {
        TokenSource(Arc::new(Inner {
            provider: provider.into(),
            fetcher: Box::new(fetcher),
            current: ArcSwapOption::empty(),
            refresh: Arc::new(tokio::sync::Mutex::new(None)),
        }))
    }

    /// Like [`new`](Self::new), but while a source with the same provider name and fetcher
    /// [`identity`](TokenFetcher::identity) is alive, that one (and its token) is returned: a
    /// config reload that keeps a provider's credentials keeps its token instead of fetching
    /// a new one.
    pub fn shared(provider: impl Into<Arc<str>>, fetcher: impl TokenFetcher) -> TokenSource {
        type Live = Vec<([u8; 32], Arc<str>, Weak<Inner>)>;
        static LIVE: Mutex<Live> = Mutex::new(Vec::new());
        let provider = provider.into();
        let Some(id) = fetcher.identity() else {
            return TokenSource::new(provider, fetcher);
        };
        let mut live = LIVE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        live.retain(|(_, _, w)| w.strong_count() > 0);
        let found = live
            .iter()
            .find(|(i, p, _)| *i == id && *p == provider)
            .and_then(|(_, _, w)| w.upgrade());
        if let Some(inner) = found {
            return TokenSource(inner);
        }
        let source = TokenSource::new(provider.clone(), fetcher);
        live.push((id, provider, Arc::downgrade(&source.0)));
        source
    }

    /// The token endpoint's URL.
    pub fn endpoint(&self) -> &str {
        self.0.fetcher.endpoint()
    }

    /// A usable token: the cached one (a background refresh starts when it is due), else a
    /// fresh one (one fetch for all the requests that ask meanwhile).
    pub async fn token(&self) -> Result<Arc<BearerToken>, GatewayError> {
        let now = Instant::now();
        if let Some(t) = self.0.current.load_full() {
            if now < t.refresh_at {
                return Ok(t);
            }
            if now < t.valid_until {
                self.refresh_in_background();
                return Ok(t);
            }
        }
        self.wait_for_token().await
    }

    /// Forget `used` (the upstream refused it, e.g. revoked early): the next request fetches
    /// a new one. A token fetched meanwhile is kept.
    pub fn invalidate(&self, used: &Arc<BearerToken>) {
        let _ = self.0.current.compare_and_swap(&Some(used.clone()), None);
    }

    /// Start one refresh while the current token is still usable, unless one is running or
    /// the last one failed less than [`RETRY_AFTER_FAILURE`] ago.
    fn refresh_in_background(&self) {
        let Ok(mut guard) = self.0.refresh.clone().try_lock_owned() else {
            return;
        };
        if guard
            .as_ref()
            .is_some_and(|f| f.at.elapsed() < RETRY_AFTER_FAILURE)
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            // A failure is logged and kept; requests use the current token until it expires.
            let _ = this.fetch(&mut guard).await;
        });
    }

    /// No usable token: wait for the fetch in flight, or fetch.
    async fn wait_for_token(&self) -> Result<Arc<BearerToken>, GatewayError> {
        let mut guard = self.0.refresh.lock().await;
        let now = Instant::now();
        if let Some(t) = self.0.current.load_full() {
            if now < t.valid_until {
                return Ok(t);
            }
        }
        if let Some(f) = guard.as_ref() {
            let wait = (f.at + RETRY_AFTER_FAILURE).saturating_duration_since(now);
            if !wait.is_zero() {
                let e = f.error.clone();
                return Err(match e.status() {
                    StatusCode::SERVICE_UNAVAILABLE => e.with_retry_after(wait),
                    _ => e,
                });
            }
        }
        self.fetch(&mut guard).await
    }

    /// One fetch, holding the refresh lock: store the token, or record the failure.
    async fn fetch(&self, failure: &mut Option<Failure>) -> Result<Arc<BearerToken>, GatewayError> {
        let provider = &self.0.provider;
        let endpoint = self.0.fetcher.endpoint();
        let asked = Instant::now();
        let fetched = tokio::time::timeout(TOKEN_ENDPOINT_TIMEOUT, self.0.fetcher.fetch())
            .await
            .unwrap_or(Err(TokenError::Timeout(TOKEN_ENDPOINT_TIMEOUT)))
            .and_then(|f| BearerToken::new(f, asked));
        match fetched {
            Ok(t) => {
                let t = Arc::new(t);
                self.0.current.store(Some(t.clone()));
                *failure = None;
                count_fetch(provider, "ok");
                tracing::debug!(
                    provider = %provider,
                    endpoint,
                    valid_for_ms = t.valid_until.saturating_duration_since(asked).as_millis() as u64,
                    "fetched an upstream access token"
                );
                Ok(t)
            }
            Err(e) => {
                let outcome = if e.is_refusal() {
                    "refused"
                } else {
                    "unavailable"
                };
                count_fetch(provider, outcome);
                tracing::warn!(
                    provider = %provider,
                    endpoint,
                    error = %e,
                    "could not get an upstream access token"
                );
                let error = token_error(provider, endpoint, &e);
                *failure = Some(Failure {
                    at: Instant::now(),
                    error: error.clone(),
                });
                Err(error)
            }
        }
    }
}

fn count_fetch(provider: &Arc<str>, outcome: &'static str) {
    metrics::counter!(
        crate::metrics::UPSTREAM_TOKEN_FETCHES,
        "provider" => provider.to_string(),
        "outcome" => outcome
    )
    .increment(1);
}

/// The client's error for a failed fetch: 502 `upstream_auth_failed` for a refusal, else 503
/// `upstream_auth_unavailable` with `Retry-After`.
fn token_error(provider: &Arc<str>, endpoint: &str, e: &TokenError) -> GatewayError {
    let message = format!(
        "could not get an access token for upstream {provider}: the token endpoint {endpoint} {e}"
    );
    let err = if e.is_refusal() {
        GatewayError::new(ErrorKind::UpstreamServerError, message)
            .with_status(StatusCode::BAD_GATEWAY)
            .with_code("upstream_auth_failed")
    } else {
        GatewayError::new(ErrorKind::UpstreamConnect, message)
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .with_code("upstream_auth_unavailable")
            .with_retry_after(RETRY_AFTER_FAILURE)
    };
    err.with_provider(provider.clone())
}

// ---------------------------------------------------------------------------------------------
// The token endpoint's wire format (RFC 6749 §5).

/// A successful token answer.
#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    /// A number (RFC 6749), or a string of digits (Entra's v1 endpoint).
    expires_in: Option<NumberOrString>,
    token_type: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(f64),
    String(String),
}

/// An error answer: only its `error` code is kept.
#[derive(serde::Deserialize)]
struct ErrorAnswer {
    error: Option<String>,
}

/// The OAuth `error` code of an error answer, when it is a short code (never free text).
fn oauth_error_code(body: &[u8]) -> Option<String> {
    let code = serde_json::from_slice::<ErrorAnswer>(body).ok()?.error?;
    let plain = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    plain.then_some(code)
}

fn parse_token_answer(body: &[u8]) -> Result<FetchedToken, TokenError> {
    let a: TokenAnswer = serde_json::from_slice(body)
        .map_err(|_| TokenError::BadAnswer("the answer is not JSON"))?;
    let token = a
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or(TokenError::BadAnswer("no access_token"))?;
    if a.token_type
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return Err(TokenError::BadAnswer("token_type is not Bearer"));
    }
    let secs = match a.expires_in {
        Some(NumberOrString::Number(n)) => n,
        Some(NumberOrString::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| TokenError::BadAnswer("expires_in is not a number"))?,
        None => return Err(TokenError::BadAnswer("no expires_in")),
    };
    let expires_in = Duration::try_from_secs_f64(secs)
        .map_err(|_| TokenError::BadAnswer("expires_in is not positive"))?;
    Ok(FetchedToken {
        access_token: Secret::new(token),
        expires_in,
    })
}

/// POST `form` (`application/x-www-form-urlencoded`, it holds the credential) to `uri`.
async fn post_form(uri: Uri, form: Bytes) -> Result<FetchedToken, TokenError> {
    let client = client_for(Some(TOKEN_ENDPOINT_TIMEOUT))
        .map_err(|e| TokenError::Unreachable(e.message().to_owned()))?;
    let req = Request::post(uri)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        )
        .header(header::ACCEPT, HeaderValue::from_static("application/json"))
        .header(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("tollgate/", env!("CARGO_PKG_VERSION"))),
        )
        .body(Full::new(form))
        .map_err(|e| TokenError::Unreachable(e.to_string()))?;
    let res = client
        .request(req)
        .await
        .map_err(|e| TokenError::Unreachable(error_chain(&e)))?;
    let (parts, body) = res.into_parts();
    let body = read_capped(body, MAX_TOKEN_ANSWER).await;
    if !parts.status.is_success() {
        return Err(TokenError::Status {
            status: parts.status,
            code: oauth_error_code(&body),
        });
    }
    parse_token_answer(&body)
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_into(&mut out, k);
        out.push('=');
        encode_into(&mut out, v);
    }
    out
}

fn encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
}

/// An absolute `http(s)` URL without a query, as a [`Uri`].
fn endpoint_uri(url: &str, what: &str) -> Result<Uri, CredentialsError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| CredentialsError(format!("{what} `{url}` is not a URL: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(CredentialsError(format!(
            "{what} `{url}` must be an absolute http:// or https:// URL"
        )));
    }
    Ok(uri)
}

// ---------------------------------------------------------------------------------------------
// Microsoft Entra ID: OAuth 2.0 client credentials.

/// Microsoft Entra ID client credentials: `POST {authority}/{tenant}/oauth2/v2.0/token` with
/// `grant_type=client_credentials`, the client id and secret and the scope
/// ([`AZURE_COGNITIVE_SERVICES_SCOPE`] for Azure OpenAI).
#[derive(Debug)]
pub struct EntraClientCredentials {
    endpoint: String,
    uri: Uri,
    /// The form, secret included.
    form: Secret,
}

impl EntraClientCredentials {
    /// Credentials of app `client_id` in `tenant_id`, at `authority`
    /// (`https://login.microsoftonline.com`, or a sovereign cloud's).
    pub fn new(
        authority: &str,
        tenant_id: &str,
        client_id: &str,
        client_secret: Secret,
        scope: &str,
    ) -> Result<EntraClientCredentials, CredentialsError> {
        let plain = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        if !plain(tenant_id) {
            return Err(CredentialsError(format!(
                "tenant_id `{tenant_id}` must be a tenant id or domain (letters, digits, `-`, `.`)"
            )));
        }
        if client_id.trim().is_empty() {
            return Err(CredentialsError("client_id must not be empty".into()));
        }
        if client_secret.expose().is_empty() {
            return Err(CredentialsError("client_secret must not be empty".into()));
        }
        let endpoint = format!(
            "{}/{tenant_id}/oauth2/v2.0/token",
            authority.trim().trim_end_matches('/')
        );
        let uri = endpoint_uri(&endpoint, "the token endpoint")?;
        let form = form_encode(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id.trim()),
            ("client_secret", client_secret.expose()),
            ("scope", scope),
        ]);
        Ok(EntraClientCredentials {
            endpoint,
            uri,
            form: Secret::new(form),
        })
    }
}

impl TokenFetcher for EntraClientCredentials {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn fetch(&self) -> BoxFuture<Result<FetchedToken, TokenError>> {
        let form = Bytes::copy_from_slice(self.form.expose().as_bytes());
        Box::pin(post_form(self.uri.clone(), form))
    }

    fn identity(&self) -> Option<[u8; 32]> {
        let mut h = Sha256::new();
        h.update(b"entra\0");
        h.update(self.endpoint.as_bytes());
        h.update(b"\0");
        h.update(self.form.expose().as_bytes());
        Some(h.finalize().into())
    }
}

// ---------------------------------------------------------------------------------------------
// Google: a service account's signed JWT (RFC 7523).

/// A Google service account, from its JSON key file.
pub struct ServiceAccount {
    client_email: String,
    private_key_id: Option<String>,
    key: ring::signature::RsaKeyPair,
    token_uri: String,
    project_id: Option<String>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// The fields of a service-account key file that are used (the rest is ignored).
#[derive(serde::Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    ty: Option<String>,
    client_email: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
    project_id: Option<String>,
}

impl ServiceAccount {
    /// Read a service-account key file (`"type": "service_account"`, `client_email`,
    /// `private_key` as PEM PKCS#8, `token_uri`). The error names the field, never the key.
    pub fn from_json(json: &[u8]) -> Result<ServiceAccount, CredentialsError> {
        use rustls::pki_types::PrivatePkcs8KeyDer;
        use rustls::pki_types::pem::PemObject as _;
        let f: KeyFile = serde_json::from_slice(json).map_err(|e| {
            // serde's message quotes no value of a string field; the line and column help.
            CredentialsError(format!("not a service-account key file: {e}"))
        })?;
        if let Some(ty) = f.ty.as_deref().filter(|t| *t != "service_account") {
            return Err(CredentialsError(format!(
                "`type` is `{ty}`, not `service_account` (only service-account keys are supported)"
            )));
        }
        let missing = |field: &str| CredentialsError(format!("the key file has no `{field}`"));
        let client_email = f.client_email.ok_or_else(|| missing("client_email"))?;
        let pem = Secret::new(f.private_key.ok_or_else(|| missing("private_key"))?);
        let token_uri = f.token_uri.ok_or_else(|| missing("token_uri"))?;
        endpoint_uri(&token_uri, "token_uri")?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.expose().as_bytes()).map_err(|_| {
            CredentialsError("`private_key` is not a PEM PKCS#8 private key".into())
        })?;
        let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| CredentialsError(format!("`private_key` is not a usable RSA key: {e}")))?;
        Ok(ServiceAccount {
            client_email,
            private_key_id: f.private_key_id,
            key,
            token_uri,
            project_id: f.project_id,
        })
    }

    /// The account's `project_id`, if the file names one.
    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    /// The account's e-mail (its id).
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// A signed assertion for `scope`, issued now, valid for an hour:
    /// `base64url(header).base64url(claims).base64url(RS256 signature)`.
    fn assertion(&self, scope: &str) -> Result<String, TokenError> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut head = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            head["kid"] = serde_json::Value::from(kid.as_str());
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": scope,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + 3600,
        });
        let mut jwt = URL_SAFE_NO_PAD.encode(head.to_string());
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                jwt.as_bytes(),
                &mut sig,
            )
            .map_err(|_| TokenError::NotAsked("the assertion could not be signed"))?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(jwt)
    }
}

/// A Google service account's token: a JWT signed with its key (RS256, `iss` its e-mail,
/// `aud` its `token_uri`, an hour's `exp`) exchanged at its `token_uri`
/// (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`).
#[derive(Debug)]
pub struct ServiceAccountJwt {
    account: Arc<ServiceAccount>,
    uri: Uri,
    scope: String,
}

impl ServiceAccountJwt {
    /// Tokens of `account` for `scope` ([`GOOGLE_CLOUD_PLATFORM_SCOPE`] for Vertex AI).
    pub fn new(
        account: Arc<ServiceAccount>,
        scope: &str,
    ) -> Result<ServiceAccountJwt, CredentialsError> {
        let uri = endpoint_uri(&account.token_uri, "token_uri")?;
        Ok(ServiceAccountJwt {
            account,
            uri,
            scope: scope.to_owned(),
        })
    }
}

impl TokenFetcher for ServiceAccountJwt {
    fn endpoint(&self) -> &str {
        &self.account.token_uri
    }

    fn fetch(&self) -> BoxFuture<Result<FetchedToken, TokenError>> {
        let form = self.account.assertion(&self.scope).map(|jwt| {
            Bytes::from(form_encode(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", &jwt),
            ]))
        });
        let uri = self.uri.clone();
        Box::pin(async move { post_form(uri, form?).await })
    }

    fn identity(&self) -> Option<[u8; 32]> {
        let mut h = Sha256::new();
        for part in [
            "service_account",
            &self.account.token_uri,
            &self.account.client_email,
            &self.scope,
        ] {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
        h.update(self.account.key.public().as_ref());
        Some(h.finalize().into())
    }
}

#[cfg(test)]
mod tests;
