"""Every query of the inference service: its tables (schema inference) and its Redis keys.

Redis keys, each with a TTL:
- `inference:circuit:<provider/model>|<credential id or ->`: a hash (state, failures,
  opened_at) per circuit, and `...:probe` while one replica probes a half-open circuit;
- `inference:latency:<provider/model>|<credential id or ->`: a hash (ewma: the decayed
  average latency in seconds, at: the clock time of its last sample) per target of the
  `least-latency` aliases (inference.routing), living INFERENCE_LATENCY_TTL_SECONDS after
  its last sample;
- `inference:streams:<user id>`: a sorted set of the user's open stream leases, scored by
  when each lapses;
- the telemetry stream (`common.llm_events.STREAM`), to which call events are appended;
- the budget counters of governed scopes (common.budgets: spend, holds, tokens, alerts),
  which the admission and settle scripts below keep, and `inference:settled:<call id>`,
  set for SETTLED_SECONDS once a call is settled, so that a batch sent again after a lost
  reply settles nothing twice.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError
from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from common.budgets import (
    ADMIT_LUA,
    ALERTS,
    MAX_ALERTS,
    STANDING_TTL_SECONDS,
    TOKEN_WINDOW_SECONDS,
    held_key,
    held_sum_key,
    period_key_at,
    spend_key,
    spend_ttl_at,
    tokens_key,
    utc,
)
from common.llm_events import STREAM, LlmCallEvent
from common.policy import Period, ScopeKind
from common.redis import as_text
from inference.models import ModelAlias, ModelPrice, PriceChange, ProviderCredential

log = structlog.get_logger(__name__)

# ---------------------------------------------------------------- tables


async def add_credential(db: AsyncSession, *, credential: ProviderCredential) -> ProviderCredential:
    """In a savepoint: a name already taken raises IntegrityError and leaves the request's
    transaction usable."""
    async with db.begin_nested():
        db.add(credential)
        await db.flush()
        await db.refresh(credential)
    return credential


async def get_credential(
    db: AsyncSession, *, credential_id: uuid.UUID
) -> ProviderCredential | None:
    return await db.get(ProviderCredential, credential_id)


async def visible_credentials(
    db: AsyncSession, *, owner_id: uuid.UUID | None
) -> Sequence[ProviderCredential]:
    """The caller's own credentials and the shared ones."""
    query = (
        select(ProviderCredential)
        .where(or_(col(ProviderCredential.owner_id) == owner_id, col(ProviderCredential.shared)))
        .order_by(col(ProviderCredential.created_at))
    )
    return (await db.execute(query)).scalars().all()


async def credential_for(
    db: AsyncSession, *, owner_id: uuid.UUID | None, provider: str
) -> ProviderCredential | None:
    """The caller's own credential for a provider, else a shared one (oldest first)."""
    query = (
        select(ProviderCredential)
        .where(
            col(ProviderCredential.provider) == provider,
            or_(col(ProviderCredential.owner_id) == owner_id, col(ProviderCredential.shared)),
        )
        .order_by(col(ProviderCredential.shared), col(ProviderCredential.created_at))
        .limit(1)
    )
    return (await db.execute(query)).scalar_one_or_none()


async def delete_credential(db: AsyncSession, *, credential_id: uuid.UUID) -> None:
    await db.execute(delete(ProviderCredential).where(col(ProviderCredential.id) == credential_id))


async def all_credentials(db: AsyncSession) -> Sequence[ProviderCredential]:
    return (await db.execute(select(ProviderCredential))).scalars().all()


