//! Issue 14, "Safe at the edge": hostile clients against the reference gateway (the binary, over
//! 127.0.0.1), each while a well-behaved client sends requests on its own keep-alive connection
//! and must see every one of them answered 200.
//!
//! The gateway runs with short limits so the suite is quick: header read timeout 1 s, body
//! read timeout 1 s, idle timeout 1.5 s, 48 connections, 16 KiB of headers, 50 headers, 4 MB
//! of request bodies in flight.
//!
//! - slowloris headers (one byte every 100 ms) are cut at the header timeout;
//! - a stalled upload is answered 408; a keyless one 401 before its body is read;
//! - uploads beyond the body budget are answered 503 at once;
//! - idle keep-alive connections (HTTP/1.1 and HTTP/2) are closed;
//! - a connection flood beyond the cap is refused (503, closed) and the good client is served;
//! - oversized and too many headers get 431;
//! - deep JSON gets 400, a 1 MB model name 400 with a short echo (401 without a key);
//! - thousands of distinct unknown model names leave `/metrics` and the RSS bounded;
//! - in process: a refusal before authentication is recorded with the model `unknown`;
//! - the admin listener (`[server] admin_listen`) has the same discipline: slowloris headers
//!   are cut at the header timeout while it keeps answering a good client's `/healthz`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::GatewayProcess;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::provider::mock::MockServer;

const KEY: &str = "sk-hostile-good-client-0001";
const GOOD_BODY: &str = r#"{"model":"fast","messages":[{"role":"user","content":"hi"}]}"#;
const MAX_CONNECTIONS: usize = 48;

fn config(upstream: &str) -> String {
    format!(
        r#"
[server]
workers = 2
metrics = "main"
access_log = false
header_read_timeout_ms = 1000
body_read_timeout_ms = 1000
idle_timeout_ms = 1500
max_connections = {MAX_CONNECTIONS}
max_header_bytes = 16384
max_headers = 50
max_buffered_body_bytes = 4000000

[auth]
enabled = true

[[auth.keys]]
name = "good"
sha256 = "{hash}"

[providers.up]
kind = "openai"
base_url = "{upstream}"

[models.fast]
targets = [{{ provider = "up", model = "ok" }}]
"#,
        hash = tollgate::auth::hash_key(KEY),
    )
}

/// The gateway process, its upstream and the well-behaved client.
struct Setup {
    gw: GatewayProcess,
    _up: MockServer,
    good: Good,
}

async fn setup() -> Setup {
    let up = MockServer::start().await.expect("mock upstream");
    let gw = GatewayProcess::start(&config(&up.base_url()));
    let good = Good::start(gw.addr);
    // The good client is under way before the hostile one starts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Setup { gw, _up: up, good }
}

/// A well-behaved client: one request after another on a pooled keep-alive connection (idle
/// connections dropped after 400 ms, before the gateway would close them), each must be 200.
struct Good {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(u64, Vec<String>)>,
}

