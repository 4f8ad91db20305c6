"""The governance policy: its wire form, the model allow-list, and the budget periods."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from common.policy import (
    MAX_CACHE_TTL_SECONDS,
    NO_POLICIES,
    CachePolicy,
    Policies,
    Policy,
    covers,
    parse_budget,
    period_end,
    period_key,
    period_start,
    usd,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_policy_survives_its_wire_form() -> None:
    policy = Policy(
        max_budget_usd=Decimal("25.00"),
        budget_period="month",
        allowed_models=("openai/*", "fast"),
        rpm_limit=60,
        tpm_limit=10_000,
    )
    wire = policy.to_wire()
    assert wire["max_budget_usd"] == "25.00"
    assert Policy.from_wire(wire) == policy


def test_only_the_fields_set_travel() -> None:
    assert Policy(rpm_limit=5).to_wire() == {"rpm_limit": 5}
    assert Policies({"key": Policy(), "user": Policy(tpm_limit=9)}).to_wire() == {
        "user": {"tpm_limit": 9}
    }
    assert Policies({"key": Policy()}).to_wire() is None
    assert Policies.from_wire(None) is NO_POLICIES


@pytest.mark.parametrize(
    "wire",
    [
        {"max_budget_usd": "-1"},
        {"max_budget_usd": "NaN"},
        {"max_budget_usd": "1e12"},
        {"max_budget_usd": "0.0000000001"},
        {"max_budget_usd": True},
        {"budget_period": "year"},
        {"rpm_limit": 0},
        {"rpm_limit": "5"},
        {"tpm_limit": 10**10},
        {"allowed_models": "openai/*"},
        {"allowed_models": ["openai/(a|b)"]},
        {"allowed_models": ["x" * 201]},
        {"allowed_models": [f"m{i}" for i in range(65)]},
        {"surprise": 1},
        [],
    ],
)
def test_a_malformed_policy_is_refused(wire: object) -> None:
    with pytest.raises(ValueError, match=r"\w"):  # a message saying why
        Policy.from_wire(wire)


@pytest.mark.parametrize(
    "cache",
    [
        CachePolicy("exact"),
        CachePolicy("off"),
        CachePolicy("exact", ttl_seconds=1, temperature=True),
        CachePolicy(
            "semantic",
            ttl_seconds=MAX_CACHE_TTL_SECONDS,
            tools=True,
            multi_turn=True,
            threshold=0.5,
        ),
        CachePolicy("semantic", threshold=1.0),
    ],
)
def test_a_cache_policy_survives_its_wire_form(cache: CachePolicy) -> None:
    assert CachePolicy.from_wire(cache.to_wire()) == cache
    policy = Policy(rpm_limit=5, cache=cache)
    assert Policy.from_wire(policy.to_wire()) == policy
    assert Policies.from_wire(Policies({"team": policy}).to_wire()).get("team") == policy


def test_a_cache_policy_carries_only_what_is_not_its_default() -> None:
    assert CachePolicy("exact").to_wire() == {"mode": "exact"}
    assert CachePolicy("semantic", ttl_seconds=600, multi_turn=True, threshold=0.9).to_wire() == {
        "mode": "semantic",
        "ttl_seconds": 600,
        "multi_turn": True,
        "threshold": 0.9,
    }
    assert Policy(cache=CachePolicy("off")).to_wire() == {"cache": {"mode": "off"}}
    # Defaults sent in full are the same policy.
    assert CachePolicy.from_wire(
        {"mode": "exact", "ttl_seconds": None, "temperature": False, "threshold": None}
    ) == CachePolicy("exact")
    assert CachePolicy.from_wire({"mode": "semantic", "threshold": 1}).threshold == 1.0


@pytest.mark.parametrize(
    "wire",
    [
        {},
        {"mode": "fuzzy"},
        {"mode": None},
        {"ttl_seconds": 60},
        {"mode": "exact", "ttl_seconds": 0},
        {"mode": "exact", "ttl_seconds": MAX_CACHE_TTL_SECONDS + 1},
        {"mode": "exact", "ttl_seconds": 60.0},
        {"mode": "exact", "ttl_seconds": "60"},
        {"mode": "exact", "ttl_seconds": True},
        {"mode": "exact", "temperature": 1},
        {"mode": "exact", "tools": "yes"},
        {"mode": "exact", "multi_turn": None},
        {"mode": "semantic", "threshold": 0.49},
        {"mode": "semantic", "threshold": 1.01},
        {"mode": "semantic", "threshold": float("nan")},
        {"mode": "semantic", "threshold": "0.9"},
        {"mode": "semantic", "threshold": True},
        {"mode": "exact", "ttl": 60},
        ["exact"],
        "exact",
    ],
)
def test_a_malformed_cache_policy_is_refused(wire: object) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        CachePolicy.from_wire(wire)
    with pytest.raises(ValueError, match=r"\w"):
        Policy.from_wire({"cache": wire})


def test_a_cache_default_is_not_governance() -> None:
    """It travels (the policy is not empty) but governs nothing: no budget, no limit."""
    cached = Policy(cache=CachePolicy("exact"))
    assert not cached.empty
    assert not cached.governs
    assert not cached.governs_spend
    assert cached.allows("any/model")
    assert Policy().empty
    assert not Policy().governs
    assert Policy(rpm_limit=1, cache=CachePolicy("exact")).governs
    assert Policies({"key": cached}).to_wire() == {"key": {"cache": {"mode": "exact"}}}


def test_a_keys_cache_default_wins_over_its_teams() -> None:
    team = Policy(cache=CachePolicy("semantic"))
    key = Policy(cache=CachePolicy("off"))
    assert Policies({"key": key, "team": team}).cache == CachePolicy("off")
    assert Policies({"key": Policy(rpm_limit=1), "team": team}).cache == CachePolicy("semantic")
    assert Policies({"user": Policy(tpm_limit=5)}).cache is None
    assert NO_POLICIES.cache is None


def test_malformed_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="keyed by key, user and team"):
        Policies.from_wire({"org": {}})
    with pytest.raises(ValueError, match="keyed by key, user and team"):
        Policies.from_wire(["key"])


def test_budgets_are_exact_decimals() -> None:
    assert parse_budget("25.00") == Decimal("25.00")
    assert parse_budget("0.000000001") == Decimal("0.000000001")
    assert parse_budget(3) == Decimal(3)


def test_allowed_models_match_names_aliases_and_globs() -> None:
    policy = Policy(allowed_models=("openai/mock-*", "fast"))
    assert policy.allows("openai/mock-1")
    assert policy.allows("fast", ["huggingface/some-model"])
    assert not policy.allows("openai/gpt-4o")
    assert not policy.allows("OPENAI/mock-1")  # case matters, as in model names
    # An alias is allowed when every target is.
    assert policy.allows("cheap", ["openai/mock-1", "openai/mock-2"])
    assert not policy.allows("cheap", ["openai/mock-1", "openai/gpt-4o"])
    assert not policy.allows("cheap", [])
    assert Policy().allows("anything")
    assert not Policy(allowed_models=()).allows("openai/mock-1")


def test_the_first_refusing_scope_is_named() -> None:
    policies = Policies(
        {"key": Policy(allowed_models=("openai/*",)), "team": Policy(allowed_models=("local/*",))}
    )
    assert policies.denying("openai/gpt-4o") == "team"
    assert policies.denying("huggingface/x") == "key"
    assert Policies({"user": Policy(rpm_limit=1)}).denying("any/model") is None


def test_a_narrower_glob_is_covered_by_a_wider_one() -> None:
    assert covers(["openai/*"], "openai/gpt-*")
    assert covers(["openai/*"], "openai/gpt-4o")
    assert not covers(["openai/gpt-*"], "openai/*")
    assert not covers([], "openai/gpt-4o")


def test_periods_start_at_utc_boundaries() -> None:
    now = at("2026-12-03T17:45:00")  # a Thursday
    assert period_start("day", now) == at("2026-12-03T00:00:00")
    assert period_start("week", now) == at("2026-11-30T00:00:00")  # Monday
    assert period_start("month", now) == at("2026-12-01T00:00:00")
    assert period_start("total", now) is None
    assert period_end("day", now) == at("2026-12-04T00:00:00")
    assert period_end("week", now) == at("2026-12-07T00:00:00")
    assert period_end("month", now) == at("2027-01-01T00:00:00")
    assert period_end("total", now) is None
    assert period_key("day", now) == "day:2026-12-03"
    assert period_key("week", now) == "week:2026-11-30"
    assert period_key("month", now) == "month:2026-12"
    assert period_key("total", now) == "total"


def test_a_period_is_judged_in_utc_whatever_the_offset() -> None:
    from datetime import timedelta, timezone

    late_evening_in_new_york = datetime(2026, 12, 3, 20, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert period_key("day", late_evening_in_new_york) == "day:2026-12-04"
    assert period_end("month", at("2026-01-31T23:59:59")) == at("2026-02-01T00:00:00")


@pytest.mark.parametrize(
    ("amount", "shown"),
    [("25", "25.00"), ("25.5", "25.50"), ("0.010000000", "0.01"), ("0.000123", "0.000123"),
     ("1E+1", "10.00"), ("0", "0.00"), ("1000000000", "1000000000.00")],
)  # fmt: skip
def test_amounts_are_shown_with_two_decimals_at_least(amount: str, shown: str) -> None:
    assert usd(Decimal(amount)) == shown
