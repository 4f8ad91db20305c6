"""The embedded PostgreSQL of `make run` and the tests: tuned once, never under a user."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common import devstack


def _setting(uri: str, name: str) -> str:
    return subprocess.run(
        [devstack._pg_bin("psql"), uri, "-Atc", f"SHOW {name}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_a_new_embedded_server_gets_the_platform_settings_and_keeps_them(
    tmp_path: Path,
) -> None:
    try:
        uri = devstack.start_embedded_postgres(tmp_path)
        assert _setting(uri, "shared_buffers") == devstack.EMBEDDED_SETTINGS["shared_buffers"]
        postmaster = (tmp_path / "pg" / "postmaster.pid").read_text().split()[0]
        again = devstack.start_embedded_postgres(tmp_path)  # already set: no restart
        assert (tmp_path / "pg" / "postmaster.pid").read_text().split()[0] == postmaster
        assert _setting(again, "shared_buffers") == devstack.EMBEDDED_SETTINGS["shared_buffers"]
    finally:
        assert devstack.stop_embedded_postgres(tmp_path)


def test_a_server_another_process_holds_is_not_restarted(tmp_path: Path) -> None:
    """Another live holder (`make run`, another test run) keeps it as it is: next time."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / "pg-holders").mkdir()
    (tmp_path / "pg-holders" / str(holder.pid)).touch()
    try:
        uri = devstack.start_embedded_postgres(tmp_path)
        assert _setting(uri, "shared_buffers") == "128MB"  # initdb's, untouched
    finally:
        holder.kill()
        holder.wait()
        devstack.stop_embedded_postgres(tmp_path)
