"""Fixtures of the export tests (precision variants and their gate)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """40 distinct small JPEG photos (crops of skimage samples with random distortions)."""
    pytest.importorskip("skimage")
    from quasar.bench.speed import make_images

    root = tmp_path_factory.mktemp("photos")
    make_images(root, 40, size=(320, 240), varied=True)
    return root
