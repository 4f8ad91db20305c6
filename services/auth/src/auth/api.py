"""Public routes of the auth service (reached through the gateway, identity verified)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from auth import service, teams
from auth.deps import (
    Ctx,
    CurrentSession,
    CurrentUser,
    RuntimeDep,
    gateway_only,
    require,
    service_only,
)
from auth.errors import ApiKeyNotFound, MemberNotFound, TeamNotFound, UserNotFound
from auth.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    ApiKeyUpdate,
    AuditEventRead,
    AuditPage,
    LoginRequest,
    LoginResponse,
    MemberPage,
    MemberRead,
    MemberRole,
    MemberSet,
    MeRead,
    PasswordChange,
    RegisterRequest,
    ResolveApiKey,
    ResolvedApiKey,
    SessionRead,
    TeamCreate,
    TeamDetail,
    TeamPage,
    TeamUpdate,
    UserDetail,
    UserPage,
    UserRead,
    UserUpdate,
)
from auth.settings import AuthSettings
from common.db import DbSession
from common.identity import Identity

router = APIRouter(prefix="/auth", tags=["auth"])
internal = APIRouter(prefix="/internal", include_in_schema=False)
Limit = Annotated[int, Query(ge=1, le=200)]


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _set_session_cookies(
    response: Response, settings: AuthSettings, auth: service.Authenticated
) -> LoginResponse:
    max_age = int(settings.session_lifetime_seconds)
    common = {"max_age": max_age, "path": "/", "samesite": "lax", "secure": settings.secure_cookies}
    response.set_cookie(settings.session_cookie_name, auth.token, httponly=True, **common)  # type: ignore[arg-type]
    response.set_cookie(settings.csrf_cookie_name, auth.csrf, httponly=False, **common)  # type: ignore[arg-type]
    return LoginResponse(
        user=auth.me, csrf_token=auth.csrf, expires_at=_ts(auth.session.expires_at)
    )


def _clear_session_cookies(response: Response, settings: AuthSettings) -> None:
    for name, httponly in (
        (settings.session_cookie_name, True),
        (settings.csrf_cookie_name, False),
    ):
        response.delete_cookie(
            name, path="/", secure=settings.secure_cookies, httponly=httponly, samesite="lax"
        )


@router.post("/register", status_code=status.HTTP_201_CREATED)
async def register(body: RegisterRequest, runtime: RuntimeDep, db: DbSession, ctx: Ctx) -> UserRead:
    """Create an account (role `member`). Closed when AUTH_OPEN_REGISTRATION is false."""
    return await service.register(runtime, db, ctx, body)


@router.post("/login")
async def login(
    body: LoginRequest, response: Response, runtime: RuntimeDep, db: DbSession, ctx: Ctx
) -> LoginResponse:
    """Start a session: sets the HttpOnly session cookie and the readable CSRF cookie."""
    auth = await service.login(runtime, db, ctx, body)
    return _set_session_cookies(response, runtime.settings, auth)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    identity: CurrentSession, runtime: RuntimeDep, db: DbSession, ctx: Ctx
) -> Response:
    """End this session at once."""
    assert identity.user_id
    assert identity.sid
    await service.logout(
        runtime, db, ctx, user_id=uuid.UUID(identity.user_id), session_id=identity.sid
    )
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    _clear_session_cookies(response, runtime.settings)
    return response


@router.get("/me")
async def me(identity: CurrentUser, runtime: RuntimeDep, db: DbSession) -> MeRead:
    """Who you are, what this session or API key may do, and your policy with the live
    state of your budget."""
    return await service.me(runtime, db, caller=identity)


@router.get("/sessions")
async def sessions(identity: CurrentSession, runtime: RuntimeDep) -> list[SessionRead]:
    """Your sessions, newest first; `current` marks the one making this request. Needs a
    session: an API key (however scoped) never sees or ends its owner's sessions."""
    assert identity.user_id
    found = await service.list_sessions(runtime, user_id=uuid.UUID(identity.user_id))
    return [
        SessionRead(
            id=s.id,
            created_at=_ts(s.created_at),
            last_seen_at=_ts(s.last_seen_at),
            expires_at=_ts(s.expires_at),
            ip=s.ip,
            user_agent=s.user_agent,
            current=s.id == identity.sid,
        )
        for s in found
    ]


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_session(
    session_id: str, identity: CurrentSession, runtime: RuntimeDep, db: DbSession, ctx: Ctx
) -> Response:
    """End one of your sessions (another device's, or this one)."""
    assert identity.user_id
    await service.revoke_session(
        runtime, db, ctx, user_id=uuid.UUID(identity.user_id), session_id=session_id
    )
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    if session_id == identity.sid:
        _clear_session_cookies(response, runtime.settings)
    return response


