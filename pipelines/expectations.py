"""Expectation suites: the built-in ai4i contract and suites inferred from a reference batch.

GX 1.0 dropped the profilers, so inference is written here on top of GX's expectation classes.
Every expectation carries a note naming the risk it guards; the note is shown in Data Docs and
in every reported failure. The row-count bounds are suite parameters (`min_rows`, `max_rows`)
filled in from params.yaml at run time, so the suite file never goes stale when params change.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from pipelines.sources import AI4I_COLUMNS, AI4I_SPEC, FAILURE_MODES, DatasetSpec

INT_TYPES = [
    "int64",
    "int32",
    "int16",
    "int8",
    "uint64",
    "uint32",
    "uint16",
    "uint8",
    "Int64",
    "Int32",
    "Int16",
    "Int8",
]
FLOAT_TYPES = ["float64", "float32", "Float64", "Float32"]
BOOL_TYPES = ["bool", "boolean"]
# Text columns get a dtype check only: GX checks an object column's type value by value
# (~1 s per 10^6 rows per column); their values are covered by the set checks instead.
TEXT_DTYPE = "object"

# Inference: a numeric range is the reference's min..max widened by this share of the span.
RANGE_MARGIN = 0.10
# A range may be crossed by this share of rows before it fails: fresh data holds values the
# reference never showed, and a new extreme is no reason to block a batch.
RANGE_MOSTLY = 0.99
# Columns with more distinct values than this get no value-set check (it would only list them).
MAX_SET_SIZE = 50
# A suite inferred from fewer rows than this has ranges and sets that fresh data will cross.
MIN_REFERENCE_ROWS = 50
# Duplicated rows may exceed the reference's share by this many points before a batch fails.
DUPLICATE_SLACK = 0.01
# Bounds of every finite float64: outside them there is only inf and -inf.
FINITE_MAX = float(np.finfo(np.float64).max)

RISK = {
    "schema": "schema change: a missing column breaks training and serving; an extra one is a "
    "changed export or a leaked label",
    "rows": "truncated or empty export (too few rows), or a runaway or duplicated export "
    "(too many); bounds come from params.yaml validate.min_rows/max_rows",
    "type": "type change: text in a numeric column (unit suffixes, 'n/a'), or an upstream "
    "cast that changes what the model is fed",
    "null": "broken sensor or failed join: missing values the model cannot take",
    "id_unique": "data leak: duplicated rows (a batch appended twice) put the same record in "
    "train and test",
    "category": "new product line: a category the model has never seen and cannot encode",
    "label": "label corruption: a class outside the label set (a sentinel, a new code) "
    "silently changes the task",
    "flag": "broken failure bookkeeping: the failure-mode flags explain the label and must "
    "stay 0/1",
    "target_range": "label corruption or unit change in the regression target",
    "range": "broken sensor or unit change: physically implausible values",
    "ref_range": "broken sensor or unit change: values far outside what the reference batch showed",
    "finite": "overflow or a division by zero upstream: inf and -inf break training (NaN loss) "
    "and every metric",
    "duplicates": "a batch appended twice or a join fan-out: duplicated rows weigh some records "
    "more and leak between train and test",
    "all_null": "a dropped or renamed field in the export: a column that arrives empty",
}


# Short names of the risks, for tables.
RISK_LABEL = {
    "schema": "schema change",
    "rows": "truncated or runaway export",
    "type": "type change",
    "null": "broken sensor or failed join",
    "id_unique": "data leak",
    "category": "new product line",
    "label": "label corruption",
    "flag": "broken failure flags",
    "target_range": "label corruption or unit change",
    "range": "broken sensor or unit change",
    "ref_range": "broken sensor or unit change",
    "finite": "non-finite value",
    "duplicates": "duplicated rows",
    "all_null": "empty column",
}


def _note(risk: str, detail: str = "") -> str:
    return f"Guards against {RISK[risk]}" + (f". {detail}" if detail else "")


def row_count_parameters(min_rows: int, max_rows: int) -> dict[str, int]:
    """The suite parameters every suite's row-count expectation reads."""
    return {"min_rows": int(min_rows), "max_rows": int(max_rows)}


def _table(columns: list[str]) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=columns, exact_match=True, notes=_note("schema"), meta={"risk": "schema"}
        ),
        gxe.ExpectTableRowCountToBeBetween(
            min_value={"$PARAMETER": "min_rows"},
            max_value={"$PARAMETER": "max_rows"},
            notes=_note("rows"),
            meta={"risk": "rows"},
        ),
    ]


