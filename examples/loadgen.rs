//! Loopback load harness: direct-to-mock versus through the reference gateway, in one run.
//!
//! ```text
//! cargo build --release --example gateway --example loadgen
//! target/release/examples/loadgen [--requests N] [--concurrency C] [--time-cap SECS]
//!                                 [--gateway PATH] [--gateway-log FILTER] [--gateway-workers N]
//!                                 [--gateway-runtime per-core|work-stealing]
//!                                 [--gateway-cpus LIST] [--mock-cpus LIST] [--rounds R]
//! ```
//!
//! Defaults: `--requests 5000` (the json phase at concurrency C runs twice as many, the stream
//! phase half as many), `--concurrency 16`, `--time-cap 20` (seconds, per phase), `--rounds 5`
//! (each phase alternates direct and gateway this many times, so that load from elsewhere on a
//! shared machine falls on both sides), `--gateway-cpus LIST` (start the gateway under
//! `taskset -c LIST`), `--mock-cpus LIST` (the same for the mock child; pin the harness itself
//! with `taskset -c CPUS loadgen ...`),
//! `--gateway-log info` (the gateway's `RUST_LOG`), and the gateway's own runtime: its default
//! (`per-core`, one worker thread per CPU it may use) unless `--gateway-workers N` /
//! `--gateway-runtime KIND` set `[server] workers` / `[server] runtime` in its config.
//!
//! What it does, all on 127.0.0.1:
//! 1. starts a [`MockServer`] in a child process (this binary with `--serve-mock`; the child
//!    exits when its stdin closes, i.e. when this process ends);
//! 2. writes a gateway config whose only provider is that mock (`kind = "openai"`,
//!    `base_url = "http://127.0.0.1:PORT/v1"`, auth off, no usage file), and starts the
//!    reference gateway binary (`target/release/examples/gateway`) on it as a child process;
//! 3. drives both with its own HTTP/1.1 client (hyper, keep-alive connections, `C` of them, a
//!    fixed number of requests and a time cap per phase), and measures requests per second,
//!    p50/p99 latency, time to the first streamed byte, and the gateway's CPU time per request
//!    (`utime + stime` of the gateway process from `/proc/PID/stat`, before and after each
//!    gateway phase; also the per-thread `schedstat` run time in nanoseconds as a finer check);
//! 4. checks that the gateway never buffers a stream: with `ok?chunks=10&delay_ms=50` the
//!    client's inter-arrival times of the content events through the gateway must match the
//!    upstream's 50 ms pacing;
//! 5. prints a table with ratios and the added microseconds, then stops both children.
//!
//! `--idle-streams N` (benches/idle_streams.sh) measures memory per idle open stream instead: see
//! `examples/loadgen/idle.rs`.
//!
//! Phases: `json` (a non-streaming `ok` answer) at concurrency 1 and at `C`, `stream20` (a
//! 20-chunk stream, body read to the end) at concurrency 1, then the pacing check.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tollgate::provider::mock::{MockLog, MockServer};

/// `--idle-streams N` and its upstream (`--serve-idle-mock`).
#[path = "loadgen/idle.rs"]
mod idle;

const USAGE: &str = "usage: loadgen [--requests N] [--concurrency C] [--time-cap SECS] \
                     [--gateway PATH] [--gateway-log FILTER] [--gateway-workers N] [--gateway-runtime KIND] [--gateway-cpus LIST] [--mock-cpus LIST] [--rounds R] [--no-floor] [--serve-mock] [--serve-proxy PORT] [--drive ADDR] \
                     [--vs-nginx [--nginx PATH] [--cell-secs S] [--gateway-before PATH]] \
                     [--idle-streams N [--nginx PATH] [--cell-secs S]] [--serve-idle-mock]";

