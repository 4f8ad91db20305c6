"""The cached prompt tokens and reasoning tokens of each call, and the count of calls without
a price: stored from the stream and from POST /v1/events, listed with the calls, summed in
/v1/usage per group and in total; events from producers that predate them still read."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from common.identity import Identity
from common.llm_events import STREAM

from .conftest import (
    MakeConsumer,
    admin,
    as_json,
    call,
    member,
    reported,
    usage_of,
    wait_stored,
    without,
)

Client = Callable[[Identity], httpx.AsyncClient]
NEW_FIELDS = ("cached_prompt_tokens", "reasoning_tokens")
FIGURES = (
    "requests", "errors", "prompt_tokens", "completion_tokens", "cached_prompt_tokens",
    "reasoning_tokens", "cost_usd", "unpriced_calls",
)  # fmt: skip


def older(event: dict[str, Any]) -> dict[str, Any]:
    return without(event, NEW_FIELDS)


def figures(group: dict[str, Any]) -> dict[str, Any]:
    return {name: group[name] for name in FIGURES}


async def test_token_details_are_listed_with_the_calls_and_summed_in_usage(
    client: Client,
) -> None:
    who = member()
    now = time.time()
    events = [
        as_json(call(who, occurred_at=now - 60, model="openai/gpt-4o", prompt_tokens=1200,
                     cached_prompt_tokens=1000, completion_tokens=300, reasoning_tokens=256,
                     cost_usd="0.004250000")),
        as_json(call(who, occurred_at=now - 50, model="openai/gpt-4o", prompt_tokens=40,
                     cached_prompt_tokens=0, completion_tokens=10, reasoning_tokens=None,
                     cost_usd="0.000200000")),
        older(as_json(call(who, occurred_at=now - 40, model="openai/gpt-4o-mini",
                           prompt_tokens=12, completion_tokens=7))),
    ]  # fmt: skip
    async with client(who) as http:
        await reported(http, events)
        calls = (await http.get("/v1/calls")).json()["data"]
        by_model = await usage_of(http, group_by="model")
        by_day = await usage_of(http, group_by="day")

    listed = [(c["prompt_tokens"], c["cached_prompt_tokens"], c["reasoning_tokens"]) for c in calls]
    assert listed == [(12, None, None), (40, 0, None), (1200, 1000, 256)]  # newest first
    groups = {g["key"]: figures(g) for g in by_model["groups"]}
    assert groups == {
        "openai/gpt-4o": {
            "requests": 2, "errors": 0, "prompt_tokens": 1240, "completion_tokens": 310,
            "cached_prompt_tokens": 1000, "reasoning_tokens": 256, "cost_usd": "0.004450000",
            "unpriced_calls": 0,
        },
        "openai/gpt-4o-mini": {
            "requests": 1, "errors": 0, "prompt_tokens": 12, "completion_tokens": 7,
            "cached_prompt_tokens": 0, "reasoning_tokens": 0, "cost_usd": "0.000006000",
            "unpriced_calls": 0,
        },
    }  # fmt: skip
    totals = {
        "requests": 3, "errors": 0, "error_rate": 0.0, "prompt_tokens": 1252,
        "completion_tokens": 317, "cached_prompt_tokens": 1000, "reasoning_tokens": 256,
        "cost_usd": "0.004456000", "unpriced_calls": 0, "cache_hits": 0, "saved_usd": "0",
    }  # fmt: skip
    assert by_model["totals"] == totals
    assert by_day["totals"] == totals


async def test_unpriced_calls_are_the_successful_calls_without_a_cost(client: Client) -> None:
    """An admin sees which models lack a price: a failed call has no cost either, and a
    call priced at 0 (the local model) has one."""
    who, root = member(), admin()
    unknown, local = f"test/unpriced-{uuid.uuid4().hex[:8]}", f"test/free-{uuid.uuid4().hex[:8]}"
    events = [
        *(as_json(call(who, model=unknown, cost_usd=None)) for _ in range(3)),
        as_json(call(who, model=unknown, cost_usd=None, status="upstream_error",
                     prompt_tokens=None, completion_tokens=None)),
        *(as_json(call(who, model=local, cost_usd="0")) for _ in range(2)),
        as_json(call(who)),
    ]  # fmt: skip
    async with client(who) as http:
        await reported(http, events)
        mine = await usage_of(http, group_by="model")
    async with client(root) as http:
        everyone = await usage_of(http, group_by="model", user=who.sub)

    for answer in (mine, everyone):
        unpriced = {g["key"]: (g["unpriced_calls"], g["errors"]) for g in answer["groups"]}
        assert unpriced == {unknown: (3, 1), local: (0, 0), "openai/gpt-4o-mini": (0, 0)}
        assert answer["totals"]["unpriced_calls"] == 3
        assert answer["totals"]["requests"] == 7


async def test_the_stream_stores_token_details_and_reads_older_events(
    redis: Redis, engine: AsyncEngine, consumers: MakeConsumer
) -> None:
    user = uuid.uuid4()
    new = call(user, cached_prompt_tokens=8, reasoning_tokens=3)
    old = call(user)
    async with consumers():
        await redis.xadd(STREAM, new.to_fields())  # type: ignore[arg-type]
        # As inference wrote events before these fields existed.
        await redis.xadd(STREAM, {"event": json.dumps(older(as_json(old)))})
        await wait_stored(engine, user, 2)
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, cached_prompt_tokens, reasoning_tokens FROM telemetry.llm_call "
                "WHERE user_id = :user"
            ),
            {"user": user},
        )
        stored = {str(row.id): (row.cached_prompt_tokens, row.reasoning_tokens) for row in rows}
    assert stored == {new.id: (8, 3), old.id: (None, None)}
    dead = await _dead_letters(engine)
    assert not any(new.id in payload or old.id in payload for payload in dead)


async def _dead_letters(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list(
            (await conn.execute(text("SELECT payload FROM telemetry.dead_letter"))).scalars()
        )
