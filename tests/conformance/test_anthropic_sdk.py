"""Issue 6, acceptance 3: the official anthropic Python SDK against the gateway's Anthropic-style
ingress (`/v1/messages`, base_url = the gateway root, no /v1), whatever serves the model:
- `anthropic-*`: a fake Anthropic Messages API; the request is passed through untouched,
- `mock-*`: the OpenAI-compatible mock; the request and answer are translated both ways,
- `gemini-*`: a fake Gemini API; translated to OpenAI chat, then by the Gemini adapter.

Run by tests/conformance.rs, which sets GATEWAY_ROOT.
"""
import os
import time

import json
import urllib.request

import anthropic
import pytest
from anthropic import Anthropic

ROOT = os.environ["GATEWAY_ROOT"]
MSGS = [{"role": "user", "content": "hi"}]
TOOLS = [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}]
KINDS = ["anthropic", "mock", "gemini"]


@pytest.fixture(scope="module")
def c():
    # anthropic 2.x sends `Authorization: Bearer` and `anthropic-version: 2026-10-21`
    return Anthropic(base_url=ROOT, api_key="sk-ant-client-test", max_retries=2, timeout=20)


@pytest.mark.parametrize("kind", KINDS)
def test_text_and_usage(c, kind):
    m = c.messages.create(model=f"{kind}-ok", max_tokens=64, messages=MSGS)
    assert m.type == "message" and m.role == "assistant"
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == "Hello there!"
    assert m.stop_reason == "end_turn"
    # 11 input tokens in all, 4 of them read from the cache: input_tokens excludes them
    assert m.usage.input_tokens == 7
    assert m.usage.cache_read_input_tokens == 4
    assert m.usage.output_tokens == 6
    assert m._request_id


@pytest.mark.parametrize("kind", KINDS)
def test_stream_event_order_and_cumulative_usage(c, kind):
    with c.messages.stream(model=f"{kind}-ok", max_tokens=64, messages=MSGS) as s:
        kinds = [ev.type for ev in s]
        final = s.get_final_message()
    raw = [k for k in kinds if k not in ("text", "ping")]  # the SDK adds `text` helper events
    assert raw[0] == "message_start"
    assert raw[1] == "content_block_start"
    assert raw[-2:] == ["message_delta", "message_stop"]
    assert "content_block_delta" in raw and "content_block_stop" in raw
    assert final.content[0].text == "Hello there!"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6  # the last cumulative message_delta count
    assert final.usage.input_tokens == 7
    assert final.usage.cache_read_input_tokens == 4


@pytest.mark.parametrize("kind", KINDS)
def test_stream_text_deltas_concatenate(c, kind):
    with c.messages.stream(model=f"{kind}-ok", max_tokens=64, messages=MSGS) as s:
        text = "".join(s.text_stream)
    assert text == "Hello there!"


@pytest.mark.parametrize("kind", KINDS)
def test_tool_use(c, kind):
    m = c.messages.create(model=f"{kind}-tool", max_tokens=64, messages=MSGS, tools=TOOLS)
    tools = [b for b in m.content if b.type == "tool_use"]
    assert len(tools) == 1
    assert tools[0].name == "get_weather" and tools[0].id
    assert tools[0].input == {"location": "Paris"}
    assert m.stop_reason == "tool_use"


@pytest.mark.parametrize("kind", KINDS)
def test_stream_tool_use(c, kind):
    with c.messages.stream(model=f"{kind}-tool", max_tokens=64, messages=MSGS, tools=TOOLS) as s:
        final = s.get_final_message()
    tools = [b for b in final.content if b.type == "tool_use"]
    assert len(tools) == 1
    assert tools[0].name == "get_weather"
    assert tools[0].input == {"location": "Paris"}
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("kind", KINDS)
def test_tool_result_round_trip(c, kind):
    history = MSGS + [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]
    m = c.messages.create(model=f"{kind}-ok", max_tokens=64, messages=history, tools=TOOLS)
    assert m.content[0].text == "Hello there!"


@pytest.mark.parametrize("kind", KINDS)
def test_429_is_retried_with_retry_after(c, kind):
    t0 = time.time()
    m = c.messages.create(model=f"{kind}-err-429", max_tokens=64, messages=MSGS)
    assert m.content[0].text == "Hello there!"
    assert time.time() - t0 >= 1.8  # two retries, each after retry-after: 1