def _typed(column: str, types: list[str] | str, *, nullable_share: float = 0.0) -> list[Any]:
    """Type and non-null checks of one column: a list of allowed dtypes, or one exact dtype."""
    import great_expectations.expectations as gxe

    out: list[Any] = [
        gxe.ExpectColumnTypeToBe(
            column=column, type_=types, notes=_note("type"), meta={"risk": "type"}
        )
        if isinstance(types, str)
        else gxe.ExpectColumnValuesToBeInTypeList(
            column=column, type_list=types, notes=_note("type"), meta={"risk": "type"}
        )
    ]
    if nullable_share <= 0:
        out.append(
            gxe.ExpectColumnValuesToNotBeNull(
                column=column, notes=_note("null"), meta={"risk": "null"}
            )
        )
    else:
        # The reference already had nulls: allow twice its share (plus 1 point) before failing.
        mostly = max(0.0, round(1.0 - 2 * nullable_share - 0.01, 4))
        out.append(
            gxe.ExpectColumnValuesToNotBeNull(
                column=column,
                mostly=mostly,
                meta={"risk": "null"},
                notes=_note("null", f"The reference batch had {nullable_share:.1%} nulls here."),
            )
        )
    return out


def _between(column: str, lo: float, hi: float, risk: str, detail: str, mostly: float = 1.0) -> Any:
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToBeBetween(
        column=column,
        min_value=lo,
        max_value=hi,
        mostly=mostly,
        notes=_note(risk, detail),
        meta={"risk": risk},
    )


def _in_set(column: str, values: list[Any], risk: str, detail: str = "") -> Any:
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToBeInSet(
        column=column, value_set=values, notes=_note(risk, detail), meta={"risk": risk}
    )


def ai4i_expectations() -> list[Any]:
    """The AI4I 2020 contract: ranges from the physics of the milling process, not from data."""
    import great_expectations.expectations as gxe

    ints = ("UDI", "Rotational speed [rpm]", "Tool wear [min]", AI4I_SPEC.target, *FAILURE_MODES)
    out = _table(list(AI4I_COLUMNS))
    for col in AI4I_COLUMNS:
        if col in ("Product ID", "Type"):
            types: list[str] | str = TEXT_DTYPE
        elif col in ints:
            types = INT_TYPES
        else:  # a whole-number temperature or torque written without decimals is still valid
            types = FLOAT_TYPES + INT_TYPES
        out += _typed(col, types)
    out += [
        gxe.ExpectColumnValuesToBeUnique(
            column="UDI", notes=_note("id_unique"), meta={"risk": "id_unique"}
        ),
        _in_set("Type", ["L", "M", "H"], "category", "Product quality variants: L, M, H."),
        _between(
            "Air temperature [K]",
            285,
            320,
            "range",
            "Ambient air in a plant is 12-47 C; Celsius readings (~27) mean a unit change.",
        ),
        _between("Process temperature [K]", 290, 335, "range", "Process runs about air + 5..15 K."),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="Process temperature [K]",
            column_B="Air temperature [K]",
            mostly=0.99,
            meta={"risk": "range"},
            notes=_note(
                "range",
                "The process heats above ambient: swapped or mislabelled "
                "temperature columns. 1% of rows may cross from sensor noise.",
            ),
        ),
        _between(
            "Rotational speed [rpm]",
            800,
            3000,
            "range",
            "Spindle speed; peak torque pulls it just under 1000 rpm, 0 is a dead "
            "encoder, rad/s values (~160) are a unit change.",
        ),
        _between(
            "Torque [Nm]",
            0,
            100,
            "range",
            "Torque cannot be negative; over 100 Nm is beyond the drive.",
        ),
        _between(
            "Tool wear [min]", 0, 300, "range", "Tools are replaced at 200-240 min of nominal wear."
        ),
        _in_set(AI4I_SPEC.target, [0, 1], "label", "Machine failure is binary."),
    ]
    out += [_in_set(flag, [0, 1], "flag", "Failure-mode flag.") for flag in FAILURE_MODES]
    return out


def _types_of(s: pd.Series) -> list[str] | str:
    if pd.api.types.is_bool_dtype(s):
        return BOOL_TYPES
    if pd.api.types.is_integer_dtype(s):
        return INT_TYPES
    if pd.api.types.is_float_dtype(s):
        # Integers are fine where floats were seen (a CSV may drop the decimals).
        return FLOAT_TYPES + INT_TYPES
    return str(s.dtype)  # text, dates, categoricals: exactly the reference's dtype


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _widened(s: pd.Series) -> tuple[float, float]:
    lo, hi = float(s.min()), float(s.max())
    pad = (hi - lo) * RANGE_MARGIN or abs(hi) * RANGE_MARGIN or 1.0
    lo, hi = lo - pad, hi + pad
    if float(s.min()) >= 0 > lo:  # a non-negative quantity stays non-negative
        lo = 0.0
    if pd.api.types.is_integer_dtype(s):
        return float(math.floor(lo)), float(math.ceil(hi))
    return lo, hi


