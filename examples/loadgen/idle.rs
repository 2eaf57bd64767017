//! `--idle-streams N`: what an idle open stream costs (issue 12 "Scale", issue 14 acceptance 7).
//!
//! For each of tollgate prod (virtual key, rpm limit, JSONL usage file), tollgate lean (auth off,
//! no usage file), the bare hyper proxy (`--serve-proxy`, the floor: hyper server + hyper-util's
//! pooled client, no layers) and nginx (`proxy_buffering off`), each in front of its own fresh *idle
//! upstream* (this binary with `--serve-idle-mock`: every stream gets the SSE head and its first
//! event at once, then nothing until the harness says `finish` on the child's stdin):
//! 1. warm up (json requests, 20 streams opened and finished);
//! 2. p50 of a json loop at concurrency 1 with no stream open;
//! 3. VmRSS of the process in between, then N streams opened (one keep-alive connection each,
//!    the first event read, then idle), VmRSS again: (after − before) / N is the cost of one
//!    idle open stream;
//! 4. the same json loop while the N streams are open;
//! 5. `finish`: every stream must end cleanly (`data: [DONE]` and a clean body end), counted.
//!
//! `LOADGEN_IDLE_TARGETS=lean,nginx` (names or parts of them) measures only those targets.
//!
//! The gateway holds two sockets per stream (client and upstream), so N is capped at half the
//! open-file limit this process has (the children inherit it), less headroom.

use std::convert::Infallible;

use futures_util::stream;
use http_body_util::StreamBody;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, Incoming};
use tokio::sync::watch;

use super::vs_nginx::{KEY, proc_field, start_nginx, tollgate_config, wait_listening};
use super::*;

type HeldBody = BoxBody<Bytes, Infallible>;

const FIRST: &str = "data: {\"id\":\"chatcmpl-idle\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"ok\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n";
const FINISH: &str = "data: {\"id\":\"chatcmpl-idle\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"ok\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const USAGE_CHUNK: &str = "data: {\"id\":\"chatcmpl-idle\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"ok\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":1,\"total_tokens\":13}}\n\n";
const DONE: &str = "data: [DONE]\n\n";
const JSON: &str = "{\"id\":\"chatcmpl-idle\",\"object\":\"chat.completion\",\"created\":0,\"model\":\"ok\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello there!\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}";

// ---------------------------------------------------------------------------------------------
// The idle upstream (child)
// ---------------------------------------------------------------------------------------------

/// Serve the idle upstream on 127.0.0.1:0, print the port; each `finish` line on stdin ends
/// the streams opened before it; runs until stdin closes.
pub(super) async fn serve_mock() -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("idle mock: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let (gate, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                // Out of files, say: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = sock.set_nodelay(true);
            let rx = rx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| answer(req, rx.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    println!("{port}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.trim() == "finish" {
                gate.send_modify(|g| *g += 1);
            }
            line.clear();
        }
    })
    .await
    .map_err(|e| e.to_string())
}

/// A json answer, or a stream: the first event now, the rest once the gate has moved on.
async fn answer(
    req: hyper::Request<Incoming>,
    mut gate: watch::Receiver<u64>,
) -> Result<hyper::Response<HeldBody>, Infallible> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let has = |s: &str| memchr::memmem::find(&body, s.as_bytes()).is_some();
    let text = |ct: &'static str, b: HeldBody| {
        let mut res = hyper::Response::new(b);
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ct),
        );
        Ok(res)
    };
    if !has("\"stream\":true") {
        return text(
            "application/json",
            Full::new(Bytes::from_static(JSON.as_bytes())).boxed(),
        );
    }
    let rest = if has("include_usage") {
        [FINISH, USAGE_CHUNK, DONE].concat()
    } else {
        [FINISH, DONE].concat()
    };
    let generation = *gate.borrow_and_update();
    let frames = stream::unfold(0u8, move |step| {
        let mut gate = gate.clone();
        let rest = rest.clone();
        async move {
            match step {
                0 => Some((Bytes::from_static(FIRST.as_bytes()), 1)),
                1 => {
                    // A closed gate (the harness went away) ends the stream too.
                    let _ = gate.wait_for(|g| *g > generation).await;
                    Some((Bytes::from(rest), 2))
                }
                _ => None,
            }
        }
    });
    let body = StreamBody::new(futures_util::StreamExt::map(frames, |b| {
        Ok::<_, Infallible>(Frame::data(b))
    }));
    text("text/event-stream", BodyExt::boxed(body))
}

