"""Checkpoints are really used; bad inputs give clear errors and leave nothing behind."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from quasar.errors import CheckpointError, ExportError, UnknownModelError  # noqa: E402
from quasar.models.catalog import get_model_spec  # noqa: E402
from quasar.constants import ANCHORS_FILE, BUNDLE_JSON, ENCODER_ONNX  # noqa: E402

VIT = "vit-b-32.openai"
DINO = "dinov2-vits14.lvd142m"


def _onnx(bundle, x):
    sess = ort.InferenceSession(str(bundle / ENCODER_ONNX), providers=["CPUExecutionProvider"])
    return sess.run(["embedding"], {"pixels": x})[0]


def _only(parent, name):
    """Nothing but ``name`` (if given) in ``parent``: no partial bundle, no temp dirs."""
    left = sorted(p.name for p in parent.iterdir())
    assert left == ([name] if name else []), left


@pytest.mark.torch
def test_checkpoint_weights_are_used(tmp_path):
    import open_clip
    from safetensors.numpy import load_file

    from quasar.export.bundle import export_bundle
    from quasar.export.encoders import build_image_encoder, sha256_file

    torch.manual_seed(1)
    seed1 = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True).eval()
    ckpt = tmp_path / "vitb32_seed1.pt"
    torch.save(seed1.state_dict(), ckpt)
    out = tmp_path / "out" / "bundle"
    export_bundle(VIT, out, checkpoint=ckpt)
    manifest = json.loads((out / BUNDLE_JSON).read_text())
    prov = manifest["provenance"]
    assert prov["checkpoint"] == str(ckpt.resolve())
    assert prov["checkpoint_sha256"] == sha256_file(ckpt)
    assert prov["random_init"] is False and prov["pretrained"] is None

    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    got = _onnx(out, x)
    with torch.no_grad():
        ref1 = seed1.encode_image(torch.from_numpy(x)).numpy()
        ref0 = build_image_encoder(get_model_spec(VIT), random_init=True, seed=0)(
            torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref1, rtol=0, atol=1e-4 * np.abs(ref1).max())
    assert np.abs(got - ref0).max() > 100 * 1e-4 * np.abs(ref1).max()
    # text anchors come from the checkpoint's text tower too
    tok = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        t = seed1.encode_text(tok(["Good photo.", "Bad photo."])).numpy()
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    np.testing.assert_allclose(load_file(str(out / ANCHORS_FILE))["text"], t, atol=1e-6)


def test_unknown_model_suggests_close_match(tmp_path):
    from quasar.export.bundle import export_bundle

    with pytest.raises(UnknownModelError, match="clip-rn50-nopos.openai"):
        export_bundle("clip-rn50-nopos.opena", tmp_path / "b", random_init=True)
    _only(tmp_path, None)


@pytest.mark.torch
def test_missing_checkpoint(tmp_path):
    from quasar.export.bundle import export_bundle

    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="nope.pt"):
        export_bundle(DINO, tmp_path / "b", checkpoint=missing)
    _only(tmp_path, None)


@pytest.mark.torch
def test_checkpoint_of_another_architecture(tmp_path):
    import timm

    from quasar.export.bundle import export_bundle

    torch.manual_seed(0)
    dino = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    ckpt = tmp_path / "dino.pth"
    torch.save(dino.state_dict(), ckpt)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError) as info:
        export_bundle(VIT, out / "b", checkpoint=ckpt)
    msg = str(info.value)
    assert "dino.pth" in msg and VIT in msg and "another architecture" in msg
    _only(out, None)
    # and the other way round: a CLIP state dict for DINOv2
    import open_clip

    clip_sd = open_clip.create_model("RN50", pretrained=None).visual.state_dict()
    ckpt2 = tmp_path / "rn50_visual.pt"
    torch.save(clip_sd, ckpt2)
    with pytest.raises(CheckpointError, match=DINO):
        export_bundle(DINO, out / "b", checkpoint=ckpt2)
    _only(out, None)


@pytest.mark.torch
def test_unreadable_checkpoint(tmp_path):
    from quasar.export.bundle import export_bundle

    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        export_bundle(DINO, tmp_path / "b", checkpoint=bad)


@pytest.mark.torch
def test_existing_output_dir(tmp_path):
    from quasar.export.bundle import export_bundle

    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_bundle(DINO, out, random_init=True)
    assert (out / "keep.txt").read_text() == "mine"
    _only(tmp_path, "b")
    # overwrite replaces it atomically
    export_bundle(DINO, out, random_init=True, overwrite=True)
    assert (out / BUNDLE_JSON).is_file() and not (out / "keep.txt").exists()
    _only(tmp_path, "b")


@pytest.mark.torch
def test_parity_failure_leaves_nothing(tmp_path, monkeypatch):
    import quasar.export.onnx as qonnx
    from quasar.export.bundle import export_bundle

    monkeypatch.setattr(qonnx, "MIN_COSINE", 1.5)  # impossible criterion
    with pytest.raises(ExportError, match="parity"):
        export_bundle(DINO, tmp_path / "b", random_init=True)
    _only(tmp_path, None)


@pytest.mark.torch
def test_checkpoint_and_random_init_exclusive(tmp_path):
    from quasar.export.encoders import build_image_encoder

    f = tmp_path / "x.pt"
    f.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not both"):
        build_image_encoder(get_model_spec(DINO), checkpoint=f, random_init=True)


def test_add_anchor_set_keeps_bundle_consistent(tmp_path, rn50_nopos_bundle):
    """Adding a set to an exported bundle keeps bundle.json consistent (checked with hashlib)
    and the runtime still loads it."""
    import hashlib
    import shutil

    from safetensors.numpy import load_file

    from quasar.bundle import add_anchor_set
    from quasar.bundle.io import load_bundle

    b = tmp_path / "copy"
    shutil.copytree(rn50_nopos_bundle, b)
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((2, 1024)).astype(np.float32)
    add_anchor_set(b, "extra", arr, {"kind": "test"})
    m = json.loads((b / BUNDLE_JSON).read_text())
    assert m["anchors"] == ["text", "extra"]
    for name, digest in m["files"].items():
        assert hashlib.sha256((b / name).read_bytes()).hexdigest() == digest
    got = load_file(str(b / ANCHORS_FILE))["extra"]
    np.testing.assert_allclose(got, arr / np.linalg.norm(arr, axis=1, keepdims=True), atol=1e-6)
    assert set(load_bundle(b).anchors) == {"text", "extra"}


@pytest.mark.torch
def test_pretrained_unavailable_suggests_checkpoint(tmp_path, monkeypatch):
    """Offline: the pretrained download fails -> CheckpointError pointing to --checkpoint."""
    import open_clip

    from quasar.export.bundle import export_bundle

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        raise AssertionError("unexpected random-init build")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(CheckpointError, match="--checkpoint") as info:
        export_bundle(VIT, tmp_path / "b")
    assert "openai" in str(info.value)
    _only(tmp_path, None)


@pytest.mark.torch
def test_torchscript_checkpoint_like_openai(tmp_path):
    """OpenAI ships CLIP weights as TorchScript archives (RN50.pt); they load too."""
    import warnings

    import open_clip

    from quasar.export.encoders import build_image_encoder

    torch.manual_seed(3)
    ref = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True).eval()
    path = tmp_path / "RN50.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(ref).save(str(path))
    enc = build_image_encoder(get_model_spec("clip-rn50.openai"), checkpoint=path)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = ref.encode_image(x)
        torch.testing.assert_close(enc(x), want, rtol=0, atol=1e-6)
