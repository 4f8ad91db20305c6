"""The gateway application: the only public entry to the platform."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from common.app import new_app
from common.redis import create_redis, ping_redis
from gateway.api import router
from gateway.clients import upstream_clients
from gateway.openapi import OpenAPICache
from gateway.settings import GatewaySettings

TITLE = "LLM Platform API"
VERSION = "0.1.0"


def _upstream_ready(client: httpx.AsyncClient) -> Any:
    async def check() -> dict[str, Any]:
        response = await client.get("/readyz", timeout=2.0)
        body = response.json()
        return {
            "status": "ok" if response.status_code == 200 else "error",
            "checks": body.get("checks", {}),
        }

    return check


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: GatewaySettings = app.state.settings
    clients = upstream_clients(settings)
    redis = create_redis(settings.redis_url)
    app.state.upstreams = clients
    app.state.redis = redis
    app.state.openapi = OpenAPICache(clients, title=TITLE, version=VERSION)

    async def redis_ready() -> None:
        await ping_redis(redis)

    app.state.readiness_checks["redis"] = redis_ready
    for name, client in clients.items():
        app.state.readiness_checks[name] = _upstream_ready(client)
    try:
        yield
    finally:
        await asyncio.gather(*(client.aclose() for client in clients.values()))
        await redis.aclose()


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    app = new_app(settings or GatewaySettings(), lifespan=lifespan, title=TITLE, version=VERSION)
    app.include_router(router)
    return app
