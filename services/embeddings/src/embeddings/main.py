"""The embeddings service application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from common.app import create_service_app, database_and_redis
from common.fastpath import fast_route
from embeddings.api import QUERY_PATH, fast_query, router
from embeddings.clients import Inference
from embeddings.runtime import Runtime
from embeddings.settings import EmbeddingsSettings
from embeddings.vectors import install_codec
from embeddings.workers import Worker


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: EmbeddingsSettings = app.state.settings
    async with database_and_redis(app, settings):
        install_codec(app.state.engine)
        inference = getattr(app.state, "inference_client", None) or Inference(settings)
        worker = Worker()
        runtime = Runtime(
            settings=settings,
            engine=app.state.engine,
            sessionmaker=app.state.sessionmaker,
            inference=inference,
            redis=app.state.redis,
            poke=worker.poke,
        )
        app.state.runtime = runtime
        worker.start(runtime)
        try:
            yield
        finally:
            await worker.stop()
            await inference.aclose()


def create_app(settings: EmbeddingsSettings | None = None) -> FastAPI:
    settings = settings or EmbeddingsSettings()
    return create_service_app(
        settings,
        public=router,
        lifespan=lifespan,
        title="Embeddings",
        description="Collections of documents with pgvector indexes and semantic search.",
        fast_routes=[fast_route("POST", QUERY_PATH, fast_query)] if settings.fast_query else [],
    )
