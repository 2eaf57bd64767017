//! Configuration: a TOML file (or the embedded default) deserialized into plain structs with
//! unknown fields rejected, then validated into runtime tables (providers, routes, keys, limits,
//! prices). Reusable by any application, not only the reference gateway.
//!
//! Secrets are never written into the file: string values may reference environment variables
//! as `${NAME}` or `${NAME:-default}`; they are resolved when the runtime tables are built, so a
//! provider whose key variable is unset can be switched off (`enabled_if_env`) instead of failing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

mod build;
mod cloud;
pub mod presets;
mod responses;
mod source_error;

pub use build::{
    HealthRegistry, ModelInfo, ReloadableKeys, Runtime, auth_layer, limits, ratelimit_layer,
    static_keys,
};
#[cfg(feature = "gateway")]
pub(crate) use build::{limit_store, ratelimit_layer_on, worst_price};
pub use responses::response_store;

/// The embedded default configuration: mock models to try at once, plus real providers that
/// switch on when their API-key variables are set.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// A configuration error, naming the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// An error about `field` in `file`.
    pub fn field(file: &str, field: &str, msg: impl std::fmt::Display) -> Self {
        ConfigError(format!("{file}: {field}: {msg}"))
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the file came from (set by the loader; not a TOML field).
    #[serde(skip)]
    pub source: String,
    /// HTTP server settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Virtual keys.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Rate limits and budgets.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Usage records.
    #[serde(default)]
    pub usage: UsageConfig,
    /// The response store of the Responses API.
    #[serde(default)]
    pub responses: ResponsesConfig,
    /// Routing policy shared by all models.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Public models by name.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    /// Virtual tier models (`tier:NAME`).
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    /// Price overrides by `provider/upstream_model` (USD per million tokens).
    #[serde(default)]
    pub prices: BTreeMap<String, PriceConfig>,
}

/// `[server]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address (the command line's `--listen` wins).
    pub listen: Option<String>,
    /// Request body cap in bytes (default 16 MiB).
    pub max_body_bytes: Option<usize>,
    /// Cap of a `multipart/form-data` audio upload (`/v1/audio/transcriptions`,
    /// `/v1/audio/translations`) in bytes (default 26 MiB); larger uploads get 413.
    pub max_upload_bytes: Option<usize>,
    /// Worker threads of the reference gateway (default: one per CPU it may run on).
    pub workers: Option<usize>,
    /// How the reference gateway runs its workers: `"per-core"` (the default) gives each
    /// worker thread its own single-threaded runtime, its own listening socket
    /// (`SO_REUSEPORT`: the kernel spreads connections) and its own upstream connection pool,
    /// so a request never wakes another thread; `"work-stealing"` is one tokio multi-thread
    /// runtime (better when a few connections carry very uneven load). See BENCHMARKS.md.
    pub runtime: Option<RuntimeKind>,
    /// The reference gateway's log lines: `"text"` (the default) or `"json"` (one JSON object
    /// per line). The level comes from `RUST_LOG` (default `info`). Read at start.
    pub log_format: Option<LogFormat>,
    /// One `info` line per request under the target `tollgate::access` (see
    /// [`AccessLog`](crate::sink::AccessLog)). Default `true`. Read at start.
    pub access_log: Option<bool>,
    /// A second listener for the operators' endpoints (`/metrics`, `/healthz`), e.g.
    /// `"127.0.0.1:9090"`; never the LLM endpoints. Changing it needs a restart.
    pub admin_listen: Option<String>,
    /// Where `/metrics` is served: `"main"` (the main listener too), `"admin"` (only on
    /// `admin_listen`) or `"off"`. Default: on `admin_listen` when it is set; else on the main
    /// listener when auth is off, and nowhere when auth is on.
    pub metrics: Option<MetricsPolicy>,
    /// How long requests in flight may run after shutdown began (SIGTERM), in ms (default
    /// 30 000); then each stream ends with the in-band error event, and a request still
    /// waiting for its upstream's answer is answered 503 (`shutting_down`), each with its
    /// usage record. Read at start.
    pub drain_ms: Option<u64>,
    /// The most bytes one upstream SSE event (or a line without a line break) may hold
    /// (default 4 MiB); past it the stream ends with the in-band error, the event not held.
    pub max_sse_event_bytes: Option<usize>,
    /// The most bytes one upstream SSE event may hold while the gateway translates the stream
    /// (an Anthropic or Gemini upstream, the Anthropic face or the Responses API over chat)
    /// (default 16 MiB); past it the stream ends with the in-band error (`upstream_protocol`).
    pub max_translated_event_bytes: Option<usize>,
    /// The most bytes of a non-streaming answer the gateway reads whole to translate it
    /// (default 32 MiB); past it the request fails with 502 (`upstream_protocol`) and the
    /// rest is not read. Pass-through answers are never held.
    pub max_translated_body_bytes: Option<usize>,
    /// A request's head (request line and headers) must arrive within this many ms, else the
    /// connection is closed (default 30 000). On HTTP/1.1 the clock also runs while a kept-alive
    /// connection waits for its next request. Read at start.
    pub header_read_timeout_ms: Option<u64>,
    /// A request body with no byte for this many ms is answered 408 (default 60 000).
    pub body_read_timeout_ms: Option<u64>,
    /// Request-body bytes all requests in flight may hold (each reserves its
    /// `content-length`, or `max_body_bytes` without one); past it, 503 with `Retry-After`
    /// (default 1 GiB). Read at start.
    pub max_buffered_body_bytes: Option<usize>,
    /// A connection with no request in flight and no byte moving for this many ms is closed
    /// (default 75 000). Read at start.
    pub idle_timeout_ms: Option<u64>,
    /// Cap on open client connections; one over it gets 503 and is closed (default 8192, or
    /// less when the open-file limit is lower). Read at start.
    pub max_connections: Option<usize>,
    /// Cap on a request's head in bytes (default 65 536, at least 8192); larger gets 431 or a
    /// closed connection. Read at start.
    pub max_header_bytes: Option<usize>,
    /// Cap on the number of headers of an HTTP/1.1 request (default 100). Read at start.
    pub max_headers: Option<usize>,
    /// Cap on concurrent streams of one HTTP/2 connection (default 128). Read at start.
    pub http2_max_concurrent_streams: Option<u32>,
}

