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
    first, bound = text.split("Against the machine's bound", 1)
    rows = [line for line in first.splitlines() if line.startswith("| rn50-224 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["torch", "runtime", "**runtime / torch**"]
    brows = {r[1]: r for r in _parse(bound[bound.index("| case |"):].split("\n\n")[0])}
    assert set(brows) == {"torch", "runtime"} and brows["torch"][8] == "-"
    assert float(brows["runtime"][3]) > 0 and brows["runtime"][8].endswith("%")
    for row in rows[:2]:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[3]) > 0 and float(cells[5]) > 0  # images/s, cold start
    with pytest.raises(ValueError, match="unknown cases"):
        bench(cases="rn50-999")


# ------------------------------------------------------------------ the bound (issue 21)

def _parse(table: str):
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln]
    return [[c.strip() for c in r.split("|")[1:-1]] for r in rows[1:]]


def test_bound_arithmetic_against_an_independent_computation():
    """Synthetic core times (no timing): bound = cores / (decode + inference core-s), capped
    by the model-only rate; e2e % of bound; recomputed here from first principles."""
    from quasar.bench.speed import format_bound_table, speed_bound

    cases = [  # cores, decode s/img, infer s/img, model-only img/s, e2e img/s
        (2, 0.009, 0.050, 45.0, 30.0),     # cores limit: 2 / 0.059 = 33.9 img/s
        (2, 0.009, 0.050, 20.0, 19.0),     # model-only 20 img/s is below 33.9: the cap
        (16, 0.004, 0.120, 200.0, 100.0),  # 16 / 0.124 = 129.0
        (1, 0.25, 0.25, float("nan"), 1.5),  # no model-only figure: cores only, 2 img/s
    ]
    rows = []
    for cores, d, i, m, e2e in cases:
        shared = cores / (d + i)
        want = min(shared, m) if m == m else shared
        got, limit = speed_bound(cores, d, i, m)
        assert got == pytest.approx(want, rel=1e-12)
        assert limit == ("model" if m == m and m < shared else "cores")
        rows.append(("rn50-224", f"p{cores}", {"cores": cores, "decode_core_s": d,
                                               "infer_core_s": i, "model_img_s": m}, e2e))
    rows.append(("rn50-224", "torch", {}, 5.0))
    parsed = _parse(format_bound_table(rows))
    assert len(parsed) == len(cases) + 1
    for (cores, d, i, m, e2e), cells in zip(cases, parsed):
        shared = cores / (d + i)
        bound = min(shared, m) if m == m else shared
        assert cells[2] == str(cores)
        assert float(cells[3]) == pytest.approx(1e3 * d, abs=0.05)
        assert float(cells[4]) == pytest.approx(1e3 * i, abs=0.05)
        assert float(cells[6].split()[0]) == pytest.approx(bound, abs=0.05)
        assert float(cells[7]) == pytest.approx(e2e, abs=0.05)
        assert float(cells[8].rstrip("%")) == pytest.approx(100 * e2e / bound, abs=0.5)
    assert parsed[0][6].endswith("(cores)") and parsed[1][6] == "20.0 (model)"
    assert parsed[1][8] == "95%" and parsed[3][6] == "2.0 (cores)" and parsed[3][8] == "75%"
    assert parsed[-1][1] == "torch" and parsed[-1][8] == "-"


def test_median_core_and_core_times_on_a_real_scorer(tmp_path):
    import os
    import sys

    from PIL import Image

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "runtime"))
    import rt_helpers
    from quasar.bench.speed import core_times, median_core
    from quasar.runtime.scorer import Scorer

    rounds = [{"a": 1.0, "b": 9.0}, {"a": 3.0, "b": 1.0}, {"a": 2.0, "b": 5.0}]
    assert median_core(rounds) == {"a": 2.0, "b": 5.0} and median_core([]) == {}
    b = rt_helpers.write_tiny_bundle(tmp_path / "b")
    files = []
    for k in range(3):
        p = tmp_path / f"{k}.jpg"
        Image.new("RGB", (320, 240), (40 * k, 90, 200)).save(p)
        files.append(str(p))
    c = core_times(Scorer.from_bundle(b, device="cpu"), files, batch_size=2)
    assert c["cores"] == len(os.sched_getaffinity(0))
    assert c["decode_core_s"] > 0 and c["infer_core_s"] >= 0 and c["model_img_s"] > 0


