"""Speed benchmark: the QUASAR runtime (ONNX Runtime + numpy/Pillow) vs the PyTorch reference
path (open_clip model + open_clip/torchvision transforms, torch eager, no grad), end to end
(decode + preprocess + inference + score) on the same image files in one run.

Each (case, path) runs in its own fresh subprocess, so peak RSS is per path and the cold
start (new process -> first score) includes the imports and the model load. Random weights
are fine for speed: the torch path loads them from a checkpoint file with open_clip's
``pretrained=<file>`` exactly like the reference loads real weights.

CLI: ``quasar bench`` (see docs/benchmark.md). Nothing here imports torch or onnxruntime at
module level; the torch path needs the export extra.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from quasar.bundle.atomic import atomic_write_text
from quasar.timing import peak_rss_mb, timed
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

CASES = {
    "rn50-224": ("clip-rn50-nopos.openai", "224"),
    "rn50-native": ("clip-rn50-nopos.openai", "native"),
    "vitb32-224": ("vit-b-32.openai", "224"),
}
RUNTIME_DISTS = ("onnxruntime", "numpy", "pillow", "safetensors")
TORCH_DISTS = ("torch", "torchvision", "open_clip_torch", "timm")


@dataclass(frozen=True)
class Measurement:
    case: str
    path: str  # "runtime" | "torch"
    images: int
    batch_size: int
    images_per_s: float
    batch_latency_s: float
    cold_start_s: float
    peak_rss_mb: float
    core: Optional[Dict[str, float]] = None  # runtime paths: see core_times()


# --------------------------------------------------------------------------- workers

def _worker_runtime(job: Dict[str, Any]) -> Dict[str, Any]:
    from quasar.runtime.scorer import Scorer

    s = Scorer.from_bundle(job["bundle"], resolution=job["resolution"],
                           batch_size=job["batch_size"], threads=job["threads"],
                           device=job.get("device", "cpu"),
                           precision=job.get("precision", "fp32"), backend=job.get("backend"),
                           fast_decode=bool(job.get("fast_decode", False)),
                           decode_workers=job.get("decode_workers"))
    files = job["files"]
    s.score(files[:1])
    first = time.time()
    if job.get("whole_list"):
        return _timed_whole(s, files, job, first)
    out = timed(lambda batch: s.score(batch), files, job["batch_size"], first, job["repeats"])
    out["core"] = core_times(s, files, int(job["batch_size"]))
    return out


def _decoded_batches(s, files: Sequence[str], batch_size: int) -> Tuple[float, List[Any]]:
    """Decode + preprocess CPU seconds per image (``s.load_image`` of every file on this
    thread: Pillow and numpy run here, so the thread's CPU clock is the cost, whatever else
    the machine does), and the pass's inputs as the engine batches them
    (:func:`~quasar.runtime.engine.shape_batches`)."""
    import numpy as np

    from quasar.runtime.engine import shape_batches

    t0 = time.thread_time()
    arrays = [s.load_image(f) for f in files]
    decode = (time.thread_time() - t0) / max(1, len(arrays))
    return decode, [np.stack([arrays[i] for i in idx])
                    for idx in shape_batches([a.shape for a in arrays], batch_size)]


def _model_only(s, batches: Sequence[Any], min_images: int) -> Dict[str, float]:
    """The encoder alone over ``batches`` (distinct arrays, as in a real run: one input
    repeated stays in the CPU's caches and ran 4 % faster at native size), cycled until at
    least ``min_images`` images and every batch ran: inference CPU seconds per image (the
    process's CPU clock: every intra-op thread, spinning included, since a spinning thread
    holds its core), images/s and median batch seconds (wall)."""
    times: List[float] = []
    n = 0
    c0 = time.process_time()
    while n < max(1, int(min_images)) or len(times) < len(batches):
        x = batches[len(times) % len(batches)]
        w = time.perf_counter()
        s.encoder.run(x)
        times.append(time.perf_counter() - w)
        n += len(x)
    wall = sum(times) / n
    return {"infer_core_s": (time.process_time() - c0) / n,
            "model_img_s": 1.0 / wall if wall > 0 else float("nan"),
            "batch_s": statistics.median(times)}


def _cores() -> float:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return float(cores or 1)


def core_times(s, files: Sequence[str], batch_size: int, min_images: int = 48
               ) -> Dict[str, float]:
    """What one image costs this machine's cores on the runtime path, each stage alone, on
    the very inputs of a pass (:func:`_decoded_batches`, :func:`_model_only`), and the cores
    this process may use."""
    decode, batches = _decoded_batches(s, files, batch_size)
    s.encoder.run(batches[0])
    return {"cores": _cores(), "decode_core_s": decode,
            **_model_only(s, batches, min_images)}


def speed_bound(cores: float, decode_core_s: float, infer_core_s: float,
                model_img_s: Optional[float] = None) -> Tuple[float, str]:
    """The images/s this machine's cores allow a path whose decode and inference share them:
    ``cores / (decode_core_s + infer_core_s)`` (every core busy with one stage or the
    other), and never more than the model-only rate (batches run one at a time, so the
    encoder alone caps the pipeline). Returns (bound, which limit applies: "cores" |
    "model")."""
    shared = float(cores) / (float(decode_core_s) + float(infer_core_s))
    if model_img_s is not None and math.isfinite(model_img_s) and model_img_s < shared:
        return float(model_img_s), "model"
    return shared, "cores"


def format_bound_table(rows: Sequence[Tuple[Any, ...]]) -> str:
    """Markdown: per (case, path, core times, e2e images/s[, e2e / bound]), the decode +
    preprocess and inference core-ms per image, the bound they imply (:func:`speed_bound`)
    and e2e as a % of it: the given fraction where there is one (measured pass by pass in
    one process: a drifting machine moves both alike), else e2e / the bound above."""
    lines = ["| case | path | cores | decode + preprocess core-ms / image | inference core-ms "
             "/ image | model-only images/s | bound images/s (limit) | e2e images/s | "
             "e2e % of bound |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case, path, c, e2e, *given in rows:
        if not c:
            lines.append(f"| {case} | {path} | - | - | - | - | - | {e2e:.1f} | - |")
            continue
        bound, limit = speed_bound(c["cores"], c["decode_core_s"], c["infer_core_s"],
                                   c.get("model_img_s"))
        lines.append(f"| {case} | {path} | {c['cores']:.0f} | {1e3 * c['decode_core_s']:.1f} | "
                     f"{1e3 * c['infer_core_s']:.1f} | {c.get('model_img_s', float('nan')):.1f}"
                     f" | {bound:.1f} ({limit}) | {e2e:.1f} | "
                     f"{given[0] if given and given[0] is not None else e2e / bound:.0%} |")
    return "\n".join(lines) + "\n"


BOUND_NOTE = ("Against the machine's bound: decode + preprocess and inference measured alone, "
              "in CPU seconds per image (core-time); bound = cores / (decode + inference "
              "core-time) when both share the cores, capped by the model-only rate; e2e as % "
              "of that bound (torch: not measured).")


def _timed_whole(s, files: Sequence[str], job: Dict[str, Any], first: float) -> Dict[str, Any]:
    """Variant runs: each pass scores the whole list in one call (decode overlapped with
    inference, as `quasar score` does), after one untimed pass (the steady state of a long
    run: at native size the first pass after a one-batch warm-up was the slowest in 2 of 3
    probes, by 6-12 %). Each timed pass is followed by the encoder alone over the same
    inputs (:func:`_model_only`), so that a pass and the bound it is compared with are
    measured seconds apart (this VM's speed drifts by several % within a minute).
    Returns medians over passes (of an even count: the mean of the middle two), ``core``
    (:func:`core_times`' keys) and ``bound_pct``, the median over passes of e2e / bound."""
    import numpy as np

    bs = int(job["batch_size"])
    s.embed(files)  # warm-up: one whole pass
    passes: List[float] = []
    models: List[Dict[str, float]] = []
    emb = rss = None
    decode, batches = 0.0, []
    cores = _cores()
    for k in range(max(1, int(job["repeats"]))):
        t = time.perf_counter()
        emb = s.embed(files)
        passes.append(time.perf_counter() - t)
        if k == 0:  # the pass's own peak, before the inputs below are held
            rss = peak_rss_mb()
            decode, batches = _decoded_batches(s, files, bs)
        models.append(_model_only(s, batches, len(files)))
    core = {"cores": cores, "decode_core_s": decode, **median_core(models)}
    pct = [len(files) / p / speed_bound(cores, decode, m["infer_core_s"], m["model_img_s"])[0]
           for p, m in zip(passes, models)]
    out = {"first_score_at": first, "images_per_s": len(files) / statistics.median(passes),
           "peak_rss_mb": rss, "run_info": s.run_info, "core": core,
           "bound_pct": statistics.median(pct), "model_images_per_s": core["model_img_s"],
           "batch_latency_s": core["batch_s"]}
    if job.get("embeddings_out"):
        np.save(job["embeddings_out"], np.asarray(emb, dtype=np.float32))
    return out


def _worker_main(arg: str) -> None:
    job = json.loads(Path(arg).read_text())
    print("QUASAR_BENCH " + json.dumps(_worker_runtime(job)), flush=True)


def _spawn(job: Dict[str, Any], workdir: Path) -> Measurement:
    r = _spawn_raw(job, workdir)
    return Measurement(job["case"], job["path"], len(job["files"]), job["batch_size"],
                       r["images_per_s"],
                       r["batch_latency_s"], r["first_score_at"] - r["spawned_at"],
                       r["peak_rss_mb"], r.get("core"))


def _spawn_raw(job: Dict[str, Any], workdir: Path) -> Dict[str, Any]:
    jpath = workdir / f"job-{job['case']}-{job['path']}.json"
    jpath.write_text(json.dumps(job))
    t_spawn = time.time()
    if job["path"] == "torch":
        args, module = ["run", str(jpath)], "quasar.export.reference"
    else:
        args, module = [str(jpath)], "quasar.bench.speed"
    r = _run_worker(args, module, f"{job['case']}/{job['path']}")
    r["spawned_at"] = t_spawn
    return r


# --------------------------------------------------------------------------- setup

def make_images(out: Path, n: int, size=(1024, 768), varied: bool = False,
                seed: int = 0) -> List[str]:
    """``n`` JPEG photographs (skimage.data, resized to ``size`` W×H, mirrored variants);
    ``varied``: after the first copy of each photo, random crops with random distortions and
    JPEG qualities (distinct images for agreement measurements)."""
    import numpy as np
    from PIL import Image

    try:
        from skimage import data
        names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                 "hubble_deep_field", "camera", "motorcycle_left")
        photos = []
        for name in names:
            try:
                photos.append(np.asarray(getattr(data, name)()))
            except Exception:  # some samples need pooch downloads
                continue
    except ImportError:
        photos = []
    if not photos:
        rng = np.random.default_rng(0)
        photos = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)]
    out.mkdir(parents=True, exist_ok=True)
    files = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        im = Image.fromarray(photos[i % len(photos)]).convert("RGB")
        if varied and i >= len(photos):
            im = _vary(im, rng)
        im = im.resize(size, Image.BICUBIC)
        if (i // len(photos)) % 2:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        p = out / f"img{i:03d}.jpg"
        im.save(p, quality=int(rng.integers(60, 96)) if varied else 90)
        files.append(str(p))
    return files


def _workdir(workdir: Optional[str]):
    """(folder, TemporaryDirectory or None): ``workdir`` (kept), else a temporary folder."""
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="quasar-bench-")
        workdir = tmp.name
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    return wd, tmp


