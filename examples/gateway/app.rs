//! The reference gateway's stack, assembled from the config. The order of the layers is the
//! point of this file: read it top to bottom.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::future::{Either, Ready, ready};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tollgate::body::Body;
use tollgate::config::{Config, ConfigError, HealthRegistry, ModelInfo, ReloadableKeys};
use tollgate::error::{ErrorKind, ErrorResponseLayer, GatewayError};
use tollgate::fallback::FallbackLayer;
use tollgate::meter::{CostReportLayer, RecordSink, UsageMeterLayer};
use tollgate::pricing::PriceHandle;
use tollgate::provider::Dispatch;
use tollgate::request::{DEFAULT_MAX_BODY_BYTES, ParseLayer};
use tollgate::route::{RouteHandle, RouteLayer};
use tollgate::sink::JsonlSink;
use tollgate::stream::StreamPassthroughLayer;
use tollgate::timeout::TimeoutLayer;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultMakeSpan, DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

type HttpService = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

/// The assembled gateway: the LLM stack plus the small operational endpoints.
pub struct App {
    routes: RouteHandle,
    keys: Option<ReloadableKeys>,
    prices: PriceHandle,
    #[cfg(feature = "postgres")]
    postgres: Option<Arc<tollgate::sink::postgres::PostgresSink>>,
    models: Arc<ArcSwap<Vec<ModelInfo>>>,
    health: Mutex<HealthRegistry>,
    jsonl: Option<Arc<JsonlSink>>,
    front: Front,
}

impl App {
    /// Build from config, with the Prometheus handle that `/metrics` renders.
    pub async fn build(
        cfg: &Config,
        prometheus: Option<PrometheusHandle>,
    ) -> Result<App, ConfigError> {
        Self::build_with(cfg, prometheus, None).await
    }

