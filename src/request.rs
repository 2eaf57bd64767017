//! The Parse layer: buffers the request body once (with a cap), reads only what the gateway
//! needs into [`ParsedRequest`], and keeps every other field byte-for-byte.
//!
//! ```
//! use tollgate::request::ParseLayer;
//! let layer = ParseLayer::new().max_body_bytes(1 << 20);
//! # let _ = layer;
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use pin_project_lite::pin_project;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use tower::{Layer, Service};

use crate::body::{Body, BoxError};
use crate::error::{ErrorKind, GatewayError};

/// Which API the request speaks (from its path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/completions` (legacy)
    Completions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/messages` (the Anthropic-style ingress): the body and the answer are in
    /// Anthropic's Messages format.
    Messages,
    /// `POST /v1/messages/count_tokens` (Anthropic-style; served by Anthropic targets only).
    CountTokens,
}

impl Api {
    /// The API served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Api> {
        match path.trim_end_matches('/') {
            "/v1/chat/completions" | "/chat/completions" => Some(Api::ChatCompletions),
            "/v1/completions" | "/completions" => Some(Api::Completions),
            "/v1/embeddings" | "/embeddings" => Some(Api::Embeddings),
            "/v1/messages" => Some(Api::Messages),
            "/v1/messages/count_tokens" => Some(Api::CountTokens),
            _ => None,
        }
    }

    /// The upstream path of this API, relative to a base URL ending in `/v1`.
    pub fn openai_path(self) -> &'static str {
        match self {
            Api::ChatCompletions => "/chat/completions",
            Api::Completions => "/completions",
            Api::Embeddings => "/embeddings",
            Api::Messages => "/messages",
            Api::CountTokens => "/messages/count_tokens",
        }
    }

    /// Whether the request and its answer are in Anthropic's wire format (the `/v1/messages`
    /// ingress): errors are Anthropic-shaped, streams are Anthropic event streams.
    pub fn is_anthropic(self) -> bool {
        matches!(self, Api::Messages | Api::CountTokens)
    }

    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat",
            Api::Completions => "text_completion",
            Api::Embeddings => "embeddings",
            Api::Messages => "messages",
            Api::CountTokens => "count_tokens",
        }
    }

    /// Whether responses of this API may stream.
    pub fn can_stream(self) -> bool {
        !matches!(self, Api::Embeddings | Api::CountTokens)
    }
}

/// What the gateway read from the request body. Written by Parse; read by every layer.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    /// The API, from the path.
    pub api: Api,
    /// `model` as the client sent it.
    pub model: Arc<str>,
    /// `stream: true`.
    pub stream: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage: true`).
    pub wants_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// The request has a non-empty `tools` (or legacy `functions`) list.
    pub has_tools: bool,
    /// The request carries image parts.
    pub has_images: bool,
    /// `response_format` asks for JSON output.
    pub json_mode: bool,
    /// The client's own ordered fallback list (`models: [...]`, as OpenRouter takes it).
    pub fallback_models: Option<Arc<[Arc<str>]>>,
    /// Embeddings: the client asked for `encoding_format: "base64"`.
    pub base64_embeddings: bool,
    /// Ask the upstream for a usage chunk even if the client did not (set by StreamPassthrough).
    pub upstream_include_usage: bool,
    /// The raw JSON body, as received.
    pub body: Bytes,
    /// When the gateway received the request head.
    pub received_at: Instant,
}

impl ParsedRequest {
    /// A rough prompt-token estimate (4 bytes a token) used for reservations and tier routing;
    /// never presented as a real count.
    pub fn prompt_tokens_estimate(&self) -> u64 {
        (self.body.len() as u64).div_ceil(4)
    }

    /// Build the body sent upstream: `model` replaced by `upstream_model`, the usage chunk
    /// requested when [`upstream_include_usage`](Self::upstream_include_usage) is set, the
    /// gateway-only `models` list removed. Every other field is copied byte-for-byte.
    pub fn upstream_body(&self, upstream_model: &str) -> Result<Bytes, GatewayError> {
        let fields = TopLevel::parse(&self.body)?;
        let mut out = Vec::with_capacity(self.body.len() + 48);
        out.push(b'{');
        let mut first = true;
        let mut wrote_stream_options = false;
        let force_usage = self.stream && self.upstream_include_usage;
        for (key, value) in fields.0.iter() {
            let raw = value.get();
            let replacement: Option<Cow<'_, str>> = match key.as_ref() {
                "models" => continue,
                "model" => Some(Cow::Owned(json_string(upstream_model))),
                "stream_options" if force_usage => {
                    wrote_stream_options = true;
                    Some(Cow::Owned(with_include_usage(raw)?))
                }
                _ => None,
            };
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(json_string(key).as_bytes());
            out.push(b':');
            out.extend_from_slice(replacement.as_deref().unwrap_or(raw).as_bytes());
        }
        if force_usage && !wrote_stream_options {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
        }
        out.push(b'}');
        Ok(Bytes::from(out))
    }
}

