"""`make bench`: every benchmark in one run, side by side with LiteLLM and Portkey.

    .venv/bin/python bench/suite.py [--quick] [--families chat vectors telemetry semantic]

1. chat: a zero-delay OpenAI-protocol upstream, the same with a fixed delay, the platform
   (fresh embedded Postgres and Redis, an admin, an API key, credentials pointing at the
   upstreams, rate limits off) and, when installed (`make bench-peers`), LiteLLM's proxy
   (one worker per core, no database) and Portkey's gateway pointed at the same upstreams.
   The load generator (bench/loadgen.py, a process of its own) measures every row in 3
   windows, the targets taking turns (bare upstream, ours, LiteLLM, Portkey; then the next
   round): a warm-up, then a fixed window in which the CPU time of every server process is
   read from /proc. A row is the median of its windows, with their range
   (bench/repeats.py). Idle RSS of every service is read before any load; the transport
   floor (bench/floor.py) after. The chat scenarios are also drawn (bench/plots.py).
2. vectors: bench/embeddings.py against the same platform (100k x 384 ingest, HNSW build,
   queries with recall@10 against exact search, the local model's throughput).
3. telemetry: bench/telemetry.py in its own process with its own Postgres and Redis
   (ingestion, lag at 2,000 events/s, the 1M-row 30-day usage query).
4. semantic: bench/semantic_cache.py in its own process (the semantic cache's false hits
   on bench/data's labelled pairs, with and without the guard; the same in --quick).

Prints one markdown table per family, writes bench/results/latest.json, a dated copy of
the tables (bench/results/YYYY-MM-DD.md) and the plots (bench/results/*.png, copied to
bench/plots/ for the README); `--quick` writes bench/results/quick.json and its plots only.
Everything it starts is stopped on the way out, Ctrl-C and failures included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import peers
import plots
import psutil
from _common import (
    RESULTS,
    ROOT,
    SERVICE_NAMES,
    UPSTREAM_KEY,
    Platform,
    cpu_seconds,
    machine,
    platform,
    provision,
    rss_mb,
    start_upstream,
    stop,
    tree,
    utc_now,
    wait,
)
from repeats import median_row
from report import render
from scenarios import GOVERNED_POLICY, SCENARIOS, TARGETS, Scenario, request_for

import embeddings as vectors_bench

BENCH = ROOT / "bench"
PLOTS = BENCH / "plots"  # committed: the latest full run's plots, shown by README.md
EMBEDDING_DIMENSIONS = 1536  # text-embedding-3-small's


@dataclass
class Settings:
    warmup: float  # before a row's first window
    rewarm: float  # before its next ones (the connections are new, the server warm)
    duration: float  # each window
    rounds: int  # windows per row
    delay_ms: float
    vectors: int
    queries: int
    texts: int
    ef: list[int]
    backlog: int
    steady_seconds: float
    rows: int
    repeats: int
    floor_requests: int
    families: list[str]


# 3 windows of 8 s per chat row (22 rows: 11-13 minutes here) keep the whole run under 20
# minutes only with 50k vectors (was 100k; the HNSW build alone took 2-3 minutes).
FULL = Settings(warmup=2, rewarm=1, duration=8, rounds=3, delay_ms=50, vectors=50_000,
                queries=200, texts=1000, ef=[64, 100, 128], backlog=100_000, steady_seconds=10,
                rows=1_000_000, repeats=3, floor_requests=1000, families=[])  # fmt: skip
# A smoke run: every step at tiny sizes (~4 minutes).
QUICK = replace(FULL, warmup=0.5, rewarm=0.3, duration=1.0, vectors=3000, queries=30,
                texts=64, ef=[40, 100], backlog=5000, steady_seconds=2, rows=20_000, repeats=1,
                floor_requests=200)  # fmt: skip


# ---------------------------------------------------------------- the load generator


def generate(
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    concurrency: int,
    warmup: float,
    duration: float,
    servers: dict[str, list[psutil.Process]],
) -> dict[str, Any]:
    """One window: bench/loadgen.py in its own process; the CPU time of each group of
    `servers` over exactly its measured window, and their RSS after it."""
    command = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        "--url",
        url,
        "--body",
        json.dumps(body),
        *(arg for name, value in headers.items() for arg in ("--header", f"{name}: {value}")),
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
        "--wait-for-go",
    ]
    with subprocess.Popen(  # noqa: S603
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as generator:
        assert generator.stdin is not None
        assert generator.stdout is not None
        try:
            _expect(generator, "ready")
            before = {name: cpu_seconds(procs) for name, procs in servers.items()}
            generator.stdin.write("go\n")
            generator.stdin.flush()
            _expect(generator, "end")
            after = {name: cpu_seconds(procs) for name, procs in servers.items()}
            result: dict[str, Any] = json.loads(generator.stdout.readline())
        finally:
            stop(generator, timeout=10)
    ok = result["ok"] or 1
    result["cpu_ms_per_request"] = {
        name: (after[name] - before[name]) * 1000 / ok for name in servers
    }
    result["rss_mb"] = {name: rss_mb(procs) for name, procs in servers.items()}
    return result


def _expect(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdout is not None
    got = process.stdout.readline().strip()
    if got != line:
        raise RuntimeError(f"load generator: expected {line!r}, got {got!r}")


# ---------------------------------------------------------------- families


def probe(url: str, body: dict[str, Any], headers: dict[str, str]) -> str | None:
    """One request before a row's windows: None when it is answered 2xx, else why not (the
    status and the start of the answer), which the row then says instead of figures."""
    try:
        answer = httpx.post(url, json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:160]
    if answer.is_success:
        return None
    return f"HTTP {answer.status_code}: {answer.text.strip()[:120]}"


@dataclass
class Job:
    """One row to measure: a scenario sent to a target."""

    scenario: Scenario
    target: str
    request: tuple[str, dict[str, Any], dict[str, str]]
    servers: Callable[[], dict[str, list[psutil.Process]]]  # read again for each window
    row: dict[str, Any]  # its row of the report, completed once every window is measured
    windows: list[dict[str, Any]]


def chat_family(
    s: Settings,
    running: Platform,
    urls: dict[str, str],
    keys: dict[str, str],
    found: dict[str, peers.Peer | None],
    upstreams: dict[str, subprocess.Popen[bytes]],
) -> dict[str, Any]:
    """Every scenario against the bare upstream, ours, LiteLLM and Portkey (`found`: the
    peers, None when not installed): `s.rounds` windows per row, the targets (and our
    governed key, with the plain scenario it matches) taking turns round after round."""
    rows: list[dict[str, Any]] = []
    governed = [sc for sc in SCENARIOS if sc.governed]
    for scenario in (sc for sc in SCENARIOS if not sc.governed):
        upstream = upstreams["delayed" if scenario.delayed else "bare"]

        def servers(
            target: str, upstream: subprocess.Popen[bytes] = upstream
        ) -> Callable[[], dict[str, list[psutil.Process]]]:
            def read() -> dict[str, list[psutil.Process]]:
                up = tree(upstream.pid)
                if target == "bare":
                    return {"upstream": up}
                if target == "ours":
                    return {**running.processes(), "upstream": up}
                peer = found[target]
                assert peer is not None
                return {target: peer.processes(), "upstream": up}

            return read

        jobs: list[Job] = []
        matching = [  # our governed key: the same request as this one's, to the same upstream
            g
            for g in governed
            if (g.kind, g.concurrency, g.delayed)
            == (scenario.kind, scenario.concurrency, scenario.delayed)
        ]
        plan = [(scenario, t) for t in TARGETS] + [(g, "ours") for g in matching]
        for sc, target in plan:
            row: dict[str, Any] = {
                "scenario": sc.name,
                "kind": sc.kind,
                "concurrency": sc.concurrency,
                "target": target,
            }
            rows.append(row)
            if target in found and found[target] is None:
                row["not_installed"] = True
                continue
            request = request_for(sc, target, urls, keys)
            why = probe(*request)
            if why is not None:
                row["cannot_serve"] = why
                print(f"  {sc.name:<30} {target:<8} cannot serve: {why}", flush=True)
                continue
            jobs.append(Job(sc, target, request, servers(target), row, []))
        for turn in range(s.rounds):
            warmup = s.warmup if turn == 0 else s.rewarm
            # Each round starts one target further on, so that none always follows the
            # same neighbour (LiteLLM's workers, say, still settling).
            for job in jobs[turn % max(len(jobs), 1) :] + jobs[: turn % max(len(jobs), 1)]:
                url, body, headers = job.request
                window = generate(
                    url, body, headers, job.scenario.concurrency, warmup, s.duration,
                    job.servers(),
                )  # fmt: skip
                window["round"] = turn
                window["target"] = job.target
                job.windows.append(window)
                print(_progress(job.scenario.name, job.target, window), flush=True)
        for job in jobs:
            job.row.update(median_row(sorted(job.windows, key=lambda w: w["round"])))
    return {
        "rows": rows,
        "delay_ms": s.delay_ms,
        "warmup_seconds": s.warmup,
        "rewarm_seconds": s.rewarm,
        "duration_seconds": s.duration,
        "rounds": s.rounds,
        "litellm": {"version": p.version, "workers": p.workers}
        if (p := found.get("litellm"))
        else None,
        "portkey": {"version": p.version} if (p := found.get("portkey")) else None,
    }


def _progress(scenario: str, target: str, window: dict[str, Any]) -> str:
    latency = window["latency_ms"]
    return (
        f"  {scenario:<30} {target:<8} round {window['round'] + 1} {window['rps']:8.1f} req/s"
        f"  p50 {latency['p50']:.2f} ms  errors {window['errors']}"
    )


def idle_rss(running: Platform, settle: float = 3.0) -> dict[str, float]:
    """Each service's RSS (MB) at rest, before any load (the local model not loaded)."""
    time.sleep(settle)
    return {name: rss_mb(tree(running.pids[name])) for name in SERVICE_NAMES}


