"""Serving's parts without a server: the generated request type, the fast encoder (same matrix
as training's transform), canary hashing, the batcher and the prediction log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from mlops.params import PrepareParams
from mlops.predictions import Answered, PredictionLog, inputs_of, log_files, read_log
from pipelines.artifact import InputError, model_schema
from pipelines.prepare import prepare
from pipelines.sources import AI4I_SPEC, generate_ai4i
from serving.host import canary_side
from serving.schema import input_schema, smoke_records

SCHEMA = {
    "input": [
        {"name": "Air temperature [K]", "dtype": "number", "nullable": False, "range": [295, 305]},
        {"name": "rpm", "dtype": "integer", "nullable": False, "range": [1000, 3000]},
        {"name": "class", "dtype": "category", "nullable": False, "categories": ["1", "2", "x"]},
        {"name": "model_id", "dtype": "number", "nullable": True, "range": None},
        {"name": "a b", "dtype": "number", "nullable": False, "range": [0, 1]},
        {"name": "a_b", "dtype": "number", "nullable": False, "range": [0, 1]},
    ],
    "output": {"task": "classification", "classes": [0, 1]},
}
GOOD = {"Air temperature [K]": 300.0, "rpm": 1500, "class": "x", "model_id": None, "a b": 0.5,
        "a_b": 0.1}  # fmt: skip


def test_the_record_type_takes_the_columns_as_named() -> None:
    schema = input_schema(SCHEMA)
    record = schema.record.model_validate(GOOD)
    assert record.model_dump(by_alias=True) == GOOD
    # a category written as a number still matches its text form
    assert (
        schema.record.model_validate({**GOOD, "class": 2}).model_dump(by_alias=True)["class"] == "2"
    )
    assert schema.nullable == {"model_id"}
    props = schema.record.model_json_schema(by_alias=True)["properties"]
    assert list(props) == [f["name"] for f in SCHEMA["input"]]
    assert props["class"]["enum"] == ["1", "2", "x"]
    assert "training range 295 to 305" in props["Air temperature [K]"]["description"]


@pytest.mark.parametrize(
    ("change", "field", "kind"),
    [
        ({"rpm": 1.5}, "rpm", "int_from_float"),
        ({"class": "y"}, "class", "literal_error"),
        ({"Air temperature [K]": float("nan")}, "Air temperature [K]", "finite_number"),
        ({"Air temperature [K]": None}, "Air temperature [K]", "float_type"),
        ({"extra": 1}, "extra", "extra_forbidden"),
    ],
)
def test_the_record_type_refuses_naming_the_field(
    change: dict[str, object], field: str, kind: str
) -> None:
    with pytest.raises(ValidationError) as info:
        input_schema(SCHEMA).record.model_validate({**GOOD, **change})
    error = info.value.errors()[0]
    assert error["loc"] == (field,) and error["type"] == kind


def test_a_swapped_in_model_must_take_the_same_fields() -> None:
    schema = input_schema(SCHEMA)
    assert schema.compatible(SCHEMA) is None
    fewer = {"input": SCHEMA["input"][:-1]}
    assert "does not take input field(s) this server accepts: ['a_b']" in str(
        schema.compatible(fewer)
    )
    more = {"input": [*SCHEMA["input"], {"name": "new", "dtype": "number"}]}
    assert "['new']" in str(schema.compatible(more))
    retyped = {"input": [{**SCHEMA["input"][0], "dtype": "category"}, *SCHEMA["input"][1:]]}
    assert "changed type" in str(schema.compatible(retyped))


@pytest.fixture(scope="module")
def ai4i() -> tuple[pd.DataFrame, object, dict[str, object]]:
    data = prepare({"b": generate_ai4i(1500, 4)}, AI4I_SPEC, PrepareParams())
    return data.test, data.preprocessor, model_schema(data.train, data.spec, data.preprocessor)


def test_the_fast_encoder_makes_the_same_matrix_as_training(ai4i) -> None:  # type: ignore[no-untyped-def]
    frame, pre, _ = ai4i
    cols = pre.input_columns
    records = frame[cols].to_dict(orient="records")
    np.testing.assert_array_equal(pre.encode_records(records), pre.transform_strict(frame[cols]))
    np.testing.assert_array_equal(pre.encode_records(records), pre.transform(frame[cols]))


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"Type": "Q"}, "unseen category"),
        ({"Type": None}, "required"),
        ({"Torque [Nm]": None}, "required"),
        ({"Torque [Nm]": float("inf")}, "finite"),
        ({"Torque [Nm]": "x"}, "type"),
        ({"Torque [Nm]": 10**400}, "range"),
        ({"Torque [Nm]": 1e300}, "range"),
    ],
)
def test_the_fast_encoder_refuses_what_strict_transform_refuses(ai4i, change, rule) -> None:  # type: ignore[no-untyped-def]
    frame, pre, _ = ai4i
    record = {**frame[pre.input_columns].iloc[0].to_dict(), **change}
    with pytest.raises(InputError) as info:
        pre.encode_records([record])
    assert info.value.field == next(iter(change)) and info.value.rule == rule


def test_a_nullable_column_is_imputed_as_training_does(ai4i) -> None:  # type: ignore[no-untyped-def]
    frame, pre, _ = ai4i
    record = {**frame[pre.input_columns].iloc[0].to_dict(), "Torque [Nm]": None}
    lenient = pre.transform(pd.DataFrame([record]))
    np.testing.assert_array_equal(pre.encode_records([record], frozenset({"Torque [Nm]"})), lenient)


def test_smoke_rows_come_from_the_manifest_and_encode(ai4i) -> None:  # type: ignore[no-untyped-def]
    _, pre, schema = ai4i
    rows = smoke_records(schema)
    assert len(rows) == 3 and {r["Type"] for r in rows} == {"H", "L", "M"}
    x = pre.encode_records(rows)
    assert x.shape == (3, pre.n_features) and np.isfinite(x).all()


def test_canary_side_is_stable_and_close_to_the_share() -> None:
    ids = [f"req-{i}" for i in range(2000)]
    for share in (0.05, 0.1, 0.5):
        sides = [canary_side(i, share) for i in ids]
        assert abs(sum(sides) / len(ids) - share) <= 0.03
        assert sides == [canary_side(i, share) for i in ids]
    # a larger share keeps everyone the smaller one had: raising it moves clients one way
    small = {i for i in ids if canary_side(i, 0.1)}
    assert small <= {i for i in ids if canary_side(i, 0.3)}


def test_the_batcher_merges_waiting_requests_and_splits_the_answers() -> None:
    from serving.batcher import Batcher

    calls: list[int] = []

    class Predictor:
        def scores_from_inputs(self, x: np.ndarray) -> np.ndarray:
            calls.append(len(x))
            return x[:, :1] * 2

    class Model:
        predictor = Predictor()

    async def main() -> list[np.ndarray]:
        b, model = Batcher(max_records=100), Model()
        jobs = [b.scores(model, np.full((3, 2), i, dtype=np.float32)) for i in range(10)]  # type: ignore[arg-type]
        out = await asyncio.gather(*jobs)
        b.close()
        return out

    out = asyncio.run(main())
    for i, scores in enumerate(out):
        assert scores.shape == (3, 1) and (scores == 2 * i).all()
    # ten requests of 3 records arriving together run as one or two model calls, not ten
    assert sum(calls) == 30 and len(calls) <= 2, calls


def _rows(n: int, start: datetime, model: str = "m") -> list[Answered]:
    return [
        Answered(f"r{i}", start + timedelta(minutes=i), model, 1, "production",
                 {"x": [i], "Type": ["L"]}, [i % 2], np.asarray([0.5]), 1.0)
        for i in range(n)
    ]  # fmt: skip


def test_the_prediction_log_writes_hourly_parquet_and_reads_back(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, flush_s=60)
    start = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    for answered in _rows(90, start):
        log.append(answered)
    assert log.flush() == 90 and log.flush() == 0
    files = log_files(tmp_path, "m")
    parts = sorted({f.parent.relative_to(tmp_path / "m").as_posix() for f in files})
    assert parts == ["date=2026-11-23/hour=09", "date=2026-11-23/hour=10"]
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))
    frame = read_log(tmp_path, "m")
    assert list(frame["request_id"]) == [f"r{i}" for i in range(90)]
    assert list(inputs_of(frame)["x"]) == list(range(90)) and set(frame["input.Type"]) == {"L"}
    assert list(frame["prediction"][:2]) == ["0", "1"] and (frame["score"] == 0.5).all()
    assert read_log(tmp_path, "m", last=5)["request_id"].tolist() == [
        f"r{i}" for i in range(85, 90)
    ]
    since = read_log(tmp_path, "m", since=start + timedelta(minutes=60))
    assert since["request_id"].iloc[0] == "r60" and len(since) == 30


def test_a_failed_log_write_is_counted_and_kept_for_the_next(tmp_path: Path) -> None:
    blocked = tmp_path / "log"
    blocked.write_text("a file where the log's folder should be")
    outcomes: list[tuple[int, bool]] = []
    log = PredictionLog(blocked, flush_s=60, on_flush=lambda n, ok: outcomes.append((n, ok)))
    for answered in _rows(3, datetime.now(UTC)):
        log.append(answered)
    assert log.flush() == 0 and log.failures == 1 and outcomes == [(3, False)]
    blocked.unlink()
    assert log.flush() == 3 and outcomes[-1] == (3, True)
    assert len(read_log(blocked)) == 3
