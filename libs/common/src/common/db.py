"""Async SQLAlchemy per service: engine with a pool, one unit of work per request, schema base."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar, cast

import structlog
from asyncpg.exceptions import (
    InterfaceError,
    InternalClientError,
    OperatorInterventionError,
    PostgresConnectionError,
    TooManyConnectionsError,
)
from fastapi import Depends, Request
from sqlalchemy import MetaData, event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext import asyncio as sa_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import registry

log = structlog.get_logger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def schema_registry(schema: str) -> registry:
    """The SQLAlchemy registry a service's SQLModel base binds to (`schema=<service>`).

    Use: `class Base(SQLModel, registry=schema_registry("auth")): pass`.
    """
    return registry(metadata=MetaData(schema=schema, naming_convention=NAMING_CONVENTION))


def async_url(url: str) -> str:
    """Accept `postgresql://` / `postgres://` URLs and use the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


# OperatorIntervention: cannot connect now (starting, stopping), admin or crash shutdown.
_UNREACHABLE = (PoolTimeout, TooManyConnectionsError, OperatorInterventionError,
                PostgresConnectionError, InternalClientError, ConnectionError)  # fmt: skip


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps: SQLAlchemy wraps asyncpg's) says no database
    connection was to be had or the one in use was lost: the pool's wait ran out, the server
    refused a new connection (its slots full; starting, stopping or down), or it went away
    mid-statement (restarted, killed; asyncpg's protocol then refuses the connection). The
    caller may try again; a statement cut off this way was not committed."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, _UNREACHABLE):
            return True
        if isinstance(seen, InterfaceError) and "connection" in str(seen) and "closed" in str(seen):
            return True
        if isinstance(seen, OSError) and _raised_in_asyncpg(seen):
            return True  # e.g. its Unix socket gone (FileNotFoundError): the server is down
        seen = seen.__cause__ or seen.__context__
    return False


def _raised_in_asyncpg(exc: BaseException) -> bool:
    traceback = exc.__traceback__
    while traceback is not None:
        if "asyncpg" in traceback.tb_frame.f_code.co_filename:
            return True
        traceback = traceback.tb_next
    return False


def create_engine(
    url: str,
    *,
    application_name: str,
    pool_size: int = 10,
    max_overflow: int = 10,
    ping_after_idle_seconds: float = 10.0,
    pool_timeout: float = 10.0,
) -> AsyncEngine:
    """A pooled engine. A request that waits `pool_timeout` seconds for a connection, or
    that the server refuses one, is answered 503 with Retry-After (common.errors)."""
    # Looked up at call time: OpenTelemetry wraps the module attribute to trace the engine.
    engine = sa_asyncio.create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
        # The connection given back last is the next one out: at low concurrency one
        # Postgres backend serves query after query with its CPU caches warm, instead of
        # every pooled one in turn (FIFO). A vector search at c=1 took 0.3-0.4 ms less
        # (bench/README.md, issue 22).
        pool_use_lifo=True,
        # asyncpg's own connect timeout is 60 s: a server that does not answer (a host
        # gone from the network) fails a checkout within the pool's wait instead.
        connect_args={
            "server_settings": {"application_name": application_name},
            "timeout": pool_timeout,
        },
    )
    ping_idle_connections(engine, ping_after_idle_seconds)
    drop_lost_connections(engine)
    return engine


def drop_lost_connections(engine: AsyncEngine) -> None:
    """A connection that failed as lost (`database_unreachable`) leaves the pool, with every
    older one: SQLAlchemy recognises a closed socket, not asyncpg's protocol left mid-way by
    a server that went away ("cannot switch to state ..."), which would otherwise fail every
    request that drew it from the pool, long after the server came back."""

    @event.listens_for(engine.sync_engine, "handle_error")
    def _handle_error(context: Any) -> None:
        if not context.is_disconnect and database_unreachable(context.original_exception):
            context.is_disconnect = True


