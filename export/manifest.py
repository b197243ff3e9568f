"""manifest.json: everything needed to serve an export directory without the source model.

The manifest says which model the graphs came from (model id, fingerprint, how to rebuild it for checks),
how to feed them (preprocessing, tokenizer, context length), what they output (embedding size, and the logit
scale and bias that turn cosines into label probabilities), how they were made (opset, precision, tool versions)
and the sha256 of every file beside it, so a truncated copy or a swapped graph is refused at load time with a
message that says how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from export.digest_record import DigestRecord
from export.errors import ExportError
from models.preprocess import PreprocessConfig
from models.zeroshot import Activation

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_CONFIG = "open_clip_config.json"  # open_clip's config, copied in so the tokenizer needs no source model
CLIP_BPE_VOCAB = "bpe_simple_vocab_16e6.txt.gz"  # open_clip's CLIP vocabulary, copied in: tokenising needs no open_clip
KINDS = ("onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class GraphSpec:
    """One tower's graph (ONNX file or TensorRT engine) and its named input and output."""

    file: str  # relative to the export directory, e.g. "image.onnx"
    input: str  # input tensor name: "pixels" [B, 3, H, W] or "tokens" [B, L]
    output: str  # output tensor name: "embedding" [B, D], L2-normalised, float32
    input_dtype: str  # what callers pass: "float32" (pixels) or "int64" (tokens); fp16 casts happen inside
    input_shape: list[int]  # with -1 for the dynamic batch axis, e.g. [-1, 3, 224, 224] or [-1, 77]


@dataclass(frozen=True)
class SourceSpec:
    """How to rebuild the eager PyTorch model the graphs came from (for verify and bench)."""

    model: str  # models.factory source: arch name, hf-hub: id or checkpoint directory
    pretrained: str | None = None  # open_clip pretrained tag, if any
    checkpoint: str | None = None  # local state-dict file, if any


