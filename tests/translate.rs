//! Golden transcripts for the provider translations, written from the documented wire formats
//! (reference/protocols.md Part 1 §1, §4–6). Streams must translate to exactly the same bytes
//! for any split of the upstream bytes.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use proptest::prelude::*;
use serde_json::{Value, json};
use tollgate::error::ErrorKind;
use tollgate::translate::anthropic::{
    AnthropicOptions, AnthropicStream, error_from_anthropic, request_to_anthropic,
    response_from_anthropic,
};
use tollgate::translate::{StreamTranslator, TranslateBody, translate_chunks};

const CREATED: u64 = 1_700_000_000;

fn v(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

/// Split `input` at `cuts` (any order, duplicates allowed).
fn split(input: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts {
        out.push(Bytes::copy_from_slice(&input[at..c]));
        at = c;
    }
    out.push(Bytes::copy_from_slice(&input[at..]));
    out
}

fn run<T: StreamTranslator>(mut t: T, chunks: Vec<Bytes>) -> (String, Option<ErrorKind>) {
    let (out, err) = translate_chunks(&mut t, chunks);
    (
        String::from_utf8(out.to_vec()).unwrap(),
        err.map(|e| e.kind()),
    )
}

// ------------------------------------------------------------------------------------------
// Anthropic: streams

const A_TEXT_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":3,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n",
    "\n",
    "event: content_block_start\r\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n",
    "\r\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n",
    "\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n",
    "\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\", w\\u00f6rld \\\"x\\\"\\n\"}}\n",
    "\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n",
    "\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":7}}\n",
    "\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n",
    "\n",
);

const A_TEXT_EXPECTED: &str = concat!(
    "data: {\"id\":\"chatcmpl-msg_01\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-msg_01\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-msg_01\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\", w\\u00f6rld \\\"x\\\"\\n\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-msg_01\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-msg_01\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":18,\"completion_tokens\":7,\"total_tokens\":25,\"prompt_tokens_details\":{\"cached_tokens\":5,\"cache_write_tokens\":3},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

const A_TOOL_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_02\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":50,\"output_tokens\":1}}}\n",
    "\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n",
    "\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking.\"}}\n",
    "\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n",
    "\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_A\",\"name\":\"get_weather\",\"input\":{}}}\n",
    "\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n",
    "\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Pa\"}}\n",
    "\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ris\\\"}\"}}\n",
    "\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n",
    "\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_B\",\"name\":\"get_time\",\"input\":{}}}\n",
    "\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n",
    "\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":2}\n",
    "\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":40}}\n",
    "\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":65}}\n",
    "\n",
    "event: some_future_event\n",
    "data: {\"type\":\"some_future_event\"}\n",
    "\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n",
    "\n",
);

const A_TOOL_EXPECTED: &str = concat!(
    "data: {\"id\":\"chatcmpl-msg_02\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-msg_02\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Checking.\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-msg_02\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"toolu_A\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-msg_02\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\": \\\"Pa\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-msg_02\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ris\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-msg_02\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"toolu_B\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-msg_02\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"{}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-msg_02\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: [DONE]\n\n",
);

const A_ERROR_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_03\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n",
    "\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"Hi\"}}\n",
    "\n",
    "event: error\n",
    "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n",
    "\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n",
    "\n",
);

#[test]
fn anthropic_text_stream_golden_with_usage() {
    let (out, err) = run(
        AnthropicStream::new(true, CREATED),
        vec![Bytes::from_static(A_TEXT_STREAM.as_bytes())],
    );
    assert_eq!(err, None);
    assert_eq!(out, A_TEXT_EXPECTED);
}

#[test]
fn anthropic_tool_stream_golden_tool_ordinals_and_no_usage_chunk() {
    let (out, err) = run(
        AnthropicStream::new(false, CREATED),
        vec![Bytes::from_static(A_TOOL_STREAM.as_bytes())],
    );
    assert_eq!(err, None);
    assert_eq!(out, A_TOOL_EXPECTED);
}

#[test]
fn anthropic_tool_stream_usage_is_cumulative_last_wins() {
    let mut t = AnthropicStream::new(true, CREATED);
    let (out, _) = translate_chunks(&mut t, [Bytes::from_static(A_TOOL_STREAM.as_bytes())]);
    let out = String::from_utf8(out.to_vec()).unwrap();
    let usage_line = out
        .split("\n\n")
        .find(|l| l.contains("\"choices\":[]"))
        .unwrap();
    let u = v(usage_line.strip_prefix("data: ").unwrap().as_bytes());
    assert_eq!(u["usage"]["completion_tokens"], 65);
    assert_eq!(u["usage"]["prompt_tokens"], 50);
    assert_eq!(u["usage"]["total_tokens"], 115);
    // every other chunk carries "usage": null
    for l in out.split("\n\n").filter(|l| l.starts_with("data: {")) {
        let c = v(&l.as_bytes()[6..]);
        if !c["choices"].as_array().unwrap().is_empty() {
            assert!(c["usage"].is_null() && c.get("usage").is_some(), "{l}");
        }
    }
}

#[test]
fn anthropic_error_event_becomes_inband_error_without_done() {
    let (out, err) = run(
        AnthropicStream::new(false, CREATED).with_provider(Arc::from("anth")),
        vec![Bytes::from_static(A_ERROR_STREAM.as_bytes())],
    );
    assert_eq!(err, None);
    let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{out}");
    assert!(events[1].contains("\"content\":\"Hi\""));
    let e = v(events[2].strip_prefix("data: ").unwrap().as_bytes());
    assert_eq!(e["error"]["message"], "Overloaded");
    assert_eq!(e["error"]["type"], "service_unavailable_error");
    assert_eq!(e["error"]["code"], "server_is_overloaded");
    assert_eq!(e["error"]["provider"], "anth");
    assert!(!out.contains("[DONE]"));
}

