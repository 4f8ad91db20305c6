"""Governance of model calls (common.policy): the models each scope allows, and the budgets
and token limits of the call's key, user and team.

A caller without policies (`identity.policies is None`) never reaches this module. For
the others, before any credential is looked up or a provider called:

1. every scope's `allowed_models` must allow the model or alias (403 `model-not-allowed`);
2. when a scope has a budget or a TPM limit, one atomic Redis script (shared by every
   replica: repository.Budgets) admits the call or refuses it (429 `budget-exceeded` or
   `rate-limited`), and holds its estimated cost in each scope with a budget.

The call's event carries a repository.Settlement, written in the same pipeline (events.py):
the holds are given back, the exact cost added to the spend of the period the call started
in, the tokens to the token window of when it ended.

The estimate: input price x the prompt's estimated tokens (+10 %) + output price x the
completion's (`max_completion_tokens` or `max_tokens` when given, else the largest
completion this replica saw for the model in the last ~10 minutes, at least
INFERENCE_BUDGET_MIN_COMPLETION_TOKENS; INFERENCE_BUDGET_DEFAULT_COMPLETION_TOKENS before
any); for an alias, the dearest of its targets. A scope's spend then ends at most one
call's cost over its budget, as long as the calls in flight were held at least what they
cost (services/inference/README.md, "Governance").
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.budgets import (
    TOKEN_WINDOW_SECONDS,
    GatewayHold,
    Scope,
    SpendCounters,
    SpendUnavailable,
    TelemetrySpend,
    from_nano,
    to_nano,
    utc,
)
from common.identity import Identity, InvalidIdentity
from common.policy import Policies, Policy, ScopeKind, period_end, usd
from inference.errors import (
    BudgetExceeded,
    BudgetUnavailable,
    ModelNotAllowed,
    ModelNotPriced,
    TokensPerMinute,
)
from inference.failover import Target
from inference.pricing import PriceBook
from inference.repository import (
    Budgets,
    ScopeLimits,
    Settlement,
    Verdict,
    Window,
    hold_member,
)
from inference.settings import InferenceSettings

if TYPE_CHECKING:
    from inference.runtime import Runtime

log = structlog.get_logger(__name__)
# Model names whose price (or lack of one) is remembered, and callers whose policies.
MAX_REMEMBERED_PRICES = 10_000
MAX_REMEMBERED_CALLERS = 10_000
# The prompt is estimated with our tokenizer; the provider's may count a little more.
PROMPT_MARGIN = Decimal("1.1")
# A hold never exceeds this (nano-dollars): sums of holds stay far inside Redis' 64 bits.
MAX_HOLD_NANO = 2**62
# A hold lapses this long after the call can have ended at the latest.
HOLD_GRACE_SECONDS = 60.0
# How long a learned completion size counts, in minutes, and for how many models.
LEARNED_MINUTES = 10
LEARNED_MODELS = 1_000
# A call refused only by holds waits for them: first this long, then twice as long, up to.
FIRST_PAUSE_SECONDS = 0.01
MAX_PAUSE_SECONDS = 0.1

WHOSE: dict[ScopeKind, str] = {"key": "The API key's", "user": "Your user's", "team": "The team's"}
PER_PERIOD = {"day": "a day", "week": "a week", "month": "a month", "total": "in total"}


class CompletionSizes:
    """The largest completion each model gave on this replica in the last ~10 minutes
    (per-minute maxima of LEARNED_MINUTES minutes), for the models of the last
    LEARNED_MODELS names seen (a caller chooses names: the table is bounded)."""

    def __init__(self, *, floor: int, default: int) -> None:
        self._floor = floor
        self._default = default
        self._sizes: dict[str, dict[int, int]] = {}
        # model -> (minute, expected): expected() of that minute, until a size is learned.
        self._expected: dict[str, tuple[int, int]] = {}

    def learn(self, model: str, tokens: int) -> None:
        minute = int(time.monotonic() // 60)
        sizes = self._sizes.get(model)
        if sizes is None:
            if len(self._sizes) >= LEARNED_MODELS:
                self._sizes.clear()
                self._expected.clear()
            sizes = self._sizes[model] = {}
        if tokens > sizes.get(minute, -1):
            sizes[minute] = tokens
            self._expected.pop(model, None)
            if len(sizes) > LEARNED_MINUTES:
                for old in [m for m in sizes if m <= minute - LEARNED_MINUTES]:
                    del sizes[old]

    def expected(self, model: str) -> int:
        """What a completion of `model` is expected to use at most."""
        minute = int(time.monotonic() // 60)
        known = self._expected.get(model)
        if known is not None and known[0] == minute:
            return known[1]
        sizes = self._sizes.get(model)
        since = minute - LEARNED_MINUTES
        recent = [tokens for m, tokens in (sizes or {}).items() if m > since]
        expected = max(self._floor, *recent) if recent else self._default
        if sizes is not None:
            self._expected[model] = (minute, expected)
        return expected


class Governance:
    """What a governed call needs, built once (Runtime.governance)."""

    def __init__(
        self,
        settings: InferenceSettings,
        redis: Redis,
        telemetry: httpx.AsyncClient,
        prices: PriceBook,
    ) -> None:
        """`telemetry`: a peer client for the telemetry service (common.http.peer_client)."""
        self.settings = settings
        self.prices = prices
        self._prices_version = prices.version
        self.budgets = Budgets(redis)
        self.telemetry = telemetry
        self.spend = SpendCounters(redis, TelemetrySpend(telemetry))
        self.completions = CompletionSizes(
            floor=settings.budget_min_completion_tokens,
            default=settings.budget_default_completion_tokens,
        )
        self._nano_prices: dict[str, tuple[int, int] | None] = {}
        self._read: dict[tuple[Any, ...], tuple[Policies, list[tuple[ScopeLimits, Policy]]]] = {}

    def read(self, identity: Identity) -> tuple[Policies, list[tuple[ScopeLimits, Policy]]]:
        """The caller's policies and governed scopes (policies_of, governed_scopes),
        remembered by what the identity says of them: a caller sends the same many times."""
        key = (identity.kid, identity.sub, identity.team, repr(identity.policies))
        known = self._read.get(key)
        if known is None:
            policies = policies_of(identity)
            known = (policies, governed_scopes(identity, policies))
            if len(self._read) >= MAX_REMEMBERED_CALLERS:
                self._read.clear()
            self._read[key] = known
        return known

    def nano_price(self, model: str) -> tuple[int, int] | None:
        """The model's input and output price in nano-dollars per million tokens (rounded
        up), or None when it has none; remembered until the admins' prices change (only
        model names that have a price or are aliases' targets come here, so the table stays
        as small as the price list)."""
        if self._prices_version != self.prices.version:
            self._nano_prices.clear()
            self._prices_version = self.prices.version
        if model in self._nano_prices:
            return self._nano_prices[model]
        price = self.prices.get(model)
        nano = None if price is None else (
            to_nano(Decimal(str(price.input))), to_nano(Decimal(str(price.output)))
        )  # fmt: skip
        if len(self._nano_prices) < MAX_REMEMBERED_PRICES:
            self._nano_prices[model] = nano
        return nano


@dataclass(frozen=True, slots=True)
class Hold:
    """What admission reserved for one call; settled when the call ends."""

    call_id: str
    amount: int  # nano-dollars, in each scope with a budget
    scopes: tuple[ScopeLimits, ...]
    started: float  # clock time: the call's spend goes to this moment's periods
    headers: dict[str, str]  # the tightest token limit, for the answer
    # The API key whose next call the gateway holds `estimate` for (this call's estimate).
    key_id: str | None = None
    estimate: int | None = None

    def settlement(self, *, ended: float, cost: Decimal | None, tokens: int) -> Settlement:
        return Settlement(
            call_id=self.call_id,
            amount=self.amount,
            scopes=self.scopes,
            started=self.started,
            ended=ended,
            cost_nano=to_nano(cost) if cost else 0,
            tokens=tokens,
            key_id=self.key_id,
            estimate=self.estimate,
        )


def policies_of(identity: Identity) -> Policies:
    """The caller's policies (identity.policies is not None), as the gateway signed them."""
    try:
        return Policies.from_wire(identity.policies)
    except ValueError as exc:
        raise InvalidIdentity(f"Malformed policies in the internal identity: {exc}") from None


