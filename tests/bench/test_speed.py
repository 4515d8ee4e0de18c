"""`quasar bench` runs end to end and reports both paths (a smoke test: no timing asserted)."""
from __future__ import annotations

import pytest


def test_bench_smoke(rn50_nopos_bundle, tmp_path):
    pytest.importorskip("torch")
    from quasar.bench.speed import bench

    out = tmp_path / "table.md"
    report = bench(rn50_bundle=str(rn50_nopos_bundle), cases="rn50-224", n_images=2,
                   batch_size=2, repeats=1, threads=1, out=str(out), workdir=str(tmp_path / "w"))
    text = out.read_text()
    assert report.strip() == text.strip()
    rows = [line for line in text.splitlines() if line.startswith("| rn50-224 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["torch", "runtime", "**runtime / torch**"]
    for row in rows[:2]:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[3]) > 0 and float(cells[5]) > 0  # images/s, cold start
    with pytest.raises(ValueError, match="unknown cases"):
        bench(cases="rn50-999")
