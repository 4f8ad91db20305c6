"""Auth's background work for budgets: the announcements inference makes at 50, 80 and
100 % of a budget become audit events, and each team's budget use is a Prometheus gauge."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from auth import background
from common import ports
from common.budgets import ALERTS, spend_key, utc

from .conftest import AuthClient, LoggedIn


def _alert(scope: str = "key", threshold: int = 80, **extra: Any) -> bytes:
    body = {
        "scope": scope,
        "id": str(uuid.uuid4()),
        "threshold": threshold,
        "spend_usd": "8.000000000",
        "budget_usd": "10.000000000",
        "period": "month",
        "at": 1796000000.5,
        **extra,
    }
    return json.dumps(body).encode()


async def _threshold_events(
    auth: AuthClient,
) -> list[tuple[str | None, str | None, dict[str, Any]]]:
    return [
        (e.target_type, e.target_id, e.detail)
        for e in await auth.audit_events()
        if e.action == "budget.threshold"
    ]


async def test_each_budget_announcement_becomes_an_audit_event(auth: AuthClient) -> None:
    alerts = [_alert("key", 50), _alert("user", 80), _alert("team", 100)]
    for alert in alerts:
        await auth.redis.lpush(ALERTS, alert)  # as inference pushes them: newest first
    await auth.redis.lpush(ALERTS, b"not json")

    recorded = await background.record_budget_alerts(auth.runtime)

    assert recorded == 3
    events = await _threshold_events(auth)
    expected = [json.loads(a) for a in alerts]
    assert [(t, i) for t, i, _ in events] == [
        ("api_key", expected[0]["id"]),
        ("user", expected[1]["id"]),
        ("team", expected[2]["id"]),
    ]
    assert [d for _, _, d in events] == expected
    assert await auth.redis.llen(ALERTS) == 0


async def test_a_backlog_is_taken_in_batches(auth: AuthClient) -> None:
    count = background.ALERT_BATCH * 2 + 7
    await auth.redis.lpush(ALERTS, *[_alert() for _ in range(count)])

    assert await background.record_budget_alerts(auth.runtime) == count
    assert len(await _threshold_events(auth)) == count


async def test_announcements_wait_in_redis_while_the_database_cannot_take_them(
    auth: AuthClient,
) -> None:
    alerts = [_alert(threshold=t) for t in (50, 80, 100)]
    for alert in alerts:
        await auth.redis.lpush(ALERTS, alert)
    before = await auth.redis.lrange(ALERTS, 0, -1)
    with ports.refusing_port() as port:
        engine = create_async_engine(f"postgresql+asyncpg://auth@127.0.0.1:{port}/platform")
        down = dataclasses.replace(auth.runtime, sessionmaker=async_sessionmaker(engine))
        try:
            failed = None
            try:
                await background.record_budget_alerts(down)
            except OSError as exc:
                failed = exc
        finally:
            await engine.dispose()

    assert failed is not None
    assert await auth.redis.lrange(ALERTS, 0, -1) == before  # all back, in order
    assert await background.record_budget_alerts(auth.runtime) == 3
    assert [d["threshold"] for _, _, d in await _threshold_events(auth)] == [50, 80, 100]


async def _gauge(auth: AuthClient) -> dict[tuple[str, str], float]:
    response = await auth.call("GET", "/metrics")
    return {
        (s.labels["team_id"], s.labels["team"]): s.value
        for family in text_string_to_metric_families(response.text)
        if family.name == "llm_team_budget_used_ratio"
        for s in family.samples
    }


async def test_the_gauge_shows_each_team_with_a_budget_and_forgets_the_others(
    auth: AuthClient, admin: LoggedIn
) -> None:
    research = await auth.create_team(admin, "Research", max_budget_usd="100", budget_period="day")
    ops = await auth.create_team(admin, "Ops", max_budget_usd="10")
    sales = await auth.create_team(admin, "Sales", max_budget_usd="50")
    await auth.create_team(admin, "Unbudgeted", rpm_limit=10)
    await auth.seed_spend("team", research["id"], "day", "25")
    await auth.seed_spend("team", ops["id"], "total", "12")
    await auth.seed_spend("team", sales["id"], "total", "5")

    assert await background.refresh_team_budgets(auth.runtime) == 3
    first = await _gauge(auth)

    await auth.as_user(admin, "DELETE", f"/auth/teams/{ops['id']}")
    await auth.as_user(admin, "PATCH", f"/auth/teams/{research['id']}", json={"name": "R&D"})
    await auth.as_user(admin, "PATCH", f"/auth/teams/{sales['id']}", json={"max_budget_usd": None})
    await background.refresh_team_budgets(auth.runtime)
    second = await _gauge(auth)

    assert first == {
        (research["id"], "Research"): 0.25,
        (ops["id"], "Ops"): 1.2,
        (sales["id"], "Sales"): 0.1,
    }
    assert second == {(research["id"], "R&D"): 0.25}


async def test_a_team_whose_spend_cannot_be_read_keeps_its_last_value(
    auth: AuthClient, admin: LoggedIn
) -> None:
    team = await auth.create_team(admin, "Research", max_budget_usd="100")
    unknown = await auth.create_team(admin, "New", max_budget_usd="100")
    await auth.seed_spend("team", team["id"], "total", "40")
    await background.refresh_team_budgets(auth.runtime)

    # Redis lost the counter, and telemetry (down here) cannot rebuild it yet.
    await auth.redis.delete(spend_key("team", team["id"], "total", utc(auth.clock())))
    await background.refresh_team_budgets(auth.runtime)

    assert await _gauge(auth) == {(team["id"], "Research"): 0.4}
    assert (unknown["id"], "New") not in await _gauge(auth)
