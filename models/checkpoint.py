"""Checkpoint directories in open_clip's local-dir layout: open_clip_config.json + open_clip_model.safetensors.

The same layout open_clip reads from the Hugging Face hub, so a shipped checkpoint loads with plain open_clip
too (``open_clip.create_model('local-dir:models/checkpoints/shapes-rn-s')``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.factory import CONFIG_FILE, WEIGHTS_FILE
from models.preprocess import PreprocessConfig

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors to `dtype` (integer buffers untouched), contiguous, on the CPU."""
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(model: torch.nn.Module, model_cfg: dict[str, Any], preprocess: PreprocessConfig,
                    out_dir: str | Path, extra: dict[str, Any] | None = None,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write weights (safetensors, fp32 unless asked) and config; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(_cast(model.state_dict(), dtype), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess.to_open_clip()}
    if extra:
        config["clip_serve"] = extra
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def convert_weights(out_dir: str | Path, dtype: str) -> Path:
    """Re-save a checkpoint's weights in another precision (e.g. fp16 halves the file; loading casts back to
    the model's fp32 parameters)."""
    path = Path(out_dir) / WEIGHTS_FILE
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    save_file(_cast(load_file(str(path)), DTYPES[dtype]), str(path), metadata={"format": "pt"})
    return path
