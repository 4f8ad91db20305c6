"""Issue 5's acceptance through the gateway of `make run`, as a new user would: a collection
on the local model, a few hundred documents with metadata, a filtered text query; another
user gets 404; a malformed filter is a 422 problem+json and changes nothing."""

from __future__ import annotations

import httpx

from .conftest import Login, RunningPlatform

PASSWORD = "embeddings-acceptance-Passphrase-5"
MODEL = "local/all-MiniLM-L6-v2"
TOPICS = {
    "pets": ["cats purr when they are content", "a puppy chewed my slippers",
             "the hamster runs on its wheel all night", "my parrot repeats every word"],
    "finance": ["the stock market fell sharply today", "interest rates rose by a quarter point",
                "the company reported record quarterly profits", "bond yields are climbing"],
    "cooking": ["knead the dough for ten minutes", "roast the vegetables with olive oil",
                "whisk the eggs and sugar until pale", "simmer the soup on a low heat"],
}  # fmt: skip


def register(platform: RunningPlatform, login: Login, email: str) -> httpx.Client:
    created = httpx.post(f"{platform.gateway}/auth/register",
                         json={"email": email, "password": PASSWORD})  # fmt: skip
    assert created.status_code in (201, 409), created.text
    return login(email, PASSWORD)


def test_a_new_user_builds_and_searches_a_collection(
    platform: RunningPlatform, login: Login
) -> None:
    alice = register(platform, login, "alice-embeddings@example.com")
    bob = register(platform, login, "bob-embeddings@example.com")

    # The first use of the local model may still wait for it to load.
    created = alice.post("/v1/collections", json={"name": "notes", "model": MODEL}, timeout=120)
    assert created.status_code == 201, created.text
    collection = created.json()
    assert collection["dimension"] == 384
    path = f"/v1/collections/{collection['id']}"

    documents = [
        {"id": f"{topic}-{i}-{j}", "text": f"{sentence} (note {i})",
         "metadata": {"topic": topic, "year": 2018 + (i % 8)}}
        for topic, sentences in TOPICS.items() for j, sentence in enumerate(sentences)
        for i in range(25)
    ]  # fmt: skip
    assert len(documents) == 300
    upserted = alice.post(f"{path}/documents", json={"documents": documents}, timeout=300)
    assert upserted.status_code == 200, upserted.text
    assert {d["status"] for d in upserted.json()["documents"]} == {"created"}

    found = alice.post(f"{path}/query", json={
        "text": "which animals make good companions?", "top_k": 5,
        "filter": {"topic": {"$in": ["pets", "finance"]}, "year": {"$gte": 2020}},
    }, timeout=60)  # fmt: skip
    assert found.status_code == 200, found.text
    matches = found.json()
    assert len(matches) == 5
    assert all(m["metadata"]["topic"] == "pets" and m["metadata"]["year"] >= 2020 for m in matches)

    for method, suffix in [("GET", ""), ("DELETE", ""), ("GET", "/documents/pets-0-0")]:
        assert bob.request(method, path + suffix).status_code == 404
    assert bob.post(f"{path}/query", json={"text": "cats"}).status_code == 404

    bad = alice.post(f"{path}/query", json={"text": "cats", "filter": {"year": {"$regex": "20"}}})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    assert "$regex" in bad.json()["detail"]
    assert bad.json()["trace_id"]
    after = alice.get(path).json()
    assert after["document_count"] == 300
    assert alice.get(f"{path}/documents/pets-0-0").json()["metadata"] == {"topic": "pets",
                                                                          "year": 2018}  # fmt: skip