impl Good {
    fn start(addr: SocketAddr) -> Good {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (s, count) = (stop.clone(), served.clone());
        let task = tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_millis(400))
                .pool_max_idle_per_host(1)
                .build_http::<Full<Bytes>>();
            let (mut ok, mut failures) = (0u64, Vec::new());
            while !s.load(Ordering::Relaxed) {
                let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
                    .header("authorization", format!("Bearer {KEY}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(GOOD_BODY.as_bytes())))
                    .unwrap();
                let res = tokio::time::timeout(Duration::from_secs(10), async {
                    let res = client.request(req).await.map_err(|e| format!("{e:?}"))?;
                    let status = res.status();
                    let body = res.into_body().collect().await.map_err(|e| e.to_string())?;
                    Ok::<_, String>((status, body.to_bytes()))
                })
                .await;
                match res {
                    Ok(Ok((status, _))) if status == 200 => {
                        ok += 1;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok((status, body))) => failures.push(format!("{status}: {body:?}")),
                    Ok(Err(e)) => failures.push(e),
                    Err(_) => failures.push("no answer in 10 s".to_owned()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failures)
        });
        Good { stop, served, task }
    }

    /// Stop (after at least 5 requests); every request it sent was answered 200.
    async fn finish(self) -> u64 {
        for _ in 0..100 {
            if self.served.load(Ordering::Relaxed) >= 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failures) = self.task.await.unwrap();
        assert!(
            failures.is_empty(),
            "the good client failed {} of {} requests: {:?}",
            failures.len(),
            ok + failures.len() as u64,
            &failures[..failures.len().min(5)]
        );
        assert!(ok >= 5, "the good client made only {ok} requests");
        ok
    }
}

/// Read until the peer closes (EOF or reset) or `within` passes; returns what was read and
/// whether it closed.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Read one HTTP/1.1 response (head and `content-length` body) or until the peer closes or
/// `within` passes.
async fn read_response(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return out;
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of the HTTP/1.1 response at the start of `bytes`.
fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The JSON body of the HTTP/1.1 response in `bytes` (`content-length` framed).
fn json_body(bytes: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(bytes);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A request head for the chat endpoint with `extra` header lines.
fn head(len: usize, extra: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         content-length: {len}\r\n{extra}\r\n"
    )
}

fn bearer() -> String {
    format!("authorization: Bearer {KEY}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_at_the_header_timeout() {
    let s = setup().await;
    let addr = s.gw.addr;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let start = Instant::now();
            c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nx-slow: ")
                .await
                .unwrap();
            // One byte every 100 ms, for up to 5 s: the header never ends.
            for _ in 0..50 {
                if c.write_all(b"a").await.is_err() {
                    return start.elapsed();
                }
                let (_, closed) = read_until_closed(&mut c, Duration::from_millis(100)).await;
                if closed {
                    return start.elapsed();
                }
            }
            panic!("a slowloris connection was still open after 5 s");
        }));
    }
    for t in tasks {
        let took = t.await.unwrap();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
            "closed after {took:?}, the header timeout is 1 s"
        );
    }
    s.good.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_gets_408_and_a_keyless_one_401_before_its_body() {
    let s = setup().await;
    let addr = s.gw.addr;
    // With a key: the body is read, stalls after 10 of 1000 bytes, 408 after ~1 s.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    c.write_all(format!("{}{{\"model\":\"f", head(1000, &bearer())).as_bytes())
        .await
        .unwrap();
    let (bytes, closed) = read_until_closed(&mut c, Duration::from_secs(4)).await;
    let took = start.elapsed();
    assert_eq!(
        status_of(&bytes),
        Some(408),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(closed, "the connection of a stalled upload stays open");
    assert!(took >= Duration::from_millis(900), "408 after {took:?}");
    assert_eq!(json_body(&bytes)["error"]["code"], "request_timeout");

    // Without a key, or with a wrong one: 15 MB announced, 5 bytes sent, 401 at once.
    for auth in ["", "authorization: Bearer sk-wrong-key-0000000000\r\n"] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        c.write_all(format!("{}{{\"mod", head(15_000_000, auth)).as_bytes())
            .await
            .unwrap();
        let bytes = read_response(&mut c, Duration::from_millis(700)).await;
        let took = start.elapsed();
        assert_eq!(
            status_of(&bytes),
            Some(401),
            "{auth:?}: {}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(took < Duration::from_millis(700), "401 after {took:?}");
        assert_eq!(json_body(&bytes)["error"]["code"], "invalid_api_key");
    }
    s.good.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_the_body_budget_get_503() {
    let s = setup().await;
    let addr = s.gw.addr;
    // Two stalled uploads reserve 3.8 of the 4 MB.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("{}{{\"model\":", head(1_900_000, &bearer())).as_bytes())
            .await
            .unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third, of 1 MB, is refused before its body is read.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    c.write_all(format!("{}{{\"model\":", head(1_000_000, &bearer())).as_bytes())
        .await
        .unwrap();
    let bytes = read_response(&mut c, Duration::from_millis(700)).await;
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(status_of(&bytes), Some(503), "{text}");
    assert!(start.elapsed() < Duration::from_millis(700));
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert_eq!(json_body(&bytes)["error"]["code"], "body_budget_exhausted");
    // The stalled ones end with 408, and give their reservation back.
    for mut c in held {
        let bytes = read_response(&mut c, Duration::from_secs(3)).await;
        assert_eq!(status_of(&bytes), Some(408));
    }
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("{}{{\"model\":", head(1_000_000, &bearer())).as_bytes())
        .await
        .unwrap();
    let bytes = read_response(&mut c, Duration::from_secs(3)).await;
    assert_eq!(
        status_of(&bytes),
        Some(408),
        "the budget was not given back"
    );
    s.good.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed() {
    let s = setup().await;
    let addr = s.gw.addr;
    // 30 HTTP/1.1 connections: one request each, then nothing.
    let mut tasks = Vec::new();
    for _ in 0..30 {
        tasks.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 512];
            let n = c.read(&mut buf).await.unwrap();
            assert_eq!(status_of(&buf[..n]), Some(200));
            let start = Instant::now();
            let (_, closed) = read_until_closed(&mut c, Duration::from_secs(4)).await;
            assert!(
                closed,
                "an idle keep-alive connection is still open after 4 s"
            );
            start.elapsed()
        }));
    }
    for t in tasks {
        let idle = t.await.unwrap();
        assert!(idle < Duration::from_millis(2500), "closed after {idle:?}");
    }
    // HTTP/2 (prior knowledge): one request, then idle; closed by the idle timeout (1.5 s).
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}/healthz"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("an idle HTTP/2 connection is still open after 5 s")
        .unwrap()
        .ok();
    let idle = start.elapsed();
    assert!(
        idle >= Duration::from_millis(1200) && idle < Duration::from_millis(3500),
        "HTTP/2 closed after {idle:?}, the idle timeout is 1.5 s"
    );
    s.good.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_beyond_the_cap_is_refused() {
    let s = setup().await;
    let addr = s.gw.addr;
    let flood = MAX_CONNECTIONS + 30;
    let mut conns = Vec::new();
    for _ in 0..flood {
        conns.push(TcpStream::connect(addr).await.unwrap());
    }
    // A refused connection is answered 503 and closed at once; an admitted one hears nothing
    // until its header timeout (1 s).
    let mut refused = 0;
    let checks = conns.into_iter().map(|mut c| {
        tokio::spawn(async move {
            let (bytes, closed) = read_until_closed(&mut c, Duration::from_millis(600)).await;
            if closed {
                assert_eq!(status_of(&bytes), Some(503), "{bytes:?}");
                assert!(String::from_utf8_lossy(&bytes).contains("retry-after: 1"));
            }
            (closed, c)
        })
    });
    let mut held = Vec::new();
    for t in checks.collect::<Vec<_>>() {
        let (closed, c) = t.await.unwrap();
        refused += usize::from(closed);
        held.push(c);
    }
    let admitted = flood - refused;
    // The good client holds one connection (sometimes two, while its pool replaces one).
    assert!(
        (MAX_CONNECTIONS - 3..MAX_CONNECTIONS).contains(&admitted),
        "admitted {admitted} of {flood} with a cap of {MAX_CONNECTIONS}"
    );
    // Once the flood is closed (header timeout), new connections are served again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let res = common::chat(
        addr,
        GOOD_BODY,
        &[("authorization", &format!("Bearer {KEY}"))],
    )
    .await;
    assert_eq!(res.status, 200);
    s.good.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_too_many_headers_get_431() {
    let s = setup().await;
    let addr = s.gw.addr;
    let big = format!("x-big: {}\r\n", "a".repeat(100_000));
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    for (what, extra) in [("100 KB header", big), ("200 headers", many)] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let req = format!("{}{GOOD_BODY}", head(GOOD_BODY.len(), &extra));
        // The gateway may answer and close before it has read everything.
        let _ = c.write_all(req.as_bytes()).await;
        let (bytes, closed) = read_until_closed(&mut c, Duration::from_secs(2)).await;
        assert_eq!(
            status_of(&bytes),
            Some(431),
            "{what}: {}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(closed, "{what}: the connection stays open");
    }
    s.good.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_and_megabyte_model_names_get_short_answers() {
    let s = setup().await;
    let addr = s.gw.addr;
    let auth = format!("Bearer {KEY}");
    // 10,000 levels of nesting: 400.
    let deep = format!(
        r#"{{"model":"fast","messages":[{}{}]}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let res = common::chat(addr, &deep, &[("authorization", &auth)]).await;
    assert_eq!(res.status, 400);
    let text = String::from_utf8(res.rest().await.to_vec()).unwrap();
    assert!(text.len() < 400, "{} bytes: {text}", text.len());

    // A 1 MB model name: 400 quoting a short prefix; without a key 401 (never read).
    let name = "m".repeat(1 << 20);
    let body = format!(r#"{{"model":"{name}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let res = common::chat(addr, &body, &[("authorization", &auth)]).await;
    assert_eq!(res.status, 400);
    let v = res.json().await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.len() < 300, "{} bytes echoed", msg.len());
    assert!(msg.contains("mmmm"), "{msg}");
    assert_eq!(v["error"]["param"], "model");
    let res = common::chat(addr, &body, &[]).await;
    assert_eq!(res.status, 401);
    let text = String::from_utf8(res.rest().await.to_vec()).unwrap();
    assert!(!text.contains("mmmm") && text.len() < 400, "{text}");
    s.good.finish().await;
}

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn metrics_text(addr: SocketAddr) -> String {
    let res = common::send(addr, "GET", "/metrics", &[], Bytes::new()).await;
    assert_eq!(res.status, 200);
    String::from_utf8(res.rest().await.to_vec()).unwrap()
}

/// `n` requests naming distinct unknown models (`tag`-`i`), 16 at a time on keep-alive
/// connections; each must get `want`.
async fn unknown_models(addr: SocketAddr, tag: &str, n: usize, key: bool, want: u16) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let per = n / 16;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let client = client.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let model = format!("{tag}-{w}-{i}-{}", "z".repeat(150));
                let body = format!(
                    r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
                );
                let mut req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
                    .header("content-type", "application/json");
                if key {
                    req = req.header("authorization", format!("Bearer {KEY}"));
                }
                let res = client
                    .request(req.body(Full::new(Bytes::from(body))).unwrap())
                    .await
                    .unwrap();
                assert_eq!(res.status(), want);
                let _ = res.into_body().collect().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_unknown_models_keep_metrics_and_memory_bounded() {
    let s = setup().await;
    let addr = s.gw.addr;
    let pid = s.gw.pid();
    // Warm up: the `unknown` series exist, the allocator has its arenas.
    unknown_models(addr, "warm", 320, true, 404).await;
    unknown_models(addr, "warm-nokey", 320, false, 401).await;
    let metrics_before = metrics_text(addr).await;
    let rss_before = rss_kib(pid);

    unknown_models(addr, "with-key", 3200, true, 404).await;
    unknown_models(addr, "no-key", 3200, false, 401).await;

    let metrics_after = metrics_text(addr).await;
    let rss_after = rss_kib(pid);
    eprintln!(
        "/metrics {} -> {} bytes; VmRSS {rss_before} -> {rss_after} KiB",
        metrics_before.len(),
        metrics_after.len()
    );
    assert!(!metrics_after.contains("with-key-") && !metrics_after.contains("no-key-"));
    assert!(
        metrics_after.contains(r#"model="unknown""#),
        "{metrics_after}"
    );
    // Only counts grew (a few more digits), no series.
    let lines = |t: &str| t.lines().count();
    assert_eq!(lines(&metrics_before), lines(&metrics_after));
    assert!(
        metrics_after.len() < metrics_before.len() + 2048,
        "/metrics grew from {} to {} bytes",
        metrics_before.len(),
        metrics_after.len()
    );
    // Refusals before authentication are counted.
    let missing = metrics_after
        .lines()
        .find(|l| l.starts_with("tollgate_auth_refused_total") && l.contains("missing_key"))
        .unwrap_or_else(|| panic!("no missing_key refusals in {metrics_after}"));
    let count: f64 = missing.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3520.0, "{missing}");
    assert!(
        rss_after < rss_before + 8 * 1024,
        "VmRSS grew from {rss_before} to {rss_after} KiB over 6,400 unknown models"
    );
    s.good.finish().await;
}

/// In process, where the records can be read: a keyless request is refused before its body is
/// read, and its record names no key and the model `unknown`; an authenticated request for an
/// unknown model is recorded `unknown` too, a served one by its name.
#[tokio::test]
async fn refusals_are_recorded_without_attacker_labels() {
    let up = MockServer::start().await.expect("mock upstream");
    let cfg = config(&up.base_url());
    let gw = common::Gateway::start(&cfg).await;
    let auth = format!("Bearer {KEY}");
    let body = r#"{"model":"attacker-chosen-name","messages":[{"role":"user","content":"hi"}]}"#;
    let res = common::chat(gw.addr, body, &[]).await;
    assert_eq!(res.status, 401);
    let res = common::chat(gw.addr, body, &[("authorization", &auth)]).await;
    assert_eq!(res.status, 404);
    let res = common::chat(gw.addr, GOOD_BODY, &[("authorization", &auth)]).await;
    assert_eq!(res.status, 200);
    let _ = res.rest().await;
    let recs = gw.records(3).await;
    assert_eq!(recs[0].status, 401);
    assert_eq!(recs[0].model, "unknown");
    assert_eq!(recs[0].key_id, None);
    assert_eq!(recs[1].status, 404);
    assert_eq!(recs[1].model, "unknown");
    assert!(recs[1].key_id.is_some());
    assert_eq!(recs[2].model, "fast");
}

/// The gateway started with an open-file limit of `nofile` (soft and hard), its stderr in a
/// file (returned).
fn start_with_nofile(cfg: &str, nofile: u64) -> (GatewayProcess, std::path::PathBuf) {
    use std::os::unix::process::CommandExt;
    static N: AtomicU64 = AtomicU64::new(0);
    let log = std::env::temp_dir().join(format!(
        "tollgate-hostile-{}-{}.log",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&log).unwrap();
    let gw = GatewayProcess::start_with(cfg, |cmd| {
        cmd.stderr(file);
        // SAFETY: setrlimit only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                use rustix::process::{Resource, Rlimit, setrlimit};
                let lim = Rlimit {
                    current: Some(nofile),
                    maximum: Some(nofile),
                };
                setrlimit(Resource::Nofile, lim).map_err(std::io::Error::from)
            });
        }
    });
    (gw, log)
}

