"""Dataset inputs: WebDataset ``.tar`` shards and Parquet files with an image column.

The people who score the most images keep them in shards, not loose files: WebDataset tars
(img2dataset's default output) and Parquet files with an encoded-image column (what most
dataset hubs publish). This module turns such a file into a stream of :class:`Sample`
objects, each carrying its **identity** - ``<shard>#<key>`` for a tar sample,
``<file>#<id>`` for a Parquet row (``--id-column`` value, or the row number) - which becomes
the ``path`` column of its output row, so every score can be traced back to its sample.

WebDataset layout (as ``webdataset`` groups members): a member ``dir/000123.seg.png`` has
key ``dir/000123`` (the path up to the first dot of the basename) and extension ``seg.png``
(lower-cased); consecutive members with the same key form one sample. The image member is
the first of the ``image_keys`` extensions present (``jpg;png;webp`` by default, like
``to_tuple("jpg;png;webp")``); the other members (``.json``, ``.txt``...) are skipped without
being read. Every member is accounted for: directories and meta members (``__key__``-style
names) hold no sample; a name without an extension or a hidden one is a sample of its own
(it gets a row: no image member); a link / FIFO / device member in the image's place gets a
``not_a_file`` row (links are not followed).

Why our own header loop and not the ``webdataset`` package or ``tarfile``'s streaming mode:
a local shard needs one pass over 512-byte headers (``tarfile.TarInfo.frombuf`` parses one)
and a ten-line grouping rule, and the runtime stays lean (``webdataset`` would bring
``braceexpand``, ``pyyaml`` and its own handler conventions). We need what neither gives: a
truncated shard or a corrupt header must become a row that names the shard and the last key,
never a silently shorter shard (``tarfile`` treats a bad header after the first member as the
end of the archive); a GNU long-name or PAX header is read only up to ``MAX_HEADER_BYTES``
(``tarfile`` reads any declared size into memory, and the member after a refused one would
lose its name); data after the end-of-archive marker (``cat a.tar b.tar``) is read on, like
GNU tar's ``--ignore-zeros``.

Bounded memory: a tar member over ``MAX_MEMBER_BYTES`` is never read; a Parquet page of the
image column is checked from its header before pyarrow decompresses it, and each cell's
length before it is copied (:func:`iter_parquet_samples`); only 8-byte digests of the row ids
seen are kept (:class:`UniqueIds`: ids are unique within a file, so ``--resume`` never
mistakes one sample for another). A FIFO, socket or device named like a dataset file is
never opened (:func:`open_regular`).

Dataset files on object storage are streamed whole into a local spool file and read by the
same readers (:func:`spooled_samples`; the ids name the URL), the next one downloading while
one is read: the checks above need a local file descriptor (docs/remote.md).

Failures never lose a shard: a missing, unreadable or non-regular shard, a member cut short,
a sample without an image member, an unreadable Parquet row group, a Parquet file whose
columns do not fit the options each become a :class:`Sample` that already carries its status
and message (the same statuses as loose files: ``not_found``, ``not_a_file``,
``empty_file``, ``truncated``, ``read_error``, ``too_large``; ``source_error``); corrupt
image bytes fail later, in decoding, exactly as a corrupt loose file does.
"""
from __future__ import annotations

import atexit
import errno
import hashlib
import logging
import os
import posixpath
import re
import stat
import tarfile
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from quasar.constants import STATUS_OK
from quasar.errors import (BrokenLinkError, EmptyImageError, ImageDecodeError,
                           ImageNotFoundError, ImageTooLargeError, NotAFileError,
                           NotAnImageError, PermissionDeniedError, ReadError, SourceError,
                           SymlinkLoopError, TruncatedImageError, error_status)

from quasar.text import safe_text

from .images import describe_source
from .storage import Spooled, is_url, read_object, url_join

log = logging.getLogger(__name__)

DEFAULT_IMAGE_KEYS = ("jpg", "png", "webp")
#: image-column names tried in order when ``--image-column`` is not given
DEFAULT_IMAGE_COLUMNS = ("image", "jpg", "img", "png", "webp", "image_bytes", "bytes")
#: a tar member larger than this is not read into memory (a row with status too_large)
MAX_MEMBER_BYTES = 256 << 20
#: a GNU long-name / PAX extended header larger than this is refused (a row) and skipped
MAX_HEADER_BYTES = 1 << 20
#: brace patterns expanding to more names than this are refused (a typo like {0..99999999})
MAX_BRACE_NAMES = 1_000_000_000
_PARQUET_BUFFER = 4 << 20        # pyarrow's read buffer: never a whole column chunk at once
_PARQUET_BATCH_BYTES = 64 << 20  # rows per record batch: about this many image bytes
TAR_EXTENSIONS = (".tar",)
PARQUET_EXTENSIONS = (".parquet", ".pq")
INPUT_TYPES = ("auto", "image", "webdataset", "parquet")

_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta
_BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class Sample:
    """One image of a dataset file.

    ``id`` is the row identity (``shard.tar#key``, ``file.parquet#id``); ``data`` the encoded
    image bytes, or ``path`` an image file to read instead (a Parquet column of paths).
    ``status`` / ``error`` are set when the sample failed before decoding (then neither
    ``data`` nor ``path`` is set). ``shard`` is the file it came from, ``index`` its position
    in that file's stream of samples.
    """

    id: str
    data: Optional[bytes] = None
    path: Optional[str] = None
    status: str = STATUS_OK
    error: str = ""
    shard: str = ""
    index: int = 0

    def __str__(self) -> str:
        return self.id

    @property
    def nbytes(self) -> int:
        """Encoded bytes held (what the engine's decode-ahead budget counts)."""
        return len(self.data) if self.data is not None else 0

    def released(self) -> "Sample":
        """This sample without its bytes: what the engine keeps for the row once the sample
        is decoded, so that a window of written rows never pins encoded images."""
        return self if self.data is None else replace(self, data=None)


_STATUS_ERRORS = {
    "not_found": ImageNotFoundError, "empty_file": EmptyImageError,
    "truncated": TruncatedImageError, "too_large": ImageTooLargeError,
    "not_an_image": NotAnImageError, "not_a_file": NotAFileError,
    "broken_link": BrokenLinkError, "symlink_loop": SymlinkLoopError,
    "permission_denied": PermissionDeniedError, "read_error": ReadError,
}


