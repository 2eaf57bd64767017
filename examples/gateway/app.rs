//! The gateway's stack, assembled from the config. (Being assembled: see the lead's work.)

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;
use tollgate::body::Body;
use tollgate::config::{Config, ConfigError};
use tower::util::BoxCloneSyncService;

/// The assembled gateway.
pub struct App;

impl App {
    /// Build from config.
    pub fn build(
        _cfg: &Config,
        _prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Result<App, ConfigError> {
        Err(ConfigError("the gateway stack is not assembled yet".into()))
    }
    /// The HTTP service.
    pub fn service(&self) -> BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible> {
        BoxCloneSyncService::new(tower::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }))
    }
    /// Public model names.
    pub fn model_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// Swap in a new config.
    pub fn reload(&self, _cfg: &Config) -> Result<(), ConfigError> {
        Ok(())
    }
    /// Flush sinks.
    pub fn flush(&self) {}
}
