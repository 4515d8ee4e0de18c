"""Packaging: every folder installs under ``quasar.``; nothing bare shadows other packages."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    (whl,) = out.glob("*.whl")
    return whl


def test_wheel_installs_everything_under_quasar(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"quasar"}, top
    for module in ("quasar/models/catalog.py", "quasar/runtime/__init__.py", "quasar/bundle/io.py",
                   "quasar/export/__init__.py", "quasar/evaluate/datasets/base.py",
                   "quasar/cli.py"):
        assert module in names, module


def test_wheel_declares_extras_and_console_script(wheel):
    z = zipfile.ZipFile(wheel)
    meta = next(n for n in z.namelist() if n.endswith("METADATA"))
    text = z.read(meta).decode()
    for extra in ("cpu", "gpu", "export", "evaluate", "test", "ray"):
        assert f"Provides-Extra: {extra}" in text
    assert "onnxruntime-gpu" in text and "extra == \"gpu\"" in text
    # the runtime core never pulls torch in
    core = [line for line in text.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not any("torch" in line or "onnxruntime" in line for line in core), core
    ep = next(n for n in z.namelist() if n.endswith("entry_points.txt"))
    assert "quasar = quasar.cli:main" in z.read(ep).decode()


def test_bare_top_level_names_not_importable():
    code = ("import importlib.util, sys; "
            "print([m for m in ('models', 'bundle', 'runtime', 'export', 'evaluate') "
            "if importlib.util.find_spec(m) is not None])")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]", out
