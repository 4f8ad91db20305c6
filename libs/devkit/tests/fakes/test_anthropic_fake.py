"""The Anthropic fake, driven by Anthropic's official client over HTTP: the Messages API
plain and streamed (its event sequence, as the client accumulates it), tool use, the
prompt cache's usage, the model list, and Anthropic's errors."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic import AsyncAnthropic

from devkit.fakes import FaultControl, create_anthropic_app
from devkit.testing import LiveServer

from .test_faults_and_run import served_fake  # noqa: F401 (a fixture)

KEY = "sk-ant-test-0123456789"
MODEL = "claude-sonnet-4-5-20250929"
ROUTE = "/v1/messages"
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
async def fake(control: FaultControl) -> AsyncIterator[str]:
    async with LiveServer(create_anthropic_app(control, api_key=KEY)) as server:
        yield server.url


@pytest.fixture
async def client(fake: str) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(base_url=fake, api_key=KEY, max_retries=0) as sdk:
        yield sdk


def user(text: str) -> Any:
    return {"role": "user", "content": text}


async def test_a_message_plain_and_streamed_is_the_same(client: AsyncAnthropic) -> None:
    plain = await client.messages.create(model=MODEL, max_tokens=100, system="be brief",
                                         messages=[user("hello there")])  # fmt: skip
    async with client.messages.stream(
        model=MODEL, max_tokens=100, system="be brief", messages=[user("hello there")]
    ) as stream:
        events = [event.type async for event in stream]
        streamed = await stream.get_final_message()
    assert plain.content[0].type == "text"
    assert plain.content[0].text == "echo: hello there"
    assert (plain.stop_reason, plain.usage.input_tokens, plain.usage.output_tokens) == (
        "end_turn", 4, 3,
    )  # fmt: skip
    assert [b.model_dump(include={"type", "text"}) for b in streamed.content] == [
        b.model_dump(include={"type", "text"}) for b in plain.content
    ]
    assert streamed.stop_reason == "end_turn"
    assert streamed.usage.output_tokens == plain.usage.output_tokens
    assert streamed.usage.input_tokens == plain.usage.input_tokens
    assert events[0] == "message_start"
    assert "content_block_start" in events
    assert "content_block_stop" in events
    assert events[-2:] == ["message_delta", "message_stop"]


async def test_tool_use_when_the_prompt_asks_and_tool_results_answered(
    client: AsyncAnthropic,
) -> None:
    ask = user('use:get_weather {"city": "Paris"}')
    async with client.messages.stream(
        model=MODEL, max_tokens=100, tools=[WEATHER], messages=[ask]
    ) as stream:
        message = await stream.get_final_message()
    assert message.stop_reason == "tool_use"
    text, call = message.content
    assert text.type == "text"
    assert call.type == "tool_use"
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})

    answer = await client.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER], messages=[
        ask,
        {"role": "assistant", "content": [block.model_dump() for block in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": "18C"}]},
    ])  # fmt: skip
    assert answer.content[0].type == "text"
    assert answer.content[0].text == "result: 18C"


async def test_the_prompt_cache_is_written_then_read(client: AsyncAnthropic) -> None:
    system: Any = [{"type": "text", "text": "shared context " * 5,
                    "cache_control": {"type": "ephemeral"}}]  # fmt: skip
    first = await client.messages.create(model=MODEL, max_tokens=10, system=system,
                                         messages=[user("hi")])  # fmt: skip
    second = await client.messages.create(model=MODEL, max_tokens=10, system=system,
                                          messages=[user("hi")])  # fmt: skip
    assert (first.usage.cache_creation_input_tokens, first.usage.cache_read_input_tokens) == (10, 0)
    assert (second.usage.cache_creation_input_tokens, second.usage.cache_read_input_tokens) == (
        0, 10,
    )  # fmt: skip
    assert first.usage.input_tokens == second.usage.input_tokens == 1


@pytest.mark.parametrize(
    ("messages", "extra", "message"),
    [
        ([{"role": "system", "content": "x"}], {}, 'Unexpected role "system"'),
        ([user("a"), user("b")], {}, "roles must alternate"),
        ([user("a")], {"n": 2}, "n: Extra inputs are not permitted"),
        ([user("a")], {"temperature": 1.5}, "temperature: range: 0..1"),
        ([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                         "content": "x"}]}], {}, "unexpected `tool_use_id`"),
    ],
)  # fmt: skip
async def test_requests_anthropic_refuses_are_refused_as_it_does(
    client: AsyncAnthropic, messages: Any, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(model=MODEL, max_tokens=10, messages=messages,
                                     extra_body=extra)  # fmt: skip
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert message in refused.value.message


async def test_max_tokens_is_required(fake: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{fake}{ROUTE}",
            json={"model": MODEL, "messages": [user("a")]},
            headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        )
    assert response.status_code == 400
    assert response.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "max_tokens: Field required"}}  # fmt: skip


async def test_a_wrong_key_and_injected_faults_are_anthropics_errors(
    fake: str, client: AsyncAnthropic, control: FaultControl
) -> None:
    async with AsyncAnthropic(base_url=fake, api_key="sk-wrong", max_retries=0) as wrong:
        with pytest.raises(anthropic.AuthenticationError) as denied:
            await wrong.messages.create(model=MODEL, max_tokens=10, messages=[user("a")])
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]

    control.fail(ROUTE, status=529)
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        await client.messages.create(model=MODEL, max_tokens=10, messages=[user("a")])
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]

    control.fail(ROUTE, status=429, retry_after=2)
    with pytest.raises(anthropic.RateLimitError) as limited:
        await client.messages.create(model=MODEL, max_tokens=10, messages=[user("a")])
    assert limited.value.response.headers["retry-after"] == "2"


async def test_an_error_event_mid_stream(client: AsyncAnthropic) -> None:
    async def read() -> None:
        async with client.messages.stream(
            model=MODEL, max_tokens=10, messages=[user("error:overloaded")]
        ) as stream:
            async for _ in stream:
                pass

    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        await read()


async def test_models_are_listed_and_retrieved(client: AsyncAnthropic) -> None:
    listed = [model.id async for model in client.models.list()]
    assert listed == [MODEL, "claude-haiku-4-5-20251001"]
    assert (await client.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("claude-9")


@pytest.mark.parametrize("served_fake", ["anthropic"], indirect=True)
async def test_run_serves_the_anthropic_fake(served_fake: str) -> None:  # noqa: F811
    async with AsyncAnthropic(base_url=served_fake, api_key="k", max_retries=0) as sdk:
        started = time.monotonic()
        reply = await sdk.messages.create(model=MODEL, max_tokens=10, messages=[user("hi")])
        elapsed = time.monotonic() - started
    assert reply.content[0].type == "text"
    assert reply.content[0].text == "echo: hi"
    assert elapsed >= 0.1  # --delay-ms 100
