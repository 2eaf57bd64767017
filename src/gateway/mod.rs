//! The assembled gateway (cargo feature `gateway`, on by default): the whole stack built from a
//! [`Config`], hot reload, request ids, the panic response, `/v1/models`, the health and metrics
//! endpoints, usage-record sinks and the serve loop. The reference binary
//! (`examples/gateway`) is this plus its arguments, runtime, sockets and metrics exporter.
//!
//! ```no_run
//! use tollgate::config::Config;
//! use tollgate::gateway::Gateway;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = Config::load("gateway.toml".as_ref())?;
//! let (gateway, reloader) = Gateway::builder(&cfg)
//!     .metrics(|| String::from("# your exporter's text\n"))
//!     .build()
//!     .await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // SIGHUP (or anything else) applies a new file; a refused one keeps the old config.
//! let _ = reloader.reload_file("gateway.toml".as_ref());
//! gateway.serve(listener, std::future::pending()).await;
//! # Ok(()) }
//! ```
//!
//! [`Gateway`] is a cloneable `tower::Service<Request<Incoming>>` for hyper: the operational
//! endpoints are answered in front of the LLM stack, everything else goes through the stack
//! (which answers 404/405 for unknown paths and methods). [`Reloader`] swaps in a new stack
//! built from a new config, atomically: a request sees the old config or the new one, never a
//! mix; requests in flight finish on the stack they were admitted by.
//!
//! [`Gateway::serve`] (and [`serve_with`] with [`Gateway::serve_options`]) applies
//! the connection discipline of `[server]`: header read and idle timeouts, header limits, the
//! HTTP/2 stream cap and the connection cap ([`ServeOptions`]; the
//! [admin service](Gateway::admin) gets the same with a cap of its own,
//! [`Gateway::admin_serve_options`]); the stack refuses a request without a valid key before
//! reading its body, and holds all bodies in flight to one budget.
//!
//! Endpoints beside the LLM stack:
//! - `GET /healthz` (`/health`): `{"status":"ok"}`.
//! - `GET /v1/models` (`/models`), `GET /v1/models/{id}`: the models the calling key may use;
//!   with auth on, a request without a valid key gets 401.
//! - `GET /v1/responses/{id}`, `DELETE /v1/responses/{id}`,
//!   `GET /v1/responses/{id}/input_items` (also without `/v1`): the calling key's stored
//!   response (or a page of its input items), from the [response store](crate::store) of
//!   `[responses]`; 404 for an unknown, expired or another key's id. `POST /v1/responses`
//!   goes through the LLM stack, with the store's [`ResponseStoreHandle`] as a request
//!   extension.
//! - `GET /metrics`: the text of the [metrics callback](GatewayBuilder::metrics), on the main
//!   listener only when `[server] metrics = "main"` (or by default when auth is off), and on
//!   the [admin service](Gateway::admin) served on `[server] admin_listen`.

mod conn;
mod ops;
mod reload;
mod serve;
mod stack;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
use hyper::body::Incoming;
use tower::Service;
use tower::util::BoxCloneSyncService;

use crate::body::Body;
use crate::config::{Config, ConfigError, HealthRegistry};
use crate::ext::DrainControl;
use crate::meter::RecordSink;
use crate::store::ResponseStoreHandle;

pub use conn::{
    DEFAULT_ADMIN_MAX_CONNECTIONS, DEFAULT_H2_MAX_STREAMS, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS,
    ServeOptions, default_max_connections, raise_nofile_limit,
};
pub use ops::Admin;
pub use reload::Reloader;
pub use serve::{serve_connections, serve_with};

/// Default of `[server] drain_ms`: how long streams may run after shutdown began.
pub const DEFAULT_DRAIN_MS: u64 = 30_000;

use stack::{Fixed, Stack};

/// Renders the text that `/metrics` answers (e.g. a Prometheus exporter's `render`).
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

type HttpService = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

/// What every clone of a [`Gateway`] and its [`Reloader`] share.
struct Shared {
    /// The stack requests use now; a reload replaces it whole.
    current: ArcSwap<Stack>,
    metrics: Option<MetricsRender>,
    /// The Responses API's store (`[responses]`), kept across reloads.
    responses: ResponseStoreHandle,
    /// The shutdown every request is told about (`[server] drain_ms`, read at start).
    drain: DrainControl,
    /// The connection discipline of `[server]` (read at start; one connection count).
    serve: ServeOptions,
    /// The same discipline for the admin listener, with its own, smaller connection count.
    admin_serve: ServeOptions,
    #[cfg(feature = "postgres")]
    postgres: Option<Arc<crate::sink::postgres::PostgresSink>>,
}