@router.post("/password")
async def change_password(
    body: PasswordChange,
    response: Response,
    identity: CurrentSession,
    runtime: RuntimeDep,
    db: DbSession,
    ctx: Ctx,
) -> LoginResponse:
    """Change your password: every session ends, this client gets a new one."""
    assert identity.user_id
    auth = await service.change_password(
        runtime, db, ctx, user_id=uuid.UUID(identity.user_id), body=body
    )
    return _set_session_cookies(response, runtime.settings, auth)


ManagesKeys = Annotated[Identity, Depends(require("api_keys:manage"))]


def _parsed(value: str, missing: type[Exception], what: str) -> uuid.UUID:
    """A path's id; 404 (`missing`) for anything that is not one, as for an unknown id."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise missing(f"No such {what}.") from None


@router.post("/api-keys", status_code=status.HTTP_201_CREATED)
async def create_api_key(
    body: ApiKeyCreate, identity: ManagesKeys, runtime: RuntimeDep, db: DbSession, ctx: Ctx
) -> ApiKeyCreated:
    """A new API key. `key` is in this response only; store it now. A key created with an
    API key gets no more than that key: scopes within its permissions (listed, if it is
    scoped) and an expiry no later than its own; beyond that, 422 naming what exceeds.
    With `team_id` (a team you are in) it is the team's key; its policy fields only narrow
    your user's and the team's (422 naming the field otherwise)."""
    read, key = await service.create_api_key(runtime, db, ctx, creator=identity, body=body)
    return ApiKeyCreated(**read.model_dump(), key=key)


@router.get("/api-keys")
async def list_api_keys(
    identity: CurrentUser, runtime: RuntimeDep, db: DbSession, team_id: uuid.UUID | None = None
) -> list[ApiKeyRead]:
    """Your active keys (never the keys themselves), with their policy and spend. With
    `team_id`: the team's keys (all of them for its owners and admins, yours for a member)."""
    return await service.list_api_keys(runtime, db, caller=identity, team_id=team_id)


@router.patch("/api-keys/{key_id}")
async def update_api_key(
    key_id: str,
    body: ApiKeyUpdate,
    identity: ManagesKeys,
    runtime: RuntimeDep,
    db: DbSession,
    ctx: Ctx,
) -> ApiKeyRead:
    """Rename a key or change its policy (a field left out stays, null clears it). Admins
    set anything, a team's owners anything on its keys; on your own personal key you may
    only narrow the policy (403 otherwise), a team key's is its owners' (403)."""
    parsed = _parsed(key_id, ApiKeyNotFound, "API key")
    return await service.update_api_key(runtime, db, ctx, caller=identity, key_id=parsed, body=body)


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(
    key_id: str, identity: ManagesKeys, runtime: RuntimeDep, db: DbSession, ctx: Ctx
) -> None:
    """Revoke a key (yours, or a key of a team you own): refused on its very next use."""
    parsed = _parsed(key_id, ApiKeyNotFound, "API key")
    await service.revoke_api_key(runtime, db, ctx, caller=identity, key_id=parsed)


def _user_id(value: str) -> uuid.UUID:
    return _parsed(value, UserNotFound, "user")


@router.get("/users", dependencies=[Depends(require("users:manage"))])
async def list_users(db: DbSession, cursor: str | None = None, limit: Limit = 50) -> UserPage:
    """All users, oldest first; pass `next_cursor` back as `cursor` for the next page."""
    users, next_cursor = await service.list_users(db, cursor=cursor, limit=limit)
    return UserPage(data=users, next_cursor=next_cursor)


@router.get("/users/{user_id}", dependencies=[Depends(require("users:manage"))])
async def get_user(user_id: str, runtime: RuntimeDep, db: DbSession) -> UserDetail:
    """A user, with their policy and the live state of their budget."""
    return await service.get_user(runtime, db, user_id=_user_id(user_id))


@router.patch("/users/{user_id}", dependencies=[Depends(require("users:manage"))])
async def update_user(
    user_id: str, body: UserUpdate, runtime: RuntimeDep, db: DbSession, ctx: Ctx
) -> UserDetail:
    """Change roles, disable or enable, rename, set the policy. Role changes and disabling
    end the user's sessions and invalidate the cached API keys at once; a policy change
    applies from the next request too. Your own policy you may only narrow (403)."""
    return await service.update_user(runtime, db, ctx, user_id=_user_id(user_id), body=body)


# ---------------------------------------------------------------- teams


def _team_id(value: str) -> uuid.UUID:
    return _parsed(value, TeamNotFound, "team")


@router.post("/teams", status_code=status.HTTP_201_CREATED)
async def create_team(
    body: TeamCreate,
    _: Annotated[Identity, Depends(require("teams:manage"))],
    runtime: RuntimeDep,
    db: DbSession,
    ctx: Ctx,
) -> TeamDetail:
    """A new team, with its policy (admins)."""
    return await teams.create_team(runtime, db, ctx, body)


