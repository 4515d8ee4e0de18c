"""The ``quasar`` command line as a whole: strict parsing before any work, one spelling and
one name per concept, help, exit codes, a missing extra, a closed stdout.

Every command runs as the real console script (or ``python -m quasar`` in the lean venv) in a
subprocess; "before any work" is checked by what the process imported and wrote."""
from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quasar import cli
from quasar.commands import base

PY = sys.executable
LEAN = os.environ.get("QUASAR_LEAN_PYTHON")
HEAVY = ("torch", "open_clip", "timm", "onnx", "onnxruntime", "scipy", "sklearn", "pyarrow")

# Runs the CLI in-process, then reports what it imported: the heavy modules must be absent.
PROBE = r"""
import json, os, sys
from quasar.cli import run
code = run(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in %r)
print(json.dumps({"code": code, "heavy": heavy}), file=sys.__stderr__)
""" % (HEAVY,)


def probe(args, cwd):
    r = subprocess.run([PY, "-c", PROBE, *map(str, args)], cwd=cwd, capture_output=True,
                       text=True, timeout=120)
    *lines, last = r.stderr.strip().splitlines()
    return json.loads(last), "\n".join(lines), r.stdout


def all_commands():
    return [cli.command(n) for n in cli.COMMANDS]


# ------------------------------------------------------------------ strict, before any work
MISTYPED = [  # (command line, the flag it must suggest)
    (["export", "clip-rn50-nopos.openai", "--random-init", "--sed", "1", "--out", "OUT"],
     "--seed"),
    (["evaluate", "--target-data", "KonIQ10k", "--data-root", "data", "--batch-sze", "4",
      "--out", "OUT"], "--batch-size"),
    (["score", "img.png", "--bacth_size", "3", "-o", "OUT"], "--batch-size"),
    (["anchors", "bundle", "--promt-data", "AVA", "--data-root", "data"], "--prompt-data"),
    (["reproduce", "--data-rot", "data", "-o", "OUT"], "--data-root"),
    (["bench", "--n-image", "2", "-o", "OUT"], "--n-images"),
    (["models", "--no-heavvy"], "--no-heavy"),
]


@pytest.mark.parametrize("argv,suggestion", MISTYPED, ids=[a[0][0] for a in MISTYPED])
def test_mistyped_flag_fails_before_any_work(tmp_path, argv, suggestion):
    (tmp_path / "img.png").write_bytes(b"")
    before = sorted(p.name for p in tmp_path.iterdir())
    res, err, out = probe(argv, tmp_path)
    assert res["code"] == 2, err
    assert f"did you mean {suggestion}?" in err, err
    assert res["heavy"] == [], res  # nothing heavy was even imported
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("argv", [
    ["export", "clip-rn50-nopos.openai", "extra", "--random-init", "--out", "OUT"],
    ["evaluate", "KonIQ10k", "--out", "OUT"],
    ["reproduce", "data", "--out", "OUT"],
    ["bench", "rn50-224", "--out", "OUT"],
    ["models", "all"],
    ["anchors", "bundle", "bundle2"],
], ids=lambda a: a[0])
def test_extra_positional_fails_before_any_work(tmp_path, argv):
    res, err, _ = probe(argv, tmp_path)
    assert res["code"] == 2 and "unexpected argument" in err, err
    assert res["heavy"] == [] and list(tmp_path.iterdir()) == []


def test_bad_values_and_unknown_command(tmp_path):
    for argv, msg in [(["score", "x", "--batch-size", "two"], "--batch-size"),
                      (["score", "x", "-r", "300"], "invalid choice"),
                      (["export", "m", "--out"], "expected one argument"),
                      (["anchors"], "missing BUNDLE"),
                      (["export", "a", "--model", "b"], "given twice"),
                      (["scor"], "did you mean score?")]:
        res, err, _ = probe(argv, tmp_path)
        assert res["code"] == 2 and msg in err and res["heavy"] == [], (argv, err)


