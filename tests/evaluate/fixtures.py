"""Tiny copies of the paper's datasets in their native layouts, for tests.

Every ``write_<dataset>(root, n=..., rng=...)`` writes the label files in the release's own
format (``.txt``/``.csv``/``.mat``/``.xlsx``) and small real images (16x12 by default), and
returns the dataset root to pass to ``quasar.evaluate.datasets.load_dataset``.

Next to the data it writes ``quasar_expected.json`` with what a correct reader must return,
recorded while the files were generated (not by reading them back)::

    {"name": "KonIQ10k", "default": "test", "higher_is_better": true,
     "subsets": {"test": [["1024x768/123.jpg", 0.42], ...], ...}, "extra": {...}}

Paths are relative to the returned root; ``None`` stands for a NaN score. Read it with
:func:`read_expected`.

Import from other tests (run as ``python -m pytest`` from the repository root)::

    from tests.evaluate.fixtures import write_koniq10k, read_expected
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

EXPECTED = "quasar_expected.json"
SIZE = (16, 12)  # width, height

RngLike = Union[None, int, np.random.Generator]
Pairs = List[Tuple[str, Optional[float]]]


def _rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def write_image(path: Path, rng: np.random.Generator, size: Tuple[int, int] = SIZE) -> Path:
    """A small RGB image (noise over a random gradient) in the format of the file suffix."""
    w, h = size
    base = rng.uniform(0, 255, size=3)
    slope = rng.uniform(-8, 8, size=(2, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
    img = img + rng.normal(0, rng.uniform(1, 40), size=(h, w, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".png": "PNG"}[path.suffix.lower()]
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(path, format=fmt)
    return path


def _score(x: float, digits: int = 6) -> float:
    return round(float(x), digits)


def _write_expected(
    root: Path,
    name: str,
    default: str,
    higher_is_better: bool,
    subsets: Dict[str, Pairs],
    extra: Optional[dict] = None,
) -> None:
    def clean(v):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    data = {
        "name": name,
        "default": default,
        "higher_is_better": higher_is_better,
        "subsets": {k: [[p, clean(s)] for p, s in v] for k, v in subsets.items()},
        "extra": extra or {},
    }
    (root / EXPECTED).write_text(json.dumps(data, indent=1))


def read_expected(root: Path) -> dict:
    """What a reader must return for the dataset written under ``root`` (see module doc)."""
    return json.loads((Path(root) / EXPECTED).read_text())


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence], sep: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter=sep) if sep == "," else None
        if writer is None:
            fh.write(sep.join(header) + "\n")
            for row in rows:
                fh.write(sep.join(str(c) for c in row) + "\n")
        else:
            writer.writerow(header)
            writer.writerows(rows)


# --- targets -------------------------------------------------------------------------------


def write_tid2013(root: Path, n: int = 6, rng: RngLike = 0) -> Path:
    """``mos_with_names.txt`` + ``distorted_images/`` (+ ``reference_images/``).

    The last image is stored with an upper-case name (``I03_02_1.BMP``) while the label file
    says ``i03_02_1.bmp``, as the release mixes cases.
    """
    rng, root = _rng(rng), Path(root)
    pairs: Pairs = []
    lines = []
    for k in range(n):
        ref, dist, level = k // 3 + 1, k % 3 + 1, k % 5 + 1
        name = f"i{ref:02d}_{dist:02d}_{level}.bmp"
        disk = name.upper() if k == n - 1 else name
        write_image(root / "distorted_images" / disk, rng)
        score = _score(rng.uniform(0, 9), 5)
        lines.append(f"{score} {name}")
        pairs.append((f"distorted_images/{disk}", score))
        ref_file = root / "reference_images" / f"I{ref:02d}.BMP"
        if not ref_file.exists():
            write_image(ref_file, rng)
    (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    _write_expected(root, "TID2013", "all", True, {"all": pairs})
    return root


def write_koniq10k(root: Path, n: int = 9, rng: RngLike = 0, combined: bool = False) -> Path:
    """KonIQ-10k label files + ``1024x768/`` and ``512x384/`` images.

    ``combined=False`` writes ``koniq10k_scores.csv`` (image_name, MOS, SD, MOS_zscore) and
    ``koniq10k_distributions_sets.csv`` (as on GitHub: image_name, c1..c5, c_total, MOS, SD,
    set; its MOS is a different number than the scores file's, so a reader that takes the
    score from it is caught). ``combined=True`` writes
    ``koniq10k_scores_and_distributions.csv`` (no split column) plus the sets file.
    The files list the images in different orders; the scores file's order is expected.
    """
    rng, root = _rng(rng), Path(root)
    names = [f"{int(rng.integers(10**8, 10**10))}.jpg" for _ in range(n)]
    sets = [("training", "validation", "test")[k % 3] for k in range(n)]
    mos = [_score(rng.uniform(1, 5)) for _ in range(n)]
    z = [_score(rng.uniform(0, 100)) for _ in range(n)]
    for name in names:
        write_image(root / "1024x768" / name, rng, (16, 12))
        write_image(root / "512x384" / name, rng, (8, 6))
    dist = rng.dirichlet(np.ones(5), size=n).round(4)
    if combined:
        _write_csv(
            root / "koniq10k_scores_and_distributions.csv",
            ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"],
            [[names[k], *dist[k], 100, mos[k], 0.5, z[k]] for k in range(n)],
        )
    else:
        _write_csv(
            root / "koniq10k_scores.csv",
            ["image_name", "MOS", "SD", "MOS_zscore"],
            [[names[k], mos[k], 0.5, z[k]] for k in range(n)],
        )
    order = list(rng.permutation(n))
    _write_csv(
        root / "koniq10k_distributions_sets.csv",
        ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "set"],
        [[names[k], *dist[k], 100, _score(z[k] + 1000), 0.5, sets[k]] for k in order],
    )
    canon = {"training": "train", "validation": "validation", "test": "test"}
    subsets: Dict[str, Pairs] = {"all": [(f"1024x768/{names[k]}", z[k]) for k in range(n)]}
    for value, sub in canon.items():
        subsets[sub] = [(f"1024x768/{names[k]}", z[k]) for k in range(n) if sets[k] == value]
    _write_expected(
        root, "KonIQ10k", "test", True, subsets, extra={"MOS": dict(zip(names, mos))}
    )
    return root


def write_kadid10k(root: Path, n: int = 6, rng: RngLike = 0, header: Sequence[str] = (
        "dist_img", "ref_img", "dmos", "var")) -> Path:
    """``dmos.csv`` with the release's header ``dist_img,ref_img,dmos,var`` (kadid10k.zip,
    database.mmsp-kn.de) + ``images/`` (distorted and references). ``header`` writes another
    spelling (the reference also accepts ``image,reference,dmos``)."""
    rng, root = _rng(rng), Path(root)
    rows, pairs = [], []
    for k in range(n):
        ref = f"I{k // 3 + 1:02d}.png"
        name = f"I{k // 3 + 1:02d}_{k % 25 + 1:02d}_{k % 5 + 1:02d}.png"
        write_image(root / "images" / name, rng)
        if not (root / "images" / ref).exists():
            write_image(root / "images" / ref, rng)
        score = _score(rng.uniform(1, 5), 2)
        rows.append([name, ref, score, _score(rng.uniform(0, 1), 3)])
        pairs.append((f"images/{name}", score))
    _write_csv(root / "dmos.csv", list(header), rows)
    _write_expected(root, "KADID10k", "all", True, {"all": pairs})
    return root


def write_liveitw(root: Path, n: int = 10, rng: RngLike = 0) -> Path:
    """ChallengeDB layout: ``Data/AllImages_release.mat`` (N x 1 cell array of names),
    ``Data/AllMOS_release.mat`` (1 x N MOS), the first 7 images in
    ``Images/trainingImages/``, the others in ``Images/``. ``n`` must exceed 7."""
    from scipy.io import savemat

    if n <= 7:
        raise ValueError("LIVEitW fixture needs n > 7 (7 training images + test images)")
    rng, root = _rng(rng), Path(root)
    names = [f"t{k + 1}.bmp" for k in range(7)] + [f"{100 + k}.JPG" for k in range(n - 7)]
    mos = np.array([_score(rng.uniform(0, 100)) for _ in range(n)])
    rel = [f"Images/trainingImages/{x}" for x in names[:7]] + [f"Images/{x}" for x in names[7:]]
    for r in rel:
        write_image(root / r, rng)
    cell = np.empty((n, 1), dtype=object)
    for k, x in enumerate(names):
        cell[k, 0] = np.array([x])
    (root / "Data").mkdir(parents=True, exist_ok=True)
    savemat(str(root / "Data" / "AllImages_release.mat"), {"AllImages_release": cell})
    savemat(str(root / "Data" / "AllMOS_release.mat"), {"AllMOS_release": mos[None, :]})
    savemat(str(root / "Data" / "AllStdDev_release.mat"), {"AllStdDev_release": np.ones((1, n))})
    pairs = list(zip(rel, mos.tolist()))
    _write_expected(
        root, "LIVEitW", "test", True, {"all": pairs, "train": pairs[:7], "test": pairs[7:]}
    )
    return root


def write_spaq(root: Path, n: int = 6, rng: RngLike = 0) -> Path:
    """``Annotations/MOS and Image attribute scores.xlsx`` (openpyxl) + ``TestImage/``."""
    import openpyxl

    rng, root = _rng(rng), Path(root)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"])
    pairs = []
    for k in range(n):
        name = f"{k + 1:05d}.jpg"
        write_image(root / "TestImage" / name, rng)
        score = _score(rng.uniform(0, 100), 2)
        sheet.append([name, score] + [_score(rng.uniform(0, 100), 2) for _ in range(5)])
        pairs.append((f"TestImage/{name}", score))
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    book.save(root / "Annotations" / "MOS and Image attribute scores.xlsx")
    _write_expected(root, "SPAQ", "test", True, {"test": pairs})
    return root


def write_tad66k(root: Path, n: int = 8, rng: RngLike = 0) -> Path:
    """``labels/merge/train.csv`` and ``test.csv`` (image, score, ...) + ``images/``."""
    rng, root = _rng(rng), Path(root)
    subsets: Dict[str, Pairs] = {"train": [], "test": []}
    rows: Dict[str, list] = {"train": [], "test": []}
    for k in range(n):
        part = "test" if k % 2 else "train"
        name = f"{int(rng.integers(10**5, 10**6))}.jpg"
        write_image(root / "images" / name, rng)
        score = _score(rng.uniform(0, 10), 4)
        rows[part].append([name, score, int(rng.integers(0, 20))])
        subsets[part].append((f"images/{name}", score))
    for part in ("train", "test"):
        _write_csv(root / "labels" / "merge" / f"{part}.csv", ["image", "score", "theme"], rows[part])
    subsets["all"] = subsets["train"] + subsets["test"]
    _write_expected(root, "TAD66k", "test", True, subsets)
    return root


def write_aadb(root: Path, n: int = 9, rng: RngLike = 0) -> Path:
    """``imgListFiles_label/imgList{Train,Validation,TestNew}Regression_score.txt`` (+ an
    attribute file) + ``datasetImages_originalSize/`` (every image) and
    ``AADB_newtest_originalSize/`` (copies of the test images)."""
    rng, root = _rng(rng), Path(root)
    files = {
        "train": "imgListTrainRegression_score.txt",
        "validation": "imgListValidationRegression_score.txt",
        "test": "imgListTestNewRegression_score.txt",
    }
    subsets: Dict[str, Pairs] = {k: [] for k in files}
    lines: Dict[str, List[str]] = {k: [] for k in files}
    for k in range(n):
        split = ("train", "validation", "test")[k % 3]
        name = f"farm1_{k}_{int(rng.integers(10**9, 10**10))}_{k:x}a2e_b.jpg"
        image = write_image(root / "datasetImages_originalSize" / name, rng)
        rel = f"datasetImages_originalSize/{name}"
        if split == "test":
            copy = root / "AADB_newtest_originalSize" / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(image.read_bytes())
            rel = f"AADB_newtest_originalSize/{name}"
        score = _score(rng.uniform(0, 1), 2)
        lines[split].append(f"{name} {score}")
        subsets[split].append((rel, score))
    label_dir = root / "imgListFiles_label"
    label_dir.mkdir(parents=True, exist_ok=True)
    for split, fname in files.items():
        (label_dir / fname).write_text("\n".join(lines[split]) + "\n")
    (label_dir / "imgListTrainRegression_ColorHarmony.txt").write_text(
        "\n".join(f"{ln.split()[0]} 0.2" for ln in lines["train"]) + "\n"
    )
    subsets["all"] = subsets["train"] + subsets["validation"] + subsets["test"]
    _write_expected(root, "AADB", "all", True, subsets)
    return root


def write_pieapp(
    root: Path,
    n: int = 6,
    rng: RngLike = 0,
    merged: bool = False,
    include_reference: bool = False,
) -> Path:
    """PieAPP test part: ``labels/test/ref_<n>_per_image_score.csv`` (header with spaces, as
    released) + ``distorted_images/test/ref_<n>/`` + ``reference_images/test/``.

    ``merged=True`` writes the reference's merged ``test_scores.csv`` at the root instead,
    with the distorted images in one flat ``distorted_images/test/`` folder.
    ``include_reference=True`` also lists each reference image (score 0) in the labels; the
    reader leaves those rows out unless ``include_references=True``.
    """
    rng, root = _rng(rng), Path(root)
    per_ref: Dict[str, list] = {}
    pairs: Pairs = []
    n_refs = 2
    for r in range(n_refs):
        ref = f"ref_{r + 1:04d}.png"
        write_image(root / "reference_images" / "test" / ref, rng)
        per_ref[ref] = []
        if include_reference:
            per_ref[ref].append([ref, ref, 0.0])
    for k in range(n):
        ref = f"ref_{k % n_refs + 1:04d}.png"
        stem = ref[:-4]
        name = f"distort_{stem[4:]}_{('blur', 'noise', 'jpeg')[k % 3]}_inter_{k:02d}.png"
        folder = root / "distorted_images" / "test" / ("" if merged else stem)
        write_image(folder / name, rng)
        score = _score(rng.uniform(0, 5), 4)
        per_ref[ref].append([ref, name, score])
    header = ["reference image", " distorted image", " score for distorted image"]
    with_refs: Pairs = []
    for ref, rows in per_ref.items():
        for row in rows:
            if row[1] == ref:
                with_refs.append((f"reference_images/test/{ref}", row[2]))
            else:
                sub = "" if merged else f"{ref[:-4]}/"
                pairs.append((f"distorted_images/test/{sub}{row[1]}", row[2]))
                with_refs.append(pairs[-1])
    if merged:
        _write_csv(
            root / "test_scores.csv",
            ["reference image", "distorted image", "score for distorted image"],
            [row for rows in per_ref.values() for row in rows],
        )
    else:
        for ref, rows in per_ref.items():
            path = root / "labels" / "test" / f"{ref[:-4]}_per_image_score.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            body = "".join(f"{a}, {b}, {c}\n" for a, b, c in rows)
            path.write_text(",".join(header) + "\n" + body)
    (root / "test_reference_list.txt").write_text("\n".join(per_ref) + "\n")
    # default: the distorted images only (what the reference embeds); reference rows on request
    _write_expected(root, "PieAPP", "test", False, {"test": pairs},
                    extra={"test_with_references": with_refs})
    return root


# --- prompt data ---------------------------------------------------------------------------


def write_pipal(root: Path, n: int = 6, rng: RngLike = 0, under_train: bool = False) -> Path:
    """PIPAL training part: ``Train_Label/A000x.txt`` (lines ``name,score``),
    ``Train_Ref/A000x.bmp``, ``Train_Dist/A000x_tt_ll.bmp`` (``n`` distorted images over two
    references). ``under_train=True`` puts it all under ``train/`` (the reference's layout).

    Expected: references first, then distorted images, each sorted by name; references have
    no score (NaN); ``extra`` holds ``is_reference`` and ``group`` (reference stem) lists.
    """
    rng, root = _rng(rng), Path(root)
    base = root / "train" if under_train else root
    labels: Dict[str, List[str]] = {}
    dist: Dict[str, float] = {}
    refs = [f"A{r + 1:04d}.bmp" for r in range(2)]
    for ref in refs:
        write_image(base / "Train_Ref" / ref, rng)
        labels[ref[:-4]] = []
    for k in reversed(range(n)):  # label files not in name order
        ref = refs[k % 2]
        name = f"{ref[:-4]}_{k % 4:02d}_{k:02d}.bmp"
        write_image(base / "Train_Dist" / name, rng)
        score = _score(rng.uniform(1000, 1700), 4)
        labels[ref[:-4]].append(f"{name},{score}")
        dist[name] = score
    (base / "Train_Label").mkdir(parents=True, exist_ok=True)
    for stem, lines in labels.items():
        (base / "Train_Label" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    prefix = "train/" if under_train else ""
    pairs: Pairs = [(f"{prefix}Train_Ref/{r}", None) for r in refs]
    pairs += [(f"{prefix}Train_Dist/{d}", dist[d]) for d in sorted(dist)]
    group = [r[:-4] for r in refs] + [d.split("_")[0] for d in sorted(dist)]
    is_ref = [True] * len(refs) + [False] * len(dist)
    _write_expected(
        root, "PIPAL", "train", True, {"train": pairs}, extra={"group": group, "is_reference": is_ref}
    )
    return root


def write_kadis700k(root: Path, n: int = 6, rng: RngLike = 0) -> Path:
    """``ref_imgs/<name>.png`` + ``dist_imgs/<name>_<type>_<level>.bmp`` (``n`` distorted over
    two references) + ``kadis700k_ref_imgs.csv`` and a stray ``.DS_Store``/``Thumbs.db``
    that a reader must not list."""
    rng, root = _rng(rng), Path(root)
    refs = ["a-fleshy-plant-1464418", "old_town-2211"]  # the 2nd has an underscore
    for ref in refs:
        write_image(root / "ref_imgs" / f"{ref}.png", rng)
    dist = []
    for k in range(n):
        ref = refs[k % 2]
        name = f"{ref}_{k % 25 + 1:02d}_{k % 5 + 1:02d}.bmp"
        write_image(root / "dist_imgs" / name, rng)
        dist.append((name, ref))
    (root / "dist_imgs" / ".DS_Store").write_bytes(b"\0")
    (root / "ref_imgs" / "Thumbs.db").write_bytes(b"\0")
    _write_csv(
        root / "kadis700k_ref_imgs.csv",
        ["ref_im", "dist_type_1", "dist_type_2"],
        [[f"{r}.png", 1, 2] for r in refs],
    )
    refs_sorted = sorted(f"{r}.png" for r in refs)
    dist_sorted = sorted(dist)
    pairs: Pairs = [(f"ref_imgs/{r}", None) for r in refs_sorted]
    pairs += [(f"dist_imgs/{d}", None) for d, _ in dist_sorted]
    group = [r[:-4] for r in refs_sorted] + [g for _, g in dist_sorted]
    is_ref = [True] * len(refs_sorted) + [False] * len(dist_sorted)
    _write_expected(
        root, "KADIS700k", "all", True, {"all": pairs}, extra={"group": group, "is_reference": is_ref}
    )
    return root


def write_ava(root: Path, n: int = 8, rng: RngLike = 0) -> Path:
    """``AVA.txt`` (index, image id, c1..c10, tag 1, tag 2, challenge id; space-separated) +
    ``images/<id>.jpg``. Besides the ``n`` good rows it writes one row with no votes and one
    whose image is missing; both are expected to be skipped (counted in ``extra``)."""
    rng, root = _rng(rng), Path(root)
    lines, pairs = [], []
    total = n + 2
    bad_votes, bad_file = 1, total - 2
    for k in range(total):
        image_id = str(int(rng.integers(1000, 999999)) * 10 + k)
        counts = np.zeros(10, dtype=int) if k == bad_votes else rng.integers(0, 30, size=10)
        if k != bad_votes and counts.sum() == 0:
            counts[4] = 1
        fields = [k + 1, image_id, *counts.tolist(), int(rng.integers(0, 60)), 0, int(rng.integers(1, 1400))]
        lines.append(" ".join(str(f) for f in fields))
        if k in (bad_votes, bad_file):
            continue
        write_image(root / "images" / f"{image_id}.jpg", rng)
        mos = float((np.arange(1, 11) * counts).sum() / counts.sum())
        pairs.append((f"images/{image_id}.jpg", mos))
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    _write_expected(
        root, "AVA", "all", True, {"all": pairs}, extra={"skipped_missing": 1, "skipped_no_votes": 1}
    )
    return root


#: name as the paper writes it -> fixture writer
WRITERS = {
    "TID2013": write_tid2013,
    "KonIQ10k": write_koniq10k,
    "KADID10k": write_kadid10k,
    "LIVEitW": write_liveitw,
    "SPAQ": write_spaq,
    "TAD66k": write_tad66k,
    "AADB": write_aadb,
    "PieAPP": write_pieapp,
    "PIPAL": write_pipal,
    "KADIS700k": write_kadis700k,
    "AVA": write_ava,
}
