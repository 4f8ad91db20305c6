"""The gateway application: the only public entry to the platform."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware import Middleware

from common.app import PlatformApp, new_app
from common.redis import create_redis, ping_redis
from gateway.api import router
from gateway.clients import Upstreams
from gateway.forwarded import TrustedProxies
from gateway.openapi import OpenAPICache
from gateway.proxy import InFlight, ProxyMiddleware
from gateway.security import Security
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
    upstreams = Upstreams(settings)
    clients = upstreams.clients
    redis = create_redis(settings.redis_url)
    app.state.upstreams = upstreams
    app.state.in_flight = InFlight(settings.upstream_max_connections_per_user)
    app.state.signing_key = settings.internal_signing_key.get_secret_value().encode()
    app.state.redis = redis
    app.state.security = Security(
        redis=redis, auth=clients["auth"], settings=settings, clock=app.state.clock
    )
    app.state.openapi = OpenAPICache(clients, title=TITLE, version=VERSION)

    async def redis_ready() -> None:
        await ping_redis(redis)

    app.state.readiness_checks["redis"] = redis_ready
    for name, client in clients.items():
        app.state.readiness_checks[name] = _upstream_ready(client)
    try:
        yield
    finally:
        await upstreams.aclose()
        await redis.aclose()


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    app = new_app(settings, lifespan=lifespan, title=TITLE, version=VERSION)
    assert isinstance(app, PlatformApp)
    app.state.clock = time.time
    app.state.trusted_proxies = TrustedProxies(settings.trusted_proxies)
    app.trace_context_from = (
        app.state.trusted_proxies.peer_trusted
        if settings.join_proxy_trace_context
        else lambda _: False
    )
    app.include_router(router)
    # Innermost middleware: behind the request id, metrics and access log, before routing.
    app.user_middleware.append(Middleware(ProxyMiddleware))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-CSRF-Token", "X-Request-ID"],
            expose_headers=[
                "X-Request-ID", "Retry-After",
                "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
            ],
        )  # fmt: skip
    return app