def test_snake_case_is_accepted_and_equal():
    score = cli.command("score")
    kebab = score.parse(["a", "--batch-size", "4", "--save-embeddings", "e.npy", "--max-pixels=9"])
    snake = score.parse(["a", "--batch_size", "4", "--save_embeddings", "e.npy", "--max_pixels=9"])
    assert kebab == snake and kebab["batch_size"] == 4 and kebab["max_pixels"] == 9
    ev = cli.command("evaluate")
    assert ev.parse(["--anchor_set", "x"])["anchors"] == "x"  # the old name still works
    assert ev.parse(["--anchors", "x", "--data_root", "d"])["data_root"] == "d"


def test_positional_or_named_and_interleaved():
    export = cli.command("export")
    assert export.parse(["m"])["model"] == export.parse(["--model", "m"])["model"] == "m"
    kw = cli.command("score").parse(["a", "-q", "b", "-o", "x.csv", "c"])
    assert kw["inputs"] == ["a", "b", "c"] and kw["quiet"] and kw["out"] == "x.csv"
    assert cli.command("score").parse(["-"])["inputs"] == ["-"]  # stdin, not a separator


def test_parsed_values_reach_the_function_with_its_defaults():
    """Defaults come from the signature; parsed values have the signature's types."""
    for cmd in all_commands():
        sig = inspect.signature(cmd.function())
        required = [p for p in cmd.params() if p.kind == "positional"]
        kw = cmd.parse(["X"] * len(required))
        for name, p in sig.parameters.items():
            if p.default is not inspect.Parameter.empty:
                assert kw[name] == p.default, (cmd.name, name)
    kw = cli.command("evaluate").parse(["--seed", "7", "--prompt-ratio", "0.5", "-d", "CPU"])
    assert kw["seed"] == 7 and kw["prompt_ratio"] == 0.5 and kw["device"] == "cpu"


# ------------------------------------------------------------------ one name per concept
def test_options_match_signatures_and_are_described():
    for cmd in all_commands():
        params = cmd.params()  # raises when an option and a parameter disagree
        for p in params:
            assert len(p.option.help) > 10, (cmd.name, p.name)


def test_no_short_flag_has_two_meanings():
    seen = {}
    for cmd in all_commands():
        for p in cmd.params():
            if p.option.short:
                assert seen.setdefault(p.option.short, p.flag) == p.flag, (cmd.name, p.flag)
    assert seen["-o"] == "--out" and "-s" not in seen


def test_one_name_per_concept():
    concept = {"out": "-o", "bundle": "-b", "anchors": "-a", "resolution": "-r",
               "device": "-d", "threads": "-t", "quiet": "-q", "model": "-m"}
    for cmd in all_commands():
        for p in cmd.params():
            assert re.fullmatch(r"--[a-z0-9]+(-[a-z0-9]+)*", p.flag), p.flag  # kebab-case
            if p.name in concept and p.kind not in ("positional", "varargs"):
                assert p.option.short == concept[p.name], (cmd.name, p.flag)
            assert p.name not in ("anchor_set", "output", "batch", "res"), (cmd.name, p.name)
        names = {p.name for p in cmd.params()}
        if "out" in names:
            assert cmd.parse(["X"] * sum(p.kind == "positional" for p in cmd.params())
                             + ["-o", "f"])["out"] == "f"


