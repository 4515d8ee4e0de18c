"""Hostile corpus for ``quasar score`` (issue 9): generate >= 80 hostile inputs, run them
through the CLI and the Python API, and the run-level attacks (SIGKILL at 5 points + resume,
concurrent writers, a full disk, tampered bundle / external data / ORT cache); and (issue 17)
hostile dataset inputs - FIFOs/devices named as shards, tar header and member bombs, a Parquet
decompression bomb, links and odd members, concatenated tars, duplicate ids + resume, relative
and NUL paths, bad Parquet files in a folder, brace patterns of 10^8 and 10^11 names - each
its own run with its peak RSS. Prints the tables quoted in docs/score.md ("Reliability").

    python scripts/hostile_corpus.py [--bundle DIR] [--workdir DIR] [--skip kill,conc,...]

Needs about 3 GB of free memory for the Parquet bomb's writer (six 500 MB cells) and sparse
files of up to 10 GB apparent size (no disk space).

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


# --------------------------------------------------------------------------- scale inputs
# Dataset inputs (issue 17): WebDataset tars and Parquet files that used to hang a run,
# exhaust memory or drop samples. Each case is its own `quasar score` run (a hang is then
# one case's timeout), in a child that prints its peak RSS.
SCORE_RSS = r"""
import sys
from quasar.cli import run
code = run(["score", *sys.argv[1:]])
from quasar.timing import peak_rss_mb  # VmHWM: ru_maxrss carries the parent's peak
print("MAXRSS_MB", int(peak_rss_mb()), file=sys.stderr)
sys.exit(code)
"""
MB = 1 << 20


def _tar_header(name, size=0, kind=b"0", link=""):
    import tarfile

    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mtime = size, kind, link, 0
    return info.tobuf(tarfile.USTAR_FORMAT)


def _raw_tar(path: Path, parts, end=True) -> Path:
    """(header, bytes or int) parts; an int is a hole of that size (sparse: GBs declared)."""
    with open(path, "wb") as f:
        for hdr, data in parts:
            f.write(hdr)
            if isinstance(data, int):
                f.seek(-(-data // 512) * 512, 1)
            else:
                f.write(data + b"\0" * (-len(data) % 512))
        if end:
            f.write(b"\0" * 1024)
        f.truncate()
    return path


def _jpg(seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(noise(48, 64, seed)).save(buf, "JPEG")
    return buf.getvalue()


def _mem(name: str, data: bytes):
    return _tar_header(name, len(data)), data


PARQUET_BOMB = r"""
import sys, pyarrow as pa, pyarrow.parquet as pq
path, n, mb, good = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
L = mb << 20
big = pa.Array.from_buffers(pa.binary(), 1, [None, pa.py_buffer(pa.array([0, L], pa.int32())
                            .buffers()[1]), pa.py_buffer(bytes(L))])
schema = pa.schema([("jpg", pa.binary()), ("key", pa.string())])
with pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=False,
                      write_statistics=False) as w:
    for i in range(n):
        w.write_table(pa.table({"jpg": big, "key": [f"bomb{i}"]}, schema=schema))
    w.write_table(pa.table({"jpg": [open(good, "rb").read()], "key": ["good"]}, schema=schema))
