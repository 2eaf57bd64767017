//! Reasoning survives tool-use loops through the translators: Anthropic `thinking` /
//! `redacted_thinking` blocks (which Anthropic wants back unchanged, signature included, in a
//! tool-use loop with thinking) and Gemini `thoughtSignature`s (which Gemini 3 wants back on
//! the `functionCall` part). Golden translations first, then two-turn tool loops through the
//! gateway over real sockets against fakes that refuse a second turn that lost them.

mod common;
mod fakes;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use tollgate::translate::anthropic::{AnthropicOptions, AnthropicStream, request_to_anthropic};
use tollgate::translate::gemini::{GeminiStream, request_to_gemini, response_from_gemini};
use tollgate::translate::responses::{
    CarryBack, Echo, ReasoningForm, ResponsesStream, request_to_chat_for, request_to_chat_with,
    response_from_chat_with,
};
use tollgate::translate::translate_chunks;

const CREATED: u64 = 1_700_000_000;

fn v(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

/// The `data:` payloads of an SSE body (`[DONE]` left out).
fn data_of(s: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(s)
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// The assistant message a chat stream adds up to, merging deltas the way the openai SDK's
/// stream helper does: strings concatenate, list entries merge by their `index`.
fn accumulate(s: &[u8]) -> Value {
    fn merge(acc: &mut Value, delta: &Value) {
        let (Some(acc), Some(delta)) = (acc.as_object_mut(), delta.as_object()) else {
            return;
        };
        for (k, d) in delta {
            match (acc.get_mut(k), d) {
                (Some(Value::String(a)), Value::String(d)) if k != "type" => a.push_str(d),
                (Some(Value::Array(a)), Value::Array(list)) => {
                    for e in list {
                        let i = e["index"].as_u64().unwrap() as usize;
                        match a.get_mut(i) {
                            Some(x) => merge(x, e),
                            None => a.push(e.clone()),
                        }
                    }
                }
                (Some(a @ Value::Object(_)), Value::Object(_)) => merge(a, d),
                (None, _) | (Some(Value::Null), _) => {
                    acc.insert(k.clone(), d.clone());
                }
                _ => {}
            }
        }
    }
    let mut msg = json!({});
    for c in data_of(s) {
        if let Some(d) = c["choices"].get(0).map(|c| &c["delta"]) {
            merge(&mut msg, d);
        }
    }
    msg
}

// ------------------------------------------------------------------------------------------
// Golden translations

#[test]
fn chat_thinking_blocks_go_back_to_anthropic_first_and_unchanged() {
    let req = json!({
        "model": "m", "max_tokens": 2000, "reasoning_effort": "low",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Let me check.", "reasoning_content": "Hmm.",
             "thinking_blocks": [
                {"index": 0, "type": "thinking", "thinking": "Hmm.", "signature": "sig=="},
                {"index": 1, "type": "redacted_thinking", "data": "opaque"}],
             "tool_calls": [{"id": "toolu_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"}
        ]
    });
    let out = v(&request_to_anthropic(
        req.to_string().as_bytes(),
        "claude-x",
        &AnthropicOptions::default(),
    )
    .unwrap());
    assert_eq!(
        out["messages"][1],
        json!({"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Hmm.", "signature": "sig=="},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
        ]})
    );
    assert_eq!(
        out["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    // a block that is not what the answer carried: 400 naming it
    for (bad, param) in [
        (
            json!([{"type": "thinking", "thinking": "x"}]),
            "messages[1].thinking_blocks[0]",
        ),
        (
            json!([{"type": "text", "text": "x"}]),
            "messages[1].thinking_blocks[0]",
        ),
        (json!("x"), "messages[1].thinking_blocks"),
    ] {
        let mut r = req.clone();
        r["messages"][1]["thinking_blocks"] = bad;
        let e = request_to_anthropic(r.to_string().as_bytes(), "c", &AnthropicOptions::default())
            .unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.to_json()["error"]["param"], param);
    }
}

const A_THINKING_TOOL_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_5\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Say \\\"hi\\\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\" then.\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQB+/=\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"redacted_thinking\",\"data\":\"EmwKAhgB\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_9\",\"name\":\"f\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":30}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

