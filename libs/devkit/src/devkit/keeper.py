"""One service of `make run`, kept: stopped and started again on request, alone.

    python -m devkit.keeper <service>           # what `make run` runs for each service
    python -m devkit.keeper stop <service>      # make stop-service SERVICE=<service>
    python -m devkit.keeper start <service>     # make start-service SERVICE=<service>

`make run` supervises its processes as one: when any of them exits, it stops the rest. A
service therefore runs under a keeper, which is what `make run` supervises:

- `stop` makes the keeper stop the service (SIGTERM, SIGKILL after 10 s) and wait; every
  other process keeps running. `start` starts it again, with the same environment.
- A service that exits on its own after its first STARTUP_GRACE seconds (it crashed, or
  someone killed it) leaves the keeper waiting for `start`, the rest of the platform up.
  One that exits sooner could not start (a port in use, a bad setting): the keeper exits
  with its code, and `make run` stops, showing why, as before.
- SIGTERM or SIGINT (Ctrl-C) to the keeper: it stops the service and exits.

The keeper holds the service's listening socket (common.ports: `make run` binds it before
anything starts) and hands it to each run of the service. While the service is down, the
socket is paused: callers are refused, as by a stopped server, and the port stays the
service's, so a restart never finds it taken.

The keeper's pid is in `<data dir>/run/<service>.keeper.pid` (devkit.devstack.data_root),
which is how `stop` and `start` find it; they send it SIGUSR1 and SIGUSR2.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from types import FrameType

from common import ports

STARTUP_GRACE = float(os.environ.get("KEEPER_STARTUP_GRACE_SECONDS", "10"))
STOP_WAIT = 10.0


def pid_file(service: str) -> Path:
    from devkit.devstack import data_root

    return data_root() / "run" / f"{service}.keeper.pid"


class Keeper:
    def __init__(
        self, service: str, command: list[str], listener: socket.socket | None = None
    ) -> None:
        self.service = service
        self.command = command
        self.listener = listener
        self.child: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.wanted = True  # the service should run
        self.leaving = False
        self.first = True  # the first start: failing it stops the platform

    @staticmethod
    def _how(code: int | None) -> str:
        return f"signal {-code}" if code is not None and code < 0 else f"code {code}"

    def _say(self, message: str) -> None:
        print(f"[keeper] {self.service} {message}", file=sys.stderr, flush=True)

    def _start(self) -> None:
        env = dict(os.environ)
        pass_fds: tuple[int, ...] = ()
        if self.listener is not None:
            ports.resume(self.listener)
            pass_fds = ports.hand_over(self.listener, env)
        self.child = subprocess.Popen(self.command, env=env, pass_fds=pass_fds)  # noqa: S603
        self.started_at = time.monotonic()
        self._say(f"started (pid {self.child.pid})")

    def _stop(self) -> int | None:
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return None if child is None else child.returncode
        child.terminate()
        try:
            return child.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait()
        finally:
            self._pause()

    def _pause(self) -> None:
        """Once the service has exited (never before: its event loop still watches the
        socket), refuse callers until it runs again."""
        if self.listener is not None:
            ports.pause(self.listener)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.leaving = True
        elif signum == signal.SIGUSR1:
            self.wanted = False
        elif signum == signal.SIGUSR2:
            self.wanted = True

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, self._on_signal)
        self._start()
        while not self.leaving:
            child = self.child
            if child is not None and child.poll() is not None:
                code = child.returncode
                self.child = None
                self._pause()
                if self.first and time.monotonic() - self.started_at < STARTUP_GRACE:
                    self._say(f"exited ({self._how(code)}) while starting: stopping everything")
                    return code or 1
                self.wanted = False
                self._say(
                    f"exited ({self._how(code)}); the rest of the platform keeps running. "
                    f"Start it again: make start-service SERVICE={self.service}"
                )
            elif child is not None and not self.wanted:
                code = self._stop()
                self._say(
                    f"stopped ({self._how(code)}); the rest of the platform keeps running. "
                    f"Start it again: make start-service SERVICE={self.service}"
                )
            elif child is None and self.wanted:
                self.first = False
                self._start()
            if self.first and time.monotonic() - self.started_at >= STARTUP_GRACE:
                self.first = False
            time.sleep(0.1)
        self._stop()
        return 0


def keep(service: str) -> int:
    path = pid_file(service)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))
    try:
        return Keeper(service, [sys.executable, "-m", service], ports.inherited()).run()
    finally:
        with suppress(OSError):
            if path.read_text() == str(os.getpid()):
                path.unlink()


def control(action: str, service: str) -> int:
    from devkit.devstack import SERVICES

    if service not in (*SERVICES, "gateway"):
        print(f"no service {service!r}: one of gateway, {', '.join(SERVICES)}", file=sys.stderr)
        return 2
    path = pid_file(service)
    try:
        pid = int(path.read_text())
        os.kill(pid, signal.SIGUSR1 if action == "stop" else signal.SIGUSR2)
    except (OSError, ValueError):
        print(f"no {service!r} kept by a running `make run` (looked for {path})", file=sys.stderr)
        return 1
    print(f"asked the keeper of {service} (pid {pid}) to {action} it")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] in ("stop", "start"):
        return control(argv[1], argv[2])
    if len(argv) == 2:
        return keep(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
