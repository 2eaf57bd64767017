//! One generation of the gateway, built from a config: the LLM stack (its order is the point:
//! read [`llm_service`] top to bottom), the models and keys the endpoints answer from, and the
//! JSON-lines file the records go to.

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultMakeSpan, DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use super::HttpService;
use crate::auth::{AuthLayer, StaticKeys};
use crate::body::Body;
use crate::config::{Config, ConfigError, HealthRegistry, MetricsPolicy, ModelInfo};
use crate::error::{ErrorResponseLayer, GatewayError};
use crate::fallback::FallbackLayer;
use crate::meter::{CostReportLayer, RecordSink, UsageMeterLayer};
use crate::pricing::PriceHandle;
use crate::provider::Dispatch;
use crate::ratelimit::{LimitStore, RateLimitLayer};
use crate::request::{
    BodyBudgetLayer, DEFAULT_BODY_BUDGET_BYTES, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_UPLOAD_BYTES, ParseLayer,
};
use crate::route::{RouteHandle, RouteLayer};
use crate::sink::JsonlSink;
use crate::stream::StreamPassthroughLayer;
use crate::timeout::TimeoutLayer;
use crate::translate::TranslateLimits;

/// Records a sink queues before it drops new ones, unless `[usage] queue` says otherwise.
const DEFAULT_QUEUE: usize = 65_536;

/// What every generation shares: built once at start, kept by every reload.
pub(super) struct Fixed {
    /// The limit counters: a lowered limit applies to what the window already counted.
    pub(super) store: Arc<dyn LimitStore>,
    /// Sinks that are not the JSON-lines file (the builder's extra sinks, PostgreSQL).
    pub(super) sinks: Vec<Arc<dyn RecordSink>>,
    /// The request-body bytes all requests in flight may hold.
    pub(super) body_budget: BodyBudgetLayer,
}

/// The body budget of `[server] max_buffered_body_bytes`.
pub(super) fn body_budget(cfg: &Config) -> BodyBudgetLayer {
    BodyBudgetLayer::new(
        cfg.server
            .max_buffered_body_bytes
            .unwrap_or(DEFAULT_BODY_BUDGET_BYTES),
    )
    .max_body_bytes(cfg.server.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES))
}

/// The JSON-lines file of a generation; a reload that keeps the path keeps the writer.
pub(super) struct JsonlFile {
    path: String,
    queue: usize,
    pub(super) sink: Arc<JsonlSink>,
}

/// One generation of the gateway.
pub(super) struct Stack {
    pub(super) llm: HttpService,
    pub(super) models: Vec<ModelInfo>,
    /// `None`: auth is off.
    pub(super) keys: Option<StaticKeys>,
    pub(super) metrics_on_main: bool,
    pub(super) metrics_on_admin: bool,
    pub(super) jsonl: Option<JsonlFile>,
}

/// Build a generation from `cfg`. `health` carries circuit state across generations;
/// `jsonl` is the current generation's file (reused when the path and queue are unchanged).
pub(super) fn build(
    cfg: &Config,
    fixed: &Fixed,
    health: &mut HealthRegistry,
    jsonl: Option<&JsonlFile>,
) -> Result<Stack, ConfigError> {
    let (metrics_on_main, metrics_on_admin) = metrics_policy(cfg)?;
    let rt = cfg.build_runtime(health)?;
    for p in &rt.disabled_providers {
        tracing::info!(provider = %p, "provider switched off: its API-key variable is not set");
    }
    let keys = crate::config::static_keys(cfg)?;
    let routes = RouteHandle::new(rt.routes);
    let prices = PriceHandle::new(rt.prices);
    let price_routes = routes.clone();
    let ratelimit = crate::config::ratelimit_layer_on(cfg, fixed.store.clone(), move |model| {
        crate::config::worst_price(&price_routes.load(), model)
    })?;
    let jsonl = jsonl_file(cfg, jsonl)?;
    let meter = meter_layer(cfg, fixed, &routes, &prices, jsonl.as_ref());
    let auth = match &keys {
        Some(k) => AuthLayer::new(k.clone()),
        None => AuthLayer::disabled(),
    };
    let layers = Layers {
        translate: translate_limits(cfg)?,
        max_body: cfg.server.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
        stream: stream_layer(cfg),
        body_read_timeout: body_read_timeout(cfg)?,
        body_budget: fixed.body_budget.clone(),
        max_upload: cfg
            .server
            .max_upload_bytes
            .unwrap_or(DEFAULT_MAX_UPLOAD_BYTES),
        meter,
        // `cost` (USD) in the usage object the client receives, as OpenRouter does.
        cost: cfg
            .usage
            .report_cost
            .unwrap_or(false)
            .then(|| CostReportLayer::new().prices(prices)),
        auth,
        ratelimit,
        routes,
    };
    Ok(Stack {
        llm: llm_service(layers),
        models: rt.models,
        keys,
        metrics_on_main,
        metrics_on_admin,
        jsonl,
    })
}

