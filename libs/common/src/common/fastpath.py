"""Hot routes answered below FastAPI's router, on their success path only.

FastAPI's routing, dependency solving and request wrappers cost about a millisecond of CPU
per request on a small machine: for a route that is otherwise a single database round
trip (a vector search), that is a third of the request. A fast route answers such a
request with a plain handler, and only when it can answer exactly as its FastAPI route
would. Its handler returns None, or raises a Problem or a ValueError (a pydantic
ValidationError is one), for anything else: a body that does not validate, a missing
permission, an unknown id. The request then goes to the FastAPI route, its body given
again, which answers as it always has (errors as problem+json by the app's handlers, the
same statuses, the same details).

So a fast route never has an error answer of its own: those are FastAPI's by
construction, at the cost of doing the failed checks twice. Its handler must have no side
effects before it gives up, since a request it gives up on runs again (a read-only query
qualifies). A handler whose work has side effects (a model call: billed, recorded) checks
everything the route would, then calls `committed(request)`: from there it never gives up,
and whatever it raises is answered by the app's own handler for that exception (a Problem
as problem+json, a database error as 503), as the route's would be. Any other exception
is not retried (an overloaded pool or a database that does not answer would make the
caller wait twice): it gets what FastAPI's last resort gives it, the app's handler for
Exception (500 problem+json), and is raised on for the server's log, as Starlette does.
The request middleware (request id, server span, metrics, access log) wraps both paths; a
request is counted and logged once, under the FastAPI route's template.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import Problem

Handler = Callable[[Request, Mapping[str, str]], Awaitable[Response | None]]
OnError = Callable[[Request, Any], Response | Awaitable[Response]]
# What a handler raises to say "the route answers this, with its own error".
DECLINED: tuple[type[Exception], ...] = (Problem, ValueError)
_COMMITTED = "fastpath.committed"


def committed(request: Request) -> None:
    """From here on, the fast route answers this request whatever happens (its errors by
    the app's handlers): call it once every check the route makes has passed, before the
    first side effect."""
    request.scope[_COMMITTED] = True


@dataclass(frozen=True)
class FastRoute:
    method: str
    path: re.Pattern[str]  # matched in full against the request path; named groups -> params
    template: str  # the FastAPI route's template, the request's route in metrics and spans
    handler: Handler


def fast_route(method: str, template: str, handler: Handler) -> FastRoute:
    """A FastRoute for a FastAPI path template: each `{name}` matches one path segment, as
    in Starlette's routing."""
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
    return FastRoute(method, re.compile(pattern), template, handler)


class FastRoutes:
    """ASGI: the fast routes first; every other request, and every request a fast route
    gives up on, goes to `app` (FastAPI's own stack). `on_error` answers an unexpected
    exception (the app's handler for Exception); `handlers` (the app's exception handlers)
    the errors of a committed request."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[FastRoute],
        on_error: OnError,
        handlers: Mapping[Any, OnError] | None = None,
    ) -> None:
        self.app = app
        self.routes = tuple(routes)
        self.on_error = on_error
        self.handlers = {k: v for k, v in (handlers or {}).items() if k is not Exception}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                if scope["method"] == route.method and (
                    found := route.path.fullmatch(scope["path"])
                ):
                    await self._answer(route, found.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(
        self,
        route: FastRoute,
        params: Mapping[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        scope["route_template"] = route.template
        request = Request(scope, receive)
        try:
            response = await route.handler(request, params)
        except Exception as exc:
            if isinstance(exc, DECLINED) and not scope.get(_COMMITTED):
                response = None  # the FastAPI route answers it, as it always has
            else:
                handler = self._handler(exc) if scope.get(_COMMITTED) else None
                answer = (handler or self.on_error)(request, exc)
                if inspect.isawaitable(answer):
                    answer = await answer
                await answer(scope, receive, send)
                if handler is None:
                    raise
                return
        if response is not None:
            await response(scope, receive, send)
            return
        body = await request.body()  # read by the handler already (cached), or now
        await self.app(scope, _replay(body, receive), send)

    def _handler(self, exc: Exception) -> OnError | None:
        """The app's handler for `exc`'s nearest class (as Starlette looks it up), but for
        Exception's (on_error)."""
        for cls in type(exc).__mro__:
            if cls in self.handlers:
                return self.handlers[cls]
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The request body once more, then whatever the client sends next (a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
