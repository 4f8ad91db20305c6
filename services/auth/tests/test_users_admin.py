"""Administering users: GET /auth/users (paginated), GET and PATCH /auth/users/{id}."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from auth.models import User
from common.principals import API_KEY_PREFIX, secret_hash

from .conftest import AuthClient, LoggedIn

PROBLEM_JSON = "application/problem+json"


async def test_every_user_is_listed_exactly_once_across_pages(
    auth: AuthClient, admin: LoggedIn
) -> None:
    for n in range(6):
        assert (await auth.register(f"user{n}@example.com")).status_code == 201

    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await auth.as_user(admin, "GET", "/auth/users", params=params)
        assert response.status_code == 200
        page = response.json()
        assert len(page["data"]) <= 2
        seen += [user["id"] for user in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 20

    async with auth.db() as db:
        ids = {str(i) for i in (await db.execute(select(User.id))).scalars()}
        count = (await db.execute(select(func.count()).select_from(User))).scalar_one()
    assert len(seen) == len(set(seen)) == count >= 7
    assert set(seen) == ids
    assert pages == -(-count // 2)


async def test_a_page_shows_each_users_roles_and_never_a_password_hash(
    auth: AuthClient, admin: LoggedIn
) -> None:
    await auth.register("alice@example.com")

    response = await auth.as_user(admin, "GET", "/auth/users", params={"limit": 200})

    users = {u["email"]: u for u in response.json()["data"]}
    assert users["admin@example.com"]["roles"] == ["admin"]
    assert users["alice@example.com"]["roles"] == ["member"]
    assert users["alice@example.com"]["disabled"] is False
    assert "argon2" not in response.text


@pytest.mark.parametrize("cursor", ["garbage!", "W10", "eyJhIjogMX0"])
async def test_a_forged_cursor_is_refused(auth: AuthClient, admin: LoggedIn, cursor: str) -> None:
    response = await auth.as_user(admin, "GET", "/auth/users", params={"cursor": cursor})

    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON


async def test_members_cannot_administer_users(auth: AuthClient, admin: LoggedIn) -> None:
    member = await auth.signup("alice@example.com")

    for method, path, body in [
        ("GET", "/auth/users", None),
        ("GET", f"/auth/users/{admin.user_id}", None),
        ("PATCH", f"/auth/users/{member.user_id}", {"roles": ["admin"]}),
        ("PATCH", f"/auth/users/{admin.user_id}", {"disabled": True}),
    ]:
        response = await auth.as_user(member, method, path, json=body)
        assert response.status_code == 403, (method, path)
        assert response.headers["content-type"] == PROBLEM_JSON
        assert response.json()["type"] == "urn:llm-platform:problem:missing-permission"

    me = await auth.as_user(member, "GET", "/auth/me")
    assert me.json()["roles"] == ["member"]
    assert (await auth.login("admin@example.com")).status_code == 200


async def test_a_role_change_ends_the_users_sessions_and_cached_keys(
    auth: AuthClient, admin: LoggedIn
) -> None:
    alice = await auth.signup("alice@example.com")
    phone = await auth.logged_in("alice@example.com")
    key = await auth.create_key(alice)
    assert (await auth.resolve(key["key"])).status_code == 200
    bob = await auth.signup("bob@example.com")
    bobs_key = await auth.create_key(bob)
    assert (await auth.resolve(bobs_key["key"])).status_code == 200

    response = await auth.as_user(
        admin, "PATCH", f"/auth/users/{alice.user_id}", json={"roles": ["viewer"]}
    )

    assert response.status_code == 200
    assert response.json()["roles"] == ["viewer"]
    for session in (alice, phone):
        assert await auth.store.touch(session.sid, now=auth.clock()) is None
    assert not await auth.redis.exists(API_KEY_PREFIX + secret_hash(key["key"]))
    # Nobody else is touched.
    assert await auth.store.touch(bob.sid, now=auth.clock()) is not None
    assert await auth.redis.exists(API_KEY_PREFIX + secret_hash(bobs_key["key"]))
    # Logged in again, Alice has the viewer's permissions only.
    again = await auth.logged_in("alice@example.com")
    assert again.user["roles"] == ["viewer"]
    assert "inference:invoke" not in again.user["permissions"]
    assert "inference:invoke" not in (await auth.identity_of(again)).permissions


async def test_renaming_a_user_keeps_their_sessions(auth: AuthClient, admin: LoggedIn) -> None:
    alice = await auth.signup("alice@example.com")

    response = await auth.as_user(
        admin, "PATCH", f"/auth/users/{alice.user_id}", json={"name": "Alice A."}
    )

    assert response.status_code == 200
    assert response.json()["name"] == "Alice A."
    assert await auth.store.touch(alice.sid, now=auth.clock()) is not None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"disabled": True}, id="disable"),
        pytest.param({"roles": ["member"]}, id="drop-admin"),
        pytest.param({"roles": ["member"], "disabled": False}, id="drop-admin-with-other-fields"),
    ],
)
async def test_an_admin_cannot_lock_themselves_out(
    auth: AuthClient, admin: LoggedIn, body: dict[str, Any]
) -> None:
    response = await auth.as_user(admin, "PATCH", f"/auth/users/{admin.user_id}", json=body)

    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["type"] == "urn:llm-platform:problem:self-lockout"
    me = await auth.as_user(admin, "GET", "/auth/me")
    assert me.json()["roles"] == ["admin"]
    assert "users:manage" in me.json()["permissions"]


async def test_disabling_blocks_login_and_enabling_restores_it(
    auth: AuthClient, admin: LoggedIn
) -> None:
    alice = await auth.signup("alice@example.com")

    disabled = await auth.as_user(
        admin, "PATCH", f"/auth/users/{alice.user_id}", json={"disabled": True}
    )
    assert disabled.status_code == 200
    assert disabled.json()["disabled"] is True
    assert (await auth.login("alice@example.com")).status_code == 403

    enabled = await auth.as_user(
        admin, "PATCH", f"/auth/users/{alice.user_id}", json={"disabled": False}
    )
    assert enabled.json()["disabled"] is False
    assert (await auth.login("alice@example.com")).status_code == 200


@pytest.mark.parametrize("user_id", [str(uuid.uuid4()), "not-a-uuid", "1"])
async def test_an_unknown_or_malformed_user_id_is_not_found(
    auth: AuthClient, admin: LoggedIn, user_id: str
) -> None:
    got = await auth.as_user(admin, "GET", f"/auth/users/{user_id}")
    patched = await auth.as_user(admin, "PATCH", f"/auth/users/{user_id}", json={"disabled": True})

    for response in (got, patched):
        assert response.status_code == 404
        assert response.headers["content-type"] == PROBLEM_JSON
        assert response.json()["type"] == "urn:llm-platform:problem:user-not-found"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"roles": ["superuser"]}, id="unknown-role"),
        pytest.param({"roles": []}, id="no-role"),
        pytest.param({"email": "new@example.com"}, id="unknown-field"),
    ],
)
async def test_an_invalid_update_is_refused(
    auth: AuthClient, admin: LoggedIn, body: dict[str, Any]
) -> None:
    alice = await auth.signup("alice@example.com")

    response = await auth.as_user(admin, "PATCH", f"/auth/users/{alice.user_id}", json=body)

    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    assert await auth.store.touch(alice.sid, now=auth.clock()) is not None


async def test_an_admin_can_read_one_user(auth: AuthClient, admin: LoggedIn) -> None:
    alice = await auth.signup("alice@example.com")

    response = await auth.as_user(admin, "GET", f"/auth/users/{alice.user_id}")

    assert response.status_code == 200
    assert response.json()["email"] == "alice@example.com"
    assert response.json()["roles"] == ["member"]