def sample_aware(load: Callable[[object], np.ndarray]) -> Callable[[object], np.ndarray]:
    """An engine ``load`` (item -> pixels, raising on failure) that also takes
    :class:`Sample` items: a sample's failure is raised as an ``ImageDecodeError`` subclass
    whose message names the sample id (not ``<N bytes>``) and whose ``status`` is the row
    status - the local path's for the same bytes. For
    ``Engine(sample_aware(scorer.load_image), scorer.embed_pixels, ...)``."""
    def load_item(item):
        if not isinstance(item, Sample):
            return load(item)
        if item.status != STATUS_OK:  # failed while reading its shard
            err = _STATUS_ERRORS.get(item.status, ImageDecodeError)(item.error)
            err.status = item.status
            raise err
        src: object = item.data if item.data is not None else item.path
        fetched = isinstance(src, str) and is_url(src)
        if fetched:  # a loose image / a path cell at a URL: read now, in a decode thread
            got = read_object(src, MAX_MEMBER_BYTES)
            if isinstance(got, tuple):
                msg = got[1] if item.id in got[1] else f"{item.id}: {got[1]}"
                err = _STATUS_ERRORS.get(got[0], ImageDecodeError)(msg)
                err.status = got[0]
                raise err
            src = got
        try:
            return load(src)
        except Exception as exc:  # noqa: BLE001 - renamed, then the engine isolates it
            msg = str(exc) if isinstance(exc, ImageDecodeError) else f"{type(exc).__name__}: {exc}"
            name = describe_source(src)
            if (item.data is not None or fetched) and msg.startswith(name):
                msg = item.id + msg[len(name):]
            elif item.id not in msg:
                msg = f"{item.id}: {msg}"
            status = error_status(exc)
            err = _STATUS_ERRORS.get(status, ImageDecodeError)(msg)
            err.status = status
            raise err from exc
    return load_item


def _failed(shard: str, sid: str, status: str, msg: str, index: int) -> Sample:
    return Sample(id=sid, status=status, error=msg, shard=shard, index=index)


def _open_error(shard: str, exc: OSError, what: str = "shard") -> Tuple[str, str]:
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(shard):
            return "broken_link", (f"{shard}: a symbolic link whose target does not exist; fix "
                                   "or remove the link")
        return "not_found", f"{shard}: no such file; check the path"
    if isinstance(exc, IsADirectoryError):
        return "not_a_file", f"{shard}: is a directory, not a {what}"
    if isinstance(exc, PermissionError):
        return "permission_denied", (f"{shard}: permission denied; check the {what}'s "
                                     "permissions (chmod +r)")
    if exc.errno == errno.ELOOP:
        return "symlink_loop", f"{shard}: a symbolic link loop; fix or remove the link"
    return "read_error", f"{shard}: cannot open the {what} ({exc.strerror or exc}); check the disk"


# --------------------------------------------------------------------------- brace patterns
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def _brace_alts(body: str) -> Optional[Tuple[int, Callable[[], Iterator[str]]]]:
    """(count, generator of the alternatives) of one brace group; None for a literal one."""
    r = _RANGE.match(body)
    if r:
        lo, hi = r.group(1), r.group(2)
        a, b = int(lo), int(hi)
        width = len(lo) if (lo.startswith("0") or hi.startswith("0")) else 0
        step = 1 if b >= a else -1
        return abs(b - a) + 1, lambda: (str(i).zfill(width) for i in range(a, b + step, step))
    if "," in body:
        alts = body.split(",")
        return len(alts), lambda: iter(alts)
    return None  # "{x}" is literal, as in the shell


def iter_braces(pattern: str) -> Iterator[str]:
    """WebDataset / shell brace patterns, lazily: ``shard-{00000..00099}.tar`` (zero-padded
    numeric range, padding taken from the bounds), ``{train,val}``; several groups multiply
    out, in order. A pattern without a brace group is yielded as is. A generator, so that
    ``s-{0..99999999}.tar`` starts work at once in flat memory."""
    m = _BRACE.search(pattern)
    if m is None:
        yield pattern
        return
    group = _brace_alts(m.group(1))
    if group is None:
        for rest in iter_braces(pattern[m.end():]):
            yield pattern[:m.end()] + rest
        return
    head, tail = pattern[:m.start()], pattern[m.end():]
    for alt in group[1]():
        for rest in iter_braces(tail):
            yield head + alt + rest


def expand_braces(pattern: str) -> List[str]:
    """:func:`iter_braces` as a list (for small patterns)."""
    return list(iter_braces(pattern))


def brace_count(pattern: str) -> int:
    """How many names a brace pattern expands to, computed without expanding it."""
    n = 1
    while True:
        m = _BRACE.search(pattern)
        if m is None:
            return n
        group = _brace_alts(m.group(1))
        n *= 1 if group is None else group[0]
        pattern = pattern[m.end():]


def has_braces(spec: str) -> bool:
    m = _BRACE.search(spec)
    return bool(m) and (bool(_RANGE.match(m.group(1))) or "," in m.group(1))


# --------------------------------------------------------------------------- kinds of input
def input_kind(path: str, input_type: str = "auto") -> str:
    """``webdataset`` / ``parquet`` / ``image`` for one path: by extension with ``auto``,
    or forced by ``input_type``."""
    if input_type not in INPUT_TYPES:
        raise SourceError(f"input type must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}")
    if input_type != "auto":
        return input_type
    low = path.lower()
    if low.endswith(TAR_EXTENSIONS):
        return "webdataset"
    if low.endswith(PARQUET_EXTENSIONS):
        return "parquet"
    return "image"


def is_shard_name(name: str) -> bool:
    return input_kind(name) != "image"


@dataclass(frozen=True)
class SourceOptions:
    """How dataset files are read (``--input-type``, ``--image-key``, ``--image-column``,
    ``--id-column``)."""

    input_type: str = "auto"
    image_keys: Tuple[str, ...] = DEFAULT_IMAGE_KEYS
    image_column: Optional[str] = None
    id_column: Optional[str] = None
    parquet_batch_rows: int = 64

    def __post_init__(self) -> None:
        if self.input_type not in INPUT_TYPES:
            raise SourceError(f"--input-type must be one of {', '.join(INPUT_TYPES)}, "
                              f"got {self.input_type!r}")
        keys = parse_image_keys(self.image_keys)
        object.__setattr__(self, "image_keys", keys)

    def kind(self, path: str) -> str:
        return input_kind(path, self.input_type)

    def samples(self, path: str, then: Optional[str] = None) -> Iterator[Sample]:
        """Samples of one dataset file (``webdataset`` or ``parquet`` kind). A URL is
        spooled to a local file first (:func:`spooled_samples`); ``then``, the dataset file
        that will be read next, starts downloading in the background once ``path`` is
        downloaded (Ray actors: their next part)."""
        kind = self.kind(path)
        if kind not in ("webdataset", "parquet"):
            raise SourceError(f"{path}: not a dataset file (input type {kind})")
        if is_url(path):
            return spooled_samples(self, path, _PREFETCH, then)
        return self.local_samples(path)

    def local_samples(self, path: str, name: Optional[str] = None) -> Iterator[Sample]:
        """Samples of a local dataset file (``name``: its URL when it is a spool copy)."""
        if self.kind(name or path) == "webdataset":
            return iter_tar_samples(path, self.image_keys, name=name)
        return iter_parquet_samples(path, self.image_column, self.id_column,
                                    self.parquet_batch_rows, name=name)

    def describe(self) -> dict:
        return {"input_type": self.input_type, "image_keys": ";".join(self.image_keys),
                "image_column": self.image_column or "", "id_column": self.id_column or ""}


