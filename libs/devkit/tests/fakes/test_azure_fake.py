"""The Azure OpenAI fake, driven by the official SDK's Azure client over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncAzureOpenAI

from devkit.fakes import FaultControl
from devkit.fakes.azure_server import create_azure_app
from devkit.testing import LiveServer

KEY = "azure-test-key-0123456789"
VERSION = "2024-10-21"
CHAT = "/openai/deployments/chat-prod/chat/completions"
MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def azure() -> AsyncIterator[tuple[AsyncAzureOpenAI, FaultControl, str]]:
    control = FaultControl()
    async with (
        LiveServer(create_azure_app(control, api_key=KEY)) as server,
        AsyncAzureOpenAI(
            azure_endpoint=server.url, api_key=KEY, api_version=VERSION, max_retries=0
        ) as client,
    ):
        yield client, control, server.url


async def test_chat_stream_and_embeddings_answer_as_the_deployments_model(
    azure: tuple[AsyncAzureOpenAI, FaultControl, str],
) -> None:
    client, control, _ = azure
    reply = await client.chat.completions.create(model="chat-prod", messages=MESSAGES)
    assert reply.model == "gpt-4o-mini"
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.model_extra is not None
    assert reply.model_extra["prompt_filter_results"][0]["prompt_index"] == 0

    stream = await client.chat.completions.create(
        model="chat-prod", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices == []  # the prompt filter's event comes first
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there"
    assert chunks[-1].usage is not None

    vectors = await client.embeddings.create(model="embed-prod", input="hi", dimensions=12)
    assert len(vectors.data[0].embedding) == 12

    routes = [(r.route, r.query, r.headers["api-key"]) for r in control.requests]
    assert routes == [
        (CHAT, {"api-version": VERSION}, KEY),
        (CHAT, {"api-version": VERSION}, KEY),
        ("/openai/deployments/embed-prod/embeddings", {"api-version": VERSION}, KEY),
    ]


async def test_an_unknown_deployment_is_404_deployment_not_found(
    azure: tuple[AsyncAzureOpenAI, FaultControl, str],
) -> None:
    client, _, _ = azure
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="nowhere", messages=MESSAGES)
    assert missing.value.code == "DeploymentNotFound"


async def test_a_wrong_key_or_no_api_version_is_refused_in_azures_shape(
    azure: tuple[AsyncAzureOpenAI, FaultControl, str],
) -> None:
    _, _, url = azure
    async with AsyncAzureOpenAI(
        azure_endpoint=url, api_key="wrong", api_version=VERSION, max_retries=0
    ) as wrong:
        with pytest.raises(openai.AuthenticationError) as refused:
            await wrong.chat.completions.create(model="chat-prod", messages=MESSAGES)
    assert refused.value.code == "401"
    async with httpx.AsyncClient() as http:
        versionless = await http.post(f"{url}{CHAT}", json={}, headers={"api-key": KEY})
    assert versionless.status_code == 400
    assert versionless.json()["error"]["code"] == "MissingApiVersionParameter"


async def test_faults_answer_in_azures_shape_with_retry_after(
    azure: tuple[AsyncAzureOpenAI, FaultControl, str],
) -> None:
    client, control, _ = azure
    control.fail(CHAT, status=429, retry_after=1.5)
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="chat-prod", messages=MESSAGES)
    assert limited.value.code == "429"
    assert limited.value.response.headers["retry-after"] == "2"
    reply = await client.chat.completions.create(model="chat-prod", messages=MESSAGES)
    assert reply.choices[0].message.content == "echo: hello there"
