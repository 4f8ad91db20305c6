"""Every query of the auth service: Postgres (its schema), and the Redis keys it owns
beside the ones common.principals.SessionStore shares with the gateway."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from redis.asyncio import Redis
from sqlalchemy import Row, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from auth.models import (
    ApiKey,
    AuditEvent,
    RolePermission,
    Team,
    TeamMember,
    User,
    UserRole,
)
from auth.settings import AuthSettings
from common.addresses import client_bucket
from common.budgets import ALERTS, Scope, from_nano, spend_key
from common.principals import (
    API_KEY_INVALID,
    API_KEY_LAST_USED,
    API_KEY_PREFIX,
    SESSION_PREFIX,
    USER_SESSIONS_PREFIX,
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


_USER_ACCESS = (
    col(User.disabled),
    col(User.max_budget_usd),
    col(User.budget_period),
    col(User.allowed_models),
    col(User.rpm_limit),
    col(User.tpm_limit),
)


async def lock_user(db: AsyncSession, *, user_id: uuid.UUID) -> Row[Any] | None:
    """Lock the user's row ("update") without loading it (pending changes to it stay);
    whether the user is `disabled`, and its policy columns; None if there is no such user."""
    query = select(*_USER_ACCESS).where(col(User.id) == user_id)
    result = await db.execute(query.with_for_update(**_LOCKS["update"]))
    row: Row[Any] | None = result.one_or_none()
    return row


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


def _after(created_at: Any, row_id: Any, after: tuple[datetime, uuid.UUID]) -> Any:
    """The rows after `after` in (created_at, id) order: a keyset page's condition."""
    at, last_id = after
    return or_(created_at > at, and_(created_at == at, row_id > last_id))


async def list_users(
    db: AsyncSession, *, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[User]:
    query = select(User).order_by(col(User.created_at), col(User.id)).limit(limit)
    if after is not None:
        query = query.where(_after(col(User.created_at), col(User.id), after))
    return list((await db.execute(query)).scalars())


async def add_api_key(db: AsyncSession, *, key: ApiKey) -> ApiKey:
    db.add(key)
    await db.flush()
    await db.refresh(key)
    return key


async def list_api_keys(
    db: AsyncSession, *, user_id: uuid.UUID | None, team_id: uuid.UUID | None = None
) -> list[ApiKey]:
    """Active keys, newest first: a user's (of one team, when given), or a whole team's."""
    query = select(ApiKey).where(col(ApiKey.revoked_at).is_(None))
    if user_id is not None:
        query = query.where(col(ApiKey.user_id) == user_id)
    if team_id is not None:
        query = query.where(col(ApiKey.team_id) == team_id)
    result = await db.execute(query.order_by(col(ApiKey.created_at).desc(), col(ApiKey.id)))
    return list(result.scalars())


async def count_api_keys(db: AsyncSession, *, user_id: uuid.UUID) -> int:
    """The keys a user holds: every one not revoked (expired ones too)."""
    query = select(func.count()).where(
        col(ApiKey.user_id) == user_id, col(ApiKey.revoked_at).is_(None)
    )
    return int((await db.execute(query)).scalar_one())


async def get_api_key(
    db: AsyncSession, *, key_id: uuid.UUID, user_id: uuid.UUID | None, lock: Lock | None = None
) -> ApiKey | None:
    """An active key: the user's, or anyone's (`user_id` None)."""
    query = select(ApiKey).where(col(ApiKey.id) == key_id, col(ApiKey.revoked_at).is_(None))
    if user_id is not None:
        query = query.where(col(ApiKey.user_id) == user_id)
    if lock is not None:
        query = query.with_for_update(**_LOCKS[lock]).execution_options(populate_existing=True)
    result = await db.execute(query)
    return result.scalar_one_or_none()


async def get_api_key_by_hash(
    db: AsyncSession, *, key_hash: str, lock: Lock | None = None
) -> ApiKey | None:
    query = select(ApiKey).where(col(ApiKey.key_hash) == key_hash)
    if lock is not None:
        query = query.with_for_update(**_LOCKS[lock])
    result = await db.execute(query)
    return result.scalar_one_or_none()


async def api_key_hashes_of(
    db: AsyncSession, *, user_id: uuid.UUID | None = None, team_id: uuid.UUID | None = None
) -> list[str]:
    """The hashes of every key (revoked ones too) of a user, or of a team."""
    query = select(col(ApiKey.key_hash))
    if user_id is not None:
        query = query.where(col(ApiKey.user_id) == user_id)
    if team_id is not None:
        query = query.where(col(ApiKey.team_id) == team_id)
    return list((await db.execute(query)).scalars())


async def revoke_team_keys(
    db: AsyncSession, *, team_id: uuid.UUID, user_id: uuid.UUID | None = None
) -> list[str]:
    """Revoke the team's active keys (only the user's, when given); their hashes."""
    statement = (
        update(ApiKey)
        .where(col(ApiKey.team_id) == team_id, col(ApiKey.revoked_at).is_(None))
        .values(revoked_at=func.now())
        .returning(col(ApiKey.key_hash))
    )
    if user_id is not None:
        statement = statement.where(col(ApiKey.user_id) == user_id)
    return list((await db.execute(statement)).scalars())


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


async def add_audit_events(db: AsyncSession, *, events: Sequence[AuditEvent]) -> None:
    db.add_all(events)
    await db.flush()


# ---------------------------------------------------------------- teams


async def get_team(
    db: AsyncSession, *, team_id: uuid.UUID, lock: Lock | None = None
) -> Team | None:
    if lock is None:
        return await db.get(Team, team_id)
    return await db.get(Team, team_id, with_for_update=_LOCKS[lock], populate_existing=True)


async def lock_team_of_key(db: AsyncSession, *, key_hash: str) -> Team | None:
    """The team of the key with this hash, locked ("share") before the key's row is read
    (service.resolve_api_key says why); None for a personal key, or no key."""
    team_id = select(col(ApiKey.team_id)).where(col(ApiKey.key_hash) == key_hash)
    query = (
        select(Team)
        .where(col(Team.id) == team_id.scalar_subquery())
        .with_for_update(**_LOCKS["share"])
        .execution_options(populate_existing=True)
    )
    return (await db.execute(query)).scalar_one_or_none()


async def add_team(db: AsyncSession, *, team: Team) -> Team:
    db.add(team)
    await db.flush()
    await db.refresh(team)
    return team


async def delete_team(db: AsyncSession, *, team: Team) -> None:
    await db.delete(team)
    await db.flush()


async def list_teams(
    db: AsyncSession,
    *,
    member: uuid.UUID | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Team]:
    """Teams, oldest first: every team (`member` None), or those `member` is in."""
    query = select(Team).order_by(col(Team.created_at), col(Team.id)).limit(limit)
    if member is not None:
        query = query.join(
            TeamMember,
            and_(col(TeamMember.team_id) == col(Team.id), col(TeamMember.user_id) == member),
        )
    if after is not None:
        query = query.where(_after(col(Team.created_at), col(Team.id), after))
    return list((await db.execute(query)).scalars())


async def team_roles(
    db: AsyncSession, *, user_id: uuid.UUID, team_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The user's role in each of these teams they are in."""
    ids = list(team_ids)
    if not ids:
        return {}
    result = await db.execute(
        select(col(TeamMember.team_id), col(TeamMember.role)).where(
            col(TeamMember.user_id) == user_id, col(TeamMember.team_id).in_(ids)
        )
    )
    return {team_id: role for team_id, role in result}


async def teams_with_budget(db: AsyncSession) -> list[Team]:
    result = await db.execute(select(Team).where(col(Team.max_budget_usd).is_not(None)))
    return list(result.scalars())


async def get_member(
    db: AsyncSession, *, team_id: uuid.UUID, user_id: uuid.UUID, lock: Lock | None = None
) -> TeamMember | None:
    query = select(TeamMember).where(
        col(TeamMember.team_id) == team_id, col(TeamMember.user_id) == user_id
    )
    if lock is not None:
        query = query.with_for_update(**_LOCKS[lock]).execution_options(populate_existing=True)
    result = await db.execute(query)
    return result.scalar_one_or_none()


async def set_member(
    db: AsyncSession, *, team_id: uuid.UUID, user_id: uuid.UUID, role: str
) -> TeamMember:
    """Add the user to the team with `role`, or give them that role."""
    table: Any = TeamMember.__table__  # type: ignore[attr-defined]
    statement = insert(table).values(team_id=team_id, user_id=user_id, role=role)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.team_id, table.c.user_id], set_={"role": role}
    )
    await db.execute(statement)
    member = await get_member(db, team_id=team_id, user_id=user_id, lock="update")
    assert member is not None
    return member


