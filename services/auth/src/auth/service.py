"""The rules of the auth service: registration, login, sessions, API keys, users, audit."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

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
    InvalidPolicy,
    InvalidScopes,
    LoginThrottled,
    NotAUser,
    PolicyChangeRefused,
    PolicyExceeds,
    RegistrationClosed,
    SelfLockout,
    SessionNotFound,
    TeamNotFound,
    TooManyApiKeys,
    UserNotFound,
    WeakPassword,
)
from auth.models import ApiKey, AuditEvent, Team, User
from auth.passwords import password_problem
from auth.policies import changed, difference, exceeding, policy_of, spend_changed, store, widened
from auth.runtime import Runtime
from auth.schemas import (
    ApiKeyCreate,
    ApiKeyRead,
    ApiKeyUpdate,
    LoginRequest,
    Me,
    MeRead,
    PasswordChange,
    RegisterRequest,
    SpendRead,
    UserDetail,
    UserRead,
    UserUpdate,
    normalize_email,
)
from common.budgets import Scope, SpendUnavailable, utc
from common.cursors import decode_cursor, encode_cursor
from common.db import AfterCommit, after_commit, commit_anyway
from common.identity import Identity
from common.policy import Policies, Policy, ScopeKind, period_end
from common.principals import ApiKeyPrincipal, Session, new_token, secret_hash

log = structlog.get_logger(__name__)
__all__ = ["normalize_email"]
DEFAULT_ROLE = "member"
API_KEY_SCHEME = "sk-"
INVALID_KEY_CACHE_SECONDS = 60
# Admins' power over every team, and over every key's policy.
GOVERN = "teams:manage"
# TelemetrySpend asks about at most this many scopes at once.
SPEND_BATCH = 100


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
        **policy_of(user).to_wire(),
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


# ---------------------------------------------------------------- policies and spend


async def read_spend(
    runtime: Runtime, scopes: Sequence[tuple[ScopeKind, uuid.UUID, Policy]]
) -> list[SpendRead]:
    """The live state of each scope's budget (common.budgets.SpendCounters: its counter in
    Redis, or what telemetry recorded). When telemetry cannot be asked, the spend of a
    scope without a counter is left null: a read never fails for it."""
    now = utc(runtime.clock())
    reads = [SpendRead() for _ in scopes]
    budgeted = [
        (i, Scope(kind, str(scope_id), policy.period), policy)
        for i, (kind, scope_id, policy) in enumerate(scopes)
        if policy.max_budget_usd is not None
    ]
    for start in range(0, len(budgeted), SPEND_BATCH):
        batch = budgeted[start : start + SPEND_BATCH]
        scopes_of_batch = [scope for _, scope, _ in batch]
        try:
            spent: list[Any] = await runtime.spend.spent(scopes_of_batch, now)
        except SpendUnavailable as exc:
            log.warning("spend unavailable", error=str(exc))
            spent = await repository.spend_counters(runtime.redis, scopes=scopes_of_batch, now=now)
        for (i, scope, policy), amount in zip(batch, spent, strict=True):
            assert policy.max_budget_usd is not None
            reads[i] = SpendRead(
                spend_usd=amount,
                budget_remaining_usd=None
                if amount is None
                else max(policy.max_budget_usd - amount, Decimal(0)),
                budget_resets_at=period_end(scope.period, now),
            )
    return reads


R = TypeVar("R", bound=SpendRead)


def with_spend(read: R, spend: SpendRead) -> R:
    """`read` with the budget's live state."""
    return read.model_copy(update={name: getattr(spend, name) for name in spend.model_fields_set})


def check_within(key: Policy, parents: Sequence[tuple[ScopeKind, Policy]]) -> None:
    """A key's policy only narrows its user's and its team's: 422 naming the first field
    it sets beyond theirs."""
    for scope, parent in parents:
        for name in exceeding(key, parent):
            raise PolicyExceeds(
                f"The key's {name} may not exceed its {scope}'s ({parent.to_wire()[name]}).",
                field=name,
                scope=scope,
            )


