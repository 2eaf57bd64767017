//! The accept loop: HTTP/1.1 and HTTP/2 on one listener, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::Service;

use crate::body::Body;
use crate::ext::{DrainControl, DrainPhase};

/// How long in-flight requests may run after shutdown began, for [`serve_connections`].
const DRAIN: Duration = Duration::from_secs(30);

/// After the drain period: how long the streams just ended in-band get to be written out.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serve `service` (one clone per connection) on `listener` until `shutdown` resolves; then
/// stop accepting and let in-flight requests finish (up to 30 s). No flush: the reference
/// gateway runs one loop per worker thread, each on its own listener, and flushes once when
/// all have finished ([`Gateway::serve`](super::Gateway::serve) does both).
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
    serve_draining(listener, service, shutdown, DrainControl::new(DRAIN)).await;
}

/// [`serve_connections`] with the shutdown told to every request through `drain` (a
/// [`Gateway`](super::Gateway)'s [`drain_control`](super::Gateway::drain_control): its
/// requests carry the matching [`Drain`](crate::ext::Drain)). When `shutdown` resolves: stop
/// accepting; idle connections close at once (hyper's graceful shutdown), and a request whose
/// body is still arriving is answered 503 at once; streams run on until the drain period
/// ends, then each ends with the in-band error event (its usage record written as for any
/// failed stream); returns as soon as no connection is left.
pub async fn serve_draining<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    drain: DrainControl,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
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
                let svc = TowerToHyperService::new(service.clone());
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
    drain.advance(DrainPhase::Stopping);
    let all_closed = graceful.shutdown();
    tokio::pin!(all_closed);
    tokio::select! {
        _ = &mut all_closed => return,
        _ = tokio::time::sleep(drain.period()) => {}
    }
    tracing::warn!(
        drain_ms = drain.period().as_millis() as u64,
        "streams still running at the end of the drain period; ending them"
    );
    drain.advance(DrainPhase::Over);
    tokio::select! {
        _ = &mut all_closed => {}
        _ = tokio::time::sleep(CLOSE_GRACE) => {
            tracing::warn!("requests still running after the drain period; closing");
        }
    }
}
