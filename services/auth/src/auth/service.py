"""The rules of the auth service: registration, login, sessions, API keys, users, audit."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from auth import repository
from auth.errors import (
    AccountDisabled,
    AdminRefused,
    ApiKeyNotFound,
    EmailTaken,
    InvalidCredentials,
    InvalidExpiry,
    InvalidScopes,
    LoginThrottled,
    NotAUser,
    RegistrationClosed,
    SelfLockout,
    SessionNotFound,
    UserNotFound,
    WeakPassword,
)
from auth.models import ApiKey, AuditEvent, User
from auth.passwords import password_problem
from auth.runtime import Runtime
from auth.schemas import (
    ApiKeyCreate,
    LoginRequest,
    Me,
    PasswordChange,
    RegisterRequest,
    UserRead,
    UserUpdate,
    normalize_email,
)
from common.cursors import decode_cursor, encode_cursor
from common.db import AfterCommit, after_commit, commit_anyway
from common.identity import Identity
from common.principals import ApiKeyPrincipal, Session, new_token, secret_hash

log = structlog.get_logger(__name__)
__all__ = ["normalize_email"]
DEFAULT_ROLE = "member"
API_KEY_SCHEME = "sk-"
INVALID_KEY_CACHE_SECONDS = 60


@dataclass(frozen=True)
class Context:
    """Where a request comes from, for sessions and the audit log."""

    now: float
    ip: str
    user_agent: str
    trace_id: str | None
    actor_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Authenticated:
    user: User
    me: Me
    token: str
    csrf: str
    session: Session


def _datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


async def audit(
    db: AsyncSession,
    ctx: Context,
    action: str,
    *,
    outcome: str = "success",
    target_type: str | None = None,
    target_id: str | None = None,
    actor_id: uuid.UUID | None = None,
    **detail: Any,
) -> None:
    await repository.add_audit_event(
        db,
        event=AuditEvent(
            action=action,
            outcome=outcome,
            actor_id=actor_id or ctx.actor_id,
            target_type=target_type,
            target_id=target_id,
            ip=ctx.ip or None,
            user_agent=ctx.user_agent[:512] or None,
            trace_id=ctx.trace_id,
            detail=detail,
        ),
    )


async def user_view(db: AsyncSession, user: User) -> Me:
    roles = (await repository.roles_of(db, user_ids=[user.id])).get(user.id, [])
    permissions = await repository.permissions_of(db, roles=roles)
    return Me(id=user.id, email=user.email, name=user.name, roles=roles, permissions=permissions)


def user_read(user: User, roles: list[str]) -> UserRead:
    assert user.created_at is not None
    return UserRead(
        id=user.id,
        email=user.email,
        name=user.name,
        roles=roles,
        disabled=user.disabled,
        created_at=user.created_at,
    )


async def forget_now_and_after_commit(db: AsyncSession, forget: AfterCommit) -> None:
    """Clear what Redis holds of someone's access (sessions, cached keys), once the change
    holds its row locks, and again once it has committed.

    The first clearing fails the request, before anything is committed, if Redis does not
    answer; with the row locks (repository.Lock) it already removes any answer a check
    cached from the old rows. The second one does not depend on every reader taking those
    locks: whatever was cached while the change was in flight is gone once it is visible."""
    await forget()
    after_commit(db, forget)


# ---------------------------------------------------------------- registration


async def register(
    runtime: Runtime, db: AsyncSession, ctx: Context, body: RegisterRequest
) -> UserRead:
    """A new user with the member role (email already normalised by the schema)."""
    if not runtime.settings.open_registration:
        raise RegistrationClosed("Registration is closed; ask an administrator.")
    email, roles = body.email, [DEFAULT_ROLE]
    problem = password_problem(body.password, email=email)
    if problem:
        raise WeakPassword(problem)
    if await repository.get_user_by_email(db, email=email):
        raise EmailTaken("An account with this email already exists.")
    password_hash = await runtime.hasher.hash(body.password)
    user = User(email=email, name=body.name, password_hash=password_hash)
    try:
        async with db.begin_nested():
            await repository.add_user(db, user=user, roles=roles)
    except IntegrityError:
        raise EmailTaken("An account with this email already exists.") from None
    await audit(
        db, ctx, "user.register", actor_id=user.id, target_type="user", target_id=str(user.id)
    )
    await db.refresh(user)
    return user_read(user, roles)


async def ensure_admin(
    runtime: Runtime,
    db: AsyncSession,
    ctx: Context,
    *,
    email: str,
    password: str,
    promote_existing: bool = False,
) -> bool:
    """Create the first admin once. An existing account with this email is made admin, its
    own password kept, only when `promote_existing` says so: anyone may have registered
    the address before the operator started the platform.

    Returns whether anything changed; raises AdminRefused saying why it cannot."""
    problem = password_problem(password, email=email)
    if problem:
        raise AdminRefused(f"ADMIN_PASSWORD is refused by the password policy: {problem}")
    user = await repository.get_user_by_email(db, email=email)
    if user is None:
        password_hash = await runtime.hasher.hash(password)
        user = User(email=email, name="Administrator", password_hash=password_hash)
        await repository.add_user(db, user=user, roles=["admin"])
        await audit(db, ctx, "user.bootstrap_admin", target_type="user", target_id=str(user.id))
        return True
    roles = (await repository.roles_of(db, user_ids=[user.id])).get(user.id, [])
    if "admin" in roles:
        return False
    if not promote_existing:
        raise AdminRefused(
            f"ADMIN_EMAIL {email} belongs to an existing account that is not an admin: it is "
            "not made admin (its password is its owner's, not ADMIN_PASSWORD). Choose "
            "another ADMIN_EMAIL, or set ADMIN_PROMOTE_EXISTING=true to promote that account."
        )
    await repository.set_roles(db, user_id=user.id, roles=[*roles, "admin"])
    await audit(db, ctx, "user.bootstrap_admin", target_type="user", target_id=str(user.id))
    # A role change: sessions made with the old roles end.
    await runtime.sessions.delete_all_for_user(str(user.id))
    return True


# ---------------------------------------------------------------- login and sessions


async def _admit_password_check(runtime: Runtime, ctx: Context, email: str) -> None:
    """Count one password check as a failed login (given back by the throttle's
    `succeeded`); raises LoginThrottled (with Retry-After) while a delay runs."""
    wait = await runtime.login_throttle.attempt(email, ctx.ip, now=ctx.now)
    if wait > 0:
        raise LoginThrottled(
            f"Too many failed logins from this address; try again in {wait} s.",
            headers={"Retry-After": str(wait)},
            retry_after=wait,
        )


async def login(
    runtime: Runtime, db: AsyncSession, ctx: Context, body: LoginRequest
) -> Authenticated:
    """A new session for the right password. A refusal is audited, and that record kept
    (commit_anyway): the unit of work holds nothing else yet."""
    email, hasher = body.email, runtime.hasher
    # Counted as a failure before the password is compared (a burst cannot outrun the
    # budget), given back when it was right.
    await _admit_password_check(runtime, ctx, email)
    user = await repository.get_user_by_email(db, email=email)
    # Unknown emails are verified against a dummy hash: same work, same answer.
    valid = await hasher.verify(user.password_hash if user else None, body.password)
    if user is None or not valid:
        await audit(
            db,
            ctx,
            "auth.login",
            outcome="failure",
            actor_id=user.id if user else None,
            target_type="user",
            target_id=str(user.id) if user else None,
            email_hash=secret_hash(email)[:16],
            reason="invalid_credentials",
        )
        raise commit_anyway(InvalidCredentials())
    await runtime.login_throttle.succeeded(email, ctx.ip)
    if user.disabled:
        await audit(
            db, ctx, "auth.login", outcome="failure", actor_id=user.id, target_type="user",
            target_id=str(user.id), reason="disabled",
        )  # fmt: skip
        raise commit_anyway(AccountDisabled("This account is disabled."))
    if hasher.needs_rehash(user.password_hash):
        user.password_hash = await hasher.hash(body.password)
    return await _start_session(runtime, db, ctx, user)


async def _start_session(
    runtime: Runtime, db: AsyncSession, ctx: Context, user: User
) -> Authenticated:
    # The roles are read, and the session stored, under the lock a change of access takes
    # (repository.Lock): a disable or role change committing meanwhile ends it too.
    if await repository.lock_user(db, user_id=user.id) is not False:
        raise AccountDisabled("This account is disabled.")
    me = await user_view(db, user)
    settings = runtime.settings
    token, csrf, session = await runtime.sessions.create(
        user_id=str(user.id),
        roles=me.roles,
        permissions=me.permissions,
        now=ctx.now,
        idle_timeout=settings.session_idle_timeout_seconds,
        lifetime=settings.session_lifetime_seconds,
        ip=ctx.ip,
        user_agent=ctx.user_agent,
    )
    await audit(
        db, ctx, "auth.login", actor_id=user.id, target_type="session", target_id=session.id[:16]
    )
    return Authenticated(user=user, me=me, token=token, csrf=csrf, session=session)


async def logout(
    runtime: Runtime, db: AsyncSession, ctx: Context, *, user_id: uuid.UUID, session_id: str
) -> None:
    await runtime.sessions.delete(session_id, str(user_id))
    await audit(db, ctx, "auth.logout", target_type="session", target_id=session_id[:16])


async def list_sessions(runtime: Runtime, *, user_id: uuid.UUID) -> list[Session]:
    sessions = await runtime.sessions.list_for_user(str(user_id))
    return sorted(sessions, key=lambda s: s.created_at, reverse=True)


async def revoke_session(
    runtime: Runtime, db: AsyncSession, ctx: Context, *, user_id: uuid.UUID, session_id: str
) -> None:
    session = await runtime.sessions.get(session_id)
    if session is None or session.user_id != str(user_id):
        raise SessionNotFound("No such session.")
    await runtime.sessions.delete(session_id, str(user_id))
    await audit(db, ctx, "session.revoke", target_type="session", target_id=session_id[:16])


async def change_password(
    runtime: Runtime, db: AsyncSession, ctx: Context, *, user_id: uuid.UUID, body: PasswordChange
) -> Authenticated:
    """Every session of the user ends; the caller gets a fresh one. Wrong current
    passwords count as failed logins (throttled, audited and the record kept): a stolen
    session cannot be used to guess the password."""
    hasher = runtime.hasher
    user = await repository.get_user(db, user_id=user_id)
    if user is None:
        raise UserNotFound("No such user.")
    await _admit_password_check(runtime, ctx, user.email)
    if not await hasher.verify(user.password_hash, body.current_password):
        await audit(
            db, ctx, "user.password_change", outcome="failure", target_type="user",
            target_id=str(user.id), reason="invalid_current_password",
        )  # fmt: skip
        raise commit_anyway(InvalidCredentials())
    await runtime.login_throttle.succeeded(user.email, ctx.ip)
    problem = password_problem(body.new_password, email=user.email)
    if problem:
        raise WeakPassword(problem)
    if await hasher.verify(user.password_hash, body.new_password):
        raise WeakPassword("The new password must differ from the current one.")
    user.password_hash = await hasher.hash(body.new_password)
    user.password_changed_at = _datetime(ctx.now)
    await runtime.sessions.delete_all_for_user(str(user.id))
    await audit(db, ctx, "user.password_change", target_type="user", target_id=str(user.id))
    return await _start_session(runtime, db, ctx, user)


# ---------------------------------------------------------------- API keys


async def create_api_key(
    db: AsyncSession, ctx: Context, *, creator: Identity, body: ApiKeyCreate
) -> tuple[ApiKey, str]:
    """A new key for the creator's user: returns the row and the key, which is never stored.

    A key never gets more than the credential that creates it: its scopes are a subset of
    the creator's effective permissions and, when an API key creates it, it expires no
    later than that key and is unscoped only if that key is (an unscoped key follows its
    owner's roles, which a scoped one does not). Anything beyond is refused, naming it."""
    assert creator.user_id
    permitted = set(creator.permissions)
    parent = await _creating_key(db, creator)
    _check_scopes(body, permitted=permitted, parent=parent)
    _check_expiry(body, now=ctx.now, parent=parent)
    key = API_KEY_SCHEME + new_token()
    row = ApiKey(
        user_id=uuid.UUID(creator.user_id),
        name=body.name,
        prefix=key[:10],
        key_hash=secret_hash(key),
        scopes=sorted(set(body.scopes)) if body.scopes is not None else None,
        expires_at=body.expires_at,
    )
    row = await repository.add_api_key(db, key=row)
    # Which key made it, when a key did: the chain a leaked key could have extended.
    made_with: dict[str, Any] = {"created_with_key": str(parent.id)} if parent else {}
    await audit(
        db, ctx, "api_key.create", target_type="api_key", target_id=str(row.id), name=body.name,
        **made_with,
    )  # fmt: skip
    return row, key


async def _creating_key(db: AsyncSession, creator: Identity) -> ApiKey | None:
    """The API key making this request (None for a session); refused if it is gone."""
    if creator.kind != "api_key":
        return None
    assert creator.user_id
    try:
        key_id = uuid.UUID(creator.kid or "")
    except ValueError:
        raise NotAUser("This API key is no longer valid.") from None
    key = await repository.get_api_key(db, key_id=key_id, user_id=uuid.UUID(creator.user_id))
    if key is None:  # revoked since the gateway checked it
        raise NotAUser("This API key is no longer valid.")
    return key


def _check_scopes(body: ApiKeyCreate, *, permitted: set[str], parent: ApiKey | None) -> None:
    """Scopes within the creator's permissions; listed when a scoped key creates it."""
    if body.scopes is not None:
        unknown = sorted(set(body.scopes) - permitted)
        if unknown or not body.scopes:
            raise InvalidScopes(
                "Scopes must be a non-empty subset of your permissions.",
                not_permitted=unknown,
            )
    elif parent is not None and parent.scopes is not None:
        raise InvalidScopes(
            "This API key is scoped, so a key it creates must list its scopes "
            "(a subset of this key's permissions).",
            permitted=sorted(permitted),
        )


def _check_expiry(body: ApiKeyCreate, *, now: float, parent: ApiKey | None) -> None:
    """An expiry in the future, and no later than the creating key's."""
    if body.expires_at is not None:
        if body.expires_at.tzinfo is None:
            raise InvalidExpiry("expires_at needs a time zone (e.g. 2027-01-01T00:00:00Z).")
        if body.expires_at.timestamp() <= now:
            raise InvalidExpiry("expires_at must be in the future.")
    latest = parent.expires_at if parent is not None else None
    if latest is not None and (body.expires_at is None or body.expires_at > latest):
        raise InvalidExpiry(
            "A key created with an API key expires no later than that key: "
            f"set expires_at to {latest.isoformat()} or earlier.",
            latest=latest.isoformat(),
        )


async def list_api_keys(db: AsyncSession, *, user_id: uuid.UUID) -> list[ApiKey]:
    """The user's active keys, newest first."""
    return await repository.list_api_keys(db, user_id=user_id)


async def revoke_api_key(
    runtime: Runtime, db: AsyncSession, ctx: Context, *, user_id: uuid.UUID, key_id: uuid.UUID
) -> None:
    key = await repository.get_api_key(db, key_id=key_id, user_id=user_id)
    if key is None:
        raise ApiKeyNotFound("No such API key.")
    await repository.revoke_api_key(db, key=key)  # the row stays locked until the commit
    # The gateway's cache forgets it: the next request with it is refused.
    await forget_now_and_after_commit(
        db, lambda: repository.forget_api_keys(runtime.redis, key_hashes=[key.key_hash])
    )
    await audit(db, ctx, "api_key.revoke", target_type="api_key", target_id=str(key.id))


async def resolve_api_key(
    runtime: Runtime, db: AsyncSession, *, key_hash: str
) -> ApiKeyPrincipal | None:
    """What a key stands for now, cached for the gateway; None (cached too) if unusable."""
    now = runtime.clock()
    # Read under "share" locks, held until this answer is cached and committed: a revoke,
    # disable or role change in flight is waited for, or waits, then clears the cache.
    key = await repository.get_api_key_by_hash(db, key_hash=key_hash, lock="share")
    user = await repository.get_user(db, user_id=key.user_id, lock="share") if key else None
    expires_at = key.expires_at.timestamp() if key and key.expires_at else None
    if (
        key is None
        or user is None
        or user.disabled
        or key.revoked_at is not None
        or (expires_at is not None and expires_at <= now)
    ):
        await repository.cache_api_key(
            runtime.redis, key_hash=key_hash, principal=None, seconds=INVALID_KEY_CACHE_SECONDS
        )
        return None
    roles = (await repository.roles_of(db, user_ids=[user.id])).get(user.id, [])
    permissions = await repository.permissions_of(db, roles=roles)
    if key.scopes is not None:
        permissions = sorted(set(permissions) & set(key.scopes))
    principal = ApiKeyPrincipal(
        key_id=str(key.id),
        user_id=str(user.id),
        roles=tuple(roles),
        permissions=tuple(permissions),
        expires_at=expires_at,
    )
    ttl = runtime.settings.api_key_cache_seconds
    if expires_at is not None:
        ttl = min(ttl, max(1, math.floor(expires_at - now)))
    await repository.cache_api_key(
        runtime.redis, key_hash=key_hash, principal=principal, seconds=ttl
    )
    return principal


# ---------------------------------------------------------------- users (admin)


async def list_users(
    db: AsyncSession, *, cursor: str | None, limit: int
) -> tuple[list[UserRead], str | None]:
    after = decode_cursor(cursor, datetime, uuid.UUID) if cursor else None
    users = await repository.list_users(db, after=after, limit=limit + 1)
    page, more = users[:limit], len(users) > limit
    roles = await repository.roles_of(db, user_ids=[u.id for u in page])
    items = [user_read(u, roles.get(u.id, [])) for u in page]
    last = page[-1] if more and page else None
    next_cursor = encode_cursor(last.created_at, last.id) if last and last.created_at else None
    return items, next_cursor


async def get_user(db: AsyncSession, *, user_id: uuid.UUID) -> UserRead:
    user = await repository.get_user(db, user_id=user_id)
    if user is None:
        raise UserNotFound("No such user.")
    roles = (await repository.roles_of(db, user_ids=[user.id])).get(user.id, [])
    return user_read(user, roles)


async def update_user(
    runtime: Runtime, db: AsyncSession, ctx: Context, *, user_id: uuid.UUID, body: UserUpdate
) -> UserRead:
    """Roles, disabled flag, name. A role change or a disable ends the user's sessions
    and empties the key cache, so it applies to the very next request."""
    user = await repository.get_user(db, user_id=user_id, lock="update")
    if user is None:
        raise UserNotFound("No such user.")
    roles = (await repository.roles_of(db, user_ids=[user.id])).get(user.id, [])
    is_self = ctx.actor_id == user.id
    if is_self and (body.disabled or (body.roles is not None and "admin" not in body.roles)):
        raise SelfLockout("Administrators cannot disable themselves or drop their own admin role.")
    access_changed = False
    if body.roles is not None and sorted(set(body.roles)) != sorted(roles):
        await repository.set_roles(db, user_id=user.id, roles=body.roles)
        await audit(db, ctx, "user.roles_change", target_type="user", target_id=str(user.id),
                    old=roles, new=sorted(set(body.roles)))  # fmt: skip
        roles = sorted(set(body.roles))
        access_changed = True
    if body.disabled is not None and body.disabled != user.disabled:
        user.disabled = body.disabled
        action = "user.disable" if body.disabled else "user.enable"
        await audit(db, ctx, action, target_type="user", target_id=str(user.id))
        access_changed = True
    if body.name is not None:
        user.name = body.name
    await db.flush()
    if access_changed:
        hashes = await repository.api_key_hashes_of(db, user_id=user.id)

        async def forget() -> None:
            await runtime.sessions.delete_all_for_user(str(user.id))
            await repository.forget_api_keys(runtime.redis, key_hashes=hashes)

        await forget_now_and_after_commit(db, forget)
    await db.refresh(user)
    return user_read(user, roles)


async def list_audit(
    db: AsyncSession,
    *,
    cursor: str | None,
    limit: int,
    action: str | None,
    actor_id: uuid.UUID | None,
) -> tuple[list[AuditEvent], str | None]:
    before = decode_cursor(cursor, int)[0] if cursor else None
    events = await repository.list_audit_events(
        db, before_id=before, limit=limit + 1, action=action, actor_id=actor_id
    )
    page = events[:limit]
    last = page[-1] if len(events) > limit and page else None
    next_cursor = encode_cursor(last.id) if last and last.id else None
    return page, next_cursor
