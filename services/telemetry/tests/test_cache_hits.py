"""Answers replayed from inference's response cache (issue 20): a call event with `cache`
("exact" | "semantic"), cost 0 and `saved_usd`, stored from the stream and from POST
/v1/events, listed with the calls, counted (`cache_hits`) and its saving summed
(`saved_usd`) in /v1/usage per group and in total, from the per-day cache as from the
calls; events from producers that predate these fields read as no hit."""

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
from common.llm_events import STREAM, LlmCallEvent
from telemetry.runtime import Runtime

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
from .test_usage_cache import one_cached_day

Client = Callable[[Identity], httpx.AsyncClient]
NEW_FIELDS = ("cache", "saved_usd")
FIGURES = ("requests", "errors", "cost_usd", "unpriced_calls", "cache_hits", "saved_usd")
FREE = "0.000000000"  # a hit's own cost


def hit(who: Identity | uuid.UUID, kind: str, saved: str, **overrides: Any) -> LlmCallEvent:
    """An answer replayed from the response cache, as inference records it: no provider
    attempt, no tokens, cost 0, and what it saved."""
    return call(who, attempts=0, prompt_tokens=0, completion_tokens=0, cost_usd=FREE,
                cache=kind, saved_usd=saved, **overrides)  # fmt: skip


def older(event: dict[str, Any]) -> dict[str, Any]:
    return without(event, NEW_FIELDS)


def figures(group: dict[str, Any]) -> dict[str, Any]:
    return {name: group[name] for name in FIGURES}


async def test_hits_are_listed_with_the_calls_and_counted_and_summed_in_usage(
    client: Client,
) -> None:
    who = member()
    now = time.time()
    events = [
        as_json(call(who, occurred_at=now - 60, model="openai/gpt-4o",
                     cost_usd="0.004250000")),  # the miss that paid
        as_json(hit(who, "exact", "0.004250000", occurred_at=now - 50, model="openai/gpt-4o")),
        as_json(hit(who, "semantic", "0.003100000", occurred_at=now - 45,
                    model="openai/gpt-4o", stream=True, ttft_ms=4.5)),
        as_json(hit(who, "exact", "0.000006000", occurred_at=now - 40,
                    model="openai/gpt-4o-mini")),
        older(as_json(call(who, occurred_at=now - 30, model="openai/gpt-4o-mini"))),
    ]  # fmt: skip
    async with client(who) as http:
        await reported(http, events)
        calls = (await http.get("/v1/calls")).json()["data"]
        by_model = await usage_of(http, group_by="model")
        by_day = await usage_of(http, group_by="day")

    listed = [(c["cache"], c["cost_usd"], c["saved_usd"], c["attempts"]) for c in calls]
    assert listed == [  # newest first
        (None, "0.000006000", None, 1),
        ("exact", FREE, "0.000006000", 0),
        ("semantic", FREE, "0.003100000", 0),
        ("exact", FREE, "0.004250000", 0),
        (None, "0.004250000", None, 1),
    ]
    groups = {g["key"]: figures(g) for g in by_model["groups"]}
    assert groups == {
        "openai/gpt-4o": {
            "requests": 3, "errors": 0, "cost_usd": "0.004250000", "unpriced_calls": 0,
            "cache_hits": 2, "saved_usd": "0.007350000",
        },
        "openai/gpt-4o-mini": {
            "requests": 2, "errors": 0, "cost_usd": "0.000006000", "unpriced_calls": 0,
            "cache_hits": 1, "saved_usd": "0.000006000",
        },
    }  # fmt: skip
    totals = {
        "requests": 5, "errors": 0, "cost_usd": "0.004256000", "unpriced_calls": 0,
        "cache_hits": 3, "saved_usd": "0.007356000",
    }  # fmt: skip
    assert figures(by_model["totals"]) == totals
    assert figures(by_day["totals"]) == totals


async def test_usage_without_hits_shows_none_and_saves_nothing(client: Client) -> None:
    """Calls from before the response cache, or that missed it: 0 hits, 0 saved."""
    who = member()
    async with client(who) as http:
        await reported(http, [older(as_json(call(who))), as_json(call(who, cache=None))])
        answer = await usage_of(http, group_by="day")
        calls = (await http.get("/v1/calls")).json()["data"]
    assert [(g["cache_hits"], g["saved_usd"]) for g in answer["groups"]] == [(0, "0")]
    assert (answer["totals"]["cache_hits"], answer["totals"]["saved_usd"]) == (0, "0")
    assert [(c["cache"], c["saved_usd"]) for c in calls] == [(None, None), (None, None)]


