"""The auth service application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI
from sqlalchemy.exc import IntegrityError

from auth import background, service
from auth.api import internal, router
from auth.runtime import Runtime
from auth.settings import AuthSettings
from common.app import create_service_app, database_and_redis

log = structlog.get_logger(__name__)
# How often each replica sets the teams' budget gauge, and looks for budget announcements
# to audit (one Redis read when there are none).
TEAM_BUDGETS_SECONDS = 15.0
BUDGET_ALERTS_SECONDS = 2.0


Work = Callable[[Runtime], Awaitable[Any]]


async def _forever(every: float, runtime: Runtime, works: dict[str, Work]) -> None:
    """Each piece of work every `every` seconds, one after the other; a failure is logged
    and the work tried again next time."""
    while True:
        await asyncio.sleep(every)
        for what, work in works.items():
            try:
                await work(runtime)
            except Exception:
                log.exception("background work failed; will retry", work=what)


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
        flushing: dict[str, Work] = {"API key use": background.flush_api_key_use}
        alerts: dict[str, Work] = {"budget alerts": background.record_budget_alerts}
        gauges: dict[str, Work] = {"team budget gauge": background.refresh_team_budgets}
        tasks = [
            asyncio.create_task(
                _forever(settings.api_key_last_used_flush_seconds, runtime, flushing)
            ),
            asyncio.create_task(_forever(BUDGET_ALERTS_SECONDS, runtime, alerts)),
            asyncio.create_task(_forever(TEAM_BUDGETS_SECONDS, runtime, gauges)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
