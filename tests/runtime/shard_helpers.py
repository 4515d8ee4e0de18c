"""Test helpers: WebDataset tar shards and Parquet files of small images, written with the
standard library and pyarrow directly (not with quasar's readers), plus hostile variants."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image


def encode(arr: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def image_bytes(seed: int, fmt: str = "JPEG", size: Tuple[int, int] = (48, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8), fmt)


def write_tar(path: Path, members: Sequence[Tuple[str, bytes]]) -> Path:
    """A tar with these (name, data) members, in order (what webdataset's TarWriter writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            t.addfile(info, io.BytesIO(data))
    return path


def member_offsets(path: Path) -> Dict[str, Tuple[int, int]]:
    """name -> (header offset, data offset) of every member (read with tarfile, seekable)."""
    with tarfile.open(path, "r:") as t:
        return {m.name: (m.offset, m.offset_data) for m in t.getmembers()}


def good_shards(root: Path, n_shards: int = 2, per_shard: int = 4,
                seed0: int = 0) -> Tuple[List[Path], Dict[str, bytes]]:
    """WebDataset shards: each sample has a .jpg (or .png every third) and a .json; returns
    the shards and {expected row id: image bytes}."""
    shards, expected = [], {}
    for s in range(n_shards):
        members = []
        path = root / f"shard-{s:05d}.tar"
        for k in range(per_shard):
            key = f"{s:02d}{k:04d}"
            fmt, ext = ("PNG", "png") if k % 3 == 2 else ("JPEG", "jpg")
            data = image_bytes(seed0 + 100 * s + k, fmt, (40 + 3 * k, 56))
            members += [(f"{key}.{ext}", data), (f"{key}.json", b'{"caption": "x"}')]
            expected[f"{path}#{key}"] = data
        shards.append(write_tar(path, members))
    return shards, expected


def write_parquet(path: Path, columns: Dict[str, list], row_group_size: int = 3) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


BLOCK = 512


def header(name: str, size: int = 0, type: bytes = tarfile.REGTYPE, linkname: str = "") -> bytes:
    """One 512-byte ustar header (any type, any declared size: for hostile tars)."""
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mtime = size, type, linkname, 0
    return info.tobuf(tarfile.USTAR_FORMAT)


def write_raw_tar(path: Path, parts: Sequence[Tuple[bytes, object]], end: bool = True) -> Path:
    """A tar from (header, data) parts; data is bytes, or an int: a hole of that many bytes
    (a sparse file: gigabytes declared, nothing on disk). Ends with the two zero blocks."""
    with open(path, "wb") as f:
        for hdr, data in parts:
            f.write(hdr)
            if isinstance(data, int):
                f.seek(-(-data // BLOCK) * BLOCK, 1)
            else:
                f.write(data + b"\0" * (-len(data) % BLOCK))
        if end:
            f.write(b"\0" * 2 * BLOCK)
        f.truncate()
    return path


def member(name: str, data: bytes) -> Tuple[bytes, bytes]:
    return header(name, len(data)), data
