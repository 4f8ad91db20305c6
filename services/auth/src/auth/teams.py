"""The rules of teams: who sees, changes and joins them.

Admins (`teams:manage`) create, change and delete any team. A team's owners rename it,
narrow its policy and manage its members; its members see it and its members, and leave
it. Anyone else is told there is no such team. What an owner or a member does with an
API key needs that key to hold `api_keys:manage` (a key scoped to calling models does not
manage teams). A member who leaves, or is removed, has their keys of the team revoked.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from auth import repository
from auth.errors import MemberNotFound, TeamNameTaken, TeamNotFound, TeamOwnerRequired, UserNotFound
from auth.models import Team, TeamMember, User
from auth.policies import changed, policy_of, store
from auth.repository import Lock
from auth.runtime import Runtime
from auth.schemas import (
    MemberPage,
    MemberRead,
    MemberRole,
    MemberSet,
    TeamCreate,
    TeamDetail,
    TeamPage,
    TeamRead,
    TeamUpdate,
)
from auth.service import (
    GOVERN,
    Context,
    audit,
    forget_now_and_after_commit,
    only_narrowing,
    policy_changed,
    read_spend,
    with_spend,
)
from common.cursors import decode_cursor, encode_cursor
from common.identity import Identity
from common.policy import Policy

# What a team's owner (or a member leaving) must hold to act with an API key.
MANAGE_KEYS = "api_keys:manage"


def _team_read(team: Team, role: str | None) -> TeamRead:
    assert team.created_at is not None
    assert team.updated_at is not None
    return TeamRead(
        id=team.id,
        name=team.name,
        role=role,
        created_at=team.created_at,
        updated_at=team.updated_at,
        **policy_of(team).to_wire(),
    )


async def _detail(runtime: Runtime, team: Team, role: str | None) -> TeamDetail:
    (spend,) = await read_spend(runtime, [("team", team.id, policy_of(team))])
    return with_spend(TeamDetail(**_team_read(team, role).model_dump()), spend)


async def _visible(
    db: AsyncSession, caller: Identity, team_id: uuid.UUID, *, lock: Lock | None = None
) -> tuple[Team, str | None]:
    """The team (locked, if asked) and the caller's role in it, if they may see it: an
    admin or one of its members. 404 otherwise."""
    assert caller.user_id
    team = await repository.get_team(db, team_id=team_id, lock=lock)
    member = await repository.get_member(db, team_id=team_id, user_id=uuid.UUID(caller.user_id))
    role = member.role if member is not None else None
    if team is None or (role is None and not caller.has(GOVERN)):
        raise TeamNotFound("No such team.")
    return team, role


def _owner_or_admin(caller: Identity, role: str | None) -> None:
    if caller.has(GOVERN):
        return
    if role != "owner":
        raise TeamOwnerRequired("Only the team's owners (or an admin) may do this.")
    if not caller.has(MANAGE_KEYS):
        raise TeamOwnerRequired(f"This API key lacks {MANAGE_KEYS}, which managing a team needs.")


async def create_team(
    runtime: Runtime, db: AsyncSession, ctx: Context, body: TeamCreate
) -> TeamDetail:
    """A new team (admins), with its policy; nobody in it yet."""
    policy = changed(Policy(), body.policy_changes())
    team = Team(name=body.name)
    store(team, policy)
    try:
        async with db.begin_nested():
            await repository.add_team(db, team=team)
    except IntegrityError:
        raise TeamNameTaken(f"A team named {body.name!r} exists already.") from None
    await audit(
        db, ctx, "team.create", target_type="team", target_id=str(team.id), name=team.name,
        policy=policy.to_wire(),
    )  # fmt: skip
    return await _detail(runtime, team, None)


async def list_teams(
    db: AsyncSession, *, caller: Identity, cursor: str | None, limit: int
) -> TeamPage:
    """Every team for admins, the caller's teams for anyone else; oldest first."""
    assert caller.user_id
    after = decode_cursor(cursor, datetime, uuid.UUID) if cursor else None
    user_id = uuid.UUID(caller.user_id)
    member = None if caller.has(GOVERN) else user_id
    found = await repository.list_teams(db, member=member, after=after, limit=limit + 1)
    page = found[:limit]
    roles = await repository.team_roles(db, user_id=user_id, team_ids=[t.id for t in page])
    last = page[-1] if len(found) > limit else None
    next_cursor = encode_cursor(last.created_at, last.id) if last and last.created_at else None
    return TeamPage(data=[_team_read(t, roles.get(t.id)) for t in page], next_cursor=next_cursor)


async def get_team(
    runtime: Runtime, db: AsyncSession, *, caller: Identity, team_id: uuid.UUID
) -> TeamDetail:
    team, role = await _visible(db, caller, team_id)
    return await _detail(runtime, team, role)