/// `[server] log_format`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[server] metrics`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricsPolicy {
    /// On the main listener (and on `admin_listen` when set), without a key.
    Main,
    /// Only on `admin_listen`.
    Admin,
    /// Nowhere.
    Off,
}

/// `[server] runtime`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// One single-threaded runtime per worker thread, one listener each (`SO_REUSEPORT`).
    #[default]
    PerCore,
    /// One multi-threaded work-stealing runtime.
    WorkStealing,
}

/// `[auth]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `false` switches authentication off (a local single-user gateway). Default `true`.
    pub enabled: Option<bool>,
    /// The virtual keys.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

/// One virtual key (`[[auth.keys]]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A name for the key (shown in records as the key id).
    pub name: String,
    /// SHA-256 of the key, hex (`tollgate-gateway --hash-key KEY` prints it).
    pub sha256: String,
    /// Tenant (team) the key belongs to.
    pub tenant: Option<String>,
    /// Model globs the key may use (default: all).
    #[serde(default)]
    pub models: Vec<String>,
    /// Cost threshold of this key's requests (USD per million tokens): targets priced above it
    /// are skipped.
    pub max_price: Option<MaxPriceConfig>,
    /// Limits of this key.
    #[serde(flatten)]
    pub limits: LimitValues,
}

/// Limit values; every one optional.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitValues {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Concurrent requests (held until the response stream ends).
    pub concurrency: Option<u64>,
    /// USD per day.
    pub budget_usd_day: Option<f64>,
    /// USD per month.
    pub budget_usd_month: Option<f64>,
}

/// `[limits]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// `memory` (default) or `redis`.
    pub store: Option<String>,
    /// Redis URL for the `redis` store.
    pub redis_url: Option<String>,
    /// Key prefix in Redis.
    pub redis_prefix: Option<String>,
    /// `fail_open` or `fail_closed` (default) when the store is unreachable.
    pub on_store_error: Option<String>,
    /// Tokens reserved for a request that sets no `max_tokens`.
    pub default_max_tokens: Option<u64>,
    /// Limits over all traffic.
    #[serde(default)]
    pub global: LimitValues,
    /// Limits per public model.
    #[serde(default)]
    pub models: BTreeMap<String, LimitValues>,
}

