"""Dataset readers against tiny datasets written in each release's native format."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quasar.errors import DatasetError
from quasar.evaluate.datasets import (
    DATASET_INFO,
    PROMPT_DATASETS,
    TARGET_DATASETS,
    load_dataset,
    resolve_name,
)


import fixtures as fx  # noqa: E402 (tests/evaluate/fixtures.py)
ALL = list(fx.WRITERS)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every dataset written once (read-only use)."""
    base = tmp_path_factory.mktemp("datasets")
    return {name: writer(base / name) for name, writer in fx.WRITERS.items()}


def _pairs(samples, root):
    return [
        (str(Path(p).relative_to(root)), None if math.isnan(s) else float(s))
        for p, s in zip(samples.paths, samples.scores)
    ]


def _assert_same(got, want):
    """Same paths in the same order; same scores (to float tolerance, None = NaN)."""
    assert [p for p, _ in got] == [p for p, _ in want]
    for (path, a), (_, b) in zip(got, want):
        assert (a is None) == (b is None), path
        if a is not None:
            assert a == pytest.approx(b, rel=1e-12, abs=1e-12), path


def _expected(root, subset):
    return [tuple(x) for x in fx.read_expected(root)["subsets"][subset]]


# --- every reader against what its fixture wrote --------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_every_subset_gives_written_pairs_in_order(written, name):
    root = written[name]
    expected = fx.read_expected(root)
    assert expected["subsets"], name
    for subset in expected["subsets"]:
        samples = load_dataset(name, root, subset)
        assert samples.name == name
        assert samples.subset == subset
        assert all(Path(p).is_absolute() for p in samples.paths)
        assert samples.scores.dtype == np.float64
        assert len(samples) == len(expected["subsets"][subset])
        _assert_same(_pairs(samples, root), _expected(root, subset))


@pytest.mark.parametrize("name", ALL)
def test_default_subset_and_direction(written, name):
    root = written[name]
    expected = fx.read_expected(root)
    samples = load_dataset(name, root)
    assert samples.subset == expected["default"] == DATASET_INFO[name].default_subset
    assert samples.higher_is_better is expected["higher_is_better"]
    _assert_same(_pairs(samples, root), _expected(root, expected["default"]))


@pytest.mark.parametrize("name", ["PIPAL", "KADIS700k"])
def test_full_reference_prompt_data_extras(written, name):
    root = written[name]
    extra = fx.read_expected(root)["extra"]
    samples = load_dataset(name, root)
    assert samples.extra["is_reference"].dtype == bool
    assert samples.extra["is_reference"].tolist() == extra["is_reference"]
    assert list(samples.extra["group"]) == extra["group"]
    assert np.isnan(samples.scores[samples.extra["is_reference"]]).all()


def test_pipal_under_train_folder(tmp_path):
    root = fx.write_pipal(tmp_path / "pipal", under_train=True)
    samples = load_dataset("PIPAL", root)
    assert samples.root == (root / "train").absolute()
    _assert_same(_pairs(samples, root), _expected(root, "train"))


# --- registry ------------------------------------------------------------------------------


def test_registry_lists_the_papers_datasets():
    assert TARGET_DATASETS == (
        "TID2013", "KonIQ10k", "KADID10k", "LIVEitW", "SPAQ", "TAD66k", "AADB", "PieAPP"
    )
    assert PROMPT_DATASETS == ("KADIS700k", "PIPAL", "AVA")
    assert set(DATASET_INFO) == set(TARGET_DATASETS) | set(PROMPT_DATASETS)
    for name, info in DATASET_INFO.items():
        assert info.name == name
        assert info.url.startswith(("http://", "https://"))
        assert info.default_subset in info.subsets


@pytest.mark.parametrize(
    "given, canonical",
    [("koniq10k", "KonIQ10k"), ("KONIQ-10k", "KonIQ10k"), ("live_itw", "LIVEitW"),
     ("Kadis-700k", "KADIS700k"), ("pieapp", "PieAPP"), ("tid 2013", "TID2013")],
)
def test_names_are_matched_loosely(given, canonical):
    assert resolve_name(given) == canonical


def test_unknown_name_suggests_close_match(tmp_path):
    with pytest.raises(DatasetError, match="Did you mean KonIQ10k"):
        load_dataset("KonIQ", tmp_path)
    with pytest.raises(DatasetError, match="TID2013"):
        load_dataset("TID2031", tmp_path)


def test_unknown_option_is_named(written):
    with pytest.raises(DatasetError, match=r"no option\(s\) \['resolution'\].*check_files"):
        load_dataset("TID2013", written["TID2013"], resolution="512x384")


