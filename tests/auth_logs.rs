//! The raw key never appears in log output (captured into a buffer). In its own test binary:
//! tracing caches callsite interest globally, so tests running on other threads without a
//! subscriber could hide events from the capture.

#[path = "limits_common/mod.rs"]
mod common;

use common::*;
use tollgate::auth::{AuthLayer, KeyEntry, StaticKeys, hash_key};
use tollgate::error::ErrorResponseLayer;
use tollgate::request::ParseLayer;
use tower::ServiceBuilder;

const KEY_A: &str = "sk-tg-team-a-0123456789abcdef";
const KEY_B: &str = "sk-tg-team-b-fedcba9876543210";
const UNKNOWN: &str = "sk-tg-unknown-5555555555555555";

async fn gateway(layer: AuthLayer) -> (std::net::SocketAddr, Upstream) {
    let up = Upstream::default();
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(layer)
        .service(up.clone());
    (serve(svc).await, up)
}

fn keys() -> StaticKeys {
    StaticKeys::from_entries([
        KeyEntry::from_hash("team-a", &hash_key(KEY_A))
            .unwrap()
            .models(["gpt-4o*"]),
        KeyEntry::from_hash("team-b", &hash_key(KEY_B)).unwrap(),
    ])
    .unwrap()
}

#[tokio::test]
async fn raw_key_never_in_logs() {
    let buf = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(buf.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (addr, _up) = gateway(AuthLayer::new(keys())).await;
    let c = client();
    let a = format!("Bearer {KEY_A}");
    let u = format!("Bearer {UNKNOWN}");
    for (model, headers) in [
        ("gpt-4o", vec![("authorization", a.as_str())]),
        ("gemini", vec![("authorization", a.as_str())]),
        ("gpt-4o", vec![("authorization", u.as_str())]),
        ("gpt-4o", vec![("x-api-key", UNKNOWN)]),
        ("gpt-4o", vec![("x-api-key", KEY_B)]),
    ] {
        let (_, _, body) = send(&c, chat(addr, &chat_body(model, 1), &headers)).await;
        for k in [KEY_A, KEY_B, UNKNOWN] {
            assert!(!body.contains(k), "key in response body");
        }
    }
    tracing::info!("capture works");
    let logs = buf.text();
    assert!(logs.contains("capture works"), "log capture is not wired");
    assert!(
        logs.contains("authenticated") && logs.contains("request refused by auth"),
        "{logs}"
    );
    for k in [KEY_A, KEY_B, UNKNOWN] {
        assert!(!logs.contains(k), "raw key found in logs:\n{logs}");
        assert!(!logs.contains(&k[6..20]), "part of a raw key found in logs");
    }
}