/// `[usage]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// JSON-lines file for usage records (`""` switches it off).
    pub jsonl: Option<String>,
    /// Report `cost` in the response usage object (as OpenRouter does).
    pub report_cost: Option<bool>,
    /// Records a sink queues before it drops new ones (default 65 536).
    pub queue: Option<usize>,
    /// `[usage.postgres]`: also write records to PostgreSQL (needs the `postgres` feature).
    pub postgres: Option<PostgresUsageConfig>,
    /// The largest usage count taken from an upstream as exact (default 10 000 000 tokens);
    /// above it (or unreadable: negative, fractional, text) the record carries an estimate
    /// with a `usage_note`, and a reservation settles at what it reserved.
    pub max_usage_tokens: Option<u64>,
}

/// `[usage.postgres]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresUsageConfig {
    /// Connection string or URL; usually `${DATABASE_URL}`.
    pub url: String,
    /// Schema of the table (created if missing); default: the connection's (`public`).
    pub schema: Option<String>,
    /// Table name (default `tollgate_usage`).
    pub table: Option<String>,
    /// Records per batch (default 1 000).
    pub batch_size: Option<usize>,
    /// The local file records wait in while the database is away (replayed in order when it
    /// is back, also after a restart). Default: a file in the system's temp directory, per
    /// process.
    pub spool_path: Option<String>,
    /// Most bytes the spool file holds; records beyond are dropped and counted (default
    /// 256 MiB).
    pub spool_max_bytes: Option<u64>,
}

/// `[responses]`: where the Responses API keeps conversations for targets that keep none
/// (see [`crate::store`]). Read at start; a change needs a restart.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponsesConfig {
    /// `memory` (default), `redis` (feature `redis`) or `postgres` (feature `postgres`).
    pub store: Option<String>,
    /// How long a stored response lives, in seconds (default 604 800: 7 days).
    pub ttl_secs: Option<u64>,
    /// Most responses the `memory` store keeps (default 10 000); the oldest go first.
    pub max_entries: Option<usize>,
    /// Most bytes of responses the `memory` store keeps (default 268 435 456: 256 MiB); the
    /// oldest go first.
    pub max_bytes: Option<usize>,
    /// Redis URL of the `redis` store (default: `[limits] redis_url`, else
    /// `redis://127.0.0.1:6379`).
    pub redis_url: Option<String>,
    /// Key prefix in Redis (default: `[limits] redis_prefix`, else `tollgate`).
    pub redis_prefix: Option<String>,
    /// Connection string of the `postgres` store (default: `[usage.postgres] url`).
    pub postgres_url: Option<String>,
    /// Table of the `postgres` store, created if missing (default `tollgate_responses`).
    pub postgres_table: Option<String>,
}

/// `[routing]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Default deadlines for every target.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// May clients send their own ordered fallback list (`models: [...]`)? Default false.
    pub allow_client_models: Option<bool>,
    /// May clients switch fallback off (`x-tollgate-fallback: off`)? Default true.
    pub allow_client_fallback_off: Option<bool>,
    /// The longest upstream `Retry-After` believed, in milliseconds (default 60000): a target
    /// whose upstream asks for longer is skipped, and clients are told to wait, only this long.
    pub max_retry_after_ms: Option<u64>,
    /// Rules on request features, evaluated in order; the first match re-routes.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// `[[routing.rules]]`: when a request for one of `models` (any, if absent) matches every
/// condition given, it goes to `route_to` (a model, alias or `tier:NAME`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Public models the rule applies to.
    pub models: Option<Vec<String>>,
    /// The request has tools.
    pub has_tools: Option<bool>,
    /// The request has image parts.
    pub has_images: Option<bool>,
    /// The request asks for JSON output.
    pub json_mode: Option<bool>,
    /// The request streams.
    pub stream: Option<bool>,
    /// Estimated prompt tokens at least this.
    pub min_prompt_tokens: Option<u64>,
    /// Estimated prompt tokens at most this.
    pub max_prompt_tokens: Option<u64>,
    /// The `x-tollgate-tag` request header equals this.
    pub tag: Option<String>,
    /// Where matching requests go.
    pub route_to: String,
}

