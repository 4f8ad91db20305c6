"""Gateway tests: the real gateway under uvicorn, real Redis, in front of a real upstream app.

The upstream is a service built exactly like ours (signed identity required) whose routes
echo what they received, so a test sees what the gateway forwarded. It runs once per
service name (auth, inference, ...), as each verifies that a signed identity is meant for
it, all four sharing one state. Callers authenticate
with sessions and API keys written to Redis through the same code auth uses
(common.principals), so no auth service is needed here; tests/e2e covers the real one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from redis.asyncio import Redis

from common.app import create_service_app
from common.errors import NotFound
from common.identity import CurrentIdentity
from common.principals import API_KEY_PREFIX, ApiKeyPrincipal, SessionStore, secret_hash
from common.settings import ServiceSettings
from devkit.testing import LiveServer
from gateway.main import create_app
from gateway.repository import WINDOW_SECONDS
from gateway.settings import GatewaySettings

SERVICES = ("auth", "inference", "embeddings", "telemetry")
VIEWER = ("models:read", "embeddings:read", "telemetry:read_own", "api_keys:manage")
MEMBER = (*VIEWER, "inference:invoke", "providers:manage", "embeddings:write", "telemetry:write")


def upstream_settings(service: str) -> ServiceSettings:
    """Settings of an upstream that takes identities signed for `service`."""
    annotations = {"service_name": ClassVar[str]}
    cls = type(f"{service.title()}Upstream", (ServiceSettings,),
               {"__annotations__": annotations, "service_name": service})  # fmt: skip
    settings: ServiceSettings = cls(environment="test")
    return settings


@dataclass
class Upstream:
    """Test routes on a service built like ours; counts what reached it."""

    urls: dict[str, str] = field(default_factory=dict)  # per service name
    hits: int = 0
    # Auth's resolver: how often it was asked, and the keys it knows (by hash; it caches
    # them in Redis at `redis_url`, as auth does).
    resolve_calls: int = 0
    known_keys: dict[str, ApiKeyPrincipal] = field(default_factory=dict)
    redis_url: str = ""
    release_second_chunk: asyncio.Event = field(default_factory=asyncio.Event)
    patient_called: asyncio.Event = field(default_factory=asyncio.Event)
    saw_disconnect: asyncio.Event = field(default_factory=asyncio.Event)


def upstream_app(state: Upstream, service: str) -> Any:
    router = APIRouter()
    add_auth_resolver(router, state)
    add_streams(router, state)
    add_waits(router, state)
    add_odd_answers(router)
    add_echo(router, state)  # last: it takes every other path

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield

    return create_service_app(
        upstream_settings(service), public=router, lifespan=lifespan, title="Upstream"
    )


def add_auth_resolver(router: APIRouter, state: Upstream) -> None:
    @router.post("/internal/api-keys/resolve")
    async def resolve(request: Request, _: CurrentIdentity) -> dict[str, Any]:
        # Like auth: unknown keys are 404 (most tests put known keys in the cache).
        state.resolve_calls += 1
        key_hash = (await request.json())["key_hash"]
        known = state.known_keys.get(key_hash)
        if known is None:
            raise NotFound("Unknown, revoked or expired API key.")
        async with Redis.from_url(state.redis_url) as redis:
            await redis.set(API_KEY_PREFIX + key_hash, known.to_json(), ex=300)
        return {"key_id": known.key_id, "user_id": known.user_id}


def add_streams(router: APIRouter, state: Upstream) -> None:
    """Server-sent events: one held between its chunks, one that breaks off."""

    @router.get("/v1/calls")
    async def stream(_: CurrentIdentity) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"
            await asyncio.wait_for(state.release_second_chunk.wait(), timeout=10)
            yield b"data: second\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @router.get("/v1/providers/aliases")
    async def broken_stream(_: CurrentIdentity, broken: bool = False) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"
            if broken:
                raise RuntimeError("upstream died mid-stream")

        return StreamingResponse(events(), media_type="text/event-stream")


def add_waits(router: APIRouter, state: Upstream) -> None:
    """Slow answers: one late by `delay`, one that waits until its caller leaves."""

    @router.get("/v1/hub/models")
    async def slow(_: CurrentIdentity, delay: float = 0) -> dict[str, str]:
        await asyncio.sleep(delay)
        return {"status": "late" if delay else "prompt"}

    @router.get("/v1/hub/models/patient")
    async def patient(request: Request, _: CurrentIdentity) -> dict[str, str]:
        # Like inference on a long model call: notices when its caller goes away.
        state.patient_called.set()
        for _ in range(600):
            if await request.is_disconnected():
                state.saw_disconnect.set()
                return {"status": "abandoned"}
            await asyncio.sleep(0.05)
        return {"status": "waited"}


def add_odd_answers(router: APIRouter) -> None:
    """Hop-by-hop headers named in `Connection`, and a crash with a secret in it."""

    @router.get("/v1/usage")
    async def headers(_: CurrentIdentity) -> JSONResponse:
        return JSONResponse(
            {"ok": True}, headers={"Connection": "close, X-Hop", "X-Hop": "1", "X-Kept": "yes"}
        )

    @router.post("/v1/events")
    async def boom(_: CurrentIdentity) -> None:
        raise RuntimeError("database password is hunter2")


def add_echo(router: APIRouter, state: Upstream) -> None:
    """Every other path, for every method: what the request looked like when it arrived."""

    async def echo(request: Request, identity: CurrentIdentity) -> JSONResponse:
        """Answers with the status in `X-Answer-Status` (200 without)."""
        state.hits += 1
        status = int(request.headers.get("x-answer-status", "200"))
        return JSONResponse(status_code=status, content={
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": (await request.body()).decode(),
            "identity": {
                "sub": identity.sub,
                "kind": identity.kind,
                "iss": identity.iss,
                "permissions": list(identity.permissions),
                "sid": identity.sid,
                "kid": identity.kid,
                "team": identity.team,
                "policies": identity.policies,
                "hold": identity.hold,
            },
        })  # fmt: skip

    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        router.add_api_route("/{path:path}", echo, methods=[method], name=f"echo_{method}")


@pytest.fixture
async def upstream(redis_url: str) -> AsyncIterator[Upstream]:
    state = Upstream(redis_url=redis_url)
    async with AsyncExitStack() as stack:
        for service in SERVICES:
            server = await stack.enter_async_context(LiveServer(upstream_app(state, service)))
            state.urls[service] = server.url
        yield state


class Clock:
    """A gateway clock the test sets (pass it to create_app), to cross rate windows without
    waiting."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    @classmethod
    def in_window(cls, elapsed: float) -> Clock:
        """At `elapsed` seconds into the current rate window (by the wall clock)."""
        return cls(time.time() // WINDOW_SECONDS * WINDOW_SECONDS + elapsed)


def in_one_window() -> Clock:
    """A gateway clock frozen in the middle of the current rate-limit minute (pass it to
    create_app): a test that counts requests against a per-minute limit sees its counts
    from this minute alone (and nothing of the previous one, which holds none of them)."""
    return Clock.in_window(WINDOW_SECONDS / 2)


def gateway_settings(upstream: Upstream, redis_url: str, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        **{f"{service}_url": url for service, url in upstream.urls.items()},
        "redis_url": redis_url,
        "environment": "test",
    }
    values.update(overrides)
    return GatewaySettings(**values)


@pytest.fixture
async def gateway(upstream: Upstream, redis_url: str) -> AsyncIterator[str]:
    async with LiveServer(create_app(gateway_settings(upstream, redis_url))) as server:
        yield server.url


@dataclass(frozen=True)
class Caller:
    """Credentials as a client sends them."""

    headers: dict[str, str]
    cookies: dict[str, str]
    csrf: str | None = None

    def unsafe_headers(self) -> dict[str, str]:
        return {**self.headers, **({"X-CSRF-Token": self.csrf} if self.csrf else {})}


SessionFactory = Callable[..., Awaitable[Caller]]


@pytest.fixture
def session_for(redis: Redis) -> SessionFactory:
    """A logged-in browser: a session written the way auth writes it."""

    async def make(
        permissions: tuple[str, ...] = MEMBER,
        *,
        user_id: str = "00000000-0000-0000-0000-0000000000aa",
        roles: tuple[str, ...] = ("member",),
        now: float | None = None,
        idle: float = 1800,
        lifetime: float = 43200,
        policy: dict[str, Any] | None = None,
    ) -> Caller:
        token, csrf, _ = await SessionStore(redis).create(
            user_id=user_id,
            roles=roles,
            permissions=permissions,
            now=time.time() if now is None else now,
            idle_timeout=idle,
            lifetime=lifetime,
            ip="127.0.0.1",
            user_agent="tests",
            policy=policy,
        )
        return Caller(headers={}, cookies={"session": token, "csrf_token": csrf}, csrf=csrf)

    return make


KeyFactory = Callable[..., Awaitable[Caller]]


@pytest.fixture
def api_key_for(redis: Redis) -> KeyFactory:
    """An API key as the gateway finds it: resolved by auth into the Redis cache."""

    async def make(
        permissions: tuple[str, ...] = MEMBER,
        *,
        user_id: str = "00000000-0000-0000-0000-0000000000bb",
        roles: tuple[str, ...] = ("member",),
        key: str = "sk-test-key-0123456789abcdef0123456789",
        key_id: str = "11111111-1111-1111-1111-111111111111",
        expires_at: float | None = None,
        team_id: str | None = None,
        policies: dict[str, Any] | None = None,
    ) -> Caller:
        principal = ApiKeyPrincipal(
            key_id=key_id,
            user_id=user_id,
            roles=roles,
            permissions=permissions,
            expires_at=expires_at,
            team_id=team_id,
            policies=policies,
        )
        await redis.set(API_KEY_PREFIX + secret_hash(key), principal.to_json(), ex=300)
        return Caller(headers={"Authorization": f"Bearer {key}"}, cookies={})

    return make
