"""Issue 6, acceptance 2: the official openai Python SDK through the tollgate gateway gets the same
results whichever provider kind serves: the mock (OpenAI-compatible), a fake Anthropic Messages API
(translated by the Anthropic adapter) or a fake Gemini API (translated by the Gemini adapter).

Run by tests/conformance.rs, which starts the fakes and the gateway with one public model
`{kind}-{scenario}` per provider kind and scenario, and sets GATEWAY to the gateway's /v1 URL.
"""
import json
import os
import time

import openai
import pytest
from openai import OpenAI

GATEWAY = os.environ["GATEWAY"]
MSGS = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
KINDS = ["mock", "anthropic", "gemini"]


@pytest.fixture(scope="module")
def c():
    return OpenAI(base_url=GATEWAY, api_key="sk-client-test", max_retries=2, timeout=20)


@pytest.mark.parametrize("kind", KINDS)
def test_nonstream_text_and_usage(c, kind):
    r = c.chat.completions.create(model=f"{kind}-ok", messages=MSGS)
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == "Hello there!"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 6, 17)
    assert r.usage.prompt_tokens_details.cached_tokens == 4
    assert r._request_id


@pytest.mark.parametrize("kind", KINDS)
def test_stream_text_without_usage_chunk(c, kind):
    s = c.chat.completions.create(model=f"{kind}-ok", messages=MSGS, stream=True)
    text, finish, n_usage, ids = "", None, 0, set()
    for ch in s:
        assert ch.object == "chat.completion.chunk"
        ids.add(ch.id)
        n_usage += ch.usage is not None
        if ch.choices:
            text += ch.choices[0].delta.content or ""
            finish = ch.choices[0].finish_reason or finish
    assert text == "Hello there!"
    assert finish == "stop"
    assert n_usage == 0
    assert len(ids) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_stream_usage_chunk_is_last_and_exact(c, kind):
    s = c.chat.completions.create(
        model=f"{kind}-ok", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(s)
    usage_chunks = [ch for ch in chunks if ch.usage is not None]
    assert len(usage_chunks) == 1
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (11, 6, 17)
    assert last.usage.prompt_tokens_details.cached_tokens == 4


@pytest.mark.parametrize("kind", KINDS)
def test_nonstream_tool_call(c, kind):
    r = c.chat.completions.create(model=f"{kind}-tool", messages=MSGS, tools=TOOLS)
    tc = r.choices[0].message.tool_calls[0]
    assert tc.type == "function" and tc.id
    assert tc.function.name == "get_weather"
    assert json.loads(tc.function.arguments) == {"location": "Paris"}
    assert r.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("kind", KINDS)
def test_stream_tool_call_deltas(c, kind):
    with c.chat.completions.stream(model=f"{kind}-tool", messages=MSGS, tools=TOOLS) as st:
        for _ in st:
            pass
        final = st.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"location": "Paris"}
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("kind", KINDS)
def test_429_is_retried_then_served(c, kind):
    t0 = time.time()
    r = c.chat.completions.create(model=f"{kind}-err-429", messages=MSGS)
    assert r.choices[0].message.content == "Hello there!"
    assert time.time() - t0 >= 1.8  # two retries, each after retry-after: 1


@pytest.mark.parametrize("kind", KINDS)
def test_429_raises_rate_limit_error_with_retry_after(c, kind):
    with pytest.raises(openai.RateLimitError) as ei:
        c.with_options(max_retries=0).chat.completions.create(model=f"{kind}-err-429-always", messages=MSGS)
    e = ei.value
    assert e.status_code == 429
    assert e.response.headers.get("retry-after")
    assert e.body["origin"] == "upstream"


# The same "overloaded / unavailable" condition in each provider's own words: OpenAI 503,
# Anthropic 529 overloaded_error, Gemini 503 UNAVAILABLE. The OpenAI face answers 503 for all.
OVERLOADED = {"mock": "err-503", "anthropic": "err-529", "gemini": "err-503"}


@pytest.mark.parametrize("kind", KINDS)
def test_overloaded_is_503(c, kind):
    with pytest.raises(openai.InternalServerError) as ei:
        c.with_options(max_retries=0).chat.completions.create(model=f"{kind}-{OVERLOADED[kind]}", messages=MSGS)
    assert ei.value.status_code == 503
    assert ei.value.response.headers.get("retry-after")


@pytest.mark.parametrize("kind", KINDS)
def test_500_is_a_server_error(c, kind):
    with pytest.raises(openai.InternalServerError) as ei:
        c.with_options(max_retries=0).chat.completions.create(model=f"{kind}-err-500", messages=MSGS)
    assert ei.value.status_code in (500, 502)


@pytest.mark.parametrize("kind", KINDS)
def test_400_is_a_bad_request_and_not_retried(c, kind):
    with pytest.raises(openai.BadRequestError) as ei:
        c.chat.completions.create(model=f"{kind}-err-400", messages=MSGS)
    assert ei.value.status_code == 400
    attempts = ei.value.response.headers.get("x-tollgate-attempts", "")
    assert attempts.count(";") == 0, attempts


@pytest.mark.parametrize("kind", KINDS)
def test_midstream_error_raises_api_error(c, kind):
    s = c.chat.completions.create(model=f"{kind}-midstream-error", messages=MSGS, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as ei:
        for ch in s:
            if ch.choices:
                text += ch.choices[0].delta.content or ""
    assert ei.value.message
    assert text == "Hello"  # what arrived before the error is kept


@pytest.mark.parametrize("kind", KINDS)
def test_client_timeout(c, kind):
    with pytest.raises(openai.APITimeoutError):
        c.with_options(timeout=1.0, max_retries=0).chat.completions.create(model=f"{kind}-slow", messages=MSGS)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
def test_tool_loop_with_thinking_over_two_turns(c, kind, stream):
    """Thinking survives a tool-use loop: turn 1 returns it on the assistant message
    (`reasoning_content`; Anthropic's signed `thinking_blocks`, Gemini's thought signature in
    the tool call's `extra_content`), the SDK keeps those extra fields, and turn 2 sends the
    message back as is. The fakes refuse a turn whose thinking block or signature was lost or
    altered (as Anthropic and Gemini 3 do), so turn 2 answering shows it survived."""
    args = dict(model=f"{kind}-tool", tools=TOOLS, reasoning_effort="low", max_tokens=2000)
    q = [{"role": "user", "content": "What is the weather in Paris?"}]

    def turn(messages):
        if not stream:
            return c.chat.completions.create(messages=messages, **args).choices[0]
        with c.chat.completions.stream(messages=messages, **args) as st:
            for _ in st:
                pass
            return st.get_final_completion().choices[0]

    first = turn(q)
    msg = first.message
    assert first.finish_reason == "tool_calls"
    assert msg.reasoning_content == "Weighing the words."
    call = msg.tool_calls[0]
    if kind == "anthropic":
        (block,) = msg.thinking_blocks
        assert block["type"] == "thinking" and block["thinking"] == "Weighing the words."
        assert len(block["signature"]) == 64
    else:
        assert len(call.extra_content["google"]["thought_signature"]) == 64
    second = turn(q + [msg.to_dict(), {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    assert second.message.content == "Hello there!"
    assert second.finish_reason == "stop"
    # the same history without the thinking is refused by the upstream
    lost = msg.to_dict()
    lost.pop("thinking_blocks", None)
    for tc in lost["tool_calls"]:
        tc.pop("extra_content", None)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(
            messages=q + [lost, {"role": "tool", "tool_call_id": call.id, "content": "sunny"}], **args
        )
