"""Who a caller is, as auth records it in Redis and the gateway reads it on every request.

The Redis layout is the contract between the two (nothing else reads it):

- `auth:session:<sha256(token)>`: hash with user_id, roles, permissions (JSON lists),
  csrf_hash, created_at, last_seen_at, idle_timeout, expires_at, ip, user_agent, and
  policy (the user's common.policy.Policy in its wire form, JSON; `{}`: none), which auth
  rewrites in every session of the user when it changes. The key's TTL follows the idle
  timeout and never outlives the absolute lifetime.
- `auth:user-sessions:<user_id>`: set of a user's session hashes (to list or revoke them).
- `auth:api-key:<sha256(key)>`: the resolved key (JSON, `ApiKeyPrincipal`: with its team
  and the policies of the key, its user and its team), or "invalid", cached by auth; auth
  deletes it when any of those changes.
- `auth:api-key-last-used`: hash key_id -> unix time of the last use, flushed by auth.

Only hashes of secrets are ever stored: a Redis dump yields no usable session or key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis

from common.redis import as_text

SESSION_PREFIX = "auth:session:"
USER_SESSIONS_PREFIX = "auth:user-sessions:"
API_KEY_PREFIX = "auth:api-key:"
API_KEY_LAST_USED = "auth:api-key-last-used"
API_KEY_INVALID = b"invalid"


def secret_hash(secret: str) -> str:
    """SHA-256 of a high-entropy secret (session token, API key, CSRF token), hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> str:
    """256 bits from the OS CSPRNG, URL-safe."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Session:
    id: str  # the hash of the token: safe to show, useless as a cookie
    user_id: str
    roles: tuple[str, ...]
    permissions: tuple[str, ...]
    csrf_hash: str
    created_at: float
    last_seen_at: float
    idle_timeout: float
    expires_at: float
    ip: str
    user_agent: str
    policy: dict[str, Any] = field(default_factory=dict)  # the user's, in its wire form

    def csrf_matches(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(secret_hash(token or ""), self.csrf_hash)

    @classmethod
    def from_redis(cls, session_id: str, fields: dict[Any, Any]) -> Session:
        text = {as_text(k): as_text(v) for k, v in fields.items()}
        return cls(
            id=session_id,
            user_id=text["user_id"],
            roles=tuple(json.loads(text["roles"])),
            permissions=tuple(json.loads(text["permissions"])),
            csrf_hash=text["csrf_hash"],
            created_at=float(text["created_at"]),
            last_seen_at=float(text["last_seen_at"]),
            idle_timeout=float(text["idle_timeout"]),
            expires_at=float(text["expires_at"]),
            ip=text.get("ip", ""),
            user_agent=text.get("user_agent", ""),
            policy=json.loads(text.get("policy") or "{}"),
        )


# Lua: touch_session(key, now) -> the session's fields if it is neither idle too long nor
# past its lifetime, with last_seen_at moved to now and the TTL slid; else deletes it and
# returns nil. Shared with the gateway's own script (which also counts the request).
TOUCH_SESSION_LUA = """
local function touch_session(key, now_text)
  local data = redis.call('HGETALL', key)
  if #data == 0 then return nil end
  local h = {}
  for i = 1, #data, 2 do h[data[i]] = data[i + 1] end
  local now = tonumber(now_text)
  local idle = tonumber(h['idle_timeout'])
  local expires_at = tonumber(h['expires_at'])
  if now >= expires_at or now - tonumber(h['last_seen_at']) >= idle then
    redis.call('DEL', key)
    return nil
  end
  redis.call('HSET', key, 'last_seen_at', now_text)
  redis.call('EXPIRE', key, math.max(1, math.ceil(math.min(idle, expires_at - now))))
  h['last_seen_at'] = now_text
  return h
end
"""
_TOUCH = (
    TOUCH_SESSION_LUA
    + """