def only_narrowing(old: Policy, new: Policy, whose: str) -> None:
    """403 unless `new` allows nothing more than `old`, naming the fields it raises."""
    raised = widened(old, new)
    if raised:
        raise PolicyChangeRefused(
            f"You may only narrow {whose} policy; this would raise {', '.join(raised)}.",
            fields=raised,
        )


async def policy_changed(
    runtime: Runtime,
    db: AsyncSession,
    ctx: Context,
    *,
    scope: ScopeKind,
    target: tuple[str, uuid.UUID],
    old: Policy,
    new: Policy,
    key_hashes: Sequence[str],
    also: AfterCommit | None = None,
) -> None:
    """After a scope's policy changed (its row locked, updated): audited, and what Redis
    holds of the old one forgotten now and after the commit: the cached principals of the
    keys it governs, the scope's spend counters when its budget changed (rebuilt from
    telemetry), and whatever `also` does."""
    target_type, target_id = target
    before, after = difference(old, new)
    await audit(
        db, ctx, "policy.change", target_type=target_type, target_id=str(target_id),
        old=before, new=after,
    )  # fmt: skip
    rebuild = spend_changed(old, new)

    async def forget() -> None:
        await repository.forget_api_keys(runtime.redis, key_hashes=key_hashes)
        if rebuild:
            await runtime.spend.forget(scope, str(target_id), utc(runtime.clock()))
        if also is not None:
            await also()

    await forget_now_and_after_commit(db, forget)


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
    # So is the user's policy, which the session carries (a change rewrites it).
    access = await repository.lock_user(db, user_id=user.id)
    if access is None or access.disabled:
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
        policy=policy_of(access).to_wire(),
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


async def team_role(db: AsyncSession, team_id: uuid.UUID | None, user_id: uuid.UUID) -> str | None:
    """The user's role in the team (owner, member), None if not in it (or no team)."""
    if team_id is None:
        return None
    member = await repository.get_member(db, team_id=team_id, user_id=user_id)
    return member.role if member is not None else None


async def key_reads(runtime: Runtime, keys: Sequence[ApiKey]) -> list[ApiKeyRead]:
    """Keys as shown, each with the live state of its budget."""
    spend = await read_spend(runtime, [("key", k.id, policy_of(k)) for k in keys])
    return [
        with_spend(ApiKeyRead.model_validate(k, from_attributes=True), s)
        for k, s in zip(keys, spend, strict=True)
    ]


async def create_api_key(
    runtime: Runtime, db: AsyncSession, ctx: Context, *, creator: Identity, body: ApiKeyCreate
) -> tuple[ApiKeyRead, str]:
    """A new key for the creator's user: returns it as shown and the key itself, which is
    never stored.

    A key never gets more than the credential that creates it: its scopes are a subset of
    the creator's effective permissions and, when an API key creates it, it expires no
    later than that key and is unscoped only if that key is (an unscoped key follows its
    owner's roles, which a scoped one does not), it belongs to that key's team, and that
    key has no policy of its own (which would not bind the new key; a cache default
    alone is no such policy). A team key is made
    by a member of the team only; its policy only narrows its user's and its team's.
    Anything beyond is refused, naming it."""
    assert creator.user_id
    user_id = uuid.UUID(creator.user_id)
    permitted = set(creator.permissions)
    parent = await _creating_key(db, creator)
    _check_scopes(body, permitted=permitted, parent=parent)
    _check_expiry(body, now=ctx.now, parent=parent)
    _check_parent_policy(body, parent)
    policy = changed(Policy(), body.policy_changes())
    team = await _team_of_new_key(db, team_id=body.team_id, user_id=user_id)
    # The user's row, held until the commit: their concurrent creations count one by one.
    user = await repository.get_user(db, user_id=user_id, lock="update")
    if user is None:
        raise NotAUser("This account no longer exists.")
    check_within(policy, _parents(user, team))
    most = runtime.settings.max_api_keys_per_user
    if (held := await repository.count_api_keys(db, user_id=user_id)) >= most:
        raise TooManyApiKeys(
            f"You hold {held} API keys (expired ones count until revoked), the most allowed "
            f"(AUTH_MAX_API_KEYS_PER_USER = {most}); revoke one first.",
            limit=most,
        )
    key = API_KEY_SCHEME + new_token()
    row = ApiKey(
        user_id=user_id,
        name=body.name,
        prefix=key[:10],
        key_hash=secret_hash(key),
        scopes=sorted(set(body.scopes)) if body.scopes is not None else None,
        expires_at=body.expires_at,
        team_id=body.team_id,
    )
    store(row, policy)
    row = await repository.add_api_key(db, key=row)
    # Which key made it, when a key did: the chain a leaked key could have extended.
    made_with: dict[str, Any] = {"created_with_key": str(parent.id)} if parent else {}
    governed: dict[str, Any] = {"policy": policy.to_wire()} if not policy.empty else {}
    in_team: dict[str, Any] = {"team_id": str(row.team_id)} if row.team_id else {}
    await audit(
        db, ctx, "api_key.create", target_type="api_key", target_id=str(row.id), name=body.name,
        **made_with, **in_team, **governed,
    )  # fmt: skip
    return (await key_reads(runtime, [row]))[0], key


