"""Personal aliases over a member's own credentials, and the weighted and least-latency
strategies (issue 19).

A member with two OpenAI-compatible endpoints (here two fake OpenAI servers) reaches the
first with `openai/<model>` (their oldest credential) and the second through an alias of
their own; nobody else sees or calls it. A weighted alias splits calls by its targets'
weights, exactly, and fails over to the others. A least-latency alias sends calls to the
fastest target as every replica measured it, explores the others, and fails over."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from devkit.fakes.faults import FaultControl
from devkit.fakes.openai_server import create_openai_app
from devkit.testing import LiveServer
from inference.failover import Target
from inference.repository import Latencies
from inference.routing import LeastLatency

from .conftest import UPSTREAM_KEY, Inference, MakeInference, Upstream, admin, member
from .test_chat import CHAT, ROUTE, ask
from .test_governance import NOON, Clock

OTHER = member("00000000-0000-0000-0000-0000000000cc")


@pytest.fixture
async def second_upstream() -> AsyncIterator[Upstream]:
    """Another OpenAI-compatible endpoint (a member's local Ollama, say)."""
    control = FaultControl()
    async with LiveServer(create_openai_app(control, api_key=UPSTREAM_KEY)) as server:
        yield Upstream(f"{server.url}/v1", control)


async def alias(inference: Inference, name: str, targets: list[dict[str, Any]], **more: Any) -> Any:
    identity = more.pop("identity", member())
    return await inference.call(
        "POST", "/v1/providers/aliases", identity=identity,
        json={"alias": name, "targets": targets, **more},
    )  # fmt: skip


async def test_a_members_own_alias_routes_to_their_second_credential(
    inference: Inference, openai_upstream: Upstream, second_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url, name="openai")  # the oldest: openai/*
    ollama = await inference.credential(second_upstream.url, name="ollama")
    made = await alias(inference, "local-llm",
                       [{"model": "openai/llama3", "credential_id": ollama["id"]}])  # fmt: skip
    assert made.status_code == 201, made.text
    assert (made.json()["shared"], made.json()["strategy"]) == (False, "ordered")

    plain = await inference.call("POST", CHAT, json=ask())
    routed = await inference.call("POST", CHAT, json=ask() | {"model": "local-llm"})
    assert (plain.status_code, routed.status_code) == (200, 200), routed.text
    assert len(openai_upstream.control.requests_to(ROUTE)) == 1
    (sent,) = second_upstream.control.requests_to(ROUTE)
    assert sent.json["model"] == "llama3"
    assert "local-llm" in [
        m["id"] for m in (await inference.call("GET", "/v1/models")).json()["data"]
    ]

    # Nobody else sees it or calls it.
    theirs = await inference.call("POST", CHAT, identity=OTHER, json=ask() | {"model": "local-llm"})
    assert theirs.status_code == 404
    listed = (await inference.call("GET", "/v1/providers/aliases", identity=OTHER)).json()
    assert "local-llm" not in [a["alias"] for a in listed]
    models = (await inference.call("GET", "/v1/models", identity=OTHER)).json()["data"]
    assert "local-llm" not in [m["id"] for m in models]
    assert len(second_upstream.control.requests_to(ROUTE)) == 1


async def test_what_a_member_may_route_to(inference: Inference, openai_upstream: Upstream) -> None:
    theirs = await inference.credential(openai_upstream.url, identity=OTHER, name="theirs")
    shared = await inference.credential(openai_upstream.url, shared=True, name="everyone")
    target = [{"model": "openai/gpt-4o-mini", "credential_id": theirs["id"]}]
    refused = await alias(inference, "borrowed", target)
    assert refused.status_code == 422, refused.text
    assert "your credentials or shared" in refused.json()["detail"]
    on_shared = [{"model": "openai/gpt-4o-mini", "credential_id": shared["id"]}]
    assert (await alias(inference, "mine", on_shared)).status_code == 201
    # A shared alias is the admins' (providers:manage_shared), over shared credentials.
    not_admin = await alias(inference, "for-all", on_shared, shared=True)
    assert not_admin.status_code == 403
    assert not_admin.json()["type"].endswith(":missing-permission")
    by_admin = await alias(inference, "for-all", target, shared=True, identity=admin())
    assert by_admin.status_code == 422
    assert (await alias(inference, "for-all", on_shared, shared=True,
                        identity=admin())).status_code == 201  # fmt: skip
    weight_without_strategy = [{**on_shared[0], "weight": 3}]
    assert (await alias(inference, "w", weight_without_strategy)).status_code == 422


async def test_ones_own_alias_wins_over_a_shared_one_of_the_same_name(
    inference: Inference, openai_upstream: Upstream, second_upstream: Upstream
) -> None:
    shared = await inference.credential(openai_upstream.url, shared=True, name="everyone")
    own = await inference.credential(second_upstream.url, name="own")
    made = await alias(inference, "chat", [{"model": "openai/a", "credential_id": shared["id"]}],
                       shared=True, identity=admin())  # fmt: skip
    assert made.status_code == 201
    made = await alias(inference, "chat", [{"model": "openai/b", "credential_id": own["id"]}])
    assert made.status_code == 201
    for who in (member(), OTHER):
        answer = await inference.call("POST", CHAT, identity=who, json=ask() | {"model": "chat"})
        assert answer.status_code == 200
    assert [r.json["model"] for r in second_upstream.control.requests_to(ROUTE)] == ["b"]
    assert [r.json["model"] for r in openai_upstream.control.requests_to(ROUTE)] == ["a"]
    # Deleting names one's own first; the shared one needs providers:manage_shared.
    deleted = await inference.call("DELETE", "/v1/providers/aliases/chat")
    assert deleted.status_code == 204
    assert (await inference.call("DELETE", "/v1/providers/aliases/chat")).status_code == 404
    by_admin = await inference.call("DELETE", "/v1/providers/aliases/chat", identity=admin())
    assert by_admin.status_code == 204


async def test_a_weighted_alias_splits_calls_by_weight_and_fails_over(
    inference: Inference, openai_upstream: Upstream, second_upstream: Upstream
) -> None:
    first = await inference.credential(openai_upstream.url, name="first")
    second = await inference.credential(second_upstream.url, name="second")
    made = await alias(inference, "split", [
        {"model": "openai/gpt-4o-mini", "credential_id": first["id"], "weight": 3},
        {"model": "openai/gpt-4o-mini", "credential_id": second["id"], "weight": 1},
    ], strategy="weighted")  # fmt: skip
    assert made.status_code == 201, made.text
    async with inference.client(member()) as http:
        for _ in range(100):
            response = await http.post(CHAT, json=ask() | {"model": "split"})
            assert response.status_code == 200
    counts = (len(openai_upstream.control.requests_to(ROUTE)),
              len(second_upstream.control.requests_to(ROUTE)))  # fmt: skip
    assert counts == (75, 25)  # the weights exactly, by the round robin

    # The first target fails from now on: every call is answered by the other.
    openai_upstream.control.reset()
    second_upstream.control.reset()
    openai_upstream.control.fail(ROUTE, status=500, times=1000)
    for _ in range(8):
        response = await inference.call("POST", CHAT, json=ask() | {"model": "split"})
        assert response.status_code == 200, response.text
    assert len(second_upstream.control.requests_to(ROUTE)) == 8
    assert openai_upstream.control.requests_to(ROUTE)  # it was tried first


async def test_a_member_keeps_at_most_the_configured_number_of_aliases(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    async with make_inference(max_aliases_per_user=2) as inference:
        target = [{"model": "openai/gpt-4o-mini"}]
        assert (await alias(inference, "a", target)).status_code == 201
        assert (await alias(inference, "b", target)).status_code == 201
        refused = await alias(inference, "c", target)
        assert refused.status_code == 409, refused.text
        assert refused.json()["type"].endswith(":too-many-aliases")
        assert (await alias(inference, "b", target)).status_code == 201  # saved again: no new one
        theirs = await alias(inference, "c", target, identity=OTHER)  # their own count
        assert theirs.status_code == 201
        assert (await inference.call("DELETE", "/v1/providers/aliases/a")).status_code == 204
        assert (await alias(inference, "c", target)).status_code == 201


# ---------------------------------------------------------------- least-latency

# The circuit breaker never decides here (the latencies do); a probe every 10 s.
BY_LATENCY = {"circuit_failure_threshold": 1000, "latency_probe_seconds": 10.0}
SLOW = 0.2  # seconds before the slow target's first byte


async def fastest_alias(inference: Inference, *upstreams: Upstream) -> None:
    """The alias `fastest` over one credential per upstream, in that order."""
    targets = [
        {"model": "openai/gpt-4o-mini",
         "credential_id": (await inference.credential(u.url, name=f"c{i}"))["id"]}
        for i, u in enumerate(upstreams)
    ]  # fmt: skip
    made = await alias(inference, "fastest", targets, strategy="least-latency")
    assert made.status_code == 201, made.text
    assert made.json()["strategy"] == "least-latency"


async def calls(inference: Inference, n: int, **more: Any) -> None:
    async with inference.client(member()) as http:
        for _ in range(n):
            response = await http.post(CHAT, json=ask() | {"model": "fastest", **more})
            assert response.status_code == 200, response.text


def counts(*upstreams: Upstream) -> tuple[int, ...]:
    return tuple(len(u.control.requests_to(ROUTE)) for u in upstreams)


def frozen(inference: Inference) -> Clock:
    clock = Clock(NOON)
    inference.app.state.runtime.clock = clock
    return clock


@asynccontextmanager
async def by_latency(
    make_inference: MakeInference, *upstreams: Upstream
) -> AsyncIterator[tuple[Inference, Clock]]:
    """Inference with a standing clock and the alias `fastest` over `upstreams`."""
    async with make_inference(**BY_LATENCY) as inference:
        clock = frozen(inference)
        await fastest_alias(inference, *upstreams)
        yield inference, clock


async def test_a_least_latency_alias_sends_calls_to_the_fastest_target(
    make_inference: MakeInference, openai_upstream: Upstream, second_upstream: Upstream
) -> None:
    slow, fast = openai_upstream, second_upstream
    async with by_latency(make_inference, slow, fast) as (inference, clock):
        slow.control.delay(ROUTE, first_byte_seconds=SLOW, times=100)
        await calls(inference, 30)
        # Each was tried once while it had no latency (the slow one, listed first, first);
        # then every call went to the fast one, the slow one's latency being fresh.
        assert counts(slow, fast) == (1, 29)

        # 10 s later the slow one's latency is old: one call explores it, then the fast one
        # again.
        clock.now += 10
        await calls(inference, 5)
        assert counts(slow, fast) == (2, 33)
        weighted = [{"model": "openai/gpt-4o-mini", "weight": 2}]
        refused = await alias(inference, "w", weighted, strategy="least-latency")
        assert refused.status_code == 422


async def test_a_streams_latency_is_its_time_to_first_token(
    make_inference: MakeInference, openai_upstream: Upstream, second_upstream: Upstream
) -> None:
    slow, fast = openai_upstream, second_upstream
    async with by_latency(make_inference, slow, fast) as (inference, _):
        # Its answer starts at once, its first token comes late: timed to the answer's
        # start, it would tie with the other and take turns with it.
        slow.control.delay(ROUTE, first_byte_seconds=SLOW, after_headers=True, times=100)
        await calls(inference, 20, stream=True)
        assert counts(slow, fast) == (1, 19)


async def test_every_replica_routes_by_the_latencies_any_replica_measured(
    make_inference: MakeInference, openai_upstream: Upstream, second_upstream: Upstream
) -> None:
    slow, fast = openai_upstream, second_upstream
    async with make_inference(**BY_LATENCY) as one, make_inference(**BY_LATENCY) as two:
        frozen(one), frozen(two)
        # Two replicas of one database (each test app's work is otherwise its own).
        two.app.state.sessionmaker = one.app.state.sessionmaker
        await fastest_alias(one, slow, fast)
        slow.control.delay(ROUTE, first_byte_seconds=SLOW, times=100)
        await calls(one, 3)
        assert counts(slow, fast) == (1, 2)
        await one.app.state.runtime.routing.latency.flush()  # what its next batch writes

        # The second replica never called either: it knows the slow one from Redis.
        await calls(two, 10)
        assert counts(slow, fast) == (1, 12)


async def test_a_failing_target_loses_the_calls_to_the_others(
    make_inference: MakeInference, openai_upstream: Upstream, second_upstream: Upstream
) -> None:
    fast, slower = openai_upstream, second_upstream
    async with by_latency(make_inference, fast, slower) as (inference, _):
        slower.control.delay(ROUTE, first_byte_seconds=SLOW, times=100)
        await calls(inference, 4)
        assert counts(fast, slower) == (3, 1)

        # The fast one fails from now on: the call that finds out fails over to the other
        # (each call answered), and the next ones go to the other first.
        fast.control.fail(ROUTE, status=500, times=1000)
        await calls(inference, 10)
        attempts = inference.app.state.runtime.settings.max_attempts
        assert counts(fast, slower) == (3 + attempts, 11)


def replica(redis: Redis) -> LeastLatency:
    return LeastLatency(redis, buffer=0.1, probe_seconds=10, failure_seconds=10,
                        sync_seconds=1, ttl_seconds=600)  # fmt: skip


async def test_near_ties_take_turns_and_latencies_expire(redis: Redis) -> None:
    a, b, c = (Target("openai", "m", credential_id=name) for name in "abc")
    one = replica(redis)
    for target, seconds in ((a, 0.100), (b, 0.105), (c, 0.5)):
        one.observe(target, seconds, False, clock=lambda: NOON)
    await one.flush()
    # Another replica reads them: a and b are within 10 % of each other, c is not.
    two = replica(redis)
    firsts = [(await two.order([a, b, c], NOON))[0] for _ in range(100)]
    assert (firsts.count(a), firsts.count(b), firsts.count(c)) == (50, 50, 0)
    # Each alias takes its own turns: two called in alternation each spread their calls.
    both = [(await two.order(targets, NOON))[0] for _ in range(50) for targets in ([a, b], [b, a])]
    assert (both[0::2].count(a), both[1::2].count(a)) == (25, 25)
    assert (await two.order([c, b, a], NOON))[-1] == c  # the rest by latency
    assert 0 < await redis.ttl(Latencies.key(c.circuit_key)) <= 600


async def test_without_redis_targets_keep_their_listed_order() -> None:
    away = Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5)
    a, b = Target("openai", "a"), Target("openai", "b")
    latency = replica(away)
    assert await latency.order([a, b], NOON) == [a, b]
    # What this replica measured itself still counts.
    latency.observe(a, 0.5, False, clock=lambda: NOON)
    latency.observe(b, 0.1, False, clock=lambda: NOON)
    assert await latency.order([a, b], NOON + 2) == [b, a]
    await latency.close()  # the samples are not written: no error
    await away.aclose()
