"""The response cache's default on keys and teams (`cache`, common.policy.CachePolicy): set
at creation and with PATCH by whoever may change that policy, shown, audited, and carried
to the gateway (the cached key) as the other policy fields are. It limits nothing."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import AuthClient, LoggedIn

PROBLEM = "urn:llm-platform:problem:"
SEMANTIC = {"mode": "semantic", "ttl_seconds": 600, "multi_turn": True, "threshold": 0.9}
# As the read models show it: every field, defaults included.
SEMANTIC_SHOWN = {**SEMANTIC, "temperature": False, "tools": False}
EXACT_SHOWN = {
    "mode": "exact",
    "ttl_seconds": None,
    "temperature": False,
    "tools": False,
    "multi_turn": False,
    "threshold": None,
}


async def test_a_keys_cache_default_is_shown_and_travels_with_the_key(auth: AuthClient) -> None:
    who = await auth.signup()
    created = await auth.create_key(who, cache=SEMANTIC, rpm_limit=30)

    listed = (await auth.as_user(who, "GET", "/auth/api-keys")).json()
    resolved = await auth.resolve(created["key"])
    cached = await auth.cached(created["key"])

    assert created["cache"] == listed[0]["cache"] == SEMANTIC_SHOWN
    # On the wire (what the gateway signs for inference): its non-default fields only.
    assert resolved.json()["policies"] == {"key": {"rpm_limit": 30, "cache": SEMANTIC}}
    assert cached is not None
    assert cached.policies == {"key": {"rpm_limit": 30, "cache": SEMANTIC}}
    assert (await auth.create_key(who))["cache"] is None


async def test_a_key_with_only_a_cache_default_carries_it_and_governs_nothing(
    auth: AuthClient,
) -> None:
    who = await auth.signup()
    created = await auth.create_key(who, cache={"mode": "exact"})

    identity = await auth.key_identity(created["key"])
    cached = await auth.cached(created["key"])
    # A key with a policy of its own creates no keys; a cache default is no such policy.
    made = await auth.call("POST", "/auth/api-keys", identity=identity, json={"name": "x"})

    assert cached is not None
    assert cached.policies == {"key": {"cache": {"mode": "exact"}}}
    assert made.status_code == 201, made.text
    events = [e for e in await auth.audit_events() if e.action == "api_key.create"]
    assert events[0].detail["policy"] == {"cache": {"mode": "exact"}}


async def test_a_teams_cache_default_reaches_its_keys(auth: AuthClient, admin: LoggedIn) -> None:
    alice = await auth.signup()
    team = await auth.create_team(admin, "Cached", cache={"mode": "exact", "temperature": True})
    await auth.set_member(admin, team["id"], alice)
    key = await auth.create_key(alice, team_id=team["id"], cache={"mode": "off"})

    shown = (await auth.as_user(alice, "GET", f"/auth/teams/{team['id']}")).json()
    listed = (await auth.as_user(admin, "GET", "/auth/teams")).json()["data"]
    await auth.resolve(key["key"])
    cached = await auth.cached(key["key"])

    assert team["cache"] == shown["cache"] == {**EXACT_SHOWN, "temperature": True}
    assert [t["cache"] for t in listed if t["id"] == team["id"]] == [shown["cache"]]
    assert cached is not None
    assert cached.policies == {
        "key": {"cache": {"mode": "off"}},
        "team": {"cache": {"mode": "exact", "temperature": True}},
    }


async def test_a_patch_sets_changes_and_clears_a_keys_cache_default(auth: AuthClient) -> None:
    """The key's user sets it freely (it is no limit to narrow); each change is audited
    and forgets the cached key, which then carries the new default."""
    alice = await auth.signup()
    key = await auth.create_key(alice, max_budget_usd="5")
    path = f"/auth/api-keys/{key['id']}"
    await auth.resolve(key["key"])

    set_ = await auth.as_user(alice, "PATCH", path, json={"cache": {"mode": "exact"}})
    forgotten = await auth.cached(key["key"]) is None
    await auth.resolve(key["key"])
    carried = await auth.cached(key["key"])
    changed = await auth.as_user(alice, "PATCH", path, json={"cache": SEMANTIC})
    renamed = await auth.as_user(alice, "PATCH", path, json={"name": "kept"})
    cleared = await auth.as_user(alice, "PATCH", path, json={"cache": None})
    await auth.resolve(key["key"])
    after_clear = await auth.cached(key["key"])

    assert set_.status_code == changed.status_code == cleared.status_code == 200
    assert set_.json()["cache"] == EXACT_SHOWN
    assert forgotten
    assert carried is not None
    assert carried.policies == {
        "key": {"max_budget_usd": "5.00", "budget_period": "total", "cache": {"mode": "exact"}}
    }
    assert changed.json()["cache"] == SEMANTIC_SHOWN
    assert renamed.json()["cache"] == SEMANTIC_SHOWN  # left out: left as it is
    assert cleared.json()["cache"] is None
    assert cleared.json()["max_budget_usd"] == "5.00"
    assert after_clear is not None
    assert after_clear.policies == {"key": {"max_budget_usd": "5.00", "budget_period": "total"}}
    changes = [
        e.detail
        for e in await auth.audit_events()
        if e.action == "policy.change" and e.target_id == key["id"]
    ]
    assert changes == [
        {"old": {"cache": None}, "new": {"cache": {"mode": "exact"}}},
        {"old": {"cache": {"mode": "exact"}}, "new": {"cache": SEMANTIC}},
        {"old": {"cache": SEMANTIC}, "new": {"cache": None}},
    ]


async def test_a_team_keys_and_a_teams_cache_default_are_the_owners_to_set(
    auth: AuthClient, admin: LoggedIn
) -> None:
    owner, alice = await auth.signup(), await auth.signup()
    team = await auth.create_team(admin, "Owned", max_budget_usd="100")
    await auth.set_member(admin, team["id"], owner, "owner")
    await auth.set_member(admin, team["id"], alice)
    key = await auth.create_key(alice, team_id=team["id"])
    await auth.resolve(key["key"])
    key_path, team_path = f"/auth/api-keys/{key['id']}", f"/auth/teams/{team['id']}"
    exact = {"cache": {"mode": "exact"}}

    key_by_member = await auth.as_user(alice, "PATCH", key_path, json=exact)
    team_by_member = await auth.as_user(alice, "PATCH", team_path, json=exact)
    key_by_owner = await auth.as_user(owner, "PATCH", key_path, json={"cache": SEMANTIC})
    team_by_owner = await auth.as_user(owner, "PATCH", team_path, json=exact)
    forgotten = await auth.cached(key["key"]) is None
    team_cleared_by_admin = await auth.as_user(admin, "PATCH", team_path, json={"cache": None})

    assert key_by_member.status_code == team_by_member.status_code == 403
    assert key_by_member.json()["type"] == PROBLEM + "policy-change-refused"
    assert key_by_owner.status_code == team_by_owner.status_code == 200
    assert key_by_owner.json()["cache"] == SEMANTIC_SHOWN
    assert team_by_owner.json()["cache"] == EXACT_SHOWN
    assert forgotten
    assert team_cleared_by_admin.json()["cache"] is None
    team_changes = [
        (str(e.actor_id), e.detail)
        for e in await auth.audit_events()
        if e.action == "policy.change" and e.target_id == team["id"]
    ]
    assert team_changes == [
        (owner.user_id, {"old": {"cache": None}, "new": {"cache": {"mode": "exact"}}}),
        (admin.user_id, {"old": {"cache": {"mode": "exact"}}, "new": {"cache": None}}),
    ]


BAD_CACHES: list[Any] = [
    {},
    {"mode": "fuzzy"},
    {"ttl_seconds": 60},
    {"mode": "exact", "ttl_seconds": 0},
    {"mode": "exact", "ttl_seconds": 2_592_001},
    {"mode": "exact", "ttl_seconds": "60"},
    {"mode": "exact", "temperature": "yes"},
    {"mode": "exact", "tools": 1},
    {"mode": "semantic", "threshold": 0.49},
    {"mode": "semantic", "threshold": 1.5},
    {"mode": "semantic", "threshold": "0.9"},
    {"mode": "exact", "ttl": 60},
    "exact",
    ["exact"],
]


@pytest.mark.parametrize("cache", BAD_CACHES)
async def test_a_bad_cache_default_is_refused_and_changes_nothing(
    auth: AuthClient, admin: LoggedIn, cache: Any
) -> None:
    alice = await auth.signup()
    key = await auth.create_key(alice, cache={"mode": "exact"})
    team = await auth.create_team(admin, "Unchanged", cache={"mode": "exact"})

    responses = [
        await auth.as_user(alice, "POST", "/auth/api-keys", json={"name": "k", "cache": cache}),
        await auth.as_user(alice, "PATCH", f"/auth/api-keys/{key['id']}", json={"cache": cache}),
        await auth.as_user(admin, "POST", "/auth/teams", json={"name": "New", "cache": cache}),
        await auth.as_user(admin, "PATCH", f"/auth/teams/{team['id']}", json={"cache": cache}),
    ]

    for response in responses:
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["loc"][:2] == ["body", "cache"]
    keys = (await auth.as_user(alice, "GET", "/auth/api-keys")).json()
    assert [k["cache"] for k in keys] == [EXACT_SHOWN]
    teams = (await auth.as_user(admin, "GET", "/auth/teams")).json()["data"]
    assert [t["cache"] for t in teams] == [EXACT_SHOWN]


async def test_a_user_has_no_cache_default(auth: AuthClient, admin: LoggedIn) -> None:
    alice = await auth.signup()

    response = await auth.as_user(
        admin, "PATCH", f"/auth/users/{alice.user_id}", json={"cache": {"mode": "exact"}}
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][:2] == ["body", "cache"]
    shown = (await auth.as_user(admin, "GET", f"/auth/users/{alice.user_id}")).json()
    assert "cache" not in shown