async def remove_member(db: AsyncSession, *, member: TeamMember) -> None:
    await db.delete(member)
    await db.flush()


async def list_members(
    db: AsyncSession,
    *,
    team_id: uuid.UUID,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[tuple[TeamMember, User]]:
    """A team's members in the order they joined."""
    query = (
        select(TeamMember, User)
        .join(User, col(User.id) == col(TeamMember.user_id))
        .where(col(TeamMember.team_id) == team_id)
        .order_by(col(TeamMember.created_at), col(TeamMember.user_id))
        .limit(limit)
    )
    if after is not None:
        query = query.where(_after(col(TeamMember.created_at), col(TeamMember.user_id), after))
    return [(member, user) for member, user in await db.execute(query)]


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


# ---------------------------------------------------------------- Redis: sessions' policy

# The user's policy into each of these sessions that still exists (HSET alone would make
# a session hash that has ended exist again, without a TTL). KEYS: the sessions; ARGV[1]:
# the policy (JSON).
_SET_SESSION_POLICY = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'policy', ARGV[1]) end
end
return 0
"""


async def set_sessions_policy(redis: Redis, *, user_id: str, policy: dict[str, Any]) -> None:
    """Write the user's policy (wire form, common.principals) into every live session."""
    ids = sorted(as_text(i) for i in await redis.smembers(USER_SESSIONS_PREFIX + user_id))
    if ids:
        keys = [SESSION_PREFIX + session_id for session_id in ids]
        text = json.dumps(policy, separators=(",", ":"))
        await redis.register_script(_SET_SESSION_POLICY)(keys=keys, args=[text])


# ---------------------------------------------------------------- Redis: budgets


async def spend_counters(
    redis: Redis, *, scopes: Sequence[Scope], now: datetime
) -> list[Decimal | None]:
    """What the spend counters of common.budgets hold, None where there is none (without
    asking telemetry, as SpendCounters.spent does for those)."""
    keys = [spend_key(s.scope, s.scope_id, s.period, now) for s in scopes]
    found = await redis.mget(keys) if keys else []
    return [None if value is None else from_nano(int(value)) for value in found]


@asynccontextmanager
async def taken_budget_alerts(redis: Redis, *, count: int) -> AsyncIterator[list[bytes]]:
    """Up to `count` of the oldest announcements of common.budgets (ALERTS), taken out of
    the list for the block: gone once it completes, put back where they were (the oldest
    end) if it fails. Every replica may take some at once; none is taken twice."""
    popped: Any = await redis.rpop(ALERTS, count)
    raw: list[bytes] = popped or []
    try:
        yield raw
    except BaseException:
        if raw:
            await redis.rpush(ALERTS, *reversed(raw))
        raise


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
