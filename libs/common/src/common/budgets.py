"""Spend and token counters of governed scopes (common.policy), in Redis: the contract
between inference, which reserves and settles every governed call, auth, which shows the
live state and clears counters when a policy changes, and telemetry, whose recorded cost
is the truth the counters are rebuilt from.

Keys (`<scope>` is key, user or team; `<id>` its UUID; `<period>` common.policy.period_key):

- `budget:spend:<scope>:<id>:<period>`: the USD spent in the period, in nano-dollars (an
  integer: 10**-9 USD is the precision of every recorded cost). It exists only once seeded
  from telemetry (`read_spend`): settlement adds to a counter that exists and never
  creates one, so a counter lost with Redis, or one of a budget set mid-period, is rebuilt
  from what telemetry recorded. It expires a day after its period ends (never for total).
- `budget:held:<scope>:<id>`: sorted set of the calls in flight, member
  `<call id>:<nano-dollars reserved>`, score the unix time the reservation lapses (a call
  whose replica died gives its hold back then); `budget:held-sum:<scope>:<id>` their sum.
- `budget:tokens:<scope>:<id>:<window>`: prompt + completion tokens settled in one
  TOKEN_WINDOW_SECONDS window (`<window>` = unix time // TOKEN_WINDOW_SECONDS); the TPM
  limit weighs the previous window by how much of it still overlaps the last minute.
- `budget:alerted:<scope>:<id>:<period>`: the highest threshold of ALERT_THRESHOLDS already
  announced in the period.
- `budget:alerts`: list of the announcements (JSON `{"scope", "id", "threshold",
  "spend_usd", "budget_usd", "period", "at"}`), newest at the head, which auth turns into
  audit events; at most MAX_ALERTS are kept.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
from redis.asyncio import Redis

from common.policy import Period, ScopeKind, period_end, period_key, period_start

NANO_PER_USD = 10**9
TOKEN_WINDOW_SECONDS = 60
ALERT_THRESHOLDS = (50, 80, 100)
ALERTS = "budget:alerts"
MAX_ALERTS = 10_000
# A spend counter outlives its period by this much (late settlements still land in it).
_AFTER_PERIOD = timedelta(days=1)


def to_nano(amount: Decimal) -> int:
    """USD -> nano-dollars, rounded up (a budget check never rounds in the caller's favour)."""
    return math.ceil(amount * NANO_PER_USD)


def from_nano(value: int) -> Decimal:
    return (Decimal(value) / NANO_PER_USD).quantize(Decimal("0.000000001"))


def spend_key(scope: ScopeKind, scope_id: str, period: Period, now: datetime) -> str:
    return f"budget:spend:{scope}:{scope_id}:{period_key(period, now)}"


def held_key(scope: ScopeKind, scope_id: str) -> str:
    return f"budget:held:{scope}:{scope_id}"


def held_sum_key(scope: ScopeKind, scope_id: str) -> str:
    return f"budget:held-sum:{scope}:{scope_id}"


def tokens_key(scope: ScopeKind, scope_id: str, window: int) -> str:
    return f"budget:tokens:{scope}:{scope_id}:{window}"


def alerted_key(scope: ScopeKind, scope_id: str, period: Period, now: datetime) -> str:
    return f"budget:alerted:{scope}:{scope_id}:{period_key(period, now)}"


def spend_ttl(period: Period, now: datetime) -> int | None:
    """Seconds a spend counter of the period holding `now` is kept; None: for ever."""
    end = period_end(period, now)
    if end is None:
        return None
    return max(1, math.ceil((end + _AFTER_PERIOD - now).total_seconds()))


@dataclass(frozen=True, slots=True)
class SpendQuery:
    """What telemetry is asked: the cost recorded for a scope since a time (None: ever)."""

    scope: ScopeKind
    scope_id: str
    since: datetime | None


# Telemetry's answer to a batch of queries, in order (common.budgets.TelemetrySpend).
SpendSource = Callable[[Sequence[SpendQuery]], Awaitable[list[Decimal]]]

# Seed a counter unless it exists: returns what it holds afterwards. KEYS[1] the counter;
# ARGV[1] the value, ARGV[2] the TTL in seconds (0: none).
_SEED = """
local ttl = tonumber(ARGV[2])
local done
if ttl > 0 then
  done = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ttl)
else
  done = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
if done then return ARGV[1] end
return redis.call('GET', KEYS[1])
"""


@dataclass(frozen=True, slots=True)
class Scope:
    """One governed scope and its budget period."""

    scope: ScopeKind
    scope_id: str
    period: Period


class SpendCounters:
    """Reads (and seeds, from telemetry) the spend counters."""

    def __init__(self, redis: Redis, source: SpendSource) -> None:
        self._redis = redis
        self._seed = redis.register_script(_SEED)
        self._source = source

    async def spent(self, scopes: Sequence[Scope], now: datetime) -> list[Decimal]:
        """What each scope has spent in its current period: its counter, or, where there is
        none, what telemetry recorded (then stored as the counter, unless another replica
        stored one first: that one wins). Raises what the source raises when telemetry
        cannot be asked."""
        if not scopes:
            return []
        keys = [spend_key(s.scope, s.scope_id, s.period, now) for s in scopes]
        found = await self._redis.mget(keys)
        missing = [i for i, value in enumerate(found) if value is None]
        values: list[int | None] = [None if v is None else int(v) for v in found]
        if missing:
            queries = [
                SpendQuery(scopes[i].scope, scopes[i].scope_id, period_start(scopes[i].period, now))
                for i in missing
            ]
            recorded = await self._source(queries)
            for i, amount in zip(missing, recorded, strict=True):
                ttl = spend_ttl(scopes[i].period, now) or 0
                values[i] = int(await self._seed(keys=[keys[i]], args=[to_nano(amount), ttl]))
        return [from_nano(v or 0) for v in values]

    async def forget(self, scope: ScopeKind, scope_id: str, now: datetime) -> None:
        """Drop the scope's counters of every period kind holding `now` (and what was
        announced): after a policy change they are rebuilt from telemetry."""
        periods: tuple[Period, ...] = ("day", "week", "month", "total")
        keys = [spend_key(scope, scope_id, p, now) for p in periods]
        keys += [alerted_key(scope, scope_id, p, now) for p in periods]
        await self._redis.delete(*keys)


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class SpendUnavailable(Exception):
    """Telemetry could not say what a scope has spent."""


class TelemetrySpend:
    """The SpendSource of a service: telemetry's `POST /internal/spend`, signed as the
    service (a common.http.peer_client for `telemetry`). Body `{"queries": [{"scope",
    "id", "since"}]}` (`since` ISO 8601 or null, at most 100 queries), answer
    `{"spend_usd": ["12.5", ...]}` in the same order."""

    def __init__(self, client: httpx.AsyncClient, *, timeout: float = 5.0) -> None:
        self._client = client
        self._timeout = timeout

    async def __call__(self, queries: Sequence[SpendQuery]) -> list[Decimal]:
        body = {
            "queries": [
                {
                    "scope": q.scope,
                    "id": q.scope_id,
                    "since": q.since.isoformat() if q.since else None,
                }
                for q in queries
            ]
        }
        try:
            response = await self._client.post("/internal/spend", json=body, timeout=self._timeout)
            response.raise_for_status()
            amounts = [Decimal(str(a)) for a in response.json()["spend_usd"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError, ArithmeticError) as exc:
            raise SpendUnavailable(f"telemetry did not say ({type(exc).__name__})") from None
        if len(amounts) != len(queries):
            raise SpendUnavailable("telemetry answered another number of amounts")
        return amounts
