"""Chat requests are checked against OpenAI's schema before any provider is called (issue
19): a violation is a 400 problem+json naming the field, the provider is never called, and
fields we do not check still reach the provider as sent."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from .conftest import Inference, Upstream, member
from .test_chat import CHAT, ROUTE

USER = {"role": "user", "content": "hello there"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
ASKED = {"role": "assistant", "content": None, "tool_calls": [CALL]}
ANSWER = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


def chat(messages: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"model": "openai/gpt-4o-mini", "messages": messages or [USER], **extra}


BAD: list[tuple[str, dict[str, Any], str]] = [
    # (what, body, the field the problem names)
    ("an unknown role", chat([{"role": "wizard", "content": "hi"}]), "messages.0"),
    ("a number as content", chat([{"role": "user", "content": 42}]), "messages.0.user.content"),
    ("no content", chat([{"role": "user"}]), "messages.0.user.content"),
    ("an empty list of parts", chat([{"role": "user", "content": []}]), "messages.0.user.content"),
    ("an unknown part type",
     chat([{"role": "user", "content": [{"type": "video", "video": "x"}]}]),
     "messages.0.user.content"),
    ("an image part without a url",
     chat([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages.0.user.content"),
    ("an image in a system message",
     chat([{"role": "system", "content": [{"type": "image_url",
                                           "image_url": {"url": "https://x/y.png"}}]}, USER]),
     "messages.0.system.content"),
    ("an assistant saying nothing", chat([USER, {"role": "assistant"}]), "messages.1.assistant"),
    ("a tool message without tool_call_id",
     chat([USER, ASKED, {"role": "tool", "content": "sunny"}]), "messages.2.tool.tool_call_id"),
    ("a tool call of another type",
     chat([USER, {**ASKED, "tool_calls": [{**CALL, "type": "code"}]}, ANSWER]),
     "messages.1.assistant.tool_calls.0.type"),
    ("a tool answer to no call", chat([USER, ANSWER]), "messages[1].tool_call_id"),
    ("a tool answer to another call",
     chat([USER, ASKED, {**ANSWER, "tool_call_id": "call_9"}]), "messages[2].tool_call_id"),
    ("a call never answered", chat([USER, ASKED, USER]), "messages[1].tool_calls"),
    ("a call never answered, at the end", chat([USER, ASKED]), "messages[1].tool_calls"),
    ("n of 0", chat(n=0), "n"),
    ("n of 129", chat(n=129), "n"),
    ("temperature over 2", chat(temperature=2.5), "temperature"),
    ("temperature below 0", chat(temperature=-0.1), "temperature"),
    ("top_p over 1", chat(top_p=1.5), "top_p"),
    ("presence_penalty below -2", chat(presence_penalty=-3), "presence_penalty"),
    ("frequency_penalty over 2", chat(frequency_penalty=2.1), "frequency_penalty"),
    ("max_tokens of 0", chat(max_tokens=0), "max_tokens"),
    ("top_logprobs over 20", chat(logprobs=True, top_logprobs=21), "top_logprobs"),
    ("five stop sequences", chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("a logit bias past 100", chat(logit_bias={"50256": 101}), "logit_bias.50256"),
    ("an unknown response format", chat(response_format={"type": "xml"}),
     "response_format.type"),
    ("a json_schema format without its schema", chat(response_format={"type": "json_schema"}),
     "response_format"),
    ("a tool name with a space",
     chat(tools=[{"type": "function", "function": {"name": "get weather"}}]),
     "tools.0.function.name"),
    ("an unknown tool_choice", chat(tools=[TOOL], tool_choice="always"), "tool_choice"),
    ("no messages", chat([]) | {"messages": []}, "messages"),
    ("messages as text", chat() | {"messages": "hi"}, "messages"),
    ("no model", {"messages": [USER]}, "model"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "body", "field"), BAD, ids=[b[0] for b in BAD])
async def test_a_violation_is_a_400_naming_the_field_and_calls_no_provider(
    inference: Inference, openai_upstream: Upstream, what: str, body: dict[str, Any], field: str
) -> None:
    await inference.credential(openai_upstream.url)
    response = await inference.call("POST", CHAT, json=body)
    assert response.status_code == 400, (what, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:llm-platform:problem:validation"
    assert problem["detail"].startswith(field), (what, problem["detail"])
    assert problem["errors"], what
    assert openai_upstream.control.requests_to(ROUTE) == []


GOOD: list[tuple[str, dict[str, Any]]] = [
    ("a conversation with tools", chat(
        [{"role": "developer", "content": "be brief"}, USER, ASKED, ANSWER,
         {"role": "assistant", "content": "It is sunny."}, USER],
        tools=[TOOL], tool_choice={"type": "function", "function": {"name": "weather"}},
        parallel_tool_calls=False,
    )),
    ("two calls answered in any order", chat(
        [USER, {**ASKED, "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
         {**ANSWER, "tool_call_id": "call_2"}, ANSWER],
    )),
    ("every part type", chat([{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
    ]}])),
    ("the edges of every range", chat(
        n=1, temperature=2, top_p=0, presence_penalty=-2, frequency_penalty=2, max_tokens=1,
        logprobs=True, top_logprobs=20, stop=["a", "b", "c", "d"], logit_bias={"1": -100},
        seed=-5, response_format={"type": "json_schema",
                                  "json_schema": {"name": "out", "schema": {"type": "object"}}},
    )),
    ("a refusal and a name", chat(
        [{"role": "user", "content": "hi", "name": "ann"},
         {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}, USER],
    )),
    ("nulls where OpenAI takes them", chat(temperature=None, stop=None, tools=None)),
]  # fmt: skip


@pytest.mark.parametrize(("what", "body"), GOOD, ids=[g[0] for g in GOOD])
async def test_what_openai_accepts_is_accepted(
    inference: Inference, openai_upstream: Upstream, what: str, body: dict[str, Any]
) -> None:
    await inference.credential(openai_upstream.url)
    response = await inference.call("POST", CHAT, json=body)
    assert response.status_code == 200, (what, response.text)


async def test_fields_we_do_not_check_reach_the_provider_as_sent(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    message = {"role": "user", "content": "hello there", "x_trace": {"turn": 3}}
    body = chat([message], top_k=40, metadata={"team": "a"}, stop=None)
    assert (await inference.call("POST", CHAT, json=body)).status_code == 200
    sent = openai_upstream.control.requests_to(ROUTE)[0].json
    assert sent["top_k"] == 40
    assert sent["metadata"] == {"team": "a"}
    assert sent["messages"] == [message]
    assert "stop" not in sent  # a null is left out, as before


async def test_the_openai_sdk_raises_bad_request(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    async with inference.sdk(member()) as sdk:
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.chat.completions.create(
                model="openai/gpt-4o-mini",
                messages=[{"role": "wizard", "content": "hi"}],  # type: ignore[misc,list-item]
            )
        assert refused.value.status_code == 400
        with pytest.raises(openai.BadRequestError):
            await sdk.embeddings.create(model="openai/text-embedding-3-small", input=[])
    assert openai_upstream.control.requests_to(ROUTE) == []
