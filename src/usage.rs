//! Usage (token counts in OpenAI's semantics, read from OpenAI and Anthropic answers), usage
//! records, outcomes and prices. How usage travels between layers: [`ext`](crate::ext).

use serde::{Deserialize, Serialize};

use crate::jsonscan::Lookup;

/// The default ceiling on one plausible usage count: 10 million tokens, above any model's
/// context window today. A larger count is a broken upstream, recorded as an estimate.
pub const DEFAULT_MAX_USAGE_TOKENS: u64 = 10_000_000;

/// Token counts in OpenAI's semantics: `prompt_tokens` includes cached tokens,
/// `completion_tokens` includes reasoning tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens, including cache reads and writes.
    pub prompt_tokens: u64,
    /// Output tokens, including reasoning tokens.
    pub completion_tokens: u64,
    /// `prompt_tokens + completion_tokens` as the upstream reported it.
    pub total_tokens: u64,
    /// Input tokens read from the provider's prompt cache (a subset of `prompt_tokens`).
    #[serde(default)]
    pub cached_tokens: u64,
    /// Input tokens written to the provider's prompt cache (a subset of `prompt_tokens`).
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// Reasoning tokens (a subset of `completion_tokens`).
    #[serde(default)]
    pub reasoning_tokens: u64,
}

/// What the endpoints billed per unit count, beside tokens: images generated, characters of
/// speech input, milliseconds of transcribed audio. Zero where not applicable; records leave
/// out the zero ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Units {
    /// Images generated (`/v1/images/generations`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub images: u64,
    /// Characters of speech input (`/v1/audio/speech`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub characters: u64,
    /// Milliseconds of audio transcribed or translated, as the upstream reported them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub audio_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Units {
    /// Whether every count is zero.
    pub fn is_empty(&self) -> bool {
        *self == Units::default()
    }
}

/// The `usage` of an image or audio answer: tokens (`gpt-image-1`, `gpt-4o-transcribe`:
/// `input_tokens` / `output_tokens`), or `{"type": "duration", "seconds": N}` (`whisper-1`).
#[derive(Debug, Default, Deserialize)]
struct WireUnitUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    seconds: Option<f64>,
}

/// The parts of an image or transcription answer the gateway counts.
#[derive(Deserialize)]
struct UnitAnswer {
    #[serde(default)]
    usage: Option<WireUnitUsage>,
    /// Images: one entry per image.
    #[serde(default)]
    data: Option<Vec<serde::de::IgnoredAny>>,
    /// Transcriptions in `verbose_json`: the audio's length in seconds.
    #[serde(default)]
    duration: Option<f64>,
}

/// Seconds (as an upstream reports them) to whole milliseconds; `None` for nonsense.
fn seconds_to_ms(s: f64) -> Option<u64> {
    (s.is_finite() && s >= 0.0).then(|| (s * 1000.0).round() as u64)
}

/// The usage an image or transcription answer reports: tokens where it counts them, and the
/// units (images in `data`, audio seconds from `usage.seconds` or `duration`). `None` parts
/// were not reported (or the answer is not JSON: `response_format: "text"`, `"srt"`, `"vtt"`).
pub fn units_from_json(api: crate::request::Api, doc: &[u8]) -> (Option<Usage>, Option<Units>) {
    use crate::request::Api;
    let Ok(a) = serde_json::from_slice::<UnitAnswer>(doc) else {
        return (None, None);
    };
    let usage = a.usage.as_ref().and_then(|u| {
        let (i, o) = (u.input_tokens?, u.output_tokens.unwrap_or(0));
        Some(Usage {
            prompt_tokens: i,
            completion_tokens: o,
            total_tokens: u.total_tokens.unwrap_or(i.saturating_add(o)),
            ..Usage::default()
        })
    });
    let units = match api {
        Api::ImageGenerations => a.data.map(|d| Units {
            images: d.len() as u64,
            ..Units::default()
        }),
        Api::AudioTranscriptions | Api::AudioTranslations => a
            .usage
            .and_then(|u| u.seconds)
            .or(a.duration)
            .and_then(seconds_to_ms)
            .map(|ms| Units {
                audio_ms: ms,
                ..Units::default()
            }),
        _ => None,
    };
    (usage, units)
}

/// The `usage` object as OpenAI sends it; tolerant of missing and extra fields.
#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<WireCompletionDetails>,
    /// DeepSeek reports cache hits here instead of `prompt_tokens_details.cached_tokens`.
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    cache_write_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct WireCompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// The Responses API's `usage` object (`input_tokens` includes cached tokens, `output_tokens`
/// includes reasoning tokens: OpenAI's semantics under other names).
#[derive(Debug, Default, Deserialize)]
struct ResponsesWireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    input_tokens_details: Option<WirePromptDetails>,
    #[serde(default)]
    output_tokens_details: Option<WireCompletionDetails>,
}

