"""The audit log: who did what to whom, from where, in which trace; GET /auth/audit."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import asyncpg
import httpx
import pytest

from common.identity import Identity
from devkit.testing import RunDatabase

from .conftest import PASSWORD, AuthClient, LoggedIn, MakeApp

NEW_PASSWORD = "Marmalade-Comet-Harbour-77"
WRONG_PASSWORD = "Wrong-But-Plausible-Guess-31"


class Traced:
    """Calls carrying a W3C traceparent (as the gateway's instrumented client sends), each
    from its own client address, so every audit row can be matched to its request."""

    def __init__(self, auth: AuthClient) -> None:
        self.auth = auth
        self.calls: dict[str, tuple[str, str]] = {}  # label -> (trace id, ip)

    async def __call__(
        self, label: str, method: str, path: str, *, who: LoggedIn | None = None, **kwargs: Any
    ) -> httpx.Response:
        trace_id = secrets.token_hex(16)
        ip = f"192.0.2.{len(self.calls) + 1}"
        self.calls[label] = (trace_id, ip)
        if who is not None:
            kwargs["identity"] = await self.auth.identity_of(who)
        return await self.auth.call(
            method,
            path,
            ip=ip,
            headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
            **kwargs,
        )


async def test_every_security_event_is_recorded_with_actor_target_ip_and_trace(
    make_app: MakeApp,
) -> None:
    # Committed for real, as in production: a failed login's event is kept although the
    # request answers with an error.
    async with make_app(committed=True) as auth:
        admin = await auth.signup("audit-admin@example.com", roles=["admin"])
        call = Traced(auth)
        email = "audit-alice@example.com"
        body = {"email": email, "password": PASSWORD}

        assert (await call("register", "POST", "/auth/register", json=body)).status_code == 201
        wrong = {"email": email, "password": WRONG_PASSWORD}
        failed = await call("login-failure", "POST", "/auth/login", json=wrong)
        assert failed.status_code == 401
        unknown = {"email": "audit-nobody@example.com", "password": WRONG_PASSWORD}
        assert (await call("login-unknown", "POST", "/auth/login", json=unknown)).status_code == 401
        assert (await call("login", "POST", "/auth/login", json=body)).status_code == 200
        alice = await auth.logged_in(email)
        user_id = alice.user_id
        change = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
        changed = await call("password", "POST", "/auth/password", who=alice, json=change)
        assert changed.status_code == 200
        alice = await auth.logged_in(email, NEW_PASSWORD)
        key = await call("key-create", "POST", "/auth/api-keys", who=alice, json={"name": "ci"})
        key_id = key.json()["id"]
        revoked = await call("key-revoke", "DELETE", f"/auth/api-keys/{key_id}", who=alice)
        assert revoked.status_code == 204
        alice = await auth.logged_in(email, NEW_PASSWORD)
        assert (await call("logout", "POST", "/auth/logout", who=alice)).status_code == 204
        users = f"/auth/users/{user_id}"
        roles = await call("roles", "PATCH", users, who=admin, json={"roles": ["viewer"]})
        assert roles.status_code == 200
        disable = await call("disable", "PATCH", users, who=admin, json={"disabled": True})
        assert disable.status_code == 200
        new_login = {"email": email, "password": NEW_PASSWORD}
        refused = await call("login-disabled", "POST", "/auth/login", json=new_login)
        assert refused.status_code == 403

        events = {
            (e.trace_id, e.action, e.outcome): e
            for e in await auth.audit_events()
            if e.trace_id in {trace_id for trace_id, _ in call.calls.values()}
        }

        def event(label: str, action: str, outcome: str = "success") -> Any:
            trace_id, ip = call.calls[label]
            found = events[(trace_id, action, outcome)]
            assert found.ip == ip
            assert found.user_agent == "pytest-browser"
            assert found.occurred_at is not None
            return found

        e = event("register", "user.register")
        assert (str(e.actor_id), e.target_type, e.target_id) == (user_id, "user", user_id)
        e = event("login-failure", "auth.login", "failure")
        assert (str(e.actor_id), e.target_type, e.target_id) == (user_id, "user", user_id)
        assert e.detail["reason"] == "invalid_credentials"
        assert failed.json()["trace_id"] == call.calls["login-failure"][0]
        e = event("login-unknown", "auth.login", "failure")
        assert e.actor_id is None
        assert e.target_id is None
        e = event("login", "auth.login")
        assert (str(e.actor_id), e.target_type) == (user_id, "session")
        e = event("password", "user.password_change")
        assert (str(e.actor_id), e.target_type, e.target_id) == (user_id, "user", user_id)
        e = event("key-create", "api_key.create")
        assert (str(e.actor_id), e.target_type, e.target_id) == (user_id, "api_key", key_id)
        assert e.detail == {"name": "ci"}
        e = event("key-revoke", "api_key.revoke")
        assert (str(e.actor_id), e.target_type, e.target_id) == (user_id, "api_key", key_id)
        e = event("logout", "auth.logout")
        assert (str(e.actor_id), e.target_type, e.target_id) == (user_id, "session", alice.sid[:16])
        e = event("roles", "user.roles_change")
        assert (str(e.actor_id), e.target_type, e.target_id) == (admin.user_id, "user", user_id)
        assert e.detail == {"old": ["member"], "new": ["viewer"]}
        e = event("disable", "user.disable")
        assert (str(e.actor_id), e.target_type, e.target_id) == (admin.user_id, "user", user_id)
        e = event("login-disabled", "auth.login", "failure")
        assert e.detail["reason"] == "disabled"

        # And an administrator reads them through the API.
        listed = await auth.as_user(admin, "GET", "/auth/audit", params={"actor_id": user_id})
        assert listed.status_code == 200
        actions = {(item["action"], item["outcome"]) for item in listed.json()["data"]}
        assert {("auth.login", "failure"), ("user.password_change", "success")} <= actions
        assert all(item["actor_id"] == user_id for item in listed.json()["data"])


async def test_the_audit_log_pages_newest_first_without_gaps_or_repeats(
    auth: AuthClient, admin: LoggedIn
) -> None:
    for n in range(3):
        await auth.signup(f"user{n}@example.com")
    all_ids = [e.id for e in await auth.audit_events()]
    assert len(all_ids) >= 8

    seen: list[int] = []
    cursor: str | None = None
    for _ in range(20):
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        response = await auth.as_user(admin, "GET", "/auth/audit", params=params)
        assert response.status_code == 200
        page = response.json()
        assert len(page["data"]) <= 3
        seen += [item["id"] for item in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == sorted(set(seen), reverse=True)
    assert set(seen) == set(all_ids)

    logins = await auth.as_user(admin, "GET", "/auth/audit", params={"action": "auth.login"})
    assert {item["action"] for item in logins.json()["data"]} == {"auth.login"}
    assert len(logins.json()["data"]) == 4  # the admin and three users


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(["x"], id="not-a-number"),
        pytest.param([True], id="a-boolean"),
        pytest.param([1.5], id="a-fraction"),
        pytest.param([0], id="zero"),
        pytest.param([-1], id="negative"),
        pytest.param([10**30], id="beyond-bigint"),
        pytest.param([1, 2], id="too-long"),
    ],
)
async def test_a_forged_audit_cursor_is_refused(
    auth: AuthClient, admin: LoggedIn, payload: list[Any]
) -> None:
    cursor = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")

    response = await auth.as_user(admin, "GET", "/auth/audit", params={"cursor": cursor})

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:llm-platform:problem:invalid-cursor"


async def test_only_admins_read_the_audit_log(auth: AuthClient, admin: LoggedIn) -> None:
    member = await auth.signup("alice@example.com")
    viewer = await auth.signup("vera@example.com", roles=["viewer"])
    narrowed = await auth.create_key(admin, scopes=["users:manage", "models:read"])
    key_identity = await auth.key_identity(narrowed["key"])
    anonymous = Identity(sub="anonymous", kind="anonymous", iss="gateway")

    for who in (member, viewer):
        response = await auth.as_user(who, "GET", "/auth/audit")
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
    assert (await auth.call("GET", "/auth/audit", identity=key_identity)).status_code == 403
    assert (await auth.call("GET", "/auth/audit", identity=anonymous)).status_code == 401
    assert (await auth.as_user(admin, "GET", "/auth/audit")).status_code == 200


async def test_no_password_or_secret_ever_reaches_the_audit_log(
    make_app: MakeApp, test_database: RunDatabase
) -> None:
    marker = secrets.token_hex(4)
    first, second, weak, wrong = (
        f"First-{marker}-Passphrase",
        f"Second-{marker}-Passphrase",
        f"{marker}x",
        f"Wrong-{marker}-Passphrase",
    )
    async with make_app(committed=True) as auth:
        email = f"secret-{marker}@example.com"
        assert (await auth.register(email, first)).status_code == 201
        assert (await auth.register(f"weak-{marker}@example.com", weak)).status_code == 422
        assert (await auth.login(email, wrong)).status_code == 401
        assert (await auth.login(f"nobody-{marker}@example.com", wrong)).status_code == 401
        who = await auth.logged_in(email, first)
        bad_change = {"current_password": wrong, "new_password": second}
        assert (
            await auth.as_user(who, "POST", "/auth/password", json=bad_change)
        ).status_code == 401
        change = {"current_password": first, "new_password": second}
        assert (await auth.as_user(who, "POST", "/auth/password", json=change)).status_code == 200
        who = await auth.logged_in(email, second)
        key = await auth.create_key(who, name=f"key-{marker}")
        await auth.as_user(who, "DELETE", f"/auth/api-keys/{key['id']}")
        await auth.as_user(who, "POST", "/auth/logout")

        conn = await asyncpg.connect(test_database.url_for("auth"))
        try:
            rows = [
                r["row"] for r in await conn.fetch("SELECT a::text AS row FROM auth.audit_event a")
            ]
        finally:
            await conn.close()

    mine = [row for row in rows if who.user_id in row]
    assert len(mine) >= 7
    dump = "\n".join(rows)
    for secret in (first, second, weak, wrong, who.token, who.csrf, key["key"]):
        assert secret not in dump
    assert who.sid not in dump  # only a short prefix of the session id, never the id
