"""deploy/prometheus: promtool accepts the config and the rules, and the rules' unit tests pass."""

from __future__ import annotations

import subprocess

from tests.deploy.files import PROM, RULE_TESTS, RULES, load_yaml


def promtool_run(promtool: str, *args: str) -> str:
    out = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_config(promtool):
    text = promtool_run(promtool, "check", "config", str(PROM / "prometheus.yml"))
    assert "1 rule files found" in text, "rule_files must find rules/clip-serve.yml"


def test_rules(promtool):
    promtool_run(promtool, "check", "rules", str(RULES))


def test_rule_unit_tests(promtool):
    promtool_run(promtool, "test", "rules", str(RULE_TESTS))


def test_required_alerts_exist_and_are_tested():
    alerts = {r["alert"] for g in load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r}
    assert {"ClipServeNotReady", "ClipServeHigh5xxRate", "ClipServeQueueSaturated",
            "ClipServeHighP99Latency"} <= alerts
    tested = {t["alertname"] for test in load_yaml(RULE_TESTS)["tests"] for t in test["alert_rule_test"]
              if t["exp_alerts"]}
    assert tested == alerts, "every alert needs a firing case in deploy/prometheus/tests/clip-serve.test.yml"
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert {"summary", "description"} <= set(rule["annotations"])