impl From<ResponsesWireUsage> for Usage {
    fn from(w: ResponsesWireUsage) -> Self {
        let p = w.input_tokens_details.unwrap_or_default();
        let c = w.output_tokens_details.unwrap_or_default();
        Usage {
            prompt_tokens: w.input_tokens,
            completion_tokens: w.output_tokens,
            total_tokens: w
                .total_tokens
                .unwrap_or(w.input_tokens.saturating_add(w.output_tokens)),
            cached_tokens: p.cached_tokens.unwrap_or(0),
            cache_write_tokens: p.cache_write_tokens.unwrap_or(0),
            reasoning_tokens: c.reasoning_tokens.unwrap_or(0),
        }
    }
}

impl From<WireUsage> for Usage {
    fn from(w: WireUsage) -> Self {
        let p = w.prompt_tokens_details.unwrap_or_default();
        let c = w.completion_tokens_details.unwrap_or_default();
        Usage {
            prompt_tokens: w.prompt_tokens,
            completion_tokens: w.completion_tokens,
            total_tokens: w
                .total_tokens
                .unwrap_or(w.prompt_tokens.saturating_add(w.completion_tokens)),
            cached_tokens: p.cached_tokens.or(w.prompt_cache_hit_tokens).unwrap_or(0),
            cache_write_tokens: p.cache_write_tokens.unwrap_or(0),
            reasoning_tokens: c.reasoning_tokens.unwrap_or(0),
        }
    }
}

/// A document with a top-level `usage` member of type `T`: how serde reads it. The serde path of
/// [`read_usage`], and the oracle its fast path is tested against.
#[derive(Deserialize)]
struct HasUsage<T> {
    #[serde(default)]
    usage: Option<T>,
}

/// The top-level `usage` of the JSON document `doc` as `T`: exactly what
/// `serde_json::from_slice::<HasUsage<T>>(doc)` gives (`None` when absent, null or when the
/// document is not valid JSON), but without walking the rest of the document through serde.
/// [`jsonscan`](crate::jsonscan) checks the document and finds the member, serde reads only
/// that; whatever the scan is unsure of (escaped top-level keys, a duplicate `usage`,
/// malformed input) goes the serde way.
fn read_usage<T: serde::de::DeserializeOwned + Default>(doc: &[u8]) -> Option<T> {
    // The member is read where it lies, by the same deserializer the whole-document parse
    // would use: a value it refuses fails that parse too.
    let read = |rest: &[u8]| {
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<Option<T>>();
        let value = values.next()?.ok()?;
        Some((value, values.byte_offset()))
    };
    match crate::jsonscan::read_top_level(doc, "usage", read) {
        Lookup::Found(usage) => usage,
        Lookup::Missing | Lookup::Refused => None,
        Lookup::Unsure => usage_via_serde(doc),
    }
}

/// [`read_usage`] the serde way: the whole document through serde_json.
fn usage_via_serde<T: serde::de::DeserializeOwned + Default>(doc: &[u8]) -> Option<T> {
    serde_json::from_slice::<HasUsage<T>>(doc).ok()?.usage
}

impl Usage {
    /// Read the top-level `usage` object of an OpenAI JSON document (a `chat.completion`, a
    /// `chat.completion.chunk`, an embeddings or completions response). `None` when absent or null.
    pub fn from_openai_json(doc: &[u8]) -> Option<Usage> {
        read_usage::<WireUsage>(doc).map(Usage::from)
    }

    /// Read the top-level `usage` of a Responses API `response` object (`input_tokens`,
    /// `input_tokens_details.cached_tokens`, `output_tokens`,
    /// `output_tokens_details.reasoning_tokens`). `None` when absent or null.
    pub fn from_responses_json(doc: &[u8]) -> Option<Usage> {
        read_usage::<ResponsesWireUsage>(doc).map(Usage::from)
    }

    /// Read the usage of a Responses stream's terminal event (`response.completed`,
    /// `response.incomplete`, `response.failed`): its `response.usage`.
    pub fn from_responses_event(data: &[u8]) -> Option<Usage> {
        #[derive(Deserialize)]
        struct Event {
            #[serde(default)]
            response: Option<HasUsage<ResponsesWireUsage>>,
        }
        let e: Event = serde_json::from_slice(data).ok()?;
        e.response?.usage.map(Usage::from)
    }