/// The assembled gateway: the LLM stack plus the small operational endpoints. See the
/// [module docs](self).
pub struct Gateway {
    shared: Arc<Shared>,
    /// The stack service made ready by `poll_ready`, used by the next `call`.
    ready: Option<HttpService>,
}

impl Clone for Gateway {
    fn clone(&self) -> Self {
        Gateway {
            shared: self.shared.clone(),
            ready: None,
        }
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("models", &self.model_names())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Gateway`] and its [`Reloader`] from a config; see [`Gateway::builder`].
#[must_use]
pub struct GatewayBuilder<'a> {
    cfg: &'a Config,
    metrics: Option<MetricsRender>,
    sinks: Vec<Arc<dyn RecordSink>>,
    responses: Option<ResponseStoreHandle>,
}

impl std::fmt::Debug for GatewayBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("source", &self.cfg.source)
            .field("metrics", &self.metrics.is_some())
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

impl GatewayBuilder<'_> {
    /// What `/metrics` answers (where the config serves it). Without it `/metrics` is 404.
    pub fn metrics(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.metrics = Some(Arc::new(render));
        self
    }

    /// One more usage-record sink, beside the ones the config names (kept across reloads).
    pub fn sink(mut self, sink: Arc<dyn RecordSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// The Responses API's store, instead of the one `[responses]` names (e.g. one shared
    /// by several gateways in one process, or a store of your own).
    pub fn response_store(mut self, store: ResponseStoreHandle) -> Self {
        self.responses = Some(store);
        self
    }

    /// Build the stack. Fails with a message naming the field and the file. Logs a warning
    /// when auth is on with no keys (every request would get 401).
    pub async fn build(self) -> Result<(Gateway, Reloader), ConfigError> {
        let cfg = self.cfg;
        #[cfg(feature = "postgres")]
        let postgres = stack::connect_postgres(cfg).await?;
        #[cfg(feature = "postgres")]
        let sinks = {
            let mut sinks = self.sinks;
            sinks.extend(postgres.iter().map(|pg| pg.clone() as Arc<dyn RecordSink>));
            sinks
        };
        #[cfg(not(feature = "postgres"))]
        let sinks = self.sinks;
        #[cfg(not(feature = "postgres"))]
        if cfg.usage.postgres.is_some() {
            return Err(ConfigError::field(
                &cfg.source,
                "usage.postgres",
                "this build has no PostgreSQL support (cargo feature `postgres`)",
            ));
        }
        let responses = match self.responses {
            Some(r) => r,
            None => crate::config::response_store(cfg)?,
        };
        let fixed = Fixed {
            store: crate::config::limit_store(cfg)?,
            sinks,
            body_budget: stack::body_budget(cfg),
        };
        let serve = ServeOptions::from_config(cfg)?;
        let mut health = HealthRegistry::new();
        let stack = stack::build(cfg, &fixed, &mut health, None)?;
        if stack.keys.as_ref().is_some_and(|k| k.is_empty()) {
            tracing::warn!(
                file = %cfg.source,
                "auth is on and there are no [[auth.keys]]: every request will be refused with 401"
            );
        }
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(stack),
            metrics: self.metrics,
            responses,
            drain: DrainControl::new(Duration::from_millis(
                cfg.server.drain_ms.unwrap_or(DEFAULT_DRAIN_MS),
            )),
            admin_serve: serve.with_own_connections(DEFAULT_ADMIN_MAX_CONNECTIONS),
            serve,
            #[cfg(feature = "postgres")]
            postgres,
        });
        let reloader = Reloader::new(shared.clone(), cfg.clone(), health, fixed);
        Ok((
            Gateway {
                shared,
                ready: None,
            },
            reloader,
        ))
    }
}

impl Gateway {
    /// A builder: add a metrics callback or an extra sink, then [`build`](GatewayBuilder::build).
    pub fn builder(cfg: &Config) -> GatewayBuilder<'_> {
        GatewayBuilder {
            cfg,
            metrics: None,
            sinks: Vec::new(),
            responses: None,
        }
    }

    /// Build from `cfg` with no metrics callback and no extra sink.
    pub async fn from_config(cfg: &Config) -> Result<(Gateway, Reloader), ConfigError> {
        Self::builder(cfg).build().await
    }

    /// The public model names served now (aliases and tiers included).
    pub fn model_names(&self) -> Vec<String> {
        let stack = self.shared.current.load();
        stack.models.iter().map(|m| m.id.clone()).collect()
    }

    /// The Responses API's store (`[responses]`, or the builder's), kept across reloads. The
    /// gateway also inserts it as a request extension on every request whose path starts with
    /// `/v1/responses` or `/responses`, for the Responses endpoint in the stack to read.
    pub fn response_store(&self) -> ResponseStoreHandle {
        self.shared.responses.clone()
    }

    /// Whether requests need a virtual key.
    pub fn auth_enabled(&self) -> bool {
        self.shared.current.load().keys.is_some()
    }

    /// The service for `[server] admin_listen`: `/healthz` and `/metrics` only.
    pub fn admin(&self) -> Admin {
        Admin::new(self.shared.clone())
    }

    /// Warn (once, at `warn`) when auth is off and `addr` is not a loopback address: anyone who
    /// can reach it can spend the providers' keys.
    pub fn warn_if_exposed(&self, addr: SocketAddr) {
        if let Some(w) = exposure_warning(self.auth_enabled(), addr) {
            tracing::warn!(%addr, "{w}");
        }
    }

    /// Write every queued usage record (graceful shutdown).
    pub async fn flush(&self) {
        let jsonl = self
            .shared
            .current
            .load()
            .jsonl
            .as_ref()
            .map(|j| j.sink.clone());
        if let Some(s) = jsonl {
            let _ = tokio::task::spawn_blocking(move || s.flush()).await;
        }
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.shared.postgres {
            pg.flush().await;
        }
    }

    /// The shutdown control every request of this gateway is told about: pass it to
    /// [`serve_with`] (each worker's loop may; the first to stop moves all requests on).
    pub fn drain_control(&self) -> DrainControl {
        self.shared.drain.clone()
    }

    /// The connection discipline `[server]` asks for (timeouts, header limits, connection
    /// cap). Clones share one connection count: give the same value to every accept loop.
    pub fn serve_options(&self) -> ServeOptions {
        self.shared.serve.clone()
    }

    /// The connection discipline for the [admin service](Self::admin) on `[server]
    /// admin_listen`: the header read and idle timeouts and header limits of `[server]`, and
    /// a connection cap of its own ([`DEFAULT_ADMIN_MAX_CONNECTIONS`], or `max_connections` if
    /// lower): a flood of either listener does not lock operators or clients out of the
    /// other. Clones share one count.
    pub fn admin_serve_options(&self) -> ServeOptions {
        self.shared.admin_serve.clone()
    }

    /// Serve on `listener` until `shutdown` resolves, with [`serve_options`](Self::serve_options);
    /// then stop accepting, let in-flight requests finish (up to `[server] drain_ms`, then
    /// streams end with the in-band error event) and flush the usage records. See
    /// [`serve_with`].
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let opts = self.serve_options();
        serve_with(
            listener,
            self.clone(),
            shutdown,
            &opts,
            self.drain_control(),
        )
        .await;
        self.flush().await;
    }
}