    /// Build, with an extra usage-record sink (tests use it to see every record).
    pub async fn build_with(
        cfg: &Config,
        prometheus: Option<PrometheusHandle>,
        extra_sink: Option<Arc<dyn RecordSink>>,
    ) -> Result<App, ConfigError> {
        let mut health = HealthRegistry::new();
        let rt = cfg.build_runtime(&mut health)?;
        for p in &rt.disabled_providers {
            tracing::info!(provider = %p, "provider switched off: its API-key variable is not set");
        }
        let routes = RouteHandle::new(rt.routes);
        let prices = PriceHandle::new(rt.prices);
        let models = Arc::new(ArcSwap::from_pointee(rt.models));

        // Usage records: the JSON-lines file (default) and any extra sink.
        let mut meter = UsageMeterLayer::new().prices(prices.clone());
        let jsonl = match cfg.usage.jsonl.as_deref() {
            None | Some("") => None,
            Some(path) => {
                let sink =
                    JsonlSink::open(path, cfg.usage.queue.unwrap_or(65_536)).map_err(|e| {
                        ConfigError::field(
                            &cfg.source,
                            "usage.jsonl",
                            format!("cannot open {path}: {e}"),
                        )
                    })?;
                Some(Arc::new(sink))
            }
        };
        if let Some(s) = &jsonl {
            meter = meter.sink(s.clone());
        }
        if let Some(s) = extra_sink {
            meter = meter.sink(s);
        }
        // One `info` line per request under `tollgate::access`.
        if cfg.server.access_log.unwrap_or(true) {
            meter = meter.sink(Arc::new(tollgate::sink::AccessLog::new()));
        }
        #[cfg(feature = "postgres")]
        let postgres = match tollgate::sink::postgres::PostgresSinkConfig::from_config(
            &cfg.usage,
            &cfg.source,
        )? {
            Some(c) => {
                let pg = Arc::new(
                    tollgate::sink::postgres::PostgresSink::connect(c)
                        .await
                        .map_err(|e| ConfigError::field(&cfg.source, "usage.postgres", e))?,
                );
                meter = meter.sink(pg.clone());
                Some(pg)
            }
            None => None,
        };
        #[cfg(not(feature = "postgres"))]
        if cfg.usage.postgres.is_some() {
            return Err(ConfigError::field(
                &cfg.source,
                "usage.postgres",
                "this build has no PostgreSQL support (cargo feature `postgres`)",
            ));
        }
        // `cost` (USD) in the usage object the client receives, as OpenRouter does.
        let cost = cfg
            .usage
            .report_cost
            .unwrap_or(false)
            .then(|| CostReportLayer::new().prices(prices.clone()));

        // Virtual keys and limits.
        let (auth, keys) = tollgate::config::auth_layer(cfg)?;
        let price_routes = routes.clone();
        let ratelimit = tollgate::config::ratelimit_layer(cfg, move |model| {
            tollgate::config::worst_price(&price_routes.load(), model)
        })?;

        // The LLM stack, outermost first. See the crate docs for why this order.
        let llm = ServiceBuilder::new()
            // edge: a panic becomes a 500, every request gets an id, one span per request
            .layer(BoxCloneSyncService::layer())
            .map_response(|res: Response<_>| res.map(Body::new))
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(SetRequestIdLayer::x_request_id(
                tollgate::reqid::RequestIds::new(),
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
            // buffer the request once (capped), read model/stream/...
            .layer(
                ParseLayer::new()
                    .max_body_bytes(cfg.server.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES)),
            )
            // one usage record per request, every outcome
            .layer(meter)
            // optional: the cost in the client's usage object
            .option_layer(cost)
            // virtual key -> identity; 401 / 403 (or switched off explicitly)
            .layer(auth)
            // RPM / TPM / concurrency / budgets: reserve now, settle when the body ends
            .layer(ratelimit)
            // SSE hygiene, include_usage injection and stripping, in-band errors after commit
            .layer(StreamPassthroughLayer::new())
            // model name -> ordered targets
            .layer(RouteLayer::new(routes.clone()))
            // try targets in order until the commit point
            .layer(FallbackLayer::new())
            // per attempt: connect, first token, idle, total
            .layer(TimeoutLayer::new())
            .service(Dispatch::new());

        Ok(App {
            routes,
            keys,
            prices,
            #[cfg(feature = "postgres")]
            postgres,
            models: models.clone(),
            health: Mutex::new(health),
            jsonl,
            front: Front {
                llm,
                models,
                prometheus,
            },
        })
    }

    /// The HTTP service for one connection.
    pub fn service(&self) -> Front {
        self.front.clone()
    }

    /// Public model names.
    pub fn model_names(&self) -> Vec<String> {
        self.models.load().iter().map(|m| m.id.clone()).collect()
    }

    /// Swap in a new config's routes, prices and virtual keys. In-flight requests keep what
    /// they were admitted and routed with; a config that fails to build is refused and the old
    /// one stays. Switching auth on or off needs a restart (refused here, explicitly).
    pub fn reload(&self, cfg: &Config) -> Result<(), ConfigError> {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = health.clone();
        let keys = tollgate::config::static_keys(cfg)?;
        if keys.is_some() != self.keys.is_some() {
            return Err(ConfigError::field(
                &cfg.source,
                "auth.enabled",
                "switching auth on or off needs a restart",
            ));
        }
        let rt = cfg.build_runtime(&mut next)?;
        if let (Some(current), Some(new)) = (&self.keys, keys) {
            current.store(new);
        }
        self.routes.store(rt.routes);
        self.prices.store(rt.prices);
        self.models.store(Arc::new(rt.models));
        *health = next;
        Ok(())
    }

    /// Write every queued usage record (graceful shutdown).
    pub async fn flush(&self) {
        if let Some(s) = self.jsonl.clone() {
            let _ = tokio::task::spawn_blocking(move || s.flush()).await;
        }
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.postgres {
            pg.flush().await;
        }
    }
}

fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    tracing::error!("a request handler panicked");
    GatewayError::internal("internal error in the gateway").into_response()
}

