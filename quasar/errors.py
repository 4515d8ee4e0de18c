"""QUASAR's exception family: the only place error classes are defined.

Every message names the file or input, the problem and the fix. Each class carries

* ``status``: the row status of an input that failed with it (``quasar score`` tables,
  ``errors="collect"``), e.g. ``not_found``, ``decode_error``, ``inference_error``;
* ``exit_code``: what a command exits with when the error ends it.

Exit codes, the same for every command: :data:`EXIT_CODES` below is the one table; the
command help (``quasar --help``, ``quasar CMD --help``) prints it, the README and the docs
point here.

A missing optional dependency: :func:`optional_import` (every layer may use it), whose hint
names the distribution on PyPI, :data:`DISTRIBUTION` (the import name stays ``quasar``).
"""
from __future__ import annotations

import importlib
from typing import Any, Dict

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3
EXIT_GATE_REFUSED = 4
EXIT_INTERRUPTED = 130

#: Every exit code and what it means (the only table; help and docs derive from it).
EXIT_CODES: Dict[int, str] = {
    EXIT_OK: "ok: everything done (every input scored)",
    EXIT_ERROR: "unexpected error (a bug, a full disk...): the message says what happened",
    EXIT_USAGE: "usage error (bad option or value, missing extra, unknown model, bad bundle, "
                "dataset or output, output exists without --resume/--overwrite): nothing done",
    EXIT_SOME_FAILED: "some inputs failed (each has a row with its status and reason)",
    EXIT_GATE_REFUSED: "optimize: the variant was refused by its agreement gate (bundle "
                       "unchanged)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C / SIGTERM): finished work is kept (--resume, the "
                      "embeddings cache)",
}


def exit_codes_help() -> str:
    """The exit codes in one paragraph, for command help."""
    return "Exit codes: " + "; ".join(f"{c} {m}" for c, m in EXIT_CODES.items()) + "."


#: The distribution name on PyPI (pyproject.toml ``[project] name``; a test checks that every
#: ``pip install`` line of the repository names it). PyPI's ``quasar`` is another project.
DISTRIBUTION = "quasar-iqa"


def install_hint(extra: str) -> str:
    """``pip install "quasar-iqa[EXTRA]"``: the line that installs an extra."""
    return f'pip install "{DISTRIBUTION}[{extra}]"'


class QuasarError(Exception):
    """Base class of QUASAR's own errors."""

    status = "error"
    exit_code = EXIT_USAGE


class UsageError(QuasarError, ValueError):
    """A bad command line (unknown flag, bad value, no inputs)."""

    status = "usage_error"


class UnknownModelError(QuasarError, KeyError):
    """A model id that the catalogue does not hold."""

    status = "unknown_model"

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(QuasarError, ValueError):
    """A checkpoint file that is missing, unreadable or of another architecture."""

    status = "checkpoint_error"


class ExportError(QuasarError, RuntimeError):
    """Export failed (e.g. ONNX-vs-torch parity out of tolerance); nothing was written."""

    status = "export_error"
    exit_code = EXIT_ERROR


class BundleError(QuasarError, ValueError):
    """A bundle that is missing files, tampered with, or inconsistent."""

    status = "bundle_error"


class BundleExistsError(BundleError, FileExistsError):
    """The output directory of an export already exists."""


class RemoteBundleError(BundleError):
    """A bundle URL (hf://, s3://, gs://, https://) that cannot be fetched, verified or
    pushed: not found, no access, offline without a cached copy, a download cut short."""


class DatasetError(QuasarError, ValueError):
    """A dataset file that is missing or malformed."""

    status = "dataset_error"


class InputError(QuasarError, ValueError):
    """An input spec that cannot be read (e.g. a missing ``@list`` file)."""

    status = "input_error"


class OutputError(QuasarError, ValueError):
    """An output file that cannot be written or resumed (wrong format, other columns, corrupt)."""

    status = "output_error"


class SourceError(QuasarError, ValueError):
    """A dataset source (WebDataset shard, Parquet file) that cannot be used as configured
    (e.g. no such image column)."""

    status = "source_error"


class RayRunError(QuasarError, RuntimeError):
    """A Ray run that cannot start or resume (output of another run, changed inputs...)."""

    status = "ray_error"


class DiskFullError(OutputError, OSError):
    """An output write failed for lack of space (ENOSPC / EDQUOT) or a file size limit
    (EFBIG); what was written before is kept and ``--resume`` continues it."""

    status = "disk_full"
    exit_code = EXIT_ERROR


class OutputIsInputError(UsageError):
    """An output of a run (table, journal, sidecar, lock, embeddings, Ray parts directory)
    that is, contains or lies inside one of its inputs, however the input was reached."""

    status = "output_is_input"


