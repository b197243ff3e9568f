"""The images install the package with `pip install '.[EXTRA]'` (not editable), so every data file the code
reads at run time (bundled checkpoint, model configs, parity photos, ...) must be inside the wheel."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.deploy.files import ROOT

PACKAGES = ("models", "export", "service")


def package_data_files() -> set[str]:
    """Non-Python files of the packages, as git tracks them (the build context holds the same)."""
    out = subprocess.run(["git", "ls-files", "--", *PACKAGES], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"git ls-files failed: {out.stderr.strip()}")
    return {f for f in out.stdout.splitlines() if not f.endswith((".py", ".pyc")) and "__pycache__" not in f}


def test_wheel_carries_every_package_data_file(tmp_path):
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools not installed in this environment: cannot build the wheel without isolation")
    if not (ROOT / "README.md").is_file():
        pytest.fail("README.md is missing: pyproject.toml names it as the readme, so the image build fails too")
    # What the Dockerfile copies into its builder stage, built outside the work tree (setuptools writes
    # build/ and *.egg-info next to the sources).
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, context / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, context / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--quiet", "-w", str(tmp_path / "dist"), str(context)], capture_output=True,
                           text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(package_data_files() - inside)
    assert not missing, ("not in the wheel, so not in the Docker image: add their extensions to "
                         f"[tool.setuptools.package-data] in pyproject.toml: {missing}")
