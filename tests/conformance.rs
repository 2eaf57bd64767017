//! Real-client conformance: the official `openai` (and `anthropic`) Python SDKs, pinned in
//! tests/conformance/requirements.txt, driven by pytest against the reference gateway served
//! in-process on 127.0.0.1:0 in front of the mock provider — and, for issue 6, in front of
//! protocol-faithful fake Anthropic and Gemini upstreams (tests/fakes), so one client suite runs
//! once per provider kind (`mock-ok`, `anthropic-ok`, `gemini-ok`, …).
//!
//! Needs `.venv/bin/python` with the requirements installed (`.ci/run` does it). Without it the
//! test prints a notice and passes, unless `TOLLGATE_REQUIRE_PYTHON=1` (set by CI).

mod common;
mod fakes;

use std::path::Path;
use std::process::Command;

fn python() -> Option<String> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() {
        let ok = Command::new(&venv)
            .args(["-c", "import openai, anthropic, pytest"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(venv.display().to_string());
        }
    }
    None
}

fn run_pytest(python: &str, gateway_v1: &str, file: &str) -> std::process::Output {
    run_pytest_env(python, file, &[("GATEWAY", gateway_v1.to_owned())])
}

fn run_pytest_env(python: &str, file: &str, env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", file])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_PROXY", "127.0.0.1,localhost");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pytest")
}

/// The python with the SDKs, or `None` after printing the SKIPPED notice (a failure when
/// `TOLLGATE_REQUIRE_PYTHON` is set).
fn python_or_skip() -> Option<String> {
    let py = python();
    if py.is_none() {
        assert!(
            std::env::var("TOLLGATE_REQUIRE_PYTHON").is_err(),
            "TOLLGATE_REQUIRE_PYTHON is set but .venv/bin/python with the SDKs is missing"
        );
        eprintln!("SKIPPED: .venv with the pinned SDKs not found (run .ci/run to create it)");
    }
    py
}

/// Scenario names every provider kind serves (the mock's names; the fakes script the same).
const SCENARIOS: [&str; 10] = [
    "ok",
    "tool",
    "err-429",
    "err-429-always",
    "err-400",
    "err-500",
    "err-503",
    "err-529",
    "midstream-error",
    "slow",
];

/// A gateway config with one public model `{kind}-{scenario}` per provider kind and scenario:
/// the mock (OpenAI-compatible), the fake Anthropic API, the fake Gemini API.
fn providers_config(anthropic: &fakes::Fake, gemini: &fakes::Fake) -> String {
    let mut cfg = format!(
        r#"
# virtual keys on: the SDKs' keys, sent as `Authorization: Bearer` or `x-api-key`
[auth]
enabled = true
[[auth.keys]]
name = "openai-sdk"
sha256 = "{}"
[[auth.keys]]
name = "anthropic-sdk"
sha256 = "{}"
[[auth.keys]]
name = "anthropic-sdk-token"
sha256 = "{}"
[usage]
jsonl = ""
[routing.timeouts]
first_token_ms = 15000
total_ms = 30000
[providers.mock]
kind = "mock"
[providers.anthropic]
kind = "anthropic"
base_url = "{}"
api_key = "{}"
[providers.gemini]
kind = "gemini"
base_url = "{}"
api_key = "{}"
"#,
        tollgate::auth::hash_key("sk-client-test"),
        tollgate::auth::hash_key("sk-ant-client-test"),
        tollgate::auth::hash_key("bearer-token-test"),
        anthropic.base_url(),
        fakes::ANTHROPIC_KEY,
        gemini.base_url(),
        fakes::GEMINI_KEY
    );
    for kind in ["mock", "anthropic", "gemini"] {
        for s in SCENARIOS {
            let upstream = match (kind, s) {
                ("mock", "ok") => "ok?chunks=3&delay_ms=5",
                _ => s,
            };
            cfg.push_str(&format!(
                "[models.{kind}-{s}]\ntargets = [{{ provider = \"{kind}\", model = \"{upstream}\" }}]\n"
            ));
        }
    }
    cfg
}

async fn run_suite(file: &'static str) {
    let Some(py) = python_or_skip() else {
        return;
    };
    let anthropic = fakes::anthropic().await;
    let gemini = fakes::gemini().await;
    let gw = common::Gateway::start(&providers_config(&anthropic, &gemini)).await;
    let env = vec![("GATEWAY", gw.url("/v1")), ("GATEWAY_ROOT", gw.url(""))];
    let out = tokio::task::spawn_blocking(move || run_pytest_env(&py, file, &env))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "pytest failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed"), "pytest ran no tests:\n{stdout}");
    // the client's key never reached an upstream; the gateway's own did
    for seen in anthropic.seen.lock().unwrap().iter() {
        assert_eq!(seen.headers["x-api-key"], fakes::ANTHROPIC_KEY);
        assert!(seen.headers.get("authorization").is_none());
    }
    for seen in gemini.seen.lock().unwrap().iter() {
        assert_eq!(seen.headers["x-goog-api-key"], fakes::GEMINI_KEY);
    }
}

/// Issue 6, acceptance 2: the official `openai` SDK gets the same results (text, streamed tool
/// calls, usage, errors) whether the mock, the fake Anthropic API or the fake Gemini API serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_gets_the_same_results_from_every_provider_kind() {
    run_suite("tests/conformance/test_openai_sdk_providers.py").await;
}

/// Issue 6, acceptance 3: the official `anthropic` SDK against `/v1/messages`, passed through to
/// the fake Anthropic API and translated for the mock and the fake Gemini API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_against_the_messages_ingress() {
    run_suite("tests/conformance/test_anthropic_sdk.py").await;
}

