"""The request middleware: metrics by route template, a request id on every response, /metrics."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from typing import ClassVar

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from common.app import PlatformApp, instrument
from common.settings import ServiceSettings
from devkit.testing import asgi_client

FRESH_ID = re.compile(r"^[0-9a-f]{32}$")


def create_app(service: str) -> FastAPI:
    class Settings(ServiceSettings):
        service_name: ClassVar[str] = service

    app = PlatformApp()
    instrument(app, Settings())

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("boom")

    return app


@pytest.fixture
def service() -> str:
    """A service name of its own, so the counts start at zero."""
    return f"mw_{secrets.token_hex(4)}"


@pytest.fixture
async def client(service: str) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(service)) as client:
        yield client


def samples(text: str, name: str) -> dict[tuple[str, str, str], float]:
    """The values of one sample name, keyed by (route, method, status)."""
    return {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_requests_are_counted_by_route_template(
    client: httpx.AsyncClient, service: str
) -> None:
    for item_id in ("1", "2", "three"):
        assert (await client.get(f"/items/{item_id}")).status_code == 200
    assert (await client.get("/no/such/path/42")).status_code == 404

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    requests = samples(response.text, f"{service}_http_requests_total")
    durations = samples(response.text, f"{service}_http_request_duration_seconds_count")
    assert requests[("/items/{item_id}", "GET", "200")] == 3
    assert durations[("/items/{item_id}", "GET", "200")] == 3
    assert requests[("<unmatched>", "GET", "404")] == 1
    assert durations[("<unmatched>", "GET", "404")] == 1
    routes = {route for route, _, _ in requests}
    assert not any(re.search(r"/items/\w|42", route) for route in routes - {"/items/{item_id}"})


async def test_unhandled_errors_are_counted_as_500(client: httpx.AsyncClient, service: str) -> None:
    assert (await client.get("/crash")).status_code == 500

    response = await client.get("/metrics")

    requests = samples(response.text, f"{service}_http_requests_total")
    assert requests[("/crash", "GET", "500")] == 1


async def test_metrics_is_prometheus_text_with_process_facts(
    client: httpx.AsyncClient, service: str
) -> None:
    response = await client.get("/metrics")

    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    assert families[f"{service}_http_requests"].type == "counter"
    assert families[f"{service}_http_request_duration_seconds"].type == "histogram"
    assert "process_cpu_seconds" in families
    assert "python_info" in families


@pytest.mark.parametrize("request_id", ["abc-123", "4bf92f3577b34da6.a3ce929d:0e0e4736_x"])
async def test_valid_request_id_is_echoed(client: httpx.AsyncClient, request_id: str) -> None:
    response = await client.get("/items/1", headers={"X-Request-ID": request_id})

    assert response.headers["x-request-id"] == request_id


@pytest.mark.parametrize(
    "request_id",
    [
        pytest.param("has spaces in it", id="spaces"),
        pytest.param("a" * 300, id="too-long"),
        pytest.param("../../etc/passwd", id="slashes"),
        pytest.param("", id="empty"),
    ],
)
async def test_invalid_request_id_is_replaced(client: httpx.AsyncClient, request_id: str) -> None:
    response = await client.get("/items/1", headers={"X-Request-ID": request_id})

    assert FRESH_ID.match(response.headers["x-request-id"])


async def test_each_request_without_an_id_gets_a_fresh_one(client: httpx.AsyncClient) -> None:
    first = await client.get("/items/1")
    second = await client.get("/items/1")

    assert FRESH_ID.match(first.headers["x-request-id"])
    assert FRESH_ID.match(second.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_a_problem_response_carries_the_request_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/path", headers={"X-Request-ID": "req-404"})

    assert response.status_code == 404
    assert response.json()["request_id"] == "req-404"
    assert response.headers.get("x-request-id") == "req-404"


async def test_an_unhandled_error_response_carries_the_request_id(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/crash", headers={"X-Request-ID": "req-500"})

    assert response.status_code == 500
    assert response.json()["request_id"] == "req-500"
    assert response.headers.get("x-request-id") == "req-500"


async def test_requests_in_flight_rise_and_fall(service: str) -> None:
    app = create_app(service)
    entered, release = asyncio.Event(), asyncio.Event()

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        entered.set()
        await release.wait()
        return {}

    def in_flight(text: str) -> float:
        (value,) = (
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == f"{service}_http_requests_in_flight"
        )
        return value

    async with asgi_client(app) as client:
        pending = asyncio.create_task(client.get("/slow"))
        await asyncio.wait_for(entered.wait(), 5)
        during = in_flight((await client.get("/metrics")).text)  # scrapes are not counted
        release.set()
        assert (await pending).status_code == 200
        after = in_flight((await client.get("/metrics")).text)

    assert (during, after) == (1, 0)
