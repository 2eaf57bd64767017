//! The accept loop: HTTP/1.1 and HTTP/2 on one listener, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::Service;

use super::conn::{Counted, IdleIo, InFlight, LogLimit, ServeOptions, accept_failed};
use crate::body::Body;

/// How long in-flight requests may run after shutdown began.
const DRAIN: Duration = Duration::from_secs(30);

/// [`serve_connections_with`] the default [`ServeOptions`] (its own connection count).
pub async fn serve_connections<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    serve_connections_with(listener, service, shutdown, &ServeOptions::default()).await;
}

/// Serve `service` (one clone per connection) on `listener` until `shutdown` resolves; then
/// stop accepting and let in-flight requests finish (up to 30 s). No flush: the reference
/// gateway runs one loop per worker thread, each on its own listener, and flushes once when
/// all have finished ([`Gateway::serve`](super::Gateway::serve) does both).
///
/// `opts` sets the connection discipline: header read and idle timeouts, header limits, and
/// the cap on open connections (shared by the clones of `opts`: pass one value to every loop).
pub async fn serve_connections_with<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    opts: &ServeOptions,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let builder = opts.builder();
    let mut accept_log = LogLimit::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let (stream, _) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tokio::time::sleep(accept_failed(&mut accept_log, &e)).await;
                        continue;
                    }
                };
                let Some(slot) = opts.admit(&stream) else { continue };
                let _ = stream.set_nodelay(true);
                let in_flight = InFlight::default();
                let io = IdleIo::new(stream, opts.idle_timeout_value(), in_flight.clone());
                let svc = TowerToHyperService::new(Counted { inner: service.clone(), in_flight });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(slot);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => {
            tracing::warn!("in-flight requests still running after 30 s; closing");
        }
    }
}
