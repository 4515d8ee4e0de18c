"""Backends behind one session interface (ONNX Runtime, OpenVINO), the CPU-flag probe and the
choice of a precision variant (a pure function: tested with flag sets)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import rt_helpers  # noqa: E402

from quasar.errors import VariantError  # noqa: E402
from quasar.bundle.manifest import VariantInfo  # noqa: E402
from quasar.runtime.backends import (BACKENDS, OpenArgs, choose_variant, cpu_flags,  # noqa: E402
                                     open_encoder, openvino_config, runs_fast)

pytest.importorskip("onnx")  # the tiny test encoder is written with onnx


@pytest.fixture(params=["onnxruntime", "openvino"])
def backend(request):
    """Every interface test runs on both backends (as piq's device fixture)."""
    if request.param == "openvino":
        pytest.importorskip("openvino")
    return request.param


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return rt_helpers.write_tiny_bundle(tmp_path_factory.mktemp("tiny") / "b")


def _pixels(n=3, h=40, w=56, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


def test_session_interface_matches_numpy(backend, tiny_bundle):
    sess = open_encoder(OpenArgs(tiny_bundle / "encoder.onnx", "pixels", "embedding",
                                 threads=1), backend)
    assert (sess.backend, sess.precision, sess.device) == (backend, "fp32", "cpu")
    for shape in ((3, 40, 56), (1, 64, 32)):  # dynamic batch and H x W
        x = _pixels(*shape)
        out = sess.run(x)
        assert out.dtype == np.float32 and out.shape == (shape[0], rt_helpers.TINY_DIM)
        np.testing.assert_allclose(out, rt_helpers.tiny_reference_embedding(x), rtol=1e-5,
                                   atol=1e-5)


def test_scorer_on_each_backend_matches_reference_formula(backend, tiny_bundle, tmp_path):
    from PIL import Image

    from quasar.runtime.images import ImageLoader
    from quasar.runtime.scorer import Scorer

    paths = []
    rng = np.random.default_rng(5)
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (50 + i, 70, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    s = Scorer.from_bundle(tiny_bundle, device="cpu", backend=backend, anchors="all")
    assert (s.backend, s.precision, s.run_info["variant"]) == (backend, "fp32", None)
    got = s.score_all(paths)
    loader = ImageLoader(s.preprocess_cfg)
    emb = np.stack([rt_helpers.tiny_reference_embedding(loader(p)[None])[0] for p in paths])
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for name, a in rt_helpers.tiny_anchor_sets().items():
        logits = x @ a.astype(np.float64).T / 0.07
        want = np.exp(logits[:, 0]) / np.exp(logits).sum(1)
        np.testing.assert_allclose(got[name], want, atol=1e-6)


def test_openvino_pins_f32_unless_bf16():
    assert openvino_config("fp32", None)["INFERENCE_PRECISION_HINT"] == "f32"
    assert openvino_config("int8", 2)["INFERENCE_PRECISION_HINT"] == "f32"
    assert openvino_config("int8", 2)["INFERENCE_NUM_THREADS"] == 2
    assert openvino_config("bf16", None)["INFERENCE_PRECISION_HINT"] == "bf16"


def test_openvino_compiled_precision_is_really_f32(tiny_bundle):
    pytest.importorskip("openvino")
    sess = open_encoder(OpenArgs(tiny_bundle / "encoder.onnx", "pixels", "embedding"),
                        "openvino")
    assert str(sess.raw.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")


def test_registry_names():
    assert set(BACKENDS) == {"onnxruntime", "openvino"}
    with pytest.raises(VariantError, match="unknown backend"):
        open_encoder(OpenArgs("x.onnx", "pixels", "embedding"), "tensorrt")


# ------------------------------------------------------------------ CPU flags


def test_cpu_flags_reads_the_first_flags_line(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse avx512f avx512_vnni "
                 "avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(f)) == {"fpu", "sse", "avx512f", "avx512_vnni", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize("precision,flags,cuda,fast", [
    ("int8", {"avx512_vnni"}, False, True),
    ("int8", {"avx_vnni"}, False, True),
    ("int8", {"amx_int8"}, False, True),
    ("int8", {"avx512f", "avx2"}, False, False),
    ("bf16", {"avx512_bf16"}, False, True),
    ("bf16", {"amx_bf16"}, False, True),
    ("bf16", {"avx512_vnni", "avx512f"}, False, False),
    ("fp16", {"avx512_bf16", "avx512_vnni"}, False, False),
    ("fp16", set(), True, True),
    ("fp32", set(), False, True),
])
def test_runs_fast(precision, flags, cuda, fast):
    assert runs_fast(precision, flags, cuda) is fast


# ------------------------------------------------------------------ variant choice

def _v(precision, backend, passed=True, device="cpu"):
    return VariantInfo(precision=precision, backend=backend, files=["variants/x/m"],
                       device=device, passed=passed)


ALL = {
    "int8-openvino": _v("int8", "openvino"),
    "int8-onnxruntime": _v("int8", "onnxruntime"),
    "bf16-openvino": _v("bf16", "openvino"),
    "fp16-onnxruntime": _v("fp16", "onnxruntime", device="cuda"),
}
BOTH = ("onnxruntime", "openvino")
ZEN5 = {"avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"}
AVX2 = {"avx2", "fma"}
SPR = {"avx512f", "amx_int8", "amx_bf16", "avx512_bf16", "avx512_vnni"}


@pytest.mark.parametrize("variants,flags,cuda,installed,want", [
    (ALL, ZEN5, False, BOTH, "int8-openvino"),
    (ALL, ZEN5, False, ("onnxruntime",), "int8-onnxruntime"),   # no openvino installed
    (ALL, ZEN5, True, BOTH, "fp16-onnxruntime"),                # CUDA first
    (ALL, AVX2, False, BOTH, None),                             # nothing fast: fp32
    (ALL, {"avx512_bf16"}, False, BOTH, "bf16-openvino"),       # bf16 without VNNI
    (ALL, SPR, False, BOTH, "int8-openvino"),
    ({"bf16-openvino": _v("bf16", "openvino")}, {"avx512_vnni"}, False, BOTH, None),
    ({"int8-openvino": _v("int8", "openvino", passed=False),
      "bf16-openvino": _v("bf16", "openvino")}, ZEN5, False, BOTH, "bf16-openvino"),
    ({"int8-openvino": _v("int8", "openvino", passed=False)}, ZEN5, False, BOTH, None),
    ({}, ZEN5, True, BOTH, None),
])
def test_auto_choice_per_hardware(variants, flags, cuda, installed, want):
    c = choose_variant(variants, "auto", flags=flags, cuda=cuda, installed=installed)
    assert c.variant == want
    if want is None:
        assert (c.precision, c.backend) == ("fp32", "onnxruntime")
    else:
        assert (c.precision, c.backend) == (variants[want].precision, variants[want].backend)


def test_auto_respects_backend_restriction():
    c = choose_variant(ALL, "auto", flags=ZEN5, backend="onnxruntime", installed=BOTH)
    assert c.variant == "int8-onnxruntime"
    c = choose_variant(ALL, "fp32", flags=ZEN5, backend="openvino", installed=BOTH)
    assert (c.variant, c.backend) == (None, "openvino")


def test_explicit_precision():
    assert choose_variant(ALL, "bf16", flags=AVX2, installed=BOTH).variant == "bf16-openvino"
    assert choose_variant(ALL, "int8", flags=ZEN5, installed=BOTH).variant == "int8-openvino"
    assert choose_variant(ALL, "int8", flags=ZEN5, installed=("onnxruntime",)).variant == \
        "int8-onnxruntime"
    with pytest.raises(VariantError, match="needs CUDA"):
        choose_variant(ALL, "fp16", flags=ZEN5, cuda=False, installed=BOTH)
    with pytest.raises(VariantError, match="no int8 variant"):
        choose_variant({"bf16-openvino": ALL["bf16-openvino"]}, "int8", installed=BOTH)
    with pytest.raises(VariantError, match="precision must be"):
        choose_variant(ALL, "int4")


def test_failed_variant_is_never_used():
    failed = {"int8-openvino": _v("int8", "openvino", passed=False)}
    with pytest.raises(VariantError, match="failed its agreement gate"):
        choose_variant(failed, "int8", flags=ZEN5, installed=BOTH)
    assert choose_variant(failed, "auto", flags=ZEN5, installed=BOTH).variant is None


def test_decode_records_are_not_encoders():
    rec = VariantInfo(precision="fp32", backend="onnxruntime", kind="decode", passed=True,
                      resolution="224")
    assert choose_variant({"fast-decode-224": rec}, "auto", flags=ZEN5, cuda=True,
                          installed=BOTH).variant is None


# ------------------------------------------------------------------ CUDA (opt-in)

@pytest.mark.gpu
def test_cuda_io_binding_matches_numpy(tiny_bundle):
    sess = open_encoder(OpenArgs(tiny_bundle / "encoder.onnx", "pixels", "embedding",
                                 device="cuda"), "onnxruntime")
    assert sess.device == "cuda" and sess.io_binding
    x = _pixels(4, 64, 48)
    np.testing.assert_allclose(sess.run(x), rt_helpers.tiny_reference_embedding(x), rtol=1e-4,
                               atol=1e-4)


def test_default_path_imports_no_optional_backend(tiny_bundle, tmp_path):
    """The lean runtime stays lean: scoring fp32 on ORT imports neither openvino nor nncf,
    scipy or onnx."""
    import subprocess

    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(img)
    code = ("import sys; from quasar.runtime.scorer import Scorer; "
            f"Scorer.from_bundle({str(tiny_bundle)!r}, device='cpu').score([{str(img)!r}]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('openvino', 'nncf', 'scipy', 'onnx', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ auto by measured speed

def test_auto_candidates_are_every_usable_fast_variant():
    from quasar.runtime.backends import auto_candidates

    assert auto_candidates(ALL, flags=ZEN5, installed=BOTH) == \
        ["int8-openvino", "int8-onnxruntime", "bf16-openvino"]
    assert auto_candidates(ALL, flags=ZEN5, cuda=True, installed=("onnxruntime",)) == \
        ["fp16-onnxruntime", "int8-onnxruntime"]
    assert auto_candidates(ALL, flags=AVX2, installed=BOTH) == []
    failed = {**ALL, "int8-openvino": _v("int8", "openvino", passed=False)}
    assert "int8-openvino" not in auto_candidates(failed, flags=ZEN5, installed=BOTH)


def test_fastest_measured_caches_per_cpu_and_rereads(tmp_path, monkeypatch):
    import json

    from quasar.runtime.backends import fastest_measured, speed_cache_path

    monkeypatch.setenv("QUASAR_HOME", str(tmp_path / "home"))
    calls = []
    truth = {"a": 10.0, "b": 30.0, "c": 20.0}

    def measure(name):
        calls.append(name)
        return truth[name]

    path = speed_cache_path("f" * 64, ["avx2", "fma"])
    assert path.parent == tmp_path / "home" / "speed"
    best, speeds, cached = fastest_measured(list(truth), str, measure, path, {"m": 1})
    assert (best, speeds, cached, sorted(calls)) == ("b", truth, False, ["a", "b", "c"])
    on_disk = json.loads(path.read_text())
    assert {k: v["img_s"] for k, v in on_disk["entries"].items()} == truth
    calls.clear()
    assert fastest_measured(list(truth), str, measure, path, {})[::2] == ("b", True)
    assert calls == []  # reused, not measured
    # another CPU (flags) or another bundle content: another file, measured again
    assert speed_cache_path("f" * 64, ["avx2"]) != path
    assert speed_cache_path("e" * 64, ["avx2", "fma"]) != path
    # a damaged cache is measured again, never trusted
    for bad in ("{not json", json.dumps({"entries": {"a": {"img_s": "fast"},
                                                     "b": {"img_s": float("nan")}}})):
        path.write_text(bad)
        calls.clear()
        assert fastest_measured(list(truth), str, measure, path, {})[0] == "b"
        assert set(calls) >= {"a", "b"}


def test_score_auto_picks_the_measured_fastest_and_reuses_it(tmp_path, monkeypatch):
    """Two passing variants in a real bundle (the fp32 graph under each backend, labelled
    int8): auto measures both once, caches outside the bundle (checksums unchanged), and a
    second Scorer reads the cache - proven by editing the cached figures."""
    import dataclasses
    import json
    import shutil

    pytest.importorskip("openvino")
    from quasar.bundle import edit_bundle, load_bundle
    from quasar.runtime.backends import cpu_flag_list
    from quasar.runtime.scorer import Scorer

    if not runs_fast("int8", cpu_flag_list(), False):
        pytest.skip("no VNNI: auto runs no int8 variant here")
    monkeypatch.setenv("QUASAR_HOME", str(tmp_path / "home"))
    b = rt_helpers.write_tiny_bundle(tmp_path / "b")
    with edit_bundle(b) as ed:
        recs = {}
        for be in ("onnxruntime", "openvino"):
            rel = f"variants/int8-{be}/encoder.onnx"
            (ed.dir / rel).parent.mkdir(parents=True)
            shutil.copy(b / "encoder.onnx", ed.dir / rel)
            recs[f"int8-{be}"] = VariantInfo(precision="int8", backend=be, files=[rel],
                                             resolution="224", passed=True)
        ed.manifest = dataclasses.replace(ed.manifest, variants=recs)
    before = {p.name: p.read_bytes() for p in b.rglob("*") if p.is_file()}
    s = Scorer.from_bundle(b, device="cpu", precision="auto")
    cache = list((tmp_path / "home" / "speed").glob("*.json"))
    assert len(cache) == 1
    data = json.loads(cache[0].read_text())
    assert data["bundle_sha256"] == load_bundle(b).sha256
    with open("/proc/cpuinfo") as f:
        flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    assert data["cpu_flags"] == " ".join(flags)
    speeds = {k.split("|")[0]: v["img_s"] for k, v in data["entries"].items()}
    assert set(speeds) == set(recs) and all(k.endswith("|8x3x224x224") for k in data["entries"])
    assert s.run_info["variant"] == max(speeds, key=speeds.get)
    assert "measured" in s.run_info["precision_reason"]
    assert {p.name: p.read_bytes() for p in b.rglob("*") if p.is_file()} == before
    # reuse: swap the cached figures; the next Scorer follows the cache, not a new timing
    slow = s.run_info["variant"]
    for k, v in data["entries"].items():
        v["img_s"] = 1.0 if k.startswith(slow) else 1000.0
    cache[0].write_text(json.dumps(data))
    s2 = Scorer.from_bundle(b, device="cpu", precision="auto")
    assert s2.run_info["variant"] != slow and "cached" in s2.run_info["precision_reason"]
