//! The Anthropic adapter: OpenAI's face in front of the Messages API.
//!
//! The client's chat request is translated with
//! [`request_to_anthropic`] and sent to
//! `{base}/v1/messages` with `x-api-key` and `anthropic-version`; a 2xx answer is translated back
//! (JSON → `chat.completion`; SSE → `chat.completion.chunk`s, event by event, never buffered);
//! a non-2xx answer is read (capped) and mapped with
//! [`error_from_anthropic`].
//! The pooled HTTPS client is the one the OpenAI adapter uses.
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
use crate::provider::openai::{client_for, error_chain, read_capped, success_body};
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
/// The largest non-streaming answer read from an upstream for translation.
pub const MAX_RESPONSE_BODY: usize = 32 << 20;

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
}

impl AnthropicProviderBuilder {
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
    /// An extra header on every upstream request (e.g. `anthropic-beta`).
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
            headers.append(k, v);
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
        }
    }

    /// The Messages endpoint.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Pass an Anthropic Messages request (from an Anthropic-style `/v1/messages` ingress)
    /// through: only `model` is replaced by `upstream_model`, every other field is kept; the
    /// client's `anthropic-beta` header is forwarded, its credentials never are (the adapter's
    /// `x-api-key` and `anthropic-version` are sent). A 2xx answer is returned as is (JSON, or
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
            let mut own = self.headers.clone();
            if let Some(beta) = client_headers.get("anthropic-beta") {
                own.insert(HeaderName::from_static("anthropic-beta"), beta.clone());
            }
            let req = json_post(uri, bytes, stream, &own, client_headers)?;
            Ok::<_, GatewayError>((req, stream, client_for(connect_timeout)?))
        })();
        let name = self.name.clone();
        Box::pin(async move {
            let (req, stream, client) = prepared?;
            let res = client
                .request(req)
                .await
                .map_err(|e| connect_error(&name, error_chain(&e)))?;
            let (parts, body) = res.into_parts();
            if !parts.status.is_success() {
                let bytes = read_capped(body, MAX_ERROR_BODY).await;
                return Err(error_from_anthropic(
                    parts.status,
                    &parts.headers,
                    &bytes,
                    &name,
                ));
            }
            let mut res = translated_response(stream, success_body(body, &name, stream));
            *res.status_mut() = parts.status;
            if let Some(id) = parts.headers.get("request-id") {
                res.headers_mut()
                    .insert(HeaderName::from_static("request-id"), id.clone());
            }
            Ok(res)
        })
    }
}

/// Build the upstream POST with the JSON body, the adapter's headers and the forwarded
/// `x-request-id`.
pub(crate) fn json_post(
    uri: Uri,
    body: Bytes,
    stream: bool,
    own: &HeaderMap,
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
    if let Some(v) = client.get("x-request-id") {
        h.insert(HeaderName::from_static("x-request-id"), v.clone());
    }
    for (k, v) in own {
        h.insert(k.clone(), v.clone());
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
            return Err(map_err(parts.status, &parts.headers, &bytes, &name));
        }
        if stream {
            let body = success_body(body, &name, true);
            return Ok(translated_response(
                true,
                Body::new(TranslateBody::new(body, translator)),
            ));
        }
        let bytes = read_capped(body, MAX_RESPONSE_BODY).await;
        let out = whole(&bytes).map_err(|e| e.with_provider(name.clone()))?;
        Ok(translated_response(false, Body::full(out)))
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
                    &call.headers,
                )
            });
        let req = match prepared {
            Ok(r) => r,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let created = unix_now();
        let include_usage = call.parsed.wants_usage || call.parsed.upstream_include_usage;
        let translator =
            AnthropicStream::new(include_usage, created).with_provider(self.name.clone());
        send_translated(
            self.name.clone(),
            &call,
            req,
            translator,
            move |b| response_from_anthropic(b, created),
            error_from_anthropic,
        )
    }
}
