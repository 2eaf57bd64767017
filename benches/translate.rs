//! Translation cost: a 1,000-event Anthropic stream → OpenAI chunks, and beside it a
//! 1,000-event chat-completions stream → Responses API events (`/v1/responses` in front of a
//! chat-only target).
//!
//! `cargo bench --bench translate`. Divide the reported time by 1,000 for the per-event cost
//! (the `item/s` throughput column is events per second).

use bytes::{Bytes, BytesMut};
use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use tollgate::translate::anthropic::AnthropicStream;
use tollgate::translate::responses::{Echo, ResponsesStream};
use tollgate::translate::{StreamTranslator, translate_chunks};

fn main() {
    divan::main();
}

const EVENTS: usize = 1000;

/// The `data:` payloads of a 1,000-event stream: start, one text block with 994 deltas, a
/// tool-use block, message_delta, message_stop.
fn payloads() -> Vec<String> {
    let mut v = Vec::with_capacity(EVENTS);
    v.push(r#"{"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":377,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}"#.to_owned());
    v.push(
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#
            .to_owned(),
    );
    for i in 0..(EVENTS - 6) {
        v.push(format!(
            r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"word {i} and \"more\" "}}}}"#
        ));
    }
    v.push(r#"{"type":"content_block_stop","index":0}"#.to_owned());
    v.push(r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01","name":"get_weather","input":{}}}"#.to_owned());
    v.push(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":1500}}"#.to_owned());
    v.push(r#"{"type":"message_stop"}"#.to_owned());
    assert_eq!(v.len(), EVENTS);
    v
}

/// The state machine alone: one parsed `data` payload in, chunk bytes out.
#[divan::bench]
fn anthropic_events_state_machine(b: Bencher) {
    let p = payloads();
    let mut out = BytesMut::with_capacity(1 << 20);
    b.counter(ItemsCount::new(EVENTS)).bench_local(|| {
        out.clear();
        let mut t = AnthropicStream::new(true, 1_700_000_000);
        for d in &p {
            t.on_event(Some(d.as_bytes()), b"", &mut out);
        }
        black_box(out.len())
    });
}

/// The whole byte path: SSE bytes (in 16 KiB upstream chunks) → scanner → translator.
#[divan::bench]
fn anthropic_stream_bytes_end_to_end(b: Bencher) {
    let mut wire = Vec::new();
    for d in payloads() {
        wire.extend_from_slice(b"event: x\ndata: ");
        wire.extend_from_slice(d.as_bytes());
        wire.extend_from_slice(b"\n\n");
    }
    let wire = Bytes::from(wire);
    let chunks: Vec<Bytes> = wire.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
    b.counter(ItemsCount::new(EVENTS))
        .with_inputs(|| chunks.clone())
        .bench_local_values(|chunks| {
            let mut t = AnthropicStream::new(true, 1_700_000_000);
            let (out, err) = translate_chunks(&mut t, chunks);
            assert!(err.is_none());
            black_box(out.len())
        });
}

/// The `data:` payloads of a 1,000-event chat stream: the role chunk, 995 content deltas, a
/// tool call in two deltas, the finish chunk, the usage chunk and `[DONE]`.
fn chat_payloads() -> Vec<String> {
    let head = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_fc9f1d7035","choices":["#;
    let mut v = Vec::with_capacity(EVENTS);
    v.push(format!(
        r#"{head}{{"index":0,"delta":{{"role":"assistant","content":"","refusal":null}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
    ));
    for i in 0..(EVENTS - 6) {
        v.push(format!(
            r#"{head}{{"index":0,"delta":{{"content":"word {i} and \"more\" "}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
        ));
    }
    v.push(format!(
        r#"{head}{{"index":0,"delta":{{"tool_calls":[{{"index":0,"id":"call_1","type":"function","function":{{"name":"get_weather","arguments":""}}}}]}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
    ));
    v.push(format!(
        r#"{head}{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":"{{\"location\":\"Paris\"}}"}}}}]}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
    ));
    v.push(format!(
        r#"{head}{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"tool_calls"}}],"usage":null}}"#
    ));
    v.push(format!(
        r#"{head}],"usage":{{"prompt_tokens":377,"completion_tokens":1500,"total_tokens":1877,"prompt_tokens_details":{{"cached_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0}}}}}}"#
    ));
    v.push("[DONE]".to_owned());
    assert_eq!(v.len(), EVENTS);
    v
}

/// The Responses state machine alone: one parsed chat `data` payload in, Responses events out.
#[divan::bench]
fn responses_events_state_machine(b: Bencher) {
    let p = chat_payloads();
    let mut out = BytesMut::with_capacity(1 << 20);
    b.counter(ItemsCount::new(EVENTS)).bench_local(|| {
        out.clear();
        let mut t = ResponsesStream::new("gpt-4.1", Echo::default());
        for d in &p {
            t.on_event(Some(d.as_bytes()), b"", &mut out);
        }
        black_box(out.len())
    });
}

/// The whole byte path of a translated `/v1/responses` stream: chat SSE bytes (in 16 KiB
/// upstream chunks) → scanner → Responses translator.
#[divan::bench]
fn responses_stream_bytes_end_to_end(b: Bencher) {
    let mut wire = Vec::new();
    for d in chat_payloads() {
        wire.extend_from_slice(b"data: ");
        wire.extend_from_slice(d.as_bytes());
        wire.extend_from_slice(b"\n\n");
    }
    let wire = Bytes::from(wire);
    let chunks: Vec<Bytes> = wire.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
    b.counter(ItemsCount::new(EVENTS))
        .with_inputs(|| chunks.clone())
        .bench_local_values(|chunks| {
            let mut t = ResponsesStream::new("gpt-4.1", Echo::default());
            let (out, err) = translate_chunks(&mut t, chunks);
            assert!(err.is_none());
            black_box(out.len())
        });
}
