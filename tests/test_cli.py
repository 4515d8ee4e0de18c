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
@pytest.mark.skipif(not LEAN, reason="set QUASAR_LEAN_PYTHON to a venv with only quasar-iqa[cpu]")
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


# ------------------------------------------------------------------ Fire's syntax, Fire's traps
# docs/architecture.md, "The command line": the design asked for Fire; these are the cases
# that made the strict layer replace it, and the spellings Fire users type.
def test_fire_syntax_is_accepted():
    score = cli.command("score")
    want = score.parse(["a.png", "--batch-size", "4", "--out", "s.csv", "--max-pixels", "9"])
    for argv in (["a.png", "--batch-size=4", "--out=s.csv", "--max-pixels=9"],
                 ["a.png", "--batch_size", "4", "--out", "s.csv", "--max_pixels", "9"],
                 ["a.png", "--batch_size=4", "--out=s.csv", "--max_pixels=9"],
                 ["--batch_size", "4", "a.png", "--out=s.csv", "--max-pixels", "9"]):
        assert score.parse(argv) == want, argv
    assert want["batch_size"] == 4 and want["max_pixels"] == 9 and want["out"] == "s.csv"
    models = cli.command("models")
    assert models.parse(["--no-heavy"])["heavy"] is False
    assert models.parse(["--no_heavy"])["heavy"] is False and models.parse([])["heavy"] is True
    ev = cli.command("evaluate")
    assert ev.parse(["--prompt_ratio=0.5", "--target_cv_folds", "3"])["target_cv_folds"] == 3


def test_values_are_taken_as_written():
    """Fire turned ``1e3`` into 1000.0, ``None`` into None, ``[a,b]`` into a list."""
    score = cli.command("score")
    with pytest.raises(base.CommandLineError, match="expected an integer, got '1e3'"):
        score.parse(["a", "--batch-size", "1e3"])
    kw = score.parse(["a", "--anchors", "[a,b]", "--image-column", "None", "--out", "1e3"])
    assert kw["anchors"] == "[a,b]" and kw["image_column"] == "None" and kw["out"] == "1e3"
    assert cli.command("export").parse(["m", "--seed", "007"])["seed"] == 7


def test_a_switch_takes_no_value_and_a_lone_dash_is_stdin(tmp_path):
    score = cli.command("score")
    kw = score.parse(["--quiet", "photos/", "-", "more/", "-q"])
    assert kw["inputs"] == ["photos/", "-", "more/"] and kw["quiet"] is True
    res, err, _ = probe(["models", "--quiet", "extra"], tmp_path)  # Fire: quiet="extra"
    assert res["code"] == 2 and "unexpected argument 'extra'" in err