async def replace_ciphertext(
    db: AsyncSession, *, credential_id: uuid.UUID, ciphertext: bytes, key_id: str, expected: bytes
) -> bool:
    """Compare-and-set, so a concurrent change is never overwritten by a rotation."""
    result = await db.execute(
        update(ProviderCredential)
        .where(
            col(ProviderCredential.id) == credential_id,
            col(ProviderCredential.key_ciphertext) == expected,
        )
        .values(key_ciphertext=ciphertext, key_id=key_id)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _owned_by(owner_id: uuid.UUID | None) -> Any:
    """The alias rows of one owner (None: the shared ones)."""
    column = col(ModelAlias.owner_id)
    return column.is_(None) if owner_id is None else column == owner_id


async def get_alias(
    db: AsyncSession, *, alias: str, owner_id: uuid.UUID | None
) -> ModelAlias | None:
    """The alias `alias` as `owner_id` sees it: their own, else the shared one."""
    query = (
        select(ModelAlias)
        .where(
            col(ModelAlias.alias) == alias,
            or_(col(ModelAlias.owner_id).is_(None), col(ModelAlias.owner_id) == owner_id),
        )
        .order_by(col(ModelAlias.owner_id).is_(None))  # their own first
        .limit(1)
    )
    return (await db.execute(query)).scalar_one_or_none()


async def list_aliases(db: AsyncSession, *, owner_id: uuid.UUID | None) -> Sequence[ModelAlias]:
    """The shared aliases and `owner_id`'s own, by name (their own first on a tie)."""
    query = (
        select(ModelAlias)
        .where(or_(col(ModelAlias.owner_id).is_(None), col(ModelAlias.owner_id) == owner_id))
        .order_by(col(ModelAlias.alias), col(ModelAlias.owner_id).is_(None))
    )
    return (await db.execute(query)).scalars().all()


async def count_own_aliases(db: AsyncSession, *, owner_id: uuid.UUID, other_than: str) -> int:
    """How many aliases `owner_id` has besides `other_than`, counted one saver at a time
    (a lock per owner, held until the commit)."""
    await db.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"inference.model_alias:{owner_id}"},
    )
    query = select(func.count()).where(
        col(ModelAlias.owner_id) == owner_id, col(ModelAlias.alias) != other_than
    )
    return int((await db.execute(query)).scalar_one())


async def save_alias(db: AsyncSession, *, alias: ModelAlias) -> ModelAlias:
    """Create, or replace the targets and strategy of, an alias of its owner (or a shared
    one): one statement, safe under concurrency."""
    statement = pg_insert(ModelAlias).values(
        alias=alias.alias, owner_id=alias.owner_id, strategy=alias.strategy,
        targets=alias.targets, cache=alias.cache, created_by=alias.created_by,
    )  # fmt: skip
    shared = alias.owner_id is None
    upsert = statement.on_conflict_do_update(
        index_elements=[col(ModelAlias.alias)] if shared else
        [col(ModelAlias.owner_id), col(ModelAlias.alias)],
        index_where=text("owner_id IS NULL" if shared else "owner_id IS NOT NULL"),
        set_={"targets": statement.excluded.targets, "strategy": statement.excluded.strategy,
              "cache": statement.excluded.cache, "created_by": statement.excluded.created_by},
    ).returning(ModelAlias)  # fmt: skip
    saved: ModelAlias = (
        await db.execute(upsert, execution_options={"populate_existing": True})
    ).scalar_one()
    return saved


async def delete_alias(db: AsyncSession, *, alias: str, owner_id: uuid.UUID | None) -> bool:
    """Delete `owner_id`'s alias `alias` (None: the shared one)."""
    result = await db.execute(
        delete(ModelAlias).where(col(ModelAlias.alias) == alias, _owned_by(owner_id))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def lock_prices(db: AsyncSession) -> None:
    """One price writer at a time (until the commit): each change's audit row sees the
    price it replaces, and the count of prices is exact. Price changes are rare."""
    await db.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": "inference.model_price"},
    )


async def all_prices(db: AsyncSession) -> Sequence[ModelPrice]:
    return (await db.execute(select(ModelPrice))).scalars().all()


async def get_price(db: AsyncSession, *, model: str) -> ModelPrice | None:
    return await db.get(ModelPrice, model, populate_existing=True)


async def count_prices(db: AsyncSession) -> int:
    return int((await db.execute(select(func.count()).select_from(ModelPrice))).scalar_one())


async def save_price(
    db: AsyncSession, *, model: str, price: dict[str, Any], by: uuid.UUID | None
) -> ModelPrice:
    statement = pg_insert(ModelPrice).values(model=model, price=price, updated_by=by)
    upsert = statement.on_conflict_do_update(
        index_elements=[col(ModelPrice.model)],
        set_={"price": statement.excluded.price, "updated_by": statement.excluded.updated_by,
              "updated_at": func.now()},
    ).returning(ModelPrice)  # fmt: skip
    saved: ModelPrice = (
        await db.execute(upsert, execution_options={"populate_existing": True})
    ).scalar_one()
    return saved


async def delete_price(db: AsyncSession, *, model: str) -> None:
    await db.execute(delete(ModelPrice).where(col(ModelPrice.model) == model))


