"""docker-compose.yml, docker-compose.cpu.yml and the multi-GPU generator: valid against the Compose
specification's JSON schema (check-jsonschema's vendored copy, offline), and consistent with the server."""

from __future__ import annotations

import shutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.files import COMPOSE, COMPOSE_CPU, DEPLOY, ROOT, load_yaml


def check_compose_schema(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           *map(str, paths)], capture_output=True, text=True, timeout=120)


def seconds(duration: str) -> float:
    """Compose durations as used here: '35s', '1m30s'."""
    total, number = 0.0, ""
    for ch in duration:
        if ch.isdigit() or ch == ".":
            number += ch
        else:
            total += float(number) * {"h": 3600, "m": 60, "s": 1}[ch]
            number = ""
    return total


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU], ids=lambda p: p.name)
def test_compose_file_matches_compose_spec(path):
    result = check_compose_schema(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_file(tmp_path):
    """The validator really checks: a GPU reservation with a misspelt key fails."""
    broken = load_yaml(COMPOSE)
    broken["services"]["clip"]["deploy"]["resources"]["reservations"]["devices"][0]["capability"] = ["gpu"]
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = check_compose_schema(path)
    assert result.returncode != 0 and "capability" in result.stdout + result.stderr


def test_gpu_server_defaults():
    clip = load_yaml(COMPOSE)["services"]["clip"]
    assert clip["build"]["target"] == "gpu"
    env = clip["environment"]
    assert env["CLIP_MODEL"] == "${CLIP_MODEL:-ViT-B-32}"
    assert env["CLIP_PRETRAINED"] == "${CLIP_PRETRAINED:-laion2b_s34b_b79k}"
    assert env["CLIP_HOST"] == "0.0.0.0" and env["CLIP_DEVICE"] == "cuda"
    (device,) = clip["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU], ids=lambda p: p.name)
def test_weights_download_into_a_named_volume(path):
    compose = load_yaml(path)
    clip = compose["services"]["clip"]
    mounts = dict(v.split(":")[:2][::-1] for v in clip["volumes"])  # container path -> source
    assert mounts.get("/cache") in compose["volumes"], "the cache must be a named volume declared at top level"
    for key in ("CLIP_CACHE_DIR", "HF_HOME"):
        assert clip["environment"][key].startswith("/cache/"), f"{key} must point into the /cache volume"


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU], ids=lambda p: p.name)
def test_stop_grace_period_outlasts_the_drain(path):
    clip = load_yaml(path)["services"]["clip"]
    from service.__main__ import EXIT_MARGIN_S

    drain = float(clip["environment"]["CLIP_DRAIN_S"])
    # the server is gone CLIP_DRAIN_S + EXIT_MARGIN_S after SIGTERM at the latest
    assert seconds(clip["stop_grace_period"]) >= drain + EXIT_MARGIN_S, "docker would SIGKILL the server first"


