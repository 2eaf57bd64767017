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
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
use crate::order::{self, Checked};

mod budget;
mod read_timeout;
use crate::usage::Units;

mod multipart;
mod validate;

pub use budget::{BodyBudget, BodyBudgetFuture, BodyBudgetLayer, DEFAULT_BODY_BUDGET_BYTES};
pub use read_timeout::BodyReadTimeout;
use read_timeout::TimedBody;
pub use validate::ECHO_CHARS;
pub(crate) use validate::{echo, prefix};

/// Most levels of nesting in a request body (the top-level object is level 1): a deeper body
/// is refused with a 400 at Parse and never forwarded.
pub const MAX_JSON_DEPTH: u32 = 64;

/// Longest model name (in bytes) Parse accepts; longer names are refused with a 400 that
/// quotes a short prefix only.
pub const MAX_MODEL_BYTES: usize = 256;

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
    /// `POST /v1/moderations` (served by OpenAI-compatible targets only). A body without
    /// `model` is routed as [`DEFAULT_MODERATION_MODEL`].
    Moderations,
    /// `POST /v1/images/generations` (OpenAI-compatible targets only). A body without `model`
    /// is routed as [`DEFAULT_IMAGE_MODEL`].
    ImageGenerations,
    /// `POST /v1/audio/speech` (OpenAI-compatible targets only): the answer is audio bytes,
    /// passed through as they come.
    AudioSpeech,
    /// `POST /v1/audio/transcriptions` (OpenAI-compatible targets only): a
    /// `multipart/form-data` body, capped by [`ParseLayer::max_upload_bytes`].
    AudioTranscriptions,
    /// `POST /v1/audio/translations`: as [`Api::AudioTranscriptions`].
    AudioTranslations,
    /// `POST /v1/responses` (the OpenAI Responses API): passed through to targets that serve it,
    /// translated through chat completions for the others.
    Responses,
}

/// The model a `/v1/moderations` body without `model` is routed as (OpenAI's own default).
pub const DEFAULT_MODERATION_MODEL: &str = "omni-moderation-latest";

/// The model a `/v1/images/generations` body without `model` is routed as (OpenAI's default).
pub const DEFAULT_IMAGE_MODEL: &str = "dall-e-2";

impl Api {
    /// The API served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Api> {
        match path.trim_end_matches('/') {
            "/v1/chat/completions" | "/chat/completions" => Some(Api::ChatCompletions),
            "/v1/completions" | "/completions" => Some(Api::Completions),
            "/v1/embeddings" | "/embeddings" => Some(Api::Embeddings),
            "/v1/messages" => Some(Api::Messages),
            "/v1/messages/count_tokens" => Some(Api::CountTokens),
            "/v1/moderations" | "/moderations" => Some(Api::Moderations),
            "/v1/images/generations" | "/images/generations" => Some(Api::ImageGenerations),
            "/v1/audio/speech" | "/audio/speech" => Some(Api::AudioSpeech),
            "/v1/audio/transcriptions" | "/audio/transcriptions" => Some(Api::AudioTranscriptions),
            "/v1/audio/translations" | "/audio/translations" => Some(Api::AudioTranslations),
            "/v1/responses" | "/responses" => Some(Api::Responses),
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
            Api::Moderations => "/moderations",
            Api::ImageGenerations => "/images/generations",
            Api::AudioSpeech => "/audio/speech",
            Api::AudioTranscriptions => "/audio/transcriptions",
            Api::AudioTranslations => "/audio/translations",
            Api::Responses => "/responses",
        }
    }

    /// Whether only OpenAI-compatible targets serve this API (moderations, images, audio):
    /// Route skips the targets of other kinds, and answers 400 when none is left.
    pub fn openai_only(self) -> bool {
        matches!(
            self,
            Api::Moderations
                | Api::ImageGenerations
                | Api::AudioSpeech
                | Api::AudioTranscriptions
                | Api::AudioTranslations
        )
    }

    /// Whether the request body is `multipart/form-data` (an audio upload), not JSON.
    pub fn is_multipart(self) -> bool {
        matches!(self, Api::AudioTranscriptions | Api::AudioTranslations)
    }

    /// Whether usage is counted in tokens that can be estimated from the bytes (chat,
    /// completions, embeddings, messages): `false` for the endpoints billed per image, second
    /// or character, whose records carry what the upstream reported or `source: none`.
    pub fn estimable(self) -> bool {
        !self.openai_only()
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
            Api::Moderations => "moderations",
            Api::ImageGenerations => "images",
            Api::AudioSpeech => "speech",
            Api::AudioTranscriptions => "transcriptions",
            Api::AudioTranslations => "translations",
            Api::Responses => "responses",
        }
    }

    /// Whether responses of this API may stream (through the gateway).
    pub fn can_stream(self) -> bool {
        matches!(
            self,
            Api::ChatCompletions | Api::Completions | Api::Messages | Api::Responses
        )
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
    /// `max_completion_tokens`, else `max_tokens` (`max_output_tokens` for the Responses API).
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
    /// What the request itself says it will be billed by: `n` images asked for, the characters
    /// of a speech `input` (zero elsewhere).
    pub units: Units,
    /// The raw body, as received: JSON, or `multipart/form-data` for [`Api::is_multipart`].
    pub body: Bytes,
    /// Where `body`'s top-level members lie, so [`upstream_body`](Self::upstream_body) writes
    /// the upstream body without parsing the request again. Written by Parse; a
    /// `ParsedRequest` built by hand takes `BodyLayout::default()` (the body is then parsed
    /// again). A layout is only used with the very buffer it was computed from: replacing
    /// `body` is safe.
    pub layout: BodyLayout,
    /// When the gateway received the request head.
    pub received_at: Instant,
}