#[test]
fn anthropic_cut_stream_is_an_error_not_a_clean_finish() {
    let cut = &A_TEXT_STREAM[..A_TEXT_STREAM.find("event: message_delta").unwrap()];
    let (out, err) = run(
        AnthropicStream::new(true, CREATED),
        vec![Bytes::copy_from_slice(cut.as_bytes())],
    );
    assert_eq!(err, Some(ErrorKind::UpstreamProtocol));
    assert!(!out.contains("[DONE]") && !out.contains("finish_reason\":\"stop"));
}

#[test]
fn anthropic_event_before_message_start_is_a_protocol_error() {
    let input = "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
    let (out, err) = run(
        AnthropicStream::new(false, CREATED),
        vec![Bytes::from_static(input.as_bytes())],
    );
    assert_eq!(err, None);
    let e = v(out.trim().strip_prefix("data: ").unwrap().as_bytes());
    assert_eq!(e["error"]["code"], "upstream_protocol");
}

#[tokio::test]
async fn anthropic_translate_body_streams_and_ends_cut_streams_with_an_error() {
    let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> =
        split(A_TEXT_STREAM.as_bytes(), &[1, 100, 101, 333, 600])
            .into_iter()
            .map(|b| Ok(http_body::Frame::data(b)))
            .collect();
    let body = TranslateBody::new(
        StreamBody::new(futures_util::stream::iter(chunks)),
        AnthropicStream::new(true, CREATED),
    );
    let out = body.collect().await.unwrap().to_bytes();
    assert_eq!(std::str::from_utf8(&out).unwrap(), A_TEXT_EXPECTED);

    let cut = &A_TEXT_STREAM.as_bytes()[..A_TEXT_STREAM.find("event: message_stop").unwrap()];
    let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> =
        vec![Ok(http_body::Frame::data(Bytes::copy_from_slice(cut)))];
    let mut body = TranslateBody::new(
        StreamBody::new(futures_util::stream::iter(frames)),
        AnthropicStream::new(true, CREATED),
    );
    let mut got = Vec::new();
    let mut error = None;
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => got.extend_from_slice(&f.into_data().unwrap()),
            Err(e) => error = Some(e),
        }
    }
    let e = error.expect("a cut stream ends with an error");
    let ge = e.downcast_ref::<tollgate::error::GatewayError>().unwrap();
    assert_eq!(ge.kind(), ErrorKind::UpstreamProtocol);
    assert!(
        String::from_utf8(got)
            .unwrap()
            .contains("finish_reason\":\"stop")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn anthropic_streams_translate_identically_for_any_split(cuts in prop::collection::vec(0usize..4096, 0..12)) {
        let (out, err) = run(AnthropicStream::new(true, CREATED), split(A_TEXT_STREAM.as_bytes(), &cuts));
        prop_assert_eq!(err, None);
        prop_assert_eq!(out, A_TEXT_EXPECTED);
        let (out, err) = run(AnthropicStream::new(false, CREATED), split(A_TOOL_STREAM.as_bytes(), &cuts));
        prop_assert_eq!(err, None);
        prop_assert_eq!(out, A_TOOL_EXPECTED);
        let whole = run(AnthropicStream::new(false, CREATED), vec![Bytes::from_static(A_ERROR_STREAM.as_bytes())]);
        let parts = run(AnthropicStream::new(false, CREATED), split(A_ERROR_STREAM.as_bytes(), &cuts));
        prop_assert_eq!(whole, parts);
    }
}

// ------------------------------------------------------------------------------------------
// Anthropic: non-streaming responses

#[test]
fn anthropic_text_response_golden() {
    let body = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-x","content":[{"type":"thinking","thinking":"hmm","signature":"s"},{"type":"text","text":"Hello "},{"type":"text","text":"there"}],"stop_reason":"max_tokens","stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":3,"cache_read_input_tokens":5,"output_tokens":7,"output_tokens_details":{"thinking_tokens":2}}}"#;
    let out = response_from_anthropic(body, CREATED).unwrap();
    assert_eq!(
        v(&out),
        json!({
            "id": "chatcmpl-msg_01", "object": "chat.completion", "created": CREATED, "model": "claude-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there", "refusal": null,
                             "reasoning_content": "hmm",
                             "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "s"}]},
                         "logprobs": null, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 18, "completion_tokens": 7, "total_tokens": 25,
                      "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 3},
                      "completion_tokens_details": {"reasoning_tokens": 2}}
        })
    );
}