async def add_price_change(db: AsyncSession, *, change: PriceChange) -> None:
    db.add(change)
    await db.flush()


async def list_price_changes(
    db: AsyncSession, *, model: str | None, before: int | None, limit: int
) -> Sequence[PriceChange]:
    """Newest first; `before`: the id the page starts below (keyset paging)."""
    query = select(PriceChange).order_by(col(PriceChange.id).desc()).limit(limit)
    if model is not None:
        query = query.where(col(PriceChange.model) == model)
    if before is not None:
        query = query.where(col(PriceChange.id) < before)
    return (await db.execute(query)).scalars().all()


# ---------------------------------------------------------------- circuits (Redis)

# What CircuitStates.allow answers.
CIRCUIT_SKIP, CIRCUIT_CLEAN, CIRCUIT_PROBE, CIRCUIT_COUNTING = 0, 1, 2, 3

# KEYS: circuit hash, probe key. ARGV: now, cool-down.
# 1 closed and clean, 3 closed with failures counted, 2 half-open probe, 0 skip.
_CIRCUIT_ALLOW = """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 3 end
  return 1
end
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at'))
if tonumber(ARGV[1]) - opened < tonumber(ARGV[2]) then return 0 end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', math.ceil(tonumber(ARGV[2]))) then return 2 end
return 0
"""
# KEYS: circuit hash, probe key. ARGV: now, threshold, seconds the state lives.
_CIRCUIT_FAIL = """
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if n >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[2])
return n
"""


class CircuitStates:
    """The circuits' state, shared by every replica; one atomic script per step. A circuit
    is named by `failover.Target.circuit_key`. RedisError reaches the caller."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._allow = redis.register_script(_CIRCUIT_ALLOW)
        self._fail = redis.register_script(_CIRCUIT_FAIL)

    @staticmethod
    def _keys(circuit: str) -> list[str]:
        base = f"inference:circuit:{circuit}"
        return [base, base + ":probe"]

    async def allow(self, circuit: str, *, now: float, cooldown: float) -> int:
        """CIRCUIT_CLEAN, CIRCUIT_COUNTING (closed), CIRCUIT_PROBE (this caller probes a
        half-open circuit) or CIRCUIT_SKIP (open)."""
        return int(await self._allow(keys=self._keys(circuit), args=[now, cooldown]))

    async def fail(self, circuit: str, *, now: float, threshold: int, ttl: int) -> None:
        """Count a failure (opening the circuit at `threshold`); the state lives `ttl` s."""
        await self._fail(keys=self._keys(circuit), args=[now, threshold, ttl])

    async def clear(self, circuit: str) -> None:
        await self._redis.delete(*self._keys(circuit))


# ---------------------------------------------------------------- latencies (Redis)

# KEYS: the latency hashes of some targets. ARGV: [1] a new sample's weight in the average
# (the EWMA's alpha), [2] the hashes' TTL, then per key `<at>|<s1>,<s2>,...`: the clock
# time of its last sample and its samples in seconds, oldest first. Answers the key count.
_LATENCY_ADD = """
local alpha, ttl = tonumber(ARGV[1]), ARGV[2]
for i, key in ipairs(KEYS) do
  local at, samples = string.match(ARGV[i + 2], '^([^|]*)|(.*)$')
  local state = redis.call('HMGET', key, 'ewma', 'at')
  local ewma, last = tonumber(state[1]), tonumber(state[2])
  for sample in string.gmatch(samples, '[^,]+') do
    local x = tonumber(sample)
    if ewma == nil then ewma = x else ewma = ewma + alpha * (x - ewma) end
  end
  if last ~= nil and last > tonumber(at) then at = state[2] end
  redis.call('HSET', key, 'ewma', string.format('%.6f', ewma), 'at', at)
  redis.call('EXPIRE', key, ttl)
