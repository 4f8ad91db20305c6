"""Policies of keys, users and teams: who may set what (PATCH /auth/api-keys/{id},
/auth/users/{id}, /auth/teams/{id}), what a key's may not exceed, and how a change reaches
the gateway (the cached key, the sessions) and inference (the spend counters)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.budgets import spend_key, utc
from common.principals import SESSION_PREFIX

from .conftest import AuthClient, LoggedIn

PROBLEM = "urn:llm-platform:problem:"


async def _team_with(
    auth: AuthClient, admin: LoggedIn, *, owner: LoggedIn, member: LoggedIn, **policy: Any
) -> dict[str, Any]:
    team = await auth.create_team(admin, "Research", **policy)
    await auth.set_member(admin, team["id"], owner, "owner")
    await auth.set_member(admin, team["id"], member)
    return team


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_budget_usd": 2.5}, "max_budget_usd"),  # a float is not exact
        ({"max_budget_usd": "-1"}, "max_budget_usd"),
        ({"max_budget_usd": "1.0000000001"}, "max_budget_usd"),
        ({"max_budget_usd": "lots"}, "max_budget_usd"),
        ({"budget_period": "year"}, "budget_period"),
        ({"allowed_models": ["openai/*"] * 65}, "allowed_models"),
        ({"allowed_models": ["bad model"]}, "allowed_models"),
        ({"rpm_limit": 0}, "rpm_limit"),
        ({"tpm_limit": 1_000_000_001}, "tpm_limit"),
        ({"rpm_limit": "10"}, "rpm_limit"),
        ({"rpm_limit": True}, "rpm_limit"),
    ],
)
async def test_a_bad_policy_field_is_refused_naming_it(
    auth: AuthClient, body: dict[str, Any], field: str
) -> None:
    who = await auth.signup()

    response = await auth.as_user(who, "POST", "/auth/api-keys", json={"name": "k", **body})

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][:2] == ["body", field]
    assert (await auth.as_user(who, "GET", "/auth/api-keys")).json() == []


async def test_a_period_without_a_budget_is_refused(auth: AuthClient) -> None:
    who = await auth.signup()

    response = await auth.as_user(
        who, "POST", "/auth/api-keys", json={"name": "k", "budget_period": "day"}
    )

    assert response.status_code == 422
    assert response.json()["type"] == PROBLEM + "invalid-policy"
    assert response.json()["field"] == "budget_period"


async def test_a_key_is_shown_and_resolved_with_its_policy(auth: AuthClient) -> None:
    who = await auth.signup()
    body = {
        "max_budget_usd": "25",
        "budget_period": "month",
        "allowed_models": ["openai/mock-*", "openai/mock-*", "cheap"],
        "rpm_limit": 60,
        "tpm_limit": 10_000,
    }
    created = await auth.create_key(who, **body)

    listed = (await auth.as_user(who, "GET", "/auth/api-keys")).json()
    resolved = await auth.resolve(created["key"])
    cached = await auth.cached(created["key"])

    shown = {
        "max_budget_usd": "25.00",
        "budget_period": "month",
        "allowed_models": ["openai/mock-*", "cheap"],
        "rpm_limit": 60,
        "tpm_limit": 10_000,
    }
    assert {k: created[k] for k in shown} == shown
    assert {k: listed[0][k] for k in shown} == shown
    assert resolved.json()["policies"] == {"key": shown}
    assert cached is not None
    assert cached.policies == {"key": shown}
    assert cached.team_id is None


async def test_the_cached_principal_carries_the_keys_the_users_and_the_teams_policy(
    auth: AuthClient, admin: LoggedIn
) -> None:
    owner, alice = await auth.signup(), await auth.signup()
    team = await _team_with(
        auth, admin, owner=owner, member=alice, max_budget_usd="100", rpm_limit=100
    )
    await auth.as_user(admin, "PATCH", f"/auth/users/{alice.user_id}", json={"tpm_limit": 5000})
    key = await auth.create_key(alice, team_id=team["id"], rpm_limit=10)

    await auth.resolve(key["key"])
    cached = await auth.cached(key["key"])

    assert cached is not None
    assert cached.team_id == team["id"]
    assert cached.policies == {
        "key": {"rpm_limit": 10},
        "user": {"tpm_limit": 5000},
        "team": {"max_budget_usd": "100.00", "budget_period": "total", "rpm_limit": 100},
    }


async def test_a_key_only_narrows_its_users_and_its_teams_policy(
    auth: AuthClient, admin: LoggedIn
) -> None:
    owner, alice = await auth.signup(), await auth.signup()
    team = await _team_with(
        auth, admin, owner=owner, member=alice,
        max_budget_usd="50", allowed_models=["openai/*"], rpm_limit=100,
    )  # fmt: skip
    await auth.as_user(admin, "PATCH", f"/auth/users/{alice.user_id}", json={"tpm_limit": 1000})

    def create(**body: Any) -> Any:
        return auth.as_user(
            alice, "POST", "/auth/api-keys", json={"name": "k", "team_id": team["id"], **body}
        )

    over_budget = await create(max_budget_usd="60")
    other_models = await create(allowed_models=["anthropic/*"])
    wider_glob = await create(allowed_models=["*"])
    over_tpm = await create(tpm_limit=2000)
    within = await create(
        max_budget_usd="50", allowed_models=["openai/gpt-*"], rpm_limit=10, tpm_limit=1000
    )
    personal_over_user = await auth.as_user(
        alice, "POST", "/auth/api-keys", json={"name": "k", "tpm_limit": 1001}
    )

    for response, field, scope in [
        (over_budget, "max_budget_usd", "team"),
        (other_models, "allowed_models", "team"),
        (wider_glob, "allowed_models", "team"),
        (over_tpm, "tpm_limit", "user"),
        (personal_over_user, "tpm_limit", "user"),
    ]:
        assert response.status_code == 422, response.text
        assert response.json()["type"] == PROBLEM + "policy-exceeds"
        assert (response.json()["field"], response.json()["scope"]) == (field, scope)
    assert within.status_code == 201
    # An admin cannot make it exceed either.
    raised = await auth.as_user(
        admin, "PATCH", f"/auth/api-keys/{within.json()['id']}", json={"rpm_limit": 101}
    )
    assert raised.status_code == 422
    assert raised.json()["field"] == "rpm_limit"


async def test_a_user_only_narrows_their_own_personal_keys_policy(auth: AuthClient) -> None:
    alice, bob = await auth.signup(), await auth.signup()
    key = await auth.create_key(
        alice, max_budget_usd="10", budget_period="month", allowed_models=["openai/*"]
    )
    path = f"/auth/api-keys/{key['id']}"

    lowered = await auth.as_user(alice, "PATCH", path, json={"max_budget_usd": "5"})
    limited = await auth.as_user(alice, "PATCH", path, json={"rpm_limit": 30})
    narrower_models = await auth.as_user(
        alice, "PATCH", path, json={"allowed_models": ["openai/a"]}
    )
    raised = await auth.as_user(alice, "PATCH", path, json={"max_budget_usd": "6"})
    cleared = await auth.as_user(alice, "PATCH", path, json={"rpm_limit": None})
    more_often = await auth.as_user(alice, "PATCH", path, json={"budget_period": "day"})
    all_models = await auth.as_user(alice, "PATCH", path, json={"allowed_models": None})
    by_bob = await auth.as_user(bob, "PATCH", path, json={"max_budget_usd": "1"})

    assert lowered.status_code == limited.status_code == narrower_models.status_code == 200
    for response, field in [
        (raised, "max_budget_usd"),
        (cleared, "rpm_limit"),
        (more_often, "budget_period"),
        (all_models, "allowed_models"),
    ]:
        assert response.status_code == 403, response.text
        assert response.json()["type"] == PROBLEM + "policy-change-refused"
        assert response.json()["fields"] == [field]
    assert by_bob.status_code == 404
    shown = (await auth.as_user(alice, "GET", "/auth/api-keys")).json()[0]
    assert (shown["max_budget_usd"], shown["budget_period"], shown["rpm_limit"]) == (
        "5.00",
        "month",
        30,
    )
    assert shown["allowed_models"] == ["openai/a"]


async def test_a_patch_leaves_absent_fields_and_clears_null_ones(
    auth: AuthClient, admin: LoggedIn
) -> None:
    alice = await auth.signup()
    key = await auth.create_key(alice, max_budget_usd="10", budget_period="week", rpm_limit=5)
    path = f"/auth/api-keys/{key['id']}"

    renamed = await auth.as_user(alice, "PATCH", path, json={"name": "renamed"})
    budget_cleared = await auth.as_user(admin, "PATCH", path, json={"max_budget_usd": None})

    assert renamed.status_code == 200
    assert (renamed.json()["name"], renamed.json()["max_budget_usd"]) == ("renamed", "10.00")
    assert renamed.json()["rpm_limit"] == 5
    body = budget_cleared.json()
    assert (body["max_budget_usd"], body["budget_period"], body["rpm_limit"]) == (None, None, 5)


async def test_team_keys_policy_is_the_owners_to_set(auth: AuthClient, admin: LoggedIn) -> None:
    owner, alice, outsider = await auth.signup(), await auth.signup(), await auth.signup()
    team = await _team_with(auth, admin, owner=owner, member=alice, max_budget_usd="100")
    key = await auth.create_key(alice, team_id=team["id"], max_budget_usd="10")
    path = f"/auth/api-keys/{key['id']}"

    by_member = await auth.as_user(alice, "PATCH", path, json={"max_budget_usd": "5"})
    renamed_by_member = await auth.as_user(alice, "PATCH", path, json={"name": "mine"})
    by_owner = await auth.as_user(owner, "PATCH", path, json={"max_budget_usd": "40"})
    by_admin = await auth.as_user(admin, "PATCH", path, json={"max_budget_usd": "80"})
    by_outsider = await auth.as_user(outsider, "PATCH", path, json={"max_budget_usd": "1"})

    assert by_member.status_code == 403
    assert by_member.json()["type"] == PROBLEM + "policy-change-refused"
    assert renamed_by_member.status_code == 200
    assert by_owner.status_code == 200
    assert by_owner.json()["max_budget_usd"] == "40.00"
    assert by_admin.json()["max_budget_usd"] == "80.00"
    assert by_outsider.status_code == 404
    changes = [
        (e.actor_id, e.detail)
        for e in await auth.audit_events()
        if e.action == "policy.change" and e.target_id == key["id"]
    ]
    assert [(str(actor), detail) for actor, detail in changes] == [
        (owner.user_id, {"old": {"max_budget_usd": "10.00"}, "new": {"max_budget_usd": "40.00"}}),
        (admin.user_id, {"old": {"max_budget_usd": "40.00"}, "new": {"max_budget_usd": "80.00"}}),
    ]


async def test_an_owner_narrows_the_teams_policy_and_only_an_admin_raises_it(
    auth: AuthClient, admin: LoggedIn
) -> None:
    owner, alice = await auth.signup(), await auth.signup()
    team = await _team_with(
        auth, admin, owner=owner, member=alice, max_budget_usd="100", budget_period="month"
    )
    path = f"/auth/teams/{team['id']}"

    narrowed = await auth.as_user(owner, "PATCH", path, json={"max_budget_usd": "50"})
    raised = await auth.as_user(owner, "PATCH", path, json={"max_budget_usd": "500"})
    by_member = await auth.as_user(alice, "PATCH", path, json={"max_budget_usd": "10"})
    by_admin = await auth.as_user(admin, "PATCH", path, json={"max_budget_usd": "500"})

    assert narrowed.status_code == 200
    assert narrowed.json()["max_budget_usd"] == "50.00"
    assert raised.status_code == 403
    assert raised.json()["fields"] == ["max_budget_usd"]
    assert by_member.status_code == 403
    assert by_admin.json()["max_budget_usd"] == "500.00"


async def test_a_team_owner_sets_the_teams_keys_budgets_but_not_their_own(
    auth: AuthClient, admin: LoggedIn
) -> None:
    """The issue's owner rights: a member can do neither."""
    owner, alice = await auth.signup(), await auth.signup()
    team = await _team_with(auth, admin, owner=owner, member=alice)
    alices_key = await auth.create_key(alice, team_id=team["id"])

    owner_sets_key = await auth.as_user(
        owner, "PATCH", f"/auth/api-keys/{alices_key['id']}", json={"max_budget_usd": "20"}
    )
    owner_sets_self = await auth.as_user(
        owner, "PATCH", f"/auth/users/{owner.user_id}", json={"max_budget_usd": "1000"}
    )
    member_sets_key = await auth.as_user(
        alice, "PATCH", f"/auth/api-keys/{alices_key['id']}", json={"max_budget_usd": "30"}
    )
    member_sets_self = await auth.as_user(
        alice, "PATCH", f"/auth/users/{alice.user_id}", json={"max_budget_usd": "1000"}
    )

    assert owner_sets_key.status_code == 200
    assert owner_sets_self.status_code == 403
    assert member_sets_key.status_code == member_sets_self.status_code == 403


