"""Search: real MiniLM rankings, scores per metric, every filter operator, bad queries."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.requests import Request

from common.identity import HEADER, Identity, sign
from embeddings.api import fast_query
from embeddings.errors import CollectionNotFound

from .conftest import Embeddings, MakeEmbeddings, person

ALICE, BOB = person(301), person(302)

CORPUS = {
    "cat": "My cat loves to sleep curled up on the warm windowsill.",
    "finance": "The central bank raised interest rates to curb inflation.",
    "football": "The striker scored twice in the second half of the match.",
    "cooking": "Simmer the tomatoes with garlic and basil for twenty minutes.",
    "space": "The telescope captured images of a distant spiral galaxy.",
}
CASES = [
    ("Which pets like napping in the sun?", "cat", "finance"),
    ("monetary policy and the cost of borrowing", "finance", "cat"),
    ("a goal in the soccer game", "football", "cooking"),
    ("a recipe for pasta sauce", "cooking", "space"),
    ("astronomy and stars", "space", "football"),
]


async def test_text_queries_rank_the_relevant_document_first(service: Embeddings) -> None:
    collection = await service.collection(ALICE, "semantic")
    await service.upsert(ALICE, collection["id"], [{"id": k, "text": v} for k, v in CORPUS.items()])

    for question, best, unrelated in CASES:
        response = await service.query(ALICE, collection["id"], text=question, top_k=5)
        ranked = [match["id"] for match in response.json()]
        assert ranked[0] == best, (question, ranked)
        assert ranked.index(best) < ranked.index(unrelated)
        scores = [match["score"] for match in response.json()]
        assert scores == sorted(scores, reverse=True)


async def test_a_viewer_queries_with_vectors_but_not_text(service: Embeddings) -> None:
    collection = await service.collection(ALICE, "shared with nobody")
    # A viewer can only read their own collections: give the viewer the same user id.
    viewer = person(301, "viewer")
    await service.upsert(ALICE, collection["id"], [{"id": "a", "vector": unit(0)}])

    by_text = await service.query(viewer, collection["id"], text="anything")
    by_vector = await service.query(viewer, collection["id"], vector=unit(0))

    assert by_text.status_code == 403
    assert "inference:invoke" in by_text.json()["detail"]
    assert [m["id"] for m in by_vector.json()] == ["a"]


def unit(axis: int, dimension: int = 384, scale: float = 1.0) -> list[float]:
    return [scale if i == axis else 0.0 for i in range(dimension)]


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        # the query is 2 * e0; the documents e0, e1 and 3 * e0
        ("cosine", {"same": 1.0, "three": 1.0, "other": 0.0}),
        ("inner_product", {"three": 6.0, "same": 2.0, "other": 0.0}),
        ("l2", {"same": -1.0, "three": -1.0, "other": -math.sqrt(5)}),
    ],
)
async def test_scores_per_metric(
    service: Embeddings, metric: str, expected: dict[str, float]
) -> None:
    collection = await service.collection(ALICE, f"metric {metric}", metric=metric)
    await service.upsert(ALICE, collection["id"], [
        {"id": "same", "vector": unit(0)}, {"id": "other", "vector": unit(1)},
        {"id": "three", "vector": unit(0, scale=3.0)},
    ])  # fmt: skip

    response = await service.query(ALICE, collection["id"], vector=unit(0, scale=2.0), top_k=3,
                                   include_vectors=True)  # fmt: skip

    matches = response.json()
    assert {m["id"]: pytest.approx(m["score"], abs=1e-5) for m in matches} == expected
    assert [m["score"] for m in matches] == sorted((m["score"] for m in matches), reverse=True)
    assert matches[-1]["id"] == "other"
    assert matches[0]["vector"] is not None


async def test_matches_carry_each_document_as_stored(service: Embeddings) -> None:
    """What a query returns of a document (text, metadata, vector) is what reading the
    document returns, filtered or not, and nothing else."""
    rng = random.Random(3)
    collection = await service.collection(ALICE, "as stored")
    documents = [
        {"id": f"doc-{i}", "vector": [rng.uniform(-1, 1) for _ in range(384)],
         "metadata": {"n": i, "name": "café ☕ \"quoted\"", "nested": {"list": [1, 2.5, None]},
                      "big": 2**53, "kind": "even" if i % 2 == 0 else "odd"}}
        for i in range(6)
    ]  # fmt: skip
    documents[0]["vector"] = None
    documents[0]["text"] = "a cat naps on the warm windowsill"
    await service.upsert(ALICE, collection["id"], documents)
    stored = {}
    for document in documents:
        path = f"/v1/collections/{collection['id']}/documents/{document['id']}"
        got = await service.call(ALICE, "GET", path, params={"include_vector": "true"})
        assert got.status_code == 200, got.text
        stored[document["id"]] = got.json()

    for extra in ({}, {"filter": {"kind": "odd"}}):
        for include_vectors in (True, False):
            response = await service.query(
                ALICE, collection["id"], vector=documents[3]["vector"], top_k=10,
                include_vectors=include_vectors, **extra,
            )  # fmt: skip
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/json"
            matches = response.json()
            assert len(matches) == (3 if extra else 6)
            assert matches[0]["id"] == "doc-3"
            assert matches[0]["score"] == pytest.approx(1.0, abs=1e-6)
            for match in matches:
                assert set(match) == {"id", "score", "text", "metadata", "vector"}
                document = stored[match["id"]]
                assert match["text"] == document["text"]
                assert match["metadata"] == document["metadata"]
                assert match["vector"] == (document["vector"] if include_vectors else None)


PEOPLE = [
    ("a", {"topic": "pets", "year": 2019, "tags": "x"}),
    ("b", {"topic": "pets", "year": 2021}),
    ("c", {"topic": "finance", "year": 2022.5}),
    ("d", {"topic": "finance", "year": "2023"}),  # a string, not a number
    ("e", {"topic": "sports", "year": 2024, "flag": True}),
    ("f", {}),
]
FILTERS: list[tuple[Any, set[str]]] = [
    ({"topic": "pets"}, {"a", "b"}),
    ({"topic": {"$eq": "finance"}}, {"c", "d"}),
    ({"topic": {"$ne": "pets"}}, {"c", "d", "e", "f"}),  # missing fields match $ne
    ({"topic": {"$in": ["pets", "sports"]}}, {"a", "b", "e"}),
    ({"topic": {"$nin": ["pets", "sports"]}}, {"c", "d", "f"}),
    ({"year": {"$gt": 2021}}, {"c", "e"}),
    ({"year": {"$gte": 2021}}, {"b", "c", "e"}),
    ({"year": {"$lt": 2021}}, {"a"}),
    ({"year": {"$lte": 2021}}, {"a", "b"}),
    ({"year": {"$gte": 2020, "$lt": 2023}}, {"b", "c"}),
    ({"year": 2022.5}, {"c"}),
    ({"year": 2021.0}, {"b"}),  # numbers compare as numbers
    ({"year": "2023"}, {"d"}),
    ({"flag": True}, {"e"}),
    ({"flag": 1}, set()),  # a boolean is not a number
    ({"$and": [{"topic": "pets"}, {"year": {"$gt": 2020}}]}, {"b"}),
    ({"$or": [{"topic": "sports"}, {"year": {"$lt": 2020}}]}, {"a", "e"}),
    (
        {"$or": [{"$and": [{"topic": "pets"}, {"tags": "x"}]}, {"topic": "finance"}]},
        {"a", "c", "d"},
    ),
    ({"topic": "pets", "year": 2021}, {"b"}),
]


async def test_every_filter_operator(service: Embeddings) -> None:
    collection = await service.collection(ALICE, "filters")
    await service.upsert(ALICE, collection["id"], [
        {"id": doc_id, "vector": unit(i), "metadata": metadata}
        for i, (doc_id, metadata) in enumerate(PEOPLE)
    ])  # fmt: skip

    for query_filter, expected in FILTERS:
        response = await service.query(ALICE, collection["id"], vector=unit(0), top_k=10,
                                       filter=query_filter)  # fmt: skip
        assert response.status_code == 200, (query_filter, response.text)
        assert {m["id"] for m in response.json()} == expected, query_filter


BAD_FILTERS: list[tuple[Any, str]] = [
    ({"topic": {"$regex": "p.*"}}, "unknown operator '$regex'"),
    ({"$not": {"topic": "pets"}}, "unknown operator '$not'"),
    ("topic = 'pets'", "a filter is an object, not a string"),
    ([{"topic": "pets"}], "a filter is an object, not a list"),
    ({"topic": {"$in": "pets"}}, "filter.topic.$in: expected a non-empty list"),
    ({"topic": {"$in": []}}, "filter.topic.$in: expected a non-empty list"),
    ({"year": {"$gt": "2020"}}, "filter.year.$gt: expected a number, not a string"),
    ({"year": {"$gt": True}}, "expected a number, not a boolean"),
    ({"$and": []}, "filter.$and: expected a non-empty list"),
    ({"$or": {"topic": "pets"}}, "filter.$or: expected a non-empty list"),
    ({"topic": {}}, "an empty operator object"),
    ({}, "an empty filter"),
    ({"topic": None}, "expected a string, number or boolean, not null"),
    ({"topic": ["pets"]}, "not a list"),
    ({"topic": {"$eq": {"nested": 1}}}, "not an object"),
    ({"a\u0000b": 1}, "NUL"),
    ({"x": {"$in": list(range(101))}}, "at most 100 values"),
]


@pytest.mark.parametrize(("query_filter", "message"), BAD_FILTERS, ids=[m for _, m in BAD_FILTERS])
async def test_malformed_filters_are_422_naming_the_problem(
    service: Embeddings, query_filter: Any, message: str
) -> None:
    collection = await service.collection(BOB, f"bad filter {query_filter!r}"[:200])
    calls = len(service.inference.record.calls)

    response = await service.query(BOB, collection["id"], text="pets", filter=query_filter)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("invalid-filter")
    assert message in response.json()["detail"]
    assert len(service.inference.record.calls) == calls  # refused before embedding anything


BAD_QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("top_k 0", {"vector": unit(0), "top_k": 0}),
    ("top_k 101", {"vector": unit(0), "top_k": 101}),
    ("both", {"vector": unit(0), "text": "x"}),
    ("neither", {"top_k": 3}),
    ("wrong dimension", {"vector": [1.0, 2.0]}),
    ("zero vector", {"vector": [0.0] * 384}),
    ("ef_search 0", {"vector": unit(0), "ef_search": 0}),
]


@pytest.mark.parametrize(("case", "body"), BAD_QUERIES, ids=[c for c, _ in BAD_QUERIES])
async def test_bad_queries_are_422(service: Embeddings, case: str, body: dict[str, Any]) -> None:
    collection = await service.collection(BOB, f"bad query {case}")

    response = await service.query(BOB, collection["id"], **body)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


def _as_user_sees(response: Any) -> tuple[int, str, Any]:
    """Status, content type and body, without what differs per request (trace, request id)."""
    if response.headers["content-type"].startswith("application/problem+json"):
        body = {k: v for k, v in response.json().items() if k not in ("trace_id", "request_id")}
    else:
        body = response.json() if response.content else None
    return response.status_code, response.headers["content-type"], body


async def test_the_fast_query_path_answers_as_the_route_does(
    service: Embeddings, make_embeddings: MakeEmbeddings
) -> None:
    """Queries with a vector are answered below FastAPI's router (common.fastpath) when
    they succeed; every answer, right or wrong, is the same as with that path off."""
    carol = person(303)
    viewer = person(304, "viewer")
    collection = await service.collection(BOB, "fast path", metric="cosine")
    documents = [
        {"id": f"d{i}", "vector": unit(i), "metadata": {"n": i, "tag": ("even", "odd")[i % 2]}}
        for i in range(40)
    ]
    await service.upsert(BOB, collection["id"], documents)
    path = f"/v1/collections/{collection['id']}/query"
    good = {"vector": unit(3), "top_k": 5}
    requests: list[tuple[str, Any, str, dict[str, Any]]] = [
        ("vector", BOB, path, {"json": good}),
        ("filter and vectors", BOB, path, {"json": {
            **good, "filter": {"tag": "odd", "n": {"$gte": 10}}, "include_vectors": True,
            "ef_search": 64}}),
        ("a viewer", viewer, path, {"json": good}),
        ("charset", BOB, path, {"content": json.dumps(good),
                                "headers": {"content-type": "application/json; charset=utf-8"}}),
        ("text", BOB, path, {"json": {"text": "a cat", "top_k": 2}}),
        ("top_k 0", BOB, path, {"json": {**good, "top_k": 0}}),
        ("unknown field", BOB, path, {"json": {**good, "extra": 1}}),
        ("bad filter", BOB, path, {"json": {**good, "filter": {"n": {"$near": 1}}}}),
        ("wrong dimension", BOB, path, {"json": {"vector": [1.0, 2.0]}}),
        ("NaN", BOB, path, {"content": '{"vector": [NaN' + ", 0.0" * 383 + "]}",
                            "headers": {"content-type": "application/json"}}),
        ("malformed JSON", BOB, path, {"content": '{"vector": [1.0,',
                                       "headers": {"content-type": "application/json"}}),
        ("empty body", BOB, path, {"content": b"",
                                   "headers": {"content-type": "application/json"}}),
        ("form body", BOB, path, {"content": "vector=1", "headers": {
            "content-type": "application/x-www-form-urlencoded"}}),
        ("no content type", BOB, path, {"content": json.dumps(good)}),
        ("someone else's", carol, path, {"json": good}),
        ("no such collection", BOB, "/v1/collections/00000000-0000-0000-0000-000000000000/query",
         {"json": good}),
        ("not an id", BOB, "/v1/collections/not-a-uuid/query", {"json": good}),
        ("a service", Identity(sub="service:x", kind="service", iss="x"), path, {"json": good}),
        ("no permission", Identity(sub=BOB.sub, kind="user", iss="gateway", roles=("member",),
                                   permissions=("models:read",)), path, {"json": good}),
    ]  # fmt: skip

    async with make_embeddings(fast_query=False) as plain:
        for case, who, target, kwargs in requests:
            fast = await service.call(who, "POST", target, **kwargs)
            slow = await plain.call(who, "POST", target, **kwargs)
            assert _as_user_sees(fast) == _as_user_sees(slow), case
        unsigned = [await app.post(path, json=good) for app in (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app), base_url="http://t"),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=plain.app), base_url="http://t"),
        )]  # fmt: skip
        assert _as_user_sees(unsigned[0]) == _as_user_sees(unsigned[1])
        assert unsigned[0].status_code == 401

    answered = await service.query(BOB, collection["id"], **good)
    assert answered.status_code == 200
    assert answered.json()[0]["id"] == "d3"


async def test_fast_query_answers_a_vector_query_itself(service: Embeddings) -> None:
    """The handler under the fast path answers a query with a vector (the route is not
    asked), and leaves a text query and a failing one to the route."""
    collection = await service.collection(BOB, "fast handler")
    await service.upsert(BOB, collection["id"], [{"id": f"d{i}", "vector": unit(i)}
                                                 for i in range(5)])  # fmt: skip
    path = f"/v1/collections/{collection['id']}/query"

    async def handle(who: Identity, body: dict[str, Any]) -> Any:
        raw = json.dumps(body).encode()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        signed = sign(who, service.key, method="POST", path=path, audience="embeddings")
        headers = [(b"content-type", b"application/json"),
                   (HEADER.lower().encode(), signed.encode())]  # fmt: skip
        scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "headers": headers, "app": service.app}  # fmt: skip
        return await fast_query(Request(scope, receive), {"id": collection["id"]})

    answered = await handle(BOB, {"vector": unit(2), "top_k": 3})
    assert answered.status_code == 200
    routed = await service.query(BOB, collection["id"], vector=unit(2), top_k=3)
    assert json.loads(answered.body) == routed.json()
    assert json.loads(answered.body)[0]["id"] == "d2"
    assert await handle(BOB, {"text": "a cat"}) is None
    with pytest.raises(CollectionNotFound):
        await handle(person(305), {"vector": unit(2)})


async def test_vector_queries_give_back_their_connection_and_replace_a_lost_one(
    make_embeddings: MakeEmbeddings,
) -> None:
    """Vector queries draw their connection from the service's pool (a single one here):
    each gives it back, and one the server closed is dropped, not drawn again."""
    # The background worker kept off that connection as far as it goes: no index, no polling.
    quiet = {"index_min_rows": 1000, "worker_poll_seconds": 3600.0}
    async with make_embeddings(database_pool_size=1, database_max_overflow=0, **quiet) as service:
        collection = await service.collection(ALICE, "one connection")
        await service.upsert(ALICE, collection["id"], [{"id": "a", "vector": unit(0)}])
        for _ in range(5):  # a query that kept the connection would starve the next
            answered = await service.query(ALICE, collection["id"], vector=unit(0))
            assert answered.status_code == 200
            assert answered.json()[0]["id"] == "a"

        url = service.app.state.settings.database_url.replace("+asyncpg", "", 1)
        admin = await asyncpg.connect(url)
        try:  # the server ends it (a restart, an idle timeout, an administrator)
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'embeddings' AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        lost = await service.query(ALICE, collection["id"], vector=unit(0))
        again = await service.query(ALICE, collection["id"], vector=unit(0))
        held = service.app.state.engine.pool.checkedout()

    assert held == 0

    # The query that met the loss is told to retry (unless the worker met it first).
    assert lost.status_code in (200, 503)
    if lost.status_code == 503:
        assert lost.headers["content-type"] == "application/problem+json"
    assert again.status_code == 200
    assert again.json()[0]["id"] == "a"
