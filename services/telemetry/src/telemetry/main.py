"""The telemetry service application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from common.app import create_service_app, database_and_redis
from telemetry.api import router
from telemetry.consumer import StreamConsumer
from telemetry.service import Ingestor
from telemetry.settings import TelemetrySettings

log = structlog.get_logger(__name__)


async def maintain_partitions(ingestor: Ingestor, interval: float) -> None:
    """At start and then every `interval`: partitions ahead, retention behind."""
    while True:
        try:
            await ingestor.maintain()
        except Exception as exc:  # the database away, a lock not granted: try again soon
            log.warning("partition maintenance failed", error=repr(exc))
            await asyncio.sleep(min(interval, 30.0))
            continue
        await asyncio.sleep(interval)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: TelemetrySettings = app.state.settings
    async with database_and_redis(app, settings):
        ingestor = Ingestor(app.state.engine, retention_days=settings.retention_days)
        app.state.ingestor = ingestor
        maintenance = asyncio.create_task(
            maintain_partitions(ingestor, settings.maintenance_interval_seconds)
        )
        consumers = [
            StreamConsumer(
                app.state.redis,
                app.state.engine,
                ingestor,
                settings,
                name=f"{settings.consumer_name}-{number}",
            )
            for number in range(1, settings.consumers + 1)
            if settings.consumer_enabled
        ]
        for consumer in consumers:
            consumer.start()
        app.state.consumers = consumers
        try:
            yield
        finally:
            await asyncio.gather(*(consumer.stop() for consumer in consumers))
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance


def create_app(settings: TelemetrySettings | None = None) -> FastAPI:
    return create_service_app(
        settings or TelemetrySettings(),
        public=router,
        lifespan=lifespan,
        title="Telemetry",
        description="The record of every LLM call: tokens, latency, cost; usage queries.",
    )
