"""Teams: POST/GET/PATCH/DELETE /auth/teams, their members, team keys, and the internal
membership question telemetry asks."""

from __future__ import annotations

import uuid
from typing import Any

from auth import repository
from common.identity import Identity

from .conftest import GATEWAY, TELEMETRY, AuthClient, LoggedIn

PROBLEM = "urn:llm-platform:problem:"


async def _actions(auth: AuthClient) -> list[tuple[str, str | None, dict[str, Any]]]:
    return [(e.action, e.target_id, e.detail) for e in await auth.audit_events()]


async def test_an_admin_creates_a_team_and_nobody_else_can(
    auth: AuthClient, admin: LoggedIn
) -> None:
    member = await auth.signup()

    created = await auth.as_user(
        admin, "POST", "/auth/teams", json={"name": " Research ", "max_budget_usd": "25"}
    )
    refused = await auth.as_user(member, "POST", "/auth/teams", json={"name": "Mine"})
    again = await auth.as_user(admin, "POST", "/auth/teams", json={"name": "Research"})

    assert created.status_code == 201, created.text
    team = created.json()
    assert team["name"] == "Research"
    assert team["role"] is None  # the admin is not in it
    assert team["max_budget_usd"] == "25.00"
    assert team["budget_period"] == "total"
    assert team["budget_resets_at"] is None
    assert refused.status_code == 403
    assert again.status_code == 409
    assert again.json()["type"] == PROBLEM + "team-name-taken"
    assert ("team.create", team["id"], {"name": "Research", "policy": {
        "max_budget_usd": "25.00", "budget_period": "total"}}) in await _actions(auth)  # fmt: skip


async def test_a_team_is_seen_by_its_members_and_admins_only(
    auth: AuthClient, admin: LoggedIn
) -> None:
    alice, bob = await auth.signup(), await auth.signup()
    team = await auth.create_team(admin, "Research")
    assert (await auth.set_member(admin, team["id"], alice, "owner")).status_code == 200

    as_alice = await auth.as_user(alice, "GET", f"/auth/teams/{team['id']}")
    as_bob = await auth.as_user(bob, "GET", f"/auth/teams/{team['id']}")
    unknown = await auth.as_user(admin, "GET", f"/auth/teams/{uuid.uuid4()}")
    not_an_id = await auth.as_user(admin, "GET", "/auth/teams/nope")

    assert as_alice.status_code == 200
    assert as_alice.json()["role"] == "owner"
    assert as_bob.status_code == 404
    assert as_bob.json()["type"] == PROBLEM + "team-not-found"
    assert unknown.status_code == not_an_id.status_code == 404


async def test_the_list_shows_admins_every_team_and_others_their_own_page_by_page(
    auth: AuthClient, admin: LoggedIn
) -> None:
    alice = await auth.signup()
    names = [f"team-{n}" for n in range(5)]
    teams = [await auth.create_team(admin, name) for name in names]
    for team in teams[1:4]:
        await auth.set_member(admin, team["id"], alice)

    async def all_pages(who: LoggedIn) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        cursor = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await auth.as_user(who, "GET", "/auth/teams", params=params)).json()
            seen += page["data"]
            cursor = page["next_cursor"]
            if cursor is None:
                return seen
        raise AssertionError("pages without end")

    # (One transaction here: the teams were made at the same time, and come in id order.)
    every = [t["name"] for t in await all_pages(admin)]
    assert sorted(every) == names
    mine = await all_pages(alice)
    assert sorted(t["name"] for t in mine) == names[1:4]
    assert {t["role"] for t in mine} == {"member"}


