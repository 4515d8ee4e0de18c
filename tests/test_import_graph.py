"""The dependency rule, checked on the source (AST), so that it stays true:

    models <- bundle <- runtime <- evaluate;   export may use bundle and runtime;
    bench (benchmarks) sits on top and may use everything;
    runtime and evaluate never import export; quasar.constants / errors / home / timing /
    console import nothing of ours; nothing outside export imports torch, open_clip, timm or onnx at
    module level (inside a function is allowed: optional paths such as the benchmark's torch
    reference).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"models": "models", "bundle": "bundle", "runtime": "runtime", "export": "export",
            "evaluate": "evaluate", "bench": "bench"}
LEAVES = {"constants", "errors", "home", "timing", "console", "text"}  # quasar/<leaf>.py, stdlib only
# package -> the quasar packages it may import (itself always allowed)
ALLOWED = {
    "models": {"constants", "errors"},
    "bundle": {"models"} | LEAVES,
    "runtime": {"bundle", "models"} | LEAVES,
    "evaluate": {"runtime", "bundle", "models"} | LEAVES,
    "export": {"runtime", "bundle", "models"} | LEAVES,
    "bench": {"export", "evaluate", "runtime", "bundle", "models"} | LEAVES,  # on top of all
    "leaf": set(),
}
HEAVY = {"torch", "torchvision", "open_clip", "timm", "onnx", "onnxscript"}


def _sources():
    for pkg, folder in PACKAGES.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            yield pkg, f
    for leaf in sorted(LEAVES):
        yield "leaf", ROOT / "quasar" / f"{leaf}.py"


def _imports(tree: ast.AST, pkg: str, path: Path):
    """(module name, at module level?) for every import, relative ones resolved."""
    parts = ["quasar", pkg] + list(path.relative_to(ROOT / PACKAGES.get(pkg, "quasar")).parent.parts) \
        if pkg != "leaf" else ["quasar"]
    top_level = set(id(n) for n in tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:len(parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, id(node) in top_level


def _target(mod: str):
    bits = mod.split(".")
    if bits[0] != "quasar" or len(bits) < 2:
        return None
    return bits[1]


def test_dependency_rule():
    bad = []
    for pkg, f in _sources():
        tree = ast.parse(f.read_text(), str(f))
        for mod, top in _imports(tree, pkg, f):
            tgt = _target(mod)
            if tgt is not None and tgt != pkg and tgt in set(PACKAGES) | LEAVES:
                if tgt not in ALLOWED[pkg]:
                    bad.append(f"{f.relative_to(ROOT)}: {pkg} imports {mod}")
            if top and pkg not in ("export", "bench") and mod.split(".")[0] in HEAVY:
                bad.append(f"{f.relative_to(ROOT)}: module-level import of {mod}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("edge", ["runtime -> export", "bundle -> runtime"])
def test_the_checker_catches_a_forbidden_edge(tmp_path, edge):
    src, dst = [s.strip() for s in edge.split("->")]
    tree = ast.parse(f"from quasar.{dst}.x import y\n")
    mods = [m for m, _ in _imports(tree, src, ROOT / PACKAGES[src] / "fake.py")]
    assert mods == [f"quasar.{dst}.x"] and _target(mods[0]) not in ALLOWED[src]
