"""Embeddings (OpenAI and TEI), Hugging Face chat through huggingface_hub, the Hub API,
and the telemetry buffer that never blocks a request."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker

from common.llm_events import LlmCallEvent
from devkit.fakes.hf_server import DEFAULT_MODEL_ID, PRIVATE_REPO
from inference.events import EventSink, MetricLabels

from .conftest import HF_TOKEN, Inference, MakeInference, Upstream, member


async def test_openai_embeddings_as_floats_and_base64(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    body = {"model": "openai/text-embedding-3-small", "input": ["one", "two"]}
    floats = (await inference.call("POST", "/v1/embeddings", json=body)).json()
    packed = await inference.call(
        "POST", "/v1/embeddings", json=body | {"encoding_format": "base64"}
    )
    assert floats["object"] == "list"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    vector = floats["data"][0]["embedding"]
    raw = base64.b64decode(packed.json()["data"][0]["embedding"])
    decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    assert decoded == [struct.unpack("<f", struct.pack("<f", v))[0] for v in vector]
    assert floats["usage"]["prompt_tokens"] > 0
    (event, _) = await inference.events()
    assert (event.operation, event.cost_usd) == ("embeddings", event.cost_usd)
    assert event.cost_usd is not None


async def test_embedding_input_must_be_text(inference: Inference) -> None:
    for bad in ([], [""], 3, [[1, 2]], None):
        response = await inference.call(
            "POST", "/v1/embeddings", json={"model": "local/all-MiniLM-L6-v2", "input": bad}
        )
        assert response.status_code == 400, bad  # as OpenAI answers


async def test_huggingface_chat_stream_and_embeddings_through_huggingface_hub(
    inference: Inference, hf_upstream: Upstream
) -> None:
    await inference.credential(hf_upstream.url, provider="huggingface", api_key=HF_TOKEN)
    ask = {
        "model": f"huggingface/{DEFAULT_MODEL_ID}",
        "messages": [{"role": "user", "content": "words:7"}],
    }
    plain = await inference.call("POST", "/v1/chat/completions", json=ask)
    assert plain.status_code == 200, plain.text
    streamed = await inference.call("POST", "/v1/chat/completions", json=ask | {"stream": True})
    chunks = [
        json.loads(line[6:])
        for line in streamed.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain.json()["choices"][0]["message"]["content"]
    vectors = await inference.call(
        "POST", "/v1/embeddings", json={"model": "huggingface/tei", "input": ["a", "b", "c"]}
    )
    assert vectors.status_code == 200, vectors.text
    assert len(vectors.json()["data"]) == 3
    events = await inference.events()
    assert [e.usage_estimated for e in events][-1]  # TEI reports no usage: estimated
    assert events[0].prompt_tokens == events[1].prompt_tokens


async def test_the_hub_search_and_model_info(
    make_inference: MakeInference, hf_upstream: Upstream
) -> None:
    async with make_inference(hf_endpoint=hf_upstream.url) as inference:
        found = await inference.call(
            "GET", "/v1/hub/models", params={"search": "MiniLM", "limit": 5}
        )
        assert found.status_code == 200, found.text
        assert "sentence-transformers/all-MiniLM-L6-v2" in [m["id"] for m in found.json()]
        info = await inference.call("GET", "/v1/hub/models/sentence-transformers/all-MiniLM-L6-v2")
        assert info.json()["pipeline_tag"] == "sentence-similarity"
        missing = await inference.call("GET", "/v1/hub/models/nobody/nothing")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        hidden = await inference.call("GET", f"/v1/hub/models/{PRIVATE_REPO}")
        assert hidden.status_code == 404  # private without a token: the Hub says not found
        await inference.credential(hf_upstream.url, provider="huggingface", api_key=HF_TOKEN)
        seen = await inference.call("GET", f"/v1/hub/models/{PRIVATE_REPO}")
        assert seen.status_code == 200, seen.text


async def test_a_name_the_hub_client_refuses_is_a_422(
    make_inference: MakeInference, hf_upstream: Upstream
) -> None:
    """Found by the fuzzer: `-` passes the route's pattern but not huggingface_hub's rules
    for a repo id (HFValidationError), which was a 502 as if the Hub were down."""
    async with make_inference(hf_endpoint=hf_upstream.url) as inference:
        for repo_id in ("-", "a--b", "org/.x", "a..b"):
            response = await inference.call("GET", f"/v1/hub/models/{repo_id}")
            assert response.status_code == 422, (repo_id, response.text)
            assert response.headers["content-type"] == "application/problem+json"
    assert hf_upstream.control.requests == []


async def test_hub_down_is_a_502_at_once_not_after_retries(
    make_inference: MakeInference, refused_port: int
) -> None:
    """An unreachable Hub is said at once, with the default 10 s timeout: huggingface_hub's
    own list_models retried a refused connection for about 20 s (the caller got a timeout
    after 10 s, and a thread stayed busy for the rest)."""
    async with make_inference(hf_endpoint=f"http://127.0.0.1:{refused_port}") as inference:
        started = time.monotonic()
        search = await inference.call("GET", "/v1/hub/models", params={"search": "bert"})
        info = await inference.call("GET", "/v1/hub/models/sentence-transformers/x")
        took = time.monotonic() - started
    for response in (search, info):
        assert response.status_code == 502
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == "The Hub is unreachable (ConnectError)."
    assert took < 5


async def test_a_member_has_two_hub_calls_in_flight_at_most_and_others_are_not_held(
    make_inference: MakeInference, hf_upstream: Upstream
) -> None:
    """A slow Hub holds the calls of the member who sends many, not everyone's: past
    INFERENCE_HUB_CALLS_PER_USER (2) in flight, a member's next call is a 429 at once, and
    another member's search is answered meanwhile."""
    search = {"search": "MiniLM", "limit": 5}
    async with make_inference(hf_endpoint=hf_upstream.url) as inference:
        # Concurrent requests, each its own database session (the harness's share one
        # connection, whose savepoints they would interleave); they only read.
        app = inference.app
        app.state.sessionmaker = async_sessionmaker(app.state.engine, expire_on_commit=False)
        hf_upstream.control.delay("/api/models", first_byte_seconds=2.0, times=2)
        slow = [
            asyncio.create_task(inference.call("GET", "/v1/hub/models", params=search))
            for _ in range(2)
        ]
        for _ in range(200):  # until both are at the Hub
            if hf_upstream.control.pending("/api/models") == 0:
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        third = await inference.call("GET", "/v1/hub/models", params=search)
        other = await inference.call(
            "GET", "/v1/hub/models", params=search,
            identity=member("00000000-0000-0000-0000-0000000000b0"),
        )  # fmt: skip
        took = time.monotonic() - started
        first, second = await asyncio.gather(*slow)
    assert third.status_code == 429
    assert third.headers["content-type"] == "application/problem+json"
    assert third.headers["retry-after"] == "1"
    assert third.json()["type"].endswith(":too-many-hub-calls")
    assert other.status_code == 200, other.text
    assert took < 1.5  # neither waited for the slow ones
    assert [first.status_code, second.status_code] == [200, 200]


