"""The image preprocessing a model expects, as plain typed data (also written into export manifests)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD


@dataclass(frozen=True)
class PreprocessConfig:
    """open_clip's eval transform: resize (shortest side, bicubic), centre crop, RGB, mean/std."""

    size: tuple[int, int] = (224, 224)  # (height, width) fed to the image tower
    mean: tuple[float, float, float] = field(default=OPENAI_DATASET_MEAN)
    std: tuple[float, float, float] = field(default=OPENAI_DATASET_STD)
    interpolation: str = "bicubic"  # "bicubic" | "bilinear" | "nearest"
    resize_mode: str = "shortest"  # "shortest" (resize + centre crop) | "longest" (pad) | "squash"
    fill_color: int = 0  # padding value for resize_mode="longest"

    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> "PreprocessConfig":
        size = cfg.get("size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        return cls(size=size, mean=tuple(cfg.get("mean", OPENAI_DATASET_MEAN)),
                   std=tuple(cfg.get("std", OPENAI_DATASET_STD)),
                   interpolation=cfg.get("interpolation", "bicubic"),
                   resize_mode=cfg.get("resize_mode", "shortest"), fill_color=int(cfg.get("fill_color", 0)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def to_open_clip(self) -> dict[str, Any]:
        """The dict open_clip keeps in open_clip_config.json's preprocess_cfg."""
        d = self.to_dict()
        d["size"] = self.size[0] if self.size[0] == self.size[1] else list(self.size)
        return d


def eval_transform(pre: PreprocessConfig):
    """open_clip's own inference transform for this config (PIL image -> float tensor [3, H, W])."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(size=pre.size, mean=pre.mean, std=pre.std, interpolation=pre.interpolation,
                        resize_mode=pre.resize_mode, fill_color=pre.fill_color)
    return image_transform_v2(cfg, is_train=False)
