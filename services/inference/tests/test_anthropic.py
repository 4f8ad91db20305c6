"""The native Anthropic provider (issue 19): the official openai client calls inference,
which speaks Anthropic's Messages API to a local Anthropic-protocol server; requests and
answers are translated both ways, plain and streamed, tools and errors included."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from starlette.responses import PlainTextResponse, Response

from devkit.fakes.anthropic_server import create_anthropic_app
from devkit.fakes.faults import FaultControl
from devkit.testing import LiveServer
from inference.pricing import CATALOG, Price

from .conftest import Inference, MakeInference, Upstream, admin, per_million
from .test_ssrf import POLICY, REDIRECT, SECRET, assert_names_the_policy, serve

KEY = "sk-ant-upstream-secret-0123456789"
MODEL = "anthropic/claude-sonnet-4-5-20250929"
ROUTE = "/v1/messages"  # on the upstream
CHAT = "/v1/chat/completions"
PRICE = Price(input=3.0, output=15.0)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
PIXEL = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture
async def anthropic_upstream() -> AsyncIterator[Upstream]:
    control = FaultControl()
    async with LiveServer(create_anthropic_app(control, api_key=KEY)) as server:
        yield Upstream(server.url, control)


@pytest.fixture
async def claude(inference: Inference, anthropic_upstream: Upstream) -> Upstream:
    """The member's own anthropic credential, to the local server."""
    await inference.credential(anthropic_upstream.url, provider="anthropic", api_key=KEY)
    return anthropic_upstream


def sent(upstream: Upstream, index: int = -1) -> dict[str, Any]:
    """The Messages API body the upstream received."""
    body: dict[str, Any] = upstream.control.requests_to(ROUTE)[index].json
    return body


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def sse(text: str) -> list[Any]:
    return [
        line[6:] if line == "data: [DONE]" else json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


# ---------------------------------------------------------------- plain and streamed


async def test_plain_chat_reaches_the_messages_api_and_answers_in_openai_shape(
    inference: Inference, claude: Upstream
) -> None:
    async with inference.sdk() as sdk:
        answer = await sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": "Be brief."}, user("hello there")],
        )
    assert answer.object == "chat.completion"
    assert answer.model == MODEL
    choice = answer.choices[0]
    assert (choice.message.role, choice.message.content) == ("assistant", "echo: hello there")
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 3)
    request = claude.control.requests_to(ROUTE)[0]
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert request.json == {
        "model": "claude-sonnet-4-5-20250929",
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        "max_tokens": 4096,  # Anthropic requires one
    }


async def test_system_prompts_and_turns_are_translated_as_anthropic_requires(
    inference: Inference, claude: Upstream
) -> None:
    async with inference.sdk() as sdk:
        answer = await sdk.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                user("first"),
                {"role": "user", "content": [{"type": "text", "text": "second"}]},
                {"role": "assistant", "content": "noted"},
                user("third"),
            ],
            max_completion_tokens=50,
            temperature=0.5,
            top_p=0.9,
            stop=["STOP"],
            user="member-7",
        )
    assert answer.choices[0].message.content == "echo: third"
    body = sent(claude)
    assert body["system"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Answer in French."},
    ]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "first"},
                                     {"type": "text", "text": "second"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "noted"}]},
        {"role": "user", "content": [{"type": "text", "text": "third"}]},
    ]  # fmt: skip
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (50, 0.5, 0.9)
    assert body["stop_sequences"] == ["STOP"]
    assert body["metadata"] == {"user_id": "member-7"}


