"""Data contract of the built-in AI4I 2020 source (pipelines.sources.generate_ai4i)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipelines.sources import AI4I_SPEC, Ai4iDrift, generate_ai4i, parse_drift

ROWS = 20_000
SEED = 1

# The header of the public UCI AI4I 2020 CSV, spelled out so a rename cannot slip through.
PUBLIC_HEADER = [
    "UDI",
    "Product ID",
    "Type",
    "Air temperature [K]",
    "Process temperature [K]",
    "Rotational speed [rpm]",
    "Torque [Nm]",
    "Tool wear [min]",
    "Machine failure",
    "TWF",
    "HDF",
    "PWF",
    "OSF",
    "RNF",
]
MODES = ["TWF", "HDF", "PWF", "OSF", "RNF"]
# Per-row rates in the published 10,000-row file.
PUBLISHED_MODE_RATE = {"TWF": 0.0046, "HDF": 0.0115, "PWF": 0.0095, "OSF": 0.0098, "RNF": 0.0019}
# (mean, sd) of the published numeric columns.
PUBLISHED_MARGINALS = {
    "Air temperature [K]": (300.0, 2.0),
    "Process temperature [K]": (310.0, 1.48),
    "Rotational speed [rpm]": (1539.0, 179.0),
    "Torque [Nm]": (40.0, 10.0),
    "Tool wear [min]": (108.0, 63.7),
}


@pytest.fixture(scope="module")
def batch() -> pd.DataFrame:
    return generate_ai4i(ROWS, SEED)


def test_columns_and_dtypes_match_public_csv(batch: pd.DataFrame) -> None:
    # schema drift: downstream code and users address the public column names
    assert list(batch.columns) == PUBLIC_HEADER
    assert len(batch) == ROWS
    floats = {"Air temperature [K]", "Process temperature [K]", "Torque [Nm]"}
    strings = {"Product ID", "Type"}
    expected = {
        c: "object" if c in strings else "float64" if c in floats else "int64"
        for c in PUBLIC_HEADER
    }
    # type drift: a float label or int temperature changes encoders and validators
    assert batch.dtypes.astype(str).to_dict() == expected
    # unit/precision drift: the public file records temperatures and torque to 0.1
    for col in ["Air temperature [K]", "Process temperature [K]", "Torque [Nm]"]:
        assert np.allclose(batch[col], batch[col].round(1), rtol=0, atol=1e-9), col
    # id collisions: UDI numbers rows 1..n without gaps
    assert batch["UDI"].tolist() == list(range(1, ROWS + 1))
    # id format drift: Product ID is the type letter plus a serial, unique per row
    assert batch["Product ID"].str.fullmatch(r"[LMH]\d{5}").all()
    assert (batch["Product ID"].str[0] == batch["Type"]).all()
    assert batch["Product ID"].is_unique
    # label encoding drift: flags are strictly 0/1
    for col in ["Machine failure", *MODES]:
        assert set(batch[col].unique()) <= {0, 1}, col


def test_spec_invariants(batch: pd.DataFrame) -> None:
    spec = AI4I_SPEC
    not_features = set(spec.id_columns) | set(spec.excluded) | {spec.target}
    # label leak / memorised ids: no id, failure-mode or target column among the features
    assert not set(spec.features) & not_features
    # every column is accounted for exactly once, so a new column cannot silently become a feature
    accounted = [*spec.features, *spec.id_columns, *spec.excluded, spec.target]
    assert sorted(accounted) == sorted(PUBLIC_HEADER)
    # encoder mismatch: categorical columns are a subset of features
    assert set(spec.categorical) <= set(spec.features)
    # contract drift: the spec accepts what the generator produces
    spec.check(batch, "ai4i batch")


def test_default_failure_rates_near_published(batch: pd.DataFrame) -> None:
    rate = batch["Machine failure"].mean()
    # class-balance drift: published 3.39 %; outside this band models and thresholds mislead
    assert 0.026 <= rate <= 0.044, rate
    for mode in MODES:
        mode_rate = batch[mode].mean()
        # missing failure mode: every mode must be present for mode-level analysis
        assert batch[mode].sum() > 0, mode
        # mis-calibrated generator: each mode within a factor 2 of the published rate
        published = PUBLISHED_MODE_RATE[mode]
        assert 0.5 * published <= mode_rate <= 2 * published, (mode, mode_rate)


def test_machine_failure_is_or_of_modes(batch: pd.DataFrame) -> None:
    # label inconsistency: the target must be exactly "any failure mode fired"
    expected = batch[MODES].max(axis=1)
    assert (batch["Machine failure"] == expected).all()


def test_failure_modes_follow_published_rules(batch: pd.DataFrame) -> None:
    air, proc = batch["Air temperature [K]"], batch["Process temperature [K]"]
    speed, torque = batch["Rotational speed [rpm]"], batch["Torque [Nm]"]
    wear, kind = batch["Tool wear [min]"], batch["Type"]
    gap_tenths = (proc * 10).round() - (air * 10).round()
    # wrong physics: HDF is temperature gap < 8.6 K and speed < 1380 rpm
    assert ((batch["HDF"] == 1) == ((gap_tenths < 86) & (speed < 1380))).all()
    power = torque * speed * 2 * math.pi / 60
    # wrong physics: PWF is power outside 3500..9000 W
    assert ((batch["PWF"] == 1) == ((power < 3500) | (power > 9000))).all()
    limit_tenths = kind.map({"L": 110_000, "M": 120_000, "H": 130_000})
    # wrong physics: OSF is wear x torque above the per-quality limit
    osf = wear * (torque * 10).round().astype("int64") > limit_tenths
    assert ((batch["OSF"] == 1) == osf).all()
    twf_wear = wear[batch["TWF"] == 1]
    # wrong physics: tools fail only at end of life (200-240 min plus one process)
    assert twf_wear.between(200, 245).all(), twf_wear.describe()
    after_twf = batch.index[batch["TWF"] == 1] + 1
    after_twf = after_twf[after_twf < len(batch)]
    # broken tool life cycle: a failed tool is replaced, so the next process starts at 0 min
    assert (wear[after_twf] == 0).all()


def test_default_marginals_near_published(batch: pd.DataFrame) -> None:
    for col, (mean, sd) in PUBLISHED_MARGINALS.items():
        # covariate shift baked into the reference batch: means within 10 % of the published
        assert abs(batch[col].mean() - mean) <= 0.1 * mean, col
        # scale drift: sds within 10 % of the published
        assert abs(batch[col].std() - sd) <= 0.1 * sd, (col, batch[col].std())
    # temperature offset: absolute means matter far more than 10 % of 300 K
    assert abs(batch["Air temperature [K]"].mean() - 300.0) < 0.5
    gap = (batch["Process temperature [K]"] - batch["Air temperature [K]"]).mean()
    # wrong physics: the process runs ~10 K above ambient
    assert 9.7 < gap < 10.3, gap
    # impossible values: torque is never negative
    assert (batch["Torque [Nm]"] >= 0).all()
    # speed-torque coupling lost: speed is derived from power, so it falls as torque rises
    assert batch["Rotational speed [rpm]"].corr(batch["Torque [Nm]"]) < -0.7
    # tool life broken: wear restarts at 0 and never runs far past 240 min
    assert batch["Tool wear [min]"].min() == 0
    assert batch["Tool wear [min]"].max() <= 260
    shares = batch["Type"].value_counts(normalize=True)
    # product-mix shift in the reference: L/M/H near 50/30/20 %
    for letter, share in {"L": 0.5, "M": 0.3, "H": 0.2}.items():
        assert abs(shares[letter] - share) < 0.02, (letter, shares[letter])


def test_deterministic_for_same_seed(batch: pd.DataFrame) -> None:
    again = generate_ai4i(ROWS, SEED)
    # irreproducible batches: same seed, same frame
    pd.testing.assert_frame_equal(batch, again)
    # unstable content hashes (DVC, lineage): same seed, same parquet bytes
    assert batch.to_parquet(index=False) == again.to_parquet(index=False)
    other = generate_ai4i(ROWS, SEED + 1)
    # a seed that is ignored would make every "new" batch a copy
    assert not batch.equals(other)
    assert not np.array_equal(batch["Torque [Nm]"], other["Torque [Nm]"])


def test_start_udi_only_renumbers(batch: pd.DataFrame) -> None:
    later = generate_ai4i(ROWS, SEED, start_udi=50_001)
    # id collisions across batches: UDI continues from start_udi
    assert later["UDI"].iloc[0] == 50_001 and later["UDI"].is_monotonic_increasing
    # numbering must not change the data itself
    rest = [c for c in PUBLIC_HEADER if c not in ("UDI", "Product ID")]
    pd.testing.assert_frame_equal(batch[rest], later[rest])


def test_no_drift_equals_default(batch: pd.DataFrame) -> None:
    # a "no drift" object that drifts would corrupt every reference comparison
    pd.testing.assert_frame_equal(batch, generate_ai4i(ROWS, SEED, Ai4iDrift()))


def test_ambient_shift_moves_temperatures(batch: pd.DataFrame) -> None:
    hot = generate_ai4i(ROWS, SEED, Ai4iDrift(ambient_shift_k=5.0))
    for col in ["Air temperature [K]", "Process temperature [K]"]:
        # a knob that does nothing makes the drift scenario a no-op
        assert abs(hot[col].mean() - batch[col].mean() - 5.0) < 0.1, col
    # the gap drives HDF; shifting ambient alone must not change it
    assert abs(hot["HDF"].mean() - batch["HDF"].mean()) < 0.002


def test_product_mix_changes_type_shares() -> None:
    df = generate_ai4i(ROWS, SEED, parse_drift("product_mix=0.2/0.3/0.5"))
    shares = df["Type"].value_counts(normalize=True)
    # the mix knob must reach the data: H becomes the majority
    assert abs(shares["H"] - 0.5) < 0.02 and abs(shares["L"] - 0.2) < 0.02


def test_tool_wear_rate_raises_wear_and_wear_failures(batch: pd.DataFrame) -> None:
    worn = generate_ai4i(ROWS, SEED, Ai4iDrift(tool_wear_rate=2.0))
    # worn tooling must show up in the recorded wear
    assert worn["Tool wear [min]"].mean() > 1.5 * batch["Tool wear [min]"].mean()
    # ... and in the failures that depend on wear
    assert worn["TWF"].mean() > batch["TWF"].mean()
    assert worn["OSF"].mean() > 2 * batch["OSF"].mean()


def test_sensor_bias_moves_readings_not_labels(batch: pd.DataFrame) -> None:
    biased = generate_ai4i(ROWS, SEED, Ai4iDrift(torque_bias_nm=5.0, speed_bias_rpm=-50.0))
    # a bias knob that does nothing makes the scenario a no-op
    assert abs(biased["Torque [Nm]"].mean() - batch["Torque [Nm]"].mean() - 5.0) < 0.05
    assert (
        abs(biased["Rotational speed [rpm]"].mean() - batch["Rotational speed [rpm]"].mean() + 50)
        < 1
    )
    # a miscalibrated sensor does not change the machine: labels stay those of the true values
    pd.testing.assert_frame_equal(
        batch[["Machine failure", *MODES]], biased[["Machine failure", *MODES]]
    )


def test_sensor_noise_widens_readings_not_labels(batch: pd.DataFrame) -> None:
    noisy = generate_ai4i(ROWS, SEED, Ai4iDrift(sensor_noise=1.0))
    for col in ["Air temperature [K]", "Torque [Nm]", "Rotational speed [rpm]"]:
        # noise knob must widen the readings (sd about sqrt(2) times)
        assert noisy[col].std() > 1.3 * batch[col].std(), col
    # a noisy sensor does not change the machine
    assert (noisy["Machine failure"] == batch["Machine failure"]).all()
    # impossible values: noise must not produce negative torque
    assert (noisy["Torque [Nm]"] >= 0).all()