def floor_family(s: Settings, workdir: Path) -> dict[str, Any]:
    """bench/floor.py: the two hops with nothing but the transport, CPU ms per request."""
    log = RESULTS / "floor.log"
    with open(log, "wb") as out:
        code = _run_script(["floor.py", "--requests", str(s.floor_requests)], out)
    if code != 0:
        raise RuntimeError(f"bench/floor.py exited {code}: see {log}")
    return dict(json.loads((RESULTS / "floor.json").read_text()))


def telemetry_family(s: Settings) -> dict[str, Any]:
    """bench/telemetry.py in its own process (its own Postgres and Redis)."""
    log = RESULTS / "telemetry-bench.log"
    with open(log, "wb") as out:
        code = _run_script(
            [
                "telemetry.py",
                "--backlog",
                str(s.backlog),
                "--steady-seconds",
                str(s.steady_seconds),
                "--rows",
                str(s.rows),
                "--repeats",
                str(s.repeats),
                "--trigger-batches",
                "10",
                # Two replicas in one consumer group, as deploy/k8s/base runs telemetry: one
                # process is one core's worth of Python (the figure with one is in the README).
                "--replicas",
                "2",
            ],
            out,
        )
    if code != 0:
        raise RuntimeError(f"bench/telemetry.py exited {code}: see {log}")
    return dict(json.loads((RESULTS / "telemetry.json").read_text()))