async def test_a_stream_arrives_as_openai_chunks_with_usage_last_and_costs_as_the_plain_call(
    make_inference: MakeInference, anthropic_upstream: Upstream
) -> None:
    async with make_inference(prices={MODEL: PRICE}) as inference:
        await inference.credential(anthropic_upstream.url, provider="anthropic", api_key=KEY)
        async with inference.sdk() as sdk:
            plain = await sdk.chat.completions.create(model=MODEL, messages=[user("words:12")])
            stream = await sdk.chat.completions.create(
                model=MODEL,
                messages=[user("words:12")],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
        events = await inference.events()
    assert sent(anthropic_upstream)["stream"] is True
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert finishes.count("stop") == 1
    *_, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert plain.usage is not None
    assert last.usage.prompt_tokens == plain.usage.prompt_tokens
    assert last.usage.completion_tokens == plain.usage.completion_tokens == 12

    first, second = events
    assert (first.stream, second.stream) == (False, True)
    assert (first.provider, first.model) == ("anthropic", MODEL)
    assert (first.prompt_tokens, first.completion_tokens) == (
        second.prompt_tokens,
        second.completion_tokens,
    )
    assert first.cost_usd == second.cost_usd is not None
    assert (first.usage_estimated, second.usage_estimated) == (False, False)


async def test_a_stream_without_include_usage_has_no_usage_chunk(
    inference: Inference, claude: Upstream
) -> None:
    response = await inference.call("POST", CHAT, json={"model": MODEL, "stream": True,
                                                          "messages": [user("hi")]})  # fmt: skip
    events = sse(response.text)
    assert events[-1] == "[DONE]"
    assert all(e["choices"] and e.get("usage") is None for e in events[:-1])
    (event,) = await inference.events()
    assert (event.prompt_tokens, event.completion_tokens) == (1, 2)
    assert not event.usage_estimated


# ---------------------------------------------------------------- tools


async def test_a_tool_call_arrives_in_openai_shape_and_its_result_goes_back(
    inference: Inference, claude: Upstream
) -> None:
    messages: list[Any] = [user('use:get_weather {"city": "Paris"}')]
    async with inference.sdk() as sdk:
        answer = await sdk.chat.completions.create(model=MODEL, messages=messages,
                                                   tools=[WEATHER])  # fmt: skip
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "I will call get_weather."
        (call,) = choice.message.tool_calls or []
        assert call.type == "function"
        assert call.id.startswith("toolu_")
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}

        messages += [
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "18C sunny"},
        ]
        final = await sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert final.choices[0].message.content == "result: 18C sunny"
    assert final.choices[0].finish_reason == "stop"
    first, second = sent(claude, 0), sent(claude, 1)
    assert first["tools"] == [{
        "name": "get_weather", "description": "The weather in a city.",
        "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
    }]  # fmt: skip
    assert "tool_choice" not in first  # OpenAI's default, auto, is Anthropic's too
    assert second["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "I will call get_weather."},
            {"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "18C sunny"},
        ]},
    ]  # fmt: skip


async def test_parallel_tool_calls_stream_as_openai_tool_call_deltas(
    inference: Inference, claude: Upstream
) -> None:
    prompt = 'use:get_weather {"city": "Paris"}\nuse:get_weather {"city": "Rome"}'
    async with inference.sdk() as sdk:
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=[user(prompt)], tools=[WEATHER], stream=True
        )
        chunks = [chunk async for chunk in stream]
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            assert delta.function is not None
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
    assert sorted(calls) == [0, 1]  # OpenAI's indices, not Anthropic's block indices (1, 2)
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [{"city": "Paris"},
                                                                   {"city": "Rome"}]  # fmt: skip
    assert all(c["name"] == "get_weather" and c["id"].startswith("toolu_") for c in calls.values())
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None,
         {"type": "tool", "name": "get_weather"}),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)  # fmt: skip
async def test_tool_choice_is_translated(
    inference: Inference, claude: Upstream, choice: Any, parallel: bool | None, expected: Any
) -> None:
    request = {"model": MODEL, "messages": [user("what now?")], "tools": [WEATHER],
               "tool_choice": choice, "parallel_tool_calls": parallel}  # fmt: skip
    response = await inference.call("POST", CHAT, json=request)
    assert response.status_code == 200, response.text
    assert sent(claude)["tool_choice"] == expected
    calls = response.json()["choices"][0]["message"].get("tool_calls")
    assert bool(calls) == (expected["type"] in ("any", "tool"))


# ---------------------------------------------------------------- images, stops, cache


