"""Hostile corpus for ``quasar score`` (issue 9): generate >= 80 hostile inputs, run them
through the CLI and the Python API, and the run-level attacks (SIGKILL at 5 points + resume,
concurrent writers, a full disk, tampered bundle / external data / ORT cache). Prints the
tables quoted in docs/score.md ("Reliability").

    python scripts/hostile_corpus.py [--bundle DIR] [--workdir DIR]

Without ``--bundle`` a tiny hand-made bundle (tests/runtime/rt_helpers.py; needs onnx) is
used: what is tested here is the handling of inputs and outputs, not the model. As root,
the runs that must not read unreadable files run under ``setpriv`` without the DAC
capabilities (root ignores chmod 000 otherwise).
"""
from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]
SETPRIV = shutil.which("setpriv")
NO_DAC = ([SETPRIV, "--bounding-set=-dac_override,-dac_read_search",
           "--inh-caps=-dac_override,-dac_read_search"] if SETPRIV and os.geteuid() == 0 else [])
TIMEOUT = 300
_RNG = np.random.default_rng(9)  # "random" file contents, the same on every run


def rt_helpers():
    spec = importlib.util.spec_from_file_location("rt_helpers", ROOT / "tests/runtime/rt_helpers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def noise(h, w, seed=0, c=3):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def png_chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_declaring(w, h, idat=b"\x00" * 16):
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(idat)) + png_chunk(b"IEND", b""))


