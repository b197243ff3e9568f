"""A real Prometheus (Debian's binary) scrapes a real server on loopback: the series appear with the expected
labels after a few requests, every dashboard query runs, every alert rule evaluates cleanly, and the
prometheus-adapter rule yields one value per pod."""

from __future__ import annotations

import re
import subprocess
import time

import httpx
import pytest
import yaml

from tests.deploy.files import RULES, adapter_rules, dashboard_exprs
from tests.service.server import free_port


def query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body.get('error', r.text)}"
    return body["data"]["result"]


def wait_for(what: str, check, timeout: float = 30.0, interval: float = 0.5):
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def prometheus(deploy_server, prometheus_bin, tmp_path_factory):
    """Prometheus on a free loopback port, scraping the server every second and loading the alert rules.
    The namespace/pod target labels stand in for the ones the Prometheus Operator adds in Kubernetes."""
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{
            "job_name": "clip-serve",
            "static_configs": [{"targets": [deploy_server.url.removeprefix("http://")],
                                "labels": {"namespace": "clip-serve", "pod": "clip-serve-0"}}],
        }],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")
    proc = subprocess.Popen([prometheus_bin, f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready():
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
        try:
            return httpx.get(url + "/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for("prometheus /-/ready", ready)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def traffic(deploy_server, prometheus):
    """A few requests, and the scrapes that carry them into Prometheus."""
    with httpx.Client(base_url=deploy_server.url, timeout=30) as client:
        for i in range(3):
            assert client.post("/embed/text", json={"texts": [f"a red circle {i}", "a blue square"]}).status_code == 200
        assert client.get("/info").status_code == 200
        assert client.post("/embed/text", json={"texts": []}).status_code == 422
    series = wait_for("clip_requests_total{endpoint=\"/embed/text\",status=\"200\"} >= 3", lambda: [
        s for s in query(prometheus, 'clip_requests_total{endpoint="/embed/text", status="200"} >= 3')])
    return series


def test_requests_reach_prometheus(traffic, deploy_server):
    (s,) = traffic
    labels = s["metric"]
    assert labels["__name__"] == "clip_requests_total"
    assert labels["job"] == "clip-serve" and labels["instance"] == deploy_server.url.removeprefix("http://")
    assert labels["endpoint"] == "/embed/text" and labels["status"] == "200"
    assert float(s["value"][1]) >= 3


def test_series_for_the_other_views(prometheus, traffic):
    assert query(prometheus, 'clip_requests_total{endpoint="/embed/text", status="422"}'), "client errors"
    text_batches = query(prometheus, 'clip_batch_size_count{modality="text"} > 0')
    assert text_batches, "batches executed"
    (ready,) = query(prometheus, "clip_ready")
    assert ready["value"][1] == "1"
    (info,) = query(prometheus, "clip_model_info")
    assert {"model", "backend", "device", "precision", "fingerprint"} <= set(info["metric"])
    modalities = {s["metric"]["modality"] for s in query(prometheus, "clip_queue_capacity")}
    assert modalities == {"image", "text"}


def test_every_dashboard_query_runs(prometheus, traffic):
    def run_all() -> dict | None:
        """Every query runs (query() fails at once on an error); None until rate() and the p99 have the traffic,
        which takes two scrapes after it."""
        results = {}
        for expr in dashboard_exprs():
            concrete = (expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
                        .replace("$modality", ".*"))
            assert "$" not in concrete, f"unhandled Grafana variable in {expr}"
            results[expr] = query(prometheus, concrete)
        rate = [e for e in results if e.startswith("sum by (endpoint, status) (rate(clip_requests_total")]
        p99 = [e for e in results if e.startswith("histogram_quantile(0.99") and "clip_request_duration" in e]
        assert rate and p99, "the dashboard lost its request-rate or p99 panel"
        seen = [any(s["metric"].get("endpoint") == "/embed/text" for e in exprs for s in results[e])
                for exprs in (rate, p99)]
        return results if all(seen) else None

    wait_for("the request rate and p99 of /embed/text in the dashboard's queries", run_all)


def test_alert_rules_evaluate_cleanly(prometheus, traffic):
    def evaluated():
        groups = httpx.get(prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        broken = {r["name"]: r.get("lastError") for r in rules if r.get("health") == "err"}
        assert not broken, f"alert rules failed to evaluate: {broken}"
        # Not yet evaluated: lastEvaluation is Go's zero time, 0001-01-01T00:00:00Z.
        done = all(r.get("health") == "ok" and not r.get("lastEvaluation", "0001").startswith("0001")
                   for r in rules)
        return rules if rules and done else None

    rules = wait_for("every alert rule evaluated", evaluated)
    assert {r["name"] for r in rules} >= {"ClipServeNotReady", "ClipServeHigh5xxRate", "ClipServeQueueSaturated",
                                          "ClipServeHighP99Latency"}
    firing = [r["name"] for r in rules if r["state"] == "firing"]
    assert not firing, f"a healthy server raised alerts: {firing}"


def test_adapter_rule_gives_one_value_per_pod(prometheus, traffic):
    for rule in adapter_rules():
        assert query(prometheus, rule["seriesQuery"]), rule["seriesQuery"]
        series = re.match(r"[a-zA-Z_:][\w:]*", rule["seriesQuery"]).group(0)
        expr = (rule["metricsQuery"].replace("<<.Series>>", series)
                .replace("<<.LabelMatchers>>", 'namespace="clip-serve",pod=~"clip-serve-0"')
                .replace("<<.GroupBy>>", "pod"))
        (value,) = query(prometheus, expr)
        assert value["metric"] == {"pod": "clip-serve-0"}
        assert float(value["value"][1]) >= 0
