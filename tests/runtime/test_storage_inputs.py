"""Inputs on object storage (issue 19, item 4): ``quasar score s3://...`` with the real
clients (fsspec + s3fs) against a real S3 server (moto's, on 127.0.0.1), no mocks.

Every remote run is compared with the local run of the same bytes (the same tree on local
disk, scored independently): the same rows in the same order, the same statuses, scores
equal to 1e-6, the ids naming the URL instead of the local path. Remote dataset files are
spooled to a local temporary file (runtime/storage.Spooled): the spool folder is empty
after every run, after an exception, and a killed run's leftovers are swept.
"""
from __future__ import annotations

import json
import os
import sys
import tarfile
import time
from pathlib import Path

import pytest

import rt_helpers  # tests/runtime is on pytest's pythonpath (pyproject.toml)
import shard_helpers as sh

from quasar.cli import run as _run
from quasar.runtime import storage

pytest.importorskip("s3fs")
pytest.importorskip("pyarrow")
pytest.importorskip("moto.server")

BUCKET = "data"


def score(argv):
    """``quasar score ARGV`` in this process; returns the exit code."""
    return _run(["score", *argv])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("onnx")
    return rt_helpers.write_tiny_bundle(tmp_path_factory.mktemp("tiny") / "b")


@pytest.fixture(scope="module")
def s3server():
    with rt_helpers.moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3server, monkeypatch, tmp_path):
    """A fresh bucket on the module's moto server, the standard AWS settings pointing at it,
    and a private spool folder."""
    monkeypatch.setenv("QUASAR_SPOOL_DIR", str(tmp_path / "spool"))
    with rt_helpers.s3_bucket(monkeypatch, s3server, BUCKET) as client:
        yield client


def upload(client, root: Path, prefix: str) -> str:
    """Every file under ``root`` to ``s3://BUCKET/prefix/...``; returns that URL."""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{p.relative_to(root).as_posix()}",
                              Body=p.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def rows_of(out: Path):
    return [json.loads(x) for x in out.read_text().splitlines()]


def run_rows(tmp_path, tiny, specs, *extra, code=None, name="out"):
    out = tmp_path / f"{name}.jsonl"
    got = score([*map(str, specs), "--bundle", str(tiny), "-a", "all", "--out", str(out),
                 "--quiet", "--overwrite", *extra])
    if code is not None:
        assert got == code
    return rows_of(out)


def assert_same(remote, local, local_root: Path, url: str):
    """The remote run's rows are the local run's with the URL in place of the local root."""
    root = str(local_root)
    assert [r["path"] for r in remote] == [r["path"].replace(root, url) for r in local]
    for a, b in zip(remote, local):
        assert a["status"] == b["status"], (a, b)
        for k in ("score_text", "score_kadis"):
            if b["status"] == "ok":
                assert a[k] == pytest.approx(b[k], abs=1e-6)
            else:
                assert a[k] is None
        if a["status"] == "not_found":  # "no such object; check the URL" vs "... file ..."
            assert "no such object" in a["error"] and a["path"].split("#")[0] in a["error"]
        else:  # the same message, naming the URL
            assert (a["error"] or "") == (b["error"] or "").replace(root, url)


def spool_files(tmp_path):
    d = tmp_path / "spool"
    return sorted(os.listdir(d)) if d.exists() else []


def write_tree(root: Path):
    """Three good shards, a folder of loose images (with a hidden file, a hidden folder, a
    text file and a sub-folder: the walk rules) and a broken image."""
    sh.good_shards(root / "wds", n_shards=3, per_shard=4)
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / ".hidden").mkdir()
    (photos / "a.jpg").write_bytes(sh.image_bytes(1))
    (photos / "B.PNG").write_bytes(sh.image_bytes(2, "PNG"))
    (photos / "a-b.jpg").write_bytes(sh.image_bytes(3))
    (photos / "sub" / "c.jpg").write_bytes(sh.image_bytes(4))
    (photos / ".x.jpg").write_bytes(sh.image_bytes(5))
    (photos / ".hidden" / "d.jpg").write_bytes(sh.image_bytes(6))
    (photos / "notes.txt").write_text("not an input")
    (photos / "broken.jpg").write_bytes(b"<html>not an image</html>")
    return root


