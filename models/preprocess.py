"""Preprocessing configuration shared by export (to record it) and runtime (to apply it).

Pure data: no numpy, no Pillow, no torch. Mirrors open_clip's ``PreprocessCfg`` idea: the
transform is described by a frozen dataclass that travels inside every bundle.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

from quasar.constants import RESOLUTIONS  # noqa: F401 (one definition; re-exported)

OPENAI_CLIP_MEAN: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

RESIZE_MODES = ("shortest", "none")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
MAX_SIZE = 4096  # resize / crop edge limit: a bundle asking for more is refused


@dataclass(frozen=True)
class PreprocessCfg:
    """How an image becomes the encoder's input tensor.

    Order (as open_clip / the QUASAR reference): resize the shortest side to ``size``
    (``resize_mode="shortest"``; torchvision ``Resize(int)`` semantics, long side truncated),
    centre crop to ``crop`` if set, convert to RGB, scale to [0, 1], normalise.
    ``resize_mode="none"`` keeps the native resolution.
    """

    resize_mode: str = "shortest"
    size: Optional[int] = 224
    crop: Optional[int] = 224
    interpolation: str = "bicubic"
    mean: Tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: Tuple[float, float, float] = OPENAI_CLIP_STD

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.resize_mode == "shortest" and (self.size is None or self.size <= 0):
            raise ValueError("resize_mode='shortest' needs a positive size")
        for name in ("size", "crop"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                                  or not 1 <= v <= MAX_SIZE):
                raise ValueError(f"{name} must be an integer in [1, {MAX_SIZE}] or null, "
                                 f"got {v!r}"[:200])
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need three values each")
        for v in tuple(self.mean) + tuple(self.std):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"mean and std must be finite numbers, got {v!r}"[:200])
        if not all(-1.0 <= m <= 2.0 for m in self.mean) or \
                not all(1e-3 <= s <= 10.0 for s in self.std):
            raise ValueError(f"mean must be in [-1, 2] and std in [0.001, 10] (pixels are "
                             f"scaled to [0, 1]), got mean {list(self.mean)} std {list(self.std)}")

    @property
    def fixed_size(self) -> Optional[Tuple[int, int]]:
        """(H, W) every output has, or None when the output size follows the image."""
        if self.crop is not None:
            return (self.crop, self.crop)
        return None

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PreprocessCfg":
        known = {k: d[k] for k in ("resize_mode", "size", "crop", "interpolation") if k in d}
        if not isinstance(d.get("mean"), (list, tuple)) or not isinstance(d.get("std"), (list, tuple)):
            raise TypeError("preprocess mean and std must be lists of three numbers")
        return cls(mean=tuple(d["mean"]), std=tuple(d["std"]), **known)


def clip_eval_cfg(size: int = 224, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> PreprocessCfg:
    """open_clip's eval transform: shortest side to ``size`` (bicubic), centre crop."""
    return PreprocessCfg("shortest", size, size, "bicubic", tuple(mean), tuple(std))


def resolution_cfg(resolution: str, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> PreprocessCfg:
    """The three resolutions of the QUASAR reference (``generate_embeddigs.py``)."""
    if resolution == "224":
        return clip_eval_cfg(224, mean, std)
    if resolution == "512":
        return PreprocessCfg("shortest", 512, None, "bicubic", tuple(mean), tuple(std))
    if resolution == "native":
        return PreprocessCfg("none", None, None, "bicubic", tuple(mean), tuple(std))
    raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
