"""Constants shared by every part of QUASAR (one definition each).

Pure values, no imports beyond the standard library: the catalogue, the bundle layer, the
runtime, export and evaluate all read them from here.
"""
from __future__ import annotations

from typing import Literal, Tuple, get_args

#: The reference's fixed logit scale (``main.py``: ``1 / 0.07``), not CLIP's learned 100.
LOGIT_SCALE = 1.0 / 0.07

#: The reference's CLIP-IQA prompts (``main.py``): row 0 good, row 1 bad.
TEXT_PROMPTS = ("Good photo.", "Bad photo.")
#: Name of the anchor set built from :data:`TEXT_PROMPTS`.
TEXT_ANCHOR_SET = "text"

# --- the bundle contract ------------------------------------------------------------------
SCHEMA_VERSION = 1
BUNDLE_JSON = "bundle.json"
ENCODER_ONNX = "encoder.onnx"
ANCHORS_FILE = "anchors.safetensors"
INPUT_NAME = "pixels"
OUTPUT_NAME = "embedding"

#: File extensions taken as images when a folder is scanned (lower case).
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff",
    ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".avif",
    ".heic", ".heif",
})

#: The model used when no --bundle / --model is given (``quasar models`` marks it).
DEFAULT_MODEL = "clip-rn50-nopos.openai"

#: Row status of a successfully scored input.
STATUS_OK = "ok"

# --- vocabularies: the values an option or a field may take (one definition each) -------
# The command layer declares them as choices (quasar/commands/options.py), so a bad value is
# refused while the command line is parsed; the code behind checks its Python callers
# against the same tuples. ``Literal`` types name them in signatures.

#: Execution devices.
Device = Literal["auto", "cpu", "cuda"]
DEVICES: Tuple[str, ...] = get_args(Device)
#: Input resolutions (``native``: the model's own pretraining resolution).
Resolution = Literal["224", "512", "native"]
RESOLUTIONS: Tuple[str, ...] = get_args(Resolution)
#: Precisions of an encoder variant in a bundle (fp32: the exported encoder itself).
Precision = Literal["fp32", "int8", "bf16", "fp16"]
PRECISIONS: Tuple[str, ...] = get_args(Precision)
#: What ``quasar optimize`` builds (every precision but fp32).
VARIANT_PRECISIONS: Tuple[str, ...] = tuple(p for p in PRECISIONS if p != "fp32")
#: What ``quasar score --precision`` takes: a variant, or ``auto`` (the fastest gated one).
RUNTIME_PRECISIONS: Tuple[str, ...] = PRECISIONS + ("auto",)
#: Inference backends.
BackendName = Literal["onnxruntime", "openvino"]
BACKENDS: Tuple[str, ...] = get_args(BackendName)
#: Scoring engines: this machine, or a Ray cluster.
Engine = Literal["local", "ray"]
ENGINES: Tuple[str, ...] = get_args(Engine)
#: How input files are read (``auto``: by extension).
InputType = Literal["auto", "image", "webdataset", "parquet"]
INPUT_TYPES: Tuple[str, ...] = get_args(InputType)
#: ONNX exporters of torch.
Exporter = Literal["auto", "torchscript", "dynamo"]
EXPORTERS: Tuple[str, ...] = get_args(Exporter)
#: How anchors are formed from prompt embeddings.
Aggregation = Literal["mean", "clustering"]
AGGREGATIONS: Tuple[str, ...] = get_args(Aggregation)
