"""A change of access (key revoke, user disable, role change) racing a credential check.

The gateway caches what a key stands for (auth:api-key:<hash>, for up to 300 s), filled by
auth's resolve, and a session holds the roles and permissions of its login. A resolve or a
login running while a change of access is in flight must not leave the old state in Redis:
the next request sees the change. Each race is made
deterministic with a table lock held by the test: one side is stopped at a chosen point,
the other runs as far as it can, then the lock is released.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from common.principals import API_KEY_INVALID, API_KEY_PREFIX, secret_hash
from devkit.testing import RunDatabase

from .conftest import AuthClient, LoggedIn, MakeApp

VIEWER_PERMISSIONS = ["api_keys:manage", "embeddings:read", "models:read", "telemetry:read_own"]
PATIENCE_SECONDS = 60  # only ever reached if the race itself hangs


async def _waiting_on_locks(conn: asyncpg.Connection) -> int:
    """Backends of this database waiting for a lock (the app's transactions)."""
    # Inside a transaction the statistics views answer from one snapshot: take a new one.
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return count


async def _until(done: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(PATIENCE_SECONDS):
        # Postgres's lock waits are seen by asking it: there is no event to wait for.
        while not await done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def _race(
    database: RunDatabase,
    lock: str,
    first: Awaitable[httpx.Response],
    then: Awaitable[httpx.Response],
) -> tuple[httpx.Response, httpx.Response]:
    """Run `first` until it waits for the table lock the test holds (`lock`), then `then`
    until it ends or waits for a lock too, then let go: both answers, in that order."""
    conn = await asyncpg.connect(database.url_for("auth"))
    try:
        held = conn.transaction()
        await held.start()
        await conn.execute(lock)
        one = asyncio.create_task(first)
        await _until(lambda: _settled(conn, one, waiting=1))
        assert not one.done(), f"it did not wait for {lock!r}"
        two = asyncio.create_task(then)
        await _until(lambda: _settled(conn, two, waiting=2))
        await held.rollback()
        return await one, await two
    finally:
        await conn.close()


async def _settled(conn: asyncpg.Connection, task: asyncio.Task[Any], *, waiting: int) -> bool:
    """Whether `task` ended, or `waiting` transactions wait for a lock (it is one of them)."""
    return task.done() or await _waiting_on_locks(conn) >= waiting


async def _next_use(auth: AuthClient, key: str) -> tuple[int, list[str]]:
    """What the gateway would decide on the key's next use: from its cache, else from a
    resolve (which fills it). 404: refused."""
    cached = await auth.redis.get(API_KEY_PREFIX + secret_hash(key))
    if cached == API_KEY_INVALID:
        return 404, []
    if cached is not None:
        return 200, json.loads(cached)["permissions"]
    response = await auth.resolve(key)
    return response.status_code, response.json().get("permissions", [])


@dataclass(frozen=True)
class Parties:
    admin: LoggedIn
    owner: LoggedIn
    key: dict[str, Any]


Change = Callable[[AuthClient, Parties], Awaitable[httpx.Response]]


async def _revoke(auth: AuthClient, p: Parties) -> httpx.Response:
    return await auth.as_user(p.owner, "DELETE", f"/auth/api-keys/{p.key['id']}")


async def _disable(auth: AuthClient, p: Parties) -> httpx.Response:
    path = f"/auth/users/{p.owner.user_id}"
    return await auth.as_user(p.admin, "PATCH", path, json={"disabled": True})


async def _demote(auth: AuthClient, p: Parties) -> httpx.Response:
    path = f"/auth/users/{p.owner.user_id}"
    return await auth.as_user(p.admin, "PATCH", path, json={"roles": ["viewer"]})


CHANGES = [
    pytest.param(_revoke, (404, []), id="revoke"),
    pytest.param(_disable, (404, []), id="disable"),
    pytest.param(_demote, (200, VIEWER_PERMISSIONS), id="role-change"),
]


async def _parties(auth: AuthClient) -> Parties:
    tag = uuid.uuid4().hex[:8]
    admin = await auth.signup(f"race-admin-{tag}@example.com", roles=["admin"])
    owner = await auth.signup(f"race-{tag}@example.com")
    return Parties(admin, owner, await auth.create_key(owner))


@pytest.mark.parametrize(("change", "after"), CHANGES)
async def test_a_check_during_the_change_does_not_cache_the_old_state(
    make_app: MakeApp, test_database: RunDatabase, change: Change, after: tuple[int, list[str]]
) -> None:
    """The change is made but not committed (its audit event waits for the test's lock on
    that table) when the key is checked: the check must not leave the old state cached."""
    async with make_app(committed=True) as auth:
        parties = await _parties(auth)
        key = parties.key["key"]
        no_inserts = "LOCK TABLE auth.audit_event IN SHARE MODE"

        changed, _ = await _race(
            test_database, no_inserts, change(auth, parties), auth.resolve(key)
        )

        assert changed.status_code in (200, 204), changed.text
        assert await _next_use(auth, key) == after


@pytest.mark.parametrize(("change", "after"), CHANGES)
async def test_a_check_that_read_before_the_change_does_not_cache_the_old_state(
    make_app: MakeApp, test_database: RunDatabase, change: Change, after: tuple[int, list[str]]
) -> None:
    """The check has read the key and its user, then waits (for the test's lock on the
    role permissions) while the change is made: its answer, the old state, must not
    outlive the change in the cache."""
    async with make_app(committed=True) as auth:
        parties = await _parties(auth)
        key = parties.key["key"]
        no_reads = "LOCK TABLE auth.role_permission IN ACCESS EXCLUSIVE MODE"

        checked, changed = await _race(
            test_database, no_reads, auth.resolve(key), change(auth, parties)
        )

        assert checked.status_code == 200, checked.text  # it answered for before the change
        assert changed.status_code in (200, 204), changed.text
        assert await _next_use(auth, key) == after


@pytest.mark.parametrize(
    "change", [pytest.param(_disable, id="disable"), pytest.param(_demote, id="role-change")]
)
async def test_a_login_that_read_before_the_change_leaves_no_session_of_the_old_state(
    make_app: MakeApp, test_database: RunDatabase, change: Change
) -> None:
    """A login has checked the password and reads the roles (waiting for the test's lock
    on the role permissions) when the user is disabled or demoted: the session it makes
    with the old state must not outlive the change, which ends every session."""
    async with make_app(committed=True) as auth:
        parties = await _parties(auth)
        no_reads = "LOCK TABLE auth.role_permission IN ACCESS EXCLUSIVE MODE"

        logged_in, changed = await _race(
            test_database, no_reads, auth.login(parties.owner.user["email"]), change(auth, parties)
        )

        assert logged_in.status_code == 200, logged_in.text  # for before the change
        assert changed.status_code == 200, changed.text
        assert await auth.store.list_for_user(parties.owner.user_id) == []
