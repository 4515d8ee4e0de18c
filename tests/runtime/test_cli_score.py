"""``quasar score`` end to end.

Part 1 drives ``quasar score`` in-process (``quasar.cli.run``) with a fake scorer (fast: formats,
resume, exit codes, inputs). Part 2 runs the real ``quasar`` console script in a subprocess
on a random-init RN50 bundle: values equal the Python API, hostile files, kill + resume.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import hostile  # noqa: E402

from quasar.cli import run  # noqa: E402
from quasar.runtime import cli  # noqa: E402

QUASAR = Path(sys.executable).with_name("quasar")


def main(argv):
    """``quasar score ARGV`` in this process; returns the exit code."""
    return run(["score", *argv])


# ============================================================ part 1: fake scorer, in-process
@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    good = hostile.write_good_tree(root / "good")
    bad = hostile.write_hostile(root / "hostile")
    return root, good, bad


@pytest.fixture
def fake(monkeypatch):
    made = []

    def load_scorer(**kw):
        s = hostile.FakeScorer(max_pixels=kw.get("max_pixels") or 1_000_000)
        made.append((s, kw))
        return s
    monkeypatch.setattr(cli, "load_scorer", load_scorer)
    return made


def _read(path):
    """Rows of an output, read independently of quasar's reader."""
    path = Path(path)
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            for k in ("score_text", "score_second"):
                r[k] = float(r[k]) if r[k] else None
        return rows
    if path.suffix == ".jsonl":
        return [json.loads(x) for x in path.read_text().splitlines()]
    import pyarrow.parquet as pq
    return pq.read_table(path).to_pylist()


def _check_fake_rows(rows, good, bad):
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows)  # each input once
    for p in good + [bad[n] for n in hostile.GOOD_HOSTILE]:
        r = by_path[str(p)]
        assert r["status"] == "ok", r
        ref = hostile.fake_reference(p)
        assert r["score_text"] == pytest.approx(ref["text"], abs=1e-6)
        assert r["score_second"] == pytest.approx(ref["second"], abs=1e-6)
    for name, statuses in hostile.BAD_HOSTILE.items():
        r = by_path[str(bad[name])]
        assert r["status"] in statuses and r["score_text"] is None and name in r["error"], r


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_formats(tree, fake, tmp_path, capsys, ext):
    root, good, bad = tree
    out = tmp_path / f"scores{ext}"
    code = main([str(root / "good"), str(root / "hostile"), "--out", str(out),
                     "--batch-size", "3", "--workers", "2"])
    assert code == cli.EXIT_SOME_FAILED == 3
    rows = _read(out)
    expected_order = [str(p) for p in good] + [str(p) for p in
                                               sorted(bad.values(), key=lambda p: p.name)]
    assert [r["path"] for r in rows] == expected_order  # input order
    _check_fake_rows(rows, good, bad)
    err = capsys.readouterr().err
    n_ok = len(good) + len(hostile.GOOD_HOSTILE)
    assert f"{n_ok} scored, {len(hostile.BAD_HOSTILE)} failed" in err and "images/s" in err
    assert fake[0][1]["batch_size"] == 3


def test_all_good_exit_0_and_stdout_table(tree, fake, capsys):
    root, good, _ = tree
    assert main([str(root / "good"), "--quiet"]) == 0
    cap = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(cap.out)))
    assert [r["path"] for r in rows] == [str(p) for p in good]
    assert cap.err == ""  # --quiet


def test_inputs_stdin_list_glob(tree, fake, tmp_path, monkeypatch):
    root, good, bad = tree
    lst = tmp_path / "l.txt"
    lst.write_text(f"{good[2]}\n{bad['text.png']}\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{good[1]}\n{root / 'missing.png'}\n"))
    out = tmp_path / "o.jsonl"
    code = main(["-", "@" + str(lst), str(root / "good" / "*.png"), "--out", str(out)])
    assert code == 3
    rows = _read(out)
    globbed = sorted(str(p) for p in good if p.parent == root / "good" and p.suffix == ".png")
    assert [r["path"] for r in rows] == [str(good[1]), str(root / "missing.png"), str(good[2]),
                                         str(bad["text.png"])] + globbed
    assert [r["status"] for r in rows[:4]] == ["ok", "not_found", "ok", rows[3]["status"]]
    assert rows[3]["status"] in hostile.BAD_HOSTILE["text.png"]


