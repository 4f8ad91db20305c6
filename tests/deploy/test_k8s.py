"""deploy/k8s rendered (base, dev, prod): the Kubernetes schemas, and what a reviewer checks."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from fastapi.routing import APIRoute

from gateway.api import router as gateway_router
from gateway.console import ConsoleConfig, console_router
from gateway.rbac import ROUTES

from . import kustomize
from .apps import APPS, SERVICES, entrypoint_commands, exported_metrics, image_env
from .manifests import (
    RENDERS,
    SECRET_EXAMPLE,
    Object,
    env_names,
    matches,
    of_kind,
    pods,
    render,
    selected,
)

# The oldest Kubernetes we claim (HPA autoscaling/v2, PDB policy/v1 and Job TTLs are GA
# well before it) and the newest schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
RENDER_NAMES = list(RENDERS)
SECRET_LIKE = re.compile(r"(KEY|KEYS|PASSWORD|TOKEN|SECRET|DATABASE_URL|REDIS_URL)$")
# Who may open a connection to each app, besides Prometheus (see networkpolicies.yaml).
CALLERS = {
    "auth": {"gateway", "telemetry"},
    "inference": {"gateway", "embeddings"},
    "embeddings": {"gateway"},
    "telemetry": {"gateway", "inference", "auth"},
}


def schema_errors(objects: list[Object], version: str) -> list[str]:
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{obj['kind']} {obj['apiVersion']}: no such kind in {version}")
    return errors


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", RENDER_NAMES)
def test_every_object_is_valid_against_the_kubernetes_schemas(name: str, version: str) -> None:
    assert schema_errors(render(name), version) == []


def test_the_schema_check_catches_a_misspelt_field() -> None:
    objects = render("base")
    deployment = of_kind(objects, "Deployment")["auth"]
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["paht"] = probe["httpGet"].pop("path")

    assert schema_errors([deployment], KUBERNETES_VERSIONS[-1]) != []


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_each_app_has_its_objects_and_each_service_a_migration_job(name: str) -> None:
    objects = render(name)
    apps = set(APPS)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert set(of_kind(objects, kind)) == apps, kind
    assert set(of_kind(objects, "Job")) == {f"{s}-migrate" for s in SERVICES}
    assert all(
        o["metadata"].get("namespace") == "llm-platform"
        for o in objects
        if o["kind"] != "Namespace"
    )


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_pods_are_hardened_probed_and_sized(name: str) -> None:
    """What the namespace's "restricted" Pod Security Standard enforces, and more."""
    problems = []
    for pod in pods(render(name)):
        security = pod.spec.get("securityContext", {})
        if not (security.get("runAsNonRoot") and security.get("runAsUser", 0) > 0):
            problems.append(f"{pod.owner}: not forced to a non-root user")
        if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{pod.owner}: no RuntimeDefault seccomp profile")
        tmp = {v["name"] for v in pod.spec.get("volumes", []) if "emptyDir" in v}
        for c in pod.containers():
            where = f"{pod.owner}/{c['name']}"
            context = c.get("securityContext", {})
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem writable")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation allowed")
            if context.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities not all dropped")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            if mounts.get("/tmp") not in tmp:  # noqa: S108 - a path in the container
                problems.append(f"{where}: no emptyDir on /tmp")
            resources = c.get("resources", {})
            for bound in ("requests", "limits"):
                if set(resources.get(bound, {})) != {"cpu", "memory"}:
                    problems.append(f"{where}: {bound} must give cpu and memory")
            if c.get("args", ["serve"])[0] not in entrypoint_commands():
                problems.append(f"{where}: the entry point has no command {c['args'][0]!r}")
    assert problems == []


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_apps_are_probed_on_healthz_and_readyz_at_their_port(name: str) -> None:
    for app, deployment in of_kind(render(name), "Deployment").items():
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["ports"] == [
            {"name": "http", "containerPort": APPS[app].port, "protocol": "TCP"}
        ]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(APPS[app].port)
        assert container["image"].startswith(f"llm-platform/{app}:")


def _routed(paths: list[Object], path: str) -> bool:
    """Whether an Ingress's paths take a request path (Kubernetes' Exact and Prefix rules:
    a prefix matches whole path elements)."""
    for rule in paths:
        given = rule["path"]
        if rule["pathType"] == "Exact" and path == given:
            return True
        if rule["pathType"] == "Prefix":
            prefix = given.rstrip("/")
            if path in (given, prefix) or path.startswith(prefix + "/"):
                return True
    return False


