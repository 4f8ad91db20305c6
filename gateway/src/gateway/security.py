"""Authentication (session cookie or API key), CSRF and rate limits: what is checked, what
is refused, and each caller's budget. Their storage, in Redis, is gateway/repository.py."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import structlog
from fastapi import Request

from common.budgets import GatewayHold
from common.errors import ServiceUnavailable
from common.identity import Identity
from common.principals import secret_hash
from gateway.errors import (
    AuthUnavailable,
    CsrfFailed,
    InvalidKeysLimited,
    RateLimited,
    Unauthenticated,
)
from gateway.repository import (
    WINDOW_SECONDS,
    CallerLimits,
    CredentialCache,
    KeyFound,
    RateCount,
    RateCounters,
    SessionFound,
)
from gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_KEY_SCHEME = "sk-"
# What a refusal names, by the scope of the limit reached (repository.Count.scope).
SCOPE_NAMES = {
    "role": "Your role's rate limit",
    "user": "Your user's rate limit",
    "key": "This API key's rate limit",
    "team": "The team's rate limit",
    "address": "This address's rate limit",
}
# A session's policy as stored when the user has none (or the session predates policies).
_NO_POLICY = ("", "{}")


@dataclass(frozen=True)
class Principal:
    user_id: str
    kind: Literal["user", "api_key"]
    roles: tuple[str, ...]
    permissions: tuple[str, ...]
    session_id: str | None = None
    key_id: str | None = None
    csrf_hash: str | None = None
    # The key's team, and the policies that govern the caller (common.policy, wire form).
    team: str | None = None
    policies: dict[str, Any] | None = None
    # What this model call holds of the caller's budgets (common.budgets.GatewayHold).
    hold: GatewayHold | None = None

    def identity(self) -> Identity:
        return Identity(
            sub=self.user_id,
            kind=self.kind,
            iss="gateway",
            roles=self.roles,
            permissions=self.permissions,
            sid=self.session_id,
            kid=self.key_id,
            team=self.team,
            policies=self.policies,
            hold=None if self.hold is None else self.hold.to_wire(),
        )


@dataclass(frozen=True)
class RateDecision:
    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }


@dataclass(frozen=True)
class Admission:
    """Who is calling, and the rate decision for this request (None: unlimited)."""

    principal: Principal
    rate: RateDecision | None


class RedisOutage:
    """The gateway's Redis, seen failing: for the next `hold` seconds every request that
    needs it is refused at once (503), rather than each one waiting out the timeout (a
    paused or cut-off Redis) or queueing for a pooled connection behind those that do.
    Then requests try it again, and the first to succeed ends the outage."""

    def __init__(self, hold: float) -> None:
        self._hold = hold
        self._until = 0.0

    def check(self) -> None:
        if time.monotonic() < self._until:
            raise redis_unavailable()

    def failed(self) -> None:
        self._until = time.monotonic() + self._hold


def redis_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Authentication is unavailable; try again shortly.", headers={"Retry-After": "1"}
    )


class Security:
    def __init__(
        self,
        *,
        credentials: CredentialCache,
        counters: RateCounters,
        auth: httpx.AsyncClient,
        settings: GatewaySettings,
        clock: Callable[[], float],
    ) -> None:
        self._credentials = credentials
        self._counters = counters
        self._auth = auth
        self._settings = settings
        self.clock = clock
        # Redis seen failing (admission.caller_identity says so): refuse at once for a moment.
        self.outage = RedisOutage(hold=settings.redis_timeout_seconds)
        # The resolutions of uncached keys in flight on this replica, by key hash.
        self._resolving: dict[str, asyncio.Future[None]] = {}
        # What a signed-in caller's request counts against, for model calls (True) and the
        # others: the role defaults (a caller gets the most generous of its roles'), and on
        # model calls the policies' rpm limits too. None: nothing limits such requests (no
        # role has a default and no policy limits them), so they are not counted at all.
        roles = settings.rate_limits.items()
        default = CallerLimits(
            "default",
            settings.rate_limit_per_minute,
            tuple((role, budget.default) for role, budget in roles),
        )
        self._limits: dict[bool, CallerLimits | None] = {
            True: CallerLimits(
                "model",
                settings.rate_limit_model_per_minute,
                tuple((role, budget.model) for role, budget in roles),
            ),
            False: default
            if default.default > 0 or any(limit > 0 for _, limit in default.by_role)
            else None,
        }

    # ------------------------------------------------------------ authentication

    async def admit(
        self, request: Request, *, model: bool, client: str, holds: bool = False
    ) -> Admission:
        """Authenticate the caller and count the request against its limits (`model` calls
        have their own, and the policies' rpm limits), in one Redis round trip when the
        credential is cached; on `holds` routes (gateway/rbac.py) an API key's budgets are
        held in the same step. `client`: the client's address, as per-address counters
        count it."""
        limits = self._limits[model]
        authorization = request.headers.get("authorization")
        if authorization is not None:
            self.outage.check()
            key_hash = _api_key_hash(authorization)
            now = self.clock()
            # A model call of a key under a budget is admitted and held here, in the same
            # script (common.budgets.GATEWAY_HOLD_LUA); inference takes the hold over.
            call = _HoldRequest(now, self._settings.budget_hold_seconds) if holds else None
            spec = call.spec if call else ""
            found = await self._credentials.api_key(key_hash, now, limits, spec)
            if found is None:
                # Not cached yet: auth resolves it (and caches the answer), then count.
                await self._resolve_once(key_hash, client)
                found = await self._credentials.api_key(key_hash, now, limits, spec)
            return _key_admission(found, call)
        token = request.cookies.get(self._settings.session_cookie_name)
        if not token:
            raise Unauthenticated("Log in, or send an API key as `Authorization: Bearer <key>`.")
        self.outage.check()
        session_id = secret_hash(token)
        found_session = await self._credentials.session(session_id, self.clock(), limits)
        return _session_admission(session_id, found_session)

    async def _resolve_once(self, key_hash: str, client: str) -> None:
        """One resolution of a key at a time on this replica: the concurrent first calls
        of a new key (a job starting its workers) wait for it, rather than each asking
        auth and counting against the address's budget of unknown keys. Whatever it
        raises, every waiter raises."""
        pending = self._resolving.get(key_hash)
        if pending is None:
            pending = asyncio.ensure_future(self._resolve_counted(key_hash, client))
            self._resolving[key_hash] = pending
            pending.add_done_callback(lambda done: self._resolved(key_hash, done))
        # A waiter that goes away (its client hung up) leaves the resolution to the others.
        await asyncio.shield(pending)

    def _resolved(self, key_hash: str, done: asyncio.Future[None]) -> None:
        self._resolving.pop(key_hash, None)
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone

    async def _resolve_counted(self, key_hash: str, client: str) -> None:
        """Ask auth about a key, as one of the client's failed checks until auth knows the
        key. Each unknown key costs auth a database query: past the client's budget of
        them, keys not in the cache are refused without asking. Counted before asking
        (with the check, atomically), so that a burst cannot outrun the budget."""
        limit = self._settings.invalid_api_keys_per_minute
        if limit <= 0:
            await self._resolve(key_hash)
            return
        now = self.clock()
        counted = await self._counters.hit(
            "invalid_api_keys", "address", f"ip:{client}", limit, now
        )
        if not counted.admitted:
            retry = _judge(counted)[1]
            raise InvalidKeysLimited(
                f"Too many invalid API keys from this address; retry in {retry} s.",
                headers={"Retry-After": str(retry)},
            )
        await self._resolve(key_hash)  # raises for an unknown key (or auth down): counted
        await self._counters.give_back("invalid_api_keys", f"ip:{client}", now)

    async def _resolve(self, key_hash: str) -> None:
        """Ask auth about a key it has not cached; it caches the answer (valid or not)."""
        try:
            response = await self._auth.post(
                "/internal/api-keys/resolve", json={"key_hash": key_hash}, timeout=5.0
            )
        except httpx.HTTPError as exc:
            log.warning("api key resolution failed", error=type(exc).__name__)
            raise AuthUnavailable("Cannot check the API key right now.") from None
        if response.status_code == 404:
            raise Unauthenticated("Invalid API key.")
        if response.status_code != 200:
            log.warning("api key resolution failed", status=response.status_code)
            raise AuthUnavailable("Cannot check the API key right now.")

    # ------------------------------------------------------------ CSRF

    def check_csrf(self, request: Request, principal: Principal) -> None:
        """Cookie-authenticated unsafe requests must echo the session's CSRF token (the
        readable csrf_token cookie) in X-CSRF-Token; API keys need none."""
        if principal.kind != "user" or request.method not in UNSAFE_METHODS:
            return
        header = request.headers.get("x-csrf-token")
        if not header or principal.csrf_hash is None:
            raise CsrfFailed("Missing X-CSRF-Token header (copy the csrf_token cookie).")
        if not hmac.compare_digest(secret_hash(header), principal.csrf_hash):
            raise CsrfFailed("The X-CSRF-Token header does not belong to this session.")

    # ------------------------------------------------------------ rate limits

    async def hit(self, subject: str, bucket: str, limit: int) -> RateDecision | None:
        """One request of a caller without credentials (`subject`: its address), counted if
        admitted; None when unlimited (limit 0); RateLimited past the limit."""
        if limit <= 0:
            return None
        self.outage.check()
        return _decide(await self._counters.hit(bucket, "address", subject, limit, self.clock()))


def _session_admission(session_id: str, found: SessionFound | None) -> Admission:
    if found is None:
        raise Unauthenticated("The session has ended; log in again.")
    user_id, roles, permissions, csrf_hash, policy, counted = found
    principal = Principal(
        user_id=user_id,
        kind="user",
        roles=roles,
        permissions=permissions,
        session_id=session_id,
        csrf_hash=csrf_hash,
        # The user's policy governs a session's calls; parsed only when there is one.
        policies=None if policy in _NO_POLICY else {"user": json.loads(policy)},
    )
    return Admission(principal, _decide(counted))


class _HoldRequest:
    """What a model call asks the credential script to hold: a call id, the time, how long."""

    __slots__ = ("call_id", "now", "spec", "until")

    def __init__(self, now: float, seconds: float) -> None:
        self.call_id = secrets.token_hex(16)
        self.now = now
        self.until = now + seconds
        self.spec = GatewayHold.spec(self.call_id, now, self.until)

    def granted(self, reply: str) -> GatewayHold | None:
        if not reply:
            return None
        return GatewayHold.from_reply(reply, self.call_id, self.now, self.until)


def _key_admission(found: KeyFound | None, call: _HoldRequest | None) -> Admission:
    if not isinstance(found, tuple):
        if found == "expired":
            raise Unauthenticated("This API key has expired.")
        raise Unauthenticated("Invalid API key.")
    resolved, counted, held = found
    principal = Principal(
        user_id=resolved.user_id,
        kind="api_key",
        roles=resolved.roles,
        permissions=resolved.permissions,
        key_id=resolved.key_id,
        team=resolved.team_id,
        policies=resolved.policies,
        hold=call.granted(held) if call is not None else None,
    )
    return Admission(principal, _decide(counted))


def _decide(counted: RateCount) -> RateDecision | None:
    """The headers of an admitted request (None: no limit applies); RateLimited, naming the
    limit reached, for a refused one."""
    if not counted.counts:
        return None
    decision, retry, scope, limit = _judge(counted)
    if not counted.admitted:
        raise RateLimited(
            f"{SCOPE_NAMES.get(scope, 'The rate limit')} of {limit} requests a minute is "
            f"reached; retry in {retry} s.",
            headers={**decision.headers(), "Retry-After": str(retry)},
            scope=scope,
            limit=limit,
        )
    return decision


def _judge(counted: RateCount) -> tuple[RateDecision, int, str, int]:
    """The tightest of the counters a request was checked against (the least remaining;
    among those, the longest to wait): its headers, the seconds until one more request
    would pass (at least 1), and its scope and limit. Counts as the script saw them, with
    this request added where it was counted."""
    window = counted.window
    added = 1 if counted.admitted else 0
    tightest: tuple[int, float, str, int] | None = None
    for count in counted.counts:
        current = count.current + added
        used = count.previous * window.weight + current
        remaining = max(0, math.floor(count.limit - used))
        wait = _wait(count.previous, current, count.limit, window.elapsed)
        if tightest is None or (remaining, -wait) < (tightest[0], -tightest[1]):
            tightest = (remaining, wait, count.scope, count.limit)
    assert tightest is not None
    remaining, wait, scope, limit = tightest
    retry = max(1, math.ceil(wait))
    # Reset: when one more request would pass if none remains, else the window's end.
    reset = retry if remaining == 0 else max(1, math.ceil(WINDOW_SECONDS - window.elapsed))
    return RateDecision(limit=limit, remaining=remaining, reset=reset), retry, scope, limit


def _wait(previous: int, current: int, limit: int, elapsed: float) -> float:
    """Seconds from `elapsed` into the current window until one more request would be
    admitted (0: now), if no other is counted meanwhile. The previous window's weight falls
    from 1 to 0 over the current window; once the current window holds the limit, its
    count has to slide out over the next one."""
    room = limit - 1 - current  # what the previous window may still weigh
    if room >= 0:
        if previous <= room:
            return 0.0
        return max(0.0, WINDOW_SECONDS * (1 - room / previous) - elapsed)
    return WINDOW_SECONDS - elapsed + WINDOW_SECONDS * (1 - (limit - 1) / current)


def _api_key_hash(authorization: str) -> str:
    """The hash of the API key in an Authorization header; Unauthenticated if there is
    none, or what is there cannot be one of ours."""
    scheme, _, credential = authorization.partition(" ")
    key = credential.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthenticated("Use `Authorization: Bearer <API key>`.")
    if not key.startswith(API_KEY_SCHEME) or len(key) > 200:
        raise Unauthenticated("Invalid API key.")
    return secret_hash(key)
