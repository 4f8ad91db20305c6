"""`make soak`: mixed traffic at a steady rate for a long time, with every process's memory,
Redis's memory, every table's size and the call-event stream sampled throughout.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 20] [--sample-seconds 10]

(`SOAK_MINUTES`, `SOAK_RATE` and `SOAK_SAMPLE_SECONDS` set the defaults.) One platform
(`make run`'s processes, fresh embedded Postgres and Redis, rate limits off) in front of the
zero-delay OpenAI fake. An open-loop schedule sends `--rate` requests per second, whatever
the answers take, in a fixed mix (MIX): chat (one in three with the exact response cache on,
over a fixed set of prompts), streamed chat, embeddings (the fake upstream's model and the
local one), document upserts and text queries on two collections (one per model), usage
queries, and sessions (a member logs in, creates an API key, calls chat with it, revokes it,
logs out). Every `--sample-seconds` it reads the RSS of each process (the five services,
Postgres's processes summed, Redis, the fake upstream, this process), Redis's `used_memory`,
the length of the call-event stream and its consumer groups' pending and lag, and the size
(pg_total_relation_size), rows and dead rows of every table of the four schemas.

After the traffic stops it waits for telemetry to drain the stream, samples once more, and
reports growth after the warm-up (`--warmup`, a share of the run): each process's RSS at the
end of the warm-up and at the end, and the least-squares slope in between; Redis's memory
and the stream; each table's new rows and bytes next to the requests that made them; the
answers by status per kind. Writes bench/results/soak.json (every sample) and
bench/results/soak.md, and prints the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------- growth (pure, tested)

RSS_TARGET_PCT = 10.0
SERVICES = ("gateway", "auth", "inference", "embeddings", "telemetry")
# A table's bytes beyond what its rows explain (bytes per row at the end of the warm-up
# times the rows at the end) count as unexplained past both of these.
UNEXPLAINED_MIN_BYTES = 1 << 20
UNEXPLAINED_MIN_SHARE = 0.25
# The requests that make one model call each, so one call event (telemetry.llm_call row):
# an upsert embeds its new texts in one call, a query its text; a cache hit has its event.
MODEL_CALL_KINDS = ("chat", "stream", "embed", "embed-local", "key-chat", "upsert", "query")


def slope(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of (t, value) points, in value per unit of t (0 for fewer
    than two distinct times)."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def after_warmup(points: Sequence[tuple[float, float]], warmup: float) -> list[tuple[float, float]]:
    """The points at or after `warmup` (seconds); the last point alone if none is."""
    kept = [p for p in points if p[0] >= warmup]
    return kept or list(points[-1:])


def growth(points: Sequence[tuple[float, float]], warmup: float) -> dict[str, float]:
    """A series' growth after the warm-up: its value at the first sample at or after
    `warmup` and at the last sample, the change in percent, the least-squares slope over
    those samples per hour, that slope as a percentage of the start per hour, and the
    largest value after the warm-up. Points are (seconds, value)."""
    kept = after_warmup(points, warmup)
    start, end = kept[0][1], kept[-1][1]
    per_hour = slope(kept) * 3600
    return {
        "start": start,
        "end": end,
        "growth_pct": (end - start) / start * 100 if start else 0.0,
        "slope_per_hour": per_hour,
        "slope_pct_per_hour": per_hour / start * 100 if start else 0.0,
        "max": max(v for _, v in kept),
    }


def _excess(before: float, after: float, rows_before: float, rows_after: float) -> float:
    """Bytes at the end beyond what the rows at the end take at the warm-up's bytes per row
    (a part empty of rows then: any byte growth without a row)."""
    if rows_before:
        expected = max(before, before / rows_before * rows_after)
    else:
        expected = after if rows_after else before
    return after - expected


def table_growth(before: dict[str, float], after: dict[str, float]) -> dict[str, float | bool]:
    """One table's change between two samples: new rows and bytes, the bytes per new row,
    and whether the bytes outgrew the rows: more than UNEXPLAINED_MIN_BYTES and
    UNEXPLAINED_MIN_SHARE of the end size beyond what the rows at the end would take at the
    warm-up's bytes per row. A sample has "bytes" (everything), "rows" and "dead", and may
    split the bytes into "table_bytes" (heap and TOAST) and "index_bytes" with the number
    of "indexes": each part is then judged on its own, and the indexes not at all when an
    index was built in between (a collection's HNSW index: data, built when it is idle)."""
    new_rows = after["rows"] - before["rows"]
    new_bytes = after["bytes"] - before["bytes"]
    built = after.get("indexes", 0) - before.get("indexes", 0)
    parts = ["table_bytes", "index_bytes"] if "table_bytes" in after else ["bytes"]
    if built > 0:
        parts.remove("index_bytes")
    excess = sum(
        _excess(before.get(part, 0.0), after[part], before["rows"], after["rows"]) for part in parts
    )
    return {
        "rows_start": before["rows"],
        "rows_end": after["rows"],
        "new_rows": new_rows,
        "bytes_start": before["bytes"],
        "bytes_end": after["bytes"],
        "new_bytes": new_bytes,
        "bytes_per_new_row": new_bytes / new_rows if new_rows > 0 else 0.0,
        "dead_end": after.get("dead", 0.0),
        "indexes_built": max(0, built),
        "unexplained_bytes": max(0.0, excess),
        "unexplained": excess > UNEXPLAINED_MIN_BYTES
        and excess > UNEXPLAINED_MIN_SHARE * after["bytes"],
    }


def sample_at(samples: Sequence[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """The first sample at or after `warmup` seconds (the last one if none is)."""
    return next((s for s in samples if s["t"] >= warmup), samples[-1])


REDIS_SERIES = (
    "used_memory",
    "used_memory_dataset",
    "client_buffers",
    "clients",
    "keys",
    "stream_length",
    "stream_pending",
    "stream_lag",
)


def analyse(samples: Sequence[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """Growth after the warm-up of every sampled series: RSS per process (MB), Redis, the
    stream, the tables (between the first sample at or after `warmup` and the last)."""
    names = sorted({name for s in samples for name in s["rss_mb"]})
    rss = {
        name: growth([(s["t"], s["rss_mb"][name]) for s in samples if name in s["rss_mb"]], warmup)
        for name in names
    }
    redis = {
        metric: growth([(s["t"], float(s["redis"].get(metric, 0))) for s in samples], warmup)
        for metric in REDIS_SERIES
    }
    connections = growth([(s["t"], float(s["postgres_connections"])) for s in samples], warmup)
    first, last = sample_at(samples, warmup), samples[-1]
    tables = {
        name: table_growth(first["tables"].get(name, {"bytes": 0, "rows": 0}), sizes)
        for name, sizes in sorted(last["tables"].items())
    }
    made = {
        kind: count - first.get("made", {}).get(kind, 0)
        for kind, count in last.get("made", {}).items()
    }
    span = last["t"] - first["t"]
    cores = (
        {
            name: round((last["cpu_seconds"][name] - first["cpu_seconds"].get(name, 0)) / span, 3)
            for name in last.get("cpu_seconds", {})
        }
        if span > 0
        else {}
    )
    over = [n for n in SERVICES if n in rss and rss[n]["growth_pct"] > RSS_TARGET_PCT]
    return {
        "warmup_seconds": warmup,
        "rss_mb": rss,
        "redis": redis,
        "postgres_connections": connections,
        "tables": tables,
        "made_after_warmup": made,
        "model_calls_after_warmup": sum(made.get(kind, 0) for kind in MODEL_CALL_KINDS),
        "cores_after_warmup": cores,
        "redis_keys": {"start": first.get("redis_keys", {}), "end": last.get("redis_keys", {})},
        "targets": {
            "rss_over_10_pct": over,
            "stream_max_length_after_warmup": redis["stream_length"]["max"],
            "unexplained_tables": [n for n, t in tables.items() if t["unexplained"]],
        },
    }


# --------------------------------------------------------------- the traffic

# Requests per cycle of the schedule (20: at --rate 20, each weight is per second).
MIX: dict[str, int] = {
    "chat": 6,
    "stream": 3,
    "embed": 2,
    "embed-local": 1,
    "upsert": 2,
    "query": 3,
    "usage": 2,
    "session": 1,
}
CHAT_MODEL = "openai/gpt-4o-mini"
EMBED_MODEL = "openai/text-embedding-3-small"
LOCAL_MODEL = "local/all-MiniLM-L6-v2"
CACHED_PROMPTS = 50  # the exact cache's chats repeat these: a bounded set of entries
SEMANTIC_TTL = 60
NEW_DOCUMENTS = 4  # per upsert, besides one existing document rewritten
MEMBERS = 3
MEMBER_PASSWORD = "soak-Passphrase-for-a-member-1"  # noqa: S105
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()  # noqa: SIM905


def schedule(mix: dict[str, int], seed: int = 21) -> list[str]:
    """One cycle of the mix, each kind as often as its weight, in a fixed shuffled order."""
    cycle = [kind for kind, weight in mix.items() for _ in range(weight)]
    random.Random(seed).shuffle(cycle)  # noqa: S311 (a fixed order, not a secret)
    return cycle


def sentence(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + f" {rng.getrandbits(48):x}"


@dataclass
class Tally:
    """What the traffic did: answers by kind and status, latencies, documents written."""

    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    documents_created: int = 0
    dropped: int = 0  # slots skipped: too many requests in flight
    late: int = 0  # slots sent more than a second after their time

    def made(self) -> dict[str, int]:
        """The successful requests so far by kind, and the documents created."""
        made: Counter[str] = Counter()
        for (kind, status), count in self.statuses.items():
            if status.startswith("2"):
                made[kind] += count
        return {**made, "documents created": self.documents_created}

    def record(self, kind: str, status: int | str, started: float) -> None:
        self.statuses[(kind, str(status))] += 1
        self.latencies[kind].append((time.perf_counter() - started) * 1000)


@dataclass
class Traffic:
    """The requests of each kind, against one gateway with one key."""

    client: Any  # httpx.AsyncClient on the gateway
    key: str
    collections: dict[str, str]  # model -> collection id
    members: list[str]
    tally: Tally
    rng: random.Random = field(default_factory=lambda: random.Random(21))  # noqa: S311
    counters: Counter[str] = field(default_factory=Counter)
    sessions: dict[str, tuple[Traffic, asyncio.Lock]] = field(default_factory=dict)

    async def aclose(self) -> None:
        for session, _ in self.sessions.values():
            await session.client.aclose()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def call(self, kind: str, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        started = time.perf_counter()
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.tally.record(kind, type(exc).__name__, started)
            return None
        self.tally.record(kind, response.status_code, started)
        return response

    async def run(self, kind: str) -> None:
        """One request of `kind` (a session: five); `n` counts that kind's requests."""
        self.counters[kind] += 1
        await getattr(self, "_" + kind.replace("-", "_"))(self.counters[kind])

    async def _chat(self, n: int) -> None:
        """A third with the exact cache over CACHED_PROMPTS prompts (hits once warm), a
        third with the semantic cache on new prompts kept SEMANTIC_TTL seconds (its entries,
        in Redis and inference.cache_entry, expire as fast as they come), a third without."""
        prompt = f"words:20 {sentence(self.rng)}"
        body: dict[str, Any] = {"model": CHAT_MODEL}
        if n % 3 == 0:
            prompt = f"words:20 cached {n % CACHED_PROMPTS}"
            body["cache"] = {"mode": "exact"}
        elif n % 3 == 1:
            body["cache"] = {"mode": "semantic", "ttl": SEMANTIC_TTL}
        body["messages"] = [{"role": "user", "content": prompt}]
        await self.call("chat", "POST", "/v1/chat/completions", json=body, headers=self.auth)

    async def _stream(self, n: int) -> None:
        import httpx

        body = {
            "model": CHAT_MODEL,
            "stream": True,
            "messages": [{"role": "user", "content": f"words:30 {sentence(self.rng)}"}],
        }
        started = time.perf_counter()
        try:
            async with self.client.stream(
                "POST", "/v1/chat/completions", json=body, headers=self.auth
            ) as response:
                text = (await response.aread()).decode()
            status: int | str = response.status_code
            if status == 200 and "data: [DONE]" not in text:
                status = "200-unfinished"
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        self.tally.record("stream", status, started)

    async def _embed(self, n: int) -> None:
        body = {"model": EMBED_MODEL, "input": [sentence(self.rng) for _ in range(4)]}
        await self.call("embed", "POST", "/v1/embeddings", json=body, headers=self.auth)

    async def _embed_local(self, n: int) -> None:
        body = {"model": LOCAL_MODEL, "input": sentence(self.rng)}
        await self.call("embed-local", "POST", "/v1/embeddings", json=body, headers=self.auth)

    def _collection(self, n: int) -> str:
        ids = list(self.collections.values())
        return ids[n % len(ids)]

    async def _upsert(self, n: int) -> None:
        documents = [
            {"id": f"doc-{n}-{i}", "text": sentence(self.rng), "metadata": {"n": n, "i": i}}
            for i in range(NEW_DOCUMENTS)
        ]
        # One document rewritten again and again: an update, not a new row.
        documents.append({"id": "rewritten", "text": sentence(self.rng), "metadata": {"n": n}})
        response = await self.call(
            "upsert",
            "POST",
            f"/v1/collections/{self._collection(n)}/documents",
            json={"documents": documents},
            headers=self.auth,
        )
        if response is not None and response.status_code == 200:
            self.tally.documents_created += sum(
                d["status"] == "created" for d in response.json()["documents"]
            )

    async def _query(self, n: int) -> None:
        body = {"text": sentence(self.rng), "top_k": 5}
        await self.call(
            "query",
            "POST",
            f"/v1/collections/{self._collection(n)}/query",
            json=body,
            headers=self.auth,
        )

    async def _usage(self, n: int) -> None:
        group_by = ("model", "day", "key")[n % 3]
        await self.call(
            "usage", "GET", "/v1/usage", params={"group_by": group_by}, headers=self.auth
        )

    async def _session(self, n: int) -> None:
        """A member logs in, makes an API key, calls chat with it, revokes it, logs out."""
        import httpx

        email = self.members[n % len(self.members)]
        if email not in self.sessions:
            # One client per member (its cookies), made once: a client per session would
            # load the CA bundle each time, the soak's own CPU and memory.
            own = httpx.AsyncClient(base_url=str(self.client.base_url), timeout=60)
            self.sessions[email] = (
                Traffic(own, self.key, self.collections, self.members, self.tally),
                asyncio.Lock(),
            )
        session, lock = self.sessions[email]
        async with lock:  # a member's sessions one after the other: one cookie jar
            login = await session.call(
                "login", "POST", "/auth/login", json={"email": email, "password": MEMBER_PASSWORD}
            )
            if login is None or login.status_code != 200:
                return
            csrf = {"X-CSRF-Token": login.json()["csrf_token"]}
            created = await session.call(
                "key-create", "POST", "/auth/api-keys", json={"name": f"soak-{n}"}, headers=csrf
            )
            if created is not None and created.status_code == 201:
                key = created.json()
                await session.call(
                    "key-chat",
                    "POST",
                    "/v1/chat/completions",
                    json={
                        "model": CHAT_MODEL,
                        "messages": [{"role": "user", "content": "words:5"}],
                    },
                    headers={"Authorization": f"Bearer {key['key']}"},
                )
                await session.call(
                    "key-revoke", "DELETE", f"/auth/api-keys/{key['id']}", headers=csrf
                )
            await session.call("logout", "POST", "/auth/logout", headers=csrf)


async def drive(traffic: Traffic, *, rate: float, seconds: float, max_in_flight: int) -> None:
    """Open loop: slot i is sent at i / rate seconds, whatever the answers take; a slot
    finding `max_in_flight` requests unanswered is skipped (counted as dropped)."""
    cycle = schedule(MIX)
    loop = asyncio.get_running_loop()
    begin = loop.time()
    tasks: set[asyncio.Task[None]] = set()
    slot = 0
    while True:
        due = begin + slot / rate
        if due - begin >= seconds:
            break
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1:
            traffic.tally.late += 1
        if len(tasks) >= max_in_flight:
            traffic.tally.dropped += 1
        else:
            task = asyncio.create_task(traffic.run(cycle[slot % len(cycle)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        slot += 1
    if tasks:
        await asyncio.wait(tasks, timeout=120)


# --------------------------------------------------------------- sampling

TABLES_SQL = """
SELECT n.nspname || '.' || c.relname AS name, pg_total_relation_size(c.oid) AS bytes,
       pg_table_size(c.oid) AS table_bytes, pg_indexes_size(c.oid) AS index_bytes,
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) AS indexes,
       coalesce(s.n_dead_tup, 0) AS dead
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relkind = 'r' AND n.nspname = ANY($1::text[])
ORDER BY 1
"""
SCHEMAS = ["auth", "inference", "embeddings", "telemetry"]


@dataclass
class Sampler:
    """Reads every series once per call to `sample`."""

    processes: Callable[[], dict[str, list[Any]]]  # name -> psutil processes
    redis: Any  # redis.asyncio.Redis
    db: Any  # asyncpg connection
    stream: str
    started: float
    tally: Tally = field(default_factory=lambda: Tally())

    async def sample(self) -> dict[str, Any]:
        from _common import cpu_seconds, rss_mb

        t = round(time.monotonic() - self.started, 1)
        found = self.processes()
        rss = {name: round(rss_mb(procs), 1) for name, procs in found.items()}
        cpu = {name: round(cpu_seconds(procs), 2) for name, procs in found.items()}
        # Each backend's RSS counts the shared buffers it touched: their sum overstates
        # Postgres and grows as backends touch more pages. PSS shares them out.
        # USS: what is each process's alone (not the shared buffers): the backends' own.
        pss, uss = private_mb(found.get("postgres", []))
        rss["postgres-pss"], rss["postgres-uss"] = round(pss, 1), round(uss, 1)
        connections = await self.db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
        return {
            "t": t,
            "rss_mb": rss,
            "cpu_seconds": cpu,
            "redis": await self._redis(),
            "redis_keys": await self._key_prefixes(),
            "postgres_connections": int(connections),
            "tables": await self._tables(),
            "made": self.tally.made(),
        }

    async def _redis(self) -> dict[str, int]:
        info = await self.redis.info("memory")
        clients = await self.redis.info("clients")
        stream_length = await self.redis.xlen(self.stream)
        pending = lag = 0
        with contextlib.suppress(Exception):  # no group before telemetry first starts
            for group in await self.redis.xinfo_groups(self.stream):
                pending += int(group["pending"])
                lag += int(group.get("lag") or 0)
        return {
            "used_memory": int(info["used_memory"]),
            # What the keys hold, and the clients' buffers (they vary with the requests in
            # flight, and with the connections the pools have open).
            "used_memory_dataset": int(info.get("used_memory_dataset", 0)),
            "client_buffers": int(info.get("mem_clients_normal", 0)),
            "clients": int(clients["connected_clients"]),
            "keys": int(await self.redis.dbsize()),
            "stream_length": int(stream_length),
            "stream_pending": pending,
            "stream_lag": lag,
        }

    async def _key_prefixes(self) -> dict[str, int]:
        """Redis's keys counted by what precedes their last ':' (hex and digits kept
        out): what a growing key count is made of."""
        counts: Counter[str] = Counter()
        async for key in self.redis.scan_iter(count=1000):
            name = key.decode(errors="replace")
            counts[name.rsplit(":", 1)[0] if ":" in name else name] += 1
        return dict(counts.most_common(30))

    async def _tables(self) -> dict[str, dict[str, int]]:
        tables = {}
        for row in await self.db.fetch(TABLES_SQL, SCHEMAS):
            schema, _, table = row["name"].partition(".")
            # Names from pg_class, quoted: no input of anyone's.
            rows = await self.db.fetchval(f'SELECT count(*) FROM "{schema}"."{table}"')  # noqa: S608
            tables[row["name"]] = {**{k: v for k, v in row.items() if k != "name"}, "rows": rows}
        return tables


async def sample_every(
    sampler: Sampler, seconds: float, into: list[dict[str, Any]], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        into.append(await sampler.sample())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


def private_mb(processes: Sequence[Any]) -> tuple[float, float]:
    """Proportional and unique set sizes of `processes` (psutil), each summed, in MB: PSS
    counts the pages they share once across them, USS only the pages each has alone."""
    import psutil

    pss = uss = 0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            full = proc.memory_full_info()
            pss, uss = pss + full.pss, uss + full.uss
    return pss / 1e6, uss / 1e6


async def drained(sampler: Sampler, deadline: float) -> bool:
    """Until the stream is empty (telemetry trims what every group acknowledged) and its
    groups have nothing pending or undelivered, twice a second apart (False after
    `deadline` seconds)."""
    end = time.monotonic() + deadline
    empty_since = None
    while time.monotonic() < end:
        redis = await sampler._redis()
        if redis["stream_length"] == redis["stream_pending"] == redis["stream_lag"] == 0:
            empty_since = empty_since or time.monotonic()
            if time.monotonic() - empty_since >= 1:
                return True
        else:
            empty_since = None
        await asyncio.sleep(0.25)
    return False


# --------------------------------------------------------------- the run


async def soak(
    args: argparse.Namespace, running: Any, upstream_process: Any, upstream_url: str, key: str
) -> dict[str, Any]:
    import asyncpg
    import httpx
    import psutil
    from _common import ADMIN_EMAIL, ADMIN_PASSWORD, UPSTREAM_KEY, tree
    from redis.asyncio import Redis

    from common.llm_events import STREAM

    redis_url = redis_url_of(running)
    async with httpx.AsyncClient(
        base_url=running.gateway,
        timeout=60,
        limits=httpx.Limits(max_connections=args.max_in_flight, max_keepalive_connections=64),
    ) as client:
        login = await client.post(
            "/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        login.raise_for_status()
        admin = {"X-CSRF-Token": login.json()["csrf_token"]}
        # The members' calls go to the same upstream, through a shared credential.
        (
            await client.post(
                "/v1/providers/credentials",
                headers=admin,
                json={
                    "provider": "openai",
                    "name": "soak-shared",
                    "shared": True,
                    "api_key": UPSTREAM_KEY,
                    "base_url": upstream_url,
                },
            )
        ).raise_for_status()
        collections = {}
        for model in (EMBED_MODEL, LOCAL_MODEL):
            made = await client.post(
                "/v1/collections", headers=admin, json={"name": f"soak {model}", "model": model}
            )
            made.raise_for_status()
            collections[model] = made.json()["id"]
        members = [f"soak-{i}-{secrets.token_hex(3)}@example.com" for i in range(MEMBERS)]
        for email in members:
            made = await client.post(
                "/auth/register", json={"email": email, "password": MEMBER_PASSWORD}
            )
            made.raise_for_status()
        client.cookies.clear()
        # The local model loads in the background at start: the first call waits for it.
        (
            await client.post(
                "/v1/embeddings",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": LOCAL_MODEL, "input": "warm up"},
            )
        ).raise_for_status()

        me = psutil.Process()

        def processes() -> dict[str, list[Any]]:
            found = running.processes()
            found["upstream"] = tree(upstream_process.pid)
            found["soak"] = [me]
            return found

        redis = Redis.from_url(redis_url)
        db = await asyncpg.connect(
            f"postgresql://postgres@/platform?host={running.data_dir / 'pg'}"
        )
        try:
            traffic = Traffic(client, key, collections, members, Tally())
            sampler = Sampler(processes, redis, db, STREAM, time.monotonic(), traffic.tally)
            samples: list[dict[str, Any]] = []
            stop = asyncio.Event()
            sampling = asyncio.create_task(
                sample_every(sampler, args.sample_seconds, samples, stop)
            )
            machine_start = _machine()
            await drive(
                traffic, rate=args.rate, seconds=args.minutes * 60, max_in_flight=args.max_in_flight
            )
            traffic_seconds = time.monotonic() - sampler.started
            await traffic.aclose()
            stop.set()
            await sampling
            was_drained = await drained(sampler, 120)
            samples.append(await sampler.sample())
            samples[-1]["after_drain"] = True
        finally:
            await db.close()
            await redis.aclose()
    return {
        "machine_start": machine_start,
        "machine_end": _machine(),
        "traffic_seconds": round(traffic_seconds, 1),
        "drained": was_drained,
        "tally": traffic.tally,
        "samples": samples,
    }


def _machine() -> dict[str, Any]:
    from _common import machine

    return machine()


def redis_url_of(running: Any) -> str:
    """The Redis `make run` started, as its log says (`[devstack] Redis: redis://...`)."""
    import re

    from _common import RESULTS

    found = re.search(
        r"\[devstack\] Redis: (\S+)", (RESULTS / "soak.log").read_text(errors="replace")
    )
    if found is None:
        raise RuntimeError("devstack printed no Redis URL: see bench/results/soak.log")
    return found[1]


def requests_report(tally: Tally, seconds: float) -> dict[str, Any]:
    from _common import summary

    kinds = sorted({kind for kind, _ in tally.statuses})
    per_kind = {}
    for kind in kinds:
        statuses = {s: c for (k, s), c in sorted(tally.statuses.items()) if k == kind}
        per_kind[kind] = {
            "sent": sum(statuses.values()),
            "statuses": statuses,
            "latency_ms": {k: round(v, 1) for k, v in summary(tally.latencies[kind]).items()},
        }
    total = sum(tally.statuses.values())
    errors = Counter(
        {f"{k} {s}": c for (k, s), c in tally.statuses.items() if not s.startswith("2")}
    )
    return {
        "total": total,
        "per_second": round(total / seconds, 2) if seconds else 0.0,
        "kinds": per_kind,
        "errors": dict(errors.most_common()),
        "documents_created": tally.documents_created,
        "dropped_slots": tally.dropped,
        "late_slots": tally.late,
    }


def targets(a: dict[str, Any]) -> list[str]:
    """The issue's three targets, judged from an analysis (`analyse`)."""
    t, rss, redis = a["targets"], a["rss_mb"], a["redis"]
    worst = max((rss[n]["growth_pct"], n) for n in SERVICES if n in rss)
    calls = sum(v["new_rows"] for k, v in a["tables"].items() if k.startswith("telemetry.llm_call"))
    over, unexplained = t["rss_over_10_pct"], t["unexplained_tables"]
    return [
        f"- RSS growth <= {RSS_TARGET_PCT:.0f} % per service: "
        + (f"**missed** by {', '.join(over)}" if over else "met")
        + f" (the most: {worst[1]} {worst[0]:+.1f} %).",
        f"- Redis bounded: used_memory {redis['used_memory']['growth_pct']:+.1f} % after the "
        f"warm-up (its keys' data {redis['used_memory_dataset']['growth_pct']:+.1f} %, "
        f"{redis['keys']['start']:,.0f} -> {redis['keys']['end']:,.0f} keys; the clients' "
        f"buffers {redis['client_buffers']['start'] / 1e6:.2f} -> "
        f"{redis['client_buffers']['end'] / 1e6:.2f} MB); "
        f"the call stream at most {t['stream_max_length_after_warmup']:,.0f} entries "
        f"after it, {redis['stream_length']['end']:,.0f} at the end.",
        "- Table growth explained by data: "
        + (f"**not** for {', '.join(unexplained)}" if unexplained else "yes")
        + f" (telemetry.llm_call: {calls:+,.0f} rows for {a['model_calls_after_warmup']:,} "
        "model calls after the warm-up).",
    ]


def markdown(report: dict[str, Any]) -> str:
    a, r = report["analysis"], report["requests"]
    lines = [
        f"# Soak, {report['when']}",
        "",
        f"{report['minutes']} min at {report['rate']} slots/s ({r['total']} requests, "
        f"{r['per_second']}/s), a sample every {report['sample_seconds']} s, warm-up "
        f"{a['warmup_seconds']:.0f} s; load average {report['machine_start']['load_average']}"
        f" at start, {report['machine_end']['load_average']} at end. "
        f"Stream drained after the traffic: {report['drained']}.",
        "",
        *targets(a),
        "",
        "| process | RSS at warm-up end (MB) | at end | growth | slope (MB/h) | max |",
        "|---|---|---|---|---|---|",
    ]
    for name, g in a["rss_mb"].items():
        flag = " **over 10 %**" if name in a["targets"]["rss_over_10_pct"] else ""
        lines.append(
            f"| {name} | {g['start']:.1f} | {g['end']:.1f} | {g['growth_pct']:+.1f} %"
            f"{flag} | {g['slope_per_hour']:+.1f} | {g['max']:.1f} |"
        )
    lines += ["", "| Redis | at warm-up end | at end | max after warm-up |", "|---|---|---|---|"]
    for metric, g in a["redis"].items():
        lines.append(f"| {metric} | {g['start']:,.0f} | {g['end']:,.0f} | {g['max']:,.0f} |")
    c = a["postgres_connections"]
    lines.append(
        f"| Postgres client connections | {c['start']:,.0f} | {c['end']:,.0f} | {c['max']:,.0f} |"
    )
    keys = a["redis_keys"]
    lines.append("")
    lines.append(
        "Redis keys by prefix, at warm-up end -> at end: "
        + ", ".join(
            f"{prefix} {keys['start'].get(prefix, 0)} -> {count}"
            for prefix, count in keys["end"].items()
        )
        + "."
    )
    made = ", ".join(f"{kind} {count:,}" for kind, count in sorted(a["made_after_warmup"].items()))
    lines += [
        "",
        f"Made after the warm-up (successful requests by kind): {made}; model calls (one "
        f"telemetry.llm_call row each): {a['model_calls_after_warmup']:,}.",
        "",
        "CPU after the warm-up, in cores: "
        + ", ".join(f"{name} {cores:.2f}" for name, cores in a["cores_after_warmup"].items())
        + ".",
    ]
    lines += [
        "",
        "| table | rows at warm-up end | at end | new rows | MB at warm-up end | at end "
        "| bytes per new row | dead rows | indexes built | unexplained |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t in a["tables"].items():
        lines.append(
            f"| {name} | {t['rows_start']:,.0f} | {t['rows_end']:,.0f} | {t['new_rows']:+,.0f} "
            f"| {t['bytes_start'] / 1e6:.2f} | {t['bytes_end'] / 1e6:.2f} "
            f"| {t['bytes_per_new_row']:,.0f} | {t['dead_end']:,.0f} | {t['indexes_built']} "
            f"| {'**yes**' if t['unexplained'] else 'no'} |"
        )
    lines += ["", "| kind | sent | statuses | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for kind, k in r["kinds"].items():
        statuses = ", ".join(f"{s}: {c}" for s, c in k["statuses"].items())
        lines.append(
            f"| {kind} | {k['sent']} | {statuses} | {k['latency_ms']['p50']} "
            f"| {k['latency_ms']['p99']} |"
        )
    lines += [
        "",
        f"Documents created: {r['documents_created']}; slots dropped (too many in flight): "
        f"{r['dropped_slots']}; sent over 1 s late: {r['late_slots']}.",
        f"Errors: {r['errors'] or 'none'}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 30)))
    parser.add_argument(
        "--rate",
        type=float,
        default=float(os.environ.get("SOAK_RATE", 20)),
        help="requests per second (a session counts once)",
    )
    parser.add_argument(
        "--sample-seconds", type=float, default=float(os.environ.get("SOAK_SAMPLE_SECONDS", 10))
    )
    parser.add_argument(
        "--warmup", type=float, default=0.2, help="the share of the run before growth is measured"
    )
    parser.add_argument("--max-in-flight", type=int, default=100)
    parser.add_argument(
        "--analyse",
        metavar="SOAK_JSON",
        help="no run: analyse the samples of an earlier run's soak.json again",
    )
    args = parser.parse_args()
    if args.analyse:
        return summarise(json.loads(Path(args.analyse).read_text()))

    from _common import RESULTS, platform, provision, utc_now
    from suite import upstream

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the platform stops on the way out
    when = utc_now()
    extra = {"GATEWAY_RATE_LIMIT_ANONYMOUS_PER_MINUTE": "0"}  # logins, all from 127.0.0.1
    with (
        upstream() as (upstream_process, bare_url),
        platform(RESULTS / "soak.log", **extra) as running,
    ):
        key = provision(running.gateway, bare_url + "/v1")["plain"]
        run = asyncio.run(soak(args, running, upstream_process, bare_url + "/v1", key))
    warmup = args.warmup * run["traffic_seconds"]
    report = {
        "when": when,
        "minutes": args.minutes,
        "rate": args.rate,
        "sample_seconds": args.sample_seconds,
        "mix": MIX,
        "machine_start": run["machine_start"],
        "machine_end": run["machine_end"],
        "traffic_seconds": run["traffic_seconds"],
        "drained": run["drained"],
        "requests": requests_report(run["tally"], run["traffic_seconds"]),
        "warmup_seconds": warmup,
        "samples": run["samples"],
    }
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2))  # the samples kept first
    return summarise(report)


def summarise(report: dict[str, Any]) -> int:
    """Analyse a run's samples, write soak.json and soak.md, print the summary."""
    from _common import RESULTS

    report["analysis"] = analyse(report["samples"], report["warmup_seconds"])
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (RESULTS / "soak.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
