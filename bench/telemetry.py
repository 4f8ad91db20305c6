"""Telemetry's targets on this machine: ingestion from the Redis stream into Postgres,
lag under a steady 2,000 events/s, and a 30-day usage query over 1,000,000 calls.

    .venv/bin/python bench/telemetry.py [--backlog 200000] [--steady-seconds 30] [--replicas 2]

Starts a fresh embedded PostgreSQL (pgserver, data in a temporary directory) and a Redis
on free 127.0.0.1 ports, migrates the telemetry schema, and runs the real service
(`python -m telemetry`, `--replicas` processes sharing the consumer group) against them:

1. ingestion: `--backlog` call events are appended to the stream first (as inference does,
   one JSON field per entry, 5 % of them response-cache hits), then the service starts; the
   rate is the events stored divided by the time between the first and the last commit
   (received_at in Postgres).
2. lag: a producer appends 2,000 events/s in 50 ms batches (inference's linger) for
   `--steady-seconds`; each event's lag is received_at minus the time it was appended.
3. triggers: the cost of the triggers on llm_call (the usage_day epochs' and, unless
   `--without-rollup`, the rollups') on a 1,000-row insert (the same statement with the
   triggers firing and skipped), for calls of now and of yesterday.
4. query: `--rows` (1,000,000; 10,000,000 for issue 22's size) calls over the last 30
   days (generate_series in SQL, in time order without a sort, 1M rows a statement; 100
   users, 5 models, 5 % without a price, about 5 % response-cache hits (cost 0, a saving),
   cached prompt and reasoning tokens on some), then, from the hourly and daily rollups,
   `GET /v1/usage?group_by=day&percentiles=false` and the default `GET /v1/usage?group_by=day`
   (approximate percentiles from the rollups' histograms) for each scope (first, then
   repeated), then `GET /v1/usage?group_by=day&percentiles=exact` over those 30 days as an
   admin (everyone's calls) and as
   one member, timed over HTTP at the service (signed identity): cold (no
   cached day valid: the first query after the rows were generated, then with the per-day
   cache emptied before each query) and warm (after a query stored the closed days, and
   for the admin after the pre-warm, which the service runs every 30 s and is run and
   timed here instead).

`--group-by model ...` times the admin's other groupings too (with and without
percentiles); `--without-rollup` drops the rollups' triggers (ingestion as before
migration telemetry_0007, for a before/after of its cost).

Writes bench/results/telemetry.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
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
from _common import ROOT, percentile
from redis.asyncio import Redis

# This file is named like the service's package: keep bench/ off the import path from here.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
from common import ports  # noqa: E402
from common.db import create_engine, create_sessionmaker  # noqa: E402
from common.identity import Identity, SignedIdentity  # noqa: E402
from common.llm_events import STREAM, LlmCallEvent  # noqa: E402
from common.migrations import upgrade  # noqa: E402
from devkit import devstack  # noqa: E402
from telemetry.clients import Auth  # noqa: E402
from telemetry.runtime import Runtime  # noqa: E402
from telemetry.service import refresh_usage_cache  # noqa: E402
from telemetry.settings import TelemetrySettings  # noqa: E402

USERS = [uuid.UUID(int=i + 1) for i in range(100)]
Processes = dict[str, list[psutil.Process]]
# Stored in time order, as ingestion stores calls (in about the order they happen): call i
# of $1 at a random time within the i-th of $1 equal slots of the 30 days before $2, so
# generate_series yields them in time order and no sort of the rows is needed (sorting
# 10M wide rows took most of the generation time). Rows $3 to $4 of the $1: the bench
# inserts them in chunks, each statement's transition table (the usage_day triggers')
# bounded.
GENERATE = """
INSERT INTO telemetry.llm_call (occurred_at, id, source, user_id, operation, provider, model,
    status, error_type, prompt_tokens, completion_tokens, usage_estimated, cost_usd,
    latency_ms, ttft_ms, stream, attempts, fallback, trace_id, cached_prompt_tokens,
    reasoning_tokens, cache, saved_usd)
