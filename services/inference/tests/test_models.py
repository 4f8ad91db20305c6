"""GET /v1/models speaks OpenAI's list format, to signed callers only."""

from __future__ import annotations

from fastapi import FastAPI

from devkit.testing import ServiceHarness, asgi_client, user_identity


async def test_models_list_is_in_openai_format(app: FastAPI, harness: ServiceHarness) -> None:
    caller = user_identity(permissions=("models:read",))
    async with asgi_client(app, identity=caller, key=harness.key()) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert isinstance(body["data"], list)
    for model in body["data"]:
        assert set(model) == {"id", "object", "created", "owned_by"}


async def test_models_list_needs_the_gateway(app: FastAPI) -> None:
    async with asgi_client(app) as client:
        assert (await client.get("/v1/models")).status_code == 401


async def test_models_list_needs_the_models_permission(
    app: FastAPI, harness: ServiceHarness
) -> None:
    async with asgi_client(app, identity=user_identity(), key=harness.key()) as client:
        assert (await client.get("/v1/models")).status_code == 403
