"""The `clip-serve` command (service/cli.py): subcommands delegate to the project's tools."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from service import cli
from tests.service.server import ROOT, free_port


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in ("serve", "export", "train", "eval", "bench"):
        assert name in out


@pytest.mark.parametrize("command,expected", [("eval", "--checkpoint"), ("train", "--steps"), ("export", "onnx")])
def test_tools_get_their_arguments_unchanged(capsys, command, expected):
    assert cli.main([command, "--help"]) == 0
    assert expected in capsys.readouterr().out, "the tool's own help, not clip-serve's"


def test_a_missing_tool_says_where_to_run_it(capsys):
    assert cli.run_module("no_such_tool_here", []) == 2
    assert "clone of the repository" in capsys.readouterr().err


def test_serve_starts_the_server(bundled_dir, tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--model",
                             str(bundled_dir)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        assert httpx.get(f"http://127.0.0.1:{port}/info").json()["model"] == bundled_dir.name
    finally:
        proc.terminate()
        assert proc.wait(40) == 0, "drains and exits cleanly on SIGTERM"
        log.close()
