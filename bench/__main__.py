"""`python -m bench` (what `make bench` runs): encoder limit, served load, decoding, int8 vs fp32, ratios, plots.

    python -m bench                     # full run, about 20 minutes on 2 cores; writes docs/benchmarks/
    python -m bench --quick             # a smoke run in about 2 minutes (bundled model only, short points)
    python -m bench --only encoder,decode --out /tmp/b
    python -m bench --only encoder,int8 --models vit-b-32 --seconds 4 --out /tmp/b   # int8 against fp32 only

`python -m bench.feed` measures, separately, what the serving stack can feed an accelerator (issue 16): the
stand-in backend of bench/standin.py against decode_limit, one-image and 16-image requests under wrk.

Measurements are only as good as the machine is quiet: the load average at the start of each stage is kept in
results.json, and the run warns when the machine is already busy.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from bench import assets, decode, encoder, machine, ratios, report, served

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("encoder", "decode", "served", "int8")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small budgets and the bundled model only (smoke test)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default docs/benchmarks, or docs/benchmarks/raw/quick with --quick)")
    p.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages from {','.join(STAGES)}")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda when available")
    p.add_argument("--seconds", type=float, default=None, help="measurement window per served point")
    p.add_argument("--models", default=None, help="comma-separated subset of the run's models (vit-b-32,bundled)")
    return p


def config(args: argparse.Namespace) -> dict:
    """Budgets of a full or a quick run."""
    if args.quick:
        cfg = {"models": ["bundled"], "served": ["bundled"], "int8": ["bundled"], "batch_sizes": (1, 8),
               "encoder_s": 0.3, "encoder_rounds": 1, "decode_s": 0.5, "int8_concurrency": (1, 8),
               "int8_rounds": 1, "budget": served.Budget(seconds=args.seconds or 1.5, warmup_s=5, concurrency=(1, 8),
                                                         cold_concurrency=(1,), labelset_build_s=5)}
    else:  # int8 cells and points alternate with fp32 in 2 rounds, so the ratios hold on a shared machine
        cfg = {"models": ["vit-b-32", "bundled"], "served": ["vit-b-32", "bundled"], "int8": ["vit-b-32"],
               "batch_sizes": (1, 8, 32), "encoder_s": 3.0, "encoder_rounds": 2, "decode_s": 3.0,
               "int8_concurrency": served.PRECISION_CONCURRENCY, "int8_rounds": 2,
               "budget": served.Budget(seconds=args.seconds or 10.0)}
    if args.models:
        keep = args.models.split(",")
        cfg.update({k: [m for m in cfg[k] if m in keep] for k in ("models", "served", "int8")})
    return cfg


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def served_setup(device: str) -> tuple[str, dict[str, str], str]:
    """(backend, extra env, precision): ONNX Runtime on CPU; torch fp16 on a GPU (the issue's GPU target)."""
    if device == "cuda":
        return "torch", {"CLIP_DEVICE": "cuda", "CLIP_PRECISION": "fp16", "CLIP_JPEG_DECODE": "cuda"}, "fp16"
    return "onnx", {"CLIP_DEVICE": "cpu"}, "fp32"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)
    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    out = args.out or ROOT / ("docs/benchmarks/raw/quick" if args.quick else "docs/benchmarks")
    raw = out / "raw" if out.name != "quick" else out
    cfg = config(args)
    device = resolve_device(args.device)
    backend, extra_env, precision = served_setup(device)
    results: dict = {"quick": args.quick, "device": device, "machine": machine.describe(), "load_average": {},
                     "encoder": [], "served": {}, "ratios": {}, "int8": {}, "ratios_int8": {},
                     "encoder_rounds": cfg["encoder_rounds"], "not_run": [], "errors": []}
    print("machine:", machine.summary(results["machine"]))
    if results["machine"]["load_average_at_start"] and \
            results["machine"]["load_average_at_start"][0] > 0.5 * results["machine"]["cores"]:
        print("warning: the machine is busy (load average above half the cores); numbers will be low and noisy")

    models = {"vit-b-32": assets.vit_b_32, "bundled": assets.bundled}
    int8 = [key for key in cfg["int8"] if "int8" in stages or "encoder" in stages] if device == "cpu" else []
    if cfg["int8"] and device != "cpu":
        results["not_run"].append("int8: int8 exports run on CPU only (ONNX Runtime's dynamic quantization)")
    loaded = {key: models[key](int8=key in int8) for key in cfg["models"]}
    results["models"] = {key: {"source": m.model, "checkpoint": m.checkpoint, "export_dir": str(m.export_dir),
                               "int8_export_dir": str(m.int8_export_dir) if m.int8_export_dir else None}
                         for key, m in loaded.items()}
    started = time.time()

    if "encoder" in stages:
        results["load_average"]["encoder"] = machine.load_average()
        for m in loaded.values():
            rows = encoder.measure(m, backends=("torch", backend) if backend != "torch" else ("torch",),
                                   batch_sizes=cfg["batch_sizes"], seconds=cfg["encoder_s"], device=device,
                                   precision=precision, int8=m.int8_export_dir is not None,
                                   rounds=cfg["encoder_rounds"])
            results["encoder"] += encoder.to_json(rows)
    if "decode" in stages:
        results["load_average"]["decode"] = machine.load_average()
        results["decode"] = decode.measure(list(loaded.values()), seconds=cfg["decode_s"])
    if "served" in stages:
        for key in cfg["served"]:
            results["load_average"][f"served-{key}"] = machine.load_average()
            m = loaded[key]
            text_rate = max((r["items_per_s"] for r in results["encoder"] if r["precision"] != "int8"
                             and (r["model"], r["backend"], r["tower"]) == (key, backend, "text")), default=None)
            only = None if key == cfg["served"][0] else ("image-224", "classify-10x80", "classify-1000x80")
            try:
                results["served"][key] = served.measure(m, backend, cfg["budget"], raw, text_rate, extra_env,
                                                        quick=args.quick, only=only)
            except Exception as exc:  # noqa: BLE001 - keep what the other stages measured, say what failed
                results["errors"].append(f"served {key}: {type(exc).__name__}: {exc}"[:500])
                print(f"error: served {key} failed: {exc!r}; its results are left out", file=sys.stderr)
    if "int8" in stages:
        for key in int8:
            results["load_average"][f"int8-{key}"] = machine.load_average()
            try:
                results["int8"][key] = served.compare_precisions(loaded[key], cfg["budget"], raw,
                                                                 cfg["int8_concurrency"], cfg["int8_rounds"])
            except Exception as exc:  # noqa: BLE001 - keep what the other stages measured, say what failed
                results["errors"].append(f"int8 {key}: {type(exc).__name__}: {exc}"[:500])
                print(f"error: int8 {key} failed: {exc!r}; its results are left out", file=sys.stderr)
    for key, s in results["served"].items():
        results["ratios"][key] = ratios.compute(results["encoder"], s, results.get("decode", {}), key)
    for key in int8:
        results["ratios_int8"][key] = ratios.int8(results["encoder"], results["int8"].get(key, {}), key)
    if device == "cpu":
        results["not_run"].append("GPU targets (ViT-B-32 fp16 over HTTP >= 3,000 img/s, nvJPEG decoding, peak "
                                  "device memory): no GPU on this machine")
    results["seconds"] = round(time.time() - started, 1)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    files = report.write(results, out)
    for key, r in results["ratios"].items():
        print(f"\nratios ({key}, {r['backend']}):\n" + ratios.table(r))
    for key, r in results["ratios_int8"].items():
        print(f"\nint8 over fp32 ({key}, ONNX Runtime):\n" + ratios.int8_table(r))
    print(f"\nwrote {', '.join(str(f.relative_to(ROOT) if f.is_relative_to(ROOT) else f) for f in files)} "
          f"in {results['seconds']:.0f}s")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