#[derive(Clone)]
struct Args {
    requests: usize,
    concurrency: usize,
    time_cap: Duration,
    gateway: PathBuf,
    gateway_log: String,
    gateway_workers: Option<u64>,
    gateway_runtime: Option<String>,
    gateway_cpus: Option<String>,
    mock_cpus: Option<String>,
    rounds: usize,
    serve_mock: bool,
    /// Child mode: the bare proxy in front of the mock on this port.
    serve_proxy: Option<u16>,
    /// Measure the bare proxy too (`--no-floor` skips it).
    floor: bool,
    /// Client-only mode: send `--requests` non-streaming requests to this address, one at a
    /// time on one connection, and exit (benches/instructions.sh drives callgrind with it).
    drive: Option<SocketAddr>,
    /// The comparison with nginx (`--vs-nginx`): direct, nginx, the bare proxy, tollgate's
    /// production path and its lean path, in one run.
    vs_nginx: bool,
    /// The nginx binary (`--nginx PATH`).
    nginx: PathBuf,
    /// `--vs-nginx`: seconds each of the five measures every cell (split over the rounds).
    cell_secs: u64,
    /// `--concurrency` was given.
    concurrency_set: bool,
    /// `--vs-nginx`: also an older gateway binary's production path, as a sixth column.
    gateway_before: Option<PathBuf>,
    /// `--idle-streams N`: memory per idle open stream at N streams (see `idle`).
    idle_streams: Option<usize>,
    /// Child mode: the upstream that holds streams open until told to finish.
    serve_idle_mock: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        requests: 5_000,
        concurrency: 16,
        time_cap: Duration::from_secs(20),
        gateway: PathBuf::from("target/release/examples/gateway"),
        gateway_log: "info".to_owned(),
        gateway_workers: None,
        gateway_runtime: None,
        gateway_cpus: None,
        mock_cpus: None,
        rounds: 5,
        serve_mock: false,
        serve_proxy: None,
        floor: true,
        drive: None,
        vs_nginx: false,
        nginx: PathBuf::from("nginx"),
        cell_secs: 3,
        concurrency_set: false,
        gateway_before: None,
        idle_streams: None,
        serve_idle_mock: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: `{v}` is not a number"))
        };
        match flag.as_str() {
            "--requests" | "-n" => a.requests = num(value()?)?.max(1) as usize,
            "--concurrency" | "-c" => {
                a.concurrency = num(value()?)?.max(1) as usize;
                a.concurrency_set = true;
            }
            "--vs-nginx" => a.vs_nginx = true,
            "--idle-streams" => a.idle_streams = Some(num(value()?)?.max(1) as usize),
            "--serve-idle-mock" => a.serve_idle_mock = true,
            "--nginx" => a.nginx = PathBuf::from(value()?),
            "--cell-secs" => a.cell_secs = num(value()?)?.max(1),
            "--gateway-before" => a.gateway_before = Some(PathBuf::from(value()?)),
            "--time-cap" => a.time_cap = Duration::from_secs(num(value()?)?.max(1)),
            "--gateway" => a.gateway = PathBuf::from(value()?),
            "--gateway-log" => a.gateway_log = value()?,
            "--gateway-cpus" => a.gateway_cpus = Some(value()?),
            "--mock-cpus" => a.mock_cpus = Some(value()?),
            "--rounds" => a.rounds = num(value()?)?.max(1) as usize,
            "--gateway-workers" => a.gateway_workers = Some(num(value()?)?.max(1)),
            "--gateway-runtime" => a.gateway_runtime = Some(value()?),
            "--serve-mock" => a.serve_mock = true,
            "--serve-proxy" => a.serve_proxy = Some(num(value()?)? as u16),
            "--no-floor" => a.floor = false,
            "--drive" => {
                a.drive = Some(value()?.parse().map_err(|e| format!("--drive ADDR: {e}"))?)
            }
            "--help" | "-h" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if args.serve_mock {
        rt.block_on(serve_mock())
    } else if args.serve_idle_mock {
        rt.block_on(idle::serve_mock())
    } else if let Some(n) = args.idle_streams {
        rt.block_on(idle::run(&args, n))
    } else if let Some(port) = args.serve_proxy {
        rt.block_on(serve_proxy(port))
    } else if let Some(addr) = args.drive {
        rt.block_on(async {
            let r = drive(addr, body_for("ok", false), args.requests, 1, args.time_cap).await?;
            if r.errors > 0 {
                return Err(format!(
                    "{} of {} requests failed; first: {}",
                    r.errors,
                    args.requests,
                    r.first_error.unwrap_or_default()
                ));
            }
            println!("{} requests", r.samples.len());
            Ok(())
        })
    } else if args.vs_nginx {
        rt.block_on(vs_nginx::run(&args))
    } else {
        rt.block_on(run(&args))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The mock child
// ---------------------------------------------------------------------------------------------

/// Serve the mock on 127.0.0.1:0, print the port, run until stdin closes.
async fn serve_mock() -> Result<(), String> {
    let server = MockServer::start_with_log(MockLog::with_limit(0))
        .await
        .map_err(|e| format!("mock: {e}"))?;
    println!("{}", server.addr().port());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    drop(server);
    Ok(())
}

/// The floor: the least any Rust gateway built on hyper does per request — a hyper HTTP/1.1
/// server (one single-threaded runtime, like one gateway worker) whose every request is sent,
/// headers and body as they are, through hyper-util's pooled client (the gateway's) to the mock,
/// and whose answer is streamed back frame by frame. No parsing, routing, metering or metrics.
/// Prints its port, runs until stdin closes.
async fn serve_proxy(upstream_port: u16) -> Result<(), String> {
    use hyper::body::Incoming;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("proxy: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(http);
    let authority = format!("127.0.0.1:{upstream_port}");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (client, authority) = (client.clone(), authority.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let client = client.clone();
                    let authority = authority.clone();
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let path = parts
                            .uri
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_owned();
                        parts.uri = http::Uri::builder()
                            .scheme("http")
                            .authority(authority.as_str())
                            .path_and_query(path)
                            .build()
                            .map_err(|e| e.to_string())?;
                        let res = client
                            .request(hyper::Request::from_parts(parts, body))
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok::<_, String>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    println!("{port}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process that is killed when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        // The mock exits on its own when stdin closes; give it a moment, then make sure.
        for _ in 0..20 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Err(e) = self.child.kill() {
            eprintln!("loadgen: could not stop {}: {e}", self.name);
        }
        let _ = self.child.wait();
    }
}

/// Read the child's stdout until `pick` finds what it wants in a line; then keep draining it
/// in a thread (the gateway logs to stdout).
fn read_until<T>(
    proc: &mut Proc,
    within: Duration,
    pick: impl Fn(&str) -> Option<T>,
) -> Result<T, String> {
    let out = proc
        .child
        .stdout
        .take()
        .ok_or_else(|| format!("{}: no stdout", proc.name))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                // The reader stopped caring; keep draining so the child never blocks.
                continue;
            }
        }
    });
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(v) = pick(&line) {
                    return Ok(v);
                }
            }
            Err(_) => return Err(format!("{}: did not start within {within:?}", proc.name)),
        }
    }
}

fn start_mock(cpus: Option<&str>) -> Result<(Proc, u16), String> {
    start_child("mock", cpus, &["--serve-mock".to_owned()])
}

/// The bare proxy (the floor) in front of the mock, placed like the gateway.
fn start_proxy(cpus: Option<&str>, mock_port: u16) -> Result<(Proc, u16), String> {
    start_child(
        "bare proxy",
        cpus,
        &["--serve-proxy".to_owned(), mock_port.to_string()],
    )
}

/// This binary in a child mode that prints its port and runs until its stdin closes.
fn start_child(
    name: &'static str,
    cpus: Option<&str>,
    mode: &[String],
) -> Result<(Proc, u16), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = match cpus {
        None => Command::new(me),
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(me);
            c
        }
    };
    let child = cmd
        .args(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the {name} child: {e}"))?;
    let mut proc = Proc { name, child };
    let port = read_until(&mut proc, Duration::from_secs(10), |l| {
        l.trim().parse::<u16>().ok()
    })?;
    Ok((proc, port))
}

fn gateway_config(args: &Args, mock_port: u16) -> String {
    let mut server = String::from("[server]\n");
    if let Some(n) = args.gateway_workers {
        server.push_str(&format!("workers = {n}\n"));
    }
    if let Some(k) = &args.gateway_runtime {
        server.push_str(&format!("runtime = \"{k}\"\n"));
    }
    format!(
        r#"# Generated by examples/loadgen.rs
{server}
[auth]
enabled = false

[usage]
jsonl = ""

[routing.timeouts]
connect_ms = 5000
first_token_ms = 60000
idle_ms = 60000
total_ms = 600000

[providers.mock]
kind = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"

[models.ok]
targets = [{{ provider = "mock", model = "ok" }}]

[models."ok?chunks=20"]
targets = [{{ provider = "mock", model = "ok?chunks=20" }}]

[models."ok?chunks=10&delay_ms=50"]
targets = [{{ provider = "mock", model = "ok?chunks=10&delay_ms=50" }}]
"#
    )
}

