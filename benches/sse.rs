//! SSE scanner throughput on a realistic OpenAI chat-completion stream.
//!
//! The stream is 1,000 `chat.completion.chunk` events of about 200 bytes each, then the
//! `include_usage` chunk and `[DONE]`. It is fed to [`SseScanner`] the ways a network delivers it:
//! in one piece, one event per read (a model emitting tokens slowly), in TCP-segment-sized pieces
//! (1,460 bytes), in HTTP/2-frame or read-buffer-sized pieces (16 KiB), and in odd 97-byte pieces
//! that split nearly every event. Run with `cargo bench --bench sse`.

use bytes::Bytes;
use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};
use tollgate::sse::{DONE, SseScanner};

fn main() {
    divan::main();
}

const EVENTS: usize = 1_000;

/// The stream as the upstream sends it, and the events it holds.
fn stream() -> (Vec<u8>, Vec<Bytes>) {
    const WORDS: [&str; 8] = [
        "Hello",
        " world",
        ",",
        " the",
        " quick",
        " brown\\n",
        " fox",
        " caf\u{e9}",
    ];
    let mut events = Vec::with_capacity(EVENTS + 2);
    for i in 0..EVENTS {
        let ev = format!(
            "data: {{\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\"created\":1741569952,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n",
            WORDS[i % WORDS.len()]
        );
        events.push(Bytes::from(ev));
    }
    events.push(Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\"created\":1741569952,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":1000,\"total_tokens\":1019}}\n\n",
    ));
    events.push(Bytes::from_static(DONE));
    let whole: Vec<u8> = events.iter().flat_map(|e| e.iter().copied()).collect();
    (whole, events)
}

/// Push every piece and take every event; returns (events, data bytes) so nothing is optimized out.
fn scan(pieces: &[Bytes]) -> (usize, usize) {
    let mut scanner = SseScanner::new();
    let (mut n, mut data) = (0, 0);
    for piece in pieces {
        scanner.push(piece.clone());
        while let Some(ev) = scanner.next_event() {
            n += 1;
            data += ev.data.len();
        }
    }
    while let Some(ev) = scanner.finish() {
        n += 1;
        data += ev.data.len();
    }
    (n, data)
}

fn bench_pieces(bencher: Bencher, pieces: Vec<Bytes>) {
    let total: usize = pieces.iter().map(Bytes::len).sum();
    bencher
        .counter(BytesCount::new(total))
        .counter(ItemsCount::new(EVENTS + 2))
        .bench(|| {
            let (n, data) = scan(black_box(&pieces));
            assert_eq!(n, EVENTS + 2);
            black_box(data)
        });
}

/// The whole stream in one chunk.
#[divan::bench]
fn one_piece(bencher: Bencher) {
    let (whole, _) = stream();
    bench_pieces(bencher, vec![Bytes::from(whole)]);
}

/// One event per chunk: what a slowly generating model produces.
#[divan::bench]
fn one_event_per_chunk(bencher: Bencher) {
    let (_, events) = stream();
    bench_pieces(bencher, events);
}

/// Fixed-size network pieces: TCP segments, read buffers, and an odd size that splits almost
/// every event.
#[divan::bench(args = [97, 1460, 16384])]
fn network_pieces(bencher: Bencher, size: usize) {
    let (whole, _) = stream();
    let whole = Bytes::from(whole);
    let pieces = (0..whole.len())
        .step_by(size)
        .map(|at| whole.slice(at..(at + size).min(whole.len())))
        .collect();
    bench_pieces(bencher, pieces);
}

/// The whole StreamPassthrough body, one upstream chunk per event (the usual shape of an LLM
/// stream): scanning, the usage search, counting, the usage report, stripping the usage chunk.
/// Time per item is the per-chunk overhead of the layer.
#[divan::bench]
fn passthrough_body_one_event_per_chunk(bencher: Bencher) {
    use http_body::Body as _;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use tollgate::ext::UsageReport;
    use tollgate::request::{Api, parse_body};
    use tollgate::stream::ResponseBody;

    let (whole, events) = stream();
    let parsed = parse_body(
        Api::ChatCompletions,
        Bytes::from_static(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        ),
    )
    .expect("valid request");
    bencher
        .counter(BytesCount::new(whole.len()))
        .counter(ItemsCount::new(EVENTS + 2))
        .with_inputs(|| {
            let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = events
                .iter()
                .map(|e| Ok(http_body::Frame::data(e.clone())))
                .collect();
            let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            ResponseBody::new(inner, &parsed, Some(UsageReport::channel().0))
        })
        .bench_local_values(|body| {
            let mut body = pin!(body);
            let mut cx = Context::from_waker(Waker::noop());
            let mut out = 0;
            while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
                out += frame
                    .map(|f| f.into_data().map_or(0, |d| d.len()))
                    .unwrap_or(0);
            }
            assert_eq!(out, whole.len() - events[EVENTS].len());
            black_box(out)
        });
}
