"""Authentication (session cookie or API key), CSRF and rate limits, all through Redis."""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx
import structlog
from fastapi import Request
from redis.asyncio import Redis

from common.identity import Identity
from common.principals import (
    API_KEY_INVALID,
    API_KEY_LAST_USED,
    API_KEY_PREFIX,
    SESSION_PREFIX,
    TOUCH_SESSION_LUA,
    ApiKeyPrincipal,
    secret_hash,
)
from common.redis import as_text
from gateway.errors import (
    AuthUnavailable,
    CsrfFailed,
    InvalidKeysLimited,
    RateLimited,
    Unauthenticated,
)
from gateway.settings import GatewaySettings, RateBudget

log = structlog.get_logger(__name__)


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_KEY_SCHEME = "sk-"
WINDOW_SECONDS = 60


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
# Take back one count of a window that may have ended meanwhile (never recreate its key).
_GIVE_BACK = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECR', KEYS[1]) end
"""

# The credential check and the rate count in one round trip. The rate-limit key names the
# user, known only once the credential is read, so the script builds it from ARGV[2]
# (prefix) and ARGV[3] (window suffix): fine on one Redis (or Sentinel), not on a Cluster.
# ARGV[1] is now, ARGV[4] the window's TTL.
_COUNT = """
local function count(user_id)
  if ARGV[2] == '' then return -1 end
  local key = ARGV[2] .. user_id .. ARGV[3]
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, ARGV[4]) end
  return n
end
"""
# API key: {} not cached, {'invalid'}, {'expired'}, or {resolved JSON, count}; the last
# use is recorded for auth to flush.
_API_KEY = (
    _COUNT
    + """
local cached = redis.call('GET', KEYS[1])
if not cached then return {} end
if cached == 'invalid' then return {'invalid'} end
local key = cjson.decode(cached)
local expires = key['expires_at']
if expires ~= nil and expires ~= cjson.null and tonumber(expires) <= tonumber(ARGV[1]) then
  return {'expired'}
end
redis.call('HSET', KEYS[2], key['key_id'], ARGV[1])
return {cached, count(key['user_id'])}
"""
)
# Session: touch it (slide or end it, as SessionStore.touch), then count; {} when it ended.
_SESSION = (
    _COUNT
    + TOUCH_SESSION_LUA
    + """
local h = touch_session(KEYS[1], ARGV[1])
if not h then return {} end
return {h['user_id'], h['roles'], h['permissions'], h['csrf_hash'], count(h['user_id'])}
"""
)


@dataclass(frozen=True)
class Admission:
    """Who is calling, and the rate decision for this request (None: unlimited)."""

    principal: Principal
    rate: RateDecision | None


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
        self._hit = redis.register_script(_HIT)
        self._give_back = redis.register_script(_GIVE_BACK)
        self._api_key_script = redis.register_script(_API_KEY)
        self._session_script = redis.register_script(_SESSION)
        self.clock = clock
        # Buckets with a budget for someone: the others are not counted at all.
        budgets = [self.budget(()), *settings.rate_limits.values()]
        self._counted = {
            True: any(b.model > 0 for b in budgets),
            False: any(b.default > 0 for b in budgets),
        }

    # ------------------------------------------------------------ authentication

    async def admit(self, request: Request, *, model: bool, client: str) -> Admission:
        """Authenticate the caller and count the request against its budget (`model`
        calls have their own), in one Redis round trip when the credential is cached.
        `client`: the client's address, as per-address counters count it."""
        authorization = request.headers.get("authorization")
        if authorization is not None:
            scheme, _, credential = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise Unauthenticated("Use `Authorization: Bearer <API key>`.")
            return await self._api_key(credential.strip(), model=model, client=client)
        token = request.cookies.get(self._settings.session_cookie_name)
        if token:
            return await self._session(token, model=model)
        raise Unauthenticated("Log in, or send an API key as `Authorization: Bearer <key>`.")

    def _window(self, model: bool) -> tuple[float, list[str | int]]:
        """Now, and the script arguments that count a request in this minute's window."""
        now = self.clock()
        window = int(now // WINDOW_SECONDS)
        bucket = "model" if model else "default"
        prefix = f"gateway:ratelimit:{bucket}:user:" if self._counted[model] else ""
        return now, [repr(now), prefix, f":{window}", WINDOW_SECONDS + 1]

    async def _session(self, token: str, *, model: bool) -> Admission:
        session_id = secret_hash(token)
        now, args = self._window(model)
        found = await self._session_script(keys=[SESSION_PREFIX + session_id], args=args)
        if not found:
            raise Unauthenticated("The session has ended; log in again.")
        user_id, roles, permissions, csrf_hash, count = (
            as_text(found[0]), json.loads(found[1]), json.loads(found[2]), as_text(found[3]),
            int(found[4]),
        )  # fmt: skip
        principal = Principal(
            user_id=user_id,
            kind="user",
            roles=tuple(roles),
            permissions=tuple(permissions),
            session_id=session_id,
            csrf_hash=csrf_hash,
        )
        return Admission(principal, self._decide(principal, count, now, model=model))

    async def _api_key(self, key: str, *, model: bool, client: str) -> Admission:
        if not key.startswith(API_KEY_SCHEME) or len(key) > 200:
            raise Unauthenticated("Invalid API key.")
        key_hash = secret_hash(key)
        keys = [API_KEY_PREFIX + key_hash, API_KEY_LAST_USED]
        now, args = self._window(model)
        found = await self._api_key_script(keys=keys, args=args)
        if not found:
            # Not cached yet: auth resolves it (and caches the answer), then count.
            await self._resolve_counted(key_hash, client)
            now, args = self._window(model)
            found = await self._api_key_script(keys=keys, args=args)
        if not found or found[0] == API_KEY_INVALID:
            raise Unauthenticated("Invalid API key.")
        if found[0] == b"expired":
            raise Unauthenticated("This API key has expired.")
        resolved = ApiKeyPrincipal.from_json(found[0])
        principal = Principal(
            user_id=resolved.user_id,
            kind="api_key",
            roles=resolved.roles,
            permissions=resolved.permissions,
            key_id=resolved.key_id,
        )
        return Admission(principal, self._decide(principal, int(found[1]), now, model=model))

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
        window = int(now // WINDOW_SECONDS)
        counter = f"gateway:ratelimit:invalid_api_keys:ip:{client}:{window}"
        count = int(await self._hit(keys=[counter], args=[WINDOW_SECONDS + 1]))
        if count > limit:
            reset = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
            raise InvalidKeysLimited(
                f"Too many invalid API keys from this address; retry in {reset} s.",
                headers={"Retry-After": str(reset)},
            )
        await self._resolve(key_hash)  # raises for an unknown key (or auth down): counted
        await self._give_back(keys=[counter])

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
        window = int(now // WINDOW_SECONDS)
        reset = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
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
        key = f"gateway:ratelimit:{bucket}:{subject}:{int(now // WINDOW_SECONDS)}"
        count = int(await self._hit(keys=[key], args=[WINDOW_SECONDS + 1]))
        return self._judge(limit, count, now)