def _parents(user: User, team: Team | None) -> list[tuple[ScopeKind, Policy]]:
    parents: list[tuple[ScopeKind, Policy]] = [("user", policy_of(user))]
    return parents + ([("team", policy_of(team))] if team is not None else [])


async def _team_of_new_key(
    db: AsyncSession, *, team_id: uuid.UUID | None, user_id: uuid.UUID
) -> Team | None:
    """The team a new key is for, if the user is in it (404 otherwise). The team's row and
    the membership are held ("share") until the key is committed: deleting the team waits
    for it, then revokes it too. A removal of the member meanwhile may miss it, but leaves
    it unusable: a team key is valid only while its user is in the team."""
    if team_id is None:
        return None
    team = await repository.get_team(db, team_id=team_id, lock="share")
    if team is None or not await repository.get_member(
        db, team_id=team_id, user_id=user_id, lock="share"
    ):
        raise TeamNotFound("No such team.")
    return team


def _check_parent_policy(body: ApiKeyCreate, parent: ApiKey | None) -> None:
    """A key created with a team key is of its team; a key with a policy of its own
    creates none (a new key would escape its budget and limits; a cache default alone
    limits nothing)."""
    if parent is None:
        return
    if policy_of(parent).governs:
        raise PolicyChangeRefused(
            "This API key has a policy of its own, which a key it created would escape: "
            "create keys with a session, or with a key without a policy."
        )
    if parent.team_id is not None and body.team_id != parent.team_id:
        raise InvalidPolicy(
            "A key created with a team's key belongs to that team: "
            f"set team_id to {parent.team_id}.",
            field="team_id",
        )


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


async def list_api_keys(
    runtime: Runtime, db: AsyncSession, *, caller: Identity, team_id: uuid.UUID | None
) -> list[ApiKeyRead]:
    """The caller's active keys, newest first; with `team_id`, the team's: all of them for
    its owners and admins, their own for its members (404 for anyone else)."""
    assert caller.user_id
    user_id = uuid.UUID(caller.user_id)
    if team_id is None:
        keys = await repository.list_api_keys(db, user_id=user_id)
        return await key_reads(runtime, keys)
    role = await team_role(db, team_id, user_id)
    admin = caller.has(GOVERN)
    if role is None and not (admin and await repository.get_team(db, team_id=team_id)):
        raise TeamNotFound("No such team.")
    everyone = admin or role == "owner"
    keys = await repository.list_api_keys(
        db, user_id=None if everyone else user_id, team_id=team_id
    )
    return await key_reads(runtime, keys)


async def _key_in_reach(
    db: AsyncSession, caller: Identity, key_id: uuid.UUID
) -> tuple[ApiKey, str | None]:
    """An active key the caller may act on, locked ("update") until the commit, with the
    caller's role in its team: their own, a key of a team they own, or (admins) any team's
    key. 404 for any other."""
    assert caller.user_id
    user_id = uuid.UUID(caller.user_id)
    key = await repository.get_api_key(db, key_id=key_id, user_id=None, lock="update")
    if key is None:
        raise ApiKeyNotFound("No such API key.")
    role = await team_role(db, key.team_id, user_id)
    if key.user_id != user_id and role != "owner" and not caller.has(GOVERN):
        raise ApiKeyNotFound("No such API key.")
    return key, role


