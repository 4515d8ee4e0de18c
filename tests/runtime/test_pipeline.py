"""The scoring pipeline on a fake scorer: order, errors, batching, bounded look-ahead."""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

import hostile  # noqa: E402

from quasar.runtime.pipeline import PipelineConfig, error_status, run_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    good = hostile.write_good_tree(root / "good")
    bad = hostile.write_hostile(root / "hostile")
    return good, bad


def _collect(scorer, paths, cfg):
    rows, embs = [], []

    def sink(r, e):
        assert e.shape == (sum(x.status == "ok" for x in r), scorer.embed_dim)
        rows.extend(r)
        embs.append(e)
    stats = run_pipeline(scorer, paths, sink, cfg)
    return rows, np.concatenate(embs) if embs else None, stats


@pytest.mark.parametrize("shape", [(8, 8), None])
def test_every_input_gets_a_row_in_order(images, shape):
    good, bad = images
    paths = [str(p) for p in good] + [str(p) for p in bad.values()] + ["/no/such/file.png"]
    paths = paths[::2] + paths[1::2]  # mix good and bad
    scorer = hostile.FakeScorer(shape=shape, max_pixels=1_000_000)
    rows, emb, stats = _collect(scorer, iter(paths), PipelineConfig(batch_size=3, workers=3,
                                                                     variable_shapes=shape is None,
                                                                     group_factor=2))
    assert [r.path for r in rows] == paths
    for r in rows:
        name = os.path.basename(r.path)
        if name in hostile.BAD_HOSTILE:
            assert r.status in hostile.BAD_HOSTILE[name] and r.path in r.error, (name, r)
            assert all(np.isnan(v) for v in r.scores.values())
        elif name == "file.png":
            assert r.status == "not_found"
        else:
            assert r.status == "ok", r
            ref = hostile.fake_reference(r.path, shape)
            for a in ("text", "second"):
                assert r.scores[a] == pytest.approx(ref[a], abs=1e-6)
    assert stats.failed == len(hostile.BAD_HOSTILE) + 1 and stats.scored == len(paths) - stats.failed
    assert all(b[0] <= 3 for b in scorer.batches)
    assert all(len(set(map(tuple, [b[2:]]))) == 1 for b in scorer.batches)
    assert emb.shape == (stats.scored, scorer.embed_dim)


def test_variable_shapes_are_grouped_into_full_batches(tmp_path):
    from PIL import Image
    paths = []
    for i in range(24):  # two shapes alternating
        p = tmp_path / f"{i:02d}.png"
        Image.fromarray(hostile._noise(32 if i % 2 else 48, 40, i)).save(p)
        paths.append(str(p))
    scorer = hostile.FakeScorer(shape=None)
    rows, _, _ = _collect(scorer, paths, PipelineConfig(batch_size=4, workers=2, variable_shapes=True,
                                                         group_factor=2))
    assert [r.path for r in rows] == paths
    assert sorted(b[0] for b in scorer.batches) == [4] * 6  # grouped: no ragged batches
    ungrouped = hostile.FakeScorer(shape=None)
    _collect(ungrouped, paths, PipelineConfig(batch_size=4, workers=2, variable_shapes=False))
    assert max(b[0] for b in ungrouped.batches) <= 2  # without a window, shapes fragment batches


