"""Issue 13, acceptance 2: the official openai Python SDK's Responses API (`client.responses`)
through the tollgate gateway, against four upstream kinds:

- `native`: a fake OpenAI API that serves `/v1/responses` (the provider has `responses = true`:
  passed through, only the model rewritten);
- `chat`: the same fake seen as a chat-completions-only OpenAI-compatible server (translated);
- `anthropic`: a fake Anthropic Messages API (Responses -> chat -> Messages, and back);
- `gemini`: a fake Gemini API (Responses -> chat -> generateContent, and back).

Every fake answers "Hello there!" (11 input tokens of which 4 cached, 6 output tokens) to model
`{kind}-ok`, and one `get_weather({"location": "Paris"})` call to `{kind}-tool`. Run by
tests/conformance.rs, which sets GATEWAY to the gateway's /v1 URL.
"""
import json
import os

import pytest
from openai import OpenAI

GATEWAY = os.environ["GATEWAY"]
KINDS = ["native", "chat", "anthropic", "gemini"]
TOOLS = [{
    "type": "function",
    "name": "get_weather",
    "description": "Weather at a place",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"]},
}]


@pytest.fixture(scope="module")
def c():
    return OpenAI(base_url=GATEWAY, api_key="sk-client-test", max_retries=0, timeout=20)


@pytest.mark.parametrize("kind", KINDS)
def test_create_text_and_usage(c, kind):
    r = c.responses.create(model=f"{kind}-ok", input="Say hi", instructions="Be brief.")
    assert r.object == "response"
    assert r.status == "completed"
    assert r.output_text == "Hello there!"
    assert r.output[-1].type == "message"
    assert r.output[-1].role == "assistant"
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (11, 6, 17)
    assert r.usage.input_tokens_details.cached_tokens == 4


