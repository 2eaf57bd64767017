//! Issue 12, acceptance 3: the SSE events of one upstream read leave the gateway in one frame,
//! hence one write — passed through (OpenAI), translated (Anthropic → OpenAI chunks) and on the
//! `/v1/messages` ingress (OpenAI → Anthropic events). The one exception is the stream's first
//! event, which goes out at once (the time to the first token is not held back to gather the
//! rest of a burst): a stream whose whole answer arrives in one read leaves in two frames, the
//! first event, then everything else.
//!
//! The upstream here writes its whole answer — head, then one HTTP/1.1 chunk per event, as real
//! providers do — in **one** `write` on a raw socket. The gateway's stack runs in process behind
//! a hyper server whose service counts the data frames of the stack's response body
//! (`http_body::Body::poll_frame`): hyper writes each frame that is ready on its own, so one
//! frame is one `writev` at the client's socket. (That events sent apart in time still leave
//! apart is proved by tests/passthrough.rs.)

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tollgate::body::{Body, BoxError};
use tower::ServiceExt;

use common::send;

/// How many events the upstream writes in its one write.
const N: usize = 20;

/// A raw HTTP/1.1 upstream that answers every request with `events`, all in one write: the
/// head, each event as its own chunk, the last chunk.
async fn one_write_upstream(events: Vec<String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut answer =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for ev in &events {
        answer.extend_from_slice(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
    }
    answer.extend_from_slice(b"0\r\n\r\n");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                // Keep-alive: one answer per request, until the gateway closes the connection.
                while read_request(&mut sock).await {
                    if sock.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Read one request (head and `content-length` body). False if the peer went away first.
async fn read_request(sock: &mut tokio::net::TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return true;
            }
        }
        match sock.read(&mut tmp).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&tmp[..n]),
            _ => return false,
        }
    }
}

