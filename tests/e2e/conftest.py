"""End-to-end: `make run` itself, on free ports, against the test Postgres and Redis."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from common import devstack
from common.testing import _drop_database

READY_WITHIN_SECONDS = 90


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@dataclass
class RunningPlatform:
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    log_path: Path
    signing_key: str

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def gateway(self) -> str:
        return self.url("gateway")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines_with(self, needle: str, *, at_least: int = 1, timeout: float = 5.0) -> list[str]:
        """Log lines containing `needle`, waiting a little: processes log after responding."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log().splitlines() if needle in line]
            if len(lines) >= at_least or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


def _wait_ready(platform: RunningPlatform) -> None:
    deadline = time.monotonic() + READY_WITHIN_SECONDS
    while time.monotonic() < deadline:
        if platform.process.poll() is not None:
            raise RuntimeError(f"make run exited early:\n{platform.log()[-4000:]}")
        try:
            if httpx.get(f"{platform.gateway}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"not ready in {READY_WITHIN_SECONDS}s:\n{platform.log()[-4000:]}")


@pytest.fixture(scope="module")
def platform(
    postgres_admin_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPlatform]:
    database = f"e2e_{secrets.token_hex(4)}"
    ports = {name: devstack.free_port() for name in (*devstack.SERVICES, "gateway")}
    signing_key = secrets.token_hex(32)
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": devstack.with_database(postgres_admin_url, database),
            "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/1",
            "INTERNAL_SIGNING_KEY": signing_key,
            "LOG_FORMAT": "json",
            **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
        }
    )
    log_path = tmp_path_factory.mktemp("e2e") / "platform.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=devstack.repo_root(),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    running = RunningPlatform(process, ports, log_path, signing_key)
    try:
        _wait_ready(running)
        yield running
    finally:
        if process.poll() is None:
            children = running.descendants()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
            for child in children:
                if child.is_running():
                    child.kill()
        asyncio.run(_drop_database(postgres_admin_url, database))
