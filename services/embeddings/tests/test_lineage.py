"""Changing a collection's model: re-embedded in the background, switched atomically."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from common.identity import Identity
from devkit.testing import asgi_client

from .conftest import MODEL, Embeddings, MakeEmbeddings, person

ALICE = person(501)
ALIAS = "lineage-mini"


async def _alias(service: Embeddings, alias: str = ALIAS) -> None:
    """An admin's alias on the real inference service: another model name, same vectors."""
    admin = person(502, "admin")
    async with asgi_client(service.inference.app, identity=admin, key=service.inference.key) as c:
        response = await c.post("/v1/providers/aliases",
                                json={"alias": alias, "shared": True,
                                      "targets": [{"model": MODEL}]})  # fmt: skip
        assert response.status_code == 201, response.text


async def _settled(
    service: Embeddings, collection_id: str, owner: Identity = ALICE
) -> dict[str, Any]:
    for _ in range(300):
        got = (await service.call(owner, "GET", f"/v1/collections/{collection_id}")).json()
        if got["reembedding"] is None or got["reembedding"]["status"] == "failed":
            return got  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError("re-embedding did not finish in 30 s")


async def test_a_model_change_reembeds_everything_and_switches(service: Embeddings) -> None:
    await _alias(service)
    collection = await service.collection(ALICE, "evolving")
    path = f"/v1/collections/{collection['id']}"
    await service.upsert(ALICE, collection["id"], [
        {"id": f"d{i}", "text": f"document number {i} about cats", "metadata": {"i": i}}
        for i in range(40)
    ])  # fmt: skip

    changed = await service.call(ALICE, "PATCH", path, json={"model": ALIAS})
    # Writes go on meanwhile, and end up in the new index too.
    await service.upsert(ALICE, collection["id"], [{"id": "late", "text": "a late arrival"}])
    await service.call(ALICE, "DELETE", f"{path}/documents/d0")
    settled = await _settled(service, collection["id"])

    assert changed.status_code == 200, changed.text
    assert changed.json()["reembedding"]["model"] == ALIAS
    assert changed.json()["model"] == MODEL  # still the old one until the switch
    assert settled["reembedding"] is None
    assert (settled["model"], settled["dimension"]) == (ALIAS, 384)
    assert [entry["model"] for entry in settled["lineage"]] == [MODEL, ALIAS]
    assert settled["document_count"] == 40  # 40 - d0 + late
    reembedded = set(service.inference.record.texts(ALIAS))
    assert {f"document number {i} about cats" for i in range(1, 40)} <= reembedded
    assert "a late arrival" in reembedded
    found = await service.query(ALICE, collection["id"], text="a late arrival", top_k=1)
    assert found.json()[0]["id"] == "late"
    assert (await service.call(ALICE, "GET", f"{path}/documents/d5")).json()["metadata"] == {"i": 5}


async def test_reembedding_is_governed_as_the_request_that_asked_for_it(
    service: Embeddings,
) -> None:
    """The background re-embedding calls inference as the caller who changed the model:
    with their API key, its team and the policies they carried (common.policy), so the
    key's, user's and team's budgets, model lists and limits apply to it as they did to the
    request (inference enforces them from the signed identity)."""
    alias = "lineage-governed"
    await _alias(service, alias)
    owner = person(503)
    by_key = replace(
        owner,
        kind="api_key",
        kid=f"key-{uuid.uuid4()}",
        team=str(uuid.uuid4()),
        policies={"key": {"allowed_models": ["local/*"], "rpm_limit": 1000},
                  "team": {"tpm_limit": 1_000_000}},
    )  # fmt: skip
    collection = await service.collection(by_key, "governed")
    await service.upsert(by_key, collection["id"], [
        {"id": f"d{i}", "text": f"governed document {i}"} for i in range(12)
    ])  # fmt: skip
    changed = await service.call(
        by_key, "PATCH", f"/v1/collections/{collection['id']}", json={"model": alias}
    )
    assert changed.status_code == 200, changed.text
    settled = await _settled(service, collection["id"], owner)
    assert (settled["reembedding"], settled["model"]) == (None, alias)

    record = service.inference.record
    background = [i for c, i in zip(record.calls, record.identities, strict=True)
                  if c["model"] == alias and "governed document 3" in c["input"]]  # fmt: skip
    assert background, "the re-embedding never reached inference"
    for identity in background:
        assert (identity.sub, identity.kind, identity.iss) == (owner.sub, "api_key", "embeddings")
        assert (identity.kid, identity.team, identity.policies) == (
            by_key.kid,
            by_key.team,
            by_key.policies,
        )
        assert identity.permissions == owner.permissions