async def update_team(
    runtime: Runtime,
    db: AsyncSession,
    ctx: Context,
    *,
    caller: Identity,
    team_id: uuid.UUID,
    body: TeamUpdate,
) -> TeamDetail:
    """Rename (admins, owners) or change the policy (admins anything, owners only narrow
    it). The cached principals of the team's keys are forgotten: the next call with any of
    them carries the new policy."""
    team, role = await _visible(db, caller, team_id, lock="update")
    old = policy_of(team)
    new = changed(old, body.policy_changes())
    renamed = body.name is not None and body.name != team.name
    if renamed or new != old:
        _owner_or_admin(caller, role)
    if new != old and not caller.has(GOVERN):
        only_narrowing(old, new, "the team's")
    old_name = team.name
    if body.name is not None:
        team.name = body.name
    store(team, new)
    try:
        async with db.begin_nested():
            await db.flush()
    except IntegrityError:
        raise TeamNameTaken(f"A team named {body.name!r} exists already.") from None
    if renamed:
        await audit(db, ctx, "team.update", target_type="team", target_id=str(team.id),
                    old={"name": old_name}, new={"name": team.name})  # fmt: skip
    if new != old:
        hashes = await repository.api_key_hashes_of(db, team_id=team.id)
        await policy_changed(
            runtime, db, ctx, scope="team", target=("team", team.id), old=old, new=new,
            key_hashes=hashes,
        )  # fmt: skip
    await db.refresh(team)
    return await _detail(runtime, team, role)


async def delete_team(
    runtime: Runtime, db: AsyncSession, ctx: Context, *, team_id: uuid.UUID
) -> None:
    """Delete a team (admins): its keys are revoked first, and refused from the next
    request on; its memberships go with it."""
    team = await repository.get_team(db, team_id=team_id, lock="update")
    if team is None:
        raise TeamNotFound("No such team.")
    hashes = await repository.revoke_team_keys(db, team_id=team.id)
    await repository.delete_team(db, team=team)
    await forget_now_and_after_commit(
        db, lambda: repository.forget_api_keys(runtime.redis, key_hashes=hashes)
    )
    await audit(db, ctx, "team.delete", target_type="team", target_id=str(team_id),
                name=team.name, revoked_keys=len(hashes))  # fmt: skip


def _member_read(member: TeamMember, user: User) -> MemberRead:
    assert member.created_at is not None
    return MemberRead(
        user_id=user.id,
        email=user.email,
        name=user.name,
        role=member.role,
        created_at=member.created_at,
    )


async def list_members(
    db: AsyncSession, *, caller: Identity, team_id: uuid.UUID, cursor: str | None, limit: int
) -> MemberPage:
    """A team's members in the order they joined (admins, members)."""
    await _visible(db, caller, team_id)
    after = decode_cursor(cursor, datetime, uuid.UUID) if cursor else None
    found = await repository.list_members(db, team_id=team_id, after=after, limit=limit + 1)
    page = found[:limit]
    last = page[-1][0] if len(found) > limit else None
    next_cursor = encode_cursor(last.created_at, last.user_id) if last and last.created_at else None
    return MemberPage(data=[_member_read(m, u) for m, u in page], next_cursor=next_cursor)


async def set_member(
    runtime: Runtime,
    db: AsyncSession,
    ctx: Context,
    *,
    caller: Identity,
    team_id: uuid.UUID,
    user_id: uuid.UUID,
    body: MemberSet,
) -> MemberRead:
    """Add a user to the team, or change their role (admins, owners). The team is held
    ("share") to the commit: its deletion waits, then takes the new member with it."""
    _, role = await _visible(db, caller, team_id, lock="share")
    _owner_or_admin(caller, role)
    user = await repository.get_user(db, user_id=user_id)
    if user is None:
        raise UserNotFound("No such user.")
    before = await repository.get_member(db, team_id=team_id, user_id=user_id, lock="update")
    old_role = before.role if before is not None else None
    member = await repository.set_member(db, team_id=team_id, user_id=user_id, role=body.role)
    if old_role != body.role:
        await audit(db, ctx, "team.member_set", target_type="team", target_id=str(team_id),
                    user_id=str(user_id), role=body.role, old_role=old_role)  # fmt: skip
    return _member_read(member, user)


async def remove_member(
    runtime: Runtime,
    db: AsyncSession,
    ctx: Context,
    *,
    caller: Identity,
    team_id: uuid.UUID,
    user_id: uuid.UUID,
) -> None:
    """Remove a member (admins, owners) or leave (the member). Their keys of the team are
    revoked, and refused from the next request on."""
    assert caller.user_id
    _, role = await _visible(db, caller, team_id)
    if uuid.UUID(caller.user_id) != user_id:
        _owner_or_admin(caller, role)
    elif caller.kind == "api_key" and not caller.has(MANAGE_KEYS):
        raise TeamOwnerRequired(f"This API key lacks {MANAGE_KEYS}, which leaving a team needs.")
    # The keys first, then the membership: the order service.resolve_api_key locks them in.
    hashes = await repository.revoke_team_keys(db, team_id=team_id, user_id=user_id)
    member = await repository.get_member(db, team_id=team_id, user_id=user_id, lock="update")
    if member is None:
        raise MemberNotFound("No such member of this team.")
    await repository.remove_member(db, member=member)
    await forget_now_and_after_commit(
        db, lambda: repository.forget_api_keys(runtime.redis, key_hashes=hashes)
    )
    await audit(db, ctx, "team.member_remove", target_type="team", target_id=str(team_id),
                user_id=str(user_id), role=member.role, revoked_keys=len(hashes))  # fmt: skip


async def member_role(db: AsyncSession, *, team_id: uuid.UUID, user_id: uuid.UUID) -> MemberRole:
    """For services (telemetry): the user's role in the team; 404 if not in it."""
    member = await repository.get_member(db, team_id=team_id, user_id=user_id)
    if member is None:
        raise MemberNotFound("No such member of this team.")
    return MemberRole(role=member.role)