#[test]
fn anthropic_tool_response_golden() {
    let body = br#"{"id":"msg_02","type":"message","role":"assistant","model":"claude-x","content":[{"type":"tool_use","id":"toolu_A","name":"get_weather","input":{"city":"Paris"}},{"type":"tool_use","id":"toolu_B","name":"get_time","input":{}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":50,"output_tokens":20}}"#;
    let out = response_from_anthropic(body, CREATED).unwrap();
    assert_eq!(
        v(&out),
        json!({
            "id": "chatcmpl-msg_02", "object": "chat.completion", "created": CREATED, "model": "claude-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                "tool_calls": [
                    {"id": "toolu_A", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_B", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                ]}, "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70,
                      "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0}}
        })
    );
}

#[test]
fn anthropic_stop_reasons_map_to_finish_reasons() {
    use tollgate::translate::anthropic::finish_reason;
    for (a, o) in [
        (Some("end_turn"), "stop"),
        (Some("stop_sequence"), "stop"),
        (Some("max_tokens"), "length"),
        (Some("tool_use"), "tool_calls"),
        (Some("refusal"), "content_filter"),
        (Some("model_context_window_exceeded"), "length"),
        (Some("pause_turn"), "stop"),
        (Some("brand_new"), "stop"),
        (None, "stop"),
    ] {
        assert_eq!(finish_reason(a), o, "{a:?}");
    }
}

// ------------------------------------------------------------------------------------------
// Anthropic: requests

#[test]
fn anthropic_request_golden_full() {
    let req = json!({
        "model": "alias",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is here?"},
                {"type": "text", "text": ""},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}}
            ]},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "You are welcome  \n"}
        ],
        "max_completion_tokens": 300,
        "max_tokens": 99,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END", "  "],
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "user-42",
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "get_time"}}
        ],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "seed": 7,
        "frequency_penalty": 0.1,
        "metadata": {"tag": "x"},
        "x_unknown": 1
    });
    let out = request_to_anthropic(
        req.to_string().as_bytes(),
        "claude-real",
        &AnthropicOptions::default(),
    )
    .unwrap();
    assert_eq!(
        v(&out),
        json!({
            "model": "claude-real",
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is here?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
                    {"type": "text", "text": "Thanks"}
                ]},
                {"role": "assistant", "content": [{"type": "text", "text": "You are welcome"}]}
            ],
            "max_tokens": 300,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop_sequences": ["END"],
            "stream": true,
            "metadata": {"user_id": "user-42"},
            "tools": [
                {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
        })
    );
}

#[test]
fn anthropic_request_defaults_and_small_mappings() {
    let opts = AnthropicOptions {
        default_max_tokens: 1234,
    };
    let t = |req: Value| v(&request_to_anthropic(req.to_string().as_bytes(), "m", &opts).unwrap());
    let out = t(
        json!({"model": "a", "messages": [{"role": "user", "content": "hi"}], "stop": "X",
                       "tool_choice": {"type": "function", "function": {"name": "f"}},
                       "tools": [{"type": "function", "function": {"name": "f"}}],
                       "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}}),
    );
    assert_eq!(out["max_tokens"], 1234);
    assert_eq!(out["stop_sequences"], json!(["X"]));
    assert_eq!(out["tool_choice"], json!({"type": "tool", "name": "f"}));
    assert_eq!(
        out["output_config"],
        json!({"format": {"type": "json_schema", "schema": {"type": "object"}}})
    );
    assert_eq!(
        out["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    );
    assert!(out.get("stream").is_none());
    let out = t(
        json!({"model": "a", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "none", "max_tokens": 8000,
                 "reasoning_effort": "medium", "safety_identifier": "sid"}),
    );
    assert_eq!(out["tool_choice"], json!({"type": "none"}));
    assert_eq!(
        out["thinking"],
        json!({"type": "enabled", "budget_tokens": 4096})
    );
    assert_eq!(out["metadata"], json!({"user_id": "sid"}));
}

#[test]
fn anthropic_request_refuses_what_it_cannot_honour() {
    let opts = AnthropicOptions::default();
    let cases = [
        (json!({"temperature": 1.5}), "temperature"),
        (json!({"n": 2}), "n"),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (json!({"audio": {"voice": "x"}}), "audio"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (
            json!({"reasoning_effort": "high", "max_tokens": 100}),
            "reasoning_effort",
        ),
    ];
    for (extra, param) in cases {
        let mut req = json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]});
        for (k, val) in extra.as_object().unwrap() {
            req[k] = val.clone();
        }
        let e = request_to_anthropic(req.to_string().as_bytes(), "m", &opts).unwrap_err();
        assert_eq!(e.status(), 400, "{param}");
        assert_eq!(e.to_json()["error"]["param"], param, "{param}");
    }
    let msg_cases = [
        (
            json!({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}),
            "messages[0].tool_calls[0]",
        ),
        (
            json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}),
            "messages[0].tool_calls[0]",
        ),
    ];
    for (m, param) in msg_cases {
        let req = json!({"model": "a", "messages": [m]});
        let e = request_to_anthropic(req.to_string().as_bytes(), "m", &opts).unwrap_err();
        assert_eq!(e.status(), 400, "{param}");
        assert_eq!(e.to_json()["error"]["param"], param);
    }
}

// ------------------------------------------------------------------------------------------
// Anthropic: error mapping