// ---------------------------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------------------------

/// How one stream went, counted as it goes.
#[derive(Default)]
struct Counts {
    opened: AtomicUsize,
    failed: AtomicUsize,
    first_error: std::sync::Mutex<Option<String>>,
}

/// Open one stream, read its first event, hold it until `finish`, then read it to its end.
async fn one_stream(
    addr: SocketAddr,
    key: Option<Arc<str>>,
    body: Bytes,
    permit: tokio::sync::OwnedSemaphorePermit,
    counts: Arc<Counts>,
) -> Result<(), String> {
    let result = async {
        let mut conn = Conn::open_as(addr, key.as_deref()).await?;
        let req = conn.post(&body).await?;
        let res = conn
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("status {}", res.status()));
        }
        let mut body = res.into_body();
        let mut seen = Vec::new();
        while !seen.starts_with(b"data:") {
            match body.frame().await {
                Some(Ok(f)) => seen.extend_from_slice(f.data_ref().map_or(&[][..], |d| &d[..])),
                Some(Err(e)) => return Err(format!("first event: {e}")),
                None => return Err("ended before its first event".to_owned()),
            }
        }
        counts.opened.fetch_add(1, Ordering::Relaxed);
        drop(permit);
        while let Some(f) = body.frame().await {
            let f = f.map_err(|e| format!("body: {e}"))?;
            if let Some(d) = f.data_ref() {
                seen.extend_from_slice(d);
            }
        }
        drop(conn);
        if seen.ends_with(DONE.as_bytes()) {
            Ok(())
        } else {
            Err("ended without data: [DONE]".to_owned())
        }
    }
    .await;
    if let Err(e) = &result {
        counts.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = counts.first_error.lock() {
            first.get_or_insert_with(|| e.clone());
        }
    }
    result
}

