"""The peers `make bench` compares us with, each configured as its own docs advise.

- LiteLLM's proxy, from its own virtualenv: `make bench-peers` installs
  `bench/peers-requirements.txt` into `.bench-peers/litellm`. It runs one worker per core
  (`--num_workers` = the cores this process may use), as its production docs advise.
- Portkey's open-source gateway (Node): `make bench-peers` installs `bench/peers-portkey.json`
  as `.bench-peers/portkey/package.json` and runs `npm install` there. It is routed to the
  same upstreams through its OpenAI provider with a custom host, per request (headers).

Both directories are git-ignored, outside the project's dependencies. A peer that is not
installed yields None, and its rows of the tables say "not installed".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from _common import ROOT, UPSTREAM_KEY, stop, tree, wait

from common import ports

LITELLM_VENV = ROOT / ".bench-peers" / "litellm"
PORTKEY_PREFIX = ROOT / ".bench-peers" / "portkey"
PORTKEY_PACKAGE = "@portkey-ai/gateway"
MASTER_KEY = "sk-litellm-bench-0123456789"
# Its model names: the bare upstream's, and one more for the fixed-delay upstream.
CHAT_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
DELAYED_MODEL = "gpt-4o-mini-delayed"
# Everything it would otherwise fetch at start-up (there is no network here) is read from
# the copies inside the package.
QUIET_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
}
# Each peer binds its port itself (neither can inherit a socket: common.ports), so the free
# port chosen for it may be bound by another process first: it is then started again on
# another one, this many times in all. What uvicorn (LiteLLM's server) or Node says then,
# lowercased:
START_ATTEMPTS = 3
PORT_TAKEN = (b"address already in use", b"errno 98", b"eaddrinuse")


def cores() -> int:
    """The cores this process may run on (`nproc`): LiteLLM's worker count."""
    return len(os.sched_getaffinity(0))


def litellm_version(venv: Path = LITELLM_VENV) -> str | None:
    """The installed LiteLLM's version, or None when `make bench-peers` has not run."""
    found = sorted((venv / "lib").glob("python3*/site-packages/litellm-*.dist-info"))
    if not (venv / "bin" / "litellm").exists() or not found:
        return None
    return found[-1].name.removeprefix("litellm-").removesuffix(".dist-info")


def litellm_config(upstream_url: str, delayed_url: str | None) -> str:
    """Its proxy config: our model names pointing at the same upstreams, no callbacks, no
    database (none configured), a master key."""

    def entry(name: str, model: str, base: str) -> dict[str, object]:
        return {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{model}",
                "api_base": base,
                "api_key": UPSTREAM_KEY,
            },
        }

    models = [
        entry(CHAT_MODEL, CHAT_MODEL, upstream_url),
        entry(EMBEDDING_MODEL, EMBEDDING_MODEL, upstream_url),
    ]
    if delayed_url:
        models.append(entry(DELAYED_MODEL, CHAT_MODEL, delayed_url))
    config = {
        "model_list": models,
        "litellm_settings": {
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "set_verbose": False,
        },
        "general_settings": {"master_key": MASTER_KEY},
    }
    return json.dumps(config, indent=2)  # JSON is YAML


