"""Auth service tests: the real app on the test Postgres (each test rolled back) and the
test Redis (flushed after each test), called the way the gateway calls it: every request
signed with an internal identity, the client's address in X-Forwarded-For."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from http.cookies import Morsel, SimpleCookie
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from auth import repository
from auth.main import create_app
from auth.models import AuditEvent, User
from auth.runtime import Runtime
from auth.settings import AuthSettings
from common import ports
from common.budgets import spend_key, to_nano, utc
from common.identity import Identity
from common.policy import Period, ScopeKind
from common.principals import API_KEY_PREFIX, ApiKeyPrincipal, SessionStore, secret_hash
from devkit.testing import RunDatabase, ServiceHarness, asgi_client, running

ANONYMOUS = Identity(sub="anonymous", kind="anonymous", iss="gateway")
GATEWAY = Identity(sub="service:gateway", kind="service", iss="gateway")
TELEMETRY = Identity(sub="service:telemetry", kind="service", iss="telemetry")
PASSWORD = "Tangerine-Orbit-Lantern-42"
CLIENT_IP = "198.51.100.7"
# Cheap argon2 for every test that is not about its parameters.
FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}


class Clock:
    """The app's clock (`Runtime.clock`), moved by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class LoggedIn:
    """What a browser holds after a login: the two cookies, and who it is."""

    token: str
    csrf: str
    user: dict[str, Any]

    @property
    def sid(self) -> str:
        return secret_hash(self.token)

    @property
    def user_id(self) -> str:
        return str(self.user["id"])


