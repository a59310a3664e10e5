"""The vectorised bootstrap (pipelines/bootstrap.py) against the gate's metric_value, which
scores resampled rows with scikit-learn: the same numbers, resample by resample."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import bootstrap
from pipelines.gate import Scored, metric_value, paired_bootstrap


def _counts(rows: np.ndarray, n: int) -> np.ndarray:
    return np.stack([np.bincount(r, minlength=n) for r in rows]).astype(np.float64)


def _proba(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    # Rounded, so scores tie (sklearn's curves group tied scores; ours must too).
    raw = np.round(rng.random((n, k)), 1) + 1e-3
    return raw / raw.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("metric", ["pr_auc", "roc_auc", "f1"])
@pytest.mark.parametrize("k", [2, 3, 10])
def test_classification_metrics_equal_sklearns_on_each_resample(metric: str, k: int) -> None:
    rng = np.random.default_rng(k)
    n = 60  # small: some resamples miss a class, where a metric is undefined (NaN / None)
    y = rng.integers(0, k, n)
    proba = _proba(rng, n, k)
    s = Scored("classification", y, proba, proba, 1 if k == 2 else None)
    rows = rng.integers(0, n, (40, n))
    got = bootstrap.classification(metric, _counts(rows, n), y, proba, s.positive)
    want = [metric_value(metric, s, proba, r) for r in rows]
    for g, w in zip(got, want, strict=True):
        assert (w is None and np.isnan(g)) or g == pytest.approx(w, abs=1e-9), (g, w)


@pytest.mark.parametrize("metric", ["rmse", "mae", "r2"])
def test_regression_metrics_equal_on_each_resample(metric: str) -> None:
    rng = np.random.default_rng(3)
    n = 50
    y = rng.normal(size=n)
    pred = y + rng.normal(scale=0.5, size=n)
    s = Scored("regression", y, pred, pred, None)
    rows = rng.integers(0, n, (30, n))
    got = bootstrap.regression(metric, _counts(rows, n), y, pred)
    want = [metric_value(metric, s, pred, r) for r in rows]
    assert got == pytest.approx(want, rel=1e-9)
    # One row drawn n times: no variance, so no r2 (a float sum left ~1e-30 there: -5e28).
    single = bootstrap.regression(metric, _counts(np.zeros((1, n), dtype=int), n), y, pred)
    assert np.isnan(single[0]) if metric == "r2" else np.isfinite(single[0])


def test_resample_counts_draw_n_rows_each_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootstrap, "CHUNK_CELLS", 700)  # blocks of 7 resamples of 100 rows
    blocks = list(bootstrap.resample_counts(100, 30, seed=1))
    assert [len(b) for b in blocks] == [7, 7, 7, 7, 2]
    assert all((b.sum(axis=1) == 100).all() for b in blocks)


def test_paired_bootstrap_interval_of_a_clearly_better_candidate() -> None:
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    good = np.c_[1 - y * 0.8 - 0.1, y * 0.8 + 0.1] + rng.normal(scale=0.05, size=(n, 2))
    noise = rng.random((n, 2))
    s = Scored("classification", y, good, noise, 1)
    low, high, defined = paired_bootstrap("pr_auc", True, s, samples=500, seed=0)
    assert defined == 500 and 0.3 < low < high <= 0.6
    same = Scored("classification", y, noise, noise, 1)
    assert paired_bootstrap("pr_auc", True, same, samples=200, seed=0)[:2] == (0.0, 0.0)