#[test]
fn anthropic_thinking_stream_golden_for_every_split() {
    let pre = "data: {\"id\":\"chatcmpl-msg_5\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":";
    let post = ",\"logprobs\":null,\"finish_reason\":null}]}\n\n";
    let expected: String = [
        r#"{"role":"assistant","content":""}"#,
        r#"{"reasoning_content":"Say \"hi\""}"#,
        r#"{"reasoning_content":" then."}"#,
        r#"{"thinking_blocks":[{"index":0,"type":"thinking","thinking":"Say \"hi\" then.","signature":"EqQB+/="}]}"#,
        r#"{"thinking_blocks":[{"index":1,"type":"redacted_thinking","data":"EmwKAhgB"}]}"#,
        r#"{"tool_calls":[{"index":0,"id":"toolu_9","type":"function","function":{"name":"f","arguments":""}}]}"#,
        r#"{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}"#,
    ]
    .iter()
    .map(|d| format!("{pre}{d}{post}"))
    .chain([
        format!("{pre}{{}},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}}]}}\n\n"),
        "data: [DONE]\n\n".to_owned(),
    ])
    .collect();
    let bytes = A_THINKING_TOOL_STREAM.as_bytes();
    for at in 0..=bytes.len() {
        let chunks = vec![
            Bytes::copy_from_slice(&bytes[..at]),
            Bytes::copy_from_slice(&bytes[at..]),
        ];
        let (out, err) = translate_chunks(&mut AnthropicStream::new(false, CREATED), chunks);
        assert!(err.is_none());
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            expected,
            "split at {at}"
        );
    }
    // what a client adds up goes back to Anthropic as the blocks it streamed
    let (out, _) = translate_chunks(
        &mut AnthropicStream::new(false, CREATED),
        [Bytes::from_static(bytes)],
    );
    let mut msg = accumulate(&out);
    msg["content"] = Value::Null;
    let req = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}, msg,
        {"role": "tool", "tool_call_id": "toolu_9", "content": "ok"}]});
    let a = v(&request_to_anthropic(
        req.to_string().as_bytes(),
        "c",
        &AnthropicOptions::default(),
    )
    .unwrap());
    assert_eq!(
        a["messages"][1]["content"],
        json!([
            {"type": "thinking", "thinking": "Say \"hi\" then.", "signature": "EqQB+/="},
            {"type": "redacted_thinking", "data": "EmwKAhgB"},
            {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}}
        ])
    );
}

#[test]
fn gemini_thought_signature_rides_on_the_tool_call_and_comes_back() {
    let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Plan: look it up.","thought":true},{"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":"CiQB0e2Kb=="}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":3,"totalTokenCount":12,"thoughtsTokenCount":4},"modelVersion":"gemini-3-pro","responseId":"r7"}"#;
    let out = v(&response_from_gemini(body, CREATED, "g").unwrap());
    let msg = &out["choices"][0]["message"];
    assert_eq!(
        *msg,
        json!({"role": "assistant", "content": null, "refusal": null,
            "reasoning_content": "Plan: look it up.",
            "tool_calls": [{"id": "call_r7_0", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                "extra_content": {"google": {"thought_signature": "CiQB0e2Kb=="}}}]})
    );
    // streamed: the thought as reasoning_content, the signature on the tool-call delta
    let sse = format!("data: {}\n\n", std::str::from_utf8(body).unwrap());
    let (s, err) = translate_chunks(
        &mut GeminiStream::new(false, CREATED, "g"),
        [Bytes::from(sse)],
    );
    assert!(err.is_none());
    let streamed = accumulate(&s);
    assert_eq!(streamed["reasoning_content"], msg["reasoning_content"]);
    assert_eq!(
        streamed["tool_calls"][0]["extra_content"],
        msg["tool_calls"][0]["extra_content"]
    );
    // back: the signature on the functionCall part, the thought text not sent
    let req = json!({"model": "g", "reasoning_effort": "low", "messages": [
        {"role": "user", "content": "Weather?"}, msg,
        {"role": "tool", "tool_call_id": "call_r7_0", "content": "18C"}]});
    let g = v(&request_to_gemini(req.to_string().as_bytes()).unwrap());
    assert_eq!(
        g["contents"][1],
        json!({"role": "model", "parts": [{"functionCall": {"name": "get_weather",
            "args": {"city": "Paris"}}, "thoughtSignature": "CiQB0e2Kb=="}]})
    );
    assert_eq!(
        g["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 1024, "includeThoughts": true})
    );
    let mut bad = req.clone();
    bad["messages"][1]["tool_calls"][0]["extra_content"]["google"]["thought_signature"] = json!(7);
    let e = request_to_gemini(bad.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.status(), 400);
    assert_eq!(
        e.to_json()["error"]["param"],
        "messages[1].tool_calls[0].extra_content.google.thought_signature"
    );
}

const A_THINKING_TOOL_ANSWER: &[u8] = br#"{"id":"msg_6","type":"message","role":"assistant","model":"claude-x","content":[{"type":"thinking","thinking":"Check it.","signature":"sig=="},{"type":"redacted_thinking","data":"opaque"},{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_6","name":"get_weather","input":{"city":"Paris"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":20,"output_tokens":40}}"#;