/// `n` connections, each sending nothing: how many the gateway answered at once with 503 and
/// closed, how many it closed without a word, and the rest, still open.
async fn flood(addr: SocketAddr, n: usize) -> (usize, usize, Vec<TcpStream>) {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(TcpStream::connect(addr).await.unwrap());
    }
    let checks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let (bytes, closed) = read_until_closed(&mut c, Duration::from_millis(300)).await;
                (closed, status_of(&bytes), c)
            })
        })
        .collect();
    let (mut refused, mut silent) = (0, 0);
    let mut open = Vec::new();
    for t in checks {
        match t.await.unwrap() {
            (false, _, c) => open.push(c),
            (true, Some(503), _) => refused += 1,
            (true, _, _) => silent += 1,
        }
    }
    (refused, silent, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_stays_below_the_open_file_limit() {
    let up = MockServer::start().await.expect("mock upstream");
    // No max_connections: the default leaves room in 200 descriptors, (200 - 64) / 2 = 68.
    let cfg = config(&up.base_url())
        .replace(&format!("max_connections = {MAX_CONNECTIONS}\n"), "")
        .replace(
            "header_read_timeout_ms = 1000",
            "header_read_timeout_ms = 3000",
        );
    let (gw, log) = start_with_nofile(&cfg, 200);
    let good = Good::start(gw.addr);
    let (refused, silent, open) = flood(gw.addr, 150).await;
    let admitted = open.len();
    assert!(
        (60..=68).contains(&admitted) && refused == 150 - admitted,
        "admitted {admitted}, refused {refused}, closed without a 503 {silent}"
    );
    good.finish().await;
    drop(open);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("accept failed"), "{text}");
    assert!(
        text.contains("max_connections"),
        "the refusals were not logged: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_failures_are_logged_at_most_once_a_second() {
    let up = MockServer::start().await.expect("mock upstream");
    // A cap above the open-file limit: the accept loop runs out of descriptors.
    let cfg = config(&up.base_url())
        .replace(
            &format!("max_connections = {MAX_CONNECTIONS}"),
            "max_connections = 1000",
        )
        .replace(
            "header_read_timeout_ms = 1000",
            "header_read_timeout_ms = 3000",
        );
    let (gw, log) = start_with_nofile(&cfg, 200);
    let start = Instant::now();
    let (_, _, open) = flood(gw.addr, 300).await;
    tokio::time::sleep(Duration::from_millis(2000).saturating_sub(start.elapsed())).await;
    let held = start.elapsed();
    drop(open);
    // Served again once the descriptors are back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = common::chat(
        gw.addr,
        GOOD_BODY,
        &[("authorization", &format!("Bearer {KEY}"))],
    )
    .await;
    assert_eq!(res.status, 200);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.lines().filter(|l| l.contains("accept failed")).count();
    assert!(lines >= 1, "no accept failure logged: {text}");
    // One line a second (per worker), whatever the rate of failures.
    let most = 2 * (held.as_secs() as usize + 2);
    assert!(lines <= most, "{lines} lines in {held:?}: {text}");
}