# --------------------------------------------------------------------------- the corpus
def make_corpus(d: Path):
    """Files in folder ``d`` (scanned as a folder) and extra explicit inputs (an @list).
    Returns (expected inputs of the folder scan, extra inputs)."""
    d.mkdir(parents=True)
    good = Image.fromarray(noise(30, 40))

    def save(name, img=None, fmt="PNG", **kw):
        (img or good).save(d / name, fmt, **kw)

    # --- names (valid images under hostile names): 16
    names = ["cr\rname.png", "lf\nname.png", "tab\tname.png", "esc\x1b[31mred.png",
             "bell\x07.png", "del\x7f.png", "=HYPERLINK(1).png", "+SUM(1).png", "-2+3.png",
             "@cmd.png", "'quoted.png", "b64:looks-encoded.png", 'comma,"quote".png',
             "ünïcødé 名前.png", "\u2028linesep.png", "sp ace.png"]
    for n in names:
        save(n)
    (d / os.fsdecode(b"latin1-\xe9\xff.png")).write_bytes((d / "sp ace.png").read_bytes())
    # --- content: 40
    (d / "empty.png").write_bytes(b"")
    buf = d / "full.jpg.tmp"
    Image.fromarray(noise(200, 200, 1)).save(buf, "JPEG", quality=95)
    data = buf.read_bytes()
    buf.unlink()
    (d / "truncated_half.jpg").write_bytes(data[: len(data) // 2])
    (d / "truncated_soi.jpg").write_bytes(data[:2])
    (d / "truncated_header.jpg").write_bytes(data[:300])
    (d / "text.png").write_text("not an image\n" * 20)
    (d / "page.jpg").write_text("<!doctype html><html><body>404</body></html>")
    (d / "random.webp").write_bytes(_RNG.bytes(4096))
    (d / "zeros.png").write_bytes(b"\0" * 4096)
    (d / "bomb_header.png").write_bytes(png_declaring(100_000, 100_000))
    (d / "bomb_zlib.png").write_bytes(png_declaring(20_000, 20_000, b"\0" * 1_000_000))
    Image.new("L", (1, 50_000), 255).save(d / "thin_1x50000.png")
    Image.new("L", (50_000, 1), 255).save(d / "wide_50000x1.png")
    Image.new("L", (3, 40_000), 0).save(d / "thin_3x40000.png")
    p = bytearray((d / "sp ace.png").read_bytes())
    p[30] ^= 0xFF  # inside IHDR/IDAT: CRC mismatch
    (d / "bad_crc.png").write_bytes(bytes(p))
    pb = (d / "sp ace.png").read_bytes()
    (d / "png_cut_idat.png").write_bytes(pb[: len(pb) - 30])
    (d / "png_sig_only.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (d / "gif_header_only.gif").write_bytes(b"GIF89a\x10\x00\x10\x00")
    (d / "tiff_garbage.tif").write_bytes(b"II*\x00" + _RNG.bytes(200))
    (d / "bmp_huge_dims.bmp").write_bytes(b"BM" + struct.pack("<IHHI", 70, 0, 0, 54)
                                         + struct.pack("<IiiHHIIiiII", 40, 2**30, 2**30, 1, 24, 0, 0, 0, 0, 0, 0))
    (d / "heic_photo.heic").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + _RNG.bytes(300))
    (d / "heif_as_jpg.jpg").write_bytes(b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic" + _RNG.bytes(300))
    (d / "avif_garbage.avif").write_bytes(b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf" + _RNG.bytes(300))
    (d / "webp_truncated.webp").write_bytes(b"RIFF\xff\xff\x00\x00WEBPVP8 " + _RNG.bytes(20))
    (d / "svg.png").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="9e9" height="9e9"/>')
    (d / "pdf.jpg").write_bytes(b"%PDF-1.4\n" + _RNG.bytes(100))
    (d / "zip.png").write_bytes(b"PK\x03\x04" + _RNG.bytes(100))
    (d / "ppm_huge_header.ppm").write_bytes(b"P6\n99999 99999\n255\n" + _RNG.bytes(64))
    (d / "tga_garbage.tga").write_bytes(_RNG.bytes(300))
    (d / "jp2_garbage.jp2").write_bytes(b"\0\0\0\x0cjP  \r\n\x87\n" + _RNG.bytes(200))
    (d / "gif_lzw_garbage.gif").write_bytes(b"GIF89a\x10\x00\x10\x00\x00\x00\x00,\x00\x00\x00\x00"
                                             b"\x10\x00\x10\x00\x00\x08" + _RNG.bytes(50))
    Image.fromarray(noise(30, 40, 11)).save(d / "valid.webp", "WEBP")
    Image.new("L", (1, 10_000), 128).save(d / "thin_1x10000.png")
    # decodable oddities (must be scored)
    Image.fromarray(noise(40, 50, 2, 4), "CMYK").save(d / "cmyk.jpg", "JPEG")
    Image.fromarray(noise(30, 30, 3, 1)[:, :, 0].astype(np.uint16) * 257).save(d / "deep16.png")
    good.convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(d / "palette.png", transparency=0)
    frames = [Image.fromarray(noise(20, 20, 4 + k)).convert("P") for k in range(3)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (1, 1), (1, 2, 3)).save(d / "one_pixel.png")
    good.convert("1").save(d / "bilevel.png")
    good.convert("LA").save(d / "gray_alpha.png")
    Image.fromarray(noise(30, 40, 5)).save(d / "progressive.jpg", "JPEG", progressive=True)
    Image.fromarray(np.random.default_rng(6).random((20, 20)).astype(np.float32), "F").save(d / "float.tif")
    Image.fromarray(noise(30, 40, 7)).save(d / "jpeg_named.png", "JPEG")
    ex = Image.fromarray(noise(30, 40, 8))
    exif = ex.getexif()
    exif[0x0112] = 6
    ex.save(d / "exif_rotated.jpg", "JPEG", exif=exif)
    Image.fromarray(noise(20, 30, 9)).save(d / "icon.ico")
    Image.fromarray(noise(16, 16, 10)).save(d / "pnm.ppm")
    # --- file system: 14
    os.mkfifo(d / "fifo.png")
    os.mkfifo(d / "fifo_noext")
    socket.socket(socket.AF_UNIX).bind(str(d / "socket.jpg"))
    os.symlink("/dev/zero", d / "devzero.png")
    os.symlink("/dev/null", d / "devnull.jpg")
    os.symlink(d / "nowhere.png", d / "dangling.png")
    os.symlink(d / "nowhere", d / "dangling_noext")
    os.symlink(d / "selfloop.png", d / "selfloop.png")
    os.symlink(d / "loop_b.jpg", d / "loop_a.jpg")
    os.symlink(d / "loop_a.jpg", d / "loop_b.jpg")
    (d / "dir.png").mkdir()
    os.symlink(d, d / "dir.png" / "up")  # a folder loop
    (d / "locked_dir").mkdir()
    save("locked_dir/inside.png")
    os.chmod(d / "locked_dir", 0)
    save("no_read.png")
    os.chmod(d / "no_read.png", 0)
    (d / "deep").mkdir()
    cur = d / "deep"
    for i in range(60):
        cur = cur / f"level{i:02d}"
    cur.mkdir(parents=True)
    save(str((cur / "deep.png").relative_to(d)))
    # --- explicit extra inputs (an @list): 8
    extra = [str(d / "missing.png"), str(d / ("x" * 300 + ".png")),
             "/" + "a/" * 3000 + "long.png", str(d / "dir.png"), "/dev/zero", "/proc/self/mem",
             str(d / "fifo.png"), "/etc/shadow"]
    return extra


def cli_rows(args, out, env=None, pre=()):
    t0 = time.perf_counter()
    try:
        r = subprocess.run(list(pre) + [PY, "-c", "import sys; from quasar.cli import main; main()",
                                        "score", *args, "--out", str(out)],
                           capture_output=True, text=True, timeout=TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        return None, "hung", time.perf_counter() - t0
    return r, r.stderr, time.perf_counter() - t0


API_SCRIPT = r"""
import json, sys, numpy as np
from quasar.runtime.scorer import Scorer
b, lst = sys.argv[1:3]
paths = [l.rstrip("\n") for l in open(lst, encoding="utf-8", errors="surrogateescape")]
import os
paths = [os.fsdecode(__import__("base64").b64decode(p)) for p in paths]
extra = [b"", b"garbage bytes", bytearray(10), np.zeros((0, 5, 3), np.uint8),
         np.zeros((5, 5, 3), np.float32), np.full((4, 4, 3), np.nan), np.zeros((4, 4, 7), np.uint8),
         np.zeros((2, 3, 4, 5), np.uint8), None, 12345]
sc = Scorer.from_bundle(b, device="cpu")
res = sc.score(paths + extra, errors="collect")
out = []
for v, e in zip(res.values, res.errors):
    out.append("ok" if e is None else getattr(e, "status", type(e).__name__))
print(json.dumps(out))
"""


def corpus_section(bundle: Path, work: Path):
    corpus = work / "corpus"
    extra = make_corpus(corpus)

    lst = work / "extra.txt"
    lst.write_text("\n".join(extra) + "\n", encoding="utf-8", errors="surrogateescape")
    # what must have a row: every non-hidden entry of the folder (recursively) that is not a
    # regular non-image file, plus every explicit input
    expected = set()
    for dp, dns, fns in os.walk(corpus, followlinks=False):
        for n in fns + dns:
            p = os.path.join(dp, n)
            if os.sep + "locked_dir" + os.sep in p:
                continue  # inside the folder that cannot be listed: its row stands for it
            if os.path.isdir(p) and not os.path.islink(p):
                if n == "locked_dir":
                    expected.add(p)
                continue
            if os.path.islink(p) and os.path.isdir(p):
                expected.add(p)  # a folder loop (dir.png/up)
                continue
            expected.add(p)
    n_inputs = len(expected) + len(extra)  # fifo.png is given twice: two rows
    expected |= set(extra)
    out = work / "cli.jsonl"
    r, err, secs = cli_rows([str(corpus), f"@{lst}", "--bundle", str(bundle), "-q"], out,
                            pre=NO_DAC)
    from quasar.runtime.writers import read_table

    rows = read_table(str(out)) if out.exists() else []
    got = {r_["path"] for r_ in rows}
    crashed = int(r is not None and (r.returncode not in (0, 3) or "Traceback" in r.stderr))
    hung = int(r is None)
    statuses = Counter(x["status"] for x in rows)
    cli = dict(tried=n_inputs, rows=len(rows), errors=sum(v for k, v in statuses.items() if k != "ok"),
               ok=statuses.get("ok", 0), crashed=crashed, hung=hung,
               skipped=len(expected - got), unexpected=len(got - expected), seconds=secs,
               exit=None if r is None else r.returncode, statuses=dict(statuses),
               missing=sorted(expected - got)[:5])
    # the API: the same files (not the folders) plus 10 in-memory inputs
    files = sorted(p for p in expected if not (os.path.isdir(p) and not os.path.islink(p)))
    blist = work / "api.txt"
    blist.write_text("\n".join(base64.b64encode(os.fsencode(p)).decode() for p in files) + "\n")
    t0 = time.perf_counter()
    try:
        ra = subprocess.run(NO_DAC + [PY, "-c", API_SCRIPT, str(bundle), str(blist)],
                            capture_output=True, text=True, timeout=TIMEOUT)
        res = json.loads(ra.stdout.strip().splitlines()[-1]) if ra.returncode == 0 else None
        api_hung = 0
    except subprocess.TimeoutExpired:
        ra, res, api_hung = None, None, 1
    asecs = time.perf_counter() - t0
    n_api = len(files) + 10
    ast = Counter(res or [])
    api = dict(tried=n_api, rows=len(res or []), errors=sum(v for k, v in ast.items() if k != "ok"),
               ok=ast.get("ok", 0), crashed=int(res is None and not api_hung), hung=api_hung,
               skipped=n_api - len(res or []), seconds=asecs, statuses=dict(ast),
               stderr_tail=(ra.stderr[-500:] if ra is not None and res is None else ""))
    os.chmod(corpus / "locked_dir", 0o755)
    return cli, api


# --------------------------------------------------------------------------- run-level
def images(d: Path, n: int, size=(160, 120)):
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(noise(size[1], size[0], 100 + i)).save(d / f"img_{i:04d}.png")
    return d


def count_lines(p: Path) -> int:
    try:
        return p.read_bytes().count(b"\n")
    except OSError:
        return 0


def kill_section(bundle: Path, work: Path, n=400, points=(20, 90, 170, 260, 350)):
    imgs = images(work / "kill_imgs", n)
    base = [str(imgs), "--bundle", str(bundle), "--batch-size", "1", "--workers", "1", "-q"]
    full = work / "kill_full.csv"
    subprocess.run([PY, "-m", "quasar", "score", *base, "--out", str(full)], check=True,
                   capture_output=True)
    part = work / "kill_part.csv"
    results = []
    for k in points:
        proc = subprocess.Popen([PY, "-m", "quasar", "score", *base, "--out", str(part)]
                                + (["--resume"] if part.exists() else []),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while count_lines(part) < k + 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        results.append((k, proc.returncode == -signal.SIGKILL, count_lines(part) - 1))
    r = subprocess.run([PY, "-m", "quasar", "score", *base, "--out", str(part), "--resume"],
                       capture_output=True, text=True)
    identical = part.read_bytes() == full.read_bytes()
    return results, r.returncode, identical


def concurrency_section(bundle: Path, work: Path, tries=6, n=150):
    imgs = images(work / "conc_imgs", n, (120, 90))
    summary = []
    for t in range(tries):
        out = work / f"conc_{t}.csv"
        args = [str(imgs), "--bundle", str(bundle), "--batch-size", "2", "-q", "--out", str(out)]
        ps = [subprocess.Popen([PY, "-m", "quasar", "score", *args], stderr=subprocess.PIPE)
              for _ in range(2)]
        codes = [p.wait(TIMEOUT) for p in ps]
        errs = [p.stderr.read().decode() for p in ps]
        from quasar.runtime.writers import read_table

        rows = read_table(str(out))
        summary.append(dict(codes=codes, rows=len(rows), unique=len({r["path"] for r in rows}),
                            refused=[("being written by" in e or "already exists" in e) for e in errs]))
    return summary


FSIZE = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2)
from quasar.cli import main
sys.argv = ["quasar", "score"] + sys.argv[2:]
main()
"""


def disk_section(bundle: Path, work: Path):
    imgs = images(work / "disk_imgs", 200, (48, 48))
    out_rows = []
    for ext in (".csv", ".jsonl", ".parquet"):
        base = [str(imgs), "--bundle", str(bundle), "--batch-size", "4", "-q"]
        full = work / f"disk_full{ext}"
        subprocess.run([PY, "-m", "quasar", "score", *base, "--out", str(full)], check=True)
        part = work / f"disk_part{ext}"
        r = subprocess.run([PY, "-c", FSIZE, "8000", *base, "--out", str(part)],
                           capture_output=True, text=True)
        r2 = subprocess.run([PY, "-m", "quasar", "score", *base, "--out", str(part), "--resume"],
                            capture_output=True, text=True)
        from quasar.runtime.writers import read_table

        same = read_table(str(part)) == read_table(str(full))
        out_rows.append((ext, r.returncode, r.stderr.strip().splitlines()[-1][:160], r2.returncode, same))
    return out_rows


def tamper_section(bundle: Path, work: Path):
    res = []
    img = work / "t.png"
    Image.fromarray(noise(30, 40)).save(img)

    def run(b, env=None):
        r = subprocess.run([PY, "-m", "quasar", "score", str(img), "--bundle", str(b)],
                           capture_output=True, text=True, env=env)
        return r

    b1 = work / "tamper_edit"
    shutil.copytree(bundle, b1)
    p = b1 / "encoder.onnx"
    p.write_bytes(p.read_bytes()[:-4] + b"\1\2\3\4")
    r = run(b1)
    res.append(("encoder.onnx edited", r.returncode, r.stderr.strip()[:120]))
    b2 = work / "tamper_extdata"
    shutil.copytree(bundle, b2)
    (b2 / "encoder.onnx.data").write_bytes(os.urandom(256))
    r = run(b2)
    res.append(("unlisted encoder.onnx.data", r.returncode, r.stderr.strip()[:120]))
    # ORT cache: replace the cached graph with other weights of the same I/O
    home = work / "home"
    env = dict(os.environ, QUASAR_HOME=str(home))
    r0 = run(bundle, env)
    import onnx
    from onnx import numpy_helper

    [entry] = list((home / "ort-cache").iterdir())
    m = onnx.load(str(bundle / "encoder.onnx"))
    for init in m.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3 + 1, init.name))
    onnx.save(m, str(entry / "model.onnx"))
    r1 = run(bundle, env)
    res.append(("ORT cache graph replaced", r1.returncode,
                ("same scores as before" if r1.stdout == r0.stdout else "SCORES CHANGED") + "; "
                + (r1.stderr.strip().splitlines() or [""])[0][:100]))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle")
    ap.add_argument("--workdir")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: kill,conc,disk,tamper")
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QUASAR_HOME", str(work / "home0"))
    bundle = Path(a.bundle) if a.bundle else rt_helpers().write_tiny_bundle(work / "bundle")
    print(f"bundle: {bundle}  setpriv (no DAC override): {'yes' if NO_DAC else 'no'}  workdir: {work}")
    cli, api = corpus_section(bundle, work)
    print("\n| interface | hostile inputs tried | answered (a row each) | per-file error | scored ok"
          " (decodable oddities, odd names) | crashed the run | hung | silently skipped |")
    print("|---|---|---|---|---|---|---|---|")
    for name, d in (("CLI `quasar score DIR @list`", cli), ("API `Scorer.score(errors=\"collect\")`", api)):
        print(f"| {name} | {d['tried']} | {d['rows']} | {d['errors']} | {d['ok']} | {d['crashed']} "
              f"| {d['hung']} | {d['skipped']} |")
    print(f"\nCLI exit {cli['exit']} in {cli['seconds']:.1f} s; statuses: {json.dumps(cli['statuses'], sort_keys=True)}")
    if cli["missing"]:
        print("CLI inputs without a row:", cli["missing"])
    print(f"API in {api['seconds']:.1f} s; statuses: {json.dumps(api['statuses'], sort_keys=True)}")
    if api.get("stderr_tail"):
        print("API stderr:", api["stderr_tail"])
    skip = set(a.skip.split(","))
    if "kill" not in skip:
        res, rc, same = kill_section(bundle, work)
        print("\nSIGKILL + resume (400 images, batch 1, CSV):")
        for k, killed, rows in res:
            print(f"  kill after >= {k} rows: killed={killed}, rows on disk {rows}")
        print(f"  final --resume exit {rc}; byte-identical to an uninterrupted run: {same}")
    if "conc" not in skip:
        print("\nconcurrent writers (2 runs at once on one --out, 150 images):")
        for t, s in enumerate(concurrency_section(bundle, work)):
            print(f"  try {t + 1}: exit codes {s['codes']}, refused {s['refused']}, rows {s['rows']} "
                  f"(unique paths {s['unique']})")
    if "disk" not in skip:
        print("\nfull disk (RLIMIT_FSIZE 8000 bytes, SIGXFSZ ignored -> EFBIG), then --resume without the limit:")
        for ext, rc, msg, rc2, same in disk_section(bundle, work):
            print(f"  {ext}: exit {rc}: {msg}\n        resume exit {rc2}; rows == uninterrupted run: {same}")
    if "tamper" not in skip:
        print("\ntampering:")
        for what, rc, msg in tamper_section(bundle, work):
            print(f"  {what}: exit {rc}: {msg}")


if __name__ == "__main__":
    main()