pin_project_lite::pin_project! {
    /// The stack's response body, with every data frame it yields recorded.
    struct Counted {
        #[pin]
        inner: Body,
        frames: Arc<Mutex<Vec<usize>>>,
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if let Some(d) = f.data_ref() {
                this.frames.lock().unwrap().push(d.len());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The gateway's stack (`tollgate::gateway::Gateway`) behind a hyper server that records the data
/// frames of each response body.
async fn counting_gateway(config: &str) -> (SocketAddr, Arc<Mutex<Vec<usize>>>) {
    let cfg = tollgate::config::Config::parse(config, "test.toml").expect("config");
    let (gateway, _reloader) = tollgate::gateway::Gateway::from_config(&cfg)
        .await
        .expect("gateway");
    let frames: Arc<Mutex<Vec<usize>>> = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let f = frames.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (front, frames) = (gateway.clone(), f.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (front, frames) = (front.clone(), frames.clone());
                    async move {
                        let res = front.oneshot(req).await?;
                        Ok::<_, Infallible>(res.map(|inner| Counted { inner, frames }))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (addr, frames)
}

fn config(provider: &str) -> String {
    format!(
        r#"
[auth]
enabled = false
[usage]
jsonl = ""
{provider}
[models.m]
targets = [{{ provider = "up", model = "up-model" }}]
"#
    )
}

fn openai_chunk(delta: &str, finish: &str) -> String {
    format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up-model\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}],\"usage\":null}}\n\n"
    )
}

/// An OpenAI stream of `N` content chunks, the finish chunk, the usage chunk and `[DONE]`.
fn openai_events() -> Vec<String> {
    let mut evs: Vec<String> = (0..N)
        .map(|i| openai_chunk(&format!("{{\"content\":\"w{i} \"}}"), "null"))
        .collect();
    evs.push(openai_chunk("{}", "\"stop\""));
    evs.push("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":20,\"total_tokens\":31}}\n\n".to_owned());
    evs.push("data: [DONE]\n\n".to_owned());
    evs
}

/// The frames of a whole answer in one read: one frame, never split.
fn one_frame(total: usize) -> Vec<usize> {
    vec![total]
}

/// The data frames of the one response, after the client read it to its end.
async fn frames_of(frames: &Arc<Mutex<Vec<usize>>>, total: usize) -> Vec<usize> {
    // hyper polls the body to its end before the client sees the last byte; be patient anyway.
    for _ in 0..100 {
        let f = frames.lock().unwrap().clone();
        if f.iter().sum::<usize>() >= total {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    frames.lock().unwrap().clone()
}

#[tokio::test]
async fn openai_events_of_one_read_leave_in_one_frame() {
    let events = openai_events();
    let up = one_write_upstream(events.clone()).await;
    let provider = format!("[providers.up]\nkind = \"openai\"\nbase_url = \"http://{up}/v1\"");
    let (gw, frames) = counting_gateway(&config(&provider)).await;

    // The client did not ask for usage: the usage chunk is taken out of the middle of the
    // read, and what is left still leaves as one frame.
    let req = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let res = send(gw, "POST", "/v1/chat/completions", &[], req).await;
    assert_eq!(res.status, 200);
    let body = res.rest().await;
    let want: String = events
        .iter()
        .filter(|e| !e.contains("\"usage\":{"))
        .cloned()
        .collect();
    assert_eq!(String::from_utf8_lossy(&body), want);
    let f = frames_of(&frames, body.len()).await;
    assert_eq!(
        f,
        one_frame(body.len()),
        "the {} events of the one upstream write in one frame",
        N + 1
    );

    // The client asked for usage: nothing is removed, the read goes out as it came.
    frames.lock().unwrap().clear();
    let req = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
    let body = send(gw, "POST", "/v1/chat/completions", &[], req)
        .await
        .rest()
        .await;
    assert_eq!(String::from_utf8_lossy(&body), events.concat());
    assert_eq!(frames_of(&frames, body.len()).await, one_frame(body.len()));
}

fn anthropic_event(name: &str, data: &str) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

#[tokio::test]
async fn translated_anthropic_events_of_one_read_leave_in_one_frame() {
    let mut events = vec![
        anthropic_event(
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"up-model","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":7,"cache_creation_input_tokens":0,"cache_read_input_tokens":4,"output_tokens":1}}}"#,
        ),
        anthropic_event(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        anthropic_event("ping", r#"{"type":"ping"}"#),
    ];
    for i in 0..N {
        events.push(anthropic_event(
            "content_block_delta",
            &format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"w{i} "}}}}"#
            ),
        ));
    }
    events.push(anthropic_event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    ));
    events.push(anthropic_event(
        "message_delta",
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":20}}"#,
    ));
    events.push(anthropic_event(
        "message_stop",
        r#"{"type":"message_stop"}"#,
    ));
    let up = one_write_upstream(events).await;
    let provider = format!(
        "[providers.up]\nkind = \"anthropic\"\nbase_url = \"http://{up}\"\napi_key = \"sk-ant-x\""
    );
    let (gw, frames) = counting_gateway(&config(&provider)).await;

    let req = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let res = send(gw, "POST", "/v1/chat/completions", &[], req).await;
    assert_eq!(res.status, 200);
    let body = res.rest().await;
    let text = String::from_utf8_lossy(&body);
    let chunks: Vec<serde_json::Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let said: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let want: String = (0..N).map(|i| format!("w{i} ")).collect();
    assert_eq!(said, want);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // message_start becomes the first chunk (the role), alone; the rest in one frame.
    let first = text.find("\n\n").unwrap() + 2;
    assert!(text[..first].contains("\"role\":\"assistant\""), "{text}");
    let f = frames_of(&frames, body.len()).await;
    assert_eq!(
        f,
        one_frame(body.len()),
        "the translation of one upstream read leaves in one frame after the first"
    );
}

#[tokio::test]
async fn messages_ingress_events_of_one_read_leave_in_one_frame() {
    // OpenAI upstream, Anthropic-style client (`/v1/messages`): OpenAI → Anthropic events.
    let up = one_write_upstream(openai_events()).await;
    let provider = format!("[providers.up]\nkind = \"openai\"\nbase_url = \"http://{up}/v1\"");
    let (gw, frames) = counting_gateway(&config(&provider)).await;
    let req = r#"{"model":"m","max_tokens":64,"messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let res = send(gw, "POST", "/v1/messages", &[], req).await;
    assert_eq!(res.status, 200);
    let body = res.rest().await;
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert_eq!(text.matches("event: content_block_delta\n").count(), N);
    assert!(
        text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{text}"
    );
    let f = frames_of(&frames, body.len()).await;
    assert_eq!(
        f,
        one_frame(body.len()),
        "all of the one read's translation in one frame"
    );
}
