"""Teams in the usage views: the team of each call, `team=` on /v1/usage and /v1/calls,
`group_by=key|team`, who sees what (an owner all of their team's calls, a member their
own, auth asked each time, 503 when it cannot say), and the per-day cache keyed so that
no view ever reads another's rows."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from common.identity import Identity
from devkit.testing import ServiceHarness, asgi_client

from .conftest import TeamRoles, admin, as_json, call, member

Client = Callable[[Identity], httpx.AsyncClient]
INFERENCE = Identity(sub="service:inference", kind="service", iss="inference")
DAY = timedelta(days=1)


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def get(client: Client, who: Identity, path: str, **params: Any) -> httpx.Response:
    async with client(who) as http:
        return await http.get(path, params=params)


async def calls_of(client: Client, who: Identity, **params: Any) -> list[dict[str, Any]]:
    response = await get(client, who, "/v1/calls", limit=200, **params)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def groups(client: Client, who: Identity, **params: Any) -> list[tuple[Any, int]]:
    response = await get(client, who, "/v1/usage", **params)
    assert response.status_code == 200, response.text
    return [(g["key"], g["requests"]) for g in response.json()["groups"]]


async def report(client: Client, events: list[dict[str, Any]]) -> None:
    """As a platform service (inference's own calls): user, key and team kept as sent."""
    async with client(INFERENCE) as http:
        response = await http.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text


def team_call(
    who: Identity, team: uuid.UUID | None, key: str | None, **fields: Any
) -> dict[str, Any]:
    event = as_json(call(who, api_key_id=key, **fields))
    event["team_id"] = str(team) if team else None
    return event


class World:
    """Two teams. Alice owns X, Bob is a member of X, Carol a member of Y only."""

    def __init__(self, team_roles: TeamRoles) -> None:
        self.x, self.y = uuid.uuid4(), uuid.uuid4()
        self.alice, self.bob, self.carol = member(), member(), member()
        self.alice_key, self.bob_key = f"key-{uuid.uuid4()}", f"key-{uuid.uuid4()}"
        team_roles.set(self.x, self.alice, "owner")
        team_roles.set(self.x, self.bob, "member")
        team_roles.set(self.y, self.carol, "member")

    def calls(self, **fields: Any) -> list[dict[str, Any]]:
        """Alice 2 in X, Bob 3 in X and 1 personal, Carol 4 in Y, Alice 1 personal."""
        return [
            *(team_call(self.alice, self.x, self.alice_key, **fields) for _ in range(2)),
            *(team_call(self.bob, self.x, self.bob_key, **fields) for _ in range(3)),
            team_call(self.bob, None, f"key-{uuid.uuid4()}", **fields),
            *(team_call(self.carol, self.y, f"key-{uuid.uuid4()}", **fields) for _ in range(4)),
            team_call(self.alice, None, None, **fields),
        ]


async def test_an_owner_sees_all_of_the_teams_calls_and_a_member_only_their_own(
    client: Client, team_roles: TeamRoles
) -> None:
    w = World(team_roles)
    await report(client, w.calls())
    x = str(w.x)

    # Alice owns X: every call of X, whoever made it, each row with its key and team.
    rows = await calls_of(client, w.alice, team=x)
    assert sorted(r["user_id"] for r in rows) == sorted([w.alice.sub] * 2 + [w.bob.sub] * 3)
    assert {r["team_id"] for r in rows} == {x}
    assert {r["api_key_id"] for r in rows} == {w.alice_key, w.bob_key}
    assert await groups(client, w.alice, team=x, group_by="user") == [
        (w.bob.sub, 3),
        (w.alice.sub, 2),
    ]
    assert await groups(client, w.alice, team=x, group_by="key") == [
        (w.bob_key, 3),
        (w.alice_key, 2),
    ]
    assert await groups(client, w.alice, team=x, group_by="team") == [(x, 5)]
    # ... and one teammate's calls in it, but not the teammate's calls outside it.
    assert await groups(client, w.alice, team=x, user=w.bob.sub, group_by="key") == [(w.bob_key, 3)]
    # Without team=, an owner is a user like any other: her own calls.
    assert len(await calls_of(client, w.alice)) == 3

    # Bob is a member of X: his own calls in X, never Alice's.
    rows = await calls_of(client, w.bob, team=x)
    assert [r["user_id"] for r in rows] == [w.bob.sub] * 3
    assert await groups(client, w.bob, team=x, group_by="user") == [(w.bob.sub, 3)]
    assert await groups(client, w.bob, group_by="team") == [(x, 3), (None, 1)]
    for path in ("/v1/calls", "/v1/usage"):
        for params in ({"team": x, "user": w.alice.sub}, {"user": w.alice.sub}):
            refused = await get(client, w.bob, path, **params)
            assert refused.status_code == 403, refused.text
            assert refused.headers["content-type"] == "application/problem+json"

    # Carol is in another team: nothing of X; Alice is no owner of Y: nothing of Y.
    assert await calls_of(client, w.carol, team=x) == []
    assert await calls_of(client, w.alice, team=str(w.y)) == []

    # An admin sees every team's calls, and never needs auth for it.
    asked = len(team_roles.asked_by)
    root = admin()
    assert len(await calls_of(client, root, team=x)) == 5
    assert ((x, 5), (str(w.y), 4)) == tuple(
        g for g in await groups(client, root, group_by="team") if g[0] in (x, str(w.y))
    )
    assert len(team_roles.asked_by) == asked
    # Auth was asked as this service, for the requests that named a team only.
    assert set(team_roles.asked_by) == {"service:telemetry"}


async def test_an_owner_demoted_sees_only_their_own_calls_at_once(
    client: Client, team_roles: TeamRoles
) -> None:
    w = World(team_roles)
    await report(client, w.calls())
    assert len(await calls_of(client, w.alice, team=str(w.x))) == 5
    team_roles.set(w.x, w.alice, "member")
    assert len(await calls_of(client, w.alice, team=str(w.x))) == 2
    team_roles.set(w.x, w.alice, None)  # left the team: her calls made in it are still hers
    assert len(await calls_of(client, w.alice, team=str(w.x))) == 2


async def test_when_auth_cannot_say_a_team_view_is_refused_never_widened(
    client: Client, team_roles: TeamRoles, harness: ServiceHarness, refused_port: int
) -> None:
    w = World(team_roles)
    await report(client, w.calls())
    x = str(w.x)

    for status in (500, 401, 200):  # failing, refusing us, answering nonsense
        team_roles.answer_status = status
        for path in ("/v1/calls", "/v1/usage"):
            refused = await get(client, w.alice, path, team=x)
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["type"] == "urn:llm-platform:problem:auth-unavailable"
            assert refused.headers["retry-after"] == "1"
    team_roles.answer_status = None

    async with harness.app(
        consumer_enabled=False,
        usage_cache_refresh_seconds=0,
        auth_url=f"http://127.0.0.1:{refused_port}",
    ) as down:

        async def ask(who: Identity, path: str, **params: Any) -> httpx.Response:
            async with asgi_client(down, identity=who, key=harness.key()) as http:
                return await http.get(path, params=params)

        for path in ("/v1/calls", "/v1/usage"):
            refused = await ask(w.alice, path, team=x)
            assert refused.status_code == 503, refused.text
            assert "auth did not answer" in refused.json()["detail"]
            # What needs no team role is served as ever.
            assert (await ask(w.alice, path)).status_code == 200
            assert (await ask(admin(), path, team=x)).status_code == 200


async def test_the_per_day_cache_never_serves_one_view_anothers_days(
    client: Client, team_roles: TeamRoles, app: FastAPI
) -> None:
    """Each view's closed days are cached under a key naming every filter it applies (the
    user it is restricted to and the team): a member's view of the team, the owner's, the
    owner's own, everyone's. Each cached row is then made unmistakable, and each view must
    still answer its own figures, or its own unmistakable ones."""
    w = World(team_roles)
    day = datetime.now(UTC).date() - 2 * DAY
    start = midnight(day)
    await report(client, w.calls(occurred_at=(start + DAY / 2).timestamp()))
    x = str(w.x)
    window = {  # the exact percentiles: the per-day cache answers them
        "group_by": "day",
        "percentiles": "exact",
        "from": start.isoformat(),
        "to": (start + DAY).isoformat(),
    }
    views: dict[str, tuple[Identity, dict[str, str], int]] = {
        "bob in X": (w.bob, {"team": x}, 3),
        "alice owning X": (w.alice, {"team": x}, 5),
        "alice's own": (w.alice, {}, 3),
        "bob's own": (w.bob, {}, 4),
        "carol in X": (w.carol, {"team": x}, 0),
    }

    async def requests(view: str) -> int:
        who, params, _ = views[view]
        found = await groups(client, who, **window, **params)
        assert [key for key, _ in found] in ([], [day.isoformat()]), found
        return found[0][1] if found else 0

    async def poison(view_key: str, value: int) -> None:
        async with app.state.sessionmaker() as session:  # the API's (rolled-back) transaction
            await session.execute(
                text("UPDATE telemetry.usage_day SET requests = :v WHERE scope = :s AND day = :d"),
                {"v": value, "s": view_key, "d": day},
            )
            await session.commit()

    async def cached_scopes() -> dict[str, int]:
        async with app.state.sessionmaker() as session:
            rows = await session.execute(
                text("SELECT scope, requests FROM telemetry.usage_day WHERE day = :d"), {"d": day}
            )
            return {row.scope: row.requests for row in rows}

    for view, (_, _, expected) in views.items():
        before = set(await cached_scopes())
        assert await requests(view) == expected, view
        new = set(await cached_scopes()) - before
        assert len(new) == (1 if expected else 0), (view, new)  # cached under a key of its own
        for key in new:
            await poison(key, 900_000 + len(before))
    # Every view now reads its own (poisoned) row, never another's.
    poisoned = {v: await requests(v) for v in views}
    assert len({n for n in poisoned.values() if n}) == 4, poisoned
    assert all(n >= 900_000 for n in poisoned.values() if n), poisoned
    assert poisoned["carol in X"] == 0
    # The owner's view of X and an admin's are the same calls, so they share their days.
    assert await groups(client, admin(), **window, team=x) == [
        (day.isoformat(), poisoned["alice owning X"])
    ]


async def test_reported_calls_belong_to_the_team_of_the_key_used(
    client: Client, team_roles: TeamRoles
) -> None:
    """A user's own events take the key and team of the credential that reports them, as
    the user and key do: a member cannot file calls under another team."""
    team, elsewhere = uuid.uuid4(), uuid.uuid4()
    who = member()
    team_roles.set(team, who, "owner")
    by_key = Identity(sub=who.sub, kind="api_key", iss="gateway", kid="key-1", team=str(team),
                      permissions=who.permissions)  # fmt: skip
    by_session = Identity(sub=who.sub, kind="user", iss="gateway", permissions=who.permissions)
    for reporter in (by_key, by_session):
        event = team_call(who, elsewhere, "key-forged")
        async with client(reporter) as http:
            response = await http.post("/v1/events", json={"events": [event]})
        assert response.status_code == 200, response.text
    rows = await calls_of(client, who)
    assert sorted((r["api_key_id"] or "", r["team_id"] or "") for r in rows) == [
        ("", ""),
        ("key-1", str(team)),
    ]
    assert await calls_of(client, who, team=str(elsewhere)) == []