# ------------------------------------------------------------------ shards, globs, folders
def test_braces_glob_folder_and_lists_equal_the_local_run(tmp_path, tiny, s3):
    local = write_tree(tmp_path / "tree")
    url = upload(s3, local, "t1")
    want = run_rows(tmp_path, tiny, [local / "wds" / "shard-{00000..00002}.tar",
                                     local / "photos"], name="local", code=3)
    assert len(want) == 3 * 4 + 5 and sum(r["status"] != "ok" for r in want) == 1

    got = run_rows(tmp_path, tiny, [f"{url}/wds/shard-{{00000..00002}}.tar", f"{url}/photos/"],
                   code=3)
    assert_same(got, want, local, url)
    assert got[0]["path"] == f"{url}/wds/shard-00000.tar#000000"
    assert spool_files(tmp_path) == []                      # every spool file deleted

    # a glob, and a prefix given without the trailing slash
    got = run_rows(tmp_path, tiny, [f"{url}/wds/*.tar", f"{url}/photos"], code=3)
    assert_same(got, want, local, url)

    # @list on S3 and a local @list, both holding URLs (taken literally, one per line)
    lines = [f"{url}/wds/shard-{i:05d}.tar" for i in range(3)] + \
        [r["path"].replace(str(local), url) for r in want[12:]]
    body = ("# inputs\n\n" + "\n".join(lines)).encode()
    s3.put_object(Bucket=BUCKET, Key="lists/l.txt", Body=body)
    got = run_rows(tmp_path, tiny, [f"@s3://{BUCKET}/lists/l.txt"], code=3)
    assert_same(got, want, local, url)
    (tmp_path / "l.txt").write_text("\n".join(lines) + "\n")
    got = run_rows(tmp_path, tiny, [f"@{tmp_path / 'l.txt'}"], code=3)
    assert_same(got, want, local, url)
    assert spool_files(tmp_path) == []


def test_rerun_sees_new_objects(tmp_path, tiny, s3):
    """fsspec caches listings per process: a run starts from a fresh listing."""
    s3.put_object(Bucket=BUCKET, Key="new/a.jpg", Body=sh.image_bytes(1))
    assert len(run_rows(tmp_path, tiny, [f"s3://{BUCKET}/new/"], code=0)) == 1
    s3.put_object(Bucket=BUCKET, Key="new/b.jpg", Body=sh.image_bytes(2))
    assert len(run_rows(tmp_path, tiny, [f"s3://{BUCKET}/new/"], code=0)) == 2


# ------------------------------------------------------------------ Parquet
def test_parquet_bytes_column_and_relative_path_column(tmp_path, tiny, s3):
    local = tmp_path / "pq"
    blobs = [sh.image_bytes(20 + i) for i in range(4)] + [b"garbage"]
    sh.write_parquet(local / "d" / "bytes.parquet",
                     {"jpg": blobs, "uid": [f"u{i}" for i in range(5)]})
    (local / "d" / "img").mkdir(parents=True)
    (local / "other").mkdir()
    (local / "d" / "img" / "a.jpg").write_bytes(sh.image_bytes(30))
    (local / "other" / "b.png").write_bytes(sh.image_bytes(31, "PNG"))
    url = f"s3://{BUCKET}/t2"
    # relative paths (to the Parquet file's folder), one going up, one missing
    rel = ["img/a.jpg", "../other/b.png", "img/missing.jpg", "./img/a.jpg"]
    sh.write_parquet(local / "d" / "paths.parquet", {"image": rel})
    upload(s3, local, "t2")

    # (--id-column applies to every Parquet input of a run: one run per file)
    want = run_rows(tmp_path, tiny, [local / "d" / "bytes.parquet"], "--id-column", "uid",
                    name="local", code=3)
    got = run_rows(tmp_path, tiny, [f"{url}/d/bytes.parquet"], "--id-column", "uid", code=3)
    assert_same(got, want, local, url)
    assert [r["status"] for r in got] == ["ok"] * 4 + ["not_an_image"]

    want = run_rows(tmp_path, tiny, [local / "d" / "paths.parquet"], name="local2", code=3)
    got = run_rows(tmp_path, tiny, [f"{url}/d/paths.parquet"], code=3)
    assert [r["status"] for r in got] == ["ok", "ok", "not_found", "ok"]
    assert_same(got, want, local, url)
    # the missing object's row names the URL it was resolved to
    assert f"{url}/d/img/missing.jpg" in got[2]["error"]

    # absolute URLs in a path column (of a local file) are taken as they are
    sh.write_parquet(tmp_path / "abs.parquet",
                     {"image": [f"{url}/d/img/a.jpg", f"{url}/other/b.png"]})
    got = run_rows(tmp_path, tiny, [tmp_path / "abs.parquet"], code=0)
    assert [r["score_text"] for r in got] == pytest.approx(
        [want[0]["score_text"], want[1]["score_text"]], abs=1e-6)
    assert spool_files(tmp_path) == []


