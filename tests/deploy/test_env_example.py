""".env.example and the README's configuration table list the same variables, and each
default the file shows is the one the settings have."""

from __future__ import annotations

import re

import pytest

from .apps import APPS, ROOT, App

README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"
# `# NAME=value` (commented out, as every line of the file is) or `NAME=value`.
ASSIGNMENT = re.compile(r"^(?:# )?([A-Z][A-Z0-9_]*)=(.*)$")
SERVICE = "<SERVICE>_"  # the table's `<SERVICE>_HOST`: one variable per app that reads it


def assignments(example: str) -> list[tuple[str, str]]:
    return [
        (match[1], match[2]) for line in example.splitlines() if (match := ASSIGNMENT.match(line))
    ]


def table_rows(readme: str) -> list[list[str]]:
    """The names in the first cell of each row of the configuration table, as written."""
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return [
        re.findall(r"`([^`]+)`", line.split("|")[1])
        for line in section.splitlines()
        if line.startswith("| `")
    ]


def spelled_out(name: str) -> set[str]:
    if not name.startswith(SERVICE):
        return {name}
    rest = name.removeprefix(SERVICE)
    return {
        f"{app.prefix}{rest}" for app in APPS.values() if f"{app.prefix}{rest}" in app.known_env()
    }


KNOWN = frozenset().union(*(app.known_env() for app in APPS.values()))


def documented(readme: str) -> tuple[set[str], list[set[str]]]:
    """The names the table spells out, and for each abbreviation (`_MAX_OVERFLOW` after
    `<SERVICE>_DATABASE_POOL_SIZE`) the names it may stand for: the one before it with its
    tail replaced, those a setting reads if any does."""
    names: set[str] = set()
    abbreviations: list[set[str]] = []
    for row in table_rows(readme):
        previous: set[str] = set()
        for token in row:
            if token.startswith("_"):
                for full in previous:
                    parts = full.split("_")
                    options = {"_".join(parts[:k]) + token for k in range(1, len(parts))}
                    abbreviations.append(options & KNOWN or options)
            else:
                previous = spelled_out(token)
                names |= previous
    return names, abbreviations


def disagreements(readme: str, example: str) -> list[str]:
    names, abbreviations = documented(readme)
    listed = [name for name, _ in assignments(example)]
    problems = [
        f"{n}: listed twice in .env.example" for n in sorted(set(listed)) if listed.count(n) > 1
    ]
    problems += [
        f"{n}: in the README's table, not in .env.example" for n in sorted(names - set(listed))
    ]
    meant: set[str] = set()
    for options in abbreviations:
        found = options & set(listed)
        if len(found) != 1:
            problems.append(
                f"{' or '.join(sorted(options))}: in the README's table, not in .env.example"
            )
        meant |= found
    problems += [
        f"{n}: in .env.example, not in the README's table"
        for n in sorted(set(listed) - names - meant)
    ]
    prefixes = tuple(app.prefix for app in APPS.values())
    problems += [
        f"{n}: read by no setting"
        for n in sorted(set(listed))
        if n.startswith(prefixes) and n not in KNOWN
    ]
    return problems


def test_the_file_and_the_readme_table_list_the_same_variables() -> None:
    assert disagreements(README.read_text(), ENV_EXAMPLE.read_text()) == []


def test_a_variable_missing_on_either_side_is_caught() -> None:
    readme, example = README.read_text(), ENV_EXAMPLE.read_text()
    table_only = "in the README's table, not in .env.example"
    file_only = "in .env.example, not in the README's table"

    assert disagreements(readme, example.replace("# SENTRY_DSN=\n", "")) == [
        f"SENTRY_DSN: {table_only}"
    ]
    misspelt = example.replace("# AUTH_ARGON2_MEMORY_KIB=", "# AUTH_MEMORY_KIB=")
    assert disagreements(readme, misspelt) == [
        f"AUTH_ARGON2_MEMORY_KIB: {table_only}",
        f"AUTH_MEMORY_KIB: {file_only}",
        "AUTH_MEMORY_KIB: read by no setting",
    ]
    assert disagreements(
        readme.replace("| `SENTRY_ENVIRONMENT` |", "| `SENTRY_ENV` |"), example
    ) == [
        f"SENTRY_ENV: {table_only}",
        f"SENTRY_ENVIRONMENT: {file_only}",
    ]


def test_copied_as_it_is_it_changes_nothing_and_holds_no_secret() -> None:
    example = ENV_EXAMPLE.read_text()
    assert [line for line in example.splitlines() if line and not line.startswith("#")] == []
    values = dict(assignments(example))
    for app in APPS.values():
        for field in app.secret_fields():
            for name in app.env_names(field) & values.keys():
                assert values[name] == "", name


@pytest.mark.parametrize("app", APPS.values(), ids=list(APPS))
def test_each_default_it_shows_is_the_settings_default(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = {name: value for name, value in assignments(ENV_EXAMPLE.read_text()) if value}
    for name in app.known_env():
        monkeypatch.delenv(name, raising=False)
    defaults = app.settings()
    checked = 0
    for field in app.settings.model_fields:
        for name in app.env_names(field) & shown.keys():
            monkeypatch.setenv(name, shown[name])
            assert getattr(app.settings(), field) == getattr(defaults, field), name
            monkeypatch.delenv(name)
            checked += 1
    assert checked >= 10
