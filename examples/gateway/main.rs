//! The reference gateway: an OpenAI-compatible endpoint in front of many providers, assembled
//! from tollgate's layers (the stack is spelled out in `app.rs`).
//!
//! ```text
//! gateway [--config FILE] [--listen ADDR] [--print-config] [--hash-key KEY]
//! ```
//! Without `--config` it runs on the embedded default (mock models, no API key needed; real
//! providers switch on when their key variables are set). SIGHUP reloads the config file;
//! SIGTERM / ctrl-c shut down gracefully (in-flight requests finish, usage records are flushed).

mod app;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tollgate::config::{Config, DEFAULT_CONFIG, LogFormat, RuntimeKind};

struct Args {
    config: Option<PathBuf>,
    listen: Option<String>,
    print_config: bool,
    hash_key: Option<String>,
    spend_report: Option<String>,
}

const USAGE: &str =
    "usage: gateway [--config FILE] [--listen ADDR] [--print-config] [--hash-key KEY]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: None,
        listen: None,
        print_config: false,
        hash_key: None,
        spend_report: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--config" | "-c" => args.config = Some(PathBuf::from(value("--config")?)),
            "--listen" | "-l" => args.listen = Some(value("--listen")?),
            "--print-config" => args.print_config = true,
            "--hash-key" => args.hash_key = Some(value("--hash-key")?),
            "--spend-report" => {
                // the query is optional: take the next word unless it is another flag
                args.spend_report = Some(inline.clone().unwrap_or_default());
            }
            q if args.spend_report.as_deref() == Some("") && !q.starts_with("--") => {
                args.spend_report = Some(q.to_owned());
            }
            "--help" | "-h" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
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
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let extra = match kind {
        RuntimeKind::PerCore => workers - 1,
        RuntimeKind::WorkStealing => 0,
    };
    match rt.block_on(run(args, cfg, extra)) {
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

/// Serve on the current runtime plus `extra` more threads, each with its own single-threaded
/// runtime and its own listening socket on the same address (`SO_REUSEPORT`).
async fn run(args: Args, cfg: Config, extra: usize) -> Result<(), String> {
    // Histograms with buckets (not the default summaries, which do more work per sample).
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
    {
        let p = prometheus.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                p.run_upkeep();
            }
        });
    }

    let listen = args
        .listen
        .clone()
        .or_else(|| cfg.server.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    let app = Arc::new(
        app::App::build(&cfg, Some(prometheus))
            .await
            .map_err(|e| e.to_string())?,
    );

    let (listener, local) = listen_on(addr, extra > 0)?;
    // The other workers: one thread, one runtime, one listener each; all stop on one signal.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut finished = Vec::with_capacity(extra);
    for i in 1..=extra {
        let (socket, _) = bind(local, true)?;
        let app = app.clone();
        let mut stop = stop_rx.clone();
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
                    app::serve_connections(&app, listener, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
                });
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "a worker thread died at start".to_owned())??;
        finished.push(done_rx);
    }
    println!("tollgate listening on http://{local}");
    tracing::info!(models = ?app.model_names(), "serving {} models", app.model_names().len());

    #[cfg(unix)]
    {
        // SIGHUP: reload the config file; a bad file is refused and the old config stays.
        let app = app.clone();
        let path = args.config.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match path.as_ref() {
                    None => tracing::warn!("SIGHUP: no --config file to reload"),
                    Some(p) => match load(Some(p))
                        .and_then(|c| app.reload(&c).map_err(|e| e.to_string()))
                    {
                        Ok(()) => tracing::info!(file = %p.display(), "config reloaded"),
                        Err(e) => {
                            tracing::error!(error = %e, "config reload refused; the old config stays")
                        }
                    },
                }
            }
        });
    }

    app::serve_connections(&app, listener, async {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
    })
    .await;
    for done in finished {
        let _ = done.await;
    }
    app.flush().await;
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
