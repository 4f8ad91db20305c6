"""devkit.keeper: one service of `make run` stopped and started alone; a service that cannot
start still stops the platform."""

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


def start_keeper(
    command: list[str], grace: float = 0.5, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """A keeper (as `make run` starts one) around `command`, in a process of its own; what
    it says goes to `log` if given."""
    with contextlib.ExitStack() as files:
        stderr = files.enter_context(log.open("ab")) if log is not None else None
        return subprocess.Popen(
            _keeper(command),
            env={**os.environ, "KEEPER_STARTUP_GRACE_SECONDS": str(grace)},
            stderr=stderr,
        )


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


def test_a_service_killed_after_its_start_leaves_the_rest_running(
    kept: subprocess.Popen[bytes], keeper_log: Path
) -> None:
    # The grace counts from the keeper's own record of the start, made before it says so.
    eventually(said(keeper_log, "started (pid"))
    time.sleep(0.6)  # past the start-up grace
    children(kept)[0].kill()

    # Once the keeper has seen the exit (not after a fixed pause: a SIGUSR2 that came
    # before it had would be undone by it).
    eventually(said(keeper_log, "exited ("))
    assert kept.poll() is None  # `make run` goes on
    assert children(kept) == []  # and the service stays down until asked
    kept.send_signal(signal.SIGUSR2)
    eventually(lambda: len(children(kept)) == 1)


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
            env={**os.environ, "KEEPER_STARTUP_GRACE_SECONDS": "0.5"},
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

        children(process)[0].kill()  # dies on its own: refused until it is started again
        eventually(lambda: "dummy exited" in log.read_text())
        with pytest.raises(httpx.ConnectError):
            httpx.get(url)
    finally:
        process.terminate()
        process.wait(15)
