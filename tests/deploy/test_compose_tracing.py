"""docker-compose.tracing.yml, the override that adds Jaeger: valid against the Compose specification alone and
merged onto each base file, and consistent with the server (its variables turn tracing on, the image gets the
`otel` extra, the endpoint names the Jaeger service's OTLP/HTTP port)."""

from __future__ import annotations

import re
import tomllib
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.files import COMPOSE, COMPOSE_CPU, ROOT, load_yaml
from tests.deploy.test_compose import check_compose_schema

TRACING = ROOT / "docker-compose.tracing.yml"


def merged(base: dict, override: dict) -> dict:
    """Compose's merge of an override, for mappings (what this override holds): keys merged recursively, a
    sequence or scalar of the override replacing the base's."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_override_matches_compose_spec():
    result = check_compose_schema(TRACING)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("base", [COMPOSE, COMPOSE_CPU], ids=lambda p: p.name)
def test_override_merged_onto_each_base_file(base, tmp_path):
    compose = merged(load_yaml(base), load_yaml(TRACING))
    path = tmp_path / "merged.yml"
    path.write_text(yaml.safe_dump(compose))
    result = check_compose_schema(path)
    assert result.returncode == 0, result.stdout + result.stderr
    clip = compose["services"]["clip"]
    assert clip["build"]["target"] == load_yaml(base)["services"]["clip"]["build"]["target"], "the base's image"
    assert set(load_yaml(base)["services"]["clip"]["depends_on"]) < set(clip["depends_on"]), "its one-off step kept"
    assert "CLIP_MODEL" in clip["environment"], "the base's settings kept"
    builds: dict[str, dict] = {}
    for name, service in compose["services"].items():  # one tag, one build: else the last build wins the tag
        if "build" in service:
            assert builds.setdefault(service["image"], service["build"]) == service["build"], (name, service["image"])


def test_the_server_sends_to_jaegers_otlp_http_port():
    compose = load_yaml(TRACING)
    env = compose["services"]["clip"]["environment"]
    endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.scheme == "http" and endpoint.hostname in compose["services"] and endpoint.port == 4318
    jaeger = compose["services"][endpoint.hostname]
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", jaeger["image"]), "a pinned Jaeger v2 (all-in-one)"
    assert jaeger["environment"]["JAEGER_LISTEN_HOST"] == "0.0.0.0", "reachable from the clip container"
    assert jaeger["ports"] == ["127.0.0.1:16686:16686"], "the UI on this host only"
    assert compose["services"]["clip"]["depends_on"] == {endpoint.hostname: {"condition": "service_started"}}


def test_its_variables_turn_tracing_on(monkeypatch):
    from service import tracing
    from service.settings import Settings

    for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    env = load_yaml(TRACING)["services"]["clip"]["environment"]
    for key, value in env.items():
        monkeypatch.setenv(key, re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)))  # ${VAR:-default} -> default
    assert tracing.wanted(Settings())


def test_the_image_is_built_with_the_otel_extra():
    args = load_yaml(TRACING)["services"]["clip"]["build"]["args"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "otel" in args["EXTRAS"].split(",") and "otel" in extras
    assert any(d.startswith("opentelemetry-exporter-otlp-proto-http") for d in extras["otel"])
    from tests.deploy.test_dockerfile import parse

    _, stages = parse((ROOT / "Dockerfile").read_text())
    by_name = {s.name: s for s in stages}
    for target in {load_yaml(p)["services"]["clip"]["build"]["target"] for p in (COMPOSE, COMPOSE_CPU)}:
        build = by_name[f"{target}-build"]
        assert "EXTRAS=" in build.args("ARG"), f"{target}-build takes the EXTRAS build argument"
        assert 'pip install ".[$EXTRAS]"' in " ".join(build.args("RUN")), f"{target}-build installs EXTRAS"