SELECT $2::timestamptz - interval '30 days' * (1 - (i - 1 + random()) / $1) AS occurred_at,
    gen_random_uuid(), 'stream',
    ('00000000-0000-0000-0000-' || lpad(to_hex(1 + i % 100), 12, '0'))::uuid, 'chat', 'openai',
    (ARRAY['openai/gpt-4o', 'openai/gpt-4o-mini', 'openai/gpt-4.1', 'openai/gpt-4.1-mini',
           'openai/gpt-4.1-nano'])[1 + i % 5],
    CASE WHEN i % 50 = 0 THEN 'upstream_error' ELSE 'ok' END,
    CASE WHEN i % 50 = 0 THEN 'APIStatusError' END,
    100 + i % 900, 10 + i % 300, false,
    CASE WHEN hit THEN 0  -- response-cache hits cost nothing
         WHEN i % 20 <> 7  -- 5 % without a price
         THEN round((100 + i % 900) * 0.00000015 + (10 + i % 300) * 0.0000006, 9) END,
    50 + random() * 2000, CASE WHEN i % 2 = 0 THEN 20 + random() * 300 END,
    i % 2 = 0, CASE WHEN hit THEN 0 ELSE 1 END, false, md5(i::text),
    CASE WHEN i % 3 = 0 THEN (100 + i % 900) / 2 END, CASE WHEN i % 5 = 0 THEN i % 200 END,
    CASE WHEN hit THEN (ARRAY['exact', 'semantic'])[1 + i % 2] END,
    CASE WHEN hit THEN round((100 + i % 900) * 0.00000015 + (10 + i % 300) * 0.0000006, 9) END
FROM generate_series($3::int8, $4::int8) AS i,
    -- 5 % of the successful calls, spread over every user and model
    LATERAL (SELECT i % 19 = 3 AND i % 50 <> 0 AS hit) AS h
"""
GENERATE_CHUNK = 1_000_000


DRAWS = random.Random(22)  # noqa: S311 (the events' latencies, the same every run)


def event(user: uuid.UUID, when: float, *, hit: bool = False) -> dict[str, str]:
    """A call as inference writes it; a `hit` was replayed from the response cache. Its
    latency 50 ms to 2 s, streamed half the time (a TTFT of 20 to 320 ms), as the rows of
    the query part: the rollups' histograms get as many buckets per cell as there."""
    streamed = DRAWS.random() < 0.5
    latency, ttft = 50 + DRAWS.random() * 2000, 20 + DRAWS.random() * 300
    return LlmCallEvent(
        id=str(uuid.uuid4()), occurred_at=when, user_id=str(user), api_key_id=None,
        provider="openai", model="openai/gpt-4o-mini", alias=None, status="ok",
        error_type=None, prompt_tokens=42, completion_tokens=17, usage_estimated=False,
        cost_usd="0.000000000" if hit else "0.000016500", latency_ms=latency,
        ttft_ms=ttft if streamed else None, stream=streamed, attempts=0 if hit else 1,
        fallback=False, operation="chat",
        trace_id=uuid.uuid4().hex,
        span_id=uuid.uuid4().hex[:16], trace_sampled=False, cache="exact" if hit else None,
        saved_usd="0.000016500" if hit else None,
    ).to_fields()  # fmt: skip


async def append_backlog(redis_url: str, count: int, chunk: int = 5000) -> None:
    redis = Redis.from_url(redis_url)
    for start in range(0, count, chunk):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(count, start + chunk)):
                fields = event(USERS[i % 100], time.time(), hit=i % 20 == 3)
                pipe.xadd(STREAM, fields)  # type: ignore[arg-type]
            await pipe.execute()
    await redis.aclose()


async def wait_stored(db: asyncpg.Connection, count: int, deadline: float = 600) -> None:
    end = time.monotonic() + deadline
    while await db.fetchval("SELECT count(*) FROM telemetry.llm_call") < count:
        if time.monotonic() > end:
            raise RuntimeError("events not stored in time")
        await asyncio.sleep(0.25)


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
        "lag_seconds": {
            "p50": percentile(lags, 0.5),
            "p99": percentile(lags, 0.99),
            "max": max(lags),
        },
        "lag_gauge_events_max": max(gauge) if gauge else None,
    }


# 1,000 calls at one time base: what one batch of the consumer or POST /v1/events writes.
BATCH = """
INSERT INTO telemetry.llm_call (occurred_at, id, source, user_id, operation, provider, model,
    status, prompt_tokens, completion_tokens, usage_estimated, cost_usd, latency_ms, stream,
    attempts, fallback, ttft_ms)
SELECT $2::timestamptz - i * interval '10 ms', gen_random_uuid(), 'stream', $3::uuid, 'chat',
    'openai', 'openai/gpt-4o-mini', 'ok', 42, 17, false, 0.0000165, 50 + random() * 2000,
    i % 2 = 0, 1, false, CASE WHEN i % 2 = 0 THEN 20 + random() * 300 END
FROM generate_series(1, $1) AS i
ON CONFLICT DO NOTHING
"""


