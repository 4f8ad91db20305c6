"""Budget holds taken by the gateway (issue 18): a model call of an API key under a budget
is admitted and held in the script that checks the key, the key's standing estimate in
each budgeted scope, and the hold travels in the signed identity for inference to settle.
Whatever the gateway cannot decide alone (no estimate yet, no spend counter, a budget or
token limit reached) it leaves to inference, holding nothing. A hold that inference did
not take over (it answered with an error) is given back at once.

Against real Redis; the key names are common.budgets', which inference and auth use."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from common.budgets import (
    held_key,
    held_sum_key,
    spend_key,
    standing_key,
    tokens_key,
    utc,
)
from gateway.repository import WINDOW_SECONDS

from .conftest import Caller, Clock, KeyFactory, SessionFactory, Upstream
from .test_rate_limits import chat, gateway

USER = "00000000-0000-0000-0000-0000000000bb"
KEY = "11111111-1111-1111-1111-111111111111"
TEAM = "33333333-3333-3333-3333-333333333333"
CHAT = "/v1/chat/completions"
ESTIMATE = 12_345  # nano-dollars
POLICIES = {
    "key": {"max_budget_usd": "10"},
    "user": {"allowed_models": ["openai/*"]},  # governs no spend: not a scope of the hold
    "team": {"max_budget_usd": "0.5", "budget_period": "day", "tpm_limit": 1000},
}


async def seed(redis: Redis, clock: Clock, *, key_spent: int = 0, team_spent: int = 0) -> None:
    """Spend counters (as inference seeds them from telemetry) and the key's estimate."""
    moment = utc(clock.now)
    await redis.set(spend_key("key", KEY, "total", moment), key_spent)
    await redis.set(spend_key("team", TEAM, "day", moment), team_spent)
    await redis.set(standing_key(KEY), ESTIMATE)


async def budgeted_key(redis: Redis, api_key_for: KeyFactory) -> tuple[Caller, Clock]:
    """A key under POLICIES, its counters seeded, and a clock in the middle of a window."""
    caller = await api_key_for(team_id=TEAM, policies=POLICIES)
    clock = Clock.in_window(WINDOW_SECONDS / 2)
    await seed(redis, clock)
    return caller, clock


async def holds(redis: Redis, scope: Any, scope_id: str) -> tuple[list[str], int]:
    members = [m.decode() for m in await redis.zrange(held_key(scope, scope_id), 0, -1)]
    return members, int(await redis.get(held_sum_key(scope, scope_id)) or 0)