def _prepare(model_id: str, workdir: Path) -> Dict[str, str]:
    """Random-init bundle + torch checkpoint of ``model_id`` (made by the export side in a
    subprocess: evaluate never imports export)."""
    _log(f"preparing a random-init {model_id} bundle and checkpoint (speed only) in {workdir}")
    return _run_worker(["prepare", model_id, str(workdir)], "quasar.export.reference",
                       f"prepare {model_id}")


def _run_worker(args: List[str], module: str, what: str) -> Dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", module] + args, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("QUASAR_BENCH ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("QUASAR_BENCH "):])


def _vary(im, rng):
    """A random crop (40-100 % of each side) with a random blur, noise or colour change, so
    that the images - and their scores - differ (agreement needs distinct scores)."""
    import numpy as np
    from PIL import Image, ImageEnhance, ImageFilter

    w, h = im.size
    cw, ch = int(w * rng.uniform(0.4, 1.0)), int(h * rng.uniform(0.4, 1.0))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((x0, y0, x0 + cw, y0 + ch))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 4.0))))
    elif kind == 1:
        a = np.asarray(im, dtype=np.float32)
        a = a + rng.normal(0, float(rng.uniform(3, 30)), a.shape)
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    elif kind == 2:
        im = ImageEnhance.Contrast(im).enhance(float(rng.uniform(0.3, 1.7)))
    else:
        im = ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(
            float(rng.uniform(0.5, 1.5)))).enhance(float(rng.uniform(0.0, 2.0)))
    return im


