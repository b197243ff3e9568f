"""Zero-shot prompts without torch: the built-in template sets, how a template is filled, and how the embeddings of
labels x templates become one prototype per label (the paper's prompt ensembling).

numpy only, so the server, the parity check and the evaluation share it whatever runtime encodes the prompts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# The 80 ImageNet templates of Radford et al. (2021), in the order of openai/CLIP's
# notebooks/Prompt_Engineering_for_ImageNet.ipynb (open_clip ships the same list as lambdas;
# tests/service/test_templates.py checks both).
OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)
# open_clip's SIMPLE_IMAGENET_TEMPLATES: the 7-template subset of the 80 selected in the same notebook.
SIMPLE_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.", "a {} in a video game.",
    "art of the {}.", "a photo of the small {}.",
)
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {  # the names a request may give instead of its own templates
    "openai_imagenet": OPENAI_IMAGENET_TEMPLATES,
    "simple": SIMPLE_IMAGENET_TEMPLATES,
    "default": DEFAULT_TEMPLATES,
}


def fill(template: str, label: str) -> str:
    """The prompt for `label`: every "{}" replaced. replace(), not format(): labels and templates may hold other
    braces ("{} braces {x}" would make str.format raise or substitute the wrong thing)."""
    return template.replace("{}", label)


def label_prompts(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Label-major prompts [l0t0, l0t1, ..., l1t0, ...]: the order `prototypes` expects."""
    return [fill(t, label) for label in labels for t in templates]


def prototypes(prompt_embeddings: np.ndarray, n_labels: int) -> np.ndarray:
    """[C * T, D] embeddings of label-major prompts -> [C, D] float32 prototypes: per label, the mean of its
    L2-normalised template embeddings, renormalised (open_clip's build_zero_shot_classifier, transposed)."""
    emb = np.asarray(prompt_embeddings, dtype=np.float32)
    if emb.ndim != 2 or n_labels < 1 or len(emb) % n_labels:
        raise ValueError(f"prompt embeddings of shape {emb.shape} are not {n_labels} labels x T templates rows")
    emb = _normalised(emb).reshape(n_labels, len(emb) // n_labels, emb.shape[1])  # [C, T, D]
    return _normalised(emb.mean(axis=1))


def _normalised(x: np.ndarray) -> np.ndarray:
    # 1e-12 as torch's F.normalize: an all-zero row stays zero instead of becoming NaN
    return (x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)).astype(np.float32, copy=False)