"""


def _pq(path: Path, cols: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(cols), path)
    return path


def _tar_cases(d: Path):
    """(name, issue item, inputs, extra args, expected row ids) of the tar cases."""
    import tarfile

    g1, g2 = _jpg(1), _jpg(2)
    cases = []
    fifo = d / "fifo.tar"
    os.mkfifo(fifo)
    good = d / "good.jpg"
    good.write_bytes(g1)
    cases.append(("FIFO named x.tar, given directly", "8", [fifo, good], [],
                  {f"{fifo}#@0", str(good)}))
    folder = d / "folder"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(g1)
    os.mkfifo(folder / "b.tar")
    os.mkfifo(folder / "c.parquet")
    os.symlink(folder / "b.tar", folder / "d_link.tar")
    os.symlink("/dev/zero", folder / "e_devzero.tar")
    socket.socket(socket.AF_UNIX).bind(str(folder / "f_socket.parquet"))
    (folder / "g.jpg").write_bytes(g2)
    cases.append(("folder: FIFOs .tar/.parquet, link to a FIFO, /dev/zero as .tar, socket",
                  "8, 25a", [folder], [],
                  {str(folder / "a.jpg"), str(folder / "g.jpg")}
                  | {f"{folder / n}#@0" for n in ("b.tar", "c.parquet", "d_link.tar",
                                                   "e_devzero.tar", "f_socket.parquet")}))
    big = _raw_tar(d / "big_members.tar", [_mem("first.jpg", g1)]
                   + [(_tar_header(f"big{i:02d}.jpg", 250 * MB), 250 * MB) for i in range(40)]
                   + [_mem("last.jpg", g2)])
    cases.append(("tar: 40 members of 250 MB (sparse, under the member limit)", "10", [big], [],
                  {f"{big}#first", f"{big}#last"} | {f"{big}#big{i:02d}" for i in range(40)}))
    for kind, label in ((tarfile.GNUTYPE_LONGNAME, "GNU long name"),
                        (tarfile.GNUTYPE_LONGLINK, "GNU long link"),
                        (tarfile.XHDTYPE, "PAX x"), (tarfile.XGLTYPE, "PAX g")):
        p = _raw_tar(d / f"hdr_bomb_{kind.decode()}.tar",
                     [_mem("a.jpg", g1), (_tar_header("././@LongLink", 3 << 30, kind), 3 << 30),
                      _mem("b.jpg", g2)])
        off = 512 + -(-len(g1) // 512) * 512
        cases.append((f"tar: {label} header declaring 3 GiB, then b.jpg", "11", [p], [],
                      {f"{p}#a", f"{p}#@{off}", f"{p}#b"}))
    odd = _raw_tar(d / "odd_members.tar", [
        _mem("a.jpg", g1), (_tar_header("b.jpg", 0, tarfile.SYMTYPE, "a.jpg"), b""),
        (_tar_header("c.jpg", 0, tarfile.LNKTYPE, "a.jpg"), b""), _mem("README", b"x"),
        _mem(".hidden.jpg", g2), _mem("sub/.DS_Store", b"\0\1"),
        (_tar_header("sub/", 0, tarfile.DIRTYPE), b"")])
    links = _raw_tar(d / "only_links.tar", [
        (_tar_header("x.jpg", 0, tarfile.SYMTYPE, "../y.jpg"), b""),
        (_tar_header("y.png", 0, tarfile.LNKTYPE, "x.jpg"), b"")])
    cases.append(("tar: symlink, hard link, no extension, hidden members; a tar of only links "
                  "beside an image", "13", [odd, links, good], [],
                  {f"{odd}#{k}" for k in ("a", "b", "c", "README", ".hidden", "sub/.DS_Store")}
                  | {f"{links}#x", f"{links}#y", str(good)}))
    a = _raw_tar(d / "a.tar", [_mem("k0.jpg", g1)])
    b = _raw_tar(d / "b.tar", [_mem("k1.jpg", g2)])
    cat = d / "cat.tar"
    cat.write_bytes(a.read_bytes() + b.read_bytes())
    junk = d / "junk_after_end.tar"
    junk.write_bytes(a.read_bytes() + b"junk" * 300)
    cases.append(("tar: cat a.tar b.tar; garbage after the end marker", "14", [cat, junk], [],
                  {f"{cat}#k0", f"{cat}#k1", f"{junk}#k0", f"{junk}#@{len(a.read_bytes())}"}))
    dup = _raw_tar(d / "dup_keys.tar", [_mem("a.jpg", g1), _mem("a.jpg", g2),
                                         _mem("a.jpg", b"<html>corrupt</html>"), _mem("b.jpg", g1)])
    cases.append(("tar: key a three times (one corrupt), then --resume", "6", [dup], ["resume"],
                  {f"{dup}#a", f"{dup}#a.dup2", f"{dup}#a.dup3", f"{dup}#b"}))
    return cases


def _parquet_cases(d: Path):
    g1, g2 = _jpg(3), _jpg(4)
    good = d / "good.jpg"
    good.write_bytes(g1)
    cases = []
    bomb = d / "bomb.parquet"
    subprocess.run([PY, "-c", PARQUET_BOMB, str(bomb), "6", "500", str(good)], check=True)
    cases.append((f"Parquet: {bomb.stat().st_size // 1000} KB zstd file, six 500 MB cells", "9",
                  [bomb], ["--id-column", "key"],
                  {f"{bomb}#bomb{i}" for i in range(6)} | {f"{bomb}#good"}))
    ids = _pq(d / "ids.parquet", {"image": [g1, g2, b"bad", g1], "key": ["1", None, "x", "x"]})
    cases.append(("Parquet: null id beside a real id equal to its row number; repeated id; "
                  "then --resume", "6", [ids], ["--id-column", "key", "resume"],
                  {f"{ids}#1", f"{ids}#@row1", f"{ids}#x", f"{ids}#x.dup2"}))
    sub = d / "rel"
    sub.mkdir()
    (sub / "im.jpg").write_bytes(g1)
    (d / "im.jpg").write_bytes(g2)  # decoy in the working directory
    rel = _pq(sub / "rel.parquet", {"image": ["im.jpg", "a\0b.jpg"]})
    cases.append(("Parquet: relative path (decoy in the cwd); a NUL in a path", "15, 25b",
                  [rel], ["cwd"], {f"{rel}#0", f"{rel}#1"}))
    folder = d / "pq_folder"
    folder.mkdir()
    ok = _pq(folder / "a.parquet", {"image": [g1, g2]})
    _pq(folder / "b.parquet", {"image": [1, 2]})
    (folder / "c.parquet").write_bytes(ok.read_bytes()[:-30])
    (folder / "d.jpg").write_bytes(g1)
    cases.append(("folder: Parquet with a wrong column type, one with no footer, then an image",
                  "16", [folder], [],
                  {f"{ok}#0", f"{ok}#1", f"{folder / 'b.parquet'}#@0",
                   f"{folder / 'c.parquet'}#@0", str(folder / "d.jpg")}))
    return cases


def _run_case(bundle: Path, work: Path, k: int, inputs, extra, expected):
    from quasar.runtime.writers import read_table

    out = work / f"scale_{k:02d}.csv"
    args = [str(x) for x in inputs] + [x for x in extra if x not in ("resume", "cwd")]
    cwd = str(work) if "cwd" in extra else None
    runs = [args] + ([args + ["--resume"]] if "resume" in extra else [])
    res = dict(exit=[], rss=0, hung=0, crashed=0)
    for a in runs:
        try:
            r = subprocess.run([PY, "-c", SCORE_RSS, *a, "--bundle", str(bundle), "--out", str(out),
                                "-q"], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)
        except subprocess.TimeoutExpired:
            res["hung"] = 1
            break
        res["exit"].append(r.returncode)
        res["crashed"] |= int(r.returncode not in (0, 3) or "Traceback" in r.stderr)
        rss = [int(x.split()[1]) for x in r.stderr.splitlines() if x.startswith("MAXRSS_MB")]
        res["rss"] = max([res["rss"]] + rss)
    rows = read_table(str(out)) if out.exists() else []
    got = [x["path"] for x in rows]
    res.update(tried=len(expected), rows=len(set(got) & expected), skipped=len(expected - set(got)),
               unexpected=sorted(set(got) - expected)[:3], dups=len(got) - len(set(got)),
               statuses=dict(Counter(x["status"] for x in rows)))
    return res


def scale_section(bundle: Path, work: Path):
    d = work / "scale"
    d.mkdir()
    results = []
    for k, (name, item, inputs, extra, expected) in enumerate(_tar_cases(d) + _parquet_cases(d)):
        results.append((name, item, _run_case(bundle, work, k, inputs, extra, expected)))
    lazy = subprocess.run([PY, "-c", BRACE_LAZY, str(d / "s-{00000000..99999999}.tar")],
                          capture_output=True, text=True, timeout=TIMEOUT)
    huge = subprocess.run([PY, "-m", "quasar", "score", str(d / "s-{0..99999999}-{000..999}.tar"),
                           "--bundle", str(bundle), "--out", str(work / "brace.csv")],
                          capture_output=True, text=True, timeout=TIMEOUT)
    return results, lazy.stdout.strip() or lazy.stderr[-300:], (huge.returncode, huge.stderr.strip())


BRACE_LAZY = r"""
import itertools, sys, time
from quasar.runtime.inputs import iter_inputs
from quasar.timing import peak_rss_mb
t0 = time.perf_counter()
it = iter_inputs([sys.argv[1]])
first = next(it)
t1 = time.perf_counter() - t0
n = 1 + sum(1 for _ in itertools.islice(it, 999_999))
print(f"first name after {t1 * 1000:.1f} ms, {n:,} names in {time.perf_counter() - t0:.1f} s, "
      f"peak RSS {int(peak_rss_mb())} MB")
