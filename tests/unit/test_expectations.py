"""Suite building and inference, without a GX context; and the report's one-line summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines import expectations as ex
from pipelines.sources import AI4I_COLUMNS, DatasetSpec
from pipelines.validate import ValidationReport

SPEC = DatasetSpec(
    name="tiny",
    task="classification",
    target="label",
    features=("temp", "grade", "count", "gappy"),
    categorical=("grade",),
    id_columns=("row_id",),
    excluded=(),
)


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row_id": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            "temp": [10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 22.0, 24.0, 26.0, 30.0],
            "grade": ["a", "b", "a", "c", "b", "a", "a", "b", "c", "a"],
            "count": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            "gappy": [1.0, np.nan, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
            "label": [0, 1, 0, 0, 1, 0, 0, 1, 0, 1],
        }
    )


def _by(exps: list[Any], rule: str, column: str | None = None, risk: str | None = None) -> Any:
    found = [
        e
        for e in exps
        if e.expectation_type == rule
        and getattr(e, "column", None) == column
        and (risk is None or e.meta["risk"] == risk)
    ]
    assert len(found) == 1, (rule, column, found)
    return found[0]


def test_inferred_range_is_widened_by_a_tenth_of_the_span() -> None:
    exps = ex.infer_expectations(_frame(), SPEC)

    temp = _by(exps, "expect_column_values_to_be_between", "temp", "ref_range")
    assert (temp.min_value, temp.max_value) == pytest.approx((8.0, 32.0))  # 10..30, span 20
    assert temp.mostly == ex.RANGE_MOSTLY
    count = _by(exps, "expect_column_values_to_be_between", "count", "ref_range")
    assert (count.min_value, count.max_value) == (0.0, 10.0)  # non-negative stays non-negative


def test_inferred_sets_ids_labels_and_nulls() -> None:
    exps = ex.infer_expectations(_frame(), SPEC)

    assert _by(exps, "expect_column_values_to_be_in_set", "label").value_set == [0, 1]
    assert _by(exps, "expect_column_values_to_be_in_set", "grade").value_set == ["a", "b", "c"]
    _by(exps, "expect_column_values_to_be_unique", "row_id")
    assert _by(exps, "expect_column_values_to_not_be_null", "gappy").mostly == pytest.approx(0.79)
    assert _by(exps, "expect_column_values_to_not_be_null", "temp").mostly == 1
    cols = _by(exps, "expect_table_columns_to_match_set")
    assert set(cols.column_set) == set(_frame().columns) and cols.exact_match
    rows = _by(exps, "expect_table_row_count_to_be_between")
    assert rows.min_value == {"$PARAMETER": "min_rows"}  # from params.yaml at run time


def test_regression_target_gets_a_range_and_wide_text_gets_no_set() -> None:
    spec = DatasetSpec("tiny", "regression", "label", SPEC.features, ("grade",), ("row_id",), ())
    df = pd.concat([_frame()] * 6, ignore_index=True).assign(
        label=np.linspace(0.0, 1.0, 60), grade=[f"g{i}" for i in range(60)], row_id=range(60)
    )

    exps = ex.infer_expectations(df, spec)

    label = _by(exps, "expect_column_values_to_be_between", "label", "target_range")
    assert (label.min_value, label.max_value) == pytest.approx((0.0, 1.1))
    in_set = "expect_column_values_to_be_in_set"
    assert not [e for e in exps if e.expectation_type == in_set and e.column == "grade"]


def test_every_expectation_names_its_risk() -> None:
    for exps in (ex.ai4i_expectations(), ex.infer_expectations(_frame(), SPEC)):
        for e in exps:
            assert e.notes and e.notes.startswith("Guards against "), e
            assert e.meta["risk"] in ex.RISK_LABEL


def test_ai4i_suite_covers_every_column() -> None:
    exps = ex.ai4i_expectations()

    for col in AI4I_COLUMNS:
        _by(exps, "expect_column_values_to_not_be_null", col)
    air = _by(exps, "expect_column_values_to_be_between", "Air temperature [K]")
    assert (air.min_value, air.max_value) == (285, 320)
    assert _by(exps, "expect_column_values_to_be_in_set", "Type").value_set == ["L", "M", "H"]
    _by(exps, "expect_column_values_to_be_unique", "UDI")
    suite = ex.build_suite("ai4i", exps)
    assert suite.name == "ai4i" and len(suite.expectations) == len(exps)


def _report(**kw: Any) -> ValidationReport:
    base: dict[str, Any] = dict(
        batch_id="ai4i-abc", dataset="ai4i", suite="ai4i", policy="block", outcome="failed",
        success=False, evaluated=44, docs_path=Path("/ws/gx/uncommitted/x.html"),
    )  # fmt: skip
    return ValidationReport(**{**base, **kw})


def test_summary_names_first_failures_and_docs() -> None:
    failures = [{"column": f"c{i}", "rule": "expect_column_values_to_be_between"} for i in range(5)]

    text = _report(failures=failures).summary()

    assert "c0: expect_column_values_to_be_between; c1:" in text and "(+2 more)" in text
    assert "policy block: failed" in text and text.endswith("data docs: /ws/gx/uncommitted/x.html")
    assert "\n" not in text


def test_summary_of_a_pass() -> None:
    text = _report(outcome="passed", success=True).summary()

    assert "passed" in text and "all 44 expectations met" in text


# -- what inferred suites catch beyond ranges (bring your own data) --------------------------


def test_every_numeric_column_must_be_finite_and_an_inf_reference_keeps_finite_ranges() -> None:
    df = _frame().assign(temp=[10.0, 12.0, np.inf, 16.0, 18.0, 20.0, 22.0, 24.0, 26.0, 30.0])
    exps = ex.infer_expectations(df, SPEC)
    for col in ("temp", "count", "gappy", "label", "row_id"):
        finite = _by(exps, "expect_column_values_to_be_between", col, "finite")
        assert (finite.min_value, finite.max_value) == (-ex.FINITE_MAX, ex.FINITE_MAX)
        assert finite.mostly == 1.0
    temp = _by(exps, "expect_column_values_to_be_between", "temp", "ref_range")
    assert (temp.min_value, temp.max_value) == pytest.approx((8.0, 32.0))  # inf left out
    assert not [e for e in exps if e.meta["risk"] == "finite" and e.column == "grade"]


def test_duplicate_rows_are_checked_only_without_an_id_column() -> None:
    assert not [e for e in ex.infer_expectations(_frame(), SPEC) if e.meta["risk"] == "duplicates"]
    no_ids = DatasetSpec("t", "classification", "label", SPEC.features, ("grade",), (), ())
    df = _frame().drop(columns="row_id")
    dup = _by(ex.infer_expectations(df, no_ids), "expect_compound_columns_to_be_unique")
    assert dup.column_list == list(df.columns) and dup.mostly == 0.99  # no duplicates seen
    repeated = pd.concat([df, df.iloc[:2]], ignore_index=True)  # 4 of 12 rows are copies
    dup = _by(ex.infer_expectations(repeated, no_ids), "expect_compound_columns_to_be_unique")
    assert dup.mostly == pytest.approx(1 - 2 * 4 / 12 - 0.01, abs=1e-4)


def test_columns_with_values_in_the_reference_must_not_arrive_empty() -> None:
    exps = ex.infer_expectations(_frame(), SPEC)
    rule = "expect_column_proportion_of_non_null_values_to_be_between"
    for col in _frame().columns:
        e = _by(exps, rule, col)
        assert (e.min_value, e.strict_min) == (0, True)


def test_a_tiny_reference_is_warned_about() -> None:
    assert ex.reference_warning(ex.MIN_REFERENCE_ROWS) is None
    text = ex.reference_warning(12)
    assert text is not None and "only 12 row(s)" in text
