"""User sources, dataset specs and drift parsing: bad input is one clear MlopsError."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlops.errors import MlopsError
from pipelines.sources import (
    AI4I_SPEC,
    Ai4iDrift,
    DatasetSpec,
    check_dataset_name,
    generate_ai4i,
    infer_spec,
    load_table,
    parse_decimal,
    parse_drift,
    parse_sep,
    read_table,
    sniff_separator,
)

# --- read_table -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param(b"", "file is empty", id="zero-bytes"),
        pytest.param(b"\n\n  \n", r"file is empty \(blank lines only\)", id="blank-lines"),
        pytest.param(b"a,b,c\n", "no rows", id="header-only"),
        pytest.param(b"a,b,c\n1,2,3\n4,5\n", r"last row \(line 3\) has 2 of 3", id="short-row"),
        pytest.param(b"a,b,c\n1,2\n4,5,6\n", "line 2 has 2 field", id="short-inner-row"),
        pytest.param(b"a,b\n1,2\n3,4,5\n", "line 3 has 3 field", id="long-row"),
        pytest.param(b"a,b\n1,2,3\n4,5,6\n", "line 2 has 3 field", id="body-wider-than-header"),
        pytest.param(b'a,b\n"1,2\n3,4\n', r"\(line 2\) has 1 of 2", id="unclosed-quote"),
        pytest.param(b"a,a\n1,2\n", r"duplicate column name\(s\) a", id="duplicate-header"),
        pytest.param(b"a,b\n\xff\xfe\xfa,1\n", "not UTF-8 text", id="latin1"),
        pytest.param(b"\xff\xfea\x00,\x00b\x00\n\x00", "UTF-16", id="utf16"),
        pytest.param(bytes(range(256)) * 8, "binary content", id="binary-junk"),
        pytest.param(b"PAR1\x00\x00junk", "looks like a parquet file", id="parquet-as-csv"),
    ],
)
def test_read_table_bad_csv(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with pytest.raises(MlopsError, match=match) as info:
        read_table(path, "csv")
    # the user must see which file is wrong, on one line
    assert f"csv source {path}" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param(b"", "file is empty", id="zero-bytes"),
        pytest.param(b"a,b\n1,2\n", "not a readable parquet file", id="csv-as-parquet"),
        pytest.param(b"PAR1garbagePAR1", "not a readable parquet file", id="truncated"),
    ],
)
def test_read_table_bad_parquet(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(content)
    with pytest.raises(MlopsError, match=match) as info:
        read_table(path, "parquet")
    assert f"parquet source {path}" in str(info.value)
    assert "\n" not in str(info.value)


def test_read_table_empty_parquet(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    pd.DataFrame({"a": pd.Series([], dtype="int64")}).to_parquet(path)
    with pytest.raises(MlopsError, match="no rows"):
        read_table(path, "parquet")


def test_read_table_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(MlopsError, match=r"nope\.csv: file not found"):
        read_table(tmp_path / "nope.csv", "csv")
    with pytest.raises(MlopsError, match="is a directory"):
        read_table(tmp_path, "parquet")


def test_read_table_bad_kind(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a\n1\n")
    with pytest.raises(MlopsError, match="kind must be 'csv' or 'parquet'"):
        read_table(path, "xlsx")  # type: ignore[arg-type]


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [1, 2, 3],
            "color": ["red", "blue", "red"],
            "size": [1.5, 2.25, 3.0],
            "label": [0, 1, 0],
        }
    )


def test_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "good.csv"
    _frame().to_csv(path, index=False)
    pd.testing.assert_frame_equal(read_table(path, "csv"), _frame())


def test_csv_with_bom_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfa,b\n1,x\n\n2,y\n")
    df = read_table(path, "csv")
    assert list(df.columns) == ["a", "b"]
    assert df["a"].tolist() == [1, 2]


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "good.parquet"
    _frame().to_parquet(path, index=False)
    pd.testing.assert_frame_equal(read_table(path, "parquet"), _frame())


# --- infer_spec -------------------------------------------------------------------------------

WHERE = "csv source data/x.csv"


@pytest.mark.parametrize(
    ("df", "target", "task", "match"),
    [
        pytest.param(
            pd.DataFrame({"a": [1, 2], "b": [3, 4]}),
            "label",
            None,
            r"csv source data/x\.csv: no column 'label' \(columns: a, b\)",
            id="missing-target",
        ),
        pytest.param(
            pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1, 1, 1]}),
            "y",
            None,
            r"target 'y' in csv source data/x\.csv has a single class \(1\): nothing to learn",
            id="single-class",
        ),
        pytest.param(
            pd.DataFrame({"x": [1.0, 2.0], "y": ["a", "a"]}),
            "y",
            "classification",
            r"has a single class \(a\)",
            id="single-class-given-task",
        ),
        pytest.param(
            pd.DataFrame({"x": [1.0, 2.0], "y": [float("nan")] * 2}),
            "y",
            None,
            r"target 'y' .* has no values \(all null\)",
            id="all-null-target",
        ),
        pytest.param(
            pd.DataFrame({"x": [1.0, 2.0], "y": [0, 1]}),
            "y",
            "clustering",
            "task must be 'classification' or 'regression', got 'clustering'",
            id="bad-task",
        ),
        pytest.param(
            pd.DataFrame({"x": [1.0, 2.0], "y": ["a", "b"]}),
            "y",
            "regression",
            "is not numeric",
            id="regression-on-strings",
        ),
        pytest.param(
            pd.DataFrame({"customer_id": [1, 2, 3], "y": [0, 1, 0]}),
            "y",
            None,
            r"no feature columns besides target 'y' and id-like columns \(customer_id\)",
            id="only-ids",
        ),
        pytest.param(
            pd.DataFrame({"y": [0, 1, 0]}),
            "y",
            None,
            "no feature columns besides target 'y'",
            id="only-target",
        ),
    ],
)
def test_infer_spec_bad(df: pd.DataFrame, target: str, task: str | None, match: str) -> None:
    with pytest.raises(MlopsError, match=match):
        infer_spec(df, "x", target, task, WHERE)


@pytest.mark.parametrize(
    ("y", "task", "why"),
    [
        pytest.param([0, 1, 2, 1], "classification", "has 3 distinct integer values", id="ints"),
        pytest.param(["no", "yes", "no", "no"], "classification", "is non-numeric", id="strings"),
        pytest.param([True, False, True, True], "classification", "is non-numeric", id="bools"),
        pytest.param([1.0, 0.0, 1.0, 1.0], "classification", "2 distinct integer", id="floats01"),
        pytest.param([0.5, 1.25, 3.0, 2.0], "regression", "numeric with 4 distinct", id="reals"),
    ],
)
def test_infer_task(y: list[object], task: str, why: str) -> None:
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": y})
    spec, message = infer_spec(df, "x", "y", None, WHERE)
    assert spec.task == task
    assert message is not None
    assert message.startswith(f"task inferred as {task}: target 'y' ")
    assert why in message


def test_infer_task_many_integers_is_regression() -> None:
    df = pd.DataFrame({"x": range(50), "y": range(50)})
    spec, message = infer_spec(df, "x", "y", None, WHERE)
    assert spec.task == "regression"
    assert message is not None and "50 distinct values" in message


def test_infer_spec_given_task_has_no_message() -> None:
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1, 2, 3]})
    spec, message = infer_spec(df, "x", "y", "regression", WHERE)
    assert spec.task == "regression"
    assert message is None


def test_infer_spec_ids_features_and_categoricals() -> None:
    df = pd.DataFrame(
        {
            "ID": [1, 2, 3, 4],
            "order_id": [10, 11, 12, 13],
            "Product ID": ["p", "q", "p", "q"],
            "email": ["a@x", "b@x", "c@x", "d@x"],
            "city": ["A", "B", "A", "A"],
            "flag": [True, False, True, False],
            "grade": pd.Categorical(["lo", "hi", "lo", "hi"]),
            "temp": [1.0, 2.0, 3.0, 4.0],
            "y": [0, 1, 0, 1],
        }
    )
    spec, _ = infer_spec(df, "shop", "y", None, WHERE)
    # ids by name (id, *_id, "* id") and by being unique free text
    assert spec.id_columns == ("ID", "order_id", "Product ID", "email")
    assert spec.features == ("city", "flag", "grade", "temp")
    assert spec.categorical == ("city", "flag", "grade")
    assert spec.target == "y" and spec.name == "shop" and spec.excluded == ()


# --- DatasetSpec ------------------------------------------------------------------------------


def test_spec_round_trip() -> None:
    d = AI4I_SPEC.to_dict()
    assert isinstance(d["features"], list)
    assert DatasetSpec.from_dict(d) == AI4I_SPEC


@pytest.mark.parametrize(
    ("change", "match"),
    [
        pytest.param({"target": None}, "missing key 'target'", id="missing-key"),
        pytest.param({"task": "ranking"}, "task must be one of", id="bad-task"),
        pytest.param({"features": "Type"}, "'features' must be a list", id="string-features"),
        pytest.param({"features": ["Type", "TWF"]}, "'TWF' cannot be features", id="leak"),
        pytest.param({"categorical": ["UDI"]}, "categorical 'UDI' not among", id="stray-cat"),
    ],
)
def test_spec_from_dict_bad(change: dict[str, object], match: str) -> None:
    d = AI4I_SPEC.to_dict()
    for k, v in change.items():
        if v is None:
            del d[k]
        else:
            d[k] = v
    with pytest.raises(MlopsError, match=match):
        DatasetSpec.from_dict(d)


def test_spec_check_names_missing_columns() -> None:
    df = generate_ai4i(5, 0).drop(columns=["Torque [Nm]", "UDI"])
    with pytest.raises(MlopsError, match=r"batch 7: missing column\(s\) 'Torque \[Nm\]', 'UDI'"):
        AI4I_SPEC.check(df, "batch 7")
    no_label = generate_ai4i(5, 0).drop(columns=["Machine failure"])
    with pytest.raises(MlopsError, match="'Machine failure'"):
        AI4I_SPEC.check(no_label, "serving request")
    AI4I_SPEC.check(no_label, "serving request", need_target=False)


# --- drift and generator arguments ------------------------------------------------------------


def test_parse_drift_good() -> None:
    drift = parse_drift("ambient_shift_k=5, tool_wear_rate=2,product_mix=0.2/0.3/0.5")
    assert drift == Ai4iDrift(ambient_shift_k=5.0, tool_wear_rate=2.0, product_mix=(0.2, 0.3, 0.5))
    assert parse_drift("") == Ai4iDrift()
    assert parse_drift("none") == Ai4iDrift()
    assert drift.to_dict()["product_mix"] == [0.2, 0.3, 0.5]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        pytest.param("ambient=5", r"unknown key 'ambient' \(known: ambient_shift_k,", id="key"),
        pytest.param("ambient_shift_k=hot", r"ambient_shift_k='hot' is not a number", id="num"),
        pytest.param("sensor_noise=nan", "sensor_noise='nan' is not a finite number", id="nan"),
        pytest.param("tool_wear_rate", "expected key=value, got 'tool_wear_rate'", id="no-eq"),
        pytest.param("tool_wear_rate=1,tool_wear_rate=2", "given twice", id="dup"),
        pytest.param("product_mix=0.5/0.5/0.5", "must sum to 1, got 1.5", id="mix-sum"),
        pytest.param("product_mix=0.5/0.5", "expected 3 probabilities", id="mix-len"),
        pytest.param("product_mix=0.5/x/0.5", r"product_mix='0.5/x/0.5' is not a number", id="mix"),
        pytest.param("sensor_noise=-1", "sensor_noise: must be >= 0", id="noise"),
        pytest.param("tool_wear_rate=0", "tool_wear_rate: must be > 0", id="rate"),
    ],
)
def test_parse_drift_bad(spec: str, match: str) -> None:
    with pytest.raises(MlopsError, match=match):
        parse_drift(spec)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"rows": 0, "seed": 1}, "rows must be an integer >= 1, got 0", id="zero"),
        pytest.param({"rows": -5, "seed": 1}, "rows must be an integer >= 1", id="negative"),
        pytest.param({"rows": 10, "seed": -1}, "seed must be an integer >= 0", id="seed"),
        pytest.param({"rows": 2.5, "seed": 1}, "rows must be an integer", id="float-rows"),
        pytest.param({"rows": 10, "seed": 1, "start_udi": 0}, "start_udi", id="udi"),
    ],
)
def test_generate_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(MlopsError, match=match):
        generate_ai4i(**kwargs)  # type: ignore[arg-type]


def test_generate_tiny_batches() -> None:
    # a one-row batch (e.g. a serving smoke test) must not divide by a zero sd
    assert len(generate_ai4i(1, 3)) == 1
    assert generate_ai4i(3, 3)["UDI"].tolist() == [1, 2, 3]


# --- separators, BOMs, decimal commas, truncation (bring your own data) ------------------------


@pytest.mark.parametrize(
    ("text", "sep"),
    [
        pytest.param("a,b,c\n1,2,3\n4,5,6\n", ",", id="comma"),
        pytest.param("a;b;c\n1,5;2;3\n4;5,25;6\n", ";", id="semicolon-with-decimal-commas"),
        pytest.param("a\tb\tc\n1\t2\t3\n", "\t", id="tab"),
        pytest.param("a|b\n1|2\n", "|", id="pipe"),
        pytest.param('name;note\n"x";"a, b, c"\n"y";"d, e"\n', ";", id="quoted-commas"),
        pytest.param("a,b\n1,2\n3,4\n5,", ",", id="sample-ends-mid-row"),
        pytest.param("only\n1\n2\n", ",", id="one-column"),
    ],
)
def test_sniff_separator(text: str, sep: str) -> None:
    assert sniff_separator(text) == sep


def test_semicolon_export_reads_like_the_comma_one(tmp_path: Path) -> None:
    comma, semi = tmp_path / "a.csv", tmp_path / "b.csv"
    _frame().to_csv(comma, index=False)
    _frame().to_csv(semi, index=False, sep=";")
    table = load_table(semi, "csv")
    assert table.sep == ";" and table.notes() == ["delimiter: semicolon (';')"]
    pd.testing.assert_frame_equal(table.frame, read_table(comma, "csv"))
    assert load_table(comma, "csv").notes() == []  # a plain CSV says nothing


def test_bom_is_sniffed_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffid;size\n1;2\n".encode())
    table = load_table(path, "csv")
    assert list(table.frame.columns) == ["id", "size"]  # no BOM glued to the first name
    assert table.bom and "byte-order mark" in " ".join(table.notes())


def test_decimal_comma_is_an_error_naming_the_column_unless_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "de.csv"
    path.write_text("Temperatur [°C];Menge\n21,5;3\n-0,25;4\n19;5\n")
    with pytest.raises(MlopsError, match=r"column 'Temperatur \[°C\]'.*decimal comma.*--decimal ,"):
        read_table(path, "csv")
    table = load_table(path, "csv", decimal=",")
    assert table.frame["Temperatur [°C]"].tolist() == [21.5, -0.25, 19.0]
    assert "decimal mark: ','" in table.notes()


def test_decimal_comma_with_comma_separator_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(MlopsError, match="decimal comma needs another separator"):
        read_table(path, "csv", sep=",", decimal=",")


def test_sep_override_wins_over_sniffing(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a;b,c\n1;2,3\n")
    assert list(read_table(path, "csv", sep=",").columns) == ["a;b", "c"]
    assert list(read_table(path, "csv").columns) == ["a;b", "c"]  # comma wins the tie


def test_truncated_last_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv"
    path.write_text("a,b,c\n1,2,3\n4,5,6\n7,8")
    with pytest.raises(MlopsError, match=r"the last row \(line 4\) has 2 of 3 fields.*truncated"):
        read_table(path, "csv")


@pytest.mark.parametrize(
    ("given", "expected"),
    [("tab", "\t"), ("\\t", "\t"), ("semicolon", ";"), (";", ";"), ("COMMA", ","), (None, None)],
)
def test_parse_sep(given: str | None, expected: str | None) -> None:
    assert parse_sep(given) == expected


def test_parse_sep_and_decimal_refuse_the_unknown() -> None:
    with pytest.raises(MlopsError, match="--sep ':'"):
        parse_sep(":")
    with pytest.raises(MlopsError, match="--decimal 'x'"):
        parse_decimal("x")


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "a\\b", "..", ".hidden", "", "x" * 129, "a..b", "na me"]
)
def test_dataset_names_that_would_escape_or_break_paths_are_refused(name: str) -> None:
    with pytest.raises(MlopsError, match="invalid data set name"):
        check_dataset_name(name)


@pytest.mark.parametrize("name", ["plant", "Plant_7", "sales-2024.v2", "2024"])
def test_good_dataset_names(name: str) -> None:
    assert check_dataset_name(name) == name


# --- the positive class -----------------------------------------------------------------------


def _labels(values: list[object]) -> pd.DataFrame:
    return pd.DataFrame({"x": range(len(values)), "y": values})


def test_positive_class_defaults_to_the_minority_class() -> None:
    spec, _ = infer_spec(_labels([0, 0, 0, 1]), "d", "y", None, WHERE)
    assert spec.positive_class == 1
    spec, _ = infer_spec(_labels(["ok", "churn", "churn", "churn"]), "d", "y", None, WHERE)
    assert spec.positive_class == "ok"  # minority, even where it is not "1"


def test_positive_class_given_matches_labels_as_text() -> None:
    spec, _ = infer_spec(_labels([0, 0, 0, 1]), "d", "y", None, WHERE, positive_class="0")
    assert spec.positive_class == 0 and isinstance(spec.positive_class, int)


@pytest.mark.parametrize(
    ("values", "task", "given", "match"),
    [
        ([0, 0, 1], None, "2", r"--positive-class '2' is not a label of 'y' \(labels: 0, 1\)"),
        ([0, 1, 2, 1], None, "1", "applies to a binary target; 'y' has 3 classes"),
        ([0.5, 1.5, 2.5, 3.5], "regression", "1", "applies to classification only"),
    ],
)
def test_bad_positive_class(values: list[object], task: str | None, given: str, match: str) -> None:
    with pytest.raises(MlopsError, match=match):
        infer_spec(_labels(values), "d", "y", task, WHERE, positive_class=given)


def test_multiclass_has_no_positive_class_and_old_specs_still_load() -> None:
    spec, _ = infer_spec(_labels([0, 1, 2, 1]), "d", "y", None, WHERE)
    assert spec.positive_class is None
    old = {k: v for k, v in AI4I_SPEC.to_dict().items() if k != "positive_class"}
    assert DatasetSpec.from_dict(old).positive_class is None
    assert DatasetSpec.from_dict(AI4I_SPEC.to_dict()).positive_class == 1


def test_a_missing_target_suggests_the_column_meant_however_wide_the_table() -> None:
    from pipelines.sources import did_you_mean

    wide = [f"sensor_{i}" for i in range(40)] + ["Target Label", "machine id"]
    # past the 20 names the message lists: the suggestion still finds it
    assert did_you_mean("target label", wide) == "; did you mean 'Target Label'?"
    assert did_you_mean("machine_id", wide) == "; did you mean 'machine id'?"
    assert did_you_mean("price", wide) == ""
