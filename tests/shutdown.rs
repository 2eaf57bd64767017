//! Issue 14, acceptance 5: shutdown keeps the contract. The reference binary gets SIGTERM:
//!
//! - streams still running at the end of `[server] drain_ms` each end with the in-band error
//!   event (OpenAI `data: {"error":…}`, Anthropic `event: error`), no `[DONE]`, and each has its
//!   usage record (`stream_error`, `shutting_down`); a stream that finishes within the drain
//!   period finishes normally; no new connection is accepted; the process exits right after;
//! - a half-sent request (headers, part of the body) and an idle keep-alive connection do not
//!   hold the exit: with a 10 s drain period the process is gone in well under a second or two;
//! - requests still waiting for their upstream's answer head at the end of the drain period
//!   (OpenAI and Anthropic faces, stream or not) are answered 503 `shutting_down` with
//!   `Retry-After` in their face, each with its usage record, and the process exits right after;
//! - an idle gateway exits at once.

mod common;

use std::time::{Duration, Instant};

use common::{GatewayProcess, ScriptedUpstream, chat, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FIRST_EVENT: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up-model\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
const LAST_EVENTS: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up-model\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n";

fn config(up: &ScriptedUpstream, drain_ms: u64, jsonl: &std::path::Path) -> String {
    format!(
        r#"
[server]
workers = 2
drain_ms = {drain_ms}
[auth]
enabled = false
[usage]
jsonl = "{}"
[providers.up]
kind = "openai"
base_url = "{}"
api_key = "sk-upstream-secret"
[models.m]
targets = [{{ provider = "up", model = "up-model" }}]
"#,
        jsonl.display(),
        up.base_url()
    )
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tollgate-shutdown-{}-{name}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sigterm(gw: &GatewayProcess) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM failed");
}

/// Wait for the process to exit (fails after `within`); returns how long it took.
async fn exited(gw: &mut GatewayProcess, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "the gateway did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn openai_stream() -> &'static str {
    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_drain_end_in_band_with_a_record_each() {
    let mut up = ScriptedUpstream::start().await;
    let dir = tempdir("streams");
    let jsonl = dir.join("usage.jsonl");
    let mut gw = GatewayProcess::start(&config(&up, 600, &jsonl));
    let addr = gw.addr;
    // Three streams that never end on their own (two OpenAI, one Anthropic ingress) and one
    // that ends within the drain period.
    let mut clients = Vec::new();
    let mut senders = Vec::new();
    for (path, body) in [
        ("/v1/chat/completions", openai_stream()),
        ("/v1/chat/completions", openai_stream()),
        (
            "/v1/messages",
            r#"{"model":"m","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
        ("/v1/chat/completions", openai_stream()),
    ] {
        let client = tokio::spawn(async move {
            let mut res = send(addr, "POST", path, &[], body.to_owned()).await;
            assert_eq!(res.status, 200);
            let first = res.next_data().await.expect("a first event");
            (first, res)
        });
        let tx = up.next().await.respond_stream();
        assert!(tx.send(FIRST_EVENT).await);
        let (first, res) = client.await.unwrap();
        assert!(!first.is_empty());
        clients.push(tokio::spawn(async move {
            let rest = res.rest().await;
            ([first, rest].concat(), Instant::now())
        }));
        senders.push(tx);
    }
    let t = Instant::now();
    sigterm(&gw);
    // The fourth stream finishes within the drain period.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(senders[3].send(LAST_EVENTS).await);
    // No new connection once shutdown began.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a new connection was accepted after SIGTERM"
    );
    exited(&mut gw, Duration::from_secs(5)).await;
    let took = t.elapsed();
    let mut ends = Vec::new();
    for c in clients {
        ends.push(c.await.unwrap());
    }
    eprintln!("exit {took:?} after SIGTERM (drain_ms = 600)");
    // The finished stream: complete.
    let done = String::from_utf8_lossy(&ends[3].0).into_owned();
    assert!(done.ends_with("data: [DONE]\n\n"), "{done}");
    // The long ones: cut at the end of the drain period, in-band.
    for (i, (body, at)) in ends.iter().take(3).enumerate() {
        let text = String::from_utf8_lossy(body);
        let cut_after = at.duration_since(t);
        assert!(
            cut_after >= Duration::from_millis(550),
            "stream {i} ended before the drain period was over ({cut_after:?})"
        );
        assert!(!text.contains("[DONE]"), "{text}");
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        if i == 2 {
            assert!(
                last.starts_with("event: error\ndata: {") && last.contains("shutting down"),
                "Anthropic face: {last}"
            );
        } else {
            assert!(
                last.starts_with("data: {\"error\":") && last.contains("shutting_down"),
                "OpenAI face: {last}"
            );
        }
    }
    assert!(
        took < Duration::from_millis(600 + 1500),
        "exited {took:?} after SIGTERM"
    );
    // One record per request, written before the exit.
    let recs = records(&jsonl);
    assert_eq!(recs.len(), 4, "{recs:?}");
    let cut: Vec<_> = recs
        .iter()
        .filter(|r| r["error_kind"] == "shutting_down")
        .collect();
    assert_eq!(cut.len(), 3, "{recs:?}");
    for r in cut {
        assert_eq!(r["outcome"], "stream_error", "{r}");
        assert_eq!(r["usage_source"], "estimated", "{r}");
    }
    assert_eq!(
        recs.iter().filter(|r| r["outcome"] == "success").count(),
        1,
        "{recs:?}"
    );
    drop(senders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_and_idle_connections_do_not_delay_the_exit() {
    let mut up = ScriptedUpstream::start().await;
    let dir = tempdir("half");
    let jsonl = dir.join("usage.jsonl");
    let mut gw = GatewayProcess::start(&config(&up, 10_000, &jsonl));
    let addr = gw.addr;
    // An idle keep-alive connection: one complete request, then nothing.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    idle.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    up.next().await.respond(
        200,
        &[("content-type", "application/json")],
        r#"{"id":"x","object":"chat.completion","created":1,"model":"up-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#,
    );
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Half-sent requests: the head and part of the body, on two connections.
    let mut halves = Vec::new();
    for _ in 0..2 {
        let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
        half.write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"model\":\"m\",",
        )
        .await
        .unwrap();
        halves.push(half);
    }
    // And one that sent only part of its head.
    let mut head_only = tokio::net::TcpStream::connect(addr).await.unwrap();
    head_only
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-le")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&gw);
    let took = exited(&mut gw, Duration::from_secs(5)).await;
    eprintln!(
        "exit {took:?} after SIGTERM with 1 idle, 2 half-sent and 1 head-only connections (drain_ms = 10000)"
    );
    assert!(
        took < Duration::from_secs(2),
        "half-sent or idle connections held the exit for {took:?}"
    );
    // The half-sent requests were answered 503 (shutting down), then closed.
    for mut half in halves {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), half.read_to_end(&mut got)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.contains("shutting_down"), "{text}");
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), head_only.read_to_end(&mut got)).await;
    // The idle connection was closed.
    let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_exits_at_once() {
    let mut up = ScriptedUpstream::start().await;
    let dir = tempdir("idle");
    let jsonl = dir.join("usage.jsonl");
    let mut gw = GatewayProcess::start(&config(&up, 10_000, &jsonl));
    // One request served and finished, so there is something to flush.
    let call = tokio::spawn({
        let addr = gw.addr;
        async move { chat(addr, openai_stream(), &[]).await.rest().await }
    });
    let tx = up.next().await.respond_stream();
    tx.send(FIRST_EVENT).await;
    tx.send(LAST_EVENTS).await;
    drop(tx);
    assert!(call.await.unwrap().ends_with(b"data: [DONE]\n\n"));
    sigterm(&gw);
    let took = exited(&mut gw, Duration::from_secs(5)).await;
    eprintln!("idle exit {took:?} after SIGTERM (drain_ms = 10000)");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let recs = records(&jsonl);
    assert_eq!(recs.len(), 1, "flushed before the exit: {recs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_the_upstream_get_503_at_the_drain_end() {
    let mut up = ScriptedUpstream::start().await;
    let dir = tempdir("stalled");
    let jsonl = dir.join("usage.jsonl");
    let mut gw = GatewayProcess::start(&config(&up, 600, &jsonl));
    let addr = gw.addr;
    let anthropic = r#"{"model":"m","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    let requests = [
        ("/v1/chat/completions", openai_stream()),
        (
            "/v1/chat/completions",
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        ),
        ("/v1/messages", anthropic),
    ];
    // Each reaches the upstream, which never answers: no head, no byte.
    let mut clients = Vec::new();
    let mut stalled = Vec::new();
    for (path, body) in requests {
        clients.push(tokio::spawn(async move {
            let res = send(addr, "POST", path, &[], body.to_owned()).await;
            let (status, headers) = (res.status, res.headers.clone());
            let body = res.rest().await;
            (status, headers, body, Instant::now())
        }));
        stalled.push(up.next().await);
    }
    let t = Instant::now();
    sigterm(&gw);
    exited(&mut gw, Duration::from_secs(5)).await;
    let took = t.elapsed();
    eprintln!("exit {took:?} after SIGTERM with 3 requests waiting upstream (drain_ms = 600)");
    for (i, c) in clients.into_iter().enumerate() {
        let (status, headers, body, at) = c.await.unwrap();
        let answered = at.duration_since(t);
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        assert_eq!(headers["retry-after"], "1");
        assert!(
            answered >= Duration::from_millis(550) && answered < Duration::from_millis(600 + 500),
            "request {i} answered {answered:?} after SIGTERM, the drain period is 600 ms"
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if i == 2 {
            assert_eq!(v["type"], "error", "Anthropic face: {v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains("shutting down"), "{v}");
        } else {
            assert_eq!(v["error"]["code"], "shutting_down", "OpenAI face: {v}");
        }
    }
    assert!(
        took < Duration::from_millis(600 + 1000),
        "exited {took:?} after SIGTERM"
    );
    let recs = records(&jsonl);
    assert_eq!(
        recs.len(),
        3,
        "one record each, written before the exit: {recs:?}"
    );
    for r in &recs {
        assert_eq!(r["status"], 503, "{r}");
        assert_eq!(r["error_kind"], "shutting_down", "{r}");
    }
    drop(stalled);
}
