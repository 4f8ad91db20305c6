"""A service killed with SIGKILL under load fails only its own routes (502/503 problem+json)
and `make run` brings it back by itself; one stopped with `make stop-service` stays down,
and chat and the gateway's readiness are unaffected (its readiness is its own Redis;
/readyz/upstreams and gateway_upstream_up say which service is down).

On the fault suite's own `make run` (tests/faults/conftest.py), whose keepers restart a
service after RESTART_DELAY_SECONDS.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devkit import devstack
from devkit.e2e import PROVIDER_KEY, FakeOpenAI, Member, RunningPlatform

from .conftest import RESTART_DELAY_SECONDS
from .load import Answer, Load

BACK_WITHIN_SECONDS = 90  # a restart on 2 busy cores: imports, the local model
CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "words:3"}]}
SERVICES = ("auth", "inference", "embeddings", "telemetry")
Request = Callable[[httpx.Client], httpx.Response]


@dataclass
class Kept:
    platform: RunningPlatform
    data_dir: Path  # PLATFORM_DATA_DIR: where the keepers' pid files are
    member: Member

    def request(self, service: str) -> Request:
        """A call of the member's that only `service` answers (behind the gateway)."""
        key = {"Authorization": f"Bearer {self.member.key}"}
        session = {"Cookie": f"session={self.member.browser.cookies['session']}"}
        if service == "auth":
            return lambda client: client.get("/auth/me", headers=session)
        if service == "inference":
            return lambda client: client.post("/v1/chat/completions", json=CHAT, headers=key)
        if service == "embeddings":
            return lambda client: client.get("/v1/collections", headers=key)
        return lambda client: client.get("/v1/usage", headers=key)

    def call(self, service: str) -> httpx.Response:
        with httpx.Client(base_url=self.platform.gateway, timeout=BACK_WITHIN_SECONDS) as client:
            return self.request(service)(client)

    def load(self, service: str, workers: int) -> Load:
        # Calls made while the service starts again wait for it (its keeper holds the port).
        return Load(self.request(service), self.platform.gateway, workers, BACK_WITHIN_SECONDS)

    def make(self, target: str, service: str) -> None:
        """`make stop-service` / `make start-service`, as a developer types it."""
        done = subprocess.run(
            ["make", "--no-print-directory", target, f"SERVICE={service}"],
            cwd=devstack.repo_root(),
            env={**os.environ, "PLATFORM_DATA_DIR": str(self.data_dir)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def upstreams(self) -> dict[str, str]:
        report = httpx.get(f"{self.platform.gateway}/readyz/upstreams").json()
        return {name: u["status"] for name, u in report["upstreams"].items()}

    def upstream_up(self) -> dict[str, float]:
        text = httpx.get(f"{self.platform.gateway}/metrics").text
        (family,) = [
            f for f in text_string_to_metric_families(text) if f.name == "gateway_upstream_up"
        ]
        return {sample.labels["upstream"]: sample.value for sample in family.samples}


@pytest.fixture(scope="module")
def kept(faulty: RunningPlatform, provider: FakeOpenAI) -> Iterator[Kept]:
    member = Member(faulty, "kept@example.com")
    member.credential("openai", "local", provider.url, PROVIDER_KEY)
    running = Kept(faulty, Path(faulty.env["PLATFORM_DATA_DIR"]), member)
    for service in SERVICES:  # everything answers (and the key is in auth's cache)
        assert running.call(service).status_code == 200, service
    yield running
    member.close()


def unavailable(answer: Answer) -> bool:
    """A clean refusal: 502 or 503 problem+json (never a 500, never a hang)."""
    return answer.status in (502, 503) and answer.content_type == "application/problem+json"


def described(answers: list[Answer]) -> list[tuple[int, str, str]]:
    """Each kind of answer once: status, content type, the start of the body."""
    return sorted({(a.status, a.content_type, a.body[:160]) for a in answers})


@pytest.mark.parametrize("service", SERVICES)
def test_a_killed_service_fails_only_its_routes_and_comes_back_by_itself(
    kept: Kept, service: str
) -> None:
    platform = kept.platform
    others = [s for s in SERVICES if s != service]
    died_before = len(platform.lines_with(f"[keeper] {service} died", timeout=0))
    killed = platform.service_process(service)
    assert killed is not None

    with ExitStack() as loads_running:
        target = loads_running.enter_context(kept.load(service, workers=3))
        loads = {other: loads_running.enter_context(kept.load(other, 1)) for other in others}
        for load in (target, *loads.values()):
            load.wait_for(lambda answers: sum(a.status == 200 for a in answers) >= 3, 30)
        killed.kill()  # SIGKILL
        at = time.monotonic()
        target.wait_for(lambda answers: any(a.status != 200 for a in answers), within=30)
        back = target.wait_for(
            lambda answers: any(a.status == 200 and a.sent > at + 1 for a in answers),
            within=BACK_WITHIN_SECONDS,
        )

    refused = [a for a in target.answers if a.status != 200]
    assert refused, "no call found the service down"
    assert all(unavailable(a) for a in refused), described(refused)
    # The other services' routes were answered all along.
    for other, load in loads.items():
        failed = [a for a in load.answers if a.status != 200]
        assert failed == [], (other, described(failed))
        assert load.between(at, back), other  # and calls were made while it was down

    restarted = platform.service_process(service)
    assert restarted is not None
    assert restarted.pid != killed.pid
    deaths = platform.lines_with(f"[keeper] {service} died", at_least=died_before + 1)
    assert "(signal SIGKILL)" in deaths[-1]
    # The first delay, or a doubled one when an earlier test restarted it a moment ago.
    delay = float(deaths[-1].split("restarting in ")[1].split(" s")[0])
    assert delay >= RESTART_DELAY_SECONDS
    assert platform.lines_with(f"[keeper] {service} restarted (pid {restarted.pid};")


def test_telemetry_stopped_leaves_chat_working_and_the_gateway_ready(kept: Kept) -> None:
    """Acceptance: stop the telemetry process; chat keeps working and the gateway stays
    ready, reporting telemetry down; `make start-service` brings it back."""
    platform = kept.platform
    stopped = len(platform.lines_with("[keeper] telemetry stopped", timeout=0))
    restarts = len(platform.lines_with("[keeper] telemetry restarted", timeout=0))

    def ready(client: httpx.Client) -> httpx.Response:
        return client.get("/readyz")

    with kept.load("inference", workers=2) as chat, Load(ready, platform.gateway, 1) as probe:
        chat.wait_for(lambda answers: sum(a.status == 200 for a in answers) >= 3, within=30)
        kept.make("stop-service", "telemetry")
        platform.lines_with("[keeper] telemetry stopped", at_least=stopped + 1, timeout=30)
        assert platform.service_process("telemetry") is None
        down = time.monotonic()

        assert kept.call("telemetry").status_code == 502  # its own routes only
        until(lambda: kept.upstreams()["telemetry"] == "down", within=30)
        assert kept.upstreams() == {
            "auth": "up", "inference": "up", "embeddings": "up", "telemetry": "down"
        }  # fmt: skip
        assert kept.upstream_up()["telemetry"] == 0
        chat.wait_for(lambda answers: sum(a.sent > down for a in answers) >= 5, within=30)
        # Stopped is not dead: nothing restarts it.
        assert len(platform.lines_with("[keeper] telemetry restarted", timeout=0)) == restarts
        assert platform.service_process("telemetry") is None

        kept.make("start-service", "telemetry")
        until(lambda: kept.upstreams()["telemetry"] == "up", within=BACK_WITHIN_SECONDS)

    assert kept.upstream_up()["telemetry"] == 1
    assert kept.call("telemetry").status_code == 200
    failed = [a for a in [*chat.answers, *probe.answers] if a.status != 200]
    assert failed == [], described(failed)
    assert chat.since(down)
    assert probe.since(down)


def until(check: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.1)
