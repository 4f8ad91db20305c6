"""One service of `make run`, kept: restarted when it dies, stopped and started on request.

    python -m devkit.keeper <service>           # what `make run` runs for each service
    python -m devkit.keeper redis -- <command>  # and for the Redis it starts (devstack)
    python -m devkit.keeper stop <service>      # make stop-service SERVICE=<service>
    python -m devkit.keeper start <service>     # make start-service SERVICE=<service>

`make run` supervises its processes as one: when any of them exits, it stops the rest. A
service therefore runs under a keeper, which is what `make run` supervises. Like compose's
`restart: unless-stopped`:

- A service that exits on its own after its first STARTUP_GRACE seconds (it crashed, or
  someone killed it) is started again: after RESTART_DELAY (0.5 s), then twice as long
  after each death in a row, at most RESTART_DELAY_MAX (20 s); a run that lasted
  STABLE_AFTER (30 s) starts the count again. The keeper says so, once per death (its exit
  code or signal, and the delay) and once per restart.
- One that exits within its first STARTUP_GRACE seconds could not start (a port in use, a
  bad setting): the keeper exits with its code, and `make run` stops, showing why.
- `stop` makes the keeper stop the service (SIGTERM, SIGKILL after 10 s) and wait; every
  other process keeps running, and the service stays down, not restarted, until `start`
  (which also starts at once one waiting for its restart), with the same environment.
- SIGTERM or SIGINT (Ctrl-C) to the keeper: it stops the service and exits.

The keeper holds the service's listening socket (common.ports: `make run` binds it before
anything starts) and hands it to each run of the service. While the service is down, the
socket is paused: callers are refused, as by a stopped server, and the port stays the
service's, so a restart never finds it taken.

The keeper's pid is in `<data dir>/run/<service>.keeper.pid` (devkit.devstack.data_root),
which is how `stop` and `start` find it; they send it SIGUSR1 and SIGUSR2.

The Redis `make run` starts (when none answers at REDIS_URL) is kept the same way, without
a socket to hold (redis-server binds its own port), and keeps its data across restarts (an
append-only file, devstack.redis_command). The embedded PostgreSQL runs as a daemon of its
own (pg_ctl), not under a keeper: `stop postgres` and `start postgres` stop it (fast: every
connection is cut) and start it again on the same socket, with its data.
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

# Tests shorten the grace and lengthen the first delay (so that a death is seen).
STARTUP_GRACE = float(os.environ.get("KEEPER_STARTUP_GRACE_SECONDS", "10"))
RESTART_DELAY = float(os.environ.get("KEEPER_RESTART_DELAY_SECONDS", "0.5"))
RESTART_DELAY_MAX = 20.0
STABLE_AFTER = 30.0
STOP_WAIT = 10.0


def pid_file(service: str) -> Path:
    from devkit.devstack import data_root

    return data_root() / "run" / f"{service}.keeper.pid"


def how_it_ended(code: int | None) -> str:
    """`code 3`, `signal SIGKILL`: a child's return code, as a person reads it."""
    if code is None or code >= 0:
        return f"code {code}"
    with suppress(ValueError):
        return f"signal {signal.Signals(-code).name}"
    return f"signal {-code}"


class Keeper:
    def __init__(
        self, service: str, command: list[str], listener: socket.socket | None = None
    ) -> None:
        self.service = service
        self.command = command
        self.listener = listener
        self.child: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.wanted = True  # the service should run (until `stop`)
        self.leaving = False
        self.first = True  # the first start: failing it stops the platform
        self.restart_at: float | None = None  # when a service that died starts again
        self.delay = RESTART_DELAY  # before the next restart
        self.deaths = 0  # in a row, each run shorter than STABLE_AFTER

    def _say(self, message: str) -> None:
        print(f"[keeper] {self.service} {message}", file=sys.stderr, flush=True)

    def _start(self) -> int:
        env = dict(os.environ)
        pass_fds: tuple[int, ...] = ()
        if self.listener is not None:
            ports.resume(self.listener)
            pass_fds = ports.hand_over(self.listener, env)
        self.child = subprocess.Popen(self.command, env=env, pass_fds=pass_fds)  # noqa: S603
        self.started_at = time.monotonic()
        return self.child.pid

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

    def _died(self, code: int | None, now: float) -> None:
        """Schedule the restart of a service that exited on its own."""
        ran = now - self.started_at
        if ran >= STABLE_AFTER:
            self.delay, self.deaths = RESTART_DELAY, 0
        delay = self.delay
        self.delay = min(2 * delay, RESTART_DELAY_MAX)
        self.deaths += 1
        self.restart_at = now + delay
        self._say(
            f"died ({how_it_ended(code)}) after {ran:.1f} s up; restarting in {delay:g} s "
            f"(make stop-service SERVICE={self.service} keeps it down)"
        )

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.leaving = True
        elif signum == signal.SIGUSR1:
            self.wanted = False
        elif signum == signal.SIGUSR2:
            self.wanted = True
            self.restart_at = None  # one waiting for its restart starts now

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, self._on_signal)
        self._say(f"started (pid {self._start()})")
        while not self.leaving:
            child = self.child
            now = time.monotonic()
            if child is not None and child.poll() is not None:
                self.child = None
                self._pause()
                if self.first and now - self.started_at < STARTUP_GRACE:
                    code = child.returncode
                    self._say(f"exited ({how_it_ended(code)}) while starting: stopping everything")
                    return code or 1
                self._died(child.returncode, now)
            elif child is not None and not self.wanted:
                code = self._stop()
                self._say(
                    f"stopped ({how_it_ended(code)}); the rest of the platform keeps running. "
                    f"Start it again: make start-service SERVICE={self.service}"
                )
            elif child is None and not self.wanted and self.restart_at is not None:
                self.restart_at = None
                self._say(
                    "stays down (make stop-service), not restarted. "
                    f"Start it again: make start-service SERVICE={self.service}"
                )
            elif child is None and self.wanted and now >= (self.restart_at or 0.0):
                self.first = False
                if self.restart_at is None:
                    self.delay, self.deaths = RESTART_DELAY, 0
                    self._say(f"started (pid {self._start()})")
                else:
                    self.restart_at = None
                    self._say(f"restarted (pid {self._start()}; restart {self.deaths} in a row)")
            if self.first and now - self.started_at >= STARTUP_GRACE:
                self.first = False
            time.sleep(0.1)
        self._stop()
        return 0


def keep(service: str, command: list[str] | None = None) -> int:
    """Keep `service`: by default the platform's own (`python -m <service>`, serving the
    socket `make run` handed over), or `command`."""
    path = pid_file(service)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))
    try:
        if command is not None:
            return Keeper(service, command).run()
        return Keeper(service, [sys.executable, "-m", service], ports.inherited()).run()
    finally:
        with suppress(OSError):
            if path.read_text() == str(os.getpid()):
                path.unlink()


def control(action: str, service: str) -> int:
    from devkit.devstack import SERVICES, data_root, restart_embedded_postgres

    if service == "postgres":
        return restart_embedded_postgres(data_root(), stop=action == "stop")
    known = ("gateway", *SERVICES, "redis")
    if service not in known:
        print(f"no service {service!r}: one of {', '.join(known)}, postgres", file=sys.stderr)
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
    if len(argv) > 3 and argv[2] == "--":
        return keep(argv[1], argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
