//! The Amazon Bedrock adapter: OpenAI's face in front of the Converse API.
//!
//! The client's chat request is translated with [`request_to_bedrock`] and sent to
//! `{base}/model/{modelId}/converse` (or `/converse-stream`), the model id URI-encoded (`:` as
//! `%3A`), signed with AWS Signature Version 4 ([`sigv4`](super::sigv4): service `bedrock`,
//! the region, `x-amz-date`, `x-amz-content-sha256`, and `x-amz-security-token` for temporary
//! credentials). A 2xx answer is translated back (JSON → `chat.completion`; the binary
//! `application/vnd.amazon.eventstream` → `chat.completion.chunk`s ending in `[DONE]`); a
//! non-2xx answer is mapped with [`error_from_bedrock`]. The secret access key and the session
//! token are [`Secret`]s, scrubbed from every error.
//!
//! ```
//! use tollgate::provider::bedrock::BedrockProvider;
//! use tollgate::provider::sigv4::AwsCredentials;
//! use tollgate::secret::Secret;
//!
//! let bedrock = BedrockProvider::builder("bedrock", "us-east-1")
//!     .credentials(AwsCredentials {
//!         access_key_id: "AKIA...".into(),
//!         secret_access_key: Secret::new("..."),
//!         session_token: None,
//!     })
//!     .build()?;
//! # let _ = bedrock;
//! # Ok::<(), tollgate::provider::anthropic::ProviderConfigError>(())
//! ```

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::Full;

use crate::body::Body;
use crate::error::GatewayError;
use crate::provider::anthropic::{
    ProviderConfigError, json_post, keep_upstream_id, translated_response,
};
use crate::provider::headers::{HeaderPolicy, sensitive};
use crate::provider::openai::{client_for, error_chain, read_capped, read_whole, success_body};
use crate::provider::sigv4::{AwsCredentials, Signing, amz_date, sha256_hex, uri_encode};
use crate::provider::{BoxFuture, Provider, UpstreamCall, connect_error};
use crate::request::Api;
use crate::translate::bedrock::{
    BedrockStream, EventStreamBody, error_from_bedrock, request_to_bedrock, response_from_bedrock,
};
use crate::translate::unix_now;

/// The most bytes of an upstream error answer read.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// `https://bedrock-runtime.{region}.amazonaws.com`.
pub fn bedrock_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// An AWS region: lower-case letters, digits and `-` (`us-east-1`).
pub(crate) fn region_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Builder of [`BedrockProvider`].
#[derive(Debug)]
pub struct BedrockProviderBuilder {
    name: Arc<str>,
    region: String,
    base_url: Option<String>,
    credentials: Option<AwsCredentials>,
    policy: HeaderPolicy,
}

impl BedrockProviderBuilder {
    /// The endpoint (default `https://bedrock-runtime.{region}.amazonaws.com`).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }
    /// The AWS credentials every call is signed with (required).
    pub fn credentials(mut self, c: AwsCredentials) -> Self {
        self.credentials = Some(c);
        self
    }
    /// Which headers cross between client and upstream (default [`HeaderPolicy::default`]).
    pub fn header_policy(mut self, policy: HeaderPolicy) -> Self {
        self.policy = policy;
        self
    }
    /// Validate and build.
    pub fn build(self) -> Result<BedrockProvider, ProviderConfigError> {
        if !region_ok(&self.region) {
            return Err(ProviderConfigError(format!(
                "region {:?} must be lower-case letters, digits and `-`",
                self.region
            )));
        }
        let creds = self.credentials.ok_or_else(|| {
            ProviderConfigError("AWS credentials (access key id and secret) are required".into())
        })?;
        if creds.access_key_id.is_empty() || creds.secret_access_key.expose().is_empty() {
            return Err(ProviderConfigError(
                "the access key id and the secret access key must not be empty".into(),
            ));
        }
        let base = self
            .base_url
            .unwrap_or_else(|| bedrock_base_url(&self.region))
            .trim_end_matches('/')
            .to_owned();
        let uri: Uri = format!("{base}/model/m/converse")
            .parse()
            .map_err(|e| ProviderConfigError(format!("bad base_url {base:?}: {e}")))?;
        let host = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .ok_or_else(|| ProviderConfigError(format!("base_url {base:?} names no host")))?;
        // The secrets the policy scrubs from errors (the secret key itself is never sent).
        let mut secrets = HeaderMap::new();
        for (i, s) in [Some(&creds.secret_access_key), creds.session_token.as_ref()]
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Ok(v) = HeaderValue::try_from(s.expose()) {
                let name = if i == 0 { "x-secret" } else { "x-token" };
                secrets.insert(HeaderName::from_static(name), sensitive(v));
            }
        }
        Ok(BedrockProvider {
            name: self.name,
            region: self.region,
            host,
            base,
            creds,
            policy: Arc::new(self.policy.with_secrets_of(&secrets)),
        })
    }
}

/// The Bedrock adapter (kind `"bedrock"`).
pub struct BedrockProvider {
    name: Arc<str>,
    region: String,
    /// The `Host` header signed and sent.
    host: String,
    base: String,
    creds: AwsCredentials,
    policy: Arc<HeaderPolicy>,
}

