r"""Command line of the export package.

    python -m export onnx --model <name|checkpoint dir> [--pretrained TAG | --checkpoint FILE] --out DIR \
        [--precision fp32|fp16|int8] [--int8-recipe NAME] [--int8-keep-fp32 REGEX ...] [--opset N]
    python -m export tensorrt --onnx DIR --out DIR [--fp16] [--reuse] [--min-batch 1 --opt-batch 32 --max-batch 256]
    python -m export verify DIR [--backend onnx|tensorrt] [--device cpu|cuda]
    python -m export bench DIR [--device cpu|cuda] [--batch-sizes 1,8,32,64] [--compare DIR] [--json FILE] [--record]

Exit status: 0 ok, 1 parity failed, 2 any other export error (the message says how to fix it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from export.errors import TORCH_EXTRA, ExportError, ParityError
from export.manifest import PRECISIONS

try:  # every command rebuilds or traces the eager model: PyTorch, open_clip and onnx (the `torch` extra)
    from export.onnx_export import DEFAULT_OPSET
    from export.quantize import DEFAULT_RECIPE, RECIPES
    _MISSING: ImportError | None = None
except ImportError as e:  # a lean install (`pip install '.[onnx]'`) serves exports but cannot make them
    _MISSING = e

log = logging.getLogger("export")


def _source_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--model", required=required,
                   help="open_clip architecture (ViT-B-32), one of ours (shapes-rn-s), hf-hub:org/repo, or a "
                        "checkpoint directory such as models/checkpoints/shapes-rn-s")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--pretrained", help="open_clip pretrained tag, e.g. laion2b_s34b_b79k")
    group.add_argument("--checkpoint", help="local state-dict file (.safetensors/.pt/.bin) for --model")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    onnx = sub.add_parser("onnx", help="export both towers to ONNX, then check parity")
    _source_args(onnx, required=True)
    onnx.add_argument("--out", required=True, help="export directory to write")
    onnx.add_argument("--precision", choices=PRECISIONS, default=None,
                      help="arithmetic inside the graphs (default fp32); int8 is for CPUs (ONNX Runtime)")
    onnx.add_argument("--fp16", action="store_true", help="the same as --precision fp16")
    onnx.add_argument("--int8-recipe", choices=list(RECIPES), default=DEFAULT_RECIPE,
                      help=f"how --precision int8 quantizes (default {DEFAULT_RECIPE}; see docs/export.md)")
    onnx.add_argument("--int8-keep-fp32", action="append", default=[], metavar="REGEX",
                      help="keep the ONNX nodes whose name matches in fp32 (repeatable), e.g. '/visual/conv1/'")
    onnx.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    onnx.add_argument("--parity-shapes", type=int, default=64, help="shapes evaluation images in the parity check")

    trt = sub.add_parser("tensorrt", help="build TensorRT engines from an ONNX export (needs a GPU)")
    trt.add_argument("--onnx", required=True, help="ONNX export directory (from `python -m export onnx`)")
    trt.add_argument("--out", required=True, help="engine directory to write")
    trt.add_argument("--fp16", action="store_true", help="let TensorRT use fp16 kernels on an fp32 export")
    trt.add_argument("--reuse", action="store_true",
                     help="keep engines already in --out when they were built from the same graphs with the same "
                          "options on this GPU model and TensorRT version (a deploy's build step before each start)")
    trt.add_argument("--min-batch", type=int, default=1)
    trt.add_argument("--opt-batch", type=int, default=32)
    trt.add_argument("--max-batch", type=int, default=256)

    verify = sub.add_parser("verify", help="check an export against eager PyTorch")
    verify.add_argument("dir", help="export directory")
    verify.add_argument("--backend", choices=("onnx", "tensorrt"), default=None,
                        help="default: onnx for ONNX exports, tensorrt for engine directories")
    verify.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    verify.add_argument("--parity-shapes", type=int, default=64)
    _source_args(verify, required=False)

    bench = sub.add_parser("bench", help="encoder throughput per batch size, eager torch vs exported graphs")
    bench.add_argument("dir", help="export directory")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    bench.add_argument("--batch-sizes", default="1,8,32,64", help="comma-separated (default 1,8,32,64)")
    bench.add_argument("--backends", default="torch,onnx", help="comma-separated from torch,onnx,tensorrt")
    bench.add_argument("--towers", default="image,text", help="comma-separated from image,text")
    bench.add_argument("--compare", action="append", default=[], metavar="DIR",
                       help="another export of the same model (e.g. its int8 export), timed as onnx-<precision>")
    bench.add_argument("--seconds", type=float, default=3.0, help="minimum timing per cell and round")
    bench.add_argument("--rounds", type=int, default=1,
                       help="time every cell this many times, backends interleaved (steadier on a busy machine)")
    bench.add_argument("--threads", type=int, default=0, help="CPU threads for torch and ONNX Runtime (0 = all)")
    bench.add_argument("--json", help="also write the results to this JSON file")
    bench.add_argument("--record", action="store_true",
                       help="record each tower's knee (smallest batch within 95%% of the best items/s) of the export's "
                            "own runtime in its manifest.json, for this host and --device: the server then uses it as "
                            "its max batch instead of measuring at warm-up")
    _source_args(bench, required=False)
    return p


def _override(args: argparse.Namespace):
    from export.source import source_spec

    return source_spec(args.model, args.pretrained, args.checkpoint) if args.model else None


def cmd_onnx(args: argparse.Namespace) -> int:
    from export.onnx_export import OnnxOptions, export_onnx
    from export.source import load_source, source_spec

    spec = source_spec(args.model, args.pretrained, args.checkpoint)
    try:
        loaded = load_source(spec)
    except (ValueError, OSError, RuntimeError) as e:  # unknown name, missing file, weights of another arch
        raise ExportError(f"cannot load model {args.model!r}: {e}") from e
    options = OnnxOptions(precision=_precision(args), opset=args.opset, parity_shapes=args.parity_shapes,
                          int8_recipe=args.int8_recipe, int8_keep_fp32=tuple(args.int8_keep_fp32))
    manifest = export_onnx(loaded, spec, args.out, options)
    p = manifest.parity
    print(f"exported {manifest.model_id} ({manifest.precision}, opset {manifest.opset}) to {args.out}; "
          f"parity passed: image min cosine {p['image_min_cosine']:.9f} (mean {p['image_mean_cosine']:.9f}), "
          f"text min cosine {p['text_min_cosine']:.9f} (mean {p['text_mean_cosine']:.9f}), zero-shot agreement "
          f"{p['zero_shot_decided_agreement']:.4f} of {p['zero_shot_decided']} decided images")
    return 0


def _precision(args: argparse.Namespace) -> str:
    if args.fp16 and args.precision not in (None, "fp16"):
        raise ExportError(f"--fp16 and --precision {args.precision} contradict each other; give one of them.")
    if args.precision != "int8" and (args.int8_recipe != DEFAULT_RECIPE or args.int8_keep_fp32):
        raise ExportError("--int8-recipe and --int8-keep-fp32 need --precision int8.")
    return "fp16" if args.fp16 else args.precision or "fp32"


def cmd_tensorrt(args: argparse.Namespace) -> int:
    from export.manifest import read_manifest
    from export.tensorrt_build import BuildOptions, Profile, build_tensorrt_export

    if read_manifest(args.onnx, verify=False).precision == "int8":
        raise ExportError(f"{args.onnx} is an int8 export, made for CPUs (ONNX Runtime's dynamic quantization); "
                          f"build TensorRT engines from an fp32 or fp16 export.")

    options = BuildOptions(fp16=args.fp16, profile=Profile(args.min_batch, args.opt_batch, args.max_batch))
    manifest = build_tensorrt_export(args.onnx, args.out, options, reuse=args.reuse)
    print(f"built TensorRT engines for {manifest.model_id} in {args.out} ({manifest.tensorrt})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from export.manifest import read_manifest
    from export.parity import check_parity
    from export.runtime import load_encoders
    from export.source import eager_model_for

    manifest = read_manifest(args.dir)  # sha256 of every file checked here
    backend = args.backend or ("tensorrt" if manifest.kind == "tensorrt" else "onnx")
    device = "cuda" if backend == "tensorrt" else args.device
    encoders = load_encoders(args.dir, backend=backend, device=device, verify=False)  # hashed just above
    report = check_parity(eager_model_for(manifest, _override(args)), encoders, manifest.precision,
                          args.parity_shapes)
    print(report.table())
    print(json.dumps({"dir": str(args.dir), "backend": backend, "providers": encoders.providers,
                      **report.to_dict()}))
    return 0 if report.passed else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from export.bench import bench_export, format_table, record_knees, rows_to_json

    rows = bench_export(args.dir, device=args.device, batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                        backends=args.backends.split(","), towers=args.towers.split(","), seconds=args.seconds,
                        threads=args.threads, source=_override(args), rounds=args.rounds, compare=args.compare)
    print(format_table(rows))
    if args.record:
        print(record_knees(args.dir, rows, args.device))
    if args.json:
        from export.manifest import read_manifest

        result = rows_to_json(rows, read_manifest(args.dir, verify=False), args.device, args.threads)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


COMMANDS = {"onnx": cmd_onnx, "tensorrt": cmd_tensorrt, "verify": cmd_verify, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    if _MISSING is not None:
        print(f"error: python -m export needs PyTorch, open_clip and onnx, which this install lacks ({_MISSING}): "
              f"{TORCH_EXTRA}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("export").setLevel(logging.INFO)
    try:
        return COMMANDS[args.command](args)
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