/// Start the gateway on a generated config (the file is removed once the gateway has read it,
/// or failed to start).
fn start_gateway(args: &Args, mock_port: u16) -> Result<(Proc, SocketAddr), String> {
    let path = std::env::temp_dir().join(format!("tollgate-loadgen-{}.toml", std::process::id()));
    std::fs::write(&path, gateway_config(args, mock_port))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let started = spawn_gateway(args, &path);
    let _ = std::fs::remove_file(&path);
    started
}

fn spawn_gateway(args: &Args, path: &Path) -> Result<(Proc, SocketAddr), String> {
    let mut cmd = match &args.gateway_cpus {
        None => Command::new(&args.gateway),
        Some(cpus) => {
            // taskset execs the gateway: the child's pid is the gateway's.
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(&args.gateway);
            c
        }
    };
    cmd.arg("--config")
        .arg(path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("RUST_LOG", &args.gateway_log);
    // tokio's multi-thread runtime reads its worker count from this variable.
    cmd.env_remove("TOKIO_WORKER_THREADS");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start the gateway `{}` (build it with `cargo build --release --example gateway`): {e}",
                args.gateway.display()
            )
        })?;
    let mut proc = Proc {
        name: "gateway",
        child,
    };
    let addr = read_until(&mut proc, Duration::from_secs(30), |l| {
        let rest = &l[l.find("http://")? + "http://".len()..];
        let end = rest
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(rest.len());
        rest[..end].parse::<SocketAddr>().ok()
    })?;
    Ok((proc, addr))
}

// ---------------------------------------------------------------------------------------------
// CPU accounting
// ---------------------------------------------------------------------------------------------

/// CPU used by a process so far: `utime + stime` from `/proc/PID/stat` (clock ticks, 10 ms on
/// Linux) and the sum of its threads' `schedstat` run time (nanoseconds).
#[derive(Debug, Clone, Copy)]
struct Cpu {
    stat: Duration,
    sched: Duration,
    /// Context switches of all its threads (voluntary + involuntary).
    switches: u64,
}

/// CPUs online on the machine (whatever this process's affinity).
fn online_cpus() -> usize {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    list.trim()
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| match r.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => 1,
        })
        .sum()
}

/// `Cpus_allowed_list` of a process (what `taskset` set), or `?`.
fn allowed_cpus(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn cpu_of(pid: u32, ticks: u64) -> Result<Cpu, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or("malformed /proc/PID/stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, String> {
        f.get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: no field {n}"))
    };
    let t = field(14)? + field(15)?;
    let stat = Duration::from_nanos(t * 1_000_000_000 / ticks.max(1));
    let (mut sched, mut switches) = (0u64, 0u64);
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
                sched += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if let Ok(s) = std::fs::read_to_string(task.path().join("status")) {
                switches += s
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
    }
    Ok(Cpu {
        stat,
        sched: Duration::from_nanos(sched),
        switches,
    })
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

fn body_for(model: &str, stream: bool) -> Bytes {
    let model = serde_json::to_string(model).unwrap_or_else(|_| "\"ok\"".to_owned());
    let stream = if stream { r#","stream":true"# } else { "" };
    Bytes::from(format!(
        r#"{{"model":{model},"messages":[{{"role":"system","content":"You are terse."}},{{"role":"user","content":"Say hello to the benchmark."}}],"max_tokens":64,"temperature":0.2{stream}}}"#
    ))
}

/// One request's timings.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Until the body ended.
    total: Duration,
    /// Until the first body byte.
    first_byte: Duration,
}

/// One request's events, for the pacing check: arrival time of each SSE event.
type EventTimes = Vec<Duration>;

/// A keep-alive HTTP/1.1 connection of ours.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    /// `Authorization: Bearer …` sent with every request, if any.
    auth: Option<http::HeaderValue>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, String> {
        Conn::open_as(addr, None).await
    }

    async fn open_as(addr: SocketAddr, key: Option<&str>) -> Result<Conn, String> {
        let auth = match key {
            Some(k) => Some(
                http::HeaderValue::from_str(&format!("Bearer {k}")).map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        if !addr.ip().is_loopback() {
            return Err(format!("{addr} is not a loopback address"));
        }
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake {addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            host: addr.to_string(),
            auth,
        })
    }

    /// A chat completions request with `body`, once the connection is ready for it.
    async fn post(&mut self, body: &Bytes) -> Result<Request<Full<Bytes>>, String> {
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let mut req = Request::post("/v1/chat/completions")
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        if let Some(v) = &self.auth {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, v.clone());
        }
        Ok(req)
    }

    /// One request; the body is read to its end. With `events`, the arrival time of every SSE
    /// event (a blank line) is recorded.
    async fn request(
        &mut self,
        body: &Bytes,
        mut events: Option<&mut EventTimes>,
    ) -> Result<Sample, String> {
        let req = self.post(body).await?;
        let t0 = Instant::now();
        let res = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = res.status();
        let mut body = res.into_body();
        let mut first = None;
        let mut tail = 0u8; // the last byte seen, to find "\n\n" across frames
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            let at = t0.elapsed();
            first.get_or_insert(at);
            if let Some(ev) = events.as_deref_mut() {
                let mut prev = tail;
                for &b in data.iter() {
                    if b == b'\n' && prev == b'\n' {
                        ev.push(at);
                    }
                    prev = b;
                }
            }
            tail = data[data.len() - 1];
            if !status.is_success() && bytes.len() < 512 {
                bytes.extend_from_slice(&data);
            }
        }
        let total = t0.elapsed();
        if !status.is_success() {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        Ok(Sample {
            total,
            first_byte: first.unwrap_or(total),
        })
    }
}

/// A phase's result.
#[derive(Debug, Clone, Default)]
struct Run {
    samples: Vec<Sample>,
    errors: usize,
    first_error: Option<String>,
    wall: Duration,
}

