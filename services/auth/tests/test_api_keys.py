"""API keys: created once, stored as a hash, resolved for the gateway, revoked at once."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlmodel import col

from auth import background
from auth.models import ApiKey
from common.identity import Identity
from common.principals import API_KEY_LAST_USED, API_KEY_PREFIX, secret_hash

from .conftest import ANONYMOUS, AuthClient, LoggedIn, MakeApp

PROBLEM_JSON = "application/problem+json"
MEMBER_PERMISSIONS = [
    "api_keys:manage",
    "embeddings:read",
    "embeddings:write",
    "inference:invoke",
    "models:read",
    "providers:manage",
    "telemetry:read_own",
    "telemetry:write",
]
VIEWER_PERMISSIONS = ["api_keys:manage", "embeddings:read", "models:read", "telemetry:read_own"]


async def _row(auth: AuthClient, key_id: str) -> ApiKey:
    async with auth.db() as db:
        result = await db.execute(select(ApiKey).where(col(ApiKey.id) == uuid.UUID(key_id)))
        return result.scalar_one()


async def _cached(auth: AuthClient, key: str) -> bytes | None:
    value: bytes | None = await auth.redis.get(API_KEY_PREFIX + secret_hash(key))
    return value


# ---------------------------------------------------------------- create and list


async def test_a_new_key_is_shown_once_and_stored_only_as_its_hash(auth: AuthClient) -> None:
    who = await auth.signup("alice@example.com")

    response = await auth.as_user(who, "POST", "/auth/api-keys", json={"name": "laptop"})

    assert response.status_code == 201
    created = response.json()
    key = created["key"]
    assert key.startswith("sk-")
    assert len(key) >= 3 + 43  # sk- and 32 random bytes
    assert key.startswith(created["prefix"])
    assert created["name"] == "laptop"
    assert created["scopes"] is None
    row = await _row(auth, created["id"])
    assert row.key_hash == secret_hash(key)
    assert str(row.user_id) == who.user_id
    assert not any(key in str(value) for value in row.model_dump().values())

    listed = await auth.as_user(who, "GET", "/auth/api-keys")
    assert listed.status_code == 200
    assert key not in listed.text
    assert secret_hash(key) not in listed.text
    [item] = listed.json()
    assert "key" not in item
    assert item["id"] == created["id"]
    assert item["prefix"] == created["prefix"]
    assert item["last_used_at"] is None


async def test_i_only_see_my_own_keys(auth: AuthClient) -> None:
    alice = await auth.signup("alice@example.com")
    bob = await auth.signup("bob@example.com")
    mine = await auth.create_key(alice, name="mine")
    await auth.create_key(bob, name="his")

    listed = await auth.as_user(alice, "GET", "/auth/api-keys")

    assert [k["id"] for k in listed.json()] == [mine["id"]]


@pytest.mark.parametrize(
    "scopes",
    [
        pytest.param(["inference:invoke", "users:manage"], id="admin-permission"),
        pytest.param(["no:such-permission"], id="unknown"),
        pytest.param([], id="empty"),
    ],
)
async def test_scopes_beyond_my_permissions_are_refused(
    auth: AuthClient, scopes: list[str]
) -> None:
    who = await auth.signup("alice@example.com")

    response = await auth.as_user(
        who, "POST", "/auth/api-keys", json={"name": "k", "scopes": scopes}
    )

    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["type"] == "urn:llm-platform:problem:invalid-scopes"
    assert (await auth.as_user(who, "GET", "/auth/api-keys")).json() == []


@pytest.mark.parametrize(
    "expires_at",
    [
        pytest.param((datetime.now(UTC) - timedelta(minutes=1)).isoformat(), id="in-the-past"),
        pytest.param(
            (datetime.now(UTC) + timedelta(days=30)).replace(tzinfo=None).isoformat(),
            id="without-a-timezone",
        ),
        pytest.param("next tuesday", id="not-a-date"),
    ],
)
async def test_a_bad_expiry_is_refused(auth: AuthClient, expires_at: str) -> None:
    who = await auth.signup("alice@example.com")

    response = await auth.as_user(
        who, "POST", "/auth/api-keys", json={"name": "k", "expires_at": expires_at}
    )

    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    assert (await auth.as_user(who, "GET", "/auth/api-keys")).json() == []


async def test_a_viewer_key_cannot_be_scoped_to_invoke_models(auth: AuthClient) -> None:
    viewer = await auth.signup("vera@example.com", roles=["viewer"])

    refused = await auth.as_user(
        viewer, "POST", "/auth/api-keys", json={"name": "k", "scopes": ["inference:invoke"]}
    )
    allowed = await auth.as_user(
        viewer, "POST", "/auth/api-keys", json={"name": "k", "scopes": ["models:read"]}
    )

    assert refused.status_code == 422
    assert allowed.status_code == 201


# ---------------------------------------------------------------- keys made with keys


async def test_a_scoped_key_cannot_make_a_key_with_more_permissions(auth: AuthClient) -> None:
    who = await auth.signup("alice@example.com")
    manager = await auth.key_identity(
        (await auth.create_key(who, scopes=["api_keys:manage"]))["key"]
    )

    unscoped = await auth.call("POST", "/auth/api-keys", identity=manager, json={"name": "k"})
    wider = await auth.call(
        "POST", "/auth/api-keys", identity=manager,
        json={"name": "k", "scopes": ["api_keys:manage", "inference:invoke"]},
    )  # fmt: skip
    same = await auth.call(
        "POST", "/auth/api-keys", identity=manager,
        json={"name": "k", "scopes": ["api_keys:manage"]},
    )  # fmt: skip

    assert unscoped.status_code == 422
    assert unscoped.headers["content-type"] == PROBLEM_JSON
    assert unscoped.json()["type"] == "urn:llm-platform:problem:invalid-scopes"
    assert unscoped.json()["permitted"] == ["api_keys:manage"]
    assert wider.status_code == 422
    assert wider.json()["not_permitted"] == ["inference:invoke"]
    assert same.status_code == 201, same.text
    assert same.json()["scopes"] == ["api_keys:manage"]
    listed = (await auth.as_user(who, "GET", "/auth/api-keys")).json()
    assert sorted(k["scopes"] is None for k in listed) == [False, False]


async def test_an_unscoped_key_may_make_an_unscoped_key(auth: AuthClient) -> None:
    who = await auth.signup("alice@example.com")
    key = await auth.key_identity((await auth.create_key(who))["key"])

    response = await auth.call("POST", "/auth/api-keys", identity=key, json={"name": "k"})

    assert response.status_code == 201, response.text
    assert response.json()["scopes"] is None


async def test_a_key_cannot_make_a_key_that_outlives_it(auth: AuthClient) -> None:
    who = await auth.signup("alice@example.com")
    expires = datetime.fromtimestamp(int(auth.clock()) + 3600, UTC)
    manager = await auth.key_identity(
        (await auth.create_key(who, scopes=["api_keys:manage"], expires_at=expires.isoformat()))[
            "key"
        ]
    )
    body = {"name": "k", "scopes": ["api_keys:manage"]}

    forever = await auth.call("POST", "/auth/api-keys", identity=manager, json=body)
    later = await auth.call(
        "POST", "/auth/api-keys", identity=manager,
        json={**body, "expires_at": (expires + timedelta(seconds=1)).isoformat()},
    )  # fmt: skip
    as_long = await auth.call(
        "POST", "/auth/api-keys", identity=manager, json={**body, "expires_at": expires.isoformat()}
    )

    for refused in (forever, later):
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"] == PROBLEM_JSON
        assert refused.json()["type"] == "urn:llm-platform:problem:invalid-expiry"
        assert datetime.fromisoformat(refused.json()["latest"]) == expires
    assert as_long.status_code == 201, as_long.text
    assert datetime.fromisoformat(as_long.json()["expires_at"]) == expires
    # A session is the user themself: its keys may be unscoped and never expire.
    assert (await auth.create_key(who))["expires_at"] is None


async def test_a_key_revoked_meanwhile_cannot_make_keys(auth: AuthClient) -> None:
    who = await auth.signup("alice@example.com")
    created = await auth.create_key(who)
    key = await auth.key_identity(created["key"])  # what the gateway signed before the revoke
    assert (await auth.as_user(who, "DELETE", f"/auth/api-keys/{created['id']}")).status_code == 204

    response = await auth.call("POST", "/auth/api-keys", identity=key, json={"name": "k"})

    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM_JSON
    assert (await auth.as_user(who, "GET", "/auth/api-keys")).json() == []


# ---------------------------------------------------------------- resolve (for the gateway)


async def test_only_the_gateway_may_resolve_keys(auth: AuthClient) -> None:
    who = await auth.signup("alice@example.com")
    key = (await auth.create_key(who))["key"]
    other_service = Identity(sub="service:inference", kind="service", iss="inference")

    for identity in (
        await auth.identity_of(who),
        ANONYMOUS,
        other_service,
        await auth.key_identity(key),
    ):
        response = await auth.resolve(key, identity=identity)
        assert response.status_code == 403, identity
        assert response.headers["content-type"] == PROBLEM_JSON
        assert who.user_id not in response.text

    unsigned = await auth.http.post(
        "/internal/api-keys/resolve",
        json={"key_hash": secret_hash(key)},
        extensions={"identity": None},
    )
    assert unsigned.status_code == 401


async def test_a_key_stands_for_its_scopes_within_the_owners_permissions(
    auth: AuthClient,
) -> None:
    who = await auth.signup("alice@example.com")
    key = await auth.create_key(who, scopes=["inference:invoke", "models:read"])
    unscoped = await auth.create_key(who)

    response = await auth.resolve(key["key"])

    assert response.status_code == 200
    assert response.json() == {
        "key_id": key["id"],
        "user_id": who.user_id,
        "roles": ["member"],
        "permissions": ["inference:invoke", "models:read"],
        "expires_at": None,
        "team_id": None,
        "policies": None,
    }
    cached = await _cached(auth, key["key"])
    assert cached is not None
    assert json.loads(cached)["permissions"] == ["inference:invoke", "models:read"]
    ttl = await auth.redis.ttl(API_KEY_PREFIX + secret_hash(key["key"]))
    assert 0 < ttl <= auth.settings.api_key_cache_seconds
    assert (await auth.resolve(unscoped["key"])).json()["permissions"] == MEMBER_PERMISSIONS

    # The gateway signs calls made with the key like this; auth sees the key's rights.
    me = await auth.call("GET", "/auth/me", identity=await auth.key_identity(key["key"]))
    assert me.status_code == 200
    assert me.json()["permissions"] == ["inference:invoke", "models:read"]


async def test_an_unknown_key_is_not_found_and_cached_as_invalid(auth: AuthClient) -> None:
    key = "sk-" + "x" * 43

    response = await auth.resolve(key)

    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    assert await _cached(auth, key) == b"invalid"


async def test_an_expired_key_stops_resolving(auth: AuthClient) -> None:
    who = await auth.signup("alice@example.com")
    expires = datetime.fromtimestamp(auth.clock() + 120, UTC)
    key = await auth.create_key(who, expires_at=expires.isoformat())

    fresh = await auth.resolve(key["key"])
    assert fresh.status_code == 200
    assert fresh.json()["expires_at"] == pytest.approx(expires.timestamp())
    # The gateway's cache never outlives the key.
    assert 0 < await auth.redis.ttl(API_KEY_PREFIX + secret_hash(key["key"])) <= 120

    auth.clock.advance(121)
    response = await auth.resolve(key["key"])

    assert response.status_code == 404
    assert await _cached(auth, key["key"]) == b"invalid"


async def test_a_disabled_owners_keys_stop_resolving(auth: AuthClient, admin: LoggedIn) -> None:
    who = await auth.signup("alice@example.com")
    key = await auth.create_key(who)
    assert (await auth.resolve(key["key"])).status_code == 200
    assert await _cached(auth, key["key"]) not in (None, b"invalid")

    disabled = await auth.as_user(
        admin, "PATCH", f"/auth/users/{who.user_id}", json={"disabled": True}
    )
    assert disabled.status_code == 200
    assert await _cached(auth, key["key"]) is None  # purged at once

    response = await auth.resolve(key["key"])
    assert response.status_code == 404
    assert await _cached(auth, key["key"]) == b"invalid"


async def test_a_role_change_of_the_owner_is_reflected(auth: AuthClient, admin: LoggedIn) -> None:
    who = await auth.signup("alice@example.com")
    unscoped = await auth.create_key(who)
    scoped = await auth.create_key(who, scopes=["inference:invoke", "models:read"])
    assert (await auth.resolve(unscoped["key"])).json()["permissions"] == MEMBER_PERMISSIONS
    assert (await auth.resolve(scoped["key"])).status_code == 200

    changed = await auth.as_user(
        admin, "PATCH", f"/auth/users/{who.user_id}", json={"roles": ["viewer"]}
    )
    assert changed.status_code == 200
    assert await _cached(auth, unscoped["key"]) is None
    assert await _cached(auth, scoped["key"]) is None

    as_viewer = (await auth.resolve(unscoped["key"])).json()
    assert as_viewer["roles"] == ["viewer"]
    assert as_viewer["permissions"] == VIEWER_PERMISSIONS
    # Scopes never widen a key beyond what its owner may do now.
    assert (await auth.resolve(scoped["key"])).json()["permissions"] == ["models:read"]


# ---------------------------------------------------------------- revoke


async def test_a_revoked_key_is_gone_from_the_cache_at_once(auth: AuthClient) -> None:
    who = await auth.signup("alice@example.com")
    key = await auth.create_key(who)
    assert (await auth.resolve(key["key"])).status_code == 200
    assert await _cached(auth, key["key"]) is not None

    response = await auth.as_user(who, "DELETE", f"/auth/api-keys/{key['id']}")

    assert response.status_code == 204
    assert await _cached(auth, key["key"]) is None
    assert (await auth.resolve(key["key"])).status_code == 404
    assert await _cached(auth, key["key"]) == b"invalid"
    assert (await auth.as_user(who, "GET", "/auth/api-keys")).json() == []
    assert (await _row(auth, key["id"])).revoked_at is not None
    again = await auth.as_user(who, "DELETE", f"/auth/api-keys/{key['id']}")
    assert again.status_code == 404


async def test_someone_elses_key_cannot_be_revoked(auth: AuthClient) -> None:
    alice = await auth.signup("alice@example.com")
    mallory = await auth.signup("mallory@example.com")
    key = await auth.create_key(alice)

    response = await auth.as_user(mallory, "DELETE", f"/auth/api-keys/{key['id']}")
    malformed = await auth.as_user(mallory, "DELETE", "/auth/api-keys/not-a-uuid")

    assert response.status_code == 404
    assert response.json()["type"] == "urn:llm-platform:problem:api-key-not-found"
    assert malformed.status_code == 404
    assert (await auth.resolve(key["key"])).status_code == 200


# ---------------------------------------------------------------- last use


async def test_last_use_times_collected_by_the_gateway_are_written_in_batches(
    auth: AuthClient,
) -> None:
    who = await auth.signup("alice@example.com")
    first = await auth.create_key(who, name="first")
    second = await auth.create_key(who, name="second")
    used_at = auth.clock() - 30
    # What the gateway does on each request made with a key.
    await auth.redis.hset(API_KEY_LAST_USED, first["id"], repr(used_at))
    await auth.redis.hset(API_KEY_LAST_USED, second["id"], repr(used_at + 5))
    await auth.redis.hset(API_KEY_LAST_USED, "not-a-key-id", repr(used_at))

    written = await background.flush_api_key_use(auth.runtime)

    assert written == 2
    assert not await auth.redis.exists(API_KEY_LAST_USED)
    listed = {k["name"]: k for k in (await auth.as_user(who, "GET", "/auth/api-keys")).json()}
    assert datetime.fromisoformat(listed["first"]["last_used_at"]).timestamp() == pytest.approx(
        used_at
    )
    assert datetime.fromisoformat(listed["second"]["last_used_at"]).timestamp() == pytest.approx(
        used_at + 5
    )

    # A late, older report never moves the time backwards.
    await auth.redis.hset(API_KEY_LAST_USED, first["id"], repr(used_at - 600))
    assert await background.flush_api_key_use(auth.runtime) == 1
    row = await _row(auth, first["id"])
    assert row.last_used_at is not None
    assert row.last_used_at.timestamp() == pytest.approx(used_at)
    # Nothing to write: nothing happens.
    assert await background.flush_api_key_use(auth.runtime) == 0


async def test_a_user_holds_at_most_the_configured_number_of_keys(make_app: MakeApp) -> None:
    async with make_app(max_api_keys_per_user=3) as auth:
        alice = await auth.signup("alice@example.com")
        bob = await auth.signup("bob@example.com")
        expires = datetime.fromtimestamp(auth.clock() + 60, UTC).isoformat()
        keys = [await auth.create_key(alice, name="short", expires_at=expires)]
        keys += [await auth.create_key(alice, name=f"k{n}") for n in range(2)]
        auth.clock.advance(61)  # the first has expired: it still counts until revoked

        refused = await auth.as_user(alice, "POST", "/auth/api-keys", json={"name": "more"})
        assert refused.status_code == 409, refused.text
        assert refused.json()["type"] == "urn:llm-platform:problem:too-many-api-keys"
        assert refused.json()["limit"] == 3
        listed = await auth.as_user(alice, "GET", "/auth/api-keys")
        assert len(listed.json()) == 3  # nothing was made
        await auth.create_key(bob, name="his")  # another user's count is their own

        revoked = await auth.as_user(alice, "DELETE", f"/auth/api-keys/{keys[0]['id']}")
        assert revoked.status_code == 204
        await auth.create_key(alice, name="again")


async def test_concurrent_creations_do_not_pass_the_limit(make_app: MakeApp) -> None:
    async with make_app(committed=True, max_api_keys_per_user=3) as auth:
        alice = await auth.signup("alice@example.com")
        answers = await asyncio.gather(*(
            auth.as_user(alice, "POST", "/auth/api-keys", json={"name": f"k{n}"})
            for n in range(10)
        ))  # fmt: skip
        assert sorted(a.status_code for a in answers) == [201] * 3 + [409] * 7
        assert len((await auth.as_user(alice, "GET", "/auth/api-keys")).json()) == 3
