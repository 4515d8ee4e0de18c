"""Parity numbers of clip-rn50.openai with the resized positional embedding (docs/export.md).

Run from the repository root: ``.venv/bin/python tests/export/parity_rn50_pos.py``.
"""
import importlib.util, json, tempfile
from pathlib import Path
import numpy as np, torch, onnxruntime as ort
spec = importlib.util.spec_from_file_location("t", "tests/export/test_rn50_pos.py")
t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)
from quasar.export.bundle import export_bundle
from quasar.export.encoders import build_encoder
from quasar.export.onnx import export_onnx
d = Path(tempfile.mkdtemp())
export_bundle("clip-rn50.openai", d / "b", random_init=True, seed=0)
m = json.loads((d / "b" / "bundle.json").read_text())
print("export parity check (ORT %s vs our torch tower; random init seed 0):" % m["parity"]["onnxruntime"])
for c in m["parity"]["cases"]:
    print("  %-18s max|diff| %.3g (max|emb| %.3g)  min cos %.9f" % (c["shape"], c["max_abs_diff"], c["max_abs_embedding"], c["min_cosine"]))
b = build_encoder("clip-rn50.openai", random_init=True, seed=0)
gen = torch.Generator().manual_seed(1)
with torch.no_grad():
    for name, p in b.model.visual.named_parameters():
        if name.endswith("bn3.weight"):
            p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.5)
    pe = b.model.visual.attnpool.positional_embedding
    pe.copy_(torch.randn(pe.shape, generator=gen) * 3.0)
exp = export_onnx(b.image_tower, d, dynamic_hw=True)
sess = ort.InferenceSession(str(exp.path), providers=["CPUExecutionProvider"])
print("ONNX vs the test's independent reference pool (bn3 re-initialised, pos-embedding x3):")
gen = torch.Generator().manual_seed(9)
for n, h, w in [(2, 224, 224), (1, 320, 256), (1, 250, 333), (2, 384, 512), (1, 768, 1024)]:
    x = torch.randn(n, 3, h, w, generator=gen)
    with torch.no_grad():
        ref = t.reference_forward(b.model.visual, x).double().numpy()
    got = sess.run(["embedding"], {"pixels": x.numpy()})[0].astype(np.float64)
    cos = ((got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)).min()
    print("  %-18s max|diff| %.3g (max|emb| %.3g)  min cos %.9f" % ([n, 3, h, w], np.abs(got - ref).max(), np.abs(ref).max(), cos))
