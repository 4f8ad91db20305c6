"""A small kustomize: the subset deploy/k8s uses, rendered without the kustomize binary.

Known keys: `resources` (files and directories holding a kustomization), `namespace`,
`labels` (metadata and, with includeTemplates, pod templates; never selectors), `images`,
`replicas` and `patches` (JSON 6902 operations only, applied with `jsonpatch`, which
implements RFC 6902). Anything else is refused rather than half understood, so an overlay
that needs more must extend this renderer and its comparison with `kubectl kustomize`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

Object = dict[str, Any]

ALLOWED_KEYS = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas", "patches"}
)
LABEL_KEYS = frozenset({"pairs", "includeTemplates", "includeSelectors"})
IMAGE_KEYS = frozenset({"name", "newName", "newTag", "digest"})
PATCH_KEYS = frozenset({"target", "patch", "path"})
TARGET_KEYS = frozenset({"group", "version", "kind", "name", "namespace"})
# Kinds without a namespace (those a platform like ours could hold).
CLUSTER_SCOPED = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
     "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass"}
)  # fmt: skip
# Where kustomize's replicas and pod-template transformers reach, for the kinds we use.
WORKLOADS = frozenset({"Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", "Job"})
REPLICATED = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})


class Unsupported(ValueError):
    """The kustomization uses something this renderer does not implement."""


def render(directory: Path) -> list[Object]:
    """The objects `kubectl kustomize directory` would print (in file order)."""
    path = directory / "kustomization.yaml"
    spec = yaml.safe_load(path.read_text())
    unknown = set(spec) - ALLOWED_KEYS
    if unknown:
        raise Unsupported(f"{path}: unsupported kustomization keys {sorted(unknown)}")
    if spec.get("kind", "Kustomization") != "Kustomization":
        raise Unsupported(f"{path}: not a Kustomization")
    objects: list[Object] = []
    for resource in spec.get("resources", []):
        target = (directory / resource).resolve()
        if target.is_dir():
            objects.extend(render(target))
        else:
            objects.extend(load_objects(target))
    for patch in spec.get("patches", []):
        _patch(objects, patch, directory)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    for labels in spec.get("labels", []):
        _label(objects, labels)
    for replicas in spec.get("replicas", []):
        _replicas(objects, replicas)
    for image in spec.get("images", []):
        _image(objects, image)
    return objects


def load_objects(path: Path) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _patch(objects: list[Object], spec: Object, directory: Path) -> None:
    unknown = set(spec) - PATCH_KEYS
    target = spec.get("target", {})
    if unknown or set(target) - TARGET_KEYS or not target:
        raise Unsupported(f"patch keys {sorted(spec)} / target {sorted(target)}")
    text = spec["patch"] if "patch" in spec else (directory / spec["path"]).read_text()
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise Unsupported("only JSON 6902 patches (a list of operations), no strategic merge")
    patch = jsonpatch.JsonPatch(operations)
    matched = [i for i, obj in enumerate(objects) if _selected(obj, target)]
    if not matched:
        raise Unsupported(f"patch target {target} matches nothing")
    for i in matched:
        objects[i] = patch.apply(objects[i])


def _selected(obj: Object, target: Object) -> bool:
    """kustomize's selector: kind, name and namespace are anchored regular expressions."""
    group, _, version = obj["apiVersion"].rpartition("/")
    checks = [
        ("group", group, False),
        ("version", version, False),
        ("kind", obj["kind"], True),
        ("name", obj["metadata"]["name"], True),
        ("namespace", obj["metadata"].get("namespace", ""), True),
    ]
    for key, value, regex in checks:
        if key in target:
            wanted = str(target[key])
            if not (re.fullmatch(wanted, value) if regex else wanted == value):
                return False
    return True


def _label(objects: list[Object], spec: Object) -> None:
    if set(spec) - LABEL_KEYS or spec.get("includeSelectors", False):
        raise Unsupported(f"labels {sorted(spec)}: selectors are never relabelled here")
    pairs = {str(k): str(v) for k, v in spec["pairs"].items()}
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(pairs)
        if spec.get("includeTemplates", False) and obj["kind"] in WORKLOADS:
            template = obj["spec"]["template"].setdefault("metadata", {})
            template.setdefault("labels", {}).update(pairs)


def _replicas(objects: list[Object], spec: Object) -> None:
    found = [
        obj
        for obj in objects
        if obj["kind"] in REPLICATED and obj["metadata"]["name"] == spec["name"]
    ]
    if not found:
        raise Unsupported(f"replicas: no workload named {spec['name']}")
    for obj in found:
        obj["spec"]["replicas"] = spec["count"]


def _image(objects: list[Object], spec: Object) -> None:
    if set(spec) - IMAGE_KEYS:
        raise Unsupported(f"images keys {sorted(spec)}")
    for obj in objects:
        if obj["kind"] not in WORKLOADS:
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, tag = split_image(container["image"])
            if name != spec["name"]:
                continue
            name = spec.get("newName", name)
            if "digest" in spec:
                tag = "@" + spec["digest"]
            elif "newTag" in spec:
                tag = ":" + str(spec["newTag"])
            container["image"] = name + tag


def split_image(image: str) -> tuple[str, str]:
    """`registry:5000/a/b:tag` -> (`registry:5000/a/b`, `:tag`); digests likewise (`@...`)."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""
