"""The OpenAI fake, driven by the official `openai` SDK over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from devkit.fakes import FaultControl, RecordedRequest

from .conftest import API_KEY

CHAT = "/v1/chat/completions"
MESSAGES: list[Any] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello   there world"},
]


@pytest.fixture
async def client(openai_url: str, control: FaultControl) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{openai_url}/v1", api_key=API_KEY, max_retries=0) as sdk:
        yield sdk


async def streamed(client: AsyncOpenAI, **kwargs: Any) -> tuple[str, list[Any]]:
    """The text of a streamed reply and all its chunks."""
    chunks = []
    async with await client.chat.completions.create(stream=True, **kwargs) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


async def collect(stream: AsyncIterator[Any], contents: list[str]) -> None:
    """Append each chunk's content to `contents` until the stream ends (or fails)."""
    async for chunk in stream:
        contents.append(chunk.choices[0].delta.content or "")


async def until_closed(control: FaultControl) -> RecordedRequest:
    """The first request the server recorded, once it is done with it (waits up to 10 s:
    on a loaded machine the server may see a request after the client gave up on it)."""
    for _ in range(500):
        if control.requests and control.requests[0].closed:
            break
        await asyncio.sleep(0.02)
    assert control.requests, "the server never saw the request"
    return control.requests[0]


async def test_chat_echoes_the_last_user_message_with_usage(client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "gpt-4o-mini"
    choice = reply.choices[0]
    assert (choice.index, choice.finish_reason) == (0, "stop")
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hello there world"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5, 4)
    assert reply.usage.total_tokens == 9
    assert reply._request_id is not None


async def test_stream_matches_the_plain_reply_text_and_usage(client: AsyncOpenAI) -> None:
    plain = await client.chat.completions.create(model="m", messages=MESSAGES)

    text, chunks = await streamed(
        client, model="m", messages=MESSAGES, stream_options={"include_usage": True}
    )

    assert text == plain.choices[0].message.content
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


async def test_stream_without_include_usage_has_no_usage_chunk(client: AsyncOpenAI) -> None:
    _, chunks = await streamed(client, model="m", messages=MESSAGES)

    assert all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_words_and_max_tokens_shape_the_reply(client: AsyncOpenAI) -> None:
    long = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "words:40"}]
    )
    cut = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "words:40"}], max_tokens=5
    )
    text, chunks = await streamed(
        client,
        model="m",
        messages=[{"role": "user", "content": "words:40"}],
        max_completion_tokens=5,
        stream_options={"include_usage": True},
    )

    assert long.usage is not None
    assert long.usage.completion_tokens == 40
    assert len((long.choices[0].message.content or "").split()) == 40
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None
    assert cut.usage.completion_tokens == 5
    assert text == cut.choices[0].message.content
    assert chunks[-1].usage == cut.usage


async def test_embeddings_float_and_base64_agree(client: AsyncOpenAI) -> None:
    floats = await client.embeddings.create(
        model="text-embedding-3-small", input=["a b c", "d"], encoding_format="float"
    )
    encoded = await client.embeddings.create(
        model="text-embedding-3-small", input=["a b c", "d"], encoding_format="base64"
    )
    single = await client.embeddings.create(model="e", input="a b c", encoding_format="float")

    assert [item.index for item in floats.data] == [0, 1]
    first = floats.data[0].embedding
    assert len(first) == 8
    assert math.isclose(math.sqrt(sum(v * v for v in first)), 1.0, rel_tol=1e-6)
    assert floats.data[1].embedding != first
    assert single.data[0].embedding == first  # deterministic from the text
    for item, float_item in zip(encoded.data, floats.data, strict=True):
        raw = base64.b64decode(str(item.embedding))
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == float_item.embedding
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 4


async def test_embeddings_honour_dimensions(client: AsyncOpenAI) -> None:
    reply = await client.embeddings.create(model="e", input="x", dimensions=32)

    assert len(reply.data[0].embedding) == 32


async def test_models_list(client: AsyncOpenAI) -> None:
    models = [model.id async for model in client.models.list()]

    assert "gpt-4o-mini" in models
    assert (await client.models.retrieve("gpt-4o-mini")).owned_by == "system"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