/// `body` (a JSON object) with its top-level `model` replaced by `model`; every other field is
/// copied byte-for-byte, in order. Used to pass a request through to a provider that speaks
/// its format.
pub fn with_model(body: &[u8], model: &str) -> Result<Bytes, GatewayError> {
    let fields = TopLevel::parse(body)?;
    let mut out = Vec::with_capacity(body.len() + model.len());
    out.push(b'{');
    let mut wrote_model = false;
    for (i, (key, value)) in fields.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(json_string(key).as_bytes());
        out.push(b':');
        if key == "model" {
            wrote_model = true;
            out.extend_from_slice(json_string(model).as_bytes());
        } else {
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    if !wrote_model {
        if !fields.0.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"\"model\":");
        out.extend_from_slice(json_string(model).as_bytes());
    }
    out.push(b'}');
    Ok(Bytes::from(out))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn with_include_usage(raw: &str) -> Result<String, GatewayError> {
    let mut map: serde_json::Map<String, serde_json::Value> = if raw.trim() == "null" {
        serde_json::Map::new()
    } else {
        serde_json::from_str(raw).map_err(|_| {
            GatewayError::bad_request("stream_options must be an object", Some("stream_options"))
        })?
    };
    map.insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_string(&map).map_err(|e| GatewayError::internal(e.to_string()))
}

/// A JSON object's top-level fields, values kept as raw slices of the input.
struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> TopLevel<'a> {
    fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(GatewayError::bad_request(
                "request body is empty; expected a JSON object",
                None,
            ));
        }
        serde_json::from_slice::<TopLevel<'a>>(body).map_err(|e| {
            let msg = if e.is_data() && e.to_string().contains("expected a JSON object") {
                "request body must be a JSON object".to_owned()
            } else {
                format!("request body is not valid JSON: {e}")
            };
            GatewayError::bad_request(msg, None)
        })
    }

    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    fields.push((k, v));
                }
                Ok(TopLevel(fields))
            }
        }
        d.deserialize_map(V)
    }
}

fn is_null(v: &RawValue) -> bool {
    v.get() == "null"
}

fn opt_bool(v: Option<&RawValue>, field: &'static str) -> Result<Option<bool>, GatewayError> {
    match v.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(GatewayError::bad_request(
            format!("'{field}' must be a boolean"),
            Some(field),
        )),
    }
}

fn opt_u64(v: Option<&RawValue>, field: &'static str) -> Result<Option<u64>, GatewayError> {
    match v {
        None => Ok(None),
        Some(v) if is_null(v) => Ok(None),
        Some(v) => v.get().parse::<u64>().map(Some).map_err(|_| {
            GatewayError::bad_request(
                format!("'{field}' must be a non-negative integer"),
                Some(field),
            )
        }),
    }
}

fn starts_with(v: &RawValue, c: u8) -> bool {
    v.get().as_bytes().first() == Some(&c)
}

