"""One trace follows a request: DB, Redis and HTTP calls become child spans, and the W3C
traceparent header carries the trace into the next service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import APIRouter, Request
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis
from sqlalchemy import text

from common.app import new_app
from common.db import create_engine
from common.settings import ServiceSettings
from common.tracing import (
    current_trace_id,
    instrument_libraries,
    resource,
)
from devkit.testing import LiveServer, RunDatabase


class TraceDemoSettings(ServiceSettings):
    service_name: ClassVar[str] = "tracedemo"


@pytest.fixture
def spans(spans: InMemorySpanExporter) -> InMemorySpanExporter:
    instrument_libraries()
    return spans


def _server_app() -> Any:
    router = APIRouter()

    @router.get("/seen")
    async def seen(request: Request) -> dict[str, str | None]:
        return {"traceparent": request.headers.get("traceparent"), "trace_id": current_trace_id()}

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield

    app = new_app(TraceDemoSettings(environment="test"), lifespan=lifespan, title="tracedemo")
    app.include_router(router)
    return app


async def test_db_redis_and_http_calls_are_children_of_the_current_span(
    spans: InMemorySpanExporter, test_database: RunDatabase, redis_url: str
) -> None:
    spans.clear()
    engine = create_engine(test_database.admin_url, application_name="tracedemo")
    redis = Redis.from_url(redis_url)
    tracer = trace.get_tracer("test")
    try:
        async with LiveServer(_server_app()) as server, httpx.AsyncClient() as client:
            with tracer.start_as_current_span("work") as parent:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                await redis.ping()
                seen = (await client.get(f"{server.url}/seen")).json()
    finally:
        await engine.dispose()
        await redis.aclose()

    trace_id = parent.get_span_context().trace_id
    parent_id = parent.get_span_context().span_id
    finished = spans.get_finished_spans()
    children = [s for s in finished if s.parent is not None and s.parent.span_id == parent_id]
    systems = {
        s.attributes.get("db.system") or s.attributes.get("db.system.name") for s in children
    }
    assert "postgresql" in systems
    assert "redis" in systems
    http_client = [s for s in children if s.kind == trace.SpanKind.CLIENT and "GET" in s.name]
    assert http_client, [s.name for s in children]

    # The server saw a W3C traceparent for our trace, and its own spans joined that trace.
    assert seen["traceparent"].split("-")[1] == format(trace_id, "032x")
    assert seen["trace_id"] == format(trace_id, "032x")
    server_spans = [s for s in finished if s.kind == trace.SpanKind.SERVER]
    assert any(s.context.trace_id == trace_id for s in server_spans)


async def test_probes_are_not_traced_nor_is_what_they_check(
    spans: InMemorySpanExporter, test_database: RunDatabase, redis_url: str
) -> None:
    engine = create_engine(test_database.admin_url, application_name="tracedemo")
    redis = Redis.from_url(redis_url)

    async def postgres_ready() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    app = _server_app()
    app.state.readiness_checks.update(postgres=postgres_ready, redis=redis.ping)
    try:
        async with LiveServer(app) as server, httpx.AsyncClient() as client:
            for path in ("/healthz", "/readyz", "/metrics"):
                assert (await client.get(f"{server.url}{path}")).status_code == 200
            # The test's own client spans aside, nothing: no server span, no SELECT, no PING.
            server_side = [s for s in spans.get_finished_spans() if s.kind != SpanKind.CLIENT
                           or "GET" not in s.name]  # fmt: skip
            assert server_side == [], [s.name for s in server_side]

            # The same checks outside a probe are traced (spans are recorded here).
            await postgres_ready()
            await redis.ping()
    finally:
        await engine.dispose()
        await redis.aclose()
    systems = {s.attributes.get("db.system") for s in spans.get_finished_spans() if s.attributes}
    assert {"postgresql", "redis"} <= systems


def test_resource_attributes_come_from_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv(
        "OTEL_RESOURCE_ATTRIBUTES", "service.version=1.4.2,deployment.environment=staging"
    )
    attributes = resource("inference").attributes
    assert attributes["service.name"] == "inference"  # the service's own name by default
    assert attributes["service.version"] == "1.4.2"
    assert attributes["deployment.environment"] == "staging"

    # An operator's name wins over the default, from either variable; OTEL_SERVICE_NAME
    # over OTEL_RESOURCE_ATTRIBUTES.
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=inference-eu,service.version=2")
    assert resource("inference").attributes["service.name"] == "inference-eu"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "inference-canary")
    assert resource("inference").attributes["service.name"] == "inference-canary"
    assert resource("inference").attributes["service.version"] == "2"
