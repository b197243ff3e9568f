"""The one factory: every CLIP model in this project is built here, and only here, through open_clip.

A model source is one of
- a checkpoint directory (``open_clip_config.json`` + weights), such as the bundled one;
- an ``hf-hub:org/repo`` id;
- an architecture name (open_clip's, e.g. ``ViT-B-32``, or one of ours in ``models/configs``) plus either a
  pretrained tag (``laion2b_s34b_b79k``), a local state-dict file (.safetensors/.pt/.bin), or nothing
  (random weights, for training from scratch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch

from models import DEFAULT_MODEL
from models.fingerprint import fingerprint_model
from models.preprocess import PreprocessConfig
from models.zeroshot import Activation

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"

open_clip.add_model_config(CONFIG_DIR)  # our architectures become open_clip names like any other

Tokenizer = Callable[..., torch.Tensor]


@dataclass
class LoadedModel:
    """A ready model with everything needed to feed it and to tell it apart from other models."""

    model: torch.nn.Module  # open_clip CLIP / CustomTextCLIP in eval mode
    preprocess: PreprocessConfig
    tokenizer: Tokenizer  # list[str] -> int64 [B, context_length]
    fingerprint: str  # hash of weights + preprocessing + tokenizer identity
    model_id: str  # human-readable source, e.g. "ViT-B-32/laion2b_s34b_b79k"
    context_length: int
    embed_dim: int

    @property
    def logit_bias(self) -> float | None:
        """The learned bias of a model trained with the sigmoid loss (SigLIP); None for CLIP's softmax loss."""
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.item())

    @property
    def logit_scale(self) -> float:
        """exp(learned temperature). Softmax models: clamped at 100, as CLIP's contrastive training keeps it;
        sigmoid models unclamped, as open_clip's own sigmoid scoring (`logit_scale.exp()`) uses them."""
        scale = self.model.logit_scale.exp()
        return float((scale if self.logit_bias is not None else scale.clamp(max=100)).item())

    @property
    def activation(self) -> Activation:
        """How this model's cosines become label probabilities (models/zeroshot.py)."""
        return Activation(self.logit_scale, self.logit_bias)


def is_checkpoint_dir(source: str | Path) -> bool:
    """True if `source` is a directory in open_clip's local-dir layout."""
    return Path(source).is_dir() and (Path(source) / CONFIG_FILE).is_file()


def _open_clip_name(source: str) -> str:
    if is_checkpoint_dir(source):
        return f"local-dir:{Path(source).resolve()}"
    if Path(source).exists():
        raise ValueError(f"{source!r} is a path but not a checkpoint directory: it needs {CONFIG_FILE} beside "
                         f"the weights (write one with models.checkpoint.save_checkpoint).")
    if source.startswith("hf-hub:"):
        return source
    if open_clip.get_model_config(source) is None:
        raise ValueError(f"unknown model {source!r}: give an open_clip architecture (see open_clip.list_models()), "
                         f"one of ours ({', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.json')))}), "
                         f"an hf-hub: id or a checkpoint directory.")
    return source


def _describe(source: str, pretrained: str | None, checkpoint: str | None) -> str:
    if is_checkpoint_dir(source):
        return Path(source).resolve().name
    if checkpoint:
        return f"{source}/{Path(checkpoint).name}"
    return f"{source}/{pretrained}" if pretrained else source


def create_model(source: str, pretrained: str | None = None, checkpoint: str | None = None,
                 device: str | torch.device = "cpu", precision: str = "fp32",
                 cache_dir: str | None = None) -> torch.nn.Module:
    """Build an open_clip model from any supported source. Weights are random if none are named."""
    name = _open_clip_name(source)
    if pretrained and checkpoint:
        raise ValueError("give either a pretrained tag or a checkpoint file, not both")
    if checkpoint and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint file {checkpoint!r} does not exist")
    weights = checkpoint or pretrained
    if weights and name.startswith(("local-dir:", "hf-hub:")):
        raise ValueError(f"{source!r} carries its own weights; drop the pretrained tag / checkpoint file")
    return open_clip.create_model(name, pretrained=weights, device=device, precision=precision,
                                  output_dict=True, pretrained_text=False, cache_dir=cache_dir)


def load_model(source: str = DEFAULT_MODEL, pretrained: str | None = None, checkpoint: str | None = None,
               device: str | torch.device = "cpu", precision: str = "fp32",
               cache_dir: str | None = None) -> LoadedModel:
    """Return (model, preprocessing, tokenizer, fingerprint) for inference."""
    model = create_model(source, pretrained, checkpoint, device, precision, cache_dir).eval()
    tokenizer = tokenizer_for(source)
    preprocess = preprocess_of(model)
    fp = fingerprint_model(model, preprocess, tokenizer)
    context_length = int(getattr(tokenizer, "context_length", None) or model.context_length)
    embed_dim = _embed_dim(model, preprocess, device)
    model_id = _describe(source, pretrained, checkpoint)
    log.info("loaded model %s fingerprint=%s embed_dim=%d", model_id, fp, embed_dim)
    return LoadedModel(model, preprocess, tokenizer, fp, model_id, context_length, embed_dim)


def tokenizer_for(source: str) -> Tokenizer:
    """The tokenizer that belongs to a model source (list[str] -> int64 [B, context_length])."""
    return open_clip.get_tokenizer(_open_clip_name(source))


def preprocess_of(model: torch.nn.Module) -> PreprocessConfig:
    """The model's own image preprocessing."""
    return PreprocessConfig.from_open_clip(open_clip.get_model_preprocess_cfg(model))


def _embed_dim(model: torch.nn.Module, preprocess: PreprocessConfig, device: Any) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    with torch.no_grad():  # fall back on asking the image tower
        dtype = next(model.parameters()).dtype
        x = torch.zeros(1, 3, preprocess.height, preprocess.width, device=device, dtype=dtype)
        return int(model.encode_image(x).shape[-1])


def model_config(source: str) -> dict[str, Any]:
    """The open_clip architecture config (embed_dim, vision_cfg, text_cfg) of a name or checkpoint dir."""
    if is_checkpoint_dir(source):
        import json

        return json.loads((Path(source) / CONFIG_FILE).read_text())["model_cfg"]
    cfg = open_clip.get_model_config(source)
    if cfg is None:
        raise ValueError(f"no architecture config for {source!r}")
    return cfg
