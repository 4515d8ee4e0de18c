"""Build the torch encoders of a catalogue entry: the image tower that becomes
``encoder.onnx`` and, for CLIP-family models, the full open_clip model for text anchors.

Weights come from one of three places: a local ``checkpoint`` file, the pretrained tag of
the catalogue entry (downloaded by open_clip / torch.hub on a connected machine), or a
seeded random initialisation (``random_init=True``, deterministic for a given ``seed``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from quasar.bundle.io import sha256_file  # noqa: F401 (re-exported)
from quasar.errors import CheckpointError
from quasar.models.catalog import ModelSpec, get_model_spec

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

# DINOv2 hub names -> timm architectures (same weights layout, ``mask_token`` dropped).
DINOV2_TIMM = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
}
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{name}/{name}_pretrain.pth"
DINOV2_INTERPOLATE_OFFSET = 0.1  # the hub model's ``interpolate_offset``
DINOV2_IMAGE_SIZE = 224


@dataclass
class BuiltEncoder:
    """What :func:`build_encoder` returns.

    Attributes:
        spec: the catalogue entry.
        image_tower: eval fp32 module, pixels [N,3,H,W] -> embedding [N,D] (unnormalised,
            except where ``spec.normalized_output``: CoCa, as open_clip's encode_image).
        model: the full open_clip model (text tower for text anchors), None for DINOv2.
        provenance: where the weights came from (recorded in ``bundle.json``).
    """

    spec: ModelSpec
    image_tower: nn.Module
    model: Optional[nn.Module]
    provenance: Dict[str, Any] = field(default_factory=dict)


class ImageEncoder(nn.Module):
    """Image tower of a spec: ``forward(pixels) -> embedding`` (fp32).

    Also carries ``spec``, ``provenance`` and (unregistered, so it does not join the
    state dict) the full ``model`` it was taken from. ``normalize=True`` L2-normalises the
    output (open_clip CoCa's ``encode_image`` default, which the reference calls).
    """

    def __init__(self, tower: nn.Module, spec: ModelSpec, model: Optional[nn.Module],
                 provenance: Dict[str, Any], first_output: bool = False,
                 normalize: bool = False) -> None:
        super().__init__()
        self.tower = tower
        self.spec = spec
        self.provenance = provenance
        self.first_output = first_output
        self.normalize = normalize
        self.__dict__["_full_model"] = model  # not a submodule

    @property
    def model(self) -> Optional[nn.Module]:
        return self.__dict__["_full_model"]

    @property
    def image_tower(self) -> "ImageEncoder":
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixels)
        if self.first_output and isinstance(out, (tuple, list)):
            out = out[0]
        if self.normalize:
            out = F.normalize(out, dim=-1)
        return out


class NoPosAttentionPool(nn.Module):
    """CLIP ModifiedResNet attention pool without the positional embedding.

    Same math as the reference ``clip_custom/clip.py`` AttentionPool2d with
    ``pos_embedding=False``: prepend the mean token, one multi-head attention with the
    q/k/v/c projections, keep token 0. Shares the projections with ``pool``; accepts any H×W.
    """

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.q_proj, self.k_proj = pool.q_proj, pool.k_proj
        self.v_proj, self.c_proj = pool.v_proj, pool.c_proj
        self.num_heads = pool.num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).permute(2, 0, 1)  # N C H W -> (HW) N C
        return self._attend(torch.cat([x.mean(dim=0, keepdim=True), x], dim=0))

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x,  # only token 0 is returned: query it alone
            embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, training=False, need_weights=False,
        )
        return out[0]


def resize_positional_embedding(pos: torch.Tensor, tokens) -> torch.Tensor:
    """The reference's resize of the attention-pool positional embedding [T0, C] to
    ``tokens`` rows (``clip_custom/clip.py`` ``AttentionPool2d.forward``, ``pos_embedding=True``):
    ``F.interpolate`` in bicubic mode of the matrix taken as a one-channel (T0 x C) image to
    (tokens x C). The width is unchanged, so it is a cubic interpolation along the flattened
    token sequence (mean token first, then the H x W grid row by row), not a 2-D spatial
    resize of the grid; the identity when ``tokens == T0`` (224 input, 7 x 7 + 1)."""
    return F.interpolate(pos[None, None], size=(tokens, pos.shape[1]), mode="bicubic")[0, 0]


class InterpolatedPosAttentionPool(NoPosAttentionPool):
    """CLIP ModifiedResNet attention pool with the reference's resized positional embedding:
    ``clip_custom/clip.py`` ``AttentionPool2d.forward(x, pos_embedding=True)`` - prepend the
    mean token, add :func:`resize_positional_embedding` to (HW+1) tokens, attention, token 0.
    Accepts any H×W; at 224 it equals open_clip's own attention pool."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__(pool)
        self.positional_embedding = pool.positional_embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.flatten(2).permute(2, 0, 1)  # N C H W -> (HW) N C
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        pos = resize_positional_embedding(self.positional_embedding, x.shape[0])
        return self._attend(x + pos[:, None, :].to(x.dtype))


class AnySizeModifiedResNet(nn.Module):
    """open_clip's ModifiedResNet trunk + an attention pool that accepts any input size:
    :class:`NoPosAttentionPool` (default) or :class:`InterpolatedPosAttentionPool`."""

    def __init__(self, visual: nn.Module, positional_embedding: bool = False) -> None:
        super().__init__()
        self.visual = visual
        self.pool = (InterpolatedPosAttentionPool(visual.attnpool) if positional_embedding
                     else NoPosAttentionPool(visual.attnpool))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.stem(pixels)
        x = v.layer4(v.layer3(v.layer2(v.layer1(x))))
        return self.pool(x)


NoPosModifiedResNet = AnySizeModifiedResNet  # the default pool drops the positional embedding


def _check_checkpoint_file(checkpoint: PathLike) -> Path:
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint file not found: {str(path)!r}. Pass an existing local weights file "
            "with --checkpoint, or --random-init for random weights."
        )
    return path


def _load_error(path: Path, spec: ModelSpec, err: Exception) -> CheckpointError:
    msg = str(err).strip().splitlines()
    detail = " ".join(line.strip() for line in msg[:6])
    if len(detail) > 600:
        detail = detail[:600] + " ..."
    return CheckpointError(
        f"Checkpoint {str(path)!r} does not fit model {spec.id!r} "
        f"({spec.family} {spec.source_name}); is it a checkpoint of another architecture? "
        f"Details: {type(err).__name__}: {detail}"
    )


def _provenance(spec: ModelSpec, source: str, checkpoint: Optional[Path], random_init: bool,
                seed: int) -> Dict[str, Any]:
    return {
        "source": source,
        "source_name": spec.source_name,
        "pretrained": None if (random_init or checkpoint) else spec.pretrained,
        "checkpoint": str(checkpoint.resolve()) if checkpoint else None,
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        "random_init": bool(random_init),
        "seed": int(seed) if random_init else None,
        "quick_gelu": spec.quick_gelu if spec.family == "open_clip" else None,
    }


# --------------------------------------------------------------------- open_clip family


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript zip (OpenAI's CLIP .pt files): torch.load(weights_only=True) refuses it."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _build_open_clip(spec: ModelSpec, checkpoint: Optional[Path], random_init: bool,
                     seed: int) -> BuiltEncoder:
    import open_clip

    kwargs = dict(force_quick_gelu=spec.quick_gelu)
    if checkpoint is None and not random_init:
        try:
            model = open_clip.create_model(spec.source_name, pretrained=spec.pretrained,
                                           **kwargs)
        except Exception as err:  # offline, missing tag, hub error
            raise CheckpointError(
                f"Could not get the pretrained weights {spec.pretrained!r} of {spec.id!r} "
                f"({type(err).__name__}: {str(err)[:300]}). Without internet, download them "
                "elsewhere and pass the file with --checkpoint PATH (or use --random-init "
                "for a random-weights test bundle)."
            ) from err
    else:
        torch.manual_seed(seed)
        model = open_clip.create_model(spec.source_name, pretrained=None, **kwargs)
        if checkpoint is not None:
            try:
                if _is_torchscript_archive(checkpoint):  # e.g. OpenAI's own RN50.pt
                    sd = torch.jit.load(str(checkpoint), map_location="cpu").state_dict()
                    transient = {n for n, _ in model.named_buffers()} - set(model.state_dict())
                    for key in {"input_resolution", "context_length", "vocab_size"} | transient:
                        sd.pop(key, None)
                    model.load_state_dict(sd, strict=True)
                else:
                    open_clip.load_checkpoint(model, str(checkpoint), strict=True)
            except Exception as err:
                raise _load_error(checkpoint, spec, err) from err
    model = model.float().eval()
    provenance = _provenance(spec, "open_clip", checkpoint, random_init, seed)
    provenance["source_version"] = open_clip.__version__

    visual = model.visual
    first_output = False
    if spec.source_name.startswith("RN"):
        if spec.positional_embedding and not spec.dynamic_hw:
            tower = visual
        else:
            tower = AnySizeModifiedResNet(visual, positional_embedding=spec.positional_embedding)
        if spec.positional_embedding and spec.dynamic_hw:
            provenance["positional_embedding"] = (
                "resized to (HW+1) tokens: bicubic F.interpolate of the (tokens x C) matrix "
                "(reference clip_custom/clip.py AttentionPool2d.forward, pos_embedding=True)")
    else:
        tower = visual
        first_output = spec.source_name.startswith("coca")  # CoCa visual -> (pooled, tokens)
    encoder = ImageEncoder(tower, spec, model, provenance, first_output=first_output,
                           normalize=spec.normalized_output).eval()
    return BuiltEncoder(spec, encoder, model, provenance)


# ------------------------------------------------------------------------ DINOv2 family


def hub_interpolate_pos_embed(pos_embed: torch.Tensor, image_size: int, patch_size: int,
                              offset: float = DINOV2_INTERPOLATE_OFFSET) -> torch.Tensor:
    """Position embedding [1, 1+M*M, D] resampled as the DINOv2 hub model does at
    ``image_size``: bicubic, no antialias, ``scale_factor=(g + offset) / M``."""
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    n, dim = patch_pos.shape[1], patch_pos.shape[2]
    m = int(math.isqrt(n))
    if m * m != n:
        raise ValueError(f"position grid of {n} tokens is not square")
    g = image_size // patch_size
    if g == m:
        return pos_embed.clone()
    grid = patch_pos.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    scale = (g + offset) / m
    grid = F.interpolate(grid, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    if tuple(grid.shape[-2:]) != (g, g):
        raise ValueError(f"resampled grid {tuple(grid.shape[-2:])} != {(g, g)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, g * g, dim)
    return torch.cat([cls_pos.float(), grid], dim=1).to(pos_embed.dtype)


def _dinov2_state_dict(path_or_url: str, is_url: bool) -> Dict[str, torch.Tensor]:
    if is_url:
        sd = torch.hub.load_state_dict_from_url(path_or_url, map_location="cpu")
    else:
        sd = torch.load(path_or_url, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise TypeError(f"expected a state dict, got {type(sd).__name__}")
    return sd


def dinov2_hub_to_timm(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Hub DINOv2 keys -> timm keys (same names; drops ``mask_token``, ``module.`` prefix)."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k == "mask_token":
            continue
        out[k] = v
    return out


def _build_dinov2(spec: ModelSpec, checkpoint: Optional[Path], random_init: bool,
                  seed: int) -> BuiltEncoder:
    import timm

    arch = DINOV2_TIMM.get(spec.source_name)
    if arch is None:
        raise CheckpointError(f"{spec.id}: no timm architecture known for {spec.source_name!r}")
    torch.manual_seed(seed)
    # Native 518 model first (37x37 grid, the hub's weights layout), then 224 the hub way.
    model = timm.create_model(arch, pretrained=False, num_classes=0, exportable=True)
    if checkpoint is not None or not random_init:
        src = str(checkpoint) if checkpoint else DINOV2_URL.format(name=spec.source_name)
        try:
            sd = _dinov2_state_dict(src, is_url=checkpoint is None)
        except Exception as err:
            if checkpoint is not None:
                raise CheckpointError(
                    f"Cannot read checkpoint {str(checkpoint)!r} for {spec.id!r}: "
                    f"{type(err).__name__}: {str(err)[:300]}"
                ) from err
            raise CheckpointError(
                f"Could not download the DINOv2 weights of {spec.id!r} from {src} "
                f"({type(err).__name__}: {str(err)[:200]}). Without internet, download the "
                "hub .pth elsewhere and pass it with --checkpoint PATH (or use --random-init)."
            ) from err
        try:
            model.load_state_dict(dinov2_hub_to_timm(sd), strict=True)
        except Exception as err:
            raise _load_error(checkpoint or Path(src), spec, err) from err
    patch = model.patch_embed.patch_size[0]
    pos_224 = hub_interpolate_pos_embed(model.pos_embed.detach(), DINOV2_IMAGE_SIZE, patch)
    model.set_input_size(img_size=(DINOV2_IMAGE_SIZE, DINOV2_IMAGE_SIZE))
    with torch.no_grad():
        model.pos_embed.data = pos_224.contiguous()
    model = model.float().eval()
    provenance = _provenance(spec, "timm", checkpoint, random_init, seed)
    provenance.update(source_version=timm.__version__, timm_arch=arch,
                      pos_embed=f"hub-style bicubic, offset {DINOV2_INTERPOLATE_OFFSET}, "
                                f"no antialias, {DINOV2_IMAGE_SIZE}x{DINOV2_IMAGE_SIZE}")
    encoder = ImageEncoder(model, spec, None, provenance).eval()
    return BuiltEncoder(spec, encoder, None, provenance)


# ---------------------------------------------------------------------------- public API


def build_encoder(spec: Union[ModelSpec, str], *, checkpoint: Optional[PathLike] = None,
                  random_init: bool = False, seed: int = 0) -> BuiltEncoder:
    """Build the torch encoders of ``spec`` (a ModelSpec or a model id).

    Raises CheckpointError for a missing/unreadable checkpoint, one of another
    architecture, or pretrained weights that cannot be downloaded.
    """
    if isinstance(spec, str):
        spec = get_model_spec(spec)
    if checkpoint is not None and random_init:
        raise CheckpointError("Pass either --checkpoint or --random-init, not both.")
    ckpt = _check_checkpoint_file(checkpoint) if checkpoint is not None else None
    if spec.family == "open_clip":
        built = _build_open_clip(spec, ckpt, random_init, seed)
    else:
        built = _build_dinov2(spec, ckpt, random_init, seed)
    for p in built.image_tower.parameters():
        p.requires_grad_(False)
    log.info("built %s (%s)", spec.id, "random init seed %d" % seed if random_init
             else (f"checkpoint {ckpt}" if ckpt else f"pretrained {spec.pretrained}"))
    return built


def build_image_encoder(spec: Union[ModelSpec, str], *, checkpoint: Optional[PathLike] = None,
                        random_init: bool = False, seed: int = 0) -> ImageEncoder:
    """The image tower of ``spec``: eval fp32 module, pixels [N,3,H,W] -> embedding [N,D].

    The returned :class:`ImageEncoder` also exposes ``.model`` (full open_clip model, for
    the text tower; None for DINOv2), ``.provenance`` and ``.spec``.
    """
    return build_encoder(spec, checkpoint=checkpoint, random_init=random_init,
                         seed=seed).image_tower
