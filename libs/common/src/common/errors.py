"""RFC 9457 problem details: one base exception, one renderer, handlers for everything."""

from __future__ import annotations

import contextlib
from typing import Any

import structlog
from asyncpg.exceptions import DataError, InterfaceError, InternalClientError, PostgresError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.db import database_unreachable
from common.tracing import current_trace_id

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger("common.errors")


class Problem(Exception):
    """An error a client may see. Subclasses set status, type slug and title."""

    status: int = 500
    slug: str | None = None
    title: str = "Internal Server Error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    @property
    def type(self) -> str:
        return f"urn:llm-platform:problem:{self.slug}" if self.slug else "about:blank"


class BadRequest(Problem):
    status, slug, title = 400, "bad-request", "Bad Request"


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Unauthorized"


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not Found"


class MethodNotAllowed(Problem):
    status, slug, title = 405, "method-not-allowed", "Method Not Allowed"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict"


class TooManyRequests(Problem):
    status, slug, title = 429, "rate-limited", "Too Many Requests"


class BadGateway(Problem):
    status, slug, title = 502, "upstream-unavailable", "Bad Gateway"


class ServiceUnavailable(Problem):
    status, slug, title = 503, "unavailable", "Service Unavailable"


class GatewayTimeout(Problem):
    status, slug, title = 504, "upstream-timeout", "Gateway Timeout"


# The conditions every service answers alike.


class NotAUser(Unauthorized):
    """The route acts for a user (a session or an API key) and the caller is none: a
    service on its own account, or no one."""

    slug = "authentication-required"


class MissingPermission(Forbidden):
    slug = "missing-permission"


class InvalidCursor(Problem):
    """A pagination cursor this API did not give out (422, as any invalid query parameter
    is: FastAPI's validation answers those)."""

    status, slug, title = 422, "invalid-cursor", "Unprocessable Content"


class ClientClosed(Problem):
    """The caller hung up before the answer; the work for it was cancelled. Nobody reads
    this answer: it is nginx's 499, for the access log and the metrics."""

    status, slug, title = 499, "client-closed", "Client Closed Request"


def problem_response(
    request: Request,
    *,
    status: int,
    title: str,
    type_: str = "about:blank",
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body["instance"] = request.url.path
    body.update(extra)
    body["trace_id"] = current_trace_id()
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def render_problem(request: Request, exc: Problem) -> JSONResponse:
    """The problem+json answer for a Problem (also for pure-ASGI code outside the router)."""
    if exc.status >= 500:
        log.warning("problem", status=exc.status, title=exc.title, detail=exc.detail)
    return problem_response(
        request,
        status=exc.status,
        title=exc.title,
        type_=exc.type,
        detail=exc.detail,
        headers=exc.headers,
        **exc.extra,
    )


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return render_problem(request, exc)


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    from http import HTTPStatus

    try:
        title = HTTPStatus(exc.status_code).phrase
    except ValueError:
        title = "Error"
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
    return problem_response(
        request,
        status=exc.status_code,
        title=title,
        detail=detail,
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(request, exc)


def validation_problem(
    request: Request, exc: RequestValidationError, *, status: int = 422
) -> JSONResponse:
    """The problem of a request that failed validation: `errors` name each field (`loc`).
    Status 422 (FastAPI's); 400 where the API imitates one that answers so (OpenAI's),
    with the first error named in the detail too."""
    # The submitted value ("input") is left out on purpose: it may be a password.
    errors = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    detail = "The request is not valid; see errors."
    if status == 400 and errors:
        where = ".".join(str(part) for part in errors[0]["loc"] if part != "body")
        # A check of the whole body names its field in its message.
        message = str(errors[0]["msg"]).removeprefix("Value error, ")
        detail = f"{where}: {message}" if where else message
    return problem_response(
        request,
        status=status,
        title="Bad Request" if status == 400 else "Unprocessable Content",
        type_="urn:llm-platform:problem:validation",
        detail=detail,
        errors=errors,
    )


async def _on_database_error(request: Request, exc: Exception) -> JSONResponse:
    """The database's errors (and OSError) are answered here, inside Starlette's exception
    layer: its last-resort layer (`_on_unexpected`) re-raises after answering, and uvicorn
    then closes the connection, which a caller keeping it alive (the gateway) finds broken
    on its next request."""
    return await _on_unexpected(request, exc)


def _refused_by_database(exc: BaseException) -> bool:
    """A value the database refuses as data (SQLSTATE class 22, asyncpg's DataError): text
    with a NUL character or a lone surrogate (not UTF-8), which no schema of ours may let
    through but which a field without the check would take as far as the INSERT."""
    seen: BaseException | None = exc
    for _ in range(8):  # the error and its causes (SQLAlchemy wraps asyncpg's)
        if seen is None:
            return False
        if isinstance(seen, DataError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's last-resort layer; the request middleware (outside it) adds the request id
    # header, and the request's span is still the current one.
    if _refused_by_database(exc):
        # Bad input, never a 500; the request's unit of work rolled back: nothing changed.
        log.warning("value refused by the database", error=repr(exc)[:300], path=request.url.path)
        return problem_response(
            request,
            status=422,
            title="Unprocessable Content",
            type_="urn:llm-platform:problem:invalid-value",
            detail="A value was refused: text may not contain NUL characters or invalid Unicode.",
        )
    if database_unreachable(exc):
        log.warning("database unavailable", error=repr(exc), path=request.url.path)
        return problem_response(
            request,
            status=503,
            title="Service Unavailable",
            type_="urn:llm-platform:problem:database-unavailable",
            detail="The database is busy or unavailable; try again shortly.",
            headers={"Retry-After": "1"},
        )
    log.error("unhandled exception", exc_info=exc, path=request.url.path)
    with contextlib.suppress(AttributeError):  # uvicorn need not log it again
        exc.__logged__ = True  # type: ignore[attr-defined]
    return problem_response(
        request,
        status=500,
        title="Internal Server Error",
        detail="An unexpected error occurred; quote the trace_id when reporting it.",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as application/problem+json with the trace id."""
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    for database_error in (DBAPIError, PoolTimeout, PostgresError, InterfaceError,
                           InternalClientError, OSError):  # fmt: skip
        app.add_exception_handler(database_error, _on_database_error)
    app.add_exception_handler(Exception, _on_unexpected)
