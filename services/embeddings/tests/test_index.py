"""The HNSW path: recall against exact search, the plan uses the index, selective filters."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from embeddings import repository
from embeddings.vectors import pack

from .conftest import Embeddings, MakeEmbeddings, person

ALICE = person(401)
N, DIMENSION = 10_000, 384


def clustered(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random unit vectors with the low intrinsic dimension of real embeddings (a random
    32-dimensional Gaussian mapped into 384 dimensions, plus noise). Uniform random 384-d
    vectors have no neighbourhoods to find: see the service README."""
    latent = rng.standard_normal((n, 32)).astype(np.float32) @ PROJECTION
    x = latent + 0.1 * rng.standard_normal((n, DIMENSION)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)  # type: ignore[no-any-return]


PROJECTION = np.random.default_rng(7).standard_normal((32, DIMENSION)).astype(np.float32)


async def _load(service: Embeddings, collection_id: str, data: np.ndarray, rare: set[int]) -> None:
    for start in range(0, len(data), 1000):
        await service.upsert(ALICE, collection_id, [
            {"id": str(i), "vector": data[i].tolist(),
             "metadata": {"kind": "rare" if i in rare else "common", "i": i}}
            for i in range(start, min(start + 1000, len(data)))
        ])  # fmt: skip


async def _wait_for_index(service: Embeddings, collection_id: str) -> None:
    for _ in range(600):
        got = await service.call(ALICE, "GET", f"/v1/collections/{collection_id}")
        if got.json()["index"]["status"] == "ready":
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the index was not built in 60 s")


async def test_hnsw_recall_plan_and_selective_filters(make_embeddings: MakeEmbeddings) -> None:
    rng = np.random.default_rng(42)
    data, queries = clustered(rng, N), clustered(rng, 30)
    rare = set(rng.choice(N, 100, replace=False).tolist())  # 1% of the documents
    # Quiet for 1.5 s before the index is built: the client never pauses that long.
    async with make_embeddings(default_ef_search=100, index_idle_seconds=1.5) as service:
        collection = await service.collection(ALICE, "recall")
        await _load(service, collection["id"], data, rare)
        await _wait_for_index(service, collection["id"])

        # Recall@10 of the service's answers (HNSW) against exact search.
        exact = np.argsort(-(queries @ data.T), axis=1)[:, :10]
        found = []
        for q, truth in zip(queries, exact, strict=True):
            response = await service.query(ALICE, collection["id"], vector=q.tolist(), top_k=10)
            found.append(len({int(m["id"]) for m in response.json()} & set(truth.tolist())) / 10)
        assert np.mean(found) >= 0.95, np.mean(found)

        # A filter that 1% of the documents pass still fills top_k (iterative index scan).
        rare_ids = np.array(sorted(rare))
        for q in queries[:5]:
            response = await service.query(ALICE, collection["id"], vector=q.tolist(), top_k=10,
                                           filter={"kind": "rare"})  # fmt: skip
            got = [int(m["id"]) for m in response.json()]
            assert len(got) == 10
            assert set(got) <= rare
            best = rare_ids[np.argsort(-(data[rare_ids] @ q))[:10]]
            assert len(set(got) & set(best.tolist())) >= 8

        # The plan of the service's own query uses the collection's HNSW index. (With an
        # equality filter the planner, which has no statistics on metadata keys, may prefer
        # an exact scan at this size: the answers above are right either way.)
        row = await _row(service, collection["id"])
        table = repository.current_table(row)
        sql = repository.plain_search_sql(table, include_vectors=False)
        async with service.app.state.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            rows = await driver.fetch(f"EXPLAIN {sql}", pack(queries[0].tolist()), 10)
            plan = "\n".join(r[0] for r in rows)
        assert f"Index Scan using {table.index_name}" in plan, plan


async def _row(service: Embeddings, collection_id: str) -> Any:
    import uuid

    async with service.app.state.sessionmaker() as db:
        return await repository.get_collection(db, collection_id=uuid.UUID(collection_id))
