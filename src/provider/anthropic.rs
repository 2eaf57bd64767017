//! The Anthropic adapter: OpenAI's face in front of the Messages API.
//!
//! The client's chat request is translated with
//! [`request_to_anthropic`] and sent to
//! `{base}/v1/messages` with `x-api-key` and `anthropic-version`; a 2xx answer is translated back
//! (JSON → `chat.completion`; SSE → `chat.completion.chunk`s, event by event, never buffered);
//! a non-2xx answer is read (capped) and mapped with
//! [`error_from_anthropic`] (its table keeps the meaning: `overloaded_error` → 503 with
//! `Retry-After`, "prompt is too long" → `context_length_exceeded`, …), the credentials this
//! adapter sent scrubbed from the message.
//! The pooled HTTPS client is the one the OpenAI adapter uses. Headers follow the provider's
//! [`HeaderPolicy`] (the client's `anthropic-beta` goes upstream, its credentials never do).
//!
//! Requests from the Anthropic-style ingress ([`Api::Messages`], [`Api::CountTokens`]) are
//! passed through instead ([`call_messages`](AnthropicProvider::call_messages),
//! [`count_tokens`](AnthropicProvider::count_tokens)): only the model is replaced and the answer
//! comes back untouched.
//!
//! ```
//! use tollgate::provider::anthropic::AnthropicProvider;
//! use tollgate::secret::Secret;
//!
//! let anthropic = AnthropicProvider::builder("anthropic", "https://api.anthropic.com")
//!     .api_key(Secret::new("sk-ant-..."))
//!     .default_max_tokens(8192)
//!     .build()?;
//! # let _ = anthropic;
//! # Ok::<(), tollgate::provider::anthropic::ProviderConfigError>(())
//! ```

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::Full;

use crate::body::Body;
use crate::error::GatewayError;
use crate::provider::headers::{HeaderPolicy, sensitive};
use crate::provider::openai::{client_for, error_chain, read_capped, read_whole, success_body};
use crate::provider::{BoxFuture, Provider, UpstreamCall, connect_error};
use crate::request::Api;
use crate::secret::Secret;
use crate::translate::anthropic::{
    AnthropicOptions, AnthropicStream, error_from_anthropic, request_to_anthropic,
    response_from_anthropic,
};
use crate::translate::{StreamTranslator, TranslateBody, unix_now};

/// The `anthropic-version` sent upstream unless configured otherwise.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// The largest error body read from an upstream.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A provider configuration error (bad URL, bad header value).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ProviderConfigError(pub String);

/// Builder of [`AnthropicProvider`].
#[derive(Debug)]
pub struct AnthropicProviderBuilder {
    name: Arc<str>,
    base_url: String,
    api_key: Option<Secret>,
    version: String,
    options: AnthropicOptions,
    headers: Vec<(String, String)>,
    policy: HeaderPolicy,
}

