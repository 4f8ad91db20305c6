"""Prometheus metrics of the auth service (per replica; every replica shows the same)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Gauge

from common.metrics import registry_for

REGISTRY = registry_for("auth")

# Teams only, never keys or users: one series per team with a budget.
TEAM_BUDGET_USED = Gauge(
    "llm_team_budget_used_ratio",
    "What each team with a budget has spent in its current period, over its budget "
    "(1: all of it). Refreshed every 15 s.",
    ("team_id", "team"),
    registry=REGISTRY,
)


def show_team_budgets(used: Mapping[tuple[str, str], float | None]) -> None:
    """Make the gauge hold exactly these teams (`(team_id, team name)`): each set to its
    value, None keeping the last one known (its spend could not be read); every other
    series (a team deleted, renamed or without a budget now) removed."""
    for labels, ratio in used.items():
        if ratio is not None:
            TEAM_BUDGET_USED.labels(*labels).set(ratio)
    shown = {
        (sample.labels["team_id"], sample.labels["team"])
        for metric in TEAM_BUDGET_USED.collect()
        for sample in metric.samples
    }
    for labels in shown - used.keys():
        TEAM_BUDGET_USED.remove(*labels)
