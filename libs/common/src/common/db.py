"""Async SQLAlchemy per service: engine with a pool, one unit of work per request, schema base."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from sqlalchemy import MetaData, text
from sqlalchemy.ext import asyncio as sa_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import registry

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


def create_engine(
    url: str,
    *,
    application_name: str,
    pool_size: int = 10,
    max_overflow: int = 10,
) -> AsyncEngine:
    # Looked up at call time: OpenTelemetry wraps the module attribute to trace the engine.
    return sa_asyncio.create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"server_settings": {"application_name": application_name}},
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One unit of work per request: commit when the endpoint returns, roll back on error."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


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


async def get_lazy_session(request: Request) -> AsyncIterator[AsyncSession]:
    """As get_session, for routes that usually answer from memory: no session is opened
    (nor committed) unless the route touches the database."""
    lazy = _LazySession(request.app.state.sessionmaker)
    try:
        yield cast(AsyncSession, lazy)
    except BaseException:
        if lazy.opened is not None:
            try:
                await lazy.opened.rollback()
            finally:
                await lazy.opened.close()
        raise
    if lazy.opened is not None:
        try:
            await lazy.opened.commit()
        finally:
            await lazy.opened.close()


LazyDbSession = Annotated[AsyncSession, Depends(get_lazy_session, scope="function")]


async def ping_database(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
