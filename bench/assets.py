"""What the benchmarks run on: cached ONNX exports of the models, and test images (synthetic and real photos).

Exports are made once under `exports/` (git-ignored) and reused while their source is unchanged:
- `exports/bench-vit-b-32/`: ViT-B-32 with random (seeded) weights, saved first as a local state dict so the
  eager torch model and the ONNX graphs are the same model (same fingerprint);
- `exports/bench-<name>/`: the bundled model (`models.factory.DEFAULT_MODEL`), keyed "bundled" in results;
- `exports/bench-<...>-int8/`: int8 exports of the same models (`python -m export onnx --precision int8`), made
  when a run measures int8.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXPORTS = ROOT / "exports"
VIT_B_32_WEIGHTS = EXPORTS / "bench-vit-b-32-weights" / "vit-b-32-random-seed0.safetensors"

log = logging.getLogger("bench.assets")


@dataclass(frozen=True)
class BenchModel:
    """One model the suite measures: how to serve it with torch and where its ONNX export lives."""

    key: str  # short name used in result keys: "vit-b-32" | "bundled"
    model: str  # CLIP_MODEL
    checkpoint: str | None  # CLIP_CHECKPOINT
    export_dir: Path  # CLIP_EXPORT_DIR for the onnx backend
    int8_export_dir: Path | None = None  # the int8 export, when this run measures int8

    def export_for(self, precision: str) -> Path:
        """The export directory of one precision ("fp32" or "int8")."""
        if precision == "int8":
            if self.int8_export_dir is None:
                raise ValueError(f"{self.key} has no int8 export in this run")
            return self.int8_export_dir
        return self.export_dir

    def server_env(self, backend: str, precision: str = "fp32") -> dict[str, str]:
        env = {"CLIP_MODEL": self.model, "CLIP_BACKEND": backend}
        if self.checkpoint:
            env["CLIP_CHECKPOINT"] = self.checkpoint
        if backend != "torch":
            env["CLIP_EXPORT_DIR"] = str(self.export_for(precision))
        if precision == "int8":
            env["CLIP_PRECISION"] = "int8"
        return env


def _vit_b_32_weights() -> Path:
    """A ViT-B-32 state dict with seeded random weights (speed does not depend on the weights' values)."""
    if VIT_B_32_WEIGHTS.is_file():
        return VIT_B_32_WEIGHTS
    import torch
    from safetensors.torch import save_file

    from models.factory import create_model

    torch.manual_seed(0)
    model = create_model("ViT-B-32")
    VIT_B_32_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = VIT_B_32_WEIGHTS.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.rename(VIT_B_32_WEIGHTS)
    return VIT_B_32_WEIGHTS


def _ensure_export(model: str, checkpoint: str | None, out: Path, precision: str = "fp32") -> Path:
    """`python -m export onnx` once; an export whose manifest exists and verifies is reused."""
    from export.manifest import read_manifest
    from export.quantize import DEFAULT_RECIPE, RECIPES

    try:
        manifest = read_manifest(out, verify=True)
        recipe = json.loads(json.dumps(RECIPES[DEFAULT_RECIPE].to_dict()))  # as manifest.json holds it (lists)
        current = precision != "int8" or (manifest.quantization or {}).get("recipe") == recipe
        if manifest.precision == precision and current:  # an int8 export of an older default recipe is redone
            return out
    except Exception:  # noqa: BLE001 - missing, partial or stale: export again
        pass
    cmd = [sys.executable, "-m", "export", "onnx", "--model", model, "--out", str(out), "--parity-shapes", "16",
           "--precision", precision]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    log.info("exporting %s to %s (once; reused by later runs)", model, out)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return out


def vit_b_32(int8: bool = False) -> BenchModel:
    weights = str(_vit_b_32_weights())
    out = EXPORTS / "bench-vit-b-32"
    return BenchModel("vit-b-32", "ViT-B-32", weights, _ensure_export("ViT-B-32", weights, out),
                      _ensure_export("ViT-B-32", weights, out.with_name(out.name + "-int8"), "int8") if int8 else None)


def bundled(int8: bool = False) -> BenchModel:
    """The model `make serve` serves (models.factory.DEFAULT_MODEL, a checkpoint directory)."""
    from models.factory import DEFAULT_MODEL

    path = Path(DEFAULT_MODEL)
    if not (path / "open_clip_config.json").is_file():
        raise FileNotFoundError(f"the bundled checkpoint {path} is missing (run `make train`)")
    out = EXPORTS / f"bench-{path.name}"
    return BenchModel("bundled", str(path), None, _ensure_export(str(path), None, out),
                      _ensure_export(str(path), None, out.with_name(out.name + "-int8"), "int8") if int8 else None)


# --- images -------------------------------------------------------------------------------------------------
def photos() -> dict[str, np.ndarray]:
    """Real photographs shipped with scikit-image (RGB uint8 [H, W, 3])."""
    from skimage import data

    return {"chelsea": data.chelsea(), "astronaut": data.astronaut(), "coffee": data.coffee(),
            "rocket": data.rocket()}


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def photo_jpegs(width: int, height: int) -> list[bytes]:
    """Each real photo resized (bicubic, aspect ignored) to width x height, as JPEG quality 90."""
    return [jpeg(Image.fromarray(a).resize((width, height), Image.BICUBIC)) for a in photos().values()]