#[test]
fn anthropic_error_mapping_table() {
    let p: Arc<str> = Arc::from("anth");
    let body = |ty: &str, msg: &str| {
        format!(
            r#"{{"type":"error","error":{{"type":"{ty}","message":"{msg}"}},"request_id":"req_1"}}"#
        )
    };
    // (upstream status, error type, message, retry-after header, client status, code, retryable)
    type Case<'a> = (u16, &'a str, &'a str, Option<&'a str>, u16, &'a str, bool);
    #[rustfmt::skip]
    let cases: [Case<'_>; 14] = [
        (400, "invalid_request_error", "bad field", None, 400, "invalid_request_error", false),
        (400, "invalid_request_error", "prompt is too long: 215000 tokens > 200000 maximum", None, 400, "context_length_exceeded", false),
        (400, "invalid_request_error", "Your credit balance is too low to access the Anthropic API.", None, 429, "insufficient_quota", true),
        (402, "billing_error", "billing", None, 429, "insufficient_quota", true),
        (401, "authentication_error", "invalid x-api-key", None, 401, "invalid_api_key", false),
        (403, "permission_error", "no access", None, 403, "permission_error", false),
        (404, "not_found_error", "model: claude-nope", None, 404, "model_not_found", false),
        (404, "not_found_error", "no such path", None, 502, "not_found_error", false),
        (413, "request_too_large", "too big", None, 413, "request_too_large", false),
        (429, "rate_limit_error", "slow down", Some("7"), 429, "rate_limit_exceeded", true),
        (529, "overloaded_error", "Overloaded", None, 503, "server_is_overloaded", true),
        (500, "api_error", "boom", None, 502, "api_error", true),
        (503, "overloaded_error", "Overloaded", Some("2"), 503, "server_is_overloaded", true),
        (504, "timeout_error", "slow", None, 504, "timeout_error", true),
    ];
    for (status, ty, msg, ra, want, code, retryable) in cases {
        let mut h = HeaderMap::new();
        if let Some(ra) = ra {
            h.insert("retry-after", ra.parse().unwrap());
        }
        let e = error_from_anthropic(
            StatusCode::from_u16(status).unwrap(),
            &h,
            body(ty, msg).as_bytes(),
            &p,
        );
        assert_eq!(e.status().as_u16(), want, "{status} {ty}");
        assert_eq!(e.message(), msg, "{status} {ty}");
        assert_eq!(e.to_json()["error"]["code"], code, "{status} {ty}");
        assert_eq!(e.is_retryable(), retryable, "{status} {ty}");
        assert_eq!(e.provider().map(|p| &**p), Some("anth"));
        let res = e.into_response();
        if matches!(want, 429 | 503) {
            let got = res
                .headers()
                .get("retry-after")
                .expect("Retry-After on 429/503");
            if let Some(ra) = ra {
                assert_eq!(got, ra);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Gemini

use tollgate::translate::gemini::{
    GeminiStream, error_from_gemini, gemini_path, request_to_gemini, response_from_gemini,
};

const G_TEXT_STREAM: &str = concat!(
    "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hel\"}]},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":1,\"totalTokenCount\":10},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r1\"}\r\n\r\n",
    "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"thought\":true,\"text\":\"thinking...\"},{\"text\":\"lo \\\"w\\\"\"}]},\"index\":0}],\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r1\"}\n\n",
    "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"!\"}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":4,\"totalTokenCount\":20,\"cachedContentTokenCount\":2,\"thoughtsTokenCount\":7},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r1\"}\n\n",
);

const G_TEXT_EXPECTED: &str = concat!(
    "data: {\"id\":\"chatcmpl-r1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-2.5-flash\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-r1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-2.5-flash\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-r1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-2.5-flash\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"thinking...\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-r1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-2.5-flash\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\\"w\\\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-r1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-2.5-flash\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-r1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-2.5-flash\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-r1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-2.5-flash\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":11,\"total_tokens\":20,\"prompt_tokens_details\":{\"cached_tokens\":2,\"cache_write_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":7}}}\n\n",
    "data: [DONE]\n\n",
);

const G_TOOL_STREAM: &str = concat!(
    "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Sure.\"}]},\"index\":0}],\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r2\"}\n\n",
    "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"get_weather\",\"args\":{\"city\":\"Paris\"}}},{\"functionCall\":{\"name\":\"get_time\",\"args\":{}}}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":30,\"candidatesTokenCount\":10,\"totalTokenCount\":40},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r2\"}\n\n",
);

const G_TOOL_EXPECTED: &str = concat!(
    "data: {\"id\":\"chatcmpl-r2\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-2.5-flash\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-r2\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-2.5-flash\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Sure.\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-r2\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-2.5-flash\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_r2_0\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-r2\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-2.5-flash\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_r2_1\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-r2\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-2.5-flash\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: [DONE]\n\n",
);

const G_ERROR_STREAM: &str = concat!(
    "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hi\"}]},\"index\":0}],\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r3\"}\n\n",
    "{\n  \"error\": {\n    \"code\": 503,\n    \"message\": \"The model is overloaded.\",\n    \"status\": \"UNAVAILABLE\"\n  }\n}\n",
);

fn gem(include_usage: bool) -> GeminiStream {
    GeminiStream::new(include_usage, CREATED, "gemini-fallback")
}

#[test]
fn gemini_text_stream_golden_with_usage() {
    let (out, err) = run(
        gem(true),
        vec![Bytes::from_static(G_TEXT_STREAM.as_bytes())],
    );
    assert_eq!(err, None);
    assert_eq!(out, G_TEXT_EXPECTED);
}

#[test]
fn gemini_tool_stream_golden_finish_is_tool_calls() {
    let (out, err) = run(
        gem(false),
        vec![Bytes::from_static(G_TOOL_STREAM.as_bytes())],
    );
    assert_eq!(err, None);
    assert_eq!(out, G_TOOL_EXPECTED);
}

#[test]
fn gemini_raw_error_midstream_becomes_inband_error_without_done() {
    let (out, err) = run(
        gem(false).with_provider(Arc::from("gem")),
        vec![Bytes::from_static(G_ERROR_STREAM.as_bytes())],
    );
    assert_eq!(err, None);
    let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{out}");
    let e = v(events[2].strip_prefix("data: ").unwrap().as_bytes());
    assert_eq!(e["error"]["message"], "The model is overloaded.");
    assert_eq!(e["error"]["upstream_status"], 503);
    assert_eq!(e["error"]["provider"], "gem");
    assert!(!out.contains("[DONE]"));
    // the same as a data: event
    let data_err = "data: {\"error\":{\"code\":429,\"message\":\"quota\",\"status\":\"RESOURCE_EXHAUSTED\"}}\n\n";
    let (out, _) = run(gem(false), vec![Bytes::from_static(data_err.as_bytes())]);
    let e = v(out.trim().strip_prefix("data: ").unwrap().as_bytes());
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
}

#[test]
fn gemini_stream_without_finish_reason_is_an_error() {
    let first = &G_TEXT_STREAM[..G_TEXT_STREAM.find("\r\n\r\n").unwrap() + 4];
    let (out, err) = run(gem(true), vec![Bytes::copy_from_slice(first.as_bytes())]);
    assert_eq!(err, Some(ErrorKind::UpstreamProtocol));
    assert!(!out.contains("[DONE]"));
    let (_, err) = run(gem(true), vec![]);
    assert_eq!(err, Some(ErrorKind::UpstreamProtocol));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn gemini_streams_translate_identically_for_any_split(cuts in prop::collection::vec(0usize..4096, 0..12)) {
        let (out, err) = run(gem(true), split(G_TEXT_STREAM.as_bytes(), &cuts));
        prop_assert_eq!(err, None);
        prop_assert_eq!(out, G_TEXT_EXPECTED);
        let (out, err) = run(gem(false), split(G_TOOL_STREAM.as_bytes(), &cuts));
        prop_assert_eq!(err, None);
        prop_assert_eq!(out, G_TOOL_EXPECTED);
        let whole = run(gem(false), vec![Bytes::from_static(G_ERROR_STREAM.as_bytes())]);
        let parts = run(gem(false), split(G_ERROR_STREAM.as_bytes(), &cuts));
        prop_assert_eq!(whole, parts);
    }
}

#[test]
fn gemini_text_response_golden() {
    let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"thinking","thought":true},{"text":"Hello "},{"text":"there"}]},"finishReason":"MAX_TOKENS","index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":5,"totalTokenCount":20,"cachedContentTokenCount":4,"thoughtsTokenCount":3},"modelVersion":"gemini-2.5-pro","responseId":"abc"}"#;
    let out = response_from_gemini(body, CREATED, "fallback").unwrap();
    assert_eq!(
        v(&out),
        json!({
            "id": "chatcmpl-abc", "object": "chat.completion", "created": CREATED, "model": "gemini-2.5-pro",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there", "refusal": null,
                             "reasoning_content": "thinking"},
                         "logprobs": null, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20,
                      "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 3}}
        })
    );
}

