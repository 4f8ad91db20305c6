"""Listening ports for the platform's processes, chosen without a race.

The race this module removes: a port found by binding port 0 and closing the socket is
free only at that instant. It lies in the kernel's ephemeral range
(`/proc/sys/net/ipv4/ip_local_port_range`, 32768-60999 by default), from which every
outgoing connection takes its local port, so a connection made before the server binds
the port again can take it ("address already in use": a fresh clone's `make test` failed
so once in two runs, issue 15).

Two rules instead:

- **The socket that chose a port is the one that serves it.** `listen()` returns a
  listening socket; a process that is to serve it inherits it (`hand_over()` in the
  parent, `inherited()` in the child, which gives it to uvicorn). From the moment the port
  is chosen nothing else can take it, and a caller that connects before the app is ready
  waits in the kernel's backlog instead of being refused.
- **Ports are chosen outside the ephemeral range**, at random, the next one tried when one
  is taken. No outgoing connection ever takes such a port, so one that must be let go and
  bound again (a program that cannot inherit a socket, such as redis-server: `free_port()`;
  a keeper's listener between two runs of its service: `pause()`) is only ever lost to a
  process that names that very port.

A named port that is taken raises `PortInUse`, whose message names the process that holds
it when that can be seen (psutil, where installed: the dev stack and the tests).
"""

from __future__ import annotations

import errno
import os
import random
import socket
import subprocess
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

# Environment variable naming the inherited listening socket's file descriptor.
LISTEN_FD_ENV = "PLATFORM_LISTEN_FD"
BACKLOG = 2048  # uvicorn's default
LINUX_EPHEMERAL = (32768, 60999)  # the kernel's default ip_local_port_range
LOWEST = 15000  # below: the ports people give their own servers (8000, 6379, 9090, ...)
ATTEMPTS = 200

# Never reseeded: pytest-randomly reseeds `random` before each test, which would make every
# test try the same ports in the same order.
_random = random.SystemRandom()
# Ports this process chose and let go (free_port), never chosen twice: the program they
# were chosen for may not have bound them yet.
_let_go: set[int] = set()


class PortInUse(OSError):
    """A named port is taken; the message says by whom, when that can be seen."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        who = holder(port)
        super().__init__(
            f"{host}:{port} is already in use"
            + (f" by {who}" if who else " (by a process this user cannot see)")
        )


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (and for binding port 0)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return LINUX_EPHEMERAL


def candidates() -> list[int]:
    """Ports that no outgoing connection takes, in random order. Where the ephemeral range
    leaves fewer than a thousand of them, every port from LOWEST up, the held socket then
    being what keeps the port (only a paused listener could lose it)."""
    low, high = ephemeral_range()
    ports = [p for p in range(LOWEST, 65536) if not low <= p <= high]
    if len(ports) < 1000:
        ports = list(range(LOWEST, 65536))
    _random.shuffle(ports)
    return ports


def holder(port: int) -> str | None:
    """`pid 1234 (python -m auth)`: the process listening on `port`, if it can be seen."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return None
    for connection in connections:
        if (
            connection.laddr
            and connection.laddr.port == port
            and connection.status == psutil.CONN_LISTEN
            and connection.pid
        ):
            try:
                command = " ".join(psutil.Process(connection.pid).cmdline()) or "?"
            except psutil.Error:
                command = "?"
            return f"pid {connection.pid} ({command[:200]})"
    return None


def _bound(family: socket.AddressFamily, address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As uvicorn and asyncio do: a restart binds its port again while the last run's
        # closed connections are still in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)  # at once: a socket only bound can share its port (SO_REUSEADDR)
    except BaseException:
        sock.close()
        raise
    return sock


def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket listening on host:port (the first address `host` resolves to).

    Port 0 chooses a free port outside the ephemeral range. A named port that is taken
    raises PortInUse."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    ip = str(address[0])
    if port:
        try:
            return _bound(family, (ip, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(host, port) from exc
            raise
    for candidate in candidates()[:ATTEMPTS]:
        if candidate in _let_go:
            continue
        with suppress(OSError):
            return _bound(family, (ip, candidate))
    raise OSError(f"no free port on {host} after {ATTEMPTS} attempts")


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free just now, outside the ephemeral range, never returned twice by
    this process: for a program that cannot inherit a socket (redis-server, a peer's
    proxy). The program binds it itself, and its launcher tries another port if it cannot."""
    with listen(host) as sock:
        port = port_of(sock)
    _let_go.add(port)
    return port


@contextmanager
def refusing_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port that refuses connections for as long as the block runs: bound, never
    listening, so that no server can start on it meanwhile (what a dead upstream looks
    like, without the chance that something else answers there)."""
    for candidate in candidates()[:ATTEMPTS]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, candidate))  # no SO_REUSEADDR: nobody may share it
        except OSError:
            sock.close()
            continue
        with sock:
            yield candidate
        return
    raise OSError(f"no free port on {host} after {ATTEMPTS} attempts")


def hand_over(sock: socket.socket, env: MutableMapping[str, str]) -> tuple[int]:
    """Make `sock` the listening socket of a child process: its descriptor is named in
    `env`; pass the returned tuple as Popen's `pass_fds`."""
    env[LISTEN_FD_ENV] = str(sock.fileno())
    return (sock.fileno(),)


def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    **popen: Any,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `command` serving a socket bound here (any free port, or `port`), which it
    takes with `inherited()` (common.serve, devkit.fakes.run do); returns the process and
    its port. This process keeps no copy: the port is the child's."""
    with listen(host, port) as sock:
        child_env = dict(os.environ if env is None else env)
        pass_fds = hand_over(sock, child_env)
        process = subprocess.Popen(list(command), env=child_env, pass_fds=pass_fds, **popen)  # noqa: S603
        return process, port_of(sock)


def inherited() -> socket.socket | None:
    """The listening socket this process was handed (`hand_over`), if any. The variable is
    removed, so that a process this one starts does not look for it."""
    fd = os.environ.pop(LISTEN_FD_ENV, None)
    if fd is None:
        return None
    sock = socket.socket(fileno=int(fd))  # family and type read from the descriptor
    if sock.type != socket.SOCK_STREAM:
        raise OSError(f"{LISTEN_FD_ENV}={fd} is not a stream socket")
    return sock


def pause(sock: socket.socket) -> None:
    """Stop listening (new connections are refused) and keep the port, until `resume`.

    shutdown(SHUT_RD) on a listening socket takes it out of the listening state on Linux
    (HAProxy pauses its listeners so); a port chosen explicitly, as every port here is,
    stays bound to it. Nothing if the socket is not listening."""
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RD)


def resume(sock: socket.socket) -> None:
    """Listen again on a paused socket."""
    sock.listen(BACKLOG)
