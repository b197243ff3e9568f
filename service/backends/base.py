"""What the server needs from any backend."""

from __future__ import annotations

import re
import threading
import weakref
from abc import ABC
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from models.preprocess import PreprocessConfig
from models.tokenizer import ClipTokenizer, exact_equivalent
from models.zeroshot import Activation

if TYPE_CHECKING:
    from export.runtime.base import Towers

CHARS_PER_TOKEN = 16  # text beyond context_length x this many characters rarely reaches the context window
MAX_RUN = 100  # CLIP's BPE is quadratic in the length of one word: a 30,000-letter "word" takes ~20 s alone
_LONG_RUN = re.compile(r"([^\W\d_]{%d})[^\W\d_]+|((?:[^\w\s]|_){%d})(?:[^\w\s]|_)+" % (MAX_RUN, MAX_RUN))
_EXACT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a model's tokenizer -> ClipTokenizer | None
_EXACT_LOCK = threading.Lock()


def exact_tokenizer(tokenizer: Any) -> ClipTokenizer | None:
    """open_clip's SimpleTokenizer (the bundled model's, ViT-B-32's, ...) reproduced with bounded work per text
    (models/tokenizer.py), built once per tokenizer; None for other tokenizers, which keep clip_text's cut. An
    export's own ClipTokenizer (read from its vocabulary file) is that already."""
    if isinstance(tokenizer, ClipTokenizer):
        return tokenizer
    with _EXACT_LOCK:
        try:
            return _EXACT[tokenizer]
        except KeyError:
            exact = _EXACT[tokenizer] = exact_equivalent(tokenizer)
            return exact
        except TypeError:  # not weak-referenceable (a bound method, a builtin): not open_clip's tokenizer
            return None


def clip_text(text: str, context_length: int) -> str:
    """For tokenizers other than open_clip's SimpleTokenizer (which models.tokenizer reproduces exactly with
    bounded work): keep the first context_length x 16 characters and cut runs of letters or of symbols to 100
    characters. Ordinary text is unchanged; over-long input is truncated (inexactly), never an error, never slow."""
    text = text[:context_length * CHARS_PER_TOKEN]
    return _LONG_RUN.sub(lambda m: m.group(1) or m.group(2), text)


class Backend(ABC):
    """Encoders (a towers runtime, export/runtime) plus everything needed to feed them and to label their output."""

    name: str  # "torch" | "onnx" | "tensorrt"
    device: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "fp16"
    model_id: str
    fingerprint: str
    embed_dim: int
    context_length: int
    logit_scale: float  # exp(learned temperature)
    logit_bias: float | None = None  # sigmoid-loss models (SigLIP) only: their label scores are sigmoids
    preprocess: PreprocessConfig
    tokenizer: Callable[..., Any]  # list[str] -> int64 [B, context_length]
    towers: "Towers"  # what encodes: eager torch, ONNX Runtime or TensorRT (export.runtime.base.Towers)
    # time the encoders at warm-up to choose max batch sizes (service/batch_probe.py); test doubles leave it off
    measure_batches: bool = False
    recorded_max_batch: dict[str, int] = {}  # tower -> max batch an export recorded for this host (no probe then)
    recorded_partial: set[str] = set()  # towers whose recorded max batch is from a probe its time budget cut short

    @property
    def max_batch(self) -> int | None:
        """A hard limit of the engine (TensorRT profile), if any."""
        towers = getattr(self, "towers", None)
        return towers.max_batch if towers is not None else None

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [B, 3, H, W] -> L2-normalised float32 [B, D]."""
        return self.towers.encode_image(pixels)

    # uint8 [B, H, W, 3] -> L2-normalised float32 [B, D], normalising on the backend's own device; None = the engine
    # process normalises on the CPU and calls encode_image (service/engine_server.py pixel_encoder)
    encode_pixels: Callable[[np.ndarray], np.ndarray] | None = None

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """int64 [B, context_length] -> L2-normalised float32 [B, D]."""
        return self.towers.encode_text(tokens)

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """Texts -> int64 [B, context_length]; over-long texts are truncated, never an error."""
        exact = exact_tokenizer(self.tokenizer)
        if exact is not None:  # open_clip's ids exactly, whatever the length
            return exact(texts)
        return np.asarray(self.tokenizer([clip_text(t, self.context_length) for t in texts]), dtype=np.int64)

    @property
    def activation(self) -> Activation:
        """How this model's cosines become label probabilities: softmax, or sigmoid with its bias
        (models/zeroshot.py)."""
        return Activation(self.logit_scale, self.logit_bias)

    def warmup(self, image_batch: int, text_batch: int) -> None:
        """Run both encoders once at the largest batch sizes, so the first request pays nothing extra; a size of 0
        skips that tower (the batch probe already ran it at that size)."""
        h, w = self.preprocess.size
        if image_batch:
            self.encode_image(np.zeros((image_batch, 3, h, w), dtype=np.float32))
        if text_batch:
            self.encode_text(self.tokenize(["warm up"] * text_batch))

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_id, "fingerprint": self.fingerprint, "dimensions": self.embed_dim,
                "backend": self.name, "device": self.device, "precision": self.precision,
                "context_length": self.context_length, **self.activation.to_dict(),
                "image_size": list(self.preprocess.size), "preprocess": self.preprocess.to_dict()}
