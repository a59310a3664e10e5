"""monitoring/estimate.py and monitoring/multivariate.py on synthetic data whose truth is known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.ensemble import GradientBoostingRegressor

from mlops.errors import MlopsError
from monitoring.estimate import (
    CBPE,
    DLE,
    Estimate,
    MetricEstimate,
    _metrics,
    backtest,
    mark_unreliable,
    realized,
    realized_errors,
)
from monitoring.multivariate import ReconstructionCheck


def binary_scores(rng: np.random.Generator, n: int, a: float = 0.6, b: float = 6.0) -> np.ndarray:
    p = rng.beta(a, b, n)
    return np.column_stack([1 - p, p])


def draw(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """Labels drawn from the probabilities: the scores are perfectly calibrated."""
    return (rng.random(len(p)) < p).astype(np.int64)


# -- realized metrics: the same numbers as scikit-learn ------------------------------------------


@pytest.mark.parametrize("decimals", [None, 2], ids=["distinct", "tied"])
def test_realized_binary_metrics_match_scikit_learn(decimals: int | None) -> None:
    rng = np.random.default_rng(0)
    s = binary_scores(rng, 3000)
    y = draw(rng, s[:, 1])
    if decimals is not None:  # ties: one threshold per distinct score, as scikit-learn does
        s = np.round(s, decimals)
    got, pred = realized(s, y, positive=1), s.argmax(axis=1)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, s[:, 1]))
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(y, s[:, 1]))


def test_realized_multiclass_metrics_are_macro_averages() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2000, 3)) * 2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    got, pred = realized(p, y), p.argmax(axis=1)
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(np.eye(3)[y], p, average="macro"))
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(np.eye(3)[y], p))


def test_the_positive_class_defaults_to_the_minority_class() -> None:
    rng = np.random.default_rng(2)
    s = binary_scores(rng, 1000)
    y = draw(rng, s[:, 1])
    assert realized(s, y) == realized(s, y, positive=1)
    assert realized(s, y)["f1"] != realized(s, y, positive=0)["f1"]


# -- expected metrics ----------------------------------------------------------------------------


def test_expected_metrics_are_the_mean_over_labels_drawn_from_the_probabilities() -> None:
    # guards the average-precision formula: a plug-in of probabilities as labels is biased low
    rng = np.random.default_rng(3)
    s = binary_scores(rng, 2000, a=0.8, b=3.0)
    expected = _metrics(s, s, 1)
    draws = [realized(s, draw(rng, s[:, 1]), 1) for _ in range(400)]
    for name in ("accuracy", "f1", "precision", "recall", "roc_auc", "pr_auc"):
        mean = np.mean([d[name] for d in draws])
        spread = np.std([d[name] for d in draws]) / np.sqrt(len(draws))
        assert abs(expected[name] - mean) < max(4 * spread, 0.002), name


def test_cbpe_tracks_f1_and_ap_of_calibrated_scores_and_its_band_covers() -> None:
    rng = np.random.default_rng(4)
    ref = binary_scores(rng, 20_000)
    cbpe = CBPE.fit(ref, draw(rng, ref[:, 1]), positive=1)
    estimates, actual = [], []
    for shift in (0.6, 0.6, 1.2, 1.2, 2.0, 2.0):  # covariate shift: more likely failures
        w = binary_scores(rng, 3000, a=shift)
        estimates.append(cbpe.estimate(w))
        actual.append(realized(w, draw(rng, w[:, 1]), 1))
    fared = backtest(estimates, actual)
    assert fared["f1"]["mae"] < 0.03 and fared["pr_auc"]["mae"] < 0.03
    assert fared["f1"]["coverage"] == 1.0 and fared["pr_auc"]["coverage"] == 1.0
    assert fared["windows"] == {"count": 6.0, "reliable": 1.0}
    # the realized F1 moved with the shift, and the estimates followed it
    f1 = [a["f1"] for a in actual]
    assert max(f1) - min(f1) > 0.1


def test_cbpe_calibrates_scores_the_model_got_wrong() -> None:
    # the model says p, the truth is p**2: raw scores overstate precision, calibration does not
    rng = np.random.default_rng(5)
    ref = binary_scores(rng, 20_000, a=2.0, b=2.0)
    cbpe = CBPE.fit(ref, draw(rng, ref[:, 1] ** 2), positive=1)
    w = binary_scores(rng, 5000, a=2.0, b=2.0)
    est, act = cbpe.estimate(w), realized(w, draw(rng, w[:, 1] ** 2), 1)
    assert abs(est["precision"].value - act["precision"]) < 0.03
    assert _metrics(w, w, 1)["precision"] - act["precision"] > 0.1  # uncalibrated: far off


def test_multiclass_cbpe_estimates_accuracy_and_macro_f1() -> None:
    rng = np.random.default_rng(6)

    def scores(n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
        logits = rng.normal(size=(n, 3)) * scale
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return p, np.array([rng.choice(3, p=row) for row in p])

    cbpe = CBPE.fit(*scores(15_000, 2.0))
    assert cbpe.positive is None and len(cbpe.calibrators) == 3
    w, y = scores(3000, 3.0)  # sharper scores: accuracy rises
    est, act = cbpe.estimate(w), realized(w, y)
    for name in ("accuracy", "f1"):
        assert abs(est[name].value - act[name]) < 0.02 and est[name].covers(act[name])


def test_segment_calibration_survives_a_change_in_the_segment_mix() -> None:
    # segment "b" is miscalibrated (truth p**2), "a" is not; the window is mostly "b"
    rng = np.random.default_rng(7)

    def batch(n: int, share_b: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = binary_scores(rng, n, a=2.0, b=3.0)
        seg = np.where(rng.random(n) < share_b, "b", "a")
        truth = np.where(seg == "b", s[:, 1] ** 2, s[:, 1])
        return s, draw(rng, truth), seg

    s, y, seg = batch(20_000, 0.2)
    overall = CBPE.fit(s, y, positive=1)
    per = CBPE.fit(s, y, positive=1, segments=seg)
    assert per.segments is not None and set(per.segments) == {"a", "b"}
    w, wy, wseg = batch(5000, 0.9)
    act = realized(w, wy, 1)
    assert abs(per.estimate(w, wseg)["precision"].value - act["precision"]) < 0.03
    assert overall.estimate(w)["precision"].value - act["precision"] > 0.05
    with pytest.raises(MlopsError, match="pass the window's segments"):
        per.estimate(w)


def test_a_segment_with_too_few_labels_uses_the_overall_calibration() -> None:
    rng = np.random.default_rng(8)
    s = binary_scores(rng, 5000)
    seg = np.where(np.arange(5000) < 30, "rare", "common")
    cbpe = CBPE.fit(s, draw(rng, s[:, 1]), positive=1, segments=seg)
    assert cbpe.segments is not None and set(cbpe.segments) == {"common"}
    unseen = np.full(100, "new")  # a segment the reference never had: overall calibration
    calibrated = cbpe.calibrated(s[:100], unseen)
    assert np.allclose(calibrated[:, 1], cbpe.calibrators[0](s[:100, 1]))
    assert np.allclose(calibrated.sum(axis=1), 1.0)


# -- DLE -----------------------------------------------------------------------------------------


def regression(rng: np.random.Generator, n: int, spread: float = 1.0):  # type: ignore[no-untyped-def]
    x = rng.normal(0.0, spread, (n, 3))
    prediction = 2.0 * x[:, 0]
    target = prediction + rng.normal(0.0, 0.3 + np.abs(x[:, 1]))  # the error grows with |x1|
    return x, prediction, target


def test_dle_estimates_mae_and_rmse_and_follows_a_shift_in_the_inputs() -> None:
    rng = np.random.default_rng(9)
    dle = DLE.fit(*regression(rng, 4000))
    for spread in (1.0, 0.5):  # narrower x1: smaller errors
        x, p, t = regression(rng, 3000, spread)
        est, act = dle.estimate(x, p), realized_errors(p, t)
        for name in ("mae", "rmse"):
            # depth-3 trees blunt the V of |error| around x1 = 0: within 10 %
            assert abs(est[name].value - act[name]) < 0.1 * act[name], (spread, name)
            assert est[name].covers(act[name])
    assert dle.estimate(*regression(rng, 2000, 0.5)[:2])["mae"].value < 0.75


def test_dle_trees_predict_exactly_as_scikit_learn() -> None:
    rng = np.random.default_rng(10)
    x, p, t = regression(rng, 2000)
    dle = DLE.fit(x, p, t)
    features = np.column_stack([x, p])
    sk = GradientBoostingRegressor(
        n_estimators=100, max_depth=3, learning_rate=0.1, random_state=0
    ).fit(features, np.abs(p - t))
    assert np.allclose(dle.absolute(features), sk.predict(features))


# -- reliability and the multivariate check ------------------------------------------------------


def correlated(rng: np.random.Generator, n: int, rho: float = 0.9) -> pd.DataFrame:
    a = rng.normal(size=n)
    b = rho * a + np.sqrt(1 - rho**2) * rng.normal(size=n)
    return pd.DataFrame({"a": a * 2 + 300, "b": b + 310, "c": rng.normal(size=n) * 10})


def test_the_reconstruction_check_flags_a_broken_correlation_not_a_resample() -> None:
    rng = np.random.default_rng(11)
    check = ReconstructionCheck.fit(correlated(rng, 20_000), ["a", "b", "c"])
    same = check.check(correlated(rng, 2000))
    assert not same.flagged and same.reasons() == []
    assert same.chunk_rows == 2000 and same.lower < same.error < same.upper
    broken = check.check(correlated(rng, 2000, rho=0.0))  # each column's distribution unchanged
    assert broken.drift_flagged and not broken.range_flagged
    assert broken.reasons()[0].startswith("multivariate check: reconstruction error")


def test_the_range_check_names_the_column_and_side() -> None:
    rng = np.random.default_rng(12)
    check = ReconstructionCheck.fit(correlated(rng, 5000), ["a", "b", "c"], tolerance=0.01)
    window = correlated(rng, 1000)
    window.loc[:49, "c"] = 1e3  # 5 % of rows past the maximum
    result = check.check(window)
    assert result.range_flagged and 0.05 <= result.out_of_range < 0.06
    assert "inputs out of the reference's range: c [max] 5.0% of rows" in result.reasons()
    d = result.to_dict()
    assert d["columns"]["c"]["above"] == pytest.approx(0.05) and d["flagged"] is True


def test_nulls_are_imputed_not_out_of_range() -> None:
    rng = np.random.default_rng(13)
    ref = correlated(rng, 5000)
    ref.loc[:99, "b"] = np.nan
    check = ReconstructionCheck.fit(ref, ["a", "b", "c"])
    window = correlated(rng, 1000)
    window.loc[:9, "a"] = np.nan
    result = check.check(window)
    assert np.isfinite(result.error) and result.out_of_range < 0.01


def test_mark_unreliable_carries_the_checks_reasons() -> None:
    rng = np.random.default_rng(14)
    check = ReconstructionCheck.fit(correlated(rng, 10_000), ["a", "b", "c"])
    estimate = Estimate(1000, {"f1": MetricEstimate(0.5, 0.4, 0.6, 0.03)})
    assert mark_unreliable(estimate, check.check(correlated(rng, 1000))) is estimate
    broken = correlated(rng, 1000, rho=0.0)
    broken.loc[:99, "c"] = -1e3
    marked = mark_unreliable(estimate, check.check(broken))
    assert not marked.reliable and len(marked.reasons) == 2
    assert "c [min] 10.0% of rows" in marked.reasons[1]
    assert marked.to_dict()["reasons"] == list(marked.reasons)


# -- persistence: plain numbers through JSON -----------------------------------------------------


def test_estimators_and_checks_round_trip_through_json() -> None:
    rng = np.random.default_rng(15)
    s = binary_scores(rng, 5000)
    seg = rng.choice(["L", "M"], 5000)
    cbpe = CBPE.fit(s, draw(rng, s[:, 1]), positive=1, segments=seg)
    back = CBPE.from_dict(json.loads(json.dumps(cbpe.to_dict())))
    assert (
        back.estimate(s[:500], seg[:500]).to_dict() == cbpe.estimate(s[:500], seg[:500]).to_dict()
    )

    x, p, t = regression(rng, 1500)
    dle = DLE.fit(x, p, t)
    dle_back = DLE.from_dict(json.loads(json.dumps(dle.to_dict())))
    assert dle_back.estimate(x[:300], p[:300]).to_dict() == dle.estimate(x[:300], p[:300]).to_dict()

    frame = correlated(rng, 3000)
    check = ReconstructionCheck.fit(frame, ["a", "b", "c"])
    check_back = ReconstructionCheck.from_dict(json.loads(json.dumps(check.to_dict())))
    assert check_back.check(frame.iloc[:400]).to_dict() == check.check(frame.iloc[:400]).to_dict()


@pytest.mark.parametrize(
    ("load", "state", "match"),
    [
        (CBPE.from_dict, {"kind": "dle"}, "not a saved estimator"),
        (CBPE.from_dict, {"kind": "cbpe", "n_classes": 2}, "malformed"),
        (DLE.from_dict, {"kind": "dle", "features": "x"}, "malformed"),
        (ReconstructionCheck.from_dict, {"kind": "pca-reconstruction"}, "malformed"),
    ],
)
def test_malformed_saved_state_is_refused(load, state, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MlopsError, match=match):
        load(state)


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "labels", "positive", "match"),
    [
        (np.ones(10), np.zeros(10, dtype=int), 1, "expected class probabilities"),
        (np.full((10, 2), np.nan), np.zeros(10, dtype=int), 1, "NaN"),
        (np.full((10, 2), 0.5), np.zeros(9, dtype=int), 1, "integer class indices"),
        (np.full((10, 2), 0.5), np.full(10, 2), 1, "class indices must be in 0..1"),
        (np.full((10, 2), 0.5), np.zeros(10, dtype=int), 5, "not a class index"),
        (np.full((10, 3), 0.3), np.zeros(10, dtype=int), 1, "applies to binary targets"),
    ],
)
def test_cbpe_refuses_bad_input(scores, labels, positive, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MlopsError, match=match):
        CBPE.fit(scores, labels, positive)


def test_windows_must_match_what_was_fitted() -> None:
    rng = np.random.default_rng(16)
    s = binary_scores(rng, 2000)
    cbpe = CBPE.fit(s, draw(rng, s[:, 1]), positive=1)
    with pytest.raises(MlopsError, match="expected 2 classes, got 3"):
        cbpe.estimate(np.full((5, 3), 1 / 3))
    check = ReconstructionCheck.fit(correlated(rng, 1000), ["a", "b", "c"])
    with pytest.raises(MlopsError, match=r"no column\(s\) \['c'\]"):
        check.check(correlated(rng, 100).drop(columns="c"))
    with pytest.raises(MlopsError, match="not numbers"):
        check.check(correlated(rng, 100).assign(c="hot"))
    x, p, t = regression(rng, 500)
    dle = DLE.fit(x, p, t)
    with pytest.raises(MlopsError, match="expected 3 input columns, got 2"):
        dle.estimate(x[:, :2], p)


def test_a_small_reference_says_why_there_is_no_estimate_and_what_size_gives_one() -> None:
    from pathlib import Path

    from pipelines.monitor import SPLIT, Reference, no_estimate_reason

    # 150 rows, as a small user data set leaves them: 105 train, 45 validation and test
    frame = pd.DataFrame({"x": range(150), SPLIT: ["train"] * 105 + ["val"] * 22 + ["test"] * 23})
    ref = Reference(frame=frame, scores=np.zeros(150), path=Path("ref.parquet"))
    why = no_estimate_reason(ref, reference_rows=20_000)
    assert why == (
        "the reference holds 45 held-out rows (the version's validation and test splits); "
        "calibrating the estimate needs 200: train on about 667 rows or more"
    )
    # a reference cut at monitor.reference_rows is not the whole data set: no size to promise
    assert no_estimate_reason(ref, reference_rows=150).endswith("needs 200")
