"""The live state of budgets in reads: spend_usd, budget_remaining_usd, budget_resets_at.

The spend comes from the counters inference keeps in Redis (common.budgets, the contract:
seeded here as its settlement leaves them); a counter that is missing is asked of
telemetry, which is down in these tests (AUTH_TELEMETRY_URL refuses connections): the
read still answers, without the spend. Telemetry's answer itself is covered by the
platform's cross-service tests."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .conftest import AuthClient


def _wednesday_evening() -> datetime:
    """23:50 UTC on a Wednesday a week or two ahead: the app's clock only ever moves
    forward (the login throttle counts in it)."""
    day = datetime.fromtimestamp(time.time(), UTC).date() + timedelta(days=7)
    day += timedelta(days=(2 - day.weekday()) % 7)
    return datetime(day.year, day.month, day.day, 23, 50, tzinfo=UTC)


WEDNESDAY_EVENING = _wednesday_evening()


def _iso(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


THURSDAY = _iso(WEDNESDAY_EVENING.date() + timedelta(days=1))
FRIDAY = _iso(WEDNESDAY_EVENING.date() + timedelta(days=2))
MONDAY = _iso(WEDNESDAY_EVENING.date() + timedelta(days=5))
_MONTH = WEDNESDAY_EVENING.date().replace(day=28) + timedelta(days=4)
FIRST_OF_NEXT_MONTH = _iso(_MONTH.replace(day=1))


def _live(body: dict[str, Any]) -> tuple[Any, Any, Any]:
    return body["spend_usd"], body["budget_remaining_usd"], body["budget_resets_at"]


async def test_a_keys_spend_is_shown_with_what_remains_and_when_it_resets(
    auth: AuthClient,
) -> None:
    auth.set_time(WEDNESDAY_EVENING)
    alice = await auth.signup()
    daily = await auth.create_key(alice, max_budget_usd="10", budget_period="day")
    weekly = await auth.create_key(alice, max_budget_usd="10", budget_period="week")
    monthly = await auth.create_key(alice, max_budget_usd="2.5", budget_period="month")
    total = await auth.create_key(alice, max_budget_usd="1")
    unbudgeted = await auth.create_key(alice, rpm_limit=5)
    await auth.seed_spend("key", daily["id"], "day", "3.25")
    await auth.seed_spend("key", weekly["id"], "week", "0.000123")
    await auth.seed_spend("key", monthly["id"], "month", "4")  # over: calls in flight
    await auth.seed_spend("key", total["id"], "total", "0")

    listed = {k["id"]: k for k in (await auth.as_user(alice, "GET", "/auth/api-keys")).json()}

    assert _live(listed[daily["id"]]) == ("3.25", "6.75", THURSDAY)
    assert _live(listed[weekly["id"]]) == ("0.000123", "9.999877", MONDAY)
    assert _live(listed[monthly["id"]]) == ("4.00", "0.00", FIRST_OF_NEXT_MONTH)
    assert _live(listed[total["id"]]) == ("0.00", "1.00", None)
    assert _live(listed[unbudgeted["id"]]) == (None, None, None)


async def test_a_day_budget_starts_again_at_utc_midnight(auth: AuthClient) -> None:
    auth.set_time(WEDNESDAY_EVENING)
    alice = await auth.signup()
    key = await auth.create_key(alice, max_budget_usd="10", budget_period="day")
    await auth.seed_spend("key", key["id"], "day", "9.5")
    before = (await auth.as_user(alice, "GET", "/auth/api-keys")).json()[0]

    auth.clock.advance(20 * 60)  # 00:10 on Thursday
    await auth.seed_spend("key", key["id"], "day", "0.5")  # Thursday's first call
    after = (await auth.as_user(alice, "GET", "/auth/api-keys")).json()[0]

    assert _live(before) == ("9.50", "0.50", THURSDAY)
    assert _live(after) == ("0.50", "9.50", FRIDAY)


async def test_a_teams_spend_is_shown_to_its_members(auth: AuthClient) -> None:
    auth.set_time(WEDNESDAY_EVENING)
    admin = await auth.signup(roles=["admin"])
    alice = await auth.signup()
    team = await auth.create_team(admin, "Research", max_budget_usd="100", budget_period="month")
    await auth.set_member(admin, team["id"], alice)
    await auth.seed_spend("team", team["id"], "month", "12.5")

    shown = await auth.as_user(alice, "GET", f"/auth/teams/{team['id']}")

    assert shown.status_code == 200
    assert _live(shown.json()) == ("12.50", "87.50", FIRST_OF_NEXT_MONTH)


async def test_a_users_spend_is_shown_to_admins_and_to_the_user(
    auth: AuthClient,
) -> None:
    auth.set_time(WEDNESDAY_EVENING)
    admin = await auth.signup(roles=["admin"])
    alice = await auth.signup()
    await auth.as_user(
        admin, "PATCH", f"/auth/users/{alice.user_id}",
        json={"max_budget_usd": "20", "budget_period": "week"},
    )  # fmt: skip
    await auth.seed_spend("user", alice.user_id, "week", "5")

    by_admin = await auth.as_user(admin, "GET", f"/auth/users/{alice.user_id}")
    me = await auth.as_user(alice, "GET", "/auth/me")

    expected = ("5.00", "15.00", MONDAY)
    assert _live(by_admin.json()) == _live(me.json()) == expected
    assert me.json()["max_budget_usd"] == "20.00"


async def test_without_a_counter_and_telemetry_down_the_read_answers_without_the_spend(
    auth: AuthClient,
) -> None:
    auth.set_time(WEDNESDAY_EVENING)
    admin = await auth.signup(roles=["admin"])
    alice = await auth.signup()
    team = await auth.create_team(admin, "Research", max_budget_usd="100", budget_period="day")
    await auth.set_member(admin, team["id"], alice)
    key = await auth.create_key(alice, max_budget_usd="10", budget_period="day")
    seeded = await auth.create_key(alice, max_budget_usd="10")
    await auth.seed_spend("key", seeded["id"], "total", "1")

    keys = await auth.as_user(alice, "GET", "/auth/api-keys")
    shown_team = await auth.as_user(alice, "GET", f"/auth/teams/{team['id']}")

    assert keys.status_code == shown_team.status_code == 200
    listed = {k["id"]: k for k in keys.json()}
    assert _live(listed[key["id"]]) == (None, None, THURSDAY)
    assert _live(listed[seeded["id"]]) == ("1.00", "9.00", None)
    assert _live(shown_team.json()) == (None, None, THURSDAY)