class OutputLockedError(OutputError):
    """Another process is writing the same output file."""

    status = "output_locked"


class RunIdentityError(OutputError):
    """``--resume`` of an output made by another bundle, resolution, anchor set or
    precision."""

    status = "run_identity"


class DeviceError(QuasarError, RuntimeError):
    """The requested execution device (e.g. CUDA) is not available."""

    status = "device_error"


class MissingDependencyError(QuasarError, ImportError):
    """An optional dependency (onnxruntime, torch, ...) that is not installed."""

    status = "missing_dependency"


class VariantError(QuasarError, ValueError):
    """A requested precision variant / backend is not in the bundle or cannot be used."""

    status = "variant_error"


class GateRefusedError(QuasarError):
    """``quasar optimize``: the variant disagrees with fp32 beyond the gate; the bundle is
    unchanged and the agreement report is stored beside it."""

    status = "gate_refused"
    exit_code = EXIT_GATE_REFUSED


# --- per-input errors: each becomes one row with its status, never stops a run ------------


class InputFailure(QuasarError):
    """Base of the errors of one input (a row of a run); the run goes on."""

    exit_code = EXIT_SOME_FAILED


class ImageDecodeError(InputFailure, ValueError):
    """An input that cannot be decoded as an image (missing, empty, truncated, not an image)."""

    status = "decode_error"


class ImageTooLargeError(ImageDecodeError):
    """An image over the decompression-bomb pixel limit."""

    status = "too_large"


class ImageNotFoundError(ImageDecodeError, FileNotFoundError):
    """An image path that does not exist (or is not a regular file)."""

    status = "not_found"


class EmptyImageError(ImageDecodeError):
    """A zero-byte file or empty ``bytes`` input."""

    status = "empty_file"


class TruncatedImageError(ImageDecodeError):
    """An image file whose data ends early (partial download, interrupted copy)."""

    status = "truncated"


class NotAnImageError(ImageDecodeError):
    """A file that Pillow does not recognise as any image format."""

    status = "not_an_image"


class ReadError(ImageDecodeError, OSError):
    """An input file that exists but cannot be read (I/O error)."""

    status = "read_error"


class PermissionDeniedError(ReadError, PermissionError):
    """An input (or a folder to scan) that this user may not read."""

    status = "permission_denied"


class NotAFileError(ImageNotFoundError):
    """An input path that is a directory, FIFO, socket or device, not a regular file."""

    status = "not_a_file"


class BrokenLinkError(ImageNotFoundError):
    """A symbolic link whose target does not exist."""

    status = "broken_link"


class SymlinkLoopError(ImageNotFoundError):
    """A symbolic link that points back to itself (directly or through others)."""

    status = "symlink_loop"


class InputIsOutputError(InputFailure, ValueError):
    """A file met in a folder, a glob or on stdin that is one of the run's own outputs."""

    status = "output_file"


class UnlistableDirError(ReadError):
    """A folder met while scanning the inputs whose entries cannot be listed."""

    status = "unlistable_dir"


class InferenceError(InputFailure, RuntimeError):
    """ONNX Runtime failed on an input (e.g. an image too small for the encoder), or the
    encoder returned a non-finite embedding."""

    status = "inference_error"


def error_status(exc: BaseException) -> str:
    """Row status of an input's failure: the class's ``status``, else a generic one."""
    status = getattr(exc, "status", None)
    if isinstance(exc, QuasarError) and status:
        return status
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, PermissionError):
        return "permission_denied"
    if isinstance(exc, OSError):
        return "read_error"
    return "decode_error"


def exit_code_of(exc: BaseException) -> int:
    """Exit code of a command that ends with ``exc``."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, QuasarError):
        return int(exc.exit_code)
    return EXIT_ERROR


def optional_import(module: str, extra: str, needed_by: str, *, also: str = "",
                    error: type = None) -> Any:
    """``import module``, or an error that says who needs it and the pip line installing it.

    The one guard for optional dependencies (onnxruntime, scipy, pyarrow, matplotlib,
    openvino, ray...): ``optional_import("scipy.stats", "optimize", "quasar optimize")``
    raises ``MissingDependencyError("quasar optimize needs scipy: pip install
    "quasar-iqa[optimize]"")`` when SciPy is absent. ``also`` is appended (another way out,
    e.g. "or write .csv"); ``error`` is the class raised (default MissingDependencyError,
    exit 2), for callers whose failure means something else (a bad output, a dataset).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        cls = MissingDependencyError if error is None else error
        raise cls(f"{needed_by} needs {top}: {install_hint(extra)}"
                  + (f" {also}" if also else "")) from exc