/// The byte ranges of the top-level members of a request body (keys with their quotes, raw
/// values), recorded by [`parse_body`] from the parse it makes anyway. Opaque; cheap to clone.
#[derive(Clone, Default)]
pub struct BodyLayout {
    /// The body the spans index (kept, so its bytes cannot change under them) and the members
    /// in order; `None` when a key had an escape (its bytes are not its name) or the body is
    /// too large for `u32` offsets.
    spans: Option<(Bytes, Arc<[Member]>)>,
}

/// One top-level member: `body[key.0..key.1]` is the key with its quotes (it has no escapes,
/// so these are exactly the bytes serde_json would write for it), `body[value.0..value.1]`
/// the raw value without surrounding whitespace.
#[derive(Debug, Clone, Copy)]
struct Member {
    key: (u32, u32),
    value: (u32, u32),
}

impl fmt::Debug for BodyLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyLayout")
            .field("members", &self.spans.as_ref().map(|(_, m)| m.len()))
            .finish()
    }
}

impl BodyLayout {
    /// The layout of `body`, whose top-level members are `fields` (borrowed from it).
    fn of(body: &Bytes, fields: &TopLevel<'_>) -> BodyLayout {
        let base = body.as_ptr() as usize;
        // `s` lies within `body`: its offsets.
        let span = |s: &str| -> Option<(usize, usize)> {
            let start = (s.as_ptr() as usize).checked_sub(base)?;
            let end = start.checked_add(s.len())?;
            (end <= body.len()).then_some((start, end))
        };
        let plain_key = |k: &Cow<'_, str>| match k {
            Cow::Borrowed(k) => span(k).is_some_and(|(start, end)| {
                start > 0 && body.get(start - 1) == Some(&b'"') && body.get(end) == Some(&b'"')
            }),
            Cow::Owned(_) => false,
        };
        let usable = u32::try_from(body.len()).is_ok()
            && fields
                .0
                .iter()
                .all(|(k, v)| plain_key(k) && span(v.get()).is_some());
        if !usable {
            return BodyLayout::default();
        }
        // Checked above: every span is within `body`, whose length fits `u32`.
        let offsets = |s: &str| {
            let (start, end) = span(s).unwrap_or_default();
            (start as u32, end as u32)
        };
        let members: Arc<[Member]> = fields
            .0
            .iter()
            .map(|(k, v)| {
                let (start, end) = offsets(k);
                Member {
                    key: (start.saturating_sub(1), end.saturating_add(1)),
                    value: offsets(v.get()),
                }
            })
            .collect();
        BodyLayout {
            spans: Some((body.clone(), members)),
        }
    }

    /// The members, if this layout was computed from `body` (the same buffer, not just the
    /// same bytes).
    fn members_of(&self, body: &Bytes) -> Option<&[Member]> {
        let (mine, members) = self.spans.as_ref()?;
        (mine.as_ptr() == body.as_ptr() && mine.len() == body.len()).then_some(&members[..])
    }
}

impl ParsedRequest {
    /// A rough prompt-token estimate (4 bytes a token) used for reservations and tier routing;
    /// never presented as a real count.
    pub fn prompt_tokens_estimate(&self) -> u64 {
        if self.api.is_multipart() {
            // An audio upload is not text: its size says nothing of tokens.
            return 0;
        }
        (self.body.len() as u64).div_ceil(4)
    }

