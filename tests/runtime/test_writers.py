"""Score tables (CSV / JSONL / Parquet) and embeddings files: round trip, torn tails, resume."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from quasar.runtime.writers import (EmbeddingsWriter, OutputError, Row, ScoreTable, output_format,
                                    paths_sidecar, read_table, table_columns)

ANCHORS = ["text", "kadis"]


def _rows(n, start=0, fail_every=0):
    rows = []
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        if fail_every and i % fail_every == 0:
            rows.append(Row(f"img,{i} \"q\".png", {a: float("nan") for a in ANCHORS}, "decode_error",
                            f"img{i}: broken\nsecond line"))
        else:
            rows.append(Row(f"img,{i} \"q\".png", {a: float(rng.random()) for a in ANCHORS}))
    return rows


def _independent_read(path):
    """Read a table without quasar's reader (csv / json / pyarrow directly)."""
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.reader(f))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import pyarrow.parquet as pq
    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_round_trip(tmp_path, ext):
    out = tmp_path / f"scores{ext}"
    rows = _rows(25, fail_every=7)
    t = ScoreTable(str(out), ANCHORS)
    t.open()
    t.write(rows[:10])
    t.write(rows[10:])
    t.close()
    raw = _independent_read(out)
    if ext == ".csv":
        assert raw[0] == table_columns(ANCHORS) == ["path", "score_text", "score_kadis", "status", "error"]
        raw = [dict(zip(raw[0], r)) for r in raw[1:]]
    assert [r["path"] for r in raw] == [r.path for r in rows]
    for r, d in zip(rows, raw):
        assert d["status"] == r.status
        for a in ANCHORS:
            v = d[f"score_{a}"]
            if r.status == "ok":
                assert float(v) == r.scores[a]  # exact: shortest round-trip repr
            else:
                assert v in ("", None)
        if r.status != "ok":
            assert d["error"] == " ".join(r.error.split())  # one line
    assert not (tmp_path / "scores.parquet.partial.jsonl").exists()
    assert [d["path"] for d in read_table(str(out))] == [r.path for r in rows]


def test_unknown_extension():
    with pytest.raises(OutputError, match="unknown output format"):
        output_format("x.xlsx")
    assert output_format("X.CSV") == "csv" and output_format("a.ndjson") == "jsonl"


@pytest.mark.parametrize("ext", [".csv", ".jsonl"])
def test_torn_tail_is_cut_and_failed_rows_dropped_on_resume(tmp_path, ext):
    out = tmp_path / f"s{ext}"
    rows = _rows(12, fail_every=5)  # rows 0, 5, 10 failed
    t = ScoreTable(str(out), ANCHORS)
    t.open()
    t.write(rows)
    t.close()
    full = out.read_bytes()
    last_line_start = full.rstrip(b"\n").rfind(b"\n") + 1
    out.write_bytes(full[: last_line_start + 9])  # torn: kill mid-line
    t2 = ScoreTable(str(out), ANCHORS)
    ok, other = t2.scan_ok()
    expect_ok = {r.path for r in rows[:-1] if r.status == "ok"}
    assert ok == expect_ok and other == 3
    t2.compact(ok)
    t2.open()
    t2.write(rows[-1:])
    t2.close()
    back = read_table(str(out))
    assert [d["path"] for d in back] == [r.path for r in rows[:-1] if r.status == "ok"] + [rows[-1].path]
    assert all(d["status"] == "ok" for d in back)


def test_resume_refuses_other_columns_and_corruption(tmp_path):
    out = tmp_path / "s.csv"
    t = ScoreTable(str(out), ANCHORS)
    t.open()
    t.write(_rows(3))
    t.close()
    with pytest.raises(OutputError, match="columns"):
        ScoreTable(str(out), ["text"]).scan_ok()
    lines = out.read_text().splitlines(keepends=True)
    lines[2] = "garbage\n"  # a complete bad line in the middle: not a torn tail
    out.write_text("".join(lines))
    with pytest.raises(OutputError, match="malformed"):
        ScoreTable(str(out), ANCHORS).scan_ok()
    j = tmp_path / "s.jsonl"
    j.write_text('{"path": "a", "status": "ok"}\nnot json\n{"x": 1}\n')
    with pytest.raises(OutputError):
        ScoreTable(str(j), ANCHORS).scan_ok()


def test_parquet_resume_from_journal_and_from_finished_file(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "s.parquet"
    rows = _rows(10, fail_every=4)
    t = ScoreTable(str(out), ANCHORS)
    t.open()
    t.write(rows[:6])
    t.close(complete=False)  # killed: only the journal exists
    assert not out.exists() and (tmp_path / "s.parquet.partial.jsonl").exists()
    t2 = ScoreTable(str(out), ANCHORS)
    ok, _ = t2.scan_ok()
    assert ok == {r.path for r in rows[:6] if r.status == "ok"}
    t2.compact(ok)
    t2.open()
    t2.write([r for r in rows if r.path not in ok])
    t2.close()
    got = pq.read_table(out).to_pylist()
    assert sorted(d["path"] for d in got) == sorted(r.path for r in rows)
    # resuming a finished Parquet file: its rows seed a journal, nothing is lost
    t3 = ScoreTable(str(out), ANCHORS)
    ok3, other3 = t3.scan_ok()
    assert ok3 == {r.path for r in rows if r.status == "ok"} and other3 == 3
    t3.compact(ok3)
    t3.open()
    t3.close()
    assert {d["path"] for d in pq.read_table(out).to_pylist()} == ok3


@pytest.mark.parametrize("ext", [".npy", ".safetensors"])
def test_embeddings_file_and_resume(tmp_path, ext):
    path = tmp_path / f"emb{ext}"
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((9, 5)).astype(np.float32)
    paths = [f"p{i}.png" for i in range(9)]
    w = EmbeddingsWriter(str(path), 5, {"model": "m"})
    w.write(paths[:4], emb[:4])
    w.close(complete=False)
    # torn raw tail + torn paths line, as a kill could leave them
    with open(str(path) + ".partial", "ab") as f:
        f.write(b"\x00" * 7)
    with open(paths_sidecar(str(path)), "a") as f:
        f.write("p4.pn")
    w2 = EmbeddingsWriter(str(path), 5, {"model": "m"})
    jp = w2.journal_paths()
    assert jp == paths[:4]
    w2.compact(jp, set(paths[:4]) - {"p1.png"})  # p1 had no ok score row: dropped, redone
    w2.write([paths[1]] + paths[4:], np.concatenate([emb[1:2], emb[4:]]))
    w2.close()
    order = [0, 2, 3, 1, 4, 5, 6, 7, 8]
    if ext == ".npy":
        got = np.load(path)
    else:
        from safetensors.numpy import load_file
        from safetensors import safe_open
        got = load_file(str(path))["embeddings"]
        with safe_open(str(path), "np") as f:
            assert f.metadata()["model"] == "m"
            assert f.metadata()["paths_file"] == "emb.paths.txt"
    np.testing.assert_array_equal(got, emb[order])
    assert (tmp_path / "emb.paths.txt").read_text().splitlines() == [paths[i] for i in order]
    assert not (tmp_path / f"emb{ext}.partial").exists()
    # a finished file can be resumed too
    w3 = EmbeddingsWriter(str(path), 5)
    assert w3.journal_paths() == [paths[i] for i in order]
    w3.close()
    np.testing.assert_array_equal(np.load(path) if ext == ".npy" else load_file(str(path))["embeddings"], emb[order])
