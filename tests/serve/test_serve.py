"""``quasar serve`` end to end: real servers (subprocesses on 127.0.0.1), a real HTTP client.

Scores are checked against ``quasar score`` on the same files (to 1e-6) and against an
independent numpy computation (the tiny encoder's formula and the QUASAR score written out
here); hostile files, malformed requests, 413 / 429 / 504, SIGTERM draining, metrics.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import subprocess
import threading
import time
import sys
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

import hostile
from rt_helpers import tiny_anchor_sets, tiny_reference_embedding

ALL = ("text", "kadis")
QUASAR = Path(sys.executable).with_name("quasar")


def post_files(url, paths, **kw):
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    return httpx.post(url + "/v1/score", files=files, timeout=60, **kw)


def post_json(url, payload, **kw):
    return httpx.post(url + "/v1/score", json=payload, timeout=60, **kw)


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def reference_scores(bundle, path):
    """The tiny encoder and the QUASAR score in float64 numpy, on the runtime's pixels."""
    from quasar.runtime.scorer import Scorer

    pixels = Scorer.from_bundle(bundle).load_image(str(path))
    e = tiny_reference_embedding(pixels[None])[0]
    x = e / np.linalg.norm(e)
    out = {}
    for name, a in tiny_anchor_sets().items():
        logits = (x @ a.astype(np.float64).T) / 0.07
        out[name] = float(np.exp(logits[0]) / np.exp(logits).sum())
    return out, e


def quasar_score_rows(bundle, paths, tmp_path, *options):
    out = tmp_path / "scores.jsonl"
    r = subprocess.run([str(QUASAR), "score", *map(str, paths), "--bundle", str(bundle),
                        "--anchors", "all", "--out", str(out), "--quiet", *options],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 3), r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    ident = json.loads((tmp_path / "scores.jsonl.run.json").read_text())
    return {row["path"]: row for row in rows}, ident


