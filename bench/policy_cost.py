"""What a policy costs per chat request: the same request with a plain key and with a key
under scenarios.GOVERNED_POLICY (a budget, an RPM and a TPM limit and a model list: every
check, hold and settlement on every call), alternating window by window on one platform.

    .venv/bin/python bench/policy_cost.py [--rounds 5] [--duration 6]

`make bench` measures the two as separate scenarios minutes apart, where the machine's
drift between them is as large as the difference. Here each round runs the plain key's
window, then the governed key's, at each concurrency (1 and 50), so that every pair shares
its minute; the report gives, per concurrency, the CPU ms per request of our services
(gateway, auth, inference, embeddings, telemetry) and of Redis with each key, and the
difference per round: medians and ranges over the rounds. Writes
bench/results/policy_cost.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from typing import Any

from _common import RESULTS, machine, platform, provision, tree, utc_now
from scenarios import GOVERNED_POLICY, SCENARIOS, request_for
from suite import FULL, generate, upstream

CONCURRENCIES = (1, 50)


def _scenario(concurrency: int, governed: bool) -> Any:
    return next(
        s for s in SCENARIOS
        if s.kind == "chat" and not s.delayed and s.concurrency == concurrency
        and s.governed == governed
    )  # fmt: skip


def _median_range(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per window")
    args = parser.parse_args()
    settings = replace(FULL, duration=args.duration)
    rounds: dict[int, list[dict[str, float]]] = {c: [] for c in CONCURRENCIES}
    with upstream() as (bare, bare_url), platform(
        RESULTS / "policy_cost.log", INFERENCE_LOCAL_PRELOAD="false"
    ) as running:  # fmt: skip
        keys = provision(running.gateway, bare_url + "/v1", policy=GOVERNED_POLICY)
        urls = {"ours": running.gateway, "bare": bare_url}
        processes = running.processes()
        services = [p for name, procs in processes.items()
                    if name not in ("redis", "postgres") for p in procs]  # fmt: skip
        groups = {"services": services, "redis": processes.get("redis", []),
                  "upstream": tree(bare.pid)}  # fmt: skip
        for n in range(args.rounds):
            for concurrency in CONCURRENCIES:
                pair: dict[str, float] = {}
                for governed in (False, True):
                    url, body, token = request_for(
                        _scenario(concurrency, governed), "ours", urls, keys
                    )
                    result = generate(url, body, token, concurrency, settings, groups)
                    assert result["errors"] == 0, result
                    name = "governed" if governed else "plain"
                    pair[name] = result["cpu_ms_per_request"]["services"]
                    pair[f"{name}_redis"] = result["cpu_ms_per_request"]["redis"]
                pair["added"] = pair["governed"] - pair["plain"]
                pair["added_redis"] = pair["governed_redis"] - pair["plain_redis"]
                rounds[concurrency].append(pair)
                print(f"round {n + 1} c={concurrency}: plain {pair['plain']:.3f} ms, governed "
                      f"{pair['governed']:.3f} ms, added {pair['added']:+.3f} ms "
                      f"(Redis {pair['added_redis']:+.3f})", flush=True)  # fmt: skip
    summary = {
        str(c): {k: _median_range([r[k] for r in rows]) for k in rows[0]}
        for c, rows in rounds.items()
    }
    report = {"when": utc_now(), "machine": machine(), "policy": GOVERNED_POLICY,
              "rounds": {str(c): rows for c, rows in rounds.items()}, "summary": summary,
              "duration_seconds": args.duration}  # fmt: skip
    (RESULTS / "policy_cost.json").write_text(json.dumps(report, indent=2))
    print("\n| concurrency | services CPU ms/req, plain key | governed key | added | "
          "Redis CPU ms/req added |\n|---|---|---|---|---|")  # fmt: skip
    for c, s in summary.items():
        cells = [f"{s[k]['median']:.2f} ({s[k]['min']:.2f}-{s[k]['max']:.2f})"
                 for k in ("plain", "governed", "added", "added_redis")]  # fmt: skip
        print(f"| c={c} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
