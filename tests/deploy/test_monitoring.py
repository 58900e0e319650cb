"""The monitoring manifests: PodMonitors hit real ports, rules use real metric names and fire when
they should (promtool with synthetic series), the Grafana dashboard charts real metrics."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from radforge.services.app.metrics import Metrics
from tests.deploy.manifests import DEPLOY, OVERLAYS, Doc, find, pod_templates

GRAFANA = DEPLOY / "monitoring" / "grafana" / "radforge-control-plane.json"
PROMQL_WORDS = {
    "sum", "rate", "increase", "max", "min", "avg", "by", "without", "and", "or", "unless", "on",
    "ignoring", "absent", "histogram_quantile", "clamp_min", "count", "le",
}  # fmt: skip


def radforge_metric_names() -> set[str]:
    """Every series name the control plane exposes (services/metrics.py), histogram parts included."""
    metrics = Metrics(job_counts=lambda: {}, kinds=lambda: ["ingest", "train"])
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
    return names


def ray_metric_names() -> set[str]:
    """Ray's node and cluster metrics, read from the installed Ray's reporter agent (ray_ prefix)."""
    import ray.dashboard.modules.reporter.reporter_agent as agent

    tree = ast.parse(Path(agent.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "METRICS_GAUGES" for t in node.targets
        ):
            assert isinstance(node.value, ast.Dict)
            return {
                f"ray_{k.value}"
                for k in node.value.keys
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            }
    raise AssertionError("METRICS_GAUGES not found in Ray's reporter agent")


def metric_names_in(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that name series (not functions, keywords or labels)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("$")}


def rules(docs: list[Doc]) -> list[dict[str, Any]]:
    return [r for g in find(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]


def test_metric_name_extraction() -> None:
    assert metric_names_in(
        'sum by (kind) (increase(radforge_jobs_finished_total{state="failed"}[10m])) > 0'
    ) == {"radforge_jobs_finished_total"}
    assert "radforge_jobs_finished_total" in radforge_metric_names()
    assert "radforge_job_duration_seconds_bucket" in radforge_metric_names()
    assert {"ray_cluster_active_nodes", "ray_node_gpus_utilization"} <= ray_metric_names()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rules_use_real_metric_names(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    known = radforge_metric_names() | ray_metric_names()
    names = set()
    for rule in rules(rendered[f"overlays/{overlay}"]):
        names |= metric_names_in(rule["expr"])
    assert names and names <= known, names - known
    assert {
        "radforge_ingest_samples_written_total",
        "radforge_train_data_wait_seconds_total",
        "radforge_jobs_finished_total",
    } <= names


def test_grafana_dashboard_charts_real_metrics(rendered: dict[str, list[Doc]]) -> None:
    board = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    names = set().union(*(metric_names_in(e) for e in exprs))
    assert names and names <= radforge_metric_names(), names - radforge_metric_names()
    # shipped to Grafana's sidecar as it is in the repository
    dashboards = find(rendered["overlays/prod"], "ConfigMap", "radforge-grafana-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboards["data"][GRAFANA.name]) == board


def test_alerts_cover_the_issue_list(rendered: dict[str, list[Doc]]) -> None:
    alerts = {r.get("alert") for r in rules(rendered["overlays/prod"])}
    assert {
        "RadforgeIngestStalled",
        "RadforgeTrainingDataWaitHigh",
        "RadforgeJobFailed",
        "RadforgeGpuPoolAtMax",
    } <= alerts
    assert "RadforgeGpuPoolAtMax" not in {r.get("alert") for r in rules(rendered["overlays/dev"])}


def test_gpu_pool_alert_threshold_is_the_pool_maximum(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["overlays/prod"]
    rule = next(r for r in rules(docs) if r.get("alert") == "RadforgeGpuPoolAtMax")
    match = re.fullmatch(
        r'max\(ray_cluster_active_nodes\{node_type="([\w-]+)"\}\) >= (\d+)', rule["expr"].strip()
    )
    assert match, rule["expr"]
    group = next(
        g for g in find(docs, "RayCluster")["spec"]["workerGroupSpecs"] if g["groupName"] == match[1]
    )
    assert int(match[2]) == group["maxReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_monitors_select_pods_and_ports_that_exist(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    docs = rendered[f"overlays/{overlay}"]
    pods = []  # (labels, port names) of every pod the overlay creates
    for doc in docs:
        for where, template in pod_templates(doc):
            labels = dict((template.get("metadata") or {}).get("labels") or {})
            if doc["kind"] == "RayCluster":  # the labels KubeRay puts on its pods
                labels |= {
                    "ray.io/cluster": doc["metadata"]["name"],
                    "ray.io/node-type": "head" if where.endswith("head") else "worker",
                }
            ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
            pods.append((labels, ports))
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"ray-head", "ray-workers", "radforge-control-plane"}
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        wanted = monitor["spec"]["selector"]["matchLabels"]
        selected = [ports for labels, ports in pods if wanted.items() <= labels.items()]
        assert selected, f"{monitor['metadata']['name']} selects no pod"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert all(endpoint["port"] in ports for ports in selected), (
                monitor["metadata"]["name"],
                endpoint,
            )


# -- promtool ---------------------------------------------------------------------------------


def _rules_file(docs: list[Doc], tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": find(docs, "PrometheusRule")["spec"]["groups"]}))
    return path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_promtool_accepts_the_rules(overlay: str, rendered: dict[str, list[Doc]], tmp_path: Path) -> None:
    out = subprocess.run(
        ["promtool", "check", "rules", str(_rules_file(rendered[f"overlays/{overlay}"], tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# synthetic series (1-minute samples) and the alerts that must (or must not) fire on them
RULE_TESTS: list[dict[str, Any]] = [
    {
        "interval": "1m",
        "input_series": [
            # one ingest job running and writing nothing, then a second one writing steadily
            {"series": 'radforge_jobs{kind="ingest",state="running"}', "values": "1x90"},
            {"series": "radforge_ingest_samples_written_total", "values": "0+0x45 0+100x45"},
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "RadforgeIngestStalled", "exp_alerts": []},
            {
                "eval_time": "40m",
                "alertname": "RadforgeIngestStalled",
                "exp_alerts": [{"exp_labels": {"severity": "warning"}}],
            },
            {"eval_time": "80m", "alertname": "RadforgeIngestStalled", "exp_alerts": []},
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            # one training job waiting 30 s of every minute for data, then 6 s
            {"series": 'radforge_jobs{kind="train",state="running"}', "values": "1x90"},
            {"series": "radforge_train_data_wait_seconds_total", "values": "0+30x45 1350+6x45"},
        ],
        "alert_rule_test": [
            {
                "eval_time": "35m",
                "alertname": "RadforgeTrainingDataWaitHigh",
                "exp_alerts": [{"exp_labels": {"severity": "warning"}}],
            },
            {"eval_time": "85m", "alertname": "RadforgeTrainingDataWaitHigh", "exp_alerts": []},
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            {"series": 'radforge_jobs_finished_total{kind="ingest",state="failed"}', "values": "0x10 1x30"},
            {"series": 'radforge_jobs_finished_total{kind="train",state="succeeded"}', "values": "0+1x40"},
            {"series": 'radforge_jobs{kind="ingest",state="running"}', "values": "0x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "RadforgeJobFailed", "exp_alerts": []},
            {
                "eval_time": "12m",
                "alertname": "RadforgeJobFailed",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "kind": "ingest"}}],
            },
            {"eval_time": "30m", "alertname": "RadforgeJobFailed", "exp_alerts": []},
        ],
    },
]
GPU_POOL_TEST = {
    "interval": "1m",
    "input_series": [
        {"series": 'ray_cluster_active_nodes{node_type="gpu-train"}', "values": "4x20 6x60"},
        {"series": 'ray_cluster_active_nodes{node_type="cpu-ingest"}', "values": "16x80"},
    ],
    "alert_rule_test": [
        {"eval_time": "40m", "alertname": "RadforgeGpuPoolAtMax", "exp_alerts": []},
        {
            "eval_time": "60m",
            "alertname": "RadforgeGpuPoolAtMax",
            "exp_alerts": [{"exp_labels": {"severity": "info"}}],
        },
    ],
}


def _expand_labels(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], template)


def _with_annotations(docs: list[Doc], tests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tests with each expected alert's annotations: the rule's, templated with its labels."""
    by_name = {r["alert"]: r.get("annotations", {}) for r in rules(docs) if "alert" in r}
    tests = json.loads(json.dumps(tests))
    for test in tests:
        for case in test["alert_rule_test"]:
            for alert in case["exp_alerts"]:
                alert["exp_annotations"] = {
                    k: _expand_labels(v, alert["exp_labels"]) for k, v in by_name[case["alertname"]].items()
                }
    return tests


def _promtool_test(
    docs: list[Doc], tests: list[dict[str, Any]], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    tests = _with_annotations(docs, tests)
    rules_path = _rules_file(docs, tmp_path)
    spec = tmp_path / "tests.yaml"
    spec.write_text(
        yaml.safe_dump({"rule_files": [rules_path.name], "evaluation_interval": "1m", "tests": tests})
    )
    return subprocess.run(
        ["promtool", "test", "rules", spec.name], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


def test_alerts_fire_on_synthetic_series(rendered: dict[str, list[Doc]], tmp_path: Path) -> None:
    out = _promtool_test(rendered["overlays/prod"], [*RULE_TESTS, GPU_POOL_TEST], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_rule_tests_can_fail(rendered: dict[str, list[Doc]], tmp_path: Path) -> None:
    wrong = json.loads(json.dumps(RULE_TESTS[0]))
    wrong["alert_rule_test"][2]["exp_alerts"] = [{"exp_labels": {"severity": "warning"}}]  # it resolved
    out = _promtool_test(rendered["overlays/prod"], [wrong], tmp_path)
    assert out.returncode != 0 and "RadforgeIngestStalled" in out.stdout + out.stderr