#[test]
fn gemini_tool_response_golden() {
    let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}},{"functionCall":{"id":"fc-9","name":"get_time","args":{}}}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":30,"candidatesTokenCount":10,"totalTokenCount":40,"toolUsePromptTokenCount":5},"modelVersion":"gemini-2.5-flash","responseId":"r9"}"#;
    let out = response_from_gemini(body, CREATED, "fallback").unwrap();
    assert_eq!(
        v(&out),
        json!({
            "id": "chatcmpl-r9", "object": "chat.completion", "created": CREATED, "model": "gemini-2.5-flash",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                "tool_calls": [
                    {"id": "call_r9_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "fc-9", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                ]}, "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 35, "completion_tokens": 10, "total_tokens": 40,
                      "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0}}
        })
    );
    let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":3,"totalTokenCount":3},"responseId":"b"}"#;
    let out = v(&response_from_gemini(blocked, CREATED, "gm").unwrap());
    assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(out["model"], "gm");
}

#[test]
fn gemini_finish_reasons_map() {
    use tollgate::translate::gemini::finish_reason;
    for (g, called, o) in [
        ("STOP", false, "stop"),
        ("STOP", true, "tool_calls"),
        ("MAX_TOKENS", false, "length"),
        ("SAFETY", false, "content_filter"),
        ("RECITATION", false, "content_filter"),
        ("PROHIBITED_CONTENT", true, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", false, "stop"),
        ("OTHER", false, "stop"),
    ] {
        assert_eq!(finish_reason(g, called), o, "{g} {called}");
    }
}

#[test]
fn gemini_request_golden_full() {
    let req = json!({
        "model": "alias",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?x=1"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "user", "content": "Thanks"}
        ],
        "max_tokens": 300,
        "temperature": 1.5,
        "top_p": 0.9,
        "stop": "END",
        "n": 2,
        "seed": 7,
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "u",
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
        "reasoning_effort": "low"
    });
    let out = request_to_gemini(req.to_string().as_bytes()).unwrap();
    assert_eq!(
        v(&out),
        json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [
                    {"text": "What is here?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                    {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.JPG?x=1"}}
                ]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"content": "18C"}}},
                    {"text": "Thanks"}
                ]}
            ],
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Weather",
                "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
            "generationConfig": {
                "maxOutputTokens": 300, "temperature": 1.5, "topP": 0.9, "stopSequences": ["END"],
                "candidateCount": 2, "seed": 7, "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object"}, "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": true}
            }
        })
    );
    assert_eq!(
        gemini_path("gemini-2.5-flash", true),
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(
        gemini_path("gemini-2.5-flash", false),
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
}

#[test]
fn gemini_request_refuses_what_it_cannot_honour() {
    let cases = [
        (json!({"logprobs": true}), "logprobs"),
        (json!({"audio": {}}), "audio"),
        (json!({"modalities": ["text", "audio"]}), "modalities"),
    ];
    for (extra, param) in cases {
        let mut req = json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]});
        for (k, val) in extra.as_object().unwrap() {
            req[k] = val.clone();
        }
        let e = request_to_gemini(req.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.to_json()["error"]["param"], param);
    }
    for (m, param) in [
        (
            json!([{"role": "tool", "tool_call_id": "nope", "content": "x"}]),
            "messages[0].tool_call_id",
        ),
        (
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/img"}}]}]),
            "messages[0].content[0]",
        ),
        (
            json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]),
            "messages[0].content[0]",
        ),
    ] {
        let req = json!({"model": "a", "messages": m});
        let e = request_to_gemini(req.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.status(), 400, "{param}");
        assert_eq!(e.to_json()["error"]["param"], param);
    }
}

