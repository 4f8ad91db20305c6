"""Behind a reverse proxy: whose address is the client's, and whose trace context is joined
(GATEWAY_TRUSTED_PROXIES). The tests' connections come from 127.0.0.1: trusting it makes
the test client a proxy."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.utils import suppress_http_instrumentation
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from devkit.testing import LiveServer
from gateway.main import create_app

from .conftest import Caller, SessionFactory, Upstream, gateway_settings, in_one_window

LOOPBACK = "127.0.0.1/32"

Gateway = Callable[..., Any]


@pytest.fixture
def gateway_with(upstream: Upstream, redis_url: str) -> Gateway:
    """A gateway with these settings, as an httpx client on it."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = gateway_settings(upstream, redis_url, **overrides)
        app = create_app(settings, clock=in_one_window())
        async with LiveServer(app) as server, httpx.AsyncClient(base_url=server.url) as client:
            yield client

    return start


@pytest.fixture
async def member(session_for: SessionFactory) -> Caller:
    return await session_for()


async def forwarded_for(client: httpx.AsyncClient, caller: Caller, header: str | None) -> str:
    """The client address the upstream is told, for a request with this X-Forwarded-For."""
    headers = {"X-Forwarded-For": header} if header is not None else {}
    client.cookies = caller.cookies
    response = await client.get("/v1/models", headers=headers)
    assert response.status_code == 200, response.text
    seen: str = response.json()["headers"]["x-forwarded-for"]
    return seen


async def test_x_forwarded_for_is_ignored_from_a_peer_that_is_not_a_trusted_proxy(
    gateway_with: Gateway, member: Caller
) -> None:
    async with gateway_with() as client:
        assert await forwarded_for(client, member, "203.0.113.9") == "127.0.0.1"
        assert await forwarded_for(client, member, None) == "127.0.0.1"


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ("203.0.113.9", "203.0.113.9"),
        (None, "127.0.0.1"),  # nothing forwarded: the proxy itself
        # Read from the right: what the client wrote to the left of it is not believed.
        ("198.51.100.1, 203.0.113.9", "203.0.113.9"),
        # Through a second trusted proxy.
        ("198.51.100.1, 203.0.113.9, 10.1.2.3", "203.0.113.9"),
        ("2001:db8::7", "2001:db8::7"),
        # Not an address: the last trusted proxy is the client.
        ("203.0.113.9, not-an-address", "127.0.0.1"),
        ("203.0.113.9, not-an-address, 10.1.2.3", "10.1.2.3"),
    ],
)
async def test_a_trusted_proxy_names_the_client(
    gateway_with: Gateway, member: Caller, header: str | None, client: str
) -> None:
    async with gateway_with(trusted_proxies=f"{LOOPBACK},10.0.0.0/8") as gateway:
        assert await forwarded_for(gateway, member, header) == client


async def test_anonymous_budgets_are_per_client_behind_a_trusted_proxy(
    gateway_with: Gateway, upstream: Upstream
) -> None:
    """Behind a proxy every client has the proxy's address: without trusting it, the
    anonymous budget (register, login) was one for everybody."""
    async with gateway_with(trusted_proxies=LOOPBACK, rate_limit_anonymous_per_minute=2) as c:
        one = [
            (await c.post("/auth/login", json={}, headers={"X-Forwarded-For": "203.0.113.1"}))
            for _ in range(3)
        ]
        other = await c.post("/auth/login", json={}, headers={"X-Forwarded-For": "203.0.113.2"})

    assert [r.status_code for r in one] == [200, 200, 429]
    assert other.status_code == 200
    assert other.json()["headers"]["x-forwarded-for"] == "203.0.113.2"


async def traced_call(client: httpx.AsyncClient, trace_id: str) -> dict[str, str]:
    """GET with the caller's own trace context and baggage (the test's instrumented httpx
    would replace them): the headers the upstream received."""
    headers = {
        "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
        "baggage": "tenant=someone-else",
    }
    with suppress_http_instrumentation():
        response = await client.get("/v1/models", headers=headers)
    assert response.status_code == 200, response.text
    seen: dict[str, str] = response.json()["headers"]
    return seen


@pytest.mark.parametrize(
    "settings",
    [
        {},
        # Behind a proxy that passes its clients' trace context through unchanged.
        {"trusted_proxies": LOOPBACK, "join_proxy_trace_context": False},
    ],
)
async def test_a_callers_trace_context_starts_a_new_trace_linked_to_it(
    gateway_with: Gateway, member: Caller, spans: InMemorySpanExporter, settings: dict[str, Any]
) -> None:
    """A caller chose the trace id (and the sampling) of everything it caused."""
    theirs = secrets.token_hex(16)
    async with gateway_with(**settings) as client:
        client.cookies = member.cookies
        seen = await traced_call(client, theirs)

    ours = seen["traceparent"].split("-")[1]
    assert ours != theirs
    assert "baggage" not in seen
    assert "tenant" not in str(seen)
    # The gateway's span is the root of our trace (the upstream's is its descendant).
    roots = [
        s
        for s in spans.get_finished_spans()
        if s.kind == SpanKind.SERVER and format(s.context.trace_id, "032x") == ours
        and s.parent is None
    ]  # fmt: skip
    assert len(roots) == 1
    assert [format(link.context.trace_id, "032x") for link in roots[0].links] == [theirs]


async def test_a_trusted_proxys_trace_context_is_joined_without_its_baggage(
    gateway_with: Gateway, member: Caller
) -> None:
    theirs = secrets.token_hex(16)
    async with gateway_with(trusted_proxies=LOOPBACK) as client:
        client.cookies = member.cookies
        seen = await traced_call(client, theirs)

    assert seen["traceparent"].split("-")[1] == theirs
    assert "baggage" not in seen
    assert "tenant" not in str(seen)
