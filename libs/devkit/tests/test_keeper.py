"""devkit.keeper: one service of `make run` stopped and started alone, restarted with backoff
when it dies; a service that cannot start still stops the platform."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from common import ports
from devkit import keeper

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _keeper(command: list[str]) -> list[str]:
    code = (
        "import sys; from common import ports; from devkit.keeper import Keeper; "
        f"sys.exit(Keeper('dummy', {command!r}, ports.inherited()).run())"
    )
    return [sys.executable, "-c", code]


def keeper_env(grace: float = 0.5, delay: float = 0.5) -> dict[str, str]:
    """The environment of a keeper with a start-up grace of `grace` seconds, whose first
    restart of a service that died comes after `delay` seconds."""
    return {
        **os.environ,
        "KEEPER_STARTUP_GRACE_SECONDS": str(grace),
        "KEEPER_RESTART_DELAY_SECONDS": str(delay),
    }


def start_keeper(
    command: list[str], grace: float = 0.5, log: Path | None = None, delay: float = 0.5
) -> subprocess.Popen[bytes]:
    """A keeper (as `make run` starts one) around `command`, in a process of its own; what
    it says goes to `log` if given."""
    with contextlib.ExitStack() as files:
        stderr = files.enter_context(log.open("ab")) if log is not None else None
        return subprocess.Popen(_keeper(command), env=keeper_env(grace, delay), stderr=stderr)


def children(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    return [p for p in psutil.Process(process.pid).children() if p.status() != "zombie"]


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not within the timeout")
        time.sleep(0.05)


def said(log: Path, words: str) -> Callable[[], bool]:
    """Whether the keeper has said `words` (it says what it did once it has done it)."""
    return lambda: words in log.read_text()


@pytest.fixture
def keeper_log(tmp_path: Path) -> Path:
    return tmp_path / "keeper.log"


@pytest.fixture
def kept(keeper_log: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = start_keeper(SLEEPER, log=keeper_log)
    eventually(lambda: len(children(process)) == 1)
    yield process
    left = children(process) if process.poll() is None else []
    if process.poll() is None:
        process.terminate()  # the keeper stops its service first
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    for child in left:  # nothing left behind, whatever happened
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def test_stop_and_start_one_service_while_the_keeper_stays(
    kept: subprocess.Popen[bytes],
) -> None:
    first = children(kept)[0]

    kept.send_signal(signal.SIGUSR1)  # make stop-service
    eventually(lambda: not first.is_running() or first.status() == "zombie")
    time.sleep(0.5)
    assert kept.poll() is None
    assert children(kept) == []

    kept.send_signal(signal.SIGUSR2)  # make start-service
    eventually(lambda: len(children(kept)) == 1)
    assert children(kept)[0].pid != first.pid


def only_child(process: subprocess.Popen[bytes]) -> Callable[[], psutil.Process | None]:
    """The keeper's one running service, if it has one."""

    def find() -> psutil.Process | None:
        found = children(process)
        return found[0] if len(found) == 1 else None

    return find


