"""The embeddings service's targets: bulk ingest, query latency at recall, local-model speed.

    .venv/bin/python bench/embeddings.py [--vectors 100000] [--queries 500]
    .venv/bin/python bench/embeddings.py --size 1m   # 1M x 384: its own run, not in `make bench`

Starts the platform (`python -m devkit.devstack run`: a fresh embedded Postgres and Redis,
all services) on free 127.0.0.1 ports, then, talking to the embeddings service directly with a
signed identity (what the gateway adds per request is measured in bench/chat_path.py):

1. ingests N precomputed 384-d vectors (1,000 per request, 2 requests in flight) into a new
   collection and reports vectors/s; then waits for the background HNSW build and reports it;
2. reports the local all-MiniLM-L6-v2's throughput in texts/s, at inference and through an
   upsert of text documents;
3. sends queries with a vector one at a time, for several ef_search values, and reports
   p50/p95 and recall@10 against exact search (numpy over the same vectors); and beside
   each, the floor under that figure, on the same collection and queries: the service's
   own statement from a bare asyncpg client (Postgres alone), and from a minimal ASGI app
   under uvicorn (one asyncpg connection, no framework: what any HTTP service in front of
   this Postgres costs at the least). The three take turns in rounds of 30 queries, in a
   shuffled order (`interleaved`), so that the machine's neighbours weigh on all three
   alike; the service's gap to Postgres alone is also given per round (median, range).
   One unmeasured pass of each comes first.

The vectors are random with the low intrinsic dimension of real sentence embeddings (a random
32-d Gaussian mapped into 384-d, plus noise); see services/embeddings/README.md for why
uniformly random 384-d vectors are no test of an approximate index. Writes
bench/results/embeddings.json (embeddings-1m.json for `--size 1m`).

`--size 1m` (SIZES) is the large run: 1M vectors, the embedded Postgres given the memory a
collection of that size needs (shared buffers that hold its HNSW index, a maintenance_work_mem
that holds the graph while it is built: the build is far slower once it spills), exact
search in chunks, no local-model step, and the table's and index's sizes reported. Its
figures, memory and duration on a 2-core machine: bench/README.md (issue 22).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
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
import numpy as np
from _common import RESULTS, Platform, admin_client, machine, percentile, platform, utc_now
from _minimal_asgi import HELPERS, SERVE

from common import ports
from common.identity import HEADER, Identity, SignedIdentity, sign

MODEL = "local/all-MiniLM-L6-v2"
JSON = {"content-type": "application/json"}
DIMENSION = 384


def clustered(rng: np.random.Generator, projection: np.ndarray, n: int) -> np.ndarray:
    x = rng.standard_normal((n, 32)).astype(np.float32) @ projection
    x += 0.1 * rng.standard_normal((n, DIMENSION)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)  # type: ignore[no-any-return]


def body(data: np.ndarray, start: int, end: int) -> bytes:
    """One upsert of documents start..end-1, the vectors rounded to 7 decimals."""
    rows = np.round(data[start:end].astype(np.float64), 7).tolist()
    documents = [
        {"id": str(i), "vector": row,
         "metadata": {"i": i, "kind": "rare" if i % 100 == 0 else "common"}}
        for i, row in zip(range(start, end), rows, strict=True)
    ]  # fmt: skip
    return json.dumps({"documents": documents}).encode()


async def ingest(client: httpx.AsyncClient, path: str, data: np.ndarray) -> float:
    """Upserts of 1,000, 2 in flight; the seconds they took. Every body is encoded before the
    clock starts, into a temporary file (1M vectors are ~5 GB of JSON: more than this
    process should hold), read back one at a time (from the page cache)."""
    batches = [(s, min(s + 1000, len(data))) for s in range(0, len(data), 1000)]
    with tempfile.TemporaryFile(prefix="bench-bodies-") as spool:
        spans = []
        for s, e in batches:
            encoded = body(data, s, e)
            spans.append((spool.tell(), len(encoded)))
            spool.write(encoded)
        spool.flush()
        queue = spans[::-1]

        async def sender() -> None:
            while queue:
                offset, size = queue.pop()
                content = os.pread(spool.fileno(), size, offset)
                response = await client.post(path, content=content, headers=JSON)
                assert response.status_code == 200, response.text[:500]

        start = time.perf_counter()
        await asyncio.gather(sender(), sender())
        return time.perf_counter() - start


Measured = tuple[list[float], list[float]]  # latencies (ms), recalls@10


class HttpQueries:
    """Queries with a vector, one at a time over one keep-alive connection, from a minimal
    client (http.client: httpx would add about a millisecond of its own to each figure).
    Each request is signed, as the gateway signs it, before its clock starts."""

    def __init__(self, base_url: str, identity: Identity, key: bytes, collection: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port))
        self.identity, self.key = identity, key
        self.path = f"/v1/collections/{collection}/query"

    def run(self, bodies: list[bytes], truths: np.ndarray) -> Measured:
        """Latencies (ms) and recalls@10 of the requests `bodies`."""
        latencies, recalls = [], []
        for body, truth in zip(bodies, truths, strict=True):
            headers = {"content-type": "application/json",
                       HEADER: sign(self.identity, self.key, method="POST", path=self.path,
                                    audience="embeddings")}  # fmt: skip
            t0 = time.perf_counter()
            self.connection.request("POST", self.path, body=body, headers=headers)
            response = self.connection.getresponse()
            answer = response.read()
            latencies.append((time.perf_counter() - t0) * 1000)
            assert response.status == 200, answer[:300]
            recalls.append(recall(answer, truth))
        return latencies, recalls


def recall(answer: bytes | str, truth: np.ndarray) -> float:
    found = {int(m["id"]) for m in json.loads(answer)}
    return len(found & set(truth.tolist())) / 10


def query_bodies(queries: np.ndarray, ef: int) -> list[bytes]:
    return [json.dumps({"vector": [round(float(x), 7) for x in q], "top_k": 10,
                        "ef_search": ef}).encode() for q in queries]  # fmt: skip


# The service's setting beside ef_search (embeddings.repository.search), set alike in the
# floor's two (FLOOR_APP spells it out): it may cost a little at a large ef_search even
# without a filter (bench/README.md, issue 22).
ITERATIVE_SCAN = "relaxed_order"

# The least an HTTP service in front of this Postgres can add: plain ASGI under uvicorn, the
# body parsed by pydantic-core, the vector packed, one asyncpg connection, the statement
# given (the service's own), its JSON text sent back as it is.
FLOOR_APP = (
    HELPERS
    + """
