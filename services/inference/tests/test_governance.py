"""Governance of model calls (issue 18): the models a key, user or team allows; budgets
held at admission and settled with the call event, atomic across replicas; token limits
on a sliding window; alerts.

Spend counters are seeded here directly (common.budgets.spend_key): telemetry's
`POST /internal/spend`, which seeds them in production, belongs to another service and is
covered by the platform's cross-service tests. What inference does when telemetry cannot
be asked is tested here (503, budgets fail closed)."""

from __future__ import annotations

import asyncio
import gc
import json
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from redis.asyncio import Redis

from common.budgets import (
    ALERTS,
    GatewayHold,
    from_nano,
    held_key,
    held_sum_key,
    spend_key,
    standing_key,
    to_nano,
    tokens_key,
    utc,
)
from common.identity import Identity, SignedIdentity
from common.llm_events import LlmCallEvent
from common.policy import Period, ScopeKind
from devkit import devstack
from devkit.testing import LiveServer, signing_key
from inference import service
from inference.chat_schema import ChatRequest
from inference.pricing import Price

from .conftest import MEMBER_PERMISSIONS, Inference, MakeInference, Upstream, admin
from .test_chat import ask, sse

CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"
ROUTE = "/v1/chat/completions"  # on the upstream
MODEL = "openai/gpt-4o-mini"
# One token costs 0.001 USD either way: "hello there" (2 prompt tokens for the fake) and
# its answer "echo: hello there" (3) cost 0.005 USD.
PRICED = {"prices": {MODEL: Price(input=1000, output=1000)}}
CALL_COST = Decimal("0.005")
USER_A, USER_B = "00000000-0000-0000-0000-0000000000a1", "00000000-0000-0000-0000-0000000000b2"
KEY_A, KEY_B = "10000000-0000-0000-0000-0000000000a1", "10000000-0000-0000-0000-0000000000b2"
TEAM = "20000000-0000-0000-0000-000000000001"
# 2026-12-03 12:00:30 UTC: the middle of a token window.
NOON = datetime(2026, 12, 3, 12, 0, 30, tzinfo=UTC).timestamp()


def caller(
    policies: dict[str, Any] | None,
    *,
    user: str = USER_A,
    key: str | None = KEY_A,
    team: str | None = None,
) -> Identity:
    """An API-key caller (a session when `key` is None) with the policies the gateway signed."""
    return Identity(
        sub=user, kind="api_key" if key else "user", iss="gateway", roles=("member",),
        permissions=MEMBER_PERMISSIONS, kid=key, team=team, policies=policies,
    )  # fmt: skip


