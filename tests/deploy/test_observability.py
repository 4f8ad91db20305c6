"""deploy/prometheus and deploy/grafana: Prometheus scrapes the five apps, and the dashboard
is well-formed and asks only for metrics the apps really export."""

from __future__ import annotations

import json
import re
from itertools import product
from typing import Any

import promql_parser
import pytest
import yaml

from .apps import APPS, ROOT, exported_metrics, metric_labels

PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "platform.json"
# Grafana's own variables, replaced by a duration before parsing.
GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range")
# What issue 7 asks the dashboard to show, by the metric that shows it.
COVERED = {
    "LLM requests and errors": "inference_llm_requests_total",
    "LLM latency p50/p95": "inference_llm_request_duration_seconds_bucket",
    "tokens per model": "inference_llm_tokens_total",
    "cost per model": "inference_llm_cost_usd_total",
    "rate-limit rejections": "gateway_rate_limited_requests_total",
    "telemetry lag": "telemetry_stream_lag_events",
    "HTTP requests per service": "gateway_http_requests_total",
    "HTTP latency per service": "gateway_http_request_duration_seconds_bucket",
}


def test_prometheus_scrapes_every_app_on_its_port() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    (platform,) = [job for job in config["scrape_configs"] if job["job_name"] == "platform"]
    assert platform["metrics_path"] == "/metrics"
    targets = {
        target: group["labels"]["service"]
        for group in platform["static_configs"]
        for target in group["targets"]
    }
    assert targets == {f"{app.name}:{app.port}": app.name for app in APPS.values()}


def dashboard() -> dict[str, Any]:
    board = json.loads(DASHBOARD.read_text())
    assert isinstance(board, dict)
    return board


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Panels, those inside collapsed rows included."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def datasource_uids() -> set[str]:
    provisioning = yaml.safe_load(
        (GRAFANA / "provisioning/datasources/datasources.yaml").read_text()
    )
    return {source["uid"] for source in provisioning["datasources"]}


def test_the_dashboard_is_a_well_formed_dashboard() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    assert isinstance(board["schemaVersion"], int)
    panels = all_panels(board)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cell = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not cells & cell, f"{panel['title']} overlaps another panel"
        cells |= cell
        if panel["type"] == "row":
            continue
        assert panel["title"]
        assert panel["type"] in ("timeseries", "stat", "gauge", "table"), panel["title"]
        assert panel["datasource"]["uid"] in datasource_uids()
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == panel["datasource"]["uid"]


def test_the_dashboard_is_provisioned_from_where_compose_mounts_it() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yaml").read_text())
    (source,) = provider["providers"]
    assert source["options"]["path"] == "/etc/grafana/dashboards"
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "./deploy/grafana/dashboards:/etc/grafana/dashboards:ro" in compose


