"""deploy/grafana: the provisioned data source and dashboard are well formed and show what operators need."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy.files import COMPOSE, DASHBOARD, GRAFANA, dashboard_exprs, load_yaml


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_layout(dashboard):
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, f"panel {p['title']!r} overlaps another"
        cells |= area


def test_every_query_uses_the_datasource_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for p in all_panels(dashboard):
        for t in p.get("targets", []):
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert 'instance=~"$instance"' in t["expr"], f"{p['title']}: honour the instance picker"


def test_shows_what_the_issue_asks_for(dashboard):
    exprs = dashboard_exprs(dashboard)
    has = lambda pattern: any(re.search(pattern, e) for e in exprs)
    assert has(r"rate\(clip_requests_total"), "request rate"
    for q in ("0.5", "0.9", "0.99"):
        assert has(rf"histogram_quantile\({q}, sum by \(endpoint, le\) \(rate\(clip_request_duration_seconds_bucket"), \
            f"latency p{q} per endpoint"
    heatmaps = [p for p in all_panels(dashboard) if p["type"] == "heatmap"]
    assert any("clip_batch_size_bucket" in t["expr"] and t.get("format") == "heatmap"
               for p in heatmaps for t in p["targets"]), "batch-size distribution"
    assert has(r"clip_queue_depth") and has(r"clip_queue_capacity"), "queue depth against its cap"
    assert has(r"clip_cache_hits_total.*clip_cache_misses_total"), "cache hit ratio"
    assert has(r'status=~"\[45\]\.\."') and has(r"clip_rejected_total"), "errors and rejections"


def test_provisioning_matches_compose(dashboard):
    (ds,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert ds["type"] == "prometheus" and ds["isDefault"]
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "clip-serve.yml")["providers"]
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    assert dashboard["uid"] == "clip-serve"
