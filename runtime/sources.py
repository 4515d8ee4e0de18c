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
being read. Meta members (``__key__``-style names) are ignored.

Why the standard library's ``tarfile`` and not the ``webdataset`` package: reading a local
shard needs only the streaming ``tarfile`` mode (``r|``: one pass, one member in memory),
the grouping rule is ten lines, and the runtime stays lean (``webdataset`` would bring
``braceexpand``, ``pyyaml`` and its own handler conventions). We also need what
``webdataset`` does not give: a truncated shard or a corrupt header must become a row that
names the shard and the last key, never a silently shorter shard (``tarfile`` treats a bad
header after the first member as the end of the archive; :func:`iter_tar_samples` checks
that the archive really ends with its end-of-archive blocks).

Streaming, flat memory: a tar is read member by member (``tarfile`` keeps every
``TarInfo`` it has seen unless told otherwise; the list is cleared as we go), a Parquet file
row group by row group in small record batches (pyarrow ``iter_batches``).

Failures never lose a shard: a missing or unreadable shard, a member cut short, a sample
without an image member, an unreadable Parquet row group each become a :class:`Sample`
that already carries its status and message (the same statuses as loose files:
``not_found``, ``empty_file``, ``truncated``, ``read_error``, ``too_large``); corrupt image
bytes fail later, in decoding, exactly as a corrupt loose file does.
"""
from __future__ import annotations

import os
import posixpath
import re
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from quasar.constants import STATUS_OK
from quasar.errors import (EmptyImageError, ImageDecodeError, ImageNotFoundError,
                           ImageTooLargeError, NotAnImageError, SourceError,
                           TruncatedImageError, error_status)

from .images import describe_source

DEFAULT_IMAGE_KEYS = ("jpg", "png", "webp")
#: image-column names tried in order when ``--image-column`` is not given
DEFAULT_IMAGE_COLUMNS = ("image", "jpg", "img", "png", "webp", "image_bytes", "bytes")
#: a tar member larger than this is not read into memory (a row with status too_large)
MAX_MEMBER_BYTES = 256 << 20
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


_STATUS_ERRORS = {
    "not_found": ImageNotFoundError, "empty_file": EmptyImageError,
    "truncated": TruncatedImageError, "too_large": ImageTooLargeError,
    "not_an_image": NotAnImageError,
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
        try:
            return load(src)
        except Exception as exc:  # noqa: BLE001 - renamed, then the engine isolates it
            msg = str(exc) if isinstance(exc, ImageDecodeError) else f"{type(exc).__name__}: {exc}"
            name = describe_source(src)
            if item.data is not None and msg.startswith(name):
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


def _open_error(shard: str, exc: OSError) -> Tuple[str, str]:
    if isinstance(exc, FileNotFoundError):
        return "not_found", f"{shard}: no such file; check the path"
    if isinstance(exc, IsADirectoryError):
        return "not_found", f"{shard}: is a directory, not a shard file"
    return "read_error", f"{shard}: cannot open the shard ({exc.strerror or exc}); check permissions"


# --------------------------------------------------------------------------- brace patterns
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> List[str]:
    """WebDataset / shell brace patterns: ``shard-{00000..00099}.tar`` (zero-padded numeric
    range, padding taken from the bounds), ``{train,val}``; several groups multiply out, in
    order. A pattern without a brace group is returned as is."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    r = _RANGE.match(body)
    if r:
        lo, hi = r.group(1), r.group(2)
        a, b = int(lo), int(hi)
        width = len(lo) if (lo.startswith("0") or hi.startswith("0")) else 0
        step = 1 if b >= a else -1
        alts = [str(i).zfill(width) for i in range(a, b + step, step)]
    elif "," in body:
        alts = body.split(",")
    else:  # "{x}" is literal, as in the shell
        return [pattern[:m.end()] + rest for rest in expand_braces(pattern[m.end():])]
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [head + alt + rest for alt in alts for rest in expand_braces(tail)]


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

    def samples(self, path: str) -> Iterator[Sample]:
        """Samples of one dataset file (``webdataset`` or ``parquet`` kind)."""
        kind = self.kind(path)
        if kind == "webdataset":
            return iter_tar_samples(path, self.image_keys)
        if kind == "parquet":
            return iter_parquet_samples(path, self.image_column, self.id_column,
                                        self.parquet_batch_rows)
        raise SourceError(f"{path}: not a dataset file (input type {kind})")

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


