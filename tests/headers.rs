//! Issue 10, acceptance 3: the header policy, both ways, over real sockets (reference gateway
//! in front of the protocol-faithful fakes of tests/fakes), and issue 14's "upstream error
//! messages are scrubbed of the credentials the gateway sent".
//!
//! - Upstream → client: OpenAI's `set-cookie`, `openai-organization`, `openai-project`,
//!   `openai-version`, `x-ratelimit-*` and `server` never reach the client; its request id does,
//!   as `x-upstream-request-id`, and so does `openai-processing-ms`; a provider's
//!   `expose_headers` adds to the list.
//! - Client → upstream: the client's `authorization`, `x-api-key`, `x-goog-api-key`, `cookie`,
//!   `openai-organization` and `openai-project` never reach an upstream; `anthropic-beta`,
//!   `openai-beta` and the gateway's `x-request-id` do; a provider's fixed `headers` and
//!   `forward_headers` do.

mod common;
mod fakes;

use common::{Gateway, send};
use fakes::{ANTHROPIC_KEY, Fake, GEMINI_KEY, OPENAI_KEY};
use serde_json::json;

fn config(openai: &Fake, anthropic: &Fake, gemini: &Fake) -> String {
    format!(
        r#"
[auth]
enabled = false
[usage]
jsonl = ""
[providers.oai]
kind = "openai"
base_url = "{o}/v1"
api_key = "{OPENAI_KEY}"
headers = {{ "x-fixed" = "fixed-oai" }}
forward_headers = ["x-client-trace"]
[providers.oai-exposed]
kind = "openai"
base_url = "{o}/v1"
api_key = "{OPENAI_KEY}"
expose_headers = ["x-ratelimit-remaining-requests"]
[providers.anth]
kind = "anthropic"
base_url = "{a}"
api_key = "{ANTHROPIC_KEY}"
headers = {{ "x-fixed" = "fixed-anth" }}
[providers.gem]
kind = "gemini"
base_url = "{g}"
api_key = "{GEMINI_KEY}"
headers = {{ "x-fixed" = "fixed-gem" }}
[models.oai-ok]
targets = [{{ provider = "oai", model = "ok" }}]
[models.oai-exposed-ok]
targets = [{{ provider = "oai-exposed", model = "ok" }}]
[models.anth-ok]
targets = [{{ provider = "anth", model = "ok" }}]
[models.gem-ok]
targets = [{{ provider = "gem", model = "ok" }}]
[models.oai-leak]
targets = [{{ provider = "oai", model = "case-leak-key" }}]
[models.anth-leak]
targets = [{{ provider = "anth", model = "case-leak-key" }}]
[models.gem-leak]
targets = [{{ provider = "gem", model = "case-leak-key" }}]
[models.anth-midstream-leak]
targets = [{{ provider = "anth", model = "midstream-leak-key" }}]
[models.gem-midstream-leak]
targets = [{{ provider = "gem", model = "midstream-leak-key" }}]
"#,
        o = openai.base_url(),
        a = anthropic.base_url(),
        g = gemini.base_url(),
    )
}

async fn start() -> (Fake, Fake, Fake, Gateway) {
    let (o, a, g) = (
        fakes::openai().await,
        fakes::anthropic().await,
        fakes::gemini().await,
    );
    let gw = Gateway::start(&config(&o, &a, &g)).await;
    (o, a, g, gw)
}

/// What a well-meaning but careless client sends along.
const CLIENT_HEADERS: [(&str, &str); 10] = [
    ("authorization", "Bearer sk-client-own-key"),
    ("x-api-key", "sk-client-own-key"),
    ("x-goog-api-key", "client-goog-key"),
    ("cookie", "session=client"),
    ("openai-organization", "org-client"),
    ("openai-project", "proj_client"),
    ("anthropic-beta", "prompt-caching-2024-07-31"),
    ("openai-beta", "assistants=v2"),
    ("x-client-trace", "trace-1"),
    ("x-stainless-lang", "python"),
];

/// Upstream headers that must never reach a client.
const NEVER_TO_CLIENT: [&str; 9] = [
    "set-cookie",
    "openai-organization",
    "openai-project",
    "openai-version",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "server",
    "cf-ray",
];