#[test]
fn responses_reasoning_items_carry_the_blocks_as_encrypted_content_and_back() {
    let chat =
        tollgate::translate::anthropic::response_from_anthropic(A_THINKING_TOOL_ANSWER, CREATED)
            .unwrap();
    let r = v(
        &response_from_chat_with(&chat, &Echo::default(), None, ReasoningForm::Summary).unwrap(),
    );
    let out = r["output"].as_array().unwrap();
    assert_eq!(out[0]["type"], "reasoning");
    assert_eq!(out[0]["summary"][0]["text"], "Check it.");
    let enc = out[0]["encrypted_content"].as_str().unwrap();
    let doc = v(&base64::engine::general_purpose::STANDARD
        .decode(enc)
        .unwrap());
    let blocks = json!([{"type": "thinking", "thinking": "Check it.", "signature": "sig=="},
        {"type": "redacted_thinking", "data": "opaque"}]);
    assert_eq!(doc, json!({"thinking_blocks": blocks}));
    // the items sent back (as the SDKs do) → an assistant turn with the blocks first
    let mut input = vec![json!({"role": "user", "content": "Weather?"})];
    input.extend(out.iter().cloned());
    input.push(json!({"type": "function_call_output", "call_id": "toolu_6", "output": "18C"}));
    let req = json!({"model": "m", "input": input, "reasoning": {"effort": "low"},
        "max_output_tokens": 2000});
    let (c, _) = request_to_chat_with(req.to_string().as_bytes(), true).unwrap();
    let c = v(&c);
    assert_eq!(c["messages"][1]["thinking_blocks"], blocks);
    assert_eq!(c["messages"][1]["content"], "Checking.");
    assert_eq!(c["messages"][1]["tool_calls"][0]["id"], "toolu_6");
    let a = v(
        &request_to_anthropic(c.to_string().as_bytes(), "c", &AnthropicOptions::default()).unwrap(),
    );
    let content = a["messages"][1]["content"].as_array().unwrap();
    assert_eq!(content[..2], blocks.as_array().unwrap()[..]);
    assert_eq!(content[3]["type"], "tool_use");
    // for a target that does not speak Anthropic, reasoning items are dropped as before
    let (c, _) = request_to_chat_with(req.to_string().as_bytes(), false).unwrap();
    assert!(v(&c)["messages"][1].get("thinking_blocks").is_none());
    // encrypted content this gateway did not write: 400 naming it
    for bad in [json!("not base64!"), json!("e30="), json!(5)] {
        let mut r = req.clone();
        r["input"][1]["encrypted_content"] = bad.clone();
        let e = request_to_chat_with(r.to_string().as_bytes(), true).unwrap_err();
        assert_eq!(e.status(), 400, "{bad}");
        assert_eq!(e.to_json()["error"]["param"], "input[1].encrypted_content");
        assert_eq!(e.to_json()["error"]["code"], "invalid_encrypted_content");
    }
}

/// The base64 `encrypted_content` of a reasoning item carrying `sigs` (call_id → signature).
fn sig_content(sigs: Value) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(json!({"thought_signatures": sigs}).to_string())
}

/// A Responses request sending `items` back after the question, with the tool's result.
fn gemini_loop_request(items: &[Value], call_id: &str) -> Value {
    let mut input = vec![json!({"role": "user", "content": "Weather?"})];
    input.extend(items.iter().cloned());
    input.push(json!({"type": "function_call_output", "call_id": call_id, "output": "18C"}));
    json!({"model": "g", "input": input, "reasoning": {"effort": "low"}})
}

