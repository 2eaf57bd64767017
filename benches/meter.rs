//! Metering overhead: a 1,000-chunk SSE stream through the response bodies of
//! StreamPassthrough + UsageMeter (and + CostReport), against the bare body.
//!
//! `cargo bench --bench meter`. Per-chunk overhead = (metered − bare) / 1,000; the target is
//! under 1 µs per chunk. Bodies are polled in place with a no-op waker (every frame is ready),
//! so only the body wrappers are measured, not a runtime.
//!
//! `usage_read`: reading the usage of a whole (non-streaming) ~600-byte chat completion, as
//! the meter does once per JSON answer: [`Usage::from_openai_json`] (a validating scan for the
//! top-level `usage`, then serde on that member only) against the whole answer through serde
//! (how it was read before, kept here as it was).

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame};
use http_body_util::{Full, StreamBody};
use tollgate::body::Body;
use tollgate::error::GatewayError;
use tollgate::ext::ServedBy;
use tollgate::meter::{CostReportLayer, UsageMeterLayer};
use tollgate::provider::Provider;
use tollgate::provider::mock::MockProvider;
use tollgate::request::{Api, parse_body};
use tollgate::stream::StreamPassthroughLayer;
use tollgate::target::Target;
use tollgate::usage::{Price, Usage, UsageRecord};
use tower::{Layer, Service, service_fn};

const CHUNKS: usize = 1_000;

fn main() {
    divan::main();
}

/// 1,000 content chunks, the usage chunk and `[DONE]`: one event per upstream read.
fn chunks() -> Vec<Bytes> {
    let mut v: Vec<Bytes> = (0..CHUNKS)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1767225600,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
            ))
        })
        .collect();
    v.push(Bytes::from_static(b"data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":1000,\"total_tokens\":1011,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n"));
    v.push(Bytes::from_static(b"data: [DONE]\n\n"));
    v
}

fn body_of(chunks: Vec<Bytes>) -> Body {
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, Infallible>(Frame::data(c)));
    Body::new(StreamBody::new(futures_util::stream::iter(frames)))
}

/// Poll every frame; returns the bytes seen.
fn drain(body: Body) -> usize {
    let mut body = pin!(body);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut n = 0;
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => n += f.data_ref().map_or(0, Bytes::len),
            Poll::Ready(_) => return n,
            Poll::Pending => unreachable!("every frame is ready"),
        }
    }
}

fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("the upstream answers at once"),
    }
}

fn request(include_usage: bool) -> Request<Full<Bytes>> {
    let json = if include_usage {
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#
    } else {
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
    };
    let body = Bytes::from_static(json.as_bytes());
    let mut req = Request::new(Full::new(body.clone()));
    req.extensions_mut()
        .insert(parse_body(Api::ChatCompletions, body).expect("valid"));
    req
}

fn served() -> ServedBy {
    let p: Arc<dyn Provider> = Arc::new(MockProvider::new("mock"));
    ServedBy {
        target: Target::new(p, "gpt-4o-mini")
            .with_price(Price {
                input: 150_000,
                output: 600_000,
                cached_input: Some(75_000),
                cache_write: None,
                ..Price::default()
            })
            .into_arc(),
        attempts: Arc::from(Vec::new()),
        upstream_wait: std::time::Duration::ZERO,
    }
}

/// The body the client gets from UsageMeter [· CostReport] · StreamPassthrough over `chunks`.
fn metered(chunks: Vec<Bytes>, cost: bool, served: &ServedBy) -> Body {
    let mut body = Some(body_of(chunks));
    let served = served.clone();
    let upstream = service_fn(move |_req: Request<Full<Bytes>>| {
        let mut res = Response::new(body.take().unwrap_or_else(Body::empty));
        res.extensions_mut().insert(served.clone());
        std::future::ready(Ok::<_, GatewayError>(res))
    });
    let inner = StreamPassthroughLayer::new().layer(upstream);
    let meter = UsageMeterLayer::new().on_record(|r: &UsageRecord| {
        black_box(r);
    });
    let res = if cost {
        let mut svc = meter.layer(CostReportLayer::new().layer(inner));
        ready(svc.call(request(true)))
    } else {
        let mut svc = meter.layer(inner);
        ready(svc.call(request(false)))
    };
    match res {
        Ok(res) => res.into_body(),
        Err(e) => panic!("{e}"),
    }
}