impl AnthropicProviderBuilder {
    /// Which headers cross between client and upstream (default [`HeaderPolicy::default`]).
    pub fn header_policy(mut self, policy: HeaderPolicy) -> Self {
        self.policy = policy;
        self
    }
    /// The API key, sent as `x-api-key`.
    pub fn api_key(mut self, key: Secret) -> Self {
        self.api_key = Some(key);
        self
    }
    /// The `anthropic-version` header (default [`DEFAULT_ANTHROPIC_VERSION`]).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }
    /// `max_tokens` sent when the client set none (Anthropic requires one).
    pub fn default_max_tokens(mut self, n: u64) -> Self {
        self.options.default_max_tokens = n;
        self
    }
    /// An extra header on every upstream request (e.g. `anthropic-beta`; its value is treated
    /// as sensitive).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Validate and build.
    pub fn build(self) -> Result<AnthropicProvider, ProviderConfigError> {
        let base = self.base_url.trim_end_matches('/');
        let url = if base.ends_with("/v1") {
            format!("{base}/messages")
        } else {
            format!("{base}/v1/messages")
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| ProviderConfigError(format!("bad base_url {:?}: {e}", self.base_url)))?;
        let count_uri: Uri = format!("{url}/count_tokens")
            .parse()
            .map_err(|e| ProviderConfigError(format!("bad base_url {:?}: {e}", self.base_url)))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::try_from(self.version.as_str())
                .map_err(|_| ProviderConfigError("bad anthropic-version value".into()))?,
        );
        for (k, v) in &self.headers {
            let k = HeaderName::try_from(k.as_str())
                .map_err(|_| ProviderConfigError(format!("bad header name {k:?}")))?;
            let v = HeaderValue::try_from(v.as_str())
                .map_err(|_| ProviderConfigError(format!("bad value for header {k}")))?;
            headers.append(k, sensitive(v));
        }
        if let Some(key) = &self.api_key {
            let mut v = HeaderValue::try_from(key.expose()).map_err(|_| {
                ProviderConfigError("the API key is not a valid header value".into())
            })?;
            v.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), v);
        }
        Ok(AnthropicProvider {
            name: self.name,
            uri,
            count_uri,
            policy: Arc::new(self.policy.with_secrets_of(&headers)),
            headers,
            options: self.options,
        })
    }
}

/// The Anthropic Messages adapter (kind `"anthropic"`).
pub struct AnthropicProvider {
    name: Arc<str>,
    uri: Uri,
    count_uri: Uri,
    headers: HeaderMap,
    options: AnthropicOptions,
    policy: Arc<HeaderPolicy>,
}

impl std::fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    /// Start building a provider called `name` at `base_url` (`https://api.anthropic.com`, with or
    /// without a trailing `/v1`).
    pub fn builder(
        name: impl Into<Arc<str>>,
        base_url: impl Into<String>,
    ) -> AnthropicProviderBuilder {
        AnthropicProviderBuilder {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            version: DEFAULT_ANTHROPIC_VERSION.to_owned(),
            options: AnthropicOptions::default(),
            headers: Vec::new(),
            policy: HeaderPolicy::default(),
        }
    }

    /// The Messages endpoint.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Pass an Anthropic Messages request (from an Anthropic-style `/v1/messages` ingress)
    /// through: only `model` is replaced by `upstream_model`, every other field is kept; the
    /// client's forwarded headers (`anthropic-beta`, …) go upstream, its credentials never do
    /// (the adapter's `x-api-key` and `anthropic-version` are sent; with `anthropic-version`
    /// among the policy's forwarded headers, the client's version replaces the adapter's).
    /// The upstream's `request-id` comes back as `x-upstream-request-id`. A 2xx answer is returned as is (JSON, or
    /// SSE streamed without buffering); errors are mapped with
    /// [`error_from_anthropic`] (render them with
    /// [`error_to_anthropic`](crate::translate::ingress::error_to_anthropic)).
    pub fn call_messages(
        &self,
        body: &[u8],
        upstream_model: &str,
        client_headers: &HeaderMap,
        connect_timeout: Option<std::time::Duration>,
    ) -> BoxFuture<Result<Response<Body>, GatewayError>> {
        self.pass_through(
            self.uri.clone(),
            body,
            upstream_model,
            client_headers,
            connect_timeout,
        )
    }

    /// Pass a `/v1/messages/count_tokens` request through to `…/v1/messages/count_tokens`, as
    /// [`call_messages`](Self::call_messages) does (the count is Anthropic's own, exact).
    pub fn count_tokens(
        &self,
        body: &[u8],
        upstream_model: &str,
        client_headers: &HeaderMap,
        connect_timeout: Option<std::time::Duration>,
    ) -> BoxFuture<Result<Response<Body>, GatewayError>> {
        self.pass_through(
            self.count_uri.clone(),
            body,
            upstream_model,
            client_headers,
            connect_timeout,
        )
    }

    fn pass_through(
        &self,
        uri: Uri,
        body: &[u8],
        upstream_model: &str,
        client_headers: &HeaderMap,
        connect_timeout: Option<std::time::Duration>,
    ) -> BoxFuture<Result<Response<Body>, GatewayError>> {
        let prepared = (|| {
            #[derive(serde::Deserialize)]
            struct Flags {
                #[serde(default)]
                stream: Option<bool>,
            }
            let stream = serde_json::from_slice::<Flags>(body)
                .map_err(|e| GatewayError::bad_request(format!("invalid JSON body: {e}"), None))?
                .stream
                == Some(true);
            let bytes = crate::request::with_model(body, upstream_model)?;
            let mut req = json_post(
                uri,
                bytes,
                stream,
                &self.headers,
                &self.policy,
                client_headers,
            )?;
            // Opt-in (`forward_headers = ["anthropic-version"]`): the client's version, the
            // one its body is written for, replaces the adapter's on the pass-through.
            if self.policy.forwarded().contains(&ANTHROPIC_VERSION) {
                if let Some(v) = client_headers.get(&ANTHROPIC_VERSION) {
                    req.headers_mut()
                        .insert(ANTHROPIC_VERSION.clone(), v.clone());
                }
            }
            Ok::<_, GatewayError>((req, stream, client_for(connect_timeout)?))
        })();
        let name = self.name.clone();
        let policy = self.policy.clone();
        Box::pin(async move {
            let (req, stream, client) = prepared?;
            let res = client
                .request(req)
                .await
                .map_err(|e| connect_error(&name, error_chain(&e)))?;
            let (parts, body) = res.into_parts();
            if !parts.status.is_success() {
                let bytes = read_capped(body, MAX_ERROR_BODY).await;
                let e = error_from_anthropic(parts.status, &parts.headers, &bytes, &name);
                return Err(policy.scrub(e));
            }
            let mut res = translated_response(stream, success_body(body, &name, stream));
            *res.status_mut() = parts.status;
            keep_upstream_id(&parts.headers, res.headers_mut());
            Ok(res)
        })
    }
}

static ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
/// Headers whose values are lists: a fixed value and a client's forwarded one are both sent.
const LIST_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("anthropic-beta"),
    HeaderName::from_static("openai-beta"),
];

/// The upstream's request id (`request-id` or `x-request-id`) as `x-upstream-request-id` on a
/// translated answer (nothing else of the upstream's headers is kept).
pub(crate) fn keep_upstream_id(upstream: &HeaderMap, out: &mut HeaderMap) {
    use crate::provider::headers::{UPSTREAM_REQUEST_ID, X_UPSTREAM_REQUEST_ID};
    if let Some(id) = UPSTREAM_REQUEST_ID.iter().find_map(|n| upstream.get(n)) {
        out.insert(X_UPSTREAM_REQUEST_ID.clone(), id.clone());
    }
}

/// Build the upstream POST with the JSON body, the client headers `policy` forwards, then the
/// adapter's own headers (fixed headers and credential).
pub(crate) fn json_post(
    uri: Uri,
    body: Bytes,
    stream: bool,
    own: &HeaderMap,
    policy: &HeaderPolicy,
    client: &HeaderMap,
) -> Result<Request<Full<Bytes>>, GatewayError> {
    let mut req = Request::post(uri)
        .body(Full::new(body))
        .map_err(|e| GatewayError::internal(format!("could not build upstream request: {e}")))?;
    let h = req.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static(if stream {
            "text/event-stream"
        } else {
            "application/json"
        }),
    );
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("tollgate/", env!("CARGO_PKG_VERSION"))),
    );
    policy.copy_forwarded(client, h);
    // The adapter's own headers replace a client's, except the list-valued beta headers, which
    // merge (a fixed `anthropic-beta` and the client's are both sent).
    let mut prev: Option<&HeaderName> = None;
    for (k, v) in own {
        if prev == Some(k) || LIST_HEADERS.contains(k) {
            h.append(k.clone(), v.clone());
        } else {
            h.insert(k.clone(), v.clone());
        }
        prev = Some(k);
    }
    Ok(req)
}