#[test]
fn responses_reasoning_items_carry_gemini_thought_signatures_and_back() {
    let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Plan: look it up.","thought":true},{"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":"CiQB0e2Kb=="},{"functionCall":{"name":"get_time","args":{}}}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":3,"totalTokenCount":12,"thoughtsTokenCount":4},"modelVersion":"gemini-3-pro","responseId":"r7"}"#;
    let chat = response_from_gemini(body, CREATED, "g").unwrap();
    let r =
        v(&response_from_chat_with(&chat, &Echo::default(), None, ReasoningForm::Text).unwrap());
    let sigs = json!({"call_r7_0": "CiQB0e2Kb=="});
    assert_eq!(
        r["output"],
        json!([
            {"id": "rs_r7", "type": "reasoning", "summary": [],
                "content": [{"type": "reasoning_text", "text": "Plan: look it up."}],
                "encrypted_content": sig_content(sigs.clone())},
            {"id": "fc_r7_0", "type": "function_call", "status": "completed",
                "call_id": "call_r7_0", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"id": "fc_r7_1", "type": "function_call", "status": "completed",
                "call_id": "call_r7_1", "name": "get_time", "arguments": "{}"}
        ])
    );
    // sent back (as the SDKs do): the signature on its call, and on to Gemini's functionCall
    let out = r["output"].as_array().unwrap();
    let req = gemini_loop_request(out, "call_r7_0");
    let (c, _) = request_to_chat_for(req.to_string().as_bytes(), CarryBack::Gemini).unwrap();
    let c = v(&c);
    let calls = &c["messages"][1]["tool_calls"];
    assert_eq!(
        calls[0]["extra_content"],
        json!({"google": {"thought_signature": "CiQB0e2Kb=="}})
    );
    assert!(calls[1].get("extra_content").is_none(), "{c}");
    assert!(c["messages"][1].get("thinking_blocks").is_none(), "{c}");
    let g = v(&request_to_gemini(c.to_string().as_bytes()).unwrap());
    assert_eq!(
        g["contents"][1]["parts"][0]["thoughtSignature"],
        "CiQB0e2Kb=="
    );
    assert!(
        g["contents"][1]["parts"][1]
            .get("thoughtSignature")
            .is_none()
    );
    // signatures without thought text: a bare reasoning item of their own
    let bare = chat_without_reasoning(&chat);
    let r =
        v(&response_from_chat_with(&bare, &Echo::default(), None, ReasoningForm::Text).unwrap());
    assert_eq!(
        r["output"][0],
        json!({"id": "rs_r7", "type": "reasoning", "summary": [],
            "encrypted_content": sig_content(sigs.clone())})
    );
    assert_eq!(r["output"][1]["type"], "function_call");
    // for an Anthropic target the signatures are dropped, for a chat target the items unread
    for carry in [CarryBack::Anthropic, CarryBack::Nothing] {
        let (c, _) = request_to_chat_for(req.to_string().as_bytes(), carry).unwrap();
        let c = v(&c);
        assert!(
            c["messages"][1]["tool_calls"][0]
                .get("extra_content")
                .is_none()
        );
        assert!(c["messages"][1].get("thinking_blocks").is_none());
    }
    // an encrypted_content this gateway did not write, or altered: 400 naming it
    for bad in [
        json!("not base64!"),
        json!("e30="),
        json!(sig_content(json!({}))),
        json!(sig_content(json!({"call_r7_0": 7}))),
        json!(sig_content(json!(["CiQB0e2Kb=="]))),
    ] {
        let mut r = req.clone();
        r["input"][1]["encrypted_content"] = bad.clone();
        let e = request_to_chat_for(r.to_string().as_bytes(), CarryBack::Gemini).unwrap_err();
        assert_eq!(e.status(), 400, "{bad}");
        assert_eq!(e.to_json()["error"]["param"], "input[1].encrypted_content");
        assert_eq!(e.to_json()["error"]["code"], "invalid_encrypted_content");
    }
}

/// A `chat.completion` without its `reasoning_content`.
fn chat_without_reasoning(chat: &[u8]) -> Vec<u8> {
    let mut c = v(chat);
    c["choices"][0]["message"]
        .as_object_mut()
        .unwrap()
        .remove("reasoning_content");
    c.to_string().into_bytes()
}

/// A Gemini-shaped chat stream: thought text, a signed call (the open reasoning item carries
/// its signature), text, another signed call (a bare reasoning item opens for it).
const G_SIGNED_TOOL_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-r8\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-3-pro\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-r8\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-3-pro\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"Plan.\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-r8\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-3-pro\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"},\"extra_content\":{\"google\":{\"thought_signature\":\"SIGa\"}}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-r8\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-3-pro\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"And:\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-r8\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-3-pro\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"},\"extra_content\":{\"google\":{\"thought_signature\":\"SIGb\"}}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: {\"id\":\"chatcmpl-r8\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gemini-3-pro\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\n",
    "data: [DONE]\n\n",
);

