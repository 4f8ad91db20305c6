"""Public routes of the auth service (reached through the gateway, identity verified)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from auth import service
from auth.deps import Ctx, CurrentSession, CurrentUser, RuntimeDep, gateway_only, require
from auth.errors import ApiKeyNotFound, UserNotFound
from auth.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    AuditEventRead,
    AuditPage,
    LoginRequest,
    LoginResponse,
    Me,
    PasswordChange,
    RegisterRequest,
    ResolveApiKey,
    ResolvedApiKey,
    SessionRead,
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
async def me(identity: CurrentUser, db: DbSession) -> Me:
    """Who you are, and what this session or API key may do."""
    assert identity.user_id
    user = await service.get_user(db, user_id=uuid.UUID(identity.user_id))
    return Me(
        id=user.id,
        email=user.email,
        name=user.name,
        roles=user.roles,
        permissions=sorted(identity.permissions),
    )


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


@router.post("/api-keys", status_code=status.HTTP_201_CREATED)
async def create_api_key(
    body: ApiKeyCreate,
    identity: Annotated[Identity, Depends(require("api_keys:manage"))],
    db: DbSession,
    ctx: Ctx,
) -> ApiKeyCreated:
    """A new API key. `key` is in this response only; store it now. A key created with an
    API key gets no more than that key: scopes within its permissions (listed, if it is
    scoped) and an expiry no later than its own; beyond that, 422 naming what exceeds."""
    row, key = await service.create_api_key(db, ctx, creator=identity, body=body)
    return ApiKeyCreated(
        **ApiKeyRead.model_validate(row, from_attributes=True).model_dump(), key=key
    )


@router.get("/api-keys")
async def list_api_keys(identity: CurrentUser, db: DbSession) -> list[ApiKeyRead]:
    """Your active keys (never the keys themselves)."""
    assert identity.user_id
    keys = await service.list_api_keys(db, user_id=uuid.UUID(identity.user_id))
    return [ApiKeyRead.model_validate(k, from_attributes=True) for k in keys]


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(
    key_id: str,
    identity: Annotated[Identity, Depends(require("api_keys:manage"))],
    runtime: RuntimeDep,
    db: DbSession,
    ctx: Ctx,
) -> None:
    """Revoke a key: refused on its very next use."""
    assert identity.user_id
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        raise ApiKeyNotFound("No such API key.") from None
    await service.revoke_api_key(
        runtime, db, ctx, user_id=uuid.UUID(identity.user_id), key_id=parsed
    )


def _user_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise UserNotFound("No such user.") from None


@router.get("/users", dependencies=[Depends(require("users:manage"))])
async def list_users(db: DbSession, cursor: str | None = None, limit: Limit = 50) -> UserPage:
    """All users, oldest first; pass `next_cursor` back as `cursor` for the next page."""
    users, next_cursor = await service.list_users(db, cursor=cursor, limit=limit)
    return UserPage(data=users, next_cursor=next_cursor)


@router.get("/users/{user_id}", dependencies=[Depends(require("users:manage"))])
async def get_user(user_id: str, db: DbSession) -> UserRead:
    return await service.get_user(db, user_id=_user_id(user_id))


@router.patch("/users/{user_id}", dependencies=[Depends(require("users:manage"))])
async def update_user(
    user_id: str, body: UserUpdate, runtime: RuntimeDep, db: DbSession, ctx: Ctx
) -> UserRead:
    """Change roles, disable or enable, rename. Role changes and disabling end the user's
    sessions and invalidate the cached API keys at once."""
    return await service.update_user(runtime, db, ctx, user_id=_user_id(user_id), body=body)


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
    )
