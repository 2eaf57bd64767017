//! Issue 10, acceptance 5: the reference gateway, run as an operator runs it (the binary, the
//! default log level), logs one access line per request, warns about fallbacks, ejections,
//! upstream errors and timeouts naming the target, and never prints a key. With
//! `log_format = "json"` every log line is one JSON object.

mod common;

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{GatewayProcess, ScriptedUpstream};

const VIRTUAL_KEY: &str = "sk-tg-operator-logs-7f3a9c1e5b2d4068";
const WRONG_KEY: &str = "sk-tg-not-a-key-1c9e7a5b3d2f4860";
const UPSTREAM_KEY: &str = "sk-upstream-operator-logs-94e1b7c3a5d2";

fn config(upstream: &str, extra_server: &str) -> String {
    format!(
        r#"
[server]
{extra_server}

[auth]
[[auth.keys]]
name = "ops-team"
sha256 = "{hash}"

[usage]
jsonl = ""

[providers.up]
kind = "openai"
base_url = "{upstream}"
api_key = "${{OPERATOR_LOGS_UPSTREAM_KEY}}"

[models.fb]
targets = [{{ provider = "up", model = "fails" }}, {{ provider = "up", model = "serves" }}]

[models.single]
targets = [{{ provider = "up", model = "flaky" }}]

[models.bad]
targets = [{{ provider = "up", model = "picky" }}]

[models.slow]
timeouts = {{ first_token_ms = 300 }}
targets = [{{ provider = "up", model = "sleepy" }}]
"#,
        hash = tollgate::auth::hash_key(VIRTUAL_KEY),
    )
}

