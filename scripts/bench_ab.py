"""Good-path speed of two trees: `quasar score` in fresh processes, interleaved rounds (the
order alternates), median wall time per (tree, input kind); same images, bundle, options.

    python scripts/bench_ab.py WORKDIR N ROUNDS BUNDLE

The base tree is importable through PYTHONPATH=$QUASAR_AB_BASE (a folder holding its
`quasar` package, with a sitecustomize.py that drops the editable install's finder); HEAD is
the installed tree. Used for issue 17's "good-path speed stays within 2 %" (docs/score.md).
"""
import os, statistics, subprocess, sys, time, platform
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import make_images  # noqa: E402

PY = sys.executable
work = Path(sys.argv[1]); n = int(sys.argv[2]); rounds = int(sys.argv[3]); bundle = sys.argv[4]
loose, wds = make_images(work, n, 256, 4)
(work / "DONE").touch()
trees = {"base": {"PYTHONPATH": os.environ.get("QUASAR_AB_BASE", "/tmp/base")},
         "HEAD": {}}
inputs = {"loose": [str(loose)], "webdataset": [str(wds / "shard-{00000..00003}.tar")]}
times = {(t, k): [] for t in trees for k in inputs}
for r in range(rounds):
    order = list(trees) if r % 2 == 0 else list(reversed(trees))
    for k, spec in inputs.items():
        for t in order:
            env = dict(os.environ, **trees[t])
            out = work / f"out-{t.split()[0]}-{k}.csv"
            t0 = time.perf_counter()
            p = subprocess.run([PY, "-m", "quasar", "score", *spec, "--bundle", bundle, "--out",
                                str(out), "--overwrite", "-q", "--batch-size", "16"],
                               env=env, cwd="/tmp", capture_output=True, text=True)
            dt = time.perf_counter() - t0
            assert p.returncode == 0, (t, k, p.stderr[-2000:])
            times[(t, k)].append(dt)
            print(f"round {r} {k:10s} {t:13s} {dt:6.2f} s", flush=True)
from quasar.runtime.backends import cpu_flag_list  # noqa: E402
print("cpu:", platform.processor() or "", os.cpu_count(), "cores; flags:",
      " ".join(f for f in cpu_flag_list() if f.startswith(("avx", "amx"))))
for k in inputs:
    b = statistics.median(times[("base", k)]); h = statistics.median(times[("HEAD", k)])
    print(f"{k:10s} n={n} rounds={rounds}: base {b:.2f} s, HEAD {h:.2f} s, HEAD/base {h / b:.4f} "
          f"({(h / b - 1) * 100:+.1f} %)")
