"""Authentication, CSRF, permissions and rate limits at the gateway, against real Redis."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from common.principals import (
    API_KEY_INVALID,
    API_KEY_LAST_USED,
    API_KEY_PREFIX,
    ApiKeyPrincipal,
    SessionStore,
    secret_hash,
)
from devkit import devstack
from devkit.testing import LiveServer
from gateway.main import create_app
from gateway.metrics import REGISTRY

from .conftest import (
    VIEWER,
    KeyFactory,
    SessionFactory,
    Upstream,
    gateway_settings,
    in_one_window,
)


async def test_no_credentials_is_401_and_nothing_is_forwarded(
    gateway: str, upstream: Upstream
) -> None:
    async with httpx.AsyncClient(base_url=gateway) as c:
        response = await c.get("/v1/models")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert upstream.hits == 0


@pytest.mark.parametrize(
    "authorization",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not-a-key", "Bearer sk-unknown-key-00000000000"],
)
async def test_bad_authorization_is_401(
    gateway: str, upstream: Upstream, authorization: str
) -> None:
    async with httpx.AsyncClient(base_url=gateway) as c:
        response = await c.get("/v1/models", headers={"Authorization": authorization})
    # The unknown key goes to auth's resolver, which the test upstream does not serve (404).
    assert response.status_code == 401
    assert upstream.hits == 0


async def test_unknown_or_expired_session_is_401(gateway: str, session_for: SessionFactory) -> None:
    stale = await session_for(now=time.time() - 3600, idle=1800)
    async with httpx.AsyncClient(base_url=gateway) as c:
        unknown = await c.get("/v1/models", headers={"Cookie": "session=made-up-token"})
        expired = await c.get(
            "/v1/models", headers={"Cookie": f"session={stale.cookies['session']}"}
        )
    assert unknown.status_code == 401
    assert expired.status_code == 401


async def test_session_idle_time_slides_on_use(
    gateway: str, session_for: SessionFactory, redis: Redis
) -> None:
    caller = await session_for(now=time.time() - 1000, idle=1800)
    key = "auth:session:" + secret_hash(caller.cookies["session"])
    before = float(await redis.hget(key, "last_seen_at"))  # type: ignore[misc]
    async with httpx.AsyncClient(base_url=gateway, cookies=caller.cookies) as c:
        assert (await c.get("/v1/models")).status_code == 200
    after = float(await redis.hget(key, "last_seen_at"))  # type: ignore[misc]
    assert after > before + 900
    assert await redis.ttl(key) > 1700


async def test_csrf_is_required_for_unsafe_cookie_requests(
    gateway: str, session_for: SessionFactory, upstream: Upstream
) -> None:
    caller = await session_for()
    other = await session_for(user_id="00000000-0000-0000-0000-0000000000cc")
    async with httpx.AsyncClient(base_url=gateway, cookies=caller.cookies) as c:
        missing = await c.post("/v1/chat/completions", json={})
        wrong = await c.post("/v1/chat/completions", json={}, headers={"X-CSRF-Token": "nope"})
        # Another session's valid token does not do either: it is bound to its session.
        foreign = await c.post(
            "/v1/chat/completions", json={}, headers={"X-CSRF-Token": other.csrf or ""}
        )
        safe = await c.get("/v1/models")
        right = await c.post("/v1/chat/completions", json={}, headers=caller.unsafe_headers())
    for response in (missing, wrong, foreign):
        assert response.status_code == 403
        assert response.json()["type"].endswith(":csrf")
    assert safe.status_code == 200
    assert right.status_code == 200
    assert upstream.hits == 2


async def test_api_keys_need_no_csrf_and_carry_their_own_identity(
    gateway: str, api_key_for: KeyFactory, redis: Redis
) -> None:
    caller = await api_key_for()
    async with httpx.AsyncClient(base_url=gateway, headers=caller.headers) as c:
        response = await c.post("/v1/chat/completions", json={})
    assert response.status_code == 200
    identity = response.json()["identity"]
    assert identity["kind"] == "api_key"
    assert identity["kid"] == "11111111-1111-1111-1111-111111111111"
    # The use is recorded for auth to write as last_used_at, without a DB write here.
    assert await redis.hget(API_KEY_LAST_USED, identity["kid"]) is not None  # type: ignore[misc]


async def test_revoked_or_expired_keys_are_refused(
    gateway: str, api_key_for: KeyFactory, redis: Redis
) -> None:
    expired = await api_key_for(key="sk-expired-0000000000000000000", expires_at=time.time() - 1)
    revoked = await api_key_for(key="sk-revoked-0000000000000000000")
    await redis.set(API_KEY_PREFIX + secret_hash("sk-revoked-0000000000000000000"), API_KEY_INVALID)
    async with httpx.AsyncClient(base_url=gateway) as c:
        for caller in (expired, revoked):
            assert (await c.get("/v1/models", headers=caller.headers)).status_code == 401


async def test_missing_permission_is_403(
    gateway: str, session_for: SessionFactory, upstream: Upstream
) -> None:
    viewer = await session_for(VIEWER, roles=("viewer",))
    async with httpx.AsyncClient(base_url=gateway, cookies=viewer.cookies) as c:
        response = await c.post("/v1/chat/completions", json={}, headers=viewer.unsafe_headers())
        admin_only = await c.get("/auth/users")
    assert response.status_code == 403
    assert "inference:invoke" in response.json()["detail"]
    assert admin_only.status_code == 403
    assert upstream.hits == 0


async def test_session_only_routes_refuse_api_keys(gateway: str, api_key_for: KeyFactory) -> None:
    caller = await api_key_for()
    async with httpx.AsyncClient(base_url=gateway, headers=caller.headers) as c:
        response = await c.post("/auth/password", json={})
    assert response.status_code == 403
    assert response.json()["type"].endswith(":session-required")


async def test_rate_limit_429_with_headers_shared_by_two_gateways(
    upstream: Upstream, redis_url: str, session_for: SessionFactory
) -> None:
    settings = gateway_settings(upstream, redis_url, rate_limit_per_minute=5)
    caller = await session_for()
    clock = in_one_window()
    apps = (create_app(settings, clock=clock), create_app(settings, clock=clock))
    async with (
        LiveServer(apps[0]) as one,
        LiveServer(apps[1]) as two,
        httpx.AsyncClient(cookies=caller.cookies) as c,
    ):
        responses = [await c.get(f"{(one, two)[i % 2].url}/v1/models") for i in range(6)]
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 200, 200, 200, 429]
    assert [r.headers["ratelimit-remaining"] for r in responses[:5]] == ["4", "3", "2", "1", "0"]
    limited = responses[-1]
    assert limited.headers["ratelimit-limit"] == "5"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["content-type"] == "application/problem+json"
    assert upstream.hits == 5


async def test_model_calls_have_their_own_tighter_budget(
    upstream: Upstream, redis_url: str, session_for: SessionFactory
) -> None:
    settings = gateway_settings(
        upstream, redis_url, rate_limit_per_minute=100, rate_limit_model_per_minute=2
    )
    caller = await session_for()
    before = refused_model_calls()
    async with (
        LiveServer(create_app(settings, clock=in_one_window())) as gw,
        httpx.AsyncClient(
            base_url=gw.url, cookies=caller.cookies, headers=caller.unsafe_headers()
        ) as c,
    ):
        model = [(await c.post("/v1/chat/completions", json={})).status_code for _ in range(3)]
        other = (await c.get("/v1/models")).status_code
    assert model == [200, 200, 429]
    assert other == 200
    assert refused_model_calls() - before == 1


def refused(budget: str) -> float:
    sample = REGISTRY.get_sample_value("gateway_rate_limited_requests_total", {"budget": budget})
    return sample or 0.0


def refused_model_calls() -> float:
    return refused("model")


async def test_role_budgets_take_the_most_generous(
    upstream: Upstream, redis_url: str, session_for: SessionFactory
) -> None:
    settings = gateway_settings(
        upstream,
        redis_url,
        rate_limit_per_minute=1,
        rate_limits={"admin": {"default": 3, "model": 3}},
    )
    admin = await session_for(roles=("member", "admin"))
    async with (
        LiveServer(create_app(settings, clock=in_one_window())) as gw,
        httpx.AsyncClient(base_url=gw.url, cookies=admin.cookies) as c,
    ):
        statuses = [(await c.get("/v1/models")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_anonymous_routes_are_limited_per_client_ip(
    upstream: Upstream, redis_url: str, redis: Redis
) -> None:
    # `redis`: this client's count starts from an empty database and is cleared afterwards.
    settings = gateway_settings(upstream, redis_url, rate_limit_anonymous_per_minute=2)
    gateway = create_app(settings, clock=in_one_window())
    async with LiveServer(gateway) as gw, httpx.AsyncClient(base_url=gw.url) as c:
        statuses = [(await c.post("/auth/login", json={})).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


async def member_session(redis: Redis) -> dict[str, str]:
    """The Cookie header of a member's session, stored in `redis`."""
    token, _, _ = await SessionStore(redis).create(
        user_id="u1", roles=("member",), permissions=("models:read",), now=time.time(),
        idle_timeout=600, lifetime=3600, ip="", user_agent="",
    )  # fmt: skip
    return {"Cookie": f"session={token}"}


