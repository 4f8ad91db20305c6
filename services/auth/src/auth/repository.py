"""Every query of the auth service: Postgres (its schema), and the Redis keys it owns
beside the ones common.principals.SessionStore shares with the gateway."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

from redis.asyncio import Redis
from sqlalchemy import and_, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from auth.models import ApiKey, AuditEvent, RolePermission, User, UserRole
from auth.settings import AuthSettings
from common.addresses import client_bucket
from common.principals import (
    API_KEY_INVALID,
    API_KEY_LAST_USED,
    API_KEY_PREFIX,
    ApiKeyPrincipal,
    secret_hash,
)
from common.redis import as_text

# Row locks held to the end of the unit of work. A credential check (key resolution,
# login) reads the key and the user under "share" and writes its answer to Redis before it
# commits; a change of access (revoke, disable, role change) updates the row or takes
# "update", then clears Redis. So one waits for the other: a check that read the old state
# wrote its answer before the change could lock the row, and the change's clearing comes
# after; a check that comes later waits for the change to commit and reads the new state.
Lock = Literal["share", "update"]
# FOR SHARE, and FOR NO KEY UPDATE (what an UPDATE of non-key columns takes).
_LOCKS: dict[Lock, dict[str, Any]] = {"share": {"read": True}, "update": {"key_share": True}}


async def get_user(
    db: AsyncSession, *, user_id: uuid.UUID, lock: Lock | None = None
) -> User | None:
    if lock is None:
        return await db.get(User, user_id)
    return await db.get(User, user_id, with_for_update=_LOCKS[lock], populate_existing=True)


async def lock_user(db: AsyncSession, *, user_id: uuid.UUID) -> bool | None:
    """Lock the user's row ("update") without loading it (pending changes to it stay);
    whether the user is disabled, None if there is no such user."""
    query = select(col(User.disabled)).where(col(User.id) == user_id)
    result = await db.execute(query.with_for_update(**_LOCKS["update"]))
    disabled: bool | None = result.scalar_one_or_none()
    return disabled


async def get_user_by_email(db: AsyncSession, *, email: str) -> User | None:
    result = await db.execute(select(User).where(col(User.email) == email))
    return result.scalar_one_or_none()


async def add_user(db: AsyncSession, *, user: User, roles: Iterable[str]) -> User:
    db.add(user)
    await db.flush()
    await set_roles(db, user_id=user.id, roles=roles)
    return user


async def set_roles(db: AsyncSession, *, user_id: uuid.UUID, roles: Iterable[str]) -> None:
    await db.execute(delete(UserRole).where(col(UserRole.user_id) == user_id))
    db.add_all(UserRole(user_id=user_id, role=role) for role in sorted(set(roles)))
    await db.flush()


async def roles_of(
    db: AsyncSession, *, user_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, list[str]]:
    ids = list(user_ids)
    if not ids:
        return {}
    result = await db.execute(
        select(col(UserRole.user_id), col(UserRole.role))
        .where(col(UserRole.user_id).in_(ids))
        .order_by(col(UserRole.role))
    )
    roles: dict[uuid.UUID, list[str]] = defaultdict(list)
    for user_id, role in result:
        roles[user_id].append(role)
    return roles


async def permissions_of(db: AsyncSession, *, roles: Iterable[str]) -> list[str]:
    result = await db.execute(
        select(col(RolePermission.permission))
        .where(col(RolePermission.role).in_(list(roles)))
        .distinct()
        .order_by(col(RolePermission.permission))
    )
    return list(result.scalars())


async def list_users(
    db: AsyncSession, *, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[User]:
    query = select(User).order_by(col(User.created_at), col(User.id)).limit(limit)
    if after is not None:
        created_at, user_id = after
        query = query.where(
            or_(
                col(User.created_at) > created_at,
                and_(col(User.created_at) == created_at, col(User.id) > user_id),
            )
        )
    return list((await db.execute(query)).scalars())


async def add_api_key(db: AsyncSession, *, key: ApiKey) -> ApiKey:
    db.add(key)
    await db.flush()
    await db.refresh(key)
    return key


async def list_api_keys(db: AsyncSession, *, user_id: uuid.UUID) -> list[ApiKey]:
    result = await db.execute(
        select(ApiKey)
        .where(col(ApiKey.user_id) == user_id, col(ApiKey.revoked_at).is_(None))
        .order_by(col(ApiKey.created_at).desc())
    )
    return list(result.scalars())


async def get_api_key(db: AsyncSession, *, key_id: uuid.UUID, user_id: uuid.UUID) -> ApiKey | None:
    result = await db.execute(
        select(ApiKey).where(
            col(ApiKey.id) == key_id,
            col(ApiKey.user_id) == user_id,
            col(ApiKey.revoked_at).is_(None),
        )
    )
    return result.scalar_one_or_none()


async def get_api_key_by_hash(
    db: AsyncSession, *, key_hash: str, lock: Lock | None = None
) -> ApiKey | None:
    query = select(ApiKey).where(col(ApiKey.key_hash) == key_hash)
    if lock is not None:
        query = query.with_for_update(**_LOCKS[lock])
    result = await db.execute(query)
    return result.scalar_one_or_none()


async def api_key_hashes_of(db: AsyncSession, *, user_id: uuid.UUID) -> list[str]:
    result = await db.execute(select(col(ApiKey.key_hash)).where(col(ApiKey.user_id) == user_id))
    return list(result.scalars())


async def revoke_api_key(db: AsyncSession, *, key: ApiKey) -> None:
    await db.execute(update(ApiKey).where(col(ApiKey.id) == key.id).values(revoked_at=func.now()))


async def record_api_key_use(db: AsyncSession, *, last_used: dict[uuid.UUID, datetime]) -> None:
    """One statement for the whole batch; a later time never goes backwards."""
    if not last_used:
        return
    table: Any = ApiKey.__table__  # type: ignore[attr-defined]
    statement = (
        table.update()
        .where(table.c.id == bindparam("key_id"))
        .where(or_(table.c.last_used_at.is_(None), table.c.last_used_at < bindparam("used_at")))
        .values(last_used_at=bindparam("used_at"))
    )
    connection = await db.connection()
    await connection.execute(
        statement, [{"key_id": key_id, "used_at": used_at} for key_id, used_at in last_used.items()]
    )


async def add_audit_event(db: AsyncSession, *, event: AuditEvent) -> None:
    db.add(event)
    await db.flush()


async def list_audit_events(
    db: AsyncSession,
    *,
    before_id: int | None,
    limit: int,
    action: str | None,
    actor_id: uuid.UUID | None,
) -> list[AuditEvent]:
    query = select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(limit)
    if before_id is not None:
        query = query.where(col(AuditEvent.id) < before_id)
    if action is not None:
        query = query.where(col(AuditEvent.action) == action)
    if actor_id is not None:
        query = query.where(col(AuditEvent.actor_id) == actor_id)
    return list((await db.execute(query)).scalars())


# ---------------------------------------------------------------- Redis: login failures


# Both counters of one login attempt, checked and counted in one step: concurrent attempts
# cannot all pass the check before any is counted. While either counter's delay runs the
# attempt is refused (the seconds left are returned); otherwise it is counted as a failure
# in both, until `succeeded` gives it back. Each counter is a hash: `n` failures, `at` the
# time of the last. KEYS: the account at this address, the address. ARGV: now, the free
# failures of each, the first delay, the maximum delay, the window.
_ATTEMPT = """
local now, base, cap = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local function delay(n, free)
  if n < free then return 0 end
  return math.min(cap, base * 2 ^ (n - free))
