"""deploy/docker: the one Dockerfile every app image is built from, and its entry point."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from .apps import (
    APPS,
    DOCKERFILE,
    ENTRYPOINT,
    ROOT,
    Instruction,
    dockerfile,
    entrypoint_commands,
    image_env,
)

# What an image may take from the build context: the workspace pins, the shared library,
# the one app (SERVICE_DIR) and the entry point. Never the whole tree, nor another app.
CONTEXT_SOURCES = {"pyproject.toml", "libs/common", "${SERVICE_DIR}", "deploy/docker/entrypoint.sh"}
# ...and the console stage, the console's sources (never a lock file, node_modules or dist).
CONSOLE_SOURCES = {"console/package.json", "console/build.mjs", "console/tsconfig.json",
                   "console/src"}  # fmt: skip


def stages() -> list[str]:
    return [i.stage for i in dockerfile() if i.keyword == "FROM"]


def in_stage(stage: str, keyword: str) -> list[Instruction]:
    return [i for i in dockerfile() if i.stage == stage and i.keyword == keyword]


def final(keyword: str) -> list[Instruction]:
    """The runtime stage's instructions: what every app's image is (app-<name> adds to it)."""
    return in_stage("runtime", keyword)


def copy_sources(instruction: Instruction) -> tuple[list[str], bool]:
    """A COPY's sources, and whether they come from another stage (--from)."""
    words = shlex.split(instruction.arguments)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1], any(f.startswith("--from=") for f in flags)


def test_it_is_multi_stage_and_the_runtime_copies_only_what_the_builder_made() -> None:
    app_stages = [f"app-{name}" for name in APPS]
    assert stages()[:3] == ["console", "builder", "runtime"]
    assert sorted(stages()[3:-1]) == sorted(app_stages)
    from_builder = [copy_sources(i) for i in final("COPY")]
    assert [s for s, staged in from_builder if staged] == [["/opt/venv"], ["/app"]]
    assert not [i for i in dockerfile() if i.stage == "runtime" and i.keyword == "RUN"
                and "pip install" in i.arguments]  # fmt: skip


def test_each_image_is_its_app_stage_on_the_runtime_and_only_the_gateway_adds_to_it() -> None:
    (last,) = [i for i in dockerfile() if i.keyword == "FROM"][-1:]
    assert last.arguments == "app-${SERVICE}"
    assert "ARG SERVICE" in DOCKERFILE.read_text().split("\nFROM ", 1)[0]  # global: usable in FROM
    for name in APPS:
        (base,) = in_stage(f"app-{name}", "FROM")
        assert base.arguments == f"runtime AS app-{name}"
        added = [i for i in dockerfile() if i.stage == f"app-{name}" and i.keyword != "FROM"]
        if name != "gateway":
            assert added == [], name


def test_the_gateway_image_carries_the_console_built_from_its_pinned_packages() -> None:
    npm, build = [i.arguments for i in in_stage("console", "RUN")]
    assert npm.startswith("npm install ")
    assert {"--ignore-scripts", "--no-package-lock"} <= set(npm.split())
    assert build.startswith("node build.mjs")
    copied = [copy_sources(i) for i in in_stage("console", "COPY")]
    assert {source for sources, _ in copied for source in sources} == CONSOLE_SOURCES
    assert "console/package.json" in copied[0][0]  # before the sources: npm's layer is reused
    (copy,) = in_stage("app-gateway", "COPY")
    assert copy.arguments == "--from=console /console/dist /app/console"
    (env,) = in_stage("app-gateway", "ENV")
    assert env.arguments == "GATEWAY_CONSOLE_DIR=/app/console"
    assert "GATEWAY_CONSOLE_DIR" in image_env("gateway")
    assert not [app for app in APPS if app != "gateway" and "GATEWAY_CONSOLE_DIR" in image_env(app)]


def test_only_the_shared_library_and_one_app_come_from_the_build_context() -> None:
    sources = {
        (i.stage, source)
        for i in dockerfile()
        if i.keyword in ("COPY", "ADD")
        for source in copy_sources(i)[0]
        if not copy_sources(i)[1]
    }
    assert {source for stage, source in sources if stage != "console"} == CONTEXT_SOURCES
    assert {source for stage, source in sources if stage == "console"} == CONSOLE_SOURCES
    assert not [i for i in dockerfile() if i.keyword == "ADD"]


def test_it_runs_as_a_non_root_user() -> None:
    (user,) = final("USER")
    uid = user.arguments.split(":")[0]
    assert uid not in ("0", "root")
    (create,) = [i for i in final("RUN") if "useradd" in i.arguments]
    assert f"--uid {uid}" in create.arguments


def test_its_health_check_fetches_healthz_and_it_serves_by_default() -> None:
    (check,) = final("HEALTHCHECK")
    assert "/healthz" in check.arguments
    assert "CMD" in check.arguments.split()
    (entrypoint,) = final("ENTRYPOINT")
    assert entrypoint.arguments == '["/usr/local/bin/entrypoint.sh"]'
    (cmd,) = final("CMD")
    assert cmd.arguments == '["serve"]'


def test_the_entry_point_is_valid_sh_and_handles_serve_migrate_and_wait() -> None:
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)
    assert entrypoint_commands() == {"serve", "migrate", "wait-migrated"}
    assert f"COPY --chmod=0755 {ENTRYPOINT.relative_to(ROOT)}" in DOCKERFILE.read_text()


def test_secrets_and_local_state_stay_out_of_the_build_context() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", ".data"} <= ignored
    # The image builds the console itself: a developer's build never enters it.
    assert {"console/node_modules", "console/dist"} <= ignored


def test_the_console_stage_builds_from_what_it_copies(tmp_path: Path) -> None:
    """The console stage's COPYs laid out as in its WORKDIR, the packages `make install`
    fetched linked in (the stage's `npm install`, without the network), then its build
    command: what the gateway's image serves comes out, from those files alone."""
    assert [i.arguments for i in in_stage("console", "WORKDIR")] == ["/console"]
    modules = ROOT / "console" / "node_modules"
    assert modules.is_dir(), "run `make install` first"
    for copy in in_stage("console", "COPY"):
        source, target = shlex.split(copy.arguments)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, tmp_path / target)
        else:
            shutil.copy(ROOT / source, tmp_path / target)
    (tmp_path / "node_modules").symlink_to(modules)
    _, build = [i.arguments for i in in_stage("console", "RUN")]

    subprocess.run(["sh", "-c", build], cwd=tmp_path, check=True, timeout=120)

    built = tmp_path / "dist"
    assert (built / "index.html").is_file()
    assert (built / "docs" / "index.html").is_file()
    assert (built / "docs" / "assets" / "swagger-ui-bundle.js").is_file()