# ---------------------------------------------------------------- scores and corpus
def test_scores_equal_quasar_score_and_numpy(server, serve_bundle, images, tmp_path):
    good, bad = images
    paths = good + [bad[n] for n in hostile.GOOD_HOSTILE]
    r = post_files(server.url, paths, params={"embeddings": "true"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [e["name"] for e in res] == [p.name for p in paths]
    assert [e["index"] for e in res] == list(range(len(paths)))
    rows, ident = quasar_score_rows(serve_bundle, paths, tmp_path)
    for p, e in zip(paths, res):
        row = rows[str(p)]
        assert e["status"] == row["status"] == "ok", (p, e, row)
        for a in ALL:
            assert abs(e["scores"][a] - row[f"score_{a}"]) <= 1e-6, (p, a)
    for p, e in list(zip(paths, res))[:6]:  # the numpy reference is slower: a few suffice
        ref, emb = reference_scores(serve_bundle, p)
        for a in ALL:
            assert e["scores"][a] == pytest.approx(ref[a], abs=1e-5), (p, a)
        np.testing.assert_allclose(e["embedding"], emb, rtol=1e-4, atol=1e-5)
    # the same images as JSON base64 (one as a data: URL) give the very same answers
    payload = {"images": [b64(p) for p in paths]}
    payload["images"][0] = "data:image/png;base64," + payload["images"][0]
    j = post_json(server.url, payload).json()["results"]
    assert [x["scores"] for x in j] == [x["scores"] for x in res]
    assert all("embedding" not in x for x in j)
    model = httpx.get(server.url + "/v1/model").json()
    for k in ("bundle_sha256", "model", "resolution", "anchors", "precision", "backend"):
        assert model[k] == ident[k], k


def test_hostile_corpus_answered_per_image(server, serve_bundle, images, tmp_path):
    """One request holding every hostile file between good ones: each gets its own entry,
    the neighbours score as alone; statuses and messages as ``quasar score``'s."""
    good, bad = images
    wide = tmp_path / "wide.png"  # 1 x 60000: resized to 224 x 13M pixels -> too_large
    from PIL import Image
    Image.new("L", (60000, 1), 128).save(wide)
    hostile_files = [bad[n] for n in hostile.BAD_HOSTILE] + [wide]
    paths = [good[0]] + [x for h in hostile_files for x in (h, good[1])]
    res = post_files(server.url, paths).json()["results"]
    alone = post_files(server.url, [good[0], good[1]]).json()["results"]
    rows, _ = quasar_score_rows(serve_bundle, paths, tmp_path)
    expected = {**hostile.BAD_HOSTILE, "wide.png": {"too_large"}}
    for p, e in zip(paths, res):
        if p in good:
            assert e["status"] == "ok"
            assert e["scores"] == alone[good.index(p)]["scores"]
            continue
        assert e["status"] in expected[p.name], e
        assert e["status"] == rows[str(p)]["status"]
        assert e["scores"] == {a: None for a in ALL}
        assert e["error"].startswith(p.name + ":") and len(e["error"]) > 40, e
    # JSON-only hostility: URLs are never fetched, bad base64, empty, non-images
    payload = {"images": ["https://169.254.169.254/latest/meta-data", "file:///etc/passwd",
                          "not base64 !!", "", base64.b64encode(b"GIF89a").decode(),
                          b64(good[0])]}
    res = post_json(server.url, payload).json()["results"]
    assert [e["status"] for e in res[:2]] == ["decode_error"] * 2
    assert all("never fetches URLs" in e["error"] for e in res[:2])
    assert res[2]["status"] == "decode_error" and "base64" in res[2]["error"]
    assert res[3]["status"] == "empty_file"
    assert res[4]["status"] in ("truncated", "decode_error", "not_an_image")
    assert res[5]["status"] == "ok" and res[5]["scores"] == alone[0]["scores"]
    assert [e["name"] for e in res] == [f"images[{i}]" for i in range(6)]


def test_concurrent_requests_with_bad_neighbours(server, images):
    """Concurrent requests batched together: a hostile request never fails a good one."""
    good, bad = images

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            reqs = []
            for i in range(12):
                p = good[i % len(good)] if i % 2 else list(bad.values())[i % len(bad)]
                reqs.append(c.post("/v1/score", files=[("f", (p.name, p.read_bytes()))]))
            return await asyncio.gather(*reqs)

    answers = asyncio.run(run())
    assert all(a.status_code == 200 for a in answers)
    for i, a in enumerate(answers):
        e = a.json()["results"][0]
        if i % 2:
            assert e["status"] == "ok", e
        else:
            name = list(bad)[i % len(bad)]
            ok = name in hostile.GOOD_HOSTILE
            assert (e["status"] == "ok") == ok, e


# ---------------------------------------------------------------- malformed requests
@pytest.mark.parametrize("case,code,needle", [
    ("not json", 400, "not valid JSON"),
    ("too deep", 400, "not valid JSON"),
    ("text/plain", 415, "content type"),
    ("no content type", 415, "content type"),
    ('{"images": []}', 422, "too_short"),
    ('{"images": [1, 2]}', 422, "string_type"),
    ('{"image": ["aGk="]}', 422, "extra_forbidden"),
    ('{"images": "aGk="}', 422, "list_type"),
    ('[1]', 422, "model_type"),
    ("too many", 413, "--max-images"),
    ("bad timeout", 400, "X-Request-Timeout"),
    ("multipart, no files", 422, "no images"),
    ("multipart, bad flag", 422, "embeddings must be true or false"),
])
def test_malformed_requests(server, case, code, needle):
    url = server.url + "/v1/score"
    json_h = {"content-type": "application/json"}
    if case == "text/plain":
        r = httpx.post(url, content=b"x", headers={"content-type": "text/plain"})
    elif case == "no content type":
        r = httpx.post(url, content=b"x")
    elif case == "too deep":
        r = httpx.post(url, content=b"[" * 100_000, headers=json_h)
    elif case == "too many":
        r = post_json(server.url, {"images": ["aGk="] * 65})
    elif case == "bad timeout":
        r = post_json(server.url, {"images": ["aGk="]}, headers={"X-Request-Timeout": "-1"})
    elif case == "multipart, no files":
        body = (b'--b\r\nContent-Disposition: form-data; name="embeddings"\r\n\r\n'
                b"true\r\n--b--\r\n")
        r = httpx.post(url, content=body,
                       headers={"content-type": "multipart/form-data; boundary=b"})
    elif case == "multipart, bad flag":
        r = httpx.post(url, data={"embeddings": "maybe"}, files={"f": ("a.png", b"x")})
    else:
        r = httpx.post(url, content=case.encode(), headers=json_h)
    assert r.status_code == code, (case, r.status_code, r.text)
    assert needle in r.text, r.text


def test_health_ready_metrics_and_docs(server, images):
    good, bad = images
    assert httpx.get(server.url + "/health").json() == {"status": "alive"}
    assert httpx.get(server.url + "/ready").json() == {"ready": True}
    before = metrics(server.url)
    post_files(server.url, [good[0], bad["text.png"], good[1]])
    post_json(server.url, {"images": []})
    m = metrics(server.url)
    assert delta(m, before, 'quasar_requests_total{code="200",endpoint="/v1/score"}') == 1
    assert delta(m, before, 'quasar_requests_total{code="422",endpoint="/v1/score"}') == 1
    assert delta(m, before, 'quasar_images_total{status="ok"}') == 2
    assert delta(m, before, 'quasar_images_total{status="not_an_image"}') == 1
    assert delta(m, before, "quasar_batch_size_sum") == 2  # decode failures never batch
    assert m["quasar_queue_depth"] == 0 and m["quasar_ready"] == 1
    assert m['quasar_request_duration_seconds_count{endpoint="/v1/score"}'] >= 2
    spec = httpx.get(server.url + "/openapi.json").json()
    body = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert httpx.get(server.url + "/docs").status_code == 200


def metrics(url):
    text = httpx.get(url + "/metrics").text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def delta(now, before, key):
    return now.get(key, 0.0) - before.get(key, 0.0)


# ---------------------------------------------------------------- caps, queue, deadline
@pytest.fixture(scope="module")
def tight(serve_bundle, server_cls):
    """Small caps: a batch never fills (8 > queue 4), so it closes only after 1 s."""
    with server_cls(serve_bundle, "--max-queue", "4", "--max-images", "4", "--max-body-mb",
                "0.05", "--max-batch-size", "8", "--max-batch-wait-ms", "1000",
                "--timeout", "20", "--quiet") as s:
        yield s


def test_batches_gather_concurrent_requests(tight, images):
    good, _ = images
    before = metrics(tight.url)

    async def run():
        async with httpx.AsyncClient(base_url=tight.url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/score", files=[
                ("f", (p.name, p.read_bytes()))]) for p in good[:4]))

    assert all(a.status_code == 200 for a in asyncio.run(run()))
    m = metrics(tight.url)
    assert delta(m, before, "quasar_batch_size_sum") == 4
    assert delta(m, before, "quasar_batch_size_count") == 1  # one batch of 4


