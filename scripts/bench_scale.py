#!/usr/bin/env python
"""Benchmark of issue 12: the Ray engine against the local engine, WebDataset against loose files.

On the same N images (default 2,000 JPEGs of 256x256, small so that the 2-vCPU build machine
finishes in minutes; quality 90, smooth random content) this runs, each in a fresh process
(``python -m quasar score``), interleaved over ``--rounds`` rounds, and prints medians:

* local engine on loose files, local engine on WebDataset shards (same bytes),
* ``--engine ray`` (a local Ray started by the command) on loose files and on the shards,
* ``--engine ray`` on a single image: Ray's fixed cost (start, actor pool, session), which
  the steady-state overhead subtracts.

Usage::

    .venv/bin/python scripts/bench_scale.py --work /tmp/bench-scale [--bundle DIR]
        [--model vit-b-32.openai] [--n 2000] [--shards 8] [--rounds 2]

Without ``--bundle`` a random-init bundle of ``--model`` is exported once (needs the export
extra); speed does not depend on the weights. Scores are not compared here (the tests do).
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np


def make_images(root: Path, n: int, size: int, shards: int, seed: int = 0):
    from PIL import Image

    loose = root / "loose"
    wds = root / "wds"
    if (root / "DONE").exists():
        return loose, wds
    loose.mkdir(parents=True, exist_ok=True)
    wds.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = (n + shards - 1) // shards
    tars = [tarfile.open(wds / f"shard-{s:05d}.tar", "w") for s in range(shards)]
    for i in range(n):
        low = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
        arr = np.clip(np.asarray(img, np.int16) + rng.integers(-12, 13, (size, size, 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        (loose / f"{i:06d}.jpg").write_bytes(data)
        for name, blob in ((f"{i:06d}.jpg", data), (f"{i:06d}.json", b'{"i": %d}' % i)):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tars[i // per].addfile(info, io.BytesIO(blob))
    for t in tars:
        t.close()
    (root / "DONE").write_text("ok")
    return loose, wds


def export_bundle(root: Path, model: str) -> Path:
    out = root / "bundle"
    if not (out / "bundle.json").exists():
        from quasar.export.bundle import export_bundle as export

        export(model, out, random_init=True, seed=0)
    return out


def run(cmd, env=None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/bench-scale")
    ap.add_argument("--bundle")
    ap.add_argument("--model", default="vit-b-32.openai")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    root = Path(args.work)
    root.mkdir(parents=True, exist_ok=True)
    loose, wds = make_images(root, args.n, args.size, args.shards)
    bundle = Path(args.bundle) if args.bundle else export_bundle(root, args.model)
    one = root / "one"
    one.mkdir(exist_ok=True)
    (one / "x.jpg").write_bytes((loose / "000000.jpg").read_bytes())
    shard_pattern = str(wds / f"shard-{{00000..{args.shards - 1:05d}}}.tar")
    py = [sys.executable, "-m", "quasar", "score"]
    common = ["--bundle", str(bundle), "--quiet", "--overwrite", "--batch-size",
              str(args.batch_size)]
    cases = {
        "local, loose files": py + [str(loose), "--out", str(root / "l.csv")] + common,
        "local, WebDataset": py + [shard_pattern, "--out", str(root / "w.csv")] + common,
        "ray, loose files": py + [str(loose), "--out", str(root / "rl"), "--engine", "ray",
                                  "--files-per-part", str(args.n // args.shards)] + common,
        "ray, WebDataset": py + [shard_pattern, "--out", str(root / "rw"), "--engine", "ray"] + common,
        "ray, 1 image (fixed cost)": py + [str(one), "--out", str(root / "r1"), "--engine", "ray"] + common,
    }
    # warm-up: fills the ORT session cache and the page cache for every case
    run(py + [str(one), "--out", str(root / "warm.csv")] + common)
    times = {k: [] for k in cases}
    for r in range(args.rounds):
        for name, cmd in cases.items():
            times[name].append(run(cmd))
            print(f"round {r + 1}: {name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)

    import onnxruntime
    import ray

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
          f"ray {ray.__version__}")
    with open("/proc/cpuinfo") as f:
        flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    print("cpu flags (selection):", " ".join(x for x in flags if x.startswith(("avx", "amx")) or
                                              x in ("fma", "f16c", "vnni")))
    print(f"images: {args.n} JPEG {args.size}x{args.size} (loose files and {args.shards} "
          f"WebDataset shards); bundle {bundle.name} ({args.model if not args.bundle else 'given'}), "
          f"batch {args.batch_size}; {args.rounds} rounds, interleaved, median wall time of "
          "the whole command (process start to exit)\n")
    med = {k: statistics.median(v) for k, v in times.items()}
    print("| case | wall (s), median | all runs (s) | images/s |")
    print("|---|---:|---|---:|")
    for k, v in times.items():
        n = 1 if "1 image" in k else args.n
        print(f"| {k} | {med[k]:.1f} | {', '.join(f'{x:.1f}' for x in v)} | {n / med[k]:.1f} |")
    fixed = med["ray, 1 image (fixed cost)"] - run_single_local(py, one, root, common)
    for kind in ("loose files", "WebDataset"):
        loc, ry = med[f"local, {kind}"], med[f"ray, {kind}"]
        print(f"\nRay overhead, {kind}: end to end {100 * (ry - loc) / loc:+.1f} %; "
              f"without Ray's fixed cost ({fixed:.1f} s) {100 * (ry - fixed - loc) / loc:+.1f} %")
    lw, ll = med["local, WebDataset"], med["local, loose files"]
    print(f"local WebDataset vs loose files: {100 * (lw - ll) / ll:+.1f} % wall time")


def run_single_local(py, one, root, common) -> float:
    return statistics.median(run(py + [str(one), "--out", str(root / "one.csv")] + common)
                             for _ in range(3))


if __name__ == "__main__":
    main()
