"""Load test of ``quasar serve`` beside offline ``quasar score`` on the same images, and the
choice of batcher: the same engine behind ``quasar serve`` (its own batcher), behind Ray
Serve's ``@serve.batch`` (``quasar.runtime.serve.ray_serve``) and behind LitServe's batching,
measured interleaved (round 1: A, B, C; round 2: A, B, C ...) so that a busy machine
disturbs them alike.

    python scripts/load_serve.py [--bundle DIR] [--servers quasar,ray,litserve]
        [--clients 1,8,64] [--requests 200] [--seconds 60] [--rss-requests 10000]
        [--rounds 2] [--out results.json]

Every request carries one image (JSON base64); every server listens on 127.0.0.1 only; each
level stops after ``--requests`` requests or ``--seconds`` seconds, whichever comes first.
Reported per server and level: throughput (images/s), p50 / p99 latency, errors (any
answer but 200 with status ok), the batch-size histogram (from ``/metrics``; LitServe has
none); for ``quasar serve`` also its RSS over ``--rss-requests`` requests at 8 clients
(sampled 20 times). Without ``--bundle`` a random-init clip-rn50-nopos bundle is exported
once (needs the export extra) into ``--workdir``.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

HOST = "127.0.0.1"
PY = sys.executable
QUASAR = str(Path(PY).with_name("quasar"))


# ------------------------------------------------------------------------- inputs
def prepare_bundle(args) -> str:
    if args.bundle:
        return args.bundle
    out = Path(args.workdir) / "rn50-nopos-random"
    if not (out / "bundle.json").exists():
        subprocess.run([QUASAR, "export", "clip-rn50-nopos.openai", "--random-init", "--seed",
                        "0", "--out", str(out)], check=True)
    return str(out)


def make_images(folder: Path, n: int) -> List[Path]:
    """``n`` 640x480 JPEG photos-like images (smooth gradients plus mild noise)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        base = np.stack([(xx * rng.uniform(0.1, 0.4) + yy * rng.uniform(0.1, 0.4)
                          + rng.uniform(0, 255)) % 256 for _ in range(3)], -1)
        img = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        p = folder / f"img{i:04d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append(p)
    return paths


def offline(bundle: str, paths: List[Path], args) -> Dict[str, Any]:
    """``quasar score`` on the same images (its own throughput line: startup excluded)."""
    lst = Path(args.workdir) / "offline.txt"
    reps = max(1, args.offline_images // len(paths))
    lst.write_text("".join(f"{p}\n" for _ in range(reps) for p in paths))
    r = subprocess.run([QUASAR, "score", f"@{lst}", "--bundle", bundle, "--batch-size",
                        str(args.max_batch_size), "--out", str(Path(args.workdir) / "o.csv"),
                        "--overwrite", *variant_args(args),
                        *(["--threads", str(args.threads)] if args.threads else [])],
                       capture_output=True, text=True)
    m = re.search(r"(\d+) images in ([\d.]+) s \(([\d.]+) images/s\)", r.stderr)
    if r.returncode != 0 or m is None:
        raise RuntimeError("quasar score failed:\n" + r.stderr)
    return {"images": int(m.group(1)), "seconds": float(m.group(2)),
            "images_per_s": float(m.group(3))}


def variant_args(args) -> List[str]:
    """--precision / --backend / --fast-decode, the same for quasar serve and offline
    quasar score."""
    return [*(["--precision", args.precision] if args.precision else []),
            *(["--backend", args.backend] if args.backend else []),
            *(["--fast-decode"] if args.fast_decode else [])]


# ------------------------------------------------------------------------- servers
def start(kind: str, bundle: str, args) -> Tuple[subprocess.Popen, str]:
    """A server of ``kind`` on 127.0.0.1 (quasar: port chosen by the server itself)."""
    b, w = str(args.max_batch_size), str(args.max_batch_wait_ms)
    if kind == "quasar":
        cmd = [QUASAR, "serve", bundle, "--port", "0", "--max-batch-size", b,
               "--max-batch-wait-ms", w, "--max-queue", "1024", "--quiet", *variant_args(args),
               *(["--threads", str(args.threads)] if args.threads else []),
               *args.quasar_args.split()]
    else:
        cmd = [PY, __file__, f"--{kind}-driver", bundle, str(free_port()), b, w,
               str(args.threads or 0)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    url = ""
    deadline = time.monotonic() + 180
    while not url and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited with {proc.returncode}")
        m = re.search(r"listening on (http://\S+)", line)
        url = m.group(1) if m else ""
    drain_stderr(proc)
    wait_ready(url + ("/health" if kind == "litserve" else "/ready"), deadline)
    return proc, url


def drain_stderr(proc: subprocess.Popen) -> None:
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()


def wait_ready(url: str, deadline: float) -> None:
    import httpx

    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered 200")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- load
async def load(url: str, bodies: List[bytes], clients: int, requests: int, seconds: float,
               on_done=None) -> Dict[str, Any]:
    """``clients`` concurrent clients, one image per request, until ``requests`` were sent
    or ``seconds`` passed."""
    import httpx

    lat: List[float] = []
    errors: List[str] = []
    sent = 0
    t_end = time.monotonic() + seconds

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.monotonic() < t_end:
            body = bodies[sent % len(bodies)]
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await c.post("/v1/score", content=body,
                                 headers={"content-type": "application/json"})
                ok = r.status_code == 200 and r.json()["results"][0]["status"] == "ok"
                if not ok:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            lat.append(time.perf_counter() - t0)
            if on_done is not None:
                on_done(len(lat))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    q = np.percentile(lat, [50, 99]) if lat else [float("nan")] * 2
    return {"clients": clients, "requests": len(lat), "seconds": wall,
            "images_per_s": len(lat) / wall if wall else 0.0, "p50_ms": 1000 * q[0],
            "p99_ms": 1000 * q[1], "errors": len(errors), "error_samples": errors[:3]}


def batch_histogram(url: str) -> Dict[str, float]:
    """Cumulative ``quasar_batch_size`` buckets (le -> count) from /metrics."""
    import httpx

    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'quasar_batch_size_bucket\{le="([^"]+)"\} (\S+)', text)}


