"""CUDA execution provider (opt-in: QUASAR_GPU=1 or -m gpu, on a machine with
onnxruntime-gpu and a GPU). Scores on CUDA must agree with the CPU provider."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda_images")
    rng = np.random.default_rng(3)
    paths = []
    for i, (w, h) in enumerate([(320, 240), (224, 224), (500, 333), (240, 320)]):
        p = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_cuda_session_is_really_on_cuda(rn50_nopos_bundle):
    from quasar.runtime.scorer import Scorer

    s = Scorer.from_bundle(rn50_nopos_bundle, device="cuda")
    assert s.session.get_providers()[0] == "CUDAExecutionProvider"


@pytest.mark.parametrize("resolution", ["224", "native"])
def test_cuda_scores_equal_cpu(rn50_nopos_bundle, images, resolution):
    from quasar.runtime.scorer import Scorer

    cpu = Scorer.from_bundle(rn50_nopos_bundle, device="cpu", resolution=resolution)
    gpu = Scorer.from_bundle(rn50_nopos_bundle, device="cuda", resolution=resolution)
    e_cpu, e_gpu = cpu.embed(images), gpu.embed(images)
    cos = np.sum(e_cpu * e_gpu, 1) / np.linalg.norm(e_cpu, axis=1) / np.linalg.norm(e_gpu, axis=1)
    assert cos.min() > 0.9999  # cuDNN may use TF32 convolutions
    np.testing.assert_allclose(gpu.score(images), cpu.score(images), atol=1e-4)
