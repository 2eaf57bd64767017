//! Connection discipline for the accept loop: [`ServeOptions`] (timeouts, header limits, the
//! connection cap), the idle clock on each connection, the file-descriptor limit, and the
//! rate-limited "accept failed" line.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, ConfigError};

/// Default: a request's headers must arrive within 30 s (hyper's default; nginx: 60 s).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default: a connection with nothing to do for 75 s is closed (nginx `keepalive_timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default cap on a request's head (request line and headers): 64 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
/// Default cap on the number of headers of an HTTP/1.1 request (hyper's default).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default cap on concurrent HTTP/2 streams per connection (nginx: 128).
pub const DEFAULT_H2_MAX_STREAMS: u32 = 128;
/// Default cap on open client connections, before the file-descriptor limit lowers it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
/// Cap on open connections of the admin listener (`[server] admin_listen`): operators' probes
/// and scrapers need few, and a flood there must not take descriptors from the main listener.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// Descriptors kept out of the connection budget (listeners, log and record files, DNS).
const NOFILE_RESERVE: u64 = 64;
/// The answer to a connection over the cap (then it is closed).
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
retry-after: 1\r\ncontent-length: 0\r\n\r\n";

/// How the accept loop treats connections. Clones share one connection count, so a single
/// `ServeOptions` given to every worker's loop caps the process's total.
///
/// ```
/// use std::time::Duration;
/// use tollgate::gateway::ServeOptions;
///
/// let opts = ServeOptions::new()
///     .header_read_timeout(Duration::from_secs(10))
///     .idle_timeout(Duration::from_secs(60))
///     .max_connections(4096);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct ServeOptions {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_header_bytes: usize,
    max_headers: usize,
    h2_max_streams: u32,
    max_connections: usize,
    slots: Arc<Semaphore>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            h2_max_streams: DEFAULT_H2_MAX_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            slots: Arc::new(Semaphore::new(DEFAULT_MAX_CONNECTIONS)),
        }
    }
}

impl ServeOptions {
    /// The defaults: header read timeout 30 s, idle timeout 75 s, 64 KiB of headers, 100
    /// headers, 128 HTTP/2 streams per connection, 8192 connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// From `[server]`; the connection cap defaults to [`default_max_connections`].
    pub fn from_config(cfg: &Config) -> Result<Self, ConfigError> {
        let s = &cfg.server;
        let ms = |field: &str, v: Option<u64>, default: Duration| match v {
            Some(0) => Err(ConfigError::field(
                &cfg.source,
                &format!("server.{field}"),
                "must be greater than 0",
            )),
            Some(n) => Ok(Duration::from_millis(n)),
            None => Ok(default),
        };
        let mut o = ServeOptions::new()
            .header_read_timeout(ms(
                "header_read_timeout_ms",
                s.header_read_timeout_ms,
                DEFAULT_HEADER_READ_TIMEOUT,
            )?)
            .idle_timeout(ms(
                "idle_timeout_ms",
                s.idle_timeout_ms,
                DEFAULT_IDLE_TIMEOUT,
            )?)
            .max_connections(s.max_connections.unwrap_or_else(default_max_connections));
        if let Some(n) = s.max_header_bytes {
            o = o.max_header_bytes(n);
        }
        if let Some(n) = s.max_headers {
            o = o.max_headers(n);
        }
        if let Some(n) = s.http2_max_concurrent_streams {
            o = o.http2_max_concurrent_streams(n);
        }
        Ok(o)
    }

    /// A request's head must be read within `d`, else the connection is closed. On HTTP/1.1
    /// the clock also runs while a kept-alive connection waits for its next request.
    pub fn header_read_timeout(mut self, d: Duration) -> Self {
        self.header_read_timeout = d;
        self
    }

    /// A connection with no request in flight and no byte moving for `d` is closed.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Cap on a request's head in bytes (HTTP/1.1 read buffer, at least 8 KiB; HTTP/2 header
    /// list); larger heads get 431 or a closed connection.
    pub fn max_header_bytes(mut self, n: usize) -> Self {
        self.max_header_bytes = n.max(8192);
        self
    }

    /// Cap on the number of headers of an HTTP/1.1 request; more get 431.
    pub fn max_headers(mut self, n: usize) -> Self {
        self.max_headers = n.max(1);
        self
    }

    /// Cap on concurrent streams of one HTTP/2 connection.
    pub fn http2_max_concurrent_streams(mut self, n: u32) -> Self {
        self.h2_max_streams = n.max(1);
        self
    }

    /// Cap on open client connections (shared by this value's clones); one over it gets a
    /// `503` with `connection: close` and is closed at once.
    pub fn max_connections(mut self, n: usize) -> Self {
        let n = n.clamp(1, Semaphore::MAX_PERMITS);
        self.max_connections = n;
        self.slots = Arc::new(Semaphore::new(n));
        self
    }

    /// The same discipline (timeouts, header limits) for another listener, with its own
    /// connection count capped at `max_connections` (at most this value's cap): e.g. the admin
    /// listener, whose connections neither count against the main listener's cap nor get
    /// in before a full main listener's clients.
    pub fn with_own_connections(&self, max_connections: usize) -> Self {
        self.clone()
            .max_connections(max_connections.min(self.max_connections))
    }

    /// The connection cap.
    pub fn connection_limit(&self) -> usize {
        self.max_connections
    }

    /// Connections open now (counted by this value and its clones).
    pub fn open_connections(&self) -> usize {
        self.max_connections - self.slots.available_permits()
    }

    /// hyper's default cap on the headers of an HTTP/1.1 request.
    const HYPER_MAX_HEADERS: usize = 100;