@dataclass
class Peer:
    name: str
    version: str
    url: str
    process: subprocess.Popen[bytes]
    # Starts it again on another free port when it exited because its port was taken (the
    # new URL and process), else None.
    restart: Callable[[], tuple[str, subprocess.Popen[bytes]] | None] = lambda: None
    health: str = "/health/liveliness"  # answers 200 once it serves
    workers: int = 1  # its server processes

    def ready(self) -> None:
        """Wait for its health probe (LiteLLM's start-up takes ~20 s here, Portkey's ~2 s),
        starting it again on another port if it exited because another process had taken
        its own."""
        while True:
            try:
                wait(f"{self.url}{self.health}", deadline=300, process=self.process)
                return
            except RuntimeError:
                again = self.restart() if self.process.poll() is not None else None
                if again is None:
                    raise
                self.url, self.process = again

    def processes(self) -> list[psutil.Process]:
        """Its process and every child (LiteLLM's workers): CPU and RSS are summed over them."""
        return tree(self.process.pid)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to whatever of its tree is left (a worker its parent did
        not reap included)."""
        left = self.processes()
        stop(self.process)
        for proc in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.is_running():
                    proc.kill()


@contextlib.contextmanager
def _started(
    name: str,
    version: str,
    command: Callable[[int], list[str]],
    port: int,
    log: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> Iterator[Peer]:
    """`command(port)` started (port 0: a free one, another if it is taken before the peer
    binds it), its output in `log`; stopped on the way out."""
    log.write_bytes(b"")
    logged = 0  # where the current attempt's output starts in `log`
    attempts = 0

    def start() -> tuple[str, subprocess.Popen[bytes]]:
        nonlocal logged, attempts
        chosen = port or ports.free_port()
        logged = log.stat().st_size
        attempts += 1
        with open(log, "ab") as out:
            process = subprocess.Popen(  # noqa: S603
                command(chosen), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
            )
        return f"http://127.0.0.1:{chosen}", process

    def restart() -> tuple[str, subprocess.Popen[bytes]] | None:
        said = log.read_bytes()[logged:].lower()
        if port or attempts >= START_ATTEMPTS or not any(s in said for s in PORT_TAKEN):
            return None
        return start()

    peer = Peer(name, version, *start(), restart=restart)
    try:
        yield peer
    finally:
        peer.stop()


@contextlib.contextmanager
def litellm(
    port: int,
    upstream_url: str,
    delayed_url: str | None,
    workdir: Path,
    log: Path,
    venv: Path = LITELLM_VENV,
) -> Iterator[Peer | None]:
    """LiteLLM's proxy on `port` (0: a free one), one worker per core, started (call
    `ready()` before using it), or None when not installed."""
    version = litellm_version(venv)
    if version is None:
        yield None
        return
    config = workdir / "litellm-config.yaml"
    config.write_text(litellm_config(upstream_url, delayed_url))
    env = {**os.environ, **QUIET_ENV}
    env.pop("DATABASE_URL", None)  # no database: it would try to use one
    workers = cores()

    def command(chosen: int) -> list[str]:
        return [
            str(venv / "bin" / "litellm"),
            "--config", str(config),
            "--host", "127.0.0.1",
            "--port", str(chosen),
            # Its docs for production: as many workers as cores (its default is one).
            "--num_workers", str(workers),
            # uvicorn's supervisor kills a worker that does not answer its ping within 5 s:
            # on this shared machine a worker importing LiteLLM missed it again and again
            # (killed, restarted, never ready in 3 minutes at load average 11).
            "--timeout_worker_healthcheck", "60",
        ]  # fmt: skip

    with _started("LiteLLM", version, command, port, log, env=env, cwd=workdir) as peer:
        peer.workers = workers
        yield peer


def portkey_version(prefix: Path = PORTKEY_PREFIX) -> str | None:
    """The installed Portkey gateway's version, or None when `make bench-peers` has not run
    (or Node is missing)."""
    manifest = prefix / "node_modules" / PORTKEY_PACKAGE / "package.json"
    if shutil.which("node") is None or not manifest.exists():
        return None
    return str(json.loads(manifest.read_text())["version"])


def portkey_headers(upstream_url: str) -> dict[str, str]:
    """What routes one request through Portkey to `upstream_url` (…/v1), as its docs
    describe: its OpenAI provider, a custom host, the upstream's key as the bearer token."""
    return {
        "Authorization": f"Bearer {UPSTREAM_KEY}",
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": upstream_url,
    }


@contextlib.contextmanager
def portkey(
    port: int, workdir: Path, log: Path, prefix: Path = PORTKEY_PREFIX
) -> Iterator[Peer | None]:
    """Portkey's gateway on `port` (0: a free one): one Node process, headless (no console
    UI), started (call `ready()` before using it), or None when not installed. It keeps no
    configuration of its own: every request says where it goes (portkey_headers)."""
    version = portkey_version(prefix)
    if version is None:
        yield None
        return
    server = prefix / "node_modules" / PORTKEY_PACKAGE / "build" / "start-server.js"
    node = shutil.which("node") or "node"

    def command(chosen: int) -> list[str]:
        return [node, str(server), f"--port={chosen}", "--headless"]

    # It listens on every interface (its start-server.js takes no host); the load is sent
    # to 127.0.0.1 only.
    with _started("Portkey", version, command, port, log, cwd=workdir) as peer:
        peer.health = "/"  # "AI Gateway says hey!"
        yield peer
