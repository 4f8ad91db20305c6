"""The embedded PostgreSQL of `make run` and the tests: tuned once, never under a user."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from devkit import devstack


def _setting(uri: str, name: str) -> str:
    return subprocess.run(
        [devstack._pg_bin("psql"), uri, "-Atc", f"SHOW {name}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_a_new_embedded_server_gets_the_platform_settings_and_keeps_them(
    server_path: Path,
) -> None:
    try:
        uri = devstack.start_embedded_postgres(server_path)
        assert _setting(uri, "shared_buffers") == devstack.EMBEDDED_SETTINGS["shared_buffers"]
        postmaster = (server_path / "pg" / "postmaster.pid").read_text().split()[0]
        again = devstack.start_embedded_postgres(server_path)  # already set: no restart
        assert (server_path / "pg" / "postmaster.pid").read_text().split()[0] == postmaster
        assert _setting(again, "shared_buffers") == devstack.EMBEDDED_SETTINGS["shared_buffers"]
    finally:
        assert devstack.stop_embedded_postgres(server_path)


def test_a_server_another_process_holds_is_not_restarted(server_path: Path) -> None:
    """Another live holder (`make run`, another test run) keeps it as it is: next time."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (server_path / "pg-holders").mkdir()
    (server_path / "pg-holders" / str(holder.pid)).touch()
    try:
        uri = devstack.start_embedded_postgres(server_path)
        assert _setting(uri, "shared_buffers") == "128MB"  # initdb's, untouched
    finally:
        holder.kill()
        holder.wait()
        devstack.stop_embedded_postgres(server_path)


def test_a_test_run_started_beside_this_one_leaves_its_database_working(
    postgres_admin_url: str,
) -> None:
    """Every pytest session, when it starts, sets its tmp root back to mode 0700; a server
    run as `pgserver` under that root then lost its own files at its next checkpoint and
    died, taking the rest of the run with it (issue 15: seen with two `make test` at once)."""
    beside = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         str(Path(__file__).parent / "test_devstack_env.py")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert beside.returncode == 0, beside.stdout + beside.stderr
    # A checkpoint opens the data directory by its full path, as the server does on its own.
    assert _setting(postgres_admin_url, "data_directory")
    done = subprocess.run(
        [devstack._pg_bin("psql"), postgres_admin_url, "-Atc", "CHECKPOINT"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _setting(postgres_admin_url, "server_version")
