"""POST /internal/spend: what a key, a user or a team spent since a time, exact, for
inference and auth only; read by the shared client (common.budgets.TelemetrySpend) as
inference and auth read it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from common.budgets import SpendQuery, TelemetrySpend
from common.identity import Identity
from devkit.testing import ServiceHarness, asgi_client

from .conftest import MakeConsumer, admin, append, as_json, call, eventually, member

Client = Callable[[Identity], httpx.AsyncClient]
INFERENCE = Identity(sub="service:inference", kind="service", iss="inference")
AUTH = Identity(sub="service:auth", kind="service", iss="auth")


def service(name: str) -> Identity:
    return Identity(sub=f"service:{name}", kind="service", iss=name)


async def report(client: Client, events: list[dict[str, Any]]) -> None:
    async with client(INFERENCE) as http:
        response = await http.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text


async def spend(client: Client, who: Identity, queries: list[dict[str, Any]]) -> httpx.Response:
    async with client(who) as http:
        return await http.post("/internal/spend", json={"queries": queries})


def event(
    user: Identity, *, key: str | None, team: uuid.UUID | None, cost: str | None, at: float
) -> dict[str, Any]:
    fields = as_json(call(user, api_key_id=key, cost_usd=cost, occurred_at=at))
    fields["team_id"] = str(team) if team else None
    return fields


async def test_spend_is_the_exact_sum_of_each_scopes_calls_since_a_time(client: Client) -> None:
    alice, bob = member(), member()
    team, key = uuid.uuid4(), f"key-{uuid.uuid4()}"
    now = time.time()
    since = datetime.fromtimestamp(now - 3600, UTC)
    calls = [
        # Before `since`: counted only when asked since ever.
        event(alice, key=key, team=team, cost="1.000000000", at=now - 7200),
        # At `since` exactly: counted (occurred_at >= since).
        event(alice, key=key, team=team, cost="0.000000001", at=since.timestamp()),
        event(alice, key=key, team=team, cost="12.345678901", at=now - 60),
        event(alice, key=key, team=team, cost=None, at=now - 50),  # no price: 0
        event(bob, key=None, team=team, cost="0.100000000", at=now - 40),
        event(bob, key=None, team=None, cost="2.000000000", at=now - 30),
    ]
    await report(client, calls)

    asked = [
        {"scope": "key", "id": key, "since": since.isoformat()},
        {"scope": "key", "id": key, "since": None},
        {"scope": "user", "id": alice.sub, "since": since.isoformat()},
        {"scope": "user", "id": bob.sub, "since": None},
        {"scope": "team", "id": str(team), "since": since.isoformat()},
        {"scope": "team", "id": str(team), "since": None},
        # Without an offset: UTC.
        {"scope": "team", "id": str(team), "since": since.replace(tzinfo=None).isoformat()},
        {"scope": "team", "id": str(uuid.uuid4()), "since": None},  # no calls
        {"scope": "key", "id": "key-never-used", "since": None},
        {"scope": "user", "id": alice.sub, "since": "2999-01-01T00:00:00Z"},
    ]
    for caller in (INFERENCE, AUTH):
        answered = await spend(client, caller, asked)
        assert answered.status_code == 200, answered.text
        assert answered.json() == {
            "spend_usd": [
                "12.345678902",
                "13.345678902",
                "12.345678902",
                "2.100000000",
                "12.445678902",
                "13.445678902",
                "12.445678902",
                "0",
                "0",
                "0",
            ]
        }


async def test_the_shared_client_reads_the_answer(app: FastAPI, harness: ServiceHarness) -> None:
    """common.budgets.TelemetrySpend, what inference and auth ask with, against this app."""
    alice, team = member(), uuid.uuid4()
    costs = ["0.000001500", "0.000000001", "3.000000000"]
    now = time.time()
    async with asgi_client(app, identity=INFERENCE, key=harness.key()) as http:
        stored = await http.post(
            "/v1/events",
            json={"events": [event(alice, key="k", team=team, cost=c, at=now) for c in costs]},
        )
        assert stored.status_code == 200, stored.text
        amounts = await TelemetrySpend(http)(
            [
                SpendQuery("team", str(team), datetime.fromtimestamp(now - 1, UTC)),
                SpendQuery("user", alice.sub, None),
                SpendQuery("key", "k", datetime.fromtimestamp(now + 1, UTC)),
            ]
        )
    assert amounts == [Decimal("3.000001501"), Decimal("3.000001501"), Decimal(0)]


async def test_calls_from_the_stream_keep_their_team_and_count_for_it(
    client: Client, redis: Redis, consumers: MakeConsumer, engine: AsyncEngine
) -> None:
    who, team = member(), uuid.uuid4()
    events = [
        call(who, api_key_id="key-t", team_id=str(team), cost_usd="0.250000000"),
        call(who, api_key_id="key-t", team_id=str(team), cost_usd="0.500000000"),
        call(who, api_key_id="key-p", team_id=None, cost_usd="4.000000000"),
    ]
    async with consumers():
        await append(redis, events)

        async def stored() -> bool:
            async with engine.connect() as conn:
                found = await conn.execute(
                    text("SELECT count(*) FROM telemetry.llm_call WHERE user_id = :u"),
                    {"u": uuid.UUID(who.sub)},
                )
                return found.scalar_one() == 3

        await eventually(stored)
    answered = await spend(
        client,
        INFERENCE,
        [
            {"scope": "team", "id": str(team), "since": None},
            {"scope": "key", "id": "key-t", "since": None},
            {"scope": "user", "id": who.sub, "since": None},
        ],
    )
    assert answered.json()["spend_usd"] == ["0.750000000", "0.750000000", "4.750000000"]
    async with client(who) as http:
        rows = (await http.get("/v1/calls", params={"team": str(team)})).json()["data"]
    assert sorted(r["cost_usd"] for r in rows) == ["0.250000000", "0.500000000"]
    assert {r["team_id"] for r in rows} == {str(team)}


@pytest.mark.parametrize(
    "caller",
    [admin(), member(), service("gateway"), service("embeddings"), service("telemetry")],
    ids=["admin", "member", "gateway", "embeddings", "telemetry"],
)
async def test_only_inference_and_auth_may_ask(client: Client, caller: Identity) -> None:
    refused = await spend(
        client, caller, [{"scope": "user", "id": str(uuid.uuid4()), "since": None}]
    )
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:llm-platform:problem:services-only"


LATER = (datetime.now(UTC) + timedelta(days=1)).isoformat()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"queries": []},
        {"queries": [{"scope": "key", "id": "k", "since": None}] * 101},
        {"queries": [{"scope": "org", "id": "k", "since": None}]},
        {"queries": [{"scope": "user", "id": "not-a-uuid", "since": None}]},
        {"queries": [{"scope": "team", "id": "", "since": None}]},
        {"queries": [{"scope": "key", "id": "k" * 65, "since": None}]},
        {"queries": [{"scope": "key", "id": "k", "since": "yesterday"}]},
        {"queries": [{"scope": "key", "id": "k"}]},
        {"queries": [{"scope": "key", "id": "k", "since": LATER, "until": LATER}]},
        {"queries": {"scope": "key", "id": "k", "since": None}},
        [],
    ],
)
async def test_bad_queries_are_problems_not_500s(client: Client, body: Any) -> None:
    async with client(INFERENCE) as http:
        refused = await http.post("/internal/spend", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
