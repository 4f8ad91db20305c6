"""The embeddings service application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from common.app import create_service_app, database_and_redis
from embeddings.api import router
from embeddings.settings import EmbeddingsSettings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with database_and_redis(app, app.state.settings):
        yield


def create_app(settings: EmbeddingsSettings | None = None) -> FastAPI:
    return create_service_app(
        settings or EmbeddingsSettings(),
        public=router,
        lifespan=lifespan,
        title="Embeddings",
        description="Collections of documents with pgvector indexes and semantic search.",
    )