def _ensure_bundle(model_id: str, given: Optional[str], workdir: Path) -> Path:
    """``given``, else the random-init bundle prepared by the export side."""
    return Path(given) if given else Path(_prepare(model_id, workdir)["bundle"])


def _torch_checkpoint(model_id: str, workdir: Path) -> Path:
    """Random weights of the architecture (RN50: bn3 re-initialised), as an open_clip
    checkpoint file, made by the export side (quasar.export.reference)."""
    return Path(_prepare(model_id, workdir)["checkpoint"])


def _dist_size(dist: str) -> int:
    try:
        d = md.distribution(dist)
    except md.PackageNotFoundError:
        return 0
    total = 0
    for f in d.files or []:
        try:
            total += os.path.getsize(d.locate_file(f))
        except OSError:
            pass
    return total


def _requires_closure(roots: Sequence[str]) -> set:
    seen: set = set()
    todo = list(roots)
    while todo:
        name = re.split(r"[<>=!~;\[ (]", todo.pop(), maxsplit=1)[0].strip().lower()
        name = name.replace("_", "-")
        if not name or name in seen:
            continue
        try:
            d = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        for req in d.requires or []:
            if "extra ==" in req:
                continue
            todo.append(req)
    return seen


def install_sizes() -> Dict[str, float]:
    """MB on disk (files in each distribution's RECORD) of the runtime's and torch's stacks."""
    rt = _requires_closure(RUNTIME_DISTS)
    th = _requires_closure(TORCH_DISTS)
    mb = 1 << 20
    return {
        "runtime_core_mb": sum(_dist_size(d) for d in RUNTIME_DISTS) / mb,
        "runtime_closure_mb": sum(_dist_size(d) for d in rt) / mb,
        "torch_core_mb": sum(_dist_size(d) for d in TORCH_DISTS) / mb,
        "torch_closure_mb": sum(_dist_size(d) for d in th) / mb,
        "torch_closure_n": len(th),
        "runtime_closure_n": len(rt),
    }


