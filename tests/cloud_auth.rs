//! Providers that authenticate with short-lived tokens, through the reference gateway binary over
//! real sockets: Azure OpenAI with Microsoft Entra ID client credentials, and Gemini on Vertex AI
//! with a service account.
//!
//! The fakes verify what the real services verify: the Entra token endpoint checks the client
//! id, secret, grant and scope; the Google token endpoint checks the JWT's RS256 signature
//! against the service account's public key and its claims (`iss`, `aud`, `scope`, `iat`,
//! `exp`); the Azure and Vertex upstreams accept only a bearer token the fake endpoint issued
//! and that has not expired (nor been revoked). Every test ends by reading the gateway's log
//! (at `debug`): no client secret, assertion, private key or issued token is in it.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use common::GatewayProcess;

const CLIENT_ID: &str = "5f1c2d3e-0000-4000-8000-0123456789ab"; // README's
const CLIENT_SECRET: &str = "entra-client-secret-Zq8~never-print-me";
const TENANT: &str = "contoso.onmicrosoft.com";
const AZURE_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
const GOOGLE_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const SA_EMAIL: &str = "tollgate-test@tollgate-test-project.iam.gserviceaccount.com";
const SA_FILE: &str = include_str!("fixtures/vertex-test-service-account.json");

// ---------------------------------------------------------------------------------------------
// A tiny HTTP server for the fakes.

struct Seen {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

type Res = Response<Full<Bytes>>;
type Handler = Arc<dyn Fn(Seen) -> BoxFuture<'static, Res> + Send + Sync>;

async fn serve(handler: Handler) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let path = parts.uri.path_and_query().map_or("", |p| p.as_str());
                        let seen = Seen {
                            path: path.to_owned(),
                            headers: parts.headers,
                            body,
                        };
                        Ok::<_, Infallible>(handler(seen).await)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Res {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

fn json_res(status: u16, body: Value) -> Res {
    respond(status, "application/json", body.to_string())
}

/// `application/x-www-form-urlencoded` → pairs.
fn form(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
    std::str::from_utf8(body)
        .unwrap()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The fake token endpoints: one state, two grant checks.

/// What the token endpoint does and has done.
#[derive(Default)]
struct Issuer {
    /// Tokens issued so far.
    fetches: AtomicU32,
    /// Lifetime of the next token, seconds.
    expires_in: AtomicU64,
    /// 0: issue; else answer this status (an OAuth error body).
    fail: AtomicU16,
    /// Answer after this many ms.
    delay_ms: AtomicU64,
    /// token → when it expires.
    valid: Mutex<HashMap<String, Instant>>,
    /// Every token issued (none may be logged).
    issued: Mutex<Vec<String>>,
    /// Every assertion received (none may be logged).
    assertions: Mutex<Vec<String>>,
    /// Tokens the upstream treats as revoked.
    revoked: Mutex<HashSet<String>>,
    /// Requests that reached the upstream, with the token they carried.
    served: Mutex<Vec<String>>,
}

impl Issuer {
    fn new(expires_in: u64) -> Arc<Issuer> {
        let i = Issuer::default();
        i.expires_in.store(expires_in, Ordering::SeqCst);
        Arc::new(i)
    }

    /// Answer a token request whose grant `check` accepted (or the OAuth error it returned).
    async fn answer(&self, check: Result<(), &'static str>) -> Res {
        tokio::time::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst))).await;
        if let Err(code) = check {
            return json_res(
                400,
                json!({"error": code, "error_description": "the fake refused the grant"}),
            );
        }
        let fail = self.fail.load(Ordering::SeqCst);
        if fail != 0 {
            let code = if fail == 401 {
                "invalid_client"
            } else {
                "temporarily_unavailable"
            };
            return json_res(
                fail,
                json!({"error": code, "error_description": "AADSTS7000215: Invalid client secret provided."}),
            );
        }
        let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("eyJ0eXAi.fake-access-token-{n}-{}", std::process::id());
        let life = self.expires_in.load(Ordering::SeqCst);
        self.valid
            .lock()
            .unwrap()
            .insert(token.clone(), Instant::now() + Duration::from_secs(life));
        self.issued.lock().unwrap().push(token.clone());
        json_res(
            200,
            json!({"token_type": "Bearer", "expires_in": life, "ext_expires_in": life, "access_token": token}),
        )
    }