impl Run {
    fn rps(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    fn pct(&self, p: f64, f: impl Fn(&Sample) -> Duration) -> Duration {
        let mut v: Vec<Duration> = self.samples.iter().map(f).collect();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v.sort_unstable();
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }
    fn p(&self, p: f64) -> Duration {
        self.pct(p, |s| s.total)
    }
    fn fb(&self, p: f64) -> Duration {
        self.pct(p, |s| s.first_byte)
    }
}

/// `requests` requests on `concurrency` keep-alive connections, stopping at `cap`.
async fn drive(
    addr: SocketAddr,
    body: Bytes,
    requests: usize,
    concurrency: usize,
    cap: Duration,
) -> Result<Run, String> {
    drive_as(addr, None, body, requests, concurrency, cap).await
}

/// [`drive`], sending `key` as a bearer token when given.
async fn drive_as(
    addr: SocketAddr,
    key: Option<Arc<str>>,
    body: Bytes,
    requests: usize,
    concurrency: usize,
    cap: Duration,
) -> Result<Run, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + cap;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(requests) {
        let (next, body, key) = (next.clone(), body.clone(), key.clone());
        tasks.spawn(async move {
            let mut run = Run::default();
            let mut conn = Conn::open_as(addr, key.as_deref()).await?;
            while next.fetch_add(1, Ordering::Relaxed) < requests && Instant::now() < deadline {
                match conn.request(&body, None).await {
                    Ok(s) => run.samples.push(s),
                    Err(e) => {
                        run.errors += 1;
                        run.first_error.get_or_insert(e);
                        conn = Conn::open_as(addr, key.as_deref()).await?;
                    }
                }
            }
            Ok::<Run, String>(run)
        });
    }
    let mut all = Run::default();
    while let Some(r) = tasks.join_next().await {
        let r = r.map_err(|e| e.to_string())??;
        all.samples.extend(r.samples);
        all.errors += r.errors;
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
    }
    all.wall = started.elapsed();
    if let Some(e) = &all.first_error {
        eprintln!("  {} errors; first: {e}", all.errors);
    }
    if all.samples.is_empty() {
        return Err(format!("no request to {addr} succeeded"));
    }
    Ok(all)
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One table row: direct, gateway, ratio, added.
fn row(name: &str, unit: &str, direct: f64, gateway: f64) {
    println!(
        "{name:<34} {direct:>11.1} {gateway:>11.1} {:>7.2}x {:>+10.1} {unit}",
        gateway / direct.max(1e-9),
        gateway - direct
    );
}

struct GatewayCpu {
    name: String,
    requests: usize,
    stat: Duration,
    sched: Duration,
    switches: u64,
    /// The mock's CPU (schedstat) in the direct runs, and their requests.
    mock_sched: Duration,
    mock_requests: usize,
    /// Per round: schedstat CPU per request, µs.
    rounds: Vec<f64>,
    /// The bare proxy's CPU (utime + stime, and schedstat) and its requests, when measured.
    floor_stat: Duration,
    floor_sched: Duration,
    floor_requests: usize,
}

impl GatewayCpu {
    fn per_request(&self, d: Duration) -> f64 {
        us(d) / self.requests.max(1) as f64
    }
    fn median_round(&self) -> f64 {
        let mut v = self.rounds.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
}

impl Run {
    fn absorb(&mut self, other: Run) {
        self.samples.extend(other.samples);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.wall += other.wall;
    }
}

/// Run a phase in `rounds` alternations of direct-to-mock then through the gateway (measuring
/// the gateway's CPU), so that a burst of load from elsewhere on the machine hits both sides.
#[allow(clippy::too_many_arguments)]
async fn phase(
    name: &str,
    (mock, mock_pid): (SocketAddr, u32),
    gw: SocketAddr,
    gw_pid: u32,
    floor: Option<(SocketAddr, u32)>,
    ticks: u64,
    body: Bytes,
    requests: usize,
    concurrency: usize,
    rounds: usize,
    cap: Duration,
    cpu: &mut Vec<GatewayCpu>,
) -> Result<(Run, Run, Run), String> {
    eprintln!("- {name}: {requests} requests, concurrency {concurrency}, {rounds} rounds");
    let per = requests.div_ceil(rounds.max(1));
    let cap = cap / rounds.max(1) as u32;
    let (mut direct, mut through, mut bare) = (Run::default(), Run::default(), Run::default());
    let mut g = GatewayCpu {
        name: name.to_owned(),
        requests: 0,
        stat: Duration::ZERO,
        sched: Duration::ZERO,
        switches: 0,
        mock_sched: Duration::ZERO,
        mock_requests: 0,
        rounds: Vec::new(),
        floor_stat: Duration::ZERO,
        floor_sched: Duration::ZERO,
        floor_requests: 0,
    };
    for _ in 0..rounds.max(1) {
        let m0 = cpu_of(mock_pid, ticks)?;
        let d = drive(mock, body.clone(), per, concurrency, cap).await?;
        let m1 = cpu_of(mock_pid, ticks)?;
        g.mock_sched += m1.sched.saturating_sub(m0.sched);
        g.mock_requests += d.samples.len() + d.errors;
        direct.absorb(d);
        let before = cpu_of(gw_pid, ticks)?;
        let r = drive(gw, body.clone(), per, concurrency, cap).await?;
        let after = cpu_of(gw_pid, ticks)?;
        let n = r.samples.len() + r.errors;
        let sched = after.sched.saturating_sub(before.sched);
        g.requests += n;
        g.stat += after.stat.saturating_sub(before.stat);
        g.sched += sched;
        g.switches += after.switches.saturating_sub(before.switches);
        g.rounds.push(us(sched) / n.max(1) as f64);
        through.absorb(r);
        if let Some((addr, pid)) = floor {
            let before = cpu_of(pid, ticks)?;
            let r = drive(addr, body.clone(), per, concurrency, cap).await?;
            let after = cpu_of(pid, ticks)?;
            g.floor_requests += r.samples.len() + r.errors;
            g.floor_stat += after.stat.saturating_sub(before.stat);
            g.floor_sched += after.sched.saturating_sub(before.sched);
            bare.absorb(r);
        }
    }
    cpu.push(g);
    Ok((direct, through, bare))
}

/// The pacing check: gaps between content events of `ok?chunks=10&delay_ms=50`.
async fn pacing(addr: SocketAddr, rounds: usize) -> Result<Vec<Duration>, String> {
    let body = body_for("ok?chunks=10&delay_ms=50", true);
    let mut gaps = Vec::new();
    let mut conn = Conn::open(addr).await?;
    for _ in 0..rounds {
        let mut ev = EventTimes::new();
        conn.request(&body, Some(&mut ev)).await?;
        // Events: 10 content chunks, the finish chunk, [DONE] (and a usage chunk only when
        // the client asks). The 50 ms waits lie between the 10 content chunks.
        if ev.len() < 10 {
            return Err(format!(
                "{addr}: expected at least 10 events, got {}",
                ev.len()
            ));
        }
        gaps.extend(ev.windows(2).take(9).map(|w| w[1] - w[0]));
    }
    Ok(gaps)
}

async fn run(args: &Args) -> Result<(), String> {
    let ticks = clock_ticks();
    let (mock_proc, mock_port) = start_mock(args.mock_cpus.as_deref())?;
    let mock_pid = mock_proc.pid();
    let mock = SocketAddr::from(([127, 0, 0, 1], mock_port));
    let (gw_proc, gw) = start_gateway(args, mock_port)?;
    let gw_pid = gw_proc.pid();
    let floor_proc = if args.floor {
        Some(start_proxy(args.gateway_cpus.as_deref(), mock_port)?)
    } else {
        None
    };
    let floor = floor_proc
        .as_ref()
        .map(|(p, port)| (SocketAddr::from(([127, 0, 0, 1], *port)), p.pid()));
    let cores = online_cpus();
    eprintln!(
        "mock on {mock} (pid {}), gateway on {gw} (pid {gw_pid}); {cores} cores",
        mock_proc.pid(),
    );

    let (n, c, cap) = (args.requests, args.concurrency, args.time_cap);
    let json = body_for("ok", false);
    let stream = body_for("ok?chunks=20", true);

    // Warm up both paths (connections, the gateway's upstream pool, allocators).
    for addr in [mock, gw].into_iter().chain(floor.map(|f| f.0)) {
        drive(addr, json.clone(), 300, c, cap).await?;
        drive(addr, stream.clone(), 100, 2, cap).await?;
    }

    let mut cpu = Vec::new();
    let (j1d, j1g, j1f) = phase(
        "json c=1",
        (mock, mock_pid),
        gw,
        gw_pid,
        floor,
        ticks,
        json.clone(),
        n,
        1,
        args.rounds,
        cap,
        &mut cpu,
    )
    .await?;
    let (jcd, jcg, jcf) = phase(
        &format!("json c={c}"),
        (mock, mock_pid),
        gw,
        gw_pid,
        floor,
        ticks,
        json.clone(),
        n * 2,
        c,
        args.rounds,
        cap,
        &mut cpu,
    )
    .await?;
    let (s1d, s1g, s1f) = phase(
        "stream20 c=1",
        (mock, mock_pid),
        gw,
        gw_pid,
        floor,
        ticks,
        stream.clone(),
        n / 2,
        1,
        args.rounds,
        cap,
        &mut cpu,
    )
    .await?;
    eprintln!("- pacing: ok?chunks=10&delay_ms=50, 3 streams each way");
    let pace_d = pacing(mock, 3).await?;
    let pace_g = pacing(gw, 3).await?;

    println!();
    println!(
        "loadgen: {cores} cores; harness on CPUs {}; mock on CPUs {}; gateway on CPUs {}, gateway workers: {}, runtime: {}; requests {n} (json c={c}: {}, stream20: {}) in {} rounds; gateway RUST_LOG={}",
        allowed_cpus(std::process::id()),
        allowed_cpus(mock_proc.pid()),
        allowed_cpus(gw_pid),
        args.gateway_workers.map_or_else(
            || "default (one per CPU it may use)".to_owned(),
            |w| w.to_string()
        ),
        args.gateway_runtime
            .as_deref()
            .unwrap_or("default (per-core)"),
        n * 2,
        n / 2,
        args.rounds,
        args.gateway_log
    );
    println!(
        "{:<34} {:>11} {:>11} {:>8} {:>10}",
        "", "direct", "gateway", "ratio", "added"
    );
    println!("{}", "-".repeat(80));
    for (label, d, g) in [
        ("json c=1", &j1d, &j1g),
        (&*format!("json c={c}"), &jcd, &jcg),
        ("stream20 c=1 (whole body)", &s1d, &s1g),
    ] {
        row(&format!("{label}: requests/s"), "req/s", d.rps(), g.rps());
        row(&format!("{label}: p50"), "µs", us(d.p(0.50)), us(g.p(0.50)));
        row(&format!("{label}: p99"), "µs", us(d.p(0.99)), us(g.p(0.99)));
    }
    row(
        "stream20 c=1: first byte p50",
        "µs",
        us(s1d.fb(0.50)),
        us(s1g.fb(0.50)),
    );
    row(
        "stream20 c=1: first byte p99",
        "µs",
        us(s1d.fb(0.99)),
        us(s1g.fb(0.99)),
    );
    if floor.is_some() {
        println!();
        println!(
            "the floor: a bare hyper proxy (server + hyper-util pooled client, no layers) in front of the same mock, placed like the gateway"
        );
        println!(
            "{:<34} {:>11} {:>11} {:>8} {:>10}",
            "", "bare proxy", "gateway", "ratio", "added"
        );
        println!("{}", "-".repeat(80));
        row("json c=1: p50", "µs", us(j1f.p(0.50)), us(j1g.p(0.50)));
        row(
            &format!("json c={c}: requests/s"),
            "req/s",
            jcf.rps(),
            jcg.rps(),
        );
        row(
            "stream20 c=1: first byte p50",
            "µs",
            us(s1f.fb(0.50)),
            us(s1g.fb(0.50)),
        );
        for g in &cpu {
            let f = us(g.floor_stat) / g.floor_requests.max(1) as f64;
            row(
                &format!("{}: CPU per request", g.name),
                "µs",
                f,
                g.per_request(g.stat),
            );
        }
    }
    println!();
    println!(
        "gateway CPU per request: utime+stime (/proc/PID/stat) | per-thread schedstat | schedstat, median round | context switches || the mock's CPU per request, direct (schedstat)"
    );
    for g in &cpu {
        println!(
            "  {:<20} {:>7.1} µs | {:>7.1} µs | {:>7.1} µs | {:>5.1} || {:>7.1} µs   ({} requests, {:.2} s CPU)",
            g.name,
            g.per_request(g.stat),
            g.per_request(g.sched),
            g.median_round(),
            g.switches as f64 / g.requests.max(1) as f64,
            us(g.mock_sched) / g.mock_requests.max(1) as f64,
            g.requests,
            g.stat.as_secs_f64()
        );
    }
    let gap_stats = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        let at = |i: usize| v.get(i).copied().unwrap_or_default();
        (at(0), at(v.len() / 2), at(v.len().saturating_sub(1)))
    };
    let (dmin, dmed, dmax) = gap_stats(&pace_d);
    let (gmin, gmed, gmax) = gap_stats(&pace_g);
    println!();
    println!("pacing (ok?chunks=10&delay_ms=50; gaps between content events, ms):");
    for (who, n, (min, med, max)) in [
        ("direct ", pace_d.len(), (dmin, dmed, dmax)),
        ("gateway", pace_g.len(), (gmin, gmed, gmax)),
    ] {
        println!(
            "  {who}: {n} gaps, min {:.2}, median {:.2}, max {:.2}",
            ms(min),
            ms(med),
            ms(max)
        );
    }

