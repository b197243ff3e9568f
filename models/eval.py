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

import torch

from models.data.shapes import ShapesConfig, all_pairs, class_label, generate
from models.factory import LoadedModel, load_model
from models.preprocess import PreprocessConfig, eval_transform
from models.zeroshot import zero_shot_weights

EVAL_TEMPLATES = (
    "a photo of a {}.", "a {}.", "a drawing of a {}.", "a picture of a {}.", "there is a {}.",
    "a rendering of a {}.", "an image showing a {}.", "this is a {}.",
)
EVAL_SEED = 1234  # training uses other seeds; the "heldout"/"seen" splits are separate random streams anyway


class NumpyTowers:
    """An export's encoders (numpy in, L2-normalised float32 [B, D] out) seen as the two methods evaluation calls
    on an open_clip model, so both are evaluated by the same code. `encoders` is export.runtime.Encoders."""

    def __init__(self, encoders: Any) -> None:
        self.encoders = encoders

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return torch.from_numpy(self.encoders.encode_image(pixels.cpu().numpy()))  # already L2-normalised

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return torch.from_numpy(self.encoders.encode_text(tokens.cpu().numpy()))


@torch.no_grad()
def split_accuracy(loaded: LoadedModel, weights: torch.Tensor, split: str, n: int, seed: int,
                   batch_size: int = 256) -> float:
    """Top-1 accuracy over n single-object images of a split, classified among all pairs."""
    return _split_accuracy(loaded.model.encode_image, loaded.preprocess, weights, split, n, seed, batch_size)


def _split_accuracy(encode_image: Callable[..., torch.Tensor], preprocess: PreprocessConfig, weights: torch.Tensor,
                    split: str, n: int, seed: int, batch_size: int = 256) -> float:
    labels = [class_label(c, s) for c, s in all_pairs()]
    transform = eval_transform(preprocess)
    samples = list(generate(seed, n, split, ShapesConfig(image_size=preprocess.height)))  # type: ignore[arg-type]
    correct = 0
    device = weights.device
    for i in range(0, n, batch_size):
        chunk = samples[i:i + batch_size]
        x = torch.stack([transform(s.image) for s in chunk]).to(device)  # [B, 3, H, W]
        feats = encode_image(x, normalize=True)  # [B, D]
        pred = (feats @ weights).argmax(dim=-1).tolist()
        truth = [labels.index(class_label(s.objects[0].colour, s.objects[0].shape)) for s in chunk]
        correct += sum(int(p == t) for p, t in zip(pred, truth))
    return correct / n


def evaluate(loaded: LoadedModel, n_heldout: int = 1200, n_seen: int = 1040, seed: int = EVAL_SEED,
             templates: Sequence[str] = EVAL_TEMPLATES) -> dict:
    """Held-out and seen top-1 among all colour x shape labels, with template ensembling."""
    device = next(loaded.model.parameters()).device
    was_training = loaded.model.training
    loaded.model.eval()
    try:
        return evaluate_towers(loaded.model, loaded.tokenizer, loaded.preprocess, n_heldout, n_seen, seed, templates,
                               device)
    finally:
        loaded.model.train(was_training)


@torch.no_grad()
def evaluate_towers(model: Any, tokenizer: Callable, preprocess: PreprocessConfig, n_heldout: int = 1200,
                    n_seen: int = 1040, seed: int = EVAL_SEED, templates: Sequence[str] = EVAL_TEMPLATES,
                    device: str | torch.device = "cpu") -> dict:
    """`evaluate` for anything with open_clip's encode_image / encode_text (a model, or NumpyTowers)."""
    labels = [class_label(c, s) for c, s in all_pairs()]
    weights = zero_shot_weights(model, tokenizer, labels, templates, device)
    accuracy = {split: _split_accuracy(model.encode_image, preprocess, weights, split, n, seed)
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


def evaluate_export(export_dir: str, n_heldout: int = 1200, n_seen: int = 1040, seed: int = EVAL_SEED) -> dict:
    """`evaluate` of an export directory through ONNX Runtime on CPU, labelled with its manifest."""
    from export.runtime import load_encoders  # only here: models needs no runtime to evaluate a checkpoint

    enc = load_encoders(export_dir, backend="onnx", device="cpu")
    m = enc.manifest
    result = evaluate_towers(NumpyTowers(enc), enc.tokenizer(), m.preprocess_config, n_heldout, n_seen, seed)
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
