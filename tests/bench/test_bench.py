"""The benchmark suite's own logic: percentiles, the load generator, the comparison it
makes, rows as the median of their windows, the peers' rows when a peer is missing or
cannot serve, LiteLLM's worker count, and the plots. No timing is asserted here: performance is
shown by `make bench`, never by a test."""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
# Appended, never prepended: bench/ holds scripts named like the services' packages.
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))

import loadgen  # noqa: E402
import peers  # noqa: E402
import plots  # noqa: E402
from _common import percentile, summary  # noqa: E402
from repeats import median_row  # noqa: E402
from report import render  # noqa: E402
from scenarios import SCENARIOS, request_for  # noqa: E402

MACHINE = {
    "cpu": "test",
    "nproc": 2,
    "arch": "x86_64",
    "memory_gb": 1,
    "python": "3.11",
    "load_average": [1.0, 1.0, 1.0],
}


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100..1, unsorted on purpose
    assert summary(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert math.isnan(percentile([], 0.5))


class CountingServer:
    """HTTP/1.1 on 127.0.0.1: counts connections and requests; every 4th answer is a 500;
    `chunked` answers in three chunks of server-sent events."""

    def __init__(self, *, chunked: bool = False) -> None:
        self.chunked = chunked
        self.connections = 0
        self.requests = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                self.requests += 1
                status = b"500 Internal Server Error" if self.requests % 4 == 0 else b"200 OK"
                if self.chunked:
                    writer.write(b"HTTP/1.1 " + status + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for data in (b"data: {}\n\n", b"data: {}\n\n", b"data: [DONE]\n\n"):
                        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                        await writer.drain()
                        await asyncio.sleep(0)
                    writer.write(b"0\r\n\r\n")
                else:
                    body = b'{"ok": true}'
                    writer.write(
                        b"HTTP/1.1 "
                        + status
                        + b"\r\nContent-Length: "
                        + str(len(body)).encode()
                        + b"\r\n\r\n"
                        + body
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


async def load(port: int, concurrency: int) -> dict[str, object]:
    target = loadgen.Target.from_url(
        f"http://127.0.0.1:{port}/v1/chat/completions", b'{"model": "m"}', {"X-Test": "1"}
    )
    return await loadgen.run(target, concurrency=concurrency, duration=0.3, warmup=0.1)


async def test_generator_keeps_one_connection_per_worker_and_counts_errors() -> None:
    server = CountingServer()
    async with server as port:
        result = await load(port, concurrency=3)
    assert server.connections == 3  # keep-alive: no reconnect, even after a 500
    assert result["ok"] > 0
    assert result["errors"] > 0
    assert result["statuses"] == {"200": result["ok"], "500": result["errors"]}
    assert result["requests"] == result["ok"] + result["errors"]
    # Every answer read was a request the server saw; at most one per worker was abandoned
    # in flight when the window closed.
    completed = result["completed_total"]
    assert isinstance(completed, int)
    assert completed <= server.requests <= completed + 3
    assert "first_byte_ms" not in result  # not streamed


async def test_generator_reads_chunked_streams_to_their_end() -> None:
    server = CountingServer(chunked=True)
    async with server as port:
        result = await load(port, concurrency=2)
    # Misreading a chunked body would desynchronise the connection: reconnects and errors
    # other than the server's 500s.
    assert server.connections == 2
    assert set(result["statuses"]) == {"200", "500"}  # type: ignore[arg-type]
    first, total = result["first_byte_ms"], result["latency_ms"]
    assert isinstance(first, dict)
    assert isinstance(total, dict)
    assert first["p50"] <= total["p50"]


def test_each_target_gets_the_same_request_in_its_own_names() -> None:
    urls = {
        "bare": "http://b",
        "delayed": "http://d",
        "ours": "http://o",
        "litellm": "http://l",
        "portkey": "http://p",
    }
    by_name = {s.name: s for s in SCENARIOS}
    keys = {"plain": "sk-ours", "governed": "sk-governed"}
    chat = {t: request_for(by_name["chat c=50"], t, urls, keys) for t in urls if t != "delayed"}
    assert chat["bare"][0] == "http://b/v1/chat/completions"
    assert chat["ours"][1]["model"] == "openai/gpt-4o-mini"
    assert chat["ours"][2] == {"Authorization": "Bearer sk-ours"}
    assert chat["litellm"][2] == {"Authorization": f"Bearer {peers.MASTER_KEY}"}
    assert len({str(request[1]["messages"]) for request in chat.values()}) == 1
    # Portkey: routed per request to the same upstream, with the upstream's own key.
    assert chat["portkey"][0] == "http://p/v1/chat/completions"
    assert chat["portkey"][1]["model"] == "gpt-4o-mini"
    assert chat["portkey"][2]["x-portkey-provider"] == "openai"
    assert chat["portkey"][2]["x-portkey-custom-host"] == "http://b/v1"
    assert chat["portkey"][2]["Authorization"] == chat["bare"][2]["Authorization"]
    delayed = by_name["chat c=50, delayed upstream"]
    assert request_for(delayed, "bare", urls, keys)[0] == "http://d/v1/chat/completions"
    assert request_for(delayed, "ours", urls, keys)[1]["model"] == "bench-delayed"
    assert request_for(delayed, "litellm", urls, keys)[1]["model"] == peers.DELAYED_MODEL
    assert request_for(delayed, "portkey", urls, keys)[2]["x-portkey-custom-host"] == "http://d/v1"
    stream = request_for(by_name["stream c=1"], "ours", urls, keys)[1]
    assert stream["stream"] is True
    # The governed scenario: the same request as ours, with the key under a policy.
    governed = request_for(by_name["chat c=50, governed key"], "ours", urls, keys)
    assert governed[1] == chat["ours"][1]
    assert governed[2] == {"Authorization": "Bearer sk-governed"}
    embed = request_for(by_name["embeddings c=10"], "ours", urls, keys)
    assert embed[0] == "http://o/v1/embeddings"
    assert embed[1]["model"] == "openai/text-embedding-3-small"


def test_without_litellm_its_rows_say_not_installed(tmp_path: Path) -> None:
    assert peers.litellm_version(tmp_path) is None
    with peers.litellm(1, "http://u/v1", None, tmp_path, tmp_path / "log", venv=tmp_path) as peer:
        assert peer is None
    assert not (tmp_path / "log").exists()  # nothing was started

    def row(target: str, rps: float) -> dict[str, object]:
        return {
            "scenario": "chat c=50",
            "kind": "chat",
            "concurrency": 50,
            "target": target,
            "rps": rps,
            "errors": 0,
            "latency_ms": {"p50": 10.0, "p95": 20.0, "p99": 30.0},
            "cpu_ms_per_request": {"gateway": 1.0, "inference": 2.0, "upstream": 0.3},
            "generator_cpu_ms_per_request": 0.1,
            "rss_mb": {"gateway": 100.0},
        }

    report = {
        "when": "2026-11-27T00:00:00Z",
        "machine_at_start": MACHINE,
        "litellm_version": None,
        "chat": {
            "rows": [
                row("bare", 1000.0),
                row("ours", 200.0),
                {
                    "scenario": "chat c=50",
                    "kind": "chat",
                    "concurrency": 50,
                    "target": "litellm",
                    "not_installed": True,
                },
            ],
            "delay_ms": 50,
            "warmup_seconds": 2,
            "duration_seconds": 6,
            "litellm": None,
        },
    }
    text = render(report)
    assert "| chat c=50 | LiteLLM | not installed |" in text
    assert "| chat c=50 | 0.200 | not installed |" in text  # the ratios table
    assert "| chat c=50: ≥ 10x LiteLLM's req/s | LiteLLM not installed | n/a |" in text
    assert "| chat c=50: ≥ 0.10x the bare upstream's req/s | 0.200x | **met** |" in text
    assert "LiteLLM: not installed (make bench-peers)" in text


def window(target: str, rps: float, p50: float, cpu: float, round_: int) -> dict[str, object]:
    """One load generator window as bench/suite.py records it."""
    server = {"bare": "upstream", "ours": "gateway"}.get(target, target)
    return {
        "round": round_,
        "target": target,
        "rps": rps,
        "ok": int(rps * 8),
        "requests": int(rps * 8),
        "errors": 1,
        "statuses": {"200": int(rps * 8)},
        "latency_ms": {"p50": p50, "p95": p50 * 2, "p99": p50 * 3},
        "cpu_ms_per_request": {server: cpu, "upstream": 0.3},
        "generator_cpu_ms_per_request": 0.1,
        "rss_mb": {server: 100.0},
    }


def measured(scenario: str, target: str, figures: list[tuple[float, float, float]]) -> dict:
    """A row of `scenario` from one window per (rps, p50, cpu) in `figures`, as the suite
    makes it: the median of its windows."""
    found = [window(target, *f, round_=i) for i, f in enumerate(figures)]
    return {
        "scenario": scenario,
        "kind": "chat",
        "concurrency": 50,
        "target": target,
        **median_row(found),
    }


def three_way_report(portkey: dict[str, object]) -> dict[str, object]:
    """chat c=50 measured in 3 rounds for the bare upstream, ours and LiteLLM, and the
    Portkey row given."""
    rows = [
        measured("chat c=50", "bare", [(1000, 1.0, 0.2), (1200, 1.2, 0.2), (900, 0.8, 0.2)]),
        measured("chat c=50", "ours", [(200, 11.0, 2.0), (300, 9.2, 1.0), (250, 10.8, 3.0)]),
        measured("chat c=50", "litellm", [(50, 41.0, 8.0), (60, 31.2, 8.0), (100, 20.8, 8.0)]),
        {"scenario": "chat c=50", "kind": "chat", "concurrency": 50, **portkey},
    ]
    return {
        "when": "2026-12-04T00:00:00Z",
        "machine_at_start": MACHINE,
        "litellm_version": "1.105.5",
        "litellm_workers": 2,
        "portkey_version": None,
        "chat": {
            "rows": rows,
            "delay_ms": 50,
            "warmup_seconds": 2,
            "rewarm_seconds": 1,
            "duration_seconds": 8,
            "rounds": 3,
            "litellm": {"version": "1.105.5", "workers": 2},
            "portkey": None,
        },
    }


def test_a_row_is_the_median_of_its_windows_with_their_range() -> None:
    report = three_way_report({"target": "portkey", "not_installed": True})
    ours = report["chat"]["rows"][1]  # type: ignore[index]
    assert ours["rps"] == 250
    assert ours["latency_ms"]["p50"] == 10.8
    assert ours["errors"] == 3  # counts are summed over the windows
    assert ours["statuses"] == {"200": 6000}
    assert [w["round"] for w in ours["windows"]] == [0, 1, 2]
    text = render(report)
    # req/s, p50, added p50 (round by round: 10, 8, 10), server CPU: median (min-max).
    assert "| chat c=50 | ours (gateway) | 250.0 (200.0-300.0) | 10.80 (9.20-11.00) |" in text
    assert "| 10.00 (8.00-10.00) |" in text
    assert "| 2.00 (1.00-3.00) |" in text
    assert "LiteLLM 1.105.5, 2 workers" in text
    assert "median of 3 windows of 8 s" in text
    # Ratios round by round: ours / bare 0.2, 0.25, 0.278; ours / LiteLLM 4, 5, 2.5.
    assert "| chat c=50 | 0.250 (0.200-0.278) | 4.0 (2.5-5.0) | not installed |" in text
    assert "| chat c=50: ≥ 10x LiteLLM's req/s | 4.0 (2.5-5.0)x | **missed** |" in text


def test_portkey_rows_say_not_installed_or_why_it_cannot_serve(tmp_path: Path) -> None:
    assert peers.portkey_version(tmp_path) is None
    with peers.portkey(0, tmp_path, tmp_path / "log", prefix=tmp_path) as peer:
        assert peer is None
    assert not (tmp_path / "log").exists()  # nothing was started

    text = render(three_way_report({"target": "portkey", "not_installed": True}))
    assert "| chat c=50 | Portkey | not installed |" in text
    assert "Portkey: not installed (make bench-peers)" in text

    answer = 'HTTP 500: {"status":"failure","message":"Something went wrong"}'
    text = render(three_way_report({"target": "portkey", "cannot_serve": answer}))
    said = 'cannot serve: HTTP 500: {"status":"failure","message":"Something went wrong"}'
    assert f"| chat c=50 | Portkey | {said} |" in text
    assert f"| 4.0 (2.5-5.0) | {said} |" in text  # the ratios table says it too

    failed = measured("chat c=50", "portkey", [(0, 0.0, 0.0)] * 3)
    failed.update(ok=0, latency_ms={"p50": None, "p95": None, "p99": None})
    failed["error_sample"] = "ConnectionRefusedError: [Errno 111]"
    text = render(three_way_report(failed))
    assert "| Portkey | cannot serve: every request failed (ConnectionRefusedError" in text


def test_litellm_runs_one_worker_per_core(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "lib" / "python3.11" / "site-packages" / "litellm-1.0.0.dist-info").mkdir(parents=True)
    (venv / "bin").mkdir()
    said = tmp_path / "argv"
    fake = venv / "bin" / "litellm"
    fake.write_text(f'#!/bin/sh\necho "$@" > {said}\nexec sleep 30\n')
    fake.chmod(0o755)
    with peers.litellm(0, "http://u/v1", None, tmp_path, tmp_path / "log", venv=venv) as peer:
        assert peer is not None
        for _ in range(200):
            if said.exists() and said.read_text():
                break
            time.sleep(0.05)
        argv = said.read_text().split()
        process = peer.process
    assert argv[argv.index("--num_workers") + 1] == str(len(os.sched_getaffinity(0)))
    assert process.poll() is not None  # stopped on the way out


def test_the_plots_are_written_from_a_report(tmp_path: Path) -> None:
    report = three_way_report({"target": "portkey", "not_installed": True})
    data = plots.figures(report)
    assert data["throughput"]["ours"]["chat c=50"] == (250, 200, 300)
    assert data["added_p50"]["litellm"]["chat c=50"] == (30.0, 20.0, 40.0)
    assert "portkey" not in data["throughput"]  # not installed: no bar
    written = plots.write(report, tmp_path, prefix="t-")
    assert [p.name for p in written] == ["t-chat-throughput.png", "t-chat-added-p50.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