def check_models(policies: Policies, requested: str, targets: Sequence[Target]) -> None:
    """ModelNotAllowed unless every scope allows `requested` (or all its targets)."""
    scope = policies.denying(requested, [t.name for t in targets])
    if scope is not None:
        raise ModelNotAllowed(
            f"{WHOSE[scope]} policy does not allow the model {requested!r}.",
            model=requested,
            scope=scope,
        )


def _scope_id(identity: Identity, scope: ScopeKind) -> str | None:
    if scope == "key":
        return identity.kid
    if scope == "user":
        return identity.user_id
    return identity.team


def governed_scopes(identity: Identity, policies: Policies) -> list[tuple[ScopeLimits, Policy]]:
    """The scopes whose policy has a budget or a token limit, with their ids."""
    scopes = []
    for scope, policy in policies:
        if not policy.governs_spend:
            continue
        scope_id = _scope_id(identity, scope)
        if scope_id is None:
            raise InvalidIdentity(f"The internal identity has a {scope} policy but no {scope}.")
        budget = policy.max_budget_usd
        limits = ScopeLimits(
            scope=scope,
            scope_id=scope_id,
            period=policy.period,
            budget_nano=None if budget is None else _nano(budget),
            budget_usd=None if budget is None else str(budget),
            tpm_limit=policy.tpm_limit,
        )
        scopes.append((limits, policy))
    return scopes


