"""Governance policy: the same fields on API keys, users and teams (auth stores them), and
what every component that enforces them agrees on.

A policy has `max_budget_usd` (exact decimal, None: no budget), `budget_period` (when the
spend starts again: `day` at UTC midnight, `week` on Monday 00:00 UTC, `month` on the 1st
00:00 UTC, `total` never), `allowed_models` (model names, alias names and `*`/`?` globs;
None: every model the caller may otherwise use), `rpm_limit` (model requests a minute) and
`tpm_limit` (prompt + completion tokens a minute, counted from each call's actual usage).

A call is governed by up to three scopes: the API key it was made with, its user, and the
key's team. Each scope with a policy is checked; the tightest wins.

Beside them, keys and teams may hold `cache`: the response cache's default for their
calls (`CachePolicy`). It is not governance: it limits nothing, `governs` and
`governs_spend` ignore it, and no narrowing rule applies to it. A key's default wins
over its team's (`Policies.cache`).

Wire form (`Policies.to_wire`): `{"key": {...}, "user": {...}, "team": {...}}`, each
scope's non-null fields only, the budget as a string, `cache` as `CachePolicy.to_wire`
(e.g. `"cache": {"mode": "semantic", "ttl_seconds": 600, "threshold": 0.9}`); scopes
without any field left out.
Auth puts it into the API-key principal it caches (common.principals) and into each
session; the gateway passes it on in the signed identity (common.identity), so inference
enforces it without asking anyone.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, get_args

Period = Literal["day", "week", "month", "total"]
PERIODS: tuple[str, ...] = get_args(Period)
CacheMode = Literal["exact", "semantic", "off"]
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)
ScopeKind = Literal["key", "user", "team"]
SCOPES: tuple[ScopeKind, ...] = ("key", "user", "team")
# The scopes that may hold a cache default (auth stores none on users), the first wins.
CACHE_SCOPES: tuple[ScopeKind, ...] = ("key", "team")
DEFAULT_PERIOD: Period = "total"

# Bounds of what a policy may hold (auth validates them; the wire parser trusts only what
# the gateway signed, but still refuses anything outside them).
MAX_BUDGET_USD = Decimal("1000000000")
BUDGET_DECIMALS = 9
MAX_LIMIT = 1_000_000_000
MAX_MODEL_PATTERNS = 64
MAX_MODEL_PATTERN_LENGTH = 200
# A model name or glob: what a model name may hold, plus the two wildcards.
MODEL_PATTERN = re.compile(r"^[A-Za-z0-9._:@/*?+-]{1,200}$")
MAX_CACHE_TTL_SECONDS = 2_592_000  # 30 days
MIN_CACHE_THRESHOLD = 0.5
MAX_CACHE_THRESHOLD = 1.0


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The response cache's default for a key's or a team's calls (a request's own `cache`
    field and Cache-Control still apply).

    `mode`: `exact`, `semantic` or `off`; `ttl_seconds`: how long an entry lives (1 to
    MAX_CACHE_TTL_SECONDS; None: the cache's default); `temperature`: also cache requests
    with a temperature above 0; `tools`, `multi_turn`: the semantic cache also for requests
    with tools, with earlier assistant turns; `threshold`: the semantic match's similarity
    (MIN_CACHE_THRESHOLD to MAX_CACHE_THRESHOLD; None: the cache's default).

    Wire form: `mode` always, the other fields only when not their default."""

    mode: CacheMode
    ttl_seconds: int | None = None
    temperature: bool = False
    tools: bool = False
    multi_turn: bool = False
    threshold: float | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"mode": self.mode}
        if self.ttl_seconds is not None:
            wire["ttl_seconds"] = self.ttl_seconds
        for flag in _CACHE_FLAGS:
            if getattr(self, flag):
                wire[flag] = True
        if self.threshold is not None:
            wire["threshold"] = self.threshold
        return wire

    @classmethod
    def from_wire(cls, data: Any) -> CachePolicy:
        """A cache policy from its wire form; ValueError for anything malformed or out of
        bounds."""
        data = _wire_object(data, cls, "cache policy")
        mode = data.get("mode")
        if mode not in CACHE_MODES:
            raise ValueError(f"a cache policy's mode is one of {', '.join(CACHE_MODES)}")
        flags = {flag: data.get(flag, False) for flag in _CACHE_FLAGS}
        for flag, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(f"a cache policy's {flag} is true or false")
        return cls(
            mode=mode,
            ttl_seconds=_cache_ttl(data.get("ttl_seconds")),
            threshold=_cache_threshold(data.get("threshold")),
            **flags,
        )


