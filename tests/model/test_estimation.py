"""Issue 11: the trained model's F1 and average precision estimated without labels, on ai4i windows
under covariate shift, against the generator's true labels joined afterwards.

The reference is 100,000 labelled rows the model never trained on (20 batches, seeds 1000-1019;
the model trained on seed 7), calibrated per product type. Each scenario is 20 windows of 5,000
rows (seeds 2000-2019).

Measured here (20 windows each; MAE of F1 / of average precision, band coverage F1 / AP):
    undrifted            0.015 / 0.026, 1.00 / 0.95   reliable
    product mix H-heavy  0.013 / 0.028, 1.00 / 1.00   reliable
    product mix L-heavy  0.013 / 0.028, 1.00 / 1.00   reliable
    ambient +3 K         0.033 / 0.055, 1.00 / 0.90   unreliable (multivariate, range)
    ambient +6 K         0.044 / 0.103, 0.90 / 0.55   unreliable (multivariate, range)
    decoupled temps      0.136 / 0.301, 0.00 / 0.00   unreliable (multivariate)
The issue asks for the ambient and decoupled windows to meet the targets too. They cannot with
this model: its scores are not invariant to those shifts (the failure rate among rows it scores
0.8-0.95 rises from 0.28 on the reference to 0.41 at +3 K), so no calibration on the reference
can know what a score means there. What the monitor can do, it does: it marks those estimates
unreliable. `test_issue_target_under_the_shifts_this_model_does_not_survive` keeps the gap in
view as an expected failure.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from monitoring.estimate import CBPE, Estimate, backtest, mark_unreliable, realized
from monitoring.multivariate import ReconstructionCheck
from pipelines.sources import Ai4iDrift, generate_ai4i

Trained = Any  # the `trained` fixture of tests/model/conftest.py

pytestmark = pytest.mark.slow

WINDOW_ROWS, WINDOWS = 5000, range(2000, 2020)
REFERENCE_SEEDS = range(1000, 1020)
TARGET_MAE = {"f1": 0.035, "pr_auc": 0.03}
MIN_COVERAGE = 0.9

SURVIVED = {
    "undrifted": Ai4iDrift(),
    "product mix H-heavy": Ai4iDrift(product_mix=(0.2, 0.3, 0.5)),
    "product mix L-heavy": Ai4iDrift(product_mix=(0.7, 0.2, 0.1)),
}
NOT_SURVIVED = {
    "ambient +3 K": Ai4iDrift(ambient_shift_k=3.0),
    "ambient +6 K": Ai4iDrift(ambient_shift_k=6.0),
    "decoupled temperatures": Ai4iDrift(decouple_temperatures=1.0),
}


class Monitor:
    """CBPE and the multivariate check, fitted once on the labelled reference."""

    def __init__(self, trained: Trained) -> None:
        self.predictor, spec = trained.predictor, trained.data.spec
        self.target, self.segment = spec.target, "Type"
        self.numerical = [c for c in spec.features if c not in spec.categorical]
        self.positive = trained.data.preprocessor.classes.index(spec.positive_class)
        # kept in time order (batch after batch): the check's chunks then carry the walk
        reference = pd.concat(
            [generate_ai4i(WINDOW_ROWS, seed) for seed in REFERENCE_SEEDS], ignore_index=True
        )
        self.cbpe = CBPE.fit(
            self.predictor.scores(reference),
            self.labels(reference),
            self.positive,
            segments=reference[self.segment].to_numpy(),
        )
        self.check = ReconstructionCheck.fit(reference, self.numerical)

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        classes = list(self.predictor.preprocessor.classes)
        return np.asarray([classes.index(v) for v in frame[self.target]], dtype=np.int64)

    def run(self, drift: Ai4iDrift) -> tuple[list[Estimate], list[dict[str, float]]]:
        """Estimates for each window, from scores alone; the realized metrics from the labels
        the generator knew all along, joined afterwards."""
        estimates, actual = [], []
        for seed in WINDOWS:
            window = generate_ai4i(WINDOW_ROWS, seed, drift)
            scores = self.predictor.scores(window.drop(columns=[self.target]))
            estimate = self.cbpe.estimate(scores, window[self.segment].to_numpy())
            estimates.append(mark_unreliable(estimate, self.check.check(window)))
            actual.append(realized(scores, self.labels(window), self.positive))
        return estimates, actual


@pytest.fixture(scope="module")
def monitor(trained: Trained) -> Monitor:
    return Monitor(trained)


@pytest.mark.parametrize("scenario", list(SURVIVED))
def test_estimates_meet_the_issue_targets_where_calibration_survives(
    monitor: Monitor, scenario: str
) -> None:
    estimates, actual = monitor.run(SURVIVED[scenario])
    fared = backtest(estimates, actual)
    summary = {k: {m: round(v, 3) for m, v in fared[k].items()} for k in ("f1", "pr_auc")}
    print(f"\n{scenario}: {summary}, reliable {fared['windows']['reliable']:.2f}")
    for metric, target in TARGET_MAE.items():
        assert fared[metric]["mae"] <= target, (scenario, metric, fared[metric])
        assert fared[metric]["coverage"] >= MIN_COVERAGE, (scenario, metric, fared[metric])
    # presented as confident: neither check fires on traffic the reference covers
    assert fared["windows"]["reliable"] >= 0.9


@pytest.mark.parametrize("scenario", list(NOT_SURVIVED))
def test_shifts_that_break_the_estimate_are_marked_unreliable(
    monitor: Monitor, scenario: str
) -> None:
    estimates, actual = monitor.run(NOT_SURVIVED[scenario])
    fared = backtest(estimates, actual)
    print(f"\n{scenario}: F1 MAE {fared['f1']['mae']:.3f}, AP MAE {fared['pr_auc']['mae']:.3f}")
    assert all(not e.reliable for e in estimates)
    assert all(any(r.startswith("multivariate check") for r in e.reasons) for e in estimates)
    if scenario == "ambient +6 K":  # hotter than any process the reference saw
        assert all(any("Process temperature [K] [max]" in r for r in e.reasons) for e in estimates)


@pytest.mark.parametrize(
    ("drift", "reason"),
    [
        (
            Ai4iDrift(tool_wear_rate=1.5),
            "inputs out of the reference's range: Tool wear [min] [max]",
        ),
        (
            Ai4iDrift(tool_wear_rate=1.2),
            "inputs out of the reference's range: Tool wear [min] [max]",
        ),
        (Ai4iDrift(sensor_noise=0.5), "multivariate check: reconstruction error"),
        (Ai4iDrift(sensor_noise=0.25), "multivariate check: reconstruction error"),
    ],
    ids=["wear x1.5", "wear x1.2", "noise 0.5", "noise 0.25"],
)
def test_worn_tooling_and_sensor_noise_are_marked_unreliable(
    monitor: Monitor, drift: Ai4iDrift, reason: str
) -> None:
    # the issue's second acceptance criterion: not presented as confident, and says why
    estimates, actual = monitor.run(drift)
    for estimate in estimates:
        assert not estimate.reliable
        assert any(r.startswith(reason) for r in estimate.reasons), estimate.reasons
    fared = backtest(estimates, actual)
    print(f"\n{drift}: F1 MAE {fared['f1']['mae']:.3f}, AP MAE {fared['pr_auc']['mae']:.3f}")


@pytest.mark.xfail(
    strict=True,
    reason="measured: ambient +3 K AP MAE 0.055, +6 K F1 0.044 / AP 0.103, decoupled temperatures "
    "F1 0.136 / AP 0.301; the model's calibration does not survive these shifts (see the module "
    "docstring); the monitor marks them unreliable instead",
)
def test_issue_target_under_the_shifts_this_model_does_not_survive(monitor: Monitor) -> None:
    for scenario, drift in NOT_SURVIVED.items():
        fared = backtest(*monitor.run(drift))
        for metric, target in TARGET_MAE.items():
            assert fared[metric]["mae"] <= target, (scenario, metric)
