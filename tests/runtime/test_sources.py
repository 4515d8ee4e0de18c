"""Dataset inputs (runtime/sources.py): WebDataset tar shards and Parquet files, brace
patterns, hostile shards, and ``quasar score`` on them with the local engine (no Ray)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import rt_helpers  # noqa: E402
import shard_helpers as sh  # noqa: E402

from quasar.cli import run as _run  # noqa: E402


class cli:  # `quasar score` on command-line tokens
    @staticmethod
    def main(argv):
        return _run(["score", *argv])
from quasar.runtime.inputs import iter_inputs  # noqa: E402
from quasar.runtime.sources import (  # noqa: E402
    Sample, SourceError, SourceOptions, expand_braces, iter_items, iter_parquet_samples,
    iter_tar_samples, split_member,
)

pa = pytest.importorskip("pyarrow")


# ------------------------------------------------------------------ brace patterns, names
def test_expand_braces():
    assert expand_braces("s-{00000..00003}.tar") == [f"s-{i:05d}.tar" for i in range(4)]
    assert expand_braces("s-{8..11}.tar") == ["s-8.tar", "s-9.tar", "s-10.tar", "s-11.tar"]
    assert expand_braces("{a,b}/x-{0..1}.tar") == ["a/x-0.tar", "a/x-1.tar", "b/x-0.tar", "b/x-1.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert expand_braces("{x}.tar") == ["{x}.tar"]
    import itertools
    import types

    from quasar.runtime.sources import brace_count, iter_braces
    it = iter_braces("s-{000..999}-{a,b,c}{x}.tar")
    assert isinstance(it, types.GeneratorType)
    assert list(itertools.islice(it, 4)) == ["s-000-a{x}.tar", "s-000-b{x}.tar", "s-000-c{x}.tar",
                                             "s-001-a{x}.tar"]
    assert brace_count("s-{000..999}-{a,b,c}{x}.tar") == 3000 == len(expand_braces(
        "s-{000..999}-{a,b,c}{x}.tar"))
    assert brace_count("s-{5..1}.tar") == 5 and brace_count("plain") == 1


def test_split_member_is_webdataset_rule():
    assert split_member("dir/000123.seg.png") == ("dir/000123", "seg.png")
    assert split_member("abc.JPG") == ("abc", "jpg")
    # every member belongs to a sample (issue 17 item 13): no extension, hidden names
    assert split_member("noext") == ("noext", "")
    assert split_member("dir/.hidden") == ("dir/.hidden", "")
    assert split_member("dir/.x.JPG") == ("dir/.x", "jpg")


def test_brace_pattern_and_glob_inputs(tmp_path):
    shards, _ = sh.good_shards(tmp_path, n_shards=3, per_shard=1)
    (tmp_path / "x.parquet").write_bytes(b"")
    got = list(iter_inputs([str(tmp_path / "shard-{00000..00002}.tar")]))
    assert got == [str(s) for s in shards]
    assert list(iter_inputs([str(tmp_path / "*.tar")])) == [str(s) for s in shards]
    # a folder yields its dataset files too (sorted)
    assert list(iter_inputs([str(tmp_path)])) == [str(s) for s in shards] + [str(tmp_path / "x.parquet")]


# ------------------------------------------------------------------ WebDataset
def test_tar_samples_grouped_by_key(tmp_path):
    jpg, png, webp = sh.image_bytes(1), sh.image_bytes(2, "PNG"), sh.image_bytes(3, "WEBP")
    shard = sh.write_tar(tmp_path / "s.tar", [
        ("a.json", b"{}"), ("a.jpg", jpg), ("a.txt", b"cap"),
        ("sub/b.png", png), ("sub/b.cls", b"1"),
        ("c.JPG", jpg), ("c.webp", webp),             # upper-case ext; jpg wins (order of keys)
        ("__index__", b"meta"),                       # meta member: ignored
        ("d.json", b"{}"),                            # no image member
        ("e.seg.png", png), ("e.png", webp),          # two image members, png preferred
    ])
    samples = list(iter_tar_samples(str(shard), ("jpg", "png", "webp")))
    ids = [s.id for s in samples]
    assert ids == [f"{shard}#{k}" for k in ("a", "sub/b", "c", "d", "e")]
    assert samples[0].data == jpg and samples[1].data == png and samples[2].data == jpg
    assert samples[4].data == webp
    d = samples[3]
    assert d.status == "not_found" and d.data is None
    assert f"{shard}#d" in d.error and "d.json" in d.error and "--image-key" in d.error
    assert [s.index for s in samples] == list(range(5))
    # --image-key order decides
    s2 = list(iter_tar_samples(str(shard), ("webp", "jpg")))
    assert s2[2].data == webp and s2[0].data == jpg
    assert list(iter_tar_samples(str(shard), ("seg.png",)))[4].data == png


def _shard_of(tmp_path, n=4):
    members = []
    for k in range(n):
        members += [(f"k{k}.jpg", sh.image_bytes(k)), (f"k{k}.json", b"{}")]
    return sh.write_tar(tmp_path / "h.tar", members)


def test_truncated_member_becomes_error_row(tmp_path):
    shard = _shard_of(tmp_path)
    off = sh.member_offsets(shard)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: off["k2.jpg"][1] + 100])  # inside k2.jpg's data
    samples = list(iter_tar_samples(str(cut)))
    assert [s.id for s in samples] == [f"{cut}#k0", f"{cut}#k1", f"{cut}#k2"]
    assert [s.status for s in samples] == ["ok", "ok", "truncated"]
    assert "k2.jpg" in samples[2].error and "truncated" in samples[2].error


@pytest.mark.parametrize("where", ["boundary", "in_skipped_member", "garbage_header"])
def test_damaged_shard_is_never_silently_short(tmp_path, where):
    shard = _shard_of(tmp_path)
    off = sh.member_offsets(shard)
    raw = shard.read_bytes()
    bad = tmp_path / "bad.tar"
    if where == "boundary":      # cut exactly before k2.jpg's header: no end-of-archive blocks
        bad.write_bytes(raw[: off["k2.jpg"][0]])
        status, last = "truncated", "k1"
    elif where == "in_skipped_member":  # cut inside k1.json (never read: tarfile skips it)
        bad.write_bytes(raw[: off["k1.json"][1] + 1])
        status, last = "truncated", "k1"
    else:                        # k2.jpg's header overwritten with garbage
        h = off["k2.jpg"][0]
        bad.write_bytes(raw[:h] + b"\xff" * 512 + raw[h + 512:])
        status, last = "read_error", "k1"
    samples = list(iter_tar_samples(str(bad)))
    assert [s.status for s in samples[:2]] == ["ok", "ok"]
    tail = samples[-1]
    assert len(samples) == 3 and tail.status == status
    assert tail.id.startswith(f"{bad}#@") and f"after key {last}" in tail.error


@pytest.mark.parametrize("content,status", [(None, "not_found"), (b"", "empty_file"),
                                            (b"this is not a tar file" * 40, "read_error")])
def test_unreadable_shard_is_one_error_row(tmp_path, content, status):
    p = tmp_path / "x.tar"
    if content is not None:
        p.write_bytes(content)
    samples = list(iter_tar_samples(str(p)))
    assert len(samples) == 1 and samples[0].status == status and samples[0].id == f"{p}#@0"
    assert str(p) in samples[0].error


def test_tar_reader_keeps_memory_flat(tmp_path):
    """Nothing grows with the number of members (tarfile would keep every TarInfo): the
    peak traced allocation while streaming 3000 members stays that of a few samples."""
    import tracemalloc
    members = [(f"k{k:05d}.txt", b"x" * 100) for k in range(3000)] + [("z.jpg", sh.image_bytes(0))]
    shard = sh.write_tar(tmp_path / "many.tar", members)
    tracemalloc.start()
    try:
        n, last = 0, None
        for s in iter_tar_samples(str(shard)):
            n, last = n + 1, s
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 3001 and last.id.endswith("#z") and last.status == "ok"
    assert peak < 2_000_000, peak  # the row-id digests (8 bytes each) and one sample


# ------------------------------------------------------------------ Parquet
def test_parquet_binary_struct_and_path_columns(tmp_path):
    imgs = [sh.image_bytes(i) for i in range(5)]
    f1 = sh.write_parquet(tmp_path / "a.parquet", {
        "jpg": imgs[:4] + [None], "key": ["x0", "x1", "x2", "x3", "x4"], "caption": list("abcde")})
    got = list(iter_parquet_samples(str(f1), id_column="key"))
    assert [s.id for s in got] == [f"{f1}#x{i}" for i in range(5)]
    assert [s.data for s in got[:4]] == imgs[:4] and got[4].status == "empty_file"
    # no id column: row numbers across row groups (row_group_size=3)
    assert [s.id for s in iter_parquet_samples(str(f1))] == [f"{f1}#{i}" for i in range(5)]
    # Hugging Face Image feature: struct<bytes, path>
    f2 = sh.write_parquet(tmp_path / "hf.parquet", {
        "image": [{"bytes": b, "path": None} for b in imgs[:2]]})
    assert [s.data for s in iter_parquet_samples(str(f2))] == imgs[:2]
    # a column of paths, relative to the Parquet file
    (tmp_path / "im0.jpg").write_bytes(imgs[0])
    f3 = sh.write_parquet(tmp_path / "paths.parquet", {"image": ["im0.jpg"]})
    s3 = list(iter_parquet_samples(str(f3)))
    assert s3[0].path == str(tmp_path / "im0.jpg") and s3[0].data is None


def test_parquet_wrong_column_is_a_clear_error_row(tmp_path):
    """A file whose columns do not fit is one source_error row (issue 17 item 16: a run over
    a folder goes on with the next file)."""
    import re
    f = sh.write_parquet(tmp_path / "a.parquet", {"caption": ["a"], "n": [1]})
    for kw, pattern in (({}, "no image column found.*--image-column"),
                        ({"image_column": "jpeg"}, "no column 'jpeg'.*caption"),
                        ({"image_column": "n"}, "type int64")):
        got = list(iter_parquet_samples(str(f), **kw))
        assert len(got) == 1 and got[0].id == f"{f}#@0" and got[0].status == "source_error"
        assert re.search(pattern, got[0].error) and str(f) in got[0].error


def test_corrupt_parquet_is_an_error_row(tmp_path):
    f = sh.write_parquet(tmp_path / "a.parquet", {"jpg": [sh.image_bytes(i) for i in range(4)]})
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(f.read_bytes()[:-20])          # footer gone
    got = list(iter_parquet_samples(str(cut)))
    assert len(got) == 1 and got[0].status == "read_error" and got[0].id == f"{cut}#@0"
    # a corrupt data page in the second row group: rows of the first survive, the second
    # row group becomes one error row
    import pyarrow.parquet as pq
    md = pq.ParquetFile(f).metadata
    start = md.row_group(1).column(0).data_page_offset
    raw = bytearray(f.read_bytes())
    raw[start:start + 16] = b"\xff" * 16          # the page header of row group 1
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(raw))
    got = list(iter_parquet_samples(str(bad)))
    assert [s.id for s in got] == [f"{bad}#{i}" for i in range(3)] + [f"{bad}#@rowgroup1"]
    assert [s.status for s in got] == ["ok"] * 3 + ["read_error"]
    assert "row group 1 (rows 3..3)" in got[-1].error


# ------------------------------------------------------------------ local `quasar score`
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("onnx")
    return rt_helpers.write_tiny_bundle(tmp_path_factory.mktemp("tiny") / "b")


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_local_score_on_tar_and_parquet_equals_scorer_and_loose_files(tmp_path, tiny):
    from quasar.runtime.scorer import Scorer

    shards, expected = sh.good_shards(tmp_path / "wds", n_shards=2, per_shard=4)
    blobs = [sh.image_bytes(50 + i) for i in range(5)]
    pq_file = sh.write_parquet(tmp_path / "pq" / "p.parquet",
                               {"img": blobs, "uid": [f"u{i}" for i in range(5)]})
    loose = tmp_path / "loose"
    loose.mkdir()
    for i, (sid, data) in enumerate(expected.items()):
        (loose / f"{i:03d}.img").write_bytes(data)  # same bytes as loose files

    out = tmp_path / "s.csv"
    code = cli.main([str(tmp_path / "wds" / "shard-{00000..00001}.tar"), str(pq_file),
                     "--bundle", str(tiny), "-a", "all", "--out", str(out), "--quiet",
                     "--image-column", "img", "--id-column", "uid", "--batch-size", "3"])
    assert code == 0
    rows = _csv(out)
    ids = list(expected) + [f"{pq_file}#u{i}" for i in range(5)]
    assert [r["path"] for r in rows] == ids and all(r["status"] == "ok" for r in rows)

    s = Scorer.from_bundle(tiny, anchors="all", batch_size=4)
    ref = s.score_all(list(expected.values()) + blobs)          # direct Scorer computation
    for name in ("text", "kadis"):
        got = np.array([float(r[f"score_{name}"]) for r in rows])
        np.testing.assert_allclose(got, ref[name], rtol=1e-12, atol=0)

    out2 = tmp_path / "loose.csv"
    assert cli.main([str(loose / f"{i:03d}.img") for i in range(len(expected))]
                    + ["--bundle", str(tiny), "-a", "all", "--out", str(out2), "--quiet"]) == 0
    assert [r["score_text"] for r in _csv(out2)] == [r["score_text"] for r in rows[:len(expected)]]


def test_local_hostile_members_match_loose_file_statuses(tmp_path, tiny):
    """A non-image member, a truncated JPEG member and a truncated shard: error rows with
    the same status (and message, with the sample id in place of the path) as loose files."""
    good = sh.image_bytes(7)
    trunc = good[: len(good) // 2]
    shard = sh.write_tar(tmp_path / "h.tar", [
        ("a.jpg", good), ("b.jpg", b"<html>not an image</html>"), ("c.jpg", trunc),
        ("d.jpg", good)])
    off = sh.member_offsets(shard)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: off["d.jpg"][1] + 10])
    for name, data in (("b.jpg", b"<html>not an image</html>"), ("c.jpg", trunc)):
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "h.jsonl"
    code = cli.main([str(cut), str(tmp_path / "b.jpg"), str(tmp_path / "c.jpg"),
                     "--bundle", str(tiny), "--out", str(out), "--quiet"])
    assert code == 3
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    by = {r["path"]: r for r in rows}
    assert [r["path"] for r in rows] == [f"{cut}#a", f"{cut}#b", f"{cut}#c", f"{cut}#d",
                                         str(tmp_path / "b.jpg"), str(tmp_path / "c.jpg")]
    assert by[f"{cut}#a"]["status"] == "ok"
    for key in ("b", "c"):
        tar_row, file_row = by[f"{cut}#{key}"], by[str(tmp_path / f"{key}.jpg")]
        assert tar_row["status"] == file_row["status"] != "ok"
        assert tar_row["error"] == file_row["error"].replace(str(tmp_path / f"{key}.jpg"),
                                                             f"{cut}#{key}")
    assert by[f"{cut}#b"]["status"] == "not_an_image"
    assert by[f"{cut}#c"]["status"] == "truncated"
    assert by[f"{cut}#d"]["status"] == "truncated" and "d.jpg" in by[f"{cut}#d"]["error"]


def test_local_resume_skips_ok_samples(tmp_path, tiny):
    shards, expected = sh.good_shards(tmp_path, n_shards=1, per_shard=3)
    bad = sh.write_tar(tmp_path / "bad.tar", [("x.jpg", b"nope")])
    out = tmp_path / "r.csv"
    args = [str(shards[0]), str(bad), "--bundle", str(tiny), "--out", str(out), "--quiet"]
    assert cli.main(args) == 3
    first = _csv(out)
    assert cli.main(args + ["--resume"]) == 3
    again = _csv(out)
    assert [r["path"] for r in again] == [r["path"] for r in first]  # ok rows kept once, bad retried
    assert again[:3] == first[:3]


def test_input_type_and_image_key_flags(tmp_path, tiny):
    png = sh.image_bytes(3, "PNG")
    shard = sh.write_tar(tmp_path / "data.shard", [("a.jpg", sh.image_bytes(1)), ("a.png", png)])
    out = tmp_path / "o.csv"
    assert cli.main([str(shard), "--bundle", str(tiny), "--out", str(out), "--quiet",
                     "--input-type", "webdataset", "--image-key", "png"]) == 0
    from quasar.runtime.scorer import Scorer
    ref = Scorer.from_bundle(tiny).score([png])
    row = _csv(out)[0]
    assert row["path"] == f"{shard}#a" and float(row["score_text"]) == pytest.approx(ref[0], abs=0, rel=1e-12)
    assert cli.main([str(shard), "--bundle", str(tiny), "--out", str(tmp_path / "p.csv"),
                     "--quiet", "--input-type", "nonsense"]) == 2


def test_sample_aware_load_raises_with_status(tiny):
    """The engine-style loader: pixels for good samples, an error naming the sample id with
    the row status for bad ones (read-level failures and decode failures alike)."""
    from quasar.runtime.pipeline import error_status
    from quasar.runtime.scorer import Scorer
    from quasar.runtime.sources import sample_aware

    s = Scorer.from_bundle(tiny)
    load = sample_aware(s.load_image)
    good = sh.image_bytes(1)
    np.testing.assert_array_equal(load(Sample(id="x#a", data=good)), s.load_image(good))
    for sample, status in ((Sample(id="x#b", data=b"<html>"), "not_an_image"),
                           (Sample(id="x#c", status="truncated", error="x#c: cut"), "truncated"),
                           (Sample(id="x#d", status="read_error", error="x#d: bad"), "read_error")):
        with pytest.raises(Exception) as ei:
            load(sample)
        assert str(ei.value).startswith(sample.id) and ei.value.status == status
        assert error_status(ei.value) in (status, "decode_error")  # this branch maps by class


# ------------------------------------------------------------------ no ray on the local path
NO_RAY = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "ray":
                raise ImportError("blocked import of " + name)
    sys.meta_path.insert(0, Block())
    from quasar.cli import run
    import quasar.runtime.ray                      # the module itself imports ray lazily
    code = run(["score", *{args!r}])
    print("RAY_LOADED", sorted(m for m in sys.modules if m.split(".")[0] == "ray"))
    print("EXIT", code)
""")


def test_local_path_never_imports_ray(tmp_path, tiny):
    shards, _ = sh.good_shards(tmp_path, n_shards=1, per_shard=2)
    args = [str(shards[0]), "--bundle", str(tiny), "--out", str(tmp_path / "o.csv"), "--quiet"]
    proc = subprocess.run([sys.executable, "-c", NO_RAY.format(args=args)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RAY_LOADED []" in proc.stdout and "EXIT 0" in proc.stdout
    # and the hook really blocks: --engine ray says which extra to install
    ray_args = [str(shards[0]), "--bundle", str(tiny), "--out", str(tmp_path / "parts"),
                "--engine", "ray"]
    proc = subprocess.run([sys.executable, "-c", NO_RAY.format(args=ray_args)],
                          capture_output=True, text=True, timeout=300)
    assert "EXIT 2" in proc.stdout and "quasar-iqa[ray]" in proc.stderr
