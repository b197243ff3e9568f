"""Write a compose file that runs one clip-serve replica per GPU behind an nginx load balancer.

    python deploy/compose/multi_gpu.py > docker-compose.multi-gpu.yml            # every GPU nvidia-smi lists
    python deploy/compose/multi_gpu.py --gpus 0,2 > docker-compose.multi-gpu.yml  # chosen GPUs
    docker compose -f docker-compose.multi-gpu.yml up -d --build

Docker cannot hand each replica of one scaled service a different GPU, so each GPU gets its own service
(clip-gpu0, clip-gpu1, ...), copied from the `clip` service of docker-compose.yml with only the GPU, the
published port and a network alias changed. Every replica answers to the name `clip`: nginx
(deploy/compose/nginx.conf) balances over them and Prometheus (deploy/prometheus/prometheus.yml) finds and
scrapes each one through the same name. Prometheus and Grafana come from docker-compose.yml unchanged.
The replicas share the `clip-cache` volume. With CLIP_BACKEND=tensorrt the one-off `engines` service of
docker-compose.yml builds the engines once, on the first GPU listed (`python -m export tensorrt --reuse`: kept on
later starts), and every replica starts only once it has exited 0; serving never builds engines. Keep the GPUs of
one model: a TensorRT engine runs only on the GPU model that built it. (With CLIP_BACKEND=onnx, ONNX Runtime's own
TensorRT provider builds its engines at start, under a lock in the export's cache directory: the first replica
builds, the others wait and load them.)
Write the output at the repository root: the paths inside it are relative to that.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "docker-compose.yml"
NGINX_IMAGE = "nginx:1.27-alpine"


def detect_gpus() -> list[str]:
    """GPU indices from `nvidia-smi -L` (one line per GPU)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"could not list GPUs with nvidia-smi ({e}): pass them with --gpus, e.g. --gpus 4 "
                         f"or --gpus 0,1,2,3") from None
    ids = [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]
    if not ids:
        raise SystemExit("nvidia-smi lists no GPU: pass them with --gpus")
    return ids


def parse_gpus(spec: str | None) -> list[str]:
    """'4' -> ['0', '1', '2', '3']; '0,2' -> ['0', '2']; None -> every GPU nvidia-smi lists."""
    if spec is None:
        return detect_gpus()
    if "," not in spec and spec.strip().isdigit():
        n = int(spec)
        if n < 1:
            raise SystemExit("--gpus needs at least one GPU")
        return [str(i) for i in range(n)]
    ids = [s.strip() for s in spec.split(",") if s.strip()]
    if not ids or len(set(ids)) != len(ids):
        raise SystemExit(f"--gpus {spec!r}: give a count (4) or distinct GPU indices or UUIDs (0,2)")
    return ids


def pinned(base: dict, gpu: str) -> dict:
    """A copy of a service of docker-compose.yml that reserves one given GPU."""
    svc = copy.deepcopy(base)
    svc["deploy"]["resources"]["reservations"]["devices"] = [
        {"driver": "nvidia", "device_ids": [gpu], "capabilities": ["gpu"]}]
    return svc


def replica(base: dict, gpu: str) -> dict:
    """The base `clip` service pinned to one GPU, reachable as `clip` on the compose network, unpublished; like it,
    it starts after the `engines` step."""
    svc = pinned(base, gpu)
    svc.pop("ports", None)  # clients go through the load balancer
    svc["networks"] = {"default": {"aliases": ["clip"]}}
    return svc


def build(gpus: list[str], base_file: Path = BASE) -> dict:
    """The compose model for `gpus`, as a dict ready for YAML."""
    base = yaml.safe_load(base_file.read_text())
    clip = base["services"]["clip"]
    services: dict = {"engines": pinned(base["services"]["engines"], gpus[0])}  # one build for every replica
    services.update({f"clip-gpu{i}": replica(clip, gpu) for i, gpu in enumerate(gpus)})
    services["lb"] = {
        "image": NGINX_IMAGE,
        "volumes": ["./deploy/compose/nginx.conf:/etc/nginx/conf.d/default.conf:ro"],
        "ports": clip["ports"],
        "depends_on": sorted(s for s in services if s.startswith("clip-gpu")),
        "restart": "unless-stopped",
    }
    for name in ("prometheus", "grafana"):
        services[name] = {"extends": {"file": base_file.name, "service": name}}
    return {"name": base["name"], "services": services, "volumes": base["volumes"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", help="a count (4) or GPU indices/UUIDs (0,2); default: every GPU nvidia-smi lists")
    ap.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = ap.parse_args(argv)
    gpus = parse_gpus(args.gpus)
    text = (f"# Generated by: python deploy/compose/multi_gpu.py --gpus {','.join(gpus)}\n"
            f"# One clip-serve replica per GPU behind nginx. Run: docker compose -f <this file> up -d --build\n"
            + yaml.safe_dump(build(gpus), sort_keys=False, default_flow_style=False))
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
