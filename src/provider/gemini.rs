//! The Google Gemini adapter: OpenAI's face in front of `generateContent`.
//!
//! The client's chat request is translated with
//! [`request_to_gemini`] and sent to
//! `{base}/v1beta/models/{model}:generateContent` (or `:streamGenerateContent?alt=sse`) with
//! `x-goog-api-key`; a 2xx answer is translated back (JSON → `chat.completion`; SSE →
//! `chat.completion.chunk`s ending in `[DONE]`, which Gemini does not send); a non-2xx answer is
//! mapped with [`error_from_gemini`] (`RESOURCE_EXHAUSTED` → 429, `API_KEY_INVALID` → 401, the
//! token limit → `context_length_exceeded`, …), the credentials this adapter sent scrubbed from
//! the message. Headers follow the provider's [`HeaderPolicy`].
//!
//!
//! **Vertex AI** (kind `"vertex"`): the same wire format at
//! `{base}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`
//! (base `https://{location}-aiplatform.googleapis.com`, or `https://aiplatform.googleapis.com`
//! for the `global` location), authenticated with a service account's short-lived bearer token
//! ([`vertex`](GeminiProviderBuilder::vertex),
//! [`bearer_token`](GeminiProviderBuilder::bearer_token)).
//!
//! ```
//! use tollgate::provider::gemini::GeminiProvider;
//! use tollgate::secret::Secret;
//!
//! let gemini = GeminiProvider::builder("gemini", "https://generativelanguage.googleapis.com")
//!     .api_key(Secret::new("AIza..."))
//!     .build()?;
//! # let _ = gemini;
//! # Ok::<(), tollgate::provider::anthropic::ProviderConfigError>(())
//! ```

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, Uri};

use crate::body::Body;
use crate::error::GatewayError;
use crate::provider::anthropic::{ProviderConfigError, json_post, send_translated};
use crate::provider::credentials::TokenSource;
use crate::provider::headers::{HeaderPolicy, sensitive};
use crate::provider::openai::{refused_token, with_bearer};
use crate::provider::{BoxFuture, Provider, UpstreamCall};
use crate::request::Api;
use crate::secret::Secret;
use crate::translate::gemini::{
    GeminiStream, error_from_gemini, request_to_gemini, response_from_gemini,
};
use crate::translate::unix_now;

/// Builder of [`GeminiProvider`].
#[derive(Debug)]
pub struct GeminiProviderBuilder {
    name: Arc<str>,
    base_url: String,
    api_key: Option<Secret>,
    headers: Vec<(String, String)>,
    policy: HeaderPolicy,
    vertex: Option<(String, String)>,
    token: Option<TokenSource>,
}

/// `https://{location}-aiplatform.googleapis.com` (`https://aiplatform.googleapis.com` for
/// `global`): Vertex AI's endpoint for `location`.
pub fn vertex_base_url(location: &str) -> String {
    match location {
        "global" => "https://aiplatform.googleapis.com".to_owned(),
        l => format!("https://{l}-aiplatform.googleapis.com"),
    }
}

