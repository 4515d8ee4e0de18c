"""The PyTorch reference path of ``quasar bench``: open_clip model + open_clip transforms,
torch eager, the reference's ``main.py`` score - and the random-weights bundle and checkpoint
a speed run needs. Torch lives in export only, so the benchmark (evaluate) runs this module
in a subprocess (``python -m quasar.export.reference``) instead of importing it.

    python -m quasar.export.reference run JOB.json        # time the torch path of one job
    python -m quasar.export.reference prepare MODEL DIR   # random bundle + torch checkpoint
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from quasar.timing import timed


def torch_worker(job: Dict[str, Any]) -> Dict[str, Any]:
    import numpy as np
    import open_clip
    import torch
    from PIL import Image
    from torchvision.transforms import Compose, Normalize, ToTensor

    if job["threads"]:
        torch.set_num_threads(int(job["threads"]))
    model, _, _ = open_clip.create_model_and_transforms(
        job["source_name"], pretrained=job["checkpoint"], force_quick_gelu=True)
    model.eval()
    mean, std = job["mean"], job["std"]
    if job["resolution"] == "224":
        tf = open_clip.image_transform(224, is_train=False, mean=mean, std=std)
    else:  # the reference's native mode: convert, ToTensor, Normalize
        tf = Compose([lambda im: im.convert("RGB"), ToTensor(), Normalize(mean, std)])
    if job["nopos"]:
        from quasar.export.encoders import NoPosModifiedResNet
        encode = NoPosModifiedResNet(model.visual).eval()
    else:
        encode = model.encode_image
    from quasar.constants import TEXT_PROMPTS
    from quasar.runtime.scoring import quasar_scores

    tokens = open_clip.get_tokenizer(job["source_name"])(list(TEXT_PROMPTS))
    with torch.no_grad():
        anchors = model.encode_text(tokens).float()
        anchors = (anchors / anchors.norm(dim=-1, keepdim=True)).numpy()

    def run(batch):  # the reference: DataLoader(num_workers=0) + encode + main.py formula
        with torch.no_grad():
            x = []
            for f in batch:
                with Image.open(f) as im:
                    x.append(tf(im))
            groups: Dict[Any, List[int]] = {}
            for i, t in enumerate(x):
                groups.setdefault(tuple(t.shape), []).append(i)
            out = np.empty(len(x))
            for idx in groups.values():
                out[idx] = quasar_scores(encode(torch.stack([x[i] for i in idx])).float().numpy(),
                                         anchors)
            return out

    files = job["files"]
    run(files[:1])
    first = time.time()
    return timed(run, files, job["batch_size"], first, job["repeats"])


def random_bundle(model_id: str, workdir: Path) -> Path:
    """A random-init bundle of ``model_id`` under ``workdir/bundles`` (speed only)."""
    from .bundle import export_bundle

    out = Path(workdir) / "bundles" / model_id
    if not (out / "bundle.json").exists():
        export_bundle(model_id, out, random_init=True, seed=0)
    return out


def torch_checkpoint(model_id: str, workdir: Path) -> Path:
    """Random weights of the architecture (ResNets: bn3 re-initialised, see reinit_bn3),
    saved as an open_clip checkpoint file."""
    import open_clip
    import torch

    from quasar.models.catalog import get_model_spec

    spec = get_model_spec(model_id)
    path = Path(workdir) / f"{spec.source_name}-random.pt"
    if not path.exists():
        torch.manual_seed(0)
        m = open_clip.create_model(spec.source_name, pretrained=None,
                                   force_quick_gelu=spec.quick_gelu)
        reinit_bn3(m)
        torch.save(m.state_dict(), path)
    return path


def reinit_bn3(model, low: float = 0.8, high: float = 1.2) -> int:
    """open_clip's random ResNets zero every ``bn3.weight`` (each residual branch starts as
    identity), so their scores barely vary and agreement figures on them mean nothing; draw
    those weights from U(low, high) instead. Returns how many were re-initialised."""
    import torch

    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bn3.weight"):
                p.uniform_(low, high)
                n += 1
    return n


def main(argv: List[str]) -> None:
    if argv[:1] == ["run"] and len(argv) == 2:
        job = json.loads(Path(argv[1]).read_text())
        print("QUASAR_BENCH " + json.dumps(torch_worker(job)), flush=True)
    elif argv[:1] == ["prepare"] and len(argv) == 3:
        model_id, workdir = argv[1], Path(argv[2])
        out = {"bundle": str(random_bundle(model_id, workdir)),
               "checkpoint": str(torch_checkpoint(model_id, workdir))}
        print("QUASAR_BENCH " + json.dumps(out), flush=True)
    else:
        sys.exit("usage: python -m quasar.export.reference run JOB.json | prepare MODEL DIR")


if __name__ == "__main__":
    main(sys.argv[1:])