"""


def print_scale(results, lazy, huge):
    print("\n| case | issue 17 item | inputs tried | answered (a row each) | crashed | hung "
          "| silently skipped | exit | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    tot = Counter()
    for name, item, r in results:
        print(f"| {name} | {item} | {r['tried']} | {r['rows']} | {r['crashed']} | {r['hung']} "
              f"| {r['skipped']} | {'/'.join(map(str, r['exit']))} | {r['rss']} |")
        tot.update(tried=r["tried"], rows=r["rows"], crashed=r["crashed"], hung=r["hung"],
                   skipped=r["skipped"])
        tot["rss"] = max(tot["rss"], r["rss"])
    print(f"| **all** | | {tot['tried']} | {tot['rows']} | {tot['crashed']} | {tot['hung']} "
          f"| {tot['skipped']} | | {tot['rss']} |")
    for name, item, r in results:
        extra = [f"unexpected rows {r['unexpected']}"] if r["unexpected"] else []
        extra += [f"{r['dups']} duplicate rows"] if r["dups"] else []
        print(f"  {name}: {json.dumps(r['statuses'], sort_keys=True)}"
              + (" " + "; ".join(extra) if extra else ""))
    print(f"\nbrace pattern s-{{00000000..99999999}}.tar (10^8 names, lazily): {lazy}")
    print(f"brace pattern of 10^11 names: exit {huge[0]}: {huge[1][:200]}")


def corpus_report(bundle: Path, work: Path):
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle")
    ap.add_argument("--workdir")
    ap.add_argument("--skip", default="",
                    help="comma list of sections to skip: corpus,scale,kill,conc,disk,tamper")
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QUASAR_HOME", str(work / "home0"))
    bundle = Path(a.bundle) if a.bundle else rt_helpers().write_tiny_bundle(work / "bundle")
    print(f"bundle: {bundle}  setpriv (no DAC override): {'yes' if NO_DAC else 'no'}  workdir: {work}")
    from quasar.runtime.backends import cpu_flag_list
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, CPU flags: "
          f"{' '.join(cpu_flag_list())}")
    skip = set(a.skip.split(","))
    if "corpus" not in skip:
        corpus_report(bundle, work)
    if "scale" not in skip:
        print("\nDataset inputs (issue 17): each case one `quasar score` run (timeout "
              f"{TIMEOUT} s), peak RSS of that run:")
        print_scale(*scale_section(bundle, work))
    run_sections(bundle, work, skip)


def run_sections(bundle: Path, work: Path, skip: set):
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
