//! The OpenAI-compatible adapter: a pass-through [`Provider`] for OpenAI, Azure OpenAI (v1 API),
//! vLLM, llama.cpp, Ollama, Groq, Together, OpenRouter and every other server that speaks
//! OpenAI's wire format.
//!
//! The request body is [`ParsedRequest::upstream_body`](crate::request::ParsedRequest::upstream_body)
//! (the model replaced, every other field byte-for-byte); a 2xx answer streams straight through,
//! never buffered; a non-2xx answer is read (at most `MAX_ERROR_BODY` bytes) and classified with
//! [`upstream_error`] (the upstream's `message`, `type`, `code` and `param` pass through, the
//! credentials this adapter sent scrubbed); a connect or transport failure is `connect_error`.
//! Headers follow the provider's [`HeaderPolicy`]: only its allow-list of client headers goes
//! upstream, only its allow-list of upstream headers comes back.
//!
//! All adapters share one pooled hyper-util client per distinct connect timeout (HTTP/1.1 and
//! HTTP/2 by ALPN, `http` and `https`, rustls on `ring` with the webpki roots).
//!
//! ```
//! use tollgate::provider::openai::{AuthStyle, OpenAiProvider};
//! use tollgate::secret::Secret;
//!
//! let openai = OpenAiProvider::builder("openai", "https://api.openai.com/v1")
//!     .api_key(Secret::new("sk-..."))
//!     .build()?;
//! let azure = OpenAiProvider::builder("azure", "https://example.openai.azure.com/openai/v1")
//!     .api_key(Secret::new("..."))
//!     .auth(AuthStyle::header("api-key")?)
//!     .query("api-version=preview")
//!     .build()?;
//! let local = OpenAiProvider::builder("vllm", "http://127.0.0.1:8000/v1").build()?;
//! # let _ = (openai, azure, local);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{Body, BoxError, ReadCoalesce};
use crate::error::{ErrorKind, GatewayError};
use crate::provider::credentials::{BearerToken, TokenSource};
use crate::provider::headers::HeaderPolicy;
use crate::provider::{BoxFuture, Provider, UpstreamCall, connect_error, upstream_error};
use crate::request::Api;
use crate::secret::Secret;

/// The most of an upstream error body that is read (the rest is dropped).
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;

/// How many distinct connect timeouts get their own pooled client.
const MAX_CACHED_CLIENTS: usize = 32;

/// How the upstream API key is sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>` (OpenAI and most compatible servers).
    #[default]
    Bearer,
    /// `<name>: <key>` (Azure OpenAI's `api-key`).
    Header(HeaderName),
}

impl AuthStyle {
    /// A named-header style, e.g. `AuthStyle::header("api-key")`.
    pub fn header(name: &str) -> Result<AuthStyle, OpenAiConfigError> {
        HeaderName::try_from(name)
            .map(AuthStyle::Header)
            .map_err(|_| OpenAiConfigError(format!("`{name}` is not a valid header name")))
    }
}

/// A bad [`OpenAiProvider`] configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("openai provider config: {0}")]
pub struct OpenAiConfigError(String);

/// Builder of [`OpenAiProvider`].
#[derive(Debug, Clone)]
pub struct OpenAiProviderBuilder {
    name: Arc<str>,
    base_url: String,
    api_key: Option<Secret>,
    auth: AuthStyle,
    query: Option<String>,
    headers: Vec<(String, Secret)>,
    policy: HeaderPolicy,
    responses: bool,
    token: Option<TokenSource>,
}

impl OpenAiProviderBuilder {
    /// Authenticate with a short-lived bearer token from `source` (Azure OpenAI with
    /// Microsoft Entra ID, see [`credentials`](crate::provider::credentials)) instead of an
    /// API key: every call sends `Authorization: Bearer <token>`. Refused together with
    /// [`api_key`](Self::api_key).
    pub fn bearer_token(mut self, source: TokenSource) -> Self {
        self.token = Some(source);
        self
    }

    /// Whether the upstream serves the Responses API (`POST {base_url}/responses`): requests
    /// to `/v1/responses` are then passed through (model replaced) instead of translated
    /// through chat completions. Default `false`.
    pub fn responses(mut self, native: bool) -> Self {
        self.responses = native;
        self
    }