async def test_an_admin_sees_everyones_hits_per_user(client: Client) -> None:
    first, second, root = member(), member(), admin()
    async with client(first) as http:
        await reported(http, [as_json(hit(first, "exact", "0.000010000")), as_json(call(first))])
    async with client(second) as http:
        await reported(http, [as_json(hit(second, "exact", "0.000010000")) for _ in range(3)])
    async with client(root) as http:
        mine = await usage_of(http, group_by="user", user=first.sub)
        theirs = await usage_of(http, group_by="user", user=second.sub)
    assert [(g["key"], g["cache_hits"], g["saved_usd"]) for g in mine["groups"]] == [
        (first.sub, 1, "0.000010000")
    ]
    assert [(g["key"], g["cache_hits"], g["saved_usd"]) for g in theirs["groups"]] == [
        (second.sub, 3, "0.000030000")
    ]


async def test_a_bad_cache_field_refuses_the_batch_and_stores_nothing(client: Client) -> None:
    who = member()
    wrong = [
        ("cache", "fuzzy"),
        ("saved_usd", "-0.000000001"),
        ("saved_usd", "0.0000000001"),  # finer than the column keeps
        ("saved_usd", "1" + "0" * 10),  # more digits than it keeps
    ]
    async with client(who) as http:
        for name, value in wrong:
            event = as_json(hit(who, "exact", "0.000001000")) | {name: value}
            response = await http.post("/v1/events", json={"events": [event]})
            assert response.status_code == 422, (name, value)
            errors = [e["loc"][:4] for e in response.json()["errors"]]
            assert errors == [["body", "events", 0, name]], (name, value)
        assert (await http.get("/v1/calls")).json()["data"] == []


async def test_the_stream_stores_hits_and_reads_older_events(
    redis: Redis, engine: AsyncEngine, consumers: MakeConsumer
) -> None:
    user = uuid.uuid4()
    exact = hit(user, "exact", "0.000123456")
    semantic = hit(user, "semantic", "0.000000001")
    old = call(user)
    async with consumers():
        for event in (exact, semantic):
            await redis.xadd(STREAM, event.to_fields())  # type: ignore[arg-type]
        # As inference wrote events before the response cache existed.
        await redis.xadd(STREAM, {"event": json.dumps(older(as_json(old)))})
        await wait_stored(engine, user, 3)
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, cache, cost_usd::text AS cost, saved_usd::text AS saved "
                "FROM telemetry.llm_call WHERE user_id = :user"
            ),
            {"user": user},
        )
        stored = {str(row.id): (row.cache, row.cost, row.saved) for row in rows}
        dead = list(
            (await conn.execute(text("SELECT payload FROM telemetry.dead_letter"))).scalars()
        )
    assert stored == {
        exact.id: ("exact", FREE, "0.000123456"),
        semantic.id: ("semantic", FREE, "0.000000001"),
        old.id: (None, "0.000006000", None),
    }
    assert not any(e.id in payload for e in (exact, semantic, old) for payload in dead)


async def test_a_cached_day_holds_the_hits_and_the_saving(
    engine: AsyncEngine, runtime: Runtime
) -> None:
    """The figures added in telemetry_0006 come from the per-day cache as from the calls."""

    def calls(user: uuid.UUID, noon: float) -> list[LlmCallEvent]:
        return [
            call(user, occurred_at=noon),
            hit(user, "exact", "0.000006000", occurred_at=noon + 1),
            hit(user, "semantic", "0.000000007", occurred_at=noon + 2),
            call(user, occurred_at=noon + 3, cost_usd=None, status="upstream_error"),
        ]  # fmt: skip

    answer, stored = await one_cached_day(runtime, engine, calls, "cache_hits, saved_usd::text")
    assert stored == (2, "0.000006007")
    (group,) = answer.groups
    assert (group.requests, group.cache_hits, str(group.saved_usd)) == (4, 2, "0.000006007")
    assert (answer.totals.cache_hits, str(answer.totals.saved_usd)) == (2, "0.000006007")
