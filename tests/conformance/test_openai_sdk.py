"""The official openai Python SDK against the tollgate gateway in front of the mock provider.

Run by tests/conformance.rs, which starts the gateway with tests/conformance/gateway.toml and
sets GATEWAY to its /v1 base URL.
"""
import base64
import json
import os
import struct
import time

import openai
import pytest
from openai import OpenAI

GATEWAY = os.environ["GATEWAY"]
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def c():
    return OpenAI(base_url=GATEWAY, api_key="sk-test", max_retries=2, timeout=20)


def test_nonstream_shape_and_usage(c):
    r = c.chat.completions.create(model="ok", messages=MSGS)
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == "Hello there!"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 6, 17)
    assert r.usage.prompt_tokens_details.cached_tokens == 4
    assert r._request_id


def test_stream_text_without_usage_chunk(c):
    s = c.chat.completions.create(model="ok", messages=MSGS, stream=True)
    text, finish, n_usage = "", None, 0
    for ch in s:
        assert ch.object == "chat.completion.chunk"
        n_usage += ch.usage is not None
        if ch.choices:
            text += ch.choices[0].delta.content or ""
            finish = ch.choices[0].finish_reason or finish
    assert text == "Hello there!"
    assert finish == "stop"
    # the gateway asked upstream for usage, but this client did not: no usage chunk reaches it
    assert n_usage == 0


def test_stream_usage_chunk(c):
    s = c.chat.completions.create(
        model="ok", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    n_usage, last, ids = 0, None, set()
    for ch in s:
        last = ch
        ids.add(ch.id)
        n_usage += ch.usage is not None
    assert n_usage == 1
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (11, 6, 17)
    assert len(ids) == 1


def test_stream_tool_call_deltas(c):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with c.chat.completions.stream(model="tool", messages=MSGS, tools=tools) as st:
        for _ in st:
            pass
        final = st.get_final_completion()
    tc = final.choices[0].message.tool_calls[0]
    assert tc.function.name == "get_weather"
    assert json.loads(tc.function.arguments) == {"location": "Paris"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_429_retry_after_is_honoured(c):
    t0 = time.time()
    r = c.chat.completions.create(model="err-429", messages=MSGS)
    assert r.choices[0].message.content == "Hello there!"
    assert time.time() - t0 >= 1.8  # two retries, each after retry-after: 1


def test_429_raises_rate_limit_error(c):
    with pytest.raises(openai.RateLimitError) as ei:
        c.with_options(max_retries=0).chat.completions.create(model="err-429-always", messages=MSGS)
    e = ei.value
    assert e.status_code == 429
    assert e.code == "rate_limit_exceeded"
    assert e.response.headers.get("retry-after")
    assert e.request_id


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_5xx_raise_the_matching_error(c, code):
    with pytest.raises(openai.InternalServerError) as ei:
        c.with_options(max_retries=0).chat.completions.create(model=f"err-{code}", messages=MSGS)
    assert ei.value.status_code == code
    assert ei.value.body["origin"] == "upstream"


def test_400_is_not_retried(c):
    with pytest.raises(openai.BadRequestError) as ei:
        c.chat.completions.create(model="err-400", messages=MSGS)
    assert ei.value.status_code == 400
    attempts = ei.value.response.headers.get("x-tollgate-attempts", "")
    assert attempts.count(";") == 0 and "/400/" in attempts, attempts


def test_unknown_model_is_404(c):
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=MSGS)


def test_client_timeout(c):
    with pytest.raises(openai.APITimeoutError):
        c.with_options(timeout=1.0, max_retries=0).chat.completions.create(model="slow", messages=MSGS)


def test_midstream_error_raises_api_error(c):
    s = c.chat.completions.create(model="midstream-error", messages=MSGS, stream=True)
    with pytest.raises(openai.APIError) as ei:
        for _ in s:
            pass
    assert ei.value.message


def test_models_list(c):
    ids = {m.id for m in c.models.list().data}
    assert {"ok", "tool", "err-429"} <= ids


def test_embeddings_base64_default(c):
    # The SDK asks for encoding_format=base64 by default and decodes it itself.
    e = c.embeddings.create(model="ok", input=["a", "b"])
    assert len(e.data) == 2
    assert len(e.data[0].embedding) > 0 and all(isinstance(x, float) for x in e.data[0].embedding)
    assert e.usage.prompt_tokens > 0


def test_embeddings_float_matches_base64(c):
    f = c.embeddings.create(model="ok", input="a", encoding_format="float")
    raw = c.with_raw_response.embeddings.create(model="ok", input="a", encoding_format="base64")
    body = json.loads(raw.text)
    b = base64.b64decode(body["data"][0]["embedding"])
    floats = list(struct.unpack("<%df" % (len(b) // 4), b))
    assert floats == pytest.approx(f.data[0].embedding)
