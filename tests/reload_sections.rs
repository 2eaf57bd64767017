//! Issue 11, acceptance 4, and issue 14, acceptance 4: SIGHUP applies every section a reload
//! can (limits, per-key budgets, the usage file) under load, refuses what needs a restart by
//! name, and refuses files that would take the gateway down (empty, truncated, binary, no keys,
//! no models, a syntax error on a line holding a secret) without echoing the file's content —
//! and no request of the load running throughout fails.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{GatewayProcess, chat};

const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":6}"#;

struct Config<'a> {
    rpm: u64,
    budget: f64,
    jsonl: &'a str,
    listen: Option<&'a str>,
}

impl Config<'_> {
    fn toml(&self) -> String {
        let listen = self
            .listen
            .map(|l| format!("[server]\nlisten = \"{l}\"\n"))
            .unwrap_or_default();
        format!(
            r#"{listen}
[auth]
enabled = true
[[auth.keys]]
name = "loader"
sha256 = "{loader}"
[[auth.keys]]
name = "budgeted"
sha256 = "{budgeted}"
budget_usd_day = {budget}
[limits.global]
rpm = {rpm}
[usage]
jsonl = "{jsonl}"
[providers.mock]
kind = "mock"
[models.m]
targets = [{{ provider = "mock", model = "ok?delay_ms=2", price = {{ input = 100.0, output = 100.0 }} }}]
"#,
            loader = tollgate::auth::hash_key("sk-loader"),
            budgeted = tollgate::auth::hash_key("sk-budgeted"),
            budget = self.budget,
            rpm = self.rpm,
            jsonl = self.jsonl,
        )
    }
}

/// A bounded client loop (4 tasks, at most 2,000 requests each and 60 s) with the loader key:
/// every answer must be 200 or, with `allow_429`, 429; anything else (a 5xx, a connection
/// error) is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    limited: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, allow_429: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let limited = Arc::new(AtomicU64::new(0));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let tasks = (0..4)
            .map(|_| {
                let (stop, ok, limited, client) =
                    (stop.clone(), ok.clone(), limited.clone(), client.clone());
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut failures = Vec::new();
                    for _ in 0..2000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        match one(&client, addr).await {
                            Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                            Ok(429) if allow_429 => limited.fetch_add(1, Ordering::Relaxed),
                            Ok(s) => {
                                failures.push(format!("status {s}"));
                                0
                            }
                            Err(e) => {
                                failures.push(e);
                                0
                            }
                        };
                    }
                    failures
                })
            })
            .collect();
        Load {
            stop,
            ok,
            limited,
            tasks,
        }
    }

    /// Stop, and return (successes, 429s, failures).
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for t in self.tasks {
            failures.extend(t.await.unwrap());
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.limited.load(Ordering::Relaxed),
            failures,
        )
    }
}

async fn one(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    addr: std::net::SocketAddr,
) -> Result<u16, String> {
    use http_body_util::BodyExt;
    let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-loader")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            BODY.as_bytes(),
        )))
        .unwrap();
    let res = client.request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    res.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

/// One request with `key`: status, x-request-id, body.
async fn call(addr: std::net::SocketAddr, key: &str) -> (u16, String, serde_json::Value) {
    let auth = format!("Bearer {key}");
    let r = chat(addr, BODY, &[("authorization", auth.as_str())]).await;
    let status = r.status.as_u16();
    let id = r
        .headers
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, id, r.json().await)
}

/// Poll `f` every 50 ms for up to 10 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 10 s: {what}");
}

fn refusals(gw: &GatewayProcess) -> usize {
    gw.log_text().matches("config reload refused").count()
}