async def test_owners_manage_members_and_members_do_not(auth: AuthClient, admin: LoggedIn) -> None:
    owner, member, newcomer = await auth.signup(), await auth.signup(), await auth.signup()
    team = await auth.create_team(admin, "Research")
    await auth.set_member(admin, team["id"], owner, "owner")
    await auth.set_member(owner, team["id"], member)

    by_member = await auth.set_member(member, team["id"], newcomer)
    by_owner = await auth.set_member(owner, team["id"], newcomer)
    promoted = await auth.set_member(owner, team["id"], newcomer, "owner")
    ghost = await auth.as_user(
        owner, "PUT", f"/auth/teams/{team['id']}/members/{uuid.uuid4()}", json={"role": "member"}
    )
    bad_role = await auth.as_user(
        owner, "PUT", f"/auth/teams/{team['id']}/members/{member.user_id}", json={"role": "boss"}
    )

    assert by_member.status_code == 403
    assert by_member.json()["type"] == PROBLEM + "team-owner-required"
    assert by_owner.status_code == 200
    assert by_owner.json()["email"] == newcomer.user["email"]
    assert promoted.json()["role"] == "owner"
    assert ghost.status_code == 404
    assert bad_role.status_code == 422
    listed = await auth.as_user(member, "GET", f"/auth/teams/{team['id']}/members")
    assert {(m["user_id"], m["role"]) for m in listed.json()["data"]} == {
        (owner.user_id, "owner"),
        (member.user_id, "member"),
        (newcomer.user_id, "owner"),
    }
    actions = await _actions(auth)
    assert ("team.member_set", team["id"], {
        "user_id": newcomer.user_id, "role": "owner", "old_role": "member"}) in actions  # fmt: skip


