"""deploy/k8s: every manifest, alone and as kustomize renders it, validates against the Kubernetes schemas
that kubernetes-validate carries; the Prometheus Operator CRDs, which have no built-in schema, are checked
against the subset of their schema written below; and the pieces agree with each other."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.files import K8S, RULES, adapter_rules, load_all_yaml, load_yaml

# The oldest Kubernetes release still common in managed clusters, and the newest the package knows.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml")
                   if p.name not in ("kustomization.yaml", "values.yaml") and "deployment-patch" not in p.name)


def kustomize(path: Path) -> list[dict]:
    """`kubectl kustomize` output as documents (kubectl carries kustomize); skip without kubectl."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not on PATH: rendering with kustomize skipped (each file is still validated)")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return load_all_yaml(out.stdout)


def validate_k8s(doc: dict) -> None:
    if doc["kind"] in OPERATOR_KINDS:
        validate_operator_resource(doc)
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: "
                        f"{e.message} at {'.'.join(map(str, e.path))}")


# ---------------------------------------------------------------------------------------------------------
# Prometheus Operator CRDs: the fields these manifests use, from the monitoring.coreos.com/v1 CRDs.
# additionalProperties: false catches misspelt fields, which the API server would silently prune.

_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                          r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name"],
             "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABELS,
                            "annotations": _LABELS}}
_SELECTOR = {"type": "object", "additionalProperties": False,
             "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}}}
OPERATOR_SCHEMAS = {
    "PodMonitor": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "metadata": _METADATA,
            "spec": {"type": "object", "required": ["selector"], "additionalProperties": False, "properties": {
                "selector": _SELECTOR, "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"},
                        "authorization": {"type": "object"}}}}}}},
    },
    "PrometheusRule": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "metadata": _METADATA,
            "spec": {"type": "object", "additionalProperties": False, "properties": {
                "groups": {"type": "array", "items": {
                    "type": "object", "required": ["name", "rules"], "additionalProperties": False, "properties": {
                        "name": {"type": "string", "minLength": 1}, "interval": _DURATION,
                        "rules": {"type": "array", "items": {
                            "type": "object", "required": ["expr"], "additionalProperties": False,
                            "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                            "properties": {
                                "alert": {"type": "string"}, "record": {"type": "string"},
                                "expr": {"type": ["string", "integer"]}, "for": _DURATION,
                                "keep_firing_for": _DURATION, "labels": _LABELS,
                                "annotations": _LABELS}}}}}}}}},
    },
}


def validate_operator_resource(doc: dict) -> None:
    schema = OPERATOR_SCHEMAS.get(doc["kind"])
    assert schema, f"no structural schema for {doc['kind']}: add one to OPERATOR_SCHEMAS"
    jsonschema.validate(doc, schema)


# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_each_manifest_validates(path):
    for doc in load_all_yaml(path):
        validate_k8s(doc)


def test_kustomization_lists_every_manifest():
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict]:
    docs = kustomize(K8S)
    for doc in docs:
        validate_k8s(doc)
    return {doc["kind"]: doc for doc in docs}


def test_rendered_resources(rendered):
    assert set(rendered) == {"Namespace", "Deployment", "Service", "PodDisruptionBudget",
                             "HorizontalPodAutoscaler", "PodMonitor", "PrometheusRule"}
    namespace = rendered["Namespace"]["metadata"]["name"]
    for kind, doc in rendered.items():
        if kind != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, kind


def test_shared_cache_component(tmp_path):
    """The component swaps the per-pod emptyDir for a ReadWriteMany claim, in the app's namespace."""
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{K8S.name}]\ncomponents: [{K8S.name}/components/shared-cache]\n")
    shutil.copytree(K8S, tmp_path / K8S.name)
    docs = {d["kind"]: d for d in kustomize(tmp_path)}
    for doc in docs.values():
        validate_k8s(doc)
    pvc = docs["PersistentVolumeClaim"]
    volumes = {v["name"]: v for v in docs["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cache"] == {"name": "cache", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}}
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["namespace"] == docs["Deployment"]["metadata"]["namespace"]


# ---------------------------------------------------------------------------------------------------------
# The pieces agree (checked on the source files, so they run without kubectl too)


def one(name: str) -> dict:
    (doc,) = load_all_yaml(K8S / name)
    return doc


def container() -> dict:
    (c,) = one("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return c


def env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in container()["env"]}


def test_gpu_and_probes():
    c = container()
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "first start downloads weights"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == int(env()["CLIP_PORT"])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ports


