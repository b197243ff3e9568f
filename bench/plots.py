"""PNG plots of one run (matplotlib, Agg): throughput vs concurrency, latency percentiles, batch sizes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _series(served: dict):
    for name, s in served["scenarios"].items():
        pts = sorted(s["points"], key=lambda p: p["concurrency"])
        if pts:
            yield name, pts


def throughput(served: dict, encoder_limit: dict[str, float], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in _series(served):
        marker = "s" if len(pts) == 1 else "o"
        ax.plot([p["concurrency"] for p in pts], [p["items_per_s"] for p in pts], marker=marker, label=name)
    for i, (label, value) in enumerate(encoder_limit.items()):
        ax.axhline(value, linestyle="--", color=f"C{7 + i}", linewidth=1, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (closed loop)")
    ax.set_ylabel("items/s")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency(served: dict, path: Path, title: str) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, q in zip(axes, ("p50", "p99")):
        for name, pts in _series(served):
            pts = [p for p in pts if p["latency_ms"]]
            ax.plot([p["concurrency"] for p in pts], [p["latency_ms"][q] for p in pts], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency")
        ax.set_title(f"{q} latency")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms")
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def batch_sizes(served: dict, path: Path, title: str, scenarios=("image-224", "image-224-batch1")) -> Path:
    """Encoder calls per batch-size bucket, one group of bars per (scenario, concurrency)."""
    groups = [(f"{name} c={p['concurrency']}", p["batch_histogram"]) for name in scenarios
              for p in served["scenarios"].get(name, {}).get("points", [])]
    buckets = sorted({b for _, h in groups for b in h}, key=lambda b: int(b.split("-")[-1]))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(1, len(groups))
    for i, (label, hist) in enumerate(groups):
        total = sum(hist.values()) or 1
        ax.bar([j + i * width for j in range(len(buckets))], [hist.get(b, 0) / total for b in buckets], width,
               label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(buckets))], buckets)
    ax.set_xlabel("images per encoder call")
    ax.set_ylabel("share of encoder calls")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def precision(encoder_rows: list[dict], compare: dict, model: str, path: Path, title: str) -> Path:
    """fp32 vs int8: encoder limit per batch size (left), served items/s per concurrency (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = [r for r in encoder_rows if r["model"] == model and r["backend"] == "onnx"]
    for i, (tower, prec) in enumerate((t, p) for t in ("image", "text") for p in ("fp32", "int8")):
        pts = sorted((r["batch"], r["items_per_s"]) for r in rows if (r["tower"], r["precision"]) == (tower, prec))
        if pts:
            left.plot(*zip(*pts), marker="o", linestyle="-" if prec == "int8" else "--", color=f"C{i // 2}",
                      alpha=1.0 if prec == "int8" else 0.6, label=f"{tower} {prec}")
    left.set_xscale("log", base=2)
    left.set_xlabel("batch size")
    left.set_ylabel("items/s (in-process, ONNX Runtime)")
    left.set_title("encoder limit")
    for prec, scenarios in compare.get("scenarios", {}).items():
        for j, (name, s) in enumerate(sorted(scenarios.items())):
            pts = sorted((p["concurrency"], p["items_per_s"]) for p in s["points"])
            right.plot(*zip(*pts), marker="o", linestyle="-" if prec == "int8" else "--", color=f"C{j}",
                       alpha=1.0 if prec == "int8" else 0.6, label=f"{name} {prec}")
    right.set_xscale("log", base=2)
    right.set_xlabel("concurrency (closed loop)")
    right.set_ylabel("items/s served")
    right.set_title("served over HTTP")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a run of the int8 stage alone has no encoder rows
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def feed(results: dict, path: Path, title: str) -> Path:
    """Through the stand-in, one group of bars per request size and one bar per server: served images/s with
    decode_limit as a line (left), server CPU ms per image with decoding's own CPU per image as a line (right)."""
    servers = list(dict.fromkeys(p["server"] for p in results["points"]))
    sizes = sorted({p["images_per_request"] for p in results["points"]})
    point = {(p["server"], p["images_per_request"]): p for p in results["points"]}
    limit = results["decode_limit"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(1, len(servers))
    for ax, key in ((left, "images_per_s"), (right, "server_cpu_ms_per_image")):
        for i, server in enumerate(servers):
            ax.bar([j + i * width for j in range(len(sizes))],
                   [(point.get((server, k)) or {}).get(key) or 0.0 for k in sizes], width, label=server)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))], [f"{k} image(s) per request" for k in sizes])
        ax.grid(True, axis="y", alpha=0.3)
    left.axhline(limit["images_per_s"], linestyle="--", color="C7", linewidth=1,
                 label=f"decode_limit ({limit['processes']} processes)")
    left.set_ylabel("images/s served (wrk)")
    if limit.get("cpu_ms_per_image"):
        right.axhline(limit["cpu_ms_per_image"], linestyle="--", color="C7", linewidth=1,
                      label="decode + resize alone")
    right.set_ylabel("server CPU ms per image (process tree)")
    for ax in (left, right):
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