def _public_paths() -> list[str]:
    """Every path the gateway serves to the public: the proxied routes (a concrete path
    for each template), its own (the API document, the console and the docs page, their
    files), and /healthz."""
    proxied = [re.sub(r"\{[a-z_]+(:path)?\}", "x", route.template) for route in ROUTES]
    console = console_router(Path("dist"), ConsoleConfig(None, csrf_cookie="csrf_token"))
    own = [
        re.sub(r"\{[a-z_]+(:path)?\}", "x", route.path)
        for route in (*gateway_router.routes, *console.routes)
        if isinstance(route, APIRoute)
    ]
    assert "/console/x" in own
    assert "/docs/assets/x" in own
    return [*proxied, *own, "/healthz"]


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_the_ingress_routes_the_public_api_and_not_metrics_or_readiness(name: str) -> None:
    """/metrics, /readyz and the gateway's /readyz/upstreams (which services are down) are
    not for the internet: Prometheus, the kubelet and operators reach the pods directly."""
    (ingress,) = of_kind(render(name), "Ingress").values()
    paths = [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]

    assert [p for p in _public_paths() if not _routed(paths, p)] == []
    for probe in ("/metrics", "/readyz", "/metrics/x", "/readyz/upstreams"):
        assert not _routed(paths, probe), probe
    backends = {(p["backend"]["service"]["name"], p["backend"]["service"]["port"]["name"])
                for p in paths}  # fmt: skip
    assert backends == {("gateway", "http")}


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_every_selector_picks_exactly_its_own_pods(name: str) -> None:
    objects = render(name)
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        for app, obj in of_kind(objects, kind).items():
            selector = obj["spec"]["selector"]
            assert selected(selector, objects) == [f"Deployment/{app}"], f"{kind}/{app}"
    for app, hpa in of_kind(objects, "HorizontalPodAutoscaler").items():
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", app)
    for job in of_kind(objects, "Job").values():
        assert "selector" not in job["spec"]  # Kubernetes makes a unique one
    pod_of = {p.owner: p for p in pods(objects)}
    for policy in of_kind(objects, "NetworkPolicy").values():
        assert selected(policy["spec"]["podSelector"], objects), policy["metadata"]["name"]
        for rule in policy["spec"].get("ingress", []):
            for owner in selected(policy["spec"]["podSelector"], objects):
                names = pod_of[owner].port_names()
                for port in rule.get("ports", []):
                    assert not owner.startswith("Deployment/") or port["port"] in names
            for source in rule.get("from", []):
                if "namespaceSelector" not in source:
                    assert selected(source["podSelector"], objects), policy["metadata"]["name"]
    for service in of_kind(objects, "Service").values():
        names = pod_of[f"Deployment/{service['metadata']['name']}"].port_names()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


def allowed_sources(objects: list[Object], app: str) -> list[Object]:
    """The `from` entries of every policy that admits traffic to the app's pods; an entry
    {} stands for "any source" (a rule without `from`)."""
    labels = of_kind(objects, "Deployment")[app]["spec"]["template"]["metadata"]["labels"]
    sources: list[Object] = []
    for policy in of_kind(objects, "NetworkPolicy").values():
        if matches(policy["spec"]["podSelector"], labels):
            for rule in policy["spec"].get("ingress", []):
                sources.extend(rule.get("from", [{}]))
    return sources


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_only_the_gateway_is_reachable_from_outside_the_namespace(name: str) -> None:
    objects = render(name)
    policies = of_kind(objects, "NetworkPolicy")
    deny_all = [
        p
        for p in policies.values()
        if p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"]
        and not p["spec"].get("ingress")
    ]  # fmt: skip
    assert deny_all, "no default deny of ingress in the namespace"
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    assert {} in allowed_sources(objects, "gateway")
    for app, callers in CALLERS.items():
        sources = allowed_sources(objects, app)
        assert {} not in sources, f"{app} is open to any source"
        in_namespace = [s for s in sources if "namespaceSelector" not in s]
        assert set().union(*(set(selected(s["podSelector"], objects)) for s in in_namespace)) == {
            f"Deployment/{c}" for c in callers
        }, app
        assert [s for s in sources if "namespaceSelector" in s] == [prometheus], app