    /// The hyper connection builder these options describe.
    pub(super) fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(self.max_header_bytes);
        // hyper's own limit is 100 headers, kept in a stack array; setting any limit makes it
        // allocate the array per request (about 1,000 instructions), so only a different
        // limit is set.
        if self.max_headers != Self::HYPER_MAX_HEADERS {
            b.http1().max_headers(self.max_headers);
        }
        b.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(self.h2_max_streams);
        b
    }

    /// A slot for a new connection, or `None`: then the connection is answered 503 and closed.
    pub(super) fn admit(&self, stream: &TcpStream) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                // Best effort: a full socket buffer just gets the close.
                let _ = stream.try_write(REFUSAL);
                refused_log();
                None
            }
        }
    }

    pub(super) fn idle_timeout_value(&self) -> Duration {
        self.idle_timeout
    }
}

/// The default connection cap: 8192, or less when the open-file limit (raised by
/// [`raise_nofile_limit`]) would not hold it: half of what the limit leaves after a reserve of
/// 64, so upstream connections and files have the other half.
pub fn default_max_connections() -> usize {
    match nofile_limit() {
        Some(n) => {
            let room = n.saturating_sub(NOFILE_RESERVE) / 2;
            DEFAULT_MAX_CONNECTIONS.min(usize::try_from(room).unwrap_or(usize::MAX).max(1))
        }
        None => DEFAULT_MAX_CONNECTIONS,
    }
}

/// Raise the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit; returns the soft
/// limit in force afterwards (`None` where there is no such limit, or it is unlimited).
#[cfg(unix)]
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum || (lim.current.is_some() && lim.maximum.is_none()) {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return lim.maximum;
        }
    }
    lim.current
}

/// Raise the soft open-file limit (no such limit on this platform).
#[cfg(not(unix))]
pub fn raise_nofile_limit() -> Option<u64> {
    None
}

#[cfg(unix)]
fn nofile_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(not(unix))]
fn nofile_limit() -> Option<u64> {
    None
}

/// At most one line per second for a repeated event; says how many were not logged.
#[derive(Debug)]
pub(super) struct LogLimit {
    last: Option<Instant>,
    quiet: u64,
}

impl LogLimit {
    pub(super) const fn new() -> Self {
        LogLimit {
            last: None,
            quiet: 0,
        }
    }

    /// `Some(n)`: log now, `n` events were silenced since the last line.
    pub(super) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.quiet += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.quiet))
    }
}

/// Log an accept error (at most once a second) and say how long to wait before the next
/// accept: longer when out of descriptors, so the loop does not spin.
pub(super) fn accept_failed(log: &mut LogLimit, e: &io::Error) -> Duration {
    if let Some(silenced) = log.allow() {
        tracing::warn!(error = %e, silenced, "accept failed");
    }
    let out_of_fds = matches!(e.raw_os_error(), Some(code) if is_fd_exhaustion(code));
    Duration::from_millis(if out_of_fds { 50 } else { 5 })
}

#[cfg(unix)]
fn is_fd_exhaustion(code: i32) -> bool {
    use rustix::io::Errno;
    code == Errno::MFILE.raw_os_error() || code == Errno::NFILE.raw_os_error()
}

#[cfg(not(unix))]
fn is_fd_exhaustion(_code: i32) -> bool {
    false
}

fn refused_log() {
    static LOG: std::sync::Mutex<LogLimit> = std::sync::Mutex::new(LogLimit::new());
    let allowed = LOG.lock().map(|mut l| l.allow()).unwrap_or(None);
    if let Some(silenced) = allowed {
        tracing::warn!(
            silenced,
            "connection refused: at [server] max_connections; raise it or add capacity"
        );
    }
}

/// Requests of one connection in hand (from the call until the response body is dropped):
/// the idle clock does not run while one is, so a long silent stream is not cut as idle.
#[derive(Debug, Clone, Default)]
pub(super) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// The shared count, for the service wrapper that keeps it.
    pub(super) fn counter(&self) -> Arc<AtomicUsize> {
        self.0.clone()
    }
}

/// A client socket with an idle clock: once no byte has moved for the idle timeout and no
/// request is in flight, reads end (EOF) and the connection closes.
pub(super) struct IdleIo {
    stream: TcpStream,
    idle: Duration,
    last: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
    in_flight: InFlight,
}

impl IdleIo {
    pub(super) fn new(stream: TcpStream, idle: Duration, in_flight: InFlight) -> Self {
        let now = Instant::now();
        IdleIo {
            stream,
            idle,
            last: now,
            sleep: Box::pin(tokio::time::sleep(idle)),
            in_flight,
        }
    }

    /// Whether the idle timeout has passed; if not, the timer is armed for when it might.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last + self.idle;
            if Instant::now() >= due && self.in_flight.0.load(Ordering::Relaxed) == 0 {
                return true;
            }
            let next = if Instant::now() >= due {
                Instant::now() + self.idle
            } else {
                due
            };
            self.sleep.as_mut().reset(next.into());
        }
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.stream).poll_write(cx, buf))?;
        self.last = Instant::now();
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, bufs))?;
        self.last = Instant::now();
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limit_lets_one_line_a_second_through() {
        let mut l = LogLimit::new();
        assert_eq!(l.allow(), Some(0));
        for _ in 0..300 {
            assert_eq!(l.allow(), None);
        }
        l.last = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(l.allow(), Some(300));
    }

    #[test]
    fn clones_share_the_connection_count() {
        let a = ServeOptions::new().max_connections(2);
        let b = a.clone();
        let p = a.slots.clone().try_acquire_owned().unwrap();
        assert_eq!(b.open_connections(), 1);
        drop(p);
        assert_eq!(b.open_connections(), 0);
    }
}
