"""Hostile-corpus suite (issue 9): every input, bundle, cache and output a careless or hostile
user can produce gets a specific answer, never a crash, a hang, a silent skip or a lie.

Everything runs on the tiny hand-made bundle of rt_helpers (real ONNX Runtime, real files,
real subprocesses); expected values come from numpy re-implementations, not from quasar.
"""
from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rt_helpers

from quasar.bundle import load_bundle
from quasar.cli import run
from quasar.errors import BundleError
from quasar.runtime.scorer import Scorer
from quasar.runtime.writers import read_table
from quasar.text import decode_path, encode_path

PY = sys.executable
SETPRIV = shutil.which("setpriv")
NO_DAC = [SETPRIV, "--bounding-set=-dac_override,-dac_read_search",
          "--inh-caps=-dac_override,-dac_read_search"] if SETPRIV else []


def main(argv):
    return run(["score", *argv])


def cli_proc(args, **kw):
    """``quasar score ARGS`` in a subprocess (stdin closed unless given)."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([PY, "-c", "import sys; from quasar.cli import main; main()", "score",
                           *args], capture_output=True, timeout=120, **kw)


def noise_png(path: Path, w=40, h=30, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, "PNG")
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return rt_helpers.write_tiny_bundle(tmp_path_factory.mktemp("b") / "tiny")


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("QUASAR_HOME", str(tmp_path / "home"))


def _statuses(rows):
    return {Path(r["path"]).name: r["status"] for r in rows}


# ============================================================ 1. pixel limit after the resize
@pytest.mark.parametrize("res,long_side", [("224", 224 * 50000), ("512", 512 * 50000)])
def test_thin_png_refused_before_resize(bundle, tmp_path, res, long_side):
    p = tmp_path / "thin.png"
    Image.new("L", (1, 50000), 255).save(p)  # a few hundred bytes
    assert p.stat().st_size < 2000
    sc = Scorer.from_bundle(bundle, device="cpu", resolution=res)
    t0 = time.perf_counter()
    r = sc.score([str(p)], errors="collect")
    assert time.perf_counter() - t0 < 30  # no 10 GB allocation (a guard, not a timing test)
    err = r.errors[0]
    assert err is not None and err.status == "too_large"
    msg = str(err)
    assert "1x50000" in msg and f"{int(res)}x{long_side}" in msg  # both sizes named


# ============================================================ 2. ORT cache bound to the bundle
def test_tampered_ort_cache_is_rebuilt(bundle, tmp_path, caplog):
    import logging

    import onnx
    from onnx import numpy_helper

    img = noise_png(tmp_path / "a.png")
    want = Scorer.from_bundle(bundle, device="cpu").embed([str(img)])
    entries = list((tmp_path / "home" / "ort-cache").iterdir())
    assert len(entries) == 1
    key = json.loads((entries[0] / "key.json").read_text())
    assert set(key["files"]) >= {"model.onnx"}
    # replace the cached graph with one of the same I/O and other weights
    m = onnx.load(str(entries[0] / "model.onnx"), load_external_data=False)
    m2 = onnx.load(str(bundle / "encoder.onnx"))
    for init in m2.graph.initializer:
        arr = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(arr * 3 + 1, init.name))
    onnx.save(m2, str(entries[0] / "model.onnx"))
    del m
    with caplog.at_level(logging.WARNING):
        got = Scorer.from_bundle(bundle, device="cpu").embed([str(img)])
    assert "changed since it was cached" in caplog.text
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # and the numbers are the tiny encoder's, recomputed in numpy
    px = Scorer.from_bundle(bundle, device="cpu").load_image(str(img))[None]
    np.testing.assert_allclose(got, rt_helpers.tiny_reference_embedding(px), rtol=1e-5, atol=1e-5)


# ============================================================ 3. run identity
def _other_bundle(bundle, tmp_path):
    b2 = tmp_path / "other"
    shutil.copytree(bundle, b2)
    return rt_helpers.write_tiny_bundle(b2, anchors={"text": rt_helpers.unit(
        np.random.default_rng(5).standard_normal((2, rt_helpers.TINY_DIM)))})


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_resume_with_other_identity_refused(bundle, tmp_path, capsys, ext):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        noise_png(imgs / f"{i}.png", seed=i)
    out = tmp_path / f"s{ext}"
    assert main([str(imgs), "--bundle", str(bundle), "--out", str(out), "-q"]) == 0
    if ext == ".parquet":
        import pyarrow.parquet as pq
        meta = json.loads(pq.read_schema(out).metadata[b"quasar.run"])
        assert not Path(str(out) + ".run.json").exists()
    else:
        meta = json.loads(Path(str(out) + ".run.json").read_text())
    assert meta["bundle_sha256"] == load_bundle(bundle).sha256
    assert meta["resolution"] == "224" and meta["anchors"] == ["text"]
    assert meta["precision"] == "fp32" and meta["model"] == "tiny.test"
    before = out.read_bytes()
    capsys.readouterr()
    # another bundle (other anchors -> other sha256)
    assert main([str(imgs), "--bundle", str(_other_bundle(bundle, tmp_path)), "--out", str(out),
                 "--resume"]) == 2
    err = capsys.readouterr().err
    assert "bundle_sha256" in err and "another run" in err
    # another resolution
    assert main([str(imgs), "--bundle", str(bundle), "--out", str(out), "--resume",
                 "--resolution", "512"]) == 2
    assert "resolution: '224' in the file, '512' now" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main([str(imgs), "--bundle", str(bundle), "--out", str(out), "--resume", "-q"]) == 0


def test_resume_without_identity_needs_force(bundle, tmp_path, capsys):
    img = noise_png(tmp_path / "a.png")
    out = tmp_path / "s.csv"
    assert main([str(img), "--bundle", str(bundle), "--out", str(out), "-q"]) == 0
    Path(str(out) + ".run.json").unlink()  # as an older quasar left it
    assert main([str(img), "--bundle", str(bundle), "--out", str(out), "--resume"]) == 2
    assert "no run identity" in capsys.readouterr().err
    assert main([str(img), "--bundle", str(bundle), "--out", str(out), "--resume",
                 "--force-resume", "-q"]) == 0
    assert Path(str(out) + ".run.json").exists()


def test_embeddings_record_identity(bundle, tmp_path, capsys):
    from safetensors import safe_open

    img = noise_png(tmp_path / "a.png")
    emb = tmp_path / "e.safetensors"
    assert main([str(img), "--bundle", str(bundle), "--out", str(tmp_path / "s.csv"),
                 "--save-embeddings", str(emb), "-q"]) == 0
    with safe_open(str(emb), "np") as f:
        assert f.metadata()["quasar.bundle_sha256"] == load_bundle(bundle).sha256
    assert main([str(img), "--bundle", str(_other_bundle(bundle, tmp_path)), "--out",
                 str(tmp_path / "t.csv"), "--save-embeddings", str(emb), "--resume"]) == 2
    assert "bundle_sha256" in capsys.readouterr().err


# ============================================================ 4. non-finite results
def test_zero_embedding_is_inference_error(tmp_path):
    import onnx
    from onnx import numpy_helper

    b = rt_helpers.write_tiny_bundle(tmp_path / "zero")
    m = onnx.load(str(b / "encoder.onnx"))
    for init in m.graph.initializer:  # W = 0, b = 0: a finite, all-zero embedding
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0, init.name))
    onnx.save(m, str(b / "encoder.onnx"))
    rt_helpers.rewrite_manifest(b, files={n: rt_helpers.sha256(b / n)
                                          for n in ("encoder.onnx", "anchors.safetensors")})
    img = noise_png(tmp_path / "a.png")
    r = Scorer.from_bundle(b, device="cpu").score([str(img)], errors="collect")
    assert r.errors[0] is not None and r.errors[0].status == "inference_error"
    with pytest.raises(Exception, match="not finite"):
        Scorer.from_bundle(b, device="cpu").score([str(img)])
    out = tmp_path / "s.csv"
    assert main([str(img), "--bundle", str(b), "--out", str(out), "-q"]) == 3
    assert read_table(str(out))[0]["status"] == "inference_error"


def test_nan_mean_bundle_refused_by_cli(bundle, tmp_path, capsys):
    b = tmp_path / "nan"
    shutil.copytree(bundle, b)
    d = json.loads((b / "bundle.json").read_text())
    d["preprocess"]["224"]["mean"][0] = float("nan")
    (b / "bundle.json").write_text(json.dumps(d))
    img = noise_png(tmp_path / "a.png")
    out = tmp_path / "s.csv"
    assert main([str(img), "--bundle", str(b), "--out", str(out)]) == 2
    assert "mean" in capsys.readouterr().err
    assert not out.exists() and not Path(str(out) + ".run.json").exists()


# ============================================================ 5. file names
HOSTILE_NAMES = ["a\rb.png", "new\nline.png", "tab\t.png", "esc\x1b[31mred.png", "=cmd.png",
                 "+plus.png", "-minus.png", "@at.png", "'quote.png", "b64:fake.png",
                 "sp ace,comma\"q.png", "ünï.png", os.fsdecode(b"bad\xff\xfe.png")]


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_hostile_names_round_trip(bundle, tmp_path, capfd, ext):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, n in enumerate(HOSTILE_NAMES):
        noise_png(imgs / n, seed=i)
    os.mkfifo(imgs / "fifo\x1b[2J.png")  # an error row whose message holds ESC
    out = tmp_path / f"s{ext}"
    rc = main([str(imgs), "--bundle", str(bundle), "--out", str(out)])
    assert rc == 3
    cap = capfd.readouterr()
    assert "\x1b" not in cap.err and "\r" not in cap.err and "\\x1b" in cap.err
    rows = read_table(str(out))
    got = sorted(os.path.basename(r["path"]) for r in rows)
    assert got == sorted(HOSTILE_NAMES + ["fifo\x1b[2J.png"])
    for r in rows:
        if r["status"] == "ok":
            assert Path(r["path"]).is_file()  # the decoded path opens
        else:
            assert "\x1b" not in (r["error"] or "") and "\n" not in (r["error"] or "")
    if ext == ".csv":
        raw = out.read_bytes()
        raw.decode("utf-8")  # strict: the table is UTF-8
        with open(out, newline="", encoding="utf-8") as f:
            cells = [rec[0] for rec in csv.reader(f)][1:]
        assert len(cells) == len(HOSTILE_NAMES) + 1  # no row split by \r or \n
        for c in cells:
            assert not c.startswith(("=", "+", "-", "@"))  # OWASP guard
            assert not any(ord(ch) < 32 for ch in c)
        enc = [c for c in cells if c.startswith("b64:")]
        want = base64.b64encode(os.fsencode(str(imgs / "a\rb.png"))).decode()
        assert "b64:" + want in enc
    # resume of the finished table: every ok path is recognised, nothing re-scored
    rc = main([str(imgs), "--bundle", str(bundle), "--out", str(out), "--resume"])
    assert rc == 3
    assert f"{len(HOSTILE_NAMES)} skipped" in capfd.readouterr().err


def test_path_codec_independent():
    for p in ["plain.png", "=x", "b64:x", "a\nb", os.fsdecode(b"\xff")]:
        assert decode_path(encode_path(p)) == p
    assert encode_path("plain/ü.png") == "plain/ü.png"
    assert encode_path("a\nb") == "b64:" + base64.b64encode(b"a\nb").decode()


# ============================================================ 6. lock
def test_second_writer_refused(bundle, tmp_path, capsys):
    from quasar.runtime.integrity import OutputLock

    img = noise_png(tmp_path / "a.png")
    out = tmp_path / "s.csv"
    with OutputLock(str(out)):
        assert main([str(img), "--bundle", str(bundle), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"process {os.getpid()}" in err and "s.csv" in err
        assert not out.exists()
    assert not Path(str(out) + ".lock").exists()
    assert main([str(img), "--bundle", str(bundle), "--out", str(out), "-q"]) == 0


def test_concurrent_runs_one_wins(bundle, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(40):
        noise_png(imgs / f"{i:02d}.png", 200, 150, seed=i)
    out = tmp_path / "s.csv"
    args = [str(imgs), "--bundle", str(bundle), "--out", str(out), "--batch-size", "1",
            "--workers", "1", "-q"]
    procs = [subprocess.Popen([PY, "-c", "import sys; from quasar.cli import main; main()",
                               "score", *args], stderr=subprocess.PIPE) for _ in range(3)]
    codes = [p.wait(120) for p in procs]
    errs = [p.stderr.read().decode() for p in procs]
    assert codes.count(0) >= 1 and set(codes) <= {0, 2}
    for c, e in zip(codes, errs):
        if c == 2:
            assert "is being written by" in e or "already exists" in e
    rows = read_table(str(out))
    assert len(rows) == 40 and len({r["path"] for r in rows}) == 40


# ============================================================ 7. inputs that cannot be read
def test_walk_gives_every_entry_a_row(bundle, tmp_path):
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    noise_png(root / "good.png")
    noise_png(root / "sub" / "x.png", seed=1)
    os.mkfifo(root / "pipe.png")
    os.mkfifo(root / "pipe_noext")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "sock"))
    os.symlink(root / "nowhere.png", root / "dead.png")
    os.symlink(root / "nowhere", root / "dead_noext")
    os.symlink(root / "loop", root / "loop")
    os.symlink(root, root / "sub" / "up")  # a folder loop
    other = tmp_path / "other"
    other.mkdir()
    noise_png(other / "linked.png", seed=2)
    os.symlink(other, root / "linkdir")
    os.symlink("/dev/zero", root / "zero.png")
    out = tmp_path / "s.csv"
    try:
        assert main([str(root), "--bundle", str(bundle), "--out", str(out), "-q"]) == 3
    finally:
        s.close()
    st = {os.path.relpath(r["path"], root): r["status"] for r in read_table(str(out))}
    assert st == {"good.png": "ok", "sub/x.png": "ok", "linkdir/linked.png": "ok",
                  "pipe.png": "not_a_file", "pipe_noext": "not_a_file", "sock": "not_a_file",
                  "dead.png": "broken_link", "dead_noext": "broken_link",
                  "loop": "symlink_loop", "sub/up": "symlink_loop", "zero.png": "not_a_file"}


NO_DAC_SCRIPT = r"""
import os, sys
from quasar.runtime.scorer import Scorer
from quasar.cli import run
b, root, out, f = sys.argv[1:5]
try:
    open(f).close(); print("CAN_READ"); sys.exit(0)