    /// The upstream's check: `Authorization: Bearer <a token issued, unexpired, not revoked>`.
    fn check_bearer(&self, seen: &Seen) -> Result<String, &'static str> {
        if seen.headers.contains_key("api-key") || seen.headers.contains_key("x-goog-api-key") {
            return Err("a static key header was sent");
        }
        let auth = seen
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or("no authorization header")?;
        let token = auth.strip_prefix("Bearer ").ok_or("not a bearer token")?;
        let until = *self
            .valid
            .lock()
            .unwrap()
            .get(token)
            .ok_or("a token the endpoint never issued")?;
        if Instant::now() >= until {
            return Err("an expired token");
        }
        if self.revoked.lock().unwrap().contains(token) {
            return Err("a revoked token");
        }
        self.served.lock().unwrap().push(token.to_owned());
        Ok(token.to_owned())
    }

    fn served(&self) -> Vec<String> {
        self.served.lock().unwrap().clone()
    }

    fn issued(&self, n: usize) -> String {
        self.issued.lock().unwrap()[n - 1].clone()
    }
}

/// Microsoft Entra ID's v2.0 token endpoint for [`TENANT`] (client credentials).
async fn entra_endpoint(issuer: Arc<Issuer>) -> SocketAddr {
    serve(Arc::new(move |seen: Seen| {
        let issuer = issuer.clone();
        Box::pin(async move {
            if seen.path != format!("/{TENANT}/oauth2/v2.0/token") {
                return json_res(404, json!({"error": "invalid_request"}));
            }
            let f = form(&seen.body);
            let get = |k: &str| f.get(k).map(String::as_str);
            let check = if get("grant_type") != Some("client_credentials") {
                Err("unsupported_grant_type")
            } else if get("client_id") != Some(CLIENT_ID) {
                Err("unauthorized_client")
            } else if get("client_secret") != Some(CLIENT_SECRET) {
                Err("invalid_client")
            } else if get("scope") != Some(AZURE_SCOPE) {
                Err("invalid_scope")
            } else {
                Ok(())
            };
            issuer.answer(check).await
        })
    }))
    .await
}

/// Google's OAuth token endpoint: a JWT-bearer grant, verified against the service account's
/// public key (`token_uri` is `http://{addr}/token`).
async fn google_endpoint(issuer: Arc<Issuer>) -> SocketAddr {
    let sa: Value = serde_json::from_str(SA_FILE).unwrap();
    let pem = sa["private_key"].as_str().unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
    // the fake keeps only the public half
    let public = Arc::new(
        ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec(),
    );
    let aud: Arc<Mutex<String>> = Arc::default();
    let aud2 = aud.clone();
    let addr = serve(Arc::new(move |seen: Seen| {
        let (issuer, public, aud) = (issuer.clone(), public.clone(), aud2.lock().unwrap().clone());
        Box::pin(async move {
            let f = form(&seen.body);
            if seen.path != "/token" {
                return json_res(404, json!({"error": "invalid_request"}));
            }
            if let Some(a) = f.get("assertion") {
                issuer.assertions.lock().unwrap().push(a.clone());
            }
            let check = match f.get("grant_type").map(String::as_str) {
                Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
                    verify_jwt(f.get("assertion").map_or("", String::as_str), &public, &aud)
                }
                _ => Err("unsupported_grant_type"),
            };
            issuer.answer(check).await
        })
    }))
    .await;
    *aud.lock().unwrap() = format!("http://{addr}/token");
    addr
}

