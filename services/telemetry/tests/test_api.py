"""The query API and HTTP ingestion: exact sums, owner scoping, keyset pagination,
validation as problem+json."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from common.identity import Identity
from telemetry.histograms import RELATIVE_ERROR

from .conftest import admin, as_json, call, member

Client = Callable[[Identity], httpx.AsyncClient]


async def report(client: Client, who: Identity, events: list[dict[str, Any]]) -> httpx.Response:
    async with client(who) as http:
        return await http.post("/v1/events", json={"events": events})


async def get(client: Client, who: Identity, path: str, **params: Any) -> httpx.Response:
    async with client(who) as http:
        return await http.get(path, params=params)


def varied_calls(who: Identity, n: int) -> list[dict[str, Any]]:
    """Two models, some errors, streamed calls with a time to first token, odd costs."""
    now = time.time()
    return [
        as_json(
            call(
                who,
                occurred_at=now - 3600 + i,
                model="openai/gpt-4o" if i % 3 else "openai/gpt-4o-mini",
                status="ok" if i % 7 else "rate_limited",
                prompt_tokens=10 + i,
                completion_tokens=i % 5,
                cost_usd=f"0.{i:03d}000001",
                latency_ms=50.0 + (i * 37) % 400,
                stream=bool(i % 2),
                ttft_ms=float(10 + i) if i % 2 else None,
            )
        )
        for i in range(n)
    ]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks: what percentile_cont computes."""
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


async def test_usage_sums_equal_the_sum_of_the_reported_calls(client: Client) -> None:
    who = member()
    events = varied_calls(who, 60)
    stored = await report(client, who, events)
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"received": 60, "inserted": 60, "duplicates": 0}

    response = await get(client, who, "/v1/usage", group_by="model", percentiles="exact")
    assert response.status_code == 200, response.text
    groups = {g["key"]: g for g in response.json()["groups"]}
    approximate = await get(client, who, "/v1/usage", group_by="model")
    assert approximate.status_code == 200, approximate.text
    near = {g["key"]: g for g in approximate.json()["groups"]}
    assert set(groups) == {"openai/gpt-4o", "openai/gpt-4o-mini"}
    for model, group in groups.items():
        mine = [e for e in events if e["model"] == model]
        errors = sum(e["status"] != "ok" for e in mine)
        assert group["requests"] == len(mine)
        assert group["errors"] == errors
        assert group["error_rate"] == pytest.approx(errors / len(mine))
        assert group["prompt_tokens"] == sum(e["prompt_tokens"] for e in mine)
        assert group["completion_tokens"] == sum(e["completion_tokens"] for e in mine)
        assert Decimal(group["cost_usd"]) == sum(Decimal(e["cost_usd"]) for e in mine)
        assert isinstance(group["cost_usd"], str)
        latencies = [e["latency_ms"] for e in mine]
        assert group["latency_ms_p50"] == pytest.approx(statistics.median(latencies))
        assert group["latency_ms_p95"] == pytest.approx(percentile(latencies, 0.95))
        ttfts = [e["ttft_ms"] for e in mine if e["ttft_ms"] is not None]
        assert group["ttft_ms_p50"] == pytest.approx(statistics.median(ttfts))
        for name in ("latency_ms_p50", "latency_ms_p95", "ttft_ms_p50"):
            assert near[model][name] == pytest.approx(group[name], rel=RELATIVE_ERROR)
            assert near[model][name] != group[name]  # not read from the calls

    by_day = (await get(client, who, "/v1/usage", group_by="day")).json()["groups"]
    assert sum(g["requests"] for g in by_day) == 60
    total = sum(Decimal(e["cost_usd"]) for e in events)
    assert sum(Decimal(g["cost_usd"]) for g in by_day) == total


async def test_usage_by_day_over_the_widest_range_is_exact(client: Client) -> None:
    """From year 1 to year 9999: the same days and figures as the default range (the
    statement stays small whatever the range: far stretches are read as one GROUP BY)."""
    who = member()
    events = varied_calls(who, 12)
    assert (await report(client, who, events)).status_code == 200

    recent = (await get(client, who, "/v1/usage", group_by="day")).json()
    bounds = {"from": "0001-01-01T00:00:00Z", "to": "9999-12-31T23:59:59Z"}
    widest = await get(client, who, "/v1/usage", group_by="day", **bounds)
    assert widest.status_code == 200, widest.text
    assert widest.json()["groups"] == recent["groups"]
    assert sum(g["requests"] for g in widest.json()["groups"]) == 12


async def test_members_see_only_their_own_usage_and_calls(client: Client) -> None:
    alice, bob, root = member(), member(), admin()
    assert (await report(client, alice, [as_json(call(alice)) for _ in range(2)])).is_success
    assert (await report(client, bob, [as_json(call(bob)) for _ in range(3)])).is_success

    usage = (await get(client, alice, "/v1/usage", group_by="user")).json()["groups"]
    assert [(g["key"], g["requests"]) for g in usage] == [(alice.sub, 2)]
    calls = (await get(client, alice, "/v1/calls")).json()["data"]
    assert {c["user_id"] for c in calls} == {alice.sub}
    assert all(len(c["trace_id"]) == 32 for c in calls)
    for path in ("/v1/usage", "/v1/calls"):
        refused = await get(client, alice, path, user=bob.sub)
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"

    everyone = (await get(client, root, "/v1/usage", group_by="user")).json()["groups"]
    assert {(g["key"], g["requests"]) for g in everyone} >= {(alice.sub, 2), (bob.sub, 3)}
    only_bob = (await get(client, root, "/v1/calls", user=bob.sub)).json()["data"]
    assert len(only_bob) == 3
    assert {c["user_id"] for c in only_bob} == {bob.sub}