    // Verdicts against the targets of issue 2.
    let added_p50 = us(j1g.p(0.50)) - us(j1d.p(0.50));
    let cpu_json1 = cpu.first().map_or(0.0, |g| g.per_request(g.stat));
    let added_fb = us(s1g.fb(0.50)) - us(s1d.fb(0.50));
    // Buffering shows as content events arriving together (a gap near 0) or late in a burst;
    // a busy machine only delays single events (one long gap, then a shorter one).
    let paced = gmin >= Duration::from_millis(10)
        && gmed >= Duration::from_millis(45)
        && gmed <= Duration::from_millis(60);
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!();
    println!("targets:");
    println!(
        "  added p50 at concurrency 1 < 50 µs          : {added_p50:>7.1} µs  {}",
        verdict(added_p50 < 50.0)
    );
    println!(
        "  gateway CPU per request < 25 µs (json c=1)  : {cpu_json1:>7.1} µs  {}",
        verdict(cpu_json1 < 25.0)
    );
    println!(
        "  first streamed byte added < 100 µs (p50)    : {added_fb:>7.1} µs  {}",
        verdict(added_fb < 100.0)
    );
    println!(
        "  stream never buffered (median gap 50 ± 5 ms, no gap < 10 ms): median {:.1}, min {:.1} ms  {}",
        ms(gmed),
        ms(gmin),
        verdict(paced)
    );

