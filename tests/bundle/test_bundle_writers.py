"""Writers of a bundle in real concurrent processes: one lock (a second writer is refused at
once, naming the holder), a swap that a kill cannot lose (the state a kill between the two
renames leaves is restored by the next command), and what killed writers leave beside a
bundle removed by the next command. Every process here is a real `quasar` command or a real
Python process; the bundle is the tiny hand-made one (no torch)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rt_helpers
from quasar.bundle.atomic import replace_directory

pytest.importorskip("onnx")
PY = sys.executable
D = rt_helpers.TINY_DIM

# `quasar anchors` whose bundle edit pauses inside the edit (after the bundle was read, before
# the new anchors file is written): it writes argv[1] when it gets there, sleeps argv[2]
# seconds, then goes on. The widest honest race window for a second writer.
SLOW_ANCHORS = r"""
import sys, time, pathlib
import quasar.bundle.io as io
orig = io.write_anchor_file
def slow(*a, **k):
    pathlib.Path(sys.argv[1]).write_text("inside the edit")
    time.sleep(float(sys.argv[2]))
    return orig(*a, **k)
io.write_anchor_file = slow
from quasar.cli import main
main(sys.argv[3:])
"""

HOLD_LOCK = r"""
import sys, time
from quasar.bundle.lock import bundle_lock
with bundle_lock(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def bundle(tmp_path):
    return rt_helpers.write_tiny_bundle(tmp_path / "bundles" / "b")


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    root = tmp_path_factory.mktemp("sides")
    rng = np.random.default_rng(5)
    for side, base in (("good", 200), ("bad", 40)):
        (root / side).mkdir()
        for i in range(3):
            img = np.clip(base + rng.normal(0, 30, (24, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / side / f"{i}.png")
    return root


def quasar(*args, timeout=120):
    return subprocess.run([PY, "-m", "quasar", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def anchors_of(bundle: Path):
    """The anchor-set names, read with safetensors itself (not quasar's reader)."""
    from safetensors import safe_open

    with safe_open(str(bundle / "anchors.safetensors"), framework="numpy") as f:
        return sorted(f.keys())


def dead_pid() -> int:
    p = subprocess.Popen([PY, "-c", "pass"])
    p.wait()
    return p.pid


def wait_for(path: Path, proc, timeout=60.0):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.02)


def siblings(bundle: Path):
    return sorted(p.name for p in bundle.parent.iterdir())


# --------------------------------------------------------------------------- one lock
def test_two_anchors_at_once_never_lose_a_set(bundle, sides, tmp_path):
    """Issue 17 #17: two `quasar anchors` on one bundle. Before: both exited 0 and the set
    of the one that swapped first was gone. Now the second is refused at once, naming the
    first's process, and a rerun after the first finished adds its set."""
    marker = tmp_path / "inside"
    a = subprocess.Popen([PY, "-c", SLOW_ANCHORS, str(marker), "4", "anchors", str(bundle),
                          "--good", str(sides / "good"), "--bad", str(sides / "bad"),
                          "--name", "first"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    wait_for(marker, a)
    t0 = time.monotonic()
    b = quasar("anchors", bundle, "--good", sides / "good", "--bad", sides / "bad",
               "--name", "second")
    refused_after = time.monotonic() - t0
    out_a, err_a = a.communicate(timeout=120)
    assert a.returncode == 0, err_a
    final = anchors_of(bundle)
    assert "first" in final
    if b.returncode == 0:  # (never seen now) it must then not have been lost
        assert "second" in final
    else:
        assert b.returncode == 2
        assert f"process {a.pid}" in b.stderr and "bundle" in b.stderr, b.stderr
        assert "second" not in final
        assert refused_after < 4  # at once, not after waiting for the holder
        again = quasar("anchors", bundle, "--good", sides / "good", "--bad", sides / "bad",
                       "--name", "second")
        assert again.returncode == 0, again.stderr
        assert anchors_of(bundle) == sorted(["text", "kadis", "first", "second"])
    assert siblings(bundle) == ["b"]  # no lock file, staged copy or old copy left


def test_lock_is_the_same_through_a_symlink_and_refuses_at_once(bundle, sides, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(bundle, target_is_directory=True)
    holder = subprocess.Popen([PY, "-c", HOLD_LOCK, str(link), "30"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        r = quasar("anchors", bundle, "--good", sides / "good", "--bad", sides / "bad",
                   "--name", "x")
        assert r.returncode == 2 and f"process {holder.pid}" in r.stderr, r.stderr
        assert anchors_of(bundle) == ["kadis", "text"]
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- the swap
def test_kill_between_the_two_renames_is_restored_by_the_next_command(bundle, tmp_path):
    """Issue 17 #18: the exact state a kill between `rename(bundle, .b.<pid>-x.old)` and
    `rename(stage, bundle)` leaves (the writer's pid dead, its staged copy complete beside).
    The next command restores the bundle, unchanged by the interrupted edit, and removes the
    staged copy. Before: "no such bundle directory; re-export"."""
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    pid = dead_pid()
    stage = bundle.parent / f".b.{pid}-c0ffee01.edit"
    shutil.copytree(bundle, stage)
    (stage / "anchors.safetensors").write_bytes(b"half-made edit")
    os.rename(bundle, bundle.parent / f".b.{pid}-deadbeef.old")
    assert not bundle.exists()
    img = tmp_path / "img.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(img)
    r = quasar("score", img, "--bundle", bundle, "--out", tmp_path / "s.csv")
    assert r.returncode == 0, r.stderr
    assert "restored" in r.stderr
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert siblings(bundle) == ["b"]
    assert (tmp_path / "s.csv").read_text().count(",ok,") == 1


def test_swap_keeps_the_target_in_place(tmp_path):
    """replace_directory: the new content at the target, nothing left beside it, and (where
    the kernel can exchange two paths) the target never missing: a reader polling it from
    another thread during many swaps never finds it absent."""
    import threading

    target = tmp_path / "t"
    target.mkdir()
    (target / "v").write_text("0")
    missing, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            if not os.path.isdir(target):
                missing.append(1)

    th = threading.Thread(target=reader)
    th.start()
    try:
        for i in range(1, 200):
            new = tmp_path / f".t.{os.getpid()}-{i:08x}.edit"
            new.mkdir()
            (new / "v").write_text(str(i))
            replace_directory(new, target)
    finally:
        stop.set()
        th.join()
    assert (target / "v").read_text() == "199"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    from quasar.bundle import atomic

    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir()
    probe_b.mkdir()
    if atomic._exchange(probe_a, probe_b):  # this kernel and file system can exchange
        assert not missing


# --------------------------------------------------------------------------- leftovers
def test_leftovers_of_killed_writers_are_removed_by_the_next_command(bundle, tmp_path):
    """Staged edits, old copies and optimize work folders of a dead writer go at the next
    use of the bundle; those of a live writer, and those of another bundle whose name starts
    the same (b.x), stay."""
    dead, live = dead_pid(), os.getpid()
    parent = bundle.parent
    gone = [f".b.{dead}-aaaa1111.edit", f".b.{dead}-aaaa2222.optimize", f".b.{dead}-aaaa3333.old",
            f".b.{dead}-aaaa6666.tmp"]  # ... and a killed export's new bundle
    kept = [f".b.x.{dead}-aaaa4444.edit", f".b.{live}-aaaa5555.optimize", ".b.notours.edit",
            f".b.{live}-aaaa7777.tmp"]
    for name in gone + kept:
        (parent / name).mkdir()
        (parent / name / "encoder.xml").write_bytes(b"\0" * 4096)
    img = tmp_path / "img.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(img)
    r = quasar("score", img, "--bundle", bundle, "--out", tmp_path / "s.csv")
    assert r.returncode == 0, r.stderr
    assert siblings(bundle) == sorted(["b"] + kept)


def test_anchor_set_is_never_replaced_without_overwrite(bundle, sides):
    """Issue 17 #20, the --good/--bad path and the bundle layer: an existing set (even
    'text') is refused without --overwrite and replaced with it."""
    before = (bundle / "anchors.safetensors").read_bytes()
    r = quasar("anchors", bundle, "--good", sides / "good", "--bad", sides / "bad",
               "--name", "text")
    assert r.returncode == 2 and "already has an anchor set 'text'" in r.stderr
    assert "--overwrite" in r.stderr
    assert (bundle / "anchors.safetensors").read_bytes() == before
    r = quasar("anchors", bundle, "--good", sides / "good", "--bad", sides / "bad",
               "--name", "text", "--overwrite")
    assert r.returncode == 0, r.stderr
    from safetensors import safe_open

    with safe_open(str(bundle / "anchors.safetensors"), framework="numpy") as f:
        meta = json.loads(f.metadata()["text"])
    assert meta["source"] == "custom images"
    from quasar.bundle import add_anchor_set
    from quasar.errors import BundleError

    with pytest.raises(BundleError, match="already has an anchor set 'kadis'"):
        add_anchor_set(bundle, "kadis", np.eye(2, D) + 0.1, {})


@pytest.mark.parametrize("how", ["symlink", "hardlinks", "copies"])
def test_good_and_bad_of_the_same_pictures_are_refused(bundle, sides, tmp_path, how):
    """Issue 17 #19: --bad a symlink to --good, a folder of hard links to its files, or of
    copies: every score would be exactly 0.5. Refused, bundle unchanged."""
    other = tmp_path / "other"
    if how == "symlink":
        other.symlink_to(sides / "good", target_is_directory=True)
    else:
        other.mkdir()
        for p in (sides / "good").iterdir():
            (os.link if how == "hardlinks" else shutil.copyfile)(p, other / p.name)
    before = (bundle / "anchors.safetensors").read_bytes()
    r = quasar("anchors", bundle, "--good", sides / "good", "--bad", other, "--name", "same")
    assert r.returncode == 2, r.stdout
    assert ("both --good and --bad" if how != "copies" else "same pictures") in r.stderr
    assert (bundle / "anchors.safetensors").read_bytes() == before


def test_the_cached_default_bundle_is_restored_not_exported_again(tmp_path):
    """The same crash state in the bundle cache ($QUASAR_HOME/bundles/<model>), which
    `quasar anchors` may edit: `quasar score` without --bundle restores it instead of
    saying there is no cached bundle (or exporting one again)."""
    DEFAULT_MODEL = "clip-rn50-nopos.openai"  # quasar score's model without --bundle
    home = tmp_path / "home"
    cached = rt_helpers.write_tiny_bundle(home / "bundles" / DEFAULT_MODEL)
    before = {p.name: p.read_bytes() for p in cached.iterdir()}
    pid = dead_pid()
    os.rename(cached, cached.parent / f".{cached.name}.{pid}-0badf00d.old")
    img = tmp_path / "img.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(img)
    env = dict(os.environ, QUASAR_HOME=str(home))
    r = subprocess.run([PY, "-m", "quasar", "score", str(img), "--out", str(tmp_path / "s.csv")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in cached.iterdir()} == before
    assert sorted(p.name for p in cached.parent.iterdir()) == [DEFAULT_MODEL]


def test_export_over_a_bundle_being_edited_is_refused(bundle, tmp_path):
    """write_bundle (quasar export --overwrite) holds the same lock: while another process
    edits the bundle, the export is refused naming it, and the bundle is left as it is;
    a killed export's half-written bundle beside the target goes at the next export."""
    from quasar.bundle import write_bundle
    from quasar.errors import OutputLockedError

    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    holder = subprocess.Popen([PY, "-c", HOLD_LOCK, str(bundle), "30"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(OutputLockedError, match=f"process {holder.pid}"):
            with write_bundle(bundle, overwrite=True):
                raise AssertionError("must not get here")
    finally:
        holder.kill()
        holder.wait()
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    stale = bundle.parent / f".b.{dead_pid()}-0000abcd.tmp"
    stale.mkdir()
    (stale / "encoder.onnx").write_bytes(b"half an export")
    with pytest.raises(RuntimeError):
        with write_bundle(bundle, overwrite=True):
            raise RuntimeError("an export that fails")
    assert siblings(bundle) == ["b"]


def test_scores_listing_one_file_under_two_names_is_refused(bundle, sides, tmp_path):
    """The --scores way of issue 17 #19: one picture rated twice under two names (a hard
    link) could land on both sides of the split. Refused, naming both names."""
    imgs = sorted((sides / "good").iterdir()) + sorted((sides / "bad").iterdir())
    twin = tmp_path / "twin.png"
    os.link(imgs[0], twin)
    table = tmp_path / "ratings.csv"
    table.write_text("path,mos\n" + "".join(f"{p},{i}\n" for i, p in enumerate(imgs))
                     + f"{twin},9\n")
    before = (bundle / "anchors.safetensors").read_bytes()
    r = quasar("anchors", bundle, "--scores", table, "--name", "rated", "--holdout", "0")
    assert r.returncode == 2, r.stdout
    assert "listed more than once" in r.stderr and str(twin) in r.stderr, r.stderr
    assert (bundle / "anchors.safetensors").read_bytes() == before
    table.write_text("path,mos\n" + "".join(f"{p},{i}\n" for i, p in enumerate(imgs)))
    r = quasar("anchors", bundle, "--scores", table, "--name", "rated", "--holdout", "0")
    assert r.returncode == 0, r.stderr


def test_swap_without_exchange_renames_twice_and_leaves_nothing(tmp_path, monkeypatch):
    """Where the kernel or file system cannot exchange two paths (NFS, macOS), the swap is
    two renames through `.<name>.<pid>-<x>.old`; the result is the same."""
    from quasar.bundle import atomic

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "t"
    target.mkdir()
    (target / "v").write_text("old")
    new = atomic.temp_dir(target, "edit")
    (new / "v").write_text("new")
    replace_directory(new, target)
    assert (target / "v").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