/// Deadlines in milliseconds.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP/TLS connect.
    pub connect_ms: Option<u64>,
    /// First content event (stream) or response head (non-stream).
    pub first_token_ms: Option<u64>,
    /// Longest gap between stream events.
    pub idle_ms: Option<u64>,
    /// Whole attempt.
    pub total_ms: Option<u64>,
}

/// `[providers.NAME]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// `openai` (any OpenAI-compatible server), `anthropic`, `gemini`, `vertex`, `bedrock`,
    /// `mock`, or a preset:
    /// `azure`, `deepseek`, `mistral`, `qwen`, `groq`, `together`, `fireworks`, `openrouter`,
    /// `xai`, `vllm`, `ollama`, `llamacpp`.
    pub kind: String,
    /// Base URL (presets fill it in).
    pub base_url: Option<String>,
    /// API key; usually `${ENV_VAR}`.
    pub api_key: Option<String>,
    /// Switch the provider on only when this environment variable is set and non-empty.
    pub enabled_if_env: Option<String>,
    /// Header that carries the key instead of `Authorization: Bearer` (Azure: `api-key`).
    pub auth_header: Option<String>,
    /// Query string appended to every call (Azure: `api-version=...`).
    pub query: Option<String>,
    /// Fixed headers sent upstream with every request (values may be `${ENV_VAR}`; treated as
    /// secrets: scrubbed from upstream error messages).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Client request headers forwarded upstream besides `x-request-id`, `anthropic-beta` and
    /// `openai-beta` (credentials, cookies, `openai-organization`/`openai-project` are refused).
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Upstream response headers passed to clients besides the default allow-list
    /// (e.g. `x-ratelimit-remaining-requests`).
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Connect deadline for this provider.
    pub connect_timeout_ms: Option<u64>,
    /// Anthropic: `max_tokens` sent when the client gives none.
    pub default_max_tokens: Option<u64>,
    /// How the gateway authenticates upstream: `api_key` (the default; `api_key`, if any),
    /// `entra` (OpenAI-compatible kinds, e.g. `azure`: Microsoft Entra ID client credentials,
    /// `tenant_id`, `client_id`, `client_secret`), or `service_account` (`vertex`, its only
    /// and default way: `credentials_file`).
    pub auth: Option<String>,
    /// `auth = "entra"`: the directory (tenant) id or domain.
    pub tenant_id: Option<String>,
    /// `auth = "entra"`: the application (client) id.
    pub client_id: Option<String>,
    /// `auth = "entra"`: the client secret; usually `${ENV_VAR}`.
    pub client_secret: Option<String>,
    /// `auth = "entra"`: the Entra authority (default `https://login.microsoftonline.com`).
    pub authority: Option<String>,
    /// The OAuth scope asked for (default: `https://cognitiveservices.azure.com/.default` for
    /// `entra`, `https://www.googleapis.com/auth/cloud-platform` for `vertex`).
    pub scope: Option<String>,
    /// `vertex`: the Google Cloud project (default: the key file's `project_id`).
    pub project: Option<String>,
    /// `vertex`: the region (`us-central1`, …) or `global`.
    pub location: Option<String>,
    /// `vertex`: the service-account key file (JSON); may be `${ENV_VAR}`.
    pub credentials_file: Option<String>,
    /// `bedrock`: the AWS region (`us-east-1`).
    pub region: Option<String>,
    /// `bedrock`: the AWS access key id; usually `${AWS_ACCESS_KEY_ID}`.
    pub access_key_id: Option<String>,
    /// `bedrock`: the AWS secret access key; usually `${AWS_SECRET_ACCESS_KEY}`.
    pub secret_access_key: Option<String>,
    /// `bedrock`: the session token of temporary credentials; usually `${AWS_SESSION_TOKEN}`.
    pub session_token: Option<String>,
    /// OpenAI-compatible: the upstream serves the Responses API (`/v1/responses` is passed
    /// through, not translated through chat completions). Default: true for `azure` and for
    /// `openai` without a `base_url` (api.openai.com), false otherwise.
    pub responses: Option<bool>,
}

