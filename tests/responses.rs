//! `POST /v1/responses` (the OpenAI Responses API), written from the documented formats
//! (OpenAPI `CreateResponse`, `Response`, `ResponseStreamEvent`; openai-python
//! `types/responses/`; ../shared/reference/protocols.md §3):
//! - golden translations Responses ⇄ chat completions, and composed with the existing
//!   translators ⇄ Anthropic Messages and ⇄ Gemini, non-stream and stream, for any split of
//!   the upstream bytes;
//! - through the whole gateway over real sockets: pass-through to a Responses-capable target
//!   (byte for byte, model rewritten, usage from `response.completed`), translation for a
//!   chat-only target, fallback before the first byte, the in-band error after it, and the
//!   usage records.

mod common;
mod fakes;

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use tollgate::sse::SseScanner;
use tollgate::translate::anthropic::{
    AnthropicOptions, AnthropicStream, request_to_anthropic, response_from_anthropic,
};
use tollgate::translate::gemini::{GeminiStream, request_to_gemini, response_from_gemini};
use tollgate::translate::responses::{
    Echo, ReasoningForm, ResponsesStream, request_to_chat, response_from_chat,
    response_from_chat_with,
};
use tollgate::translate::{StreamTranslator, translate_chunks};
use tollgate::usage::{Outcome, UsageSource};

const CREATED: u64 = 1_700_000_000;

fn v(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

fn chat_of(req: &str) -> Value {
    v(&request_to_chat(req.as_bytes()).unwrap().0)
}

/// Split `input` at `at` (two pieces).
fn split2(input: &[u8], at: usize) -> Vec<Bytes> {
    vec![
        Bytes::copy_from_slice(&input[..at]),
        Bytes::copy_from_slice(&input[at..]),
    ]
}

/// The Responses events of an SSE text: (event name, data).
fn events(s: &[u8]) -> Vec<(String, Value)> {
    std::str::from_utf8(s)
        .unwrap()
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("")
                .to_owned();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (name, serde_json::from_str(data).unwrap())
        })
        .collect()
}

/// Every event is named as its `type`, numbered 0, 1, 2, …, and exactly one terminal event
/// ends the stream.
fn check_sequence(evs: &[(String, Value)]) {
    for (i, (name, data)) in evs.iter().enumerate() {
        assert_eq!(data["type"], name.as_str(), "event {i}");
        assert_eq!(data["sequence_number"], i as u64, "event {i}: {data}");
    }
    let terminal = [
        "response.completed",
        "response.incomplete",
        "response.failed",
    ];
    let n = evs
        .iter()
        .filter(|(n, _)| terminal.contains(&n.as_str()))
        .count();
    assert_eq!(n, 1, "exactly one terminal event");
    assert!(terminal.contains(&evs.last().unwrap().0.as_str()));
}

fn names(evs: &[(String, Value)]) -> Vec<&str> {
    evs.iter().map(|(n, _)| n.as_str()).collect()
}

const FULL_REQUEST: &str = r#"{
  "model": "m", "instructions": "You are terse.", "max_output_tokens": 8000,
  "temperature": 0.2, "top_p": 0.9, "reasoning": {"effort": "low"}, "parallel_tool_calls": true,
  "store": false, "metadata": {"k": "v"}, "user": "u1",
  "input": [
    {"role": "user", "content": [
      {"type": "input_text", "text": "Weather and time in Paris?"},
      {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0K", "detail": "low"}]},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
    {"type": "function_call", "call_id": "call_A", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
    {"type": "function_call", "call_id": "call_B", "name": "get_time", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_A", "output": "sunny"},
    {"type": "function_call_output", "call_id": "call_B", "output": "noon"},
    {"type": "reasoning", "id": "rs_1", "summary": []},
    {"role": "user", "content": "Answer as JSON."}
  ],
  "tools": [
    {"type": "function", "name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": true},
    {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
  ],
  "tool_choice": {"type": "function", "name": "get_weather"},
  "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}, "strict": true}}
}"#;

#[test]
fn request_to_chat_golden() {
    assert_eq!(
        chat_of(FULL_REQUEST),
        json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather and time in Paris?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K", "detail": "low"}}]},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "call_A", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_B", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_A", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_B", "content": "noon"},
                {"role": "user", "content": "Answer as JSON."}
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": true}},
                {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": true,
            "max_tokens": 8000, "temperature": 0.2, "top_p": 0.9, "user": "u1",
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}, "strict": true}},
            "reasoning_effort": "low"
        })
    );
    // a string input, streaming: one user message, the usage chunk asked for
    assert_eq!(
        chat_of(r#"{"model":"m","input":"hi","stream":true}"#),
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
               "stream": true, "stream_options": {"include_usage": true}})
    );
}

