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

use tokio::net::TcpListener;
use tollgate::config::{Config, DEFAULT_CONFIG};

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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();

    let cfg = match load(args.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cfg.server.workers.filter(|n| *n > 0) {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Config::parse(DEFAULT_CONFIG, "<embedded default>").map_err(|e| e.to_string()),
    }
}

async fn run(args: Args, cfg: Config) -> Result<(), String> {
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

    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
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

    app::serve(app, listener, async {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
    })
    .await;
    Ok(())
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
