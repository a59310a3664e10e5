"""Serving's parts without a server: the generated request type, the fast encoder (same matrix
as training's transform), canary hashing, the batcher and the prediction log."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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


def test_a_nan_reading_outside_the_api_is_imputed_not_passed_to_the_model(ai4i) -> None:  # type: ignore[no-untyped-def]
    # the API refuses NaN; a frame's records (smoke rows, tests) may carry one
    frame, pre, _ = ai4i
    record = {**frame[pre.input_columns].iloc[0].to_dict(), "Torque [Nm]": float("nan")}
    x = pre.encode_records([record])
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(x, pre.transform(pd.DataFrame([record])))


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


def test_the_batcher_runs_fast_models_on_the_loop_and_slow_ones_on_its_thread() -> None:
    import threading
    import time

    from serving.batcher import INLINE_BELOW_S, Batcher

    class Predictor:
        def __init__(self, seconds: float) -> None:
            self.seconds, self.threads = seconds, []  # type: list[str]

        def scores_from_inputs(self, x: np.ndarray) -> np.ndarray:
            self.threads.append(threading.current_thread().name)
            time.sleep(self.seconds)
            return x[:, :1]

    class Model:
        def __init__(self, seconds: float) -> None:
            self.predictor = Predictor(seconds)

    fast, slow = Model(0.0), Model(INLINE_BELOW_S * 3)

    async def main() -> str:
        b = Batcher(max_records=100)
        for _ in range(4):  # one after another: four batches each
            for m in (fast, slow):
                await b.scores(m, np.zeros((2, 2), dtype=np.float32))  # type: ignore[arg-type]
        b.close()
        return threading.current_thread().name

    loop_thread = asyncio.run(main())
    assert set(fast.predictor.threads) == {loop_thread}
    # measured once on the loop, then moved off it
    assert slow.predictor.threads[0] == loop_thread
    assert all(t.startswith("model") for t in slow.predictor.threads[1:]), slow.predictor.threads


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


def test_the_log_keeps_each_record_of_a_request_as_the_server_passes_them(tmp_path: Path) -> None:
    # the server passes numeric readings as float arrays (NaN where a nullable one was null)
    log = PredictionLog(tmp_path, flush_s=60)
    at = datetime(2026, 11, 23, 9, 30, 1, 123456, tzinfo=UTC)
    log.append(
        Answered(
            "a",
            at,
            "m",
            2,
            "canary",
            {"x": np.asarray([1.5, np.nan, 3.0]), "Type": ["L", None, "H"]},
            ["0", "1", "0"],
            np.asarray([0.1, 0.9, 0.2]),
            4.0,
        )
    )
    log.append(Answered("b", at + timedelta(seconds=1), "m", 1, "production",
               {"x": np.asarray([7.0]), "Type": ["M"]}, ["1"], np.asarray([0.8]), 2.0))  # fmt: skip
    assert log.flush() == 4
    frame = read_log(tmp_path, "m")
    assert frame["request_id"].tolist() == ["a", "a", "a", "b"]
    assert frame["record"].tolist() == [0, 1, 2, 0] and frame["version"].tolist() == [2, 2, 2, 1]
    assert frame["route"].tolist() == ["canary"] * 3 + ["production"]
    assert frame["ts"].iloc[0] == pd.Timestamp(at) and frame["latency_ms"].tolist()[-1] == 2.0
    assert frame["input.x"].iloc[[0, 2, 3]].tolist() == [1.5, 3.0, 7.0]
    assert frame["input.x"].isna().tolist() == [False, True, False, False]
    assert frame["input.Type"].tolist()[::2] == ["L", "H"] and frame["input.Type"].isna()[1]
    assert frame["score"].tolist() == [0.1, 0.9, 0.2, 0.8]


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


def _call(app: Any, timeout: float) -> tuple[list[dict[str, Any]], int]:
    """Run one GET through RequestTimeout(app); the messages sent, and how many timers were
    still live on the loop afterwards."""
    from serving.guard import RequestTimeout

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def main() -> int:
        scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
        await RequestTimeout(app, timeout)(scope, receive, send)
        loop = asyncio.get_running_loop()
        return sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]

    live = asyncio.run(main())
    return sent, live


def _app(before: float, between: float) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(before)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(between)
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_the_request_timeout_answers_504_when_nothing_was_sent_in_time() -> None:
    sent, _ = _call(_app(before=1.0, between=0.0), timeout=0.05)
    assert sent[0]["status"] == 504
    assert "0.05 seconds" in json.loads(sent[1]["body"])["error"]


def test_the_request_timeout_cancels_its_timer_once_the_answer_starts() -> None:
    # BentoML's own leaves every request's timer alive for the whole timeout (serving/guard.py)
    sent, live = _call(_app(before=0.0, between=0.1), timeout=60)
    assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"ok"
    assert live == 0  # an answer slower than nothing but started in time is not cut either


def test_bentoml_builds_its_apps_with_our_request_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from bentoml._internal.server.http import traffic

    from serving.guard import ENV_BENTOML_TIMEOUT, RequestTimeout, replace_bentoml_timeout

    monkeypatch.setattr(traffic, "TimeoutMiddleware", traffic.TimeoutMiddleware)  # restored after
    monkeypatch.setenv(ENV_BENTOML_TIMEOUT, "1")
    assert not replace_bentoml_timeout() and traffic.TimeoutMiddleware is not RequestTimeout
    monkeypatch.delenv(ENV_BENTOML_TIMEOUT)
    assert replace_bentoml_timeout() and traffic.TimeoutMiddleware is RequestTimeout


def test_a_review_is_queued_for_another_class_or_a_value_beyond_the_tolerance() -> None:
    from serving.host import disagreements

    assert disagreements([0, 1, 1], [0, 0, 1], 0.5) == [1]
    assert disagreements(["a", "b"], ["a", "b"], 0.5) == []
    # regression: target-unit values, tolerance = review_tolerance x the target's std
    assert disagreements([10.0, 10.0, 10.0], [10.4, 10.6, 9.0], 0.5) == [1, 2]


def test_the_log_flushes_early_once_enough_rows_wait(tmp_path: Path) -> None:
    import time

    log = PredictionLog(tmp_path, flush_s=60, flush_rows=50).start()
    start = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    try:
        for answered in _rows(49, start):
            log.append(answered)
        time.sleep(0.3)
        assert log.written == 0  # under the threshold: waits for the clock (60 s here)
        log.append(_rows(1, start)[0])
        deadline = time.monotonic() + 10
        while log.written < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.written == 50 and len(read_log(tmp_path, "m")) == 50
    finally:
        log.close()