async def test_wrong_or_missing_key_is_401_in_openai_shape(openai_url: str) -> None:
    async with AsyncOpenAI(base_url=f"{openai_url}/v1", api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as wrong:
            await bad.chat.completions.create(model="m", messages=MESSAGES)
    async with httpx.AsyncClient() as plain:  # the SDK refuses to send no key at all
        missing = await plain.get(f"{openai_url}/v1/models")

    assert wrong.value.code == "invalid_api_key"
    assert wrong.value.type == "invalid_request_error"
    assert "Incorrect API key" in wrong.value.message
    assert "sk-wrong" not in wrong.value.message
    assert missing.status_code == 401
    error = missing.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "didn't provide an API key" in error["message"]


async def test_invalid_requests_are_400_in_openai_shape(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as empty:
        await client.chat.completions.create(model="m", messages=[])
    with pytest.raises(openai.BadRequestError) as missing:
        await client.post("/chat/completions", body={"model": "m"}, cast_to=object)
    with pytest.raises(openai.BadRequestError) as no_model:
        await client.post("/chat/completions", body={"messages": MESSAGES}, cast_to=object)

    assert empty.value.param == "messages"
    assert missing.value.param == "messages"
    assert missing.value.code == "missing_required_parameter"
    assert no_model.value.param == "model"
    body = missing.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}


async def test_500_then_success(client: AsyncOpenAI, control: FaultControl) -> None:
    control.fail(CHAT, status=500, times=2)

    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as failed:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        assert failed.value.status_code == 500
        assert failed.value.type == "server_error"
    reply = await client.chat.completions.create(model="m", messages=MESSAGES)

    assert reply.choices[0].message.content == "echo: hello there world"
    assert control.pending(CHAT) == 0
    assert len(control.requests_to(CHAT)) == 3


async def test_a_compressed_answer_comes_gzipped_whatever_was_accepted(
    openai_url: str, control: FaultControl
) -> None:
    control.compress(CHAT)
    body = {"model": "m", "messages": MESSAGES}
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{openai_url}{CHAT}",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}", "Accept-Encoding": "identity"},
        )

    assert response.headers["content-encoding"] == "gzip"
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello there world"


async def test_sdk_retries_through_500s(openai_url: str, control: FaultControl) -> None:
    control.fail(CHAT, status=500, times=2)
    async with AsyncOpenAI(base_url=f"{openai_url}/v1", api_key=API_KEY, max_retries=2) as sdk:
        reply = await sdk.chat.completions.create(model="m", messages=MESSAGES)

    assert reply.choices[0].finish_reason == "stop"
    assert len(control.requests) == 3


async def test_429_carries_retry_after(client: AsyncOpenAI, control: FaultControl) -> None:
    control.fail(CHAT, status=429, retry_after=1.5)

    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="m", messages=MESSAGES)

    assert limited.value.status_code == 429
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "2"
    assert limited.value.response.headers["retry-after-ms"] == "1500"


async def test_slow_response_times_out(client: AsyncOpenAI, control: FaultControl) -> None:
    control.delay(CHAT, first_byte_seconds=5.0)

    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=0.2).chat.completions.create(model="m", messages=MESSAGES)

    request = await until_closed(control)  # the server saw the client leave
    assert request.closed
    assert not request.completed


async def test_slow_first_token_times_out_mid_stream(
    client: AsyncOpenAI, control: FaultControl
) -> None:
    control.delay(CHAT, first_byte_seconds=30.0, after_headers=True)

    # Long enough for the headers (they come at once, but this call is outside the
    # `raises` below: a loaded machine took more than a 0.2 s timeout to get them).
    stream = await client.with_options(timeout=2.0).chat.completions.create(
        model="m", messages=MESSAGES, stream=True
    )
    async with stream:
        with pytest.raises(openai.APITimeoutError):
            await collect(stream, [])


async def test_malformed_json_raises_json_decode_error(
    client: AsyncOpenAI, control: FaultControl
) -> None:
    control.malformed(CHAT, times=2)

    with pytest.raises(json.JSONDecodeError):
        await client.chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(json.JSONDecodeError):
        await streamed(client, model="m", messages=MESSAGES)


async def test_cut_stream_raises_during_iteration(
    client: AsyncOpenAI, control: FaultControl
) -> None:
    control.cut_stream(CHAT, after_chunks=2)
    received: list[str] = []

    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    async with stream:
        with pytest.raises(openai.APIConnectionError):
            await collect(stream, received)

    assert received == ["", "echo:"]
    assert not control.requests[0].completed


async def test_cut_plain_response_raises_connection_error(
    client: AsyncOpenAI, control: FaultControl
) -> None:
    control.cut_stream(CHAT)

    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="m", messages=MESSAGES)


async def test_connection_refused(refused_port: int) -> None:
    url = f"http://127.0.0.1:{refused_port}/v1"
    async with AsyncOpenAI(base_url=url, api_key=API_KEY, max_retries=0) as sdk:
        with pytest.raises(openai.APIConnectionError) as refused:
            await sdk.chat.completions.create(model="m", messages=MESSAGES)

    assert not isinstance(refused.value, openai.APITimeoutError)


async def test_client_disconnect_is_seen_by_the_server(
    client: AsyncOpenAI, control: FaultControl
) -> None:
    control.delay(CHAT, between_chunks_seconds=0.05)

    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "words:1000"}], stream=True
    )
    async with stream:
        async for chunk in stream:
            if chunk.choices[0].delta.content:
                break

    request = await until_closed(control)
    assert request.closed
    assert not request.completed


async def test_requests_are_recorded(client: AsyncOpenAI, control: FaultControl) -> None:
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0.5, tools=[]
    )
    await client.models.list()

    chat, models = control.requests
    assert (chat.method, chat.route) == ("POST", CHAT)
    assert chat.json["temperature"] == 0.5
    assert chat.headers["authorization"] == f"Bearer {API_KEY}"
    assert chat.completed
    assert chat.closed
    assert (models.method, models.route, models.json) == ("GET", "/v1/models", None)

    control.fail(CHAT)
    control.reset()
    assert control.requests == []
    assert control.pending(CHAT) == 0
