"""What the benchmarks share: percentiles, /proc readings, the machine, starting the platform.

Imported by the scripts in bench/ (their directory is on sys.path when they run); it never
imports the services' packages, some of which share a name with a script here.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform as platform_module
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "libs" / "common" / "src"))
sys.path.insert(0, str(ROOT / "libs" / "devkit" / "src"))
from common import ports  # noqa: E402
from devkit import devstack  # noqa: E402

ADMIN_EMAIL = "perf@example.com"
ADMIN_PASSWORD = "bench-Passphrase-for-the-platform-1"  # noqa: S105
UPSTREAM_KEY = "sk-bench-upstream-0123456789abcdef"
SERVICE_NAMES = ("gateway", *devstack.SERVICES)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least q of the values at or
    below it (p50 of 1..100 is 50, p99 is 99, p100 the largest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p95 and p99 of `values`."""
    return {f"p{round(q * 100)}": percentile(values, q) for q in (0.5, 0.95, 0.99)}


def wait(
    url: str,
    deadline: float = 120,
    *,
    process: subprocess.Popen[Any] | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Until GET `url` answers 200; RuntimeError after `deadline` seconds or as soon as
    `process` (the server behind `url`) has exited."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({process.returncode})")
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready")


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (those alive now)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    """User + system CPU seconds (utime + stime from /proc) of `processes`, summed."""
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def rss_mb(processes: Sequence[psutil.Process]) -> float:
    """Resident memory of `processes`, summed, in MB (10^6 bytes)."""
    total = 0
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total / 1e6


def machine() -> dict[str, Any]:
    """The CPU model, core count, memory and load average (1, 5, 15 min) now."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
            model,
        )
    return {
        "cpu": model,
        "arch": platform_module.machine(),
        "nproc": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform_module.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def start_upstream(
    *, delay_ms: float = 0, dimensions: int = 8
) -> tuple[subprocess.Popen[bytes], int]:
    """The OpenAI-protocol fake (`python -m devkit.fakes.run openai`), checking our key, on
    a free port it inherits (common.ports: no other process can take it meanwhile); returns
    it and its port."""
    command = [
        sys.executable,
        "-m",
        "devkit.fakes.run",
        "openai",
        "--api-key",
        UPSTREAM_KEY,
        "--dimensions",
        str(dimensions),
    ]
    if delay_ms:
        command += ["--delay-ms", str(delay_ms)]
    return ports.spawn(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(
    process: subprocess.Popen[Any] | None, timeout: float = 30, sig: int = signal.SIGTERM
) -> None:
    """Send `sig`; after `timeout` seconds SIGKILL it and whatever it left behind. Nothing if
    it already exited."""
    if process is None or process.poll() is not None:
        return
    left = tree(process.pid)
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        for proc in reversed(left):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        process.wait(10)


@dataclass
class Platform:
    """The whole platform (`python -m devkit.devstack run`) on free ports, fresh data."""

    ports: dict[str, int]  # filled once devstack has announced the ports it holds
    signing_key: str
    data_dir: Path
    stack: subprocess.Popen[bytes]
    pids: dict[str, int] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def gateway(self) -> str:
        return self.url("gateway")

    def processes(self) -> dict[str, list[psutil.Process]]:
        """Each service's process, and Redis and Postgres (server and backends)."""
        found = {name: tree(pid) for name, pid in self.pids.items()}
        found["redis"] = [
            p for p in tree(self.stack.pid) if p.name().startswith("redis")
        ]  # started by devstack on a free port (REDIS_URL's port 0)
        pid_file = self.data_dir / "pg" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            found["postgres"] = tree(int(pid_file.read_text().split()[0]))
        return found


