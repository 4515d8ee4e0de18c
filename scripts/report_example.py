#!/usr/bin/env python
"""Make the example report of docs/report.md from a real run, and its screenshots.

Images: scikit-image's sample photos (bundled with the package, nothing downloaded), each
saved clean and with blur / noise / heavy JPEG; a broken and a missing file. Then, with the
bundle given (a random-weights test bundle is fine for a *layout* picture, and then the
scores mean nothing):

    quasar anchors BUNDLE --good clean/ --bad degraded/ --name mine --overwrite
    quasar score photos/ gone.jpg --anchors text,mine --out originals.csv
    quasar score recompressed/ --anchors text,mine --out recompressed.jsonl
    quasar report originals.csv recompressed.jsonl --key name --out report.html

and headless Chromium screenshots of the top of the page and of a gallery.

    .venv/bin/python scripts/report_example.py BUNDLE OUTDIR [--docs docs/]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "horse", "moon",
           "immunohistochemistry", "retina", "brick", "grass", "gravel", "coins", "page",
           "eagle", "hubble_deep_field", "clock", "text", "logo")


def _photos(out: Path) -> None:
    from skimage import data

    rng = np.random.default_rng(0)
    for d in ("photos/clean", "photos/degraded", "recompressed"):
        (out / d).mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        try:
            arr = getattr(data, name)()
        except Exception:  # some samples need a download (pooch): skip those
            continue
        if arr.dtype != np.uint8:
            arr = (255 * (arr.astype(float) / max(float(arr.max()), 1))).astype(np.uint8)
        img = Image.fromarray(arr).convert("RGB")
        img.thumbnail((512, 512))
        img.save(out / "photos/clean" / f"{name}.jpg", quality=92)
        blur = img.filter(ImageFilter.GaussianBlur(3))
        blur.save(out / "photos/degraded" / f"{name}_blur.jpg", quality=92)
        a = np.asarray(img).astype(float) + rng.normal(0, 35, size=np.asarray(img).shape)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(
            out / "photos/degraded" / f"{name}_noise.jpg", quality=92)
        img.save(out / "photos/degraded" / f"{name}_jpeg.jpg", quality=4)
    (out / "photos/degraded/notes.jpg").unlink(missing_ok=True)
    for p in sorted((out / "photos").rglob("*.jpg")):
        Image.open(p).save(out / "recompressed" / p.name, quality=25)
    (out / "photos/degraded/notes.jpg").write_text("not an image\n")


def _quasar(*args) -> None:
    cmd = [sys.executable, "-m", "quasar", *map(str, args)]
    print("$", " ".join(cmd[2:]))
    r = subprocess.run(cmd)
    if r.returncode not in (0, 3):  # 3: some inputs failed, as intended here
        sys.exit(r.returncode)


def _shot(html: Path, png: Path, height: int, crop=None) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    tmp = png.with_suffix(".full.png")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size=1280,{height}", f"--screenshot={tmp}", html.resolve().as_uri()],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    im = Image.open(tmp).convert("RGB")
    if crop:
        im = im.crop(crop)
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
    tmp.unlink()
    print(f"screenshot {png} ({png.stat().st_size / 1e3:.0f} kB)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("out")
    ap.add_argument("--docs", default=None, help="copy the screenshots here")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    _photos(out)
    _quasar("anchors", a.bundle, "--good", out / "photos/clean", "--bad",
            out / "photos/degraded", "--name", "mine", "--skip-failed", "--overwrite")
    _quasar("score", out / "photos", out / "gone.jpg", "--bundle", a.bundle, "--anchors",
            "text,mine", "--out", out / "originals.csv", "--overwrite", "--quiet")
    _quasar("score", out / "recompressed", "--bundle", a.bundle, "--anchors", "text,mine",
            "--out", out / "recompressed.jsonl", "--overwrite", "--quiet")
    html = out / "report.html"
    _quasar("report", out / "originals.csv", out / "recompressed.jsonl", "--key", "name",
            "--labels", "originals,recompressed", "--top", 6, "--out", html,
            "--title", "QUASAR report (example: random-weights bundle, scores mean nothing)")
    _shot(html, out / "report-top.png", 1500)
    _shot(html, out / "report-gallery.png", 5200, crop=(0, 2700, 1280, 5200))
    if a.docs:
        for n in ("report-top.png", "report-gallery.png"):
            shutil.copy(out / n, Path(a.docs) / n)


if __name__ == "__main__":
    main()
