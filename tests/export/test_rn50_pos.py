"""clip-rn50.openai at any input size: the reference's resized positional embedding
(``clip_custom/clip.py`` ``AttentionPool2d.forward``, ``pos_embedding=True``), exported with
dynamic H×W, against an independent torch re-implementation of the reference's pool."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
F = torch.nn.functional

from quasar.models.catalog import get_model_spec  # noqa: E402
from quasar.constants import BUNDLE_JSON, ENCODER_ONNX  # noqa: E402

SEED = 0
# (N, H, W): square 224 (identity), non-square, and 512-shortest-side shapes
SHAPES = [(2, 224, 224), (1, 320, 256), (1, 250, 333), (2, 384, 512)]


def reference_attnpool(pool, x):
    """The reference's AttentionPool2d.forward(x, pos_embedding=True), written out here:
    every token queries (not only token 0) and the (HW+1) x C embedding is resized with
    F.interpolate(bicubic) as a one-channel image to (tokens, C)."""
    x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    pos = F.interpolate(pool.positional_embedding.unsqueeze(0).unsqueeze(0),
                        size=(x.size(0), x.size(2)), mode="bicubic").squeeze(0).squeeze(0)
    x = x + pos[:, None, :].to(x.dtype)
    x, _ = F.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False)
    return x[0]


def reference_forward(visual, pixels):
    v = visual
    x = v.stem(pixels)
    x = v.layer4(v.layer3(v.layer2(v.layer1(x))))
    return reference_attnpool(v.attnpool, x)


def cubic_1d(pos: np.ndarray, tokens: int) -> np.ndarray:
    """NumPy: Keys cubic (a=-0.75, half-pixel centres, edge clamp) along axis 0 only."""
    t0 = pos.shape[0]
    a = -0.75

    def w(d):
        d = abs(d)
        if d <= 1:
            return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
        if d < 2:
            return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
        return 0.0

    out = np.zeros((tokens, pos.shape[1]))
    for i in range(tokens):
        src = (i + 0.5) * t0 / tokens - 0.5
        base = int(np.floor(src))
        for k in range(base - 1, base + 3):
            out[i] += w(src - k) * pos[min(max(k, 0), t0 - 1)]
    return out


@pytest.fixture(scope="module")
def built():
    """Random-init clip-rn50.openai with bn3 re-initialised (open_clip zero-inits it, which
    leaves the residual branches silent) and a spread-out positional embedding."""
    from quasar.export.encoders import build_encoder

    b = build_encoder("clip-rn50.openai", random_init=True, seed=SEED)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in b.model.visual.named_parameters():
            if name.endswith("bn3.weight"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.5)
        pe = b.model.visual.attnpool.positional_embedding
        pe.copy_(torch.randn(pe.shape, generator=gen) * 3.0)
    return b


def test_resize_is_along_the_token_sequence_and_identity_at_224():
    from quasar.export.encoders import resize_positional_embedding

    pos = torch.randn(50, 12, generator=torch.Generator().manual_seed(3))
    assert torch.equal(resize_positional_embedding(pos, 50), pos)
    for tokens in (81, 129, 37):
        got = resize_positional_embedding(pos, tokens).double().numpy()
        np.testing.assert_allclose(got, cubic_1d(pos.double().numpy(), tokens), atol=5e-5)  # fp32


def test_torch_tower_equals_reference_pool_and_open_clip_at_224(built):
    tower = built.image_tower
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, h, w in SHAPES:
            x = torch.randn(n, 3, h, w, generator=gen)
            ref = reference_forward(built.model.visual, x)
            got = tower(x)
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
        x = torch.randn(2, 3, 224, 224, generator=gen)
        ref = built.model.encode_image(x)  # open_clip's own pool: fixed 7x7+1 embedding
        torch.testing.assert_close(tower(x), ref, rtol=0, atol=1e-4 * ref.abs().max().item())


def test_onnx_dynamic_hw_matches_reference_pool(built, tmp_path):
    from quasar.export.onnx import check_parity, export_onnx

    tower = built.image_tower
    exp = export_onnx(tower, tmp_path, dynamic_hw=True)
    report = check_parity(tower, exp.path, dynamic_hw=True,
                          cases=[(n, h, w) for n, h, w in SHAPES])
    assert report["passed"]
    sess = ort.InferenceSession(str(exp.path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(9)
    nopos = {}
    for n, h, w in SHAPES:
        x = torch.randn(n, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = reference_forward(built.model.visual, x).numpy()
            v = built.model.visual
            trunk = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))
            saved = v.attnpool.positional_embedding.detach().clone()
            v.attnpool.positional_embedding.zero_()
            try:
                nopos[(h, w)] = reference_attnpool(v.attnpool, trunk).numpy()
            finally:
                v.attnpool.positional_embedding.copy_(saved)
        got = sess.run(["embedding"], {"pixels": x.numpy()})[0]
        scale = np.abs(ref).max()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * scale)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= 0.99999
        # the positional embedding matters at every size (the test would notice dropping it)
        assert np.abs(got - nopos[(h, w)]).max() > 100 * 1e-4 * scale


@pytest.mark.torch
def test_rn50_bundle_is_dynamic_with_non_square_parity(rn50_bundle):
    m = json.loads((rn50_bundle / BUNDLE_JSON).read_text())
    spec = get_model_spec("clip-rn50.openai")
    assert m["encoder"]["dynamic_hw"] is True and m["encoder"]["input_size"] is None
    assert set(m["preprocess"]) == {"224", "512", "native"} == set(spec.resolutions)
    assert "clip_custom" in m["provenance"]["positional_embedding"]
    shapes = [tuple(c["shape"][2:]) for c in m["parity"]["cases"]]
    assert len([s for s in shapes if s[0] != s[1]]) >= 2 and m["parity"]["passed"]
    sess = ort.InferenceSession(str(rn50_bundle / ENCODER_ONNX),
                                providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[2:] == ["height", "width"]
