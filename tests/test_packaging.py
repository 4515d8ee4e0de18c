"""Packaging: every folder installs under ``quasar.``; nothing bare shadows other packages."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    (whl,) = out.glob("*.whl")
    return whl


def test_wheel_installs_everything_under_quasar(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"quasar"}, top
    for module in ("quasar/models/catalog.py", "quasar/runtime/__init__.py", "quasar/bundle/io.py",
                   "quasar/export/__init__.py", "quasar/evaluate/datasets/base.py",
                   "quasar/cli.py"):
        assert module in names, module


def test_wheel_declares_extras_and_console_script(wheel):
    z = zipfile.ZipFile(wheel)
    meta = next(n for n in z.namelist() if n.endswith("METADATA"))
    text = z.read(meta).decode()
    for extra in ("cpu", "gpu", "export", "evaluate", "test", "ray"):
        assert f"Provides-Extra: {extra}" in text
    assert "onnxruntime-gpu" in text and "extra == \"gpu\"" in text
    # the runtime core never pulls torch in
    core = [line for line in text.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not any("torch" in line or "onnxruntime" in line for line in core), core
    ep = next(n for n in z.namelist() if n.endswith("entry_points.txt"))
    assert "quasar = quasar.cli:main" in z.read(ep).decode()


def test_bare_top_level_names_not_importable():
    code = ("import importlib.util, sys; "
            "print([m for m in ('models', 'bundle', 'runtime', 'export', 'evaluate') "
            "if importlib.util.find_spec(m) is not None])")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]", out


# ------------------------------------------------------------------ the distribution name
def _pyproject_name() -> str:
    try:
        import tomllib
    except ImportError:  # Python < 3.11: the one line is enough
        import re

        text = (ROOT / "pyproject.toml").read_text()
        return re.search(r'^name\s*=\s*"([^"]+)"', text, re.M).group(1)
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]


def _repo_text_files():
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    for name in out:
        path = ROOT / name
        if path.suffix in (".py", ".md", ".sh") and path.is_file():
            yield path


def test_distribution_name_is_ours_and_named_by_every_install_hint():
    """PyPI's ``quasar`` is another project (issue 19 #1): every ``pip install`` line of the
    repository that installs this project names the distribution of pyproject.toml."""
    import re

    from quasar.errors import DISTRIBUTION, install_hint

    name = _pyproject_name()
    assert name == DISTRIBUTION == "quasar-iqa"
    assert install_hint("cpu") == f'pip install "{name}[cpu]"'
    # a word naming this project in a pip line: quasar, quasar[...], quasar-iqa[...]
    ours = re.compile(r"""(?<![\w./{-])(quasar(?:-iqa)?)(?=\[|["'`\s)]|$)""")
    seen, bad = 0, []
    for path in _repo_text_files():
        for no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in re.finditer(r"pip install\b(.*)", line):
                rest = re.split(r"`|&&|;|\||\s\(|\s#|\s-\s|\s—", m.group(1))[0]  # its args
                for word in ours.findall(rest):
                    seen += 1
                    if word != name:
                        bad.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()}")
            if re.search(r"\bDIST(RIBUTION)?\s*=\s*['\"]quasar", line) and f'"{name}"' not in line:
                bad.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()}")
            if re.search(r"""\bversion\(\s*["']quasar["']\s*\)""", line):
                bad.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()}")
    assert seen > 20 and not bad, "\n".join(bad)


def test_installed_metadata_is_found_under_the_distribution_name():
    from importlib.metadata import PackageNotFoundError, entry_points, version

    import quasar
    from quasar.errors import DISTRIBUTION

    try:
        assert version(DISTRIBUTION) == quasar.__version__
    except PackageNotFoundError:  # pragma: no cover - a source tree without an install
        pytest.skip("quasar is not installed")
    names = [e.value for e in entry_points(group="quasar.exporters")]
    assert names == ["quasar.export.bundle:export_bundle"]  # one install, not two


# ------------------------------------------------------------------ a clone named quasar
SNIPPET = ("import quasar; from quasar import Scorer; import quasar.runtime.scorer as m; "
           "print(quasar.__file__); print(m.Scorer is Scorer)")


def _run_in(folder: Path, code: str = SNIPPET):
    return subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True,
                          text=True, timeout=120)


def test_clone_folder_named_quasar_does_not_shadow_the_install(tmp_path):
    """``cd`` to the folder holding a clone named quasar: ``from quasar import Scorer`` still
    gets the installed package (issue 18 #8), for this tree and for another clone."""
    installed = Path(_run_in(Path("/")).stdout.splitlines()[0])
    this = tmp_path / "here"
    this.mkdir()
    (this / "quasar").symlink_to(ROOT, target_is_directory=True)  # this clone, named quasar
    r = _run_in(this)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(installed), "True"]
    m = subprocess.run([sys.executable, "-m", "quasar", "--version"], cwd=this,
                       capture_output=True, text=True, timeout=120)
    assert m.returncode == 0 and m.stdout.startswith("quasar "), m.stderr
    other = tmp_path / "other" / "quasar"  # another clone, not the one installed
    (other / "quasar").mkdir(parents=True)
    for rel in ("__init__.py", "quasar/__init__.py"):
        (other / rel).write_bytes((ROOT / rel).read_bytes())
    r = _run_in(other.parent)
    assert r.returncode == 0 and r.stdout.split() == [str(installed), "True"], r.stderr


def test_clone_without_the_root_init_is_shadowed(tmp_path):
    """Why the repository root has an ``__init__.py``: the same folder without it is a
    namespace package that hides the install (what the test above guards against)."""
    bare = tmp_path / "quasar"
    bare.mkdir()
    (bare / "quasar").symlink_to(ROOT / "quasar", target_is_directory=True)
    r = _run_in(tmp_path, "from quasar import Scorer")
    assert r.returncode != 0 and "cannot import name 'Scorer'" in r.stderr