async def test_images_go_as_base64_and_url_sources(inference: Inference, claude: Upstream) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    response = await inference.call("POST", CHAT, json={
        "model": MODEL, "messages": [{"role": "user", "content": content}]})  # fmt: skip
    assert response.status_code == 200, response.text
    assert sent(claude)["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


async def test_an_image_anthropic_cannot_take_is_a_400_before_any_call(
    inference: Inference, claude: Upstream
) -> None:
    content = [{"type": "image_url", "image_url": {"url": "data:image/svg+xml,%3Csvg%3E"}}]
    response = await inference.call("POST", CHAT, json={
        "model": MODEL, "messages": [{"role": "user", "content": content}]})  # fmt: skip
    assert response.status_code == 400
    assert "base64" in response.json()["detail"]
    assert claude.control.requests_to(ROUTE) == []


async def test_openai_only_fields_are_not_sent_and_anthropics_own_are(
    inference: Inference, claude: Upstream
) -> None:
    pdf = "data:application/pdf;base64,JVBERi0xLjQK"
    content = [{"type": "text", "text": "Sum it up."},
               {"type": "file", "file": {"filename": "a.pdf", "file_data": pdf}}]  # fmt: skip
    request = {
        "model": MODEL, "messages": [{"role": "user", "content": content}], "top_k": 5,
        "seed": 7, "presence_penalty": 0.5, "logprobs": False, "metadata": {"tag": "x"},
        "response_format": {"type": "json_object"},
    }  # fmt: skip
    response = await inference.call("POST", CHAT, json=request)
    assert response.status_code == 200, response.text  # the fake refuses unknown fields
    body = sent(claude)
    assert body["top_k"] == 5
    assert not {"seed", "presence_penalty", "logprobs", "response_format", "metadata"} & set(body)
    assert body["messages"][0]["content"][1] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"},
    }


@pytest.mark.parametrize(
    ("extra", "content", "finish_reason"),
    [
        ({"max_tokens": 3}, "lorem ipsum dolor", "length"),
        ({"stop": "dolor"}, "lorem ipsum", "stop"),
        ({}, "lorem ipsum dolor sit", "stop"),
    ],
)
async def test_stop_reasons(
    inference: Inference, claude: Upstream, extra: dict[str, Any], content: str,
    finish_reason: str,
) -> None:  # fmt: skip
    for stream in (False, True):
        request = {"model": MODEL, "messages": [user("words:4")], "stream": stream, **extra}
        response = await inference.call("POST", CHAT, json=request)
        if stream:
            chunks = [e for e in sse(response.text)[:-1] if e["choices"]]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            assert (text, chunks[-1]["choices"][0]["finish_reason"]) == (content, finish_reason)
        else:
            choice = response.json()["choices"][0]
            assert (choice["message"]["content"], choice["finish_reason"]) == (
                content,
                finish_reason,
            )


