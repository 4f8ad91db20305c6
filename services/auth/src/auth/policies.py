"""The policy fields of keys, users and teams as auth stores and compares them (the fields
themselves, and their wire form, are common.policy's).

Two comparisons, for two rules:
- `widened(old, new)`: the fields in which a change allows more than before. Whoever may
  only narrow a policy (a user on their own key or their own user, a team's owner on the
  team) is refused those.
- `exceeding(key, parent)`: the fields a key sets beyond what its user or its team sets.
  A key's policy only narrows theirs; a field the key leaves unset is no excess (theirs
  still applies to every call).
A budget that starts again more often allows more with the same amount: 10 USD a day is
wider than 100 USD a month. The cache default (`cache`, keys and teams only) limits
nothing, so neither comparison looks at it: whoever may change a policy sets it freely.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from decimal import Decimal
from typing import Any, Protocol, cast

from auth.errors import InvalidPolicy
from auth.models import CacheColumn
from common.policy import CachePolicy, Period, Policy, covers, usd

POLICY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Policy))
# How often a budget starts again: the higher, the more it allows with the same amount.
_RESETS = {"total": 0, "month": 1, "week": 2, "day": 3}
_LIMITS = ("rpm_limit", "tpm_limit")


class PolicyRow(Protocol):
    """A row with the five policy columns (models.PolicyColumns), and for keys and teams
    the cache default (models.CacheColumn)."""

    max_budget_usd: Decimal | None
    budget_period: str | None
    allowed_models: list[str] | None
    rpm_limit: int | None
    tpm_limit: int | None


def policy_of(row: PolicyRow) -> Policy:
    budget = row.max_budget_usd
    cache = row.cache if isinstance(row, CacheColumn) else None  # a user has none
    return Policy(
        max_budget_usd=None if budget is None else Decimal(usd(budget)),
        budget_period=cast(Period | None, row.budget_period),
        allowed_models=None if row.allowed_models is None else tuple(row.allowed_models),
        rpm_limit=row.rpm_limit,
        tpm_limit=row.tpm_limit,
        cache=None if cache is None else CachePolicy.from_wire(cache),
    )


def store(row: PolicyRow, policy: Policy) -> None:
    row.max_budget_usd = policy.max_budget_usd
    row.budget_period = policy.budget_period
    row.allowed_models = None if policy.allowed_models is None else list(policy.allowed_models)
    row.rpm_limit = policy.rpm_limit
    row.tpm_limit = policy.tpm_limit
    if isinstance(row, CacheColumn):
        row.cache = None if policy.cache is None else policy.cache.to_wire()
    else:  # the API takes no cache default for a user
        assert policy.cache is None, "a user has no cache default"


def changed(old: Policy, changes: Mapping[str, Any]) -> Policy:
    """`old` with `changes` (field -> value; None clears it). A budget without a period
    runs for the `total`; clearing the budget clears its period; a period without a
    budget is refused (422 naming budget_period)."""
    values = dict(changes)
    if values.get("max_budget_usd") is not None:
        values["max_budget_usd"] = Decimal(usd(values["max_budget_usd"]))
    if values.get("allowed_models") is not None:
        values["allowed_models"] = tuple(dict.fromkeys(values["allowed_models"]))
    new = replace(old, **values)
    if new.max_budget_usd is None:
        if values.get("budget_period") is not None:
            raise InvalidPolicy(
                "budget_period needs a max_budget_usd: set both.", field="budget_period"
            )
        return replace(new, budget_period=None)
    if new.budget_period is None:
        return replace(new, budget_period="total")
    return new


def widened(old: Policy, new: Policy) -> list[str]:
    """The fields in which `new` allows more than `old`."""
    found = []
    if old.max_budget_usd is not None:
        if new.max_budget_usd is None or new.max_budget_usd > old.max_budget_usd:
            found.append("max_budget_usd")
        elif _RESETS[new.period] > _RESETS[old.period]:
            found.append("budget_period")
    if old.allowed_models is not None and (
        new.allowed_models is None or not _within(new.allowed_models, old.allowed_models)
    ):
        found.append("allowed_models")
    for name in _LIMITS:
        before, after = getattr(old, name), getattr(new, name)
        if before is not None and (after is None or after > before):
            found.append(name)
    return found


def exceeding(key: Policy, parent: Policy) -> list[str]:
    """The fields `key` sets to more than `parent` sets them."""
    found = []
    if (
        key.max_budget_usd is not None
        and parent.max_budget_usd is not None
        and key.max_budget_usd > parent.max_budget_usd
    ):
        found.append("max_budget_usd")
    if (
        key.allowed_models is not None
        and parent.allowed_models is not None
        and not _within(key.allowed_models, parent.allowed_models)
    ):
        found.append("allowed_models")
    for name in _LIMITS:
        mine, theirs = getattr(key, name), getattr(parent, name)
        if mine is not None and theirs is not None and mine > theirs:
            found.append(name)
    return found


def _within(patterns: tuple[str, ...], parents: tuple[str, ...]) -> bool:
    return all(covers(parents, pattern) for pattern in patterns)


def difference(old: Policy, new: Policy) -> tuple[dict[str, Any], dict[str, Any]]:
    """The changed fields, before and after, as the audit log records them (wire form;
    None: unset)."""
    before, after = old.to_wire(), new.to_wire()
    names = [n for n in POLICY_FIELDS if before.get(n) != after.get(n)]
    return {n: before.get(n) for n in names}, {n: after.get(n) for n in names}


def spend_changed(old: Policy, new: Policy) -> bool:
    """Whether the scope's spend counters must be rebuilt (common.budgets.SpendCounters)."""
    return (old.max_budget_usd, old.budget_period) != (new.max_budget_usd, new.budget_period)
