"""The inference service application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from common.app import create_service_app, database_and_redis
from inference.api import router
from inference.settings import InferenceSettings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with database_and_redis(app, app.state.settings):
        yield


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    return create_service_app(
        settings or InferenceSettings(),
        public=router,
        lifespan=lifespan,
        title="Inference",
        description=(
            "LLM providers behind one OpenAI-compatible API: encrypted credentials, routing,"
            " retries, fallbacks, streaming."
        ),
    )
