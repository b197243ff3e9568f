"""Every metric the dashboard, the alert rules and the autoscaler read is one the running server exports."""

from __future__ import annotations

import httpx
import pytest

from tests.deploy.files import PROMETHEUS_SYNTHETIC, exported_names, metric_names, used_metric_names


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


def test_every_used_metric_is_exported(deploy_server):
    exposition = httpx.get(deploy_server.url + "/metrics", timeout=10).text
    exported = exported_names(exposition)
    used = used_metric_names()
    assert len(used) > 10
    missing = {name: sorted(where) for name, where in used.items()
               if name not in exported and name not in PROMETHEUS_SYNTHETIC}
    assert not missing, f"read by deploy/ but not exported by the server: {missing}"
