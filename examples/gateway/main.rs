//! The reference gateway: an OpenAI-compatible endpoint in front of many providers. The stack,
//! hot reload and the operational endpoints are the library's (`tollgate::gateway`); this
//! binary adds its arguments, the runtime and worker threads, the sockets and the Prometheus
//! exporter.
//!
//! Without `--config` it runs on the embedded default (mock models, no API key needed; real
//! providers switch on when their key variables are set). SIGHUP reloads the config file;
//! SIGTERM / ctrl-c shut down gracefully (in-flight requests finish, usage records are flushed).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tollgate::config::{Config, DEFAULT_CONFIG, LogFormat, RuntimeKind};
use tollgate::ext::DrainControl;
use tollgate::gateway::{Gateway, Reloader, serve_with};

const HELP: &str = "\
tollgate reference gateway: one OpenAI-compatible endpoint in front of many providers

usage: gateway [OPTIONS]

options:
  -c, --config FILE           the TOML config (default: the embedded one; SIGHUP reloads FILE)
  -l, --listen ADDR           listen address, e.g. 127.0.0.1:8080 (wins over [server] listen)
      --print-config          print the embedded default config and exit
      --hash-key KEY          print the sha256 of a virtual key for [[auth.keys]] and exit
      --spend-report [QUERY]  sum spend by key, model and day from the usage records, as JSON
                              (QUERY: e.g. key=team-a&model=gpt-4o&from=2026-01-01)
  -h, --help                  print this help and exit

environment: RUST_LOG sets the log filter (default: info).";

#[derive(Debug, Default)]
struct Args {
    config: Option<PathBuf>,
    listen: Option<String>,
    print_config: bool,
    hash_key: Option<String>,
    spend_report: Option<String>,
    help: bool,
}

fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = Args::default();
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('c') | Long("config") => args.config = Some(parser.value()?.into()),
            Short('l') | Long("listen") => args.listen = Some(parser.value()?.string()?),
            Long("print-config") => args.print_config = true,
            Long("hash-key") => args.hash_key = Some(parser.value()?.string()?),
            Long("spend-report") => {
                // the query is optional: `--spend-report=Q`, or the next word unless it is a flag
                let query = match parser.optional_value() {
                    Some(v) => Some(v),
                    None => parser
                        .try_raw_args()
                        .and_then(|mut raw| raw.next_if(|a| !a.to_string_lossy().starts_with('-'))),
                };
                args.spend_report =
                    Some(query.map(|q| q.string()).transpose()?.unwrap_or_default());
            }
            Short('h') | Long("help") => args.help = true,
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if args.print_config {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    if let Some(key) = &args.hash_key {
        println!("{}", tollgate::auth::hash_key(key));
        return ExitCode::SUCCESS;
    }
    if let Some(query) = &args.spend_report {
        return spend_report(args.config.as_ref(), query);
    }
    let cfg = match load(args.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logs(cfg.server.log_format.unwrap_or_default());
    match start(args, cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines on stderr at `RUST_LOG` (default `info`): text, or one JSON object per line.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_target(false).init(),
        LogFormat::Json => logs.json().init(),
    }
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Config::parse(DEFAULT_CONFIG, "<embedded default>").map_err(|e| e.to_string()),
    }
}

/// The runtime `[server] runtime` and `workers` ask for, then [`run`] on it.
fn start(args: Args, cfg: Config) -> Result<(), String> {
    let workers = cfg
        .server
        .workers
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let kind = cfg.server.runtime.unwrap_or_default();
    let mut builder = match kind {
        RuntimeKind::PerCore => tokio::runtime::Builder::new_current_thread(),
        RuntimeKind::WorkStealing => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(workers);
            b
        }
    };
    let rt = builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let extra = match kind {
        RuntimeKind::PerCore => workers - 1,
        RuntimeKind::WorkStealing => 0,
    };
    rt.block_on(run(args, cfg, extra))
}

/// Install the Prometheus recorder: histograms with buckets (not the default summaries, which
/// do more work per sample), upkeep every 5 s.
fn install_prometheus() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    use metrics_exporter_prometheus::Matcher;
    use tollgate::metrics as m;
    let seconds = [
        0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ];
    let tokens = [
        1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
    ];
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&seconds)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(m::TOKEN_USAGE.to_owned()), &tokens))
        .map_err(|e| format!("metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))?;
    let p = prometheus.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            p.run_upkeep();
        }
    });
    Ok(prometheus)
}