/// The start-up warning for auth off on a non-loopback address.
fn exposure_warning(auth_enabled: bool, addr: SocketAddr) -> Option<&'static str> {
    (!auth_enabled && !addr.ip().is_loopback()).then_some(
        "auth is off and the gateway listens on a non-loopback address: anyone who reaches it \
         can use the providers' keys; set [auth] enabled = true with [[auth.keys]]",
    )
}

type GatewayFuture = Either<
    <HttpService as Service<Request<Incoming>>>::Future,
    Either<Ready<Result<Response<Body>, Infallible>>, ops::OpFuture>,
>;

impl Service<Request<Incoming>> for Gateway {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        let shared = &self.shared;
        self.ready
            .get_or_insert_with(|| shared.current.load().llm.clone())
            .poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> GatewayFuture {
        let stack = self.shared.current.load();
        req.extensions_mut().insert(self.shared.drain.drain());
        if let Some(res) = ops::main_endpoint(&stack, self.shared.metrics.as_ref(), &req) {
            return Either::Right(Either::Left(ready(Ok(res))));
        }
        let path = req.uri().path();
        if path.starts_with("/v1/responses") || path.starts_with("/responses") {
            let store = &self.shared.responses;
            if let Some(fut) = ops::responses_endpoint(&stack, store, &req) {
                return Either::Right(Either::Right(fut));
            }
            req.extensions_mut().insert(store.clone());
        }
        // The service made ready by poll_ready; every layer of the stack is always ready, so
        // a caller that skipped poll_ready gets the current stack.
        let mut llm = self.ready.take().unwrap_or_else(|| stack.llm.clone());
        Either::Left(llm.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_off_on_a_public_address_is_warned_about() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let local6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(exposure_warning(false, public).is_some());
        assert!(exposure_warning(true, public).is_none());
        assert!(exposure_warning(false, local).is_none());
        assert!(exposure_warning(false, local6).is_none());
    }
}