@dataclass
class Manifest:
    """The contents of manifest.json (see docs/export.md for each field)."""

    kind: str  # "onnx" (ONNX Runtime) or "tensorrt" (serialized engines for one GPU + TensorRT version)
    model_id: str  # human-readable source, e.g. "ViT-B-32/laion2b_s34b_b79k"
    fingerprint: str  # models.fingerprint of the source weights + preprocessing + tokenizer (16 hex)
    source: SourceSpec
    embed_dim: int  # D of both towers' outputs
    logit_scale: float  # exp(learned temperature); clamped at 100 for softmax models (models.factory.LoadedModel)
    preprocess: dict[str, Any]  # models.preprocess.PreprocessConfig fields: size, mean, std, interpolation, ...
    tokenizer_source: str  # models.factory.tokenizer_for source; "." = this directory's open_clip_config.json
    context_length: int  # L: token ids per text
    opset: int  # ONNX opset of the graphs (of the ONNX the engines were built from, for tensorrt)
    precision: str  # "fp32" | "fp16" | "int8": arithmetic inside the graphs; inputs and outputs stay float32/int64
    image: GraphSpec
    text: GraphSpec
    files: dict[str, str] = field(default_factory=dict)  # every file of the export (not this one) -> sha256
    parity: dict[str, Any] | None = None  # export.parity report measured when the export was made
    tensorrt: dict[str, Any] | None = None  # tensorrt exports: version, GPU, optimisation profile
    quantization: dict[str, Any] | None = None  # int8 exports: the export.quantize recipe and what it quantized
    # device -> {"host", "image": {"max_batch", "items_per_s"}, "text": ...}: knees measured by `python -m export bench
    # --record` (export/batch_knee.py); the server uses them instead of its warm-up probe on the same host
    batch_knees: dict[str, Any] | None = None
    # how to tokenise from this directory alone: {"type": "clip_bpe", "vocab": CLIP_BPE_VOCAB} (models.tokenizer,
    # no open_clip); None (other tokenizers, exports made before it existed): open_clip from tokenizer_source
    tokenizer: dict[str, Any] | None = None
    created_with: dict[str, str] = field(default_factory=dict)  # tool versions (torch, open_clip, onnx, ...)
    # the learned bias of a sigmoid-loss model (SigLIP): label probabilities are sigmoid(logit_scale x cos + bias);
    # None (CLIP, and exports made before this field existed): softmax over the labels (models/zeroshot.py)
    logit_bias: float | None = None
    format_version: int = FORMAT_VERSION

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """The image preprocessing as the typed config models.preprocess.eval_transform takes."""
        p = self.preprocess
        return PreprocessConfig(size=tuple(p["size"]), mean=tuple(p["mean"]), std=tuple(p["std"]),
                                interpolation=p["interpolation"], resize_mode=p["resize_mode"],
                                fill_color=int(p.get("fill_color", 0)))

    @property
    def activation(self) -> Activation:
        """How the model's cosines become label probabilities (models/zeroshot.py)."""
        return Activation.from_dict({"logit_scale": self.logit_scale, "logit_bias": self.logit_bias})

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the image graph takes."""
        return tuple(self.preprocess["size"])  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST_FILE) -> "Manifest":
        missing = [f.name for f in fields(cls) if f.name not in d and _is_required(f)]
        if missing:
            raise ExportError(f"{where} lacks field(s) {', '.join(missing)}: it was written by another tool or "
                              f"edited by hand; re-run `python -m export onnx` to write a complete one.")
        if d.get("format_version") != FORMAT_VERSION:
            raise ExportError(f"{where} has format_version {d.get('format_version')!r}, this code reads "
                              f"{FORMAT_VERSION}; re-export with this version of clip-serve.")
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["source"] = SourceSpec(**d["source"])
        kw["image"], kw["text"] = GraphSpec(**d["image"]), GraphSpec(**d["text"])
        m = cls(**kw)
        _check_values(m, where)
        return m


def _is_required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _check_values(m: Manifest, where: str) -> None:
    if m.kind not in KINDS:
        raise ExportError(f"{where}: kind {m.kind!r} is not one of {KINDS}")
    if m.precision not in PRECISIONS:
        raise ExportError(f"{where}: precision {m.precision!r} is not one of {PRECISIONS}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (graphs can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_files(export_dir: str | Path, names: Iterable[str]) -> dict[str, str]:
    """{name: sha256} for files of an export directory, in sorted order."""
    root = Path(export_dir)
    return {name: sha256_file(root / name) for name in sorted(names)}


def write_manifest(manifest: Manifest, export_dir: str | Path) -> Path:
    """Write manifest.json last, through a temporary file, so a crashed export never leaves a valid-looking one."""
    path = Path(export_dir) / MANIFEST_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(export_dir: str | Path, verify: bool = True, record: Path | None = None) -> Manifest:
    """Read manifest.json; with `verify`, also check every listed file exists and matches its sha256 (files that
    `record` lists as unchanged since they matched are not hashed again: export/digest_record.py)."""
    root = Path(export_dir)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise ExportError(f"export directory {str(root)!r} does not exist; create one with "
                          f"`python -m export onnx --model <name> --out {root}`.")
    if not path.is_file():
        raise ExportError(f"{str(root)!r} is not a finished export directory: {MANIFEST_FILE} is missing "
                          f"(an export that failed parity or was interrupted writes none); re-run "
                          f"`python -m export onnx --model <name> --out {root}`.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON ({e}); the file is damaged: re-export.") from e
    manifest = Manifest.from_dict(data, where=str(path))
    if verify:
        verify_files(manifest, root, record)
    return manifest


def verify_files(manifest: Manifest, export_dir: str | Path, record: Path | None = None) -> None:
    """Raise ExportError naming the first graph/engine that is missing or whose bytes changed. With `record` (a
    DigestRecord file), files unchanged since they last matched are not hashed again, and new matches are added."""
    root = Path(export_dir)
    for spec in (manifest.image, manifest.text):
        if spec.file not in manifest.files:
            raise ExportError(f"{root / MANIFEST_FILE} does not list a sha256 for {spec.file}; re-export.")
    seen = DigestRecord(record)
    for name, expected in manifest.files.items():
        path = root / name
        if not path.is_file():
            raise ExportError(f"{name} is listed in {root / MANIFEST_FILE} but missing from {root}: the export "
                              f"was copied incompletely; copy the whole directory again or re-export.")
        stat = path.stat()
        if seen.matches(name, stat, expected):
            continue
        actual = sha256_file(path)
        if actual != expected:
            raise ExportError(f"{path} is corrupted or was modified: sha256 {actual[:16]}… does not match "
                              f"{expected[:16]}… in {MANIFEST_FILE}; copy the directory again or re-export.")
        seen.remember(name, stat, expected)
    seen.save()


def tokenizer_source_path(manifest: Manifest, export_dir: str | Path) -> str:
    """The tokenizer source as models.factory.tokenizer_for takes it ("." resolves to the export directory)."""
    src = manifest.tokenizer_source
    return str(Path(export_dir).resolve()) if src == "." else src


def load_tokenizer(manifest: Manifest, export_dir: str | Path):
    """The model's tokenizer (list[str] -> int64 [B, context_length]), from the manifest alone: models.tokenizer on
    the export's own vocabulary file when it has one (no torch, no open_clip), else open_clip's (the `torch` extra)."""
    if manifest.tokenizer and manifest.tokenizer.get("type") == "clip_bpe":
        from models.tokenizer import ClipTokenizer

        return ClipTokenizer(manifest.context_length, bpe_path=Path(export_dir) / manifest.tokenizer["vocab"])
    try:
        from models.factory import tokenizer_for
    except ImportError as e:  # a lean install (the `onnx` extra): no open_clip to rebuild this tokenizer
        raise ExportError(f"{export_dir} has no tokenizer vocabulary of its own (an export made before clip-serve "
                          f"wrote one, or a tokenizer other than CLIP's BPE), and tokenising it needs open_clip, which "
                          f"is not installed ({e}): re-export with `python -m export onnx` to serve it without "
                          f"PyTorch, or install the `torch` extra (pip install 'clip-serve[torch]').") from e
    log.warning("%s has no tokenizer vocabulary of its own: open_clip builds its tokenizer from %r (re-export with "
             "`python -m export onnx` to serve it without open_clip)", export_dir, manifest.tokenizer_source)
    tok = tokenizer_for(tokenizer_source_path(manifest, export_dir))
    length = int(getattr(tok, "context_length", None) or manifest.context_length)
    if length != manifest.context_length:
        raise ExportError(f"tokenizer of {export_dir} makes {length} tokens per text but the graphs take "
                          f"{manifest.context_length}; {TOKENIZER_CONFIG} does not belong to this export.")
    return tok