    /// Build the body sent upstream: `model` replaced by `upstream_model`, the usage chunk
    /// requested when [`upstream_include_usage`](Self::upstream_include_usage) is set, the
    /// gateway-only `models` list removed. Every other field is copied byte-for-byte.
    pub fn upstream_body(&self, upstream_model: &str) -> Result<Bytes, GatewayError> {
        if self.api.is_multipart() {
            return multipart::with_model(&self.body, upstream_model);
        }
        if matches!(self.api, Api::Moderations | Api::ImageGenerations) {
            // `model` may be absent (a default was routed): write it.
            return with_model(&self.body, upstream_model);
        }
        if let Some(members) = self.layout.members_of(&self.body) {
            if let Some(out) = self.upstream_body_from(members, upstream_model) {
                return out;
            }
        }
        self.upstream_body_reparsed(upstream_model)
    }

    /// [`upstream_body`](Self::upstream_body) from the recorded layout: the same bytes, no
    /// parse. `None` if a span does not fit the body (never, for a layout of this body).
    fn upstream_body_from(
        &self,
        members: &[Member],
        upstream_model: &str,
    ) -> Option<Result<Bytes, GatewayError>> {
        let body = &self.body[..];
        let slice = |(start, end): (u32, u32)| body.get(start as usize..end as usize);
        let mut out = Vec::with_capacity(body.len() + 48);
        out.push(b'{');
        let mut first = true;
        let mut wrote_stream_options = false;
        let force_usage = self.stream && self.upstream_include_usage;
        for m in members {
            let key = slice(m.key)?;
            let raw = slice(m.value)?;
            let name = key.get(1..key.len().checked_sub(1)?)?;
            let replacement: Option<Vec<u8>> = match name {
                b"models" => continue,
                b"model" => Some(json_string(upstream_model).into_bytes()),
                b"stream_options" if force_usage => {
                    wrote_stream_options = true;
                    let raw = std::str::from_utf8(raw).ok()?;
                    match with_include_usage(raw) {
                        Ok(v) => Some(v.into_bytes()),
                        Err(e) => return Some(Err(e)),
                    }
                }
                _ => None,
            };
            if !first {
                out.push(b',');
            }
            first = false;
            // No escapes in the key: its bytes are what `json_string` would write.
            out.extend_from_slice(key);
            out.push(b':');
            out.extend_from_slice(replacement.as_deref().unwrap_or(raw));
        }
        if force_usage && !wrote_stream_options {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
        }
        out.push(b'}');
        Some(Ok(Bytes::from(out)))
    }

