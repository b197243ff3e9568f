"""Checkpoint directories in open_clip's local-dir layout: open_clip_config.json + open_clip_model.safetensors.

The same layout open_clip reads from the Hugging Face hub, so a shipped checkpoint loads with plain open_clip
too (``open_clip.create_model('local-dir:models/checkpoints/shapes-vit-s')``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from models.factory import CONFIG_FILE, WEIGHTS_FILE
from models.preprocess import PreprocessConfig


def save_checkpoint(model: torch.nn.Module, model_cfg: dict[str, Any], preprocess: PreprocessConfig,
                    out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write weights (fp32 safetensors) and config; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess.to_open_clip()}
    if extra:
        config["clip_serve"] = extra
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out
