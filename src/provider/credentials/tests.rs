use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

/// A fetcher that counts its fetches and answers from a script (last entry repeats).
struct Scripted {
    fetches: Arc<AtomicU32>,
    script: Script,
    delay: Duration,
}

impl TokenFetcher for Scripted {
    fn endpoint(&self) -> &str {
        "https://login.example/tenant/oauth2/v2.0/token"
    }
    fn fetch(&self) -> BoxFuture<Result<FetchedToken, TokenError>> {
        let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        let next = {
            let mut s = self.script.lock().unwrap();
            if s.len() > 1 {
                s.remove(0)
            } else {
                s[0].clone()
            }
        };
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            next.map(|secs| FetchedToken {
                access_token: Secret::new(format!("token-number-{n}")),
                expires_in: Duration::from_secs(secs),
            })
        })
    }
}

type Script = Arc<Mutex<Vec<Result<u64, TokenError>>>>;

fn source(script: Vec<Result<u64, TokenError>>) -> (TokenSource, Arc<AtomicU32>, Script) {
    let fetches = Arc::new(AtomicU32::new(0));
    let script = Arc::new(Mutex::new(script));
    let f = Scripted {
        fetches: fetches.clone(),
        script: script.clone(),
        delay: Duration::from_millis(50),
    };
    (TokenSource::new("azure-east", f), fetches, script)
}

fn bearer(t: &BearerToken) -> &str {
    t.header_value().to_str().unwrap()
}

