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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from _common import ROOT, UPSTREAM_KEY, stop, wait

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

    def ready(self) -> None:
        """Wait for its liveliness probe (its start-up takes ~20 s here)."""
        wait(f"{self.url}/health/liveliness", deadline=180, process=self.process)


@contextlib.contextmanager
def litellm(
    port: int,
    upstream_url: str,
    delayed_url: str | None,
    workdir: Path,
    log: Path,
    venv: Path = LITELLM_VENV,
) -> Iterator[Peer | None]:
    """LiteLLM's proxy on `port` (one worker, its default), started (call `ready()` before
    using it), or None when not installed."""
    version = litellm_version(venv)
    if version is None:
        yield None
        return
    config = workdir / "litellm-config.yaml"
    config.write_text(litellm_config(upstream_url, delayed_url))
    env = {**os.environ, **QUIET_ENV}
    env.pop("DATABASE_URL", None)  # no database: it would try to use one
    with open(log, "wb") as out:
        process = subprocess.Popen(  # noqa: S603
            [
                str(LITELLM_VENV / "bin" / "litellm"),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                "1",
            ],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Peer("LiteLLM", version, f"http://127.0.0.1:{port}", process)
    finally:
        stop(process)
