"""What a member's own endpoint can cost everyone else, bounded (issue 16)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.identity import SignedIdentity
from devkit.fakes.hf_server import DEFAULT_MODEL_ID
from devkit.testing import LiveServer, signing_key

from .conftest import HF_TOKEN, Inference, MakeInference, Upstream, member
from .test_chat import ask, sse

CHAT = "/v1/chat/completions"
ROUTE = "/v1/chat/completions"  # on the upstream
ALICE = member("00000000-0000-0000-0000-0000000000a1")
BOB = member("00000000-0000-0000-0000-0000000000b2")


def refused_answer(response: httpx.Response, setting: str) -> None:
    assert response.status_code == 502, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith(":answer-refused")
    assert setting in problem["detail"]


# ---------------------------------------------------------------- answer sizes


async def test_an_answer_over_the_size_limit_is_a_502_and_not_retried(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    async with make_inference(max_response_bytes=4096) as inference:
        await inference.credential(openai_upstream.url)
        response = await inference.call("POST", CHAT, json=ask("words:2000"))
        refused_answer(response, "INFERENCE_MAX_RESPONSE_BYTES")
        assert len(openai_upstream.control.requests_to(ROUTE)) == 1
        (event,) = await inference.events()
        assert (event.status, event.error_type) == ("error", "too_large")


async def test_a_huge_provider_error_is_refused_and_a_long_one_clipped(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    async with make_inference(max_response_bytes=64 * 1024) as inference:
        await inference.credential(openai_upstream.url)
        openai_upstream.control.fail(ROUTE, status=400, message="x" * 200_000)
        huge = await inference.call("POST", CHAT, json=ask())
        openai_upstream.control.fail(ROUTE, status=400, message="too long " * 4_000)
        long = await inference.call("POST", CHAT, json=ask())

    refused_answer(huge, "INFERENCE_MAX_RESPONSE_BYTES")
    assert long.status_code == 400
    detail = long.json()["detail"]
    assert detail.startswith("openai/gpt-4o-mini rejected the request: too long too long")
    assert len(detail) < 1000
    assert detail.endswith("more characters)")


async def test_an_answer_compressed_against_the_request_is_refused(
    inference: Inference, openai_upstream: Upstream
) -> None:
    """Compressed, a small body could inflate past any limit; identity is asked for."""
    await inference.credential(openai_upstream.url)
    openai_upstream.control.compress(ROUTE)
    response = await inference.call("POST", CHAT, json=ask())
    assert response.status_code == 502
    assert response.json()["type"].endswith(":answer-refused")
    assert "compressed" in response.json()["detail"]
    (sent,) = openai_upstream.control.requests_to(ROUTE)
    assert sent.headers["accept-encoding"] == "identity"


async def test_a_huggingface_answer_over_the_size_limit_is_a_502(
    make_inference: MakeInference, hf_upstream: Upstream
) -> None:
    async with make_inference(max_response_bytes=4096) as inference:
        await inference.credential(hf_upstream.url, provider="huggingface", api_key=HF_TOKEN)
        body = ask("words:2000") | {"model": f"huggingface/{DEFAULT_MODEL_ID}"}
        response = await inference.call("POST", CHAT, json=body)
    refused_answer(response, "INFERENCE_MAX_RESPONSE_BYTES")


def error_event(response: httpx.Response) -> dict[str, Any]:
    """The error event a stream ended with (before its [DONE])."""
    assert response.status_code == 200, response.text
    events = sse(response.text)
    assert events[-1] == "[DONE]"
    error: dict[str, Any] = events[-2]["error"]
    return error


# ---------------------------------------------------------------- streams


@pytest.mark.parametrize(
    ("limit", "prompt", "pause", "code", "setting"),
    [
        pytest.param(
            {"max_stream_bytes": 8192}, "words:3000", 0.01, "too_large",
            "INFERENCE_MAX_STREAM_BYTES", id="whole-stream",
        ),
        # The fake streams a word per event: the echo of a 10 kB word is a 10 kB event.
        pytest.param(
            {"max_stream_chunk_bytes": 4096}, "x" * 10_000 + " more" * 100, 0.01, "too_large",
            "INFERENCE_MAX_STREAM_CHUNK_BYTES", id="one-event",
        ),
        # 100 words, one every 0.2 s: 20 s, were it not cut.
        pytest.param(
            {"stream_max_seconds": 1.0}, "words:100", 0.2, "stream_too_long",
            "INFERENCE_STREAM_MAX_SECONDS", id="duration",
        ),
    ],
)  # fmt: skip
async def test_a_stream_past_a_limit_ends_with_an_error_event(
    make_inference: MakeInference,
    openai_upstream: Upstream,
    limit: dict[str, Any],
    prompt: str,
    pause: float,
    code: str,
    setting: str,
) -> None:
    async with make_inference(**limit) as inference:
        await inference.credential(openai_upstream.url)
        # Events `pause` apart: the first arrives alone, and starts the stream (all at once,
        # a stream over its size limit is refused before its first event, with a 502).
        openai_upstream.control.delay(ROUTE, between_chunks_seconds=pause)
        response = await inference.call("POST", CHAT, json=ask(prompt, stream=True))
        error = error_event(response)
        (event,) = await inference.events()

    assert error["code"] == code
    assert setting in error["message"]
    assert (event.status, event.error_type) == ("error", code)
    (seen,) = openai_upstream.control.requests_to(ROUTE)
    assert not seen.completed


async def test_a_user_has_at_most_the_allowed_streams_open_at_once(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    async with make_inference(max_concurrent_streams=2) as inference:
        for user in (ALICE, BOB):
            await inference.credential(openai_upstream.url, identity=user)
        # Alice's first two streams trickle for 50 s unless she hangs up.
        openai_upstream.control.delay(ROUTE, between_chunks_seconds=0.5, times=2)
        key = signing_key(inference.harness.settings)
        async with LiveServer(inference.app, lifespan=False) as server:

            def client(user: Any) -> httpx.AsyncClient:
                return httpx.AsyncClient(
                    base_url=server.url,
                    auth=SignedIdentity(key, user, audience="inference"),
                    timeout=30,
                )

            async with client(ALICE) as alice, client(BOB) as bob:
                async with contextlib.AsyncExitStack() as open_streams:
                    readers = []  # a dropped reader would close its stream
                    for _ in range(2):
                        stream = await open_streams.enter_async_context(
                            alice.stream("POST", CHAT, json=ask("words:100", stream=True))
                        )
                        assert stream.status_code == 200
                        readers.append(stream.aiter_raw())
                        assert await anext(readers[-1])
                    third = await alice.post(CHAT, json=ask(stream=True))
                    bobs = await bob.post(CHAT, json=ask(stream=True))
                # Alice hung up on both: her leases come back once inference sees it.
                for _ in range(200):
                    again = await alice.post(CHAT, json=ask(stream=True))
                    if again.status_code != 429:
                        break
                    await asyncio.sleep(0.05)

    assert third.status_code == 429
    assert third.headers["content-type"] == "application/problem+json"
    assert third.json()["type"].endswith(":too-many-streams")
    assert int(third.headers["retry-after"]) > 0
    assert bobs.status_code == 200
    assert sse(bobs.text)[-1] == "[DONE]"
    assert again.status_code == 200


# ---------------------------------------------------------------- circuits


async def test_a_members_dead_endpoint_opens_only_their_own_circuit(
    make_inference: MakeInference, openai_upstream: Upstream, refused_port: int
) -> None:
    async with make_inference(
        circuit_failure_threshold=2, circuit_cooldown_seconds=300, max_attempts=1
    ) as inference:
        await inference.credential(f"http://127.0.0.1:{refused_port}/v1", identity=ALICE)
        await inference.credential(openai_upstream.url, identity=BOB)
        failed = [(await inference.call("POST", CHAT, json=ask(), identity=ALICE)) for _ in "ab"]
        skipped = await inference.call("POST", CHAT, json=ask(), identity=ALICE)
        bobs = await inference.call("POST", CHAT, json=ask(), identity=BOB)

    assert [r.status_code for r in failed] == [502, 502]
    assert skipped.status_code == 503  # Alice's circuit is open ...
    assert bobs.status_code == 200, bobs.text  # ... Bob's, for the same model, is not


async def test_circuit_state_expires(make_inference: MakeInference, refused_port: int) -> None:
    async with make_inference(max_attempts=1, circuit_state_seconds=60) as inference:
        await inference.credential(f"http://127.0.0.1:{refused_port}/v1")
        for name in ("gpt-a", "gpt-b"):
            response = await inference.call("POST", CHAT, json=ask() | {"model": f"openai/{name}"})
            assert response.status_code == 502
        keys = [key async for key in inference.redis.scan_iter("inference:circuit:*")]
        ttls = [await inference.redis.ttl(key) for key in keys]
    assert len(keys) == 2
    assert all(0 < ttl <= 60 for ttl in ttls), ttls


# ---------------------------------------------------------------- metric labels


async def model_labels(inference: Inference) -> set[str]:
    text = (await inference.call("GET", "/metrics")).text
    return {
        sample.labels["model"]
        for family in text_string_to_metric_families(text)
        if family.name.startswith("inference_llm_")
        for sample in family.samples
        if "model" in sample.labels
    }


async def test_metric_labels_name_only_priced_or_answering_models(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    async with make_inference(metrics_max_models=1) as inference:
        await inference.credential(openai_upstream.url)
        for n in range(30):
            body = {"model": f"local/junk-{n}", "input": "x"}
            assert (await inference.call("POST", "/v1/embeddings", json=body)).status_code == 400
        for name in ("tuned-first", "tuned-second"):  # unpriced, and answering
            response = await inference.call("POST", CHAT, json=ask() | {"model": f"openai/{name}"})
            assert response.status_code == 200
        await inference.call("POST", CHAT, json=ask())  # priced
        labels = await model_labels(inference)

    assert not [label for label in labels if "junk" in label]
    assert {"other", "openai/tuned-first", "openai/gpt-4o-mini"} <= labels
    assert "openai/tuned-second" not in labels  # past INFERENCE_METRICS_MAX_MODELS


# ---------------------------------------------------------------- the local model's queue


async def test_a_full_local_queue_is_a_503_with_retry_after(make_inference: MakeInference) -> None:
    # Aliases cached: the calls below run at once, and the test database takes one at a time.
    # The model loads on the first call: the deadline leaves it time to.
    limits = {"local_max_queued_texts": 300, "request_deadline_seconds": 300}
    async with make_inference(cache_seconds=60, **limits) as inference:
        body = {"model": "local/all-MiniLM-L6-v2", "input": ["warm up"]}
        assert (await inference.call("POST", "/v1/embeddings", json=body)).status_code == 200
        body["input"] = [f"text {i}" for i in range(300)]
        # The first is taken (the queue is empty), its 300 texts encoded 64 at a time; the
        # others, arriving meanwhile, would queue 300 texts more.
        responses = await asyncio.gather(
            *(inference.call("POST", "/v1/embeddings", json=body) for _ in range(4))
        )

    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200
    busy = [r for r in responses if r.status_code == 503]
    assert busy, statuses
    assert set(statuses) <= {200, 503}
    for response in busy:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith(":overloaded")
        assert int(response.headers["retry-after"]) > 0


async def unpriced_calls(inference: Inference, model: str) -> float:
    text = (await inference.call("GET", "/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "inference_llm_unpriced_requests"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("model") == model
    )


async def test_successful_calls_without_a_price_are_counted_by_model(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    unpriced, priced = "openai/house-model-7", "openai/gpt-4o-mini"
    before = (await unpriced_calls(inference, unpriced), await unpriced_calls(inference, priced))
    for model in (unpriced, unpriced, priced):
        response = await inference.call("POST", CHAT, json=ask() | {"model": model})
        assert response.status_code == 200, response.text
    after = (await unpriced_calls(inference, unpriced), await unpriced_calls(inference, priced))
    assert (after[0] - before[0], after[1] - before[1]) == (2, 0)