def test_missing_root_names_url(tmp_path):
    with pytest.raises(DatasetError, match=r"does-not-exist.*kadid-10k-database"):
        load_dataset("KADID10k", tmp_path / "does-not-exist")


# --- subsets -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_unknown_subset_lists_the_valid_ones(written, name):
    with pytest.raises(DatasetError, match=r"no subset 'nonsense'.*choose one of") as info:
        load_dataset(name, written[name], "nonsense")
    for subset in DATASET_INFO[name].subsets:
        assert repr(subset) in str(info.value)


def test_subset_aliases(written):
    root = written["KonIQ10k"]
    assert load_dataset("KonIQ10k", root, "training").paths == load_dataset("KonIQ10k", root, "train").paths
    assert load_dataset("KonIQ10k", root, "val").subset == "validation"
    assert load_dataset("AADB", written["AADB"], "VAL").subset == "validation"


# --- KonIQ10k options and label layouts ----------------------------------------------------


def test_koniq_mos_column_and_resolution(written):
    root = written["KonIQ10k"]
    mos = fx.read_expected(root)["extra"]["MOS"]
    samples = load_dataset("KonIQ10k", root, "all", score="MOS", resolution="512x384")
    assert [p.parent.name for p in samples.paths] == ["512x384"] * len(samples)
    assert samples.scores.tolist() == pytest.approx([mos[p.name] for p in samples.paths])
    with pytest.raises(DatasetError, match="unknown score column"):
        load_dataset("KonIQ10k", root, score="SD")
    with pytest.raises(DatasetError, match="unknown resolution"):
        load_dataset("KonIQ10k", root, resolution="224x224")


def test_koniq_combined_file_joins_split_from_sets_file(tmp_path):
    root = fx.write_koniq10k(tmp_path / "k", combined=True)
    for subset in ("all", "train", "validation", "test"):
        samples = load_dataset("KonIQ10k", root, subset)
        _assert_same(_pairs(samples, root), _expected(root, subset))
    (root / "koniq10k_distributions_sets.csv").unlink()
    assert len(load_dataset("KonIQ10k", root, "all")) == 9
    with pytest.raises(DatasetError, match=r"no column 'set'.*koniq10k_distributions_sets.csv"):
        load_dataset("KonIQ10k", root, "test")


def test_koniq_sets_file_alone_is_refused(tmp_path):
    root = fx.write_koniq10k(tmp_path / "k")
    (root / "koniq10k_scores.csv").unlink()
    with pytest.raises(DatasetError, match=r"no score file.*koniq10k_scores.csv.*another scale"):
        load_dataset("KonIQ10k", root)


def test_koniq_row_missing_from_sets_file(tmp_path):
    root = fx.write_koniq10k(tmp_path / "k")
    sets = root / "koniq10k_distributions_sets.csv"
    lines = sets.read_text().splitlines()
    sets.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetError, match=r"koniq10k_distributions_sets.csv is malformed: no row"):
        load_dataset("KonIQ10k", root)


# --- other dataset specifics ---------------------------------------------------------------


def _reference_pieapp_selection(root):
    """(file name, score) pairs the QUASAR reference would score, re-implemented from its code:
    ``extraction/datasets.py`` embeds the files of ``distorted_images/test`` (sorted
    ``os.listdir``, files only, no dot files) and ``embeddings/datasets.py`` ``PieAPP`` takes
    the rows of ``test_scores.csv`` in order, looking each up as ``<folder>/<distorted image>``
    among those embeddings (a row without an embedding would be a KeyError there, so only
    rows that have one are part of a run that completes)."""
    import csv
    import os

    folder = os.path.join(str(root), "distorted_images", "test")
    embedded = {os.path.join(folder, f) for f in sorted(os.listdir(folder))
                if os.path.isfile(os.path.join(folder, f)) and not f.startswith(".")}
    with open(root / "test_scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [(r["distorted image"], float(r["score for distorted image"])) for r in rows
            if os.path.join(folder, r["distorted image"]) in embedded]


def test_pieapp_default_set_is_the_references_and_reference_rows_on_request(tmp_path):
    root = fx.write_pieapp(tmp_path / "merged", merged=True, include_reference=True)
    samples = load_dataset("PieAPP", root)
    want = _reference_pieapp_selection(root)
    assert len(want) == 6
    assert [(p.name, float(s)) for p, s in zip(samples.paths, samples.scores)] == want
    assert samples.extra["reference_rows_skipped"] == 2
    _assert_same(_pairs(samples, root), _expected(root, "test"))
    with_refs = load_dataset("PieAPP", root, include_references=True)
    _assert_same(_pairs(with_refs, root), fx.read_expected(root)["extra"]["test_with_references"])
    assert any(p.parent.name == "test" and p.name.startswith("ref_") for p in with_refs.paths)
    # the release's nested layout: same selection, reference rows only on request
    root = fx.write_pieapp(tmp_path / "nested", include_reference=True)
    _assert_same(_pairs(load_dataset("PieAPP", root), root), _expected(root, "test"))
    _assert_same(_pairs(load_dataset("PieAPP", root, include_references=True), root),
                 fx.read_expected(root)["extra"]["test_with_references"])


