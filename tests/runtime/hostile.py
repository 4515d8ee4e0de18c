"""Test helpers for ``quasar score``: small image trees (good and hostile files) and a fake
scorer with the Scorer API, for fast pipeline tests that need no bundle."""
from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from quasar.errors import ImageDecodeError, ImageTooLargeError


def _noise(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return base


def write_good_tree(root: Path) -> List[Path]:
    """Good images of several formats/sizes in nested folders, plus files the directory
    walk must skip (hidden files, hidden dirs, non-images). Returns the good files, in the
    order the walk must produce them."""
    root.mkdir(parents=True, exist_ok=True)
    files: Dict[str, Tuple[str, tuple, str]] = {
        "a.png": ("RGB", (40, 30), "PNG"),
        "b.jpg": ("RGB", (64, 48), "JPEG"),
        "C.JPG": ("RGB", (50, 70), "JPEG"),
        "d.webp": ("RGB", (50, 50), "WEBP"),
        "e.bmp": ("RGB", (33, 20), "BMP"),
        "f.tiff": ("RGB", (32, 32), "TIFF"),
        "gray.png": ("L", (45, 60), "PNG"),
        "rgba.png": ("RGBA", (36, 36), "PNG"),
        "sub/g.png": ("RGB", (80, 60), "PNG"),
        "sub/deeper/h.jpeg": ("RGB", (120, 90), "JPEG"),
        "sub/deeper/i.tif": ("RGB", (60, 120), "TIFF"),
        "sub2/j.webp": ("RGB", (96, 64), "WEBP"),
    }
    for i, (rel, (mode, size, fmt)) in enumerate(files.items()):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        arr = _noise(size[1], size[0], i, 4 if mode == "RGBA" else 3)
        img = Image.fromarray(arr, "RGBA" if mode == "RGBA" else "RGB")
        if mode == "L":
            img = img.convert("L")
        img.save(p, fmt)
    # things the walk skips
    Image.fromarray(_noise(20, 20, 99)).save(root / ".hidden.png")
    (root / ".hiddendir").mkdir(exist_ok=True)
    Image.fromarray(_noise(20, 20, 98)).save(root / ".hiddendir" / "x.png")
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "readme.md").write_text("# nothing")
    return [root / r for r in sorted_walk_order(files)]


def sorted_walk_order(files) -> List[str]:
    """Independent statement of the walk order: sort by path components."""
    return sorted(files, key=lambda r: r.split("/"))


def _png_with_size(path: Path, w: int, h: int) -> None:
    """A tiny PNG whose header declares w x h (a decompression bomb for the size check)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


GOOD_HOSTILE = ("cmyk.jpg", "deep16.png", "palette_alpha.png", "animated.gif", "one.png")
BAD_HOSTILE = {  # file -> acceptable statuses
    "zero.png": {"empty_file", "decode_error"},
    "truncated.jpg": {"truncated", "decode_error"},
    "text.png": {"not_an_image", "decode_error"},
    "bomb.png": {"too_large"},
}


def write_hostile(root: Path) -> Dict[str, Path]:
    """Hostile files: decodable oddities (GOOD_HOSTILE) and undecodable ones (BAD_HOSTILE)."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    p = root / "zero.png"
    p.write_bytes(b"")
    out[p.name] = p
    p = root / "truncated.jpg"
    buf = root / "_full.jpg.tmp"
    Image.fromarray(_noise(200, 200, 7)).save(buf, "JPEG", quality=95)
    data = buf.read_bytes()
    buf.unlink()
    p.write_bytes(data[: len(data) // 3])
    out[p.name] = p
    p = root / "text.png"
    p.write_text("this is text, not a PNG\n" * 10)
    out[p.name] = p
    p = root / "bomb.png"
    _png_with_size(p, 30000, 30000)
    out[p.name] = p
    p = root / "cmyk.jpg"
    Image.fromarray(_noise(40, 50, 8, 4), "CMYK").save(p, "JPEG")
    out[p.name] = p
    p = root / "deep16.png"
    arr16 = (np.random.default_rng(9).integers(0, 65536, size=(30, 40))).astype(np.uint16)
    Image.fromarray(arr16).save(p)
    out[p.name] = p
    p = root / "palette_alpha.png"
    pal = Image.fromarray(_noise(32, 32, 10)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(p, transparency=0)
    out[p.name] = p
    p = root / "animated.gif"
    frames = [Image.fromarray(_noise(24, 24, 11 + k)).convert("P") for k in range(3)]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    out[p.name] = p
    p = root / "one.png"
    Image.new("RGB", (1, 1), (200, 30, 60)).save(p)
    out[p.name] = p
    return out


# --------------------------------------------------------------------------- fake scorer
class FakeScorer:
    """The Scorer API in miniature: decode with Pillow, 'embed' as channel statistics.

    ``shape=None`` keeps a shape derived from the image (variable shapes, like native
    resolution); otherwise every image becomes ``shape`` (fixed, like 224).
    """

    anchor_names = ["text", "second"]
    embed_dim = 6
    manifest = None

    def __init__(self, shape=(8, 8), max_pixels: int = 10_000_000, fail_embed_shape=None):
        self.shape = shape
        self.resolution = "224" if shape else "native"
        self.fixed_size = tuple(shape) if shape else None  # Scorer.fixed_size
        self.max_pixels = max_pixels
        self.fail_embed_shape = fail_embed_shape  # (H, W) inputs whose inference fails
        self.batches: List[tuple] = []
        self._lock = threading.Lock()
        self.threads_seen = set()

    def load_image(self, src) -> np.ndarray:
        self.threads_seen.add(threading.get_ident())
        name = str(src)
        try:
            with Image.open(src) as img:
                if img.width * img.height > self.max_pixels:
                    raise ImageTooLargeError(f"{name}: {img.width}x{img.height} over {self.max_pixels} pixels")
                img = img.convert("RGB")
                if self.shape:
                    img = img.resize(self.shape[::-1], Image.BILINEAR)
                else:
                    img = img.resize((max(1, img.width // 8), max(1, img.height // 8)), Image.BILINEAR)
                return np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0
        except ImageDecodeError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"{name}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            raise ImageDecodeError(f"{name}: {exc}") from exc

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.batches.append(batch.shape)
        if self.fail_embed_shape and tuple(batch.shape[2:]) == tuple(self.fail_embed_shape):
            raise RuntimeError("fake inference failure")
        return embed_stats(batch)

    def scores_from_embeddings(self, emb: np.ndarray) -> Dict[str, np.ndarray]:
        return {"text": 1 / (1 + np.exp(-(emb[:, 0] - emb[:, 1]) * 10)), "second": emb[:, 2] * 1.0}


def embed_stats(batch: np.ndarray) -> np.ndarray:
    """Channel means and stds: a deterministic per-image 'embedding'."""
    b = batch.reshape(batch.shape[0], 3, -1).astype(np.float64)
    return np.concatenate([b.mean(-1), b.std(-1)], axis=1).astype(np.float32)


def fake_reference(path, shape=(8, 8)) -> Dict[str, float]:
    """Independent per-image computation of the fake scores (no pipeline involved)."""
    img = Image.open(path).convert("RGB")
    img = img.resize(shape[::-1], Image.BILINEAR) if shape else img.resize(
        (max(1, img.width // 8), max(1, img.height // 8)), Image.BILINEAR)
    x = np.asarray(img, np.float64).transpose(2, 0, 1) / 255.0
    m32 = x.reshape(3, -1).mean(-1).astype(np.float32)
    return {"text": float(1 / (1 + np.exp(-(m32[0] - m32[1]) * 10))), "second": float(m32[2])}