def set_cookies(response: httpx.Response) -> dict[str, Morsel[str]]:
    """The cookies a response sets, with their attributes."""
    cookies: dict[str, Morsel[str]] = {}
    for header in response.headers.get_list("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        cookies.update(jar)
    return cookies


def without_ids(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("trace_id", "request_id")}


class AuthClient:
    """The auth app in-process, called as the gateway calls it."""

    def __init__(self, app: FastAPI, http: httpx.AsyncClient, redis: Redis) -> None:
        self.app = app
        self.http = http
        self.redis = redis
        self.store = SessionStore(redis)
        # Every email and client address used: what a committed app's test cleans up.
        self.emails: set[str] = set()
        self.ips: set[str] = set()

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    @property
    def clock(self) -> Clock:
        clock = self.runtime.clock
        assert isinstance(clock, Clock)
        return clock

    @property
    def settings(self) -> AuthSettings:
        return self.runtime.settings

    def db(self) -> AsyncSession:
        """A unit of work on the app's database (a savepoint in the test's transaction,
        unless the app commits for real)."""
        session: AsyncSession = self.app.state.sessionmaker()
        return session

    async def call(
        self,
        method: str,
        path: str,
        *,
        identity: Identity = ANONYMOUS,
        ip: str = CLIENT_IP,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        self.http.cookies.clear()  # the service reads no cookies; the gateway does
        self.ips.add(ip)
        if isinstance(json, dict) and isinstance(json.get("email"), str):
            self.emails.add(json["email"])
        return await self.http.request(
            method,
            path,
            json=json,
            params=params,
            headers={"X-Forwarded-For": ip, "User-Agent": "pytest-browser", **(headers or {})},
            extensions={"identity": identity},
        )

    async def register(self, email: str, password: str = PASSWORD, **extra: Any) -> httpx.Response:
        return await self.call(
            "POST", "/auth/register", json={"email": email, "password": password, **extra}
        )

    async def login(
        self, email: str, password: str = PASSWORD, *, ip: str = CLIENT_IP
    ) -> httpx.Response:
        return await self.call(
            "POST", "/auth/login", json={"email": email, "password": password}, ip=ip
        )

    async def logged_in(self, email: str, password: str = PASSWORD) -> LoggedIn:
        response = await self.login(email, password)
        assert response.status_code == 200, response.text
        cookies = set_cookies(response)
        body = response.json()
        return LoggedIn(
            token=cookies[self.settings.session_cookie_name].value,
            csrf=cookies[self.settings.csrf_cookie_name].value,
            user=body["user"],
        )

    async def signup(
        self, email: str | None = None, password: str = PASSWORD, *, roles: list[str] | None = None
    ) -> LoggedIn:
        """A registered user (with these roles, if given), logged in."""
        email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
        registered = await self.register(email, password)
        assert registered.status_code == 201, registered.text
        if roles is not None:
            await self.set_roles(registered.json()["id"], roles)
        return await self.logged_in(email, password)

    async def set_roles(self, user_id: str, roles: list[str]) -> None:
        async with self.db() as db:
            await repository.set_roles(db, user_id=uuid.UUID(user_id), roles=roles)
            await db.commit()

    async def identity_of(self, who: LoggedIn) -> Identity:
        """What the gateway signs for a request with this session cookie (it touches the
        session in Redis, sliding its idle timeout)."""
        session = await self.store.touch(secret_hash(who.token), now=self.clock())
        assert session is not None, "the session has ended"
        return Identity(
            sub=session.user_id,
            kind="user",
            iss="gateway",
            roles=session.roles,
            permissions=session.permissions,
            sid=session.id,
        )

    async def as_user(self, who: LoggedIn, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.call(method, path, identity=await self.identity_of(who), **kwargs)

    async def resolve(self, key: str, *, identity: Identity = GATEWAY) -> httpx.Response:
        return await self.call(
            "POST",
            "/internal/api-keys/resolve",
            json={"key_hash": secret_hash(key)},
            identity=identity,
        )

    async def key_identity(self, key: str) -> Identity:
        """What the gateway signs for a request with `Authorization: Bearer <key>`."""
        resolved = await self.resolve(key)
        assert resolved.status_code == 200, resolved.text
        body = resolved.json()
        return Identity(
            sub=body["user_id"],
            kind="api_key",
            iss="gateway",
            roles=tuple(body["roles"]),
            permissions=tuple(body["permissions"]),
            kid=body["key_id"],
        )

    async def create_key(self, who: LoggedIn, **body: Any) -> dict[str, Any]:
        response = await self.as_user(who, "POST", "/auth/api-keys", json={"name": "k", **body})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def create_team(self, admin: LoggedIn, name: str, **policy: Any) -> dict[str, Any]:
        response = await self.as_user(admin, "POST", "/auth/teams", json={"name": name, **policy})
        assert response.status_code == 201, response.text
        team: dict[str, Any] = response.json()
        return team

    async def set_member(
        self, who: LoggedIn, team_id: str, member: LoggedIn, role: str = "member"
    ) -> httpx.Response:
        return await self.as_user(
            who, "PUT", f"/auth/teams/{team_id}/members/{member.user_id}", json={"role": role}
        )

    async def cached(self, key: str) -> ApiKeyPrincipal | None:
        """What the gateway finds in Redis for this key (None: nothing cached, or invalid)."""
        raw = await self.redis.get(API_KEY_PREFIX + secret_hash(key))
        if raw is None or raw == b"invalid":
            return None
        return ApiKeyPrincipal.from_json(raw)

    async def seed_spend(
        self, scope: ScopeKind, scope_id: str, period: Period, usd: str, *, at: float | None = None
    ) -> None:
        """What inference's settlement keeps in Redis (common.budgets): `usd` spent by the
        scope in the period holding `at` (the app's clock by default)."""
        now = utc(self.clock() if at is None else at)
        await self.redis.set(spend_key(scope, scope_id, period, now), to_nano(Decimal(usd)))

    def set_time(self, moment: datetime) -> None:
        self.clock.now = moment.timestamp()

    async def user_row(self, email: str) -> User:
        async with self.db() as db:
            user = await repository.get_user_by_email(db, email=email)
        assert user is not None
        return user

    async def audit_events(self) -> list[AuditEvent]:
        async with self.db() as db:
            result = await db.execute(select(AuditEvent).order_by(col(AuditEvent.id)))
            return list(result.scalars())


@pytest.fixture(scope="session")
def telemetry_down() -> Iterator[str]:
    """A telemetry URL where nothing answers (a port that refuses connections): every
    spend counter missing from Redis stays unknown, as when telemetry is down."""
    with ports.refusing_port() as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def harness(test_database: RunDatabase, redis_url: str, telemetry_down: str) -> ServiceHarness:
    harness = ServiceHarness.migrated("auth", AuthSettings, create_app, test_database, redis_url)
    harness.settings = harness.settings.model_copy(
        update={**FAST_ARGON2, "telemetry_url": telemetry_down}
    )
    return harness


MakeApp = Callable[..., AbstractAsyncContextManager[AuthClient]]


async def purge(database: RunDatabase, *, emails: Iterable[str], ips: Iterable[str] = ()) -> None:
    """Delete committed users (with their keys and roles) and the audit events about them
    or from these client addresses."""
    conn = await asyncpg.connect(database.url_for("auth"))
    try:
        ids = [
            row["id"]
            for row in await conn.fetch(
                'SELECT id FROM auth."user" WHERE email = ANY($1::text[])', list(emails)
            )
        ]
        await conn.execute(
            "DELETE FROM auth.audit_event WHERE actor_id = ANY($1::uuid[])"
            " OR target_id = ANY($2::text[]) OR ip = ANY($3::text[])",
            ids,
            [str(i) for i in ids],
            list(ips),
        )
        await conn.execute('DELETE FROM auth."user" WHERE id = ANY($1::uuid[])', ids)
    finally:
        await conn.close()


@pytest.fixture
def make_app(harness: ServiceHarness, redis: Redis, test_database: RunDatabase) -> MakeApp:
    """Start the app with settings overridden. Every unit of work is rolled back after the
    block; with `committed=True` the app commits for real, as in production (each unit of
    work on its own connection), and the users it made are deleted afterwards."""

    @asynccontextmanager
    async def make(*, committed: bool = False, **overrides: Any) -> AsyncIterator[AuthClient]:
        settings = harness.settings.model_copy(update=overrides)
        if not committed:
            async with ServiceHarness("auth", settings, create_app).app() as app:
                # Work outside a request too in the test's rolled-back transaction.
                app.state.runtime.sessionmaker = app.state.sessionmaker
                app.state.runtime.clock = Clock(time.time())
                async with asgi_client(app, identity=ANONYMOUS, key=harness.key()) as http:
                    yield AuthClient(app, http, redis)
            return
        client: AuthClient | None = None
        try:
            async with running(create_app(settings)) as app:
                app.state.runtime.clock = Clock(time.time())
                async with asgi_client(app, identity=ANONYMOUS, key=harness.key()) as http:
                    client = AuthClient(app, http, redis)
                    yield client
        finally:
            emails = [
                *(client.emails if client else ()),
                *([settings.admin_email] if settings.admin_email else []),
            ]
            await purge(
                test_database,
                emails=[e.strip().lower() for e in emails],
                ips=client.ips if client else (),
            )

    return make


@pytest.fixture
async def auth(make_app: MakeApp) -> AsyncIterator[AuthClient]:
    async with make_app() as client:
        yield client


@pytest.fixture
async def admin(auth: AuthClient) -> LoggedIn:
    """An administrator, logged in."""
    return await auth.signup("admin@example.com", roles=["admin"])