async def trigger_overhead(
    db: asyncpg.Connection, batches: int, size: int = 1000
) -> dict[str, Any]:
    """The usage_day triggers' cost on a batch insert: the same statement with the triggers
    firing and not (session_replication_role = replica skips ordinary triggers), interleaved,
    for calls of now (no closed day: nothing to bump) and of yesterday (one epoch bumped).
    The statement only, the commit excluded."""
    await db.execute("TRUNCATE telemetry.llm_call")
    timings: dict[str, list[float]] = {}
    for n in range(batches):
        for when in ("now", "yesterday"):
            for triggers in ("on", "off"):
                base = await db.fetchval(
                    "SELECT now() - interval '1 second'" if when == "now"
                    else "SELECT date_trunc('day', now() - interval '1 day') + interval '12 hours'"
                )  # fmt: skip
                async with db.transaction():
                    role = "origin" if triggers == "on" else "replica"
                    await db.execute(f"SET LOCAL session_replication_role = {role}")
                    begin = time.perf_counter()
                    await db.execute(BATCH, size, base, USERS[n % 100])
                    timings.setdefault(f"{when}, triggers {triggers}", []).append(
                        time.perf_counter() - begin
                    )
    await db.execute("TRUNCATE telemetry.llm_call")
    medians = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    return {
        "batch_rows": size,
        "batches": batches,
        "median_ms": medians,
        "added_ms": {
            when: medians[f"{when}, triggers on"] - medians[f"{when}, triggers off"]
            for when in ("now", "yesterday")
        },
    }


async def timed_usage(http: httpx.AsyncClient, params: dict[str, str], repeats: int,
                      before: Any = None) -> dict[str, Any]:  # fmt: skip
    """`repeats` timed GET /v1/usage (`before` awaited ahead of each, untimed)."""
    timings = []
    for _ in range(repeats):
        if before is not None:
            await before()
        begin = time.perf_counter()
        response = await http.get("/v1/usage", params=params)
        timings.append(time.perf_counter() - begin)
        response.raise_for_status()
    body = response.json()
    return {
        "seconds": {"min": min(timings), "median": statistics.median(timings),
                    "max": max(timings)},
        "groups": len(body["groups"]),
        "requests": body["totals"]["requests"],
        "cache_hits": body["totals"]["cache_hits"],
    }  # fmt: skip