def egress_allows(objects: list[Object], app: str, address: str, port: int) -> bool:
    """Whether the app's pods may open a TCP connection to `address:port`, by the
    NetworkPolicies with policyType Egress that select them (none: anything goes). Only
    ipBlock peers match an address; pod and namespace selectors stand for cluster pods."""
    labels = of_kind(objects, "Deployment")[app]["spec"]["template"]["metadata"]["labels"]
    ip = ipaddress.ip_address(address)
    policies = [
        p
        for p in of_kind(objects, "NetworkPolicy").values()
        if "Egress" in p["spec"]["policyTypes"] and matches(p["spec"]["podSelector"], labels)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            ports = rule.get("ports")
            if ports and not any(
                p.get("protocol", "TCP") == "TCP" and p.get("port") in (None, port) for p in ports
            ):
                continue
            for peer in rule.get("to", [{"ipBlock": {"cidr": "0.0.0.0/0"}}]):
                block = peer.get("ipBlock")
                if block is None:
                    continue
                network = ipaddress.ip_network(block["cidr"])
                if (
                    ip.version == network.version
                    and ip in network
                    and not any(ip in ipaddress.ip_network(e) for e in block.get("except", []))
                ):
                    return True
    return False


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_inference_reaches_public_providers_but_not_metadata_or_private_services(
    name: str,
) -> None:
    objects = render(name)
    for address, port in [("104.18.6.192", 443), ("8.8.8.8", 8080), ("2606:4700::6812:6c0", 443),
                          ("10.0.3.7", 5432), ("10.0.3.8", 6379)]:  # fmt: skip
        assert egress_allows(objects, "inference", address, port), (address, port)
    for address, port in [
        ("169.254.169.254", 80),  # cloud metadata
        ("100.100.100.200", 80),  # Alibaba's metadata, in the shared range
        ("fd00:ec2::254", 80),  # AWS's metadata over IPv6
        ("127.0.0.1", 8001),
        ("10.0.3.9", 8001),  # a pod of the platform
        ("172.20.0.10", 443),
        ("192.168.1.1", 80),
        ("10.0.3.7", 9200),  # private, on a port that is not PostgreSQL's or Redis's
        ("::ffff:169.254.169.254", 80),
    ]:
        assert not egress_allows(objects, "inference", address, port), (address, port)
    (policy,) = [p for p in of_kind(objects, "NetworkPolicy").values() if "egress" in p["spec"]]
    peers = {
        json.dumps(peer, sort_keys=True): {(p["port"], p["protocol"]) for p in rule["ports"]}
        for rule in policy["spec"]["egress"]
        if "ports" in rule
        for peer in rule["to"]
    }
    dns = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    collector = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}
    }
    assert peers[json.dumps(dns, sort_keys=True)] == {(53, "UDP"), (53, "TCP")}
    assert peers[json.dumps(collector, sort_keys=True)] == {(4318, "TCP")}


def required_env_problems(objects: list[Object]) -> list[str]:
    problems = []
    for pod in pods(objects):
        name = pod.owner.split("/")[1]
        app = APPS[name.removesuffix("-migrate")]
        for c in pod.containers():
            names = env_names(c, objects) | image_env(app.name)
            where = f"{pod.owner}/{c['name']}"
            problems += [f"{where}: nothing sets {field}" for field in app.missing(names)]
            problems += [f"{where}: {var} is read by no app setting" for var in app.strays(names)]
    return problems


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_every_required_setting_is_given_to_every_app_and_job_container(name: str) -> None:
    assert required_env_problems(render(name)) == []


def test_a_missing_required_setting_is_caught() -> None:
    objects = render("prod")
    job = of_kind(objects, "Job")["inference-migrate"]
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    env[:] = [e for e in env if e["name"] != "INFERENCE_ENCRYPTION_KEYS"]

    assert required_env_problems(objects) == [
        "Job/inference-migrate/migrate: nothing sets encryption_keys"
    ]


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_secrets_are_referenced_never_inlined(name: str) -> None:
    objects = render(name)
    assert of_kind(objects, "Secret") == {}
    example = {
        (s["metadata"]["name"], key)
        for s in yaml.safe_load_all(SECRET_EXAMPLE.read_text())
        for key in s["stringData"]
    }
    for config_map in of_kind(objects, "ConfigMap").values():
        assert not [k for k in config_map.get("data", {}) if SECRET_LIKE.search(k)]
    for pod in pods(objects):
        for c in pod.containers():
            assert not [s for s in c.get("envFrom", []) if "secretRef" in s]  # keys by name
            for var in c.get("env", []):
                if SECRET_LIKE.search(var["name"]):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    assert ref, f"{pod.owner}: {var['name']} is not taken from a Secret"
                    assert (ref["name"], ref["key"]) in example, f"{ref} not in secret.example"