async def test_cache_tokens_are_prompt_tokens_and_are_billed_at_the_cache_prices(
    inference: Inference, claude: Upstream
) -> None:
    system = [{"type": "text", "text": "a long shared context " * 10,
               "cache_control": {"type": "ephemeral"}}]  # fmt: skip
    usages = []
    for stream in (False, True):
        request = {"model": MODEL, "stream": stream, "stream_options": {"include_usage": True},
                   "messages": [{"role": "system", "content": system}, user("hi")]}  # fmt: skip
        if not stream:
            del request["stream_options"]
        response = await inference.call("POST", CHAT, json=request)
        usages.append(sse(response.text)[-2]["usage"] if stream else response.json()["usage"])
    # The first call writes the cache (40 tokens), the second reads them.
    assert sent(claude, 0)["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert usages[0]["prompt_tokens"] == usages[1]["prompt_tokens"] == 41
    assert usages[0]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usages[1]["prompt_tokens_details"] == {"cached_tokens": 40}
    assert (usages[0]["cache_creation_input_tokens"], usages[1]["cache_read_input_tokens"]) == (
        40,
        40,
    )
    first, second = await inference.events()
    assert first.prompt_tokens == second.prompt_tokens == 41
    assert (first.cached_prompt_tokens, second.cached_prompt_tokens) == (0, 40)
    # The catalog's price of the model: 5-minute cache writes and cache reads apart.
    price = CATALOG.models[MODEL]
    assert (price.cache_write, price.cached_input) == (3.75, 0.3)
    completion = usages[0]["completion_tokens"]
    assert first.cost_usd == per_million(1 * 3.0 + 40 * 3.75 + completion * 15.0)
    assert second.cost_usd == per_million(1 * 3.0 + 40 * 0.3 + completion * 15.0)


# ---------------------------------------------------------------- errors and retries


async def test_a_wrong_key_is_a_provider_auth_problem(
    inference: Inference, anthropic_upstream: Upstream
) -> None:
    await inference.credential(anthropic_upstream.url, provider="anthropic", api_key="sk-wrong")
    response = await inference.call("POST", CHAT, json={"model": MODEL, "messages": [user("hi")]})
    assert response.status_code == 502
    assert response.json()["type"].endswith(":provider-auth")
    assert "invalid x-api-key" in response.json()["detail"]
    assert len(anthropic_upstream.control.requests_to(ROUTE)) == 1  # not retried


async def test_anthropics_400_is_not_retried_and_names_its_message(
    inference: Inference, claude: Upstream
) -> None:
    response = await inference.call(
        "POST", CHAT, json={"model": MODEL, "messages": [user("hi")], "temperature": 1.5}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "temperature: range: 0..1" in response.json()["detail"]
    assert len(claude.control.requests_to(ROUTE)) == 1


@pytest.mark.parametrize(
    "inject",
    [
        pytest.param(lambda c: c.fail(ROUTE, status=529), id="529-overloaded"),
        pytest.param(lambda c: c.fail(ROUTE, status=429, retry_after=0.05), id="429"),
        pytest.param(lambda c: c.fail(ROUTE, status=500), id="500"),
        pytest.param(lambda c: c.malformed(ROUTE), id="malformed"),
        pytest.param(lambda c: c.cut_stream(ROUTE, after_chunks=0), id="cut-before-any-event"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_transient_fault_is_retried_away(
    inference: Inference, claude: Upstream, inject: Any, stream: bool
) -> None:
    inject(claude.control)
    request = {"model": MODEL, "messages": [user("hi")], "stream": stream}
    response = await inference.call("POST", CHAT, json=request)
    assert response.status_code == 200, response.text
    if stream:
        assert sse(response.text)[-1] == "[DONE]"
        assert not [e for e in sse(response.text)[:-1] if "error" in e]
    assert len(claude.control.requests_to(ROUTE)) == 2
    (event,) = await inference.events()
    assert (event.status, event.attempts) == ("ok", 2)


async def test_overloaded_every_time_is_an_upstream_failure_after_the_retries(
    inference: Inference, claude: Upstream
) -> None:
    claude.control.fail(ROUTE, status=529, times=3)
    response = await inference.call("POST", CHAT, json={"model": MODEL, "messages": [user("hi")]})
    assert response.status_code == 502
    assert response.json()["type"].endswith(":upstream-failed")
    assert "Overloaded" in response.json()["detail"]
    assert len(claude.control.requests_to(ROUTE)) == 3
    (event,) = await inference.events()
    assert (event.status, event.error_type) == ("error", "http_529")


async def test_an_alias_falls_back_from_an_overloaded_anthropic_to_openai(
    inference: Inference, anthropic_upstream: Upstream, openai_upstream: Upstream
) -> None:
    claude = await inference.credential(anthropic_upstream.url, provider="anthropic",
                                        api_key=KEY, shared=True, name="claude")  # fmt: skip
    gpt = await inference.credential(openai_upstream.url, shared=True, name="gpt")
    targets = [{"model": MODEL, "credential_id": claude["id"]},
               {"model": "openai/gpt-4o-mini", "credential_id": gpt["id"]}]  # fmt: skip
    saved = await inference.call("POST", "/v1/providers/aliases", identity=admin(),
                                 json={"alias": "smart", "shared": True,
                                       "targets": targets})  # fmt: skip
    assert saved.status_code == 201, saved.text
    anthropic_upstream.control.fail(ROUTE, status=529, times=3)
    response = await inference.call("POST", CHAT, json={"model": "smart",
                                                        "messages": [user("hi")]})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert len(anthropic_upstream.control.requests_to(ROUTE)) == 3
    (event,) = await inference.events()
    assert (event.model, event.fallback, event.attempts) == ("openai/gpt-4o-mini", True, 4)


async def test_an_error_event_mid_stream_ends_the_stream_with_an_error_event(
    inference: Inference, claude: Upstream
) -> None:
    request = {"model": MODEL, "messages": [user("error:overloaded")], "stream": True}
    response = await inference.call("POST", CHAT, json=request)
    events = sse(response.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "http_529"
    assert "Overloaded" in events[-2]["error"]["message"]
    assert len(claude.control.requests_to(ROUTE)) == 1  # the stream was the client's


async def test_a_stream_cut_after_its_first_events_ends_with_an_error_event(
    inference: Inference, claude: Upstream
) -> None:
    claude.control.cut_stream(ROUTE, after_chunks=3)
    request = {"model": MODEL, "messages": [user("words:20")], "stream": True}
    response = await inference.call("POST", CHAT, json=request)
    events = sse(response.text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2]["error"]["type"] == "upstream_error"
    assert events[-1] == "[DONE]"
    assert len(claude.control.requests_to(ROUTE)) == 1
    (event,) = await inference.events()
    assert event.status == "error"


async def test_requests_anthropic_cannot_answer_are_400_before_any_call(
    inference: Inference, claude: Upstream
) -> None:
    several = await inference.call("POST", CHAT, json={"model": MODEL, "n": 2,
                                                       "messages": [user("hi")]})  # fmt: skip
    assert several.status_code == 400
    assert "n:" in several.json()["detail"]
    vectors = await inference.call("POST", "/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert vectors.status_code == 400
    assert "no embeddings" in vectors.json()["detail"]
    sized = await inference.call(
        "POST", "/v1/embeddings", json={"model": MODEL, "input": "x", "dimensions": 256}
    )
    assert sized.status_code == 400
    assert sized.json()["type"].endswith(":dimensions-unsupported")
    assert claude.control.requests == []


# ---------------------------------------------------------------- models


async def test_the_credentials_models_are_listed_and_retrieved(
    inference: Inference, claude: Upstream
) -> None:
    async with inference.sdk() as sdk:
        listed = [m.id async for m in sdk.models.list()]
        assert {MODEL, "anthropic/claude-haiku-4-5-20251001"} <= set(listed)
        model = await sdk.models.retrieve(MODEL)
        assert (model.id, model.owned_by) == (MODEL, "anthropic")
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve("anthropic/claude-9")
    (request,) = claude.control.requests_to("/v1/models")
    assert request.headers["x-api-key"] == KEY
    assert request.query == {"limit": "1000"}


# ---------------------------------------------------------------- egress and answer limits


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_host_name_that_resolves_to_a_refused_address_is_never_called(
    make_inference: MakeInference, anthropic_upstream: Upstream, stream: bool
) -> None:
    async with make_inference(allowed_private_networks=[]) as inference:
        named = anthropic_upstream.url.replace("127.0.0.1", "localhost")
        await inference.credential(named, provider="anthropic", api_key=KEY)
        request = {"model": MODEL, "messages": [user("hi")], "stream": stream}
        response = await inference.call("POST", CHAT, json=request)
        body = assert_names_the_policy(response, 422, POLICY)
        assert "loopback" in body["detail"]
        assert body["attempts"] == 1
    assert anthropic_upstream.control.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_redirect_is_never_followed(
    inference: Inference, anthropic_upstream: Upstream, stream: bool
) -> None:
    location = f"{anthropic_upstream.url}{ROUTE}"
    answer = Response(SECRET, status_code=307, headers={"Location": location})
    async with serve(answer) as redirector:
        await inference.credential(redirector.url, provider="anthropic", api_key=KEY)
        request = {"model": MODEL, "messages": [user("hi")], "stream": stream}
        response = await inference.call("POST", CHAT, json=request)
        assert_names_the_policy(response, 502, REDIRECT)
        assert redirector.hits == [ROUTE]
    assert anthropic_upstream.control.requests == []


async def test_an_answer_that_is_not_anthropics_error_is_never_echoed(
    inference: Inference,
) -> None:
    answer = PlainTextResponse(f"<html>{SECRET}</html>", status_code=500, media_type="text/html")
    async with serve(answer) as server:
        await inference.credential(server.url, provider="anthropic", api_key=KEY)
        response = await inference.call("POST", CHAT, json={"model": MODEL,
                                                            "messages": [user("hi")]})  # fmt: skip
    assert response.status_code == 502
    assert SECRET not in response.text
    assert "not in an API's error format" in response.json()["detail"]


async def test_answers_past_the_size_limits_are_refused(
    make_inference: MakeInference, anthropic_upstream: Upstream
) -> None:
    async with make_inference(max_response_bytes=4096, max_stream_bytes=4096) as inference:
        await inference.credential(anthropic_upstream.url, provider="anthropic", api_key=KEY)
        request = {"model": MODEL, "messages": [user("words:2000")]}
        plain = await inference.call("POST", CHAT, json=request)
        streamed = await inference.call("POST", CHAT, json={**request, "stream": True})
    assert plain.status_code == 502
    assert plain.json()["type"].endswith(":answer-refused")
    assert "INFERENCE_MAX_RESPONSE_BYTES" in plain.json()["detail"]
    error = sse(streamed.text)[-2]["error"]
    assert error["code"] == "too_large"
    assert "INFERENCE_MAX_STREAM_BYTES" in error["message"]
    assert len(anthropic_upstream.control.requests_to(ROUTE)) == 2  # neither retried