#[test]
fn responses_stream_carries_gemini_thought_signatures_for_every_split() {
    let bytes = G_SIGNED_TOOL_STREAM.as_bytes();
    let run = |chunks: Vec<Bytes>| {
        let mut t = ResponsesStream::new("g", Echo::default());
        let (out, err) = translate_chunks(&mut t, chunks);
        assert!(err.is_none());
        out
    };
    let whole = run(vec![Bytes::from_static(bytes)]);
    let data: Vec<&str> = std::str::from_utf8(&whole)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    // between response.created/in_progress and response.completed: the reasoning item that
    // was open carries call_a's signature; a bare one opens for call_b's, before its call
    let expected = [
        r#"{"type":"response.output_item.added","output_index":0,"item":{"content":[{"text":"","type":"reasoning_text"}],"id":"rs_r8","summary":[],"type":"reasoning"},"sequence_number":2}"#,
        r#"{"type":"response.reasoning_text.delta","item_id":"rs_r8","output_index":0,"content_index":0,"delta":"Plan.","sequence_number":3}"#,
        r#"{"type":"response.reasoning_text.done","item_id":"rs_r8","output_index":0,"content_index":0,"text":"Plan.","sequence_number":4}"#,
        r#"{"type":"response.output_item.done","output_index":0,"item":{"content":[{"text":"Plan.","type":"reasoning_text"}],"encrypted_content":"eyJ0aG91Z2h0X3NpZ25hdHVyZXMiOnsiY2FsbF9hIjoiU0lHYSJ9fQ==","id":"rs_r8","summary":[],"type":"reasoning"},"sequence_number":5}"#,
        r#"{"type":"response.output_item.added","output_index":1,"item":{"arguments":"","call_id":"call_a","id":"fc_r8_0","name":"f","status":"in_progress","type":"function_call"},"sequence_number":6}"#,
        r#"{"type":"response.function_call_arguments.delta","item_id":"fc_r8_0","output_index":1,"delta":"{}","sequence_number":7}"#,
        r#"{"type":"response.function_call_arguments.done","item_id":"fc_r8_0","output_index":1,"name":"f","arguments":"{}","sequence_number":8}"#,
        r#"{"type":"response.output_item.done","output_index":1,"item":{"arguments":"{}","call_id":"call_a","id":"fc_r8_0","name":"f","status":"completed","type":"function_call"},"sequence_number":9}"#,
        r#"{"type":"response.output_item.added","output_index":2,"item":{"content":[{"annotations":[],"logprobs":[],"text":"","type":"output_text"}],"id":"msg_r8","role":"assistant","status":"in_progress","type":"message"},"sequence_number":10}"#,
        r#"{"type":"response.content_part.added","item_id":"msg_r8","output_index":2,"content_index":0,"part":{"type":"output_text","text":"","annotations":[],"logprobs":[]},"sequence_number":11}"#,
        r#"{"type":"response.output_text.delta","item_id":"msg_r8","output_index":2,"content_index":0,"delta":"And:","logprobs":[],"sequence_number":12}"#,
        r#"{"type":"response.output_text.done","item_id":"msg_r8","output_index":2,"content_index":0,"text":"And:","logprobs":[],"sequence_number":13}"#,
        r#"{"type":"response.content_part.done","item_id":"msg_r8","output_index":2,"content_index":0,"part":{"type":"output_text","text":"And:","annotations":[],"logprobs":[]},"sequence_number":14}"#,
        r#"{"type":"response.output_item.done","output_index":2,"item":{"content":[{"annotations":[],"logprobs":[],"text":"And:","type":"output_text"}],"id":"msg_r8","role":"assistant","status":"completed","type":"message"},"sequence_number":15}"#,
        r#"{"type":"response.output_item.added","output_index":3,"item":{"id":"rs_r8_1","summary":[],"type":"reasoning"},"sequence_number":16}"#,
        r#"{"type":"response.output_item.done","output_index":3,"item":{"encrypted_content":"eyJ0aG91Z2h0X3NpZ25hdHVyZXMiOnsiY2FsbF9iIjoiU0lHYiJ9fQ==","id":"rs_r8_1","summary":[],"type":"reasoning"},"sequence_number":17}"#,
        r#"{"type":"response.output_item.added","output_index":4,"item":{"arguments":"","call_id":"call_b","id":"fc_r8_1","name":"g","status":"in_progress","type":"function_call"},"sequence_number":18}"#,
        r#"{"type":"response.function_call_arguments.delta","item_id":"fc_r8_1","output_index":4,"delta":"{}","sequence_number":19}"#,
        r#"{"type":"response.function_call_arguments.done","item_id":"fc_r8_1","output_index":4,"name":"g","arguments":"{}","sequence_number":20}"#,
        r#"{"type":"response.output_item.done","output_index":4,"item":{"arguments":"{}","call_id":"call_b","id":"fc_r8_1","name":"g","status":"completed","type":"function_call"},"sequence_number":21}"#,
    ];
    assert_eq!(data[2..data.len() - 1], expected);
    let done: Vec<Value> = expected
        .iter()
        .map(|e| v(e.as_bytes()))
        .filter(|e| e["type"] == "response.output_item.done")
        .map(|e| e["item"].clone())
        .collect();
    let completed = v(data.last().unwrap().as_bytes());
    assert_eq!(completed["type"], "response.completed");
    assert_eq!(completed["response"]["output"], Value::Array(done.clone()));
    assert_eq!(
        done[0]["encrypted_content"],
        sig_content(json!({"call_a": "SIGa"}))
    );
    assert_eq!(
        done[3]["encrypted_content"],
        sig_content(json!({"call_b": "SIGb"}))
    );
    // the output sent back: each signature on its call, for Gemini
    let req = gemini_loop_request(&done, "call_b");
    let (c, _) = request_to_chat_for(req.to_string().as_bytes(), CarryBack::Gemini).unwrap();
    let calls: Vec<Value> = v(&c)["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["tool_calls"].as_array().cloned().unwrap_or_default())
        .map(|c| json!([c["id"], c["extra_content"]["google"]["thought_signature"]]))
        .collect();
    assert_eq!(
        calls,
        [json!(["call_a", "SIGa"]), json!(["call_b", "SIGb"])]
    );
    for at in 0..=bytes.len() {
        let chunks = vec![
            Bytes::copy_from_slice(&bytes[..at]),
            Bytes::copy_from_slice(&bytes[at..]),
        ];
        assert_eq!(run(chunks), whole, "split at {at}");
    }
}

// ------------------------------------------------------------------------------------------
// Through the gateway, over real sockets

fn config(anthropic: &fakes::Fake, gemini: &fakes::Fake) -> String {
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
[providers.gem]
kind = "gemini"
base_url = "{}"
api_key = "{}"
[models.claude-tool]
targets = [{{ provider = "anth", model = "tool" }}]
[models.gemini-tool]
targets = [{{ provider = "gem", model = "tool" }}]
"#,
        anthropic.base_url(),
        fakes::ANTHROPIC_KEY,
        gemini.base_url(),
        fakes::GEMINI_KEY,
    )
}

