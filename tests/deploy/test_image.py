"""deploy/docker: the one Dockerfile every app image is built from, and its entry point."""

from __future__ import annotations

import shlex
import subprocess

from .apps import DOCKERFILE, ENTRYPOINT, ROOT, Instruction, dockerfile, entrypoint_commands

# What an image may take from the build context: the workspace pins, the shared library,
# the one app (SERVICE_DIR) and the entry point. Never the whole tree, nor another app.
CONTEXT_SOURCES = {"pyproject.toml", "libs/common", "${SERVICE_DIR}", "deploy/docker/entrypoint.sh"}


def stages() -> list[str]:
    return [i.stage for i in dockerfile() if i.keyword == "FROM"]


def final(keyword: str) -> list[Instruction]:
    return [i for i in dockerfile() if i.stage == stages()[-1] and i.keyword == keyword]


def copy_sources(instruction: Instruction) -> tuple[list[str], bool]:
    """A COPY's sources, and whether they come from another stage (--from)."""
    words = shlex.split(instruction.arguments)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1], any(f.startswith("--from=") for f in flags)


def test_it_is_multi_stage_and_the_runtime_copies_only_what_the_builder_made() -> None:
    assert stages() == ["builder", "runtime"]
    from_builder = [copy_sources(i) for i in final("COPY")]
    assert [s for s, staged in from_builder if staged] == [["/opt/venv"], ["/app"]]
    assert not [i for i in dockerfile() if i.stage == "runtime" and i.keyword == "RUN"
                and "pip install" in i.arguments]  # fmt: skip


def test_only_the_shared_library_and_one_app_come_from_the_build_context() -> None:
    sources = {
        source
        for i in dockerfile()
        if i.keyword in ("COPY", "ADD")
        for source in copy_sources(i)[0]
        if not copy_sources(i)[1]
    }
    assert sources == CONTEXT_SOURCES
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