#[divan::bench]
fn bare_body(b: divan::Bencher) {
    let c = chunks();
    b.with_inputs(|| c.clone())
        .bench_values(|c| drain(body_of(c)));
}

/// The UsageMeter body alone (no SSE parsing): what the meter itself adds.
#[divan::bench]
fn meter_only(b: divan::Bencher) {
    let c = chunks();
    b.with_inputs(|| c.clone()).bench_values(|c| {
        let mut body = Some(body_of(c));
        let upstream = service_fn(move |_req: Request<Full<Bytes>>| {
            std::future::ready(Ok::<_, GatewayError>(Response::new(
                body.take().unwrap_or_else(Body::empty),
            )))
        });
        let mut svc = UsageMeterLayer::new()
            .on_record(|r: &UsageRecord| {
                black_box(r);
            })
            .layer(upstream);
        match ready(svc.call(request(false))) {
            Ok(res) => drain(res.into_body()),
            Err(e) => panic!("{e}"),
        }
    });
}

#[divan::bench]
fn passthrough_and_meter(b: divan::Bencher) {
    let c = chunks();
    let s = served();
    b.with_inputs(|| c.clone())
        .bench_values(|c| drain(metered(c, false, &s)));
}

#[divan::bench]
fn passthrough_meter_and_cost_report(b: divan::Bencher) {
    let c = chunks();
    let s = served();
    b.with_inputs(|| c.clone())
        .bench_values(|c| drain(metered(c, true, &s)));
}

/// A non-streaming chat completion as OpenAI sends it (~600 bytes), usage last.
const ANSWER: &[u8] = br#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"The image shows a wooden boardwalk path running through a lush green field or meadow. The sky is bright blue with some scattered clouds.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"service_tier":"default","system_fingerprint":"fp_fc9f1d7035","usage":{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#;

#[divan::bench_group]
mod usage_read {
    use super::{ANSWER, Usage, black_box};

    /// The old way: the whole answer through serde (`tollgate::usage`'s structs, as they were).
    mod serde_whole {
        use serde::Deserialize;

        use super::Usage;

        #[derive(Deserialize)]
        struct HasUsage {
            #[serde(default)]
            usage: Option<WireUsage>,
        }

        #[derive(Default, Deserialize)]
        struct WireUsage {
            #[serde(default)]
            prompt_tokens: u64,
            #[serde(default)]
            completion_tokens: u64,
            #[serde(default)]
            total_tokens: Option<u64>,
            #[serde(default)]
            prompt_tokens_details: Option<PromptDetails>,
            #[serde(default)]
            completion_tokens_details: Option<CompletionDetails>,
            #[serde(default)]
            prompt_cache_hit_tokens: Option<u64>,
        }

        #[derive(Default, Deserialize)]
        struct PromptDetails {
            #[serde(default)]
            cached_tokens: Option<u64>,
            #[serde(default)]
            cache_write_tokens: Option<u64>,
        }

        #[derive(Default, Deserialize)]
        struct CompletionDetails {
            #[serde(default)]
            reasoning_tokens: Option<u64>,
        }

        pub fn read(doc: &[u8]) -> Option<Usage> {
            let w = serde_json::from_slice::<HasUsage>(doc).ok()?.usage?;
            let p = w.prompt_tokens_details.unwrap_or_default();
            let c = w.completion_tokens_details.unwrap_or_default();
            Some(Usage {
                prompt_tokens: w.prompt_tokens,
                completion_tokens: w.completion_tokens,
                total_tokens: w
                    .total_tokens
                    .unwrap_or(w.prompt_tokens + w.completion_tokens),
                cached_tokens: p.cached_tokens.or(w.prompt_cache_hit_tokens).unwrap_or(0),
                cache_write_tokens: p.cache_write_tokens.unwrap_or(0),
                reasoning_tokens: c.reasoning_tokens.unwrap_or(0),
            })
        }
    }

    /// Before: the whole answer through serde.
    #[divan::bench]
    fn serde_whole_answer() -> Option<Usage> {
        serde_whole::read(black_box(ANSWER))
    }

    /// Now: scan for the top-level `usage`, serde on it alone.
    #[divan::bench]
    fn from_openai_json() -> Option<Usage> {
        Usage::from_openai_json(black_box(ANSWER))
    }
}
