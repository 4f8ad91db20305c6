"""Issue 3's acceptance, as a new user meets it through the gateway of `make run`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from common.ports import spawn
from devkit import devstack

from .conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Login, RunningPlatform, wait_until_serving

PASSWORD = "a-long-and-unusual-passphrase-77"


def register(platform: RunningPlatform, email: str) -> dict[str, object]:
    response = httpx.post(
        f"{platform.gateway}/auth/register", json={"email": email, "password": PASSWORD}
    )
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def test_register_login_key_openai_sdk_revoke(platform: RunningPlatform, login: Login) -> None:
    user = register(platform, "  Ada@Example.com ")
    assert user["email"] == "ada@example.com"
    assert user["roles"] == ["member"]
    browser = login("ada@example.com", PASSWORD)
    me = browser.get("/auth/me").json()
    assert me["email"] == "ada@example.com"
    assert "inference:invoke" in me["permissions"]

    created = browser.post("/auth/api-keys", json={"name": "sdk"})
    assert created.status_code == 201
    key = created.json()["key"]
    assert key.startswith("sk-")
    assert all("key" not in k for k in browser.get("/auth/api-keys").json())

    with openai.OpenAI(base_url=f"{platform.gateway}/v1", api_key=key, max_retries=0) as sdk:
        models = sdk.models.list()
        assert "local/all-MiniLM-L6-v2" in [m.id for m in models.data]

        assert browser.delete(f"/auth/api-keys/{created.json()['id']}").status_code == 204
        with pytest.raises(openai.AuthenticationError):
            sdk.models.list()


def test_a_keys_cache_default_travels_to_inference_beside_its_policy(
    platform: RunningPlatform, login: Login
) -> None:
    """The signed identity of a key with a cache default (issue 20) is one inference takes:
    its calls are served, and the rest of its policy still applies."""
    register(platform, "cache-default@example.com")
    browser = login("cache-default@example.com", PASSWORD)
    cache = {"mode": "semantic", "ttl_seconds": 600, "threshold": 0.9}
    cached_only = browser.post("/auth/api-keys", json={"name": "c", "cache": cache})
    limited = browser.post(
        "/auth/api-keys", json={"name": "l", "cache": cache, "allowed_models": ["openai/*"]}
    )
    assert cached_only.status_code == limited.status_code == 201, limited.text
    assert cached_only.json()["cache"]["mode"] == "semantic"

    model = "local/all-MiniLM-L6-v2"
    with openai.OpenAI(
        base_url=f"{platform.gateway}/v1", api_key=cached_only.json()["key"], max_retries=0
    ) as sdk:
        assert len(sdk.embeddings.create(model=model, input="hi").data) == 1
    with (
        openai.OpenAI(
            base_url=f"{platform.gateway}/v1", api_key=limited.json()["key"], max_retries=0
        ) as sdk,
        pytest.raises(openai.PermissionDeniedError),
    ):
        sdk.embeddings.create(model=model, input="hi")


def test_cookie_without_csrf_header_is_403(platform: RunningPlatform, login: Login) -> None:
    register(platform, "csrf@example.com")
    browser = login("csrf@example.com", PASSWORD)
    del browser.headers["X-CSRF-Token"]
    response = browser.post("/auth/api-keys", json={"name": "x"})
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    browser.headers["X-CSRF-Token"] = browser.cookies["csrf_token"]
    assert browser.post("/auth/api-keys", json={"name": "x"}).status_code == 201


def test_member_cannot_use_admin_routes(platform: RunningPlatform, login: Login) -> None:
    register(platform, "plain@example.com")
    member = login("plain@example.com", PASSWORD)
    assert member.get("/auth/users").status_code == 403
    assert member.get("/auth/audit").status_code == 403
    admin = login(ADMIN_EMAIL, ADMIN_PASSWORD)
    assert "admin" in admin.get("/auth/me").json()["roles"]
    assert admin.get("/auth/users").status_code == 200


def test_role_change_and_disable_take_effect_at_once(
    platform: RunningPlatform, login: Login
) -> None:
    user = register(platform, "demoted@example.com")
    member = login("demoted@example.com", PASSWORD)
    key = member.post("/auth/api-keys", json={"name": "k"}).json()["key"]
    bearer = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{platform.gateway}/auth/me", headers=bearer).status_code == 200

    admin = login(ADMIN_EMAIL, ADMIN_PASSWORD)
    changed = admin.patch(f"/auth/users/{user['id']}", json={"roles": ["viewer"]})
    assert changed.json()["roles"] == ["viewer"]
    assert member.get("/auth/me").status_code == 401  # that session is gone
    viewer = login("demoted@example.com", PASSWORD)
    assert viewer.post("/v1/collections", json={}).status_code == 403
    key_me = httpx.get(f"{platform.gateway}/auth/me", headers=bearer).json()
    assert "inference:invoke" not in key_me["permissions"]

    admin.patch(f"/auth/users/{user['id']}", json={"disabled": True})
    assert viewer.get("/auth/me").status_code == 401
    assert httpx.get(f"{platform.gateway}/auth/me", headers=bearer).status_code == 401
    login = httpx.post(
        f"{platform.gateway}/auth/login",
        json={"email": "demoted@example.com", "password": PASSWORD},
    )
    assert login.status_code == 403
    events = admin.get("/auth/audit", params={"limit": 200}).json()["data"]
    actions = {e["action"] for e in events if e["target_id"] == user["id"]}
    assert {"user.roles_change", "user.disable"} <= actions


@pytest.fixture
def two_more_gateways(platform: RunningPlatform, tmp_path: Path) -> Iterator[list[str]]:
    """Two more gateway processes in front of the same services and Redis, budget 5/min."""
    env = dict(os.environ)
    env.update(
        {
            "INTERNAL_SIGNING_KEY": platform.signing_key,
            "REDIS_URL": platform.env["REDIS_URL"],
            "GATEWAY_RATE_LIMIT_PER_MINUTE": "5",
            **{f"GATEWAY_{n.upper()}_URL": platform.url(n) for n in devstack.SERVICES},
        }
    )
    logs = [tmp_path / f"gateway-{n}.log" for n in range(2)]
    processes, ports = [], []
    for log in logs:
        with log.open("wb") as stderr:  # the child keeps its own copy
            process, port = spawn(
                [sys.executable, "-m", "gateway"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        processes.append(process)
        ports.append(port)
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, process, log in zip(urls, processes, logs, strict=True):
            wait_until_serving(url, process, log)
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def test_rate_limit_is_shared_by_gateway_processes(
    platform: RunningPlatform, two_more_gateways: list[str]
) -> None:
    # A sliding minute: the burst below may straddle two clock minutes and still counts whole.
    register(platform, "burst@example.com")
    login = httpx.post(
        f"{two_more_gateways[0]}/auth/login",
        json={"email": "burst@example.com", "password": PASSWORD},
    )
    cookie = {"Cookie": f"session={login.cookies['session']}"}
    responses = [httpx.get(f"{two_more_gateways[i % 2]}/auth/me", headers=cookie) for i in range(6)]
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert responses[4].headers["ratelimit-remaining"] == "0"
    limited = responses[5]
    assert limited.headers["ratelimit-limit"] == "5"
    assert int(limited.headers["retry-after"]) >= 1
