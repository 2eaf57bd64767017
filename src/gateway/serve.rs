//! The accept loop: HTTP/1.1 and HTTP/2 on one listener, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use pin_project_lite::pin_project;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::conn::{IdleIo, InFlight, LogLimit, ServeOptions, accept_failed};
use crate::body::{Body, BoxError};
use crate::ext::{DrainControl, DrainPhase, DrainWait};

/// How long in-flight requests may run after shutdown began, for [`serve_connections`].
const DRAIN: Duration = Duration::from_secs(30);

/// After the drain period: how long the streams just ended in-band get to be written out.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// At shutdown, how long a connection with no request in hand gets to close by itself (what
/// it has written goes out) before it is dropped.
const IDLE_GRACE: Duration = Duration::from_millis(100);

/// At shutdown, how often a connection with requests in hand looks again.
const IN_HAND_POLL: Duration = Duration::from_millis(20);

pin_project! {
    /// Drives one connection. Once shutdown began, hyper closes it if idle; one with no request
    /// in hand (a request head still arriving) would hold the exit until its head came, so it
    /// is dropped; one with requests in hand runs on (a body still arriving is refused by
    /// Parse; a stream, or a request still waiting for its answer, ends at the end of the drain
    /// period).
    ///
    /// A plain future rather than an `async` block awaiting an `async fn`: those kept the
    /// connection (hyper's state, ~1.8 KB) three times over in the task (the block's capture,
    /// the function's argument and its pinned local: 5.5 KB a connection, open all the time
    /// an idle stream is).
    struct RunConnection<C> {
        #[pin]
        conn: C,
        in_hand: Arc<AtomicUsize>,
        // Until shutdown begins.
        stopping: Option<DrainWait>,
        // After shutdown began: the next look, and whether no request was in hand when it was set.
        look: Option<(Pin<Box<Sleep>>, bool)>,
        // The connection's place under the open-connection cap, given back with the task.
        _slot: OwnedSemaphorePermit,
    }
}

impl<C> RunConnection<C> {
    fn new(
        conn: C,
        in_hand: Arc<AtomicUsize>,
        stopping: DrainWait,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        RunConnection {
            conn,
            in_hand,
            stopping: Some(stopping),
            look: None,
            _slot: slot,
        }
    }
}

impl<C: Future<Output = Result<(), BoxError>>> Future for RunConnection<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.conn.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if let Some(stopping) = this.stopping.as_mut() {
            ready!(stopping.as_mut().poll(cx));
            *this.stopping = None;
        }
        loop {
            let idle = this.in_hand.load(Ordering::Acquire) == 0;
            let wait = if idle { IDLE_GRACE } else { IN_HAND_POLL };
            match this.look.as_mut() {
                Some((sleep, was_idle)) => {
                    ready!(sleep.as_mut().poll(cx));
                    if *was_idle && idle {
                        return Poll::Ready(());
                    }
                    sleep.as_mut().reset(Instant::now() + wait);
                    *was_idle = idle;
                }
                None => *this.look = Some((Box::pin(tokio::time::sleep(wait)), idle)),
            }
        }
    }
}

/// Counts a connection's requests in hand: from the call until the response body is dropped.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    in_hand: Arc<AtomicUsize>,
}

/// One request in hand; dropped with its response body (or its future, if never answered).
struct InHand(Arc<AtomicUsize>);

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        self.in_hand.fetch_add(1, Ordering::AcqRel);
        TrackedFuture {
            inner: self.inner.call(req),
            guard: Some(InHand(self.in_hand.clone())),
        }
    }
}

pin_project! {
    /// The response future of [`Tracked`]: moves the request's [`InHand`] into the body.
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InHand>,
    }
}

impl<F> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(res.map(|r| {
            r.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            })
        }))
    }
}

/// A response body holding its request's [`InHand`].
struct TrackedBody {
    inner: Body,
    _guard: Option<InHand>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serve `service` (one clone per connection) on `listener` until `shutdown` resolves, with
/// the default [`ServeOptions`] (its own connection count) and a 30 s drain: see [`serve_with`].
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
    let opts = ServeOptions::default();
    serve_with(listener, service, shutdown, &opts, DrainControl::new(DRAIN)).await;
}

/// Serve `service` (one clone per connection) on `listener` until `shutdown` resolves. No
/// flush: the reference gateway runs one loop per worker thread, each on its own listener, and
/// flushes once when all have finished ([`Gateway::serve`](super::Gateway::serve) does both).
///
/// `opts` sets the connection discipline: header read and idle timeouts, header limits, and
/// the cap on open connections (shared by the clones of `opts`: pass one value to every loop).
///
/// `drain` tells every request about the shutdown (a [`Gateway`](super::Gateway)'s
/// [`drain_control`](super::Gateway::drain_control): its requests carry the matching
/// [`Drain`](crate::ext::Drain)). When `shutdown` resolves: stop accepting; idle connections
/// close at once (hyper's graceful shutdown), a connection whose request head is still arriving
/// is dropped, and a request whose body is still arriving is answered 503 at once; streams run
/// on until the drain period ends, then each ends with the in-band error event (its usage
/// record written as for any failed stream), and a request still waiting for its answer's
/// head is answered 503 `shutting_down` (with its record); returns as soon as no connection
/// is left.
pub async fn serve_with<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    opts: &ServeOptions,
    drain: DrainControl,
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
                // One count of the requests in hand: the idle clock and the shutdown read it.
                let in_flight = InFlight::default();
                let in_hand = in_flight.counter();
                let io = IdleIo::new(stream, opts.idle_timeout_value(), in_flight);
                let tracked = Tracked { inner: service.clone(), in_hand: in_hand.clone() };
                let svc = TowerToHyperService::new(tracked);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                let conn = graceful.watch(conn.into_owned());
                let stopping = drain.drain().wait(DrainPhase::Stopping);
                tokio::spawn(RunConnection::new(conn, in_hand, stopping, slot));
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    finish(graceful, &drain).await;
}

/// After the accept loop: wait for the connections, up to the drain period; then end the
/// streams still running in-band and give them a short grace to be written out.
async fn finish(graceful: GracefulShutdown, drain: &DrainControl) {
    drain.advance(DrainPhase::Stopping);
    let all_closed = graceful.shutdown();
    tokio::pin!(all_closed);
    tokio::select! {
        _ = &mut all_closed => return,
        _ = tokio::time::sleep(drain.period()) => {}
    }
    tracing::warn!(
        drain_ms = drain.period().as_millis() as u64,
        "requests still running at the end of the drain period; ending them"
    );
    drain.advance(DrainPhase::Over);
    tokio::select! {
        _ = &mut all_closed => {}
        _ = tokio::time::sleep(CLOSE_GRACE) => {
            tracing::warn!("requests still running after the drain period; closing");
        }
    }
}
