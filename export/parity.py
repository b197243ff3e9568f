"""Parity: exported graphs against eager PyTorch on real photos, the shapes evaluation images and varied texts.

Checks, per export, with bounds that depend on the graphs' precision:
- cosine(exported, eager fp32) of every image and text embedding >= MIN_COSINE (0.99999 fp32, 0.999 fp16,
  0.99 int8), and its mean per tower >= MEAN_COSINE (0.995 int8; fp32 and fp16 are held by the minimum);
- zero-shot argmax (all colour x shape labels, the evaluation templates; class prototypes built from each
  side's own text tower) agrees on at least MIN_AGREEMENT of the shapes evaluation images the eager model has
  *decided* (all of them in fp32 and fp16, 98% in int8): its top-1 probability (softmax of logit_scale x
  cosine) beats the runner-up by at least DECIDED_MARGIN. Near-ties may flip under rounding without anything
  being wrong (a random-weight model is all near-ties); they are counted and reported, and the test suite
  requires full agreement on the bundled model in fp32 and fp16.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from export.errors import ParityError
from export.runtime.base import Towers
from export.runtime.eager import TorchTowers
from models.data.shapes import ShapesConfig, all_pairs, class_label, generate
from models.eval import EVAL_SEED, EVAL_TEMPLATES
from models.factory import LoadedModel
from models.preprocess import PreprocessConfig, eval_pixels
from models.prompts import label_prompts, prototypes
from models.zeroshot import Activation

log = logging.getLogger(__name__)

MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99}  # every image and every text
MEAN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.995}  # per tower
MIN_AGREEMENT = {"fp32": 1.0, "fp16": 1.0, "int8": 0.98}  # zero-shot argmax, over the images eager decided
DECIDED_MARGIN = 0.01  # top-1 minus top-2 probability above which an eager zero-shot decision must be kept
PHOTO_DIR = Path(__file__).parent / "parity_images"
BATCH = 64

PARITY_TEXTS: tuple[str, ...] = (
    "a photo of a cat",
    "an astronaut in a white suit in front of a flag",
    "a cup of coffee on a saucer",
    "a rocket lifting off",
    "a red circle on the left and a blue square on the right",
    "",  # empty: only start and end tokens
    " ",
    "日本語のテキスト：猫の写真",
    "Ünïcödé façade — naïve café ☕ 🚀 🐱",
    "1234567890 !!! ??? ... ### $$$",
    "A RED CIRCLE",
    "<b>bold</b> &amp; <i>tags</i>",
    "line one\nline two\tand a tab",
    " ".join(["a very long caption that keeps going well past the context length"] * 20),  # truncated
)


@dataclass
class ParityReport:
    """Worst-case agreement of one export with eager PyTorch."""

    precision: str
    min_cosine_required: float
    image_min_cosine: float
    text_min_cosine: float
    zero_shot_agreement: float  # fraction of shapes images whose zero-shot argmax matches eager
    zero_shot_decided: int  # shapes images where eager's top-1 beats top-2 by >= DECIDED_MARGIN probability
    zero_shot_decided_flips: int  # of those, how many the export classifies differently
    n_photos: int
    n_shape_images: int
    n_texts: int
    eager_zero_shot_top1: float  # accuracy against the true label, for context
    exported_zero_shot_top1: float
    mean_cosine_required: float = 0.0
    image_mean_cosine: float = 1.0
    text_mean_cosine: float = 1.0
    min_agreement_required: float = 1.0  # of the decided images
    failures: list[str] = field(default_factory=list)

    @property
    def zero_shot_decided_agreement(self) -> float:
        """Fraction of the decided images the export classifies as eager does (1.0 when none is decided)."""
        return 1.0 - self.zero_shot_decided_flips / self.zero_shot_decided if self.zero_shot_decided else 1.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "zero_shot_decided_agreement": self.zero_shot_decided_agreement,
                "passed": self.passed}

    def table(self) -> str:
        """A short human-readable table."""
        rows = [("precision", self.precision),
                ("required cosine", f"min {self.min_cosine_required}, mean {self.mean_cosine_required}"),
                ("image min cosine", f"{self.image_min_cosine:.9f} (mean {self.image_mean_cosine:.9f})"),
                ("text min cosine", f"{self.text_min_cosine:.9f} (mean {self.text_mean_cosine:.9f})"),
                ("zero-shot argmax agreement", f"{self.zero_shot_agreement:.4f} of all; "
                                               f"{self.zero_shot_decided_agreement:.4f} of the decided images "
                                               f"({self.zero_shot_decided_flips} flips of {self.zero_shot_decided}; "
                                               f"required {self.min_agreement_required})"),
                ("zero-shot top-1 eager / exported",
                 f"{self.eager_zero_shot_top1:.4f} / {self.exported_zero_shot_top1:.4f}"),
                ("inputs", f"{self.n_photos} photos, {self.n_shape_images} shapes images, {self.n_texts} texts"),
                ("result", "PASS" if self.passed else "FAIL: " + "; ".join(self.failures))]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@dataclass
class ParityInputs:
    """What both sides are fed."""

    photos: np.ndarray  # [P, 3, H, W] float32, preprocessed
    shapes: np.ndarray  # [S, 3, H, W] float32, preprocessed
    shape_labels: list[int]  # [S] index into labels
    texts: np.ndarray  # [T, L] int64: PARITY_TEXTS
    prompts: np.ndarray  # [C * K, L] int64: every label under every template, label-major
    n_labels: int


def parity_inputs(loaded: LoadedModel, n_shapes: int = 64, templates: Sequence[str] = EVAL_TEMPLATES
                  ) -> ParityInputs:
    """Photos from export/parity_images, shapes evaluation images (half held-out, half seen), texts, prompts."""
    pre = loaded.preprocess
    labels = [class_label(c, s) for c, s in all_pairs()]
    shapes, truth = shape_images(pre, n_shapes, labels)
    tokenize = loaded.tokenizer
    return ParityInputs(photos=photo_pixels(pre), shapes=shapes, shape_labels=truth,
                        texts=np.asarray(tokenize(list(PARITY_TEXTS)), dtype=np.int64),
                        prompts=np.asarray(tokenize(label_prompts(labels, templates)), dtype=np.int64),
                        n_labels=len(labels))


def photo_pixels(pre: PreprocessConfig) -> np.ndarray:
    """[P, 3, H, W] the bundled photos through the model's eval preprocessing."""
    paths = sorted(PHOTO_DIR.glob("*.jpg"))
    if not paths:
        raise ParityError(f"no parity photos in {PHOTO_DIR}: the package is incomplete; reinstall clip-serve.")
    return np.stack([eval_pixels(Image.open(p).convert("RGB"), pre) for p in paths])