def _event(n: int) -> LlmCallEvent:
    fields: dict[str, Any] = {
        "id": f"e{n}", "occurred_at": 0.0, "user_id": None, "api_key_id": None,
        "provider": "openai", "model": "openai/m", "alias": None, "status": "ok",
        "error_type": None, "prompt_tokens": 1, "completion_tokens": 1,
        "usage_estimated": False, "cost_usd": None, "latency_ms": 1.0, "ttft_ms": None,
        "stream": False, "attempts": 1, "fallback": False, "operation": "chat",
        "trace_id": None,
    }  # fmt: skip
    return LlmCallEvent(**fields)


async def test_events_wait_in_memory_while_redis_is_away_and_the_oldest_go_first(
    refused_port: int,
) -> None:
    unreachable = Redis.from_url(f"redis://127.0.0.1:{refused_port}/0", socket_connect_timeout=0.2)
    sink = EventSink(unreachable, buffer_size=3, labels=MetricLabels((), (), 0))
    sink.start()
    try:
        for n in range(5):
            sink.emit(_event(n))  # never raises, never waits
        assert [e.id for e, _ in sink._buffer if e] == ["e2", "e3", "e4"]
    finally:
        await sink.close(grace_seconds=0.1)
        await unreachable.aclose()


async def test_dimensions_reach_a_provider_that_takes_them_through_the_sdk(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    async with inference.sdk(member()) as sdk:
        answer = await sdk.embeddings.create(
            model="openai/text-embedding-3-small", input="hello", dimensions=256
        )
    assert len(answer.data[0].embedding) == 256
    (sent,) = openai_upstream.control.requests_to("/v1/embeddings")
    assert sent.json["dimensions"] == 256


@pytest.mark.usefixtures("local_model_libraries")
async def test_dimensions_a_model_cannot_answer_are_a_400_before_any_call(
    inference: Inference, openai_upstream: Upstream, hf_upstream: Upstream
) -> None:
    await inference.credential(hf_upstream.url, provider="huggingface", api_key=HF_TOKEN)
    for model, dimensions in (
        ("local/all-MiniLM-L6-v2", 256),
        (f"huggingface/{DEFAULT_MODEL_ID}", 64),
    ):
        response = await inference.call(
            "POST", "/v1/embeddings", json={"model": model, "input": "hi", "dimensions": dimensions}
        )
        assert response.status_code == 400, response.text
        problem = response.json()
        assert problem["type"] == "urn:llm-platform:problem:dimensions-unsupported"
        assert problem["model"] == model
        assert str(dimensions) in problem["detail"]
    assert hf_upstream.control.requests == []
    # The local model's own size is no change: answered.
    own = {"model": "local/all-MiniLM-L6-v2", "input": "hi", "dimensions": 384}
    response = await inference.call("POST", "/v1/embeddings", json=own)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 384
    for bad in (0, -1, 16_001, "256", 2.5):
        body = {"model": "openai/text-embedding-3-small", "input": "hi", "dimensions": bad}
        assert (await inference.call("POST", "/v1/embeddings", json=body)).status_code == 400
