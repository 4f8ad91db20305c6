"""The gateway's storage: every Redis key it names, every script it runs, every call.

The gateway's own keys:

- `gateway:ratelimit:<bucket>:<subject>:<window>`: the requests counted in one window
  (`<window>` = unix time // WINDOW_SECONDS). Each key lives two windows and a second: it
  is the current window's count, then the previous one's. Buckets and subjects: `default`
  and `model` count `user:<user_id>` (all of a user's keys and sessions together); `model`
  also counts `key:<key_id>` and `team:<team_id>` when the key's or the team's policy has
  an `rpm_limit` (common.policy); `anonymous` counts `ip:<client>`, and
  `invalid_api_keys` counts `ip:<client>` for keys that auth had to be asked about.

Every limit is a sliding window over the last WINDOW_SECONDS: a request is admitted when
`previous count * (1 - elapsed fraction of the current window) + current count + 1` stays
within the limit (the previous window weighted by how much of it the last minute still
overlaps). A caller who used their whole limit at the end of one window therefore does not
get a whole new one at the start of the next, as a fixed window would give them (twice the
limit within a minute). A request is checked against every counter that applies and
counted in all of them only if all admit it: a refused request consumes nothing.

Auth's keys, read (and the last use written) here, named in common/principals.py, which
describes their layout: the sessions `auth:session:<hash>` (touched: slid or ended), the
API-key cache `auth:api-key:<hash>` and the last-used hash `auth:api-key-last-used`.

A credential check and the count of its request are one script, one round trip.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from redis.asyncio import Redis

from common.budgets import (
    ADMIT_LUA,
    GATEWAY_HOLD_LUA,
    TOKEN_WINDOW_SECONDS,
    GatewayHold,
    held_key,
    held_sum_key,
)
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
# The budget scripts' token windows are the rate windows: one window number serves both.
assert WINDOW_SECONDS == TOKEN_WINDOW_SECONDS
RATE_LIMIT_PREFIX = "gateway:ratelimit:"
# A window's counter is read as the current window's, then as the previous one's: it
# outlives its window by one more window and a second, never more.
_TTL = 2 * WINDOW_SECONDS + 1

# The sliding-window check shared by every script. Counter keys are built here (the subject
# of a caller's counters is known only once the credential is read): fine on one Redis (or
# Sentinel), not on a Cluster. ARGV[2] is the current window's number, ARGV[3] the previous
# window's weight, ARGV[4] the bucket (absent: the request is not counted).
# rate(counters, out), counters = {scope, subject, limit, ...} (limit <= 0: none, skipped),
# appends to `out` 1 (admitted) or 0 (refused), then scope, limit, previous and current
# count of each counter checked, as they were before this request; the request is counted
# in every counter only if every one admits it.
_RATE_LUA = (
    f"local PREFIX, TTL = '{RATE_LIMIT_PREFIX}', {_TTL}\n"
    + """
