"""One unit of work per request, committed before the response; schema-bound, named tables."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlmodel import Field, SQLModel
from starlette.types import Message, Receive, Scope, Send

from common.app import PlatformApp, instrument
from common.db import (
    DbSession,
    LazyDbSession,
    after_commit,
    commit_anyway,
    create_engine,
    create_sessionmaker,
    database_unreachable,
    schema_registry,
)
from common.errors import Problem
from common.settings import ServiceSettings
from devkit.testing import RunDatabase, asgi_client


class UowSettings(ServiceSettings):
    service_name: ClassVar[str] = "uowdemo"


class Refused(Problem):
    status, slug, title = 409, "refused", "Refused"


class ProbeIn(BaseModel):
    # "problem", "crash", "recorded" (a problem that keeps its unit of work), or "untouched"
    # (no database use at all).
    fail: str | None = None
    # Register an after-commit action that looks the label up from another connection.
    after_commit: bool = False


@pytest.fixture
async def probe_db(test_database: RunDatabase) -> AsyncIterator[asyncpg.Connection]:
    """An admin connection on the test database with a fresh public.uow_probe table.

    The label is unique, checked at commit, so a commit can fail after the endpoint returned.
    """
    conn = await asyncpg.connect(test_database.admin_url.replace("+asyncpg", "", 1))
    await conn.execute(
        "CREATE TABLE public.uow_probe"
        " (id serial PRIMARY KEY, label text UNIQUE DEFERRABLE INITIALLY DEFERRED)"
    )
    try:
        yield conn
    finally:
        await conn.execute("DROP TABLE public.uow_probe")
        await conn.close()


async def _exists(conn: asyncpg.Connection, label: str) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM public.uow_probe WHERE label = $1)", label
    )
    return found


class VisibleAtResponseStart:
    """ASGI wrapper: looks the label up in the table the moment the response starts."""

    def __init__(self, app: FastAPI, conn: asyncpg.Connection) -> None:
        self.app = app
        self.conn = conn
        self.seen: dict[str, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        label = scope["path"].rsplit("/", 1)[-1]

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.seen[label] = await _exists(self.conn, label)
            await send(message)

        await self.app(scope, receive, send_observed)


def create_app(test_database: RunDatabase, **pool: Any) -> FastAPI:
    app = PlatformApp()
    instrument(app, UowSettings())
    app.state.engine = create_engine(test_database.admin_url, application_name="t", **pool)
    app.state.sessionmaker = create_sessionmaker(app.state.engine)

    async def store(label: str, body: ProbeIn, session: AsyncSession) -> dict[str, str]:
        if body.fail == "untouched":
            return {"label": label}
        await session.execute(
            text("INSERT INTO public.uow_probe (label) VALUES (:label)"), {"label": label}
        )
        if body.after_commit:

            async def look() -> None:
                app.state.after_commit[label] = await _exists(app.state.probe_db, label)

            after_commit(session, look)
        if body.fail == "problem":
            raise Refused("Not this one.")
        if body.fail == "recorded":
            raise commit_anyway(Refused("Not this one, and that is on record."))
        if body.fail == "crash":
            raise RuntimeError("boom")
        return {"label": label}

    @app.post("/probes/{label}", status_code=201)
    async def create_probe(label: str, body: ProbeIn, session: DbSession) -> dict[str, str]:
        return await store(label, body, session)

    @app.post("/lazy/probes/{label}", status_code=201)
    async def create_probe_lazily(
        label: str, body: ProbeIn, session: LazyDbSession
    ) -> dict[str, str]:
        return await store(label, body, session)

    return app


@pytest.fixture
async def uow(
    test_database: RunDatabase, probe_db: asyncpg.Connection
) -> AsyncIterator[tuple[httpx.AsyncClient, VisibleAtResponseStart]]:
    app = create_app(test_database)
    app.state.probe_db, app.state.after_commit = probe_db, {}
    observed = VisibleAtResponseStart(app, probe_db)
    try:
        async with asgi_client(observed) as client:  # type: ignore[arg-type]
            yield client, observed
    finally:
        await app.state.engine.dispose()


BOTH = pytest.mark.parametrize("route", ["/probes", "/lazy/probes"], ids=["eager", "lazy"])


@BOTH
async def test_successful_request_commits_before_the_response_is_sent(
    uow: tuple[httpx.AsyncClient, VisibleAtResponseStart],
    probe_db: asyncpg.Connection,
    route: str,
) -> None:
    client, observed = uow

    response = await client.post(f"{route}/kept", json={})

    assert response.status_code == 201
    assert observed.seen["kept"] is True
    assert await _exists(probe_db, "kept")


@BOTH
@pytest.mark.parametrize(("fail", "status"), [("problem", 409), ("crash", 500)])
async def test_failing_request_rolls_back(
    uow: tuple[httpx.AsyncClient, VisibleAtResponseStart],
    probe_db: asyncpg.Connection,
    fail: str,
    status: int,
    route: str,
) -> None:
    client, _ = uow

    response = await client.post(f"{route}/dropped", json={"fail": fail})

    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert not await _exists(probe_db, "dropped")
    # The failed request did not hold anything back: the same label can be stored now.
    assert (await client.post(f"{route}/dropped", json={})).status_code == 201
    assert await _exists(probe_db, "dropped")


@BOTH
async def test_a_problem_marked_commit_anyway_commits_before_it_is_answered(
    uow: tuple[httpx.AsyncClient, VisibleAtResponseStart], route: str
) -> None:
    """A record of the failure itself (a failed login's audit event) outlives the error."""
    client, observed = uow
    seen = observed.app.state.after_commit

    response = await client.post(
        f"{route}/recorded", json={"fail": "recorded", "after_commit": True}
    )

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "Not this one, and that is on record."
    assert observed.seen["recorded"] is True
    assert seen == {"recorded": True}


@BOTH
async def test_failed_commit_is_a_failed_request(
    uow: tuple[httpx.AsyncClient, VisibleAtResponseStart],
    probe_db: asyncpg.Connection,
    route: str,
) -> None:
    client, _ = uow
    await probe_db.execute("INSERT INTO public.uow_probe (label) VALUES ('taken')")

    response = await client.post(f"{route}/taken", json={})

    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    count = await probe_db.fetchval("SELECT count(*) FROM public.uow_probe WHERE label = 'taken'")
    assert count == 1


@BOTH
async def test_after_commit_actions_run_once_committed_and_never_on_rollback(
    uow: tuple[httpx.AsyncClient, VisibleAtResponseStart], route: str
) -> None:
    """What must follow the commit (clearing a cache of the old state) sees the change
    committed, and does not run for a change that was rolled back."""
    client, observed = uow
    seen = observed.app.state.after_commit

    kept = await client.post(f"{route}/kept", json={"after_commit": True})
    dropped = await client.post(f"{route}/dropped", json={"after_commit": True, "fail": "crash"})

    assert (kept.status_code, dropped.status_code) == (201, 500)
    assert seen == {"kept": True}


async def test_a_lazy_session_is_opened_only_when_the_route_uses_it(
    test_database: RunDatabase, probe_db: asyncpg.Connection
) -> None:
    """Routes that usually answer from memory (chat) skip a session's cost entirely."""
    app = create_app(test_database)
    sessionmaker = app.state.sessionmaker
    opened: list[AsyncSession] = []

    def counting() -> AsyncSession:
        opened.append(sessionmaker())
        return opened[-1]

    app.state.sessionmaker = counting
    try:
        async with asgi_client(app) as client:
            untouched = await client.post("/lazy/probes/a", json={"fail": "untouched"})
            assert untouched.status_code == 201
            assert opened == []
            assert (await client.post("/lazy/probes/b", json={})).status_code == 201
            assert len(opened) == 1
            assert (await client.post("/probes/c", json={"fail": "untouched"})).status_code == 201
            assert len(opened) == 2  # the eager kind opens one whatever the route does
    finally:
        await app.state.engine.dispose()
    assert await _exists(probe_db, "b")


class XBase(SQLModel, registry=schema_registry("x")):
    pass


class Gadget(XBase, table=True):
    __tablename__ = "gadget"

    id: int | None = Field(default=None, primary_key=True)
    serial: str = Field(unique=True)
    owner_id: int = Field(index=True)


class GadgetPart(XBase, table=True):
    __tablename__ = "gadget_part"

    id: int | None = Field(default=None, primary_key=True)
    gadget_id: int = Field(foreign_key="x.gadget.id")


def _ddl(element: CreateTable | CreateIndex) -> str:
    return " ".join(str(element.compile(dialect=postgresql.dialect())).split())


def test_schema_registry_binds_tables_to_the_schema() -> None:
    assert schema_registry("x").metadata.schema == "x"
    assert XBase.metadata.schema == "x"
    assert Gadget.__table__.schema == "x"  # type: ignore[attr-defined]


def test_tables_are_created_in_the_schema_with_conventional_constraint_names() -> None:
    gadget = _ddl(CreateTable(Gadget.__table__))  # type: ignore[attr-defined]
    part = _ddl(CreateTable(GadgetPart.__table__))  # type: ignore[attr-defined]
    (index,) = Gadget.__table__.indexes  # type: ignore[attr-defined]

    assert gadget.startswith("CREATE TABLE x.gadget (")
    assert "CONSTRAINT pk_gadget PRIMARY KEY (id)" in gadget
    assert "CONSTRAINT uq_gadget_serial UNIQUE (serial)" in gadget
    assert part.startswith("CREATE TABLE x.gadget_part (")
    assert "CONSTRAINT pk_gadget_part PRIMARY KEY (id)" in part
    assert (
        "CONSTRAINT fk_gadget_part_gadget_id_gadget FOREIGN KEY(gadget_id) REFERENCES x.gadget (id)"
    ) in part
    assert _ddl(CreateIndex(index)) == "CREATE INDEX ix_x_gadget_owner_id ON x.gadget (owner_id)"


async def _kill_pooled_backends(admin: asyncpg.Connection, application_name: str) -> int:
    killed = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
        application_name,
    )
    return int(killed)


