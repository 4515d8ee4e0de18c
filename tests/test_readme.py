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


@pytest.mark.torch
def test_readme_python_blocks_run_verbatim(tmp_path, rn50_nopos_bundle):
    from quasar.cli import command

    assert command("export").parse(["m", "--random-init"])["seed"] == 0  # = the fixture's

    shutil.copytree(rn50_nopos_bundle, tmp_path / "test-bundle")
    rng = np.random.default_rng(3)
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    names = ["photos/a.jpg", "photos/b.png", "photos/sub/c.jpg"]
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (120 + 10 * i, 160, 3), dtype=np.uint8)).save(
            tmp_path / name)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")

    code = "\n\n".join(blocks("python"))
    check = ("\nimport json as _j, numpy as _np\n"
             "print(_j.dumps({'paths': paths, 'scores': [float(v) for v in scores], "
             "'emb': list(emb.shape), 'sets': sorted(by_set), "
             "'collected': [float(v) for v in r.values]}))\n")
    script = tmp_path / "readme_snippet.py"
    script.write_text(code + check)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(res["paths"]) == sorted(names)
    assert len(res["scores"]) == 3 and all(0 < v < 1 for v in res["scores"])
    assert res["emb"] == [3, 1024] and "text" in res["sets"]
    np.testing.assert_allclose(res["collected"], res["scores"], rtol=0, atol=0)
