//! Issue 14, acceptance 3: broken upstreams do not break the gateway.
//!
//! - An upstream that streams a 200 MB event (one line without a line break, or lines without
//!   the blank line that ends an event) is cut at `[server] max_sse_event_bytes`: the client gets
//!   the in-band error event after what it already had, the usage record says `stream_error`
//!   with an estimate, and the gateway process (the reference binary) does not grow by the
//!   event: its VmRSS is sampled while the upstream sends.
//! - A 200 MB non-streaming answer passes through whole without the gateway holding it; one the
//!   gateway must read whole to translate (the Anthropic face over an OpenAI upstream) is read up
//!   to its 32 MiB cap and refused with a 502, not held. With smaller configured caps (`[server]
//!   max_translated_body_bytes`, `max_translated_event_bytes`) an answer or event over them is
//!   refused (502, or the in-band error) with its record, and one under them passes.
//! - Absurd usage counts (2^64 − 1, negative, fractional, text, above `[usage]
//!   max_usage_tokens`, parts larger than the whole) are recorded as `estimated` with a
//!   `usage_note`, and a rate-limit reservation settles at what it reserved (the next request
//!   is not refused as if 2^64 tokens had been spent).
//!
//! The fake upstream generates its bodies on the fly from one shared 64 KiB chunk: nothing of
//! the 200 MB is ever held by the test either.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Gateway, GatewayProcess, ScriptedUpstream, chat, send};
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tollgate::usage::UsageSource;

const MB: u64 = 1 << 20;
const HUGE: u64 = 200 * MB;
const CHUNK: usize = 64 << 10;

/// What the fake answers for one upstream model: `head`, then `filler` repeated until
/// `filler_total` bytes, then `tail`.
#[derive(Clone)]
struct Plan {
    content_type: &'static str,
    head: Bytes,
    filler: Bytes,
    filler_total: u64,
    tail: Bytes,
}

/// A fake upstream that answers by [`Plan`], chosen by the request's `model`; counts the body
/// bytes it handed to hyper.
struct Generator {
    addr: SocketAddr,
    sent: Arc<AtomicU64>,
}

type Planner = Arc<dyn Fn(&str) -> Plan + Send + Sync>;