/// `[models.NAME]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Targets, in priority order.
    pub targets: Vec<TargetConfig>,
    /// `ordered` (default), `weighted`, `latency`, `cheapest`.
    pub strategy: Option<String>,
    /// Other names that resolve to exactly this model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Weighted split: sticky per key (`key`; the `x-tollgate-sticky` header, else the key id)
    /// or not (`none`, the default).
    pub sticky: Option<String>,
    /// Whether fallback to later targets is allowed (default true).
    pub fallback: Option<bool>,
    /// Deadlines for this model's targets (override `[routing.timeouts]`).
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Shown in `/v1/models` as `owned_by`.
    pub owned_by: Option<String>,
    /// Cost threshold (USD per million tokens): targets priced above it are skipped.
    pub max_price: Option<MaxPriceConfig>,
}

/// One target of a model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Provider name (a key of `[providers]`).
    pub provider: String,
    /// Exact upstream model id.
    pub model: String,
    /// Weight for `weighted` splits.
    pub weight: Option<u32>,
    /// Variant name reported for splits (default: `provider/model`).
    pub variant: Option<String>,
    /// Deadlines for this target (override the model's).
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Price (USD per million tokens); default from the shipped price table.
    pub price: Option<PriceConfig>,
    /// Context window in tokens.
    pub context_window: Option<u64>,
    /// Accepts tools (default true).
    pub tools: Option<bool>,
    /// Accepts images (default true).
    pub vision: Option<bool>,
    /// Accepts JSON modes (default true).
    pub json_mode: Option<bool>,
}

/// `[tiers.NAME]`: the virtual model `tier:NAME`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Candidate public models (their targets are the candidates).
    pub models: Vec<String>,
    /// `cheapest` (default) or `ordered`.
    pub strategy: Option<String>,
    /// Cost threshold (USD per million tokens): the tier picks among targets within it.
    pub max_price: Option<MaxPriceConfig>,
}

/// `max_price = { input = 3.0, output = 15.0 }`: the highest price (USD per million tokens,
/// the units of `price`) a request may be sent at; either part may be omitted, not both.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaxPriceConfig {
    /// Highest input-token price.
    #[serde(default, deserialize_with = "max_price_input")]
    pub input: Option<f64>,
    /// Highest output-token price.
    #[serde(default, deserialize_with = "max_price_output")]
    pub output: Option<f64>,
    /// Let targets without a known price through (default false: skipped).
    pub allow_unpriced: Option<bool>,
}

/// A number of USD for `max_price.{0}`; a string or boolean is refused naming the field.
struct UsdVisitor(&'static str);

impl serde::de::Visitor<'_> for UsdVisitor {
    type Value = Option<f64>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a number for `max_price.{}` (USD per million tokens)",
            self.0
        )
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v as f64))
    }
}

fn max_price_input<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    d.deserialize_f64(UsdVisitor("input"))
}

fn max_price_output<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    d.deserialize_f64(UsdVisitor("output"))
}

impl MaxPriceConfig {
    /// Validate (each part a non-negative number, at least one given) and convert to integer
    /// micro-USD once; `field` names the setting in errors.
    pub fn to_max_price(
        &self,
        source: &str,
        field: &str,
    ) -> Result<crate::pricing::MaxPrice, ConfigError> {
        for (name, v) in [("input", self.input), ("output", self.output)] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(ConfigError::field(
                    source,
                    &format!("{field}.{name}"),
                    "must be a non-negative number (USD per million tokens)",
                ));
            }
        }
        if self.input.is_none() && self.output.is_none() {
            return Err(ConfigError::field(
                source,
                field,
                "set `input`, `output` or both (USD per million tokens)",
            ));
        }
        Ok(crate::pricing::MaxPrice::usd(self.input, self.output)
            .allowing_unpriced(self.allow_unpriced.unwrap_or(false)))
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Input tokens (default 0: a model billed per image, character or second).
    #[serde(default)]
    pub input: f64,
    /// Output tokens (default 0).
    #[serde(default)]
    pub output: f64,
    /// Cached input tokens (default: `input`).
    pub cached_input: Option<f64>,
    /// Cache-write input tokens (default: `input`).
    pub cache_write: Option<f64>,
    /// USD per image generated (`/v1/images/generations`).
    pub per_image: Option<f64>,
    /// USD per second of audio transcribed or translated.
    pub per_second: Option<f64>,
    /// USD per million characters of speech input (`/v1/audio/speech`).
    pub per_million_characters: Option<f64>,
}

