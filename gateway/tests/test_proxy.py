"""The gateway forwards to the right upstream, signs the caller, and streams without buffering."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devkit.testing import LiveServer
from gateway.main import create_app

from .conftest import SERVICES, Caller, SessionFactory, Upstream, gateway_settings


@pytest.fixture
async def member(session_for: SessionFactory) -> Caller:
    return await session_for()


def client(gateway: str, caller: Caller) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway, headers=caller.headers, cookies=caller.cookies)


async def test_forwards_method_path_query_and_body(gateway: str, member: Caller) -> None:
    async with client(gateway, member) as c:
        response = await c.post(
            "/v1/chat/completions?a=1&b=x%20y",
            content=b'{"hello": "world"}',
            headers=member.unsafe_headers(),
        )
    assert response.status_code == 200
    seen = response.json()
    assert seen["method"] == "POST"
    assert seen["path"] == "/v1/chat/completions"
    assert seen["query"] == "a=1&b=x%20y"
    assert seen["body"] == '{"hello": "world"}'


async def test_upstream_sees_the_signed_caller_and_none_of_its_credentials(
    gateway: str, member: Caller
) -> None:
    async with client(gateway, member) as c:
        response = await c.get("/v1/models", headers={"X-Internal-Identity": "forged.by-caller"})
    assert response.status_code == 200
    seen = response.json()
    assert seen["identity"]["iss"] == "gateway"
    assert seen["identity"]["kind"] == "user"
    assert seen["identity"]["sub"] == "00000000-0000-0000-0000-0000000000aa"
    assert "inference:invoke" in seen["identity"]["permissions"]
    assert seen["headers"]["x-internal-identity"] != "forged.by-caller"
    assert "cookie" not in seen["headers"]
    assert "authorization" not in seen["headers"]
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-request-id"] == response.headers["x-request-id"]


async def test_hop_by_hop_headers_are_stripped_both_ways(gateway: str, member: Caller) -> None:
    async with client(gateway, member) as c:
        request_side = await c.get(
            "/v1/models",
            headers={"Connection": "keep-alive, X-Private", "X-Private": "1", "TE": "trailers"},
        )
        response_side = await c.get("/v1/usage")
    seen = request_side.json()["headers"]
    assert "x-private" not in seen
    assert "te" not in seen
    assert response_side.headers["x-kept"] == "yes"
    assert "x-hop" not in response_side.headers


async def test_server_sent_events_arrive_chunk_by_chunk(
    gateway: str, upstream: Upstream, member: Caller
) -> None:
    async with client(gateway, member) as c, c.stream("GET", "/v1/calls") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = response.aiter_raw()
        # The upstream holds back its second event until we have the first: a buffering
        # proxy would never deliver it, and this read would time out.
        first = await asyncio.wait_for(anext(chunks), timeout=10)
        assert first == b"data: first\n\n"
        upstream.release_second_chunk.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert rest == b"data: second\n\n"


async def test_unknown_route_is_404_and_wrong_method_405(gateway: str, member: Caller) -> None:
    async with client(gateway, member) as c:
        unknown = await c.get("/v2/nothing-here")
        wrong_method = await c.put("/v1/models", headers=member.unsafe_headers())
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert unknown.json()["trace_id"]
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "GET"


async def test_upstream_down_is_502_problem(
    redis_url: str, session_for: SessionFactory, refused_port: int
) -> None:
    member = await session_for()
    dead = f"http://127.0.0.1:{refused_port}"
    app = create_app(gateway_settings(Upstream({name: dead for name in SERVICES}), redis_url))
    async with LiveServer(app) as server, client(server.url, member) as c:
        response = await c.get("/v1/models")
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == "Bad Gateway"


async def test_upstream_timeout_is_504_problem(
    upstream: Upstream, redis_url: str, member: Caller
) -> None:
    app = create_app(gateway_settings(upstream, redis_url, upstream_read_timeout_seconds=0.3))
    async with LiveServer(app) as server, client(server.url, member) as c:
        response = await c.get("/v1/hub/models?delay=3")
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_client_that_hangs_up_cancels_the_upstream_call(
    gateway: str, upstream: Upstream, member: Caller
) -> None:
    async with client(gateway, member) as c:
        # Hang up once the upstream has the call (a client timeout could expire before the
        # gateway even forwarded it, on a slow machine).
        call = asyncio.create_task(c.get("/v1/hub/models/patient", timeout=60))
        await asyncio.wait_for(upstream.patient_called.wait(), timeout=10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    # The gateway dropped its upstream connection, so the upstream stopped waiting.
    await asyncio.wait_for(upstream.saw_disconnect.wait(), timeout=10)


async def test_oversized_body_is_413_and_not_forwarded(
    upstream: Upstream, redis_url: str, member: Caller
) -> None:
    app = create_app(gateway_settings(upstream, redis_url, max_body_bytes=1024))
    async with LiveServer(app) as server, client(server.url, member) as c:
        response = await c.post(
            "/v1/chat/completions", content=b"x" * 4096, headers=member.unsafe_headers()
        )
        small = await c.post(
            "/v1/chat/completions", content=b"x" * 1000, headers=member.unsafe_headers()
        )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert small.status_code == 200
    assert upstream.hits == 1


async def test_upstream_error_passes_through_as_problem_without_internals(
    gateway: str, member: Caller
) -> None:
    async with client(gateway, member) as c:
        response = await c.post("/v1/events", headers=member.unsafe_headers())
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text


async def test_metrics_are_labelled_by_route_template(gateway: str, member: Caller) -> None:
    async with client(gateway, member) as c:
        await c.delete("/v1/collections/123", headers=member.unsafe_headers())
        text = (await c.get("/metrics")).text
    samples = [
        s
        for family in text_string_to_metric_families(text)
        if family.name == "gateway_http_requests"
        for s in family.samples
    ]
    routes = {s.labels["route"] for s in samples}
    assert "/v1/collections/{id}" in routes
    assert not any("123" in route for route in routes)


async def _raw_get(base_url: str, target: str, cookie: str) -> int:
    """Send a request line exactly as written (clients normalise dot segments away)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