def hpa_and_pdb(objects: list[Object], app: str) -> tuple[Object, Object]:
    return (
        of_kind(objects, "HorizontalPodAutoscaler")[app]["spec"],
        of_kind(objects, "PodDisruptionBudget")[app]["spec"],
    )


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_autoscaling_and_disruption_budgets_agree_with_replicas(name: str) -> None:
    objects = render(name)
    for app, deployment in of_kind(objects, "Deployment").items():
        hpa, pdb = hpa_and_pdb(objects, app)
        replicas = deployment["spec"]["replicas"]
        assert hpa["minReplicas"] <= replicas <= hpa["maxReplicas"], app
        assert {"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": 70}}} in hpa["metrics"]  # fmt: skip
        # A drain must be able to evict one pod even at the minimum.
        assert pdb.get("minAvailable", 0) < hpa["minReplicas"], app
        assert set(pdb) & {"minAvailable", "maxUnavailable"}, app


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_inference_also_scales_on_requests_in_flight_which_it_exports(name: str) -> None:
    hpa, _ = hpa_and_pdb(render(name), "inference")
    (pods_metric,) = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]

    assert pods_metric["metric"]["name"] in exported_metrics("inference")
    assert pods_metric["target"]["type"] == "AverageValue"


def test_dev_is_one_small_replica_of_the_dev_images() -> None:
    base, dev = render("base"), render("dev")
    for app, deployment in of_kind(dev, "Deployment").items():
        assert deployment["spec"]["replicas"] == 1
        pod = deployment["spec"]["template"]["spec"]
        assert {c["image"] for c in pods_containers(pod)} == {f"llm-platform/{app}:dev"}
        small = pod["containers"][0]["resources"]["requests"]
        big = of_kind(base, "Deployment")[app]["spec"]["template"]["spec"]["containers"][0]
        assert quantity(small["memory"]) < quantity(big["resources"]["requests"]["memory"])
        assert deployment["spec"]["template"]["metadata"]["labels"]["environment"] == "dev"
    assert {j["spec"]["template"]["spec"]["containers"][0]["image"].split(":")[1]
            for j in of_kind(dev, "Job").values()} == {"dev"}  # fmt: skip


def test_prod_runs_more_replicas_scales_further_and_keeps_two_pods() -> None:
    base, prod = render("base"), render("prod")
    for app, deployment in of_kind(prod, "Deployment").items():
        assert deployment["spec"]["replicas"] > of_kind(base, "Deployment")[app]["spec"]["replicas"]
        hpa, pdb = hpa_and_pdb(prod, app)
        base_hpa, _ = hpa_and_pdb(base, app)
        assert hpa["minReplicas"] > base_hpa["minReplicas"]
        assert hpa["maxReplicas"] > base_hpa["maxReplicas"]
        assert pdb == {"minAvailable": 2, "selector": pdb["selector"]}
        assert not pods_containers(deployment["spec"]["template"]["spec"])[0]["image"].endswith(
            ":dev"
        )


def pods_containers(pod: Object) -> list[Object]:
    return [*pod["containers"], *pod.get("initContainers", [])]


def quantity(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", value).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


# ------------------------------------------------------------------ the renderer itself


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(kustomize.Unsupported, match="configMapGenerator"):
        kustomize.render(tmp_path)

    (tmp_path / "app.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: a}\n")
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [app.yaml]\npatches:\n  - target: {kind: Service}\n"
        "    patch: 'spec: {type: NodePort}'\n"
    )
    with pytest.raises(kustomize.Unsupported, match="strategic merge"):
        kustomize.render(tmp_path)


@pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl is not on PATH: our renderer is not compared with `kubectl kustomize`",
)
@pytest.mark.parametrize("name", RENDER_NAMES)
def test_our_rendering_is_what_kubectl_kustomize_renders(name: str) -> None:
    output = subprocess.run(
        ["kubectl", "kustomize", str(RENDERS[name])],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout

    def keyed(objects: list[Object]) -> dict[tuple[str, str], Object]:
        return {(o["kind"], o["metadata"]["name"]): o for o in objects}

    theirs = keyed([o for o in yaml.safe_load_all(output) if o])
    ours = keyed(render(name))
    assert sorted(ours) == sorted(theirs)
    assert [k for k in ours if ours[k] != theirs[k]] == []
