"""Hostile dataset inputs (issue 17, items 6, 8-16, 25a/b): WebDataset tars and Parquet files
that used to hang a run, exhaust memory, drop samples silently or lose rows on --resume.

Every hostile file is generated here (sparse files: gigabytes declared, nothing on disk).
The runs that could hang or exhaust memory run ``quasar score`` (or the reader) in a
subprocess with a timeout and report their own peak RSS (``VmHWM``: ``ru_maxrss`` would carry the parent's); the readers that
used to allocate a declared size run under an address-space cap (``RLIMIT_AS``).
"""
from __future__ import annotations

import csv
import json
import os
import socket
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

pa = pytest.importorskip("pyarrow")
MB = 1 << 20

# `quasar score` in a child process that prints its own peak RSS (MiB) on its last line
SCORE = textwrap.dedent("""
    import sys
    from quasar.cli import run
    code = run(["score", *sys.argv[1:]])
    from quasar.timing import peak_rss_mb  # VmHWM: ru_maxrss carries the parent's peak
    print("MAXRSS_MB", int(peak_rss_mb()))
    sys.exit(code)
""")

# a reader in a child process under an address-space cap: rows as JSON lines
READ = textwrap.dedent("""
    import json, resource, sys
    cap = int(sys.argv[1]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from quasar.runtime.sources import iter_tar_samples
    for s in iter_tar_samples(sys.argv[2]):
        print(json.dumps({"id": s.id, "status": s.status, "n": s.nbytes, "error": s.error}))
""")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("onnx")
    return rt_helpers.write_tiny_bundle(tmp_path_factory.mktemp("tiny") / "b")


def score(args, tiny, timeout=120, cwd=None):
    """(exit code, rows, stderr, peak RSS MiB) of ``quasar score ARGS --bundle tiny``."""
    out = [a for a in args if str(a).endswith(".csv")]
    proc = subprocess.run([sys.executable, "-c", SCORE, *map(str, args), "--bundle", str(tiny),
                           "-q"], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    rss = [int(x.split()[1]) for x in proc.stdout.splitlines() if x.startswith("MAXRSS_MB")]
    rows = []
    if out and os.path.exists(out[0]):
        with open(out[0], newline="") as f:
            rows = list(csv.DictReader(f))
    return proc.returncode, rows, proc.stderr, (rss[0] if rss else None)


def read_capped(shard: Path, cap_mb: int = 1024):
    proc = subprocess.run([sys.executable, "-c", READ, str(cap_mb), str(shard)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(x) for x in proc.stdout.splitlines()]


def by_path(rows):
    return {r["path"]: r for r in rows}


# ------------------------------------------------------------------ item 8, 25a: never block
def test_fifo_socket_device_named_as_shards_never_block(tmp_path, tiny):
    d = tmp_path / "in"
    d.mkdir()
    sh.write_tar(d / "a_good.tar", [("k.jpg", sh.image_bytes(1))])
    os.mkfifo(d / "b_fifo.tar")
    os.mkfifo(d / "c_fifo.parquet")
    os.symlink("/dev/zero", d / "d_zero.tar")                  # was "empty_file ... 0 bytes"
    os.symlink(str(d / "b_fifo.tar"), d / "e_link_to_fifo.parquet")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "f_sock.tar"))
    (d / "g_good.png").write_bytes(sh.image_bytes(2, "PNG"))
    direct = tmp_path / "direct_fifo.tar"
    os.mkfifo(direct)
    out = tmp_path / "o.csv"
    try:
        code, rows, err, _ = score([d, direct, d / "g_good.png", "--out", out], tiny, timeout=90)
    finally:
        sock.close()
    got = by_path(rows)
    assert code == 3, err
    assert got[f"{d / 'a_good.tar'}#k"]["status"] == "ok"
    assert [r["status"] for r in rows if r["path"] == str(d / "g_good.png")] == ["ok", "ok"]
    for name in ("b_fifo.tar", "c_fifo.parquet", "d_zero.tar", "e_link_to_fifo.parquet",
                 "f_sock.tar"):
        r = got[f"{d / name}#@0"]
        assert r["status"] == "not_a_file" and "not a regular file" in r["error"], r
    assert "FIFO" in got[f"{d / 'b_fifo.tar'}#@0"]["error"]
    assert "character device" in got[f"{d / 'd_zero.tar'}#@0"]["error"]
    assert "symbolic link" in got[f"{d / 'e_link_to_fifo.parquet'}#@0"]["error"]
    assert got[f"{direct}#@0"]["status"] == "not_a_file"


