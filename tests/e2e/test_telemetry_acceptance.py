"""Issue 6's acceptance through the gateway of `make run`: chat calls show up in usage with
tokens and cost; the process that consumes the event stream is killed, calls keep
succeeding, and once it is back every call is counted exactly once, with its trace id.

The platform here runs its telemetry API with the consumer off, and the test runs the
consumer as a telemetry replica of its own (same database, Redis and key), so that it can
kill and restart it: `make run` stops every process when one of them exits."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from common.ports import spawn
from devkit import devstack

from .conftest import FakeOpenAI, RunningPlatform, new_member_with_key, platform_on
from .test_inference_acceptance import sdk  # noqa: F401  (fixture)

N, M = 4, 3


@pytest.fixture(scope="module")
def platform(
    postgres_admin_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPlatform]:
    """A platform of this module's own (database, Redis db 2), telemetry API-only."""
    with platform_on(
        postgres_admin_url,
        redis_url,
        tmp_path_factory.mktemp("e2e-telemetry"),
        redis_db=2,
        env={"TELEMETRY_CONSUMER_ENABLED": "false"},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def member_key(platform: RunningPlatform, fake_openai: FakeOpenAI) -> str:
    """A member of this module's platform, with a credential for the OpenAI fake."""
    return new_member_with_key(platform, fake_openai, "telemetry@example.com")


class Replica:
    """`python -m telemetry` with the platform's telemetry environment, consumer on."""

    def __init__(self, platform: RunningPlatform) -> None:
        service = next(p for p in platform.descendants() if p.cmdline()[-2:] == ["-m", "telemetry"])
        self.port = 0  # chosen when it starts
        self.env = dict(service.environ())
        self.env.update(
            TELEMETRY_CONSUMER_ENABLED="true",
            # A killed replica's unacknowledged entries are taken over after 2 s (not 30).
            TELEMETRY_CLAIM_IDLE_SECONDS="2",
        )
        self.log_path = platform.log_path.with_name("telemetry-replica.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it answers /readyz (its consumers start before that)."""
        with self.log_path.open("ab") as log:
            self.process, self.port = spawn(
                [sys.executable, "-m", "telemetry"], cwd=devstack.repo_root(), env=self.env,
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the replica exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                ready = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)
                if ready.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the replica is not ready:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def replica(platform: RunningPlatform) -> Iterator[Replica]:
    replica = Replica(platform)
    replica.start()
    yield replica
    replica.kill()


def usage(gateway: str, key: str) -> dict[str, Any]:
    response = httpx.get(
        f"{gateway}/v1/usage",
        params={"group_by": "model"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200, response.text
    groups = response.json()["groups"]
    return groups[0] if groups else {"requests": 0}


def wait_for_requests(gateway: str, key: str, count: int, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        seen = usage(gateway, key)
        if seen["requests"] >= count or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def chat(client: openai.OpenAI, count: int) -> None:
    for i in range(count):
        completion = client.chat.completions.create(
            model="openai/gpt-4o-mini",
            messages=[{"role": "user", "content": f"words:{i + 3}"}],
            stream=False,
        )
        assert completion.choices[0].message.content


def test_usage_counts_every_call_once_across_a_telemetry_crash(
    platform: RunningPlatform,
    replica: Replica,
    sdk: openai.OpenAI,  # noqa: F811 (the imported fixture)
    member_key: str,
) -> None:
    gateway = platform.gateway
    chat(sdk, N)
    before = wait_for_requests(gateway, member_key, N, within=30)
    assert before["requests"] == N
    assert before["prompt_tokens"] > 0
    assert before["completion_tokens"] == sum(i + 3 for i in range(N))
    assert float(before["cost_usd"]) > 0

    replica.kill()  # SIGKILL: no clean shutdown
    chat(sdk, M)  # every call still succeeds: telemetry is not on the request path
    time.sleep(1)
    assert usage(gateway, member_key)["requests"] == N  # the events wait in the stream

    replica.start()  # returns once it is up (its start itself is not timed here)
    started = time.monotonic()
    # What is checked is "every call once", not how fast: a loaded 2-core machine takes
    # its time to take over the killed replica's entries (idle 2 s) and store them.
    after = wait_for_requests(gateway, member_key, N + M, within=60)
    assert after["requests"] == N + M, f"after {time.monotonic() - started:.1f} s: {after}"

    calls = httpx.get(
        f"{gateway}/v1/calls",
        params={"limit": 200},
        headers={"Authorization": f"Bearer {member_key}"},
    ).json()["data"]
    assert len(calls) == N + M
    assert len({c["id"] for c in calls}) == N + M
    assert all(c["trace_id"] and len(c["trace_id"]) == 32 for c in calls)