# ------------------------------------------------------------------ failures are rows
def test_missing_objects_hostile_shard_and_caps_are_rows(tmp_path, tiny, s3, monkeypatch):
    local = tmp_path / "h"
    good = sh.image_bytes(7)
    sh.write_tar(local / "ok.tar", [("a.jpg", good), ("b.jpg", sh.image_bytes(8))])
    # a header bomb: a GNU long-name header declaring 2 MiB (over the 1 MiB cap), then members
    sh.write_raw_tar(local / "bomb.tar", [
        sh.member("a.jpg", good),
        (sh.header("././@LongLink", 2 << 20, tarfile.GNUTYPE_LONGNAME), b"x" * (2 << 20)),
        sh.member("b.jpg", good), sh.member("c.jpg", sh.image_bytes(9))])
    # a corrupt header in the middle, and a truncated shard
    raw = sh.write_tar(local / "tmp.tar", [("a.jpg", good), ("b.jpg", good)]).read_bytes()
    off = sh.member_offsets(local / "tmp.tar")
    at = off["b.jpg"][0]
    (local / "corrupt.tar").write_bytes(raw[:at] + b"\xff" * 512 + raw[at + 512:])
    (local / "cut.tar").write_bytes(raw[:off["b.jpg"][1] + 10])
    (local / "tmp.tar").unlink()
    (local / "x.jpg").write_bytes(good)
    url = upload(s3, local, "t3")
    names = ["ok.tar", "bomb.tar", "corrupt.tar", "cut.tar", "x.jpg", "nope.jpg", "nope.tar"]
    want = run_rows(tmp_path, tiny, [local / n for n in names], name="local", code=3)
    got = run_rows(tmp_path, tiny, [f"{url}/{n}" for n in names], code=3)
    assert_same(got, want, local, url)
    by = {r["path"]: r for r in got}
    assert by[f"{url}/nope.jpg"]["status"] == "not_found"
    assert by[f"{url}/nope.tar#@0"]["status"] == "not_found"
    assert by[f"{url}/bomb.tar#c"]["status"] == "ok"
    assert [r["status"] for r in got if r["path"].startswith(f"{url}/bomb.tar")] == \
        ["ok", "too_large", "ok", "ok"]
    assert spool_files(tmp_path) == []

    # a remote dataset file over the spool cap: a row, never downloaded; the run goes on
    size = (local / "ok.tar").stat().st_size
    monkeypatch.setenv("QUASAR_SPOOL_MAX_BYTES", str(size - 1))
    got = run_rows(tmp_path, tiny, [f"{url}/ok.tar", f"{url}/x.jpg"], code=3)
    assert [r["status"] for r in got] == ["too_large", "ok"]
    assert f"{size:,} bytes" in got[0]["error"] and "QUASAR_SPOOL_MAX_BYTES" in got[0]["error"]
    # a loose image over the one-image cap: a row, never read
    from quasar.runtime import sources

    monkeypatch.delenv("QUASAR_SPOOL_MAX_BYTES")
    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", len(good) - 1)
    got = run_rows(tmp_path, tiny, [f"{url}/x.jpg"], code=3)
    assert got[0]["status"] == "too_large" and got[0]["path"] == f"{url}/x.jpg"
    assert spool_files(tmp_path) == []


