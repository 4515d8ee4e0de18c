"""What makes a ``quasar score`` output trustworthy after the fact: one writer at a time
(:class:`OutputLock`), the run's identity recorded next to every output and checked on
``--resume`` (:func:`run_identity`, :func:`check_resume_identity`), and no output that is,
or would write over, one of the run's inputs (:class:`OutputGuard`).
"""
from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from quasar.bundle.atomic import atomic_write_text
from quasar.bundle.lock import LOCK_SUFFIX, OutputLock  # noqa: F401 - the lock of every writer
from quasar.errors import OutputError, OutputIsInputError, RunIdentityError, UsageError
from quasar.text import safe_text

from .writers import RUN_SUFFIX

#: The fields of a run identity that must match for ``--resume`` (local outputs and Ray parts
#: alike), each with the value an output written before the field existed is taken to have.
#: ``quasar_version`` is recorded and a difference only warned about (an upgrade must not
#: strand a half-done run); the bundle's URL and revision are recorded, not compared.
IDENTITY: Dict[str, Any] = {"bundle_sha256": None, "model": None, "resolution": None,
                            "anchors": None, "precision": "fp32", "backend": "onnxruntime",
                            "variant": None, "fast_decode": False, "input": None}
IDENTITY_KEYS = tuple(IDENTITY)


# --------------------------------------------------------------------------- identity
def quasar_version() -> str:
    try:
        from importlib.metadata import version

        return version("quasar-iqa")  # the distribution (import name: quasar)
    except Exception:  # noqa: BLE001 - not installed (a source tree)
        return "unknown"


def run_identity(scorer: Any, precision: str = "fp32") -> Dict[str, Any]:
    """What decides the numbers of a run: bundle content, model, resolution, anchor sets,
    precision, plus the quasar version that wrote it (of a built Scorer)."""
    info = getattr(scorer, "run_info", None) or {}
    return identity_of(getattr(scorer, "bundle", None),
                       model=str(getattr(getattr(scorer, "manifest", None), "model", "")),
                       resolution=getattr(scorer, "resolution", ""),
                       anchors=getattr(scorer, "anchor_names", []),
                       precision=getattr(scorer, "precision", precision) or precision,
                       backend=info.get("backend"), variant=info.get("variant"),
                       fast_decode=info.get("fast_decode", False))