    if let Some(g) = cpu.first().filter(|g| g.floor_requests > 0) {
        let f = us(g.floor_stat) / g.floor_requests as f64;
        println!(
            "  gateway CPU per request over the floor    : {:>7.1} µs ({:.2}x the bare proxy's {f:.1} µs; the mock's own: {:.1} µs)",
            cpu_json1 - f,
            cpu_json1 / f.max(1e-9),
            us(g.mock_sched) / g.mock_requests.max(1) as f64,
        );
    }

    drop(floor_proc);
    drop(gw_proc);
    drop(mock_proc);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// --vs-nginx: direct, nginx, the bare proxy, tollgate production and lean, in one run
// ---------------------------------------------------------------------------------------------

mod vs_nginx {
    use super::*;

    /// The virtual key the production path is driven with.
    pub(super) const KEY: &str = "sk-loadgen-bench-key";

    /// Something the client can be pointed at.
    struct Target {
        name: &'static str,
        addr: SocketAddr,
        /// The process in between (none when the client talks to the mock directly).
        pid: Option<u32>,
        key: Option<Arc<str>>,
    }

    /// One target's share of one cell.
    #[derive(Default)]
    struct Share {
        run: Run,
        /// utime + stime of the process in between.
        cpu: Duration,
        /// Its write-like system calls (`syscw` of /proc/PID/io).
        writes: u64,
        requests: usize,
    }

    impl Share {
        fn cpu_us(&self) -> f64 {
            us(self.cpu) / self.requests.max(1) as f64
        }
        fn writes_per(&self) -> f64 {
            self.writes as f64 / self.requests.max(1) as f64
        }
    }

    /// A field of a `/proc/PID/…` file of `key: value` lines, as a number.
    pub(super) fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// A free port on 127.0.0.1 (for nginx, which cannot report the one it got).
    fn free_port() -> Result<u16, String> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        Ok(l.local_addr().map_err(|e| e.to_string())?.port())
    }

    pub(super) fn wait_listening(addr: SocketAddr, name: &str) -> Result<(), String> {
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("{name} does not listen on {addr}"))
    }