/// Issue 10, acceptance 2: the official `openai` SDK raises the exception class matching the
/// upstream's error, with the upstream's code in `e.code`, for an OpenAI-compatible, an
/// Anthropic and a Gemini upstream (tests/fakes, one single-target model per case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_raises_the_upstream_error_class_and_code() {
    let Some(py) = python_or_skip() else {
        return;
    };
    let (o, a, g) = (
        fakes::openai().await,
        fakes::anthropic().await,
        fakes::gemini().await,
    );
    let gw = common::Gateway::start(&fakes::cases_config(&o, &a, &g)).await;
    let env = vec![("GATEWAY", gw.url("/v1"))];
    let out = tokio::task::spawn_blocking(move || {
        run_pytest_env(&py, "tests/conformance/test_openai_sdk_errors.py", &env)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "pytest failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed"), "pytest ran no tests:\n{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_against_the_gateway() {
    let Some(py) = python() else {
        assert!(
            std::env::var("TOLLGATE_REQUIRE_PYTHON").is_err(),
            "TOLLGATE_REQUIRE_PYTHON is set but .venv/bin/python with the SDKs is missing"
        );
        eprintln!("SKIPPED: .venv with the pinned SDKs not found (run .ci/run to create it)");
        return;
    };
    let cfg = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/gateway.toml"),
    )
    .unwrap();
    let gw = common::Gateway::start(&cfg).await;
    let base = gw.url("/v1");
    let out = tokio::task::spawn_blocking(move || {
        run_pytest(&py, &base, "tests/conformance/test_openai_sdk.py")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "pytest failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed"), "pytest ran no tests:\n{stdout}");
}

/// The gateway config of the Responses API suites: one model `{kind}-{ok,tool}` per upstream
/// kind — `native` (a fake OpenAI API serving `/v1/responses`, passed through), `chat` (the
/// same fake as a chat-only server, translated), `anthropic` and `gemini` (translated twice).
fn responses_config(openai: &fakes::Fake, anthropic: &fakes::Fake, gemini: &fakes::Fake) -> String {
    let mut cfg = format!(
        r#"
[auth]
enabled = true
[[auth.keys]]
name = "openai-sdk"
sha256 = "{}"
[usage]
jsonl = ""
[routing.timeouts]
first_token_ms = 15000
total_ms = 30000
[providers.native]
kind = "openai"
base_url = "{}/v1"
responses = true
[providers.chat]
kind = "openai"
base_url = "{}/v1"
[providers.anthropic]
kind = "anthropic"
base_url = "{}"
api_key = "{}"
[providers.gemini]
kind = "gemini"
base_url = "{}"
api_key = "{}"
"#,
        tollgate::auth::hash_key("sk-client-test"),
        openai.base_url(),
        openai.base_url(),
        anthropic.base_url(),
        fakes::ANTHROPIC_KEY,
        gemini.base_url(),
        fakes::GEMINI_KEY
    );
    for kind in ["native", "chat", "anthropic", "gemini"] {
        for s in ["ok", "tool"] {
            cfg.push_str(&format!(
                "[models.{kind}-{s}]\ntargets = [{{ provider = \"{kind}\", model = \"{s}\" }}]\n"
            ));
        }
    }
    cfg
}

/// Run one Responses API pytest file against the gateway in front of the four upstream kinds;
/// returns the fakes (to check what reached them).
async fn run_responses_suite(file: &'static str) -> Option<[fakes::Fake; 3]> {
    let py = python_or_skip()?;
    let (o, a, g) = (
        fakes::openai_responses().await,
        fakes::anthropic().await,
        fakes::gemini().await,
    );
    let gw = common::Gateway::start(&responses_config(&o, &a, &g)).await;
    let env = vec![("GATEWAY", gw.url("/v1"))];
    let out = tokio::task::spawn_blocking(move || run_pytest_env(&py, file, &env))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "pytest failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed"), "pytest ran no tests:\n{stdout}");
    Some([o, a, g])
}

/// Issue 13, acceptance 2: `client.responses.create` (non-stream and stream),
/// `client.responses.stream`, and function calling across two turns with explicit input items,
/// with the same results from a Responses-capable, a chat-only, an Anthropic and a Gemini
/// upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_responses_api_against_every_provider_kind() {
    let Some([o, a, g]) = run_responses_suite("tests/conformance/test_openai_responses.py").await
    else {
        return;
    };
    // the native fake got `/v1/responses`, the others chat/messages/generateContent
    let paths: Vec<String> = o
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert!(paths.iter().any(|p| p == "/v1/responses"));
    assert!(paths.iter().any(|p| p == "/v1/chat/completions"));
    // the second turn's call id reached Anthropic as the tool_result's tool_use_id
    let bodies: Vec<String> = a
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| String::from_utf8_lossy(&s.body).into_owned())
        .collect();
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("\"tool_result\"") && b.contains("\"tool_use_id\""))
    );
    let bodies: Vec<String> = g
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| String::from_utf8_lossy(&s.body).into_owned())
        .collect();
    assert!(bodies.iter().any(|b| b.contains("\"functionResponse\"")));
}

/// Issue 13, acceptance 3: the OpenAI Agents SDK runs an agent with one function tool through
/// the gateway (Responses API) and completes its tool loop, passed through and translated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_agents_sdk_completes_a_tool_loop_through_the_gateway() {
    let Some([o, _, _]) = run_responses_suite("tests/conformance/test_openai_agents.py").await
    else {
        return;
    };
    let seen = o.seen.lock().unwrap();
    // two turns per run (tool call, then the answer), four runs
    assert!(seen.len() >= 8, "{} upstream requests", seen.len());
}
