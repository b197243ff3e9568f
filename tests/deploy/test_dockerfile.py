"""The Dockerfile, read as text (no Docker engine here): two final targets, a non-root user, a readiness
healthcheck, the cache volume, and nothing but the runtime venv in the final images."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from dataclasses import dataclass, field

import pytest

from tests.deploy.files import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile (continuations joined, comments dropped)."""
    lines, buf = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not buf:
            continue
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        buf += raw
        if buf.strip():
            lines.append(buf.strip())
        buf = ""
    global_args, stages = {}, []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", rest, re.IGNORECASE)
            stages.append(Stage(m.group(1), m.group(2) or str(len(stages))))
        elif not stages and instruction == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((instruction, rest))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile():
    global_args, stages = parse(DOCKERFILE.read_text())
    return global_args, {s.name: s for s in stages}, stages


def resolve(base: str, global_args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: global_args[m.group(1)], base)


def test_targets(dockerfile):
    global_args, stages, ordered = dockerfile
    assert {"cpu", "gpu"} <= set(stages)
    assert ordered[-1].name == "gpu", "a plain `docker build .` builds the GPU image"
    gpu_base = resolve(stages["gpu"].base, global_args)
    assert gpu_base.startswith("nvidia/cuda:") and "runtime" in gpu_base, "GPU image on a CUDA *runtime* base"
    assert "devel" not in gpu_base
    assert resolve(stages["gpu-build"].base, global_args) == gpu_base, "venv interpreter path must match"
    assert resolve(stages["cpu-build"].base, global_args) == resolve(stages["cpu"].base, global_args)


# ids avoid the bare word "gpu", which tests/conftest.py reads as the `gpu` marker (skipped without CUDA)
TARGETS = pytest.mark.parametrize("target", ["cpu", "gpu"], ids=["cpu-image", "gpu-image"])


def test_the_cpu_image_is_lean_and_serves_the_bundled_export(dockerfile):
    """cpu installs '.[cpu]' (no PyTorch) and defaults to the bundled model's ONNX export; cpu-full adds torch."""
    _, stages, _ = dockerfile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [d for d in extras["cpu"] + extras["onnx"] if d.split("[")[0].startswith(("torch", "open_clip"))]
    env = " ".join(stages["cpu"].args("ENV"))
    assert "CLIP_BACKEND=onnx" in env and "CLIP_EXPORT_DIR=/opt/exports/shapes-rn-s" in env
    full = " ".join(stages["cpu-full-build"].args("RUN"))
    assert "pip install '.[cpu,torch]'" in full
    assert "python -m export onnx --model models/checkpoints/shapes-rn-s --out /opt/exports/shapes-rn-s" in full
    assert stages["cpu-full"].args("COPY") == ["--from=cpu-full-build /opt/venv /opt/venv"]


@TARGETS
def test_builder_installs_the_package_extra(dockerfile, target):
    extra = target
    _, stages, _ = dockerfile
    runs = " ".join(stages[f"{target}-build"].args("RUN"))
    assert f"pip install '.[{extra}]'" in runs, "the same install step as `make` (pip install '.[EXTRA]')"
    assert "pip uninstall -y pip" in runs, "no pip in the final image"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extra in extras


@TARGETS
def test_final_image(dockerfile, target):
    _, stages, _ = dockerfile
    stage = stages[target]
    (user,) = stage.args("USER")
    assert user not in ("root", "0") and not user.startswith("0:")
    assert stage.args("EXPOSE") == ["8000"]
    (volume,) = stage.args("VOLUME")
    assert "/cache" in volume
    env = " ".join(stage.args("ENV"))
    for setting in ("CLIP_HOST=0.0.0.0", "CLIP_PORT=8000", "CLIP_CACHE_DIR=/cache/", "HF_HOME=/cache/"):
        assert setting in env
    assert f"CLIP_DEVICE={'cuda' if target == 'gpu' else 'cpu'}" in env
    (healthcheck,) = stage.args("HEALTHCHECK")
    assert "/readyz" in healthcheck and "CLIP_PORT" in healthcheck
    assert "--start-period=" in healthcheck, "the first start downloads weights: give it a start period"
    assert stage.args("CMD") == ['["python", "-m", "service"]']


@TARGETS
def test_final_image_has_no_build_or_test_tooling(dockerfile, target):
    _, stages, _ = dockerfile
    stage = stages[target]
    runs = " ".join(stage.args("RUN"))
    assert "pip" not in runs, "install in the builder stage, copy the venv"
    for tool in ("build-essential", "gcc", "g++", "python3-dev", "python3-venv", "python3-pip", "git", "pytest",
                 "curl", "wget"):
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", runs), f"{tool} in the {target} image"
    copies = stage.args("COPY")
    exports = ["--from=cpu-full-build /opt/exports /opt/exports"] if target == "cpu" else []  # the bundled export
    assert copies == [f"--from={target}-build /opt/venv /opt/venv", *exports], "only the venv comes from the builder"


def dockerignore_allows(path: str) -> bool:
    """.dockerignore's verdict for a context path (last matching pattern wins; parents count)."""
    patterns = [l.strip() for l in DOCKERIGNORE.read_text().splitlines() if l.strip() and not l.startswith("#")]
    parts = path.split("/")
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pat[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(p, pat) and p.count("/") == pat.count("/") for p in prefixes)
        if hit:
            included = negate
    return included


def test_copied_sources_exist_and_reach_the_build_context(dockerfile):
    _, _, stages = dockerfile
    for stage in stages:
        for args in stage.args("COPY"):
            words = shlex.split(args)
            if any(w.startswith("--from") for w in words):
                continue
            for source in [w for w in words if not w.startswith("--")][:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: missing (pyproject.toml names README.md)"
                assert dockerignore_allows(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_the_context_small():
    for path in (".venv/bin/python", ".git/HEAD", "runs/x/log.txt", "tests/conftest.py", "exports/a.onnx",
                 "service/__pycache__/app.cpython-311.pyc", "deploy/k8s/deployment.yaml"):
        assert not dockerignore_allows(path), path
    for path in ("pyproject.toml", "service/app.py", "models/checkpoints/shapes-rn-s/open_clip_config.json",
                 "export/towers.py"):
        assert dockerignore_allows(path), path
