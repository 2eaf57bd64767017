//! Issue 3, acceptance 7: SIGHUP reloads the route table of a running gateway process while
//! requests are in flight, and no request fails; a bad config is refused and the old one stays.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn gateway_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join("gateway")
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(prompt: u32) -> String {
    format!(
        r#"
[auth]
enabled = false
[usage]
jsonl = ""
[providers.mock]
kind = "mock"
[models.m]
targets = [{{ provider = "mock", model = "ok?prompt={prompt}&chunks=3&delay_ms=30" }}]
"#
    )
}

fn sighup(pid: u32) {
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

async fn one(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    url: &str,
    stream: bool,
) -> Result<u64, String> {
    use http_body_util::BodyExt;
    let body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"stream":{stream},"stream_options":{{"include_usage":true}}}}"#
    );
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let res = client.request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    if stream && !text.ends_with("data: [DONE]\n\n") {
        return Err(format!("stream did not finish: {text}"));
    }
    // prompt_tokens tells which route served
    let i = text.find("\"prompt_tokens\":").ok_or("no usage")?;
    let n: String = text[i + 16..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    n.parse().map_err(|_| "bad usage".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_routes_under_load_without_failing_a_request() {
    let bin = gateway_bin();
    assert!(bin.exists(), "{} not built", bin.display());
    let dir = std::env::temp_dir().join(format!("tollgate-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gw.toml");
    std::fs::write(&cfg, config(100)).unwrap();
    let mut child = Command::new(&bin)
        .args(["--config", cfg.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let _guard = Proc(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_owned();
    let url = format!("http://{addr}/v1/chat/completions");

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let stop = Arc::new(AtomicBool::new(false));
    let ok_old = Arc::new(AtomicU64::new(0));
    let ok_new = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (client, url, stop, ok_old, ok_new) = (
            client.clone(),
            url.clone(),
            stop.clone(),
            ok_old.clone(),
            ok_new.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 400 {
                n += 1;
                match one(&client, &url, i % 2 == 0).await {
                    Ok(100) => ok_old.fetch_add(1, Ordering::Relaxed),
                    Ok(200) => ok_new.fetch_add(1, Ordering::Relaxed),
                    Ok(other) => {
                        failures.push(format!("unexpected prompt_tokens {other}"));
                        0
                    }
                    Err(e) => {
                        failures.push(e);
                        0
                    }
                };
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    // A bad config is refused: the old routes stay.
    std::fs::write(&cfg, "[models.m]\ntargets = []\nbogus = 1\n").unwrap();
    sighup(pid);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(ok_new.load(Ordering::Relaxed), 0);
    let before = ok_old.load(Ordering::Relaxed);
    assert!(before > 0);
    // A good one is taken, mid-load.
    std::fs::write(&cfg, config(200)).unwrap();
    sighup(pid);
    for _ in 0..100 {
        if ok_new.load(Ordering::Relaxed) >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "requests failed across the reload: {failures:?}"
    );
    assert!(
        ok_old.load(Ordering::Relaxed) > before,
        "old route served while the bad config was refused"
    );
    assert!(
        ok_new.load(Ordering::Relaxed) >= 20,
        "the new route serves after SIGHUP"
    );
}

fn keyed(key: &str) -> String {
    format!(
        r#"
[auth]
enabled = true
[[auth.keys]]
name = "k"
sha256 = "{}"
[usage]
jsonl = ""
[providers.mock]
kind = "mock"
[models.m]
targets = [{{ provider = "mock", model = "ok" }}]
"#,
        tollgate::auth::hash_key(key)
    )
}

#[tokio::test]
async fn a_reload_replaces_the_virtual_keys_and_cannot_switch_auth_off() {
    let gw = common::Gateway::start(&keyed("sk-old")).await;
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let status = |key: &'static str| {
        let addr = gw.addr;
        async move {
            let auth = format!("Bearer {key}");
            let r = common::chat(addr, body, &[("authorization", auth.as_str())]).await;
            let s = r.status.as_u16();
            r.rest().await;
            s
        }
    };
    assert_eq!(status("sk-old").await, 200);
    assert_eq!(status("sk-new").await, 401);
    let new = tollgate::config::Config::parse(&keyed("sk-new"), "new.toml").unwrap();
    gw.reloader.reload(&new).unwrap();
    assert_eq!(
        status("sk-old").await,
        401,
        "the old key is gone after the reload"
    );
    assert_eq!(
        status("sk-new").await,
        200,
        "the new key works after the reload"
    );
    // switching auth off is refused; the keys stay
    let off = tollgate::config::Config::parse(
        "[auth]\nenabled = false\n[providers.mock]\nkind = \"mock\"\n[models.m]\ntargets = [{ provider = \"mock\", model = \"ok\" }]\n",
        "off.toml",
    )
    .unwrap();
    let e = gw.reloader.reload(&off).unwrap_err().to_string();
    assert!(e.contains("auth.enabled"), "{e}");
    assert_eq!(status("sk-old").await, 401);
    assert_eq!(status("sk-new").await, 200);
}
