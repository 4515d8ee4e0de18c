"""What makes a ``quasar score`` output trustworthy after the fact: one writer at a time
(:class:`OutputLock`), the run's identity recorded next to every output and checked on
``--resume`` (:func:`run_identity`, :func:`check_resume_identity`), and no output that is,
or would write over, one of the run's inputs (:class:`OutputGuard`).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from quasar.bundle.atomic import atomic_write_text
from quasar.bundle.lock import LOCK_SUFFIX, OutputLock  # noqa: F401 - the lock of every writer
from quasar.errors import OutputError, RunIdentityError, UsageError
from quasar.text import safe_text

from .writers import RUN_SUFFIX

#: Fields of the identity that must match for ``--resume`` (``quasar_version`` is recorded
#: and a difference only warned about: an upgrade must not strand a half-done run).
IDENTITY_KEYS = ("bundle_sha256", "model", "resolution", "anchors", "precision", "backend",
                 "variant", "fast_decode")


# --------------------------------------------------------------------------- identity
def quasar_version() -> str:
    try:
        from importlib.metadata import version

        return version("quasar")
    except Exception:  # noqa: BLE001 - not installed (a source tree)
        return "unknown"


def run_identity(scorer: Any, precision: str = "fp32") -> Dict[str, Any]:
    """What decides the numbers of a run: bundle content, model, resolution, anchor sets,
    precision, plus the quasar version that wrote it."""
    bundle = getattr(scorer, "bundle", None)
    sha = getattr(bundle, "sha256", "") if bundle is not None else ""
    info = getattr(scorer, "run_info", None) or {}
    return {
        "bundle_sha256": str(sha),
        "model": str(getattr(getattr(scorer, "manifest", None), "model", "")),
        "resolution": str(getattr(scorer, "resolution", "")),
        "anchors": list(getattr(scorer, "anchor_names", [])),
        "precision": str(getattr(scorer, "precision", precision) or precision),
        # which encoder file and decoder produced the numbers (quasar optimize variants)
        "backend": str(info.get("backend") or "onnxruntime"),
        "variant": info.get("variant") or None,
        "fast_decode": bool(info.get("fast_decode", False)),
        "quasar_version": quasar_version(),
    }


def run_sidecar(path: str) -> str:
    """``scores.csv`` -> ``scores.csv.run.json``."""
    return str(path) + RUN_SUFFIX


def write_run_sidecar(path: str, identity: Dict[str, Any]) -> None:
    atomic_write_text(run_sidecar(path), json.dumps(identity, indent=1, sort_keys=True) + "\n")


def read_run_sidecar(path: str) -> Optional[Dict[str, Any]]:
    p = run_sidecar(path)
    if not os.path.exists(p):
        return None
    try:
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
        if not isinstance(d, dict):
            raise ValueError("not an object")
        return d
    except (OSError, ValueError) as exc:
        raise OutputError(f"{safe_text(p)}: unreadable run identity ({exc}); remove the output "
                          "or choose another --out") from exc


def identity_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    return [f"{k}: {old.get(k)!r} in the file, {new.get(k)!r} now"
            for k in IDENTITY_KEYS if old.get(k) != new.get(k)]


def check_resume_identity(what: str, old: Optional[Dict[str, Any]], new: Dict[str, Any],
                          force: bool) -> None:
    """Refuse to resume ``what`` (a file name) written by another run identity; an output
    without identity (written by an older quasar) only with ``force``."""
    import logging

    log = logging.getLogger("quasar.score")
    if old is None:
        if force:
            log.warning("%s records no run identity (an older quasar wrote it); resuming it "
                        "anyway (--force-resume)", safe_text(what))
            return
        raise RunIdentityError(
            f"{safe_text(what)} records no run identity (bundle, model, resolution, anchors, "
            "precision): an older quasar wrote it, so it cannot be checked that this run "
            "computes the same scores. Add --force-resume if you are sure, or use another "
            "--out")
    diffs = identity_differences(old, new)
    if diffs:
        raise RunIdentityError(
            f"cannot resume {safe_text(what)}: it was written by another run ("
            + "; ".join(diffs) + "). Resume with the same bundle and options, or use another "
            "--out")
    if old.get("quasar_version") != new.get("quasar_version"):
        log.warning("%s was written by quasar %s, this is %s", safe_text(what),
                    old.get("quasar_version"), new.get("quasar_version"))


# --------------------------------------------------------------------------- overlap
def _key(path: str) -> Tuple[str, Optional[Tuple[int, int]]]:
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
        return real, (st.st_dev, st.st_ino)
    except OSError:
        return real, None


class OutputGuard:
    """The files a run writes, checked against its inputs.

    :meth:`check_inputs` refuses (UsageError, before anything is written or deleted) an
    output that is, or would write over, an input file or ``@list`` file named on the
    command line; :meth:`is_output` tells the input stream that a file found in a folder,
    on stdin or by a glob is one of this run's outputs (it then gets an error row instead of
    being read)."""

    def __init__(self, outputs: Iterable[str]) -> None:
        self.outputs = [str(p) for p in outputs]
        keys = [_key(p) for p in self.outputs]
        self._real: Dict[str, str] = {r: p for (r, _), p in zip(keys, self.outputs)}
        self._ids: Dict[Tuple[int, int], str] = {i: p for (_, i), p in zip(keys, self.outputs)
                                                 if i is not None}
        self._names: Set[str] = {os.path.basename(p) for p in self.outputs}

    def which(self, path: str) -> Optional[str]:
        real, ident = _key(path)
        if real in self._real:
            return self._real[real]
        if ident is not None and ident in self._ids:
            return self._ids[ident]
        return None

    def check_inputs(self, specs: Sequence[str]) -> None:
        for spec in specs:
            if spec == "-":
                continue
            if spec.startswith("@") and len(spec) > 1 and not os.path.exists(spec):
                name, kind = spec[1:], "the list of inputs"
            elif os.path.isdir(spec) or not os.path.lexists(spec):
                continue
            else:
                name, kind = spec, "the input"
            out = self.which(name)
            if out is not None:
                raise UsageError(
                    f"{safe_text(out)} (an output of this run) is {kind} {safe_text(spec)}: "
                    "writing it would destroy or grow the input while it is read; choose "
                    "another output name")

    def is_output(self, path: str) -> Optional[str]:
        """The output that ``path`` is, or None. Cheap: a name equal to an output's name is
        resolved; any other name costs one ``stat``, and only while an output existed
        before the run (a ``--resume`` appends to it in place, so a hard link to it under
        another name is that output too)."""
        if os.path.basename(path) in self._names:
            return self.which(path)
        if not self._ids:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None  # the engine reports why it cannot be read
        return self._ids.get((st.st_dev, st.st_ino))