def shape_images(pre: PreprocessConfig, n: int, labels: list[str]) -> tuple[np.ndarray, list[int]]:
    """[S, 3, H, W] shapes evaluation images (the models.eval seed) and their true label indices."""
    cfg = ShapesConfig(image_size=pre.height)  # type: ignore[call-arg]
    samples = list(generate(EVAL_SEED, n - n // 2, "heldout", cfg)) + list(generate(EVAL_SEED, n // 2, "seen", cfg))
    pixels = np.stack([eval_pixels(s.image, pre) for s in samples])
    truth = [labels.index(class_label(s.objects[0].colour, s.objects[0].shape)) for s in samples]
    return pixels, truth


def embeddings(towers: Towers, x: np.ndarray, tower: str) -> np.ndarray:
    """[N, ...] -> float32 [N, D] from any runtime (export.runtime.base.Towers), in batches of BATCH."""
    encode = towers.encode_image if tower == "image" else towers.encode_text
    return np.concatenate([encode(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])


def decision_margin(cosines: np.ndarray, logit_scale: float) -> np.ndarray:
    """[S, C] cosines -> [S] top-1 minus top-2 zero-shot probability (softmax of logit_scale x cosine).

    Softmax whatever the model's own activation: the margin measures how clearly one label wins against the others,
    which is what a rounding error can flip (a sigmoid model's probabilities are each label's own)."""
    p = Activation(logit_scale).probabilities(cosines.astype(np.float64))  # [S, C]
    top2 = np.sort(p, axis=-1)[:, -2:]  # [S, 2] ascending
    return top2[:, 1] - top2[:, 0]


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, D], [N, D] -> [N] cosine similarity per row (in float64, so the check does not add its own error)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def check_parity(loaded: LoadedModel, encoders: Towers, precision: str, n_shapes: int = 64,
                 templates: Sequence[str] = EVAL_TEMPLATES) -> ParityReport:
    """Compare an export's towers (or any runtime's) with the eager fp32 model they came from."""
    inputs = parity_inputs(loaded, n_shapes, templates)
    eager = TorchTowers(loaded)
    images = np.concatenate([inputs.photos, inputs.shapes])  # [P + S, 3, H, W]
    texts = np.concatenate([inputs.texts, inputs.prompts])  # [T + C * K, L]
    img_e, img_x = embeddings(eager, images, "image"), embeddings(encoders, images, "image")
    txt_e, txt_x = embeddings(eager, texts, "text"), embeddings(encoders, texts, "text")
    n_photos, n_texts = len(inputs.photos), len(inputs.texts)
    cos_e = img_e[n_photos:] @ prototypes(txt_e[n_texts:], inputs.n_labels).T  # [S, C]
    pred_e = cos_e.argmax(-1)
    pred_x = (img_x[n_photos:] @ prototypes(txt_x[n_texts:], inputs.n_labels).T).argmax(-1)
    decided = decision_margin(cos_e, loaded.logit_scale) >= DECIDED_MARGIN  # [S] bool
    truth = np.asarray(inputs.shape_labels)
    img_cos, txt_cos = row_cosine(img_e, img_x), row_cosine(txt_e, txt_x)
    report = ParityReport(
        precision=precision, min_cosine_required=MIN_COSINE[precision],
        image_min_cosine=float(img_cos.min()), text_min_cosine=float(txt_cos.min()),
        zero_shot_agreement=float((pred_e == pred_x).mean()), zero_shot_decided=int(decided.sum()),
        zero_shot_decided_flips=int((decided & (pred_e != pred_x)).sum()), n_photos=n_photos,
        n_shape_images=len(truth), n_texts=len(texts), eager_zero_shot_top1=float((pred_e == truth).mean()),
        exported_zero_shot_top1=float((pred_x == truth).mean()), mean_cosine_required=MEAN_COSINE[precision],
        image_mean_cosine=float(img_cos.mean()), text_mean_cosine=float(txt_cos.mean()),
        min_agreement_required=MIN_AGREEMENT[precision])
    report.failures = _failures(report)
    return report


def _failures(r: ParityReport) -> list[str]:
    out = []
    for tower, low, mean in (("image", r.image_min_cosine, r.image_mean_cosine),
                             ("text", r.text_min_cosine, r.text_mean_cosine)):
        if not low >= r.min_cosine_required:  # `not >=` also catches NaN
            out.append(f"{tower} min cosine {low:.7f} < {r.min_cosine_required}")
        if not mean >= r.mean_cosine_required:
            out.append(f"{tower} mean cosine {mean:.7f} < {r.mean_cosine_required}")
    if not r.zero_shot_decided_agreement >= r.min_agreement_required:
        out.append(f"zero-shot argmax differs on {r.zero_shot_decided_flips} of the {r.zero_shot_decided} shapes "
                   f"images eager PyTorch classifies with a clear margin (agreement "
                   f"{r.zero_shot_decided_agreement:.4f} < {r.min_agreement_required})")
    return out


def require_parity(report: ParityReport, where: str) -> None:
    """Raise ParityError with the full table when the report failed."""
    log.info("parity of %s:\n%s", where, report.table())
    if not report.passed:
        raise ParityError(f"exported graphs in {where} do not match eager PyTorch:\n{report.table()}\n"
                          f"Do not serve this export. {_remedy(report.precision)}; details: "
                          f"{json.dumps(report.to_dict())}")


def _remedy(precision: str) -> str:
    if precision == "int8":
        return ("Keep the layers that lose accuracy in fp32 (--int8-keep-fp32 '/visual/transformer/resblocks.0/'), "
                "try another --int8-recipe, or export fp32 (--precision fp32)")
    return "Try fp32 (--precision fp32), another --opset, or report the model"
