"""The first admin: ADMIN_EMAIL / ADMIN_PASSWORD at start-up, `python -m auth create-admin`,
and `service.ensure_admin` underneath both."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlmodel import col

from auth import service
from auth.errors import AdminRefused
from auth.main import create_app
from auth.models import AuditEvent, User
from auth.settings import AuthSettings
from common.ports import spawn
from common.serve import STARTUP_FAILURE
from devkit.testing import RunDatabase, ServiceHarness, running

from .conftest import FAST_ARGON2, PASSWORD, AuthClient, MakeApp

ADMIN_PASSWORD = "Granite-Falcon-Meadow-19"
CONTEXT = service.Context(now=time.time(), ip="", user_agent="test", trace_id=None)


async def _ensure_admin(
    auth: AuthClient, email: str, password: str, *, promote_existing: bool = False
) -> bool:
    async with auth.db() as db:
        changed = await service.ensure_admin(
            auth.runtime, db, CONTEXT, email=email, password=password,
            promote_existing=promote_existing,
        )  # fmt: skip
        await db.commit()
    return changed


async def _users_with(auth: AuthClient, email: str) -> int:
    async with auth.db() as db:
        query = select(func.count()).select_from(User).where(col(User.email) == email)
        return int((await db.execute(query)).scalar_one())


# ---------------------------------------------------------------- service.ensure_admin


async def test_ensure_admin_creates_the_admin_once(auth: AuthClient) -> None:
    assert await _ensure_admin(auth, "root@example.com", ADMIN_PASSWORD) is True
    assert await _ensure_admin(auth, "root@example.com", ADMIN_PASSWORD) is False
    assert await _ensure_admin(auth, "root@example.com", "Some-Other-Passphrase-5") is False

    assert await _users_with(auth, "root@example.com") == 1
    root = await auth.logged_in("root@example.com", ADMIN_PASSWORD)
    assert root.user["roles"] == ["admin"]
    assert "users:manage" in root.user["permissions"]
    assert (await auth.login("root@example.com", "Some-Other-Passphrase-5")).status_code == 401
    events = [e for e in await auth.audit_events() if e.action == "user.bootstrap_admin"]
    assert [e.target_id for e in events] == [root.user_id]


async def test_ensure_admin_refuses_an_existing_account_that_is_not_an_admin(
    auth: AuthClient,
) -> None:
    """Anyone may register ADMIN_EMAIL before the platform first starts: that account was
    made admin, with the password its registrant chose."""
    assert (await auth.register("alice@example.com")).status_code == 201
    before = (await auth.user_row("alice@example.com")).password_hash

    with pytest.raises(AdminRefused, match="ADMIN_PROMOTE_EXISTING=true") as refused:
        await _ensure_admin(auth, "alice@example.com", ADMIN_PASSWORD)

    assert "ADMIN_EMAIL alice@example.com belongs to an existing account" in str(refused.value)
    assert (await auth.user_row("alice@example.com")).password_hash == before
    alice = await auth.logged_in("alice@example.com", PASSWORD)
    assert alice.user["roles"] == ["member"]
    assert not [e for e in await auth.audit_events() if e.action == "user.bootstrap_admin"]


async def test_ensure_admin_promotes_an_existing_user_when_told_to_and_keeps_their_password(
    auth: AuthClient,
) -> None:
    assert (await auth.register("alice@example.com")).status_code == 201
    before = (await auth.user_row("alice@example.com")).password_hash

    promoted = await _ensure_admin(auth, "alice@example.com", ADMIN_PASSWORD, promote_existing=True)

    assert promoted is True

    assert (await auth.user_row("alice@example.com")).password_hash == before
    assert (await auth.login("alice@example.com", ADMIN_PASSWORD)).status_code == 401
    alice = await auth.logged_in("alice@example.com", PASSWORD)
    assert alice.user["roles"] == ["admin", "member"]
    assert await _ensure_admin(auth, "alice@example.com", ADMIN_PASSWORD) is False


async def test_ensure_admin_refuses_a_weak_password(auth: AuthClient) -> None:
    for weak, rule in [
        ("short", "Passwords need at least 12 characters."),
        ("qwerty123456", "This password is too common; choose another."),
        ("root-at-example-2027", "Passwords may not contain the email address."),
    ]:
        with pytest.raises(AdminRefused) as refused:
            await _ensure_admin(auth, "root@example.com", weak)
        assert str(refused.value) == f"ADMIN_PASSWORD is refused by the password policy: {rule}"
        assert weak not in str(refused.value)

    assert await _users_with(auth, "root@example.com") == 0


# ---------------------------------------------------------------- at start-up


async def test_the_app_creates_the_admin_from_its_settings_at_start(make_app: MakeApp) -> None:
    admin = {"admin_email": " Root@Example.com ", "admin_password": SecretStr(ADMIN_PASSWORD)}
    async with make_app(committed=True, **admin) as auth:
        root = await auth.logged_in("root@example.com", ADMIN_PASSWORD)
        assert root.user["roles"] == ["admin"]
        users = await auth.as_user(root, "GET", "/auth/users")
        assert users.status_code == 200

    # A restart (or a second replica) changes nothing.
    async with make_app(committed=True, **admin) as auth:
        assert await _users_with(auth, "root@example.com") == 1
        assert (await auth.login("root@example.com", ADMIN_PASSWORD)).status_code == 200


async def test_admin_email_and_password_come_from_the_environment(
    harness: ServiceHarness, make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_EMAIL", "env-root@example.com")
    monkeypatch.setenv("ADMIN_PASSWORD", ADMIN_PASSWORD)
    settings = AuthSettings(
        database_url=harness.settings.database_url,
        redis_url=harness.settings.redis_url,
        environment="test",
        **FAST_ARGON2,
    )
    assert settings.admin_email == "env-root@example.com"
    assert settings.admin_password is not None

    async with make_app(
        committed=True,
        admin_email=settings.admin_email,
        admin_password=settings.admin_password,
    ) as auth:
        assert (await auth.login("env-root@example.com", ADMIN_PASSWORD)).status_code == 200


async def test_the_app_refuses_to_start_with_a_weak_admin_password(make_app: MakeApp) -> None:
    with pytest.raises(AdminRefused):
        async with make_app(
            committed=True,
            admin_email="root@example.com",
            admin_password=SecretStr("admin123"),
        ):
            pytest.fail("the app started")

    async with make_app() as auth:
        assert await _users_with(auth, "root@example.com") == 0


async def test_the_app_refuses_to_start_when_admin_email_is_someone_elses_account(
    make_app: MakeApp,
) -> None:
    async with make_app(committed=True) as auth:
        assert (await auth.register("early-bird@example.com")).status_code == 201
        admin = {
            "admin_email": "early-bird@example.com",
            "admin_password": SecretStr(ADMIN_PASSWORD),
        }

        def app(**settings: object) -> FastAPI:
            return create_app(auth.settings.model_copy(update={**admin, **settings}))

        with pytest.raises(AdminRefused, match="ADMIN_PROMOTE_EXISTING"):
            async with running(app()):
                pytest.fail("the app started")
        assert (await auth.logged_in("early-bird@example.com")).user["roles"] == ["member"]

        async with running(app(admin_promote_existing=True)):
            pass
        promoted = await auth.logged_in("early-bird@example.com")  # its own password
        assert promoted.user["roles"] == ["admin", "member"]
        # Started again: the admin exists, nothing to refuse.
        async with running(app()):
            pass


async def test_a_refused_start_says_why_in_one_line_without_a_traceback(
    test_database: RunDatabase, redis_url: str
) -> None:
    """`make run` with an ADMIN_PASSWORD the policy refuses stopped with a stack trace."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTH_", "ADMIN_")) and k != "DATABASE_URL"
    }
    env.update(
        AUTH_DATABASE_URL=test_database.url_for("auth"),
        REDIS_URL=redis_url,
        ADMIN_EMAIL="root@example.com",
        ADMIN_PASSWORD="admin123",
        LOG_FORMAT="console",
    )
    process, _ = spawn(
        [sys.executable, "-m", "auth"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await asyncio.to_thread(process.communicate, timeout=60)

    assert process.returncode == STARTUP_FAILURE
    text = output.decode()
    assert "Traceback" not in text
    refusals = [line for line in text.splitlines() if "ADMIN_PASSWORD" in line]
    assert len(refusals) == 1, text
    rule = "ADMIN_PASSWORD is refused by the password policy: Passwords need at least 12"
    assert rule in refusals[0], text
    assert "admin123" not in text


# ---------------------------------------------------------------- the CLI


async def _create_admin_cli(database: RunDatabase, email: str, password: str) -> tuple[int, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTH_", "ADMIN_")) and k != "DATABASE_URL"
    }
    env.update(AUTH_DATABASE_URL=database.url_for("auth"), ADMIN_PASSWORD=password)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "auth",
        "create-admin",
        "--email",
        email,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_the_cli_creates_an_admin_who_can_log_in(
    make_app: MakeApp, test_database: RunDatabase
) -> None:
    async with make_app(committed=True) as auth:
        auth.emails.add("cli-root@example.com")

        code, stderr = await _create_admin_cli(
            test_database, "CLI-Root@example.com", ADMIN_PASSWORD
        )

        assert code == 0, stderr
        assert "admin created" in stderr
        assert ADMIN_PASSWORD not in stderr
        root = await auth.logged_in("cli-root@example.com", ADMIN_PASSWORD)
        assert root.user["roles"] == ["admin"]

        again, stderr = await _create_admin_cli(
            test_database, "cli-root@example.com", ADMIN_PASSWORD
        )
        assert again == 0, stderr
        assert "already an admin" in stderr
        assert await _users_with(auth, "cli-root@example.com") == 1
        async with auth.db() as db:
            events = (
                await db.execute(
                    select(AuditEvent).where(col(AuditEvent.target_id) == root.user_id)
                )
            ).scalars()
            assert [e.action for e in events if e.action == "user.bootstrap_admin"] == [
                "user.bootstrap_admin"
            ]


async def test_the_cli_refuses_a_weak_password(
    make_app: MakeApp, test_database: RunDatabase
) -> None:
    async with make_app(committed=True) as auth:
        auth.emails.add("cli-weak@example.com")

        code, stderr = await _create_admin_cli(test_database, "cli-weak@example.com", "admin")

        assert code == 1
        assert "refused" in stderr
        assert await _users_with(auth, "cli-weak@example.com") == 0


async def test_promoting_an_existing_user_ends_their_sessions(auth: AuthClient) -> None:
    who = await auth.signup("promoted@example.com")
    async with auth.app.state.sessionmaker() as db:
        changed = await service.ensure_admin(
            auth.runtime,
            db,
            service.Context(now=auth.clock(), ip="", user_agent="t", trace_id=None),
            email="promoted@example.com",
            password=ADMIN_PASSWORD,
            promote_existing=True,
        )
        await db.commit()
    assert changed
    # The old session carried member permissions; it is gone, the next login is admin.
    assert await auth.store.touch(who.sid, now=auth.clock()) is None
    again = await auth.logged_in("promoted@example.com")
    assert "admin" in (await auth.identity_of(again)).roles