#[test]
fn gemini_error_mapping_table() {
    let p: Arc<str> = Arc::from("gem");
    let body = |code: u16, status: &str, msg: &str, details: &str| {
        format!(
            r#"{{"error":{{"code":{code},"message":"{msg}","status":"{status}","details":[{details}]}}}}"#
        )
    };
    let key = r#"{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}"#;
    let retry = r#"{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"30s"}"#;
    let quota = r#"{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel"}]}"#;
    let quota_retry = format!("{quota},{retry}");
    // (status, rpc status, message, details, client status, code, retry-after secs, retryable)
    type Case<'a> = (
        u16,
        &'a str,
        &'a str,
        &'a str,
        u16,
        &'a str,
        Option<u64>,
        bool,
    );
    #[rustfmt::skip]
    let cases: [Case<'_>; 13] = [
        (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", key, 401, "invalid_api_key", None, false),
        (400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).", "", 400, "context_length_exceeded", None, false),
        (400, "INVALID_ARGUMENT", "bad schema", "", 400, "INVALID_ARGUMENT", None, false),
        (400, "FAILED_PRECONDITION", "region", "", 400, "FAILED_PRECONDITION", None, false),
        (403, "PERMISSION_DENIED", "denied", "", 403, "PERMISSION_DENIED", None, false),
        (404, "NOT_FOUND", "models/gemini-nope is not found", "", 404, "model_not_found", None, false),
        (404, "NOT_FOUND", "no such method", "", 502, "NOT_FOUND", None, false),
        (429, "RESOURCE_EXHAUSTED", "quota", retry, 429, "rate_limit_exceeded", Some(30), true),
        (429, "RESOURCE_EXHAUSTED", "quota", &quota_retry, 429, "rate_limit_exceeded", Some(30), true),
        (429, "RESOURCE_EXHAUSTED", "You exceeded your current quota", quota, 429, "insufficient_quota", None, true),
        (500, "INTERNAL", "oops", "", 502, "INTERNAL", None, true),
        (503, "UNAVAILABLE", "overloaded", "", 503, "server_is_overloaded", None, true),
        (504, "DEADLINE_EXCEEDED", "slow", "", 504, "DEADLINE_EXCEEDED", None, true),
    ];
    for (status, rpc, msg, details, want, code, ra, retryable) in cases {
        let e = error_from_gemini(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body(status, rpc, msg, details).as_bytes(),
            &p,
        );
        assert_eq!(e.status().as_u16(), want, "{status} {rpc}");
        assert_eq!(e.message(), msg);
        assert_eq!(e.to_json()["error"]["code"], code, "{status} {rpc}");
        assert_eq!(e.upstream_status_code(), Some(status));
        assert_eq!(e.is_retryable(), retryable, "{status} {rpc}");
        assert_eq!(e.retry_after().map(|d| d.as_secs()), ra);
        let res = e.into_response();
        if matches!(want, 429 | 503) {
            assert!(res.headers().contains_key("retry-after"));
        }
    }
}

// ------------------------------------------------------------------------------------------
// Anthropic-style ingress

use tollgate::error::GatewayError;
use tollgate::translate::ingress::{
    IngressStream, error_to_anthropic, request_from_anthropic, response_to_anthropic,
};

/// Parse an Anthropic SSE byte string into (event name, data JSON) pairs, checking that the
/// `event:` name equals the data's `type`.
fn anthropic_events(s: &str) -> Vec<(String, Value)> {
    s.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut lines = e.lines();
            let name = lines
                .next()
                .unwrap()
                .strip_prefix("event: ")
                .unwrap()
                .to_owned();
            let data = v(lines
                .next()
                .unwrap()
                .strip_prefix("data: ")
                .unwrap()
                .as_bytes());
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect()
}

const O_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Let me \"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"check.\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    ": keep-alive\n\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":12,\"total_tokens\":52,\"prompt_tokens_details\":{\"cached_tokens\":30}}}\n\n",
    "data: [DONE]\n\n",
);

fn ingress_expected() -> Vec<(String, Value)> {
    let e = |name: &str, data: Value| (name.to_owned(), data);
    vec![
        e(
            "message_start",
            json!({"type": "message_start", "message": {"id": "chatcmpl-9", "type": "message", "role": "assistant",
            "model": "gpt-x", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        ),
        e(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        e(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}}),
        ),
        e(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}}),
        ),
        e(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        e(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}}),
        ),
        e(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
        ),
        e(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
        ),
        e(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ),
        e(
            "content_block_start",
            json!({"type": "content_block_start", "index": 2,
            "content_block": {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}}),
        ),
        e(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        ),
        e(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 2}),
        ),
        e(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"input_tokens": 10, "output_tokens": 12, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 0}}),
        ),
        e("message_stop", json!({"type": "message_stop"})),
    ]
}

