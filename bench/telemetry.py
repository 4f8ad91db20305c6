"""Telemetry's targets on this machine: ingestion from the Redis stream into Postgres,
lag under a steady 2,000 events/s, and a 30-day usage query over 1,000,000 calls.

    .venv/bin/python bench/telemetry.py [--backlog 200000] [--steady-seconds 30] [--replicas 1]

Starts a fresh embedded PostgreSQL (pgserver, data in a temporary directory) and a Redis
on free 127.0.0.1 ports, migrates the telemetry schema, and runs the real service
(`python -m telemetry`, `--replicas` processes sharing the consumer group) against them:

1. ingestion: `--backlog` call events are appended to the stream first (as inference does,
   one JSON field per entry), then the service starts; the rate is the events stored
   divided by the time between the first and the last commit (received_at in Postgres).
2. lag: a producer appends 2,000 events/s in 50 ms batches (inference's linger) for
   `--steady-seconds`; each event's lag is received_at minus the time it was appended.
3. query: 1,000,000 calls over the last 30 days (generate_series in SQL, 100 users,
   5 models), then `GET /v1/usage?group_by=day` over those 30 days as an admin (everyone's
   calls) and as one member, timed over HTTP at the service (signed identity).

Writes bench/results/telemetry.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
# This file is named like the service's package: keep bench/ off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT / "libs" / "common" / "src"))
from common import devstack  # noqa: E402
from common.identity import Identity, SignedIdentity  # noqa: E402
from common.llm_events import STREAM, LlmCallEvent  # noqa: E402
from common.migrations import upgrade  # noqa: E402

USERS = [uuid.UUID(int=i + 1) for i in range(100)]
Processes = dict[str, list[psutil.Process]]
GENERATE = """
INSERT INTO telemetry.llm_call (occurred_at, id, source, user_id, operation, provider, model,
    status, error_type, prompt_tokens, completion_tokens, usage_estimated, cost_usd,
    latency_ms, ttft_ms, stream, attempts, fallback, trace_id)
SELECT now() - random() * interval '30 days', gen_random_uuid(), 'stream',
    ('00000000-0000-0000-0000-' || lpad(to_hex(1 + i % 100), 12, '0'))::uuid, 'chat', 'openai',
    (ARRAY['openai/gpt-4o', 'openai/gpt-4o-mini', 'openai/gpt-4.1', 'openai/gpt-4.1-mini',
           'openai/gpt-4.1-nano'])[1 + i % 5],
    CASE WHEN i % 50 = 0 THEN 'upstream_error' ELSE 'ok' END,
    CASE WHEN i % 50 = 0 THEN 'APIStatusError' END,
    100 + i % 900, 10 + i % 300, false,
    round((100 + i % 900) * 0.00000015 + (10 + i % 300) * 0.0000006, 9),
    50 + random() * 2000, CASE WHEN i % 2 = 0 THEN 20 + random() * 300 END,
    i % 2 = 0, 1, false, md5(i::text)