_CACHE_FLAGS = ("temperature", "tools", "multi_turn")


def _wire_object(data: Any, kind: type, what: str) -> Mapping[str, Any]:
    """`data` if it is an object with none but `kind`'s fields; ValueError otherwise."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a {what} is an object")
    unknown = set(data) - {f.name for f in fields(kind)}
    if unknown:
        raise ValueError(f"unknown {what} fields: {sorted(unknown)}")
    return data


def _cache_ttl(value: Any) -> int | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_CACHE_TTL_SECONDS
    ):
        raise ValueError(f"a cache ttl_seconds is a whole number from 1 to {MAX_CACHE_TTL_SECONDS}")
    return value


def _cache_threshold(value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not MIN_CACHE_THRESHOLD <= value <= MAX_CACHE_THRESHOLD  # NaN fails it too
    ):
        raise ValueError(
            f"a cache threshold is a number from {MIN_CACHE_THRESHOLD} to {MAX_CACHE_THRESHOLD}"
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class Policy:
    max_budget_usd: Decimal | None = None
    budget_period: Period | None = None
    allowed_models: tuple[str, ...] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    cache: CachePolicy | None = None  # not governance: the response cache's default

    @property
    def period(self) -> Period:
        """The budget's period: `total` unless one is set."""
        return self.budget_period or DEFAULT_PERIOD

    @property
    def empty(self) -> bool:
        """No field set, the cache default included (nothing to carry on the wire)."""
        return all(getattr(self, f.name) is None for f in fields(self))

    @property
    def governs(self) -> bool:
        """Whether any governance field is set: anything but the cache default."""
        return any(getattr(self, f.name) is not None for f in fields(self) if f.name != "cache")

    @property
    def governs_spend(self) -> bool:
        """Whether a call under this policy reserves and settles (a budget or a TPM limit)."""
        return self.max_budget_usd is not None or self.tpm_limit is not None

    def allows(self, requested: str, targets: Iterable[str] = ()) -> bool:
        """Whether a call naming `requested` may be made: the name matches one of the
        patterns, or it is an alias whose every target (provider/model) matches one."""
        if self.allowed_models is None:
            return True
        if _matches_any(requested, self.allowed_models):
            return True
        resolved = list(targets)
        return bool(resolved) and all(_matches_any(t, self.allowed_models) for t in resolved)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        if self.max_budget_usd is not None:
            wire["max_budget_usd"] = str(self.max_budget_usd)
        if self.budget_period is not None:
            wire["budget_period"] = self.budget_period
        if self.allowed_models is not None:
            wire["allowed_models"] = list(self.allowed_models)
        if self.rpm_limit is not None:
            wire["rpm_limit"] = self.rpm_limit
        if self.tpm_limit is not None:
            wire["tpm_limit"] = self.tpm_limit
        if self.cache is not None:
            wire["cache"] = self.cache.to_wire()
        return wire

    @classmethod
    def from_wire(cls, data: Any) -> Policy:
        """A policy from its wire form; ValueError for anything malformed or out of bounds."""
        data = _wire_object(data, cls, "policy")
        budget = data.get("max_budget_usd")
        period = data.get("budget_period")
        models = data.get("allowed_models")
        cache = data.get("cache")
        return cls(
            max_budget_usd=None if budget is None else parse_budget(budget),
            budget_period=None if period is None else _period(period),
            allowed_models=None if models is None else _patterns(models),
            rpm_limit=_limit(data.get("rpm_limit")),
            tpm_limit=_limit(data.get("tpm_limit")),
            cache=None if cache is None else CachePolicy.from_wire(cache),
        )