    /// Usage from Anthropic's counts: `input_tokens` excludes cache reads and writes, so the
    /// OpenAI-semantics `prompt_tokens` is their sum; thinking tokens are part of `output_tokens`.
    pub fn from_anthropic(u: &AnthropicUsage) -> Usage {
        let prompt = u
            .input_tokens
            .saturating_add(u.cache_read_input_tokens)
            .saturating_add(u.cache_creation_input_tokens);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: u.output_tokens,
            total_tokens: prompt.saturating_add(u.output_tokens),
            cached_tokens: u.cache_read_input_tokens,
            cache_write_tokens: u.cache_creation_input_tokens,
            reasoning_tokens: u.thinking_tokens,
        }
    }

    /// Read the top-level `usage` object of an Anthropic Messages response. `None` when absent
    /// or all zero (no report: a real answer always counts its input).
    pub fn from_anthropic_json(doc: &[u8]) -> Option<Usage> {
        let d = read_usage::<AnthropicUsageDelta>(doc)?;
        let mut u = AnthropicUsage::default();
        u.apply(&d);
        Some(Usage::from_anthropic(&u)).filter(|u| *u != Usage::default())
    }

    /// Read the usage of a whole (non-streaming) JSON answer of `api`: OpenAI's `usage` for the
    /// OpenAI APIs, Anthropic's for `/v1/messages`; a token count costs no tokens (zero).
    pub fn from_json(api: crate::request::Api, doc: &[u8]) -> Option<Usage> {
        use crate::request::Api;
        match api {
            Api::Messages => Usage::from_anthropic_json(doc),
            Api::CountTokens => Some(Usage::default()),
            Api::ImageGenerations | Api::AudioTranscriptions | Api::AudioTranslations => {
                units_from_json(api, doc).0
            }
            // A moderation answer has no usage; speech is audio.
            Api::Moderations | Api::AudioSpeech => None,
            Api::Responses => Usage::from_responses_json(doc),
            Api::ChatCompletions | Api::Completions | Api::Embeddings => {
                Usage::from_openai_json(doc)
            }
        }
    }

    /// Why these counts cannot be what the upstream billed, if they cannot: a count above
    /// `ceiling` (no request has more tokens than the largest context window; 2^64 − 1 is a
    /// broken upstream, not a bill), or parts larger than their whole (more cached tokens
    /// than prompt tokens, more reasoning than completion tokens).
    pub fn implausible(&self, ceiling: u64) -> Option<&'static str> {
        let counts = [
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
            self.cached_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
        ];
        if counts.iter().any(|&n| n > ceiling) {
            return Some("upstream usage above the plausible ceiling");
        }
        if self.cached_tokens.saturating_add(self.cache_write_tokens) > self.prompt_tokens
            || self.reasoning_tokens > self.completion_tokens
        {
            return Some("upstream usage inconsistent");
        }
        None
    }

    /// Whether the JSON document `doc` has a top-level `usage` that is not null (whether or
    /// not it reads as counts): with [`from_openai_json`](Self::from_openai_json) giving
    /// `None`, the upstream sent a usage the gateway cannot read (negative, fractional, text).
    pub fn present_in(doc: &[u8]) -> bool {
        read_usage::<serde::de::IgnoredAny>(doc).is_some()
    }

    /// Sum of two usages (for aggregation); saturates instead of overflowing.
    pub fn add(&self, other: &Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.saturating_add(other.prompt_tokens),
            completion_tokens: self
                .completion_tokens
                .saturating_add(other.completion_tokens),
            total_tokens: self.total_tokens.saturating_add(other.total_tokens),
            cached_tokens: self.cached_tokens.saturating_add(other.cached_tokens),
            cache_write_tokens: self
                .cache_write_tokens
                .saturating_add(other.cache_write_tokens),
            reasoning_tokens: self.reasoning_tokens.saturating_add(other.reasoning_tokens),
        }
    }
}

/// Anthropic's usage counts, as the Messages API reports them (`input_tokens` excludes cache
/// reads and writes). In a stream, `message_start` carries the first counts and each
/// `message_delta` the cumulative ones: [`apply`](Self::apply) each in turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnthropicUsage {
    /// `input_tokens` (uncached input).
    pub input_tokens: u64,
    /// `output_tokens` (thinking included).
    pub output_tokens: u64,
    /// `cache_read_input_tokens`.
    pub cache_read_input_tokens: u64,
    /// `cache_creation_input_tokens`.
    pub cache_creation_input_tokens: u64,
    /// `output_tokens_details.thinking_tokens`.
    pub thinking_tokens: u64,
}

