"""The README's Python blocks run as written, in a fresh process, in a folder that holds what
the README's set-up leaves there: `photos/` (the folder the quick start scores) and
`test-bundle/` (what the README's `quasar export ... --random-init --out test-bundle` writes:
the session's random-init export of the same model with the same default seed)."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(lang: str):
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), re.M | re.S)


def test_readme_has_python_and_the_export_it_needs():
    assert blocks("python")
    exports = [shlex.split(line) for b in blocks("bash") for line in b.splitlines()
               if "quasar export" in line and "test-bundle" in line]
    assert exports, "the README must show how test-bundle is made"
    args = exports[0][exports[0].index("export") + 1:]
    # what the fixture below is: model, random weights, default seed (0), that folder
    assert args == ["clip-rn50-nopos.openai", "--random-init", "--out", "test-bundle"], args


def example_folder():
    """The files of the README's own example folder, read from its example output
    (``photos/astronaut.jpg,0.51...,ok,`` ... ``photos/sub/notes.jpg,,not_an_image,...``):
    the snippet must work on that folder, the not-an-image file included (issue 18 #7)."""
    rows = re.findall(r"^(photos/\S+?),[^,]*,(\w+),", README.read_text(), re.M)
    assert rows and any(status != "ok" for _, status in rows), rows
    return dict(rows)


@pytest.mark.torch
def test_readme_python_blocks_run_verbatim(tmp_path, rn50_nopos_bundle):
    from safetensors.numpy import load_file

    from quasar.cli import command

    assert command("export").parse(["m", "--random-init"])["seed"] == 0  # = the fixture's

    shutil.copytree(rn50_nopos_bundle, tmp_path / "test-bundle")
    rng = np.random.default_rng(3)
    folder = example_folder()
    for i, (name, status) in enumerate(sorted(folder.items())):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if status == "ok":
            Image.fromarray(rng.integers(0, 256, (120 + 10 * i, 160, 3), dtype=np.uint8)).save(
                tmp_path / name, format={".jpg": "JPEG", ".png": "PNG",
                                         ".webp": "WEBP"}[Path(name).suffix])
        else:  # what the README's notes.jpg is: text under an image name
            (tmp_path / name).write_text("meeting notes, not a photo\n")
    good = sorted(n for n, st in folder.items() if st == "ok")

    code = "\n\n".join(blocks("python"))
    check = ("\nimport json as _j, numpy as _np\n"
             "print(_j.dumps({'paths': paths, 'scores': [float(v) for v in scores], "
             "'emb': _np.asarray(emb, _np.float64).tolist(), 'sets': sorted(by_set), "
             "'errors': [type(e).__name__ if e else None for e in r.errors], "
             "'files': files, 'collected': [float(v) for v in r.values]}))\n")
    script = tmp_path / "readme_snippet.py"
    script.write_text(code + check)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["paths"] == good and sorted(res["files"]) == sorted(folder)
    bad = [f for f, e in zip(res["files"], res["errors"]) if e]
    assert bad == [n for n in sorted(folder) if folder[n] != "ok"]
    assert set(res["errors"]) == {None, "NotAnImageError"}
    assert "skipped: photos/sub/notes.jpg: not an image" in out.stdout
    assert np.isnan([v for v, e in zip(res["collected"], res["errors"]) if e]).all()
    # the scores, recomputed here from the embeddings and the bundle's text anchors
    anchors = load_file(str(tmp_path / "test-bundle" / "anchors.safetensors"))["text"]
    e = np.asarray(res["emb"])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    a = anchors.astype(np.float64) / np.linalg.norm(anchors, axis=1, keepdims=True)
    logits = (e @ a.T) / 0.07
    want = np.exp(logits[:, 0]) / np.exp(logits).sum(1)
    np.testing.assert_allclose(res["scores"], want, rtol=0, atol=1e-5)
    assert len(res["scores"]) == len(good) and "text" in res["sets"]