/// A Google Cloud project id or location: letters, digits, `-`, `_`, `.` and `:` (a
/// domain-scoped project), nothing that would change the URL's path.
pub(crate) fn path_segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl GeminiProviderBuilder {
    /// Serve Gemini models on Vertex AI in `project` at `location` (`us-central1`, `global`):
    /// requests go to `{base}/v1/projects/{project}/locations/{location}/publishers/google/models/…`.
    /// Pair with [`bearer_token`](Self::bearer_token).
    pub fn vertex(mut self, project: impl Into<String>, location: impl Into<String>) -> Self {
        self.vertex = Some((project.into(), location.into()));
        self
    }
    /// Authenticate with a short-lived bearer token from `source` (a service account, see
    /// [`credentials`](crate::provider::credentials)): every call sends
    /// `Authorization: Bearer <token>`. Refused together with [`api_key`](Self::api_key).
    pub fn bearer_token(mut self, source: TokenSource) -> Self {
        self.token = Some(source);
        self
    }
    /// An extra header on every upstream request (its value is treated as sensitive).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Which headers cross between client and upstream (default [`HeaderPolicy::default`]).
    pub fn header_policy(mut self, policy: HeaderPolicy) -> Self {
        self.policy = policy;
        self
    }
    /// The API key, sent as `x-goog-api-key`.
    pub fn api_key(mut self, key: Secret) -> Self {
        self.api_key = Some(key);
        self
    }
    /// Validate and build.
    pub fn build(self) -> Result<GeminiProvider, ProviderConfigError> {
        let base = self.base_url.trim_end_matches('/').to_owned();
        let models = match &self.vertex {
            None => format!("{base}/v1beta/models/"),
            Some((project, location)) => {
                for (what, v) in [("project", project), ("location", location)] {
                    if !path_segment_ok(v) {
                        return Err(ProviderConfigError(format!(
                            "{what} {v:?} must be letters, digits, `-`, `_`, `.` or `:`"
                        )));
                    }
                }
                format!(
                    "{base}/v1/projects/{project}/locations/{location}/publishers/google/models/"
                )
            }
        };
        let _: Uri = format!("{models}m:generateContent")
            .parse()
            .map_err(|e| ProviderConfigError(format!("bad base_url {:?}: {e}", self.base_url)))?;
        if self.token.is_some() && self.api_key.is_some() {
            return Err(ProviderConfigError(
                "an API key and a bearer-token source are exclusive".into(),
            ));
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            let k = HeaderName::try_from(k.as_str())
                .map_err(|_| ProviderConfigError(format!("bad header name {k:?}")))?;
            let v = HeaderValue::try_from(v.as_str())
                .map_err(|_| ProviderConfigError(format!("bad value for header {k}")))?;
            headers.append(k, sensitive(v));
        }
        if let Some(key) = &self.api_key {
            let v = HeaderValue::try_from(key.expose()).map_err(|_| {
                ProviderConfigError("the API key is not a valid header value".into())
            })?;
            headers.insert(HeaderName::from_static("x-goog-api-key"), sensitive(v));
        }
        Ok(GeminiProvider {
            name: self.name,
            kind: if self.vertex.is_some() {
                "vertex"
            } else {
                "gemini"
            },
            models,
            policy: Arc::new(self.policy.with_secrets_of(&headers)),
            headers,
            token: self.token,
        })
    }
}

/// The Gemini adapter (kind `"gemini"`).
pub struct GeminiProvider {
    name: Arc<str>,
    kind: &'static str,
    /// `{base}/v1beta/models/` (Gemini API) or `{base}/v1/projects/…/models/` (Vertex AI).
    models: String,
    headers: HeaderMap,
    policy: Arc<HeaderPolicy>,
    token: Option<TokenSource>,
}

impl std::fmt::Debug for GeminiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeminiProvider")
            .field("name", &self.name)
            .field("models", &self.models)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl GeminiProvider {
    /// Start building a provider called `name` at `base_url`
    /// (`https://generativelanguage.googleapis.com`).
    pub fn builder(
        name: impl Into<Arc<str>>,
        base_url: impl Into<String>,
    ) -> GeminiProviderBuilder {
        GeminiProviderBuilder {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            headers: Vec::new(),
            policy: HeaderPolicy::default(),
            vertex: None,
            token: None,
        }
    }
}

impl Provider for GeminiProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn call(&self, call: UpstreamCall) -> BoxFuture<Result<Response<Body>, GatewayError>> {
        if call.parsed.api != Api::ChatCompletions {
            let e = GatewayError::bad_request(
                format!(
                    "the Gemini provider serves chat completions only, not {}",
                    call.parsed.api.as_str()
                ),
                None,
            )
            .with_code("unsupported_endpoint");
            return Box::pin(async move { Err(e) });
        }
        let stream = call.parsed.stream;
        let prepared = request_to_gemini(&call.parsed.body).and_then(|body| {
            let url = format!(
                "{}{}{}",
                self.models,
                call.upstream_model,
                model_method(stream)
            );
            let uri: Uri = url.parse().map_err(|_| {
                GatewayError::internal(format!(
                    "the upstream model {:?} does not make a valid URL",
                    call.upstream_model
                ))
            })?;
            json_post(
                uri,
                body,
                stream,
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
        let model = call.upstream_model.clone();
        let translator = GeminiStream::new(include_usage, created, &model)
            .with_provider(self.name.clone())
            .with_scrub(self.policy.clone());
        let (name, policy) = (self.name.clone(), self.policy.clone());
        let whole = move |b: &[u8]| response_from_gemini(b, created, &model);
        let Some(source) = self.token.clone() else {
            return send_translated(
                name,
                policy,
                &call,
                req,
                translator,
                whole,
                error_from_gemini,
            );
        };
        Box::pin(async move {
            let mut req = req;
            let token = with_bearer(&source, &mut req).await?;
            send_translated(
                name,
                policy,
                &call,
                req,
                translator,
                whole,
                error_from_gemini,
            )
            .await
            .map_err(|e| refused_token(Some(&source), Some(&token), e))
        })
    }
}

/// The method part of a model's URL (after `models/{model}`).
fn model_method(stream: bool) -> &'static str {
    if stream {
        ":streamGenerateContent?alt=sse"
    } else {
        ":generateContent"
    }
}
