"""Issue 18's acceptance through the gateway of `make run`: teams, budgets that hold under
concurrency and streaming across replicas, per-key model lists, Redis loss, owner rights.

The platform here is `make run` with a price for the fake's models, and beside it a second
inference process behind a second gateway (same Postgres, same Redis): the calls of one
key are spread over both, so a budget that held per replica only would be overshot.

Every call asks the fake OpenAI server "hi": 1 prompt token, 2 completion tokens
("echo: hi"), so at the prices below each call costs C = 0.001 + 2 * 0.0045 = 0.010 USD.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import openai
import psutil
import pytest
import redis

from common.policy import period_end
from common.ports import spawn

from .conftest import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    MEMBER_PASSWORD,
    PROVIDER_KEY,
    FakeOpenAI,
    RunningPlatform,
    platform_on,
    wait_until_serving,
)

C = Decimal("0.010")
PRICES = {
    "openai/mock-a": {"input": 1000, "output": 4500},
    "openai/mock-b": {"input": 1000, "output": 4500},
}
# Nothing but the budget may refuse these calls: the per-user limits of `make run` are off.
UNLIMITED = {
    "GATEWAY_RATE_LIMIT_MODEL_PER_MINUTE": "0",
    "GATEWAY_RATE_LIMIT_PER_MINUTE": "0",
    "GATEWAY_UPSTREAM_MAX_CONNECTIONS_PER_USER": "0",
    "INFERENCE_MAX_CONCURRENT_STREAMS": "0",
}
HI = [{"role": "user", "content": "hi"}]


@dataclass
class Governed:
    platform: RunningPlatform
    gateways: list[str]  # the platform's gateway, and the second one (second inference)
    admin: httpx.Client
    browsers: list[httpx.Client] = field(default_factory=list)

    def sign_in_admin(self) -> None:
        """(Again: a Redis flush ends every session.)"""
        login = self.admin.post(
            "/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        assert login.status_code == 200, login.text
        self.admin.headers["X-CSRF-Token"] = login.json()["csrf_token"]

    def browser(self, email: str) -> httpx.Client:
        """A member (registered if new), signed in through the platform's gateway."""
        gateway = self.platform.gateway
        httpx.post(f"{gateway}/auth/register", json={"email": email, "password": MEMBER_PASSWORD})
        client = httpx.Client(base_url=gateway, timeout=30)
        self.browsers.append(client)
        login = client.post("/auth/login", json={"email": email, "password": MEMBER_PASSWORD})
        assert login.status_code == 200, login.text
        client.headers["X-CSRF-Token"] = login.json()["csrf_token"]
        return client


def _process_env(platform: RunningPlatform, service: str) -> dict[str, str]:
    """The environment `make run` gave one of its services (its database role included)."""
    for child in platform.descendants():
        try:
            if child.cmdline()[-2:] == ["devkit.keeper", service]:
                return dict(child.environ())
        except psutil.Error:
            continue
    raise AssertionError(f"no {service} process under make run")


