"""What the deployment files must agree with, read from the code: each app's settings
(env prefix, port, the variables a deployment must set), its migrations, its metrics, and
the image the Dockerfile builds."""

from __future__ import annotations

import asyncio
import importlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import AliasChoices, SecretStr
from pydantic_settings import BaseSettings

from auth.settings import AuthSettings
from common.metrics import registry_for
from common.settings import SHARED_FIELDS, _is_placeholder
from embeddings.settings import EmbeddingsSettings
from gateway.settings import GatewaySettings
from inference.settings import InferenceSettings
from telemetry.settings import TelemetrySettings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
LOOPBACK = re.compile(r"\b(127\.0\.0\.1|localhost)\b")


@dataclass(frozen=True)
class App:
    name: str
    directory: Path
    settings: type[BaseSettings]

    @property
    def prefix(self) -> str:
        return str(self.settings.model_config.get("env_prefix", "")).upper()

    @property
    def port(self) -> int:
        return int(self.settings.default_port)  # type: ignore[attr-defined]

    @property
    def has_migrations(self) -> bool:
        return (self.directory / "alembic.ini").is_file()

    def env_names(self, field: str) -> frozenset[str]:
        """The environment variables that set one field (names are case-insensitive)."""
        info = self.settings.model_fields[field]
        if isinstance(info.validation_alias, AliasChoices):
            return frozenset(str(c).upper() for c in info.validation_alias.choices)
        names = {f"{self.prefix}{field}".upper()}
        if field in SHARED_FIELDS:
            names.add(field.upper())
        return frozenset(names)

    def known_env(self) -> frozenset[str]:
        return frozenset().union(*(self.env_names(f) for f in self.settings.model_fields))

    def secret_fields(self) -> list[str]:
        return [
            name
            for name, info in self.settings.model_fields.items()
            if SecretStr in _types(info.annotation)
        ]

    def required_fields(self) -> list[str]:
        """Fields a deployment must set: no default, a default production refuses (a
        placeholder secret), or a default that only works on a developer's machine (an
        address on the loopback interface)."""
        required = []
        for name, info in self.settings.model_fields.items():
            default = info.get_default(call_default_factory=False)
            refused = isinstance(default, SecretStr) and _is_placeholder(default.get_secret_value())
            local = isinstance(default, str) and LOOPBACK.search(default) is not None
            if info.is_required() or refused or local:
                required.append(name)
        return required

    def missing(self, provided: set[str]) -> list[str]:
        """The required fields that none of `provided` (variable names) sets."""
        upper = {p.upper() for p in provided}
        return [f for f in self.required_fields() if not self.env_names(f) & upper]

    def strays(self, provided: set[str]) -> list[str]:
        """Variables in an app's namespace (its prefix, or another app's) that it never reads."""
        prefixes = tuple(f"{a.prefix}" for a in APPS.values())
        return sorted(
            p
            for p in provided
            if p.upper().startswith(prefixes) and p.upper() not in self.known_env()
        )


def _types(annotation: Any) -> set[Any]:
    return {annotation, *getattr(annotation, "__args__", ())}


APPS = {
    app.name: app
    for app in (
        App("gateway", ROOT / "gateway", GatewaySettings),
        App("auth", ROOT / "services" / "auth", AuthSettings),
        App("inference", ROOT / "services" / "inference", InferenceSettings),
        App("embeddings", ROOT / "services" / "embeddings", EmbeddingsSettings),
        App("telemetry", ROOT / "services" / "telemetry", TelemetrySettings),
    )
}
SERVICES = [name for name, app in APPS.items() if app.has_migrations]


# ------------------------------------------------------------------ metrics

SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


@cache
def exported_metrics(app: str) -> frozenset[str]:
    """Every sample name the app's real /metrics can carry (read in-process through ASGI,
    so families whose labels have no child yet count too)."""
    return asyncio.run(_scrape(app))


@cache
def metric_labels(app: str) -> dict[str, frozenset[str]]:
    """The label names of each sample name the app exports (`le` on buckets included)."""
    exported_metrics(app)  # the app is built: every collector is registered
    labels: dict[str, frozenset[str]] = {}
    # prometheus_client keeps a collector's label names private; a metric with no child
    # yet has no sample to read them from.
    registry = registry_for(app)
    for collector, described in registry._collector_to_names.items():
        declared = set(getattr(collector, "_labelnames", ()))
        names = set(described)
        for family in collector.collect():
            for sample in family.samples:
                declared |= set(sample.labels) - {"le", "quantile"}
                names.add(sample.name)
        for name in names:
            extra = {"le"} if name.endswith("_bucket") else set()
            labels[name] = frozenset(declared | extra)
    return labels


async def _scrape(name: str) -> frozenset[str]:
    app = importlib.import_module(f"{name}.main").create_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.get("/metrics")
    response.raise_for_status()
    return frozenset(
        family.name + suffix
        for family in text_string_to_metric_families(response.text)
        for suffix in SAMPLE_SUFFIXES[family.type]
    )


# ------------------------------------------------------------------ the image


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    arguments: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped), each
    with the name of its stage (`FROM ... AS name`)."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stage = ""
    instructions = []
    for line in logical:
        keyword, _, arguments = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else words[0]
        instructions.append(Instruction(stage, keyword, " ".join(arguments.split())))
    return instructions


def image_stages(app: str) -> tuple[str, str]:
    """The stages one app's image is made of: the runtime stage every app shares, then its
    own (`app-<name>`, which the Dockerfile's last `FROM app-${SERVICE}` picks)."""
    return ("runtime", f"app-{app}")


def image_env(app: str) -> set[str]:
    """The variables the image's stages set (ENV), for one app's build arguments."""
    names: set[str] = set()
    for instruction in dockerfile():
        if instruction.stage in image_stages(app) and instruction.keyword == "ENV":
            for assignment in instruction.arguments.split():
                if "=" in assignment:
                    names.add(
                        assignment.split("=", 1)[0].replace("${ENV_PREFIX}", APPS[app].prefix[:-1])
                    )
    return names


def entrypoint_commands() -> set[str]:
    """The words deploy/docker/entrypoint.sh handles itself (its `case` labels)."""
    labels = re.findall(r"^\s{4}([a-z][a-z-]*)\)\s*$", ENTRYPOINT.read_text(), re.MULTILINE)
    return set(labels)
