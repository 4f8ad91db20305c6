"""Pytest plugin shared by every package's tests: real Postgres (pgvector) and real Redis.

Postgres: `TEST_DATABASE_URL` (a superuser URL) if set, else an embedded server of this
run's own, in a directory of its own (`server_dir`), stopped and removed afterwards. Each test run
gets a fresh database with the per-service roles and schemas; services migrate it with
Alembic; each test runs inside a transaction that is rolled back.
Redis: `TEST_REDIS_URL` if set (it is flushed between tests!), else a private
redis-server on a free port for the run (devkit.devstack.start_redis).
Spans: `spans` holds those this process finishes during a test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from common import ports
from common.identity import Identity, SignedIdentity
from common.migrations import upgrade
from common.settings import DatabaseSettings, ServiceSettings
from common.tracing import configure_tracing
from devkit import devstack


@dataclass(frozen=True)
class RunDatabase:
    admin_url: str
    name: str
    urls: dict[str, str]

    def url_for(self, service: str) -> str:
        return self.urls[service]


# pgserver keeps an inter-process lock under XDG_RUNTIME_DIR, found once, when it is first
# imported: the directory `make run` uses, not one under a `server_dir` that is removed.
os.environ.setdefault("XDG_RUNTIME_DIR", str(devstack.data_root() / "run"))
Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)


@contextmanager
def server_dir(name: str) -> Iterator[Path]:
    """A fresh directory for the data of a server this test run starts, removed afterwards.

    Not under pytest's tmp_path: run as root, the embedded PostgreSQL runs as the user
    `pgserver`, so the directories above its data must let that user through, and every
    pytest session, when it starts, takes that right away from its root
    (/tmp/pytest-of-<user> back to mode 0700): a test run started beside this one cut the
    server off its own files, and it died mid-run ("permission denied" on pg_control)."""
    path = Path(tempfile.mkdtemp(prefix=f"platform-test-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server_path() -> Iterator[Path]:
    """`server_dir` for one test: where a test starts its own server or `make run`."""
    with server_dir("test") as path:
        yield path


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    # A server of this run's own (made in under a second), not the one under .data that
    # `make run` and other test runs share: a transaction they hold open there (any
    # database) holds back the server's xmin, and the telemetry usage cache, rightly,
    # caches no day while a transaction older than its close runs: its tests then fail.
    with server_dir("postgres") as data_dir:
        url = devstack.start_embedded_postgres(data_dir)
        try:
            yield url
        finally:
            devstack.stop_embedded_postgres(data_dir)


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(devstack.with_database(admin_url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def test_database(postgres_admin_url: str) -> Iterator[RunDatabase]:
    name = f"test_{os.getpid()}_{secrets.token_hex(3)}"
    admin_url = devstack.with_database(postgres_admin_url, name)
    urls = asyncio.run(devstack.bootstrap_database(admin_url, name))
    try:
        yield RunDatabase(admin_url=admin_url, name=name, urls=urls)
    finally:
        asyncio.run(_drop_database(postgres_admin_url, name))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("TEST_REDIS_URL")
    if configured:
        yield configured
        return
    process, url = devstack.start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        devstack.stop_process(process)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections for the whole test, and on which nothing
    else can start listening meanwhile (common.ports.refusing_port): a dead upstream."""
    with ports.refusing_port() as port:
        yield port


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans this process finishes during the test (tests record every span: the root
    conftest sets OTEL_TRACES_SAMPLER)."""
    configure_tracing("test")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # its processor stays, exporting nothing


def redis_db_url(url: str, db: int) -> str:
    """The same Redis server, another logical database."""
    return urlsplit(url)._replace(path=f"/{db}").geturl()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client on the test Redis; the database is emptied before and after each test.

    Before too: a test that does not use this fixture (or a process still writing after its
    test ended) may have left keys or stream entries behind."""
    client = Redis.from_url(redis_url)
    try:
        await client.flushdb()
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    """Run an app's lifespan around a block (what uvicorn does at start and stop)."""
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def rolled_back(engine: AsyncEngine) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions whose commits are savepoints inside one transaction rolled back at the end."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            yield async_sessionmaker(
                bind=connection,
                expire_on_commit=False,
                autoflush=False,
                join_transaction_mode="create_savepoint",
            )
        finally:
            await transaction.rollback()


def signing_key(settings: ServiceSettings) -> bytes:
    return settings.internal_signing_key.get_secret_value().encode()


def user_identity(
    user_id: str = "00000000-0000-0000-0000-000000000001",
    *,
    roles: tuple[str, ...] = ("member",),
    permissions: tuple[str, ...] = (),
) -> Identity:
    return Identity(
        sub=user_id, kind="user", iss="gateway", roles=roles, permissions=permissions, sid="s1"
    )


def asgi_client(
    app: FastAPI,
    *,
    identity: Identity | None = None,
    key: bytes | None = None,
    audience: str | None = None,
) -> httpx.AsyncClient:
    """An httpx client talking to the app in-process, signing requests when given an identity
    (for `audience`, by default the app's own service name)."""
    auth = None
    if identity is not None and key is not None:
        audience = audience or app.state.settings.service_name
        auth = SignedIdentity(key, identity, audience=audience)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://testserver",
        auth=auth,
    )


class LiveServer:
    """An ASGI app served by uvicorn on 127.0.0.1, inside the test's event loop, on a socket
    bound here (common.ports): any free port, or `port`."""

    def __init__(self, app: Any, port: int = 0, *, lifespan: bool = True) -> None:
        """`lifespan=False` serves an app whose lifespan already runs (ServiceHarness.app)."""
        import uvicorn

        self._socket = ports.listen("127.0.0.1", port)
        self.port = ports.port_of(self._socket)
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_config=None,
                lifespan="on" if lifespan else "off",
                # As common.serve: whose X-Forwarded-For to believe is the gateway's call.
                proxy_headers=False,
            )
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LiveServer:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._socket.close()
                self._task.result()
                raise RuntimeError("server stopped before it started")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self._socket.close()


@dataclass
class ServiceHarness:
    """One service under test: its settings against the test database and Redis."""

    name: str
    settings: DatabaseSettings
    create_app: Callable[[Any], FastAPI]

    @classmethod
    def migrated(
        cls,
        name: str,
        settings_cls: type[DatabaseSettings],
        create_app: Callable[[Any], FastAPI],
        database: RunDatabase,
        redis_url: str,
        **settings_values: Any,
    ) -> ServiceHarness:
        """Migrated on `database`; `settings_values` set more of the service's settings."""
        url = database.url_for(name)
        upgrade(devstack.service_dir(name), url)
        settings = settings_cls(
            database_url=url, redis_url=redis_url, environment="test", **settings_values
        )
        return cls(name=name, settings=settings, create_app=create_app)

    @asynccontextmanager
    async def app(self, **overrides: Any) -> AsyncIterator[FastAPI]:
        """The app (settings changed by `overrides`), started; its units of work are rolled
        back and its Redis database emptied after the block."""
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        app = self.create_app(settings)
        async with running(app):
            try:
                async with rolled_back(app.state.engine) as sessionmaker:
                    app.state.sessionmaker = sessionmaker
                    yield app
            finally:
                await app.state.redis.flushdb()

    def key(self) -> bytes:
        return signing_key(self.settings)