def test_cpu_file_is_the_gpu_server_without_the_gpu():
    gpu = load_yaml(COMPOSE)["services"]["clip"]
    cpu = load_yaml(COMPOSE_CPU)["services"]["clip"]
    assert cpu["build"]["target"] == "cpu" and cpu["environment"]["CLIP_DEVICE"] == "cpu"
    assert "deploy" not in cpu, "a CPU host has no NVIDIA runtime: no device reservation"
    device_keys = {"CLIP_DEVICE", "CLIP_PRECISION", "CLIP_BACKEND", "CLIP_EXPORT_DIR"}  # the lean image serves onnx
    strip = lambda s: {**{k: v for k, v in s.items() if k not in ("build", "image", "deploy", "environment",
                                                                  "depends_on")},
                       "environment": {k: v for k, v in s["environment"].items() if k not in device_keys}}
    assert strip(cpu) == strip(gpu), "keep docker-compose.cpu.yml's server in step with docker-compose.yml"
    cpu_compose = load_yaml(COMPOSE_CPU)
    for name in ("prometheus", "grafana"):
        assert cpu_compose["services"][name] == {"extends": {"file": COMPOSE.name, "service": name}}
    assert set(cpu_compose["volumes"]) == set(load_yaml(COMPOSE)["volumes"])


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU], ids=lambda p: p.name)
def test_bind_mounted_files_exist(path):
    for name, service in load_yaml(path)["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{path.name}: {name} mounts missing {source}"


def test_cpu_server_is_the_lean_image_and_serves_the_export_its_one_off_step_makes():
    """The lean image has no PyTorch: it serves an ONNX export, made first by the full image's one-off step."""
    compose = load_yaml(COMPOSE_CPU)
    clip, export = compose["services"]["clip"], compose["services"]["export"]
    assert clip["environment"]["CLIP_BACKEND"] == "onnx"
    assert clip["depends_on"] == {"export": {"condition": "service_completed_successfully"}}
    assert export["build"]["target"] == "cpu-full" and export.get("restart") == "no"
    (command,) = export["command"]
    assert "python -m export onnx" in command and '--out "$$CLIP_EXPORT_DIR"' in command
    assert export["environment"]["CLIP_EXPORT_DIR"] == clip["environment"]["CLIP_EXPORT_DIR"]
    assert export["environment"]["CLIP_MODEL"] == clip["environment"]["CLIP_MODEL"]
    assert export["volumes"] == clip["volumes"]
    stages = re.findall(r"^FROM \S+ AS (\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert {"cpu", "cpu-full"} <= set(stages)


def test_gpu_server_starts_after_the_engine_build_step():
    """Serving never builds TensorRT engines: the one-off `engines` step does, and the server waits for it."""
    services = load_yaml(COMPOSE)["services"]
    clip, engines = services["clip"], services["engines"]
    assert clip["depends_on"] == {"engines": {"condition": "service_completed_successfully"}}
    (command,) = engines["command"]
    assert '[ "$$CLIP_BACKEND" != tensorrt ] ||' in command
    assert 'python -m export tensorrt --reuse --onnx "$$CLIP_ONNX_DIR" --out "$$CLIP_EXPORT_DIR"' in command
    for key in ("CLIP_BACKEND", "CLIP_EXPORT_DIR"):
        assert engines["environment"][key] == clip["environment"][key], key
    assert engines["deploy"] == clip["deploy"] and engines["volumes"] == clip["volumes"]
    from export.__main__ import build_parser  # the command's flags exist

    args = build_parser().parse_args(["tensorrt", "--reuse", "--onnx", "a", "--out", "b"])
    assert args.reuse and args.onnx == "a"


def test_prometheus_and_grafana_find_their_peers():
    compose = load_yaml(COMPOSE)
    prom = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = prom["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert "clip" in sd["names"] and "clip" in compose["services"]
    assert sd["port"] == int(compose["services"]["clip"]["environment"]["CLIP_PORT"])
    assert job["metrics_path"] == "/metrics"
    (ds,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]


# ---------------------------------------------------------------------------------------------------------
# One replica per GPU


def generate(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "docker-compose.multi-gpu.yml"
    subprocess.run([sys.executable, str(DEPLOY / "compose" / "multi_gpu.py"), *args, "-o", str(out)],
                   check=True, cwd=ROOT, timeout=60)
    result = check_compose_schema(out)
    assert result.returncode == 0, result.stdout + result.stderr
    return load_yaml(out)


def test_multi_gpu_file_has_one_replica_per_gpu(tmp_path):
    compose = generate(tmp_path, "--gpus", "0,2,3")
    base = load_yaml(COMPOSE)["services"]["clip"]
    replicas = {k: v for k, v in compose["services"].items() if k.startswith("clip-gpu")}
    assert sorted(replicas) == ["clip-gpu0", "clip-gpu1", "clip-gpu2"]
    pinned = []
    for svc in replicas.values():
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        pinned += device["device_ids"]
        assert "count" not in device, "count and device_ids are exclusive"
        assert svc["networks"]["default"]["aliases"] == ["clip"], "nginx and Prometheus find replicas as `clip`"
        assert "ports" not in svc
        assert svc["environment"] == base["environment"] and svc["volumes"] == base["volumes"]
    assert pinned == ["0", "2", "3"]
    (engines,) = compose["services"]["engines"]["deploy"]["resources"]["reservations"]["devices"]
    assert engines["device_ids"] == ["0"], "one engine build, on the first GPU, before every replica"
    assert all(svc["depends_on"] == base["depends_on"] for svc in replicas.values())
    lb = compose["services"]["lb"]
    assert lb["ports"] == base["ports"] and (ROOT / lb["volumes"][0].split(":")[0]).is_file()
    assert compose["services"]["prometheus"]["extends"]["file"] == COMPOSE.name


def test_multi_gpu_count(tmp_path):
    compose = generate(tmp_path, "--gpus", "2")
    assert [s for s in compose["services"] if s.startswith("clip-gpu")] == ["clip-gpu0", "clip-gpu1"]


def test_multi_gpu_rejects_bad_lists(tmp_path):
    for spec in ("0", "1,1"):
        r = subprocess.run([sys.executable, str(DEPLOY / "compose" / "multi_gpu.py"), "--gpus", spec],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode != 0 and "--gpus" in r.stderr


def test_nginx_config_parses(tmp_path):
    """nginx -t on the load balancer's config (optional: skipped where nginx is not installed)."""
    nginx = shutil.which("nginx")
    if not nginx:
        pytest.skip("nginx not installed (apt-get install nginx): load balancer config not parsed")
    (tmp_path / "logs").mkdir()
    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/logs/error.log;\nevents {{}}\n"
                    f"http {{ access_log off; include {DEPLOY / 'compose' / 'nginx.conf'}; }}\n")
    out = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(main)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