#[test]
fn ingress_stream_golden_text_then_tools_with_usage() {
    let (out, err) = run(
        IngressStream::new("fallback"),
        vec![Bytes::from_static(O_STREAM.as_bytes())],
    );
    assert_eq!(err, None);
    assert_eq!(anthropic_events(&out), ingress_expected());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn ingress_stream_translates_identically_for_any_split(cuts in prop::collection::vec(0usize..4096, 0..12)) {
        let (out, err) = run(IngressStream::new("fallback"), split(O_STREAM.as_bytes(), &cuts));
        prop_assert_eq!(err, None);
        prop_assert_eq!(anthropic_events(&out), ingress_expected());
    }
}

#[test]
fn ingress_stream_errors_inband_and_on_a_cut() {
    let with_err = concat!(
        "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
        "data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"service_unavailable_error\",\"param\":null,\"code\":\"server_is_overloaded\"}}\n\n",
    );
    let (out, err) = run(
        IngressStream::new("m"),
        vec![Bytes::from_static(with_err.as_bytes())],
    );
    assert_eq!(err, None);
    let evs = anthropic_events(&out);
    let last = evs.last().unwrap();
    assert_eq!(last.0, "error");
    assert_eq!(
        last.1,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    assert!(!out.contains("message_stop"));

    let cut = &O_STREAM[..O_STREAM.find("data: [DONE]").unwrap()];
    let (out, err) = run(
        IngressStream::new("m"),
        vec![Bytes::copy_from_slice(cut.as_bytes())],
    );
    assert_eq!(err, Some(ErrorKind::UpstreamProtocol));
    assert_eq!(anthropic_events(&out).last().unwrap().0, "error");
    assert!(!out.contains("message_stop"));
}

#[test]
fn ingress_request_golden() {
    let req = json!({
        "model": "claude-alias",
        "max_tokens": 256,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric."}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                {"type": "text", "text": "And this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
            ]}
        ],
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "top_k": 5,
        "metadata": {"user_id": "u-1"},
        "stream": true,
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
    });
    let out = request_from_anthropic(req.to_string().as_bytes()).unwrap();
    assert_eq!(
        v(&out),
        json!({
            "model": "claude-alias",
            "messages": [
                {"role": "system", "content": "Be brief.\nUse metric."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {"role": "user", "content": [
                    {"type": "text", "text": "And this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
                ]}
            ],
            "max_tokens": 256,
            "stop": ["END"],
            "temperature": 0.2,
            "user": "u-1",
            "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false
        })
    );
    let e = request_from_anthropic(
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
               "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.status(), 400);
    assert_eq!(e.to_json()["error"]["param"], "tools[0]");
}

#[test]
fn ingress_response_golden() {
    let body = br#"{"id":"chatcmpl-7","object":"chat.completion","created":1,"model":"gpt-x","choices":[{"index":0,"message":{"role":"assistant","content":"Sure.","refusal":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":40,"completion_tokens":12,"total_tokens":52,"prompt_tokens_details":{"cached_tokens":30,"cache_write_tokens":4}}}"#;
    let out = response_to_anthropic(body).unwrap();
    assert_eq!(
        v(&out),
        json!({
            "id": "chatcmpl-7", "type": "message", "role": "assistant", "model": "gpt-x",
            "content": [
                {"type": "text", "text": "Sure."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 6, "output_tokens": 12, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 4}
        })
    );
    let bad_args = br#"{"id":"x","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{oops"}}]},"finish_reason":"tool_calls"}]}"#;
    assert_eq!(
        response_to_anthropic(bad_args).unwrap_err().kind(),
        ErrorKind::UpstreamProtocol
    );
}

#[test]
fn ingress_round_trips_through_the_anthropic_translation() {
    // Anthropic request -> OpenAI (ingress) -> Anthropic (provider): the conversation survives.
    let original = json!({
        "model": "claude-x", "max_tokens": 300,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "text", "text": "Thanks"}
            ]}
        ],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "auto"},
        "stop_sequences": ["END"], "temperature": 0.5
    });
    let openai = request_from_anthropic(original.to_string().as_bytes()).unwrap();
    let back = request_to_anthropic(&openai, "claude-x", &AnthropicOptions::default()).unwrap();
    assert_eq!(v(&back), original);

    // Anthropic response -> OpenAI -> Anthropic.
    let resp = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Hi"}, {"type": "tool_use", "id": "toolu_2", "name": "f", "input": {"a": [1, 2]}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 2}});
    let openai = response_from_anthropic(resp.to_string().as_bytes(), CREATED).unwrap();
    let mut back = v(&response_to_anthropic(&openai).unwrap());
    assert_eq!(back["id"], "chatcmpl-msg_1");
    back["id"] = json!("msg_1");
    assert_eq!(back, resp);

    // Anthropic stream -> OpenAI chunks -> Anthropic stream: same text, tool input, stop
    // reason and usage.
    let (openai, err) = run(
        AnthropicStream::new(true, CREATED),
        vec![Bytes::from_static(A_TOOL_STREAM.as_bytes())],
    );
    assert_eq!(err, None);
    let (anth, err) = run(IngressStream::new("m"), vec![Bytes::from(openai)]);
    assert_eq!(err, None);
    let evs = anthropic_events(&anth);
    let text: String = evs
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Checking.");
    let json_parts: String = evs
        .iter()
        .filter(|(_, d)| d["index"] == 1)
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(v(json_parts.as_bytes()), json!({"city": "Paris"}));
    let tools: Vec<&Value> = evs
        .iter()
        .filter(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .map(|(_, d)| &d["content_block"]["id"])
        .collect();
    assert_eq!(tools, vec!["toolu_A", "toolu_B"]);
    let md = &evs.iter().find(|(n, _)| n == "message_delta").unwrap().1;
    assert_eq!(md["delta"]["stop_reason"], "tool_use");
    assert_eq!(md["usage"]["input_tokens"], 50);
    assert_eq!(md["usage"]["output_tokens"], 65);
}