except PermissionError:
    pass
r = Scorer.from_bundle(b, device="cpu").score([f], errors="collect")
print("API", r.errors[0].status if r.errors[0] is not None else "ok")
print("RC", run(["score", root, "--bundle", b, "--out", out, "-q"]))
"""


@pytest.mark.skipif(not SETPRIV, reason="setpriv (util-linux) missing: cannot drop root's "
                    "DAC override, and chmod 000 does not stop root")
def test_unreadable_inputs_without_dac(bundle, tmp_path):
    root = tmp_path / "tree"
    (root / "locked").mkdir(parents=True)
    noise_png(root / "good.png")
    noise_png(root / "locked" / "hidden.png", seed=1)
    f = noise_png(root / "secret.png", seed=2)
    os.chmod(root / "locked", 0)
    os.chmod(f, 0)
    out = tmp_path / "s.csv"
    try:
        r = subprocess.run(NO_DAC + [PY, "-c", NO_DAC_SCRIPT, str(bundle), str(root), str(out),
                                     str(f)], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ))
    finally:
        os.chmod(root / "locked", 0o755)
    assert "CAN_READ" not in r.stdout, "setpriv did not drop the DAC capabilities"
    assert "API permission_denied" in r.stdout, r.stderr
    assert "RC 3" in r.stdout, r.stderr
    st = {os.path.relpath(x["path"], root): x["status"] for x in read_table(str(out))}
    assert st == {"good.png": "ok", "locked": "unlistable_dir", "secret.png": "permission_denied"}


# ============================================================ 8. outputs that overwrite inputs
def test_outputs_never_overwrite_inputs(bundle, tmp_path, capsys):
    imgs = [str(noise_png(tmp_path / f"{i}.png", seed=i)) for i in range(3)]
    lst = tmp_path / "X.paths.txt"
    lst.write_text("\n".join(imgs) + "\n")
    before = lst.read_bytes()
    assert main([f"@{lst}", "--bundle", str(bundle), "--save-embeddings",
                 str(tmp_path / "X.npy")]) == 2
    assert "X.paths.txt" in capsys.readouterr().err and lst.read_bytes() == before
    lcsv = tmp_path / "list.csv"
    lcsv.write_text("\n".join(imgs) + "\n")
    assert main([f"@{lcsv}", "--bundle", str(bundle), "--out", str(lcsv), "--overwrite"]) == 2
    assert lcsv.read_text() == "\n".join(imgs) + "\n"
    # an input image named as the output (hard link: same inode under another name)
    os.link(imgs[0], tmp_path / "link.png")
    assert main([imgs[1], "--bundle", str(bundle), "--out", str(tmp_path / "0.png.lock")]) == 2
    # streamed: the output turns up on stdin -> an error row, not read
    out = tmp_path / "s.jsonl"
    r = cli_proc(["-", "--bundle", str(bundle), "--out", str(out), "-q"],
                 input=f"{imgs[0]}\n{out}\n".encode(), stdin=None)
    assert r.returncode == 3, r.stderr
    st = {Path(x["path"]).name: x["status"] for x in read_table(str(out))}
    assert st == {"0.png": "ok", "s.jsonl": "output_file"}
    # a hard link to the output under another name, in a scanned folder, on --resume
    d = tmp_path / "d"
    d.mkdir()
    noise_png(d / "a.png", seed=7)
    out2 = tmp_path / "r.jsonl"
    assert main([str(d), "--bundle", str(bundle), "--out", str(out2), "-q"]) == 0
    os.link(out2, d / "copy.png")  # folders list images by extension
    noise_png(d / "b.png", seed=8)
    assert main([str(d), "--bundle", str(bundle), "--out", str(out2), "--resume", "-q"]) == 3
    st = {Path(x["path"]).name: x["status"] for x in read_table(str(out2))}
    assert st == {"a.png": "ok", "b.png": "ok", "copy.png": "output_file"}


# ------------------------------------------------------------ issue 17 items 1, 7: one rule
def _victim(tmp_path: Path, fmt: str) -> Path:
    """An existing file at the --out path that is also data: a Parquet file with an image
    column (an input by its name), or a text file for CSV / JSONL (reachable as an input
    only through a list, stdin or an image-named link)."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        v = tmp_path / "in" / "v.parquet"
        buf = [noise_png(tmp_path / f"p{i}.png", seed=20 + i).read_bytes() for i in range(2)]
        pq.write_table(pa.table({"image": buf}), v)
        return v
    v = tmp_path / f"v.{fmt}"
    v.write_text(f"precious data of {fmt}\n")
    return v