def reference_warning(rows: int) -> str | None:
    """What to tell a user whose suite was inferred from very few rows."""
    if rows >= MIN_REFERENCE_ROWS:
        return None
    return (
        f"the suite was inferred from only {rows} row(s) (under {MIN_REFERENCE_ROWS}): its "
        "ranges and value sets are narrow, so good batches may fail; review and widen it"
    )


def _duplicates(df: pd.DataFrame) -> Any:
    """Exact duplicate rows may not exceed the reference's share (plus DUPLICATE_SLACK)."""
    import great_expectations.expectations as gxe

    # GX counts every copy of a duplicated row (pandas duplicated(keep=False)): so does this.
    share = float(df.duplicated(keep=False).mean())
    mostly = round(max(0.0, 1.0 - 2 * share - DUPLICATE_SLACK), 4)
    return gxe.ExpectCompoundColumnsToBeUnique(
        column_list=[str(c) for c in df.columns],
        mostly=mostly,
        ignore_row_if="never",
        meta={"risk": "duplicates"},
        notes=_note(
            "duplicates",
            f"The reference batch had {share:.1%} duplicated rows; a batch fails past "
            f"{1 - mostly:.1%}.",
        ),
    )


def _finite(column: str) -> Any:
    return _between(
        column, -FINITE_MAX, FINITE_MAX, "finite", "Every value must be a finite number."
    )


def _not_all_null(column: str) -> Any:
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(
        column=column,
        min_value=0,
        strict_min=True,
        meta={"risk": "all_null"},
        notes=_note("all_null", "The reference batch had values here."),
    )


def infer_expectations(df: pd.DataFrame, spec: DatasetSpec) -> list[Any]:
    """Expectations inferred from a reference batch `df` of the data set described by `spec`."""
    import great_expectations.expectations as gxe

    out = _table([str(c) for c in df.columns])
    if not spec.id_columns:  # with ids, their uniqueness is the duplicate check
        out.append(_duplicates(df))
    for col in df.columns:
        s = df[col]
        name = str(col)
        out += _typed(name, _types_of(s), nullable_share=float(s.isna().mean()))
        values = s.dropna()
        if values.empty:
            continue
        out.append(_not_all_null(name))
        numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        if numeric:
            out.append(_finite(name))
            # Ranges come from finite values: an inf in the reference must not make them infinite.
            values = values[np.isfinite(values.to_numpy(dtype=np.float64))]
            if values.empty:
                continue
        if name in spec.id_columns:
            if values.is_unique:
                out.append(
                    gxe.ExpectColumnValuesToBeUnique(
                        column=name, notes=_note("id_unique"), meta={"risk": "id_unique"}
                    )
                )
            continue
        if name == spec.target and spec.task == "classification":
            labels = sorted(_plain(v) for v in values.unique())
            out.append(_in_set(name, labels, "label", f"Labels seen in the reference: {labels}."))
        elif name == spec.target:
            lo, hi = _widened(values)
            out.append(
                _between(
                    name,
                    lo,
                    hi,
                    "target_range",
                    f"Reference range widened by {RANGE_MARGIN:.0%} of its span.",
                )
            )
        elif name in spec.categorical or not numeric:
            distinct = values.unique()
            if len(distinct) <= MAX_SET_SIZE:
                cats = sorted((_plain(v) for v in distinct), key=str)
                out.append(_in_set(name, cats, "category"))
        else:
            lo, hi = _widened(values)
            out.append(
                _between(
                    name,
                    lo,
                    hi,
                    "ref_range",
                    f"Reference range widened by {RANGE_MARGIN:.0%} of its span; up to "
                    f"{1 - RANGE_MOSTLY:.0%} of rows may fall outside.",
                    mostly=RANGE_MOSTLY,
                )
            )
    return out


def build_suite(name: str, expectations: list[Any]) -> Any:
    """A GX ExpectationSuite named after the data set (saved as gx/expectations/<name>.json)."""
    import great_expectations as gx

    # Built in one go: add_expectation compares each new expectation with all the others.
    return gx.ExpectationSuite(name=name, expectations=expectations)
