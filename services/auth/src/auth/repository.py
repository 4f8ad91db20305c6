"""Every query of the auth service."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import and_, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from auth.models import ApiKey, AuditEvent, RolePermission, User, UserRole

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