async def test_a_pooled_connection_the_server_closed_is_replaced_before_use(
    test_database: RunDatabase,
) -> None:
    """An idle pooled connection that the server dropped (a restart, an idle timeout) is
    pinged at checkout and replaced: the next query succeeds."""
    engine = create_engine(
        test_database.admin_url, application_name="pingdemo", ping_after_idle_seconds=0
    )
    admin = await asyncpg.connect(test_database.admin_url.replace("+asyncpg", "", 1))
    try:
        async with engine.connect() as conn:
            first = await conn.scalar(text("SELECT pg_backend_pid()"))
        assert await _kill_pooled_backends(admin, "pingdemo") == 1
        async with engine.connect() as conn:
            second = await conn.scalar(text("SELECT pg_backend_pid()"))
        assert second != first
    finally:
        await admin.close()
        await engine.dispose()


async def test_a_connection_in_steady_use_is_not_pinged(test_database: RunDatabase) -> None:
    """Only connections idle for `ping_after_idle_seconds` are pinged: no round trips
    before every query (so a connection dropped a moment ago fails its next statement)."""
    engine = create_engine(
        test_database.admin_url, application_name="nopingdemo", ping_after_idle_seconds=3600
    )
    admin = await asyncpg.connect(test_database.admin_url.replace("+asyncpg", "", 1))
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        assert await _kill_pooled_backends(admin, "nopingdemo") == 1
        with pytest.raises(DBAPIError) as failed:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        assert failed.value.connection_invalidated
        async with engine.connect() as conn:  # the pool replaced it
            assert await conn.scalar(text("SELECT 1")) == 1
    finally:
        await admin.close()
        await engine.dispose()


