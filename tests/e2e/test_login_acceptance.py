"""Issue 16's registration and lockout acceptance, and its client-address, invalid-key and
trace-context items, as a client meets them through the gateway of `make run`.

`make run` trusts loopback as a proxy (a developer's machine), so a test names its
client's address in X-Forwarded-For, as an Ingress would. A second gateway started here
with the production default (no trusted proxy) shows what a client gets that is not
behind a trusted proxy."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from common.ports import spawn
from devkit import devstack

from .conftest import RunningPlatform, wait_until_serving

PASSWORD = "a-long-and-unusual-passphrase-16"
FREE_FAILURES = 10  # AUTH_LOGIN_FREE_FAILURES' default
PROBLEM_JSON = "application/problem+json"


def register(gateway: str, email: str, client: str) -> None:
    response = httpx.post(
        f"{gateway}/auth/register",
        json={"email": email, "password": PASSWORD},
        headers={"X-Forwarded-For": client},
    )
    assert response.status_code == 201, response.text


def log_in(gateway: str, email: str, password: str, client: str) -> httpx.Response:
    return httpx.post(
        f"{gateway}/auth/login",
        json={"email": email, "password": password},
        headers={"X-Forwarded-For": client},
        timeout=30,
    )


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["type"] == "urn:llm-platform:problem:login-throttled"
    assert int(response.headers["retry-after"]) >= 1


def process_of(platform: RunningPlatform, module: str) -> psutil.Process:
    return next(p for p in platform.descendants() if p.cmdline()[-2:] == ["-m", module])


def cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in processes)


def test_a_crafted_1023_character_password_is_answered_at_once(platform: RunningPlatform) -> None:
    """Decoration, a letter, a newline, a letter: 1.3 s of auth's event loop before."""
    crafted = "1" * 1020 + "a\na"
    servers = [process_of(platform, "auth"), process_of(platform, "gateway")]

    def answered_in() -> float:  # CPU time of the servers, which a loaded machine cannot inflate
        before = cpu_seconds(servers)
        response = httpx.post(
            f"{platform.gateway}/auth/register",
            json={"email": f"crafted-{secrets.token_hex(3)}@example.com", "password": crafted},
            headers={"X-Forwarded-For": "192.0.2.16"},
            timeout=30,
        )
        spent = cpu_seconds(servers) - before
        assert response.status_code == 422, response.text  # too few different characters
        assert response.headers["content-type"] == PROBLEM_JSON
        return spent

    assert min(answered_in() for _ in range(3)) < 0.100


def test_wrong_passwords_from_one_address_leave_the_owner_in(platform: RunningPlatform) -> None:
    gateway = platform.gateway
    register(gateway, "lockout@example.com", "198.51.100.20")
    attacker = "203.0.113.10"
    guesses = [
        log_in(gateway, "lockout@example.com", f"Guess-{n:04d}", attacker) for n in range(10)
    ]
    assert [r.status_code for r in guesses] == [401] * 10

    # The owner, from another address through the trusted proxy: in at once.
    owner = log_in(gateway, "lockout@example.com", PASSWORD, "198.51.100.20")
    assert owner.status_code == 200, owner.text

    # The attacker's address now waits, whatever it sends: an exponential delay, not a lock.
    assert_throttled(log_in(gateway, "lockout@example.com", PASSWORD, attacker))


def test_a_burst_of_guesses_gets_no_more_tries_than_the_budget(platform: RunningPlatform) -> None:
    gateway = platform.gateway
    register(gateway, "burst-guess@example.com", "198.51.100.21")
    attacker = "203.0.113.11"
    with ThreadPoolExecutor(max_workers=3 * FREE_FAILURES) as pool:
        burst = list(
            pool.map(
                lambda n: log_in(gateway, "burst-guess@example.com", f"Guess-{n:04d}", attacker),
                range(3 * FREE_FAILURES),
            )
        )

    assert sorted(r.status_code for r in burst) == [401] * FREE_FAILURES + [429] * (
        2 * FREE_FAILURES
    )
    for refused in (r for r in burst if r.status_code == 429):
        assert_throttled(refused)


def test_unknown_api_keys_get_429_past_the_budget_without_asking_auth(
    platform: RunningPlatform,
) -> None:
    # The budget is per minute (wall clock): the burst below (22 requests, well under a
    # second) must not straddle two windows.
    left = 60 - time.time() % 60
    if left < 8:
        time.sleep(left + 0.1)
    budget = 20  # GATEWAY_INVALID_API_KEYS_PER_MINUTE's default

    def with_key(n: int, client: str) -> httpx.Response:
        key = f"sk-not-a-real-key-{n:04d}-{secrets.token_hex(12)}"
        return httpx.get(
            f"{platform.gateway}/v1/models",
            headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": client},
        )

    answers = [with_key(n, "203.0.113.12") for n in range(budget + 2)]
    elsewhere = with_key(0, "203.0.113.13")

    assert [r.status_code for r in answers] == [401] * budget + [429] * 2
    limited = answers[-1]
    assert limited.headers["content-type"] == PROBLEM_JSON
    assert limited.json()["type"] == "urn:llm-platform:problem:too-many-invalid-api-keys"
    # A sliding window: the counts of this minute slide out over the next one, so the wait
    # may pass 60 s (all 20 counted 2 s into a minute: 58 + 3 s), never two minutes.
    assert 1 <= int(limited.headers["retry-after"]) <= 120
    assert elsewhere.status_code == 401


@pytest.fixture
def untrusting_gateway(platform: RunningPlatform, tmp_path: Path) -> Iterator[str]:
    """Another gateway in front of the same services, as production runs it by default:
    no trusted proxy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        {
            "INTERNAL_SIGNING_KEY": platform.signing_key,
            "REDIS_URL": platform.env["REDIS_URL"],
            **{f"GATEWAY_{n.upper()}_URL": platform.url(n) for n in devstack.SERVICES},
        }
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as stderr:  # the child keeps its own copy
        process, port = spawn(
            [sys.executable, "-m", "gateway"], env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_a_client_not_behind_a_trusted_proxy_cannot_choose_its_address(
    platform: RunningPlatform, untrusting_gateway: str
) -> None:
    register(platform.gateway, "spoofer@example.com", "198.51.100.22")
    # Each guess claims another address; they all count for the one the gateway sees.
    for n in range(FREE_FAILURES):
        wrong = log_in(untrusting_gateway, "spoofer@example.com", "Guess-0000", f"192.0.2.{n}")
        assert wrong.status_code == 401
    assert_throttled(log_in(untrusting_gateway, "spoofer@example.com", PASSWORD, "192.0.2.200"))


def test_a_callers_trace_id_is_kept_only_behind_a_trusted_proxy(
    platform: RunningPlatform, untrusting_gateway: str
) -> None:
    theirs = secrets.token_hex(16)
    traceparent = {"traceparent": f"00-{theirs}-{secrets.token_hex(8)}-01"}

    def trace_id(gateway: str) -> str:
        """The trace id of the gateway's 401 (no credentials). (http.client: an httpx of
        this process, instrumented by other tests, would replace the traceparent.)"""
        connection = http.client.HTTPConnection("127.0.0.1", int(gateway.rsplit(":", 1)[1]))
        connection.request("GET", "/v1/models", headers=traceparent)
        response = connection.getresponse()
        body = json.loads(response.read())
        connection.close()
        assert response.status == 401, body
        found: str = body["trace_id"]
        return found

    assert trace_id(platform.gateway) == theirs  # make run trusts loopback
    assert trace_id(untrusting_gateway) != theirs