# ------------------------------------------------------------------ help
@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_help_of_every_command(name):
    cmd = cli.command(name)
    env = dict(os.environ, PAGER="false", TERM="xterm", COLUMNS="100")
    r = subprocess.run([PY, "-m", "quasar", name, "--help"], capture_output=True, text=True,
                       env=env, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    text = r.stdout
    assert "INFO" not in text and "Optional[" not in text and "Type:" not in text
    assert text.startswith(f"usage: quasar {name}") and "Exit codes: 0 ok" in text
    flat = " ".join(text.split())
    for p in cmd.params():
        if p.kind in ("positional", "varargs"):
            assert p.metavar in text
            continue
        # every flag listed with its description; switches without a value
        line = next(ln for ln in text.splitlines()
                    if re.match(rf"  (-\w, |    ){re.escape(p.flag)}(\s|$)", ln))
        if p.kind in ("switch", "negswitch"):
            assert re.search(rf"{re.escape(p.flag)}\s\s+\S", line), line
        else:
            assert f"{p.flag} {p.metavar}" in line, line
        assert " ".join(p.option.help.rstrip(".").split()) in flat, (name, p.flag)
        if p.kind == "value" and p.option.default_text is None and p.default is not None:
            assert f"default: {p.default}" in flat, (name, p.flag)  # in full
    same = subprocess.run([PY, "-m", "quasar", "help", name], capture_output=True, text=True,
                          env=env, timeout=60)
    assert same.stdout == text


def test_root_help_lists_every_command():
    r = subprocess.run([PY, "-m", "quasar", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for name in cli.COMMANDS:
        assert re.search(rf"^  {name}\s", r.stdout, re.M), name
    r = subprocess.run([PY, "-m", "quasar"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "commands:" in r.stderr


# ------------------------------------------------------------------ exit codes
def test_exit_code_mapping():
    from quasar import errors

    class Coded(errors.QuasarError):
        exit_code = 3

    assert base.exit_code_for(errors.UnknownModelError("x")) == 2
    assert base.exit_code_for(errors.BundleError("x")) == 2
    assert base.exit_code_for(errors.ExportError("x")) == 1
    assert base.exit_code_for(Coded("x")) == 3  # the error's own exit_code wins
    assert base.exit_code_for(RuntimeError("x")) == 1


def test_unknown_model_is_a_usage_error(tmp_path):
    r = subprocess.run([PY, "-m", "quasar", "export", "vit-b-32", "-o", str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "vit-b-32.openai" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------ missing extra (lean venv)
@pytest.mark.skipif(not LEAN, reason="set QUASAR_LEAN_PYTHON to a venv with only quasar[cpu]")
@pytest.mark.parametrize("argv,extra", [
    (["export", "clip-rn50-nopos.openai", "--random-init", "--out", "OUT"], "export"),
    (["evaluate", "--target-data", "KonIQ10k", "--data-root", "data", "--out", "OUT"], "evaluate"),
    (["reproduce", "--data-root", "data", "--out", "OUT"], "evaluate"),
    # optimize needs its own extra (onnx, scipy, nncf), not export's torch (issue 18 #6)
    (["optimize", "B", "--precision", "int8", "--calibration", "photos"], "optimize"),
    (["report", "scores.csv", "-o", "OUT"], "report"),
], ids=lambda a: a[0] if isinstance(a, list) else a)
def test_missing_extra_is_named(tmp_path, argv, extra):
    assert subprocess.run([LEAN, "-c", "import torch"], capture_output=True).returncode != 0
    r = subprocess.run([LEAN, "-m", "quasar", *argv], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f'quasar {argv[0]} needs the {extra} extra: pip install "quasar-iqa[{extra}]"']
    assert list(tmp_path.iterdir()) == []
    # help still works without the extra
    h = subprocess.run([LEAN, "-m", "quasar", argv[0], "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and h.stdout.startswith(f"usage: quasar {argv[0]}")


# ------------------------------------------------------------------ closed stdout
def _closed_stdout(args, **kw):
    """Run with a stdout pipe whose reader is gone before the first write."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=300)
    return p.returncode, err


def _head(cmd: str):
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -1"], capture_output=True,
                       text=True, timeout=300)
    return r.stdout, r.stderr


def test_models_closed_stdout_is_quiet():
    quasar = f"{PY} -m quasar"
    out, err = _head(f"{quasar} models")
    assert out.startswith("model ") and "Traceback" not in err and "BrokenPipe" not in err, err
    for argv in (["models"], ["--help"], ["score", "--help"]):
        code, err = _closed_stdout([PY, "-m", "quasar", *argv])
        assert err == "", err
        assert code in (0, 1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (64 + 8 * i, 80, 3), dtype=np.uint8)).save(
            d / f"img{i}.png")
    return d


@pytest.mark.torch
def test_score_closed_stdout_is_quiet(rn50_nopos_bundle, photos):
    args = [PY, "-m", "quasar", "score", str(photos), "-b", str(rn50_nopos_bundle), "-q",
            "--batch-size", "2"]
    code, err = _closed_stdout(args)
    assert code == 1 and "Traceback" not in err and "BrokenPipe" not in err, err
    out, err = _head(" ".join(args))
    assert out == "path,score_text,status,error\n"
    assert "Traceback" not in err and "BrokenPipe" not in err, err