end
local counts, wait = {}, 0
for i = 1, 2 do
  local found = redis.call('HMGET', KEYS[i], 'n', 'at')
  counts[i] = tonumber(found[1]) or 0
  local left = (tonumber(found[2]) or 0) + delay(counts[i], tonumber(ARGV[i + 1])) - now
  if left > wait then wait = left end
end
if wait > 0 then return math.ceil(wait) end
for i = 1, 2 do
  local n = counts[i] + 1
  redis.call('HSET', KEYS[i], 'n', n, 'at', ARGV[1])
  redis.call('EXPIRE', KEYS[i], math.ceil(window + delay(n, tonumber(ARGV[i + 1]))))
end
return 0
"""
# The password was right: the account's counter at this address starts again; the address
# only gets this attempt back (one good account must not wipe out its guesses at others).
_SUCCEEDED = """
redis.call('DEL', KEYS[1])
if tonumber(redis.call('HGET', KEYS[2], 'n') or 0) > 0 then
  redis.call('HINCRBY', KEYS[2], 'n', -1)
end
"""


class LoginThrottle:
    """Failed logins per account at one client address, and per client address, in Redis.

    Past its free failures a counter makes each further attempt wait, twice as long after
    every failure (an exponential delay, never a lock): the account's owner at another
    address is never refused, and neither is a client that has not failed."""

    def __init__(self, redis: Redis, settings: AuthSettings) -> None:
        self._attempt = redis.register_script(_ATTEMPT)
        self._succeeded = redis.register_script(_SUCCEEDED)
        self._limits: list[str | int] = [
            settings.login_free_failures,
            settings.login_ip_free_failures,
            repr(settings.login_delay_seconds),
            repr(settings.login_max_delay_seconds),
            settings.login_failure_window_seconds,
        ]

    @staticmethod
    def _keys(email: str, ip: str) -> list[str]:
        address = client_bucket(ip)
        return [
            f"auth:login-failures:account:{secret_hash(email)}:{address}",
            f"auth:login-failures:ip:{address}",
        ]

    async def attempt(self, email: str, ip: str, *, now: float) -> int:
        """Admit one password check, counted as a failure until `succeeded` (0); or, while
        a delay runs, the seconds left (nothing counted)."""
        return int(await self._attempt(keys=self._keys(email, ip), args=[repr(now), *self._limits]))

    async def succeeded(self, email: str, ip: str) -> None:
        await self._succeeded(keys=self._keys(email, ip))


# ---------------------------------------------------------------- Redis: API keys


async def cache_api_key(
    redis: Redis, *, key_hash: str, principal: ApiKeyPrincipal | None, seconds: int
) -> None:
    """What the gateway reads for this key (common.principals): the principal, or None
    for an unusable key."""
    value = principal.to_json() if principal is not None else API_KEY_INVALID
    await redis.set(API_KEY_PREFIX + key_hash, value, ex=seconds)


async def forget_api_keys(redis: Redis, *, key_hashes: Iterable[str]) -> None:
    keys = [API_KEY_PREFIX + key_hash for key_hash in key_hashes]
    if keys:
        await redis.delete(*keys)


@asynccontextmanager
async def taken_api_key_use(redis: Redis) -> AsyncIterator[dict[uuid.UUID, datetime]]:
    """The last-use times the gateway collected, taken out of Redis for the block: gone
    once it completes, put back for the next round if it fails. Every replica may try at
    once; one takes them, the others get none."""
    batch = f"{API_KEY_LAST_USED}:flushing:{uuid.uuid4().hex}"
    if not await redis.exists(API_KEY_LAST_USED):
        yield {}
        return
    try:
        await redis.rename(API_KEY_LAST_USED, batch)
    except Exception:  # another replica took it first
        yield {}
        return
    raw: dict[Any, Any] = await redis.hgetall(batch)
    try:
        yield _last_used_times(raw)
    except Exception:
        # Put the batch back for the next round rather than lose it.
        if raw:
            await redis.hset(API_KEY_LAST_USED, mapping=raw)
        raise
    finally:
        await redis.delete(batch)


def _last_used_times(raw: dict[Any, Any]) -> dict[uuid.UUID, datetime]:
    last_used: dict[uuid.UUID, datetime] = {}
    for key_id, ts in raw.items():
        try:
            last_used[uuid.UUID(as_text(key_id))] = datetime.fromtimestamp(float(ts), UTC)
        except ValueError:
            continue
    return last_used