/// The admin listener keeps the connection discipline of `[server]`: slowloris headers on it
/// are cut at the header timeout (1 s, not the 30 s default), while a good operator client
/// polling `/healthz` on it, and the good LLM client on the main listener, are answered
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_admin_listener_is_cut_and_it_keeps_answering() {
    let up = MockServer::start().await.expect("mock upstream");
    let cfg =
        config(&up.base_url()).replace("[server]\n", "[server]\nadmin_listen = \"127.0.0.1:0\"\n");
    let mut gw = GatewayProcess::start(&cfg);
    let line = gw.next_line();
    let admin: SocketAddr = line
        .trim()
        .strip_prefix("tollgate admin on http://")
        .unwrap_or_else(|| panic!("no admin address: {line:?}"))
        .parse()
        .unwrap();
    let good = Good::start(gw.addr);
    // The operator: one /healthz after another, each on a new connection, each answered 200.
    let stop = Arc::new(AtomicBool::new(false));
    let probe = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut ok = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let mut c = TcpStream::connect(admin).await.unwrap();
                c.write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let res = read_response(&mut c, Duration::from_secs(2)).await;
                assert_eq!(
                    status_of(&res),
                    Some(200),
                    "{}",
                    String::from_utf8_lossy(&res)
                );
                ok += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ok
        }
    });
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(admin).await.unwrap();
            let start = Instant::now();
            c.write_all(b"GET /metrics HTTP/1.1\r\nx-slow: ")
                .await
                .unwrap();
            // One byte every 100 ms, for up to 5 s: the header never ends.
            for _ in 0..50 {
                if c.write_all(b"a").await.is_err() {
                    return start.elapsed();
                }
                let (_, closed) = read_until_closed(&mut c, Duration::from_millis(100)).await;
                if closed {
                    return start.elapsed();
                }
            }
            panic!("a slowloris connection to the admin listener was still open after 5 s");
        }));
    }
    for t in tasks {
        let took = t.await.unwrap();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
            "admin connection closed after {took:?}, the header timeout is 1 s"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let probes = probe.await.unwrap();
    assert!(
        probes >= 10,
        "the admin listener answered only {probes} probes"
    );
    good.finish().await;
}
