"""common.ports: a port is chosen by binding it, outside the ephemeral range, and the
socket that chose it is the one that serves it."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import httpx
import pytest

from common import ports


def _connect(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=5).close()


def _bind(port: int, *, reuse: bool) -> int | None:
    """The error another process's bind of `port` meets (None: it got the port)."""
    with socket.socket() as other:
        if reuse:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            other.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno
    return None


def test_a_chosen_port_lies_outside_the_ephemeral_range_and_nobody_else_can_take_it() -> None:
    low, high = ports.ephemeral_range()
    with ports.listen() as sock:
        port = ports.port_of(sock)
        assert not low <= port <= high
        for reuse in (False, True):  # as a plain client would, and as a server would
            assert _bind(port, reuse=reuse) == errno.EADDRINUSE
        _connect(port)  # it listens at once: a caller waits in the backlog


def test_free_port_never_gives_the_same_port_twice() -> None:
    low, high = ports.ephemeral_range()
    chosen = [ports.free_port() for _ in range(50)]
    assert len(set(chosen)) == 50
    assert not any(low <= port <= high for port in chosen)


def test_a_named_port_in_use_names_its_holder() -> None:
    with ports.listen() as sock:
        port = ports.port_of(sock)
        with pytest.raises(ports.PortInUse) as taken:
            ports.listen("127.0.0.1", port)
    assert taken.value.port == port
    assert f"127.0.0.1:{port} is already in use by pid {os.getpid()} (" in str(taken.value)


def test_a_paused_listener_refuses_callers_and_keeps_its_port() -> None:
    with ports.listen() as sock:
        port = ports.port_of(sock)
        ports.pause(sock)
        with pytest.raises(ConnectionRefusedError):
            _connect(port)
        assert _bind(port, reuse=False) == errno.EADDRINUSE
        ports.resume(sock)
        _connect(port)
        assert ports.port_of(sock) == port


def test_a_refusing_port_refuses_and_cannot_be_listened_on() -> None:
    with ports.refusing_port() as port:
        with pytest.raises(ConnectionRefusedError):
            _connect(port)
        with pytest.raises(ports.PortInUse):
            ports.listen("127.0.0.1", port)


def test_a_spawned_server_serves_the_socket_chosen_here() -> None:
    process, port = ports.spawn(
        [sys.executable, "-m", "devkit.fakes.run", "openai"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Listening from the start: the first request waits for the app, never refused.
        response = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=60)
        assert response.status_code == 200
        assert response.json()["object"] == "list"
    finally:
        process.terminate()
        process.wait(10)


def test_a_service_whose_port_is_taken_exits_naming_the_holder() -> None:
    with ports.listen() as sock:
        port = ports.port_of(sock)
        result = subprocess.run(
            [sys.executable, "-m", "devkit.fakes.run", "openai", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert f"127.0.0.1:{port} is already in use by pid {os.getpid()}" in result.stderr
