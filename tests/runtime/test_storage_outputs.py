"""Outputs on object storage (``--out s3://...``, ``--save-embeddings s3://...``, Ray parts
on S3) against a real S3 server (moto's, on 127.0.0.1) and the real tiny ONNX bundle.

Every remote output is checked against an independent computation: the same inputs scored
into a local ``--out``, by the same command. Cases: the three table formats, embeddings, a
run killed with SIGKILL and resumed (every image once), the lock object (a second run
refused, a stale lock taken over, two runs racing for it), output-is-input for URLs,
resume with another bundle, missing credentials, Ray parts on S3 (equal to a local Ray run;
a deleted and a cut part redone, the others untouched; no half part ever visible)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import rt_helpers
import shard_helpers as sh

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
pytest.importorskip("onnx")

from quasar.cli import run as _cli  # noqa: E402
from quasar.home import quasar_home  # noqa: E402
from quasar.runtime import storage  # noqa: E402

BUCKET = "outs"


def main(argv):
    return _cli(["score", *map(str, argv)])


@pytest.fixture
def s3(monkeypatch):
    with rt_helpers.moto_server() as endpoint, \
            rt_helpers.s3_bucket(monkeypatch, endpoint, BUCKET) as client:
        yield client


def _keys(client, prefix=""):
    out = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in out.get("Contents", []))


def _get(client, key, path: Path) -> Path:
    path.write_bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return rt_helpers.write_tiny_bundle(tmp_path_factory.mktemp("tiny") / "b")


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory):
    sets = {k: v[:, ::-1].copy() for k, v in rt_helpers.tiny_anchor_sets().items()}
    return rt_helpers.write_tiny_bundle(tmp_path_factory.mktemp("other") / "b", anchors=sets)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    for i in range(12):
        (root / f"im{i:02d}.jpg").write_bytes(sh.image_bytes(i))
    (root / "broken.jpg").write_bytes(b"<html>not an image</html>")
    return root


def _staging_empty() -> bool:
    d = quasar_home() / "staging"
    return not d.exists() or not any(d.iterdir())


def _rows(path: Path):
    from quasar.runtime.writers import read_table

    return read_table(str(path))


def _same_rows(remote, local, images):
    def key(r):  # the local and remote runs name the same files
        return r["path"]

    assert [key(r) for r in remote] == [key(r) for r in local]
    assert len({key(r) for r in remote}) == len(remote) == 13
    for a, b in zip(remote, local):
        assert a["status"] == b["status"]
        if b["score_text"] is None:
            assert a["score_text"] is None
        else:
            assert a["score_text"] == pytest.approx(b["score_text"], abs=1e-6)


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_table_and_embeddings_on_s3_equal_local(s3, tiny, images, tmp_path, ext):
    common = [images, "--bundle", tiny, "--quiet", "--batch-size", 4]
    emb = [] if ext == ".jsonl" else ["--save-embeddings", f"s3://{BUCKET}/run/e.npy"]
    assert main(common + ["--out", tmp_path / f"local{ext}",
                          *(["--save-embeddings", tmp_path / "e.npy"] if emb else [])]) == 3
    assert main(common + ["--out", f"s3://{BUCKET}/run/scores{ext}", *emb]) == 3
    want = [f"run/scores{ext}"] + ([] if ext == ".parquet" else [f"run/scores{ext}.run.json"])
    if emb:
        want += ["run/e.npy", "run/e.npy.run.json", "run/e.paths.txt"]
    assert _keys(s3) == sorted(want)      # no journal, no lock, no temp key left
    got = _rows(_get(s3, f"run/scores{ext}", tmp_path / f"remote{ext}"))
    _same_rows(got, _rows(tmp_path / f"local{ext}"), images)
    if ext == ".parquet":
        import pyarrow.parquet as pq

        meta = json.loads(pq.read_schema(tmp_path / f"remote{ext}").metadata[b"quasar.run"])
        assert meta["bundle_sha256"] and meta["model"] == "tiny.test"
    else:
        ident = json.loads(s3.get_object(Bucket=BUCKET, Key=f"run/scores{ext}.run.json")
                           ["Body"].read())
        assert ident["model"] == "tiny.test"
    if emb:
        a = np.load(_get(s3, "run/e.npy", tmp_path / "r.npy"))
        np.testing.assert_allclose(a, np.load(tmp_path / "e.npy"), rtol=1e-6, atol=1e-7)
        paths = s3.get_object(Bucket=BUCKET, Key="run/e.paths.txt")["Body"].read().decode()
        assert paths == (tmp_path / "e.paths.txt").read_text()
    assert _staging_empty()
    # an existing remote output is refused without --resume / --overwrite (exit 2) ...
    assert main(common + ["--out", f"s3://{BUCKET}/run/scores{ext}", *emb]) == 2
    # ... and --overwrite replaces it whole at the end
    assert main(common + ["--out", f"s3://{BUCKET}/run/scores{ext}", *emb, "--overwrite"]) == 3
    assert _keys(s3) == sorted(want)
    _same_rows(_rows(_get(s3, f"run/scores{ext}", tmp_path / f"again{ext}")),
               _rows(tmp_path / f"local{ext}"), images)


def _remote_rows(client, key) -> int:
    try:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return 0
    return body.count(b"\n") - 1


@pytest.mark.parametrize("machine", ["same", "another"])
def test_killed_run_resumes_from_s3(s3, tiny, tmp_path, machine):
    """SIGKILL a run mid-way (checkpoints after every batch here), then ``--resume``: on the
    same machine (its staging copy is reused when the store holds what it last uploaded),
    or on another one (staging removed: the resume starts from what the store holds)."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(150):
        (src / f"{i:03d}.jpg").write_bytes(sh.image_bytes(1000 + i))
    common = [src, "--bundle", tiny, "--quiet", "--batch-size", 1, "--workers", 1,
              "--threads", 1]
    assert main(common + ["--out", tmp_path / "full.csv",
                          "--save-embeddings", tmp_path / "full.npy"]) == 0
    out = f"s3://{BUCKET}/k/scores.csv"
    args = ["score", *map(str, common), "--out", out, "--save-embeddings", f"s3://{BUCKET}/k/e.npy"]
    env = dict(os.environ, QUASAR_CHECKPOINT_S="0")
    proc = subprocess.Popen([sys.executable, "-m", "quasar", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while _remote_rows(s3, "k/scores.csv") < 20 and proc.poll() is None \
                and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    n_before = _remote_rows(s3, "k/scores.csv")
    assert 20 <= n_before < 150
    assert "k/scores.csv.lock" in _keys(s3)        # the killed run's lock is still there
    import shutil

    if machine == "another":
        shutil.rmtree(quasar_home() / "staging")
    # the killed holder's lock blocks until its lease runs out ...
    assert main(common + ["--out", out, "--save-embeddings", f"s3://{BUCKET}/k/e.npy",
                          "--resume"]) == 2
    # ... then it is taken over (its lease made short for the test)
    _age_lock(s3, "k/scores.csv.lock")
    _age_lock(s3, "k/e.npy.lock")
    assert main(common + ["--out", out, "--save-embeddings", f"s3://{BUCKET}/k/e.npy",
                          "--resume"]) == 0
    a = _rows(_get(s3, "k/scores.csv", tmp_path / "r.csv"))
    b = _rows(tmp_path / "full.csv")
    assert sorted(x["path"] for x in a) == sorted(x["path"] for x in b)   # each input once
    by = {x["path"]: x["score_text"] for x in b}
    assert all(x["score_text"] == pytest.approx(by[x["path"]], abs=1e-6) for x in a)
    paths = s3.get_object(Bucket=BUCKET, Key="k/e.paths.txt")["Body"].read().decode().split("\n")[:-1]
    emb = np.load(_get(s3, "k/e.npy", tmp_path / "r.npy"))
    full = dict(zip((tmp_path / "full.paths.txt").read_text().split("\n")[:-1],
                    np.load(tmp_path / "full.npy")))
    assert sorted(paths) == sorted(full) and emb.shape == (150, rt_helpers.TINY_DIM)
    np.testing.assert_allclose(emb, np.stack([full[p] for p in paths]), rtol=1e-6, atol=1e-7)
    assert sorted(_keys(s3, "k/")) == ["k/e.npy", "k/e.npy.run.json", "k/e.paths.txt",
                                       "k/scores.csv", "k/scores.csv.run.json"]
    assert _staging_empty()


def _age_lock(client, key, age=10_000):
    d = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    d["time"] -= age
    client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(d).encode())


def test_lock_object_refuses_second_run_and_stale_lock_is_taken_over(s3, tiny, images,
                                                                     tmp_path, caplog):
    from quasar.errors import OutputLockedError
    from quasar.runtime.remote_out import RemoteLock

    out = f"s3://{BUCKET}/l/scores.csv"
    held = RemoteLock(out + ".lock", out).acquire()    # a run in progress
    try:
        with pytest.raises(OutputLockedError, match=f"process {os.getpid()}"):
            RemoteLock(out + ".lock", out).acquire()
        assert main([images, "--bundle", tiny, "--quiet", "--out", out]) == 2
        assert _keys(s3) == ["l/scores.csv.lock"]      # nothing scored, nothing written
    finally:
        held.release()
    assert _keys(s3) == []
    # a lock left by a killed run (not renewed for longer than its lease) is taken over
    s3.put_object(Bucket=BUCKET, Key="l/scores.csv.lock", Body=json.dumps(
        {"host": "gone", "pid": 4242, "run": "x", "time": time.time() - 3600,
         "lease_s": 120}).encode())
    with caplog.at_level("WARNING", logger="quasar.score"):
        assert main([images, "--bundle", tiny, "--quiet", "--out", out]) == 3
    assert "took over the lock of process 4242 on gone" in caplog.text
    assert _keys(s3) == ["l/scores.csv", "l/scores.csv.run.json"]


def test_two_runs_racing_for_the_lock_one_wins(s3):
    from quasar.errors import OutputLockedError
    from quasar.runtime.remote_out import RemoteLock

    url = f"s3://{BUCKET}/race/x.csv.lock"
    won, lost, go = [], [], threading.Barrier(6)

    def take():
        go.wait()
        try:
            won.append(RemoteLock(url, "x").acquire())
        except OutputLockedError:
            lost.append(1)

    ts = [threading.Thread(target=take) for _ in range(6)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert len(won) == 1 and len(lost) == 5
    won[0].release()


def test_heartbeat_renews_and_a_lost_lock_stops_uploads(s3, monkeypatch):
    from quasar.errors import OutputLockedError
    from quasar.runtime.remote_out import RemoteLock

    monkeypatch.setenv("QUASAR_LOCK_LEASE_S", "0.6")
    url = f"s3://{BUCKET}/hb/x.csv.lock"
    lk = RemoteLock(url, "x").acquire()
    t0 = json.loads(s3.get_object(Bucket=BUCKET, Key="hb/x.csv.lock")["Body"].read())["time"]
    time.sleep(0.7)
    t1 = json.loads(s3.get_object(Bucket=BUCKET, Key="hb/x.csv.lock")["Body"].read())["time"]
    assert t1 > t0                                      # renewed
    s3.put_object(Bucket=BUCKET, Key="hb/x.csv.lock", Body=json.dumps(
        {"host": "h2", "pid": 77, "run": "other", "time": time.time(), "lease_s": 100}).encode())
    time.sleep(0.5)
    with pytest.raises(OutputLockedError, match="taken over by process 77 on h2"):
        lk.check()
    lk.release()                                        # not ours any more: left alone
    assert _keys(s3, "hb/") == ["hb/x.csv.lock"]


def test_output_url_that_is_an_input_is_refused():
    from quasar.errors import OutputIsInputError
    from quasar.runtime.integrity import OutputGuard, check_output_dir

    g = OutputGuard([f"s3://{BUCKET}/d/scores.csv", "gs://b/x/e.npy"])
    for spec in (f"s3://{BUCKET}/d/scores.csv", f"s3://{BUCKET}//d/scores.csv",
                 "gcs://b/x/e.npy", f"@s3://{BUCKET}/d/scores.csv"):
        with pytest.raises(OutputIsInputError):
            g.check_inputs([spec])
    g.check_inputs([f"s3://{BUCKET}/d/other.csv", f"s3://{BUCKET}/d/"])
    assert g.met(f"s3://{BUCKET}/d//scores.csv") == f"s3://{BUCKET}/d/scores.csv"
    assert g.met(f"s3://{BUCKET}/d/a.jpg") is None
    g = OutputGuard([f"s3://{BUCKET}/d/scores.csv"], replaced=[f"s3://{BUCKET}/d/scores.csv"])
    with pytest.raises(OutputIsInputError, match="--overwrite would replace"):
        g.met(f"s3://{BUCKET}/d/scores.csv")
    for spec in (f"s3://{BUCKET}/imgs", f"s3://{BUCKET}/imgs/*.tar", f"s3://{BUCKET}/imgs/out/"):
        with pytest.raises(OutputIsInputError):
            check_output_dir(f"s3://{BUCKET}/imgs/out/", "--out", [spec], [])
    with pytest.raises(OutputIsInputError):
        check_output_dir(f"s3://{BUCKET}/o", "--out", ["x.tar"], [f"s3://{BUCKET}/o/a.tar"])
    check_output_dir(f"s3://{BUCKET}/out", "--out", [f"s3://{BUCKET}/imgs/*.tar"], [])


def test_resume_with_another_bundle_is_refused(s3, tiny, other_bundle, images, tmp_path,
                                               capsys):
    out = f"s3://{BUCKET}/id/scores.jsonl"
    assert main([images, "--bundle", tiny, "--quiet", "--out", out]) == 3
    before = s3.get_object(Bucket=BUCKET, Key="id/scores.jsonl")["Body"].read()
    capsys.readouterr()
    assert main([images, "--bundle", other_bundle, "--quiet", "--out", out, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume {out}" in err and "bundle_sha256" in err
    assert s3.get_object(Bucket=BUCKET, Key="id/scores.jsonl")["Body"].read() == before
    assert _keys(s3, "id/") == ["id/scores.jsonl", "id/scores.jsonl.run.json"]
    # the same bundle resumes: the ok rows kept, the failed input tried again (last)
    assert main([images, "--bundle", tiny, "--quiet", "--out", out, "--resume"]) == 3
    _same_rows(sorted(_rows(_get(s3, "id/scores.jsonl", tmp_path / "r.jsonl")),
                      key=lambda r: r["path"]),
               sorted([json.loads(x) for x in before.decode().splitlines()],
                      key=lambda r: r["path"]), images)


def test_missing_credentials_and_read_only_url(s3, tiny, images, monkeypatch, capsys,
                                               tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    rt_helpers.forget_s3_filesystems()
    capsys.readouterr()
    assert main([images, "--bundle", tiny, "--quiet", "--out",
                 f"s3://{BUCKET}/c/scores.csv"]) == 2
    err = capsys.readouterr().err
    assert "no credentials" in err and "AWS_ACCESS_KEY_ID" in err, err
    assert _keys(s3) == []
    assert main([images, "--bundle", tiny, "--quiet", "--out",
                 "https://example.com/scores.csv"]) == 2
    assert "read-only" in capsys.readouterr().err


# ------------------------------------------------------------------------------- Ray
ray = None


@pytest.fixture(scope="module")
def ray_address():
    global ray
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def test_ray_parts_on_s3_equal_local_and_resume_redoes_only_bad_parts(s3, tiny, ray_address,
                                                                      tmp_path):
    from quasar.runtime.ray.parts import read_parts

    shards, expected = sh.good_shards(tmp_path / "wds", n_shards=4, per_shard=3)
    spec = str(tmp_path / "wds" / "shard-{00000..00003}.tar")
    common = [spec, "--bundle", tiny, "--engine", "ray", "--address", ray_address, "--quiet"]
    assert main(common + ["--out", tmp_path / "local", "--save-embeddings",
                          tmp_path / "local"]) == 0
    out = f"s3://{BUCKET}/ray/scores/"
    seen_keys = set()
    stop = threading.Event()

    def watch():  # every key that ever appears under the prefix must be a complete file
        while not stop.is_set():
            seen_keys.update(_keys(s3, "ray/"))
            time.sleep(0.02)

    w = threading.Thread(target=watch)
    w.start()
    try:
        assert main(common + ["--out", out, "--save-embeddings", out]) == 0
    finally:
        stop.set()
        w.join()
    parts = [f"ray/scores/shard-{i:05d}{x}" for i in range(4)
             for x in (".parquet", ".npy", ".paths.txt")]
    assert seen_keys <= set(parts) | {"ray/scores/_quasar.lock"}   # never a temp key
    assert _keys(s3) == sorted(parts)                               # lock released
    local = read_parts(str(tmp_path / "local"))
    assert [r["path"] for r in local] == list(expected)

    def same_as_local():  # the parts and embeddings on S3 equal the local Ray run's
        remote = read_parts(out)
        assert [r["path"] for r in remote] == list(expected)
        np.testing.assert_allclose([r["score_text"] for r in remote],
                                   [r["score_text"] for r in local], rtol=1e-9)
        for i in range(4):
            a = np.load(_get(s3, f"ray/scores/shard-{i:05d}.npy", tmp_path / "a.npy"))
            np.testing.assert_allclose(a, np.load(tmp_path / "local" / f"shard-{i:05d}.npy"),
                                       rtol=1e-6)

    same_as_local()
    assert _staging_empty()

    def stamps():  # when each key was last written (a redone part is written again)
        return {o["Key"]: o["LastModified"] for o in
                s3.list_objects_v2(Bucket=BUCKET, Prefix="ray/")["Contents"]}

    before = stamps()
    s3.delete_object(Bucket=BUCKET, Key="ray/scores/shard-00001.parquet")
    body = s3.get_object(Bucket=BUCKET, Key="ray/scores/shard-00002.parquet")["Body"].read()
    s3.put_object(Bucket=BUCKET, Key="ray/scores/shard-00002.parquet", Body=body[:-100])
    body = s3.get_object(Bucket=BUCKET, Key="ray/scores/shard-00003.npy")["Body"].read()
    s3.put_object(Bucket=BUCKET, Key="ray/scores/shard-00003.npy", Body=body[:-4])
    time.sleep(1.1)  # S3 times have one-second resolution
    cut = stamps()
    assert main(common + ["--out", out, "--save-embeddings", out]) != 0  # exists: refused
    assert main(common + ["--out", out, "--save-embeddings", out, "--resume"]) == 0
    after = stamps()
    assert sorted(after) == sorted(parts)
    for k in parts:
        if k.startswith("ray/scores/shard-00000"):
            assert after[k] == before[k], k                      # verified, not redone
        else:
            assert after[k] > cut.get(k, before[k]), k           # redone whole
    same_as_local()                                              # every input once


def test_gcs_table_and_lock(tiny, images, tmp_path, monkeypatch):
    """The same on GCS (gcsfs against gcp-storage-emulator): the table equals a local run,
    the lock object is exclusive (``ifGenerationMatch=0``) and removed at the end."""
    from quasar.errors import OutputLockedError
    from quasar.runtime.remote_out import RemoteLock

    with rt_helpers.gcs_emulator(monkeypatch, "outs") as fs:
        out = "gs://outs/g/scores.csv"
        held = RemoteLock(out + ".lock", out).acquire()
        with pytest.raises(OutputLockedError):
            RemoteLock("gcs://outs//g/scores.csv.lock", out).acquire()
        held.release()
        assert main([images, "--bundle", tiny, "--quiet", "--out", tmp_path / "l.csv"]) == 3
        assert main([images, "--bundle", tiny, "--quiet", "--out", out]) == 3
        assert sorted(fs.ls("outs/g", detail=False)) == ["outs/g/scores.csv",
                                                        "outs/g/scores.csv.run.json"]
        (tmp_path / "r.csv").write_bytes(fs.cat_file("outs/g/scores.csv"))
        _same_rows(_rows(tmp_path / "r.csv"), _rows(tmp_path / "l.csv"), images)