/// An Anthropic `usage` object with every field optional (a `message_delta` may carry only
/// `output_tokens`).
#[derive(Debug, Default, Deserialize)]
pub struct AnthropicUsageDelta {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens_details: Option<AnthropicOutputDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct AnthropicOutputDetails {
    #[serde(default)]
    thinking_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Overwrite the counts `delta` carries (they are cumulative, never added).
    pub fn apply(&mut self, delta: &AnthropicUsageDelta) {
        let set = |dst: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut self.input_tokens, delta.input_tokens);
        set(&mut self.output_tokens, delta.output_tokens);
        set(
            &mut self.cache_read_input_tokens,
            delta.cache_read_input_tokens,
        );
        set(
            &mut self.cache_creation_input_tokens,
            delta.cache_creation_input_tokens,
        );
        set(
            &mut self.thinking_tokens,
            delta
                .output_tokens_details
                .as_ref()
                .and_then(|d| d.thinking_tokens),
        );
    }
}

/// Where a record's usage came from. An estimate is never presented as exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    /// Counted by the upstream and reported by it.
    Upstream,
    /// Estimated by the gateway (the upstream reported nothing, e.g. a cut stream).
    Estimated,
    /// No usage known.
    None,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Complete answer delivered.
    Success,
    /// The upstream answered with an error status (before the commit point).
    UpstreamError,
    /// A deadline expired.
    Timeout,
    /// The client went away before the answer was complete.
    ClientDisconnect,
    /// The stream failed after the commit point (cut, in-band error).
    StreamError,
    /// Refused by the gateway (auth, limits, bad request, no route).
    Refused,
    /// Any other gateway failure.
    GatewayError,
}

impl Outcome {
    /// How a request that ended with an error of `kind` (before any response) ended: the
    /// gateway's own refusals are `refused`, a deadline `timeout`, a gateway bug
    /// `gateway_error`, anything else from an upstream `upstream_error`.
    pub fn of_error(kind: crate::error::ErrorKind) -> Outcome {
        use crate::error::ErrorKind;
        match kind {
            ErrorKind::BadRequest
            | ErrorKind::PayloadTooLarge
            | ErrorKind::MethodNotAllowed
            | ErrorKind::NotFound
            | ErrorKind::ModelNotFound
            | ErrorKind::Unauthorized
            | ErrorKind::Forbidden
            | ErrorKind::RateLimited
            | ErrorKind::BudgetExceeded => Outcome::Refused,
            ErrorKind::UpstreamTimeout => Outcome::Timeout,
            ErrorKind::Internal | ErrorKind::MisconfiguredStack | ErrorKind::ShuttingDown => {
                Outcome::GatewayError
            }
            _ => Outcome::UpstreamError,
        }
    }

    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout => "timeout",
            Outcome::ClientDisconnect => "client_disconnect",
            Outcome::StreamError => "stream_error",
            Outcome::Refused => "refused",
            Outcome::GatewayError => "gateway_error",
        }
    }
}

/// One record per request, emitted on every terminal path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The request id (`x-request-id`).
    pub request_id: Option<String>,
    /// The virtual key's id (never the secret).
    pub key_id: Option<String>,
    /// The key's tenant.
    pub tenant: Option<String>,
    /// The public model name after alias resolution (or as requested, if unrouted).
    pub model: String,
    /// The provider that served (or last failed).
    pub provider: Option<String>,
    /// The exact upstream model id.
    pub upstream_model: Option<String>,
    /// A/B variant, when a split chose one.
    pub variant: Option<String>,
    /// Number of upstream attempts made.
    pub attempts: u32,
    /// Whether the request was a stream.
    pub stream: bool,
    /// How it ended.
    pub outcome: Outcome,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Error kind label, when failed.
    pub error_kind: Option<String>,
    /// Token usage.
    pub usage: Usage,
    /// Units billed per image, character or second (images, speech, transcriptions); absent
    /// when none.
    #[serde(default, skip_serializing_if = "Units::is_empty")]
    pub units: Units,
    /// Where `usage` came from.
    pub usage_source: UsageSource,
    /// Why `usage` is an estimate although the upstream sent a usage (unreadable or absurd
    /// counts, e.g. 2^64 − 1), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_note: Option<String>,
    /// Cost in pico-USD (10^-12 USD; integer, so sums never drift), when priced.
    pub cost_pico: Option<u64>,
    /// Time to first body byte from the upstream, ms.
    pub ttft_ms: Option<f64>,
    /// Total time, ms.
    pub total_ms: f64,
    /// Time spent in the gateway itself, excluding waiting on the upstream, µs.
    pub overhead_us: Option<f64>,
    /// Unix time (ms) the request started.
    pub started_at_ms: u64,
}

impl UsageRecord {
    /// The cost in USD as an exact decimal string (trailing zeros trimmed), when priced.
    pub fn cost_usd(&self) -> Option<String> {
        self.cost_pico
            .map(|p| crate::money::Usd::from_pico(u128::from(p)).to_string())
    }
}

