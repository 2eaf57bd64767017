//! Shared integration-test harness: a scripted upstream on 127.0.0.1:0 driven step by step by the
//! test, the library's gateway (`tollgate::gateway`) served in-process on 127.0.0.1:0, the
//! reference binary as a process, and a small streaming HTTP client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tollgate::usage::UsageRecord;

/// One request the scripted upstream received, with the handle to answer it.
pub struct Exchange {
    pub method: http::Method,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    respond: Option<oneshot::Sender<Response<StreamBody<ChunkStream>>>>,
}

type ChunkStream = futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>;

/// The body sender of a streamed answer; `closed()` resolves when the gateway dropped the
/// upstream response (the cancellation proof).
pub struct BodyTx(mpsc::Sender<Result<Frame<Bytes>, Infallible>>);

impl BodyTx {
    pub async fn send(&self, data: impl Into<Bytes>) -> bool {
        self.0.send(Ok(Frame::data(data.into()))).await.is_ok()
    }
    pub async fn closed(&self) {
        self.0.closed().await
    }
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

impl Exchange {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("upstream got JSON")
    }

    /// Answer with a whole body.
    pub fn respond(mut self, status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) {
        let body: Bytes = body.into();
        let s: ChunkStream = Box::pin(futures_util::stream::iter(vec![Ok(Frame::data(body))]));
        let mut res = Response::new(StreamBody::new(s));
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            res.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let _ = self.respond.take().unwrap().send(res);
    }

    /// Answer 200 with `headers` and a body sent frame by frame through the returned sender
    /// (audio, or anything that is not an event stream).
    pub fn respond_frames(mut self, headers: &[(&str, &str)]) -> BodyTx {
        let (tx, rx) = mpsc::channel(16);
        let s: ChunkStream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|x| (x, rx))
        }));
        let mut res = Response::new(StreamBody::new(s));
        for (k, v) in headers {
            res.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let _ = self.respond.take().unwrap().send(res);
        BodyTx(tx)
    }

    /// Answer 200 `text/event-stream` and return the sender for its events.
    pub fn respond_stream(mut self) -> BodyTx {
        let (tx, rx) = mpsc::channel(16);
        let s: ChunkStream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|x| (x, rx))
        }));
        let mut res = Response::new(StreamBody::new(s));
        res.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        let _ = self.respond.take().unwrap().send(res);
        BodyTx(tx)
    }
}

/// A scripted upstream: every request is handed to the test, which answers it.
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    rx: mpsc::Receiver<Exchange>,
}

impl ScriptedUpstream {
    pub async fn start() -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel::<Exchange>(64);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let (rtx, rrx) = oneshot::channel();
                            let ex = Exchange {
                                method: parts.method,
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body,
                                respond: Some(rtx),
                            };
                            if tx.send(ex).await.is_err() {
                                return Err("test gone");
                            }
                            rrx.await.map_err(|_| "no answer")
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        ScriptedUpstream { addr, rx }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The next request (fails the test after 10 s).
    pub async fn next(&mut self) -> Exchange {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("upstream got no request in 10 s")
            .expect("upstream closed")
    }

    /// No request arrives within `d`.
    pub async fn assert_idle(&mut self, d: Duration) {
        if let Ok(Some(ex)) = tokio::time::timeout(d, self.rx.recv()).await {
            panic!("unexpected upstream request to {}", ex.path);
        }
    }
}

