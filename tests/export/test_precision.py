"""``quasar optimize``: the agreement report (against scipy / numpy), the gate (refused ->
bundle bytes unchanged; thresholds honoured), the variant written atomically and used by the
runtime, the manifest round-trip, fast decode. Real files, real quantisers, no mocks."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "runtime"))
import rt_helpers  # noqa: E402

from quasar.errors import VariantError  # noqa: E402
from quasar.export.precision import (Gate, agreement_report, build_and_measure,  # noqa: E402
                                     optimize, split_images)
from quasar.bundle.manifest import BundleManifest, VariantInfo  # noqa: E402
from quasar.bundle import load_bundle  # noqa: E402

pytest.importorskip("onnx")
scipy_stats = pytest.importorskip("scipy.stats")


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def tiny_master(tmp_path_factory):
    return rt_helpers.write_tiny_bundle(tmp_path_factory.mktemp("tiny") / "master")


@pytest.fixture
def tiny(tiny_master, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(tiny_master, out)
    return out


def snapshot(root: Path) -> dict:
    """Every file under ``root`` (and the siblings' names) -> its bytes' sha256."""
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(root.rglob("*")) if p.is_file()}
    return {"files": files, "siblings": sorted(p.name for p in root.parent.iterdir())}


def _noise(scale):
    def f(e):
        rng = np.random.default_rng(0)
        return e + scale * np.linalg.norm(e, axis=1, keepdims=True) * \
            rng.standard_normal(e.shape) / np.sqrt(e.shape[1])
    return f


# ------------------------------------------------------------------ the report

def _ref_scores(emb, a):
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    logits = x @ a.T / 0.07
    return np.exp(logits[:, 0]) / np.exp(logits).sum(1)


def test_agreement_report_matches_scipy_and_numpy():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 16))
    var = ref + 0.05 * rng.standard_normal(ref.shape)
    a = rng.standard_normal((2, 16))
    anchors = {"s": (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)}
    r = agreement_report(ref, var, anchors, Gate(0.5, 0.5))
    cos = np.array([np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)
                    for u, v in zip(ref, var)])
    assert r["images"] == 50
    assert r["cosine_min"] == pytest.approx(cos.min(), abs=1e-12)
    assert r["cosine_median"] == pytest.approx(np.median(cos), abs=1e-12)
    s0 = _ref_scores(ref, anchors["s"].astype(np.float64))
    s1 = _ref_scores(var, anchors["s"].astype(np.float64))
    d = np.abs(s1 - s0)
    got = r["anchor_sets"]["s"]
    assert got["max_abs_dscore"] == pytest.approx(d.max(), abs=1e-9)
    assert got["p99_abs_dscore"] == pytest.approx(np.percentile(d, 99), abs=1e-9)
    assert got["srcc"] == pytest.approx(scipy_stats.spearmanr(s0, s1)[0], abs=1e-12)
    assert got["krcc"] == pytest.approx(scipy_stats.kendalltau(s0, s1)[0], abs=1e-12)
    assert r["passed"] == (got["srcc"] >= 0.5 and got["p99_abs_dscore"] <= 0.5)
    strict = agreement_report(ref, var, anchors, Gate(0.9999999, 1.0))
    assert not strict["passed"] and "SRCC" in strict["failures"][0]


def test_constant_scores_fail_the_gate():
    ref = np.ones((10, 4))
    r = agreement_report(ref, ref.copy(), {"s": np.eye(4, dtype=np.float32)[:2]})
    assert r["anchor_sets"]["s"]["srcc"] is None and not r["passed"]


def test_split_is_disjoint_and_seeded():
    paths = [f"/x/{i}.jpg" for i in range(31)]
    cal, hold = split_images(paths, 0.5, seed=3)
    assert not set(cal) & set(hold) and sorted(cal + hold) == sorted(paths)
    assert len(hold) == 16
    assert split_images(list(reversed(paths)), 0.5, seed=3) == (cal, hold)
    assert split_images(paths, 0.5, seed=4) != (cal, hold)


# ------------------------------------------------------------------ the gate on a bundle

def test_disagreeing_variant_is_refused_and_bundle_unchanged(tiny, photos, capsys):
    before = snapshot(tiny)
    res = build_and_measure(tiny, precision="int8", backend="onnxruntime",
                            calibration=str(photos), transform=_noise(0.5))
    assert not res.passed
    report_path = tiny.parent / "bundle.int8-onnxruntime.refused.json"
    assert res.report_path == report_path
    assert json.loads(report_path.read_text()) == json.loads(json.dumps(res.report))
    report_path.unlink()
    assert snapshot(tiny) == before  # bytes, names, and no temp dirs left beside it
    # the command prints the report and exits 4, bundle still unchanged
    from quasar.cli import run

    code = run(["optimize", str(tiny), "--precision", "int8", "--backend", "onnxruntime",
                "--calibration", str(photos), "--min-srcc", "0.9999999",
                "--max-p99-dscore", "0"])
    assert code == 4
    out = capsys.readouterr()
    assert "REFUSED" in out.out and "bundle" in out.err and "unchanged" in out.err
    report_path.unlink()
    assert snapshot(tiny) == before


def test_thresholds_are_honoured(tiny, photos):
    loose = build_and_measure(tiny, precision="int8", backend="onnxruntime",
                              calibration=str(photos), gate=Gate(-1.0, 1.0), write=False)
    assert loose.passed
    p99 = max(s["p99_abs_dscore"] for s in loose.report["anchor_sets"].values())
    srcc = min(s["srcc"] for s in loose.report["anchor_sets"].values())
    assert p99 > 0
    tight_p = build_and_measure(tiny, precision="int8", backend="onnxruntime",
                                calibration=str(photos), gate=Gate(-1.0, p99 / 2), write=False)
    assert not tight_p.passed and "p99" in " ".join(tight_p.report["failures"])
    just = build_and_measure(tiny, precision="int8", backend="onnxruntime",
                             calibration=str(photos), gate=Gate(srcc, p99), write=False)
    assert just.passed  # same calibration and images -> same numbers, at the thresholds


def test_passed_variant_is_written_recorded_and_used(tiny, photos):
    from quasar.runtime.scorer import Scorer

    res = build_and_measure(tiny, precision="int8", backend="onnxruntime",
                            calibration=str(photos), gate=Gate(-1.0, 1.0))
    assert res.passed
    b = load_bundle(tiny, verify=True)  # checksums of the new files are in bundle.json
    rec = b.manifest.variants["int8-onnxruntime"]
    import onnxruntime

    assert (rec.precision, rec.backend, rec.kind, rec.device, rec.passed) == \
        ("int8", "onnxruntime", "model", "cpu", True)
    assert "QDQ" in rec.tool and rec.tool_version == onnxruntime.__version__
    assert rec.files[0] == "variants/int8-onnxruntime/encoder.onnx"
    assert json.loads((tiny / "variants/int8-onnxruntime/agreement.json").read_text()) == \
        rec.report
    all_paths = sorted(str(p) for p in photos.iterdir())
    cal, hold = split_images(all_paths, 0.5, 0)
    want = hashlib.sha256("\n".join(sorted(hashlib.sha256(Path(p).read_bytes()).hexdigest()
                                           for p in cal)).encode()).hexdigest()
    assert rec.calibration_sha256 == want and rec.calibration_count == len(cal)
    assert rec.holdout_count == len(hold)

    # the QDQ graph: U8 activations, S8 weights
    import onnx

    m = onnx.load(str(tiny / rec.files[0]))
    inits = {i.name: i for i in m.graph.initializer}
    zps = [n.input[2] for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(inits[z].data_type == onnx.TensorProto.UINT8 for z in zps)
    wq = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
          and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert wq, "weights must be stored as int8"

    fp32 = Scorer.from_bundle(tiny, device="cpu", anchors="all")
    int8 = Scorer.from_bundle(tiny, device="cpu", anchors="all", precision="int8")
    assert int8.run_info["variant"] == "int8-onnxruntime" and fp32.run_info["variant"] is None
    s0, s1 = fp32.score_all(hold), int8.score_all(hold)
    for name in s0:
        d = np.abs(s1[name] - s0[name])
        assert d.max() == pytest.approx(rec.report["anchor_sets"][name]["max_abs_dscore"],
                                        abs=1e-6)

    # auto: only variants gated at the scoring resolution (and only with VNNI for int8)
    from quasar.runtime.backends import cpu_flags, runs_fast

    auto = Scorer.from_bundle(tiny, device="cpu", precision="auto")
    want = "int8-onnxruntime" if runs_fast("int8", cpu_flags(), False) else None
    assert auto.run_info["variant"] == want
    native = Scorer.from_bundle(tiny, device="cpu", precision="auto", resolution="native")
    assert native.run_info["variant"] is None

    # a record whose gate failed is never used, even when hand-edited into the manifest
    d = json.loads((tiny / "bundle.json").read_text())
    d["variants"]["int8-onnxruntime"]["passed"] = False
    (tiny / "bundle.json").write_text(json.dumps(d))
    with pytest.raises(VariantError, match="failed its agreement gate"):
        Scorer.from_bundle(tiny, device="cpu", precision="int8")
    assert Scorer.from_bundle(tiny, device="cpu", precision="auto").run_info["variant"] is None


def test_holdout_must_not_overlap_calibration(tiny, photos):
    with pytest.raises(VariantError, match="shares"):
        build_and_measure(tiny, precision="int8", backend="onnxruntime",
                          calibration=str(photos), holdout=str(photos))


def test_bad_requests(tiny, photos):
    with pytest.raises(VariantError, match="bf16 variant for backend onnxruntime"):
        build_and_measure(tiny, precision="bf16", backend="onnxruntime", calibration=str(photos))
    with pytest.raises(VariantError, match="--calibration"):
        build_and_measure(tiny, precision="int8")
    with pytest.raises(VariantError, match="need >= 1 and >= 8"):
        build_and_measure(tiny, precision="int8", backend="onnxruntime",
                          calibration=sorted(str(p) for p in photos.iterdir())[:6])


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_openvino_variants(tiny, photos, precision):
    pytest.importorskip("openvino")
    if precision == "int8":
        pytest.importorskip("nncf")
    from quasar.runtime.scorer import Scorer

    res = build_and_measure(tiny, precision=precision, backend="openvino",
                            calibration=str(photos), gate=Gate(-1.0, 1.0))
    assert res.passed
    rec = load_bundle(tiny).manifest.variants[f"{precision}-openvino"]
    assert rec.files[:2] == [f"variants/{precision}-openvino/encoder.xml",
                             f"variants/{precision}-openvino/encoder.bin"]
    s = Scorer.from_bundle(tiny, device="cpu", precision=precision)
    assert (s.backend, s.precision) == ("openvino", precision)
    if precision == "bf16":
        assert "bfloat16" in str(s.session.get_property("INFERENCE_PRECISION_HINT")) or \
            str(s.session.get_property("INFERENCE_PRECISION_HINT")) == "bf16"


# ------------------------------------------------------------------ manifest

def test_manifest_round_trip_and_old_bundles(tiny_master):
    d = json.loads((tiny_master / "bundle.json").read_text())
    assert "variants" not in d
    old = BundleManifest.from_dict(d)
    assert old.variants == {}
    assert "variants" not in old.to_dict()  # old bundles are written back byte-compatible
    rec = VariantInfo(precision="int8", backend="openvino",
                      files=["variants/int8-openvino/encoder.xml"], resolution="224",
                      tool="nncf", tool_version="3", calibration_sha256="ab", gate={"min_srcc": 1},
                      passed=True, report={"images": 3, "anchor_sets": {"text": {"srcc": 1.0}}})
    d["variants"] = {"int8-openvino": json.loads(json.dumps(rec.__dict__))}
    m = BundleManifest.from_dict(d)
    assert m.variants["int8-openvino"] == rec
    assert BundleManifest.from_dict(json.loads(m.to_json())) == m
    with pytest.raises(ValueError, match="precision"):
        VariantInfo(precision="int4", backend="x", files=["a"])
    with pytest.raises(ValueError, match="model file"):
        VariantInfo(precision="int8", backend="x")


# ------------------------------------------------------------------ fast decode

def test_fast_decode_is_gated_then_used(tiny, tmp_path):
    pytest.importorskip("skimage")
    from PIL import Image

    from quasar.bench.speed import make_images
    from quasar.runtime.images import ImageLoader
    from quasar.runtime.scorer import Scorer

    big = make_images(tmp_path / "big", 16, size=(1024, 768), varied=True)
    with pytest.raises(VariantError, match="fast decode"):
        Scorer.from_bundle(tiny, device="cpu", fast_decode=True)
    res = build_and_measure(tiny, fast_decode=True, calibration=big, gate=Gate(-1.0, 1.0))
    assert res.passed and res.name == "fast-decode-224"
    rec = load_bundle(tiny).manifest.variants["fast-decode-224"]
    assert rec.kind == "decode" and rec.resolution == "224"
    s = Scorer.from_bundle(tiny, device="cpu", fast_decode=True)
    assert s.run_info["fast_decode"] and s.run_info["variant"] is None
    # DCT scaling: a 1024x768 JPEG is decoded at 512x384 (shortest side still >= 224)
    with Image.open(big[0]) as im:
        im.draft(im.mode, (299, 224))
        assert im.size == (512, 384)
    exact, fast = ImageLoader(s.preprocess_cfg), ImageLoader(s.preprocess_cfg, fast_decode=True)
    a, b = exact(big[0]), fast(big[0])
    assert a.shape == b.shape == (3, 224, 224) and not np.array_equal(a, b)
    png = tmp_path / "x.png"
    Image.open(big[0]).save(png)
    np.testing.assert_array_equal(exact(str(png)), fast(str(png)))  # only JPEG is scaled
    with pytest.raises(VariantError, match="fast decode"):
        Scorer.from_bundle(tiny, device="cpu", fast_decode=True, resolution="native")


# ------------------------------------------------------------------ a real ViT

@pytest.mark.torch
def test_vit_int8_qdq_keeps_attention_in_fp32(vitb32_bundle, tmp_path, photos):
    import onnx

    b = tmp_path / "vit"
    shutil.copytree(vitb32_bundle, b, copy_function=os.link)
    res = build_and_measure(b, precision="int8", backend="onnxruntime", calibration=str(photos),
                            holdout_fraction=0.3, gate=Gate(-1.0, 1.0))
    assert res.passed and res.report["cosine_min"] > 0.99
    m = onnx.load(str(b / "variants/int8-onnxruntime/encoder.onnx"))
    producers = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name for i in m.graph.initializer}
    act_mm = [n for n in m.graph.node if n.op_type == "MatMul" and
              not any(i in inits or (i in producers and producers[i].op_type ==
                                     "DequantizeLinear" and producers[i].input[0] in inits)
                      for i in n.input)]
    assert len(act_mm) == 24  # QK^T and AV in 12 blocks
    for n in act_mm:
        assert all(producers[i].op_type != "DequantizeLinear" for i in n.input if i in producers)
    for n in m.graph.node:  # LayerNorm and Softmax read fp32 activations
        if n.op_type in ("LayerNormalization", "Softmax") and n.input[0] in producers:
            assert producers[n.input[0]].op_type != "DequantizeLinear", n.name


# ------------------------------------------------------------------ CUDA (opt-in)

@pytest.mark.gpu
@pytest.mark.torch
def test_fp16_cuda_variant(vitb32_bundle, tmp_path, photos):
    from quasar.runtime.scorer import Scorer

    b = tmp_path / "vit16"
    shutil.copytree(vitb32_bundle, b, copy_function=os.link)
    res = build_and_measure(b, precision="fp16", calibration=str(photos))
    assert res.passed, res.report
    rec = load_bundle(b).manifest.variants["fp16-onnxruntime"]
    assert rec.device == "cuda"
    s = Scorer.from_bundle(b, precision="fp16")
    assert s.run_info["device"] == "cuda" and s.encoder.io_binding
    auto = Scorer.from_bundle(b, precision="auto")
    assert auto.run_info["variant"] == "fp16-onnxruntime"
    hold = split_images(sorted(str(p) for p in photos.iterdir()), 0.5, 0)[1]
    s0 = Scorer.from_bundle(b, device="cpu").score(hold)
    assert np.percentile(np.abs(s.score(hold) - s0), 99) <= 0.01


def test_score_cli_precision_and_run_record(tiny, photos, tmp_path, capsys):
    import csv

    from quasar.cli import run
    from quasar.runtime.scorer import Scorer

    def main(argv):
        return run(["score", *argv])

    out = tmp_path / "s.csv"
    assert main([str(photos), "--bundle", str(tiny), "--precision", "int8", "--out",
                 str(out), "-q"]) == 2
    assert "no int8 variant" in capsys.readouterr().err and not out.exists()
    assert build_and_measure(tiny, precision="int8", backend="onnxruntime",
                             calibration=str(photos), gate=Gate(-1.0, 1.0)).passed
    assert main([str(photos), "--bundle", str(tiny), "--precision", "int8", "--out",
                 str(out)]) == 0
    assert "precision int8 (int8-onnxruntime" in capsys.readouterr().err
    run = json.loads(Path(f"{out}.run.json").read_text())
    assert (run["precision"], run["backend"], run["variant"]) == \
        ("int8", "onnxruntime", "int8-onnxruntime")
    rows = list(csv.DictReader(out.open()))
    want = Scorer.from_bundle(tiny, device="cpu", precision="int8").score([r["path"] for r in rows])
    np.testing.assert_allclose([float(r["score_text"]) for r in rows], want, atol=1e-9)


# ------------------------------------------------------------------ one writer, no leftovers
# `quasar optimize` in a real process whose variant build pauses (after its work folder
# beside the bundle was made): writes argv[1] when it gets there, sleeps argv[2] seconds.
SLOW_OPTIMIZE = r"""
import sys, time, pathlib
import quasar.export.precision as P
key = ("int8", "onnxruntime")
orig = P.BUILDERS[key]
def slow(bundle, cal, work, *a, **k):
    (work / "encoder.onnx").write_bytes(b"\0" * (1 << 20))  # a partial build
    pathlib.Path(sys.argv[1]).write_text(str(work))
    time.sleep(float(sys.argv[2]))
    return orig(bundle, cal, work, *a, **k)
P.BUILDERS[key] = slow
from quasar.cli import main
main(sys.argv[3:])
"""


def _optimize_cmd(bundle, photos, *extra):
    return ["optimize", str(bundle), "--precision", "int8", "--backend", "onnxruntime",
            "--calibration", str(photos), *extra]


def _slow_optimize(tmp_path, bundle, photos):
    import subprocess

    marker = tmp_path / "marker" / "building"  # not beside the bundle
    marker.parent.mkdir(exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", SLOW_OPTIMIZE, str(marker), "60",
                          *_optimize_cmd(bundle, photos)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    import time

    t0 = time.monotonic()
    while not marker.exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() - t0 < 120
        time.sleep(0.05)
    work = Path(marker.read_text())
    assert work.is_dir() and work.parent == bundle.parent
    return p, work


def _hidden(bundle):
    return sorted(p.name for p in bundle.parent.iterdir() if p.name.startswith("."))


def test_killed_optimize_leaves_nothing_after_the_next_command(tiny, photos, tmp_path):
    """Issue 17 #23: a SIGKILLed `quasar optimize` left its work folder (255-592 MB on real
    models) beside the bundle forever. Its name carries the pid; the next command that
    opens the bundle (here `quasar score`) removes it."""
    import signal
    import subprocess

    before = snapshot(tiny)["files"]
    p, work = _slow_optimize(tmp_path, tiny, photos)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert work.is_dir() and _hidden(tiny)  # what a SIGKILL leaves
    out = tmp_path / "out" / "s.csv"
    r = subprocess.run([sys.executable, "-m", "quasar", "score", str(photos), "--bundle",
                        str(tiny), "--out", str(out), "-q"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert not work.exists() and _hidden(tiny) == []
    assert snapshot(tiny)["files"] == before


def test_terminated_optimize_cleans_up_at_once(tiny, photos, tmp_path):
    """SIGTERM (a scheduler's stop, `kill`): the work folder goes before the process exits."""
    import signal

    before = snapshot(tiny)
    p, work = _slow_optimize(tmp_path, tiny, photos)
    os.kill(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert not work.exists() and _hidden(tiny) == []
    assert not (tiny.parent / "bundle.lock").exists()
    assert snapshot(tiny)["files"] == before["files"]  # bundle bytes unchanged


def test_second_writer_is_refused_at_once_naming_the_holder(tiny, photos, tmp_path):
    """One lock discipline: while one `quasar optimize` edits a bundle, a second one (or a
    `quasar anchors`) is refused at once, naming the first's process; the first completes."""
    import subprocess
    import time

    before = snapshot(tiny)["files"]
    p, work = _slow_optimize(tmp_path, tiny, photos)
    try:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "quasar", *_optimize_cmd(tiny, photos)],
                           capture_output=True, text=True, timeout=300)
        took = time.monotonic() - t0
        assert r.returncode == 2, r.stderr
        assert f"process {p.pid}" in r.stderr and str(tiny.resolve()) in r.stderr
        assert took < 30  # refused at once, not after the holder's 60 s
        assert snapshot(tiny)["files"] == before
    finally:
        p.kill()
        p.wait()