async def test_an_admin_sets_a_users_policy_but_only_narrows_their_own(
    auth: AuthClient, admin: LoggedIn
) -> None:
    alice = await auth.signup()
    await auth.as_user(admin, "PATCH", f"/auth/users/{admin.user_id}", json={"rpm_limit": 100})

    set_alice = await auth.as_user(
        admin, "PATCH", f"/auth/users/{alice.user_id}",
        json={"max_budget_usd": "20", "budget_period": "day", "allowed_models": ["local/*"]},
    )  # fmt: skip
    lower_own = await auth.as_user(
        admin, "PATCH", f"/auth/users/{admin.user_id}", json={"rpm_limit": 50}
    )
    raise_own = await auth.as_user(
        admin, "PATCH", f"/auth/users/{admin.user_id}", json={"rpm_limit": 500}
    )

    assert set_alice.status_code == 200
    assert set_alice.json()["max_budget_usd"] == "20.00"
    assert set_alice.json()["budget_period"] == "day"
    assert lower_own.status_code == 200
    assert raise_own.status_code == 403
    shown = (await auth.as_user(admin, "GET", f"/auth/users/{alice.user_id}")).json()
    assert shown["allowed_models"] == ["local/*"]
    listed = (await auth.as_user(admin, "GET", "/auth/users")).json()["data"]
    assert {u["id"]: u["rpm_limit"] for u in listed}[admin.user_id] == 50