# ------------------------------------------------------------------ item 11: header bombs
@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
                                  tarfile.XHDTYPE, tarfile.XGLTYPE])
def test_tar_header_bomb_is_refused_and_next_member_keeps_its_name(tmp_path, kind):
    good_a, good_b = sh.image_bytes(1), sh.image_bytes(2)
    shard = sh.write_raw_tar(tmp_path / "bomb.tar", [
        sh.member("a.jpg", good_a),
        (sh.header("././@LongLink", 3 << 30, kind), 3 << 30),  # 3 GiB declared, a hole
        sh.member("b.jpg", good_b), sh.member("c.jpg", good_a)])
    rows = read_capped(shard, cap_mb=1024)      # tarfile used to read the 3 GiB into memory
    bomb_at = 512 + -(-len(good_a) // 512) * 512
    assert [r["id"] for r in rows] == [f"{shard}#a", f"{shard}#@{bomb_at}", f"{shard}#b",
                                       f"{shard}#c"]
    assert [r["status"] for r in rows] == ["ok", "too_large", "ok", "ok"]
    assert rows[2]["n"] == len(good_b)
    assert "3,221,225,472 bytes" in rows[1]["error"] and "own header name" in rows[1]["error"]


def test_tar_long_names_within_the_cap_are_read(tmp_path):
    """GNU long names and PAX paths are honoured (the reader is not a plain ustar one)."""
    long_key = "d/" + "x" * 300
    shard = tmp_path / "long.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as t:
        for name, data in ((long_key + ".jpg", sh.image_bytes(1)), ("p" * 200 + ".png", b"p")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, __import__("io").BytesIO(data))
    from quasar.runtime.sources import iter_tar_samples
    got = list(iter_tar_samples(str(shard)))
    assert [s.id for s in got] == [f"{shard}#{long_key}", f"{shard}#{'p' * 200}"]
    pax = tmp_path / "pax.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("ü/" + "y" * 150 + ".jpg")
        info.size = 3
        t.addfile(info, __import__("io").BytesIO(b"abc"))
    got = list(iter_tar_samples(str(pax)))
    assert [s.id for s in got] == [f"{pax}#ü/{'y' * 150}"] and got[0].data == b"abc"


# ------------------------------------------------------------------ item 10: flat memory
def test_tar_of_large_members_keeps_memory_flat(tmp_path, tiny):
    """8 members of 120 MB (under the member limit): the decode-ahead holds a byte budget,
    not 32 samples, and a failed sample is freed once written (no traceback cycle)."""
    parts = [sh.member("first.jpg", sh.image_bytes(1))]
    parts += [(sh.header(f"big{i}.jpg", 120 * MB), 120 * MB) for i in range(8)]
    parts += [sh.member("last.jpg", sh.image_bytes(2))]
    shard = sh.write_raw_tar(tmp_path / "big.tar", parts)
    out = tmp_path / "o.csv"
    code, rows, err, rss = score([shard, "--out", out], tiny, timeout=300)
    assert code == 3, err
    assert [r["path"] for r in rows] == [f"{shard}#first"] + \
        [f"{shard}#big{i}" for i in range(8)] + [f"{shard}#last"]
    assert [r["status"] for r in rows] == ["ok"] + ["not_an_image"] * 8 + ["ok"]
    assert rss is not None and rss < 800, f"peak RSS {rss} MiB for 120 MB members"


# ------------------------------------------------------------------ item 9: Parquet bombs
WRITE_BOMB = textwrap.dedent("""
    import sys, pyarrow as pa, pyarrow.parquet as pq
    path, n, mb, good = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    L = mb << 20
    z = pa.py_buffer(bytes(L))
    off = pa.py_buffer(pa.array([0, L], pa.int32()).buffers()[1])
    big = pa.Array.from_buffers(pa.binary(), 1, [None, off, z])
    schema = pa.schema([("jpg", pa.binary()), ("key", pa.string())])
    with pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=False,
                          write_statistics=False) as w:
        for i in range(n):
            w.write_table(pa.table({"jpg": big, "key": [f"bomb{i}"]}, schema=schema))
        w.write_table(pa.table({"jpg": [open(good, "rb").read()], "key": ["good"]}, schema=schema))
""")


def test_parquet_decompression_bomb_is_refused_before_decompression(tmp_path, tiny):
    good = tmp_path / "good.jpg"
    good.write_bytes(sh.image_bytes(3))
    f = tmp_path / "bomb.parquet"
    subprocess.run([sys.executable, "-c", WRITE_BOMB, str(f), "3", "300", str(good)],
                   check=True, timeout=120)
    assert f.stat().st_size < 200_000                      # 900 MB of cells in a few KB
    out = tmp_path / "o.csv"
    code, rows, err, rss = score([f, "--id-column", "key", "--out", out], tiny, timeout=300)
    assert code == 3, err
    assert [r["path"] for r in rows] == [f"{f}#bomb{i}" for i in range(3)] + [f"{f}#good"]
    assert [r["status"] for r in rows] == ["too_large"] * 3 + ["ok"]
    assert "decompresses to 314,572,8" in rows[0]["error"] and "limit" in rows[0]["error"]
    assert rss is not None and rss < 600, f"peak RSS {rss} MiB"


def test_parquet_cells_over_the_cap_are_never_copied(tmp_path):
    """A page holding more than the cap per value is refused from its page header (its row
    group's other pages are not affected); in a page under the limits, a cell over the cap
    is refused from the array's offsets, never copied."""
    from quasar.runtime.sources import iter_parquet_samples
    cells = [b"a" * 10, b"b" * 5000, None, b"c" * 20]
    f = sh.write_parquet(tmp_path / "c.parquet", {"jpg": cells}, row_group_size=1)
    got = list(iter_parquet_samples(str(f), max_cell_bytes=4096))
    assert [s.status for s in got] == ["ok", "too_large", "empty_file", "ok"]
    assert got[0].data == cells[0] and got[3].data == cells[3] and got[1].data is None
    assert "4,096-byte limit" in got[1].error and "row group 1" in got[1].error
    one_page = [b"a" * 10, b"b" * 5000, b"c" * 20]                 # 5 KB page: under 8 KB
    f1 = sh.write_parquet(tmp_path / "one.parquet", {"jpg": one_page}, row_group_size=10)
    got = list(iter_parquet_samples(str(f1), max_cell_bytes=4096))
    assert [s.status for s in got] == ["ok", "too_large", "ok"]
    assert "is 5,000 bytes" in got[1].error and got[2].data == one_page[2]
    # one page over the page limit (2 x the cap): its rows, and the rest of its row group,
    # are refused unread
    f2 = sh.write_parquet(tmp_path / "p.parquet", {"jpg": [b"x" * 30000, b"y"], "k": ["a", "b"]},
                          row_group_size=10)
    got = list(iter_parquet_samples(str(f2), id_column="k", max_cell_bytes=4096))
    assert [(s.id, s.status) for s in got] == [(f"{f2}#a", "too_large"), (f"{f2}#b", "too_large")]
    assert "decompresses to" in got[0].error


# ------------------------------------------------------------------ item 12: lazy braces
LAZY = textwrap.dedent("""
    import itertools, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    from quasar.runtime.inputs import iter_inputs
    t0 = time.perf_counter()
    first = list(itertools.islice(iter_inputs([sys.argv[1]]), 3))
    print(first, time.perf_counter() - t0)
""")


def test_brace_pattern_is_expanded_lazily_and_capped(tmp_path):
    pattern = str(tmp_path / "s-{0..99999999}.tar")
    proc = subprocess.run([sys.executable, "-c", LAZY, pattern], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert str(tmp_path / "s-2.tar") in proc.stdout
    assert float(proc.stdout.split()[-1]) < 5
    from quasar.errors import InputError
    from quasar.runtime.inputs import check_specs
    check_specs([pattern])                                    # 10^8 names: allowed, lazily
    with pytest.raises(InputError, match=r"names 100,000,000,000 files.*split it"):
        check_specs([str(tmp_path / "s-{0..99999999}-{000..999}.tar")])  # 10^11: refused


# ------------------------------------------------------------------ item 13: every member
def test_every_tar_member_is_accounted_for(tmp_path, tiny):
    img = sh.image_bytes(4)
    shard = sh.write_raw_tar(tmp_path / "m.tar", [
        sh.member("a.jpg", img),
        (sh.header("b.jpg", 0, tarfile.SYMTYPE, "a.jpg"), b""),
        (sh.header("c.jpg", 0, tarfile.LNKTYPE, "a.jpg"), b""),
        sh.member("README", b"no extension"),
        sh.member(".hidden.jpg", img),
        sh.member("sub/.DS_Store", b"\0\0\0\1Bud1"),
        (sh.header("sub/", 0, tarfile.DIRTYPE), b""),
        sh.member("__index__", b"meta"),
    ])
    links = sh.write_raw_tar(tmp_path / "links.tar", [
        (sh.header("x.jpg", 0, tarfile.SYMTYPE, "../elsewhere.jpg"), b""),
        (sh.header("y.png", 0, tarfile.LNKTYPE, "x.jpg"), b"")])
    loose = tmp_path / "loose.jpg"
    loose.write_bytes(img)
    out = tmp_path / "o.csv"
    code, rows, err, _ = score([shard, links, loose, "--out", out], tiny)
    assert code == 3, err
    st = {r["path"]: r["status"] for r in rows}
    assert st == {f"{shard}#a": "ok", f"{shard}#b": "not_a_file", f"{shard}#c": "not_a_file",
                  f"{shard}#README": "not_found", f"{shard}#.hidden": "ok",
                  f"{shard}#sub/.DS_Store": "not_found", f"{links}#x": "not_a_file",
                  f"{links}#y": "not_a_file", str(loose): "ok"}
    err_b = by_path(rows)[f"{shard}#b"]["error"]
    assert "symbolic link to 'a.jpg'" in err_b and "--dereference" in err_b
    assert "a hard link" in by_path(rows)[f"{links}#y"]["error"]


# ------------------------------------------------------------------ item 14: after the end
def test_concatenated_tars_are_read_on_and_trailing_garbage_is_a_row(tmp_path):
    from quasar.runtime.sources import iter_tar_samples
    a = sh.write_tar(tmp_path / "a.tar", [("k0.jpg", b"0"), ("k1.jpg", b"1")])
    b = sh.write_tar(tmp_path / "b.tar", [("k2.jpg", b"2")])
    c = tmp_path / "c.tar"
    c.write_bytes(a.read_bytes() + b.read_bytes())           # cat a.tar b.tar > c.tar
    got = list(iter_tar_samples(str(c)))
    assert [(s.id, s.data) for s in got] == [(f"{c}#k0", b"0"), (f"{c}#k1", b"1"),
                                             (f"{c}#k2", b"2")]
    g = tmp_path / "g.tar"
    g.write_bytes(a.read_bytes() + b"trailing garbage" * 64)
    got = list(iter_tar_samples(str(g)))
    assert [s.status for s in got] == ["ok", "ok", "read_error"]
    assert "after the end-of-archive marker" in got[-1].error and "after key k1" in got[-1].error


# ------------------------------------------------------------------ item 15: relative paths
def test_parquet_relative_paths_are_relative_to_the_file_only(tmp_path, tiny):
    from quasar.runtime.scorer import Scorer
    right, decoy = sh.image_bytes(5), sh.image_bytes(6)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "im.jpg").write_bytes(right)
    (tmp_path / "im.jpg").write_bytes(decoy)                  # same name in the working dir
    f = sh.write_parquet(tmp_path / "data" / "p.parquet", {"image": ["im.jpg", "gone.jpg"]})
    out = tmp_path / "o.csv"
    code, rows, err, _ = score([Path("data") / "p.parquet", "--out", out], tiny, cwd=tmp_path)
    assert code == 3, err
    s = Scorer.from_bundle(tiny)
    want, other = s.score([right])[0], s.score([decoy])[0]
    assert want != other
    assert float(rows[0]["score_text"]) == pytest.approx(want, rel=1e-12, abs=0)
    assert rows[1]["status"] == "not_found" and os.path.join("data", "gone.jpg") in rows[1]["error"]
    assert f.exists()


# ------------------------------------------------------------------ item 16: bad Parquet
def test_bad_parquet_in_a_folder_is_a_row_and_the_run_goes_on(tmp_path, tiny):
    d = tmp_path / "in"
    good = sh.write_parquet(d / "a.parquet", {"image": [sh.image_bytes(7), sh.image_bytes(8)]})
    sh.write_parquet(d / "b.parquet", {"image": [1, 2]})             # wrong column type
    (d / "c.parquet").write_bytes(good.read_bytes()[:-30])            # footer cut
    (d / "d.png").write_bytes(sh.image_bytes(9, "PNG"))
    out = tmp_path / "o.csv"
    code, rows, err, _ = score([d, "--out", out], tiny)
    assert code == 3, err
    st = {r["path"]: r["status"] for r in rows}
    assert st == {f"{good}#0": "ok", f"{good}#1": "ok", f"{d / 'b.parquet'}#@0": "source_error",
                  f"{d / 'c.parquet'}#@0": "read_error", str(d / "d.png"): "ok"}
    assert "type int64" in by_path(rows)[f"{d / 'b.parquet'}#@0"]["error"]
    # the output stays resumable: fix b, resume -> its rows are added, c stays a failure row
    sh.write_parquet(d / "b.parquet", {"image": [sh.image_bytes(10)]})
    code, rows, err, _ = score([d, "--out", out, "--resume"], tiny)
    assert code == 3, err
    st = {r["path"]: r["status"] for r in rows}
    assert st[f"{d / 'b.parquet'}#0"] == "ok" and f"{d / 'b.parquet'}#@0" not in st
    assert st[f"{d / 'c.parquet'}#@0"] == "read_error" and len(rows) == 5


# ------------------------------------------------------------------ item 6: unique ids
def test_duplicate_ids_get_distinct_rows_and_resume_keeps_them(tmp_path, tiny):
    g1, g2 = sh.image_bytes(11), sh.image_bytes(12)
    shard = sh.write_tar(tmp_path / "dup.tar", [("a.jpg", g1), ("a.jpg", g2),
                                                ("a.jpg", b"<html>corrupt</html>"),
                                                ("b.jpg", g1), ("a.jpg", g2)])
    pq_file = sh.write_parquet(tmp_path / "ids.parquet", {
        "image": [g1, g2, g1, b"bad", g2], "key": ["1", None, "x", "x", "x.dup2"]})
    out = tmp_path / "o.csv"
    args = [shard, pq_file, "--id-column", "key", "--out", out]
    code, rows, err, _ = score(args, tiny)
    assert code == 3, err
    ids = [r["path"] for r in rows]
    assert ids == [f"{shard}#a", f"{shard}#a.dup2", f"{shard}#a.dup3", f"{shard}#b",
                   f"{shard}#a.dup4", f"{pq_file}#1", f"{pq_file}#@row1", f"{pq_file}#x",
                   f"{pq_file}#x.dup2", f"{pq_file}#x.dup2.dup2"]
    first = {r["path"]: r for r in rows}
    assert first[f"{shard}#a.dup3"]["status"] == "not_an_image"
    assert first[f"{pq_file}#x.dup2"]["status"] == "not_an_image"
    code, rows2, err, _ = score(args + ["--resume"], tiny)
    assert code == 3, err                                   # the failures are retried, fail again
    assert sorted(r["path"] for r in rows2) == sorted(ids)  # nothing lost
    assert {r["path"]: r["status"] for r in rows2} == {k: v["status"] for k, v in first.items()}
    ok = [r for r in rows2 if r["status"] == "ok"]
    assert len(ok) == 8 and len({r["score_text"] for r in ok}) == 2   # only two images


# ------------------------------------------------------------------ item 25b: NUL in a path
def test_nul_in_a_parquet_path_is_a_clear_row(tmp_path, tiny):
    f = sh.write_parquet(tmp_path / "n.parquet", {"image": ["a\0b.jpg"]})
    out = tmp_path / "o.jsonl"
    code = __import__("quasar.cli", fromlist=["run"]).run(
        ["score", str(f), "--bundle", str(tiny), "--out", str(out), "-q"])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert code == 3 and rows[0]["status"] == "not_found"
    assert "NUL byte" in rows[0]["error"] and "ValueError" not in rows[0]["error"]
    assert np.isnan(float("nan"))


def test_tar_negative_sizes_never_loop(tmp_path):
    """A base-256 negative size (or a PAX size of -1000) must not send the reader back."""
    from quasar.runtime.sources import iter_tar_samples
    hdr = bytearray(sh.header("a.jpg", 0))
    hdr[124:136] = b"\xff" * 12                         # base-256 -1
    hdr[148:156] = b"        "
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    pax_rec = b"16 size=-100000\n"
    shard = sh.write_raw_tar(tmp_path / "neg.tar", [
        sh.member("ok.jpg", b"1"), (sh.header("pax", len(pax_rec), tarfile.XHDTYPE), pax_rec),
        sh.member("b.jpg", b"2")])
    got = list(iter_tar_samples(str(shard)))
    assert [s.status for s in got] == ["ok", "read_error"] and "size -100000" in got[1].error
    raw = sh.write_raw_tar(tmp_path / "neg2.tar", [sh.member("ok.jpg", b"1"), (bytes(hdr), b"")])
    got = list(iter_tar_samples(str(raw)))
    assert [s.status for s in got] == ["ok", "read_error"] and "size -1" in got[1].error


def test_parquet_column_check_never_opens_a_fifo(tmp_path):
    """The Ray planner checks Parquet columns before the cluster starts: a FIFO is left to
    the reader (a not_a_file row), never opened (the check used to block forever)."""
    fifo = tmp_path / "f.parquet"
    os.mkfifo(fifo)
    code = ("from quasar.runtime.sources import check_parquet_columns as c; "
            f"c({str(fifo)!r}, None, None); print('OK')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "OK", proc.stderr[-1000:]


# ------------------------------------------------------------------ item 10: no cycles
@pytest.mark.parametrize("workers", [1, 2])
def test_failed_samples_are_freed_without_the_cyclic_gc(tiny, workers):
    """A failed sample's error keeps no traceback: with the cyclic GC off, the bytes of 30
    failed 4 MB samples are freed as their windows are consumed (they used to stay pinned
    by exception -> traceback -> frame -> exception cycles until a GC pass)."""
    import gc
    import tracemalloc

    from quasar.runtime.engine import Engine, EngineConfig
    from quasar.runtime.scorer import Scorer
    from quasar.runtime.sources import Sample, sample_aware

    s = Scorer.from_bundle(tiny)
    eng = Engine(sample_aware(s.load_image), s.embed_pixels, s.embed_dim,
                 EngineConfig(batch_size=2, workers=workers))

    def items():
        for i in range(30):
            yield Sample(id=f"x.tar#{i}", data=b"\0" * (4 * MB))  # not an image: fails

    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        statuses = []
        for w in eng.windows(items()):
            statuses += [getattr(e, "status", None) for e in w.errors]
            del w
        left = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        gc.enable()
    assert statuses == ["not_an_image"] * 30
    assert left < 12 * MB, f"{left / MB:.0f} MB still allocated after the run"


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_parquet_dictionary_and_v2_pages_are_checked(tmp_path, version):
    """Six identical cells (what a 21 KB file with six 500 MB cells is: one dictionary
    entry) are refused from the dictionary page's header; data pages v1 and v2 alike."""
    import pyarrow.parquet as pq
    from quasar.runtime.sources import iter_parquet_samples
    f = tmp_path / "dict.parquet"
    pq.write_table(pa.table({"jpg": [b"z" * 5000] * 6}), f, data_page_version=version)
    got = list(iter_parquet_samples(str(f), max_cell_bytes=4096))
    assert [s.status for s in got] == ["too_large"] * 6
    assert "for 1 value(s)" in got[0].error
    # with a second, small dictionary entry the page passes; the big cells fail one by one
    pq.write_table(pa.table({"jpg": [b"z" * 5000] * 6 + [b"ok"]}), f, data_page_version=version)
    got = list(iter_parquet_samples(str(f), max_cell_bytes=4096))
    assert [s.status for s in got] == ["too_large"] * 6 + ["ok"] and got[6].data == b"ok"
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"jpg": [b"a" * 100, b"b" * 5000, b"c"]}), plain, use_dictionary=False,
                   data_page_version=version)
    got = list(iter_parquet_samples(str(plain), max_cell_bytes=4096))
    assert [s.status for s in got] == ["ok", "too_large", "ok"] and got[2].data == b"c"


