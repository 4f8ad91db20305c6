"""docker-compose.yml, offline: the Compose schema, and that the platform it describes can
start (every build, file and required setting there, migrations first, one public port)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .apps import APPS, ROOT, SERVICES, entrypoint_commands, image_env

COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
# `${NAME:?message}`: compose refuses to start while NAME is unset.
REQUIRED_VARIABLE = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]*\}$")
OBSERVABILITY_BIND = "${OBSERVABILITY_BIND:-127.0.0.1}"
Service = dict[str, Any]


def load() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(compose, dict)
    return compose


def services() -> dict[str, Service]:
    return dict(load()["services"])


def app_of(service: Service) -> str | None:
    """The platform app a compose service runs (its image's SERVICE build argument)."""
    build = service.get("build")
    return build["args"]["SERVICE"] if isinstance(build, dict) else None


def apps_and_jobs() -> dict[str, Service]:
    return {name: s for name, s in services().items() if app_of(s)}


def schema_errors(compose: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose)
    ]


def test_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    assert schema_errors(load()) == []


def test_the_schema_check_catches_an_unknown_key() -> None:
    compose = load()
    compose["services"]["gateway"]["depends"] = ["auth"]

    assert schema_errors(compose) == [
        "services/gateway: 'depends' does not match any of the regexes: '^x-'"
    ]


def test_every_app_is_built_from_the_dockerfile_with_its_own_arguments() -> None:
    built = apps_and_jobs()
    assert {app_of(s) for s in built.values()} == set(APPS)
    for name, service in built.items():
        app = APPS[app_of(service) or ""]
        build = service["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert (context / build["dockerfile"]).is_file(), name
        assert build["args"] == {
            "SERVICE": app.name,
            "SERVICE_DIR": str(app.directory.relative_to(context)),
            "ENV_PREFIX": app.prefix.rstrip("_"),
            "PORT": str(app.port),
        }, name
        assert service["image"].startswith(f"llm-platform/{app.name}:"), name
        assert service.get("command", "serve") in entrypoint_commands(), name


def test_files_mounted_from_the_repository_exist() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"


def environment_problems(all_services: dict[str, Service]) -> list[str]:
    problems = []
    for name, service in all_services.items():
        app_name = app_of(service)
        if app_name is None:
            continue
        app = APPS[app_name]
        environment = service.get("environment", {})
        given = set(environment) | image_env(app.name)
        problems += [f"{name}: nothing sets {field}" for field in app.missing(given)]
        problems += [
            f"{name}: {var} is read by no setting of {app.name}" for var in app.strays(given)
        ]
        for field in app.secret_fields():
            for var in app.env_names(field) & set(environment):
                if not REQUIRED_VARIABLE.match(str(environment[var])):
                    problems.append(f"{name}: {var} must come from the environment (${{{var}:?}})")
    return problems


def test_every_required_setting_is_given_and_secrets_come_from_the_environment() -> None:
    assert environment_problems(services()) == []


def test_a_missing_required_setting_is_caught() -> None:
    all_services = services()
    environment = dict(all_services["migrate-telemetry"]["environment"])
    del environment["TELEMETRY_DATABASE_URL"]
    all_services["migrate-telemetry"] = {
        **all_services["migrate-telemetry"],
        "environment": environment,
    }

    assert environment_problems(all_services) == ["migrate-telemetry: nothing sets database_url"]


def test_database_passwords_are_interpolated_never_written_down() -> None:
    for name, service in apps_and_jobs().items():
        for var, value in service.get("environment", {}).items():
            if var.endswith("DATABASE_URL"):
                assert re.search(r":\$\{[A-Z_]+_DB_PASSWORD:\?[^}]*\}@", value), name


def test_only_the_gateway_publishes_a_port_and_the_uis_only_on_loopback() -> None:
    for name, service in services().items():
        ports = service.get("ports", [])
        if name == "gateway":
            assert ports == [f"${{GATEWAY_PUBLISH:-8000}}:{APPS['gateway'].port}"]
        elif app_of(service) or name in ("postgres", "redis"):
            assert ports == [], name
        else:
            assert all(str(p).startswith(OBSERVABILITY_BIND + ":") for p in ports), name


def test_inference_can_be_scaled_on_its_own() -> None:
    """`docker compose up --scale inference=3`: no fixed container name or host port."""
    for name, service in services().items():
        assert "container_name" not in service, name
    assert "ports" not in services()["inference"]


def test_each_service_starts_after_its_migration_and_the_gateway_after_them() -> None:
    all_services = services()
    for app in SERVICES:
        job = all_services[f"migrate-{app}"]
        assert job["command"] == "migrate"
        assert job["restart"] == "no"
        assert job["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert all_services[app]["depends_on"][f"migrate-{app}"] == {
            "condition": "service_completed_successfully"
        }
        assert all_services["gateway"]["depends_on"][app] == {"condition": "service_healthy"}
    assert not [n for n in all_services if n.startswith("migrate-") and n[8:] not in SERVICES]


def test_what_others_wait_on_has_a_health_check() -> None:
    all_services = services()
    for name, service in all_services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                target = all_services[dependency]
                # The apps' check is the image's HEALTHCHECK (test_image.py).
                assert "healthcheck" in target or app_of(target), f"{name} -> {dependency}"
    for name in ("postgres", "redis", "prometheus"):
        assert all_services[name]["healthcheck"]["test"][0] == "CMD", name


@pytest.mark.parametrize("name", sorted(apps_and_jobs()))
def test_app_containers_are_hardened(name: str) -> None:
    service = services()[name]
    assert service["read_only"] is True
    assert service["tmpfs"] == ["/tmp"]  # noqa: S108 - a path in the container
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
