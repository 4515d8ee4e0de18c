"""Scorer: scores/embeddings vs the torch model + the reference formula on the same files;
batching, native-resolution grouping, several anchor sets, error collection, default bundle."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

import rt_helpers  # noqa: E402

from quasar.errors import (BundleError, DeviceError, ImageNotFoundError,  # noqa: E402
                           NotAnImageError)
from quasar.bundle.io import load_bundle  # noqa: E402
from quasar.runtime.scorer import Scorer, ScoreResult
from quasar.runtime.scoring import quasar_scores  # noqa: E402

pytest.importorskip("onnxruntime")


# ----------------------------------------------------------------------------- files

@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Photographs (skimage.data) as small JPEG/PNG files, one non-square, one grayscale,
    one RGBA, one palette."""
    data = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("scorer_images")
    out = []
    for i, (name, size) in enumerate([("astronaut", (256, 256)), ("coffee", (240, 160)),
                                      ("chelsea", (200, 150)), ("camera", (180, 230))]):
        im = Image.fromarray(getattr(data, name)()).resize(size, Image.BICUBIC)
        p = root / f"{name}.{'jpg' if i % 2 else 'png'}"
        im.save(p)
        out.append(p)
    rgba = Image.open(out[1]).convert("RGBA")
    rgba.putalpha(128)
    p = root / "coffee_rgba.png"
    rgba.save(p)
    out.append(p)
    p = root / "chelsea_pal.png"
    Image.open(out[2]).convert("P").save(p)
    out.append(p)
    return out


# ----------------------------------------------------------------------------- torch side

def _torch_reference_scores(emb, anchors):
    """The reference main.py, in torch: x / ||x||, (1/0.07) * x @ anchors.T, softmax, [0]."""
    import torch

    logit_scale = torch.nn.Parameter(torch.tensor([1 / 0.07]))
    with torch.no_grad():
        x = emb / emb.norm(dim=-1, keepdim=True)
        logits = logit_scale * x @ anchors.t()
        probs = logits.reshape(logits.shape[0], -1, 2).softmax(dim=-1)
        return probs[..., 0].mean(dim=1).numpy()