@pytest.mark.parametrize("kind", KINDS)
def test_create_stream_events(c, kind):
    events = list(c.responses.create(model=f"{kind}-ok", input="Say hi", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello there!"
    assert "response.output_item.added" in types and "response.output_item.done" in types
    assert "response.content_part.added" in types and "response.output_text.done" in types
    final = events[-1].response
    assert final.output_text == "Hello there!"
    assert final.usage.input_tokens == 11 and final.usage.output_tokens == 6


@pytest.mark.parametrize("kind", KINDS)
def test_stream_helper_final_response(c, kind):
    deltas = []
    with c.responses.stream(model=f"{kind}-ok", input="Say hi") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == "Hello there!"
    assert final.output_text == "Hello there!"
    assert final.status == "completed"


@pytest.mark.parametrize("kind", KINDS)
def test_function_calling_two_turns_with_explicit_items(c, kind):
    question = {"role": "user", "content": "What is the weather in Paris?"}
    r1 = c.responses.create(model=f"{kind}-tool", input=[question], tools=TOOLS)
    calls = [o for o in r1.output if o.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"location": "Paris"}
    assert call.call_id
    r2 = c.responses.create(
        model=f"{kind}-ok",
        tools=TOOLS,
        input=[
            question,
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert r2.status == "completed"
    assert r2.output_text


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_function_call(c, kind):
    with c.responses.stream(model=f"{kind}-tool", input="Weather in Paris?", tools=TOOLS) as s:
        done = [e for e in s if e.type == "response.function_call_arguments.done"]
        final = s.get_final_response()
    assert len(done) == 1
    assert json.loads(done[0].arguments) == {"location": "Paris"}
    call = [o for o in final.output if o.type == "function_call"][0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"location": "Paris"}


@pytest.mark.parametrize("kind", ["chat", "anthropic", "gemini"])
def test_built_in_tool_on_a_translated_target_is_a_400_naming_it(c, kind):
    import openai
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model=f"{kind}-ok", input="x", tools=[{"type": "web_search"}])
    assert e.value.param == "tools[0]"


@pytest.mark.parametrize("kind", ["chat", "anthropic", "gemini"])
def test_previous_response_id_retrieve_and_delete(c, kind):
    import time
    import openai
    r1 = c.responses.create(model=f"{kind}-tool", input="What is the weather in Paris?",
                            tools=TOOLS)
    call = [o for o in r1.output if o.type == "function_call"][0]
    # the store is written as the answer ends: wait until it can be read back
    for _ in range(100):
        try:
            got = c.responses.retrieve(r1.id)
            break
        except openai.NotFoundError:
            time.sleep(0.02)
    assert got.id == r1.id
    assert [o.type for o in got.output] == [o.type for o in r1.output]
    r2 = c.responses.create(
        model=f"{kind}-ok", previous_response_id=r1.id, tools=TOOLS,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert r2.status == "completed"
    assert r2.previous_response_id == r1.id
    assert r2.output_text
    deleted = c.responses.delete(r1.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r1.id)


def _stored(c, rid):
    """The response `rid` once the gateway's store has it (written as the answer ends)."""
    import time
    import openai
    for _ in range(100):
        try:
            return c.responses.retrieve(rid)
        except openai.NotFoundError:
            time.sleep(0.02)
    raise AssertionError(f"{rid} was never stored")


@pytest.mark.parametrize("kind", ["chat", "anthropic", "gemini"])
def test_input_items_list_pages_through_the_conversation(c, kind):
    import openai
    r1 = c.responses.create(model=f"{kind}-ok", input="Say hi")
    _stored(c, r1.id)
    r2 = c.responses.create(model=f"{kind}-ok", previous_response_id=r1.id,
                            input=[{"role": "user", "content": "Again?"}])
    _stored(c, r2.id)
    # limit=1: the SDK walks three pages (`after` = the last id of each)
    items = list(c.responses.input_items.list(r2.id, limit=1, order="asc"))
    assert [(i.type, i.role) for i in items] == [
        ("message", "user"), ("message", "assistant"), ("message", "user")]
    assert items[0].content[0].type == "input_text"
    assert items[0].content[0].text == "Say hi"
    assert items[1].id == r1.output[-1].id
    assert items[1].content[0].text == "Hello there!"
    assert items[2].content[0].text == "Again?"
    newest = c.responses.input_items.list(r2.id)
    assert [i.id for i in newest.data] == [i.id for i in reversed(items)]
    assert newest.has_more is False
    with pytest.raises(openai.NotFoundError):
        c.responses.input_items.list("resp_" + "0" * 48)


def test_anthropic_thinking_is_a_reasoning_summary(c):
    args = dict(model="anthropic-ok", input="Say hi", reasoning={"effort": "low"},
                max_output_tokens=2000)
    r = c.responses.create(**args)
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].summary[0].type == "summary_text"
    assert r.output[0].summary[0].text == "Weighing the words."
    assert r.output_text == "Hello there!"
    assert r.usage.output_tokens_details.reasoning_tokens == 3
    with c.responses.stream(**args) as s:
        deltas = [e.delta for e in s if e.type == "response.reasoning_summary_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == "Weighing the words."
    assert final.output[0].summary[0].text == "Weighing the words."
    assert final.output_text == "Hello there!"


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
@pytest.mark.parametrize("stream", [False, True])
def test_tool_loop_with_thinking_sends_the_reasoning_items_back(c, kind, stream):
    """A tool loop with thinking, the output sent back as it came (`input += response.output`):
    the reasoning item's encrypted_content carries Anthropic's thinking blocks or Gemini's
    thought signatures, which the upstream needs; without that item it refuses the turn."""
    import openai
    question = {"role": "user", "content": "What is the weather in Paris?"}
    args = dict(model=f"{kind}-tool", tools=TOOLS, reasoning={"effort": "low"},
                max_output_tokens=2000)
    if stream:
        with c.responses.stream(input=[question], **args) as s:
            r1 = s.get_final_response()
    else:
        r1 = c.responses.create(input=[question], **args)
    assert r1.output[0].type == "reasoning" and r1.output[0].encrypted_content
    call = [o for o in r1.output if o.type == "function_call"][0]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    r2 = c.responses.create(input=[question, *r1.output, result], **args)
    assert r2.output_text == "Hello there!"
    lost = [o for o in r1.output if o.type != "reasoning"]
    with pytest.raises(openai.BadRequestError):
        c.responses.create(input=[question, *lost, result], **args)
