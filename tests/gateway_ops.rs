//! Issue 10, acceptance 4 (keyed endpoints) and the reference binary's operator surface:
//! `/v1/models` lists exactly what the calling key may use and needs a key when auth is on;
//! `/metrics` is on the main listener only when configured so (or auth is off), and on
//! `[server] admin_listen`; `--help` lists every flag; auth on with no keys is warned about.

mod common;

use common::{Gateway, GatewayProcess, send};

fn two_keys(extra: &str) -> String {
    format!(
        r#"{extra}
[auth]
enabled = true
[[auth.keys]]
name = "a"
sha256 = "{}"
models = ["m1"]
[[auth.keys]]
name = "b"
sha256 = "{}"
models = ["m2", "m3*"]
[usage]
jsonl = ""
[providers.mock]
kind = "mock"
[models.m1]
targets = [{{ provider = "mock", model = "ok" }}]
[models.m2]
targets = [{{ provider = "mock", model = "ok" }}]
[models.m3x]
aliases = ["m3-latest"]
targets = [{{ provider = "mock", model = "ok" }}]
"#,
        tollgate::auth::hash_key("sk-a"),
        tollgate::auth::hash_key("sk-b")
    )
}

async fn ids(addr: std::net::SocketAddr, key: &str) -> Vec<String> {
    let auth = format!("Bearer {key}");
    let r = send(addr, "GET", "/v1/models", &[("authorization", &auth)], "").await;
    assert_eq!(r.status, 200);
    let v = r.json().await;
    let mut ids: Vec<String> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn models_lists_what_the_calling_key_may_use_and_needs_a_key() {
    let gw = Gateway::start(&two_keys("")).await;
    assert_eq!(ids(gw.addr, "sk-a").await, ["m1"]);
    assert_eq!(ids(gw.addr, "sk-b").await, ["m2", "m3-latest", "m3x"]);
    for headers in [vec![], vec![("authorization", "Bearer sk-nope")]] {
        let r = send(gw.addr, "GET", "/v1/models", &headers, "").await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json().await["error"]["code"], "invalid_api_key");
    }
    // one model: only when the key may use it; otherwise as unknown as a model that is not
    let one = |key: &'static str, id: &'static str| {
        let addr = gw.addr;
        async move {
            let auth = format!("Bearer {key}");
            let path = format!("/v1/models/{id}");
            let r = send(
                addr,
                "GET",
                &path,
                &[("x-api-key", key), ("authorization", &auth)],
                "",
            )
            .await;
            let s = r.status.as_u16();
            r.rest().await;
            s
        }
    };
    assert_eq!(one("sk-b", "m2").await, 200);
    assert_eq!(one("sk-a", "m2").await, 404);
    assert_eq!(one("sk-a", "m1").await, 200);
    assert_eq!(
        send(gw.addr, "GET", "/v1/models/m1", &[], "").await.status,
        401
    );
}

#[tokio::test]
async fn models_without_auth_lists_everything() {
    let cfg = two_keys("").replace("enabled = true", "enabled = false");
    let gw = Gateway::start(&cfg).await;
    let r = send(gw.addr, "GET", "/v1/models", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().await["data"].as_array().unwrap().len(), 4);
}

async fn metrics_status(cfg: &str) -> u16 {
    let gw = Gateway::start_with(cfg, |b| b.metrics(|| "tollgate_test 1\n".to_owned())).await;
    let r = send(
        gw.addr,
        "GET",
        "/metrics",
        &[("authorization", "Bearer sk-a")],
        "",
    )
    .await;
    let status = r.status.as_u16();
    let body = r.rest().await;
    if status == 200 {
        assert_eq!(&body[..], b"tollgate_test 1\n");
    }
    status
}

#[tokio::test]
async fn metrics_on_the_main_listener_only_when_configured_or_auth_is_off() {
    // auth on, nothing configured: not on the main listener (even with a key)
    assert_eq!(metrics_status(&two_keys("")).await, 404);
    // configured
    assert_eq!(
        metrics_status(&two_keys("[server]\nmetrics = \"main\"")).await,
        200
    );
    assert_eq!(
        metrics_status(&two_keys("[server]\nmetrics = \"off\"")).await,
        404
    );
    // auth off (a local gateway): on by default
    let off = two_keys("").replace("enabled = true", "enabled = false");
    assert_eq!(metrics_status(&off).await, 200);
    // admin without an admin listener is a config error naming the field
    let cfg = tollgate::config::Config::parse(&two_keys("[server]\nmetrics = \"admin\""), "t.toml")
        .unwrap();
    let e = tollgate::gateway::Gateway::from_config(&cfg)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("server.metrics") && e.contains("admin_listen"),
        "{e}"
    );
}

#[tokio::test]
async fn the_binary_serves_metrics_on_the_admin_listener_only() {
    let mut gw = GatewayProcess::start(&two_keys("[server]\nadmin_listen = \"127.0.0.1:0\""));
    let line = gw.next_line();
    let admin: std::net::SocketAddr = line
        .trim()
        .strip_prefix("tollgate admin on http://")
        .unwrap_or_else(|| panic!("no admin address: {line:?}"))
        .parse()
        .unwrap();
    // one request, so the exporter has a series to show
    let body = r#"{"model":"m1","messages":[{"role":"user","content":"hi"}]}"#;
    let r = common::chat(gw.addr, body, &[("authorization", "Bearer sk-a")]).await;
    assert_eq!(r.status, 200);
    r.rest().await;

    let r = send(admin, "GET", "/metrics", &[], "").await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.rest().await.to_vec()).unwrap();
    assert!(text.contains("tollgate_requests_total"), "{text}");
    assert_eq!(send(admin, "GET", "/healthz", &[], "").await.status, 200);
    // the admin listener serves nothing of the LLM stack
    let r = common::chat(admin, body, &[("authorization", "Bearer sk-a")]).await;
    assert_eq!(r.status, 404);
    // and the main listener no /metrics
    let r = send(
        gw.addr,
        "GET",
        "/metrics",
        &[("authorization", "Bearer sk-a")],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
}

#[test]
fn help_exits_zero_and_lists_every_flag() {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("gateway");
    let out = std::process::Command::new(&bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--listen",
        "--print-config",
        "--hash-key",
        "--spend-report",
        "--help",
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
    let out = std::process::Command::new(&bin)
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

#[tokio::test]
async fn auth_on_with_no_keys_is_warned_about_at_start() {
    let cfg = "[auth]\nenabled = true\n[usage]\njsonl = \"\"\n[providers.mock]\nkind = \"mock\"\n[models.m]\ntargets = [{ provider = \"mock\", model = \"ok\" }]\n";
    let gw = GatewayProcess::start_logged(cfg, "warn");
    let log = gw.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("no [[auth.keys]]"))
        .unwrap_or_else(|| panic!("no warning in:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
}