def hist_delta(after: Dict[str, float], before: Dict[str, float]) -> Dict[str, int]:
    """Batches per size bucket during one level (non-cumulative)."""
    cum = [(k, after[k] - before.get(k, 0.0)) for k in after]
    out, prev = {}, 0.0
    for k, v in cum:
        if v - prev:
            out[k] = int(v - prev)
        prev = v
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (MiB), from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            todo += [int(k) for k in kids]
        except (OSError, AttributeError):
            continue
    return total / 1024


def run_server(kind: str, bundle: str, bodies: List[bytes], args) -> List[Dict[str, Any]]:
    """Every level of clients against one fresh server of ``kind``."""
    proc, url = start(kind, bundle, args)
    try:
        asyncio.run(load(url, bodies, 8, 4 * args.max_batch_size, args.seconds))  # warm
        levels = []
        for clients in args.clients:
            before = batch_histogram(url)
            r = asyncio.run(load(url, bodies, clients, args.requests, args.seconds))
            r["batches"] = hist_delta(batch_histogram(url), before)
            r["rss_mb"] = rss_mb(proc.pid)  # the server's process tree (Ray: every daemon)
            levels.append(r)
            print(f"  {kind:9s} {clients:3d} clients: {r['images_per_s']:6.1f} img/s, p50 "
                  f"{r['p50_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms, {r['errors']} errors, "
                  f"batches {r['batches']}", file=sys.stderr, flush=True)
        return levels
    finally:
        stop(proc)


