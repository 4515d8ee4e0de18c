"""CoCa: the exported embedding is open_clip's own ``encode_image`` (default normalize=True),
as the reference calls it, and the manifest records that the output is normalised.

The catalogue's CoCa is ViT-L/14 (heavy); the same code path is checked here on open_clip's
smaller ``coca_ViT-B-32`` architecture (random init), built through a ModelSpec of the same
shape as the catalogue entry but for the model name and dims.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
ort = pytest.importorskip("onnxruntime")

from quasar.models.catalog import get_model_spec  # noqa: E402
from quasar.constants import BUNDLE_JSON, ENCODER_ONNX  # noqa: E402

SEED = 0


def small_coca_spec():
    big = get_model_spec("coca-vit-l-14.mscoco_finetuned_laion2b_s13b_b90k")
    assert big.normalized_output  # the catalogue entry follows the reference
    return dataclasses.replace(big, arch="coca-vit-b-32", tag="test", source_name="coca_ViT-B-32",
                               pretrained="", embed_dim=512, heavy=False)


def _pixels(n, seed=3):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(
        (n, 3, 224, 224)).astype(np.float32))


@pytest.fixture(scope="module")
def coca_bundle(tmp_path_factory):
    from quasar.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("coca") / "bundle"
    return export_bundle(small_coca_spec(), out, random_init=True, seed=SEED)


@pytest.mark.torch
def test_coca_onnx_is_open_clip_encode_image(coca_bundle):
    torch.manual_seed(SEED)  # an independent copy of the bundle's random weights
    model = open_clip.create_model("coca_ViT-B-32", pretrained=None).eval()
    x = _pixels(2)
    with torch.no_grad():
        ref = model.encode_image(x).numpy()  # open_clip's default: normalize=True
        raw = model.encode_image(x, normalize=False).numpy()
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-5)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).max() > 1e-2  # normalising is not a no-op
    sess = ort.InferenceSession(str(coca_bundle / ENCODER_ONNX), providers=["CPUExecutionProvider"])
    got = sess.run(["embedding"], {"pixels": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.torch
def test_manifest_records_normalised_output(coca_bundle, rn50_nopos_bundle):
    from quasar.bundle.manifest import BundleManifest

    m = BundleManifest.from_dict(json.loads((coca_bundle / BUNDLE_JSON).read_text()))
    assert m.encoder.normalized_output is True
    m = BundleManifest.from_dict(json.loads((rn50_nopos_bundle / BUNDLE_JSON).read_text()))
    assert m.encoder.normalized_output is False
    d = json.loads((rn50_nopos_bundle / BUNDLE_JSON).read_text())
    del d["encoder"]["normalized_output"]  # a bundle written before the field existed
    assert BundleManifest.from_dict(d).encoder.normalized_output is False
