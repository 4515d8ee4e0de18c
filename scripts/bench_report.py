#!/usr/bin/env python
"""Benchmark of ``quasar report``: build time and file size for 10,000-row score files.

Data (made in a temp folder, nothing downloaded): 100 distinct 1024x768 JPEG images, each
hard-linked 100 times under its own name (10,000 image files, so every thumbnail is a real
1024x768 decode); score files like ``quasar score`` writes them (path, score_text,
score_kadis700k, score_ava, status, error) with 1% failed rows. Cases:

* ``one``: one 10,000-row file, 3 anchor sets;
* ``two``: two 10,000-row files compared (paired on all keys), 3 anchor sets each.

Each case runs ``python -m quasar report`` in a fresh process (imports included), the cases
interleaved, ``--runs`` times; the median wall time, the median CPU time (user + system of
the child: what the run costs whatever else the machine is doing) and the size of the HTML
are printed, with the load average.

    .venv/bin/python scripts/bench_report.py [--runs 5] [--rows 10000]
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_data(root: Path, rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pool = []
    yy, xx = np.mgrid[0:768, 0:1024]
    for i in range(100):
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-0.2, 0.2, size=(2, 3))
        img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
        img = img + rng.normal(0, rng.uniform(2, 30), size=img.shape)
        p = root / "pool" / f"p{i:03d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=90)
        pool.append(p)
    imgs = root / "images"
    imgs.mkdir()
    paths = []
    for i in range(rows):
        p = imgs / f"img{i:05d}.jpg"
        os.link(pool[i % 100], p)
        paths.append(str(p))
    sets = ("text", "kadis700k", "ava")
    base = rng.beta(5, 3, size=(rows, len(sets)))
    files = []
    for f in range(2):
        vals = np.clip(base + rng.normal(0.01 * f, 0.03, size=base.shape), 0, 1)
        out = root / f"scores{f}.csv"
        with open(out, "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["path"] + [f"score_{s}" for s in sets] + ["status", "error"])
            for i, p in enumerate(paths):
                if i % 100 == 37:
                    w.writerow([p, "", "", "", "truncated",
                                f"{p}: the image data ends early; re-download or re-copy it"])
                else:
                    w.writerow([p] + [repr(float(v)) for v in vals[i]] + ["ok", ""])
        files.append(out)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rows", type=int, default=10_000)
    args = ap.parse_args()
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor())
    import matplotlib
    print(f"machine: {model}, {os.cpu_count()} CPUs; python {platform.python_version()}, "
          f"matplotlib {matplotlib.__version__}, pillow {Image.__version__}")
    print("cpu flags include: " + " ".join(f for f in ("avx2", "avx512f", "avx512_vnni",
                                                        "avx512_bf16") if f in flags.split()))
    with tempfile.TemporaryDirectory(prefix="quasar-bench-report-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        files = make_data(root, args.rows)
        print(f"data: {args.rows} rows per file, made in {time.perf_counter() - t0:.1f} s")
        cases = {"one": [str(files[0])], "two": [str(f) for f in files]}
        times = {k: [] for k in cases}
        cpu = {k: [] for k in cases}
        sizes = {}
        for _ in range(args.runs):
            for name, inputs in cases.items():  # interleaved
                out = root / f"{name}.html"
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "quasar", "report", *inputs, "--out",
                                str(out), "--quiet"], check=True)
                times[name].append(time.perf_counter() - t)
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[name].append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
                sizes[name] = out.stat().st_size
        print(f"load average after the runs: {os.getloadavg()[0]:.1f} (1 min)")
        print("| case | rows | files | anchor sets | median wall (s) | min–max wall (s) | "
              "median CPU (s) | size (MB) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, inputs in cases.items():
            ts = times[name]
            print(f"| {name} | {args.rows} | {len(inputs)} | 3 | {statistics.median(ts):.2f} | "
                  f"{min(ts):.2f}–{max(ts):.2f} | {statistics.median(cpu[name]):.2f} | "
                  f"{sizes[name] / 1e6:.2f} |")


if __name__ == "__main__":
    main()