def test_kadid_reads_the_release_header_and_the_old_names(tmp_path):
    root = fx.write_kadid10k(tmp_path / "release")
    assert (root / "dmos.csv").read_text().splitlines()[0] == "dist_img,ref_img,dmos,var"
    samples = load_dataset("KADID10k", root)
    _assert_same(_pairs(samples, root), _expected(root, "all"))
    assert [p.name for p in samples.extra["reference_path"]][:3] == ["I01.png"] * 3
    root = fx.write_kadid10k(tmp_path / "alias", header=("image", "reference", "dmos", "var"))
    _assert_same(_pairs(load_dataset("KADID10k", root), root), _expected(root, "all"))


def test_aadb_all_without_validation_file_and_duplicates(tmp_path):
    root = fx.write_aadb(tmp_path / "a")
    labels = root / "imgListFiles_label"
    (labels / "imgListValidationRegression_score.txt").unlink()
    expected = _expected(root, "train") + _expected(root, "test")
    _assert_same(_pairs(load_dataset("AADB", root), root), expected)
    with pytest.raises(DatasetError, match="imgListValidationRegression_score.txt"):
        load_dataset("AADB", root, "validation")
    # a name listed twice is read once (first occurrence)
    train = labels / "imgListTrainRegression_score.txt"
    first = train.read_text().splitlines()[0]
    test = labels / "imgListTestNewRegression_score.txt"
    test.write_text(test.read_text() + first.split()[0] + " 0.99\n")
    _assert_same(_pairs(load_dataset("AADB", root), root), expected)


def test_aadb_test_images_fall_back_to_original_folder(tmp_path):
    root = fx.write_aadb(tmp_path / "a")
    shutil.rmtree(root / "AADB_newtest_originalSize")
    samples = load_dataset("AADB", root, "test")
    assert {p.parent.name for p in samples.paths} == {"datasetImages_originalSize"}


def test_ava_skips_missing_and_unvoted_rows(written, tmp_path, caplog):
    root = written["AVA"]
    extra = fx.read_expected(root)["extra"]
    with caplog.at_level("WARNING", logger="quasar.evaluate.datasets"):
        samples = load_dataset("AVA", root)
    assert samples.extra["skipped_missing"] == extra["skipped_missing"] == 1
    assert samples.extra["skipped_no_votes"] == extra["skipped_no_votes"] == 1
    assert "1 of 10 rows whose image is missing" in caplog.text
    with pytest.raises(DatasetError, match=r"1 of 9 listed images are missing"):
        load_dataset("AVA", root, skip_missing=False)
    kept = load_dataset("AVA", root, skip_missing=False, check_files=False)
    assert len(kept) == len(samples) + 1


def test_ava_mos_is_vote_weighted_mean(tmp_path):
    root = tmp_path / "ava"
    fx.write_image(root / "images" / "42.jpg", np.random.default_rng(0))
    counts = [0, 1, 0, 0, 3, 0, 0, 0, 0, 4]
    (root / "AVA.txt").write_text("1 42 " + " ".join(map(str, counts)) + " 1 2 3\n")
    samples = load_dataset("AVA", root)
    assert samples.scores.tolist() == pytest.approx([(2 * 1 + 5 * 3 + 10 * 4) / 8])


def test_kadis_needs_distorted_images(tmp_path):
    root = fx.write_kadis700k(tmp_path / "k")
    for p in (root / "dist_imgs").glob("*.bmp"):
        p.unlink()
    with pytest.raises(DatasetError, match="MATLAB script"):
        load_dataset("KADIS700k", root)
    shutil.rmtree(root / "dist_imgs")
    with pytest.raises(DatasetError, match=r"dist_imgs not found"):
        load_dataset("KADIS700k", root)


# --- bad layouts ---------------------------------------------------------------------------

LABEL_FILES = {
    "TID2013": "mos_with_names.txt",
    "KonIQ10k": "koniq10k_scores.csv",
    "KADID10k": "dmos.csv",
    "LIVEitW": "Data/AllMOS_release.mat",
    "SPAQ": "Annotations/MOS and Image attribute scores.xlsx",
    "TAD66k": "labels/merge/test.csv",
    "AADB": "imgListFiles_label",
    "PieAPP": "labels/test",
    "PIPAL": "Train_Label",
    "KADIS700k": "ref_imgs",
    "AVA": "AVA.txt",
}


