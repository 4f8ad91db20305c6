"""Interrupted writes of the embeddings service (issue 21): an upsert cut off by a client
that hangs up or by a SIGKILL of the service leaves all of its batch or none of it; a
model change (re-embedding) or an HNSW index build killed half-way resumes on the next
start and ends as if nothing had happened.

The service runs as a process of its own (tests/faults/embeddings_process.py) on a
database of its own, in front of an inference fake the test holds mid-call. Where the
fault must land between two statements of one transaction, the test holds a lock that the
second statement waits for, and sees it wait in pg_stat_activity: no timing is guessed.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.testing import LiveServer, redis_db_url

from .embeddings_process import (
    LARGE,
    SMALL,
    Database,
    EmbeddingsProcess,
    HeldInference,
    eventually,
    service_database,
)

pytestmark = pytest.mark.timeout(240)
DOCUMENTS = "/v1/collections/{id}/documents"
BATCH = 10  # texts per call to inference: a batch of 200 texts is 20 calls
REDIS_DB = 7


class Faults:
    def __init__(self, service: EmbeddingsProcess, db: Database, inference: HeldInference):
        self.service, self.db, self.inference = service, db, inference

    async def collection(self, name: str, model: str = SMALL) -> dict[str, Any]:
        async with self.service.client() as client:
            created = await client.post("/v1/collections", json={"name": name, "model": model})
        assert created.status_code == 201, created.text
        collection: dict[str, Any] = created.json()
        return collection

    async def read(self, collection_id: str) -> dict[str, Any]:
        async with self.service.client() as client:
            got = await client.get(f"/v1/collections/{collection_id}")
        assert got.status_code == 200, got.text
        found: dict[str, Any] = got.json()
        return found

    async def upsert(self, collection_id: str, documents: list[dict[str, Any]]) -> Any:
        async with self.service.client() as client:
            response = await client.post(
                f"/v1/collections/{collection_id}/documents", json={"documents": documents}
            )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
async def faults(postgres_admin_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Faults]:
    inference = HeldInference()
    signing_key = secrets.token_hex(32)
    async with service_database(postgres_admin_url) as (url, db), LiveServer(inference.app) as fake:
        env = {
            **os.environ,
            "EMBEDDINGS_DATABASE_URL": url,
            "REDIS_URL": redis_db_url(redis_url, REDIS_DB),
            "INTERNAL_SIGNING_KEY": signing_key,
            "LOG_FORMAT": "json",
            "PLATFORM_ENV_FILE": "",
            "EMBEDDINGS_INFERENCE_URL": fake.url,
            "EMBEDDINGS_EMBED_BATCH_SIZE": str(BATCH),
            "EMBEDDINGS_EMBED_CONCURRENCY": "1",
            "EMBEDDINGS_REEMBED_BATCH_SIZE": str(BATCH),
            "EMBEDDINGS_WORKER_POLL_SECONDS": "0.2",
            # No index build unless a test asks: its lock would stand in the way of the
            # locks these tests take on purpose.
            "EMBEDDINGS_INDEX_MIN_ROWS": "1000000",
        }
        service = EmbeddingsProcess(env, tmp_path / "embeddings.log", signing_key)
        try:
            yield Faults(service, db, inference)
        finally:
            inference.release()
            service.stop()


def texts(n: int, prefix: str = "document") -> list[dict[str, Any]]:
    return [{"id": f"d{i:03d}", "text": f"{prefix} number {i}"} for i in range(n)]


async def test_an_upsert_whose_client_hangs_up_is_written_whole(faults: Faults) -> None:
    """A hang-up does not stop the upsert: it goes on and commits all of its batch in one
    transaction (readers see none of it until then), so a retry finds it all unchanged."""
    service, db, inference = faults.service, faults.db, faults.inference
    await service.start()
    collection = await faults.collection("hang-up")
    cid = collection["id"]
    await faults.upsert(cid, [{"id": "kept", "text": "kept", "metadata": {"v": 1}}])
    batch = [*texts(200), {"id": "kept", "text": "kept", "metadata": {"v": 2}}]

    inference.hold_after(3)  # the 4th of the batch's 20 calls to inference waits
    lock = db.conn.transaction()
    await lock.start()
    try:
        # Holds "kept" (a metadata-only update, the batch's second statement), not the table.
        await db.conn.execute(f"SELECT 1 FROM {db.table(cid, 1)} WHERE id = 'kept' FOR UPDATE")
        async with service.client(timeout=60) as client:
            call = asyncio.ensure_future(
                client.post(f"/v1/collections/{cid}/documents", json={"documents": batch})
            )
            await asyncio.wait_for(inference.holding.wait(), 60)
            call.cancel()  # the client hangs up mid-way through the embedding
            with pytest.raises(asyncio.CancelledError):
                await call
        inference.release()
        # The service embedded the rest, inserted the 200 and now waits for "kept": its
        # transaction is open, and nobody else sees any of the batch.
        await eventually(lambda: db.waiting_on_lock("UPDATE embeddings."), "blocked")
        assert await db.count(cid, 1) == 1
    finally:
        await lock.rollback()
    # The request ends (its access log line) after its unit of work committed.
    await eventually(lambda: service.requests_logged(DOCUMENTS) == 2, "the upsert ended")
    assert await db.count(cid, 1) == 201
    assert await db.metadata(cid, 1, "kept") == '{"v": 2}'
    assert (await faults.read(cid))["document_count"] == 201
    again = await faults.upsert(cid, batch)  # the client's retry
    assert again["embedded"] == 0
    assert {d["status"] for d in again["documents"]} == {"unchanged"}


async def test_an_upsert_killed_mid_way_leaves_none_of_its_batch(faults: Faults) -> None:
    """SIGKILL while the batch is embedded, then while it is written (its INSERT done, its
    next statement waiting): after each restart the collection holds none of the batch,
    and the batch sent again is written whole."""
    service, db, inference = faults.service, faults.db, faults.inference
    await service.start()
    cid = (await faults.collection("killed"))["id"]
    await faults.upsert(cid, [{"id": "kept", "text": "kept", "metadata": {"v": 1}}])
    batch = [*texts(200), {"id": "kept", "text": "kept", "metadata": {"v": 2}}]

    # 1. Killed while it embeds: nothing was written yet, nothing is.
    inference.hold_after(3)
    async with service.client() as client:
        call = asyncio.ensure_future(
            client.post(f"/v1/collections/{cid}/documents", json={"documents": batch})
        )
        await asyncio.wait_for(inference.holding.wait(), 60)
        service.kill()
        with pytest.raises(httpx.TransportError):  # the connection is cut
            await call
    await eventually(lambda: inference.abandoned == 1, "the held call dropped")
    inference.release()
    await service.start()
    assert (await faults.read(cid))["document_count"] == 1
    assert await db.metadata(cid, 1, "kept") == '{"v": 1}'

    # 2. Killed while it writes: the INSERT of the 200 has run, the update of "kept" waits.
    lock = db.conn.transaction()
    await lock.start()
    try:
        await db.conn.execute(f"SELECT 1 FROM {db.table(cid, 1)} WHERE id = 'kept' FOR UPDATE")
        async with service.client() as client:
            call = asyncio.ensure_future(
                client.post(f"/v1/collections/{cid}/documents", json={"documents": batch})
            )
            pid = await eventually(lambda: db.waiting_on_lock("UPDATE embeddings."), "blocked")
            service.kill()
            with pytest.raises(httpx.TransportError):
                await call
    finally:
        await lock.rollback()  # its statement runs, then Postgres finds its client gone
    await eventually(lambda: db.gone(pid), "the killed service's backend ended")
    assert await db.count(cid, 1) == 1
    assert await db.metadata(cid, 1, "kept") == '{"v": 1}'

    await service.start()
    assert (await faults.read(cid))["document_count"] == 1
    sent_again = await faults.upsert(cid, batch)
    assert sent_again["embedded"] == 200
    assert [d["status"] for d in sent_again["documents"]] == ["created"] * 200 + ["updated"]
    assert (await faults.read(cid))["document_count"] == 201


async def test_a_model_change_killed_mid_way_resumes_where_it_was(faults: Faults) -> None:
    """SIGKILL while the documents are re-embedded, then while the switch drops the old
    table: the collection stays on its old model (searchable) each time, and the next
    start finishes the change without re-embedding what was already copied."""
    service, db, inference = faults.service, faults.db, faults.inference
    stale = {"EMBEDDINGS_WORKER_STALE_SECONDS": "1"}  # a dead worker's claim, taken over soon
    await service.start(**stale)
    cid = (await faults.collection("model change"))["id"]
    await faults.upsert(cid, texts(60))

    # 1. Killed during the copy: the new model's probe and 2 of 6 batches done, the third
    # held. Meanwhile the collection answers on its old model.
    inference.hold_after(3, LARGE)
    async with service.client() as client:
        changed = await client.patch(f"/v1/collections/{cid}", json={"model": LARGE})
        assert changed.status_code == 200, changed.text
        await asyncio.wait_for(inference.holding.wait(), 60)
        # Held past twice the stale time: the live worker renews its claim, and no replica
        # (this one included) takes the job over and embeds the same batch again.
        await asyncio.sleep(2.5)
        assert inference.held == 1
        found = await client.post(f"/v1/collections/{cid}/query",
                                  json={"text": "document number 7", "top_k": 1})  # fmt: skip
        assert found.json()[0]["id"] == "d007", found.text
    got = await faults.read(cid)
    assert got["model"] == SMALL
    assert (got["reembedding"]["done"], got["reembedding"]["total"]) == (2 * BATCH, 60)
    service.kill()
    row = await db.collection(cid)
    assert (row["model"], row["generation"], row["reembed_status"]) == (SMALL, 1, "running")
    assert await db.count(cid, 2) == 2 * BATCH
    copied = set(inference.texts(LARGE))
    assert len(copied) == 2 * BATCH + 1  # the probe of the new model's dimension, then copies

    # 2. Killed in the switch: the old table's DROP waits for a reader of ours.
    inference.release()
    reader = db.conn.transaction()
    await reader.start()
    try:
        await db.conn.execute(f"SELECT 1 FROM {db.table(cid, 1)} LIMIT 1")
        await service.start(**stale)
        pid = await eventually(lambda: db.waiting_on_lock("DROP TABLE"), "the switch waits")
        service.kill()
    finally:
        await reader.rollback()
    await eventually(lambda: db.gone(pid), "the killed service's backend ended")
    row = await db.collection(cid)
    assert (row["model"], row["generation"], row["reembed_status"]) == (SMALL, 1, "running")
    assert await db.count(cid, 1) == 60
    assert await db.count(cid, 2) == 60
    # What was copied before the first kill was not embedded again.
    assert len(inference.texts(LARGE)) == len(copied) + 60 - 2 * BATCH

    # 3. The next start finishes it: no embedding left to do, only the switch.
    await service.start(**stale)

    async def switched() -> dict[str, Any] | None:
        got = await faults.read(cid)
        return got if got["reembedding"] is None else None

    got = await eventually(switched, "the model change finished")
    assert (got["model"], got["dimension"], got["document_count"]) == (LARGE, 12, 60)
    assert [entry["model"] for entry in got["lineage"]] == [SMALL, LARGE]
    assert len(inference.texts(LARGE)) == len(copied) + 60 - 2 * BATCH
    assert await db.count(cid, 1) is None  # the old table is gone
    async with service.client() as client:
        found = await client.post(f"/v1/collections/{cid}/query",
                                  json={"text": "document number 7", "top_k": 1})  # fmt: skip
    assert found.status_code == 200, found.text
    assert found.json()[0]["id"] == "d007"


async def test_an_index_build_killed_mid_way_is_built_on_the_next_start(faults: Faults) -> None:
    """SIGKILL during the HNSW build: the index is not there (its CREATE INDEX is rolled
    back) and the collection is searched exactly meanwhile; the next start builds it once
    the dead builder's claim is stale, without a write to wake it."""
    service, db = faults.service, faults.db
    # A slow build to kill (large graph parameters), on a collection written at once.
    slow = {"EMBEDDINGS_INDEX_MIN_ROWS": "4000", "EMBEDDINGS_INDEX_IDLE_SECONDS": "0",
            "EMBEDDINGS_HNSW_M": "64", "EMBEDDINGS_HNSW_EF_CONSTRUCTION": "800",
            "EMBEDDINGS_WORKER_STALE_SECONDS": "12"}  # fmt: skip
    await service.start(**slow)
    cid = (await faults.collection("index"))["id"]
    rng = random.Random(21)
    vectors = [[rng.uniform(-1, 1) for _ in range(8)] for _ in range(4000)]
    for start in range(0, len(vectors), 1000):
        await faults.upsert(cid, [{"id": f"v{i}", "vector": vectors[i]}
                                  for i in range(start, start + 1000)])  # fmt: skip

    async def building() -> int | None:
        pid: int | None = await db.conn.fetchval(
            "SELECT pid FROM pg_stat_progress_create_index WHERE relid = to_regclass($1)",
            db.table(cid, 1),
        )
        return pid

    pid = await eventually(building, "the index build runs")
    service.kill()
    # Postgres finds the build's client gone (client_connection_check_interval, 1 s) and
    # rolls it back, rather than finish it for nobody while the collection's writers wait.
    await eventually(lambda: db.gone(pid), "the orphaned build stopped", within=15)
    index = db.table(cid, 1, suffix="_hnsw")
    assert await db.conn.fetchval("SELECT to_regclass($1)", index) is None
    assert (await db.collection(cid))["index_status"] == "building"  # a dead builder's claim

    await service.start(EMBEDDINGS_WORKER_STALE_SECONDS="12", EMBEDDINGS_INDEX_MIN_ROWS="1")
    async with service.client() as client:
        exact = await client.post(f"/v1/collections/{cid}/query",
                                  json={"vector": vectors[5], "top_k": 3})  # fmt: skip
    assert exact.status_code == 200, exact.text

    async def ready() -> bool:
        return bool((await faults.read(cid))["index"]["status"] == "ready")

    await eventually(ready, "the index is built again", within=120)
    assert await db.conn.fetchval("SELECT to_regclass($1)", index) is not None
    async with service.client() as client:
        indexed = await client.post(f"/v1/collections/{cid}/query",
                                    json={"vector": vectors[5], "top_k": 3})  # fmt: skip
    assert exact.json()[0]["id"] == indexed.json()[0]["id"] == "v5"
