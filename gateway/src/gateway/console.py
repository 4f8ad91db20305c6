"""The web console (console/, built by `make install` into console/dist): static assets the
gateway serves at /console/, calling the public API like any other frontend."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

# The repository's console/dist, where `make install` builds it.
DEFAULT_CONSOLE_DIR = Path(__file__).resolve().parents[3] / "console" / "dist"


def mount_console(app: FastAPI, directory: Path) -> None:
    """/console/ from `directory` (index.html and assets/), when it was built."""
    app.mount("/console", StaticFiles(directory=directory, html=True, check_dir=False))
