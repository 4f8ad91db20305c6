"""Chat through the full path (API key check, rate limit, gateway, inference, call event)
against a zero-delay local OpenAI-protocol upstream, compared with the bare upstream.

    .venv/bin/python bench/chat_path.py [--requests 2000]

Reports, at concurrency 1: p50/p95/p99 of the bare upstream and of the gateway path, the
added p50, and the CPU milliseconds per request of the gateway and inference processes
(utime+stime from /proc, before and after). Writes bench/results/chat_path.json.
`make bench` measures the same path under load, side by side with LiteLLM (bench/suite.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
from typing import Any

import httpx
import psutil
from _common import (
    RESULTS,
    UPSTREAM_KEY,
    Platform,
    cpu_seconds,
    machine,
    platform,
    provision,
    start_upstream,
    stop,
    summary,
    utc_now,
)
from scenarios import GOVERNED_POLICY

BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def measure(client: httpx.Client, url: str, body: dict[str, object], n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.post(url, json=body)
        latencies.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text
    return latencies


def profile(py_spy: str, name: str, pid: int) -> subprocess.Popen[bytes]:
    out = RESULTS / f"profile-{name}.txt"
    return subprocess.Popen(  # noqa: S603
        [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
         "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--profile",
        metavar="PY_SPY",
        help="path to a py-spy binary: sample gateway and inference during the measured run "
        "and write collapsed stacks to bench/results/profile-<process>.txt",
    )
    parser.add_argument(
        "--governed",
        action="store_true",
        help="call with an API key under a policy (scenarios.GOVERNED_POLICY): every check, "
        "hold and settlement of issue 18 on every call",
    )
    return parser.parse_args()


def measure_both(
    running: Platform, upstream_url: str, n: int, py_spy: str | None, *, governed: bool = False
) -> tuple[list[float], list[float], dict[str, float], float]:
    """The bare upstream's latencies, then the gateway path's, each after a warm-up; during
    the gateway path, the CPU ms per request of gateway and inference and of this process
    (the load generator), sampled by py-spy when given."""
    keys = provision(running.gateway, upstream_url, policy=GOVERNED_POLICY if governed else None)
    key = keys["governed" if governed else "plain"]
    procs = {name: [psutil.Process(running.pids[name])] for name in ("gateway", "inference")}
    bare_body = dict(BODY, model="gpt-4o-mini")
    with (
        httpx.Client(headers={"Authorization": f"Bearer {UPSTREAM_KEY}"}) as bare,
        httpx.Client(headers={"Authorization": f"Bearer {key}"}) as ours,
    ):
        measure(bare, f"{upstream_url}/chat/completions", bare_body, 200)  # warm-up
        measure(ours, f"{running.gateway}/v1/chat/completions", BODY, 200)
        bare_lat = measure(bare, f"{upstream_url}/chat/completions", bare_body, n)
        before = {name: cpu_seconds(p) for name, p in procs.items()}
        own = [psutil.Process(os.getpid())]
        own_before = cpu_seconds(own)
        spies = [profile(py_spy, name, running.pids[name]) for name in procs] if py_spy else []
        ours_lat = measure(ours, f"{running.gateway}/v1/chat/completions", BODY, n)
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        cpu = {name: (cpu_seconds(p) - before[name]) * 1000 / n for name, p in procs.items()}
        generator_cpu = (cpu_seconds(own) - own_before) * 1000 / n
    return bare_lat, ours_lat, cpu, generator_cpu


def print_result(result: dict[str, Any]) -> None:
    print("| path | p50 ms | p95 ms | p99 ms |\n|---|---|---|---|")
    for name in ("bare_ms", "gateway_ms"):
        r = result[name]
        print(f"| {name[:-3]} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} |")
    print(f"\nadded p50: {result['added_p50_ms']:.2f} ms")
    print("CPU ms per request:", json.dumps(result["cpu_ms_per_request"], indent=None))


def main() -> int:
    args = parse_args()
    n = args.requests
    upstream, upstream_port = start_upstream()
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    # The local model is not measured here; its background load would land in inference's CPU.
    try:
        with platform(RESULTS / "chat_path.log", INFERENCE_LOCAL_PRELOAD="false") as running:
            bare_lat, ours_lat, cpu, generator_cpu = measure_both(
                running, upstream_url, n, args.profile, governed=args.governed
            )
    finally:
        stop(upstream)
    result = {
        "when": utc_now(),
        "machine": machine(),
        "requests": n,
        "concurrency": 1,
        "governed": args.governed,
        "bare_ms": summary(bare_lat),
        "gateway_ms": summary(ours_lat),
        "added_p50_ms": statistics.median(ours_lat) - statistics.median(bare_lat),
        "cpu_ms_per_request": {
            **cpu,
            "gateway+inference": sum(cpu.values()),
            "load generator": generator_cpu,
        },
    }
    (RESULTS / "chat_path.json").write_text(json.dumps(result, indent=2))
    print_result(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
