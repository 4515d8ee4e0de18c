"""CLI: `quasar export` / `quasar models` through the installed script; light imports."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quasar.constants import BUNDLE_JSON, ENCODER_ONNX

QUASAR = Path(sys.executable).parent / "quasar"


def test_cli_modules_do_not_import_torch():
    code = ("import sys, quasar.models, quasar.export.cli, quasar.cli; "
            "heavy = [m for m in ('torch', 'open_clip', 'timm', 'onnx', 'onnxruntime') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_models_lists_catalogue_and_local_bundles(tmp_path):
    from quasar.models.catalog import list_models

    home = tmp_path / "home"
    (home / "bundles" / "vit-b-32.openai").mkdir(parents=True)
    (home / "bundles" / "vit-b-32.openai" / BUNDLE_JSON).write_text("{}")
    env = dict(os.environ, QUASAR_HOME=str(home))
    r = subprocess.run([str(QUASAR), "models"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for mid in list_models():
        assert any(line.startswith(mid + " ") for line in lines), mid
    row = next(line for line in lines if line.startswith("vit-b-32.openai "))
    assert row.split()[-1] == "yes"
    row = next(line for line in lines if line.startswith("clip-rn50-nopos.openai "))
    assert "224,512,native" in row and not row.endswith("yes")


def test_export_unknown_model_clean_error(tmp_path):
    r = subprocess.run([str(QUASAR), "export", "vit-b-32", "--out", str(tmp_path / "b")],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "vit-b-32.openai" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.torch
def test_export_cli_random_init(tmp_path, rn50_nopos_bundle):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "b"
    r = subprocess.run([str(QUASAR), "export", "clip-rn50-nopos.openai", "--random-init",
                        "--seed", "0", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == str(out.absolute())
    assert (out / BUNDLE_JSON).is_file()
    # same seed -> same weights as the fixture's bundle
    x = np.random.default_rng(0).standard_normal((1, 3, 160, 192)).astype(np.float32)
    runs = [ort.InferenceSession(str(b / ENCODER_ONNX), providers=["CPUExecutionProvider"])
            .run(None, {"pixels": x})[0] for b in (out, rn50_nopos_bundle)]
    np.testing.assert_allclose(runs[0], runs[1], rtol=0, atol=1e-6)
    # exists now -> clear error, bundle untouched
    r = subprocess.run([str(QUASAR), "export", "clip-rn50-nopos.openai", "--random-init",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode != 0 and "already exists" in r.stderr and "Traceback" not in r.stderr
    assert (out / BUNDLE_JSON).is_file()
