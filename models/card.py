"""The model card (README.md + card.json) written beside a trained checkpoint.

`models.train` writes it at the end of a run. To re-measure and re-render it from the shipped files (for
instance after converting the weights to fp16):
    python -m models.card --checkpoint models/checkpoints/shapes-rn-s --weights-dtype fp16
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

from models.data.shapes import AUX_COLOURS, COLOURS, HELDOUT_PAIRS, SHAPES


def write_card(out: Path, cfg: dict, argv: list[str] | None, wall_s: float, n_params: int, result: dict,
               fingerprint: str, post_commands: list[str] | None = None) -> Path:
    """Write README.md (human) and card.json (machine) into the checkpoint directory."""
    command = shlex.join(argv) if argv else "(called from Python)"
    post = post_commands or []
    weights = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    facts = {"command": command, "post_commands": post, "seed": cfg["seed"], "wall_time_s": round(wall_s, 1),
             "parameters": n_params, "weights_bytes": weights, "weights_dtype": _weights_dtype(out),
             "fingerprint": fingerprint, "machine": _machine(), "train_config": cfg, **result}
    (out / "card.json").write_text(json.dumps(facts, indent=2) + "\n")
    (out / "README.md").write_text(_render(out, cfg, facts, result))
    return out / "README.md"


def _render(out: Path, cfg: dict, facts: dict, result: dict) -> str:
    commands = "\n".join([facts["command"], *facts["post_commands"]])
    heldout = ", ".join(f"{c} {s}" for c, s in sorted(HELDOUT_PAIRS))
    post_note = ("\nThe second command converted the weights to fp16 after training (half the file; the model "
                 "loads them into fp32 parameters) and measured the results below on the shipped files.\n"
                 if facts["post_commands"] else "")
    return f"""# {out.name}

A small CLIP ({_towers(cfg['model'])}; open_clip architecture `{cfg['model']}`, config in
`models/configs/`) trained from scratch by this repository's own code on procedurally rendered shapes. It is
the server's default model so that everything works offline; it knows {len(COLOURS)} colours x {len(SHAPES)}
shapes (plus {len(AUX_COLOURS)} auxiliary training colours: {', '.join(AUX_COLOURS)}) and nothing else.

## How it was made
```
{commands}
```
{post_note}
- seed: {cfg['seed']}; steps: {cfg['steps']}; batch: {cfg['batch_size']}; peak lr: {cfg['lr']}; warm-up: {cfg['warmup']}
- training wall time: {facts['wall_time_s'] / 60:.1f} min on {facts['machine']}
- parameters: {facts['parameters']:,}; weights file: {facts['weights_bytes'] / 1e6:.1f} MB ({facts['weights_dtype']} safetensors)
- fingerprint: `{facts['fingerprint']}`

## Zero-shot results (`python -m models.eval --checkpoint {out.as_posix()}`)
| metric | value |
| --- | --- |
| heldout_top1 (colour x shape pairs never seen in training) | {result['heldout_top1']:.4f} |
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


def _weights_dtype(out: Path) -> str:
    from safetensors import safe_open

    files = sorted(out.glob("*.safetensors"))
    if not files:
        return "none"
    with safe_open(str(files[0]), "pt") as f:
        key = next(k for k in f.keys() if f.get_slice(k).get_dtype().startswith(("F", "BF")))
        return {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}.get(f.get_slice(key).get_dtype(), "?")


def _towers(arch: str) -> str:
    """A one-line description of an architecture's towers, read from its config."""
    from models.factory import model_config

    try:
        cfg = model_config(arch)
    except ValueError:
        return "open_clip towers"
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    if isinstance(v.get("layers"), list):
        image = f"ModifiedResNet image tower (layers {v['layers']}, width {v['width']})"
    else:
        image = f"ViT image tower ({v['layers']} layers x {v['width']}, patch {v.get('patch_size')})"
    text = f"{t['layers']}-layer x {t['width']} transformer text tower"
    return f"{image}, {text}, {v['image_size']}-px images, {cfg['embed_dim']}-d embeddings"


def _machine() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _train_config(out: Path, facts: dict) -> dict:
    """The TrainConfig of the run: from card.json, else the config line of train_log.jsonl."""
    if "train_config" in facts:
        return facts["train_config"]
    for line in (out / "train_log.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("event") == "config":
            return {k: v for k, v in row.items() if k not in ("event", "argv")}
    raise ValueError(f"no training config found in {out}")


def main(argv: list[str] | None = None) -> int:
    from models.checkpoint import convert_weights
    from models.eval import evaluate
    from models.factory import load_model

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint directory written by models.train")
    p.add_argument("--weights-dtype", choices=["fp32", "fp16", "bf16"], help="convert the weights file first")
    args = p.parse_args(argv)
    out = Path(args.checkpoint)
    facts = json.loads((out / "card.json").read_text())
    if args.weights_dtype:
        convert_weights(out, args.weights_dtype)
    loaded = load_model(str(out))
    result = evaluate(loaded)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    post = [c for c in facts.get("post_commands", []) if "models.card" not in c]
    post.append(shlex.join(["python", "-m", "models.card", *argv]))
    write_card(out, _train_config(out, facts), shlex.split(facts["command"]), facts["wall_time_s"], n_params,
               result, loaded.fingerprint, post)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