def iter_items(paths: Iterator[str], opts: SourceOptions) -> Iterator[Union[str, Sample]]:
    """Loose image paths as they are, dataset files expanded into their samples (inputs that
    already failed, e.g. an unlistable folder, pass through)."""
    for p in paths:
        if not isinstance(p, str) or opts.kind(p) == "image":
            yield p
        else:
            yield from opts.samples(p)


# --------------------------------------------------------------------------- WebDataset
def split_member(name: str) -> Optional[Tuple[str, str]]:
    """(key, extension) of a tar member the WebDataset way, None for names without a dot."""
    d, base = posixpath.split(name)
    if "." not in base or base.startswith("."):
        return None
    stem, ext = base.split(".", 1)
    return (posixpath.join(d, stem) if d else stem), ext.lower()


class _Group:
    """Members of the sample being assembled (image bytes only for the wanted extensions)."""

    def __init__(self, key: str):
        self.key = key
        self.names: List[str] = []
        self.exts: set = set()
        self.images: dict = {}     # ext -> bytes
        self.failure: Optional[Tuple[str, str]] = None

    def sample(self, shard: str, keys: Sequence[str], index: int) -> Sample:
        sid = f"{shard}#{self.key}"
        if self.failure is not None:
            return _failed(shard, sid, self.failure[0], self.failure[1], index)
        for k in keys:
            if k in self.images:
                return Sample(id=sid, data=self.images[k], shard=shard, index=index)
        shown = ", ".join(posixpath.basename(n) for n in self.names[:8])
        return _failed(shard, sid, "not_found",
                       f"{sid}: no image member with extension {' or '.join(keys)} in this "
                       f"sample (members: {shown}); choose the image member with --image-key",
                       index)


