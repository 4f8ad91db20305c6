"""Upserts: ids, idempotence counted at the real inference service, vectors, bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import Embeddings, person

ALICE = person(201)


def vector(seed: float, dimension: int = 384) -> list[float]:
    return [seed + i / 1000 for i in range(dimension)]


async def test_the_same_text_twice_is_embedded_once(service: Embeddings) -> None:
    collection = await service.collection(ALICE, "idempotent")
    documents = [{"id": "a", "text": "an unrepeatable sentence 7f3a", "metadata": {"n": 1}}]
    before = len(service.inference.record.texts())

    first = await service.upsert(ALICE, collection["id"], documents)
    second = await service.upsert(ALICE, collection["id"], documents)
    relabelled = await service.upsert(
        ALICE, collection["id"], [{**documents[0], "metadata": {"n": 2}}]
    )

    assert service.inference.record.texts()[before:] == ["an unrepeatable sentence 7f3a"]
    assert first == {"documents": [{"id": "a", "status": "created"}], "embedded": 1}
    assert second == {"documents": [{"id": "a", "status": "unchanged"}], "embedded": 0}
    assert relabelled == {"documents": [{"id": "a", "status": "updated"}], "embedded": 0}
    stored = await service.call(ALICE, "GET", f"/v1/collections/{collection['id']}/documents/a")
    assert stored.json()["metadata"] == {"n": 2}


async def test_ids_are_kept_or_generated_and_texts_batched(service: Embeddings) -> None:
    collection = await service.collection(ALICE, "ids")
    calls = len(service.inference.record.calls)
    texts = [f"sentence number {i}" for i in range(300)]

    result = await service.upsert(
        ALICE, collection["id"], [{"id": "kept", "text": "kept id"}] + [{"text": t} for t in texts]
    )

    assert result["documents"][0] == {"id": "kept", "status": "created"}
    assert len({d["id"] for d in result["documents"]}) == 301
    assert result["embedded"] == 301
    assert [len(c["input"]) for c in service.inference.record.calls[calls:]] == [256, 45]
    got = await service.call(ALICE, "GET", f"/v1/collections/{collection['id']}")
    assert got.json()["document_count"] == 301


async def test_changed_text_is_embedded_again(service: Embeddings) -> None:
    collection = await service.collection(ALICE, "changed")
    await service.upsert(ALICE, collection["id"], [{"id": "a", "text": "old words"}])

    result = await service.upsert(ALICE, collection["id"], [{"id": "a", "text": "new words"}])

    assert result == {"documents": [{"id": "a", "status": "updated"}], "embedded": 1}
    assert service.inference.record.texts()[-1] == "new words"


async def test_precomputed_vectors_are_stored_and_returned(service: Embeddings) -> None:
    collection = await service.collection(ALICE, "vectors")
    calls = len(service.inference.record.calls)

    await service.upsert(
        ALICE, collection["id"], [{"id": "v", "vector": vector(0.5), "metadata": {"k": "x"}}]
    )
    got = await service.call(
        ALICE,
        "GET",
        f"/v1/collections/{collection['id']}/documents/v",
        params={"include_vector": "true"},
    )

    assert len(service.inference.record.calls) == calls  # nothing to embed
    assert got.json()["vector"] == pytest.approx(vector(0.5), rel=1e-6)
    assert got.json()["text"] is None


async def test_dimension_mismatch_is_422_and_writes_nothing(service: Embeddings) -> None:
    collection = await service.collection(ALICE, "mismatch")

    response = await service.call(
        ALICE, "POST", f"/v1/collections/{collection['id']}/documents",
        json={"documents": [{"id": "ok", "text": "fine"}, {"id": "bad", "vector": [0.1, 0.2]}]},
    )  # fmt: skip

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("dimension-mismatch")
    assert "documents[1].vector has 2 dimensions" in response.json()["detail"]
    got = await service.call(ALICE, "GET", f"/v1/collections/{collection['id']}")
    assert got.json()["document_count"] == 0


async def test_delete_and_get_documents(service: Embeddings) -> None:
    collection = await service.collection(ALICE, "crud")
    await service.upsert(ALICE, collection["id"], [{"id": "a b%c", "text": "hello"}])
    path = f"/v1/collections/{collection['id']}/documents/a%20b%25c"

    assert (await service.call(ALICE, "GET", path)).json()["text"] == "hello"
    assert (await service.call(ALICE, "DELETE", path)).status_code == 204
    assert (await service.call(ALICE, "GET", path)).status_code == 404
    assert (await service.call(ALICE, "DELETE", path)).status_code == 404


BAD_UPSERTS: list[tuple[str, Any]] = [
    ("no documents", {"documents": []}),
    ("1,001 documents", {"documents": [{"text": "x"}] * 1001}),
    ("neither text nor vector", {"documents": [{"id": "a"}]}),
    ("both text and vector", {"documents": [{"text": "x", "vector": vector(0.1)}]}),
    ("duplicate ids", {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}),
    ("id too long", {"documents": [{"id": "x" * 257, "text": "x"}]}),
    ("id with a slash", {"documents": [{"id": "a/b", "text": "x"}]}),
    ("empty text", {"documents": [{"text": ""}]}),
    ("NUL in text", {"documents": [{"text": "a\u0000b"}]}),
    ("lone surrogate", '{"documents": [{"text": "a\\ud800b"}]}'),
    ("NaN in a vector", '{"documents": [{"vector": [NaN' + ", 0.1" * 383 + "]}]}"),
    ("Infinity in metadata", '{"documents": [{"text": "x", "metadata": {"n": Infinity}}]}'),
    ("float32 overflow", {"documents": [{"vector": [1e39] + [0.1] * 383}]}),
    ("huge metadata", {"documents": [{"text": "x", "metadata": {"k": "v" * 20_000}}]}),
    ("metadata not an object", {"documents": [{"text": "x", "metadata": [1, 2]}]}),
    ("unknown field", {"documents": [{"text": "x", "colour": "red"}]}),
    ("zero vector under cosine", {"documents": [{"vector": [0.0] * 384}]}),
    ("documents not a list", {"documents": {"text": "x"}}),
]


@pytest.mark.parametrize(("case", "body"), BAD_UPSERTS, ids=[c for c, _ in BAD_UPSERTS])
async def test_bad_upserts_are_422_and_change_nothing(
    service: Embeddings, case: str, body: Any
) -> None:
    collection = await service.collection(ALICE, f"bad {case}")
    await service.upsert(ALICE, collection["id"], [{"id": "a", "text": "original"}])
    content = body if isinstance(body, str) else json.dumps(body)

    response = await service.call(
        ALICE, "POST", f"/v1/collections/{collection['id']}/documents", content=content,
        headers={"content-type": "application/json"},
    )  # fmt: skip

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    got = await service.call(ALICE, "GET", f"/v1/collections/{collection['id']}")
    assert got.json()["document_count"] == 1
    doc = await service.call(ALICE, "GET", f"/v1/collections/{collection['id']}/documents/a")
    assert doc.json()["text"] == "original"