def rss_run(bundle: str, bodies: List[bytes], args) -> Dict[str, Any]:
    """RSS of ``quasar serve`` (process tree) 20 times over ``--rss-requests`` at 8 clients."""
    proc, url = start("quasar", bundle, args)
    samples: List[Tuple[int, float]] = []

    every = max(50, args.rss_requests // 20)

    def sample(n: int) -> None:
        if n % every == 0:
            samples.append((n, rss_mb(proc.pid)))

    try:
        asyncio.run(load(url, bodies, 8, 200, args.seconds))  # warm-up
        samples.append((0, rss_mb(proc.pid)))
        r = asyncio.run(load(url, bodies, 8, args.rss_requests, args.rss_seconds, sample))
    finally:
        stop(proc)
    base = samples[0][1]
    return {"requests": r["requests"], "errors": r["errors"], "samples": samples,
            "max_change_pct": 100 * max(abs(v - base) for _, v in samples) / base}


def summarise(res: Dict[str, Any], args) -> str:
    if not res["offline"]:  # --rss-only
        lines: List[str] = []
    else:
        lines = _level_table(res, args)
    if "rss" in res:
        s = res["rss"]
        lines += ["", f"RSS of quasar serve over {s['requests']} requests (8 clients): "
                  + ", ".join(f"{n}: {v:.0f} MiB" for n, v in s["samples"])
                  + f"; largest change after warm-up {s['max_change_pct']:.1f} %; "
                  f"{s['errors']} errors"]
    return "\n".join(lines)


def _level_table(res: Dict[str, Any], args) -> List[str]:
    off = statistics.median(o["images_per_s"] for o in res["offline"])
    lines = [f"offline quasar score: {off:.1f} images/s (median of {len(res['offline'])})", "",
             "| server | clients | images/s | % of offline | p50 ms | p99 ms | errors | RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, rounds in res["servers"].items():
        for i, clients in enumerate(args.clients):
            lv = [r[i] for r in rounds]
            ips = statistics.median(x["images_per_s"] for x in lv)
            lines.append(f"| {kind} | {clients} | {ips:.1f} | {100 * ips / off:.0f} % | "
                         f"{statistics.median(x['p50_ms'] for x in lv):.1f} | "
                         f"{statistics.median(x['p99_ms'] for x in lv):.1f} | "
                         f"{sum(x['errors'] for x in lv)} | "
                         f"{statistics.median(x.get('rss_mb', 0) for x in lv):.0f} |")
    return lines


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle")
    ap.add_argument("--workdir", default="/tmp/quasar-load-serve")
    ap.add_argument("--servers", default="quasar,ray,litserve")
    ap.add_argument("--clients", default="1,8,64",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--requests", type=int, default=200, help="requests per level at most")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds per level at most")
    ap.add_argument("--rss-requests", type=int, default=10000)
    ap.add_argument("--rss-seconds", type=float, default=1800.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rss-only", action="store_true",
                    help="only the RSS run of quasar serve (no rounds, no other servers)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--offline-images", type=int, default=512)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--max-batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads "
                    "of every server and of offline quasar score (0: ONNX Runtime's choice); "
                    "on a busy machine 1 avoids spinning threads fighting over the cores")
    ap.add_argument("--quasar-args", default="", help="more options of quasar serve, e.g. "
                    "'--threads 1 --workers 2'")
    ap.add_argument("--precision", help="the variant of quasar serve and of offline quasar "
                    "score (e.g. int8: one that passed its gate; servers ray / litserve "
                    "run fp32)")
    ap.add_argument("--backend", help="their backend (onnxruntime | openvino)")
    ap.add_argument("--fast-decode", action="store_true",
                    help="DCT-scaled JPEG decoding for both (gated by quasar optimize)")
    ap.add_argument("--out")
    ap.add_argument("--ray-driver", nargs=5, help=argparse.SUPPRESS,
                    metavar=("BUNDLE", "PORT", "B", "WAIT_MS", "THREADS"))
    ap.add_argument("--litserve-driver", nargs=5, help=argparse.SUPPRESS,
                    metavar=("BUNDLE", "PORT", "B", "WAIT_MS", "THREADS"))
    args = ap.parse_args(argv)
    if args.requests < 1 or args.seconds <= 0 or args.rounds < 1:
        ap.error("--requests, --seconds and --rounds must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ray_driver:
        return ray_driver(*args.ray_driver)
    if args.litserve_driver:
        return litserve_driver(*args.litserve_driver)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    bundle = prepare_bundle(args)
    paths = make_images(Path(args.workdir) / "images", args.images)
    bodies = [json.dumps({"images": [base64.b64encode(p.read_bytes()).decode()]}).encode()
              for p in paths]
    kinds = [k for k in args.servers.split(",") if k]
    res: Dict[str, Any] = {"args": {k: v for k, v in vars(args).items()
                                    if not k.endswith("driver")},
                           "cpus": os.cpu_count(), "offline": [],
                           "servers": {k: [] for k in kinds}}
    for rnd in range(0 if args.rss_only else args.rounds):  # interleaved: every server once per round
        print(f"round {rnd + 1}/{args.rounds}", file=sys.stderr, flush=True)
        res["offline"].append(offline(bundle, paths, args))
        print(f"  offline   {res['offline'][-1]['images_per_s']:.1f} img/s", file=sys.stderr)
        for kind in kinds:
            res["servers"][kind].append(run_server(kind, bundle, bodies, args))
    if "quasar" in kinds and args.rss_requests > 0:
        res["rss"] = rss_run(bundle, bodies, args)
    text = summarise(res, args)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


# ------------------------------------------------------------------------- the other two
def ray_driver(bundle: str, port: str, b: str, wait_ms: str, threads: str) -> int:
    """The ``quasar serve`` app on a local Ray Serve (batching: ``@serve.batch``)."""
    import ray
    from ray import serve

    from quasar.runtime.serve.config import ServeConfig
    from quasar.runtime.serve.ray_serve import quasar_app

    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": HOST, "port": int(port)})
        cfg = ServeConfig(max_batch_size=int(b), max_batch_wait_ms=float(wait_ms),
                          max_queue=1024)
        opts = {"threads": int(threads)} if int(threads) else {}
        serve.run(quasar_app(bundle, config=cfg, scorer_options=opts), route_prefix="/")
        print(f"listening on http://{HOST}:{port}", file=sys.stderr, flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


try:  # LitServe pickles its API object into its worker process: a module-level class
    import litserve as _litserve

    _LitAPI: Any = _litserve.LitAPI
except ImportError:  # pragma: no cover - only --servers litserve needs it
    _LitAPI = object


class QuasarLitAPI(_LitAPI):
    """The same engine behind LitServe's batching: one request = one batch item."""

    def setup(self, device: str) -> None:
        from quasar.runtime.engine import EngineConfig
        from quasar.runtime.scorer import Scorer
        from quasar.runtime.sources import sample_aware

        bundle, b = os.environ["QUASAR_LOAD_BUNDLE"], int(os.environ["QUASAR_LOAD_B"])
        threads = int(os.environ["QUASAR_LOAD_THREADS"]) or None
        self.scorer = Scorer.from_bundle(bundle, batch_size=b, threads=threads)
        self.engine = self.scorer.engine_for(EngineConfig(batch_size=b, workers=2))
        self.engine.load = sample_aware(self.engine.load)

    def decode_request(self, request):  # no annotation: LitServe then parses JSON itself
        from quasar.runtime.sources import Sample

        return [Sample(id=f"images[{i}]", data=base64.b64decode(s))
                for i, s in enumerate(request["images"])]

    def batch(self, inputs: List[List[Any]]) -> List[List[Any]]:
        return inputs

    def predict(self, batch: List[List[Any]]) -> List[List[Any]]:
        from quasar.runtime.pipeline import window_rows

        rows = window_rows(self.scorer, self.engine.run([s for req in batch for s in req]))
        out, k = [], 0
        for req in batch:
            out.append(rows[k:k + len(req)])
            k += len(req)
        return out

    def unbatch(self, output: List[List[Any]]) -> List[List[Any]]:
        return output

    def encode_response(self, rows):  # unannotated: LitServe builds no response model
        return {"results": [{"name": r.path, "status": r.status, "error": r.error or None,
                             "scores": {k: (v if v == v else None) for k, v in r.scores.items()}}
                            for r in rows]}


def litserve_driver(bundle: str, port: str, b: str, wait_ms: str, threads: str) -> int:
    import litserve as ls

    os.environ.update(QUASAR_LOAD_BUNDLE=bundle, QUASAR_LOAD_B=b, QUASAR_LOAD_THREADS=threads)
    api = QuasarLitAPI(max_batch_size=int(b), batch_timeout=float(wait_ms) / 1000,
                       api_path="/v1/score")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=120)
    print(f"listening on http://{HOST}:{port}", file=sys.stderr, flush=True)
    server.run(host=HOST, port=int(port), generate_client_file=False, log_level="warning",
               num_api_servers=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