import os, struct, asyncpg
from pydantic_core import from_json
state = {}
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if not state:
        state["db"] = await asyncpg.connect(os.environ["FLOOR_DSN"])
        await state["db"].set_type_codec("vector", schema=os.environ["FLOOR_VECTOR_SCHEMA"],
                                         encoder=bytes, decoder=bytes, format="binary")
        state["ef"] = None
    if scope["method"] != "POST":  # the readiness probe
        return await send_json(send, 204, b"")
    query = from_json(await read_body(receive))
    if state["ef"] != query["ef_search"]:
        await state["db"].execute(f"SET hnsw.ef_search = {int(query['ef_search'])}")
        await state["db"].execute("SET hnsw.iterative_scan = relaxed_order")  # ITERATIVE_SCAN
        state["ef"] = query["ef_search"]
    vector = struct.pack(f">HH{len(query['vector'])}f", len(query["vector"]), 0, *query["vector"])
    out = (await state["db"].fetchval(os.environ["FLOOR_SQL"], vector, query["top_k"])).encode()
    await send_json(send, 200, out)
"""
    + SERVE
)


# The service's own statement for a query without a filter, from its repository. Asked of
# the service's package in a process of its own: in this one, `embeddings` is this file.
STATEMENT = (
    "import sys, uuid; from embeddings.repository import DocumentTable, plain_search_sql; "
    "print(plain_search_sql(DocumentTable(uuid.UUID(sys.argv[1]), int(sys.argv[2]), "
    "int(sys.argv[3]), sys.argv[4]), False))"
)


def search_sql(collection: str, generation: int, workdir: str) -> str:
    """embeddings.repository.plain_search_sql for the collection (cosine, DIMENSION): the
    vector sent in pgvector's binary format. `workdir`: a directory without this file."""
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", STATEMENT, collection, str(generation), str(DIMENSION), "cosine"],
        cwd=workdir, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


