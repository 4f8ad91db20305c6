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
- `budget:standing:key:<key id>`: what inference estimated the key's last budgeted call
  would cost (nano-dollars), for STANDING_TTL_SECONDS: what the gateway holds for the
  key's next call, in the script that checks the key (GATEWAY_HOLD_LUA), so that such a
  call needs no round trip of inference's own to be admitted (`GatewayHold`).
- `budget:alerts`: list of the announcements (JSON `{"scope", "id", "threshold",
  "spend_usd", "budget_usd", "period", "at"}`), newest at the head, which auth turns into
  audit events; at most MAX_ALERTS are kept.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from redis.asyncio import Redis

from common.policy import Period, ScopeKind, period_end, period_key, period_start

NANO_PER_USD = 10**9
TOKEN_WINDOW_SECONDS = 60
ALERT_THRESHOLDS = (50, 80, 100)
ALERTS = "budget:alerts"
MAX_ALERTS = 10_000
# How long a key's standing estimate lasts after its last budgeted call.
STANDING_TTL_SECONDS = 3600
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


def standing_key(key_id: str) -> str:
    return f"budget:standing:key:{key_id}"


def period_key_at(period: Period, ts: float) -> str:
    """period_key of a unix time."""
    if period == "total":
        return "total"
    return _period_keys(int(ts // 86_400))[("day", "week", "month").index(period)]


def spend_ttl_at(period: Period, ts: float) -> int:
    """spend_ttl of a unix time, 0 for for ever."""
    end = _period_end(period, int(ts // 86_400))
    if end is None:
        return 0
    return max(1, math.ceil(end + _AFTER_PERIOD.total_seconds() - ts))


@functools.lru_cache(maxsize=16)
def _period_end(period: Period, day_number: int) -> float | None:
    end = period_end(period, utc(day_number * 86_400.0))
    return None if end is None else end.timestamp()


def spend_ttl(period: Period, now: datetime) -> int | None:
    """Seconds a spend counter of the period holding `now` is kept; None: for ever."""
    end = period_end(period, now)
    if end is None:
        return None
    return max(1, math.ceil((end + _AFTER_PERIOD - now).total_seconds()))


# ---------------------------------------------------------------- admission, in Lua
#
# budget_admit(scopes, now, weight, member, amount, lapses_at, ttl): one call's admission
# over its governed scopes, in order, each a table {held, held_sum, spend, tokens_prev,
# tokens_cur (key names), budget (nano-dollars, or '' for none), tpm (limit, or '')}.
# Holds past their lapse are dropped first. A scope refuses when its spend + holds are at or
# over its budget ({'budget', i, spent, held}) or its sliding token count (the previous
# window weighted by `weight`) is at or over its limit ({'tokens', i, previous, current});
# {'unknown', i...} names the budgeted scopes whose spend counter does not exist (to be
# seeded from telemetry). Otherwise `amount` is held under `member` (`<call id>:<amount>`)
# until `lapses_at` in every budgeted scope: {'admitted', (i, previous, current) of each
# scope with a token limit...}. budget_release(scopes, member) gives a hold back (a no-op
# for one already given back or settled).
ADMIT_LUA = """
local function budget_admit(scopes, now, weight, member, amount, lapses_at, ttl)
  local missing, windows = {}, {}
  for i, s in ipairs(scopes) do
    if s.budget ~= '' then
      local lapsed = redis.call('ZRANGEBYSCORE', s.held, '-inf', '(' .. now, 'LIMIT', 0, 100)
      for _, m in ipairs(lapsed) do
        redis.call('ZREM', s.held, m)
        redis.call('DECRBY', s.held_sum, string.sub(m, string.find(m, ':', 1, true) + 1))
      end
      local spent = redis.call('GET', s.spend)
      if spent then
        local held = redis.call('GET', s.held_sum) or '0'
        if tonumber(spent) + math.max(0, tonumber(held)) >= tonumber(s.budget) then
          return {'budget', i, spent, held}
        end
      else
        missing[#missing + 1] = i
      end
    end
    if s.tpm ~= '' then
      local previous = redis.call('GET', s.tokens_prev) or '0'
      local current = redis.call('GET', s.tokens_cur) or '0'
      if tonumber(previous) * weight + tonumber(current) >= tonumber(s.tpm) then
        return {'tokens', i, previous, current}
      end
      windows[#windows + 1] = i
      windows[#windows + 1] = previous
      windows[#windows + 1] = current
    end
  end
  if #missing > 0 then
    table.insert(missing, 1, 'unknown')
    return missing
  end
  for _, s in ipairs(scopes) do
    if s.budget ~= '' then
      redis.call('ZADD', s.held, lapses_at, member)
      redis.call('INCRBY', s.held_sum, amount)
      for _, key in ipairs({s.held, s.held_sum}) do
        if redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
      end
    end
  end
  table.insert(windows, 1, 'admitted')
  return windows
end

local function budget_release(scopes, member)
  for _, s in ipairs(scopes) do
    if s.budget ~= '' and redis.call('ZREM', s.held, member) == 1 then
      redis.call('DECRBY', s.held_sum, string.sub(member, string.find(member, ':', 1, true) + 1))
    end
  end
end
"""

# gateway_hold(record, spec, window, weight): for a model call with an API key whose
# record (auth's cached key, decoded) has policies with a budget or a token limit, the
# admission of budget_admit, holding the key's standing estimate (none: nothing is done).
# `spec` is GatewayHold.spec's: `<call id>|<now>|<lapses at>|<ttl>|<day>|<week>|<month>`
# (the period keys of now); `window` the token window's number, `weight` the previous
# one's. Answers '' when nothing was held (no policy to apply, no estimate yet, or a
# refusal: inference then admits the call itself and says why), else
# `<amount>|<budgeted scopes, comma-separated>|<i,previous,current;...>`. The scopes, their
# order and their key names are governed_scopes' in inference and the functions above.
GATEWAY_HOLD_LUA = (
    ADMIT_LUA
    + """
local function budget_nano(text)
  local whole, fraction = string.match(text, '^(%d+)%.?(%d*)$')
  if not whole then return nil end
  return tonumber(whole) * 1000000000 + tonumber(string.sub(fraction .. '000000000', 1, 9))
end

local function gateway_hold(record, spec, window, weight)
  local policies = record['policies']
  if type(policies) ~= 'table' then return '' end
  local call_id, now, lapses_at, ttl, day, week, month = string.match(
    spec, '^([^|]+)|([^|]+)|([^|]+)|([^|]+)|([^|]+)|([^|]+)|([^|]+)$')
  if not call_id then return '' end
  local periods = {day = day, week = week, month = month, total = 'total'}
  local ids = {key = record['key_id'], user = record['user_id'], team = record['team_id']}
  local scopes, budgeted = {}, {}
  for _, name in ipairs({'key', 'user', 'team'}) do
    local p = policies[name]
    if type(p) == 'table' then
      local budget, tpm = '', ''
      if type(p['max_budget_usd']) == 'string' then
        budget = budget_nano(p['max_budget_usd'])
        if not budget then return '' end
      end
      if type(p['tpm_limit']) == 'number' then tpm = p['tpm_limit'] end
      if budget ~= '' or tpm ~= '' then
        local id = ids[name]
        if type(id) ~= 'string' then return '' end
        local period = periods[p['budget_period'] or 'total']
        if not period then return '' end
        local base = name .. ':' .. id
        scopes[#scopes + 1] = {
          held = 'budget:held:' .. base, held_sum = 'budget:held-sum:' .. base,
          spend = 'budget:spend:' .. base .. ':' .. period,
          tokens_prev = 'budget:tokens:' .. base .. ':' .. (window - 1),
          tokens_cur = 'budget:tokens:' .. base .. ':' .. window,
          budget = budget, tpm = tpm}
        if budget ~= '' then budgeted[#budgeted + 1] = name end
      end
    end
  end
  if #scopes == 0 then return '' end
  local amount = '0'
  if #budgeted > 0 then
    amount = redis.call('GET', 'budget:standing:key:' .. ids['key'])
    if not amount then return '' end
  end
  local verdict = budget_admit(scopes, now, weight, call_id .. ':' .. amount, amount,
                               lapses_at, tonumber(ttl))
  if verdict[1] ~= 'admitted' then return '' end
  local windows = {}
  for i = 2, #verdict, 3 do
    windows[#windows + 1] = verdict[i] .. ',' .. verdict[i + 1] .. ',' .. verdict[i + 2]
  end
  return amount .. '|' .. table.concat(budgeted, ',') .. '|' .. table.concat(windows, ';')
end
"""
)


@dataclass(frozen=True, slots=True)
class GatewayHold:
    """What the gateway held for a model call of an API key (GATEWAY_HOLD_LUA), signed into
    the call's identity (common.identity.Identity.hold) for inference to settle: the call
    id, the amount held (nano-dollars) in each of the budgeted `scopes`, when (`at`, unix
    seconds; the call's spend goes to that moment's periods), until when (`until`), and
    the token windows seen, (scope index, previous, current) per scope with a token limit.
    Inference takes it over when it covers its own estimate, and otherwise replaces it."""

    id: str
    amount: int
    at: float
    until: float
    scopes: tuple[ScopeKind, ...]
    windows: tuple[tuple[int, int, int], ...]

    @property
    def member(self) -> str:
        return f"{self.id}:{self.amount}"

    @staticmethod
    def spec(call_id: str, now: float, lapses_at: float) -> str:
        """The script's `spec` for a call at `now`."""
        day, week, month = _period_keys(int(now // 86_400))
        ttl = math.ceil(lapses_at - now) + 60
        return f"{call_id}|{now!r}|{lapses_at!r}|{ttl}|{day}|{week}|{month}"

    @classmethod
    def from_reply(cls, reply: str, call_id: str, now: float, lapses_at: float) -> GatewayHold:
        amount, scopes, windows = reply.split("|")
        return cls(
            id=call_id, amount=int(amount), at=now, until=lapses_at,
            scopes=tuple(scopes.split(",")) if scopes else (),  # type: ignore[arg-type]
            windows=tuple(
                (int(i), int(p), int(c))
                for i, p, c in (w.split(",") for w in windows.split(";") if w)
            ),
        )  # fmt: skip

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "amount": self.amount, "at": self.at, "until": self.until,
            "scopes": list(self.scopes), "windows": [list(w) for w in self.windows],
        }  # fmt: skip

    @classmethod
    def from_wire(cls, data: Any) -> GatewayHold:
        """ValueError when malformed."""
        try:
            scopes = tuple(data["scopes"])
            windows = tuple((int(i), int(p), int(c)) for i, p, c in data["windows"])
            hold = cls(str(data["id"]), data["amount"], float(data["at"]),
                       float(data["until"]), scopes, windows)  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed hold: {exc}") from None
        if (
            not isinstance(hold.amount, int) or isinstance(hold.amount, bool) or hold.amount < 0
            or not set(scopes) <= {"key", "user", "team"} or not hold.id
        ):  # fmt: skip
            raise ValueError("malformed hold")
        return hold


@functools.lru_cache(maxsize=4)
def _period_keys(day_number: int) -> tuple[str, str, str]:
    """The day, week and month period keys of a UTC day (unix time // 86400)."""
    moment = utc(day_number * 86_400.0)
    return period_key("day", moment), period_key("week", moment), period_key("month", moment)


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