def iter_tar_samples(shard: str, image_keys: Sequence[str] = DEFAULT_IMAGE_KEYS,
                     max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[Sample]:
    """Samples of a WebDataset tar shard, in archive order, one pass (see module docstring).

    Never raises for a bad shard: a missing/unreadable/non-tar file is one failed sample
    ``<shard>#@0``; a member cut short fails its sample (``truncated``); a shard that ends
    without the end-of-archive blocks, or stops at a corrupt header, adds a failed sample
    ``<shard>#@<byte offset>`` naming the last key read.
    """
    keys = parse_image_keys(image_keys)
    index = 0
    try:
        f = open(shard, "rb")
    except OSError as exc:
        status, msg = _open_error(shard, exc)
        yield _failed(shard, f"{shard}#@0", status, msg, 0)
        return
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            yield _failed(shard, f"{shard}#@0", "empty_file",
                          f"{shard}: the shard is empty (0 bytes); re-download or re-copy it", 0)
            return
        try:
            tar = tarfile.open(fileobj=f, mode="r|")
        except (tarfile.TarError, OSError, EOFError) as exc:
            yield _failed(shard, f"{shard}#@0", "read_error",
                          f"{shard}: not a tar archive ({exc}); check that the shard is an "
                          "uncompressed WebDataset .tar", 0)
            return
        group: Optional[_Group] = None
        last_key = ""
        reading: Optional[tarfile.TarInfo] = None  # the member whose data is being read
        broken: Optional[Tuple[str, str, str]] = None   # (id, status, message) for the shard
        cut = False  # a member's data ended early: its sample says so, nothing follows
        try:
            for info in tar:
                tar.members = []  # flat memory: tarfile keeps every TarInfo otherwise
                if not info.isfile() or _META.search(info.name):
                    continue
                km = split_member(info.name)
                if km is None:
                    continue
                key, ext = km
                if group is not None and (key != group.key or ext in group.exts):
                    yield group.sample(shard, keys, index)
                    index += 1
                    group = None
                if group is None:
                    group = _Group(key)
                group.names.append(info.name)
                group.exts.add(ext)
                last_key = key
                if ext in keys and group.failure is None:
                    if info.size > max_member_bytes:
                        sid = f"{shard}#{key}"
                        group.failure = ("too_large",
                                         f"{sid}: member {info.name} is {info.size:,} bytes, over "
                                         f"the {max_member_bytes:,}-byte limit for one image")
                        continue
                    reading = info
                    fobj = tar.extractfile(info)
                    data = fobj.read() if fobj is not None else b""
                    if len(data) != info.size:
                        raise tarfile.ReadError("unexpected end of data")
                    group.images[ext] = data
                    reading = None
        except (tarfile.TarError, OSError, EOFError) as exc:
            if reading is not None and group is not None:
                cut = True
                sid = f"{shard}#{group.key}"
                group.failure = ("truncated",
                                 f"{sid}: the shard ends or breaks inside member {reading.name} "
                                 f"({exc}); the tar is truncated or corrupt - re-download or "
                                 "re-copy it")
            else:
                off = getattr(tar, "offset", 0)
                ended = isinstance(exc, EOFError) or "end of data" in str(exc) \
                    or "truncated" in str(exc).lower()
                broken = (f"{shard}#@{off}", "truncated" if ended else "read_error",
                          f"{shard}: cannot read the tar past byte {off:,}"
                          + (f" (after key {last_key})" if last_key else "")
                          + f": {exc}; samples after it are missing - re-download or re-copy "
                          "the shard")
        if group is not None:
            yield group.sample(shard, keys, index)
            index += 1
        if broken is None and not cut:
            broken = _check_tar_end(f, shard, tar.offset, size, last_key)
        if broken is not None:
            yield _failed(shard, broken[0], broken[1], broken[2], index)


def _check_tar_end(f, shard: str, offset: int, size: int,
                   last_key: str) -> Optional[Tuple[str, str, str]]:
    """tarfile stops silently at a bad header or at a missing end: check that two zero
    blocks really follow the last member (what every tar writer puts there)."""
    after = f" (after key {last_key})" if last_key else ""
    try:
        tail = os.pread(f.fileno(), 2 * _BLOCK, offset)
    except OSError as exc:
        return (f"{shard}#@{offset}", "read_error",
                f"{shard}: cannot read byte {offset:,}{after}: {exc}")
    if len(tail) < 2 * _BLOCK:
        return (f"{shard}#@{offset}", "truncated",
                f"{shard}: the shard ends at byte {size:,} without the end-of-archive "
                f"marker{after}; it is truncated and samples after it are missing - "
                "re-download or re-copy it")
    if tail.count(0) != len(tail):
        return (f"{shard}#@{offset}", "read_error",
                f"{shard}: corrupt tar header at byte {offset:,}{after}; the rest of the shard "
                f"({size - offset:,} bytes) cannot be read - re-download or re-copy it")
    return None


# --------------------------------------------------------------------------- Parquet
def _require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        from quasar.errors import MissingDependencyError

        raise MissingDependencyError(
            'Parquet inputs need pyarrow: pip install "quasar[parquet]" (or pip install pyarrow)'
        ) from exc
    return pyarrow


def _image_getter(pa, field, column: str, file: str):
    """A function (arrow array) -> list of (bytes or None, path or None) for the column."""
    t = field.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or \
            getattr(pa.types, "is_binary_view", lambda _t: False)(t):
        return lambda arr: [(v, None) for v in arr.to_pylist()]
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return lambda arr: [(None, v) for v in arr.to_pylist()]
    if pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields)):
        has_path = any(t.field(i).name == "path" for i in range(t.num_fields))

        def get(arr):  # Hugging Face datasets' Image feature: struct<bytes, path>
            out = []
            for v in arr.to_pylist():
                if v is None:
                    out.append((None, None))
                elif v.get("bytes") is not None:
                    out.append((v["bytes"], None))
                else:
                    out.append((None, v.get("path") if has_path else None))
            return out
        return get
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
    _image_getter(pa, schema.field(col), col, file)  # checks the type
    return col


