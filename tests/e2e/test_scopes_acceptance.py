"""Issue 16's scope acceptance, through the gateway of `make run`: a key passes on no more
than it holds, sessions need a session, services judge by the key's permissions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from .conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Login, RunningPlatform

PASSWORD = "a-long-and-unusual-passphrase-16"
PROBLEM_JSON = "application/problem+json"
MODEL = "local/all-MiniLM-L6-v2"


def _member(platform: RunningPlatform, login: Login, email: str) -> httpx.Client:
    registered = httpx.post(
        f"{platform.gateway}/auth/register", json={"email": email, "password": PASSWORD}
    )
    assert registered.status_code == 201, registered.text
    return login(email, PASSWORD)


def _with_key(platform: RunningPlatform, key: str) -> httpx.Client:
    return httpx.Client(base_url=platform.gateway, headers={"Authorization": f"Bearer {key}"})


def test_a_key_scoped_to_manage_keys_cannot_make_a_wider_or_longer_lived_key(
    platform: RunningPlatform, login: Login
) -> None:
    browser = _member(platform, login, "scoped-keys@example.com")
    expires = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    created = browser.post(
        "/auth/api-keys",
        json={
            "name": "key maker",
            "scopes": ["api_keys:manage"],
            "expires_at": expires.isoformat(),
        },
    )
    assert created.status_code == 201, created.text
    scoped = {"name": "made", "scopes": ["api_keys:manage"]}
    later = (expires + timedelta(hours=1)).isoformat()

    with _with_key(platform, created.json()["key"]) as key:
        refused = {
            "unscoped": key.post("/auth/api-keys", json={"name": "made"}),
            "more permissions": key.post(
                "/auth/api-keys",
                json={**scoped, "scopes": ["api_keys:manage", "inference:invoke"]},
            ),
            "never expiring": key.post("/auth/api-keys", json=scoped),
            "expiring later": key.post("/auth/api-keys", json={**scoped, "expires_at": later}),
        }
        allowed = key.post("/auth/api-keys", json={**scoped, "expires_at": expires.isoformat()})
        sessions = key.get("/auth/sessions")

    for what, response in refused.items():
        assert response.status_code == 422, (what, response.text)
        assert response.headers["content-type"] == PROBLEM_JSON, what
    assert refused["unscoped"].json()["permitted"] == ["api_keys:manage"]
    assert refused["more permissions"].json()["not_permitted"] == ["inference:invoke"]
    for what in ("never expiring", "expiring later"):
        assert refused[what].json()["type"].endswith(":invalid-expiry")
        assert datetime.fromisoformat(refused[what].json()["latest"]) == expires
    assert allowed.status_code == 201, allowed.text
    assert datetime.fromisoformat(allowed.json()["expires_at"]) == expires
    keys = browser.get("/auth/api-keys").json()
    assert sorted(k["name"] for k in keys) == ["key maker", "made"]
    assert all(k["scopes"] == ["api_keys:manage"] for k in keys)
    # Nor does any key see or end the owner's sessions.
    assert sessions.status_code == 403
    assert sessions.json()["type"].endswith(":session-required")
    assert browser.get("/auth/sessions").status_code == 200


def test_an_admins_key_scoped_to_reading_collections_is_no_admin_there(
    platform: RunningPlatform, login: Login
) -> None:
    member = _member(platform, login, "collector@example.com")
    body = {"name": "private notes", "model": MODEL}
    # The first embedding loads the local model: longer than a client's default 5 s.
    collection = member.post("/v1/collections", json=body, timeout=120)
    assert collection.status_code == 201, collection.text  # embeddings asked inference: signed
    admin = login(ADMIN_EMAIL, ADMIN_PASSWORD)
    created = admin.post("/auth/api-keys", json={"name": "reader", "scopes": ["embeddings:read"]})
    assert created.status_code == 201, created.text
    path = f"/v1/collections/{collection.json()['id']}"

    with _with_key(platform, created.json()["key"]) as key:
        listed = key.get("/v1/collections")
        read = key.get(path)

    assert listed.status_code == 200
    assert collection.json()["id"] not in [c["id"] for c in listed.json()]
    assert read.status_code == 404
    # The admin's session holds embeddings:read_all, and sees it.
    assert collection.json()["id"] in [c["id"] for c in admin.get("/v1/collections").json()]
    assert admin.get(path).status_code == 200
