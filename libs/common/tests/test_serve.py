"""common.serve: how the services' uvicorn treats the connections of their clients."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import pytest

from common import ports
from common.serve import KEEP_ALIVE_SECONDS

REQUEST = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _answer(conn: socket.socket) -> bytes:
    """One HTTP/1.1 answer with a Content-Length, read whole: its status line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "the server closed the connection"
        body += chunk
    return head.split(b"\r\n", 1)[0]


def test_an_idle_connection_outlives_the_clients_pools() -> None:
    # The gateway's aiohttp pools keep an idle connection 15 s: the server must keep it
    # longer, or a request sent as the server closes it fails (a 502 from the gateway).
    assert KEEP_ALIVE_SECONDS > 15
    process, port = ports.spawn(
        [sys.executable, "-m", "devkit.fakes.run", "openai"],  # served by common.serve.run
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=60).status_code == 200
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(REQUEST)
            assert _answer(conn) == b"HTTP/1.1 200 OK"
            # Idle past uvicorn's default keep-alive (5 s), the connection stays open...
            conn.settimeout(7)
            with pytest.raises(TimeoutError):
                conn.recv(1)  # b"" (closed) within 5 s under uvicorn's default
            # ...and carries the next request.
            conn.settimeout(30)
            conn.sendall(REQUEST)
            assert _answer(conn) == b"HTTP/1.1 200 OK"
    finally:
        process.terminate()
        process.wait(10)
