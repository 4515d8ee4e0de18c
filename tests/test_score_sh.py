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
    printf '#!/bin/sh\\necho "quasar $*" >> "{log}.quasar"\\necho "quasar $*"\\n' \\
        > "{venv}/bin/quasar"
    chmod +x "{venv}/bin/quasar"
    exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "quasar.runtime.default_bundle" ]; then
    echo "check $*" >> "{log}.check"
    echo "${{3:-clip-rn50-nopos.openai}}"
    exit "${{FAKE_CHECK_RC:-0}}"
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


def _run(repo, venv, extras="cpu", args=("photos/", "-o", "s.csv"), **env_extra):
    env = {k: v for k, v in os.environ.items() if k != "QUASAR_DEFAULT_BUNDLE"}
    env.update(QUASAR_SCORE_VENV=str(venv), QUASAR_EXTRAS=extras, **env_extra)
    return subprocess.run(["bash", str(repo / "scripts" / "score.sh"), *args],
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


def _fake_venv(tmp_path, name):
    venv, log = tmp_path / name, tmp_path / f"{name}.log"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(FAKE_PYTHON.format(log=log, venv=venv))
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    return venv, log


def test_no_cached_bundle_exports_once_in_a_separate_venv(tmp_path):
    """Check says "export it" (3): the export venv gets [cpu,export] and runs `quasar export`;
    the scoring venv keeps [cpu] (torch-free); then scoring runs."""
    repo, venv, log = _setup(tmp_path)
    xvenv, xlog = _fake_venv(tmp_path, "xvenv")
    r = _run(repo, venv, FAKE_CHECK_RC="3", QUASAR_EXPORT_VENV=str(xvenv),
             args=("photos/", "-m", "vit-b-32.openai"))
    assert r.returncode == 0, r.stderr
    assert _pip_calls(log) and all("[cpu]" in c for c in _pip_calls(log))
    assert len(_pip_calls(xlog)) == 1 and "[cpu,export]" in _pip_calls(xlog)[0]
    assert Path(f"{xlog}.quasar").read_text() == "quasar export vit-b-32.openai\n"
    assert "check -m quasar.runtime.default_bundle vit-b-32.openai" in \
        Path(f"{log}.check").read_text()
    assert r.stdout.endswith("quasar score photos/ -m vit-b-32.openai\n")


def test_unreachable_weights_stop_before_any_export_install(tmp_path):
    repo, venv, log = _setup(tmp_path)
    xvenv, xlog = _fake_venv(tmp_path, "xvenv")
    r = _run(repo, venv, FAKE_CHECK_RC="2", QUASAR_EXPORT_VENV=str(xvenv))
    assert r.returncode == 2 and not _pip_calls(xlog)
    assert not Path(f"{log}.quasar").exists()  # nothing scored


def test_team_default_bundle_url_gets_its_client_and_no_export(tmp_path):
    repo, venv, log = _setup(tmp_path)
    r = _run(repo, venv, QUASAR_DEFAULT_BUNDLE="hf://org/bundle@v1", FAKE_CHECK_RC="2")
    assert r.returncode == 0, r.stderr
    assert "[cpu,hub]" in _pip_calls(log)[0] and not Path(f"{log}.check").exists()
    r = _run(repo, venv, args=("photos/", "--bundle=s3://b/q"), FAKE_CHECK_RC="2")
    assert r.returncode == 0 and "[cpu,s3]" in _pip_calls(log)[-1]


def test_real_check_offline_fails_fast_with_every_way(tmp_path):
    """The real check (the repo's venv): no cached bundle and the weights unreachable (a
    proxy that refuses) -> exit 2 in seconds, naming every way to get a bundle."""
    import sys
    import time

    env = dict(os.environ, QUASAR_HOME=str(tmp_path / "home"), HTTPS_PROXY="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9")
    env.pop("QUASAR_DEFAULT_BUNDLE", None)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "quasar.runtime.default_bundle"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and time.monotonic() - t0 < 20
    for way in ("hf://ORG/REPO", "QUASAR_DEFAULT_BUNDLE", "quasar export clip-rn50-nopos.openai",
                "--checkpoint PATH", "--bundle DIR", "--random-init", "MEANINGLESS",
                "quasar-iqa[export]", "RN50.pt", str(tmp_path / "home")):
        assert way in r.stderr, way
    (tmp_path / "home" / "bundles" / "clip-rn50-nopos.openai").mkdir(parents=True)
    (tmp_path / "home" / "bundles" / "clip-rn50-nopos.openai" / "bundle.json").write_text("{}")
    r = subprocess.run([sys.executable, "-m", "quasar.runtime.default_bundle"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0
