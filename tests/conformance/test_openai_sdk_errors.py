"""Issue 10, acceptance 2: the official openai Python SDK raises the exception class that matches
the upstream's error, with the upstream's code in `e.code`, whichever provider kind answered: an
OpenAI-compatible API (its error object passes through as sent), the Anthropic Messages API or
the Gemini API (mapped so the meaning is kept).

Run by tests/conformance.rs, which starts the fakes of tests/fakes and the gateway with one
single-target public model `{provider}-{case}` per provider (`oai`, `anth`, `gem`) and case, and
sets GATEWAY to the gateway's /v1 URL. `max_retries=0`: each case is one request.
"""
import os

import openai
import pytest
from openai import OpenAI

GATEWAY = os.environ["GATEWAY"]
MSGS = [{"role": "user", "content": "hi"}]

# (case, exception class, code per provider: oai, anth, gem)
CASES = [
    ("case-400", openai.BadRequestError, ("invalid_value", "invalid_request_error", "INVALID_ARGUMENT")),
    ("case-context-length", openai.BadRequestError, ("context_length_exceeded",) * 3),
    ("case-401", openai.AuthenticationError, ("invalid_api_key",) * 3),
    ("case-403", openai.PermissionDeniedError,
     ("unsupported_country_region_territory", "permission_error", "PERMISSION_DENIED")),
    ("case-404", openai.NotFoundError, ("model_not_found",) * 3),
    ("case-429", openai.RateLimitError, ("rate_limit_exceeded",) * 3),
    ("case-quota", openai.RateLimitError, ("insufficient_quota",) * 3),
    ("case-500", openai.InternalServerError, (None, "api_error", "INTERNAL")),
    ("case-503", openai.InternalServerError, ("server_is_overloaded", "api_error", "server_is_overloaded")),
    ("case-529", openai.InternalServerError, (None, "server_is_overloaded", "server_is_overloaded")),
]
PROVIDERS = ["oai", "anth", "gem"]


@pytest.fixture(scope="module")
def c():
    return OpenAI(base_url=GATEWAY, api_key="sk-client-test", max_retries=0, timeout=20)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case,exc,codes", CASES)
def test_exception_class_and_code(c, provider, case, exc, codes):
    with pytest.raises(exc) as ei:
        c.chat.completions.create(model=f"{provider}-{case}", messages=MSGS)
    e = ei.value
    assert e.code == codes[PROVIDERS.index(provider)], e.body
    assert e.body["origin"] == "upstream"
    assert e.body["provider"] == provider
    assert e.message
    if e.status_code in (429, 503):
        assert e.response.headers.get("retry-after")
    if case == "case-429":
        assert e.response.headers["retry-after"] == "1"


def test_openai_param_and_type_pass_through(c):
    with pytest.raises(openai.BadRequestError) as ei:
        c.chat.completions.create(model="oai-case-400", messages=MSGS)
    assert ei.value.param == "temperature"
    assert ei.value.type == "invalid_request_error"
    with pytest.raises(openai.RateLimitError) as ei:
        c.chat.completions.create(model="oai-case-quota", messages=MSGS)
    assert ei.value.type == "insufficient_quota"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_context_length_is_recognisable_when_streaming(c, provider):
    with pytest.raises(openai.BadRequestError) as ei:
        for _ in c.chat.completions.create(
            model=f"{provider}-case-context-length", messages=MSGS, stream=True
        ):
            pass
    assert ei.value.code == "context_length_exceeded"
