"""Decoding and preprocessing vs open_clip's / torchvision's own transforms (bit-exact target,
1e-6 required), and every kind of bad input."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import rt_helpers  # noqa: E402

from quasar.errors import (EmptyImageError, ImageDecodeError, ImageNotFoundError,  # noqa: E402
                           ImageTooLargeError, NotAnImageError, TruncatedImageError)
from quasar.models.preprocess import OPENAI_CLIP_MEAN as M, OPENAI_CLIP_STD as S  # noqa: E402
from quasar.models.preprocess import resolution_cfg  # noqa: E402
from quasar.runtime.images import ImageLoader, open_image, preprocess_pil  # noqa: E402

TOL = 1e-6


@pytest.fixture(scope="module")
def ref_transforms():
    """The reference's three transforms (generate_embeddigs.py), built from open_clip and
    torchvision themselves."""
    pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from torchvision.transforms import Compose, Normalize, Resize, ToTensor

    def rgb(im):
        return im.convert("RGB")

    return {
        "224": open_clip.image_transform(224, is_train=False, mean=M, std=S),
        "512": Compose([Resize(512, interpolation=Image.BICUBIC), rgb, ToTensor(),
                        Normalize(mean=M, std=S)]),
        "native": Compose([rgb, ToTensor(), Normalize(mean=M, std=S)]),
    }


def _compare(img: Image.Image, res: str, ref_transforms) -> float:
    ref = ref_transforms[res](img).numpy()
    got = preprocess_pil(img, resolution_cfg(res))
    assert got.dtype == np.float32 and got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max())


def _mode_image(mode: str, w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-1000, 70000, (h, w), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng.random((h, w), dtype=np.float32) * 300)
    if mode == "P+transparency":
        p = rgb.convert("P")
        p.info["transparency"] = 3
        return p
    if mode in ("LA", "RGBA", "PA"):
        alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
        base = rgb.convert(mode[:-1] if mode != "PA" else "P")
        out = base.convert(mode)
        out.putalpha(Image.fromarray(alpha))
        return out
    return rgb.convert(mode)


MODES = ["RGB", "L", "LA", "P", "P+transparency", "PA", "RGBA", "RGBX", "CMYK", "YCbCr",
         "LAB", "HSV", "1", "I;16", "I", "F"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_matches_reference(mode, ref_transforms):
    img = _mode_image(mode, 61, 47)
    assert img.mode == ("P" if mode == "P+transparency" else mode)
    for res in ("224", "512", "native"):
        assert _compare(img, res, ref_transforms) <= TOL, (mode, res)


@pytest.mark.parametrize("size", [(1, 1), (3, 500), (500, 3), (225, 224), (224, 224),
                                  (1023, 769), (224, 301)])
def test_odd_sizes_match_reference(size, ref_transforms):
    w, h = size
    for mode in ("RGB", "P", "RGBA"):
        img = _mode_image(mode, w, h, seed=w + h)
        assert _compare(img, "224", ref_transforms) <= TOL, (mode, size)
        assert _compare(img, "native", ref_transforms) <= TOL, (mode, size)
        if w * h < 5000 and max(w, h) / min(w, h) < 20:  # 3x500 at 512 would be 512x85333
            assert _compare(img, "512", ref_transforms) <= TOL, (mode, size)


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    """Real photographs (skimage.data) as PNG and JPEG files, a 16-bit PNG, a CMYK JPEG,
    a palette PNG with transparency, a 1-bit PNG and an animated GIF."""
    data = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("photos")
    files = {}
    for name in ("astronaut", "coffee", "chelsea", "camera"):
        arr = getattr(data, name)()
        im = Image.fromarray(arr)
        for ext in ("png", "jpg"):
            p = root / f"{name}.{ext}"
            im.save(p, quality=90) if ext == "jpg" else im.save(p)
            files[p.name] = p
    cam = data.camera().astype(np.uint16) * 257
    p = root / "camera16.png"
    Image.fromarray(cam).save(p)
    files[p.name] = p
    coffee = Image.fromarray(data.coffee())
    p = root / "coffee_cmyk.jpg"
    coffee.convert("CMYK").save(p)
    files[p.name] = p
    pal = coffee.convert("P")
    p = root / "coffee_pal.png"
    pal.save(p, transparency=5)
    files[p.name] = p
    p = root / "coffee_1bit.png"
    coffee.convert("1").save(p)
    files[p.name] = p
    p = root / "anim.gif"
    frames = [Image.fromarray(np.full((40, 60, 3), c, np.uint8)) for c in (10, 200, 90)]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    files[p.name] = p
    return files


def test_photographs_match_reference(photo_files, ref_transforms):
    for name, path in photo_files.items():
        for res in ("224", "native") + (("512",) if "camera" in name else ()):
            loader = ImageLoader(resolution_cfg(res))
            got = loader(path)
            with Image.open(path) as im:  # the reference: Image.open, then the transform
                ref = ref_transforms[res](im).numpy()
            assert got.shape == ref.shape and np.abs(got - ref).max() <= TOL, (name, res)
    with Image.open(photo_files["camera16.png"]) as im:
        assert im.mode in ("I;16", "I")  # the 16-bit path really was exercised


def test_animated_gif_first_frame(photo_files, ref_transforms):
    got = ImageLoader(resolution_cfg("native"))(photo_files["anim.gif"])
    first = Image.fromarray(np.full((40, 60, 3), 10, np.uint8))
    ref = ref_transforms["native"](first).numpy()
    assert np.abs(got - ref).max() <= 1 / 255 / min(S) + 1e-6  # GIF palette quantisation


def test_inputs_bytes_pil_arrays(photo_files, ref_transforms):
    path = photo_files["coffee.png"]
    loader = ImageLoader(resolution_cfg("224"))
    from_path = loader(path)
    assert np.array_equal(loader(path.read_bytes()), from_path)
    assert np.array_equal(loader(str(path)), from_path)
    with Image.open(path) as im:
        assert np.array_equal(loader(im), from_path)
        arr = np.asarray(im.convert("RGB"))
    assert np.array_equal(loader(arr), from_path)
    gray = np.asarray(Image.open(photo_files["camera.png"]).convert("L"))
    ref = ref_transforms["224"](Image.fromarray(gray)).numpy()
    assert np.abs(loader(gray) - ref).max() <= TOL
    assert np.array_equal(loader(gray[:, :, None]), loader(gray))
    rgba = np.dstack([arr, np.full(arr.shape[:2], 128, np.uint8)])
    assert np.abs(loader(rgba) - ref_transforms["224"](Image.fromarray(rgba)).numpy()).max() <= TOL
    with pytest.raises(ImageDecodeError, match="uint8"):
        loader(arr.astype(np.float32))
    with pytest.raises(ImageDecodeError, match="shape"):
        loader(np.zeros((4, 5, 2), np.uint8))


def test_exif_orientation(tmp_path, ref_transforms):
    from PIL import ImageOps

    rng = np.random.default_rng(3)
    im = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    default = ImageLoader(resolution_cfg("native"))(p)
    assert default.shape == (3, 30, 50)  # the reference ignores EXIF orientation
    with Image.open(p) as raw:
        assert np.abs(default - ref_transforms["native"](raw).numpy()).max() <= TOL
        turned = ImageOps.exif_transpose(raw)
    rotated = ImageLoader(resolution_cfg("native"), apply_exif=True)(p)
    assert rotated.shape == (3, 50, 30)
    assert np.abs(rotated - ref_transforms["native"](turned).numpy()).max() <= TOL


# ----------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, photo_files):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image\n" * 10)
    data = photo_files["astronaut.jpg"].read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "bomb.png").write_bytes(rt_helpers.huge_png_header(20000, 20000))
    return root


def test_missing_file():
    with pytest.raises(ImageNotFoundError, match="nope.jpg.*no such file"):
        open_image("/definitely/not/here/nope.jpg")
    assert issubclass(ImageNotFoundError, FileNotFoundError)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageNotFoundError, match="a directory, not an image file"):
        open_image(tmp_path)


def test_zero_byte_file(bad_files):
    with pytest.raises(EmptyImageError, match=r"empty.jpg.*empty \(0 bytes\)"):
        open_image(bad_files / "empty.jpg")
    with pytest.raises(EmptyImageError):
        open_image(b"")


def test_text_file_named_jpg(bad_files):
    with pytest.raises(NotAnImageError, match="text.jpg.*not an image"):
        open_image(bad_files / "text.jpg")


def test_truncated_jpeg(bad_files):
    with pytest.raises(TruncatedImageError, match="truncated.jpg.*truncated"):
        ImageLoader(resolution_cfg("224"))(bad_files / "truncated.jpg")


def test_too_large(bad_files, photo_files):
    path = photo_files["coffee.png"]  # 600 x 400
    with pytest.raises(ImageTooLargeError, match=r"coffee.png.*240,000 pixels.*max_pixels"):
        ImageLoader(resolution_cfg("224"), max_pixels=100_000)(path)
    with pytest.raises(ImageTooLargeError):
        ImageLoader(resolution_cfg("224"), max_pixels=100_000)(np.zeros((400, 600, 3), np.uint8))
    assert ImageLoader(resolution_cfg("224"), max_pixels=300_000)(path).shape == (3, 224, 224)
    # a header that declares 20000 x 20000 = 400 MP: over Pillow's own hard limit too
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        ImageLoader(resolution_cfg("224"))(bad_files / "bomb.png")
    with pytest.raises(ImageTooLargeError, match="bytes"):
        ImageLoader(resolution_cfg("224"))(rt_helpers.huge_png_header(20000, 20000))
    assert issubclass(ImageTooLargeError, ImageDecodeError)


def test_unsupported_type():
    with pytest.raises(ImageDecodeError, match="unsupported input type"):
        open_image(12345)  # type: ignore[arg-type]


def test_corrupt_bytes_name_the_input(photo_files):
    data = bytearray(photo_files["coffee.png"].read_bytes())
    data[200:260] = b"\x00" * 60  # break compressed data / crc in the middle of the file
    with pytest.raises(ImageDecodeError, match="bytes"):
        ImageLoader(resolution_cfg("224"))(io.BytesIO(bytes(data)).getvalue())