    /// Which headers cross between client and upstream (default [`HeaderPolicy::default`]).
    pub fn header_policy(mut self, policy: HeaderPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The upstream API key (optional: local servers need none).
    pub fn api_key(mut self, key: Secret) -> Self {
        self.api_key = Some(key);
        self
    }

    /// How the key is sent (default [`AuthStyle::Bearer`]).
    pub fn auth(mut self, style: AuthStyle) -> Self {
        self.auth = style;
        self
    }

    /// A query string added to every request, without the `?` (Azure: `api-version=...`).
    pub fn query(mut self, query: impl Into<String>) -> Self {
        let q: String = query.into();
        let q = q.trim_start_matches('?').to_owned();
        self.query = (!q.is_empty()).then_some(q);
        self
    }

    /// An extra header sent with every request (its value is treated as sensitive).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Arc<str>>) -> Self {
        self.headers.push((name.into(), Secret::new(value)));
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<OpenAiProvider, OpenAiConfigError> {
        let name = self.name;
        let err = |m: String| OpenAiConfigError(format!("provider `{name}`: {m}"));
        let base = self.base_url.trim().trim_end_matches('/').to_owned();
        let parsed: Uri = base
            .parse()
            .map_err(|e| err(format!("base_url `{base}` is not a URL: {e}")))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
            return Err(err(format!(
                "base_url `{base}` must be an absolute http:// or https:// URL"
            )));
        }
        if parsed.query().is_some() {
            return Err(err(format!(
                "base_url `{base}` must not carry a query; use `query` instead"
            )));
        }
        if !base.ends_with("/v1") {
            tracing::warn!(provider = %name, base_url = %base, "OpenAI-compatible base_url does not end in /v1");
        }
        let uri_for = |api: Api| -> Result<Uri, OpenAiConfigError> {
            let mut s = format!("{base}{}", api.openai_path());
            if let Some(q) = &self.query {
                s.push('?');
                s.push_str(q);
            }
            s.parse()
                .map_err(|e| err(format!("`{s}` is not a valid request URL: {e}")))
        };
        let uris = [
            uri_for(Api::ChatCompletions)?,
            uri_for(Api::Completions)?,
            uri_for(Api::Embeddings)?,
            uri_for(Api::Moderations)?,
            uri_for(Api::ImageGenerations)?,
            uri_for(Api::AudioSpeech)?,
            uri_for(Api::AudioTranscriptions)?,
            uri_for(Api::AudioTranslations)?,
            uri_for(Api::Responses)?,
        ];
        if self.token.is_some() && self.api_key.is_some() {
            return Err(err(
                "an API key and a bearer-token source are exclusive".to_owned()
            ));
        }
        let auth = match &self.api_key {
            None => None,
            Some(key) => {
                let (name, value) = match &self.auth {
                    AuthStyle::Bearer => {
                        (header::AUTHORIZATION, format!("Bearer {}", key.expose()))
                    }
                    AuthStyle::Header(h) => (h.clone(), key.expose().to_owned()),
                };
                let mut value = HeaderValue::try_from(value)
                    .map_err(|_| err("the API key is not a valid header value".to_owned()))?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            let k = HeaderName::try_from(k.as_str())
                .map_err(|_| err(format!("`{k}` is not a valid header name")))?;
            let mut v = HeaderValue::try_from(v.expose())
                .map_err(|_| err(format!("the value of header `{k}` is not valid")))?;
            v.set_sensitive(true);
            headers.append(k, v);
        }
        // Build the TLS config now, so a broken TLS setup fails at start, not on a request.
        tls_config().map_err(err)?;
        let mut sent = headers.clone();
        if let Some((k, v)) = &auth {
            sent.insert(k.clone(), v.clone());
        }
        Ok(OpenAiProvider {
            name,
            base_url: Arc::from(base),
            uris,
            auth,
            headers,
            policy: Arc::new(self.policy.with_secrets_of(&sent)),
            responses: self.responses,
            token: self.token,
        })
    }
}

/// The OpenAI-compatible pass-through adapter (kind `"openai"`).
pub struct OpenAiProvider {
    name: Arc<str>,
    base_url: Arc<str>,
    /// Request URLs of chat, text completions, embeddings, moderations, images, speech,
    /// transcriptions, translations and responses (query included).
    uris: [Uri; 9],
    auth: Option<(HeaderName, HeaderValue)>,
    headers: HeaderMap,
    policy: Arc<HeaderPolicy>,
    /// Serves the Responses API natively.
    responses: bool,
    /// Short-lived bearer tokens instead of a key.
    token: Option<TokenSource>,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("auth", &self.auth.as_ref().map(|(h, _)| h))
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// Start building a provider called `name` (used in metrics and errors) at `base_url`
    /// (normally ending in `/v1`; the API path, e.g. `/chat/completions`, is appended).
    pub fn builder(
        name: impl Into<Arc<str>>,
        base_url: impl Into<String>,
    ) -> OpenAiProviderBuilder {
        OpenAiProviderBuilder {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            auth: AuthStyle::Bearer,
            query: None,
            headers: Vec::new(),
            policy: HeaderPolicy::default(),
            responses: false,
            token: None,
        }
    }