@pytest.fixture
def kept_without_grace(keeper_log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A kept service past its start-up grace from the start: its deaths are restarted."""
    process = start_keeper(SLEEPER, grace=0, log=keeper_log)
    eventually(only_child(process))
    yield process
    process.terminate()
    process.wait(15)


def test_a_service_that_dies_is_restarted_with_a_growing_delay(
    kept_without_grace: subprocess.Popen[bytes], keeper_log: Path
) -> None:
    kept = kept_without_grace
    first = children(kept)[0]
    first.kill()

    eventually(said(keeper_log, "dummy died (signal SIGKILL) after"))
    assert "restarting in 0.5 s" in keeper_log.read_text()
    eventually(said(keeper_log, "restarted (pid"))
    assert kept.poll() is None  # `make run` goes on
    second = children(kept)[0]
    assert second.pid != first.pid

    second.kill()  # again, soon after its restart: the next delay doubles
    eventually(lambda: keeper_log.read_text().count("died (signal SIGKILL)") == 2)
    assert "restarting in 1 s" in keeper_log.read_text()
    eventually(lambda: keeper_log.read_text().count("restarted (pid") == 2)
    assert "restart 2 in a row" in keeper_log.read_text()
    assert only_child(kept)() is not None


def test_a_service_that_exits_with_a_code_is_restarted_too(tmp_path: Path) -> None:
    log = tmp_path / "keeper.log"
    lives = tmp_path / "lives"
    # Exits with 3 on its first run, then stays up.
    command = [
        sys.executable,
        "-c",
        f"import pathlib, sys, time; p = pathlib.Path({str(lives)!r}); first = not p.exists(); "
        "p.touch(); sys.exit(3) if first else time.sleep(600)",
    ]
    process = start_keeper(command, grace=0, log=log)
    try:
        eventually(said(log, "dummy died (code 3) after"))
        eventually(said(log, "dummy restarted (pid"))
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(15)


def test_stop_service_keeps_a_service_that_died_down_until_start_service(
    keeper_log: Path,
) -> None:
    """`make stop-service` while a restart is pending cancels it; `make start-service`
    starts the service at once, whatever the delay was."""
    process = start_keeper(SLEEPER, grace=0, log=keeper_log, delay=600)
    try:
        eventually(only_child(process))
        children(process)[0].kill()
        eventually(said(keeper_log, "restarting in 600 s"))

        process.send_signal(signal.SIGUSR1)  # make stop-service
        eventually(said(keeper_log, "dummy stays down"))
        process.send_signal(signal.SIGUSR2)  # make start-service: now, not in 600 s
        eventually(only_child(process))
        assert "dummy started (pid" in keeper_log.read_text().rsplit("stays down", 1)[1]
    finally:
        process.terminate()
        process.wait(15)


def test_sigterm_stops_the_service_and_the_keeper(kept: subprocess.Popen[bytes]) -> None:
    service = children(kept)[0]

    kept.send_signal(signal.SIGTERM)

    assert kept.wait(15) == 0
    eventually(lambda: not service.is_running() or service.status() == "zombie")


def test_a_service_that_cannot_start_stops_the_platform() -> None:
    process = start_keeper([sys.executable, "-c", "raise SystemExit(3)"], grace=30)

    assert process.wait(15) == 3


def test_the_make_targets_find_the_keeper_by_its_pid_file(
    kept: subprocess.Popen[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLATFORM_DATA_DIR", str(tmp_path))
    path = keeper.pid_file("telemetry")
    path.parent.mkdir(parents=True)
    path.write_text(str(kept.pid))
    first = children(kept)[0]

    assert keeper.control("stop", "telemetry") == 0
    eventually(lambda: children(kept) == [])
    assert keeper.control("start", "telemetry") == 0
    eventually(lambda: len(children(kept)) == 1)
    assert children(kept)[0].pid != first.pid

    assert keeper.control("stop", "nonsense") == 2
    path.unlink()
    assert keeper.control("stop", "telemetry") == 1  # no `make run` keeping it


def test_the_service_serves_the_keepers_socket_refused_while_down_and_back_on_it(
    tmp_path: Path,
) -> None:
    """As `make run` runs it: the keeper holds the port between two runs of its service."""
    log = tmp_path / "keeper.log"
    with log.open("wb") as stderr:
        process, port = ports.spawn(
            _keeper([sys.executable, "-m", "devkit.fakes.run", "openai"]),
            env=keeper_env(delay=600),
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}/v1/models"
    try:
        assert httpx.get(url, timeout=60).status_code == 200

        process.send_signal(signal.SIGUSR1)  # make stop-service
        eventually(lambda: "dummy stopped" in log.read_text(), timeout=20)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url)
        with socket.socket() as other, pytest.raises(OSError, match="in use"):
            other.bind(("127.0.0.1", port))  # still the service's

        process.send_signal(signal.SIGUSR2)  # make start-service
        eventually(lambda: log.read_text().count("dummy started") == 2)
        assert httpx.get(url, timeout=60).status_code == 200  # waits while it starts

        children(process)[0].kill()  # dies: refused until its restart (600 s here)
        eventually(lambda: "dummy died" in log.read_text())
        with pytest.raises(httpx.ConnectError):
            httpx.get(url)
    finally:
        process.terminate()
        process.wait(15)


def test_make_runs_redis_is_kept_with_its_data_stopped_started_and_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Redis `make run` starts when none answers: killed, it comes back by itself with
    its data (call events telemetry has not read, sessions), as compose's does; `make
    stop-service SERVICE=redis` keeps it down until `make start-service SERVICE=redis`."""
    import redis

    from devkit import devstack

    monkeypatch.setenv("PLATFORM_DATA_DIR", str(tmp_path))  # where its keeper's pid goes
    monkeypatch.setenv("KEEPER_STARTUP_GRACE_SECONDS", "0.5")
    kept, url = devstack.start_redis(tmp_path, keep_data=True, kept=True)
    client = redis.Redis.from_url(url, socket_timeout=2)

    def answers() -> bool:
        with contextlib.suppress(redis.RedisError):
            return bool(client.ping())
        return False

    try:
        client.xadd("telemetry:llm-calls", {"event": "unread"})
        server = children(kept)[0]
        assert "redis-server" in server.name()
        time.sleep(0.6)  # past its start-up grace: from now on a death is restarted

        server.kill()
        eventually(lambda: only_child(kept)() not in (None, server) and answers())
        assert client.xlen("telemetry:llm-calls") == 1  # its data came back with it

        assert keeper.control("stop", "redis") == 0
        eventually(lambda: children(kept) == [])
        time.sleep(1.0)
        assert not answers()  # not restarted: stopped on purpose
        assert kept.poll() is None

        assert keeper.control("start", "redis") == 0
        eventually(answers)
        assert client.xlen("telemetry:llm-calls") == 1
    finally:
        client.close()
        devstack.stop_process(kept)
    assert kept.returncode == 0