def budget(usd: str, period: Period | None = None, **more: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {"max_budget_usd": usd, **more}
    if period:
        policy["budget_period"] = period
    return policy


class Clock:
    """The runtimes' injectable clock: stands still until told to move."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def seed(
    redis: Redis, scope: ScopeKind, scope_id: str, usd: str = "0", *,
    period: Period = "total", now: float | None = None,
) -> None:  # fmt: skip
    """A spend counter, as inference seeds it from telemetry."""
    moment = utc(now if now is not None else NOON)
    await redis.set(spend_key(scope, scope_id, period, moment), to_nano(Decimal(usd)))


async def spent(
    redis: Redis, scope: ScopeKind, scope_id: str, *,
    period: Period = "total", now: float | None = None,
) -> Decimal:  # fmt: skip
    value = await redis.get(spend_key(scope, scope_id, period, utc(now or NOON)))
    assert value is not None
    return from_nano(int(value))


async def held(redis: Redis, scope: ScopeKind, scope_id: str) -> tuple[int, int]:
    """(holds, their sum in nano-dollars) of a scope."""
    count = await redis.zcard(held_key(scope, scope_id))
    return count, int(await redis.get(held_sum_key(scope, scope_id)) or 0)


def problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:llm-platform:problem:{slug}", body
    return body


@asynccontextmanager
async def governed(
    make_inference: MakeInference, upstream: Upstream, clock: Clock | None = None,
    users: Sequence[str] = (USER_A,), replica: int = 0, **overrides: Any,
) -> AsyncIterator[Inference]:  # fmt: skip
    """Inference with priced models, a credential for each user, and (optionally) a clock.
    Each `replica` names its credentials apart: the test apps' units of work are never
    committed, so a second insert of the same name would wait for the first for ever."""
    settings = {**PRICED, "max_concurrent_streams": 0, "telemetry_flush_seconds": 0.0,
                **overrides}  # fmt: skip
    async with make_inference(**settings) as inference:
        if clock is not None:
            inference.app.state.runtime.clock = clock
        for user in users:
            await inference.credential(
                upstream.url, identity=caller(None, user=user, key=None), name=f"own-{replica}"
            )
        yield inference


@asynccontextmanager
async def served(inference: Inference, who: Identity) -> AsyncIterator[httpx.AsyncClient]:
    """The app over a real HTTP connection, which a client can hang up mid-stream."""
    auth = SignedIdentity(signing_key(inference.harness.settings), who, audience="inference")
    async with (
        LiveServer(inference.app, lifespan=False) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30, auth=auth) as client,
    ):
        yield client


# ---------------------------------------------------------------- allowed models


async def save_alias(inference: Inference, upstream: Upstream, alias: str, *models: str) -> None:
    shared = await inference.credential(upstream.url, shared=True, name=f"shared-{alias}")
    response = await inference.call(
        "POST", "/v1/providers/aliases", identity=admin(),
        json={"alias": alias, "shared": True,
              "targets": [{"model": m, "credential_id": shared["id"]} for m in models]},
    )  # fmt: skip
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("allowed", "model", "ok"),
    [
        (["openai/mock-*"], "openai/mock-1", True),
        (["openai/mock-*"], MODEL, False),
        ([MODEL], MODEL, True),
        (["openai/gpt-?o-mini"], MODEL, True),
        (["house"], "house", True),  # the alias by its name
        (["openai/gpt-4o*"], "house", True),  # every target allowed
        (["openai/gpt-4o"], "house", False),  # one target is not
        (["local/*"], "house", False),
    ],
)
async def test_allowed_models_by_name_glob_and_alias(
    make_inference: MakeInference, openai_upstream: Upstream, allowed: list[str], model: str,
    ok: bool,
) -> None:  # fmt: skip
    async with governed(make_inference, openai_upstream) as inference:
        await save_alias(inference, openai_upstream, "house", "openai/gpt-4o", MODEL)
        who = caller({"key": {"allowed_models": allowed}})
        response = await inference.call("POST", CHAT, identity=who, json=ask() | {"model": model})
        if ok:
            assert response.status_code == 200, response.text
            return
        body = problem(response, 403, "model-not-allowed")
        assert (body["model"], body["scope"]) == (model, "key")
        assert repr(model) in body["detail"]
        assert openai_upstream.control.requests_to(ROUTE) == []


async def test_every_scope_is_checked_before_any_credential_or_provider(
    inference: Inference,
) -> None:
    """No credential exists: the refusal comes first, for chat, streams and embeddings."""
    policies = {"key": {"allowed_models": ["openai/*"]}, "team": {"allowed_models": ["local/*"]}}
    who = caller(policies, team=TEAM)
    for path, body in [
        (CHAT, ask()),
        (CHAT, ask(stream=True)),
        (EMBED, {"model": "openai/text-embedding-3-small", "input": "hi"}),
    ]:
        refused = problem(await inference.call("POST", path, identity=who, json=body), 403,
                          "model-not-allowed")  # fmt: skip
        assert refused["scope"] == "team"
    session = caller({"user": {"allowed_models": ["local/*"]}}, key=None)
    assert problem(await inference.call("POST", CHAT, identity=session, json=ask()), 403,
                   "model-not-allowed")["scope"] == "user"  # fmt: skip


async def test_the_openai_sdk_sees_a_permission_error(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    async with governed(make_inference, openai_upstream) as inference:
        who = caller({"key": {"allowed_models": ["openai/mock-*"]}})
        async with inference.sdk(who) as sdk:
            with pytest.raises(openai.PermissionDeniedError) as refused:
                await sdk.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}]
                )
            assert refused.value.status_code == 403
            assert isinstance(refused.value.body, dict)
            assert refused.value.body["type"].endswith(":model-not-allowed")
            allowed = await sdk.chat.completions.create(
                model="openai/mock-1", messages=[{"role": "user", "content": "hi"}]
            )
            assert allowed.choices[0].message.content == "echo: hi"
            with pytest.raises(openai.PermissionDeniedError):
                await sdk.embeddings.create(model="openai/text-embedding-3-small", input="hi")


async def test_a_caller_without_policies_leaves_no_budget_state(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    async with governed(make_inference, openai_upstream) as inference:
        response = await inference.call("POST", CHAT, identity=caller(None), json=ask())
        assert response.status_code == 200, response.text
        assert "x-ratelimit-limit-tokens" not in response.headers
        await inference.events()
        assert await redis.keys("budget:*") == []
        assert await redis.keys("inference:settled:*") == []


# ---------------------------------------------------------------- budgets


@dataclass
class Tally:
    succeeded: int = 0
    refusals: int = 0


async def hammer(
    instances: Sequence[Inference], callers: Sequence[Identity], *, clients: int = 50
) -> Tally:
    """`clients` concurrent clients, spread over the instances and callers, mixing streamed
    and plain calls with and without max_tokens, each calling until a refusal says the
    budget is spent (a refusal while calls in flight hold the rest is tried again)."""
    tally = Tally()

    async def client(n: int) -> None:
        inference, who = instances[n % len(instances)], callers[n % len(callers)]
        extra: dict[str, Any] = {}
        if n % 4 in (1, 3):
            extra["stream"] = True
        if n % 4 in (2, 3):
            extra["max_tokens"] = 5
        async with inference.client(who) as http:
            for _ in range(5_000):
                response = await http.post(CHAT, json=ask(**extra))
                if response.status_code == 200:
                    if extra.get("stream"):
                        assert sse(response.text)[-1] == "[DONE]"
                        assert not any("error" in e for e in sse(response.text)[:-1])
                    tally.succeeded += 1
                    continue
                refused = problem(response, 429, "budget-exceeded")
                tally.refusals += 1
                if Decimal(refused["spend_usd"]) >= Decimal(refused["budget_usd"]):
                    return
                assert response.headers["retry-after"] == "1"
                await asyncio.sleep(0.01)  # held by calls in flight: a little later
            raise AssertionError("the budget was never spent")

    await asyncio.gather(*(client(n) for n in range(clients)))
    return tally


async def warm(instances: Sequence[Inference], users: Sequence[str]) -> None:
    """One call per instance and user without policies: credentials and aliases are then
    cached (the test apps' sessions share one connection: no concurrent queries)."""
    for inference in instances:
        for user in users:
            response = await inference.call(
                "POST", CHAT, identity=caller(None, user=user, key=None), json=ask()
            )
            assert response.status_code == 200, response.text
        await inference.events()


async def settled_cost(instances: Sequence[Inference], **match: Any) -> Decimal:
    """The cost telemetry would record for the governed calls: their events' sum."""
    events: list[LlmCallEvent] = []
    for inference in instances:
        events = await inference.events()  # one stream: every instance's events
    return sum(
        (Decimal(e.cost_usd) for e in events
         if e.cost_usd and all(getattr(e, k) == v for k, v in match.items())),
        Decimal(0),
    )  # fmt: skip


@asynccontextmanager
async def replicas(
    make_inference: MakeInference, upstream: Upstream, users: Sequence[str], **overrides: Any
) -> AsyncIterator[list[Inference]]:
    """Two inference apps sharing Redis, as two replicas."""
    async with AsyncExitStack() as stack:
        instances = [
            await stack.enter_async_context(
                governed(
                    make_inference,
                    upstream,
                    users=users,
                    replica=replica,
                    cache_seconds=300,
                    **overrides,
                )
            )
            for replica in range(2)
        ]
        await warm(instances, users)
        yield instances


async def test_concurrent_spend_across_two_replicas_ends_within_one_call_of_the_budget(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    limit = Decimal("0.1")
    async with replicas(make_inference, openai_upstream, [USER_A]) as instances:
        await seed(redis, "key", KEY_A)
        tally = await hammer(instances, [caller({"key": budget(str(limit))})])
        recorded = await settled_cost(instances, api_key_id=KEY_A)
        counter = await spent(redis, "key", KEY_A)
        assert counter == recorded
        assert recorded <= limit + CALL_COST
        assert tally.succeeded >= math.floor(limit / CALL_COST) - 1
        assert tally.refusals >= 50
        assert await held(redis, "key", KEY_A) == (0, 0)


async def test_a_team_budget_is_shared_by_two_keys_of_two_users(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    limit = Decimal("0.06")
    team = {"team": budget(str(limit), "month")}
    callers = [caller(team, user=USER_A, key=KEY_A, team=TEAM),
               caller(team, user=USER_B, key=KEY_B, team=TEAM)]  # fmt: skip
    async with replicas(make_inference, openai_upstream, [USER_A, USER_B]) as instances:
        for inference in instances:
            inference.app.state.runtime.clock = Clock(NOON)
        await seed(redis, "team", TEAM, period="month")
        tally = await hammer(instances, callers)
        recorded = await settled_cost(instances, team_id=TEAM)
        counter = await spent(redis, "team", TEAM, period="month")
        events = await instances[0].events()
    assert counter == recorded <= limit + CALL_COST
    assert tally.succeeded >= math.floor(limit / CALL_COST) - 1
    governed_events = [e for e in events if e.team_id == TEAM]
    assert {e.api_key_id for e in governed_events} == {KEY_A, KEY_B}
    assert {e.user_id for e in governed_events} == {USER_A, USER_B}


async def test_refusal_names_the_scope_and_the_reset(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    clock = Clock(NOON)
    async with governed(make_inference, openai_upstream, clock) as inference:
        await seed(redis, "key", KEY_A, "25.00", period="month")
        who = caller({"key": budget("25.00", "month")})
        body = problem(await inference.call("POST", CHAT, identity=who, json=ask()), 429,
                       "budget-exceeded")  # fmt: skip
        assert body["scope"] == "key"
        assert (body["budget_usd"], body["spend_usd"]) == ("25.00", "25.00")
        assert body["budget_resets_at"] == "2027-01-01T00:00:00+00:00"
        assert "budget of 25.00 USD a month is spent" in body["detail"]
        response = await inference.call("POST", CHAT, identity=who, json=ask())
        reset = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
        assert response.headers["retry-after"] == str(math.ceil(reset - NOON))

        await seed(redis, "user", USER_A, "3")
        total = caller({"user": budget("3")})
        body = problem(await inference.call("POST", CHAT, identity=total, json=ask()), 429,
                       "budget-exceeded")  # fmt: skip
        assert (body["scope"], body["budget_resets_at"]) == ("user", None)
    assert openai_upstream.control.requests_to(ROUTE) == []


async def test_a_day_budget_starts_again_at_utc_midnight(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    before = datetime(2026, 12, 3, 23, 59, 0, tzinfo=UTC).timestamp()
    after = datetime(2026, 12, 4, 0, 0, 1, tzinfo=UTC).timestamp()
    clock = Clock(before)
    who = caller({"key": budget("0.01", "day")})
    async with governed(make_inference, openai_upstream, clock) as inference:
        await seed(redis, "key", KEY_A, period="day", now=before)
        for _ in range(2):
            assert (await inference.call("POST", CHAT, identity=who, json=ask())).status_code == 200
            await inference.events()
        refused = await inference.call("POST", CHAT, identity=who, json=ask())
        assert problem(refused, 429, "budget-exceeded")["budget_resets_at"] == (
            "2026-12-04T00:00:00+00:00"
        )
        assert refused.headers["retry-after"] == "60"

        clock.now = after
        await seed(redis, "key", KEY_A, period="day", now=after)  # telemetry's: nothing yet
        assert (await inference.call("POST", CHAT, identity=who, json=ask())).status_code == 200
        await inference.events()
        assert await spent(redis, "key", KEY_A, period="day", now=before) == 2 * CALL_COST
        assert await spent(redis, "key", KEY_A, period="day", now=after) == CALL_COST


async def test_a_call_started_before_midnight_is_spent_in_that_day(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    before = datetime(2026, 12, 3, 23, 59, 59, tzinfo=UTC).timestamp()
    after = before + 2
    clock = Clock(before)
    who = caller({"key": budget("1", "day")})
    async with governed(make_inference, openai_upstream, clock) as inference:
        await seed(redis, "key", KEY_A, period="day", now=before)
        await seed(redis, "key", KEY_A, period="day", now=after)
        openai_upstream.control.delay(ROUTE, between_chunks_seconds=0.01)
        async with (
            served(inference, who) as client,
            client.stream("POST", CHAT, json=ask("words:20", stream=True)) as stream,
        ):
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            clock.now = after  # the stream goes on past midnight
            rest = [line async for line in lines]
        assert "data: [DONE]" in rest
        (event,) = [e for e in await inference.events() if e.api_key_id == KEY_A]
        assert await spent(redis, "key", KEY_A, period="day", now=before) == Decimal(
            event.cost_usd or 0
        )
        assert await spent(redis, "key", KEY_A, period="day", now=after) == 0


async def test_holds_of_calls_in_flight_refuse_with_retry_after_1_until_they_lapse(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    clock = Clock(NOON)
    who = caller({"key": budget("0.01")})
    async with governed(make_inference, openai_upstream, clock, budget_wait_seconds=0) as inference:
        await seed(redis, "key", KEY_A)
        # A call a replica admitted and never settled (it died): held until NOON + 100.
        await redis.zadd(held_key("key", KEY_A), {"dead-call:10000000": NOON + 100})
        await redis.set(held_sum_key("key", KEY_A), 10_000_000)
        refused = await inference.call("POST", CHAT, identity=who, json=ask())
        body = problem(refused, 429, "budget-exceeded")
        assert refused.headers["retry-after"] == "1"
        assert body["spend_usd"] == "0.00"
        assert "held by calls in flight" in body["detail"]

        clock.now = NOON + 101
        assert (await inference.call("POST", CHAT, identity=who, json=ask())).status_code == 200
        await inference.events()
        assert await held(redis, "key", KEY_A) == (0, 0)
        assert await spent(redis, "key", KEY_A) == CALL_COST


async def test_a_call_waits_for_holds_in_flight_to_settle_rather_than_be_refused(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    who = caller({"key": budget("0.01")})
    async with governed(make_inference, openai_upstream, Clock(NOON)) as inference:
        await seed(redis, "key", KEY_A)
        # Another call holds the whole budget; it settles (at no cost) while this one waits.
        await redis.zadd(held_key("key", KEY_A), {"other-call:10000000": NOON + 100})
        await redis.set(held_sum_key("key", KEY_A), 10_000_000)

        async def settle_the_other() -> None:
            await asyncio.sleep(0.2)
            await redis.zrem(held_key("key", KEY_A), "other-call:10000000")
            await redis.decrby(held_sum_key("key", KEY_A), 10_000_000)

        settling = asyncio.create_task(settle_the_other())
        response = await inference.call("POST", CHAT, identity=who, json=ask())
        await settling
        assert response.status_code == 200, response.text
        await inference.events()
        assert await held(redis, "key", KEY_A) == (0, 0)
        assert await spent(redis, "key", KEY_A) == CALL_COST


async def test_a_stream_whose_client_left_before_it_began_gives_its_hold_back(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    who = caller({"key": budget("1")})
    async with governed(make_inference, openai_upstream, Clock(NOON)) as inference:
        await seed(redis, "key", KEY_A)
        runtime = inference.app.state.runtime
        request = ChatRequest.model_validate(ask(stream=True)).model_dump(exclude_none=True)
        async with inference.app.state.sessionmaker() as db:
            answer, _ = await service.chat_stream(runtime, db, identity=who, request=request)
        assert (await held(redis, "key", KEY_A))[0] == 1
        del answer  # never sent: the client hung up before the response began
        gc.collect()
        for _ in range(200):
            if await held(redis, "key", KEY_A) == (0, 0):
                break
            await asyncio.sleep(0.01)
        assert await held(redis, "key", KEY_A) == (0, 0)
        (event,) = [e for e in await inference.events() if e.api_key_id == KEY_A]
        assert event.status == "cancelled"


async def test_alerts_at_50_80_and_100_percent_are_pushed_once(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    who = caller({"key": budget("0.02", "week")}, team=None)
    async with governed(make_inference, openai_upstream, Clock(NOON)) as inference:
        await seed(redis, "key", KEY_A, period="week")
        seen = []
        for _ in range(4):  # 25 %, 50 %, 75 %, 100 %
            assert (await inference.call("POST", CHAT, identity=who, json=ask())).status_code == 200
            await inference.events()
            seen.append(await redis.llen(ALERTS))
        assert (await inference.call("POST", CHAT, identity=who, json=ask())).status_code == 429
        assert seen == [0, 1, 1, 3]
        alerts = [json.loads(a) for a in reversed(await redis.lrange(ALERTS, 0, -1))]
        assert [a["threshold"] for a in alerts] == [50, 80, 100]
        assert alerts[0] == {
            "scope": "key", "id": KEY_A, "threshold": 50, "spend_usd": "0.010000000",
            "budget_usd": "0.02", "period": "week:2026-11-30", "at": NOON,
        }  # fmt: skip
        assert alerts[2]["spend_usd"] == "0.020000000"


async def test_a_failed_call_gives_its_hold_back_and_costs_nothing(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    who = caller({"key": budget("1")})
    async with governed(make_inference, openai_upstream, Clock(NOON)) as inference:
        await seed(redis, "key", KEY_A)
        openai_upstream.control.fail(ROUTE, status=400, message="no")
        assert (await inference.call("POST", CHAT, identity=who, json=ask())).status_code == 400
        await inference.events()
        nothing = caller({"key": budget("1")}, user=USER_B)  # no credential: no call at all
        response = await inference.call("POST", CHAT, identity=nothing, json=ask())
        assert response.status_code == 400, response.text
        await inference.events()
        assert await held(redis, "key", KEY_A) == (0, 0)
        assert await spent(redis, "key", KEY_A) == 0


async def test_a_stream_the_client_cut_short_settles_what_was_used(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    who = caller({"key": budget("1", tpm_limit=100_000)})
    clock = Clock(NOON)
    async with governed(make_inference, openai_upstream, clock) as inference:
        await seed(redis, "key", KEY_A)
        openai_upstream.control.delay(ROUTE, between_chunks_seconds=0.02)
        async with served(inference, who) as client:
            async with client.stream("POST", CHAT, json=ask("words:500", stream=True)) as stream:
                received = 0
                async for line in stream.aiter_lines():
                    received += line.startswith("data: ")
                    if received == 5:
                        break  # and hang up
            for _ in range(500):
                events = [e for e in await inference.events() if e.api_key_id == KEY_A]
                if events:
                    break
                await asyncio.sleep(0.01)
        (event,) = events
        assert event.status == "cancelled"
        assert event.completion_tokens is not None
        assert 0 < event.completion_tokens < 500
        assert event.cost_usd is not None
        assert await spent(redis, "key", KEY_A) == Decimal(event.cost_usd)
        assert await held(redis, "key", KEY_A) == (0, 0)
        window = int(NOON // 60)
        tokens = await redis.get(tokens_key("key", KEY_A, window))
        assert int(tokens) == (event.prompt_tokens or 0) + event.completion_tokens


async def test_embeddings_are_held_and_settled_too(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    who = caller({"user": budget("1")})
    body = {"model": "openai/text-embedding-3-small", "input": ["one two", "three"]}
    async with governed(make_inference, openai_upstream, Clock(NOON)) as inference:
        await seed(redis, "user", USER_A)
        response = await inference.call("POST", EMBED, identity=who, json=body)
        assert response.status_code == 200, response.text
        (event,) = [e for e in await inference.events() if e.operation == "embeddings"]
        await seed(redis, "user", USER_A, "1")
        refused = await inference.call("POST", EMBED, identity=who, json=body)
        problem(refused, 429, "budget-exceeded")
        assert event.cost_usd is not None
        assert Decimal(event.cost_usd) > 0
        assert await held(redis, "user", USER_A) == (0, 0)


async def test_a_model_without_a_price_is_refused_only_under_a_budget(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    async with governed(make_inference, openai_upstream) as inference:
        await seed(redis, "key", KEY_A)
        unpriced = ask() | {"model": "openai/mock-1"}
        refused = await inference.call(
            "POST", CHAT, identity=caller({"key": budget("5")}), json=unpriced
        )
        body = problem(refused, 403, "model-not-priced")
        assert body["model"] == "openai/mock-1"
        assert "INFERENCE_PRICES" in body["detail"]
        tokens_only = caller({"key": {"tpm_limit": 1000}})
        response = await inference.call("POST", CHAT, identity=tokens_only, json=unpriced)
        assert response.status_code == 200, response.text


async def test_budgets_fail_closed_when_telemetry_cannot_seed_a_counter(
    make_inference: MakeInference, openai_upstream: Upstream, refused_port: int
) -> None:
    async with governed(
        make_inference, openai_upstream, telemetry_url=f"http://127.0.0.1:{refused_port}"
    ) as inference:
        refused = await inference.call(
            "POST", CHAT, identity=caller({"key": budget("5")}), json=ask()
        )
        problem(refused, 503, "budget-unavailable")
        assert int(refused.headers["retry-after"]) >= 1
        assert openai_upstream.control.requests_to(ROUTE) == []
        # Without a budget, telemetry is not needed.
        tokens_only = caller({"key": {"tpm_limit": 1000}, "user": {"allowed_models": ["openai/*"]}})
        assert (
            await inference.call("POST", CHAT, identity=tokens_only, json=ask())
        ).status_code == 200


async def test_malformed_policies_are_refused(inference: Inference) -> None:
    for policies in ({"key": {"max_budget_usd": "lots"}}, {"others": {}}):
        response = await inference.call("POST", CHAT, identity=caller(policies), json=ask())
        problem(response, 401, "internal-identity")
    keyless = caller({"key": {"tpm_limit": 5}}, key=None)
    problem(await inference.call("POST", CHAT, identity=keyless, json=ask()), 401,
            "internal-identity")  # fmt: skip


# ---------------------------------------------------------------- holds the gateway took


def held_by_gateway(
    who: Identity, amount: int, *, scopes: tuple[ScopeKind, ...] = ("key",),
    until: float = NOON + 660, windows: tuple[tuple[int, int, int], ...] = (),
    issuer: str = "gateway",
) -> Identity:  # fmt: skip
    """`who`, with the hold the gateway took for the call (common.budgets.GatewayHold)."""
    hold = GatewayHold("gateway-call-1", amount, NOON, until, scopes, windows)
    return replace(who, hold=hold.to_wire(), iss=issuer)


async def take(redis: Redis, who: Identity) -> None:
    """What the gateway's script held in Redis for `who`'s hold."""
    assert who.hold is not None
    hold = GatewayHold.from_wire(who.hold)
    ids = {"key": who.kid, "user": who.user_id, "team": who.team}
    for scope in hold.scopes:
        scope_id = ids[scope]
        assert scope_id is not None
        await redis.zadd(held_key(scope, scope_id), {hold.member: hold.until})
        await redis.incrby(held_sum_key(scope, scope_id), hold.amount)


async def test_a_call_the_gateway_admitted_and_held_needs_no_admission_of_its_own(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis, refused_port: int
) -> None:
    # No spend counter, and no telemetry to seed one from: inference could not admit the
    # call itself (503), so a success means it took the gateway's hold over as it stood.
    who = held_by_gateway(caller({"key": budget("5", tpm_limit=1000)}), 10**9,
                          windows=((1, 300, 200),))  # fmt: skip
    async with governed(
        make_inference, openai_upstream, Clock(NOON),
        telemetry_url=f"http://127.0.0.1:{refused_port}",
    ) as inference:  # fmt: skip
        await take(redis, who)
        response = await inference.call("POST", CHAT, identity=who, json=ask())
        assert response.status_code == 200, response.text
        # The gateway's view of the token window, half a window in: 300 / 2 + 200 used.
        assert response.headers["x-ratelimit-limit-tokens"] == "1000"
        assert response.headers["x-ratelimit-remaining-tokens"] == "650"
        await inference.events()
        # Settled with the call event: the hold given back, and the key's next call will
        # be held what this one was estimated to cost (prices of 1000 USD a million tokens).
        assert await held(redis, "key", KEY_A) == (0, 0)
        estimate = int(await redis.get(standing_key(KEY_A)) or 0)
        assert to_nano(CALL_COST) <= estimate < 10**9
        assert await redis.ttl(standing_key(KEY_A)) > 0


@pytest.mark.parametrize("why", ["too little", "too short"])
async def test_a_hold_that_does_not_cover_the_call_is_replaced_in_one_step(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis, refused_port: int,
    why: str,
) -> None:  # fmt: skip
    # 1 nano-dollar, or until before the call's deadline: inference admits the call itself,
    # giving the gateway's hold back in the same script, whatever the verdict. Here it is
    # 503 (no spend counter, telemetry unreachable), and nothing stays held.
    # (The tests' request deadline is 10 s.)
    amount, until = (1, NOON + 660) if why == "too little" else (10**9, NOON + 5)
    who = held_by_gateway(caller({"key": budget("5")}), amount, until=until)
    async with governed(
        make_inference, openai_upstream, Clock(NOON),
        telemetry_url=f"http://127.0.0.1:{refused_port}",
    ) as inference:  # fmt: skip
        await take(redis, who)
        problem(await inference.call("POST", CHAT, identity=who, json=ask()), 503,
                "budget-unavailable")  # fmt: skip
        assert await held(redis, "key", KEY_A) == (0, 0)
        assert openai_upstream.control.requests_to(ROUTE) == []


async def test_a_replacing_hold_is_settled_as_its_own(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    who = held_by_gateway(caller({"key": budget("5")}), 1)
    async with governed(make_inference, openai_upstream, Clock(NOON)) as inference:
        await take(redis, who)
        await seed(redis, "key", KEY_A)
        response = await inference.call("POST", CHAT, identity=who, json=ask())
        assert response.status_code == 200, response.text
        await inference.events()
        assert await held(redis, "key", KEY_A) == (0, 0)
        assert await spent(redis, "key", KEY_A) == CALL_COST


async def test_only_the_gateway_hands_over_a_hold(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis, refused_port: int
) -> None:
    async with governed(
        make_inference, openai_upstream, Clock(NOON),
        telemetry_url=f"http://127.0.0.1:{refused_port}",
    ) as inference:  # fmt: skip
        # Relayed by another service (embeddings re-signs as itself): not taken over.
        relayed = held_by_gateway(caller({"key": budget("5")}), 10**9, issuer="embeddings")
        problem(await inference.call("POST", CHAT, identity=relayed, json=ask()), 503,
                "budget-unavailable")  # fmt: skip
        for hold in (
            {"id": "x"},
            {**relayed.hold, "amount": -1},
            {**relayed.hold, "scopes": ["org"]},
        ):  # type: ignore[dict-item]
            bad = replace(relayed, iss="gateway", hold=hold)
            problem(await inference.call("POST", CHAT, identity=bad, json=ask()), 401,
                    "internal-identity")  # fmt: skip


# ---------------------------------------------------------------- tokens per minute


async def test_tpm_refuses_at_the_limit_then_allows_once_the_window_slides(
    make_inference: MakeInference, openai_upstream: Upstream, redis: Redis
) -> None:
    clock = Clock(NOON)  # 30 s into a window
    who = caller({"key": {"tpm_limit": 20}, "team": {"tpm_limit": 1000}}, team=TEAM)
    async with governed(make_inference, openai_upstream, clock) as inference:
        first = await inference.call("POST", CHAT, identity=who, json=ask("words:20"))
        assert first.status_code == 200, first.text
        assert first.headers["x-ratelimit-limit-tokens"] == "20"
        assert first.headers["x-ratelimit-remaining-tokens"] == "20"
        used = first.json()["usage"]["total_tokens"]
        assert used == 21
        await inference.events()

        refused = await inference.call("POST", CHAT, identity=who, json=ask())
        body = problem(refused, 429, "rate-limited")
        assert (body["scope"], body["tpm_limit"]) == ("key", 20)
        # 30 s until this window is the previous one, then until 21 * (1 - t / 60) < 20.
        wait = int(refused.headers["retry-after"])
        assert wait == 33

        clock.now = NOON + 30  # a new window, but the whole last one still counts
        problem(await inference.call("POST", CHAT, identity=who, json=ask()), 429, "rate-limited")
        clock.now = NOON + wait
        allowed = await inference.call("POST", CHAT, identity=who, json=ask())
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["x-ratelimit-remaining-tokens"] == "0"
    assert len(openai_upstream.control.requests_to(ROUTE)) == 2


# ---------------------------------------------------------------- settlement and Redis


async def test_a_settlement_waits_with_its_event_while_redis_is_away(
    make_inference: MakeInference, openai_upstream: Upstream, server_path: Any
) -> None:
    from common import ports
    from inference.events import EventSink, MetricLabels

    who = caller({"key": {"tpm_limit": 1000}})
    async with governed(make_inference, openai_upstream, Clock(NOON)) as inference:
        runtime = inference.app.state.runtime
        port = ports.free_port()
        away = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.2)
        usual, runtime.sink = (
            runtime.sink,
            EventSink(away, buffer_size=100, labels=MetricLabels((), (), 0)),
        )
        runtime.sink.start()
        try:
            response = await inference.call("POST", CHAT, identity=who, json=ask())
            assert response.status_code == 200, response.text
            await asyncio.sleep(0.3)  # the sink has tried and failed at least once
            ((event, settlement),) = list(runtime.sink._buffer)
            assert event is not None
            assert settlement is not None
            process, url = devstack.start_redis(server_path, port)
            try:
                back = Redis.from_url(url)
                for _ in range(2000):  # the sink tries again within 5 s
                    if not runtime.sink._buffer:
                        break
                    await asyncio.sleep(0.01)
                tokens = await back.get(tokens_key("key", KEY_A, int(NOON // 60)))
                await back.aclose()
            finally:
                devstack.stop_process(process)
        finally:
            await runtime.sink.close(grace_seconds=0.1)
            runtime.sink = usual
            await away.aclose()
    assert tokens is not None
    assert int(tokens) == response.json()["usage"]["total_tokens"]