async def usage_query(
    db: asyncpg.Connection, urls: dict[str, str], key: bytes, args: argparse.Namespace
) -> dict[str, Any]:
    """Cold: no cached day valid (right after the rows are generated, then with the cache
    emptied before each query). Warm: after a first query stored the closed days, and
    after the pre-warm (the service's refresh_usage_cache, run here on its own). Then the
    admin's other groupings of `args.group_by` (first, then repeated)."""
    rows, repeats = args.rows, args.repeats
    await db.execute("TRUNCATE telemetry.llm_call")
    await db.execute("TRUNCATE telemetry.usage_day, telemetry.usage_day_epoch")
    started = time.perf_counter()
    until = await db.fetchval("SELECT now()")
    for lo in range(1, rows + 1, GENERATE_CHUNK):
        await db.execute(GENERATE, rows, until, lo, min(rows, lo + GENERATE_CHUNK - 1))
    generated = time.perf_counter() - started
    print(f"generated {rows} calls in {generated:.1f} s")
    started = time.perf_counter()
    await db.execute("VACUUM (ANALYZE) telemetry.llm_call")
    vacuumed = time.perf_counter() - started
    admin = Identity(sub=str(uuid.uuid4()), kind="user", iss="gateway", roles=("admin",),
                     permissions=("telemetry:read_own", "telemetry:read_all"))  # fmt: skip
    # USERS[1]: the generated calls of USERS[0] are all failures (i % 100 = 0), without hits.
    member = Identity(sub=str(USERS[1]), kind="user", iss="gateway", roles=("member",),
                      permissions=("telemetry:read_own",))  # fmt: skip
    result: dict[str, Any] = {
        "rows": rows,
        "generate_seconds": generated,
        "vacuum_analyze_seconds": vacuumed,
        "table_bytes": await table_sizes(db),
        "rollup_cells": {
            unit: await db.fetchval(f"SELECT count(*) FROM telemetry.rollup_{unit}")  # noqa: S608
            for unit in (("hour", "day") if args.rollup else ())
        },
        "load_average": os.getloadavg(),
    }
    now = time.time()
    params = {
        "group_by": "day",
        "from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 30 * 86400 - 60)),
        "to": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 60)),
    }

    async def forget() -> None:
        await db.execute("TRUNCATE telemetry.usage_day")

    for name, who in (("admin", admin), ("member", member)):
        async with httpx.AsyncClient(
            base_url=urls["service"],
            auth=SignedIdentity(key, who, audience="telemetry"),
            timeout=600,
        ) as http:
            result[name] = {}
            if args.rollup:  # from the rollups, nothing else cached
                sums = {**params, "percentiles": "false"}
                result[name]["sums first"] = await timed_usage(http, sums, 1)
                result[name]["sums"] = await timed_usage(http, sums, repeats)
                result[name]["approximate first"] = await timed_usage(http, params, 1)
                result[name]["approximate"] = await timed_usage(http, params, repeats)
            exact = {**params, "percentiles": "exact"}
            first = await timed_usage(http, exact, 1)  # nothing cached since the rows came
            cold = await timed_usage(http, exact, max(1, repeats // 2), before=forget)
            warm = await timed_usage(http, exact, repeats)  # the last cold query stored
            result[name].update(first=first, cold=cold, warm=warm)
            if name == "admin":
                await forget()
                result["prewarm_seconds"] = await prewarm(urls["telemetry"], urls["redis"])
                result[name]["warm_after_prewarm"] = await timed_usage(http, exact, repeats)
        print(f"usage query, {name}:", json.dumps(result[name]))
    async with httpx.AsyncClient(
        base_url=urls["service"],
        auth=SignedIdentity(key, admin, audience="telemetry"),
        timeout=600,
    ) as http:
        for group_by in args.group_by:
            if group_by == "day":
                continue
            other = {**params, "group_by": group_by}
            found = result[f"admin by {group_by}"] = {}
            if args.rollup:
                sums = {**other, "percentiles": "false"}
                found["sums first"] = await timed_usage(http, sums, 1)
                found["sums"] = await timed_usage(http, sums, repeats)
                found["approximate first"] = await timed_usage(http, other, 1)
                found["approximate"] = await timed_usage(http, other, repeats)
            exact = {**other, "percentiles": "exact"}
            found["first"] = await timed_usage(http, exact, 1)
            found["again"] = await timed_usage(http, exact, repeats)
            print(f"usage query, admin by {group_by}:", json.dumps(result[f"admin by {group_by}"]))
    return result


async def table_sizes(db: asyncpg.Connection) -> dict[str, int]:
    """Bytes on disk of each telemetry table (its partitions added up) and of its indexes."""
    rows = await db.fetch(
        """
        SELECT coalesce(p.relname, c.relname) AS name,
            sum(pg_table_size(c.oid)) AS heap, sum(pg_indexes_size(c.oid)) AS indexes
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
        LEFT JOIN pg_class p ON p.oid = i.inhparent
        WHERE n.nspname = 'telemetry' AND c.relkind = 'r'
        GROUP BY 1 ORDER BY 1
        """
    )
    sizes = {}
    for row in rows:
        sizes[row["name"]] = int(row["heap"])
        sizes[f"{row['name']} indexes"] = int(row["indexes"])
    return sizes


async def prewarm(database_url: str, redis_url: str) -> float:
    """The service's pre-warm (what its loop runs every 30 s), run here, timed."""
    settings = TelemetrySettings(database_url=database_url, redis_url=redis_url, retention_days=90)
    engine = create_engine(database_url, application_name="bench-prewarm")
    redis = Redis.from_url(redis_url)
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessionmaker=create_sessionmaker(engine),
        redis=redis,
        auth=Auth(settings),  # never asked here
    )
    try:
        begin = time.perf_counter()
        await refresh_usage_cache(runtime)
        return time.perf_counter() - begin
    finally:
        await redis.aclose()
        await engine.dispose()


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
        result["trigger_overhead"] = await trigger_overhead(db, args.trigger_batches)
        print("usage_day triggers:", json.dumps(result["trigger_overhead"]))
        result["usage_query"] = await usage_query(db, urls, key.encode(), args)
        result["load_average_at_end"] = os.getloadavg()
        return result
    finally:
        await db.close()
        await redis.aclose()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--steady-seconds", type=float, default=30)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--group-by", nargs="+", default=["day"],
                        choices=["day", "model", "provider", "user", "key", "team"],
                        help="the admin's groupings timed (day: also the member's)")  # fmt: skip
    parser.add_argument("--trigger-batches", type=int, default=100,
                        help="1,000-row inserts per case for the trigger overhead")  # fmt: skip
    parser.add_argument("--without-rollup", dest="rollup", action="store_false",
                        help="drop the rollups' triggers (ingestion as before "
                        "telemetry_0007; no percentiles=false queries)")  # fmt: skip
    parser.add_argument("--replicas", type=int, default=2,
                        help="telemetry processes (2: as deploy/k8s/base runs it)")  # fmt: skip
    return parser.parse_args()