async def test_members_are_listed_page_by_page(auth: AuthClient, admin: LoggedIn) -> None:
    team = await auth.create_team(admin, "Research")
    people = [await auth.signup() for _ in range(5)]
    for who in people:
        await auth.set_member(admin, team["id"], who)

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await auth.as_user(admin, "GET", f"/auth/teams/{team['id']}/members", params=params)
        seen += [m["user_id"] for m in page.json()["data"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    outsider = await auth.signup()
    hidden = await auth.as_user(outsider, "GET", f"/auth/teams/{team['id']}/members")

    assert sorted(seen) == sorted(who.user_id for who in people)
    assert hidden.status_code == 404


async def test_a_member_who_leaves_or_is_removed_loses_their_team_keys(
    auth: AuthClient, admin: LoggedIn
) -> None:
    owner, alice, bob = await auth.signup(), await auth.signup(), await auth.signup()
    team = await auth.create_team(admin, "Research")
    await auth.set_member(admin, team["id"], owner, "owner")
    for who in (alice, bob):
        await auth.set_member(owner, team["id"], who)
    alice_team_key = await auth.create_key(alice, team_id=team["id"])
    alice_own_key = await auth.create_key(alice)
    bob_key = await auth.create_key(bob, team_id=team["id"])
    for key in (alice_team_key, alice_own_key, bob_key):
        assert (await auth.resolve(key["key"])).status_code == 200  # cached now

    left = await auth.as_user(alice, "DELETE", f"/auth/teams/{team['id']}/members/{alice.user_id}")
    by_member = await auth.as_user(
        alice, "DELETE", f"/auth/teams/{team['id']}/members/{bob.user_id}"
    )
    removed = await auth.as_user(owner, "DELETE", f"/auth/teams/{team['id']}/members/{bob.user_id}")
    again = await auth.as_user(owner, "DELETE", f"/auth/teams/{team['id']}/members/{bob.user_id}")

    assert left.status_code == removed.status_code == 204
    assert by_member.status_code == 404  # alice is no longer in the team
    assert again.status_code == 404
    assert again.json()["type"] == PROBLEM + "member-not-found"
    assert await auth.cached(alice_team_key["key"]) is None
    assert (await auth.resolve(alice_team_key["key"])).status_code == 404
    assert (await auth.resolve(bob_key["key"])).status_code == 404
    assert (await auth.resolve(alice_own_key["key"])).status_code == 200
    actions = await _actions(auth)
    assert ("team.member_remove", team["id"], {
        "user_id": bob.user_id, "role": "member", "revoked_keys": 1}) in actions  # fmt: skip


async def test_a_team_key_is_made_by_a_member_only(auth: AuthClient, admin: LoggedIn) -> None:
    member, outsider = await auth.signup(), await auth.signup()
    team = await auth.create_team(admin, "Research")
    await auth.set_member(admin, team["id"], member)

    made = await auth.as_user(
        member, "POST", "/auth/api-keys", json={"name": "ci", "team_id": team["id"]}
    )
    by_outsider = await auth.as_user(
        outsider, "POST", "/auth/api-keys", json={"name": "ci", "team_id": team["id"]}
    )
    by_admin = await auth.as_user(
        admin, "POST", "/auth/api-keys", json={"name": "ci", "team_id": team["id"]}
    )

    assert made.status_code == 201
    assert made.json()["team_id"] == team["id"]
    assert by_outsider.status_code == by_admin.status_code == 404
    assert by_outsider.json()["type"] == PROBLEM + "team-not-found"
    principal = await auth.resolve(made.json()["key"])
    assert principal.json()["team_id"] == team["id"]


async def test_a_team_key_made_with_a_team_key_stays_in_its_team(
    auth: AuthClient, admin: LoggedIn
) -> None:
    member = await auth.signup()
    team = await auth.create_team(admin, "Research")
    await auth.set_member(admin, team["id"], member)
    team_key = await auth.key_identity((await auth.create_key(member, team_id=team["id"]))["key"])

    personal = await auth.call("POST", "/auth/api-keys", identity=team_key, json={"name": "x"})
    same_team = await auth.call(
        "POST", "/auth/api-keys", identity=team_key, json={"name": "x", "team_id": team["id"]}
    )

    assert personal.status_code == 422
    assert personal.json()["field"] == "team_id"
    assert same_team.status_code == 201


async def test_team_keys_are_listed_all_for_owners_and_own_for_members(
    auth: AuthClient, admin: LoggedIn
) -> None:
    owner, alice, outsider = await auth.signup(), await auth.signup(), await auth.signup()
    team = await auth.create_team(admin, "Research")
    await auth.set_member(admin, team["id"], owner, "owner")
    await auth.set_member(admin, team["id"], alice)
    owners_key = await auth.create_key(owner, team_id=team["id"])
    alices_key = await auth.create_key(alice, team_id=team["id"])
    await auth.create_key(alice)  # personal: in no team's list

    def ids(response: Any) -> set[str]:
        return {k["id"] for k in response.json()}

    params = {"team_id": team["id"]}
    by_owner = await auth.as_user(owner, "GET", "/auth/api-keys", params=params)
    by_alice = await auth.as_user(alice, "GET", "/auth/api-keys", params=params)
    by_admin = await auth.as_user(admin, "GET", "/auth/api-keys", params=params)
    by_outsider = await auth.as_user(outsider, "GET", "/auth/api-keys", params=params)
    alices_all = await auth.as_user(alice, "GET", "/auth/api-keys")

    assert ids(by_owner) == ids(by_admin) == {owners_key["id"], alices_key["id"]}
    assert ids(by_alice) == {alices_key["id"]}
    assert by_outsider.status_code == 404
    assert len(alices_all.json()) == 2


async def test_an_owner_revokes_the_teams_keys(auth: AuthClient, admin: LoggedIn) -> None:
    owner, alice = await auth.signup(), await auth.signup()
    team = await auth.create_team(admin, "Research")
    await auth.set_member(admin, team["id"], owner, "owner")
    await auth.set_member(admin, team["id"], alice)
    team_key = await auth.create_key(alice, team_id=team["id"])
    own_key = await auth.create_key(alice)

    revoked = await auth.as_user(owner, "DELETE", f"/auth/api-keys/{team_key['id']}")
    not_theirs = await auth.as_user(owner, "DELETE", f"/auth/api-keys/{own_key['id']}")

    assert revoked.status_code == 204
    assert not_theirs.status_code == 404
    assert (await auth.resolve(team_key["key"])).status_code == 404


async def test_owners_rename_members_cannot_and_names_stay_unique(
    auth: AuthClient, admin: LoggedIn
) -> None:
    owner, member = await auth.signup(), await auth.signup()
    team = await auth.create_team(admin, "Research")
    await auth.create_team(admin, "Taken")
    await auth.set_member(admin, team["id"], owner, "owner")
    await auth.set_member(admin, team["id"], member)
    path = f"/auth/teams/{team['id']}"

    by_member = await auth.as_user(member, "PATCH", path, json={"name": "Mine"})
    taken = await auth.as_user(owner, "PATCH", path, json={"name": "Taken"})
    renamed = await auth.as_user(owner, "PATCH", path, json={"name": "Science"})

    assert by_member.status_code == 403
    assert taken.status_code == 409
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "Science"
    assert (
        "team.update",
        team["id"],
        {"old": {"name": "Research"}, "new": {"name": "Science"}},
    ) in (await _actions(auth))


async def test_deleting_a_team_revokes_its_keys(auth: AuthClient, admin: LoggedIn) -> None:
    owner = await auth.signup()
    team = await auth.create_team(admin, "Research")
    await auth.set_member(admin, team["id"], owner, "owner")
    key = await auth.create_key(owner, team_id=team["id"])
    assert (await auth.resolve(key["key"])).status_code == 200

    by_owner = await auth.as_user(owner, "DELETE", f"/auth/teams/{team['id']}")
    deleted = await auth.as_user(admin, "DELETE", f"/auth/teams/{team['id']}")
    again = await auth.as_user(admin, "DELETE", f"/auth/teams/{team['id']}")

    assert by_owner.status_code == 403
    assert deleted.status_code == 204
    assert again.status_code == 404
    assert await auth.cached(key["key"]) is None
    assert (await auth.resolve(key["key"])).status_code == 404
    assert (await auth.as_user(owner, "GET", "/auth/api-keys")).json() == []
    assert ("team.delete", team["id"], {"name": "Research", "revoked_keys": 1}) in (
        await _actions(auth)
    )


async def test_a_team_key_whose_user_is_no_longer_in_the_team_is_invalid(
    auth: AuthClient, admin: LoggedIn
) -> None:
    """Even if the key escaped revocation (made while its user was being removed)."""
    alice = await auth.signup()
    team = await auth.create_team(admin, "Research")
    await auth.set_member(admin, team["id"], alice)
    key = await auth.create_key(alice, team_id=team["id"])
    async with auth.db() as db:
        member = await repository.get_member(
            db, team_id=uuid.UUID(team["id"]), user_id=uuid.UUID(alice.user_id)
        )
        assert member is not None
        await repository.remove_member(db, member=member)
        await db.commit()

    assert (await auth.resolve(key["key"])).status_code == 404


async def test_services_ask_a_users_role_in_a_team(auth: AuthClient, admin: LoggedIn) -> None:
    owner, outsider = await auth.signup(), await auth.signup()
    team = await auth.create_team(admin, "Research")
    await auth.set_member(admin, team["id"], owner, "owner")

    def path(who: LoggedIn) -> str:
        return f"/internal/teams/{team['id']}/members/{who.user_id}"

    found = await auth.call("GET", path(owner), identity=TELEMETRY)
    from_gateway = await auth.call("GET", path(owner), identity=GATEWAY)
    missing = await auth.call("GET", path(outsider), identity=TELEMETRY)
    nonsense = await auth.call("GET", "/internal/teams/x/members/y", identity=TELEMETRY)
    as_user = await auth.call("GET", path(owner), identity=await auth.identity_of(owner))
    unsigned = await auth.call(
        "GET", path(owner), identity=Identity(sub="anonymous", kind="anonymous", iss="gateway")
    )

    assert found.status_code == from_gateway.status_code == 200
    assert found.json() == {"role": "owner"}
    assert missing.status_code == nonsense.status_code == 404
    assert as_user.status_code == unsigned.status_code == 403


async def test_an_owners_key_scoped_to_calling_models_manages_no_team(
    auth: AuthClient, admin: LoggedIn
) -> None:
    owner, newcomer = await auth.signup(), await auth.signup()
    team = await auth.create_team(admin, "Research")
    await auth.set_member(admin, team["id"], owner, "owner")
    scoped = await auth.key_identity(
        (await auth.create_key(owner, scopes=["inference:invoke"]))["key"]
    )
    path = f"/auth/teams/{team['id']}/members/{newcomer.user_id}"

    refused = await auth.call("PUT", path, identity=scoped, json={"role": "member"})
    seen = await auth.call("GET", f"/auth/teams/{team['id']}", identity=scoped)

    assert refused.status_code == 403
    assert refused.json()["type"] == PROBLEM + "team-owner-required"
    assert seen.status_code == 200