/// A price in **micro-USD per million tokens**, which is exactly **pico-USD per token**: costs
/// are integer products, so sums never drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Price {
    /// Uncached input tokens.
    pub input: u64,
    /// Output tokens (reasoning included).
    pub output: u64,
    /// Input tokens read from the cache; `None`: same as `input`.
    pub cached_input: Option<u64>,
    /// Input tokens written to the cache; `None`: same as `input`.
    pub cache_write: Option<u64>,
    /// Pico-USD per image generated; `None`: unknown.
    #[serde(default)]
    pub per_image: Option<u64>,
    /// Pico-USD per character of speech input; `None`: unknown.
    #[serde(default)]
    pub per_character: Option<u64>,
    /// Pico-USD per second of transcribed audio; `None`: unknown.
    #[serde(default)]
    pub per_second: Option<u64>,
}

impl Price {
    /// From USD per million tokens (as config writes it), rounded to the micro-dollar.
    pub fn from_usd_per_mtok(input: f64, output: f64) -> Price {
        Price {
            input: crate::money::Usd::from_f64(input).micros(),
            output: crate::money::Usd::from_f64(output).micros(),
            cached_input: None,
            cache_write: None,
            per_image: None,
            per_character: None,
            per_second: None,
        }
    }

    /// The cost of `units` in pico-USD; `None` when a count is not zero and its price unknown.
    pub fn units_cost_pico(&self, units: &Units) -> Option<u128> {
        let part = |n: u64, price: Option<u64>| match (n, price) {
            (0, _) => Some(0),
            (n, Some(p)) => Some(u128::from(n) * u128::from(p)),
            (_, None) => None,
        };
        let seconds = part(units.audio_ms, self.per_second)? / 1000;
        Some(
            part(units.images, self.per_image)?
                + part(units.characters, self.per_character)?
                + seconds,
        )
    }