/// The gateway binary at the default level (no `RUST_LOG`), its log (stderr) captured.
struct Run {
    gw: GatewayProcess,
    logs: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn capture(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

impl Run {
    fn start(config: &str) -> Run {
        let mut gw = GatewayProcess::start_with(config, |cmd| {
            cmd.env_remove("RUST_LOG")
                .env("OPERATOR_LOGS_UPSTREAM_KEY", UPSTREAM_KEY)
                .stderr(std::process::Stdio::piped());
        });
        let logs = Arc::new(Mutex::new(String::new()));
        // stdout carries one line, the address, which `start_with` has read
        let readers = vec![capture(gw.child.stderr.take().unwrap(), logs.clone())];
        Run { gw, logs, readers }
    }

    /// Wait (up to 10 s) until `n` access lines were logged.
    fn wait_for_access_lines(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while access_lines(&self.logs.lock().unwrap()).len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the gateway and return everything it wrote.
    fn finish(mut self) -> String {
        let _ = self.gw.child.kill();
        let _ = self.gw.child.wait();
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        self.logs.lock().unwrap().clone()
    }
}

fn access_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.contains(" INFO access ") || l.contains("\"tollgate::access\""))
        .collect()
}

fn body(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
}

const OK_ANSWER: &str = r#"{"id":"c1","object":"chat.completion","created":1,"model":"serves","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#;
const E503: &str =
    r#"{"error":{"message":"overloaded","type":"server_error","code":"overloaded"}}"#;
const E400: &str = r#"{"error":{"message":"bad temperature","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}"#;

/// Send a chat request with the virtual key while the test answers the upstream; returns the
/// status and the request id the gateway gave it.
async fn request_with(
    addr: std::net::SocketAddr,
    model: &str,
    key: &str,
    upstream: impl AsyncFnOnce(),
) -> (u16, String) {
    let auth = format!("Bearer {key}");
    let body = body(model);
    let call = tokio::spawn(async move {
        let res = common::chat(addr, &body, &[("authorization", auth.as_str())]).await;
        let id = res.headers["x-request-id"].to_str().unwrap().to_owned();
        let status = res.status.as_u16();
        let _ = res.rest().await;
        (status, id)
    });
    upstream().await;
    call.await.unwrap()
}

#[tokio::test]
async fn the_default_level_shows_each_request_and_each_failure_but_no_key() {
    let mut up = ScriptedUpstream::start().await;
    let run = Run::start(&config(&up.base_url(), ""));
    let addr = run.gw.addr;
    let mut ids = Vec::new();

    // a fallback: the first target answers 503, the second serves
    let (status, id) = request_with(addr, "fb", VIRTUAL_KEY, async || {
        let ex = up.next().await;
        assert_eq!(ex.json()["model"], "fails");
        assert_eq!(
            ex.headers["authorization"].to_str().unwrap(),
            format!("Bearer {UPSTREAM_KEY}"),
            "the upstream key is in play (and must still never be logged)"
        );
        ex.respond(503, &[("content-type", "application/json")], E503);
        let ex = up.next().await;
        assert_eq!(ex.json()["model"], "serves");
        ex.respond(200, &[("content-type", "application/json")], OK_ANSWER);
    })
    .await;
    assert_eq!(status, 200);
    ids.push(id);

    // an ejection: five 503s in a row from a single-target model (breaker defaults)...
    for _ in 0..5 {
        let (status, id) = request_with(addr, "single", VIRTUAL_KEY, async || {
            up.next()
                .await
                .respond(503, &[("content-type", "application/json")], E503);
        })
        .await;
        assert_eq!(status, 503);
        ids.push(id);
    }
    // ...then the target is skipped without a call
    let (status, id) = request_with(addr, "single", VIRTUAL_KEY, async || {}).await;
    assert_eq!(status, 503);
    ids.push(id);

    // an upstream error the client caused
    let (status, id) = request_with(addr, "bad", VIRTUAL_KEY, async || {
        up.next()
            .await
            .respond(400, &[("content-type", "application/json")], E400);
    })
    .await;
    assert_eq!(status, 400);
    ids.push(id);

    // a timeout: the upstream never answers within the 300 ms first-token deadline
    let (status, id) = request_with(addr, "slow", VIRTUAL_KEY, async || {
        let held = up.next().await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        drop(held);
    })
    .await;
    assert_eq!(status, 504);
    ids.push(id);

    // a refusal: a key that is not one
    let (status, id) = request_with(addr, "fb", WRONG_KEY, async || {}).await;
    assert_eq!(status, 401);
    ids.push(id);

    run.wait_for_access_lines(ids.len());
    let text = run.finish();

    // exactly one access line per request, each with the request's id
    let access = access_lines(&text);
    assert_eq!(
        access.len(),
        ids.len(),
        "one access line per request:\n{text}"
    );
    for id in &ids {
        let n = access.iter().filter(|l| l.contains(id.as_str())).count();
        assert_eq!(n, 1, "request {id} has {n} access lines:\n{text}");
    }
    let line_of = |id: &str| *access.iter().find(|l| l.contains(id)).unwrap();
    let served = line_of(&ids[0]);
    for field in [
        "key=\"ops-team\"",
        "model=\"fb\"",
        "served=up/serves",
        "status=200",
        "attempts=2",
        "ttft_ms=",
        "total_ms=",
        "prompt_tokens=7",
        "completion_tokens=2",
        "outcome=\"success\"",
    ] {
        assert!(served.contains(field), "{field} missing from {served}");
    }
    assert!(line_of(&ids[7]).contains("status=400"), "{text}");
    assert!(line_of(&ids[8]).contains("status=504"), "{text}");
    let refused = line_of(&ids[9]);
    assert!(
        refused.contains("status=401") && !refused.contains("key="),
        "{refused}"
    );

    let warns: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ")).collect();
    let warned = |what: &str, target: &str| {
        warns
            .iter()
            .any(|l| l.contains(what) && l.contains(&format!("target={target}")))
    };
    // the fallback: attempt 1 on up/fails failed with 503, the next target is tried
    assert!(
        warns.iter().any(|l| l.contains("trying the next target")
            && l.contains("target=up/fails")
            && l.contains("status=503")
            && l.contains("attempt=1")),
        "{text}"
    );
    // every failed attempt of the ejected target is named, and so is the ejection
    let flaky = warns
        .iter()
        .filter(|l| l.contains("target=up/flaky") && l.contains("status=503"))
        .count();
    assert_eq!(flaky, 5, "{text}");
    let ejected = warns
        .iter()
        .position(|l| l.contains("ejected"))
        .unwrap_or_else(|| panic!("no ejection line:\n{text}"));
    // the ejection line itself names the target and the breaker
    assert!(
        warns[ejected].contains("target=up/flaky") && warns[ejected].contains("circuit breaker"),
        "{text}"
    );
    // the upstream error: target, status and code
    assert!(
        warns.iter().any(|l| l.contains("upstream error")
            && l.contains("target=up/picky")
            && l.contains("status=400")
            && l.contains("code=")),
        "{text}"
    );
    // nothing at ERROR for answers the access line already tells
    assert!(!text.contains(" ERROR "), "{text}");
    // the timeout: target and which deadline
    assert!(warned("deadline expired", "up/sleepy"), "{text}");
    assert!(text.contains("deadline=\"first_token\""), "{text}");

    // no key anywhere, not even a part of one
    for key in [VIRTUAL_KEY, WRONG_KEY, UPSTREAM_KEY] {
        assert!(!text.contains(key), "a key was logged:\n{text}");
        assert!(
            !text.contains(&key[key.len() - 16..]),
            "part of a key was logged"
        );
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let mut up = ScriptedUpstream::start().await;
    let run = Run::start(&config(&up.base_url(), "log_format = \"json\""));
    let addr = run.gw.addr;
    let (status, id) = request_with(addr, "fb", VIRTUAL_KEY, async || {
        up.next()
            .await
            .respond(503, &[("content-type", "application/json")], E503);
        up.next()
            .await
            .respond(200, &[("content-type", "application/json")], OK_ANSWER);
    })
    .await;
    assert_eq!(status, 200);
    run.wait_for_access_lines(1);
    let text = run.finish();

    // every log line is one JSON object
    let parsed: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access: Vec<&serde_json::Value> = parsed
        .iter()
        .filter(|v| v["target"] == "tollgate::access")
        .collect();
    assert_eq!(access.len(), 1, "{text}");
    let f = &access[0]["fields"];
    assert_eq!(access[0]["level"], "INFO");
    assert_eq!(f["request_id"], id.as_str());
    assert_eq!(f["key"], "ops-team");
    assert_eq!(f["served"], "up/serves");
    assert_eq!(f["status"], 200);
    assert_eq!(f["attempts"], 2);
    assert_eq!(f["prompt_tokens"], 7);
    assert!(f["total_ms"].is_u64(), "{f}");
    let warn = parsed
        .iter()
        .find(|v| v["level"] == "WARN")
        .unwrap_or_else(|| panic!("no warn line:\n{text}"));
    assert_eq!(warn["fields"]["target"], "up/fails");
    assert_eq!(warn["fields"]["status"], 503);
    for key in [VIRTUAL_KEY, UPSTREAM_KEY] {
        assert!(!text.contains(key), "a key was logged:\n{text}");
    }
}
