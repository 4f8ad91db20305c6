"""Chat through two checkouts side by side, against the transport floor, in the same minutes.

    .venv/bin/python bench/chat_ab.py --before /path/to/other/checkout [--rounds 3]

Starts the floor's two hops (bench/floor.py), one zero-delay upstream and two platforms:
`--before` (another checkout of this repository with its own .venv, e.g. `git archive main`
unpacked and `make install`ed) and this one. Then, for each round and scenario, one window
of bench/loadgen.py against each (the order of the two platforms alternates between rounds,
so a drift in the machine's load falls on both). Each window reads the CPU time of every
service over exactly its measured seconds (utime + stime from /proc), as bench/suite.py does.

Prints, per scenario and target, the median and range over the rounds of the CPU ms per
request of gateway, inference, the two together and all our services (with telemetry
storing the events), and of req/s and p50; writes bench/results/chat_ab.json. The machine's
load average is printed before and after: the figures that matter are the ratios within a
round (before / after, after / floor).
"""

from __future__ import annotations

import argparse
import json
import statistics
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
from _common import (
    RESULTS,
    SERVICE_NAMES,
    machine,
    platform,
    provision,
    start_upstream,
    stop,
    tree,
    utc_now,
)
from floor import floor_stack
from suite import FULL, generate

PROMPT = [{"role": "user", "content": "hello there"}]
# (name, kind, concurrency): the floor's hops do not stream, so streams have no floor row.
SCENARIOS = (
    ("chat c=1", "chat", 1),
    ("chat c=50", "chat", 50),
    ("stream c=1", "stream", 1),
    ("stream c=10", "stream", 10),
)


def window(
    url: str, body: dict[str, Any], token: str | None, concurrency: int,
    groups: dict[str, list[psutil.Process]], *, warmup: float, duration: float,
) -> dict[str, Any]:  # fmt: skip
    """One bench/loadgen.py window (bench/suite.py's); the CPU ms per request of each group
    over it, and of gateway and inference together, and of all our services."""
    settings = replace(FULL, warmup=warmup, duration=duration)
    result = generate(url, body, token or "unused", concurrency, settings, groups)
    cpu = result["cpu_ms_per_request"]
    if "gateway" in cpu and "inference" in cpu:
        cpu["gateway+inference"] = cpu["gateway"] + cpu["inference"]
    if "auth" in groups:
        cpu["ours"] = sum(cpu[name] for name in SERVICE_NAMES)
    return {"rps": result["rps"], "p50": result["latency_ms"]["p50"],
            "errors": result["errors"], "cpu": cpu}  # fmt: skip


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--scenarios", nargs="*", default=[s[0] for s in SCENARIOS])
    args = parser.parse_args()
    started_load = machine()["load_average"]
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        upstream, port = start_upstream()
        stack.callback(stop, upstream)
        upstream_url = f"http://127.0.0.1:{port}/v1"
        floor_url, floor_procs = stack.enter_context(floor_stack())
        running = {
            "before": stack.enter_context(
                platform(
                    RESULTS / "chat_ab-before.log",
                    root=args.before.resolve(),
                    INFERENCE_LOCAL_PRELOAD="false",
                )
            ),
            "after": stack.enter_context(
                platform(RESULTS / "chat_ab-after.log", INFERENCE_LOCAL_PRELOAD="false")
            ),
        }
        keys = {name: provision(p.gateway, upstream_url)["plain"] for name, p in running.items()}
        for round_no in range(args.rounds):
            order = ["before", "after"] if round_no % 2 == 0 else ["after", "before"]
            for name, kind, concurrency in SCENARIOS:
                if name not in args.scenarios:
                    continue
                body: dict[str, Any] = {"model": "openai/gpt-4o-mini", "messages": PROMPT}
                if kind == "stream":
                    body["stream"] = True
                targets = (["floor"] if kind == "chat" else []) + order
                for target in targets:
                    if target == "floor":
                        groups = {k: [p] for k, p in floor_procs.items()}
                        result = window(floor_url, dict(body, model="gpt-4o-mini"), None,
                                        concurrency, groups, warmup=args.warmup,
                                        duration=args.duration)  # fmt: skip
                    else:
                        p = running[target]
                        groups = {n: tree(p.pids[n]) for n in SERVICE_NAMES}
                        groups["upstream"] = tree(upstream.pid)
                        result = window(f"{p.gateway}/v1/chat/completions", body, keys[target],
                                        concurrency, groups, warmup=args.warmup,
                                        duration=args.duration)  # fmt: skip
                    rows.append({"round": round_no, "scenario": name, "target": target, **result})
                    cpu = result["cpu"]
                    print(f"  round {round_no} {name:<12} {target:<7} {result['rps']:7.1f} req/s"
                          f"  gateway {cpu['gateway']:.3f}  inference {cpu['inference']:.3f}"
                          f"  together {cpu['gateway+inference']:.3f}"
                          + (f"  ours {cpu['ours']:.3f}" if "ours" in cpu else "")
                          + f"  errors {result['errors']}", flush=True)  # fmt: skip
    summary: dict[str, Any] = {}
    for name, _, _ in SCENARIOS:
        for target in ("floor", "before", "after"):
            mine = [r for r in rows if r["scenario"] == name and r["target"] == target]
            if not mine:
                continue
            keys_ = mine[0]["cpu"].keys()
            summary[f"{name} / {target}"] = {
                "rps": spread([r["rps"] for r in mine]),
                "p50": spread([r["p50"] for r in mine]),
                "cpu": {k: spread([r["cpu"][k] for r in mine]) for k in keys_},
            }
    result_all = {"when": utc_now(), "machine": machine(), "load_before": started_load,
                  "before": str(args.before), "rows": rows, "summary": summary}  # fmt: skip
    (RESULTS / "chat_ab.json").write_text(json.dumps(result_all, indent=2))
    print(f"\nload average before {started_load}, after {machine()['load_average']}")
    print("| scenario | target | req/s | gateway | inference | together | ours (5 services) |")
    print("|---|---|---|---|---|---|---|")
    for label, s in summary.items():
        cells = [f"{s['rps']['median']:.0f}"]
        for k in ("gateway", "inference", "gateway+inference", "ours"):
            c = s["cpu"].get(k)
            cells.append(f"{c['median']:.2f} ({c['min']:.2f}-{c['max']:.2f})" if c else "")
        scenario, target = label.split(" / ")
        print(f"| {scenario} | {target} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