def parse_image_keys(keys: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """``"jpg;png;webp"`` (also ``,``-separated, or a list) -> lower-case extensions."""
    if isinstance(keys, str):
        keys = re.split(r"[;,]", keys)
    out = tuple(dict.fromkeys(k.strip().lower().lstrip(".") for k in keys if k and k.strip()))
    if not out:
        raise SourceError("--image-key needs at least one extension, e.g. jpg;png;webp")
    return out


_END = object()


def iter_items(paths: Iterable[Any], opts: SourceOptions) -> Iterator[Union[str, Sample]]:
    """Loose image paths as they are, dataset files expanded into their samples (inputs that
    already failed, e.g. an unlistable folder, pass through). A loose image at a URL becomes
    a :class:`Sample` read when it is decoded (:func:`remote_image`); a dataset file at a URL
    is spooled, and the next one downloads while it is read (:func:`spooled_samples`)."""
    it = iter(paths)
    prefetch = _Prefetch()
    try:
        nxt = next(it, _END)
        while nxt is not _END:
            p = nxt
            if _is_remote_dataset(p, opts):
                nxt = next(it, _END)   # known before this file is read: it downloads meanwhile
                then = nxt if _is_remote_dataset(nxt, opts) else None
                yield from spooled_samples(opts, p, prefetch, then)
                continue
            if not isinstance(p, str):
                yield p
            elif opts.kind(p) == "image":
                yield remote_image(p) if is_url(p) else p
            else:
                yield from opts.local_samples(p)
            nxt = next(it, _END)
    finally:
        prefetch.close()


# --------------------------------------------------------------------------- remote inputs
def _is_remote_dataset(p: Any, opts: SourceOptions) -> bool:
    return isinstance(p, str) and is_url(p) and opts.kind(p) != "image"


def remote_image(url: str) -> Sample:
    """A loose image at a URL: a :class:`Sample` whose bytes are read when it is decoded (in
    the engine's decode threads, several at a time), size checked first
    (:func:`sample_aware`)."""
    return Sample(id=url, path=url)


class _Prefetch:
    """At most one remote dataset file downloading ahead of the one being read (one
    background thread), so that spool disk use stays at about two files."""

    def __init__(self) -> None:
        self.pending: Optional[Spooled] = None
        self.lock = threading.Lock()

    def take(self, url: str, what: str) -> Spooled:
        """The download of ``url``: the one running ahead, or a new one (not started)."""
        with self.lock:
            p, self.pending = self.pending, None
        if p is not None and p.url == url:
            return p
        if p is not None:
            p.close()
        return Spooled(url, what)

    def ahead(self, url: str, what: str) -> None:
        with self.lock:
            p = self.pending
            if p is not None and p.url == url:
                return
            self.pending = None
        if p is not None:
            p.close()
        sp = Spooled(url, what)   # created here: a failure to create it is the row's later
        with self.lock:
            self.pending = sp.start()

    def close(self) -> None:
        with self.lock:
            p, self.pending = self.pending, None
        if p is not None:
            p.close()


_PREFETCH = _Prefetch()   # SourceOptions.samples(url, then=...) of this process (Ray actors)
atexit.register(_PREFETCH.close)


def _what(opts: SourceOptions, url: str) -> str:
    return "shard" if opts.kind(url) == "webdataset" else "Parquet file"


def spooled_samples(opts: SourceOptions, url: str, prefetch: _Prefetch,
                    then: Optional[str] = None) -> Iterator[Sample]:
    """Samples of a remote dataset file: streamed whole into a local spool file
    (:class:`quasar.runtime.storage.Spooled`), then read by the local, hardened reader; ids
    and messages name the URL. The spool file is deleted when the file is done (also on an
    error or Ctrl-C). ``then`` (the next remote dataset file) starts downloading once this
    one is down: at most one file ahead. A download that fails is one row ``<url>#@0``."""
    try:
        sp = prefetch.take(url, _what(opts, url))
    except OSError as exc:  # the spool folder cannot be written
        yield _failed(url, f"{url}#@0", "read_error",
                      f"{safe_text(url)}: cannot create a spool file ({exc}); set "
                      "QUASAR_SPOOL_DIR to a writable local folder", 0)
        return
    try:
        sp.wait()
        if then is not None:
            try:
                prefetch.ahead(then, _what(opts, then))
            except OSError:
                pass   # it is downloaded when its turn comes, and fails with its own row
        if sp.failure is not None:
            yield _failed(url, f"{url}#@0", sp.failure[0], sp.failure[1], 0)
            return
        log.debug("%s: %d bytes spooled in %.2f s", safe_text(url), sp.bytes, sp.seconds)
        yield from opts.local_samples(sp.path, name=url)
    finally:
        sp.close()


# --------------------------------------------------------------------------- one input file
class UniqueIds:
    """Row ids unique within one input file, so that ``--resume`` (which skips ids with an
    ``ok`` row) can never mistake one sample for another.

    ``<file>#<key>`` the first time; a key seen before in the same file (a tar with key ``a``
    three times, a Parquet id column with repeats) becomes ``<file>#<key>.dup2``,
    ``.dup3``... in reading order (the first free one). Only 8-byte digests of the ids are
    kept (deterministic: blake2b), and a counter per repeated id.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._seen: set = set()
        self._next: dict = {}
        self.repeats = 0

    @staticmethod
    def _digest(s: str) -> bytes:
        return hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest()

    def __call__(self, key: str) -> str:
        sid = f"{self.prefix}#{key}"
        h = self._digest(sid)
        if h not in self._seen:
            self._seen.add(h)
            return sid
        self.repeats += 1
        n = self._next.get(h, 2)
        while True:
            cand = f"{sid}.dup{n}"
            hc = self._digest(cand)
            n += 1
            if hc not in self._seen:
                self._seen.add(hc)
                self._next[h] = n
                return cand


def _not_regular(path: str, st: os.stat_result) -> str:
    mode = st.st_mode
    kind = ("a directory" if stat.S_ISDIR(mode) else
            "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
            "a socket" if stat.S_ISSOCK(mode) else
            "a character device" if stat.S_ISCHR(mode) else
            "a block device" if stat.S_ISBLK(mode) else "a special file")
    what = " (reached through a symbolic link)" if os.path.islink(path) else ""
    return (f"{path}: not a regular file - {kind}{what}; it was not opened (reading it could "
            "block or never end) - pass the dataset file itself")


def open_regular(path: str, what: str) -> Union[int, Tuple[str, str]]:
    """A read-only descriptor of ``path`` when it is a regular file, else ``(status,
    message)``: ``not_found``, ``not_a_file`` (FIFO, socket, device, directory: never opened,
    so nothing can block), ``permission_denied``, ``read_error``. ``stat`` first (opening a
    device can have side effects), then ``O_NONBLOCK`` + ``fstat`` so that a file swapped for
    a FIFO in between cannot block either."""
    if "\0" in path:
        return "not_found", (f"{safe_text(path)}: the path contains a NUL byte, which no file "
                             f"name can hold; fix the {what} name")
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return "not_a_file", _not_regular(path, st)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return _open_error(path, exc, what)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return "not_a_file", _not_regular(path, st)
    return fd


# --------------------------------------------------------------------------- WebDataset
def split_member(name: str) -> Tuple[str, str]:
    """(key, extension) of a tar member the WebDataset way: the key is the path up to the
    first dot of the basename, the extension the rest, lower-cased. Leading dots belong to
    the key (``.x.jpg`` -> ``.x``, ``jpg``: hidden names are samples too) and a name without
    a dot is a key with the empty extension (it gets a row: no image member)."""
    d, base = posixpath.split(name)
    lead = len(base) - len(base.lstrip("."))
    stem, dot, ext = base[lead:].partition(".")
    key = base[:lead] + stem
    return (posixpath.join(d, key) if d else key), (ext.lower() if dot else "")


@dataclass
class _Member:
    """One member of a tar, as read from its headers."""

    name: str
    type: bytes
    size: int
    link: str
    offset: int     # of its (first) header
    data: int       # of its data


@dataclass
class _Problem:
    """A place in a tar that cannot be read as a member: it becomes a row ``<shard>#@<offset>``."""

    offset: int
    status: str
    message: str
    stop: bool = True
    eof: bool = False   # the file ended where a header was expected


_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_LONG_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_NODATA_KINDS = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link",
                 tarfile.FIFOTYPE: "a FIFO", tarfile.CHRTYPE: "a character device",
                 tarfile.BLKTYPE: "a block device", tarfile.GNUTYPE_SPARSE: "a GNU sparse file"}