def test_body_over_cap_is_413(tight):
    big = {"images": ["A" * 60_000]}
    r = post_json(tight.url, big)
    assert r.status_code == 413 and "--max-body-mb" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while reading
        for _ in range(10):
            yield b" " * 10_000

    r = httpx.post(tight.url + "/v1/score", content=chunks(),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = post_json(tight.url, {"images": ["aGk="] * 5})
    assert r.status_code == 413 and "--max-images" in r.text


def test_full_queue_is_429_with_retry_after(tight, images):
    good, _ = images
    payload = {"images": [b64(good[0]), b64(good[1])]}

    async def run():
        async with httpx.AsyncClient(base_url=tight.url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/score", json=payload)
                                          for _ in range(6)))

    answers = asyncio.run(run())
    codes = sorted(a.status_code for a in answers)
    assert codes.count(200) >= 1 and codes.count(429) >= 2, codes
    assert set(codes) <= {200, 429}
    for a in answers:
        if a.status_code == 429:
            assert int(a.headers["Retry-After"]) >= 1 and "--max-queue" in a.json()["detail"]
        else:
            assert [e["status"] for e in a.json()["results"]] == ["ok", "ok"]
    assert metrics(tight.url)["quasar_queue_depth"] == 0


def test_a_trickling_body_is_408(server):
    def slow():
        yield b'{"images": ['
        time.sleep(1.0)
        yield b'"aGk="]}'

    r = httpx.post(server.url + "/v1/score", content=slow(), timeout=30, headers={
        "content-type": "application/json", "X-Request-Timeout": "0.3"})
    assert r.status_code == 408 and "did not arrive within 0.3 s" in r.text