async def test_a_users_policy_reaches_their_sessions_and_their_cached_keys(
    auth: AuthClient, admin: LoggedIn
) -> None:
    alice = await auth.signup()
    second = await auth.logged_in(alice.user["email"])
    ended = await auth.logged_in(alice.user["email"])
    assert (await auth.as_user(ended, "POST", "/auth/logout")).status_code == 204
    key = await auth.create_key(alice)
    await auth.resolve(key["key"])

    changed = await auth.as_user(
        admin, "PATCH", f"/auth/users/{alice.user_id}", json={"tpm_limit": 1000}
    )

    assert changed.status_code == 200
    for session in (alice, second):
        stored = await auth.store.get(session.sid)
        assert stored is not None
        assert stored.policy == {"tpm_limit": 1000}
    assert not await auth.redis.exists(SESSION_PREFIX + ended.sid)  # not made again
    assert await auth.cached(key["key"]) is None  # forgotten
    await auth.resolve(key["key"])
    cached = await auth.cached(key["key"])
    assert cached is not None
    assert cached.policies == {"user": {"tpm_limit": 1000}}
    # A session started now carries it from the start.
    later = await auth.logged_in(alice.user["email"])
    stored = await auth.store.get(later.sid)
    assert stored is not None
    assert stored.policy == {"tpm_limit": 1000}
    raw = await auth.redis.hget(SESSION_PREFIX + later.sid, "policy")
    assert raw is not None
    assert json.loads(raw) == {"tpm_limit": 1000}


