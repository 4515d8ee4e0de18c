"""scripts/score.sh runs pip only when its venv is new or out of date, and says where
`quasar` is. A stand-in venv (its `python` records pip calls, its `quasar` echoes) keeps
this test offline and fast; the script itself runs unchanged, from a copy of the repo's
scripts/ beside a copy of pyproject.toml."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/bin/sh
if [ "$1" = "-V" ]; then echo "Python 3.11.7"; exit 0; fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    echo "pip $*" >> "{log}"
    printf '#!/bin/sh\\necho "quasar $*"\\n' > "{venv}/bin/quasar"
    chmod +x "{venv}/bin/quasar"
    exit 0
fi
exit 1
"""


def _setup(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "score.sh", repo / "scripts" / "score.sh")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    venv, log = tmp_path / "venv", tmp_path / "pip.log"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(FAKE_PYTHON.format(log=log, venv=venv))
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    return repo, venv, log


def _run(repo, venv, extras="cpu"):
    env = dict(os.environ, QUASAR_SCORE_VENV=str(venv), QUASAR_EXTRAS=extras)
    return subprocess.run(["bash", str(repo / "scripts" / "score.sh"), "photos/", "-o", "s.csv"],
                          capture_output=True, text=True, env=env, cwd=repo, timeout=60)


def _pip_calls(log):
    return log.read_text().splitlines() if log.exists() else []


def test_pip_only_when_needed_and_quasar_location(tmp_path):
    repo, venv, log = _setup(tmp_path)
    r = _run(repo, venv)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "quasar score photos/ -o s.csv\n"
    assert len(_pip_calls(log)) == 1 and f"-e {repo}[cpu]" in _pip_calls(log)[0]
    assert f"{venv}/bin/quasar" in r.stderr  # says where quasar now lives

    r = _run(repo, venv)  # current: no pip, nothing said
    assert r.returncode == 0 and r.stdout == "quasar score photos/ -o s.csv\n"
    assert len(_pip_calls(log)) == 1 and r.stderr == ""

    _run(repo, venv, extras="cpu,parquet")  # other extras: install again
    assert len(_pip_calls(log)) == 2 and "[cpu,parquet]" in _pip_calls(log)[1]
    _run(repo, venv, extras="cpu,parquet")
    assert len(_pip_calls(log)) == 2

    with open(repo / "pyproject.toml", "a") as f:  # a changed pyproject.toml: install again
        f.write("\n# changed\n")
    _run(repo, venv, extras="cpu,parquet")
    assert len(_pip_calls(log)) == 3

    (venv / "bin" / "quasar").unlink()  # a broken venv: install again
    assert _run(repo, venv, extras="cpu,parquet").returncode == 0
    assert len(_pip_calls(log)) == 4
