"""Authentication (session cookie or API key), CSRF and rate limits, all through Redis."""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx
import structlog
from fastapi import Request
from redis.asyncio import Redis

from common.errors import Forbidden, ServiceUnavailable, TooManyRequests, Unauthorized
from common.identity import Identity
from common.principals import (
    API_KEY_INVALID,
    API_KEY_LAST_USED,
    API_KEY_PREFIX,
    ApiKeyPrincipal,
    SessionStore,
    secret_hash,
)
from gateway.settings import GatewaySettings, RateBudget

log = structlog.get_logger(__name__)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_KEY_SCHEME = "sk-"
WINDOW_SECONDS = 60


class Unauthenticated(Unauthorized):
    slug = "authentication-required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="llm-platform"'})


class CsrfFailed(Forbidden):
    slug = "csrf"


class RateLimited(TooManyRequests):
    slug = "rate-limited"


class AuthUnavailable(ServiceUnavailable):
    slug = "auth-unavailable"


@dataclass(frozen=True)
class Principal:
    user_id: str
    kind: Literal["user", "api_key"]
    roles: tuple[str, ...]
    permissions: tuple[str, ...]
    session_id: str | None = None
    key_id: str | None = None
    csrf_hash: str | None = None

    @property
    def rate_key(self) -> str:
        return f"user:{self.user_id}"

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


# One atomic step: count this request in the current window, start the window's TTL.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


class Security:
    def __init__(
        self,
        *,
        redis: Redis,
        auth: httpx.AsyncClient,
        settings: GatewaySettings,
        clock: Callable[[], float],
    ) -> None:
        self._redis = redis
        self._auth = auth
        self._settings = settings
        self._sessions = SessionStore(redis)
        self._hit = redis.register_script(_HIT)
        self.clock = clock

    # ------------------------------------------------------------ authentication

    async def authenticate(self, request: Request) -> Principal:
        authorization = request.headers.get("authorization")
        if authorization is not None:
            scheme, _, credential = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise Unauthenticated("Use `Authorization: Bearer <API key>`.")
            return await self._api_key(credential.strip())
        token = request.cookies.get(self._settings.session_cookie_name)
        if token:
            return await self._session(token)
        raise Unauthenticated("Log in, or send an API key as `Authorization: Bearer <key>`.")

    async def _session(self, token: str) -> Principal:
        session = await self._sessions.touch(secret_hash(token), now=self.clock())
        if session is None:
            raise Unauthenticated("The session has ended; log in again.")
        return Principal(
            user_id=session.user_id,
            kind="user",
            roles=session.roles,
            permissions=session.permissions,
            session_id=session.id,
            csrf_hash=session.csrf_hash,
        )

    async def _api_key(self, key: str) -> Principal:
        if not key.startswith(API_KEY_SCHEME) or len(key) > 200:
            raise Unauthenticated("Invalid API key.")
        key_hash = secret_hash(key)
        cached = await self._redis.get(API_KEY_PREFIX + key_hash)
        if cached == API_KEY_INVALID:
            raise Unauthenticated("Invalid API key.")
        resolved = ApiKeyPrincipal.from_json(cached) if cached else await self._resolve(key_hash)
        now = self.clock()
        if resolved.expires_at is not None and resolved.expires_at <= now:
            raise Unauthenticated("This API key has expired.")
        await self._redis.hset(API_KEY_LAST_USED, resolved.key_id, repr(now))
        return Principal(
            user_id=resolved.user_id,
            kind="api_key",
            roles=resolved.roles,
            permissions=resolved.permissions,
            key_id=resolved.key_id,
        )

    async def _resolve(self, key_hash: str) -> ApiKeyPrincipal:
        """Not cached yet: auth looks it up (and caches the answer for the next request)."""
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
        try:
            return ApiKeyPrincipal.from_json(response.content)
        except (ValueError, KeyError, TypeError):
            log.warning("api key resolution gave an unexpected answer")
            raise AuthUnavailable("Cannot check the API key right now.") from None

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

    async def hit(self, subject: str, bucket: str, limit: int) -> RateDecision | None:
        """Count one request; None when unlimited (limit 0); RateLimited past the budget."""
        if limit <= 0:
            return None
        now = self.clock()
        window = int(now // WINDOW_SECONDS)
        key = f"gateway:ratelimit:{bucket}:{subject}:{window}"
        count = int(await self._hit(keys=[key], args=[WINDOW_SECONDS + 1]))
        reset = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
        decision = RateDecision(limit=limit, remaining=max(0, limit - count), reset=reset)
        if count > limit:
            raise RateLimited(
                f"Rate limit of {limit} requests per minute reached; retry in {reset} s.",
                headers={**decision.headers(), "Retry-After": str(reset)},
            )
        return decision