class PostgresAlone:
    """The service's statement from a bare asyncpg client: one connection, the statement
    prepared once, the vector packed before the clock starts (binary, as the service sends
    it), run on an event loop of its own between the HTTP requests."""

    def __init__(self, dsn: str, schema: str, sql: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.db, self.statement = self.loop.run_until_complete(self._open(dsn, schema, sql))
        self.ef: int | None = None

    @staticmethod
    async def _open(dsn: str, schema: str, sql: str) -> tuple[Any, Any]:
        db = await asyncpg.connect(dsn)
        await db.set_type_codec("vector", schema=schema, encoder=bytes, decoder=bytes,
                                format="binary")  # fmt: skip
        return db, await db.prepare(sql)

    def run(self, queries: np.ndarray, truths: np.ndarray, ef: int) -> Measured:
        return self.loop.run_until_complete(self._run(queries, truths, ef))

    async def _run(self, queries: np.ndarray, truths: np.ndarray, ef: int) -> Measured:
        if self.ef != ef:
            await self.db.execute(f"SET hnsw.ef_search = {int(ef)}")
            await self.db.execute(f"SET hnsw.iterative_scan = {ITERATIVE_SCAN}")
            self.ef = ef
        vectors = [len(q).to_bytes(2, "big") + b"\0\0" + q.astype(">f4").tobytes() for q in queries]
        latencies, recalls = [], []
        for vector, truth in zip(vectors, truths, strict=True):
            t0 = time.perf_counter()
            answer = await self.statement.fetchval(vector, 10)
            latencies.append((time.perf_counter() - t0) * 1000)
            recalls.append(recall(answer, truth))
        return latencies, recalls

    def close(self) -> None:
        self.loop.run_until_complete(self.db.close())
        self.loop.close()


ROUND = 30  # queries per target per round (the three targets take turns, in shuffled order)


def interleaved(
    service: HttpQueries, minimal: HttpQueries, alone: PostgresAlone, queries: np.ndarray,
    exact: np.ndarray, ef: int,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every query through each of the three, in rounds of ROUND queries: within a round
    each target answers the same queries, in an order shuffled per round, so that what the
    machine's neighbours do weighs on the three alike. Per target: all latencies, recalls,
    and each round's p50."""
    bodies = query_bodies(queries, ef)
    order = random.Random(ef)  # noqa: S311 (an order of turns, not a secret)
    out: dict[str, dict[str, Any]] = {
        name: {"latencies": [], "recalls": [], "round_p50": []}
        for name in ("service", "postgres_alone", "minimal_app")
    }  # fmt: skip
    for start in range(0, len(queries), ROUND):
        part = slice(start, start + ROUND)
        turns = list(out)
        order.shuffle(turns)
        for name in turns:
            if name == "postgres_alone":
                latencies, recalls = alone.run(queries[part], exact[part], ef)
            else:
                client = service if name == "service" else minimal
                latencies, recalls = client.run(bodies[part], exact[part])
            out[name]["latencies"] += latencies
            out[name]["recalls"] += recalls
            out[name]["round_p50"].append(statistics.median(latencies))
    return out


def query_rows(
    service_url: str,
    dsn: str,
    collection: str,
    identity: Identity,
    key: bytes,
    queries: np.ndarray,
    exact: np.ndarray,
    efs: list[int],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The service's query rows, and under each the floor (Postgres alone, the minimal
    app), measured interleaved per ef_search (`interleaved`) after one unmeasured pass of
    each at the largest (the index and the table in shared buffers). The same statement,
    ef_search and queries for all three; their recalls, equal, show it."""
    generation, schema = asyncio.run(_collection_facts(dsn, collection))
    workdir = tempfile.mkdtemp(prefix="vector-floor-")
    try:
        sql = search_sql(collection, generation, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    Path(workdir, "vector_floor.py").write_text(FLOOR_APP)
    app, port = ports.spawn(  # serving the socket bound here (common.ports)
        [sys.executable, "-m", "vector_floor"],
        env=dict(os.environ, FLOOR_DSN=dsn, FLOOR_SQL=sql, FLOOR_VECTOR_SCHEMA=schema,
                 PYTHONPATH=workdir), cwd=workdir,
    )  # fmt: skip
    service_rows, floor = [], []
    alone: PostgresAlone | None = None
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(url)  # 204 once it answers
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        service = HttpQueries(service_url, identity, key, collection)
        minimal = HttpQueries(url, identity, key, collection)
        alone = PostgresAlone(dsn, schema, sql)
        print("warm-up pass (not measured)", flush=True)
        interleaved(service, minimal, alone, queries, exact, max(efs))
        for ef in efs:
            got = interleaved(service, minimal, alone, queries, exact, ef)
            row = {"ef_search": ef, **_summary(got["service"]),
                   "rounds": len(got["service"]["round_p50"])}  # fmt: skip
            service_rows.append(row)
            gaps = sorted(
                a - b for a, b in zip(got["service"]["round_p50"],
                                      got["postgres_alone"]["round_p50"], strict=True)
            )  # fmt: skip
            alone_row, minimal_row = _summary(got["postgres_alone"]), _summary(got["minimal_app"])
            gap = {"median": statistics.median(gaps), "min": gaps[0], "max": gaps[-1]}
            floor.append({"ef_search": ef,
                          "postgres_alone_p50_ms": alone_row["p50_ms"],
                          "postgres_alone_recall_at_10": alone_row["recall_at_10"],
                          "minimal_app_p50_ms": minimal_row["p50_ms"],
                          "minimal_app_recall_at_10": minimal_row["recall_at_10"],
                          "service_minus_postgres_ms": gap})  # fmt: skip
            print(f"ef_search={ef}: p50 the service {row['p50_ms']:.2f} ms (p95"
                  f" {row['p95_ms']:.2f}), minimal app {minimal_row['p50_ms']:.2f},"
                  f" Postgres alone {alone_row['p50_ms']:.2f}; recall@10 {row['recall_at_10']:.3f}"
                  f" / {minimal_row['recall_at_10']:.3f} / {alone_row['recall_at_10']:.3f};"
                  f" the service minus Postgres alone per round {statistics.median(gaps):+.2f}"
                  f" ms ({gaps[0]:+.2f} to {gaps[-1]:+.2f})", flush=True)  # fmt: skip
    finally:
        if alone is not None:
            alone.close()
        app.terminate()
        app.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return service_rows, floor


def _summary(measured: dict[str, Any]) -> dict[str, float]:
    latencies = measured["latencies"]
    return {"p50_ms": percentile(latencies, 0.5), "p95_ms": percentile(latencies, 0.95),
            "p99_ms": percentile(latencies, 0.99),
            "recall_at_10": float(np.mean(measured["recalls"]))}  # fmt: skip


async def _collection_facts(dsn: str, collection: str) -> tuple[int, str]:
    """The collection's table generation, and the schema pgvector's type lives in."""
    db = await asyncpg.connect(dsn)
    try:
        generation = await db.fetchval(
            "SELECT generation FROM embeddings.collection WHERE id = $1", uuid.UUID(collection)
        )
        schema = await db.fetchval(
            "SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
            " WHERE t.typname = 'vector' LIMIT 1"
        )
        return int(generation), str(schema)
    finally:
        await db.close()


async def ingest_and_index(client: httpx.AsyncClient, data: np.ndarray) -> dict[str, Any]:
    """A collection of `data`, bulk-ingested (timed), then how long its HNSW index took to be
    ready after the ingest. The collection's id is under "collection"."""
    created = await client.post("/v1/collections", json={"name": "bench", "model": MODEL})
    assert created.status_code == 201, created.text
    collection = created.json()["id"]
    seconds = await ingest(client, f"/v1/collections/{collection}/documents", data)
    result: dict[str, Any] = {"collection": collection}
    result["ingest"] = {"vectors": len(data), "seconds": seconds,
                        "vectors_per_second": len(data) / seconds}  # fmt: skip
    print(f"ingest: {len(data)} vectors in {seconds:.1f} s = {len(data) / seconds:.0f}/s",
          flush=True)  # fmt: skip
    start = time.perf_counter()
    while True:
        got = (await client.get(f"/v1/collections/{collection}")).json()
        if got["index"]["status"] == "ready":
            break
        await asyncio.sleep(0.5)
    result["index_ready_after_ingest_seconds"] = time.perf_counter() - start
    print(f"HNSW index ready {result['index_ready_after_ingest_seconds']:.1f} s after ingest",
          flush=True)  # fmt: skip
    return result


async def local_model(
    client: httpx.AsyncClient, inference_url: str, auth: SignedIdentity, count: int
) -> dict[str, Any]:
    """The local model's texts per second: at inference directly, then through an upsert
    into a collection of the embeddings service (`client`)."""
    texts = [f"sentence {i}: the quick brown fox jumps over the lazy dog {i % 97}"
             for i in range(count)]  # fmt: skip
    async with httpx.AsyncClient(base_url=inference_url, auth=auth, timeout=600) as inf:
        await inf.post("/v1/embeddings", json={"model": MODEL, "input": texts[:8]})  # warm
        t0 = time.perf_counter()
        for s in range(0, len(texts), 256):
            r = await inf.post("/v1/embeddings", json={"model": MODEL, "input": texts[s : s + 256]})
            assert r.status_code == 200, r.text
        model_seconds = time.perf_counter() - t0
    created = await client.post("/v1/collections", json={"name": "texts", "model": MODEL})
    path = f"/v1/collections/{created.json()['id']}/documents"
    t0 = time.perf_counter()
    for s in range(0, len(texts), 1000):
        docs = [{"text": f"upserted {t}"} for t in texts[s : s + 1000]]
        r = await client.post(path, json={"documents": docs})
        assert r.status_code == 200, r.text
    upsert_seconds = time.perf_counter() - t0
    print(f"local model: {len(texts) / model_seconds:.0f} texts/s at inference,"
          f" {len(texts) / upsert_seconds:.0f} texts/s through an upsert")  # fmt: skip
    return {
        "texts": len(texts),
        "inference_texts_per_second": len(texts) / model_seconds,
        "upsert_texts_per_second": len(texts) / upsert_seconds,
    }


async def main_async(args: argparse.Namespace, urls: dict[str, str], identity: Identity,
                     key: bytes) -> dict[str, Any]:  # fmt: skip
    rng = np.random.default_rng(1)
    projection = np.random.default_rng(7).standard_normal((32, DIMENSION)).astype(np.float32)
    data = clustered(rng, projection, args.vectors)
    queries = clustered(rng, projection, args.queries)
    auth = SignedIdentity(key, identity, audience="embeddings")
    async with httpx.AsyncClient(base_url=urls["embeddings"], auth=auth, timeout=600) as client:
        result = await ingest_and_index(client, data)
        collection = result.pop("collection")
        result["_query_inputs"] = (collection, queries, nearest(queries, data))  # used by run
        if args.texts:
            # A signed identity names the one service it is for (its audience).
            to_inference = SignedIdentity(key, identity, audience="inference")
            result["local_model"] = await local_model(
                client, urls["inference"], to_inference, args.texts
            )
    return result


def nearest(queries: np.ndarray, data: np.ndarray, k: int = 10, chunk: int = 100_000) -> np.ndarray:
    """The exact k nearest (largest inner product: the vectors are unit length) of each
    query, nearest first, by chunks of `data` (1M x 300 scores at once would be 1.2 GB)."""
    best_ids = np.empty((len(queries), 0), dtype=np.int64)
    best_scores = np.empty((len(queries), 0), dtype=np.float32)
    for start in range(0, len(data), chunk):
        scores = queries @ data[start : start + chunk].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_ids = np.concatenate([best_ids, top + start], axis=1)
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        keep = np.argsort(-best_scores, axis=1)[:, :k]
        best_ids = np.take_along_axis(best_ids, keep, 1)
        best_scores = np.take_along_axis(best_scores, keep, 1)
    return best_ids


# Presets for the large runs, each its own documented run (bench/README.md), never part of
# `make bench`: the figures, and the settings the embedded Postgres and the service get.
# 1M x 384: the heap is ~1.9 GB and the HNSW index (m 16) ~2 GB; 3 GB of shared buffers hold
# the index and the pages a query visits, and 5 GB of maintenance_work_mem the graph pgvector
# builds in memory (shared with its parallel workers, in /dev/shm). Out of the machine's 24 GiB.
SIZES: dict[str, dict[str, Any]] = {
    "1m": {
        "args": {"vectors": 1_000_000, "queries": 300, "texts": 0, "ef": [40, 100, 200, 400]},
        "env": {"PLATFORM_PG_SHARED_BUFFERS": "3GB", "EMBEDDINGS_INDEX_BUILD_MEMORY": "5GB"},
    },
}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), help="a large run's preset (SIZES)")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--texts", type=int, default=2000, help="0: no local-model step")
    parser.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200])
    return parser


