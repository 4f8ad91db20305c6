"""Chat completions through failover: OpenAI's shapes, streams, retries, fallbacks,
circuit breaker, and one call event each, against a local OpenAI-protocol server."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from common.identity import SignedIdentity
from devkit.testing import LiveServer, signing_key

from .conftest import READ_TIMEOUT_TESTED, Inference, MakeInference, Upstream, admin, member

CHAT = "/v1/chat/completions"
ROUTE = "/v1/chat/completions"  # on the upstream


def ask(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def sse(body: str) -> list[Any]:
    events = []
    for line in body.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_chat_in_openai_shape_with_the_requested_model_name(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    response = await inference.call("POST", CHAT, json=ask(temperature=0.2, user="u1"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "openai/gpt-4o-mini"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["total_tokens"] > 0
    sent = openai_upstream.control.requests_to(ROUTE)[0]
    assert sent.json["model"] == "gpt-4o-mini"
    assert sent.json["temperature"] == 0.2  # unknown-to-us fields are passed through
    assert sent.headers["authorization"].endswith(sent.headers["authorization"][-4:])


async def test_stream_is_openai_sse_and_costs_the_same_as_the_plain_call(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    plain = await inference.call("POST", CHAT, json=ask("words:12"))
    streamed = await inference.call("POST", CHAT, json=ask("words:12", stream=True))
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse(streamed.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "openai/gpt-4o-mini" for c in chunks)
    # Usage was asked of the provider but not by the client: not forwarded.
    assert all(c.get("usage") is None for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain.json()["choices"][0]["message"]["content"]
    upstream_stream = openai_upstream.control.requests_to(ROUTE)[1].json
    assert upstream_stream["stream_options"] == {"include_usage": True}

    first, second = await inference.events()
    assert (first.stream, second.stream) == (False, True)
    assert (first.prompt_tokens, first.completion_tokens) == (
        second.prompt_tokens,
        second.completion_tokens,
    )
    assert first.cost_usd == second.cost_usd is not None
    assert not second.usage_estimated
    assert second.ttft_ms is not None


async def test_stream_forwards_usage_when_the_client_asks(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    response = await inference.call(
        "POST", CHAT, json=ask(stream=True, stream_options={"include_usage": True})
    )
    chunks = sse(response.text)[:-1]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] > 0


async def test_500_twice_then_ok_is_a_200_after_three_attempts(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    openai_upstream.control.fail(ROUTE, status=500, times=2)
    response = await inference.call("POST", CHAT, json=ask())
    assert response.status_code == 200, response.text
    assert len(openai_upstream.control.requests_to(ROUTE)) == 3
    (event,) = await inference.events()
    assert (event.status, event.attempts, event.fallback) == ("ok", 3, False)


@pytest.mark.parametrize(
    "inject",
    [
        pytest.param(lambda c: c.fail(ROUTE, status=429, retry_after=0.05), id="429-retry-after"),
        pytest.param(lambda c: c.fail(ROUTE, status=503), id="503"),
        pytest.param(lambda c: c.malformed(ROUTE), id="malformed-json"),
        pytest.param(lambda c: c.delay(ROUTE, first_byte_seconds=3), id="read-timeout"),
        pytest.param(lambda c: c.cut_stream(ROUTE, after_chunks=1), id="cut-body"),
    ],
)
async def test_one_transient_fault_is_retried_away(
    make_inference: MakeInference, openai_upstream: Upstream, inject: Any
) -> None:
    async with make_inference(**READ_TIMEOUT_TESTED) as inference:
        await inference.credential(openai_upstream.url)
        inject(openai_upstream.control)
        response = await inference.call("POST", CHAT, json=ask())
    assert response.status_code == 200, response.text
    assert len(openai_upstream.control.requests_to(ROUTE)) == 2


async def test_a_provider_400_is_not_retried_and_names_the_providers_message(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    openai_upstream.control.fail(ROUTE, status=400, message="max_tokens is too large: 99999")
    response = await inference.call("POST", CHAT, json=ask())
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "max_tokens is too large" in response.json()["detail"]
    assert len(openai_upstream.control.requests_to(ROUTE)) == 1


async def test_a_rejected_provider_key_is_a_502_that_says_so(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url, api_key="sk-wrong-key-000000000000")
    response = await inference.call("POST", CHAT, json=ask())
    assert response.status_code == 502
    assert "refused the credential" in response.json()["detail"]
    assert len(openai_upstream.control.requests_to(ROUTE)) == 1


async def test_connection_refused_everywhere_is_a_502_after_every_attempt(
    inference: Inference,
    refused_port: int,
) -> None:
    await inference.credential(f"http://127.0.0.1:{refused_port}/v1")
    response = await inference.call("POST", CHAT, json=ask())
    assert response.status_code == 502
    body = response.json()
    assert body["attempts"] == 3
    assert "Could not reach the provider" in body["detail"]
    (event,) = await inference.events()
    assert (event.status, event.error_type) == ("error", "connection")


async def test_an_alias_falls_back_from_a_dead_target_to_the_next(
    inference: Inference,
    openai_upstream: Upstream,
    refused_port: int,
) -> None:
    dead = await inference.credential(
        f"http://127.0.0.1:{refused_port}/v1", shared=True, name="dead"
    )
    alive = await inference.credential(openai_upstream.url, shared=True, name="alive")
    alias = await inference.call(
        "POST",
        "/v1/providers/aliases",
        identity=admin(),
        json={
            "alias": "smart",
            "shared": True,
            "targets": [
                {"model": "openai/gpt-4o", "credential_id": dead["id"]},
                {"model": "openai/gpt-4o-mini", "credential_id": alive["id"]},
            ],
        },
    )
    assert alias.status_code == 201, alias.text
    response = await inference.call("POST", CHAT, json=ask() | {"model": "smart"})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "smart"
    assert openai_upstream.control.requests_to(ROUTE)[0].json["model"] == "gpt-4o-mini"
    (event,) = await inference.events()
    assert (event.alias, event.model, event.fallback) == ("smart", "openai/gpt-4o-mini", True)
    models = (await inference.call("GET", "/v1/models")).json()
    assert "smart" in [m["id"] for m in models["data"]]


async def test_saving_an_alias_again_replaces_its_targets(
    inference: Inference, openai_upstream: Upstream
) -> None:
    shared = await inference.credential(openai_upstream.url, shared=True, name="shared")

    async def save(model: str) -> httpx.Response:
        body = {"alias": "house", "shared": True,
                "targets": [{"model": model, "credential_id": shared["id"]}]}  # fmt: skip
        return await inference.call("POST", "/v1/providers/aliases", identity=admin(), json=body)

    first, second = await save("openai/gpt-4o"), await save("openai/gpt-4o-mini")
    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    assert second.json()["targets"] == [{"model": "openai/gpt-4o-mini", "weight": None,
                                         "credential_id": shared["id"]}]  # fmt: skip
    assert (second.json()["shared"], second.json()["strategy"]) == (True, "ordered")
    assert second.json()["created_at"] == first.json()["created_at"]
    listed = (await inference.call("GET", "/v1/providers/aliases")).json()
    assert [a["alias"] for a in listed].count("house") == 1
    response = await inference.call("POST", CHAT, json=ask() | {"model": "house"})
    assert response.status_code == 200, response.text
    assert openai_upstream.control.requests_to(ROUTE)[-1].json["model"] == "gpt-4o-mini"


async def test_the_circuit_opens_then_a_probe_closes_it(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    # A cool-down no machine is slow enough to outlast between the failures and the call
    # that must find the circuit open (with 0.3 s a slow call there became the probe) ...
    async with make_inference(
        circuit_failure_threshold=2, circuit_cooldown_seconds=300, max_attempts=1
    ) as inference:
        await inference.credential(openai_upstream.url)
        openai_upstream.control.fail(ROUTE, status=500, times=2)
        assert (await inference.call("POST", CHAT, json=ask())).status_code == 502
        assert (await inference.call("POST", CHAT, json=ask())).status_code == 502
        # Open: the upstream is not even called.
        skipped = await inference.call("POST", CHAT, json=ask())
        assert skipped.status_code == 503
        assert skipped.headers["retry-after"]
        assert len(openai_upstream.control.requests_to(ROUTE)) == 2
        # ... then a short one, waited out: the next call is the probe.
        inference.app.state.runtime.failover.breaker.cooldown = 0.3
        await asyncio.sleep(0.35)  # the cool-down, not a timing assertion
        assert (await inference.call("POST", CHAT, json=ask())).status_code == 200
        assert (await inference.call("POST", CHAT, json=ask())).status_code == 200


async def test_a_stream_cut_after_the_first_byte_ends_with_an_error_event_not_a_retry(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    openai_upstream.control.cut_stream(ROUTE, after_chunks=2)
    response = await inference.call("POST", CHAT, json=ask("words:30", stream=True))
    assert response.status_code == 200
    events = sse(response.text)
    assert events[-1] == "[DONE]"
    assert "error" in events[-2]
    assert len(openai_upstream.control.requests_to(ROUTE)) == 1
    (event,) = await inference.events()
    assert event.status == "error"


async def test_a_slow_first_token_is_retried_before_anything_is_sent(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    async with make_inference(**READ_TIMEOUT_TESTED) as inference:
        await inference.credential(openai_upstream.url)
        openai_upstream.control.delay(ROUTE, first_byte_seconds=3, after_headers=True)
        response = await inference.call("POST", CHAT, json=ask(stream=True))
    assert response.status_code == 200
    assert sse(response.text)[-1] == "[DONE]"
    assert len(openai_upstream.control.requests_to(ROUTE)) == 2


@pytest.mark.parametrize(
    "body",
    [
        {"model": "openai/gpt-4o-mini", "messages": []},
        {"model": "openai/gpt-4o-mini"},
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": "openai/gpt-4o-mini", "messages": "hi"},
    ],
)
async def test_bad_requests_are_400_problems(inference: Inference, body: dict[str, Any]) -> None:
    # 400, as OpenAI answers (test_chat_validation.py has every rule).
    response = await inference.call("POST", CHAT, json=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("model", ["gpt-4o", "nope/gpt-4o", "openai/", "unknown-alias"])
async def test_unknown_models_are_404(inference: Inference, model: str) -> None:
    response = await inference.call("POST", CHAT, json=ask() | {"model": model})
    assert response.status_code == 404
    assert "provider/model" in response.json()["detail"]


async def test_a_client_that_hangs_up_cancels_the_provider_call(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    openai_upstream.control.delay(ROUTE, first_byte_seconds=30)
    key = signing_key(inference.harness.settings)
    async with LiveServer(inference.app, lifespan=False) as server:
        async with httpx.AsyncClient(
            base_url=server.url,
            auth=SignedIdentity(key, member(), audience="inference"),
            timeout=60,
        ) as client:
            # Hang up once the provider has the call (however long inference took to make
            # it; a client timeout could expire before inference even called out).
            call = asyncio.create_task(client.post(CHAT, json=ask()))
            for _ in range(500):
                if openai_upstream.control.requests_to(ROUTE) or call.done():
                    break
                await asyncio.sleep(0.02)
            assert not call.done(), call.result()
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        (seen,) = openai_upstream.control.requests_to(ROUTE)
        for _ in range(100):  # the upstream learns of it once inference closes the call
            if seen.closed:
                break
            await asyncio.sleep(0.02)
    assert seen.closed
    assert not seen.completed


async def test_each_call_event_names_the_server_span_its_attempts_are_under(
    inference: Inference, openai_upstream: Upstream, spans: InMemorySpanExporter
) -> None:
    """Telemetry links its spans to the span the event names: the call's server span, for
    a retried call, a stream (recorded once it ends) and a refused call alike."""
    await inference.credential(openai_upstream.url)
    trace_id = secrets.token_hex(16)
    traceparent = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    openai_upstream.control.fail(ROUTE, status=500)  # the first call takes two attempts
    for body in (ask(), ask(stream=True)):
        response = await inference.call("POST", CHAT, json=body, headers=traceparent)
        assert response.status_code == 200, response.text
    openai_upstream.control.fail(ROUTE, status=400)
    refused = await inference.call("POST", CHAT, json=ask(), headers=traceparent)
    assert refused.status_code == 400

    events = await inference.events()
    assert [(e.status, e.attempts) for e in events] == [("ok", 2), ("ok", 1), ("error", 1)]
    finished = spans.get_finished_spans()
    for event in events:
        assert (event.trace_id, event.trace_sampled) == (trace_id, True)
        assert event.span_id is not None
        (server,) = [s for s in finished if s.context.span_id == int(event.span_id, 16)]
        assert server.kind == SpanKind.SERVER
        assert server.name == f"POST {CHAT}"
        attempts = [
            s for s in finished
            if s.parent is not None and s.parent.span_id == server.context.span_id
            and s.name == "chat openai/gpt-4o-mini"
        ]  # fmt: skip
        assert len(attempts) == event.attempts
    assert len({e.span_id for e in events}) == 3