def check_parquet_columns(file: str, image_column: Optional[str], id_column: Optional[str]) -> None:
    """Fail early (before a cluster run) on a Parquet file whose columns do not fit; an
    unreadable file is left to the reader (it becomes an error row)."""
    pa = _require_pyarrow()
    try:
        schema = pa.parquet.read_schema(file)
    except Exception:  # noqa: BLE001
        return
    resolve_image_column(pa, schema, file, image_column, id_column)


def iter_parquet_samples(file: str, image_column: Optional[str] = None,
                         id_column: Optional[str] = None, batch_rows: int = 64) -> Iterator[Sample]:
    """Samples of a Parquet file, row by row, read in small record batches per row group.

    The id is ``<file>#<id column value>`` (``<file>#<row number>`` without ``id_column``).
    A file that cannot be opened is one failed sample ``<file>#@0``; a row group that cannot
    be read is one failed sample ``<file>#@rowgroup<i>`` naming its rows. A wrong column name
    raises :class:`SourceError` (a configuration error, not a bad sample).
    """
    pa = _require_pyarrow()
    pq = pa.parquet
    try:
        pf = pq.ParquetFile(file)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) or not os.path.exists(file):
            status, msg = _open_error(file, FileNotFoundError(str(exc)))
        elif os.path.isfile(file) and os.path.getsize(file) == 0:
            status, msg = "empty_file", f"{file}: the Parquet file is empty (0 bytes); re-download or re-copy it"
        else:
            status, msg = "read_error", (f"{file}: not a readable Parquet file ({exc}); it is "
                                         "truncated or corrupt - re-download or re-copy it")
        yield _failed(file, f"{file}#@0", status, msg, 0)
        return
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid etc. for garbage
        yield _failed(file, f"{file}#@0", "read_error",
                      f"{file}: not a readable Parquet file ({exc}); it is truncated or corrupt "
                      "- re-download or re-copy it", 0)
        return
    schema = pf.schema_arrow
    col = resolve_image_column(pa, schema, file, image_column, id_column)
    get_images = _image_getter(pa, schema.field(col), col, file)
    columns = [col] + ([id_column] if id_column and id_column != col else [])
    base_dir = os.path.dirname(file)
    row = 0
    index = 0
    for rg in range(pf.num_row_groups):
        n_rg = pf.metadata.row_group(rg).num_rows
        start = row
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=columns):
                images = get_images(batch.column(col))
                ids = batch.column(id_column).to_pylist() if id_column else [None] * len(images)
                for (data, path), rid in zip(images, ids):
                    sid = f"{file}#{rid if rid is not None else row}"
                    if data is None and path is None:
                        yield _failed(file, sid, "empty_file",
                                      f"{sid}: no image in column {col!r} (null)", index)
                    elif data is not None and len(data) == 0:
                        yield _failed(file, sid, "empty_file",
                                      f"{sid}: empty image bytes in column {col!r}", index)
                    elif data is not None:
                        yield Sample(id=sid, data=bytes(data), shard=file, index=index)
                    else:
                        p = path if os.path.isabs(path) or os.path.exists(path) else \
                            os.path.join(base_dir, path)
                        yield Sample(id=sid, path=p, shard=file, index=index)
                    row += 1
                    index += 1
        except Exception as exc:  # noqa: BLE001 - a corrupt page/row group: name its rows
            if isinstance(exc, SourceError):
                raise
            first = row
            row = start + n_rg
            yield _failed(file, f"{file}#@rowgroup{rg}", "read_error",
                          f"{file}: row group {rg} (rows {first}..{row - 1}) cannot be read "
                          f"({type(exc).__name__}: {exc}); the file is corrupt - re-download "
                          "or re-copy it", index)
            index += 1