#[tokio::test(start_paused = true)]
async fn one_fetch_for_many_concurrent_requests() {
    let (src, fetches, _) = source(vec![Ok(3600)]);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let src = src.clone();
            tokio::spawn(async move { src.token().await.map(|t| bearer(&t).to_owned()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "Bearer token-number-1");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert!(src.token().await.unwrap().header_value().is_sensitive());
}

#[tokio::test(start_paused = true)]
async fn refreshes_ahead_of_expiry_in_the_background_then_after_expiry() {
    // 100 s: refreshed once 20 s are left (at 80 s), used until 10 s are left (90 s).
    let (src, fetches, _) = source(vec![Ok(100)]);
    assert_eq!(bearer(&src.token().await.unwrap()), "Bearer token-number-1");
    tokio::time::advance(Duration::from_secs(79)).await;
    assert_eq!(bearer(&src.token().await.unwrap()), "Bearer token-number-1");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    // due: the requests keep the current token while one background fetch runs
    for _ in 0..10 {
        assert_eq!(bearer(&src.token().await.unwrap()), "Bearer token-number-1");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    assert_eq!(bearer(&src.token().await.unwrap()), "Bearer token-number-2");
    // an hour's token refreshes 5 minutes before it expires: past expiry, the request waits
    tokio::time::advance(Duration::from_secs(200)).await;
    assert_eq!(bearer(&src.token().await.unwrap()), "Bearer token-number-3");
    assert_eq!(fetches.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn an_hours_token_is_refreshed_five_minutes_before_it_expires() {
    let (src, fetches, _) = source(vec![Ok(3600)]);
    src.token().await.unwrap();
    tokio::time::advance(Duration::from_secs(3600 - 301)).await;
    src.token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    src.token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_shared_then_retried_after_a_second() {
    let down = TokenError::Status {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: None,
    };
    let (src, fetches, script) = source(vec![Err(down)]);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let src = src.clone();
            tokio::spawn(async move { src.token().await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code(), Some("upstream_auth_unavailable"));
        assert!(e.retry_after().is_some());
        assert_eq!(e.provider().map(|p| &**p), Some("azure-east"));
        assert!(
            e.message().contains(
                "token endpoint https://login.example/tenant/oauth2/v2.0/token answered 503"
            ),
            "{}",
            e.message()
        );
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "one fetch for all waiters"
    );
    // within the second: answered without a fetch
    assert!(src.token().await.is_err());
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    // the endpoint is back: after the wait the next request fetches and succeeds
    *script.lock().unwrap() = vec![Ok(3600)];
    tokio::time::advance(RETRY_AFTER_FAILURE).await;
    assert_eq!(bearer(&src.token().await.unwrap()), "Bearer token-number-2");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_502_naming_the_code_and_a_failed_refresh_keeps_the_token() {
    let refused = TokenError::Status {
        status: StatusCode::UNAUTHORIZED,
        code: Some("invalid_client".into()),
    };
    let (src, fetches, _) = source(vec![Ok(100), Err(refused)]);
    src.token().await.unwrap();
    tokio::time::advance(Duration::from_secs(85)).await;
    // the background refresh fails: the current token is still used
    assert_eq!(bearer(&src.token().await.unwrap()), "Bearer token-number-1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(bearer(&src.token().await.unwrap()), "Bearer token-number-1");
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    tokio::time::advance(Duration::from_secs(10)).await;
    let e = src.token().await.unwrap_err();
    assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(e.code(), Some("upstream_auth_failed"));
    assert!(
        e.message()
            .contains("answered 401 Unauthorized (invalid_client)")
    );
}

#[tokio::test(start_paused = true)]
async fn an_invalidated_token_is_fetched_again() {
    let (src, fetches, _) = source(vec![Ok(3600)]);
    let t = src.token().await.unwrap();
    src.invalidate(&t);
    assert_eq!(bearer(&src.token().await.unwrap()), "Bearer token-number-2");
    // invalidating a token already replaced keeps the new one
    src.invalidate(&t);
    assert_eq!(bearer(&src.token().await.unwrap()), "Bearer token-number-2");
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

#[test]
fn token_answers() {
    let t = parse_token_answer(
        br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0eXAi"}"#,
    )
    .unwrap();
    assert_eq!(t.access_token.expose(), "eyJ0eXAi");
    assert_eq!(t.expires_in, Duration::from_secs(3599));
    // Entra's v1 endpoint: a string of digits
    let t = parse_token_answer(br#"{"access_token":"x","expires_in":"3600"}"#).unwrap();
    assert_eq!(t.expires_in, Duration::from_secs(3600));
    for (body, why) in [
        (&br#"{"expires_in":3600}"#[..], "no access_token"),
        (br#"{"access_token":"x"}"#, "no expires_in"),
        (
            br#"{"access_token":"x","expires_in":-1}"#,
            "expires_in is not positive",
        ),
        (
            br#"{"access_token":"x","expires_in":60,"token_type":"mac"}"#,
            "token_type is not Bearer",
        ),
        (b"<html>", "the answer is not JSON"),
    ] {
        assert_eq!(
            parse_token_answer(body).unwrap_err(),
            TokenError::BadAnswer(why)
        );
    }
    assert_eq!(
        oauth_error_code(br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#),
        Some("invalid_client".into())
    );
    // free text is never taken as a code
    assert_eq!(
        oauth_error_code(br#"{"error":"secret abc was wrong"}"#),
        None
    );
}

#[test]
fn form_encoding() {
    assert_eq!(
        form_encode(&[("scope", "https://x/.default"), ("s", "a+b c&d=é")]),
        "scope=https%3A%2F%2Fx%2F.default&s=a%2Bb+c%26d%3D%C3%A9"
    );
}

#[test]
fn entra_settings_are_checked_without_echoing_the_secret() {
    let make = |tenant: &str, id: &str, secret: &str| {
        EntraClientCredentials::new(
            "https://login.microsoftonline.com/",
            tenant,
            id,
            Secret::new(secret),
            AZURE_COGNITIVE_SERVICES_SCOPE,
        )
    };
    let ok = make("contoso.onmicrosoft.com", "app", "s3cr3t-value").unwrap();
    assert_eq!(
        ok.endpoint(),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert!(make("a/b", "app", "s").unwrap_err().0.contains("tenant_id"));
    assert!(make("t", " ", "s").unwrap_err().0.contains("client_id"));
    assert!(
        make("t", "app", "")
            .unwrap_err()
            .0
            .contains("client_secret")
    );
}

const FIXTURE: &str = include_str!("../../../tests/fixtures/vertex-test-service-account.json");

#[test]
fn a_service_account_signs_a_verifiable_assertion() {
    let sa = ServiceAccount::from_json(FIXTURE.as_bytes()).unwrap();
    assert_eq!(sa.project_id(), Some("tollgate-test-project"));
    assert!(!format!("{sa:?}").contains("PRIVATE"));
    let jwt = sa.assertion(GOOGLE_CLOUD_PLATFORM_SCOPE).unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        ring::signature::KeyPair::public_key(&sa.key)
            .as_ref()
            .to_vec(),
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    public.verify(signed.as_bytes(), &sig).unwrap();
    let head: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(head["alg"], "RS256");
    assert_eq!(head["kid"], "0123456789abcdef0123456789abcdef01234567");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        claims["iss"],
        "tollgate-test@tollgate-test-project.iam.gserviceaccount.com"
    );
    assert_eq!(claims["aud"], "https://oauth2.googleapis.com/token");
    assert_eq!(claims["scope"], GOOGLE_CLOUD_PLATFORM_SCOPE);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
}

#[test]
fn bad_key_files_name_the_field_never_the_key() {
    let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    v["private_key"] =
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n".into();
    let e = ServiceAccount::from_json(v.to_string().as_bytes()).unwrap_err();
    assert!(e.0.contains("`private_key`"), "{e}");
    assert!(!e.0.contains("bm90IGEga2V5"), "{e}");
    let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    v.as_object_mut().unwrap().remove("client_email");
    let e = ServiceAccount::from_json(v.to_string().as_bytes()).unwrap_err();
    assert!(e.0.contains("client_email"), "{e}");
    let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    v["type"] = "authorized_user".into();
    let e = ServiceAccount::from_json(v.to_string().as_bytes()).unwrap_err();
    assert!(e.0.contains("service_account"), "{e}");
}

#[tokio::test]
async fn sources_with_the_same_identity_share_their_token() {
    let entra = |secret: &str| {
        EntraClientCredentials::new(
            "http://127.0.0.1:9",
            "t",
            "app",
            Secret::new(secret),
            AZURE_COGNITIVE_SERVICES_SCOPE,
        )
        .unwrap()
    };
    let a = TokenSource::shared("shared-test", entra("one-secret-value"));
    let b = TokenSource::shared("shared-test", entra("one-secret-value"));
    assert!(Arc::ptr_eq(&a.0, &b.0));
    let other = TokenSource::shared("shared-test", entra("another-secret-value"));
    assert!(!Arc::ptr_eq(&a.0, &other.0));
    let renamed = TokenSource::shared("shared-test-2", entra("one-secret-value"));
    assert!(!Arc::ptr_eq(&a.0, &renamed.0));
    // once every holder is gone, a new source starts afresh
    let weak = Arc::downgrade(&a.0);
    drop((a, b));
    assert!(weak.upgrade().is_none());
    let _ = TokenSource::shared("shared-test", entra("one-secret-value"));
}
