"""Enumerate the images a ``quasar score`` run is asked to score, lazily.

An input spec is one of:

* a file: used as given (whatever its extension; a missing file still becomes an input, so
  that it gets a ``not_found`` row instead of silently vanishing);
* a directory: walked recursively in sorted order, files with an image extension only
  (case-insensitive), hidden files and hidden directories (name starting with ``.``)
  skipped; symlinked directories followed (a loop becomes a ``symlink_loop`` row); a folder
  that cannot be listed, and FIFOs, sockets, devices and broken links of any name, become
  rows with their reason (:func:`walk_images`);
* a glob (``*``, ``?``, ``[``; ``**`` recursive): matching image files in sorted order,
  matching directories walked as above;
* ``@list.txt``: a text file with one path per line (blank lines and lines starting with
  ``#`` ignored), each taken literally;
* ``-``: paths on standard input, one per line, taken literally;
* a brace pattern (WebDataset style): ``shards/shard-{00000..00099}.tar``, ``{a,b}.parquet``
  (expanded lazily, in order; each result is then treated as above; a pattern naming more
  than ``MAX_BRACE_NAMES`` (a billion) files is refused by :func:`check_specs`);
* a URL on object storage (``s3://``, ``gs://``): the same forms, through the store's
  listing calls - an object, a brace pattern, a glob, a "folder" (a URL ending in ``/`` or
  an existing prefix: walked recursively with the hidden-name and extension rules of a
  local folder), ``@s3://b/list.txt`` (:func:`_expand_url`; docs/remote.md).

Dataset files - WebDataset ``.tar`` shards and ``.parquet`` files - are picked up by folders
and globs too; :func:`quasar.runtime.sources.iter_items` expands them into their samples.

Everything is a generator: ten million files are never held in memory at once (only one
directory listing at a time).
"""
from __future__ import annotations

import glob
import logging
import os
import sys
from stat import S_ISDIR, S_ISREG
from typing import Callable, Iterable, Iterator, Optional, Sequence, TextIO, Union

from quasar.constants import IMAGE_EXTENSIONS  # noqa: F401 (re-exported)
from quasar.errors import (ImageNotFoundError, InputError, SymlinkLoopError,  # noqa: F401
                           UnlistableDirError)

from . import storage
from .engine import FailedInput
from .storage import is_url
from quasar.text import safe_text

log = logging.getLogger(__name__)

GLOB_CHARS = ("*", "?", "[")


def is_image_name(name: str) -> bool:
    """True when ``name`` ends with a known image extension (any case)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _is_input_name(name: str) -> bool:
    """An image, or a dataset file (WebDataset ``.tar``, ``.parquet``)."""
    from .sources import is_shard_name

    return is_image_name(name) or is_shard_name(name)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def walk_images(root: str, on_error: Optional[Callable[[str, OSError], None]] = None,
                _ancestors: Optional[frozenset] = None) -> Iterator[Union[str, FailedInput]]:
    """Image files under ``root``, depth first, entries sorted by name at every level.

    Nothing that cannot be read is skipped silently: a folder that cannot be listed gives a
    :class:`FailedInput` (``unlistable_dir``); a symbolic link to a folder is followed, and
    one that leads back into its own ancestry gives a ``symlink_loop`` item; FIFOs, sockets,
    devices, dangling links and link loops (any name: they cannot be judged by their
    extension) are yielded as paths, so that the engine's ``check_path`` gives them their
    row (``not_a_file``, ``broken_link``, ``symlink_loop``). ``on_error`` (called with the
    folder and the OSError) replaces the ``unlistable_dir`` item when given.
    """
    if _ancestors is None:
        try:
            st = os.stat(root)
            _ancestors = frozenset([(st.st_dev, st.st_ino)])
        except OSError:
            _ancestors = frozenset()
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        if on_error is not None:
            on_error(root, exc)
            return
        yield FailedInput(root, UnlistableDirError(
            f"{safe_text(root)}: cannot list this folder ({exc.strerror or exc}); its images "
            "were not scored - check its permissions"))
        return
    for entry in entries:
        if _hidden(entry.name):
            continue
        path = os.path.join(root, entry.name)
        try:
            if entry.is_symlink():
                try:
                    st = os.stat(path)
                except OSError:
                    yield path  # dangling link or link loop: check_path says which
                    continue
                if S_ISDIR(st.st_mode):
                    ident = (st.st_dev, st.st_ino)
                    if ident in _ancestors:
                        yield FailedInput(path, SymlinkLoopError(
                            f"{safe_text(path)}: a symbolic link to a folder that contains it "
                            f"({safe_text(os.readlink(path))}); not followed - fix or remove "
                            "the link"))
                    else:
                        yield from walk_images(path, on_error, _ancestors | {ident})
                elif not S_ISREG(st.st_mode) or _is_input_name(entry.name):
                    yield path
                continue
            if entry.is_dir(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                yield from walk_images(path, on_error, _ancestors | {(st.st_dev, st.st_ino)})
            elif entry.is_file(follow_symlinks=False):
                if _is_input_name(entry.name):
                    yield path
            else:
                yield path  # FIFO, socket, device: a not_a_file row, never opened
        except OSError:
            yield path  # let check_path report the problem


def read_path_lines(stream: Iterable[str]) -> Iterator[str]:
    """Paths of a list file / stdin: one per line, blank and ``#`` lines ignored."""
    for line in stream:
        path = line.rstrip("\r\n")
        if path.strip() and not path.lstrip().startswith("#"):
            yield path