fn file_has(path: &std::path::Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_lowers_rpm_and_budget_and_switches_the_usage_file_under_load() {
    let dir = std::env::temp_dir().join(format!("tollgate-reload-sections-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (u1, u2) = (dir.join("u1.jsonl"), dir.join("u2.jsonl"));
    let _ = (std::fs::remove_file(&u1), std::fs::remove_file(&u2));
    let (u1s, u2s) = (u1.to_str().unwrap(), u2.to_str().unwrap());
    let mut cfg = Config {
        rpm: 1_000_000,
        budget: 10.0,
        jsonl: u1s,
        listen: None,
    };
    let gw = GatewayProcess::start_logged(&cfg.toml(), "info");
    let load = Load::start(gw.addr, true);

    // The budgeted key spends: 5 x 17 tokens at $100/M = $0.0085.
    let mut first_id = String::new();
    for _ in 0..5 {
        let (status, id, body) = call(gw.addr, "sk-budgeted").await;
        assert_eq!(status, 200, "{body}");
        first_id = id;
    }
    eventually("records in the first usage file", || async {
        file_has(&u1, &first_id)
    })
    .await;

    // 1. The usage file: new records go to the new file.
    cfg.jsonl = u2s;
    std::fs::write(&gw.config, cfg.toml()).unwrap();
    gw.sighup();
    let deadline = Instant::now() + Duration::from_secs(10);
    let moved = loop {
        assert!(
            Instant::now() < deadline,
            "no record in the new usage file in 10 s"
        );
        let (status, id, _) = call(gw.addr, "sk-loader").await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if file_has(&u2, &id) {
            break id;
        }
    };
    assert!(
        !file_has(&u1, &moved),
        "a record after the switch went to the old file"
    );

    // 2. The budget: the key has spent $0.0085; a budget of $0.005 refuses it.
    cfg.budget = 0.005;
    std::fs::write(&gw.config, cfg.toml()).unwrap();
    gw.sighup();
    eventually("the lowered budget refuses the key", || async {
        let (status, _, body) = call(gw.addr, "sk-budgeted").await;
        status == 429 && body["error"]["code"] == "budget_exceeded"
    })
    .await;
    let (status, _, body) = call(gw.addr, "sk-loader").await;
    assert!(status == 200 || status == 429, "{body}");

    // 3. The global rpm: lowered to 1, the gateway refuses everyone with 429.
    cfg.rpm = 1;
    std::fs::write(&gw.config, cfg.toml()).unwrap();
    gw.sighup();
    eventually("the lowered global rpm answers 429", || async {
        let (status, _, body) = call(gw.addr, "sk-loader").await;
        let msg = body["error"]["message"].as_str().unwrap_or("").to_owned();
        status == 429 && msg.contains("the gateway") && msg.contains("1 requests per minute")
    })
    .await;

    // 4. `listen` needs a restart: refused by name; the old config stays.
    let before = refusals(&gw);
    cfg.listen = Some("127.0.0.1:1");
    std::fs::write(&gw.config, cfg.toml()).unwrap();
    gw.sighup();
    eventually("the listen change is refused", || async {
        refusals(&gw) > before
    })
    .await;
    let log = gw.log_text();
    let line = log
        .lines()
        .rfind(|l| l.contains("config reload refused"))
        .unwrap();
    assert!(line.contains("server.listen"), "{line}");
    // the old config (rpm 1) stays: at most one request a minute passes
    let mut limited_now = 0;
    for _ in 0..3 {
        limited_now += usize::from(call(gw.addr, "sk-loader").await.0 == 429);
    }
    assert!(limited_now >= 2, "the old config (rpm 1) stays");

    let (ok, limited, failures) = load.finish().await;
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    eprintln!("load: {ok} served, {limited} refused with 429, 0 failed");
    assert!(ok > 20 && limited > 0, "ok {ok}, 429 {limited}");
    assert_eq!(
        refusals(&gw),
        1,
        "only the listen change was refused:\n{log}"
    );
}

const SECRET: &str = "sk-live-TOPSECRET-8d1f";

fn keyed(model: &str) -> String {
    format!(
        r#"[auth]
enabled = true
[[auth.keys]]
name = "loader"
sha256 = "{}"
[usage]
jsonl = ""
[providers.mock]
kind = "mock"
[models.m]
targets = [{{ provider = "mock", model = "ok" }}]
[models.{model}]
targets = [{{ provider = "mock", model = "ok" }}]
"#,
        tollgate::auth::hash_key("sk-loader")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_are_refused_under_load_and_no_secret_is_echoed() {
    let good = keyed("spare");
    let gw = GatewayProcess::start_logged(&good, "info");
    let load = Load::start(gw.addr, false);
    let cut = good.find("[models.m]").unwrap() + 12;
    let no_keys = good.replace(
        &good[..good.find("[usage]").unwrap()],
        "[auth]\nenabled = true\n",
    );
    let no_auth_section = good[good.find("[usage]").unwrap()..].to_owned();
    let no_models = good[..good.find("[models.m]").unwrap()].to_owned();
    let mut binary: Vec<u8> = good.as_bytes()[..40].to_vec();
    binary.extend([0xff, 0xfe, 0x00, 0x9c, 0x00, 0x01, 0x80]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "empty"),
        ("truncated", good.as_bytes()[..cut].to_vec(), "line"),
        ("binary", binary, "binary data"),
        ("no keys", no_keys.into_bytes(), "auth.keys"),
        (
            "no [auth] section",
            no_auth_section.into_bytes(),
            "auth.keys",
        ),
        ("no models", no_models.into_bytes(), "models"),
        (
            "a syntax error on a secret's line",
            format!("{good}[providers.o]\nkind = \"openai\"\napi_key = \"{SECRET}\" x\n")
                .into_bytes(),
            "api_key",
        ),
        (
            "an unquoted secret",
            format!("{good}[providers.o]\nkind = \"openai\"\napi_key = {SECRET}\n").into_bytes(),
            "api_key",
        ),
        (
            "a secret in a field of the wrong type",
            format!("[server]\nworkers = \"{SECRET}\"\n{good}").into_bytes(),
            "workers",
        ),
    ];
    for (i, (what, bytes, names)) in cases.iter().enumerate() {
        std::fs::write(&gw.config, bytes).unwrap();
        gw.sighup();
        eventually(what, || async { refusals(&gw) > i }).await;
        let log = gw.log_text();
        let line = log
            .lines()
            .filter(|l| l.contains("config reload refused"))
            .nth(i)
            .unwrap();
        assert!(line.contains(names), "{what}: {line}");
        eprintln!("{what}: {line}");
    }
    // A good file still applies after all that.
    std::fs::write(&gw.config, keyed("fresh")).unwrap();
    gw.sighup();
    eventually("the good file applies", || async {
        let body = r#"{"model":"fresh","messages":[{"role":"user","content":"hi"}]}"#;
        let r = chat(gw.addr, body, &[("authorization", "Bearer sk-loader")]).await;
        let ok = r.status == 200;
        r.rest().await;
        ok
    })
    .await;

    let (ok, _, failures) = load.finish().await;
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    eprintln!("load: {ok} served, 0 failed");
    assert!(ok > 20, "{ok} requests served");
    let log = gw.log_text();
    assert!(
        !log.contains("TOPSECRET"),
        "a secret reached the log:\n{log}"
    );
    assert_eq!(refusals(&gw), cases.len(), "{log}");
}