/// Parse a request body for `api` into a [`ParsedRequest`].
pub fn parse_body(api: Api, body: Bytes) -> Result<ParsedRequest, GatewayError> {
    let received_at = Instant::now();
    let fields = TopLevel::parse(&body)?;

    let model: Arc<str> = match fields.get("model") {
        None => {
            return Err(GatewayError::bad_request(
                "you must provide a model parameter",
                Some("model"),
            ));
        }
        Some(v) => match serde_json::from_str::<Cow<'_, str>>(v.get()) {
            Ok(s) if !s.is_empty() => Arc::from(s.as_ref()),
            Ok(_) => {
                return Err(GatewayError::bad_request(
                    "'model' must not be empty",
                    Some("model"),
                ));
            }
            Err(_) => {
                return Err(GatewayError::bad_request(
                    "'model' must be a string",
                    Some("model"),
                ));
            }
        },
    };

    let stream = opt_bool(fields.get("stream"), "stream")?.unwrap_or(false);
    if stream && !api.can_stream() {
        return Err(GatewayError::bad_request(
            "this endpoint does not stream",
            Some("stream"),
        ));
    }
    let wants_usage = match fields.get("stream_options") {
        None => false,
        Some(v) if is_null(v) => false,
        Some(v) if starts_with(v, b'{') => {
            #[derive(Deserialize)]
            struct So<'a> {
                #[serde(borrow, default)]
                include_usage: Option<&'a RawValue>,
            }
            let so: So<'_> = serde_json::from_str(v.get()).map_err(|_| {
                GatewayError::bad_request("'stream_options' is malformed", Some("stream_options"))
            })?;
            opt_bool(so.include_usage, "stream_options.include_usage")?.unwrap_or(false)
        }
        Some(_) => {
            return Err(GatewayError::bad_request(
                "'stream_options' must be an object",
                Some("stream_options"),
            ));
        }
    };
    let max_tokens = match opt_u64(fields.get("max_completion_tokens"), "max_completion_tokens")? {
        Some(n) => Some(n),
        None => opt_u64(fields.get("max_tokens"), "max_tokens")?,
    };

    match api {
        Api::ChatCompletions | Api::Messages | Api::CountTokens => match fields.get("messages") {
            None => {
                return Err(GatewayError::bad_request(
                    "'messages' is a required property",
                    Some("messages"),
                ));
            }
            Some(v) if !starts_with(v, b'[') => {
                return Err(GatewayError::bad_request(
                    "'messages' must be an array",
                    Some("messages"),
                ));
            }
            Some(v) if v.get()[1..].trim_start().starts_with(']') => {
                return Err(GatewayError::bad_request(
                    "'messages' must contain at least one message",
                    Some("messages"),
                ));
            }
            Some(_) => {}
        },
        Api::Embeddings | Api::Completions => {}
    }
    match api {
        Api::Messages if max_tokens.is_none() => {
            return Err(GatewayError::bad_request(
                "'max_tokens' is a required property",
                Some("max_tokens"),
            ));
        }
        Api::Embeddings if fields.get("input").is_none_or(is_null) => {
            return Err(GatewayError::bad_request(
                "'input' is a required property",
                Some("input"),
            ));
        }
        Api::Completions if fields.get("prompt").is_none_or(is_null) => {
            return Err(GatewayError::bad_request(
                "'prompt' is a required property",
                Some("prompt"),
            ));
        }
        _ => {}
    }

    let non_empty_array = |k: &str| {
        fields
            .get(k)
            .is_some_and(|v| starts_with(v, b'[') && !v.get()[1..].trim_start().starts_with(']'))
    };
    let has_tools = non_empty_array("tools") || non_empty_array("functions");
    let image_key: &[u8] = if api.is_anthropic() {
        b"\"image\""
    } else {
        b"\"image_url\""
    };
    let has_images = fields
        .get("messages")
        .is_some_and(|m| memchr::memmem::find(m.get().as_bytes(), image_key).is_some());
    let format_key = if api.is_anthropic() {
        "output_config"
    } else {
        "response_format"
    };
    let json_mode = fields.get(format_key).is_some_and(|v| {
        let s = v.get().as_bytes();
        memchr::memmem::find(s, b"json_object").is_some()
            || memchr::memmem::find(s, b"json_schema").is_some()
    });
    let fallback_models = match fields.get("models") {
        None => None,
        Some(v) if is_null(v) => None,
        Some(v) => {
            let list: Vec<String> = serde_json::from_str(v.get()).map_err(|_| {
                GatewayError::bad_request("'models' must be an array of strings", Some("models"))
            })?;
            Some(list.into_iter().map(Arc::from).collect())
        }
    };
    let base64_embeddings = api == Api::Embeddings
        && fields
            .get("encoding_format")
            .is_some_and(|v| v.get() == "\"base64\"");

    drop(fields);
    Ok(ParsedRequest {
        api,
        model,
        stream,
        wants_usage,
        max_tokens,
        has_tools,
        has_images,
        json_mode,
        fallback_models,
        base64_embeddings,
        upstream_include_usage: false,
        body,
        received_at,
    })
}

/// Default body cap: 16 MiB (images travel inline as base64).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;

