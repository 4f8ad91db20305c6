"""One pure-ASGI middleware per app: request id, server span, Prometheus HTTP metrics, one
access log line.

The server span is made here rather than by opentelemetry-instrumentation-fastapi: that
instrumentation cost ~0.3 ms CPU per request even with spans not recorded (bench/README.md),
and it names spans before the gateway knows a proxied request's route template.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable

import structlog
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.propagators.textmap import Getter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.metrics import http_metrics

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# Probes and scrapes (and the gateway's report of its upstreams): counted, but neither
# traced nor logged.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/readyz/upstreams"})
access_log = structlog.get_logger("access")
tracer = trace.get_tracer("common.middleware")


def route_template(scope: Scope) -> str:
    """The matched route's template (`/v1/collections/{id}`), never the raw path."""
    template = scope.get("route_template")
    if isinstance(template, str):
        return template
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


class _HeaderGetter(Getter[list[tuple[bytes, bytes]]]):
    """W3C trace context straight from the ASGI header list."""

    def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.encode("latin-1")
        found = [v.decode("latin-1") for k, v in carrier if k == name]
        return found or None

    def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_getter = _HeaderGetter()


class RequestMiddleware:
    """`trace_context_from`, for an app at the edge (the gateway): whose inbound trace
    context to join. Anyone else's starts a new trace, linked to theirs, so that callers
    choose neither trace ids nor sampling, and baggage from outside is never taken. None:
    every caller's is joined (a service behind the gateway: its callers are ours)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str,
        trace_context_from: Callable[[Scope], bool] | None = None,
    ) -> None:
        self.app = app
        self.metrics = http_metrics(service)
        self.trace_context_from = trace_context_from

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id
        method = scope["method"]
        quiet = scope["path"] in QUIET_PATHS
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        if quiet:
            try:
                # Nor are the probes' own calls (readiness pings Postgres, Redis, the peers):
                # the instrumentations would make a root trace of each, every few seconds.
                with suppress_instrumentation():
                    await self.app(scope, receive, send_wrapper)
            finally:
                self._count(route_template(scope), method, status, time.perf_counter() - start)
            return

        parent, links = self._parent(scope)
        span = tracer.start_span(method, context=parent, kind=trace.SpanKind.SERVER, links=links)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        structlog.contextvars.bind_contextvars(request_id=request_id)
        failure: BaseException | None = None
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            route = route_template(scope)
            self._count(route, method, status, elapsed)
            state = scope.get("state", {})
            access_log.info(
                "request",
                method=method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                user_id=state.get("user_id"),
            )
            if span.is_recording():
                _describe(span, scope, method, route, status, failure)
            span.end()
            structlog.contextvars.unbind_contextvars("request_id")
            otel_context.detach(token)

    def _parent(self, scope: Scope) -> tuple[otel_context.Context, list[trace.Link]]:
        """The context the request's span starts in, and the links it carries."""
        inbound = propagate.extract(scope["headers"], getter=_getter)
        if self.trace_context_from is None:
            return inbound, []
        if self.trace_context_from(scope):
            return baggage.clear(inbound), []
        caller = trace.get_current_span(inbound).get_span_context()
        return otel_context.Context(), [trace.Link(caller)] if caller.is_valid else []

    def _count(self, route: str, method: str, status: int, elapsed: float) -> None:
        labels = (route, method, str(status))
        self.metrics.requests.labels(*labels).inc()
        self.metrics.duration.labels(*labels).observe(elapsed)


def _describe(
    span: trace.Span,
    scope: Scope,
    method: str,
    route: str,
    status: int,
    failure: BaseException | None,
) -> None:
    """HTTP semantic-convention attributes, set only on spans that are recorded."""
    span.update_name(f"{method} {route}")
    client = scope.get("client")
    user_id = scope.get("state", {}).get("user_id")
    span.set_attributes(
        {
            "http.request.method": method,
            "http.route": route,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
            "http.response.status_code": status,
            "client.address": client[0] if client else "",
            **({"enduser.id": user_id} if user_id else {}),
        }
    )
    if failure is not None and not isinstance(failure, Exception):
        return  # cancelled: not an error of ours
    if failure is not None:
        span.record_exception(failure)
    if failure is not None or status >= 500:
        span.set_status(trace.StatusCode.ERROR)


def _request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
            return bytes(value).decode()
    return uuid.uuid4().hex