/// The library's gateway served in-process.
pub struct Gateway {
    pub addr: SocketAddr,
    pub records: Arc<Mutex<Vec<UsageRecord>>>,
    pub gateway: tollgate::gateway::Gateway,
    pub reloader: Arc<tollgate::gateway::Reloader>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Gateway {
    pub async fn start(config_toml: &str) -> Gateway {
        Self::start_with(config_toml, |b| b).await
    }

    /// Start with `build` adding to the builder (a metrics callback, a sink).
    pub async fn start_with(
        config_toml: &str,
        build: impl FnOnce(
            tollgate::gateway::GatewayBuilder<'_>,
        ) -> tollgate::gateway::GatewayBuilder<'_>,
    ) -> Gateway {
        let cfg = tollgate::config::Config::parse(config_toml, "test.toml").expect("config");
        let records: Arc<Mutex<Vec<UsageRecord>>> = Arc::default();
        let r = records.clone();
        let builder =
            tollgate::gateway::Gateway::builder(&cfg).sink(Arc::new(move |rec: &UsageRecord| {
                r.lock().unwrap().push(rec.clone())
            }));
        let (gateway, reloader) = build(builder).build().await.expect("gateway");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let g = gateway.clone();
        tokio::spawn(async move {
            g.serve(listener, async move {
                let _ = rx.await;
            })
            .await
        });
        Gateway {
            addr,
            records,
            gateway,
            reloader: Arc::new(reloader),
            shutdown: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Wait until `n` records exist (they are written when bodies end), then return them.
    pub async fn records(&self, n: usize) -> Vec<UsageRecord> {
        for _ in 0..200 {
            {
                let r = self.records.lock().unwrap();
                if r.len() >= n {
                    return r.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = self.records.lock().unwrap();
        panic!("expected {n} usage records, have {}: {:?}", r.len(), *r);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A response being read frame by frame.
pub struct Streaming {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    body: Incoming,
    _conn: tokio::task::JoinHandle<()>,
}

impl Streaming {
    /// A response read by a test's own client (`conn` drives its connection).
    pub fn from_parts(
        status: StatusCode,
        headers: http::HeaderMap,
        body: Incoming,
        conn: tokio::task::JoinHandle<()>,
    ) -> Streaming {
        Streaming {
            status,
            headers,
            body,
            _conn: conn,
        }
    }

    /// The next data frame (None at the end), failing the test after 10 s.
    pub async fn next_data(&mut self) -> Option<Bytes> {
        loop {
            let f = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("no frame in 10 s")?;
            match f.expect("body error").into_data() {
                Ok(d) => return Some(d),
                Err(_) => continue,
            }
        }
    }

    pub async fn rest(mut self) -> Bytes {
        let mut out = Vec::new();
        while let Some(d) = self.next_data().await {
            out.extend_from_slice(&d);
        }
        Bytes::from(out)
    }

    pub async fn json(self) -> serde_json::Value {
        let b = self.rest().await;
        serde_json::from_slice(&b)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&b)))
    }
}

/// Send one request on a fresh HTTP/1.1 connection; returns once the head arrived.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Streaming {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    let body: Bytes = body.into();
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = tokio::time::timeout(
        Duration::from_secs(15),
        sender.send_request(req.body(Full::new(body)).unwrap()),
    )
    .await
    .expect("no response head in 15 s")
    .unwrap();
    let (parts, body) = res.into_parts();
    Streaming {
        status: parts.status,
        headers: parts.headers,
        body,
        _conn: conn,
    }
}

/// POST JSON to the gateway's chat endpoint.
pub async fn chat(addr: SocketAddr, body: &str, headers: &[(&str, &str)]) -> Streaming {
    send(
        addr,
        "POST",
        "/v1/chat/completions",
        headers,
        body.to_owned(),
    )
    .await
}

/// A gateway process (the reference binary built by `cargo test`), killed on drop.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub config: std::path::PathBuf,
    /// Its stderr, when started with [`GatewayProcess::start_logged`].
    pub log: Option<std::path::PathBuf>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl GatewayProcess {
    /// Start `target/<profile>/examples/gateway --config <file> --listen 127.0.0.1:0` with
    /// `config_toml` written to a fresh temp file; returns once it prints its address.
    pub fn start(config_toml: &str) -> GatewayProcess {
        Self::spawn(config_toml, "warn", false, |_| {})
    }

    /// [`start`](Self::start), with `configure` applied to the command last (environment,
    /// working directory, where stderr goes).
    pub fn start_with(
        config_toml: &str,
        configure: impl FnOnce(&mut std::process::Command),
    ) -> GatewayProcess {
        Self::spawn(config_toml, "warn", false, configure)
    }

    /// [`start`](Self::start) with `RUST_LOG=rust_log` and stderr written to a file
    /// ([`log_text`](Self::log_text) reads it).
    pub fn start_logged(config_toml: &str, rust_log: &str) -> GatewayProcess {
        Self::spawn(config_toml, rust_log, true, |_| {})
    }

    fn spawn(
        config_toml: &str,
        rust_log: &str,
        logged: bool,
        configure: impl FnOnce(&mut std::process::Command),
    ) -> GatewayProcess {
        use std::io::BufRead;
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let exe = std::env::current_exe().unwrap();
        let bin = exe
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("examples")
            .join("gateway");
        assert!(bin.exists(), "{} is not built", bin.display());
        let dir = std::env::temp_dir().join(format!(
            "tollgate-gw-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("gateway.toml");
        std::fs::write(&config, config_toml).unwrap();
        let log = logged.then(|| dir.join("stderr.log"));
        let stderr = match &log {
            Some(p) => std::process::Stdio::from(std::fs::File::create(p).unwrap()),
            None => std::process::Stdio::inherit(),
        };
        let mut cmd = std::process::Command::new(&bin);
        cmd.args([
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", rust_log)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr);
        configure(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("gateway did not start: {line:?}"));
        GatewayProcess {
            child,
            addr,
            config,
            log,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the gateway prints on stdout (after its address line).
    pub fn next_line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    /// Everything it logged so far (started with [`start_logged`](Self::start_logged)).
    pub fn log_text(&self) -> String {
        let p = self.log.as_ref().expect("started with start_logged");
        String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned()
    }

    /// Send SIGHUP (reload the config file).
    pub fn sighup(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP failed");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a redis-server answers on `url`'s host:port (`redis://host:port`). When it does not,
/// the caller skips with a notice, unless `TOLLGATE_REQUIRE_REDIS` is set (CI), which fails.
pub fn redis_available(url: &str) -> bool {
    let hostport = url.trim_start_matches("redis://").trim_end_matches('/');
    let ok = std::net::TcpStream::connect_timeout(
        &hostport
            .parse()
            .unwrap_or_else(|_| "127.0.0.1:6379".parse().unwrap()),
        Duration::from_millis(300),
    )
    .is_ok();
    if !ok {
        assert!(
            std::env::var("TOLLGATE_REQUIRE_REDIS").is_err(),
            "TOLLGATE_REQUIRE_REDIS is set but no redis-server answers at {url}"
        );
        eprintln!("SKIPPED: redis-server not reachable at {url}");
    }
    ok
}
