"""The bundle contract between export (writes) and runtime (reads): file names and the
schema of ``bundle.json``. Pure data and JSON; no torch, no onnxruntime.

A bundle directory holds::

    bundle.json            this manifest
    encoder.onnx           image tower: ``pixels`` float32 [N,3,H,W] -> ``embedding`` [N,D]
    encoder.onnx.data      (only for models over 2 GB: ONNX external data)
    anchors.safetensors    one float32 [2, D] tensor per anchor set, row 0 good, row 1 bad,
                           L2-normalised; metadata[set name] = JSON recipe of that set
    variants/<name>/...    (optional) precision variants from ``quasar optimize``, each
                           recorded in ``bundle.json`` ``variants`` with its agreement report
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from .preprocess import PreprocessCfg

SCHEMA_VERSION = 1
BUNDLE_JSON = "bundle.json"
ENCODER_ONNX = "encoder.onnx"
ANCHORS_FILE = "anchors.safetensors"
INPUT_NAME = "pixels"
OUTPUT_NAME = "embedding"
TEXT_PROMPTS = ("Good photo.", "Bad photo.")  # the reference's CLIP-IQA prompts (main.py)


@dataclass(frozen=True)
class EncoderInfo:
    """What the ONNX graph expects and returns."""

    file: str = ENCODER_ONNX
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    embed_dim: int = 0
    dynamic_hw: bool = False
    input_size: Optional[int] = 224  # fixed square size, None when H×W are dynamic
    precision: str = "fp32"
    opset: Optional[int] = None
    external_data: Optional[str] = None  # file name of ONNX external data, if any


PRECISIONS = ("fp32", "int8", "bf16", "fp16")
VARIANT_KINDS = ("model", "decode")


@dataclass(frozen=True)
class VariantInfo:
    """A reduced-precision encoder (or fast-decode setting) written by ``quasar optimize``,
    with the agreement report that gated it against the fp32 encoder.

    ``kind`` is ``"model"`` (``files[0]`` is the variant's model: ONNX for onnxruntime,
    OpenVINO IR ``.xml`` + ``.bin`` for openvino) or ``"decode"`` (``--fast-decode``: no
    files; the fp32 encoder with DCT-scaled JPEG decoding). ``passed`` is the gate's verdict;
    the runtime never uses a variant whose ``passed`` is false.
    """

    precision: str
    backend: str
    files: List[str] = field(default_factory=list)
    kind: str = "model"
    device: str = "cpu"                     # where the variant runs fast: cpu | cuda
    resolution: Optional[str] = None        # resolution of the agreement measurement
    tool: str = ""                          # quantisation / conversion tool
    tool_version: str = ""
    calibration_sha256: str = ""            # sha256 over the calibration images' bytes
    calibration_count: int = 0
    holdout_sha256: str = ""
    holdout_count: int = 0
    gate: Dict[str, float] = field(default_factory=dict)    # thresholds applied
    passed: bool = False
    report: Dict[str, Any] = field(default_factory=dict)    # the agreement report
    created_at: str = ""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"variant precision must be one of {PRECISIONS}, "
                             f"got {self.precision!r}")
        if self.kind not in VARIANT_KINDS:
            raise ValueError(f"variant kind must be one of {VARIANT_KINDS}, got {self.kind!r}")
        if self.kind == "model" and not self.files:
            raise ValueError("a model variant needs its model file(s)")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "VariantInfo":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class BundleManifest:
    """Everything ``bundle.json`` says.

    ``preprocess`` maps each supported resolution (``"224"``, ``"512"``, ``"native"``) to its
    :class:`PreprocessCfg`. ``provenance`` records the weights (``source``, ``pretrained``,
    ``checkpoint``, ``checkpoint_sha256``, ``random_init``, ``seed``), library versions and
    export time. ``parity`` is the export's ONNX-vs-torch report. ``files`` maps every other
    file of the bundle to its sha256.
    """

    model: str
    family: str
    encoder: EncoderInfo
    preprocess: Dict[str, PreprocessCfg]
    default_resolution: str
    anchors: List[str] = field(default_factory=list)
    provenance: Dict[str, Any] = field(default_factory=dict)
    parity: Dict[str, Any] = field(default_factory=dict)
    files: Dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # name -> precision variant / fast-decode record (``quasar optimize``); absent in old
    # bundles (loads as {}), ignored by runtimes that predate it
    variants: Dict[str, VariantInfo] = field(default_factory=dict)

    @property
    def random_init(self) -> bool:
        return bool(self.provenance.get("random_init", False))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "model": self.model,
            "family": self.family,
            "encoder": asdict(self.encoder),
            "preprocess": {k: v.to_dict() for k, v in self.preprocess.items()},
            "default_resolution": self.default_resolution,
            "anchors": list(self.anchors),
            "provenance": self.provenance,
            "parity": self.parity,
            "files": dict(self.files),
            **({"variants": {k: asdict(v) for k, v in self.variants.items()}}
               if self.variants else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BundleManifest":
        """Parse a manifest dict; raises KeyError/TypeError/ValueError on bad structure
        (the runtime's loader turns those into a BundleError naming the file)."""
        return cls(
            model=d["model"],
            family=d["family"],
            encoder=EncoderInfo(**d["encoder"]),
            preprocess={k: PreprocessCfg.from_dict(v) for k, v in d["preprocess"].items()},
            default_resolution=d["default_resolution"],
            anchors=list(d.get("anchors", [])),
            provenance=dict(d.get("provenance", {})),
            parity=dict(d.get("parity", {})),
            files=dict(d.get("files", {})),
            schema_version=int(d["schema_version"]),
            variants={str(k): VariantInfo.from_dict(v)
                      for k, v in (d.get("variants") or {}).items()},
        )
