"""The peers `make bench` compares us with: LiteLLM's proxy, from its own virtualenv.

`make bench-peers` installs `bench/peers-requirements.txt` into `.bench-peers/litellm`
(git-ignored, outside the project's dependencies). Without it the LiteLLM rows of the
tables say "not installed".
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from _common import ROOT, UPSTREAM_KEY, stop, wait

from common import ports

LITELLM_VENV = ROOT / ".bench-peers" / "litellm"
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
# LiteLLM binds its port itself (it cannot inherit a socket: common.ports), so the free
# port chosen for it may be bound by another process first: it is then started again on
# another one, this many times in all. What uvicorn (its server) says then, lowercased:
START_ATTEMPTS = 3
PORT_TAKEN = (b"address already in use", b"errno 98")


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

    def ready(self) -> None:
        """Wait for its liveliness probe (its start-up takes ~20 s here), starting it again
        on another port if it exited because another process had taken its own."""
        while True:
            try:
                wait(f"{self.url}/health/liveliness", deadline=180, process=self.process)
                return
            except RuntimeError:
                again = self.restart() if self.process.poll() is not None else None
                if again is None:
                    raise
                self.url, self.process = again


@contextlib.contextmanager
def litellm(
    port: int,
    upstream_url: str,
    delayed_url: str | None,
    workdir: Path,
    log: Path,
    venv: Path = LITELLM_VENV,
) -> Iterator[Peer | None]:
    """LiteLLM's proxy on `port` (0: a free one, another if it is taken before LiteLLM
    binds it; one worker, its default), started (call `ready()` before using it), or None
    when not installed."""
    version = litellm_version(venv)
    if version is None:
        yield None
        return
    config = workdir / "litellm-config.yaml"
    config.write_text(litellm_config(upstream_url, delayed_url))
    env = {**os.environ, **QUIET_ENV}
    env.pop("DATABASE_URL", None)  # no database: it would try to use one
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
                [
                    str(venv / "bin" / "litellm"),
                    "--config",
                    str(config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(chosen),
                    "--num_workers",
                    "1",
                ],
                env=env,
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return f"http://127.0.0.1:{chosen}", process

    def restart() -> tuple[str, subprocess.Popen[bytes]] | None:
        said = log.read_bytes()[logged:].lower()
        if port or attempts >= START_ATTEMPTS or not any(s in said for s in PORT_TAKEN):
            return None
        return start()

    peer = Peer("LiteLLM", version, *start(), restart=restart)
    try:
        yield peer
    finally:
        stop(peer.process)
