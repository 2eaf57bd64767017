//! Auth outcomes over real sockets: 401 / 403 / admitted / disabled, credential stripping,
//! and no raw key in responses or logs.

#[path = "limits_common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::*;
use tollgate::auth::{
    AuthLayer, KeyEntry, KeyIdentity, KeyValidator, StaticKeys, ValidateFuture, hash_key,
};
use tollgate::error::ErrorResponseLayer;
use tollgate::request::ParseLayer;
use tollgate::secret::Secret;
use tower::{ServiceBuilder, ServiceExt};

const KEY_A: &str = "sk-tg-team-a-0123456789abcdef";
const KEY_B: &str = "sk-tg-team-b-fedcba9876543210";
const UNKNOWN: &str = "sk-tg-unknown-5555555555555555";

fn keys() -> StaticKeys {
    StaticKeys::from_entries([
        KeyEntry::from_hash("team-a", &hash_key(KEY_A))
            .unwrap()
            .tenant("acme")
            .models(["gpt-4o*", "claude-*"]),
        KeyEntry::from_hash("team-b", &hash_key(KEY_B))
            .unwrap()
            .key_id("team-b")
            .models(["*"]),
    ])
    .unwrap()
}

async fn gateway(layer: AuthLayer) -> (std::net::SocketAddr, Upstream) {
    let up = Upstream::default();
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(layer)
        .service(up.clone());
    (serve(svc).await, up)
}

fn no_credentials(h: &http::HeaderMap) {
    for name in tollgate::provider::CREDENTIAL_HEADERS {
        assert!(!h.contains_key(name), "{name} reached the inner service");
    }
}

