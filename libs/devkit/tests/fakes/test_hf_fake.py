"""The Hugging Face fake, driven by `huggingface_hub` (AsyncInferenceClient and HfApi)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import httpx2
import pytest
from huggingface_hub import AsyncInferenceClient, HfApi
from huggingface_hub.errors import (
    HfHubHTTPError,
    InferenceTimeoutError,
    RepositoryNotFoundError,
)
from huggingface_hub.inference._providers import get_provider_helper

from devkit.fakes import FaultControl
from devkit.fakes.hf_server import DEFAULT_MODEL_ID, PRIVATE_REPO
from devkit.fakes.openai_server import embedding_vector

from .conftest import HF_TOKEN

CHAT = "/v1/chat/completions"
MESSAGES: list[Any] = [{"role": "user", "content": "tell me something"}]


@pytest.fixture
async def client(hf_url: str, control: FaultControl) -> AsyncIterator[AsyncInferenceClient]:
    async with AsyncInferenceClient(base_url=hf_url, token=HF_TOKEN) as inference:
        yield inference


async def streamed(client: AsyncInferenceClient, **kwargs: Any) -> tuple[str, list[Any]]:
    chunks = [chunk async for chunk in await client.chat_completion(stream=True, **kwargs)]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


async def collect(stream: AsyncIterable[Any], contents: list[str]) -> None:
    """Append each chunk's content to `contents` until the stream ends (or fails)."""
    async for chunk in stream:
        contents.append(chunk.choices[0].delta.content or "")


async def test_tgi_chat_completion(client: AsyncInferenceClient, control: FaultControl) -> None:
    reply = await client.chat_completion(MESSAGES, max_tokens=100)

    assert reply.choices[0].message.content == "echo: tell me something"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == DEFAULT_MODEL_ID
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 4)
    request = control.requests[0]
    assert request.route == CHAT
    assert request.headers["authorization"] == f"Bearer {HF_TOKEN}"


async def test_tgi_stream_matches_the_plain_reply(client: AsyncInferenceClient) -> None:
    plain = await client.chat_completion(MESSAGES)

    text, chunks = await streamed(client, messages=MESSAGES, stream_options={"include_usage": True})

    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens


async def test_tei_embed_route_as_feature_extraction_calls_it(hf_url: str) -> None:
    """The exact request `feature_extraction` builds for a base URL, and its parsing
    (without numpy, which `feature_extraction` needs only to wrap the result)."""
    helper = get_provider_helper(None, task="feature-extraction", model=hf_url)
    request = helper.prepare_request(
        inputs=["first text", "second"],
        parameters={"normalize": True, "truncate": None},
        headers={},
        model=hf_url,
        api_key=HF_TOKEN,
    )
    async with httpx2.AsyncClient() as http:
        response = await http.post(request.url, json=request.json, headers=request.headers)

    vectors = helper.get_response(response.content)
    assert request.url == hf_url
    assert request.json == {"inputs": ["first text", "second"], "normalize": True}
    assert vectors == [embedding_vector("first text"), embedding_vector("second")]


async def test_feature_extraction(client: AsyncInferenceClient) -> None:
    single = await client.feature_extraction("first text")
    batch = await client.feature_extraction(["first text", "second"], dimensions=16)

    assert single.shape == (1, 8)
    assert math.isclose(float((single[0] ** 2).sum()), 1.0, rel_tol=1e-5)
    assert single[0].tolist() == embedding_vector("first text")
    assert batch.shape == (2, 16)


async def test_tei_openai_embeddings_route(hf_url: str) -> None:
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            f"{hf_url}/v1/embeddings",
            json={"model": "tei", "input": "hello"},
            headers={"authorization": f"Bearer {HF_TOKEN}"},
        )

    assert response.json()["data"][0]["embedding"] == embedding_vector("hello")


async def test_wrong_token_is_401(hf_url: str) -> None:
    async with AsyncInferenceClient(base_url=hf_url, token="hf_wrong") as wrong:
        with pytest.raises(HfHubHTTPError) as denied:
            await wrong.chat_completion(MESSAGES)

    assert denied.value.response.status_code == 401


async def test_invalid_chat_is_422(client: AsyncInferenceClient) -> None:
    with pytest.raises(HfHubHTTPError) as invalid:
        await client.chat_completion([])

    assert invalid.value.response.status_code == 422
    assert invalid.value.response.json()["error_type"] == "Validation"


async def test_500(client: AsyncInferenceClient, control: FaultControl) -> None:
    control.fail(CHAT, status=500)

    with pytest.raises(HfHubHTTPError) as failed:
        await client.chat_completion(MESSAGES)

    assert failed.value.response.status_code == 500
    assert failed.value.server_message
    assert (await client.chat_completion(MESSAGES)).choices


async def test_429_carries_retry_after(client: AsyncInferenceClient, control: FaultControl) -> None:
    control.fail(CHAT, status=429, retry_after=3)

    with pytest.raises(HfHubHTTPError) as limited:
        await client.chat_completion(MESSAGES)

    assert limited.value.response.status_code == 429
    assert limited.value.response.headers["retry-after"] == "3"


