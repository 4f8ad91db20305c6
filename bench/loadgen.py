"""A small HTTP/1.1 load generator: fixed concurrency, fixed duration, keep-alive.

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8000/v1/chat/completions \
        --body '{"model": "openai/gpt-4o-mini", "messages": [...]}' \
        --header 'Authorization: Bearer sk-...' --concurrency 10 --warmup 2 --duration 10

One asyncio task per concurrent worker, each with its own keep-alive connection, sending
the same pre-encoded request (headers and body built once) as soon as the previous answer
has been read in full. A warm-up runs first on the same connections and the load never
pauses; the requests that finish inside the measured window are counted (throughput and
latency, as wrk does). For a streamed answer (chunked
transfer encoding) it records the time to the first body chunk as well as the total.

It is meant to run in a process of its own (uvloop when installed), so that its CPU time
is its own: with `--wait-for-go` it prints `ready` after the warm-up, opens the measured
window when a line arrives on its standard input and prints `end` when the window closes
(the caller reads the servers' CPU times at both). The result is one JSON object on
standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from _common import summary

REQUEST_TIMEOUT = 60.0


@dataclass(frozen=True)
class Target:
    """What every request of a run is: one URL, one body, the same headers."""

    host: str
    port: int
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    method: str = "POST"

    @classmethod
    def from_url(cls, url: str, body: bytes, headers: dict[str, str] | None = None) -> Target:
        parts = urlsplit(url)
        return cls(
            parts.hostname or "127.0.0.1",
            parts.port or 80,
            parts.path or "/",
            body,
            tuple((headers or {}).items()),
        )

    def encode(self) -> bytes:
        lines = [
            f"{self.method} {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Connection: keep-alive",
            "Content-Type: application/json",
            f"Content-Length: {len(self.body)}",
        ]
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass
class Window:
    """The measured interval (perf_counter seconds) and what happened in it."""

    start: float = 0.0
    end: float = float("inf")
    latencies: list[float] = field(default_factory=list)
    first_bytes: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    completed: int = 0  # every finished request, warm-up included
    error_sample: str | None = None


class ProtocolError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, float | None, bool]:
    """Read one response in full: (status, perf_counter at its first body chunk if the body
    is chunked, keep-alive). Bodies are framed by Content-Length or chunked encoding."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, header_block = head.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(status_line[:80].decode("latin-1"))
    status = int(parts[1])
    length: int | None = None
    chunked = False
    keep_alive = parts[0] == b"HTTP/1.1"
    for line in header_block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            keep_alive = value != b"close"
    first: float | None = None
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # the empty trailer
                break
            await reader.readexactly(size + 2)
            if first is None:
                first = time.perf_counter()
    elif length is not None:
        await reader.readexactly(length)
    else:  # the body runs to the end of the connection
        await reader.read()
        keep_alive = False
    return status, first, keep_alive


async def worker(target: Target, request: bytes, window: Window) -> None:
    """Send `request` again and again on one connection (reopened after an error), until
    cancelled; record what finishes inside the window."""
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        while True:
            started = time.perf_counter()
            try:
                if connection is None:
                    connection = await asyncio.open_connection(target.host, target.port)
                reader, writer = connection
                writer.write(request)
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    status, first, keep_alive = await read_response(reader)
            except (
                OSError,
                EOFError,
                TimeoutError,
                ProtocolError,
                ValueError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
            ) as exc:
                status, first, keep_alive = 0, None, False
                window.error_sample = window.error_sample or f"{type(exc).__name__}: {exc}"[:200]
            finished = time.perf_counter()
            window.completed += 1
            if not keep_alive and connection is not None:
                connection[1].close()
                connection = None
            if window.start <= finished <= window.end:
                window.statuses[status] = window.statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    window.latencies.append(finished - started)
                    if first is not None:
                        window.first_bytes.append(first - started)
                else:
                    window.errors += 1
                    if status == 0:
                        await asyncio.sleep(0.01)  # a refused connection: do not spin
    finally:
        if connection is not None:
            connection[1].close()


async def run(
    target: Target,
    *,
    concurrency: int,
    duration: float,
    warmup: float = 0.0,
    go: Callable[[], Awaitable[object]] | None = None,
    end: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Load from the start; after `warmup` seconds await `go()` (the load goes on meanwhile),
    then count what finishes in the next `duration` seconds and call `end()` as the window
    closes. Requests still in flight then are abandoned (their connections closed): in a
    steady state they balance those that were in flight when the window opened."""
    request = target.encode()
    window = Window(start=float("inf"))
    tasks = [asyncio.create_task(worker(target, request, window)) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        if go is not None:
            await go()
        cpu_before = _own_cpu()
        window.start = time.perf_counter()
        window.end = window.start + duration
        await asyncio.sleep(duration)
        cpu = _own_cpu() - cpu_before
        if end is not None:
            end()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result(window, duration, concurrency, cpu)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def result(window: Window, duration: float, concurrency: int, cpu: float) -> dict[str, Any]:
    """Requests per second, latency percentiles (ms), errors and the generator's CPU."""
    ok = len(window.latencies)
    to_ms = [x * 1000 for x in window.latencies]
    out: dict[str, Any] = {
        "concurrency": concurrency,
        "seconds": duration,
        "requests": ok + window.errors,
        "ok": ok,
        "errors": window.errors,
        "statuses": {str(k): v for k, v in sorted(window.statuses.items())},
        "rps": ok / duration,
        "latency_ms": {**summary(to_ms), "mean": sum(to_ms) / ok if ok else None},
        "completed_total": window.completed,
        "generator_cpu_seconds": cpu,
        "generator_cpu_ms_per_request": cpu * 1000 / ok if ok else None,
    }
    if window.first_bytes:
        first = [x * 1000 for x in window.first_bytes]
        out["first_byte_ms"] = summary(first)
    if window.error_sample:
        out["error_sample"] = window.error_sample
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", default="{}", help="the JSON body, sent as is")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--wait-for-go",
        action="store_true",
        help="print 'ready' after the warm-up, measure after a line on stdin",
    )
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    target = Target.from_url(
        args.url, args.body.encode(), {k.strip(): v.strip() for k, v in headers.items()}
    )

    async def go() -> None:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    def end() -> None:
        print("end", flush=True)

    async def main_async() -> dict[str, Any]:
        return await run(
            target,
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            go=go if args.wait_for_go else None,
            end=end if args.wait_for_go else None,
        )

    try:
        import uvloop
    except ImportError:
        outcome = asyncio.run(main_async())
    else:
        outcome = uvloop.run(main_async())
    print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
