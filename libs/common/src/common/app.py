"""Assembling an app: logging, tracing, metrics, error handlers, probes, identity check."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import health
from common.db import create_engine, create_sessionmaker, ping_database
from common.errors import NotFound, install_error_handlers
from common.fastpath import FastRoute, FastRoutes
from common.identity import require_identity
from common.logging import configure_logging
from common.middleware import RequestMiddleware
from common.redis import create_redis, ping_redis
from common.sentry import configure_sentry, report_unexpected_errors
from common.settings import DatabaseSettings, ServiceSettings
from common.tracing import configure_tracing, instrument_libraries

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]
INTERNAL_OPENAPI_PATH = "/internal/openapi.json"


class StartupRefused(Exception):
    """An app refuses to start because of how it is configured. Its message, one line that
    names the setting and what is wrong with it, is all that is logged: no traceback."""


class PlatformApp(FastAPI):
    """FastAPI with the request middleware (request id, server span, metrics, access log)
    outside everything, Starlette's last-resort error layer included: an unexpected error's
    500 is counted, logged and answered inside the request's span, with its trace id.
    `fast_routes` (common.fastpath), set before the app first runs, go under it too."""

    fast_routes: Sequence[FastRoute] = ()
    # At the edge: whose inbound trace context to join (common.middleware.RequestMiddleware).
    trace_context_from: Callable[[Scope], bool] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await super().__call__(scope, receive, send)
            return
        # Starlette reports a failed start-up with the traceback as its message, which the
        # server logs; for a StartupRefused the refusal's own line replaces it.
        held: list[Message] = []

        async def hold_failure(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)
            else:
                await send(message)

        try:
            await super().__call__(scope, receive, hold_failure)
        except StartupRefused as exc:
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        except BaseException:
            for message in held:
                await send(message)
            raise
        for message in held:
            await send(message)

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if self.fast_routes:
            stack = FastRoutes(stack, self.fast_routes, self.exception_handlers[Exception],
                               self.exception_handlers)  # fmt: skip
        return RequestMiddleware(
            stack,
            service=self.state.settings.service_name,
            trace_context_from=self.trace_context_from,
        )


def instrument(app: FastAPI, settings: ServiceSettings) -> None:
    """What every app gets: probes, problem+json errors (the request middleware comes with
    PlatformApp)."""
    app.state.settings = settings
    app.state.readiness_checks = {}
    install_error_handlers(app)
    report_unexpected_errors(app, settings)
    app.include_router(health.router)


def configure_process(settings: ServiceSettings) -> None:
    """Logging, tracing and error reports are per process; calling this twice is harmless."""
    configure_logging(settings.service_name, level=settings.log_level, json=settings.json_logs)
    configure_tracing(settings.service_name)
    instrument_libraries()
    configure_sentry(settings)


def new_app(
    settings: ServiceSettings,
    *,
    lifespan: Lifespan,
    title: str,
    description: str = "",
    version: str = "0.1.0",
) -> FastAPI:
    """A FastAPI app with everything `instrument` gives, and no OpenAPI routes of its own
    (the gateway publishes the one public document)."""
    configure_process(settings)
    app = PlatformApp(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # FastAPI's own telemetry would trace, count and log every request a second time
        # (and span each dependency): our request middleware already does.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    instrument(app, settings)
    return app


def create_service_app(
    settings: ServiceSettings,
    *,
    public: APIRouter,
    lifespan: Lifespan,
    title: str,
    description: str = "",
    version: str = "0.1.0",
    fast_routes: Sequence[FastRoute] = (),
) -> FastAPI:
    """A service behind the gateway: every route but the probes needs a signed identity.

    The service's OpenAPI document is served to the gateway (signed) at
    /internal/openapi.json; the public documentation lives on the gateway only.
    `fast_routes` answer some of `public`'s routes on their success path (common.fastpath):
    each handler checks the signed identity itself.
    """
    app = new_app(
        settings, lifespan=lifespan, title=title, description=description, version=version
    )
    assert isinstance(app, PlatformApp)
    app.fast_routes = tuple(fast_routes)

    async def openapi() -> dict[str, Any]:
        return app.openapi()

    # Before the public routes, so that none of them can shadow it.
    app.add_api_route(
        INTERNAL_OPENAPI_PATH,
        openapi,
        methods=["GET"],
        include_in_schema=False,
        dependencies=[Depends(require_identity)],
    )
    app.include_router(public, dependencies=[Depends(require_identity)])

    async def not_found() -> None:
        raise NotFound("No such route.")

    # Last route: an unsigned caller learns nothing, not even which paths exist.
    app.add_api_route(
        "/{path:path}",
        not_found,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        include_in_schema=False,
        dependencies=[Depends(require_identity)],
    )
    return app


@asynccontextmanager
async def database_and_redis(app: FastAPI, settings: DatabaseSettings) -> AsyncIterator[None]:
    """Lifespan piece: the service's engine, sessionmaker and Redis, with readiness checks."""
    engine = create_engine(
        settings.database_url,
        application_name=settings.service_name,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout,
    )
    redis = create_redis(settings.redis_url)
    app.state.engine = engine
    app.state.sessionmaker = create_sessionmaker(engine)
    app.state.redis = redis

    async def postgres_ready() -> None:
        await ping_database(engine)

    async def redis_ready() -> None:
        await ping_redis(redis)

    app.state.readiness_checks.update(postgres=postgres_ready, redis=redis_ready)
    try:
        yield
    finally:
        await redis.aclose()
        await engine.dispose()
