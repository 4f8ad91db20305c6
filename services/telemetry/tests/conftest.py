"""Fixtures of the telemetry service's tests: the service migrated on the test database,
the real Redis stream inference appends to, and call events as inference writes them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.db import create_engine, create_sessionmaker
from common.identity import HEADER, Identity, InvalidIdentity, request_target, verify
from common.llm_events import STREAM, LlmCallEvent
from devkit.testing import LiveServer, RunDatabase, ServiceHarness, asgi_client
from telemetry import repository, service
from telemetry.clients import Auth
from telemetry.consumer import StreamConsumer
from telemetry.main import create_app
from telemetry.runtime import Runtime
from telemetry.settings import TelemetrySettings

MEMBER_PERMISSIONS = ("telemetry:read_own", "telemetry:write")
ADMIN_PERMISSIONS = (*MEMBER_PERMISSIONS, "telemetry:read_all")


def member(user_id: uuid.UUID | None = None) -> Identity:
    return Identity(
        sub=str(user_id or uuid.uuid4()), kind="user", iss="gateway", roles=("member",),
        permissions=MEMBER_PERMISSIONS,
    )  # fmt: skip


def admin() -> Identity:
    return Identity(
        sub=str(uuid.uuid4()), kind="user", iss="gateway", roles=("admin",),
        permissions=ADMIN_PERMISSIONS,
    )  # fmt: skip


def call(user: Identity | uuid.UUID | None, **overrides: Any) -> LlmCallEvent:
    """A call event as inference makes it (common.llm_events is the contract)."""
    user_id = user.sub if isinstance(user, Identity) else (str(user) if user else None)
    fields: dict[str, Any] = {
        "id": str(uuid.uuid4()), "occurred_at": time.time(), "user_id": user_id,
        "api_key_id": None, "provider": "openai", "model": "openai/gpt-4o-mini", "alias": None,
        "status": "ok", "error_type": None, "prompt_tokens": 12, "completion_tokens": 7,
        "usage_estimated": False, "cost_usd": "0.000006000", "latency_ms": 120.5,
        "ttft_ms": None, "stream": False, "attempts": 1, "fallback": False,
        "operation": "chat", "trace_id": uuid.uuid4().hex,
    }  # fmt: skip
    return LlmCallEvent(**{**fields, **overrides})


def as_json(event: LlmCallEvent) -> dict[str, Any]:
    return asdict(event)


def without(event: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The event as a producer from before the fields `names` writes it."""
    left_out = set(names)
    return {name: value for name, value in event.items() if name not in left_out}


