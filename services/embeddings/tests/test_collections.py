"""Collections: the dimension learned from the real model, names, ownership, deletion."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import text

from .conftest import MODEL, Embeddings, person

ALICE, BOB = person(101), person(102)


async def test_a_collection_learns_its_dimension_from_the_model(service: Embeddings) -> None:
    created = await service.collection(ALICE, "papers", description="reading list")

    assert (created["model"], created["dimension"], created["metric"]) == (MODEL, 384, "cosine")
    assert created["index"]["status"] == "none"
    assert created["lineage"][0]["model"] == MODEL
    assert service.inference.record.calls[-1]["input"] == ["dimension probe"]


async def test_names_are_unique_per_owner(service: Embeddings) -> None:
    await service.collection(ALICE, "dupe")
    again = await service.call(
        ALICE, "POST", "/v1/collections", json={"name": "dupe", "model": MODEL}
    )
    others = await service.call(
        BOB, "POST", "/v1/collections", json={"name": "dupe", "model": MODEL}
    )

    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert others.status_code == 201


async def test_an_unknown_model_is_a_422_and_creates_nothing(service: Embeddings) -> None:
    body = {"name": "nope", "model": "local/no-such-model"}
    response = await service.call(ALICE, "POST", "/v1/collections", json=body)
    listed = await service.call(ALICE, "GET", "/v1/collections")

    assert response.status_code == 422, response.text
    assert response.json()["type"].endswith("model-unusable")
    assert "nope" not in [c["name"] for c in listed.json()]


async def test_others_get_404_and_admins_see_all(service: Embeddings) -> None:
    mine = await service.collection(ALICE, "private")
    path = f"/v1/collections/{mine['id']}"
    admin = person(103, "admin")

    for method, suffix, body in [
        ("GET", "", None), ("PATCH", "", {"name": "stolen"}), ("DELETE", "", None),
        ("POST", "/documents", {"documents": [{"text": "hi"}]}),
        ("POST", "/query", {"text": "hi"}), ("GET", "/documents/x", None),
        ("DELETE", "/documents/x", None),
    ]:  # fmt: skip
        response = await service.call(BOB, method, path + suffix, json=body)
        assert response.status_code == 404, (method, suffix, response.text)
    assert mine["id"] not in [
        c["id"] for c in (await service.call(BOB, "GET", "/v1/collections")).json()
    ]
    assert mine["id"] in [
        c["id"] for c in (await service.call(admin, "GET", "/v1/collections")).json()
    ]
    assert (await service.call(admin, "GET", path)).status_code == 200
    assert (await service.call(ALICE, "GET", path)).json()["name"] == "private"


async def test_an_admins_key_scoped_without_read_all_sees_only_its_own(
    service: Embeddings,
) -> None:
    """What a service sees is the credential's effective permissions: an admin's API key
    scoped to reading collections is not an admin here, whatever its owner's role."""
    mine = await service.collection(ALICE, "not for scoped keys")
    path = f"/v1/collections/{mine['id']}"
    admin = person(104, "admin")
    key = replace(admin, kind="api_key", sid=None, kid="k1",
                  permissions=("embeddings:read", "embeddings:write"))  # fmt: skip

    listed = await service.call(key, "GET", "/v1/collections")
    read = await service.call(key, "GET", path)

    assert listed.status_code == 200
    assert mine["id"] not in [c["id"] for c in listed.json()]
    assert read.status_code == 404
    assert read.json()["type"].endswith("collection-not-found")


async def test_not_a_uuid_is_404(service: Embeddings) -> None:
    response = await service.call(ALICE, "GET", "/v1/collections/not-a-uuid")

    assert response.status_code == 404


async def test_permissions_are_checked(service: Embeddings) -> None:
    viewer = person(104, "viewer")
    response = await service.call(
        viewer, "POST", "/v1/collections", json={"name": "x", "model": MODEL}
    )

    assert response.status_code == 403


async def test_delete_removes_documents_and_index(service: Embeddings) -> None:
    created = await service.collection(ALICE, "doomed")
    await service.upsert(
        ALICE, created["id"], [{"id": "a", "text": "a cat"}, {"id": "b", "text": "a dog"}]
    )
    table = f"doc_{created['id'].replace('-', '')}_1"

    response = await service.call(ALICE, "DELETE", f"/v1/collections/{created['id']}")

    assert response.status_code == 204
    assert (await service.call(ALICE, "GET", f"/v1/collections/{created['id']}")).status_code == 404
    async with service.app.state.engine.connect() as conn:
        left = await conn.execute(text("SELECT count(*) FROM pg_class WHERE relname LIKE :t"),
                                  {"t": f"{table}%"})  # fmt: skip
        assert left.scalar_one() == 0  # neither the table nor its index
    # The name is free again.
    assert (await service.collection(ALICE, "doomed"))["id"] != created["id"]
