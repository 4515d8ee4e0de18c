"""Constants shared by every part of QUASAR (one definition each).

Pure values, no imports beyond the standard library: the catalogue, the bundle layer, the
runtime, export and evaluate all read them from here.
"""
from __future__ import annotations

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

#: Row status of a successfully scored input.
STATUS_OK = "ok"