async def test_vectors_without_text_block_a_model_change(service: Embeddings) -> None:
    collection = await service.collection(ALICE, "vectors only")
    await service.upsert(ALICE, collection["id"], [{"id": "v", "vector": [0.1] * 384}])

    response = await service.call(ALICE, "PATCH", f"/v1/collections/{collection['id']}",
                                  json={"model": "local/all-MiniLM-L6-v2-other"})  # fmt: skip
    unknown = await service.call(ALICE, "PATCH", f"/v1/collections/{collection['id']}",
                                 json={"model": "local/unknown"})  # fmt: skip

    assert response.status_code in (409, 422)
    assert unknown.status_code == 422
    got = (await service.call(ALICE, "GET", f"/v1/collections/{collection['id']}")).json()
    assert (got["model"], got["reembedding"]) == (MODEL, None)


async def test_another_replica_sees_a_switch_and_a_delete_at_its_next_query(
    make_embeddings: MakeEmbeddings,
) -> None:
    """Replica `a` keeps what it needs to search a collection; replica `b` changes the
    collection's model, then deletes it. `a`'s next query uses the new model, then is a 404."""
    async with make_embeddings() as a, make_embeddings() as b:
        await _alias(b)
        collection = await b.collection(ALICE, "two replicas")
        path = f"/v1/collections/{collection['id']}"
        await b.upsert(ALICE, collection["id"], [
            {"id": "cat", "text": "a cat sleeps on the sofa"},
            {"id": "tax", "text": "quarterly tax filing deadlines"},
        ])  # fmt: skip
        first = await a.query(ALICE, collection["id"], text="kitten napping", top_k=1)
        assert first.json()[0]["id"] == "cat"

        assert (await b.call(ALICE, "PATCH", path, json={"model": ALIAS})).status_code == 200
        assert (await _settled(b, collection["id"]))["model"] == ALIAS
        before = len(a.inference.record.texts(ALIAS))
        switched = await a.query(ALICE, collection["id"], text="kitten napping", top_k=1)
        assert switched.status_code == 200, switched.text
        assert switched.json()[0]["id"] == "cat"
        assert a.inference.record.texts(ALIAS)[before:] == ["kitten napping"]

        assert (await b.call(ALICE, "DELETE", path)).status_code == 204
        gone = await a.query(ALICE, collection["id"], vector=[0.1] * 384)
        assert gone.status_code == 404, gone.text
        assert gone.headers["content-type"] == "application/problem+json"


async def _waiting_for_a_lock(engine: AsyncEngine) -> None:
    """Until a session of this test run's database waits for a lock (a fixed pause may end
    before the waiter got there, and the test would not test the race)."""
    waiting = text(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE NOT l.granted AND a.datname = current_database()"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            if await conn.scalar(waiting):
                return
        await asyncio.sleep(0.02)
    raise AssertionError("nothing waited for a lock within 30 s")


async def test_reading_a_collection_while_it_is_deleted_is_a_404_not_a_500(
    service: Embeddings,
) -> None:
    """GET counts the documents of the table its row names: a delete (or a model switch)
    committing between the two reads must not leave it counting a dropped table."""
    collection = await service.collection(ALICE, "going away")
    path = f"/v1/collections/{collection['id']}"
    table = f'embeddings."doc_{collection["id"].replace("-", "")}_1"'
    engine = service.app.state.engine
    async with engine.connect() as deleter:
        transaction = await deleter.begin()
        await deleter.execute(text(f"DROP TABLE {table}"))
        await deleter.execute(text("DELETE FROM embeddings.collection WHERE id = :id"),
                              {"id": collection["id"]})  # fmt: skip
        reading = asyncio.create_task(service.call(ALICE, "GET", path))
        await _waiting_for_a_lock(engine)  # the GET, on the deleter's
        await transaction.commit()
        response = await reading
    assert response.status_code == 404, response.text