@router.get("/teams")
async def list_teams(
    identity: CurrentUser, db: DbSession, cursor: str | None = None, limit: Limit = 50
) -> TeamPage:
    """Every team (admins) or yours, oldest first; `next_cursor` back as `cursor` for more."""
    return await teams.list_teams(db, caller=identity, cursor=cursor, limit=limit)


@router.get("/teams/{team_id}")
async def get_team(
    team_id: str, identity: CurrentUser, runtime: RuntimeDep, db: DbSession
) -> TeamDetail:
    """A team you are in (any, for admins), with its policy and the live state of its
    budget; 404 for any other."""
    return await teams.get_team(runtime, db, caller=identity, team_id=_team_id(team_id))


@router.patch("/teams/{team_id}")
async def update_team(
    team_id: str,
    body: TeamUpdate,
    identity: CurrentUser,
    runtime: RuntimeDep,
    db: DbSession,
    ctx: Ctx,
) -> TeamDetail:
    """Rename (admins, owners) or change the policy (admins; owners only narrow it)."""
    return await teams.update_team(
        runtime, db, ctx, caller=identity, team_id=_team_id(team_id), body=body
    )


@router.delete(
    "/teams/{team_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require("teams:manage"))],
)
async def delete_team(team_id: str, runtime: RuntimeDep, db: DbSession, ctx: Ctx) -> None:
    """Delete a team (admins): its keys are revoked."""
    await teams.delete_team(runtime, db, ctx, team_id=_team_id(team_id))


@router.get("/teams/{team_id}/members")
async def list_members(
    team_id: str,
    identity: CurrentUser,
    db: DbSession,
    cursor: str | None = None,
    limit: Limit = 50,
) -> MemberPage:
    """The team's members in the order they joined (admins, members)."""
    return await teams.list_members(
        db, caller=identity, team_id=_team_id(team_id), cursor=cursor, limit=limit
    )


@router.put("/teams/{team_id}/members/{user_id}")
async def set_member(
    team_id: str,
    user_id: str,
    body: MemberSet,
    identity: CurrentUser,
    runtime: RuntimeDep,
    db: DbSession,
    ctx: Ctx,
) -> MemberRead:
    """Add a user to the team as `owner` or `member`, or change their role (admins,
    owners)."""
    return await teams.set_member(
        runtime, db, ctx, caller=identity, team_id=_team_id(team_id),
        user_id=_user_id(user_id), body=body,
    )  # fmt: skip


@router.delete("/teams/{team_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(
    team_id: str, user_id: str, identity: CurrentUser, runtime: RuntimeDep, db: DbSession, ctx: Ctx
) -> None:
    """Remove a member (admins, owners) or leave the team (yourself): their keys of the
    team are revoked."""
    await teams.remove_member(
        runtime, db, ctx, caller=identity, team_id=_team_id(team_id), user_id=_user_id(user_id)
    )


@router.get("/audit", dependencies=[Depends(require("audit:read"))])
async def audit_log(
    db: DbSession,
    cursor: str | None = None,
    limit: Limit = 50,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor_id: uuid.UUID | None = None,
) -> AuditPage:
    """Security events, newest first (keyset pagination)."""
    events, next_cursor = await service.list_audit(
        db, cursor=cursor, limit=limit, action=action, actor_id=actor_id
    )
    return AuditPage(
        data=[AuditEventRead.model_validate(e, from_attributes=True) for e in events],
        next_cursor=next_cursor,
    )


@internal.post("/api-keys/resolve", dependencies=[Depends(gateway_only)])
async def resolve_api_key(
    body: ResolveApiKey, runtime: RuntimeDep, db: DbSession
) -> ResolvedApiKey:
    """For the gateway: what a key (by hash) stands for; also fills its cache."""
    principal = await service.resolve_api_key(runtime, db, key_hash=body.key_hash)
    if principal is None:
        raise ApiKeyNotFound("Unknown, revoked or expired API key.")
    return ResolvedApiKey(
        key_id=principal.key_id,
        user_id=principal.user_id,
        roles=list(principal.roles),
        permissions=list(principal.permissions),
        expires_at=principal.expires_at,
        team_id=principal.team_id,
        policies=principal.policies,
    )


@internal.get("/teams/{team_id}/members/{user_id}", dependencies=[Depends(service_only)])
async def member_role(team_id: str, user_id: str, db: DbSession) -> MemberRole:
    """For services (telemetry): the user's role in the team; 404 if not in it."""
    return await teams.member_role(
        db, team_id=_parsed(team_id, MemberNotFound, "member"),
        user_id=_parsed(user_id, MemberNotFound, "member"),
    )  # fmt: skip