def _expand_glob(pattern: str) -> Iterator[str]:
    matched = False
    for path in sorted(glob.iglob(pattern, recursive=True)):
        matched = True
        if os.path.isdir(path):
            yield from walk_images(path)
        elif _is_input_name(path):
            yield path
    if not matched:
        log.warning("no file matches %r", pattern)


def iter_inputs(specs: Sequence[str], stdin: Optional[TextIO] = None) -> Iterator[str]:
    """Every image path the specs name, in order, lazily (see the module docstring).

    Raises InputError for a ``@list`` file that cannot be opened (at the point the
    generator reaches it) or for ``-`` given twice.
    """
    if sum(1 for s in specs if s == "-") > 1:
        raise InputError("'-' (paths on stdin) can be given only once")
    for spec in specs:
        if spec == "-":
            yield from read_path_lines(stdin if stdin is not None else sys.stdin)
        elif spec.startswith("@") and is_url(spec[1:]):
            yield from _read_remote_list(spec[1:])
        elif is_url(spec):
            yield from _expand_url(spec)
        elif spec.startswith("@") and len(spec) > 1 and not os.path.exists(spec):
            yield from _read_list(spec[1:])
        elif os.path.isdir(spec):
            yield from walk_images(spec)
        else:
            yield from _expand_one(spec)


def _expand_one(spec: str) -> Iterator[str]:
    from .sources import has_braces, iter_braces

    if os.path.isdir(spec):
        yield from walk_images(spec)
    elif os.path.lexists(spec):
        yield spec
    elif has_braces(spec):
        for s in iter_braces(spec):  # lazily: the first shard starts before the last is named
            yield from _expand_one(s)
    elif not any(c in spec for c in GLOB_CHARS):
        yield spec
    else:
        yield from _expand_glob(spec)


# --------------------------------------------------------------------------- URLs
def _expand_url(spec: str) -> Iterator[Union[str, FailedInput]]:
    """The inputs a URL names, like a local spec (through the store's own listing calls):
    a brace pattern expands lazily, each name then treated as below; a glob lists its
    matches (``fs.glob``: folders among them are walked); a URL ending in ``/``, or one
    without a known extension that is an existing prefix, is a folder walked recursively
    (``fs.find``: one listing, sorted as a local walk is, hidden names and other extensions
    left out); anything else is one input, read when its turn comes (a missing object is
    its ``not_found`` row). A listing that fails (access denied, network) is a row."""
    from .sources import has_braces, iter_braces

    if has_braces(spec):
        for s in iter_braces(spec):  # lazily: the first shard starts before the last is named
            yield from _expand_url(s)
        return
    rest = spec.split("://", 1)[1]
    if any(c in rest for c in GLOB_CHARS):
        yield from _glob_url(spec)
    elif spec.endswith("/") or "/" not in rest.strip("/"):  # a folder, or a whole bucket
        yield from _walk_url(spec, explicit=True)
    elif _is_input_name(rest.rsplit("/", 1)[-1]):
        yield spec
    else:
        try:
            folder = storage.is_prefix(spec)
        except Exception:  # noqa: BLE001 - read as an object: its row says what went wrong
            folder = False
        yield from (_walk_url(spec) if folder else [spec])


