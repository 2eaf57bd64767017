//! The reference gateway's runtimes (`[server] workers`, `[server] runtime`): with the default
//! per-core runtime every worker thread has its own listener (`SO_REUSEPORT`) and serves its
//! share of the connections; both runtimes serve every request over real sockets to a real
//! upstream, and SIGTERM lets every worker finish its in-flight streams before the usage
//! records are flushed — one record per request, none lost.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::GatewayProcess;
use tollgate::provider::mock::MockServer;

fn config(upstream: &str, runtime: &str, workers: usize, jsonl: &str) -> String {
    format!(
        r#"
[server]
workers = {workers}
runtime = "{runtime}"

[auth]
enabled = false

[usage]
jsonl = "{jsonl}"

[providers.up]
kind = "openai"
base_url = "{upstream}"

[models.fast]
targets = [{{ provider = "up", model = "ok" }}]

[models.slow]
targets = [{{ provider = "up", model = "ok?chunks=6&delay_ms=100" }}]
"#
    )
}

/// Run time (ns) of each thread of `pid`, by thread name (`/proc/PID/task/TID/schedstat`).
fn thread_run_times(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = t.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0);
        *out.entry(format!("{}#{}", name.trim(), dir.display()))
            .or_insert(0) += ns;
    }
    out
}

fn jsonl_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn load_and_shut_down(runtime: &str, workers: usize) {
    let up = MockServer::start().await.expect("mock");
    let dir =
        std::env::temp_dir().join(format!("tollgate-workers-{runtime}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jsonl = dir.join("usage.jsonl");
    let _ = std::fs::remove_file(&jsonl);
    let mut gw = GatewayProcess::start(&config(
        &up.base_url(),
        runtime,
        workers,
        jsonl.to_str().unwrap(),
    ));
    let pid = gw.pid();

    let before = thread_run_times(pid);
    let names: Vec<&String> = before.keys().collect();
    if runtime == "per-core" {
        for i in 1..workers {
            assert!(
                names
                    .iter()
                    .any(|n| n.starts_with(&format!("tg-worker-{i}#"))),
                "worker thread {i} missing: {names:?}"
            );
        }
    }

    // 60 connections, one request each (non-streaming and streaming), 20 at a time.
    let mut n_requests = 0;
    for batch in 0..3 {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let addr = gw.addr;
            let stream = (batch + i) % 2 == 0;
            tasks.push(tokio::spawn(async move {
                let body = format!(
                    r#"{{"model":"fast","messages":[{{"role":"user","content":"hi {i}"}}],"stream":{stream}}}"#
                );
                let res = common::chat(addr, &body, &[]).await;
                let status = res.status;
                let text = String::from_utf8(res.rest().await.to_vec()).unwrap();
                (status, stream, text)
            }));
        }
        for t in tasks {
            let (status, stream, text) = t.await.unwrap();
            assert_eq!(status, 200, "{text}");
            if stream {
                assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
            } else {
                assert!(text.contains("\"usage\""), "{text}");
            }
            n_requests += 1;
        }
    }

    if runtime == "per-core" {
        // Every worker's listener got connections: each worker thread ran.
        let after = thread_run_times(pid);
        for i in 1..workers {
            let (name, ns) = after
                .iter()
                .find(|(n, _)| n.starts_with(&format!("tg-worker-{i}#")))
                .unwrap();
            let ran = ns - before.get(name).copied().unwrap_or(0);
            assert!(ran > 0, "worker {i} served nothing: {after:?}");
        }
    }

    // In-flight streams on several connections, then SIGTERM once every one has started:
    // every one finishes.
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(8);
    let mut slow = Vec::new();
    for i in 0..8 {
        let addr = gw.addr;
        let started = started_tx.clone();
        slow.push(tokio::spawn(async move {
            let body = format!(
                r#"{{"model":"slow","messages":[{{"role":"user","content":"slow {i}"}}],"stream":true}}"#
            );
            let mut res = common::chat(addr, &body, &[]).await;
            assert_eq!(res.status, 200);
            let first = res.next_data().await.unwrap();
            started.send(()).await.unwrap();
            let rest = res.rest().await;
            String::from_utf8([first.as_ref(), rest.as_ref()].concat()).unwrap()
        }));
    }
    for _ in 0..8 {
        tokio::time::timeout(Duration::from_secs(20), started_rx.recv())
            .await
            .expect("the slow streams did not start")
            .unwrap();
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    for s in slow {
        let text = s.await.unwrap();
        assert!(
            text.ends_with("data: [DONE]\n\n"),
            "stream cut by shutdown: {text}"
        );
        n_requests += 1;
    }
    let status = tokio::task::spawn_blocking(move || gw.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "gateway exit: {status:?}");

    // One record per request, flushed once every worker had finished.
    let records = jsonl_lines(&jsonl);
    assert_eq!(records.len(), n_requests, "usage records");
    assert!(
        records
            .iter()
            .all(|r| r["outcome"] == "success" && r["usage_source"] == "upstream"),
        "{records:?}"
    );
    assert_eq!(up.log().request_count(), n_requests as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_core_workers_each_serve_connections_and_shut_down_gracefully() {
    load_and_shut_down("per-core", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_stealing_runtime_serves_and_shuts_down_gracefully() {
    load_and_shut_down("work-stealing", 2).await;
}

#[test]
fn an_unknown_runtime_is_refused_naming_the_field() {
    let err =
        tollgate::config::Config::parse("[server]\nruntime = \"green-threads\"\n", "bad.toml")
            .expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains("runtime") && msg.contains("bad.toml"), "{msg}");
}

/// `SO_REUSEPORT` lets the workers share one port; a second gateway started on the port of a
/// running one must still fail ("address in use"), not silently share its connections.
#[test]
fn a_second_gateway_on_the_same_port_is_refused() {
    let cfg = "[server]\nworkers = 2\nruntime = \"per-core\"\n[auth]\nenabled = false\n[usage]\njsonl = \"\"\n";
    let first = GatewayProcess::start(cfg);
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("gateway");
    let mut second = std::process::Command::new(&bin)
        .args([
            "--config",
            first.config.to_str().unwrap(),
            "--listen",
            &first.addr.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must exit by itself, with the reason.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second gateway kept running on {}", first.addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("cannot listen on") && err.contains(&first.addr.to_string()),
        "{err}"
    );
}