/// The response head of a translated answer.
pub(crate) fn translated_response(stream: bool, body: Body) -> Response<Body> {
    let mut res = Response::new(body);
    let h = res.headers_mut();
    if stream {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    res
}

/// Send `req`; on 2xx translate the body (`stream`: with `translator`, else with `whole`);
/// otherwise read the capped error body and map it with `map_err`.
pub(crate) fn send_translated<T, W, M>(
    name: Arc<str>,
    policy: Arc<HeaderPolicy>,
    call: &UpstreamCall,
    req: Request<Full<Bytes>>,
    translator: T,
    whole: W,
    map_err: M,
) -> BoxFuture<Result<Response<Body>, GatewayError>>
where
    T: StreamTranslator,
    W: FnOnce(&[u8]) -> Result<Bytes, GatewayError> + Send + 'static,
    M: FnOnce(StatusCode, &HeaderMap, &[u8], &Arc<str>) -> GatewayError + Send + 'static,
{
    let stream = call.parsed.stream;
    let limits = call.limits;
    let client = client_for(call.connect_timeout);
    Box::pin(async move {
        let client = client?;
        let res = client
            .request(req)
            .await
            .map_err(|e| connect_error(&name, error_chain(&e)))?;
        let (parts, body) = res.into_parts();
        if !parts.status.is_success() {
            let bytes = read_capped(body, MAX_ERROR_BODY).await;
            return Err(policy.scrub(map_err(parts.status, &parts.headers, &bytes, &name)));
        }
        if stream {
            let body = success_body(body, &name, true);
            let body = TranslateBody::new(body, translator).max_event_bytes(limits.max_event_bytes);
            let mut res = translated_response(true, Body::new(body));
            keep_upstream_id(&parts.headers, res.headers_mut());
            return Ok(res);
        }
        let bytes = read_whole(body, limits.max_body_bytes)
            .await
            .map_err(|e| e.with_provider(name.clone()))?;
        let out = whole(&bytes).map_err(|e| e.with_provider(name.clone()))?;
        let mut res = translated_response(false, Body::full(out));
        keep_upstream_id(&parts.headers, res.headers_mut());
        Ok(res)
    })
}

impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "anthropic"
    }

    fn speaks_anthropic(&self) -> bool {
        true
    }

    fn call(&self, call: UpstreamCall) -> BoxFuture<Result<Response<Body>, GatewayError>> {
        match call.parsed.api {
            Api::Messages => {
                return self.call_messages(
                    &call.parsed.body,
                    &call.upstream_model,
                    &call.headers,
                    call.connect_timeout,
                );
            }
            Api::CountTokens => {
                return self.count_tokens(
                    &call.parsed.body,
                    &call.upstream_model,
                    &call.headers,
                    call.connect_timeout,
                );
            }
            _ => {}
        }
        if call.parsed.api != Api::ChatCompletions {
            let e = GatewayError::bad_request(
                format!(
                    "the Anthropic provider serves chat completions only, not {}",
                    call.parsed.api.as_str()
                ),
                None,
            )
            .with_code("unsupported_endpoint");
            return Box::pin(async move { Err(e) });
        }
        let prepared = request_to_anthropic(&call.parsed.body, &call.upstream_model, &self.options)
            .and_then(|body| {
                json_post(
                    self.uri.clone(),
                    body,
                    call.parsed.stream,
                    &self.headers,
                    &self.policy,
                    &call.headers,
                )
            });
        let req = match prepared {
            Ok(r) => r,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let created = unix_now();
        let include_usage = call.parsed.wants_usage || call.parsed.upstream_include_usage;
        let translator = AnthropicStream::new(include_usage, created)
            .with_provider(self.name.clone())
            .with_scrub(self.policy.clone());
        send_translated(
            self.name.clone(),
            self.policy.clone(),
            &call,
            req,
            translator,
            move |b| response_from_anthropic(b, created),
            error_from_anthropic,
        )
    }
}
