"""Decode any image input and preprocess it in numpy/Pillow exactly like the reference.

The reference (QUASAR ``generate_embeddigs.py``) opens files with ``PIL.Image.open`` (no EXIF
orientation) and applies, at 224, open_clip's eval transform
(``open_clip.image_transform(224, is_train=False)``): torchvision ``Resize(224, bicubic)`` on the
PIL image (shortest side to 224, long side ``int(224 * long / short)``), ``CenterCrop(224)``,
``convert("RGB")``, ``ToTensor`` (``/255``), ``Normalize``. At 512 it resizes the shortest side
to 512 without cropping; at native resolution it only converts and normalises. The steps run in
that order (resize and crop in the image's own mode, *then* RGB) with the same Pillow calls, and
the ``/255``, ``-mean``, ``/std`` arithmetic runs in float32 in the same order as torch, so the
result is bit-for-bit the tensor open_clip produces.
"""
from __future__ import annotations

import errno
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from quasar.errors import (
    BrokenLinkError,
    EmptyImageError,
    ImageDecodeError,
    ImageNotFoundError,
    ImageTooLargeError,
    NotAFileError,
    NotAnImageError,
    PermissionDeniedError,
    ReadError,
    SymlinkLoopError,
    TruncatedImageError,
)
from quasar.models.preprocess import PreprocessCfg

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

#: Pillow's own decompression-bomb limit (89,478,485 pixels, ~ 9459 x 9459); the default here.
DEFAULT_MAX_PIXELS = 89_478_485

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def describe_source(src: Any) -> str:
    """A short name of an input for error messages (its path, or its type and size)."""
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        name = getattr(src, "filename", "") or ""
        return name or f"<PIL image {src.mode} {src.width}x{src.height}>"
    if isinstance(src, np.ndarray):
        return f"<array {src.dtype} {tuple(src.shape)}>"
    return f"<{type(src).__name__}>"


# --------------------------------------------------------------------------- decoding

def check_path(path: Union[str, os.PathLike]) -> os.stat_result:
    """The ``stat`` of an input path that is a readable regular file, or the specific error:
    ``not_found``, ``broken_link``, ``symlink_loop``, ``not_a_file`` (a directory, FIFO,
    socket or device - never opened, so a FIFO cannot hang the run), ``permission_denied``.
    """
    name = str(path)
    if "\0" in name:  # os.stat would raise "ValueError: embedded null byte"
        raise ImageNotFoundError(f"{name!r}: the path contains a NUL byte, which no file name "
                                 "can hold; fix the path in the list or table it came from")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise BrokenLinkError(f"{name}: a symbolic link whose target "
                                  f"{os.readlink(path)!r} does not exist; fix or remove the "
                                  "link") from None
        raise ImageNotFoundError(f"{name}: no such file; check the path") from None
    except PermissionError:
        raise PermissionDeniedError(f"{name}: permission denied (a folder on the path cannot "
                                    "be entered); check its permissions") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SymlinkLoopError(f"{name}: a symbolic link loop (the link points back to "
                                   "itself); fix or remove the link") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise ImageNotFoundError(f"{name[:200]}...: the path is too long for this file "
                                     "system") from None
        raise ReadError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else
                "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "not a regular file")
        raise NotAFileError(f"{name}: {kind}, not an image file; pass image files (folders are "
                            "scanned for images only when given as inputs)")
    if not os.access(path, os.R_OK):
        raise PermissionDeniedError(f"{name}: permission denied; check the file's permissions "
                                    "(chmod +r) or run as a user who may read it")
    return st


def _raise_pillow_limit(max_pixels: Optional[int]) -> None:
    """Pillow refuses images over 2x ``Image.MAX_IMAGE_PIXELS`` inside ``Image.open``; lift its
    global limit when the caller allows more (it is never lowered: our own check is per call)."""
    if max_pixels is None:
        return
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and max_pixels > current:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)


def _too_large(name: str, w: int, h: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{name}: {w}x{h} = {w * h:,} pixels is over the limit of {max_pixels:,} pixels "
        "(decompression-bomb guard). If you trust this file, raise the limit: "
        "max_pixels=... (CLI: --max-pixels)."
    )


def _check_size(name: str, img: Image.Image, max_pixels: Optional[int]) -> None:
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise _too_large(name, img.width, img.height, max_pixels)