    /// [`upstream_body`](Self::upstream_body) by parsing the body again (no usable layout).
    fn upstream_body_reparsed(&self, upstream_model: &str) -> Result<Bytes, GatewayError> {
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

/// Refuse a body nested deeper than [`MAX_JSON_DEPTH`]. serde_json skips the values it does not
/// read without a depth limit, so the raw members are measured: only those long enough to
/// nest that deep (a level takes two bytes).
fn check_depth(fields: &TopLevel<'_>) -> Result<(), GatewayError> {
    let inner = MAX_JSON_DEPTH - 1;
    for (key, v) in &fields.0 {
        let raw = v.get();
        if raw.len() >= 2 * MAX_JSON_DEPTH as usize
            && crate::jsonscan::valid::nests_deeper_than(raw, inner)
        {
            let key = validate::echo(key);
            return Err(GatewayError::bad_request(
                format!("request body nests deeper than {MAX_JSON_DEPTH} levels (in member {key})"),
                None,
            ));
        }
    }
    Ok(())
}

/// The `model` member: a non-empty string of at most [`MAX_MODEL_BYTES`].
fn model_name(v: Option<&RawValue>) -> Result<Arc<str>, GatewayError> {
    let Some(v) = v else {
        return Err(GatewayError::bad_request(
            "you must provide a model parameter",
            Some("model"),
        ));
    };
    match serde_json::from_str::<Cow<'_, str>>(v.get()) {
        Ok(s) if s.is_empty() => Err(GatewayError::bad_request(
            "'model' must not be empty",
            Some("model"),
        )),
        Ok(s) if s.len() > MAX_MODEL_BYTES => Err(GatewayError::bad_request(
            format!(
                "'model' is too long ({} bytes, at most {MAX_MODEL_BYTES}): {}",
                s.len(),
                validate::echo(&s)
            ),
            Some("model"),
        )),
        Ok(s) => Ok(Arc::from(s.as_ref())),
        Err(_) => Err(GatewayError::bad_request(
            "'model' must be a string",
            Some("model"),
        )),
    }
}

/// The `model` member, or the endpoint's default model where it may be omitted.
fn request_model(api: Api, fields: &TopLevel<'_>) -> Result<Arc<str>, GatewayError> {
    Ok(match (api, fields.get("model")) {
        (Api::Moderations, None) => Arc::from(DEFAULT_MODERATION_MODEL),
        (Api::ImageGenerations, None) => Arc::from(DEFAULT_IMAGE_MODEL),
        (_, m) => model_name(m)?,
    })
}

/// `stream` (refused where `api` does not stream) and `stream_options.include_usage`.
fn stream_flags(api: Api, fields: &TopLevel<'_>) -> Result<(bool, bool), GatewayError> {
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
    Ok((stream, wants_usage))
}

/// The output-token limit: `max_completion_tokens`, else `max_output_tokens` (Responses) or
/// `max_tokens`.
fn max_tokens(api: Api, fields: &TopLevel<'_>) -> Result<Option<u64>, GatewayError> {
    match opt_u64(fields.get("max_completion_tokens"), "max_completion_tokens")? {
        Some(n) => Ok(Some(n)),
        None if api == Api::Responses => {
            opt_u64(fields.get("max_output_tokens"), "max_output_tokens")
        }
        None => opt_u64(fields.get("max_tokens"), "max_tokens"),
    }
}

/// Chat, Messages and count_tokens need a non-empty `messages` array.
fn check_messages(api: Api, fields: &TopLevel<'_>) -> Result<(), GatewayError> {
    if !matches!(api, Api::ChatCompletions | Api::Messages | Api::CountTokens) {
        return Ok(());
    }
    match fields.get("messages") {
        None => Err(GatewayError::bad_request(
            "'messages' is a required property",
            Some("messages"),
        )),
        Some(v) if !starts_with(v, b'[') => Err(GatewayError::bad_request(
            "'messages' must be an array",
            Some("messages"),
        )),
        Some(v) if v.get()[1..].trim_start().starts_with(']') => Err(GatewayError::bad_request(
            "'messages' must contain at least one message",
            Some("messages"),
        )),
        Some(_) => Ok(()),
    }
}

/// The members each endpoint requires besides `model` and `messages`.
fn check_required(
    api: Api,
    fields: &TopLevel<'_>,
    max_tokens: Option<u64>,
) -> Result<(), GatewayError> {
    const INPUT: (&str, &str) = ("'input' is a required property", "input");
    const PROMPT: (&str, &str) = ("'prompt' is a required property", "prompt");
    let missing = |k: &str| fields.get(k).is_none_or(is_null);
    let (msg, param) = match api {
        Api::Messages if max_tokens.is_none() => {
            ("'max_tokens' is a required property", "max_tokens")
        }
        Api::Embeddings if missing("input") => INPUT,
        Api::Responses
            if missing("input")
                && missing("previous_response_id")
                && missing("conversation")
                && missing("prompt") =>
        {
            INPUT
        }
        Api::Completions | Api::ImageGenerations if missing("prompt") => PROMPT,
        Api::Moderations | Api::AudioSpeech if missing("input") => INPUT,
        _ => return Ok(()),
    };
    Err(GatewayError::bad_request(msg, Some(param)))
}

/// Whether the request offers tools (a non-empty `tools` or `functions` array).
fn has_tools(fields: &TopLevel<'_>) -> bool {
    let non_empty_array = |k: &str| {
        fields
            .get(k)
            .is_some_and(|v| starts_with(v, b'[') && !v.get()[1..].trim_start().starts_with(']'))
    };
    non_empty_array("tools") || non_empty_array("functions")
}

/// Whether the request's content (by a byte scan) carries an image part.
fn has_images(api: Api, fields: &TopLevel<'_>) -> bool {
    let (image_key, content_key): (&[u8], &str) = match api {
        _ if api.is_anthropic() => (b"\"image\"", "messages"),
        Api::Responses => (b"\"input_image\"", "input"),
        _ => (b"\"image_url\"", "messages"),
    };
    fields
        .get(content_key)
        .is_some_and(|m| memchr::memmem::find(m.get().as_bytes(), image_key).is_some())
}

/// Whether the request asks for JSON output (by a byte scan of its format member).
fn json_mode(api: Api, fields: &TopLevel<'_>) -> bool {
    let format_key = match api {
        _ if api.is_anthropic() => "output_config",
        Api::Responses => "text",
        _ => "response_format",
    };
    fields.get(format_key).is_some_and(|v| {
        let s = v.get().as_bytes();
        memchr::memmem::find(s, b"json_object").is_some()
            || memchr::memmem::find(s, b"json_schema").is_some()
    })
}

/// The client's own fallback list (`models`), each name at most [`MAX_MODEL_BYTES`].
fn fallback_models(fields: &TopLevel<'_>) -> Result<Option<Arc<[Arc<str>]>>, GatewayError> {
    let v = match fields.get("models") {
        None => return Ok(None),
        Some(v) if is_null(v) => return Ok(None),
        Some(v) => v,
    };
    let list: Vec<String> = serde_json::from_str(v.get()).map_err(|_| {
        GatewayError::bad_request("'models' must be an array of strings", Some("models"))
    })?;
    if let Some(long) = list.iter().find(|m| m.len() > MAX_MODEL_BYTES) {
        return Err(GatewayError::bad_request(
            format!(
                "a name in 'models' is too long (at most {MAX_MODEL_BYTES} bytes): {}",
                validate::echo(long)
            ),
            Some("models"),
        ));
    }
    Ok(Some(list.into_iter().map(Arc::from).collect()))
}

/// Parse a request body for `api` into a [`ParsedRequest`].
pub fn parse_body(api: Api, body: Bytes) -> Result<ParsedRequest, GatewayError> {
    if api.is_multipart() {
        return multipart::parse(api, body);
    }
    let received_at = Instant::now();
    let fields = TopLevel::parse(&body)?;

    check_depth(&fields)?;
    let model = request_model(api, &fields)?;
    let (stream, wants_usage) = stream_flags(api, &fields)?;
    let max_tokens = max_tokens(api, &fields)?;
    check_messages(api, &fields)?;
    check_required(api, &fields, max_tokens)?;
    let units = requested_units(api, &fields)?;

    let has_tools = has_tools(&fields);
    let has_images = has_images(api, &fields);
    let json_mode = json_mode(api, &fields);
    let fallback_models = fallback_models(&fields)?;
    let base64_embeddings = api == Api::Embeddings
        && fields
            .get("encoding_format")
            .is_some_and(|v| v.get() == "\"base64\"");

    validate::check(api, &fields)?;
    let layout = BodyLayout::of(&body, &fields);
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
        units,
        body,
        layout,
        received_at,
    })
}

