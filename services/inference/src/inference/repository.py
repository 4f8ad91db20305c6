"""Every query of the inference service: its tables (schema inference) and its Redis keys.

Redis keys, each with a TTL:
- `inference:circuit:<provider/model>|<credential id or ->`: a hash (state, failures,
  opened_at) per circuit, and `...:probe` while one replica probes a half-open circuit;
- `inference:streams:<user id>`: a sorted set of the user's open stream leases, scored by
  when each lapses;
- the telemetry stream (`common.llm_events.STREAM`), to which call events are appended.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence

from redis.asyncio import Redis
from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from common.llm_events import STREAM, LlmCallEvent
from inference.models import ModelAlias, ProviderCredential

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


async def get_alias(db: AsyncSession, *, alias: str) -> ModelAlias | None:
    return await db.get(ModelAlias, alias)


async def list_aliases(db: AsyncSession) -> Sequence[ModelAlias]:
    return (await db.execute(select(ModelAlias).order_by(col(ModelAlias.alias)))).scalars().all()


async def save_alias(db: AsyncSession, *, alias: ModelAlias) -> ModelAlias:
    """Create, or replace the targets of, an alias (one statement: safe under concurrency)."""
    statement = pg_insert(ModelAlias).values(
        alias=alias.alias, targets=alias.targets, created_by=alias.created_by
    )
    statement = statement.on_conflict_do_update(
        index_elements=[col(ModelAlias.alias)],
        set_={"targets": statement.excluded.targets, "created_by": statement.excluded.created_by},
    )
    await db.execute(statement)
    saved = await db.get(ModelAlias, alias.alias, populate_existing=True)
    assert saved is not None
    return saved


async def delete_alias(db: AsyncSession, *, alias: str) -> bool:
    result = await db.execute(delete(ModelAlias).where(col(ModelAlias.alias) == alias))
    return bool(result.rowcount)  # type: ignore[attr-defined]


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


# ---------------------------------------------------------------- call events (Redis)


async def append_call_events(redis: Redis, events: Sequence[LlmCallEvent]) -> None:
    """Append to the telemetry stream in one round trip (a pipeline, no transaction)."""
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(STREAM, event.to_fields())  # type: ignore[arg-type]
        await pipe.execute()
