"""The schema of ``bundle.json``: the contract between export (writes) and runtime (reads).
Pure data and JSON; no torch, no onnxruntime. File names live in :mod:`quasar.constants`.

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
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from quasar.constants import (ANCHORS_FILE, BUNDLE_JSON, ENCODER_ONNX,  # noqa: F401
                              INPUT_NAME, OUTPUT_NAME, PRECISIONS, SCHEMA_VERSION)
from quasar.models.preprocess import PreprocessCfg

MAX_EMBED_DIM = 1 << 16
MAX_INPUT_SIZE = 4096
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_str(name: str, v: Any) -> None:
    if not isinstance(v, str) or not v:
        raise TypeError(f"{name} must be a non-empty string, got {v!r}"[:200])


def _check_bool(name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be true or false, got {v!r}"[:200])


def _check_int(name: str, v: Any, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an integer, got {v!r}"[:200])
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")


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
    normalized_output: bool = False  # the graph's output is L2-normalised (CoCa)

    def __post_init__(self) -> None:
        for name in ("file", "input_name", "output_name", "precision"):
            _check_str(f"encoder.{name}", getattr(self, name))
        _check_int("encoder.embed_dim", self.embed_dim, 1, MAX_EMBED_DIM)
        _check_bool("encoder.dynamic_hw", self.dynamic_hw)
        _check_bool("encoder.normalized_output", self.normalized_output)
        if self.input_size is not None:
            _check_int("encoder.input_size", self.input_size, 1, MAX_INPUT_SIZE)
        if self.opset is not None:
            _check_int("encoder.opset", self.opset, 1, 1000)
        if self.external_data is not None:
            _check_str("encoder.external_data", self.external_data)


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
        if not isinstance(d, dict):
            raise TypeError("a variant record must be an object")
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

    def __post_init__(self) -> None:
        _check_str("model", self.model)
        _check_str("family", self.family)
        _check_int("schema_version", self.schema_version, 1, 1 << 30)
        if not isinstance(self.encoder, EncoderInfo):
            raise TypeError("encoder must be an object")
        if not isinstance(self.preprocess, dict) or not self.preprocess:
            raise TypeError("preprocess must be a non-empty object")
        _check_str("default_resolution", self.default_resolution)
        if self.default_resolution not in self.preprocess:
            raise ValueError(f"default_resolution {self.default_resolution!r} has no "
                             "preprocess entry")
        if not isinstance(self.anchors, list) or not all(isinstance(a, str) for a in self.anchors):
            raise TypeError("anchors must be a list of set names")
        for name in ("provenance", "parity", "files"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"{name} must be an object")
        if not isinstance(self.variants, dict) or not all(
                isinstance(v, VariantInfo) for v in self.variants.values()):
            raise TypeError("variants must be an object of variant records")
        for fname, digest in self.files.items():
            _check_str(f"files key {fname!r}", fname)
            if not isinstance(digest, str) or not _SHA256.match(
                    digest.lower().removeprefix("sha256:")):
                raise ValueError(f"files[{fname!r}] must be a sha256 hex digest")

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
        if not isinstance(d, dict):
            raise TypeError("the manifest must be a JSON object")
        for key in ("encoder", "preprocess"):
            if not isinstance(d.get(key), dict):
                raise TypeError(f"{key} must be an object")
        pre = {}
        for k, v in d["preprocess"].items():
            if not isinstance(v, dict):
                raise TypeError(f"preprocess[{k!r}] must be an object")
            pre[k] = PreprocessCfg.from_dict(v)
        return cls(
            model=d["model"],
            family=d["family"],
            encoder=EncoderInfo(**d["encoder"]),
            preprocess=pre,
            default_resolution=d["default_resolution"],
            anchors=d.get("anchors", []),
            provenance=d.get("provenance", {}),
            parity=d.get("parity", {}),
            files=d.get("files", {}),
            schema_version=d["schema_version"],
            variants={str(k): VariantInfo.from_dict(v)
                      for k, v in (d.get("variants") or {}).items()},
        )
