import json
import random

import pytest
import torch

from models.data.pool import ShapesPool
from models.data.shapes import ShapesConfig
from models.factory import create_model, preprocess_of, tokenizer_for
from models.schedule import lr_at
from models.train import TrainConfig, _param_groups, parse_args, train, train_step


def test_a_few_steps_lower_the_loss_on_a_tiny_batch():
    torch.manual_seed(0)
    model = create_model("shapes-rn-s").train()
    tok = tokenizer_for("shapes-rn-s")
    pool = ShapesPool(0, 16, ShapesConfig(image_size=64), progress=False)
    batch = pool.batch(torch.arange(16), random.Random(0), preprocess_of(model))
    opt = torch.optim.AdamW(_param_groups(model, 0.1), lr=1e-3)
    losses = [train_step(model, opt, tok, batch, grad_clip=1.0) for _ in range(12)]
    assert losses[-1] < losses[0] * 0.7, losses


def test_schedule_warms_up_then_decays():
    assert lr_at(0, 1.0, 10, 100) == 0.1
    assert lr_at(9, 1.0, 10, 100) == 1.0
    assert 0.45 < lr_at(55, 1.0, 10, 100) < 0.55
    assert lr_at(99, 1.0, 10, 100, floor=0.01) >= 0.01


def test_cli_parses_every_field():
    cfg = parse_args(["--steps", "5", "--lr", "0.5", "--pretrained", "x", "--data", "p.csv"])
    assert (cfg.steps, cfg.lr, cfg.pretrained, cfg.data) == (5, 0.5, "x", "p.csv")
    assert TrainConfig().model == "shapes-rn-s"


@pytest.mark.slow  # 17-23 s on 2 cores
def test_short_run_writes_checkpoint_log_curve_card_and_resumes(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "run"), steps=4, batch_size=8, pool_size=32, eval_every=2, log_every=1,
                      save_every=2, warmup=1)
    out = train(cfg, ["python", "-m", "models.train", "--steps", "4"])
    for name in ("open_clip_model.safetensors", "open_clip_config.json", "curve.png", "README.md", "card.json",
                 "train_log.jsonl", "resume.pt"):
        assert (out / name).is_file(), name
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert any("heldout_top1" in r for r in log)
    # a second call resumes from step 4 and trains nothing more
    before = (out / "open_clip_model.safetensors").read_bytes()
    train(TrainConfig(**{**cfg.__dict__}), None)
    assert (out / "open_clip_model.safetensors").read_bytes() == before