def array_to_pil(arr: np.ndarray, name: str = "<array>") -> Image.Image:
    """An HWC uint8 array (C = 1, 3 or 4) or an HW uint8 grayscale array as a PIL image."""
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8:
        raise ImageDecodeError(
            f"{name}: arrays must be uint8 (HxW grayscale or HxWxC with C in 1, 3, 4), got "
            f"{getattr(arr, 'dtype', type(arr))}; convert with np.clip(x, 0, 255).astype(np.uint8)"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        mode = "L"
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        mode = "RGB" if arr.shape[2] == 3 else "RGBA"
    else:
        raise ImageDecodeError(
            f"{name}: expected an HxW or HxWxC array with C in 1, 3, 4 (channels last), got "
            f"shape {tuple(arr.shape)}; for CHW data use arr.transpose(1, 2, 0)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise EmptyImageError(f"{name}: the array has no pixels (shape {tuple(arr.shape)})")
    return Image.fromarray(np.ascontiguousarray(arr), mode=mode)


def _decode_error(name: str, exc: BaseException) -> ImageDecodeError:
    msg = str(exc) or type(exc).__name__
    if "truncated" in msg.lower() or isinstance(exc, EOFError):
        return TruncatedImageError(
            f"{name}: the image data ends early ({msg}); the file is truncated - "
            "re-download or re-copy it"
        )
    return ImageDecodeError(f"{name}: cannot decode the image ({type(exc).__name__}: {msg}); "
                            "the file is corrupt or in an unsupported variant of its format")


def draft_request(width: int, height: int, size: int) -> Tuple[int, int]:
    """The (W, H) to pass to ``Image.draft`` so that a DCT-scaled JPEG decode keeps the
    shortest side >= ``size`` (Pillow picks the largest scale 1/2, 1/4, 1/8 with both sides
    >= the request)."""
    short = min(width, height)
    return (max(1, -(-width * size // short)), max(1, -(-height * size // short)))


#: ISO-BMFF ``ftyp`` brands of image formats Pillow decodes only with a plugin.
_PLUGIN_BRANDS = {
    **{b: ("HEIF/HEIC", "pillow-heif") for b in
       (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"heif")},
    **{b: ("AVIF", "pillow-avif-plugin (or Pillow >= 11.2 built with libavif)")
       for b in (b"avif", b"avis")},
}


def _isobmff_format(fp: Any) -> Optional[Tuple[str, str]]:
    """(format, what to install) when ``fp`` starts like a HEIF or AVIF file, else None."""
    try:
        if isinstance(fp, io.BytesIO):
            head = fp.getvalue()[:64]
        elif hasattr(fp, "read"):  # a file we opened: never reopened by name
            fp.seek(0)
            head = fp.read(64)
        else:
            with open(fp, "rb") as f:
                head = f.read(64)
    except OSError:
        return None
    if len(head) < 16 or head[4:8] != b"ftyp":
        return None
    brands = [head[8:12]] + [head[i:i + 4] for i in range(16, min(len(head), 64) - 3, 4)]
    if head[8:12] in _PLUGIN_BRANDS:
        return _PLUGIN_BRANDS[head[8:12]]
    for b in brands:  # major brand first, then the compatible brands
        if b in (b"avif", b"avis"):
            return _PLUGIN_BRANDS[b]
    for b in brands:
        if b in _PLUGIN_BRANDS:
            return _PLUGIN_BRANDS[b]
    return None


def open_image(src: ImageInput, *, apply_exif: bool = False,
               max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
               draft: Optional[int] = None) -> Image.Image:
    """Decode ``src`` into a loaded PIL image in its own mode (first frame of animations).

    Raises an :class:`ImageDecodeError` subclass that names the input and the reason:
    :class:`ImageNotFoundError`, :class:`EmptyImageError`, :class:`NotAnImageError`,
    :class:`TruncatedImageError`, :class:`ImageTooLargeError` (over ``max_pixels``;
    None disables the check). ``draft`` (``--fast-decode``): decode JPEG files at a reduced
    DCT scale that keeps the shortest side >= ``draft`` (changes pixels: opt-in, gated).
    """
    name = describe_source(src)
    if isinstance(src, Image.Image):
        img = src
        _check_size(name, img, max_pixels)
        try:
            img.load()
        except Exception as exc:  # a lazily opened image handed to us
            raise _decode_error(name, exc) from exc
    elif isinstance(src, np.ndarray):
        img = array_to_pil(src, name)
        _check_size(name, img, max_pixels)
    else:
        path: Optional[Path] = None
        if isinstance(src, (str, os.PathLike)):
            path = Path(src)
            fp: Any = _open_path(path, name)
        elif isinstance(src, (bytes, bytearray, memoryview)):
            if len(src) == 0:
                raise EmptyImageError(f"{name}: empty bytes input; pass the encoded image file")
            fp = io.BytesIO(bytes(src))
        else:
            raise ImageDecodeError(
                f"{name}: unsupported input type; pass a path, encoded bytes, a PIL image or "
                "an HxWxC uint8 numpy array"
            )
        _raise_pillow_limit(max_pixels)
        try:
            img = _pillow_open(fp, name)
        except BaseException:
            if path is not None:
                fp.close()
            raise
        if path is not None:  # ours to close, as when Pillow opens a path itself: after
            img._exclusive_fp = True  # loading a single frame, or by img.close()
        try:
            _check_size(name, img, max_pixels)
            if draft and img.format == "JPEG":
                img.draft(img.mode, draft_request(img.width, img.height, int(draft)))
            img.load()
        except ImageDecodeError:
            img.close()
            raise
        except Exception as exc:  # OSError (truncated), SyntaxError (broken PNG), ...
            img.close()
            raise _decode_error(name, exc) from exc
    if apply_exif:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as exc:
            raise ImageDecodeError(f"{name}: cannot apply the EXIF orientation ({exc}); "
                                   "retry with apply_exif=False") from exc
    if img.width == 0 or img.height == 0:
        raise EmptyImageError(f"{name}: the image has no pixels ({img.width}x{img.height})")
    return img


def _open_path(path: Path, name: str) -> Any:
    """The file at ``path`` opened for Pillow: :func:`check_path` first (the specific row
    status), then opened with ``O_NONBLOCK`` and checked again with ``fstat`` - a file
    replaced by a FIFO between the two can neither block the run nor be read."""
    check_path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) \
        | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_error(name, exc, "open the file", "that it still exists") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFileError(f"{name}: not a regular file any more (replaced after it was "
                                "checked, e.g. by a FIFO); not read - check what changes the "
                                "folder during the run")
        if st.st_size == 0:
            raise EmptyImageError(f"{name}: the file is empty (0 bytes); re-download or "
                                  "re-copy it")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _pillow_open(fp: Any, name: str) -> Image.Image:
    """``Image.open`` with its failures as our errors."""
    try:
        return Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"{name}: {exc}. If you trust this file, raise the limit: max_pixels=... "
            "(CLI: --max-pixels)."
        ) from exc
    except UnidentifiedImageError as exc:
        fmt = _isobmff_format(fp)
        if fmt is not None:
            raise NotAnImageError(
                f"{name}: {'an' if fmt[0][0] in 'AEIOU' else 'a'} {fmt[0]} image, which "
                "this Pillow cannot decode without a "
                f"plugin; install it (pip install {fmt[1]}) or convert the file to "
                "JPEG/PNG"
            ) from exc
        raise NotAnImageError(
            f"{name}: not an image (Pillow recognises no image format in it); check that "
            "the file is really an image and not text, HTML or a partial download"
        ) from exc
    except OSError as exc:
        raise _os_error(name, exc, "read the file", "that the file is an image") from exc


def _os_error(name: str, exc: OSError, doing: str, check: str) -> Exception:
    """An OSError met while opening or reading an input, as its row error."""
    if isinstance(exc, PermissionError):
        return PermissionDeniedError(f"{name}: permission denied ({exc.strerror}); check the "
                                     "file's permissions")
    return ReadError(f"{name}: cannot {doing} ({exc.strerror or exc}); check the disk and "
                     f"{check}")


# --------------------------------------------------------------------------- preprocessing

def resized_size(width: int, height: int, size: int) -> Tuple[int, int]:
    """(W, H) after torchvision ``Resize(size)`` (shortest side to ``size``, long side
    ``int(size * long / short)``)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def resize_shortest(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """torchvision ``Resize(size)`` of a PIL image: untouched when already that size."""
    new_w, new_h = resized_size(img.width, img.height, size)
    if (new_w, new_h) == (img.width, img.height):
        return img
    return img.resize((new_w, new_h), _RESAMPLE[interpolation])


def center_crop(img: Image.Image, crop_h: int, crop_w: int) -> Image.Image:
    """torchvision ``CenterCrop`` of a PIL image, including its zero padding of small images."""
    w, h = img.size
    if crop_w > w or crop_h > h:
        border = (
            (crop_w - w) // 2 if crop_w > w else 0,
            (crop_h - h) // 2 if crop_h > h else 0,
            (crop_w - w + 1) // 2 if crop_w > w else 0,
            (crop_h - h + 1) // 2 if crop_h > h else 0,
        )
        bands = len(img.getbands())
        fill: Any = 0.0 if img.mode == "F" else 0
        if bands > 1:
            fill = tuple([fill] * bands)
        palette = img.getpalette() if img.mode == "P" else None
        img = ImageOps.expand(img, border=border, fill=fill)
        if palette is not None:
            img.putpalette(palette)
        w, h = img.size
        if (w, h) == (crop_w, crop_h):
            return img
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


def _lut(mean: Tuple[float, ...], std: Tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: ((v / 255) - mean) / std, each step in float32 as torch does it."""
    v = np.arange(256, dtype=np.float32) / np.float32(255)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    return ((v[None, :] - m) / s).astype(np.float32)


def to_normalized_chw(rgb: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32 normalised (ToTensor + Normalize) via a lookup table."""
    out = np.empty((3,) + rgb.shape[:2], dtype=np.float32)
    for c in range(3):
        np.take(lut[c], rgb[:, :, c], out=out[c])
    return out


def check_resized(name: str, width: int, height: int, cfg: PreprocessCfg,
                  max_pixels: Optional[int]) -> None:
    """Refuse (``too_large``) an image whose *resized* size would exceed ``max_pixels``,
    before anything is allocated: the shortest-side resize of a 1x50000 image to 224 would
    allocate 224x11,200,000 pixels (10 GB) although the file itself is tiny."""
    if max_pixels is None or cfg.resize_mode != "shortest" or min(width, height) <= 0:
        return
    new_w, new_h = resized_size(width, height, int(cfg.size))
    if new_w * new_h > max_pixels:
        ratio = max(width, height) / min(width, height)
        raise ImageTooLargeError(
            f"{name}: {width}x{height} (aspect ratio {ratio:,.0f}:1) would be resized to "
            f"{new_w}x{new_h} = {new_w * new_h:,} pixels, over the limit of {max_pixels:,} "
            "pixels; such an extreme aspect ratio is not a photo. If you trust this file, "
            "raise the limit: max_pixels=... (CLI: --max-pixels)."
        )


def preprocess_pil(img: Image.Image, cfg: PreprocessCfg, lut: Optional[np.ndarray] = None
                   ) -> np.ndarray:
    """Resize, crop (in the image's own mode), convert to RGB, normalise -> [3, H, W] float32."""
    if cfg.resize_mode == "shortest":
        img = resize_shortest(img, int(cfg.size), cfg.interpolation)
    if cfg.crop is not None:
        img = center_crop(img, int(cfg.crop), int(cfg.crop))
    if img.mode != "RGB":
        img = img.convert("RGB")
    rgb = np.asarray(img)
    return to_normalized_chw(rgb, _lut(cfg.mean, cfg.std) if lut is None else lut)


@dataclass(frozen=True)
class ImageLoader:
    """Decode + preprocess one input into the encoder's [3, H, W] float32 tensor.

    Thread-safe (no shared mutable state); ``max_pixels=None`` uses
    :data:`DEFAULT_MAX_PIXELS`, ``max_pixels=0`` disables the limit.
    """

    cfg: PreprocessCfg
    apply_exif: bool = False
    max_pixels: Optional[int] = None
    fast_decode: bool = False  # DCT-scaled JPEG decoding (resize_mode "shortest" only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lut", _lut(self.cfg.mean, self.cfg.std))
        _raise_pillow_limit(self.limit)

    @property
    def limit(self) -> Optional[int]:
        if self.max_pixels is None:
            return DEFAULT_MAX_PIXELS
        return None if self.max_pixels <= 0 else int(self.max_pixels)

    def open(self, src: ImageInput) -> Image.Image:
        if self.limit is None:
            Image.MAX_IMAGE_PIXELS = None  # the caller disabled the guard explicitly
        draft = (int(self.cfg.size) if self.fast_decode and self.cfg.resize_mode == "shortest"
                 and self.cfg.size else None)
        return open_image(src, apply_exif=self.apply_exif, max_pixels=self.limit, draft=draft)

    def __call__(self, src: ImageInput) -> np.ndarray:
        img = self.open(src)
        try:
            check_resized(describe_source(src), img.width, img.height, self.cfg, self.limit)
            return preprocess_pil(img, self.cfg, self._lut)  # type: ignore[attr-defined]
        except ImageDecodeError:
            raise
        except Exception as exc:
            raise ImageDecodeError(
                f"{describe_source(src)}: cannot convert the image (mode {img.mode}, "
                f"{img.width}x{img.height}) to RGB: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if img is not src:
                img.close()