def test_deadline_is_504_and_the_server_goes_on(tight, images):
    good, _ = images
    t0 = time.monotonic()
    r = post_files(tight.url, [good[0]], headers={"X-Request-Timeout": "0.2"})
    assert r.status_code == 504 and "0.2 s" in r.json()["detail"]
    assert time.monotonic() - t0 < 0.9  # answered at the deadline, not after the batch
    before = metrics(tight.url)
    r = post_files(tight.url, [good[1]])
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "ok"
    m = metrics(tight.url)
    assert delta(m, before, "quasar_batch_size_sum") == 1  # the expired image was dropped
    assert m['quasar_requests_total{code="504",endpoint="/v1/score"}'] >= 1


def test_sigterm_drains_in_flight_requests_then_exits_0(serve_bundle, images, server_cls):
    good, _ = images
    with server_cls(serve_bundle, "--max-batch-size", "8", "--max-batch-wait-ms", "1500",
                "--quiet") as s:
        answer = {}

        def request():
            answer["r"] = post_files(s.url, good[:3])

        t = threading.Thread(target=request)
        t.start()
        time.sleep(0.5)  # the request waits for its batch (1.5 s)
        s.proc.send_signal(signal.SIGTERM)
        t.join(30)
        code = s.proc.wait(30)
        assert answer["r"].status_code == 200
        assert [e["status"] for e in answer["r"].json()["results"]] == ["ok"] * 3
        assert code == 0, "".join(s.log)
        with pytest.raises(httpx.ConnectError):
            httpx.get(s.url + "/health", timeout=2)


def test_command_line_errors(serve_bundle, tmp_path):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    cases = [([str(serve_bundle), "--port", str(taken.getsockname()[1])], "cannot listen"),([str(tmp_path / "missing")], "bundle"),
             ([str(serve_bundle), "--max-images", "500", "--max-queue", "10"], "--max-images"),
             ([str(serve_bundle), "--max-batch-wait-ms", "-1"], "max-batch-wait-ms"),
             ([str(serve_bundle), "--port", "70000"], "--port"),
             ([str(serve_bundle), "--anchors", "nope"], "anchor set")]
    for args, needle in cases:
        r = subprocess.run([str(QUASAR), "serve", *args], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    taken.close()
    assert re.search(r"--max-batch-size N", subprocess.run(
        [str(QUASAR), "serve", "--help"], capture_output=True, text=True).stdout)


def zero_encoder_bundle(src, dst):
    """A copy of the tiny bundle whose encoder returns all-zero embeddings (no direction,
    so no score): its warm-up must fail and every image must be an inference_error."""
    import hashlib
    import shutil

    import onnx
    from onnx import TensorProto, helper

    shutil.copytree(src, dst)
    dim = json.loads((dst / "bundle.json").read_text())["encoder"]["embed_dim"]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixels"], ["m"], axes=[1, 2, 3], keepdims=0),
         helper.make_node("Unsqueeze", ["m", "ax"], ["col"]),
         helper.make_node("Mul", ["col", "zeros"], ["embedding"])], "zero",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        initializer=[helper.make_tensor("ax", TensorProto.INT64, [1], [1]),
                     helper.make_tensor("zeros", TensorProto.FLOAT, [1, dim], [0.0] * dim)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(dst / "encoder.onnx"))
    manifest = json.loads((dst / "bundle.json").read_text())
    manifest["files"]["encoder.onnx"] = hashlib.sha256(
        (dst / "encoder.onnx").read_bytes()).hexdigest()
    (dst / "bundle.json").write_text(json.dumps(manifest))
    return dst


