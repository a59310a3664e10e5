"""monitoring/drift.py on generated ai4i data: Evidently's per-column verdicts, read back."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mlops.errors import MlopsError
from monitoring.drift import compare, save
from pipelines.sources import AI4I_SPEC, Ai4iDrift, generate_ai4i

NUMERIC = [c for c in AI4I_SPEC.features if c not in AI4I_SPEC.categorical]
TEMPERATURES = {"Air temperature [K]", "Process temperature [K]"}


@pytest.fixture(scope="module")
def stream() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A reference and a later window from one machine's stream (a random split of one batch).

    Two batches with different seeds are not "undrifted" to each other: the generator's ambient
    temperature is a random walk, and two walks differ by more than Evidently's Wasserstein
    threshold (0.12 to 0.21 against 0.1, measured): monitoring will have to face that."""
    batch = generate_ai4i(6000, 11).sample(frac=1.0, random_state=0)
    return batch.iloc[:4000].reset_index(drop=True), batch.iloc[4000:].reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(stream: tuple[pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    return stream[0]


def test_undrifted_traffic_flags_no_column(stream: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    reference, current = stream
    result, _ = compare(reference, current, numerical=NUMERIC, categorical=["Type"])
    assert result.drifted == [] and result.drift_share == 0.0
    assert [c.column for c in result.columns] == [*NUMERIC, "Type"]
    assert result.reference_rows == 4000 and result.current_rows == 2000


def test_an_ambient_shift_flags_the_temperatures_and_only_them(
    stream: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    reference, current = stream
    warm = current.assign(**{c: current[c] + 3.0 for c in TEMPERATURES})  # 3 K warmer
    result, _ = compare(reference, warm, numerical=NUMERIC, categorical=["Type"])
    assert set(result.drifted) == TEMPERATURES
    assert result.drift_share == pytest.approx(2 / 6)
    by = {c.column: c for c in result.columns}
    assert by["Type"].kind == "categorical" and by["Torque [Nm]"].kind == "numerical"
    assert all(c.method and c.threshold > 0 for c in result.columns)


def test_a_product_mix_change_flags_the_category(reference) -> None:  # type: ignore[no-untyped-def]
    mix = generate_ai4i(2000, 14, Ai4iDrift(product_mix=(0.2, 0.3, 0.5)))
    result, _ = compare(reference, mix, numerical=NUMERIC, categorical=["Type"])
    assert "Type" in result.drifted


def test_the_report_is_saved_as_html_and_json(reference, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    warm = generate_ai4i(500, 15, Ai4iDrift(ambient_shift_k=6.0))
    result, snapshot = compare(reference, warm, numerical=NUMERIC, categorical=["Type"])
    html, js = save(snapshot, tmp_path / "reports", "ai4i-window-1")
    assert html.read_text().lstrip().lower().startswith("<!doctype html")
    assert "Air temperature [K]" in json.dumps(json.loads(js.read_text()))
    assert not list((tmp_path / "reports").glob(".*"))  # no temporary file left
    assert result.to_dict()["drifted"] == result.drifted
    with pytest.raises(MlopsError, match="report name"):
        save(snapshot, tmp_path, "../escape")


def test_a_missing_column_is_named(reference) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MlopsError, match=r"current data has no column\(s\) \['Torque \[Nm\]'\]"):
        compare(reference, generate_ai4i(100, 16).drop(columns=["Torque [Nm]"]),
                numerical=NUMERIC)  # fmt: skip