async fn generator(plan: impl Fn(&str) -> Plan + Send + Sync + 'static) -> Generator {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let plan: Planner = Arc::new(plan);
    let counter = sent.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (plan, counter) = (plan.clone(), counter.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (plan, counter) = (plan.clone(), counter.clone());
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let p = plan(v["model"].as_str().unwrap_or(""));
                        Ok::<_, Infallible>(answer(p, counter))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Generator { addr, sent }
}

type Chunks = futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>;

/// The answer of `p`, generated as it is read (the filler is one shared buffer).
fn answer(p: Plan, sent: Arc<AtomicU64>) -> Response<StreamBody<Chunks>> {
    let content_type = p.content_type;
    let s = futures_util::stream::unfold((p, 0u64, 0u8), move |(p, done, stage)| {
        let sent = sent.clone();
        async move {
            let (data, next) = match stage {
                0 => (p.head.clone(), (p, done, 1)),
                1 if done < p.filler_total => {
                    let n = (p.filler_total - done).min(p.filler.len() as u64) as usize;
                    (p.filler.slice(..n), (p.clone(), done + n as u64, 1))
                }
                1 => (p.tail.clone(), (p, done, 2)),
                _ => return None,
            };
            sent.fetch_add(data.len() as u64, Ordering::Relaxed);
            Some((Ok(Frame::data(data)), next))
        }
    });
    let s: Chunks = Box::pin(s);
    Response::builder()
        .header("content-type", content_type)
        .body(StreamBody::new(s))
        .unwrap()
}

fn filler_line() -> Bytes {
    Bytes::from(vec![b'x'; CHUNK])
}

/// 64 KiB of `data: xxx…\n` lines: lines, but never the blank line that ends an event.
fn filler_lines() -> Bytes {
    let mut v = Vec::with_capacity(CHUNK);
    while v.len() < CHUNK {
        v.extend_from_slice(b"data: ");
        v.extend_from_slice(&[b'y'; 57]);
        v.push(b'\n');
    }
    Bytes::from(v)
}

const FIRST_EVENT: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";

fn ok_stream() -> Plan {
    Plan {
        content_type: "text/event-stream",
        head: Bytes::from(FIRST_EVENT),
        filler: Bytes::new(),
        filler_total: 0,
        tail: Bytes::from_static(b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n"),
    }
}

fn plans(model: &str) -> Plan {
    match model {
        // A content event whose text never ends: one 200 MB line.
        "huge-line" => Plan {
            content_type: "text/event-stream",
            head: Bytes::from(format!(
                "{FIRST_EVENT}data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\""
            )),
            filler: filler_line(),
            filler_total: HUGE,
            tail: Bytes::from_static(b"\"}}]}\n\ndata: [DONE]\n\n"),
        },
        // 200 MB of lines without the blank line that would end the event.
        "huge-event" => Plan {
            content_type: "text/event-stream",
            head: Bytes::from(FIRST_EVENT),
            filler: filler_lines(),
            filler_total: HUGE,
            tail: Bytes::from_static(b"\ndata: [DONE]\n\n"),
        },
        // A 200 MB JSON answer.
        "huge-json" => Plan {
            content_type: "application/json",
            head: Bytes::from_static(b"{\"id\":\"x\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\""),
            filler: filler_line(),
            filler_total: HUGE,
            tail: Bytes::from_static(b"\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}"),
        },
        _ => ok_stream(),
    }
}

fn process_config(up: &Generator, jsonl: &std::path::Path) -> String {
    let mut models = String::new();
    for m in ["ok", "huge-line", "huge-event", "huge-json"] {
        models.push_str(&format!(
            "[models.{m}]\ntargets = [{{ provider = \"up\", model = \"{m}\" }}]\n"
        ));
    }
    format!(
        r#"
[server]
workers = 1
[auth]
enabled = false
[usage]
jsonl = "{}"
[providers.up]
kind = "openai"
base_url = "http://{}/v1"
api_key = "sk-upstream-secret"
{models}"#,
        jsonl.display(),
        up.addr
    )
}

/// VmRSS of `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Samples the VmRSS of `pid` every 10 ms until dropped; `max()` is the highest seen.
struct RssSampler {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let max = Arc::new(AtomicU64::new(rss(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssSampler {
            max,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.max.load(Ordering::Relaxed)
    }
}

/// The JSON-lines records, once there are at least `n` (fails after 10 s).
async fn jsonl_records(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let recs: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if recs.len() >= n {
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} records, have {}",
            recs.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stream_req(model: &str) -> String {
    format!(r#"{{"model":"{model}","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_event_or_line_is_cut_in_band_and_not_held() {
    let up = generator(plans).await;
    let dir = tempdir("events");
    let jsonl = dir.join("usage.jsonl");
    let gw = GatewayProcess::start(&process_config(&up, &jsonl));
    // Warm up (connection pool, allocator arenas), then take the baseline.
    let warm = chat(gw.addr, &stream_req("ok"), &[]).await.rest().await;
    assert!(warm.ends_with(b"data: [DONE]\n\n"));
    let base = rss(gw.pid());
    for (i, model) in ["huge-line", "huge-event"].into_iter().enumerate() {
        let before = up.sent.load(Ordering::Relaxed);
        let sampler = RssSampler::start(gw.pid());
        let t = Instant::now();
        let res = chat(gw.addr, &stream_req(model), &[]).await;
        assert_eq!(res.status, 200);
        let body = tokio::time::timeout(Duration::from_secs(20), res.rest())
            .await
            .expect("the stream ended");
        let peak = sampler.finish();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.starts_with(FIRST_EVENT),
            "{model}: the first event went out"
        );
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        assert!(
            last.starts_with("data: {\"error\":") && last.contains("upstream_protocol"),
            "{model}: ends with the in-band error event: {last:.300}"
        );
        assert!(last.contains("max_sse_event_bytes"), "{last:.300}");
        assert!(
            !text.contains("[DONE]"),
            "{model}: no [DONE] after an error"
        );
        assert!(
            body.len() < 64 << 10,
            "{model}: the partial event is not forwarded ({} bytes)",
            body.len()
        );
        // The upstream is dropped: it sent about the cap, not 200 MB.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = up.sent.load(Ordering::Relaxed) - before;
        assert!(
            sent < 32 * MB,
            "{model}: the upstream was cut, sent {sent} bytes"
        );
        let growth = peak.saturating_sub(base);
        eprintln!(
            "{model}: upstream sent {:.1} MiB before the cut, in {:?}; gateway VmRSS {:.1} MiB -> peak {:.1} MiB (+{:.1} MiB)",
            sent as f64 / MB as f64,
            t.elapsed(),
            base as f64 / MB as f64,
            peak as f64 / MB as f64,
            growth as f64 / MB as f64
        );
        assert!(growth < 50 * MB, "{model}: gateway grew by {growth} bytes");
        let recs = jsonl_records(&jsonl, i + 2).await;
        let r = &recs[i + 1];
        assert_eq!(r["model"], model);
        assert_eq!(r["outcome"], "stream_error", "{r}");
        assert_eq!(r["error_kind"], "upstream_protocol", "{r}");
        assert_eq!(r["usage_source"], "estimated", "{r}");
        assert!(
            r["usage"]["total_tokens"].as_u64().unwrap() < 100_000,
            "{r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_json_answer_passes_through_without_being_held() {
    let up = generator(plans).await;
    let dir = tempdir("json");
    let jsonl = dir.join("usage.jsonl");
    let gw = GatewayProcess::start(&process_config(&up, &jsonl));
    let warm = chat(gw.addr, &stream_req("ok"), &[]).await.rest().await;
    assert!(warm.ends_with(b"data: [DONE]\n\n"));
    let base = rss(gw.pid());
    let sampler = RssSampler::start(gw.pid());
    let t = Instant::now();
    let mut res = chat(
        gw.addr,
        r#"{"model":"huge-json","messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    )
    .await;
    assert_eq!(res.status, 200);
    let (mut total, mut tail) = (0u64, Vec::new());
    while let Some(d) = res.next_data().await {
        total += d.len() as u64;
        tail.extend_from_slice(&d);
        let keep = tail.len().saturating_sub(200);
        tail.drain(..keep);
    }
    let peak = sampler.finish();
    let p = plans("huge-json");
    assert_eq!(total, p.head.len() as u64 + HUGE + p.tail.len() as u64);
    assert!(tail.ends_with(&p.tail), "the answer arrived whole");
    let growth = peak.saturating_sub(base);
    eprintln!(
        "huge-json: 200 MiB passed through in {:?}; gateway VmRSS {:.1} MiB -> peak {:.1} MiB (+{:.1} MiB)",
        t.elapsed(),
        base as f64 / MB as f64,
        peak as f64 / MB as f64,
        growth as f64 / MB as f64
    );
    assert!(growth < 50 * MB, "gateway grew by {growth} bytes");
    let recs = jsonl_records(&jsonl, 2).await;
    assert_eq!(recs[1]["outcome"], "success", "{}", recs[1]);
    // Too large to read its usage (over the JSON cap): an estimate, and said so.
    assert_eq!(recs[1]["usage_source"], "estimated", "{}", recs[1]);
}

/// An answer the gateway must read whole to translate it (an OpenAI upstream answering the
/// Anthropic face) is read up to a cap: a 200 MB one is refused with an error, not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_answer_to_translate_is_refused_at_the_cap() {
    let up = generator(plans).await;
    let dir = tempdir("xlate");
    let jsonl = dir.join("usage.jsonl");
    let gw = GatewayProcess::start(&process_config(&up, &jsonl));
    let warm = chat(gw.addr, &stream_req("ok"), &[]).await.rest().await;
    assert!(warm.ends_with(b"data: [DONE]\n\n"));
    let base = rss(gw.pid());
    let sampler = RssSampler::start(gw.pid());
    let t = Instant::now();
    let res = send(
        gw.addr,
        "POST",
        "/v1/messages",
        &[],
        r#"{"model":"huge-json","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let status = res.status.as_u16();
    let body = res.rest().await;
    let peak = sampler.finish();
    let growth = peak.saturating_sub(base);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = up.sent.load(Ordering::Relaxed);
    eprintln!(
        "huge-json via /v1/messages: {status} in {:?}, upstream sent {:.1} MiB; gateway VmRSS {:.1} MiB -> peak {:.1} MiB (+{:.1} MiB)",
        t.elapsed(),
        sent as f64 / MB as f64,
        base as f64 / MB as f64,
        peak as f64 / MB as f64,
        growth as f64 / MB as f64
    );
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert!(sent < 100 * MB, "the upstream was cut, sent {sent} bytes");
    // What is held is the cap (32 MiB), no more.
    assert!(growth < 50 * MB, "gateway grew by {growth} bytes");
    let recs = jsonl_records(&jsonl, 2).await;
    assert_eq!(recs[1]["status"], 502, "{}", recs[1]);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tollgate-broken-{}-{name}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------------------------------------
// Absurd usage values.

fn usage_config(up: &ScriptedUpstream) -> String {
    format!(
        r#"
[auth]
enabled = false
[usage]
jsonl = ""
max_usage_tokens = 1000000
[limits.global]
tpm = 2000
[providers.up]
kind = "openai"
base_url = "{}"
api_key = "sk-upstream-secret"
[models.m]
targets = [{{ provider = "up", model = "up-model" }}]
"#,
        up.base_url()
    )
}

const JSON_REQ: &str =
    r#"{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"hello"}]}"#;

fn json_answer(usage: &str) -> String {
    format!(
        r#"{{"id":"x","object":"chat.completion","created":1,"model":"up-model","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hello there!"}},"finish_reason":"stop"}}],"usage":{usage}}}"#
    )
}

#[tokio::test]
async fn absurd_usage_is_recorded_as_an_estimate_and_settles_at_the_reservation() {
    let mut up = ScriptedUpstream::start().await;
    let gw = Gateway::start(&usage_config(&up)).await;
    let max = u64::MAX;
    let absurd = [
        format!(r#"{{"prompt_tokens":{max},"completion_tokens":5,"total_tokens":{max}}}"#),
        r#"{"prompt_tokens":-5,"completion_tokens":5,"total_tokens":0}"#.to_owned(),
        r#"{"prompt_tokens":5.5,"completion_tokens":5,"total_tokens":10.5}"#.to_owned(),
        r#"{"prompt_tokens":"12","completion_tokens":"5","total_tokens":"17"}"#.to_owned(),
        // above the configured ceiling ([usage] max_usage_tokens = 1 000 000)
        r#"{"prompt_tokens":5000000,"completion_tokens":5,"total_tokens":5000005}"#.to_owned(),
        r#"{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10,"prompt_tokens_details":{"cached_tokens":900}}"#.to_owned(),
    ];
    // tpm = 2000 and each request reserves ~100 tokens: settled at 2^64 (or 5 million), the
    // next request would be refused; settled at the reservation, all of them pass.
    for (i, usage) in absurd.iter().enumerate() {
        let call = tokio::spawn({
            let addr = gw.addr;
            async move { chat(addr, JSON_REQ, &[]).await.rest().await }
        });
        up.next().await.respond(
            200,
            &[("content-type", "application/json")],
            json_answer(usage),
        );
        let body = call.await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["choices"].is_array(), "{usage}: answered: {v}");
        let recs = gw.records(i + 1).await;
        let r = &recs[i];
        assert_eq!(r.usage_source, UsageSource::Estimated, "{usage}: {r:?}");
        assert!(r.usage_note.is_some(), "{usage}: says why: {r:?}");
        assert!(r.usage.total_tokens < 1000, "{usage}: estimated: {r:?}");
    }
    // A stream whose usage chunk says 2^64 − 1.
    let call = tokio::spawn({
        let addr = gw.addr;
        async move {
            chat(
                addr,
                r#"{"model":"m","stream":true,"max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#,
                &[],
            )
            .await
            .rest()
            .await
        }
    });
    let tx = up.next().await.respond_stream();
    tx.send(FIRST_EVENT).await;
    tx.send(format!("data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{max},\"completion_tokens\":{max},\"total_tokens\":{max}}}}}\n\ndata: [DONE]\n\n")).await;
    drop(tx);
    let body = call.await.unwrap();
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    let recs = gw.records(absurd.len() + 1).await;
    let r = recs.last().unwrap();
    assert!(r.stream);
    assert_eq!(r.outcome, tollgate::usage::Outcome::Success, "{r:?}");
    assert_eq!(r.usage_source, UsageSource::Estimated, "{r:?}");
    assert_eq!(
        r.usage_note.as_deref(),
        Some("upstream usage above the plausible ceiling")
    );
    assert!(r.usage.total_tokens < 1000, "{r:?}");
    // And a sane usage is still exact.
    let call = tokio::spawn({
        let addr = gw.addr;
        async move { chat(addr, JSON_REQ, &[]).await.rest().await }
    });
    up.next().await.respond(
        200,
        &[("content-type", "application/json")],
        json_answer(r#"{"prompt_tokens":11,"completion_tokens":6,"total_tokens":17}"#),
    );
    call.await.unwrap();
    let recs = gw.records(absurd.len() + 2).await;
    let r = recs.last().unwrap();
    assert_eq!(r.usage_source, UsageSource::Upstream, "{r:?}");
    assert_eq!(r.usage.total_tokens, 17);
    assert_eq!(r.usage_note, None);
}

// ---------------------------------------------------------------------------------------------
// The caps of translated answers: `[server] max_translated_body_bytes` and
// `max_translated_event_bytes`.

const XLATE_CAP: usize = 64 << 10;

fn xlate_config(up: &ScriptedUpstream) -> String {
    format!(
        r#"
[server]
max_translated_body_bytes = {XLATE_CAP}
max_translated_event_bytes = {XLATE_CAP}
[auth]
enabled = false
[usage]
jsonl = ""
[providers.up]
kind = "openai"
base_url = "{url}"
api_key = "sk-upstream-secret"
[providers.claude]
kind = "anthropic"
base_url = "{url}"
api_key = "sk-ant-upstream-secret"
[models.m]
targets = [{{ provider = "up", model = "up-model" }}]
[models.c]
targets = [{{ provider = "claude", model = "claude-x" }}]
"#,
        url = up.base_url()
    )
}

/// An OpenAI chat answer whose content is `n` bytes of `x`.
fn chat_answer_of(n: usize) -> String {
    json_answer(r#"{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}"#)
        .replace("Hello there!", &"x".repeat(n))
}

/// An Anthropic message whose text is `n` bytes of `x`.
fn anthropic_answer_of(n: usize) -> String {
    format!(
        r#"{{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{{"type":"text","text":"{}"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":3,"output_tokens":1}}}}"#,
        "x".repeat(n)
    )
}

/// A non-streaming answer the gateway must read whole to translate: under the configured cap
/// it is translated; over it the client gets 502 `upstream_protocol` in the face it asked
/// with, naming the option, and the record says so. Both translating paths: the Anthropic
/// face over an OpenAI upstream, and the OpenAI face over an Anthropic upstream.
#[tokio::test]
async fn a_translated_answer_over_the_configured_cap_is_refused_and_under_it_passes() {
    let mut up = ScriptedUpstream::start().await;
    let gw = Gateway::start(&xlate_config(&up)).await;
    let messages = r#"{"model":"m","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    let chat_req = r#"{"model":"c","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut n = 0;
    for (size, ok) in [(XLATE_CAP / 2, true), (XLATE_CAP + 1024, false)] {
        // The Anthropic face over an OpenAI upstream.
        let call = tokio::spawn({
            let addr = gw.addr;
            async move {
                let res = send(addr, "POST", "/v1/messages", &[], messages.to_owned()).await;
                (res.status.as_u16(), res.json().await)
            }
        });
        up.next().await.respond(
            200,
            &[("content-type", "application/json")],
            chat_answer_of(size),
        );
        let (status, v) = call.await.unwrap();
        n += 1;
        let r = gw.records(n).await[n - 1].clone();
        if ok {
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["content"][0]["text"].as_str().unwrap().len(), size);
            assert_eq!(r.status, 200, "{r:?}");
        } else {
            assert_eq!(status, 502, "{v}");
            assert_eq!(v["type"], "error", "Anthropic face: {v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains("max_translated_body_bytes"), "{msg}");
            assert_eq!(r.status, 502, "{r:?}");
            assert_eq!(r.error_kind.as_deref(), Some("upstream_protocol"), "{r:?}");
        }
        // The OpenAI face over an Anthropic upstream.
        let call = tokio::spawn({
            let addr = gw.addr;
            async move {
                let res = chat(addr, chat_req, &[]).await;
                (res.status.as_u16(), res.json().await)
            }
        });
        up.next().await.respond(
            200,
            &[("content-type", "application/json")],
            anthropic_answer_of(size),
        );
        let (status, v) = call.await.unwrap();
        n += 1;
        let r = gw.records(n).await[n - 1].clone();
        if ok {
            assert_eq!(status, 200, "{v}");
            let text = v["choices"][0]["message"]["content"].as_str().unwrap();
            assert_eq!(text.len(), size);
        } else {
            assert_eq!(status, 502, "{v}");
            assert_eq!(v["error"]["code"], "upstream_protocol", "OpenAI face: {v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains("max_translated_body_bytes"), "{msg}");
            assert_eq!(r.status, 502, "{r:?}");
            assert_eq!(r.error_kind.as_deref(), Some("upstream_protocol"), "{r:?}");
        }
    }
}

/// A translated stream (the Anthropic face over an OpenAI upstream): an event under the
/// configured cap passes; one growing over it ends the stream with the in-band error naming
/// the option, and the record says `stream_error`.
#[tokio::test]
async fn a_translated_stream_event_over_the_configured_cap_is_cut_in_band() {
    let mut up = ScriptedUpstream::start().await;
    let gw = Gateway::start(&xlate_config(&up)).await;
    let req = r#"{"model":"m","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    let content_event = |n: usize| {
        format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"finish_reason\":null}}]}}\n\n",
            "x".repeat(n)
        )
    };
    for (i, (size, ok)) in [(XLATE_CAP / 2, true), (XLATE_CAP + 1024, false)]
        .into_iter()
        .enumerate()
    {
        let call = tokio::spawn({
            let addr = gw.addr;
            async move {
                let res = send(addr, "POST", "/v1/messages", &[], req.to_owned()).await;
                (res.status.as_u16(), res.rest().await)
            }
        });
        let tx = up.next().await.respond_stream();
        assert!(tx.send(FIRST_EVENT).await);
        // The event arrives in two reads: what the gateway holds is the event in progress
        // (the first part: half of the small one, more than the cap of the large one).
        let event = content_event(size);
        let split = if ok { event.len() / 2 } else { XLATE_CAP + 512 };
        assert!(tx.send(event[..split].to_owned()).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = tx.send(event[split..].to_owned()).await;
        let _ = tx.send(LAST_STREAM_EVENTS).await;
        drop(tx);
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body);
        let r = gw.records(i + 1).await[i].clone();
        if ok {
            assert!(text.contains("event: message_stop"), "{text:.300}");
            assert!(text.contains(&"x".repeat(size)), "the event passed whole");
            assert_eq!(r.outcome, tollgate::usage::Outcome::Success, "{r:?}");
        } else {
            let last = text.trim_end().rsplit("\n\n").next().unwrap();
            assert!(
                last.starts_with("event: error\ndata: {")
                    && last.contains("max_translated_event_bytes"),
                "ends with the in-band error: {last:.300}"
            );
            assert!(!text.contains("message_stop"), "{text:.300}");
            assert!(body.len() < XLATE_CAP, "the event was not forwarded");
            assert_eq!(r.outcome, tollgate::usage::Outcome::StreamError, "{r:?}");
            assert_eq!(r.error_kind.as_deref(), Some("upstream_protocol"), "{r:?}");
        }
    }
}

const LAST_STREAM_EVENTS: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n";