def identity_of(bundle: Any, *, model: str, resolution: Any, anchors: Sequence[str],
                precision: str, backend: Optional[str], variant: Optional[str],
                fast_decode: bool) -> Dict[str, Any]:
    """The run identity from its parts: :func:`run_identity` for a built Scorer, and the Ray
    driver, which resolves the encoder without building one (quasar.runtime.ray)."""
    sha = getattr(bundle, "sha256", "") if bundle is not None else ""
    return {
        "bundle_sha256": str(sha),
        "model": str(model),
        "resolution": str(resolution),
        "anchors": list(anchors),
        "precision": str(precision),
        # which encoder file and decoder produced the numbers (quasar optimize variants)
        "backend": str(backend or "onnxruntime"),
        "variant": variant or None,
        "fast_decode": bool(fast_decode),
        "random_init": bool(getattr(bundle, "random_init", False)),  # quasar report warns
        "quasar_version": quasar_version(),
        # a bundle fetched by URL: where from and which revision (the Hub commit); recorded,
        # not compared on --resume (bundle_sha256 already pins the content)
        **{f"bundle_{k}": (getattr(bundle, "source", None) or {}).get(k)
           for k in ("url", "revision")},
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
    """Each compared field (:data:`IDENTITY`) that differs, in words."""
    return [f"{k}: {old.get(k, d)!r} in the file, {new.get(k, d)!r} now"
            for k, d in IDENTITY.items() if old.get(k, d) != new.get(k, d)]


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


def stdin_file() -> Optional[Tuple[int, int]]:
    """(device, inode) of standard input when it is a regular file (``- < list.txt``), else
    None (a pipe or a terminal cannot be an output of the run)."""
    import stat

    try:
        st = os.fstat(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):  # no real stdin (tests, daemons)
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def _refuse(out: str, kind: str, spec: str) -> UsageError:
    return OutputIsInputError(
        f"{safe_text(out)} (an output of this run) is {kind} {safe_text(spec)}: writing it "
        "would destroy or grow the input while it is read; choose another output name")


class OutputGuard:
    """The files a run writes, checked against its inputs - **the one rule**: no output may
    be an input, however the input is reached (named, glob, folder, stdin, ``@list``, brace
    pattern, symbolic or hard link).

    Inputs are enumerated lazily (ten million files are never listed up front), so the rule
    is enforced in two places:

    * :meth:`check_inputs`, before anything is written or deleted: the inputs and ``@list``
      files named on the command line, and standard input when it is a regular file
      (``- < e.paths.txt``), compared by real path and device + inode;
    * :meth:`met`, for every input the stream reaches (folder, glob, brace pattern, list and
      stdin entries): a file that is one of this run's outputs gets an ``output_file`` row
      instead of being read - and when it is an output that existed before the run and that
      ``--overwrite`` is to replace (``replaced``), the run is refused
      (:class:`~quasar.errors.OutputIsInputError`). That is safe because ``--overwrite``
      replaces an existing output only when the run ends (the new rows go to a staged file
      meanwhile): an input met late is still intact when it is met.

    Outputs on object storage (URLs) follow the same rule, compared as normalised URLs
    (``gcs://`` is ``gs://``, no duplicate or trailing slashes): a named input equal to an
    output is refused; an input the stream reaches (a prefix, a glob, a list) that is an
    output gets its ``output_file`` row, or stops the run when ``--overwrite`` is to
    replace it.
    """

    def __init__(self, outputs: Iterable[str], replaced: Iterable[str] = ()) -> None:
        from .remote_out import normalize_url
        from .storage import is_url

        outputs = [str(p) for p in outputs]
        self._urls: Dict[str, str] = {normalize_url(p): p for p in outputs if is_url(p)}
        self.outputs = [p for p in outputs if not is_url(p)]
        keys = [_key(p) for p in self.outputs]
        self._real: Dict[str, str] = {r: p for (r, _), p in zip(keys, self.outputs)}
        self._ids: Dict[Tuple[int, int], str] = {i: p for (_, i), p in zip(keys, self.outputs)
                                                 if i is not None}
        self._names: Set[str] = {os.path.basename(p) for p in self.outputs}
        self.replaced: Set[str] = {str(p) for p in replaced}

    def _url(self, path: str) -> Optional[str]:
        from .remote_out import normalize_url

        return self._urls.get(normalize_url(path))

    def which(self, path: str) -> Optional[str]:
        from .storage import is_url

        if is_url(path):
            return self._url(path)
        real, ident = _key(path)
        if real in self._real:
            return self._real[real]
        if ident is not None and ident in self._ids:
            return self._ids[ident]
        return None

    def check_inputs(self, specs: Sequence[str]) -> None:
        for spec in specs:
            if spec == "-":
                ident = stdin_file()
                if ident is not None and ident in self._ids:
                    raise _refuse(self._ids[ident], "read as the list of inputs on stdin", "-")
                continue
            from .storage import is_url

            if is_url(spec):
                if self._url(spec) is not None:
                    raise _refuse(self._url(spec), "the input", spec)
                continue
            if spec.startswith("@") and len(spec) > 1 and not os.path.exists(spec):
                name, kind = spec[1:], "the list of inputs"
                if is_url(name):
                    if self._url(name) is not None:
                        raise _refuse(self._url(name), kind, spec)
                    continue
            elif os.path.isdir(spec) or not os.path.lexists(spec):
                continue
            else:
                name, kind = spec, "the input"
            out = self.which(name)
            if out is not None:
                raise _refuse(out, kind, spec)

    def is_output(self, path: str) -> Optional[str]:
        """The output that ``path`` is, or None. Cheap: a name equal to an output's name is
        resolved; any other name costs one ``stat``, and only while an output existed
        before the run (a ``--resume`` appends to it in place, so a hard link to it under
        another name is that output too)."""
        if self._urls and "://" in path:
            return self.which(path)
        if os.path.basename(path) in self._names:
            return self.which(path)
        if not self._ids:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None  # the engine reports why it cannot be read
        return self._ids.get((st.st_dev, st.st_ino))

    def met(self, path: str) -> Optional[str]:
        """:meth:`is_output` for an input the stream reached; raises
        :class:`~quasar.errors.OutputIsInputError` when it is an existing output that this
        run is to replace (nothing has been replaced yet: the run stops, the file stays)."""
        own = self.is_output(path)
        if own is not None and own in self.replaced:
            alias = "" if own == path or os.path.abspath(own) == os.path.abspath(path) else \
                f" (the same file as {safe_text(own)})"
            raise OutputIsInputError(
                f"{safe_text(path)}{alias} is an existing output that --overwrite would replace, "
                "and an input of this run (reached through a folder, a glob, a list or stdin): "
                "nothing was replaced; write the outputs outside the inputs, or leave that "
                "file out of them")
        return own


def check_output_dir(d: str, flag: str, specs: Sequence[str], inputs: Iterable[str]) -> None:
    """The rule for an output *directory* (``--engine ray``'s parts and embeddings): it may
    not be, contain or lie inside an input, nor hold a file that is an input under another
    name (a hard link). ``inputs`` are every input file of the run (the Ray driver plans all
    parts before anything is written, so the whole list is known here). A directory on
    object storage (a URL): :func:`check_output_url_dir`."""
    from .storage import is_url

    if is_url(d):
        return check_output_url_dir(d, flag, specs, inputs)
    real = os.path.realpath(d).rstrip(os.sep) + os.sep
    for s in specs:
        if s != "-" and not s.startswith("@") and os.path.isdir(s):
            top = os.path.realpath(s).rstrip(os.sep) + os.sep
            if real.startswith(top) or top.startswith(real):
                raise OutputIsInputError(
                    f"{flag} {safe_text(d)} is inside the input folder {safe_text(s)} (or holds "
                    "it): a rerun would read this run's files as inputs and --overwrite would "
                    "delete inputs; choose a directory outside the inputs")
    ids: Dict[Tuple[int, int], str] = {}
    if os.path.isdir(d):
        for n in os.listdir(d):
            try:
                st = os.stat(os.path.join(d, n))
                ids[(st.st_dev, st.st_ino)] = os.path.join(d, n)
            except OSError:
                pass
    std = stdin_file() if "-" in specs else None
    if std is not None and std in ids:
        raise _dir_refusal(flag, d, "-", ids[std])
    resolve = _real_path_cache()
    for p in inputs:
        r = resolve(p)
        if (r + os.sep).startswith(real):
            raise _dir_refusal(flag, d, p, r)
        if ids:
            try:
                st = os.stat(p)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in ids:
                raise _dir_refusal(flag, d, p, ids[(st.st_dev, st.st_ino)])


def _url_prefix(spec: str) -> str:
    """The fixed part of an input URL: the whole URL, or a glob's (brace pattern's) part
    up to the folder of its first wildcard."""
    from .remote_out import normalize_url

    m = re.search(r"[*?\[{]", spec)
    if m:
        spec = spec[: m.start()].rsplit("/", 1)[0]
    return normalize_url(spec)


def check_output_url_dir(d: str, flag: str, specs: Sequence[str], inputs: Iterable[str]) -> None:
    """:func:`check_output_dir` for a directory on object storage: it may not be, hold or
    lie inside an input prefix (a named URL, or a glob's fixed part), nor hold any input
    the run planned."""
    from .remote_out import normalize_url
    from .storage import is_url

    top = normalize_url(d)
    for s in specs:
        if not is_url(s):
            continue
        pre = _url_prefix(s)
        if pre == top or pre.startswith(top + "/") or top.startswith(pre + "/"):
            raise OutputIsInputError(
                f"{flag} {safe_text(d)} is the input {safe_text(s)}, lies inside it or holds "
                "it: a rerun would read this run's files as inputs and --overwrite would "
                "replace inputs; choose a prefix outside the inputs")
    for p in inputs:
        if is_url(p) and normalize_url(p).startswith(top + "/"):
            raise _dir_refusal(flag, d, p, p)


def _real_path_cache():
    """``realpath`` of many files at the cost of one ``lstat`` each: their folders are
    resolved once (a million loose files of a Ray run sit in few folders)."""
    dirs: Dict[str, str] = {}

    def resolve(p: str) -> str:
        d, b = os.path.split(os.path.abspath(p))
        if os.path.islink(p) or not b:
            return os.path.realpath(p)
        if d not in dirs:
            if len(dirs) > 100_000:
                dirs.clear()
            dirs[d] = os.path.realpath(d)
        return os.path.join(dirs[d], b)

    return resolve


def _dir_refusal(flag: str, d: str, spec: str, where: str) -> UsageError:
    return OutputIsInputError(
        f"{flag} {safe_text(d)} holds the input {safe_text(spec)} ({safe_text(where)}): the "
        "run writes and replaces files there, which would destroy or mix in its inputs; "
        "choose an output directory that holds no input")