/// Open `n` streams, 64 at a time; returns once all are open (or failed), within `cap`.
async fn open_streams(
    addr: SocketAddr,
    key: Option<Arc<str>>,
    n: usize,
    cap: Duration,
) -> Result<(tokio::task::JoinSet<Result<(), String>>, Duration), String> {
    let body = Bytes::from(String::from_utf8_lossy(&body_for("ok", true)).replace(
        r#""stream":true"#,
        r#""stream":true,"stream_options":{"include_usage":true}"#,
    ));
    let counts = Arc::new(Counts::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for _ in 0..n {
        let permit = tokio::time::timeout_at((t0 + cap).into(), gate.clone().acquire_owned())
            .await
            .map_err(|_| format!("{addr}: streams not open within {cap:?}"))?
            .map_err(|e| e.to_string())?;
        let (key, body, counts) = (key.clone(), body.clone(), counts.clone());
        tasks.spawn(one_stream(addr, key, body, permit, counts));
    }
    loop {
        let (opened, failed) = (
            counts.opened.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
        );
        if failed > 0 {
            let first = counts
                .first_error
                .lock()
                .map(|f| f.clone())
                .unwrap_or_default();
            return Err(format!(
                "{addr}: {failed} streams failed to open ({opened} open); first: {}",
                first.unwrap_or_default()
            ));
        }
        if opened == n {
            return Ok((tasks, t0.elapsed()));
        }
        if t0.elapsed() > cap {
            return Err(format!(
                "{addr}: {opened} of {n} streams open after {cap:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tell the idle upstream to end the streams it holds.
fn finish(mock: &mut Proc) -> Result<(), String> {
    let stdin = mock.child.stdin.as_mut().ok_or("idle mock: no stdin")?;
    stdin
        .write_all(b"finish\n")
        .and_then(|()| stdin.flush())
        .map_err(|e| format!("idle mock: {e}"))
}

/// Wait for every stream to end; (clean ends, failures, first failure).
async fn drain(
    mut tasks: tokio::task::JoinSet<Result<(), String>>,
    cap: Duration,
) -> (usize, usize, Option<String>) {
    let (mut clean, mut failed, mut first) = (0, 0, None);
    let deadline = tokio::time::Instant::now() + cap;
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        match r {
            Ok(Ok(())) => clean += 1,
            Ok(Err(e)) => {
                failed += 1;
                first.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first.get_or_insert(e.to_string());
            }
        }
    }
    if !tasks.is_empty() {
        failed += tasks.len();
        first.get_or_insert(format!("{} streams still open after {cap:?}", tasks.len()));
    }
    (clean, failed, first)
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// What one target did.
struct Outcome {
    name: &'static str,
    streams: usize,
    open_time: Duration,
    rss_before_kib: u64,
    rss_open_kib: u64,
    fds_open: usize,
    p50_before: Duration,
    p50_with: Duration,
    p50_after: Duration,
    clean: usize,
    failed: usize,
}

impl Outcome {
    fn bytes_per_stream(&self) -> f64 {
        (self.rss_open_kib.saturating_sub(self.rss_before_kib) * 1024) as f64
            / self.streams.max(1) as f64
    }
}

/// The soft open-file limit of this process (the children inherit it).
fn nofile() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("Max open files"))?;
            l.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(1024)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// p50 of a json loop at concurrency 1 for `secs`.
async fn p50(addr: SocketAddr, key: Option<Arc<str>>, secs: Duration) -> Result<Duration, String> {
    let r = drive_as(addr, key, body_for("ok", false), usize::MAX / 2, 1, secs).await?;
    if r.errors > 0 {
        return Err(format!("{addr}: {} json requests failed", r.errors));
    }
    Ok(r.p(0.50))
}

pub(super) async fn run(args: &Args, asked: usize) -> Result<(), String> {
    let limit = nofile();
    let n = asked.min(limit.saturating_sub(64) / 2).max(1);
    if n < asked {
        eprintln!(
            "open-file limit {limit}: the process in between holds two sockets per stream, so {n} streams instead of {asked} (raise `ulimit -n`)"
        );
    }
    let dir = std::env::temp_dir().join(format!("tollgate-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut outcomes = Vec::new();
    let mut result = Ok(());
    // `LOADGEN_IDLE_TARGETS=lean,nginx` (names or parts of them) measures only those.
    let only = std::env::var("LOADGEN_IDLE_TARGETS").unwrap_or_default();
    let picked = |name: &str| only.is_empty() || only.split(',').any(|p| name.contains(p.trim()));
    for name in ["tollgate prod", "tollgate lean", "bare proxy", "nginx"] {
        if !picked(name) {
            continue;
        }
        eprintln!("- {name}: {n} idle streams");
        match measure(args, &dir, name, n).await {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                result = Err(format!("{name}: {e}"));
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    report(args, limit, &outcomes);
    result
}

/// Start `name` in front of a fresh idle upstream and take its measures.
async fn measure(args: &Args, dir: &Path, name: &'static str, n: usize) -> Result<Outcome, String> {
    let (mut mock, mock_port) = start_child("idle mock", None, &["--serve-idle-mock".to_owned()])?;
    let (proc, addr, key) = start_target(args, dir, name, mock_port, n)?;
    let pid = proc.pid();
    let secs = Duration::from_secs(args.cell_secs.max(1));
    let cap = Duration::from_secs(30);
    // Warm up: json, and a few streams opened and finished.
    drive_as(addr, key.clone(), body_for("ok", false), 300, 4, cap).await?;
    let (warm, _) = open_streams(addr, key.clone(), 20.min(n), cap).await?;
    finish(&mut mock)?;
    let (_, failed, first) = drain(warm, cap).await;
    if failed > 0 {
        return Err(format!("warm-up: {failed} streams failed: {first:?}"));
    }
    let p50_before = p50(addr, key.clone(), secs).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before_kib = proc_field(pid, "status", "VmRSS:");
    let (tasks, open_time) = open_streams(addr, key.clone(), n, cap).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_open_kib = proc_field(pid, "status", "VmRSS:");
    let fds_open = open_fds(pid);
    let p50_with = p50(addr, key.clone(), secs).await?;
    finish(&mut mock)?;
    let (clean, failed, first) = drain(tasks, cap).await;
    if let Some(e) = first {
        eprintln!("  {failed} streams did not end cleanly; first: {e}");
    }
    let p50_after = p50(addr, key, secs).await?;
    drop((proc, mock));
    Ok(Outcome {
        name,
        streams: n,
        open_time,
        rss_before_kib,
        rss_open_kib,
        fds_open,
        p50_before,
        p50_with,
        p50_after,
        clean,
        failed,
    })
}

/// The process in between, its address, and the key to send.
fn start_target(
    args: &Args,
    dir: &Path,
    name: &str,
    mock_port: u16,
    n: usize,
) -> Result<(Proc, SocketAddr, Option<Arc<str>>), String> {
    if name == "bare proxy" {
        let (p, port) = start_proxy(None, mock_port)?;
        return Ok((p, SocketAddr::from(([127, 0, 0, 1], port)), None));
    }
    if name == "nginx" {
        // nginx starts closing fresh connections ("worker_connections are not enough, reusing
        // connections") once fewer than 1/16 of its worker_connections are free.
        let (p, addr) = start_nginx(args, dir, mock_port, 2 * n * 17 / 15 + 1024)?;
        return Ok((p, addr, None));
    }
    let prod = name == "tollgate prod";
    let path = dir.join(if prod { "prod.toml" } else { "lean.toml" });
    // Streams idle for as long as the run needs: no deadline may end them.
    let cfg = tollgate_config(args, dir, mock_port, prod)
        + "\n[routing.timeouts]\nconnect_ms = 5000\nfirst_token_ms = 60000\nidle_ms = 600000\ntotal_ms = 600000\n";
    std::fs::write(&path, cfg).map_err(|e| format!("{}: {e}", path.display()))?;
    let (p, addr) = spawn_gateway(args, &path)?;
    wait_listening(addr, name)?;
    Ok((p, addr, prod.then(|| Arc::from(KEY))))
}

fn report(args: &Args, limit: usize, outcomes: &[Outcome]) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "loadgen --idle-streams: {} cores, load average {}; open-file limit {limit}; json c=1 loops of {} s",
        online_cpus(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        args.cell_secs.max(1),
    );
    println!(
        "{:<14} {:>7} {:>7} {:>10} {:>10} {:>11} {:>7} {:>9} {:>9} {:>9} {:>11}",
        "",
        "streams",
        "open s",
        "RSS0 KiB",
        "RSS KiB",
        "B/stream",
        "fds",
        "p50 0 ms",
        "p50 N ms",
        "p50 0' ms",
        "clean ends"
    );
    for o in outcomes {
        println!(
            "{:<14} {:>7} {:>7.1} {:>10} {:>10} {:>11.0} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>5}/{:<5}",
            o.name,
            o.streams,
            o.open_time.as_secs_f64(),
            o.rss_before_kib,
            o.rss_open_kib,
            o.bytes_per_stream(),
            o.fds_open,
            ms(o.p50_before),
            ms(o.p50_with),
            ms(o.p50_after),
            o.clean,
            o.clean + o.failed,
        );
    }
    let nginx = outcomes.iter().find(|o| o.name == "nginx");
    for o in outcomes.iter().filter(|o| o.name.starts_with("tollgate")) {
        let per = o.bytes_per_stream();
        let ratio = nginx.map_or_else(
            || "-".to_owned(),
            |x| format!("{:.2}x nginx", per / x.bytes_per_stream().max(1.0)),
        );
        println!(
            "{}: {:.1} KiB per idle open stream ({ratio}); target <= 16 KiB: {}",
            o.name,
            per / 1024.0,
            if per <= 16.0 * 1024.0 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}