def test_tensorrt_engines_are_built_by_an_init_container_never_by_the_server():
    pod = one("deployment.yaml")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == container()["image"]
    script = " ".join(init["command"] + init["args"])
    assert '[ "$CLIP_BACKEND" != tensorrt ] ||' in script
    assert 'python -m export tensorrt --reuse --onnx "$CLIP_ONNX_DIR" --out "$CLIP_EXPORT_DIR"' in script
    init_env = {e["name"]: e["value"] for e in init["env"]}
    for key in ("CLIP_BACKEND", "CLIP_EXPORT_DIR"):
        assert init_env[key] == env()[key], f"{key}: the build step and the server must agree"
    assert {m["mountPath"] for m in init["volumeMounts"]} == {m["mountPath"] for m in container()["volumeMounts"]}
    assert init["resources"]["limits"]["nvidia.com/gpu"] == 1 and init["securityContext"]["readOnlyRootFilesystem"]


KUBELET_SLACK_S = 5  # between the process's own deadline and the kubelet's SIGKILL (deployment.yaml's comment)


def test_termination_grace_is_prestop_plus_drain_plus_the_exit_margin():
    """The grace period runs from the preStop hook: its sleep, then SIGTERM and the drain (CLIP_DRAIN_S), then
    the server's exit margin (it ends itself by then), then a little slack for the kubelet."""
    from service.__main__ import EXIT_MARGIN_S

    pod = one("deployment.yaml")["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop, drain = float(command[1]), float(env()["CLIP_DRAIN_S"])
    assert pod["terminationGracePeriodSeconds"] == pre_stop + drain + EXIT_MARGIN_S + KUBELET_SLACK_S, \
        "terminationGracePeriodSeconds = preStop + CLIP_DRAIN_S + EXIT_MARGIN_S + slack: change them together"
    documented = (K8S.parents[1] / "docs" / "deploy.md").read_text()
    assert f"terminationGracePeriodSeconds: {pod['terminationGracePeriodSeconds']}` = `preStop` sleep " \
           f"{pre_stop:g} s" in documented and f"`CLIP_DRAIN_S` {drain:g} s" in documented, "docs/deploy.md"


def test_runs_as_the_image_user():
    pod = one("deployment.yaml")["spec"]["template"]["spec"]
    dockerfile = (K8S.parents[1] / "Dockerfile").read_text()
    assert f"--uid {pod['securityContext']['runAsUser']} " in dockerfile
    mounts = {m["mountPath"] for m in container()["volumeMounts"]}
    assert {"/cache", "/tmp"} <= mounts, "read-only root: the cache and /tmp must be volumes"
    assert env()["CLIP_CACHE_DIR"].startswith("/cache/") and env()["HF_HOME"].startswith("/cache/")


def test_selectors_match_the_pods():
    deployment = one("deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    matches = lambda selector: all(pod_labels.get(k) == v for k, v in selector.items())
    assert matches(deployment["spec"]["selector"]["matchLabels"])
    assert matches(one("service.yaml")["spec"]["selector"])
    assert matches(one("pdb.yaml")["spec"]["selector"]["matchLabels"])
    assert matches(one("podmonitor.yaml")["spec"]["selector"]["matchLabels"])
    ports = {p["name"] for p in container()["ports"]}
    assert {e["port"] for e in one("podmonitor.yaml")["spec"]["podMetricsEndpoints"]} <= ports
    assert one("service.yaml")["spec"]["ports"][0]["targetPort"] in ports


def test_disruption_budget_leaves_a_replica():
    pdb = one("pdb.yaml")["spec"]
    hpa = one("hpa.yaml")["spec"]
    assert pdb["maxUnavailable"] < hpa["minReplicas"]


def test_autoscaler_uses_the_adapter_metric():
    hpa = one("hpa.yaml")
    deployment = one("deployment.yaml")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    exposed = {rule["name"]["as"] for rule in adapter_rules()}
    assert metric["pods"]["metric"]["name"] in exposed
    for rule in adapter_rules():  # per-pod series: the operator's namespace and pod labels map to objects
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                                  "pod": {"resource": "pod"}}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    # Scale out well before the admission cap refuses work with 503.
    assert float(metric["pods"]["target"]["averageValue"]) < int(env()["CLIP_MAX_QUEUE"])
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]


def test_prometheus_rule_matches_the_compose_rules(tmp_path, promtool):
    rule = one("prometheusrule.yaml")
    assert rule["spec"]["groups"] == load_yaml(RULES)["groups"], \
        "copy deploy/prometheus/rules/clip-serve.yml's groups into deploy/k8s/prometheusrule.yaml"
    path = tmp_path / "rules.yml"
    import yaml

    path.write_text(yaml.safe_dump(rule["spec"]))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_validation_catches_mistakes():
    """The checks above really check: a misspelt field fails strict validation and the CRD subset."""
    deployment = one("deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    monitor = one("podmonitor.yaml")
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate_operator_resource(monitor)