const TOOLS: &str =
    r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]"#;

fn chat_body(model: &str, messages: &Value, stream: bool) -> String {
    json!({"model": model, "messages": messages, "tools": serde_json::from_str::<Value>(TOOLS).unwrap(),
        "reasoning_effort": "low", "max_tokens": 2000, "stream": stream})
    .to_string()
}

/// Turn 1 of a chat tool loop (streamed or not): the assistant message as the client keeps it.
async fn first_turn(gw: &common::Gateway, model: &str, stream: bool) -> Value {
    let q = json!([{"role": "user", "content": "Weather in Paris?"}]);
    let res = common::chat(gw.addr, &chat_body(model, &q, stream), &[]).await;
    assert_eq!(res.status, 200, "{model}");
    let mut msg = match stream {
        true => accumulate(&res.rest().await),
        false => res.json().await["choices"][0]["message"].clone(),
    };
    assert_eq!(
        msg["tool_calls"][0]["function"]["name"], "get_weather",
        "{msg}"
    );
    msg["role"] = json!("assistant");
    msg
}

/// Turn 2: the history with `assistant` and the tool's result.
async fn second_turn(
    gw: &common::Gateway,
    model: &str,
    assistant: &Value,
    stream: bool,
) -> common::Streaming {
    let call_id = assistant["tool_calls"][0]["id"].clone();
    let history = json!([{"role": "user", "content": "Weather in Paris?"}, assistant,
        {"role": "tool", "tool_call_id": call_id, "content": "sunny"}]);
    common::chat(gw.addr, &chat_body(model, &history, stream), &[]).await
}

