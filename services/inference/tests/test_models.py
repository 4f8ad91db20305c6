"""GET /v1/models speaks OpenAI's list format, to signed callers only, and lists what the
caller can call, the providers' own lists included; GET /v1/models/{model} answers for
each (issue 19)."""

from __future__ import annotations

import openai
import pytest
from fastapi import FastAPI

from devkit.testing import ServiceHarness, asgi_client, user_identity

from .conftest import Inference, Upstream, member


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


# ---------------------------------------------------------------- the catalog (issue 19)


async def test_the_sdk_lists_and_retrieves_what_the_caller_can_call(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)  # the member's own
    async with inference.sdk() as sdk:
        listed = [m.id async for m in sdk.models.list()]
        for name in ("openai/gpt-4o-mini", "openai/text-embedding-3-small"):
            assert name in listed
        assert len(listed) == len(set(listed))
        for name in listed:
            assert (await sdk.models.retrieve(name)).id == name
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk.models.retrieve("openai/gpt-9")
        assert missing.value.body["type"].endswith(":model-not-found")  # type: ignore[index]
    # Fetched once, then from the cache (INFERENCE_MODELS_CACHE_SECONDS).
    assert len(openai_upstream.control.requests_to("/v1/models")) == 1


async def test_one_callers_credentials_are_not_listed_for_another(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)  # member()'s own, not shared
    other = member("00000000-0000-0000-0000-0000000000cc")
    response = await inference.call("GET", "/v1/models", identity=other)
    assert response.status_code == 200
    assert not [m for m in response.json()["data"] if m["id"].startswith("openai/")]
    missing = await inference.call("GET", "/v1/models/openai/gpt-4o-mini", identity=other)
    assert missing.status_code == 404
    assert openai_upstream.control.requests_to("/v1/models") == []


async def test_a_provider_that_cannot_list_is_left_out_and_asked_again_later(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    openai_upstream.control.fail("/v1/models", status=500, message="down")
    first = await inference.call("GET", "/v1/models")
    second = await inference.call("GET", "/v1/models")
    for response in (first, second):
        assert response.status_code == 200, response.text
        assert not [m for m in response.json()["data"] if m["id"].startswith("openai/")]
    # The failure is remembered for a while: the provider was asked once.
    assert len(openai_upstream.control.requests_to("/v1/models")) == 1
