//! Issue 5, acceptance 3 (integration half): the reference gateway's `/metrics` is scraped over
//! a real socket after real requests, and the Prometheus text carries the request, token,
//! latency and overhead series with bounded labels.

mod common;

use common::{chat, send};
use tokio::net::TcpListener;

#[tokio::test]
async fn metrics_endpoint_reports_requests_tokens_and_latency() {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder in this test binary");
    let cfg = tollgate::config::Config::parse(
        r#"
[auth]
enabled = false
[usage]
jsonl = ""
[providers.mock]
kind = "mock"
[models.m]
targets = [{ provider = "mock", model = "ok", price = { input = 1.0, output = 2.0 } }]
[models.down]
targets = [{ provider = "mock", model = "status?code=503" }]
"#,
        "metrics.toml",
    )
    .unwrap();
    let (gateway, _reloader) = tollgate::gateway::Gateway::builder(&cfg)
        .metrics(move || prometheus.render())
        .build()
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gateway.serve(listener, std::future::pending()));

    for _ in 0..3 {
        let r = chat(
            addr,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
        r.rest().await;
    }
    let r = chat(
        addr,
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    )
    .await;
    r.rest().await;
    let r = chat(
        addr,
        r#"{"model":"down","messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 503);
    r.rest().await;

    let res = send(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(res.status, 200);
    let text = String::from_utf8(res.rest().await.to_vec()).unwrap();
    let line = |needle: &[&str]| {
        text.lines()
            .find(|l| !l.starts_with('#') && needle.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no series with {needle:?} in\n{text}"))
            .to_owned()
    };
    let value = |l: &str| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    let ok = line(&[
        "tollgate_requests_total",
        "outcome=\"success\"",
        "model=\"m\"",
    ]);
    assert_eq!(value(&ok), 4.0, "{ok}");
    let err = line(&[
        "tollgate_requests_total",
        "outcome=\"upstream_error\"",
        "status_class=\"5xx\"",
    ]);
    assert_eq!(value(&err), 1.0, "{err}");
    // 4 requests x 11 prompt tokens
    let input = line(&[
        "gen_ai_client_token_usage_sum",
        "gen_ai_token_type=\"input\"",
    ]);
    assert_eq!(value(&input), 44.0, "{input}");
    let output = line(&[
        "gen_ai_client_token_usage_sum",
        "gen_ai_token_type=\"output\"",
    ]);
    assert_eq!(value(&output), 24.0, "{output}");
    line(&["gen_ai_client_operation_duration"]);
    line(&["gen_ai_server_time_to_first_token"]);
    line(&["tollgate_gateway_overhead_seconds"]);
    // cost: 4 x (11 x 1 µ$ + 6 x 2 µ$) = 92 µ$ = 92e6 pico-USD
    let cost = line(&["tollgate_cost_pico_usd_total", "model=\"m\""]);
    assert_eq!(value(&cost), 92_000_000.0, "{cost}");
    // bounded labels only: no request ids or keys
    assert!(!text.contains("request_id") && !text.contains("key_id"));
}
