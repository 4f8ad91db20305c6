"""The gateway's hot path: check the caller, forward to the upstream, relay the answer.

Proxied requests never reach the router: `ProxyMiddleware` (plain ASGI, inside the request
id/metrics/access-log middleware) answers them itself, and the upstream hop goes through
aiohttp. On the benchmark machine that is ~1.3 ms less CPU per request than a FastAPI
route, its dependency solving and an httpx client (bench/README.md).

Answers of a known, small size are relayed in one piece; streams (SSE, chunked) and large
bodies chunk by chunk as they arrive. A client that hangs up cancels the upstream call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import aiohttp
import structlog
from opentelemetry import propagate
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from yarl import URL

from common.budgets import GatewayHold
from common.disconnect import disconnected
from common.errors import BadGateway, GatewayTimeout, Problem, render_problem
from common.identity import HEADER as IDENTITY_HEADER
from common.identity import Identity, request_target, sign
from gateway.admission import caller_identity
from gateway.clients import Upstream
from gateway.errors import ClientClosed, PayloadTooLarge, TooManyInFlight
from gateway.metrics import RATE_LIMITED
from gateway.proxy_table import proxy_rule_for
from gateway.repository import HeldBudgets

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = structlog.get_logger(__name__)

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Never forwarded: the caller's credentials (the gateway has checked them; services trust
# the signed identity only), an identity header the caller tried to supply, what the
# client library sets itself, and trace context (the gateway's own span is the parent;
# baggage from outside is never passed on).
NOT_FORWARDED = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"cookie",
    b"authorization",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
    b"x-real-ip",
    b"x-request-id",
    b"traceparent",
    b"tracestate",
    b"baggage",
    IDENTITY_HEADER.lower().encode(),
}
# Answers up to this size with a Content-Length are relayed in one piece.
BUFFERED_MAX_BYTES = 256 * 1024
# The gateway's own server sets these on the way out.
NOT_RETURNED = HOP_BY_HOP | {b"date", b"server", b"x-request-id"}


class InFlight:
    """How many requests each caller has in flight to each upstream on this replica, held
    to `limit` (0: no limit), so that no one caller holds all of an upstream's pool
    (GATEWAY_UPSTREAM_MAX_CONNECTIONS) with slow calls or endless streams. An entry lives
    only while its requests do."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[tuple[str, str], int] = {}

    @contextlib.contextmanager
    def hold(self, upstream: str, caller: str | None) -> Iterator[None]:
        """One request of `caller`'s to `upstream`, or TooManyInFlight. Anonymous callers
        (sign-in, registration) only reach auth, briefly, and are rate-limited by IP."""
        if caller is None or not self.limit:
            yield
            return
        key = (upstream, caller)
        held = self._counts.get(key, 0)
        if held >= self.limit:
            RATE_LIMITED.labels("in_flight").inc()
            raise TooManyInFlight(
                f"You have {held} requests in flight to the {upstream} service, the most "
                "allowed at once; retry when one has finished.",
                headers={"Retry-After": "1"},
            )
        self._counts[key] = held + 1
        try:
            yield
        finally:
            held = self._counts.pop(key) - 1
            if held:
                self._counts[key] = held


class BudgetHolds:
    """Gives back, in the background, the budget holds of calls inference did not take
    over (common.budgets.GatewayHold): a refusal or a failed hop must not keep a budget
    held until the hold lapses."""

    def __init__(self, held: HeldBudgets) -> None:
        self._held = held
        self._tasks: set[asyncio.Task[None]] = set()

    def release_soon(self, identity: Identity) -> None:
        assert identity.hold is not None
        hold = GatewayHold.from_wire(identity.hold)
        ids = {"key": identity.kid, "user": identity.user_id, "team": identity.team}
        task = asyncio.ensure_future(self._release(hold, ids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, hold: GatewayHold, ids: dict[str, str | None]) -> None:
        try:
            await self._held.release(hold, ids)
        except RedisError as exc:  # the hold lapses on its own
            log.warning("budget hold not given back", error=type(exc).__name__)

    async def aclose(self) -> None:
        """Wait for the releases under way (the app is stopping)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Headers named in `Connection:` are hop-by-hop too (RFC 9110 section 7.6.1)."""
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }


def request_headers(scope: Scope) -> list[tuple[str, str]]:
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    dropped = NOT_FORWARDED | _connection_tokens(raw)
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in raw
        if name.lower() not in dropped
    ]
    # The client as the gateway determined it (gateway/forwarded.py), and nothing else.
    headers.append(("x-forwarded-for", scope["state"]["client_address"]))
    headers.append(("x-forwarded-proto", scope.get("scheme", "http")))
    # The id the gateway logs under (the caller's, if it was valid): one id end to end.
    request_id = scope.get("state", {}).get("request_id")
    if request_id:
        headers.append(("x-request-id", request_id))
    return headers


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    raw = list(raw)
    dropped = NOT_RETURNED | _connection_tokens(raw)
    return [(name.lower(), value) for name, value in raw if name.lower() not in dropped]


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request bodies are limited to {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientClosed("The client hung up while sending the request.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request bodies are limited to {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class ProxyMiddleware:
    """Answers every request whose path an upstream serves; the rest go to the router."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = proxy_rule_for(scope["path"]) if scope["type"] == "http" else None
        if rule is None:
            await self.app(scope, receive, send)
            return
        runtime: Runtime = scope["app"].state.runtime
        scope["state"]["client_address"] = runtime.trusted_proxies.client_address(scope)
        request = Request(scope, receive)
        exchange: Exchange | None = None
        identity: Identity | None = None
        try:
            identity = await caller_identity(runtime, request)
            with runtime.in_flight.hold(rule.upstream, identity.user_id):
                exchange = Exchange(
                    scope, receive, send,
                    upstream=runtime.upstreams.proxied[rule.upstream],
                    signing_key=runtime.signing_key,
                    max_body_bytes=runtime.settings.max_body_bytes,
                )  # fmt: skip
                await exchange.run(identity)
        except Problem as exc:
            await render_problem(request, exc)(scope, receive, send)
        finally:
            # A budget hold taken for this call that inference did not take over (it
            # refused the call, or never got it) is given back now, not when it lapses.
            if (
                identity is not None
                and identity.hold is not None
                and (exchange is None or not exchange.accepted)
            ):
                runtime.budget_holds.release_soon(identity)


class Exchange:
    """One proxied request: forward it, relay the answer, give up if the client leaves."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        upstream: Upstream,
        signing_key: bytes,
        max_body_bytes: int,
    ) -> None:
        self.scope, self.receive, self.send = scope, receive, send
        self.upstream = upstream.name
        self.base_url = upstream.base_url
        self.session = upstream.session
        self.signing_key = signing_key
        self.max_body_bytes = max_body_bytes
        self.started = False
        # Whether the upstream answered with a success (for a model call: inference took
        # over its budget hold, and settles it).
        self.accepted = False

    async def run(self, identity: Identity) -> None:
        declared = next((v for k, v in self.scope["headers"] if k == b"content-length"), None)
        body = await read_body(
            self.receive,
            declared.decode("latin-1") if declared else None,
            self.max_body_bytes,
        )
        task = asyncio.current_task()
        assert task is not None
        # The body is read: the next message can only say that the client is gone.
        watcher = asyncio.ensure_future(disconnected(self.receive, then=task.cancel))
        try:
            await self._forward(identity, body)
        except asyncio.CancelledError:
            # The watcher returns (having cancelled this task) only when the client left.
            if not watcher.done() or watcher.cancelled() or watcher.exception() is not None:
                raise
            task.uncancel()
            if not self.started:  # for the access log and metrics; the client never sees it
                status = ClientClosed.status
                await self.send({"type": "http.response.start", "status": status, "headers": []})
                await self.send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()

    async def _forward(self, identity: Identity, body: bytes) -> None:
        scope = self.scope
        method: str = scope["method"]
        target = request_target(scope)
        headers = request_headers(scope)
        headers.append(
            (
                IDENTITY_HEADER,
                sign(
                    identity, self.signing_key, method=method, path=target, audience=self.upstream
                ),
            )
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        headers.extend(carrier.items())
        try:
            response = await self.session.request(
                method,
                URL(self.base_url + target, encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
            )
        except TimeoutError:
            log.warning("upstream timeout", upstream=self.upstream)
            raise GatewayTimeout(f"The {self.upstream} service did not answer in time.") from None
        except aiohttp.ClientError as exc:
            log.warning("upstream unreachable", upstream=self.upstream, error=type(exc).__name__)
            raise BadGateway(f"The {self.upstream} service is unavailable.") from None
        with contextlib.closing(response):
            await self._relay(response)

    async def _relay(self, response: aiohttp.ClientResponse) -> None:
        self.accepted = response.status < 400
        headers = response_headers(response.raw_headers)
        limits = self.scope.get("state", {}).get("rate_limit_headers")
        if limits:
            headers.extend((k.lower().encode(), v.encode()) for k, v in limits.items())
        start: Message = {
            "type": "http.response.start", "status": response.status, "headers": headers
        }  # fmt: skip
        length = response.content_length
        if length is not None and length <= BUFFERED_MAX_BYTES:
            # A small answer of known size: one write to the client instead of a stream.
            try:
                data = await response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.warning("upstream body broke", upstream=self.upstream, error=type(exc).__name__)
                raise BadGateway(f"The {self.upstream} service's answer broke off.") from None
            self.started = True
            await self.send(start)
            await self.send({"type": "http.response.body", "body": data})
            return
        self.started = True
        await self.send(start)
        try:
            async for chunk in response.content.iter_any():
                await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Headers are already sent: abort the connection (no final chunk), so the client
            # sees a broken response rather than a complete-looking, truncated one.
            log.warning("upstream stream broke", upstream=self.upstream, error=type(exc).__name__)
            raise
        await self.send({"type": "http.response.body", "body": b""})
