"""Shared fixtures. Heavy and GPU tests are opt-in: QUASAR_HEAVY=1 / QUASAR_GPU=1 (or -m)."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Tests never download weights: make every hub lookup (also in subprocesses) fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# ... and never write into the user's cache (bundles, ORT session cache): a private home.
_TEST_HOME = tempfile.mkdtemp(prefix="quasar-test-home-")
os.environ["QUASAR_HOME"] = _TEST_HOME


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_TEST_HOME, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("-m") or ""
    run_heavy = os.environ.get("QUASAR_HEAVY") == "1" or "heavy" in markexpr
    run_gpu = os.environ.get("QUASAR_GPU") == "1" or "gpu" in markexpr
    for item in items:
        if "heavy" in item.keywords and not run_heavy:
            item.add_marker(pytest.mark.skip(reason="heavy architecture: set QUASAR_HEAVY=1"))
        if "gpu" in item.keywords and not run_gpu:
            item.add_marker(pytest.mark.skip(reason="needs CUDA: set QUASAR_GPU=1"))


# --- Bundles of small real architectures with random weights, exported once per session.
# They come from quasar.export.bundle.export_bundle (needs the export extra). The torch
# model behind a bundle is rebuilt in tests with
# quasar.export.encoders.build_image_encoder(spec, random_init=True, seed=SEED).
SEED = 0


def _export(tmp_path_factory, model_id: str):
    pytest.importorskip("torch")
    from quasar.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("bundles") / model_id
    return export_bundle(model_id, out, random_init=True, seed=SEED)


@pytest.fixture(scope="session")
def rn50_nopos_bundle(tmp_path_factory):
    return _export(tmp_path_factory, "clip-rn50-nopos.openai")


@pytest.fixture(scope="session")
def rn50_bundle(tmp_path_factory):
    return _export(tmp_path_factory, "clip-rn50.openai")


@pytest.fixture(scope="session")
def vitb32_bundle(tmp_path_factory):
    return _export(tmp_path_factory, "vit-b-32.openai")


@pytest.fixture(scope="session")
def dinov2_s_bundle(tmp_path_factory):
    return _export(tmp_path_factory, "dinov2-vits14.lvd142m")
