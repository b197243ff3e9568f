"""The model card (README.md) written beside a trained checkpoint."""

from __future__ import annotations

import json
import platform
import shlex
from pathlib import Path

import torch

from models.data.shapes import COLOURS, HELDOUT_PAIRS, SHAPES


def write_card(out: Path, cfg: dict, argv: list[str] | None, wall_s: float, n_params: int, result: dict,
               fingerprint: str) -> Path:
    """Write README.md (human) and card.json (machine) into the checkpoint directory."""
    command = shlex.join(argv) if argv else "(called from Python)"
    heldout = ", ".join(f"{c} {s}" for c, s in sorted(HELDOUT_PAIRS))
    weights = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    facts = {"command": command, "seed": cfg["seed"], "wall_time_s": round(wall_s, 1), "parameters": n_params,
             "weights_bytes": weights, "fingerprint": fingerprint, "machine": _machine(), **result}
    (out / "card.json").write_text(json.dumps(facts, indent=2) + "\n")
    text = f"""# {out.name}

A small CLIP (ViT image tower, transformer text tower, open_clip architecture `{cfg['model']}`) trained from
scratch by this repository's own code on procedurally rendered shapes. It is the server's default model so that
everything works offline; it knows {len(COLOURS)} colours x {len(SHAPES)} shapes and nothing else.

## How it was trained
```
{command}
```
- seed: {cfg['seed']}; steps: {cfg['steps']}; batch: {cfg['batch_size']}; peak lr: {cfg['lr']}; warm-up: {cfg['warmup']}
- wall time: {wall_s / 60:.1f} min on {facts['machine']}
- parameters: {n_params:,}; weights file: {weights / 1e6:.1f} MB (fp32 safetensors)
- fingerprint: `{fingerprint}`

## Zero-shot results (`python -m models.eval --checkpoint {out.as_posix()}`)
| metric | value |
| --- | --- |
| heldout_top1 (pairs never seen in training) | {result['heldout_top1']:.4f} |
| seen_top1 | {result['seen_top1']:.4f} |
| classes (colour x shape labels) | {result['n_classes']} |
| images | {result['n_images']} ({result['n_heldout_images']} held-out, {result['n_seen_images']} seen) |

Each image holds one object and is classified among all {result['n_classes']} "colour shape" labels, with the
paper's prompt ensembling over {result['n_templates']} templates.

Held-out pairs (never drawn or named in training): {heldout}.

![training curve](curve.png)

## Limits
Trained only on flat synthetic shapes: on photographs its embeddings are meaningless. Use a real open_clip
model (e.g. `CLIP_MODEL=ViT-B-32 CLIP_PRETRAINED=laion2b_s34b_b79k`) for real images.
"""
    (out / "README.md").write_text(text)
    return out / "README.md"


def _machine() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
