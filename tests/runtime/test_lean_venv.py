"""The everyday path in a venv with only ``quasar-iqa[cpu]`` (no torch, open_clip or onnx).

scripts/test.sh builds that venv (.venv-lean) and points QUASAR_LEAN_PYTHON at it; the
scores it computes must equal the torch model + reference formula computed here.
"""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

LEAN = os.environ.get("QUASAR_LEAN_PYTHON")

SCRIPT = r"""
import json, sys
from quasar.runtime.scorer import Scorer
s = Scorer.from_bundle(sys.argv[1], device="cpu")
scores = s.score(sys.argv[2:])
mods = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "timm", "onnx"))
print(json.dumps({"scores": [float(v) for v in scores], "heavy_modules": mods}))
"""


@pytest.mark.skipif(not LEAN, reason="set QUASAR_LEAN_PYTHON to a venv with only quasar-iqa[cpu]")
def test_lean_venv_scores_equal_torch_reference(rn50_nopos_bundle, tmp_path):
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from quasar.export.encoders import build_image_encoder
    from quasar.models import get_model_spec

    check = subprocess.run([LEAN, "-c", "import torch"], capture_output=True)
    assert check.returncode != 0, "the lean venv must not have torch"

    rng = np.random.default_rng(7)
    paths = []
    for i, (w, h) in enumerate([(300, 200), (224, 224), (97, 150)]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))

    out = subprocess.run([LEAN, "-c", SCRIPT, str(rn50_nopos_bundle), *paths],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy_modules"] == []

    # Independent side: open_clip's transform + the torch model + the reference formula.
    spec = get_model_spec("clip-rn50-nopos.openai")
    model = build_image_encoder(spec, random_init=True, seed=0).eval()
    transform = open_clip.image_transform(224, is_train=False)
    from safetensors.numpy import load_file
    anchors = torch.from_numpy(load_file(str(rn50_nopos_bundle / "anchors.safetensors"))["text"])
    with torch.no_grad():
        x = torch.stack([transform(Image.open(p)) for p in paths])
        e = model(x).float()
        e = e / e.norm(dim=-1, keepdim=True)
        probs = ((1 / 0.07) * e @ anchors.t()).softmax(dim=-1)[:, 0].numpy()
    np.testing.assert_allclose(result["scores"], probs, atol=1e-5)