async def test_slow_response_times_out(hf_url: str, control: FaultControl) -> None:
    control.delay(CHAT, first_byte_seconds=5.0)

    async with AsyncInferenceClient(base_url=hf_url, token=HF_TOKEN, timeout=0.2) as impatient:
        with pytest.raises(InferenceTimeoutError):
            await impatient.chat_completion(MESSAGES)


async def test_slow_first_token_times_out_mid_stream(hf_url: str, control: FaultControl) -> None:
    control.delay(CHAT, first_byte_seconds=30.0, after_headers=True)

    # Long enough for the headers: this call is outside the `raises` below.
    async with AsyncInferenceClient(base_url=hf_url, token=HF_TOKEN, timeout=2.0) as impatient:
        stream = await impatient.chat_completion(MESSAGES, stream=True)
        with pytest.raises(httpx2.ReadTimeout):
            await collect(stream, [])


async def test_malformed_json(
    client: AsyncInferenceClient, hf_url: str, control: FaultControl
) -> None:
    control.malformed(CHAT, times=2)
    control.malformed("/")

    with pytest.raises(json.JSONDecodeError):
        await client.chat_completion(MESSAGES)
    with pytest.raises(json.JSONDecodeError):
        await streamed(client, messages=MESSAGES)
    with pytest.raises(json.JSONDecodeError):
        await client.feature_extraction("x")


async def test_cut_stream(client: AsyncInferenceClient, control: FaultControl) -> None:
    control.cut_stream(CHAT, after_chunks=3)
    received: list[str] = []

    stream = await client.chat_completion(MESSAGES, stream=True)
    with pytest.raises(httpx2.RemoteProtocolError):
        await collect(stream, received)

    assert received == ["", "echo:", " tell"]


async def test_connection_refused(refused_port: int) -> None:
    url = f"http://127.0.0.1:{refused_port}"
    async with AsyncInferenceClient(base_url=url) as nowhere:
        with pytest.raises(httpx2.ConnectError):
            await nowhere.chat_completion(MESSAGES)


# Hub API: HfApi is synchronous and the fake runs in the test's event loop, so the tests
# call it in a thread (a blocking call on the loop would wait for itself).


async def test_list_models_search_and_limit(hf_url: str, control: FaultControl) -> None:
    api = HfApi(endpoint=hf_url, token=False)

    found = await asyncio.to_thread(lambda: list(api.list_models(search="MiniLM", limit=5)))
    first_two = await asyncio.to_thread(lambda: list(api.list_models(limit=2)))
    everything = await asyncio.to_thread(lambda: [m.id for m in api.list_models()])

    assert [model.id for model in found] == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert found[0].pipeline_tag == "sentence-similarity"
    assert found[0].downloads
    assert found[0].downloads > 0
    assert len(first_two) == 2
    assert control.requests[0].query == {"search": "MiniLM", "limit": "5"}
    assert DEFAULT_MODEL_ID in everything
    assert PRIVATE_REPO not in everything


async def test_private_repos_are_listed_with_a_token(hf_url: str) -> None:
    api = HfApi(endpoint=hf_url, token=HF_TOKEN)

    listed = await asyncio.to_thread(lambda: [m.id for m in api.list_models(author="acme-corp")])

    assert listed == [PRIVATE_REPO]


async def test_model_info(hf_url: str) -> None:
    api = HfApi(endpoint=hf_url, token=False)

    info = await asyncio.to_thread(api.model_info, "sentence-transformers/all-MiniLM-L6-v2")
    gated = await asyncio.to_thread(api.model_info, DEFAULT_MODEL_ID, revision="main")

    assert info.id == "sentence-transformers/all-MiniLM-L6-v2"
    assert info.author == "sentence-transformers"
    assert info.library_name == "sentence-transformers"
    assert info.siblings
    assert "config.json" in [s.rfilename for s in info.siblings]
    assert info.private is False
    assert gated.gated == "manual"


async def test_unknown_repo_is_repository_not_found(hf_url: str) -> None:
    api = HfApi(endpoint=hf_url, token=False)

    with pytest.raises(RepositoryNotFoundError) as missing:
        await asyncio.to_thread(api.model_info, "nobody/nothing")

    assert missing.value.response.status_code == 404


async def test_private_repo_needs_the_token(hf_url: str) -> None:
    anonymous = HfApi(endpoint=hf_url, token=False)
    wrong = HfApi(endpoint=hf_url, token="hf_wrong")
    owner = HfApi(endpoint=hf_url, token=HF_TOKEN)

    with pytest.raises(RepositoryNotFoundError) as hidden:
        await asyncio.to_thread(anonymous.model_info, PRIVATE_REPO)
    with pytest.raises(HfHubHTTPError) as rejected:
        await asyncio.to_thread(wrong.model_info, PRIVATE_REPO)
    info = await asyncio.to_thread(owner.model_info, PRIVATE_REPO)

    assert hidden.value.response.status_code == 401
    assert rejected.value.response.status_code == 401
    assert not isinstance(rejected.value, RepositoryNotFoundError)
    assert info.private is True
