"""The rendered Kubernetes manifests of deploy/k8s, and what the checks ask of them."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from . import kustomize
from .apps import ROOT

K8S = ROOT / "deploy" / "k8s"
RENDERS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
}
SECRET_EXAMPLE = K8S / "base" / "secret.example.yaml"
Object = dict[str, Any]


@cache
def _render(name: str) -> tuple[Object, ...]:
    return tuple(kustomize.render(RENDERS[name]))


def render(name: str) -> list[Object]:
    """base, dev or prod, rendered (a fresh copy: tests may break it on purpose)."""
    return copy.deepcopy(list(_render(name)))


def of_kind(objects: list[Object], kind: str) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@dataclass(frozen=True)
class Pod:
    """A pod template: a Deployment's or a Job's."""

    owner: str  # "Deployment/auth"
    labels: dict[str, str]
    spec: Object

    def containers(self) -> Iterator[Object]:
        yield from self.spec.get("initContainers", [])
        yield from self.spec["containers"]

    def port_names(self) -> set[str]:
        return {p["name"] for c in self.spec["containers"] for p in c.get("ports", [])}


def pods(objects: list[Object]) -> list[Pod]:
    return [
        Pod(
            f"{o['kind']}/{o['metadata']['name']}",
            o["spec"]["template"]["metadata"].get("labels", {}),
            o["spec"]["template"]["spec"],
        )
        for o in objects
        if o["kind"] in ("Deployment", "Job")
    ]


def matches(selector: Object, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) against pod labels; a
    Service's plain map counts as matchLabels."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present, value = key in labels, labels.get(key)
        ok = {
            "In": present and value in values,
            "NotIn": value not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


def selected(selector: Object, objects: list[Object]) -> list[str]:
    """The owners of the pod templates a selector picks."""
    return [pod.owner for pod in pods(objects) if matches(selector, pod.labels)]


def env_names(container: Object, objects: list[Object]) -> set[str]:
    """Variables a container gets: `env`, and the keys of ConfigMaps it takes whole."""
    names = {e["name"] for e in container.get("env", [])}
    config_maps = of_kind(objects, "ConfigMap")
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(config_maps[source["configMapRef"]["name"]].get("data", {}))
    return names