async def test_redis_down_means_503_and_nothing_gets_through(
    upstream: Upstream, tmp_path: Path
) -> None:
    server, url = await asyncio.to_thread(devstack.start_redis, tmp_path)
    redis = Redis.from_url(url)
    try:
        cookie = await member_session(redis)
        key = {"Authorization": "Bearer sk-xxxxxxxxxxxx"}
        app = create_app(gateway_settings(upstream, url))
        async with LiveServer(app) as gw, httpx.AsyncClient(base_url=gw.url) as c:
            assert (await c.get("/v1/models", headers=cookie)).status_code == 200
            await asyncio.to_thread(devstack.stop_process, server)
            with_cookie = await c.get("/v1/models", headers=cookie)
            with_key = await c.get("/v1/models", headers=key)
            anonymous = await c.get("/v1/models")
            ready = await c.get("/readyz")
    finally:
        await asyncio.to_thread(devstack.stop_process, server)
        await redis.aclose()
    assert with_cookie.status_code == 503
    assert with_cookie.headers["content-type"] == "application/problem+json"
    assert with_key.status_code == 503
    assert anonymous.status_code == 401
    assert ready.status_code == 503
    assert upstream.hits == 1


async def test_a_paused_redis_is_a_quick_503_then_refused_at_once_until_it_answers(
    upstream: Upstream, tmp_path: Path
) -> None:
    """A Redis that takes connections and answers nothing (paused, swapping, cut off): the
    gateway waits GATEWAY_REDIS_TIMEOUT_SECONDS, not redis-py's seconds, answers 503 with
    Retry-After, and refuses the next callers at once for as long again rather than
    making each wait; it admits again as soon as Redis answers."""
    server, url = await asyncio.to_thread(devstack.start_redis, tmp_path)
    redis = Redis.from_url(url)
    try:
        cookie = await member_session(redis)
        app = create_app(gateway_settings(upstream, url, redis_timeout_seconds=0.5))
        async with LiveServer(app) as gw, httpx.AsyncClient(base_url=gw.url) as c:
            assert (await c.get("/v1/models", headers=cookie)).status_code == 200
            server.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                first = await c.get("/v1/models", headers=cookie)
                first_took = time.monotonic() - started
                started = time.monotonic()
                second = await c.get("/v1/models", headers={"Authorization": "Bearer sk-x"})
                second_took = time.monotonic() - started
                anonymous = await c.get("/v1/models")
            finally:
                server.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.6)  # the outage's hold has passed
            back = await c.get("/v1/models", headers=cookie)
    finally:
        await asyncio.to_thread(devstack.stop_process, server)
        await redis.aclose()
    for refused in (first, second):
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"] == "1"
    assert 0.5 <= first_took < 1.0  # the timeout, once: not retried, not redis-py's 5 s
    assert second_took < 0.25  # refused at once: Redis is known to be away
    assert anonymous.status_code == 401  # no credential: nothing to ask Redis
    assert back.status_code == 200
    assert upstream.hits == 2


