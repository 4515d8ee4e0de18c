"""Metrics against SciPy directly, and the k-fold protocol against the reference's loop."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.optimize import curve_fit

from quasar.evaluate import metrics as M


@pytest.fixture
def data():
    rs = np.random.RandomState(3)
    x = rs.rand(200)
    y = 2.0 / (1 + np.exp(-(x - 0.5) / 0.1)) + 0.1 * rs.randn(200)
    return x, y


def test_correlations_match_scipy(data):
    x, y = data
    assert M.srcc(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert M.krcc(x, y) == pytest.approx(stats.kendalltau(x, y)[0], abs=1e-12)
    assert M.plcc(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)


def test_signed(data):
    x, y = data
    assert M.srcc(x, -y) == pytest.approx(-stats.spearmanr(x, y)[0], abs=1e-12)
    assert M.srcc(x, -y) < 0
    assert M.krcc(x, -y) < 0 and M.plcc(x, -y) < 0


def test_plcc_logistic_matches_direct_fit(data):
    x, y = data

    def f(t, b1, b2, b3, b4):
        return (b1 - b2) / (1 + np.exp(-(t - b3) / np.abs(b4))) + b2

    p, _ = curve_fit(f, x, y, p0=[y.max(), y.min(), x.mean(), x.std()], maxfev=20000)
    want = stats.pearsonr(f(x, *p), y)[0]
    got, ok = M.plcc_logistic(x, y)
    assert ok
    assert got == pytest.approx(want, abs=1e-6)
    assert got >= M.plcc(x, y) - 1e-9  # a monotone fit cannot do worse than linear here


def test_plcc_logistic_decreasing_relation(data):
    x, y = data
    got, ok = M.plcc_logistic(x, -y)
    assert ok and got > 0.5


def test_plcc_logistic_falls_back():
    x = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # degenerate: ptp>0 but nearly constant
    got, ok = M.plcc_logistic(np.ones(6), np.arange(6.0))
    assert not ok and np.isnan(got)
    got, ok = M.plcc_logistic(x[:3], np.arange(3.0))  # too few points
    assert not ok


def _reference_folds(n, k, seed):
    # main.py: seed_everything(seed); ... indices = np.random.permutation(len(predictions))
    np.random.seed(seed)
    test_size = n // k
    indices = np.random.permutation(n)
    out = []
    for fold in range(k):
        if fold == k - 1:
            out.append(indices[fold * test_size:])
        else:
            out.append(indices[fold * test_size:(fold + 1) * test_size])
    return out


@pytest.mark.parametrize("n,k", [(10, 3), (101, 10), (7, 7), (50, 1)])
def test_kfold_matches_reference(n, k):
    got = M.kfold_indices(n, k, np.random.RandomState(42))
    want = _reference_folds(n, k, 42)
    assert len(got) == k
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(np.sort(np.concatenate(got)), np.arange(n))


def test_kfold_none_is_one_fold_without_draw():
    rs = np.random.RandomState(0)
    folds = M.kfold_indices(5, None, rs)
    assert len(folds) == 1 and list(folds[0]) == list(range(5))
    assert rs.randint(1 << 30) == np.random.RandomState(0).randint(1 << 30)


def test_kfold_errors():
    with pytest.raises(ValueError, match="folds"):
        M.kfold_indices(3, 5, np.random.RandomState(0))
    with pytest.raises(ValueError):
        M.kfold_indices(10, -2, np.random.RandomState(0))


def test_cross_validated(data):
    x, y = data
    cv = M.cross_validated(x, y, 4, np.random.RandomState(7))
    folds = _reference_folds(len(x), 4, 7)
    want = [stats.spearmanr(x[i], y[i])[0] for i in folds]
    np.testing.assert_allclose([f.srcc for f in cv.folds], want, atol=1e-12)
    np.testing.assert_allclose([f.abs_srcc for f in cv.folds], np.abs(want), atol=1e-12)
    np.testing.assert_allclose([f.krcc for f in cv.folds],
                               [stats.kendalltau(x[i], y[i])[0] for i in folds], atol=1e-12)
    assert cv.mean["srcc"] == pytest.approx(np.mean(want))
    assert cv.std["srcc"] == pytest.approx(np.std(want))
    assert [f.n for f in cv.folds] == [50, 50, 50, 50]
    d = cv.to_dict()
    assert set(d) == {"folds", "mean", "std"} and len(d["folds"]) == 4
