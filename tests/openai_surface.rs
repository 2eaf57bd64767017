//! Issue 13, acceptance 6: the rest of OpenAI's surface — moderations, images, speech,
//! transcriptions and translations — through the whole stack over real sockets: virtual keys,
//! routing (OpenAI-compatible targets only), fallback (the first target answers 503, the second
//! serves; an upload is sent again intact), one usage record each with its units and cost, the
//! speech audio streamed as it comes, and the upload cap (a 25 MiB file passes, a larger upload
//! gets 413 without the upstream being called).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Gateway, ScriptedUpstream, Streaming};
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tollgate::usage::{Outcome, UsageSource};

const KEY: &str = "sk-tg-surface-test-key-0000000000001";
const BOUNDARY: &str = "----tollgate-surface-7MA4YWxkTrZu0gW";

fn config(first: &ScriptedUpstream, second: &ScriptedUpstream) -> String {
    config_with(first, second, "")
}

fn config_with(first: &ScriptedUpstream, second: &ScriptedUpstream, extra: &str) -> String {
    let both = |model: &str| {
        format!(
            r#"targets = [{{ provider = "first", model = "{model}" }}, {{ provider = "second", model = "{model}" }}]"#
        )
    };
    format!(
        r#"
{extra}
[[auth.keys]]
name = "team"
sha256 = "{hash}"
[usage]
jsonl = ""
[providers.first]
kind = "openai"
base_url = "{a}"
api_key = "sk-first"
[providers.second]
kind = "openai"
base_url = "{b}"
api_key = "sk-second"
[providers.anth]
kind = "anthropic"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-ant"
[models."omni-moderation-latest"]
{moderation}
[models."dall-e-3"]
{images}
[models."tts-1"]
{speech}
[models.whisper]
{whisper}
[models.mixed]
targets = [{{ provider = "anth", model = "claude-sonnet-4-5" }}, {{ provider = "first", model = "tts-1" }}]
[models."claude-only"]
targets = [{{ provider = "anth", model = "claude-sonnet-4-5" }}]
"#,
        hash = tollgate::auth::hash_key(KEY),
        a = first.base_url(),
        b = second.base_url(),
        moderation = both("omni-moderation-latest"),
        images = both("dall-e-3"),
        speech = both("tts-1"),
        whisper = both("whisper-1"),
    )
}

const AUTH: (&str, &str) = (
    "authorization",
    "Bearer sk-tg-surface-test-key-0000000000001",
);

/// POST `body` with exactly the headers given (no content type added); the request is built
/// at once, so the future borrows nothing.
fn post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> impl std::future::Future<Output = Result<Streaming, hyper::Error>> + Send + 'static {
    let mut req = Request::post(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).unwrap();
    async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let res = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .expect("no response head in 30 s")?;
        let (parts, body) = res.into_parts();
        Ok(Streaming::from_parts(
            parts.status,
            parts.headers,
            body,
            conn,
        ))
    }
}

/// A transcription form: `file` (an MP3 of `file` bytes) and `model`, as the OpenAI SDKs send it.
fn form(model: &str, file: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(file.len() + 512);
    b.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\njson\r\n").as_bytes());
    b.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"speech.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n").as_bytes());
    b.extend_from_slice(file);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    Bytes::from(b)
}

/// `n` bytes of deterministic noise (audio-like: every byte value, delimiter look-alikes too).
fn noise(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    // A delimiter look-alike without its CRLF, inside the file.
    out[1000..1000 + BOUNDARY.len() + 2].copy_from_slice(format!("--{BOUNDARY}").as_bytes());
    out
}

fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

const MODERATION: &str = r#"{"id":"modr-1","model":"omni-moderation-latest","results":[{"flagged":false,"categories":{"violence":false},"category_scores":{"violence":0.0001}}]}"#;
const UNAVAILABLE: &str =
    r#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#;

