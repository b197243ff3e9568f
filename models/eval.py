"""Zero-shot evaluation on the procedural shapes: held-out (never trained on) and seen colour x shape pairs.

    python -m models.eval --checkpoint models/checkpoints/shapes-rn-s
prints one JSON line: heldout_top1, seen_top1, n_classes, n_images, ...
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import torch

from models.data.shapes import ShapesConfig, all_pairs, class_label, generate
from models.factory import LoadedModel, load_model
from models.preprocess import eval_transform
from models.zeroshot import zero_shot_weights

EVAL_TEMPLATES = (
    "a photo of a {}.", "a {}.", "a drawing of a {}.", "a picture of a {}.", "there is a {}.",
    "a rendering of a {}.", "an image showing a {}.", "this is a {}.",
)
EVAL_SEED = 1234  # training uses other seeds; the "heldout"/"seen" splits are separate random streams anyway


@torch.no_grad()
def split_accuracy(loaded: LoadedModel, weights: torch.Tensor, split: str, n: int, seed: int,
                   batch_size: int = 256) -> float:
    """Top-1 accuracy over n single-object images of a split, classified among all pairs."""
    labels = [class_label(c, s) for c, s in all_pairs()]
    size = loaded.preprocess.height
    transform = eval_transform(loaded.preprocess)
    samples = list(generate(seed, n, split, ShapesConfig(image_size=size)))  # type: ignore[arg-type]
    correct = 0
    device = weights.device
    for i in range(0, n, batch_size):
        chunk = samples[i:i + batch_size]
        x = torch.stack([transform(s.image) for s in chunk]).to(device)  # [B, 3, H, W]
        feats = loaded.model.encode_image(x, normalize=True)  # [B, D]
        pred = (feats @ weights).argmax(dim=-1).tolist()
        truth = [labels.index(class_label(s.objects[0].colour, s.objects[0].shape)) for s in chunk]
        correct += sum(int(p == t) for p, t in zip(pred, truth))
    return correct / n


def evaluate(loaded: LoadedModel, n_heldout: int = 1200, n_seen: int = 1040, seed: int = EVAL_SEED,
             templates: Sequence[str] = EVAL_TEMPLATES) -> dict:
    """Held-out and seen top-1 among all colour x shape labels, with template ensembling."""
    labels = [class_label(c, s) for c, s in all_pairs()]
    device = next(loaded.model.parameters()).device
    was_training = loaded.model.training
    loaded.model.eval()
    weights = zero_shot_weights(loaded.model, loaded.tokenizer, labels, templates, device)
    result = {
        "heldout_top1": round(split_accuracy(loaded, weights, "heldout", n_heldout, seed), 4),
        "seen_top1": round(split_accuracy(loaded, weights, "seen", n_seen, seed), 4),
        "n_classes": len(labels),
        "n_images": n_heldout + n_seen,
        "n_heldout_images": n_heldout,
        "n_seen_images": n_seen,
        "n_templates": len(templates),
        "seed": seed,
    }
    loaded.model.train(was_training)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. models/checkpoints/shapes-rn-s)")
    p.add_argument("--n-heldout", type=int, default=1200, help="images of held-out pairs")
    p.add_argument("--n-seen", type=int, default=1040, help="images of seen pairs")
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    loaded = load_model(args.checkpoint)
    result = {"model": loaded.model_id, "fingerprint": loaded.fingerprint,
              **evaluate(loaded, args.n_heldout, args.n_seen, args.seed)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
