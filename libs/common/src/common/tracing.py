"""OpenTelemetry, configured only from the standard OTEL_* variables."""

from __future__ import annotations

import os
import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

_lock = threading.Lock()
_configured = False
_recording = False
_instrumented_libraries = False


def configure_tracing(service_name: str) -> None:
    """Install the tracer provider once per process.

    Resource attributes come from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (the
    service's own name is the default), the sampler from OTEL_TRACES_SAMPLER[_ARG],
    and spans are exported over OTLP/HTTP only when an OTLP endpoint is configured.
    """
    global _configured, _recording
    with _lock:
        if _configured:
            return
        exporting = bool(
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        # With nowhere to export to (and no sampler chosen), spans are not recorded: trace
        # and span ids still exist and propagate (logs and errors carry them), but the
        # cost of recording spans nobody reads (~1 ms per request) is not paid.
        _recording = exporting or bool(os.environ.get("OTEL_TRACES_SAMPLER"))
        sampler = None if _recording else ALWAYS_OFF
        provider = TracerProvider(resource=resource(service_name), sampler=sampler)
        if exporting:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _configured = True


def resource(service_name: str) -> Resource:
    """OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (which wins); the service's own name
    when neither names the service."""
    named = SERVICE_NAME in OTELResourceDetector().detect().attributes
    attributes: dict[str, Any] = {} if named else {SERVICE_NAME: service_name}
    return Resource.create(attributes)


def recording_spans() -> bool:
    """Whether this process records spans at all (configure_tracing decided): code that
    makes many spans of its own checks this first, so that it costs nothing otherwise."""
    return _recording


def span_link_limit() -> int | None:
    """How many links a span keeps (OTEL_SPAN_LINK_COUNT_LIMIT, 128 by default; None: no
    limit). Beyond it the SDK silently drops the oldest."""
    return SpanLimits().max_links


def instrument_libraries() -> None:
    """Instrument the clients, once: httpx always (it carries the W3C traceparent to peers,
    so logs correlate across services even when nothing is exported); aiohttp (the proxy
    hop, the OpenAI SDK's transport), redis and SQLAlchemy only when spans are recorded:
    unrecorded, their spans cost ~0.3 ms CPU per request per process and show nothing.
    (The gateway injects the traceparent on its aiohttp hop itself.)

    SQLAlchemy is instrumented by wrapping engine creation, so every engine made after
    this (through `sqlalchemy.ext.asyncio.create_async_engine`) is traced.
    """
    global _instrumented_libraries
    with _lock:
        if _instrumented_libraries:
            return
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument()
        if _recording:
            from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
            from opentelemetry.instrumentation.redis import RedisInstrumentor
            from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

            AioHttpClientInstrumentor().instrument()
            RedisInstrumentor().instrument()
            SQLAlchemyInstrumentor().instrument(enable_commenter=False)
        _instrumented_libraries = True


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def current_span_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.span_id, "016x") if ctx.is_valid else None
