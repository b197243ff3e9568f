"""Paths of the deployment files, YAML loading, external tools, and the metric names a PromQL expression
reads. Shared by the tests in tests/deploy."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
RULES = PROM / "rules" / "clip-serve.yml"
RULE_TESTS = PROM / "tests" / "clip-serve.test.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "clip-serve.json"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
APT_PROMETHEUS = "apt-get install -y --no-install-recommends prometheus"

# Series Prometheus makes itself for every target; the server does not export them.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def load_all_yaml(path_or_text: Path | str) -> list[dict]:
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    return [d for d in yaml.safe_load_all(text) if d]


def require_tool(name: str, hint: str) -> str:
    """Path of an external tool. Missing: a failure in CI (where .ci/run installs it), a skip elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found on PATH; install it with: {hint}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# ---------------------------------------------------------------------------------------------------------
# PromQL: which metric names does an expression read?

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric names read by a PromQL expression (Grafana variables allowed), e.g.
    'sum by (le) (rate(clip_batch_size_bucket{modality="text"}[5m]))' -> {'clip_batch_size_bucket'}."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    e = re.sub(r"\{[^{}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range and subquery selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)  # label lists
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # Grafana variables ($__rate_interval, ${datasource})
    names = set()
    for m in re.finditer(r"(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        token = m.group(0)
        if e[m.end():].lstrip().startswith("("):  # a function call (or aggregation) name
            continue
        if token.lower() in _KEYWORDS:
            continue
        names.add(token)
    return names


def dashboard_exprs(dashboard: dict | None = None) -> list[str]:
    """Every PromQL expression of the dashboard's panels (rows included)."""
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dashboard["panels"])
    return exprs


def dashboard_variable_metrics(dashboard: dict | None = None) -> set[str]:
    """Metric names read by the template variables (Grafana's label_values(metric, label))."""
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    names = set()
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.match(r"\s*label_values\(\s*(.*),\s*\w+\s*\)\s*$", query)
        assert m, f"variable {var['name']}: unsupported query {query!r}"
        names |= metric_names(m.group(1))
    return names


def rule_exprs(path: Path = RULES) -> list[str]:
    return [r["expr"] for g in load_yaml(path)["groups"] for r in g["rules"]]


def operator_rule_exprs() -> list[str]:
    """The expressions of the Prometheus Operator's copy of the rules (deploy/k8s/prometheusrule.yaml)."""
    (doc,) = load_all_yaml(K8S / "prometheusrule.yaml")
    return [r["expr"] for g in doc["spec"]["groups"] for r in g["rules"]]


def equality_selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric, {label: value}) for each selector of `expr` with label="value" matchers (regex and negative
    matchers, and Grafana variables, are left out): 'rate(clip_rejected_total{reason="queue_full"}[5m])' ->
    [('clip_rejected_total', {'reason': 'queue_full'})]."""
    out = []
    for m in re.finditer(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*\{([^{}]*)\}", expr):
        labels = dict(re.findall(r'(\w+)\s*=\s*"([^"$]*)"', m.group(2)))
        if labels:
            out.append((m.group(1), labels))
    return out


def adapter_rules() -> list[dict]:
    return load_yaml(ADAPTER_VALUES)["rules"]["custom"]


def used_metric_names() -> dict[str, set[str]]:
    """Every metric name that the dashboard, the alert rules and the autoscaler read, by where it is read."""
    used: dict[str, set[str]] = {}

    def add(names, where):
        for n in names:
            used.setdefault(n, set()).add(where)

    for expr in dashboard_exprs():
        add(metric_names(expr), "grafana dashboard")
    add(dashboard_variable_metrics(), "grafana variables")
    for expr in rule_exprs():
        add(metric_names(expr), "alert rules")
    for expr in operator_rule_exprs():
        add(metric_names(expr), "prometheus operator rules")
    for rule in adapter_rules():
        add(metric_names(rule["seriesQuery"]), "prometheus-adapter rule")
    for doc in load_all_yaml(K8S / "hpa.yaml"):
        for m in doc["spec"]["metrics"]:
            add({m[m["type"].lower()]["metric"]["name"]}, "hpa")
    return used


def exported_names(exposition: str) -> set[str]:
    """All sample names a Prometheus text exposition can carry, from its metric families (a histogram family
    with no observation yet still declares _bucket/_sum/_count)."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",),
                "untyped": ("",), "unknown": ("",), "stateset": ("",), "gaugehistogram": ("_bucket", "_gsum",
                                                                                          "_gcount")}
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names