fn error_json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn missing_key_is_401_and_never_calls_inner() {
    let (addr, up) = gateway(AuthLayer::new(keys())).await;
    let c = client();
    let (status, _, body) = send(&c, chat(addr, &chat_body("gpt-4o", 5), &[])).await;
    assert_eq!(status, 401);
    let j = error_json(&body);
    assert_eq!(j["error"]["code"], "invalid_api_key");
    assert_eq!(j["error"]["type"], "authentication_error");
    // A non-bearer scheme is no key either.
    let (status, _, _) = send(
        &c,
        chat(
            addr,
            &chat_body("gpt-4o", 5),
            &[("authorization", "Basic abc")],
        ),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(up.seen.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unknown_key_is_401_without_echoing_the_key() {
    let (addr, up) = gateway(AuthLayer::new(keys())).await;
    let auth = format!("Bearer {UNKNOWN}");
    let (status, headers, body) = send(
        &client(),
        chat(addr, &chat_body("gpt-4o", 5), &[("authorization", &auth)]),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(error_json(&body)["error"]["code"], "invalid_api_key");
    assert!(!body.contains(UNKNOWN) && !body.contains(&UNKNOWN[..12]));
    assert!(headers.iter().all(|(_, v)| {
        !v.as_bytes()
            .windows(8)
            .any(|w| w == &UNKNOWN.as_bytes()[..8])
    }));
    assert_eq!(up.seen.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn bearer_key_admitted_with_identity_and_credentials_stripped() {
    let (addr, up) = gateway(AuthLayer::new(keys())).await;
    let auth = format!("Bearer {KEY_A}");
    let (status, _, _) = send(
        &client(),
        chat(
            addr,
            &chat_body("gpt-4o-mini", 5),
            &[
                ("authorization", &auth),
                ("api-key", "also-secret"),
                ("proxy-authorization", "Basic zzz"),
                ("x-keep", "1"),
            ],
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(up.seen.calls.load(Ordering::SeqCst), 1);
    let h = up.seen.headers.lock().unwrap()[0].clone();
    no_credentials(&h);
    assert_eq!(h["x-keep"], "1");
    let id = up.seen.identities.lock().unwrap()[0].clone().unwrap();
    assert_eq!(&*id.name, "team-a");
    assert_eq!(&*id.key_id, &hash_key(KEY_A)[..12]);
    assert_eq!(id.tenant.as_deref(), Some("acme"));
}

#[tokio::test]
async fn x_api_key_admitted_and_stripped() {
    let (addr, up) = gateway(AuthLayer::new(keys())).await;
    let (status, _, _) = send(
        &client(),
        chat(addr, &chat_body("anything", 5), &[("x-api-key", KEY_B)]),
    )
    .await;
    assert_eq!(status, 200);
    no_credentials(&up.seen.headers.lock().unwrap()[0]);
    let id = up.seen.identities.lock().unwrap()[0].clone().unwrap();
    assert_eq!(&*id.key_id, "team-b");
}

#[tokio::test]
async fn model_outside_the_globs_is_403() {
    let (addr, up) = gateway(AuthLayer::new(keys())).await;
    let (status, _, body) = send(
        &client(),
        chat(addr, &chat_body("gemini-pro", 5), &[("x-api-key", KEY_A)]),
    )
    .await;
    assert_eq!(status, 403);
    let j = error_json(&body);
    assert_eq!(j["error"]["type"], "permission_error");
    assert_eq!(j["error"]["code"], "model_not_allowed");
    assert_eq!(j["error"]["param"], "model");
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gemini-pro")
    );
    assert!(!body.contains(KEY_A));
    assert_eq!(up.seen.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn disabled_auth_inserts_anonymous_and_still_strips() {
    let (addr, up) = gateway(AuthLayer::disabled()).await;
    let (status, _, _) = send(
        &client(),
        chat(
            addr,
            &chat_body("any-model", 5),
            &[("authorization", "Bearer whatever")],
        ),
    )
    .await;
    assert_eq!(status, 200);
    no_credentials(&up.seen.headers.lock().unwrap()[0]);
    let id = up.seen.identities.lock().unwrap()[0].clone().unwrap();
    assert_eq!(id, KeyIdentity::anonymous());
    // And without any header at all.
    let (status, _, _) = send(&client(), chat(addr, &chat_body("m", 5), &[])).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn identity_is_reported_on_the_response_and_on_refusals() {
    let svc = ServiceBuilder::new()
        .layer(ParseLayer::new())
        .layer(AuthLayer::new(keys()))
        .service(Upstream::default());
    let req = |model: &str| {
        http::Request::post("/v1/chat/completions")
            .header("x-api-key", KEY_A)
            .body(http_body_util::Full::new(bytes::Bytes::from(chat_body(
                model, 3,
            ))))
            .unwrap()
    };
    let res = svc.clone().oneshot(req("gpt-4o")).await.unwrap();
    assert_eq!(res.status(), 200);
    let id = res.extensions().get::<KeyIdentity>().expect("KeyIdentity");
    assert_eq!(&*id.key_id, &hash_key(KEY_A)[..12]);
    assert_eq!(id.tenant.as_deref(), Some("acme"));
    // A model the key may not use: 403, and the refusal still names the key.
    let e = svc.oneshot(req("not-allowed-model")).await.unwrap_err();
    assert_eq!(e.status(), 403);
    let id = e
        .context()
        .key
        .as_ref()
        .expect("the key in the error's context");
    assert_eq!(&*id.key_id, &hash_key(KEY_A)[..12]);
}

/// A user's own async validator, behind `Arc<dyn KeyValidator>`.
struct Remote;
impl KeyValidator for Remote {
    fn validate(&self, key: Secret) -> ValidateFuture {
        Box::pin(async move {
            tokio::task::yield_now().await;
            Ok((key.expose() == "remote-key").then(|| KeyIdentity::new("r1", "remote")))
        })
    }
}

#[tokio::test]
async fn pluggable_async_validator() {
    let v: Arc<dyn KeyValidator> = Arc::new(Remote);
    let (addr, up) = gateway(AuthLayer::from_arc(v)).await;
    let c = client();
    let ok = send(
        &c,
        chat(addr, &chat_body("m", 1), &[("x-api-key", "remote-key")]),
    )
    .await;
    let bad = send(&c, chat(addr, &chat_body("m", 1), &[("x-api-key", "nope")])).await;
    assert_eq!((ok.0, bad.0), (200, 401));
    assert_eq!(up.seen.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        &*up.seen.identities.lock().unwrap()[0]
            .clone()
            .unwrap()
            .key_id,
        "r1"
    );
}