def test_variant_report_bound_rows_use_round_medians():
    """The variant table's bound section: per path, medians over rounds of each core figure
    and of e2e, then the bound - recomputed here with numpy."""
    import numpy as np

    from quasar.bench.speed import VariantRun, format_variant_report
    from quasar.runtime.agreement import Gate

    core = [{"cores": 2.0, "decode_core_s": d, "infer_core_s": i, "model_img_s": m}
            for d, i, m in ((0.010, 0.060, 40.0), (0.030, 0.040, 35.0), (0.020, 0.050, 50.0))]
    runs = [VariantRun("rn50-224", "torch", "fp32", "torch", [2.0, 3.0, 2.5], [], [1, 1, 1],
                       [9, 9, 9]),
            VariantRun("rn50-224", "int8-openvino", "int8", "openvino", [20.0, 26.0, 24.0],
                       [38.0, 40.0, 39.0], [1, 1, 1], [9, 9, 9], core=core),
            VariantRun("rn50-224", "fp16-onnxruntime (not built: needs CUDA)", "fp16",
                       "onnxruntime", [], [], [], [])]
    text = format_variant_report(runs, "m", "f", 8, 2, 3, Gate())
    table = text[text.index("| case | path | cores"):]
    rows = {r[1]: r for r in _parse(table)}
    assert set(rows) == {"torch", "int8-openvino"}  # nothing measured: no bound row
    d = np.median([c["decode_core_s"] for c in core])
    i = np.median([c["infer_core_s"] for c in core])
    m = np.median([c["model_img_s"] for c in core])
    bound = min(2.0 / (d + i), m)
    r = rows["int8-openvino"]
    assert float(r[3]) == pytest.approx(1e3 * d, abs=0.05)
    assert float(r[4]) == pytest.approx(1e3 * i, abs=0.05)
    assert float(r[6].split()[0]) == pytest.approx(bound, abs=0.05)
    assert float(r[8].rstrip("%")) == pytest.approx(100 * 24.0 / bound, abs=0.5)


def test_interleaved_timing_ranks_by_speed():
    """Two runs of known cost (sleeps of 4 and 12 ms per call) timed in alternation."""
    import time as _time

    from quasar.export.accuracy_control import interleaved_img_s

    import numpy as np
    batches = [np.zeros((2, 1)), np.zeros((3, 1))]
    fast, slow = interleaved_img_s([lambda b: _time.sleep(0.004), lambda b: _time.sleep(0.012)],
                                   batches, min_time=0.05)
    assert fast <= 5 / 0.008 * 1.001 and slow <= 5 / 0.024 * 1.001  # never above the cost
    assert fast > 2 * slow



def test_timed_warms_up_one_whole_pass_and_reports_true_medians(monkeypatch):
    """On a fake clock: the warm-up covers every file once, untimed; of two passes (2 s and
    6 s) the median is 4 s (not the slower one); batch latency the median of 1,1,3,3."""
    from types import SimpleNamespace

    from quasar import timing

    clock = [0.0]
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    costs = iter([50.0, 50.0, 1.0, 1.0, 3.0, 3.0])  # warm-up pass, pass 1, pass 2
    seen = []

    def run(batch):
        seen.append(list(batch))
        clock[0] += next(costs)

    out = timing.timed(run, ["a", "b", "c", "d"], 2, first=0.0, repeats=2)
    assert seen[:2] == [["a", "b"], ["c", "d"]] and len(seen) == 6
    assert out["images_per_s"] == pytest.approx(4 / 4.0)
    assert out["batch_latency_s"] == pytest.approx(2.0)


def test_model_only_runs_the_pass_own_inputs_as_distinct_batches(tmp_path):
    """core_times' inference runs on the files' own preprocessed pixels (compared with
    load_image called here), one new array per batch, grouped as the engine groups them,
    cycled until at least ``min_images`` images."""
    import os
    import sys

    import numpy as np
    from PIL import Image

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "runtime"))
    import rt_helpers
    from quasar.bench.speed import core_times
    from quasar.runtime.scorer import Scorer

    b = rt_helpers.write_tiny_bundle(tmp_path / "b")
    files = []
    for k in range(5):
        p = tmp_path / f"{k}.jpg"
        Image.new("RGB", (320 - 16 * k, 240), (40 * k, 90, 200)).save(p)
        files.append(str(p))
    s = Scorer.from_bundle(b, device="cpu")
    calls = []
    orig = s.encoder.run
    s.encoder.run = lambda x: (calls.append(x), orig(x))[1]
    c = core_times(s, files, batch_size=2, min_images=12)
    want = np.stack([s.load_image(f) for f in files])
    first = calls[1:4]  # calls[0] warms the encoder up
    assert [len(x) for x in first] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(first), want)
    assert len({id(x) for x in first}) == 3
    assert sum(len(x) for x in calls[1:]) >= 12 and c["batch_s"] > 0


def test_variants_table_measures_16_native_images_unless_told(monkeypatch):
    """`quasar bench --variants` without --native-images runs rn50-native on 16 photos (the
    plain table's 4 would leave a pass of two batches, whose decodes barely overlap)."""
    from quasar.bench import speed

    seen = []
    monkeypatch.setattr(speed, "bench_variants", lambda **kw: seen.append(kw) or "")
    speed.bench(variants="int8-openvino")
    speed.bench(variants="int8-openvino", native_images=6)
    assert [kw["native_images"] for kw in seen] == [16, 6]
