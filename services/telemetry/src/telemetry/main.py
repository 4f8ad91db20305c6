"""The telemetry service application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from common.app import create_service_app, database_and_redis
from telemetry.api import router
from telemetry.settings import TelemetrySettings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with database_and_redis(app, app.state.settings):
        yield


def create_app(settings: TelemetrySettings | None = None) -> FastAPI:
    return create_service_app(
        settings or TelemetrySettings(),
        public=router,
        lifespan=lifespan,
        title="Telemetry",
        description="The record of every LLM call: tokens, latency, cost; usage queries.",
    )
