"""The auth service application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import APIRouter, FastAPI
from sqlalchemy.exc import IntegrityError

from auth import background, service
from auth.api import internal, router
from auth.runtime import Runtime
from auth.settings import AuthSettings
from common.app import create_service_app, database_and_redis

log = structlog.get_logger(__name__)


async def _flush_api_key_use_forever(runtime: Runtime, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await background.flush_api_key_use(runtime)
        except Exception:
            log.exception("flushing API key use failed; will retry")


async def bootstrap_admin(runtime: Runtime) -> None:
    """ADMIN_EMAIL / ADMIN_PASSWORD: the first admin, created once (every replica may try).
    A refusal (AdminRefused) stops the start with one line saying why."""
    settings = runtime.settings
    if not (settings.admin_email and settings.admin_password):
        return
    email = service.normalize_email(settings.admin_email)
    try:
        changed = await background.create_admin(
            runtime,
            email=email,
            password=settings.admin_password.get_secret_value(),
            promote_existing=settings.admin_promote_existing,
            via="bootstrap",
        )
    except IntegrityError:
        changed = False  # another replica created it at the same moment
    if changed:
        log.info("admin ready", email=email)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: AuthSettings = app.state.settings
    async with database_and_redis(app, settings):
        runtime = Runtime.create(
            settings, sessionmaker=app.state.sessionmaker, redis=app.state.redis
        )
        app.state.runtime = runtime
        await bootstrap_admin(runtime)
        flusher = asyncio.create_task(
            _flush_api_key_use_forever(runtime, settings.api_key_last_used_flush_seconds)
        )
        try:
            yield
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            with contextlib.suppress(Exception):
                await background.flush_api_key_use(runtime)
            await runtime.aclose()


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