def expansions(expr: str, board: dict[str, Any]) -> list[str]:
    """The expression once for every combination of the values of the custom variables it
    uses, Grafana's interval variables replaced by a duration."""
    for variable in GRAFANA_INTERVALS:
        expr = expr.replace(variable, "5m")
    variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
    used = sorted({m for m in re.findall(r"\$\{?(\w+)\}?", expr)})
    choices = []
    for name in used:
        variable = variables[name]  # an unknown variable fails here
        assert variable["type"] == "custom", f"${name}: only custom variables can be checked"
        choices.append([(name, value.strip()) for value in variable["query"].split(",")])
    expanded = []
    for combination in product(*choices):
        text = expr
        for name, value in combination:
            text = text.replace("${" + name + "}", value).replace("$" + name, value)
        expanded.append(text)
    return expanded


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects, from its syntax tree (so strings,
    label matchers, functions, `by`/`on`/`le` and durations are never taken for one)."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            by_label = [m for m in node.matchers.matchers if m.name == "__name__"]
            if node.name:
                names.add(node.name)
            for matcher in by_label:
                assert matcher.op == promql_parser.MatchOp.Equal, f"a regex metric name in {expr}"
                names.add(matcher.value)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def target_labels() -> set[str]:
    """Labels Prometheus adds to every series it scrapes (deploy/prometheus)."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    static = {
        label
        for job in config["scrape_configs"]
        for group in job.get("static_configs", [])
        for label in group.get("labels", {})
    }
    return {"job", "instance"} | static


def label_problems(expr: str) -> list[str]:
    """Label names an expression filters or groups by that its metrics do not carry."""
    known: dict[str, frozenset[str]] = {}
    for app in APPS:
        known.update(metric_labels(app))
    extra = target_labels()
    problems: list[str] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name in known:
            for matcher in node.matchers.matchers:
                if matcher.name != "__name__" and matcher.name not in known[node.name] | extra:
                    problems.append(f"{node.name} has no label {matcher.name!r}")
        modifier = getattr(node, "modifier", None)
        if isinstance(node, promql_parser.AggregateExpr) and modifier is not None:
            inner = metric_names(str(node.expr))
            available = extra.union(*(known.get(name, frozenset()) for name in inner))
            problems.extend(
                f"{sorted(inner)} have no label {label!r}"
                for label in modifier.labels
                if label not in available
            )

    promql_parser.walk(promql_parser.parse(expr), visit)
    return problems


def test_every_panel_filters_and_groups_by_labels_its_metrics_carry() -> None:
    board = dashboard()
    problems = {
        panel["title"]: problems
        for panel in all_panels(board)
        for target in panel.get("targets", [])
        for expr in expansions(target["expr"], board)
        if (problems := label_problems(expr))
    }
    assert problems == {}


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum by (modle) (rate(inference_llm_tokens_total[5m]))", "have no label 'modle'"),
        ('inference_llm_requests_total{statu="ok"}', "has no label 'statu'"),
    ],
)
def test_a_misspelt_label_is_caught(expr: str, problem: str) -> None:
    (found,) = label_problems(expr)
    assert problem in found


def dashboard_metrics(board: dict[str, Any]) -> dict[str, set[str]]:
    """Every metric name each panel's queries use."""
    used: dict[str, set[str]] = {}
    for panel in all_panels(board):
        for target in panel.get("targets", []):
            for expr in expansions(target["expr"], board):
                used.setdefault(panel["title"], set()).update(metric_names(expr))
    return used


def unknown_metrics(board: dict[str, Any]) -> dict[str, set[str]]:
    exported = frozenset().union(*(exported_metrics(app) for app in APPS))
    found = {title: names - exported for title, names in dashboard_metrics(board).items()}
    return {title: names for title, names in found.items() if names}


def test_every_panel_asks_only_for_metrics_the_apps_export() -> None:
    assert unknown_metrics(dashboard()) == {}


def test_a_misspelt_metric_in_a_panel_is_caught() -> None:
    board = dashboard()
    (lag,) = [p for p in all_panels(board) if p["title"] == "Telemetry lag"]
    lag["targets"][0]["expr"] = 'max(telemetry_stream_lag{job="platform"}) by (instance)'

    assert unknown_metrics(board) == {"Telemetry lag": {"telemetry_stream_lag"}}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{route!~"/x|/y", le="0.5"}[5m]))', {"a_bucket"}),
        ("histogram_quantile(0.95, sum without (pod) (rate(b_total[1h] offset 5m)))", {"b_total"}),
        ('c / on (model) group_left d or vector(0) + {__name__="e", x="sum"}', {"c", "d", "e"}),
        ('label_replace(f, "dst", "$1", "src", "(rate)")', {"f"}),
    ],
)
def test_metric_names_are_told_apart_from_the_rest_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_the_dashboard_covers_what_issue_7_lists() -> None:
    used = set().union(*dashboard_metrics(dashboard()).values())
    assert {topic: m for topic, m in COVERED.items() if m not in used} == {}