def test_nul_in_a_listed_path_is_a_clear_row(tmp_path, tiny):
    """The loose-file path too: a NUL read from stdin is a not_found row, not decode_error
    'ValueError: embedded null byte'."""
    good = tmp_path / "g.jpg"
    good.write_bytes(sh.image_bytes(13))
    out = tmp_path / "o.csv"
    proc = subprocess.run([sys.executable, "-c", SCORE, "-", "--bundle", str(tiny), "--out",
                           str(out), "-q"], input=f"{tmp_path}/a\0b.jpg\n{good}\n",
                          capture_output=True, text=True, timeout=120)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert proc.returncode == 3, proc.stderr[-1500:]
    assert [r["status"] for r in rows] == ["not_found", "ok"]
    assert "NUL byte" in rows[0]["error"]


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar", "v7"])
def test_tar_reader_agrees_with_tarfile_on_real_tar_archives(tmp_path, fmt):
    """Shards written by the system's GNU tar in each format: the members (names, bytes)
    our header loop reads are exactly those ``tarfile`` lists (an independent reader)."""
    import shutil
    if shutil.which("tar") is None:
        pytest.skip("no tar binary")
    src = tmp_path / "src"
    names = ["a.jpg", "a.json", "sub/b.png", "ü ñ/c.webp", "x" * 99 + ".jpg",
             "d/" + "y" * 140 + ".jpg", "e" * 120 + "/f.jpg"]
    if fmt in ("ustar", "v7"):   # ustar: a long path only through its prefix field
        names = names[:4] if fmt == "v7" else names[:4] + names[6:]
    for i, n in enumerate(names):
        (src / n).parent.mkdir(parents=True, exist_ok=True)
        (src / n).write_bytes(bytes([i]) * (700 + i))
    shard = tmp_path / f"{fmt}.tar"
    subprocess.run(["tar", f"--format={fmt}", "-cf", str(shard), "-C", str(src), *names],
                   check=True)
    from quasar.runtime.sources import iter_tar_samples, split_member
    with tarfile.open(shard) as t:
        want = {}
        for m in t.getmembers():
            if m.isfile() and split_member(m.name)[1] in ("jpg", "png", "webp"):
                want[f"{shard}#{split_member(m.name)[0]}"] = t.extractfile(m).read()
    got = {s.id: s.data for s in iter_tar_samples(str(shard)) if s.status == "ok"}
    assert got == want and len(got) == len(names) - 1