impl PriceConfig {
    /// The runtime price.
    pub fn to_price(self) -> crate::usage::Price {
        use crate::money::Usd;
        // USD per million tokens (or characters) is micro-USD per million, = pico-USD per one.
        let per_million = |usd: f64| Usd::from_f64(usd).micros();
        let per_one = |usd: f64| Usd::from_f64(usd).pico_u64();
        crate::usage::Price {
            input: per_million(self.input),
            output: per_million(self.output),
            cached_input: self.cached_input.map(per_million),
            cache_write: self.cache_write.map(per_million),
            per_image: self.per_image.map(per_one),
            per_second: self.per_second.map(per_one),
            per_character: self.per_million_characters.map(per_million),
        }
    }
}

impl Config {
    /// Parse TOML text; `source` names the file in error messages. Empty or binary text is
    /// refused; errors name the file, line and field, and never echo the file's content (a
    /// bad line may hold a literal secret).
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        source_error::check_text(source, text)?;
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| source_error::parse_error(source, text, &e))?;
        cfg.source = source.to_owned();
        Ok(cfg)
    }

    /// Read and parse a file (errors as for [`Config::parse`]; text that is not UTF-8 is
    /// refused as binary, naming the line).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| ConfigError(format!("{name}: cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| source_error::not_utf8(&name, &e))?;
        Self::parse(&text, &name)
    }

    /// The embedded default.
    pub fn embedded() -> Config {
        // The embedded file is tested to parse; fall back to an empty config rather than panic.
        Self::parse(DEFAULT_CONFIG, "<embedded default>").unwrap_or_default()
    }
}

/// Resolve `${NAME}` and `${NAME:-default}` references in `value`; `field` names the setting in
/// errors. `$$` is a literal `$`.
pub(crate) fn interpolate(value: &str, source: &str, field: &str) -> Result<String, ConfigError> {
    interpolate_with(value, source, field, |k| std::env::var(k).ok())
}

fn interpolate_with(
    value: &str,
    source: &str,
    field: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r.find('}').ok_or_else(|| {
                ConfigError::field(source, field, "unterminated ${...} reference")
            })?;
            let inner = &r[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(ConfigError::field(
                        source,
                        field,
                        format!("environment variable {name} is not set"),
                    ));
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let cfg = Config::parse(DEFAULT_CONFIG, "<embedded default>").unwrap();
        assert!(cfg.models.contains_key("mock"));
    }

    #[test]
    fn unknown_fields_are_named_with_the_file() {
        let e = Config::parse("[server]\nlisten = \"x\"\nlisen = 1\n", "gw.toml").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("gw.toml"), "{msg}");
        assert!(msg.contains("lisen"), "{msg}");
        let e = Config::parse(
            "[models.a]\ntargets = [{ provider = \"p\", modle = \"x\" }]\n",
            "gw.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("modle") && e.contains("gw.toml"), "{e}");
    }

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let start = readme.find("## Configuration").unwrap();
        let block = &readme[start..];
        let a = block.find("```toml\n").unwrap() + "```toml\n".len();
        let b = a + block[a..].find("```").unwrap();
        let cfg = Config::parse(&block[a..b], "README.md").unwrap();
        assert_eq!(cfg.auth.keys[0].limits.rpm, Some(600));
        assert_eq!(cfg.models["canary"].targets[1].weight, Some(10));
        assert_eq!(cfg.routing.rules[0].route_to, "gpt-4o");
    }

    #[test]
    fn env_interpolation() {
        let env = |k: &str| (k == "SET").then(|| "v".to_owned());
        assert_eq!(interpolate_with("a${SET}b", "f", "x", env).unwrap(), "avb");
        assert_eq!(interpolate_with("${UNSET:-d}", "f", "x", env).unwrap(), "d");
        assert_eq!(interpolate_with("$$x", "f", "x", env).unwrap(), "$x");
        let e = interpolate_with("${UNSET}", "f.toml", "providers.p.api_key", env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "f.toml: providers.p.api_key: environment variable UNSET is not set"
        );
    }
}