async def update_api_key(
    runtime: Runtime,
    db: AsyncSession,
    ctx: Context,
    *,
    caller: Identity,
    key_id: uuid.UUID,
    body: ApiKeyUpdate,
) -> ApiKeyRead:
    """Rename a key, or change its policy. Admins may set anything on any key, a team's
    owners anything on the team's keys, a user only narrow the policy of their own
    personal key (a team key's is the owners' to set). Whoever sets it, a key's policy
    only narrows its user's and its team's."""
    key, role = await _key_in_reach(db, caller, key_id)
    old = policy_of(key)
    new = changed(old, body.policy_changes())
    if new != old and not caller.has(GOVERN) and role != "owner":
        if key.team_id is not None:
            raise PolicyChangeRefused("A team key's policy is set by the team's owners.")
        only_narrowing(old, new, "your key's")
    if new != old:
        user = await repository.get_user(db, user_id=key.user_id)
        team = await repository.get_team(db, team_id=key.team_id) if key.team_id else None
        assert user is not None
        check_within(new, _parents(user, team))
        store(key, new)
    if body.name is not None and body.name != key.name:
        await audit(db, ctx, "api_key.rename", target_type="api_key", target_id=str(key.id),
                    old=key.name, new=body.name)  # fmt: skip
        key.name = body.name
    await db.flush()
    if new != old:
        await policy_changed(
            runtime, db, ctx, scope="key", target=("api_key", key.id), old=old, new=new,
            key_hashes=[key.key_hash],
        )  # fmt: skip
    return (await key_reads(runtime, [key]))[0]


async def revoke_api_key(
    runtime: Runtime, db: AsyncSession, ctx: Context, *, caller: Identity, key_id: uuid.UUID
) -> None:
    """Revoke one's own key, or (owners, admins) a key of a team."""
    key, _ = await _key_in_reach(db, caller, key_id)
    await repository.revoke_api_key(db, key=key)  # the row stays locked until the commit
    # The gateway's cache forgets it: the next request with it is refused.
    await forget_now_and_after_commit(
        db, lambda: repository.forget_api_keys(runtime.redis, key_hashes=[key.key_hash])
    )
    await audit(db, ctx, "api_key.revoke", target_type="api_key", target_id=str(key.id))


async def resolve_api_key(
    runtime: Runtime, db: AsyncSession, *, key_hash: str
) -> ApiKeyPrincipal | None:
    """What a key stands for now, cached for the gateway; None (cached too) if unusable,
    which a team key whose user is no longer in the team is.

    Read under "share" locks, held until this answer is cached and committed: a revoke,
    disable, role, policy or membership change in flight is waited for, or waits, then
    clears the cache. Always in the order team, key, user, membership (the team's row
    first, before the key that names it): the changes that lock two of them do it in that
    order too, so that none waits for the other in a cycle."""
    now = runtime.clock()
    team = await repository.lock_team_of_key(db, key_hash=key_hash)
    key = await repository.get_api_key_by_hash(db, key_hash=key_hash, lock="share")
    user = await repository.get_user(db, user_id=key.user_id, lock="share") if key else None
    expires_at = key.expires_at.timestamp() if key and key.expires_at else None
    in_team = (
        key is None
        or key.team_id is None
        or (
            team is not None
            and await repository.get_member(
                db, team_id=key.team_id, user_id=key.user_id, lock="share"
            )
            is not None
        )
    )
    if (
        key is None
        or user is None
        or user.disabled
        or key.revoked_at is not None
        or (expires_at is not None and expires_at <= now)
        or not in_team
    ):
        await repository.cache_api_key(
            runtime.redis, key_hash=key_hash, principal=None, seconds=INVALID_KEY_CACHE_SECONDS
        )
        return None
    roles = (await repository.roles_of(db, user_ids=[user.id])).get(user.id, [])
    permissions = await repository.permissions_of(db, roles=roles)
    if key.scopes is not None:
        permissions = sorted(set(permissions) & set(key.scopes))
    scopes: dict[ScopeKind, Policy] = {"key": policy_of(key), "user": policy_of(user)}
    if team is not None:
        scopes["team"] = policy_of(team)
    principal = ApiKeyPrincipal(
        key_id=str(key.id),
        user_id=str(user.id),
        roles=tuple(roles),
        permissions=tuple(permissions),
        expires_at=expires_at,
        team_id=str(key.team_id) if key.team_id else None,
        policies=Policies(scopes).to_wire(),
    )
    ttl = runtime.settings.api_key_cache_seconds
    if expires_at is not None:
        ttl = min(ttl, max(1, math.floor(expires_at - now)))
    await repository.cache_api_key(
        runtime.redis, key_hash=key_hash, principal=principal, seconds=ttl
    )
    return principal