def test_optimize_prints_each_message_once_and_only_ours(tmp_path, photos):
    """Issue 18 #9: the random-weights banner was printed three times (once with a temp
    path), torch's "No CUDA runtime" and NNCF's progress bars and warnings on every run.
    Now: the banner once, no library output unless --verbose."""
    import subprocess

    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    b = rt_helpers.write_tiny_bundle(tmp_path / "rand", random_init=True)
    cmd = [sys.executable, "-m", "quasar", "optimize", str(b), "--precision", "int8",
           "--backend", "openvino", "--calibration", str(photos), "--min-srcc", "-1",
           "--max-p99-dscore", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    text = r.stdout + r.stderr
    assert text.count("RANDOMLY INITIALISED") == 1, text
    assert ".optimize" not in text and ".edit" not in text  # no temp path named
    for noise in ("No CUDA runtime", "Statistics collection", "nncf", "NNCF", "Warning"):
        assert noise not in text, (noise, text)
    assert "variant int8-openvino written" in r.stdout
    b = rt_helpers.write_tiny_bundle(tmp_path / "rand2", random_init=True)  # no variant yet
    cmd[4] = str(b)
    v = subprocess.run(cmd + ["--verbose"], capture_output=True, text=True, timeout=600)
    assert v.returncode == 0, v.stderr
    assert "Statistics collection" in v.stdout + v.stderr  # NNCF's own output, when asked


# ------------------------------------------------------------------ calibration batching

def test_int8_ranges_come_from_batches_not_from_single_images(tiny, tmp_path):
    """NNCF's default activation range is the mean over calibration samples of each sample's
    extreme: fed one image at a time (as dynamic-size bundles were), every image above the
    average is clipped. Calibration arrays go in batches of 8, so the input quantiser of six
    same-size arrays of growing contrast spans the largest of them (numpy), not their mean."""
    pytest.importorskip("nncf")
    ov = pytest.importorskip("openvino")
    from quasar.export.precision import CALIBRATION_BATCH, build_int8_openvino

    bundle = load_bundle(tiny)
    assert bundle.manifest.encoder.dynamic_hw and CALIBRATION_BATCH >= 6
    rng = np.random.default_rng(0)
    cal = [(rng.standard_normal((3, 64, 64)) * s).astype(np.float32) for s in range(1, 7)]
    work = tmp_path / "w"
    work.mkdir()
    files, _, _ = build_int8_openvino(bundle, cal, work)
    model = ov.Core().read_model(str(files["encoder.xml"]))
    fq = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
          and op.input(0).get_source_output().get_node().get_type_name() == "Parameter"]
    assert len(fq) == 1, [op.get_type_name() for op in model.get_ordered_ops()][:12]
    lo, hi = (float(np.max(np.abs(fq[0].input(i).get_source_output().get_node().get_data())))
              for i in (1, 2))
    span = max(lo, hi)
    largest = max(float(np.abs(a).max()) for a in cal)
    mean_of_each = float(np.mean([np.abs(a).max() for a in cal]))
    assert span == pytest.approx(largest, rel=0.02), (span, largest, mean_of_each)
    assert span > 1.5 * mean_of_each