    /// The base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn uri(&self, api: Api) -> Result<&Uri, GatewayError> {
        match api {
            Api::ChatCompletions => Ok(&self.uris[0]),
            Api::Completions => Ok(&self.uris[1]),
            Api::Embeddings => Ok(&self.uris[2]),
            Api::Moderations => Ok(&self.uris[3]),
            Api::ImageGenerations => Ok(&self.uris[4]),
            Api::AudioSpeech => Ok(&self.uris[5]),
            Api::AudioTranscriptions => Ok(&self.uris[6]),
            Api::AudioTranslations => Ok(&self.uris[7]),
            Api::Responses if self.responses => Ok(&self.uris[8]),
            // Dispatch translates `/v1/messages` to chat completions for this adapter.
            Api::Messages | Api::CountTokens | Api::Responses => Err(GatewayError::bad_request(
                format!(
                    "the OpenAI-compatible provider does not serve {}",
                    api.as_str()
                ),
                None,
            )
            .with_code("unsupported_endpoint")),
        }
    }

    fn request(
        &self,
        call: &UpstreamCall,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, GatewayError> {
        let mut req = Request::post(self.uri(call.parsed.api)?.clone())
            .body(Full::new(body))
            .map_err(|e| {
                GatewayError::internal(format!("could not build upstream request: {e}"))
            })?;
        let h = req.headers_mut();
        let api = call.parsed.api;
        // An audio upload keeps its own content type: the boundary the body is cut by.
        let content_type = match call.headers.get(header::CONTENT_TYPE) {
            Some(ct) if api.is_multipart() => ct.clone(),
            _ => HeaderValue::from_static("application/json"),
        };
        h.insert(header::CONTENT_TYPE, content_type);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(match api {
                _ if call.parsed.stream => "text/event-stream",
                Api::AudioSpeech => "*/*",
                _ => "application/json",
            }),
        );
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("tollgate/", env!("CARGO_PKG_VERSION"))),
        );
        self.policy.copy_forwarded(&call.headers, h);
        for (k, v) in &self.headers {
            h.append(k.clone(), v.clone());
        }
        if let Some((k, v)) = &self.auth {
            h.insert(k.clone(), v.clone());
        }
        Ok(req)
    }
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn serves_openai_surface(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "openai"
    }

    fn speaks_responses(&self) -> bool {
        self.responses
    }

    fn call(&self, call: UpstreamCall) -> BoxFuture<Result<Response<Body>, GatewayError>> {
        let prepared = call
            .parsed
            .upstream_body(&call.upstream_model)
            .and_then(|body| self.request(&call, body))
            .and_then(|req| Ok((req, client_for(call.connect_timeout)?)));
        let name = self.name.clone();
        let policy = self.policy.clone();
        let stream = call.parsed.stream;
        let source = self.token.clone();
        Box::pin(async move {
            let (mut req, client) = prepared?;
            let token = match &source {
                Some(s) => Some(with_bearer(s, &mut req).await?),
                None => None,
            };
            let res = client
                .request(req)
                .await
                .map_err(|e| connect_error(&name, error_chain(&e)))?;
            let (mut parts, body) = res.into_parts();
            if parts.status.is_success() {
                policy.filter_response(&mut parts.headers);
                return Ok(Response::from_parts(
                    parts,
                    success_body(body, &name, stream),
                ));
            }
            let bytes = read_capped(body, MAX_ERROR_BODY).await;
            let e = upstream_error(parts.status, &parts.headers, &bytes, &name);
            Err(refused_token(
                source.as_ref(),
                token.as_ref(),
                policy.scrub(e),
            ))
        })
    }
}

/// Put `source`'s current token on `req` (`Authorization: Bearer`, sensitive); the token is
/// returned for [`refused_token`].
pub(crate) async fn with_bearer<B>(
    source: &TokenSource,
    req: &mut Request<B>,
) -> Result<Arc<BearerToken>, GatewayError> {
    let token = source.token().await?;
    req.headers_mut()
        .insert(header::AUTHORIZATION, token.header_value().clone());
    Ok(token)
}

/// An upstream's error to a call made with `token`: the token scrubbed from it, and forgotten
/// when the upstream answered 401 (revoked or expired early: the next call fetches a new one).
pub(crate) fn refused_token(
    source: Option<&TokenSource>,
    token: Option<&Arc<BearerToken>>,
    e: GatewayError,
) -> GatewayError {
    let (Some(source), Some(token)) = (source, token) else {
        return e;
    };
    if e.upstream_status_code() == Some(401) {
        source.invalidate(token);
    }
    token.scrub(e)
}