#[tokio::test]
async fn moderations_need_a_key_fall_back_and_leave_a_record() {
    let (mut a, mut b) = (
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
    );
    let gw = Gateway::start(&config(&a, &b)).await;
    let json = ("content-type", "application/json");
    let body = Bytes::from_static(br#"{"input":"I want to hug everyone"}"#);

    // No key: 401, and no upstream is called.
    let res = post(gw.addr, "/v1/moderations", &[json], body.clone())
        .await
        .unwrap();
    assert_eq!(res.status, 401);
    a.assert_idle(Duration::from_millis(100)).await;

    // A body without `model` is routed as omni-moderation-latest; the first target's 503
    // falls back to the second, which serves.
    let client = tokio::spawn(post(gw.addr, "/v1/moderations", &[json, AUTH], body));
    let ex = a.next().await;
    assert_eq!(ex.path, "/v1/moderations");
    assert_eq!(ex.json()["model"], "omni-moderation-latest");
    assert_eq!(ex.json()["input"], "I want to hug everyone");
    assert_eq!(ex.headers["authorization"], "Bearer sk-first");
    ex.respond(503, &[("content-type", "application/json")], UNAVAILABLE);
    let ex = b.next().await;
    assert_eq!(ex.path, "/v1/moderations");
    assert_eq!(ex.headers["authorization"], "Bearer sk-second");
    ex.respond(200, &[("content-type", "application/json")], MODERATION);
    let res = client.await.unwrap().unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(&res.rest().await[..], MODERATION.as_bytes());

    let recs = gw.records(2).await;
    assert_eq!((recs[0].outcome, recs[0].status), (Outcome::Refused, 401));
    let r = &recs[1];
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(r.key_id.as_deref(), Some("team"));
    assert_eq!(r.model, "omni-moderation-latest");
    assert_eq!(r.provider.as_deref(), Some("second"));
    assert_eq!(r.attempts, 2);
    // A moderation reports no usage: none, and no cost (never an estimate from the bytes).
    assert_eq!(r.usage_source, UsageSource::None);
    assert_eq!(r.usage.total_tokens, 0);
    assert_eq!(r.cost_pico, None);
}

#[tokio::test]
async fn every_endpoint_refuses_a_request_without_a_valid_key() {
    let (mut a, mut b) = (
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
    );
    let gw = Gateway::start(&config(&a, &b)).await;
    let json = "application/json";
    let ct = content_type();
    let cases: [(&str, &str, Bytes); 5] = [
        (
            "/v1/moderations",
            json,
            Bytes::from_static(br#"{"input":"x"}"#),
        ),
        (
            "/v1/images/generations",
            json,
            Bytes::from_static(br#"{"model":"dall-e-3","prompt":"p"}"#),
        ),
        (
            "/v1/audio/speech",
            json,
            Bytes::from_static(br#"{"model":"tts-1","input":"x","voice":"alloy"}"#),
        ),
        ("/v1/audio/transcriptions", &ct, form("whisper", b"ID3")),
        ("/v1/audio/translations", &ct, form("whisper", b"ID3")),
    ];
    for (path, ct, body) in cases {
        for auth in [None, Some("Bearer sk-tg-wrong-key")] {
            let mut headers = vec![("content-type", ct)];
            headers.extend(auth.map(|v| ("authorization", v)));
            let res = post(gw.addr, path, &headers, body.clone()).await.unwrap();
            assert_eq!(res.status, 401, "{path} {auth:?}");
            let j = res.json().await;
            assert!(j["error"]["message"].is_string(), "{path}: {j}");
        }
    }
    a.assert_idle(Duration::from_millis(100)).await;
    b.assert_idle(Duration::from_millis(10)).await;
    let recs = gw.records(10).await;
    assert!(
        recs.iter()
            .all(|r| r.outcome == Outcome::Refused && r.status == 401)
    );
}

#[tokio::test]
async fn images_fall_back_and_are_counted_and_priced_per_image() {
    let (mut a, mut b) = (
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
    );
    let gw = Gateway::start(&config(&a, &b)).await;
    let body = Bytes::from_static(
        br#"{"model":"dall-e-3","prompt":"a lighthouse","n":2,"size":"1024x1024"}"#,
    );
    let client = tokio::spawn(post(
        gw.addr,
        "/v1/images/generations",
        &[("content-type", "application/json"), AUTH],
        body,
    ));
    let ex = a.next().await;
    assert_eq!(ex.path, "/v1/images/generations");
    assert_eq!(ex.json()["n"], 2);
    ex.respond(503, &[("content-type", "application/json")], UNAVAILABLE);
    let ex = b.next().await;
    assert_eq!(ex.json()["prompt"], "a lighthouse");
    let answer = r#"{"created":1713833628,"data":[{"url":"https://example.com/1.png","revised_prompt":"x"},{"url":"https://example.com/2.png","revised_prompt":"y"}]}"#;
    ex.respond(200, &[("content-type", "application/json")], answer);
    let res = client.await.unwrap().unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(&res.rest().await[..], answer.as_bytes());

    let r = &gw.records(1).await[0];
    assert_eq!((r.outcome, r.attempts), (Outcome::Success, 2));
    assert_eq!(r.units.images, 2);
    assert_eq!(r.usage_source, UsageSource::Upstream);
    // The shipped price of dall-e-3: USD 0.04 an image.
    assert_eq!(r.cost_pico, Some(2 * 40_000_000_000));
}

#[tokio::test]
async fn a_daily_budget_counts_what_images_cost() {
    let (mut a, b) = (
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
    );
    let gw = Gateway::start(&config_with(
        &a,
        &b,
        "[limits.global]\nbudget_usd_day = 0.05",
    ))
    .await;
    let body = Bytes::from_static(br#"{"model":"dall-e-3","prompt":"a lighthouse","n":2}"#);
    let headers = [("content-type", "application/json"), AUTH];
    let client = tokio::spawn(post(
        gw.addr,
        "/v1/images/generations",
        &headers,
        body.clone(),
    ));
    let answer = r#"{"created":1,"data":[{"url":"https://example.com/1.png"},{"url":"https://example.com/2.png"}]}"#;
    a.next()
        .await
        .respond(200, &[("content-type", "application/json")], answer);
    let res = client.await.unwrap().unwrap();
    assert_eq!(res.status, 200);
    res.rest().await;
    assert_eq!(gw.records(1).await[0].cost_pico, Some(80_000_000_000));
    // USD 0.08 spent of 0.05: the next request is refused before any upstream is called.
    let res = post(gw.addr, "/v1/images/generations", &headers, body)
        .await
        .unwrap();
    assert_eq!(res.status, 429);
    a.assert_idle(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn speech_audio_streams_through_as_it_comes() {
    let (mut a, mut b) = (
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
    );
    let gw = Gateway::start(&config(&a, &b)).await;
    let body = Bytes::from_static(br#"{"model":"tts-1","input":"Hello, world","voice":"alloy"}"#);
    let client = tokio::spawn(post(
        gw.addr,
        "/v1/audio/speech",
        &[("content-type", "application/json"), AUTH],
        body,
    ));
    let ex = a.next().await;
    assert_eq!(ex.path, "/v1/audio/speech");
    ex.respond(503, &[("content-type", "application/json")], UNAVAILABLE);
    let ex = b.next().await;
    assert_eq!(ex.json()["voice"], "alloy");
    let tx = ex.respond_frames(&[("content-type", "audio/mpeg")]);
    let chunk1 = Bytes::from(noise(4096));
    let chunk2 = Bytes::from(vec![7u8; 3000]);
    assert!(tx.send(chunk1.clone()).await);
    // The client has the head and the first audio bytes while the upstream is still speaking.
    let mut res = client.await.unwrap().unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["content-type"], "audio/mpeg");
    assert!(res.headers.get("content-length").is_none());
    let mut got = Vec::new();
    while got.len() < chunk1.len() {
        got.extend_from_slice(&res.next_data().await.expect("the first chunk"));
    }
    assert_eq!(got, chunk1);
    assert!(!tx.is_closed());
    assert!(tx.send(chunk2.clone()).await);
    drop(tx);
    assert_eq!(&res.rest().await[..], &chunk2[..]);

    let r = &gw.records(1).await[0];
    assert_eq!((r.outcome, r.attempts), (Outcome::Success, 2));
    // Characters of `input`, counted by the gateway (the upstream reports none): estimated.
    assert_eq!(r.units.characters, 12);
    assert_eq!(r.usage_source, UsageSource::Estimated);
    // tts-1: USD 15 per million characters.
    assert_eq!(r.cost_pico, Some(12 * 15_000_000));
}

#[tokio::test]
async fn a_25_mib_upload_reaches_the_upstream_intact_and_is_replayed_on_fallback() {
    let (mut a, mut b) = (
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
    );
    let gw = Gateway::start(&config(&a, &b)).await;
    let file = noise(25 << 20);
    let sent = form("whisper", &file);
    // What the upstreams must get: the same bytes, the model field rewritten.
    let want = form("whisper-1", &file);
    let ct = content_type();
    let started = std::time::Instant::now();
    let client = tokio::spawn(post(
        gw.addr,
        "/v1/audio/transcriptions",
        &[("content-type", ct.as_str()), AUTH],
        sent,
    ));
    for (i, up) in [&mut a, &mut b].into_iter().enumerate() {
        let ex = up.next().await;
        eprintln!(
            "attempt {i}: upload at the upstream after {:?}",
            started.elapsed()
        );
        assert_eq!(ex.path, "/v1/audio/transcriptions");
        assert_eq!(ex.headers["content-type"], ct.as_str());
        assert_eq!(ex.body.len(), want.len());
        // Byte for byte (a memcmp: a hash of 25 MiB is slow in a debug build).
        assert!(
            ex.body[..] == want[..],
            "attempt {i}: the upload arrived altered"
        );
        if i == 0 {
            ex.respond(503, &[("content-type", "application/json")], UNAVAILABLE);
        } else {
            let answer = r#"{"text":"Hello there.","usage":{"type":"duration","seconds":12}}"#;
            ex.respond(200, &[("content-type", "application/json")], answer);
        }
    }
    let res = client.await.unwrap().unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.json().await["text"], "Hello there.");
    eprintln!(
        "25 MiB upload, two attempts: {:?} round trip",
        started.elapsed()
    );

    let r = &gw.records(1).await[0];
    assert_eq!((r.outcome, r.attempts), (Outcome::Success, 2));
    assert_eq!(r.upstream_model.as_deref(), Some("whisper-1"));
    assert_eq!(r.units.audio_ms, 12_000);
    assert_eq!(r.usage_source, UsageSource::Upstream);
    // whisper-1: USD 0.006 a minute.
    assert_eq!(r.cost_pico, Some(12 * 100_000_000));
    // The estimate is not made of audio bytes.
    assert_eq!(r.usage.total_tokens, 0);
}

#[tokio::test]
async fn an_upload_over_the_cap_gets_413_and_the_upstream_is_never_called() {
    let (mut a, mut b) = (
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
    );
    let gw = Gateway::start(&config(&a, &b)).await;
    let big = form("whisper", &noise(27 << 20));
    let ct = content_type();
    // Content-Length says it: refused before a byte of the body is read.
    let res = post(
        gw.addr,
        "/v1/audio/transcriptions",
        &[("content-type", ct.as_str()), AUTH],
        big.clone(),
    )
    .await;
    match res {
        Ok(res) => {
            assert_eq!(res.status, 413);
            let j = res.json().await;
            assert!(
                j["error"]["message"].as_str().unwrap().contains("27262976"),
                "{j}"
            );
        }
        // The gateway may close the connection while the client is still sending.
        Err(e) => panic!("no 413 answer: {e}"),
    }
    // Without Content-Length (chunked): refused once the stream passes the cap.
    let chunked = stream_post(gw.addr, "/v1/audio/translations", &ct, big).await;
    assert_eq!(chunked, 413);
    a.assert_idle(Duration::from_millis(200)).await;
    b.assert_idle(Duration::from_millis(10)).await;
}

/// POST `body` in 1 MiB frames without a Content-Length; the answer's status.
async fn stream_post(addr: std::net::SocketAddr, path: &str, ct: &str, body: Bytes) -> u16 {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..body.len())
        .step_by(1 << 20)
        .map(|i| Ok(Frame::data(body.slice(i..body.len().min(i + (1 << 20))))))
        .collect();
    let req = Request::post(path)
        .header("host", addr.to_string())
        .header("content-type", ct)
        .header(AUTH.0, AUTH.1)
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("no answer in 30 s")
        .expect("an answer");
    res.status().as_u16()
}

#[tokio::test]
async fn only_openai_compatible_targets_serve_the_surface() {
    let (mut a, b) = (
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
    );
    let gw = Gateway::start(&config(&a, &b)).await;
    let json = ("content-type", "application/json");
    // An Anthropic target is skipped: the OpenAI-compatible one behind it serves.
    let client = tokio::spawn(post(
        gw.addr,
        "/v1/audio/speech",
        &[json, AUTH],
        Bytes::from_static(br#"{"model":"mixed","input":"hi","voice":"alloy"}"#),
    ));
    let ex = a.next().await;
    assert_eq!(ex.json()["model"], "tts-1");
    ex.respond(200, &[("content-type", "audio/mpeg")], vec![1u8; 100]);
    let res = client.await.unwrap().unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.rest().await.len(), 100);
    // A model with no such target: a 400 that names the endpoint.
    let res = post(
        gw.addr,
        "/v1/audio/speech",
        &[json, AUTH],
        Bytes::from_static(br#"{"model":"claude-only","input":"hi","voice":"alloy"}"#),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 400);
    let j = res.json().await;
    let msg = j["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("speech") && msg.contains("OpenAI-compatible"),
        "{msg}"
    );
    // A translation answered as plain text: passed through, recorded with no usage.
    let ct = content_type();
    let client = tokio::spawn(post(
        gw.addr,
        "/v1/audio/translations",
        &[("content-type", ct.as_str()), AUTH],
        form("whisper", b"ID3 tiny"),
    ));
    let ex = a.next().await;
    assert_eq!(ex.path, "/v1/audio/translations");
    ex.respond(200, &[("content-type", "text/plain")], "Hello.");
    let res = client.await.unwrap().unwrap();
    assert_eq!(&res.rest().await[..], b"Hello.");
    let recs = gw.records(3).await;
    let r = recs.iter().find(|r| r.model == "whisper").unwrap();
    assert_eq!(r.usage_source, UsageSource::None);
    assert_eq!(r.cost_pico, None);
    // A JSON body on the multipart endpoint is refused before anything is read.
    let res = post(
        gw.addr,
        "/v1/audio/transcriptions",
        &[json, AUTH],
        Bytes::from_static(br#"{"model":"whisper"}"#),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 400);
}

#[tokio::test]
async fn the_mock_provider_serves_the_surface_in_openai_wire_format() {
    let cfg = r#"
[auth]
enabled = false
[usage]
jsonl = ""
[providers.mock]
kind = "mock"
[models."omni-moderation-latest"]
targets = [{ provider = "mock", model = "omni-moderation-latest" }]
[models.img]
targets = [{ provider = "mock", model = "dall-e-3" }]
[models.tts]
targets = [{ provider = "mock", model = "tts-1?chunks=4&delay_ms=50" }]
[models.whisper]
targets = [{ provider = "mock", model = "whisper-1" }]
"#;
    let gw = Gateway::start(cfg).await;
    let json = [("content-type", "application/json")];
    let res = post(
        gw.addr,
        "/v1/moderations",
        &json,
        Bytes::from_static(br#"{"input":["a","b"]}"#),
    )
    .await
    .unwrap();
    let j = res.json().await;
    assert_eq!(j["results"].as_array().unwrap().len(), 2);
    assert_eq!(j["results"][0]["flagged"], false);
    let res = post(
        gw.addr,
        "/v1/images/generations",
        &json,
        Bytes::from_static(br#"{"model":"img","prompt":"p","n":3}"#),
    )
    .await
    .unwrap();
    assert_eq!(res.json().await["data"].as_array().unwrap().len(), 3);
    // Speech: four 1 KiB frames 50 ms apart; the first arrives long before the last is made.
    let t = std::time::Instant::now();
    let mut res = post(
        gw.addr,
        "/v1/audio/speech",
        &json,
        Bytes::from_static(br#"{"model":"tts","input":"abc","voice":"alloy"}"#),
    )
    .await
    .unwrap();
    assert_eq!(res.headers["content-type"], "audio/mpeg");
    let first = res.next_data().await.unwrap();
    let first_at = t.elapsed();
    let rest = res.rest().await;
    assert!(first.starts_with(b"ID3"));
    assert_eq!(first.len() + rest.len(), 4096);
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert!(
        first_at < Duration::from_millis(150),
        "first audio after {first_at:?}"
    );
    let ct = content_type();
    let res = post(
        gw.addr,
        "/v1/audio/transcriptions",
        &[("content-type", ct.as_str())],
        form("whisper", &noise(64_000)),
    )
    .await
    .unwrap();
    assert_eq!(res.json().await["text"], "Hello there!");
    let recs = gw.records(4).await;
    let units: Vec<_> = recs
        .iter()
        .map(|r| (r.model.as_str(), r.units, r.usage_source))
        .collect();
    assert_eq!(units[1].1.images, 3);
    assert_eq!(units[2].1.characters, 3);
    // 64,000 bytes of file plus the form, at 16,000 bytes a second: 5 s (rounded up).
    assert_eq!(units[3].1.audio_ms, 5_000, "{units:?}");
    assert_eq!(units[3].2, UsageSource::Upstream);
}

/// The python of `.venv` with the pinned SDKs, or `None` after printing a SKIPPED notice (a
/// failure when `TOLLGATE_REQUIRE_PYTHON` is set), as tests/conformance.rs does.
fn python_or_skip() -> Option<std::path::PathBuf> {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ok = venv.exists()
        && std::process::Command::new(&venv)
            .args(["-c", "import openai, pytest"])
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(venv);
    }
    assert!(
        std::env::var("TOLLGATE_REQUIRE_PYTHON").is_err(),
        "TOLLGATE_REQUIRE_PYTHON is set but .venv/bin/python with the SDKs is missing"
    );
    eprintln!("SKIPPED: .venv with the pinned SDKs not found (run .ci/run to create it)");
    None
}

#[tokio::test]
async fn the_openai_python_sdk_uses_the_surface_through_the_gateway() {
    let Some(py) = python_or_skip() else {
        return;
    };
    let mut cfg = format!(
        r#"
[[auth.keys]]
name = "sdk"
sha256 = "{}"
[usage]
jsonl = ""
[providers.mock]
kind = "mock"
"#,
        tollgate::auth::hash_key("sk-client-test")
    );
    for (name, upstream) in [
        ("omni-moderation-latest", "omni-moderation-latest"),
        ("dall-e-3", "dall-e-3"),
        ("tts-1", "tts-1?chunks=4&delay_ms=20"),
        ("whisper-1", "whisper-1"),
    ] {
        cfg.push_str(&format!(
            "[models.\"{name}\"]\ntargets = [{{ provider = \"mock\", model = \"err-503\" }}, {{ provider = \"mock\", model = \"{upstream}\" }}]\n"
        ));
    }
    let gw = Gateway::start(&cfg).await;
    let gateway = gw.url("/v1");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(py)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg("tests/conformance/test_openai_surface.py")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("GATEWAY", gateway)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .expect("run pytest")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pytest failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("6 passed"), "{stdout}");
    // One record per call (the refused one too), each served by the second target.
    let recs = gw.records(6).await;
    let served: Vec<_> = recs
        .iter()
        .filter(|r| r.outcome == Outcome::Success)
        .collect();
    assert_eq!(served.len(), 5, "{recs:?}");
    assert!(served.iter().all(|r| r.attempts == 2), "{served:?}");
    let by = |m: &str| served.iter().find(|r| r.model == m).unwrap().units;
    assert_eq!(by("dall-e-3").images, 2);
    assert_eq!(by("tts-1").characters, 11);
    assert!(by("whisper-1").audio_ms >= 1_000);
}