def test_usage_errors(tree, fake, tmp_path, capsys):
    root, good, _ = tree
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "x.csv"
    assert main([str(empty), "--out", str(out)]) == 2 and not out.exists()
    assert "no images found" in capsys.readouterr().err
    assert main([str(good[0]), "--out", str(tmp_path / "x.xlsx")]) == 2
    assert main([str(good[0]), "--resume"]) == 2  # needs --out
    assert main([str(good[0]), "--batch-size", "0"]) == 2
    assert main([str(good[0]), "--bogus"]) == 2
    assert main([]) == 2
    assert main(["@" + str(tmp_path / "nolist.txt")]) == 2
    # an existing output is never overwritten silently
    assert main([str(good[0]), "--out", str(out)]) == 0
    assert main([str(good[1]), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([str(good[1]), "--out", str(out), "--overwrite"]) == 0
    assert [r["path"] for r in _read(out)] == [str(good[1])]


def test_max_pixels_option(tree, fake, tmp_path):
    root, good, _ = tree
    out = tmp_path / "m.csv"
    assert main([str(good[0]), str(good[-1]), "--max-pixels", "4000", "--out", str(out)]) == 3
    assert [r["status"] for r in _read(out)] == ["ok", "too_large"]  # 50x70 ok, 96x64 not


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_resume_repairs_torn_tail_and_retries_failures(tree, fake, tmp_path, ext):
    root, good, bad = tree
    work = tmp_path / "imgs"
    shutil.copytree(root / "good", work)
    late = tmp_path / "late.png"  # missing in the first run, present when resuming
    args = [str(late), str(work), "--batch-size", "2"]
    full = tmp_path / f"full{ext}"
    shutil.copy(good[0], late)
    assert main(args + ["--out", str(full)]) == 0
    reference = _read(full)
    late.unlink()

    out = tmp_path / f"part{ext}"
    assert main(args + ["--out", str(out)]) == 3  # late.png: not_found
    journal = out if ext != ".parquet" else Path(str(out) + ".partial.jsonl")
    if ext == ".parquet":  # simulate a kill: no final file, a journal with a torn tail
        from quasar.runtime.writers import ScoreTable
        t = ScoreTable(str(out), ["text", "second"])
        t.scan_ok()  # seeds the journal from the finished file
        out.unlink()
    data = journal.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 5
    journal.write_bytes(data[:cut])  # killed mid-line, second half missing
    shutil.copy(good[0], late)
    assert main(args + ["--out", str(out), "--resume"]) == 0
    rows = _read(out)
    # each input once; input order, except that the retried failure (first input) now comes
    # after the rows kept from the killed run
    ref_paths = [r["path"] for r in reference]
    got = [r["path"] for r in rows]
    assert ref_paths[0] == str(late) and got.count(str(late)) == 1 and got[0] != str(late)
    assert [p for p in got if p != str(late)] == ref_paths[1:]
    reference = {r["path"]: r for r in reference}
    for a in rows:
        b = reference[a["path"]]
        assert a["status"] == b["status"] == "ok"
        assert a["score_text"] == pytest.approx(b["score_text"], abs=1e-6)
    assert not Path(str(out) + ".partial.jsonl").exists()
    # resuming a complete output scores nothing again
    assert main(args + ["--out", str(out), "--resume"]) == 0
    assert len(_read(out)) == len(reference)


@pytest.mark.parametrize("ext", [".npy", ".safetensors"])
def test_save_embeddings(tree, fake, tmp_path, ext):
    root, good, bad = tree
    out = tmp_path / "s.csv"
    emb_path = tmp_path / f"e{ext}"
    args = [str(root / "good"), str(bad["zero.png"]), str(bad["cmyk.jpg"]), "--out", str(out),
            "--save-embeddings", str(emb_path), "--batch-size", "4"]
    assert main(args) == 3
    rows = _read(out)
    ok_paths = [r["path"] for r in rows if r["status"] == "ok"]
    names = (tmp_path / "e.paths.txt").read_text().splitlines()
    assert names == ok_paths  # same order as the scores, failed rows skipped
    if ext == ".npy":
        emb = np.load(emb_path)
    else:
        from safetensors.numpy import load_file
        emb = load_file(str(emb_path))["embeddings"]
    from PIL import Image
    for p, e in zip(names, emb):
        x = np.asarray(Image.open(p).convert("RGB").resize((8, 8), Image.BILINEAR), np.float64) / 255
        x = x.transpose(2, 0, 1).reshape(3, -1)
        np.testing.assert_allclose(e, np.concatenate([x.mean(-1), x.std(-1)]), atol=1e-6)
    # resume after a kill that left the embeddings journal one batch behind the table
    raw = Path(str(emb_path) + ".partial")
    assert main(args + ["--overwrite"]) == 3
    # rebuild the killed state: table complete, embeddings journal holding 3 rows
    emb_full = np.load(emb_path) if ext == ".npy" else load_file(str(emb_path))["embeddings"]
    emb_path.unlink()
    raw.write_bytes(emb_full[:3].astype("<f4").tobytes() + b"\x01\x02")
    (tmp_path / "e.paths.txt").write_text("\n".join(names[:3]) + "\n" + names[3][:4])
    assert main(args + ["--resume"]) == 3  # zero.png retried, still failing
    rows2 = _read(out)
    assert sorted(r["path"] for r in rows2) == sorted(r["path"] for r in rows)
    names2 = (tmp_path / "e.paths.txt").read_text().splitlines()
    assert names2 == [r["path"] for r in rows2 if r["status"] == "ok"] and sorted(names2) == sorted(names)
    emb2 = np.load(emb_path) if ext == ".npy" else load_file(str(emb_path))["embeddings"]
    by_name = dict(zip(names, emb_full))
    np.testing.assert_array_equal(emb2, np.stack([by_name[n] for n in names2]))


# ============================================================ part 2: real bundle, console script
def _quasar(*args, stdin=None, cwd=None, timeout=300):
    return subprocess.run([str(QUASAR), "score", *map(str, args)], input=stdin, capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def test_console_script_usage_errors(tmp_path):
    img = tmp_path / "a.png"
    from PIL import Image
    Image.new("RGB", (8, 8)).save(img)
    (tmp_path / "notabundle").mkdir()
    for args in ([img, "--model", "nope.nope"], [img, "--bundle", tmp_path / "notabundle"],
                 [img, "--bogus-flag"], [], [tmp_path / "notabundle"], [img, "--resolution", "300"]):
        r = _quasar(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "error" in r.stderr


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    good = hostile.write_good_tree(root / "good")
    bad = hostile.write_hostile(root / "hostile")
    return root, good, bad


def test_console_script_matches_python_api(rn50_nopos_bundle, real_tree, tmp_path):
    """Good files score exactly as Scorer.score; hostile ones get their reason; exit 3.
    Also: several positionals, '-' (stdin), --batch_size spelling, a flag before inputs."""
    from quasar.runtime.scorer import Scorer

    root, good, bad = real_tree
    out = tmp_path / "s.jsonl"
    stdin = "".join(f"{p}\n" for p in sorted(bad.values()))
    r = _quasar("--quiet", root / "good", "-", "--bundle", rn50_nopos_bundle, "--batch_size", 5,
                "--workers", 2, "--out", out, stdin=stdin)
    assert r.returncode == 3, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["path"] for x in rows] == [str(p) for p in good] + [str(p) for p in sorted(bad.values())]
    ok_paths = [str(p) for p in good] + [str(bad[n]) for n in hostile.GOOD_HOSTILE]
    api = Scorer.from_bundle(rn50_nopos_bundle).score(ok_paths)
    by_path = {x["path"]: x for x in rows}
    for p, v in zip(ok_paths, api):
        assert by_path[p]["status"] == "ok"
        assert by_path[p]["score_text"] == pytest.approx(float(v), abs=1e-6)
    for name, statuses in hostile.BAD_HOSTILE.items():
        x = by_path[str(bad[name])]
        assert x["status"] in statuses and x["score_text"] is None and name in x["error"], x


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    from PIL import Image
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(120):
        h, w = (48, 64) if i % 3 else (64, 40)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def _count_rows(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n") - (1 if path.suffix == ".csv" else 0)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("ext", [".csv", ".parquet"])
def test_kill_and_resume_equals_uninterrupted(rn50_nopos_bundle, many_images, tmp_path, ext):
    common = [many_images, "--bundle", rn50_nopos_bundle, "--resolution", "native", "--batch-size",
              2, "--workers", 1, "--threads", 1, "--quiet"]
    full, part = tmp_path / f"full{ext}", tmp_path / f"part{ext}"
    emb = ["--save-embeddings", tmp_path / "full.npy"] if ext == ".parquet" else []
    assert _quasar(*common, "--out", full, *emb).returncode == 0

    emb = ["--save-embeddings", tmp_path / "part.npy"] if ext == ".parquet" else []
    journal = part if ext == ".csv" else Path(str(part) + ".partial.jsonl")
    proc = subprocess.Popen([str(QUASAR), "score", *map(str, common), "--out", str(part), *map(str, emb)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while _count_rows(journal) < 10 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    n_before = _count_rows(journal)
    assert 10 <= n_before < 120
    if ext == ".parquet":
        assert not part.exists()  # only the journal: the Parquet file is written at the end

    r = _quasar(*common, "--out", part, "--resume", *emb)
    assert r.returncode == 0, r.stderr
    from quasar.runtime.writers import read_table
    a, b = read_table(str(part)), read_table(str(full))
    assert [x["path"] for x in a] == [x["path"] for x in b]  # each input once, in order
    assert len(a) == 120 and all(x["status"] == "ok" for x in a)
    np.testing.assert_allclose([x["score_text"] for x in a], [x["score_text"] for x in b], atol=1e-6)
    if ext == ".parquet":
        assert (tmp_path / "part.paths.txt").read_text() == (tmp_path / "full.paths.txt").read_text()
        np.testing.assert_allclose(np.load(tmp_path / "part.npy"), np.load(tmp_path / "full.npy"),
                                   rtol=1e-5, atol=1e-5)


def test_parquet_without_pyarrow_gives_install_hint(tree, fake, tmp_path, monkeypatch, capsys):
    root, good, _ = tree
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert main([str(good[0]), "--out", str(tmp_path / "x.parquet")]) == 2
    assert 'pip install "quasar-iqa[parquet]"' in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_score_body_functions_stay_short():
    """Issue 18: no function over 60 lines in the score command's body and the Ray engine
    (counted on the source, docstrings included)."""
    import ast

    root = Path(__file__).resolve().parents[2] / "runtime"
    files = [f for f in [root / "cli.py", root / "job.py", root / "ray.py"] if f.exists()]
    files += sorted((root / "ray").glob("*.py"))
    long = []
    for f in files:
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if n.end_lineno - n.lineno + 1 > 60:
                    long.append(f"{f.name}:{n.name} {n.end_lineno - n.lineno + 1} lines")
    assert not long, long


def test_python_callers_are_checked_against_the_option_declarations(tree, fake, capsys):
    """Issue 18: runtime/cli.py has no checks of its own; a Python caller's values are checked
    against the declarations of `quasar score` (choices from quasar/constants.py, ranges)."""
    from quasar.errors import UsageError

    root, good, bad = tree
    one = str(good[0])
    for kw, msg in [({"batch_size": 0}, "--batch-size: must be at least 1, got 0"),
                    ({"workers": -2}, "--workers: must be at least 1, got -2"),
                    ({"max_pixels": -1}, "--max-pixels: must be at least 0, got -1"),
                    ({"device": "tpu"}, "--device: must be one of auto, cpu, cuda, got 'tpu'"),
                    ({"resolution": 300}, "--resolution: must be one of 224, 512, native, "
                                          "got '300'"),
                    ({"engine": "spark"}, "--engine: must be one of local, ray, got 'spark'"),
                    ({"decode_cpus": 0}, "--decode-cpus: must be greater than 0, got 0"),
                    ({"batch_size": 1.5}, "--batch-size: "),
                    ({"resume": True, "overwrite": True}, "exclude each other")]:
        with pytest.raises(UsageError, match=msg.replace("(", r"\(")):
            cli.score(one, **kw)
    # converted as on the command line: "8" -> 8, "CPU" -> "cpu", 224 -> "224", a Path
    assert cli.score(Path(one), batch_size="8", device="CPU", resolution=224, quiet=True) == 0
    s, kw = fake[-1]
    assert (kw["batch_size"], kw["device"], kw["resolution"]) == (8, "cpu", "224")
    capsys.readouterr()