def test_missing_credentials_are_a_clear_row_error(tmp_path, tiny, s3, monkeypatch):
    s3.put_object(Bucket=BUCKET, Key="c/a.jpg", Body=sh.image_bytes(1))
    s3.put_object(Bucket=BUCKET, Key="c/s.tar", Body=sh.write_tar(
        tmp_path / "s.tar", [("a.jpg", sh.image_bytes(1))]).read_bytes())
    for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(v)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage.reset_filesystems()
    from moto.core.authorization import enable_iam_authentication

    with enable_iam_authentication():  # moto checks every request as AWS would (403)
        got = run_rows(tmp_path, tiny, [f"s3://{BUCKET}/c/a.jpg", f"s3://{BUCKET}/c/s.tar",
                                        f"s3://{BUCKET}/c/"], code=3)
    assert [r["path"] for r in got] == [f"s3://{BUCKET}/c/a.jpg", f"s3://{BUCKET}/c/s.tar#@0",
                                        f"s3://{BUCKET}/c/"]
    assert [r["status"] for r in got] == ["permission_denied", "permission_denied",
                                          "unlistable_dir"]
    for r in got:
        assert "AWS_ACCESS_KEY_ID" in r["error"] and "credentials" in r["error"], r
    # wrong credentials: the store answers 403 (InvalidAccessKeyId), the same rows
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    storage.reset_filesystems()
    with enable_iam_authentication():
        got = run_rows(tmp_path, tiny, [f"s3://{BUCKET}/c/a.jpg", f"s3://{BUCKET}/c/s.tar"],
                       code=3)
    assert [r["status"] for r in got] == ["permission_denied", "permission_denied"]
    assert all("AWS_ACCESS_KEY_ID" in r["error"] for r in got)


def test_missing_client_fails_once_before_any_work(tmp_path, tiny, s3, monkeypatch, capsys):
    import fsspec.registry

    registry = sys.modules["fsspec.registry"]._registry  # (fsspec.registry is a read-only view)
    monkeypatch.setitem(sys.modules, "s3fs", None)   # as if s3fs were not installed
    monkeypatch.delitem(registry, "s3", raising=False)  # fsspec keeps the imported class
    storage.reset_filesystems()
    out = tmp_path / "o.jsonl"
    code = score([f"s3://{BUCKET}/a/*.tar", f"@s3://{BUCKET}/l.txt", "--bundle", str(tiny),
                  "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and not out.exists()
    assert err.count("error:") == 1 and 'pip install "quasar-iqa[s3]"' in err, err


# ------------------------------------------------------------------ spooling
def test_spool_is_deleted_on_exceptions_and_leftovers_are_swept(tmp_path, s3):
    from quasar.runtime.sources import SourceOptions, iter_items

    shards, _ = sh.good_shards(tmp_path / "wds", n_shards=3, per_shard=4)
    url = upload(s3, tmp_path / "wds", "sp")
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "999999999-dead-x.tar").write_bytes(b"left by a killed run")
    (spool / f"{os.getpid()}-mine.tar").write_bytes(b"this process's own")
    storage._swept.discard(str(spool))

    it = iter_items(iter([f"{url}/shard-{i:05d}.tar" for i in range(3)]), SourceOptions())
    first = next(it)
    assert first.id == f"{url}/shard-00000.tar#000000" and first.status == "ok"
    names = spool_files(tmp_path)
    assert "999999999-dead-x.tar" not in names            # a dead process's file: swept
    assert f"{os.getpid()}-mine.tar" in names
    with pytest.raises(RuntimeError):
        it.throw(RuntimeError("the engine failed"))
    assert spool_files(tmp_path) == [f"{os.getpid()}-mine.tar"]

    it = iter_items(iter([f"{url}/shard-{i:05d}.tar" for i in range(3)]), SourceOptions())
    next(it)
    with pytest.raises(KeyboardInterrupt):
        it.throw(KeyboardInterrupt())
    assert spool_files(tmp_path) == [f"{os.getpid()}-mine.tar"]


def test_next_shard_downloads_while_this_one_is_read(tmp_path, s3):
    """Prefetch: while shard i is read, shard i+1 is already on local disk (never more
    than two spool files), and reading it then needs no wait."""
    from quasar.runtime.sources import SourceOptions, iter_items

    sh.good_shards(tmp_path / "wds", n_shards=4, per_shard=3)
    url = upload(s3, tmp_path / "wds", "pf")
    most, both = 0, 0
    seen = set()
    for s in iter_items(iter([f"{url}/shard-{i:05d}.tar" for i in range(4)]), SourceOptions()):
        shard = s.id.split("#")[0]
        if shard not in seen:
            seen.add(shard)
            time.sleep(0.3)  # "scoring" the first sample: the next shard downloads meanwhile
        files = spool_files(tmp_path)
        most = max(most, len(files))
        both += len(files) == 2 and os.path.getsize(tmp_path / "spool" / files[-1]) > 0
    assert most <= 2 and both >= 3
    assert spool_files(tmp_path) == []


# ------------------------------------------------------------------ Ray
def test_ray_reads_s3_inputs_into_a_local_out(tmp_path, tiny, s3, s3server):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    import pyarrow.parquet as pq

    local = tmp_path / "r"
    sh.good_shards(local / "wds", n_shards=2, per_shard=3)
    sh.write_parquet(local / "p.parquet", {"jpg": [sh.image_bytes(40 + i) for i in range(3)]})
    (local / "loose").mkdir()
    for i in range(2):  # loose images at URLs: read by the actor's decode threads
        (local / "loose" / f"l{i}.jpg").write_bytes(sh.image_bytes(60 + i))
    url = upload(s3, local, "ray")
    want = run_rows(tmp_path, tiny, [local / "wds" / "shard-{00000..00001}.tar",
                                     local / "p.parquet", local / "loose" / "l0.jpg",
                                     local / "loose" / "l1.jpg"], name="local", code=0)
    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                      "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                      "QUASAR_SPOOL_DIR")}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": env})
    try:
        out = tmp_path / "parts"
        code = score([f"{url}/wds/shard-{{00000..00001}}.tar", f"{url}/p.parquet",
                      f"{url}/loose/l0.jpg", f"{url}/loose/l1.jpg", "--bundle", str(tiny), "-a", "all", "--out", str(out), "--engine", "ray",
                      "--quiet"])
    finally:
        ray.shutdown()
    assert code == 0
    got = {}
    for p in sorted(out.glob("*.parquet")):
        for r in pq.read_table(p).to_pylist():
            got[r["path"]] = r
    assert sorted(got) == sorted(r["path"].replace(str(local), url) for r in want)
    for r in want:
        g = got[r["path"].replace(str(local), url)]
        assert g["status"] == r["status"] == "ok"
        assert g["score_text"] == pytest.approx(r["score_text"], abs=1e-6)
    assert spool_files(tmp_path) == []