/// What a request says it will be billed by: `n` images (default 1), or the characters of a
/// speech `input`.
fn requested_units(api: Api, fields: &TopLevel<'_>) -> Result<Units, GatewayError> {
    Ok(match api {
        Api::ImageGenerations => Units {
            images: opt_u64(fields.get("n"), "n")?.unwrap_or(1),
            ..Units::default()
        },
        Api::AudioSpeech => {
            let input = fields.get("input").map(RawValue::get).unwrap_or("\"\"");
            let text: Cow<'_, str> = serde_json::from_str(input).map_err(|_| {
                GatewayError::bad_request("'input' must be a string", Some("input"))
            })?;
            Units {
                characters: text.chars().count() as u64,
                ..Units::default()
            }
        }
        _ => Units::default(),
    })
}

/// Default body cap: 16 MiB (images travel inline as base64).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;

/// Default body read timeout: a body with no byte for 60 s is answered 408 (nginx's
/// `client_body_timeout`).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default cap of an audio upload (`multipart/form-data`): 26 MiB, OpenAI's 25 MB file limit
/// plus room for the form's other fields.
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 26 << 20;

/// Layer for [`Parse`]: configuration only.
#[derive(Debug, Clone, Copy)]
pub struct ParseLayer {
    max_body_bytes: usize,
    body_read_timeout: Option<Duration>,
    max_upload_bytes: usize,
}

