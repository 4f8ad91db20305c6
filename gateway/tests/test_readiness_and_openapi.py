"""The gateway's /readyz covers only its Redis; each upstream's state is reported on
/readyz/upstreams and as a metric; /openapi.json merges the services' documents."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devkit.testing import LiveServer
from gateway.main import create_app
from gateway.openapi import merge

from .conftest import SERVICES, KeyFactory, Upstream, gateway_settings


async def probed(client: httpx.AsyncClient) -> dict[str, Any]:
    """/readyz/upstreams once the gateway has probed every upstream (it starts at once, in
    the background; 15 s at most)."""
    deadline = time.monotonic() + 15
    while True:
        response = await client.get("/readyz/upstreams")
        assert response.status_code == 200
        report: dict[str, Any] = response.json()
        if all(u["status"] != "unknown" for u in report["upstreams"].values()):
            return report
        assert time.monotonic() < deadline, report
        await asyncio.sleep(0.05)


async def upstream_up(client: httpx.AsyncClient) -> dict[str, float]:
    """gateway_upstream_up by upstream, from the gateway's /metrics."""
    text = (await client.get("/metrics")).text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "gateway_upstream_up"]
    return {sample.labels["upstream"]: sample.value for sample in family.samples}


async def test_readyz_asks_redis_only_and_every_upstream_is_reported_up(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        ready = await client.get("/readyz")
        report = await probed(client)
        metric = await upstream_up(client)
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": {"status": "ok"}}
    assert report["status"] == "ok"
    assert {name: u["status"] for name, u in report["upstreams"].items()} == dict.fromkeys(
        SERVICES, "up"
    )
    assert metric == dict.fromkeys(SERVICES, 1.0)


async def test_an_upstream_down_leaves_the_gateway_ready_and_is_reported_down(
    upstream: Upstream, redis_url: str, refused_port: int, api_key_for: KeyFactory
) -> None:
    """Telemetry or embeddings down must not take the gateway out of service (Kubernetes
    would pull every pod): it stays ready, and says which upstream is down."""
    settings = gateway_settings(
        upstream, redis_url, embeddings_url=f"http://127.0.0.1:{refused_port}"
    )
    caller = await api_key_for()
    async with (
        LiveServer(create_app(settings)) as server,
        httpx.AsyncClient(base_url=server.url, headers=caller.headers) as client,
    ):
        report = await probed(client)
        ready = await client.get("/readyz")
        metric = await upstream_up(client)
        collections = await client.get("/v1/collections")  # embeddings'
        models = await client.get("/v1/models")  # inference's
    assert ready.status_code == 200
    assert collections.status_code == 502
    assert collections.headers["content-type"] == "application/problem+json"
    assert models.status_code == 200
    assert report["status"] == "degraded"
    statuses = {name: u["status"] for name, u in report["upstreams"].items()}
    assert statuses == {"auth": "up", "inference": "up", "embeddings": "down", "telemetry": "up"}
    assert metric == {"auth": 1.0, "inference": 1.0, "embeddings": 0.0, "telemetry": 1.0}
    # Up or down and when: nothing of where the upstream is or what failed.
    assert set(report["upstreams"]["embeddings"]) == {"status", "checked_at"}


async def test_readyz_is_503_when_redis_is_down(upstream: Upstream, refused_port: int) -> None:
    settings = gateway_settings(upstream, f"redis://127.0.0.1:{refused_port}/0")
    async with (
        LiveServer(create_app(settings)) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        ready = await client.get("/readyz")
        report = await probed(client)
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"]["status"] == "error"
    assert report["status"] == "ok"  # the upstreams are fine: the gateway is not


async def test_openapi_document_merges_services_under_gateway_paths(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    # The upstream's routes appear under the service the gateway routes them to.
    assert "/v1/calls" in document["paths"]
    assert "/v1/hub/models" in document["paths"]
    assert not any(path.startswith("/internal") for path in document["paths"])
    assert "/healthz" not in document["paths"]
    assert "x-unavailable-services" not in document["info"]


def test_merge_renames_clashing_schemas_and_rewrites_refs() -> None:
    def doc(path: str, props: dict[str, object]) -> dict[str, object]:
        return {
            "info": {"title": "x"},
            "paths": {
                path: {
                    "get": {
                        "responses": {
                            "200": {
                                "content": {
                                    "application/json": {
                                        "schema": {"$ref": "#/components/schemas/Item"}
                                    }
                                }
                            }
                        }
                    }
                }
            },
            "components": {"schemas": {"Item": {"type": "object", "properties": props}}},
        }

    merged = merge(
        {
            "embeddings": doc("/v1/collections", {"name": {"type": "string"}}),
            "telemetry": doc("/v1/usage", {"tokens": {"type": "integer"}}),
            "auth": doc("/v1/collections/stolen", {}),
        },
        title="t",
        version="1",
    )
    schemas = merged["components"]["schemas"]
    assert set(schemas) == {"Item", "embeddings_Item", "telemetry_Item", "Problem"}
    usage = merged["paths"]["/v1/usage"]["get"]["responses"]["200"]
    assert usage["content"]["application/json"]["schema"]["$ref"].endswith("/telemetry_Item")
    # A service cannot publish a path the gateway routes to another service.
    assert "/v1/collections/stolen" not in merged["paths"]


def test_merge_documents_every_error_as_a_problem_and_who_may_call() -> None:
    validation = {"$ref": "#/components/schemas/HTTPValidationError"}
    document = {
        "info": {"title": "auth"},
        "paths": {
            path: {
                method: {
                    "responses": {
                        "200": {"description": "OK"},
                        "422": {"content": {"application/json": {"schema": validation}}},
                    }
                }
            }
            for path, method in (
                ("/auth/login", "post"),
                ("/auth/sessions", "get"),
                ("/auth/users", "get"),
            )
        },
        "components": {
            "schemas": {
                "HTTPValidationError": {"$ref": "#/components/schemas/ValidationError"},
                "ValidationError": {"type": "object"},
            }
        },
    }
    merged = merge({"auth": document}, title="t", version="1")
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, calls in (
        ("/auth/login", None),
        ("/auth/sessions", [{"session": []}]),
        ("/auth/users", [{"apiKey": []}, {"session": []}]),
    ):
        operation = merged["paths"][path]["post" if path == "/auth/login" else "get"]
        responses = operation["responses"]
        assert responses["200"] == {"description": "OK"}
        errors = {code for code in responses if code != "200"}
        # Sign-in needs no credentials: no 401 or 403 of the gateway's.
        public = {"422", "429", "4XX", "5XX"}
        assert errors == (public if calls is None else public | {"401", "403"}), path
        assert all(responses[code]["content"] == problem for code in errors)
        assert operation.get("security") == calls
    schemas = merged["components"]["schemas"]
    assert not {"HTTPValidationError", "ValidationError"} & set(schemas)
    assert schemas["Problem"]["required"] == ["type", "title", "status"]
