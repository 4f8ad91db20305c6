"""The auth service application."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import APIRouter, FastAPI
from sqlalchemy.exc import IntegrityError

from auth import service
from auth.api import internal, router
from auth.passwords import Hasher
from auth.settings import AuthSettings
from common.app import create_service_app, database_and_redis
from common.principals import SessionStore

log = structlog.get_logger(__name__)


async def _flush_api_key_use_forever(app: FastAPI, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await service.flush_api_key_use(app.state.sessionmaker, app.state.redis)
        except Exception:
            log.exception("flushing API key use failed; will retry")


async def bootstrap_admin(app: FastAPI) -> None:
    """ADMIN_EMAIL / ADMIN_PASSWORD: the first admin, created once (every replica may try).
    A refusal (AdminRefused) stops the start with one line saying why."""
    settings: AuthSettings = app.state.settings
    if not (settings.admin_email and settings.admin_password):
        return
    email = service.normalize_email(settings.admin_email)
    ctx = service.Context(now=time.time(), ip="", user_agent="bootstrap", trace_id=None)
    try:
        async with app.state.sessionmaker() as db:
            changed = await service.ensure_admin(
                db,
                hasher=app.state.hasher,
                email=email,
                password=settings.admin_password.get_secret_value(),
                ctx=ctx,
                store=app.state.sessions,
                promote_existing=settings.admin_promote_existing,
            )
            await db.commit()
    except IntegrityError:
        changed = False  # another replica created it at the same moment
    if changed:
        log.info("admin ready", email=email)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: AuthSettings = app.state.settings
    async with database_and_redis(app, settings):
        app.state.clock = time.time
        app.state.sessions = SessionStore(app.state.redis)
        app.state.hasher = Hasher(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        app.state.login_throttle = service.LoginThrottle(app.state.redis, settings)
        await bootstrap_admin(app)
        flusher = asyncio.create_task(
            _flush_api_key_use_forever(app, settings.api_key_last_used_flush_seconds)
        )
        try:
            yield
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            with contextlib.suppress(Exception):
                await service.flush_api_key_use(app.state.sessionmaker, app.state.redis)


def create_app(settings: AuthSettings | None = None) -> FastAPI:
    # One router for both, so the internal routes come before the service's catch-all 404.
    routes = APIRouter()
    routes.include_router(router)
    routes.include_router(internal)
    return create_service_app(
        settings or AuthSettings(),
        public=routes,
        lifespan=lifespan,
        title="Auth",
        description="Users, roles and permissions, login sessions in Redis, API keys.",
    )