def _listing_failed(url: str, exc: BaseException) -> FailedInput:
    status, msg = storage.failure(url, exc, "folder")
    if status == "not_found":
        return FailedInput(url, ImageNotFoundError(
            f"{safe_text(url)}: no objects under this prefix; check the URL"))
    return FailedInput(url, UnlistableDirError(
        f"{msg.rstrip('.')}; its images were not scored"))


def _walk_url(url: str, explicit: bool = False) -> Iterator[Union[str, FailedInput]]:
    """The image and dataset files under the prefix ``url`` (see :func:`_expand_url`)."""
    try:
        urls = storage.find_urls(url)
    except Exception as exc:  # noqa: BLE001 - any client failure: a row, the run goes on
        yield _listing_failed(url, exc)
        return
    root = url.rstrip("/") + "/"
    n = 0
    for u in urls:
        rel = u[len(root):] if u.startswith(root) else u.rsplit("/", 1)[-1]
        if storage.is_hidden_key(rel) or not _is_input_name(u.rsplit("/", 1)[-1]):
            continue
        n += 1
        yield u
    if explicit and not urls:  # an empty local folder exists; an empty prefix does not
        yield FailedInput(url, ImageNotFoundError(
            f"{safe_text(url)}: no objects under this prefix; check the URL"))
    elif not n:
        log.warning("no image or dataset file under %r", url)


def _glob_url(pattern: str) -> Iterator[Union[str, FailedInput]]:
    try:
        matches = storage.glob_urls(pattern)
    except Exception as exc:  # noqa: BLE001
        yield _listing_failed(pattern, exc)
        return
    for url, folder in matches:
        if folder:
            yield from _walk_url(url)
        elif _is_input_name(url.rsplit("/", 1)[-1]):
            yield url
    if not matches:
        log.warning("no object matches %r", pattern)


def _read_remote_list(url: str) -> Iterator[str]:
    """``@s3://b/list.txt``: the lines of a list on object storage (streamed), each taken
    literally (paths or URLs)."""
    try:
        f = storage.open_text(url)
    except FileNotFoundError as exc:
        raise InputError(f"cannot read the list of inputs @{safe_text(url)}: no such object; "
                         "give a text file with one image path or URL per line") from exc
    except Exception as exc:  # noqa: BLE001 - access denied, network: the settings named
        raise storage.storage_error(url, "reading the list of inputs", exc) from exc
    try:
        with f:
            yield from read_path_lines(f)
    except (OSError, ValueError) as exc:
        raise storage.storage_error(url, "reading the list of inputs", exc) from exc


def _read_list(list_path: str) -> Iterator[str]:
    try:
        f = open(list_path, encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise InputError(
            f"cannot read the list of inputs @{list_path}: {exc.strerror or exc}; "
            "give a text file with one image path per line"
        ) from exc
    with f:
        yield from read_path_lines(f)


def check_specs(specs: Sequence[str]) -> None:
    """Fail early (before a model is loaded) on specs that cannot work."""
    if not specs:
        raise InputError("no inputs: give image files, directories, globs, @list.txt or '-'")
    if sum(1 for s in specs if s == "-") > 1:
        raise InputError("'-' (paths on stdin) can be given only once")
    from .sources import MAX_BRACE_NAMES, brace_count, has_braces

    for s in specs:
        url = s[1:] if s.startswith("@") and is_url(s[1:]) else s
        if is_url(url):
            storage.check_client(url)  # a missing client: the pip command, before any work
        elif s.startswith("@") and len(s) > 1 and not os.path.exists(s) \
                and not os.path.isfile(s[1:]):
            raise InputError(f"list of inputs {s} not found: {s[1:]} is not a file")
        if has_braces(s) and not os.path.lexists(s) and brace_count(s) > MAX_BRACE_NAMES:
            raise InputError(
                f"{safe_text(s)}: the brace pattern names {brace_count(s):,} files, over the "
                f"limit of {MAX_BRACE_NAMES:,} for one pattern; check the range (a typo like "
                "{0..99999999}?) or split it into several patterns")
    # a run sees the objects as they are now (fsspec keeps listings for the process)
    storage.invalidate_caches()