async def test_a_budgeted_keys_model_call_is_held_in_the_step_that_checks_the_key(
    upstream: Upstream, redis: Redis, redis_url: str, api_key_for: KeyFactory
) -> None:
    caller, clock = await budgeted_key(redis, api_key_for)
    window = int(clock.now // WINDOW_SECONDS)
    await redis.set(tokens_key("team", TEAM, window - 1), 400)
    await redis.set(tokens_key("team", TEAM, window), 100)
    async with gateway(upstream, redis_url, clock) as c:
        answer = await c.post(CHAT, json={}, headers=caller.headers)
    assert answer.status_code == 200, answer.text
    hold = answer.json()["identity"]["hold"]
    # Held in the budgeted scopes (the key's and the team's), the token window as seen.
    assert hold["amount"] == ESTIMATE
    assert hold["scopes"] == ["key", "team"]
    assert hold["windows"] == [[2, 400, 100]]  # the team, second of the governed scopes
    assert hold["at"] == clock.now
    assert hold["until"] == clock.now + 660
    member = f"{hold['id']}:{ESTIMATE}"
    assert await holds(redis, "key", KEY) == ([member], ESTIMATE)
    assert await holds(redis, "team", TEAM) == ([member], ESTIMATE)
    assert await holds(redis, "user", USER) == ([], 0)


@pytest.mark.parametrize(
    "situation",
    ["no estimate yet", "no spend counter", "budget spent", "budget held", "tokens spent"],
)
async def test_what_the_gateway_cannot_admit_is_left_to_inference_holding_nothing(
    upstream: Upstream, redis: Redis, redis_url: str, api_key_for: KeyFactory, situation: str
) -> None:
    caller, clock = await budgeted_key(redis, api_key_for)
    moment, window = utc(clock.now), int(clock.now // WINDOW_SECONDS)
    if situation == "no estimate yet":
        await redis.delete(standing_key(KEY))
    elif situation == "no spend counter":  # lost with Redis: inference rebuilds it
        await redis.delete(spend_key("team", TEAM, "day", moment))
    elif situation == "budget spent":
        await redis.set(spend_key("team", TEAM, "day", moment), 500_000_000)
    elif situation == "budget held":
        await redis.zadd(held_key("team", TEAM), {"other:400000000": clock.now + 60})
        await redis.set(held_sum_key("team", TEAM), 500_000_000)
    else:
        await redis.set(tokens_key("team", TEAM, window), 1000)
    async with gateway(upstream, redis_url, clock) as c:
        answer = await c.post(CHAT, json={}, headers=caller.headers)
    # Forwarded all the same: inference admits or refuses it, and says why.
    assert answer.status_code == 200, answer.text
    assert answer.json()["identity"]["hold"] is None
    assert (await holds(redis, "key", KEY))[0] == []


async def test_only_model_calls_of_api_keys_are_held(
    upstream: Upstream,
    redis: Redis,
    redis_url: str,
    api_key_for: KeyFactory,
    session_for: SessionFactory,
) -> None:
    caller = await api_key_for(team_id=TEAM, policies=POLICIES)
    session = await session_for(policy={"max_budget_usd": "5"})
    clock = Clock.in_window(WINDOW_SECONDS / 2)
    await seed(redis, clock)
    async with gateway(upstream, redis_url, clock) as c:
        collections = await c.get("/v1/collections", headers=caller.headers)
        # A model call of the embeddings service's: it calls inference as itself.
        query = await c.post("/v1/collections/c1/query", json={}, headers=caller.headers)
        signed_in = await chat(c, session)
    for answer in (collections, query, signed_in):
        assert answer.json()["identity"]["hold"] is None
    assert (await holds(redis, "key", KEY))[0] == []


async def test_a_call_refused_by_a_rate_limit_holds_nothing(
    upstream: Upstream, redis: Redis, redis_url: str, api_key_for: KeyFactory
) -> None:
    policies = {**POLICIES, "key": {"max_budget_usd": "10", "rpm_limit": 1}}
    caller = await api_key_for(team_id=TEAM, policies=policies)
    clock = Clock.in_window(WINDOW_SECONDS / 2)
    await seed(redis, clock)
    async with gateway(upstream, redis_url, clock) as c:
        first = await c.post(CHAT, json={}, headers=caller.headers)
        second = await c.post(CHAT, json={}, headers=caller.headers)
    assert (first.status_code, second.status_code) == (200, 429)
    member = f"{first.json()['identity']['hold']['id']}:{ESTIMATE}"
    assert await holds(redis, "key", KEY) == ([member], ESTIMATE)


async def test_a_token_limit_alone_is_checked_without_an_estimate(
    upstream: Upstream, redis: Redis, redis_url: str, api_key_for: KeyFactory
) -> None:
    caller = await api_key_for(policies={"key": {"tpm_limit": 100}})
    clock = Clock.in_window(WINDOW_SECONDS / 2)
    async with gateway(upstream, redis_url, clock) as c:
        answer = await c.post(CHAT, json={}, headers=caller.headers)
    hold = answer.json()["identity"]["hold"]
    assert (hold["amount"], hold["scopes"], hold["windows"]) == (0, [], [[1, 0, 0]])
    assert (await holds(redis, "key", KEY))[0] == []


async def until_released(redis: Redis, seconds: float = 5.0) -> tuple[list[str], int]:
    """The key's holds once the gateway's release (in the background) has run."""
    for _ in range(int(seconds / 0.02)):
        found = await holds(redis, "key", KEY)
        if not found[0]:
            return found
        await asyncio.sleep(0.02)
    return await holds(redis, "key", KEY)


@pytest.mark.parametrize("status", [400, 403, 404, 422, 429, 500, 502])
async def test_a_hold_the_upstream_did_not_take_over_is_given_back(
    upstream: Upstream, redis: Redis, redis_url: str, api_key_for: KeyFactory, status: int
) -> None:
    caller, clock = await budgeted_key(redis, api_key_for)
    async with gateway(upstream, redis_url, clock) as c:
        answer = await c.post(
            CHAT, json={}, headers={**caller.headers, "X-Answer-Status": str(status)}
        )
        assert answer.status_code == status
        assert answer.json()["identity"]["hold"]["amount"] == ESTIMATE
        assert await until_released(redis) == ([], 0)
    assert await holds(redis, "team", TEAM) == ([], 0)


async def test_a_hold_is_given_back_when_the_upstream_cannot_be_reached(
    upstream: Upstream, redis: Redis, redis_url: str, api_key_for: KeyFactory
) -> None:
    caller, clock = await budgeted_key(redis, api_key_for)
    # Nothing listens on the inference URL given.
    async with gateway(upstream, redis_url, clock, inference_url="http://127.0.0.1:9") as c:
        answer = await c.post(CHAT, json={}, headers=caller.headers)
        assert answer.status_code == 502
        assert await until_released(redis) == ([], 0)
