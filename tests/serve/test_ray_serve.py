"""The same app on Ray Serve, locally: replicas built by
``quasar.runtime.serve.ray_serve.quasar_app`` (batching by Ray Serve's ``@serve.batch``)
answer exactly as ``quasar serve`` does. The Ray driver runs in a subprocess (a Ray
instance of its own, shut down at the end)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

httpx = pytest.importorskip("httpx")

DRIVER = textwrap.dedent("""
    import json, sys, time
    import httpx, ray
    from ray import serve
    from quasar.runtime.serve.config import ServeConfig
    from quasar.runtime.serve.ray_serve import quasar_app

    bundle, port, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(quasar_app(bundle, scorer_options={"anchors": "all"},
                             config=ServeConfig(max_batch_size=4, max_batch_wait_ms=200)),
                  route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while httpx.get(url + "/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        up = [("files", (f.rsplit("/", 1)[-1], open(f, "rb").read())) for f in files]
        out = {"score": httpx.post(url + "/v1/score", files=up, timeout=60).json(),
               "model": httpx.get(url + "/v1/model").json(),
               "metrics": httpx.get(url + "/metrics").text}
        print("RESULT " + json.dumps(out))
    finally:
        serve.shutdown()
        ray.shutdown()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_same_app_on_ray_serve(server, serve_bundle, images):
    pytest.importorskip("ray.serve", reason="needs ray[serve] (the ray-serve extra)")
    good, bad = images
    files = good[:5] + [bad["text.png"], bad["zero.png"]]
    r = subprocess.run([sys.executable, "-c", DRIVER, str(serve_bundle), str(free_port()),
                        *map(str, files)], capture_output=True, text=True, timeout=240)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, r.stdout[-2000:] + r.stderr[-4000:]
    got = json.loads(line[len("RESULT "):])
    local = httpx.post(server.url + "/v1/score", timeout=60, files=[
        ("files", (p.name, p.read_bytes())) for p in files]).json()
    assert got["score"] == local  # scores, statuses and messages, to the last bit
    model = httpx.get(server.url + "/v1/model").json()
    assert got["model"]["bundle_sha256"] == model["bundle_sha256"]
    assert got["model"]["serving"]["max_batch_size"] == 4
    assert "quasar_batch_size_sum 5.0" in got["metrics"]  # one batch of 4, one of 1
    assert "quasar_batch_size_count 2.0" in got["metrics"]
