"""`make run` reads .env: its values reach every process the dev stack starts, and a
variable set in the real environment wins over the file."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from devkit import devstack

ENV_FILE = """\
# a comment, then the forms a .env may use
LOG_LEVEL=DEBUG
export GATEWAY_RATE_LIMIT_PER_MINUTE=0
INFERENCE_PRICES='{"openai/gpt-4o-mini": {"input": 0.15, "output": 0.6}}'
REDIS_URL=redis://127.0.0.1:6390/0
# SENTRY_DSN=
ADMIN_EMAIL
"""


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The process environment, as the dev stack sees it, for this test only: a repository
    at tmp_path, and REDIS_URL set by the user."""
    environ = {"PLATFORM_ROOT": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:6379/0"}
    monkeypatch.setattr(os, "environ", environ)
    return environ


def environment_of_each_process() -> dict[str, str]:
    listeners = {
        name: socket.create_server(("127.0.0.1", 0)) for name in (*devstack.SERVICES, "gateway")
    }
    try:
        return devstack.Platform({}, "redis://127.0.0.1:6379/0", listeners).env()
    finally:
        for sock in listeners.values():
            sock.close()


def test_make_run_takes_settings_from_dot_env_and_the_environment_wins(
    environ: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(ENV_FILE)

    assert devstack.load_env_file() == tmp_path / ".env"

    given = environment_of_each_process()
    assert given["LOG_LEVEL"] == "DEBUG"
    assert given["GATEWAY_RATE_LIMIT_PER_MINUTE"] == "0"
    assert given["INFERENCE_PRICES"] == '{"openai/gpt-4o-mini": {"input": 0.15, "output": 0.6}}'
    assert environ["REDIS_URL"] == "redis://127.0.0.1:6379/0"  # set before: not the file's
    assert "SENTRY_DSN" not in environ  # commented out
    assert "ADMIN_EMAIL" not in environ  # a name without a value sets nothing


def test_without_a_dot_env_nothing_changes(environ: dict[str, str]) -> None:
    before = dict(environ)

    assert devstack.load_env_file() is None
    assert environ == before


def test_platform_env_file_names_another_file_or_none(
    environ: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("LOG_LEVEL=DEBUG\n")
    (tmp_path / "other.env").write_text("LOG_LEVEL=WARNING\n")

    environ["PLATFORM_ENV_FILE"] = ""
    assert devstack.load_env_file() is None
    assert "LOG_LEVEL" not in environ

    environ["PLATFORM_ENV_FILE"] = str(tmp_path / "other.env")
    assert devstack.load_env_file() == tmp_path / "other.env"
    assert environ["LOG_LEVEL"] == "WARNING"

    environ["PLATFORM_ENV_FILE"] = str(tmp_path / "missing.env")
    with pytest.raises(SystemExit, match=r"missing\.env: no such file"):
        devstack.load_env_file()