async def test_cors_allows_only_listed_origins_with_credentials(
    upstream: Upstream, redis_url: str, session_for: SessionFactory
) -> None:
    settings = gateway_settings(upstream, redis_url, cors_origins=["https://app.example.com"])
    caller = await session_for()
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-csrf-token",
    }
    async with LiveServer(create_app(settings)) as gw, httpx.AsyncClient(base_url=gw.url) as c:
        allowed = await c.options(
            "/v1/chat/completions", headers={"Origin": "https://app.example.com", **preflight}
        )
        refused = await c.options(
            "/v1/chat/completions", headers={"Origin": "https://evil.example.com", **preflight}
        )
        c.cookies.update(caller.cookies)
        actual = await c.get("/v1/models", headers={"Origin": "https://app.example.com"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "x-csrf-token" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in refused.headers
    assert actual.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "ratelimit-remaining" in actual.headers["access-control-expose-headers"].lower()


# ---------------------------------------------------------------- invalid API keys


def unknown_keys(n: int) -> list[dict[str, str]]:
    return [{"Authorization": f"Bearer sk-unknown-{i:04d}-000000000000000000"} for i in range(n)]


async def test_unknown_api_keys_are_refused_without_asking_auth_past_a_budget(
    upstream: Upstream, redis_url: str, redis: Redis, api_key_for: KeyFactory
) -> None:
    """Each unknown key cost auth a call and a database query, with no limit."""
    settings = gateway_settings(
        upstream, redis_url, invalid_api_keys_per_minute=3, trusted_proxies="127.0.0.1/32"
    )
    known = await api_key_for()  # in the cache: no question to auth
    before = refused("invalid_api_keys")
    async with (
        LiveServer(create_app(settings, clock=in_one_window())) as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"X-Forwarded-For": "203.0.113.5"}) as c,
    ):
        answers = [await c.get("/v1/models", headers=h) for h in unknown_keys(5)]
        cached = await c.get("/v1/models", headers=known.headers)
        elsewhere = await c.get(
            "/v1/models", headers={**unknown_keys(6)[5], "X-Forwarded-For": "203.0.113.6"}
        )

    assert [r.status_code for r in answers] == [401, 401, 401, 429, 429]
    limited = answers[-1]
    assert limited.headers["content-type"] == "application/problem+json"
    assert limited.json()["type"] == "urn:llm-platform:problem:too-many-invalid-api-keys"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert upstream.resolve_calls == 3 + 1  # the budget, and the other client's one
    assert cached.status_code == 200  # keys in the cache are not held up
    assert elsewhere.status_code == 401
    assert refused("invalid_api_keys") - before == 2