FROM generate_series(1, $1) AS i
"""


def event(user: uuid.UUID, when: float) -> dict[str, str]:
    return LlmCallEvent(
        id=str(uuid.uuid4()), occurred_at=when, user_id=str(user), api_key_id=None,
        provider="openai", model="openai/gpt-4o-mini", alias=None, status="ok",
        error_type=None, prompt_tokens=42, completion_tokens=17, usage_estimated=False,
        cost_usd="0.000016500", latency_ms=321.5, ttft_ms=None, stream=False, attempts=1,
        fallback=False, operation="chat", trace_id=uuid.uuid4().hex,
        span_id=uuid.uuid4().hex[:16], trace_sampled=False,
    ).to_fields()  # fmt: skip


async def append_backlog(redis_url: str, count: int, chunk: int = 5000) -> None:
    redis = Redis.from_url(redis_url)
    for start in range(0, count, chunk):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(count, start + chunk)):
                pipe.xadd(STREAM, event(USERS[i % 100], time.time()))  # type: ignore[arg-type]
            await pipe.execute()
    await redis.aclose()


async def wait_stored(db: asyncpg.Connection, count: int, deadline: float = 600) -> None:
    end = time.monotonic() + deadline
    while await db.fetchval("SELECT count(*) FROM telemetry.llm_call") < count:
        if time.monotonic() > end:
            raise RuntimeError("events not stored in time")
        await asyncio.sleep(0.25)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(processes: Processes) -> dict[str, float]:
    """User + system CPU of each group of processes and their children (Postgres: its
    backends too)."""
    found = {}
    for name, roots in processes.items():
        total = 0.0
        for root in roots:
            for proc in (root, *root.children(recursive=True)):
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += sum(proc.cpu_times()[:2])
        found[name] = total
    return found


async def ingestion(db: asyncpg.Connection, backlog: int, processes: Processes) -> dict[str, Any]:
    before = cpu_seconds(processes)
    await wait_stored(db, backlog)
    after = cpu_seconds(processes)
    first, last = await db.fetchrow(
        "SELECT min(received_at), max(received_at) FROM telemetry.llm_call"
    )
    seconds = (last - first).total_seconds()
    return {
        "events": backlog,
        "seconds": seconds,
        "events_per_second": backlog / seconds,
        # From the service's start: its import and startup are in the telemetry figure.
        "cpu_us_per_event": {
            name: (after[name] - before[name]) * 1e6 / backlog for name in processes
        },
    }


async def steady(
    db: asyncpg.Connection, redis: Redis, metrics_url: str, rate: int, seconds: float
) -> dict[str, Any]:
    await db.execute("TRUNCATE telemetry.llm_call")
    batch = rate // 20  # every 50 ms
    gauge: list[float] = []
    start = time.monotonic()
    sent = 0
    async with httpx.AsyncClient() as http:
        while time.monotonic() - start < seconds:
            tick = start + sent / rate
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            async with redis.pipeline(transaction=False) as pipe:
                now = time.time()
                for i in range(batch):
                    pipe.xadd(STREAM, event(USERS[i % 100], now))  # type: ignore[arg-type]
                await pipe.execute()
            sent += batch
            if sent % (rate // 2) == 0:  # twice a second
                text = (await http.get(metrics_url)).text
                line = next(x for x in text.splitlines() if x.startswith("telemetry_stream_lag"))
                gauge.append(float(line.split()[-1]))
    elapsed = time.monotonic() - start
    await wait_stored(db, sent)
    lags = [
        r[0]
        for r in await db.fetch(
            "SELECT extract(epoch FROM received_at - occurred_at) FROM telemetry.llm_call"
        )
    ]
    lags = [float(v) for v in lags]
    return {
        "events": sent,
        "rate": sent / elapsed,
        "lag_seconds": {"p50": pct(lags, 0.5), "p99": pct(lags, 0.99), "max": max(lags)},
        "lag_gauge_events_max": max(gauge) if gauge else None,
    }


async def usage_query(
    db: asyncpg.Connection, service_url: str, key: bytes, rows: int, repeats: int
) -> dict[str, Any]:
    await db.execute("TRUNCATE telemetry.llm_call")
    started = time.perf_counter()
    await db.execute(GENERATE, rows)
    generated = time.perf_counter() - started
    await db.execute("VACUUM (ANALYZE) telemetry.llm_call")
    admin = Identity(sub=str(uuid.uuid4()), kind="user", iss="gateway", roles=("admin",),
                     permissions=("telemetry:read_own", "telemetry:read_all"))  # fmt: skip
    member = Identity(sub=str(USERS[0]), kind="user", iss="gateway", roles=("member",),
                      permissions=("telemetry:read_own",))  # fmt: skip
    result: dict[str, Any] = {"rows": rows, "generate_seconds": generated}
    now = time.time()
    params = {
        "group_by": "day",
        "from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 30 * 86400 - 60)),
        "to": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 60)),
    }
    for name, who in (("admin", admin), ("member", member)):
        async with httpx.AsyncClient(
            base_url=service_url, auth=SignedIdentity(key, who), timeout=60
        ) as http:
            timings = []
            for _ in range(repeats):
                begin = time.perf_counter()
                response = await http.get("/v1/usage", params=params)
                timings.append(time.perf_counter() - begin)
                response.raise_for_status()
            groups = response.json()["groups"]
        result[name] = {
            "seconds": {"min": min(timings), "median": statistics.median(timings),
                        "max": max(timings)},
            "groups": len(groups),
            "requests": sum(g["requests"] for g in groups),
        }  # fmt: skip
    return result


async def measure(
    args: argparse.Namespace, urls: dict[str, str], key: str, processes: Processes
) -> dict[str, Any]:
    db_url, redis_url, service_url = urls["db"], urls["redis"], urls["service"]
    redis = Redis.from_url(redis_url)
    db = await asyncpg.connect(db_url)
    try:
        result: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_average_at_start": os.getloadavg(),
            "replicas": args.replicas,
        }
        result["ingestion"] = await ingestion(db, args.backlog, processes)
        print("ingestion:", json.dumps(result["ingestion"]))
        result["steady"] = await steady(db, redis, f"{service_url}/metrics", 2000,
                                        args.steady_seconds)  # fmt: skip
        print("steady 2,000/s:", json.dumps(result["steady"]))
        result["usage_query"] = await usage_query(db, service_url, key.encode(), args.rows,
                                                  args.repeats)  # fmt: skip
        print("usage query:", json.dumps(result["usage_query"]))
        result["load_average_at_end"] = os.getloadavg()
        return result
    finally:
        await db.close()
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--steady-seconds", type=float, default=30)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=1, help="telemetry processes")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-telemetry-"))
    admin_url = devstack.with_database(devstack.start_embedded_postgres(data_dir), "bench")
    redis_port = devstack.free_port()
    redis_proc = subprocess.Popen(  # noqa: S603
        devstack.redis_command(redis_port, data_dir),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    services: list[subprocess.Popen[bytes]] = []
    try:
        urls = asyncio.run(devstack.bootstrap_database(admin_url, "bench"))
        upgrade(devstack.service_dir("telemetry"), urls["telemetry"])
        while not devstack.redis_answers(redis_url):
            time.sleep(0.05)
        started = time.perf_counter()
        asyncio.run(append_backlog(redis_url, args.backlog))
        print(f"appended {args.backlog} events in {time.perf_counter() - started:.1f} s")
        key = secrets.token_hex(32)
        ports = [devstack.free_port() for _ in range(args.replicas)]
        for index, port in enumerate(ports):
            env = dict(os.environ, TELEMETRY_DATABASE_URL=urls["telemetry"], REDIS_URL=redis_url,
                       TELEMETRY_PORT=str(port), INTERNAL_SIGNING_KEY=key,
                       LOG_LEVEL="WARNING")  # fmt: skip
            log_path = ROOT / "bench" / "results" / f"telemetry-{index}.log"
            with open(log_path, "wb") as log:
                services.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "telemetry"],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        port = ports[0]
        postmaster = psutil.Process(
            int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
        )
        processes = {
            "telemetry": [psutil.Process(service.pid) for service in services],
            "postgres": [postmaster],
            "redis": [psutil.Process(redis_proc.pid)],
        }
        result = asyncio.run(
            measure(
                args,
                {"db": admin_url, "redis": redis_url, "service": f"http://127.0.0.1:{port}"},
                key,
                processes,
            )
        )
    finally:
        for service in services:
            service.terminate()
            service.wait(30)
        redis_proc.terminate()
        redis_proc.wait(10)
        devstack.stop_embedded_postgres(data_dir)
    (ROOT / "bench" / "results" / "telemetry.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
