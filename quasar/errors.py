"""Exception family. Every message names the file or input, the problem and the fix."""
from __future__ import annotations


class QuasarError(Exception):
    """Base class of QUASAR's own errors."""


class UnknownModelError(QuasarError, KeyError):
    """A model id that the catalogue does not hold."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(QuasarError, ValueError):
    """A checkpoint file that is missing, unreadable or of another architecture."""


class ExportError(QuasarError, RuntimeError):
    """Export failed (e.g. ONNX-vs-torch parity out of tolerance); nothing was written."""


class BundleError(QuasarError, ValueError):
    """A bundle that is missing files, tampered with, or inconsistent."""


class ImageDecodeError(QuasarError, ValueError):
    """An input that cannot be decoded as an image (missing, empty, truncated, not an image)."""


class ImageTooLargeError(ImageDecodeError):
    """An image over the decompression-bomb pixel limit."""


class DeviceError(QuasarError, RuntimeError):
    """The requested execution device (e.g. CUDA) is not available."""


class DatasetError(QuasarError, ValueError):
    """A dataset file that is missing or malformed."""


class ImageNotFoundError(ImageDecodeError, FileNotFoundError):
    """An image path that does not exist (or is not a regular file)."""


class EmptyImageError(ImageDecodeError):
    """A zero-byte file or empty ``bytes`` input."""


class TruncatedImageError(ImageDecodeError):
    """An image file whose data ends early (partial download, interrupted copy)."""


class NotAnImageError(ImageDecodeError):
    """A file that Pillow does not recognise as any image format."""


class MissingDependencyError(QuasarError, ImportError):
    """An optional dependency (onnxruntime, torch, ...) that is not installed."""


class InferenceError(QuasarError, RuntimeError):
    """ONNX Runtime failed on an input (e.g. an image too small for the encoder)."""


class VariantError(QuasarError, ValueError):
    """A requested precision variant / backend is not in the bundle or cannot be used."""

