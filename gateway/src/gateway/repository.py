"""The gateway's storage: every Redis key it names, every script it runs, every call.

The gateway's own keys:

- `gateway:ratelimit:<bucket>:<subject>:<window>`: the requests counted in one window
  (`<window>` = unix time // WINDOW_SECONDS), with a TTL of a window and a second. Buckets
  and subjects: `default` and `model` count `user:<user_id>` (all of a user's keys and
  sessions together), `anonymous` counts `ip:<client>`, and `invalid_api_keys` counts
  `ip:<client>` for keys that auth had to be asked about.

Auth's keys, read (and the last use written) here, named in common/principals.py, which
describes their layout: the sessions `auth:session:<hash>` (touched: slid or ended), the
API-key cache `auth:api-key:<hash>` and the last-used hash `auth:api-key-last-used`.

A credential check and the count of its request are one script, one round trip.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, Literal

from redis.asyncio import Redis

from common.principals import (
    API_KEY_INVALID,
    API_KEY_LAST_USED,
    API_KEY_PREFIX,
    SESSION_PREFIX,
    TOUCH_SESSION_LUA,
    ApiKeyPrincipal,
)
from common.redis import as_text

WINDOW_SECONDS = 60
RATE_LIMIT_PREFIX = "gateway:ratelimit:"
# A window's counter outlives the window by a second, never more.
_TTL = WINDOW_SECONDS + 1
# The counter prefix a credential script completes with the user id and the window, by
# bucket; None: the request is not counted.
_USER_COUNTERS: dict[str | None, str] = {
    None: "",
    "default": f"{RATE_LIMIT_PREFIX}default:user:",
    "model": f"{RATE_LIMIT_PREFIX}model:user:",
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

# A live session: user id, roles, permissions, CSRF token hash, and the request's count.
SessionFound = tuple[str, tuple[str, ...], tuple[str, ...], str, int]
# A cached API key: what it stands for and the request's count; or why it is refused.
KeyFound = tuple[ApiKeyPrincipal, int] | Literal["invalid", "expired"]


class RateCounters:
    """Requests counted per window, by bucket and subject."""

    def __init__(self, redis: Redis) -> None:
        self._hit = redis.register_script(_HIT)
        self._give_back = redis.register_script(_GIVE_BACK)

    def hit(self, bucket: str, subject: str, now: float) -> Awaitable[int]:
        """Count one request in the window of `now`: its count, this request included.
        (It returns the script call itself to await: no coroutine of its own per request.)"""
        return self._hit(keys=[_counter(bucket, subject, now)], args=[_TTL])

    async def give_back(self, bucket: str, subject: str, now: float) -> None:
        """Take back a count made in the window of `now`, if that window is still kept."""
        await self._give_back(keys=[_counter(bucket, subject, now)])


class CredentialCache:
    """Sessions and cached API keys, each read together with the count of its request in
    the caller's `bucket` (None: not counted; the count is then -1)."""

    def __init__(self, redis: Redis) -> None:
        self._api_key = redis.register_script(_API_KEY)
        self._session = redis.register_script(_SESSION)

    @staticmethod
    def _count_args(now: float, bucket: str | None) -> list[Any]:
        """The scripts' arguments: now, and what counts the request in its window."""
        return [repr(now), _USER_COUNTERS[bucket], f":{int(now // WINDOW_SECONDS)}", _TTL]

    async def session(self, session_id: str, now: float, bucket: str | None) -> SessionFound | None:
        """The session, touched (its idle timeout slid), and the count; None once it has
        ended (idle too long, past its lifetime, revoked): it is deleted then."""
        found = await self._session(
            keys=[SESSION_PREFIX + session_id], args=self._count_args(now, bucket)
        )
        if not found:
            return None
        return (
            as_text(found[0]), tuple(json.loads(found[1])), tuple(json.loads(found[2])),
            as_text(found[3]), int(found[4]),
        )  # fmt: skip

    async def api_key(self, key_hash: str, now: float, bucket: str | None) -> KeyFound | None:
        """The key as auth cached it, with its last use recorded and the count; None when
        auth has not cached it (yet)."""
        found = await self._api_key(
            keys=[API_KEY_PREFIX + key_hash, API_KEY_LAST_USED],
            args=self._count_args(now, bucket),
        )
        if not found:
            return None
        if found[0] == API_KEY_INVALID:
            return "invalid"
        if found[0] == b"expired":
            return "expired"
        return ApiKeyPrincipal.from_json(found[0]), int(found[1])


def _counter(bucket: str, subject: str, now: float) -> str:
    return f"{RATE_LIMIT_PREFIX}{bucket}:{subject}:{int(now // WINDOW_SECONDS)}"