/// Layer for [`Parse`]: configuration only.
#[derive(Debug, Clone, Copy)]
pub struct ParseLayer {
    max_body_bytes: usize,
}

impl Default for ParseLayer {
    fn default() -> Self {
        ParseLayer {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

impl ParseLayer {
    /// A layer with the default cap.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set the body cap; larger bodies are answered 413.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }
}

impl<S> Layer<S> for ParseLayer {
    type Service = Parse<S>;
    fn layer(&self, inner: S) -> Parse<S> {
        Parse {
            inner,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// Buffers the body (capped), parses it, and calls the inner service with a
/// `Request<Full<Bytes>>` carrying a [`ParsedRequest`] extension.
#[derive(Debug, Clone)]
pub struct Parse<S> {
    inner: S,
    max_body_bytes: usize,
}

impl<S> Parse<S> {
    /// Wrap `inner` with the default cap.
    pub fn new(inner: S) -> Self {
        ParseLayer::new().layer(inner)
    }
    /// The layer.
    pub fn layer() -> ParseLayer {
        ParseLayer::new()
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

impl<S, B> Service<Request<B>> for Parse<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = GatewayError> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = ParseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        let api = match Api::from_path(parts.uri.path()) {
            Some(api) => api,
            None => {
                return ParseFuture::failed(GatewayError::new(
                    ErrorKind::NotFound,
                    format!("no endpoint at {}", parts.uri.path()),
                ));
            }
        };
        if parts.method != Method::POST {
            return ParseFuture::failed(GatewayError::new(
                ErrorKind::MethodNotAllowed,
                format!(
                    "{} is not allowed on {}; use POST",
                    parts.method,
                    parts.uri.path()
                ),
            ));
        }
        if let Some(len) = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > self.max_body_bytes as u64 {
                return ParseFuture::failed(too_large(self.max_body_bytes));
            }
        }
        ParseFuture {
            state: ParseState::Collecting {
                collect: Limited::new(body, self.max_body_bytes).collect(),
                parts: Some(parts),
                api,
                inner: Some(inner),
                max: self.max_body_bytes,
            },
        }
    }
}

fn too_large(max: usize) -> GatewayError {
    GatewayError::new(
        ErrorKind::PayloadTooLarge,
        format!("request body exceeds the limit of {max} bytes"),
    )
}

pin_project! {
    /// Future of [`Parse`].
    pub struct ParseFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: http_body::Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: ParseState<S, B>,
    }
}

pin_project! {
    #[project = ParseStateProj]
    enum ParseState<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: http_body::Body,
        B::Error: Into<BoxError>,
    {
        Failed { error: Option<GatewayError> },
        Collecting {
            #[pin]
            collect: http_body_util::combinators::Collect<Limited<B>>,
            parts: Option<http::request::Parts>,
            api: Api,
            inner: Option<S>,
            max: usize,
        },
        Calling { #[pin] fut: S::Future },
    }
}

impl<S, B> ParseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    fn failed(e: GatewayError) -> Self {
        ParseFuture {
            state: ParseState::Failed { error: Some(e) },
        }
    }
}

impl<S, B> Future for ParseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = GatewayError>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                ParseStateProj::Failed { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| GatewayError::internal("polled after completion"))));
                }
                ParseStateProj::Collecting {
                    collect,
                    parts,
                    api,
                    inner,
                    max,
                } => {
                    let collected = ready!(collect.poll(cx));
                    let bytes = match collected {
                        Ok(c) => c.to_bytes(),
                        Err(e) => {
                            let e = if e.is::<http_body_util::LengthLimitError>() {
                                too_large(*max)
                            } else {
                                GatewayError::bad_request(
                                    format!("failed to read request body: {e}"),
                                    None,
                                )
                            };
                            this.state.set(ParseState::Failed { error: Some(e) });
                            continue;
                        }
                    };
                    let (Some(mut parts), Some(mut inner)) = (parts.take(), inner.take()) else {
                        return Poll::Ready(Err(GatewayError::internal("polled after completion")));
                    };
                    match parse_body(*api, bytes.clone()) {
                        Ok(parsed) => {
                            parts.extensions.insert(parsed);
                            let req = Request::from_parts(parts, Full::new(bytes));
                            let fut = inner.call(req);
                            this.state.set(ParseState::Calling { fut });
                        }
                        Err(e) => this.state.set(ParseState::Failed { error: Some(e) }),
                    }
                }
                ParseStateProj::Calling { fut } => return fut.poll(cx),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ParsedRequest, GatewayError> {
        parse_body(Api::ChatCompletions, Bytes::from(body.to_owned()))
    }