async def reported(http: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
    """POST /v1/events, every event new."""
    response = await http.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text
    assert response.json()["inserted"] == len(events)


async def usage_of(http: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    """GET /v1/usage, answered."""
    response = await http.get("/v1/usage", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def append(redis: Redis, events: list[LlmCallEvent]) -> list[bytes]:
    """XADD, as inference's event sink does."""
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(STREAM, event.to_fields())  # type: ignore[arg-type]
        ids: list[bytes] = await pipe.execute()
    return ids


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# Longer than any test here takes, even on a loaded machine.
MIDNIGHT_MARGIN_SECONDS = 60.0


@pytest.fixture(autouse=True)
def one_utc_day() -> None:
    """Tests here compute today's UTC date more than once, and so does the database (the
    usage cache's triggers, clock_timestamp()): one that straddled midnight would compare
    two different todays. Close to midnight, start once it has passed."""
    left = 86400 - time.time() % 86400
    if left < MIDNIGHT_MARGIN_SECONDS:
        time.sleep(left + 0.5)


@pytest.fixture(scope="session")
def harness(test_database: RunDatabase, redis_url: str) -> ServiceHarness:
    return ServiceHarness.migrated(
        "telemetry", TelemetrySettings, create_app, test_database, redis_url
    )


@dataclass
class TeamRoles:
    """Auth's side of the one question telemetry asks it, `GET /internal/teams/{team_id}/
    members/{user_id}` (service callers only; `{"role": "owner" | "member"}`, or 404 when
    the user is not in the team), served over HTTP on 127.0.0.1 with the signed identity
    checked as auth checks it: the contract of issue 18, answered from `roles`. Auth's
    route is built beside this service (services/auth); this serves its contract until
    both are merged, when the real auth app can be served here instead (as embeddings'
    tests serve the real inference)."""

    key: bytes
    roles: dict[tuple[str, str], str] = field(default_factory=dict)
    asked_by: list[str] = field(default_factory=list)  # the verified callers, in order
    answer_status: int | None = None  # answer this instead (auth failing)
    url: str = ""

    def set(self, team: uuid.UUID, user: Identity, role: str | None) -> None:
        if role is None:
            self.roles.pop((str(team), user.sub), None)
        else:
            self.roles[(str(team), user.sub)] = role

    def app(self) -> Starlette:
        async def member(request: Request) -> Response:
            try:
                identity = verify(
                    request.headers.get(HEADER),
                    self.key,
                    method=request.method,
                    path=request_target(request.scope),
                    audience="auth",
                    max_age=60,
                )
            except InvalidIdentity:
                return JSONResponse({"title": "Unauthorized"}, status_code=401)
            self.asked_by.append(identity.sub)
            if identity.kind != "service":
                return JSONResponse({"title": "Forbidden"}, status_code=403)
            if self.answer_status is not None:
                return JSONResponse({"title": "failing"}, status_code=self.answer_status)
            params = request.path_params
            role = self.roles.get((params["team_id"], params["user_id"]))
            if role is None:
                return JSONResponse({"title": "Not Found"}, status_code=404)
            return JSONResponse({"role": role})

        return Starlette(routes=[Route("/internal/teams/{team_id}/members/{user_id}", member)])


@pytest.fixture
async def team_roles(harness: ServiceHarness) -> AsyncIterator[TeamRoles]:
    roles = TeamRoles(key=harness.key())
    async with LiveServer(roles.app()) as server:
        roles.url = server.url
        yield roles


@pytest.fixture
async def app(
    harness: ServiceHarness, redis: Redis, engine: AsyncEngine, team_roles: TeamRoles
) -> AsyncIterator[FastAPI]:
    """The API, its units of work rolled back; no stream consumer (see `consumers`) and no
    usage pre-warm (tests run it themselves); auth's team roles from `team_roles`.

    The days that ended before the test are marked closed first, committed, as a running
    platform's first query (or its pre-warm) has done: a day first marked inside the test's
    own transaction can never be cached in it, so a test that expects a day cached would
    pass only after some other test (one that commits) had marked it."""
    today = datetime.now(UTC).date()
    async with engine.begin() as conn:
        await repository.mark_closed_days(conn, [today - timedelta(days=n) for n in range(1, 100)])
    async with harness.app(
        consumer_enabled=False, usage_cache_refresh_seconds=0, auth_url=team_roles.url
    ) as started:
        yield started


@pytest.fixture
def client(app: FastAPI, harness: ServiceHarness) -> Callable[[Identity], httpx.AsyncClient]:
    def make(identity: Identity) -> httpx.AsyncClient:
        return asgi_client(app, identity=identity, key=harness.key())

    return make


@pytest.fixture
async def engine(harness: ServiceHarness) -> AsyncIterator[AsyncEngine]:
    """The service's database, committed for real (the consumer's writes are)."""
    engine = create_engine(harness.settings.database_url, application_name="telemetry-test")
    try:
        yield engine
    finally:
        await engine.dispose()


def make_runtime(
    harness: ServiceHarness, engine: AsyncEngine, redis: Redis, **settings: Any
) -> Runtime:
    """The service's runtime on the test database and Redis, as the lifespan builds it
    (`settings` change the harness's)."""
    assert isinstance(harness.settings, TelemetrySettings)
    changed = harness.settings.model_copy(update=settings)
    return Runtime(
        settings=changed,
        engine=engine,
        sessionmaker=create_sessionmaker(engine),
        redis=redis,
        auth=Auth(changed),  # connects only when asked
    )


@pytest.fixture
async def runtime(harness: ServiceHarness, engine: AsyncEngine, redis: Redis) -> Runtime:
    """The runtime of a replica without its app: its units of work committed for real."""
    runtime = make_runtime(harness, engine, redis)
    await service.maintain(runtime)
    return runtime


MakeConsumer = Callable[..., AbstractAsyncContextManager[StreamConsumer]]


@pytest.fixture
def consumers(runtime: Runtime) -> MakeConsumer:
    """Replicas' consumers on the test stream, started; each stopped after its block."""

    @asynccontextmanager
    async def make(name: str = "replica-a", **overrides: Any) -> AsyncIterator[StreamConsumer]:
        settings = runtime.settings.model_copy(update={"consumer_name": name, **overrides})
        consumer = StreamConsumer(replace(runtime, settings=settings))
        consumer.start()
        try:
            yield consumer
        finally:
            await consumer.stop()

    return make


@asynccontextmanager
async def refusing(engine: AsyncEngine, model: str) -> AsyncIterator[None]:
    """Postgres refuses calls to `model`: something validation lets through (a constraint
    of its own, for the duration)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "ALTER TABLE telemetry.llm_call ADD CONSTRAINT test_refused "
                f"CHECK (model <> '{model}') NOT VALID"
            )
        )
    try:
        yield
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE telemetry.llm_call DROP CONSTRAINT test_refused"))


# A lock some session of this test run's database waits for. pg_locks lists every database
# of the server (the e2e platforms' too, busy at their own pace); and a transaction-id lock
# (a row lock) names no database of its own, so the waiter's session tells.
WAITING_HERE = text(
    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE NOT l.granted AND a.datname = current_database()"
)


async def wait_stored(engine: AsyncEngine, user_id: uuid.UUID, rows: int) -> None:
    async def enough() -> bool:
        return (await stored(engine, user_id))["rows"] >= rows

    await eventually(enough)


async def stored(engine: AsyncEngine, user_id: uuid.UUID | str) -> dict[str, int]:
    """How many rows, and distinct ids, telemetry holds for a user."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT count(*) AS rows, count(DISTINCT id) AS ids "
                    "FROM telemetry.llm_call WHERE user_id = :u"
                ),
                {"u": uuid.UUID(str(user_id))},
            )
        ).one()
    return {"rows": row.rows, "ids": row.ids}