end
return #KEYS
"""


@dataclass(frozen=True, slots=True)
class Latency:
    """A target's recent latency: the decayed average (seconds) and when (clock time) its
    last sample was taken."""

    seconds: float
    at: float


class Latencies:
    """The latency of each target of the `least-latency` aliases, shared by every replica,
    by circuit (`failover.Target.circuit_key`). RedisError reaches the caller."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._add = redis.register_script(_LATENCY_ADD)

    @staticmethod
    def key(circuit: str) -> str:
        return f"inference:latency:{circuit}"

    async def read(self, circuits: Sequence[str]) -> list[Latency | None]:
        """Each circuit's latency (None: no sample within the TTL), in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for circuit in circuits:
                pipe.hmget(self.key(circuit), "ewma", "at")
            replies = await pipe.execute()
        return [
            None if ewma is None or at is None else Latency(float(ewma), float(at))
            for ewma, at in replies
        ]

    async def add(
        self, samples: Mapping[str, tuple[float, Sequence[float]]], *, alpha: float, ttl: int
    ) -> None:
        """Fold each circuit's (last sample's clock time, samples) into its average, every
        circuit in one script (one round trip)."""
        if not samples:
            return
        await self._add(
            keys=[self.key(circuit) for circuit in samples],
            args=[repr(alpha), ttl, *(
                f"{at!r}|{','.join(f'{s:.6f}' for s in seconds)}"
                for at, seconds in samples.values()
            )],
        )  # fmt: skip


# ---------------------------------------------------------------- stream leases (Redis)

# KEYS: the user's leases. ARGV: lease id, lease life in seconds, cap.
# Returns 1 with the lease taken, 0 when the user already holds `cap` live ones.
_LEASE_TAKE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])))
return 1
"""


class StreamLeases:
    """Each user's open streams, scored by Redis' clock (replicas' clocks need not agree).
    The key expires with its last lease. RedisError reaches the caller."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._take = redis.register_script(_LEASE_TAKE)

    @staticmethod
    def _key(owner: str) -> str:
        return f"inference:streams:{owner}"

    async def take(self, owner: str, lease: str, *, life: float, cap: int) -> bool:
        """Take `lease` for `life` seconds unless `owner` already holds `cap` live ones."""
        return bool(await self._take(keys=[self._key(owner)], args=[lease, math.ceil(life), cap]))

    async def give_back(self, owner: str, lease: str) -> None:
        await self._redis.zrem(self._key(owner), lease)


# ---------------------------------------------------------------- budgets (Redis)


@dataclass(frozen=True, slots=True)
class ScopeLimits:
    """One governed scope of a call, as the budget scripts see it."""

    scope: ScopeKind
    scope_id: str
    period: Period
    budget_nano: int | None  # None: no budget
    budget_usd: str | None  # the same, as the policy says it (for alerts)
    tpm_limit: int | None  # None: no token limit


@dataclass(frozen=True, slots=True)
class Window:
    """The tokens of a scope's previous and current TOKEN_WINDOW_SECONDS windows."""

    index: int  # of the scope, in the call's ScopeLimits
    previous: int
    current: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the admission script answered. `admitted`: holds taken (`windows`: the token
    windows of the scopes with a limit); `budget`: the scope `index` has `spent` + `held`
    at or over its budget; `tokens`: the scope's `windows[0]` is at or over its limit;
    `unknown`: the spend counters of the scopes `missing` do not exist."""

    outcome: Literal["admitted", "budget", "tokens", "unknown"]
    index: int = 0
    spent: int = 0
    held: int = 0
    windows: tuple[Window, ...] = ()
    missing: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a governed call used, settled with its call event: its holds (of `amount`
    each) given back, `cost_nano` added to the spend counters of the period it `started`
    in, `tokens` to the token window of when it `ended` (clock times)."""

    call_id: str
    amount: int
    scopes: tuple[ScopeLimits, ...]
    started: float
    ended: float
    cost_nano: int
    tokens: int
    # The API key whose standing estimate (common.budgets.standing_key) becomes `estimate`:
    # what the gateway holds for its next call. None: neither.
    key_id: str | None = None
    estimate: int | None = None


def hold_member(call_id: str, amount: int) -> str:
    """A hold in `budget:held:*`: `<call id>:<nano-dollars>` (common.budgets)."""
    return f"{call_id}:{amount}"


