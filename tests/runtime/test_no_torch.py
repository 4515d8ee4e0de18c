"""`import quasar.runtime` and a full Scorer.score never load torch (nor open_clip, timm,
torchvision, onnx): checked in a fresh interpreter where importing them raises."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import rt_helpers  # noqa: E402

FORBIDDEN = ("torch", "torchvision", "open_clip", "timm", "onnx")

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys
    FORBIDDEN = {forbidden!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                raise ImportError(f"blocked import of {{name}} in the runtime")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import quasar, quasar.runtime
    from quasar.runtime import Scorer, load_bundle
    import quasar.runtime.scorer, quasar.runtime.images, quasar.runtime.session
    import quasar.bundle.io, quasar.runtime.default_bundle
    after_import = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    s = Scorer.from_bundle({bundle!r}, resolution={res!r}, batch_size=2)
    img = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    scores = s.score_all([img, img[:50]])
    res = s.score([img, "/missing.png"], errors="collect")
    print(json.dumps({{"after_import": after_import,
                       "after_score": sorted(m for m in sys.modules
                                            if m.split(".")[0] in FORBIDDEN),
                       "n": len(next(iter(scores.values()))),
                       "errors": [type(e).__name__ if e else None for e in res.errors]}}))
""")


def _run(bundle, res="native"):
    code = SCRIPT.format(forbidden=FORBIDDEN, bundle=str(bundle), res=res)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hook_really_blocks():
    """The meta-path hook makes `import torch` fail (so the test below can fail)."""
    code = SCRIPT.split("sys.meta_path.insert(0, Block())")[0].format(forbidden=FORBIDDEN)
    code += "sys.meta_path.insert(0, Block())\nimport torch\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "blocked import of torch" in proc.stderr


def test_runtime_never_imports_torch_tiny(tmp_path):
    pytest.importorskip("onnx")  # only to write the tiny test graph here
    bundle = rt_helpers.write_tiny_bundle(tmp_path / "tiny")
    out = _run(bundle)
    assert out["after_import"] == [] and out["after_score"] == []
    assert out["n"] == 2 and out["errors"] == [None, "ImageNotFoundError"]


@pytest.mark.torch
def test_runtime_never_imports_torch_rn50(rn50_nopos_bundle):
    out = _run(rn50_nopos_bundle, res="224")
    assert out["after_import"] == [] and out["after_score"] == []
    assert out["n"] == 2 and out["errors"] == [None, "ImageNotFoundError"]