def parse_budget(value: Any) -> Decimal:
    """A budget in USD: a decimal (a string, best), 0 to MAX_BUDGET_USD, at most
    BUDGET_DECIMALS decimal places; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError('a budget is a decimal string such as "25.00"')
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal amount") from None
    if not amount.is_finite() or amount < 0 or amount > MAX_BUDGET_USD:
        raise ValueError(f"a budget is between 0 and {MAX_BUDGET_USD} USD")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -BUDGET_DECIMALS:
        raise ValueError(f"a budget has at most {BUDGET_DECIMALS} decimal places")
    return amount


def usd(amount: Decimal) -> str:
    """An amount of USD as shown to people: two decimals at least, no trailing zeros past
    them, never an exponent (`25.00`, `0.000123`)."""
    whole, _, fraction = format(amount.normalize(), "f").partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


def _period(value: Any) -> Period:
    if value not in PERIODS:
        raise ValueError(f"budget_period is one of {', '.join(PERIODS)}")
    period: Period = value
    return period


def _limit(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"a limit is a whole number from 1 to {MAX_LIMIT}")
    return value


def _patterns(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_MODEL_PATTERNS:
        raise ValueError(f"allowed_models is a list of at most {MAX_MODEL_PATTERNS} names")
    for pattern in value:
        check_model_pattern(pattern)
    return tuple(value)


def check_model_pattern(pattern: Any) -> str:
    """A model name or glob (`*`, `?`); ValueError naming what is wrong."""
    if not isinstance(pattern, str) or not MODEL_PATTERN.match(pattern):
        raise ValueError(
            f"{pattern!r} is not a model name or glob (letters, digits, . _ : @ / + -, "
            f"and the wildcards * and ?; at most {MAX_MODEL_PATTERN_LENGTH} characters)"
        )
    return pattern


def _matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def covers(parents: Iterable[str], pattern: str) -> bool:
    """Whether every name `pattern` matches is matched by one of `parents`, as far as can be
    told by matching the pattern's text (its wildcards taken as characters) against them:
    `openai/gpt-*` is covered by `openai/*`, `openai/*` is not by `openai/gpt-*`."""
    return _matches_any(pattern, parents)


@dataclass(frozen=True, slots=True)
class Policies:
    """The policies that govern one call, by scope (only the scopes that have one)."""

    by_scope: Mapping[ScopeKind, Policy]

    def __iter__(self) -> Any:
        return iter(self.by_scope.items())

    def get(self, scope: ScopeKind) -> Policy | None:
        return self.by_scope.get(scope)

    def to_wire(self) -> dict[str, Any] | None:
        wire: dict[str, Any] = {s: p.to_wire() for s, p in self.by_scope.items() if not p.empty}
        return wire or None

    @classmethod
    def from_wire(cls, data: Any) -> Policies:
        """From the wire form (None: no policy); ValueError for anything malformed."""
        if data is None:
            return NO_POLICIES
        if not isinstance(data, Mapping) or not set(data) <= set(SCOPES):
            raise ValueError("policies are an object keyed by key, user and team")
        return cls({s: Policy.from_wire(data[s]) for s in SCOPES if s in data})

    @property
    def cache(self) -> CachePolicy | None:
        """The cache default of the call: its key's, else its team's (None: none)."""
        for scope in CACHE_SCOPES:
            policy = self.by_scope.get(scope)
            if policy is not None and policy.cache is not None:
                return policy.cache
        return None

    def denying(self, requested: str, targets: Iterable[str] = ()) -> ScopeKind | None:
        """The first scope whose allowed_models refuses the call, or None."""
        resolved = list(targets)
        for scope, policy in self.by_scope.items():
            if not policy.allows(requested, resolved):
                return scope
        return None


NO_POLICIES = Policies({})


# ---------------------------------------------------------------- budget periods


def period_start(period: Period, now: datetime) -> datetime | None:
    """When the period holding `now` began (UTC); None for `total`."""
    moment = now.astimezone(UTC)
    day = moment.date()
    if period == "day":
        return _midnight(day)
    if period == "week":
        return _midnight(day - timedelta(days=day.weekday()))
    if period == "month":
        return _midnight(day.replace(day=1))
    return None


def period_end(period: Period, now: datetime) -> datetime | None:
    """When the period holding `now` ends and the spend starts again; None for `total`."""
    start = period_start(period, now)
    if start is None:
        return None
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    first = start.date()
    return _midnight(date(first.year + first.month // 12, first.month % 12 + 1, 1))


def period_key(period: Period, now: datetime) -> str:
    """The name of the period holding `now`, as spend counters are keyed:
    `day:2026-12-03`, `week:2026-11-30` (its Monday), `month:2026-12`, `total`."""
    if period == "total":
        return "total"
    return _period_key(period, now.astimezone(UTC).date())


@functools.lru_cache(maxsize=64)
def _period_key(period: Period, day: date) -> str:
    """period_key of a UTC day (remembered: every governed call names a few)."""
    start = period_start(period, _midnight(day))
    assert start is not None
    if period == "month":
        return f"month:{start:%Y-%m}"
    return f"{period}:{start:%Y-%m-%d}"


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