    /// The cost of `usage` in pico-USD (10^-12 USD).
    pub fn cost_pico(&self, u: &Usage) -> u128 {
        let cached = u.cached_tokens.min(u.prompt_tokens);
        let write = u.cache_write_tokens.min(u.prompt_tokens - cached);
        let plain = u.prompt_tokens - cached - write;
        u128::from(plain) * u128::from(self.input)
            + u128::from(cached) * u128::from(self.cached_input.unwrap_or(self.input))
            + u128::from(write) * u128::from(self.cache_write.unwrap_or(self.input))
            + u128::from(u.completion_tokens) * u128::from(self.output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_counts_from_an_upstream_saturate_instead_of_overflowing() {
        let max = u64::MAX;
        let u = Usage::from_openai_json(
            format!(r#"{{"usage":{{"prompt_tokens":{max},"completion_tokens":5}}}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!((u.prompt_tokens, u.total_tokens), (max, max));
        let u = Usage::from_anthropic_json(
            format!(r#"{{"usage":{{"input_tokens":{max},"cache_read_input_tokens":7,"output_tokens":{max}}}}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!((u.prompt_tokens, u.total_tokens), (max, max));
        assert_eq!(u.add(&u).completion_tokens, max);
        let g = crate::translate::anthropic::usage_from_anthropic(max, 1, 1, 1, 0);
        assert_eq!(g.total_tokens, max);
    }

    #[test]
    fn absurd_and_unreadable_counts_are_told_apart_from_absent_ones() {
        let ok = Usage::from_openai_json(
            br#"{"usage":{"prompt_tokens":11,"completion_tokens":6,"prompt_tokens_details":{"cached_tokens":4}}}"#,
        )
        .unwrap();
        assert_eq!(ok.implausible(10_000_000), None);
        let max = u64::MAX;
        let huge = Usage::from_openai_json(
            format!(r#"{{"usage":{{"prompt_tokens":{max},"completion_tokens":5}}}}"#).as_bytes(),
        )
        .unwrap();
        assert!(huge.implausible(10_000_000).is_some());
        let parts = Usage {
            prompt_tokens: 3,
            cached_tokens: 9,
            ..Usage::default()
        };
        assert!(parts.implausible(10_000_000).is_some());
        for bad in [
            r#"{"usage":{"prompt_tokens":-5,"completion_tokens":5}}"#,
            r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":5}}"#,
            r#"{"usage":{"prompt_tokens":"12","completion_tokens":5}}"#,
            r#"{"usage":{"prompt_tokens":1e30,"completion_tokens":5}}"#,
        ] {
            assert_eq!(Usage::from_openai_json(bad.as_bytes()), None, "{bad}");
            assert!(Usage::present_in(bad.as_bytes()), "{bad}");
        }
        assert!(!Usage::present_in(br#"{"usage":null}"#));
        assert!(!Usage::present_in(br#"{"choices":[]}"#));
    }

    #[test]
    fn reads_the_units_of_image_and_audio_answers() {
        use crate::request::Api;
        // gpt-image-1: tokens, and the images in `data`.
        let (u, n) = units_from_json(
            Api::ImageGenerations,
            br#"{"created":1,"data":[{"b64_json":"AA=="},{"b64_json":"AA=="}],"usage":{"input_tokens":50,"input_tokens_details":{"text_tokens":50,"image_tokens":0},"output_tokens":4160,"total_tokens":4210}}"#,
        );
        assert_eq!(
            u.map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens)),
            Some((50, 4160, 4210))
        );
        assert_eq!(n.map(|n| n.images), Some(2));
        // whisper-1: `usage.seconds`; `verbose_json`: `duration`.
        let (u, n) = units_from_json(
            Api::AudioTranscriptions,
            br#"{"text":"hi","usage":{"type":"duration","seconds":3}}"#,
        );
        assert_eq!((u, n.map(|n| n.audio_ms)), (None, Some(3000)));
        let (_, n) = units_from_json(
            Api::AudioTranslations,
            br#"{"task":"translate","language":"english","duration":8.47,"text":"hi","segments":[]}"#,
        );
        assert_eq!(n.map(|n| n.audio_ms), Some(8470));
        // gpt-4o-transcribe: tokens only.
        let (u, n) = units_from_json(
            Api::AudioTranscriptions,
            br#"{"text":"hi","usage":{"type":"tokens","input_tokens":14,"input_token_details":{"text_tokens":0,"audio_tokens":14},"output_tokens":45,"total_tokens":59}}"#,
        );
        assert_eq!(u.map(|u| u.total_tokens), Some(59));
        assert_eq!(n, None);
        // `response_format: "text"`: nothing.
        assert_eq!(
            units_from_json(Api::AudioTranscriptions, b"Hello."),
            (None, None)
        );
    }

    #[test]
    fn units_are_priced_only_when_every_unit_has_a_price() {
        let p = Price {
            per_image: Some(40_000_000_000),
            per_second: Some(100_000_000),
            ..Price::default()
        };
        let n = Units {
            images: 2,
            audio_ms: 1_500,
            ..Units::default()
        };
        assert_eq!(p.units_cost_pico(&n), Some(80_000_000_000 + 150_000_000));
        assert_eq!(p.units_cost_pico(&Units::default()), Some(0));
        let speech = Units {
            characters: 10,
            ..Units::default()
        };
        assert_eq!(p.units_cost_pico(&speech), None);
    }

    #[test]
    fn reads_openai_usage_with_details() {
        let doc = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":6,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
        let u = Usage::from_openai_json(doc).unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 11,
                completion_tokens: 6,
                total_tokens: 17,
                cached_tokens: 4,
                cache_write_tokens: 0,
                reasoning_tokens: 2
            }
        );
        assert_eq!(Usage::from_openai_json(br#"{"usage":null}"#), None);
        // DeepSeek's cache hits
        let doc = br#"{"usage":{"prompt_tokens":10,"completion_tokens":1,"total_tokens":11,"prompt_cache_hit_tokens":8,"prompt_cache_miss_tokens":2}}"#;
        assert_eq!(Usage::from_openai_json(doc).unwrap().cached_tokens, 8);
        assert_eq!(Usage::from_openai_json(br#"{"choices":[]}"#), None);
    }

    /// The old implementations, whole documents through serde: the oracles.
    fn openai_oracle(doc: &[u8]) -> Option<Usage> {
        usage_via_serde::<WireUsage>(doc).map(Usage::from)
    }

    fn anthropic_oracle(doc: &[u8]) -> Option<Usage> {
        let d = usage_via_serde::<AnthropicUsageDelta>(doc)?;
        let mut u = AnthropicUsage::default();
        u.apply(&d);
        Some(Usage::from_anthropic(&u)).filter(|u| *u != Usage::default())
    }

    fn same_as_serde(doc: &[u8]) {
        let text = String::from_utf8_lossy(doc);
        assert_eq!(Usage::from_openai_json(doc), openai_oracle(doc), "{text}");
        assert_eq!(
            Usage::from_anthropic_json(doc),
            anthropic_oracle(doc),
            "{text}"
        );
    }

    const U: &str = r#"{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}"#;
    const SEVEN: Usage = Usage {
        prompt_tokens: 3,
        completion_tokens: 4,
        total_tokens: 7,
        cached_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
    };

    #[test]
    fn usage_is_read_at_the_top_level_only() {
        let read = |doc: &str| {
            same_as_serde(doc.as_bytes());
            Usage::from_openai_json(doc.as_bytes())
        };
        // Nested `usage` members are not the answer's.
        assert_eq!(read(&format!(r#"{{"choices":[{{"usage":{U}}}]}}"#)), None);
        assert_eq!(
            read(&format!(r#"{{"x":{{"usage":{U}}},"usage":null}}"#)),
            None
        );
        assert_eq!(
            read(&format!(
                r#"{{"x":{{"usage":{{"prompt_tokens":9}}}},"usage":{U}}}"#
            )),
            Some(SEVEN)
        );
        // Nor is the text of one inside a string.
        let quoted = U.replace('"', "\\\"");
        assert_eq!(
            read(&format!(r#"{{"content":"\"usage\":{quoted}"}}"#)),
            None
        );
        assert_eq!(
            read(&format!(
                r#"{{"content":"x\\\",\"usage\":{quoted}","usage":{U}}}"#
            )),
            Some(SEVEN)
        );
        // An escaped key is still `usage` (serde decodes it): the serde path reads it.
        assert_eq!(read(&format!(r#"{{"us\u0061ge":{U}}}"#)), Some(SEVEN));
        // Twice is an error for serde ("duplicate field"), so no usage.
        assert_eq!(read(&format!(r#"{{"usage":{U},"usage":{U}}}"#)), None);
        assert_eq!(read(&format!(r#"{{"usage":{U},"us\u0061ge":null}}"#)), None);
        // Missing, null, and the wrong type.
        assert_eq!(read(r#"{"id":"x","choices":[]}"#), None);
        assert_eq!(read(r#"{"usage":null}"#), None);
        assert_eq!(read(r#"{"usage":"lots"}"#), None);
        assert_eq!(read(r#"{"usage":{"prompt_tokens":1.5}}"#), None);
        // Anything malformed elsewhere in the answer makes it unreadable, as with serde.
        assert_eq!(read(&format!(r#"{{"usage":{U},"choices":[1,]}}"#)), None);
        assert_eq!(read(&format!(r#"{{"usage":{U}}} trailing"#)), None);
        assert_eq!(read(&format!(r#"{{"usage":{U}"#)), None);
        // Whitespace anywhere JSON allows it.
        assert_eq!(
            read(&format!(
                " \n{{ \"id\" : \"x\" ,\r\n\t\"usage\"\n:\n{U}\n}}\n "
            )),
            Some(SEVEN)
        );
        // serde reads a struct from an array too; the serde path keeps that.
        assert_eq!(read(&format!("[{U}]")), Some(SEVEN));
    }

    /// A realistic chat completion, usage last (as OpenAI sends it).
    const ANSWER: &str = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"The image shows a wooden boardwalk path running through a lush green field or meadow. The sky is bright blue with some scattered clouds.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}"#;

    #[test]
    fn a_real_answer_takes_the_fast_path() {
        let doc = ANSWER.as_bytes();
        assert!(matches!(
            crate::jsonscan::top_level_value(doc, "usage"),
            Lookup::Found(_)
        ));
        same_as_serde(doc);
        assert_eq!(Usage::from_openai_json(doc).unwrap().total_tokens, 1163);
        // Every truncation of it, too.
        for n in 0..doc.len() {
            same_as_serde(&doc[..n]);
        }
    }

    mod props {
        use super::*;
        use crate::jsonscan::testgen::{J, defect, mutate, mutation, number, plant, render};
        use proptest::prelude::*;

        fn value() -> BoxedStrategy<J> {
            crate::jsonscan::testgen::value(key().boxed())
        }

        /// Keys of the documents and of everything nested in them: now and then `usage`
        /// itself, escaped or not, or a near miss.
        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                1 => Just("usage".to_owned()),
                1 => Just(r"us\u0061ge".to_owned()),
                1 => Just("usage ".to_owned()),
                1 => Just("Usage".to_owned()),
                2 => Just("id".to_owned()),
                2 => Just("choices".to_owned()),
                1 => Just("é".to_owned()),
                1 => Just(r"\\".to_owned()),
                3 => prop::sample::select([OPENAI_FIELDS, ANTHROPIC_FIELDS].concat())
                    .prop_map(str::to_owned),
            ]
        }

        const OPENAI_FIELDS: &[&str] = &[
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "prompt_tokens_details",
            "completion_tokens_details",
            "cached_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "prompt_cache_hit_tokens",
        ];

        const ANTHROPIC_FIELDS: &[&str] = &[
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "output_tokens_details",
            "thinking_tokens",
        ];

        /// A `usage` value: mostly an object of OpenAI's or Anthropic's fields with numbers
        /// (or anything, or other keys), else null or any value.
        fn usage_value() -> impl Strategy<Value = J> {
            let fields = |names: &'static [&'static str]| {
                let name = prop_oneof![
                    4 => prop::sample::select(names).prop_map(str::to_owned),
                    1 => key(),
                ];
                let v = prop_oneof![4 => number().prop_map(J::Num), 1 => value()];
                prop::collection::vec((name, v), 0..6).prop_map(J::Obj)
            };
            prop_oneof![
                3 => fields(OPENAI_FIELDS),
                3 => fields(ANTHROPIC_FIELDS),
                1 => Just(J::Lit("null")),
                1 => value(),
            ]
        }

        /// An answer-like document: a top-level object with (mostly) one `usage` member among
        /// others, whose keys may be `usage` again (escaped or not) and whose values have
        /// `usage` keys and `"usage":` text nested anywhere; now and then not an object.
        /// With it, whether the scanner must be able to answer alone (one plain `usage` or
        /// none, every top-level key unescaped).
        fn document() -> impl Strategy<Value = (J, bool)> {
            let object = (
                prop::collection::vec((key(), value()), 0..5),
                prop::option::weighted(0.85, usage_value()),
                any::<prop::sample::Index>(),
            )
                .prop_map(|(mut m, usage, at)| {
                    if let Some(u) = usage {
                        m.insert(at.index(m.len() + 1), ("usage".to_owned(), u));
                    }
                    let usages = m.iter().filter(|(k, _)| k == "usage").count();
                    let clean = usages <= 1 && m.iter().all(|(k, _)| !k.contains('\\'));
                    (J::Obj(m), clean)
                });
            prop_oneof![
                9 => object,
                1 => value().prop_map(|v| (v, false)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            #[test]
            fn usage_fast_path_equals_serde(
                (doc, clean) in document(),
                ws in prop::collection::vec(any::<usize>(), 0..12),
            ) {
                let text = render(&doc, &ws);
                let bytes = text.as_bytes();
                prop_assert!(serde_json::from_slice::<serde_json::Value>(bytes).is_ok(), "{}", text);
                prop_assert_eq!(Usage::from_openai_json(bytes), openai_oracle(bytes), "{}", text);
                prop_assert_eq!(Usage::from_anthropic_json(bytes), anthropic_oracle(bytes), "{}", text);
                // Valid answers with one plain `usage` (or none) never need serde.
                if clean {
                    let lookup = crate::jsonscan::top_level_value(bytes, "usage");
                    prop_assert_ne!(lookup, Lookup::Unsure, "{}", text);
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn usage_fast_path_equals_serde_with_a_planted_defect(
                (doc, _clean) in document(),
                ws in prop::collection::vec(any::<usize>(), 0..12),
                at in any::<prop::sample::Index>(),
                defect in defect(),
            ) {
                let text = render(&plant(&doc, at, defect), &ws);
                let bytes = text.as_bytes();
                prop_assert_eq!(Usage::from_openai_json(bytes), openai_oracle(bytes), "{}", text);
                prop_assert_eq!(Usage::from_anthropic_json(bytes), anthropic_oracle(bytes), "{}", text);
            }

            #[test]
            fn usage_fast_path_equals_serde_on_damaged_documents(
                (doc, _clean) in document(),
                ws in prop::collection::vec(any::<usize>(), 0..12),
                ms in prop::collection::vec(mutation(), 1..4),
            ) {
                let bytes = mutate(render(&doc, &ws).into_bytes(), &ms);
                let text = String::from_utf8_lossy(&bytes);
                prop_assert_eq!(Usage::from_openai_json(&bytes), openai_oracle(&bytes), "{}", text);
                prop_assert_eq!(Usage::from_anthropic_json(&bytes), anthropic_oracle(&bytes), "{}", text);
            }
        }
    }

    #[test]
    fn reads_anthropic_usage_with_cache_in_the_prompt() {
        let doc = br#"{"type":"message","usage":{"input_tokens":10,"cache_creation_input_tokens":3,"cache_read_input_tokens":5,"output_tokens":7,"output_tokens_details":{"thinking_tokens":2}}}"#;
        assert_eq!(
            Usage::from_anthropic_json(doc),
            Some(Usage {
                prompt_tokens: 18,
                completion_tokens: 7,
                total_tokens: 25,
                cached_tokens: 5,
                cache_write_tokens: 3,
                reasoning_tokens: 2
            })
        );
        assert_eq!(
            Usage::from_json(crate::request::Api::CountTokens, br#"{"input_tokens":4}"#),
            Some(Usage::default())
        );
    }
}
