"""The ai4i generator's decouple_temperatures knob: each column keeps its values, the air/process
correlation breaks, and only a multivariate check can see it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlops.errors import MlopsError
from monitoring.drift import compare
from monitoring.multivariate import ReconstructionCheck
from pipelines.sources import AI4I_SPEC, Ai4iDrift, generate_ai4i, parse_drift

AIR, PROCESS = "Air temperature [K]", "Process temperature [K]"
NUMERIC = [c for c in AI4I_SPEC.features if c not in AI4I_SPEC.categorical]
ROWS, SEED = 4000, 21


def decoupled(share: float, seed: int = SEED) -> pd.DataFrame:
    return generate_ai4i(ROWS, seed, Ai4iDrift(decouple_temperatures=share))


@pytest.fixture(scope="module")
def coupled() -> pd.DataFrame:
    return generate_ai4i(ROWS, SEED)


def test_zero_changes_nothing(coupled: pd.DataFrame) -> None:
    # existing batches and their lineage must reproduce exactly
    pd.testing.assert_frame_equal(decoupled(0.0), coupled)


def test_it_is_deterministic() -> None:
    pd.testing.assert_frame_equal(decoupled(0.5), decoupled(0.5))


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_the_share_must_lie_in_zero_to_one(share: float) -> None:
    with pytest.raises(MlopsError, match="decouple_temperatures"):
        Ai4iDrift(decouple_temperatures=share)


def test_parse_drift_knows_the_knob() -> None:
    assert parse_drift("decouple_temperatures=0.5") == Ai4iDrift(decouple_temperatures=0.5)
    assert Ai4iDrift(decouple_temperatures=0.5).to_dict()["decouple_temperatures"] == 0.5


def test_marginals_stay_exactly(coupled: pd.DataFrame) -> None:
    # a per-column drift test must have nothing to find: the same values, in another order
    fully = decoupled(1.0)
    assert np.array_equal(fully[AIR], coupled[AIR])
    assert np.array_equal(np.sort(fully[PROCESS]), np.sort(coupled[PROCESS]))
    assert stats.ks_2samp(fully[PROCESS], coupled[PROCESS]).pvalue == 1.0
    others = [c for c in AI4I_SPEC.features if c != PROCESS]
    pd.testing.assert_frame_equal(fully[others], coupled[others])


def test_evidently_flags_neither_temperature(coupled: pd.DataFrame) -> None:
    result, _ = compare(coupled, decoupled(1.0), numerical=NUMERIC, categorical=["Type"])
    assert result.drifted == []


def test_the_correlation_drops_with_the_share(coupled: pd.DataFrame) -> None:
    def corr(frame: pd.DataFrame) -> float:
        return float(np.corrcoef(frame[AIR], frame[PROCESS])[0, 1])

    base, half, full = corr(coupled), corr(decoupled(0.5)), corr(decoupled(1.0))
    assert base > 0.8  # process temperature follows the air (published: ~0.88)
    assert 0.3 * base < half < 0.7 * base
    assert abs(full) < 0.1


def test_the_failures_follow_the_decoupled_temperatures(coupled: pd.DataFrame) -> None:
    # the machine's physics sees the new temperatures: a small gap means heat dissipation fails
    fully = decoupled(1.0)
    gap = fully[PROCESS] - fully[AIR]
    expected = ((gap.round(1) < 8.6) & (fully["Rotational speed [rpm]"] < 1380)).astype(int)
    assert (fully["HDF"] == expected).all()
    assert fully["HDF"].sum() > coupled["HDF"].sum()


def test_the_reconstruction_check_flags_it() -> None:
    reference = pd.concat([generate_ai4i(5000, 100 + i) for i in range(4)], ignore_index=True)
    check = ReconstructionCheck.fit(reference, NUMERIC)
    assert not check.check(generate_ai4i(ROWS, SEED)).flagged
    result = check.check(decoupled(1.0))
    assert result.drift_flagged and not result.range_flagged
    assert result.error > result.upper
    assert check.check(decoupled(0.25)).drift_flagged  # a quarter of the rows is enough