def _rn50_nopos_forward(visual, x):
    """The reference's CLIP RN50 forward with pos_embedding=False (clip_custom/clip.py):
    full self-attention over [mean token, HW tokens] without positional embedding, token 0."""
    import torch
    import torch.nn.functional as F

    x = visual.stem(x)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    p = visual.attnpool
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    x, _ = F.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=p.num_heads,
        q_proj_weight=p.q_proj.weight, k_proj_weight=p.k_proj.weight,
        v_proj_weight=p.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([p.q_proj.bias, p.k_proj.bias, p.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=p.c_proj.weight, out_proj_bias=p.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False)
    return x[0]


def _reference_transform(res):
    import open_clip
    from torchvision.transforms import Compose, Normalize, ToTensor
    from quasar.models.preprocess import OPENAI_CLIP_MEAN as M, OPENAI_CLIP_STD as S

    if res == "224":
        return open_clip.image_transform(224, is_train=False, mean=M, std=S)
    return Compose([lambda im: im.convert("RGB"), ToTensor(), Normalize(M, S)])


_MODELS: dict = {}  # torch models rebuilt once per module


def _torch_embed(model_id, files, res):
    """Embeddings of ``files`` by the torch model (rebuilt with the fixture's seed) and the
    reference transforms, plus the torch text anchors."""
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from quasar.export.encoders import build_encoder
    from quasar.models.catalog import get_model_spec

    spec = get_model_spec(model_id)
    if model_id not in _MODELS:
        _MODELS[model_id] = build_encoder(spec, random_init=True, seed=0).model.eval()
    model = _MODELS[model_id]
    tf = _reference_transform(res)
    embs = []
    with torch.no_grad():
        for f in files:
            with Image.open(f) as im:
                x = tf(im)[None]
            if spec.positional_embedding:
                embs.append(model.encode_image(x).float())
            else:
                embs.append(_rn50_nopos_forward(model.visual, x).float())
        tokens = open_clip.get_tokenizer(spec.source_name)(["Good photo.", "Bad photo."])
        text = model.encode_text(tokens).float()
        text = text / text.norm(dim=-1, keepdim=True)
    return torch.cat(embs), text


def _spread_anchors(emb):
    """Anchors that spread the scores of random-weight embeddings far apart (random-init
    text anchors give ~equal scores for every image, a weak test)."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    d = e - e.mean(axis=0)
    a = np.stack([d[0], d[1]])
    return rt_helpers.unit(a)


def _check_against_torch(bundle_dir, model_id, files, res):
    import torch

    ref_emb, ref_text = _torch_embed(model_id, files, res)
    s = Scorer.from_bundle(bundle_dir, resolution=res, batch_size=3, device="cpu")
    emb = s.embed(files)
    r = ref_emb.numpy()
    scale = np.abs(r).max()
    np.testing.assert_allclose(emb, r, rtol=0, atol=2e-4 * scale)
    cos = (emb * r).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(r, axis=1)
    assert cos.min() > 1 - 1e-6
    # the bundle's text anchors are the torch text tower's
    np.testing.assert_allclose(s.bundle.anchors["text"], ref_text.numpy(), atol=1e-5)
    np.testing.assert_allclose(s.score(files), _torch_reference_scores(ref_emb, ref_text),
                               atol=1e-5)
    # scores that really vary (spread anchors): same formula, same values
    spread = _spread_anchors(r.astype(np.float64))
    want = _torch_reference_scores(ref_emb, torch.from_numpy(spread))
    assert want.max() - want.min() > 0.05  # >> the tolerance: the check has teeth
    np.testing.assert_allclose(quasar_scores(emb, spread), want, atol=2e-5)


@pytest.mark.torch
def test_rn50_nopos_224_matches_torch(rn50_nopos_bundle, image_files):
    _check_against_torch(rn50_nopos_bundle, "clip-rn50-nopos.openai", image_files, "224")


@pytest.mark.torch
def test_rn50_nopos_native_matches_torch(rn50_nopos_bundle, image_files):
    files = image_files[1:4]  # 240x160, 200x150, 180x230: non-square, three shapes
    _check_against_torch(rn50_nopos_bundle, "clip-rn50-nopos.openai", files, "native")


@pytest.mark.torch
def test_vitb32_224_matches_torch(vitb32_bundle, image_files):
    _check_against_torch(vitb32_bundle, "vit-b-32.openai", image_files[:4], "224")


# ----------------------------------------------------------------------------- tiny bundle

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("onnx")
    return rt_helpers.write_tiny_bundle(tmp_path_factory.mktemp("tiny") / "b")


def _numpy_scores(emb, anchors):
    """Independent re-implementation: explicit two-way softmax of cos / 0.07."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    logits = (x @ anchors.astype(np.float64).T) / 0.07
    ex = np.exp(logits - logits.max(axis=1, keepdims=True))
    return ex[:, 0] / ex.sum(axis=1)


def test_tiny_scores_and_several_anchor_sets(tiny, image_files):
    s = Scorer.from_bundle(tiny, anchors="all", batch_size=4)
    assert s.anchor_names == ["text", "kadis"] and s.embed_dim == rt_helpers.TINY_DIM
    assert s.resolution == "224" and s.device == "cpu"
    pix = np.stack([s.load_image(f) for f in image_files])
    ref_emb = rt_helpers.tiny_reference_embedding(pix)
    np.testing.assert_allclose(s.embed(image_files), ref_emb, rtol=1e-4, atol=1e-4)
    all_scores = s.score_all(image_files)
    assert list(all_scores) == ["text", "kadis"]
    for name, a in rt_helpers.tiny_anchor_sets().items():
        np.testing.assert_allclose(all_scores[name], _numpy_scores(ref_emb, a), atol=1e-6)
    np.testing.assert_array_equal(s.score(image_files), all_scores["text"])
    assert list(s.scores_from_embeddings(ref_emb)) == ["text", "kadis"]


def test_anchor_selection(tiny):
    b = load_bundle(tiny)
    assert Scorer(b, anchors="kadis,text").anchor_names == ["kadis", "text"]
    assert Scorer(b, anchors=["kadis"]).anchor_names == ["kadis"]
    assert Scorer(b, anchors=None).anchor_names == ["text"]
    with pytest.raises(BundleError, match=r"no anchor set \['ava'\].*available: \['text', "
                                          r"'kadis'\]"):
        Scorer(b, anchors="ava")
    nontext = dataclasses.replace(b, anchors={"kadis": b.anchors["kadis"]})
    assert Scorer(nontext).anchor_names == ["kadis"]  # default "text" falls back (DINOv2)


def test_native_groups_by_shape_in_input_order(tiny, image_files):
    s = Scorer.from_bundle(tiny, resolution="native", batch_size=2)
    files = image_files * 2  # four distinct shapes, interleaved
    pix = [s.load_image(f) for f in files]
    assert len({p.shape for p in pix}) == 4
    ref = np.stack([rt_helpers.tiny_reference_embedding(p[None])[0] for p in pix])
    np.testing.assert_allclose(s.embed(files), ref, rtol=1e-4, atol=1e-4)
    serial = Scorer.from_bundle(tiny, resolution="native", batch_size=1, decode_workers=1)
    np.testing.assert_allclose(serial.embed(files), ref, rtol=1e-4, atol=1e-4)
    assert pix[0].shape == (3, 256, 256)  # native: nothing resized


def test_collect_errors(tiny, image_files, tmp_path):
    bad = tmp_path / "text.jpg"
    bad.write_text("not an image")
    inputs = [image_files[0], tmp_path / "missing.jpg", image_files[1], bad]
    s = Scorer.from_bundle(tiny, anchors="all", batch_size=2)
    res = s.score(inputs, errors="collect")
    assert isinstance(res, ScoreResult)
    assert np.isnan(res.values[[1, 3]]).all() and np.isfinite(res.values[[0, 2]]).all()
    assert res.errors[0] is None and res.errors[2] is None
    assert isinstance(res.errors[1], ImageNotFoundError) and "missing.jpg" in str(res.errors[1])
    assert isinstance(res.errors[3], NotAnImageError) and "text.jpg" in str(res.errors[3])
    np.testing.assert_allclose(res.values[[0, 2]], s.score([image_files[0], image_files[1]]))
    assert res.ok.tolist() == [True, False, True, False]
    allres = s.score_all(inputs, errors="collect")
    assert set(allres.values) == {"text", "kadis"} and np.isnan(allres.values["kadis"][1])
    emb = s.embed(inputs, errors="collect")
    assert emb.values.shape == (4, rt_helpers.TINY_DIM) and np.isnan(emb.values[1]).all()
    with pytest.raises(ImageNotFoundError, match="missing.jpg"):
        s.score(inputs)
    with pytest.raises(ValueError, match="errors must be"):
        s.score(inputs, errors="ignore")


def test_input_forms(tiny, image_files):
    s = Scorer.from_bundle(tiny)
    one = s.score(image_files[0])
    assert one.shape == (1,)
    np.testing.assert_array_equal(s.score(str(image_files[0])), one)
    np.testing.assert_array_equal(s.score(image_files[0].read_bytes()), one)
    assert s.score([]).shape == (0,) and s.embed([]).shape == (0, rt_helpers.TINY_DIM)
    arr = np.stack([np.asarray(Image.open(image_files[0]).convert("RGB"))] * 2)
    assert s.score(arr).shape == (2,)  # [N, H, W, 3] batch of arrays


def test_fixed_size_graph_checks_input(tmp_path):
    pytest.importorskip("onnx")
    b = rt_helpers.write_tiny_bundle(tmp_path / "fixed", fixed=224)
    s = Scorer.from_bundle(b)
    with pytest.raises(ValueError, match="takes 224x224 inputs"):
        s.embed_pixels(np.zeros((1, 3, 100, 100), np.float32))
    assert s.embed_pixels(np.zeros((5, 3, 224, 224), np.float32)).shape == (5, 8)
    with pytest.raises(BundleError, match="supports resolutions"):
        Scorer.from_bundle(b, resolution="native")


def test_cuda_on_cpu_machine(tiny):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(DeviceError, match=r'pip install "quasar-iqa\[gpu\]"'):
        Scorer.from_bundle(tiny, device="cuda")


def test_tampered_bundle_refused(tmp_path):
    pytest.importorskip("onnx")
    b = rt_helpers.write_tiny_bundle(tmp_path / "b")
    data = bytearray((b / "encoder.onnx").read_bytes())
    data[-3] ^= 0xFF
    (b / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="encoder.onnx: sha256 mismatch"):
        Scorer.from_bundle(b)


# ----------------------------------------------------------------------------- default bundle

def test_default_bundle_missing_offline(tmp_path, monkeypatch):
    from quasar.runtime import default_bundle

    monkeypatch.setenv("QUASAR_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(default_bundle, "export_available", lambda: False)
    with pytest.raises(BundleError) as ei:
        Scorer.from_bundle()
    msg = str(ei.value)
    assert "quasar export clip-rn50-nopos.openai" in msg and "--checkpoint PATH" in msg
    assert "--bundle DIR" in msg and str(tmp_path / "home") in msg


def test_default_bundle_export_fails(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import quasar.export.bundle as export_bundle_mod
    from quasar.runtime import default_bundle

    monkeypatch.setenv("QUASAR_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(default_bundle, "export_available", lambda: True)
    monkeypatch.setattr(default_bundle, "weights_reachable", lambda host: True)

    def offline(*a, **k):
        raise OSError("no internet")

    monkeypatch.setattr(export_bundle_mod, "export_bundle", offline)
    with pytest.raises(BundleError, match=r"exporting vit-b-32.openai failed.*no internet.*"
                                          r"quasar export vit-b-32.openai"):
        Scorer.from_bundle(model="vit-b-32.openai")


def test_default_bundle_unreachable_weights_fail_fast(tmp_path, monkeypatch):
    from quasar.runtime import default_bundle

    monkeypatch.setenv("QUASAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(default_bundle, "export_available", lambda: True)
    with pytest.raises(BundleError, match=r"huggingface.co is unreachable.*--checkpoint PATH"):
        Scorer.from_bundle()
    assert not (tmp_path / "home" / "bundles" / "clip-rn50-nopos.openai").exists()


def test_default_bundle_from_cache(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.setenv("QUASAR_HOME", str(tmp_path / "home"))
    rt_helpers.write_tiny_bundle(tmp_path / "home" / "bundles" / "clip-rn50-nopos.openai")
    s = Scorer.from_bundle()
    assert s.bundle.path == tmp_path / "home" / "bundles" / "clip-rn50-nopos.openai"