@pytest.mark.parametrize("kind", KINDS)
def test_429_raises_rate_limit_error(c, kind):
    with pytest.raises(anthropic.RateLimitError) as ei:
        c.with_options(max_retries=0).messages.create(model=f"{kind}-err-429-always", max_tokens=8, messages=MSGS)
    e = ei.value
    assert e.status_code == 429
    assert e.response.headers.get("retry-after")
    assert e.body["type"] == "error"
    assert e.body["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("kind", ["anthropic", "mock"])
def test_529_raises_overloaded_error(c, kind):
    with pytest.raises(anthropic.OverloadedError) as ei:
        c.with_options(max_retries=0).messages.create(model=f"{kind}-err-529", max_tokens=8, messages=MSGS)
    assert ei.value.status_code == 529
    assert ei.value.body["error"]["type"] == "overloaded_error"


def test_gemini_unavailable_is_service_unavailable(c):
    with pytest.raises(anthropic.ServiceUnavailableError) as ei:
        c.with_options(max_retries=0).messages.create(model="gemini-err-503", max_tokens=8, messages=MSGS)
    assert ei.value.status_code == 503


@pytest.mark.parametrize("kind", KINDS)
def test_400_raises_bad_request_error(c, kind):
    with pytest.raises(anthropic.BadRequestError) as ei:
        c.messages.create(model=f"{kind}-err-400", max_tokens=8, messages=MSGS)
    assert ei.value.status_code == 400
    assert ei.value.body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("kind", KINDS)
def test_500_raises_internal_server_error(c, kind):
    with pytest.raises(anthropic.InternalServerError) as ei:
        c.with_options(max_retries=0).messages.create(model=f"{kind}-err-500", max_tokens=8, messages=MSGS)
    assert ei.value.status_code in (500, 502)
    assert ei.value.body["error"]["type"] == "api_error"


def test_unknown_model_is_not_found(c):
    with pytest.raises(anthropic.NotFoundError) as ei:
        c.messages.create(model="no-such-model", max_tokens=8, messages=MSGS)
    assert ei.value.body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("kind", KINDS)
def test_midstream_error_event_raises(c, kind):
    text = ""
    with pytest.raises(anthropic.APIStatusError) as ei:
        with c.messages.stream(model=f"{kind}-midstream-error", max_tokens=64, messages=MSGS) as s:
            for t in s.text_stream:
                text += t
    assert text == "Hello"
    assert "error" in str(ei.value)


@pytest.mark.parametrize("kind", KINDS)
def test_client_timeout(c, kind):
    with pytest.raises(anthropic.APITimeoutError):
        c.with_options(timeout=1.0, max_retries=0).messages.create(model=f"{kind}-slow", max_tokens=8, messages=MSGS)


@pytest.mark.parametrize("kind", KINDS)
def test_legacy_x_api_key_and_any_version_are_accepted(kind):
    # anthropic 0.x style: x-api-key and 2023-06-01; and a version no one has heard of
    for version in ("2023-06-01", "2099-12-31"):
        req = urllib.request.Request(
            f"{ROOT}/v1/messages",
            data=json.dumps({"model": f"{kind}-ok", "max_tokens": 16, "messages": MSGS}).encode(),
            headers={"x-api-key": "sk-ant-client-test", "anthropic-version": version,
                     "content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=20) as r:
            assert r.status == 200
            assert json.loads(r.read())["content"][0]["text"] == "Hello there!"
    sdk = Anthropic(base_url=ROOT, auth_token="bearer-token-test", max_retries=0,
                    default_headers={"anthropic-version": "2099-12-31"})
    assert sdk.messages.create(model=f"{kind}-ok", max_tokens=8, messages=MSGS).content[0].text == "Hello there!"


def test_unknown_key_is_authentication_error():
    bad = Anthropic(base_url=ROOT, api_key="sk-ant-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as ei:
        bad.messages.create(model="anthropic-ok", max_tokens=8, messages=MSGS)
    assert ei.value.status_code == 401
    assert ei.value.body["error"]["type"] == "authentication_error"


def test_count_tokens_on_an_anthropic_target(c):
    r = c.messages.count_tokens(model="anthropic-ok", messages=MSGS)
    assert r.input_tokens == 11


def test_count_tokens_needs_an_anthropic_target(c):
    with pytest.raises(anthropic.BadRequestError):
        c.messages.count_tokens(model="mock-ok", messages=MSGS)