# ------------------------------------------------------------------ gs://
def test_gs_shards_folder_and_glob_equal_the_local_run(tmp_path, tiny, monkeypatch):
    """gcsfs against gcp-storage-emulator (STORAGE_EMULATOR_HOST, gcsfs's own setting)."""
    monkeypatch.setenv("QUASAR_SPOOL_DIR", str(tmp_path / "spool"))
    local = write_tree(tmp_path / "tree")
    want = run_rows(tmp_path, tiny, [local / "wds" / "shard-{00000..00002}.tar",
                                     local / "photos"], name="local", code=3)
    with rt_helpers.gcs_emulator(monkeypatch, "data") as fs:
        for p in sorted(local.rglob("*")):
            if p.is_file():
                fs.pipe(f"data/g/{p.relative_to(local).as_posix()}", p.read_bytes())
        url = "gs://data/g"
        got = run_rows(tmp_path, tiny, [f"{url}/wds/shard-{{00000..00002}}.tar",
                                        f"{url}/photos/"], code=3)
        assert_same(got, want, local, url)
        got = run_rows(tmp_path, tiny, [f"{url}/wds/*.tar", f"{url}/photos"], code=3)
        assert_same(got, want, local, url)
    assert spool_files(tmp_path) == []


def test_network_failure_is_a_row_and_the_run_goes_on(tmp_path, tiny, s3, monkeypatch):
    import socket

    s3.put_object(Bucket=BUCKET, Key="n/a.jpg", Body=sh.image_bytes(1))
    (tmp_path / "b.jpg").write_bytes(sh.image_bytes(2))
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    storage.reset_filesystems()
    t0 = time.perf_counter()
    got = run_rows(tmp_path, tiny, [f"s3://{BUCKET}/n/a.jpg", f"s3://{BUCKET}/n/s.tar",
                                    tmp_path / "b.jpg"], code=3)
    assert [r["status"] for r in got] == ["read_error", "read_error", "ok"]
    assert "AWS_ENDPOINT_URL" in got[0]["error"] and "HTTPS_PROXY" in got[1]["error"]
    assert time.perf_counter() - t0 < 60
    assert spool_files(tmp_path) == []