/// The UsageMeter of a generation: prices, the JSON-lines file, the fixed sinks, the access
/// log. Records and metric labels name served models only (else `unknown`): bounded
/// cardinality.
fn meter_layer(
    cfg: &Config,
    fixed: &Fixed,
    routes: &RouteHandle,
    prices: &PriceHandle,
    jsonl: Option<&JsonlFile>,
) -> UsageMeterLayer {
    let known_routes = routes.clone();
    let mut meter = UsageMeterLayer::new()
        .prices(prices.clone())
        .known_models(move |m| known_routes.load().get(m).is_some());
    if let Some(j) = jsonl {
        meter = meter.sink(j.sink.clone());
    }
    for s in &fixed.sinks {
        meter = meter.sink(s.clone());
    }
    // One `info` line per request under `tollgate::access`.
    if cfg.server.access_log.unwrap_or(true) {
        // Text logs get the access line preformatted (one message); JSON logs, the fields.
        let access = match cfg.server.log_format {
            Some(crate::config::LogFormat::Json) => crate::sink::AccessLog::new(),
            _ => crate::sink::AccessLog::preformatted(),
        };
        meter = meter.sink(Arc::new(access));
    }
    meter
}

/// StreamPassthrough with `[server] max_sse_event_bytes` and `[usage] max_usage_tokens`.
fn stream_layer(cfg: &Config) -> StreamPassthroughLayer {
    StreamPassthroughLayer::new()
        .max_event_bytes(
            cfg.server
                .max_sse_event_bytes
                .unwrap_or(crate::sse::DEFAULT_MAX_EVENT_BYTES),
        )
        .max_usage_tokens(
            cfg.usage
                .max_usage_tokens
                .unwrap_or(crate::usage::DEFAULT_MAX_USAGE_TOKENS),
        )
}

/// `[server] body_read_timeout_ms` (0 is refused).
fn body_read_timeout(cfg: &Config) -> Result<Duration, ConfigError> {
    match cfg.server.body_read_timeout_ms {
        Some(0) => Err(ConfigError::field(
            &cfg.source,
            "server.body_read_timeout_ms",
            "must be greater than 0",
        )),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(DEFAULT_BODY_READ_TIMEOUT),
    }
}

/// `[server] max_translated_event_bytes` and `max_translated_body_bytes` (0 is refused).
fn translate_limits(cfg: &Config) -> Result<TranslateLimits, ConfigError> {
    let cap = |field: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(ConfigError::field(
            &cfg.source,
            &format!("server.{field}"),
            "must be greater than 0",
        )),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let d = TranslateLimits::default();
    Ok(TranslateLimits {
        max_event_bytes: cap(
            "max_translated_event_bytes",
            cfg.server.max_translated_event_bytes,
            d.max_event_bytes,
        )?,
        max_body_bytes: cap(
            "max_translated_body_bytes",
            cfg.server.max_translated_body_bytes,
            d.max_body_bytes,
        )?,
    })
}

/// The configured layers of one generation.
struct Layers {
    translate: TranslateLimits,
    max_body: usize,
    stream: StreamPassthroughLayer,
    body_read_timeout: Duration,
    body_budget: BodyBudgetLayer,
    max_upload: usize,
    meter: UsageMeterLayer,
    cost: Option<CostReportLayer>,
    auth: AuthLayer,
    ratelimit: RateLimitLayer,
    routes: RouteHandle,
}

