"""The gateway's /readyz covers every upstream; /openapi.json merges the services' documents."""

from __future__ import annotations

import httpx

from devkit.testing import LiveServer
from gateway.main import create_app
from gateway.openapi import merge

from .conftest import Upstream, gateway_settings


async def test_readyz_lists_every_upstream(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    checks = response.json()["checks"]
    for name in ("auth", "inference", "embeddings", "telemetry", "redis"):
        assert checks[name]["status"] == "ok", name


async def test_readyz_is_503_naming_the_upstream_that_is_down(
    upstream: Upstream,
    redis_url: str,
    refused_port: int,
) -> None:
    settings = gateway_settings(
        upstream, redis_url, embeddings_url=f"http://127.0.0.1:{refused_port}"
    )
    async with LiveServer(create_app(settings)) as server, httpx.AsyncClient() as client:
        response = await client.get(f"{server.url}/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["embeddings"]["status"] == "error"
    assert checks["inference"]["status"] == "ok"


async def test_openapi_document_merges_services_under_gateway_paths(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        document = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    assert document["openapi"].startswith("3.")
    # The upstream's routes appear under the service the gateway routes them to.
    assert "/v1/calls" in document["paths"]
    assert "/v1/hub/models" in document["paths"]
    assert not any(path.startswith("/internal") for path in document["paths"])
    assert "/healthz" not in document["paths"]
    assert "x-unavailable-services" not in document["info"]
    assert docs.status_code == 200
    assert "/openapi.json" in docs.text


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