async fn answer_text(res: common::Streaming, stream: bool) -> String {
    assert_eq!(res.status, 200);
    match stream {
        true => accumulate(&res.rest().await)["content"]
            .as_str()
            .unwrap()
            .to_owned(),
        false => res.json().await["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned(),
    }
}

#[tokio::test]
async fn chat_tool_loop_with_anthropic_thinking_stream_and_not() {
    let (a, g) = (fakes::anthropic().await, fakes::gemini().await);
    let gw = common::Gateway::start(&config(&a, &g)).await;
    let thought = fakes::THOUGHTS.concat();
    let block = json!({"type": "thinking", "thinking": thought, "signature": fakes::sign_thought(&thought)});
    for stream in [false, true] {
        let msg = first_turn(&gw, "claude-tool", stream).await;
        assert_eq!(msg["reasoning_content"], thought.as_str(), "{msg}");
        let mut blocks = msg["thinking_blocks"].clone();
        if stream {
            assert_eq!(blocks[0]["index"], 0);
            blocks[0].as_object_mut().unwrap().remove("index");
        }
        assert_eq!(blocks, json!([block]), "stream {stream}");
        let res = second_turn(&gw, "claude-tool", &msg, stream).await;
        assert_eq!(
            answer_text(res, stream).await,
            "Hello there!",
            "stream {stream}"
        );
        let seen = v(&a.seen.lock().unwrap().last().unwrap().body);
        assert_eq!(seen["messages"][1]["content"][0], block);
        assert_eq!(seen["messages"][1]["content"][2]["type"], "tool_use");
        // without its thinking block, or with the thought changed, Anthropic refuses turn 2
        let mut lost = msg.clone();
        lost.as_object_mut().unwrap().remove("thinking_blocks");
        let mut changed = msg.clone();
        changed["thinking_blocks"][0]["thinking"] = json!("Something else.");
        for (bad, says) in [
            (lost, "Expected `thinking`"),
            (changed, "Invalid `signature`"),
        ] {
            let res = second_turn(&gw, "claude-tool", &bad, stream).await;
            assert_eq!(res.status, 400);
            let e = res.json().await;
            assert_eq!(e["error"]["type"], "invalid_request_error");
            assert!(
                e["error"]["message"].as_str().unwrap().contains(says),
                "{e}"
            );
        }
    }
}

#[tokio::test]
async fn chat_tool_loop_with_gemini_thought_signatures_stream_and_not() {
    let (a, g) = (fakes::anthropic().await, fakes::gemini().await);
    let gw = common::Gateway::start(&config(&a, &g)).await;
    for stream in [false, true] {
        let msg = first_turn(&gw, "gemini-tool", stream).await;
        assert_eq!(msg["reasoning_content"], fakes::THOUGHTS.concat(), "{msg}");
        let sig = msg["tool_calls"][0]["extra_content"]["google"]["thought_signature"].clone();
        assert!(sig.as_str().is_some_and(|s| s.len() == 64), "{msg}");
        let res = second_turn(&gw, "gemini-tool", &msg, stream).await;
        assert_eq!(
            answer_text(res, stream).await,
            "Hello there!",
            "stream {stream}"
        );
        let seen = v(&g.seen.lock().unwrap().last().unwrap().body);
        assert_eq!(seen["contents"][1]["parts"][0]["thoughtSignature"], sig);
        // without the signature Gemini refuses turn 2
        let mut lost = msg.clone();
        lost["tool_calls"][0]
            .as_object_mut()
            .unwrap()
            .remove("extra_content");
        let res = second_turn(&gw, "gemini-tool", &lost, stream).await;
        assert_eq!(res.status, 400);
        let e = res.json().await;
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("thought_signature"),
            "{e}"
        );
    }
}

async fn responses(gw: &common::Gateway, body: &Value) -> Value {
    let stream = body["stream"] == true;
    let res = common::send(gw.addr, "POST", "/v1/responses", &[], body.to_string()).await;
    assert_eq!(res.status, 200, "{body}");
    if !stream {
        return res.json().await;
    }
    let evs = data_of(&res.rest().await);
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "response.completed", "{last}");
    last["response"].clone()
}

fn responses_body(input: Value, prev: Option<&str>, stream: bool) -> Value {
    let mut b = json!({"model": "claude-tool", "input": input, "reasoning": {"effort": "low"},
        "max_output_tokens": 2000, "stream": stream,
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]});
    if let Some(p) = prev {
        b["previous_response_id"] = json!(p);
    }
    b
}