def test_failed_warm_up_is_not_ready_and_images_get_their_error(serve_bundle, images,
                                                                tmp_path, server_cls):
    good, _ = images
    bundle = zero_encoder_bundle(serve_bundle, tmp_path / "zero")
    with server_cls(bundle, "--quiet", ready=False) as s:
        deadline = time.monotonic() + 30
        while True:  # /ready says why once the warm-up batch has failed
            r = httpx.get(s.url + "/ready")
            if "all-zero" in r.text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 503 and "all-zero embedding" in r.json()["detail"], r.text
        assert httpx.get(s.url + "/health").status_code == 200
        res = post_files(s.url, good[:2]).json()["results"]
        assert [e["status"] for e in res] == ["inference_error"] * 2
        assert all(e["error"].startswith(p.name + ":") for e, p in zip(res, good))
        assert metrics(s.url)["quasar_ready"] == 0


def test_fast_decode_is_gated_and_scores_as_quasar_score(serve_bundle, server_cls, tmp_path):
    """``--fast-decode`` (DCT-scaled JPEG decoding), as in ``quasar score``: refused (exit 2)
    until ``quasar optimize --fast-decode`` gated it; then the server's scores equal
    ``quasar score --fast-decode`` on the same files, its pixels are the draft decode's
    (numpy reference on them), and /v1/model says so."""
    import shutil

    from PIL import Image

    from quasar.export.precision import build_and_measure
    from quasar.runtime.agreement import Gate
    from quasar.runtime.images import ImageLoader
    from quasar.runtime.scorer import Scorer

    bundle = tmp_path / "bundle"
    shutil.copytree(serve_bundle, bundle)
    r = subprocess.run([str(QUASAR), "serve", str(bundle), "--port", "0", "--fast-decode"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "fast decode" in r.stderr and "Traceback" not in r.stderr
    photos = []
    for i in range(16):  # large JPEGs: decoded at 1/2 scale by the draft mode
        rng = np.random.default_rng(i)
        yy, xx = np.mgrid[0:768, 0:1024]
        img = np.stack([(xx * rng.uniform(.1, .4) + yy * rng.uniform(.1, .4)) % 256] * 3, -1)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        p = tmp_path / f"photo{i}.jpg"
        Image.fromarray(img).save(p, quality=90)
        photos.append(p)
    res = build_and_measure(bundle, fast_decode=True, calibration=[str(p) for p in photos],
                            gate=Gate(-1.0, 1.0))
    assert res.passed, res
    rows, _ = quasar_score_rows(bundle, photos, tmp_path, "--fast-decode")
    with server_cls(bundle, "--anchors", "all", "--fast-decode", "--quiet") as s:
        got = post_files(s.url, photos, params={"embeddings": "true"}).json()["results"]
        assert httpx.get(s.url + "/v1/model").json()["fast_decode"] is True
    scorer = Scorer.from_bundle(bundle)
    draft, exact = ImageLoader(scorer.preprocess_cfg, fast_decode=True), \
        ImageLoader(scorer.preprocess_cfg)
    for p, e in zip(photos, got):
        assert e["status"] == "ok", e
        for a in ALL:
            assert abs(e["scores"][a] - rows[str(p)][f"score_{a}"]) <= 1e-6, (p, a)
        want = tiny_reference_embedding(draft(str(p))[None])[0]
        np.testing.assert_allclose(e["embedding"], want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(tiny_reference_embedding(exact(str(photos[0]))[None])[0],
                           got[0]["embedding"], rtol=1e-4, atol=1e-5)  # not the exact decode