@pytest.mark.parametrize(
    "target",
    [
        "/v1/models/../providers/credentials",
        "/v1/models/../../internal/openapi.json",
        "/v1/models/%2e%2e/providers/credentials",
        "/v1/models/./x",
        "/v1/collections/a%2Fb",
        "/v1%2Fmodels/openai",
        "/v1/models/a%2F..%2Fproviders",
        "/v1/providers%2Fprices/openai%2Fx",
    ],
)
async def test_paths_that_could_mean_two_routes_are_refused(
    gateway: str, upstream: Upstream, member: Caller, target: str
) -> None:
    cookie = f"session={member.cookies['session']}"
    assert await _raw_get(gateway, target, cookie) == 400
    assert upstream.hits == 0


async def test_an_encoded_slash_in_a_path_parameters_tail_reaches_the_upstream(
    gateway: str, upstream: Upstream, member: Caller
) -> None:
    """The openai SDK's `models.retrieve("openai/gpt-4o")` asks for
    `/v1/models/openai%2Fgpt-4o`: the same route to the RBAC check and to the upstream."""
    async with client(gateway, member) as c:
        response = await c.get("/v1/models/openai%2Fgpt-4o")
    assert response.status_code == 200, response.text
    assert response.json()["path"] == "/v1/models/openai/gpt-4o"
    assert upstream.hits == 1


async def test_a_broken_upstream_stream_is_not_passed_off_as_complete(
    gateway: str, member: Caller
) -> None:
    async def read_all(c: httpx.AsyncClient) -> None:
        async with c.stream("GET", "/v1/providers/aliases?broken=true") as response:
            assert response.status_code == 200
            async for _ in response.aiter_raw():
                pass

    async with client(gateway, member) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await read_all(c)


async def test_an_invalid_request_id_is_replaced_for_the_upstream_too(
    gateway: str, member: Caller
) -> None:
    async with client(gateway, member) as c:
        response = await c.get("/v1/models", headers={"X-Request-ID": "bad id with spaces"})
        kept = await c.get("/v1/models", headers={"X-Request-ID": "trace-me-42"})
    assert response.headers["x-request-id"] != "bad id with spaces"
    assert response.json()["headers"]["x-request-id"] == response.headers["x-request-id"]
    assert kept.json()["headers"]["x-request-id"] == "trace-me-42"


async def test_one_caller_cannot_take_every_connection_to_an_upstream(
    upstream: Upstream, redis_url: str, session_for: SessionFactory
) -> None:
    """Three connections to each upstream, two of them for any one caller: the caller's
    third stream is refused (429), and someone else still gets through at once."""
    greedy = await session_for(user_id="00000000-0000-0000-0000-0000000000a1")
    other = await session_for(user_id="00000000-0000-0000-0000-0000000000b2")
    settings = gateway_settings(
        upstream, redis_url,
        upstream_max_connections=3, upstream_max_connections_per_user=2,
        upstream_connect_timeout_seconds=2,  # waiting for a free connection counts as connecting
    )  # fmt: skip
    app = create_app(settings)
    async with (
        LiveServer(app) as server,
        client(server.url, greedy) as greedy_client,
        client(server.url, other) as other_client,
        contextlib.AsyncExitStack() as held,
    ):
        streams, reading = [], []  # a dropped reader would close its stream
        for _ in range(3):  # /v1/calls streams until the upstream is told to finish
            response = await held.enter_async_context(greedy_client.stream("GET", "/v1/calls"))
            streams.append(response)
            if response.status_code == 200:
                reading.append(response.aiter_raw())
                assert await anext(reading[-1]) == b"data: first\n\n"
        assert [s.status_code for s in streams] == [200, 200, 429]
        others = await other_client.get("/v1/usage")  # the same upstream: telemetry
        upstream.release_second_chunk.set()
        refused = streams[-1]
        await refused.aread()

    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["type"].endswith("too-many-in-flight")
    assert others.status_code == 200
