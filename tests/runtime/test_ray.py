"""``quasar score --engine ray`` and ``score_dataset`` on a real local Ray instance
(``ray.init(num_cpus=2)``, started and stopped by this module): scores equal the local
engine's and a direct Scorer computation on loose files, tar shards and Parquet; hostile
members become the same error rows; a driver killed mid-run and rerun gives every input
exactly once; finished parts are never recomputed."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import rt_helpers  # noqa: E402
import shard_helpers as sh  # noqa: E402

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pq = pytest.importorskip("pyarrow.parquet")

from quasar.cli import run as _run  # noqa: E402


class cli:  # `quasar score` on command-line tokens
    @staticmethod
    def main(argv):
        return _run(["score", *argv])
from quasar.runtime import ray as qray  # noqa: E402


@pytest.fixture(scope="module")
def ray_address():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("onnx")
    return rt_helpers.write_tiny_bundle(tmp_path_factory.mktemp("tiny") / "b")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Loose files (with hostile ones), two good shards, a hostile shard, a Parquet file."""
    root = tmp_path_factory.mktemp("raydata")
    shards, expected = sh.good_shards(root / "wds", n_shards=2, per_shard=4)
    good = sh.image_bytes(9)
    hostile = sh.write_tar(root / "wds" / "hostile.tar", [
        ("a.jpg", good), ("b.jpg", b"<html>not an image</html>"),
        ("c.jpg", good[: len(good) // 2]), ("d.json", b"{}"), ("e.jpg", good)])
    off = sh.member_offsets(hostile)
    hostile.write_bytes(hostile.read_bytes()[: off["e.jpg"][1] + 10])   # truncated tar
    blobs = [sh.image_bytes(60 + i) for i in range(5)]
    pqf = sh.write_parquet(root / "pq" / "table.parquet",
                           {"jpg": blobs + [b"garbage"], "uid": [f"u{i}" for i in range(6)]})
    loose = root / "loose"
    loose.mkdir()
    for i in range(5):
        (loose / f"im{i}.jpg").write_bytes(sh.image_bytes(80 + i))
    (loose / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    (loose / "empty.jpg").write_bytes(b"")
    specs = [str(root / "wds" / "shard-{00000..00001}.tar"), str(hostile), str(pqf), str(loose)]
    return {"root": root, "specs": specs, "expected": expected, "blobs": blobs, "pq": pqf,
            "loose": loose, "hostile": hostile}


def _local_rows(tmp_path, specs, bundle, extra=()):
    out = tmp_path / "local.csv"
    cli.main(list(specs) + ["--bundle", str(bundle), "-a", "all", "--out", str(out), "--quiet",
                            "--overwrite", *extra])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("score_text", "score_kadis"):
            r[k] = float(r[k]) if r[k] else None
    return rows


def _part_rows(out_dir):
    rows = []
    for p in sorted(Path(out_dir).glob("*.parquet")):
        rows += pq.read_table(p).to_pylist()
    return rows


def test_ray_equals_local_engine_and_scorer(tmp_path, ray_address, tiny, data):
    from quasar.runtime.scorer import Scorer

    out = tmp_path / "parts"
    extra = ["--image-column", "jpg", "--id-column", "uid"]
    code = cli.main(data["specs"] + ["--bundle", str(tiny), "-a", "all", "--out", str(out),
                                     "--engine", "ray", "--quiet", "--batch-size", "3",
                                     "--files-per-part", "4", *extra])
    assert code == 3  # hostile inputs failed
    parts = sorted(p.name for p in out.iterdir())
    assert parts == ["files-000000.parquet", "files-000001.parquet", "hostile.parquet",
                     "shard-00000.parquet", "shard-00001.parquet", "table.parquet"]
    got = _part_rows(out)
    local = _local_rows(tmp_path, data["specs"], tiny, extra)
    assert sorted(r["path"] for r in got) == sorted(r["path"] for r in local)
    assert len({r["path"] for r in got}) == len(got)          # each input exactly once
    by = {r["path"]: r for r in got}
    for r in local:                                            # same rows as the local engine
        g = by[r["path"]]
        assert (g["status"], g["error"]) == (r["status"], r["error"]), r["path"]
        for k in ("score_text", "score_kadis"):
            if r[k] is None:
                assert g[k] is None
            else:
                assert g[k] == pytest.approx(r[k], rel=1e-9, abs=0)
    # ... and equal to a direct Scorer computation on the bytes
    s = Scorer.from_bundle(tiny, anchors="all")
    ids = list(data["expected"]) + [f"{data['pq']}#u{i}" for i in range(5)]
    ref = s.score_all(list(data["expected"].values()) + data["blobs"])
    np.testing.assert_allclose([by[i]["score_kadis"] for i in ids], ref["kadis"], rtol=1e-9)
    h = str(data["hostile"])
    statuses = {k: by[f"{h}#{k}"]["status"] for k in "abcde"}
    assert statuses == {"a": "ok", "b": "not_an_image", "c": "truncated", "d": "not_found",
                        "e": "truncated"}
    assert by[f"{data['pq']}#u5"]["status"] == "not_an_image"
    assert by[str(data["loose"] / "empty.jpg")]["status"] == "empty_file"
    # rows of a part are in shard order; the run identity is in every part
    assert [r["path"] for r in pq.read_table(out / "shard-00000.parquet").to_pylist()] == \
        [i for i in data["expected"] if "shard-00000" in i]
    for p in out.iterdir():
        meta = json.loads(pq.read_schema(p).metadata[b"quasar.run"])
        assert meta["model"] == "tiny.test" and meta["anchors"] == ["text", "kadis"]
        assert meta["resolution"] == "224" and meta["precision"] == "fp32"
        assert len(meta["bundle_sha256"]) == 64 and meta["quasar_version"]
        assert meta["part"] == p.stem


def test_rerun_needs_resume_and_same_settings(tmp_path, ray_address, tiny, data):
    out = tmp_path / "parts"
    base = [data["specs"][0], "--bundle", str(tiny), "--out", str(out), "--engine", "ray",
            "--quiet"]
    assert cli.main(base) == 0
    assert cli.main(base) == 2                                    # exists: --resume/--overwrite
    assert cli.main(base + ["--resume", "-a", "all"]) == 2        # other anchor sets: refused
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert cli.main(base + ["--resume"]) == 0                     # nothing left to do
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.torch
def test_ray_vitb32_equals_scorer(tmp_path, ray_address, vitb32_bundle):
    from quasar.runtime.scorer import Scorer

    shards, expected = sh.good_shards(tmp_path / "wds", n_shards=1, per_shard=5)
    out = tmp_path / "parts"
    assert cli.main([str(shards[0]), "--bundle", str(vitb32_bundle), "--out", str(out),
                     "--engine", "ray", "--quiet", "--batch-size", "2"]) == 0
    rows = _part_rows(out)
    assert [r["path"] for r in rows] == list(expected)
    ref = Scorer.from_bundle(vitb32_bundle).score(list(expected.values()))
    np.testing.assert_allclose([r["score_text"] for r in rows], ref, rtol=1e-6)
    assert np.ptp(ref) > 1e-4  # a random ViT-B-32 separates images


def _slow_run(tmp_path, ray_address, tiny, part_delay):
    """A `quasar score --engine ray` subprocess on 6 shards of 3 samples that waits
    ``part_delay`` s after writing each part: (process, out dir, args, expected ids)."""
    shards, expected = sh.good_shards(tmp_path / "wds", n_shards=6, per_shard=3)
    out = tmp_path / "parts"
    args = [str(tmp_path / "wds" / "shard-{00000..00005}.tar"), "--bundle", str(tiny),
            "--out", str(out), "--engine", "ray", "--address", ray_address, "--quiet"]
    env = dict(os.environ, QUASAR_RAY_PART_DELAY=str(part_delay))
    proc = subprocess.Popen([sys.executable, "-m", "quasar", "score", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, out, args, expected


def test_killed_driver_rerun_gives_each_input_once(tmp_path, ray_address, tiny):
    proc, out, args, expected = _slow_run(tmp_path, ray_address, tiny, 4)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if any(out.glob("*.parquet")):
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.parquet")}
    assert 1 <= len(first) < 6
    # an unfinished part of the killed run (what a kill during a write leaves)
    stale = out / ".shard-00005.parquet.99999-0a1b2c3d.tmp"
    stale.write_bytes(b"half a parquet file")

    assert cli.main(args + ["--resume"]) == 0
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.parquet")}
    assert sorted(after) == [f"shard-{i:05d}.parquet" for i in range(6)]
    assert all(after[n] == first[n] for n in first)              # finished parts not recomputed
    assert not stale.exists()
    ids = Counter(r["path"] for r in _part_rows(out))
    assert ids == Counter(list(expected))                         # every input exactly once
    assert all(r["status"] == "ok" for r in _part_rows(out))


def test_score_dataset_api(ray_address, tiny, data):
    from quasar.runtime.scorer import Scorer

    blobs = data["blobs"] + [b"not an image"]
    ds = ray.data.from_items([{"bytes": b, "path": f"mem/{i}.jpg"} for i, b in enumerate(blobs)])
    rows = sorted(qray.score_dataset(ds, str(tiny), anchors="all", batch_size=2).take_all(),
                  key=lambda r: r["path"])
    ref = Scorer.from_bundle(tiny, anchors="all").score_all(blobs, errors="collect")
    assert [r["path"] for r in rows] == [f"mem/{i}.jpg" for i in range(len(blobs))]
    np.testing.assert_allclose([r["score_text"] for r in rows[:-1]], ref.values["text"][:-1],
                               rtol=1e-9)
    assert rows[-1]["status"] == "not_an_image" and rows[-1]["score_text"] is None
    assert rows[-1]["error"].startswith("mem/5.jpg: not an image")
    assert rows[0]["bytes"] == blobs[0]                          # input columns kept
    # embeddings=True: a fixed-size float32 list per ok row, null for a failed one
    rows = sorted(qray.score_dataset(ds, str(tiny), batch_size=2, embeddings=True).take_all(),
                  key=lambda r: r["path"])
    want = Scorer.from_bundle(tiny).embed(blobs[:-1])
    np.testing.assert_allclose(np.stack([r["embedding"] for r in rows[:-1]]), want, rtol=1e-6)
    assert rows[-1]["embedding"] is None and rows[-1]["status"] == "not_an_image"
    # a dataset of paths
    paths = sorted(str(p) for p in data["loose"].glob("im*.jpg"))
    rows = sorted(qray.score_dataset(ray.data.from_items([{"path": p} for p in paths]),
                                     str(tiny)).take_all(), key=lambda r: r["path"])
    np.testing.assert_allclose([r["score_text"] for r in rows],
                               Scorer.from_bundle(tiny).score(paths), rtol=1e-9)


def test_ray_usage_errors(tmp_path, tiny, data, capsys):
    base = [data["specs"][0], "--bundle", str(tiny), "--engine", "ray", "--quiet"]
    assert cli.main(base) == 2                                          # no --out
    assert "give --out DIR" in capsys.readouterr().err
    f = tmp_path / "file.csv"
    f.write_text("x")
    assert cli.main(base + ["--out", str(f)]) == 2                      # --out is a file
    assert cli.main(base + ["--out", str(tmp_path / "d"), "--device", "cuda"]) == 2
    assert "--gpus-per-worker" in capsys.readouterr().err
    assert cli.main(base + ["--out", str(tmp_path / "d"), "--decode-cpus", "0"]) == 2
    capsys.readouterr()
    assert cli.main([str(data["pq"]), "--bundle", str(tiny), "--engine", "ray", "--quiet",
                     "--out", str(tmp_path / "d2"), "--image-column", "nope"]) == 2
    assert "no column 'nope'" in capsys.readouterr().err      # checked before Ray starts
    loose = data["loose"]
    assert cli.main([str(loose), "--bundle", str(tiny), "--engine", "ray", "--quiet",
                     "--out", str(loose / "scores")]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert not (loose / "scores").exists()
    assert cli.main(base + ["--out", str(tmp_path / "d3"), "--save-embeddings",
                            str(tmp_path / "e.npy")]) == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.gpu
def test_ray_on_cuda_equals_cpu(tmp_path, ray_address, tiny, data):
    if not ray.cluster_resources().get("GPU"):
        pytest.skip("the local Ray instance sees no GPU")
    args = [data["specs"][0], "--bundle", str(tiny), "--engine", "ray", "--quiet", "-a", "all"]
    assert cli.main(args + ["--out", str(tmp_path / "cpu")]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "gpu"), "--gpus-per-worker", "1"]) == 0
    cpu, gpu = _part_rows(tmp_path / "cpu"), _part_rows(tmp_path / "gpu")
    assert [r["path"] for r in cpu] == [r["path"] for r in gpu]
    np.testing.assert_allclose([r["score_text"] for r in gpu], [r["score_text"] for r in cpu],
                               rtol=1e-4)


def _cells(rows):
    return [(r["path"], r["status"], r["error"], r.get("score_text")) for r in rows]


def test_parts_share_one_engine_stream_and_split_exactly(tmp_path, tiny, data):
    """score_parts runs several parts (empty and hostile ones included) through one engine
    stream and splits the rows back: each part's rows equal scoring that part on its own."""
    from quasar.runtime.pipeline import PipelineConfig, run_pipeline
    from quasar.runtime.scorer import Scorer
    from quasar.runtime.sources import SourceOptions

    s = Scorer.from_bundle(tiny)
    src = SourceOptions()
    loose = sorted(str(p) for p in data["loose"].iterdir())
    parts = [{"part": "a", "kind": "files", "shard": "", "paths": loose[:3]},
             {"part": "empty", "kind": "files", "shard": "", "paths": []},
             {"part": "h", "kind": "webdataset", "shard": str(data["hostile"]), "paths": []},
             {"part": "b", "kind": "files", "shard": "", "paths": loose[3:]},
             {"part": "empty2", "kind": "files", "shard": "", "paths": []}]
    got = list(qray.score_parts(s, parts, src, batch_size=2, workers=2, variable_shapes=False,
                                embeddings=True))
    assert [d["part"] for d, _, _ in got] == ["a", "empty", "h", "b", "empty2"]
    for d, rows, embs in got:
        alone, emb = [], []  # the part scored on its own by the local pipeline
        run_pipeline(s, qray._part_items(d, src),
                     lambda r, e: (alone.extend(r), emb.extend(e)),
                     PipelineConfig(batch_size=2, workers=2))
        assert [(r.path, r.status, r.error) for r in rows] == \
            [(r.path, r.status, r.error) for r in alone]
        np.testing.assert_allclose([r.scores["text"] for r in rows],
                                   [r.scores["text"] for r in alone], rtol=1e-9)
        ok = [e for e in embs if e is not None]
        assert len(ok) == len(emb) == sum(r.status == "ok" for r in rows)
        if ok:
            np.testing.assert_allclose(np.stack(ok), emb, rtol=1e-6)


def test_save_embeddings_per_part_and_resume(tmp_path, ray_address, tiny, data):
    from quasar.runtime.images import ImageLoader
    from quasar.bundle import load_bundle

    specs = data["specs"][:2] + [str(data["loose"])]
    out, emb = tmp_path / "parts", tmp_path / "emb"
    base = specs + ["--bundle", str(tiny), "--out", str(out), "--engine", "ray", "--quiet",
                    "--files-per-part", "4"]
    assert cli.main(base) == 3                                  # scores only, first
    assert not emb.exists()
    assert cli.main(base + ["--resume", "--save-embeddings", str(emb)]) == 3  # all redone
    local_npy = tmp_path / "local.npy"
    _local_rows(tmp_path, specs, tiny, ["--save-embeddings", str(local_npy)])
    local = dict(zip((tmp_path / "local.paths.txt").read_text().splitlines(),
                     np.load(local_npy)))
    got = {}
    for part in sorted(out.glob("*.parquet")):
        rows = pq.read_table(part).to_pylist()
        names = (emb / (part.stem + ".paths.txt")).read_text().splitlines()
        arr = np.load(emb / (part.stem + ".npy"))
        assert arr.dtype == np.float32 and arr.shape == (len(names), 8)
        assert names == [r["path"] for r in rows if r["status"] == "ok"]
        got.update(zip(names, arr))
    assert sorted(got) == sorted(local) and len(got) == 8 + 1 + 5  # ok rows only
    for k in local:
        np.testing.assert_allclose(got[k], local[k], rtol=1e-6)
    # independent: the tiny encoder re-computed in numpy on the loader's pixels
    b = load_bundle(tiny)
    loader = ImageLoader(b.preprocess("224"))
    for k, blob in data["expected"].items():
        ref = rt_helpers.tiny_reference_embedding(loader(blob)[None])[0]
        np.testing.assert_allclose(got[k], ref, rtol=1e-4, atol=1e-5)
    # a part whose embeddings went missing is redone (alone) on --resume
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    (emb / "shard-00001.npy").unlink()
    assert cli.main(base + ["--resume", "--save-embeddings", str(emb)]) == 0  # its rows: ok
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    assert [n for n in before if before[n] != after[n]] == ["shard-00001.parquet"]
    np.testing.assert_allclose(np.load(emb / "shard-00001.npy"),
                               np.stack([local[k] for k in data["expected"]
                                         if "shard-00001" in k]), rtol=1e-6)


def test_undecodable_file_names_are_encoded_like_the_local_tables(tmp_path, ray_address, tiny):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "plain.jpg").write_bytes(sh.image_bytes(1))
    odd = os.fsdecode(b"caf\xe9\nline.jpg")
    with open(os.path.join(os.fsencode(d), os.fsencode(odd)), "wb") as f:
        f.write(sh.image_bytes(2))
    out = tmp_path / "parts"
    assert cli.main([str(d), "--bundle", str(tiny), "--out", str(out), "--engine", "ray",
                     "--quiet"]) == 0
    got = sorted(r["path"] for r in _part_rows(out))
    local = sorted(r["path"] for r in _local_rows(tmp_path, [str(d)], tiny))
    assert got == local and any(p.startswith("b64:") for p in got)


def test_precision_variant_on_ray(tmp_path, ray_address, tiny, data, capsys):
    import shutil

    from quasar.export.precision import Gate, build_and_measure
    from quasar.runtime.scorer import Scorer

    b = tmp_path / "bundle"
    shutil.copytree(tiny, b)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(20):
        (photos / f"p{i}.jpg").write_bytes(sh.image_bytes(200 + i, size=(64, 80)))
    out = tmp_path / "parts"
    args = [str(data["loose"]), "--bundle", str(b), "--out", str(out), "--engine", "ray"]
    assert cli.main(args + ["--precision", "int8", "--quiet"]) == 2   # no variant yet
    assert "no int8 variant" in capsys.readouterr().err and not out.exists()
    assert build_and_measure(b, precision="int8", backend="onnxruntime",
                             calibration=str(photos), gate=Gate(-1.0, 1.0)).passed
    assert cli.main(args + ["--precision", "int8"]) == 3
    assert "precision int8 (int8-onnxruntime" in capsys.readouterr().err
    rows = [r for r in _part_rows(out) if r["status"] == "ok"]
    want = Scorer.from_bundle(b, device="cpu", precision="int8").score([r["path"] for r in rows])
    np.testing.assert_allclose([r["score_text"] for r in rows], want, atol=1e-9)
    fp32 = Scorer.from_bundle(b, device="cpu").score([r["path"] for r in rows])
    assert not np.allclose([r["score_text"] for r in rows], fp32, atol=1e-12, rtol=0)
    meta = json.loads(pq.read_schema(next(out.glob("*.parquet"))).metadata[b"quasar.run"])
    assert (meta["precision"], meta["backend"], meta["variant"]) == \
        ("int8", "onnxruntime", "int8-onnxruntime")
    assert cli.main(args + ["--resume", "--quiet"]) == 2                 # fp32 now: refused
    assert "other settings (precision, variant" in capsys.readouterr().err


def test_actor_error_surfaces_as_itself(tmp_path, ray_address, tiny, data):
    """An error raised by an actor's constructor (here: a node picking another encoder than
    the driver) stops the run with that error, not a Ray wrapper, and writes nothing."""
    import dataclasses

    from quasar.errors import RayRunError
    from quasar.runtime.sources import SourceOptions

    spec, b = qray.resolve_spec(str(tiny))
    bad = dataclasses.replace(spec, variant="int8-onnxruntime")
    out = tmp_path / "parts"
    with pytest.raises(RayRunError, match="chose encoder fp32 for --precision fp32, the driver "
                                          "chose int8-onnxruntime"):
        qray.run([data["specs"][0]], str(out), bad, b, sources=SourceOptions())
    assert not list(out.glob("*.parquet"))


def _pids_with(*needles: bytes):
    """PIDs of the processes whose command line contains one of ``needles``."""
    found = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read()
            except OSError:
                continue
            if any(n in cmd for n in needles):
                found.add(int(d))
    return found


def _actor_pids():
    return _pids_with(b"_PartRunner")


def test_killed_actor_is_replaced_and_each_input_written_once(tmp_path, ray_address, tiny):
    """SIGKILL the scoring actor mid-run (what the OOM killer does): Ray restarts it, the
    part it held is redone, and every input still appears exactly once."""
    proc, out, _args, expected = _slow_run(tmp_path, ray_address, tiny, 2)
    killed = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not killed:
            if any(out.glob("*.parquet")):
                for pid in _actor_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert killed, "the actor was never seen"
    assert proc.returncode == 0, err.decode()[-3000:]
    assert sorted(p.name for p in out.glob("*.parquet")) == \
        [f"shard-{i:05d}.parquet" for i in range(6)]
    assert Counter(r["path"] for r in _part_rows(out)) == Counter(list(expected))


def _ray_daemons():
    return _pids_with(b"gcs_server", b"raylet", b"autoscaler/_private/monitor")


def test_cli_starts_and_stops_its_own_ray(tmp_path, ray_address, tiny):
    """Without --address the command starts a local Ray (workers at normal priority, the
    idle autoscaler monitor stopped early) and stops it: clean console, nothing left behind."""
    shards, expected = sh.good_shards(tmp_path / "wds", n_shards=2, per_shard=3)
    before = _ray_daemons()
    out = tmp_path / "parts"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "quasar", "score",
                           str(tmp_path / "wds" / "shard-{00000..00001}.tar"), "--bundle",
                           str(tiny), "--out", str(out), "--engine", "ray"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # no Ray noise (its "E ... core_worker.cc" notice of ray#53727 is dropped unless
    # --verbose): the summary only, beside the random-weights banner
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "RANDOMLY" not in ln]
    assert len(lines) == 1 and lines[0].startswith("quasar score: 6 scored, 0 failed"), lines
    assert Counter(r["path"] for r in _part_rows(out)) == Counter(list(expected))
    time.sleep(1)
    assert _ray_daemons() <= before  # the instance it started is gone


# ------------------------------------------------------------ issue 17 items 2, 4, 5
def test_output_dir_holding_an_input_is_refused(tmp_path, tiny, data, monkeypatch, capsys):
    """Item 2: `--engine ray --out data --overwrite` with data/x.parquet an input deleted it;
    now every way an input can sit in the parts directory is refused before anything is
    written (and before Ray starts)."""
    import io

    src = tmp_path / "data"
    src.mkdir()
    x = src / "x.parquet"
    x.write_bytes(data["pq"].read_bytes())
    other = tmp_path / "o"
    other.mkdir()
    os.link(x, other / "x.parquet")                       # a part file that is an input's inode
    os.symlink(x, tmp_path / "lnk.parquet")
    (tmp_path / "list.txt").write_text(f"{x}\n")
    base = ["--bundle", str(tiny), "--engine", "ray", "--image-column", "jpg", "--id-column",
            "uid", "--quiet"]
    cases = [([str(x)], src, ["--overwrite"]),            # named, inside --out
             ([str(src / "*.parquet")], src, ["--overwrite"]),   # glob
             ([str(src / "{x,zz}.parquet")], src, ["--overwrite"]),  # brace pattern
             ([str(tmp_path / "lnk.parquet")], src, ["--overwrite"]),  # symlink into --out
             ([f"@{tmp_path / 'list.txt'}"], src, ["--resume"]),     # @list
             (["-"], src, ["--overwrite"]),                        # stdin
             ([str(x)], other, ["--overwrite"]),                   # hard link in --out
             ([str(src)], tmp_path, ["--overwrite"]),              # --out holds an input folder
             ([str(x)], tmp_path / "e", ["--save-embeddings", str(src)])]  # embeddings
    before = x.read_bytes()
    for specs, out, extra in cases:
        monkeypatch.setattr(sys, "stdin", io.StringIO(f"{x}\n"))
        code = cli.main(specs + base + ["--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2, (specs, out, err)
        assert "input" in err and ("holds" in err or "inside" in err), err
        assert x.read_bytes() == before and (other / "x.parquet").exists()
        assert sorted(os.listdir(src)) == ["x.parquet"]


def test_output_dir_lock_refuses_a_second_writer(tmp_path, ray_address, tiny):
    """Item 4: two writers on one parts directory mixed two models under one column. The
    directory is locked for the whole run: a second Ray run (another bundle) and a local run
    on the same name are refused, naming the holder."""
    other = rt_helpers.write_tiny_bundle(tmp_path / "other", anchors={
        k: -v for k, v in rt_helpers.tiny_anchor_sets().items()})
    sh.good_shards(tmp_path / "wds", n_shards=3, per_shard=2)
    out = tmp_path / "scores.parquet"                       # a directory of parts
    args = [str(tmp_path / "wds" / "shard-{00000..00002}.tar"), "--out", str(out),
            "--engine", "ray", "--address", ray_address, "--quiet"]
    env = dict(os.environ, QUASAR_RAY_PART_DELAY="5")
    a = subprocess.Popen([sys.executable, "-m", "quasar", "score", *args, "--bundle", str(tiny)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not (tmp_path / "scores.parquet.lock").exists():
            assert a.poll() is None, a.communicate()[1][-3000:]
            time.sleep(0.05)
        b = subprocess.run([sys.executable, "-m", "quasar", "score", *args, "--bundle",
                            str(other)], capture_output=True, timeout=120)
        img = tmp_path / "i.png"
        img.write_bytes(sh.image_bytes(3, "PNG"))
        c = subprocess.run([sys.executable, "-m", "quasar", "score", str(img), "--bundle",
                            str(tiny), "--out", str(out), "--quiet"],
                           capture_output=True, timeout=120)
        assert a.poll() is None                             # the first writer still runs
    finally:
        a.kill()
        a.wait()
    for r in (b, c):
        assert r.returncode == 2, r.stderr
        assert f"is being written by process {a.pid}".encode() in r.stderr, r.stderr
    metas = {json.loads(pq.read_schema(p).metadata[b"quasar.run"])["bundle_sha256"]
             for p in out.glob("*.parquet")}
    assert len(metas) <= 1                                  # one model in the directory


def _forge(path, rows, anchors=("text",)):
    """Rewrite a part with ``rows``, its metadata made consistent again (rows count and a
    checksum re-implemented here: sha256 over one JSON line of cells per row)."""
    import hashlib

    import pyarrow as pa

    meta = json.loads(pq.read_schema(path).metadata[b"quasar.run"])
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["path"]] + [r[f"score_{a}"] for a in anchors]
                            + [r["status"], r["error"]]).encode() + b"\n")
    meta.update(rows=len(rows), rows_sha256=h.hexdigest())
    t = pa.Table.from_pylist(rows, schema=pq.read_schema(path).remove_metadata())
    pq.write_table(t.replace_schema_metadata({b"quasar.run": json.dumps(meta).encode()}), path)


def test_resume_verifies_each_finished_part(tmp_path, ray_address, tiny, caplog):
    """Item 5: a part cut to fewer rows (metadata untouched), a part with an edited score,
    a part with a duplicated id or an out-of-range score (metadata and checksum forged to
    match) are redone on --resume, and then equal the originals; a good part is kept."""
    import logging

    import pyarrow as pa

    sh.good_shards(tmp_path / "wds", n_shards=5, per_shard=6)
    out = tmp_path / "parts"
    args = [str(tmp_path / "wds" / "shard-{00000..00004}.tar"), "--bundle", str(tiny),
            "--out", str(out), "--engine", "ray", "--quiet"]
    assert cli.main(args) == 0
    files = [out / f"shard-{i:05d}.parquet" for i in range(5)]
    orig = [pq.read_table(f).to_pylist() for f in files]
    cut = pa.Table.from_pylist(orig[0][:2], schema=pq.read_schema(files[0]))
    pq.write_table(cut, files[0])                             # metadata still says 6 rows
    assert json.loads(pq.read_schema(files[0]).metadata[b"quasar.run"])["rows"] == 6
    edited = [dict(r) for r in orig[1]]
    edited[3]["score_text"] = 0.5
    pq.write_table(pa.Table.from_pylist(edited, schema=pq.read_schema(files[1])), files[1])
    _forge(files[2], orig[2] + [orig[2][0]])
    bad = [dict(r) for r in orig[3]]
    bad[0]["score_text"] = 1.5
    _forge(files[3], bad)
    kept = (files[4].stat().st_ino, files[4].stat().st_mtime_ns)
    with caplog.at_level(logging.WARNING, logger="quasar.runtime.ray"):
        assert cli.main(args + ["--resume"]) == 0
    redone = [r.getMessage() for r in caplog.records if "does not verify" in r.getMessage()]
    assert sorted(os.path.basename(m.split(" ")[0]) for m in redone) == \
        [f.name for f in files[:4]], redone
    assert [pq.read_table(f).to_pylist() for f in files] == orig
    assert (files[4].stat().st_ino, files[4].stat().st_mtime_ns) == kept
