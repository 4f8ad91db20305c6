"""Authentication (session cookie or API key), CSRF and rate limits: what is checked, what
is refused, and each caller's budget. Their storage, in Redis, is gateway/repository.py."""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx
import structlog
from fastapi import Request

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
    CredentialCache,
    KeyFound,
    RateCounters,
    SessionFound,
)
from gateway.settings import GatewaySettings, RateBudget

log = structlog.get_logger(__name__)


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_KEY_SCHEME = "sk-"


@dataclass(frozen=True)
class Principal:
    user_id: str
    kind: Literal["user", "api_key"]
    roles: tuple[str, ...]
    permissions: tuple[str, ...]
    session_id: str | None = None
    key_id: str | None = None
    csrf_hash: str | None = None

    def identity(self) -> Identity:
        return Identity(
            sub=self.user_id,
            kind=self.kind,
            iss="gateway",
            roles=self.roles,
            permissions=self.permissions,
            sid=self.session_id,
            kid=self.key_id,
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
        # The bucket a signed-in caller's request counts in, for model calls (True) and the
        # others; None when nobody has a budget there: such requests are not counted at all.
        budgets = [self.budget(()), *settings.rate_limits.values()]
        self._user_bucket: dict[bool, str | None] = {
            True: "model" if any(b.model > 0 for b in budgets) else None,
            False: "default" if any(b.default > 0 for b in budgets) else None,
        }

    # ------------------------------------------------------------ authentication

    async def admit(self, request: Request, *, model: bool, client: str) -> Admission:
        """Authenticate the caller and count the request against its budget (`model`
        calls have their own), in one Redis round trip when the credential is cached.
        `client`: the client's address, as per-address counters count it."""
        bucket = self._user_bucket[model]
        authorization = request.headers.get("authorization")
        if authorization is not None:
            key_hash = _api_key_hash(authorization)
            now = self.clock()
            found = await self._credentials.api_key(key_hash, now, bucket)
            if found is None:
                # Not cached yet: auth resolves it (and caches the answer), then count.
                await self._resolve_counted(key_hash, client)
                now = self.clock()
                found = await self._credentials.api_key(key_hash, now, bucket)
            return self._key_admission(found, now, model=model)
        token = request.cookies.get(self._settings.session_cookie_name)
        if not token:
            raise Unauthenticated("Log in, or send an API key as `Authorization: Bearer <key>`.")
        session_id = secret_hash(token)
        now = self.clock()
        found_session = await self._credentials.session(session_id, now, bucket)
        return self._session_admission(session_id, found_session, now, model=model)

    def _session_admission(
        self, session_id: str, found: SessionFound | None, now: float, *, model: bool
    ) -> Admission:
        if found is None:
            raise Unauthenticated("The session has ended; log in again.")
        user_id, roles, permissions, csrf_hash, count = found
        principal = Principal(
            user_id=user_id,
            kind="user",
            roles=roles,
            permissions=permissions,
            session_id=session_id,
            csrf_hash=csrf_hash,
        )
        return Admission(principal, self._decide(principal, count, now, model=model))

    def _key_admission(self, found: KeyFound | None, now: float, *, model: bool) -> Admission:
        if not isinstance(found, tuple):
            if found == "expired":
                raise Unauthenticated("This API key has expired.")
            raise Unauthenticated("Invalid API key.")
        resolved, count = found
        principal = Principal(
            user_id=resolved.user_id,
            kind="api_key",
            roles=resolved.roles,
            permissions=resolved.permissions,
            key_id=resolved.key_id,
        )
        return Admission(principal, self._decide(principal, count, now, model=model))

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
        count = int(await self._counters.hit("invalid_api_keys", f"ip:{client}", now))
        if count > limit:
            reset = _reset(now)
            raise InvalidKeysLimited(
                f"Too many invalid API keys from this address; retry in {reset} s.",
                headers={"Retry-After": str(reset)},
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

    def budget(self, roles: tuple[str, ...]) -> RateBudget:
        """The most generous budget among the caller's roles, else the default."""
        budgets = [self._settings.rate_limits[r] for r in roles if r in self._settings.rate_limits]
        if not budgets:
            return RateBudget(
                default=self._settings.rate_limit_per_minute,
                model=self._settings.rate_limit_model_per_minute,
            )
        return RateBudget(
            default=max(b.default for b in budgets), model=max(b.model for b in budgets)
        )

    def _decide(
        self, principal: Principal, count: int, now: float, *, model: bool
    ) -> RateDecision | None:
        budget = self.budget(principal.roles)
        return self._judge(budget.model if model else budget.default, count, now)

    @staticmethod
    def _judge(limit: int, count: int, now: float) -> RateDecision | None:
        """The decision for the `count`-th request of this window; RateLimited past it."""
        if limit <= 0:
            return None
        reset = _reset(now)
        decision = RateDecision(limit=limit, remaining=max(0, limit - count), reset=reset)
        if count > limit:
            raise RateLimited(
                f"Rate limit of {limit} requests per minute reached; retry in {reset} s.",
                headers={**decision.headers(), "Retry-After": str(reset)},
            )
        return decision

    async def hit(self, subject: str, bucket: str, limit: int) -> RateDecision | None:
        """Count one request; None when unlimited (limit 0); RateLimited past the budget."""
        if limit <= 0:
            return None
        now = self.clock()
        count = int(await self._counters.hit(bucket, subject, now))
        return self._judge(limit, count, now)


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


def _reset(now: float) -> int:
    """Seconds until the current window ends (at least 1): when to try again."""
    window = int(now // WINDOW_SECONDS)
    return max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
