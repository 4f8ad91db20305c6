"""The platform as processes, for tests that drive it over HTTP as a user would:
`make run` itself on free ports (the e2e suite, tests/faults, tests/fuzz), the OpenAI fake
served in a thread of the test's process, members with keys and credentials."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import uvicorn

from common import ports
from devkit import devstack
from devkit.fakes.faults import FaultControl
from devkit.testing import _drop_database

READY_WITHIN_SECONDS = 90
ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "e2e-admin-Passphrase-9931"  # noqa: S105 (a test account)
MEMBER_PASSWORD = "e2e-member-Passphrase-3"  # noqa: S105
PROVIDER_KEY = "sk-provider-secret-e2e-0123456789abcdef"


@dataclass
class RunningPlatform:
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    log_path: Path
    signing_key: str
    env: dict[str, str]

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
            children: list[psutil.Process] = psutil.Process(self.process.pid).children(
                recursive=True
            )
        except psutil.NoSuchProcess:
            return []
        return children

    def service_process(self, service: str) -> psutil.Process | None:
        """The service's own process (`python -m <service>`, its keeper's child), alive."""
        for process in self.descendants():
            try:
                if process.cmdline()[-2:] == ["-m", service] and process.status() != "zombie":
                    return process
            except psutil.Error:
                continue
        return None

    def _waiting(self, deadline: float, interval: float) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"make run exited early:\n{self.log()[-4000:]}")
        if time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"not ready in {READY_WITHIN_SECONDS}s:\n{self.log()[-4000:]}")
        time.sleep(interval)

    def wait_for_ports(self, deadline: float | None = None) -> dict[str, int]:
        """The ports `make run` said it holds (it says so before it starts anything)."""
        deadline = deadline or time.monotonic() + READY_WITHIN_SECONDS
        while not self.ports:
            self.ports = devstack.announced_ports(self.log()) or {}
            if not self.ports:
                self._waiting(deadline, 0.05)
        return self.ports

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN_SECONDS
        self.wait_for_ports(deadline)
        while not devstack.platform_ready(self.gateway):
            self._waiting(deadline, 0.25)

    def stop(self) -> None:
        if self.process.poll() is None:
            children = self.descendants()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
            for child in children:
                if child.is_running():
                    child.kill()


def launch_platform(env_overrides: dict[str, str], log_dir: Path) -> RunningPlatform:
    """`make run` on ports it chooses itself (`<NAME>_PORT=0`: free ones, held from the
    moment they are chosen), not waited for."""
    signing_key = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        {
            "INTERNAL_SIGNING_KEY": signing_key,
            "LOG_FORMAT": "json",
            "PLATFORM_ENV_FILE": "",  # a developer's .env stays out of the tests
            "ADMIN_EMAIL": ADMIN_EMAIL,
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            **{f"{name.upper()}_PORT": "0" for name in (*devstack.SERVICES, "gateway")},
            **env_overrides,
        }
    )
    log_path = log_dir / "platform.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "run"],  # noqa: S607 (make from PATH, as a user)
            cwd=devstack.repo_root(),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return RunningPlatform(process, {}, log_path, signing_key, env)


def start_platform(env_overrides: dict[str, str], log_dir: Path) -> RunningPlatform:
    """`make run` (launch_platform), once the gateway is ready."""
    platform = launch_platform(env_overrides, log_dir)
    platform.wait_until_ready()
    return platform


class CacheRedis:
    """A redis-server of its own (for the platform's response cache, or all of its Redis),
    which a test may stop and start again on the same port: empty, as a cache's Redis may
    come back, unless it is made with `keep_data` (an append-only file, as compose's Redis
    and `make run`'s keep theirs)."""

    def __init__(self, data_dir: Path, *, keep_data: bool = False) -> None:
        self.data_dir = data_dir
        self.keep_data = keep_data
        (data_dir / "redis").mkdir(parents=True, exist_ok=True)
        self.process, self.url = devstack.start_redis(data_dir, keep_data=keep_data)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def stop(self) -> None:
        devstack.stop_process(self.process)

    def start(self) -> None:
        self.process, self.url = devstack.start_redis(
            self.data_dir, self.port, keep_data=self.keep_data
        )

    def pause(self) -> None:
        """SIGSTOP: connections are accepted (by the kernel) and nothing is answered, as
        with a Redis swapping, stuck in a long command, or cut off by a network fault."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


class StoppableRedis(CacheRedis):
    """The platform's Redis, which a test stops and starts again with its data."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, keep_data=True)


class StoppablePostgres:
    """An embedded PostgreSQL of its own, which a test may stop (`pg_ctl stop -m fast`:
    every connection is cut) and start again on the same socket, with its data, as
    `make stop-service SERVICE=postgres` and `make start-service` do."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.admin_url = devstack.start_embedded_postgres(data_dir)

    def stop(self) -> None:
        assert devstack.restart_embedded_postgres(self.data_dir, stop=True) == 0

    def start(self) -> None:
        assert devstack.restart_embedded_postgres(self.data_dir, stop=False) == 0

    def close(self) -> None:
        devstack.stop_embedded_postgres(self.data_dir)


@contextmanager
def platform_on(
    postgres_admin_url: str,
    redis_url: str,
    log_dir: Path,
    *,
    redis_db: int,
    env: dict[str, str],
) -> Iterator[RunningPlatform]:
    """`make run` on a database of its own (dropped afterwards) and Redis db `redis_db`."""
    database = f"e2e_{secrets.token_hex(4)}"
    running = start_platform(
        {
            "DATABASE_URL": devstack.with_database(postgres_admin_url, database),
            "REDIS_URL": redis_url.rsplit("/", 1)[0] + f"/{redis_db}",
            **env,
        },
        log_dir,
    )
    try:
        yield running
    finally:
        running.stop()
        asyncio.run(_drop_database(postgres_admin_url, database))


def wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until another process of the test (an extra gateway) answers /healthz: as long as
    the platform itself may take, since it starts on a machine already busy with the
    platform (2 cores here)."""
    deadline = time.monotonic() + READY_WITHIN_SECONDS
    while True:
        try:
            if httpx.get(f"{url}/healthz", trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{url} did not start:\n{log.read_text()}") from None
        time.sleep(0.1)


@dataclass
class FakeOpenAI:
    url: str
    control: FaultControl


@contextmanager
def served_in_thread(app: Any, name: str) -> Iterator[str]:
    """`app` served by uvicorn in a thread of this process (the platform's processes reach
    it over 127.0.0.1, and the test can inject faults into it): its base URL."""
    sock = ports.listen()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=ports.port_of(sock), log_config=None)
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve([sock])), daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the {name} server did not start")
        threading.Event().wait(0.02)
    try:
        yield f"http://127.0.0.1:{ports.port_of(sock)}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def serving_fake_openai() -> Iterator[FakeOpenAI]:
    """The OpenAI fake (checking PROVIDER_KEY), served in a thread of this process."""
    from devkit.fakes.openai_server import create_openai_app

    control = FaultControl()
    with served_in_thread(create_openai_app(control, api_key=PROVIDER_KEY), "fake OpenAI") as url:
        yield FakeOpenAI(f"{url}/v1", control)


class Member:
    """A member signed in through the gateway (a browser), and the SDK with their key."""

    # Where the platform keeps cached answers, for tests that wait for a write.
    cache_redis_url: str = ""
    database_url: str = ""

    def __init__(
        self, platform: RunningPlatform, email: str, key: dict[str, Any] | None = None
    ) -> None:
        """`key`: more fields of the API key the SDK uses (a policy, a cache default)."""
        gateway = platform.gateway
        httpx.post(f"{gateway}/auth/register", json={"email": email, "password": MEMBER_PASSWORD})
        self.browser = httpx.Client(base_url=gateway, timeout=30)
        login = self.browser.post("/auth/login", json={"email": email, "password": MEMBER_PASSWORD})
        assert login.status_code == 200, login.text
        self.browser.headers["X-CSRF-Token"] = login.json()["csrf_token"]
        created = self.browser.post("/auth/api-keys", json={"name": "sdk", **(key or {})})
        assert created.status_code == 201, created.text
        self.key: str = created.json()["key"]
        self.sdk = openai.OpenAI(base_url=f"{gateway}/v1", api_key=self.key, max_retries=0)

    def credential(self, provider: str, name: str, base_url: str, api_key: str) -> str:
        created = self.browser.post(
            "/v1/providers/credentials",
            json={"provider": provider, "name": name, "api_key": api_key, "base_url": base_url},
        )
        assert created.status_code == 201, created.text
        credential_id: str = created.json()["id"]
        return credential_id

    def calls(self, count: int, within: float = 30.0) -> list[dict[str, Any]]:
        """Their `count` calls as telemetry recorded them (newest first), once all arrived."""
        deadline = time.monotonic() + within
        while True:
            response = self.browser.get("/v1/calls", params={"limit": 100})
            assert response.status_code == 200, response.text
            data: list[dict[str, Any]] = response.json()["data"]
            if len(data) >= count or time.monotonic() > deadline:
                assert len(data) == count, data
                return data
            time.sleep(0.2)

    def close(self) -> None:
        self.sdk.close()
        self.browser.close()

    def __enter__(self) -> Member:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def new_member_with_key(
    platform: RunningPlatform, fake_openai: FakeOpenAI, email: str, *, base_url: str | None = None
) -> str:
    """A member registered through the gateway, with an OpenAI credential pointing at the
    fake (or at `base_url`) and an API key (returned)."""
    gateway = platform.gateway
    httpx.post(f"{gateway}/auth/register", json={"email": email, "password": MEMBER_PASSWORD})
    with httpx.Client(base_url=gateway) as browser:
        login = browser.post("/auth/login", json={"email": email, "password": MEMBER_PASSWORD})
        browser.headers["X-CSRF-Token"] = login.json()["csrf_token"]
        created = browser.post(
            "/v1/providers/credentials",
            json={"provider": "openai", "name": "local", "api_key": PROVIDER_KEY,
                  "base_url": base_url or fake_openai.url},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        assert created.json()["key_hint"] == PROVIDER_KEY[-4:]
        key: str = browser.post("/auth/api-keys", json={"name": "sdk"}).json()["key"]
    return key