async def test_a_burst_of_unknown_api_keys_gets_no_more_checks_than_the_budget(
    upstream: Upstream, redis_url: str, redis: Redis
) -> None:
    settings = gateway_settings(upstream, redis_url, invalid_api_keys_per_minute=3)
    async with (
        LiveServer(create_app(settings, clock=in_one_window())) as gw,
        httpx.AsyncClient(base_url=gw.url) as c,
    ):
        burst = await asyncio.gather(*(c.get("/v1/models", headers=h) for h in unknown_keys(12)))

    assert sorted(r.status_code for r in burst) == [401] * 3 + [429] * 9
    assert upstream.resolve_calls == 3


async def test_a_valid_key_auth_is_asked_about_is_not_counted_as_a_failure(
    upstream: Upstream, redis_url: str, redis: Redis
) -> None:
    key = "sk-valid-but-not-cached-0000000000000"
    upstream.known_keys[secret_hash(key)] = ApiKeyPrincipal(
        key_id="22222222-2222-2222-2222-222222222222",
        user_id="00000000-0000-0000-0000-0000000000cc",
        roles=("member",),
        permissions=("models:read",),
        expires_at=None,
    )
    settings = gateway_settings(upstream, redis_url, invalid_api_keys_per_minute=1)
    async with (
        LiveServer(create_app(settings, clock=in_one_window())) as gw,
        httpx.AsyncClient(base_url=gw.url) as c,
    ):
        valid = await c.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        unknown = [await c.get("/v1/models", headers=h) for h in unknown_keys(2)]

    assert valid.status_code == 200
    assert [r.status_code for r in unknown] == [401, 429]
    assert upstream.resolve_calls == 2


async def test_the_first_calls_of_a_new_key_at_once_ask_auth_once_and_count_once(
    upstream: Upstream, redis_url: str, redis: Redis
) -> None:
    # A job starting its workers with a key made a moment ago: 12 calls before the gateway
    # has it cached, more than the address's budget of keys auth must be asked about.
    key = "sk-new-key-of-a-batch-job-00000000000"
    upstream.known_keys[secret_hash(key)] = ApiKeyPrincipal(
        key_id="33333333-3333-3333-3333-333333333333",
        user_id="00000000-0000-0000-0000-0000000000dd",
        roles=("member",),
        permissions=("models:read",),
        expires_at=None,
    )
    settings = gateway_settings(upstream, redis_url, invalid_api_keys_per_minute=2)
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        LiveServer(create_app(settings, clock=in_one_window())) as gw,
        httpx.AsyncClient(base_url=gw.url) as c,
    ):
        burst = await asyncio.gather(*(c.get("/v1/models", headers=headers) for _ in range(12)))
        unknown = [await c.get("/v1/models", headers=h) for h in unknown_keys(3)]

    assert [r.status_code for r in burst] == [200] * 12
    # The address's budget is untouched: two unknown keys are still asked about.
    assert [r.status_code for r in unknown] == [401, 401, 429]
    assert upstream.resolve_calls == 1 + 2