#[tokio::test]
async fn responses_tool_loop_with_anthropic_thinking_items_and_previous_response_id() {
    let (a, g) = (fakes::anthropic().await, fakes::gemini().await);
    let gw = common::Gateway::start(&config(&a, &g)).await;
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    for stream in [false, true] {
        let r1 = responses(&gw, &responses_body(json!([question]), None, stream)).await;
        let out = r1["output"].as_array().unwrap();
        let types: Vec<&str> = out.iter().map(|o| o["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["reasoning", "message", "function_call"], "{r1}");
        assert!(out[0]["encrypted_content"].is_string(), "{r1}");
        let call_id = out[2]["call_id"].as_str().unwrap();
        let result = json!({"type": "function_call_output", "call_id": call_id, "output": "sunny"});

        // explicit items: the client sends the output back
        let mut input = vec![question.clone()];
        input.extend(out.iter().cloned());
        input.push(result.clone());
        let r2 = responses(&gw, &responses_body(Value::Array(input), None, stream)).await;
        assert_eq!(r2["status"], "completed");
        assert_eq!(
            r2["output"].as_array().unwrap().last().unwrap()["content"][0]["text"],
            "Hello there!"
        );
        let seen = v(&a.seen.lock().unwrap().last().unwrap().body);
        assert_eq!(seen["messages"][1]["content"][0]["type"], "thinking");

        // previous_response_id: the stored conversation keeps the reasoning item
        let id = r1["id"].as_str().unwrap();
        let mut r3 = None;
        for _ in 0..100 {
            let body = responses_body(json!([result]), Some(id), stream);
            let res = common::send(gw.addr, "POST", "/v1/responses", &[], body.to_string()).await;
            if res.status == 200 {
                r3 = Some(res.rest().await);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(r3.is_some(), "the stored response {id} was never continued");
        let seen = v(&a.seen.lock().unwrap().last().unwrap().body);
        assert_eq!(
            seen["messages"][1]["content"][0]["type"], "thinking",
            "{seen}"
        );
        assert_eq!(seen["messages"][2]["content"][0]["type"], "tool_result");

        // the items without the reasoning one: Anthropic refuses (what the carrying prevents)
        let input = json!([question, out[1], out[2], result]);
        let body = responses_body(input, None, stream);
        let res = common::send(gw.addr, "POST", "/v1/responses", &[], body.to_string()).await;
        assert_eq!(res.status, 400, "stream {stream}");
        let e = res.json().await;
        let says = e["error"]["message"].as_str().unwrap();
        assert!(says.contains("Expected `thinking`"), "{e}");
    }
}

#[tokio::test]
async fn responses_tool_loop_with_gemini_thought_signatures_items_and_previous_response_id() {
    let (a, g) = (fakes::anthropic().await, fakes::gemini().await);
    let gw = common::Gateway::start(&config(&a, &g)).await;
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    let body = |input: Value, prev: Option<&str>, stream: bool| {
        let mut b = responses_body(input, prev, stream);
        b["model"] = json!("gemini-tool");
        b
    };
    let seen_sig = || {
        let seen = v(&g.seen.lock().unwrap().last().unwrap().body);
        seen["contents"][1]["parts"][0]["thoughtSignature"].clone()
    };
    for stream in [false, true] {
        let r1 = responses(&gw, &body(json!([question]), None, stream)).await;
        let out = r1["output"].as_array().unwrap();
        let types: Vec<&str> = out.iter().map(|o| o["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["reasoning", "function_call"], "{r1}");
        assert_eq!(
            out[0]["content"][0]["text"],
            fakes::THOUGHTS.concat(),
            "{r1}"
        );
        let call_id = out[1]["call_id"].as_str().unwrap();
        let enc = out[0]["encrypted_content"].as_str().unwrap();
        let doc = v(&base64::engine::general_purpose::STANDARD
            .decode(enc)
            .unwrap());
        let sig = doc["thought_signatures"][call_id].clone();
        assert!(sig.as_str().is_some_and(|s| s.len() == 64), "{doc}");
        let result = json!({"type": "function_call_output", "call_id": call_id, "output": "sunny"});

        // explicit items: the client sends the output back; Gemini gets the signature
        let mut input = vec![question.clone()];
        input.extend(out.iter().cloned());
        input.push(result.clone());
        let r2 = responses(&gw, &body(Value::Array(input), None, stream)).await;
        assert_eq!(r2["status"], "completed");
        assert_eq!(
            r2["output"].as_array().unwrap().last().unwrap()["content"][0]["text"],
            "Hello there!"
        );
        assert_eq!(seen_sig(), sig, "stream {stream}");

        // previous_response_id: the stored conversation keeps the reasoning item
        let id = r1["id"].as_str().unwrap();
        let mut r3 = None;
        for _ in 0..100 {
            let b = body(json!([result]), Some(id), stream);
            let res = common::send(gw.addr, "POST", "/v1/responses", &[], b.to_string()).await;
            if res.status == 200 {
                r3 = Some(res.rest().await);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let r3 = r3.unwrap_or_else(|| panic!("the stored response {id} was never continued"));
        assert!(
            String::from_utf8_lossy(&r3).contains("Hello there"),
            "stream {stream}"
        );
        assert_eq!(seen_sig(), sig, "stream {stream}");

        // the items without the reasoning one: Gemini refuses (what the carrying prevents)
        let b = body(json!([question, out[1], result]), None, stream);
        let res = common::send(gw.addr, "POST", "/v1/responses", &[], b.to_string()).await;
        assert_eq!(res.status, 400, "stream {stream}");
        let e = res.json().await;
        let says = e["error"]["message"].as_str().unwrap();
        assert!(says.contains("thought_signature"), "{e}");
    }
}