SWAP = textwrap.dedent("""
    import os, sys
    import quasar.runtime.images as im
    path = sys.argv[1]
    real = im.check_path

    def check_then_swap(p):            # the race: the file passes the check, then becomes
        st = real(p)                   # a FIFO before it is opened
        os.remove(path)
        os.mkfifo(path)
        return st
    im.check_path = check_then_swap
    try:
        im.open_image(path)
    except Exception as exc:
        print(type(exc).__name__, getattr(exc, "status", ""), exc)
""")


def test_loose_image_swapped_for_a_fifo_after_the_check_never_blocks(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(sh.image_bytes(1))
    proc = subprocess.run([sys.executable, "-c", SWAP, str(p)], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.startswith("NotAFileError not_a_file"), proc.stdout + proc.stderr[-1500:]
    assert "not a regular file any more" in proc.stdout


def test_empty_archive_and_parquet_without_rows_are_rows(tmp_path):
    """Never silently nothing: a valid tar with no sample and a Parquet file with no row."""
    from quasar.runtime.sources import iter_parquet_samples, iter_tar_samples
    empty = sh.write_raw_tar(tmp_path / "empty.tar", [])
    dirs = sh.write_raw_tar(tmp_path / "dirs.tar", [(sh.header("d/", 0, tarfile.DIRTYPE), b"")])
    for t in (empty, dirs):
        got = list(iter_tar_samples(str(t)))
        assert [(s.id, s.status) for s in got] == [(f"{t}#@0", "empty_file")]
        assert "holds no samples" in got[0].error
    f = sh.write_parquet(tmp_path / "none.parquet", {"image": pa.array([], pa.binary())})
    got = list(iter_parquet_samples(str(f)))
    assert [(s.id, s.status) for s in got] == [(f"{f}#@0", "empty_file")]