/// The body of a 2xx upstream answer, as the stack's [`Body`]: a transport failure becomes an
/// [`ErrorKind::UpstreamProtocol`] error naming the provider. A stream is read in batches
/// ([`ReadCoalesce`]): after the first event (at once), the SSE events of one upstream read
/// travel up the stack as one frame and leave in one write.
pub(crate) fn success_body(body: hyper::body::Incoming, name: &Arc<str>, stream: bool) -> Body {
    let name = name.clone();
    let body = body.map_err(move |e| -> BoxError {
        Box::new(
            GatewayError::new(
                ErrorKind::UpstreamProtocol,
                format!("upstream {name} broke off the response: {e}"),
            )
            .with_provider(name.clone()),
        )
    });
    if stream {
        Body::new(ReadCoalesce::new(body))
    } else {
        Body::new(body)
    }
}

/// Read at most `cap` bytes of `body`; a read error ends the read (what was read is kept).
pub(crate) async fn read_capped(mut body: hyper::body::Incoming, cap: usize) -> Bytes {
    let mut buf = BytesMut::new();
    while buf.len() < cap {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = cap - buf.len();
                    buf.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    buf.freeze()
}

/// Read all of `body` for translation, at most `cap` bytes: past it, the error that names
/// `[server] max_translated_body_bytes`, and the rest is not read (the connection is dropped).
pub(crate) async fn read_whole(
    mut body: hyper::body::Incoming,
    cap: usize,
) -> Result<Bytes, GatewayError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            GatewayError::new(
                ErrorKind::UpstreamProtocol,
                format!("could not read the upstream answer: {}", error_chain(&e)),
            )
        })?;
        if let Some(data) = frame.data_ref() {
            if data.len() > cap - buf.len() {
                return Err(crate::translate::answer_too_large(cap));
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.freeze())
}

/// `e: cause: cause` — hyper-util's own `Display` hides the useful part in its sources.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

pub(crate) type HttpsClient = Client<DeadlineConnector, Full<Bytes>>;

/// The HTTPS connector with one deadline over DNS, TCP connect and the TLS handshake together
/// (hyper's own connect timeout covers only TCP). Boxes one future per new connection, never
/// per request.
#[derive(Clone)]
pub(crate) struct DeadlineConnector {
    inner: HttpsConnector<HttpConnector>,
    deadline: Option<Duration>,
}

impl tower::Service<Uri> for DeadlineConnector {
    type Response = <HttpsConnector<HttpConnector> as tower::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let deadline = self.deadline;
        Box::pin(async move {
            match deadline {
                None => connecting.await,
                Some(d) => match tokio::time::timeout(d, connecting).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("connect timed out after {d:?}").into()),
                },
            }
        })
    }
}

/// The rustls client config (ring provider, webpki roots, ALPN set by the connector), built once.
/// Also installs `ring` as the process-wide default crypto provider if none is installed yet.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    use hyper_rustls::ConfigBuilderExt as _;
    static CONFIG: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            // Ignore the error: another provider is already the default, which is fine.
            let _ = rustls::crypto::CryptoProvider::install_default((*provider).clone());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| b.with_webpki_roots().with_no_client_auth())
                .map_err(|e| format!("TLS setup failed: {e}"))
        })
        .clone()
}

/// The pooled client for `connect_timeout` (one per distinct timeout, ms granularity; past
/// [`MAX_CACHED_CLIENTS`] distinct values a client is built for the call and not kept).
///
/// The pools are per thread: an upstream connection is driven by a task on the runtime that
/// opened it, so with one single-threaded runtime per worker (the reference gateway's default)
/// a request never hands its upstream I/O to another thread. On a work-stealing runtime each
/// worker thread keeps its own pool (a few more idle connections, no shared lock per request).
pub(crate) fn client_for(connect_timeout: Option<Duration>) -> Result<HttpsClient, GatewayError> {
    thread_local! {
        static CLIENTS: RefCell<Vec<(Option<u64>, HttpsClient)>> = const { RefCell::new(Vec::new()) };
    }
    let key = connect_timeout.map(|d| {
        let ms = d.as_nanos().div_ceil(1_000_000);
        u64::try_from(ms).unwrap_or(u64::MAX)
    });
    if let Some(c) =
        CLIENTS.with_borrow(|cs| cs.iter().find(|(k, _)| *k == key).map(|(_, c)| c.clone()))
    {
        return Ok(c);
    }
    let client = build_client(key.map(Duration::from_millis))?;
    CLIENTS.with_borrow_mut(|cs| {
        if cs.len() < MAX_CACHED_CLIENTS {
            cs.push((key, client.clone()));
        }
    });
    Ok(client)
}

fn build_client(connect_timeout: Option<Duration>) -> Result<HttpsClient, GatewayError> {
    let tls = tls_config().map_err(GatewayError::internal)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(connect_timeout);
    // ALPN offers h2 and http/1.1 on https; plain http speaks HTTP/1.1.
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let https = DeadlineConnector {
        inner: https,
        deadline: connect_timeout,
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}
