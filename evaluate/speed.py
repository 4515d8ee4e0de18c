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
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from quasar.timing import timed
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

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


# --------------------------------------------------------------------------- workers

def _worker_runtime(job: Dict[str, Any]) -> Dict[str, Any]:
    from quasar.runtime.scorer import Scorer

    s = Scorer.from_bundle(job["bundle"], resolution=job["resolution"],
                           batch_size=job["batch_size"], threads=job["threads"], device="cpu")
    files = job["files"]
    s.score(files[:1])
    first = time.time()

    def run(batch):
        return s.score(batch)

    return timed(run, files, job["batch_size"], first, job["repeats"])


def _worker_main(arg: str) -> None:
    job = json.loads(Path(arg).read_text())
    print("QUASAR_BENCH " + json.dumps(_worker_runtime(job)), flush=True)


def _spawn(job: Dict[str, Any], workdir: Path) -> Measurement:
    jpath = workdir / f"job-{job['case']}-{job['path']}.json"
    jpath.write_text(json.dumps(job))
    t_spawn = time.time()
    if job["path"] == "torch":
        args, module = ["run", str(jpath)], "quasar.export.reference"
    else:
        args, module = [str(jpath)], "quasar.evaluate.speed"
    r = _run_worker(args, module, f"{job['case']}/{job['path']}")
    return Measurement(job["case"], job["path"], len(job["files"]), job["batch_size"],
                       r["images_per_s"],
                       r["batch_latency_s"], r["first_score_at"] - t_spawn, r["peak_rss_mb"])


# --------------------------------------------------------------------------- setup

def make_images(out: Path, n: int, size=(1024, 768)) -> List[str]:
    """``n`` JPEG photographs (skimage.data, resized to ``size`` W×H, mirrored variants)."""
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
    for i in range(n):
        im = Image.fromarray(photos[i % len(photos)]).convert("RGB").resize(size, Image.BICUBIC)
        if (i // len(photos)) % 2:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        p = out / f"img{i:03d}.jpg"
        im.save(p, quality=90)
        files.append(str(p))
    return files


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


def machine() -> str:
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
    return (f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
            f"onnxruntime {onnxruntime.__version__}, torch {torch_v}")


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
          native_images: int = 4, native_batch_size: int = 2) -> str:
    """Runtime vs PyTorch reference: images/s, latency per batch, cold start, peak RSS, and
    installed sizes. Bundles: ``rn50_bundle`` / ``vit_bundle``, else random-init ones are
    exported into the work dir (random weights are fine for speed). Returns a markdown table
    (also written to ``out``). CLI: ``quasar bench`` (options in quasar/commands/bench.py)."""
    case_list = [c.strip() for c in str(cases).split(",") if c.strip()]
    unknown = [c for c in case_list if c not in CASES]
    if unknown:
        raise ValueError(f"unknown cases {unknown}; choose from {list(CASES)}")
    path_list = [p.strip() for p in str(paths).split(",") if p.strip()]
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="quasar-bench-")
        workdir = tmp.name
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
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
                   "files": files[:int(native_images)] if native else files,
                   "batch_size": int(native_batch_size if native else batch_size),
                   "repeats": 2 if native else int(repeats),
                   "threads": threads, "bundle": str(bundle)}
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
    report = format_report(results, install_sizes(), machine(), int(n_images),
                           int(batch_size), random_weights)
    if out:
        Path(out).write_text(report)
    if tmp is not None:
        tmp.cleanup()
    return report


if __name__ == "__main__":
    _worker_main(sys.argv[1])
