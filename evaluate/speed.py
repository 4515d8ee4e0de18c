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

    return _timed(run, files, job["batch_size"], first, job["repeats"])


def _worker_torch(job: Dict[str, Any]) -> Dict[str, Any]:
    import open_clip
    import torch
    from PIL import Image
    from torchvision.transforms import Compose, Normalize, ToTensor

    if job["threads"]:
        torch.set_num_threads(int(job["threads"]))
    model, _, _ = open_clip.create_model_and_transforms(
        job["source_name"], pretrained=job["checkpoint"], force_quick_gelu=True)
    model.eval()
    mean, std = job["mean"], job["std"]
    if job["resolution"] == "224":
        tf = open_clip.image_transform(224, is_train=False, mean=mean, std=std)
    else:  # the reference's native mode: convert, ToTensor, Normalize
        tf = Compose([lambda im: im.convert("RGB"), ToTensor(), Normalize(mean, std)])
    if job["nopos"]:
        from quasar.export.encoders import NoPosModifiedResNet
        encode = NoPosModifiedResNet(model.visual).eval()
    else:
        encode = model.encode_image
    tokens = open_clip.get_tokenizer(job["source_name"])(["Good photo.", "Bad photo."])
    with torch.no_grad():
        anchors = model.encode_text(tokens).float()
        anchors = anchors / anchors.norm(dim=-1, keepdim=True)
    scale = torch.tensor([1 / 0.07])

    def run(batch):  # the reference: DataLoader(num_workers=0) + encode + main.py formula
        with torch.no_grad():
            x = []
            for f in batch:
                with Image.open(f) as im:
                    x.append(tf(im))
            groups: Dict[Any, List[int]] = {}
            for i, t in enumerate(x):
                groups.setdefault(tuple(t.shape), []).append(i)
            out = torch.empty(len(x))
            for idx in groups.values():
                e = encode(torch.stack([x[i] for i in idx])).float()
                e = e / e.norm(dim=-1, keepdim=True)
                p = (scale * e @ anchors.t()).softmax(dim=-1)[:, 0]
                out[idx] = p
            return out.numpy()

    files = job["files"]
    run(files[:1])
    first = time.time()
    return _timed(run, files, job["batch_size"], first, job["repeats"])


def _timed(run, files: Sequence[str], batch_size: int, first: float,
           repeats: int = 2) -> Dict[str, Any]:
    """Warm up at full batch size, then ``repeats`` passes over ``files`` batch by batch:
    images/s from the median pass, latency = median batch time."""
    run(files[:batch_size])
    passes, lat = [], []
    for _ in range(max(1, int(repeats))):
        total = 0.0
        for i in range(0, len(files), batch_size):
            tb = time.perf_counter()
            run(files[i:i + batch_size])
            dt = time.perf_counter() - tb
            lat.append(dt)
            total += dt
        passes.append(total)
    passes.sort()
    lat.sort()
    return {
        "first_score_at": first,
        "images_per_s": len(files) / passes[len(passes) // 2],
        "batch_latency_s": lat[len(lat) // 2],
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: ``VmHWM`` of /proc/self/status.

    (``getrusage().ru_maxrss`` is not used: Linux carries the parent's peak across
    fork + exec, so a worker spawned by a parent holding torch would report torch's memory.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker_main(arg: str) -> None:
    job = json.loads(Path(arg).read_text())
    fn = _worker_runtime if job["path"] == "runtime" else _worker_torch
    print("QUASAR_BENCH " + json.dumps(fn(job)), flush=True)


def _spawn(job: Dict[str, Any], workdir: Path) -> Measurement:
    jpath = workdir / f"job-{job['case']}-{job['path']}.json"
    jpath.write_text(json.dumps(job))
    t_spawn = time.time()
    proc = subprocess.run([sys.executable, "-m", "quasar.evaluate.speed", str(jpath)],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("QUASAR_BENCH ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {job['case']}/{job['path']} failed:\n"
                           f"{proc.stderr[-3000:]}")
    r = json.loads(lines[-1][len("QUASAR_BENCH "):])
    return Measurement(job["case"], job["path"], len(job["files"]), job["batch_size"],
                       r["images_per_s"],
                       r["batch_latency_s"], r["first_score_at"] - t_spawn, r["peak_rss_mb"])


# --------------------------------------------------------------------------- setup

def make_images(out: Path, n: int, size=(1024, 768), varied: bool = False) -> List[str]:
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
    rng = np.random.default_rng(0)
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
    if given:
        return Path(given)
    from quasar.export.bundle import export_bundle

    out = workdir / "bundles" / model_id
    if not (out / "bundle.json").exists():
        _log(f"exporting a random-init {model_id} bundle (speed only) to {out}")
        export_bundle(model_id, out, random_init=True, seed=0)
    return out


def _torch_checkpoint(model_id: str, workdir: Path) -> Path:
    """Random weights of the architecture, saved as an open_clip checkpoint file."""
    import torch
    import open_clip

    from quasar.models.catalog import get_model_spec

    spec = get_model_spec(model_id)
    path = workdir / f"{spec.source_name}-random.pt"
    if not path.exists():
        torch.manual_seed(0)
        m = open_clip.create_model(spec.source_name, pretrained=None,
                                   force_quick_gelu=spec.quick_gelu)
        torch.save(m.state_dict(), path)
    return path


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
    installed sizes. Bundles: --rn50_bundle / --vit_bundle, else random-init ones are
    exported into the work dir (random weights are fine for speed). Prints a markdown table
    (also written to --out)."""
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
        bundle = _ensure_bundle(model_id, given, wd)
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
                           checkpoint=str(_torch_checkpoint(model_id, wd)),
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
