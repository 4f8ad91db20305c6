"""Backup and restore (issue 21, deploy/README.md "Backup and restore"): one `pg_dump` per
service schema of a running platform, restored into a fresh database, serves the same
collections, API keys and usage to a second platform with a Redis of its own."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import redis

from common.llm_events import STREAM
from devkit import devstack
from devkit.e2e import (
    MEMBER_PASSWORD,
    PROVIDER_KEY,
    FakeOpenAI,
    Member,
    RunningPlatform,
    start_platform,
)
from devkit.testing import _drop_database, redis_db_url

SCHEMAS = tuple(devstack.SERVICES)  # auth, inference, embeddings, telemetry: one role each
EMAIL = "backup@example.com"
EMBEDDING_MODEL = "openai/text-embedding-3-small"  # the OpenAI fake's, through the member's key
TEXTS = ["the cat sat on the mat", "a dog in the fog", "stock prices fell today"]


def pg(command: str, *args: str) -> None:
    """A client program of the embedded PostgreSQL 18 (pg_dump, pg_restore)."""
    done = subprocess.run(
        [devstack._pg_bin(command), *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{command} {' '.join(args)}:\n{done.stderr}"


def consumed(redis_url: str) -> bool:
    """Every call event in the stream was stored by telemetry (read and acknowledged)."""
    client = redis.Redis.from_url(redis_url)
    try:
        if not client.exists(STREAM):
            return False
        last = client.xinfo_stream(STREAM)["last-generated-id"]
        return any(
            group["last-delivered-id"] == last and group["pending"] == 0
            for group in client.xinfo_groups(STREAM)
        )
    finally:
        client.close()


def wait_for(check: Any, what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        time.sleep(0.1)


def usage(gateway: str, key: str) -> Any:
    response = httpx.get(f"{gateway}/v1/usage", params={"group_by": "model"},
                         headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()["groups"]


def query(gateway: str, key: str, collection_id: str) -> Any:
    response = httpx.post(
        f"{gateway}/v1/collections/{collection_id}/query",
        json={"text": "a cat on a mat", "top_k": 3},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.timeout(300)
def test_a_dump_of_each_schema_restores_a_platform_with_its_keys_collections_and_usage(
    platform: RunningPlatform,
    postgres_admin_url: str,
    redis_url: str,
    fake_openai: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The session's platform is dumped (what a member does there is theirs alone: their
    usage, their collections); the restored copy runs beside it."""
    gateway = platform.gateway
    with Member(platform, EMAIL) as member:
        key = member.key
        member.credential("openai", "fake", fake_openai.url, PROVIDER_KEY)
        bearer = {"Authorization": f"Bearer {key}"}
        created = httpx.post(f"{gateway}/v1/collections", headers=bearer, timeout=30,
                             json={"name": "kept", "model": EMBEDDING_MODEL})  # fmt: skip
        assert created.status_code == 201, created.text
        collection_id = created.json()["id"]
        upserted = httpx.post(
            f"{gateway}/v1/collections/{collection_id}/documents", headers=bearer, timeout=30,
            json={"documents": [{"id": f"t{i}", "text": t, "metadata": {"i": i}}
                                for i, t in enumerate(TEXTS)]},
        )  # fmt: skip
        assert upserted.status_code == 200, upserted.text
        for i in range(3):
            member.sdk.chat.completions.create(
                model="openai/gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}]
            )
        found = query(gateway, key, collection_id)

        # Before the dump: every call event stored (what is still in the stream, or still
        # in inference's send buffer, is in no dump of Postgres), as deploy/README.md says.
        # Three chat calls and three embedding calls (the collection's dimension probe, the
        # upsert, the query) are counted, and nothing is left in the stream.
        def all_stored() -> bool:
            total = sum(group["requests"] for group in usage(gateway, key))
            return total >= 3 + 3 and consumed(platform.env["REDIS_URL"])

        wait_for(all_stored, "six calls counted and the call stream consumed")
        counted = usage(gateway, key)
        assert sum(group["requests"] for group in counted) == 3 + 3, counted
        dumps = tmp_path_factory.mktemp("dumps")
        database = urlsplit(platform.env["DATABASE_URL"]).path.lstrip("/")
        for schema in SCHEMAS:
            # As the schema's own role: it owns everything in it.
            url = devstack.with_database(platform.env["DATABASE_URL"], database, user=schema)
            pg("pg_dump", "--format=custom", f"--schema={schema}",
               f"--file={dumps / schema}.dump", _libpq(url))  # fmt: skip
        session_cookies = dict(member.browser.cookies)

    restored = f"restored_{secrets.token_hex(4)}"
    admin_url = devstack.with_database(postgres_admin_url, restored)
    asyncio.run(devstack.bootstrap_database(admin_url, restored))  # what init.sql does
    try:
        for schema in SCHEMAS:
            pg("pg_restore", "--clean", "--if-exists", "--exit-on-error",
               f"--dbname={_libpq(admin_url)}", f"{dumps / schema}.dump")  # fmt: skip
        second = start_platform(
            {"DATABASE_URL": admin_url, "REDIS_URL": redis_db_url(redis_url, 4)},
            tmp_path_factory.mktemp("restored"),
        )
        try:
            gateway = second.gateway
            # The same key, usage and collection; a session of the first platform (in its
            # Redis) is gone: its user signs in again.
            me = httpx.get(f"{gateway}/auth/me", headers=bearer)
            assert me.status_code == 200, me.text
            assert me.json()["email"] == EMAIL
            assert usage(gateway, key) == counted  # before the query's embedding call
            assert query(gateway, key, collection_id) == found
            old_session = httpx.get(f"{gateway}/auth/me", cookies=session_cookies)
            assert old_session.status_code == 401
            login = httpx.post(f"{gateway}/auth/login",
                               json={"email": EMAIL, "password": MEMBER_PASSWORD})  # fmt: skip
            assert login.status_code == 200, login.text
            # The provider credential decrypts (the same INFERENCE_ENCRYPTION_KEYS).
            with openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0) as sdk:
                sdk.chat.completions.create(
                    model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "back"}]
                )
        finally:
            second.stop()
    finally:
        asyncio.run(_drop_database(postgres_admin_url, restored))


def _libpq(url: str) -> str:
    """A URL libpq's programs take (no SQLAlchemy driver name)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
