"""Every metric the dashboard, the alert rules and the autoscaler read is one a freshly started server exports,
with a series to evaluate, before any traffic."""

from __future__ import annotations

import httpx
import pytest

from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.files import (PROMETHEUS_SYNTHETIC, dashboard_exprs, equality_selectors, exported_names, metric_names,
                                operator_rule_exprs, rule_exprs, used_metric_names)


@pytest.mark.parametrize("expr,names", [
    ('sum by (endpoint, status) (rate(clip_requests_total{instance=~"$instance"}[$__rate_interval]))',
     {"clip_requests_total"}),
    ('histogram_quantile(0.99, sum by (le) (rate(clip_request_duration_seconds_bucket{endpoint=~"/embed/.*"}[5m])))'
     ' > 1', {"clip_request_duration_seconds_bucket"}),
    ('max by (instance, modality) (clip_queue_depth / (clip_queue_capacity > 0)) > 0.8',
     {"clip_queue_depth", "clip_queue_capacity"}),
    ('up{job=~".*clip-serve.*"} == 0', {"up"}),
    ('sum(rate(a_total[1m])) / on (x) group_left (y) b offset 5m and bool 1e3', {"a_total", "b"}),
])
def test_metric_names_of_an_expression(expr, names):
    assert metric_names(expr) == names


@pytest.fixture(scope="module")
def fresh_server(bundled_dir, tmp_path_factory):
    """A server that has answered nothing but its readiness probe: what Prometheus scrapes after a start."""
    from tests.service.server import ServerProcess

    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_DEVICE": "cpu"},
                         tmp_path_factory.mktemp("fresh-server") / "server.log")
    try:
        proc.wait_ready(timeout=120)
    except BaseException:
        proc.stop()
        raise
    yield proc
    proc.stop()


def test_every_used_metric_has_a_series_on_a_fresh_server(fresh_server):
    """Declared is not enough: a labelled counter without a series until its first event leaves increase() and
    rate() nothing to evaluate on a healthy server, and its first event invisible to them."""
    exposition = httpx.get(fresh_server.url + "/metrics", timeout=10).text
    exported = exported_names(exposition)
    with_series = {s.name for family in text_string_to_metric_families(exposition) for s in family.samples}
    used = used_metric_names()
    assert len(used) > 10
    missing = {name: sorted(where) for name, where in used.items()
               if name not in exported and name not in PROMETHEUS_SYNTHETIC}
    assert not missing, f"read by deploy/ but not exported by the server: {missing}"
    no_series = {name: sorted(where) for name, where in used.items()
                 if name not in with_series and name not in PROMETHEUS_SYNTHETIC}
    assert not no_series, f"read by deploy/ but without a series on a freshly started server: {no_series}"


def test_every_selected_label_value_has_a_series_on_a_fresh_server(fresh_server):
    """A selector such as clip_rejected_total{reason="queue_full"} in a rule finds its series from the start."""
    exposition = httpx.get(fresh_server.url + "/metrics", timeout=10).text
    selectors = [sel for expr in rule_exprs() + operator_rule_exprs() + dashboard_exprs()
                 for sel in equality_selectors(expr)]
    assert selectors, "the rules select label values (e.g. reason=\"queue_full\"): this test must see them"
    missing = [(name, labels) for name, labels in selectors if name not in PROMETHEUS_SYNTHETIC
               and not any(s.name == name and labels.items() <= s.labels.items()
                           for family in text_string_to_metric_families(exposition) for s in family.samples)]
    assert not missing, f"selected by deploy/ but no such series on a freshly started server: {missing}"


def test_known_label_values_are_exported_at_zero(fresh_server):
    """Every reason and kind the code counts is a series from the start (service/metrics.py lists them)."""
    from service.metrics import BACKEND_ERROR_KINDS, JPEG_FALLBACK_REASONS, REJECT_REASONS

    exposition = httpx.get(fresh_server.url + "/metrics", timeout=10).text
    for name, label, values in (("clip_rejected_total", "reason", REJECT_REASONS),
                                ("clip_backend_errors_total", "kind", BACKEND_ERROR_KINDS),
                                ("clip_jpeg_fallbacks_total", "reason", JPEG_FALLBACK_REASONS)):
        found = {s.labels[label] for family in text_string_to_metric_families(exposition)
                 for s in family.samples if s.name == name}
        assert set(values) <= found, (name, sorted(set(values) - found))


def test_every_reason_the_code_counts_is_listed():
    """A new clip_rejected_total reason must join REJECT_REASONS, or it has no series until it first happens."""
    import re

    from service.metrics import REJECT_REASONS
    from tests.deploy.files import ROOT

    counted = set()
    for path in (ROOT / "service").rglob("*.py"):
        text = path.read_text()
        counted |= set(re.findall(r'rejected\.labels\(\s*(?:reason=)?"(\w+)"\s*\)', text))
        counted |= set(re.findall(r'\b_count\(\s*"(\w+)"\s*\)', text))
    assert {"queue_full", "header_timeout"} <= counted, counted  # the scan finds them
    assert counted <= set(REJECT_REASONS), sorted(counted - set(REJECT_REASONS))
