//! Issue 4, acceptance 2: exact limits across replicas. Three gateway processes share one real
//! redis-server; concurrent clients spread over them send more than the limit; the number
//! admitted equals the RPM limit exactly and the token budget is never exceeded, both checked on
//! the mock upstream's side. The same test runs against one process with the in-memory store.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::GatewayProcess;
use http_body_util::BodyExt;
use tollgate::provider::mock::MockServer;

const KEY_A: &str = "sk-replica-test-a";
const KEY_B: &str = "sk-replica-test-b";
const RPM: u64 = 50;
const TPM: u64 = 400;

fn config(mock: &MockServer, store: &str) -> String {
    format!(
        r#"
[usage]
jsonl = ""
[auth]
enabled = true
[[auth.keys]]
name = "a"
sha256 = "{}"
rpm = {RPM}
[[auth.keys]]
name = "b"
sha256 = "{}"
tpm = {TPM}
[limits]
{store}
[providers.up]
kind = "openai"
base_url = "{}"
[models.ma]
targets = [{{ provider = "up", model = "ok?key=a" }}]
[models.mb]
targets = [{{ provider = "up", model = "ok?key=b" }}]
"#,
        tollgate::auth::hash_key(KEY_A),
        tollgate::auth::hash_key(KEY_B),
        mock.base_url()
    )
}

/// Fixed one-minute windows: start a burst with at least 20 s left in the current minute.
async fn away_from_a_minute_boundary() {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        % 60_000;
    if ms > 40_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - ms + 200)).await;
    }
}

async fn burst(gateways: &[SocketAddr], key: &str, model: &str, n: usize) -> (u64, u64) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut tasks = Vec::new();
    for i in 0..n {
        let addr = gateways[i % gateways.len()];
        let client = client.clone();
        let key = key.to_owned();
        let body = format!(
            r#"{{"model":"{model}","max_tokens":10,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {key}"))
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let res = client.request(req).await.unwrap();
            let status = res.status().as_u16();
            let has_retry_after = res.headers().contains_key("retry-after");
            let _ = res.into_body().collect().await;
            (status, has_retry_after)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (429, true) => limited += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    (ok, limited)
}

async fn exact_limits(gateways: &[SocketAddr], mock: &MockServer) {
    away_from_a_minute_boundary().await;
    // RPM: 3x the limit, concurrently, spread over the replicas.
    let (ok, limited) = burst(gateways, KEY_A, "ma", 3 * RPM as usize).await;
    assert_eq!(ok, RPM, "admitted exactly the RPM limit");
    assert_eq!(limited, 2 * RPM);
    assert_eq!(
        mock.log().count("ok?key=a"),
        RPM,
        "the upstream saw exactly RPM requests"
    );

    // TPM: every admitted request reserved its upper bound first, so what the upstream
    // reported never exceeds the budget.
    let (ok, limited) = burst(gateways, KEY_B, "mb", 120).await;
    let upstream = mock.log().count("ok?key=b");
    assert_eq!(ok, upstream);
    assert!(ok > 0 && limited > 0, "ok {ok}, limited {limited}");
    let tokens_used = upstream * 17; // the mock reports 11 + 6 tokens per answer
    assert!(
        tokens_used <= TPM,
        "{tokens_used} tokens used with a budget of {TPM}"
    );
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sharing_redis_admit_exactly_the_limit() {
    let url =
        std::env::var("TOLLGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    if !common::redis_available(&url) {
        return;
    }
    let mock = MockServer::start().await.unwrap();
    let prefix = format!(
        "tollgate-replicas-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let cfg = config(
        &mock,
        &format!(
            "store = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{prefix}\"\non_store_error = \"fail_closed\""
        ),
    );
    let procs: Vec<GatewayProcess> = (0..3).map(|_| GatewayProcess::start(&cfg)).collect();
    let addrs: Vec<SocketAddr> = procs.iter().map(|p| p.addr).collect();
    exact_limits(&addrs, &mock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_with_the_memory_store_admits_exactly_the_limit() {
    let mock = MockServer::start().await.unwrap();
    let cfg = config(&mock, "store = \"memory\"");
    let p = GatewayProcess::start(&cfg);
    exact_limits(&[p.addr], &mock).await;
}

#[cfg(not(feature = "redis"))]
#[test]
fn redis_replica_test_needs_the_redis_feature() {
    assert!(
        std::env::var("TOLLGATE_REQUIRE_REDIS").is_err(),
        "TOLLGATE_REQUIRE_REDIS is set but this build has no `redis` feature (use --all-features)"
    );
    eprintln!(
        "SKIPPED: the Redis replica test needs `--features redis` (cargo test --all-features)"
    );
}