/// Serve on the current runtime plus `extra` more threads, each with its own single-threaded
/// runtime and its own listening socket on the same address (`SO_REUSEPORT`).
async fn run(args: Args, cfg: Config, extra: usize) -> Result<(), String> {
    let prometheus = install_prometheus()?;
    // Every client connection is a descriptor: the soft limit (often 1024) goes up to the hard
    // one, and `[server] max_connections` defaults to what it leaves room for.
    if let Some(n) = tollgate::gateway::raise_nofile_limit() {
        tracing::debug!(nofile = n, "open-file limit");
    }
    let listen = args
        .listen
        .clone()
        .or_else(|| cfg.server.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    let (gateway, reloader) = Gateway::builder(&cfg)
        .metrics(move || prometheus.render())
        .build()
        .await
        .map_err(|e| e.to_string())?;

    // SIGHUP is handled before the address is printed: whoever waits for that line may reload.
    #[cfg(unix)]
    reload_on_sighup(reloader, args.config.clone())?;
    #[cfg(not(unix))]
    drop(reloader);

    let (listener, local) = listen_on(addr, extra > 0)?;
    // The other workers: one thread, one runtime, one listener each; all stop on one signal.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut finished = Vec::with_capacity(extra);
    for i in 1..=extra {
        finished.push(spawn_worker(i, local, &gateway, stop_rx.clone())?);
    }
    println!("tollgate listening on http://{local}");
    gateway.warn_if_exposed(local);
    if let Some(admin) = &cfg.server.admin_listen {
        let admin = serve_admin(admin, &gateway, stop_rx.clone()).await?;
        println!("tollgate admin on http://{admin}");
    }
    let models = gateway.model_names();
    tracing::info!(?models, "serving {} models", models.len());

    let opts = gateway.serve_options();
    let drain = gateway.drain_control();
    let shutdown = async {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
    };
    serve_with(listener, gateway.clone(), shutdown, &opts, drain).await;
    for done in finished {
        let _ = done.await;
    }
    gateway.flush().await;
    Ok(())
}

/// Worker `i`: its own thread, runtime and listener on `local`; the receiver fires when it
/// has finished its in-flight requests.
fn spawn_worker(
    i: usize,
    local: SocketAddr,
    gateway: &Gateway,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::sync::oneshot::Receiver<()>, String> {
    let (socket, _) = bind(local, true)?;
    let gateway = gateway.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("tg-worker-{i}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start a worker runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match socket.listen(LISTEN_BACKLOG) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot listen on {local}: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let opts = gateway.serve_options();
                let drain = gateway.drain_control();
                let stop = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                serve_with(listener, gateway, stop, &opts, drain).await;
            });
            let _ = done_tx.send(());
        })
        .map_err(|e| format!("cannot start a worker thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "a worker thread died at start".to_owned())??;
    Ok(done_rx)
}

/// `[server] admin_listen`: `/healthz` and `/metrics` on their own listener, with the
/// connection discipline of `[server]` (header read and idle timeouts, header limits) and a
/// connection cap of its own.
async fn serve_admin(
    addr: &str,
    gateway: &Gateway,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<SocketAddr, String> {
    let fail = |e: &dyn std::fmt::Display| format!("[server] admin_listen {addr}: {e}");
    let addr: SocketAddr = addr.parse().map_err(|e| fail(&e))?;
    let listener = TcpListener::bind(addr).await.map_err(|e| fail(&e))?;
    let local = listener.local_addr().map_err(|e| fail(&e))?;
    let admin = gateway.admin();
    let opts = gateway.admin_serve_options();
    // Its own drain: the admin answers are immediate, and its loop must not move the LLM
    // requests' drain.
    let drain = DrainControl::new(gateway.drain_control().period());
    tokio::spawn(async move {
        let stop = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        serve_with(listener, admin, stop, &opts, drain).await;
    });
    Ok(local)
}

/// SIGHUP: reload the config file; a refused file keeps the old config, and says why.
#[cfg(unix)]
fn reload_on_sighup(reloader: Reloader, path: Option<PathBuf>) -> Result<(), String> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(p) = path.as_ref() else {
                tracing::warn!("SIGHUP: no --config file to reload");
                continue;
            };
            match reloader.reload_file(p) {
                Ok(()) => tracing::info!(file = %p.display(), "config reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "config reload refused; the old config stays")
                }
            }
        }
    });
    Ok(())
}

const LISTEN_BACKLOG: u32 = 1024;

/// A socket bound to `addr`, with `SO_REUSEPORT` when several workers share the address.
fn bind(addr: SocketAddr, reuse_port: bool) -> Result<(TcpSocket, SocketAddr), String> {
    let fail = |e: std::io::Error| format!("cannot listen on {addr}: {e}");
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    #[cfg(all(unix, not(target_os = "solaris"), not(target_os = "illumos")))]
    if reuse_port {
        socket.set_reuseport(true).map_err(fail)?;
    }
    #[cfg(not(all(unix, not(target_os = "solaris"), not(target_os = "illumos"))))]
    let _ = reuse_port;
    socket.bind(addr).map_err(fail)?;
    let local = socket.local_addr().map_err(fail)?;
    Ok((socket, local))
}

/// The first worker's listener, and the address it got (port 0 resolves here; the other
/// workers bind the resolved port).
fn listen_on(addr: SocketAddr, reuse_port: bool) -> Result<(TcpListener, SocketAddr), String> {
    if reuse_port && addr.port() != 0 {
        // With SO_REUSEPORT a second gateway started on the same port by mistake would share
        // its connections instead of failing. A plain bind first keeps "address in use".
        drop(bind(addr, false)?);
    }
    let (socket, local) = bind(addr, reuse_port)?;
    let listener = socket
        .listen(LISTEN_BACKLOG)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    Ok((listener, local))
}

/// Sum spend and tokens by key, model and day from the usage records (the PostgreSQL table when
/// `[usage.postgres]` is configured and built in, else the JSON-lines file), as JSON on stdout.
fn spend_report(config: Option<&PathBuf>, query: &str) -> ExitCode {
    let run = || -> Result<serde_json::Value, String> {
        let cfg = load(config)?;
        let q = tollgate::pricing::SpendQuery::from_query_string(query)?;
        #[cfg(feature = "postgres")]
        if let Some(pg) =
            tollgate::sink::postgres::PostgresSinkConfig::from_config(&cfg.usage, &cfg.source)
                .map_err(|e| e.to_string())?
        {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let report = rt
                .block_on(tollgate::sink::postgres::spend_report_url(&pg, &q))
                .map_err(|e| e.to_string())?;
            return serde_json::to_value(report).map_err(|e| e.to_string());
        }
        let path = cfg
            .usage
            .jsonl
            .clone()
            .filter(|p| !p.is_empty())
            .ok_or("no usage records configured ([usage] jsonl)")?;
        tollgate::pricing::spend_report_jsonl_json(&path, &q).map_err(|e| format!("{path}: {e}"))
    };
    match run() {
        Ok(v) => {
            println!("{v:#}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