@pytest.mark.parametrize("name", ALL)
def test_missing_label_file_is_named_with_url(tmp_path, name):
    root = fx.WRITERS[name](tmp_path / name)
    target = root / LABEL_FILES[name]
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(name, root)
    message = str(info.value)
    assert Path(LABEL_FILES[name]).name in message
    assert DATASET_INFO[name].url in message


@pytest.mark.parametrize(
    "name, relpath, column",
    [
        ("KADID10k", "dmos.csv", "dmos"),
        ("KADID10k", "dmos.csv", "dist_img"),
        ("TAD66k", "labels/merge/test.csv", "score"),
        ("KonIQ10k", "koniq10k_scores.csv", "MOS_zscore"),
        ("KonIQ10k", "koniq10k_distributions_sets.csv", "set"),
        ("PieAPP", "labels/test/ref_0001_per_image_score.csv", "score for distorted image"),
    ],
)
def test_missing_csv_column_is_named(tmp_path, name, relpath, column):
    root = fx.WRITERS[name](tmp_path / name)
    path = root / relpath
    lines = path.read_text().splitlines()
    header = [h.strip() for h in lines[0].split(",")]
    header[header.index(column)] = "something_else"
    path.write_text("\n".join([",".join(header)] + lines[1:]) + "\n")
    with pytest.raises(DatasetError, match=rf"{column}") as info:
        load_dataset(name, root)
    assert path.name in str(info.value)


def test_spaq_missing_column_and_corrupt_workbook(tmp_path):
    import openpyxl

    root = fx.write_spaq(tmp_path / "s")
    path = root / "Annotations" / "MOS and Image attribute scores.xlsx"
    book = openpyxl.load_workbook(path)
    book.active.cell(row=1, column=2).value = "Score"
    book.save(path)
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['MOS'\]"):
        load_dataset("SPAQ", root)
    path.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .xlsx"):
        load_dataset("SPAQ", root)


def test_liveitw_bad_mat_files(tmp_path):
    from scipy.io import savemat

    root = fx.write_liveitw(tmp_path / "l")
    savemat(str(root / "Data" / "AllMOS_release.mat"), {"AllMOS_release": np.ones((1, 4))})
    with pytest.raises(DatasetError, match=r"4 scores for 10 names"):
        load_dataset("LIVEitW", root)
    savemat(str(root / "Data" / "AllMOS_release.mat"), {"MOS": np.ones((1, 10))})
    with pytest.raises(DatasetError, match=r"no variable 'AllMOS_release'; found \['MOS'\]"):
        load_dataset("LIVEitW", root)


def test_non_numeric_score_names_file_and_line(tmp_path):
    root = fx.write_tid2013(tmp_path / "t")
    path = root / "mos_with_names.txt"
    lines = path.read_text().splitlines()
    lines[2] = "abc " + lines[2].split()[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"mos_with_names.txt is malformed: line 3: 'abc'"):
        load_dataset("TID2013", root)


@pytest.mark.parametrize("name", TARGET_DATASETS + ("PIPAL", "AVA"))
def test_one_missing_image_is_reported(tmp_path, name):
    root = fx.WRITERS[name](tmp_path / name)
    subset = fx.read_expected(root)["default"]
    victim = root / _expected(root, subset)[0][0]
    victim.unlink()
    options = {"skip_missing": False} if name == "AVA" else {}
    n_missing = 1 + fx.read_expected(root)["extra"].get("skipped_missing", 0)
    with pytest.raises(DatasetError, match=rf"{n_missing} of \d+ listed images are missing") as info:
        load_dataset(name, root, **options)
    assert victim.name in str(info.value)
    assert "check_files=False" in str(info.value)
    samples = load_dataset(name, root, check_files=False, **options)
    assert victim.name in [p.name for p in samples.paths]


def test_many_missing_images_are_summarised(tmp_path):
    root = fx.write_kadid10k(tmp_path / "k", n=9)
    shutil.rmtree(root / "images")
    with pytest.raises(DatasetError, match=r"9 of 9 listed images are missing: .* and 4 more"):
        load_dataset("KADID10k", root)


def test_import_leaves_heavy_libraries_unloaded():
    code = (
        "import sys, quasar.evaluate.datasets\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'scipy', 'openpyxl') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_spaq_image_dir_option(tmp_path):
    root = fx.write_spaq(tmp_path / "s")
    shutil.copytree(root / "TestImage", root / "TestImage512")
    samples = load_dataset("SPAQ", root, image_dir="TestImage512")
    want = [(p.replace("TestImage/", "TestImage512/"), s) for p, s in _expected(root, "test")]
    _assert_same(_pairs(samples, root), want)