local function rate(counters, out)
  local admitted, keys, weight = #out + 1, {}, tonumber(ARGV[3])
  local prefix = PREFIX .. ARGV[4] .. ':'
  local this_window, last_window = ':' .. ARGV[2], ':' .. (tonumber(ARGV[2]) - 1)
  out[admitted] = 1
  for i = 1, #counters, 3 do
    local limit = counters[i + 2]
    if limit > 0 then
      local base = prefix .. counters[i + 1]
      local counts = redis.call('MGET', base .. last_window, base .. this_window)
      local previous, current = tonumber(counts[1] or 0), tonumber(counts[2] or 0)
      if previous * weight + current + 1 > limit then out[admitted] = 0 end
      keys[#keys + 1] = base .. this_window
      out[#out + 1] = counters[i]
      out[#out + 1] = limit
      out[#out + 1] = previous
      out[#out + 1] = current
    end
  end
  if out[admitted] == 1 then
    for _, key in ipairs(keys) do
      if redis.call('INCR', key) == 1 then redis.call('EXPIRE', key, TTL) end
    end
  end
  return out
end
"""
)
# One request of a subject with no credential (a client address): ARGV[5] the scope's
# name, ARGV[6] the subject, ARGV[7] the limit.
_HIT = _RATE_LUA + "return rate({ARGV[5], ARGV[6], tonumber(ARGV[7])}, {})"
# Take back one count of a window that may have ended meanwhile (never recreate its key).
_GIVE_BACK = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECR', KEYS[1]) end
"""

# A signed-in caller's counters: `role` (the role default; the user's own `rpm_limit` in
# its place when tighter, then named `user`), and on model calls (bucket `model`) `key` and
# `team` when their policy has an `rpm_limit`. ARGV[1] is now; ARGV[2..4] as _RATE_LUA;
# ARGV[5] what a model call of an API key is to hold of its budgets (common.budgets
# GATEWAY_HOLD_LUA's spec; '' otherwise); ARGV[6] the limit of a caller with none of the
# roles listed after it, in (role, limit) pairs from ARGV[7] (0: unlimited). The roles are
# decoded only when roles are listed; a session's policy only on model calls, and when it
# has an rpm_limit.
_CALLER_RATE_LUA = (
    _RATE_LUA
    + """
local function role_limit(roles)
  local limit = nil
  if #ARGV > 6 then
    if type(roles) == 'string' then roles = cjson.decode(roles) end
    local listed = {}
    for i = 7, #ARGV, 2 do listed[ARGV[i]] = tonumber(ARGV[i + 1]) end
    for _, role in ipairs(roles) do
      local l = listed[role]
      if l and (not limit or l > limit) then limit = l end
    end
  end
  return limit or tonumber(ARGV[6])
end

local function rpm(policies, scope)
  local policy = policies[scope]
  if type(policy) ~= 'table' or type(policy['rpm_limit']) ~= 'number' then return 0 end
  return policy['rpm_limit']
end

local function caller_rate(out, user_id, roles, policies, key_id, team_id)
  local role = ARGV[4] and role_limit(roles) or 0
  local governed = ARGV[4] == 'model' and type(policies) == 'table'
  if role <= 0 and not governed then
    out[#out + 1] = 1
    return out
  end
  local counters = {'role', 'user:' .. user_id, role}
  if governed then
    local own = rpm(policies, 'user')
    if own > 0 and (role <= 0 or own < role) then
      counters[1], counters[3] = 'user', own
    end
    if key_id then
      counters[4], counters[5], counters[6] = 'key', 'key:' .. key_id, rpm(policies, 'key')
    end
    if type(team_id) == 'string' then
      local n = #counters
      counters[n + 1], counters[n + 2] = 'team', 'team:' .. team_id
      counters[n + 3] = rpm(policies, 'team')
    end
  end
  return rate(counters, out)
end
"""
)
# API key: {} not cached, {'invalid'}, {'expired'}, or {resolved JSON, hold, rate...}; the
# last use is recorded for auth to flush. `hold`: what an admitted model call holds of its
# budgets (GATEWAY_HOLD_LUA's answer; '' for nothing).
_API_KEY = (
    _CALLER_RATE_LUA
    + GATEWAY_HOLD_LUA
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
local policies, team_id = key['policies'], key['team_id']
local out = caller_rate({cached, ''}, key['user_id'], key['roles'], policies, key['key_id'],
                        team_id)
if out[3] == 1 and ARGV[5] and ARGV[5] ~= '' then
  out[2] = gateway_hold(key, ARGV[5], tonumber(ARGV[2]), tonumber(ARGV[3]))
end
return out
"""
)
# Session: touch it (slide or end it, as SessionStore.touch), then count; {} when it ended.
# Its policy (the user's) is returned as stored ('' in a session older than policies).
_SESSION = (
    _CALLER_RATE_LUA
    + TOUCH_SESSION_LUA
    + """
local h = touch_session(KEYS[1], ARGV[1])
if not h then return {} end
local policy = h['policy'] or ''
local policies = nil
if ARGV[4] == 'model' and string.find(policy, 'rpm_limit', 1, true) then
  policies = {user = cjson.decode(policy)}
end
local out = {h['user_id'], h['roles'], h['permissions'], h['csrf_hash'], policy}
return caller_rate(out, h['user_id'], h['roles'], policies, nil, nil)
"""
)


class Window(NamedTuple):
    """The rate window holding a moment: its number, and how far into it the moment is."""

    number: int  # unix time // WINDOW_SECONDS
    elapsed: float  # seconds since the window began

    @classmethod
    def at(cls, now: float) -> Window:
        number = int(now // WINDOW_SECONDS)
        return cls(number, now - number * WINDOW_SECONDS)

    @property
    def weight(self) -> float:
        """How much of the previous window the last WINDOW_SECONDS still overlap."""
        return 1.0 - self.elapsed / WINDOW_SECONDS


class Count(NamedTuple):
    """One counter a request was checked against, as it stood before the request."""

    scope: str  # role | user | key | team, or the bucket's own (address)
    limit: int
    previous: int  # requests counted in the previous window
    current: int  # and in the current one


@dataclass(frozen=True, slots=True)
class RateCount:
    """A request checked against its counters: whether it was admitted (and counted in all
    of them), the counters checked (none: no limit applies), and the window."""

    admitted: bool
    counts: tuple[Count, ...]
    window: Window


@dataclass(frozen=True, slots=True)
class CallerLimits:
    """What a signed-in caller's requests on one kind of route are counted against: the
    bucket (`model`: model calls, where the policies' rpm limits apply too) and the role
    defaults."""

    bucket: str
    default: int  # the limit of a caller with none of the listed roles; 0: unlimited
    by_role: Sequence[tuple[str, int]] = ()
    # ARGV[6...] of the credential scripts.
    script_args: list[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        roles = [part for role, limit in self.by_role for part in (role, limit)]
        object.__setattr__(self, "script_args", [self.default, *roles])


# A live session: user id, roles, permissions, CSRF token hash, its policy in the wire form
# as stored ('' or '{}': none), and the request's rate count.
SessionFound = tuple[str, tuple[str, ...], tuple[str, ...], str, str, RateCount]
# A cached API key: what it stands for, the request's rate count and what it holds of its
# budgets (the script's answer, '' for nothing); or why it is refused.
KeyFound = tuple[ApiKeyPrincipal, RateCount, str] | Literal["invalid", "expired"]


# A request no limit applied to (most requests when limits are off): nothing to report.
NOT_COUNTED = RateCount(admitted=True, counts=(), window=Window(0, 0.0))


def _rate_count(reply: list[Any], start: int, window: Window) -> RateCount:
    """A rate script's answer, from `start` in its reply."""
    if len(reply) == start + 1:
        return NOT_COUNTED
    counts = tuple(
        Count(as_text(reply[i]), int(reply[i + 1]), int(reply[i + 2]), int(reply[i + 3]))
        for i in range(start + 1, len(reply), 4)
    )
    return RateCount(reply[start] == 1, counts, window)


class RateCounters:
    """Requests counted per window, by bucket and subject, for subjects without a
    credential (client addresses)."""

    def __init__(self, redis: Redis) -> None:
        self._hit = redis.register_script(_HIT)
        self._give_back = redis.register_script(_GIVE_BACK)

    async def hit(self, bucket: str, scope: str, subject: str, limit: int, now: float) -> RateCount:
        """One request of `subject` at `now`, checked against `limit`, counted if admitted."""
        window = Window.at(now)
        args: list[Any] = ["", window.number, repr(window.weight), bucket, scope, subject, limit]
        return _rate_count(await self._hit(args=args), 0, window)

    async def give_back(self, bucket: str, subject: str, now: float) -> None:
        """Take back a count made in the window of `now`, if that window is still kept."""
        key = f"{RATE_LIMIT_PREFIX}{bucket}:{subject}:{Window.at(now).number}"
        await self._give_back(keys=[key])


# Give back what the gateway held for a call inference did not take over (it answered
# with an error, or was not reached): KEYS in pairs, a scope's held set and its sum; ARGV[1]
# the hold's member. A hold inference settled meanwhile is not there any more: a no-op.
_RELEASE = (
    ADMIT_LUA
    + """
local scopes = {}
for i = 1, #KEYS, 2 do
  scopes[#scopes + 1] = {held = KEYS[i], held_sum = KEYS[i + 1], budget = 'yes'}
end
budget_release(scopes, ARGV[1])
"""
)


class HeldBudgets:
    """Holds the gateway took (GATEWAY_HOLD_LUA) that it gives back itself."""

    def __init__(self, redis: Redis) -> None:
        self._release = redis.register_script(_RELEASE)

    async def release(self, hold: GatewayHold, ids: dict[str, str | None]) -> None:
        """Give `hold` back in its scopes (`ids`: each scope's id)."""
        keys: list[str] = []
        for scope in hold.scopes:
            scope_id = ids.get(scope)
            if scope_id:
                keys += [held_key(scope, scope_id), held_sum_key(scope, scope_id)]
        if keys:
            await self._release(keys=keys, args=[hold.member])


class CredentialCache:
    """Sessions and cached API keys, each read together with the rate count of its request
    against `limits` (None: not counted; the count then has no counters)."""

    def __init__(self, redis: Redis) -> None:
        self._api_key = redis.register_script(_API_KEY)
        self._session = redis.register_script(_SESSION)

    @staticmethod
    def _args(now: float, window: Window, limits: CallerLimits | None, hold: str = "") -> list[Any]:
        """The scripts' arguments: now, and what counts the request (nothing without limits)
        and what it is to hold (GATEWAY_HOLD_LUA's spec, '' for nothing)."""
        if limits is None:
            return [repr(now)]
        return [repr(now), window.number, repr(window.weight), limits.bucket, hold,
                *limits.script_args]  # fmt: skip

    async def session(
        self, session_id: str, now: float, limits: CallerLimits | None
    ) -> SessionFound | None:
        """The session, touched (its idle timeout slid), and the count; None once it has
        ended (idle too long, past its lifetime, revoked): it is deleted then."""
        window = Window.at(now)
        found = await self._session(
            keys=[SESSION_PREFIX + session_id], args=self._args(now, window, limits)
        )
        if not found:
            return None
        return (
            as_text(found[0]), tuple(json.loads(found[1])), tuple(json.loads(found[2])),
            as_text(found[3]), as_text(found[4]), _rate_count(found, 5, window),
        )  # fmt: skip

    async def api_key(
        self, key_hash: str, now: float, limits: CallerLimits | None, hold: str = ""
    ) -> KeyFound | None:
        """The key as auth cached it, with its last use recorded, the count, and for a model
        call whose `hold` spec is given (common.budgets.GatewayHold.spec) what was held;
        None when auth has not cached it (yet)."""
        window = Window.at(now)
        found = await self._api_key(
            keys=[API_KEY_PREFIX + key_hash, API_KEY_LAST_USED],
            args=self._args(now, window, limits, hold),
        )
        if not found:
            return None
        if found[0] == API_KEY_INVALID:
            return "invalid"
        if found[0] == b"expired":
            return "expired"
        return ApiKeyPrincipal.from_json(found[0]), _rate_count(found, 2, window), as_text(found[1])