fn chat_body(model: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

#[tokio::test]
async fn upstream_headers_reach_the_client_only_through_the_allow_list() {
    let (_o, _a, _g, gw) = start().await;
    for stream in [false, true] {
        let res = common::chat(gw.addr, &chat_body("oai-ok", stream), &[]).await;
        assert_eq!(res.status, 200);
        let h = res.headers.clone();
        for name in NEVER_TO_CLIENT {
            assert!(
                h.get(name).is_none(),
                "stream={stream}: {name} reached the client"
            );
        }
        assert_eq!(
            h["x-upstream-request-id"], "req_openai_fake",
            "stream={stream}"
        );
        assert_eq!(h["openai-processing-ms"], "42", "stream={stream}");
        // the client's x-request-id is the gateway's own, not the upstream's
        assert_ne!(h["x-request-id"], "req_openai_fake");
        let ct = h["content-type"].to_str().unwrap();
        if stream {
            assert!(ct.starts_with("text/event-stream"));
            assert_eq!(h["x-accel-buffering"], "no");
            assert_eq!(h["cache-control"], "no-cache");
        } else {
            assert!(ct.starts_with("application/json"));
        }
        let body = res.rest().await;
        assert!(
            String::from_utf8_lossy(&body).contains("there"),
            "the answer itself arrives"
        );
    }
}

#[tokio::test]
async fn a_provider_can_expose_more_upstream_headers() {
    let (_o, _a, _g, gw) = start().await;
    let res = common::chat(gw.addr, &chat_body("oai-exposed-ok", false), &[]).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["x-ratelimit-remaining-requests"], "59");
    for name in ["set-cookie", "openai-organization", "server"] {
        assert!(res.headers.get(name).is_none(), "{name} reached the client");
    }
}

#[tokio::test]
async fn client_credentials_and_organisation_never_reach_an_upstream() {
    let (o, a, g, gw) = start().await;
    for model in ["oai-ok", "anth-ok", "gem-ok"] {
        let res = common::chat(gw.addr, &chat_body(model, false), &CLIENT_HEADERS).await;
        assert_eq!(res.status, 200, "{model}");
        res.rest().await;
    }
    let last = |f: &Fake| {
        f.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream called")
    };
    let (so, sa, sg) = (last(&o), last(&a), last(&g));
    for (who, seen) in [("openai", &so), ("anthropic", &sa), ("gemini", &sg)] {
        let h = &seen.headers;
        for name in [
            "cookie",
            "openai-organization",
            "openai-project",
            "x-stainless-lang",
        ] {
            assert!(
                h.get(name).is_none(),
                "{who}: the client's {name} went upstream"
            );
        }
        for (name, _) in &CLIENT_HEADERS {
            for v in h.get_all(*name) {
                let v = v.to_str().unwrap();
                assert!(
                    !v.contains("client"),
                    "{who}: the client's {name} went upstream: {v}"
                );
            }
        }
        assert_eq!(h["anthropic-beta"], "prompt-caching-2024-07-31", "{who}");
        assert_eq!(h["openai-beta"], "assistants=v2", "{who}");
        assert!(
            h.get("x-request-id").is_some(),
            "{who}: the gateway's request id"
        );
    }
    // each upstream got the operator's credential, once, in its own header
    assert_eq!(so.headers["authorization"], format!("Bearer {OPENAI_KEY}"));
    assert_eq!(so.headers.get_all("authorization").iter().count(), 1);
    assert!(so.headers.get("x-api-key").is_none());
    assert_eq!(sa.headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(sa.headers.get_all("x-api-key").iter().count(), 1);
    assert!(sa.headers.get("authorization").is_none());
    assert_eq!(sg.headers["x-goog-api-key"], GEMINI_KEY);
    assert_eq!(sg.headers.get_all("x-goog-api-key").iter().count(), 1);
    assert!(sg.headers.get("authorization").is_none());
    // fixed headers from config, per provider; `forward_headers` only where configured
    assert_eq!(so.headers["x-fixed"], "fixed-oai");
    assert_eq!(sa.headers["x-fixed"], "fixed-anth");
    assert_eq!(sg.headers["x-fixed"], "fixed-gem");
    assert_eq!(so.headers["x-client-trace"], "trace-1");
    assert!(sa.headers.get("x-client-trace").is_none());
}

#[tokio::test]
async fn anthropic_beta_reaches_anthropic_through_the_messages_ingress() {
    let (_o, a, _g, gw) = start().await;
    let body = json!({"model": "anth-ok", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]});
    let mut headers = CLIENT_HEADERS.to_vec();
    headers.push(("anthropic-version", "2023-06-01"));
    let res = send(gw.addr, "POST", "/v1/messages", &headers, body.to_string()).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["x-upstream-request-id"], "req_fake_1");
    res.rest().await;
    let seen = a.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.headers["anthropic-beta"], "prompt-caching-2024-07-31");
    assert_eq!(seen.headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    for name in ["authorization", "openai-organization", "cookie"] {
        assert!(seen.headers.get(name).is_none(), "{name} went upstream");
    }
}