    /// nginx as a plain reverse proxy in front of the mock: one process (`master_process
    /// off`, so its CPU and RSS are one pid's), `proxy_buffering off`, upstream keep-alive,
    /// no access log, everything under `dir`, listening on 127.0.0.1 only.
    pub(super) fn start_nginx(
        args: &Args,
        dir: &Path,
        mock_port: u16,
        conns: usize,
    ) -> Result<(Proc, SocketAddr), String> {
        let port = free_port()?;
        let d = dir.display();
        let nofile = conns + 64;
        let conf = format!(
            r#"# Generated by examples/loadgen.rs --vs-nginx
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log crit;
worker_rlimit_nofile {nofile};
events {{ worker_connections {conns}; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream mock {{
        server 127.0.0.1:{mock_port};
        keepalive 128;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut cmd = match &args.gateway_cpus {
            None => Command::new(&args.nginx),
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&args.nginx);
                c
            }
        };
        let child = cmd
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-c")
            .arg(&path)
            .arg("-g")
            .arg("daemon off; master_process off;")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start nginx `{}` (apt-get install -y nginx, or --nginx PATH): {e}",
                    args.nginx.display()
                )
            })?;
        let proc = Proc {
            name: "nginx",
            child,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening(addr, "nginx")?;
        Ok((proc, addr))
    }

    /// A gateway config: one worker; `prod` adds a virtual key with an rpm limit and the JSONL
    /// usage file; lean has auth off and no usage file.
    pub(super) fn tollgate_config(args: &Args, dir: &Path, mock_port: u16, prod: bool) -> String {
        let workers = args.gateway_workers.unwrap_or(1);
        let runtime = args
            .gateway_runtime
            .as_ref()
            .map(|k| format!("runtime = \"{k}\"\n"))
            .unwrap_or_default();
        let (auth, jsonl) = if prod {
            (
                format!(
                    "enabled = true\n[[auth.keys]]\nname = \"bench\"\nsha256 = \"{}\"\nrpm = 100000000\n",
                    tollgate::auth::hash_key(KEY)
                ),
                dir.join("usage.jsonl").display().to_string(),
            )
        } else {
            ("enabled = false\n".to_owned(), String::new())
        };
        format!(
            r#"# Generated by examples/loadgen.rs --vs-nginx
[server]
workers = {workers}
{runtime}
[auth]
{auth}
[usage]
jsonl = "{jsonl}"

[providers.mock]
kind = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"

[models.ok]
targets = [{{ provider = "mock", model = "ok" }}]

[models."ok?chunks=20"]
targets = [{{ provider = "mock", model = "ok?chunks=20" }}]
"#
        )
    }

    fn start_tollgate(
        args: &Args,
        dir: &Path,
        mock_port: u16,
        prod: bool,
    ) -> Result<(Proc, SocketAddr), String> {
        let name = if prod { "prod.toml" } else { "lean.toml" };
        let path = dir.join(name);
        std::fs::write(&path, tollgate_config(args, dir, mock_port, prod))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        spawn_gateway(args, &path)
    }

    /// `--gateway-before`: that binary on the production config (its own usage file).
    fn start_before(
        args: &Args,
        dir: &Path,
        mock_port: u16,
    ) -> Result<Option<(Proc, SocketAddr)>, String> {
        let Some(bin) = &args.gateway_before else {
            return Ok(None);
        };
        let path = dir.join("before.toml");
        let cfg = tollgate_config(args, dir, mock_port, true)
            .replace("usage.jsonl", "usage-before.jsonl");
        std::fs::write(&path, cfg).map_err(|e| format!("{}: {e}", path.display()))?;
        let before = Args {
            gateway: bin.clone(),
            ..args.clone()
        };
        spawn_gateway(&before, &path).map(Some)
    }

    /// One target's turn in one round of a cell.
    async fn turn(
        t: &Target,
        body: &Bytes,
        concurrency: usize,
        secs: Duration,
        ticks: u64,
        share: &mut Share,
    ) -> Result<(), String> {
        let before = match t.pid {
            Some(pid) => Some((cpu_of(pid, ticks)?, proc_field(pid, "io", "syscw:"))),
            None => None,
        };
        let r = drive_as(
            t.addr,
            t.key.clone(),
            body.clone(),
            usize::MAX / 2,
            concurrency,
            secs,
        )
        .await?;
        if let (Some(pid), Some((cpu0, w0))) = (t.pid, before) {
            let cpu1 = cpu_of(pid, ticks)?;
            share.cpu += cpu1.stat.saturating_sub(cpu0.stat);
            share.writes += proc_field(pid, "io", "syscw:").saturating_sub(w0);
        }
        share.requests += r.samples.len() + r.errors;
        share.run.absorb(r);
        Ok(())
    }

    /// One cell: every target in turn, `rounds` times, `secs` in all for each.
    async fn cell(
        targets: &[Target],
        body: &Bytes,
        concurrency: usize,
        secs: u64,
        rounds: usize,
        ticks: u64,
    ) -> Result<Vec<Share>, String> {
        let per = Duration::from_secs_f64(secs as f64 / rounds.max(1) as f64);
        let mut shares: Vec<Share> = targets.iter().map(|_| Share::default()).collect();
        for _ in 0..rounds.max(1) {
            for (t, share) in targets.iter().zip(shares.iter_mut()) {
                turn(t, body, concurrency, per, ticks, share).await?;
            }
        }
        Ok(shares)
    }

    /// The body of a stream of 23 events: 20 content chunks, the finish chunk, the usage chunk
    /// (asked for, so that every path moves the same bytes) and `[DONE]`.
    fn stream_body() -> Bytes {
        let b = body_for("ok?chunks=20", true);
        let s = String::from_utf8_lossy(&b).replace(
            r#""stream":true"#,
            r#""stream":true,"stream_options":{"include_usage":true}"#,
        );
        Bytes::from(s)
    }

    pub(super) async fn run(args: &Args) -> Result<(), String> {
        let ticks = clock_ticks();
        let dir = std::env::temp_dir().join(format!("tollgate-vs-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let result = run_in(args, &dir, ticks).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn run_in(args: &Args, dir: &Path, ticks: u64) -> Result<(), String> {
        let (mock_proc, mock_port) = start_mock(args.mock_cpus.as_deref())?;
        let mock = SocketAddr::from(([127, 0, 0, 1], mock_port));
        let (nginx_proc, nginx) = start_nginx(args, dir, mock_port, 4096)?;
        let (floor_proc, floor_port) = start_proxy(args.gateway_cpus.as_deref(), mock_port)?;
        let (prod_proc, prod) = start_tollgate(args, dir, mock_port, true)?;
        let (lean_proc, lean) = start_tollgate(args, dir, mock_port, false)?;
        let before = start_before(args, dir, mock_port)?;
        let mut targets = vec![
            Target {
                name: "direct",
                addr: mock,
                pid: None,
                key: None,
            },
            Target {
                name: "nginx",
                addr: nginx,
                pid: Some(nginx_proc.pid()),
                key: None,
            },
            Target {
                name: "bare proxy",
                addr: SocketAddr::from(([127, 0, 0, 1], floor_port)),
                pid: Some(floor_proc.pid()),
                key: None,
            },
            Target {
                name: "tollgate prod",
                addr: prod,
                pid: Some(prod_proc.pid()),
                key: Some(Arc::from(KEY)),
            },
            Target {
                name: "tollgate lean",
                addr: lean,
                pid: Some(lean_proc.pid()),
                key: None,
            },
        ];
        if let Some((p, addr)) = &before {
            targets.push(Target {
                name: "prod before",
                addr: *addr,
                pid: Some(p.pid()),
                key: Some(Arc::from(KEY)),
            });
        }
        let high = if args.concurrency_set {
            args.concurrency
        } else {
            32
        };
        let json = body_for("ok", false);
        let stream = stream_body();
        eprintln!("warming up {} targets", targets.len());
        for t in &targets {
            let cap = Duration::from_secs(5);
            drive_as(t.addr, t.key.clone(), json.clone(), 500, high, cap).await?;
            drive_as(t.addr, t.key.clone(), stream.clone(), 200, high, cap).await?;
        }
        let cells = [
            ("json c=1", &json, 1),
            ("json c=high", &json, high),
            ("stream c=1", &stream, 1),
            ("stream c=high", &stream, high),
        ];
        let mut results = Vec::new();
        for (name, body, c) in cells {
            let name = name.replace("high", &high.to_string());
            eprintln!(
                "- {name}: {} s per target in {} rounds",
                args.cell_secs, args.rounds
            );
            let shares = cell(&targets, body, c, args.cell_secs, args.rounds, ticks).await?;
            results.push((name, shares));
        }
        let rss: Vec<u64> = targets
            .iter()
            .map(|t| t.pid.map_or(0, |p| proc_field(p, "status", "VmHWM:")))
            .collect();
        report(args, &targets, &results, &rss, high);
        drop((
            before, lean_proc, prod_proc, floor_proc, nginx_proc, mock_proc,
        ));
        Ok(())
    }

    /// One row: a value per target (None: not applicable), then prod/nginx and lean/nginx.
    fn line(label: &str, unit: &str, v: &[Option<f64>]) {
        let cell = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b.abs() > 1e-9 => format!("{:.2}x", a / b),
            _ => "-".to_owned(),
        };
        let at = |i: usize| v.get(i).copied().flatten();
        let mut out = format!("{label:<34}");
        for x in v {
            out.push_str(&format!(" {:>9}", cell(*x)));
        }
        out.push_str(&format!(
            "  {:>7} {:>7}",
            ratio(at(3), at(1)),
            ratio(at(4), at(1))
        ));
        if v.len() > 5 {
            out.push_str(&format!(" {:>7}", ratio(at(5), at(1))));
        }
        println!("{out}  {unit}");
    }

    fn report(
        args: &Args,
        targets: &[Target],
        results: &[(String, Vec<Share>)],
        rss_kib: &[u64],
        high: usize,
    ) {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!();
        println!(
            "loadgen --vs-nginx: {} cores, load average {}; {} s per target per cell in {} alternating rounds; tollgate workers: {}; stream = ok?chunks=20 with include_usage (23 events)",
            online_cpus(),
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            args.cell_secs,
            args.rounds,
            args.gateway_workers.unwrap_or(1),
        );
        print!("{:<34}", "");
        for t in targets {
            print!(" {:>9}", t.name.split(' ').next_back().unwrap_or(t.name));
        }
        print!("  {:>7} {:>7}", "prod/ng", "lean/ng");
        println!("{}", if targets.len() > 5 { " befr/ng" } else { "" });
        println!("{}", "-".repeat(112));
        let direct_p50 = |sh: &[Share]| us(sh[0].run.p(0.50));
        for (name, sh) in results {
            let all = |f: &dyn Fn(&Share) -> f64| sh.iter().map(|s| Some(f(s))).collect::<Vec<_>>();
            let mid = |f: &dyn Fn(&Share) -> f64| {
                sh.iter()
                    .enumerate()
                    .map(|(i, s)| (i > 0).then(|| f(s)))
                    .collect::<Vec<_>>()
            };
            let stream = name.starts_with("stream");
            let per = if stream { "stream" } else { "request" };
            line(&format!("{name}: {per}s/s"), "/s", &all(&|s| s.run.rps()));
            line(&format!("{name}: p50"), "µs", &all(&|s| us(s.run.p(0.50))));
            line(&format!("{name}: p99"), "µs", &all(&|s| us(s.run.p(0.99))));
            let d = direct_p50(sh);
            line(
                &format!("{name}: added p50"),
                "µs",
                &mid(&|s| us(s.run.p(0.50)) - d),
            );
            line(
                &format!("{name}: CPU per {per}"),
                "µs",
                &mid(&|s| s.cpu_us()),
            );
            line(
                &format!("{name}: writes per {per}"),
                "syscw",
                &mid(&|s| s.writes_per()),
            );
            if stream && sh.iter().all(|s| !s.run.samples.is_empty()) {
                let fb = us(sh[0].run.fb(0.50));
                line(
                    &format!("{name}: first event p50"),
                    "µs",
                    &all(&|s| us(s.run.fb(0.50))),
                );
                line(
                    &format!("{name}: first event added"),
                    "µs",
                    &mid(&|s| us(s.run.fb(0.50)) - fb),
                );
            }
            let errors: usize = sh.iter().map(|s| s.run.errors).sum();
            if errors > 0 {
                println!("  ({errors} errors in this cell)");
            }
        }
        let rss: Vec<Option<f64>> = rss_kib
            .iter()
            .enumerate()
            .map(|(i, k)| (i > 0).then(|| *k as f64 / 1024.0))
            .collect();
        line("peak RSS (VmHWM)", "MiB", &rss);
        verdicts(results, rss_kib, high);
    }

    /// The targets of issue 12 (production path against nginx, same run).
    fn verdicts(results: &[(String, Vec<Share>)], rss_kib: &[u64], high: usize) {
        let find = |n: &str| results.iter().find(|(name, _)| name == n).map(|(_, s)| s);
        let (Some(j1), Some(jc), Some(s1), Some(sc)) = (
            find("json c=1"),
            find(&format!("json c={high}")),
            find("stream c=1"),
            find(&format!("stream c={high}")),
        ) else {
            return;
        };
        const NG: usize = 1;
        const PROD: usize = 3;
        let added = |sh: &[Share], i: usize| us(sh[i].run.p(0.50)) - us(sh[0].run.p(0.50));
        let fb_added = |i: usize| us(s1[i].run.fb(0.50)) - us(s1[0].run.fb(0.50));
        let checks: [(&str, f64, bool); 9] = {
            let r = |a: f64, b: f64| a / b.max(1e-9);
            let cpu1 = r(j1[PROD].cpu_us(), j1[NG].cpu_us());
            let add1 = r(added(j1, PROD), added(j1, NG));
            let rpsc = r(jc[PROD].run.rps(), jc[NG].run.rps());
            let cpuc = r(jc[PROD].cpu_us(), jc[NG].cpu_us());
            let scpu = r(sc[PROD].cpu_us(), sc[NG].cpu_us());
            let srps = r(sc[PROD].run.rps(), sc[NG].run.rps());
            let sw = sc[PROD].writes_per() - sc[NG].writes_per();
            let fb = r(fb_added(PROD), fb_added(NG));
            let rss = r(rss_kib[PROD] as f64, rss_kib[NG] as f64);
            [
                ("json c=1: CPU per request <= 1.5x", cpu1, cpu1 <= 1.5),
                ("json c=1: added p50 <= 2x", add1, add1 <= 2.0),
                ("json c=high: requests/s >= 0.8x", rpsc, rpsc >= 0.8),
                ("json c=high: CPU per request <= 1.5x", cpuc, cpuc <= 1.5),
                ("stream c=high: CPU per stream <= 2x", scpu, scpu <= 2.0),
                ("stream c=high: streams/s >= 0.5x", srps, srps >= 0.5),
                ("stream c=high: writes <= nginx's + 2 (diff)", sw, sw <= 2.0),
                ("first event added <= 1.5x", fb, fb <= 1.5),
                ("peak RSS <= 2x", rss, rss <= 2.0),
            ]
        };
        println!();
        println!("targets of issue 12 (tollgate production path / nginx, this run):");
        for (what, v, ok) in checks {
            let what = what.replace("high", &high.to_string());
            println!(
                "  {what:<46} {v:>7.2}  {}",
                if ok { "met" } else { "NOT MET" }
            );
        }
    }
}