def test_a_window_closes_as_soon_as_its_inputs_make_whole_batches(tmp_path):
    """Inference starts after one batch of decodes whenever the inputs so far make whole
    batches of one shape each (a folder of equal-sized photos at native resolution: every
    window is one batch), instead of after a whole grouping window; mixed shapes still fill
    the window until equal shapes meet."""
    from PIL import Image

    from quasar.runtime.engine import Engine

    same, mixed, pairs = [], [], []
    for i in range(12):
        p = tmp_path / f"s{i:02d}.png"
        Image.fromarray(hostile._noise(48, 40, i)).save(p)
        same.append(str(p))
        q = tmp_path / f"m{i:02d}.png"
        Image.fromarray(hostile._noise(32 if i % 2 else 48, 40, i)).save(q)
        mixed.append(str(q))
        r = tmp_path / f"p{i:02d}.png"  # shapes in runs of two: A A B B A A ...
        Image.fromarray(hostile._noise(32 if (i // 2) % 2 else 48, 40, i)).save(r)
        pairs.append(str(r))
    cfg = PipelineConfig(batch_size=4, workers=2, variable_shapes=True, group_factor=2)
    scorer = hostile.FakeScorer(shape=None)
    assert [len(w) for w in Engine.for_scorer(scorer, cfg).windows(same)] == [4, 4, 4]
    assert [b[0] for b in scorer.batches] == [4, 4, 4]
    scorer = hostile.FakeScorer(shape=None)
    assert [len(w) for w in Engine.for_scorer(scorer, cfg).windows(mixed)] == [8, 4]
    assert sorted(b[0] for b in scorer.batches) == [2, 2, 4, 4]
    cfg2 = PipelineConfig(batch_size=2, workers=2, variable_shapes=True, group_factor=4)
    scorer = hostile.FakeScorer(shape=None)
    assert [len(w) for w in Engine.for_scorer(scorer, cfg2).windows(pairs)] == [2] * 6
    assert [b[0] for b in scorer.batches] == [2] * 6


def test_read_ahead_starts_small_and_grows_with_the_inputs_embedded():
    """Decoding is paced by inference: before the first window only ``lookahead`` inputs
    (and the window's own) are submitted - not the whole ``in_flight`` - and the read-ahead
    grows one input per input embedded until it reaches ``in_flight``. (A burst of decodes
    during one inference halved that inference at native size: docs/benchmark.md.)"""
    from quasar.runtime.engine import Engine

    pulled = [0]

    def counted(n):
        for i in range(n):
            pulled[0] += 1
            yield i  # not a path: decoded by ``load`` alone
    cfg = PipelineConfig(batch_size=2, workers=2, variable_shapes=True, group_factor=8)
    assert (cfg.window, cfg.in_flight) == (16, 20)  # lookahead: max(2, 2 workers x 2) = 4
    eng = Engine(lambda item: np.zeros((3, 8, 8), np.float32),  # one shape: windows of 2
                 lambda x: np.ones((len(x), 6), np.float32), 6, cfg)
    ahead = []  # inputs pulled beyond those handed out, at each window
    done = 0
    for w in eng.windows(counted(200)):
        assert len(w) == 2 and all(e is None for e in w.errors)
        ahead.append(pulled[0] - done)
        done += len(w)
    assert done == 200
    assert ahead[0] == 4 + 2  # lookahead + the first window (was in_flight + 2 = 22)
    assert all(b - a <= cfg.batch_size for a, b in zip(ahead, ahead[1:]))  # grows gently
    assert max(ahead) == cfg.in_flight + cfg.batch_size  # and reaches the full read-ahead


def test_inference_failure_is_isolated(tmp_path):
    from PIL import Image
    paths = []
    for i in range(10):
        p = tmp_path / f"{i}.png"
        Image.fromarray(hostile._noise(16 if i in (2, 7) else 40, 40, i)).save(p)
        paths.append(str(p))
    scorer = hostile.FakeScorer(shape=None, fail_embed_shape=(2, 5))  # 16x40 // 8
    rows, _, stats = _collect(scorer, paths, PipelineConfig(batch_size=4, variable_shapes=True))
    assert [r.status for r in rows] == ["inference_error" if i in (2, 7) else "ok" for i in range(10)]
    assert "fake inference failure" in rows[2].error


def test_lookahead_is_bounded_and_input_is_streamed():
    pulled = [0]

    def endless():
        for i in itertools.count():
            pulled[0] += 1
            yield f"/no/such/{i}.png"
    cfg = PipelineConfig(batch_size=8, workers=2)
    seen = []

    def sink(rows, emb):
        seen.append(len(rows))
        assert pulled[0] - sum(seen) <= cfg.in_flight + cfg.window
        if sum(seen) >= 400:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(hostile.FakeScorer(), endless(), sink, cfg)
    assert sum(seen) == 400


def test_decoding_runs_in_worker_threads(images):
    good, _ = images
    scorer = hostile.FakeScorer()
    _collect(scorer, [str(p) for p in good] * 4, PipelineConfig(batch_size=2, workers=3))
    import threading
    assert threading.get_ident() not in scorer.threads_seen and len(scorer.threads_seen) >= 2


def test_error_status_of_exception_classes():
    from quasar import errors
    assert error_status(errors.ImageTooLargeError("x")) == "too_large"
    assert error_status(errors.ImageDecodeError("x")) == "decode_error"
    assert error_status(PermissionError("x")) == "permission_denied"
    assert error_status(ValueError("x")) == "decode_error"
    if hasattr(errors, "TruncatedImageError"):
        assert error_status(errors.TruncatedImageError("x")) == "truncated"


def test_config_validation():
    with pytest.raises(ValueError):
        PipelineConfig(batch_size=0)
    with pytest.raises(ValueError):
        PipelineConfig(workers=0)


def test_shape_batches_groups_by_shape_in_first_seen_order():
    """The engine's batching rule, written out by hand: shapes in first-seen order, failed
    inputs (None) in no batch, each group cut at the batch size."""
    from quasar.runtime.engine import shape_batches

    a, b = (3, 224, 224), (3, 768, 1024)
    assert shape_batches([a, b, a, None, a, b, a], 2) == [[0, 2], [4, 6], [1, 5]]
    assert shape_batches([None, None], 4) == [] and shape_batches([], 4) == []