#[tokio::test]
async fn a_credential_quoted_in_an_upstream_error_is_scrubbed() {
    let (_o, _a, _g, gw) = start().await;
    for (model, key, status) in [
        ("oai-leak", OPENAI_KEY, 401),
        ("anth-leak", ANTHROPIC_KEY, 401),
        ("gem-leak", GEMINI_KEY, 401),
    ] {
        for stream in [false, true] {
            let res = common::chat(gw.addr, &chat_body(model, stream), &[]).await;
            assert_eq!(res.status, status, "{model}");
            let body = String::from_utf8(res.rest().await.to_vec()).unwrap();
            assert!(
                !body.contains(key),
                "{model}: the upstream key reached the client: {body}"
            );
            assert!(body.contains("[redacted]"), "{model}: {body}");
        }
        // and on the Anthropic face
        let body = json!({"model": model, "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]});
        let res = send(gw.addr, "POST", "/v1/messages", &[], body.to_string()).await;
        assert_eq!(res.status, status, "{model} /v1/messages");
        let body = String::from_utf8(res.rest().await.to_vec()).unwrap();
        assert!(!body.contains(key), "{model}: {body}");
        assert!(body.contains("[redacted]"), "{model}: {body}");
    }
}

#[tokio::test]
async fn a_credential_quoted_in_a_translated_in_band_error_is_scrubbed() {
    let (_o, _a, _g, gw) = start().await;
    for (model, key) in [
        ("anth-midstream-leak", ANTHROPIC_KEY),
        ("gem-midstream-leak", GEMINI_KEY),
    ] {
        let res = common::chat(gw.addr, &chat_body(model, true), &[]).await;
        assert_eq!(res.status, 200, "{model}");
        let body = String::from_utf8(res.rest().await.to_vec()).unwrap();
        assert!(
            body.contains("data: {\"error\""),
            "{model}: in-band error: {body}"
        );
        assert!(
            !body.contains(key),
            "{model}: the upstream key reached the client: {body}"
        );
        assert!(body.contains("[redacted]"), "{model}: {body}");
    }
}

#[tokio::test]
async fn credentials_can_not_be_configured_to_go_upstream() {
    let (o, a, g) = (
        fakes::openai().await,
        fakes::anthropic().await,
        fakes::gemini().await,
    );
    for (name, field) in [
        ("authorization", "forward_headers"),
        ("openai-organization", "forward_headers"),
        ("x-goog-api-key", "forward_headers"),
        ("content-length", "expose_headers"),
    ] {
        let cfg = config(&o, &a, &g).replace(
            "forward_headers = [\"x-client-trace\"]",
            &format!("{field} = [\"{name}\"]"),
        );
        let cfg = tollgate::config::Config::parse(&cfg, "test.toml").unwrap();
        let Err(err) = tollgate::gateway::Gateway::from_config(&cfg).await else {
            panic!("{field} naming {name} must be refused");
        };
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("providers.oai.{field}")) && msg.contains(name),
            "{msg}"
        );
    }
}