local h = touch_session(KEYS[1], ARGV[1])
if not h then return false end
local out = {}
for k, v in pairs(h) do out[#out + 1] = k; out[#out + 1] = v end
return out
"""
)


class SessionStore:
    """Sessions in Redis: created by auth, touched by the gateway on every request."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._touch = redis.register_script(_TOUCH)

    async def create(
        self,
        *,
        user_id: str,
        roles: Iterable[str],
        permissions: Iterable[str],
        now: float,
        idle_timeout: float,
        lifetime: float,
        ip: str,
        user_agent: str,
        policy: dict[str, Any] | None = None,
    ) -> tuple[str, str, Session]:
        """A fresh session: returns (token for the cookie, CSRF token, session)."""
        token, csrf = new_token(), new_token()
        session = Session(
            id=secret_hash(token),
            user_id=user_id,
            roles=tuple(roles),
            permissions=tuple(sorted(set(permissions))),
            csrf_hash=secret_hash(csrf),
            created_at=now,
            last_seen_at=now,
            idle_timeout=idle_timeout,
            expires_at=now + lifetime,
            ip=ip,
            user_agent=user_agent[:512],
            policy=dict(policy or {}),
        )
        record = asdict(session)
        record.pop("id")
        record["roles"] = json.dumps(list(session.roles))
        record["permissions"] = json.dumps(list(session.permissions))
        record["policy"] = json.dumps(session.policy, separators=(",", ":"))
        key = SESSION_PREFIX + session.id
        index = USER_SESSIONS_PREFIX + user_id
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: str(v) for k, v in record.items()})
            pipe.expire(key, int(min(idle_timeout, lifetime)) + 1)
            pipe.sadd(index, session.id)
            pipe.expire(index, int(lifetime) + 60)
            await pipe.execute()
        return token, csrf, session

    async def touch(self, session_id: str, *, now: float) -> Session | None:
        fields = await self._touch(keys=[SESSION_PREFIX + session_id], args=[repr(now)])
        if not fields:
            return None
        pairs = dict(zip(fields[::2], fields[1::2], strict=True))
        return Session.from_redis(session_id, pairs)

    async def get(self, session_id: str) -> Session | None:
        fields = await self._redis.hgetall(SESSION_PREFIX + session_id)
        return Session.from_redis(session_id, fields) if fields else None

    async def list_for_user(self, user_id: str) -> list[Session]:
        index = USER_SESSIONS_PREFIX + user_id
        ids = sorted(as_text(i) for i in await self._redis.smembers(index))
        sessions: list[Session] = []
        gone: list[str] = []
        for session_id in ids:
            session = await self.get(session_id)
            (sessions.append(session) if session else gone.append(session_id))
        if gone:
            await self._redis.srem(index, *gone)
        return sessions

    async def delete(self, session_id: str, user_id: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(SESSION_PREFIX + session_id)
            pipe.srem(USER_SESSIONS_PREFIX + user_id, session_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def delete_all_for_user(self, user_id: str) -> int:
        index = USER_SESSIONS_PREFIX + user_id
        ids = [as_text(i) for i in await self._redis.smembers(index)]
        async with self._redis.pipeline(transaction=True) as pipe:
            for session_id in ids:
                pipe.delete(SESSION_PREFIX + session_id)
            pipe.delete(index)
            results = await pipe.execute()
        return sum(1 for r in results[:-1] if r)


@dataclass(frozen=True)
class ApiKeyPrincipal:
    """What a valid API key stands for, as auth resolved it."""

    key_id: str
    user_id: str
    roles: tuple[str, ...]
    permissions: tuple[str, ...]
    expires_at: float | None
    team_id: str | None = None
    # common.policy.Policies in its wire form: the key's, its user's and its team's.
    policies: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> ApiKeyPrincipal:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            key_id=data["key_id"],
            user_id=data["user_id"],
            roles=tuple(data["roles"]),
            permissions=tuple(data["permissions"]),
            expires_at=data.get("expires_at"),
            team_id=data.get("team_id"),
            policies=data.get("policies"),
        )
