"""The auth service application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from auth.api import router
from auth.settings import AuthSettings
from common.app import create_service_app, database_and_redis


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with database_and_redis(app, app.state.settings):
        yield


def create_app(settings: AuthSettings | None = None) -> FastAPI:
    return create_service_app(
        settings or AuthSettings(),
        public=router,
        lifespan=lifespan,
        title="Auth",
        description="Users, roles and permissions, login sessions in Redis, API keys.",
    )
