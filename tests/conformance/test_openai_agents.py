"""Issue 13, acceptance 3: the OpenAI Agents SDK (`openai-agents`, pinned) runs an agent with one
function tool through the tollgate gateway and completes its tool loop: the model (a scripted
fake) calls `get_weather`, the SDK runs the tool and sends its output back, and the model's final
answer ends the run. The agent uses the Responses API through an AsyncOpenAI client whose
base_url is the gateway; tracing is off. Run against a Responses-capable target (`native`,
passed through) and a chat-only one (`chat`, translated).
"""
import asyncio
import os

import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

GATEWAY = os.environ["GATEWAY"]
set_tracing_disabled(True)


def make_agent(kind, calls):
    @function_tool
    def get_weather(location: str) -> str:
        """Get the current weather at a location."""
        calls.append(location)
        return f"sunny in {location}"

    client = AsyncOpenAI(base_url=GATEWAY, api_key="sk-client-test", max_retries=0, timeout=20)
    return Agent(
        name="weather",
        instructions="Answer with the weather tool.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=f"{kind}-tool", openai_client=client),
    )


@pytest.mark.parametrize("kind", ["native", "chat"])
def test_agent_completes_its_tool_loop(kind):
    calls = []
    result = Runner.run_sync(make_agent(kind, calls), "What is the weather in Paris?")
    assert calls == ["Paris"]
    assert result.final_output == "The weather in Paris is sunny."


@pytest.mark.parametrize("kind", ["native", "chat"])
def test_streamed_agent_completes_its_tool_loop(kind):
    calls = []

    async def run():
        result = Runner.run_streamed(make_agent(kind, calls), "What is the weather in Paris?")
        async for _ in result.stream_events():
            pass
        return result

    result = asyncio.run(run())
    assert calls == ["Paris"]
    assert result.final_output == "The weather in Paris is sunny."