impl Default for ParseLayer {
    fn default() -> Self {
        ParseLayer {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            body_read_timeout: Some(DEFAULT_BODY_READ_TIMEOUT),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
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
    /// A body that sends no byte for `d` is answered 408 (`None`: wait for ever). Default
    /// [`DEFAULT_BODY_READ_TIMEOUT`].
    pub fn body_read_timeout(mut self, d: Option<Duration>) -> Self {
        self.body_read_timeout = d;
        self
    }
    /// Set the cap of a `multipart/form-data` audio upload (default
    /// [`DEFAULT_MAX_UPLOAD_BYTES`]); larger uploads are answered 413, before a byte is read
    /// when `Content-Length` says so.
    pub fn max_upload_bytes(mut self, n: usize) -> Self {
        self.max_upload_bytes = n;
        self
    }
}

impl<S> Layer<S> for ParseLayer {
    type Service = Parse<S>;
    fn layer(&self, inner: S) -> Parse<S> {
        Parse {
            inner,
            max_body_bytes: self.max_body_bytes,
            body_read_timeout: self.body_read_timeout,
            max_upload_bytes: self.max_upload_bytes,
        }
    }
}

/// Buffers the body (capped), parses it, and calls the inner service with a
/// `Request<Full<Bytes>>` carrying a [`ParsedRequest`] extension.
#[derive(Debug, Clone)]
pub struct Parse<S> {
    inner: S,
    max_body_bytes: usize,
    body_read_timeout: Option<Duration>,
    max_upload_bytes: usize,
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
        let (mut parts, body) = req.into_parts();
        if let Err(e) = order::enter(&mut parts.extensions, Checked::Parse) {
            return ParseFuture::failed(e);
        }
        let api = match Api::from_path(parts.uri.path()) {
            Some(api) => api,
            None => {
                return ParseFuture::failed(GatewayError::new(
                    ErrorKind::NotFound,
                    format!("no endpoint at {}", prefix(parts.uri.path())),
                ));
            }
        };
        if parts.method != Method::POST {
            return ParseFuture::failed(GatewayError::new(
                ErrorKind::MethodNotAllowed,
                format!(
                    "{} is not allowed on {}; use POST",
                    prefix(parts.method.as_str()),
                    prefix(parts.uri.path())
                ),
            ));
        }
        // The key was refused from the headers (KeyCheck): read none of the body; Auth
        // answers 401 and the UsageMeter records it.
        if crate::auth::refused_early(&parts.extensions) {
            let mut inner = inner;
            let req = Request::from_parts(parts, Full::new(Bytes::new()));
            return ParseFuture {
                state: ParseState::Calling {
                    fut: inner.call(req),
                },
            };
        }
        let max = if api.is_multipart() {
            if let Err(e) = multipart_content_type(&parts.headers) {
                return ParseFuture::failed(e);
            }
            self.max_upload_bytes
        } else {
            self.max_body_bytes
        };
        if let Some(len) = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > max as u64 {
                return ParseFuture::failed(too_large(max));
            }
        }
        // The server's shutdown: a body still arriving then is refused, not waited for.
        let drain = parts.extensions.get::<crate::ext::Drain>().cloned();
        ParseFuture {
            state: ParseState::Collecting {
                drain,
                stop: None,
                collect: Limited::new(TimedBody::new(body, self.body_read_timeout), max).collect(),
                parts: Some(parts),
                api,
                inner: Some(inner),
                max,
            },
        }
    }
}

fn read_timed_out(t: BodyReadTimeout) -> GatewayError {
    GatewayError::new(
        ErrorKind::BadRequest,
        format!(
            "the request body stalled: no data for {} ms",
            t.0.as_millis()
        ),
    )
    .with_status(http::StatusCode::REQUEST_TIMEOUT)
    .with_code("request_timeout")
}

