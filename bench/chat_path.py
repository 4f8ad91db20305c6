"""Chat through the full path (API key check, rate limit, gateway, inference, call event)
against a zero-delay local OpenAI-protocol upstream, compared with the bare upstream.

    .venv/bin/python bench/chat_path.py [--requests 2000]

Reports, at concurrency 1: p50/p95/p99 of the bare upstream and of the gateway path, the
added p50, and the CPU milliseconds per request of the gateway and inference processes
(utime+stime from /proc, before and after). Writes bench/results/chat_path.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "libs" / "common" / "src"))
from common import devstack  # noqa: E402

KEY = "sk-bench-upstream-0123456789abcdef"
PASSWORD = "bench-Passphrase-for-chat-path-1"  # noqa: S105
BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def wait(url: str, deadline: float = 120) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready")


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure(client: httpx.Client, url: str, body: dict[str, object], n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.post(url, json=body)
        latencies.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text
    return latencies


def profile(py_spy: str, name: str, pid: int) -> subprocess.Popen[bytes]:
    out = ROOT / "bench" / "results" / f"profile-{name}.txt"
    return subprocess.Popen(  # noqa: S603
        [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
         "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies: list[float]) -> dict[str, float]:
    return {f"p{int(q * 100)}": pct(latencies, q) for q in (0.5, 0.95, 0.99)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--profile",
        metavar="PY_SPY",
        help="path to a py-spy binary: sample gateway and inference during the measured run "
        "and write collapsed stacks to bench/results/profile-<process>.txt",
    )
    args = parser.parse_args()
    n = args.requests
    upstream_port = devstack.free_port()
    ports = {name: devstack.free_port() for name in (*devstack.SERVICES, "gateway")}
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        {
            "ADMIN_EMAIL": "perf@example.com",
            "ADMIN_PASSWORD": PASSWORD,
            "INTERNAL_SIGNING_KEY": secrets.token_hex(32),
            "GATEWAY_RATE_LIMIT_PER_MINUTE": "0",
            "GATEWAY_RATE_LIMIT_MODEL_PER_MINUTE": "0",
            "LOG_LEVEL": "WARNING",
            # Not measured here; its background load would land in inference's CPU time.
            "INFERENCE_LOCAL_PRELOAD": "false",
            # A fresh embedded Postgres and Redis per run: nothing left from earlier runs.
            "PLATFORM_DATA_DIR": tempfile.mkdtemp(prefix="bench-"),
            "REDIS_URL": f"redis://127.0.0.1:{devstack.free_port()}/0",
            **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
        }
    )
    upstream = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "common.fakes.run", "openai", "--port", str(upstream_port),
         "--api-key", KEY],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    log = open(ROOT / "bench" / "results" / "chat_path.log", "wb")  # noqa: SIM115
    stack = subprocess.Popen(
        [sys.executable, "-m", "common.devstack", "run"], cwd=ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    try:
        wait(f"{gateway}/readyz")
        with httpx.Client(base_url=gateway) as browser:
            login = browser.post(
                "/auth/login", json={"email": "perf@example.com", "password": PASSWORD}
            )
            browser.headers["X-CSRF-Token"] = login.json()["csrf_token"]
            browser.post(
                "/v1/providers/credentials",
                json={
                    "provider": "openai",
                    "name": f"bench-{secrets.token_hex(4)}",
                    "api_key": KEY,
                    "base_url": upstream_url,
                },
            ).raise_for_status()
            key = browser.post("/auth/api-keys", json={"name": "bench"}).json()["key"]
        children = {
            " ".join(p.cmdline()): p.pid for p in psutil.Process(stack.pid).children(recursive=True)
        }
        pids = {
            name: next(pid for cmd, pid in children.items() if cmd.endswith(f"-m {name}"))
            for name in ("gateway", "inference")
        }
        headers = {"Authorization": f"Bearer {key}"}
        bare_body = dict(BODY, model="gpt-4o-mini")
        with (
            httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as bare,
            httpx.Client(headers=headers) as ours,
        ):
            measure(bare, f"{upstream_url}/chat/completions", bare_body, 200)  # warm-up
            measure(ours, f"{gateway}/v1/chat/completions", BODY, 200)
            bare_lat = measure(bare, f"{upstream_url}/chat/completions", bare_body, n)
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            own_before = cpu_seconds(os.getpid())
            spies = (
                [profile(args.profile, name, pid) for name, pid in pids.items()]
                if args.profile
                else []
            )
            ours_lat = measure(ours, f"{gateway}/v1/chat/completions", BODY, n)
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            cpu = {name: (cpu_seconds(pid) - before[name]) * 1000 / n for name, pid in pids.items()}
            generator_cpu = (cpu_seconds(os.getpid()) - own_before) * 1000 / n
        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "requests": n,
            "concurrency": 1,
            "bare_ms": summary(bare_lat),
            "gateway_ms": summary(ours_lat),
            "added_p50_ms": statistics.median(ours_lat) - statistics.median(bare_lat),
            "cpu_ms_per_request": {
                **cpu,
                "gateway+inference": sum(cpu.values()),
                "load generator": generator_cpu,
            },
        }
        out = ROOT / "bench" / "results" / "chat_path.json"
        out.write_text(json.dumps(result, indent=2))
        print("| path | p50 ms | p95 ms | p99 ms |\n|---|---|---|---|")
        for name in ("bare_ms", "gateway_ms"):
            r = result[name]
            print(f"| {name[:-3]} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} |")  # type: ignore[index]
        print(f"\nadded p50: {result['added_p50_ms']:.2f} ms")
        print("CPU ms per request:", json.dumps(result["cpu_ms_per_request"], indent=None))
        return 0
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(30)
        upstream.terminate()
        upstream.wait(10)


if __name__ == "__main__":
    raise SystemExit(main())
