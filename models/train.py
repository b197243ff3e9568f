"""Train (or fine-tune) a CLIP model with the paper's contrastive objective.

From scratch on the procedural shapes (how the bundled checkpoint is made):
    python -m models.train --model shapes-rn-s --out models/checkpoints/shapes-rn-s
Fine-tune any open_clip model on your own pairs (CSV of image,caption or a folder with .txt sidecars):
    python -m models.train --model ViT-B-32 --pretrained laion2b_s34b_b79k --data pairs.csv --lr 1e-5 --out runs/ft
Re-running with the same --out resumes from its last saved step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from tqdm import tqdm

from models.card import write_card
from models.checkpoint import save_checkpoint
from models.data.pool import ShapesPool
from models.data.shapes import ShapesConfig
from models.eval import evaluate
from models.factory import LoadedModel, create_model, model_config, tokenizer_for, preprocess_of
from models.fingerprint import fingerprint_model
from models.loss import clamp_logit_scale, contrastive_loss
from models.plot import plot_curve
from models.schedule import lr_at

RESUME_FILE = "resume.pt"
LOG_FILE = "train_log.jsonl"

Batch = tuple[torch.Tensor, list[str]]  # images [B, 3, H, W], captions


@dataclass
class TrainConfig:
    model: str = "shapes-rn-s"  # architecture to start from: open_clip name, ours, hf-hub: id or checkpoint dir
    pretrained: Optional[str] = None  # open_clip pretrained tag for --model (fine-tuning)
    checkpoint: Optional[str] = None  # local state dict for --model (fine-tuning)
    data: str = "shapes"  # "shapes" (procedural), a CSV of image,caption, or a folder with .txt sidecars
    out: str = "runs/shapes"  # output checkpoint directory (also where a run resumes from)
    steps: int = 2800  # optimiser steps
    batch_size: int = 128  # pairs per step (the contrastive matrix is batch_size x batch_size)
    lr: float = 1e-3  # peak AdamW learning rate
    min_lr: float = 1e-5  # cosine floor
    weight_decay: float = 0.1  # AdamW decay on weight matrices (not on gains, biases, embeddings, temperature)
    warmup: int = 150  # linear warm-up steps
    grad_clip: float = 1.0  # max global grad norm
    seed: int = 0  # seeds torch, python and the data generator
    pool_size: int = 30000  # shapes: images rendered once; captions are re-drawn on every visit
    two_object_prob: float = 0.25  # shapes: share of two-object training images
    partial_caption_prob: float = 0.3  # shapes: share of captions naming only colour or only shape
    aux_colour_prob: float = 0.3  # shapes: share of objects in auxiliary colours (white, black, brown, grey)
    log_every: int = 25  # steps between JSONL log lines
    eval_every: int = 250  # steps between quick zero-shot evaluations (shapes only; 0 = never)
    save_every: int = 250  # steps between resumable snapshots
    threads: int = 0  # torch intra-op threads (0 = all cores)
    workers: int = 2  # data-loader workers for user data


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name \
            or "embedding" in name or "token" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _shapes_batches(cfg: TrainConfig, loaded: LoadedModel, start: int) -> Iterator[Batch]:
    shapes_cfg = ShapesConfig(image_size=loaded.preprocess.height, two_object_prob=cfg.two_object_prob,
                              partial_caption_prob=cfg.partial_caption_prob, aux_colour_prob=cfg.aux_colour_prob)
    pool = ShapesPool(cfg.seed, cfg.pool_size, shapes_cfg)
    for step in range(start, cfg.steps):  # each step's batch depends only on (seed, step): resumable
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(len(pool), (cfg.batch_size,), generator=gen)
        yield pool.batch(idx, random.Random(f"{cfg.seed}-{step}"), loaded.preprocess)


def _user_batches(cfg: TrainConfig, loaded: LoadedModel, start: int) -> Iterator[Batch]:
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from torch.utils.data import DataLoader

    from models.data.pairs import PairsDataset, read_csv_pairs, read_folder_pairs

    pairs = read_folder_pairs(cfg.data) if Path(cfg.data).is_dir() else read_csv_pairs(cfg.data)
    p = loaded.preprocess
    train_tf = image_transform_v2(PreprocessCfg(size=p.size, mean=p.mean, std=p.std,
                                                interpolation=p.interpolation, resize_mode=p.resize_mode), True)
    ds = PairsDataset(pairs, train_tf)
    step, epoch = start, 0
    while step < cfg.steps:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(ds) > cfg.batch_size,
                            num_workers=cfg.workers, generator=gen, collate_fn=_collate)
        for batch in loader:
            if step >= cfg.steps:
                return
            step += 1
            yield batch
        epoch += 1


def _collate(items: list) -> Batch:
    return torch.stack([x for x, _ in items]), [c for _, c in items]


def _load_start(cfg: TrainConfig) -> LoadedModel:
    model = create_model(cfg.model, cfg.pretrained, cfg.checkpoint)
    tokenizer = tokenizer_for(cfg.model)
    pre = preprocess_of(model)
    return LoadedModel(model, pre, tokenizer, "", cfg.model, tokenizer.context_length,
                       int(model.text_projection.shape[-1]) if hasattr(model, "text_projection") else 0)


def _resume(out: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    path = out / RESUME_FILE
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    print(f"resuming from step {state['step']} ({path})", file=sys.stderr)
    return int(state["step"])


def _snapshot(out: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    tmp = out / (RESUME_FILE + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state()}, tmp)
    tmp.replace(out / RESUME_FILE)


def _log(out: Path, record: dict) -> None:
    with open(out / LOG_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, tokenizer: Callable, batch: Batch,
               grad_clip: float) -> float:
    """One optimiser step on one batch; returns the loss."""
    images, captions = batch
    out = model(images, tokenizer(captions))
    loss = contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    clamp_logit_scale(model)
    return float(loss.item())


def train(cfg: TrainConfig, argv: list[str] | None = None) -> Path:
    """Run (or resume) training; writes the checkpoint, log, curve and model card to cfg.out."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = _load_start(cfg)
    model = loaded.model.train()
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    start = _resume(out, model, opt)
    if start == 0:
        (out / LOG_FILE).unlink(missing_ok=True)
        _log(out, {"event": "config", **asdict(cfg), "argv": argv})
    batches = _shapes_batches(cfg, loaded, start) if cfg.data == "shapes" else _user_batches(cfg, loaded, start)
    t0 = time.time()
    bar = tqdm(batches, total=cfg.steps - start, desc="train", unit="step")
    for step, batch in enumerate(bar, start=start):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr)
        loss = train_step(model, opt, loaded.tokenizer, batch, cfg.grad_clip)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            scale = float(model.logit_scale.exp().item())
            bar.set_postfix(loss=f"{loss:.3f}", scale=f"{scale:.1f}")
            _log(out, {"step": done, "loss": loss, "logit_scale": scale, "lr": opt.param_groups[0]["lr"],
                       "elapsed_s": round(time.time() - t0, 1)})
        if cfg.data == "shapes" and cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
            acc = evaluate(loaded, n_heldout=240, n_seen=208)
            _log(out, {"step": done, "heldout_top1": acc["heldout_top1"], "seen_top1": acc["seen_top1"]})
            bar.write(f"step {done}: heldout_top1={acc['heldout_top1']:.3f} seen_top1={acc['seen_top1']:.3f}")
        if done % cfg.save_every == 0 or done == cfg.steps:
            _snapshot(out, model, opt, done)
    return _finish(cfg, loaded, out, argv, time.time() - t0)


def _finish(cfg: TrainConfig, loaded: LoadedModel, out: Path, argv: list[str] | None, wall_s: float) -> Path:
    model = loaded.model.eval()
    save_checkpoint(model, model_config(cfg.model), loaded.preprocess, out,
                    extra={"trained_from": cfg.model, "seed": cfg.seed, "steps": cfg.steps})
    plot_curve(out / LOG_FILE, out / "curve.png")
    if cfg.data != "shapes":
        return out
    from models.factory import load_model

    final = load_model(str(out))
    result = evaluate(final)
    fp = fingerprint_model(final.model, final.preprocess, final.tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    write_card(out, cfg=asdict(cfg), argv=argv, wall_s=wall_s, n_params=n_params, result=result, fingerprint=fp)
    print(json.dumps(result))
    return out


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        typ = {"Optional[str]": str}.get(str(f.type), None) or {"int": int, "float": float}.get(str(f.type), str)
        p.add_argument("--" + f.name.replace("_", "-"), type=typ, default=f.default)
    return TrainConfig(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_args(argv)
    train(cfg, ["python", "-m", "models.train", *argv])
    return 0


if __name__ == "__main__":
    sys.exit(main())
