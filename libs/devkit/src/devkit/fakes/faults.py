"""Fault injection for the fake providers: the test queues misbehaviours, the server plays them.

A `FaultControl` holds one queue of faults per route (the exact request path, or a prefix
ending in `*`). Each request that arrives takes the next fault queued for its route, so
`fail(route, times=2)` breaks the next two requests and the third one succeeds. Every
request is recorded in `control.requests`.

`FaultMiddleware` is the ASGI side: it records, takes the fault and plays it, rendering
errors in the protocol's own shape through the app's `ErrorRenderer`.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devkit.fakes.endpoints import Refused, answer_refused

__all__ = [
    "ErrorRenderer",
    "Fault",
    "FaultControl",
    "FaultMiddleware",
    "RecordedRequest",
]

ErrorRenderer = Callable[[int, str | None, float | None], Response]
"""Builds a protocol-shaped error response from (status, message or None, retry-after)."""

MALFORMED_JSON = b'{"id": "malformed", "object": "chat.completion", "choices": [{"index": 0,'
MALFORMED_EVENTS = b'data: {"id": "malformed", "object": "chat.completion.chunk", "choices": [\n\n'


@dataclass(frozen=True, slots=True)
class Fault:
    """One misbehaviour, consumed by one request. Built by the `FaultControl` methods."""

    status: int | None = None
    message: str | None = None
    retry_after: float | None = None
    first_byte_seconds: float = 0.0
    between_chunks_seconds: float = 0.0
    after_headers: bool = False
    malformed: bool = False
    cut_after_chunks: int | None = None
    compressed: bool = False


@dataclass(slots=True)
class RecordedRequest:
    """What reached the server. `completed`: the whole response went out; `closed`: the
    server is done with it (completed, cut, or abandoned when the client went away)."""

    method: str
    route: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    completed: bool = False
    closed: bool = False
    fault: Fault | None = field(default=None, repr=False)


class FaultControl:
    """The handle a test holds to script failures and see the requests that arrived."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._queues: dict[str, deque[Fault]] = {}

    def fail(
        self,
        route: str,
        *,
        status: int = 500,
        retry_after: float | None = None,
        message: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` requests with an error `status` (and `Retry-After`)."""
        self._queue(route, Fault(status=status, message=message, retry_after=retry_after), times)

    def delay(
        self,
        route: str,
        *,
        first_byte_seconds: float = 0.0,
        between_chunks_seconds: float = 0.0,
        after_headers: bool = False,
        times: int = 1,
    ) -> None:
        """Slow the next `times` responses: nothing is sent for `first_byte_seconds` (with
        `after_headers`, the status line and headers go out at once and the body waits: a
        slow first token), and each later body chunk waits `between_chunks_seconds`."""
        fault = Fault(
            first_byte_seconds=first_byte_seconds,
            between_chunks_seconds=between_chunks_seconds,
            after_headers=after_headers,
        )
        self._queue(route, fault, times)

    def malformed(self, route: str, *, times: int = 1) -> None:
        """Answer 200 with a body that is not valid JSON (a broken event for streams)."""
        self._queue(route, Fault(malformed=True), times)

    def cut_stream(self, route: str, *, after_chunks: int = 2, times: int = 1) -> None:
        """Send the first `after_chunks` body chunks, then drop the connection mid-body.

        A single-chunk (non-streamed) body is cut in half instead."""
        self._queue(route, Fault(cut_after_chunks=after_chunks), times)

    def compress(self, route: str, *, times: int = 1) -> None:
        """Answer gzip-compressed (`Content-Encoding: gzip`) whatever the request accepts,
        as a server that ignores `Accept-Encoding: identity` does (the body is sent whole)."""
        self._queue(route, Fault(compressed=True), times)

    def reset(self) -> None:
        """Forget queued faults and recorded requests."""
        self._queues.clear()
        self.requests.clear()

    def pending(self, route: str) -> int:
        """How many faults are still queued for `route`."""
        return len(self._queues.get(route, ()))

    def requests_to(self, route: str) -> list[RecordedRequest]:
        """The recorded requests whose path is `route`."""
        return [request for request in self.requests if request.route == route]

    def take(self, path: str) -> Fault | None:
        """The next fault for a request to `path`, removed from its queue."""
        queue = self._queues.get(path)
        if not queue:
            queue = next(
                (
                    pending
                    for route, pending in self._queues.items()
                    if pending and route.endswith("*") and path.startswith(route[:-1])
                ),
                None,
            )
        return queue.popleft() if queue else None

    def _queue(self, route: str, fault: Fault, times: int) -> None:
        if times < 1:
            raise ValueError("times must be at least 1")
        self._queues.setdefault(route, deque()).extend([fault] * times)


class _StreamCut(Exception):
    """Raised through the app to abandon a response mid-body."""


class FaultMiddleware:
    """Records every HTTP request into the control and plays the fault queued for it."""

    def __init__(self, app: ASGIApp, control: FaultControl, render_error: ErrorRenderer) -> None:
        self.app = app
        self.control = control
        self.render_error = render_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        recorded = _record(scope, body)
        self.control.requests.append(recorded)
        try:
            await self._play(scope, body, receive, _tracking(send, recorded), recorded)
        finally:
            recorded.closed = True

    async def _play(
        self, scope: Scope, body: bytes, receive: Receive, send: Send, recorded: RecordedRequest
    ) -> None:
        fault = recorded.fault = self.control.take(scope["path"])
        if fault is None:
            await self.app(scope, _replay(body, receive), send)
            return
        waits_first = fault.first_byte_seconds > 0 and not fault.after_headers
        if waits_first and await _disconnected_within(fault.first_byte_seconds, receive):
            return  # the client gave up before the first byte
        if fault.status is not None:
            response = self.render_error(fault.status, fault.message, fault.retry_after)
            await response(scope, receive, send)
            return
        if fault.malformed:
            await _malformed(recorded)(scope, receive, send)
            return
        if fault.compressed:
            send = _compressing(send)
        try:
            await self.app(scope, _replay(body, receive), _faulty(send, fault))
        except _StreamCut:
            return  # the server drops the connection: the response never completes


def _record(scope: Scope, body: bytes) -> RecordedRequest:
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    return RecordedRequest(
        method=scope["method"],
        route=scope["path"],
        query=dict(parse_qsl(scope["query_string"].decode("latin-1"))),
        headers={
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        },
        json=parsed,
    )


def _malformed(recorded: RecordedRequest) -> Response:
    streamed = isinstance(recorded.json, dict) and recorded.json.get("stream") is True
    if streamed:
        return Response(MALFORMED_EVENTS + b"data: [DONE]\n\n", media_type="text/event-stream")
    return Response(MALFORMED_JSON, media_type="application/json")


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _disconnected_within(seconds: float, receive: Receive) -> bool:
    """Wait `seconds`, or less when the client goes away first (then True)."""
    waiter = asyncio.ensure_future(receive())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()
    return bool(done) and waiter.result()["type"] == "http.disconnect"


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the buffered body to the app once, then the client's events."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _tracking(send: Send, recorded: RecordedRequest) -> Send:
    async def tracking(message: Message) -> None:
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            recorded.completed = True

    return tracking


def _compressing(send: Send) -> Send:
    """A send that holds the response back, then sends its body gzip-compressed."""
    start: Message = {}
    parts: list[bytes] = []

    async def compressing(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        parts.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = gzip.compress(b"".join(parts))
        headers = [
            (name, value)
            for name, value in start["headers"]
            if name.lower() not in (b"content-length", b"content-encoding")
        ]
        headers += [(b"content-encoding", b"gzip"), (b"content-length", str(len(body)).encode())]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return compressing


def _faulty(send: Send, fault: Fault) -> Send:
    """A send that slows and/or cuts the body as the fault says."""
    sent_chunks = 0
    waited_first = False

    async def faulty(message: Message) -> None:
        nonlocal sent_chunks, waited_first
        if message["type"] != "http.response.body":
            await send(message)
            return
        body: bytes = message.get("body", b"")
        final = not message.get("more_body", False)
        if not waited_first and fault.after_headers:
            waited_first = True
            await asyncio.sleep(fault.first_byte_seconds)
        elif sent_chunks and body and fault.between_chunks_seconds:
            await asyncio.sleep(fault.between_chunks_seconds)
        if fault.cut_after_chunks is not None:
            if sent_chunks >= fault.cut_after_chunks:
                raise _StreamCut
            if final:
                await send(
                    {
                        "type": "http.response.body",
                        "body": body[: len(body) // 2],
                        "more_body": True,
                    }
                )
                raise _StreamCut
        await send(message)
        if body:
            sent_chunks += 1

    return faulty


def build_app(
    routes: list[Route],
    *,
    control: FaultControl | None,
    render_error: ErrorRenderer,
    not_found_message: Callable[[Request], str],
) -> Starlette:
    """A fake's Starlette app: its routes, its error shape for unknown URLs and methods
    (worded by `not_found_message`), the early answers its endpoints raise (`Refused`),
    and the fault middleware only when a test holds a control (benchmarks pay nothing)."""

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        return render_error(status, not_found_message(request), None)

    middleware = (
        [Middleware(FaultMiddleware, control=control, render_error=render_error)]
        if control is not None
        else []
    )
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={404: not_found, 405: not_found, Refused: answer_refused},
    )
