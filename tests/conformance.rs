//! Real-client conformance: the official `openai` (and `anthropic`) Python SDKs, pinned in
//! tests/conformance/requirements.txt, driven by pytest against the reference gateway served
//! in-process on 127.0.0.1:0 in front of the mock provider.
//!
//! Needs `.venv/bin/python` with the requirements installed (`.ci/run` does it). Without it the
//! test prints a notice and passes, unless `TOLLGATE_REQUIRE_PYTHON=1` (set by CI).

mod common;

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
    Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", file])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("GATEWAY", gateway_v1)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("run pytest")
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
