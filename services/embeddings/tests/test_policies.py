"""The text a collection embeds is governed like any model call (issue 18): the caller's
policies reach inference with their identity, and its refusals reach the caller as
inference says them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from common.budgets import spend_key
from common.identity import Identity
from devkit.testing import redis_db_url

from .conftest import MODEL, REDIS_DB, Embeddings, person

KEY = "10000000-0000-0000-0000-000000000401"
TEAM = "20000000-0000-0000-0000-000000000401"


def with_key(number: int, policies: dict[str, object]) -> Identity:
    """An API-key caller of the member `number` with the policies the gateway signed."""
    return replace(person(number), kind="api_key", kid=KEY, team=TEAM, policies=policies)


@pytest.fixture
async def inference_redis(redis_url: str) -> AsyncIterator[Redis]:
    """The Redis database the session's inference server counts budgets in."""
    client = Redis.from_url(redis_db_url(redis_url, REDIS_DB))
    try:
        yield client
    finally:
        await client.delete(spend_key("team", TEAM, "total", datetime.now(UTC)))
        await client.aclose()


async def test_a_model_the_team_does_not_allow_is_refused_as_inference_says(
    service: Embeddings,
) -> None:
    caller = with_key(401, {"team": {"allowed_models": ["openai/*"]}})
    response = await service.call(
        caller, "POST", "/v1/collections", json={"name": "refused", "model": MODEL}
    )

    assert response.status_code == 403, response.text
    body = response.json()
    assert body["type"] == "urn:llm-platform:problem:model-not-allowed"
    assert (body["model"], body["scope"]) == (MODEL, "team")
    listed = await service.call(person(401), "GET", "/v1/collections")
    assert "refused" not in [c["name"] for c in listed.json()]


async def test_a_spent_budget_refuses_the_text_a_collection_embeds(
    service: Embeddings, inference_redis: Redis
) -> None:
    created = await service.collection(person(402), "notes")
    await inference_redis.set(spend_key("team", TEAM, "total", datetime.now(UTC)), 0)
    caller = with_key(402, {"team": {"max_budget_usd": "0"}})

    response = await service.query(caller, created["id"], text="anything")

    assert response.status_code == 429, response.text
    body = response.json()
    assert body["type"] == "urn:llm-platform:problem:budget-exceeded"
    assert (body["scope"], body["budget_usd"], body["budget_resets_at"]) == ("team", "0.00", None)