impl std::fmt::Debug for BedrockProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BedrockProvider")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("base", &self.base)
            .field("creds", &self.creds)
            .finish_non_exhaustive()
    }
}

impl BedrockProvider {
    /// Start building a provider called `name` in `region` (`us-east-1`).
    pub fn builder(name: impl Into<Arc<str>>, region: impl Into<String>) -> BedrockProviderBuilder {
        BedrockProviderBuilder {
            name: name.into(),
            region: region.into(),
            base_url: None,
            credentials: None,
            policy: HeaderPolicy::default(),
        }
    }

    /// The signed upstream request for `model`.
    fn request(
        &self,
        call: &UpstreamCall,
        body: Bytes,
        now: u64,
    ) -> Result<Request<Full<Bytes>>, GatewayError> {
        let method = if call.parsed.stream {
            "converse-stream"
        } else {
            "converse"
        };
        let path = format!(
            "/model/{}/{method}",
            uri_encode(&call.upstream_model, false)
        );
        let uri: Uri = format!("{}{path}", self.base).parse().map_err(|_| {
            GatewayError::internal(format!(
                "the upstream model {:?} does not make a valid URL",
                call.upstream_model
            ))
        })?;
        // The base URL's own path (a proxy prefix) is part of what is signed.
        let full_path = uri.path().to_owned();
        let payload_hash = sha256_hex(&body);
        let mut req = json_post(
            uri,
            body,
            false,
            &HeaderMap::new(),
            &self.policy,
            &call.headers,
        )?;
        let date = amz_date(now);
        let token = self.creds.session_token.as_ref().map(|t| t.expose());
        let mut signed: Vec<(&str, &str)> = vec![
            ("content-type", "application/json"),
            ("host", &self.host),
            ("x-amz-content-sha256", &payload_hash),
            ("x-amz-date", &date),
        ];
        if let Some(t) = token {
            signed.push(("x-amz-security-token", t));
        }
        let canonical_uri = uri_encode(&full_path, true);
        let signing = Signing {
            method: "POST",
            canonical_uri: &canonical_uri,
            query: "",
            headers: &signed,
            payload_hash: &payload_hash,
            amz_date: &date,
            region: &self.region,
            service: "bedrock",
        };
        let auth = signing.authorization(&self.creds.access_key_id, &self.creds.secret_access_key);
        let h = req.headers_mut();
        let value = |s: &str| {
            HeaderValue::try_from(s)
                .map_err(|_| GatewayError::internal("an AWS header is not a valid header value"))
        };
        h.insert(http::header::HOST, value(&self.host)?);
        h.insert("x-amz-content-sha256", value(&payload_hash)?);
        h.insert("x-amz-date", value(&date)?);
        if let Some(t) = token {
            h.insert("x-amz-security-token", sensitive(value(t)?));
        }
        h.insert(http::header::AUTHORIZATION, sensitive(value(&auth)?));
        if call.parsed.stream {
            h.insert(
                http::header::ACCEPT,
                HeaderValue::from_static("application/vnd.amazon.eventstream"),
            );
        }
        Ok(req)
    }
}

impl Provider for BedrockProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "bedrock"
    }

    fn call(&self, call: UpstreamCall) -> BoxFuture<Result<Response<Body>, GatewayError>> {
        if call.parsed.api != Api::ChatCompletions {
            let e = GatewayError::bad_request(
                format!(
                    "the Bedrock provider serves chat completions only, not {}",
                    call.parsed.api.as_str()
                ),
                None,
            )
            .with_code("unsupported_endpoint");
            return Box::pin(async move { Err(e) });
        }
        let req = match request_to_bedrock(&call.parsed.body)
            .and_then(|body| self.request(&call, body, unix_now()))
        {
            Ok(r) => r,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let created = unix_now();
        let stream = call.parsed.stream;
        let include_usage = call.parsed.wants_usage || call.parsed.upstream_include_usage;
        let model = call.upstream_model.clone();
        let limits = call.limits;
        let (name, policy) = (self.name.clone(), self.policy.clone());
        let client = client_for(call.connect_timeout);
        Box::pin(async move {
            let res = client?
                .request(req)
                .await
                .map_err(|e| connect_error(&name, error_chain(&e)))?;
            let (parts, body) = res.into_parts();
            if !parts.status.is_success() {
                let bytes = read_capped(body, MAX_ERROR_BODY).await;
                let e = error_from_bedrock(parts.status, &parts.headers, &bytes, &name);
                return Err(policy.scrub(e));
            }
            let mut res = if stream {
                let t = BedrockStream::new(include_usage, created, &model, name.clone());
                let body = success_body(body, &name, true);
                let body = EventStreamBody::new(body, t, limits.max_event_bytes, Some(policy));
                translated_response(true, Body::new(body))
            } else {
                let bytes = read_whole(body, limits.max_body_bytes)
                    .await
                    .map_err(|e| e.with_provider(name.clone()))?;
                let out = response_from_bedrock(&bytes, created, &model)
                    .map_err(|e| e.with_provider(name.clone()))?;
                translated_response(false, Body::full(out))
            };
            keep_upstream_id(&parts.headers, res.headers_mut());
            Ok(res)
        })
    }
}