def run(running: Platform, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement above against a running platform (its admin's identity, signed
    with the platform's key, straight to the embeddings and inference services)."""
    with admin_client(running.gateway) as admin:
        me = admin.get("/auth/me").json()
    identity = Identity(sub=me["id"], kind="user", iss="gateway", roles=tuple(me["roles"]),
                        permissions=tuple(me["permissions"]))  # fmt: skip
    urls = {name: running.url(name) for name in running.ports}
    key = running.signing_key.encode()
    result = asyncio.run(main_async(args, urls, identity, key))
    collection, queries, exact = result.pop("_query_inputs")
    result["collection"] = collection
    dsn = f"postgresql://postgres@/platform?host={running.data_dir / 'pg'}"  # its superuser
    result["queries"], result["floor"] = query_rows(
        urls["embeddings"], dsn, collection, identity, key, queries, exact, args.ef
    )
    result.update({
        "when": utc_now(), "machine": machine(),
        "dimension": DIMENSION, "data": "random, intrinsic dimension 32, unit length",
    })  # fmt: skip
    return result


async def storage(dsn: str, collection: str) -> dict[str, Any]:
    """The collection's table and index sizes, and the Postgres settings that bear on them."""
    db = await asyncpg.connect(dsn)
    try:
        generation = await db.fetchval(
            "SELECT generation FROM embeddings.collection WHERE id = $1", uuid.UUID(collection)
        )
        table = f"embeddings.doc_{uuid.UUID(collection).hex}_{generation}"
        sizes = await db.fetchrow(
            "SELECT pg_table_size($1::regclass) AS heap, pg_indexes_size($1::regclass) AS indexes,"
            " (SELECT pg_relation_size(indexrelid) FROM pg_index i JOIN pg_class c"
            "  ON c.oid = i.indexrelid WHERE i.indrelid = $1::regclass AND c.relname LIKE '%hnsw')"
            " AS hnsw",
            table,
        )  # fmt: skip
        settings = {
            name: await db.fetchval(f"SHOW {name}")
            for name in ("shared_buffers", "max_parallel_maintenance_workers", "work_mem",
                         "effective_cache_size", "max_worker_processes")
        }  # fmt: skip
    finally:
        await db.close()
    return {"bytes": dict(sizes), "settings": settings}


def main() -> int:
    args = parser().parse_args()
    preset = SIZES.get(args.size or "", {"args": {}, "env": {}})
    for name, value in preset["args"].items():
        setattr(args, name, value)
    name = f"embeddings-{args.size}" if args.size else "embeddings"
    with platform(RESULTS / f"{name}.log", **preset["env"]) as running:
        result = run(running, args)
        dsn = f"postgresql://postgres@/platform?host={running.data_dir / 'pg'}"
        result["storage"] = asyncio.run(storage(dsn, result["collection"]))
    result["storage"]["env"] = preset["env"]
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["storage"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