@contextlib.contextmanager
def platform(log: Path, *, root: Path = ROOT, **env_extra: str) -> Iterator[Platform]:
    """Start the platform with an admin (ADMIN_EMAIL / ADMIN_PASSWORD), rate limits and caps off,
    a fresh embedded Postgres and Redis; stop it all and delete its data on the way out.
    `root`: the checkout to run (its own .venv; bench/chat_ab.py runs two side by side).

    devstack chooses the ports (`<NAME>_PORT=0`, Redis on port 0): each service's is bound
    before anything starts and served by that very socket, so no other process can take it
    in between (common.ports); the ports are read from the line it prints."""
    key = secrets.token_hex(32)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        {
            "ADMIN_EMAIL": ADMIN_EMAIL,
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "INTERNAL_SIGNING_KEY": key,
            "LOG_LEVEL": "WARNING",
            "GATEWAY_RATE_LIMIT_PER_MINUTE": "0",
            "GATEWAY_RATE_LIMIT_MODEL_PER_MINUTE": "0",
            # One user drives every concurrent request: no cap on their requests in flight
            # (16 by default) or their open streams (8), or c=50 measures 429s.
            "GATEWAY_UPSTREAM_MAX_CONNECTIONS_PER_USER": "0",
            "INFERENCE_MAX_CONCURRENT_STREAMS": "0",
            "PLATFORM_DATA_DIR": str(data_dir),
            "PLATFORM_ENV_FILE": "",  # the platform as shipped, whatever a .env says
            "REDIS_URL": "redis://127.0.0.1:0/0",
            **{f"{name.upper()}_PORT": "0" for name in SERVICE_NAMES},
            **env_extra,
        }
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        python = sys.executable if root == ROOT else str(root / ".venv" / "bin" / "python")
        stack = subprocess.Popen(  # noqa: S603 (our own interpreter, or the checkout's)
            [python, "-m", "devkit.devstack", "run"],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Platform({}, key, data_dir, stack)
    try:
        deadline = time.monotonic() + 180
        running.ports = announced_ports(log, stack, deadline)
        while not devstack.platform_ready(running.gateway):
            if stack.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"make run: not ready (exit code {stack.poll()})")
            time.sleep(0.25)
        children = {" ".join(p.cmdline()): p.pid for p in tree(stack.pid)[1:]}
        running.pids = {
            name: next(pid for cmd, pid in children.items() if cmd.endswith(f"-m {name}"))
            for name in SERVICE_NAMES
        }
        yield running
    finally:
        stop(stack, 60)  # devstack stops the services, Redis and Postgres on SIGTERM
        devstack.stop_embedded_postgres(data_dir)  # if devstack could not: its holder is gone
        shutil.rmtree(data_dir, ignore_errors=True)


def announced_ports(log: Path, stack: subprocess.Popen[bytes], deadline: float) -> dict[str, int]:
    """The ports `python -m devkit.devstack run` says it holds (the line it prints before
    it starts any process, into `log`); RuntimeError if it exits first or after `deadline`
    (time.monotonic)."""
    while time.monotonic() < deadline:
        found = devstack.announced_ports(log.read_text(errors="replace"))
        if found is not None:
            return found
        if stack.poll() is not None:
            raise RuntimeError(f"devstack exited ({stack.returncode}) before its ports: see {log}")
        time.sleep(0.05)
    raise RuntimeError(f"devstack announced no ports: see {log}")


@contextlib.contextmanager
def admin_client(gateway: str) -> Iterator[httpx.Client]:
    """An httpx client logged in as the bench's admin, CSRF header set."""
    with httpx.Client(base_url=gateway, timeout=30) as client:
        login = client.post("/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        login.raise_for_status()
        client.headers["X-CSRF-Token"] = login.json()["csrf_token"]
        yield client


DELAYED_ALIAS = "bench-delayed"


def provision(
    gateway: str,
    upstream_url: str,
    delayed_url: str | None = None,
    *,
    policy: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The admin's own OpenAI credential pointing at `upstream_url` (what `openai/<model>`
    resolves to) and an API key; with `delayed_url`, a shared credential there too and the
    alias DELAYED_ALIAS routing to it (gpt-4o-mini); with `policy`, a second key under that
    policy. Returns the keys: `plain` and, with `policy`, `governed`."""
    with admin_client(gateway) as admin:
        admin.post(
            "/v1/providers/credentials",
            json={
                "provider": "openai",
                "name": f"bench-{secrets.token_hex(4)}",
                "api_key": UPSTREAM_KEY,
                "base_url": upstream_url,
            },
        ).raise_for_status()
        if delayed_url:
            shared = admin.post(
                "/v1/providers/credentials",
                json={
                    "provider": "openai",
                    "name": "bench-delayed",
                    "shared": True,
                    "api_key": UPSTREAM_KEY,
                    "base_url": delayed_url,
                },
            )
            shared.raise_for_status()
            admin.post(
                "/v1/providers/aliases",
                json={
                    "alias": DELAYED_ALIAS,
                    "shared": True,
                    "targets": [
                        {"model": "openai/gpt-4o-mini", "credential_id": shared.json()["id"]}
                    ],
                },
            ).raise_for_status()
        keys = {}
        for name, fields in (("plain", {}), ("governed", policy)):
            if fields is None:
                continue
            created = admin.post("/auth/api-keys", json={"name": f"bench-{name}", **fields})
            created.raise_for_status()
            keys[name] = str(created.json()["key"])
        return keys