async def test_a_value_the_database_refuses_is_a_422_that_changes_nothing(
    test_database: RunDatabase, probe_db: asyncpg.Connection
) -> None:
    """Text with a NUL character reaching an INSERT (found by tests/fuzz in a provider
    credential's name): a 422 problem, not a 500, and the unit of work rolled back."""
    app = create_app(test_database)
    app.state.probe_db, app.state.after_commit = probe_db, {}
    try:
        async with asgi_client(app) as client:
            response = await client.post("/probes/nul%00byte", json={})
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "urn:llm-platform:problem:invalid-value"
        assert await probe_db.fetchval("SELECT count(*) FROM public.uow_probe") == 0
    finally:
        await app.state.engine.dispose()


async def test_a_request_that_gets_no_connection_is_a_503_to_retry_and_changes_nothing(
    test_database: RunDatabase, probe_db: asyncpg.Connection
) -> None:
    """Every pooled connection busy past the pool's wait: 503 with Retry-After, not a 500
    (nor "too many clients" from Postgres)."""
    app = create_app(test_database, pool_size=1, max_overflow=0, pool_timeout=0.2)
    app.state.probe_db, app.state.after_commit = probe_db, {}
    try:
        async with app.state.engine.connect() as busy, asgi_client(app) as client:
            await busy.execute(text("SELECT 1"))
            response = await client.post("/probes/starved", json={})
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        assert response.json()["type"] == "urn:llm-platform:problem:database-unavailable"
        assert not await _exists(probe_db, "starved")
    finally:
        await app.state.engine.dispose()


async def test_a_database_that_is_down_is_a_503_and_the_connection_stays_usable(
    test_database: RunDatabase, probe_db: asyncpg.Connection, tmp_path: Path
) -> None:
    """The server gone (its Unix socket with it): 503 to retry, answered inside the app's
    exception layer, not re-raised after the answer (uvicorn would then close the
    connection the gateway keeps alive, and fail its next request)."""
    app = create_app(test_database)
    await app.state.engine.dispose()
    app.state.engine = create_engine(
        f"postgresql+asyncpg://postgres@/platform?host={tmp_path}", application_name="gone"
    )
    app.state.sessionmaker = create_sessionmaker(app.state.engine)
    app.state.probe_db, app.state.after_commit = probe_db, {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for _ in range(2):
                response = await client.post("/probes/down", json={})
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "1"
                assert response.json()["type"] == "urn:llm-platform:problem:database-unavailable"
    finally:
        await app.state.engine.dispose()


def test_an_error_of_our_own_is_not_taken_for_a_database_away() -> None:
    with pytest.raises(FileNotFoundError) as raised:
        Path("/nonexistent/settings.toml").read_text()
    assert not database_unreachable(raised.value)