def _run_target(tmp_path, body: str, argv, options=None):
    """Run a throw-away command whose function is ``body`` in a fresh process."""
    (tmp_path / "h4_target.py").write_text(body)
    opts = options or []
    code = ("import sys, json; from quasar.commands.base import Command, opt, run_command\n"
            f"cmd = Command('t', 'a test command', 'h4_target:f', [{', '.join(opts)}])\n"
            f"code = run_command(cmd, {list(argv)!r})\n"
            "print('CODE', code, file=sys.stderr)\n")
    r = subprocess.run([PY, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    return int(r.stderr.split("CODE")[-1]), r.stdout, r.stderr.split("CODE")[0]


def test_a_returned_code_is_the_exit_code_not_output(tmp_path):
    code, out, err = _run_target(tmp_path, "def f():\n    return 3\n", [])
    assert (code, out, err) == (3, "", "")
    code, out, _ = _run_target(tmp_path, "def f():\n    return 'a result'\n", [])
    assert (code, out) == (0, "a result\n")


# ------------------------------------------------------------------ ranges, declared once
def _bounded_options():
    for cmd in all_commands():
        for p in cmd.params():
            o = p.option
            if p.kind == "value" and (o.minimum, o.maximum, o.above, o.below) != (None,) * 4:
                yield cmd, p


def _argv_with(cmd, p, value):
    pos = ["X"] * sum(q.kind == "positional" for q in cmd.params())
    return pos + [p.flag, value]


def test_ranges_are_refused_while_parsing():
    """Every declared bound holds, with the flag and the bound in the message (issue 18 #1)."""
    seen = 0
    for cmd, p in _bounded_options():
        o, seen = p.option, seen + 1
        integral = (o.type or base._infer_type(p.default)) is base.integer
        step = 1 if integral else 0.001
        fmt = (lambda v: str(int(v))) if integral else (lambda v: repr(float(v)))
        for bound, outside, inside, words in (
                (o.minimum, -step, 0, "at least"), (o.above, 0, step, "greater than"),
                (o.maximum, step, 0, "at most"), (o.below, 0, -step, "less than")):
            if bound is None:
                continue
            with pytest.raises(base.CommandLineError) as ei:
                cmd.parse(_argv_with(cmd, p, fmt(bound + outside)))
            assert p.flag in str(ei.value) and words in str(ei.value), (cmd.name, p.flag)
            got = cmd.parse(_argv_with(cmd, p, fmt(bound + inside)))[p.name]
            assert got == pytest.approx(bound + inside), (cmd.name, p.flag)
        assert o.range_text in " ".join(cmd.help(width=100).split()), (cmd.name, p.flag)
    assert seen >= 25
    with pytest.raises(base.CommandLineError, match="expected a number"):
        cli.command("evaluate").parse(["--prompt-ratio", "nan"])


def test_counts_and_seeds_have_their_range_everywhere():
    for cmd in all_commands():
        for p in cmd.params():
            if p.name in ("batch_size", "threads", "workers", "n_clusters", "target_cv_folds"):
                assert p.option.minimum == 1, (cmd.name, p.flag)
            if p.name == "seed":
                assert p.option.minimum == 0, (cmd.name, p.flag)
            if p.name in ("device", "resolution", "precision", "backend") and p.kind == "value":
                assert p.option.choices, (cmd.name, p.flag)


def test_comma_lists_are_parsed_and_checked_once():
    rep = cli.command("reproduce")
    kw = rep.parse(["--prompts", "text, AVA,", "--resolutions", "paper,SPAQ=512"])
    assert kw["prompts"] == ["text", "AVA"] and kw["resolutions"] == ["paper", "SPAQ=512"]
    opt = base.opt("sets", "anchor sets to use", type=base.names, choices=("a", "b"))
    cmd = base.Command("t", "t", "h4_none:f", [opt])
    cmd._params = [base._Param(opt, "value", None, False)]
    assert cmd.parse(["--sets", "a,b"])["sets"] == ["a", "b"]
    with pytest.raises(base.CommandLineError, match="unknown 'c'; choose from a, b"):
        cmd.parse(["--sets", "a,c"])


def test_the_command_bodies_do_not_check_again():
    """evaluate/cli.py and export/cli.py receive parsed values: no re-parsing helpers, no
    option help repeated in Args blocks (one source: quasar/commands/*)."""
    import ast

    root = Path(__file__).resolve().parents[1]
    for rel in ("evaluate/cli.py", "export/cli.py"):
        tree = ast.parse((root / rel).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert not names & {"_none", "_opt_int", "_opt_float", "_opt_str", "_names",
                            "_resolution"}, rel
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and ast.get_docstring(fn):
                assert "Args:" not in ast.get_docstring(fn), (rel, fn.name)


# ------------------------------------------------------------------ -q everywhere
@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_takes_quiet(name):
    """The README says -q works everywhere (issue 17 #25)."""
    cmd = cli.command(name)
    pos = ["X"] * sum(p.kind == "positional" for p in cmd.params())
    assert cmd.parse(pos + ["-q"])["quiet"] is True
    assert cmd.parse(pos + ["--quiet"])["quiet"] is True and cmd.parse(pos)["quiet"] is False
    assert re.search(r"^  -q, --quiet\s", cmd.help(width=100), re.M)


def test_quiet_of_a_command_without_its_own(tmp_path):
    """Where the function has no ``quiet``, -q silences log records, warnings and progress
    bars; the result and the errors still show."""
    body = ("import logging, os, sys, warnings\n"
            "def f():\n"
            "    logging.getLogger('quasar.t').warning('a log line')\n"
            "    warnings.warn('a library warning')\n"
            "    print('tqdm', os.environ.get('TQDM_DISABLE'), file=sys.stderr)\n"
            "    return 'the result'\n")
    code, out, err = _run_target(tmp_path, body, [])
    assert code == 0 and out == "the result\n"
    assert "a log line" in err and "a library warning" in err and "tqdm None" in err
    code, out, err = _run_target(tmp_path, body, ["-q"])
    assert (code, out, err) == (0, "the result\n", "tqdm 1\n")


def test_optimize_quiet_is_not_an_unknown_option(tmp_path):
    res, err, _ = probe(["optimize", str(tmp_path / "nope"), "-q", "--calibration", "x"],
                        tmp_path)
    assert res["code"] == 2 and "unknown option" not in err and "nope" in err, err


# ------------------------------------------------------------------ extras, exit codes, models
BLOCKED = r"""
import sys
for m in sys.argv[1].split(","):
    sys.modules[m] = None          # the module is absent: find_spec and import both fail
from quasar.cli import run
print("CODE", run(sys.argv[2:]), file=sys.stderr)
"""


@pytest.mark.parametrize("absent,extra", [("onnx", "optimize"), ("scipy", "optimize"),
                                          ("onnxruntime", "cpu")])
def test_optimize_names_the_optimize_extra(tmp_path, absent, extra):
    """quasar optimize builds int8 / fp16 without torch: a venv without torch is fine, one
    without onnx or SciPy is told to install the optimize extra (issue 18 #6)."""
    argv = ["optimize", str(tmp_path), "--calibration", "x"]
    r = subprocess.run([PY, "-c", BLOCKED, absent, *argv], capture_output=True, text=True,
                       timeout=120)
    *lines, last = r.stderr.strip().splitlines()
    assert last == "CODE 2" and lines == [
        f'quasar optimize needs the {extra} extra: pip install "quasar-iqa[{extra}]"'
        + (' (or pip install "quasar-iqa[gpu]" for CUDA)' if extra == "cpu" else "")]
    r = subprocess.run([PY, "-c", BLOCKED, "torch,open_clip,timm", *argv],
                       capture_output=True, text=True, timeout=120)
    assert "extra" not in r.stderr and "CODE 2" in r.stderr  # got past the check: no bundle
    assert str(tmp_path) in r.stderr


def test_exit_codes_have_one_table():
    from quasar.errors import EXIT_CODES, exit_codes_help

    root = Path(__file__).resolve().parents[1]
    assert sorted(EXIT_CODES) == [0, 1, 2, 3, 4, 130]
    help_text = " ".join(cli.command("optimize").help(width=100).split())
    assert help_text.endswith(exit_codes_help()) and "4 optimize" in help_text
    assert cli.root_help().replace("\n", " ").rstrip().endswith(exit_codes_help())
    readme = (root / "README.md").read_text()
    line = re.search(r"^\* Exit codes.*?(?=^\S|^\* )", readme, re.M | re.S).group(0)
    assert sorted(int(c) for c in re.findall(r"\*\*(\d+)\*\*", line)) == sorted(EXIT_CODES)
    assert "quasar/errors.py" in line
    assert "130" not in (root / "quasar" / "commands" / "base.py").read_text()
    assert "EXIT_CODES" in (root / "docs" / "architecture.md").read_text()


def test_models_marks_the_default_model():
    r = subprocess.run([PY, "-m", "quasar", "models"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    marked = [ln.split()[0] for ln in r.stdout.splitlines() if re.match(r"\S+ \*\s", ln)]
    assert marked == ["clip-rn50-nopos.openai"]  # the paper's encoder, README's default
    assert "* the default model: used when no --bundle / --model is given" in r.stdout
    from quasar.runtime.default_bundle import DEFAULT_MODEL

    assert DEFAULT_MODEL == marked[0]