    #[test]
    fn reads_what_it_needs() {
        let p = parse(r#"{"model":"gpt","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":7,"tools":[{"type":"function"}],"x_unknown":{"a":[1,2]}}"#).unwrap();
        assert_eq!(&*p.model, "gpt");
        assert!(p.stream && p.wants_usage && p.has_tools);
        assert_eq!(p.max_tokens, Some(7));
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let cases = [
            ("", None),
            ("{", None),
            ("[1]", None),
            (
                r#"{"messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
            ),
            (
                r#"{"model":5,"messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
            ),
            (r#"{"model":"m"}"#, Some("messages")),
            (r#"{"model":"m","messages":{}}"#, Some("messages")),
            (r#"{"model":"m","messages":[]}"#, Some("messages")),
            (
                r#"{"model":"m","messages":[{}],"stream":"yes"}"#,
                Some("stream"),
            ),
            (
                r#"{"model":"m","messages":[{}],"stream":[null,null]}"#,
                Some("stream"),
            ),
            (
                r#"{"model":"m","messages":[{}],"max_tokens":-1}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"model":"m","messages":[{}],"stream_options":3}"#,
                Some("stream_options"),
            ),
            (
                r#"{"model":"m","messages":[{}],"models":"x"}"#,
                Some("models"),
            ),
        ];
        for (body, param) in cases {
            let e = parse(body).expect_err(body);
            assert_eq!(e.status(), 400, "{body}");
            let j = e.to_json();
            assert_eq!(j["error"]["param"].as_str(), param, "{body}");
        }
    }

    #[test]
    fn anthropic_messages_are_parsed_and_need_max_tokens() {
        let p = parse_body(
            Api::Messages,
            Bytes::from_static(br#"{"model":"c","max_tokens":9,"stream":true,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}],"tools":[{"name":"t"}]}"#),
        )
        .unwrap();
        assert_eq!(&*p.model, "c");
        assert!(p.stream && p.has_tools && p.has_images && !p.wants_usage);
        assert_eq!(p.max_tokens, Some(9));
        let e = parse_body(
            Api::Messages,
            Bytes::from_static(br#"{"model":"c","messages":[{"role":"user","content":"x"}]}"#),
        )
        .unwrap_err();
        assert_eq!(e.to_json()["error"]["param"], "max_tokens");
        // count_tokens takes no max_tokens and never streams
        assert!(
            parse_body(
                Api::CountTokens,
                Bytes::from_static(br#"{"model":"c","messages":[{"role":"user","content":"x"}]}"#),
            )
            .is_ok()
        );
        assert_eq!(Api::from_path("/v1/messages"), Some(Api::Messages));
        assert_eq!(
            Api::from_path("/v1/messages/count_tokens"),
            Some(Api::CountTokens)
        );
    }

    #[test]
    fn with_model_replaces_only_the_model() {
        let out = with_model(br#"{"a":[1, 2],"model":"x","b":"h\\u00e9"}"#, "y").unwrap();
        assert_eq!(&out[..], br#"{"a":[1, 2],"model":"y","b":"h\\u00e9"}"#);
        let out = with_model(br#"{"a":1}"#, "y").unwrap();
        assert_eq!(&out[..], br#"{"a":1,"model":"y"}"#);
    }

    #[test]
    fn upstream_body_rewrites_model_and_keeps_the_rest() {
        let mut p = parse(r#"{"model":"alias","messages":[{"role":"user","content":"h\u00e9"}],"stream":true,"x":{"deep":[1, 2 ,3]},"models":["a"]}"#).unwrap();
        p.upstream_include_usage = true;
        let out = p.upstream_body("real-model").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"real-model","messages":[{"role":"user","content":"h\u00e9"}],"stream":true,"x":{"deep":[1, 2 ,3]},"stream_options":{"include_usage":true}}"#
        );
        let mut p = parse(r#"{"model":"a","messages":[1],"stream":true,"stream_options":{"include_obfuscation":false}}"#).unwrap();
        p.upstream_include_usage = true;
        let out = p.upstream_body("b").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["include_obfuscation"], false);
    }
}
