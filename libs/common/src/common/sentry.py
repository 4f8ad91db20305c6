"""Error reports to Sentry, only where `SENTRY_DSN` is set: otherwise sentry_sdk is never
imported and no request pays anything for it.

What is sent: an unhandled error of a request (sentry-sdk's FastAPI/Starlette integration,
with the request), an HTTP 5xx exception, and an `error` log line (its logging
integration); each tagged `service`, and `trace_id` and `request_id` when it happened in a
request (the ids in the log lines and the problem+json body). What is not: the caller's
identity (sentry-sdk's default: no personal data), and any secret: every event goes
through the logs' redaction (common.logging) as a whole, request headers, cookies, body,
breadcrumbs and the local variables of its frames included, after Sentry's own scrubber.

Only the two web integrations are enabled (no auto-enabled ones): those for httpx, Redis
or SQLAlchemy would instrument every call on the hot paths, and Sentry's trace headers are
never added to outgoing requests (a provider sees what it saw before). OpenTelemetry stays
the tracer: no Sentry performance data is collected (were some sent, it is scrubbed too).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, cast

import structlog

from common.logging import redact_value
from common.tracing import current_trace_id

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from sentry_sdk.types import Event, Hint
    from starlette.responses import Response

    from common.settings import ServiceSettings

# common.errors logs an unhandled error before the request's report is sent: that log line
# would be the same error a second time.
_REPORTED_BY_THE_INTEGRATION = "common.errors"


def configure_sentry(settings: ServiceSettings) -> None:
    """Start reporting to `settings.sentry_dsn`, once per process; nothing when unset."""
    if settings.sentry_dsn is None:
        return
    import sentry_sdk
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.logging import ignore_logger
    from sentry_sdk.integrations.starlette import StarletteIntegration

    dsn = settings.sentry_dsn.get_secret_value()
    if sentry_sdk.get_client().dsn == dsn:
        return  # configured already (configure_process may run twice)
    sentry_sdk.init(
        dsn=dsn,
        environment=settings.sentry_environment or settings.environment,
        auto_enabling_integrations=False,
        integrations=[StarletteIntegration(), FastApiIntegration()],
        trace_propagation_targets=[],
        before_send=_scrub,
        before_send_transaction=_scrub,
    )
    ignore_logger(_REPORTED_BY_THE_INTEGRATION)
    scope = sentry_sdk.get_global_scope()
    scope.set_tag("service", settings.service_name)
    scope.add_event_processor(_tag_request)


def report_unexpected_errors(app: FastAPI, settings: ServiceSettings) -> None:
    """Tag the report of an error that escapes `app`'s routes with its request's ids.

    The integration reports such an error where it leaves the app, after the request
    middleware has closed the request's span: the app's handler for Exception (which
    answers the 500) still runs inside it, so it puts the ids on the request's scope."""
    if settings.sentry_dsn is None:
        return
    import sentry_sdk

    answer = app.exception_handlers[Exception]

    async def tag_and_answer(request: Request, exc: Exception) -> Response:
        tags = _request_tags()
        if tags:
            sentry_sdk.get_isolation_scope().set_tags(tags)
        response = answer(request, exc)
        return await response if inspect.isawaitable(response) else response

    app.exception_handlers[Exception] = tag_and_answer


def _request_tags() -> dict[str, str]:
    """The current request's trace and request ids, those that are known."""
    tags = {"trace_id": current_trace_id(), "request_id": _current_request_id()}
    return {name: value for name, value in tags.items() if value}


def _current_request_id() -> str | None:
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    return request_id if isinstance(request_id, str) else None


def _tag_request(event: Event, _hint: Hint) -> Event:
    """An event captured inside a request (or a traced background task) gets its ids."""
    tags = event.setdefault("tags", {})
    for name, value in _request_tags().items():
        tags.setdefault(name, value)
    return event


def _scrub(event: Event, _hint: Hint) -> Event:
    """The whole event through the logs' redaction: sensitive keys dropped wherever they
    sit (headers, cookies, body fields, frame variables), secrets scrubbed out of text.
    `_meta` is Sentry's note of what its serializer cut or its scrubber removed: no data."""
    fields: dict[str, Any] = dict(event)
    meta = fields.pop("_meta", None)
    scrubbed = redact_value(fields)
    if meta is not None:
        scrubbed["_meta"] = meta
    return cast("Event", scrubbed)
