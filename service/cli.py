"""The `clip-serve` command: one entry point over the project's tools.

    clip-serve serve [--host H] [--port P] [--model M]   the server (python -m service); CLIP_* variables apply
    clip-serve embed PATH... --out vectors.parquet       embed a collection through running servers (resumable)
    clip-serve export ...                                python -m export ...      (ONNX / TensorRT, verify, bench)
    clip-serve train ...                                 python -m models.train ...
    clip-serve eval ...                                  python -m models.eval ...
    clip-serve bench ...                                 python -m bench ...       (from a clone of the repository)

Everything after the subcommand goes to that tool unchanged, so `clip-serve train --help` shows train's help.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import sys
from typing import Optional

from service.bulk import command as bulk_command

TOOLS = {  # subcommand -> (module run as __main__, what it does)
    "export": ("export", "export a model to ONNX / TensorRT, verify parity, benchmark runtimes"),
    "train": ("models.train", "train or fine-tune a CLIP model (python -m models.train)"),
    "eval": ("models.eval", "zero-shot evaluation of a checkpoint (python -m models.eval)"),
    "bench": ("bench", "the benchmark suite (python -m bench; needs a clone of the repository)"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clip-serve", description="CLIP inference server and its tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve a model over HTTP (settings: CLIP_* environment variables)")
    serve.add_argument("--host", help="bind address (CLIP_HOST)")
    serve.add_argument("--port", type=int, help="bind port (CLIP_PORT)")
    serve.add_argument("--model", help="model name or checkpoint directory (CLIP_MODEL)")
    embed = sub.add_parser("embed", help="embed folders, globs, lists of images or URLs, or texts, through running "
                                         "servers into a resumable parquet / .npy output",
                           description=bulk_command.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bulk_command.add_arguments(embed)
    for name, (_, text) in TOOLS.items():
        sub.add_parser(name, help=text, add_help=False)  # its own --help comes from the tool itself
    return parser


def runnable(module: str) -> bool:
    """Whether `python -m module` would find something to run (a module, or a package with __main__)."""
    try:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations is not None:
            spec = importlib.util.find_spec(module + ".__main__")
    except ImportError:  # a parent package is missing
        return False
    return spec is not None


def argv_name(module: str) -> str:
    return next((name for name, (m, _) in TOOLS.items() if m == module), module)


def run_module(module: str, argv: list[str]) -> int:
    """Run `python -m module argv...` in this process; returns its exit status."""
    if os.getcwd() not in sys.path:  # as `python -m` does, so a clone's bench/ is found from its root
        sys.path.insert(0, os.getcwd())
    if not runnable(module):
        print(f"clip-serve: `python -m {module}` is not available here; run this command from the root of a clone "
              f"of the repository, e.g. `cd clip-serve && clip-serve {argv_name(module)} ...`", file=sys.stderr)
        return 2
    saved, sys.argv = sys.argv, [f"clip-serve {module}", *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0


def serve(args: argparse.Namespace) -> int:
    for flag, env in (("host", "CLIP_HOST"), ("port", "CLIP_PORT"), ("model", "CLIP_MODEL")):
        value = getattr(args, flag)
        if value is not None:
            os.environ[env] = str(value)
    from service.__main__ import main as serve_main

    return serve_main()


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:  # pass the rest through untouched, --help included
        return run_module(TOOLS[argv[0]][0], argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "embed":
        return bulk_command.run(args)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