def token_window(now: float) -> int:
    return int(now // TOKEN_WINDOW_SECONDS)


# A token window's counter is read until the end of the window after it.
TOKENS_TTL_SECONDS = 3 * TOKEN_WINDOW_SECONDS
# How long a settled call is remembered (a batch sent again after a lost reply).
SETTLED_SECONDS = 900

# Per scope, KEYS (5): held, held-sum, spend, tokens of the previous window, of the current
# one. ARGV: [1] now, [2] the weight of the previous window, [3] the hold's member, [4]
# its amount, [5] when it lapses, [6] the TTL of the hold keys, [7] a hold this one
# replaces (given back first; '' for none); per scope (2): the budget (nano-dollars) or
# '', the TPM limit or ''. Answers as common.budgets.ADMIT_LUA's budget_admit.
_ADMIT = (
    ADMIT_LUA
    + """
local scopes = {}
for i = 1, #KEYS / 5 do
  local k = (i - 1) * 5
  scopes[i] = {held = KEYS[k + 1], held_sum = KEYS[k + 2], spend = KEYS[k + 3],
               tokens_prev = KEYS[k + 4], tokens_cur = KEYS[k + 5],
               budget = ARGV[6 + 2 * i], tpm = ARGV[7 + 2 * i]}
end
if ARGV[7] ~= '' then budget_release(scopes, ARGV[7]) end
return budget_admit(scopes, ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5],
                    tonumber(ARGV[6]))
"""
)

# One settlement, in as few arguments as can be (each costs packing time on every governed
# call): KEYS[1] the call's settled mark; ARGV[1] the call,
# `<call id>|<cost, nano-dollars>|<tokens>|<ended, unix seconds>|<token window>|<key id or
# ''>|<the key's standing estimate or ''>`, and one ARGV per scope,
# `<scope>|<id>|<period key>|<budget, nano-dollars, or ''>|<spend counter's TTL, 0:
# none>|<1 when it has a token limit, else 0>|<budget in USD, for alerts>|<amount held, or
# ''>`. The key names are common.budgets' (spend_key, held_key, ...), built here.
# Answers 1 when settled, 0 when it already was.
_SETTLE = f"""
local SETTLED, TOKENS_TTL = {SETTLED_SECONDS}, {TOKENS_TTL_SECONDS}
local ALERTS, MAX_ALERTS, STANDING_TTL = '{ALERTS}', {MAX_ALERTS}, {STANDING_TTL_SECONDS}
"""
_SETTLE += """
local function fields(text)
  local out = {}
  for part in string.gmatch(text .. '|', '([^|]*)|') do out[#out + 1] = part end
  return out
end
local function usd(nano)
  local digits = string.rep('0', 10 - #nano) .. nano
  return string.sub(digits, 1, -10) .. '.' .. string.sub(digits, -9)
end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', SETTLED) then return 0 end
local call = fields(ARGV[1])
local call_id, cost, tokens, ended, window = call[1], call[2], tonumber(call[3]), call[4], call[5]
if call[6] ~= '' and call[7] ~= '' then
  redis.call('SET', 'budget:standing:key:' .. call[6], call[7], 'EX', STANDING_TTL)
end
for i = 2, #ARGV do
  local s = fields(ARGV[i])
  local base = s[1] .. ':' .. s[2]
  local budget, ttl = s[4], tonumber(s[5])
  if s[8] ~= '' then
    local member = call_id .. ':' .. s[8]
    if redis.call('ZREM', 'budget:held:' .. base, member) == 1 then
      redis.call('DECRBY', 'budget:held-sum:' .. base, s[8])
    end
  end
  local spend = 'budget:spend:' .. base .. ':' .. s[3]
  if budget ~= '' and cost ~= '0' and redis.call('EXISTS', spend) == 1 then
    local alerted_key = 'budget:alerted:' .. base .. ':' .. s[3]
    redis.call('INCRBY', spend, cost)
    local spent = redis.call('GET', spend)
    local alerted = tonumber(redis.call('GET', alerted_key) or '0')
    local reached = alerted
    for _, threshold in ipairs({50, 80, 100}) do
      if threshold > alerted and tonumber(budget) > 0
          and tonumber(spent) * 100 >= tonumber(budget) * threshold then
        reached = threshold
        redis.call('LPUSH', ALERTS, cjson.encode({
          scope = s[1], id = s[2], period = s[3], threshold = threshold,
          spend_usd = usd(spent), budget_usd = s[7], at = tonumber(ended)}))
        redis.call('LTRIM', ALERTS, 0, MAX_ALERTS - 1)
      end
    end
    if reached > alerted then
      if ttl > 0 then
        redis.call('SET', alerted_key, reached, 'EX', ttl)
      else
        redis.call('SET', alerted_key, reached)
      end
    end
  end
  if tokens > 0 and s[6] == '1' then
    local counter = 'budget:tokens:' .. base .. ':' .. window
    redis.call('INCRBY', counter, tokens)
    redis.call('EXPIRE', counter, TOKENS_TTL)
  end
end
return 1
"""
_SETTLE_SHA = hashlib.sha1(_SETTLE.encode()).hexdigest()  # noqa: S324 (Redis names scripts so)


class Budgets:
    """The budget counters of governed scopes (common.budgets), shared by every replica:
    admission in one atomic script; settlement rides in the call-event batch
    (`append_call_events`). RedisError reaches the caller."""

    def __init__(self, redis: Redis) -> None:
        self._admit = redis.register_script(_ADMIT)

    async def admit(
        self,
        scopes: Sequence[ScopeLimits],
        *,
        member: str,
        amount: int,
        now: float,
        lapses_at: float,
        replaces: str = "",
    ) -> Verdict:
        """Check every scope and, when all admit the call, hold `amount` in each that has a
        budget (under `member`, until `lapses_at`); the hold `replaces` (a member: the
        gateway's, too small) is given back first, whatever the verdict."""
        moment = utc(now)
        window = token_window(now)
        keys: list[str] = []
        args: list[str | int | float] = [
            repr(now),
            repr(1 - (now % TOKEN_WINDOW_SECONDS) / TOKEN_WINDOW_SECONDS),
            member,
            amount,
            repr(lapses_at),
            math.ceil(lapses_at - now) + 60,
            replaces,
        ]
        for s in scopes:
            keys += [
                held_key(s.scope, s.scope_id),
                held_sum_key(s.scope, s.scope_id),
                spend_key(s.scope, s.scope_id, s.period, moment),
                tokens_key(s.scope, s.scope_id, window - 1),
                tokens_key(s.scope, s.scope_id, window),
            ]
            args += ["" if s.budget_nano is None else s.budget_nano,
                     "" if s.tpm_limit is None else s.tpm_limit]  # fmt: skip
        reply = [as_text(v) if isinstance(v, bytes | str) else v
                 for v in await self._admit(keys=keys, args=args)]  # fmt: skip
        outcome, rest = reply[0], reply[1:]
        if outcome == "budget":
            return Verdict("budget", index=int(rest[0]) - 1, spent=int(rest[1]), held=int(rest[2]))
        if outcome == "tokens":
            window_of = Window(int(rest[0]) - 1, int(rest[1]), int(rest[2]))
            return Verdict("tokens", index=window_of.index, windows=(window_of,))
        if outcome == "unknown":
            return Verdict("unknown", missing=tuple(int(i) - 1 for i in rest))
        windows = tuple(
            Window(int(rest[i]) - 1, int(rest[i + 1]), int(rest[i + 2]))
            for i in range(0, len(rest), 3)
        )
        return Verdict("admitted", windows=windows)


def _settle_command(settlement: Settlement) -> list[str | int]:
    """EVALSHA's arguments for one settlement: the script, its keys and its arguments."""
    started = settlement.started
    standing = settlement.key_id is not None and settlement.estimate is not None
    args = [
        f"{settlement.call_id}|{settlement.cost_nano}|{settlement.tokens}|"
        f"{settlement.ended!r}|{token_window(settlement.ended)}|"
        f"{settlement.key_id if standing else ''}|{settlement.estimate if standing else ''}"
    ]
    for s in settlement.scopes:
        budgeted = s.budget_nano is not None
        args.append(
            f"{s.scope}|{s.scope_id}|{period_key_at(s.period, started)}|"
            f"{s.budget_nano if budgeted else ''}|{spend_ttl_at(s.period, started)}|"
            f"{int(s.tpm_limit is not None)}|{s.budget_usd or ''}|"
            f"{settlement.amount if budgeted else ''}"
        )
    return [_SETTLE_SHA, 1, f"inference:settled:{settlement.call_id}", *args]


# ---------------------------------------------------------------- response cache (Redis)

# One owner scope's exact-cache entries (`inference:cache:{<scope>}:...`, one hash slot):
# `:e:<key>` an answer (expires with its TTL), `:i` a sorted set of keys by expiry, `:s` a
# hash of their sizes, `:t` their total. A write drops what expired and, past the scope's
# byte cap, the entries that expire soonest; all in one script step, off the request path.
_CACHE_PUT = """
local base = KEYS[1]
local idx, sizes, total = base .. ':i', base .. ':s', base .. ':t'
local member, value, ttl, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local cap, keep = tonumber(ARGV[5]), tonumber(ARGV[6])
local function drop(m)
  local size = tonumber(redis.call('HGET', sizes, m) or '0')
  redis.call('DEL', base .. ':e:' .. m)
  redis.call('HDEL', sizes, m)
  redis.call('ZREM', idx, m)
  redis.call('DECRBY', total, size)
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', idx, '-inf', now, 'LIMIT', 0, 64)) do drop(m) end
if redis.call('HEXISTS', sizes, member) == 1 then drop(member) end
local size = string.len(value)
redis.call('SET', base .. ':e:' .. member, value, 'EX', ttl)
redis.call('ZADD', idx, now + ttl, member)
redis.call('HSET', sizes, member, size)
local used = redis.call('INCRBY', total, size)
local evicted = 0
while used > cap and evicted < 64 do
  local two = redis.call('ZRANGE', idx, 0, 1)
  local oldest = two[1]
  if oldest == member then oldest = two[2] end
  if not oldest then break end
  drop(oldest)
  used = tonumber(redis.call('GET', total))
  evicted = evicted + 1
end
redis.call('EXPIRE', idx, keep)
redis.call('EXPIRE', sizes, keep)
redis.call('EXPIRE', total, keep)
return evicted
"""
CACHE_PREFIX = "inference:cache:"


def cache_base(scope: str) -> str:
    return f"{CACHE_PREFIX}{{{scope}}}"


class ResponseCache:
    """The exact cache's Redis side."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._put = redis.register_script(_CACHE_PUT)

    async def get(self, scope: str, key: str) -> bytes | None:
        value = await self._redis.get(f"{cache_base(scope)}:e:{key}")
        return value if isinstance(value, bytes) else None

    async def put(
        self, scope: str, key: str, value: bytes, *, ttl: int, now: float, cap: int
    ) -> int:
        """Store an answer; the number of entries evicted to make room."""
        evicted = await self._put(
            keys=[cache_base(scope)], args=[key, value, ttl, f"{now:.6f}", cap, MAX_CACHE_TTL]
        )
        return int(evicted)

    async def clear(self, scope: str | None) -> int:
        """Forget one scope's entries (through its index, a thousand at a time), or every
        scope's (None: a scan of the cache's keys); how many entries went."""
        if scope is None:
            removed = 0
            batch: list[bytes] = []
            async for name in self._redis.scan_iter(match=f"{CACHE_PREFIX}*", count=1000):
                batch.append(name)
                if len(batch) >= 1000:
                    removed += int(await self._redis.unlink(*batch))
                    batch = []
            if batch:
                removed += int(await self._redis.unlink(*batch))
            return removed
        base = cache_base(scope)
        removed = 0
        while members := await self._redis.zrange(f"{base}:i", 0, 999):
            names = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.unlink(*(f"{base}:e:{m}" for m in names))
                pipe.zrem(f"{base}:i", *members)
                pipe.hdel(f"{base}:s", *members)
                await pipe.execute()
            removed += len(members)
        await self._redis.unlink(f"{base}:i", f"{base}:s", f"{base}:t")
        return removed


MAX_CACHE_TTL = 30 * 86_400


# ---------------------------------------------------------------- call events (Redis)


async def append_call_events(
    redis: Redis, events: Sequence[LlmCallEvent], settlements: Sequence[Settlement] = ()
) -> None:
    """Append to the telemetry stream and settle the governed calls, in one round trip (a
    pipeline, no transaction). A connection error raises (the caller sends the batch again:
    events are idempotent for telemetry, settlements by their settled mark); a Redis that
    lost the settle script (restarted) gets it and those settlements are sent again."""
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(STREAM, event.to_fields())  # type: ignore[arg-type]
        for settlement in settlements:
            pipe.execute_command("EVALSHA", *_settle_command(settlement))
        results = await pipe.execute(raise_on_error=False)
    replies = results[len(events) :]
    for result in results[: len(events)]:
        if isinstance(result, Exception):
            raise result
    unsettled = []
    for settlement, reply in zip(settlements, replies, strict=True):
        if isinstance(reply, NoScriptError):
            unsettled.append(settlement)
        elif isinstance(reply, ResponseError):
            log.error("settlement refused; its holds lapse", call_id=settlement.call_id,
                      error=str(reply)[:200])  # fmt: skip
    if unsettled:
        await redis.script_load(_SETTLE)
        async with redis.pipeline(transaction=False) as pipe:
            for settlement in unsettled:
                pipe.execute_command("EVALSHA", *_settle_command(settlement))
            await pipe.execute()
