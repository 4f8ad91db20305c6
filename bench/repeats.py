"""Rows measured in several windows: one row per (scenario, target), the median of its windows.

`make bench` (bench/suite.py) measures every row of the chat scenarios in 3 windows, the
targets taking turns (bare, ours, LiteLLM, Portkey, then the next round), so that each
target's windows are spread over the same minutes as the others'. A row keeps its windows
(`row["windows"]`, in round order) and carries, in the windows' own fields, the median of
each figure over them; counts (requests, errors, statuses) are summed instead.

Figures that compare two rows (added latency, ratios) are computed round by round, from
windows measured a few seconds apart, and then reduced to a median and a range
(`per_round`, `spread`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

SUMMED = ("requests", "ok", "errors", "completed_total", "statuses")


def _median_of(values: list[Any]) -> Any:
    """The median of numbers, dict by dict for dicts (the keys of any window); the first
    value for anything else (text)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for v in present):
        keys = dict.fromkeys(k for v in present for k in v)
        return {k: _median_of([v.get(k) for v in present]) for k in keys}
    numbers = [v for v in present if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) == len(present):
        return statistics.median(numbers)
    return present[0]


def _summed(values: list[Any]) -> Any:
    if all(isinstance(v, dict) for v in values):
        keys = dict.fromkeys(k for v in values for k in v)
        return {k: sum(v.get(k, 0) for v in values) for k in keys}
    return sum(values)


def median_row(windows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row from its windows (load generator results): each figure's median, counts
    summed, the windows kept under `windows`."""
    keys = dict.fromkeys(k for w in windows for k in w)
    row = {
        k: (_summed if k in SUMMED else _median_of)([w.get(k) for w in windows])
        for k in keys
        if k != "windows"
    }
    row["windows"] = list(windows)
    return row


def windows(row: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A row's windows; a row measured once (an older report) is its own only window."""
    if not row:
        return []
    return list(row.get("windows") or [row])


def per_round(figure: Callable[..., float | None], *rows: dict[str, Any] | None) -> list[float]:
    """`figure(window_a, window_b, ...)` for each round that every row measured (windows
    paired by their index), the rounds where it is None left out."""
    found = [windows(row) for row in rows]
    if not found or not all(found):
        return []
    values = (figure(*paired) for paired in zip(*found, strict=False))
    return [v for v in values if v is not None]


def spread(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(median, min, max) of `values`, or None when there are none."""
    if not values:
        return None
    return statistics.median(values), min(values), max(values)
