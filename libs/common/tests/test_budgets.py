"""common.budgets: the spend counters' units, keys and lifetimes, and seeding them from
what telemetry recorded (real Redis)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from common.budgets import (
    GatewayHold,
    Scope,
    SpendCounters,
    SpendQuery,
    SpendUnavailable,
    TelemetrySpend,
    alerted_key,
    from_nano,
    held_key,
    held_sum_key,
    period_key_at,
    spend_key,
    spend_ttl,
    spend_ttl_at,
    to_nano,
    tokens_key,
    utc,
)
from devkit.testing import LiveServer

ID = "10000000-0000-0000-0000-000000000001"
# Thursday 2026-12-03 12:00 UTC.
NOON = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class Recorded:
    """A SpendSource answering fixed amounts, noting what it was asked."""

    def __init__(self, *amounts: str) -> None:
        self.amounts = [Decimal(a) for a in amounts]
        self.asked: list[list[SpendQuery]] = []

    async def __call__(self, queries: Sequence[SpendQuery]) -> list[Decimal]:
        self.asked.append(list(queries))
        return self.amounts[: len(queries)]


def test_nano_dollars_round_up_and_back() -> None:
    assert to_nano(Decimal("25.00")) == 25_000_000_000
    assert to_nano(Decimal("0.0000000001")) == 1  # never in the caller's favour
    assert to_nano(Decimal("0")) == 0
    assert from_nano(1) == Decimal("0.000000001")
    assert from_nano(to_nano(Decimal("12.345678912"))) == Decimal("12.345678912")


@pytest.mark.parametrize(
    ("period", "name", "ttl_hours"),
    [
        ("day", "day:2026-12-03", 12 + 24),
        ("week", "week:2026-11-30", 3 * 24 + 12 + 24),  # its Monday; ends Monday the 7th
        ("month", "month:2026-12", 28 * 24 + 12 + 24),
        ("total", "total", None),
    ],
)
def test_keys_and_lifetimes_per_period(period: str, name: str, ttl_hours: int | None) -> None:
    assert spend_key("key", ID, period, NOON) == f"budget:spend:key:{ID}:{name}"  # type: ignore[arg-type]
    assert alerted_key("team", ID, period, NOON) == f"budget:alerted:team:{ID}:{name}"  # type: ignore[arg-type]
    ttl = spend_ttl(period, NOON)  # type: ignore[arg-type]
    assert ttl == (None if ttl_hours is None else ttl_hours * 3600)


def test_hold_and_token_keys() -> None:
    assert held_key("user", ID) == f"budget:held:user:{ID}"
    assert held_sum_key("user", ID) == f"budget:held-sum:user:{ID}"
    assert tokens_key("key", ID, 29938320) == f"budget:tokens:key:{ID}:29938320"
    assert utc(NOON.timestamp()) == NOON


async def test_missing_counters_are_seeded_from_the_source_and_kept(redis: Redis) -> None:
    source = Recorded("3.5", "0.25")
    counters = SpendCounters(redis, source)
    scopes = [Scope("key", ID, "month"), Scope("team", ID, "total"), Scope("user", ID, "day")]
    await redis.set(spend_key("team", ID, "total", NOON), to_nano(Decimal("7")))

    first = await counters.spent(scopes, NOON)
    again = await counters.spent(scopes, NOON)

    assert first == again == [Decimal("3.5"), Decimal("7"), Decimal("0.25")]
    (asked,) = source.asked  # the second read found every counter
    assert asked == [
        SpendQuery("key", ID, datetime(2026, 12, 1, tzinfo=UTC)),
        SpendQuery("user", ID, datetime(2026, 12, 3, tzinfo=UTC)),
    ]
    assert await redis.ttl(spend_key("key", ID, "month", NOON)) > 28 * 24 * 3600
    assert await redis.ttl(spend_key("team", ID, "total", NOON)) == -1
    assert await counters.spent([], NOON) == []


async def test_a_counter_another_replica_stored_first_wins(redis: Redis) -> None:
    class Slow(Recorded):
        async def __call__(self, queries: Sequence[SpendQuery]) -> list[Decimal]:
            # Meanwhile another replica seeded it, and a call settled into it.
            await redis.set(spend_key("key", ID, "total", NOON), to_nano(Decimal("1.25")))
            return await super().__call__(queries)

    counters = SpendCounters(redis, Slow("1"))

    assert await counters.spent([Scope("key", ID, "total")], NOON) == [Decimal("1.25")]


async def test_nothing_is_stored_when_the_source_cannot_say(redis: Redis) -> None:
    class Down(Recorded):
        async def __call__(self, queries: Sequence[SpendQuery]) -> list[Decimal]:
            raise SpendUnavailable("telemetry did not say")

    with pytest.raises(SpendUnavailable):
        await SpendCounters(redis, Down()).spent([Scope("key", ID, "day")], NOON)
    assert await redis.keys("budget:*") == []


async def test_forget_drops_every_period_and_what_was_announced(redis: Redis) -> None:
    for period in ("day", "week", "month", "total"):
        await redis.set(spend_key("key", ID, period, NOON), 1)  # type: ignore[arg-type]
        await redis.set(alerted_key("key", ID, period, NOON), 50)  # type: ignore[arg-type]
    await redis.set(spend_key("key", "another", "total", NOON), 1)

    await SpendCounters(redis, Recorded()).forget("key", ID, NOON)

    assert await redis.keys("budget:*") == [spend_key("key", "another", "total", NOON).encode()]


async def test_telemetry_that_does_not_answer_is_spend_unavailable(refused_port: int) -> None:
    query = [SpendQuery("key", ID, None)]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{refused_port}") as client:
        with pytest.raises(SpendUnavailable):
            await TelemetrySpend(client, timeout=1.0)(query)
    # A server that is not telemetry (404 for the route).
    async with (
        LiveServer(Starlette()) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        with pytest.raises(SpendUnavailable):
            await TelemetrySpend(client, timeout=1.0)(query)


@pytest.mark.parametrize(
    "moment",
    [
        NOON,
        datetime(2026, 11, 30, 0, 0, tzinfo=UTC),  # a Monday, the first second
        datetime(2026, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),  # a year's last instant
        datetime(2028, 2, 29, 6, 0, tzinfo=UTC),  # a leap day
    ],
)
@pytest.mark.parametrize("period", ["day", "week", "month", "total"])
def test_the_unix_time_forms_agree_with_the_datetime_ones(period: str, moment: datetime) -> None:
    ts = moment.timestamp()
    assert spend_key("key", ID, period, moment).endswith(":" + period_key_at(period, ts))  # type: ignore[arg-type]
    assert spend_ttl_at(period, ts) == (spend_ttl(period, moment) or 0)  # type: ignore[arg-type]


def test_a_gateway_hold_travels_as_the_script_answers_and_the_identity_carries_it() -> None:
    now = NOON.timestamp()
    spec = GatewayHold.spec("c1", now, now + 660)
    # The period keys the script builds spend keys from (the day's, its week's, its month's).
    assert spec.split("|")[4:] == ["day:2026-12-03", "week:2026-11-30", "month:2026-12"]
    hold = GatewayHold.from_reply("5000|key,team|2,10,20;3,0,7", "c1", now, now + 660)
    assert hold == GatewayHold("c1", 5000, now, now + 660, ("key", "team"),
                               ((2, 10, 20), (3, 0, 7)))  # fmt: skip
    assert hold.member == "c1:5000"
    assert GatewayHold.from_wire(hold.to_wire()) == hold
    assert GatewayHold.from_reply("0||1,0,0", "c2", now, now).scopes == ()


@pytest.mark.parametrize(
    "wire",
    [
        None,
        {},
        {"id": "", "amount": 1, "at": 0, "until": 0, "scopes": [], "windows": []},
        {"id": "c", "amount": -1, "at": 0, "until": 0, "scopes": [], "windows": []},
        {"id": "c", "amount": True, "at": 0, "until": 0, "scopes": [], "windows": []},
        {"id": "c", "amount": 1, "at": "x", "until": 0, "scopes": [], "windows": []},
        {"id": "c", "amount": 1, "at": 0, "until": 0, "scopes": ["org"], "windows": []},
        {"id": "c", "amount": 1, "at": 0, "until": 0, "scopes": [], "windows": [[1, 2]]},
    ],
)
def test_a_malformed_gateway_hold_is_refused(wire: object) -> None:
    with pytest.raises(ValueError, match="malformed hold"):
        GatewayHold.from_wire(wire)
