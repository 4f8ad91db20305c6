"""The gateway application: the only public entry to the platform."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware import Middleware

from common.app import PlatformApp, new_app
from common.redis import ping_redis
from gateway.api import probes, router
from gateway.console import ConsoleConfig, console_router
from gateway.forwarded import TrustedProxies
from gateway.openapi import TITLE, VERSION
from gateway.proxy import ProxyMiddleware
from gateway.runtime import Runtime
from gateway.settings import GatewaySettings


@asynccontextmanager
async def lifespan(
    app: FastAPI, *, clock: Callable[[], float], trusted_proxies: TrustedProxies
) -> AsyncIterator[None]:
    runtime = Runtime.start(app.state.settings, clock=clock, trusted_proxies=trusted_proxies)
    app.state.runtime = runtime

    async def redis_ready() -> None:
        await ping_redis(runtime.redis)

    # Only what the gateway needs itself: an upstream that is down fails its own routes, not
    # the gateway's readiness (its state: /readyz/upstreams, gateway/upstream_health.py).
    app.state.readiness_checks["redis"] = redis_ready
    runtime.upstream_health.start()
    try:
        yield
    finally:
        await runtime.aclose()


def create_app(
    settings: GatewaySettings | None = None, *, clock: Callable[[], float] = time.time
) -> FastAPI:
    """The gateway; `clock` (seconds since the epoch) times sessions and rate windows."""
    settings = settings or GatewaySettings()
    trusted_proxies = TrustedProxies(settings.trusted_proxies)
    app = new_app(
        settings,
        lifespan=partial(lifespan, clock=clock, trusted_proxies=trusted_proxies),
        title=TITLE,
        version=VERSION,
    )
    assert isinstance(app, PlatformApp)
    app.trace_context_from = (
        trusted_proxies.peer_trusted if settings.join_proxy_trace_context else lambda _: False
    )
    app.include_router(router)
    app.include_router(probes)
    config = ConsoleConfig(settings.console_trace_url, csrf_cookie=settings.csrf_cookie_name)
    app.include_router(console_router(settings.console_dir, config))
    # Innermost middleware: behind the request id, metrics and access log, before routing.
    app.user_middleware.append(Middleware(ProxyMiddleware))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-CSRF-Token", "X-Request-ID"],
            expose_headers=[
                "X-Request-ID", "Retry-After",
                "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
            ],
        )  # fmt: skip
    return app
