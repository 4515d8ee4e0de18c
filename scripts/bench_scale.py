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
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
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


CPU = {}  # case -> CPU seconds (user + sys) of the command's whole process tree, per run
TICK = os.sysconf("SC_CLK_TCK")


def _proc_table():
    """pid -> (ppid, utime + stime in seconds) of every process, from /proc."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[int(d)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
            except (OSError, IndexError, ValueError):
                pass
    return out


def run(cmd, env=None, case=None) -> float:
    """Wall seconds of ``cmd``; the CPU seconds of its process tree (Ray's GCS, raylet and
    workers included: /proc polled every 0.2 s, the last value of each process kept) go to
    ``CPU[case]``."""
    t0 = time.perf_counter()
    errf = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, text=True, env=env)
    seen = {}
    while proc.poll() is None:
        table = _proc_table()
        tree, grew = {proc.pid}, True
        while grew:
            grew = False
            for pid, (ppid, _) in table.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        for pid in tree:
            if pid in table:
                seen[pid] = max(seen.get(pid, 0.0), table[pid][1])
        time.sleep(0.2)
    proc.wait()
    errf.seek(0)
    proc.stderr = errf.read()
    dt = time.perf_counter() - t0
    if case is not None:
        CPU.setdefault(case, []).append(sum(seen.values()))
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
    ap.add_argument("--cases", help="comma-separated substrings selecting cases (default all)")
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
    all_cases = {
        "local, loose files": py + [str(loose), "--out", str(root / "l.csv")] + common,
        "local, WebDataset": py + [shard_pattern, "--out", str(root / "w.csv")] + common,
        "ray, loose files": py + [str(loose), "--out", str(root / "rl"), "--engine", "ray",
                                  "--files-per-part", str(args.n // args.shards)] + common,
        "ray, WebDataset": py + [shard_pattern, "--out", str(root / "rw"), "--engine", "ray"] + common,
        "ray, 1 image (fixed cost)": py + [str(one), "--out", str(root / "r1"), "--engine", "ray"] + common,
    }
    cases = {k: v for k, v in all_cases.items()
             if not args.cases or any(c in k for c in args.cases.split(","))}
    # warm-up: fills the ORT session cache and the page cache for every case
    run(py + [str(one), "--out", str(root / "warm.csv")] + common)
    times = {k: [] for k in cases}
    for r in range(args.rounds):
        for name, cmd in cases.items():
            times[name].append(run(cmd, case=name))
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
    with open("/proc/loadavg") as f:
        print("load average at the end (1, 5, 15 min):", " ".join(f.read().split()[:3]))
    print(f"images: {args.n} JPEG {args.size}x{args.size} (loose files and {args.shards} "
          f"WebDataset shards); bundle {bundle.name} ({args.model if not args.bundle else 'given'}), "
          f"batch {args.batch_size}; {args.rounds} rounds, interleaved, median wall time of "
          "the whole command (process start to exit)\n")
    med = {k: statistics.median(v) for k, v in times.items()}
    print("| case | wall (s), median | all runs (s) | images/s | CPU s (user+sys), median | CPU ms / image |")
    print("|---|---:|---|---:|---:|---:|")
    for k, v in times.items():
        n = 1 if "1 image" in k else args.n
        c = statistics.median(CPU[k])
        print(f"| {k} | {med[k]:.1f} | {', '.join(f'{x:.1f}' for x in v)} | {n / med[k]:.1f} "
              f"| {c:.1f} | {1000 * c / n:.1f} |")
    fixed = (med["ray, 1 image (fixed cost)"] - run_single_local(py, one, root, common)
             if "ray, 1 image (fixed cost)" in med else 0.0)
    for kind in ("loose files", "WebDataset"):
        if f"local, {kind}" not in med or f"ray, {kind}" not in med:
            continue
        loc, ry = med[f"local, {kind}"], med[f"ray, {kind}"]
        cl, cr = statistics.median(CPU[f"local, {kind}"]), statistics.median(CPU[f"ray, {kind}"])
        print(f"\nRay overhead, {kind}: wall end to end {100 * (ry - loc) / loc:+.1f} %; "
              f"without Ray's fixed cost ({fixed:.1f} s) {100 * (ry - fixed - loc) / loc:+.1f} %; "
              f"CPU time {100 * (cr - cl) / cl:+.1f} %")
    if "local, WebDataset" in med and "local, loose files" in med:
        lw, ll = med["local, WebDataset"], med["local, loose files"]
        cw, cl = (statistics.median(CPU[f"local, {k}"]) for k in ("WebDataset", "loose files"))
        print(f"local WebDataset vs loose files: {100 * (lw - ll) / ll:+.1f} % wall time, "
              f"{100 * (cw - cl) / cl:+.1f} % CPU time")


def run_single_local(py, one, root, common) -> float:
    return statistics.median(run(py + [str(one), "--out", str(root / "one.csv")] + common)
                             for _ in range(3))


if __name__ == "__main__":
    main()