def ping_idle_connections(engine: AsyncEngine, idle_seconds: float) -> None:
    """Check a pooled connection before use only when it sat idle for `idle_seconds`.

    SQLAlchemy's `pool_pre_ping` pings at every checkout, and asyncpg's ping is three round
    trips (BEGIN, an empty statement, ROLLBACK): more than a short query itself. A connection
    in steady use is fresh; one that sat idle may have been closed by the server, a proxy or
    a restart, and is replaced here before anyone sees it fail. A connection that dies while
    in use fails that one statement; SQLAlchemy then recognises the disconnect and replaces
    every connection of the pool that is older."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("stale pooled connection") from exc


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


AfterCommit = Callable[[], Awaitable[object]]
_AFTER_COMMIT = "after_commit"


def after_commit(session: AsyncSession, action: AfterCommit) -> None:
    """Run `action` once the request's unit of work has committed (never if it rolls back).

    For what must follow the commit: clearing a cache that a concurrent request, reading
    the rows before this commit, could otherwise fill again with the state being replaced.
    A failing action is logged, and the others still run: the change is committed."""
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


async def commit(session: AsyncSession) -> None:
    """Commit, then run what was registered with after_commit."""
    await session.commit()
    for action in session.info.pop(_AFTER_COMMIT, []):
        try:
            await action()
        except Exception as exc:
            log.error("after-commit action failed", action=repr(action), error=repr(exc))


E = TypeVar("E", bound=BaseException)
_COMMIT_ANYWAY = "commit_unit_of_work"


def commit_anyway(error: E) -> E:
    """Mark an error whose unit of work is committed all the same, before it is answered:
    `raise commit_anyway(InvalidCredentials())`. For a record of the failure itself (a
    failed login's audit event) that a rollback would lose. Everything the unit of work
    holds is committed with it: raise it before any write the error should undo."""
    setattr(error, _COMMIT_ANYWAY, True)
    return error


async def _end_on_error(session: AsyncSession, error: BaseException) -> None:
    if getattr(error, _COMMIT_ANYWAY, False):
        await commit(session)
    else:
        await session.rollback()


@asynccontextmanager
async def transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit when the block ends (then the after_commit actions), roll
    back when it raises (unless the error says commit_anyway). The request's session is
    one (get_session); background work (a worker's batch, a consumer's write, a start-up
    task) opens its own with this, never with a bare sessionmaker() and commit()."""
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException as error:
            await _end_on_error(session, error)
            raise
        else:
            await commit(session)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One unit of work per request: commit when the endpoint returns, roll back on error
    (commit_anyway: commit, then answer the error)."""
    async with transaction(request.app.state.sessionmaker) as session:
        yield session


# scope="function": commit before the response is sent, so a failed commit is a failed request.
DbSession = Annotated[AsyncSession, Depends(get_session, scope="function")]


class _LazySession:
    """Stands in for an AsyncSession and opens the real one on first use."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self.opened: AsyncSession | None = None

    def __getattr__(self, name: str) -> Any:
        if self.opened is None:
            self.opened = self._sessionmaker()
        return getattr(self.opened, name)


@asynccontextmanager
async def lazy_transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """As transaction(), for work that usually needs no database: no session is opened
    (nor committed) unless the block touches it."""
    lazy = _LazySession(sessionmaker)
    try:
        yield cast(AsyncSession, lazy)
    except BaseException as error:
        if lazy.opened is not None:
            try:
                await _end_on_error(lazy.opened, error)
            finally:
                await lazy.opened.close()
        raise
    if lazy.opened is not None:
        try:
            await commit(lazy.opened)
        finally:
            await lazy.opened.close()


async def get_lazy_session(request: Request) -> AsyncIterator[AsyncSession]:
    """As get_session, for routes that usually answer from memory: no session is opened
    (nor committed) unless the route touches the database."""
    async with lazy_transaction(request.app.state.sessionmaker) as session:
        yield session


LazyDbSession = Annotated[AsyncSession, Depends(get_lazy_session, scope="function")]


@asynccontextmanager
async def command_line_database(
    url: str, *, application_name: str
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The database for a command-line task (`python -m auth create-admin`, `python -m
    inference rotate-keys`): a small pool and its sessionmaker, disposed when the block
    ends. The task opens its unit of work with transaction()."""
    engine = create_engine(url, application_name=application_name, pool_size=1, max_overflow=1)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def ping_database(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
