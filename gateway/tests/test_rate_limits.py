"""Rate limits as sliding windows, and the policies' rpm limits of keys, users and teams,
against real Redis; time moves on the gateway's injectable clock, never by sleeping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from redis.asyncio import Redis

from devkit.testing import LiveServer
from gateway.main import create_app
from gateway.repository import WINDOW_SECONDS

from .conftest import Caller, Clock, KeyFactory, SessionFactory, Upstream, gateway_settings

USER = "00000000-0000-0000-0000-0000000000bb"
TEAM = "33333333-3333-3333-3333-333333333333"
CHAT = "/v1/chat/completions"


@asynccontextmanager
async def gateway(
    upstream: Upstream, redis_url: str, clock: Clock, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(gateway_settings(upstream, redis_url, **settings), clock=clock)
    async with LiveServer(app) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield client


async def chat(client: httpx.AsyncClient, caller: Caller) -> httpx.Response:
    headers = caller.unsafe_headers()
    if caller.cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in caller.cookies.items())
    return await client.post(CHAT, json={}, headers=headers)


async def statuses(client: httpx.AsyncClient, caller: Caller, n: int) -> list[int]:
    return [(await chat(client, caller)).status_code for _ in range(n)]


# ---------------------------------------------------------------- sliding windows


async def test_no_burst_of_twice_the_limit_across_a_window_boundary(
    upstream: Upstream, redis_url: str, session_for: SessionFactory
) -> None:
    """A fixed window let a caller spend its limit at the end of one minute and again at
    the start of the next: twice the limit within two seconds."""
    caller = await session_for()
    clock = Clock.in_window(WINDOW_SECONDS - 1)  # the last second of a window
    async with gateway(upstream, redis_url, clock, rate_limit_model_per_minute=8) as c:
        first = await statuses(c, caller, 8)
        clock.now += 2  # one second into the next window
        refused = await chat(c, caller)
        # The previous window still weighs 59/60 of its 8: one more passes only once it
        # weighs 7 (at 7.5 s into the window), 6.5 s from now.
        clock.now += 6.5
        later = await statuses(c, caller, 2)
        clock.now += WINDOW_SECONDS / 2  # 37.5 s in: 8 x 0.375 = 3, and 1 counted: 4 more
        halfway = await statuses(c, caller, 5)
    assert first == [200] * 8
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "7"
    assert refused.headers["ratelimit-limit"] == "8"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.json()["type"].endswith(":rate-limited")
    assert later == [200, 429]
    assert halfway == [200, 200, 200, 200, 429]
    assert upstream.hits == 8 + 1 + 4


async def test_every_bucket_slides_anonymous_too(
    upstream: Upstream, redis_url: str, redis: Redis
) -> None:
    # `redis`: this client address's counts start from an empty database.
    clock = Clock.in_window(WINDOW_SECONDS - 1)
    async with gateway(upstream, redis_url, clock, rate_limit_anonymous_per_minute=4) as c:
        first = [(await c.post("/auth/login", json={})).status_code for _ in range(4)]
        clock.now += 2
        next_window = await c.post("/auth/login", json={})
    assert first == [200] * 4
    assert next_window.status_code == 429
    assert next_window.json()["scope"] == "address"
    assert int(next_window.headers["retry-after"]) == 14  # 60 x (1 - 3/4) - 1


async def test_refused_requests_consume_nothing(
    upstream: Upstream, redis_url: str, session_for: SessionFactory
) -> None:
    """A client that keeps retrying while refused is not locked out for longer: only the
    requests let through count."""
    caller = await session_for()
    clock = Clock.in_window(WINDOW_SECONDS / 2)
    async with gateway(upstream, redis_url, clock, rate_limit_model_per_minute=3) as c:
        first = await statuses(c, caller, 3)
        hammering = await statuses(c, caller, 20)
        clock.now += WINDOW_SECONDS  # halfway through the next window: 3 x 0.5 weigh 1.5
        after = await statuses(c, caller, 2)
    assert first == [200] * 3
    assert set(hammering) == {429}
    assert after == [200, 429]


# ---------------------------------------------------------------- policies' rpm limits


async def test_a_keys_rpm_limit_counts_its_model_calls_only(
    upstream: Upstream, redis_url: str, api_key_for: KeyFactory
) -> None:
    key = await api_key_for(policies={"key": {"rpm_limit": 2}})
    clock = Clock.in_window(WINDOW_SECONDS / 2)
    async with gateway(upstream, redis_url, clock, rate_limit_model_per_minute=100) as c:
        model = await statuses(c, key, 2)
        refused = await chat(c, key)
        others = [(await c.get("/v1/models", headers=key.headers)).status_code for _ in range(4)]
    assert model == [200, 200]
    assert refused.status_code == 429
    problem = refused.json()
    assert (problem["scope"], problem["limit"]) == ("key", 2)
    assert "API key" in problem["detail"]
    assert "2 requests a minute" in problem["detail"]
    assert refused.headers["ratelimit-limit"] == "2"
    assert 1 <= int(refused.headers["retry-after"]) <= WINDOW_SECONDS
    assert others == [200] * 4  # the rpm limit is a limit on model calls


async def test_a_users_rpm_limit_is_the_tighter_of_it_and_the_role_default(
    upstream: Upstream, redis_url: str, session_for: SessionFactory, api_key_for: KeyFactory
) -> None:
    """A user's rpm limit and the role default count in one counter, shared by all of the
    user's sessions and keys; the lower of the two limits it."""
    policy = {"rpm_limit": 3}
    session = await session_for(user_id=USER, policy=policy)
    key = await api_key_for(user_id=USER, policies={"user": policy})
    clock = Clock.in_window(WINDOW_SECONDS / 2)
    async with gateway(upstream, redis_url, clock, rate_limit_model_per_minute=10) as c:
        by_session = await statuses(c, session, 2)
        by_key = await statuses(c, key, 1)
        refused = await chat(c, session)
    assert by_session + by_key == [200] * 3
    assert (refused.json()["scope"], refused.json()["limit"]) == ("user", 3)
    assert "Your user's rate limit of 3" in refused.json()["detail"]

    # A role default below the user's limit is the one that refuses.
    roomy = await session_for(user_id="u-roomy", policy={"rpm_limit": 50})
    async with gateway(upstream, redis_url, clock, rate_limit_model_per_minute=2) as c:
        passed = await statuses(c, roomy, 2)
        refused = await chat(c, roomy)
    assert passed == [200, 200]
    assert (refused.json()["scope"], refused.json()["limit"]) == ("role", 2)