@functools.lru_cache(maxsize=1024)
def _nano(budget: Decimal) -> int:
    """A budget in nano-dollars (remembered: a budget is one of a few values)."""
    return to_nano(budget)


def estimate(
    governance: Governance, targets: Sequence[Target], prompt_tokens: int, completion: int | None
) -> int:
    """The call's cost, estimated high, in nano-dollars: the dearest target's. Raises
    ModelNotPriced when a target has no price."""
    prompt = math.ceil(prompt_tokens * PROMPT_MARGIN)
    dearest = 0
    for target in targets:
        price = governance.nano_price(target.name)
        if price is None:
            raise ModelNotPriced(
                f"The model {target.name!r} has no price, so a call to it under a budget "
                "cannot be costed: an admin gives it one (PUT /v1/providers/prices/{model}, or "
                "INFERENCE_PRICES).",
                model=target.name,
            )
        output = completion if completion is not None else (
            governance.completions.expected(target.name)
        )  # fmt: skip
        # Nano-dollars per million tokens, so the cost is exact (rounded up) in integers.
        dearest = max(dearest, -(-(price[0] * prompt + price[1] * output) // 1_000_000))
    return min(dearest, MAX_HOLD_NANO)


def completion_limit(request: dict[str, Any]) -> int | None:
    """The completion tokens a chat request allows (`max_completion_tokens`, else
    `max_tokens`), or None."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = request.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


async def admit(
    runtime: Runtime,
    identity: Identity,
    targets: Sequence[Target],
    *,
    requested: str,
    stream: bool,
    prompt_tokens: Callable[[], int],
    completion: int | None,
) -> Hold | None:
    """Check the caller's policies for one call: the model first, then (one Redis round
    trip, when a scope has a budget or a token limit) admission. The Hold to settle when
    the call ends, or None when nothing is held or counted."""
    governance = runtime.governance
    policies, governed = governance.read(identity)
    check_models(policies, requested, targets)
    if not governed:
        return None
    budgeted = any(limits.budget_nano is not None for limits, _ in governed)
    amount = estimate(governance, targets, prompt_tokens(), completion) if budgeted else 0
    life = runtime.settings.stream_max_seconds if stream else (
        runtime.settings.request_deadline_seconds
    )  # fmt: skip
    scopes = tuple(limits for limits, _ in governed)
    # The next call of an API key under a budget is held by the gateway this call's estimate.
    key_id = identity.kid if budgeted and identity.kind == "api_key" else None
    granted = gateway_hold(identity)
    replaces = ""
    if granted is not None:
        if _covers(granted, scopes, amount, runtime.clock() + life):
            # The gateway admitted the call and holds enough: no round trip of our own.
            windows = tuple(Window(i - 1, previous, current)
                            for i, previous, current in granted.windows)  # fmt: skip
            return Hold(granted.id, granted.amount, scopes, granted.at,
                        _token_headers(scopes, windows, granted.at), key_id, amount)  # fmt: skip
        # It holds too little (a bigger call than the key's last) or not long enough: this
        # call's own hold replaces it, in the same step.
        replaces = granted.member
    call_id = granted.id if granted is not None else str(uuid.uuid4())
    member = hold_member(call_id, amount)
    waited_until = time.monotonic() + runtime.settings.budget_wait_seconds
    pause = FIRST_PAUSE_SECONDS
    while True:
        now = runtime.clock()
        verdict = await _ask(
            governance, scopes, member=member, amount=amount, now=now,
            lapses_at=now + life + HOLD_GRACE_SECONDS, replaces=replaces,
        )  # fmt: skip
        if not _only_held(verdict, scopes) or time.monotonic() + pause > waited_until:
            break
        # The budget is not spent, only held by calls in flight: they settle within
        # moments (a plain call), so wait for them rather than refuse a call it may allow.
        await asyncio.sleep(pause)
        pause = min(pause * 2, MAX_PAUSE_SECONDS)
    if verdict.outcome == "budget":
        limits, policy = governed[verdict.index]
        raise _budget_exceeded(limits, policy, verdict, now)
    if verdict.outcome == "tokens":
        limits, _ = governed[verdict.index]
        raise _tokens_exceeded(limits, verdict.windows[0], now)
    return Hold(call_id, amount, scopes, now, _token_headers(scopes, verdict.windows, now),
                key_id, amount)  # fmt: skip


def gateway_hold(identity: Identity) -> GatewayHold | None:
    """What the gateway held for this call (common.budgets.GatewayHold), if it did."""
    if identity.hold is None or identity.iss != "gateway":
        return None
    try:
        return GatewayHold.from_wire(identity.hold)
    except ValueError as exc:
        raise InvalidIdentity(f"Malformed hold in the internal identity: {exc}") from None


def _covers(
    granted: GatewayHold, scopes: Sequence[ScopeLimits], amount: int, ends_by: float
) -> bool:
    """Whether the gateway's hold stands for this call's: held in the same scopes, at least
    the estimate, until after the call can have ended."""
    budgeted = tuple(s.scope for s in scopes if s.budget_nano is not None)
    return granted.scopes == budgeted and granted.amount >= amount and granted.until >= ends_by


def _only_held(verdict: Verdict, scopes: Sequence[ScopeLimits]) -> bool:
    """Whether the call is refused by a budget that calls in flight hold, not one spent."""
    if verdict.outcome != "budget":
        return False
    budget = scopes[verdict.index].budget_nano
    return budget is not None and verdict.spent < budget


async def _ask(
    governance: Governance,
    scopes: tuple[ScopeLimits, ...],
    *,
    member: str,
    amount: int,
    now: float,
    lapses_at: float,
    replaces: str,
) -> Verdict:
    """The admission script's verdict; where a spend counter is missing, it is seeded from
    telemetry and the script asked once more. Fails closed (503) when neither Redis nor
    telemetry can say."""
    try:
        for _ in range(2):
            verdict = await governance.budgets.admit(
                scopes, member=member, amount=amount, now=now, lapses_at=lapses_at,
                replaces=replaces,
            )  # fmt: skip
            if verdict.outcome != "unknown":
                return verdict
            missing = [scopes[i] for i in verdict.missing]
            await governance.spend.spent(
                [Scope(s.scope, s.scope_id, s.period) for s in missing], utc(now)
            )
    except SpendUnavailable as exc:
        log.warning("spend unknown; budgeted call refused", error=str(exc))
        raise BudgetUnavailable(
            "What this call's budget has spent cannot be told now (the telemetry service "
            "does not answer); retry shortly.",
            headers={"Retry-After": "5"},
        ) from None
    except RedisError as exc:
        log.warning("budget counters unavailable; governed call refused",
                    error=type(exc).__name__)  # fmt: skip
        raise BudgetUnavailable(
            "The budget counters cannot be read now; retry shortly.",
            headers={"Retry-After": "1"},
        ) from None
    raise BudgetUnavailable(
        "The budget counters were not there after seeding; retry shortly.",
        headers={"Retry-After": "1"},
    )


def _budget_exceeded(
    limits: ScopeLimits, policy: Policy, verdict: Verdict, now: float
) -> BudgetExceeded:
    assert policy.max_budget_usd is not None
    budget, spent = policy.max_budget_usd, from_nano(verdict.spent)
    resets: datetime | None = period_end(limits.period, utc(now))
    what = f"{WHOSE[limits.scope]} budget of {usd(budget)} USD {PER_PERIOD[limits.period]}"
    members: dict[str, Any] = {
        "scope": limits.scope,
        "budget_usd": usd(budget),
        "spend_usd": usd(spent),
        "budget_resets_at": resets.isoformat() if resets else None,
    }
    if spent < budget:
        return BudgetExceeded(
            f"{what} is held by calls in flight ({usd(spent)} USD spent so far); retry in a "
            "moment.",
            headers={"Retry-After": "1"},
            **members,
        )
    if resets is None:
        return BudgetExceeded(f"{what} is spent ({usd(spent)} USD).", **members)
    wait = max(1, math.ceil((resets - utc(now)).total_seconds()))
    return BudgetExceeded(
        f"{what} is spent ({usd(spent)} USD); it starts again at {resets.isoformat()}.",
        headers={"Retry-After": str(wait)},
        **members,
    )


def _used(window: Window, now: float) -> float:
    """The sliding estimate of a scope's tokens in the last minute."""
    elapsed = (now % TOKEN_WINDOW_SECONDS) / TOKEN_WINDOW_SECONDS
    return window.previous * (1 - elapsed) + window.current


def tokens_retry_after(window: Window, limit: int, now: float) -> int:
    """Seconds until the sliding estimate of `window` falls below `limit`."""
    into = now % TOKEN_WINDOW_SECONDS
    if window.current < limit:
        # Within this window: previous * (1 - t / W) + current < limit.
        fraction = 1 - (limit - window.current) / window.previous if window.previous else 0.0
        wait = fraction * TOKEN_WINDOW_SECONDS - into
    else:
        # Once this window is the previous one: current * (1 - t / W) < limit.
        fraction = 1 - limit / window.current
        wait = TOKEN_WINDOW_SECONDS - into + fraction * TOKEN_WINDOW_SECONDS
    return max(1, math.floor(wait) + 1)


def _tokens_exceeded(limits: ScopeLimits, window: Window, now: float) -> TokensPerMinute:
    assert limits.tpm_limit is not None
    wait = tokens_retry_after(window, limits.tpm_limit, now)
    return TokensPerMinute(
        f"{WHOSE[limits.scope]} limit of {limits.tpm_limit} tokens a minute is reached; "
        f"retry in {wait} s.",
        headers={"Retry-After": str(wait)},
        scope=limits.scope,
        tpm_limit=limits.tpm_limit,
    )


def _token_headers(
    scopes: Sequence[ScopeLimits], windows: Sequence[Window], now: float
) -> dict[str, str]:
    """OpenAI's x-ratelimit-*-tokens headers for the tightest token limit, if any."""
    tightest: tuple[int, int] | None = None
    for window in windows:
        limit = scopes[window.index].tpm_limit
        assert limit is not None
        remaining = max(0, math.floor(limit - _used(window, now)))
        if tightest is None or remaining < tightest[1]:
            tightest = (limit, remaining)
    if tightest is None:
        return {}
    return {
        "x-ratelimit-limit-tokens": str(tightest[0]),
        "x-ratelimit-remaining-tokens": str(tightest[1]),
    }