def _padded(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def _pread(fd: int, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes at ``offset`` (fewer only at the end of the file)."""
    parts = []
    while n > 0:
        chunk = os.pread(fd, min(n, 1 << 30), offset)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
        offset += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _parse_pax(raw: bytes) -> dict:
    """Records ``"<len> <key>=<value>\\n"`` of a PAX extended header (raises ValueError)."""
    out, i = {}, 0
    while i < len(raw) and raw[i] != 0:
        sp = raw.index(b" ", i)
        n = int(raw[i:sp])
        if n <= sp - i or i + n > len(raw):
            raise ValueError(f"bad record length {n}")
        key, _, value = raw[sp + 1:i + n - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        i += n
    return out


class _TarScanner:
    """The members of a tar file, from headers read by hand (``tarfile.TarInfo.frombuf``
    parses one 512-byte header; everything else is here): GNU long-name and PAX headers are
    read only up to ``max_header`` bytes (an oversized one is refused with a row and skipped
    by seeking - the member after it keeps its own header name); data after the
    end-of-archive marker is read on (GNU tar's ``--ignore-zeros``: ``cat a.tar b.tar``)."""

    def __init__(self, fd: int, shard: str, size: int, max_header: int):
        self.fd, self.shard, self.size, self.max_header = fd, shard, size, max_header
        self.pos = 0
        self.last_key = ""

    def _after(self) -> str:
        return f" (after key {safe_text(self.last_key)})" if self.last_key else ""

    def __iter__(self) -> Iterator[Union[_Member, _Problem]]:
        ext: dict = {}   # pending long name / long link / PAX records for the next member
        zeros = 0
        while True:
            off = self.pos
            buf = _pread(self.fd, _BLOCK, off)
            if len(buf) < _BLOCK:
                if zeros < 2:
                    yield _Problem(off, "truncated",
                                   f"{self.shard}: the shard ends at byte {self.size:,} without "
                                   f"the end-of-archive marker{self._after()}; it is truncated "
                                   "and samples after it are missing - re-download or re-copy it",
                                   eof=True)
                return
            self.pos = off + _BLOCK
            if buf.count(0) == _BLOCK:
                zeros += 1
                continue
            ended, zeros = zeros >= 2, 0
            try:
                info = tarfile.TarInfo.frombuf(buf, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                yield self._bad_header(off, ended, exc)
                return
            if ended:
                log.warning("%s: more members after the end-of-archive marker at byte %d "
                            "(concatenated tars?): reading on, as tar --ignore-zeros does",
                            safe_text(self.shard), off)
            item = self._member(info, off, ext)
            if item is not None:
                yield item
                if isinstance(item, _Problem) and item.stop:
                    return

    def _bad_header(self, off: int, ended: bool, exc: Exception) -> _Problem:
        if off == 0:
            msg = (f"{self.shard}: not a tar archive ({exc}); check that the shard is an "
                   "uncompressed WebDataset .tar")
        elif ended:
            msg = (f"{self.shard}: {self.size - off:,} bytes after the end-of-archive marker "
                   f"(byte {off:,}){self._after()} are not a tar header ({exc}); the shard "
                   "was damaged or had data appended - re-download or re-copy it")
        else:
            msg = (f"{self.shard}: corrupt tar header at byte {off:,}{self._after()} ({exc}); "
                   f"the rest of the shard ({self.size - off:,} bytes) cannot be read - "
                   "re-download or re-copy it")
        return _Problem(off, "read_error", msg)

    def _negative(self, off: int, size: int) -> _Problem:
        """A negative size (base-256 or PAX) would send the reader backwards: stop there."""
        return _Problem(off, "read_error",
                        f"{self.shard}: corrupt tar header at byte {off:,}{self._after()} "
                        f"(member size {size}); the rest of the shard cannot be read - "
                        "re-download or re-copy it")

    def _member(self, info: tarfile.TarInfo, off: int,
                ext: dict) -> Optional[Union[_Member, _Problem]]:
        """The member of header ``info`` (None for an extended header, kept in ``ext``)."""
        t, size, data = info.type, info.size, off + _BLOCK
        if size < 0:
            return self._negative(off, size)
        if t in _LONG_TYPES or t in _PAX_TYPES:
            self.pos = data + _padded(size)
            kind = "GNU long-name" if t in _LONG_TYPES else "PAX extended"
            if size > self.max_header:
                return _Problem(off, "too_large",
                                f"{self.shard}: a {kind} header at byte {off:,}{self._after()} "
                                f"declares {size:,} bytes, over the {self.max_header:,}-byte "
                                "limit; ignored (not read) - the member after it is read "
                                "under its own header name; if the shard is genuine, re-create "
                                "it with shorter names", stop=False)
            raw = _pread(self.fd, size, data)
            if len(raw) < size:
                return None  # the next header read reports the truncation
            if t == tarfile.GNUTYPE_LONGNAME:
                ext["path"] = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif t == tarfile.GNUTYPE_LONGLINK:
                ext["linkpath"] = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif t != tarfile.XGLTYPE:  # global PAX records (rare) are read and ignored
                try:
                    ext.update(_parse_pax(raw))
                except ValueError as exc:
                    return _Problem(off, "read_error",
                                    f"{self.shard}: corrupt PAX header at byte {off:,}"
                                    f"{self._after()} ({exc}); ignored - the member after it "
                                    "is read under its own header name", stop=False)
            return None
        name, link = ext.pop("path", info.name), ext.pop("linkpath", info.linkname)
        if "size" in ext:
            try:
                size = int(ext["size"])
            except ValueError:
                pass
        ext.clear()
        if size < 0:
            return self._negative(off, size)
        self.pos = data + _padded(size)
        return _Member(name, t, size, link, off, data)


class _Group:
    """Members of the sample being assembled: the image bytes of the best ``--image-key``
    extension read so far (only that one is kept), link and other data-less members."""

    def __init__(self, key: str, keys: Sequence[str]):
        self.key = key
        self.rank = {k: i for i, k in enumerate(keys)}
        self.names: List[str] = []
        self.exts: set = set()
        self.best: Optional[Tuple[int, bytes]] = None     # (rank, bytes)
        self.nodata: dict = {}                            # ext -> description
        self.failure: Optional[Tuple[str, str]] = None

    def wants(self, ext: str) -> bool:
        r = self.rank.get(ext)
        return r is not None and (self.best is None or r < self.best[0])

    def sample(self, shard: str, sid: str, keys: Sequence[str], index: int) -> Sample:
        if self.failure is not None:
            return _failed(shard, sid, self.failure[0], self.failure[1], index)
        if self.best is not None:
            return Sample(id=sid, data=self.best[1], shard=shard, index=index)
        for k in keys:
            if k in self.nodata:
                return _failed(shard, sid, "not_a_file",
                               f"{sid}: the image member is {self.nodata[k]}, which has no "
                               "data in a tar (links are not followed); re-create the shard "
                               "with the image itself (tar --dereference --hard-dereference)",
                               index)
        shown = ", ".join(safe_text(posixpath.basename(n)) for n in self.names[:8])
        return _failed(shard, sid, "not_found",
                       f"{sid}: no image member with extension {' or '.join(keys)} in this "
                       f"sample (members: {shown}); choose the image member with --image-key",
                       index)


def iter_tar_samples(shard: str, image_keys: Sequence[str] = DEFAULT_IMAGE_KEYS,
                     max_member_bytes: int = MAX_MEMBER_BYTES,
                     max_header_bytes: int = MAX_HEADER_BYTES,
                     name: Optional[str] = None) -> Iterator[Sample]:
    """Samples of a WebDataset tar shard, in archive order, one pass (see module docstring).
    ``name`` is what the ids and messages call the shard when it is not ``shard`` (the URL
    of a remote shard read from its local spool copy).

    Never raises for a bad shard: a missing / unreadable / non-regular / non-tar file is one
    failed sample ``<shard>#@0``; a member cut short fails its sample (``truncated``); a shard
    that ends without the end-of-archive blocks, stops at a corrupt header or holds an
    oversized extended header adds a failed sample ``<shard>#@<byte offset>`` naming the
    last key read. Every member is accounted for: directories and ``__meta__`` members are
    skipped (they hold no sample), every other member belongs to a sample that gets a row.
    """
    keys = parse_image_keys(image_keys)
    label = shard if name is None else name
    opened = open_regular(shard, "shard")
    if not isinstance(opened, int):
        yield _failed(label, f"{label}#@0", opened[0], opened[1].replace(shard, label), 0)
        return
    try:
        size = os.fstat(opened).st_size
        if size == 0:
            yield _failed(label, f"{label}#@0", "empty_file",
                          f"{label}: the shard is empty (0 bytes); re-download or re-copy it", 0)
            return
        yield from _tar_samples(_TarScanner(opened, label, size, max_header_bytes), keys,
                                max_member_bytes)
    finally:
        os.close(opened)


def _tar_samples(scan: _TarScanner, keys: Tuple[str, ...], cap: int) -> Iterator[Sample]:
    shard = scan.shard
    ids = UniqueIds(shard)
    index = 0
    group: Optional[_Group] = None
    for m in scan:
        if isinstance(m, _Member) and (m.type == tarfile.DIRTYPE or _META.search(m.name)):
            continue
        if isinstance(m, _Problem) and m.eof and group is not None and \
                group.failure is not None and group.failure[0] == "truncated":
            continue  # the member cut short already says so
        key, ext = split_member(m.name) if isinstance(m, _Member) else ("", "")
        if isinstance(m, _Member) and not key:
            key = f"@{m.offset}"  # a member without a name
        if group is not None and (isinstance(m, _Problem) or key != group.key
                                  or ext in group.exts):
            yield group.sample(shard, ids(group.key), keys, index)
            index += 1
            group = None
        if isinstance(m, _Problem):
            yield _failed(shard, ids(f"@{m.offset}"), m.status, m.message, index)
            index += 1
            continue
        if group is None:
            group = _Group(key, keys)
        group.names.append(m.name)
        group.exts.add(ext)
        scan.last_key = key
        if m.type not in _FILE_TYPES:
            kind = _NODATA_KINDS.get(m.type, f"a member of tar type {m.type!r}")
            target = f" to {safe_text(m.link)!r}" if m.link else ""
            group.nodata.setdefault(ext, f"{safe_text(m.name)}: {kind}{target}")
        elif group.failure is None and group.wants(ext):
            _read_image(scan, group, m, ext, cap)
    if group is not None:
        yield group.sample(shard, ids(group.key), keys, index)
    elif index == 0:  # never silently nothing: an empty archive is a row too
        yield _failed(shard, ids("@0"), "empty_file",
                      f"{shard}: the shard holds no samples (an empty tar archive, or only "
                      "directories and __meta__ members); check how it was written", 0)
    if ids.repeats:
        log.warning("%s: %d samples repeat a key seen before in this shard; their rows are "
                    "named <key>.dup2, .dup3... (docs/scale.md)", safe_text(shard), ids.repeats)


def _read_image(scan: _TarScanner, group: _Group, m: _Member, ext: str, cap: int) -> None:
    """Read the image member ``m`` into ``group`` (or record why not): over ``cap`` it is
    never read (``too_large``); cut short by the end of the file, ``truncated``."""
    where = f"{scan.shard}#{group.key}"
    if m.size > cap:
        group.failure = ("too_large", f"{where}: member {safe_text(m.name)} is {m.size:,} bytes, "
                                      f"over the {cap:,}-byte limit for one image; not read - "
                                      "re-encode or drop that image")
        return
    data = _pread(scan.fd, m.size, m.data)
    if len(data) != m.size:
        group.failure = ("truncated",
                         f"{where}: the shard ends inside member {safe_text(m.name)} "
                         f"({len(data):,} of {m.size:,} bytes); the tar is truncated - "
                         "re-download or re-copy it")
        return
    group.best = (group.rank[ext], data)


# --------------------------------------------------------------------------- Parquet
def _require_pyarrow():
    from quasar.errors import optional_import

    optional_import("pyarrow.compute", "parquet", "Parquet inputs")
    optional_import("pyarrow.parquet", "parquet", "Parquet inputs")
    return optional_import("pyarrow", "parquet", "Parquet inputs")


def _column_kind(pa, field, column: str, file: str) -> str:
    """``binary`` / ``path`` / ``struct`` (Hugging Face Image: struct<bytes, path>) for the
    image column's type; raises :class:`SourceError` for any other type."""
    t = field.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or \
            getattr(pa.types, "is_binary_view", lambda _t: False)(t):
        return "binary"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "path"
    if pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields)):
        return "struct"
    raise SourceError(f"{file}: column {column!r} has type {t}; the image column must hold "
                      "encoded image bytes (binary), a struct with a 'bytes' field, or image "
                      "paths (string); choose it with --image-column")


def resolve_image_column(pa, schema, file: str, image_column: Optional[str],
                         id_column: Optional[str]) -> str:
    """The image column of a Parquet schema (given, or the default names, or the only binary
    column); raises :class:`SourceError` naming the columns when it cannot be found."""
    names = list(schema.names)
    col = image_column
    if col is None:
        col = next((c for c in DEFAULT_IMAGE_COLUMNS if c in names), None)
        if col is None:
            bins = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
            col = bins[0] if len(bins) == 1 else None
        if col is None:
            raise SourceError(f"{file}: no image column found among {names}; name it with "
                              "--image-column")
    if col not in names:
        raise SourceError(f"{file}: no column {col!r} (columns: {names}); choose the image column "
                          "with --image-column")
    if id_column is not None and id_column not in names:
        raise SourceError(f"{file}: no column {id_column!r} (columns: {names}); choose the id "
                          "column with --id-column, or leave it out to use row numbers")
    _column_kind(pa, schema.field(col), col, file)  # checks the type
    return col


def check_parquet_columns(file: str, image_column: Optional[str], id_column: Optional[str]) -> None:
    """Fail early (before a cluster run) on a Parquet file whose columns do not fit; an
    unreadable file is left to the reader (it becomes an error row)."""
    if is_url(file):  # a remote file's columns are checked when it is read (a row)
        return
    pa = _require_pyarrow()
    opened = open_regular(file, "Parquet file")  # a FIFO must not block the planner either
    if not isinstance(opened, int):
        return
    proc = f"/proc/self/fd/{opened}"
    try:
        schema = pa.parquet.read_schema(proc if os.path.exists(proc) else file)
    except Exception:  # noqa: BLE001
        return
    finally:
        os.close(opened)
    resolve_image_column(pa, schema, file, image_column, id_column)


# Parquet page headers are Thrift compact structs; reading the three sizes and the row count
# of each page of the image column (a few bytes per page, never the page itself) is what
# lets a decompression bomb be refused before pyarrow allocates its decompressed size.
def _varint(buf: bytes, i: int) -> Tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _thrift_skip(buf: bytes, i: int, t: int, in_list: bool = False) -> int:
    if t in (1, 2):
        return i + 1 if in_list else i
    if t == 3:
        return i + 1
    if t in (4, 5, 6):
        return _varint(buf, i)[1]
    if t == 7:
        return i + 8
    if t == 8:
        n, i = _varint(buf, i)
        return i + n
    if t in (9, 10):
        h = buf[i]
        n, et, i = h >> 4, h & 0x0F, i + 1
        if n == 15:
            n, i = _varint(buf, i)
        for _ in range(n):
            i = _thrift_skip(buf, i, et, True)
        return i
    if t == 11:
        n, i = _varint(buf, i)
        if n:
            kv, i = buf[i], i + 1
            for _ in range(n):
                i = _thrift_skip(buf, _thrift_skip(buf, i, kv >> 4, True), kv & 0x0F, True)
        return i
    if t == 12:
        return _thrift_struct(buf, i)[1]
    raise ValueError(f"unknown thrift type {t}")


def _thrift_struct(buf: bytes, i: int) -> Tuple[dict, int]:
    """{field id: int or nested dict} of the integer and struct fields; the end offset."""
    out: dict = {}
    fid = 0
    while True:
        h = buf[i]
        i += 1
        if h == 0:
            return out, i
        delta, t = h >> 4, h & 0x0F
        if delta:
            fid += delta
        else:
            z, i = _varint(buf, i)
            fid = (z >> 1) ^ -(z & 1)
        if t in (5, 6):
            z, i = _varint(buf, i)
            out[fid] = (z >> 1) ^ -(z & 1)
        elif t == 12:
            out[fid], i = _thrift_struct(buf, i)
        else:
            i = _thrift_skip(buf, i, t)


def _page_header(fd: int, offset: int) -> Tuple[dict, int]:
    size = 256
    while True:
        buf = os.pread(fd, size, offset)
        try:
            return _thrift_struct(buf, 0)
        except IndexError:
            if len(buf) < size or size >= MAX_HEADER_BYTES:
                raise ValueError(f"page header at byte {offset:,} cannot be read") from None
            size *= 4


def _pages(fd: int, chunk) -> Iterator[Tuple[int, int, Optional[int], int]]:
    """``(offset, uncompressed size, rows, values)`` of each page of a column chunk (rows
    None for a dictionary page; values: its entries) - from the page headers alone."""
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    pos, end = start, start + chunk.total_compressed_size
    while pos < end:
        hdr, n = _page_header(fd, pos)
        ptype, usize, csize = hdr.get(1), hdr.get(2, 0), hdr.get(3, 0)
        if csize < 0 or usize < 0:
            raise ValueError(f"negative page size at byte {pos:,}")
        sub = hdr.get({0: 5, 2: 7, 3: 8}.get(ptype, -1), {})
        rows = sub.get(3 if ptype == 3 else 1) if ptype in (0, 3) else None
        if ptype != 1:  # 0 data, 2 dictionary, 3 data v2; 1 (index pages) is skipped
            yield pos, usize, rows, max(1, sub.get(1) or 1)
        pos += n + csize


def _page_scan(fd: int, chunk, cap: int, page_cap: int
               ) -> Tuple[Optional[Tuple[int, int, int, int]], int]:
    """Checks the pages of the image column chunk before pyarrow decompresses any: returns
    ``(first row, offset, decompressed size, values)`` of the first page that must not be
    decompressed - over ``page_cap``, or holding more than ``cap`` bytes per value (so at
    least one cell over the cap: a decompression bomb) - or None; and the largest bytes per
    value of the pages (to size the record batches)."""
    row, per_value = 0, 0
    for pos, usize, rows, values in _pages(fd, chunk):
        if usize > page_cap or usize > cap * values:
            return ((row if rows is not None else 0), pos, usize, values), per_value
        per_value = max(per_value, usize // values)
        row += rows or 0
    return None, per_value


def _open_parquet(pa, file: str):
    """``(ParquetFile, fd)``, or a failed sample's ``(status, message)``. The file is checked
    to be regular and opened once, without blocking (:func:`open_regular`); pyarrow reads it
    through ``/proc/self/fd`` (the same open file) where there is one, and with a bounded
    read buffer (``buffer_size``): never a whole column chunk in memory."""
    opened = open_regular(file, "Parquet file")
    if not isinstance(opened, int):
        return opened
    if os.fstat(opened).st_size == 0:
        os.close(opened)
        return "empty_file", f"{file}: the Parquet file is empty (0 bytes); re-download or re-copy it"
    proc = f"/proc/self/fd/{opened}"
    try:
        pf = pa.parquet.ParquetFile(proc if os.path.exists(proc) else file,
                                    buffer_size=_PARQUET_BUFFER, pre_buffer=False)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid etc. for garbage
        os.close(opened)
        msg = str(exc).replace(proc, file)
        return "read_error", (f"{file}: not a readable Parquet file ({msg}); it is truncated "
                              "or corrupt - re-download or re-copy it")
    return pf, opened


def iter_parquet_samples(file: str, image_column: Optional[str] = None,
                         id_column: Optional[str] = None, batch_rows: int = 64,
                         max_cell_bytes: int = MAX_MEMBER_BYTES,
                         max_page_bytes: Optional[int] = None,
                         name: Optional[str] = None) -> Iterator[Sample]:
    """Samples of a Parquet file, row by row, read in small record batches per row group.
    ``name``: what ids and messages call the file when it is not ``file`` (the URL of a
    remote file read from its spool copy; relative paths in a path column are then relative
    to that URL).

    The id is ``<file>#<id column value>`` (``<file>#<row number>`` without ``id_column``;
    ``<file>#@row<N>`` for a null id; repeats get ``.dup2``... - :class:`UniqueIds`). Never
    raises for a bad file: one that cannot be opened, or whose columns do not fit the
    options (``source_error``), is one failed sample ``<file>#@0``; a row group that cannot be
    read is one failed sample ``<file>#@rowgroup<i>`` naming its rows. Memory is bounded
    before anything is decompressed: a page of the image column over ``max_page_bytes``
    (default twice ``max_cell_bytes``: a pyarrow writer with default settings puts up to 1024
    values in a page) or with more than ``max_cell_bytes`` per value is never decompressed
    (:func:`_page_scan`); then the length of every cell is checked before it is copied.
    """
    pa = _require_pyarrow()
    opened = _open_parquet(pa, file)
    if name is not None:
        if not isinstance(opened[0], pa.parquet.ParquetFile):
            opened = (opened[0], opened[1].replace(file, name))
        file = name
    if not isinstance(opened[0], pa.parquet.ParquetFile):
        yield _failed(file, f"{file}#@0", opened[0], opened[1], 0)
        return
    pf, fd = opened
    try:
        try:
            schema = pf.schema_arrow
            col = resolve_image_column(pa, schema, file, image_column, id_column)
            kind = _column_kind(pa, schema.field(col), col, file)
        except SourceError as exc:
            yield _failed(file, f"{file}#@0", SourceError.status, str(exc), 0)
            return
        reader = _ParquetRows(pa, pf, fd, file, col, kind, id_column, batch_rows,
                              (max_cell_bytes, max_page_bytes or 2 * max_cell_bytes))
        yield from reader
    finally:
        pf.close()
        os.close(fd)


class _ParquetRows:
    """The rows of one Parquet file as samples (see :func:`iter_parquet_samples`)."""

    def __init__(self, pa, pf, fd: int, file: str, col: str, kind: str,
                 id_column: Optional[str], batch_rows: int, caps: Tuple[int, int]):
        self.pa, self.pf, self.fd, self.file = pa, pf, fd, file
        self.col, self.kind, self.id_column = col, kind, id_column
        self.cap, self.page_cap = caps
        self.batch_rows = batch_rows
        self.columns = [col] + ([id_column] if id_column and id_column != col else [])
        md = pf.metadata
        leaf = f"{col}.bytes" if kind == "struct" else col
        self.leaf = next((i for i in range(md.num_columns)
                          if md.schema.column(i).path == leaf), None)
        self.ids = UniqueIds(file)
        self.base_dir = None if is_url(file) else os.path.dirname(file)
        self.index = 0
        self.row = 0

    def __iter__(self) -> Iterator[Sample]:
        md = self.pf.metadata
        for rg in range(self.pf.num_row_groups):
            n_rg = md.row_group(rg).num_rows
            start = self.row
            try:
                yield from self._row_group(rg, n_rg)
            except Exception as exc:  # noqa: BLE001 - a corrupt page/row group: name its rows
                first, self.row = self.row, start + n_rg
                yield _failed(self.file, self.ids(f"@rowgroup{rg}"), "read_error",
                              f"{self.file}: row group {rg} (rows {first}..{self.row - 1}) "
                              f"cannot be read ({type(exc).__name__}: {exc}); the file is "
                              "corrupt - re-download or re-copy it", self.index)
                self.index += 1
        if self.index == 0:  # never silently nothing: a file without rows is a row too
            yield _failed(self.file, self.ids("@0"), "empty_file",
                          f"{self.file}: the Parquet file has no rows; check how it was "
                          "written", 0)
        if self.ids.repeats:
            log.warning("%s: %d rows repeat an id seen before in this file; they are named "
                        "<id>.dup2, .dup3... (docs/scale.md)", safe_text(self.file),
                        self.ids.repeats)

    def _row_group(self, rg: int, n_rg: int) -> Iterator[Sample]:
        chunk = self.pf.metadata.row_group(rg).column(self.leaf) if self.leaf is not None else None
        bad, per_value = (_page_scan(self.fd, chunk, self.cap, self.page_cap)
                          if chunk is not None else (None, 0))
        readable = n_rg if bad is None else bad[0]
        batch = max(1, min(self.batch_rows, _PARQUET_BATCH_BYTES // max(1, per_value)))
        end = self.row + readable
        if readable:
            for b in self.pf.iter_batches(batch_size=batch, row_groups=[rg],
                                          columns=self.columns, use_threads=False):
                yield from self._batch(b, end)
                if self.row >= end:
                    break
        if bad is not None:
            yield from self._refused(rg, n_rg - readable, bad)

    def _batch(self, batch, end: int) -> Iterator[Sample]:
        arr = batch.column(self.col)
        ids = (batch.column(self.id_column).to_pylist() if self.id_column
               else [None] * len(arr))
        for cell, rid in zip(self._cells(arr), ids):
            if self.row >= end:
                return
            yield self._sample(cell, rid)
            self.row += 1
            self.index += 1

    def _cells(self, arr) -> Iterator[Tuple[Optional[bytes], Optional[str], int]]:
        """``(bytes, path, over-cap length)`` per cell: a cell's length is checked from the
        array's offsets before the cell is copied out of it."""
        pc = self.pa.compute
        if self.kind == "struct":
            parts = dict(zip([f.name for f in arr.type], arr.flatten()))
            data, paths = parts["bytes"], parts.get("path")
        elif self.kind == "binary":
            data, paths = arr, None
        else:
            data, paths = None, arr
        sized = data if data is not None else paths
        lengths = pc.binary_length(sized)
        biggest = pc.max(lengths).as_py() or 0
        big = biggest > self.cap
        dl = data.to_pylist() if data is not None and not big else None
        pl = paths.to_pylist() if paths is not None and not big else None
        for i in range(len(arr)):
            if big and (lengths[i].as_py() or 0) > self.cap:
                yield None, None, lengths[i].as_py()
                continue
            d = dl[i] if dl is not None else (data[i].as_py() if data is not None else None)
            p = pl[i] if pl is not None else (paths[i].as_py() if paths is not None else None)
            yield (d, None if d is not None else p, 0)

    def _sid(self, rid) -> str:
        """The row's id: row numbers are unique by construction (no digest kept for them);
        id-column values go through :class:`UniqueIds`."""
        if not self.id_column:
            return f"{self.file}#{self.row}"
        return self.ids(f"@row{self.row}" if rid is None else str(rid))

    def _sample(self, cell: Tuple[Optional[bytes], Optional[str], int], rid) -> Sample:
        data, path, over = cell
        file, col, index = self.file, self.col, self.index
        sid = self._sid(rid)
        if over:
            return _failed(file, sid, "too_large",
                           f"{sid}: the cell of column {col!r} is {over:,} bytes, over the "
                           f"{self.cap:,}-byte limit for one image (as for a tar member); not "
                           "read - re-encode or drop that image", index)
        if data is None and path is None:
            return _failed(file, sid, "empty_file", f"{sid}: no image in column {col!r} (null)",
                           index)
        if data is not None:
            if len(data) == 0:
                return _failed(file, sid, "empty_file",
                               f"{sid}: empty image bytes in column {col!r}", index)
            return Sample(id=sid, data=data, shard=file, index=index)
        if "\0" in path:
            return _failed(file, sid, "not_found",
                           f"{sid}: the path in column {col!r} contains a NUL byte, which no "
                           "file name can hold; fix the path in the Parquet file", index)
        # relative paths are relative to the Parquet file's folder (or URL), never the
        # working dir; absolute paths and URLs are taken as they are
        if is_url(path) or os.path.isabs(path):
            p = path
        elif self.base_dir is None:
            p = url_join(file, path)
        else:
            p = os.path.join(self.base_dir, path)
        return Sample(id=sid, path=p, shard=file, index=index)

    def _refused(self, rg: int, n: int, bad: Tuple[int, int, int, int]) -> Iterator[Sample]:
        """Rows from an oversized page to the end of its row group: never decompressed
        (pyarrow reads the pages of a row group in order); named by their ids."""
        first, pos, usize, values = bad
        why = (f"over the {self.page_cap:,}-byte limit for one page" if usize > self.page_cap
               else f"for {values} value(s): over the {self.cap:,}-byte limit for one image")
        start = self.row
        ids: Iterator = iter([None] * n)
        if self.id_column:
            got = []
            for b in self.pf.iter_batches(batch_size=1024, row_groups=[rg],
                                          columns=[self.id_column], use_threads=False):
                got.extend(b.column(0).to_pylist())
            ids = iter(got[first:first + n])
        for rid in ids:
            sid = self._sid(rid)
            yield _failed(self.file, sid, "too_large",
                          f"{sid}: not read - the page at byte {pos:,} of column "
                          f"{self.col!r} (row group {rg}, from row {start}) decompresses to "
                          f"{usize:,} bytes {why}; this row is in that page or after it in "
                          "its row group (pages are read in order) - drop the oversized image "
                          "or re-write the file with smaller pages and row groups (pyarrow: "
                          "row_group_size=100, write_batch_size=64)", self.index)
            self.row += 1
            self.index += 1