async def test_a_teams_rpm_limit_is_shared_by_its_keys_and_refusals_take_nothing(
    upstream: Upstream, redis_url: str, api_key_for: KeyFactory
) -> None:
    team = {"team": {"rpm_limit": 5}}
    narrow = await api_key_for(
        key="sk-team-narrow-000000000000000000000",
        key_id="44444444-4444-4444-4444-444444444444",
        team_id=TEAM,
        policies={"key": {"rpm_limit": 2}, **team},
    )
    other = await api_key_for(
        key="sk-team-other-0000000000000000000000",
        key_id="55555555-5555-5555-5555-555555555555",
        user_id="00000000-0000-0000-0000-0000000000dd",
        team_id=TEAM,
        policies=team,
    )
    clock = Clock.in_window(WINDOW_SECONDS / 2)
    async with gateway(upstream, redis_url, clock, rate_limit_model_per_minute=100) as c:
        first = await chat(c, narrow)
        narrow_rest = await statuses(c, narrow, 6)  # 1 more, then refused by its key
        other_calls = await statuses(c, other, 3)  # the team's 5 - 2: refusals took none
        refused = await chat(c, other)
    # The tightest limit is the one the headers describe: the key's 2, not the team's 5.
    assert (first.headers["ratelimit-limit"], first.headers["ratelimit-remaining"]) == ("2", "1")
    assert narrow_rest == [200] + [429] * 5
    assert other_calls == [200] * 3
    assert refused.status_code == 429
    assert (refused.json()["scope"], refused.json()["limit"]) == ("team", 5)
    assert "team" in refused.json()["detail"]
    assert upstream.hits == 5