async def drop_rollup_triggers(db_url: str) -> None:
    db = await asyncpg.connect(db_url)
    try:
        for name in ("insert", "update", "delete", "truncate"):
            await db.execute(f"DROP TRIGGER rollup_after_{name} ON telemetry.llm_call")
    finally:
        await db.close()


def start_replicas(
    count: int, env: dict[str, str], services: list[subprocess.Popen[bytes]]
) -> list[int]:
    """`count` telemetry processes, each on a free port, serving the socket bound here
    (common.ports), logging to bench/results/telemetry-<n>.log; each is added to `services`
    as soon as it runs (the caller stops them). Their ports, in order."""
    service_ports = []
    for index in range(count):
        log_path = ROOT / "bench" / "results" / f"telemetry-{index}.log"
        with open(log_path, "wb") as log:
            service, service_port = ports.spawn(
                [sys.executable, "-m", "telemetry"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        services.append(service)
        service_ports.append(service_port)
    return service_ports


def watched(
    data_dir: Path, services: list[subprocess.Popen[bytes]], redis: subprocess.Popen[bytes]
) -> Processes:
    """The processes whose CPU the ingestion is charged with."""
    postmaster = psutil.Process(int((data_dir / "pg" / "postmaster.pid").read_text().split()[0]))
    return {
        "telemetry": [psutil.Process(service.pid) for service in services],
        "postgres": [postmaster],
        "redis": [psutil.Process(redis.pid)],
    }


def main() -> int:
    args = parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-telemetry-"))
    admin_url = devstack.with_database(devstack.start_embedded_postgres(data_dir), "bench")
    redis_proc: subprocess.Popen[bytes] | None = None
    services: list[subprocess.Popen[bytes]] = []
    try:
        # On a free port, another if that one is taken first (redis-server binds it
        # itself); answering when it returns.
        redis_proc, redis_url = devstack.start_redis(data_dir)
        urls = asyncio.run(devstack.bootstrap_database(admin_url, "bench"))
        upgrade(devstack.service_dir("telemetry"), urls["telemetry"])
        if not args.rollup:
            asyncio.run(drop_rollup_triggers(admin_url))
        started = time.perf_counter()
        asyncio.run(append_backlog(redis_url, args.backlog))
        print(f"appended {args.backlog} events in {time.perf_counter() - started:.1f} s")
        key = secrets.token_hex(32)
        env = dict(os.environ, TELEMETRY_DATABASE_URL=urls["telemetry"], REDIS_URL=redis_url,
                   INTERNAL_SIGNING_KEY=key,
                   # The bench runs the pre-warm itself, when it measures it.
                   TELEMETRY_USAGE_CACHE_REFRESH_SECONDS="0",
                   LOG_LEVEL="WARNING")  # fmt: skip
        port = start_replicas(args.replicas, env, services)[0]
        endpoints = {
            "db": admin_url,
            "redis": redis_url,
            "service": f"http://127.0.0.1:{port}",
            "telemetry": urls["telemetry"],
        }
        processes = watched(data_dir, services, redis_proc)
        result = asyncio.run(measure(args, endpoints, key, processes))
    finally:
        for service in services:
            service.terminate()
            service.wait(30)
        if redis_proc is not None:
            devstack.stop_process(redis_proc)
        devstack.stop_embedded_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)  # 1 GB after the 1M-row query
    (ROOT / "bench" / "results" / "telemetry.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
