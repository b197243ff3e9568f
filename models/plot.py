"""Training-curve PNG from a train_log.jsonl: loss, logit scale and zero-shot accuracy against step."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curve(log_path: str | Path, png_path: str | Path) -> Path:
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "heldout_top1" in r]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue")
    axes[0].set(title="contrastive loss", xlabel="step", yscale="log")
    axes[1].plot([r["step"] for r in train], [r["logit_scale"] for r in train], color="tab:purple")
    axes[1].set(title="logit scale exp(t) (clipped at 100)", xlabel="step")
    if evals:
        steps = [r["step"] for r in evals]
        axes[2].plot(steps, [r["heldout_top1"] for r in evals], "o-", label="held-out pairs (zero-shot)")
        axes[2].plot(steps, [r["seen_top1"] for r in evals], "s-", label="seen pairs")
        axes[2].legend(loc="lower right")
    axes[2].set(title="zero-shot top-1", xlabel="step", ylim=(0, 1.02))
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)