# ---------------------------------------------------------------- users


async def me(runtime: Runtime, db: AsyncSession, *, caller: Identity) -> MeRead:
    """Who the caller is, what this credential may do, and their user's policy and spend."""
    assert caller.user_id
    user = await repository.get_user(db, user_id=uuid.UUID(caller.user_id))
    if user is None:
        raise UserNotFound("No such user.")
    roles = (await repository.roles_of(db, user_ids=[user.id])).get(user.id, [])
    policy = policy_of(user)
    (spend,) = await read_spend(runtime, [("user", user.id, policy)])
    read = MeRead(
        id=user.id,
        email=user.email,
        name=user.name,
        roles=roles,
        permissions=sorted(caller.permissions),
        **policy.to_wire(),
    )
    return with_spend(read, spend)


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


async def _user_detail(runtime: Runtime, user: User, roles: list[str]) -> UserDetail:
    (spend,) = await read_spend(runtime, [("user", user.id, policy_of(user))])
    return with_spend(UserDetail(**user_read(user, roles).model_dump()), spend)


async def get_user(runtime: Runtime, db: AsyncSession, *, user_id: uuid.UUID) -> UserDetail:
    user = await repository.get_user(db, user_id=user_id)
    if user is None:
        raise UserNotFound("No such user.")
    roles = (await repository.roles_of(db, user_ids=[user.id])).get(user.id, [])
    return await _user_detail(runtime, user, roles)


async def update_user(
    runtime: Runtime, db: AsyncSession, ctx: Context, *, user_id: uuid.UUID, body: UserUpdate
) -> UserDetail:
    """Roles, disabled flag, name, policy. A role change or a disable ends the user's
    sessions and empties the key cache, so it applies to the very next request; so does a
    policy change, rewritten into the sessions. Nobody raises their own policy (an admin
    only narrows theirs)."""
    user = await repository.get_user(db, user_id=user_id, lock="update")
    if user is None:
        raise UserNotFound("No such user.")
    roles = (await repository.roles_of(db, user_ids=[user.id])).get(user.id, [])
    is_self = ctx.actor_id == user.id
    if is_self and (body.disabled or (body.roles is not None and "admin" not in body.roles)):
        raise SelfLockout("Administrators cannot disable themselves or drop their own admin role.")
    old = policy_of(user)
    new = changed(old, body.policy_changes())
    if is_self:
        only_narrowing(old, new, "your own")
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
    store(user, new)
    await db.flush()
    hashes = []
    if access_changed or new != old:
        hashes = await repository.api_key_hashes_of(db, user_id=user.id)
    if access_changed:

        async def end_sessions() -> None:
            await runtime.sessions.delete_all_for_user(str(user.id))
            await repository.forget_api_keys(runtime.redis, key_hashes=hashes)

        await forget_now_and_after_commit(db, end_sessions)
    if new != old:
        wire = new.to_wire()

        async def rewrite_sessions() -> None:
            await repository.set_sessions_policy(runtime.redis, user_id=str(user.id), policy=wire)

        await policy_changed(
            runtime, db, ctx, scope="user", target=("user", user.id), old=old, new=new,
            key_hashes=hashes, also=rewrite_sessions,
        )  # fmt: skip
    await db.refresh(user)
    return await _user_detail(runtime, user, roles)


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
