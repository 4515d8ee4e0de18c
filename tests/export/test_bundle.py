"""Exported bundles vs their torch models, rebuilt independently from the catalogue entry."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from quasar.models.catalog import get_model_spec  # noqa: E402
from quasar.bundle.manifest import BundleManifest  # noqa: E402
from quasar.constants import ANCHORS_FILE, BUNDLE_JSON, ENCODER_ONNX, TEXT_PROMPTS  # noqa: E402

SEED = 0


def _onnx(bundle, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(bundle / ENCODER_ONNX), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["pixels"]
    assert [o.name for o in sess.get_outputs()] == ["embedding"]
    return sess.run(["embedding"], {"pixels": x})[0]


def _torch(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 0
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * scale)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999


def _rebuild(model_id):
    from quasar.export.encoders import build_image_encoder

    return build_image_encoder(get_model_spec(model_id), random_init=True, seed=SEED)


def _pixels(*shape, seed=7):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _manifest(bundle) -> BundleManifest:
    return BundleManifest.from_dict(json.loads((bundle / BUNDLE_JSON).read_text()))


@pytest.mark.torch
def test_rn50_nopos_bundle_matches_torch(rn50_nopos_bundle):
    model = _rebuild("clip-rn50-nopos.openai")
    for shape in [(1, 3, 224, 224), (2, 3, 224, 224), (2, 3, 768, 1024), (1, 3, 161, 289)]:
        x = _pixels(*shape)
        _close(_onnx(rn50_nopos_bundle, x), _torch(model, x))


@pytest.mark.torch
def test_rn50_nopos_manifest(rn50_nopos_bundle):
    spec = get_model_spec("clip-rn50-nopos.openai")
    m = _manifest(rn50_nopos_bundle)
    assert m.model == spec.id and m.family == "open_clip"
    assert m.encoder.dynamic_hw and m.encoder.input_size is None
    assert m.encoder.embed_dim == 1024 and m.encoder.precision == "fp32"
    assert m.encoder.opset and m.encoder.external_data is None
    assert set(m.preprocess) == {"224", "512", "native"}
    for r in spec.resolutions:
        assert m.preprocess[r] == spec.preprocess(r)
    assert m.default_resolution == "224"
    assert m.anchors == ["text"]
    p = m.provenance
    assert p["random_init"] is True and p["seed"] == SEED and p["checkpoint"] is None
    assert p["source"] == "open_clip" and p["source_name"] == "RN50"
    assert p["versions"]["torch"] and p["versions"]["onnxruntime"] and p["exported_at"]
    assert m.parity["passed"] is True
    shapes = {tuple(c["shape"]) for c in m.parity["cases"]}
    assert {(1, 3, 224, 224), (2, 3, 224, 224), (3, 3, 224, 224), (1, 3, 768, 1024)} <= shapes
    assert any(s[2] != s[3] for s in shapes)
    # checksums of every other file, computed here with hashlib
    import hashlib

    files = {p.name for p in rn50_nopos_bundle.iterdir()} - {BUNDLE_JSON}
    assert set(m.files) == files == {ENCODER_ONNX, ANCHORS_FILE}
    for name, digest in m.files.items():
        assert hashlib.sha256((rn50_nopos_bundle / name).read_bytes()).hexdigest() == digest
    # no temp dirs next to the bundle
    assert [p.name for p in rn50_nopos_bundle.parent.iterdir()] == [rn50_nopos_bundle.name]


@pytest.mark.torch
def test_text_anchors_match_open_clip(rn50_nopos_bundle):
    import open_clip
    from safetensors.numpy import load_file
    from safetensors import safe_open

    torch.manual_seed(SEED)
    model = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True).eval()
    tok = open_clip.get_tokenizer("RN50")
    with torch.no_grad():
        ref = model.encode_text(tok(list(TEXT_PROMPTS))).numpy()
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    got = load_file(str(rn50_nopos_bundle / ANCHORS_FILE))["text"]
    assert got.dtype == np.float32 and got.shape == (2, 1024)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    with safe_open(str(rn50_nopos_bundle / ANCHORS_FILE), framework="numpy") as f:
        recipe = json.loads(f.metadata()["text"])
    assert recipe["prompts"] == list(TEXT_PROMPTS)


@pytest.mark.torch
def test_nopos_wrapper_equals_open_clip_attnpool_with_zero_pos_embedding():
    """Independent computation: open_clip's own ModifiedResNet with the positional
    embedding zeroed is the no-pos model at the 224 size its attnpool accepts."""
    import open_clip

    wrapper = _rebuild("clip-rn50-nopos.openai")
    torch.manual_seed(SEED)
    model = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True).eval()
    with torch.no_grad():
        model.visual.attnpool.positional_embedding.zero_()
        x = torch.from_numpy(_pixels(2, 3, 224, 224))
        ref = model.encode_image(x).numpy()
    _close(_torch(wrapper, x.numpy()), ref)
    # and the with-pos model is open_clip's encode_image unchanged
    with_pos = _rebuild("clip-rn50.openai")
    torch.manual_seed(SEED)
    model = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True).eval()
    with torch.no_grad():
        np.testing.assert_allclose(_torch(with_pos, x.numpy()), model.encode_image(x).numpy(),
                                   atol=1e-6)


@pytest.mark.torch
def test_nopos_wrapper_equals_reference_math_at_any_size():
    """Re-implementation of the reference AttentionPool2d(pos_embedding=False) in the test."""
    import torch.nn.functional as F

    wrapper = _rebuild("clip-rn50-nopos.openai")
    v = wrapper.model.visual
    x = torch.from_numpy(_pixels(2, 3, 200, 296))
    with torch.no_grad():
        feats = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))
        n, c, h, w = feats.shape
        t = feats.reshape(n, c, h * w).permute(2, 0, 1)
        t = torch.cat([t.mean(0, keepdim=True), t], 0)
        p = v.attnpool
        q, k, val = p.q_proj(t), p.k_proj(t), p.v_proj(t)
        heads, dh = p.num_heads, c // p.num_heads
        L = t.shape[0]
        q = q.reshape(L, n, heads, dh).permute(1, 2, 0, 3)
        k = k.reshape(L, n, heads, dh).permute(1, 2, 0, 3)
        val = val.reshape(L, n, heads, dh).permute(1, 2, 0, 3)
        att = F.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1) @ val  # n, h, L, dh
        att = att.permute(2, 0, 1, 3).reshape(L, n, c)
        ref = p.c_proj(att)[0].numpy()
    _close(_torch(wrapper, x.numpy()), ref)


@pytest.mark.torch
def test_rn50_with_pos_bundle(rn50_bundle):
    m = _manifest(rn50_bundle)  # any size since issue 10 (resized positional embedding)
    assert m.encoder.dynamic_hw and m.encoder.input_size is None
    assert list(m.preprocess) == ["224", "512", "native"] and m.default_resolution == "224"
    model = _rebuild("clip-rn50.openai")
    for n, h, w in ((1, 224, 224), (2, 224, 224), (1, 161, 289)):
        x = _pixels(n, 3, h, w, seed=n)
        _close(_onnx(rn50_bundle, x), _torch(model, x))


@pytest.mark.torch
def test_vitb32_bundle(vitb32_bundle):
    import open_clip

    m = _manifest(vitb32_bundle)
    assert m.encoder.embed_dim == 512 and m.anchors == ["text"]
    model = _rebuild("vit-b-32.openai")
    # QuickGELU comes from the catalogue entry (OpenAI weights)
    assert isinstance(model.model.visual.transformer.resblocks[0].mlp.gelu,
                      open_clip.transformer.QuickGELU)
    for n in (1, 2):
        x = _pixels(n, 3, 224, 224, seed=10 + n)
        _close(_onnx(vitb32_bundle, x), _torch(model, x))


@pytest.mark.torch
def test_dinov2_bundle(dinov2_s_bundle):
    m = _manifest(dinov2_s_bundle)
    assert m.family == "dinov2" and m.encoder.embed_dim == 384
    assert m.anchors == [] and not (dinov2_s_bundle / ANCHORS_FILE).exists()
    model = _rebuild("dinov2-vits14.lvd142m")
    for n in (1, 2):
        x = _pixels(n, 3, 224, 224, seed=20 + n)
        _close(_onnx(dinov2_s_bundle, x), _torch(model, x))
