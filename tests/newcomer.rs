//! Issue 2, acceptance 4: a newcomer runs the README's first command (the gateway on its
//! embedded defaults, no config, no API key) and gets a streamed answer with one request.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};

#[tokio::test]
async fn the_embedded_default_streams_a_mock_answer_with_no_key() {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("gateway");
    let dir = std::env::temp_dir().join(format!("tollgate-newcomer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(&bin)
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(&dir)
        .env_remove("OPENAI_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap()
        .parse()
        .unwrap();

    // the README's curl
    let mut res = common::chat(
        addr,
        r#"{"model":"mock","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        &[],
    )
    .await;
    assert_eq!(res.status, 200);
    assert!(
        res.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let first = res.next_data().await.unwrap();
    assert!(first.starts_with(b"data: {"), "{first:?}");
    let rest = res.rest().await;
    let all = [first.as_ref(), rest.as_ref()].concat();
    let text = String::from_utf8(all).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(
        text.matches("data: {").count() >= 8,
        "8 content chunks and a finish chunk: {text}"
    );

    // the models it advertises
    let models = common::send(addr, "GET", "/v1/models", &[], "")
        .await
        .json()
        .await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"mock") && ids.contains(&"mock-fallback"),
        "{ids:?}"
    );

    // SIGTERM: a graceful exit that flushes the usage record of the request above
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let usage = std::fs::read_to_string(dir.join("tollgate-usage.jsonl")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(usage.lines().next().unwrap()).unwrap();
    assert_eq!(rec["model"], "mock");
    assert_eq!(rec["outcome"], "success");
    assert_eq!(rec["usage_source"], "upstream");

    // --print-config prints the embedded default, a valid starting point
    let out = Command::new(&bin).arg("--print-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, tollgate::config::DEFAULT_CONFIG);
    tollgate::config::Config::parse(&text, "printed").unwrap();

    // the operator's question: what did we spend, by key, model and day?
    let out = Command::new(&bin)
        .args(["--spend-report", "model=mock"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = report.to_string();
    // 11 input tokens at $1/M + 6 output tokens at $2/M = $0.000023
    assert!(text.contains("0.000023"), "{report:#}");
    assert!(text.contains("\"mock\""), "{report:#}");
}
