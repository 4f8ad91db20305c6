""".github/workflows/ci.yml, offline: valid for GitHub Actions (the workflow schema that
check-jsonschema vendors), run on every push and pull request, with the commands of
.ci/run and `make lint`, pinned actions, no secrets and no containers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml
from packaging.specifiers import SpecifierSet

from .apps import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
# `uses: owner/name@<commit>  # vX.Y.Z`: a tag can be moved, a commit cannot.
PINNED = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}  # v\d+(\.\d+)*$")


def load() -> dict[str, Any]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(workflow, dict)
    return workflow


def steps() -> list[dict[str, Any]]:
    [job] = load()["jobs"].values()
    return list(job["steps"])


def schema_errors(path: Path) -> list[str]:
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
         "--output-format", "json", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    report = json.loads(checked.stdout)
    return [f"{e['path']}: {e['message'][:200]}" for e in report.get("errors", [])]


def test_the_workflow_is_valid_against_the_github_workflow_schema() -> None:
    assert schema_errors(WORKFLOW) == []


def test_the_schema_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "ci.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "run-on:"))

    [error] = schema_errors(broken)
    assert error.startswith("$.jobs.test: ")


def test_it_runs_on_every_push_and_pull_request() -> None:
    workflow = load()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"push", "pull_request"}
    assert triggers["push"] is None  # every branch and tag
    assert triggers["pull_request"] is None


def test_it_runs_what_a_developer_and_the_projects_ci_run() -> None:
    runs = [step["run"] for step in steps() if "run" in step]
    assert runs == ["make install", "make lint", ".ci/run"]
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("exec make test")
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check ." in lint
    assert "ruff format --check ." in lint
    assert "mypy " in lint


def test_one_ubuntu_runner_with_a_supported_python_and_no_containers() -> None:
    [job] = load()["jobs"].values()
    assert job["runs-on"].startswith("ubuntu-")
    assert "services" not in job  # `make test` starts its own PostgreSQL and Redis
    assert "container" not in job
    [python] = [s["with"]["python-version"] for s in steps() if "setup-python" in s.get("uses", "")]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert python in SpecifierSet(project["requires-python"])


def test_actions_are_pinned_to_a_commit_and_nothing_uses_a_secret() -> None:
    text = WORKFLOW.read_text()
    uses = re.findall(r"uses: (.*)$", text, flags=re.MULTILINE)
    assert uses
    assert [u for u in uses if not PINNED.match(u)] == []
    assert re.search(r"secrets\s*[.\[]|github\.token|GITHUB_TOKEN", text) is None
    assert "pull_request_target" not in text  # runs a fork's code with the repository's rights
    assert load()["permissions"] == {"contents": "read"}
    checkout = next(s for s in steps() if "actions/checkout" in s.get("uses", ""))
    assert checkout["with"]["persist-credentials"] is False
