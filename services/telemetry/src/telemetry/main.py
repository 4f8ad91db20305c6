"""The telemetry service application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import APIRouter, FastAPI

from common.app import create_service_app, database_and_redis
from telemetry import service
from telemetry.api import internal, router
from telemetry.clients import Auth
from telemetry.consumer import StreamConsumer
from telemetry.runtime import Runtime
from telemetry.settings import TelemetrySettings

log = structlog.get_logger(__name__)


def _stopping() -> bool:
    """This task is being cancelled: a cancellation that reached a driver mid-operation can
    come out as another error (the connection broken), which must not keep a loop alive."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def maintain_partitions(runtime: Runtime, interval: float) -> None:
    """At start and then every `interval`: partitions ahead, retention behind."""
    while True:
        try:
            await service.maintain(runtime)
        except Exception as exc:  # the database away, a lock not granted: try again soon
            if _stopping():
                raise asyncio.CancelledError from exc
            log.warning("partition maintenance failed", error=repr(exc))
            await asyncio.sleep(min(interval, 30.0))
            continue
        await asyncio.sleep(interval)


async def prewarm_usage(runtime: Runtime, interval: float) -> None:
    """At start and then every `interval`: everyone's usage of the recent closed days into
    the per-day cache, where it is missing or stale."""
    while True:
        try:
            computed = await service.refresh_usage_cache(runtime)
            if computed:
                log.info("usage days cached", days=computed)
        except Exception as exc:  # the database away: the queries compute what they need
            if _stopping():
                raise asyncio.CancelledError from exc
            log.warning("usage cache refresh failed", error=repr(exc))
        await asyncio.sleep(interval)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: TelemetrySettings = app.state.settings
    async with database_and_redis(app, settings):
        runtime = Runtime(
            settings=settings,
            engine=app.state.engine,
            sessionmaker=app.state.sessionmaker,
            redis=app.state.redis,
            auth=Auth(settings),
        )
        app.state.runtime = runtime
        background = [
            asyncio.create_task(maintain_partitions(runtime, settings.maintenance_interval_seconds))
        ]
        if settings.usage_cache_refresh_seconds:
            background.append(
                asyncio.create_task(prewarm_usage(runtime, settings.usage_cache_refresh_seconds))
            )
        if settings.consumer_enabled:
            runtime.consumers = [
                StreamConsumer(runtime, name=f"{settings.consumer_name}-{number}")
                for number in range(1, settings.consumers + 1)
            ]
        for consumer in runtime.consumers:
            consumer.start()
        try:
            yield
        finally:
            await asyncio.gather(*(consumer.stop() for consumer in runtime.consumers))
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await runtime.auth.aclose()


def create_app(settings: TelemetrySettings | None = None) -> FastAPI:
    # One router for both, so the internal routes come before the service's catch-all 404.
    routes = APIRouter()
    routes.include_router(router)
    routes.include_router(internal)
    return create_service_app(
        settings or TelemetrySettings(),
        public=routes,
        lifespan=lifespan,
        title="Telemetry",
        description="The record of every LLM call: tokens, latency, cost; usage queries.",
    )