/// Routes the operational endpoints; everything else goes to the LLM stack (which answers
/// 404/405 for unknown paths and methods). The Anthropic-style ingress (`POST /v1/messages`,
/// `/v1/messages/count_tokens`) is that same stack: Parse, UsageMeter, Route, Fallback and
/// Timeout treat it like any request; Dispatch passes it through to Anthropic targets and
/// translates it for the others; ErrorResponse answers it with Anthropic-shaped errors.
#[derive(Clone)]
pub struct Front {
    llm: HttpService,
    models: Arc<ArcSwap<Vec<ModelInfo>>>,
    prometheus: Option<PrometheusHandle>,
}

type FrontFuture = Either<
    <HttpService as Service<Request<Incoming>>>::Future,
    Ready<Result<Response<Body>, Infallible>>,
>;

impl Service<Request<Incoming>> for Front {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = FrontFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.llm.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> FrontFuture {
        let path = req.uri().path();
        let get = req.method() == Method::GET;
        let res = match path {
            "/healthz" | "/health" if get => {
                json(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"))
            }
            "/metrics" if get => match &self.prometheus {
                Some(p) => {
                    let mut r = Response::new(Body::from(p.render()));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    r
                }
                None => GatewayError::new(ErrorKind::NotFound, "metrics are not enabled")
                    .into_response(),
            },
            "/v1/models" | "/models" if get => self.list_models(),
            p if get && p.starts_with("/v1/models/") => self.one_model(&p["/v1/models/".len()..]),
            "/v1/models" | "/models" | "/healthz" | "/health" | "/metrics" => GatewayError::new(
                ErrorKind::MethodNotAllowed,
                format!("{} is not allowed on {path}; use GET", req.method()),
            )
            .with_header(header::ALLOW, HeaderValue::from_static("GET"))
            .into_response(),
            p if p.starts_with("/v1/models/") => GatewayError::new(
                ErrorKind::MethodNotAllowed,
                format!(
                    "{} is not allowed on /v1/models/{{id}}; use GET",
                    req.method()
                ),
            )
            .with_header(header::ALLOW, HeaderValue::from_static("GET"))
            .into_response(),
            _ => return Either::Left(self.llm.call(req)),
        };
        Either::Right(ready(Ok(res)))
    }
}

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

const CREATED: u64 = 1_767_225_600; // 2026-01-01

impl Front {
    fn list_models(&self) -> Response<Body> {
        let models = self.models.load();
        let data: Vec<serde_json::Value> = models
            .iter()
            .map(|m| serde_json::json!({"id": m.id, "object": "model", "created": CREATED, "owned_by": m.owned_by}))
            .collect();
        let body = serde_json::json!({"object": "list", "data": data});
        json(StatusCode::OK, Bytes::from(body.to_string()))
    }

    fn one_model(&self, id: &str) -> Response<Body> {
        let models = self.models.load();
        match models.iter().find(|m| m.id == id) {
            Some(m) => json(
                StatusCode::OK,
                Bytes::from(
                    serde_json::json!({"id": m.id, "object": "model", "created": CREATED, "owned_by": m.owned_by})
                        .to_string(),
                ),
            ),
            None => tollgate::route::model_not_found(id).into_response(),
        }
    }
}

/// Serve `app` on `listener` until `shutdown` resolves; then stop accepting, let in-flight
/// requests finish (up to 30 s) and flush the usage records.
#[allow(dead_code)] // the tests serve in process with it; the gateway binary runs one loop per worker
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    serve_connections(&app, listener, shutdown).await;
    app.flush().await;
}

/// [`serve`] without the final flush: one worker's accept loop (the gateway runs one per
/// worker thread, each on its own listener, and flushes once when all have finished).
pub async fn serve_connections(
    app: &App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let (stream, _) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = TowerToHyperService::new(app.service());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("in-flight requests still running after 30 s; closing");
        }
    }
}