@pytest.fixture(scope="module")
def governed(
    postgres_admin_url: str,
    redis_url: str,
    fake_openai: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Governed]:
    log_dir = tmp_path_factory.mktemp("governance")
    env = {"INFERENCE_PRICES": json.dumps(PRICES), **UNLIMITED}
    with platform_on(postgres_admin_url, redis_url, log_dir, redis_db=3, env=env) as platform:
        inference_env = _process_env(platform, "inference")
        inference_env.pop("INFERENCE_PORT", None)
        inference_log = log_dir / "inference-2.log"
        with inference_log.open("wb") as stderr:
            second_inference, inference_port = spawn(
                [sys.executable, "-m", "inference"], env=inference_env,
                stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        gateway_env = dict(os.environ)
        gateway_env.update(
            {
                "INTERNAL_SIGNING_KEY": platform.signing_key,
                "REDIS_URL": platform.env["REDIS_URL"],
                **UNLIMITED,
                **{f"GATEWAY_{n.upper()}_URL": platform.url(n) for n in ("auth", "embeddings")},
                "GATEWAY_TELEMETRY_URL": platform.url("telemetry"),
                "GATEWAY_INFERENCE_URL": f"http://127.0.0.1:{inference_port}",
            }
        )
        gateway_log = log_dir / "gateway-2.log"
        with gateway_log.open("wb") as stderr:
            second_gateway, gateway_port = spawn(
                [sys.executable, "-m", "gateway"], env=gateway_env,
                stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        second = f"http://127.0.0.1:{gateway_port}"
        admin = httpx.Client(base_url=platform.gateway, timeout=30)
        governed = Governed(platform, [platform.gateway, second], admin)
        try:
            wait_until_serving(
                f"http://127.0.0.1:{inference_port}", second_inference, inference_log
            )
            wait_until_serving(second, second_gateway, gateway_log)
            governed.sign_in_admin()
            shared = admin.post(
                "/v1/providers/credentials",
                json={"provider": "openai", "name": "fake", "api_key": PROVIDER_KEY,
                      "base_url": fake_openai.url, "shared": True},
            )  # fmt: skip
            assert shared.status_code == 201, shared.text
            yield governed
        finally:
            for client in (admin, *governed.browsers):
                client.close()
            for process in (second_gateway, second_inference):
                process.terminate()
                process.wait(15)


def new_key(browser: httpx.Client, **fields: Any) -> tuple[str, str]:
    created = browser.post("/auth/api-keys", json={"name": "governed", **fields})
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["key"]


def user_id(browser: httpx.Client) -> str:
    me: str = browser.get("/auth/me").json()["id"]
    return me


@dataclass
class Hammered:
    succeeded: int
    refused: list[httpx.Response]


async def _hammer(gateways: list[str], keys: list[str], *, clients: int, each: int) -> Hammered:
    """`clients` concurrent clients, spread over the gateways and keys, each sending `each`
    calls: streamed or not, with max_tokens or without, at random."""
    succeeded = 0
    refused: list[httpx.Response] = []
    rng = random.Random(18)

    async def client(n: int) -> None:
        nonlocal succeeded
        base = gateways[n % len(gateways)]
        key = keys[n % len(keys)]
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
            for _ in range(each):
                body: dict[str, Any] = {"model": "openai/mock-a", "messages": HI}
                if rng.random() < 0.5:
                    body["max_tokens"] = 5
                if rng.random() < 0.5:
                    body["stream"] = True
                    async with http.stream("POST", "/v1/chat/completions", json=body) as answer:
                        text = (await answer.aread()).decode()
                        if answer.status_code == 200:
                            assert "echo: hi" in "".join(
                                json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                                for line in text.splitlines()
                                if line.startswith("data: {") and '"choices":[{' in line
                            ), text
                            succeeded += 1
                        else:
                            status, headers = answer.status_code, answer.headers
                            refused.append(httpx.Response(status, headers=headers, text=text))
                    continue
                answer = await http.post("/v1/chat/completions", json=body)
                if answer.status_code == 200:
                    assert answer.json()["choices"][0]["message"]["content"] == "echo: hi"
                    succeeded += 1
                else:
                    refused.append(answer)

    await asyncio.gather(*(client(n) for n in range(clients)))
    return Hammered(succeeded, refused)


def hammer(governed: Governed, keys: list[str], *, clients: int = 50, each: int = 3) -> Hammered:
    return asyncio.run(_hammer(governed.gateways, keys, clients=clients, each=each))


def recorded_cost(governed: Governed, group_by: str, key: str, *, calls: int) -> Decimal:
    """The cost telemetry recorded for one group, once it has all `calls` calls."""
    deadline = time.monotonic() + 30
    while True:
        usage = governed.admin.get("/v1/usage", params={"group_by": group_by}).json()
        group = next((g for g in usage["groups"] if g["key"] == key), None)
        if group is not None and group["requests"] - group["errors"] >= calls:
            assert group["requests"] - group["errors"] == calls, group
            return Decimal(group["cost_usd"])
        assert time.monotonic() < deadline, usage
        time.sleep(0.2)


def assert_budget_refusals(refused: list[httpx.Response], scope: str) -> None:
    assert refused, "the budget never refused a call"
    for answer in refused:
        assert answer.status_code == 429, answer.text
        problem = answer.json()
        assert problem["type"].endswith(":budget-exceeded"), problem
        assert problem["scope"] == scope, problem
        if problem["budget_resets_at"] is not None or "in flight" in problem["detail"]:
            assert int(answer.headers["retry-after"]) >= 1
        else:  # a total budget never starts again
            assert "retry-after" not in answer.headers


def test_a_key_budget_holds_under_50_concurrent_clients_across_replicas(
    governed: Governed,
) -> None:
    member = governed.browser("spender@example.com")
    budget = Decimal("0.25")
    key_id, key = new_key(member, max_budget_usd=str(budget), budget_period="day")

    started = datetime.now(UTC)
    result = hammer(governed, [key])
    resets = {period_end("day", started), period_end("day", datetime.now(UTC))}

    spent = recorded_cost(governed, "key", key_id, calls=result.succeeded)
    assert spent <= budget + C
    assert result.succeeded >= int(budget / C) - 1
    assert_budget_refusals(result.refused, "key")
    listed = next(k for k in member.get("/auth/api-keys").json() if k["id"] == key_id)
    assert Decimal(listed["spend_usd"]) == spent
    assert Decimal(listed["budget_remaining_usd"]) == max(Decimal(0), budget - spent)
    assert datetime.fromisoformat(listed["budget_resets_at"]) in resets


def test_a_team_budget_shared_by_two_keys_of_two_users_holds(governed: Governed) -> None:
    admin = governed.admin
    budget = Decimal("0.20")
    team = admin.post("/auth/teams", json={"name": "search", "max_budget_usd": str(budget)})
    assert team.status_code == 201, team.text
    team_id = team.json()["id"]
    keys = []
    for email in ("ann@example.com", "bob@example.com"):
        browser = governed.browser(email)
        put = admin.put(
            f"/auth/teams/{team_id}/members/{user_id(browser)}", json={"role": "member"}
        )
        assert put.status_code in (200, 201), put.text
        keys.append(new_key(browser, team_id=team_id)[1])

    result = hammer(governed, keys)

    spent = recorded_cost(governed, "team", team_id, calls=result.succeeded)
    assert spent <= budget + C
    assert result.succeeded >= int(budget / C) - 1
    assert_budget_refusals(result.refused, "team")
    read = admin.get(f"/auth/teams/{team_id}").json()
    assert Decimal(read["spend_usd"]) == spent
    assert read["budget_resets_at"] is None  # a total budget never resets
    assert audited_thresholds(governed, team_id) == {50, 80, 100}


def audited_thresholds(governed: Governed, scope_id: str) -> set[int]:
    """The thresholds of a budget announced in the audit log, once all three are there
    (auth audits the announcements every few seconds)."""
    deadline = time.monotonic() + 15
    while True:
        events = governed.admin.get(
            "/auth/audit", params={"action": "budget.threshold", "limit": 200}
        ).json()["data"]
        found = {e["detail"]["threshold"] for e in events if e["target_id"] == scope_id}
        if len(found) >= 3 or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_allowed_models_refuse_any_other_model_through_the_openai_sdk(governed: Governed) -> None:
    member = governed.browser("picky@example.com")
    _, key = new_key(member, allowed_models=["openai/mock-*"])
    sdk = openai.OpenAI(base_url=f"{governed.platform.gateway}/v1", api_key=key, max_retries=0)
    with sdk:
        answer = sdk.chat.completions.create(model="openai/mock-b", messages=HI)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "echo: hi"
        for model in ("openai/gpt-4o-mini", "local/all-MiniLM-L6-v2"):
            with pytest.raises(openai.PermissionDeniedError) as refused:
                sdk.chat.completions.create(model=model, messages=HI)  # type: ignore[arg-type]
            problem = refused.value.response.json()
            assert problem["type"].endswith(":model-not-allowed")
            assert model in problem["detail"]
        with pytest.raises(openai.PermissionDeniedError):
            sdk.embeddings.create(model="openai/text-embedding-3-small", input=["a"])


def test_owner_rights(governed: Governed) -> None:
    admin = governed.admin
    owner, member = governed.browser("owner@example.com"), governed.browser("plain@example.com")
    team_id = admin.post("/auth/teams", json={"name": "owners"}).json()["id"]
    admin.put(f"/auth/teams/{team_id}/members/{user_id(owner)}", json={"role": "owner"})
    admin.put(f"/auth/teams/{team_id}/members/{user_id(member)}", json={"role": "member"})
    members_key, _ = new_key(member, team_id=team_id)

    set_by_owner = owner.patch(f"/auth/api-keys/{members_key}", json={"max_budget_usd": "3.00"})
    assert set_by_owner.status_code == 200, set_by_owner.text
    assert set_by_owner.json()["max_budget_usd"] == "3.00"
    own_budget = owner.patch(f"/auth/users/{user_id(owner)}", json={"max_budget_usd": "1000"})
    assert own_budget.status_code == 403
    by_member = member.patch(f"/auth/api-keys/{members_key}", json={"max_budget_usd": "9.00"})
    assert by_member.status_code == 403
    assert member.patch(f"/auth/users/{user_id(member)}", json={"rpm_limit": 5}).status_code == 403
    assert member.patch(f"/auth/teams/{team_id}", json={"max_budget_usd": "1"}).status_code == 403
    changes = admin.get("/auth/audit", params={"action": "policy.change"}).json()["data"]
    assert any(e["target_id"] == members_key for e in changes)


def test_an_exhausted_key_is_still_refused_after_redis_loses_everything(
    governed: Governed,
) -> None:
    member = governed.browser("flushed@example.com")
    _, key = new_key(member, max_budget_usd=str(C * 3))
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "openai/mock-a", "messages": HI}
    with httpx.Client(base_url=governed.platform.gateway, headers=headers, timeout=30) as sdk:
        codes = [sdk.post("/v1/chat/completions", json=body).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        time.sleep(0.5)  # the last calls reach telemetry (its consumer reads at once)

        redis.Redis.from_url(governed.platform.env["REDIS_URL"]).flushdb()
        governed.sign_in_admin()

        deadline = time.monotonic() + 10
        while True:
            answer = sdk.post("/v1/chat/completions", json=body)
            if answer.status_code == 429:
                assert answer.json()["type"].endswith(":budget-exceeded")
                break
            assert time.monotonic() < deadline, "still admitted 10 s after the flush"
            time.sleep(0.5)