#[test]
fn ingress_error_bodies_are_anthropic_shaped() {
    let p: Arc<str> = Arc::from("x");
    for (e, status, ty) in [
        (
            GatewayError::bad_request("bad", Some("model")),
            400,
            "invalid_request_error",
        ),
        (
            GatewayError::new(ErrorKind::Unauthorized, "no key"),
            401,
            "authentication_error",
        ),
        (
            GatewayError::new(ErrorKind::RateLimited, "slow"),
            429,
            "rate_limit_error",
        ),
        (
            GatewayError::upstream_status(
                StatusCode::from_u16(529).unwrap(),
                "Overloaded",
                Some(p.clone()),
            ),
            // Anthropic's own status for it: the SDKs raise OverloadedError on 529
            529,
            "overloaded_error",
        ),
        (
            GatewayError::new(ErrorKind::UpstreamTimeout, "late"),
            504,
            "timeout_error",
        ),
        (
            GatewayError::new(ErrorKind::ModelNotFound, "no model"),
            404,
            "not_found_error",
        ),
        (GatewayError::internal("bug"), 500, "api_error"),
    ] {
        let (s, body) = error_to_anthropic(&e);
        assert_eq!(s.as_u16(), status);
        assert_eq!(
            v(&body),
            json!({"type": "error", "error": {"type": ty, "message": e.message()}})
        );
    }
}

#[test]
fn anthropic_request_skips_empty_turns_and_keeps_roles_alternating() {
    let req = json!({"model": "a", "messages": [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": "two"}]}
    ]});
    let out = v(&request_to_anthropic(
        req.to_string().as_bytes(),
        "m",
        &AnthropicOptions::default(),
    )
    .unwrap());
    assert_eq!(
        out["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}])
    );
}

/// Build an Anthropic stream from text deltas and tool-argument fragments (any unicode, JSON
/// escaped by serde_json), with the tool block after the text block.
fn anthropic_stream_of(texts: &[String], args: &[String]) -> String {
    let mut s = String::new();
    let mut ev = |name: &str, data: Value| {
        s.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    };
    ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_p", "model": "claude-x", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
    );
    ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    for t in texts {
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
        );
    }
    ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_\u{e9}\"", "name": "f", "input": {}}}),
    );
    for a in args {
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": a}}),
        );
    }
    ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
    );
    ev("message_stop", json!({"type": "message_stop"}));
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any text and argument fragments (quotes, backslashes, control characters, non-ASCII)
    /// survive Anthropic SSE → OpenAI chunks → (ingress) Anthropic SSE exactly, for any split.
    #[test]
    fn arbitrary_fragments_survive_both_stream_translations(
        texts in prop::collection::vec("\\PC{0,12}|[\"\\\\\n\t\u{0}-\u{1f}]{1,3}", 0..6),
        args in prop::collection::vec("\\PC{0,8}", 0..4),
        cuts in prop::collection::vec(0usize..4096, 0..6),
    ) {
        let wire = anthropic_stream_of(&texts, &args);
        let (openai, err) = run(AnthropicStream::new(true, CREATED), split(wire.as_bytes(), &cuts));
        prop_assert_eq!(err, None);
        // the OpenAI view, as a client accumulates it
        let mut text = String::new();
        let mut arguments = String::new();
        let mut id = None;
        for e in openai.split("\n\n").filter(|e| e.starts_with("data: {")) {
            let c = v(&e.as_bytes()[6..]);
            if let Some(t) = c["choices"][0]["delta"]["content"].as_str() { text.push_str(t); }
            let tc = &c["choices"][0]["delta"]["tool_calls"][0];
            if let Some(a) = tc["function"]["arguments"].as_str() { arguments.push_str(a); }
            if let Some(i) = tc["id"].as_str() { id = Some(i.to_owned()); }
            if !tc.is_null() { prop_assert_eq!(&tc["index"], &json!(0)); }
        }
        prop_assert_eq!(&text, &texts.concat());
        prop_assert_eq!(&arguments, &args.concat());
        prop_assert_eq!(id.as_deref(), Some("toolu_\u{e9}\""));
        // and back to Anthropic events
        let (anth, err) = run(IngressStream::new("m"), split(openai.as_bytes(), &cuts));
        prop_assert_eq!(err, None);
        let evs = anthropic_events(&anth);
        let back_text: String = evs.iter().filter_map(|(_, d)| d["delta"]["text"].as_str()).collect();
        let back_args: String = evs.iter().filter_map(|(_, d)| d["delta"]["partial_json"].as_str()).collect();
        prop_assert_eq!(back_text, texts.concat());
        prop_assert_eq!(back_args, args.concat());
        prop_assert_eq!(&evs.last().unwrap().0, "message_stop");
    }
}