def semantic_family() -> dict[str, Any]:
    """bench/semantic_cache.py in its own process (~20 s: the local model, 918 prompts)."""
    log = RESULTS / "semantic-cache-bench.log"
    with open(log, "wb") as out:
        code = _run_script(["semantic_cache.py"], out)
    if code != 0:
        raise RuntimeError(f"bench/semantic_cache.py exited {code}: see {log}")
    result = json.loads((RESULTS / "semantic_cache.json").read_text())
    result.pop("pairs_detail", None)
    return dict(result)


def plots_family(report: dict[str, Any], *, copy: bool) -> list[str]:
    """The chat plots next to the tables (bench/results/); with `copy` (a full run) also in
    bench/plots/, the copy README.md shows."""
    prefix = "quick-" if report.get("quick") else ""
    written = plots.write(report, RESULTS, prefix=prefix)
    if copy:
        PLOTS.mkdir(exist_ok=True)
        for path in written:
            shutil.copyfile(path, PLOTS / path.name)
    return [str(path.relative_to(ROOT)) for path in written]


def _run_script(args: list[str], out: Any) -> int:
    """A bench script in a child process; on the way out (Ctrl-C included) it gets SIGINT,
    which its own clean-up handles, and SIGKILL only if it is still there 60 s later."""
    child = subprocess.Popen(  # noqa: S603
        [sys.executable, str(BENCH / args[0]), *args[1:]],
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        return child.wait()
    finally:
        stop(child, 60, signal.SIGINT)


# ---------------------------------------------------------------- the run


@contextlib.contextmanager
def upstream(delay_ms: float = 0) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The OpenAI-protocol fake on a free port, answering; yields it and its URL."""
    process, port = start_upstream(delay_ms=delay_ms, dimensions=EMBEDDING_DIMENSIONS)
    url = f"http://127.0.0.1:{port}"
    try:
        wait(
            f"{url}/v1/models",
            deadline=60,
            process=process,
            headers={"Authorization": f"Bearer {UPSTREAM_KEY}"},
        )
        yield process, url
    finally:
        stop(process)


def attempt(report: dict[str, Any], family: str, step: Callable[[], Any]) -> None:
    """Run one family; a failure is recorded (and printed) and the others still run."""
    started = time.monotonic()
    print(f"== {family}", flush=True)
    try:
        report[family] = step()
    except Exception as exc:  # one family's failure must not hide the others' figures
        traceback.print_exc()
        report.setdefault("failures", {})[family] = f"{type(exc).__name__}: {exc}"
    report.setdefault("family_seconds", {})[family] = round(time.monotonic() - started, 1)


def platform_families(s: Settings, report: dict[str, Any], workdir: Path) -> None:
    """chat (with idle RSS and the floor) and vectors, on one platform."""
    with contextlib.ExitStack() as stack:
        started = {
            "bare": stack.enter_context(upstream()),
            "delayed": stack.enter_context(upstream(s.delay_ms)),
        }
        upstreams = {name: process for name, (process, _) in started.items()}
        urls = {name: url for name, (_, url) in started.items()}
        peer_stack = stack.enter_context(contextlib.ExitStack())
        found: dict[str, peers.Peer | None] = {}
        if "chat" in s.families:  # the peers start (LiteLLM ~20 s) while the platform does
            found["litellm"] = peer_stack.enter_context(
                peers.litellm(
                    0,  # a free port, another one if it is taken before LiteLLM binds it
                    urls["bare"] + "/v1",
                    urls["delayed"] + "/v1",
                    workdir,
                    RESULTS / "litellm.log",
                )
            )
            found["portkey"] = peer_stack.enter_context(
                peers.portkey(0, workdir, RESULTS / "portkey.log")
            )
        print("starting the platform", flush=True)
        running = stack.enter_context(
            platform(RESULTS / "platform.log", INFERENCE_LOCAL_PRELOAD="false")
        )
        urls["ours"] = running.gateway
        keys = provision(
            running.gateway, urls["bare"] + "/v1", urls["delayed"] + "/v1",
            policy=GOVERNED_POLICY,
        )  # fmt: skip
        if "chat" in s.families:
            report["idle_rss_mb"] = idle_rss(running)
            for name, peer in found.items():
                if peer is not None:
                    peer.ready()
                    urls[name] = peer.url  # known now: ready() may have moved it
                    report.setdefault("idle_rss_mb_peers", {})[name] = rss_mb(peer.processes())
            attempt(report, "chat", lambda: chat_family(s, running, urls, keys, found, upstreams))
            peer_stack.close()  # the peers stop: the rest runs without them
            attempt(report, "floor", lambda: floor_family(s, workdir))
        if "vectors" in s.families:
            args = vectors_bench.parser().parse_args(
                [
                    "--vectors",
                    str(s.vectors),
                    "--queries",
                    str(s.queries),
                    "--texts",
                    str(s.texts),
                    "--ef",
                    *map(str, s.ef),
                ]
            )
            attempt(report, "vectors", lambda: vectors_bench.run(running, args))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--families",
        nargs="+",
        default=["chat", "vectors", "telemetry", "semantic"],
        choices=["chat", "vectors", "telemetry", "semantic"],
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C: every `finally` below stops what it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    s = replace(QUICK if args.quick else FULL, families=args.families)
    started = time.monotonic()
    report: dict[str, Any] = {
        "when": utc_now(),
        "quick": args.quick,
        "machine_at_start": machine(),
        "litellm_version": peers.litellm_version(),
        "litellm_workers": peers.cores(),
        "portkey_version": peers.portkey_version(),
    }
    RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-suite-"))
    print(f"machine: {report['machine_at_start']}", flush=True)
    interrupted = False
    try:
        if {"chat", "vectors"} & set(s.families):
            attempt(report, "platform", lambda: platform_families(s, report, workdir))
            report.pop("platform", None)
        if "telemetry" in s.families:
            attempt(report, "telemetry", lambda: telemetry_family(s))
        if "semantic" in s.families:
            attempt(report, "semantic_cache", semantic_family)
    except KeyboardInterrupt:
        interrupted = True
        report.setdefault("failures", {})["interrupted"] = "stopped by Ctrl-C / SIGTERM"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["machine_at_end"] = machine()
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    if report.get("chat"):
        attempt(report, "plots", lambda: plots_family(report, copy=not args.quick))
    text = render(report)
    print("\n" + text)
    # A smoke run never replaces the figures of the last real one.
    (RESULTS / ("quick.json" if args.quick else "latest.json")).write_text(
        json.dumps(report, indent=2)
    )
    if not args.quick and not interrupted:
        (RESULTS / f"{time.strftime('%Y-%m-%d')}.md").write_text(text)
    return 130 if interrupted else (1 if report.get("failures") else 0)


if __name__ == "__main__":
    raise SystemExit(main())