async def test_keyset_pagination_returns_every_row_once_while_inserts_continue(
    client: Client,
) -> None:
    who = member()
    start = time.time() - 600
    # Pairs share a timestamp: the id breaks the tie.
    first = [as_json(call(who, occurred_at=start + i // 2)) for i in range(95)]
    assert (await report(client, who, first)).is_success
    seen: list[str] = []
    cursor = None
    for page_number in range(100):
        params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = (await get(client, who, "/v1/calls", **params)).json()
        seen += [c["id"] for c in page["data"]]
        times = [c["occurred_at"] for c in page["data"]]
        assert times == sorted(times, reverse=True)
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # Meanwhile: new calls (newer than the first page) and late ones (older than all,
        # so still ahead of the cursor: they must come too).
        late = [
            as_json(call(who)),
            as_json(call(who, occurred_at=start - 100 - page_number)),
        ]
        assert (await report(client, who, late)).is_success
        first += late[1:]
    assert len(seen) == len(set(seen)), "a row came twice"
    assert {e["id"] for e in first} <= set(seen), "a row was skipped"


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v1/usage", {"group_by": "week"}, 422),
        ("/v1/usage", {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, 422),
        ("/v1/usage", {"from": "yesterday"}, 422),
        ("/v1/usage", {"user": "not-a-uuid"}, 422),
        ("/v1/usage", {"team": "not-a-uuid"}, 422),
        ("/v1/usage", {"group_by": "keys"}, 422),
        ("/v1/calls", {"team": "not-a-uuid"}, 422),
        ("/v1/calls", {"cursor": "garbage!"}, 422),
        ("/v1/calls", {"cursor": "MTIzLm5vdC1hbi1pZA"}, 422),
        ("/v1/calls", {"limit": 0}, 422),
        ("/v1/calls", {"limit": 201}, 422),
        ("/v1/calls", {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, 422),
    ],
)
async def test_bad_query_parameters_are_problems_not_500s(
    client: Client, path: str, params: dict[str, Any], status: int
) -> None:
    response = await get(client, member(), path, **params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_from_and_to_take_unix_seconds_as_documented(client: Client, app: FastAPI) -> None:
    """The document said ISO 8601 only, and the fuzzer's numbers were answered: both are
    taken, and documented."""
    response = await get(client, member(), "/v1/usage", **{"from": "0", "to": "86400.5"})
    assert response.status_code == 200, response.text
    assert (response.json()["from"], response.json()["to"]) == (
        "1970-01-01T00:00:00Z",
        "1970-01-02T00:00:00.500000Z",
    )
    document = app.openapi()
    parameters = document["paths"]["/v1/usage"]["get"]["parameters"]
    for name in ("from", "to"):
        schema = next(p["schema"] for p in parameters if p["name"] == name)
        assert {"type": "number", "description": "Unix seconds."} in schema["anyOf"]


async def test_reported_calls_are_idempotent_and_always_the_callers_own(client: Client) -> None:
    who, someone_else = member(), member()
    events = [as_json(call(someone_else)) for _ in range(3)]
    assert (await report(client, who, events)).json()["inserted"] == 3
    again = await report(client, who, events)
    assert again.json() == {"received": 3, "inserted": 0, "duplicates": 3}
    assert (await get(client, someone_else, "/v1/calls")).json()["data"] == []
    mine = (await get(client, who, "/v1/calls")).json()["data"]
    assert sorted(c["id"] for c in mine) == sorted(e["id"] for e in events)
    assert {c["source"] for c in mine} == {"api"}


async def test_a_batch_with_an_invalid_event_is_refused_whole_naming_the_event(
    client: Client,
) -> None:
    who = member()
    events = [as_json(call(who)) for _ in range(4)]
    events[2]["latency_ms"] = -1
    refused = await report(client, who, events)
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert [e["loc"][:3] for e in refused.json()["errors"]] == [["body", "events", 2]]

    events[2]["latency_ms"] = 10
    events[3]["occurred_at"] = time.time() - 400 * 86400  # past the 90-day retention
    refused = await report(client, who, events)
    assert refused.status_code == 422
    assert [e["loc"] for e in refused.json()["errors"]] == [["body", "events", 3, "occurred_at"]]
    assert (await get(client, who, "/v1/calls")).json()["data"] == []

    too_many = await report(client, who, [as_json(call(who)) for _ in range(1001)])
    assert too_many.status_code == 422


async def test_reading_and_reporting_need_the_telemetry_permissions(client: Client) -> None:
    nobody = Identity(sub=str(uuid.uuid4()), kind="user", iss="gateway", roles=("none",))
    for refused in (
        await get(client, nobody, "/v1/usage"),
        await report(client, nobody, [as_json(call(nobody))]),
    ):
        assert refused.status_code == 403
        assert refused.json()["type"] == "urn:llm-platform:problem:missing-permission"


async def test_calls_are_read_for_a_user_only(client: Client) -> None:
    a_service = Identity(sub="service:x", kind="service", iss="x")
    for path in ("/v1/usage", "/v1/calls"):
        refused = await get(client, a_service, path)
        assert refused.status_code == 401
        assert refused.json()["type"] == "urn:llm-platform:problem:authentication-required"


async def test_the_service_metrics_are_exposed(client: Client) -> None:
    who = member()
    await report(client, who, [as_json(call(who))])
    async with client(who) as http:
        text = (await http.get("/metrics")).text
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "telemetry_ingested_events",
        "telemetry_dead_letters",
        "telemetry_stream_lag_events",
        "telemetry_batch_size",
        "telemetry_write_duration_seconds",
    } <= names