def test_calibration_samples_are_capped_by_pixels():
    """Memory: a calibration sample never holds more than CALIBRATION_PIXELS pixels (8 images
    at 224, one at native size), held-out batches no more than EVAL_PIXELS; runs of one
    shape stay in order."""
    from quasar.export.precision import (CALIBRATION_BATCH, CALIBRATION_PIXELS, EVAL_PIXELS,
                                         _batches)

    small = [np.full((3, 224, 224), k, np.float32) for k in range(10)]
    big = [np.full((3, 768, 1024), k, np.float32) for k in range(3)]
    got = _batches(small + big, CALIBRATION_BATCH, CALIBRATION_PIXELS)
    assert [len(b) for b in got] == [8, 2, 1, 1, 1]
    assert all(b.shape[0] * b.shape[2] * b.shape[3] <= max(CALIBRATION_PIXELS, 768 * 1024)
               for b in got)
    assert [float(b[i, 0, 0, 0]) for b in got for i in range(len(b))] == \
        [float(k) for k in range(10)] + [0.0, 1.0, 2.0]
    assert [len(b) for b in _batches([np.zeros((3, 448, 448), np.float32)] * 5, 16)] == [4, 1]
    assert EVAL_PIXELS // (448 * 448) == 4


def test_int8_ranges_of_large_images_are_their_extremes(tiny, tmp_path):
    """Images too large for samples of 8 (here one per sample) are calibrated with min/max
    ranges: the input quantiser spans the largest array (numpy), not the mean of each one's
    extreme (what NNCF's default would give one image at a time)."""
    pytest.importorskip("nncf")
    ov = pytest.importorskip("openvino")
    from quasar.export.precision import CALIBRATION_PIXELS, build_int8_openvino

    bundle = load_bundle(tiny)
    side = int(np.ceil(np.sqrt(CALIBRATION_PIXELS)))  # one image per sample
    rng = np.random.default_rng(1)
    cal = [(rng.standard_normal((3, side, side)) * s).astype(np.float32) for s in range(1, 5)]
    work = tmp_path / "w"
    work.mkdir()
    files, tool, _ = build_int8_openvino(bundle, cal, work)
    assert "min/max ranges, samples of 1 image(s)" in tool
    model = ov.Core().read_model(str(files["encoder.xml"]))
    fq = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
          and op.input(0).get_source_output().get_node().get_type_name() == "Parameter"]
    assert len(fq) == 1
    span = max(float(np.max(np.abs(fq[0].input(i).get_source_output().get_node().get_data())))
               for i in (1, 2))
    largest = max(float(np.abs(a).max()) for a in cal)
    mean_of_each = float(np.mean([np.abs(a).max() for a in cal]))
    assert span == pytest.approx(largest, rel=0.02), (span, largest, mean_of_each)
    assert span > 1.3 * mean_of_each