REACH = ["glob", "folder", "stdin", "list", "symlink", "hardlink", "brace"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("way", REACH)
def test_overwrite_never_replaces_an_input_however_reached(bundle, tmp_path, capsys,
                                                           monkeypatch, fmt, way):
    """`--overwrite` of an output that the lazy input stream reaches (glob, folder, stdin,
    @list, a symbolic or hard link under an image name) is refused, and the file is left as
    it was: the old code deleted it at the start and replaced it with scores."""
    import io

    (tmp_path / "in").mkdir()
    noise_png(tmp_path / "in" / "a.png", seed=1)
    victim = _victim(tmp_path, fmt)
    before = victim.read_bytes()
    alias = "v.parquet" if fmt == "parquet" else "v.png"    # a name folders / globs pick
    if way in ("glob", "folder") and fmt != "parquet":
        os.link(victim, tmp_path / "in" / alias)
    if way == "symlink":
        (tmp_path / "ln").mkdir()
        os.symlink(victim, tmp_path / "ln" / alias)
    if way == "hardlink":
        (tmp_path / "hl").mkdir()
        os.link(victim, tmp_path / "hl" / ("h" + alias))
    listed = f"{tmp_path / 'in' / 'a.png'}\n{victim}\n"
    spec = {"glob": str(tmp_path / "in" / "*"), "folder": str(tmp_path / "in"), "stdin": "-",
            "list": f"@{tmp_path / 'list.txt'}", "symlink": str(tmp_path / "ln"),
            "hardlink": str(tmp_path / "hl" / "*"),
            "brace": str(victim.parent / ("{zz," + victim.stem + "}" + victim.suffix))}[way]
    (tmp_path / "list.txt").write_text(listed)
    monkeypatch.setattr(sys, "stdin", io.StringIO(listed))
    capsys.readouterr()
    code = main([str(tmp_path / "in" / "a.png"), spec, "--bundle", str(bundle), "--out",
                 str(victim), "--overwrite", "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--overwrite would replace" in err and "nothing was replaced" in err
    assert victim.read_bytes() == before
    leftovers = [n for n in os.listdir(victim.parent) if n.startswith(".")]
    assert leftovers == [] and not Path(str(victim) + ".run.json").exists()


def test_overwrite_embeddings_reached_by_a_hard_link_is_refused(bundle, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    noise_png(d / "a.png", seed=1)
    emb = tmp_path / "e.npy"
    assert main([str(d), "--bundle", str(bundle), "--save-embeddings", str(emb), "-q"]) == 0
    files = {n: (tmp_path / n).read_bytes() for n in ("e.npy", "e.paths.txt")}
    os.link(tmp_path / "e.paths.txt", d / "e.png")            # an image name, the list's inode
    assert main([str(d), "--bundle", str(bundle), "--save-embeddings", str(emb), "-q",
                 "--overwrite"]) == 2
    assert {n: (tmp_path / n).read_bytes() for n in files} == files


def test_overwrite_result_equals_a_fresh_run(bundle, tmp_path):
    """Replace-at-the-end gives the very files a fresh run writes (table, embeddings, paths,
    identity), and leaves no staged file behind."""
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        noise_png(d / f"{i}.png", seed=40 + i)
    (d / "bad.png").write_bytes(b"not a png")
    for ext in ("csv", "jsonl", "parquet"):
        fresh, again = tmp_path / f"fresh.{ext}", tmp_path / "re" / f"again.{ext}"
        again.parent.mkdir(exist_ok=True)
        again.write_text("old rows\n")
        Path(str(again) + ".run.json").write_text("{}")
        for out in (fresh, again):
            emb = out.with_name(out.stem + ext + ".npy")
            args = [str(d), "--bundle", str(bundle), "--out", str(out), "-q",
                    "--save-embeddings", str(emb)]
            if out is again:
                np.save(emb, np.zeros((5, 3), np.float32))
                emb.with_suffix(".paths.txt").write_text("x\ny\n")
            assert main(args + (["--overwrite"] if out is again else [])) == 3
        assert read_table(str(fresh)) == read_table(str(again))
        if ext != "parquet":
            assert fresh.read_bytes() == again.read_bytes()
            assert json.loads(Path(str(again) + ".run.json").read_text())["model"] == "tiny.test"
        fe, ae = (o.with_name(o.stem + ext + ".npy") for o in (fresh, again))
        np.testing.assert_array_equal(np.load(fe), np.load(ae))
        assert len(np.load(ae)) == 3
        fp, ap = (e.with_suffix(".paths.txt") for e in (fe, ae))
        assert fp.read_bytes() == ap.read_bytes()
        assert not [n for n in os.listdir(again.parent) if n.startswith(".")]
        for n in os.listdir(again.parent):
            os.remove(again.parent / n)


def test_stdin_from_the_runs_own_paths_list_is_refused(bundle, tmp_path):
    """Item 7: `quasar score - < e.paths.txt --save-embeddings e.npy --resume` read the list
    while the resume compacted and appended to that very file."""
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        noise_png(d / f"{i}.png", seed=50 + i)
    (d / "bad.png").write_bytes(b"not a png")
    emb, out = tmp_path / "e.npy", tmp_path / "s.csv"
    assert main([str(d), "--bundle", str(bundle), "--out", str(out), "--save-embeddings",
                 str(emb), "-q"]) == 3
    lst = tmp_path / "e.paths.txt"
    before = lst.read_bytes()
    with open(lst, "rb") as f:
        r = cli_proc(["-", "--bundle", str(bundle), "--out", str(out), "--save-embeddings",
                      str(emb), "--resume", "-q"], stdin=f)
    assert r.returncode == 2, r.stderr
    assert b"stdin" in r.stderr and b"e.paths.txt" in r.stderr
    assert lst.read_bytes() == before


def test_resume_keeps_the_failure_row_of_a_repeated_id(bundle, tmp_path):
    """Item 6 (resume side): a tar with key `a` three times (the second corrupt) and a
    Parquet whose null id would fall back on a real id: after --resume every input still has
    exactly one row and the failure rows are there (retried, failing again), exit 3."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shard_helpers as sh

    good = [sh.image_bytes(70 + i) for i in range(3)]
    tar = sh.write_tar(tmp_path / "dup.tar", [("a.jpg", good[0]), ("a.jpg", b"<html>x"),
                                               ("a.jpg", good[1]), ("b.jpg", good[2])])
    pqf = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"image": [good[0], b"garbage", good[1]],
                             "uid": ["0", None, "1"]}), pqf)
    for ext in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"s.{ext}"
        args = [str(tar), str(pqf), "--bundle", str(bundle), "--out", str(out), "-q",
                "--image-column", "image", "--id-column", "uid"]
        assert main(args) == 3
        first = read_table(str(out))
        assert len(first) == 7 and len({r["path"] for r in first}) == 7
        assert sorted(r["status"] for r in first).count("ok") == 5
        assert main(args + ["--resume"]) == 3
        again = read_table(str(out))
        assert sorted(r["path"] for r in again) == sorted(r["path"] for r in first)
        key = {r["path"]: r["status"] for r in first}
        assert {r["path"]: r["status"] for r in again} == key


# ============================================================ 9. bundle.json robustness
def _bundle_case(bundle, tmp_path, case):
    b = tmp_path / case
    shutil.copytree(bundle, b)
    d = json.loads((b / "bundle.json").read_text())
    text = None
    if case == "schema_1e400":
        text = (b / "bundle.json").read_text().replace('"schema_version": 1', '"schema_version": 1e400', 1)
        assert text != (b / "bundle.json").read_text()
    elif case == "embed_dim_str":
        d["encoder"]["embed_dim"] = "1024"
    elif case == "depth_1000":
        text = json.dumps(d)[:-1] + ', "x": ' + "[" * 1000 + "]" * 1000 + "}"
    elif case == "size_100000":
        d["preprocess"]["224"]["size"] = 100000
    elif case == "crop_100000":
        d["preprocess"]["224"]["crop"] = 100000
    elif case == "nan_mean":
        d["preprocess"]["224"]["mean"][1] = float("nan")
    elif case == "manifest_2mb":
        d["provenance"]["pad"] = "x" * (2 << 20)
    elif case == "symlink_outside":
        big = tmp_path / "sparse4g.json"
        with open(big, "wb") as f:
            f.truncate(4 << 30)  # 4 GiB, sparse: must never be read
        (b / "bundle.json").unlink()
        os.symlink(big, b / "bundle.json")
        return b
    elif case == "unlisted_external_data":
        (b / "encoder.onnx.data").write_bytes(os.urandom(64))
        return b
    elif case == "listed_file_edited":
        p = b / "encoder.onnx"
        p.write_bytes(p.read_bytes()[:-4] + b"\0\0\0\0")
        return b
    (b / "bundle.json").write_text(text if text is not None else json.dumps(d))
    return b


BUNDLE_CASES = ["schema_1e400", "embed_dim_str", "depth_1000", "size_100000", "crop_100000",
                "nan_mean", "manifest_2mb", "symlink_outside", "unlisted_external_data",
                "listed_file_edited"]


@pytest.mark.parametrize("case", BUNDLE_CASES)
def test_hostile_bundle_refused(bundle, tmp_path, capsys, case):
    b = _bundle_case(bundle, tmp_path, case)
    t0 = time.perf_counter()
    with pytest.raises(BundleError):
        load_bundle(b)
    assert time.perf_counter() - t0 < 10  # refused fast, nothing huge read
    img = noise_png(tmp_path / "a.png")
    assert main([str(img), "--bundle", str(b), "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("quasar score: error:")
    assert not (tmp_path / "s.csv").exists()


# ============================================================ 10. evaluate's embeddings cache
def test_embeddings_cache_sees_replaced_image(bundle, tmp_path):
    from quasar.evaluate import embeddings as E
    from quasar.evaluate.datasets.base import DatasetSamples

    (tmp_path / "ds").mkdir()
    paths = [noise_png(tmp_path / "ds" / f"{i}.png", seed=i) for i in range(4)]
    s = DatasetSamples(name="KonIQ10k", subset="test", root=tmp_path / "ds", paths=paths,
                       scores=np.arange(4, dtype=np.float64))
    sc = Scorer.from_bundle(bundle, device="cpu")
    first = E.dataset_embeddings(sc, s, chunk_size=2, progress=False)
    noise_png(paths[3], 64, 64, seed=99)  # same name, other content
    second = E.dataset_embeddings(sc, s, chunk_size=2, progress=False)
    fresh = sc.embed([str(p) for p in paths])
    np.testing.assert_array_equal(second, fresh)
    assert not np.allclose(first[3], second[3])
    np.testing.assert_array_equal(first[:3], second[:3])


# ============================================================ 11. messages, full disk
def test_heic_names_the_plugin(bundle, tmp_path):
    p = tmp_path / "photo.heic"
    p.write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + os.urandom(200))
    r = Scorer.from_bundle(bundle, device="cpu").score([str(p)], errors="collect")
    msg = str(r.errors[0])
    assert "HEIF" in msg and "pillow-heif" in msg and "HTML" not in msg


FSIZE_SCRIPT = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from quasar.cli import main
sys.argv = ["quasar", "score"] + sys.argv[2:]
main()
"""


@pytest.mark.parametrize("ext", [".csv", ".parquet"])
def test_full_disk_leaves_a_resumable_file(bundle, tmp_path, ext):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(60):
        noise_png(imgs / f"img_{i:03d}_{'x' * 60}.png", 24, 24, seed=i)
    args = [str(imgs), "--bundle", str(bundle), "--batch-size", "4", "-q"]
    full = tmp_path / f"full{ext}"
    assert main(args + ["--out", str(full)]) == 0
    out = tmp_path / f"part{ext}"
    r = subprocess.run([PY, "-c", FSIZE_SCRIPT, "3000"] + args + ["--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "disk full" in r.stderr and "part" in r.stderr and "--resume" in r.stderr
    assert "Traceback" not in r.stderr
    assert main(args + ["--out", str(out), "--resume"]) == 0
    a, b = read_table(str(full)), read_table(str(out))
    assert a == b


def test_docs_status_list_matches_code():
    import quasar.errors as qe

    statuses = {c.status for c in vars(qe).values()
                if isinstance(c, type) and issubclass(c, qe.InputFailure) and c is not qe.InputFailure}
    doc = (Path(__file__).resolve().parents[2] / "docs" / "score.md").read_text()
    missing = [s for s in sorted(statuses) if f"`{s}`" not in doc]
    assert not missing, f"docs/score.md does not list {missing}"


# ============================================================ SIGKILL at 5 points + resume
def test_sigkill_at_five_points_then_resume_is_identical(bundle, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    n = 300
    for i in range(n):
        noise_png(imgs / f"{i:04d}.png", 160, 120, seed=i)
    base = [str(imgs), "--bundle", str(bundle), "--batch-size", "1", "--workers", "1", "-q"]
    full = tmp_path / "full.csv"
    assert cli_proc(base + ["--out", str(full)]).returncode == 0
    part = tmp_path / "part.csv"
    killed_at = []
    for k in (15, 70, 130, 200, 260):
        proc = subprocess.Popen([PY, "-c", "import sys; from quasar.cli import main; main()",
                                 "score", *base, "--out", str(part)]
                                + (["--resume"] if part.exists() else []),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            try:
                if part.read_bytes().count(b"\n") > k:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            killed_at.append(part.read_bytes().count(b"\n") - 1)
    assert len(killed_at) >= 3, f"too few kills landed mid-run: {killed_at}"
    # a killed run leaves its lock file, but flock died with it: the resume takes it
    r = cli_proc(base + ["--out", str(part), "--resume"])
    assert r.returncode == 0, r.stderr
    assert part.read_bytes() == full.read_bytes()  # byte-identical rows


def test_ort_cache_weights_edited_in_place_or_copied(tmp_path, caplog):
    import logging

    from quasar.runtime.session import SessionConfig, create_session

    # a tiny encoder with weights over the 1 KiB external-data threshold
    b = rt_helpers.write_tiny_bundle(tmp_path / "wide", dim=512)
    onnx_path = str(b / "encoder.onnx")
    sha = rt_helpers.sha256(b / "encoder.onnx")
    cfg = SessionConfig(device="cpu")
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = create_session(onnx_path, cfg, model_sha256=sha).run(None, {"pixels": x})[0]
    [entry] = list((tmp_path / "home" / "ort-cache").iterdir())
    data = entry / "model.onnx.data"
    assert data.stat().st_size > 4096
    s = create_session(onnx_path, cfg, model_sha256=sha)
    assert s.quasar_ort_cache == "hit"
    # a copy of the cache (new inodes and times, same content): re-hashed, accepted
    shutil.copytree(entry, tmp_path / "copy")
    shutil.rmtree(entry)
    shutil.copytree(tmp_path / "copy", entry)
    s = create_session(onnx_path, cfg, model_sha256=sha)
    assert s.quasar_ort_cache == "hit"
    # the weights edited in place, same size: the fingerprint changed, the hash too -> rebuilt
    raw = bytearray(data.read_bytes())
    raw[100:104] = b"\x00\x00\x80\x7f"  # one weight -> inf
    time.sleep(0.02)
    with open(data, "r+b") as f:
        f.write(bytes(raw))
    with caplog.at_level(logging.WARNING):
        s = create_session(onnx_path, cfg, model_sha256=sha)
    assert "model.onnx.data changed since it was cached" in caplog.text
    assert s.quasar_ort_cache == "stored"
    np.testing.assert_array_equal(s.run(None, {"pixels": x})[0], want)


def test_lock_unlink_race_retries(tmp_path, monkeypatch):
    """The previous holder unlinks the lock file between our open() and flock(): the lock
    taken on the orphan must not count (inode check), the next attempt locks the real one."""
    import fcntl

    from quasar.runtime.integrity import OutputLock

    out = str(tmp_path / "s.csv")
    real_flock = fcntl.flock
    calls = []

    def racing_flock(fd, op):
        if not calls:  # first attempt: the file we opened disappears before we lock it
            os.unlink(out + ".lock")
        calls.append(os.fstat(fd).st_ino)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", racing_flock)
    lk = OutputLock(out).acquire()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert len(calls) == 2  # retried once
    assert os.stat(out + ".lock").st_ino == calls[-1]
    assert open(out + ".lock").read().strip() == str(os.getpid())
    with pytest.raises(Exception, match="being written by process"):
        OutputLock(out).acquire()
    lk.release()
    assert not os.path.exists(out + ".lock")