/// RS256 over `header.claims` with the service account's key, and the claims Google checks.
fn verify_jwt(jwt: &str, public: &[u8], aud: &str) -> Result<(), &'static str> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [head, claims, sig] = parts[..] else {
        return Err("invalid_grant");
    };
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| "invalid_grant")?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public)
        .verify(format!("{head}.{claims}").as_bytes(), &sig)
        .map_err(|_| "invalid_grant")?;
    let decode = |s: &str| -> Result<Value, &'static str> {
        let b = URL_SAFE_NO_PAD.decode(s).map_err(|_| "invalid_grant")?;
        serde_json::from_slice(&b).map_err(|_| "invalid_grant")
    };
    let (head, claims) = (decode(head)?, decode(claims)?);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = claims["iat"].as_u64().ok_or("invalid_grant")?;
    let exp = claims["exp"].as_u64().ok_or("invalid_grant")?;
    let ok = head["alg"] == "RS256"
        && claims["iss"] == SA_EMAIL
        && claims["aud"] == aud
        && claims["scope"] == GOOGLE_SCOPE
        && iat.abs_diff(now) <= 60
        && exp > now
        && exp - iat <= 3600;
    if ok { Ok(()) } else { Err("invalid_grant") }
}

// ---------------------------------------------------------------------------------------------
// The fake upstreams.

