"""Zero-shot evaluation on the procedural shapes: held-out (never trained on) and seen colour x shape pairs.

    python -m models.eval --checkpoint models/checkpoints/shapes-rn-s
    python -m models.eval --checkpoint models/checkpoints/shapes-rn-s --export exports/shapes-rn-s-int8
prints one JSON line per model evaluated (the checkpoint in eager PyTorch, then each export directory through
ONNX Runtime): heldout_top1, seen_top1, n_classes, n_images, ...
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

import numpy as np
import torch

from models.data.shapes import ShapesConfig, all_pairs, class_label, generate
from models.factory import LoadedModel, load_model
from models.preprocess import PreprocessConfig, eval_pixels
from models.prompts import label_prompts, prototypes
from models.zeroshot import Activation, label_scores

EVAL_TEMPLATES = (
    "a photo of a {}.", "a {}.", "a drawing of a {}.", "a picture of a {}.", "there is a {}.",
    "a rendering of a {}.", "an image showing a {}.", "this is a {}.",
)
EVAL_SEED = 1234  # training uses other seeds; the "heldout"/"seen" splits are separate random streams anyway


def evaluate(loaded: LoadedModel, n_heldout: int = 1200, n_seen: int = 1040, seed: int = EVAL_SEED,
             templates: Sequence[str] = EVAL_TEMPLATES) -> dict:
    """Held-out and seen top-1 among all colour x shape labels, with template ensembling (eager PyTorch)."""
    from export.runtime.eager import TorchTowers  # the one "model: numpy in, numpy out" (export/runtime)

    was_training = loaded.model.training
    loaded.model.eval()
    try:
        return evaluate_towers(TorchTowers(loaded), loaded.tokenizer, loaded.preprocess, n_heldout, n_seen, seed,
                               templates, activation=loaded.activation)
    finally:
        loaded.model.train(was_training)


def evaluate_towers(towers: Any, tokenizer: Callable, preprocess: PreprocessConfig, n_heldout: int = 1200,
                    n_seen: int = 1040, seed: int = EVAL_SEED, templates: Sequence[str] = EVAL_TEMPLATES,
                    *, activation: Activation) -> dict:
    """`evaluate` for any runtime's towers (export.runtime.base.Towers: numpy in, L2-normalised numpy out); each
    image's prediction is its most probable label under the model's `activation`, as /classify ranks them."""
    labels = [class_label(c, s) for c, s in all_pairs()]
    tokens = np.asarray(tokenizer(label_prompts(labels, templates)), dtype=np.int64)  # [C * T, L]
    classes = prototypes(towers.encode_text(tokens), len(labels))  # [C, D]
    accuracy = {split: _split_accuracy(towers.encode_image, preprocess, classes, activation, split, n, seed)
                for split, n in (("heldout", n_heldout), ("seen", n_seen))}
    return {
        "heldout_top1": round(accuracy["heldout"], 4),
        "seen_top1": round(accuracy["seen"], 4),
        "n_classes": len(labels),
        "n_images": n_heldout + n_seen,
        "n_heldout_images": n_heldout,
        "n_seen_images": n_seen,
        "n_templates": len(templates),
        "seed": seed,
    }


def _split_accuracy(encode_image: Callable[[np.ndarray], np.ndarray], preprocess: PreprocessConfig,
                    classes: np.ndarray, activation: Activation, split: str, n: int, seed: int,
                    batch_size: int = 256) -> float:
    """Top-1 accuracy over n single-object images of a split, classified among all pairs ([C, D] prototypes)."""
    labels = [class_label(c, s) for c, s in all_pairs()]
    samples = list(generate(seed, n, split, ShapesConfig(image_size=preprocess.height)))  # type: ignore[arg-type]
    correct = 0
    for i in range(0, n, batch_size):
        chunk = samples[i:i + batch_size]
        x = np.stack([eval_pixels(s.image, preprocess) for s in chunk])  # [B, 3, H, W]
        pred = label_scores(encode_image(x), classes, activation).argmax(axis=-1).tolist()  # [B, C]
        truth = [labels.index(class_label(s.objects[0].colour, s.objects[0].shape)) for s in chunk]
        correct += sum(int(p == t) for p, t in zip(pred, truth))
    return correct / n


def evaluate_export(export_dir: str, n_heldout: int = 1200, n_seen: int = 1040, seed: int = EVAL_SEED) -> dict:
    """`evaluate` of an export directory through ONNX Runtime on CPU, labelled with its manifest."""
    from export.runtime import load_encoders  # only here: models needs no runtime to evaluate a checkpoint

    enc = load_encoders(export_dir, backend="onnx", device="cpu")
    m = enc.manifest
    result = evaluate_towers(enc, enc.tokenizer(), m.preprocess_config, n_heldout, n_seen, seed,
                             activation=m.activation)
    return {"model": m.model_id, "fingerprint": m.fingerprint, "export": str(export_dir), "precision": m.precision,
            "backend": "onnx", **result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint directory (e.g. models/checkpoints/shapes-rn-s)")
    p.add_argument("--export", action="append", default=[], metavar="DIR",
                   help="export directory (python -m export onnx ...), run by ONNX Runtime on CPU; repeatable")
    p.add_argument("--n-heldout", type=int, default=1200, help="images of held-out pairs")
    p.add_argument("--n-seen", type=int, default=1040, help="images of seen pairs")
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    args = p.parse_args(argv)
    if not args.checkpoint and not args.export:
        p.error("give --checkpoint, --export, or both")
    torch.manual_seed(0)
    if args.checkpoint:
        loaded = load_model(args.checkpoint)
        result = {"model": loaded.model_id, "fingerprint": loaded.fingerprint,
                  **evaluate(loaded, args.n_heldout, args.n_seen, args.seed)}
        print(json.dumps(result), flush=True)
    for export_dir in args.export:
        print(json.dumps(evaluate_export(export_dir, args.n_heldout, args.n_seen, args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