async def test_a_policy_change_forgets_every_affected_cached_key(
    auth: AuthClient, admin: LoggedIn
) -> None:
    owner, alice = await auth.signup(), await auth.signup()
    team = await _team_with(auth, admin, owner=owner, member=alice)
    team_keys = [await auth.create_key(who, team_id=team["id"]) for who in (owner, alice)]
    outside = await auth.create_key(alice)
    for key in [*team_keys, outside]:
        await auth.resolve(key["key"])

    await auth.as_user(owner, "PATCH", f"/auth/teams/{team['id']}", json={"rpm_limit": 10})

    assert [await auth.cached(k["key"]) for k in team_keys] == [None, None]
    assert await auth.cached(outside["key"]) is not None
    await auth.resolve(team_keys[1]["key"])
    cached = await auth.cached(team_keys[1]["key"])
    assert cached is not None
    assert cached.policies == {"team": {"rpm_limit": 10}}

    await auth.as_user(
        owner, "PATCH", f"/auth/api-keys/{team_keys[1]['id']}", json={"rpm_limit": 5}
    )
    assert await auth.cached(team_keys[1]["key"]) is None


async def test_changing_a_budget_starts_its_spend_again_from_telemetry(
    auth: AuthClient, admin: LoggedIn
) -> None:
    """The scope's counters are dropped (inference rebuilds them from telemetry); a change
    that leaves the budget alone keeps them."""
    alice = await auth.signup()
    key = await auth.create_key(alice, max_budget_usd="10", budget_period="day", rpm_limit=9)
    now = utc(auth.clock())
    counter = spend_key("key", key["id"], "day", now)
    await auth.seed_spend("key", key["id"], "day", "3")
    path = f"/auth/api-keys/{key['id']}"

    await auth.as_user(alice, "PATCH", path, json={"rpm_limit": 8})
    kept = await auth.redis.exists(counter)
    await auth.as_user(alice, "PATCH", path, json={"max_budget_usd": "9"})
    dropped = not await auth.redis.exists(counter)

    assert kept
    assert dropped


async def test_a_key_with_a_policy_of_its_own_creates_no_keys(auth: AuthClient) -> None:
    alice = await auth.signup()
    limited = await auth.key_identity((await auth.create_key(alice, max_budget_usd="1"))["key"])
    free = await auth.key_identity((await auth.create_key(alice))["key"])

    refused = await auth.call("POST", "/auth/api-keys", identity=limited, json={"name": "x"})
    made = await auth.call("POST", "/auth/api-keys", identity=free, json={"name": "x"})

    assert refused.status_code == 403
    assert refused.json()["type"] == PROBLEM + "policy-change-refused"
    assert made.status_code == 201