/// Azure OpenAI's v1 API: `POST /openai/v1/chat/completions`, bearer token required.
async fn azure_upstream(issuer: Arc<Issuer>) -> SocketAddr {
    serve(Arc::new(move |seen: Seen| {
        let issuer = issuer.clone();
        Box::pin(async move {
            if let Err(why) = issuer.check_bearer(&seen) {
                // Azure's answer to a missing or bad token
                return json_res(
                    401,
                    json!({"error": {"code": "401", "message": format!("Access denied: {why}.")}}),
                );
            }
            if seen.path != "/openai/v1/chat/completions" {
                return json_res(404, json!({"error": {"code": "404", "message": "Resource not found"}}));
            }
            let req: Value = serde_json::from_slice(&seen.body).unwrap();
            let model = req["model"].as_str().unwrap_or("").to_owned();
            if req["stream"] == true {
                let chunk = |delta: Value, finish: Value| {
                    format!(
                        "data: {}\n\n",
                        json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                    )
                };
                let body = [
                    chunk(json!({"role": "assistant", "content": "Hello from Azure"}), Value::Null),
                    chunk(json!({}), json!("stop")),
                    "data: [DONE]\n\n".to_owned(),
                ]
                .concat();
                return respond(200, "text/event-stream", body);
            }
            json_res(
                200,
                json!({"id": "c1", "object": "chat.completion", "created": 1, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from Azure"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}),
            )
        })
    }))
    .await
}

const VERTEX_MODELS: &str =
    "/v1/projects/tollgate-test-project/locations/us-central1/publishers/google/models/";

/// Vertex AI: `generateContent` and `streamGenerateContent?alt=sse` of publisher models,
/// bearer token required.
async fn vertex_upstream(issuer: Arc<Issuer>) -> SocketAddr {
    serve(Arc::new(move |seen: Seen| {
        let issuer = issuer.clone();
        Box::pin(async move {
            if issuer.check_bearer(&seen).is_err() {
                return json_res(
                    401,
                    json!({"error": {"code": 401, "status": "UNAUTHENTICATED",
                        "message": "Request had invalid authentication credentials. Expected OAuth 2 access token."}}),
                );
            }
            let Some(rest) = seen.path.strip_prefix(VERTEX_MODELS) else {
                return json_res(404, json!({"error": {"code": 404, "status": "NOT_FOUND", "message": "not found"}}));
            };
            let doc = |text: &str, finish: Option<&str>| {
                let mut cand = json!({"content": {"role": "model", "parts": [{"text": text}]}, "index": 0});
                if let Some(f) = finish {
                    cand["finishReason"] = json!(f);
                }
                json!({"candidates": [cand], "modelVersion": "gemini-2.5-flash", "createTime": "2025-01-01T00:00:00Z",
                    "responseId": "vx1", "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7}})
            };
            if rest.ends_with(":streamGenerateContent?alt=sse") {
                let body = format!(
                    "data: {}\r\n\r\ndata: {}\r\n\r\n",
                    doc("Hello from ", None),
                    doc("Vertex", Some("STOP"))
                );
                return respond(200, "text/event-stream", body);
            }
            if !rest.ends_with(":generateContent") {
                return json_res(404, json!({"error": {"code": 404, "status": "NOT_FOUND", "message": "no such method"}}));
            }
            json_res(200, doc("Hello from Vertex", Some("STOP")))
        })
    }))
    .await
}

// ---------------------------------------------------------------------------------------------
// The gateway.

/// The gateway binary (auth off) with its log at `debug` captured to a file.
struct Run {
    gw: GatewayProcess,
    log: std::path::PathBuf,
}

impl Run {
    fn start(config: &str) -> Run {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-cloud-auth-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("gateway.log");
        let file = std::fs::File::create(&log).unwrap();
        let gw = GatewayProcess::start_with(config, |cmd| {
            cmd.env("RUST_LOG", "debug")
                .env("CLOUD_AUTH_TEST_SECRET", CLIENT_SECRET)
                .stderr(file);
        });
        Run { gw, log }
    }

    async fn chat(&self, model: &str, stream: bool) -> (u16, String) {
        let body = json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]});
        let res = common::chat(self.gw.addr, &body.to_string(), &[]).await;
        let status = res.status.as_u16();
        let retry_after = res.headers.contains_key("retry-after");
        let text = String::from_utf8(res.rest().await.to_vec()).unwrap();
        if status == 503 {
            assert!(retry_after, "a 503 carries Retry-After: {text}");
        }
        (status, text)
    }

    /// Stop the gateway; its whole log holds none of `secrets`.
    fn assert_log_clean(mut self, secrets: &[String]) {
        let _ = self.gw.child.kill();
        let _ = self.gw.child.wait();
        let log = std::fs::read_to_string(&self.log).unwrap();
        assert!(log.contains("fetched an upstream access token"), "{log}");
        for s in secrets {
            assert!(
                !log.contains(s.as_str()),
                "the log holds a secret ({s}):\n{log}"
            );
        }
        let key_line = SA_FILE
            .lines()
            .find(|l| l.contains("PRIVATE KEY-----\\n"))
            .unwrap();
        let key_part = &key_line[key_line.len() - 40..key_line.len() - 10];
        assert!(!log.contains(key_part), "the log holds the private key");
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn entra_config(token: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"
[auth]
enabled = false
[usage]
jsonl = ""
[providers.azure]
kind = "azure"
base_url = "http://{upstream}/openai/v1"
auth = "entra"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret = "${{CLOUD_AUTH_TEST_SECRET}}"
authority = "http://{token}"
[models.gpt]
targets = [{{ provider = "azure", model = "gpt-4o" }}]
"#
    )
}

fn secrets(issuer: &Issuer) -> Vec<String> {
    let mut s = vec![CLIENT_SECRET.to_owned()];
    s.extend(issuer.issued.lock().unwrap().iter().cloned());
    s.extend(issuer.assertions.lock().unwrap().iter().cloned());
    s
}

// ---------------------------------------------------------------------------------------------
// Azure OpenAI with Entra ID.

/// `n` chat requests for `model` at once (request `i` streams when `stream(i)`), spread over the
/// gateway's worker runtimes; their statuses and bodies, in order.
async fn concurrent(
    addr: SocketAddr,
    n: usize,
    model: &'static str,
    stream: fn(usize) -> bool,
) -> Vec<(u16, String)> {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(async move {
                let body = json!({"model": model, "stream": stream(i),
                    "messages": [{"role": "user", "content": "hi"}]});
                let res = common::chat(addr, &body.to_string(), &[]).await;
                let status = res.status.as_u16();
                (
                    status,
                    String::from_utf8(res.rest().await.to_vec()).unwrap(),
                )
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for c in calls {
        out.push(c.await.unwrap());
    }
    out
}

#[tokio::test]
async fn azure_entra_one_token_serves_many_concurrent_requests() {
    let issuer = Issuer::new(3600);
    issuer.delay_ms.store(300, Ordering::SeqCst);
    let token = entra_endpoint(issuer.clone()).await;
    let upstream = azure_upstream(issuer.clone()).await;
    let run = Run::start(&entra_config(token, upstream));
    // 24 requests at once, spread over the gateway's worker runtimes, all waiting for the
    // first token
    let calls = concurrent(run.gw.addr, 24, "gpt", |i| i % 2 == 0).await;
    for (status, body) in calls {
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("Hello from Azure"), "{body}");
    }
    assert_eq!(
        issuer.fetches.load(Ordering::SeqCst),
        1,
        "one token for all"
    );
    let served = issuer.served();
    assert_eq!(served.len(), 24);
    assert!(served.iter().all(|t| *t == issuer.issued(1)));
    // later requests use the cached token
    for _ in 0..5 {
        assert_eq!(run.chat("gpt", false).await.0, 200);
    }
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
    run.assert_log_clean(&secrets(&issuer));
}

#[tokio::test]
async fn azure_entra_token_is_refreshed_when_it_expires_and_when_revoked() {
    // a 2 s token: used for 1.8 s, refreshed from 1.6 s
    let issuer = Issuer::new(2);
    let token = entra_endpoint(issuer.clone()).await;
    let upstream = azure_upstream(issuer.clone()).await;
    let run = Run::start(&entra_config(token, upstream));
    assert_eq!(run.chat("gpt", false).await.0, 200);
    assert_eq!(run.chat("gpt", true).await.0, 200);
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = run.chat("gpt", false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        issuer.fetches.load(Ordering::SeqCst),
        2,
        "a new token after expiry"
    );
    assert_eq!(issuer.served().last().unwrap(), &issuer.issued(2));

    // the upstream refuses a token before its time (revoked): the client sees the 401, the
    // gateway forgets the token and the next request carries a new one
    issuer.expires_in.store(3600, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(run.chat("gpt", false).await.0, 200);
    let current = issuer.issued(3);
    issuer.revoked.lock().unwrap().insert(current.clone());
    let (status, body) = run.chat("gpt", false).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(&current), "{body}");
    let (status, body) = run.chat("gpt", false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(issuer.served().last().unwrap(), &issuer.issued(4));
    run.assert_log_clean(&secrets(&issuer));
}

#[tokio::test]
async fn a_token_endpoint_failure_is_a_clear_error_and_recovers() {
    let issuer = Issuer::new(3600);
    issuer.fail.store(503, Ordering::SeqCst);
    let token = entra_endpoint(issuer.clone()).await;
    let upstream = azure_upstream(issuer.clone()).await;
    let run = Run::start(&entra_config(token, upstream));
    let endpoint = format!("http://{token}/{TENANT}/oauth2/v2.0/token");

    // down: 503 with Retry-After, naming the provider, the endpoint and its status
    let (status, body) = run.chat("gpt", false).await;
    assert_eq!(status, 503, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "upstream_auth_unavailable");
    assert_eq!(e["error"]["provider"], "azure");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("upstream azure"), "{msg}");
    assert!(msg.contains(&endpoint), "{msg}");
    assert!(
        msg.contains("answered 503 Service Unavailable (temporarily_unavailable)"),
        "{msg}"
    );
    // the endpoint's description is not echoed
    assert!(!body.contains("AADSTS"), "{body}");

    // refused credentials: 502 naming the OAuth error
    issuer.fail.store(401, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = run.chat("gpt", true).await;
    assert_eq!(status, 502, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "upstream_auth_failed");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("answered 401 Unauthorized (invalid_client)"),
        "{body}"
    );
    assert!(!body.contains(CLIENT_SECRET), "{body}");
    assert!(
        issuer.served().is_empty(),
        "no upstream call without a token"
    );

    // back: the next request after the wait gets a token and is served
    issuer.fail.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = run.chat("gpt", false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
    run.assert_log_clean(&secrets(&issuer));
}

#[tokio::test]
async fn a_wrong_client_secret_is_refused_by_the_endpoint_and_never_echoed() {
    let issuer = Issuer::new(3600);
    let token = entra_endpoint(issuer.clone()).await;
    let upstream = azure_upstream(issuer.clone()).await;
    let config = entra_config(token, upstream).replace(
        "${CLOUD_AUTH_TEST_SECRET}",
        "wrong-secret-value-9f8e7d6c5b4a",
    );
    let run = Run::start(&config);
    let (status, body) = run.chat("gpt", false).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("answered 400 Bad Request (invalid_client)"),
        "{body}"
    );
    assert!(!body.contains("wrong-secret-value"), "{body}");
    drop(run.gw);
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert!(
        log.contains("could not get an upstream access token"),
        "{log}"
    );
    assert!(!log.contains("wrong-secret-value"), "{log}");
}

#[tokio::test]
async fn a_reload_that_keeps_the_credentials_keeps_the_token() {
    let issuer = Issuer::new(3600);
    let token = entra_endpoint(issuer.clone()).await;
    let upstream = azure_upstream(issuer.clone()).await;
    let config = entra_config(token, upstream);
    let run = Run::start(&config);
    assert_eq!(run.chat("gpt", false).await.0, 200);
    assert_eq!(run.chat("gpt-new", false).await.0, 404);
    let more = "[models.gpt-new]\ntargets = [{ provider = \"azure\", model = \"gpt-4.1\" }]\n";
    std::fs::write(&run.gw.config, format!("{config}{more}")).unwrap();
    run.gw.sighup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while run.chat("gpt-new", false).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the reload did not apply in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(run.chat("gpt", true).await.0, 200);
    assert_eq!(
        issuer.fetches.load(Ordering::SeqCst),
        1,
        "the token survived the reload"
    );
    assert!(issuer.served().iter().all(|t| *t == issuer.issued(1)));
    run.assert_log_clean(&secrets(&issuer));
}

// ---------------------------------------------------------------------------------------------
// Vertex AI with a service account.

/// The throwaway test service account with `token_uri` at the fake endpoint, in a temp file.
fn service_account_file(token: SocketAddr) -> std::path::PathBuf {
    let mut sa: Value = serde_json::from_str(SA_FILE).unwrap();
    sa["token_uri"] = json!(format!("http://{token}/token"));
    let path = std::env::temp_dir().join(format!(
        "tollgate-sa-{}-{}.json",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, sa.to_string()).unwrap();
    path
}

#[tokio::test]
async fn vertex_service_account_serves_json_and_streams_with_one_token() {
    let issuer = Issuer::new(3600);
    issuer.delay_ms.store(200, Ordering::SeqCst);
    let token = google_endpoint(issuer.clone()).await;
    let upstream = vertex_upstream(issuer.clone()).await;
    let sa = service_account_file(token);
    let run = Run::start(&format!(
        r#"
[auth]
enabled = false
[usage]
jsonl = ""
[providers.vertex]
kind = "vertex"
base_url = "http://{upstream}"
location = "us-central1"
credentials_file = "{}"
[models.flash]
targets = [{{ provider = "vertex", model = "gemini-2.5-flash" }}]
"#,
        sa.display()
    ));
    let calls = concurrent(run.gw.addr, 12, "flash", |i| i % 2 == 1).await;
    for (i, (status, body)) in calls.into_iter().enumerate() {
        assert_eq!(status, 200, "{body}");
        if i % 2 == 1 {
            // translated to OpenAI chunks, ending in [DONE]
            assert!(body.contains("chat.completion.chunk"), "{body}");
            assert!(body.contains("Vertex"), "{body}");
            assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        } else {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], "Hello from Vertex");
            assert_eq!(v["usage"]["total_tokens"], 7);
        }
    }
    assert_eq!(
        issuer.fetches.load(Ordering::SeqCst),
        1,
        "one token for all"
    );
    assert_eq!(issuer.assertions.lock().unwrap().len(), 1);
    assert_eq!(issuer.served().len(), 12);
    let _ = std::fs::remove_file(&sa);
    run.assert_log_clean(&secrets(&issuer));
}

#[tokio::test]
async fn vertex_refused_assertion_is_a_502_and_the_token_refreshes_after_expiry() {
    let issuer = Issuer::new(2);
    let token = google_endpoint(issuer.clone()).await;
    let upstream = vertex_upstream(issuer.clone()).await;
    let sa = service_account_file(token);
    let config = |scope: &str| {
        format!(
            r#"
[auth]
enabled = false
[usage]
jsonl = ""
[providers.vertex]
kind = "vertex"
base_url = "http://{upstream}"
location = "us-central1"
credentials_file = "{}"
{scope}
[models.flash]
targets = [{{ provider = "vertex", model = "gemini-2.5-flash" }}]
"#,
            sa.display()
        )
    };
    // a scope the endpoint does not grant: the assertion is refused
    let run = Run::start(&config(
        r#"scope = "https://www.googleapis.com/auth/other""#,
    ));
    let (status, body) = run.chat("flash", false).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("answered 400 Bad Request (invalid_grant)"),
        "{body}"
    );
    assert!(body.contains(&format!("http://{token}/token")), "{body}");
    drop(run);

    let run = Run::start(&config(""));
    assert_eq!(run.chat("flash", false).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(run.chat("flash", true).await.0, 200);
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 2);
    assert_eq!(issuer.served().last().unwrap(), &issuer.issued(2));
    let _ = std::fs::remove_file(&sa);
    run.assert_log_clean(&secrets(&issuer));
}

// ---------------------------------------------------------------------------------------------
// README's examples, pointed at the fakes, serve.

fn readme_block(needle: &str) -> String {
    let readme = include_str!("../README.md");
    readme
        .split("```toml\n")
        .skip(1)
        .map(|b| &b[..b.find("```").unwrap()])
        .find(|b| b.contains(needle))
        .unwrap_or_else(|| panic!("README has a toml block with {needle}"))
        .to_owned()
}

#[tokio::test]
async fn the_readme_examples_serve_through_the_fakes() {
    const OFF: &str = "\n[auth]\nenabled = false\n";
    let issuer = Issuer::new(3600);
    let token = entra_endpoint(issuer.clone()).await;
    let upstream = azure_upstream(issuer.clone()).await;
    let block = readme_block("auth = \"entra\"");
    let config = block
        .replace(
            "https://my-resource.openai.azure.com",
            &format!("http://{upstream}"),
        )
        .replace("${AZURE_CLIENT_SECRET}", "${CLOUD_AUTH_TEST_SECRET}")
        .replace(
            "auth = \"entra\"",
            &format!("auth = \"entra\"\nauthority = \"http://{token}\""),
        );
    let run = Run::start(&(config + OFF));
    let (status, body) = run.chat("gpt-4o", false).await;
    assert_eq!(status, 200, "{body}");
    run.assert_log_clean(&secrets(&issuer));

    let issuer = Issuer::new(3600);
    let token = google_endpoint(issuer.clone()).await;
    let upstream = vertex_upstream(issuer.clone()).await;
    let sa = service_account_file(token);
    let config = readme_block("kind = \"vertex\"")
        .replace(
            "${GOOGLE_APPLICATION_CREDENTIALS}",
            &sa.display().to_string(),
        )
        .replace(
            "kind = \"vertex\"",
            &format!("kind = \"vertex\"\nbase_url = \"http://{upstream}\""),
        );
    let run = Run::start(&(config + OFF));
    let (status, body) = run.chat("gemini-2.5-flash", true).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Vertex"), "{body}");
    let _ = std::fs::remove_file(&sa);
    run.assert_log_clean(&secrets(&issuer));
}
