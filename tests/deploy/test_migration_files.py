"""Migration files: a reader listing a versions/ directory sees them in the order they run.

Each file is named `<YYYY_MM_DD>_<revision>_<slug>.py`. Walking the revision chain from the
base, the dates never go back, and each file's `Create Date` is the date in its name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["auth", "inference", "embeddings", "telemetry"]
NAME = re.compile(r"^(\d{4})_(\d{2})_(\d{2})_(\w+?_\d{4})_\w+\.py$")


def _assigned(path: Path, name: str) -> str | None:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                assert node.value is not None
                value = ast.literal_eval(node.value)
                assert value is None or isinstance(value, str)
                return value
    raise AssertionError(f"{path.name} assigns no {name}")


@pytest.mark.parametrize("service", SERVICES)
def test_migration_dates_follow_the_revision_chain(service: str) -> None:
    files = sorted((ROOT / "services" / service / "migrations" / "versions").glob("*.py"))
    assert files, f"{service} has no migrations"
    by_parent: dict[str | None, tuple[str, Path]] = {}
    for path in files:
        match = NAME.match(path.name)
        assert match, f"{path.name}: not <YYYY_MM_DD>_<revision>_<slug>.py"
        year, month, day, revision = match.groups()
        assert _assigned(path, "revision") == revision, path.name
        created = re.search(r"^Create Date: (\S+)", path.read_text(), re.MULTILINE)
        assert created, f"{path.name} has no Create Date"
        assert created.group(1) == f"{year}-{month}-{day}", path.name
        parent = _assigned(path, "down_revision")
        assert parent not in by_parent, f"{service}: two migrations follow {parent}"
        by_parent[parent] = (f"{year}{month}{day}", path)

    chain, parent = [], None
    while parent in by_parent:
        date, path = by_parent[parent]
        chain.append((date, path.name))
        parent = _assigned(path, "revision")
    assert len(chain) == len(files), f"{service}: a migration is off the chain"
    assert [d for d, _ in chain] == sorted(d for d, _ in chain), chain