def machine(device: str = "cpu") -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    try:
        torch_v = md.version("torch")
    except md.PackageNotFoundError:
        torch_v = "-"
    gpu = ""
    if device == "cuda":
        try:
            gpu = ", GPU: " + subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=30,
                check=True).stdout.strip().replace("\n", "; ")
        except (OSError, subprocess.SubprocessError):
            gpu = ", GPU: ? (nvidia-smi unavailable)"
    return (f"{os.cpu_count()} CPUs ({cpu}){gpu}, Python {platform.python_version()}, "
            f"onnxruntime {onnxruntime.__version__} "
            f"({', '.join(onnxruntime.get_available_providers())}), torch {torch_v}")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- report

def format_report(results: List[Measurement], sizes: Dict[str, float], info: str,
                  n_images: int, batch_size: int, random_weights: bool) -> str:
    by = {(m.case, m.path): m for m in results}
    lines = [
        f"Machine: {info}",
        "The same JPEG photographs of 1024×768 for every case, end to end (decode + "
        "preprocess + inference + score); each path in its own fresh process; images/s from "
        "the median of repeated passes; cold start = process start to first score (imports, "
        "model load, one image).",
    ]
    if random_weights:
        lines.append("Weights: random (random-init bundles / checkpoints) - fine for speed, "
                     "scores are meaningless.")
    lines += [
        "",
        "| case | path | images × batch | images/s | latency / batch (s) | cold start (s) "
        "| peak RSS (MB) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for case in dict.fromkeys(m.case for m in results):
        for path in ("torch", "runtime"):
            m = by.get((case, path))
            if m:
                lines.append(f"| {case} | {path} | {m.images} × {m.batch_size} | "
                             f"{m.images_per_s:.2f} | "
                             f"{m.batch_latency_s:.3f} | {m.cold_start_s:.2f} | "
                             f"{m.peak_rss_mb:.0f} |")
        rt, th = by.get((case, "runtime")), by.get((case, "torch"))
        if rt and th:
            lines.append(f"| {case} | **runtime / torch** | | "
                         f"**{rt.images_per_s / th.images_per_s:.2f}×** | "
                         f"{rt.batch_latency_s / th.batch_latency_s:.2f}× | "
                         f"**{th.cold_start_s / rt.cold_start_s:.1f}× faster** | "
                         f"{rt.peak_rss_mb / th.peak_rss_mb:.2f}× |")
    lines += ["", BOUND_NOTE, "",
              format_bound_table([(m.case, m.path, m.core or {}, m.images_per_s)
                                  for m in results]).rstrip("\n")]
    lines += [
        "",
        "| installed size (site-packages) | MB |",
        "|---|---:|",
        f"| runtime: onnxruntime + numpy + pillow + safetensors | {sizes['runtime_core_mb']:.0f} |",
        f"| runtime, with all their dependencies ({sizes['runtime_closure_n']} dists) | "
        f"{sizes['runtime_closure_mb']:.0f} |",
        f"| torch stack: torch + torchvision + open_clip_torch + timm | {sizes['torch_core_mb']:.0f} |",
        f"| torch stack, with all their dependencies ({sizes['torch_closure_n']} dists, "
        f"CUDA wheels included) | {sizes['torch_closure_mb']:.0f} |",
    ]
    return "\n".join(lines) + "\n"


def bench(rn50_bundle: Optional[str] = None, vit_bundle: Optional[str] = None,
          cases: str = "rn50-224,rn50-native,vitb32-224", n_images: int = 16,
          batch_size: int = 8, threads: Optional[int] = None, out: Optional[str] = None,
          workdir: Optional[str] = None, paths: str = "torch,runtime", repeats: int = 3,
          native_images: Optional[int] = None, native_batch_size: int = 2,
          variants: Optional[str] = None, rounds: int = 3, calibration_images: int = 512,
          native_calibration_images: int = 256, min_srcc: Optional[float] = None,
          max_p99_dscore: Optional[float] = None, device: str = "cpu") -> str:
    """Runtime vs PyTorch reference: images/s, latency per batch, cold start, peak RSS, and
    installed sizes. Bundles: --rn50-bundle / --vit-bundle, else random-init ones are
    exported into the work dir (random weights are fine for speed). Prints a markdown table
    (also written to --out).

    With --variants (e.g. "int8-openvino,int8-onnxruntime,bf16-openvino,fast-decode"): the
    precision-variant table instead (see :func:`bench_variants`; rn50-native runs on
    --native-images images (default 16; 4 in the plain table) in batches of
    --native-batch-size; --n-images >= 64 recommended, --rounds interleaved rounds, gate
    thresholds --min-srcc / --max-p99-dscore).

    ``device``: where the runtime paths run (cpu | cuda: ONNX Runtime's CUDA provider, IO
    binding on; the torch path stays the CPU reference)."""
    if variants:
        return bench_variants(cases=cases, variants=variants, n_images=n_images,
                              batch_size=batch_size, threads=threads, rounds=rounds,
                              repeats=repeats, calibration_images=calibration_images,
                              min_srcc=min_srcc, max_p99_dscore=max_p99_dscore,
                              rn50_bundle=rn50_bundle, vit_bundle=vit_bundle, workdir=workdir,
                              out=out, device=device,
                              native_images=16 if native_images is None else native_images,
                              native_batch_size=native_batch_size,
                              native_calibration_images=native_calibration_images)
    n_native = 4 if native_images is None else int(native_images)
    case_list = [c.strip() for c in str(cases).split(",") if c.strip()]
    unknown = [c for c in case_list if c not in CASES]
    if unknown:
        raise ValueError(f"unknown cases {unknown}; choose from {list(CASES)}")
    path_list = [p.strip() for p in str(paths).split(",") if p.strip()]
    wd, tmp = _workdir(workdir)
    files = make_images(wd / "images", int(n_images))
    from quasar.models.catalog import get_model_spec

    results: List[Measurement] = []
    random_weights = False
    for case in case_list:
        model_id, res = CASES[case]
        spec = get_model_spec(model_id)
        given = rn50_bundle if model_id.startswith("clip-rn50") else vit_bundle
        prepared = _prepare(model_id, wd) if (given is None or "torch" in path_list) else {}
        bundle = given or prepared["bundle"]
        random_weights |= given is None
        for path in path_list:
            native = res == "native"
            job = {"case": case, "path": path, "resolution": res,
                   "files": files[:n_native] if native else files,
                   "batch_size": int(native_batch_size if native else batch_size),
                   "repeats": 2 if native else int(repeats),
                   "threads": threads, "bundle": str(bundle), "device": device}
            if path == "torch":
                random_weights = True
                job.update(source_name=spec.source_name,
                           checkpoint=prepared["checkpoint"],
                           nopos=not spec.positional_embedding,
                           mean=list(spec.mean), std=list(spec.std))
            _log(f"{case} / {path} ...")
            m = _spawn(job, wd)
            _log(f"{case} / {path}: {m.images_per_s:.2f} img/s, cold start "
                 f"{m.cold_start_s:.2f} s, peak RSS {m.peak_rss_mb:.0f} MB")
            results.append(m)
    report = format_report(results, install_sizes(), machine(device), int(n_images),
                           int(batch_size), random_weights)
    if out:
        atomic_write_text(out, report)
    if tmp is not None:
        tmp.cleanup()
    return report


# --------------------------------------------------------------------------- variants

VARIANT_CASES = "rn50-224,vitb32-224"
DEFAULT_VARIANTS = "int8-openvino,int8-onnxruntime,bf16-openvino,fast-decode"


@dataclass
class VariantRun:
    case: str
    path: str                       # torch | fp32 | <variant>[+fast-decode]
    precision: str
    backend: str
    e2e: List[float]                # images/s per round
    model: List[float]              # model-only images/s per round (runtime paths)
    cold: List[float]
    rss: List[float]
    agreement: Optional[Dict[str, Any]] = None   # vs runtime fp32 on the bench photos
    gate: Optional[Dict[str, Any]] = None        # quasar optimize's held-out report
    core: List[Dict[str, float]] = field(default_factory=list)  # core_times() per round
    pct: List[float] = field(default_factory=list)  # e2e / bound per round (same process)


def _median(v: Sequence[float]) -> float:
    return float(statistics.median(v)) if v else float("nan")


def cpu_flags_line() -> str:
    from quasar.runtime.backends import cpu_flag_list

    return " ".join(cpu_flag_list()) or "?"


def _variant_bundle(model_id: str, given: Optional[str], wd: Path) -> Path:
    """A bundle the bench may add variants to: a hard-linked copy of ``given``, else an
    export of the same random checkpoint the torch path loads (RN50: bn3 re-initialised)."""
    import shutil

    out = wd / "variant-bundles" / model_id
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if given:
        shutil.copytree(given, out, copy_function=os.link)
        return out
    from quasar.export.bundle import export_bundle

    _log(f"exporting {model_id} from the random checkpoint (speed and agreement mechanics only)")
    export_bundle(model_id, out, checkpoint=_torch_checkpoint(model_id, wd))
    return out


def bench_variants(cases: str = VARIANT_CASES, variants: str = DEFAULT_VARIANTS,
                   n_images: int = 64, batch_size: int = 16, threads: Optional[int] = None,
                   rounds: int = 3, repeats: int = 2, calibration_images: int = 512,
                   min_srcc: Optional[float] = None, max_p99_dscore: Optional[float] = None,
                   rn50_bundle: Optional[str] = None, vit_bundle: Optional[str] = None,
                   workdir: Optional[str] = None, out: Optional[str] = None,
                   torch_path: bool = True, device: str = "cpu", native_images: int = 16,
                   native_batch_size: int = 2, native_calibration_images: int = 256) -> str:
    """Precision variants and backends end to end: torch eager, runtime fp32 and every gated
    variant (and fast decode), each in fresh processes, interleaved over ``rounds``; medians.
    Variants are built with ``quasar optimize`` on separate calibration photos, half of them
    held out for its gate (shown; ``calibration_images`` = 512: 256 held out, as a strict gate
    needs - an SRCC on a few dozen images is coarse and biased low; rn50-native, whose fp32
    pass is ~15x slower, uses the first ``native_calibration_images``), and their agreement
    with runtime fp32 is measured again on the bench
    photos. Returns (and writes to ``out``) a markdown report."""
    from quasar.errors import MissingDependencyError, VariantError
    from quasar.export.precision import Gate, build_and_measure
    from quasar.runtime.agreement import (DEFAULT_MAX_P99_DSCORE, DEFAULT_MIN_SRCC,
                                          agreement_report)
    from quasar.bundle import load_bundle
    import numpy as np

    case_list = [c.strip() for c in str(cases).split(",") if c.strip()]
    unknown = [c for c in case_list if c not in CASES]
    if unknown:
        raise ValueError(f"unknown cases {unknown}; choose from {list(CASES)}")
    names = [v.strip() for v in str(variants).split(",") if v.strip()]
    gate = Gate(DEFAULT_MIN_SRCC if min_srcc is None else float(min_srcc),
                DEFAULT_MAX_P99_DSCORE if max_p99_dscore is None else float(max_p99_dscore))
    wd, tmp = _workdir(workdir)
    files = make_images(wd / "photos", int(n_images), varied=True, seed=0)
    cal = make_images(wd / "calibration", int(calibration_images), varied=True, seed=1)
    from quasar.models.catalog import get_model_spec

    runs: List[VariantRun] = []
    for case in case_list:
        model_id, res = CASES[case]
        spec = get_model_spec(model_id)
        given = rn50_bundle if model_id.startswith("clip-rn50") else vit_bundle
        bundle = _variant_bundle(model_id, given, wd)
        reports: Dict[str, Any] = {}
        for name in names:
            fast = name == "fast-decode"
            prec, _, be = name.partition("-")
            _log(f"{case}: quasar optimize {name} ...")
            try:
                r = build_and_measure(bundle, precision=prec if not fast else "fp32",
                                      backend=None if fast else be,
                                      calibration=cal[:int(native_calibration_images)]
                                      if res == "native" else cal[:],
                                      resolution=res, gate=gate, fast_decode=fast,
                                      batch_size=batch_size, threads=threads)
            except (VariantError, MissingDependencyError) as exc:  # e.g. fp16 without CUDA
                _log(f"{case}: {name} not built: {exc}")
                why = str(exc).split(";")[0][:90]
                runs.append(VariantRun(case, f"{name} (not built: {why})",
                                       "fp32" if fast else prec, "-" if fast else be,
                                       [], [], [], []))
                continue
            reports[r.name] = r
            _log(f"{case}: {r.name} {'passed' if r.passed else 'REFUSED'}")
        b = load_bundle(bundle)
        native = res == "native"  # 1024x768 forward passes: fewer images, smaller batches
        base = {"case": case, "resolution": res,
                "files": files[:int(native_images)] if native else files,
                "batch_size": int(native_batch_size if native else batch_size),
                "repeats": int(repeats), "threads": threads, "bundle": str(bundle),
                "whole_list": True, "device": device}
        paths: List[Tuple[str, Dict[str, Any]]] = []
        if torch_path:
            paths.append(("torch", {"path": "torch", "whole_list": False,
                                    "source_name": spec.source_name,
                                    "checkpoint": str(_torch_checkpoint(model_id, wd)),
                                    "nopos": not spec.positional_embedding,
                                    "mean": list(spec.mean), "std": list(spec.std)}))
        paths.append(("fp32", {"path": "runtime"}))
        models = [n for n, r in reports.items() if r.passed and r.record.kind == "model"]
        for n in models:
            v = b.manifest.variants[n]
            paths.append((n, {"path": "runtime", "precision": v.precision,
                              "backend": v.backend}))
        fd = f"fast-decode-{res}"
        if fd in reports and reports[fd].passed:
            paths.append(("fp32+fast-decode", {"path": "runtime", "fast_decode": True}))
            for n in models:
                v = b.manifest.variants[n]
                paths.append((n + "+fast-decode", {"path": "runtime", "precision": v.precision,
                                                   "backend": v.backend, "fast_decode": True}))
        case_runs = {p: VariantRun(case, p, "fp32", "torch" if p == "torch" else "onnxruntime",
                                   [], [], [], []) for p, _ in paths}
        for rnd in range(int(rounds)):  # interleaved: every path once per round
            for p, extra in paths:
                job = {**base, **extra, "path": extra["path"]}
                job["case"] = f"{case}-{p}"
                if extra["path"] == "runtime" and rnd == 0:
                    job["embeddings_out"] = str(wd / f"emb-{case}-{p}.npy")
                _log(f"{case} / {p} (round {rnd + 1}) ...")
                r = _spawn_raw(job, wd)
                vr = case_runs[p]
                vr.e2e.append(r["images_per_s"])
                vr.cold.append(r["first_score_at"] - r["spawned_at"])
                vr.rss.append(r["peak_rss_mb"])
                if r.get("core"):
                    vr.core.append(r["core"])
                if r.get("bound_pct") is not None:
                    vr.pct.append(r["bound_pct"])
                if "model_images_per_s" in r:
                    vr.model.append(r["model_images_per_s"])
                    vr.precision = r["run_info"]["precision"]
                    vr.backend = r["run_info"]["backend"]
                _log(f"{case} / {p}: {r['images_per_s']:.2f} img/s")
        ref = np.load(wd / f"emb-{case}-fp32.npy")
        for p, extra in paths:
            vr = case_runs[p]
            if extra["path"] == "runtime" and p != "fp32":
                emb = np.load(wd / f"emb-{case}-{p}.npy")
                vr.agreement = agreement_report(ref, emb, b.anchors, gate)
            key = p.split("+")[0]
            if key in reports:
                vr.gate = reports[key].report
            elif p == "fp32+fast-decode":
                vr.gate = reports[fd].report
            runs.append(vr)
        refused = [n for n, r in reports.items() if not r.passed]
        for n in refused:
            runs.append(VariantRun(case, n + " (refused)", reports[n].record.precision,
                                   reports[n].record.backend, [], [], [], [],
                                   gate=reports[n].report))
    report = format_variant_report(runs, machine(device), cpu_flags_line(), int(n_images),
                                   int(batch_size), int(rounds), gate,
                                   native=f"rn50-native: the first {int(native_images)} at "
                                          f"1024×768, batch {int(native_batch_size)}"
                                   if any(CASES[c][1] == "native" for c in case_list) else "")
    if out:
        atomic_write_text(out, report)
    if tmp is not None:
        tmp.cleanup()
    return report


def _worst(rep: Optional[Dict[str, Any]]) -> Tuple[str, str, str]:
    if not rep:
        return "", "", ""
    sets = rep["anchor_sets"].values()
    p99 = max((s["p99_abs_dscore"] for s in sets if s["p99_abs_dscore"] is not None),
              default=float("nan"))
    srcc = [s["srcc"] for s in rep["anchor_sets"].values()]
    srcc_s = "nan" if any(x is None for x in srcc) else f"{min(srcc):.5f}"
    return f"{rep['cosine_min']:.5f}", f"{p99:.2g}", srcc_s


def _default_gate(rep: Dict[str, Any]) -> bool:
    sets = rep["anchor_sets"].values()
    return bool(sets) and all(s["srcc"] is not None and s["srcc"] >= 0.999 and
                              s["p99_abs_dscore"] is not None and s["p99_abs_dscore"] <= 0.01
                              for s in sets)


def format_variant_report(runs: List[VariantRun], info: str, flags: str, n_images: int,
                          batch_size: int, rounds: int, gate, native: str = "") -> str:
    lines = [
        f"Machine: {info}",
        f"CPU flags: {flags}",
        f"{n_images} JPEG photographs of 1024×768 (distinct crops / distortions), batch "
        f"{batch_size}{f' ({native})' if native else ''}, end to end (decode + preprocess + inference + score; the runtime "
        f"overlaps decoding with inference); every path in fresh processes, interleaved over "
        f"{rounds} rounds; images/s = median over rounds (each the median of its passes). "
        "Model-only = the same session on the same photos, preprocessed, batch by batch. Agreement (cos min, p99 "
        "|Δscore|, SRCC) vs runtime fp32 on the bench photos; gate = quasar optimize's verdict "
        f"on its own held-out photos (SRCC >= {gate.min_srcc}, p99 |Δscore| <= "
        f"{gate.max_p99_dscore}).",
        "",
        "| case | path | precision / backend | e2e images/s | × torch | model-only images/s "
        "| e2e / model-only | cold start (s) | peak RSS (MB) | cos min | p99 \\|Δscore\\| | SRCC "
        "| gate (held-out SRCC, p99) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    torch_by_case = {r.case: _median(r.e2e) for r in runs if r.path == "torch"}
    for r in runs:
        e2e = _median(r.e2e)
        th = torch_by_case.get(r.case)
        model = _median(r.model)
        cos, p99, srcc = _worst(r.agreement)
        g = ""
        if r.gate:
            gc, gp, gs = _worst(r.gate)
            g = f"{'pass' if r.gate['passed'] else 'REFUSED'} ({gs}, {gp})"
            if (gate.min_srcc, gate.max_p99_dscore) != (0.999, 0.01):
                g += "; default gate: " + ("pass" if _default_gate(r.gate) else "REFUSED")
        if not r.e2e:
            lines.append(f"| {r.case} | {r.path} | {r.precision} / {r.backend} | - | - | - | - "
                         f"| - | - | | | | {g} |")
            continue
        ratio = f"{e2e / th:.2f}×" if th else "-"
        mcell = f"{model:.1f}" if r.model else "-"
        share = f"{e2e / model:.0%}" if r.model else "-"
        lines.append(f"| {r.case} | {r.path} | {r.precision} / {r.backend} | {e2e:.1f} | "
                     f"{ratio} | {mcell} | {share} | {_median(r.cold):.2f} | "
                     f"{_median(r.rss):.0f} | {cos} | {p99} | {srcc} | {g} |")
    lines += ["", BOUND_NOTE + " Core times: medians over rounds. e2e % of bound: the "
              "median over rounds of each round's own e2e / bound (every timed pass is "
              "followed by the encoder alone over the same inputs, seconds apart).", "",
              format_bound_table([(r.case, r.path, median_core(r.core), _median(r.e2e),
                                   _median(r.pct) if r.pct else None)
                                  for r in runs if r.e2e]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def median_core(rounds: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Per key, the median over rounds of :func:`core_times` ({} when none)."""
    if not rounds:
        return {}
    return {k: _median([c[k] for c in rounds]) for k in rounds[0]}


if __name__ == "__main__":
    _worker_main(sys.argv[1])
