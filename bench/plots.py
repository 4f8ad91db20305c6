"""The chat scenarios of a `make bench` report as two PNGs, for readers who would rather look.

- `chat-throughput.png`: requests per second of each system (bare upstream, ours, LiteLLM,
  Portkey) in each chat scenario (c=1, c=50, c=50 against the delayed upstream), on a log
  scale (the bare upstream answers 10-100x more than any proxy);
- `chat-added-p50.png`: the p50 latency each proxy adds to the bare upstream's.

A bar is the median of the row's windows; its error bar spans their range (min-max). The
added p50 is taken round by round (each window minus the bare upstream's of the same
round), as in the tables. matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from repeats import per_round, spread, windows

SYSTEMS = {"bare": "bare upstream", "ours": "ours", "litellm": "LiteLLM", "portkey": "Portkey"}
COLOURS = {"bare": "#9e9e9e", "ours": "#1f77b4", "litellm": "#ff7f0e", "portkey": "#2ca02c"}
THROUGHPUT = "chat-throughput.png"
ADDED_P50 = "chat-added-p50.png"


def _chat_scenarios(rows: list[dict[str, Any]]) -> list[str]:
    """The plain chat scenarios, in the report's order (no streaming, embeddings or
    governed key)."""
    names = [r["scenario"] for r in rows if r["kind"] == "chat" and r["target"] == "bare"]
    return list(dict.fromkeys(names))


def _measured(row: dict[str, Any] | None) -> bool:
    return bool(row) and bool(windows(row)) and not row.get("not_installed")  # type: ignore[union-attr]


def _p50(window: dict[str, Any]) -> float | None:
    value = (window.get("latency_ms") or {}).get("p50")
    return None if value is None else float(value)


def _added(window: dict[str, Any], bare: dict[str, Any]) -> float | None:
    mine, base = _p50(window), _p50(bare)
    return None if mine is None or base is None else mine - base


def figures(report: dict[str, Any]) -> dict[str, dict[str, dict[str, tuple[float, float, float]]]]:
    """{"throughput" | "added_p50": {system: {scenario: (median, min, max)}}} of the chat
    scenarios; a system that did not serve a scenario is left out of it."""
    rows = report["chat"]["rows"]
    found: dict[tuple[str, str], dict[str, Any]] = {(r["scenario"], r["target"]): r for r in rows}
    out: dict[str, dict[str, dict[str, tuple[float, float, float]]]] = {
        "throughput": {},
        "added_p50": {},
    }
    for scenario in _chat_scenarios(rows):
        bare = found.get((scenario, "bare"))
        for system in SYSTEMS:
            row = found.get((scenario, system))
            if not _measured(row) or not row or not row.get("ok"):
                continue
            rps = spread([float(w["rps"]) for w in windows(row)])
            if rps:
                out["throughput"].setdefault(system, {})[scenario] = rps
            if system != "bare" and _measured(bare):
                added = spread(per_round(_added, row, bare))
                if added:
                    out["added_p50"].setdefault(system, {})[scenario] = added
    return out


def _bars(
    data: dict[str, dict[str, tuple[float, float, float]]],
    scenarios: list[str],
    title: str,
    ylabel: str,
    path: Path,
    *,
    log: bool = True,
    digits: str = "%.0f",
) -> Path:
    """Grouped bars, one group per scenario and one bar per system, range as error bars."""
    systems = [s for s in SYSTEMS if s in data]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        xs, heights, low, high = [], [], [], []
        for j, scenario in enumerate(scenarios):
            if scenario not in data[system]:
                continue
            median, least, most = data[system][scenario]
            xs.append(j - 0.4 + width * (i + 0.5))
            heights.append(median)
            low.append(median - least)
            high.append(most - median)
        bars = ax.bar(
            xs, heights, width, yerr=[low, high], capsize=3, label=SYSTEMS[system],
            color=COLOURS[system],
        )  # fmt: skip
        ax.bar_label(bars, fmt=digits, fontsize=7, padding=2)
    ax.set_xticks(range(len(scenarios)), scenarios)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    # A log scale (the figures span 1-10,000) unless a bar is not positive (an added p50
    # can be, within the noise, when the upstream is slow).
    if log and all(median > 0 for system in systems for median, _, _ in data[system].values()):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write(report: dict[str, Any], directory: Path, prefix: str = "") -> list[Path]:
    """The two PNGs of `report`'s chat scenarios in `directory`; their paths."""
    data = figures(report)
    scenarios = _chat_scenarios(report["chat"]["rows"])
    chat = report["chat"]
    rounds = chat.get("rounds", 1)
    note = f"median of {rounds} windows of {chat['duration_seconds']:g} s; bars: min-max"
    when = report.get("when", "")
    directory.mkdir(parents=True, exist_ok=True)
    return [
        _bars(
            data["throughput"], scenarios,
            f"Chat throughput, requests/s (higher is better; {note})\n{when}",
            "requests/s (log scale)", directory / f"{prefix}{THROUGHPUT}",
        ),
        _bars(
            data["added_p50"], scenarios,
            f"p50 latency added to the bare upstream's, ms (lower is better; {note})\n{when}",
            "added p50, ms (log scale)", directory / f"{prefix}{ADDED_P50}", digits="%.1f",
        ),
    ]  # fmt: skip