/// The LLM stack, outermost first. See the crate docs for why this order.
fn llm_service(l: Layers) -> HttpService {
    ServiceBuilder::new()
        // edge: a panic becomes a 500, every request gets an id, one span per request
        .layer(BoxCloneSyncService::layer())
        .map_response(|res: Response<_>| res.map(Body::new))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(SetRequestIdLayer::x_request_id(
            crate::reqid::RequestIds::new(),
        ))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::DEBUG))
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                // the access line and the warn lines say what failed, once
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        // the one place a GatewayError becomes an OpenAI-shaped response
        .layer(ErrorResponseLayer::new())
        // the key from the headers: no valid key, no byte of the body is read
        .layer(l.auth.key_check())
        // one budget of buffered request-body bytes for all requests in flight: 503 when spent
        .layer(l.body_budget)
        // buffer the request once (capped, read deadline), read model/stream/...
        .layer(
            ParseLayer::new()
                .max_body_bytes(l.max_body)
                .body_read_timeout(Some(l.body_read_timeout))
                .max_upload_bytes(l.max_upload),
        )
        // one usage record per request, every outcome
        .layer(l.meter)
        // optional: the cost in the client's usage object
        .option_layer(l.cost)
        // virtual key -> identity; 401 / 403 (or switched off explicitly)
        .layer(l.auth)
        // RPM / TPM / concurrency / budgets: reserve now, settle when the body ends
        .layer(l.ratelimit)
        // SSE hygiene, include_usage injection and stripping, in-band errors after commit
        .layer(l.stream)
        // model name -> ordered targets
        .layer(RouteLayer::new(l.routes))
        // try targets in order until the commit point
        .layer(FallbackLayer::new())
        // per attempt: connect, first token, idle, total
        .layer(TimeoutLayer::new())
        .service(Dispatch::new().translate_limits(l.translate))
}

fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    tracing::error!("a request handler panicked");
    GatewayError::internal("internal error in the gateway").into_response()
}

/// Where `/metrics` is served: (main listener, admin listener).
fn metrics_policy(cfg: &Config) -> Result<(bool, bool), ConfigError> {
    let admin = cfg.server.admin_listen.is_some();
    let auth_on = cfg.auth.enabled != Some(false);
    Ok(match cfg.server.metrics {
        Some(MetricsPolicy::Main) => (true, admin),
        Some(MetricsPolicy::Admin) if !admin => {
            return Err(ConfigError::field(
                &cfg.source,
                "server.metrics",
                "\"admin\" needs server.admin_listen",
            ));
        }
        Some(MetricsPolicy::Admin) => (false, true),
        Some(MetricsPolicy::Off) => (false, false),
        None => (!admin && !auth_on, admin),
    })
}

/// The JSON-lines file `[usage] jsonl` names: the current one when path and queue are
/// unchanged, else a newly opened one (the old one is flushed when its last request ends).
fn jsonl_file(cfg: &Config, current: Option<&JsonlFile>) -> Result<Option<JsonlFile>, ConfigError> {
    let path = match cfg.usage.jsonl.as_deref() {
        None | Some("") => return Ok(None),
        Some(p) => p,
    };
    let queue = cfg.usage.queue.unwrap_or(DEFAULT_QUEUE);
    if let Some(c) = current.filter(|c| c.path == path && c.queue == queue) {
        return Ok(Some(JsonlFile {
            path: c.path.clone(),
            queue,
            sink: c.sink.clone(),
        }));
    }
    let sink = JsonlSink::open(path, queue).map_err(|e| {
        ConfigError::field(
            &cfg.source,
            "usage.jsonl",
            format!("cannot open {path}: {e}"),
        )
    })?;
    Ok(Some(JsonlFile {
        path: path.to_owned(),
        queue,
        sink: Arc::new(sink),
    }))
}

/// The PostgreSQL sink of `[usage.postgres]`, connected once at start.
#[cfg(feature = "postgres")]
pub(super) async fn connect_postgres(
    cfg: &Config,
) -> Result<Option<Arc<crate::sink::postgres::PostgresSink>>, ConfigError> {
    use crate::sink::postgres::{PostgresSink, PostgresSinkConfig};
    match PostgresSinkConfig::from_config(&cfg.usage, &cfg.source)? {
        Some(c) => {
            Ok(Some(Arc::new(PostgresSink::connect(c).await.map_err(
                |e| ConfigError::field(&cfg.source, "usage.postgres", e),
            )?)))
        }
        None => Ok(None),
    }
}