#[test]
fn request_to_anthropic_composed_keeps_call_ids_images_schema_and_thinking() {
    let (chat, _) = request_to_chat(FULL_REQUEST.as_bytes()).unwrap();
    let a = v(&request_to_anthropic(&chat, "claude-x", &AnthropicOptions::default()).unwrap());
    assert_eq!(a["system"][0]["text"], "You are terse.");
    assert_eq!(a["max_tokens"], 8000);
    assert_eq!(a["thinking"]["type"], "enabled");
    let msgs = a["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["content"][1]["type"], "image");
    assert_eq!(msgs[0]["content"][1]["source"]["media_type"], "image/png");
    let uses: Vec<&Value> = msgs[1]["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .collect();
    assert_eq!(uses[0]["id"], "call_A");
    assert_eq!(uses[0]["input"], json!({"city": "Paris"}));
    assert_eq!(uses[1]["id"], "call_B");
    let results: Vec<&Value> = msgs[2]["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_result")
        .collect();
    assert_eq!(results[0]["tool_use_id"], "call_A");
    assert_eq!(results[1]["tool_use_id"], "call_B");
    assert_eq!(a["tools"][0]["name"], "get_weather");
    assert_eq!(
        a["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );
    assert_eq!(a["output_config"]["format"]["type"], "json_schema");
    assert_eq!(
        a["output_config"]["format"]["schema"]["properties"]["a"]["type"],
        "string"
    );
}

#[test]
fn request_to_gemini_composed_keeps_calls_images_schema_and_thinking() {
    let (chat, _) = request_to_chat(FULL_REQUEST.as_bytes()).unwrap();
    let g = v(&request_to_gemini(&chat).unwrap());
    assert_eq!(g["systemInstruction"]["parts"][0]["text"], "You are terse.");
    let gc = &g["generationConfig"];
    assert_eq!(gc["maxOutputTokens"], 8000);
    assert_eq!(gc["responseMimeType"], "application/json");
    assert_eq!(gc["thinkingConfig"]["thinkingBudget"], 1024);
    let s = g["contents"].to_string();
    assert!(s.contains("\"inlineData\""), "{s}");
    assert!(s.contains("\"functionCall\""), "{s}");
    assert!(s.contains("\"functionResponse\""), "{s}");
    assert_eq!(
        g["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"][0],
        "get_weather"
    );
}

#[test]
fn fields_no_chat_target_can_honour_are_refused_naming_them() {
    for (body, param) in [
        (
            r#"{"model":"m","input":"x","tools":[{"type":"web_search"}]}"#,
            "tools[0]",
        ),
        (
            r#"{"model":"m","input":"x","tools":[{"type":"function","name":"f"},{"type":"file_search","vector_store_ids":["v"]}]}"#,
            "tools[1]",
        ),
        (
            r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_file","file_id":"f"}]}]}"#,
            "input[0].content[0]",
        ),
        (
            r#"{"model":"m","input":[{"type":"item_reference","id":"x"}]}"#,
            "input[0].type",
        ),
        (
            r#"{"model":"m","input":"x","previous_response_id":"resp_1"}"#,
            "previous_response_id",
        ),
        (
            r#"{"model":"m","input":"x","background":true}"#,
            "background",
        ),
        (
            r#"{"model":"m","input":"x","tool_choice":{"type":"web_search_preview"}}"#,
            "tool_choice",
        ),
        (
            r#"{"model":"m","input":"x","include":["message.output_text.logprobs"]}"#,
            "include[0]",
        ),
    ] {
        let e = request_to_chat(body.as_bytes()).unwrap_err();
        assert_eq!(e.status(), 400, "{body}");
        assert_eq!(e.to_json()["error"]["param"], param, "{body}");
    }
}

fn echo_of(req: &str) -> Echo {
    request_to_chat(req.as_bytes()).unwrap().1
}

#[test]
fn chat_response_to_response_golden_text_reasoning_and_usage() {
    let chat = br#"{"id":"chatcmpl-7","object":"chat.completion","created":1700000000,"model":"deepseek-r","choices":[{"index":0,"message":{"role":"assistant","content":"Hi!","reasoning_content":"think"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":6,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
    let r = v(&response_from_chat(
        chat,
        &echo_of(r#"{"model":"m","input":"x","instructions":"be nice"}"#),
    )
    .unwrap());
    assert_eq!(r["id"], "resp_7");
    assert_eq!(r["object"], "response");
    assert_eq!(r["created_at"], CREATED);
    assert_eq!(r["status"], "completed");
    assert_eq!(r["model"], "deepseek-r");
    assert_eq!(r["instructions"], "be nice");
    assert_eq!(r["tools"], json!([]));
    assert_eq!(r["tool_choice"], "auto");
    assert_eq!(
        r["output"],
        json!([
            {"id": "rs_7", "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "think"}]},
            {"id": "msg_7", "type": "message", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Hi!", "annotations": [], "logprobs": []}]}
        ])
    );
    assert_eq!(
        r["usage"],
        json!({"input_tokens": 11, "input_tokens_details": {"cached_tokens": 4},
               "output_tokens": 6, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 17})
    );
    // length → incomplete, with the reason
    let chat = br#"{"id":"chatcmpl-8","created":1,"model":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"length"}]}"#;
    let r = v(&response_from_chat(chat, &Echo::default()).unwrap());
    assert_eq!(r["status"], "incomplete");
    assert_eq!(
        r["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
}

#[test]
fn anthropic_answer_to_response_composed_two_calls_keep_their_ids() {
    let body = br#"{"id":"msg_02","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_A","name":"get_weather","input":{"city":"Paris"}},{"type":"tool_use","id":"toolu_B","name":"get_time","input":{}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":50,"cache_read_input_tokens":5,"output_tokens":20}}"#;
    let chat = response_from_anthropic(body, CREATED).unwrap();
    let r = v(&response_from_chat(&chat, &Echo::default()).unwrap());
    assert_eq!(r["status"], "completed");
    let out = r["output"].as_array().unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0]["content"][0]["text"], "Checking.");
    assert_eq!(
        out[1],
        json!({"id": "fc_msg_02_0", "type": "function_call", "status": "completed",
               "call_id": "toolu_A", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})
    );
    assert_eq!(out[2]["call_id"], "toolu_B");
    assert_eq!(out[2]["arguments"], "{}");
    // Anthropic's input excludes cache reads; the Responses input includes them
    assert_eq!(r["usage"]["input_tokens"], 55);
    assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 5);
    assert_eq!(r["usage"]["output_tokens"], 20);
}

#[test]
fn gemini_answer_to_response_composed() {
    let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":30,"candidatesTokenCount":10,"totalTokenCount":40},"modelVersion":"gemini-2.5-flash","responseId":"r2"}"#;
    let chat = response_from_gemini(body, CREATED, "gemini-x").unwrap();
    let r = v(&response_from_chat(&chat, &Echo::default()).unwrap());
    assert_eq!(r["output"][0]["type"], "function_call");
    assert_eq!(r["output"][0]["name"], "get_weather");
    assert_eq!(r["output"][0]["arguments"], "{\"city\":\"Paris\"}");
    let call_id = r["output"][0]["call_id"].as_str().unwrap();
    assert!(!call_id.is_empty());
    assert_eq!(r["usage"]["total_tokens"], 40);
}

// ------------------------------------------------------------------------------------------
// Streams

const C_TEXT_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hmm\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\\"w\\\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"up\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":6,\"total_tokens\":17,\"prompt_tokens_details\":{\"cached_tokens\":4},\"completion_tokens_details\":{\"reasoning_tokens\":2}}}\n\n",
    "data: [DONE]\n\n",
);

const C_TOOLS_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-t\",\"created\":1700000000,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_A\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-t\",\"created\":1700000000,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-t\",\"created\":1700000000,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-t\",\"created\":1700000000,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_B\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-t\",\"created\":1700000000,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: {\"id\":\"chatcmpl-t\",\"created\":1700000000,\"model\":\"up\",\"choices\":[],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":10,\"total_tokens\":40}}\n\n",
    "data: [DONE]\n\n",
);

fn stream_of(chunks: Vec<Bytes>) -> (Bytes, Option<tollgate::error::GatewayError>) {
    stream_in(chunks, ReasoningForm::Text)
}

fn stream_in(
    chunks: Vec<Bytes>,
    form: ReasoningForm,
) -> (Bytes, Option<tollgate::error::GatewayError>) {
    let mut t = ResponsesStream::new("fallback-model", Echo::default()).with_reasoning_form(form);
    translate_chunks(&mut t, chunks)
}

#[test]
fn chat_text_stream_golden_with_reasoning_and_usage() {
    let (out, err) = stream_of(vec![Bytes::from_static(C_TEXT_STREAM.as_bytes())]);
    assert!(err.is_none());
    let evs = events(&out);
    check_sequence(&evs);
    assert_eq!(
        names(&evs),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_text.delta",
            "response.reasoning_text.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(evs[0].1["response"]["id"], "resp_9");
    assert_eq!(evs[0].1["response"]["status"], "in_progress");
    assert_eq!(evs[0].1["response"]["model"], "up");
    assert_eq!(
        evs[8].1,
        json!({"type": "response.output_text.delta", "item_id": "msg_9", "output_index": 1,
               "content_index": 0, "delta": "Hel", "logprobs": [], "sequence_number": 8})
    );
    assert_eq!(evs[10].1["text"], "Hello \"w\"");
    let done = &evs[13].1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "hmm");
    assert_eq!(done["output"][1]["content"][0]["text"], "Hello \"w\"");
    assert_eq!(
        done["usage"],
        json!({"input_tokens": 11, "input_tokens_details": {"cached_tokens": 4},
               "output_tokens": 6, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 17})
    );
}

#[test]
fn chat_tool_stream_golden_two_calls_keep_their_ids() {
    let (out, err) = stream_of(vec![Bytes::from_static(C_TOOLS_STREAM.as_bytes())]);
    assert!(err.is_none());
    let evs = events(&out);
    check_sequence(&evs);
    assert_eq!(
        names(&evs),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(evs[2].1["item"]["call_id"], "call_A");
    assert_eq!(evs[2].1["item"]["arguments"], "");
    assert_eq!(evs[5].1["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(evs[7].1["item"]["call_id"], "call_B");
    assert_eq!(evs[7].1["output_index"], 1);
    let out = &evs[11].1["response"]["output"];
    assert_eq!(out[0]["call_id"], "call_A");
    assert_eq!(out[1]["call_id"], "call_B");
    assert_eq!(out[1]["name"], "get_time");
}

#[test]
fn chat_stream_translation_is_the_same_for_every_split() {
    for input in [C_TEXT_STREAM, C_TOOLS_STREAM] {
        let whole = stream_of(vec![Bytes::from_static(input.as_bytes())]).0;
        for at in 0..=input.len() {
            let (parts, err) = stream_of(split2(input.as_bytes(), at));
            assert!(err.is_none());
            assert_eq!(whole, parts, "split at {at}");
        }
    }
}

#[test]
fn length_is_incomplete_and_a_cut_stream_is_an_error() {
    let s = C_TEXT_STREAM.replace("\"finish_reason\":\"stop\"", "\"finish_reason\":\"length\"");
    let (out, _) = stream_of(vec![Bytes::from(s)]);
    let evs = events(&out);
    check_sequence(&evs);
    let (name, last) = evs.last().unwrap();
    assert_eq!(name, "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    // no [DONE]: never a faked terminal event
    let cut = &C_TEXT_STREAM[..C_TEXT_STREAM.find("data: [DONE]").unwrap()];
    let (out, err) = stream_of(vec![Bytes::from(cut.to_owned())]);
    assert!(err.is_some());
    assert!(!String::from_utf8_lossy(&out).contains("response.completed"));
}

#[test]
fn midstream_chat_error_becomes_error_and_response_failed() {
    let first = C_TEXT_STREAM
        .split_inclusive("\n\n")
        .take(3)
        .collect::<String>();
    let s = format!(
        "{first}data: {{\"error\":{{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":\"server_is_overloaded\"}}}}\n\n"
    );
    let (out, err) = stream_of(vec![Bytes::from(s)]);
    assert!(err.is_none());
    let evs = events(&out);
    check_sequence(&evs);
    let n = evs.len();
    assert_eq!(evs[n - 2].0, "error");
    assert_eq!(evs[n - 2].1["code"], "server_is_overloaded");
    assert_eq!(evs[n - 2].1["message"], "overloaded");
    assert_eq!(evs[n - 1].0, "response.failed");
    assert_eq!(
        evs[n - 1].1["response"]["error"]["code"],
        "server_is_overloaded"
    );
}

/// Run `first` over `chunks`, each chunk's output as one piece into a [`ResponsesStream`]:
/// the composed stream translation, fed the way the serving path feeds it.
fn composed<A: StreamTranslator>(first: A, chunks: Vec<Bytes>) -> Bytes {
    composed_in(first, chunks, ReasoningForm::Text)
}

/// [`composed`], the reasoning presented in `form`.
fn composed_in<A: StreamTranslator>(
    mut first: A,
    chunks: Vec<Bytes>,
    form: ReasoningForm,
) -> Bytes {
    let mut scanner = SseScanner::new();
    let mut mid = Vec::new();
    for c in chunks {
        scanner.push(c);
        let mut out = BytesMut::new();
        while let Some(ev) = scanner.next_event() {
            first.on_event(ev.has_data.then_some(&ev.data[..]), &ev.raw, &mut out);
        }
        mid.push(out.freeze());
    }
    let mut out = BytesMut::new();
    if let Some(ev) = scanner.finish() {
        first.on_event(ev.has_data.then_some(&ev.data[..]), &ev.raw, &mut out);
    }
    let _ = first.on_eof(&mut out);
    mid.push(out.freeze());
    stream_in(mid, form).0
}

const A_TOOL_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_02\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":50,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking.\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_A\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Pa\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ris\\\"}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_B\",\"name\":\"get_time\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":65}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

#[test]
fn anthropic_stream_to_responses_composed_for_every_split() {
    let whole = composed(
        AnthropicStream::new(true, CREATED),
        vec![Bytes::from_static(A_TOOL_STREAM.as_bytes())],
    );
    let evs = events(&whole);
    check_sequence(&evs);
    let done = &evs.last().unwrap().1["response"];
    assert_eq!(evs.last().unwrap().0, "response.completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Checking.");
    assert_eq!(done["output"][1]["call_id"], "toolu_A");
    assert_eq!(done["output"][1]["arguments"], "{\"city\": \"Paris\"}");
    assert_eq!(done["output"][2]["call_id"], "toolu_B");
    assert_eq!(done["usage"]["input_tokens"], 55);
    assert_eq!(done["usage"]["input_tokens_details"]["cached_tokens"], 5);
    assert_eq!(done["usage"]["output_tokens"], 65);
    for at in 0..=A_TOOL_STREAM.len() {
        let parts = composed(
            AnthropicStream::new(true, CREATED),
            split2(A_TOOL_STREAM.as_bytes(), at),
        );
        assert_eq!(whole, parts, "split at {at}");
    }
}

/// The `encrypted_content` the gateway gives a reasoning item standing for Anthropic `blocks`.
fn encrypted(blocks: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(json!({"thinking_blocks": blocks}).to_string())
}

/// An answer with thinking (Claude 4: a summary of the thinking, with its signature), then text.
const A_THINKING_ANSWER: &[u8] = br#"{"id":"msg_03","type":"message","role":"assistant","model":"claude-x","content":[{"type":"thinking","thinking":"Paris in June: ","signature":"sig=="},{"type":"thinking","thinking":"warm.","signature":"sig2=="},{"type":"redacted_thinking","data":"opaque"},{"type":"text","text":"It is warm."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":20,"output_tokens":90,"output_tokens_details":{"thinking_tokens":70}}}"#;

#[test]
fn anthropic_thinking_answer_to_response_is_a_reasoning_summary_before_the_message() {
    let chat = response_from_anthropic(A_THINKING_ANSWER, CREATED).unwrap();
    let echo = Echo::default();
    let r = v(&response_from_chat_with(&chat, &echo, None, ReasoningForm::Summary).unwrap());
    let out = r["output"].as_array().unwrap();
    assert_eq!(out.len(), 2, "{r}");
    let blocks = json!([
        {"type": "thinking", "thinking": "Paris in June: ", "signature": "sig=="},
        {"type": "thinking", "thinking": "warm.", "signature": "sig2=="},
        {"type": "redacted_thinking", "data": "opaque"}
    ]);
    assert_eq!(
        out[0],
        json!({"id": "rs_msg_03", "type": "reasoning",
               "summary": [{"type": "summary_text", "text": "Paris in June: warm."}],
               "encrypted_content": encrypted(&blocks)})
    );
    assert_eq!(out[1]["type"], "message");
    assert_eq!(out[1]["content"][0]["text"], "It is warm.");
    assert_eq!(
        r["usage"],
        json!({"input_tokens": 20, "input_tokens_details": {"cached_tokens": 0},
               "output_tokens": 90, "output_tokens_details": {"reasoning_tokens": 70},
               "total_tokens": 110})
    );
    // The chat face carries the thinking as LiteLLM does: text and the blocks as sent.
    let plain = v(&chat);
    let m = &plain["choices"][0]["message"];
    assert_eq!(m["reasoning_content"], "Paris in June: warm.");
    assert_eq!(m["thinking_blocks"], blocks);
    assert_eq!(m["content"], "It is warm.");
    assert_eq!(
        plain["usage"]["completion_tokens_details"]["reasoning_tokens"],
        70
    );
}

const A_THINKING_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_04\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Paris in \\\"June\\\": \"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"warm.\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM==\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"It is warm.\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":90,\"output_tokens_details\":{\"thinking_tokens\":70}}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

#[test]
fn anthropic_thinking_stream_to_responses_is_a_reasoning_summary_for_every_split() {
    let anth = || AnthropicStream::new(true, CREATED);
    let form = ReasoningForm::Summary;
    let bytes = A_THINKING_STREAM.as_bytes();
    let whole = composed_in(anth(), vec![Bytes::from_static(bytes)], form);
    let evs = events(&whole);
    check_sequence(&evs);
    assert_eq!(
        names(&evs),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let thought = "Paris in \"June\": warm.";
    assert_eq!(
        evs[2].1,
        json!({"type": "response.output_item.added", "output_index": 0, "sequence_number": 2,
               "item": {"id": "rs_msg_04", "type": "reasoning", "summary": []}})
    );
    assert_eq!(
        evs[3].1,
        json!({"type": "response.reasoning_summary_part.added", "item_id": "rs_msg_04",
               "output_index": 0, "summary_index": 0, "sequence_number": 3,
               "part": {"type": "summary_text", "text": ""}})
    );
    assert_eq!(
        evs[4].1,
        json!({"type": "response.reasoning_summary_text.delta", "item_id": "rs_msg_04",
               "output_index": 0, "summary_index": 0, "delta": "Paris in \"June\": ",
               "sequence_number": 4})
    );
    assert_eq!(evs[6].1["text"], thought);
    assert_eq!(
        evs[7].1["part"],
        json!({"type": "summary_text", "text": thought})
    );
    let blocks = json!([{"type": "thinking", "thinking": thought, "signature": "EqQBCgIYAhIM=="}]);
    let item = json!({"id": "rs_msg_04", "type": "reasoning",
                      "summary": [{"type": "summary_text", "text": thought}],
                      "encrypted_content": encrypted(&blocks)});
    assert_eq!(evs[8].1["item"], item);
    assert_eq!(evs[11].1["output_index"], 1);
    let done = &evs.last().unwrap().1["response"];
    assert_eq!(done["output"][0], item);
    assert_eq!(done["output"][1]["content"][0]["text"], "It is warm.");
    assert_eq!(done["usage"]["output_tokens"], 90);
    assert_eq!(
        done["usage"]["output_tokens_details"]["reasoning_tokens"],
        70
    );
    for at in 0..=bytes.len() {
        let parts = composed_in(anth(), split2(bytes, at), form);
        assert_eq!(whole, parts, "split at {at}");
    }
}

const G_TEXT_STREAM: &str = concat!(
    "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hel\"}]},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":1,\"totalTokenCount\":10},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r1\"}\r\n\r\n",
    "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"lo\"}]},\"index\":0}],\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r1\"}\n\n",
    "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"get_weather\",\"args\":{\"city\":\"Paris\"}}}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":4,\"totalTokenCount\":20,\"cachedContentTokenCount\":2,\"thoughtsTokenCount\":7},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r1\"}\n\n",
);

#[test]
fn gemini_stream_to_responses_composed_for_every_split() {
    let gem = || GeminiStream::new(true, CREATED, "gemini-x");
    let whole = composed(gem(), vec![Bytes::from_static(G_TEXT_STREAM.as_bytes())]);
    let evs = events(&whole);
    check_sequence(&evs);
    let (name, last) = evs.last().unwrap();
    assert_eq!(name, "response.completed");
    let r = &last["response"];
    assert_eq!(r["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(r["output"][1]["type"], "function_call");
    assert_eq!(r["output"][1]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 7);
    assert_eq!(r["usage"]["total_tokens"], 20);
    for at in 0..=G_TEXT_STREAM.len() {
        let parts = composed(gem(), split2(G_TEXT_STREAM.as_bytes(), at));
        assert_eq!(whole, parts, "split at {at}");
    }
}

// ------------------------------------------------------------------------------------------
// Through the gateway, over real sockets

fn gateway_config(fake: &fakes::Fake) -> String {
    format!(
        r#"
[auth]
enabled = false
[usage]
jsonl = ""
[routing.timeouts]
first_token_ms = 5000
total_ms = 10000
[providers.native]
kind = "openai"
base_url = "{0}/v1"
responses = true
[providers.chatonly]
kind = "openai"
base_url = "{0}/v1"
[providers.down]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
responses = true
[models.native-ok]
targets = [{{ provider = "native", model = "ok" }}]
[models.native-tool]
targets = [{{ provider = "native", model = "tool" }}]
[models.chat-ok]
targets = [{{ provider = "chatonly", model = "ok" }}]
[models.native-cut]
targets = [{{ provider = "native", model = "midstream-error" }}]
[models.chat-cut]
targets = [{{ provider = "chatonly", model = "midstream-error" }}]
[models.fallback]
targets = [{{ provider = "down", model = "ok" }}, {{ provider = "chatonly", model = "ok" }}]
"#,
        fake.base_url()
    )
}

async fn post(gw: &common::Gateway, body: &str) -> common::Streaming {
    common::send(gw.addr, "POST", "/v1/responses", &[], body.to_owned()).await
}

fn exact_usage(rec: &tollgate::usage::UsageRecord) {
    assert_eq!(rec.usage_source, UsageSource::Upstream, "{rec:?}");
    assert_eq!(rec.usage.prompt_tokens, 11);
    assert_eq!(rec.usage.cached_tokens, 4);
    assert_eq!(rec.usage.completion_tokens, 6);
    assert_eq!(rec.usage.reasoning_tokens, 2);
    assert_eq!(rec.usage.total_tokens, 17);
}

#[tokio::test]
async fn native_target_passes_through_byte_for_byte_with_the_model_rewritten() {
    let fake = fakes::openai_responses().await;
    let gw = common::Gateway::start(&gateway_config(&fake)).await;
    let body = r#"{"model":"native-ok","input":[{"role":"user","content":"hi"}],"tools":[{"type":"web_search"}],"store":true}"#;
    let res = post(&gw, body).await;
    assert_eq!(res.status, 200);
    let got = res.rest().await;
    let seen = fake.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(seen.path, "/v1/responses");
    // the body upstream is the client's, only the model replaced (built-in tools pass too)
    assert_eq!(
        std::str::from_utf8(&seen.body).unwrap(),
        body.replace("native-ok", "ok")
    );
    let r = v(&got);
    assert_eq!(r["id"], "resp_fake01");
    assert_eq!(r["output"][0]["content"][0]["text"], "Hello there!");
    let recs = gw.records(1).await;
    assert_eq!(recs[0].outcome, Outcome::Success);
    exact_usage(&recs[0]);
}

#[tokio::test]
async fn native_stream_passes_through_and_usage_comes_from_response_completed() {
    let fake = fakes::openai_responses().await;
    let gw = common::Gateway::start(&gateway_config(&fake)).await;
    let res = post(&gw, r#"{"model":"native-tool","input":"w?","stream":true}"#).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["content-type"], "text/event-stream");
    let got = res.rest().await;
    let evs = events(&got);
    check_sequence(&evs);
    assert!(!String::from_utf8_lossy(&got).contains("[DONE]"));
    assert_eq!(
        evs.last().unwrap().1["response"]["output"][0]["call_id"],
        "call_fake_1"
    );
    let seen = fake.seen.lock().unwrap().last().unwrap().clone();
    // nothing injected: the Responses API has no stream_options.include_usage
    assert_eq!(
        v(&seen.body),
        json!({"model": "tool", "input": "w?", "stream": true})
    );
    let recs = gw.records(1).await;
    assert_eq!(recs[0].outcome, Outcome::Success);
    assert!(recs[0].stream);
    exact_usage(&recs[0]);
}

#[tokio::test]
async fn chat_only_target_is_translated_both_ways_with_exact_usage() {
    let fake = fakes::openai_responses().await;
    let gw = common::Gateway::start(&gateway_config(&fake)).await;
    let r = post(
        &gw,
        r#"{"model":"chat-ok","input":"hi","instructions":"be nice"}"#,
    )
    .await
    .json()
    .await;
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["instructions"], "be nice");
    assert_eq!(r["output"][0]["content"][0]["text"], "Hello there!");
    assert_eq!(r["usage"]["input_tokens"], 11);
    let seen = fake.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        v(&seen.body)["messages"][0],
        json!({"role": "system", "content": "be nice"})
    );

    let res = post(&gw, r#"{"model":"chat-ok","input":"hi","stream":true}"#).await;
    assert_eq!(res.status, 200);
    let evs = events(&res.rest().await);
    check_sequence(&evs);
    assert_eq!(evs.last().unwrap().0, "response.completed");
    assert_eq!(
        evs.last().unwrap().1["response"]["output"][0]["content"][0]["text"],
        "Hello there!"
    );
    let seen = fake.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(v(&seen.body)["stream_options"]["include_usage"], true);
    let recs = gw.records(2).await;
    for rec in &recs {
        assert_eq!(rec.outcome, Outcome::Success);
        exact_usage(rec);
    }

    // a built-in tool on a chat-only target: 400 naming it, nothing sent upstream
    let n = fake.seen.lock().unwrap().len();
    let res = post(
        &gw,
        r#"{"model":"chat-ok","input":"hi","tools":[{"type":"web_search"}]}"#,
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json().await["error"]["param"], "tools[0]");
    assert_eq!(fake.seen.lock().unwrap().len(), n);
}

#[tokio::test]
async fn stream_falls_back_before_the_first_byte() {
    let fake = fakes::openai_responses().await;
    let gw = common::Gateway::start(&gateway_config(&fake)).await;
    let res = post(&gw, r#"{"model":"fallback","input":"hi","stream":true}"#).await;
    assert_eq!(res.status, 200);
    let evs = events(&res.rest().await);
    check_sequence(&evs);
    assert_eq!(evs.last().unwrap().0, "response.completed");
    let recs = gw.records(1).await;
    assert_eq!(recs[0].attempts, 2);
    assert_eq!(recs[0].provider.as_deref(), Some("chatonly"));
    exact_usage(&recs[0]);
}

#[tokio::test]
async fn a_stream_cut_after_the_first_byte_ends_with_an_in_band_error() {
    let fake = fakes::openai_responses().await;
    let gw = common::Gateway::start(&gateway_config(&fake)).await;
    for model in ["native-cut", "chat-cut"] {
        let res = post(
            &gw,
            &format!(r#"{{"model":"{model}","input":"hi","stream":true}}"#),
        )
        .await;
        assert_eq!(res.status, 200, "{model}");
        let evs = events(&res.rest().await);
        check_sequence(&evs);
        let n = evs.len();
        assert!(
            names(&evs).contains(&"response.output_text.delta"),
            "{model}"
        );
        assert_eq!(evs[n - 2].0, "error", "{model}");
        assert_eq!(evs[n - 1].0, "response.failed", "{model}");
        assert_eq!(
            evs[n - 1].1["response"]["id"],
            evs[0].1["response"]["id"],
            "{model}"
        );
    }
    let recs = gw.records(2).await;
    for rec in &recs {
        assert_eq!(rec.outcome, Outcome::StreamError, "{rec:?}");
    }
}

/// GET `/v1/responses/{id}` until the (asynchronously written) record is there.
async fn stored(gw: &common::Gateway, id: &str) -> Value {
    for _ in 0..100 {
        let res = common::send(gw.addr, "GET", &format!("/v1/responses/{id}"), &[], "").await;
        if res.status == 200 {
            return res.json().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("response {id} was never stored");
}

#[tokio::test]
async fn previous_response_id_continues_a_stored_conversation_on_a_translated_target() {
    let fake = fakes::openai_responses().await;
    let gw = common::Gateway::start(&gateway_config(&fake)).await;
    // turn 1, non-stream: stored under a fresh id
    let r1 = post(
        &gw,
        r#"{"model":"chat-ok","input":"hi","instructions":"be nice"}"#,
    )
    .await
    .json()
    .await;
    let id1 = r1["id"].as_str().unwrap().to_owned();
    assert!(id1.starts_with("resp_") && id1.len() == 53, "{id1}");
    assert_eq!(r1["store"], true);
    assert_eq!(stored(&gw, &id1).await["id"], id1);
    // turn 2, streamed, continues it: the upstream sees the whole conversation
    let body = format!(
        r#"{{"model":"chat-ok","previous_response_id":"{id1}","input":"and then?","stream":true}}"#
    );
    let evs = events(&post(&gw, &body).await.rest().await);
    check_sequence(&evs);
    let r2 = &evs.last().unwrap().1["response"];
    assert_eq!(r2["previous_response_id"], id1.as_str());
    let id2 = r2["id"].as_str().unwrap().to_owned();
    assert_ne!(id1, id2);
    let seen = v(&fake.seen.lock().unwrap().last().unwrap().body);
    // the earlier `instructions` are not carried over (as the API documents)
    assert_eq!(
        seen["messages"],
        json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello there!"},
            {"role": "user", "content": "and then?"}
        ])
    );
    // turn 3 continues turn 2 (itself a continuation)
    stored(&gw, &id2).await;
    let body = format!(r#"{{"model":"chat-ok","previous_response_id":"{id2}","input":"ok"}}"#);
    assert_eq!(post(&gw, &body).await.status, 200);
    let seen = v(&fake.seen.lock().unwrap().last().unwrap().body);
    assert_eq!(seen["messages"].as_array().unwrap().len(), 5);
    assert_eq!(
        seen["messages"][4],
        json!({"role": "user", "content": "ok"})
    );
    // an unknown id: a clear 400, nothing sent upstream
    let n = fake.seen.lock().unwrap().len();
    let res = post(
        &gw,
        r#"{"model":"chat-ok","previous_response_id":"resp_nope","input":"x"}"#,
    )
    .await;
    assert_eq!(res.status, 400);
    let e = res.json().await;
    assert_eq!(e["error"]["param"], "previous_response_id");
    assert_eq!(e["error"]["code"], "previous_response_not_found");
    assert_eq!(fake.seen.lock().unwrap().len(), n);
    // store: false keeps nothing
    let r = post(&gw, r#"{"model":"chat-ok","input":"hi","store":false}"#)
        .await
        .json()
        .await;
    assert_eq!(r["store"], false);
    let res = common::send(
        gw.addr,
        "GET",
        &format!("/v1/responses/{}", r["id"].as_str().unwrap()),
        &[],
        "",
    )
    .await;
    assert_eq!(res.status, 404);
}

/// `GET /v1/responses/{id}/input_items`.
async fn input_items(gw: &common::Gateway, id: &str, query: &str) -> common::Streaming {
    let path = format!("/v1/responses/{id}/input_items{query}");
    common::send(gw.addr, "GET", &path, &[], "").await
}

#[tokio::test]
async fn input_items_list_what_a_translated_response_was_given_history_included() {
    let fake = fakes::openai_responses().await;
    let gw = common::Gateway::start(&gateway_config(&fake)).await;
    let r1 = post(&gw, r#"{"model":"chat-ok","input":"hi"}"#)
        .await
        .json()
        .await;
    let id1 = r1["id"].as_str().unwrap().to_owned();
    stored(&gw, &id1).await;
    let body = format!(
        r#"{{"model":"chat-ok","previous_response_id":"{id1}","input":[{{"type":"message","role":"user","content":[{{"type":"input_text","text":"and then?"}}]}}],"stream":true}}"#
    );
    let evs = events(&post(&gw, &body).await.rest().await);
    let id2 = evs.last().unwrap().1["response"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    stored(&gw, &id2).await;
    let res = input_items(&gw, &id2, "?order=asc").await;
    assert_eq!(res.status, 200);
    let list = res.json().await;
    assert_eq!(list["object"], "list");
    assert_eq!(list["has_more"], false);
    let data = list["data"].as_array().unwrap();
    // turn 1's input, turn 1's output (its own id), turn 2's input: not turn 2's output
    assert_eq!(data.len(), 3, "{list}");
    assert_eq!(data[0]["role"], "user");
    assert_eq!(
        data[0]["content"],
        json!([{"type": "input_text", "text": "hi"}])
    );
    assert_eq!(data[1], r1["output"][0]);
    assert_eq!(data[2]["content"][0]["text"], "and then?");
    for item in data {
        assert_eq!(item["type"], "message", "{item}");
        assert!(
            item["id"].as_str().is_some_and(|i| i.starts_with("msg_")),
            "{item}"
        );
    }
    assert_eq!(list["first_id"], data[0]["id"]);
    assert_eq!(list["last_id"], data[2]["id"]);
    // the ids are stable: turn 1's input item is the same in both listings
    let first = input_items(&gw, &id1, "").await.json().await;
    assert_eq!(first["data"], json!([data[0]]));
    // newest first by default, one page at a time
    let page = input_items(&gw, &id2, "?limit=1").await.json().await;
    assert_eq!(page["data"], json!([data[2]]));
    assert_eq!(page["has_more"], true);
    let after = format!("?limit=5&after={}", data[2]["id"].as_str().unwrap());
    let rest = input_items(&gw, &id2, &after).await.json().await;
    assert_eq!(rest["data"], json!([data[1], data[0]]));
    // as GET: a response the gateway did not store (store: false, or passed through to a
    // target that keeps its own) is 404
    let r = post(&gw, r#"{"model":"chat-ok","input":"hi","store":false}"#)
        .await
        .json()
        .await;
    assert_eq!(
        input_items(&gw, r["id"].as_str().unwrap(), "").await.status,
        404
    );
    let r = post(&gw, r#"{"model":"native-ok","input":"hi"}"#)
        .await
        .json()
        .await;
    let res = input_items(&gw, r["id"].as_str().unwrap(), "").await;
    assert_eq!(res.status, 404);
    assert_eq!(res.json().await["error"]["type"], "invalid_request_error");
}

fn anthropic_config(fake: &fakes::Fake) -> String {
    format!(
        r#"
[auth]
enabled = false
[usage]
jsonl = ""
[providers.anth]
kind = "anthropic"
base_url = "{}"
api_key = "{}"
[models.claude]
targets = [{{ provider = "anth", model = "ok" }}]
"#,
        fake.base_url(),
        fakes::ANTHROPIC_KEY,
    )
}

#[tokio::test]
async fn anthropic_thinking_becomes_a_reasoning_item_through_the_gateway() {
    let fake = fakes::anthropic().await;
    let gw = common::Gateway::start(&anthropic_config(&fake)).await;
    let thought = fakes::THOUGHTS.concat();
    let req =
        r#"{"model":"claude","input":"hi","reasoning":{"effort":"low"},"max_output_tokens":2000}"#;
    let r = post(&gw, req).await.json().await;
    let seen = v(&fake.seen.lock().unwrap().last().unwrap().body);
    assert_eq!(
        seen["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    let out = r["output"].as_array().unwrap();
    assert_eq!(out.len(), 2, "{r}");
    assert_eq!(out[0]["type"], "reasoning");
    assert_eq!(
        out[0]["summary"],
        json!([{"type": "summary_text", "text": thought}])
    );
    assert_eq!(out[1]["content"][0]["text"], "Hello there!");
    assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 3);

    let stream = req.replace("}", r#","stream":true}"#);
    let evs = events(&post(&gw, &stream).await.rest().await);
    check_sequence(&evs);
    let deltas: Vec<&str> = evs
        .iter()
        .filter(|(n, _)| n == "response.reasoning_summary_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, fakes::THOUGHTS);
    let done = &evs.last().unwrap().1["response"];
    assert_eq!(done["output"][0]["summary"][0]["text"], thought.as_str());
    assert_eq!(done["output"][1]["content"][0]["text"], "Hello there!");
    assert_eq!(
        done["usage"]["output_tokens_details"]["reasoning_tokens"],
        3
    );

    // the chat face of the same target carries it as `reasoning_content` and `thinking_blocks`
    let chat = r#"{"model":"claude","messages":[{"role":"user","content":"hi"}],"reasoning_effort":"low","max_tokens":2000}"#;
    let c = common::chat(gw.addr, chat, &[]).await.json().await;
    let m = &c["choices"][0]["message"];
    assert_eq!(m["content"], "Hello there!");
    assert_eq!(m["reasoning_content"], thought.as_str());
    assert_eq!(
        m["thinking_blocks"],
        json!([{"type": "thinking", "thinking": thought, "signature": fakes::sign_thought(&thought)}])
    );
    assert_eq!(
        c["usage"]["completion_tokens_details"]["reasoning_tokens"],
        3
    );
}

/// Acceptance 5 (the conversation half): two gateways sharing one Redis response store; a
/// conversation started on the first continues on the second for the same key; another key
/// can neither read nor continue it.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_follow_up_on_a_second_gateway_continues_over_a_shared_redis_store() {
    let url =
        std::env::var("TOLLGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    if !common::redis_available(&url) {
        return;
    }
    let fake = fakes::openai_responses().await;
    let prefix = format!(
        "tollgate-resp-it-{}",
        &tollgate::store::new_response_id()[5..17]
    );
    let cfg = gateway_config(&fake).replace(
        "[auth]\nenabled = false\n",
        &format!(
            "[auth]\nenabled = true\n[[auth.keys]]\nname = \"a\"\nsha256 = \"{}\"\n[[auth.keys]]\nname = \"b\"\nsha256 = \"{}\"\n[responses]\nstore = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{prefix}\"\n",
            tollgate::auth::hash_key("sk-resp-a"),
            tollgate::auth::hash_key("sk-resp-b"),
        ),
    );
    let (one, two) = (
        common::Gateway::start(&cfg).await,
        common::Gateway::start(&cfg).await,
    );
    let a = [("authorization", "Bearer sk-resp-a")];
    let b = [("authorization", "Bearer sk-resp-b")];
    let r1 = common::send(
        one.addr,
        "POST",
        "/v1/responses",
        &a,
        r#"{"model":"chat-ok","input":"hi"}"#,
    )
    .await
    .json()
    .await;
    let id = r1["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/responses/{id}");
    let mut ok = false;
    for _ in 0..100 {
        if common::send(two.addr, "GET", &path, &a, "").await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "the second gateway never saw {id}");
    let follow = format!(r#"{{"model":"chat-ok","previous_response_id":"{id}","input":"more"}}"#);
    let res = common::send(two.addr, "POST", "/v1/responses", &a, follow.clone()).await;
    assert_eq!(res.status, 200);
    let seen = v(&fake.seen.lock().unwrap().last().unwrap().body);
    assert_eq!(
        seen["messages"],
        json!([{"role": "user", "content": "hi"},
               {"role": "assistant", "content": "Hello there!"},
               {"role": "user", "content": "more"}])
    );
    // another key: 404 on read, 400 previous_response_not_found on a follow-up
    assert_eq!(
        common::send(two.addr, "GET", &path, &b, "").await.status,
        404
    );
    let res = common::send(two.addr, "POST", "/v1/responses", &b, follow).await;
    assert_eq!(res.status, 400);
    assert_eq!(
        res.json().await["error"]["code"],
        "previous_response_not_found"
    );
}

#[tokio::test]
async fn the_mock_provider_serves_the_responses_api_translated() {
    let cfg = "[auth]\nenabled = false\n[usage]\njsonl = \"\"\n[providers.mock]\nkind = \"mock\"\n[models.mock]\ntargets = [{ provider = \"mock\", model = \"ok\" }]\n[models.mock-tool]\ntargets = [{ provider = \"mock\", model = \"tool\" }]\n";
    let gw = common::Gateway::start(cfg).await;
    let r = post(&gw, r#"{"model":"mock","input":"hi"}"#)
        .await
        .json()
        .await;
    assert_eq!(r["status"], "completed");
    assert!(
        !r["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let evs = events(
        &post(&gw, r#"{"model":"mock-tool","input":"w?","stream":true}"#)
            .await
            .rest()
            .await,
    );
    check_sequence(&evs);
    let out = &evs.last().unwrap().1["response"]["output"][0];
    assert_eq!(out["call_id"], "call_mock_1");
    assert_eq!(out["arguments"], "{\"location\":\"Paris\"}");
    let recs = gw.records(2).await;
    assert!(recs.iter().all(|r| r.usage_source == UsageSource::Upstream));
}

#[test]
fn parse_reads_what_the_stack_needs_from_a_responses_body() {
    use tollgate::request::{Api, parse_body};
    let p = parse_body(
        Api::Responses,
        Bytes::from_static(
            br#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","image_url":"https://x/y.png"}]}],"max_output_tokens":50,"stream":true,"tools":[{"type":"function","name":"f"}],"text":{"format":{"type":"json_schema","name":"a","schema":{}}}}"#,
        ),
    )
    .unwrap();
    assert_eq!(Api::from_path("/v1/responses"), Some(Api::Responses));
    assert_eq!(p.max_tokens, Some(50), "max_output_tokens reserves");
    assert!(p.stream && p.has_tools && p.has_images && p.json_mode);
    for (body, param) in [
        (r#"{"model":"m"}"#, "input"),
        (
            r#"{"model":"m","input":"x","temperature":3}"#,
            "temperature",
        ),
        (
            r#"{"model":"m","input":"x","max_output_tokens":0}"#,
            "max_output_tokens",
        ),
        (r#"{"model":"m","input":5}"#, "input"),
    ] {
        let e = parse_body(Api::Responses, Bytes::from(body)).unwrap_err();
        assert_eq!(e.status(), 400, "{body}");
        assert_eq!(e.to_json()["error"]["param"], param, "{body}");
    }
    // a follow-up may carry no input of its own
    assert!(
        parse_body(
            Api::Responses,
            Bytes::from_static(br#"{"model":"m","previous_response_id":"resp_1"}"#)
        )
        .is_ok()
    );
}