async def test_the_headers_describe_the_tightest_limit(
    upstream: Upstream, redis_url: str, api_key_for: KeyFactory
) -> None:
    key = await api_key_for(
        team_id=TEAM, policies={"key": {"rpm_limit": 10}, "team": {"rpm_limit": 4}}
    )
    clock = Clock.in_window(WINDOW_SECONDS / 2)
    async with gateway(upstream, redis_url, clock, rate_limit_model_per_minute=6) as c:
        answers = [await chat(c, key) for _ in range(4)]
    assert [r.headers["ratelimit-limit"] for r in answers] == ["4"] * 4
    assert [r.headers["ratelimit-remaining"] for r in answers] == ["3", "2", "1", "0"]
    # Until the window ends while some remain; then until one more would pass.
    assert answers[0].headers["ratelimit-reset"] == str(WINDOW_SECONDS // 2)
    assert answers[3].headers["ratelimit-reset"] == str(WINDOW_SECONDS // 2 + WINDOW_SECONDS // 4)


# ---------------------------------------------------------------- the signed identity


async def test_the_identity_carries_the_keys_team_and_policies(
    upstream: Upstream, redis_url: str, api_key_for: KeyFactory
) -> None:
    policies = {"key": {"allowed_models": ["openai/mock-*"]}, "team": {"max_budget_usd": "25"}}
    team_key = await api_key_for(team_id=TEAM, policies=policies)
    clock = Clock.in_window(WINDOW_SECONDS / 2)
    async with gateway(upstream, redis_url, clock) as c:
        # Every upstream gets the same identity: a model call, an embeddings and an auth route.
        answers = [
            await c.post(CHAT, json={}, headers=team_key.headers),
            await c.get("/v1/collections", headers=team_key.headers),
            await c.get("/auth/me", headers=team_key.headers),
        ]
    for answer in answers:
        identity = answer.json()["identity"]
        assert (identity["team"], identity["policies"]) == (TEAM, policies)


async def test_the_identity_carries_the_cache_defaults_which_limit_nothing(
    upstream: Upstream, redis_url: str, api_key_for: KeyFactory
) -> None:
    """A key's and its team's response cache defaults (common.policy.CachePolicy) reach the
    services as auth resolved them; beside an rpm limit they change nothing of it."""
    cached_only = {
        "key": {"cache": {"mode": "semantic", "ttl_seconds": 600, "threshold": 0.9}},
        "team": {"cache": {"mode": "exact", "temperature": True}},
    }
    cache_key = await api_key_for(team_id=TEAM, policies=cached_only)
    limited = await api_key_for(
        key="sk-cache-limited-00000000000000000000",
        key_id="66666666-6666-6666-6666-666666666666",
        policies={"key": {"rpm_limit": 2, "cache": {"mode": "exact"}}},
    )
    clock = Clock.in_window(WINDOW_SECONDS / 2)
    async with gateway(upstream, redis_url, clock, rate_limit_model_per_minute=100) as c:
        calls = [await chat(c, cache_key) for _ in range(3)]
        limited_statuses = await statuses(c, limited, 3)
    assert [r.status_code for r in calls] == [200] * 3
    assert calls[0].json()["identity"]["policies"] == cached_only
    assert limited_statuses == [200, 200, 429]


async def test_a_sessions_identity_carries_the_users_policy(
    upstream: Upstream, redis_url: str, session_for: SessionFactory, api_key_for: KeyFactory
) -> None:
    policy = {"max_budget_usd": "5.00", "budget_period": "month", "tpm_limit": 1000}
    governed = await session_for(policy=policy)
    free = await session_for(user_id="u-free")
    plain_key = await api_key_for()
    clock = Clock.in_window(WINDOW_SECONDS / 2)
    async with gateway(upstream, redis_url, clock) as c:
        seen = [
            (await chat(c, caller)).json()["identity"] for caller in (governed, free, plain_key)
        ]
    assert (seen[0]["team"], seen[0]["policies"]) == (None, {"user": policy})
    assert (seen[1]["team"], seen[1]["policies"]) == (None, None)
    assert (seen[2]["team"], seen[2]["policies"]) == (None, None)