/// An audio upload must say `multipart/form-data` with a boundary (it is forwarded upstream).
fn multipart_content_type(headers: &http::HeaderMap) -> Result<(), GatewayError> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match multipart::boundary_of_header(ct) {
        Some(_) => Ok(()),
        None => Err(GatewayError::bad_request(
            "this endpoint takes a multipart/form-data body (Content-Type with a boundary)",
            None,
        )),
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
            drain: Option<crate::ext::Drain>,
            // Made from `drain` the first time the body is not all there.
            stop: Option<crate::ext::DrainWait>,
            #[pin]
            collect: http_body_util::combinators::Collect<Limited<TimedBody<B>>>,
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
                    drain,
                    stop,
                    collect,
                    parts,
                    api,
                    inner,
                    max,
                } => {
                    let Poll::Ready(collected) = collect.poll(cx) else {
                        if stop.is_none() {
                            *stop = drain
                                .take()
                                .map(|d| d.wait(crate::ext::DrainPhase::Stopping));
                        }
                        if stop
                            .as_mut()
                            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
                        {
                            let e = GatewayError::new(
                                ErrorKind::ShuttingDown,
                                "the gateway is shutting down; the request body had not arrived",
                            );
                            this.state.set(ParseState::Failed { error: Some(e) });
                            continue;
                        }
                        return Poll::Pending;
                    };
                    let bytes = match collected {
                        Ok(c) => c.to_bytes(),
                        Err(e) => {
                            let e = if e.is::<http_body_util::LengthLimitError>() {
                                too_large(*max)
                            } else if let Some(t) = e.downcast_ref::<BodyReadTimeout>() {
                                read_timed_out(*t)
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

    #[tokio::test]
    async fn a_body_still_arriving_at_shutdown_is_refused_at_once() {
        use tower::{Layer, ServiceExt};
        let control = crate::ext::DrainControl::new(std::time::Duration::from_secs(60));
        let inner = tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, GatewayError>(Response::new(Body::from("called")))
        });
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(1);
        let mut rx = rx;
        let body = http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        }));
        let mut req = Request::post("/v1/chat/completions").body(body).unwrap();
        req.extensions_mut().insert(control.drain());
        let call = tokio::spawn(ParseLayer::new().layer(inner).oneshot(req));
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(
            b"{\"model\":",
        ))))
        .await
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!call.is_finished(), "waits for the rest of the body");
        control.advance(crate::ext::DrainPhase::Stopping);
        let res = tokio::time::timeout(std::time::Duration::from_secs(2), call)
            .await
            .expect("refused at once")
            .unwrap();
        let Err(err) = res else { panic!("refused") };
        assert_eq!(err.kind(), ErrorKind::ShuttingDown);
        assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        drop(tx);
    }

    #[test]
    fn reads_what_it_needs() {
        let p = parse(r#"{"model":"gpt","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":7,"tools":[{"type":"function","function":{"name":"f"}}],"x_unknown":{"a":[1,2]}}"#).unwrap();
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
            Bytes::from_static(br#"{"model":"c","max_tokens":9,"stream":true,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}],"tools":[{"name":"t","input_schema":{"type":"object"}}]}"#),
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

    /// `p.upstream_body(model)` by both ways, with errors as their JSON (for comparing).
    fn both_ways(p: &ParsedRequest, model: &str) -> [Result<Bytes, serde_json::Value>; 2] {
        [
            p.upstream_body(model).map_err(|e| e.to_json()),
            p.upstream_body_reparsed(model).map_err(|e| e.to_json()),
        ]
    }

    #[test]
    fn upstream_body_uses_the_layout_and_writes_the_same_bytes() {
        let body = r#" { "model" : "alias" ,"messages":[{"role":"user","content":"h\u00e9 \"x\""}], "stream" :true,
            "models":["a"], "é":{"model":1}, "stream_options" : { "include_obfuscation" : false } } "#;
        let mut p = parse(body).unwrap();
        assert_eq!(p.layout.members_of(&p.body).map(<[_]>::len), Some(6));
        for force in [false, true] {
            p.upstream_include_usage = force;
            let [fast, slow] = both_ways(&p, "up\"stream\u{1}é");
            assert_eq!(fast, slow);
            let v: serde_json::Value = serde_json::from_slice(&fast.unwrap()).unwrap();
            assert_eq!(v["model"], "up\"stream\u{1}é");
            assert_eq!(v["é"]["model"], 1);
            let want = if force {
                serde_json::Value::Bool(true)
            } else {
                serde_json::Value::Null
            };
            assert_eq!(v["stream_options"]["include_usage"], want);
        }
    }

    #[test]
    fn upstream_body_parses_again_when_there_is_no_usable_layout() {
        // An escaped key has no layout: `mod\u0065l` is `model`, and is replaced.
        let mut p =
            parse(r#"{"mod\u0065l":"a","messages":[{"role":"user","content":"x"}],"models":null}"#)
                .unwrap();
        assert!(p.layout.members_of(&p.body).is_none());
        assert_eq!(
            &p.upstream_body("b").unwrap()[..],
            br#"{"model":"b","messages":[{"role":"user","content":"x"}]}"#
        );
        // A replaced body is never read through the old layout.
        p = parse(r#"{"model":"a","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        p.body = Bytes::from_static(br#"{"messages":[2],"model":"c","x":3}"#);
        assert!(p.layout.members_of(&p.body).is_none());
        assert_eq!(
            &p.upstream_body("b").unwrap()[..],
            br#"{"messages":[2],"model":"b","x":3}"#
        );
        // A hand-built layout is empty.
        p.layout = BodyLayout::default();
        assert_eq!(
            &p.upstream_body("d").unwrap()[..],
            br#"{"messages":[2],"model":"d","x":3}"#
        );
        // Equal bytes in another buffer are not the same body either.
        let q = parse(r#"{"model":"a","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        let copy = Bytes::from(q.body.to_vec());
        assert!(q.layout.members_of(&copy).is_none());
        assert!(q.layout.members_of(&q.body.clone()).is_some());
    }

    #[test]
    fn a_bad_earlier_duplicate_is_refused_too() {
        // Parse reads the last `stream_options`, but checks every one: an upstream that takes
        // the first would otherwise get a malformed request.
        let e = parse(
            r#"{"model":"a","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":[1],"stream_options":{}}"#,
        )
        .unwrap_err();
        assert_eq!(e.to_json()["error"]["param"], "stream_options");
    }

    mod props {
        use super::*;
        use crate::jsonscan::testgen::{J, render, string};
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "temperature",
                "tools",
                "user",
                "x",
                "é",
                "Model",
                "models ",
                "stream_options",
                "model",
                "k\\u00e9y",
                "mod\\u0065l",
                "stream\\u005foptions",
                "\\\"quoted\\\"",
            ])
            .prop_map(str::to_owned)
        }

        fn value() -> BoxedStrategy<J> {
            crate::jsonscan::testgen::value(key().boxed())
        }

        fn bool_or_null() -> impl Strategy<Value = J> {
            prop::sample::select(vec![J::Lit("true"), J::Lit("false"), J::Lit("null")])
        }

        fn stream_options() -> impl Strategy<Value = J> {
            let so_key = prop::sample::select(vec![
                "include_usage",
                "include_obfuscation",
                "x",
                "include_us\\u0061ge",
            ])
            .prop_map(str::to_owned);
            prop_oneof![
                1 => Just(J::Lit("null")),
                4 => prop::collection::vec(
                    (so_key, prop_oneof![3 => bool_or_null(), 1 => value()]),
                    0..4,
                )
                .prop_map(J::Obj),
            ]
        }

        fn model_name() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("gpt-4o".to_owned()),
                Just("gpt\\u002d4o".to_owned()),
                Just("caf\\u00e9 \\\"m\\\"".to_owned()),
                "[a-z0-9./:-]{1,12}",
            ]
        }

        /// A request body's top-level members, `model` and `messages` always among them, in
        /// any order, with duplicates, escaped keys and gateway-read members.
        fn members() -> impl Strategy<Value = (Vec<(String, J)>, bool)> {
            // Valid messages (Parse checks them), with other members in any order.
            let messages = prop::collection::vec(
                (
                    prop::collection::vec(
                        (
                            prop::sample::select(vec!["name", "model", "x"])
                                .prop_map(str::to_owned),
                            prop_oneof![string().prop_map(J::Str), value()],
                        ),
                        0..3,
                    ),
                    string(),
                    any::<prop::sample::Index>(),
                )
                    .prop_map(|(mut m, content, at)| {
                        m.insert(
                            at.index(m.len() + 1),
                            ("content".to_owned(), J::Str(content)),
                        );
                        m.insert(0, ("role".to_owned(), J::Str("user".to_owned())));
                        J::Obj(m)
                    }),
                1..3,
            )
            .prop_map(J::Arr);
            let member = prop_oneof![
                2 => model_name().prop_map(|m| ("model".to_owned(), J::Str(m))),
                1 => prop_oneof![
                    Just(J::Lit("null")),
                    prop::collection::vec(model_name().prop_map(J::Str), 0..3).prop_map(J::Arr),
                ]
                .prop_map(|v| ("models".to_owned(), v)),
                3 => prop_oneof![2 => Just(J::Lit("true")), 1 => bool_or_null()]
                    .prop_map(|v| ("stream".to_owned(), v)),
                3 => stream_options().prop_map(|v| ("stream_options".to_owned(), v)),
                1 => Just(("max_tokens".to_owned(), J::Num("64".to_owned()))),
                1 => model_name().prop_map(|m| ("mod\\u0065l".to_owned(), J::Str(m))),
                3 => (key(), value()).prop_filter("the gateway reads these", |(k, _)| {
                    !matches!(k.as_str(), "model" | "mod\\u0065l" | "stream_options" | "stream\\u005foptions")
                }),
            ];
            (
                prop::collection::vec(member, 0..8),
                model_name(),
                messages,
                any::<prop::sample::Index>(),
                any::<prop::sample::Index>(),
            )
                .prop_map(|(mut m, model, messages, i, j)| {
                    m.insert(i.index(m.len() + 1), ("messages".to_owned(), messages));
                    m.insert(j.index(m.len() + 1), ("model".to_owned(), J::Str(model)));
                    let plain = m.iter().all(|(k, _)| !k.contains('\\'));
                    (m, plain)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            #[test]
            fn upstream_body_from_the_layout_equals_the_reparse(
                (members, plain) in members(),
                ws in prop::collection::vec(any::<usize>(), 0..12),
                include_usage in any::<bool>(),
                upstream in prop_oneof![
                    Just("gpt-4o-2024-08-06".to_owned()),
                    Just("m\"q\\\u{1}é/\u{2028}".to_owned()),
                    "\\PC{0,8}",
                ],
            ) {
                let body = render(&J::Obj(members), &ws);
                let Ok(mut p) = parse(&body) else {
                    // Refused by Parse: no upstream body is ever written.
                    return Ok(());
                };
                prop_assert_eq!(p.layout.members_of(&p.body).is_some(), plain, "{}", body);
                p.upstream_include_usage = include_usage;
                let [fast, slow] = both_ways(&p, &upstream);
                prop_assert_eq!(fast, slow, "{}", body);
                // And a hand-built request (no layout) agrees.
                let mut q = p.clone();
                q.layout = BodyLayout::default();
                prop_assert_eq!(
                    q.upstream_body(&upstream).map_err(|e| e.to_json()),
                    p.upstream_body(&upstream).map_err(|e| e.to_json())
                );
            }
        }
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
        let mut p = parse(r#"{"model":"a","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_obfuscation":false}}"#).unwrap();
        p.upstream_include_usage = true;
        let out = p.upstream_body("b").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["include_obfuscation"], false);
    }
}
