"""DINOv2: the timm build must give what the hub model gives at 224 (final-norm CLS token,
position grid 37x37 -> 16x16 resampled bicubic, no antialias, interpolate_offset 0.1)."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from quasar.models.catalog import get_model_spec  # noqa: E402

SPEC = get_model_spec("dinov2-vits14.lvd142m")


def _hub_pos_embed(pos_embed, w, h, patch=14, offset=0.1):
    """Written from the hub's DinoVisionTransformer.interpolate_pos_encoding."""
    n = pos_embed.shape[1] - 1
    m = int(math.sqrt(n))
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch, h // patch
    patch_pos = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    patch_pos = torch.nn.functional.interpolate(
        patch_pos, scale_factor=((w0 + offset) / m, (h0 + offset) / m), mode="bicubic",
        antialias=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([pos_embed[:, :1], patch_pos], dim=1)


def _hub_forward(native, x):
    """Hub-style forward of a native-resolution (518) model at x's size: patch tokens,
    CLS, position embedding interpolated at run time, blocks, final norm, CLS token."""
    b, _, h, w = x.shape
    tokens = native.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([native.cls_token.expand(b, -1, -1), tokens], dim=1)
    tokens = tokens + _hub_pos_embed(native.pos_embed, w, h)
    for blk in native.blocks:
        tokens = blk(tokens)
    return native.norm(tokens)[:, 0]


def _native_model(seed):
    torch.manual_seed(seed)
    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0).eval()


@pytest.mark.torch
def test_dinov2_encoder_equals_hub_style_forward():
    from quasar.export.encoders import build_image_encoder

    enc = build_image_encoder(SPEC, random_init=True, seed=0)
    native = _native_model(0)
    assert native.pos_embed.shape[1] == 1 + 37 * 37
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, ref = enc(x), _hub_forward(native, x)
    assert got.shape == (2, 384)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


@pytest.mark.torch
def test_dinov2_pos_embed_is_not_timms_antialiased_resample():
    """Guard against silently keeping timm's antialiased resampling."""
    from timm.layers import resample_abs_pos_embed

    from quasar.export.encoders import build_image_encoder

    enc = build_image_encoder(SPEC, random_init=True, seed=0)
    native = _native_model(0)
    with torch.no_grad():
        hub = _hub_pos_embed(native.pos_embed, 224, 224)
        timm_way = resample_abs_pos_embed(native.pos_embed, (16, 16), num_prefix_tokens=1)
    baked = enc.tower.pos_embed.detach()
    torch.testing.assert_close(baked, hub, rtol=0, atol=1e-7)
    assert (baked - timm_way).abs().max() > 1e-4


@pytest.mark.torch
def test_dinov2_hub_checkpoint(tmp_path):
    """A hub-format .pth (with mask_token) is converted to timm keys and used."""
    from quasar.export.encoders import build_image_encoder

    native = _native_model(1)
    sd = {k: v.clone() for k, v in native.state_dict().items()}
    sd["mask_token"] = torch.zeros(1, 384)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    enc = build_image_encoder(SPEC, checkpoint=path)
    assert enc.provenance["checkpoint_sha256"] and enc.provenance["random_init"] is False
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = _hub_forward(native, x)
        torch.testing.assert_close(enc(x), ref, rtol=0, atol=1e-5 * ref.abs().max().item())
        other = build_image_encoder(SPEC, random_init=True, seed=0)(x)
    assert (other - ref).abs().max() > 1e-3
